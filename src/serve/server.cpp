// The protocol-independent core of `kiln serve` (see server.h).
#include "serve/server.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <thread>
#include <fstream>
#include <future>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "backends/gpu/host_memory.h"
#include "kiln/error.h"
#include "runtime/runtime.h"

namespace kiln::serve {
namespace fs = std::filesystem;

int http_status(Status s) {
  switch (s) {
    case Status::kOk: return 200;
    case Status::kBadRequest: return 400;
    case Status::kUnauthorized: return 401;
    case Status::kForbidden: return 403;
    case Status::kNotFound: return 404;
    case Status::kPayloadTooLarge: return 413;
    case Status::kTimeout: return 504;
    case Status::kUnavailable: return 503;
    case Status::kInternal: return 500;
  }
  return 500;
}

const char* status_name(Status s) {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kBadRequest: return "bad request";
    case Status::kUnauthorized: return "unauthorized";
    case Status::kForbidden: return "forbidden";
    case Status::kNotFound: return "not found";
    case Status::kPayloadTooLarge: return "payload too large";
    case Status::kTimeout: return "timeout";
    case Status::kUnavailable: return "unavailable";
    case Status::kInternal: return "internal";
  }
  return "internal";
}

namespace {

struct V2Type {
  DataType dt;
  const char* name;
  size_t size;
};
constexpr V2Type kV2Types[] = {
    {DataType::kBool, "BOOL", 1},    {DataType::kUInt8, "UINT8", 1},   {DataType::kUInt16, "UINT16", 2},
    {DataType::kUInt32, "UINT32", 4}, {DataType::kUInt64, "UINT64", 8}, {DataType::kInt8, "INT8", 1},
    {DataType::kInt16, "INT16", 2},  {DataType::kInt32, "INT32", 4},   {DataType::kInt64, "INT64", 8},
    {DataType::kFP16, "FP16", 2},    {DataType::kFP32, "FP32", 4},     {DataType::kFP64, "FP64", 8},
    {DataType::kString, "BYTES", 0}, {DataType::kBF16, "BF16", 2},
};

std::string dq(const std::string& s) { return "\"" + s + "\""; }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Status status_of(RequestError e) {
  switch (e) {
    case RequestError::kQueueFull: return Status::kUnavailable;
    case RequestError::kTimeout: return Status::kTimeout;
    case RequestError::kShuttingDown: return Status::kUnavailable;
    case RequestError::kInvalid: return Status::kBadRequest;
    case RequestError::kExecution: return Status::kInternal;
  }
  return Status::kInternal;
}

// "a, b, c": the tensors' names, for error messages.
std::string names_of(const std::vector<TensorConfig>& tensors) {
  std::string names;
  for (const TensorConfig& t : tensors) names += (names.empty() ? "" : ", ") + t.name;
  return names;
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Runs `f` on a thread of its own and waits, rethrowing what it threw. Loading (the engine build's
// tactic timing, warmup) runs OpenMP parallel regions, and libgomp keeps a thread team alive for
// every thread that ever ran one; when the teams' threads outnumber the cores, libgomp stops
// spin-waiting and every later kernel launch of the serving threads pays a futex wake-up (an
// engine call 2-3x slower on 2 cores). A load thread that exits takes its team with it.
template <typename F>
void on_own_thread(F&& f) {
  std::exception_ptr error;
  std::thread t([&] {
    try {
      f();
    } catch (...) {
      error = std::current_exception();
    }
  });
  t.join();
  if (error) std::rethrow_exception(error);
}

uint64_t now_ms() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

// Fills a warmup input: zeros, seeded random values in [0, 1) (or 0/1 for integers and bools), or
// the raw bytes of a file inside the model folder.
Tensor warmup_tensor(const WarmupInput& in, std::vector<int64_t> shape, const fs::path& model_dir,
                     const std::string& what) {
  std::optional<DType> dt = to_dtype(in.data_type);
  if (!dt) throw Error(ErrorCode::kInvalidArgument, what + ": data_type " + std::string(data_type_name(in.data_type)) +
                                                        " cannot be a Kiln tensor");
  Tensor t(*dt, shape);
  if (in.source == WarmupInput::Source::kRandom) {
    std::mt19937 rng(1234);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    if (*dt == DType::kF32) {
      for (float& v : std::span(t.mutable_data<float>(), static_cast<size_t>(t.numel()))) v = u(rng);
    } else {
      auto* bytes = static_cast<uint8_t*>(t.mutable_raw());
      for (size_t i = 0; i < t.nbytes(); i += dtype_size(*dt)) bytes[i] = static_cast<uint8_t>(rng() & 1);
    }
  } else if (in.source == WarmupInput::Source::kFile) {
    const fs::path file = model_dir / in.input_data_file;  // relative, inside the model folder (checked at parse)
    std::ifstream f(file, std::ios::binary);
    if (!f) throw Error(ErrorCode::kIo, what + ": cannot read " + file.string());
    std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    // Triton repeats a file that is smaller than a batch (one sample for every row).
    if (bytes.empty() || t.nbytes() % bytes.size() != 0)
      throw Error(ErrorCode::kInvalidArgument, what + ": " + file.string() + " has " + std::to_string(bytes.size()) +
                                                   " bytes; the input needs " + std::to_string(t.nbytes()) +
                                                   " (or a divisor of it, repeated)");
    auto* out = static_cast<char*>(t.mutable_raw());
    for (size_t off = 0; off < t.nbytes(); off += bytes.size()) std::memcpy(out + off, bytes.data(), bytes.size());
  }
  return t;
}

}  // namespace

std::string_view v2_datatype_name(DataType dt) {
  for (const auto& t : kV2Types)
    if (t.dt == dt) return t.name;
  return "INVALID";
}

DataType parse_v2_datatype(std::string_view name) {
  for (const auto& t : kV2Types)
    if (name == t.name) return t.dt;
  return DataType::kInvalid;
}

size_t v2_element_size(DataType dt) {
  for (const auto& t : kV2Types)
    if (t.dt == dt) return t.size;
  return 0;
}

// One loaded version: its model, its batcher and the counters of requests refused before they
// reached the batcher.
struct InferenceServer::Served {
  std::string name;
  int64_t version = 0;
  std::shared_ptr<LoadedModel> loaded;
  std::unique_ptr<Batcher> batcher;
  std::atomic<uint64_t> rejected{0};  // invalid requests refused by validation, before the batcher
  std::atomic<uint64_t> last_inference_ms{0};
};

InferenceServer::InferenceServer(ServerOptions options) : options_(std::move(options)) {
  repository_ = std::make_unique<ModelRepository>(options_.model_repository, options_.repository);
  for (const ModelEntry& m : repository_->models()) known_.insert(m.name);
  // Shared-memory regions are page-locked for the GPUs when GPU instances run here, so their
  // inputs are copied to the GPU straight from the client's memory.
  shared_memory_.set_pin(
      [](const void* p, size_t n, std::string* why) { return gpu::pin_host_range(p, n, why); });
  for (const std::string& m : options_.load_models)
    if (m != "*") validate_model_name(m);
}

InferenceServer::~InferenceServer() { shutdown(true); }

void InferenceServer::start() {
  std::vector<std::string> names;
  const bool all = options_.model_control == ModelControl::kNone ||
                   std::find(options_.load_models.begin(), options_.load_models.end(), "*") !=
                       options_.load_models.end();
  if (all) {
    for (const ModelEntry& m : repository_->models()) names.push_back(m.name);
  } else {
    names = options_.load_models;
  }
  for (const std::string& name : names) {
    std::lock_guard lock(load_mu_);
    {
      std::lock_guard l(mu_);
      required_.insert(name);
    }
    try {
      on_own_thread([&] { load_model_locked(name); });
    } catch (const std::exception&) {
      if (options_.exit_on_error) throw;  // otherwise the model stays UNAVAILABLE and the server unready
    }
  }
  started_ = true;
}

bool InferenceServer::ready() const {
  if (!started_ || stopping_) return false;
  std::lock_guard lock(mu_);
  for (const std::string& m : required_) {
    auto it = models_.find(m);
    if (it == models_.end() || it->second.empty()) return false;
  }
  return true;
}

ServerMetadata InferenceServer::server_metadata() const {
  ServerMetadata m;
  m.version = KILN_VERSION;
  m.extensions = {"binary_tensor_data", "statistics", "model_repository", "schedule_policy", "model_configuration",
                  "system_shared_memory"};
  return m;
}

std::shared_ptr<InferenceServer::Served> InferenceServer::find(const std::string& model,
                                                               const std::string& version) const {
  if (!is_valid_model_name(model)) throw ServeError(Status::kBadRequest, "invalid model name " + dq(model));
  std::lock_guard lock(mu_);
  auto it = models_.find(model);
  if (it == models_.end() || it->second.empty()) {
    const bool known = known_.count(model) > 0;
    throw ServeError(Status::kNotFound, known ? "model " + dq(model) + " is not loaded"
                                              : "unknown model " + dq(model));
  }
  if (version.empty()) return it->second.rbegin()->second;
  int64_t v = 0;
  bool numeric = !version.empty() && version.size() < 19 &&
                 std::all_of(version.begin(), version.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (numeric) v = std::stoll(version);
  auto vit = numeric ? it->second.find(v) : it->second.end();
  if (vit == it->second.end()) {
    std::string loaded;
    for (const auto& [n, s] : it->second) loaded += (loaded.empty() ? "" : ", ") + std::to_string(n);
    throw ServeError(Status::kNotFound, "model " + dq(model) + " has no loaded version " + dq(version) +
                                            " (loaded: " + loaded + ")");
  }
  return vit->second;
}

bool InferenceServer::model_ready(const std::string& model, const std::string& version) const {
  if (stopping_) return false;
  try {
    return find(model, version) != nullptr;
  } catch (const ServeError&) {
    return false;
  }
}

ModelMetadata InferenceServer::model_metadata(const std::string& model, const std::string& version) const {
  auto served = find(model, version);
  ModelMetadata md;
  md.name = model;
  {
    std::lock_guard lock(mu_);
    for (const auto& [v, s] : models_.at(model)) md.versions.push_back(std::to_string(v));
  }
  const ModelConfig& c = served->loaded->config;
  md.platform = !c.platform.empty() ? c.platform : served->loaded->built ? "onnx" : "kiln_engine";
  auto tensors = [&](const std::vector<TensorConfig>& list) {
    std::vector<TensorMetadata> out;
    for (const TensorConfig& t : list) {
      TensorMetadata m;
      m.name = t.name;
      m.datatype = std::string(v2_datatype_name(t.data_type));
      if (c.max_batch_size > 0) m.shape.push_back(-1);
      m.shape.insert(m.shape.end(), t.dims.begin(), t.dims.end());
      out.push_back(std::move(m));
    }
    return out;
  };
  md.inputs = tensors(c.inputs);
  md.outputs = tensors(c.outputs);
  return md;
}

std::string InferenceServer::model_config_proto(const std::string& model, const std::string& version) const {
  return serialize_model_config(find(model, version)->loaded->config);
}

std::string InferenceServer::model_config_json(const std::string& model, const std::string& version) const {
  auto served = find(model, version);
  const ModelConfig& c = served->loaded->config;
  using nlohmann::json;
  auto tensors = [](const std::vector<TensorConfig>& list) {
    json a = json::array();
    for (const TensorConfig& t : list)
      a.push_back({{"name", t.name}, {"data_type", std::string(data_type_name(t.data_type))}, {"dims", t.dims}});
    return a;
  };
  json j = {{"name", c.name},
            {"platform", c.platform},
            {"backend", c.backend},
            {"max_batch_size", c.max_batch_size},
            {"input", tensors(c.inputs)},
            {"output", tensors(c.outputs)}};
  json groups = json::array();
  for (const InstanceGroup& g : c.instance_groups)
    groups.push_back({{"name", g.name},
                      {"count", g.count},
                      {"kind", g.kind == InstanceKind::kGpu ? "KIND_GPU" : g.kind == InstanceKind::kCpu ? "KIND_CPU"
                                                                                                       : "KIND_AUTO"},
                      {"gpus", g.gpus}});
  j["instance_group"] = groups;
  if (c.dynamic_batching) {
    const DynamicBatching& d = *c.dynamic_batching;
    j["dynamic_batching"] = {{"preferred_batch_size", d.preferred_batch_size},
                             {"max_queue_delay_microseconds", d.max_queue_delay_microseconds},
                             {"preserve_ordering", d.preserve_ordering},
                             {"priority_levels", d.priority_levels},
                             {"default_priority_level", d.default_priority_level}};
  }
  j["kiln"] = {{"memory_budget_bytes", c.kiln.memory_budget_bytes},
               {"threads_per_instance", c.kiln.threads_per_instance},
               {"spread_over_idle_instances", c.kiln.spread_over_idle_instances},
               {"memory_bytes", served->loaded->memory_bytes}};
  if (!served->loaded->gpu_models.empty()) {
    json gpus = json::object();
    for (const auto& [gpu, g] : served->loaded->gpu_models)
      gpus[std::to_string(gpu)] = {{"memory_bytes", served->loaded->gpu_memory_bytes.at(gpu)},
                                   {"weight_bytes", g->weight_bytes()},
                                   {"instance_bytes", g->instance_bytes()},
                                   {"batch_sizes", g->batch_sizes()},
                                   {"precision", c.kiln.build.precision}};
    j["kiln"]["gpus"] = gpus;
  }
  return j.dump();
}

std::vector<std::shared_ptr<InferenceServer::Served>> InferenceServer::all_served() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Served>> list;
  for (const auto& [name, versions] : models_)
    for (const auto& [v, s] : versions) list.push_back(s);
  return list;
}

ModelVersionStats InferenceServer::stats_of(const Served& s) {
  ModelVersionStats st;
  st.name = s.name;
  st.version = std::to_string(s.version);
  st.last_inference_ms = s.last_inference_ms.load();
  st.stats = s.batcher->stats();
  // Requests refused by validation never reached the batcher; they count as invalid failures too.
  st.stats.failure[static_cast<size_t>(RequestError::kInvalid)] += s.rejected.load();
  return st;
}

std::vector<ModelVersionStats> InferenceServer::model_stats(const std::string& model,
                                                            const std::string& version) const {
  std::vector<std::shared_ptr<Served>> list;
  if (!model.empty()) {
    if (version.empty()) {
      find(model, "");  // throws for unknown or unloaded models
      std::lock_guard lock(mu_);
      for (const auto& [v, s] : models_.at(model)) list.push_back(s);
    } else {
      list.push_back(find(model, version));
    }
  } else {
    list = all_served();
  }
  std::vector<ModelVersionStats> out;
  for (const auto& s : list) out.push_back(stats_of(*s));
  return out;
}

void InferenceServer::infer(InferenceRequest request, InferCallback done) {
  auto fail = [&](Status s, const std::string& message) {
    InferenceOutcome o;
    o.status = s;
    o.error = message;
    done(std::move(o));
  };
  if (stopping_) return fail(Status::kUnavailable, "the server is shutting down and accepts no new requests");
  std::shared_ptr<Served> served;
  try {
    served = find(request.model, request.version);
  } catch (const ServeError& e) {
    return fail(e.status(), e.what());
  }
  const ModelConfig& c = served->loaded->config;
  const std::string who = "model " + dq(request.model);
  auto reject = [&](const std::string& message) {
    served->rejected.fetch_add(1);
    fail(Status::kBadRequest, who + ": " + message);
  };

  // Inputs: each config input exactly once, with its datatype and a shape the config allows.
  InferRequest r;
  cpu::ShapeMap shapes;
  for (InputTensor& in : request.inputs) {
    auto it = std::find_if(c.inputs.begin(), c.inputs.end(), [&](const TensorConfig& t) { return t.name == in.name; });
    if (it == c.inputs.end()) {
      return reject("unknown input " + dq(in.name) + " (inputs: " + names_of(c.inputs) + ")");
    }
    if (r.inputs.count(in.name)) return reject("input " + dq(in.name) + " is given twice");
    if (in.datatype != it->data_type)
      return reject("input " + dq(in.name) + " has datatype " + std::string(v2_datatype_name(in.datatype)) +
                    "; the model expects " + std::string(v2_datatype_name(it->data_type)));
    const size_t batch_dims = c.max_batch_size > 0 ? 1 : 0;
    if (in.shape.size() != it->dims.size() + batch_dims)
      return reject("input " + dq(in.name) + " has shape " + shape_text(in.shape) + "; the model expects rank " +
                    std::to_string(it->dims.size() + batch_dims) + (batch_dims ? " (batch first)" : ""));
    for (int64_t d : in.shape)
      if (d < 0) return reject("input " + dq(in.name) + " has a negative dim in shape " + shape_text(in.shape));
    if (batch_dims) {
      if (in.shape[0] < 1 || in.shape[0] > c.max_batch_size)
        return reject("input " + dq(in.name) + " has batch " + std::to_string(in.shape[0]) +
                      "; the model takes 1 to " + std::to_string(c.max_batch_size));
    }
    for (size_t i = 0; i < it->dims.size(); ++i)
      if (it->dims[i] >= 0 && in.shape[i + batch_dims] != it->dims[i])
        return reject("input " + dq(in.name) + " has shape " + shape_text(in.shape) + "; the model expects " +
                      (batch_dims ? "[-1, " : "[") + shape_text(it->dims).substr(1));
    const size_t elem = v2_element_size(in.datatype);
    const int64_t n = numel_of(in.shape);
    if (in.byte_size != static_cast<size_t>(n) * elem)
      return reject("input " + dq(in.name) + " has " + std::to_string(in.byte_size) + " bytes of data; shape " +
                    shape_text(in.shape) + " of " + std::string(v2_datatype_name(in.datatype)) + " needs " +
                    std::to_string(static_cast<size_t>(n) * elem));
    const DType dt = *to_dtype(in.datatype);
    // Views the front end's buffer when it is aligned for the type; copies otherwise (a binary
    // tensor may start at any offset of the HTTP body).
    Tensor t;
    if (in.owner && reinterpret_cast<uintptr_t>(in.data) % 64 == 0) {
      t = Tensor::view(dt, in.shape, in.owner, in.data);
    } else {
      t = Tensor(dt, in.shape);
      if (in.byte_size) std::memcpy(t.mutable_raw(), in.data, in.byte_size);
    }
    shapes[in.name] = in.shape;
    r.inputs.emplace(in.name, std::move(t));
  }
  for (const TensorConfig& t : c.inputs)
    if (!r.inputs.count(t.name)) return reject("input " + dq(t.name) + " is missing");
  try {
    if (served->loaded->engine) served->loaded->engine->check_shapes(shapes);
    for (const auto& [gpu, g] : served->loaded->gpu_models) g->check_shapes(shapes);
  } catch (const Error& e) {
    return reject(e.what());
  }
  std::vector<std::string> order = request.outputs;
  for (const std::string& o : order) {
    if (std::none_of(c.outputs.begin(), c.outputs.end(), [&](const TensorConfig& t) { return t.name == o; })) {
      return reject("unknown output " + dq(o) + " (outputs: " + names_of(c.outputs) + ")");
    }
  }
  if (order.empty())
    for (const TensorConfig& t : c.outputs) order.push_back(t.name);
  r.outputs = order;
  r.priority = request.priority;
  r.timeout_us = request.timeout_us;
  auto result_base = std::make_shared<InferenceResult>();
  result_base->model_name = request.model;
  result_base->model_version = std::to_string(served->version);
  result_base->id = request.id;
  r.on_complete = [served, result_base, order, done = std::move(done)](InferResponse resp) {
    InferenceOutcome o;
    if (!resp.ok()) {
      o.status = status_of(*resp.error);
      o.error = "model " + dq(served->name) + ": " + resp.message;
      done(std::move(o));
      return;
    }
    served->last_inference_ms = now_ms();
    o.result = std::move(*result_base);
    for (const std::string& name : order) {
      auto it = resp.outputs.find(name);
      if (it == resp.outputs.end()) continue;
      OutputTensor out;
      out.name = name;
      out.datatype = from_dtype(it->second.dtype());
      out.shape = it->second.shape();
      out.tensor = std::move(it->second);
      o.result.outputs.push_back(std::move(out));
    }
    done(std::move(o));
  };
  served->batcher->enqueue(std::move(r));
}

InferenceOutcome InferenceServer::infer_sync(InferenceRequest request) {
  std::promise<InferenceOutcome> p;
  auto f = p.get_future();
  infer(std::move(request), [&p](InferenceOutcome o) { p.set_value(std::move(o)); });
  return f.get();
}

namespace {
// Runs the config's warmup samples on one instance, so its programs are compiled and its arena is
// sized before it serves.
void warm_up(const LoadedModel& loaded, const ExecuteFn& run, const std::string& name) {
  const ModelConfig& c = loaded.config;
  const fs::path model_dir = loaded.model_file.parent_path().parent_path();
  for (const Warmup& w : c.warmups) {
    const std::string what = "model " + dq(name) + " warmup " + dq(w.name);
    TensorMap inputs;
    for (const auto& [input, spec] : w.inputs) {
      std::vector<int64_t> shape;
      if (c.max_batch_size > 0) shape.push_back(std::max<int64_t>(1, w.batch_size));
      shape.insert(shape.end(), spec.dims.begin(), spec.dims.end());
      inputs[input] = warmup_tensor(spec, shape, model_dir, what);
    }
    try {
      for (uint32_t i = 0; i < std::max<uint32_t>(1, w.count); ++i) run(inputs);
    } catch (const Error& e) {
      throw Error(e.code(), what + " failed: " + e.what());
    }
  }
}
}  // namespace

std::shared_ptr<InferenceServer::Served> InferenceServer::load_version(const std::string& model, int64_t version) {
  auto served = std::make_shared<Served>();
  served->name = model;
  served->version = version;
  served->loaded = repository_->load_model_version(model, version);
  const LoadedModel& loaded = *served->loaded;
  const ModelConfig& c = loaded.config;
  BatcherOptions o;
  o.max_batch_size = c.max_batch_size;
  o.instance_count = static_cast<int>(loaded.placements.size());
  if (c.dynamic_batching) {
    const DynamicBatching& d = *c.dynamic_batching;
    o.preferred_batch_sizes.assign(d.preferred_batch_size.begin(), d.preferred_batch_size.end());
    o.max_queue_delay_us = d.max_queue_delay_microseconds;
    o.preserve_ordering = d.preserve_ordering;
    o.priority_levels = static_cast<int>(d.priority_levels);
    o.default_priority_level = static_cast<int>(d.default_priority_level);
    o.default_queue_policy = d.default_queue_policy;
    for (const auto& [level, policy] : d.priority_queue_policy) o.priority_queue_policy[static_cast<int>(level)] = policy;
  }
  // Without dynamic_batching a request runs as it came (no merging), as in Triton.
  o.merge = c.dynamic_batching.has_value();
  o.spread_over_idle_instances = c.kiln.spread_over_idle_instances;
  auto shared = served->loaded;
  // Each instance owns a context (CPU) or a set of contexts on its GPU, warmed up here (on the
  // loading thread, before it serves).
  try {
    served->batcher = std::make_unique<Batcher>(
        o,
        [shared, model](int index) -> InstanceFns {
          const InstancePlacement& where = shared->placements.at(static_cast<size_t>(index));
          InstanceFns fns;
          if (where.gpu >= 0) {
            fns = shared->gpu_models.at(where.gpu)->make_instance();
          } else {
            auto ctx = std::make_shared<Context>(shared->engine);
            fns.run = [ctx](const TensorMap& in) { return ctx->run(in); };
          }
          warm_up(*shared, fns.run, model);
          return fns;
        },
        nullptr);
  } catch (const std::exception& e) {
    repository_->mark_failed(model, version, e.what());
    throw;
  }
  return served;
}

void InferenceServer::load_model_locked(const std::string& model) {
  validate_model_name(model);
  repository_->scan();
  {
    std::lock_guard lock(mu_);
    known_.clear();
    for (const ModelEntry& m : repository_->models()) known_.insert(m.name);
  }
  const ModelEntry& entry = repository_->model(model);
  if (!entry.error.empty())
    throw Error(ErrorCode::kInvalidArgument, "model " + dq(model) + " is unavailable: " + entry.error);
  std::vector<int64_t> versions;
  for (const VersionEntry& v : entry.versions) versions.push_back(v.version);
  std::map<int64_t, std::shared_ptr<Served>> loaded;
  for (int64_t v : versions) loaded[v] = load_version(model, v);
  if (loaded.empty()) throw Error(ErrorCode::kInvalidArgument, "model " + dq(model) + " has no version to serve");
  std::map<int64_t, std::shared_ptr<Served>> old;
  {
    std::lock_guard lock(mu_);
    old = std::move(models_[model]);
    models_[model] = std::move(loaded);
  }
  // Versions no longer served finish their queued work; the new ones already take requests.
  for (auto& [v, s] : old) {
    s->batcher->shutdown(true);
    if (!models_.at(model).count(v)) repository_->mark_unloaded(model, v);
  }
  // A GPU may be in use now: regions registered before it are pinned for it.
  shared_memory_.pin_unpinned();
}

std::vector<IndexEntry> InferenceServer::repository_index(bool ready_only) const {
  std::vector<IndexEntry> out;
  for (IndexEntry& e : repository_->index())
    if (!ready_only || e.state == "READY") out.push_back(std::move(e));
  return out;
}

void InferenceServer::load_model(const std::string& model) {
  if (options_.model_control != ModelControl::kExplicit)
    throw ServeError(Status::kForbidden, "loading models is off; start the server with --model-control explicit");
  if (!is_valid_model_name(model)) throw ServeError(Status::kBadRequest, "invalid model name " + dq(model));
  if (stopping_) throw ServeError(Status::kUnavailable, "the server is shutting down");
  std::lock_guard lock(load_mu_);
  {
    std::lock_guard l(mu_);
    required_.insert(model);
  }
  try {
    on_own_thread([&] { load_model_locked(model); });
  } catch (const Error& e) {
    throw ServeError(Status::kBadRequest, "failed to load " + dq(model) + ": " + e.what());
  }
}

void InferenceServer::unload_model(const std::string& model) {
  if (options_.model_control != ModelControl::kExplicit)
    throw ServeError(Status::kForbidden, "unloading models is off; start the server with --model-control explicit");
  if (!is_valid_model_name(model)) throw ServeError(Status::kBadRequest, "invalid model name " + dq(model));
  std::lock_guard lock(load_mu_);
  std::map<int64_t, std::shared_ptr<Served>> old;
  {
    std::lock_guard l(mu_);
    auto it = models_.find(model);
    if (it == models_.end()) throw ServeError(Status::kNotFound, "model " + dq(model) + " is not loaded");
    old = std::move(it->second);
    models_.erase(it);
    required_.erase(model);
  }
  for (auto& [v, s] : old) {
    s->batcher->shutdown(true);
    repository_->mark_unloaded(model, v);
  }
}

void InferenceServer::pause_model(const std::string& model) {
  find(model, "");
  std::lock_guard lock(mu_);
  for (auto& [v, s] : models_.at(model)) s->batcher->pause();
}

void InferenceServer::resume_model(const std::string& model) {
  find(model, "");
  std::lock_guard lock(mu_);
  for (auto& [v, s] : models_.at(model)) s->batcher->resume();
}

bool InferenceServer::check_api_key(std::string_view provided) const {
  const std::string& key = options_.api_key;
  if (key.empty()) return true;
  // Constant time over the key's length, so the comparison does not leak a matching prefix.
  unsigned diff = provided.size() == key.size() ? 0u : 1u;
  for (size_t i = 0; i < key.size(); ++i)
    diff |= static_cast<unsigned>(static_cast<unsigned char>(key[i]) ^
                                  static_cast<unsigned char>(i < provided.size() ? provided[i] : 0));
  return diff == 0;
}

namespace {
uint64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(f >> size >> resident)) return 0;
  return resident * 4096;
}
}  // namespace

