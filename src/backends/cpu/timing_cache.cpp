// Timing cache persistence (JSON) and lookups.
#include "backends/cpu/timing_cache.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/engine_file.h"
#include "kiln/error.h"

namespace kiln::cpu {

namespace {
constexpr int kCacheFormat = 1;
}

std::string TimingCache::host_target() {
  const TargetFingerprint f = host_fingerprint();
  std::string s = f.cpu_model + " [";
  for (size_t i = 0; i < f.isa_features.size(); ++i) s += (i ? "," : "") + f.isa_features[i];
  return s + "]";
}

std::optional<TimingCache::Entry> TimingCache::find(const std::string& key) const {
  std::lock_guard lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    ++misses_;
    return std::nullopt;
  }
  ++hits_;
  return it->second;
}

void TimingCache::put(const std::string& key, Entry entry) {
  std::lock_guard lock(mu_);
  entries_[key] = std::move(entry);
}

size_t TimingCache::size() const {
  std::lock_guard lock(mu_);
  return entries_.size();
}

std::string TimingCache::load(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return {};  // no cache yet: it is created on save
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
    if (!j.is_object() || j.value("format", 0) != kCacheFormat || !j.contains("entries") || !j["entries"].is_object())
      throw Error(ErrorCode::kInvalidArgument, "not a Kiln timing cache (format " + std::to_string(kCacheFormat) + ")");
    const std::string target = j.value("target", "");
    if (target != target_)
      return "timing cache " + path.string() + " was measured on '" + target + "', this machine is '" + target_ +
             "'; it is ignored and rebuilt";
    std::map<std::string, Entry> entries;
    for (const auto& [key, v] : j["entries"].items()) {
      if (!v.is_object() || !v.contains("tactic") || !v["tactic"].is_string() || !v.contains("ms") ||
          !v["ms"].is_number())
        throw Error(ErrorCode::kInvalidArgument, "entry '" + key + "' needs a string 'tactic' and a number 'ms'");
      entries[key] = Entry{v["tactic"].get<std::string>(), v["ms"].get<double>()};
    }
    std::lock_guard lock(mu_);
    for (auto& [k, e] : entries) entries_[k] = std::move(e);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorCode::kInvalidArgument, "timing cache " + path.string() + " is malformed: " + e.what());
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidArgument) throw;
    throw Error(ErrorCode::kInvalidArgument, "timing cache " + path.string() + ": " + e.what());
  }
  return {};
}

void TimingCache::save(const std::filesystem::path& path) const {
  nlohmann::json j;
  j["format"] = kCacheFormat;
  j["kiln_version"] = KILN_VERSION;
  j["target"] = target_;
  nlohmann::json entries = nlohmann::json::object();
  {
    std::lock_guard lock(mu_);
    for (const auto& [k, e] : entries_) entries[k] = {{"tactic", e.tactic}, {"ms", e.ms}};
  }
  j["entries"] = std::move(entries);
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) throw Error(ErrorCode::kIo, "cannot write timing cache " + tmp);
    out << j.dump(1) << "\n";
    if (!out) throw Error(ErrorCode::kIo, "cannot write timing cache " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error(ErrorCode::kIo, "cannot write timing cache " + path.string() + ": " + ec.message());
}

}  // namespace kiln::cpu
