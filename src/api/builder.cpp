// Builder, BuilderConfig and IOptimizationProfile: the public face of build_engine().
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <unistd.h>

#include "api/api_internal.h"
#include "backends/cpu/timing_cache.h"
#include "plugins/plugins.h"
#include "quant/qdq.h"
#include "runtime/builder.h"

namespace kiln {

// ---- IOptimizationProfile

bool IOptimizationProfile::setDimensions(const std::string& inputName, OptProfileSelector select, const Dims& dims) {
  if (inputName.empty() || dims.nbDims < 0 || dims.nbDims > Dims::MAX_DIMS) return false;
  for (int32_t i = 0; i < dims.nbDims; ++i)
    if (dims.d[i] < 0) return false;
  dims_[inputName][select] = dims;
  return true;
}

Dims IOptimizationProfile::getDimensions(const std::string& inputName, OptProfileSelector select) const {
  auto it = dims_.find(inputName);
  if (it == dims_.end()) return Dims::invalid();
  auto jt = it->second.find(select);
  return jt == it->second.end() ? Dims::invalid() : jt->second;
}

namespace {
// Why a profile is not valid, or "".
std::string profile_problem(const IOptimizationProfile& p) {
  for (const auto& name : p.getInputNames()) {
    const Dims mn = p.getDimensions(name, OptProfileSelector::kMIN);
    const Dims op = p.getDimensions(name, OptProfileSelector::kOPT);
    const Dims mx = p.getDimensions(name, OptProfileSelector::kMAX);
    if (mn.nbDims < 0 || op.nbDims < 0 || mx.nbDims < 0)
      return "input '" + name + "' needs kMIN, kOPT and kMAX dimensions";
    if (mn.nbDims != op.nbDims || op.nbDims != mx.nbDims)
      return "input '" + name + "' has min/opt/max of different ranks";
    for (int32_t i = 0; i < mn.nbDims; ++i)
      if (mn.d[i] > op.d[i] || op.d[i] > mx.d[i])
        return "input '" + name + "' needs min <= opt <= max in every dimension, got min " + mn.toString() + ", opt " +
               op.toString() + ", max " + mx.toString();
  }
  return {};
}
}  // namespace

bool IOptimizationProfile::isValid() const { return profile_problem(*this).empty(); }

std::vector<std::string> IOptimizationProfile::getInputNames() const {
  std::vector<std::string> out;
  for (const auto& [name, d] : dims_) out.push_back(name);
  return out;
}

// ---- BuilderConfig

BuilderConfig::BuilderConfig() : impl_(std::make_unique<Impl>()) {}
BuilderConfig::~BuilderConfig() = default;

void BuilderConfig::setFlag(BuilderFlag flag) { impl_->flags.insert(flag); }
void BuilderConfig::clearFlag(BuilderFlag flag) { impl_->flags.erase(flag); }
bool BuilderConfig::getFlag(BuilderFlag flag) const { return impl_->flags.count(flag) != 0; }
void BuilderConfig::setMemoryPoolLimit(MemoryPoolType pool, size_t bytes) {
  if (pool == MemoryPoolType::kWORKSPACE) impl_->workspace = bytes;
}
size_t BuilderConfig::getMemoryPoolLimit(MemoryPoolType pool) const {
  return pool == MemoryPoolType::kWORKSPACE ? impl_->workspace : 0;
}

int32_t BuilderConfig::addOptimizationProfile(const IOptimizationProfile* profile) {
  if (!profile) return api::error(impl_->logger, "addOptimizationProfile: the profile is nullptr"), -1;
  const std::string why = profile_problem(*profile);
  if (!why.empty()) return api::error(impl_->logger, "addOptimizationProfile: " + why), -1;
  impl_->profiles.push_back(*profile);
  return static_cast<int32_t>(impl_->profiles.size() - 1);
}
int32_t BuilderConfig::getNbOptimizationProfiles() const { return static_cast<int32_t>(impl_->profiles.size()); }
void BuilderConfig::setBuilderOptimizationLevel(int32_t level) { impl_->opt_level = level; }
int32_t BuilderConfig::getBuilderOptimizationLevel() const { return impl_->opt_level; }
void BuilderConfig::setTimingCache(const std::string& path) { impl_->timing_cache = path; }
std::string BuilderConfig::getTimingCache() const { return impl_->timing_cache; }
void BuilderConfig::setNbThreads(int32_t threads) { impl_->threads = threads; }
int32_t BuilderConfig::getNbThreads() const { return impl_->threads; }
void BuilderConfig::setInt8Calibrator(IInt8Calibrator* calibrator) { impl_->calibrator = calibrator; }
IInt8Calibrator* BuilderConfig::getInt8Calibrator() const { return impl_->calibrator; }
void BuilderConfig::setLayerPrecision(const std::string& layerName, DataType type) {
  impl_->layer_precision[layerName] = type;
}
void BuilderConfig::setAccuracyBudget(double fraction) { impl_->accuracy_budget = fraction; }
double BuilderConfig::getAccuracyBudget() const { return impl_->accuracy_budget; }

// ---- Builder

struct Builder::Impl {
  ILogger* logger = nullptr;
  std::vector<std::unique_ptr<IOptimizationProfile>> profiles;

