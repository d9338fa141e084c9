// Int8 tactics besides convolution (src/backends/cpu/dnnl_conv.cpp has kiln::QConv):
//  - dnnl.qmatmul: kiln::QMatMul as oneDNN's u8/s8 x s8 matmul, B prepacked, per-column output scales,
//    bias in accumulator units, activation and requantization as post-ops.
//  - kiln.quantize: per-tensor QuantizeLinear / DequantizeLinear at precision boundaries, AVX-512 with
//    a portable fallback, in whatever layout the producer made.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <unordered_map>

#include "backends/cpu/cpu_kernel.h"
#include "backends/cpu/dnnl_util.h"
#include "kiln/error.h"
#include "ops/quant_rules.h"

namespace kiln::cpu {

namespace {

using dnnl::memory;
using Tag = memory::format_tag;

// ---- kiln::QMatMul

struct QMatmulPlan {
  int64_t m = 0, k = 0, n = 0;  // A viewed as [m, k] (leading dims folded), op(B) [k, n]
  bool trans_b = false, has_bias = false, src_zp = false;
  int32_t a_zp = 0;
  std::vector<float> acc_scale;  // alpha * a_scale * b_scale[j]
  memory::desc a_md, y_md, b_user_md, bias_md;
  dnnl::matmul::primitive_desc pd;
};

QMatmulPlan make_qmatmul_plan(const KernelConfig& cfg) {
  if (cfg.inputs.size() < 2 || !cfg.has_input(0) || !cfg.has_input(1) || cfg.outputs.empty())
    unsupported(cfg, "missing A, B or Y");
  const ValueInfo& a = cfg.inputs[0];
  const ValueInfo& b = cfg.inputs[1];
  const ValueInfo& y = cfg.outputs[0];
  const NodeView v = cfg.view();
  if (!dtype_is_8bit(a.dtype) || b.dtype != DType::kI8 || !b.constant || b.shape.size() != 2 || a.shape.size() < 2)
    unsupported(cfg, "needs 8-bit A of rank >= 2 and a constant 2-D int8 B");
  if (y.dtype != DType::kF32 && !dtype_is_8bit(y.dtype)) unsupported(cfg, "Y type");
  QMatmulPlan p;
  p.trans_b = v.attr_int("transB") != 0;
  p.k = a.shape.back();
  p.m = a.numel() / std::max<int64_t>(p.k, 1);
  p.n = p.trans_b ? b.shape[0] : b.shape[1];
  if ((p.trans_b ? b.shape[1] : b.shape[0]) != p.k || y.numel() != p.m * p.n || p.m == 0 || p.n == 0 || p.k == 0)
    unsupported(cfg, "shapes");
  p.has_bias = cfg.has_input(2);
  if (p.has_bias && (cfg.inputs[2].dtype != DType::kF32 || !cfg.inputs[2].constant || cfg.inputs[2].numel() != p.n))
    unsupported(cfg, "C must be a constant float32 [N]");
  const float alpha = v.attr_float("alpha"), a_scale = v.attr_float("a_scale");
  const auto& b_scale = v.attr_floats("b_scale");
  if (b_scale.size() != 1 && static_cast<int64_t>(b_scale.size()) != p.n) unsupported(cfg, "b_scale size");
  for (float s : b_scale) p.acc_scale.push_back(alpha * a_scale * s);
  p.a_zp = static_cast<int32_t>(v.attr_int("a_zero_point"));
  p.src_zp = p.a_zp != 0;

  dnnl::post_ops ops;
  if (!append_activation(ops, v.attr_string("activation"), v.attr_floats("activation_params")))
    unsupported(cfg, "activation");
  if (dtype_is_8bit(y.dtype))
    ops.append_eltwise(1.f, dnnl::algorithm::eltwise_linear, 1.f / v.attr_float("y_scale"),
                       static_cast<float>(v.attr_int("y_zero_point")));
  p.a_md = memory::desc({p.m, p.k}, dnnl_dtype(a.dtype), Tag::ab);
  p.y_md = memory::desc({p.m, p.n}, dnnl_dtype(y.dtype), Tag::ab);
  p.b_user_md = memory::desc({p.k, p.n}, memory::data_type::s8, p.trans_b ? Tag::ba : Tag::ab);
  p.bias_md = memory::desc({1, p.n}, memory::data_type::f32, Tag::ab);
  const memory::desc b_any({p.k, p.n}, memory::data_type::s8, Tag::any);
  dnnl::primitive_attr attr = user_scratchpad_attr();
  attr.set_output_scales(p.acc_scale.size() == 1 ? 0 : 1 << 1, p.acc_scale);
  if (p.src_zp) attr.set_zero_points(DNNL_ARG_SRC, 0, {DNNL_RUNTIME_S32_VAL});
  attr.set_post_ops(ops);
  const auto desc = p.has_bias ? dnnl::matmul::desc(p.a_md, b_any, p.bias_md, p.y_md)
                               : dnnl::matmul::desc(p.a_md, b_any, p.y_md);
  p.pd = dnnl::matmul::primitive_desc(desc, attr, dnnl_engine());
  return p;
}

class DnnlQMatmulKernel final : public CpuKernel {
 public:
  DnnlQMatmulKernel(const KernelConfig& cfg, QMatmulPlan plan) : p_(std::move(plan)), mm_(p_.pd) {
    auto& eng = dnnl_engine();
    auto& strm = dnnl_stream();
    packed_b_ = memory(p_.pd.weights_desc(), eng);
    memory user(p_.b_user_md, eng, const_cast<void*>(cfg.inputs[1].constant->raw()));
    dnnl::reorder(user, packed_b_).execute(strm, user, packed_b_);
    strm.wait();
    if (p_.has_bias) {
      const float* c = cfg.inputs[2].constant->data<float>();
      bias_.resize(static_cast<size_t>(p_.n));
      for (size_t j = 0; j < bias_.size(); ++j) bias_[j] = c[j] / p_.acc_scale[p_.acc_scale.size() == 1 ? 0 : j];
    }
  }

