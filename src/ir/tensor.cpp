// Tensor storage and helpers.
#include "ir/tensor.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace kiln {

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error(ErrorCode::kInvalidArgument, "negative dimension in shape " + shape_to_string(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw Error(ErrorCode::kInvalidArgument, "shape " + shape_to_string(shape) + " has too many elements");
    n *= d;
  }
  return n;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  if (shape.empty()) return "scalar";
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += 'x';
    s += std::to_string(shape[i]);
  }
  return s;
}

Tensor::Tensor(DType dtype, std::vector<int64_t> shape)
    : dtype_(dtype), shape_(std::move(shape)), numel_(shape_numel(shape_)) {
  const size_t elem = dtype_size(dtype);
  if (elem == 0)
    throw Error(ErrorCode::kUnsupported, "cannot allocate a tensor of dtype " + std::string(dtype_name(dtype)));
  if (static_cast<uint64_t>(numel_) > (std::numeric_limits<uint64_t>::max() / 2) / elem)
    throw Error(ErrorCode::kInvalidArgument, "tensor of shape " + shape_to_string(shape_) + " is too large");
  size_t bytes = static_cast<size_t>(numel_) * elem;
  size_t rounded = (bytes + 63) / 64 * 64;
  if (rounded == 0) rounded = 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p)
    throw Error(ErrorCode::kInvalidArgument, "out of memory allocating " + std::to_string(bytes) + " bytes");
  std::memset(p, 0, rounded);
  owner_ = std::shared_ptr<const void>(p, [](const void* q) { std::free(const_cast<void*>(q)); });
  data_ = p;
}

Tensor Tensor::view(DType dtype, std::vector<int64_t> shape, std::shared_ptr<const void> owner,
                    const void* data) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.numel_ = shape_numel(t.shape_);
  t.owner_ = std::move(owner);
  t.data_ = const_cast<void*>(data);
  return t;
}

Tensor Tensor::reshaped(std::vector<int64_t> shape) const {
  if (shape_numel(shape) != numel_)
    throw Error(ErrorCode::kInvalidArgument,
                "cannot reshape " + shape_to_string(shape_) + " to " + shape_to_string(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::reinterpreted(DType dtype) const {
  if (dtype_size(dtype) != dtype_size(dtype_) || dtype_size(dtype) == 0)
    throw Error(ErrorCode::kInvalidArgument, "cannot reinterpret " + std::string(dtype_name(dtype_)) + " as " +
                                                 std::string(dtype_name(dtype)));
  Tensor t = *this;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::clone() const {
  if (!defined()) return {};
  Tensor t(dtype_, shape_);
  if (nbytes()) std::memcpy(t.data_, data_, nbytes());
  return t;
}

void Tensor::check_type(DType requested) const {
  if (requested != dtype_)
    throw Error(ErrorCode::kInternal, "tensor of dtype " + std::string(dtype_name(dtype_)) +
                                          " accessed as " + std::string(dtype_name(requested)));
}

std::vector<int64_t> Tensor::to_int64_vector() const {
  std::vector<int64_t> out(static_cast<size_t>(numel_));
  if (!dtype_is_integer(dtype_) && dtype_ != DType::kBool)
    throw Error(ErrorCode::kInvalidArgument,
                "expected an integer tensor, got " + std::string(dtype_name(dtype_)));
  dispatch_dtype(dtype_, [&](auto tag) {
    using T = decltype(tag);
    const T* p = static_cast<const T*>(data_);
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(p[i]);
  });
  return out;
}

std::vector<double> Tensor::to_double_vector() const {
  std::vector<double> out(static_cast<size_t>(numel_));
  dispatch_dtype(dtype_, [&](auto tag) {
    using T = decltype(tag);
    const T* p = static_cast<const T*>(data_);
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<double>(static_cast<compute_t<T>>(p[i]));
  });
  return out;
}

}  // namespace kiln
