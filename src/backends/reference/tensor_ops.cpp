// Reference kernels of shape and data-movement ops (Reshape, Concat, Slice, Pad, ...); indexing,
// resize and quantization kernels live in sibling files registered from here.
#include <algorithm>
#include <cmath>
#include <random>
#include <type_traits>

#include "backends/reference/kernel.h"
#include "backends/reference/tensor_kernel_util.h"
#include "ops/tensor_rules.h"

namespace kiln::reference {

void register_tensor_index_kernels(KernelRegistry& r);
void register_resize_kernels(KernelRegistry& r);
void register_quantize_kernels(KernelRegistry& r);

namespace {

using namespace tensor_rules;
using namespace tensor_util;

// ---- Reshape, Flatten, Squeeze, Unsqueeze, Transpose

void reshape_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& s = ctx.input(1);
  if (s.rank() != 1) ctx.fail("shape must be 1-D, got shape " + shape_to_string(s.shape()));
  Shape in = shape_from_dims(x.shape());
  Shape out = reshape_shape(ctx, &in, input_ints(ctx, 1), attr_int_or(ctx, "allowzero", 0) != 0);
  ctx.set_output(0, x.reshaped(static_dims(out)));
}

void flatten_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t rank = static_cast<int64_t>(x.rank());
  int64_t axis = ctx.attr_int("axis");
  if (axis < -rank || axis > rank)
    ctx.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  if (axis < 0) axis += rank;
  const int64_t outer = product(x.shape(), 0, axis);
  ctx.set_output(0, x.reshaped({outer, product(x.shape(), axis, x.rank())}));
}

std::vector<int64_t> kernel_squeeze_axes(const KernelContext& ctx) {
  if (ctx.opset() < 13) return ctx.attr_ints("axes");
  return ctx.has_input(1) ? input_ints(ctx, 1) : std::vector<int64_t>{};
}

void squeeze_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  auto out = squeeze_shape(ctx, shape_from_dims(x.shape()), kernel_squeeze_axes(ctx));
  ctx.set_output(0, x.reshaped(static_dims(*out)));
}

void unsqueeze_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Shape out = unsqueeze_shape(ctx, shape_from_dims(x.shape()), kernel_squeeze_axes(ctx));
  ctx.set_output(0, x.reshaped(static_dims(out)));
}

// Copies `x` into a new output whose element i reads x at offsets from for_each_index's strides.
void gather_strided(KernelContext& ctx, const Tensor& x, const std::vector<int64_t>& out_shape,
                    const std::vector<int64_t>& strides, int64_t base) {
  Tensor& y = ctx.allocate_output(0, x.dtype(), out_shape);
  const size_t es = dtype_size(x.dtype());
  const uint8_t* src = bytes(x);
  uint8_t* dst = mutable_bytes(y);
  for_each_index(out_shape, {strides}, [&](int64_t i, const std::vector<int64_t>& off) {
    std::memcpy(dst + i * es, src + (base + off[0]) * es, es);
  });
}

void transpose_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const size_t rank = x.rank();
  std::vector<int64_t> perm = ctx.attr_ints("perm");
  if (perm.empty())
    for (size_t i = 0; i < rank; ++i) perm.push_back(static_cast<int64_t>(rank - 1 - i));
  if (perm.size() != rank)
    ctx.fail("perm has " + std::to_string(perm.size()) + " entries but the input has rank " + std::to_string(rank));
  std::vector<bool> seen(rank, false);
  const std::vector<int64_t> in_strides = dense_strides(x.shape());
  std::vector<int64_t> out_shape(rank), strides(rank);
  for (size_t i = 0; i < rank; ++i) {
    if (perm[i] < 0 || perm[i] >= static_cast<int64_t>(rank) || seen[perm[i]])
      ctx.fail("perm is not a permutation of 0.." + std::to_string(rank - 1));
    seen[perm[i]] = true;
    out_shape[i] = x.dim(perm[i]);
    strides[i] = in_strides[perm[i]];
  }
  gather_strided(ctx, x, out_shape, strides, 0);
}

// ---- Concat, Split, Slice

