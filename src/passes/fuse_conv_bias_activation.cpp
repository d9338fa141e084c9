// fuse-conv-bias-activation: Conv [+ per-channel constant Add] [+ residual Add] [+ activation] becomes
// one kiln::FusedConv computing act(Conv(X, W, B) + Z), the epilogue a conv kernel applies for free.
#include <algorithm>
#include <cmath>
#include <limits>
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

// A shape whose every dimension is known or a named symbol, so equality proves the same extent.
bool shape_is_comparable(const Shape& s) {
  for (const Dim& d : s)
    if (!d.known() && d.symbol.empty()) return false;
  return true;
}

class FuseConvBiasActivation : public Pass {
 public:
  std::string_view name() const override { return "fuse-conv-bias-activation"; }
  int min_opt_level() const override { return 2; }

  int run(Model& model, PassContext&) override {
    Graph& g = model.graph;
    int fused = 0;
    for (size_t i = 0; i < g.nodes.size();) {
      // A fusion rooted at i leaves the nodes before i untouched and removes the Conv at i, so the
      // scan goes on at i (now the next node, or the FusedConv itself, which is not a Conv).
      if (g.nodes[i].op_type == "Conv" && g.nodes[i].domain.empty() && fuse_from(model, i)) {
        ++fused;
        continue;
      }
      ++i;
    }
    if (fused) import_kiln_domain(model);
    return fused;
  }

 private:
  // What a chain rooted at one Conv absorbs.
  struct Chain {
    std::vector<size_t> nodes;                // indices of absorbed nodes, the Conv first
    std::string value;                        // the chain's current output
    std::optional<std::vector<double>> bias;  // folded per-channel bias (conv bias + constant Adds)
    std::string residual;                     // Z, or ""
    std::string activation;                   // FusedConv activation name, or ""
    std::vector<float> activation_params;
  };

