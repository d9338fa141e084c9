// NetworkDefinition (a Model built by hand) and OnnxParser (a Model from a file), plus the logger
// helpers and version of the public API.
#include <algorithm>
#include <cstring>
#include <set>

#include "api/api_internal.h"
#include "onnx/onnx_import.h"
#include "ops/model_check.h"
#include "plugins/plugins.h"

namespace kiln {

const char* getVersion() noexcept { return KILN_VERSION; }

const char* severityName(ILogger::Severity severity) noexcept {
  switch (severity) {
    case ILogger::Severity::kINTERNAL_ERROR: return "INTERNAL_ERROR";
    case ILogger::Severity::kERROR: return "ERROR";
    case ILogger::Severity::kWARNING: return "WARNING";
    case ILogger::Severity::kINFO: return "INFO";
    case ILogger::Severity::kVERBOSE: return "VERBOSE";
  }
  return "?";
}

void ConsoleLogger::log(Severity severity, const char* msg) noexcept {
  if (static_cast<int32_t>(severity) > static_cast<int32_t>(threshold_) || !out_) return;
  std::fprintf(out_, "[kiln] %s: %s\n", severityName(severity), msg ? msg : "");
  std::fflush(out_);
}

// ---- NetworkDefinition

namespace {

bool is_defined(const Graph& g, const std::string& name) {
  if (std::find(g.inputs.begin(), g.inputs.end(), name) != g.inputs.end()) return true;
  if (g.initializers.count(name)) return true;
  for (const Node& n : g.nodes)
    if (std::find(n.outputs.begin(), n.outputs.end(), name) != n.outputs.end()) return true;
  return false;
}

// Ints given where the op's schema wants floats become floats: `{"alpha", 2}` means 2.0.
Attribute node_attribute(const std::string& domain, const std::string& op, const std::string& name, const AttrValue& v) {
  Attribute a = plugins::to_internal(v);
  for (const OpSchema* s : OpRegistry::global().versions(domain, op)) {
    const AttrSpec* spec = s->find_attr(name);
    if (!spec) continue;
    if (spec->kind == AttrKind::kFloat && a.kind == AttrKind::kInt) return Attribute::of_float(static_cast<float>(a.i));
    if (spec->kind == AttrKind::kFloats && a.kind == AttrKind::kInts) {
      std::vector<float> f(a.ints.begin(), a.ints.end());
      return Attribute::of_floats(std::move(f));
    }
    break;
  }
  return a;
}

}  // namespace

NetworkDefinition::NetworkDefinition(ILogger& logger) : impl_(std::make_unique<Impl>()) {
  impl_->logger = &logger;
  impl_->model.opsets[""] = 17;
  impl_->model.ir_version = 8;
  impl_->model.producer = "kiln api";
}

NetworkDefinition::~NetworkDefinition() = default;

bool NetworkDefinition::addInput(const std::string& name, DataType type, const Dims& dims) {
  Graph& g = impl_->model.graph;
  const std::string what = "addInput('" + name + "')";
  if (name.empty()) return api::error(impl_->logger, what + ": the name is empty"), false;
  if (is_defined(g, name)) return api::error(impl_->logger, what + ": '" + name + "' is already defined"), false;
  if (dims.nbDims < 0 || dims.nbDims > Dims::MAX_DIMS)
    return api::error(impl_->logger, what + ": nbDims must be 0 to " + std::to_string(Dims::MAX_DIMS)), false;
  DType dt;
  try {
    dt = plugins::to_internal(type);
  } catch (const Error& e) {
    return api::error(impl_->logger, what + ": " + e.what()), false;
  }
  Shape shape;
  for (int32_t i = 0; i < dims.nbDims; ++i) {
    if (dims.d[i] < -1) return api::error(impl_->logger, what + ": dimension " + std::to_string(i) + " is " +
                                                             std::to_string(dims.d[i]) + " (-1 marks a dynamic one)"), false;
    // A named symbol (not an unknown) lets inference see that a value keeps this input's size.
    shape.push_back(dims.d[i] >= 0 ? Dim(dims.d[i]) : Dim::sym(name + "_d" + std::to_string(i)));
  }
  g.inputs.push_back(name);
  g.types[name] = TensorType{dt, shape};
  return true;
}

bool NetworkDefinition::addConstant(const std::string& name, DataType type, const Dims& dims, const void* data) {
  Graph& g = impl_->model.graph;
  const std::string what = "addConstant('" + name + "')";
  if (name.empty()) return api::error(impl_->logger, what + ": the name is empty"), false;
  if (is_defined(g, name)) return api::error(impl_->logger, what + ": '" + name + "' is already defined"), false;
  if (dims.nbDims < 0 || dims.nbDims > Dims::MAX_DIMS || dims.volume() < 0)
    return api::error(impl_->logger, what + ": a constant needs a static shape, got " + dims.toString()), false;
  try {
    Tensor t(plugins::to_internal(type), plugins::from_dims(dims));
    if (t.nbytes() > 0) {
      if (!data) return api::error(impl_->logger, what + ": data is nullptr"), false;
      std::memcpy(t.mutable_raw(), data, t.nbytes());
    }
    g.types[name] = TensorType{t.dtype(), shape_from_dims(t.shape())};
    g.initializers[name] = std::move(t);
  } catch (const Error& e) {
    return api::error(impl_->logger, what + ": " + e.what()), false;
  }
  return true;
}

bool NetworkDefinition::addNode(const std::string& op_type, const std::vector<std::string>& inputs,
                                const std::vector<std::string>& outputs, const Attributes& attributes,
                                const std::string& domain, const std::string& name) {
  Graph& g = impl_->model.graph;
  Node n;
  n.op_type = op_type;
  n.domain = canonical_domain(domain);
  n.name = name.empty() ? op_type + "_" + std::to_string(impl_->nodes_added) : name;
  const std::string what = "addNode(" + (n.domain.empty() ? "" : n.domain + "::") + op_type + " '" + n.name + "')";
  if (op_type.empty()) return api::error(impl_->logger, "addNode: the op type is empty"), false;
  for (const auto& in : inputs)
    if (!in.empty() && !is_defined(g, in))
      return api::error(impl_->logger, what + ": input '" + in + "' is not defined yet (add inputs, constants and "
                                              "producing nodes first)"), false;
  if (outputs.empty()) return api::error(impl_->logger, what + ": a node needs at least one output"), false;
  std::set<std::string> seen;
  for (const auto& out : outputs) {
    if (out.empty()) continue;
    if (is_defined(g, out) || !seen.insert(out).second)
      return api::error(impl_->logger, what + ": output '" + out + "' is already defined"), false;
  }
  try {
    for (const auto& [key, v] : attributes) n.attrs[key] = node_attribute(n.domain, op_type, key, v);
  } catch (const Error& e) {
    return api::error(impl_->logger, what + ": " + e.what()), false;
  }
  n.inputs = inputs;
  n.outputs = outputs;
  g.nodes.push_back(std::move(n));
  ++impl_->nodes_added;
  return true;
}

bool NetworkDefinition::markOutput(const std::string& name) {
  Graph& g = impl_->model.graph;
  if (!is_defined(g, name))
    return api::error(impl_->logger, "markOutput('" + name + "'): no input, constant or node defines it"), false;
  if (std::find(g.outputs.begin(), g.outputs.end(), name) != g.outputs.end())
    return api::error(impl_->logger, "markOutput('" + name + "'): already an output"), false;
  g.outputs.push_back(name);
  return true;
}

void NetworkDefinition::setOpsetVersion(const std::string& domain, int64_t version) {
  impl_->model.opsets[canonical_domain(domain)] = version;
}

int32_t NetworkDefinition::getNbInputs() const { return static_cast<int32_t>(impl_->model.graph.inputs.size()); }
std::string NetworkDefinition::getInputName(int32_t i) const {
  const auto& v = impl_->model.graph.inputs;
  return i >= 0 && static_cast<size_t>(i) < v.size() ? v[static_cast<size_t>(i)] : std::string();
}
int32_t NetworkDefinition::getNbOutputs() const { return static_cast<int32_t>(impl_->model.graph.outputs.size()); }
std::string NetworkDefinition::getOutputName(int32_t i) const {
  const auto& v = impl_->model.graph.outputs;
  return i >= 0 && static_cast<size_t>(i) < v.size() ? v[static_cast<size_t>(i)] : std::string();
}
int32_t NetworkDefinition::getNbNodes() const { return static_cast<int32_t>(impl_->model.graph.nodes.size()); }
void NetworkDefinition::setName(const std::string& name) { impl_->model.graph.name = name; }
std::string NetworkDefinition::getName() const { return impl_->model.graph.name; }

// ---- OnnxParser

struct OnnxParser::Impl {
  NetworkDefinition* network = nullptr;
  ILogger* logger = nullptr;
  std::vector<std::string> errors;

