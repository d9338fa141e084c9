// Reference kernels of elementwise, comparison and logic ops.
#include "backends/reference/kernel.h"

namespace kiln::reference {

namespace {

// out[i] = fn(a[i'], b[i'']) with numpy broadcasting; out dtype = a's dtype.
template <typename Fn>
void binary_same_type(KernelContext& ctx, Fn fn) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  if (a.dtype() != b.dtype())
    ctx.fail("inputs have different dtypes " + std::string(dtype_name(a.dtype())) + " and " +
             std::string(dtype_name(b.dtype())));
  std::vector<int64_t> shape = broadcast_dims(ctx, {a.shape(), b.shape()});
  Tensor& out = ctx.allocate_output(0, a.dtype(), shape);
  dispatch_dtype(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* po = out.mutable_data<T>();
    for_each_index(shape, {broadcast_strides(a.shape(), shape), broadcast_strides(b.shape(), shape)},
                   [&](int64_t i, const std::vector<int64_t>& off) {
                     po[i] = static_cast<T>(fn(static_cast<C>(pa[off[0]]), static_cast<C>(pb[off[1]])));
                   });
  });
}

void add_kernel(KernelContext& ctx) {
  binary_same_type(ctx, [](auto x, auto y) { return x + y; });
}

void relu_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.allocate_output(0, x.dtype(), x.shape());
  dispatch_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      C v = static_cast<C>(px[i]);
      py[i] = static_cast<T>(v > C(0) ? v : C(0));
    }
  });
}

}  // namespace

void register_elementwise_kernels(KernelRegistry& r) {
  r.add("", "Add", add_kernel);
  r.add("", "Relu", relu_kernel);
}

}  // namespace kiln::reference
