// `kiln check`: lints an ONNX model (like Polygraphy's `check lint`) and tells, node by node, whether a
// backend can build it (like `inspect capability`): unsupported nodes with the reason and a plugin or
// opset-conversion suggestion, fast CPU kernels vs the reference fallback, and the partition of the
// graph into supported and unsupported subgraphs (optionally written as ONNX). User doc: docs/check.md.
#include <CLI/CLI.hpp>
#include <google/protobuf/io/coded_stream.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <queue>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "backends/cpu/program.h"
#include "backends/reference/executor.h"
#include "cli_common.h"
#include "engine/engine_file.h"
#include "onnx/onnx.pb.h"
#include "onnx/onnx_import.h"
#include "onnx/subgraph.h"
#include "ops/model_check.h"
#include "passes/pass.h"
#include "plugins/plugins.h"
#include "runtime/builder.h"
#include "util/mapped_file.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ShapeMap = std::map<std::string, std::vector<int64_t>>;

// Bumped when a field of the JSON report changes meaning or goes away (adding fields keeps it).
constexpr int kJsonVersion = 1;
constexpr const char* kDocLink = "docs/troubleshooting.md#";
// Subgraphs list at most this many node names in the text report (--verbose: all).
constexpr size_t kTextNodeNames = 8;

struct CheckArgs {
  std::string model;
  std::string shapes;
  bool json = false;
  std::string backend = "cpu";
  int opt_level = 3;
  std::string save_subgraphs;
  bool verbose = false;
};

struct Issue {
  std::string severity;  // "error", "warning", "info"
  std::string check;     // stable id: "unknown-op", "dead-node", ... (docs/check.md lists them)
  std::string reason;
  int index = -1;        // the node's position in the graph, or -1
  std::string node;      // node name (may be empty)
  bool about_node = false;
  std::string domain, op_type;
  int64_t opset = -1;
  std::string value;       // the tensor an issue is about ("unused-input"...)
  std::string help;        // "docs/troubleshooting.md#unknown-op", or ""
  std::string suggestion;  // how to fix it, or ""
};

struct NodeStatus {
  bool supported = true;
  std::string reason;  // why not
  int part = -1;       // subgraph index
};

struct KernelRow {
  std::string node, op;
  std::vector<std::string> fused_ops;
  std::vector<std::string> tactics;  // every tactic that supports the node, in preference order
  std::string tactic;  // what an untimed build picks: the first tactic that supports the node
  std::string impl;
  std::string kind;    // "fast", "plugin", "reference", "folded"
};

struct Part {
  bool supported = true;
  std::vector<size_t> nodes;  // indices into the graph, ascending (a topological order)
  std::vector<std::string> inputs, outputs;
  std::string file;
};

struct Report {
  std::string path, backend;
  int opt_level = 3;
  bool loaded = false;
  Model model;
  ShapeMap shapes;  // concrete input shapes of the capability check
  bool shapes_known = false;
  std::vector<Issue> issues;
  std::vector<NodeStatus> nodes;
  std::vector<Part> parts;
  std::vector<KernelRow> kernels;
  PartialTypes types;  // symbolic types, for the subgraph boundaries

  size_t count(const std::string& severity) const {
    return static_cast<size_t>(std::count_if(issues.begin(), issues.end(),
                                             [&](const Issue& i) { return i.severity == severity; }));
  }
  bool buildable() const { return loaded && count("error") == 0; }
};

