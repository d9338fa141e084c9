// The reference backend's kernel interface. Reference kernels are plain and obviously correct:
// they are the oracle every optimized backend is tested against, never the fast path.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "ops/op_schema.h"

namespace kiln::reference {

class KernelContext : public NodeView {
 public:
  KernelContext(const Node& node, const OpSchema& schema, int64_t opset, std::vector<const Tensor*> inputs)
      : NodeView(node, schema, opset), inputs_(std::move(inputs)), outputs_(node.outputs.size()) {}

  size_t num_inputs() const { return inputs_.size(); }
  bool has_input(size_t i) const { return i < inputs_.size() && inputs_[i] != nullptr; }
  const Tensor& input(size_t i) const;  // fails with the node's context if absent

  size_t num_outputs() const { return outputs_.size(); }
  // True when the node names output i (optional outputs may be omitted).
  bool has_output(size_t i) const { return i < node().outputs.size() && !node().outputs[i].empty(); }
  // Allocates zero-filled output i and returns it for writing.
  Tensor& allocate_output(size_t i, DType dtype, std::vector<int64_t> shape);
  // Sets output i to an existing tensor (may share storage with an input, e.g. Reshape).
  void set_output(size_t i, Tensor t);

  std::vector<Tensor>& outputs() { return outputs_; }

 private:
  std::vector<const Tensor*> inputs_;
  std::vector<Tensor> outputs_;
};

using KernelFn = void (*)(KernelContext&);

class KernelRegistry {
 public:
  void add(const std::string& domain, const std::string& op, KernelFn fn);
  KernelFn find(const std::string& domain, const std::string& op) const;
  static const KernelRegistry& global();
  // The same registry, for plugins (src/plugins) to add kernels at load time, before any use.
  static KernelRegistry& mutable_global();

 private:
  std::map<std::pair<std::string, std::string>, KernelFn> kernels_;
};

// Registration list: one function per group (src/backends/reference/<group>.cpp).
void register_elementwise_kernels(KernelRegistry& r);
void register_math_kernels(KernelRegistry& r);
void register_tensor_kernels(KernelRegistry& r);
void register_reduce_kernels(KernelRegistry& r);
void register_rnn_kernels(KernelRegistry& r);
void register_extra_kernels(KernelRegistry& r);
void register_fused_conv_kernels(KernelRegistry& r);
void register_fused_matmul_kernels(KernelRegistry& r);
void register_fused_attention_kernels(KernelRegistry& r);
void register_quantized_kernels(KernelRegistry& r);

// ---- Helpers for kernels.

// Strides (in elements) of a dense row-major tensor.
std::vector<int64_t> dense_strides(const std::vector<int64_t>& shape);
// Strides of `in` broadcast to `out_shape` (0 on broadcast dims). in_shape.size() <= out_shape.size().
std::vector<int64_t> broadcast_strides(const std::vector<int64_t>& in_shape, const std::vector<int64_t>& out_shape);

// Iterates over every index of `shape` in row-major order, calling fn(linear_out_index, offsets)
// where offsets[k] is the element offset into operand k given its strides.
template <typename Fn>
void for_each_index(const std::vector<int64_t>& shape, const std::vector<std::vector<int64_t>>& strides, Fn&& fn) {
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  const size_t rank = shape.size();
  const size_t k = strides.size();
  std::vector<int64_t> idx(rank, 0);
  std::vector<int64_t> off(k, 0);
  for (int64_t linear = 0; linear < n; ++linear) {
    fn(linear, off);
    for (size_t d = rank; d-- > 0;) {
      if (++idx[d] < shape[d]) {
        for (size_t j = 0; j < k; ++j) off[j] += strides[j][d];
        break;
      }
      for (size_t j = 0; j < k; ++j) off[j] -= strides[j][d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

}  // namespace kiln::reference
