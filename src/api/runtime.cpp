// Runtime, Engine and ExecutionContext: the public face of load_engine(), EngineRuntime and
// cpu::Program. Each context owns its activation arena and scratch; the engine's weights and
// compiled programs are shared.
#include <algorithm>
#include <filesystem>
#include <fstream>

#include "api/api_internal.h"
#include "engine/engine_file.h"
#include "plugins/plugins.h"

namespace kiln {

namespace {

// Everything but the weights of an engine file: enough to name the plugins it needs.
std::vector<uint8_t> read_description(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  std::vector<uint8_t> bytes(ec ? 0 : std::min<uintmax_t>(size, 64u << 20));
  f.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  bytes.resize(static_cast<size_t>(std::max<std::streamsize>(f.gcount(), 0)));
  return bytes;
}

std::string with_plugin_advice(const std::string& msg, std::span<const uint8_t> bytes) {
  if (msg.find("plugin:") != std::string::npos) return msg;
  const std::string advice = plugins::missing_plugins_advice(plugins::missing_plugin_tactics(bytes));
  return advice.empty() ? msg : msg + " (" + advice + ")";
}

Dims declared_dims(const TensorType* t) {
  if (!t || !t->shape || t->shape->size() > static_cast<size_t>(Dims::MAX_DIMS)) return Dims::invalid();
  Dims d;
  d.nbDims = static_cast<int32_t>(t->shape->size());
  for (size_t i = 0; i < t->shape->size(); ++i) d.d[i] = (*t->shape)[i].known() ? (*t->shape)[i].value : -1;
  return d;
}

}  // namespace

// ---- Runtime

struct Runtime::Impl {
  ILogger* logger = nullptr;
  int threads = 0;

