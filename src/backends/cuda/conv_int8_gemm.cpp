// A 1x1 INT8 convolution as one cuBLASLt INT8 GEMM (conv_int8.h).
#include <cmath>

#include "backends/cuda/conv_int8.h"
#include "backends/cuda/lt_matmul.h"

namespace kiln::cuda {

namespace {
constexpr size_t kAlign = 256;  // cuBLASLt wants its vectors and workspace aligned
size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
}  // namespace

std::string conv_int8_gemm_unsupported(const Int8ConvParams& p) {
  if (std::string why = conv_int8_unsupported(p); !why.empty()) return why;
  if (p.r != 1 || p.s != 1 || p.stride_h != 1 || p.stride_w != 1 || p.pad_h != 0 || p.pad_w != 0)
    return "only a 1x1 filter with stride 1 and no padding is one GEMM";
  if (p.y_f16) return "cuBLASLt's INT8 GEMM writes INT8, not FP16";
  if (p.residual && p.z_f16) return "cuBLASLt's INT8 GEMM adds an INT8 residual, not an FP16 one";
  if (p.act == ConvAct::kClip) return "cuBLASLt has no clip epilogue";
  if (p.residual && !std::isfinite(p.z_scale / p.y_scale)) return "the residual's scale is not finite";
  return {};
}

Int8ConvGemm::Int8ConvGemm(const Int8ConvParams& p, size_t workspace_limit, cudaStream_t stream,
                           const std::string& tactic)
    : p_(p) {
  if (const std::string why = conv_int8_gemm_unsupported(p); !why.empty()) throw CudaError("conv int8 gemm: " + why);
  scales_bytes_ = align_up(static_cast<size_t>(p.k) * 4) * 2;
  if (scales_bytes_ > workspace_limit)
    throw CudaError("conv int8 gemm: the per-channel scales need " + std::to_string(scales_bytes_) +
                    " workspace bytes, over the " + std::to_string(workspace_limit) + "-byte limit");
  GemmShape shape;
  shape.m = p.n * p.h * p.w, shape.n = p.k, shape.k = p.c;
  shape.accumulate = p.residual;
  shape.c_scale = p.residual ? p.z_scale / p.y_scale : 0.f;
  const bool relu = p.act == ConvAct::kRelu;
  const Epilogue epi = p.bias ? (relu ? Epilogue::kBiasRelu : Epilogue::kBias) : (relu ? Epilogue::kRelu : Epilogue::kNone);
  mm_ = std::make_unique<LtMatmul>(shape, GemmType::kI8, epi, workspace_limit - scales_bytes_, 8, stream, tactic);
}

Int8ConvGemm::~Int8ConvGemm() = default;

size_t Int8ConvGemm::workspace_bytes() const { return scales_bytes_ + mm_->chosen_workspace_bytes(); }

void Int8ConvGemm::run(const int8_t* x, const int8_t* w, const float* scale, const float* bias, const void* z, void* y,
                       cudaStream_t stream, void* workspace) const {
  if (!workspace) throw CudaError("conv int8 gemm: needs its workspace");
  float* alpha = static_cast<float*>(workspace);
  float* bias_out = reinterpret_cast<float*>(static_cast<char*>(workspace) + scales_bytes_ / 2);
  scale_channels(scale, p_.bias ? bias : nullptr, 1.f / p_.y_scale, p_.k, alpha, bias_out, stream);
  mm_->run(x, w, p_.bias ? bias_out : nullptr, y, stream, static_cast<char*>(workspace) + scales_bytes_,
           mm_->chosen_workspace_bytes(), p_.residual ? z : nullptr, alpha);
}

ConvParams int8_conv_shape(const Int8ConvParams& p) {
  ConvParams c;
  c.n = p.n, c.c = p.c, c.h = p.h, c.w = p.w, c.k = p.k, c.r = p.r, c.s = p.s;
  c.pad_h = p.pad_h, c.pad_w = p.pad_w, c.stride_h = p.stride_h, c.stride_w = p.stride_w;
  c.dil_h = p.dil_h, c.dil_w = p.dil_w;
  c.bias = p.bias, c.residual = p.residual, c.act = p.act, c.clip_lo = p.clip_lo, c.clip_hi = p.clip_hi;
  return c;
}

GraphQuant int8_graph_quant(const Int8ConvParams& p) {
  GraphQuant q;
  q.z_8bit = !p.z_f16, q.z_scale = p.z_scale;
  q.y_8bit = !p.y_f16, q.y_scale = p.y_scale;
  return q;
}

std::string Int8ConvGemm::tactic() const { return mm_->tactic(); }

std::string Int8ConvGemm::describe() const { return mm_->describe(); }

}  // namespace kiln::cuda
