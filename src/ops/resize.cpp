// Schemas of Resize (opsets 10, 11-12, 13-17, 18+) and Upsample (7-9).
#include <cmath>

#include "ops/op_schema.h"
#include "ops/tensor_rules.h"

namespace kiln {

namespace {

using namespace tensor_rules;
using namespace tensor_infer;

// Indices of the scales and sizes inputs for this version (sizes: none before opset 11).
size_t scales_input(const NodeView& v) { return v.node().op_type == "Upsample" || v.opset() < 11 ? 1 : 2; }

void infer_resize(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  if (!x.shape) {
    ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  const Shape& in = *x.shape;
  const int64_t rank = static_cast<int64_t>(in.size());
  const std::vector<int64_t> axes = resize_axes(ctx, rank);

  std::optional<std::vector<double>> scales;
  std::optional<std::vector<int64_t>> sizes;
  bool unknown = false;  // a scales/sizes input whose value is not constant
  if (ctx.node().op_type == "Upsample" && ctx.opset() < 9) {
    const auto& f = ctx.attr_floats("scales");
    scales = std::vector<double>(f.begin(), f.end());
  } else {
    const size_t si = scales_input(ctx);
    if (ctx.has_input(si)) {
      scales = const_doubles(ctx, si);
      if (!scales && known_length(ctx, si) != std::optional<int64_t>(0)) unknown = true;
      if (scales && scales->empty()) scales.reset();
    }
    if (si == 2 && ctx.has_input(3)) {
      sizes = const_ints(ctx, 3);
      if (!sizes && known_length(ctx, 3) != std::optional<int64_t>(0)) unknown = true;
      if (sizes && sizes->empty()) sizes.reset();
    }
  }
  if (scales && sizes) ctx.fail("only one of scales and sizes may be given");
  if (!scales && !sizes) {
    if (!unknown) ctx.fail("one of scales or sizes is required");
    Shape out = in;
    for (int64_t a : axes) out[a] = Dim();
    ctx.set_output(0, x.dtype, out);
    return;
  }
  if (shape_is_static(in)) {
    ctx.set_output(0, x.dtype, shape_from_dims(resize_geometry(ctx, static_dims(in), scales, sizes).out));
    return;
  }
  // Symbolic input: a dim keeps its symbol where the scale is exactly 1.
  Shape out = in;
  const size_t n = scales ? scales->size() : sizes->size();
  if (n != axes.size())
    ctx.fail(std::string(scales ? "scales" : "sizes") + " has " + std::to_string(n) + " values, expected " +
             std::to_string(axes.size()));
  const bool stretch = attr_string_or(ctx, "keep_aspect_ratio_policy", "stretch") == "stretch";
  for (size_t i = 0; i < axes.size(); ++i) {
    const Dim& d = in[axes[i]];
    if (sizes) {
      out[axes[i]] = stretch ? Dim((*sizes)[i]) : Dim();
    } else if ((*scales)[i] == 1.0) {
      out[axes[i]] = d;
    } else {
      out[axes[i]] =
          d.known() ? Dim(static_cast<int64_t>(std::floor((*scales)[i] * static_cast<double>(d.value)))) : Dim();
    }
  }
  ctx.set_output(0, x.dtype, out);
}

}  // namespace

void register_resize_schemas(OpRegistry& r) {
  const std::vector<AttrSpec> v11 = {attr_string("coordinate_transformation_mode", "half_pixel"),
                                     attr_float("cubic_coeff_a", -0.75f),
                                     attr_int("exclude_outside", 0),
                                     attr_float("extrapolation_value", 0.0f),
                                     attr_string("mode", "nearest"),
                                     attr_string("nearest_mode", "round_prefer_floor")};
  std::vector<AttrSpec> v18 = v11;
  v18.push_back(attr_int("antialias", 0));
  v18.push_back(attr_ints("axes"));
  v18.push_back(attr_string("keep_aspect_ratio_policy", "stretch"));

  r.add({.name = "Upsample",
         .since_version = 7,
         .until_version = 8,
         .attrs = {attr_string("mode", "nearest"), attr_required("scales", AttrKind::kFloats)},
         .infer = infer_resize,
         .doc = "nearest/linear upsampling by scales (attribute)"});
  r.add({.name = "Upsample",
         .since_version = 9,
         .until_version = 9,
         .min_inputs = 2,
         .max_inputs = 2,
         .attrs = {attr_string("mode", "nearest")},
         .infer = infer_resize,
         .doc = "nearest/linear upsampling by scales (input)"});
  r.add({.name = "Resize",
         .since_version = 10,
         .until_version = 10,
         .min_inputs = 2,
         .max_inputs = 2,
         .attrs = {attr_string("mode", "nearest")},
         .infer = infer_resize,
         .doc = "nearest/linear resize by scales (asymmetric coordinates)"});
  r.add({.name = "Resize",
         .since_version = 11,
         .until_version = 12,
         .min_inputs = 3,
         .max_inputs = 4,
         .attrs = v11,
         .infer = infer_resize,
         .doc = "resize by scales or sizes (roi, coordinate modes, cubic)"});
  r.add({.name = "Resize",
         .since_version = 13,
         .until_version = 17,
         .min_inputs = 1,
         .max_inputs = 4,
         .attrs = v11,
         .infer = infer_resize,
         .doc = "resize by scales or sizes (optional roi/scales/sizes)"});
  r.add({.name = "Resize",
         .since_version = 18,
         .min_inputs = 1,
         .max_inputs = 4,
         .attrs = v18,
         .infer = infer_resize,
         .doc = "resize (antialias, axes, keep_aspect_ratio_policy; half_pixel_symmetric from 19)"});
}

}  // namespace kiln