std::string plural(size_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

std::string op_label(const std::string& domain, const std::string& op) {
  return domain.empty() ? op : domain + "::" + op;
}

int64_t opset_of(const Model& m, const std::string& domain) {
  auto it = m.opsets.find(canonical_domain(domain));
  return it == m.opsets.end() ? -1 : it->second;
}

// The troubleshooting section a message links to ("docs/troubleshooting.md#unknown-op"), or "".
std::string help_link(const std::string& message) {
  const size_t at = message.find(kDocLink);
  if (at == std::string::npos) return {};
  size_t end = at + std::string(kDocLink).size();
  while (end < message.size() && (std::isalnum(static_cast<unsigned char>(message[end])) || message[end] == '-')) ++end;
  return message.substr(at, end - at);
}

Issue make_issue(std::string severity, std::string check, std::string reason) {
  Issue i;
  i.severity = std::move(severity);
  i.check = std::move(check);
  i.help = help_link(reason);
  i.reason = std::move(reason);
  return i;
}

Issue node_issue(std::string severity, std::string check, const Model& m, int index, const Node& n,
                 std::string reason) {
  Issue i = make_issue(std::move(severity), std::move(check), std::move(reason));
  i.about_node = true;
  i.index = index;
  i.node = n.name;
  i.domain = canonical_domain(n.domain);
  i.op_type = n.op_type;
  i.opset = opset_of(m, n.domain);
  return i;
}

Issue value_issue(std::string severity, std::string check, const std::string& value, std::string reason) {
  Issue i = make_issue(std::move(severity), std::move(check), std::move(reason));
  i.value = value;
  return i;
}

// ---- Suggestions

std::string plugin_suggestion(const std::string& domain, const std::string& op) {
  return "write a plugin providing " + (domain.empty() ? std::string("ai.onnx") : domain) + "::" + op +
         " (IPluginCreator with getPluginName()=\"" + op + "\", getPluginNamespace()=\"" + domain +
         "\"; see examples/plugins/scaled_tanh_plugin.cpp and docs/api.md#plugins), then load it with --plugin LIB.so";
}

std::string converter_suggestion(int64_t target, const std::string& path) {
  const std::string stem = fs::path(path).stem().string();
  return "convert the model to opset " + std::to_string(target) +
         " with ONNX's version converter: python3 -c \"import onnx; from onnx import version_converter as vc; "
         "onnx.save(vc.convert_version(onnx.load('" + path + "'), " + std::to_string(target) + "), '" + stem +
         "_opset" + std::to_string(target) + ".onnx')\"";
}

// The supported default-domain opset nearest to `opset` at which Kiln has `op`, or -1.
int64_t nearest_supported_opset(const std::string& op, int64_t opset) {
  int64_t best = -1;
  for (const OpSchema* s : OpRegistry::global().versions("", op)) {
    const int64_t lo = std::max<int64_t>(s->since_version, kMinSupportedOpset);
    const int64_t hi = std::min<int64_t>(s->until_version, kMaxSupportedOpset);
    if (lo > hi) continue;
    const int64_t pick = std::clamp(opset, lo, hi);
    if (best < 0 || std::abs(pick - opset) < std::abs(best - opset)) best = pick;
  }
  return best;
}

// ---- Loading and the protobuf-level lint (what the importer hides or stops at)

void lint_proto(const onnx::ModelProto& p, Report& r) {
  const onnx::GraphProto& g = p.graph();
  std::map<std::string, int64_t> opsets;
  for (const auto& o : p.opset_import()) opsets[canonical_domain(o.domain())] = o.version();
  Model names_only;  // opsets for the issues' "opset" field
  names_only.opsets = opsets;
  auto node_of = [](const onnx::NodeProto& np) {
    Node n;
    n.name = np.name();
    n.op_type = np.op_type();
    n.domain = canonical_domain(np.domain());
    return n;
  };
  std::unordered_set<std::string> initializers, defined;
  for (const auto& t : g.initializer()) {
    initializers.insert(t.name());
    defined.insert(t.name());
  }
  for (const auto& in : g.input()) {
    defined.insert(in.name());
    if (initializers.count(in.name()))
      r.issues.push_back(value_issue(
          "warning", "initializer-shadows-input", in.name(),
          "'" + in.name() + "' is both a graph input and an initializer: Kiln takes it as a constant (the "
          "initializer) and refuses a value fed for it at run time, while ONNX (IR version 4 and later) treats the "
          "initializer as a default other runtimes let callers override"));
  }
  for (int i = 0; i < g.node_size(); ++i)
    for (const auto& o : g.node(i).output())
      if (!o.empty() && !defined.insert(o).second) {
        Issue is = node_issue("error", "duplicate-definition", names_only, i, node_of(g.node(i)),
                              "redefines value '" + o + "', which a graph input, an initializer or another node "
                              "already defines (values are assigned once)");
        is.value = o;
        r.issues.push_back(is);
      }
  for (int i = 0; i < g.node_size(); ++i)
    for (const auto& in : g.node(i).input())
      if (!in.empty() && !defined.count(in)) {
        Issue is = node_issue("error", "undefined-input", names_only, i, node_of(g.node(i)),
                              "reads '" + in + "', which is not a graph input, an initializer or any node's output");
        is.value = in;
        r.issues.push_back(is);
      }
  for (const auto& o : g.output())
    if (!defined.count(o.name()))
      r.issues.push_back(value_issue("error", "output-not-produced", o.name(),
                                     "graph output '" + o.name() +
                                         "' is not produced by any node, graph input or initializer"));
}

// Parses and imports the model, linting the protobuf first so that every structural problem is
// listed, not only the one the importer stops at. Returns the import error, if any.
std::optional<Error> load(const std::string& path, Report& r) {
  try {
    if (is_engine_file(path))
      throw Error(ErrorCode::kInvalidArgument,
                  path + " is a Kiln engine, already built; kiln check takes an ONNX model (kiln inspect describes "
                         "engines)");
    const std::vector<uint8_t> bytes = read_file_bytes(path);
    if (bytes.size() > static_cast<size_t>(INT_MAX))
      throw Error(ErrorCode::kInvalidModel,
                  path + ": the protobuf is larger than 2 GiB; store weights as external data");
    onnx::ModelProto proto;
    google::protobuf::io::CodedInputStream stream(bytes.data(), static_cast<int>(bytes.size()));
    stream.SetTotalBytesLimit(INT_MAX);
    stream.SetRecursionLimit(256);
    if (!proto.ParseFromCodedStream(&stream) || !stream.ConsumedEntireMessage())
      throw Error(ErrorCode::kInvalidModel, path + ": not a valid ONNX model: the protobuf is truncated or corrupted");
    if (!proto.has_graph())
      throw Error(ErrorCode::kInvalidModel, path + ": the model has no graph (not an ONNX model, or truncated)");
    lint_proto(proto, r);
    fs::path base = fs::path(path).parent_path();
    if (base.empty()) base = ".";
    r.model = import_model_proto(proto, base, path);
    r.loaded = true;
    return std::nullopt;
  } catch (const Error& e) {
    return e;
  }
}

// ---- Graph-level lint

void lint_graph(Report& r) {
  const Model& m = r.model;
  const Graph& g = m.graph;
  std::unordered_map<std::string, size_t> first_named;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    if (n.name.empty()) {
      r.issues.push_back(node_issue("warning", "unnamed-node", m, static_cast<int>(i), n,
                                    "the node has no name: reports can only call it #" + std::to_string(i) +
                                        ", and options that pick layers by name (--layer-precision) cannot reach it"));
    } else if (auto [it, fresh] = first_named.emplace(n.name, i); !fresh) {
      r.issues.push_back(node_issue("warning", "duplicate-node-name", m, static_cast<int>(i), n,
                                    "node #" + std::to_string(it->second) + " has the same name: a name should pick "
                                    "one node (--layer-precision and reports address layers by name)"));
    }
  }

  std::unordered_set<std::string> read;
  for (const Node& n : g.nodes)
    for (const auto& v : node_reads(n)) read.insert(v);
  const std::unordered_set<std::string> outputs(g.outputs.begin(), g.outputs.end());
  for (const auto& in : g.inputs)
    if (!read.count(in) && !outputs.count(in))
      r.issues.push_back(value_issue("warning", "unused-input", in,
                                     "graph input '" + in +
                                         "' is never read by any node (callers must still feed it)"));
  std::vector<std::string> inits;
  for (const auto& [name, t] : g.initializers) inits.push_back(name);
  std::sort(inits.begin(), inits.end());
  for (const auto& name : inits)
    if (!read.count(name) && !outputs.count(name)) {
      const Tensor& t = g.initializers.at(name);
      r.issues.push_back(value_issue("warning", "unused-initializer", name,
                                     "initializer '" + name + "' (" + std::string(dtype_name(t.dtype())) + "[" +
                                         shape_to_string(t.shape()) + "], " + std::to_string(t.nbytes()) +
                                         " bytes) is never read by any node"));
    }
  const std::unordered_set<std::string> inputs(g.inputs.begin(), g.inputs.end());
  for (const auto& o : g.outputs) {
    if (inputs.count(o))
      r.issues.push_back(value_issue("warning", "output-not-computed", o,
                                     "graph output '" + o + "' is a graph input: no node computes it, it is copied "
                                     "through unchanged"));
    else if (g.initializers.count(o))
      r.issues.push_back(value_issue("warning", "output-not-computed", o,
                                     "graph output '" + o + "' is an initializer: no node computes it, it is a "
                                     "constant"));
  }

  // Dead nodes: none of their outputs reaches a graph output.
  std::unordered_set<std::string> live(g.outputs.begin(), g.outputs.end());
  std::vector<bool> dead(g.nodes.size(), true);
  for (size_t k = g.nodes.size(); k-- > 0;) {
    const Node& n = g.nodes[k];
    for (const auto& o : n.outputs)
      if (!o.empty() && live.count(o)) dead[k] = false;
    if (!dead[k])
      for (const auto& v : node_reads(n)) live.insert(v);
  }
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (!dead[i]) continue;
    const Node& n = g.nodes[i];
    bool used = false;
    for (const auto& o : n.outputs)
      if (!o.empty() && read.count(o)) used = true;
    r.issues.push_back(node_issue("warning", "dead-node", m, static_cast<int>(i), n,
                                  std::string(used ? "its outputs feed only dead nodes"
                                                   : "its outputs are never used") +
                                      ": it cannot affect any graph output (the dead-node-elimination pass removes "
                                      "it)"));
  }
}

// ---- Op-level support: the checker's issues per node, and a kernel for the backend

std::string check_id(const ModelIssue& issue) {
  if (issue.reason.starts_with("unknown op")) return "unknown-op";
  if (issue.reason.starts_with("unsupported opset")) return "unsupported-opset";
  if (issue.reason.starts_with("the model does not import an opset")) return "missing-opset-import";
  return "invalid-node";
}

