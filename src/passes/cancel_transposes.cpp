// cancel-transposes: a Transpose that only reorders leading axes (the last axis stays last), whose
// result flows through row-wise ops into Transposes that undo it, is removed together with them.
// Sequence-first attention blocks are the case in point (nn.MultiheadAttention as exported by
// torch, after fuse-attention):
//
//   X [B,S,E] -> Transpose [1,0,2] -> [S,B,E] -> MatMul/FusedMatMul (packed QKV) -> Slice x3
//     -> Transpose [1,0,2] x3 -> kiln::Attention ...
//   A [B,S,E] -> Transpose [1,0,2] -> Reshape [S*B,E] -> FusedMatMul -> Reshape [S,B,E]
//     -> Transpose [1,0,2] -> ...
//
// Row-wise ops compute each row (the last axis) independently of the others, so the order of the
// leading axes does not matter to them: the region runs on X's own layout, with no transpose.
// Every value of the region is either in the permuted form (X's rank, leading dims permuted) or
// flat ([rows, C], after a Reshape that merges the leading dims); a Reshape from flat back to the
// permuted form gets X's own leading dims as its target instead.
//
// Row-wise ops: MatMul / kiln::FusedMatMul by a constant 2-D B (constant bias broadcast along the
// last axis only, no transA), Gemm on flat values, Slice on the last axis only, elementwise unary
// activations, Add/Sub/Mul/Div with a constant broadcast along the last axis only, and
// LayerNormalization over the last axis with constant scale and bias. Anything else reading a
// value of the region, a value of the region that is a graph output, or an exit that does not
// invert the entry's permutation leaves the graph unchanged.
#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "passes/pass.h"

namespace kiln {
namespace {

enum class Form { kPermuted, kFlat };

struct Region {
  size_t entry = 0;
  std::vector<int64_t> perm;
  std::vector<size_t> nodes;                                 // row-wise ops
  std::vector<size_t> exits;                                 // the inverse Transposes
  std::map<std::string, Form> values;                        // every value the region computes
  std::map<size_t, std::vector<int64_t>> reshape_targets;   // flat -> permuted Reshapes: new target
};

class Matcher {
 public:
  Matcher(const Graph& g) : g_(g), u_(g) {}

  std::optional<Region> match(size_t t) const {
    const Node& tr = g_.nodes[t];
    if (!tr.domain.empty() || tr.op_type != "Transpose" || tr.inputs.empty() || tr.outputs.size() != 1) return {};
    const Attribute* pa = tr.attr("perm");
    const Shape* xs = shape_of(g_, tr.inputs[0]);
    if (!pa || !xs || xs->size() < 3 || pa->ints.size() != xs->size()) return {};
    const std::vector<int64_t>& p = pa->ints;
    const int64_t r = static_cast<int64_t>(p.size());
    if (p.back() != r - 1) return {};
    bool identity = true;
    for (int64_t i = 0; i < r; ++i) identity = identity && p[static_cast<size_t>(i)] == i;
    if (identity) return {};
    Region reg;
    reg.entry = t;
    reg.perm = p;
    // X's leading dims, and their permuted order (what the region's Reshapes may name).
    std::vector<Dim> lead(xs->begin(), xs->end() - 1), permuted;
    for (int64_t i = 0; i + 1 < r; ++i) permuted.push_back((*xs)[static_cast<size_t>(p[static_cast<size_t>(i)])]);

    std::vector<std::pair<std::string, Form>> work = {{tr.outputs[0], Form::kPermuted}};
    std::set<size_t> seen;
    while (!work.empty()) {
      const auto [v, form] = work.back();
      work.pop_back();
      if (u_.graph_outputs.count(v)) return {};
      reg.values[v] = form;
      for (int c : u_.consumers_of(v)) {
        const size_t ci = static_cast<size_t>(c);
        if (seen.count(ci)) return {};  // read twice (two region inputs, or one input twice)
        seen.insert(ci);
        const Node& n = g_.nodes[ci];
        if (n.domain.empty() && n.op_type == "Transpose") {
          if (form != Form::kPermuted || !inverts(n, p) || n.outputs.size() != 1 ||
              u_.graph_outputs.count(n.outputs[0]))
            return {};
          reg.exits.push_back(ci);
          continue;
        }
        const auto out = row_wise(n, v, form, static_cast<int64_t>(form == Form::kFlat ? 2 : r), lead, permuted, &reg,
                                  ci);
        if (!out) return {};
        reg.nodes.push_back(ci);
        work.push_back({n.outputs[0], *out});
      }
    }
    if (reg.exits.empty()) return {};
    std::sort(reg.nodes.begin(), reg.nodes.end());
    return reg;
  }

