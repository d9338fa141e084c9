// Reference kernels of QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear: per-tensor,
// per-axis (opset 13+) and blocked (opset 21) scales, round half to even, saturation.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "backends/reference/kernel.h"
#include "backends/reference/tensor_kernel_util.h"
#include "ops/tensor_rules.h"

namespace kiln::reference {

namespace {

using namespace tensor_rules;
using namespace tensor_util;

// Maps an element of x to the element of scale / zero_point that applies to it.
struct QuantLayout {
  enum Kind { kTensor, kAxis, kBlock } kind = kTensor;
  int64_t dim = 1;     // x's size along axis
  int64_t inner = 1;   // elements after axis
  int64_t block = 0;   // block_size
  int64_t blocks = 1;  // scale's size along axis (blocked)

  int64_t index(int64_t i) const {
    if (kind == kTensor) return 0;
    const int64_t a = (i / inner) % dim;
    if (kind == kAxis) return a;
    const int64_t o = i / (dim * inner), in = i % inner;
    return (o * blocks + a / block) * inner + in;
  }
};

QuantLayout quant_layout(const KernelContext& ctx, const Tensor& x, const Tensor& scale, const Tensor* zp) {
  if (zp && zp->shape() != scale.shape())
    ctx.fail("zero point shape " + shape_to_string(zp->shape()) + " differs from scale shape " +
             shape_to_string(scale.shape()));
  const int64_t block = attr_int_or(ctx, "block_size", 0);
  if (block < 0) ctx.fail("block_size must be >= 0, got " + std::to_string(block));
  QuantLayout l;
  if (block == 0 && scale.numel() == 1 && scale.rank() <= 1) return l;
  if (ctx.opset() < 13) ctx.fail("scale must be a scalar before opset 13, got shape " + shape_to_string(scale.shape()));
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), static_cast<int64_t>(x.rank()));
  l.dim = x.dim(axis);
  l.inner = product(x.shape(), axis + 1, x.rank());
  if (block == 0) {
    if (scale.rank() != 1 || scale.numel() != l.dim)
      ctx.fail("per-axis scale must be 1-D with " + std::to_string(l.dim) + " values (axis " + std::to_string(axis) +
               " of " + shape_to_string(x.shape()) + "), got shape " + shape_to_string(scale.shape()));
    l.kind = QuantLayout::kAxis;
    return l;
  }
  l.kind = QuantLayout::kBlock;
  l.block = block;
  l.blocks = (l.dim + block - 1) / block;
  bool ok = scale.rank() == x.rank();
  for (size_t d = 0; ok && d < x.rank(); ++d)
    ok = scale.dim(d) == (static_cast<int64_t>(d) == axis ? l.blocks : x.dim(d));
  if (!ok)
    ctx.fail("blocked scale shape " + shape_to_string(scale.shape()) + " does not match input " +
             shape_to_string(x.shape()) + " with block_size " + std::to_string(block) + " on axis " +
             std::to_string(axis));
  return l;
}

void check_quantized_dtype(const KernelContext& ctx, DType dt) {
  if (dt == DType::kF8E4M3FN || dt == DType::kF8E5M2) ctx.unsupported("float8 quantization is not supported");
  if (dt != DType::kU8 && dt != DType::kI8 && dt != DType::kU16 && dt != DType::kI16 && dt != DType::kI32)
    ctx.fail("unsupported quantized dtype " + std::string(dtype_name(dt)));
}

std::vector<float> scale_values(const KernelContext& ctx, const Tensor& scale) {
  if (!dtype_is_float(scale.dtype()) || scale.dtype() == DType::kF64)
    ctx.fail("scale must be f32, f16 or bf16, got " + std::string(dtype_name(scale.dtype())));
  std::vector<double> d = scale.to_double_vector();
  return std::vector<float>(d.begin(), d.end());
}

