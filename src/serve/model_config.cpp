// config.pbtxt: text-format parsing with line/column errors, validation into serve::ModelConfig, and
// the check against (or completion from) the model's own inputs and outputs.
#include "serve/model_config.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "kiln/error.h"
#include "ops/model_check.h"
#include "serve/model_config.pb.h"

namespace kiln::serve {

namespace {

using ConfigProto = pb::ModelConfig;

[[noreturn]] void fail(const std::string& source, const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, source + ": " + what + " (see docs/serving.md#config-reference)");
}

std::string join_dims(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + "]";
}

// Collects the first parse error with its position; protobuf reports 0-based lines and columns.
class FirstError : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column, const std::string& message) override {
    if (!message_.empty()) return;
    line_ = line + 1;
    column_ = column + 1;
    message_ = message;
  }
  void AddWarning(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
  bool any() const { return !message_.empty(); }
  // "unknown field "foo" in ModelDynamicBatching" for unknown fields, protobuf's text otherwise.
  std::string describe(const std::string& source, const std::string& text) const {
    std::string msg = message_;
    int column = column_;
    const std::string type_tag = "Message type \"", field_tag = "\" has no field named \"";
    const size_t t = msg.find(type_tag), f = msg.find(field_tag);
    if (t != std::string::npos && f != std::string::npos) {
      std::string type = msg.substr(t + type_tag.size(), f - t - type_tag.size());
      if (const size_t dot = type.rfind('.'); dot != std::string::npos) type = type.substr(dot + 1);
      const size_t name_begin = f + field_tag.size();
      const std::string field = msg.substr(name_begin, msg.find('"', name_begin) - name_begin);
      msg = "unknown field \"" + field + "\" in " + type + " (a Triton field Kiln does not support, or a misspelling)";
      // protobuf points past the name; point at the name itself, the last one before that column.
      std::istringstream lines(text);
      std::string line;
      for (int i = 0; i < line_ && std::getline(lines, line); ++i) {
      }
      const size_t at = line.rfind(field, static_cast<size_t>(std::max(column - 1, 0)));
      if (at != std::string::npos) column = static_cast<int>(at) + 1;
    }
    return source + ":" + std::to_string(line_) + ":" + std::to_string(column) + ": " + msg;
  }

 private:
  int line_ = 0, column_ = 0;
  std::string message_;
};

DataType convert_type(pb::DataType t) { return static_cast<DataType>(static_cast<int>(t)); }

// A tensor's element type: set, and one Kiln computes on.
void check_type(const std::string& src, const std::string& what, DataType dt) {
  if (dt == DataType::kInvalid) fail(src, what + ": data_type is missing (TYPE_FP32, TYPE_INT64, ...)");
  if (dt == DataType::kString) fail(src, what + ": TYPE_STRING is not supported (Kiln has no string tensors)");
}

// dims: -1 (any size, when `allow_any`) or positive.
void check_dims(const std::string& src, const std::string& what, const std::vector<int64_t>& dims, bool allow_any) {
  for (size_t i = 0; i < dims.size(); ++i) {
    if (dims[i] > 0 || (allow_any && dims[i] == -1)) continue;
    fail(src, what + ": dims " + join_dims(dims) + " has " + std::to_string(dims[i]) + " at " + std::to_string(i) +
                  (allow_any ? " (a dim is positive, or -1 for any size)" : " (a dim here is positive)"));
  }
}

// A path inside the model's folder: relative, without "..".
void check_relative(const std::string& src, const std::string& what, const std::string& path) {
  const std::filesystem::path p(path);
  bool up = false;
  for (const auto& part : p) up = up || part == "..";
  if (path.empty() || p.is_absolute() || up)
    fail(src, what + " \"" + path + "\" must be a relative path inside the model's folder");
}

QueuePolicy convert_queue(const pb::ModelQueuePolicy& q) {
  QueuePolicy out;
  out.timeout_action =
      q.timeout_action() == pb::ModelQueuePolicy::DELAY ? TimeoutAction::kDelay : TimeoutAction::kReject;
  out.default_timeout_microseconds = q.default_timeout_microseconds();
  out.allow_timeout_override = q.allow_timeout_override();
  out.max_queue_size = q.max_queue_size();
  return out;
}