std::string InferenceServer::metrics_text() const {
  std::vector<std::pair<std::shared_ptr<Served>, ModelVersionStats>> rows;
  for (auto& s : all_served()) rows.emplace_back(s, stats_of(*s));
  std::ostringstream out;
  auto labels = [](const Served& s) {
    return "model=\"" + s.name + "\",version=\"" + std::to_string(s.version) + "\"";
  };
  auto family = [&](const char* name, const char* type, const char* help, auto value) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
    for (const auto& [s, st] : rows) out << name << "{" << labels(*s) << "} " << value(*s, st.stats) << "\n";
  };
  family("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes",
         [](const Served&, const StatsSnapshot& st) { return st.success; });
  out << "# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes\n"
         "# TYPE nv_inference_request_failure counter\n";
  for (const auto& [s, st] : rows)
    for (size_t e = 0; e < kRequestErrorCount; ++e)
      out << "nv_inference_request_failure{" << labels(*s) << ",reason=\""
          << request_error_name(static_cast<RequestError>(e)) << "\"} " << st.stats.failure[e] << "\n";
  family("nv_inference_count", "counter", "Number of inferences performed (a batch of n counts n)",
         [](const Served&, const StatsSnapshot& st) { return st.inference_count; });
  family("nv_inference_exec_count", "counter", "Number of model executions performed (batches)",
         [](const Served&, const StatsSnapshot& st) { return st.execution_count; });
  family("nv_inference_request_duration_us", "counter", "Cumulative inference request duration in microseconds",
         [](const Served&, const StatsSnapshot& st) { return st.request_us; });
  family("nv_inference_queue_duration_us", "counter", "Cumulative inference queuing duration in microseconds",
         [](const Served&, const StatsSnapshot& st) { return st.queue_us; });
  family("nv_inference_compute_input_duration_us", "counter",
         "Cumulative compute input duration in microseconds (batch assembly)",
         [](const Served&, const StatsSnapshot& st) { return st.compute_input_us; });
  family("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds",
         [](const Served&, const StatsSnapshot& st) { return st.compute_infer_us; });
  family("nv_inference_compute_output_duration_us", "counter",
         "Cumulative compute output duration in microseconds (splitting outputs)",
         [](const Served&, const StatsSnapshot& st) { return st.compute_output_us; });
  family("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution",
         [](const Served&, const StatsSnapshot& st) { return st.pending; });
  family("kiln_model_memory_bytes", "gauge",
         "Memory the model version holds: weights plus one activation arena per instance",
         [](const Served& s, const StatsSnapshot&) { return s.loaded->memory_bytes; });
  out << "# HELP nv_cpu_memory_used_bytes CPU memory in use by the server process (resident)\n"
         "# TYPE nv_cpu_memory_used_bytes gauge\nnv_cpu_memory_used_bytes "
      << resident_bytes() << "\n";
  gpu_metrics(out, rows);
  return out.str();
}

