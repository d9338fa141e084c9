// fuse-attention: the multi-head attention subgraph of HF-style BERT/GPT exports and of torch's
// nn.MultiheadAttention (ViT) becomes one kiln::Attention node:
//   Q/K/V projections -> Reshape (split heads) -> Transpose -> [scalar scale] -> MatMul(Q, K^T)
//   -> [scalar scale] -> [+ mask | Where(cond, -inf, .)]* -> Softmax(last axis) -> MatMul(P, V)
//   -> Transpose -> Reshape (merge heads)
// Two layouts are recognised:
//   BSHD      (HF): proj [B,S,H*D] -> Reshape [B,S,H,D] -> Transpose [0,2,1,3]; K either
//                   Transpose [0,2,3,1] or [0,2,1,3] then [0,1,3,2]; output Transpose [0,2,1,3].
//   seq-first (torch MHA): proj [S,B,H*D] -> Reshape [S,B*H,D] -> Transpose [1,0,2]; K either
//                   Transpose [1,2,0] or [1,0,2] then [0,2,1]; output Transpose [1,0,2]. The fused
//                   node gets [B,S,H*D] views through inserted Transposes. torch 2.x views the
//                   heads as [B,H,S,D] (Reshape) before SDPA: then K is Transpose [0,1,3,2] of
//                   that view and the output Transpose is [2,0,1,3] (-> [S,B,H,D]).
// Scales may sit on Q, on K (torch SDPA scales both by d^-0.25) or on the scores, before any mask.
// Where-masks with a fill of -inf (or <= -1e30, e.g. finfo.min) become additive masks
// Where(cond, fill, 0): adding such a fill gives the same softmax as replacing by it.
#include <algorithm>
#include <cmath>
#include <optional>
#include <unordered_set>

#include "passes/pass.h"

namespace kiln {
namespace {

bool is_float(DType dt) { return dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16 || dt == DType::kF64; }

// Dims proven equal: the same known size or the same symbol.
bool same_dim(const Dim& a, const Dim& b) {
  if (a.known() || b.known()) return a.known() && b.known() && a.value == b.value;
  return !a.symbol.empty() && a.symbol == b.symbol;
}

bool is_one(const Dim& d) { return d.known() && d.value == 1; }

enum class Layout { kBSHD, kSeqFirst };

// One of Q, K, V: the projection output (kept) and the head-split nodes above it (removed).
struct HeadInput {
  std::string proj;
  Layout layout = Layout::kBSHD;
  // Seq-first heads viewed as [B, H, S, D] before the products (torch 2.x's
  // multi_head_attention_forward, which calls scaled_dot_product_attention on 4-D views).
  bool view4 = false;
  int64_t heads = 0, head_size = 0;
  double scale = 1;
  std::vector<size_t> nodes;
};

// An additive mask, or a Where-mask turned into one.
struct Mask {
  std::string value;             // additive mask (when !is_where)
  bool is_where = false;
  std::string cond, fill;        // Where(cond, fill, scores) or Where(cond, scores, fill)
  bool fill_when_true = true;
};

struct Match {
  HeadInput q, k, v;
  double scale = 1;                // scale on the scores (times q.scale * k.scale)
  std::vector<Mask> masks;
  std::vector<size_t> nodes;       // scores chain, Softmax, P·V, output Transpose
  size_t qk = 0;                   // the Q·K^T MatMul
  size_t out_reshape = 0;          // the head-merging Reshape
  bool direct = false;             // the Reshape's output is exactly kiln::Attention's
};

class Matcher {
 public:
  explicit Matcher(const Model& m) : g_(m.graph), opset_(m.default_opset()), uses_(count_uses(m.graph)) {
    for (size_t i = 0; i < g_.nodes.size(); ++i) {
      for (const auto& o : g_.nodes[i].outputs)
        if (!o.empty()) producer_[o] = i;
      for (const auto& in : g_.nodes[i].inputs)
        if (!in.empty()) consumers_[in].push_back(i);
    }
    graph_outputs_.insert(g_.outputs.begin(), g_.outputs.end());
  }

