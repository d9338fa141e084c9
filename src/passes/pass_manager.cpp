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
  pm.add(make_remove_noop_reshapes());
  pm.add(make_constant_folding());
  pm.add(make_shape_subgraph_folding());
  pm.add(make_fold_batchnorm());
  pm.add(make_fuse_layernorm());
  pm.add(make_fuse_gelu());
  pm.add(make_fuse_attention());
  pm.add(make_fuse_conv_bias_activation());
  pm.add(make_fuse_matmul_bias_activation());
  pm.add(make_fuse_elementwise_chains());
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

void record_fusion(Node& fused, const std::vector<const Node*>& originals) {
  std::vector<std::string> names;
  for (const Node* n : originals) {
    if (const Attribute* prior = n->attr("fused_ops")) {
      names.insert(names.end(), prior->strings.begin(), prior->strings.end());
      continue;
    }
    names.push_back(n->op_type + ":" + n->name);
  }
  Attribute a;
  a.kind = AttrKind::kStrings;
  a.strings = std::move(names);
  fused.attrs["fused_ops"] = std::move(a);
}

void import_kiln_domain(Model& model) {
  if (!model.opsets.count("kiln")) model.opsets["kiln"] = 1;
}

void replace_uses(Graph& g, const std::string& from, const std::string& to) {
  for (Node& n : g.nodes)
    for (auto& in : n.inputs)
      if (in == from) in = to;
  for (auto& o : g.outputs)
    if (o == from) o = to;
}

}  // namespace kiln