void check_ops(Report& r) {
  const Model& m = r.model;
  const Graph& g = m.graph;
  r.nodes.assign(g.nodes.size(), {});
  for (const ModelIssue& issue : check_model(m))
    if (issue.node.empty() && issue.op == "model") {
      Issue is = make_issue("error", "unsupported-opset", issue.reason);
      is.opset = issue.opset;
      is.help = std::string(kDocLink) + "unsupported-opset";
      is.suggestion = converter_suggestion(kMaxSupportedOpset, r.path);
      r.issues.push_back(is);
    }
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    // One node at a time, so that every issue belongs to exactly one node (names may repeat).
    Model one;
    one.opsets = m.opsets;
    one.graph.nodes.push_back(n);
    for (const ModelIssue& issue : check_model(one)) {
      if (issue.node.empty() && issue.op == "model") continue;
      const std::string id = check_id(issue);
      Issue is = node_issue("error", id, m, static_cast<int>(i), n, issue.reason);
      const std::string domain = canonical_domain(n.domain);
      if (id == "unknown-op") {
        is.help = std::string(kDocLink) + "unknown-op";
        is.suggestion = plugin_suggestion(domain, n.op_type);
      } else if (id == "unsupported-opset") {
        is.help = std::string(kDocLink) + "unsupported-opset";
        if (domain.empty()) {
          const int64_t target = nearest_supported_opset(n.op_type, is.opset);
          if (target > 0) is.suggestion = converter_suggestion(target, r.path);
        } else {
          is.suggestion = plugin_suggestion(domain, n.op_type) + " (its getPluginVersion() must be at most " +
                          std::to_string(is.opset) + ", the opset the model imports for " + domain + ")";
        }
      } else if (id == "missing-opset-import") {
        is.suggestion = "add an opset_import for domain '" + domain + "' to the model (for a plugin's op, at least "
                        "its getPluginVersion())";
      }
      if (r.nodes[i].supported) {
        r.nodes[i].supported = false;
        r.nodes[i].reason = issue.reason;
      }
      r.issues.push_back(is);
    }
    if (!r.nodes[i].supported) continue;
    const bool has_reference = reference::KernelRegistry::global().find(n.domain, n.op_type) != nullptr;
    const bool has_tactic = !cpu::TacticRegistry::global().find(n.domain, n.op_type).empty();
    if (has_reference || (r.backend == "cpu" && has_tactic)) continue;
    const std::string reason = r.backend == "cpu"
                                   ? "no CPU kernel implements " + op_label(n.domain, n.op_type) +
                                         " (no tactic, and no reference kernel to fall back on)"
                                   : "the reference backend has no kernel for " + op_label(n.domain, n.op_type);
    Issue is = node_issue("error", "no-kernel", m, static_cast<int>(i), n, reason);
    is.suggestion = plugin_suggestion(canonical_domain(n.domain), n.op_type);
    r.nodes[i].supported = false;
    r.nodes[i].reason = reason;
    r.issues.push_back(is);
  }
}

// ---- Input shapes

// The concrete shapes the capability check uses: --shapes, then the declared static dims; a symbolic
// dim takes the size --shapes gave it on another input, else 1. Returns false (with an issue) when an
// input has no rank.
bool resolve_shapes(const ShapeMap& given, Report& r, std::map<std::string, int64_t>* symbols) {
  const Graph& g = r.model.graph;
  bool ok = true;
  for (const auto& in : g.inputs) {  // given shapes first: they bind the symbols
    auto it = given.find(in);
    const TensorType* t = g.type_of(in);
    if (it == given.end() || !t) continue;
    r.shapes[in] = resolve_input_shape(in, *t, given, nullptr);
    if (!t->shape) continue;
    for (size_t d = 0; d < t->shape->size(); ++d) {
      const Dim& dim = (*t->shape)[d];
      if (dim.known() || dim.symbol.empty()) continue;
      auto [s, fresh] = symbols->emplace(dim.symbol, it->second[d]);
      if (!fresh && s->second != it->second[d])
        throw Error(ErrorCode::kInvalidArgument, "--shapes: dimension '" + dim.symbol + "' is " +
                                                     std::to_string(s->second) + " in one input and " +
                                                     std::to_string(it->second[d]) + " in '" + in + "'");
    }
  }
  for (const auto& in : g.inputs) {
    if (r.shapes.count(in)) continue;
    const TensorType* t = g.type_of(in);
    if (!t || t->dtype == DType::kUndefined) {
      r.issues.push_back(value_issue("error", "untyped-input", in,
                                     "graph input '" + in + "' has no tensor type (dtype): Kiln cannot build a model "
                                     "whose input types are unknown"));
      ok = false;
      continue;
    }
    if (!t->shape) {
      r.issues.push_back(value_issue(r.backend == "cpu" ? "error" : "info", "unknown-input-shape", in,
                                     "graph input '" + in + "' has no shape (not even a rank): give it with --shapes " +
                                         in + ":DxDx..."));
      ok = false;
      continue;
    }
    std::vector<int64_t> dims;
    bool dynamic = false;
    for (const Dim& d : *t->shape) {
      if (d.known()) {
        dims.push_back(d.value);
        continue;
      }
      dynamic = true;
      auto s = d.symbol.empty() ? symbols->end() : symbols->find(d.symbol);
      dims.push_back(s != symbols->end() ? s->second : 1);
      if (!d.symbol.empty()) symbols->emplace(d.symbol, dims.back());
    }
    r.shapes[in] = dims;
    if (dynamic && r.backend == "cpu")
      r.issues.push_back(value_issue("info", "dynamic-input", in,
                                     "graph input '" + in + "' is " + t->to_string() + ": checked at " +
                                         shape_to_string(dims) + " (dynamic dims take 1, or the size --shapes gave the "
                                         "same symbol; choose with --shapes " + in + ":...)"));
  }
  return ok;
}

// The model with its inputs (and declared types using the same symbols) at the concrete shapes.
Model concrete_model(const Model& m, const ShapeMap& shapes, const std::map<std::string, int64_t>& symbols) {
  Model c = m;
  for (auto& [name, t] : c.graph.types) {
    if (!t.shape) continue;
    for (Dim& d : *t.shape)
      if (!d.known() && !d.symbol.empty())
        if (auto s = symbols.find(d.symbol); s != symbols.end()) d = Dim(s->second);
  }
  for (const auto& [name, dims] : shapes) c.graph.types[name].shape = shape_from_dims(dims);
  return c;
}

// ---- Partition

