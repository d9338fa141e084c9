// split-packed-projections: torch 2.x exports nn.MultiheadAttention's packed in-projection
// X [.., P*E] (P = 3: Q, K, V) split as
//
//   Reshape(X) [.., P, E] -> Unsqueeze(axes 0) [1, .., P, E] -> Transpose [P, .., 1, E]
//     -> Squeeze(the 1) [P, .., E] -> Gather(axis 0, k) [.., E]          (k = 0 .. P-1)
//
// which copies the whole projection once through the Transpose and once more per Gather. Each
// Gather is X's column range [k*E, (k+1)*E): it becomes one Slice of X on the last axis, which
// backends run as a view or a strided copy, and which later passes (cancel-transposes) and the
// GPU lowering (attention reading Q, K and V in place) understand. The chain before the Gathers is
// left to dead-node elimination once no Gather reads it.
//
// Guards: every step as above, exactly (the perm moves the P axis to the front and the unsqueezed
// axis to P's place), static P and E with P*E equal to X's last dim, X's leading dims equal to the
// Reshape's (known or named), a constant scalar index in [-P, P).
#include <optional>
#include <set>

#include "passes/pass.h"

namespace kiln {
namespace {

// The axes of an Unsqueeze/Squeeze: the attribute (before opset 13) or the constant input.
std::optional<std::vector<int64_t>> axes_of(const Graph& g, const UseIndex& u, const Node& n) {
  if (const Attribute* a = n.attr("axes")) return a->ints;
  if (n.inputs.size() < 2 || n.inputs[1].empty()) return std::nullopt;
  const auto t = constant_value(g, u, n.inputs[1]);
  if (!t || !dtype_is_integer(t->dtype()) || t->rank() > 1) return std::nullopt;
  return t->to_int64_vector();
}

// The single default-domain producer of `v` with op `op`, or null.
const Node* producer(const Graph& g, const UseIndex& u, const std::string& v, const char* op) {
  const int p = u.producer_of(v);
  if (p < 0) return nullptr;
  const Node& n = g.nodes[static_cast<size_t>(p)];
  return n.domain.empty() && n.op_type == op && !n.inputs.empty() ? &n : nullptr;
}

bool same_dim(const Dim& a, const Dim& b) { return (a.known() || !a.symbol.empty()) && a == b; }

struct Split {
  std::string x;     // the packed projection
  int64_t axis = 0;  // its last axis
  int64_t begin = 0, end = 0;
  std::vector<std::string> chain;  // the outputs of the Reshape, Unsqueeze, Transpose and Squeeze
};

// The Slice a Gather amounts to, or nullopt when the chain is not exactly the packed split.
std::optional<Split> match(const Graph& g, const UseIndex& u, const Node& gather) {
  if (!gather.domain.empty() || gather.op_type != "Gather" || gather.inputs.size() != 2) return std::nullopt;
  if (const Attribute* a = gather.attr("axis"); a && a->i != 0) return std::nullopt;
  const auto index = constant_value(g, u, gather.inputs[1]);
  if (!index || !dtype_is_integer(index->dtype()) || index->rank() != 0) return std::nullopt;
  const Node* squeeze = producer(g, u, gather.inputs[0], "Squeeze");
  const Node* transpose = squeeze ? producer(g, u, squeeze->inputs[0], "Transpose") : nullptr;
  const Node* unsqueeze = transpose ? producer(g, u, transpose->inputs[0], "Unsqueeze") : nullptr;
  const Node* reshape = unsqueeze ? producer(g, u, unsqueeze->inputs[0], "Reshape") : nullptr;
  if (!reshape) return std::nullopt;
  const Shape* xs = shape_of(g, reshape->inputs[0]);
  const Shape* rs = shape_of(g, reshape->outputs[0]);
  if (!xs || !rs || xs->empty() || rs->size() != xs->size() + 1) return std::nullopt;
  const int64_t n = static_cast<int64_t>(xs->size()) - 1;  // leading dims
  for (int64_t i = 0; i < n; ++i)
    if (!same_dim((*xs)[static_cast<size_t>(i)], (*rs)[static_cast<size_t>(i)])) return std::nullopt;
  const Dim& pd = (*rs)[static_cast<size_t>(n)];
  const Dim& ed = (*rs)[static_cast<size_t>(n) + 1];
  if (!pd.known() || !ed.known() || !xs->back().known() || pd.value * ed.value != xs->back().value) return std::nullopt;
  // Unsqueeze at the front: [1, d.., P, E], rank n + 3.
  const auto ua = axes_of(g, u, *unsqueeze);
  if (!ua || ua->size() != 1 || (*ua)[0] != 0) return std::nullopt;
  // Transpose: P to the front, the 1 to P's place.
  const Attribute* perm = transpose->attr("perm");
  if (!perm || perm->ints.size() != static_cast<size_t>(n + 3)) return std::nullopt;
  for (int64_t i = 0; i < n + 3; ++i) {
    const int64_t want = i == 0 ? n + 1 : i == n + 1 ? 0 : i;
    if (perm->ints[static_cast<size_t>(i)] != want) return std::nullopt;
  }
  // Squeeze of that axis: [P, d.., E].
  const auto sa = axes_of(g, u, *squeeze);
  if (!sa || sa->size() != 1 || ((*sa)[0] != n + 1 && (*sa)[0] != -2)) return std::nullopt;
  int64_t k = index->to_int64_vector()[0];
  if (k < -pd.value || k >= pd.value) return std::nullopt;
  if (k < 0) k += pd.value;
  return Split{reshape->inputs[0], n, k * ed.value, (k + 1) * ed.value,
               {reshape->outputs[0], unsqueeze->outputs[0], transpose->outputs[0], squeeze->outputs[0]}};
}

class SplitPackedProjections : public Pass {
 public:
  std::string_view name() const override { return "split-packed-projections"; }
  int min_opt_level() const override { return 2; }

