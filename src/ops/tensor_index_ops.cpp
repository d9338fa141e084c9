// Schemas of the indexing ops: Gather*, Scatter*, OneHot, NonZero, Compress, ReverseSequence.
#include <algorithm>

#include "ops/op_schema.h"
#include "ops/tensor_rules.h"

namespace kiln {

namespace {

using namespace tensor_rules;
using namespace tensor_infer;

void check_index_dtype(const InferContext& ctx, size_t i) {
  const DType dt = ctx.input_type(i).dtype;
  if (dt != DType::kUndefined && dt != DType::kI32 && dt != DType::kI64)
    ctx.fail("indices must be i32 or i64, got " + std::string(dtype_name(dt)));
}

void infer_gather(InferContext& ctx) {
  const TensorType& data = ctx.input_type(0);
  check_index_dtype(ctx, 1);
  const Shape* ds = input_shape(ctx, 0);
  const Shape* is = input_shape(ctx, 1);
  if (!ds || !is) {
    ctx.set_output_unknown_shape(0, data.dtype);
    return;
  }
  const int64_t rank = static_cast<int64_t>(ds->size());
  if (rank == 0) ctx.fail("Gather needs data of rank >= 1");
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), rank);
  Shape out(ds->begin(), ds->begin() + axis);
  out.insert(out.end(), is->begin(), is->end());
  out.insert(out.end(), ds->begin() + axis + 1, ds->end());
  ctx.set_output(0, data.dtype, out);
}

void infer_gather_elements(InferContext& ctx) {
  const TensorType& data = ctx.input_type(0);
  check_index_dtype(ctx, 1);
  const Shape* ds = input_shape(ctx, 0);
  const Shape* is = input_shape(ctx, 1);
  if (ds && is && ds->size() != is->size())
    ctx.fail("data " + shape_to_string(*ds) + " and indices " + shape_to_string(*is) + " must have the same rank");
  if (ds) normalize_axis(ctx, ctx.attr_int("axis"), static_cast<int64_t>(ds->size()));
  ctx.set_output(0, TensorType{data.dtype, is ? std::optional<Shape>(*is) : std::nullopt});
}

void infer_gather_nd(InferContext& ctx) {
  const TensorType& data = ctx.input_type(0);
  if (ctx.input_type(1).dtype != DType::kUndefined && ctx.input_type(1).dtype != DType::kI64)
    ctx.fail("indices must be i64, got " + std::string(dtype_name(ctx.input_type(1).dtype)));
  const Shape* ds = input_shape(ctx, 0);
  const Shape* is = input_shape(ctx, 1);
  const int64_t b = attr_int_or(ctx, "batch_dims", 0);
  if (!ds || !is || is->empty() || !is->back().known()) {
    ctx.set_output_unknown_shape(0, data.dtype);
    return;
  }
  const int64_t r = static_cast<int64_t>(ds->size()), q = static_cast<int64_t>(is->size());
  const int64_t k = is->back().value;
  if (b < 0 || b >= std::min(r, q)) ctx.fail("batch_dims " + std::to_string(b) + " is out of range");
  if (k < 1 || b + k > r)
    ctx.fail("the last indices dimension " + std::to_string(k) + " does not fit data " + shape_to_string(*ds) +
             " with batch_dims " + std::to_string(b));
  Shape out;
  for (int64_t i = 0; i < q - 1; ++i)
    out.push_back(i < b ? merge_equal_dims(ctx, (*is)[i], (*ds)[i], "batch dims of data and indices") : (*is)[i]);
  out.insert(out.end(), ds->begin() + b + k, ds->end());
  ctx.set_output(0, data.dtype, out);
}

void infer_scatter(InferContext& ctx) {
  const TensorType& data = ctx.input_type(0);
  check_index_dtype(ctx, 1);
  const DType ut = ctx.input_type(2).dtype;
  if (ut != DType::kUndefined && data.dtype != DType::kUndefined && ut != data.dtype)
    ctx.fail("updates dtype " + std::string(dtype_name(ut)) + " differs from data dtype " +
             std::string(dtype_name(data.dtype)));
  ctx.set_output(0, data);
}

void infer_onehot(InferContext& ctx) {
  const TensorType& values = ctx.input_type(2);
  const Shape* is = input_shape(ctx, 0);
  if (!is) {
    ctx.set_output_unknown_shape(0, values.dtype);
    return;
  }
  const int64_t out_rank = static_cast<int64_t>(is->size()) + 1;
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), out_rank);
  Dim depth;
  if (auto d = const_doubles(ctx, 1)) {
    if (d->size() != 1) ctx.fail("depth must have exactly one element");
    if (!((*d)[0] >= 1)) ctx.fail("depth must be positive, got " + std::to_string((*d)[0]));
    depth = Dim(static_cast<int64_t>((*d)[0]));
  }
  Shape out = *is;
  out.insert(out.begin() + axis, depth);
  ctx.set_output(0, values.dtype, out);
}

