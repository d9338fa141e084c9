// Reference kernels of the indexing ops: Gather*, Scatter*, OneHot, NonZero, Compress, ReverseSequence.
#include <cmath>

#include "backends/reference/kernel.h"
#include "backends/reference/tensor_kernel_util.h"
#include "ops/tensor_rules.h"

namespace kiln::reference {

namespace {

using namespace tensor_rules;
using namespace tensor_util;

std::vector<int64_t> index_values(const KernelContext& ctx, size_t i, bool allow_i32 = true) {
  const Tensor& t = ctx.input(i);
  if (t.dtype() != DType::kI64 && !(allow_i32 && t.dtype() == DType::kI32))
    ctx.fail("indices must be " + std::string(allow_i32 ? "i32 or i64" : "i64") + ", got " +
             std::string(dtype_name(t.dtype())));
  return t.to_int64_vector();
}

// ---- Gather, GatherElements, GatherND

void gather_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  if (data.rank() == 0) ctx.fail("Gather needs data of rank >= 1");
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), static_cast<int64_t>(data.rank()));
  const std::vector<int64_t> idx = index_values(ctx, 1);
  std::vector<int64_t> out(data.shape().begin(), data.shape().begin() + axis);
  out.insert(out.end(), indices.shape().begin(), indices.shape().end());
  out.insert(out.end(), data.shape().begin() + axis + 1, data.shape().end());
  Tensor& y = ctx.allocate_output(0, data.dtype(), out);
  const size_t es = dtype_size(data.dtype());
  const int64_t outer = product(data.shape(), 0, axis), inner = product(data.shape(), axis + 1, data.rank());
  const int64_t dim = data.dim(axis), n = static_cast<int64_t>(idx.size());
  std::vector<int64_t> norm(idx.size());
  for (int64_t j = 0; j < n; ++j) norm[j] = checked_index(ctx, idx[j], dim, "Gather index");
  uint8_t* dst = mutable_bytes(y);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < n; ++j)
      copy_elems(dst + ((o * n + j) * inner) * es, bytes(data) + ((o * dim + norm[j]) * inner) * es, inner, es);
}

// Checks data/indices/updates shapes shared by GatherElements and ScatterElements: equal ranks,
// and indices no larger than data on the other axes (so every position is in bounds).
int64_t check_elements_shapes(const KernelContext& ctx, const Tensor& data, const Tensor& indices) {
  if (data.rank() != indices.rank() || data.rank() == 0)
    ctx.fail("data " + shape_to_string(data.shape()) + " and indices " + shape_to_string(indices.shape()) +
             " must have the same rank >= 1");
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), static_cast<int64_t>(data.rank()));
  for (size_t d = 0; d < data.rank(); ++d)
    if (static_cast<int64_t>(d) != axis && indices.dim(d) > data.dim(d))
      ctx.fail("indices shape " + shape_to_string(indices.shape()) + " exceeds data shape " +
               shape_to_string(data.shape()) + " on axis " + std::to_string(d));
  return axis;
}

void gather_elements_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  const int64_t axis = check_elements_shapes(ctx, data, indices);
  const std::vector<int64_t> idx = index_values(ctx, 1);
  Tensor& y = ctx.allocate_output(0, data.dtype(), indices.shape());
  const size_t es = dtype_size(data.dtype());
  const std::vector<int64_t> strides = dense_strides(data.shape());
  const uint8_t* src = bytes(data);
  uint8_t* dst = mutable_bytes(y);
  for_each_multi_index(indices.shape(), [&](int64_t i, const std::vector<int64_t>& pos) {
    int64_t off = 0;
    for (size_t d = 0; d < pos.size(); ++d)
      off +=
          (static_cast<int64_t>(d) == axis ? checked_index(ctx, idx[i], data.dim(d), "GatherElements index") : pos[d]) *
          strides[d];
    std::memcpy(dst + i * es, src + off * es, es);
  });
}

// Shared by GatherND and ScatterND: element offsets into data of each index tuple.
struct NdPlan {
  std::vector<int64_t> offsets;  // per tuple, in elements of data
  int64_t slice = 1;             // elements per gathered slice
};

