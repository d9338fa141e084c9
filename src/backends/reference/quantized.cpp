// Reference kernels of kiln::QConv and kiln::QMatMul: dequantize the inputs to float32, run the
// float fused kernel (kiln::FusedConv / kiln::FusedMatMul) on a node with the same attributes,
// and quantize the result, each step through the reference DequantizeLinear / QuantizeLinear
// kernels: this is the meaning of the DequantizeLinear -> op -> QuantizeLinear pattern the op
// replaces.
#include <map>

#include "backends/reference/kernel.h"
#include "ops/quant_rules.h"

namespace kiln::reference {

namespace {

// Runs the reference kernel of `domain`::`op` (schema of `opset`) on a node carrying this node's
// name and the given attributes; returns its output 0.
Tensor run_kernel(const KernelContext& ctx, const std::string& domain, const char* op, int64_t opset,
                  std::map<std::string, Attribute> attrs, std::vector<const Tensor*> inputs) {
  const OpSchema* schema = OpRegistry::global().find(domain, op, opset);
  const KernelFn fn = KernelRegistry::global().find(domain, op);
  if (!schema || !fn) ctx.fail(std::string("the reference ") + op + " kernel is not registered");
  Node n;
  n.name = ctx.node().name;
  n.domain = domain;
  n.op_type = op;
  n.outputs = {"y"};
  n.attrs = std::move(attrs);
  KernelContext inner(n, *schema, opset, std::move(inputs));
  fn(inner);
  if (inner.outputs().empty() || !inner.outputs()[0].defined()) ctx.fail(std::string(op) + " produced no output");
  return std::move(inner.outputs()[0]);
}

// The zero point tensor of an 8-bit type: one value, or `count` equal ones.
Tensor zero_point(DType dtype, int32_t value, int64_t count) {
  Tensor z = count ? Tensor(dtype, {count}) : Tensor(dtype, {});
  for (int64_t i = 0; i < z.numel(); ++i) {
    if (dtype == DType::kU8) z.mutable_data<uint8_t>()[i] = static_cast<uint8_t>(value);
    else z.mutable_data<int8_t>()[i] = static_cast<int8_t>(value);
  }
  return z;
}

// DequantizeLinear (opset 13): per tensor (one scale) or per index along `axis`.
Tensor dequantize(const KernelContext& ctx, const Tensor& q, const std::vector<float>& scales, int32_t zp,
                  int64_t axis, const char* what) {
  if (!dtype_is_8bit(q.dtype()))
    ctx.fail(std::string(what) + " must be int8 or uint8, got " + std::string(dtype_name(q.dtype())));
  const bool per_tensor = scales.size() == 1;
  const int64_t n = static_cast<int64_t>(scales.size());
  const Tensor s = per_tensor ? Tensor::scalar<float>(scales[0]) : Tensor::from_vector<float>({n}, scales);
  const Tensor z = zero_point(q.dtype(), zp, per_tensor ? 0 : n);
  std::map<std::string, Attribute> attrs;
  if (!per_tensor) attrs["axis"] = Attribute::of_int(axis);
  return run_kernel(ctx, "", "DequantizeLinear", 13, std::move(attrs), {&q, &s, &z});
}

// QuantizeLinear (opset 13): round half to even, saturate.
Tensor quantize(const KernelContext& ctx, const Tensor& x, DType dtype, float scale, int32_t zp) {
  const Tensor s = Tensor::scalar<float>(scale);
  const Tensor z = zero_point(dtype, zp, 0);
  return run_kernel(ctx, "", "QuantizeLinear", 13, {}, {&x, &s, &z});
}

// Runs the float fused kernel `op` on a copy of this node's float attributes.
Tensor run_float(const KernelContext& ctx, const char* op, const std::vector<std::string>& attrs,
                 std::vector<const Tensor*> inputs) {
  std::map<std::string, Attribute> copied;
  for (const auto& a : attrs)
    if (const Attribute* v = ctx.node().attr(a)) copied[a] = *v;
  return run_kernel(ctx, "kiln", op, 1, std::move(copied), std::move(inputs));
}

void finish(KernelContext& ctx, const Tensor& y) {
  const DType out = quantized_output_type(ctx);
  if (out == DType::kF32) {
    ctx.set_output(0, y);
    return;
  }
  ctx.set_output(0,
                 quantize(ctx, y, out, ctx.attr_float("y_scale"), static_cast<int32_t>(ctx.attr_int("y_zero_point"))));
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
