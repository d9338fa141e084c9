// Model-level checks against the op registry, and whole-graph type and shape inference.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "ops/op_schema.h"

namespace kiln {

// Lowest and highest ai.onnx opset Kiln's schemas are written against.
constexpr int64_t kMinSupportedOpset = 7;
constexpr int64_t kMaxSupportedOpset = 21;

struct ModelIssue {
  std::string node;    // node name (may be empty)
  std::string op;      // "Conv" or "domain::Op"
  int64_t opset = 0;
  std::string reason;
  ErrorCode code = ErrorCode::kUnsupported;
  std::string to_string() const;
};

// Every reason a node cannot be imported: unknown op, op at an unsupported opset, wrong arity,
// missing required or mistyped attributes. Empty when the whole graph is understood.
std::vector<ModelIssue> check_model(const Model& model, const OpRegistry& registry = OpRegistry::global());
// Throws the first issue as a kiln::Error naming the model file.
void require_supported(const Model& model, const OpRegistry& registry = OpRegistry::global());

// Evaluates one node on constant inputs; used to propagate small constants (shape chains)
// during inference. Returns the node's outputs.
using ConstantEvaluator = std::function<std::vector<Tensor>(const Node&, const OpSchema&, int64_t opset,
                                                            const std::vector<const Tensor*>& inputs)>;

struct InferOptions {
  ConstantEvaluator evaluator;          // optional
  int64_t max_folded_elements = 1 << 16;  // only fold outputs up to this many elements
};

// Infers the dtype and shape of every value, keeping symbolic dimensions, and merges them with
// the types the model declares. Throws kInvalidModel when they contradict each other.
// Requires require_supported() to have passed.
void infer_types(Model& model, const InferOptions& options = {}, const OpRegistry& registry = OpRegistry::global());

// The value a Shape node `n` (default domain, at `opset`) returns for a static input of shape
// `dims`: the dims, sliced by start/end from opset 15. Constant propagation uses it.
Tensor shape_op_value(const Node& n, int64_t opset, const std::vector<int64_t>& dims);

// Structural invariants of a graph (SSA, topological order, every use defined, initializer
// sizes, every output produced). Throws kInternal naming the violation. Run after every pass
// in debug builds.
void verify_graph(const Graph& graph);

// Readable text dump of a model: inputs, initializers (summarised), nodes with attributes and
// inferred output types, outputs.
std::string dump_model(const Model& model);

}  // namespace kiln
