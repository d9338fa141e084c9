// Schemas of linear algebra, convolution, normalization and pooling ops (reductions and softmax live in reduce.cpp).
#include <algorithm>

#include "ops/op_schema.h"
#include "ops/quant_rules.h"

namespace kiln {

namespace {

// ---- Small helpers

bool has_shape(const InferContext& ctx, size_t i) { return ctx.has_input(i) && ctx.input_type(i).shape.has_value(); }

std::string ints_to_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// The dtype named by a stash_type attribute (a TensorProto data type code).
DType stash_dtype(const NodeView& ctx) {
  const int64_t code = ctx.attr_int("stash_type");
  const DType dt = dtype_from_onnx(static_cast<int>(code));
  if (!dtype_is_float(dt) || dt == DType::kF8E4M3FN || dt == DType::kF8E5M2)
    ctx.fail("stash_type " + std::to_string(code) + " is not a supported float type");
  return dt;
}

void infer_same_as_input(InferContext& ctx) { ctx.set_output(0, ctx.input_type(0)); }

// Fails unless the (known) rank of input i is at least `min_rank`.
void require_min_rank(const InferContext& ctx, size_t i, size_t min_rank, const char* what) {
  if (has_shape(ctx, i) && ctx.input_type(i).shape->size() < min_rank)
    ctx.fail(std::string(what) + " must have rank >= " + std::to_string(min_rank) + ", got " +
             shape_to_string(*ctx.input_type(i).shape));
}

// ---- MatMul family

// Numpy matmul shape of inputs ia and ib, or nullopt when either rank is unknown.
std::optional<Shape> matmul_shape(const InferContext& ctx, size_t ia, size_t ib) {
  if (!has_shape(ctx, ia) || !has_shape(ctx, ib)) return std::nullopt;
  Shape a = *ctx.input_type(ia).shape;
  Shape b = *ctx.input_type(ib).shape;
  if (a.empty() || b.empty()) ctx.fail("matmul inputs must have rank >= 1 (scalars are not allowed)");
  const bool a_vec = a.size() == 1, b_vec = b.size() == 1;
  if (a_vec) a.insert(a.begin(), Dim(1));
  if (b_vec) b.push_back(Dim(1));
  const Dim& ka = a.back();
  const Dim& kb = b[b.size() - 2];
  if (ka.known() && kb.known() && ka.value != kb.value)
    ctx.fail("inner dimensions do not match: A is " + shape_to_string(*ctx.input_type(ia).shape) + ", B is " +
             shape_to_string(*ctx.input_type(ib).shape));
  Shape out = broadcast_shapes(ctx, {Shape(a.begin(), a.end() - 2), Shape(b.begin(), b.end() - 2)});
  if (!a_vec) out.push_back(a[a.size() - 2]);
  if (!b_vec) out.push_back(b.back());
  return out;
}

void set_matmul_output(InferContext& ctx, size_t ia, size_t ib, DType dt) {
  auto shape = matmul_shape(ctx, ia, ib);
  if (shape) ctx.set_output(0, dt, *shape);
  else ctx.set_output_unknown_shape(0, dt);
}

void infer_matmul(InferContext& ctx) {
  const DType a = ctx.input_type(0).dtype, b = ctx.input_type(1).dtype;
  if (a != DType::kUndefined && b != DType::kUndefined && a != b)
    ctx.fail("inputs have different dtypes " + std::string(dtype_name(a)) + " and " + std::string(dtype_name(b)));
  set_matmul_output(ctx, 0, 1, a);
}

void infer_matmul_integer(InferContext& ctx) { set_matmul_output(ctx, 0, 1, DType::kI32); }

void infer_qlinear_matmul(InferContext& ctx) {
  const DType out = ctx.has_input(7) ? ctx.input_type(7).dtype : DType::kUndefined;
  set_matmul_output(ctx, 0, 3, out);
}

void infer_gemm(InferContext& ctx) {
  const TensorType& a = ctx.input_type(0);
  const TensorType& b = ctx.input_type(1);
  if (a.dtype != DType::kUndefined && b.dtype != DType::kUndefined && a.dtype != b.dtype)
    ctx.fail("inputs have different dtypes " + std::string(dtype_name(a.dtype)) + " and " +
             std::string(dtype_name(b.dtype)));
  for (size_t i = 0; i < 2; ++i)
    if (has_shape(ctx, i) && ctx.input_type(i).shape->size() != 2)
      ctx.fail(std::string(i == 0 ? "A" : "B") + " must be a matrix, got " + shape_to_string(*ctx.input_type(i).shape));
  Dim m, n, ka, kb;
  const bool ta = ctx.attr_int("transA") != 0, tb = ctx.attr_int("transB") != 0;
  if (a.shape) {
    m = (*a.shape)[ta ? 1 : 0];
    ka = (*a.shape)[ta ? 0 : 1];
  }
  if (b.shape) {
    kb = (*b.shape)[tb ? 1 : 0];
    n = (*b.shape)[tb ? 0 : 1];
  }
  if (ka.known() && kb.known() && ka.value != kb.value)
    ctx.fail("inner dimensions do not match: op(A) has " + std::to_string(ka.value) + " columns, op(B) has " +
             std::to_string(kb.value) + " rows");
  const Shape out = {m, n};
  // C must broadcast to [M, N] in one direction only.
  if (has_shape(ctx, 2)) {
    const Shape& c = *ctx.input_type(2).shape;
    if (c.size() > 2) ctx.fail("C must have rank <= 2, got " + shape_to_string(c));
    for (size_t i = 0; i < c.size(); ++i) {
      const Dim& cd = c[i];
      const Dim& od = out[2 - c.size() + i];
      if (cd.known() && cd.value != 1 && od.known() && cd.value != od.value)
        ctx.fail("C of shape " + shape_to_string(c) + " does not broadcast to the output " + shape_to_string(out));
    }
  }
  ctx.set_output(0, a.dtype, out);
}

// ---- Sliding windows (convolution and pooling)

struct WindowAttrs {
  std::vector<int64_t> strides, dilations, pads;  // pads: all begins, then all ends
  std::string auto_pad;
  bool ceil_mode = false;
};

// Reads and validates strides/dilations/pads/auto_pad/ceil_mode for `n` spatial axes. Attributes
// the schema version does not declare take their neutral values.
WindowAttrs read_window_attrs(const NodeView& ctx, size_t n) {
  auto ints = [&](const char* name, size_t len, int64_t def, int64_t min) {
    std::vector<int64_t> v;
    if (ctx.schema().find_attr(name)) v = ctx.attr_ints(name);
    if (v.empty()) v.assign(len, def);
    if (v.size() != len)
      ctx.fail(std::string("attribute '") + name + "' has " + std::to_string(v.size()) + " values, expected " +
               std::to_string(len) + " for " + std::to_string(n) + " spatial axes");
    for (int64_t x : v)
      if (x < min) ctx.fail(std::string("attribute '") + name + "' has invalid value " + ints_to_string(v));
    return v;
  };
  WindowAttrs w;
  w.strides = ints("strides", n, 1, 1);
  w.dilations = ints("dilations", n, 1, 1);
  w.pads = ints("pads", 2 * n, 0, 0);
  w.auto_pad = ctx.schema().find_attr("auto_pad") ? ctx.attr_string("auto_pad") : "NOTSET";
  if (w.auto_pad.empty()) w.auto_pad = "NOTSET";
  if (w.auto_pad != "NOTSET" && w.auto_pad != "SAME_UPPER" && w.auto_pad != "SAME_LOWER" && w.auto_pad != "VALID")
    ctx.fail("invalid auto_pad '" + w.auto_pad + "'");
  w.ceil_mode = ctx.schema().find_attr("ceil_mode") && ctx.attr_int("ceil_mode") != 0;
  return w;
}

// Output extent of a sliding window over one axis of known size.
int64_t window_output_size(const NodeView& ctx, size_t axis, int64_t in, int64_t k, const WindowAttrs& w) {
  const int64_t s = w.strides[axis], eff = (k - 1) * w.dilations[axis] + 1;
  const size_t n = w.strides.size();
  if (w.auto_pad == "SAME_UPPER" || w.auto_pad == "SAME_LOWER") return (in + s - 1) / s;
  const int64_t pads = w.auto_pad == "VALID" ? 0 : w.pads[axis] + w.pads[axis + n];
  const int64_t span = in + pads - eff;
  if (span < 0)
    ctx.fail("the window (" + std::to_string(eff) + " with dilation) is larger than the padded input (" +
             std::to_string(in + pads) + ") on spatial axis " + std::to_string(axis));
  int64_t out = (w.ceil_mode ? (span + s - 1) / s : span / s) + 1;
  // In ceil mode a window that would start inside the end padding is dropped.
  if (w.ceil_mode && w.auto_pad != "VALID" && (out - 1) * s >= in + w.pads[axis]) --out;
  return out;
}

// Same, for a possibly symbolic or unknown input extent and kernel size (k < 0: unknown).
Dim window_output_dim(const NodeView& ctx, size_t axis, const Dim& in, int64_t k, const WindowAttrs& w) {
  if (in.known() && k > 0) return Dim(window_output_size(ctx, axis, in.value, k, w));
  const size_t n = w.strides.size();
  const bool same = w.auto_pad == "SAME_UPPER" || w.auto_pad == "SAME_LOWER";
  const int64_t pads = (same || w.auto_pad == "VALID") ? 0 : w.pads[axis] + w.pads[axis + n];
  // The extent is kept (symbol included) only where the window provably maps it onto itself.
  if (w.strides[axis] == 1 && (same || (k == 1 && pads == 0))) return in;
  return Dim();
}

void check_kernel_positive(const NodeView& ctx, const std::vector<int64_t>& kernel) {
  for (int64_t k : kernel)
    if (k <= 0) ctx.fail("kernel_shape " + ints_to_string(kernel) + " has non-positive values");
}

}  // namespace

// Declared in ops/quant_rules.h (kiln::QConv shares it).
// Conv, ConvInteger and QLinearConv: X at ix, W at iw.
void infer_conv_like(InferContext& ctx, size_t ix, size_t iw, DType out_dtype) {
  require_min_rank(ctx, ix, 3, "X");
  if (!has_shape(ctx, ix)) {
    ctx.set_output_unknown_shape(0, out_dtype);
    return;
  }
  const Shape& x = *ctx.input_type(ix).shape;
  const size_t n = x.size() - 2;
  const int64_t group = ctx.attr_int("group");
  if (group < 1) ctx.fail("group must be >= 1, got " + std::to_string(group));
  std::vector<int64_t> kernel(n, -1);
  Dim m;
  if (has_shape(ctx, iw)) {
    const Shape& wshape = *ctx.input_type(iw).shape;
    if (wshape.size() != x.size())
      ctx.fail("W has shape " + shape_to_string(wshape) + ", expected rank " + std::to_string(x.size()) +
               " like X " + shape_to_string(x));
    m = wshape[0];
    if (x[1].known() && wshape[1].known() && x[1].value != wshape[1].value * group)
      ctx.fail("X has " + std::to_string(x[1].value) + " channels but W " + shape_to_string(wshape) + " with group " +
               std::to_string(group) + " expects " + std::to_string(wshape[1].value * group));
    if (m.known() && m.value % group != 0)
      ctx.fail("W has " + std::to_string(m.value) + " output channels, not divisible by group " +
               std::to_string(group));
    for (size_t i = 0; i < n; ++i)
      if (wshape[i + 2].known()) kernel[i] = wshape[i + 2].value;
  }
  const auto& ks = ctx.attr_ints("kernel_shape");
  if (!ks.empty()) {
    if (ks.size() != n)
      ctx.fail("kernel_shape " + ints_to_string(ks) + " does not match " + std::to_string(n) + " spatial axes");
    check_kernel_positive(ctx, ks);
    for (size_t i = 0; i < n; ++i) {
      if (kernel[i] >= 0 && kernel[i] != ks[i])
        ctx.fail("kernel_shape " + ints_to_string(ks) + " does not match the weights' spatial shape");
      kernel[i] = ks[i];
    }
  }
  const WindowAttrs w = read_window_attrs(ctx, n);
  Shape out = {x[0], m};
  for (size_t i = 0; i < n; ++i) out.push_back(window_output_dim(ctx, i, x[i + 2], kernel[i], w));
  ctx.set_output(0, out_dtype, out);
}

namespace {

void infer_conv(InferContext& ctx) {
  const DType x = ctx.input_type(0).dtype, w = ctx.input_type(1).dtype;
  if (x != DType::kUndefined && w != DType::kUndefined && x != w)
    ctx.fail("X and W have different dtypes " + std::string(dtype_name(x)) + " and " + std::string(dtype_name(w)));
  infer_conv_like(ctx, 0, 1, x);
}
void infer_conv_integer(InferContext& ctx) { infer_conv_like(ctx, 0, 1, DType::kI32); }
void infer_qlinear_conv(InferContext& ctx) {
  infer_conv_like(ctx, 0, 3, ctx.has_input(7) ? ctx.input_type(7).dtype : DType::kUndefined);
}

void infer_conv_transpose(InferContext& ctx) {
  const DType dt = ctx.input_type(0).dtype;
  require_min_rank(ctx, 0, 3, "X");
  if (!has_shape(ctx, 0)) {
    ctx.set_output_unknown_shape(0, dt);
    return;
  }
  const Shape& x = *ctx.input_type(0).shape;
  const size_t n = x.size() - 2;
  const int64_t group = ctx.attr_int("group");
  if (group < 1) ctx.fail("group must be >= 1, got " + std::to_string(group));
  std::vector<int64_t> kernel(n, -1);
  Dim m;
  if (has_shape(ctx, 1)) {
    const Shape& wshape = *ctx.input_type(1).shape;
    if (wshape.size() != x.size())
      ctx.fail("W has shape " + shape_to_string(wshape) + ", expected rank " + std::to_string(x.size()));
    if (x[1].known() && wshape[0].known() && x[1].value != wshape[0].value)
      ctx.fail("X has " + std::to_string(x[1].value) + " channels but W " + shape_to_string(wshape) + " expects " +
               std::to_string(wshape[0].value));
    if (wshape[0].known() && wshape[0].value % group != 0)
      ctx.fail("W has " + std::to_string(wshape[0].value) + " input channels, not divisible by group " +
               std::to_string(group));
    m = wshape[1].known() ? Dim(wshape[1].value * group) : Dim();
    for (size_t i = 0; i < n; ++i)
      if (wshape[i + 2].known()) kernel[i] = wshape[i + 2].value;
  }
  const auto& ks = ctx.attr_ints("kernel_shape");
  if (!ks.empty()) {
    if (ks.size() != n)
      ctx.fail("kernel_shape " + ints_to_string(ks) + " does not match " + std::to_string(n) + " spatial axes");
    check_kernel_positive(ctx, ks);
    for (size_t i = 0; i < n; ++i) {
      if (kernel[i] >= 0 && kernel[i] != ks[i])
        ctx.fail("kernel_shape " + ints_to_string(ks) + " does not match the weights' spatial shape");
      kernel[i] = ks[i];
    }
  }
  const WindowAttrs w = read_window_attrs(ctx, n);
  std::vector<int64_t> out_pad = ctx.attr_ints("output_padding");
  if (out_pad.empty()) out_pad.assign(n, 0);
  if (out_pad.size() != n)
    ctx.fail("output_padding " + ints_to_string(out_pad) + " does not match " + std::to_string(n) + " spatial axes");
  for (size_t i = 0; i < n; ++i)
    if (out_pad[i] < 0 || (out_pad[i] >= w.strides[i] && out_pad[i] >= w.dilations[i]))
      ctx.fail("output_padding " + ints_to_string(out_pad) +
               " must be non-negative and smaller than the stride or dilation");
  const auto& out_shape = ctx.attr_ints("output_shape");
  if (!out_shape.empty() && out_shape.size() != n && out_shape.size() != n + 2)
    ctx.fail("output_shape " + ints_to_string(out_shape) + " does not match " + std::to_string(n) + " spatial axes");
  Shape out = {x[0], m};
  for (size_t i = 0; i < n; ++i) {
    const Dim& in = x[i + 2];
    const int64_t s = w.strides[i];
    if (!out_shape.empty()) {
      out.push_back(Dim(out_shape[out_shape.size() - n + i]));
    } else if (w.auto_pad == "SAME_UPPER" || w.auto_pad == "SAME_LOWER") {
      out.push_back(in.known() ? Dim(in.value * s) : (s == 1 ? in : Dim()));
    } else if (in.known() && kernel[i] > 0) {
      const int64_t pads = w.auto_pad == "VALID" ? 0 : w.pads[i] + w.pads[i + n];
      const int64_t v = s * (in.value - 1) + out_pad[i] + (kernel[i] - 1) * w.dilations[i] + 1 - pads;
      if (v <= 0) ctx.fail("the output would be empty on spatial axis " + std::to_string(i));
      out.push_back(Dim(v));
    } else {
      out.push_back(Dim());
    }
  }
  ctx.set_output(0, dt, out);
}

// ---- Pooling

void infer_pool(InferContext& ctx) {
  const DType dt = ctx.input_type(0).dtype;
  require_min_rank(ctx, 0, 3, "X");
  const auto& ks = ctx.attr_ints("kernel_shape");
  check_kernel_positive(ctx, ks);
  if (!has_shape(ctx, 0)) {
    ctx.set_output_unknown_shape(0, dt);
    if (ctx.has_output(1)) ctx.set_output_unknown_shape(1, DType::kI64);
    return;
  }
  const Shape& x = *ctx.input_type(0).shape;
  const size_t n = x.size() - 2;
  if (ks.size() != n)
    ctx.fail("kernel_shape " + ints_to_string(ks) + " does not match " + std::to_string(n) + " spatial axes");
  const WindowAttrs w = read_window_attrs(ctx, n);
  if (ctx.schema().find_attr("storage_order")) {
    const int64_t so = ctx.attr_int("storage_order");
    if (so != 0 && so != 1) ctx.fail("storage_order must be 0 or 1, got " + std::to_string(so));
  }
  Shape out = {x[0], x[1]};
  for (size_t i = 0; i < n; ++i) out.push_back(window_output_dim(ctx, i, x[i + 2], ks[i], w));
  ctx.set_output(0, dt, out);
  if (ctx.has_output(1)) ctx.set_output(1, DType::kI64, out);
}

void infer_global_pool(InferContext& ctx) {
  const DType dt = ctx.input_type(0).dtype;
  require_min_rank(ctx, 0, 2, "X");
  if (!has_shape(ctx, 0)) {
    ctx.set_output_unknown_shape(0, dt);
    return;
  }
  Shape out = *ctx.input_type(0).shape;
  for (size_t i = 2; i < out.size(); ++i) out[i] = Dim(1);
  ctx.set_output(0, dt, out);
}

void infer_max_unpool(InferContext& ctx) {
  const DType dt = ctx.input_type(0).dtype;
  require_min_rank(ctx, 0, 3, "X");
  const auto& ks = ctx.attr_ints("kernel_shape");
  check_kernel_positive(ctx, ks);
  if (ctx.has_input(2)) {
    if (const Tensor* v = ctx.input_value(2)) {
      const std::vector<int64_t> shape = v->to_int64_vector();
      for (int64_t d : shape)
        if (d < 0) ctx.fail("output_shape " + ints_to_string(shape) + " has negative values");
      if (has_shape(ctx, 0) && shape.size() != ctx.input_type(0).shape->size())
        ctx.fail("output_shape " + ints_to_string(shape) + " does not have the rank of X");
      ctx.set_output(0, dt, shape_from_dims(shape));
    } else if (has_shape(ctx, 0)) {
      ctx.set_output(0, dt, Shape(ctx.input_type(0).shape->size()));
    } else {
      ctx.set_output_unknown_shape(0, dt);
    }
    return;
  }
  if (!has_shape(ctx, 0)) {
    ctx.set_output_unknown_shape(0, dt);
    return;
  }
  const Shape& x = *ctx.input_type(0).shape;
  const size_t n = x.size() - 2;
  if (ks.size() != n)
    ctx.fail("kernel_shape " + ints_to_string(ks) + " does not match " + std::to_string(n) + " spatial axes");
  const WindowAttrs w = read_window_attrs(ctx, n);
  Shape out = {x[0], x[1]};
  for (size_t i = 0; i < n; ++i) {
    const Dim& in = x[i + 2];
    if (in.known()) {
      const int64_t v = (in.value - 1) * w.strides[i] + ks[i] - w.pads[i] - w.pads[i + n];
      if (v <= 0) ctx.fail("the output would be empty on spatial axis " + std::to_string(i));
      out.push_back(Dim(v));
    } else {
      out.push_back(w.strides[i] == 1 && ks[i] == 1 && w.pads[i] + w.pads[i + n] == 0 ? in : Dim());
    }
  }
  ctx.set_output(0, dt, out);
}

// ---- Normalization

void infer_batch_norm(InferContext& ctx) {
  require_min_rank(ctx, 0, 2, "X");
  ctx.set_output(0, ctx.input_type(0));
  // Running and saved statistics have the shape and type of the running mean/var inputs.
  for (size_t i = 1; i < ctx.num_outputs(); ++i)
    if (ctx.has_output(i)) ctx.set_output(i, ctx.input_type(i <= 2 ? 2 + i : 3));
}

void infer_layer_norm(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  ctx.set_output(0, x);
  const DType stash = stash_dtype(ctx);
  if (!x.shape) {
    for (size_t i = 1; i < 3; ++i)
      if (ctx.has_output(i)) ctx.set_output_unknown_shape(i, stash);
    return;
  }
  const int64_t rank = static_cast<int64_t>(x.shape->size());
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), rank);
  Shape stat(x.shape->begin(), x.shape->begin() + axis);
  stat.resize(rank, Dim(1));
  for (size_t i = 1; i < 3; ++i)
    if (ctx.has_output(i)) ctx.set_output(i, stash, stat);
}