void concat_kernel(KernelContext& ctx) {
  std::vector<const Tensor*> ins;
  for (size_t i = 0; i < ctx.num_inputs(); ++i)
    if (ctx.has_input(i)) ins.push_back(&ctx.input(i));
  if (ins.empty()) ctx.fail("Concat needs at least one input");
  const Tensor& first = *ins[0];
  const int64_t rank = static_cast<int64_t>(first.rank());
  if (rank == 0) ctx.fail("Concat inputs cannot be scalars");
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), rank);
  std::vector<int64_t> out = first.shape();
  out[axis] = 0;
  for (const Tensor* t : ins) {
    if (t->dtype() != first.dtype())
      ctx.fail("inputs have different dtypes " + std::string(dtype_name(first.dtype())) + " and " +
               std::string(dtype_name(t->dtype())));
    bool ok = static_cast<int64_t>(t->rank()) == rank;
    for (int64_t d = 0; ok && d < rank; ++d) ok = d == axis || t->dim(d) == first.dim(d);
    if (!ok)
      ctx.fail("inputs of shapes " + shape_to_string(first.shape()) + " and " + shape_to_string(t->shape()) +
               " cannot be concatenated on axis " + std::to_string(axis));
    out[axis] += t->dim(axis);
  }
  Tensor& y = ctx.allocate_output(0, first.dtype(), out);
  const size_t es = dtype_size(first.dtype());
  const int64_t outer = product(out, 0, axis), inner = product(out, axis + 1, out.size());
  uint8_t* dst = mutable_bytes(y);
  for (int64_t o = 0; o < outer; ++o) {
    for (const Tensor* t : ins) {
      const int64_t chunk = t->dim(axis) * inner;
      copy_elems(dst, bytes(*t) + o * chunk * es, chunk, es);
      dst += chunk * es;
    }
  }
}

void split_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() == 0) ctx.fail("Split input cannot be a scalar");
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), static_cast<int64_t>(x.rank()));
  std::optional<std::vector<int64_t>> split;
  if (ctx.opset() < 13) {
    if (!ctx.attr_ints("split").empty()) split = ctx.attr_ints("split");
  } else {
    split = optional_ints(ctx, 1);
    if (split && split->empty()) split.reset();  // an empty split means "not given"
  }
  const size_t n = ctx.num_outputs();
  const std::vector<int64_t> sizes = split_sizes(ctx, x.dim(axis), n, split);
  const size_t es = dtype_size(x.dtype());
  const int64_t outer = product(x.shape(), 0, axis), inner = product(x.shape(), axis + 1, x.rank());
  const int64_t dim = x.dim(axis);
  int64_t offset = 0;
  for (size_t k = 0; k < n; ++k) {
    std::vector<int64_t> shape = x.shape();
    shape[axis] = sizes[k];
    Tensor& y = ctx.allocate_output(k, x.dtype(), shape);
    const int64_t chunk = sizes[k] * inner;
    for (int64_t o = 0; o < outer; ++o)
      copy_elems(mutable_bytes(y) + o * chunk * es, bytes(x) + ((o * dim + offset) * inner) * es, chunk, es);
    offset += sizes[k];
  }
}

void slice_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t rank = static_cast<int64_t>(x.rank());
  std::vector<int64_t> starts, ends;
  std::optional<std::vector<int64_t>> axes, steps;
  if (ctx.opset() < 10) {
    starts = ctx.attr_ints("starts");
    ends = ctx.attr_ints("ends");
    if (ctx.has_attr("axes")) axes = ctx.attr_ints("axes");
  } else {
    starts = input_ints(ctx, 1);
    ends = input_ints(ctx, 2);
    axes = optional_ints(ctx, 3);
    steps = optional_ints(ctx, 4);
  }
  std::vector<int64_t> out = x.shape(), first(rank, 0), step(rank, 1);
  for (const SliceAxis& s : slice_axes(ctx, rank, starts, ends, axes, steps)) {
    auto [f, count] = slice_range(x.dim(s.axis), s.start, s.end, s.step);
    out[s.axis] = count;
    first[s.axis] = f;
    step[s.axis] = s.step;
  }
  std::vector<int64_t> strides = dense_strides(x.shape());
  int64_t base = 0;
  for (int64_t d = 0; d < rank; ++d) {
    base += first[d] * strides[d];
    strides[d] *= step[d];
  }
  gather_strided(ctx, x, out, strides, base);
}

// ---- Expand, Tile, Pad