// Splits the nodes into maximal connected groups of the same support, listed in a topological order
// that keeps same-kind nodes together. Weight-side nodes (reading initializers only) join the group
// of their first consumer of the same kind, so a Constant never forms a group of its own.
std::vector<Part> partition(const Graph& g, const std::vector<NodeStatus>& status,
                            const std::unordered_map<std::string, Tensor>& known_values) {
  const size_t n = g.nodes.size();
  const std::vector<bool> constant = constant_nodes(g);
  std::unordered_map<std::string, std::vector<size_t>> readers;
  for (size_t i = 0; i < n; ++i)
    for (const auto& v : node_reads(g.nodes[i])) readers[v].push_back(i);
  std::unordered_map<std::string, size_t> producer;
  for (size_t i = 0; i < n; ++i)
    for (const auto& o : g.nodes[i].outputs)
      if (!o.empty()) producer.emplace(o, i);
  std::vector<std::vector<size_t>> users(n);
  std::vector<size_t> pending(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (constant[i]) continue;
    std::set<size_t> deps;
    for (const auto& v : node_reads(g.nodes[i]))
      if (auto it = producer.find(v); it != producer.end() && !constant[it->second]) deps.insert(it->second);
    pending[i] = deps.size();
    for (size_t d : deps) users[d].push_back(i);
  }
  // Kahn's algorithm, preferring a ready node of the kind just emitted, then the lowest index.
  using MinHeap = std::priority_queue<size_t, std::vector<size_t>, std::greater<>>;
  MinHeap ready[2];
  for (size_t i = 0; i < n; ++i)
    if (!constant[i] && pending[i] == 0) ready[status[i].supported].push(i);
  std::vector<size_t> order;
  int kind = -1;
  while (!ready[0].empty() || !ready[1].empty()) {
    if (kind < 0 || ready[kind].empty()) {
      if (ready[0].empty()) kind = 1;
      else if (ready[1].empty()) kind = 0;
      else kind = ready[0].top() < ready[1].top() ? 0 : 1;
    }
    const size_t i = ready[kind].top();
    ready[kind].pop();
    order.push_back(i);
    for (size_t u : users[i])
      if (--pending[u] == 0) ready[status[u].supported].push(u);
  }

  // Runs of one kind along that order, each split into its connected pieces (nodes sharing a tensor).
  std::vector<int> part_of(n, -1);
  std::vector<size_t> rank(n, 0);
  std::vector<Part> parts;
  std::vector<size_t> part_rank;
  for (size_t begin = 0; begin < order.size();) {
    size_t end = begin;
    const bool sup = status[order[begin]].supported;
    while (end < order.size() && status[order[end]].supported == sup) ++end;
    std::vector<size_t> parent(end - begin);
    std::iota(parent.begin(), parent.end(), 0);
    std::function<size_t(size_t)> find = [&](size_t x) { return parent[x] == x ? x : parent[x] = find(parent[x]); };
    std::unordered_map<std::string, size_t> owner;  // tensor -> first run member touching it
    for (size_t k = begin; k < end; ++k) {
      const Node& node = g.nodes[order[k]];
      std::vector<std::string> touched = node_reads(node);
      for (const auto& o : node.outputs)
        if (!o.empty()) touched.push_back(o);
      for (const auto& v : touched) {
        if (g.initializers.count(v)) continue;
        auto [it, fresh] = owner.emplace(v, k - begin);
        if (!fresh) parent[find(k - begin)] = find(it->second);
      }
    }
    std::map<size_t, int> piece;  // root -> part index
    for (size_t k = begin; k < end; ++k) {
      const size_t root = find(k - begin);
      auto [it, fresh] = piece.emplace(root, static_cast<int>(parts.size()));
      if (fresh) {
        parts.push_back(Part{sup, {}, {}, {}, {}});
        part_rank.push_back(k);
      }
      parts[it->second].nodes.push_back(order[k]);
      part_of[order[k]] = it->second;
      rank[order[k]] = k;
    }
    begin = end;
  }
  // Weight-side nodes, consumers first (a chain of them follows its last link).
  for (size_t i = n; i-- > 0;) {
    if (!constant[i]) continue;
    int best = -1;
    size_t best_rank = SIZE_MAX;
    for (const auto& o : g.nodes[i].outputs) {
      auto it = o.empty() ? readers.end() : readers.find(o);
      if (it == readers.end()) continue;
      for (size_t u : it->second)
        if (part_of[u] >= 0 && status[u].supported == status[i].supported && rank[u] < best_rank) {
          best_rank = rank[u];
          best = part_of[u];
        }
    }
    if (best < 0) {
      best = static_cast<int>(parts.size());
      parts.push_back(Part{status[i].supported, {}, {}, {}, {}});
      part_rank.push_back(0);
      best_rank = 0;
    }
    parts[best].nodes.push_back(i);
    part_of[i] = best;
    rank[i] = best_rank;
  }
  std::vector<size_t> idx(parts.size());
  std::iota(idx.begin(), idx.end(), 0);
  for (auto& p : parts) std::sort(p.nodes.begin(), p.nodes.end());
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
    return std::pair(part_rank[a], parts[a].nodes.front()) < std::pair(part_rank[b], parts[b].nodes.front());
  });
  std::vector<Part> sorted;
  for (size_t k : idx) sorted.push_back(std::move(parts[k]));

  // Boundaries, by the rule extract_subgraph (src/onnx/subgraph.h) follows when saving them: the
  // graph inputs read (in the model's order), then the cut tensors whose value is not a known constant
  // (those become initializers); outputs: the model's, then what other parts read, then dead ends.
  const std::unordered_set<std::string> graph_outputs(g.outputs.begin(), g.outputs.end());
  const std::unordered_set<std::string> graph_inputs(g.inputs.begin(), g.inputs.end());
  for (auto& p : sorted) {
    const std::unordered_set<size_t> in_part(p.nodes.begin(), p.nodes.end());
    std::unordered_set<std::string> produced, seen, inputs_read;
    for (size_t i : p.nodes)
      for (const auto& o : g.nodes[i].outputs)
        if (!o.empty()) produced.insert(o);
    std::vector<std::string> cut;
    for (size_t i : p.nodes)
      for (const auto& v : node_reads(g.nodes[i])) {
        if (produced.count(v) || g.initializers.count(v) || !seen.insert(v).second) continue;
        if (graph_inputs.count(v)) inputs_read.insert(v);
        else if (!known_values.count(v)) cut.push_back(v);
      }
    for (const auto& in : g.inputs)
      if (inputs_read.count(in)) p.inputs.push_back(in);
    p.inputs.insert(p.inputs.end(), cut.begin(), cut.end());
    seen.clear();
    for (const auto& o : g.outputs)
      if (produced.count(o) && seen.insert(o).second) p.outputs.push_back(o);
    for (size_t i : p.nodes) {
      bool dead = true;
      for (const auto& o : g.nodes[i].outputs)
        if (!o.empty() && (readers.count(o) || graph_outputs.count(o))) dead = false;
      for (const auto& o : g.nodes[i].outputs) {
        if (o.empty() || seen.count(o)) continue;
        bool outside = false;
        if (auto it = readers.find(o); it != readers.end())
          for (size_t u : it->second)
            if (!in_part.count(u)) outside = true;
        if (outside || dead) {
          seen.insert(o);
          p.outputs.push_back(o);
        }
      }
    }
  }
  return sorted;
}

// ---- Capability at concrete shapes

bool is_random_op(const Node& n) {
  return n.op_type.starts_with("Random") || n.op_type == "Bernoulli" || n.op_type == "Multinomial";
}

std::optional<std::vector<int64_t>> concrete_dims(const TensorType* t) {
  if (!t || !t->shape || !shape_is_static(*t->shape)) return std::nullopt;
  return static_dims(*t->shape);
}

struct Failure {
  size_t node;  // index in the optimized graph
  std::string check, reason;
};

struct ShapeAnalysis {
  std::vector<Failure> failures;                 // nodes no CPU tactic can run
  std::vector<std::vector<std::string>> tactics;  // per node: the tactics that support it (empty: folded or failed)
};

