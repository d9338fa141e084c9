// Builder, BuilderConfig and IOptimizationProfile: the public face of build_engine().
#include <chrono>
#include <cstdio>
#include <set>

#include "api/api_internal.h"
#include "backends/cpu/timing_cache.h"
#include "plugins/plugins.h"
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

}  // namespace

std::vector<uint8_t> Builder::Impl::build(const NetworkDefinition::Impl& net, const BuilderConfig::Impl& cfg) const {
  auto fail = [&](const std::string& msg) {
    api::error(logger, msg);
    return std::vector<uint8_t>{};
  };
  for (auto [flag, name] : {std::pair{BuilderFlag::kFP16, "kFP16"}, {BuilderFlag::kBF16, "kBF16"}, {BuilderFlag::kINT8, "kINT8"}})
    if (cfg.flags.count(flag))
      return fail(std::string("BuilderFlag::") + name + " is not supported yet: Kiln builds FP32 engines only "
                  "(reduced precisions come with the precision work); clear the flag");
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
  BuildResult r = build_engine(std::move(model), bc);
  for (const auto& line : r.pass_log) info("pass " + line);
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