void expand_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  std::vector<int64_t> shape = input_ints(ctx, 1);
  for (int64_t d : shape)
    if (d < 0) ctx.fail("Expand shape has a negative dimension " + std::to_string(d));
  std::vector<int64_t> out = broadcast_dims(ctx, {x.shape(), shape});
  gather_strided(ctx, x, out, broadcast_strides(x.shape(), out), 0);
}

void tile_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  std::vector<int64_t> repeats = input_ints(ctx, 1);
  if (repeats.size() != x.rank())
    ctx.fail("repeats has " + std::to_string(repeats.size()) + " values but the input has rank " +
             std::to_string(x.rank()));
  std::vector<int64_t> out = x.shape();
  for (size_t d = 0; d < out.size(); ++d) {
    if (repeats[d] < 0) ctx.fail("repeats has a negative value " + std::to_string(repeats[d]));
    out[d] *= repeats[d];
  }
  Tensor& y = ctx.allocate_output(0, x.dtype(), out);
  const size_t es = dtype_size(x.dtype());
  const std::vector<int64_t> strides = dense_strides(x.shape());
  const uint8_t* src = bytes(x);
  uint8_t* dst = mutable_bytes(y);
  for_each_multi_index(out, [&](int64_t i, const std::vector<int64_t>& idx) {
    int64_t off = 0;
    for (size_t d = 0; d < idx.size(); ++d) off += (idx[d] % x.dim(d)) * strides[d];
    std::memcpy(dst + i * es, src + off * es, es);
  });
}

int64_t reflect_index(int64_t c, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  c %= period;
  if (c < 0) c += period;
  return c >= n ? period - c : c;
}

void pad_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t rank = static_cast<int64_t>(x.rank());
  const std::string& mode = ctx.attr_string("mode");
  if (mode != "constant" && mode != "reflect" && mode != "edge" && !(mode == "wrap" && ctx.opset() >= 19))
    ctx.fail("unsupported pad mode '" + mode + "'");
  std::vector<int64_t> pads;
  std::optional<std::vector<int64_t>> axes;
  if (ctx.opset() < 11) {
    pads = ctx.attr_ints("pads");
  } else {
    pads = input_ints(ctx, 1);
    axes = optional_ints(ctx, 3);
  }
  const std::vector<int64_t> p = pad_amounts(ctx, rank, pads, axes);
  const size_t es = dtype_size(x.dtype());
  // The padding value as raw bytes of x's dtype.
  std::vector<uint8_t> value(std::max<size_t>(es, 1), 0);
  if (ctx.opset() < 11) {
    const float v = ctx.attr_float("value");
    dispatch_dtype(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T t = static_cast<T>(v);
      std::memcpy(value.data(), &t, sizeof(T));
    });
  } else if (ctx.has_input(2)) {
    const Tensor& c = ctx.input(2);
    if (c.dtype() != x.dtype())
      ctx.fail("constant_value has dtype " + std::string(dtype_name(c.dtype())) + " but the input has " +
               std::string(dtype_name(x.dtype())));
    if (c.numel() != 1) ctx.fail("constant_value must have exactly one element");
    std::memcpy(value.data(), c.raw(), es);
  }
  std::vector<int64_t> out = x.shape();
  for (int64_t d = 0; d < rank; ++d) {
    out[d] += p[d] + p[rank + d];
    if (out[d] < 0)
      ctx.fail("pads remove more than dimension " + std::to_string(d) + " of size " + std::to_string(x.dim(d)));
    if (mode != "constant" && x.dim(d) == 0 && out[d] > 0)
      ctx.fail("cannot pad an empty dimension " + std::to_string(d) + " in " + mode + " mode");
  }
  Tensor& y = ctx.allocate_output(0, x.dtype(), out);
  const std::vector<int64_t> strides = dense_strides(x.shape());
  const uint8_t* src = bytes(x);
  uint8_t* dst = mutable_bytes(y);
  for_each_multi_index(out, [&](int64_t i, const std::vector<int64_t>& idx) {
    int64_t off = 0;
    bool outside = false;
    for (int64_t d = 0; d < rank && !outside; ++d) {
      const int64_t n = x.dim(d);
      int64_t c = idx[d] - p[d];
      if (c < 0 || c >= n) {
        if (mode == "constant")
          outside = true;
        else if (mode == "edge")
          c = std::clamp<int64_t>(c, 0, n - 1);
        else if (mode == "reflect")
          c = reflect_index(c, n);
        else
          c = ((c % n) + n) % n;  // wrap
      }
      off += c * strides[d];
    }
    std::memcpy(dst + i * es, outside ? value.data() : src + off * es, es);
  });
}