ModelConfig validate(const ConfigProto& p, const std::string& src, const std::string& dir_name) {
  ModelConfig c;
  c.source = src;
  c.name = p.name();
  if (!dir_name.empty()) {
    if (c.name.empty()) c.name = dir_name;
    if (c.name != dir_name) fail(src, "name \"" + c.name + "\" differs from the model's folder \"" + dir_name + "\"");
  }
  if (c.name.empty()) fail(src, "name is missing");

  c.platform = p.platform();
  c.backend = p.backend();
  static const std::set<std::string> platforms = {"", "kiln", "onnxruntime_onnx", "onnx"};
  static const std::set<std::string> backends = {"", "kiln", "onnxruntime", "onnx"};
  if (!platforms.count(c.platform))
    fail(src, "platform \"" + c.platform + "\" is not one Kiln serves (kiln, onnxruntime_onnx, onnx, or none)");
  if (!backends.count(c.backend))
    fail(src, "backend \"" + c.backend + "\" is not one Kiln serves (kiln, onnxruntime, onnx, or none)");

  if (p.max_batch_size() < 0) fail(src, "max_batch_size " + std::to_string(p.max_batch_size()) + " is negative");
  c.max_batch_size = p.max_batch_size();
  const bool batching = c.max_batch_size > 0;

  std::set<std::string> names;
  for (const auto& in : p.input()) {
    const std::string what = "input \"" + in.name() + "\"";
    if (in.name().empty()) fail(src, "an input has no name");
    if (!names.insert(in.name()).second) fail(src, what + " is listed twice");
    check_type(src, what, convert_type(in.data_type()));
    check_dims(src, what, {in.dims().begin(), in.dims().end()}, true);
    c.inputs.push_back({in.name(), convert_type(in.data_type()), {in.dims().begin(), in.dims().end()}, in.optional()});
  }
  names.clear();
  for (const auto& out : p.output()) {
    const std::string what = "output \"" + out.name() + "\"";
    if (out.name().empty()) fail(src, "an output has no name");
    if (!names.insert(out.name()).second) fail(src, what + " is listed twice");
    check_type(src, what, convert_type(out.data_type()));
    check_dims(src, what, {out.dims().begin(), out.dims().end()}, true);
    c.outputs.push_back({out.name(), convert_type(out.data_type()), {out.dims().begin(), out.dims().end()}, false});
  }

  for (int i = 0; i < p.instance_group_size(); ++i) {
    const auto& g = p.instance_group(i);
    InstanceGroup out;
    out.name = g.name().empty() ? c.name + "_" + std::to_string(i) : g.name();  // Triton's default name
    const std::string what = "instance_group \"" + out.name + "\"";
    if (g.has_count() && g.count() < 1)
      fail(src, what + ": count " + std::to_string(g.count()) + " must be at least 1");
    out.count = g.has_count() ? g.count() : 1;
    out.kind = g.kind() == pb::ModelInstanceGroup::KIND_GPU   ? InstanceKind::kGpu
               : g.kind() == pb::ModelInstanceGroup::KIND_CPU ? InstanceKind::kCpu
                                                              : InstanceKind::kAuto;
    if (out.kind != InstanceKind::kGpu && g.gpus_size() > 0)
      fail(src, what + ": gpus is set but the kind is not KIND_GPU");
    std::set<int> gpus;
    for (int d : g.gpus()) {
      if (d < 0) fail(src, what + ": gpus lists " + std::to_string(d) + ", which is not a GPU index (0, 1, ...)");
      if (!gpus.insert(d).second) fail(src, what + ": gpus lists GPU " + std::to_string(d) + " twice");
      out.gpus.push_back(d);
    }
    c.instance_groups.push_back(out);
  }
  if (c.instance_groups.empty()) c.instance_groups.push_back({c.name + "_0", 1, InstanceKind::kAuto, {}});

  if (p.has_dynamic_batching()) {
    const auto& d = p.dynamic_batching();
    if (!batching) fail(src, "dynamic_batching needs max_batch_size > 0 (a model that takes a batch dim)");
    DynamicBatching b;
    std::set<int> seen;
    for (int s : d.preferred_batch_size()) {
      if (s < 1 || s > c.max_batch_size)
        fail(src, "dynamic_batching: preferred_batch_size " + std::to_string(s) + " is outside [1, max_batch_size " +
                      std::to_string(c.max_batch_size) + "]");
      if (!seen.insert(s).second)
        fail(src, "dynamic_batching: preferred_batch_size " + std::to_string(s) + " is listed twice");
      b.preferred_batch_size.push_back(s);
    }
    b.max_queue_delay_microseconds = d.max_queue_delay_microseconds();
    b.preserve_ordering = d.preserve_ordering();
    b.priority_levels = d.priority_levels();
    b.default_priority_level = d.default_priority_level();
    if (b.priority_levels == 0) {
      if (b.default_priority_level != 0)
        fail(src, "dynamic_batching: default_priority_level " + std::to_string(b.default_priority_level) +
                      " is set but priority_levels is 0");
      if (!d.priority_queue_policy().empty())
        fail(src, "dynamic_batching: priority_queue_policy is set but priority_levels is 0");
    } else if (b.default_priority_level < 1 || b.default_priority_level > b.priority_levels) {
      fail(src, "dynamic_batching: default_priority_level " + std::to_string(b.default_priority_level) +
                    " is outside [1, priority_levels " + std::to_string(b.priority_levels) + "]");
    }
    b.default_queue_policy = convert_queue(d.default_queue_policy());
    for (const auto& [level, q] : d.priority_queue_policy()) {
      if (level < 1 || level > b.priority_levels)
        fail(src, "dynamic_batching: priority_queue_policy level " + std::to_string(level) +
                      " is outside [1, priority_levels " + std::to_string(b.priority_levels) + "]");
      b.priority_queue_policy[level] = convert_queue(q);
    }
    c.dynamic_batching = b;
  }

  if (p.has_version_policy()) {
    const auto& v = p.version_policy();
    if (v.has_all()) {
      c.version_policy.kind = VersionPolicy::Kind::kAll;
    } else if (v.has_specific()) {
      c.version_policy.kind = VersionPolicy::Kind::kSpecific;
      if (v.specific().versions().empty()) fail(src, "version_policy: specific lists no versions");
      for (int64_t n : v.specific().versions()) {
        if (n < 1) fail(src, "version_policy: specific version " + std::to_string(n) + " is not a positive number");
        c.version_policy.versions.push_back(n);
      }
      auto& vs = c.version_policy.versions;
      std::sort(vs.begin(), vs.end());
      vs.erase(std::unique(vs.begin(), vs.end()), vs.end());
    } else if (v.has_latest()) {
      if (v.latest().has_num_versions() && v.latest().num_versions() < 1)
        fail(src, "version_policy: latest num_versions must be at least 1");
      c.version_policy.num_versions = v.latest().has_num_versions() ? v.latest().num_versions() : 1;
    }
  }

  for (const auto& w : p.model_warmup()) {
    Warmup out;
    out.name = w.name();
    const std::string what = "model_warmup \"" + w.name() + "\"";
    if (w.name().empty()) fail(src, "a model_warmup has no name");
    if (w.has_batch_size() && w.batch_size() < 1) fail(src, what + ": batch_size must be at least 1");
    out.batch_size = w.has_batch_size() ? w.batch_size() : 1;
    const uint32_t most = batching ? static_cast<uint32_t>(c.max_batch_size) : 1;
    if (out.batch_size > most)
      fail(src, what + ": batch_size " + std::to_string(out.batch_size) + " exceeds max_batch_size " +
                    std::to_string(c.max_batch_size) + (batching ? "" : " (a model without batching warms up with 1)"));
    if (w.has_count() && w.count() < 1) fail(src, what + ": count must be at least 1");
    out.count = w.has_count() ? w.count() : 1;
    if (w.inputs().empty()) fail(src, what + ": inputs is empty");
    for (const auto& [name, in] : w.inputs()) {
      const std::string iw = what + " input \"" + name + "\"";
      WarmupInput wi;
      wi.data_type = convert_type(in.data_type());
      check_type(src, iw, wi.data_type);
      wi.dims.assign(in.dims().begin(), in.dims().end());
      check_dims(src, iw, wi.dims, false);
      switch (in.input_data_type_case()) {
        case pb::ModelWarmup::Input::kZeroData:
          wi.source = WarmupInput::Source::kZero;
          break;
        case pb::ModelWarmup::Input::kRandomData:
          wi.source = WarmupInput::Source::kRandom;
          break;
        case pb::ModelWarmup::Input::kInputDataFile:
          wi.source = WarmupInput::Source::kFile;
          wi.input_data_file = in.input_data_file();
          check_relative(src, iw + ": input_data_file", wi.input_data_file);
          break;
        default:
          fail(src, iw + ": set one of zero_data, random_data or input_data_file");
      }
      out.inputs[name] = wi;
    }
    c.warmups.push_back(out);
  }

  for (const auto& [key, value] : p.parameters()) c.parameters[key] = value.string_value();

  if (p.has_kiln()) {
    const auto& k = p.kiln();
    c.kiln.memory_budget_bytes = k.memory_budget_bytes();
    if (k.threads_per_instance() < 0)
      fail(src, "kiln: threads_per_instance " + std::to_string(k.threads_per_instance()) + " is negative");
    c.kiln.threads_per_instance = k.threads_per_instance();
    if (k.has_spread_over_idle_instances()) c.kiln.spread_over_idle_instances = k.spread_over_idle_instances();
    if (k.has_split_batches()) c.kiln.split_batches = k.split_batches();
    const auto& b = k.build();
    if (!b.precision().empty()) c.kiln.build.precision = b.precision();
    if (c.kiln.build.precision != "fp32" && c.kiln.build.precision != "bf16" && c.kiln.build.precision != "fp16")
      fail(src, "kiln.build: precision \"" + b.precision() +
                    "\" is not fp32, bf16 or fp16 (for int8, calibrate with `kiln build --int8` and serve the engine)");
    if (b.has_opt_level() && (b.opt_level() < 0 || b.opt_level() > 5))
      fail(src, "kiln.build: opt_level " + std::to_string(b.opt_level()) + " is outside [0, 5]");
    if (b.has_opt_level()) c.kiln.build.opt_level = b.opt_level();
    if (!b.timing_cache().empty()) check_relative(src, "kiln.build: timing_cache", b.timing_cache());
    c.kiln.build.timing_cache = b.timing_cache();
    std::set<std::string> ranged;
    for (const auto& r : b.input_range()) {
      const std::string what = "kiln.build: input_range \"" + r.name() + "\"";
      if (r.name().empty()) fail(src, "kiln.build: an input_range has no name");
      if (!ranged.insert(r.name()).second) fail(src, what + " is listed twice");
      InputRange out{r.name(),
                     {r.min().begin(), r.min().end()},
                     {r.opt().begin(), r.opt().end()},
                     {r.max().begin(), r.max().end()}};
      if (out.min.size() != out.opt.size() || out.opt.size() != out.max.size())
        fail(src, what + ": min, opt and max have different lengths");
      for (size_t i = 0; i < out.min.size(); ++i)
        if (out.min[i] < 1 || out.min[i] > out.opt[i] || out.opt[i] > out.max[i])
          fail(src, what + ": needs 1 <= min <= opt <= max at dim " + std::to_string(i) + " (min " +
                        join_dims(out.min) + ", opt " + join_dims(out.opt) + ", max " + join_dims(out.max) + ")");
      c.kiln.build.input_ranges.push_back(out);
    }
    for (int size : b.gpu_batch_size()) {
      if (c.max_batch_size <= 0) fail(src, "kiln.build: gpu_batch_size needs max_batch_size > 0");
      if (size < 1 || size > c.max_batch_size)
        fail(src, "kiln.build: gpu_batch_size " + std::to_string(size) + " is outside [1, max_batch_size " +
                      std::to_string(c.max_batch_size) + "]");
      c.kiln.build.gpu_batch_sizes.push_back(size);
    }
  }
  return c;
}

