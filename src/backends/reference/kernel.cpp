// Kernel registry and context.
#include "backends/reference/kernel.h"

namespace kiln::reference {

const Tensor& KernelContext::input(size_t i) const {
  if (!has_input(i)) fail("input " + std::to_string(i) + " is required");
  return *inputs_[i];
}

Tensor& KernelContext::allocate_output(size_t i, DType dtype, std::vector<int64_t> shape) {
  if (i >= outputs_.size()) outputs_.resize(i + 1);
  outputs_[i] = Tensor(dtype, std::move(shape));
  return outputs_[i];
}

void KernelContext::set_output(size_t i, Tensor t) {
  if (i >= outputs_.size()) outputs_.resize(i + 1);
  outputs_[i] = std::move(t);
}

void KernelRegistry::add(const std::string& domain, const std::string& op, KernelFn fn) {
  if (!kernels_.emplace(std::make_pair(canonical_domain(domain), op), fn).second)
    throw Error(ErrorCode::kInternal, "reference kernel registered twice: " + op);
}

KernelFn KernelRegistry::find(const std::string& domain, const std::string& op) const {
  auto it = kernels_.find({canonical_domain(domain), op});
  return it == kernels_.end() ? nullptr : it->second;
}

const KernelRegistry& KernelRegistry::global() { return mutable_global(); }

KernelRegistry& KernelRegistry::mutable_global() {
  static KernelRegistry registry = [] {
    KernelRegistry r;
    register_elementwise_kernels(r);
    register_math_kernels(r);
    register_tensor_kernels(r);
    register_reduce_kernels(r);
    register_rnn_kernels(r);
    register_extra_kernels(r);
    register_fused_conv_kernels(r);
    register_fused_matmul_kernels(r);
    register_fused_attention_kernels(r);
    register_quantized_kernels(r);
    return r;
  }();
  return registry;
}

std::vector<int64_t> dense_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (size_t d = shape.size(); d-- > 1;) s[d - 1] = s[d] * shape[d];
  return s;
}

std::vector<int64_t> broadcast_strides(const std::vector<int64_t>& in_shape, const std::vector<int64_t>& out_shape) {
  std::vector<int64_t> dense = dense_strides(in_shape);
  std::vector<int64_t> s(out_shape.size(), 0);
  const size_t pad = out_shape.size() - in_shape.size();
  for (size_t d = 0; d < in_shape.size(); ++d) s[pad + d] = in_shape[d] == 1 ? 0 : dense[d];
  return s;
}

}  // namespace kiln::reference