  int run(Model& model, PassContext&) override {
    if (model.default_opset() < 10) return 0;  // Slice takes its bounds as inputs from opset 10
    Graph& g = model.graph;
    const UseIndex u(g);
    NameGen fresh(g);
    int rewrites = 0;
    std::set<std::string> chains;
    for (Node& n : g.nodes) {
      const auto s = match(g, u, n);
      if (!s) continue;
      chains.insert(s->chain.begin(), s->chain.end());
      const std::string base = n.name.empty() ? n.outputs[0] : n.name;
      auto constant = [&](const char* what, int64_t v) {
        const std::string name = fresh(base + "/" + what);
        g.initializers[name] = Tensor::from_vector<int64_t>({1}, {v});
        g.types[name] = TensorType{DType::kI64, Shape{Dim(1)}};
        return name;
      };
      Node slice;
      slice.name = base;
      slice.op_type = "Slice";
      slice.inputs = {s->x, constant("starts", s->begin), constant("ends", s->end), constant("axes", s->axis)};
      slice.outputs = n.outputs;
      n = std::move(slice);
      ++rewrites;
    }
    // The split chains no Gather reads any more go now, so that later passes see the projection's
    // real readers (cancel-transposes needs them all row-wise).
    for (bool removed = true; removed;) {
      removed = false;
      const auto uses = count_uses(g);
      for (size_t i = g.nodes.size(); i-- > 0;) {
        const Node& n = g.nodes[i];
        if (n.outputs.size() != 1 || !chains.count(n.outputs[0]) || uses.count(n.outputs[0])) continue;
        g.types.erase(n.outputs[0]);
        g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
        removed = true;
      }
    }
    return rewrites;
  }
};

}  // namespace

std::unique_ptr<Pass> make_split_packed_projections() { return std::make_unique<SplitPackedProjections>(); }

}  // namespace kiln