bool dynamic(const Dim& d) { return !d.known(); }

std::string model_names(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

}  // namespace

std::string_view data_type_name(DataType dt) {
  static const char* names[] = {"TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
                                "TYPE_UINT64",  "TYPE_INT8", "TYPE_INT16", "TYPE_INT32",  "TYPE_INT64",
                                "TYPE_FP16",    "TYPE_FP32", "TYPE_FP64",  "TYPE_STRING", "TYPE_BF16"};
  return names[static_cast<int>(dt)];
}

std::optional<DType> to_dtype(DataType dt) {
  switch (dt) {
    case DataType::kBool:
      return DType::kBool;
    case DataType::kUInt8:
      return DType::kU8;
    case DataType::kUInt16:
      return DType::kU16;
    case DataType::kUInt32:
      return DType::kU32;
    case DataType::kUInt64:
      return DType::kU64;
    case DataType::kInt8:
      return DType::kI8;
    case DataType::kInt16:
      return DType::kI16;
    case DataType::kInt32:
      return DType::kI32;
    case DataType::kInt64:
      return DType::kI64;
    case DataType::kFP16:
      return DType::kF16;
    case DataType::kFP32:
      return DType::kF32;
    case DataType::kFP64:
      return DType::kF64;
    case DataType::kBF16:
      return DType::kBF16;
    default:
      return std::nullopt;
  }
}

