// The configuration of one model in a `kiln serve` repository: config.pbtxt (Triton's text format,
// src/serve/model_config.proto) parsed and validated into plain structs, and checked against (or
// completed from) the model itself. No protobuf type appears here.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine_file.h"
#include "ir/dtype.h"
#include "ir/graph.h"

namespace kiln::serve {

// Triton's tensor element types.
enum class DataType {
  kInvalid,
  kBool,
  kUInt8,
  kUInt16,
  kUInt32,
  kUInt64,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFP16,
  kFP32,
  kFP64,
  kString,
  kBF16
};
std::string_view data_type_name(DataType dt);  // "TYPE_FP32"
// The Kiln dtype of a config type; nullopt for kInvalid and kString (no string tensors in Kiln).
std::optional<DType> to_dtype(DataType dt);
// The config type of a Kiln dtype; kInvalid for dtypes Triton cannot name.
DataType from_dtype(DType dt);

struct TensorConfig {
  std::string name;
  DataType data_type = DataType::kInvalid;
  std::vector<int64_t> dims;  // without the batch dim when max_batch_size > 0; -1: any size
  bool optional = false;      // inputs only
};

enum class InstanceKind { kAuto, kCpu, kGpu };
struct InstanceGroup {
  std::string name;
  int count = 1;
  InstanceKind kind = InstanceKind::kAuto;
  std::vector<int> gpus;
};

enum class TimeoutAction { kReject, kDelay };
struct QueuePolicy {
  TimeoutAction timeout_action = TimeoutAction::kReject;
  uint64_t default_timeout_microseconds = 0;  // 0: requests never time out in the queue
  bool allow_timeout_override = false;
  uint32_t max_queue_size = 0;  // 0: unbounded
};

struct DynamicBatching {
  std::vector<int> preferred_batch_size;
  uint64_t max_queue_delay_microseconds = 0;
  bool preserve_ordering = false;
  uint64_t priority_levels = 0;         // 0: no priorities; else levels 1..priority_levels (1 is highest)
  uint64_t default_priority_level = 0;  // in [1, priority_levels] when there are levels
  QueuePolicy default_queue_policy;
  std::map<uint64_t, QueuePolicy> priority_queue_policy;  // by level
};

struct VersionPolicy {
  enum class Kind { kLatest, kAll, kSpecific };
  Kind kind = Kind::kLatest;
  uint32_t num_versions = 1;      // kLatest
  std::vector<int64_t> versions;  // kSpecific, sorted, unique
};

struct WarmupInput {
  enum class Source { kZero, kRandom, kFile };
  DataType data_type = DataType::kInvalid;
  std::vector<int64_t> dims;  // without the batch dim
  Source source = Source::kZero;
  std::string input_data_file;
};
struct Warmup {
  std::string name;
  uint32_t batch_size = 0;
  std::map<std::string, WarmupInput> inputs;
  uint32_t count = 1;
};

// Kiln extensions (the `kiln { ... }` block).
struct InputRange {
  std::string name;
  std::vector<int64_t> min, opt, max;  // without the batch dim when max_batch_size > 0
};
struct BuildOptions {
  std::string precision = "fp32";  // "fp32", "bf16", "fp16"
  int opt_level = 3;
  std::string timing_cache;  // relative to the model folder; "" = <version>/timing_cache.json
  std::vector<InputRange> input_ranges;
  std::vector<int64_t> gpu_batch_sizes;  // KIND_GPU: compiled batch sizes; empty: automatic
};
struct KilnOptions {
  uint64_t memory_budget_bytes = 0;  // 0: no budget
  int threads_per_instance = 0;      // 0: automatic
  BuildOptions build;
  bool spread_over_idle_instances = true;  // split a batch over idle instances (batcher.h)
  bool split_batches = true;               // CPU: one-thread sub-batches (runtime/batch_split.h)
};

struct ModelConfig {
  std::string source;  // the config file, for messages
  std::string name;
  std::string platform, backend;
  int max_batch_size = 0;
  std::vector<TensorConfig> inputs, outputs;
  std::vector<InstanceGroup> instance_groups;  // never empty after validation (default: one KIND_AUTO)
  std::optional<DynamicBatching> dynamic_batching;
  VersionPolicy version_policy;
  std::vector<Warmup> warmups;
  std::map<std::string, std::string> parameters;
  KilnOptions kiln;

  // Instances over every group.
  int instance_count() const;
};

// Parses config.pbtxt text and validates it. Every failure is a kiln::Error kInvalidArgument whose
// message starts with `source` (plus ":LINE:COLUMN" for syntax errors and unknown fields) and names
// the field. `model_dir_name`, when given, must equal a non-empty `name` (Triton's rule); an empty
// name is filled with it.
ModelConfig parse_model_config(const std::string& text, const std::string& source,
                               const std::string& model_dir_name = "");
// Reads and parses a file (kIo when it cannot be read).
ModelConfig load_model_config(const std::filesystem::path& path, const std::string& model_dir_name = "");

// Checks the config's inputs and outputs against the model's (names, dtypes, dims without the batch
// dim when max_batch_size > 0) and fills them from the model when the config lists none (Triton's
// auto-complete). max_batch_size > 0 needs every input's first dim to be dynamic or equal to it, and
// an engine's profiles (`info`, may be null for a model not built yet) to cover batches 1..max.
// Output types are inferred when the model does not declare them. Throws kInvalidArgument naming
// the config file and the tensor.
void check_against_model(ModelConfig& config, const Model& model, const EngineInfo* info = nullptr);

// The config in the binary protobuf form of model_config.proto (Triton's field numbers): what the
// gRPC ModelConfig call returns.
std::string serialize_model_config(const ModelConfig& config);

}  // namespace kiln::serve
