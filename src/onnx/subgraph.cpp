// Subgraph extraction (kiln debug reduce's candidates) and type inference that tolerates
// unsupported nodes.
#include "onnx/subgraph.h"

#include <algorithm>
#include <map>
#include <unordered_set>

namespace kiln {

namespace {

bool is_random_op(const Node& n) {
  if (!n.domain.empty()) return false;
  return n.op_type.starts_with("Random") || n.op_type == "Multinomial" || n.op_type == "Bernoulli";
}

// Names a subgraph uses that it does not define itself (its inputs, initializers, node outputs).
void free_names(const Graph& g, std::vector<std::string>& out, std::unordered_set<std::string>& seen) {
  std::unordered_set<std::string> defined(g.inputs.begin(), g.inputs.end());
  for (const auto& [name, t] : g.initializers) defined.insert(name);
  for (const Node& n : g.nodes)
    for (const auto& o : n.outputs)
      if (!o.empty()) defined.insert(o);
  auto use = [&](const std::string& name) {
    if (!name.empty() && !defined.count(name) && seen.insert(name).second) out.push_back(name);
  };
  for (const Node& n : g.nodes)
    for (const auto& r : node_reads(n)) use(r);
  for (const auto& o : g.outputs) use(o);
}

int64_t opset_of(const Model& model, const std::string& domain) {
  auto it = model.opsets.find(canonical_domain(domain));
  return it == model.opsets.end() ? -1 : it->second;
}

}  // namespace

std::vector<std::string> node_reads(const Node& node) {
  std::vector<std::string> reads;
  std::unordered_set<std::string> seen;
  for (const auto& in : node.inputs)
    if (!in.empty() && seen.insert(in).second) reads.push_back(in);
  for (const auto& [name, a] : node.attrs) {
    if (a.kind == AttrKind::kGraph && a.g) free_names(*a.g, reads, seen);
    if (a.kind == AttrKind::kGraphs)
      for (const auto& g : a.graphs)
        if (g) free_names(*g, reads, seen);
  }
  return reads;
}

std::vector<bool> constant_nodes(const Graph& graph) {
  std::unordered_set<std::string> constant;
  for (const auto& [name, t] : graph.initializers) constant.insert(name);
  std::vector<bool> result(graph.nodes.size(), false);
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& n = graph.nodes[i];
    if (is_random_op(n)) continue;
    bool all = true;
    for (const auto& r : node_reads(n))
      if (!constant.count(r)) {
        all = false;
        break;
      }
    if (!all) continue;
    result[i] = true;
    for (const auto& o : n.outputs)
      if (!o.empty()) constant.insert(o);
  }
  return result;
}

std::vector<size_t> with_constant_producers(const Graph& graph, const std::vector<size_t>& keep,
                                            const std::vector<bool>& constant) {
  std::unordered_map<std::string, size_t> producer;
  for (size_t i = 0; i < graph.nodes.size(); ++i)
    for (const auto& o : graph.nodes[i].outputs)
      if (!o.empty()) producer.emplace(o, i);
  std::vector<char> in(graph.nodes.size(), 0);
  std::vector<size_t> stack;
  for (size_t k : keep)
    if (k < in.size() && !in[k]) {
      in[k] = 1;
      stack.push_back(k);
    }
  while (!stack.empty()) {
    const size_t i = stack.back();
    stack.pop_back();
    for (const auto& r : node_reads(graph.nodes[i])) {
      auto it = producer.find(r);
      if (it == producer.end() || !constant[it->second] || in[it->second]) continue;
      in[it->second] = 1;
      stack.push_back(it->second);
    }
  }
  std::vector<size_t> result;
  for (size_t i = 0; i < in.size(); ++i)
    if (in[i]) result.push_back(i);
  return result;
}

size_t lower_constant_nodes(Model& model) {
  Graph& g = model.graph;
  const std::unordered_set<std::string> outputs(g.outputs.begin(), g.outputs.end());
  size_t lowered = 0;
  std::vector<Node> kept;
  kept.reserve(g.nodes.size());
  for (Node& n : g.nodes) {
    Tensor value;
    if (n.domain.empty() && n.op_type == "Constant" && n.outputs.size() == 1 && !n.outputs[0].empty() &&
        !outputs.count(n.outputs[0]) && !g.initializers.count(n.outputs[0]) && n.attrs.size() == 1) {
      const auto& [key, a] = *n.attrs.begin();
      if (key == "value" && a.kind == AttrKind::kTensor && a.t.defined())
        value = a.t;
      else if (key == "value_float" && a.kind == AttrKind::kFloat)
        value = Tensor::scalar<float>(a.f);
      else if (key == "value_floats" && a.kind == AttrKind::kFloats)
        value = Tensor::from_vector<float>({static_cast<int64_t>(a.floats.size())}, a.floats);
      else if (key == "value_int" && a.kind == AttrKind::kInt)
        value = Tensor::scalar<int64_t>(a.i);
      else if (key == "value_ints" && a.kind == AttrKind::kInts)
        value = Tensor::from_vector<int64_t>({static_cast<int64_t>(a.ints.size())}, a.ints);
    }
    if (!value.defined()) {
      kept.push_back(std::move(n));
      continue;
    }
    g.types[n.outputs[0]] = TensorType{value.dtype(), shape_from_dims(value.shape())};
    g.initializers[n.outputs[0]] = std::move(value);
    ++lowered;
  }
  g.nodes = std::move(kept);
  return lowered;
}