  std::shared_ptr<Engine> make(LoadedEngine le) const {
    auto e = std::make_shared<Engine::Impl>();
    e->logger = logger;
    e->runtime = std::make_shared<EngineRuntime>(std::move(le.model), std::move(le.info), threads);
    const Graph& g = e->runtime->model().graph;
    e->io_names = g.inputs;
    e->nb_inputs = g.inputs.size();
    e->io_names.insert(e->io_names.end(), g.outputs.begin(), g.outputs.end());
    api::log(logger, ILogger::Severity::kINFO,
             "engine loaded: " + std::to_string(g.nodes.size()) + " nodes, " + std::to_string(g.inputs.size()) +
                 " inputs, " + std::to_string(g.outputs.size()) + " outputs, " +
                 std::to_string(e->runtime->info().profiles.size()) + " optimization profiles");
    return ApiAccess::make_engine(std::move(e));
  }
};

Runtime::Runtime(ILogger& logger) : impl_(std::make_unique<Impl>()) { impl_->logger = &logger; }
Runtime::~Runtime() = default;
void Runtime::setNbThreads(int32_t threads) { impl_->threads = threads; }

std::shared_ptr<Engine> Runtime::deserializeEngine(const void* blob, size_t size) {
  if (!blob || size == 0) return api::error(impl_->logger, "deserializeEngine: no bytes"), nullptr;
  const std::span<const uint8_t> bytes(static_cast<const uint8_t*>(blob), size);
  try {
    return impl_->make(load_engine_from_memory(bytes));
  } catch (const std::exception& e) {
    api::error(impl_->logger, "deserializeEngine: " + with_plugin_advice(e.what(), bytes));
    return nullptr;
  }
}

std::shared_ptr<Engine> Runtime::loadEngine(const std::string& path) {
  try {
    return impl_->make(load_engine(path));
  } catch (const std::exception& e) {
    std::string msg = e.what();
    try {
      msg = with_plugin_advice(msg, read_description(path));
    } catch (const std::exception&) {
    }
    api::error(impl_->logger, "loadEngine: " + msg);
    return nullptr;
  }
}

std::unique_ptr<Runtime> createInferRuntime(ILogger& logger) { return std::make_unique<Runtime>(logger); }

// ---- Engine

Engine::Engine(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

std::vector<uint8_t> Engine::serialize() const {
  try {
    return serialize_engine(impl_->runtime->model(), impl_->runtime->info());
  } catch (const std::exception& e) {
    api::error(impl_->logger, std::string("serialize: ") + e.what());
    return {};
  }
}

int32_t Engine::getNbIOTensors() const { return static_cast<int32_t>(impl_->io_names.size()); }

const char* Engine::getIOTensorName(int32_t index) const {
  if (index < 0 || static_cast<size_t>(index) >= impl_->io_names.size()) return nullptr;
  return impl_->io_names[static_cast<size_t>(index)].c_str();
}

TensorIOMode Engine::getTensorIOMode(const std::string& name) const {
  for (size_t i = 0; i < impl_->io_names.size(); ++i)
    if (impl_->io_names[i] == name) return i < impl_->nb_inputs ? TensorIOMode::kINPUT : TensorIOMode::kOUTPUT;
  return TensorIOMode::kNONE;
}

DataType Engine::getTensorDataType(const std::string& name) const {
  const TensorType* t = getTensorIOMode(name) == TensorIOMode::kNONE ? nullptr : impl_->runtime->model().graph.type_of(name);
  if (!t) {
    api::error(impl_->logger, "getTensorDataType: '" + name + "' is not an input or output of the engine");
    return DataType::kFLOAT;
  }
  try {
    return plugins::to_public(t->dtype);
  } catch (const std::exception& e) {
    api::error(impl_->logger, "getTensorDataType('" + name + "'): " + e.what());
    return DataType::kFLOAT;
  }
}

Dims Engine::getTensorShape(const std::string& name) const {
  if (getTensorIOMode(name) == TensorIOMode::kNONE) {
    api::error(impl_->logger, "getTensorShape: '" + name + "' is not an input or output of the engine");
    return Dims::invalid();
  }
  return declared_dims(impl_->runtime->model().graph.type_of(name));
}

int32_t Engine::getNbOptimizationProfiles() const {
  return std::max<int32_t>(1, static_cast<int32_t>(impl_->runtime->info().profiles.size()));
}

Dims Engine::getProfileShape(const std::string& name, int32_t profile, OptProfileSelector select) const {
  if (getTensorIOMode(name) != TensorIOMode::kINPUT) {
    api::error(impl_->logger, "getProfileShape: '" + name + "' is not an input of the engine");
    return Dims::invalid();
  }
  if (profile < 0 || profile >= getNbOptimizationProfiles()) {
    api::error(impl_->logger, "getProfileShape: profile " + std::to_string(profile) + " does not exist (the engine has " +
                                  std::to_string(getNbOptimizationProfiles()) + ")");
    return Dims::invalid();
  }
  const auto& profiles = impl_->runtime->info().profiles;
  if (static_cast<size_t>(profile) < profiles.size()) {
    auto it = profiles[static_cast<size_t>(profile)].inputs.find(name);
    if (it != profiles[static_cast<size_t>(profile)].inputs.end()) {
      const auto& r = it->second;
      return plugins::to_dims(select == OptProfileSelector::kMIN ? r.min : select == OptProfileSelector::kOPT ? r.opt : r.max);
    }
  }
  return declared_dims(impl_->runtime->model().graph.type_of(name));  // a static input: its one shape
}

size_t Engine::getActivationMemorySize() const { return impl_->runtime->info().memory_peak; }

// ---- ExecutionContext

struct ExecutionContext::Impl {
  std::shared_ptr<Engine> engine;
  const Engine::Impl* e = nullptr;
  ILogger* logger = nullptr;
  cpu::ShapeMap shapes;                   // inputs whose shape is known (static, or set)
  std::map<std::string, void*> addresses;
  std::shared_ptr<const cpu::Program> program;  // for `shapes`, once compiled
  int profile = -1;
  Tensor arena, scratch;

  const Graph& graph() const { return e->runtime->model().graph; }
  bool is_input(const std::string& n) const {
    return std::find(graph().inputs.begin(), graph().inputs.end(), n) != graph().inputs.end();
  }
  bool complete() const { return shapes.size() == graph().inputs.size(); }
  // The program for the current shapes; throws what compiling throws.
  const cpu::Program& compiled() {
    if (!program) {
      program = e->runtime->program_for(shapes);
      profile = std::max(0, e->runtime->check_shapes(shapes));
    }
    return *program;
  }
  bool run();
};

ExecutionContext::ExecutionContext(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ExecutionContext::~ExecutionContext() = default;

std::unique_ptr<ExecutionContext> Engine::createExecutionContext() {
  auto c = std::make_unique<ExecutionContext::Impl>();
  c->engine = shared_from_this();
  c->e = impl_.get();
  c->logger = impl_->logger;
  for (const auto& in : c->graph().inputs) {
    const TensorType* t = c->graph().type_of(in);
    if (t && t->shape && shape_is_static(*t->shape)) c->shapes[in] = static_dims(*t->shape);
  }
  return std::unique_ptr<ExecutionContext>(new ExecutionContext(std::move(c)));
}

const Engine& ExecutionContext::getEngine() const { return *impl_->engine; }

bool ExecutionContext::setInputShape(const std::string& name, const Dims& dims) {
  Impl& c = *impl_;
  const std::string what = "setInputShape('" + name + "', " + dims.toString() + ")";
  if (!c.is_input(name)) return api::error(c.logger, what + ": not an input of the engine"), false;
  const TensorType* t = c.graph().type_of(name);
  if (dims.nbDims < 0 || dims.nbDims > Dims::MAX_DIMS)
    return api::error(c.logger, what + ": nbDims must be 0 to " + std::to_string(Dims::MAX_DIMS)), false;
  const std::vector<int64_t> v(dims.d, dims.d + dims.nbDims);
  if (t && t->shape) {
    if (t->shape->size() != v.size())
      return api::error(c.logger, what + ": the input has rank " + std::to_string(t->shape->size()) + " (" +
                                      t->to_string() + ")"), false;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] < 0) return api::error(c.logger, what + ": dimensions must be >= 0"), false;
      if ((*t->shape)[i].known() && (*t->shape)[i].value != v[i])
        return api::error(c.logger, what + ": dimension " + std::to_string(i) + " is static (" +
                                        std::to_string((*t->shape)[i].value) + ")"), false;
    }
  }
  // Some profile must contain this input's shape (the combination is checked again at execute).
  const auto& profiles = c.e->runtime->info().profiles;
  if (!profiles.empty()) {
    std::string ranges;
    bool inside = false;
    for (size_t p = 0; p < profiles.size() && !inside; ++p) {
      auto it = profiles[p].inputs.find(name);
      if (it == profiles[p].inputs.end()) {
        inside = true;  // static in this profile: checked against the declared type above
        continue;
      }
      const auto& r = it->second;
      bool ok = r.min.size() == v.size();
      for (size_t i = 0; ok && i < v.size(); ++i) ok = v[i] >= r.min[i] && v[i] <= r.max[i];
      inside = ok;
      ranges += (ranges.empty() ? "" : "; ") + std::string("profile ") + std::to_string(p) + ": min " +
                shape_to_string(r.min) + ", max " + shape_to_string(r.max);
    }
    if (!inside)
      return api::error(c.logger, what + ": outside every optimization profile (" + ranges +
                                      "); rebuild the engine with a profile that covers it"), false;
  }
  auto it = c.shapes.find(name);
  if (it == c.shapes.end() || it->second != v) {
    c.shapes[name] = v;
    c.program.reset();
    c.profile = -1;
  }
  return true;
}

