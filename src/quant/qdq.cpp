// Q/DQ insertion from a calibration table: the INT8 rewrite of an optimized graph (then fused into
// int8 kernels by the fuse-qdq pass), the standard QDQ export of `kiln quantize`, and the map of
// int8 values of a fused graph.
#include "quant/qdq.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include "backends/reference/executor.h"
#include "kiln/error.h"
#include "passes/pass.h"

namespace kiln::quant {

namespace {

const Attribute* find_attr(const Node& n, const char* name) { return n.attr(name); }

bool is_float_activation(const Graph& g, const std::string& v) {
  if (v.empty() || g.initializers.count(v)) return false;
  const TensorType* t = g.type_of(v);
  return t && t->dtype == DType::kF32;
}

const Tensor* f32_initializer(const Graph& g, const std::string& v) {
  auto it = g.initializers.find(v);
  return it != g.initializers.end() && it->second.dtype() == DType::kF32 ? &it->second : nullptr;
}

// A node whose constant weights the rewrite quantizes, with the input positions involved.
struct Layer {
  size_t node = 0;
  std::vector<size_t> activations;  // input positions of f32 activations to quantize
  size_t weight = 1;                // input position of the constant weight
  int64_t weight_axis = 0;          // the output-channel axis of the weight
  bool matmul = false;              // MatMul / Gemm / FusedMatMul (else a convolution)
};

std::optional<Layer> as_layer(const Graph& g, size_t i, bool fused_graph) {
  const Node& n = g.nodes[i];
  auto int_attr = [&](const char* a, int64_t d) { const Attribute* v = find_attr(n, a); return v ? v->i : d; };
  const bool conv = fused_graph ? (n.domain == "kiln" && n.op_type == "FusedConv")
                                : (n.domain.empty() && n.op_type == "Conv");
  if (conv) {
    if (n.inputs.size() < 2 || !is_float_activation(g, n.inputs[0])) return std::nullopt;
    const Tensor* w = f32_initializer(g, n.inputs[1]);
    if (!w || w->rank() < 3) return std::nullopt;
    Layer l{i, {0}, 1, 0};
    if (n.inputs.size() > 3 && is_float_activation(g, n.inputs[3])) l.activations.push_back(3);
    return l;
  }
  const bool fused_mm = n.domain == "kiln" && n.op_type == "FusedMatMul" && fused_graph;
  const bool matmul = n.domain.empty() && n.op_type == "MatMul";
  const bool gemm = n.domain.empty() && n.op_type == "Gemm" && !fused_graph;
  if (!fused_mm && !matmul && !gemm) return std::nullopt;
  if ((fused_mm || gemm) && int_attr("transA", 0) != 0) return std::nullopt;
  if (n.inputs.size() < 2 || !is_float_activation(g, n.inputs[0])) return std::nullopt;
  const TensorType* at = g.type_of(n.inputs[0]);
  if (!at->shape || at->shape->size() < 2) return std::nullopt;
  const Tensor* b = f32_initializer(g, n.inputs[1]);
  if (!b || b->rank() != 2) return std::nullopt;
  const bool tb = (fused_mm || gemm) && int_attr("transB", 0) != 0;
  return Layer{i, {0}, 1, tb ? 0 : 1, true};
}

std::string unique_name(const Graph& g, const std::unordered_set<std::string>& taken, std::string base) {
  while (g.types.count(base) || g.initializers.count(base) || taken.count(base)) base += "_";
  return base;
}

// Builds Q/DQ pairs and int8 weights, then splices them into the node list in topological order.
class Inserter {
 public:
  Inserter(Model& model, const CalibrationTable& table, bool per_channel)
      : m_(model), g_(model.graph), table_(table), per_channel_(per_channel) {}

