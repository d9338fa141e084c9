// Tensor: a dtype, a concrete shape and a reference-counted, 64-byte-aligned byte buffer.
// A tensor may also view memory owned by something else (an mmap'd weight file).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ir/dtype.h"

namespace kiln {

int64_t shape_numel(const std::vector<int64_t>& shape);  // throws on negative dims or overflow
std::string shape_to_string(const std::vector<int64_t>& shape);  // "1x3x224x224", "scalar"

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-filled storage.
  Tensor(DType dtype, std::vector<int64_t> shape);
  // Views `data`, kept alive by `owner`.
  static Tensor view(DType dtype, std::vector<int64_t> shape, std::shared_ptr<const void> owner,
                     const void* data);
  template <typename T>
  static Tensor from_vector(std::vector<int64_t> shape, const std::vector<T>& values);
  template <typename T>
  static Tensor scalar(T value) { return from_vector<T>({}, {value}); }

  bool defined() const { return dtype_ != DType::kUndefined; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  size_t rank() const { return shape_.size(); }
  int64_t dim(size_t i) const { return shape_[i]; }
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }

  const void* raw() const { return data_; }
  void* mutable_raw() { return data_; }
  template <typename T> const T* data() const { check_type(DTypeOf<T>::value); return static_cast<const T*>(data_); }
  template <typename T> T* mutable_data() { check_type(DTypeOf<T>::value); return static_cast<T*>(data_); }
  template <typename T> std::span<const T> values() const { return {data<T>(), static_cast<size_t>(numel_)}; }

  // Same storage, new shape with the same element count.
  Tensor reshaped(std::vector<int64_t> shape) const;
  // Same storage and shape read as another dtype of the same element size (e.g. u16 as bf16).
  Tensor reinterpreted(DType dtype) const;
  // Deep copy into fresh storage.
  Tensor clone() const;
  // Reads any integer tensor as int64 values (for shape-like inputs).
  std::vector<int64_t> to_int64_vector() const;
  // Reads any numeric tensor as doubles (for tests and summaries).
  std::vector<double> to_double_vector() const;

 private:
  void check_type(DType requested) const;

  DType dtype_ = DType::kUndefined;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  std::shared_ptr<const void> owner_;
  void* data_ = nullptr;
};

template <typename T>
Tensor Tensor::from_vector(std::vector<int64_t> shape, const std::vector<T>& values) {
  Tensor t(DTypeOf<T>::value, std::move(shape));
  if (static_cast<size_t>(t.numel()) != values.size())
    throw Error(ErrorCode::kInternal, "Tensor::from_vector: value count does not match shape");
  T* out = t.mutable_data<T>();
  for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
  return t;
}

}  // namespace kiln