  std::optional<Match> match(size_t softmax) const {
    const Node& sm = g_.nodes[softmax];
    if (!is_op(sm, "Softmax") || sm.inputs.size() != 1 || sm.outputs.size() != 1) return std::nullopt;
    const TensorType* st = g_.type_of(sm.inputs[0]);
    if (!st || !st->shape || !is_float(st->dtype)) return std::nullopt;
    const Shape& scores_in = *st->shape;
    const int64_t rank = static_cast<int64_t>(scores_in.size());
    if (rank != 3 && rank != 4) return std::nullopt;
    const Layout scores_layout = rank == 4 ? Layout::kBSHD : Layout::kSeqFirst;
    // Guard: softmax over the last axis (before opset 13 the coerced-2-D form, same thing).
    const Attribute* ax = sm.attr("axis");
    int64_t axis = ax ? ax->i : (opset_ >= 13 ? -1 : 1);
    if (axis < 0) axis += rank;
    if (axis != rank - 1) return std::nullopt;

    Match m;
    m.nodes.push_back(softmax);
    // Guard: scores = [masks](scale(Q·K^T)), every intermediate single-consumer.
    if (!match_scores(sm.inputs[0], m, true)) return std::nullopt;
    const Node& qk = g_.nodes[m.qk];
    // The masks are checked against Q·K^T's shape, which the Softmax input would show enlarged.
    const TensorType* qkt = g_.type_of(qk.outputs[0]);
    if (!qkt || !qkt->shape || qkt->shape->size() != scores_in.size() || qkt->dtype != st->dtype) return std::nullopt;
    const Shape& scores = *qkt->shape;
    auto q = match_head(qk.inputs[0], 'q');
    auto k = match_head(qk.inputs[1], 'k');
    if (!q || !k) return std::nullopt;
    // torch 2.x's seq-first heads viewed as 4-D: rank-4 scores, seq-first projections. Masks are not
    // taken in this form (none of its exporters adds one to a 4-D view here).
    const bool view4 = rank == 4 && q->view4;
    const Layout layout = view4 ? Layout::kSeqFirst : scores_layout;
    if (view4 && !m.masks.empty()) return std::nullopt;

    // P·V, then the head merge.
    const std::string& p = sm.outputs[0];
    const Node* pv = single_consumer(p, "MatMul");
    if (!pv || pv->inputs.size() != 2 || pv->inputs[0] != p || pv->inputs[1] == p) return std::nullopt;
    auto v = match_head(pv->inputs[1], 'v');
    if (!v) return std::nullopt;
    m.nodes.push_back(index_of(pv));
    const Node* tr = single_consumer(pv->outputs[0], "Transpose");
    const std::vector<int64_t> merge_perm = view4                      ? std::vector<int64_t>{2, 0, 1, 3}
                                            : layout == Layout::kBSHD ? std::vector<int64_t>{0, 2, 1, 3}
                                                                      : std::vector<int64_t>{1, 0, 2};
    if (!tr || perm(*tr) != merge_perm) return std::nullopt;
    m.nodes.push_back(index_of(tr));
    const Node* rs = single_consumer(tr->outputs[0], "Reshape");
    if (!rs || rs->inputs.size() < 2 || rs->inputs[0] != tr->outputs[0]) return std::nullopt;
    m.out_reshape = index_of(rs);

    // Guard: one layout, consistent head counts and sizes, one float dtype.
    if (q->layout != layout || k->layout != layout || v->layout != layout) return std::nullopt;
    if (q->view4 != view4 || k->view4 != view4 || v->view4 != view4) return std::nullopt;
    if (q->heads != k->heads || q->heads != v->heads || q->head_size != k->head_size) return std::nullopt;
    const TensorType* qt = g_.type_of(q->proj);
    const TensorType* kt = g_.type_of(k->proj);
    const TensorType* vt = g_.type_of(v->proj);
    if (!qt || !kt || !vt || qt->dtype != st->dtype || kt->dtype != st->dtype || vt->dtype != st->dtype)
      return std::nullopt;
    // Guard: batch sizes and K/V sequence lengths not known to differ (MatMul would broadcast them).
    const size_t bdim = layout == Layout::kBSHD ? 0 : 1, sdim = 1 - bdim;
    auto conflict = [](const Dim& a, const Dim& b) { return a.known() && b.known() && a.value != b.value; };
    if (conflict((*qt->shape)[bdim], (*kt->shape)[bdim]) || conflict((*qt->shape)[bdim], (*vt->shape)[bdim]) ||
        conflict((*kt->shape)[sdim], (*vt->shape)[sdim]))
      return std::nullopt;
    // Guard: masks broadcast to the scores without enlarging them.
    for (const Mask& mk : m.masks) {
      if (mk.is_where) {
        if (opset_ < 9 || !fits_scores(mk.cond, DType::kBool, scores, layout) ||
            !fits_scores(mk.fill, st->dtype, scores, layout))
          return std::nullopt;
      } else if (!fits_scores(mk.value, st->dtype, scores, layout)) {
        return std::nullopt;
      }
    }
    const double scale = m.scale * q->scale * k->scale;
    if (!std::isfinite(scale) || scale == 0 || !std::isfinite(static_cast<float>(scale))) return std::nullopt;

    // The merge Reshape: dropped when its output is exactly [B, Sq, H*Dv]; otherwise kept on the
    // fused output, which must then not change what its 0 ("copy") entries copy.
    const Shape& qs = *qt->shape;
    const TensorType* yt = g_.type_of(rs->outputs[0]);
    m.direct = layout == Layout::kBSHD && yt && yt->shape && yt->shape->size() == 3 &&
               same_dim((*yt->shape)[0], qs[0]) && same_dim((*yt->shape)[1], qs[1]) && (*yt->shape)[2].known() &&
               (*yt->shape)[2].value == v->heads * v->head_size;
    if (!m.direct) {
      const Tensor* target = constant(rs->inputs[1]);
      if (!target) return std::nullopt;
      const bool allowzero = rs->attr("allowzero") && rs->attr("allowzero")->i != 0;
      const std::vector<int64_t> t = target->to_int64_vector();
      const size_t same_prefix = layout == Layout::kBSHD ? 2 : 1;  // dims the fused output shares
      for (size_t i = 0; i < t.size(); ++i)
        if (t[i] == 0 && !allowzero && i >= same_prefix) return std::nullopt;
    }
    m.q = std::move(*q);
    m.k = std::move(*k);
    m.v = std::move(*v);
    return m;
  }