  // The dequantized stand-in for activation `v` (one Q/DQ pair per tensor).
  std::string activation(const std::string& v, const std::string& range_of) {
    if (auto it = dq_of_.find(v); it != dq_of_.end()) return it->second;
    auto r = table_.ranges.find(range_of);
    if (r == table_.ranges.end())
      throw Error(ErrorCode::kInvalidArgument, "the calibration table has no range for tensor '" + range_of +
                                                   "'; recalibrate (delete the calibration cache)");
    const TensorRange& range = r->second;
    const bool u8 = range.is_unsigned();
    const DType qt = u8 ? DType::kU8 : DType::kI8;
    const std::string scale = fresh(v + "_scale"), zp = fresh(v + "_zero_point");
    const std::string q = fresh(v + "_quantized"), dq = fresh(v + "_dequantized");
    g_.initializers[scale] = Tensor::scalar<float>(range.scale());
    Tensor z(qt, {});
    if (u8) z.mutable_data<uint8_t>()[0] = 0;
    else z.mutable_data<int8_t>()[0] = 0;
    g_.initializers[zp] = z;
    g_.types[scale] = TensorType{DType::kF32, Shape{}};
    g_.types[zp] = TensorType{qt, Shape{}};
    const TensorType* vt = g_.type_of(v);
    g_.types[q] = TensorType{qt, vt ? vt->shape : std::nullopt};
    g_.types[dq] = TensorType{DType::kF32, vt ? vt->shape : std::nullopt};
    Node qn{v + "/QuantizeLinear", "QuantizeLinear", "", {v, scale, zp}, {q}, {}};
    Node dqn{v + "/DequantizeLinear", "DequantizeLinear", "", {q, scale, zp}, {dq}, {}};
    after_[v].push_back(std::move(qn));
    after_[v].push_back(std::move(dqn));
    dq_of_[v] = dq;
    return dq;
  }

  // The dequantized stand-in for constant weight `w`: int8, symmetric, per output channel `axis`
  // (or per tensor when per-channel DequantizeLinear is unavailable).
  std::string weight(const std::string& w, int64_t axis, bool allow_per_channel = true) {
    const bool per_channel_ = this->per_channel_ && allow_per_channel;
    const std::string key = w + "#" + std::to_string(axis) + (per_channel_ ? "" : "#t");
    if (auto it = dq_of_.find(key); it != dq_of_.end()) return it->second;
    const Tensor& t = g_.initializers.at(w);
    const auto& shape = t.shape();
    const int64_t channels = per_channel_ ? shape[static_cast<size_t>(axis)] : 1;
    int64_t inner = 1;
    for (size_t d = static_cast<size_t>(axis) + 1; d < shape.size(); ++d) inner *= shape[d];
    const int64_t dim = shape[static_cast<size_t>(axis)];
    auto channel_of = [&](int64_t i) { return per_channel_ ? (i / inner) % dim : 0; };
    std::vector<float> amax(static_cast<size_t>(channels), 0.f);
    const float* x = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      float& a = amax[static_cast<size_t>(channel_of(i))];
      a = std::max(a, std::fabs(x[i]));
    }
    std::vector<float> scale(amax.size());
    for (size_t c = 0; c < amax.size(); ++c) scale[c] = amax[c] > 0.f ? amax[c] / 127.f : 1.f;
    Tensor q(DType::kI8, shape);
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float s = scale[static_cast<size_t>(channel_of(i))];
      q.mutable_data<int8_t>()[i] = static_cast<int8_t>(std::clamp(std::nearbyint(x[i] / s), -127.f, 127.f));
    }
    const std::string qn = fresh(w + "_quantized"), sn = fresh(w + "_scale"), zn = fresh(w + "_zero_point");
    const std::string dq = fresh(w + "_dequantized");
    g_.initializers[qn] = std::move(q);
    g_.initializers[sn] = per_channel_ ? Tensor::from_vector<float>({channels}, scale) : Tensor::scalar<float>(scale[0]);
    g_.initializers[zn] = per_channel_ ? Tensor(DType::kI8, {channels}) : Tensor(DType::kI8, {});
    std::fill_n(g_.initializers[zn].mutable_data<int8_t>(), g_.initializers[zn].numel(), int8_t{0});
    Shape s;
    for (int64_t d : shape) s.push_back(Dim(d));
    g_.types[qn] = TensorType{DType::kI8, s};
    g_.types[sn] = TensorType{DType::kF32, per_channel_ ? Shape{Dim(channels)} : Shape{}};
    g_.types[zn] = TensorType{DType::kI8, per_channel_ ? Shape{Dim(channels)} : Shape{}};
    g_.types[dq] = TensorType{DType::kF32, s};
    Node n{w + "/DequantizeLinear", "DequantizeLinear", "", {qn, sn, zn}, {dq}, {}};
    if (per_channel_) n.attrs["axis"] = Attribute::of_int(axis);
    front_.push_back(std::move(n));
    dq_of_[key] = dq;
    return dq;
  }

