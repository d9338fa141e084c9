// Schema of kiln::FusedConv, the fused op of fuse-conv-bias-activation: Y = act(Conv(X, W, B) + Z).
#include <algorithm>
#include <array>
#include <string_view>

#include "ops/fused_activation.h"
#include "ops/op_schema.h"

namespace kiln {

namespace {

void infer_fused_conv(InferContext& ctx) {
  check_activation(ctx, kConvActivations);
  // "bf16": the CPU tactics multiply in bfloat16 (tensors stay as typed; the reference ignores it).
  if (const std::string& p = ctx.attr_string("compute_precision"); !p.empty() && p != "bf16")
    ctx.fail("compute_precision must be \"\" (float32) or \"bf16\", got \"" + p + "\"");
  // The convolution part is Conv's own inference, run on this node: FusedConv declares Conv's
  // attributes with Conv's defaults, so the view reads them identically.
  const OpSchema* conv = OpRegistry::global().find("", "Conv", 11);
  if (!conv || !conv->infer) ctx.fail("the Conv schema is not registered");
  conv->infer(ctx);
  if (!ctx.outputs()[0]) return;
  TensorType out = *ctx.outputs()[0];
  const DType x = ctx.input_type(0).dtype;
  if (ctx.has_input(2)) {
    const TensorType& b = ctx.input_type(2);
    if (x != DType::kUndefined && b.dtype != DType::kUndefined && b.dtype != x)
      ctx.fail("B has dtype " + std::string(dtype_name(b.dtype)) + ", expected " + std::string(dtype_name(x)));
    if (b.shape && out.shape) {
      const Dim& m = (*out.shape)[1];
      if (b.shape->size() != 1 || (m.known() && (*b.shape)[0].known() && (*b.shape)[0].value != m.value))
        ctx.fail("B has shape " + shape_to_string(*b.shape) + ", expected [" + m.to_string() + "]");
    }
  }
  if (ctx.has_input(3)) {
    const TensorType& z = ctx.input_type(3);
    if (x != DType::kUndefined && z.dtype != DType::kUndefined && z.dtype != x)
      ctx.fail("Z has dtype " + std::string(dtype_name(z.dtype)) + ", expected " + std::string(dtype_name(x)));
    if (z.shape && out.shape) {
      // Z is added without broadcasting, so it must have Y's shape; it also pins down output dims
      // that Conv's inference could not resolve (symbolic spatial sizes with strides).
      if (z.shape->size() != out.shape->size())
        ctx.fail("Z has shape " + shape_to_string(*z.shape) + ", expected the output's shape " +
                 shape_to_string(*out.shape));
      for (size_t i = 0; i < z.shape->size(); ++i) {
        Dim& o = (*out.shape)[i];
        const Dim& d = (*z.shape)[i];
        if (o.known() && d.known() && o.value != d.value)
          ctx.fail("Z has shape " + shape_to_string(*z.shape) + ", expected the output's shape " +
                   shape_to_string(*out.shape));
        if (!o.known() && o.symbol.empty()) o = d;
      }
    } else if (z.shape && !out.shape) {
      out.shape = z.shape;
    }
  }
  ctx.set_output(0, out);
}

}  // namespace

void register_fused_conv_schemas(OpRegistry& r) {
  r.add({.domain = "kiln",
         .name = "FusedConv",
         .since_version = 1,
         .min_inputs = 2,
         .max_inputs = 4,
         .attrs = {attr_string("auto_pad", "NOTSET"), attr_ints("dilations"), attr_int("group", 1),
                   attr_ints("kernel_shape"), attr_ints("pads"), attr_ints("strides"), attr_string("activation", ""),
                   attr_floats("activation_params"), attr_string("compute_precision", ""),
                   attr_optional("fused_ops", AttrKind::kStrings)},
         .infer = infer_fused_conv,
         .doc = "act(Conv(X, W, B) + Z): convolution with optional bias, residual input Z and activation; "
                "compute_precision \"bf16\" multiplies in bfloat16 with float32 accumulation"});
}

}  // namespace kiln