 private:
  static bool is_op(const Node& n, const char* op) { return n.domain.empty() && n.op_type == op; }
  static std::vector<int64_t> perm(const Node& n) {
    const Attribute* a = n.attr("perm");
    return a ? a->ints : std::vector<int64_t>{};
  }
  size_t index_of(const Node* n) const { return static_cast<size_t>(n - g_.nodes.data()); }

  // A value that only one node reads and that is not a graph output: safe to remove.
  bool intermediate(const std::string& v) const {
    auto it = uses_.find(v);
    return it != uses_.end() && it->second == 1 && !graph_outputs_.count(v);
  }
  // The node of type `op` producing intermediate value v, or nullptr.
  const Node* producer(const std::string& v, const char* op) const {
    auto it = producer_.find(v);
    if (it == producer_.end() || !intermediate(v)) return nullptr;
    const Node& n = g_.nodes[it->second];
    return is_op(n, op) ? &n : nullptr;
  }
  // The only consumer of intermediate value v, if it is of type `op`.
  const Node* single_consumer(const std::string& v, const char* op) const {
    auto it = consumers_.find(v);
    if (!intermediate(v) || it == consumers_.end() || it->second.size() != 1) return nullptr;
    const Node& n = g_.nodes[it->second[0]];
    return is_op(n, op) ? &n : nullptr;
  }