PartialTypes infer_types_partial(const Model& model, const InferOptions& options, const OpRegistry& registry) {
  const Graph& g = model.graph;
  const size_t n = g.nodes.size();
  // Nodes Kiln cannot check (unknown op, opset, arity, attributes), each with its first issue.
  std::vector<std::string> unsupported(n);
  if (!check_model(model, registry).empty()) {
    for (size_t i = 0; i < n; ++i) {
      Model one;
      one.opsets = model.opsets;
      one.graph.nodes.push_back(g.nodes[i]);
      auto issues = check_model(one, registry);
      if (!issues.empty()) unsupported[i] = issues.front().reason;
    }
  }
  std::map<size_t, std::string> failed;  // nodes whose inference threw, with the message

  for (;;) {
    // The inference model: every node that can be inferred, with the declared types of skipped
    // nodes' outputs standing in as graph inputs.
    Model sub;
    sub.opsets = model.opsets;
    sub.ir_version = model.ir_version;
    sub.source_path = model.source_path;
    sub.graph.inputs = g.inputs;
    sub.graph.initializers = g.initializers;
    sub.graph.types = g.types;
    std::unordered_set<std::string> available(g.inputs.begin(), g.inputs.end());
    for (const auto& [name, t] : g.initializers) available.insert(name);
    std::vector<size_t> included;
    PartialTypes result;
    for (size_t i = 0; i < n; ++i) {
      const Node& node = g.nodes[i];
      std::string reason = unsupported[i];
      if (reason.empty() && failed.count(i)) reason = failed[i];
      if (reason.empty())
        for (const auto& r : node_reads(node))
          if (!available.count(r)) {
            reason = "depends on '" + r + "', whose type is unknown";
            break;
          }
      if (reason.empty()) {
        included.push_back(i);
        sub.graph.nodes.push_back(node);
        for (const auto& o : node.outputs)
          if (!o.empty()) available.insert(o);
        continue;
      }
      result.skipped.push_back({i, reason});
      for (const auto& o : node.outputs) {
        const TensorType* t = g.type_of(o);
        if (o.empty() || !t || t->dtype == DType::kUndefined || !t->shape) continue;
        sub.graph.inputs.push_back(o);
        available.insert(o);
      }
    }

    // Inference with the evaluator's results recorded: they are the values that stay constant.
    std::unordered_map<std::string, Tensor> values;
    auto run = [&](Model m) {  // by value: `sub` must survive a throw for the search below
      InferOptions opts = options;
      if (options.evaluator)
        opts.evaluator = [&values, base = options.evaluator](const Node& node, const OpSchema& schema, int64_t opset,
                                                             const std::vector<const Tensor*>& inputs) {
          std::vector<Tensor> outs = base(node, schema, opset, inputs);
          for (size_t i = 0; i < outs.size() && i < node.outputs.size(); ++i)
            if (!node.outputs[i].empty() && outs[i].defined()) values[node.outputs[i]] = outs[i];
          return outs;
        };
      infer_types(m, opts, registry);
      return m;
    };
    try {
      sub = run(sub);
    } catch (const std::exception& whole) {
      // Find the node that throws: the shortest prefix of the included nodes whose inference fails.
      Model base = sub;
      base.graph.nodes.clear();
      size_t ok = 0, bad = included.size();
      std::string message = whole.what();
      while (bad - ok > 1) {
        const size_t mid = ok + (bad - ok) / 2;
        Model prefix = base;
        for (size_t k = 0; k < mid; ++k) prefix.graph.nodes.push_back(g.nodes[included[k]]);
        try {
          run(std::move(prefix));
          ok = mid;
        } catch (const std::exception& e) {
          bad = mid;
          message = e.what();
        }
      }
      if (bad == 0 || failed.count(included[bad - 1])) throw;  // no node to blame: not expected
      failed[included[bad - 1]] = "type inference failed: " + message;
      continue;
    }

    result.types = std::move(sub.graph.types);
    for (size_t k : included) {
      const Node& node = g.nodes[k];
      if (node.domain.empty() && node.op_type == "Shape" && node.outputs.size() == 1 && !node.inputs.empty()) {
        auto it = result.types.find(node.inputs[0]);
        if (it != result.types.end() && it->second.shape && shape_is_static(*it->second.shape))
          values[node.outputs[0]] = shape_op_value(node, opset_of(model, ""), static_dims(*it->second.shape));
      }
    }
    for (const auto& in : g.inputs) values.erase(in);
    result.values = std::move(values);
    return result;
  }
}

