// Schemas of softmax-family, reduction, ArgMax/ArgMin, TopK, CumSum, Einsum and NonMaxSuppression ops.
#include <algorithm>
#include <array>
#include <set>
#include <string_view>

#include "ops/einsum_equation.h"
#include "ops/op_schema.h"

namespace kiln {

namespace {

bool is_float_dtype(DType dt) {
  return dt == DType::kF32 || dt == DType::kF64 || dt == DType::kF16 || dt == DType::kBF16;
}
bool is_numeric_dtype(DType dt) { return is_float_dtype(dt) || dtype_is_integer(dt); }

// Fails when a known input dtype is outside what the op computes on (kUndefined passes: unknown yet).
void require_dtype(const InferContext& ctx, size_t input, bool ok, const char* what) {
  const DType dt = ctx.input_type(input).dtype;
  if (dt != DType::kUndefined && !ok)
    ctx.fail("input " + std::to_string(input) + " has dtype " + std::string(dtype_name(dt)) + ", expected " + what);
}

// ---- Softmax, LogSoftmax, Hardmax

void infer_softmax(InferContext& ctx) {
  const TensorType& in = ctx.input_type(0);
  require_dtype(ctx, 0, in.dtype == DType::kUndefined || is_float_dtype(in.dtype), "a float type");
  if (in.shape) {
    const int64_t rank = static_cast<int64_t>(in.shape->size());
    const int64_t axis = ctx.attr_int("axis");
    if (ctx.opset() >= 13) {
      if (rank > 0) normalize_axis(ctx, axis, rank);
    } else if (axis < -rank || axis > rank) {
      // Before opset 13 the input is coerced to 2-D around `axis`, as Flatten does: [-r, r] is valid.
      ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
    }
  }
  ctx.set_output(0, in);
}

// ---- Reductions

// Axes of a reduction, from the attribute (older versions) or the optional second input.
// Returns false when they come from an input whose value is not known.
bool reduce_axes(const InferContext& ctx, std::vector<int64_t>& axes) {
  if (ctx.schema().find_attr("axes")) {
    axes = ctx.attr_ints("axes");
    return true;
  }
  axes.clear();
  if (!ctx.has_input(1)) return true;
  const TensorType& t = ctx.input_type(1);
  if (t.dtype != DType::kUndefined && t.dtype != DType::kI64)
    ctx.fail("axes input has dtype " + std::string(dtype_name(t.dtype)) + ", expected i64");
  if (t.shape && t.shape->size() > 1) ctx.fail("axes input must be 1-D, got shape " + shape_to_string(*t.shape));
  const Tensor* v = ctx.input_value(1);
  if (!v) return false;
  axes = v->to_int64_vector();
  return true;
}

void infer_reduce(InferContext& ctx) {
  const TensorType& in = ctx.input_type(0);
  const bool minmax = ctx.schema().name == "ReduceMax" || ctx.schema().name == "ReduceMin";
  require_dtype(ctx, 0, is_numeric_dtype(in.dtype) || (minmax && in.dtype == DType::kBool),
                minmax ? "a numeric or bool type" : "a numeric type");
  const bool keepdims = ctx.attr_int("keepdims") != 0;
  const bool noop = ctx.schema().find_attr("noop_with_empty_axes") && ctx.attr_int("noop_with_empty_axes") != 0;
  std::vector<int64_t> axes;
  const bool axes_known = reduce_axes(ctx, axes);
  if (!in.shape) {
    ctx.set_output_unknown_shape(0, in.dtype);
    return;
  }
  const Shape& shape = *in.shape;
  const int64_t rank = static_cast<int64_t>(shape.size());
  if (!axes_known) {
    // Which axes are reduced is unknown: dims of size 1 stay 1, the others are unknown.
    const TensorType& at = ctx.input_type(1);
    if (keepdims) {
      Shape out;
      for (const Dim& d : shape) out.push_back(d.known() && d.value == 1 ? Dim(1) : Dim());
      ctx.set_output(0, in.dtype, out);
    } else if (at.shape && at.shape->size() == 1 && (*at.shape)[0].known() && (*at.shape)[0].value > 0 &&
               (*at.shape)[0].value <= rank) {
      ctx.set_output(0, in.dtype, Shape(static_cast<size_t>(rank - (*at.shape)[0].value), Dim()));
    } else {
      ctx.set_output_unknown_shape(0, in.dtype);
    }
    return;
  }
  if (axes.empty() && noop) {
    ctx.set_output(0, in);
    return;
  }
  std::vector<bool> reduced(static_cast<size_t>(rank), axes.empty());
  for (int64_t a : axes) {
    const int64_t n = normalize_axis(ctx, a, rank);
    if (reduced[static_cast<size_t>(n)]) ctx.fail("axis " + std::to_string(a) + " is listed twice in axes");
    reduced[static_cast<size_t>(n)] = true;
  }
  Shape out;
  for (int64_t i = 0; i < rank; ++i) {
    if (!reduced[static_cast<size_t>(i)]) out.push_back(shape[static_cast<size_t>(i)]);
    else if (keepdims) out.push_back(Dim(1));
  }
  ctx.set_output(0, in.dtype, out);
}

// ---- ArgMax, ArgMin

void infer_arg(InferContext& ctx) {
  const TensorType& in = ctx.input_type(0);
  require_dtype(ctx, 0, in.dtype == DType::kUndefined || is_numeric_dtype(in.dtype), "a numeric type");
  if (!in.shape) {
    ctx.set_output_unknown_shape(0, DType::kI64);
    return;
  }
  const int64_t rank = static_cast<int64_t>(in.shape->size());
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), rank);
  const Dim& d = (*in.shape)[static_cast<size_t>(axis)];
  if (d.known() && d.value == 0)
    ctx.fail("cannot take " + ctx.schema().name + " over axis " + std::to_string(axis) + " of size 0");
  Shape out;
  for (int64_t i = 0; i < rank; ++i) {
    if (i != axis) out.push_back((*in.shape)[static_cast<size_t>(i)]);
    else if (ctx.attr_int("keepdims") != 0) out.push_back(Dim(1));
  }
  ctx.set_output(0, DType::kI64, out);
}