void infer_group_norm(InferContext& ctx) {
  require_min_rank(ctx, 0, 2, "X");
  const int64_t groups = ctx.attr_int("num_groups");
  if (groups < 1) ctx.fail("num_groups must be >= 1, got " + std::to_string(groups));
  if (has_shape(ctx, 0)) {
    const Dim& c = (*ctx.input_type(0).shape)[1];
    if (c.known() && c.value % groups != 0)
      ctx.fail(std::to_string(c.value) + " channels are not divisible into " + std::to_string(groups) + " groups");
  }
  if (ctx.schema().find_attr("stash_type")) stash_dtype(ctx);
  infer_same_as_input(ctx);
}

void infer_lp_norm(InferContext& ctx) {
  const int64_t p = ctx.attr_int("p");
  if (p != 1 && p != 2) ctx.fail("p must be 1 or 2, got " + std::to_string(p));
  if (has_shape(ctx, 0))
    normalize_axis(ctx, ctx.attr_int("axis"), static_cast<int64_t>(ctx.input_type(0).shape->size()));
  infer_same_as_input(ctx);
}

void infer_mvn(InferContext& ctx) {
  if (has_shape(ctx, 0)) {
    const int64_t rank = static_cast<int64_t>(ctx.input_type(0).shape->size());
    for (int64_t a : ctx.attr_ints("axes")) normalize_axis(ctx, a, rank);
  }
  infer_same_as_input(ctx);
}