  // An initializer or a Constant node's value.
  const Tensor* constant(const std::string& v) const {
    auto it = g_.initializers.find(v);
    if (it != g_.initializers.end()) return &it->second;
    auto p = producer_.find(v);
    if (p == producer_.end()) return nullptr;
    const Node& n = g_.nodes[p->second];
    const Attribute* a = n.attr("value");
    return is_op(n, "Constant") && a && a->kind == AttrKind::kTensor ? &a->t : nullptr;
  }
  std::optional<double> scalar(const std::string& v) const {
    const Tensor* t = constant(v);
    if (!t || t->numel() != 1 || !is_float(t->dtype())) return std::nullopt;
    return t->to_double_vector()[0];
  }
  // A Where fill that acts like -inf under softmax: -inf itself or a huge negative (finfo.min).
  bool is_mask_fill(const std::string& v) const {
    const Tensor* t = constant(v);
    if (!t || t->numel() == 0 || !is_float(t->dtype())) return false;
    for (double x : t->to_double_vector())
      if (!(x <= -1e30)) return false;
    return true;
  }

  // If v is produced by Mul/Div with a scalar float constant, returns the other operand and
  // multiplies `scale` by the factor; else nullopt.
  std::optional<std::string> peel_scale(const std::string& v, double& scale, std::vector<size_t>& nodes) const {
    const Node* n = producer(v, "Mul");
    if (!n) n = producer(v, "Div");
    if (!n || n->inputs.size() != 2) return std::nullopt;
    if (n->op_type == "Mul") {
      for (int side : {1, 0})
        if (auto c = scalar(n->inputs[side])) {
          scale *= *c;
          nodes.push_back(index_of(n));
          return n->inputs[1 - side];
        }
      return std::nullopt;
    }
    auto c = scalar(n->inputs[1]);
    if (!c || *c == 0) return std::nullopt;
    scale /= *c;
    nodes.push_back(index_of(n));
    return n->inputs[0];
  }
  std::string peel_all(std::string v, double& scale, std::vector<size_t>& nodes) const {
    while (auto next = peel_scale(v, scale, nodes)) v = *next;
    return v;
  }

  // Walks from the Softmax input back to Q·K^T: masks first, then scales (a scale after a mask
  // would scale the mask too).
  bool match_scores(const std::string& v, Match& m, bool allow_mask) const {
    if (const Node* mm = producer(v, "MatMul"); mm && mm->inputs.size() == 2) {
      m.qk = index_of(mm);
      m.nodes.push_back(m.qk);
      return true;
    }
    {
      Match t = m;
      if (auto next = peel_scale(v, t.scale, t.nodes)) {
        if (!match_scores(*next, t, false)) return false;
        m = std::move(t);
        return true;
      }
    }
    if (!allow_mask) return false;
    if (const Node* add = producer(v, "Add"); add && add->inputs.size() == 2) {
      for (int side : {0, 1}) {
        Match t = m;
        t.nodes.push_back(index_of(add));
        t.masks.push_back(Mask{.value = add->inputs[1 - side]});
        if (match_scores(add->inputs[side], t, true)) {
          m = std::move(t);
          return true;
        }
      }
      return false;
    }
    if (const Node* w = producer(v, "Where"); w && w->inputs.size() == 3) {
      for (int side : {2, 1}) {  // the scores operand
        const std::string& fill = w->inputs[side == 2 ? 1 : 2];
        if (!is_mask_fill(fill)) continue;
        Match t = m;
        t.nodes.push_back(index_of(w));
        t.masks.push_back(Mask{.is_where = true, .cond = w->inputs[0], .fill = fill, .fill_when_true = side == 2});
        if (match_scores(w->inputs[side], t, true)) {
          m = std::move(t);
          return true;
        }
      }
    }
    return false;
  }