 private:
  static bool inverts(const Node& n, const std::vector<int64_t>& p) {
    const Attribute* qa = n.attr("perm");
    if (!qa || qa->ints.size() != p.size()) return false;
    for (size_t i = 0; i < p.size(); ++i) {
      const int64_t q = qa->ints[i];
      if (q < 0 || q >= static_cast<int64_t>(p.size()) || p[static_cast<size_t>(q)] != static_cast<int64_t>(i))
        return false;
    }
    return true;
  }

  std::optional<Tensor> constant(const std::string& v) const {
    if (v.empty()) return std::nullopt;
    return constant_value(g_, u_, v);
  }
  std::optional<std::vector<int64_t>> ints(const std::string& v) const {
    const auto t = constant(v);
    if (!t || !dtype_is_integer(t->dtype()) || t->rank() > 1) return std::nullopt;
    return t->to_int64_vector();
  }
  // A constant broadcast along the last axis only (every other dim 1), of rank at most `rank`.
  bool row_constant(const std::string& v, int64_t rank) const {
    const auto t = constant(v);
    const int64_t r = static_cast<int64_t>(t ? t->rank() : 0);
    if (!t || r > rank) return false;
    for (int64_t i = 0; i + 1 < r; ++i)
      if (t->dim(i) != 1) return false;
    return true;
  }
  // True when every input other than `v` at index `at` is empty or satisfies `ok`.
  template <class F>
  static bool others(const Node& n, size_t at, F ok) {
    for (size_t i = 0; i < n.inputs.size(); ++i)
      if (i != at && !n.inputs[i].empty() && !ok(i)) return false;
    return true;
  }
  static bool single_output(const Node& n) {
    if (n.outputs.empty() || n.outputs[0].empty()) return false;
    for (size_t i = 1; i < n.outputs.size(); ++i)
      if (!n.outputs[i].empty()) return false;
    return true;
  }

  // The form of n's output when n is row-wise in its input `v` (of the given form and rank).
  std::optional<Form> row_wise(const Node& n, const std::string& v, Form form, int64_t rank,
                               const std::vector<Dim>& lead, const std::vector<Dim>& permuted, Region* reg,
                               size_t index) const {
    if (!single_output(n)) return {};
    const std::string& op = n.op_type;
    const bool onnx = n.domain.empty(), kiln = n.domain == "kiln";
    const bool first = !n.inputs.empty() && n.inputs[0] == v;
    auto const_2d = [&](size_t i) {
      const auto t = constant(n.inputs[i]);
      return t && t->rank() == 2;
    };
    if (first && ((onnx && op == "MatMul") || (kiln && op == "FusedMatMul"))) {
      if (n.inputs.size() < 2 || !const_2d(1) || int_attr(n, "transA", 0) != 0) return {};
      if (!others(n, 0, [&](size_t i) { return i == 1 || row_constant(n.inputs[i], rank); })) return {};
      return form;
    }
    if (first && onnx && op == "Gemm") {
      if (form != Form::kFlat || n.inputs.size() < 2 || !const_2d(1) || int_attr(n, "transA", 0) != 0) return {};
      if (!others(n, 0, [&](size_t i) { return i == 1 || row_constant(n.inputs[i], 2); })) return {};
      return form;
    }
    if (first && onnx && op == "Slice") {
      if (n.inputs.size() < 4) return {};
      const auto axes = ints(n.inputs[3]);
      if (!axes || axes->empty()) return {};
      for (int64_t a : *axes)
        if ((a < 0 ? a + rank : a) != rank - 1) return {};
      if (!others(n, 0, [&](size_t i) { return ints(n.inputs[i]).has_value(); })) return {};
      return form;
    }
    if (first && onnx && op == "Reshape") {
      if (n.inputs.size() != 2 || int_attr(n, "allowzero", 0) != 0) return {};
      const auto target = ints(n.inputs[1]);
      const Shape* in = shape_of(g_, v);
      const Shape* out = shape_of(g_, n.outputs[0]);
      if (!target || !in || !out || in->empty() || out->empty() || !in->back().known() ||
          !(out->back() == in->back()))
        return {};
      // Merging the leading dims: the row count stays, whatever their order (a 0 in the target
      // would copy a leading dim, which the rewrite changes).
      if (form == Form::kPermuted && out->size() == 2 &&
          std::find(target->begin(), target->end(), 0) == target->end())
        return Form::kFlat;
      if (form == Form::kFlat && out->size() == permuted.size() + 1 && target->size() == out->size()) {
        // The target must name the permuted leading dims exactly; it gets X's own.
        std::vector<int64_t> fixed;
        for (size_t i = 0; i < permuted.size(); ++i) {
          if (!permuted[i].known() || !lead[i].known() || (*target)[i] != permuted[i].value) return {};
          fixed.push_back(lead[i].value);
        }
        if (target->back() != in->back().value) return {};
        fixed.push_back(target->back());
        reg->reshape_targets[index] = fixed;
        return Form::kPermuted;
      }
      return {};
    }
    static const std::set<std::string> kUnary = {"Relu", "Sigmoid", "Tanh", "Erf", "Gelu", "Abs", "Neg", "Sqrt", "Exp"};
    if (first && ((onnx && kUnary.count(op)) || (kiln && op == "Gelu"))) {
      if (n.inputs.size() != 1) return {};
      return form;
    }
    if (onnx && (op == "Add" || op == "Sub" || op == "Mul" || op == "Div") && n.inputs.size() == 2) {
      const size_t at = n.inputs[0] == v ? 0 : 1;
      if (n.inputs[at] != v || n.inputs[1 - at] == v || !row_constant(n.inputs[1 - at], rank)) return {};
      return form;
    }
    if (first && (onnx || kiln) && op == "LayerNormalization") {
      const int64_t axis = int_attr(n, "axis", -1);
      if ((axis < 0 ? axis + rank : axis) != rank - 1) return {};
      if (!others(n, 0, [&](size_t i) { return i <= 2 && row_constant(n.inputs[i], 1); })) return {};
      return form;
    }
    return {};
  }

