// fuse-elementwise-chains: maximal chains of elementwise float ops (Add Sub Mul Div Pow Sqrt Exp
// Log Erf Tanh Sigmoid Relu LeakyRelu Neg Abs Reciprocal, Clip with constant bounds) applied to one
// main tensor become one kiln::ElementwiseChain (encoding at the top of src/ops/fused_attention.cpp).
// Runs after the conv/matmul fusions, so it only takes the activations they left.
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <unordered_set>

#include "passes/pass.h"

namespace kiln {
namespace {

bool is_float(DType dt) { return dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16 || dt == DType::kF64; }

bool same_dim(const Dim& a, const Dim& b) {
  if (a.known() || b.known()) return a.known() && b.known() && a.value == b.value;
  return !a.symbol.empty() && a.symbol == b.symbol;
}

bool is_unary(const std::string& op) {
  for (const char* u : {"Sqrt", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "Neg", "Abs", "Reciprocal"})
    if (op == u) return true;
  return false;
}
bool is_binary(const std::string& op) {
  return op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Pow";
}

// Whether float param p holds `v` exactly in dtype dt (Clip bounds are carried as floats).
bool param_exact(double v, DType dt) {
  if (std::isinf(v)) return true;
  const float f = static_cast<float>(v);
  if (static_cast<double>(f) != v) return false;
  if (dt == DType::kF16) return half_to_float(float_to_half(f)) == f;
  if (dt == DType::kBF16) return bf16_to_float(float_to_bf16(f)) == f;
  return true;
}

struct Chain {
  std::string main;
  std::vector<std::string> extras;  // inputs 1..n
  std::vector<std::string> ops;
  std::vector<float> params;
  std::vector<size_t> nodes;
};

class FuseElementwiseChains : public Pass {
 public:
  std::string_view name() const override { return "fuse-elementwise-chains"; }
  int min_opt_level() const override { return 3; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    opset_ = model.default_opset();
    if (opset_ < 7) return 0;  // opsets 1-6 broadcast with legacy rules the chain does not encode
    const auto uses = count_uses(g);
    const std::unordered_set<std::string> graph_outputs(g.outputs.begin(), g.outputs.end());
    std::unordered_map<std::string, size_t> consumer;  // the last consumer of each value
    for (size_t i = 0; i < g.nodes.size(); ++i)
      for (const auto& in : g.nodes[i].inputs) consumer[in] = i;

    std::vector<bool> taken(g.nodes.size(), false);
    std::vector<Chain> chains;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      if (taken[i] || !eligible(g, g.nodes[i])) continue;
      const Node& first = g.nodes[i];
      // The main tensor: the operand the other one broadcasts onto (a non-constant one if both do).
      std::string main;
      if (!is_binary(first.op_type)) {
        main = first.inputs[0];
      } else {
        for (size_t k = 0; k < 2; ++k) {
          if (!broadcasts_onto(g, first.inputs[1 - k], first.inputs[k])) continue;
          if (main.empty() || (g.is_initializer(main) && !g.is_initializer(first.inputs[k]))) main = first.inputs[k];
        }
      }
      if (main.empty()) continue;
      Chain c;
      c.main = main;
      if (!add_step(g, first, main, c)) continue;
      c.nodes.push_back(i);
      // Guard: extend while the value has one consumer, is not a graph output, and the consumer
      // is eligible and keeps the main shape (its other operand broadcasts onto the main tensor).
      std::string acc = first.outputs[0];
      while (true) {
        auto u = uses.find(acc);
        if (u == uses.end() || u->second != 1 || graph_outputs.count(acc) || !consumer.count(acc)) break;
        const size_t j = consumer.at(acc);
        const Node& n = g.nodes[j];
        if (taken[j] || !eligible(g, n)) break;
        if (is_binary(n.op_type) && !broadcasts_onto(g, n.inputs[n.inputs[0] == acc ? 1 : 0], main)) break;
        Chain next = c;
        if (!add_step(g, n, acc, next)) break;
        next.nodes.push_back(j);
        c = std::move(next);
        acc = n.outputs[0];
      }
      // Guard: at least two ops, or there is nothing to fuse.
      if (c.nodes.size() < 2) continue;
      for (size_t j : c.nodes) taken[j] = true;
      chains.push_back(std::move(c));
    }
    if (chains.empty()) return 0;

    std::unordered_map<size_t, Node> fused_at;  // at the position of each chain's last node
    for (const Chain& c : chains) {
      const Node& last = g.nodes[c.nodes.back()];
      Node f;
      f.name = g.nodes[c.nodes.front()].name;
      f.op_type = "ElementwiseChain";
      f.domain = "kiln";
      f.inputs = {c.main};
      f.inputs.insert(f.inputs.end(), c.extras.begin(), c.extras.end());
      f.outputs = {last.outputs[0]};
      Attribute ops;
      ops.kind = AttrKind::kStrings;
      ops.strings = c.ops;
      f.attrs["ops"] = std::move(ops);
      if (!c.params.empty()) f.attrs["params"] = Attribute::of_floats(c.params);
      std::vector<const Node*> originals;
      for (size_t j : c.nodes) originals.push_back(&g.nodes[j]);
      record_fusion(f, originals);
      fused_at[c.nodes.back()] = std::move(f);
      for (size_t j = 0; j + 1 < c.nodes.size(); ++j) g.types.erase(g.nodes[c.nodes[j]].outputs[0]);
    }
    std::vector<Node> out;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      auto it = fused_at.find(i);
      if (it != fused_at.end()) out.push_back(std::move(it->second));
      else if (!taken[i]) out.push_back(std::move(g.nodes[i]));
    }
    g.nodes = std::move(out);
    import_kiln_domain(model);
    return static_cast<int>(chains.size());
  }

