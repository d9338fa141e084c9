// The model repository of `kiln serve` (Triton's layout): DIR/<model>/config.pbtxt plus numbered
// version folders holding model.kiln (an engine) or model.onnx (built at load). Scanning validates
// names, configs and paths without loading anything; load_model_version() loads (or builds) one
// version, checks it against its config and its memory budget, and returns it ready to run.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/runtime.h"
#include "serve/gpu_instances.h"
#include "serve/model_config.h"

namespace kiln::serve {

// Model names are [A-Za-z0-9_.-]+ and neither "." nor "..": a name is a folder of the repository,
// so this is what keeps a client-given name from reaching outside it.
bool is_valid_model_name(std::string_view name);
// Throws kInvalidArgument quoting the name when it is not valid. Call it before any filesystem use
// of a name that came from outside (a client, the command line).
void validate_model_name(std::string_view name);

// The versions a policy serves among the numbered folders present (ascending). Throws
// kInvalidArgument (naming `source`) when a specific version has no folder.
std::vector<int64_t> select_versions(const VersionPolicy& policy, std::vector<int64_t> available,
                                     const std::string& source);

enum class ModelFormat { kEngine, kOnnx };

struct VersionEntry {
  int64_t version = 0;
  std::filesystem::path dir;
  std::filesystem::path model_file;  // model.kiln, else model.onnx; empty when neither is there
  ModelFormat format = ModelFormat::kEngine;
  std::string error;  // why this version cannot load; "" when it can
};

struct ModelEntry {
  std::string name;
  std::filesystem::path dir;
  std::optional<ModelConfig> config;   // as written (not yet completed from the model)
  std::vector<VersionEntry> versions;  // the versions the policy selects, ascending
  std::string error;                   // why the model cannot load at all; "" when it can
};

// One row of the repository index (Triton's /v2/repository/index).
struct IndexEntry {
  std::string name;
  std::string version;  // "" for a model that failed before any version was chosen
  std::string state;    // "READY" (loaded) or "UNAVAILABLE"
  std::string reason;   // why it is unavailable: the error, or "not loaded"
};

// A loaded version, ready for contexts.
struct LoadedModel {
  ModelConfig config;  // completed from the model (inputs, outputs)
  int64_t version = 0;
  std::filesystem::path model_file;
  bool built = false;  // true when built from model.onnx at load
  std::shared_ptr<const EngineRuntime> engine;  // null when every instance is on a GPU
  std::vector<InstancePlacement> placements;    // one per instance
  std::map<int, std::shared_ptr<GpuModel>> gpu_models;  // by GPU index, for KIND_GPU instances
  std::map<int, uint64_t> gpu_memory_bytes;     // by GPU: weights + every instance there
  uint64_t weight_bytes = 0;      // initializers
  uint64_t activation_bytes = 0;  // one instance's arena at the build's opt shapes
  uint64_t memory_bytes = 0;      // CPU: weight_bytes + activation_bytes per CPU instance: what the budget limits
  std::string timing_cache;       // the cache file a build used ("" for engines)
};

struct RepositoryOptions {
  // Where builds keep timing caches, as <cache_dir>/<model>/<version>/timing_cache.json; empty: in
  // the version folder (or the config's kiln.build.timing_cache).
  std::filesystem::path cache_dir;
  bool time_tactics = true;  // false: first supporting tactic (fast loads in tests)
  int threads = 0;           // per instance when the config sets none; 0: automatic
};

class ModelRepository {
 public:
  // Throws kIo when `root` is not a readable folder. Scans it.
  explicit ModelRepository(std::filesystem::path root, RepositoryOptions options = {});

  // Reads the folder again: models, configs, versions. Load states are kept for versions still there.
  void scan();
  const std::filesystem::path& root() const { return root_; }
  // Every model folder (valid or not), sorted by name.
  const std::vector<ModelEntry>& models() const { return models_; }
  // The entry of one model; validates the name first. Throws kInvalidArgument for unknown models.
  const ModelEntry& model(const std::string& name) const;
  // Per model and served version: READY or UNAVAILABLE with the reason.
  std::vector<IndexEntry> index() const;

  // Loads one version: the engine file, or model.onnx built with the config's kiln.build options
  // (profiles cover batches 1..max_batch_size at opt = max_batch_size; the timing cache is read and
  // written). Checks the model against the config (auto-completing inputs and outputs) and the
  // memory budget. Throws kiln::Error (kInvalidArgument for names, versions, config and budget);
  // the failure is also recorded as the version's index reason.
  std::shared_ptr<LoadedModel> load_model_version(const std::string& name, int64_t version);
  // Marks a version no longer loaded (the server drops its LoadedModel).
  void mark_unloaded(const std::string& name, int64_t version);
  // Records why a loaded version could not be served after all (its warmup failed): the index
  // shows it UNAVAILABLE with that reason.
  void mark_failed(const std::string& name, int64_t version, const std::string& reason);

 private:
  std::shared_ptr<EngineRuntime> build_cpu(const std::string& name, int64_t version, const ModelEntry& m,
                                           const VersionEntry& v, ModelConfig& c, Model model, int threads,
                                           LoadedModel& loaded) const;
  // Builds a GpuModel per GPU and checks each GPU's memory (free memory and the budget).
  void build_gpu(const std::string& name, int64_t version, const Model& model, const std::map<int, int>& per_gpu,
                 LoadedModel& loaded, const EngineInfo* gpu_engine = nullptr) const;

  std::filesystem::path root_;  // canonical
  RepositoryOptions options_;
  std::vector<ModelEntry> models_;
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int64_t>, std::string> load_state_;  // "" loaded, else the failure
};

}  // namespace kiln::serve
