// fuse-qdq: turns QuantizeLinear/DequantizeLinear patterns into int8 kernels, for explicit Q/DQ
// models (ONNX Runtime's quantization tool, PyTorch) and for Kiln's own calibrated INT8, which
// inserts the same pairs (src/quant/qdq.cpp). It runs after the float fusions, so it sees
//
//   DQ(xq) -> FusedConv(W = DQ(wq), B, Z = DQ(zq)?) -> [Q]       => kiln::QConv(xq, wq, B, zq?)
//   DQ(aq) -> FusedMatMul / MatMul (B = DQ(bq)) -> [Q]            => kiln::QMatMul(aq, bq, C)
//   DQ(xq) -> MaxPool -> Q (same scale and zero point)            => MaxPool(xq) in int8
//
// A trailing Q that is the op's only consumer becomes the op's requantized int8 output, so int8
// stays between layers; otherwise the op outputs float32. Guards: activations per-tensor with
// constant scale and zero point; weights constant int8 with zero point 0, per-tensor or per output
// channel. Anything else stays as Q/DQ ops, which are correct, only slower.
//
// Before matching, identical QuantizeLinear nodes of one tensor merge (the insertion makes one per
// consumer) and DequantizeLinear of non-8-bit constants (int32 biases) fold to float. After it,
// DequantizeLinear of constants left over fold to float weights and dead Q/DQ nodes go.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>

#include "passes/pass.h"

namespace kiln {

// Reads scale/zero point when both are constants and valid; nullopt otherwise.
std::optional<QParams> qparams(const Graph& g, const UseIndex& u, const Node& n) {
  if (!n.domain.empty() || (n.op_type != "QuantizeLinear" && n.op_type != "DequantizeLinear")) return std::nullopt;
  if (n.inputs.size() < 2 || n.outputs.empty()) return std::nullopt;
  if (const Attribute* b = n.attr("block_size"); b && b->i != 0) return std::nullopt;
  const auto s = constant_value(g, u, n.inputs[1]);
  if (!s || s->dtype() != DType::kF32 || s->rank() > 1 || s->numel() < 1) return std::nullopt;
  QParams q;
  q.scale.assign(s->data<float>(), s->data<float>() + s->numel());
  for (float v : q.scale)
    if (!(v > 0.f) || !std::isfinite(v)) return std::nullopt;
  const bool quantize = n.op_type == "QuantizeLinear";
  const TensorType* qt = g.type_of(quantize ? n.outputs[0] : n.inputs[0]);
  if (!qt) return std::nullopt;
  q.dtype = qt->dtype;
  if (n.inputs.size() > 2 && !n.inputs[2].empty()) {
    const auto z = constant_value(g, u, n.inputs[2]);
    if (!z || z->numel() != s->numel()) return std::nullopt;
    for (double v : z->to_double_vector()) q.zero_point.push_back(static_cast<int32_t>(v));
  } else {
    q.zero_point.assign(q.scale.size(), 0);
  }
  if (const Attribute* a = n.attr("axis")) q.axis = a->i;
  if (!q.per_tensor()) {
    const TensorType* xt = g.type_of(n.inputs[0]);
    if (!xt || !xt->shape) return std::nullopt;
    const auto rank = static_cast<int64_t>(xt->shape->size());
    if (q.axis < 0) q.axis += rank;
    if (q.axis < 0 || q.axis >= rank) return std::nullopt;
  }
  return q;
}

namespace {

// A DequantizeLinear producing `v`, with its parameters.
struct Dq {
  const Node* node = nullptr;
  QParams q;
};
std::optional<Dq> dq_of(const Graph& g, const UseIndex& u, const std::string& v) {
  const int p = u.producer_of(v);
  if (p < 0) return std::nullopt;
  const Node& n = g.nodes[static_cast<size_t>(p)];
  if (n.op_type != "DequantizeLinear" || !n.domain.empty()) return std::nullopt;
  auto q = qparams(g, u, n);
  if (!q || !dtype_is_8bit(q->dtype)) return std::nullopt;
  return Dq{&n, *q};
}

// The per-tensor DequantizeLinear of an 8-bit activation feeding `v`.
std::optional<Dq> activation_dq(const Graph& g, const UseIndex& u, const std::string& v) {
  auto d = dq_of(g, u, v);
  if (!d || !d->q.per_tensor()) return std::nullopt;
  return d;
}

// An int8 constant weight with zero point 0, per tensor or per `axis`, dequantized into `v`.
std::optional<Dq> weight_dq(const Graph& g, const UseIndex& u, const std::string& v, int64_t axis) {
  auto d = dq_of(g, u, v);
  if (!d || d->q.dtype != DType::kI8 || !d->q.zero_points_zero()) return std::nullopt;
  if (!g.initializers.count(d->node->inputs[0])) return std::nullopt;
  if (!d->q.per_tensor() && d->q.axis != axis) return std::nullopt;
  return d;
}

// The QuantizeLinear that is the sole consumer of `v` (per tensor, 8-bit), if any.
std::optional<std::pair<int, QParams>> sole_q(const Graph& g, const UseIndex& u, const std::string& v) {
  const int c = u.sole_consumer(v);
  if (c < 0) return std::nullopt;
  const Node& n = g.nodes[static_cast<size_t>(c)];
  if (n.op_type != "QuantizeLinear" || !n.domain.empty() || n.inputs[0] != v) return std::nullopt;
  auto q = qparams(g, u, n);
  if (!q || !q->per_tensor() || !dtype_is_8bit(q->dtype)) return std::nullopt;
  return std::make_pair(c, *q);
}

const char* type_attr(DType d) { return d == DType::kI8 ? "int8" : d == DType::kU8 ? "uint8" : "float32"; }

void copy_attrs(const Node& from, Node& to, std::initializer_list<const char*> names) {
  for (const char* a : names)
    if (const Attribute* v = from.attr(a)) to.attrs[a] = *v;
}

class FuseQdq : public Pass {
 public:
  std::string_view name() const override { return "fuse-qdq"; }
  int min_opt_level() const override { return 2; }