// ---- Shape, Size, ConstantOfShape, Constant, Identity, Range, Trilu, EyeLike

void shape_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  auto [start, end] = shape_range(ctx, static_cast<int64_t>(x.rank()));
  std::vector<int64_t> dims(x.shape().begin() + start, x.shape().begin() + end);
  ctx.set_output(0, Tensor::from_vector<int64_t>({static_cast<int64_t>(dims.size())}, dims));
}

void size_kernel(KernelContext& ctx) { ctx.set_output(0, Tensor::scalar<int64_t>(ctx.input(0).numel())); }

void constant_of_shape_kernel(KernelContext& ctx) {
  std::vector<int64_t> shape = input_ints(ctx, 0);
  for (int64_t d : shape)
    if (d < 0) ctx.fail("shape has a negative dimension " + std::to_string(d));
  Tensor value = Tensor::scalar<float>(0.0f);
  if (ctx.has_attr("value")) {
    value = ctx.attr_tensor("value");
    if (value.numel() != 1) ctx.fail("value must have exactly one element, got " + std::to_string(value.numel()));
  }
  Tensor& y = ctx.allocate_output(0, value.dtype(), shape);
  const size_t es = dtype_size(value.dtype());
  uint8_t* dst = mutable_bytes(y);
  for (int64_t i = 0; i < y.numel(); ++i) std::memcpy(dst + i * es, value.raw(), es);
}

void constant_kernel(KernelContext& ctx) {
  auto has = [&](const char* a) { return ctx.schema().find_attr(a) && ctx.has_attr(a); };
  if (has("value")) {
    ctx.set_output(0, ctx.attr_tensor("value"));
  } else if (has("value_float")) {
    ctx.set_output(0, Tensor::scalar<float>(ctx.attr_float("value_float")));
  } else if (has("value_floats")) {
    const auto& v = ctx.attr_floats("value_floats");
    ctx.set_output(0, Tensor::from_vector<float>({static_cast<int64_t>(v.size())}, v));
  } else if (has("value_int")) {
    ctx.set_output(0, Tensor::scalar<int64_t>(ctx.attr_int("value_int")));
  } else if (has("value_ints")) {
    const auto& v = ctx.attr_ints("value_ints");
    ctx.set_output(0, Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v));
  } else if (has("value_string") || has("value_strings") || has("sparse_value")) {
    ctx.unsupported("string and sparse constants are not supported");
  } else {
    ctx.fail("a value attribute is required");
  }
}

void identity_kernel(KernelContext& ctx) { ctx.set_output(0, ctx.input(0)); }

void range_kernel(KernelContext& ctx) {
  const Tensor& start = ctx.input(0);
  for (size_t i = 1; i < 3; ++i)
    if (ctx.input(i).dtype() != start.dtype()) ctx.fail("start, limit and delta must have the same dtype");
  if (start.dtype() == DType::kBool) ctx.fail("Range does not support bool");
  const double s = input_scalar(ctx, 0, "start"), l = input_scalar(ctx, 1, "limit"), d = input_scalar(ctx, 2, "delta");
  const int64_t n = range_count(ctx, s, l, d);
  Tensor& y = ctx.allocate_output(0, start.dtype(), {n});
  dispatch_dtype(start.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // Floats are computed in double and rounded once (as numpy's arange does); integers exactly.
    using C = std::conditional_t<std::is_floating_point_v<compute_t<T>>, double, int64_t>;
    const C s0 = static_cast<C>(static_cast<compute_t<T>>(start.data<T>()[0]));
    const C d0 = static_cast<C>(static_cast<compute_t<T>>(ctx.input(2).data<T>()[0]));
    T* out = y.mutable_data<T>();
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<compute_t<T>>(s0 + static_cast<C>(i) * d0));
  });
}