// ---- TopK

void infer_topk(InferContext& ctx) {
  const TensorType& in = ctx.input_type(0);
  require_dtype(ctx, 0, in.dtype == DType::kUndefined || is_numeric_dtype(in.dtype), "a numeric type");
  std::optional<int64_t> k;
  if (ctx.schema().find_attr("k")) {
    k = ctx.attr_int("k");
  } else {
    const TensorType& kt = ctx.input_type(1);
    if (kt.dtype != DType::kUndefined && kt.dtype != DType::kI64)
      ctx.fail("K input has dtype " + std::string(dtype_name(kt.dtype)) + ", expected i64");
    const bool k_shape_ok = !kt.shape || kt.shape->empty() ||
                            (kt.shape->size() == 1 && (!(*kt.shape)[0].known() || (*kt.shape)[0].value == 1));
    if (!k_shape_ok)
      ctx.fail("K input must be a 1-D tensor of one element, got shape " + shape_to_string(*kt.shape));
    if (const Tensor* v = ctx.input_value(1)) {
      std::vector<int64_t> kv = v->to_int64_vector();
      if (kv.size() != 1) ctx.fail("K input must hold exactly one value, got " + std::to_string(kv.size()));
      k = kv[0];
    }
  }
  if (k && *k < 0) ctx.fail("k must be non-negative, got " + std::to_string(*k));
  if (!in.shape) {
    ctx.set_output_unknown_shape(0, in.dtype);
    ctx.set_output_unknown_shape(1, DType::kI64);
    return;
  }
  const int64_t rank = static_cast<int64_t>(in.shape->size());
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), rank);
  Shape out = *in.shape;
  const Dim& d = out[static_cast<size_t>(axis)];
  if (k && d.known() && *k > d.value)
    ctx.fail("k = " + std::to_string(*k) + " is larger than axis " + std::to_string(axis) + " of size " +
             std::to_string(d.value));
  out[static_cast<size_t>(axis)] = k ? Dim(*k) : Dim();
  ctx.set_output(0, in.dtype, out);
  ctx.set_output(1, DType::kI64, out);
}

// ---- CumSum

void infer_cumsum(InferContext& ctx) {
  const TensorType& in = ctx.input_type(0);
  require_dtype(ctx, 0, in.dtype == DType::kUndefined || is_numeric_dtype(in.dtype), "a numeric type");
  const TensorType& at = ctx.input_type(1);
  if (at.dtype != DType::kUndefined && at.dtype != DType::kI32 && at.dtype != DType::kI64)
    ctx.fail("axis input has dtype " + std::string(dtype_name(at.dtype)) + ", expected i32 or i64");
  if (at.shape && at.shape->size() > 1)
    ctx.fail("axis input must be a scalar, got shape " + shape_to_string(*at.shape));
  const Tensor* av = ctx.input_value(1);
  if (av && in.shape) {
    std::vector<int64_t> a = av->to_int64_vector();
    if (a.size() != 1) ctx.fail("axis input must hold exactly one value, got " + std::to_string(a.size()));
    normalize_axis(ctx, a[0], static_cast<int64_t>(in.shape->size()));
  }
  ctx.set_output(0, in);
}