  void error(const std::string& msg) {
    errors.push_back(msg);
    api::error(logger, msg);
  }

  bool accept(Model m) {
    auto& net = ApiAccess::impl(*network);
    if (!net.model.graph.nodes.empty() || !net.model.graph.inputs.empty() || !net.model.graph.initializers.empty()) {
      error("the network is not empty: parse into a fresh one from Builder::createNetworkV2()");
      return false;
    }
    const auto issues = check_model(m);
    for (const auto& issue : issues)
      error((m.source_path.empty() ? std::string() : m.source_path + ": ") + issue.to_string());
    if (!issues.empty()) return false;
    net.model = std::move(m);
    net.nodes_added = static_cast<int>(net.model.graph.nodes.size());
    api::log(logger, ILogger::Severity::kINFO,
             "parsed " + (net.model.source_path.empty() ? std::string("ONNX model") : net.model.source_path) + ": " +
                 std::to_string(net.model.graph.nodes.size()) + " nodes, " +
                 std::to_string(net.model.graph.inputs.size()) + " inputs, " +
                 std::to_string(net.model.graph.outputs.size()) + " outputs, opset " +
                 std::to_string(net.model.default_opset()));
    return true;
  }
};

OnnxParser::OnnxParser(NetworkDefinition& network, ILogger& logger) : impl_(std::make_unique<Impl>()) {
  impl_->network = &network;
  impl_->logger = &logger;
}

OnnxParser::~OnnxParser() = default;

bool OnnxParser::parseFromFile(const std::string& path) {
  try {
    return impl_->accept(load_onnx(path));
  } catch (const std::exception& e) {
    impl_->error(e.what());
    return false;
  }
}

bool OnnxParser::parse(const void* data, size_t size, const std::string& base_dir) {
  if (!data || size == 0) {
    impl_->error("OnnxParser::parse: no bytes");
    return false;
  }
  try {
    return impl_->accept(parse_onnx(std::span<const uint8_t>(static_cast<const uint8_t*>(data), size), base_dir, "<memory>"));
  } catch (const std::exception& e) {
    impl_->error(e.what());
    return false;
  }
}

int32_t OnnxParser::getNbErrors() const { return static_cast<int32_t>(impl_->errors.size()); }
const char* OnnxParser::getError(int32_t index) const {
  if (index < 0 || static_cast<size_t>(index) >= impl_->errors.size()) return nullptr;
  return impl_->errors[static_cast<size_t>(index)].c_str();
}
void OnnxParser::clearErrors() { impl_->errors.clear(); }

}  // namespace kiln
