// Schemas of QuantizeLinear, DequantizeLinear (opsets 10, 13, 19, 21) and DynamicQuantizeLinear.
#include "ops/op_schema.h"
#include "ops/tensor_rules.h"

namespace kiln {

namespace {

using namespace tensor_rules;

void infer_quantize(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  DType out = DType::kU8;
  const int64_t code = attr_int_or(ctx, "output_dtype", 0);
  if (code != 0) {
    out = dtype_from_onnx(static_cast<int>(code));
    if (out == DType::kUndefined) ctx.unsupported("output_dtype " + std::to_string(code) + " is not supported");
  }
  if (ctx.has_input(2) && ctx.input_type(2).dtype != DType::kUndefined) {
    const DType zp = ctx.input_type(2).dtype;
    if (code != 0 && zp != out)
      ctx.fail("output_dtype " + std::string(dtype_name(out)) + " differs from the zero point's dtype " +
               std::string(dtype_name(zp)));
    out = zp;
  }
  ctx.set_output(0, TensorType{out, x.shape});
}

void infer_dequantize(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  DType out = DType::kF32;
  if (ctx.opset() >= 19 && ctx.input_type(1).dtype != DType::kUndefined) out = ctx.input_type(1).dtype;
  ctx.set_output(0, TensorType{out, x.shape});
}

void infer_dynamic_quantize(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  ctx.set_output(0, TensorType{DType::kU8, x.shape});
  ctx.set_output(1, DType::kF32, Shape{});
  ctx.set_output(2, DType::kU8, Shape{});
}

}  // namespace

void register_quantize_schemas(OpRegistry& r) {
  r.add({.name = "QuantizeLinear",
         .since_version = 10,
         .until_version = 12,
         .min_inputs = 2,
         .max_inputs = 3,
         .infer = infer_quantize,
         .doc = "saturate(round(x / scale) + zero_point), per tensor"});
  r.add({.name = "QuantizeLinear",
         .since_version = 13,
         .until_version = 18,
         .min_inputs = 2,
         .max_inputs = 3,
         .attrs = {attr_int("axis", 1)},
         .infer = infer_quantize,
         .doc = "saturate(round(x / scale) + zero_point), per tensor or per axis"});
  r.add({.name = "QuantizeLinear",
         .since_version = 19,
         .until_version = 20,
         .min_inputs = 2,
         .max_inputs = 3,
         .attrs = {attr_int("axis", 1), attr_int("saturate", 1)},
         .infer = infer_quantize,
         .doc = "saturate(round(x / scale) + zero_point), per tensor or per axis (16-bit float inputs)"});
  r.add(
      {.name = "QuantizeLinear",
       .since_version = 21,
       .min_inputs = 2,
       .max_inputs = 3,
       .attrs = {attr_int("axis", 1), attr_int("block_size", 0), attr_int("output_dtype", 0), attr_int("saturate", 1)},
       .infer = infer_quantize,
       .doc = "saturate(round(x / scale) + zero_point), per tensor, axis or block"});
  r.add({.name = "DequantizeLinear",
         .since_version = 10,
         .until_version = 12,
         .min_inputs = 2,
         .max_inputs = 3,
         .infer = infer_dequantize,
         .doc = "(x - zero_point) * scale, per tensor"});
  r.add({.name = "DequantizeLinear",
         .since_version = 13,
         .until_version = 18,
         .min_inputs = 2,
         .max_inputs = 3,
         .attrs = {attr_int("axis", 1)},
         .infer = infer_dequantize,
         .doc = "(x - zero_point) * scale, per tensor or per axis"});
  r.add({.name = "DequantizeLinear",
         .since_version = 19,
         .until_version = 20,
         .min_inputs = 2,
         .max_inputs = 3,
         .attrs = {attr_int("axis", 1)},
         .infer = infer_dequantize,
         .doc = "(x - zero_point) * scale, per tensor or per axis (output in the scale's dtype)"});
  r.add({.name = "DequantizeLinear",
         .since_version = 21,
         .min_inputs = 2,
         .max_inputs = 3,
         .attrs = {attr_int("axis", 1), attr_int("block_size", 0)},
         .infer = infer_dequantize,
         .doc = "(x - zero_point) * scale, per tensor, axis or block"});
  r.add({.name = "DynamicQuantizeLinear",
         .since_version = 11,
         .min_outputs = 3,
         .max_outputs = 3,
         .infer = infer_dynamic_quantize,
         .doc = "uint8 quantization with scale and zero point from the data range"});
}

}  // namespace kiln