NdPlan plan_nd(const KernelContext& ctx, const Tensor& data, const Tensor& indices, int64_t batch_dims) {
  const int64_t r = static_cast<int64_t>(data.rank()), q = static_cast<int64_t>(indices.rank());
  if (q < 1) ctx.fail("indices must have rank >= 1");
  const int64_t k = indices.dim(q - 1);
  if (batch_dims < 0 || batch_dims >= std::min(r, q))
    ctx.fail("batch_dims " + std::to_string(batch_dims) + " is out of range");
  if (k < 1 || batch_dims + k > r)
    ctx.fail("the last indices dimension " + std::to_string(k) + " does not fit data " + shape_to_string(data.shape()) +
             " with batch_dims " + std::to_string(batch_dims));
  for (int64_t d = 0; d < batch_dims; ++d)
    if (indices.dim(d) != data.dim(d))
      ctx.fail("batch dims of data " + shape_to_string(data.shape()) + " and indices " +
               shape_to_string(indices.shape()) + " differ");
  const std::vector<int64_t> idx = index_values(ctx, 1, false);
  NdPlan plan;
  plan.slice = product(data.shape(), batch_dims + k, r);
  const std::vector<int64_t> strides = dense_strides(data.shape());
  const int64_t batches = product(data.shape(), 0, batch_dims);
  const int64_t batch_stride = product(data.shape(), batch_dims, r);
  const int64_t tuples = batches == 0 ? 0 : static_cast<int64_t>(idx.size()) / k / batches;  // tuples per batch
  for (int64_t b = 0; b < batches; ++b)
    for (int64_t t = 0; t < tuples; ++t) {
      int64_t off = b * batch_stride;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t v = idx[(b * tuples + t) * k + j];
        off += checked_index(ctx, v, data.dim(batch_dims + j), "GatherND/ScatterND index") * strides[batch_dims + j];
      }
      plan.offsets.push_back(off);
    }
  return plan;
}

void gather_nd_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  const int64_t b = attr_int_or(ctx, "batch_dims", 0);
  NdPlan plan = plan_nd(ctx, data, indices, b);
  const int64_t k = indices.dim(indices.rank() - 1);
  std::vector<int64_t> out(indices.shape().begin(), indices.shape().end() - 1);
  out.insert(out.end(), data.shape().begin() + b + k, data.shape().end());
  Tensor& y = ctx.allocate_output(0, data.dtype(), out);
  const size_t es = dtype_size(data.dtype());
  for (size_t t = 0; t < plan.offsets.size(); ++t)
    copy_elems(mutable_bytes(y) + t * plan.slice * es, bytes(data) + plan.offsets[t] * es, plan.slice, es);
}

// ---- Scatter, ScatterElements, ScatterND

std::string scatter_reduction(const KernelContext& ctx) {
  const std::string red = attr_string_or(ctx, "reduction", "none");
  const bool ok =
      red == "none" || red == "add" || red == "mul" || ((red == "max" || red == "min") && ctx.opset() >= 18);
  if (!ok) ctx.fail("unsupported reduction '" + red + "'");
  return red;
}

// Applies updates[u] to out[o] for each (o, u) pair produced by `visit`.
template <typename Visit>
void scatter_apply(KernelContext& ctx, const Tensor& data, const Tensor& updates, const std::string& red, Visit visit) {
  if (updates.dtype() != data.dtype())
    ctx.fail("updates dtype " + std::string(dtype_name(updates.dtype())) + " differs from data dtype " +
             std::string(dtype_name(data.dtype())));
  Tensor y = data.clone();
  dispatch_dtype(data.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    T* out = y.mutable_data<T>();
    const T* upd = updates.data<T>();
    visit([&](int64_t o, int64_t u) {
      const C a = static_cast<C>(out[o]), b = static_cast<C>(upd[u]);
      if (red == "none")
        out[o] = upd[u];
      else if (red == "add")
        out[o] = static_cast<T>(a + b);
      else if (red == "mul")
        out[o] = static_cast<T>(a * b);
      else if (red == "max")
        out[o] = static_cast<T>(a > b ? a : b);
      else
        out[o] = static_cast<T>(a < b ? a : b);
    });
  });
  ctx.set_output(0, y);
}