bool ExecutionContext::allInputDimensionsSpecified() const { return impl_->complete(); }

Dims ExecutionContext::getTensorShape(const std::string& name) const {
  Impl& c = *impl_;
  const TensorIOMode mode = c.engine->getTensorIOMode(name);
  if (mode == TensorIOMode::kNONE) {
    api::error(c.logger, "getTensorShape: '" + name + "' is not an input or output of the engine");
    return Dims::invalid();
  }
  if (mode == TensorIOMode::kINPUT) {
    auto it = c.shapes.find(name);
    return it != c.shapes.end() ? plugins::to_dims(it->second) : declared_dims(c.graph().type_of(name));
  }
  if (c.complete()) {
    try {
      for (const auto& o : c.compiled().outputs())
        if (o.name == name) return plugins::to_dims(o.shape);
    } catch (const std::exception& e) {
      api::error(c.logger, "getTensorShape('" + name + "'): " + e.what());
    }
  }
  return declared_dims(c.graph().type_of(name));
}

bool ExecutionContext::setTensorAddress(const std::string& name, void* data) {
  if (impl_->engine->getTensorIOMode(name) == TensorIOMode::kNONE)
    return api::error(impl_->logger, "setTensorAddress: '" + name + "' is not an input or output of the engine"), false;
  impl_->addresses[name] = data;
  return true;
}