  void info(const std::string& m) const { api::log(logger, ILogger::Severity::kINFO, m); }
  void verbose(const std::string& m) const { api::log(logger, ILogger::Severity::kVERBOSE, m); }
  void warning(const std::string& m) const { api::log(logger, ILogger::Severity::kWARNING, m); }
  std::vector<uint8_t> build(const NetworkDefinition::Impl& net, const BuilderConfig::Impl& cfg) const;
};

Builder::Builder(ILogger& logger) : impl_(std::make_unique<Impl>()) { impl_->logger = &logger; }
Builder::~Builder() = default;

std::unique_ptr<NetworkDefinition> Builder::createNetworkV2(uint32_t /*flags*/) {
  return std::unique_ptr<NetworkDefinition>(new NetworkDefinition(*impl_->logger));
}

std::unique_ptr<BuilderConfig> Builder::createBuilderConfig() {
  auto c = std::unique_ptr<BuilderConfig>(new BuilderConfig());
  ApiAccess::impl(*c).logger = impl_->logger;
  return c;
}

IOptimizationProfile* Builder::createOptimizationProfile() {
  impl_->profiles.push_back(std::make_unique<IOptimizationProfile>());
  return impl_->profiles.back().get();
}

std::vector<uint8_t> Builder::buildSerializedNetwork(NetworkDefinition& network, BuilderConfig& config) {
  try {
    return impl_->build(ApiAccess::impl(network), ApiAccess::impl(config));
  } catch (const std::exception& e) {
    api::error(impl_->logger, std::string("build failed: ") + e.what());
    return {};
  }
}

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::string fmt_ms(double ms) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f ms", ms);
  return b;
}

// The opsets a hand-built network did not set: a plugin domain at its highest plugin version.
void complete_opsets(Model& m) {
  for (const Node& n : m.graph.nodes) {
    if (m.opsets.count(n.domain)) continue;
    int64_t version = 1;
    for (const auto* p : plugins::all_plugins())
      if (p->domain == n.domain) version = std::max<int64_t>(version, p->version);
    m.opsets[n.domain] = version;
  }
}

// ---- Reduced precision

// setLayerPrecision's types as the builder's layer_precision values; "" for one without a meaning.
std::string precision_name(DataType t) {
  switch (t) {
    case DataType::kFLOAT: return "fp32";
    case DataType::kBF16: return "bf16";
    case DataType::kHALF: return "fp16";
    case DataType::kINT8: return "int8";
    default: return "";
  }
}

// The builder's calibration data over a user's IInt8Calibrator. getBatch() fills host buffers
// allocated here (one per network input, [batch, opt dims...]); each batch is copied out as
// tensors. IInt8Calibrator cannot rewind, so the first `keep_samples` samples are kept in memory
// and reset() replays them (the accuracy guard reads its validation batches after calibration).
class CalibratorAdapter final : public quant::Calibrator {
 public:
  struct Input {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;  // dim 0: the batch
  };

  CalibratorAdapter(IInt8Calibrator& user, const std::vector<Input>& inputs, size_t keep_samples,
                    std::function<void(const std::string&)> verbose)
      : user_(user), keep_samples_(keep_samples), verbose_(std::move(verbose)) {
    for (const auto& in : inputs) {
      names_.push_back(in.name);
      buffers_.emplace_back(in.dtype, in.shape);
    }
    for (const auto& n : names_) name_ptrs_.push_back(n.c_str());
    for (auto& b : buffers_) binding_ptrs_.push_back(b.mutable_raw());
  }