  int run(Model& model, PassContext& ctx) override {
    Graph& g = model.graph;
    bool any = false;
    for (const Node& n : g.nodes)
      if (n.domain.empty() && (n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear")) any = true;
    if (!any) return 0;
    int rewrites = fold_constant_q(model, ctx) + merge_quantize(g) + fold_constant_dq(model, ctx, /*eight_bit=*/false);
    for (bool changed = true; changed;) {
      changed = false;
      const UseIndex u(g);
      for (size_t i = 0; i < g.nodes.size() && !changed; ++i) {
        const Node& n = g.nodes[i];
        if (n.domain == "kiln" && n.op_type == "FusedConv") changed = fuse_conv(model, u, i);
        else if ((n.domain == "kiln" && n.op_type == "FusedMatMul") || (n.domain.empty() && n.op_type == "MatMul"))
          changed = fuse_matmul(model, u, i);
        else if (n.domain.empty() && n.op_type == "MaxPool") changed = fuse_pool(g, u, i);
      }
      rewrites += changed;
    }
    if (rewrites) import_kiln_domain(model);
    rewrites += fold_constant_dq(model, ctx, /*eight_bit=*/true);
    remove_dead_qdq(g);
    return rewrites;
  }

 private:
  // Identical QuantizeLinear nodes of one tensor become one.
  static int merge_quantize(Graph& g) {
    int merged = 0;
    for (bool changed = true; changed;) {
      changed = false;
      const UseIndex u(g);
      std::map<std::string, size_t> first;  // input + params -> node index
      for (size_t i = 0; i < g.nodes.size() && !changed; ++i) {
        const Node& n = g.nodes[i];
        if (n.op_type != "QuantizeLinear" || !n.domain.empty()) continue;
        auto q = qparams(g, u, n);
        if (!q || !q->per_tensor()) continue;
        char scale[32];
        std::snprintf(scale, sizeof scale, "%a", static_cast<double>(q->scale[0]));
        const std::string key = n.inputs[0] + '\0' + scale + '\0' + std::to_string(q->zero_point[0]) + '\0' +
                                std::string(dtype_name(q->dtype));
        auto [it, fresh] = first.emplace(key, i);
        if (fresh || u.graph_outputs.count(n.outputs[0])) continue;
        const std::string dup = n.outputs[0], keep = g.nodes[it->second].outputs[0];
        g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
        replace_uses(g, dup, keep);
        ++merged;
        changed = true;
      }
    }
    return merged;
  }

  // Evaluates nodes of `op` whose inputs are all initializers and `accept` the first input into
  // initializers of their output names. Evaluation errors leave the node to run (and report).
  template <typename Accept>
  static int fold_constants(Model& model, PassContext& ctx, const char* op, Accept accept) {
    if (!ctx.evaluator) return 0;
    Graph& g = model.graph;
    const int64_t opset = model.default_opset();
    const OpSchema* schema = OpRegistry::global().find("", op, opset);
    if (!schema) return 0;
    int folded = 0;
    for (size_t i = 0; i < g.nodes.size();) {
      const Node& n = g.nodes[i];
      bool fold = n.domain.empty() && n.op_type == op && n.outputs.size() == 1 && !n.inputs.empty();
      std::vector<const Tensor*> in;
      for (size_t k = 0; fold && k < n.inputs.size(); ++k) {
        if (n.inputs[k].empty()) {
          in.push_back(nullptr);
          continue;
        }
        auto it = g.initializers.find(n.inputs[k]);
        fold = it != g.initializers.end();
        if (fold) in.push_back(&it->second);
      }
      std::vector<Tensor> out;
      if (fold && accept(*in[0])) {
        try {
          out = ctx.evaluator(n, *schema, opset, in);
        } catch (const Error&) {
          out.clear();
        }
      }
      if (out.size() != 1 || !out[0].defined()) {
        ++i;
        continue;
      }
      g.initializers[n.outputs[0]] = std::move(out[0]);
      g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
      ++folded;
    }
    return folded;
  }

  // QuantizeLinear of constants becomes 8-bit initializers: weights fake-quantized in the graph
  // (PyTorch exports Q(W) -> DQ with W and its scale computed from parameters) become the int8
  // weights the kernels take; the DequantizeLinear after them stays for the matching.
  static int fold_constant_q(Model& model, PassContext& ctx) {
    return fold_constants(model, ctx, "QuantizeLinear", [](const Tensor&) { return true; });
  }

  // DequantizeLinear of constants: non-8-bit ones (int32 biases) before matching, 8-bit ones
  // (weights no int8 kernel took) after it.
  static int fold_constant_dq(Model& model, PassContext& ctx, bool eight_bit) {
    return fold_constants(model, ctx, "DequantizeLinear",
                          [&](const Tensor& x) { return dtype_is_8bit(x.dtype()) == eight_bit; });
  }

  static void remove_dead_qdq(Graph& g) {
    for (bool changed = true; changed;) {
      changed = false;
      const UseIndex u(g);
      for (size_t i = g.nodes.size(); i-- > 0;) {
        const Node& n = g.nodes[i];
        if (!n.domain.empty() || (n.op_type != "QuantizeLinear" && n.op_type != "DequantizeLinear")) continue;
        if (!u.unused(n.outputs[0])) continue;
        g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(i));
        changed = true;
      }
    }
    // Weights no longer read by any node.
    std::unordered_set<std::string> used(g.outputs.begin(), g.outputs.end());
    for (const Node& n : g.nodes) used.insert(n.inputs.begin(), n.inputs.end());
    for (auto it = g.initializers.begin(); it != g.initializers.end();)
      it = used.count(it->first) ? std::next(it) : g.initializers.erase(it);
  }

  // Sets the node's output: the sole trailing Q's (int8) when there is one, else `y` (float32).
  static void set_output(Graph& g, const UseIndex& u, Node& fused, const std::string& y, std::vector<int>* removed) {
    if (auto q = sole_q(g, u, y)) {
      const Node& qn = g.nodes[static_cast<size_t>(q->first)];
      fused.outputs = {qn.outputs[0]};
      fused.attrs["y_type"] = Attribute::of_string(type_attr(q->second.dtype));
      fused.attrs["y_scale"] = Attribute::of_float(q->second.scale[0]);
      fused.attrs["y_zero_point"] = Attribute::of_int(q->second.zero_point[0]);
      fused.attrs["y_source"] = Attribute::of_string(y);
      removed->push_back(q->first);
      return;
    }
    fused.outputs = {y};
    fused.attrs["y_type"] = Attribute::of_string("float32");
  }

  // Replaces node `at` with `fused` and erases `removed` (indices after `at`).
  static void commit(Graph& g, size_t at, Node fused, std::vector<int> removed) {
    g.nodes[at] = std::move(fused);
    std::sort(removed.rbegin(), removed.rend());
    for (int r : removed) g.nodes.erase(g.nodes.begin() + r);
  }

  static std::vector<float> scales_of(const QParams& q) { return q.scale; }

  static bool fuse_conv(Model& model, const UseIndex& u, size_t i) {
    Graph& g = model.graph;
    const Node& n = g.nodes[i];
    if (n.inputs.size() < 2 || n.outputs.size() != 1) return false;
    const auto x = activation_dq(g, u, n.inputs[0]);
    const auto w = weight_dq(g, u, n.inputs[1], 0);
    if (!x || !w) return false;
    const std::string bias = n.inputs.size() > 2 ? n.inputs[2] : "";
    if (!bias.empty()) {
      auto it = g.initializers.find(bias);
      if (it == g.initializers.end() || it->second.dtype() != DType::kF32) return false;
    }
    Node q;
    q.name = n.name;
    q.domain = "kiln";
    q.op_type = "QConv";
    copy_attrs(n, q, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides", "activation",
                      "activation_params", "fused_ops"});
    q.inputs = {x->node->inputs[0], w->node->inputs[0], bias};
    q.attrs["x_scale"] = Attribute::of_float(x->q.scale[0]);
    q.attrs["x_zero_point"] = Attribute::of_int(x->q.zero_point[0]);
    q.attrs["w_scale"] = Attribute::of_floats(scales_of(w->q));
    std::vector<int> removed;
    set_output(g, u, q, n.outputs[0], &removed);
    if (n.inputs.size() > 3 && !n.inputs[3].empty()) {
      // Z joins in 8 bits only when the output is 8-bit too (the kernel accumulates onto Z's bytes
      // in Y's buffer, reading them as Z's type).
      const auto z = activation_dq(g, u, n.inputs[3]);
      if (z && q.attrs["y_type"].s != "float32") {
        q.inputs.push_back(z->node->inputs[0]);
        q.attrs["z_scale"] = Attribute::of_float(z->q.scale[0]);
        q.attrs["z_zero_point"] = Attribute::of_int(z->q.zero_point[0]);
      } else {
        q.inputs.push_back(n.inputs[3]);
      }
    }
    if (q.inputs.back().empty()) q.inputs.pop_back();
    commit(g, i, std::move(q), std::move(removed));
    return true;
  }