void infer_nonzero(InferContext& ctx) {
  const Shape* s = input_shape(ctx, 0);
  // A scalar counts as a 1-element vector (numpy and ONNX Runtime do the same).
  ctx.set_output(0, DType::kI64, {s ? Dim(std::max<int64_t>(1, static_cast<int64_t>(s->size()))) : Dim(), Dim()});
}

void infer_compress(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  Dim count;
  if (const Tensor* c = ctx.input_value(1)) {
    if (c->dtype() != DType::kBool) ctx.fail("condition must be bool");
    int64_t n = 0;
    for (bool b : c->values<bool>()) n += b ? 1 : 0;
    count = Dim(n);
  }
  auto axis = ctx.attr_int_opt("axis");
  if (!axis) {
    ctx.set_output(0, x.dtype, {count});
    return;
  }
  if (!x.shape) {
    ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  Shape out = *x.shape;
  out[normalize_axis(ctx, *axis, static_cast<int64_t>(out.size()))] = count;
  ctx.set_output(0, x.dtype, out);
}

void infer_reverse_sequence(InferContext& ctx) {
  const int64_t b = ctx.attr_int("batch_axis"), t = ctx.attr_int("time_axis");
  if (!((b == 0 && t == 1) || (b == 1 && t == 0)))
    ctx.fail("batch_axis and time_axis must be 0 and 1 in some order, got " + std::to_string(b) + " and " +
             std::to_string(t));
  ctx.set_output(0, ctx.input_type(0));
}

}  // namespace

void register_tensor_index_schemas(OpRegistry& r) {
  r.add({.name = "Gather",
         .since_version = 1,
         .min_inputs = 2,
         .max_inputs = 2,
         .attrs = {attr_int("axis", 0)},
         .infer = infer_gather,
         .doc = "take slices along axis at indices"});
  r.add({.name = "GatherElements",
         .since_version = 11,
         .min_inputs = 2,
         .max_inputs = 2,
         .attrs = {attr_int("axis", 0)},
         .infer = infer_gather_elements,
         .doc = "take_along_axis"});
  r.add({.name = "GatherND",
         .since_version = 11,
         .until_version = 11,
         .min_inputs = 2,
         .max_inputs = 2,
         .infer = infer_gather_nd,
         .doc = "gather slices by index tuples"});
  r.add({.name = "GatherND",
         .since_version = 12,
         .min_inputs = 2,
         .max_inputs = 2,
         .attrs = {attr_int("batch_dims", 0)},
         .infer = infer_gather_nd,
         .doc = "gather slices by index tuples (batch_dims)"});
  r.add({.name = "Scatter",
         .since_version = 9,
         .until_version = 10,
         .min_inputs = 3,
         .max_inputs = 3,
         .attrs = {attr_int("axis", 0)},
         .infer = infer_scatter,
         .doc = "ScatterElements without reduction"});
  r.add({.name = "ScatterElements",
         .since_version = 11,
         .until_version = 15,
         .min_inputs = 3,
         .max_inputs = 3,
         .attrs = {attr_int("axis", 0)},
         .infer = infer_scatter,
         .doc = "write updates at indices along axis"});
  r.add({.name = "ScatterElements",
         .since_version = 16,
         .min_inputs = 3,
         .max_inputs = 3,
         .attrs = {attr_int("axis", 0), attr_string("reduction", "none")},
         .infer = infer_scatter,
         .doc = "write updates at indices along axis (reduction add/mul from 16, max/min from 18)"});
  r.add({.name = "ScatterND",
         .since_version = 11,
         .until_version = 15,
         .min_inputs = 3,
         .max_inputs = 3,
         .infer = infer_scatter,
         .doc = "write update slices at index tuples"});
  r.add({.name = "ScatterND",
         .since_version = 16,
         .min_inputs = 3,
         .max_inputs = 3,
         .attrs = {attr_string("reduction", "none")},
         .infer = infer_scatter,
         .doc = "write update slices at index tuples (reduction add/mul from 16, max/min from 18)"});
  r.add({.name = "OneHot",
         .since_version = 9,
         .min_inputs = 3,
         .max_inputs = 3,
         .attrs = {attr_int("axis", -1)},
         .infer = infer_onehot,
         .doc = "one-hot encoding with [off, on] values"});
  r.add({.name = "NonZero", .since_version = 9, .infer = infer_nonzero, .doc = "indices of non-zero elements"});
  r.add({.name = "Compress",
         .since_version = 9,
         .min_inputs = 2,
         .max_inputs = 2,
         .attrs = {attr_optional("axis", AttrKind::kInt)},
         .infer = infer_compress,
         .doc = "select slices where condition is true"});
  r.add({.name = "ReverseSequence",
         .since_version = 10,
         .min_inputs = 2,
         .max_inputs = 2,
         .attrs = {attr_int("batch_axis", 1), attr_int("time_axis", 0)},
         .infer = infer_reverse_sequence,
         .doc = "reverse the first seq_len[i] time steps of each batch entry"});
}

}  // namespace kiln