DataType from_dtype(DType dt) {
  for (int i = 0; i <= static_cast<int>(DataType::kBF16); ++i) {
    const auto t = static_cast<DataType>(i);
    if (to_dtype(t) == dt) return t;
  }
  return DataType::kInvalid;
}

int ModelConfig::instance_count() const {
  int n = 0;
  for (const auto& g : instance_groups) n += g.count;
  return n;
}

namespace {
pb::ModelQueuePolicy queue_policy_proto(const QueuePolicy& q) {
  pb::ModelQueuePolicy out;
  out.set_timeout_action(q.timeout_action == TimeoutAction::kDelay ? pb::ModelQueuePolicy::DELAY
                                                                   : pb::ModelQueuePolicy::REJECT);
  out.set_default_timeout_microseconds(q.default_timeout_microseconds);
  out.set_allow_timeout_override(q.allow_timeout_override);
  out.set_max_queue_size(q.max_queue_size);
  return out;
}
}  // namespace

std::string serialize_model_config(const ModelConfig& c) {
  ConfigProto p;
  p.set_name(c.name);
  p.set_platform(c.platform);
  p.set_backend(c.backend);
  p.set_max_batch_size(c.max_batch_size);
  switch (c.version_policy.kind) {
    case VersionPolicy::Kind::kAll: p.mutable_version_policy()->mutable_all(); break;
    case VersionPolicy::Kind::kSpecific:
      for (int64_t v : c.version_policy.versions) p.mutable_version_policy()->mutable_specific()->add_versions(v);
      break;
    case VersionPolicy::Kind::kLatest:
      p.mutable_version_policy()->mutable_latest()->set_num_versions(c.version_policy.num_versions);
      break;
  }
  for (const TensorConfig& t : c.inputs) {
    auto* in = p.add_input();
    in->set_name(t.name);
    in->set_data_type(static_cast<pb::DataType>(t.data_type));
    for (int64_t d : t.dims) in->add_dims(d);
    in->set_optional(t.optional);
  }
  for (const TensorConfig& t : c.outputs) {
    auto* out = p.add_output();
    out->set_name(t.name);
    out->set_data_type(static_cast<pb::DataType>(t.data_type));
    for (int64_t d : t.dims) out->add_dims(d);
  }
  for (const InstanceGroup& g : c.instance_groups) {
    auto* out = p.add_instance_group();
    out->set_name(g.name);
    out->set_count(g.count);
    out->set_kind(g.kind == InstanceKind::kGpu   ? pb::ModelInstanceGroup::KIND_GPU
                  : g.kind == InstanceKind::kCpu ? pb::ModelInstanceGroup::KIND_CPU
                                                 : pb::ModelInstanceGroup::KIND_AUTO);
    for (int d : g.gpus) out->add_gpus(d);
  }
  if (c.dynamic_batching) {
    const DynamicBatching& d = *c.dynamic_batching;
    auto* b = p.mutable_dynamic_batching();
    for (int s : d.preferred_batch_size) b->add_preferred_batch_size(s);
    b->set_max_queue_delay_microseconds(d.max_queue_delay_microseconds);
    b->set_preserve_ordering(d.preserve_ordering);
    b->set_priority_levels(d.priority_levels);
    b->set_default_priority_level(d.default_priority_level);
    *b->mutable_default_queue_policy() = queue_policy_proto(d.default_queue_policy);
    for (const auto& [level, q] : d.priority_queue_policy) (*b->mutable_priority_queue_policy())[level] = queue_policy_proto(q);
  }
  for (const auto& [key, value] : c.parameters) (*p.mutable_parameters())[key].set_string_value(value);
  auto* k = p.mutable_kiln();
  k->set_memory_budget_bytes(c.kiln.memory_budget_bytes);
  k->set_threads_per_instance(c.kiln.threads_per_instance);
  k->set_spread_over_idle_instances(c.kiln.spread_over_idle_instances);
  k->set_split_batches(c.kiln.split_batches);
  k->mutable_build()->set_precision(c.kiln.build.precision);
  k->mutable_build()->set_opt_level(c.kiln.build.opt_level);
  for (int64_t b : c.kiln.build.gpu_batch_sizes) k->mutable_build()->add_gpu_batch_size(static_cast<int32_t>(b));
  return p.SerializeAsString();
}