  // Splices the new nodes: weight DQs first, each activation's pair right after its producer (graph
  // inputs' pairs first too).
  void commit() {
    std::vector<Node> out = std::move(front_);
    for (const auto& in : g_.inputs) splice(in, out);
    for (auto& n : g_.nodes) {
      std::vector<std::string> outs = n.outputs;
      out.push_back(std::move(n));
      for (const auto& o : outs) splice(o, out);
    }
    g_.nodes = std::move(out);
  }

 private:
  std::string fresh(const std::string& base) {
    std::string n = unique_name(g_, taken_, base);
    taken_.insert(n);
    return n;
  }
  void splice(const std::string& v, std::vector<Node>& out) {
    auto it = after_.find(v);
    if (it == after_.end()) return;
    for (auto& n : it->second) out.push_back(std::move(n));
    after_.erase(it);
  }

  Model& m_;
  Graph& g_;
  const CalibrationTable& table_;
  bool per_channel_;
  std::unordered_map<std::string, std::string> dq_of_;
  std::unordered_map<std::string, std::vector<Node>> after_;
  std::vector<Node> front_;
  std::unordered_set<std::string> taken_;
};

// MaxPool inputs worth quantizing: every consumer of the output is a quantized activation input.
// Returns pool node index -> true.
std::vector<size_t> quantizable_pools(const Graph& g, const std::unordered_set<std::string>& quantized) {
  std::unordered_map<std::string, int> uses = count_uses(g);
  std::vector<size_t> pools;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (!n.domain.empty() || n.op_type != "MaxPool" || n.inputs.empty() || n.outputs.empty()) continue;
    if (n.outputs.size() > 1 && !n.outputs[1].empty()) continue;
    if (!is_float_activation(g, n.inputs[0]) || !quantized.count(n.outputs[0])) continue;
    pools.push_back(i);
  }
  return pools;
}

struct Plan {
  std::vector<Layer> layers;
  std::vector<size_t> pools;
  std::vector<std::string> tensors;  // to calibrate, in graph order
};

Plan plan_int8(const Model& model, const Int8Options& options, bool fused_graph) {
  const Graph& g = model.graph;
  Plan p;
  std::unordered_set<std::string> quantized;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (node_matches_layer(g.nodes[i], options.keep_float)) continue;
    auto l = as_layer(g, i, fused_graph);
    if (!l) continue;
    for (size_t a : l->activations) quantized.insert(g.nodes[i].inputs[a]);
    p.layers.push_back(*l);
  }
  p.pools = quantizable_pools(g, quantized);
  std::unordered_set<std::string> pool_inputs;
  for (size_t i : p.pools) pool_inputs.insert(g.nodes[i].inputs[0]);
  // Graph order: inputs, then node outputs.
  std::vector<std::string> order(g.inputs.begin(), g.inputs.end());
  for (const Node& n : g.nodes) order.insert(order.end(), n.outputs.begin(), n.outputs.end());
  for (const auto& v : order)
    if (quantized.count(v) || pool_inputs.count(v)) p.tensors.push_back(v);
  return p;
}

}  // namespace