  // Q ('q'), K ('k') or V ('v') from the MatMul operand back to the head-splitting Reshape.
  std::optional<HeadInput> match_head(std::string v, char role) const {
    HeadInput h;
    using P = std::vector<int64_t>;
    if (role != 'v') v = peel_all(v, h.scale, h.nodes);
    // torch 2.x: Q and V are 4-D views of the seq-first heads.
    if (role != 'k') {
      if (const Node* view = seq_first_view(v)) {
        h.nodes.push_back(index_of(view));
        v = view->inputs[0];
        h.view4 = true;
      }
    }
    const Node* t = producer(v, "Transpose");
    if (!t) return std::nullopt;
    const std::vector<int64_t> p = perm(*t);
    h.nodes.push_back(index_of(t));
    if (h.view4 && p != P{1, 0, 2}) return std::nullopt;
    if (role == 'k' && p == P{0, 1, 3, 2}) {
      // K^T of the 4-D view (torch 2.x), possibly scaled in between.
      const std::string u = peel_all(t->inputs[0], h.scale, h.nodes);
      if (const Node* view = seq_first_view(u)) {
        h.nodes.push_back(index_of(view));
        const Node* t2 = producer(view->inputs[0], "Transpose");
        if (!t2 || perm(*t2) != P{1, 0, 2}) return std::nullopt;
        h.nodes.push_back(index_of(t2));
        h.view4 = true;
        h.layout = Layout::kSeqFirst;
        std::string w = peel_all(t2->inputs[0], h.scale, h.nodes);
        const Node* r = producer(w, "Reshape");
        if (!r || r->inputs.size() < 2 || !head_split(*r, h)) return std::nullopt;
        h.nodes.push_back(index_of(r));
        h.proj = r->inputs[0];
        return h;
      }
    }
    if (h.view4) {
      h.layout = Layout::kSeqFirst;
    } else if (role != 'k' && p == P{0, 2, 1, 3}) {
      h.layout = Layout::kBSHD;
    } else if (role != 'k' && p == P{1, 0, 2}) {
      h.layout = Layout::kSeqFirst;
    } else if (role == 'k' && p == P{0, 2, 3, 1}) {
      h.layout = Layout::kBSHD;
    } else if (role == 'k' && p == P{1, 2, 0}) {
      h.layout = Layout::kSeqFirst;
    } else if (role == 'k' && (p == P{0, 1, 3, 2} || p == P{0, 2, 1})) {
      // K transposed into heads first, then its last two dims swapped (torch SDPA's k.transpose(-2, -1)).
      h.layout = p.size() == 4 ? Layout::kBSHD : Layout::kSeqFirst;
      const std::string u = peel_all(t->inputs[0], h.scale, h.nodes);
      t = producer(u, "Transpose");
      if (!t || perm(*t) != (p.size() == 4 ? P{0, 2, 1, 3} : P{1, 0, 2})) return std::nullopt;
      h.nodes.push_back(index_of(t));
    } else {
      return std::nullopt;
    }
    std::string u = t->inputs[0];
    if (role != 'v') u = peel_all(u, h.scale, h.nodes);
    const Node* r = producer(u, "Reshape");
    if (!r || r->inputs.size() < 2 || !head_split(*r, h)) return std::nullopt;
    h.nodes.push_back(index_of(r));
    h.proj = r->inputs[0];
    return h;
  }