  static bool fuse_matmul(Model& model, const UseIndex& u, size_t i) {
    Graph& g = model.graph;
    const Node& n = g.nodes[i];
    if (n.inputs.size() < 2 || n.outputs.size() != 1) return false;
    const bool fused = n.domain == "kiln";
    auto attr_i = [&](const char* a, int64_t d) { const Attribute* v = n.attr(a); return v ? v->i : d; };
    auto attr_f = [&](const char* a, float d) { const Attribute* v = n.attr(a); return v ? v->f : d; };
    const int64_t ta = fused ? attr_i("transA", 0) : 0, tb = fused ? attr_i("transB", 0) : 0;
    if (ta != 0) return false;
    const auto a = activation_dq(g, u, n.inputs[0]);
    const auto b = weight_dq(g, u, n.inputs[1], tb ? 0 : 1);
    if (!a || !b) return false;
    const TensorType* bt = g.type_of(n.inputs[1]);
    if (!bt || !bt->shape || bt->shape->size() != 2) return false;
    const TensorType* at = g.type_of(n.inputs[0]);
    if (!at || !at->shape || at->shape->size() < 2) return false;
    const Dim& cols = (*bt->shape)[tb ? 0 : 1];
    if (!cols.known()) return false;
    std::string c;
    if (fused && n.inputs.size() > 2 && !n.inputs[2].empty()) {
      // C must be a constant along N only; beta folds into it.
      auto it = g.initializers.find(n.inputs[2]);
      if (it == g.initializers.end() || it->second.dtype() != DType::kF32) return false;
      const Tensor& ct = it->second;
      const int64_t nn = cols.value;
      if (ct.numel() != nn && ct.numel() != 1) return false;
      for (size_t d = 0; d + 1 < ct.rank(); ++d)
        if (ct.dim(d) != 1) return false;
      std::vector<float> v(static_cast<size_t>(nn));
      const float beta = attr_f("beta", 1.f);
      for (int64_t k = 0; k < nn; ++k) v[static_cast<size_t>(k)] = beta * ct.data<float>()[ct.numel() == 1 ? 0 : k];
      c = n.name.empty() ? n.outputs[0] + "_bias" : n.name + "_bias";
      while (g.initializers.count(c) || g.types.count(c)) c += "_";
      g.initializers[c] = Tensor::from_vector<float>({nn}, v);
      g.types[c] = TensorType{DType::kF32, Shape{Dim(nn)}};
    }
    Node q;
    q.name = n.name;
    q.domain = "kiln";
    q.op_type = "QMatMul";
    if (fused) copy_attrs(n, q, {"transB", "alpha", "activation", "activation_params", "fused_ops"});
    else record_fusion(q, {&n});
    q.inputs = {a->node->inputs[0], b->node->inputs[0]};
    if (!c.empty()) q.inputs.push_back(c);
    q.attrs["a_scale"] = Attribute::of_float(a->q.scale[0]);
    q.attrs["a_zero_point"] = Attribute::of_int(a->q.zero_point[0]);
    q.attrs["b_scale"] = Attribute::of_floats(scales_of(b->q));
    std::vector<int> removed;
    set_output(g, u, q, n.outputs[0], &removed);
    commit(g, i, std::move(q), std::move(removed));
    return true;
  }

  // DQ -> MaxPool -> Q with the same parameters: max commutes with a monotonic quantization.
  static bool fuse_pool(Graph& g, const UseIndex& u, size_t i) {
    const Node& n = g.nodes[i];
    if (n.outputs.size() > 1 && !n.outputs[1].empty()) return false;  // Indices
    const auto x = activation_dq(g, u, n.inputs[0]);
    if (!x) return false;
    const auto q = sole_q(g, u, n.outputs[0]);
    if (!q || !q->second.same(x->q)) return false;
    Node p = n;
    p.inputs[0] = x->node->inputs[0];
    p.outputs = {g.nodes[static_cast<size_t>(q->first)].outputs[0]};
    commit(g, i, std::move(p), {q->first});
    return true;
  }
};

}  // namespace

std::unique_ptr<Pass> make_fuse_qdq() { return std::make_unique<FuseQdq>(); }

}  // namespace kiln
