// The record of host ranges registered with the GPUs (see host_memory.h).
#include "backends/gpu/host_memory.h"

#include <cstdint>
#include <map>
#include <mutex>
#include <shared_mutex>

#include "backends/gpu/loader.h"

namespace kiln::gpu {
namespace {

struct Registry {
  std::shared_mutex mu;
  std::map<uintptr_t, uintptr_t> ranges;  // begin -> end
};

Registry& registry() {
  static Registry* r = new Registry;  // outlives every handle, whatever the order of static destruction
  return *r;
}

}  // namespace

std::shared_ptr<void> pin_host_range(const void* p, size_t bytes, std::string* why) {
  const auto fail = [why](const std::string& m) -> std::shared_ptr<void> {
    if (why) *why = m;
    return nullptr;
  };
  if (!p || bytes == 0) return fail("an empty range");
  std::shared_ptr<Device> dev = any_open_device();
  if (!dev) return fail("no GPU is in use in this process");
  std::string reason;
  if (!dev->register_host(p, bytes, &reason)) return fail(reason);
  const auto begin = reinterpret_cast<uintptr_t>(p);
  {
    std::unique_lock lock(registry().mu);
    registry().ranges[begin] = begin + bytes;
  }
  return std::shared_ptr<void>(const_cast<void*>(p), [dev, begin](void* q) {
    {
      std::unique_lock lock(registry().mu);
      registry().ranges.erase(begin);
    }
    dev->unregister_host(q);
  });
}

bool host_range_pinned(const void* p, size_t bytes) {
  const auto begin = reinterpret_cast<uintptr_t>(p);
  std::shared_lock lock(registry().mu);
  auto it = registry().ranges.upper_bound(begin);
  if (it == registry().ranges.begin()) return false;
  --it;
  return begin < it->second && bytes <= it->second - begin;  // begin >= it->first
}

}  // namespace kiln::gpu
