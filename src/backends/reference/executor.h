// The reference executor: runs a model node by node with the reference kernels. It is the
// oracle for every optimized backend; correctness and clear errors are its only jobs.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "backends/reference/kernel.h"
#include "ops/model_check.h"

namespace kiln::reference {

using TensorMap = std::map<std::string, Tensor>;

struct RunOptions {
  bool keep_intermediates = false;  // return every value computed, not just the graph outputs
  bool check_inferred_types = true; // fail if a kernel's output contradicts type inference
};

// Runs one node's kernel on the given inputs (for constant folding and inference).
std::vector<Tensor> evaluate_node(const Node& node, const OpSchema& schema, int64_t opset,
                                  const std::vector<const Tensor*>& inputs);
// A ConstantEvaluator backed by the reference kernels.
ConstantEvaluator constant_evaluator();

class Executor {
 public:
  // Checks that every op is supported and has a kernel, then infers types (with constant
  // propagation). Throws naming the first unsupported node.
  explicit Executor(Model model);

  const Model& model() const { return model_; }
  // Validates inputs against the graph's declared inputs (names, dtypes, ranks, static and
  // symbolic dims) and runs the graph.
  TensorMap run(const TensorMap& inputs, const RunOptions& options = {}) const;

 private:
  void validate_inputs(const TensorMap& inputs) const;
  Model model_;
  std::vector<const OpSchema*> schemas_;
  std::vector<KernelFn> kernels_;
  std::vector<int64_t> opsets_;
};

}  // namespace kiln::reference
