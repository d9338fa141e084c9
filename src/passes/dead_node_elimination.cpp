// Dead-node elimination: removes nodes none of whose outputs reach a graph output, and
// initializers nothing uses.
#include <unordered_set>

#include "passes/pass.h"

namespace kiln {
namespace {

class DeadNodeElimination : public Pass {
 public:
  std::string_view name() const override { return "dead-node-elimination"; }
  int min_opt_level() const override { return 0; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    std::unordered_set<std::string> live(g.outputs.begin(), g.outputs.end());
    std::vector<bool> keep(g.nodes.size(), false);
    // Walk backwards: topological order means every consumer is seen before its producer.
    for (size_t i = g.nodes.size(); i-- > 0;) {
      const Node& n = g.nodes[i];
      bool needed = false;
      for (const auto& o : n.outputs)
        if (!o.empty() && live.count(o)) needed = true;
      if (!needed) continue;
      keep[i] = true;
      for (const auto& in : n.inputs)
        if (!in.empty()) live.insert(in);
    }
    int removed = 0;
    std::vector<Node> kept;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      if (keep[i]) {
        kept.push_back(std::move(g.nodes[i]));
      } else {
        for (const auto& o : g.nodes[i].outputs) g.types.erase(o);
        ++removed;
      }
    }
    g.nodes = std::move(kept);
    for (auto it = g.initializers.begin(); it != g.initializers.end();) {
      if (!live.count(it->first)) {
        g.types.erase(it->first);
        it = g.initializers.erase(it);
        ++removed;
      } else {
        ++it;
      }
    }
    return removed;
  }
};

}  // namespace

std::unique_ptr<Pass> make_dead_node_elimination() { return std::make_unique<DeadNodeElimination>(); }

}  // namespace kiln