void infer_lrn(InferContext& ctx) {
  if (ctx.attr_int("size") < 1) ctx.fail("size must be >= 1, got " + std::to_string(ctx.attr_int("size")));
  require_min_rank(ctx, 0, 2, "X");
  infer_same_as_input(ctx);
}

// ---- Schema tables

std::vector<AttrSpec> conv_attrs() {
  return {attr_string("auto_pad", "NOTSET"), attr_ints("dilations"), attr_int("group", 1), attr_ints("kernel_shape"),
          attr_ints("pads"), attr_ints("strides")};
}

// Pooling attributes: the base set plus the named additions of a version.
std::vector<AttrSpec> pool_attrs(std::vector<AttrSpec> extra) {
  std::vector<AttrSpec> a = {attr_string("auto_pad", "NOTSET"), attr_required("kernel_shape", AttrKind::kInts),
                             attr_ints("pads"), attr_ints("strides")};
  for (auto& e : extra) a.push_back(std::move(e));
  return a;
}

}  // namespace

void register_math_schemas(OpRegistry& r) {
  // MatMul-1/9/13 only widen the type list.
  r.add({.name = "MatMul", .since_version = 1, .min_inputs = 2, .max_inputs = 2, .infer = infer_matmul,
         .doc = "numpy matmul: batched matrix product with 1-D promotion and batch broadcasting"});
  r.add({.name = "MatMulInteger", .since_version = 10, .min_inputs = 2, .max_inputs = 4, .infer = infer_matmul_integer,
         .doc = "(A - a_zero_point) x (B - b_zero_point) in int32"});
  r.add({.name = "QLinearMatMul", .since_version = 10, .min_inputs = 8, .max_inputs = 8, .infer = infer_qlinear_matmul,
         .doc = "quantized matmul: requantize((A - azp) x (B - bzp) * a_scale * b_scale / y_scale) + y_zp"});

  // Gemm-1..6 carry a 'broadcast' flag and a required C; 7..10 broadcast C always; 11+ make C optional.
  r.add({.name = "Gemm", .since_version = 1, .until_version = 6, .min_inputs = 3, .max_inputs = 3,
         .attrs = {attr_float("alpha", 1.0f), attr_float("beta", 1.0f), attr_int("broadcast", 0), attr_int("transA", 0),
                   attr_int("transB", 0)},
         .infer = infer_gemm, .doc = "alpha * op(A) x op(B) + beta * C"});
  r.add({.name = "Gemm", .since_version = 7, .until_version = 10, .min_inputs = 3, .max_inputs = 3,
         .attrs = {attr_float("alpha", 1.0f), attr_float("beta", 1.0f), attr_int("transA", 0), attr_int("transB", 0)},
         .infer = infer_gemm, .doc = "alpha * op(A) x op(B) + beta * C"});
  r.add({.name = "Gemm", .since_version = 11, .min_inputs = 2, .max_inputs = 3,
         .attrs = {attr_float("alpha", 1.0f), attr_float("beta", 1.0f), attr_int("transA", 0), attr_int("transB", 0)},
         .infer = infer_gemm, .doc = "alpha * op(A) x op(B) + beta * C (C optional)"});

  // Conv-1 and Conv-11 differ only in documentation.
  r.add({.name = "Conv", .since_version = 1, .min_inputs = 2, .max_inputs = 3, .attrs = conv_attrs(),
         .infer = infer_conv, .doc = "N-d grouped, strided, dilated, padded cross-correlation plus bias"});
  {
    auto attrs = conv_attrs();
    attrs.push_back(attr_ints("output_padding"));
    attrs.push_back(attr_ints("output_shape"));
    r.add({.name = "ConvTranspose", .since_version = 1, .min_inputs = 2, .max_inputs = 3, .attrs = attrs,
           .infer = infer_conv_transpose, .doc = "N-d transposed (fractionally strided) convolution plus bias"});
  }
  r.add({.name = "ConvInteger", .since_version = 10, .min_inputs = 2, .max_inputs = 4, .attrs = conv_attrs(),
         .infer = infer_conv_integer,
         .doc = "integer convolution of (x - x_zero_point) and (w - w_zero_point) in int32"});
  r.add({.name = "QLinearConv", .since_version = 10, .min_inputs = 8, .max_inputs = 9, .attrs = conv_attrs(),
         .infer = infer_qlinear_conv, .doc = "quantized convolution with int32 bias, requantized to y's type"});

  // BatchNormalization: 6 has 'is_test'; 7-8 have 'spatial'; 9-13 drop it; 14+ add training_mode
  // (15 only widens the types).
  r.add({.name = "BatchNormalization", .since_version = 6, .until_version = 6, .min_inputs = 5, .max_inputs = 5,
         .min_outputs = 1, .max_outputs = 5,
         .attrs = {attr_float("epsilon", 1e-5f), attr_int("is_test", 0), attr_float("momentum", 0.9f),
                   attr_int("spatial", 1)},
         .infer = infer_batch_norm, .doc = "scale * (X - mean) / sqrt(var + epsilon) + B"});
  r.add({.name = "BatchNormalization", .since_version = 7, .until_version = 8, .min_inputs = 5, .max_inputs = 5,
         .min_outputs = 1, .max_outputs = 5,
         .attrs = {attr_float("epsilon", 1e-5f), attr_float("momentum", 0.9f), attr_int("spatial", 1)},
         .infer = infer_batch_norm, .doc = "scale * (X - mean) / sqrt(var + epsilon) + B"});
  r.add({.name = "BatchNormalization", .since_version = 9, .until_version = 13, .min_inputs = 5, .max_inputs = 5,
         .min_outputs = 1, .max_outputs = 5, .attrs = {attr_float("epsilon", 1e-5f), attr_float("momentum", 0.9f)},
         .infer = infer_batch_norm, .doc = "scale * (X - mean) / sqrt(var + epsilon) + B"});
  r.add({.name = "BatchNormalization", .since_version = 14, .min_inputs = 5, .max_inputs = 5, .min_outputs = 1,
         .max_outputs = 3,
         .attrs = {attr_float("epsilon", 1e-5f), attr_float("momentum", 0.9f), attr_int("training_mode", 0)},
         .infer = infer_batch_norm,
         .doc = "scale * (X - mean) / sqrt(var + epsilon) + B, with batch statistics in training mode"});
  r.add({.name = "InstanceNormalization", .since_version = 6, .min_inputs = 3, .max_inputs = 3,
         .attrs = {attr_float("epsilon", 1e-5f)}, .infer = infer_same_as_input,
         .doc = "per-instance, per-channel normalization with per-channel scale and bias"});
  r.add({.name = "LayerNormalization", .since_version = 17, .min_inputs = 2, .max_inputs = 3, .min_outputs = 1,
         .max_outputs = 3, .attrs = {attr_int("axis", -1), attr_float("epsilon", 1e-5f), attr_int("stash_type", 1)},
         .infer = infer_layer_norm, .doc = "normalization over the trailing axes from 'axis', then Scale and B"});
  // GroupNormalization-18 takes per-group scale and bias; 21 takes per-channel ones and adds stash_type.
  r.add({.name = "GroupNormalization", .since_version = 18, .until_version = 20, .min_inputs = 3, .max_inputs = 3,
         .attrs = {attr_float("epsilon", 1e-5f), attr_required("num_groups", AttrKind::kInt)},
         .infer = infer_group_norm,
         .doc = "normalization per instance per group of channels, per-group scale and bias"});
  r.add({.name = "GroupNormalization", .since_version = 21, .min_inputs = 3, .max_inputs = 3,
         .attrs = {attr_float("epsilon", 1e-5f), attr_required("num_groups", AttrKind::kInt),
                   attr_int("stash_type", 1)},
         .infer = infer_group_norm,
         .doc = "normalization per instance per group of channels, per-channel scale and bias"});
  r.add({.name = "LpNormalization", .since_version = 1, .attrs = {attr_int("axis", -1), attr_int("p", 2)},
         .infer = infer_lp_norm, .doc = "X divided by its L1 or L2 norm along 'axis'"});
  // MeanVarianceNormalization-9 and -13 differ only in types.
  r.add({.name = "MeanVarianceNormalization", .since_version = 9, .attrs = {attr_ints("axes", {0, 2, 3})},
         .infer = infer_mvn, .doc = "(X - mean) / (std + 1e-9) over 'axes'"});
  r.add({.name = "LRN", .since_version = 1,
         .attrs = {attr_float("alpha", 1e-4f), attr_float("beta", 0.75f), attr_float("bias", 1.0f),
                   attr_required("size", AttrKind::kInt)},
         .infer = infer_lrn, .doc = "local response normalization across channels"});

  // MaxPool: 8 adds Indices and storage_order; 10 adds ceil_mode and dilations (11/12 only widen).
  r.add({.name = "MaxPool", .since_version = 1, .until_version = 7, .attrs = pool_attrs({}), .infer = infer_pool,
         .doc = "max over sliding windows"});
  r.add({.name = "MaxPool", .since_version = 8, .until_version = 9, .min_outputs = 1, .max_outputs = 2,
         .attrs = pool_attrs({attr_int("storage_order", 0)}), .infer = infer_pool,
         .doc = "max over sliding windows, with optional flat argmax indices"});
  r.add({.name = "MaxPool", .since_version = 10, .min_outputs = 1, .max_outputs = 2,
         .attrs = pool_attrs({attr_int("ceil_mode", 0), attr_ints("dilations"), attr_int("storage_order", 0)}),
         .infer = infer_pool, .doc = "max over sliding windows, with optional flat argmax indices"});
  // AveragePool: 7 adds count_include_pad; 10 ceil_mode; 19 dilations.
  r.add({.name = "AveragePool", .since_version = 1, .until_version = 6, .attrs = pool_attrs({}), .infer = infer_pool,
         .doc = "mean over sliding windows, padding excluded"});
  r.add({.name = "AveragePool", .since_version = 7, .until_version = 9,
         .attrs = pool_attrs({attr_int("count_include_pad", 0)}), .infer = infer_pool,
         .doc = "mean over sliding windows"});
  r.add({.name = "AveragePool", .since_version = 10, .until_version = 18,
         .attrs = pool_attrs({attr_int("ceil_mode", 0), attr_int("count_include_pad", 0)}), .infer = infer_pool,
         .doc = "mean over sliding windows"});
  r.add({.name = "AveragePool", .since_version = 19,
         .attrs = pool_attrs({attr_int("ceil_mode", 0), attr_int("count_include_pad", 0), attr_ints("dilations")}),
         .infer = infer_pool, .doc = "mean over (dilated) sliding windows"});
  // LpPool: 2 makes p an int; 18 adds ceil_mode and dilations.
  r.add({.name = "LpPool", .since_version = 2, .until_version = 17, .attrs = pool_attrs({attr_int("p", 2)}),
         .infer = infer_pool, .doc = "Lp norm over sliding windows"});
  r.add({.name = "LpPool", .since_version = 18,
         .attrs = pool_attrs({attr_int("ceil_mode", 0), attr_ints("dilations"), attr_int("p", 2)}), .infer = infer_pool,
         .doc = "Lp norm over (dilated) sliding windows"});
  r.add({.name = "GlobalAveragePool", .since_version = 1, .infer = infer_global_pool,
         .doc = "mean over all spatial axes"});
  r.add({.name = "GlobalMaxPool", .since_version = 1, .infer = infer_global_pool, .doc = "max over all spatial axes"});
  r.add({.name = "GlobalLpPool", .since_version = 2, .attrs = {attr_int("p", 2)}, .infer = infer_global_pool,
         .doc = "Lp norm over all spatial axes"});
  // MaxUnpool-9 and -11 differ only in documentation.
  r.add({.name = "MaxUnpool", .since_version = 9, .min_inputs = 2, .max_inputs = 3,
         .attrs = {attr_required("kernel_shape", AttrKind::kInts), attr_ints("pads"), attr_ints("strides")},
         .infer = infer_max_unpool, .doc = "scatters X into a zero tensor at the MaxPool indices I"});
}

}  // namespace kiln
