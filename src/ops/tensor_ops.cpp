// Schemas of shape and data-movement ops (Reshape, Concat, Slice, Pad, ...), plus the shared shape
// rules of tensor_rules.h; indexing, resize and quantization schemas live in sibling files.
#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/op_schema.h"
#include "ops/tensor_rules.h"

namespace kiln {

// Sibling files of this group (registered from register_tensor_schemas).
void register_tensor_index_schemas(OpRegistry& r);
void register_resize_schemas(OpRegistry& r);
void register_quantize_schemas(OpRegistry& r);

namespace tensor_rules {

namespace {

std::string ints_to_string(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

// Product of known dims; fails instead of overflowing.
int64_t checked_mul(const NodeView& v, int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) v.fail("shape has too many elements");
  return r;
}

}  // namespace

int64_t attr_int_or(const NodeView& v, const std::string& name, int64_t fallback) {
  return v.schema().find_attr(name) ? v.attr_int(name) : fallback;
}

std::string attr_string_or(const NodeView& v, const std::string& name, const std::string& fallback) {
  return v.schema().find_attr(name) ? v.attr_string(name) : fallback;
}

Shape reshape_shape(const NodeView& v, const Shape* in, const std::vector<int64_t>& spec, bool allowzero) {
  Shape out(spec.size());
  int64_t infer_at = -1;
  bool has_zero = false;
  for (size_t i = 0; i < spec.size(); ++i) {
    const int64_t s = spec[i];
    if (s == -1) {
      if (infer_at >= 0) v.fail("shape " + ints_to_string(spec) + " has more than one -1");
      infer_at = static_cast<int64_t>(i);
    } else if (s < -1) {
      v.fail("invalid dimension " + std::to_string(s) + " in shape " + ints_to_string(spec));
    } else if (s == 0 && !allowzero) {
      if (in) {
        if (i >= in->size())
          v.fail("shape " + ints_to_string(spec) + " copies dimension " + std::to_string(i) + " (0) but the input " +
                 shape_to_string(*in) + " has rank " + std::to_string(in->size()));
        out[i] = (*in)[i];
      }
    } else {
      out[i] = Dim(s);
      has_zero = has_zero || s == 0;
    }
  }
  if (allowzero && has_zero && infer_at >= 0)
    v.fail("shape " + ints_to_string(spec) + " has both 0 and -1, which is invalid with allowzero=1");
  if (!in) return out;

  // Known products and the dims that are not known on each side. Dims copied by a 0 cancel
  // exactly (even unnamed unknown ones); equal symbols cancel out.
  auto copied = [&](size_t i) { return i < spec.size() && spec[i] == 0 && !allowzero; };
  int64_t p_in = 1, p_out = 1;
  std::vector<Dim> u_in, u_out;
  for (size_t i = 0; i < in->size(); ++i) {
    const Dim& d = (*in)[i];
    if (copied(i)) continue;
    if (d.known())
      p_in = checked_mul(v, p_in, d.value);
    else
      u_in.push_back(d);
  }
  for (size_t i = 0; i < out.size(); ++i) {
    if (static_cast<int64_t>(i) == infer_at || copied(i)) continue;
    if (out[i].known())
      p_out = checked_mul(v, p_out, out[i].value);
    else
      u_out.push_back(out[i]);
  }
  for (auto it = u_out.begin(); it != u_out.end();) {
    auto match = it->symbol.empty()
                     ? u_in.end()
                     : std::find_if(u_in.begin(), u_in.end(), [&](const Dim& d) { return d.symbol == it->symbol; });
    if (match == u_in.end()) {
      ++it;
      continue;
    }
    u_in.erase(match);
    it = u_out.erase(it);
  }
  const bool resolved = u_in.empty() && u_out.empty();
  auto mismatch = [&] {
    v.fail("cannot reshape a tensor of shape " + shape_to_string(*in) + " to " + ints_to_string(spec));
  };
  if (infer_at >= 0) {
    Dim& d = out[infer_at];
    if (resolved) {
      if (p_out == 0 || p_in % p_out != 0) mismatch();
      d = Dim(p_in / p_out);
    } else if (u_out.empty() && u_in.size() == 1 && !u_in[0].symbol.empty() && p_in == p_out) {
      d = u_in[0];  // [batch,12] -> [-1,3,4]: the -1 is batch
    } else {
      d = Dim();
    }
  } else if (resolved && p_in != p_out) {
    mismatch();
  }
  return out;
}

std::vector<int64_t> normalize_axes(const NodeView& v, const std::vector<int64_t>& axes, int64_t rank) {
  std::vector<int64_t> out;
  for (int64_t a : axes) {
    int64_t n = normalize_axis(v, a, rank);
    if (std::find(out.begin(), out.end(), n) != out.end()) v.fail("axis " + std::to_string(a) + " is repeated");
    out.push_back(n);
  }
  return out;
}

std::optional<Shape> squeeze_shape(const NodeView& v, const Shape& in, const std::vector<int64_t>& axes) {
  Shape out;
  if (axes.empty()) {
    for (const Dim& d : in) {
      if (!d.known()) return std::nullopt;
      if (d.value != 1) out.push_back(d);
    }
    return out;
  }
  std::vector<int64_t> norm = normalize_axes(v, axes, static_cast<int64_t>(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    const bool squeezed = std::find(norm.begin(), norm.end(), static_cast<int64_t>(i)) != norm.end();
    if (!squeezed) {
      out.push_back(in[i]);
    } else if (in[i].known() && in[i].value != 1) {
      v.fail("cannot squeeze axis " + std::to_string(i) + " of size " + std::to_string(in[i].value) + " in shape " +
             shape_to_string(in));
    }
  }
  return out;
}

Shape unsqueeze_shape(const NodeView& v, const Shape& in, const std::vector<int64_t>& axes) {
  const int64_t out_rank = static_cast<int64_t>(in.size() + axes.size());
  std::vector<int64_t> norm = normalize_axes(v, axes, out_rank);
  Shape out;
  size_t k = 0;
  for (int64_t i = 0; i < out_rank; ++i) {
    if (std::find(norm.begin(), norm.end(), i) != norm.end())
      out.push_back(Dim(1));
    else
      out.push_back(in[k++]);
  }
  return out;
}

std::vector<SliceAxis> slice_axes(const NodeView& v, int64_t rank, const std::vector<int64_t>& starts,
                                  const std::vector<int64_t>& ends, const std::optional<std::vector<int64_t>>& axes,
                                  const std::optional<std::vector<int64_t>>& steps) {
  const size_t n = starts.size();
  if (ends.size() != n)
    v.fail("starts has " + std::to_string(n) + " values but ends has " + std::to_string(ends.size()));
  if (axes && axes->size() != n)
    v.fail("starts has " + std::to_string(n) + " values but axes has " + std::to_string(axes->size()));
  if (steps && steps->size() != n)
    v.fail("starts has " + std::to_string(n) + " values but steps has " + std::to_string(steps->size()));
  if (!axes && static_cast<int64_t>(n) > rank)
    v.fail("starts has " + std::to_string(n) + " values but the input has rank " + std::to_string(rank));
  std::vector<int64_t> ax;
  if (axes) {
    ax = normalize_axes(v, *axes, rank);
  } else {
    for (size_t i = 0; i < n; ++i) ax.push_back(static_cast<int64_t>(i));
  }
  std::vector<SliceAxis> out;
  for (size_t i = 0; i < n; ++i) {
    SliceAxis s{ax[i], starts[i], ends[i], steps ? (*steps)[i] : 1};
    if (s.step == 0) v.fail("slice step cannot be 0");
    s.step = std::max(s.step, -std::numeric_limits<int64_t>::max());  // keeps -step representable
    out.push_back(s);
  }
  return out;
}

std::pair<int64_t, int64_t> slice_range(int64_t dim, int64_t start, int64_t end, int64_t step) {
  if (dim == 0) return {0, 0};
  if (start < 0) start += dim;
  if (end < 0) end += dim;
  if (step > 0) {
    start = std::clamp<int64_t>(start, 0, dim);
    end = std::clamp<int64_t>(end, 0, dim);
    return {start, end > start ? (end - start - 1) / step + 1 : 0};
  }
  start = std::clamp<int64_t>(start, 0, dim - 1);
  end = std::clamp<int64_t>(end, -1, dim - 1);
  return {start, start > end ? (start - end - 1) / -step + 1 : 0};
}

std::vector<int64_t> pad_amounts(const NodeView& v, int64_t rank, const std::vector<int64_t>& pads,
                                 const std::optional<std::vector<int64_t>>& axes) {
  std::vector<int64_t> out(2 * rank, 0);
  if (axes) {
    const size_t n = axes->size();
    if (pads.size() != 2 * n)
      v.fail("pads has " + std::to_string(pads.size()) + " values, expected 2 * " + std::to_string(n) + " (axes)");
    std::vector<int64_t> norm = normalize_axes(v, *axes, rank);
    for (size_t i = 0; i < n; ++i) {
      out[norm[i]] = pads[i];
      out[rank + norm[i]] = pads[n + i];
    }
    return out;
  }
  if (static_cast<int64_t>(pads.size()) != 2 * rank)
    v.fail("pads has " + std::to_string(pads.size()) + " values, expected " + std::to_string(2 * rank) +
           " for an input of rank " + std::to_string(rank));
  return pads;
}

std::vector<int64_t> split_sizes(const NodeView& v, int64_t dim, size_t num_outputs,
                                 const std::optional<std::vector<int64_t>>& split) {
  if (split) {
    if (split->size() != num_outputs)
      v.fail("split has " + std::to_string(split->size()) + " values but the node has " + std::to_string(num_outputs) +
             " outputs");
    int64_t sum = 0;
    for (int64_t s : *split) {
      if (s < 0) v.fail("split value " + std::to_string(s) + " is negative");
      sum += s;
    }
    if (sum != dim)
      v.fail("split " + ints_to_string(*split) + " sums to " + std::to_string(sum) + " but the dimension is " +
             std::to_string(dim));
    return *split;
  }
  const int64_t n = static_cast<int64_t>(num_outputs);
  if (n == 0) v.fail("Split needs at least one output");
  std::optional<int64_t> num = v.schema().find_attr("num_outputs") ? v.attr_int_opt("num_outputs") : std::nullopt;
  if (num) {
    if (*num != n)
      v.fail("num_outputs is " + std::to_string(*num) + " but the node has " + std::to_string(n) + " outputs");
    // Opset 18: chunks of ceil(dim / n), the last one smaller.
    const int64_t chunk = (dim + n - 1) / n;
    std::vector<int64_t> out(n, chunk);
    out.back() = dim - chunk * (n - 1);
    if (out.back() < 0)
      v.fail("cannot split a dimension of " + std::to_string(dim) + " into " + std::to_string(n) + " chunks of " +
             std::to_string(chunk));
    return out;
  }
  if (dim % n != 0)
    v.fail("cannot split a dimension of " + std::to_string(dim) + " evenly into " + std::to_string(n) + " outputs");
  return std::vector<int64_t>(n, dim / n);
}

std::pair<int64_t, int64_t> shape_range(const NodeView& v, int64_t rank) {
  int64_t start = attr_int_or(v, "start", 0);
  int64_t end = v.schema().find_attr("end") && v.has_attr("end") ? v.attr_int("end") : rank;
  if (start < 0) start += rank;
  if (end < 0) end += rank;
  start = std::clamp<int64_t>(start, 0, rank);
  end = std::clamp<int64_t>(end, start, rank);
  return {start, end};
}

int64_t range_count(const NodeView& v, double start, double limit, double delta) {
  if (delta == 0) v.fail("Range delta cannot be 0");
  const double n = std::ceil((limit - start) / delta);
  if (std::isnan(n)) v.fail("Range has a NaN bound");
  if (n <= 0) return 0;
  if (n > static_cast<double>(std::numeric_limits<int32_t>::max())) v.fail("Range would have too many elements");
  return static_cast<int64_t>(n);
}

std::vector<int64_t> resize_axes(const NodeView& v, int64_t rank) {
  if (v.schema().find_attr("axes") && !v.attr_ints("axes").empty()) return normalize_axes(v, v.attr_ints("axes"), rank);
  std::vector<int64_t> all(rank);
  for (int64_t i = 0; i < rank; ++i) all[i] = i;
  return all;
}

ResizeGeometry resize_geometry(const NodeView& v, const std::vector<int64_t>& in,
                               const std::optional<std::vector<double>>& scales,
                               const std::optional<std::vector<int64_t>>& sizes) {
  const int64_t rank = static_cast<int64_t>(in.size());
  const std::vector<int64_t> axes = resize_axes(v, rank);
  ResizeGeometry g{in, std::vector<double>(rank, 1.0)};
  if (sizes) {
    if (sizes->size() != axes.size())
      v.fail("sizes has " + std::to_string(sizes->size()) + " values, expected " + std::to_string(axes.size()));
    for (size_t i = 0; i < axes.size(); ++i) {
      if ((*sizes)[i] < 0) v.fail("sizes has a negative value " + std::to_string((*sizes)[i]));
      if (in[axes[i]] == 0 && (*sizes)[i] != 0)
        v.fail("cannot resize an empty dimension " + std::to_string(axes[i]) + " to " + std::to_string((*sizes)[i]));
    }
    const std::string policy = attr_string_or(v, "keep_aspect_ratio_policy", "stretch");
    if (policy == "stretch") {
      for (size_t i = 0; i < axes.size(); ++i) {
        const int64_t a = axes[i];
        g.out[a] = (*sizes)[i];
        g.scale[a] = in[a] == 0 ? 1.0 : static_cast<double>((*sizes)[i]) / static_cast<double>(in[a]);
      }
    } else if (policy == "not_larger" || policy == "not_smaller") {
      double s = policy == "not_larger" ? std::numeric_limits<double>::infinity() : 0.0;
      for (size_t i = 0; i < axes.size(); ++i) {
        if (in[axes[i]] == 0) continue;
        const double r = static_cast<double>((*sizes)[i]) / static_cast<double>(in[axes[i]]);
        s = policy == "not_larger" ? std::min(s, r) : std::max(s, r);
      }
      if (!std::isfinite(s)) s = 1.0;
      for (int64_t a : axes) {
        g.scale[a] = s;
        g.out[a] = static_cast<int64_t>(s * static_cast<double>(in[a]) + 0.5);  // round half up, as the spec says
      }
    } else {
      v.fail("unknown keep_aspect_ratio_policy '" + policy + "'");
    }
    return g;
  }
  if (!scales) v.fail("one of scales or sizes is required");
  if (scales->size() != axes.size())
    v.fail("scales has " + std::to_string(scales->size()) + " values, expected " + std::to_string(axes.size()));
  for (size_t i = 0; i < axes.size(); ++i) {
    const double s = (*scales)[i];
    if (!(s > 0) || !std::isfinite(s)) v.fail("scale " + std::to_string(s) + " must be positive");
    const double out = std::floor(s * static_cast<double>(in[axes[i]]));
    if (out > static_cast<double>(std::numeric_limits<int32_t>::max())) v.fail("resized dimension is too large");
    g.out[axes[i]] = static_cast<int64_t>(out);
    g.scale[axes[i]] = s;
  }
  return g;
}

}  // namespace tensor_rules

namespace tensor_infer {

std::optional<std::vector<int64_t>> const_ints(const InferContext& ctx, size_t i) {
  if (!ctx.has_input(i)) return std::nullopt;
  const Tensor* t = ctx.input_value(i);
  if (!t) return std::nullopt;
  if (!dtype_is_integer(t->dtype()))
    ctx.fail("input " + std::to_string(i) + " must be an integer tensor, got " + std::string(dtype_name(t->dtype())));
  return t->to_int64_vector();
}

std::optional<std::vector<double>> const_doubles(const InferContext& ctx, size_t i) {
  if (!ctx.has_input(i)) return std::nullopt;
  const Tensor* t = ctx.input_value(i);
  if (!t) return std::nullopt;
  return t->to_double_vector();
}

std::optional<int64_t> known_length(const InferContext& ctx, size_t i) {
  if (!ctx.has_input(i)) return std::nullopt;
  const TensorType& t = ctx.input_type(i);
  if (t.shape && t.shape->size() == 1 && (*t.shape)[0].known()) return (*t.shape)[0].value;
  return std::nullopt;
}

Dim merge_equal_dims(const NodeView& v, const Dim& a, const Dim& b, const std::string& what) {
  if (a.known() && b.known()) {
    if (a.value != b.value)
      v.fail(what + ": dimension " + std::to_string(a.value) + " does not match " + std::to_string(b.value));
    return a;
  }
  if (a.known()) return a;
  if (b.known()) return b;
  return a.symbol.empty() ? b : a;
}

}  // namespace tensor_infer

namespace {

using namespace tensor_rules;
using namespace tensor_infer;

void infer_identity(InferContext& ctx) { ctx.set_output(0, ctx.input_type(0)); }

// ---- Reshape, Flatten, Squeeze, Unsqueeze, Transpose

void infer_reshape(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  const bool allowzero = attr_int_or(ctx, "allowzero", 0) != 0;
  if (auto spec = const_ints(ctx, 1)) {
    ctx.set_output(0, x.dtype, reshape_shape(ctx, input_shape(ctx, 0), *spec, allowzero));
    return;
  }
  if (auto n = known_length(ctx, 1)) {
    ctx.set_output(0, x.dtype, unknown_dims(*n));
    return;
  }
  ctx.set_output_unknown_shape(0, x.dtype);
}

void infer_flatten(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  if (!x.shape) {
    ctx.set_output(0, x.dtype, unknown_dims(2));
    return;
  }
  const int64_t rank = static_cast<int64_t>(x.shape->size());
  int64_t axis = ctx.attr_int("axis");
  if (axis < -rank || axis > rank)
    ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  if (axis < 0) axis += rank;
  Dim outer(1), inner(1);
  for (int64_t i = 0; i < rank; ++i) {
    if (i < axis)
      outer = dim_mul(outer, (*x.shape)[i]);
    else
      inner = dim_mul(inner, (*x.shape)[i]);
  }
  ctx.set_output(0, x.dtype, {outer, inner});
}

// Squeeze/Unsqueeze axes: the attribute before opset 13, the optional input from 13.
std::optional<std::vector<int64_t>> squeeze_axes(const InferContext& ctx) {
  if (ctx.opset() < 13) return ctx.attr_ints("axes");
  if (!ctx.has_input(1)) return std::vector<int64_t>{};
  return const_ints(ctx, 1);
}

void infer_squeeze(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  auto axes = squeeze_axes(ctx);
  if (!x.shape) {
    ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  if (!axes) {
    auto n = known_length(ctx, 1);
    if (n && *n <= static_cast<int64_t>(x.shape->size()))
      ctx.set_output(0, x.dtype, unknown_dims(x.shape->size() - *n));
    else
      ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  auto out = squeeze_shape(ctx, *x.shape, *axes);
  if (out)
    ctx.set_output(0, x.dtype, *out);
  else
    ctx.set_output_unknown_shape(0, x.dtype);
}

void infer_unsqueeze(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  auto axes = squeeze_axes(ctx);
  if (ctx.opset() >= 13 && !ctx.has_input(1)) ctx.fail("Unsqueeze needs the axes input");
  if (!x.shape) {
    ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  if (!axes) {
    if (auto n = known_length(ctx, 1))
      ctx.set_output(0, x.dtype, unknown_dims(x.shape->size() + *n));
    else
      ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  ctx.set_output(0, x.dtype, unsqueeze_shape(ctx, *x.shape, *axes));
}

void infer_transpose(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  const std::vector<int64_t>& perm = ctx.attr_ints("perm");
  if (!x.shape) {
    if (perm.empty())
      ctx.set_output_unknown_shape(0, x.dtype);
    else
      ctx.set_output(0, x.dtype, unknown_dims(perm.size()));
    return;
  }
  const size_t rank = x.shape->size();
  Shape out(rank);
  if (perm.empty()) {
    for (size_t i = 0; i < rank; ++i) out[i] = (*x.shape)[rank - 1 - i];
  } else {
    if (perm.size() != rank)
      ctx.fail("perm has " + std::to_string(perm.size()) + " entries but the input has rank " + std::to_string(rank));
    std::vector<bool> seen(rank, false);
    for (size_t i = 0; i < rank; ++i) {
      if (perm[i] < 0 || perm[i] >= static_cast<int64_t>(rank) || seen[perm[i]])
        ctx.fail("perm is not a permutation of 0.." + std::to_string(rank - 1));
      seen[perm[i]] = true;
      out[i] = (*x.shape)[perm[i]];
    }
  }
  ctx.set_output(0, x.dtype, out);
}

// ---- Concat, Split, Slice

void infer_concat(InferContext& ctx) {
  const DType dt = ctx.input_type(0).dtype;
  std::optional<Shape> out;
  std::vector<const Shape*> shapes;
  bool any_unknown_rank = false;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    if (!ctx.has_input(i)) continue;
    const TensorType& t = ctx.input_type(i);
    if (t.dtype != DType::kUndefined && dt != DType::kUndefined && t.dtype != dt)
      ctx.fail("inputs have different dtypes " + std::string(dtype_name(dt)) + " and " +
               std::string(dtype_name(t.dtype)));
    if (t.shape)
      shapes.push_back(&*t.shape);
    else
      any_unknown_rank = true;
  }
  if (shapes.empty()) {
    ctx.set_output_unknown_shape(0, dt);
    return;
  }
  const int64_t rank = static_cast<int64_t>(shapes[0]->size());
  if (rank == 0) ctx.fail("Concat inputs cannot be scalars");
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), rank);
  Shape result = *shapes[0];
  for (size_t k = 1; k < shapes.size(); ++k) {
    const Shape& s = *shapes[k];
    if (static_cast<int64_t>(s.size()) != rank)
      ctx.fail("inputs have different ranks " + shape_to_string(*shapes[0]) + " and " + shape_to_string(s));
    for (int64_t d = 0; d < rank; ++d) {
      if (d == axis) {
        result[d] = result[d].known() && s[d].known() ? Dim(result[d].value + s[d].value) : Dim();
      } else {
        result[d] = merge_equal_dims(
            ctx, result[d], s[d],
            "inputs " + shape_to_string(*shapes[0]) + " and " + shape_to_string(s) + " cannot be concatenated");
      }
    }
  }
  if (any_unknown_rank) result[axis] = Dim();
  ctx.set_output(0, dt, result);
}

void infer_split(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  const size_t n = ctx.num_outputs();
  if (!x.shape) {
    for (size_t i = 0; i < n; ++i) ctx.set_output_unknown_shape(i, x.dtype);
    return;
  }
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), static_cast<int64_t>(x.shape->size()));
  std::optional<std::vector<int64_t>> split;
  bool split_unknown = false;
  if (ctx.opset() < 13) {
    if (!ctx.attr_ints("split").empty()) split = ctx.attr_ints("split");
  } else if (ctx.has_input(1)) {
    split = const_ints(ctx, 1);
    split_unknown = !split;
    if (split && split->empty()) split.reset();  // an empty split means "not given"
  }
  const Dim& d = (*x.shape)[axis];
  std::vector<Dim> sizes(n);
  if (d.known() && !split_unknown) {
    std::vector<int64_t> s = split_sizes(ctx, d.value, n, split);
    for (size_t i = 0; i < n; ++i) sizes[i] = Dim(s[i]);
  } else if (split) {
    if (split->size() != n)
      ctx.fail("split has " + std::to_string(split->size()) + " values but the node has " + std::to_string(n) +
               " outputs");
    for (size_t i = 0; i < n; ++i) sizes[i] = Dim((*split)[i]);
  } else if (n == 1 && !split_unknown) {
    sizes[0] = d;
  }
  for (size_t i = 0; i < n; ++i) {
    Shape s = *x.shape;
    s[axis] = sizes[i];
    ctx.set_output(i, x.dtype, s);
  }
}

// Slice parameters: attributes before opset 10, inputs from 10. nullopt when not constant.
struct SliceSpec {
  std::vector<int64_t> starts, ends;
  std::optional<std::vector<int64_t>> axes, steps;
};

std::optional<SliceSpec> slice_spec(const InferContext& ctx) {
  SliceSpec s;
  if (ctx.opset() < 10) {
    s.starts = ctx.attr_ints("starts");
    s.ends = ctx.attr_ints("ends");
    if (ctx.has_attr("axes")) s.axes = ctx.attr_ints("axes");
    return s;
  }
  auto starts = const_ints(ctx, 1), ends = const_ints(ctx, 2);
  if (!starts || !ends) return std::nullopt;
  s.starts = *starts;
  s.ends = *ends;
  if (ctx.has_input(3)) {
    s.axes = const_ints(ctx, 3);
    if (!s.axes) return std::nullopt;
  }
  if (ctx.has_input(4)) {
    s.steps = const_ints(ctx, 4);
    if (!s.steps) return std::nullopt;
  }
  return s;
}

void infer_slice(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  if (!x.shape) {
    ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  const int64_t rank = static_cast<int64_t>(x.shape->size());
  auto spec = slice_spec(ctx);
  if (!spec) {
    // Only the axes may be known: the other dims are kept.
    Shape out = *x.shape;
    std::optional<std::vector<int64_t>> axes = ctx.has_input(3) ? const_ints(ctx, 3) : std::nullopt;
    if (axes) {
      for (int64_t a : normalize_axes(ctx, *axes, rank)) out[a] = Dim();
    } else {
      out = unknown_dims(rank);
    }
    ctx.set_output(0, x.dtype, out);
    return;
  }
  Shape out = *x.shape;
  for (const SliceAxis& s : slice_axes(ctx, rank, spec->starts, spec->ends, spec->axes, spec->steps)) {
    const Dim& d = (*x.shape)[s.axis];
    if (d.known()) {
      out[s.axis] = Dim(slice_range(d.value, s.start, s.end, s.step).second);
    } else if (s.step == 1 && s.start == 0 && s.end >= std::numeric_limits<int32_t>::max()) {
      out[s.axis] = d;  // the whole axis: keeps the symbol
    } else {
      out[s.axis] = Dim();
    }
  }
  ctx.set_output(0, x.dtype, out);
}

// ---- Expand, Tile, Pad

void infer_expand(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  auto shape = const_ints(ctx, 1);
  if (!x.shape) {
    ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  if (!shape) {
    auto n = known_length(ctx, 1);
    if (n)
      ctx.set_output(0, x.dtype, unknown_dims(std::max<size_t>(x.shape->size(), *n)));
    else
      ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  for (int64_t d : *shape)
    if (d < 0) ctx.fail("Expand shape has a negative dimension " + std::to_string(d));
  ctx.set_output(0, x.dtype, broadcast_shapes(ctx, {*x.shape, shape_from_dims(*shape)}));
}

void infer_tile(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  if (!x.shape) {
    ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  auto repeats = const_ints(ctx, 1);
  if (!repeats) {
    ctx.set_output(0, x.dtype, unknown_dims(x.shape->size()));
    return;
  }
  if (repeats->size() != x.shape->size())
    ctx.fail("repeats has " + std::to_string(repeats->size()) + " values but the input has rank " +
             std::to_string(x.shape->size()));
  Shape out = *x.shape;
  for (size_t i = 0; i < out.size(); ++i) {
    if ((*repeats)[i] < 0) ctx.fail("repeats has a negative value " + std::to_string((*repeats)[i]));
    out[i] = dim_mul(out[i], Dim((*repeats)[i]));
  }
  ctx.set_output(0, x.dtype, out);
}

void infer_pad(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  if (!x.shape) {
    ctx.set_output_unknown_shape(0, x.dtype);
    return;
  }
  const int64_t rank = static_cast<int64_t>(x.shape->size());
  std::optional<std::vector<int64_t>> pads, axes;
  bool known = true;
  if (ctx.opset() < 11) {
    pads = ctx.attr_ints("pads");
  } else {
    pads = const_ints(ctx, 1);
    if (ctx.has_input(3)) {
      axes = const_ints(ctx, 3);
      known = axes.has_value();
    }
  }
  if (!pads || !known) {
    // Dims of axes that are not padded keep their size.
    Shape out = unknown_dims(rank);
    if (axes) {
      out = *x.shape;
      for (int64_t a : normalize_axes(ctx, *axes, rank)) out[a] = Dim();
    }
    ctx.set_output(0, x.dtype, out);
    return;
  }
  std::vector<int64_t> p = pad_amounts(ctx, rank, *pads, axes);
  Shape out = *x.shape;
  for (int64_t i = 0; i < rank; ++i) {
    const int64_t extra = p[i] + p[rank + i];
    if (out[i].known()) {
      if (out[i].value + extra < 0)
        ctx.fail("pads " + std::to_string(p[i]) + "," + std::to_string(p[rank + i]) + " remove more than dimension " +
                 std::to_string(i) + " of size " + std::to_string(out[i].value));
      out[i] = Dim(out[i].value + extra);
    } else if (extra != 0) {
      out[i] = Dim();
    }
  }
  ctx.set_output(0, x.dtype, out);
}

// ---- Shape, Size, ConstantOfShape, Constant, Range, EyeLike, Trilu

void infer_shape(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  if (!x.shape) {
    ctx.set_output(0, DType::kI64, {Dim()});
    return;
  }
  auto [start, end] = shape_range(ctx, static_cast<int64_t>(x.shape->size()));
  ctx.set_output(0, DType::kI64, {Dim(end - start)});
}

void infer_size(InferContext& ctx) { ctx.set_output(0, DType::kI64, Shape{}); }

void infer_constant_of_shape(InferContext& ctx) {
  DType dt = DType::kF32;
  if (ctx.has_attr("value")) {
    const Tensor& v = ctx.attr_tensor("value");
    if (v.numel() != 1) ctx.fail("value must have exactly one element, got " + std::to_string(v.numel()));
    dt = v.dtype();
  }
  if (auto shape = const_ints(ctx, 0)) {
    for (int64_t d : *shape)
      if (d < 0) ctx.fail("shape has a negative dimension " + std::to_string(d));
    ctx.set_output(0, dt, shape_from_dims(*shape));
  } else if (auto n = known_length(ctx, 0)) {
    ctx.set_output(0, dt, unknown_dims(*n));
  } else {
    ctx.set_output_unknown_shape(0, dt);
  }
}

void infer_constant(InferContext& ctx) {
  static const char* kScalarLists[] = {"value_float", "value_floats", "value_int", "value_ints"};
  int present = ctx.has_attr("value") ? 1 : 0;
  for (const char* a : kScalarLists)
    if (ctx.schema().find_attr(a) && ctx.has_attr(a)) ++present;
  for (const char* a : {"value_string", "value_strings", "sparse_value"})
    if (ctx.schema().find_attr(a) && ctx.has_attr(a))
      ctx.unsupported(std::string("attribute '") + a + "' is not supported");
  if (present != 1) ctx.fail("exactly one value attribute is required, got " + std::to_string(present));
  if (ctx.has_attr("value")) {
    const Tensor& t = ctx.attr_tensor("value");
    ctx.set_output(0, t.dtype(), shape_from_dims(t.shape()));
  } else if (ctx.has_attr("value_float")) {
    ctx.set_output(0, DType::kF32, Shape{});
  } else if (ctx.has_attr("value_floats")) {
    ctx.set_output(0, DType::kF32, {Dim(static_cast<int64_t>(ctx.attr_floats("value_floats").size()))});
  } else if (ctx.has_attr("value_int")) {
    ctx.set_output(0, DType::kI64, Shape{});
  } else {
    ctx.set_output(0, DType::kI64, {Dim(static_cast<int64_t>(ctx.attr_ints("value_ints").size()))});
  }
}

void infer_range(InferContext& ctx) {
  const DType dt = ctx.input_type(0).dtype;
  for (size_t i = 1; i < 3; ++i)
    if (ctx.input_type(i).dtype != dt && ctx.input_type(i).dtype != DType::kUndefined)
      ctx.fail("start, limit and delta must have the same dtype");
  auto s = const_doubles(ctx, 0), l = const_doubles(ctx, 1), d = const_doubles(ctx, 2);
  if (s && l && d) {
    if (s->size() != 1 || l->size() != 1 || d->size() != 1) ctx.fail("start, limit and delta must be scalars");
    ctx.set_output(0, dt, {Dim(range_count(ctx, (*s)[0], (*l)[0], (*d)[0]))});
  } else {
    ctx.set_output(0, dt, {Dim()});
  }
}

void infer_eye_like(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  DType dt = x.dtype;
  if (auto code = ctx.attr_int_opt("dtype")) {
    dt = dtype_from_onnx(static_cast<int>(*code));
    if (dt == DType::kUndefined) ctx.fail("unknown dtype " + std::to_string(*code));
  }
  if (x.shape && x.shape->size() != 2) ctx.fail("EyeLike needs a 2-D input, got " + shape_to_string(*x.shape));
  ctx.set_output(0, TensorType{dt, x.shape ? x.shape : std::optional<Shape>(unknown_dims(2))});
}

// ---- DepthToSpace, SpaceToDepth

void infer_depth_to_space(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  const int64_t b = ctx.attr_int("blocksize");
  if (b <= 0 || b > (1 << 16)) ctx.fail("blocksize must be in [1, 65536], got " + std::to_string(b));
  const std::string mode = attr_string_or(ctx, "mode", "DCR");
  if (mode != "DCR" && mode != "CRD") ctx.fail("unknown mode '" + mode + "'");
  if (!x.shape) {
    ctx.set_output(0, x.dtype, unknown_dims(4));
    return;
  }
  if (x.shape->size() != 4) ctx.fail("input must be 4-D, got " + shape_to_string(*x.shape));
  const Shape& s = *x.shape;
  Dim c;
  if (s[1].known()) {
    if (s[1].value % (b * b) != 0)
      ctx.fail("channels " + std::to_string(s[1].value) +
               " are not divisible by blocksize^2 = " + std::to_string(b * b));
    c = Dim(s[1].value / (b * b));
  }
  ctx.set_output(0, x.dtype, {s[0], c, dim_mul(s[2], Dim(b)), dim_mul(s[3], Dim(b))});
}

void infer_space_to_depth(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  const int64_t b = ctx.attr_int("blocksize");
  if (b <= 0 || b > (1 << 16)) ctx.fail("blocksize must be in [1, 65536], got " + std::to_string(b));
  if (!x.shape) {
    ctx.set_output(0, x.dtype, unknown_dims(4));
    return;
  }
  if (x.shape->size() != 4) ctx.fail("input must be 4-D, got " + shape_to_string(*x.shape));
  const Shape& s = *x.shape;
  Shape out{s[0], dim_mul(s[1], Dim(b * b)), Dim(), Dim()};
  for (int i = 2; i < 4; ++i) {
    if (!s[i].known()) continue;
    if (s[i].value % b != 0)
      ctx.fail("spatial dimension " + std::to_string(s[i].value) + " is not divisible by blocksize " +
               std::to_string(b));
    out[i] = Dim(s[i].value / b);
  }
  ctx.set_output(0, x.dtype, out);
}

// ---- Dropout

void infer_dropout(InferContext& ctx) {
  const TensorType& x = ctx.input_type(0);
  ctx.set_output(0, x);
  // Opset 7-9 returns the mask in the input's dtype; 10+ as bool.
  ctx.set_output(1, TensorType{ctx.opset() < 10 ? x.dtype : DType::kBool, x.shape});
}

}  // namespace

void register_tensor_schemas(OpRegistry& r) {
  constexpr int kVar = OpSchema::kVariadic;
  r.add({.name = "Reshape",
         .since_version = 5,
         .until_version = 13,
         .min_inputs = 2,
         .max_inputs = 2,
         .infer = infer_reshape,
         .doc = "reshape; 0 copies the input dim, -1 is inferred"});
  r.add({.name = "Reshape",
         .since_version = 14,
         .min_inputs = 2,
         .max_inputs = 2,
         .attrs = {attr_int("allowzero", 0)},
         .infer = infer_reshape,
         .doc = "reshape; 0 copies the input dim unless allowzero, -1 is inferred"});
  r.add({.name = "Flatten",
         .since_version = 1,
         .attrs = {attr_int("axis", 1)},
         .infer = infer_flatten,
         .doc = "reshape to 2-D at axis"});
  r.add({.name = "Squeeze",
         .since_version = 1,
         .until_version = 12,
         .attrs = {attr_ints("axes")},
         .infer = infer_squeeze,
         .doc = "remove size-1 dims"});
  r.add({.name = "Squeeze",
         .since_version = 13,
         .min_inputs = 1,
         .max_inputs = 2,
         .infer = infer_squeeze,
         .doc = "remove size-1 dims (axes as input)"});
  r.add({.name = "Unsqueeze",
         .since_version = 1,
         .until_version = 12,
         .attrs = {attr_required("axes", AttrKind::kInts)},
         .infer = infer_unsqueeze,
         .doc = "insert size-1 dims"});
  r.add({.name = "Unsqueeze",
         .since_version = 13,
         .min_inputs = 2,
         .max_inputs = 2,
         .infer = infer_unsqueeze,
         .doc = "insert size-1 dims (axes as input)"});
  r.add({.name = "Transpose",
         .since_version = 1,
         .attrs = {attr_ints("perm")},
         .infer = infer_transpose,
         .doc = "permute dims (default: reverse)"});
  r.add({.name = "Concat",
         .since_version = 4,
         .min_inputs = 1,
         .max_inputs = kVar,
         .attrs = {attr_required("axis", AttrKind::kInt)},
         .infer = infer_concat,
         .doc = "concatenate along axis"});
  r.add({.name = "Split",
         .since_version = 2,
         .until_version = 12,
         .min_outputs = 1,
         .max_outputs = kVar,
         .attrs = {attr_int("axis", 0), attr_ints("split")},
         .infer = infer_split,
         .doc = "split along axis"});
  r.add({.name = "Split",
         .since_version = 13,
         .until_version = 17,
         .min_inputs = 1,
         .max_inputs = 2,
         .min_outputs = 1,
         .max_outputs = kVar,
         .attrs = {attr_int("axis", 0)},
         .infer = infer_split,
         .doc = "split along axis (split as input)"});
  r.add({.name = "Split",
         .since_version = 18,
         .min_inputs = 1,
         .max_inputs = 2,
         .min_outputs = 1,
         .max_outputs = kVar,
         .attrs = {attr_int("axis", 0), attr_optional("num_outputs", AttrKind::kInt)},
         .infer = infer_split,
         .doc = "split along axis (split input or num_outputs, uneven last chunk)"});
  r.add({.name = "Slice",
         .since_version = 1,
         .until_version = 9,
         .attrs = {attr_required("starts", AttrKind::kInts), attr_required("ends", AttrKind::kInts), attr_ints("axes")},
         .infer = infer_slice,
         .doc = "strided slice (attributes)"});
  r.add({.name = "Slice",
         .since_version = 10,
         .min_inputs = 3,
         .max_inputs = 5,
         .infer = infer_slice,
         .doc = "strided slice (inputs, negative steps)"});
  r.add({.name = "Expand",
         .since_version = 8,
         .min_inputs = 2,
         .max_inputs = 2,
         .infer = infer_expand,
         .doc = "broadcast to shape"});
  r.add({.name = "Tile",
         .since_version = 6,
         .min_inputs = 2,
         .max_inputs = 2,
         .infer = infer_tile,
         .doc = "repeat along each dim"});
  r.add({.name = "Pad",
         .since_version = 2,
         .until_version = 10,
         .attrs = {attr_string("mode", "constant"), attr_required("pads", AttrKind::kInts), attr_float("value", 0.0f)},
         .infer = infer_pad,
         .doc = "pad (attributes)"});
  r.add({.name = "Pad",
         .since_version = 11,
         .until_version = 17,
         .min_inputs = 2,
         .max_inputs = 3,
         .attrs = {attr_string("mode", "constant")},
         .infer = infer_pad,
         .doc = "pad (pads as input)"});
  r.add({.name = "Pad",
         .since_version = 18,
         .min_inputs = 2,
         .max_inputs = 4,
         .attrs = {attr_string("mode", "constant")},
         .infer = infer_pad,
         .doc = "pad (pads and axes as inputs; wrap mode from 19)"});
  r.add({.name = "Shape", .since_version = 1, .until_version = 14, .infer = infer_shape, .doc = "the input's shape"});
  r.add({.name = "Shape",
         .since_version = 15,
         .attrs = {attr_int("start", 0), attr_optional("end", AttrKind::kInt)},
         .infer = infer_shape,
         .doc = "a range of the input's shape"});
  r.add({.name = "Size", .since_version = 1, .infer = infer_size, .doc = "the input's element count"});
  r.add({.name = "ConstantOfShape",
         .since_version = 9,
         .attrs = {attr_optional("value", AttrKind::kTensor)},
         .infer = infer_constant_of_shape,
         .doc = "tensor of the given shape filled with value"});
  r.add({.name = "Constant",
         .since_version = 1,
         .until_version = 11,
         .min_inputs = 0,
         .max_inputs = 0,
         .attrs = {attr_optional("value", AttrKind::kTensor), attr_optional("sparse_value", AttrKind::kTensor)},
         .infer = infer_constant,
         .doc = "a constant tensor"});
  r.add(
      {.name = "Constant",
       .since_version = 12,
       .min_inputs = 0,
       .max_inputs = 0,
       .attrs = {attr_optional("value", AttrKind::kTensor), attr_optional("sparse_value", AttrKind::kTensor),
                 attr_optional("value_float", AttrKind::kFloat), attr_optional("value_floats", AttrKind::kFloats),
                 attr_optional("value_int", AttrKind::kInt), attr_optional("value_ints", AttrKind::kInts),
                 attr_optional("value_string", AttrKind::kString), attr_optional("value_strings", AttrKind::kStrings)},
       .infer = infer_constant,
       .doc = "a constant tensor (value or value_float(s)/value_int(s))"});
  r.add({.name = "Identity", .since_version = 1, .infer = infer_identity, .doc = "copy of the input"});
  r.add({.name = "Range",
         .since_version = 11,
         .min_inputs = 3,
         .max_inputs = 3,
         .infer = infer_range,
         .doc = "start + i * delta while below limit"});
  r.add({.name = "Trilu",
         .since_version = 14,
         .min_inputs = 1,
         .max_inputs = 2,
         .attrs = {attr_int("upper", 1)},
         .infer = infer_identity,
         .doc = "upper/lower triangle of the last two dims"});
  r.add({.name = "EyeLike",
         .since_version = 9,
         .attrs = {attr_optional("dtype", AttrKind::kInt), attr_int("k", 0)},
         .infer = infer_eye_like,
         .doc = "2-D identity-like matrix with ones on diagonal k"});
  r.add({.name = "DepthToSpace",
         .since_version = 1,
         .until_version = 10,
         .attrs = {attr_required("blocksize", AttrKind::kInt)},
         .infer = infer_depth_to_space,
         .doc = "move channel blocks into spatial blocks (DCR)"});
  r.add({.name = "DepthToSpace",
         .since_version = 11,
         .attrs = {attr_required("blocksize", AttrKind::kInt), attr_string("mode", "DCR")},
         .infer = infer_depth_to_space,
         .doc = "move channel blocks into spatial blocks (DCR or CRD)"});
  r.add({.name = "SpaceToDepth",
         .since_version = 1,
         .attrs = {attr_required("blocksize", AttrKind::kInt)},
         .infer = infer_space_to_depth,
         .doc = "move spatial blocks into channels"});
  r.add({.name = "Dropout",
         .since_version = 7,
         .until_version = 9,
         .min_outputs = 1,
         .max_outputs = 2,
         .attrs = {attr_float("ratio", 0.5f)},
         .infer = infer_dropout,
         .doc = "identity at inference"});
  r.add({.name = "Dropout",
         .since_version = 10,
         .until_version = 11,
         .min_outputs = 1,
         .max_outputs = 2,
         .attrs = {attr_float("ratio", 0.5f)},
         .infer = infer_dropout,
         .doc = "identity at inference (bool mask)"});
  r.add({.name = "Dropout",
         .since_version = 12,
         .min_inputs = 1,
         .max_inputs = 3,
         .min_outputs = 1,
         .max_outputs = 2,
         .attrs = {attr_optional("seed", AttrKind::kInt)},
         .infer = infer_dropout,
         .doc = "identity unless training_mode (ratio and training_mode as inputs)"});
  register_tensor_index_schemas(r);
  register_resize_schemas(r);
  register_quantize_schemas(r);
}

}  // namespace kiln