// What each node of an optimized graph can run on at these shapes. Mirrors what Program::compile
// does per node (re-inference at the shapes, folding of what became constant, then every tactic's
// supports()), but goes on past a failure so that all of them are listed at once.
ShapeAnalysis analyze_at_shapes(const Model& optimized, const ShapeMap& shapes) {
  Model m = optimized;
  Graph& g = m.graph;
  const std::unordered_set<std::string> inputs(g.inputs.begin(), g.inputs.end());
  for (auto it = g.types.begin(); it != g.types.end();) {
    if (!inputs.count(it->first) && !g.initializers.count(it->first)) it = g.types.erase(it);
    else ++it;
  }
  for (const auto& [name, dims] : shapes) g.types[name].shape = shape_from_dims(dims);
  InferOptions io;
  io.evaluator = reference::constant_evaluator();
  const PartialTypes types = infer_types_partial(m, io);
  std::map<size_t, std::string> skipped;
  for (const auto& s : types.skipped) skipped[s.node] = s.reason;

  ShapeAnalysis result;
  result.tactics.resize(g.nodes.size());
  std::vector<Failure>& failures = result.failures;
  std::unordered_map<std::string, Tensor> constants(g.initializers.begin(), g.initializers.end());
  std::unordered_map<std::string, std::string> runtime_shape;  // value -> the failing node it comes from
  auto type_of = [&](const std::string& v) -> const TensorType* {
    auto it = types.types.find(v);
    return it == types.types.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    auto fail = [&](std::string check, std::string reason) {
      failures.push_back({i, std::move(check), std::move(reason)});
      for (const auto& o : n.outputs)
        if (!o.empty()) runtime_shape.emplace(o, n.describe());
    };
    if (auto s = skipped.find(i); s != skipped.end() && !s->second.starts_with("depends on")) {
      fail("build-error", s->second);
      continue;
    }
    const int64_t opset = opset_of(m, n.domain);
    cpu::KernelConfig cfg;
    cfg.node = &n;
    cfg.schema = OpRegistry::global().find(n.domain, n.op_type, opset);
    cfg.opset = opset;
    cfg.threads = cpu::default_threads();
    if (!cfg.schema) {
      fail("build-error", "no schema at opset " + std::to_string(opset));
      continue;
    }
    std::string upstream;
    bool all_constant = !is_random_op(n);
    std::vector<const Tensor*> values;
    for (const auto& in : n.inputs) {
      if (in.empty()) {
        cfg.inputs.emplace_back();
        values.push_back(nullptr);
        continue;
      }
      cpu::ValueInfo v;
      v.name = in;
      const TensorType* t = type_of(in);
      const auto dims = concrete_dims(t);
      if (!dims) {
        auto from = runtime_shape.find(in);
        upstream = "reads '" + in + "', whose shape is only known at run time" +
                   (from != runtime_shape.end() ? " (it comes from " + from->second + ")" : std::string());
        break;
      }
      v.dtype = t->dtype;
      v.shape = *dims;
      if (auto c = constants.find(in); c != constants.end()) v.constant = &c->second;
      else all_constant = false;
      values.push_back(v.constant);
      cfg.inputs.push_back(v);
    }
    if (!upstream.empty()) {
      fail("data-dependent-shape", upstream + "; the CPU backend needs every shape before running");
      continue;
    }
    std::string dynamic_output;
    for (const auto& o : n.outputs) {
      cpu::ValueInfo v;
      v.name = o;
      if (!o.empty()) {
        const TensorType* t = type_of(o);
        const auto dims = concrete_dims(t);
        if (!dims) {
          dynamic_output = "output '" + o + "' is " + (t ? t->to_string() : std::string("of unknown type")) +
                           " at these input shapes: its shape depends on data computed at run time, and the CPU "
                           "backend needs every shape before running (the reference backend runs it: --backend "
                           "reference)";
          break;
        }
        v.dtype = t->dtype;
        v.shape = *dims;
      }
      cfg.outputs.push_back(v);
    }
    if (!dynamic_output.empty()) {
      fail("data-dependent-shape", dynamic_output);
      continue;
    }
    // Nodes computable from constants are folded at build time: they need no kernel.
    const bool shape_op = n.domain.empty() && (n.op_type == "Shape" || n.op_type == "Size");
    if (all_constant || shape_op) {
      bool folded = shape_op;
      if (!shape_op) {
        try {
          std::vector<Tensor> outs = io.evaluator(n, *cfg.schema, opset, values);
          for (size_t k = 0; k < n.outputs.size() && k < outs.size(); ++k)
            if (!n.outputs[k].empty()) constants[n.outputs[k]] = std::move(outs[k]);
          folded = true;
        } catch (const std::exception&) {
          folded = false;  // then it needs a kernel like any other node
        }
      }
      if (folded) continue;
    }
    std::vector<std::string> tried;
    auto supports = [&](const cpu::Tactic& t) {
      try {
        if (t.supports(cfg)) result.tactics[i].push_back(t.name());
      } catch (const std::exception&) {
        // As in the build: a tactic whose supports() throws does not support the node.
      }
    };
    for (const cpu::Tactic* t : cpu::TacticRegistry::global().find(n.domain, n.op_type)) {
      tried.push_back(t->name());
      supports(*t);
    }
    supports(cpu::reference_tactic());
    if (!result.tactics[i].empty()) continue;
    std::string why = "no CPU kernel supports it at these shapes and dtypes (";
    for (size_t k = 0; k < tried.size(); ++k) why += (k ? ", " : "tactics tried: ") + tried[k];
    why += std::string(tried.empty() ? "no tactic" : "") + "; no reference kernel to fall back on)";
    fail("no-kernel", why);
  }
  return result;
}

// The nodes of the original graph (among `candidates`) an optimized node stands for: itself, or what
// it fused (its fused_ops attribute lists "Op:name").
std::vector<size_t> originals_of(const Node& opt, const Graph& g, const std::vector<size_t>& candidates) {
  std::set<std::string> names;
  if (const Attribute* f = opt.attr("fused_ops")) {
    for (const auto& s : f->strings) names.insert(s.substr(s.find(':') + 1));
  } else if (!opt.name.empty()) {
    names.insert(opt.name);
  }
  std::vector<size_t> found;
  for (size_t i : candidates)
    if (!g.nodes[i].name.empty() && names.count(g.nodes[i].name)) found.push_back(i);
  return found;
}

std::string fused_note(const Node& n) {
  const Attribute* f = n.attr("fused_ops");
  if (!f || f->strings.empty()) return {};
  std::string s = " (fuses ";
  for (size_t k = 0; k < f->strings.size(); ++k) s += (k ? " + " : "") + f->strings[k];
  return s + ")";
}