Model extract_subgraph(const Model& model, const std::vector<size_t>& keep_in, const PartialTypes& types) {
  const Graph& g = model.graph;
  std::vector<size_t> keep = keep_in;
  std::sort(keep.begin(), keep.end());
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
  if (keep.empty()) throw Error(ErrorCode::kInvalidArgument, "extract_subgraph: no nodes to keep");
  if (keep.back() >= g.nodes.size())
    throw Error(ErrorCode::kInvalidArgument, "extract_subgraph: node index " + std::to_string(keep.back()) +
                                                 " is out of range (the graph has " + std::to_string(g.nodes.size()) +
                                                 " nodes)");
  std::vector<char> kept(g.nodes.size(), 0);
  for (size_t k : keep) kept[k] = 1;
  std::unordered_map<std::string, std::vector<size_t>> readers;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (const auto& r : node_reads(g.nodes[i])) readers[r].push_back(i);
  const std::unordered_set<std::string> model_inputs(g.inputs.begin(), g.inputs.end());
  const std::unordered_set<std::string> model_outputs(g.outputs.begin(), g.outputs.end());

  Model m;
  m.opsets = model.opsets;
  m.ir_version = model.ir_version;
  m.producer = model.producer;
  m.graph.name = g.name;
  std::unordered_set<std::string> produced;
  for (size_t k : keep) {
    m.graph.nodes.push_back(g.nodes[k]);
    for (const auto& o : g.nodes[k].outputs)
      if (!o.empty()) produced.insert(o);
  }

  // Inputs: the graph inputs the nodes read (in the model's order), then the cut tensors.
  std::unordered_set<std::string> seen, inputs_read;
  std::vector<std::string> new_inputs;
  for (size_t k : keep) {
    for (const auto& r : node_reads(g.nodes[k])) {
      if (produced.count(r) || !seen.insert(r).second) continue;
      if (auto it = g.initializers.find(r); it != g.initializers.end()) {
        m.graph.initializers[r] = it->second;
        m.graph.types[r] = TensorType{it->second.dtype(), shape_from_dims(it->second.shape())};
      } else if (model_inputs.count(r)) {
        inputs_read.insert(r);
        if (const TensorType* t = g.type_of(r)) m.graph.types[r] = *t;
      } else if (auto v = types.values.find(r); v != types.values.end()) {
        m.graph.initializers[r] = v->second;
        m.graph.types[r] = TensorType{v->second.dtype(), shape_from_dims(v->second.shape())};
      } else {
        auto t = types.types.find(r);
        if (t == types.types.end() || t->second.dtype == DType::kUndefined || !t->second.shape)
          throw Error(ErrorCode::kInvalidArgument,
                      "tensor '" + r + "' would become a graph input but its type is unknown");
        if (!shape_is_static(*t->second.shape))
          throw Error(ErrorCode::kInvalidArgument, "tensor '" + r + "' would become a graph input but its shape " +
                                                       shape_to_string(*t->second.shape) +
                                                       " is not static (give the model's input shapes)");
        new_inputs.push_back(r);
        m.graph.types[r] = t->second;
      }
    }
  }
  for (const auto& in : g.inputs)
    if (inputs_read.count(in)) m.graph.inputs.push_back(in);
  m.graph.inputs.insert(m.graph.inputs.end(), new_inputs.begin(), new_inputs.end());

  // Outputs: the model's own first, then what the nodes left out read, then dead nodes' outputs.
  std::unordered_set<std::string> outputs;
  auto add_output = [&](const std::string& o) {
    if (!outputs.insert(o).second) return;
    m.graph.outputs.push_back(o);
    if (const TensorType* t = g.type_of(o); t && t->dtype != DType::kUndefined) {
      m.graph.types[o] = *t;
    } else if (auto it = types.types.find(o); it != types.types.end() && it->second.dtype != DType::kUndefined) {
      m.graph.types[o] = TensorType{it->second.dtype, std::nullopt};
    }
  };
  for (const auto& o : g.outputs)
    if (produced.count(o)) add_output(o);
  for (size_t k : keep) {
    const Node& node = g.nodes[k];
    bool dead = true;
    for (const auto& o : node.outputs)
      if (!o.empty() && (readers.count(o) || model_outputs.count(o))) dead = false;
    for (const auto& o : node.outputs) {
      if (o.empty()) continue;
      bool read_outside = false;
      if (auto it = readers.find(o); it != readers.end())
        for (size_t r : it->second)
          if (!kept[r]) read_outside = true;
      if (read_outside || dead) add_output(o);
    }
  }
  return m;
}

}  // namespace kiln