bool node_matches_layer(const Node& node, const std::set<std::string>& layers) {
  if (layers.empty()) return false;
  if (layers.count(node.name)) return true;
  if (const Attribute* f = node.attr("fused_ops"))
    for (const auto& s : f->strings) {
      const auto colon = s.find(':');
      if (colon != std::string::npos && layers.count(s.substr(colon + 1))) return true;
    }
  return false;
}

std::vector<std::string> int8_tensors(const Model& optimized, const Int8Options& options) {
  return plan_int8(optimized, options, true).tensors;
}

std::vector<std::string> int8_layers(const Model& optimized, const Int8Options& options) {
  std::vector<std::string> names;
  for (const Layer& l : plan_int8(optimized, options, true).layers) names.push_back(optimized.graph.nodes[l.node].name);
  return names;
}

int quantize_int8(Model& optimized, const CalibrationTable& table, const Int8Options& options) {
  const Plan p = plan_int8(optimized, options, true);
  if (p.layers.empty()) return 0;
  Graph& g = optimized.graph;
  // MaxPool outputs take their input's range (a max pool never widens it), so the pass can run the
  // pool in int8 between two quantized layers.
  CalibrationTable t = table;
  for (size_t i : p.pools) {
    const Node& n = g.nodes[i];
    auto r = t.ranges.find(n.inputs[0]);
    if (r != t.ranges.end()) t.ranges[n.outputs[0]] = r->second;
  }
  // Per-channel DequantizeLinear needs opset 13; older models get per-tensor weight scales.
  Inserter ins(optimized, t, optimized.default_opset() >= 13);
  std::vector<std::pair<size_t, std::vector<std::pair<size_t, std::string>>>> rewires;
  for (const Layer& l : p.layers) {
    const Node& n = g.nodes[l.node];
    std::vector<std::pair<size_t, std::string>> r;
    for (size_t a : l.activations) r.emplace_back(a, ins.activation(n.inputs[a], n.inputs[a]));
    r.emplace_back(l.weight, ins.weight(n.inputs[l.weight], l.weight_axis));
    rewires.emplace_back(l.node, std::move(r));
  }
  for (auto& [node, r] : rewires)
    for (auto& [pos, v] : r) g.nodes[node].inputs[pos] = v;
  // Pools: DQ(Q(x)) -> MaxPool -> Q/DQ with x's range; their consumers already read the output's DQ.
  for (size_t i : p.pools) {
    Node& n = g.nodes[i];
    n.inputs[0] = ins.activation(n.inputs[0], n.inputs[0]);
  }
  ins.commit();
  PassContext ctx;
  ctx.evaluator = reference::constant_evaluator();
  make_fuse_qdq()->run(optimized, ctx);
  make_dead_node_elimination()->run(optimized, ctx);
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(optimized, infer);
  int layers = 0;
  for (const Node& n : optimized.graph.nodes)
    if (n.domain == "kiln" && (n.op_type == "QConv" || n.op_type == "QMatMul")) ++layers;
  return layers;
}

std::vector<std::string> export_qdq_tensors(const Model& model, const Int8Options& options) {
  const Graph& g = model.graph;
  Plan p = plan_int8(model, options, false);
  std::unordered_set<std::string> have(p.tensors.begin(), p.tensors.end());
  for (const Node& n : g.nodes) {
    if (!n.domain.empty() || n.op_type != "Add" || n.inputs.size() != 2) continue;
    if (!is_float_activation(g, n.inputs[0]) || !is_float_activation(g, n.inputs[1])) continue;
    for (const auto& v : n.inputs)
      if (have.insert(v).second) p.tensors.push_back(v);
  }
  return p.tensors;
}