// Builds one unit (the whole model, or a supported subgraph of it) the way `kiln build` does, with
// tactics untimed: graph passes, then a CPU program at `shapes`. What fails marks the original nodes
// it covers unsupported.
void check_unit_cpu(Model unit, const ShapeMap& shapes, const std::vector<size_t>& originals, Report& r) {
  const Graph& og = r.model.graph;
  BuildConfig config;
  config.opt_level = r.opt_level;
  for (const auto& line : plugins::adapt_build_config(unit, config))
    r.issues.push_back(make_issue("info", "plugin", line));
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  try {
    infer_types(unit, infer);
    PassContext ctx;
    ctx.opt_level = config.opt_level;
    ctx.disabled = config.disabled_passes;
    ctx.evaluator = infer.evaluator;
    ctx.input_shapes = shapes;
    if (config.opt_level > 0) PassManager::standard().run(unit, ctx);
    infer_types(unit, infer);
  } catch (const std::exception& e) {
    r.issues.push_back(make_issue("error", "build-error", std::string("the graph passes failed: ") + e.what()));
    return;
  }
  const Graph& g = unit.graph;
  cpu::CompileOptions co;
  co.time_tactics = false;  // the first supporting tactic: a fast one whenever any supports the node
  std::shared_ptr<const cpu::Program> program;
  std::string compile_error;
  try {
    program = cpu::Program::compile(unit, shapes, co);
  } catch (const std::exception& e) {
    compile_error = e.what();
  }
  ShapeAnalysis analysis;
  std::string analysis_error;
  try {
    analysis = analyze_at_shapes(unit, shapes);
  } catch (const std::exception& e) {
    analysis_error = e.what();
  }
  if (!program) {
    const std::vector<Failure>& failures = analysis.failures;
    if (!analysis_error.empty())
      compile_error += " (listing the other unsupported nodes failed too: " + analysis_error + ")";
    if (failures.empty()) {
      r.issues.push_back(make_issue("error", "build-error", "the CPU program does not compile: " + compile_error));
      return;
    }
    for (const Failure& f : failures) {
      const Node& n = g.nodes[f.node];
      const std::vector<size_t> orig = originals_of(n, og, originals);
      Issue is = node_issue("error", f.check, r.model, orig.size() == 1 ? static_cast<int>(orig[0]) : -1, n,
                            f.reason + fused_note(n));
      is.opset = opset_of(unit, n.domain);
      if (f.check == "no-kernel") is.suggestion = plugin_suggestion(canonical_domain(n.domain), n.op_type);
      r.issues.push_back(is);
      for (size_t i : orig)
        if (r.nodes[i].supported) {
          r.nodes[i].supported = false;
          r.nodes[i].reason = f.reason;
        }
    }
    return;
  }
  std::map<int, const cpu::StepInfo*> step_of;
  for (const auto& s : program->steps())
    if (s.node_index >= 0) step_of[s.node_index] = &s;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    KernelRow k;
    k.node = n.name.empty() ? n.describe() : n.name;
    k.op = op_label(n.domain, n.op_type);
    if (const Attribute* f = n.attr("fused_ops")) k.fused_ops = f->strings;
    k.tactic = program->node_tactics()[i];
    if (i < analysis.tactics.size()) k.tactics = analysis.tactics[i];
    if (!k.tactic.empty() && std::find(k.tactics.begin(), k.tactics.end(), k.tactic) == k.tactics.end())
      k.tactics.insert(k.tactics.begin(), k.tactic);
    if (auto s = step_of.find(static_cast<int>(i)); s != step_of.end()) k.impl = s->second->impl;
    if (k.tactic.empty()) k.kind = "folded";
    else if (k.tactic == cpu::reference_tactic().name()) k.kind = "reference";
    else if (plugins::is_plugin_tactic(k.tactic)) k.kind = "plugin";
    else k.kind = "fast";
    if (k.kind == "reference") {
      const std::vector<size_t> orig = originals_of(n, og, originals);
      Issue is = node_issue("info", "reference-fallback", r.model, orig.size() == 1 ? static_cast<int>(orig[0]) : -1, n,
                            "runs on the portable reference kernel (slow): no fast CPU kernel supports it at these "
                            "shapes and dtypes" + fused_note(n));
      is.opset = opset_of(unit, n.domain);
      r.issues.push_back(is);
    }
    r.kernels.push_back(std::move(k));
  }
}

void check_unit_reference(Model unit, Report& r) {
  try {
    reference::Executor exec(std::move(unit));
  } catch (const std::exception& e) {
    r.issues.push_back(
        make_issue("error", "build-error", std::string("the reference executor refuses it: ") + e.what()));
  }
}

// Type inference (symbolic, for the lint), then the build of every supported part at concrete shapes.
void check_capability(Report& r, const ShapeMap& given) {
  const Model& m = r.model;
  const Graph& g = m.graph;
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  r.types = infer_types_partial(m, infer);
  for (const auto& s : r.types.skipped) {
    if (!s.reason.starts_with("type inference failed")) continue;
    r.issues.push_back(node_issue("error", "inference-error", m, static_cast<int>(s.node), g.nodes[s.node], s.reason));
    if (r.nodes[s.node].supported) {
      r.nodes[s.node].supported = false;
      r.nodes[s.node].reason = s.reason;
    }
  }

  std::map<std::string, int64_t> symbols;
  r.shapes_known = resolve_shapes(given, r, &symbols);
  const bool all_supported =
      std::all_of(r.nodes.begin(), r.nodes.end(), [](const NodeStatus& s) { return s.supported; });
  const bool model_level_error = std::any_of(r.issues.begin(), r.issues.end(), [](const Issue& i) {
    return i.severity == "error" && !i.about_node;
  });
  if (model_level_error) return;  // the model as a whole cannot be built: no build to try
  std::vector<size_t> every(g.nodes.size());
  std::iota(every.begin(), every.end(), 0);
  if (all_supported && r.backend == "reference") {  // the reference executor takes any input shapes
    check_unit_reference(m, r);
    return;
  }
  if (!r.shapes_known) return;
  if (all_supported) {  // the real build path, on the whole model
    check_unit_cpu(m, r.shapes, every, r);
    return;
  }
  // Each supported part alone: its boundary tensors become graph inputs at the concrete shapes.
  const Model concrete = concrete_model(m, r.shapes, symbols);
  const PartialTypes ctypes = infer_types_partial(concrete, infer);
  std::set<size_t> skipped;
  for (const auto& s : ctypes.skipped) {
    skipped.insert(s.node);
    // Inference that only fails at these shapes (the symbolic pass above reported the others).
    if (!s.reason.starts_with("type inference failed") || !r.nodes[s.node].supported) continue;
    r.issues.push_back(node_issue("error", "inference-error", m, static_cast<int>(s.node), g.nodes[s.node],
                                  s.reason + " (at the shapes checked)"));
    r.nodes[s.node].supported = false;
    r.nodes[s.node].reason = s.reason;
  }
  const std::vector<Part> parts = partition(g, r.nodes, ctypes.values);
  for (size_t p = 0; p < parts.size(); ++p) {
    const Part& part = parts[p];
    if (!part.supported) continue;
    std::string why;
    for (size_t i : part.nodes)
      if (skipped.count(i)) {
        for (const auto& s : ctypes.skipped)
          if (s.node == i) why = g.nodes[i].describe() + " " + s.reason;
        break;
      }
    Model unit;
    if (why.empty()) {
      try {
        unit = extract_subgraph(concrete, part.nodes, ctypes);
      } catch (const Error& e) {
        why = e.what();
      }
    }
    if (!why.empty()) {
      const size_t first = part.nodes.front();
      r.issues.push_back(node_issue("info", "not-checked", m, static_cast<int>(first), g.nodes[first],
                                    "the supported subgraph starting here (" + plural(part.nodes.size(), "node") +
                                        ") was not built at the check's shapes: " + why +
                                        " (declare the types of unsupported nodes' outputs in the model's value_info "
                                        "to check it)"));
      continue;
    }
    ShapeMap shapes;
    for (const auto& in : unit.graph.inputs) shapes[in] = static_dims(*unit.graph.type_of(in)->shape);
    if (r.backend == "cpu") check_unit_cpu(std::move(unit), shapes, part.nodes, r);
    else check_unit_reference(std::move(unit), r);
  }
}