  // The Reshape producing v when it views seq-first heads [B*H, S, D] as [B, H, S, D] (from the
  // inferred types: B*H = B * H, S and D kept), else nullptr.
  const Node* seq_first_view(const std::string& v) const {
    const Node* r = producer(v, "Reshape");
    if (!r || r->inputs.empty()) return nullptr;
    const TensorType* xt = g_.type_of(r->inputs[0]);
    const TensorType* yt = g_.type_of(r->outputs[0]);
    if (!xt || !yt || !xt->shape || !yt->shape || xt->shape->size() != 3 || yt->shape->size() != 4) return nullptr;
    const Shape& x = *xt->shape;
    const Shape& y = *yt->shape;
    if (!y[1].known() || y[1].value <= 0 || !same_dim(x[1], y[2]) || !same_dim(x[2], y[3])) return nullptr;
    if (x[0].known() && y[0].known() && x[0].value != y[0].value * y[1].value) return nullptr;
    if (!(x[0].known() && y[0].known())) return nullptr;  // B*H = B * H must be provable
    return r;
  }

  // Guard: Reshape r splits the heads of a [d0, d1, E] projection as h.layout says:
  //   BSHD:      [d0, d1, H, D] with H*D = E;   seq-first: [d0, d1*H, D] with H*D = E.
  // Proven from a constant target (0 / -1 entries resolved against the input's dims), or else
  // from the inferred output type.
  bool head_split(const Node& r, HeadInput& h) const {
    const TensorType* xt = g_.type_of(r.inputs[0]);
    if (!xt || !xt->shape || xt->shape->size() != 3 || !is_float(xt->dtype)) return false;
    const Shape& x = *xt->shape;
    if (!x[2].known() || x[2].value <= 0) return false;
    const int64_t e = x[2].value;
    const bool bshd = h.layout == Layout::kBSHD;
    if (const Tensor* target = constant(r.inputs[1])) {
      const std::vector<int64_t> t = target->to_int64_vector();
      const bool allowzero = r.attr("allowzero") && r.attr("allowzero")->i != 0;
      auto copies = [&](size_t k) { return (t[k] == 0 && !allowzero) || (x[k].known() && t[k] == x[k].value); };
      if (bshd) {
        if (t.size() != 4) return false;
        if (t[2] > 0 && t[3] > 0) {
          // With H*D = E, one leading entry copying its dim forces the other (numel is preserved).
          const bool lead = (copies(0) && (copies(1) || t[1] == -1)) || (copies(1) && t[0] == -1);
          if (t[2] * t[3] != e || !lead) return false;
          h.heads = t[2];
          h.head_size = t[3];
        } else if (copies(0) && copies(1) && t[2] > 0 && t[3] == -1 && e % t[2] == 0) {
          h.heads = t[2];
          h.head_size = e / t[2];
        } else if (copies(0) && copies(1) && t[2] == -1 && t[3] > 0 && e % t[3] == 0) {
          h.heads = e / t[3];
          h.head_size = t[3];
        } else {
          return false;
        }
        return true;
      }
      if (t.size() != 3 || !copies(0) || t[2] <= 0 || e % t[2] != 0) return false;
      h.head_size = t[2];
      h.heads = e / t[2];
      return t[1] == -1 || (x[1].known() && t[1] == x[1].value * h.heads);
    }
    const TensorType* yt = g_.type_of(r.outputs[0]);
    if (!yt || !yt->shape) return false;
    const Shape& y = *yt->shape;
    if (bshd) {
      if (y.size() != 4 || !y[2].known() || !y[3].known() || y[2].value * y[3].value != e || y[2].value <= 0 ||
          !same_dim(y[0], x[0]) || !same_dim(y[1], x[1]))
        return false;
      h.heads = y[2].value;
      h.head_size = y[3].value;
      return true;
    }
    if (y.size() != 3 || !y[2].known() || y[2].value <= 0 || e % y[2].value != 0 || !same_dim(y[0], x[0])) return false;
    h.head_size = y[2].value;
    h.heads = e / h.head_size;
    return x[1].known() && y[1].known() && y[1].value == x[1].value * h.heads;
  }

