// Shape rules of the tensor ops, shared by their schemas (inference) and the reference kernels so
// that both derive output shapes from attributes and shape-like inputs in exactly the same way.
#pragma once
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ops/op_schema.h"

namespace kiln::tensor_rules {

// Integer/string attribute that only some versions of an op declare: `fallback` for versions
// whose schema lacks it.
int64_t attr_int_or(const NodeView& v, const std::string& name, int64_t fallback);
std::string attr_string_or(const NodeView& v, const std::string& name, const std::string& fallback);

// Reshape: output shape for `spec` (0 copies the input dim unless allowzero, -1 is inferred).
// `in` may be nullptr when the input rank is unknown. Fails on invalid specs and, when every dim
// is known, on element-count mismatches.
Shape reshape_shape(const NodeView& v, const Shape* in, const std::vector<int64_t>& spec, bool allowzero);

// Squeeze/Unsqueeze axes normalised against `rank`, failing on duplicates.
std::vector<int64_t> normalize_axes(const NodeView& v, const std::vector<int64_t>& axes, int64_t rank);
// Output shape of Squeeze. axes empty = every dim of size 1; returns nullopt when that cannot be
// decided (unknown dims).
std::optional<Shape> squeeze_shape(const NodeView& v, const Shape& in, const std::vector<int64_t>& axes);
Shape unsqueeze_shape(const NodeView& v, const Shape& in, const std::vector<int64_t>& axes);

// Slice: one entry per sliced axis, with the raw (unclamped) start/end and the step.
struct SliceAxis {
  int64_t axis = 0, start = 0, end = 0, step = 1;
};
std::vector<SliceAxis> slice_axes(const NodeView& v, int64_t rank, const std::vector<int64_t>& starts,
                                  const std::vector<int64_t>& ends, const std::optional<std::vector<int64_t>>& axes,
                                  const std::optional<std::vector<int64_t>>& steps);
// First index and element count of a slice along a dimension of size `dim` (numpy clamping).
std::pair<int64_t, int64_t> slice_range(int64_t dim, int64_t start, int64_t end, int64_t step);

// Pad: begin/end amounts for every axis ([b0..b(r-1), e0..e(r-1)]) from `pads` and optional `axes`.
std::vector<int64_t> pad_amounts(const NodeView& v, int64_t rank, const std::vector<int64_t>& pads,
                                 const std::optional<std::vector<int64_t>>& axes);

// Split: chunk sizes of a dimension of size `dim` into `num_outputs` outputs.
std::vector<int64_t> split_sizes(const NodeView& v, int64_t dim, size_t num_outputs,
                                 const std::optional<std::vector<int64_t>>& split);

// Shape (opset 15+ start/end): the [start, end) range of dims it reports.
std::pair<int64_t, int64_t> shape_range(const NodeView& v, int64_t rank);

// Range: element count.
int64_t range_count(const NodeView& v, double start, double limit, double delta);

// Resize/Upsample geometry for a static input shape: output dims and per-dim scale factors.
struct ResizeGeometry {
  std::vector<int64_t> out;
  std::vector<double> scale;
};
// scales / sizes are the (non-empty) inputs as given (one entry per resized axis).
ResizeGeometry resize_geometry(const NodeView& v, const std::vector<int64_t>& in,
                               const std::optional<std::vector<double>>& scales,
                               const std::optional<std::vector<int64_t>>& sizes);
// The axes a Resize node resizes (attribute `axes` from opset 18, else all), normalised.
std::vector<int64_t> resize_axes(const NodeView& v, int64_t rank);

}  // namespace kiln::tensor_rules

namespace kiln::tensor_infer {

// Helpers for inference functions of the tensor ops.

// The input's shape, or nullptr when even its rank is unknown.
inline const Shape* input_shape(const InferContext& ctx, size_t i) {
  const TensorType& t = ctx.input_type(i);
  return t.shape ? &*t.shape : nullptr;
}
// The constant value of an integer input as int64, or nullopt when absent or not constant.
std::optional<std::vector<int64_t>> const_ints(const InferContext& ctx, size_t i);
// The constant value of a numeric input as doubles, or nullopt when absent or not constant.
std::optional<std::vector<double>> const_doubles(const InferContext& ctx, size_t i);
// The length of a 1-D input when its type says so.
std::optional<int64_t> known_length(const InferContext& ctx, size_t i);
inline Shape unknown_dims(size_t rank) { return Shape(rank, Dim()); }
// Two dims that must be equal at run time: the more informative one (fails if both are known
// and differ).
Dim merge_equal_dims(const NodeView& v, const Dim& a, const Dim& b, const std::string& what);

}  // namespace kiln::tensor_infer