  void run(const KernelArgs& args) override {
    auto& eng = dnnl_engine();
    auto& strm = dnnl_stream();
    std::unordered_map<int, memory> a = {
        {DNNL_ARG_SRC, memory(p_.a_md, eng, const_cast<void*>(args.inputs[0]))},
        {DNNL_ARG_WEIGHTS, packed_b_},
        {DNNL_ARG_DST, memory(p_.y_md, eng, args.outputs[0])},
        {DNNL_ARG_SCRATCHPAD, memory(p_.pd.scratchpad_desc(), eng, args.scratch)}};
    if (p_.has_bias) a[DNNL_ARG_BIAS] = memory(p_.bias_md, eng, bias_.data());
    if (p_.src_zp)
      a[DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC] =
          memory(memory::desc({1}, memory::data_type::s32, Tag::x), eng, const_cast<int32_t*>(&p_.a_zp));
    mm_.execute(strm, a);
    strm.wait();
  }

  size_t scratch_bytes() const override { return (p_.pd.scratchpad_desc().get_size() + 63) & ~size_t{63}; }
  std::string describe() const override { return std::string(p_.pd.impl_info_str()) + " int8"; }
  std::vector<std::string> required_isa() const override { return isa_of_impl(p_.pd.impl_info_str()); }

 private:
  QMatmulPlan p_;
  dnnl::matmul mm_;
  memory packed_b_;
  std::vector<float> bias_;
};

class DnnlQMatmulTactic final : public Tactic {
 public:
  std::string name() const override { return "dnnl.qmatmul"; }
  bool supports(const KernelConfig& cfg) const override {
    try {
      make_qmatmul_plan(cfg);
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const ThreadCountScope threads(cfg.threads);
    try {
      return std::make_unique<DnnlQMatmulKernel>(cfg, make_qmatmul_plan(cfg));
    } catch (const dnnl::error& e) {
      unsupported(cfg, std::string("oneDNN: ") + e.what());
    }
  }
};

// ---- QuantizeLinear / DequantizeLinear, per tensor

struct QuantParams {
  float scale = 1.f;
  int32_t zero_point = 0;
  DType qtype = DType::kI8;
};

// Per-tensor constant scale and zero point, or nullopt.
std::optional<QuantParams> per_tensor_params(const KernelConfig& cfg, bool quantize) {
  if (cfg.inputs.size() < 2 || !cfg.has_input(0) || !cfg.inputs[1].constant || cfg.outputs.empty()) return std::nullopt;
  if (const Attribute* b = cfg.node->attr("block_size"); b && b->i != 0) return std::nullopt;
  const Tensor& s = *cfg.inputs[1].constant;
  if (s.dtype() != DType::kF32 || s.numel() != 1) return std::nullopt;
  QuantParams q;
  q.scale = s.data<float>()[0];
  if (!(q.scale > 0.f) || !std::isfinite(q.scale)) return std::nullopt;
  q.qtype = quantize ? cfg.outputs[0].dtype : cfg.inputs[0].dtype;
  if (!dtype_is_8bit(q.qtype)) return std::nullopt;
  if (cfg.has_input(2)) {
    if (!cfg.inputs[2].constant || cfg.inputs[2].numel() != 1 || cfg.inputs[2].dtype != q.qtype) return std::nullopt;
    const Tensor& z = *cfg.inputs[2].constant;
    q.zero_point = q.qtype == DType::kI8 ? z.data<int8_t>()[0] : z.data<uint8_t>()[0];
  }
  const DType f = quantize ? cfg.inputs[0].dtype : cfg.outputs[0].dtype;
  if (f != DType::kF32) return std::nullopt;
  return q;
}

void quantize_scalar(const float* x, void* out, int64_t n, const QuantParams& q) {
  const float lo = q.qtype == DType::kU8 ? 0.f : -128.f, hi = q.qtype == DType::kU8 ? 255.f : 127.f;
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::clamp(std::nearbyint(x[i] / q.scale) + static_cast<float>(q.zero_point), lo, hi);
    if (q.qtype == DType::kU8) static_cast<uint8_t*>(out)[i] = static_cast<uint8_t>(v);
    else static_cast<int8_t*>(out)[i] = static_cast<int8_t>(v);
  }
}

void dequantize_scalar(const void* in, float* y, int64_t n, const QuantParams& q) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t v = q.qtype == DType::kU8 ? static_cast<const uint8_t*>(in)[i] : static_cast<const int8_t*>(in)[i];
    y[i] = static_cast<float>(v - q.zero_point) * q.scale;
  }
}

