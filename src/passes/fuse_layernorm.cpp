// fuse-layernorm: the decomposed layer normalization PyTorch/TF emit (ReduceMean, Sub, Pow or Mul,
// ReduceMean, Add eps, Sqrt, Div [, Mul scale] [, Add bias]) and ONNX LayerNormalization nodes whose
// only used output is Y become kiln::LayerNormalization, the one op backends implement.
#include <algorithm>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "passes/pass.h"

namespace kiln {
namespace {

using Uses = UseIndex;

bool is_op(const Node& n, const char* op) { return n.domain.empty() && n.op_type == op; }

bool is_float(DType dt) { return dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16 || dt == DType::kF64; }

// For a two-input node, the input that is not `known` (or "" when neither or both are).
std::string other_input(const Node& n, const std::string& known) {
  if (n.inputs.size() != 2) return "";
  if (n.inputs[0] == known && n.inputs[1] != known) return n.inputs[1];
  if (n.inputs[1] == known && n.inputs[0] != known) return n.inputs[0];
  return "";
}

class FuseLayernorm : public Pass {
 public:
  std::string_view name() const override { return "fuse-layernorm"; }
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
        if (is_op(n, "LayerNormalization")) {
          changed = convert_onnx_layernorm(model, u, i);
        } else if (is_op(n, "Div")) {
          if (std::optional<Match> m = match_decomposed(model, u, i)) {
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
    std::string x, scale, bias;  // scale/bias "" when the pattern has none
    int64_t axis = -1;           // negative: the first normalized axis counted from the end
    float epsilon = 1e-5f;
    std::vector<int> nodes;
  };

  // The trailing axes a keepdims ReduceMean over `x` normalizes, as a count k (axes -k..-1), or
  // nullopt when the node is not such a reduction.
  static std::optional<int64_t> trailing_axes(const Model& model, const Uses& u, const Node& rm) {
    if (!is_op(rm, "ReduceMean") || rm.inputs.empty()) return std::nullopt;
    const int64_t opset = model.default_opset();
    const OpSchema* schema = OpRegistry::global().find("", "ReduceMean", opset);
    if (!schema) return std::nullopt;
    const NodeView view(rm, *schema, opset);
    if (view.attr_int("keepdims") != 1) return std::nullopt;
    std::vector<int64_t> axes;
    if (opset < 18) {
      axes = view.attr_ints("axes");
    } else if (rm.inputs.size() > 1 && !rm.inputs[1].empty()) {
      const auto t = constant_value(model.graph, u, rm.inputs[1]);
      if (!t || !dtype_is_integer(t->dtype())) return std::nullopt;
      axes = t->to_int64_vector();
    }
    const TensorType* xt = model.graph.type_of(rm.inputs[0]);
    const int64_t rank = xt && xt->shape ? static_cast<int64_t>(xt->shape->size()) : -1;  // -1: unknown
    if (axes.empty()) {
      // No axes: all of them (unless opset 18's noop_with_empty_axes makes it an identity).
      if (rank <= 0 || (opset >= 18 && view.attr_int("noop_with_empty_axes") != 0)) return std::nullopt;
      return rank;
    }
    for (auto& a : axes) {
      if (a >= 0) {
        if (rank < 0 || a >= rank) return std::nullopt;
        a -= rank;
      } else if (rank >= 0 && a < -rank) {
        return std::nullopt;
      }
    }
    std::sort(axes.begin(), axes.end());
    const int64_t k = static_cast<int64_t>(axes.size());
    for (int64_t j = 0; j < k; ++j)
      if (axes[j] != j - k) return std::nullopt;  // not exactly -k..-1
    return k;
  }

  // A constant operand (scale or bias) that broadcasts to x in one direction, so multiplying or
  // adding it keeps x's shape: every dim is 1 or equals x's (known) dim at that position.
  static bool keeps_shape(const Graph& g, const Tensor& c, const std::string& x, int64_t k) {
    const TensorType* xt = g.type_of(x);
    if (!xt || c.dtype() != xt->dtype) return false;
    const size_t r = c.rank();
    if (xt->shape ? r > xt->shape->size() : r > static_cast<size_t>(k)) return false;
    for (size_t i = 0; i < r; ++i) {
      if (c.dim(i) == 1) continue;
      if (!xt->shape) return false;
      const Dim& d = (*xt->shape)[xt->shape->size() - r + i];
      if (!d.known() || d.value != c.dim(i)) return false;
    }
    return true;
  }

  // Anchored at Div(d, std): walks up to X and down through the optional scale and bias.
  static std::optional<Match> match_decomposed(const Model& model, const Uses& u, int div) {
    const Graph& g = model.graph;
    const Node& dn = g.nodes[div];
    if (dn.inputs.size() != 2) return std::nullopt;
    const std::string& d = dn.inputs[0];
    const std::string& sd = dn.inputs[1];
    // std = Sqrt(var + eps)
    const int sqrt_i = u.producer_of(sd);
    if (sqrt_i < 0 || !is_op(g.nodes[sqrt_i], "Sqrt") || u.sole_consumer(sd) != div) return std::nullopt;
    const std::string& ve = g.nodes[sqrt_i].inputs[0];
    const int add_eps = u.producer_of(ve);
    if (add_eps < 0 || !is_op(g.nodes[add_eps], "Add") || u.sole_consumer(ve) != sqrt_i) return std::nullopt;
    // var = ReduceMean(d^2); eps is the other Add operand.
    std::string var, eps_name;
    for (const auto& in : g.nodes[add_eps].inputs) {
      const int p = u.producer_of(in);
      if (p >= 0 && is_op(g.nodes[p], "ReduceMean") && var.empty()) var = in;
      else eps_name = in;
    }
    if (var.empty() || eps_name.empty() || u.sole_consumer(var) != add_eps) return std::nullopt;
    const auto eps = constant_value(g, u, eps_name);
    // One element of rank <= 1 leaves var's shape (rank >= 1) unchanged.
    if (!eps || eps->numel() != 1 || eps->rank() > 1 || !is_float(eps->dtype())) return std::nullopt;
    const int rm_var = u.producer_of(var);
    const std::string& sq = g.nodes[rm_var].inputs[0];
    const int sq_i = u.producer_of(sq);
    if (sq_i < 0 || u.sole_consumer(sq) != rm_var) return std::nullopt;
    // The square: Pow(d2, 2) or Mul(d2, d2).
    const Node& sqn = g.nodes[sq_i];
    if (sqn.inputs.size() != 2) return std::nullopt;
    const std::string& d2 = sqn.inputs[0];
    if (is_op(sqn, "Pow")) {
      const auto e = constant_value(g, u, sqn.inputs[1]);
      if (!e || e->numel() != 1 || e->rank() > 1 || e->to_double_vector()[0] != 2.0) return std::nullopt;
    } else if (!is_op(sqn, "Mul") || sqn.inputs[1] != d2) {
      return std::nullopt;
    }
    // d = Sub(X, mean). Either one Sub feeds both the square and the Div, or (as some exporters
    // emit) two identical Subs feed one each.
    const int sub = u.producer_of(d);
    if (sub < 0 || !is_op(g.nodes[sub], "Sub") || g.nodes[sub].inputs.size() != 2 || u.graph_outputs.count(d))
      return std::nullopt;
    Match m;
    m.x = g.nodes[sub].inputs[0];
    const std::string& mean = g.nodes[sub].inputs[1];
    std::vector<int> mean_users = {sub};
    if (d2 == d) {
      std::vector<int> d_users = u.consumers_of(d);
      std::sort(d_users.begin(), d_users.end());
      if (d_users != std::vector<int>{std::min(sq_i, div), std::max(sq_i, div)}) return std::nullopt;
    } else {
      const int sub2 = u.producer_of(d2);
      if (sub2 < 0 || !is_op(g.nodes[sub2], "Sub") || g.nodes[sub2].inputs != g.nodes[sub].inputs ||
          u.sole_consumer(d2) != sq_i || u.sole_consumer(d) != div)
        return std::nullopt;
      mean_users = {std::min(sub, sub2), std::max(sub, sub2)};
      m.nodes.push_back(sub2);
    }
    const int rm_mean = u.producer_of(mean);
    if (rm_mean < 0 || u.graph_outputs.count(mean) || u.consumers_of(mean) != mean_users ||
        g.nodes[rm_mean].inputs.empty() || g.nodes[rm_mean].inputs[0] != m.x)
      return std::nullopt;
    const TensorType* xt = g.type_of(m.x);
    if (!xt || !is_float(xt->dtype) || eps->dtype() != xt->dtype) return std::nullopt;
    // Both means over the same trailing axes.
    const auto k_mean = trailing_axes(model, u, g.nodes[rm_mean]);
    const auto k_var = trailing_axes(model, u, g.nodes[rm_var]);
    if (!k_mean || !k_var || *k_mean != *k_var) return std::nullopt;
    m.axis = -*k_mean;
    m.epsilon = static_cast<float>(eps->to_double_vector()[0]);
    m.nodes.insert(m.nodes.begin(), {rm_mean, sub});
    m.nodes.insert(m.nodes.end(), {sq_i, rm_var, add_eps, sqrt_i, div});
    // Optional Mul(scale) then optional Add(bias), each a constant that keeps X's shape.
    std::string tail = dn.outputs[0];
    for (const char* op : {"Mul", "Add"}) {
      const int next = u.sole_consumer(tail);
      if (next < 0 || !is_op(g.nodes[next], op)) continue;
      const std::string c = other_input(g.nodes[next], tail);
      const auto t = c.empty() ? std::nullopt : constant_value(g, u, c);
      if (!t || !keeps_shape(g, *t, m.x, *k_mean)) continue;
      (std::string(op) == "Mul" ? m.scale : m.bias) = c;
      m.nodes.push_back(next);
      tail = g.nodes[next].outputs[0];
    }
    return m;
  }

  // kiln::LayerNormalization replaces the matched nodes at the position of the last one.
  static void apply(Model& model, Match& m) {
    Graph& g = model.graph;
    std::vector<int> idx = m.nodes;
    std::sort(idx.begin(), idx.end());
    const int last = idx.back();
    if (m.scale.empty()) {
      // Scale is required: without a Mul the scale is one (a fresh one-element initializer, which
      // broadcasts to X).
      std::string name = g.nodes[m.nodes.front()].name + "_ones";
      while (g.initializers.count(name) || g.types.count(name)) name += "_";
      dispatch_float(g.type_of(m.x)->dtype, [&](auto tag) {
        using T = decltype(tag);
        g.initializers[name] = Tensor::from_vector<T>({1}, {static_cast<T>(1.0f)});
      });
      g.types[name] = TensorType{g.initializers[name].dtype(), Shape{Dim(1)}};
      m.scale = name;
    }
    Node fused;
    fused.name = g.nodes[m.nodes.front()].name;
    fused.op_type = "LayerNormalization";
    fused.domain = "kiln";
    fused.inputs = {m.x, m.scale};
    if (!m.bias.empty()) fused.inputs.push_back(m.bias);
    fused.outputs = {g.nodes[last].outputs[0]};
    fused.attrs["axis"] = Attribute::of_int(m.axis);
    fused.attrs["epsilon"] = Attribute::of_float(m.epsilon);
    std::vector<const Node*> originals;
    for (int i : m.nodes) originals.push_back(&g.nodes[i]);
    record_fusion(fused, originals);
    for (int i : idx)
      if (i != last)
        for (const auto& o : g.nodes[i].outputs) g.types.erase(o);
    g.nodes[last] = std::move(fused);
    for (auto it = idx.rbegin() + 1; it != idx.rend(); ++it) g.nodes.erase(g.nodes.begin() + *it);
    import_kiln_domain(model);
  }

  // ONNX LayerNormalization computes the same Y; it converts when Mean and InvStdDev are unused
  // (kiln::LayerNormalization has no such outputs) and X is a float tensor.
  static bool convert_onnx_layernorm(Model& model, const Uses& u, int i) {
    Node& n = model.graph.nodes[i];
    for (size_t k = 1; k < n.outputs.size(); ++k)
      if (!u.unused(n.outputs[k])) return false;
    const TensorType* xt = n.inputs.empty() ? nullptr : model.graph.type_of(n.inputs[0]);
    if (!xt || !is_float(xt->dtype)) return false;
    const Node original = n;
    for (size_t k = 1; k < n.outputs.size(); ++k)
      if (!n.outputs[k].empty()) model.graph.types.erase(n.outputs[k]);
    n.outputs.resize(1);
    n.domain = "kiln";
    // stash_type only sets the precision of the statistics; the reference computes them in double
    // either way, and Kiln's backends choose their own accumulation precision.
    n.attrs.erase("stash_type");
    record_fusion(n, {&original});
    import_kiln_domain(model);
    return true;
  }
};

}  // namespace

std::unique_ptr<Pass> make_fuse_layernorm() { return std::make_unique<FuseLayernorm>(); }

}  // namespace kiln