void quantize_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& scale = ctx.input(1);
  const Tensor* zp = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  DType out_dt = DType::kU8;
  if (const int64_t code = attr_int_or(ctx, "output_dtype", 0)) {
    out_dt = dtype_from_onnx(static_cast<int>(code));
    if (out_dt == DType::kUndefined) ctx.unsupported("output_dtype " + std::to_string(code) + " is not supported");
  }
  if (zp) out_dt = zp->dtype();
  check_quantized_dtype(ctx, out_dt);
  if (out_dt == DType::kI32) ctx.fail("QuantizeLinear cannot produce i32");
  if (x.dtype() != DType::kF32 && x.dtype() != DType::kI32 &&
      !(ctx.opset() >= 19 && (x.dtype() == DType::kF16 || x.dtype() == DType::kBF16)))
    ctx.fail("unsupported input dtype " + std::string(dtype_name(x.dtype())));
  const QuantLayout layout = quant_layout(ctx, x, scale, zp);
  const std::vector<float> s = scale_values(ctx, scale);
  const std::vector<int64_t> z = zp ? zp->to_int64_vector() : std::vector<int64_t>(s.size(), 0);
  Tensor& y = ctx.allocate_output(0, out_dt, x.shape());
  const std::vector<double> xv = x.to_double_vector();
  dispatch_dtype(out_dt, [&](auto tag) {
    using Q = decltype(tag);
    if constexpr (std::is_integral_v<Q> && !std::is_same_v<Q, bool>) {
      const double qmin = static_cast<double>(std::numeric_limits<Q>::min());
      const double qmax = static_cast<double>(std::numeric_limits<Q>::max());
      Q* out = y.mutable_data<Q>();
      for (int64_t i = 0; i < x.numel(); ++i) {
        const int64_t k = layout.index(i);
        // Float inputs divide in f32 as the ONNX reference does (it matters at .5 boundaries).
        double q = x.dtype() == DType::kI32 ? xv[i] / static_cast<double>(s[k])
                                            : static_cast<double>(static_cast<float>(xv[i]) / s[k]);
        q = std::nearbyint(q);  // the default rounding mode rounds half to even
        if (std::isnan(q)) q = 0;
        out[i] = static_cast<Q>(std::clamp(q + static_cast<double>(z[k]), qmin, qmax));
      }
    }
  });
}

void dequantize_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& scale = ctx.input(1);
  const Tensor* zp = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  check_quantized_dtype(ctx, x.dtype());
  if (zp && zp->dtype() != x.dtype())
    ctx.fail("zero point dtype " + std::string(dtype_name(zp->dtype())) + " differs from input dtype " +
             std::string(dtype_name(x.dtype())));
  const QuantLayout layout = quant_layout(ctx, x, scale, zp);
  const std::vector<float> s = scale_values(ctx, scale);
  const std::vector<int64_t> z = zp ? zp->to_int64_vector() : std::vector<int64_t>(s.size(), 0);
  if (x.dtype() == DType::kI32)
    for (int64_t v : z)
      if (v != 0) ctx.fail("an i32 input needs a zero point of 0");
  const DType out_dt = ctx.opset() >= 19 ? scale.dtype() : DType::kF32;
  const std::vector<int64_t> xv = x.to_int64_vector();
  Tensor& y = ctx.allocate_output(0, out_dt, x.shape());
  dispatch_float(out_dt, [&](auto tag) {
    using T = decltype(tag);
    T* out = y.mutable_data<T>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      const int64_t k = layout.index(i);
      out[i] = static_cast<T>(static_cast<float>(xv[i] - z[k]) * s[k]);
    }
  });
}

void dynamic_quantize_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.dtype() != DType::kF32) ctx.fail("input must be f32, got " + std::string(dtype_name(x.dtype())));
  const float* px = x.data<float>();
  // The range always includes 0 so that 0 is exactly representable.
  float lo = 0, hi = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (std::isnan(px[i])) continue;
    lo = std::min(lo, px[i]);
    hi = std::max(hi, px[i]);
  }
  const float scale = (hi - lo) / 255.0f;
  float zp = 0;
  if (scale != 0) zp = std::clamp(std::nearbyint((0.0f - lo) / scale), 0.0f, 255.0f);
  Tensor& y = ctx.allocate_output(0, DType::kU8, x.shape());
  uint8_t* py = y.mutable_data<uint8_t>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    float q = scale == 0 ? 0.0f : std::nearbyint(px[i] / scale) + zp;
    if (std::isnan(q)) q = 0;
    py[i] = static_cast<uint8_t>(std::clamp(q, 0.0f, 255.0f));
  }
  ctx.set_output(1, Tensor::scalar<float>(scale));
  ctx.set_output(2, Tensor::scalar<uint8_t>(static_cast<uint8_t>(zp)));
}

}  // namespace

void register_quantize_kernels(KernelRegistry& r) {
  r.add("", "QuantizeLinear", quantize_kernel);
  r.add("", "DequantizeLinear", dequantize_kernel);
  r.add("", "DynamicQuantizeLinear", dynamic_quantize_kernel);
}

}  // namespace kiln::reference