// Writes each subgraph as ONNX (supported_subgraph-K.onnx / unsupported_subgraph-K.onnx), its boundary
// tensors typed at the check's shapes.
void save_subgraphs(const std::string& dir, Report& r) {
  fs::create_directories(dir);
  std::map<std::string, int64_t> symbols;
  for (const auto& in : r.model.graph.inputs) {  // the symbols the chosen shapes bound
    const TensorType* t = r.model.graph.type_of(in);
    auto s = r.shapes.find(in);
    if (!t || !t->shape || s == r.shapes.end()) continue;
    for (size_t d = 0; d < t->shape->size() && d < s->second.size(); ++d)
      if (!(*t->shape)[d].symbol.empty()) symbols.emplace((*t->shape)[d].symbol, s->second[d]);
  }
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  const Model concrete = r.shapes_known ? concrete_model(r.model, r.shapes, symbols) : r.model;
  const PartialTypes types = infer_types_partial(concrete, infer);
  for (size_t p = 0; p < r.parts.size(); ++p) {
    Part& part = r.parts[p];
    const std::string name = std::string(part.supported ? "supported" : "unsupported") + "_subgraph-" +
                             std::to_string(p) + ".onnx";
    const fs::path file = fs::path(dir) / name;
    try {
      save_onnx(extract_subgraph(concrete, part.nodes, types), file);
      part.file = file.string();
    } catch (const Error& e) {
      r.issues.push_back(make_issue("warning", "subgraph-not-saved",
                                    "subgraph " + std::to_string(p) + " was not written to " + file.string() + ": " +
                                        e.what()));
    }
  }
}

// ---- Output

const TensorType* best_type(const Report& r, const std::string& v) {
  if (auto it = r.types.types.find(v); it != r.types.types.end()) return &it->second;
  return r.model.graph.type_of(v);
}

