// No-op and redundant layout changes: Reshapes to the input's own shape, chains of reshape-like
// ops ending in a Reshape (collapsed to one Reshape), and Transpose pairs (removed when they
// cancel, composed into one Transpose otherwise). A single Transpose with the identity
// permutation is removed too.
#include <algorithm>
#include <numeric>
#include <optional>
#include <unordered_set>

#include "passes/pass.h"

namespace kiln {
namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// The integer values of `value` when it is a constant: an initializer or the output of a
// Constant node (this pass runs before constant folding, so both forms occur).
std::optional<std::vector<int64_t>> const_ints(const Graph& g, const std::string& value) {
  if (value.empty()) return std::nullopt;
  const Tensor* t = nullptr;
  auto it = g.initializers.find(value);
  if (it != g.initializers.end()) {
    t = &it->second;
  } else {
    int p = g.producer_index(value);
    if (p < 0) return std::nullopt;
    const Node& c = g.nodes[static_cast<size_t>(p)];
    if (c.op_type != "Constant" || !c.domain.empty()) return std::nullopt;
    if (const Attribute* a = c.attr("value_ints")) return a->ints;
    const Attribute* a = c.attr("value");
    if (!a || a->kind != AttrKind::kTensor) return std::nullopt;
    t = &a->t;
  }
  if (!t->defined() || !dtype_is_integer(t->dtype()) || t->rank() > 1) return std::nullopt;
  return t->to_int64_vector();
}

// The permutation of a Transpose (default: reverse), or nullopt when the rank is unknown.
std::optional<std::vector<int64_t>> transpose_perm(const Graph& g, const Node& n) {
  if (const Attribute* a = n.attr("perm"); a && !a->ints.empty()) return a->ints;
  const Shape* s = shape_of(g, n.inputs[0]);
  if (!s) return std::nullopt;
  std::vector<int64_t> perm(s->size());
  std::iota(perm.rbegin(), perm.rend(), 0);
  return perm;
}

class RemoveNoopReshapes : public Pass {
 public:
  std::string_view name() const override { return "remove-noop-reshapes"; }
  int min_opt_level() const override { return 1; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    names_.clear();
    for (const auto& in : g.inputs) names_.insert(in);
    for (const auto& [n, t] : g.initializers) names_.insert(n);
    for (const Node& n : g.nodes)
      for (const auto& o : n.outputs) names_.insert(o);
    for (const auto& [n, t] : g.types) names_.insert(n);

    int rewrites = 0;
    for (size_t i = 0; i < g.nodes.size();) {
      // Each rewrite may erase nodes before i; rescanning from the start of the affected
      // region is simplest, and these graphs have a few thousand nodes at most.
      if (try_noop_reshape(g, i) || try_reshape_chain(g, i) || try_transpose(g, i)) {
        ++rewrites;
        i = i > 0 ? i - 1 : 0;
        continue;
      }
      ++i;
    }
    return rewrites;
  }

 private:
  std::unordered_set<std::string> names_;

  std::string fresh_name(const std::string& base) {
    std::string n = base;
    for (int k = 1; names_.count(n); ++k) n = base + "_" + std::to_string(k);
    names_.insert(n);
    return n;
  }

