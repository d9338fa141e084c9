// Cutting a model into subgraphs: a set of nodes becomes a model of its own, the tensors that cross
// the cut becoming graph inputs (with their inferred types) and graph outputs. `kiln debug reduce`
// builds every candidate model through it.
#pragma once
#include <cstddef>
#include <string>
#include <unordered_map>
#include <vector>

#include "ir/graph.h"
#include "ops/model_check.h"

namespace kiln {

// The types a model's tensors have as far as Kiln can infer them. A node Kiln cannot check or
// infer (an unknown op, a failing inference function) is skipped together with every node that
// depends on it, except through outputs whose type the model declares (value_info).
struct PartialTypes {
  std::unordered_map<std::string, TensorType> types;  // every tensor with a known type
  // Tensors whose value inference computed (constant propagation: Shape chains, folded
  // constants), by name; never the graph inputs.
  std::unordered_map<std::string, Tensor> values;
  struct Skipped {
    size_t node;         // index into graph.nodes
    std::string reason;  // "unknown op: ...", "depends on 'x', whose type is unknown", ...
  };
  std::vector<Skipped> skipped;  // in node order
};

// Infers types (and, with options.evaluator, small constant values) on as much of `model` as
// Kiln supports; never throws for an unsupported or uninferable node.
PartialTypes infer_types_partial(const Model& model, const InferOptions& options = {},
                                 const OpRegistry& registry = OpRegistry::global());

// Everything a node reads: its non-empty inputs, then the outer-scope values its subgraph
// attributes (If, Loop, Scan bodies) use, each name once.
std::vector<std::string> node_reads(const Node& node);

// node i -> true when its value depends on initializers only (no graph input, no random op): the
// weights-side nodes a cut keeps with the nodes that use them rather than turning their outputs
// into graph inputs.
std::vector<bool> constant_nodes(const Graph& graph);

// `keep` (node indices) plus every constant node that feeds one of them, directly or through other
// constant nodes; sorted, without duplicates.
std::vector<size_t> with_constant_producers(const Graph& graph, const std::vector<size_t>& keep,
                                            const std::vector<bool>& constant);

// Turns the tensor-valued Constant nodes of the default domain into initializers (a cut then never
// makes a constant a graph input). Returns how many it lowered.
size_t lower_constant_nodes(Model& model);

// The nodes `keep` (indices into model.graph.nodes, any order) as a model of their own, in the
// original order, with the model's opsets:
// - the initializers they read are copied;
// - a tensor they read but do not produce becomes a graph input: a graph input of `model` keeps
//   its type from model.graph.types; an intermediate tensor becomes an initializer when
//   types.values holds its value, else a graph input of its type in `types`, which must have a
//   known dtype and a static shape (kInvalidArgument otherwise, naming the tensor);
// - a tensor they produce becomes a graph output when it is a graph output of `model` (those
//   first, in their order), when a node outside `keep` reads it, or when its node is dead in
//   `model` (nothing reads any of its outputs). Outputs carry the type model.graph.types declares, else
//   the inferred dtype alone (no shape, so a wrong inferred shape cannot contradict another tool).
// Only inputs and outputs carry types; intermediate value_info is left out.
Model extract_subgraph(const Model& model, const std::vector<size_t>& keep, const PartialTypes& types);

}  // namespace kiln