  const Graph& g_;
  UseIndex u_;
};

class CancelTransposes : public Pass {
 public:
  std::string_view name() const override { return "cancel-transposes"; }
  int min_opt_level() const override { return 2; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    int rewrites = 0;
    // One region at a time: each rewrite removes Transposes, so this ends.
    for (bool changed = true; changed;) {
      changed = false;
      std::optional<Region> reg;
      {
        const Matcher m(g);
        for (size_t i = 0; i < g.nodes.size() && !reg; ++i) reg = m.match(i);
      }
      if (!reg) break;
      apply(g, *reg);
      ++rewrites;
      changed = true;
    }
    return rewrites;
  }

 private:
  static void apply(Graph& g, const Region& reg) {
    const Node entry = g.nodes[reg.entry];
    const std::string x = entry.inputs[0];
    const Shape lead_shape = *g.type_of(x)->shape;
    NameGen fresh(g);
    // The region's values in the permuted form take X's leading dims.
    for (const auto& [v, form] : reg.values) {
      if (form != Form::kPermuted || v == entry.outputs[0]) continue;
      auto it = g.types.find(v);
      if (it == g.types.end() || !it->second.shape) continue;
      Shape s(lead_shape.begin(), lead_shape.end() - 1);
      s.push_back(it->second.shape->back());
      it->second.shape = s;
    }
    for (const auto& [i, target] : reg.reshape_targets) {
      Node& r = g.nodes[i];
      const std::string name = fresh((r.name.empty() ? r.outputs[0] : r.name) + "/shape");
      g.initializers[name] = Tensor::from_vector<int64_t>({static_cast<int64_t>(target.size())}, target);
      g.types[name] = TensorType{DType::kI64, Shape{Dim(static_cast<int64_t>(target.size()))}};
      r.inputs[1] = name;
    }
    replace_uses(g, entry.outputs[0], x);
    std::set<size_t> erase = {reg.entry};
    for (size_t e : reg.exits) {
      const Node& t = g.nodes[e];
      replace_uses(g, t.outputs[0], t.inputs[0]);
      erase.insert(e);
    }
    std::vector<Node> kept;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      if (erase.count(i)) {
        g.types.erase(g.nodes[i].outputs[0]);
        continue;
      }
      kept.push_back(std::move(g.nodes[i]));
    }
    g.nodes = std::move(kept);
  }
};

}  // namespace

std::unique_ptr<Pass> make_cancel_transposes() { return std::make_unique<CancelTransposes>(); }

}  // namespace kiln
