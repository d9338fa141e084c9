// fold-batchnorm: an inference-mode BatchNormalization, y = x * s + t with s = scale / sqrt(var + eps)
// and t = B - mean * s, is folded into the constant weights and bias of the Conv, ConvTranspose,
// Gemm or MatMul that produces x (MatMul becomes a Gemm, which carries the bias).
// decompose-batchnorm (after it): one that no producer absorbed (DenseNet's, after a Concat) becomes
// Mul(x, s) and Add(., t) with s and t constants of shape [C, 1, ...], which fuse-elementwise-chains
// then merges with its neighbours (the ReLU after it) into one pass over memory.
#include <array>
#include <cmath>
#include <optional>
#include <unordered_set>

#include "passes/pass.h"

namespace kiln {
namespace {

bool is_float(DType dt) { return dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16 || dt == DType::kF64; }

// The constant value of `name`: an initializer, or the tensor of a Constant node.
std::optional<Tensor> constant_of(const Graph& g, const std::string& name) {
  if (name.empty()) return std::nullopt;
  auto it = g.initializers.find(name);
  if (it != g.initializers.end()) return it->second;
  const int p = g.producer_index(name);
  if (p < 0) return std::nullopt;
  const Node& n = g.nodes[static_cast<size_t>(p)];
  if (n.op_type != "Constant" || !n.domain.empty()) return std::nullopt;
  const Attribute* v = n.attr("value");
  if (!v || v->kind != AttrKind::kTensor) return std::nullopt;
  return v->t;
}

Tensor tensor_from_doubles(DType dt, const std::vector<int64_t>& shape, const std::vector<double>& values) {
  Tensor t(dt, shape);
  dispatch_float(dt, [&](auto tag) {
    using T = decltype(tag);
    T* p = t.mutable_data<T>();
    for (size_t i = 0; i < values.size(); ++i) p[i] = static_cast<T>(static_cast<compute_t<T>>(values[i]));
  });
  return t;
}


// A new initializer (and its type) named after `base`.
std::string add_initializer(Graph& g, NameGen& names, const std::string& base, Tensor t) {
  const std::string name = names.make(base);
  g.types[name] = TensorType{t.dtype(), shape_from_dims(t.shape())};
  g.initializers[name] = std::move(t);
  return name;
}

using Affine = BatchnormAffine;

// batchnorm_affine() with the graph's use counts already made.
std::optional<Affine> batchnorm_affine(const Graph& g, const Node& bn,
                                       const std::unordered_map<std::string, int>& uses) {
  if (bn.inputs.size() != 5 || bn.outputs.empty() || bn.outputs[0].empty()) return std::nullopt;
  if (const Attribute* a = bn.attr("training_mode"); a && a->i != 0) return std::nullopt;
  if (const Attribute* a = bn.attr("spatial"); a && a->i == 0) return std::nullopt;
  for (size_t k = 1; k < bn.outputs.size(); ++k)
    if (!bn.outputs[k].empty() && uses.count(bn.outputs[k])) return std::nullopt;
  const TensorType* xt = g.type_of(bn.inputs[0]);
  if (!xt || !is_float(xt->dtype) || !xt->shape || xt->shape->size() < 2) return std::nullopt;
  const Dim& channels = (*xt->shape)[1];
  if (!channels.known()) return std::nullopt;
  const int64_t c = channels.value;
  std::vector<std::vector<double>> stats;
  for (size_t k = 1; k < 5; ++k) {
    auto v = constant_of(g, bn.inputs[k]);
    if (!v || v->dtype() != xt->dtype || v->numel() != c) return std::nullopt;
    stats.push_back(v->to_double_vector());
  }
  const Attribute* eps_attr = bn.attr("epsilon");
  const double eps = eps_attr ? eps_attr->f : 1e-5;
  Affine f{std::vector<double>(static_cast<size_t>(c)), std::vector<double>(static_cast<size_t>(c))};
  for (int64_t k = 0; k < c; ++k) {
    const double var = stats[3][k] + eps;
    if (!(var > 0)) return std::nullopt;  // a non-positive variance would make the rewrite (and the op) meaningless
    f.s[k] = stats[0][k] / std::sqrt(var);
    f.t[k] = stats[1][k] - stats[2][k] * f.s[k];
  }
  return f;
}

class FoldBatchnorm : public Pass {
 public:
  std::string_view name() const override { return "fold-batchnorm"; }
  int min_opt_level() const override { return 1; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    NameGen names(g);
    int folded = 0;
    for (size_t i = 0; i < g.nodes.size();) {
      if (g.nodes[i].op_type == "BatchNormalization" && g.nodes[i].domain.empty() && try_fold(model, i, names)) {
        ++folded;  // the BatchNormalization at i is gone; i now holds its successor
        continue;
      }
      ++i;
    }
    return folded;
  }