  bool next_batch(quant::TensorMap& batch) override {
    if (replaying_) {
      if (replay_pos_ >= kept_.size()) return false;
      batch = kept_[replay_pos_++];
      delivered_ += samples_of(batch);
      return true;
    }
    if (exhausted_) return false;
    // The user's buffers are reused: zero them so stale data of a short final batch is not reread.
    for (auto& b : buffers_) std::memset(b.mutable_raw(), 0, b.nbytes());
    if (!user_.getBatch(binding_ptrs_.data(), name_ptrs_.data(), static_cast<int32_t>(binding_ptrs_.size()))) {
      exhausted_ = true;
      if (produced_ == 0)
        throw Error(ErrorCode::kInvalidArgument,
                    "IInt8Calibrator::getBatch returned false on its first call: INT8 calibration needs at least "
                    "one batch");
      verbose_("IInt8Calibrator: end of data after " + std::to_string(produced_) + " batches");
      return false;
    }
    ++produced_;
    batch.clear();
    for (size_t i = 0; i < names_.size(); ++i) batch[names_[i]] = buffers_[i].clone();
    const size_t n = samples_of(batch);
    delivered_ += n;
    if (kept_samples_ < keep_samples_) {
      kept_.push_back(batch);
      kept_samples_ += n;
    }
    return true;
  }

  // Rewinds to the kept batches once the user's calibrator has produced some; before that the
  // next batch still comes from getBatch().
  void reset() override {
    delivered_ = 0;
    replay_pos_ = 0;
    if (produced_ > 0) replaying_ = true;
  }
  size_t samples_read() const override { return delivered_; }
  size_t batches_produced() const { return produced_; }

 private:
  static size_t samples_of(const quant::TensorMap& batch) {
    return batch.empty() || batch.begin()->second.rank() == 0 ? 0
                                                               : static_cast<size_t>(batch.begin()->second.dim(0));
  }

  IInt8Calibrator& user_;
  size_t keep_samples_;
  std::function<void(const std::string&)> verbose_;
  std::vector<std::string> names_;
  std::vector<Tensor> buffers_;
  std::vector<const char*> name_ptrs_;
  std::vector<void*> binding_ptrs_;
  std::vector<quant::TensorMap> kept_;
  size_t kept_samples_ = 0, produced_ = 0, delivered_ = 0, replay_pos_ = 0;
  bool replaying_ = false, exhausted_ = false;
};

// A file under the temp directory that does not exist yet, removed when this goes out of scope.
struct TempPath {
  std::filesystem::path path;
  TempPath() {
    static std::atomic<uint64_t> counter{0};
    const auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
    path = std::filesystem::temp_directory_path() /
           ("kiln-calib-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
            std::to_string(static_cast<uint64_t>(ticks)) + ".cache");
  }
  ~TempPath() {
    std::error_code ec;
    std::filesystem::remove(path, ec);
  }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
};

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size())
    s.replace(pos, from.size(), to);
  return s;
}

}  // namespace