  // Guard: v (of dtype dt) broadcasts onto the scores without enlarging them, and maps onto
  // kiln::Attention's [B, H, Sq, Sk] (in the seq-first layout the scores are [B*H, Sq, Sk], so a
  // rank-3 mask must have a leading 1).
  bool fits_scores(const std::string& v, DType dt, const Shape& scores, Layout layout) const {
    const TensorType* t = g_.type_of(v);
    if (!t || !t->shape || t->dtype != dt) return false;
    const Shape& s = *t->shape;
    if (s.size() > scores.size()) return false;
    if (layout == Layout::kSeqFirst && s.size() == 3 && !is_one(s[0])) return false;
    for (size_t i = 0; i < s.size(); ++i)
      if (!is_one(s[i]) && !same_dim(s[i], scores[scores.size() - s.size() + i])) return false;
    return true;
  }

  const Graph& g_;
  int64_t opset_;
  std::unordered_map<std::string, int> uses_;
  std::unordered_map<std::string, size_t> producer_;
  std::unordered_map<std::string, std::vector<size_t>> consumers_;
  std::unordered_set<std::string> graph_outputs_;
};


// Sets the types of a new node's outputs that have none yet, from its schema.
void infer_new_node(Model& model, const Node& n) {
  Graph& g = model.graph;
  auto it = model.opsets.find(canonical_domain(n.domain));
  const int64_t opset = it == model.opsets.end() ? 0 : it->second;
  const OpSchema* schema = OpRegistry::global().find(n.domain, n.op_type, opset);
  if (!schema || !schema->infer) return;
  static const TensorType kUnknown;
  std::vector<const TensorType*> types;
  std::vector<const Tensor*> values;
  for (const auto& in : n.inputs) {
    const TensorType* t = in.empty() ? nullptr : g.type_of(in);
    types.push_back(in.empty() ? nullptr : (t ? t : &kUnknown));
    auto c = g.initializers.find(in);
    values.push_back(c == g.initializers.end() ? nullptr : &c->second);
  }
  InferContext ctx(n, *schema, opset, types, values);
  schema->infer(ctx);
  for (size_t i = 0; i < n.outputs.size(); ++i)
    if (!n.outputs[i].empty() && ctx.outputs()[i] && !g.types.count(n.outputs[i]))
      g.types[n.outputs[i]] = *ctx.outputs()[i];
}

Node make_node(std::string name, std::string op, std::vector<std::string> in, std::vector<std::string> out) {
  Node n;
  n.name = std::move(name);
  n.op_type = std::move(op);
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  return n;
}

class FuseAttention : public Pass {
 public:
  std::string_view name() const override { return "fuse-attention"; }
  int min_opt_level() const override { return 2; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    std::vector<Match> matches;
    {
      const Matcher matcher(model);
      for (size_t i = 0; i < g.nodes.size(); ++i)
        if (auto m = matcher.match(i)) matches.push_back(std::move(*m));
    }
    if (matches.empty()) return 0;
    // Matches are disjoint: every node they remove has a single consumer inside its match.
    NameGen fresh(g);
    std::vector<bool> erase(g.nodes.size(), false);
    std::unordered_map<size_t, std::vector<Node>> insert_at;  // new nodes go where the merge Reshape was
    std::vector<Node> added;
    for (const Match& m : matches) {
      std::vector<size_t> removed = m.nodes;
      for (const HeadInput* h : {&m.q, &m.k, &m.v}) removed.insert(removed.end(), h->nodes.begin(), h->nodes.end());
      if (m.direct) removed.push_back(m.out_reshape);
      std::sort(removed.begin(), removed.end());
      removed.erase(std::unique(removed.begin(), removed.end()), removed.end());
      const std::string base = g.nodes[removed.front()].name.empty() ? "attention" : g.nodes[removed.front()].name;
      const Node& merge = g.nodes[m.out_reshape];
      const DType dt = g.type_of(m.q.proj)->dtype;
      std::vector<Node> nodes;

      // Q, K, V as [B, S, H*D]: the seq-first layout needs them transposed.
      std::unordered_map<std::string, std::string> bsd;
      auto as_bsd = [&](const std::string& proj, const char* what) {
        if (m.q.layout == Layout::kBSHD) return proj;
        auto it = bsd.find(proj);
        if (it != bsd.end()) return it->second;
        Node t = make_node(base + "/" + what + "_to_bsd", "Transpose", {proj}, {fresh(proj + "_bsd")});
        t.attrs["perm"] = Attribute::of_ints({1, 0, 2});
        nodes.push_back(t);
        return bsd[proj] = t.outputs[0];
      };
      const std::string q = as_bsd(m.q.proj, "q"), k = as_bsd(m.k.proj, "k"), v = as_bsd(m.v.proj, "v");

      // One additive mask: Where-masks become Where(cond, fill, 0); several masks are summed.
      std::string mask;
      for (const Mask& mk : m.masks) {
        std::string part = mk.value;
        if (mk.is_where) {
          const std::string zero = fresh(base + "/mask_zero");
          g.initializers[zero] = Tensor(dt, {});
          g.types[zero] = TensorType{dt, Shape{}};
          part = fresh(base + "/additive_mask");
          nodes.push_back(make_node(base + "/additive_mask", "Where",
                                    {mk.cond, mk.fill_when_true ? mk.fill : zero, mk.fill_when_true ? zero : mk.fill},
                                    {part}));
        }
        if (!mask.empty()) {
          const std::string sum = fresh(base + "/mask_sum");
          nodes.push_back(make_node(base + "/mask_sum", "Add", {mask, part}, {sum}));
          part = sum;
        }
        mask = part;
      }

      Node att = make_node(base, "Attention", {q, k, v}, {m.direct ? merge.outputs[0] : fresh(base + "/attention")});
      att.domain = "kiln";
      if (!mask.empty()) att.inputs.push_back(mask);
      att.attrs["num_heads"] = Attribute::of_int(m.q.heads);
      att.attrs["scale"] = Attribute::of_float(static_cast<float>(m.scale * m.q.scale * m.k.scale));
      std::vector<const Node*> originals;
      for (size_t i : removed) originals.push_back(&g.nodes[i]);
      record_fusion(att, originals);
      nodes.push_back(att);
      if (!m.direct) {
        // Keep the merge Reshape on the fused output ([S,B,H*D] in the seq-first layout).
        std::string y = att.outputs[0];
        if (m.q.layout == Layout::kSeqFirst) {
          Node t = make_node(base + "/to_sbd", "Transpose", {y}, {fresh(base + "/attention_sbd")});
          t.attrs["perm"] = Attribute::of_ints({1, 0, 2});
          nodes.push_back(t);
          y = t.outputs[0];
        }
        Node r = merge;
        r.inputs[0] = y;
        nodes.push_back(r);
        removed.push_back(m.out_reshape);  // replaced by the rewired copy
      }
      for (size_t i : removed) erase[i] = true;
      auto& slot = insert_at[m.out_reshape];
      slot.insert(slot.end(), nodes.begin(), nodes.end());
    }

    std::vector<Node> out;
    std::unordered_set<std::string> produced;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      auto it = insert_at.find(i);
      if (it != insert_at.end()) {
        for (Node& n : it->second) {
          produced.insert(n.outputs.begin(), n.outputs.end());
          added.push_back(n);
          out.push_back(std::move(n));
        }
      }
      if (erase[i]) continue;
      out.push_back(std::move(g.nodes[i]));
    }
    // Drop the types of values that no longer exist.
    for (size_t i = 0; i < g.nodes.size(); ++i)
      if (erase[i])
        for (const auto& o : g.nodes[i].outputs)
          if (!produced.count(o)) g.types.erase(o);
    g.nodes = std::move(out);
    import_kiln_domain(model);
    for (const Node& n : added) infer_new_node(model, n);
    return static_cast<int>(matches.size());
  }
};

}  // namespace

std::unique_ptr<Pass> make_fuse_attention() { return std::make_unique<FuseAttention>(); }

}  // namespace kiln