// ---- Einsum

void infer_einsum(InferContext& ctx) {
  const DType dt = ctx.input_type(0).dtype;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    const DType di = ctx.input_type(i).dtype;
    require_dtype(ctx, i, di == DType::kUndefined || is_numeric_dtype(di), "a numeric type");
    if (di != DType::kUndefined && dt != DType::kUndefined && di != dt)
      ctx.fail("inputs have different dtypes " + std::string(dtype_name(dt)) + " and " + std::string(dtype_name(di)));
  }
  const EinsumSpec spec = parse_einsum(ctx, ctx.num_inputs());
  const bool out_ellipsis = std::find(spec.output.begin(), spec.output.end(), kEllipsis) != spec.output.end();
  std::map<int, Dim> label_dim;
  std::vector<Shape> ellipsis_shapes;
  bool all_ranked = true;
  for (size_t k = 0; k < spec.inputs.size(); ++k) {
    const TensorType& t = ctx.input_type(k);
    if (!t.shape) {
      all_ranked = false;
      continue;
    }
    const EinsumTerm& term = spec.inputs[k];
    const bool has_ell = std::find(term.begin(), term.end(), kEllipsis) != term.end();
    const int64_t nlabels = static_cast<int64_t>(term.size()) - (has_ell ? 1 : 0);
    const int64_t rank = static_cast<int64_t>(t.shape->size());
    if (has_ell ? rank < nlabels : rank != nlabels)
      ctx.fail("input " + std::to_string(k) + " has rank " + std::to_string(rank) + " but its equation term has " +
               std::to_string(nlabels) + " labels" + (has_ell ? " and an ellipsis" : ""));
    const int64_t ell_rank = rank - nlabels;
    int64_t axis = 0;
    for (int l : term) {
      if (l == kEllipsis) {
        ellipsis_shapes.emplace_back(t.shape->begin() + axis, t.shape->begin() + axis + ell_rank);
        axis += ell_rank;
        continue;
      }
      const Dim& d = (*t.shape)[static_cast<size_t>(axis++)];
      auto [it, inserted] = label_dim.emplace(l, d);
      if (inserted) continue;
      Dim& cur = it->second;
      if (d.known() && cur.known() && d.value != cur.value)
        ctx.fail("label '" + std::string(1, static_cast<char>(l)) + "' has size " + std::to_string(cur.value) +
                 " and " + std::to_string(d.value));
      if (d.known()) cur = d;
      else if (!cur.known() && cur.symbol != d.symbol) cur = Dim();
    }
  }
  if (!all_ranked && out_ellipsis) {
    ctx.set_output_unknown_shape(0, dt);
    return;
  }
  Shape out;
  for (int l : spec.output) {
    if (l == kEllipsis) {
      const Shape ell = broadcast_shapes(ctx, ellipsis_shapes);
      out.insert(out.end(), ell.begin(), ell.end());
    } else {
      auto it = label_dim.find(l);
      out.push_back(it == label_dim.end() ? Dim() : it->second);
    }
  }
  // Labels of an operand of unknown rank must match the sizes found elsewhere (or the kernel fails), so the
  // dims above hold; labels seen only there stay unknown.
  ctx.set_output(0, dt, out);
}

// ---- NonMaxSuppression

void infer_nms(InferContext& ctx) {
  require_dtype(ctx, 0, ctx.input_type(0).dtype == DType::kUndefined || ctx.input_type(0).dtype == DType::kF32,
                "f32");
  require_dtype(ctx, 1, ctx.input_type(1).dtype == DType::kUndefined || ctx.input_type(1).dtype == DType::kF32,
                "f32");
  const TensorType& boxes = ctx.input_type(0);
  const TensorType& scores = ctx.input_type(1);
  if (boxes.shape && (boxes.shape->size() != 3 || ((*boxes.shape)[2].known() && (*boxes.shape)[2].value != 4)))
    ctx.fail("boxes must have shape [num_batches, num_boxes, 4], got " + shape_to_string(*boxes.shape));
  if (scores.shape && scores.shape->size() != 3)
    ctx.fail("scores must have shape [num_batches, num_classes, num_boxes], got " + shape_to_string(*scores.shape));
  ctx.set_output(0, DType::kI64, Shape{Dim(), Dim(3)});
}