  // Consumers of `out` read `in` instead. A graph output keeps its name: then the producer of
  // `in` is renamed to `out`, which is only possible when `in` is not itself a graph input,
  // initializer or graph output.
  static bool can_forward(const Graph& g, const std::string& in, const std::string& out) {
    if (!contains(g.outputs, out)) return true;
    return !contains(g.inputs, in) && !g.is_initializer(in) && !contains(g.outputs, in);
  }
  static void forward(Graph& g, const std::string& in, const std::string& out) {
    if (contains(g.outputs, out)) {
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
  }

  // `value` feeds exactly one node input and is not a graph output.
  static bool single_use(const Graph& g, const std::string& value) {
    if (contains(g.outputs, value)) return false;
    int uses = 0;
    for (const Node& n : g.nodes)
      for (const auto& in : n.inputs)
        if (in == value) ++uses;
    return uses == 1;
  }

  static bool is_default(const Node& n, const std::string& op) { return n.op_type == op && n.domain.empty(); }

  // Reshape whose output provably has the input's shape.
  bool try_noop_reshape(Graph& g, size_t i) {
    const Node& n = g.nodes[i];
    if (!is_default(n, "Reshape") || n.inputs.size() < 2 || n.outputs.size() != 1) return false;
    const std::string in = n.inputs[0], out = n.outputs[0];
    const Shape* si = shape_of(g, in);
    const Shape* so = shape_of(g, out);
    if (!si) return false;
    bool same = so && shape_is_static(*si) && shape_is_static(*so) && *si == *so;
    if (!same) {
      // Symbolic dims: the shape input must name every dim as 0 (copy), its known size, or a
      // single -1 that can only resolve to the one remaining dim.
      auto spec = const_ints(g, n.inputs[1]);
      const bool allowzero = int_attr(n, "allowzero", 0) != 0;
      if (!spec || spec->size() != si->size()) return false;
      int minus_one = 0;
      same = true;
      for (size_t k = 0; k < spec->size() && same; ++k) {
        const int64_t s = (*spec)[k];
        const Dim& d = (*si)[k];
        if (s == 0 && !allowzero) continue;
        if (d.known() && d.value == s && s != 0) continue;
        if (d.known() && d.value == 0 && s == 0) continue;  // allowzero and a static zero dim
        if (s == -1 && ++minus_one == 1) continue;
        same = false;
      }
      // With a -1, a static zero elsewhere would make the inferred dim ambiguous.
      if (same && minus_one)
        for (const Dim& d : *si)
          if (d.known() && d.value == 0) same = false;
    }
    // Guard: the graph's interface keeps its names.
    if (!same || !can_forward(g, in, out)) return false;
    g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
    forward(g, in, out);
    return true;
  }

  // Reshape(Reshape|Flatten|Squeeze|Unsqueeze(x)) -> Reshape(x): all of them keep the row-major
  // element order, so only the final shape matters.
  bool try_reshape_chain(Graph& g, size_t i) {
    const Node& second = g.nodes[i];
    if (!is_default(second, "Reshape") || second.inputs.size() < 2 || second.outputs.size() != 1) return false;
    const std::string mid = second.inputs[0];
    const int p = g.producer_index(mid);
    if (p < 0) return false;
    const Node& first = g.nodes[static_cast<size_t>(p)];
    const bool reshape_like = is_default(first, "Reshape") || is_default(first, "Flatten") ||
                              is_default(first, "Squeeze") || is_default(first, "Unsqueeze");
    // Guards: the intermediate value has no other consumer and is not a graph output, and the
    // second Reshape does not also read it as its shape.
    if (!reshape_like || first.outputs.size() != 1 || first.inputs.empty() || first.inputs[0].empty()) return false;
    if (!single_use(g, mid) || second.inputs[1] == mid) return false;

    // The final shape, as a constant that no longer refers to the intermediate's dims.
    const bool allowzero = int_attr(second, "allowzero", 0) != 0;
    auto spec = const_ints(g, second.inputs[1]);
    std::optional<std::vector<int64_t>> new_spec;  // nullopt: keep the second's shape input
    bool keep_shape_input = false;
    if (spec && (allowzero || std::find(spec->begin(), spec->end(), 0) == spec->end())) {
      keep_shape_input = true;  // no dim is copied from the intermediate
    } else if (const Shape* so = shape_of(g, second.outputs[0]); so && shape_is_static(*so)) {
      new_spec = static_dims(*so);
      // A static zero dim under allowzero=0 would read as "copy"; keep such rare cases as is.
      if (!allowzero && std::find(new_spec->begin(), new_spec->end(), 0) != new_spec->end()) return false;
    } else if (spec) {
      // Zeros copy the intermediate's dims: substitute them where those are known.
      const Shape* sm = shape_of(g, mid);
      if (!sm) return false;
      new_spec = *spec;
      for (size_t k = 0; k < new_spec->size(); ++k) {
        if ((*new_spec)[k] != 0) continue;
        if (k >= sm->size() || !(*sm)[k].known() || (*sm)[k].value == 0) return false;
        (*new_spec)[k] = (*sm)[k].value;
      }
    } else {
      return false;
    }

    const std::string x = first.inputs[0];
    std::string shape_input = second.inputs[1];
    if (!keep_shape_input) {
      shape_input = fresh_name(second.name.empty() ? second.outputs[0] + "_shape" : second.name + "_shape");
      Tensor t = Tensor::from_vector<int64_t>({static_cast<int64_t>(new_spec->size())}, *new_spec);
      g.types[shape_input] = TensorType{DType::kI64, shape_from_dims(t.shape())};
      g.initializers.emplace(shape_input, std::move(t));
    }
    Node& s = g.nodes[i];
    s.inputs[0] = x;
    s.inputs[1] = shape_input;
    g.types.erase(mid);
    g.nodes.erase(g.nodes.begin() + p);
    return true;
  }

  // Transpose(Transpose(x)) -> x or one Transpose; a lone identity Transpose -> x.
  bool try_transpose(Graph& g, size_t i) {
    const Node& second = g.nodes[i];
    if (!is_default(second, "Transpose") || second.inputs.size() != 1 || second.outputs.size() != 1) return false;
    auto p2 = transpose_perm(g, second);
    if (!p2) return false;
    auto is_identity = [](const std::vector<int64_t>& p) {
      for (size_t k = 0; k < p.size(); ++k)
        if (p[k] != static_cast<int64_t>(k)) return false;
      return true;
    };
    const std::string out = second.outputs[0];
    if (is_identity(*p2)) {
      if (!can_forward(g, second.inputs[0], out)) return false;
      const std::string in = second.inputs[0];
      g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
      forward(g, in, out);
      return true;
    }
    const std::string mid = second.inputs[0];
    const int p = g.producer_index(mid);
    if (p < 0) return false;
    const Node& first = g.nodes[static_cast<size_t>(p)];
    if (!is_default(first, "Transpose") || first.inputs.size() != 1 || first.outputs.size() != 1) return false;
    // Guard: the intermediate has no other consumer and is not a graph output.
    if (!single_use(g, mid)) return false;
    auto p1 = transpose_perm(g, first);
    if (!p1 || p1->size() != p2->size()) return false;
    // out[j] = mid[p2[j]] = x[p1[p2[j]]].
    std::vector<int64_t> perm(p2->size());
    for (size_t j = 0; j < perm.size(); ++j) {
      const int64_t k = (*p2)[j];
      if (k < 0 || k >= static_cast<int64_t>(p1->size())) return false;
      perm[j] = (*p1)[static_cast<size_t>(k)];
    }
    const std::string x = first.inputs[0];
    if (is_identity(perm)) {
      if (!can_forward(g, x, out)) return false;
      // Erase the later node first so the earlier index stays valid.
      g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
      g.nodes.erase(g.nodes.begin() + p);
      g.types.erase(mid);
      forward(g, x, out);
      return true;
    }
    Node& s = g.nodes[i];
    s.inputs[0] = x;
    s.attrs["perm"] = Attribute::of_ints(perm);
    g.types.erase(mid);
    g.nodes.erase(g.nodes.begin() + p);
    return true;
  }
};

}  // namespace

std::unique_ptr<Pass> make_remove_noop_reshapes() { return std::make_unique<RemoveNoopReshapes>(); }

}  // namespace kiln
