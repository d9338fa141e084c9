// The protocol-independent core of `kiln serve`: loads a model repository, keeps a batcher per
// loaded model version, validates and runs inference requests, and answers the KServe v2 /
// Open Inference Protocol's health, metadata, repository and statistics questions. The HTTP and
// gRPC front ends only translate wire formats to and from the structs here.
#pragma once
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "serve/batcher.h"
#include "serve/model_config.h"
#include "serve/repository.h"
#include "serve/shared_memory.h"

namespace kiln::serve {

// Protocol-neutral outcome of a call. Front ends map it: HTTP status codes (http_status) and gRPC
// status codes.
enum class Status {
  kOk,
  kBadRequest,       // malformed request, unknown input, wrong dtype or shape (400 / INVALID_ARGUMENT)
  kUnauthorized,     // a management call without the API key (401 / UNAUTHENTICATED)
  kForbidden,        // a call the server's mode does not allow (403 / UNAVAILABLE, as Triton refuses it)
  kNotFound,         // unknown model or version, or not loaded (404 / NOT_FOUND)
  kPayloadTooLarge,  // request body over the limit (413 / RESOURCE_EXHAUSTED)
  kTimeout,          // the request's queue timeout expired (504 / DEADLINE_EXCEEDED)
  kUnavailable,      // queue full, model not ready, server shutting down (503 / UNAVAILABLE)
  kInternal,         // the engine failed running the request (500 / INTERNAL)
};
int http_status(Status s);
const char* status_name(Status s);  // "bad request", ...

class ServeError : public std::runtime_error {
 public:
  ServeError(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  Status status() const { return status_; }

 private:
  Status status_;
};

// KServe v2 tensor datatypes ("BOOL", "UINT8", ..., "FP16", "FP32", "FP64", "BYTES", "BF16").
std::string_view v2_datatype_name(DataType dt);
DataType parse_v2_datatype(std::string_view name);  // kInvalid when unknown
// Bytes per element; 0 for BYTES (variable length, each element a 4-byte little-endian length and
// its bytes) and kInvalid.
size_t v2_element_size(DataType dt);

// One input of an inference request. `data` holds the elements as raw little-endian bytes, row
// major (the binary tensor extension's and gRPC raw_input_contents' layout); front ends that
// receive typed values (JSON arrays, gRPC contents) pack them here. `owner` may keep a buffer alive
// that `data` points into, so large binary bodies are not copied.
struct InputTensor {
  std::string name;
  DataType datatype = DataType::kInvalid;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t byte_size = 0;
  std::shared_ptr<const void> owner;
};

struct InferenceRequest {
  std::string model;
  std::string version;  // "" : the latest loaded version
  std::string id;       // echoed in the response
  std::vector<InputTensor> inputs;
  std::vector<std::string> outputs;  // the outputs wanted; empty: all
  int priority = 0;                  // 0: the model's default level
  uint64_t timeout_us = 0;           // 0: the model's default queue timeout
};

struct OutputTensor {
  std::string name;
  DataType datatype = DataType::kInvalid;
  std::vector<int64_t> shape;
  Tensor tensor;  // dense, row major; tensor.raw() / nbytes() are the binary form
};

struct InferenceResult {
  std::string model_name;
  std::string model_version;
  std::string id;
  std::vector<OutputTensor> outputs;  // in the order requested, else the model's order
};

// Called exactly once per infer() call: with a result, or with an error (status != kOk).
struct InferenceOutcome {
  Status status = Status::kOk;
  std::string error;
  InferenceResult result;
};
using InferCallback = std::function<void(InferenceOutcome)>;

struct TensorMetadata {
  std::string name;
  std::string datatype;        // v2 name
  std::vector<int64_t> shape;  // -1: any size; the batch dim first (-1) when the model batches
};
struct ModelMetadata {
  std::string name;
  std::vector<std::string> versions;  // loaded versions, ascending
  std::string platform;               // "kiln_engine" or "onnx"
  std::vector<TensorMetadata> inputs, outputs;
};
struct ServerMetadata {
  std::string name = "kiln";
  std::string version;
  std::vector<std::string> extensions;
};

// Per loaded version, Triton's model statistics shape.
struct ModelVersionStats {
  std::string name;
  std::string version;
  uint64_t last_inference_ms = 0;  // since the epoch; 0 before the first
  StatsSnapshot stats;
};

enum class ModelControl { kNone, kExplicit };

struct ServerOptions {
  std::filesystem::path model_repository;
  RepositoryOptions repository;
  ModelControl model_control = ModelControl::kNone;
  std::vector<std::string> load_models;  // explicit mode: loaded at start ("*": all)
  std::string api_key;                   // non-empty: repository load/unload need it
  bool exit_on_error = true;             // start() throws when a model fails to load
};

class InferenceServer {
 public:
  // Scans the repository (kiln::Error kIo / kInvalidArgument). Loads nothing yet.
  explicit InferenceServer(ServerOptions options);
  ~InferenceServer();  // shutdown(drain)
  InferenceServer(const InferenceServer&) = delete;
  InferenceServer& operator=(const InferenceServer&) = delete;