void scatter_elements_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  const Tensor& updates = ctx.input(2);
  const int64_t axis = check_elements_shapes(ctx, data, indices);
  if (updates.shape() != indices.shape())
    ctx.fail("updates shape " + shape_to_string(updates.shape()) + " differs from indices shape " +
             shape_to_string(indices.shape()));
  const std::string red = scatter_reduction(ctx);
  const std::vector<int64_t> idx = index_values(ctx, 1);
  const std::vector<int64_t> strides = dense_strides(data.shape());
  scatter_apply(ctx, data, updates, red, [&](auto apply) {
    for_each_multi_index(indices.shape(), [&](int64_t i, const std::vector<int64_t>& pos) {
      int64_t off = 0;
      for (size_t d = 0; d < pos.size(); ++d)
        off += (static_cast<int64_t>(d) == axis ? checked_index(ctx, idx[i], data.dim(d), "ScatterElements index")
                                                : pos[d]) *
               strides[d];
      apply(off, i);
    });
  });
}

void scatter_nd_kernel(KernelContext& ctx) {
  const Tensor& data = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  const Tensor& updates = ctx.input(2);
  NdPlan plan = plan_nd(ctx, data, indices, 0);
  const int64_t k = indices.dim(indices.rank() - 1);
  std::vector<int64_t> expected(indices.shape().begin(), indices.shape().end() - 1);
  expected.insert(expected.end(), data.shape().begin() + k, data.shape().end());
  if (updates.shape() != expected)
    ctx.fail("updates shape " + shape_to_string(updates.shape()) + " should be " + shape_to_string(expected));
  const std::string red = scatter_reduction(ctx);
  scatter_apply(ctx, data, updates, red, [&](auto apply) {
    for (size_t t = 0; t < plan.offsets.size(); ++t)
      for (int64_t e = 0; e < plan.slice; ++e) apply(plan.offsets[t] + e, static_cast<int64_t>(t) * plan.slice + e);
  });
}

// ---- OneHot, NonZero, Compress, ReverseSequence

void onehot_kernel(KernelContext& ctx) {
  const Tensor& indices = ctx.input(0);
  const Tensor& values = ctx.input(2);
  const double depth_d = input_scalar(ctx, 1, "depth");
  if (!(depth_d >= 1) || depth_d > 1e9) ctx.fail("depth must be positive, got " + std::to_string(depth_d));
  const int64_t depth = static_cast<int64_t>(depth_d);
  if (values.numel() != 2) ctx.fail("values must have exactly two elements [off, on]");
  const int64_t out_rank = static_cast<int64_t>(indices.rank()) + 1;
  const int64_t axis = normalize_axis(ctx, ctx.attr_int("axis"), out_rank);
  std::vector<int64_t> out = indices.shape();
  out.insert(out.begin() + axis, depth);
  Tensor& y = ctx.allocate_output(0, values.dtype(), out);
  const size_t es = dtype_size(values.dtype());
  const uint8_t* off_value = bytes(values);
  const uint8_t* on_value = bytes(values) + es;
  uint8_t* dst = mutable_bytes(y);
  for (int64_t i = 0; i < y.numel(); ++i) std::memcpy(dst + i * es, off_value, es);
  const std::vector<double> idx = indices.to_double_vector();
  const int64_t inner = product(indices.shape(), axis, indices.rank());
  for (size_t i = 0; i < idx.size(); ++i) {
    if (!std::isfinite(idx[i])) continue;
    int64_t v = static_cast<int64_t>(idx[i]);
    if (v < 0) v += depth;
    if (v < 0 || v >= depth) continue;  // out-of-range indices give an all-off row
    const int64_t o = static_cast<int64_t>(i) / inner, in = static_cast<int64_t>(i) % inner;
    std::memcpy(dst + ((o * depth + v) * inner + in) * es, on_value, es);
  }
}

void nonzero_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  std::vector<bool> nz(static_cast<size_t>(x.numel()));
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* p = x.data<T>();
    for (int64_t i = 0; i < x.numel(); ++i) nz[i] = static_cast<C>(p[i]) != C(0);
  });
  int64_t count = 0;
  for (bool b : nz) count += b ? 1 : 0;
  const int64_t rank = static_cast<int64_t>(x.rank());
  // A scalar counts as a 1-element vector, as numpy and ONNX Runtime treat it.
  const std::vector<int64_t> shape = rank == 0 ? std::vector<int64_t>{1} : x.shape();
  Tensor& y = ctx.allocate_output(0, DType::kI64, {static_cast<int64_t>(shape.size()), count});
  int64_t* out = y.mutable_data<int64_t>();
  int64_t j = 0;
  for_each_multi_index(shape, [&](int64_t i, const std::vector<int64_t>& pos) {
    if (!nz[i]) return;
    for (size_t d = 0; d < pos.size(); ++d) out[d * count + j] = pos[d];
    ++j;
  });
}