 private:
  // Folds the BatchNormalization at `bn_index` into its producer; false (graph unchanged) when a
  // guard fails.
  static bool try_fold(Model& model, size_t bn_index, NameGen& names) {
    Graph& g = model.graph;
    const Node& bn = g.nodes[bn_index];
    // Guards on the BatchNormalization (inference mode with only Y used, constant per-channel
    // statistics), and its affine form.
    const auto uses = count_uses(g);
    const std::optional<Affine> f = batchnorm_affine(g, bn, uses);
    if (!f) return false;
    const std::string& x = bn.inputs[0];
    const DType dt = g.type_of(x)->dtype;
    // Guards on the producer: one of the foldable ops, and x is used by this BatchNormalization only
    // (and is not a graph output), since x itself disappears.
    const int p_index = g.producer_index(x);
    if (p_index < 0) return false;
    const Node& p = g.nodes[static_cast<size_t>(p_index)];
    if (!p.domain.empty() || p.outputs.size() != 1 || p.outputs[0] != x) return false;
    if (p.op_type != "Conv" && p.op_type != "ConvTranspose" && p.op_type != "Gemm" && p.op_type != "MatMul")
      return false;
    auto it = uses.find(x);
    if (it == uses.end() || it->second != 1) return false;

    std::optional<Node> rewritten;
    if (p.op_type == "Conv" || p.op_type == "ConvTranspose")
      rewritten = fold_conv(g, p, *f, dt, names);
    else if (p.op_type == "Gemm")
      rewritten = fold_gemm(model, p, *f, dt, names);
    else
      rewritten = fold_matmul(model, p, *f, dt, names);
    if (!rewritten) return false;

    // The producer now computes the BatchNormalization's output directly.
    rewritten->outputs[0] = bn.outputs[0];
    for (size_t k = 1; k < bn.outputs.size(); ++k)
      if (!bn.outputs[k].empty()) g.types.erase(bn.outputs[k]);
    g.types.erase(x);
    g.nodes[static_cast<size_t>(p_index)] = std::move(*rewritten);
    g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(bn_index));
    return true;
  }

  // Conv: W [M, C/group, k...], output channel m = W's row m.
  // ConvTranspose: W [C, M/group, k...], output channel of W[c, j] = (c / (C/group)) * (M/group) + j.
  static std::optional<Node> fold_conv(Graph& g, const Node& p, const Affine& f, DType dt, NameGen& names) {
    const bool transpose = p.op_type == "ConvTranspose";
    auto w = constant_of(g, p.inputs.size() > 1 ? p.inputs[1] : "");
    if (!w || w->dtype() != dt || w->rank() < 3) return std::nullopt;
    const int64_t c = static_cast<int64_t>(f.s.size());
    const Attribute* group_attr = p.attr("group");
    const int64_t group = group_attr ? group_attr->i : 1;
    if (group < 1) return std::nullopt;
    const int64_t maps = transpose ? w->dim(1) * group : w->dim(0);
    if (maps != c || (transpose && w->dim(0) % group != 0)) return std::nullopt;
    std::vector<double> bias(c, 0.0);
    if (p.inputs.size() > 2 && !p.inputs[2].empty()) {
      auto b = constant_of(g, p.inputs[2]);
      if (!b || b->dtype() != dt || b->numel() != c) return std::nullopt;
      bias = b->to_double_vector();
    }

    std::vector<double> wv = w->to_double_vector();
    const int64_t inner = w->numel() / (w->dim(0) * w->dim(1));  // kernel elements
    const int64_t in_per_group = w->dim(0) / group, maps_per_group = w->dim(1);
    for (int64_t r = 0; r < w->dim(0); ++r)
      for (int64_t j = 0; j < w->dim(1); ++j) {
        const int64_t m = transpose ? (r / in_per_group) * maps_per_group + j : r;
        double* row = wv.data() + (r * w->dim(1) + j) * inner;
        for (int64_t k = 0; k < inner; ++k) row[k] *= f.s[m];
      }
    for (int64_t m = 0; m < c; ++m) bias[m] = bias[m] * f.s[m] + f.t[m];

    Node out = p;
    out.inputs.resize(3);
    out.inputs[1] = add_initializer(g, names, p.inputs[1] + "_bnfold", tensor_from_doubles(dt, w->shape(), wv));
    out.inputs[2] = add_initializer(g, names, (p.name.empty() ? p.inputs[1] : p.name) + "_bias_bnfold",
                                    tensor_from_doubles(dt, {c}, bias));
    return out;
  }

