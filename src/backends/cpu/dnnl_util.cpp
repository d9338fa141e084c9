// oneDNN engine, streams, dtype and activation mapping shared by the CPU tactics.
#include "backends/cpu/dnnl_util.h"

#include <algorithm>
#include <limits>

#include "kiln/error.h"

namespace kiln::cpu {

dnnl::engine& dnnl_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& dnnl_stream() {
  thread_local dnnl::stream stream(dnnl_engine());
  return stream;
}

bool dnnl_supports_dtype(DType dt) {
  switch (dt) {
    case DType::kF32: case DType::kF16: case DType::kBF16: case DType::kI8: case DType::kU8: case DType::kI32:
      return true;
    default:
      return false;
  }
}

dnnl::memory::data_type dnnl_dtype(DType dt) {
  using dtype = dnnl::memory::data_type;
  switch (dt) {
    case DType::kF32: return dtype::f32;
    case DType::kF16: return dtype::f16;
    case DType::kBF16: return dtype::bf16;
    case DType::kI8: return dtype::s8;
    case DType::kU8: return dtype::u8;
    case DType::kI32: return dtype::s32;
    default:
      throw Error(ErrorCode::kUnsupported, "oneDNN has no data type for " + std::string(dtype_name(dt)));
  }
}

bool append_activation(dnnl::post_ops& ops, const std::string& act, const std::vector<float>& p) {
  using alg = dnnl::algorithm;
  auto param = [&](size_t i, float def) { return i < p.size() ? p[i] : def; };
  if (act.empty()) return true;
  if (act == "Relu") ops.append_eltwise(1.f, alg::eltwise_relu, 0.f, 0.f);
  else if (act == "LeakyRelu") ops.append_eltwise(1.f, alg::eltwise_relu, param(0, 0.01f), 0.f);
  else if (act == "Clip") {
    // Clip's bounds may be +-inf (an omitted bound); oneDNN clips with finite floats.
    const float lo = std::max(param(0, -std::numeric_limits<float>::max()), -std::numeric_limits<float>::max());
    const float hi = std::min(param(1, std::numeric_limits<float>::max()), std::numeric_limits<float>::max());
    ops.append_eltwise(1.f, alg::eltwise_clip, lo, hi);
  } else if (act == "Sigmoid") ops.append_eltwise(1.f, alg::eltwise_logistic, 0.f, 0.f);
  else if (act == "SiLU") ops.append_eltwise(1.f, alg::eltwise_swish, 1.f, 0.f);
  else if (act == "HardSwish") ops.append_eltwise(1.f, alg::eltwise_hardswish, 0.f, 0.f);
  else if (act == "HardSigmoid") {
    // max(0, min(1, alpha * x + beta)) as linear then clip.
    ops.append_eltwise(1.f, alg::eltwise_linear, param(0, 0.2f), param(1, 0.5f));
    ops.append_eltwise(1.f, alg::eltwise_clip, 0.f, 1.f);
  } else if (act == "Gelu") ops.append_eltwise(1.f, alg::eltwise_gelu_erf, 0.f, 0.f);
  else if (act == "GeluTanh") ops.append_eltwise(1.f, alg::eltwise_gelu_tanh, 0.f, 0.f);
  else if (act == "Tanh") ops.append_eltwise(1.f, alg::eltwise_tanh, 0.f, 0.f);
  else return false;
  return true;
}

namespace {

bool probe_fast_bf16() {
  // The effective ISA honours both the CPU and DNNL_MAX_CPU_ISA; below avx512_core_bf16 oneDNN's
  // bf16 kernels emulate the conversions ("jit_bf16:avx512_core") or are its reference code.
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  if ((isa & bf16) != bf16) return false;
  // And a small bf16 convolution must get a real kernel (a library build without them says "ref").
  try {
    using dnnl::memory;
    const memory::desc x({1, 16, 8, 8}, memory::data_type::bf16, memory::format_tag::nhwc);
    const memory::desc w({16, 16, 3, 3}, memory::data_type::bf16, memory::format_tag::any);
    const memory::desc y({1, 16, 8, 8}, memory::data_type::f32, memory::format_tag::nhwc);
    const dnnl::convolution_forward::primitive_desc pd(
        dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, x, w,
                                        y, {1, 1}, {1, 1}, {1, 1}),
        dnnl_engine());
    return std::string(pd.impl_info_str()).rfind("ref", 0) != 0;
  } catch (const dnnl::error&) {
    return false;
  }
}

}  // namespace

bool host_has_fast_bf16() {
  static const bool fast = probe_fast_bf16();
  return fast;
}

void add_bf16_isa(std::vector<std::string>& isa) {
  for (const char* f : {"avx512f", "avx512_bf16"})
    if (std::find(isa.begin(), isa.end(), f) == isa.end()) isa.push_back(f);
}

std::vector<std::string> isa_of_impl(const std::string& impl) {
  // Names follow host_fingerprint()'s vocabulary (src/engine/engine_file.h).
  // oneDNN uses an AMX kernel only where it also may use avx512_core_bf16 (which includes VNNI).
  if (impl.find("amx") != std::string::npos) return {"avx512f", "avx512_vnni", "avx512_bf16", "amx"};
  if (impl.find("avx512_core_bf16") != std::string::npos) return {"avx512f", "avx512_vnni", "avx512_bf16"};
  if (impl.find("avx512_core_vnni") != std::string::npos) return {"avx512f", "avx512_vnni"};
  if (impl.find("avx512") != std::string::npos) return {"avx512f"};
  if (impl.find("avx2") != std::string::npos) return {"avx2"};
  return {};
}

}  // namespace kiln::cpu