// Per GPU: the device's memory, Kiln's compute utilisation, and per model version on it the
// executions, rows, padding, compute time and memory held.
void InferenceServer::gpu_metrics(std::ostream& out,
                                  const std::vector<std::pair<std::shared_ptr<Served>, ModelVersionStats>>& rows) const {
  struct On {
    const Served* served;
    int gpu;
    const GpuModel* model;
    GpuModelStats stats;
  };
  std::vector<On> on;
  std::map<int, gpu::Device*> devices;
  std::map<int, uint64_t> compute_us;
  for (const auto& [s, st] : rows)
    for (const auto& [gpu, g] : s->loaded->gpu_models) {
      on.push_back({s.get(), gpu, g.get(), g->stats()});
      devices[gpu] = &g->device();
      compute_us[gpu] += on.back().stats.compute_us;
    }
  if (on.empty()) return;
  auto labels = [](const On& o) {
    return "model=\"" + o.served->name + "\",version=\"" + std::to_string(o.served->version) + "\",gpu=\"" +
           std::to_string(o.gpu) + "\"";
  };
  auto family = [&](const char* name, const char* type, const char* help, auto value) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
    for (const On& o : on) out << name << "{" << labels(o) << "} " << value(o) << "\n";
  };
  family("kiln_gpu_execution_count", "counter", "Batches run on this GPU", [](const On& o) { return o.stats.executions; });
  family("kiln_gpu_inference_count", "counter", "Request rows run on this GPU", [](const On& o) { return o.stats.rows; });
  family("kiln_gpu_padded_row_count", "counter", "Zero rows added to reach a compiled batch size",
         [](const On& o) { return o.stats.padded_rows; });
  family("kiln_gpu_compute_duration_us", "counter", "Cumulative GPU compute time in microseconds (CUDA events)",
         [](const On& o) { return o.stats.compute_us; });
  family("kiln_gpu_input_direct_bytes", "counter",
         "Input bytes copied to this GPU straight from registered host memory (pinned shared-memory regions)",
         [](const On& o) { return o.stats.direct_input_bytes; });
  family("kiln_gpu_input_staged_bytes", "counter", "Input bytes copied to this GPU through a pinned staging buffer",
         [](const On& o) { return o.stats.staged_input_bytes; });
  family("kiln_gpu_model_memory_bytes", "gauge", "GPU memory the model version holds here: weights plus its instances",
         [](const On& o) { return o.served->loaded->gpu_memory_bytes.at(o.gpu); });
  auto device_family = [&](const char* name, const char* help, auto value) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " gauge\n";
    for (const auto& [gpu, d] : devices) out << name << "{gpu=\"" << gpu << "\"} " << value(gpu, *d) << "\n";
  };
  device_family("nv_gpu_memory_total_bytes", "GPU memory, total",
                [](int, gpu::Device& d) { return static_cast<uint64_t>(d.props().total_memory); });
  device_family("nv_gpu_memory_used_bytes", "GPU memory in use (all processes)", [](int, gpu::Device& d) {
    return static_cast<uint64_t>(d.props().total_memory - std::min(d.props().total_memory, d.free_memory()));
  });
  // Utilisation: the share of wall time since the previous scrape that Kiln's kernels ran on the
  // GPU (summed compute time of every instance, capped at 1), like NVML's "kernel active" ratio.
  std::lock_guard lock(gpu_scrape_mu_);
  const int64_t now = SteadyClock().now_us();
  device_family("nv_gpu_utilization", "GPU utilization rate by Kiln's kernels since the last scrape (0.0 - 1.0)",
                [&](int gpu, gpu::Device&) {
                  auto& [t, busy] = gpu_scrape_[gpu];
                  const double dt = t > 0 ? static_cast<double>(now - t) : 0.0;
                  const double ratio =
                      dt > 0 ? std::min(1.0, static_cast<double>(compute_us[gpu] - std::min(busy, compute_us[gpu])) / dt)
                             : 0.0;
                  t = now;
                  busy = compute_us[gpu];
                  return ratio;
                });
}

void InferenceServer::shutdown(bool drain) {
  if (stopping_.exchange(true)) {
    std::lock_guard lock(load_mu_);  // waits for a concurrent shutdown to finish
    return;
  }
  std::lock_guard lock(load_mu_);
  for (auto& s : all_served()) s->batcher->shutdown(drain);
  stopped_ = true;
}

}  // namespace kiln::serve
