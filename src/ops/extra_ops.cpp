// Schemas of the loss ops, GridSample, Unique, Det, the window generators, RoiAlign and the random generators.
#include <string>

#include "ops/op_schema.h"

namespace kiln {

namespace {

constexpr uint32_t bit(DType d) { return 1u << static_cast<unsigned>(d); }
constexpr uint32_t kFloatT = bit(DType::kF32) | bit(DType::kF64) | bit(DType::kF16) | bit(DType::kBF16);
constexpr uint32_t kIntT = bit(DType::kI8) | bit(DType::kI16) | bit(DType::kI32) | bit(DType::kI64) | bit(DType::kU8) |
                           bit(DType::kU16) | bit(DType::kU32) | bit(DType::kU64);
constexpr uint32_t kNumericT = kFloatT | kIntT;
constexpr uint32_t kBoolT = bit(DType::kBool);
constexpr uint32_t kIndexT = bit(DType::kI32) | bit(DType::kI64);

std::string mask_names(uint32_t mask) {
  std::string s;
  for (unsigned d = 0; d < 32; ++d)
    if (mask & (1u << d)) s += (s.empty() ? "" : ", ") + std::string(dtype_name(static_cast<DType>(d)));
  return s;
}

std::string dt_name(DType dt) { return std::string(dtype_name(dt)); }

// Fails unless input i (when present and of known dtype) has a dtype in `mask`. Returns its dtype.
DType check_dtype(const InferContext& ctx, size_t i, uint32_t mask, const char* what) {
  if (!ctx.has_input(i)) return DType::kUndefined;
  DType dt = ctx.input_type(i).dtype;
  if (dt == DType::kUndefined || (mask & bit(dt))) return dt;
  const std::string msg = std::string(what) + " has dtype " + dt_name(dt) + ", expected one of " + mask_names(mask);
  if (dt == DType::kString || dt == DType::kF8E4M3FN || dt == DType::kF8E5M2) ctx.unsupported(msg);
  ctx.fail(msg);
}

// Fails when inputs a and b both have known, different dtypes.
void check_same_dtype(const InferContext& ctx, size_t a, size_t b, const char* what_a, const char* what_b) {
  if (!ctx.has_input(a) || !ctx.has_input(b)) return;
  DType da = ctx.input_type(a).dtype, db = ctx.input_type(b).dtype;
  if (da != DType::kUndefined && db != DType::kUndefined && da != db)
    ctx.fail(std::string(what_b) + " has dtype " + dt_name(db) + " but " + what_a + " has dtype " + dt_name(da) +
             "; they must match");
}

const Shape* shape_of(const InferContext& ctx, size_t i) {
  if (!ctx.has_input(i)) return nullptr;
  const TensorType& t = ctx.input_type(i);
  return t.shape ? &*t.shape : nullptr;
}

void check_rank(const InferContext& ctx, const Shape* s, size_t rank, const char* what) {
  if (s && s->size() != rank)
    ctx.fail(std::string(what) + " must have rank " + std::to_string(rank) + ", got shape " + shape_to_string(*s));
}

// The better-known of two dims that must agree; fails when both are known and differ.
Dim unify(const InferContext& ctx, const Dim& a, const Dim& b, const std::string& what) {
  if (a.known() && b.known() && a.value != b.value)
    ctx.fail(what + ": " + std::to_string(a.value) + " vs " + std::to_string(b.value));
  if (a.known()) return a;
  if (b.known()) return b;
  return a.symbol.empty() ? b : a;
}

void check_string_attr(const InferContext& ctx, const std::string& name, std::initializer_list<const char*> allowed) {
  const std::string& v = ctx.attr_string(name);
  std::string list;
  for (const char* a : allowed) {
    if (v == a) return;
    list += (list.empty() ? "'" : ", '") + std::string(a) + "'";
  }
  ctx.fail("attribute " + name + " is '" + v + "', expected one of " + list);
}

// Output dtype named by an integer attribute holding an ONNX TensorProto.DataType code.
DType dtype_attr(const InferContext& ctx, const std::string& name, uint32_t mask) {
  const int64_t code = ctx.attr_int(name);
  const DType dt = dtype_from_onnx(static_cast<int>(code));
  if (dt == DType::kUndefined) ctx.fail("attribute " + name + " = " + std::to_string(code) + " is not a known dtype");
  if (!(mask & bit(dt)))
    ctx.fail("attribute " + name + " names dtype " + dt_name(dt) + ", expected one of " + mask_names(mask));
  return dt;
}

// ---- NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss

// Shared checks of (input [N,C,d1..dk], target [N,d1..dk], weight [C]); sets output 0.
void infer_loss(InferContext& ctx, const char* input_name) {
  const DType dt = check_dtype(ctx, 0, kFloatT, input_name);
  check_dtype(ctx, 1, kIndexT, "target");
  check_dtype(ctx, 2, kFloatT, "weight");
  check_same_dtype(ctx, 0, 2, input_name, "weight");
  check_string_attr(ctx, "reduction", {"none", "sum", "mean"});
  const bool none = ctx.attr_string("reduction") == "none";
  const Shape* in = shape_of(ctx, 0);
  const Shape* target = shape_of(ctx, 1);
  const Shape* weight = shape_of(ctx, 2);
  if (in && in->size() < 2) ctx.fail(std::string(input_name) + " must have rank >= 2, got " + shape_to_string(*in));
  if (in && target && target->size() + 1 != in->size())
    ctx.fail("target of shape " + shape_to_string(*target) + " must have rank one less than " + input_name +
             " of shape " + shape_to_string(*in));
  check_rank(ctx, weight, 1, "weight");
  if (in && weight) unify(ctx, (*in)[1], (*weight)[0], "weight length does not match the class count");
  // The per-sample loss shape [N, d1..dk], checked even when it is reduced away.
  std::optional<Shape> per_sample;
  if (in) {
    per_sample = Shape{(*in)[0]};
    for (size_t i = 2; i < in->size(); ++i) per_sample->push_back((*in)[i]);
  } else if (target) {
    per_sample = *target;
  }
  if (in && target)
    for (size_t i = 0; i < per_sample->size(); ++i)
      (*per_sample)[i] = unify(ctx, (*per_sample)[i], (*target)[i],
                               "target dimension " + std::to_string(i) + " does not match the input");
  if (!none) ctx.set_output(0, dt, Shape{});
  else if (per_sample) ctx.set_output(0, dt, std::move(*per_sample));
  else ctx.set_output_unknown_shape(0, dt);
}

void infer_nll(InferContext& ctx) { infer_loss(ctx, "input"); }

void infer_sce(InferContext& ctx) {
  infer_loss(ctx, "scores");
  if (ctx.has_output(1)) ctx.set_output(1, ctx.input_type(0));
}

// ---- GridSample

void infer_grid_sample(InferContext& ctx) {
  const bool v16 = ctx.opset() < 20;
  // Opset 16 names the modes bilinear/bicubic, 20 linear/cubic; both spellings are accepted at
  // either opset because they mean the same thing.
  check_string_attr(ctx, "mode", {"bilinear", "nearest", "bicubic", "linear", "cubic"});
  check_string_attr(ctx, "padding_mode", {"zeros", "border", "reflection"});
  const DType dt = check_dtype(ctx, 0, v16 ? kFloatT : kNumericT, "X");
  check_dtype(ctx, 1, kFloatT, "grid");
  if (v16) check_same_dtype(ctx, 0, 1, "X", "grid");
  const Shape* x = shape_of(ctx, 0);
  const Shape* grid = shape_of(ctx, 1);
  if (v16) {
    check_rank(ctx, x, 4, "X");
    check_rank(ctx, grid, 4, "grid");
  }
  if (x && x->size() < 3) ctx.fail("X must have rank >= 3 (N, C and spatial dims), got " + shape_to_string(*x));
  if (grid && grid->size() < 3) ctx.fail("grid must have rank >= 3, got " + shape_to_string(*grid));
  if (x && grid && x->size() != grid->size())
    ctx.fail("X of shape " + shape_to_string(*x) + " and grid of shape " + shape_to_string(*grid) +
             " must have the same rank");
  const size_t rank = x ? x->size() : grid ? grid->size() : 0;
  if (grid) {
    const Dim& last = grid->back();
    if (last.known() && last.value != static_cast<int64_t>(rank - 2))
      ctx.fail("the last dimension of grid must be " + std::to_string(rank - 2) +
               " (the number of spatial dims), got " + std::to_string(last.value));
  }
  if (!x && !grid) {
    ctx.set_output_unknown_shape(0, dt);
    return;
  }
  Shape out(rank);
  out[0] = x && grid ? unify(ctx, (*x)[0], (*grid)[0], "X and grid batch sizes differ") : x ? (*x)[0] : (*grid)[0];
  if (x) out[1] = (*x)[1];
  if (grid)
    for (size_t i = 2; i < rank; ++i) out[i] = (*grid)[i - 1];
  ctx.set_output(0, dt, std::move(out));
}

// ---- Unique

void infer_unique(InferContext& ctx) {
  const DType dt = check_dtype(ctx, 0, kNumericT | kBoolT, "X");
  const Shape* x = shape_of(ctx, 0);
  const std::optional<int64_t> axis_attr = ctx.attr_int_opt("axis");
  const int64_t s = ctx.attr_int("sorted");
  if (s != 0 && s != 1) ctx.fail("attribute sorted must be 0 or 1, got " + std::to_string(s));
  // The unique count depends on the values: Y's unique dim, indices and counts are unknown.
  // inverse_indices has one entry per element (no axis) or per slice along the axis.
  Dim inverse_len;
  if (!axis_attr) {
    ctx.set_output(0, dt, Shape{Dim()});
    if (x) {
      Dim n(1);
      for (const Dim& d : *x) n = dim_mul(n, d);
      inverse_len = n;
    }
  } else if (!x) {
    ctx.set_output_unknown_shape(0, dt);
  } else {
    const int64_t axis = normalize_axis(ctx, *axis_attr, static_cast<int64_t>(x->size()));
    Shape y = *x;
    y[axis] = Dim();
    inverse_len = (*x)[axis];
    ctx.set_output(0, dt, std::move(y));
  }
  ctx.set_output(1, DType::kI64, Shape{Dim()});
  ctx.set_output(2, DType::kI64, Shape{inverse_len});
  ctx.set_output(3, DType::kI64, Shape{Dim()});
}

// ---- Det

void infer_det(InferContext& ctx) {
  const DType dt = check_dtype(ctx, 0, kFloatT, "X");
  const Shape* x = shape_of(ctx, 0);
  if (!x) {
    ctx.set_output_unknown_shape(0, dt);
    return;
  }
  if (x->size() < 2) ctx.fail("X must have rank >= 2, got shape " + shape_to_string(*x));
  unify(ctx, (*x)[x->size() - 2], (*x)[x->size() - 1], "the innermost two dimensions must be equal (square matrices)");
  ctx.set_output(0, dt, Shape(x->begin(), x->end() - 2));
}

// ---- HannWindow, HammingWindow, BlackmanWindow

void infer_window(InferContext& ctx) {
  check_dtype(ctx, 0, kIndexT, "size");
  const DType dt = dtype_attr(ctx, "output_datatype", kNumericT);
  const int64_t periodic = ctx.attr_int("periodic");
  if (periodic != 0 && periodic != 1) ctx.fail("attribute periodic must be 0 or 1, got " + std::to_string(periodic));
  const Shape* s = shape_of(ctx, 0);
  if (s && !(s->empty() || (s->size() == 1 && (!(*s)[0].known() || (*s)[0].value == 1))))
    ctx.fail("size must be a scalar, got shape " + shape_to_string(*s));
  Dim n;
  if (const Tensor* v = ctx.input_value(0)) {
    if (v->numel() != 1) ctx.fail("size must be a scalar, got shape " + shape_to_string(v->shape()));
    const int64_t size = v->to_int64_vector()[0];
    if (size <= 0) ctx.fail("size must be greater than 0, got " + std::to_string(size));
    n = Dim(size);
  }
  ctx.set_output(0, dt, Shape{n});
}

// ---- RoiAlign

void infer_roi_align(InferContext& ctx) {
  const DType dt = check_dtype(ctx, 0, kFloatT, "X");
  check_dtype(ctx, 1, kFloatT, "rois");
  check_same_dtype(ctx, 0, 1, "X", "rois");
  check_dtype(ctx, 2, bit(DType::kI64), "batch_indices");
  check_string_attr(ctx, "mode", {"avg", "max"});
  if (ctx.opset() >= 16) check_string_attr(ctx, "coordinate_transformation_mode", {"half_pixel", "output_half_pixel"});
  const int64_t oh = ctx.attr_int("output_height"), ow = ctx.attr_int("output_width");
  if (oh < 1 || ow < 1)
    ctx.fail("output_height and output_width must be >= 1, got " + std::to_string(oh) + " and " + std::to_string(ow));
  if (ctx.attr_int("sampling_ratio") < 0)
    ctx.fail("sampling_ratio must be >= 0, got " + std::to_string(ctx.attr_int("sampling_ratio")));
  const Shape* x = shape_of(ctx, 0);
  const Shape* rois = shape_of(ctx, 1);
  const Shape* bi = shape_of(ctx, 2);
  check_rank(ctx, x, 4, "X");
  check_rank(ctx, rois, 2, "rois");
  check_rank(ctx, bi, 1, "batch_indices");
  if (rois && (*rois)[1].known() && (*rois)[1].value != 4)
    ctx.fail("rois must have shape [num_rois, 4], got " + shape_to_string(*rois));
  Dim num_rois;
  if (rois && bi) num_rois = unify(ctx, (*rois)[0], (*bi)[0], "rois and batch_indices disagree on the RoI count");
  else if (rois) num_rois = (*rois)[0];
  else if (bi) num_rois = (*bi)[0];
  ctx.set_output(0, dt, Shape{num_rois, x ? (*x)[1] : Dim(), Dim(oh), Dim(ow)});
}

// ---- Random generators

void infer_random(InferContext& ctx) {
  const DType dt = dtype_attr(ctx, "dtype", kFloatT);
  Shape out;
  for (int64_t d : ctx.attr_ints("shape")) {
    if (d < 0) ctx.fail("attribute shape has a negative dimension " + std::to_string(d));
    out.push_back(Dim(d));
  }
  ctx.set_output(0, dt, std::move(out));
}

// Output dtype of the *Like ops and Bernoulli: the dtype attribute when given, else the input's.
DType like_dtype(const InferContext& ctx, uint32_t mask) {
  if (ctx.has_attr("dtype")) return dtype_attr(ctx, "dtype", mask);
  const DType in = ctx.input_type(0).dtype;
  if (in != DType::kUndefined && !(mask & bit(in)))
    ctx.fail("input has dtype " + dt_name(in) + ", which is not a valid output dtype (" + mask_names(mask) +
             "); set the dtype attribute");
  return in;
}

void infer_random_like(InferContext& ctx) {
  const DType dt = like_dtype(ctx, kFloatT);
  ctx.set_output(0, TensorType{dt, ctx.input_type(0).shape});
}

void infer_bernoulli(InferContext& ctx) {
  check_dtype(ctx, 0, kFloatT, "input");
  const DType dt = like_dtype(ctx, kNumericT | kBoolT);
  ctx.set_output(0, TensorType{dt, ctx.input_type(0).shape});
}

}  // namespace

void register_extra_schemas(OpRegistry& r) {
  // Opset 13 of both losses only added bf16 (and differentiability tags): one entry each.
  const AttrSpec reduction = attr_string("reduction", "mean"), ignore = attr_optional("ignore_index", AttrKind::kInt);
  r.add({.name = "NegativeLogLikelihoodLoss", .since_version = 12, .min_inputs = 2, .max_inputs = 3,
         .attrs = {reduction, ignore}, .infer = infer_nll,
         .doc = "-input[n, target[n, d..], d..] * weight[target], reduced by none/sum/weighted mean"});
  r.add({.name = "SoftmaxCrossEntropyLoss", .since_version = 12, .min_inputs = 2, .max_inputs = 3, .min_outputs = 1,
         .max_outputs = 2, .attrs = {reduction, ignore}, .infer = infer_sce,
         .doc = "NegativeLogLikelihoodLoss of LogSoftmax(scores) over axis 1; optionally outputs log-probabilities"});

  const std::vector<AttrSpec> grid_attrs16 = {attr_string("mode", "bilinear"), attr_string("padding_mode", "zeros"),
                                              attr_int("align_corners", 0)};
  const std::vector<AttrSpec> grid_attrs20 = {attr_string("mode", "linear"), attr_string("padding_mode", "zeros"),
                                              attr_int("align_corners", 0)};
  r.add({.name = "GridSample", .since_version = 16, .until_version = 19, .min_inputs = 2, .max_inputs = 2,
         .attrs = grid_attrs16, .infer = infer_grid_sample,
         .doc = "samples 4-D X at the normalized (x, y) positions of grid (bilinear/nearest/bicubic)"});
  r.add({.name = "GridSample", .since_version = 20, .min_inputs = 2, .max_inputs = 2, .attrs = grid_attrs20,
         .infer = infer_grid_sample,
         .doc = "samples N-D X at the normalized positions of grid (linear/nearest/cubic)"});

  r.add({.name = "Unique", .since_version = 11, .min_outputs = 1, .max_outputs = 4,
         .attrs = {attr_int("sorted", 1), attr_optional("axis", AttrKind::kInt)}, .infer = infer_unique,
         .doc = "unique values (or slices along axis), first-occurrence indices, inverse indices and counts"});
  r.add({.name = "Det", .since_version = 11, .infer = infer_det,
         .doc = "determinant of each [M, M] matrix in [*, M, M]"});

  const std::vector<AttrSpec> window_attrs = {attr_int("output_datatype", 1), attr_int("periodic", 1)};
  r.add({.name = "HannWindow", .since_version = 17, .attrs = window_attrs, .infer = infer_window,
         .doc = "Hann window of length size (periodic or symmetric)"});
  r.add({.name = "HammingWindow", .since_version = 17, .attrs = window_attrs, .infer = infer_window,
         .doc = "Hamming window (a0 = 25/46) of length size (periodic or symmetric)"});
  r.add({.name = "BlackmanWindow", .since_version = 17, .attrs = window_attrs, .infer = infer_window,
         .doc = "Blackman window of length size (periodic or symmetric)"});

  const std::vector<AttrSpec> roi_attrs10 = {attr_string("mode", "avg"), attr_int("output_height", 1),
                                             attr_int("output_width", 1), attr_int("sampling_ratio", 0),
                                             attr_float("spatial_scale", 1.0f)};
  std::vector<AttrSpec> roi_attrs16 = roi_attrs10;
  roi_attrs16.push_back(attr_string("coordinate_transformation_mode", "half_pixel"));
  r.add({.name = "RoiAlign", .since_version = 10, .until_version = 15, .min_inputs = 3, .max_inputs = 3,
         .attrs = roi_attrs10, .infer = infer_roi_align,
         .doc = "bilinear RoI pooling (avg/max) without the half-pixel shift"});
  r.add({.name = "RoiAlign", .since_version = 16, .min_inputs = 3, .max_inputs = 3, .attrs = roi_attrs16,
         .infer = infer_roi_align,
         .doc = "bilinear RoI pooling (avg/max); half_pixel shifts RoI coordinates by -0.5"});

  const AttrSpec seed = attr_optional("seed", AttrKind::kFloat);
  r.add({.name = "RandomUniform", .since_version = 1, .min_inputs = 0, .max_inputs = 0,
         .attrs = {attr_float("low", 0.0f), attr_float("high", 1.0f), seed, attr_int("dtype", 1),
                   attr_required("shape", AttrKind::kInts)},
         .infer = infer_random, .doc = "uniform random values in [low, high) of the given shape"});
  r.add({.name = "RandomNormal", .since_version = 1, .min_inputs = 0, .max_inputs = 0,
         .attrs = {attr_float("mean", 0.0f), attr_float("scale", 1.0f), seed, attr_int("dtype", 1),
                   attr_required("shape", AttrKind::kInts)},
         .infer = infer_random, .doc = "normal random values N(mean, scale^2) of the given shape"});
  r.add({.name = "RandomUniformLike", .since_version = 1,
         .attrs = {attr_float("low", 0.0f), attr_float("high", 1.0f), seed, attr_optional("dtype", AttrKind::kInt)},
         .infer = infer_random_like, .doc = "uniform random values in [low, high) shaped like the input"});
  r.add({.name = "RandomNormalLike", .since_version = 1,
         .attrs = {attr_float("mean", 0.0f), attr_float("scale", 1.0f), seed, attr_optional("dtype", AttrKind::kInt)},
         .infer = infer_random_like, .doc = "normal random values N(mean, scale^2) shaped like the input"});
  r.add({.name = "Bernoulli", .since_version = 15, .attrs = {seed, attr_optional("dtype", AttrKind::kInt)},
         .infer = infer_bernoulli, .doc = "1 with probability input[i], else 0"});
}

}  // namespace kiln
