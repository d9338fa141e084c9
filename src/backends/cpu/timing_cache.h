// The timing cache: which tactic won for a node signature on this machine, and how fast it was.
//
// A key describes everything that decides a kernel's speed: the op, its attributes, its input and
// output dtypes, shapes and layouts, which inputs are constants, and the thread count. A build that
// finds every key in the cache times nothing, so it is fast and deterministic. The file is JSON and
// names the machine it was measured on; a cache from another CPU is ignored (with a warning).
// The GPU backend uses the same cache with a GPU target (the GPU, its SM and the CUDA, cuBLASLt and
// cuDNN versions: gpu_target() in src/backends/gpu/gpu_program.h).
#pragma once
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>

namespace kiln::cpu {

class TimingCache {
 public:
  struct Entry {
    std::string tactic;
    double ms = 0;
  };

  // The machine string entries are valid for: CPU model and ISA features.
  static std::string host_target();

  // A cache for `target` (default: this CPU).
  TimingCache() : target_(host_target()) {}
  explicit TimingCache(std::string target) : target_(std::move(target)) {}
  const std::string& target() const { return target_; }

  std::optional<Entry> find(const std::string& key) const;
  void put(const std::string& key, Entry entry);
  size_t size() const;
  size_t hits() const { return hits_; }
  size_t misses() const { return misses_; }

  // Loads a cache file. A missing file is an empty cache. A file for another target is ignored
  // and the reason returned; a malformed file throws kInvalidArgument naming it.
  std::string load(const std::filesystem::path& path);
  void save(const std::filesystem::path& path) const;

 private:
  std::string target_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
  mutable size_t hits_ = 0, misses_ = 0;
};

}  // namespace kiln::cpu