ModelConfig parse_model_config(const std::string& text, const std::string& source, const std::string& model_dir_name) {
  ConfigProto proto;
  FirstError errors;
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &proto) || errors.any())
    throw Error(ErrorCode::kInvalidArgument, errors.describe(source, text) + " (see docs/serving.md#config-reference)");
  return validate(proto, source, model_dir_name);
}

ModelConfig load_model_config(const std::filesystem::path& path, const std::string& model_dir_name) {
  std::ifstream in(path, std::ios::binary);
  if (!in || std::filesystem::is_directory(path)) throw Error(ErrorCode::kIo, "cannot read " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path.string(), model_dir_name);
}

void check_against_model(ModelConfig& config, const Model& model, const EngineInfo* info) {
  const std::string& src = config.source;
  const bool batching = config.max_batch_size > 0;
  const std::string mbs = std::to_string(config.max_batch_size);

  // Output types come from inference when the model does not declare them (an ONNX file may not).
  const Model* typed = &model;
  Model inferred;
  for (const auto& o : model.graph.outputs) {
    auto it = model.graph.types.find(o);
    if (it != model.graph.types.end() && it->second.dtype != DType::kUndefined && it->second.has_rank()) continue;
    inferred = model;
    require_supported(inferred);
    infer_types(inferred);
    typed = &inferred;
    break;
  }

  auto type_of = [&](const std::string& name, const char* kind) -> const TensorType& {
    auto it = typed->graph.types.find(name);
    if (it == typed->graph.types.end() || !it->second.has_rank() || it->second.dtype == DType::kUndefined)
      fail(src, std::string("the model's ") + kind + " \"" + name + "\" has no known dtype and rank");
    return it->second;
  };
  // The config's view of a model tensor: dims without the batch dim, -1 where the model's dim is dynamic.
  auto config_view = [&](const std::string& name, const char* kind) {
    const TensorType& t = type_of(name, kind);
    const Shape& s = *t.shape;
    if (batching) {
      if (s.empty())
        fail(src, std::string(kind) + " \"" + name +
                      "\" is a scalar in the model, so it has no batch dim for max_batch_size " + mbs +
                      " (set max_batch_size: 0)");
      if (s[0].known() && s[0].value != config.max_batch_size)
        fail(src, std::string(kind) + " \"" + name + "\" has a fixed first dim of " + std::to_string(s[0].value) +
                      " in the model, so it cannot take batches up to max_batch_size " + mbs +
                      " (export the model with a dynamic batch dim, or set max_batch_size: 0)");
    }
    TensorConfig tc;
    tc.name = name;
    tc.data_type = from_dtype(t.dtype);
    if (tc.data_type == DataType::kInvalid)
      fail(src, std::string(kind) + " \"" + name + "\" has dtype " + std::string(dtype_name(t.dtype)) +
                    ", which a model config cannot name");
    for (size_t i = batching ? 1 : 0; i < s.size(); ++i) tc.dims.push_back(dynamic(s[i]) ? -1 : s[i].value);
    return tc;
  };
  // A config tensor against the model's: dtype, rank, and every dim the model fixes.
  auto compare = [&](const TensorConfig& want, const TensorConfig& have, const char* kind) {
    const std::string what = std::string(kind) + " \"" + want.name + "\"";
    if (want.data_type != have.data_type)
      fail(src, what + ": data_type " + std::string(data_type_name(want.data_type)) + " but the model has " +
                    std::string(data_type_name(have.data_type)));
    const std::string shape_note = batching ? " (dims exclude the batch dim since max_batch_size > 0)" : "";
    if (want.dims.size() != have.dims.size())
      fail(src, what + ": dims " + join_dims(want.dims) + " but the model has " + join_dims(have.dims) + shape_note);
    for (size_t i = 0; i < want.dims.size(); ++i)
      if (have.dims[i] != -1 && want.dims[i] != have.dims[i])
        fail(src, what + ": dims " + join_dims(want.dims) + " but the model has " + join_dims(have.dims) + shape_note);
  };

  std::vector<TensorConfig> model_inputs, model_outputs;
  for (const auto& n : model.graph.inputs) model_inputs.push_back(config_view(n, "input"));
  for (const auto& n : model.graph.outputs) model_outputs.push_back(config_view(n, "output"));

  if (config.inputs.empty()) {
    config.inputs = model_inputs;
  } else {
    for (const auto& in : config.inputs) {
      auto it =
          std::find_if(model_inputs.begin(), model_inputs.end(), [&](const auto& m) { return m.name == in.name; });
      if (it == model_inputs.end())
        fail(src, "input \"" + in.name + "\" is not an input of the model (it has: " + model_names(model.graph.inputs) +
                      ")");
      if (in.optional) fail(src, "input \"" + in.name + "\" is optional in the config but the model needs it");
      compare(in, *it, "input");
    }
    for (const auto& m : model_inputs)
      if (std::none_of(config.inputs.begin(), config.inputs.end(), [&](const auto& c) { return c.name == m.name; }))
        fail(src, "the model's input \"" + m.name + "\" is missing from the config (list every input, or none)");
  }
  if (config.outputs.empty()) {
    config.outputs = model_outputs;
  } else {
    // A subset is fine (Triton's rule): only the listed outputs are returned.
    for (const auto& out : config.outputs) {
      auto it =
          std::find_if(model_outputs.begin(), model_outputs.end(), [&](const auto& m) { return m.name == out.name; });
      if (it == model_outputs.end())
        fail(src, "output \"" + out.name +
                      "\" is not an output of the model (it has: " + model_names(model.graph.outputs) + ")");
      compare(out, *it, "output");
    }
  }

  // An engine's profiles bound the batch: every batch from 1 to max_batch_size must fit one.
  if (batching && info && !info->profiles.empty()) {
    for (const auto& name : model.graph.inputs) {
      if (!dynamic((*type_of(name, "input").shape)[0])) continue;
      int64_t lo = INT64_MAX, hi = 0;
      for (const auto& p : info->profiles) {
        auto it = p.inputs.find(name);
        if (it == p.inputs.end() || it->second.min.empty()) continue;
        lo = std::min(lo, it->second.min[0]);
        hi = std::max(hi, it->second.max[0]);
      }
      if (hi == 0) continue;
      if (hi < config.max_batch_size && info->target.backend == "cuda")
        fail(src, "max_batch_size " + mbs + " exceeds the GPU engine's batch " + std::to_string(hi) +
                      " (rebuild it with kiln build --device cuda --shapes at batch " + mbs + ", or lower max_batch_size)");
      if (hi < config.max_batch_size)
        fail(src, "max_batch_size " + mbs + " exceeds the engine's profiles: input \"" + name +
                      "\" takes batches up to " + std::to_string(hi) +
                      " (rebuild with a larger --max-shapes, or lower max_batch_size)");
      if (lo > 1 && info->target.backend != "cuda")  // a GPU engine runs smaller batches padded
        fail(src, "the engine's profiles start input \"" + name + "\" at batch " + std::to_string(lo) +
                      ", so a batch of 1 cannot run (rebuild with --min-shapes at batch 1)");
    }
  }

  // The Kiln build ranges and warmup samples refer to the (now complete) inputs.
  for (const auto& r : config.kiln.build.input_ranges) {
    auto it = std::find_if(config.inputs.begin(), config.inputs.end(), [&](const auto& c) { return c.name == r.name; });
    if (it == config.inputs.end()) fail(src, "kiln.build: input_range \"" + r.name + "\" is not an input of the model");
    if (r.min.size() != it->dims.size())
      fail(src, "kiln.build: input_range \"" + r.name + "\" has " + std::to_string(r.min.size()) +
                    " dims but the input has " + join_dims(it->dims));
  }
  for (const auto& w : config.warmups) {
    for (const auto& in : config.inputs)
      if (!w.inputs.count(in.name))
        fail(src, "model_warmup \"" + w.name + "\": input \"" + in.name + "\" has no warmup data");
    for (const auto& [input_name, wi] : w.inputs) {
      const std::string& name = input_name;  // clang 14 cannot capture a structured binding
      auto it = std::find_if(config.inputs.begin(), config.inputs.end(), [&](const auto& c) { return c.name == name; });
      if (it == config.inputs.end()) fail(src, "model_warmup \"" + w.name + "\": \"" + name + "\" is not an input");
      TensorConfig sample{name, wi.data_type, wi.dims, false};
      compare(sample, *it, "model_warmup input");
    }
  }
}

}  // namespace kiln::serve