int export_qdq(Model& model, const CalibrationTable& table, const Int8Options& options) {
  Graph& g = model.graph;
  const bool per_channel = model.default_opset() >= 13;
  const Plan p = plan_int8(model, options, false);
  Inserter ins(model, table, per_channel);
  for (const Layer& l : p.layers) {
    Node& n = g.nodes[l.node];
    for (size_t a : l.activations) n.inputs[a] = ins.activation(n.inputs[a], n.inputs[a]);
    n.inputs[l.weight] = ins.weight(n.inputs[l.weight], l.weight_axis, !l.matmul || options.per_channel_matmul_weights);
  }
  // Residual Adds: both inputs quantized, so runtimes can run the add in int8 too.
  for (Node& n : g.nodes) {
    if (!n.domain.empty() || n.op_type != "Add" || n.inputs.size() != 2) continue;
    if (!is_float_activation(g, n.inputs[0]) || !is_float_activation(g, n.inputs[1])) continue;
    if (!table.ranges.count(n.inputs[0]) || !table.ranges.count(n.inputs[1])) continue;
    for (auto& v : n.inputs) v = ins.activation(v, v);
  }
  for (size_t i : p.pools) {
    Node& n = g.nodes[i];
    n.inputs[0] = ins.activation(n.inputs[0], n.inputs[0]);
  }
  ins.commit();
  // The float weights the int8 ones replaced are no longer read: drop them (the file shrinks ~4x).
  std::unordered_set<std::string> used(g.outputs.begin(), g.outputs.end());
  for (const Node& n : g.nodes) used.insert(n.inputs.begin(), n.inputs.end());
  for (auto it = g.initializers.begin(); it != g.initializers.end();) {
    if (used.count(it->first)) {
      ++it;
      continue;
    }
    g.types.erase(it->first);
    it = g.initializers.erase(it);
  }
  return static_cast<int>(p.layers.size());
}

