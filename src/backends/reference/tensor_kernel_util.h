// Helpers shared by the reference kernels of the tensor ops (tensor_ops.cpp and its siblings):
// shape-like input reading, index checks and dtype-agnostic element copies.
#pragma once
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "backends/reference/kernel.h"

namespace kiln::reference::tensor_util {

// An integer input (shape, axes, pads, ...) read as int64 values.
inline std::vector<int64_t> input_ints(const KernelContext& ctx, size_t i) {
  const Tensor& t = ctx.input(i);
  if (!dtype_is_integer(t.dtype()))
    ctx.fail("input " + std::to_string(i) + " must be an integer tensor, got " + std::string(dtype_name(t.dtype())));
  return t.to_int64_vector();
}
inline std::optional<std::vector<int64_t>> optional_ints(const KernelContext& ctx, size_t i) {
  if (!ctx.has_input(i)) return std::nullopt;
  return input_ints(ctx, i);
}

// A scalar (or one-element) input read as a double.
inline double input_scalar(const KernelContext& ctx, size_t i, const char* what) {
  const Tensor& t = ctx.input(i);
  if (t.numel() != 1)
    ctx.fail(std::string(what) + " must have exactly one element, got shape " + shape_to_string(t.shape()));
  return t.to_double_vector()[0];
}

// Normalises a possibly negative index into [0, dim), failing clearly when it is out of range.
inline int64_t checked_index(const NodeView& v, int64_t idx, int64_t dim, const char* what = "index") {
  if (idx < -dim || idx >= dim)
    v.fail(std::string(what) + " " + std::to_string(idx) + " is out of range for a dimension of size " +
           std::to_string(dim));
  return idx < 0 ? idx + dim : idx;
}

inline int64_t product(const std::vector<int64_t>& dims, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end && i < dims.size(); ++i) p *= dims[i];
  return p;
}

inline const uint8_t* bytes(const Tensor& t) { return static_cast<const uint8_t*>(t.raw()); }
inline uint8_t* mutable_bytes(Tensor& t) { return static_cast<uint8_t*>(t.mutable_raw()); }

// Copies `count` elements of `elem` bytes (a no-op for zero elements, where pointers may be null).
inline void copy_elems(uint8_t* dst, const uint8_t* src, int64_t count, size_t elem) {
  if (count > 0) std::memcpy(dst, src, static_cast<size_t>(count) * elem);
}

// Calls fn(linear, index) for every multi-index of `shape` in row-major order.
template <typename Fn>
void for_each_multi_index(const std::vector<int64_t>& shape, Fn&& fn) {
  const int64_t n = shape_numel(shape);
  std::vector<int64_t> idx(shape.size(), 0);
  for (int64_t linear = 0; linear < n; ++linear) {
    fn(linear, static_cast<const std::vector<int64_t>&>(idx));
    for (size_t d = shape.size(); d-- > 0;) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace kiln::reference::tensor_util
