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
  pm.add(make_decompose_batchnorm());
  pm.add(make_fuse_layernorm());
  pm.add(make_fuse_gelu());
  pm.add(make_split_packed_projections());
  pm.add(make_fuse_attention());
  pm.add(make_fuse_conv_bias_activation());
  pm.add(make_fuse_matmul_bias_activation());
  pm.add(make_cancel_transposes());
  pm.add(make_fuse_qdq());
  pm.add(make_fuse_elementwise_chains());
  pm.add(make_dead_node_elimination());
  return pm;
}

const Shape* shape_of(const Graph& g, const std::string& value) {
  const TensorType* t = g.type_of(value);
  return t && t->shape ? &*t->shape : nullptr;
}

int64_t int_attr(const Node& n, const std::string& key, int64_t def) {
  const Attribute* a = n.attr(key);
  return a ? a->i : def;
}

NameGen::NameGen(const Graph& g) {
  for (const auto& [n, _] : g.initializers) taken_.insert(n);
  for (const auto& [n, _] : g.types) taken_.insert(n);
  taken_.insert(g.inputs.begin(), g.inputs.end());
  taken_.insert(g.outputs.begin(), g.outputs.end());
  for (const Node& n : g.nodes) {
    taken_.insert(n.inputs.begin(), n.inputs.end());
    taken_.insert(n.outputs.begin(), n.outputs.end());
  }
}

std::string NameGen::make(const std::string& base) {
  std::string name = base;
  for (int i = 1; taken_.count(name); ++i) name = base + "_" + std::to_string(i);
  taken_.insert(name);
  return name;
}

std::unordered_map<std::string, int> count_uses(const Graph& g) {
  std::unordered_map<std::string, int> uses;
  for (const Node& n : g.nodes)
    for (const auto& in : n.inputs)
      if (!in.empty()) ++uses[in];
  for (const auto& o : g.outputs) ++uses[o];
  return uses;
}

UseIndex::UseIndex(const Graph& g) : graph_outputs(g.outputs.begin(), g.outputs.end()) {
  for (int i = 0; i < static_cast<int>(g.nodes.size()); ++i) {
    for (const auto& o : g.nodes[i].outputs)
      if (!o.empty()) producer[o] = i;
    for (const auto& in : g.nodes[i].inputs) {
      if (in.empty()) continue;
      auto& c = consumers[in];
      if (c.empty() || c.back() != i) c.push_back(i);
    }
  }
}

int UseIndex::producer_of(const std::string& v) const {
  auto it = producer.find(v);
  return it == producer.end() ? -1 : it->second;
}

const std::vector<int>& UseIndex::consumers_of(const std::string& v) const {
  static const std::vector<int> kNone;
  auto it = consumers.find(v);
  return it == consumers.end() ? kNone : it->second;
}

int UseIndex::sole_consumer(const std::string& v) const {
  if (graph_outputs.count(v)) return -1;
  const auto& c = consumers_of(v);
  return c.size() == 1 ? c[0] : -1;
}

bool UseIndex::unused(const std::string& v) const {
  return v.empty() || (!graph_outputs.count(v) && consumers_of(v).empty());
}

std::optional<Tensor> constant_value(const Graph& g, const UseIndex& u, const std::string& v, int depth) {
  if (v.empty() || depth > 8) return std::nullopt;
  if (auto it = g.initializers.find(v); it != g.initializers.end()) return it->second;
  const int p = u.producer_of(v);
  if (p < 0) return std::nullopt;
  const Node& n = g.nodes[p];
  if (!n.domain.empty()) return std::nullopt;
  if (n.op_type == "Identity" && !n.inputs.empty()) return constant_value(g, u, n.inputs[0], depth + 1);
  if (n.op_type != "Constant") return std::nullopt;
  if (const Attribute* a = n.attr("value")) return a->t;
  if (const Attribute* a = n.attr("value_float")) return Tensor::scalar<float>(a->f);
  if (const Attribute* a = n.attr("value_int")) return Tensor::scalar<int64_t>(a->i);
  if (const Attribute* a = n.attr("value_ints"))
    return Tensor::from_vector<int64_t>({static_cast<int64_t>(a->ints.size())}, a->ints);
  if (const Attribute* a = n.attr("value_floats"))
    return Tensor::from_vector<float>({static_cast<int64_t>(a->floats.size())}, a->floats);
  return std::nullopt;
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