bool has_qdq_nodes(const Graph& g) {
  for (const Node& n : g.nodes)
    if (n.domain.empty() && (n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear")) return true;
  return false;
}

void check_qdq_params(const Model& model) {
  const Graph& g = model.graph;
  for (const Node& n : g.nodes) {
    if (!n.domain.empty() || (n.op_type != "QuantizeLinear" && n.op_type != "DequantizeLinear")) continue;
    auto bad = [&](const std::string& what) {
      throw Error(ErrorCode::kInvalidModel, n.describe() + ": " + what);
    };
    if (n.inputs.size() > 1) {
      auto it = g.initializers.find(n.inputs[1]);
      if (it != g.initializers.end() && (it->second.dtype() == DType::kF32 || it->second.dtype() == DType::kF16 ||
                                         it->second.dtype() == DType::kBF16)) {
        for (double v : it->second.to_double_vector())
          if (!(v > 0) || !std::isfinite(v))
            bad("scale '" + n.inputs[1] + "' must be positive and finite, got " + std::to_string(v));
      }
    }
    if (n.inputs.size() > 2 && !n.inputs[2].empty()) {
      auto it = g.initializers.find(n.inputs[2]);
      if (it == g.initializers.end()) continue;
      const Tensor& z = it->second;
      const bool quantize = n.op_type == "QuantizeLinear";
      const TensorType* qt = g.type_of(quantize ? n.outputs[0] : n.inputs[0]);
      if (qt && qt->dtype != DType::kUndefined && z.dtype() != qt->dtype)
        bad("zero point '" + n.inputs[2] + "' has dtype " + std::string(dtype_name(z.dtype())) + ", the quantized "
            "tensor is " + std::string(dtype_name(qt->dtype)));
      if (quantize && z.dtype() != DType::kI8 && z.dtype() != DType::kU8 && z.dtype() != DType::kI16 &&
          z.dtype() != DType::kU16)
        bad("zero point '" + n.inputs[2] + "' has dtype " + std::string(dtype_name(z.dtype())) +
            ", not a quantized type (int8, uint8, int16, uint16)");
      if (!quantize && z.dtype() == DType::kI32)
        for (double v : z.to_double_vector())
          if (v != 0) bad("zero point of an int32 input must be 0 (ONNX DequantizeLinear), got " +
                          std::to_string(static_cast<int64_t>(v)));
      double lo = 0, hi = 0;
      switch (z.dtype()) {
        case DType::kI8: lo = -128, hi = 127; break;
        case DType::kU8: lo = 0, hi = 255; break;
        case DType::kI16: lo = -32768, hi = 32767; break;
        default: continue;
      }
      for (double v : z.to_double_vector())
        if (v < lo || v > hi) bad("zero point " + std::to_string(static_cast<int64_t>(v)) + " is out of range");
    }
  }
}

std::string node_precision(const Graph& g, const Node& n) {
  auto type_name = [](DType d) -> std::string {
    switch (d) {
      case DType::kF32: return "fp32";
      case DType::kF16: return "fp16";
      case DType::kBF16: return "bf16";
      case DType::kI8: return "int8";
      case DType::kU8: return "uint8";
      default: return std::string(dtype_name(d));
    }
  };
  if (n.domain == "kiln" && (n.op_type == "QConv" || n.op_type == "QMatMul")) return "int8";
  if (n.domain.empty() && n.op_type == "QuantizeLinear") return "fp32->int8";
  if (n.domain.empty() && n.op_type == "DequantizeLinear") return "int8->fp32";
  if (const Attribute* p = n.attr("compute_precision"); p && !p->s.empty()) return p->s;
  if (n.outputs.empty() || n.outputs[0].empty()) return "-";
  const TensorType* t = g.type_of(n.outputs[0]);
  if (!t) return "-";
  return t->dtype == DType::kU8 ? "int8" : type_name(t->dtype);
}

std::map<std::string, QuantizedValue> quantized_values(const Model& model) {
  std::map<std::string, QuantizedValue> out;
  const Graph& g = model.graph;
  for (const Node& n : g.nodes) {
    if (n.outputs.empty() || n.outputs[0].empty()) continue;
    const TensorType* t = g.type_of(n.outputs[0]);
    if (!t || !dtype_is_8bit(t->dtype)) continue;
    QuantizedValue q;
    q.dtype = t->dtype;
    if (n.domain == "kiln" && (n.op_type == "QConv" || n.op_type == "QMatMul")) {
      const Attribute* s = n.attr("y_scale");
      const Attribute* z = n.attr("y_zero_point");
      const Attribute* src = n.attr("y_source");
      if (!s) continue;
      q.scale = s->f;
      q.zero_point = z ? static_cast<int32_t>(z->i) : 0;
      q.source = src ? src->s : "";
    } else if (n.domain.empty() && n.op_type == "QuantizeLinear" && n.inputs.size() >= 2) {
      auto sc = g.initializers.find(n.inputs[1]);
      if (sc == g.initializers.end() || sc->second.numel() != 1 || sc->second.dtype() != DType::kF32) continue;
      q.scale = sc->second.data<float>()[0];
      if (n.inputs.size() > 2 && !n.inputs[2].empty()) {
        auto zp = g.initializers.find(n.inputs[2]);
        if (zp == g.initializers.end() || zp->second.numel() != 1) continue;
        q.zero_point = static_cast<int32_t>(zp->second.to_double_vector()[0]);
      }
      q.source = n.inputs[0];
    } else {
      continue;
    }
    if (q.source.empty()) continue;
    out[n.outputs[0]] = q;
  }
  // Int8 MaxPool: its output stands for the pool of its input's source, at the same scale.
  for (const Node& n : g.nodes) {
    if (!n.domain.empty() || n.op_type != "MaxPool" || n.inputs.empty() || n.outputs.empty()) continue;
    auto it = out.find(n.inputs[0]);
    if (it == out.end()) continue;
    // The float model's pool output carries the name the Q after it consumed: not recoverable here,
    // so the int8 pool output is compared only when its own name exists in the float model.
    QuantizedValue q = it->second;
    q.source = n.outputs[0];
    out.emplace(n.outputs[0], q);
  }
  return out;
}

}  // namespace kiln::quant