  // Loads and warms up the models to serve. With exit_on_error, the first failure is thrown (a
  // kiln::Error naming the model); otherwise failures are left UNAVAILABLE in the index.
  void start();

  bool live() const { return !stopped_.load(); }
  // True after start() while not shutting down and every model meant to be loaded is ready.
  bool ready() const;
  ServerMetadata server_metadata() const;
  bool model_ready(const std::string& model, const std::string& version) const;
  // Throws ServeError kNotFound (kBadRequest for an invalid name) unless the model version is loaded.
  void require_model(const std::string& model, const std::string& version) const { find(model, version); }
  // Throws ServeError kNotFound for unknown or unloaded models and versions.
  ModelMetadata model_metadata(const std::string& model, const std::string& version) const;
  // The model's config as the server completed it (for GET .../config), as JSON text.
  std::string model_config_json(const std::string& model, const std::string& version) const;
  // The same config as model_config.proto's binary form (gRPC's ModelConfig call).
  std::string model_config_proto(const std::string& model, const std::string& version) const;
  // Statistics of every loaded version (model "" : all models; version "" : all versions).
  std::vector<ModelVersionStats> model_stats(const std::string& model, const std::string& version) const;

  // Validates the request against the model (names, datatypes, shapes, byte sizes) and queues it.
  // `done` is called exactly once: from this thread when the request is rejected, else from a
  // batcher thread.
  void infer(InferenceRequest request, InferCallback done);
  // infer() and wait.
  InferenceOutcome infer_sync(InferenceRequest request);

  // Repository extension. Load and unload throw ServeError kForbidden unless model control is
  // explicit; callers check the API key first (check_api_key).
  std::vector<IndexEntry> repository_index(bool ready_only) const;
  void load_model(const std::string& model);    // (re)loads the served versions; kBadRequest on failure
  void unload_model(const std::string& model);  // drains the model's queued requests first
  ModelControl model_control() const { return options_.model_control; }
  // True when no API key is set or `provided` equals it (compared in constant time).
  bool check_api_key(std::string_view provided) const;
  // The system shared-memory regions clients registered (both front ends resolve requests' region
  // references through it).
  SharedMemoryRegistry& shared_memory() { return shared_memory_; }
  const SharedMemoryRegistry& shared_memory() const { return shared_memory_; }
  bool management_needs_key() const { return !options_.api_key.empty(); }

  // Holds a model's queue: no batch is formed (queue timeouts still apply) until resume_model.
  // For maintenance and for tests that need requests to queue deterministically. kNotFound when the
  // model is not loaded.
  void pause_model(const std::string& model);
  void resume_model(const std::string& model);

  // Prometheus text exposition (Triton's metric names).
  std::string metrics_text() const;

  // Readiness goes false and new requests are refused (kUnavailable); queued and running requests
  // finish when drain is true. Idempotent.
  void shutdown(bool drain = true);
  bool shutting_down() const { return stopping_.load(); }

 private:
  struct Instance;
  struct Served;  // one loaded version with its batcher
  std::shared_ptr<Served> find(const std::string& model, const std::string& version) const;
  std::vector<std::shared_ptr<Served>> all_served() const;  // every loaded version, under mu_
  static ModelVersionStats stats_of(const Served& s);
  std::shared_ptr<Served> load_version(const std::string& model, int64_t version);
  void load_model_locked(const std::string& model);
  void gpu_metrics(std::ostream& out,
                   const std::vector<std::pair<std::shared_ptr<Served>, ModelVersionStats>>& rows) const;

  ServerOptions options_;
  std::unique_ptr<ModelRepository> repository_;
  SharedMemoryRegistry shared_memory_;
  mutable std::mutex mu_;  // guards models_ and load operations
  std::map<std::string, std::map<int64_t, std::shared_ptr<Served>>> models_;
  std::set<std::string> required_;  // models readiness waits for: loaded at start or by a load call
  std::set<std::string> known_;     // model folders of the last scan
  std::mutex load_mu_;  // serializes load/unload
  std::atomic<bool> started_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> stopped_{false};
  mutable std::mutex gpu_scrape_mu_;
  mutable std::map<int, std::pair<int64_t, uint64_t>> gpu_scrape_;  // GPU -> (last scrape us, compute us then)
};

}  // namespace kiln::serve