void compress_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& cond = ctx.input(1);
  if (cond.dtype() != DType::kBool || cond.rank() != 1)
    ctx.fail("condition must be a 1-D bool tensor, got " + std::string(dtype_name(cond.dtype())) + "[" +
             shape_to_string(cond.shape()) + "]");
  auto axis_opt = ctx.attr_int_opt("axis");
  const bool flat = !axis_opt;
  const std::vector<int64_t> shape = flat ? std::vector<int64_t>{x.numel()} : x.shape();
  const int64_t axis = flat ? 0 : normalize_axis(ctx, *axis_opt, static_cast<int64_t>(x.rank()));
  const int64_t dim = shape[axis];
  std::vector<int64_t> picked;
  const bool* c = cond.data<bool>();
  for (int64_t i = 0; i < cond.numel(); ++i) {
    if (!c[i]) continue;
    if (i >= dim)
      ctx.fail("condition selects index " + std::to_string(i) + " beyond the dimension of size " + std::to_string(dim));
    picked.push_back(i);
  }
  std::vector<int64_t> out = shape;
  out[axis] = static_cast<int64_t>(picked.size());
  Tensor& y = ctx.allocate_output(0, x.dtype(), out);
  const size_t es = dtype_size(x.dtype());
  const int64_t outer = product(shape, 0, axis), inner = product(shape, axis + 1, shape.size());
  uint8_t* dst = mutable_bytes(y);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t p : picked) {
      copy_elems(dst, bytes(x) + ((o * dim + p) * inner) * es, inner, es);
      dst += inner * es;
    }
}

void reverse_sequence_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t batch_axis = ctx.attr_int("batch_axis"), time_axis = ctx.attr_int("time_axis");
  if (!((batch_axis == 0 && time_axis == 1) || (batch_axis == 1 && time_axis == 0)))
    ctx.fail("batch_axis and time_axis must be 0 and 1 in some order");
  if (x.rank() < 2) ctx.fail("input must have rank >= 2, got shape " + shape_to_string(x.shape()));
  const std::vector<int64_t> lens = input_ints(ctx, 1);
  const int64_t batch = x.dim(batch_axis), steps = x.dim(time_axis);
  if (static_cast<int64_t>(lens.size()) != batch)
    ctx.fail("sequence_lens has " + std::to_string(lens.size()) + " values but the batch is " + std::to_string(batch));
  Tensor y = x.clone();
  const size_t es = dtype_size(x.dtype());
  const int64_t inner = product(x.shape(), 2, x.rank());
  auto pos = [&](int64_t b, int64_t t) { return (time_axis == 0 ? t * batch + b : b * steps + t) * inner; };
  for (int64_t b = 0; b < batch; ++b) {
    if (lens[b] < 0 || lens[b] > steps)
      ctx.fail("sequence length " + std::to_string(lens[b]) + " is out of range [0, " + std::to_string(steps) + "]");
    for (int64_t t = 0; t < lens[b]; ++t)
      copy_elems(mutable_bytes(y) + pos(b, t) * es, bytes(x) + pos(b, lens[b] - 1 - t) * es, inner, es);
  }
  ctx.set_output(0, y);
}

}  // namespace

void register_tensor_index_kernels(KernelRegistry& r) {
  r.add("", "Gather", gather_kernel);
  r.add("", "GatherElements", gather_elements_kernel);
  r.add("", "GatherND", gather_nd_kernel);
  r.add("", "Scatter", scatter_elements_kernel);
  r.add("", "ScatterElements", scatter_elements_kernel);
  r.add("", "ScatterND", scatter_nd_kernel);
  r.add("", "OneHot", onehot_kernel);
  r.add("", "NonZero", nonzero_kernel);
  r.add("", "Compress", compress_kernel);
  r.add("", "ReverseSequence", reverse_sequence_kernel);
}

}  // namespace kiln::reference