  // Scales the N output columns of a 2-D weight: [K, N], or [N, K] when transposed.
  static Tensor scale_columns(const Tensor& w, bool trans, const std::vector<double>& s, DType dt) {
    std::vector<double> v = w.to_double_vector();
    const int64_t rows = w.dim(0), cols = w.dim(1);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < cols; ++k) v[r * cols + k] *= s[trans ? r : k];
    return tensor_from_doubles(dt, w.shape(), v);
  }

  // Gemm: Y = alpha * A' B' + beta * C, N = B' columns. Y*s + t = alpha * A' (B' s) + (beta * C * s + t),
  // so the new C is beta * C * s + t (broadcast to [rows, N] or [N]) and beta becomes 1.
  static std::optional<Node> fold_gemm(Model& model, const Node& p, const Affine& f, DType dt, NameGen& names) {
    Graph& g = model.graph;
    if (p.inputs.size() < 2) return std::nullopt;
    auto w = constant_of(g, p.inputs[1]);
    if (!w || w->dtype() != dt || w->rank() != 2) return std::nullopt;
    const Attribute* tb = p.attr("transB");
    const bool trans = tb && tb->i != 0;
    const int64_t n = static_cast<int64_t>(f.s.size());
    if ((trans ? w->dim(0) : w->dim(1)) != n) return std::nullopt;
    const Attribute* beta_attr = p.attr("beta");
    const double beta = beta_attr ? beta_attr->f : 1.0;
    std::vector<int64_t> c_shape = {n};
    std::vector<double> c_vals(n, 0.0);
    if (p.inputs.size() > 2 && !p.inputs[2].empty()) {
      auto cv = constant_of(g, p.inputs[2]);
      if (!cv || cv->dtype() != dt || cv->rank() > 2) return std::nullopt;
      const int64_t last = cv->rank() == 0 ? 1 : cv->dim(cv->rank() - 1);
      if (last != 1 && last != n) return std::nullopt;  // C must broadcast along N
      const int64_t rows = cv->rank() == 2 ? cv->dim(0) : 1;
      if (cv->rank() == 2) c_shape = {rows, n};
      const std::vector<double> src = cv->to_double_vector();
      c_vals.assign(static_cast<size_t>(rows * n), 0.0);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < n; ++k) c_vals[r * n + k] = beta * src[r * last + (last == 1 ? 0 : k)];
    }
    for (size_t idx = 0; idx < c_vals.size(); ++idx) {
      const size_t k = idx % static_cast<size_t>(n);
      c_vals[idx] = c_vals[idx] * f.s[k] + f.t[k];
    }
    Node out = p;
    out.inputs.resize(3);
    out.inputs[1] = add_initializer(g, names, p.inputs[1] + "_bnfold", scale_columns(*w, trans, f.s, dt));
    out.inputs[2] = add_initializer(g, names, (p.name.empty() ? p.inputs[1] : p.name) + "_bias_bnfold",
                                    tensor_from_doubles(dt, c_shape, c_vals));
    out.attrs["beta"] = Attribute::of_float(1.0f);
    if (model.default_opset() < 7)
      out.attrs["broadcast"] = Attribute::of_int(1);  // Gemm-1..6 broadcast C only on request
    return out;
  }

  // MatMul A [M, K] x W [K, N]: BatchNormalization's channel axis (dim 1) is the last axis only for a
  // 2-D product, which a Gemm expresses with the folded bias as C.
  static std::optional<Node> fold_matmul(Model& model, const Node& p, const Affine& f, DType dt, NameGen& names) {
    Graph& g = model.graph;
    if (p.inputs.size() != 2) return std::nullopt;
    const TensorType* at = g.type_of(p.inputs[0]);
    if (!at || !at->shape || at->shape->size() != 2) return std::nullopt;
    auto w = constant_of(g, p.inputs[1]);
    if (!w || w->dtype() != dt || w->rank() != 2 || w->dim(1) != static_cast<int64_t>(f.s.size())) return std::nullopt;
    Node out;
    out.name = p.name;
    out.op_type = "Gemm";
    out.inputs = {p.inputs[0], add_initializer(g, names, p.inputs[1] + "_bnfold", scale_columns(*w, false, f.s, dt)),
                  add_initializer(g, names, (p.name.empty() ? p.inputs[1] : p.name) + "_bias_bnfold",
                                  tensor_from_doubles(dt, {w->dim(1)}, f.t))};
    out.outputs = p.outputs;
    if (model.default_opset() < 7) out.attrs["broadcast"] = Attribute::of_int(1);
    return out;
  }
};