std::vector<uint8_t> Builder::Impl::build(const NetworkDefinition::Impl& net, const BuilderConfig::Impl& cfg) const {
  auto fail = [&](const std::string& msg) {
    api::error(logger, msg);
    return std::vector<uint8_t>{};
  };
  if (cfg.opt_level < 0 || cfg.opt_level > 5)
    return fail("builder optimization level " + std::to_string(cfg.opt_level) + " is out of range (0 to 5)");
  if (cfg.threads < 0) return fail("setNbThreads(" + std::to_string(cfg.threads) + "): threads must be >= 0");

  Model model = net.model;
  complete_opsets(model);
  const Graph& g = model.graph;
  if (g.outputs.empty()) return fail("the network has no outputs: call markOutput()");

  BuildConfig bc;
  bc.opt_level = cfg.opt_level;
  bc.threads = cfg.threads;
  bc.workspace_bytes = cfg.workspace;
  for (const auto& p : cfg.profiles) {
    OptimizationProfile op;
    for (const auto& name : p.getInputNames())
      op.inputs[name] = ProfileDims{plugins::from_dims(p.getDimensions(name, OptProfileSelector::kMIN)),
                                    plugins::from_dims(p.getDimensions(name, OptProfileSelector::kOPT)),
                                    plugins::from_dims(p.getDimensions(name, OptProfileSelector::kMAX))};
    bc.profiles.push_back(std::move(op));
  }
  // Every dynamic input needs a range in every profile (checked here to name the API calls).
  for (const auto& in : g.inputs) {
    const TensorType* t = g.type_of(in);
    if (!t || !t->shape || shape_is_static(*t->shape)) continue;
    const std::string shape = t->shape ? shape_to_string(*t->shape) : "unknown rank";
    if (bc.profiles.empty())
      return fail("input '" + in + "' has dynamic dimensions " + shape + ": give its range in an optimization profile "
                  "(IOptimizationProfile::setDimensions for kMIN, kOPT and kMAX, then "
                  "BuilderConfig::addOptimizationProfile)");
    for (size_t p = 0; p < bc.profiles.size(); ++p)
      if (!bc.profiles[p].inputs.count(in))
        return fail("input '" + in + "' has dynamic dimensions " + shape + " but optimization profile " +
                    std::to_string(p) + " gives no range for it");
  }

  // Reduced precision. Mistakes are caught here to name the API calls (the builder's own messages
  // speak of `kiln build` flags).
  const bool int8 = cfg.flags.count(BuilderFlag::kINT8) != 0;
  const bool obey = cfg.flags.count(BuilderFlag::kOBEY_PRECISION_CONSTRAINTS) != 0;
  const bool qdq = quant::has_qdq_nodes(g);
  PrecisionConfig& pc = bc.precision;
  pc.int8 = int8;
  pc.bf16 = cfg.flags.count(BuilderFlag::kBF16) != 0;
  pc.fp16 = cfg.flags.count(BuilderFlag::kFP16) != 0;
  pc.constraints = obey ? "obey" : "prefer";
  if (obey && cfg.flags.count(BuilderFlag::kPREFER_PRECISION_CONSTRAINTS))
    warning("BuilderFlag::kOBEY_PRECISION_CONSTRAINTS and kPREFER_PRECISION_CONSTRAINTS are both set: obeying");
  if (!cfg.layer_precision.empty()) {
    std::set<std::string> layers;
    for (const Node& n : g.nodes) layers.insert(n.name);
    for (const auto& [layer, type] : cfg.layer_precision) {
      const std::string call = "setLayerPrecision('" + layer + "', " + getDataTypeName(type) + ")";
      if (!layers.count(layer)) return fail(call + ": the network has no layer (node) named '" + layer + "'");
      const std::string prec = precision_name(type);
      if (prec.empty()) return fail(call + ": a layer's precision must be kFLOAT, kBF16, kHALF or kINT8");
      if (obey && type == DataType::kHALF)
        return fail(call + " with BuilderFlag::kOBEY_PRECISION_CONSTRAINTS: the CPU backend has no FP16 kernels "
                    "(use kBF16, or kPREFER_PRECISION_CONSTRAINTS to let the layer run in FP32)");
      if (obey && type == DataType::kINT8 && !int8)
        return fail(call + " with BuilderFlag::kOBEY_PRECISION_CONSTRAINTS needs BuilderFlag::kINT8");
      pc.layer_precision[layer] = prec;
    }
  }
  const double budget = cfg.accuracy_budget;
  if (std::isnan(budget) || budget >= 1)
    return fail("setAccuracyBudget(" + std::to_string(budget) + "): the budget is a fraction in [0, 1) (0.01 for 1%), "
                "or < 0 to turn the accuracy guard off");
  IInt8Calibrator* user_calib = cfg.calibrator;
  if (!int8) {
    if (user_calib) warning("setInt8Calibrator: the calibrator is not used without BuilderFlag::kINT8");
    if (budget >= 0) warning("setAccuracyBudget: the accuracy guard needs BuilderFlag::kINT8; ignored");
    user_calib = nullptr;
  } else if (qdq) {
    // Explicit quantization: the network's scales are used as written.
    if (user_calib) info("the network has QuantizeLinear/DequantizeLinear nodes: their scales are used, the "
                         "INT8 calibrator is not");
    if (budget >= 0) warning("setAccuracyBudget: ignored for a network with explicit Q/DQ nodes");
    user_calib = nullptr;
  } else if (!user_calib) {
    return fail("BuilderFlag::kINT8 needs calibration data: call BuilderConfig::setInt8Calibrator() with an "
                "IInt8Calibrator (IInt8EntropyCalibrator2, IInt8MinMaxCalibrator), or build a network with "
                "explicit QuantizeLinear/DequantizeLinear nodes");
  }

  std::unique_ptr<CalibratorAdapter> adapter;
  std::optional<TempPath> calib_cache;
  bool cache_given = false;
  if (user_calib) {
    const int32_t batch = user_calib->getBatchSize();
    if (batch <= 0)
      return fail("IInt8Calibrator::getBatchSize() returned " + std::to_string(batch) + ": it must be > 0");
    switch (user_calib->getAlgorithm()) {
      case CalibrationAlgoType::kENTROPY_CALIBRATION_2: pc.calib_method.method = quant::CalibMethod::kEntropy; break;
      case CalibrationAlgoType::kMINMAX_CALIBRATION: pc.calib_method.method = quant::CalibMethod::kMinMax; break;
      case CalibrationAlgoType::kPERCENTILE_CALIBRATION: {
        const double pct = user_calib->getPercentile();
        if (!(pct > 0 && pct <= 100))
          return fail("IInt8Calibrator::getPercentile() returned " + std::to_string(pct) + ": it must be in (0, 100]");
        pc.calib_method = {quant::CalibMethod::kPercentile, pct};
        break;
      }
      default:
        return fail("IInt8Calibrator::getAlgorithm() returned " +
                    std::to_string(static_cast<int32_t>(user_calib->getAlgorithm())) +
                    ": Kiln calibrates with kENTROPY_CALIBRATION_2, kMINMAX_CALIBRATION or kPERCENTILE_CALIBRATION");
    }
    // One binding per input: [batch, profile 0's opt dims (or the static dims) without dim 0].
    std::vector<CalibratorAdapter::Input> inputs;
    for (const auto& in : g.inputs) {
      const TensorType* t = g.type_of(in);
      std::vector<int64_t> dims;
      if (!bc.profiles.empty() && bc.profiles.front().inputs.count(in)) {
        dims = bc.profiles.front().inputs.at(in).opt;
      } else if (t && t->shape && shape_is_static(*t->shape)) {
        for (const Dim& d : *t->shape) dims.push_back(d.value);
      }
      if (!t || dims.empty())
        return fail("INT8 calibration: input '" + in + "' has no batch dimension (dim 0) to fill getBatchSize() "
                    "samples into");
      if (t->shape && !t->shape->empty() && (*t->shape)[0].known() && (*t->shape)[0].value != batch)
        return fail("INT8 calibration: IInt8Calibrator::getBatchSize() is " + std::to_string(batch) + " but input '" +
                    in + "' has a static batch dimension of " + std::to_string((*t->shape)[0].value) +
                    " (make it dynamic, -1, or match the batch size)");
      dims[0] = batch;
      inputs.push_back({in, t->dtype, dims});
    }
    const size_t keep = budget >= 0 ? pc.validation_samples : 0;
    adapter = std::make_unique<CalibratorAdapter>(*user_calib, inputs, keep,
                                                  [this](const std::string& m) { verbose(m); });
    pc.calibrator = adapter.get();
    pc.calib_progress = [this](size_t samples) { verbose("calibration: " + std::to_string(samples) + " samples"); };
    pc.accuracy_budget = budget;
    pc.guard_progress = [this](const std::string& m) { verbose("accuracy guard: " + m); };
    // The builder reads a cache file when it exists and writes one after calibrating: a temporary
    // file stands between it and readCalibrationCache / writeCalibrationCache.
    calib_cache.emplace();
    pc.calib_cache = calib_cache->path.string();
    size_t length = 0;
    const void* bytes = user_calib->readCalibrationCache(length);
    if (bytes && length > 0) {
      std::ofstream f(calib_cache->path, std::ios::binary);
      f.write(static_cast<const char*>(bytes), static_cast<std::streamsize>(length));
      if (!f.flush()) return fail("could not write the calibration cache to " + calib_cache->path.string());
      cache_given = true;
      info("INT8 calibration: using the cache from IInt8Calibrator::readCalibrationCache (" + std::to_string(length) +
           " bytes)");
    }
  }

  cpu::TimingCache cache;
  const bool use_cache = !cfg.timing_cache.empty() && !cfg.flags.count(BuilderFlag::kDISABLE_TIMING_CACHE);
  if (use_cache) {
    const std::string why = cache.load(cfg.timing_cache);
    if (!why.empty()) warning("timing cache " + cfg.timing_cache + " ignored: " + why);
    else info("timing cache " + cfg.timing_cache + ": " + std::to_string(cache.size()) + " entries");
    bc.timing_cache = &cache;
  }
  std::vector<std::string> tactic_log;
  bc.log = &tactic_log;

  info("building engine" + (g.name.empty() ? std::string() : " '" + g.name + "'") + ": " +
       std::to_string(g.nodes.size()) + " nodes, " + std::to_string(g.inputs.size()) + " inputs, " +
       std::to_string(bc.profiles.size()) + " optimization profiles, optimization level " +
       std::to_string(bc.opt_level));
  const auto t0 = std::chrono::steady_clock::now();
  // build_engine applies the plugin rules itself (passes that would fuse a replaced op away are
  // turned off, with a note in pass_log; plugin nodes keep their plugin's tactic).
  BuildResult r;
  try {
    r = build_engine(std::move(model), bc);
  } catch (const Error& e) {
    // Name the API, not the temporary file or the command-line flags, in precision errors.
    std::string msg = e.what();
    if (calib_cache) {
      const std::string path = calib_cache->path.string();
      const std::string api = "the cache from IInt8Calibrator::readCalibrationCache";
      msg = replace_all(msg, "calibration cache '" + path + "'", api);
      msg = replace_all(msg, "calibration cache " + path, api);
      msg = replace_all(msg, path, api);
      msg = replace_all(msg, "delete it to recalibrate", "return no cache from readCalibrationCache to recalibrate");
      msg = replace_all(msg, "delete it or pass another --calib-cache",
                        "return no cache from readCalibrationCache to recalibrate");
    }
    msg = replace_all(msg, "--precision-constraints obey", "BuilderFlag::kOBEY_PRECISION_CONSTRAINTS");
    msg = replace_all(msg, "--layer-precision ", "setLayerPrecision ");
    throw Error(e.code(), msg);
  }
  for (const auto& line : r.pass_log) info("pass " + line);
  for (const auto& line : r.precision_log) {
    // FP16 asked for on a backend without FP16 kernels deserves attention.
    if (line.rfind("fp16:", 0) == 0) warning("BuilderFlag::kFP16: " + line.substr(6));
    else if (calib_cache) info("precision: " + replace_all(line, calib_cache->path.string(), "(calibration cache)"));
    else info("precision: " + line);
  }
  if (calib_cache && !cache_given && std::filesystem::exists(calib_cache->path)) {
    std::ifstream f(calib_cache->path, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    info("INT8 calibration: " + std::to_string(adapter->batches_produced()) + " batches; cache passed to "
         "IInt8Calibrator::writeCalibrationCache (" + std::to_string(text.size()) + " bytes)");
    user_calib->writeCalibrationCache(text.data(), text.size());
  }
  info("graph optimized: " + std::to_string(r.nodes_before) + " -> " + std::to_string(r.model.graph.nodes.size()) +
       " nodes in " + fmt_ms(r.pass_ms));
  for (const auto& line : tactic_log) verbose(line);
  info("kernels selected: " + std::to_string(r.info.kernels) + " kernels in " + fmt_ms(r.tactic_ms) + " on " +
       std::to_string(r.info.threads) + " threads; activation memory " + std::to_string(r.info.memory_peak) + " bytes");
  if (use_cache) {
    try {
      cache.save(cfg.timing_cache);
      info("timing cache saved to " + cfg.timing_cache + " (" + std::to_string(cache.size()) + " entries, " +
           std::to_string(cache.hits()) + " hits, " + std::to_string(cache.misses()) + " misses)");
    } catch (const std::exception& e) {
      warning(std::string("timing cache not saved: ") + e.what());
    }
  }
  std::vector<uint8_t> bytes = serialize_engine(r.model, r.info);
  info("engine built in " + fmt_ms(ms_since(t0)) + ": " + std::to_string(bytes.size()) + " bytes");
  return bytes;
}

std::unique_ptr<Builder> createInferBuilder(ILogger& logger) { return std::make_unique<Builder>(logger); }

}  // namespace kiln
