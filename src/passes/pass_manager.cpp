// PassManager: runs passes in order, honours the optimization level and disabled names, and
// verifies the IR after every pass in debug builds.
#include <algorithm>
#include <unordered_map>

#include "passes/pass.h"

namespace kiln {

int PassManager::run(Model& model, PassContext& ctx) const {
  for (const auto& d : ctx.disabled) {
    auto names = pass_names();
    if (std::find(names.begin(), names.end(), d) == names.end()) {
      std::string all;
      for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
      throw Error(ErrorCode::kInvalidArgument, "unknown pass '" + d + "' (passes: " + all + ")");
    }
  }
  int total = 0;
  for (const auto& p : passes_) {
    if (p->min_opt_level() > ctx.opt_level || ctx.disabled.count(std::string(p->name()))) continue;
    int changed = p->run(model, ctx);
    if (changed > 0) ctx.log.push_back(std::string(p->name()) + ": " + std::to_string(changed) + " rewrites");
    total += changed;
    if (ctx.verify_after_each_pass) {
      try {
        verify_graph(model.graph);
      } catch (const Error& e) {
        throw Error(ErrorCode::kInternal, "after pass " + std::string(p->name()) + ": " + e.what());
      }
    }
  }
  return total;
}

std::vector<std::string> PassManager::pass_names() const {
  std::vector<std::string> out;
  for (const auto& p : passes_) out.emplace_back(p->name());
  return out;
}

PassManager PassManager::standard() {
  PassManager pm;
  pm.add(make_remove_identity_ops());
  pm.add(make_dead_node_elimination());
  return pm;
}

std::unordered_map<std::string, int> count_uses(const Graph& g) {
  std::unordered_map<std::string, int> uses;
  for (const Node& n : g.nodes)
    for (const auto& in : n.inputs)
      if (!in.empty()) ++uses[in];
  for (const auto& o : g.outputs) ++uses[o];
  return uses;
}

void replace_uses(Graph& g, const std::string& from, const std::string& to) {
  for (Node& n : g.nodes)
    for (auto& in : n.inputs)
      if (in == from) in = to;
  for (auto& o : g.outputs)
    if (o == from) o = to;
}

}  // namespace kiln