bool ExecutionContext::setInputTensorAddress(const std::string& name, const void* data) {
  if (impl_->engine->getTensorIOMode(name) != TensorIOMode::kINPUT)
    return api::error(impl_->logger, "setInputTensorAddress: '" + name + "' is not an input of the engine"), false;
  impl_->addresses[name] = const_cast<void*>(data);  // only read: Program takes inputs as const
  return true;
}

const void* ExecutionContext::getTensorAddress(const std::string& name) const {
  auto it = impl_->addresses.find(name);
  return it == impl_->addresses.end() ? nullptr : it->second;
}

int32_t ExecutionContext::getOptimizationProfile() const {
  Impl& c = *impl_;
  if (!c.complete()) return -1;
  if (c.profile < 0) {
    try {
      c.profile = std::max(0, c.e->runtime->check_shapes(c.shapes));
    } catch (const std::exception&) {
      return -1;
    }
  }
  return c.profile;
}

bool ExecutionContext::Impl::run() {
  for (const auto& in : graph().inputs)
    if (!shapes.count(in)) {
      api::error(logger, "execute: input '" + in + "' has dynamic dimensions " +
                             declared_dims(graph().type_of(in)).toString() + ": call setInputShape() first");
      return false;
    }
  const cpu::Program& p = compiled();
  std::vector<const void*> ins;
  std::vector<void*> outs;
  std::string missing;
  auto address = [&](const cpu::ValueInfo& v) -> void* {
    auto it = addresses.find(v.name);
    void* a = it == addresses.end() ? nullptr : it->second;
    if (!a && v.nbytes() > 0) missing += (missing.empty() ? "'" : ", '") + v.name + "'";
    return a;
  };
  for (const auto& v : p.inputs()) ins.push_back(address(v));
  for (const auto& v : p.outputs()) outs.push_back(address(v));
  if (!missing.empty()) {
    api::error(logger, "execute: no address set for " + missing + ": call setTensorAddress() first");
    return false;
  }
  if (static_cast<size_t>(arena.numel()) < p.arena_bytes() + 64)
    arena = Tensor(DType::kU8, {static_cast<int64_t>(p.arena_bytes()) + 64});
  if (static_cast<size_t>(scratch.numel()) < p.scratch_bytes() + 64)
    scratch = Tensor(DType::kU8, {static_cast<int64_t>(p.scratch_bytes()) + 64});
  p.run(arena.mutable_raw(), scratch.mutable_raw(), ins, outs);
  return true;
}

bool ExecutionContext::execute() {
  try {
    return impl_->run();
  } catch (const std::exception& e) {
    api::error(impl_->logger, std::string("execute: ") + e.what());
    return false;
  }
}

bool ExecutionContext::executeV2(void* const* bindings) {
  if (!bindings) return api::error(impl_->logger, "executeV2: bindings is nullptr"), false;
  const auto& names = impl_->e->io_names;
  for (size_t i = 0; i < names.size(); ++i) impl_->addresses[names[i]] = bindings[i];
  return execute();
}

bool ExecutionContext::enqueueV3(void* stream) {
  if (stream) return api::error(impl_->logger, "enqueueV3: Kiln runs on the CPU; pass no stream (nullptr)"), false;
  return execute();
}

}  // namespace kiln