// GCC 12 flags the undefined passthrough operand inside the unmasked AVX-512 intrinsics under a
// target attribute as maybe-uninitialized; it is a known false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// x / scale (a true division, as QuantizeLinear specifies), rounded half to even, plus the zero
// point, clamped to the type's range: bit-identical to the scalar loop.
__attribute__((target("avx512f"))) void quantize_avx512(const float* x, void* out, int64_t n, const QuantParams& q) {
  const __m512 s = _mm512_set1_ps(q.scale), zp = _mm512_set1_ps(static_cast<float>(q.zero_point));
  const __m512 lo = _mm512_set1_ps(q.qtype == DType::kU8 ? 0.f : -128.f);
  const __m512 hi = _mm512_set1_ps(q.qtype == DType::kU8 ? 255.f : 127.f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_div_ps(_mm512_loadu_ps(x + i), s);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, zp), lo), hi);
    const __m128i b = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v));  // in range after the clamp
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint8_t*>(out) + i), b);
  }
  if (i < n) quantize_scalar(x + i, static_cast<uint8_t*>(out) + i, n - i, q);
}

__attribute__((target("avx512f"))) void dequantize_avx512(const void* in, float* y, int64_t n, const QuantParams& q) {
  const __m512 s = _mm512_set1_ps(q.scale);
  const __m512i zp = _mm512_set1_epi32(q.zero_point);
  const auto* p = static_cast<const uint8_t*>(in);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
    const __m512i w = q.qtype == DType::kU8 ? _mm512_cvtepu8_epi32(b) : _mm512_cvtepi8_epi32(b);
    _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(w, zp)), s));
  }
  if (i < n) dequantize_scalar(p + i, y + i, n - i, q);
}

#pragma GCC diagnostic pop

class QuantizeKernel final : public CpuKernel {
 public:
  QuantizeKernel(QuantParams q, bool quantize, int64_t n)
      : q_(q), quantize_(quantize), n_(n), avx512_(__builtin_cpu_supports("avx512f")) {}

  void run(const KernelArgs& args) override {
    const void* in = args.inputs[0];
    void* out = args.outputs[0];
    constexpr int64_t kChunk = 1 << 14;
    const int64_t chunks = (n_ + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t b = c * kChunk, len = std::min(kChunk, n_ - b);
      if (quantize_) {
        const float* x = static_cast<const float*>(in) + b;
        void* o = static_cast<uint8_t*>(out) + b;
        avx512_ ? quantize_avx512(x, o, len, q_) : quantize_scalar(x, o, len, q_);
      } else {
        const void* x = static_cast<const uint8_t*>(in) + b;
        float* o = static_cast<float*>(out) + b;
        avx512_ ? dequantize_avx512(x, o, len, q_) : dequantize_scalar(x, o, len, q_);
      }
    }
  }
  std::string describe() const override {
    return std::string(avx512_ ? "avx512" : "scalar") + (quantize_ ? " quantize" : " dequantize") + " per-tensor";
  }
  std::vector<std::string> required_isa() const override {
    return {};  // dispatches at run time
  }

 private:
  QuantParams q_;
  bool quantize_;
  int64_t n_;
  bool avx512_;
};

class QuantizeTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.quantize"; }
  bool supports(const KernelConfig& cfg) const override {
    return per_tensor_params(cfg, cfg.node->op_type == "QuantizeLinear").has_value();
  }
  // Elementwise: any layout in, the same layout out (scale and zero point are constants, plain).
  std::vector<Layout> input_layouts(const KernelConfig& cfg) const override {
    std::vector<Layout> l(cfg.inputs.size(), Layout::kPlain);
    l[0] = Layout::kAny;
    return l;
  }
  std::vector<Layout> output_layouts(const KernelConfig& cfg) const override {
    return std::vector<Layout>(cfg.outputs.size(), cfg.inputs[0].layout);
  }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const bool quantize = cfg.node->op_type == "QuantizeLinear";
    auto q = per_tensor_params(cfg, quantize);
    if (!q) unsupported(cfg, "only per-tensor float32 <-> 8-bit with constant scale and zero point");
    return std::make_unique<QuantizeKernel>(*q, quantize, cfg.inputs[0].numel());
  }
};

}  // namespace

void register_int8_tactics(TacticRegistry& r) {
  r.add("kiln", "QMatMul", std::make_shared<DnnlQMatmulTactic>());
  auto q = std::make_shared<QuantizeTactic>();
  r.add("", "QuantizeLinear", q);
  r.add("", "DequantizeLinear", q);
}

}  // namespace kiln::cpu
