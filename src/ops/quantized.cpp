// Schemas of Kiln's int8 compute ops, made by the fuse-qdq pass from DequantizeLinear -> op ->
// QuantizeLinear patterns (explicit Q/DQ models and Kiln's own calibrated INT8):
//
//   kiln::QConv(X, W, [B], [Z])     Y = requant(act(Conv(dq(X), dq(W)) + B + dq(Z)))
//   kiln::QMatMul(A, B, [C])        Y = requant(act(alpha * dq(A) x op(dq(B)) + C))
//
// X/A and Z are int8 or uint8 with per-tensor scale and zero point (attributes); W/B are int8
// with zero point 0 and one scale per output channel (or one for all); bias is float32. The output
// is float32 when y_type is "float32", else quantized with y_scale/y_zero_point (round half to
// even, saturate), exactly as the DequantizeLinear/QuantizeLinear pair it replaces. y_source names
// the float tensor a quantized output stands for (tools compare it with the float model).
#include <array>
#include <cmath>

#include "ops/fused_activation.h"
#include "ops/op_schema.h"
#include "ops/quant_rules.h"

namespace kiln {

DType quantized_output_type(const NodeView& v) {
  const std::string& t = v.attr_string("y_type");
  if (t == "float32") return DType::kF32;
  if (t == "int8") return DType::kI8;
  if (t == "uint8") return DType::kU8;
  v.fail("y_type must be float32, int8 or uint8, got '" + t + "'");
}

namespace {

void require_8bit(const InferContext& ctx, size_t i, const char* what) {
  if (!ctx.has_input(i)) return;
  const DType d = ctx.input_type(i).dtype;
  if (d != DType::kUndefined && !dtype_is_8bit(d))
    ctx.fail(std::string(what) + " must be int8 or uint8, got " + std::string(dtype_name(d)));
}

void require_dtype(const InferContext& ctx, size_t i, DType want, const char* what) {
  if (!ctx.has_input(i)) return;
  const DType d = ctx.input_type(i).dtype;
  if (d != DType::kUndefined && d != want)
    ctx.fail(std::string(what) + " must be " + std::string(dtype_name(want)) + ", got " + std::string(dtype_name(d)));
}

// Scales must be positive and finite, zero points in the 8-bit range of their value.
void check_quant_params(const InferContext& ctx, const char* scale, const char* zp, DType dtype) {
  const float s = ctx.attr_float(scale);
  if (!(s > 0.f) || !std::isfinite(s)) ctx.fail(std::string(scale) + " must be positive and finite");
  const int64_t z = ctx.attr_int(zp);
  const int64_t lo = dtype == DType::kU8 ? 0 : -128, hi = dtype == DType::kU8 ? 255 : 127;
  if (z < lo || z > hi)
    ctx.fail(std::string(zp) + " " + std::to_string(z) + " is outside " + std::string(dtype_name(dtype)) + "'s range");
}

void check_weight_scales(const InferContext& ctx, const char* attr, const Dim& channels) {
  const auto& s = ctx.attr_floats(attr);
  if (s.empty()) ctx.fail(std::string(attr) + " is empty");
  for (float v : s)
    if (!(v > 0.f) || !std::isfinite(v)) ctx.fail(std::string(attr) + " must be positive and finite");
  if (s.size() != 1 && channels.known() && static_cast<int64_t>(s.size()) != channels.value)
    ctx.fail(std::string(attr) + " has " + std::to_string(s.size()) + " values for " + std::to_string(channels.value) +
             " output channels");
}

void check_output_quant(const InferContext& ctx, DType y) {
  if (y != DType::kF32) check_quant_params(ctx, "y_scale", "y_zero_point", y);
}

void infer_qconv(InferContext& ctx) {
  check_activation(ctx, kConvActivations);
  require_8bit(ctx, 0, "X");
  require_dtype(ctx, 1, DType::kI8, "W");
  require_dtype(ctx, 2, DType::kF32, "B");
  const DType y = quantized_output_type(ctx);
  if (ctx.input_type(0).dtype != DType::kUndefined)
    check_quant_params(ctx, "x_scale", "x_zero_point", ctx.input_type(0).dtype);
  check_output_quant(ctx, y);
  if (ctx.has_input(3)) {
    const DType z = ctx.input_type(3).dtype;
    if (z != DType::kUndefined && z != DType::kF32 && !dtype_is_8bit(z))
      ctx.fail("Z must be float32, int8 or uint8, got " + std::string(dtype_name(z)));
    if (dtype_is_8bit(z)) check_quant_params(ctx, "z_scale", "z_zero_point", z);
  }
  infer_conv_like(ctx, 0, 1, y);
  const TensorType* out = ctx.outputs()[0] ? &*ctx.outputs()[0] : nullptr;
  check_weight_scales(ctx, "w_scale", out && out->shape ? (*out->shape)[1] : Dim());
  if (ctx.has_input(2) && ctx.input_type(2).shape && out && out->shape) {
    const Shape& b = *ctx.input_type(2).shape;
    const Dim& m = (*out->shape)[1];
    if (b.size() != 1 || (m.known() && b[0].known() && b[0].value != m.value))
      ctx.fail("B has shape " + shape_to_string(b) + ", expected [" + m.to_string() + "]");
  }
  if (ctx.has_input(3) && ctx.input_type(3).shape && out && out->shape) {
    const Shape& z = *ctx.input_type(3).shape;
    if (z.size() != out->shape->size())
      ctx.fail("Z has shape " + shape_to_string(z) + ", expected the output's shape " + shape_to_string(*out->shape));
    for (size_t i = 0; i < z.size(); ++i) {
      const Dim& o = (*out->shape)[i];
      if (o.known() && z[i].known() && o.value != z[i].value)
        ctx.fail("Z has shape " + shape_to_string(z) + ", expected the output's shape " + shape_to_string(*out->shape));
    }
  }
}

void infer_qmatmul(InferContext& ctx) {
  check_activation(ctx, kConvActivations);
  require_8bit(ctx, 0, "A");
  require_dtype(ctx, 1, DType::kI8, "B");
  require_dtype(ctx, 2, DType::kF32, "C");
  if (ctx.attr_int("transA") != 0) ctx.fail("transA must be 0");
  const int64_t tb = ctx.attr_int("transB");
  if (tb != 0 && tb != 1) ctx.fail("transB must be 0 or 1, got " + std::to_string(tb));
  if (ctx.has_input(1) && ctx.input_type(1).shape && ctx.input_type(1).shape->size() != 2)
    ctx.fail("B must be 2-D, got " + shape_to_string(*ctx.input_type(1).shape));
  const DType y = quantized_output_type(ctx);
  if (ctx.input_type(0).dtype != DType::kUndefined)
    check_quant_params(ctx, "a_scale", "a_zero_point", ctx.input_type(0).dtype);
  check_output_quant(ctx, y);
  const auto shape = fused_matmul_shape(ctx);
  check_weight_scales(ctx, "b_scale", shape ? shape->back() : Dim());
  if (!shape) {
    ctx.set_output_unknown_shape(0, y);
    return;
  }
  if (ctx.has_input(2) && ctx.input_type(2).shape) {
    const Shape& c = *ctx.input_type(2).shape;
    const Dim& n = shape->back();
    if (c.size() != 1 || (n.known() && c[0].known() && c[0].value != n.value))
      ctx.fail("C has shape " + shape_to_string(c) + ", expected [" + n.to_string() + "]");
  }
  ctx.set_output(0, y, *shape);
}

std::vector<AttrSpec> quant_attrs(const char* in) {
  const std::string s = in;
  return {attr_float(s + "_scale", 1.f), attr_int(s + "_zero_point", 0)};
}

}  // namespace

void register_quantized_schemas(OpRegistry& r) {
  std::vector<AttrSpec> conv = {attr_string("auto_pad", "NOTSET"), attr_ints("dilations"), attr_int("group", 1),
                                attr_ints("kernel_shape"), attr_ints("pads"), attr_ints("strides"),
                                attr_string("activation", ""), attr_floats("activation_params"),
                                attr_optional("fused_ops", AttrKind::kStrings), attr_floats("w_scale"),
                                attr_string("y_type", "float32"), attr_string("y_source", "")};
  for (const char* v : {"x", "z", "y"})
    for (auto& a : quant_attrs(v)) conv.push_back(a);
  r.add({.domain = "kiln", .name = "QConv", .since_version = 1, .min_inputs = 2, .max_inputs = 4, .attrs = conv,
         .infer = infer_qconv,
         .doc = "int8 act(Conv(dq(X), dq(W)) + B + dq(Z)), requantized to y_type (per-channel W scales)"});
  std::vector<AttrSpec> mm = {attr_int("transA", 0), attr_int("transB", 0), attr_float("alpha", 1.f),
                              attr_string("activation", ""), attr_floats("activation_params"),
                              attr_optional("fused_ops", AttrKind::kStrings), attr_floats("b_scale"),
                              attr_string("y_type", "float32"), attr_string("y_source", "")};
  for (const char* v : {"a", "y"})
    for (auto& a : quant_attrs(v)) mm.push_back(a);
  r.add({.domain = "kiln", .name = "QMatMul", .since_version = 1, .min_inputs = 2, .max_inputs = 3, .attrs = mm,
         .infer = infer_qmatmul,
         .doc = "int8 act(alpha * dq(A) x op(dq(B)) + C), requantized to y_type (per-column B scales)"});
}

}  // namespace kiln