void trilu_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() < 2) ctx.fail("Trilu needs an input of rank >= 2, got shape " + shape_to_string(x.shape()));
  int64_t k = 0;
  if (ctx.has_input(1)) {
    if (ctx.input(1).dtype() != DType::kI64) ctx.fail("k must be i64");
    k = static_cast<int64_t>(input_scalar(ctx, 1, "k"));
  }
  const bool upper = ctx.attr_int("upper") != 0;
  Tensor y = x.clone();
  const int64_t rows = x.dim(x.rank() - 2), cols = x.dim(x.rank() - 1);
  const int64_t mats = rows * cols == 0 ? 0 : x.numel() / (rows * cols);
  const size_t es = dtype_size(x.dtype());
  uint8_t* dst = mutable_bytes(y);
  for (int64_t m = 0; m < mats; ++m)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        const bool keep = upper ? j - i >= k : j - i <= k;
        if (!keep) std::memset(dst + ((m * rows + i) * cols + j) * es, 0, es);
      }
  ctx.set_output(0, y);
}

void eye_like_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() != 2) ctx.fail("EyeLike needs a 2-D input, got shape " + shape_to_string(x.shape()));
  DType dt = x.dtype();
  if (auto code = ctx.attr_int_opt("dtype")) {
    dt = dtype_from_onnx(static_cast<int>(*code));
    if (dt == DType::kUndefined) ctx.fail("unknown dtype " + std::to_string(*code));
  }
  const int64_t k = ctx.attr_int("k");
  Tensor& y = ctx.allocate_output(0, dt, x.shape());
  dispatch_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    T* out = y.mutable_data<T>();
    for (int64_t i = 0; i < x.dim(0); ++i) {
      const int64_t j = i + k;
      if (j >= 0 && j < x.dim(1)) out[i * x.dim(1) + j] = static_cast<T>(1);
    }
  });
}

// ---- DepthToSpace, SpaceToDepth

void depth_to_space_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() != 4) ctx.fail("input must be 4-D, got shape " + shape_to_string(x.shape()));
  const int64_t b = ctx.attr_int("blocksize");
  if (b <= 0 || b > (1 << 16)) ctx.fail("blocksize must be in [1, 65536], got " + std::to_string(b));
  const std::string mode = attr_string_or(ctx, "mode", "DCR");
  if (mode != "DCR" && mode != "CRD") ctx.fail("unknown mode '" + mode + "'");
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
  if (c % (b * b) != 0)
    ctx.fail("channels " + std::to_string(c) + " are not divisible by blocksize^2 = " + std::to_string(b * b));
  const int64_t oc = c / (b * b);
  Tensor& y = ctx.allocate_output(0, x.dtype(), {n, oc, h * b, w * b});
  const size_t es = dtype_size(x.dtype());
  const uint8_t* src = bytes(x);
  uint8_t* dst = mutable_bytes(y);
  int64_t o = 0;
  for (int64_t in = 0; in < n; ++in)
    for (int64_t ch = 0; ch < oc; ++ch)
      for (int64_t yy = 0; yy < h * b; ++yy)
        for (int64_t xx = 0; xx < w * b; ++xx, ++o) {
          const int64_t i = yy % b, j = xx % b;
          const int64_t src_c = mode == "DCR" ? (i * b + j) * oc + ch : ch * b * b + i * b + j;
          std::memcpy(dst + o * es, src + (((in * c + src_c) * h + yy / b) * w + xx / b) * es, es);
        }
}

void space_to_depth_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.rank() != 4) ctx.fail("input must be 4-D, got shape " + shape_to_string(x.shape()));
  const int64_t b = ctx.attr_int("blocksize");
  if (b <= 0 || b > (1 << 16)) ctx.fail("blocksize must be in [1, 65536], got " + std::to_string(b));
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
  if (h % b != 0 || w % b != 0)
    ctx.fail("spatial dims " + std::to_string(h) + "x" + std::to_string(w) + " are not divisible by blocksize " +
             std::to_string(b));
  const int64_t oh = h / b, ow = w / b;
  Tensor& y = ctx.allocate_output(0, x.dtype(), {n, c * b * b, oh, ow});
  const size_t es = dtype_size(x.dtype());
  const uint8_t* src = bytes(x);
  uint8_t* dst = mutable_bytes(y);
  int64_t o = 0;
  for (int64_t in = 0; in < n; ++in)
    for (int64_t oc = 0; oc < c * b * b; ++oc)
      for (int64_t yy = 0; yy < oh; ++yy)
        for (int64_t xx = 0; xx < ow; ++xx, ++o) {
          const int64_t block = oc / c, ch = oc % c;  // channel = (i * b + j) * C + ch
          const int64_t i = block / b, j = block % b;
          std::memcpy(dst + o * es, src + (((in * c + ch) * h + yy * b + i) * w + xx * b + j) * es, es);
        }
}