void add_softmax_family(OpRegistry& r, const std::string& name, const std::string& doc) {
  r.add({.name = name, .since_version = 1, .until_version = 12, .attrs = {attr_int("axis", 1)}, .infer = infer_softmax,
         .doc = doc + " over the input coerced to 2-D [prod(dims[:axis]), prod(dims[axis:])]"});
  r.add({.name = name, .since_version = 13, .attrs = {attr_int("axis", -1)}, .infer = infer_softmax,
         .doc = doc + " along one axis"});
}

}  // namespace

void register_reduce_schemas(OpRegistry& r) {
  add_softmax_family(r, "Softmax", "exp(x - max) / sum(exp(x - max))");
  add_softmax_family(r, "LogSoftmax", "x - max - log(sum(exp(x - max)))");
  add_softmax_family(r, "Hardmax", "1 at the first maximum, 0 elsewhere");

  const std::array<std::pair<const char*, const char*>, 10> reductions = {{
      {"ReduceSum", "sum"},
      {"ReduceMean", "arithmetic mean"},
      {"ReduceMax", "maximum (lowest value of the type over an empty set)"},
      {"ReduceMin", "minimum (highest value of the type over an empty set)"},
      {"ReduceProd", "product"},
      {"ReduceL1", "sum of absolute values"},
      {"ReduceL2", "square root of the sum of squares"},
      {"ReduceLogSum", "log of the sum"},
      {"ReduceLogSumExp", "log of the sum of exponentials"},
      {"ReduceSumSquare", "sum of squares"},
  }};
  for (const auto& [name, what] : reductions) {
    // Axes moved from an attribute to an optional input at 13 for ReduceSum, at 18 for the others.
    const int input_since = std::string_view(name) == "ReduceSum" ? 13 : 18;
    r.add({.name = name, .since_version = 1, .until_version = input_since - 1,
           .attrs = {attr_ints("axes"), attr_int("keepdims", 1)}, .infer = infer_reduce,
           .doc = std::string(what) + " over the axes attribute (all axes when absent)"});
    r.add(
        {.name = name,
         .since_version = input_since,
         .min_inputs = 1,
         .max_inputs = 2,
         .attrs = {attr_int("keepdims", 1), attr_int("noop_with_empty_axes", 0)},
         .infer = infer_reduce,
         .doc = std::string(what) + " over the axes input (all axes, or none with noop_with_empty_axes, when empty)"});
  }

  for (const char* name : {"ArgMax", "ArgMin"}) {
    r.add({.name = name,
           .since_version = 1,
           .until_version = 11,
           .attrs = {attr_int("axis", 0), attr_int("keepdims", 1)},
           .infer = infer_arg,
           .doc = "index of the first extreme value along axis"});
    r.add({.name = name, .since_version = 12,
           .attrs = {attr_int("axis", 0), attr_int("keepdims", 1), attr_int("select_last_index", 0)},
           .infer = infer_arg, .doc = "index of the first (or last) extreme value along axis"});
  }

  r.add({.name = "TopK", .since_version = 1, .until_version = 9, .min_outputs = 2, .max_outputs = 2,
         .attrs = {attr_int("axis", -1), attr_required("k", AttrKind::kInt)}, .infer = infer_topk,
         .doc = "k largest values along axis and their indices (k attribute)"});
  r.add({.name = "TopK", .since_version = 10, .until_version = 10, .min_inputs = 2, .max_inputs = 2, .min_outputs = 2,
         .max_outputs = 2, .attrs = {attr_int("axis", -1)}, .infer = infer_topk,
         .doc = "k largest values along axis and their indices (K input)"});
  r.add({.name = "TopK", .since_version = 11, .min_inputs = 2, .max_inputs = 2, .min_outputs = 2, .max_outputs = 2,
         .attrs = {attr_int("axis", -1), attr_int("largest", 1), attr_int("sorted", 1)}, .infer = infer_topk,
         .doc = "k largest or smallest values along axis and their indices, ties to the lower index"});

  r.add({.name = "CumSum", .since_version = 11, .min_inputs = 2, .max_inputs = 2,
         .attrs = {attr_int("exclusive", 0), attr_int("reverse", 0)}, .infer = infer_cumsum,
         .doc = "cumulative sum along the axis input"});

  r.add({.name = "Einsum", .since_version = 12, .min_inputs = 1, .max_inputs = OpSchema::kVariadic,
         .attrs = {attr_required("equation", AttrKind::kString)}, .infer = infer_einsum,
         .doc = "Einstein summation over any number of operands"});

  r.add({.name = "NonMaxSuppression", .since_version = 10, .min_inputs = 2, .max_inputs = 5,
         .attrs = {attr_int("center_point_box", 0)}, .infer = infer_nms,
         .doc = "greedy per-class box selection by score, suppressing boxes whose IOU exceeds the threshold"});
}

}  // namespace kiln
