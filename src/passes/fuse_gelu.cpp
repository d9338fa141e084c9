// fuse-gelu: the GELU subgraphs exporters emit (erf form and tanh form, in their usual association
// orders) and the ONNX Gelu op become one kiln::Gelu node.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "passes/pass.h"

namespace kiln {
namespace {

using Uses = UseIndex;

bool is_op(const Node& n, const char* op) { return n.domain.empty() && n.op_type == op; }

bool is_float(DType dt) { return dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16 || dt == DType::kF64; }

class FuseGelu : public Pass {
 public:
  std::string_view name() const override { return "fuse-gelu"; }
  int min_opt_level() const override { return 2; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    int rewrites = 0;
    // One rewrite at a time, then a fresh use-def view: rewrites shift node indices.
    for (bool changed = true; changed;) {
      changed = false;
      const Uses u(g);
      for (int i = 0; i < static_cast<int>(g.nodes.size()) && !changed; ++i) {
        const Node& n = g.nodes[i];
        if (is_op(n, "Gelu")) {
          convert_onnx_gelu(model, i);
          changed = true;
        } else if (is_op(n, "Erf") || is_op(n, "Tanh")) {
          if (std::optional<Match> m = is_op(n, "Erf") ? match_erf(g, u, i) : match_tanh(g, u, i)) {
            apply(model, *m);
            changed = true;
          }
        }
      }
      rewrites += changed;
    }
    return rewrites;
  }

 private:
  struct Match {
    std::string x;           // GELU input
    std::vector<int> nodes;  // nodes replaced; the one producing the GELU output is the last in graph order
    int first = -1;          // the pattern's first node, whose name the fused node keeps
    std::string approximate;
  };

  // Within 1e-3 relative of `want`, as exporters round their constants differently.
  static bool near(double v, double want) { return std::fabs(v - want) <= 1e-3 * std::fabs(want); }

  // The scalar constant `c` when it leaves the shape of `x` unchanged when broadcast against it:
  // one element, and rank 0 or no higher than x's (known) rank.
  static std::optional<double> scalar_for(const Graph& g, const Uses& u, const std::string& c, const std::string& x) {
    const auto t = constant_value(g, u, c);
    const TensorType* xt = g.type_of(x);
    if (!t || t->numel() != 1 || !xt || t->dtype() != xt->dtype) return std::nullopt;
    if (t->rank() > 0 && (!xt->shape || xt->shape->size() < t->rank())) return std::nullopt;
    return t->to_double_vector()[0];
  }

  // For a two-input node, the input that is not `known` (or "" when neither or both are).
  static std::string other_input(const Node& n, const std::string& known) {
    if (n.inputs.size() != 2) return "";
    if (n.inputs[0] == known && n.inputs[1] != known) return n.inputs[1];
    if (n.inputs[1] == known && n.inputs[0] != known) return n.inputs[0];
    return "";
  }

  // Mul(v, c) / Mul(c, v) with the scalar constant c near `want`, or Div(v, c) with c near 1/want.
  // Returns the non-constant operand v ("" if no match).
  static std::string scaled_operand(const Graph& g, const Uses& u, const Node& n, double want) {
    if (n.inputs.size() != 2) return "";
    if (is_op(n, "Div")) {
      const auto c = scalar_for(g, u, n.inputs[1], n.inputs[0]);
      return c && near(*c, 1.0 / want) ? n.inputs[0] : "";
    }
    if (!is_op(n, "Mul")) return "";
    for (int k = 0; k < 2; ++k) {
      const auto c = scalar_for(g, u, n.inputs[k], n.inputs[1 - k]);
      if (c && near(*c, want)) return n.inputs[1 - k];
    }
    return "";
  }