// ---- Dropout

void dropout_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (!dtype_is_float(x.dtype())) ctx.fail("Dropout needs a float input, got " + std::string(dtype_name(x.dtype())));
  bool training = false;
  double ratio = 0.5;
  if (ctx.opset() >= 12) {
    if (ctx.has_input(1)) ratio = input_scalar(ctx, 1, "ratio");
    if (ctx.has_input(2)) {
      if (ctx.input(2).dtype() != DType::kBool) ctx.fail("training_mode must be bool");
      training = input_scalar(ctx, 2, "training_mode") != 0;
    }
  } else {
    ratio = ctx.attr_float("ratio");
  }
  if (training && !(ratio >= 0 && ratio < 1)) ctx.fail("ratio must be in [0, 1), got " + std::to_string(ratio));
  if (training && ratio != 0) {
    // ONNX leaves the random stream unspecified; this follows the ONNX reference implementation
    // (numpy RandomState(seed).uniform, i.e. MT19937 with 53-bit doubles), seed 0 when absent,
    // so that the result is deterministic and matches the backend test data.
    const int64_t seed = ctx.has_attr("seed") ? ctx.attr_int("seed") : 0;
    std::mt19937 gen(static_cast<uint32_t>(seed));
    std::vector<bool> keep(static_cast<size_t>(x.numel()));
    for (size_t i = 0; i < keep.size(); ++i) {
      const double a = static_cast<double>(gen() >> 5), b = static_cast<double>(gen() >> 6);
      keep[i] = (a * 67108864.0 + b) / 9007199254740992.0 >= ratio;
    }
    const float scale = static_cast<float>(1.0 / (1.0 - ratio));
    Tensor& y = ctx.allocate_output(0, x.dtype(), x.shape());
    dispatch_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      const T* px = x.data<T>();
      T* py = y.mutable_data<T>();
      for (size_t i = 0; i < keep.size(); ++i)
        py[i] = static_cast<T>(keep[i] ? static_cast<float>(px[i]) * scale : 0.0f);
    });
    if (ctx.has_output(1)) {
      bool* m = ctx.allocate_output(1, DType::kBool, x.shape()).mutable_data<bool>();
      for (size_t i = 0; i < keep.size(); ++i) m[i] = keep[i];
    }
    return;
  }
  ctx.set_output(0, x);
  if (ctx.has_output(1)) {
    const DType mt = ctx.opset() < 10 ? x.dtype() : DType::kBool;
    Tensor& m = ctx.allocate_output(1, mt, x.shape());
    dispatch_dtype(mt, [&](auto tag) {
      using T = decltype(tag);
      T* p = m.mutable_data<T>();
      for (int64_t i = 0; i < m.numel(); ++i) p[i] = static_cast<T>(1);
    });
  }
}

}  // namespace

void register_tensor_kernels(KernelRegistry& r) {
  r.add("", "Reshape", reshape_kernel);
  r.add("", "Flatten", flatten_kernel);
  r.add("", "Squeeze", squeeze_kernel);
  r.add("", "Unsqueeze", unsqueeze_kernel);
  r.add("", "Transpose", transpose_kernel);
  r.add("", "Concat", concat_kernel);
  r.add("", "Split", split_kernel);
  r.add("", "Slice", slice_kernel);
  r.add("", "Expand", expand_kernel);
  r.add("", "Tile", tile_kernel);
  r.add("", "Pad", pad_kernel);
  r.add("", "Shape", shape_kernel);
  r.add("", "Size", size_kernel);
  r.add("", "ConstantOfShape", constant_of_shape_kernel);
  r.add("", "Constant", constant_kernel);
  r.add("", "Identity", identity_kernel);
  r.add("", "Range", range_kernel);
  r.add("", "Trilu", trilu_kernel);
  r.add("", "EyeLike", eye_like_kernel);
  r.add("", "DepthToSpace", depth_to_space_kernel);
  r.add("", "SpaceToDepth", space_to_depth_kernel);
  r.add("", "Dropout", dropout_kernel);
  register_tensor_index_kernels(r);
  register_resize_kernels(r);
  register_quantize_kernels(r);
}

}  // namespace kiln::reference