json or_null(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

json report_json(const Report& r) {
  json j;
  j["version"] = kJsonVersion;
  j["model"] = r.path;
  j["backend"] = r.backend;
  j["opt_level"] = r.opt_level;
  j["loaded"] = r.loaded;
  j["buildable"] = r.buildable();
  json shapes = json::object();
  for (const auto& [name, dims] : r.shapes) shapes[name] = dims;
  j["shapes"] = shapes;
  size_t supported = 0;
  for (const auto& s : r.nodes) supported += s.supported;
  std::map<std::string, size_t> kinds{{"fast", 0}, {"plugin", 0}, {"reference", 0}, {"folded", 0}};
  for (const auto& k : r.kernels) ++kinds[k.kind];
  size_t supported_parts = 0;
  for (const auto& p : r.parts) supported_parts += p.supported;
  j["counts"] = {{"nodes", r.nodes.size()},
                 {"supported", supported},
                 {"unsupported", r.nodes.size() - supported},
                 {"errors", r.count("error")},
                 {"warnings", r.count("warning")},
                 {"infos", r.count("info")},
                 {"subgraphs", r.parts.size()},
                 {"supported_subgraphs", supported_parts},
                 {"unsupported_subgraphs", r.parts.size() - supported_parts},
                 {"kernels_fast", kinds["fast"]},
                 {"kernels_plugin", kinds["plugin"]},
                 {"kernels_reference", kinds["reference"]},
                 {"kernels_folded", kinds["folded"]}};
  j["issues"] = json::array();
  for (const Issue& i : r.issues) {
    json e;
    e["severity"] = i.severity;
    e["check"] = i.check;
    e["node"] = i.about_node ? json(i.node) : json(nullptr);
    e["index"] = i.index >= 0 ? json(i.index) : json(nullptr);
    e["op"] = i.about_node ? json(op_label(i.domain, i.op_type)) : json(nullptr);
    e["domain"] = i.about_node ? json(i.domain.empty() ? "ai.onnx" : i.domain) : json(nullptr);
    e["op_type"] = or_null(i.op_type);
    e["opset"] = i.opset >= 0 ? json(i.opset) : json(nullptr);
    e["value"] = or_null(i.value);
    e["reason"] = i.reason;
    e["help"] = or_null(i.help);
    e["suggestion"] = or_null(i.suggestion);
    j["issues"].push_back(e);
  }
  j["nodes"] = json::array();
  if (r.loaded)
    for (size_t i = 0; i < r.nodes.size(); ++i) {
      const Node& n = r.model.graph.nodes[i];
      const std::string domain = canonical_domain(n.domain);
      j["nodes"].push_back({{"index", i},
                            {"name", n.name},
                            {"op", op_label(domain, n.op_type)},
                            {"domain", domain.empty() ? "ai.onnx" : domain},
                            {"op_type", n.op_type},
                            {"opset", opset_of(r.model, n.domain)},
                            {"supported", r.nodes[i].supported},
                            {"reason", or_null(r.nodes[i].reason)},
                            {"subgraph", r.nodes[i].part}});
    }
  j["kernels"] = json::array();
  for (const auto& k : r.kernels)
    j["kernels"].push_back({{"node", k.node},
                            {"op", k.op},
                            {"fused_ops", k.fused_ops},
                            {"tactic", or_null(k.tactic)},
                            {"tactics", k.tactics},
                            {"impl", or_null(k.impl)},
                            {"kind", k.kind}});
  j["subgraphs"] = json::array();
  for (size_t p = 0; p < r.parts.size(); ++p) {
    const Part& part = r.parts[p];
    json names = json::array(), indices = json::array(), ins = json::array(), outs = json::array();
    for (size_t i : part.nodes) {
      names.push_back(r.model.graph.nodes[i].name);
      indices.push_back(i);
    }
    for (const auto& v : part.inputs) {
      json e = type_json(best_type(r, v));
      e["name"] = v;
      ins.push_back(e);
    }
    for (const auto& v : part.outputs) {
      json e = type_json(best_type(r, v));
      e["name"] = v;
      outs.push_back(e);
    }
    j["subgraphs"].push_back({{"index", p},
                              {"supported", part.supported},
                              {"nodes", names},
                              {"node_indices", indices},
                              {"inputs", ins},
                              {"outputs", outs},
                              {"file", or_null(part.file)}});
  }
  return j;
}

std::string where(const Issue& i) {
  if (i.about_node) {
    std::string s = op_label(i.domain, i.op_type);
    if (!i.node.empty()) s += " '" + i.node + "'";
    if (i.index >= 0) s += " #" + std::to_string(i.index);
    if (i.opset >= 0) s += " (opset " + std::to_string(i.opset) + ")";
    return s;
  }
  if (!i.value.empty()) return "'" + i.value + "'";
  return "model";
}

std::string values_text(const Report& r, const std::vector<std::string>& values) {
  if (values.empty()) return "-";
  std::string s;
  for (size_t k = 0; k < values.size(); ++k) {
    const TensorType* t = best_type(r, values[k]);
    s += (k ? ", " : "") + values[k] + " " + (t ? t->to_string() : std::string("?"));
  }
  return s;
}

void print_text(const Report& r, bool verbose) {
  const Graph& g = r.model.graph;
  std::cout << "model: " << r.path;
  if (r.loaded) {
    std::cout << " (" << g.nodes.size() << " nodes; opsets";
    for (const auto& [d, v] : r.model.opsets) std::cout << ' ' << (d.empty() ? "ai.onnx" : d) << '=' << v;
    std::cout << ")";
  }
  std::cout << "\n";
  std::cout << "backend: " << r.backend;
  if (r.backend == "cpu") std::cout << ", opt level " << r.opt_level;
  if (!r.shapes.empty()) {
    std::cout << ", shapes ";
    bool first = true;
    for (const auto& [name, dims] : r.shapes) {
      std::cout << (first ? "" : ",") << name << ':' << shape_to_string(dims);
      first = false;
    }
  }
  std::cout << "\n";
  if (r.loaded) {
    size_t supported = 0;
    for (const auto& s : r.nodes) supported += s.supported;
    std::cout << "nodes: " << r.nodes.size() << " (" << supported << " supported, " << r.nodes.size() - supported
              << " unsupported)";
    if (r.backend == "cpu" && !r.kernels.empty()) {
      std::map<std::string, size_t> kinds;
      for (const auto& k : r.kernels) ++kinds[k.kind];
      std::cout << "; kernels after the passes: " << kinds["fast"] << " fast, " << kinds["reference"]
                << " reference fallback, " << kinds["plugin"] << " plugin, " << kinds["folded"] << " folded";
    }
    std::cout << "; subgraphs: " << r.parts.size() << "\n";
  }
  std::cout << "result: " << (r.buildable() ? "buildable" : "NOT buildable") << " ("
            << plural(r.count("error"), "error") << ", " << plural(r.count("warning"), "warning") << ", "
            << r.count("info") << " info)\n";

  if (!r.issues.empty()) {
    std::cout << "\nissues:\n";
    std::set<std::string> suggested;
    for (const char* severity : {"error", "warning", "info"})
      for (const Issue& i : r.issues) {
        if (i.severity != severity) continue;
        std::cout << "  " << i.severity << std::string(8 - i.severity.size(), ' ') << i.check << "  " << where(i)
                  << ": " << i.reason;
        if (!i.help.empty() && i.reason.find(i.help) == std::string::npos) std::cout << " (see " << i.help << ")";
        std::cout << "\n";
        if (!i.suggestion.empty() && suggested.insert(i.suggestion).second)
          std::cout << "          fix: " << i.suggestion << "\n";
      }
  }
  if (verbose && !r.kernels.empty()) {
    std::cout << "\nkernels (" << plural(r.kernels.size(), "node") << " after the passes):\n";
    for (const auto& k : r.kernels) {
      std::cout << "  " << k.kind << std::string(k.kind.size() < 10 ? 10 - k.kind.size() : 1, ' ') << k.op << " '"
                << k.node << "'";
      if (!k.tactic.empty()) std::cout << ": " << k.tactic;
      if (!k.impl.empty()) std::cout << " [" << k.impl << "]";
      if (k.tactics.size() > 1) {
        std::cout << " (supported by";
        for (const auto& t : k.tactics) std::cout << ' ' << t;
        std::cout << ")";
      }
      if (!k.fused_ops.empty()) {
        std::cout << " <- ";
        for (size_t f = 0; f < k.fused_ops.size(); ++f) std::cout << (f ? " + " : "") << k.fused_ops[f];
      }
      std::cout << "\n";
    }
  }
  if (!r.parts.empty()) {
    std::cout << "\nsubgraphs:\n";
    for (size_t p = 0; p < r.parts.size(); ++p) {
      const Part& part = r.parts[p];
      std::cout << "  " << p << ": " << (part.supported ? "supported" : "UNSUPPORTED") << ", " << part.nodes.size()
                << (part.nodes.size() == 1 ? " node" : " nodes") << ":";
      const size_t shown = verbose ? part.nodes.size() : std::min(part.nodes.size(), kTextNodeNames);
      for (size_t k = 0; k < shown; ++k) {
        const Node& n = g.nodes[part.nodes[k]];
        std::cout << (k ? ", " : " ") << (n.name.empty() ? "#" + std::to_string(part.nodes[k]) : n.name);
      }
      if (shown < part.nodes.size()) std::cout << ", ... (" << part.nodes.size() - shown << " more)";
      std::cout << "\n     inputs:  " << values_text(r, part.inputs) << "\n";
      std::cout << "     outputs: " << values_text(r, part.outputs) << "\n";
      if (!part.file.empty()) std::cout << "     written: " << part.file << "\n";
    }
  }
}

int cmd_check(const CheckArgs& args) {
  Report r;
  r.path = args.model;
  r.backend = args.backend;
  r.opt_level = args.opt_level;
  const ShapeMap given = parse_shapes(args.shapes);

  if (std::optional<Error> error = load(args.model, r)) {
    // The lint found before the importer stopped is still worth showing; the error itself goes to
    // stderr like every other kiln error (and into the JSON report).
    if (args.json) {
      Issue is = make_issue("error", "load-error", error->what());
      r.issues.push_back(is);
      std::cout << report_json(r).dump(2) << "\n";
    } else if (!r.issues.empty()) {
      print_text(r, args.verbose);
    }
    throw *error;
  }
  check_shape_names(r.model.graph, given, "--shapes", args.model);
  lint_graph(r);
  check_ops(r);
  check_capability(r, given);
  r.parts = partition(r.model.graph, r.nodes, r.types.values);
  for (size_t p = 0; p < r.parts.size(); ++p)
    for (size_t i : r.parts[p].nodes) r.nodes[i].part = static_cast<int>(p);
  if (!args.save_subgraphs.empty()) save_subgraphs(args.save_subgraphs, r);

  if (args.json) std::cout << report_json(r).dump(2) << "\n";
  else print_text(r, args.verbose);
  return r.buildable() ? 0 : 1;
}

}  // namespace

// Registers `kiln check` on `app`; *run is set to the function that runs it once parsed.
CLI::App* add_check_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<CheckArgs>();
  auto* sub = app.add_subcommand("check", "Lint a model and report, node by node, whether a backend can build it: "
                                          "unsupported nodes, fast vs fallback kernels, supported subgraphs");
  sub->add_option("model", args->model, "ONNX model")->required();
  sub->add_option("--shapes", args->shapes,
                  "Input shapes to check at: NAME:1x3x224x224,... (dynamic dims default to 1)");
  sub->add_flag("--json", args->json, "Print the report as JSON (schema in docs/check.md)");
  sub->add_option("--backend", args->backend, "cpu (default) or reference")->check(CLI::IsMember({"cpu", "reference"}));
  sub->add_option("--opt-level", args->opt_level, "Graph optimization level 0-5 of the cpu build (default 3)")
      ->check(CLI::Range(0, 5));
  sub->add_option("--save-subgraphs", args->save_subgraphs,
                  "Write each supported/unsupported subgraph to this folder as ONNX");
  sub->add_flag("--verbose,-v", args->verbose, "Also list every kernel and every node of each subgraph");
  sub->footer("Exit 0 when the model can be built (warnings allowed), 1 when it cannot or on errors, 2 on bad flags.\n"
              "See docs/check.md.");
  *run = [args] { return cmd_check(*args); };
  return sub;
}

}  // namespace kiln::cli