  // Value -> indices of the nodes that read it (once per reading node).
  static std::unordered_map<std::string, std::vector<size_t>> consumers_of(const Graph& g) {
    std::unordered_map<std::string, std::vector<size_t>> c;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      std::unordered_set<std::string> seen;
      for (const auto& in : g.nodes[i].inputs)
        if (!in.empty() && seen.insert(in).second) c[in].push_back(i);
    }
    return c;
  }

  static bool fuse_from(Model& model, size_t conv_index) {
    Graph& g = model.graph;
    const Node& conv = g.nodes[conv_index];
    // Guards on the Conv: one float output of known rank (the shape is needed to recognise
    // per-channel constants and same-shape residuals). Each later step has its own guards; a Conv
    // that absorbs nothing still becomes a FusedConv without activation, so backends see one op.
    if (conv.outputs.size() != 1 || conv.outputs[0].empty() || conv.inputs.size() < 2) return false;
    const TensorType* yt = g.type_of(conv.outputs[0]);
    if (!yt || !is_float(yt->dtype) || !yt->shape || yt->shape->size() < 3) return false;
    const DType dt = yt->dtype;
    const Shape& yshape = *yt->shape;
    const std::string conv_bias = conv.inputs.size() > 2 ? conv.inputs[2] : "";

    const auto uses = count_uses(g);
    const auto consumers = consumers_of(g);
    auto use_count = [&](const std::string& v) {
      auto it = uses.find(v);
      return it == uses.end() ? 0 : it->second;
    };
    // The single node reading `v` (which is not a graph output), or nullptr.
    auto sole_consumer = [&](const std::string& v) -> const Node* {
      if (use_count(v) != 1) return nullptr;
      auto it = consumers.find(v);
      return it == consumers.end() ? nullptr : &g.nodes[it->second.front()];
    };
    auto index_of = [&](const Node* n) { return static_cast<size_t>(n - g.nodes.data()); };
    auto other_operand = [](const Node& add, const std::string& v) -> std::string {
      if (add.inputs.size() != 2) return "";
      if (add.inputs[0] == v && add.inputs[1] != v) return add.inputs[1];
      if (add.inputs[1] == v && add.inputs[0] != v) return add.inputs[0];
      return "";
    };
    auto is_op = [](const Node* n, const char* op) { return n && n->domain.empty() && n->op_type == op; };

    Chain chain;
    chain.nodes = {conv_index};
    chain.value = conv.outputs[0];

    // 1. Adds of per-channel constants ([C,1,1], [1,C,1,1], a scalar, ...: every axis but the channel
    //    axis of the output broadcasts), folded into B; only when the conv's own bias is absent or
    //    constant, and the channel count is known.
    const int64_t rank = static_cast<int64_t>(yshape.size());
    std::optional<std::vector<double>> base_bias;
    if (yshape[1].known()) {
      const int64_t channels = yshape[1].value;
      if (conv_bias.empty()) {
        base_bias = std::vector<double>(static_cast<size_t>(channels), 0.0);
      } else if (auto b = constant_of(g, conv_bias); b && b->dtype() == dt && b->numel() == channels) {
        base_bias = b->to_double_vector();
      }
    }
    while (base_bias) {
      const Node* add = sole_consumer(chain.value);
      if (!is_op(add, "Add")) break;
      auto cst = constant_of(g, other_operand(*add, chain.value));
      if (!cst || cst->dtype() != dt || static_cast<int64_t>(cst->rank()) > rank) break;
      const int64_t channels = yshape[1].value;
      bool per_channel = true;
      int64_t const_channels = 1;
      for (int64_t a = 0; a < static_cast<int64_t>(cst->rank()); ++a) {
        const int64_t axis = rank - static_cast<int64_t>(cst->rank()) + a;  // right-aligned broadcast
        const int64_t d = cst->dim(static_cast<size_t>(a));
        if (axis == 1 && (d == channels || d == 1))
          const_channels = d;
        else if (d != 1)
          per_channel = false;
      }
      if (!per_channel) break;
      if (!chain.bias) chain.bias = base_bias;
      const std::vector<double> v = cst->to_double_vector();
      for (int64_t m = 0; m < channels; ++m) (*chain.bias)[m] += v[const_channels == 1 ? 0 : m];
      chain.nodes.push_back(index_of(add));
      chain.value = add->outputs[0];
    }

    // 2. A residual Add of a non-constant tensor with exactly the output's shape: act(conv + Z).
    if (const Node* add = sole_consumer(chain.value); is_op(add, "Add")) {
      const std::string z = other_operand(*add, chain.value);
      const TensorType* zt = z.empty() ? nullptr : g.type_of(z);
      if (zt && !constant_of(g, z) && zt->dtype == dt && zt->shape && *zt->shape == yshape &&
          shape_is_comparable(yshape)) {
        chain.residual = z;
        chain.nodes.push_back(index_of(add));
        chain.value = add->outputs[0];
      }
    }

    // 3. An activation.
    match_activation(model, chain, sole_consumer, consumers, use_count, dt);

    // Rewrite: one FusedConv at the position of the last absorbed node.
    Node fused;
    fused.name = conv.name;
    fused.op_type = "FusedConv";
    fused.domain = "kiln";
    fused.inputs = {conv.inputs[0], conv.inputs[1], conv_bias, chain.residual};
    for (const char* a : {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
      if (const Attribute* v = conv.attr(a)) fused.attrs[a] = *v;
    if (!chain.activation.empty()) fused.attrs["activation"] = Attribute::of_string(chain.activation);
    if (!chain.activation_params.empty())
      fused.attrs["activation_params"] = Attribute::of_floats(chain.activation_params);
    fused.outputs = {chain.value};
    std::vector<const Node*> originals;
    for (size_t k : chain.nodes) originals.push_back(&g.nodes[k]);
    record_fusion(fused, originals);
    if (chain.bias) {
      Tensor b(dt, {static_cast<int64_t>(chain.bias->size())});
      dispatch_float(dt, [&](auto tag) {
        using T = decltype(tag);
        T* p = b.mutable_data<T>();
        for (size_t m = 0; m < chain.bias->size(); ++m)
          p[m] = static_cast<T>(static_cast<compute_t<T>>((*chain.bias)[m]));
      });
      const std::string base = (conv.name.empty() ? conv.inputs[1] : conv.name) + "_bias_fused";
      std::string name = base;
      for (int k = 1; g.initializers.count(name) || g.types.count(name) || g.producer_index(name) >= 0 ||
                      std::find(g.inputs.begin(), g.inputs.end(), name) != g.inputs.end();
           ++k)
        name = base + "_" + std::to_string(k);
      g.types[name] = TensorType{dt, Shape{Dim(static_cast<int64_t>(chain.bias->size()))}};
      g.initializers[name] = std::move(b);
      fused.inputs[2] = name;
    }
    while (!fused.inputs.empty() && fused.inputs.back().empty()) fused.inputs.pop_back();

    std::vector<size_t> order = chain.nodes;
    std::sort(order.begin(), order.end());
    for (size_t k : order)
      for (const auto& o : g.nodes[k].outputs)
        if (o != chain.value) g.types.erase(o);
    const size_t last = order.back();
    g.nodes[last] = std::move(fused);
    for (size_t k = order.size() - 1; k-- > 0;) g.nodes.erase(g.nodes.begin() + static_cast<std::ptrdiff_t>(order[k]));
    return true;
  }

  // Extends the chain by one activation node (or the Sigmoid + Mul pair of SiLU), if one follows.
  template <typename SoleConsumer, typename Consumers, typename UseCount>
  static void match_activation(const Model& model, Chain& chain, SoleConsumer&& sole_consumer,
                               const Consumers& consumers, UseCount&& use_count, DType dt) {
    const Graph& g = model.graph;
    auto index_of = [&](const Node* n) { return static_cast<size_t>(n - g.nodes.data()); };
    const std::string v = chain.value;

    // SiLU: x * Sigmoid(x), i.e. exactly two readers of x: a Sigmoid whose only reader is the Mul.
    if (use_count(v) == 2) {
      auto it = consumers.find(v);
      if (it == consumers.end() || it->second.size() != 2) return;
      const Node* a = &g.nodes[it->second[0]];
      const Node* b = &g.nodes[it->second[1]];
      if (a->op_type == "Mul") std::swap(a, b);
      if (!a->domain.empty() || a->op_type != "Sigmoid" || !b->domain.empty() || b->op_type != "Mul") return;
      if (b->inputs.size() != 2 || a->outputs.size() != 1) return;
      const std::string& s = a->outputs[0];
      const bool operands = (b->inputs[0] == v && b->inputs[1] == s) || (b->inputs[0] == s && b->inputs[1] == v);
      if (!operands || sole_consumer(s) != b) return;
      chain.activation = "SiLU";
      chain.nodes.push_back(index_of(a));
      chain.nodes.push_back(index_of(b));
      chain.value = b->outputs[0];
      return;
    }

    const Node* n = sole_consumer(v);
    if (!n || n->inputs.empty() || n->inputs[0] != v || n->outputs.size() != 1) return;
    const std::string& op = n->op_type;
    std::string act;
    std::vector<float> params;
    if (n->domain == "kiln" && op == "Gelu") {
      // kiln::Gelu from fuse-gelu: approximate "none" (erf) or "tanh".
      const Attribute* a = n->attr("approximate");
      const std::string approx = a ? a->s : "none";
      if (approx == "none")
        act = "Gelu";
      else if (approx == "tanh")
        act = "GeluTanh";
      else
        return;
    } else if (!n->domain.empty()) {
      return;
    } else if (op == "Relu" || op == "Sigmoid" || op == "Tanh" || op == "HardSwish") {
      act = op;
    } else if (op == "Gelu") {
      const Attribute* a = n->attr("approximate");
      const std::string approx = a ? a->s : "none";
      if (approx == "none")
        act = "Gelu";
      else if (approx == "tanh")
        act = "GeluTanh";
      else
        return;
    } else if (op == "LeakyRelu") {
      const Attribute* a = n->attr("alpha");
      act = op;
      params = {a ? a->f : 0.01f};
    } else if (op == "HardSigmoid") {
      const Attribute* a = n->attr("alpha");
      const Attribute* b = n->attr("beta");
      act = op;
      params = {a ? a->f : 0.2f, b ? b->f : 0.5f};
    } else if (op == "Clip") {
      // Bounds: attributes before opset 11, constant scalar inputs after; a missing bound is infinite.
      float lo = -std::numeric_limits<float>::infinity(), hi = std::numeric_limits<float>::infinity();
      if (model.default_opset() < 11) {
        if (n->inputs.size() != 1) return;
        if (const Attribute* a = n->attr("min")) lo = a->f;
        if (const Attribute* a = n->attr("max")) hi = a->f;
      } else {
        for (size_t k = 1; k < n->inputs.size() && k < 3; ++k) {
          if (n->inputs[k].empty()) continue;
          auto c = constant_of(g, n->inputs[k]);
          if (!c || c->dtype() != dt || c->numel() != 1 || c->rank() > 1) return;
          const double bound = c->to_double_vector()[0];
          // FusedConv keeps bounds as float attributes: f64 bounds must survive the narrowing.
          if (static_cast<double>(static_cast<float>(bound)) != bound) return;
          (k == 1 ? lo : hi) = static_cast<float>(bound);
        }
      }
      act = op;
      params = {lo, hi};
    } else {
      return;
    }
    chain.activation = act;
    chain.activation_params = std::move(params);
    chain.nodes.push_back(index_of(n));
    chain.value = n->outputs[0];
  }
};

}  // namespace

std::unique_ptr<Pass> make_fuse_conv_bias_activation() { return std::make_unique<FuseConvBiasActivation>(); }

}  // namespace kiln