 private:
  // Guard: an ai.onnx op of the chain's set with one output of a known float type and rank, its
  // operands of that same dtype, and Clip bounds constant.
  bool eligible(const Graph& g, const Node& n) const {
    if (!n.domain.empty() || n.outputs.size() != 1 || n.outputs[0].empty() || n.inputs.empty()) return false;
    const std::string& op = n.op_type;
    const bool binary = is_binary(op);
    if (!binary && !is_unary(op) && op != "LeakyRelu" && op != "Clip") return false;
    const TensorType* out = g.type_of(n.outputs[0]);
    if (!out || !out->shape || !is_float(out->dtype)) return false;
    const size_t operands = binary ? 2 : 1;
    if (binary && n.inputs.size() != 2) return false;
    for (size_t k = 0; k < operands; ++k) {
      const TensorType* t = n.inputs[k].empty() ? nullptr : g.type_of(n.inputs[k]);
      if (!t || !t->shape || t->dtype != out->dtype) return false;
    }
    if (op == "Clip") return clip_bounds(g, n).has_value();
    return true;
  }

  // Guard: `other` broadcasts onto `main` without enlarging it (unidirectional broadcasting),
  // proven from the types: each of its dims is 1 or the same as main's.
  static bool broadcasts_onto(const Graph& g, const std::string& other, const std::string& main) {
    const TensorType* o = g.type_of(other);
    const TensorType* m = g.type_of(main);
    if (!o || !m || !o->shape || !m->shape || o->shape->size() > m->shape->size()) return false;
    const Shape& os = *o->shape;
    const Shape& ms = *m->shape;
    for (size_t i = 0; i < os.size(); ++i) {
      const Dim& d = os[i];
      if (!(d.known() && d.value == 1) && !same_dim(d, ms[ms.size() - os.size() + i])) return false;
    }
    return true;
  }

  // Clip's (lo, hi) as exact params; +-inf for an omitted bound. nullopt if a bound is not a
  // constant scalar.
  std::optional<std::pair<float, float>> clip_bounds(const Graph& g, const Node& n) const {
    const DType dt = g.type_of(n.outputs[0])->dtype;
    double b[2] = {-std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity()};
    if (opset_ < 11) {
      // Clip-6: attributes, defaulting to the float range.
      const Attribute* lo = n.attr("min");
      const Attribute* hi = n.attr("max");
      b[0] = lo ? lo->f : -std::numeric_limits<float>::max();
      b[1] = hi ? hi->f : std::numeric_limits<float>::max();
    } else {
      for (size_t k = 1; k < 3; ++k) {
        if (k >= n.inputs.size() || n.inputs[k].empty()) continue;
        auto it = g.initializers.find(n.inputs[k]);
        if (it == g.initializers.end() || it->second.numel() != 1 || it->second.dtype() != dt) return std::nullopt;
        b[k - 1] = it->second.to_double_vector()[0];
        if (std::isnan(b[k - 1])) return std::nullopt;
      }
    }
    if (!param_exact(b[0], dt) || !param_exact(b[1], dt)) return std::nullopt;
    return std::make_pair(static_cast<float>(b[0]), static_cast<float>(b[1]));
  }

  // Appends node n, reading the accumulator `acc`, to chain c. False if n does not take acc the
  // way a chain step can.
  bool add_step(const Graph& g, const Node& n, const std::string& acc, Chain& c) const {
    const std::string& op = n.op_type;
    if (!is_binary(op)) {
      if (n.inputs[0] != acc) return false;
      c.ops.push_back(op);
      if (op == "LeakyRelu") {
        const Attribute* a = n.attr("alpha");
        c.params.push_back(a ? a->f : 0.01f);
      } else if (op == "Clip") {
        auto b = clip_bounds(g, n);
        c.params.push_back(b->first);
        c.params.push_back(b->second);
      }
      return true;
    }
    const bool acc_left = n.inputs[0] == acc;
    if (!acc_left && n.inputs[1] != acc) return false;
    const std::string& other = n.inputs[acc_left ? 1 : 0];
    size_t k = 0;
    if (other != c.main) {
      auto it = std::find(c.extras.begin(), c.extras.end(), other);
      k = 1 + static_cast<size_t>(it - c.extras.begin());
      if (it == c.extras.end()) c.extras.push_back(other);
    }
    // Add and Mul commute exactly in IEEE arithmetic; the others record the operand order.
    const bool reversed = !acc_left && op != "Add" && op != "Mul";
    c.ops.push_back(op + ":" + std::to_string(k) + (reversed ? ":r" : ""));
    return true;
  }

  int64_t opset_ = 0;
};

}  // namespace

std::unique_ptr<Pass> make_fuse_elementwise_chains() { return std::make_unique<FuseElementwiseChains>(); }

}  // namespace kiln
