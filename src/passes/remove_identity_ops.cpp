// No-op removal: Identity, inference-mode Dropout (its mask output unused), and Cast to the
// input's own dtype. Their consumers read the input directly.
#include "passes/pass.h"

namespace kiln {
namespace {

class RemoveIdentityOps : public Pass {
 public:
  std::string_view name() const override { return "remove-identity-ops"; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    int removed = 0;
    for (size_t i = 0; i < g.nodes.size();) {
      const Node& n = g.nodes[i];
      if (!is_noop(g, n)) {
        ++i;
        continue;
      }
      const std::string in = n.inputs[0], out = n.outputs[0];
      const bool out_is_graph_output = std::find(g.outputs.begin(), g.outputs.end(), out) != g.outputs.end();
      const bool in_is_graph_input = std::find(g.inputs.begin(), g.inputs.end(), in) != g.inputs.end();
      // Guard: a graph output keeps its name, so only rewire when the input can be renamed
      // away, i.e. it is not itself a graph input or output.
      if (out_is_graph_output && (in_is_graph_input || g.is_initializer(in) ||
                                  std::find(g.outputs.begin(), g.outputs.end(), in) != g.outputs.end())) {
        ++i;
        continue;
      }
      g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
      if (out_is_graph_output) {
        // Rename the producer's value to the output name so the graph's interface is unchanged.
        for (Node& m : g.nodes) {
          for (auto& o : m.outputs)
            if (o == in) o = out;
          for (auto& x : m.inputs)
            if (x == in) x = out;
        }
        g.types.erase(in);
      } else {
        replace_uses(g, out, in);
        g.types.erase(out);
      }
      ++removed;
    }
    return removed;
  }

 private:
  static bool is_noop(const Graph& g, const Node& n) {
    if (!n.domain.empty() || n.inputs.empty() || n.inputs[0].empty() || n.outputs.empty()) return false;
    if (n.op_type == "Identity") return true;
    if (n.op_type == "Dropout") {
      // Guard: inference mode only (no training_mode input set), and the mask output unused.
      if (n.outputs.size() > 1 && !n.outputs[1].empty()) return false;
      if (n.inputs.size() > 2 && !n.inputs[2].empty()) return false;
      return true;
    }
    if (n.op_type == "Cast") {
      const TensorType* t = g.type_of(n.inputs[0]);
      const Attribute* to = n.attr("to");
      return t && to && t->dtype != DType::kUndefined && dtype_from_onnx(static_cast<int>(to->i)) == t->dtype;
    }
    return false;
  }
};

}  // namespace

std::unique_ptr<Pass> make_remove_identity_ops() { return std::make_unique<RemoveIdentityOps>(); }

}  // namespace kiln
