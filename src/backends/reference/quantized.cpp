// Reference kernels of kiln::QConv and kiln::QMatMul: dequantize the inputs to float32, run the
// float fused kernel (kiln::FusedConv / kiln::FusedMatMul) on a node with the same attributes,
// and quantize the result exactly as QuantizeLinear does (round half to even, saturate). This is
// the meaning of the DequantizeLinear -> op -> QuantizeLinear pattern the op replaces.
#include <algorithm>
#include <cmath>

#include "backends/reference/kernel.h"
#include "ops/quant_rules.h"

namespace kiln::reference {

namespace {

// x = (q - zero_point) * scale, per tensor (scales.size() == 1) or per index along `axis`.
Tensor dequantize(const KernelContext& ctx, const Tensor& q, const std::vector<float>& scales, int32_t zero_point,
                  int64_t axis, const char* what) {
  if (q.dtype() != DType::kI8 && q.dtype() != DType::kU8)
    ctx.fail(std::string(what) + " must be int8 or uint8, got " + std::string(dtype_name(q.dtype())));
  const std::vector<int64_t>& shape = q.shape();
  int64_t dim = 1, inner = 1;
  if (scales.size() != 1) {
    if (axis < 0 || axis >= static_cast<int64_t>(shape.size()) || shape[static_cast<size_t>(axis)] !=
                                                                        static_cast<int64_t>(scales.size()))
      ctx.fail(std::string(what) + ": " + std::to_string(scales.size()) + " scales do not match shape " +
               shape_to_string(shape));
    dim = shape[static_cast<size_t>(axis)];
    for (size_t d = static_cast<size_t>(axis) + 1; d < shape.size(); ++d) inner *= shape[d];
  }
  Tensor out(DType::kF32, shape);
  float* y = out.mutable_data<float>();
  const int64_t n = q.numel();
  for (int64_t i = 0; i < n; ++i) {
    const int32_t v = q.dtype() == DType::kI8 ? q.data<int8_t>()[i] : q.data<uint8_t>()[i];
    const float s = scales.size() == 1 ? scales[0] : scales[static_cast<size_t>((i / inner) % dim)];
    y[i] = static_cast<float>(v - zero_point) * s;
  }
  return out;
}

Tensor quantize(const Tensor& x, DType dtype, float scale, int32_t zero_point) {
  Tensor out(dtype, x.shape());
  const float* v = x.data<float>();
  const float lo = dtype == DType::kU8 ? 0.f : -128.f, hi = dtype == DType::kU8 ? 255.f : 127.f;
  for (int64_t i = 0; i < x.numel(); ++i) {
    // std::nearbyint rounds half to even in the default rounding mode, as QuantizeLinear specifies.
    const float q = std::clamp(std::nearbyint(v[i] / scale) + static_cast<float>(zero_point), lo, hi);
    if (dtype == DType::kU8) out.mutable_data<uint8_t>()[i] = static_cast<uint8_t>(q);
    else out.mutable_data<int8_t>()[i] = static_cast<int8_t>(q);
  }
  return out;
}

// Runs the float fused kernel `op` on a copy of this node's float attributes.
Tensor run_float(const KernelContext& ctx, const char* op, const std::vector<std::string>& attrs,
                 std::vector<const Tensor*> inputs) {
  const OpSchema* schema = OpRegistry::global().find("kiln", op, 1);
  const KernelFn fn = KernelRegistry::global().find("kiln", op);
  if (!schema || !fn) ctx.fail(std::string("the reference kiln::") + op + " kernel is not registered");
  Node n;
  n.name = ctx.node().name;
  n.domain = "kiln";
  n.op_type = op;
  n.outputs = {"y"};
  for (const auto& a : attrs)
    if (const Attribute* v = ctx.node().attr(a)) n.attrs[a] = *v;
  KernelContext inner(n, *schema, 1, std::move(inputs));
  fn(inner);
  if (inner.outputs().empty() || !inner.outputs()[0].defined()) ctx.fail(std::string(op) + " produced no output");
  return std::move(inner.outputs()[0]);
}

void finish(KernelContext& ctx, const Tensor& y) {
  const DType out = quantized_output_type(ctx);
  if (out == DType::kF32) {
    ctx.set_output(0, y);
    return;
  }
  ctx.set_output(0, quantize(y, out, ctx.attr_float("y_scale"), static_cast<int32_t>(ctx.attr_int("y_zero_point"))));
}

void qconv_kernel(KernelContext& ctx) {
  const Tensor x = dequantize(ctx, ctx.input(0), {ctx.attr_float("x_scale")},
                              static_cast<int32_t>(ctx.attr_int("x_zero_point")), 0, "X");
  if (ctx.input(1).dtype() != DType::kI8) ctx.fail("W must be int8");
  const Tensor w = dequantize(ctx, ctx.input(1), ctx.attr_floats("w_scale"), 0, 0, "W");
  std::vector<const Tensor*> in = {&x, &w, ctx.has_input(2) ? &ctx.input(2) : nullptr};
  Tensor z;
  if (ctx.has_input(3)) {
    const Tensor& zin = ctx.input(3);
    z = zin.dtype() == DType::kF32 ? zin
                                   : dequantize(ctx, zin, {ctx.attr_float("z_scale")},
                                                static_cast<int32_t>(ctx.attr_int("z_zero_point")), 0, "Z");
    in.push_back(&z);
  }
  finish(ctx, run_float(ctx, "FusedConv",
                        {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides", "activation",
                         "activation_params"},
                        in));
}

void qmatmul_kernel(KernelContext& ctx) {
  const Tensor a = dequantize(ctx, ctx.input(0), {ctx.attr_float("a_scale")},
                              static_cast<int32_t>(ctx.attr_int("a_zero_point")), 0, "A");
  if (ctx.input(1).dtype() != DType::kI8) ctx.fail("B must be int8");
  // B's scales follow op(B)'s columns: axis 1 of [K, N], axis 0 of a transposed [N, K].
  const Tensor b = dequantize(ctx, ctx.input(1), ctx.attr_floats("b_scale"), 0, ctx.attr_int("transB") ? 0 : 1, "B");
  finish(ctx, run_float(ctx, "FusedMatMul", {"transA", "transB", "alpha", "activation", "activation_params"},
                        {&a, &b, ctx.has_input(2) ? &ctx.input(2) : nullptr}));
}

}  // namespace

void register_quantized_kernels(KernelRegistry& r) {
  r.add("kiln", "QConv", qconv_kernel);
  r.add("kiln", "QMatMul", qmatmul_kernel);
}

}  // namespace kiln::reference