  // Guards shared by both forms: x is a float tensor, and from `a` = 1 + erf(..) or 1 + tanh(..)
  // the tail computes 0.5 * x * a in one of the three association orders torch/TF emit:
  //   (x * a) * 0.5,  (0.5 * x) * a,  x * (0.5 * a).
  // Every intermediate has one consumer and is not a graph output. Appends the tail's nodes.
  static bool match_tail(const Graph& g, const Uses& u, const std::string& x, const std::string& a, Match& m) {
    const int m1 = u.sole_consumer(a);
    if (m1 < 0 || !is_op(g.nodes[m1], "Mul")) return false;
    const std::string o = other_input(g.nodes[m1], a);
    if (o.empty()) return false;
    const std::string& m1_out = g.nodes[m1].outputs[0];
    if (o == x) {  // (x * a) * 0.5
      const int m2 = u.sole_consumer(m1_out);
      if (m2 < 0 || scaled_operand(g, u, g.nodes[m2], 0.5) != m1_out) return false;
      m.nodes.insert(m.nodes.end(), {m1, m2});
      return true;
    }
    const auto half = scalar_for(g, u, o, a);
    if (half && near(*half, 0.5)) {  // x * (0.5 * a)
      const int m2 = u.sole_consumer(m1_out);
      if (m2 < 0 || !is_op(g.nodes[m2], "Mul") || other_input(g.nodes[m2], m1_out) != x) return false;
      m.nodes.insert(m.nodes.end(), {m1, m2});
      return true;
    }
    const int hp = u.producer_of(o);  // (0.5 * x) * a
    if (hp < 0 || u.sole_consumer(o) != m1 || scaled_operand(g, u, g.nodes[hp], 0.5) != x) return false;
    m.nodes.insert(m.nodes.end(), {hp, m1});
    return true;
  }

  // `t` (output of Erf or Tanh) feeds only Add(t, 1): returns that Add's index, or -1.
  static int one_plus(const Graph& g, const Uses& u, const std::string& t) {
    const int add = u.sole_consumer(t);
    if (add < 0 || !is_op(g.nodes[add], "Add")) return -1;
    const std::string o = other_input(g.nodes[add], t);
    const auto one = o.empty() ? std::nullopt : scalar_for(g, u, o, t);
    return one && near(*one, 1.0) ? add : -1;
  }

  static bool float_input(const Graph& g, const std::string& x) {
    const TensorType* t = g.type_of(x);
    return t && is_float(t->dtype);
  }

  // x * 0.5 * (1 + erf(x / sqrt2)), the division written as Div(x, 1.4142) or Mul(x, 0.7071).
  static std::optional<Match> match_erf(const Graph& g, const Uses& u, int erf) {
    const std::string& s = g.nodes[erf].inputs[0];
    const int sp = u.producer_of(s);
    if (sp < 0 || u.sole_consumer(s) != erf) return std::nullopt;
    Match m;
    m.x = scaled_operand(g, u, g.nodes[sp], 1.0 / std::numbers::sqrt2);
    if (m.x.empty() || !float_input(g, m.x)) return std::nullopt;
    const int add = one_plus(g, u, g.nodes[erf].outputs[0]);
    if (add < 0) return std::nullopt;
    m.nodes = {sp, erf, add};
    m.first = sp;
    m.approximate = "none";
    if (!match_tail(g, u, m.x, g.nodes[add].outputs[0], m)) return std::nullopt;
    return m;
  }

  // x^3 as Pow(x, 3), Mul(x, Mul(x, x)) or Mul(Mul(x, x), x): appends its nodes, returns success.
  static bool match_cube(const Graph& g, const Uses& u, const std::string& cube, const std::string& x, Match& m) {
    const int p = u.producer_of(cube);
    if (p < 0) return false;
    const Node& n = g.nodes[p];
    if (is_op(n, "Pow") && n.inputs.size() == 2 && n.inputs[0] == x) {
      const auto e = constant_value(g, u, n.inputs[1]);
      if (!e || e->numel() != 1 || e->rank() > 1 || e->to_double_vector()[0] != 3.0) return false;
      m.nodes.push_back(p);
      return true;
    }
    if (!is_op(n, "Mul")) return false;
    const std::string sq = other_input(n, x);
    const int sp = sq.empty() ? -1 : u.producer_of(sq);
    if (sp < 0 || u.sole_consumer(sq) != p || !is_op(g.nodes[sp], "Mul") || g.nodes[sp].inputs.size() != 2 ||
        g.nodes[sp].inputs[0] != x || g.nodes[sp].inputs[1] != x)
      return false;
    m.nodes.insert(m.nodes.end(), {sp, p});
    return true;
  }

  // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))).
  static std::optional<Match> match_tanh(const Graph& g, const Uses& u, int tanh) {
    const std::string& in = g.nodes[tanh].inputs[0];
    const int up = u.producer_of(in);
    if (up < 0 || u.sole_consumer(in) != tanh) return std::nullopt;
    const std::string v = scaled_operand(g, u, g.nodes[up], std::sqrt(2.0 / std::numbers::pi));
    const int vp = v.empty() ? -1 : u.producer_of(v);
    if (vp < 0 || u.sole_consumer(v) != up || !is_op(g.nodes[vp], "Add") || g.nodes[vp].inputs.size() != 2)
      return std::nullopt;
    // v = x + w with w = 0.044715 * x^3; either Add operand may be x.
    for (int k = 0; k < 2; ++k) {
      Match m;
      m.x = g.nodes[vp].inputs[k];
      const std::string& w = g.nodes[vp].inputs[1 - k];
      const int wp = u.producer_of(w);
      if (wp < 0 || u.sole_consumer(w) != vp || !float_input(g, m.x)) continue;
      const std::string cube = scaled_operand(g, u, g.nodes[wp], 0.044715);
      if (cube.empty() || u.sole_consumer(cube) != wp) continue;
      if (!match_cube(g, u, cube, m.x, m)) continue;
      m.nodes.insert(m.nodes.end(), {wp, vp, up, tanh});
      const int add = one_plus(g, u, g.nodes[tanh].outputs[0]);
      if (add < 0) continue;
      m.nodes.push_back(add);
      if (!match_tail(g, u, m.x, g.nodes[add].outputs[0], m)) continue;
      m.first = *std::min_element(m.nodes.begin(), m.nodes.end());
      m.approximate = "tanh";
      return m;
    }
    return std::nullopt;
  }

  // Replaces the matched nodes with kiln::Gelu at the position of the last one (its output's producer).
  static void apply(Model& model, const Match& m) {
    Graph& g = model.graph;
    std::vector<int> idx = m.nodes;
    std::sort(idx.begin(), idx.end());
    const int last = idx.back();
    Node fused;
    fused.name = g.nodes[m.first].name;
    fused.op_type = "Gelu";
    fused.domain = "kiln";
    fused.inputs = {m.x};
    fused.outputs = {g.nodes[last].outputs[0]};
    fused.attrs["approximate"] = Attribute::of_string(m.approximate);
    std::vector<const Node*> originals;
    for (int i : idx) originals.push_back(&g.nodes[i]);
    record_fusion(fused, originals);
    for (int i : idx)
      if (i != last)
        for (const auto& o : g.nodes[i].outputs) g.types.erase(o);
    g.nodes[last] = std::move(fused);
    for (auto it = idx.rbegin() + 1; it != idx.rend(); ++it) g.nodes.erase(g.nodes.begin() + *it);
    import_kiln_domain(model);
  }

  // ONNX Gelu (opset 20+) has the same semantics and attribute: only the domain changes.
  static void convert_onnx_gelu(Model& model, int i) {
    Node& n = model.graph.nodes[i];
    const Node original = n;
    n.domain = "kiln";
    if (!n.attr("approximate")) n.attrs["approximate"] = Attribute::of_string("none");
    record_fusion(n, {&original});
    import_kiln_domain(model);
  }
};

}  // namespace

std::unique_ptr<Pass> make_fuse_gelu() { return std::make_unique<FuseGelu>(); }

}  // namespace kiln