class DecomposeBatchnorm : public Pass {
 public:
  std::string_view name() const override { return "decompose-batchnorm"; }
  int min_opt_level() const override { return 1; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    NameGen names(g);
    int done = 0;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const Node& bn = g.nodes[i];
      if (bn.op_type != "BatchNormalization" || !bn.domain.empty()) continue;
      std::optional<std::array<Node, 2>> parts = decompose(g, bn, names);
      if (!parts) continue;
      if (model.default_opset() < 7)  // before multidirectional broadcasting
        for (Node& p : *parts) p.attrs["broadcast"] = Attribute::of_int(1);
      g.nodes[i] = std::move((*parts)[0]);
      g.nodes.insert(g.nodes.begin() + static_cast<std::ptrdiff_t>(i) + 1, std::move((*parts)[1]));
      ++i;
      ++done;
    }
    return done;
  }

 private:
  static std::optional<std::array<Node, 2>> decompose(Graph& g, const Node& bn, NameGen& names) {
    const std::optional<Affine> f = batchnorm_affine(g, bn, count_uses(g));
    if (!f) return std::nullopt;
    const TensorType* xt = g.type_of(bn.inputs[0]);
    const DType dt = xt->dtype;
    const int64_t c = static_cast<int64_t>(f->s.size());
    const std::vector<double>& s = f->s;
    const std::vector<double>& t = f->t;
    // [C, 1, ...]: broadcast against x's dims after the channel (x's rank minus one).
    std::vector<int64_t> shape(xt->shape->size() - 1, 1);
    shape[0] = c;
    const std::string sn = add_initializer(g, names, bn.name + "_scale", tensor_from_doubles(dt, shape, s));
    const std::string tn = add_initializer(g, names, bn.name + "_shift", tensor_from_doubles(dt, shape, t));
    const std::string scaled = names.make(bn.outputs[0] + "_scaled");
    g.types[scaled] = *xt;
    for (size_t k = 1; k < bn.outputs.size(); ++k)
      if (!bn.outputs[k].empty()) g.types.erase(bn.outputs[k]);
    Node mul{bn.name + "_mul", "Mul", "", {bn.inputs[0], sn}, {scaled}, {}};
    Node addn{bn.name + "_add", "Add", "", {scaled, tn}, {bn.outputs[0]}, {}};
    return std::array<Node, 2>{std::move(mul), std::move(addn)};
  }
};

}  // namespace

std::optional<BatchnormAffine> batchnorm_affine(const Graph& g, const Node& bn) {
  return batchnorm_affine(g, bn, count_uses(g));
}

std::unique_ptr<Pass> make_fold_batchnorm() { return std::make_unique<FoldBatchnorm>(); }
std::unique_ptr<Pass> make_decompose_batchnorm() { return std::make_unique<DecomposeBatchnorm>(); }

}  // namespace kiln
