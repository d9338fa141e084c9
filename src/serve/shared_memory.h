// The system shared-memory extension of the KServe v2 protocol (Triton's "system_shared_memory"):
// a client on the same host puts its input tensors in a POSIX shared-memory object (shm_open),
// registers a region of it under a name, and its inference requests name the region, an offset
// and a byte size instead of carrying the bytes. For large tensors (a 224x224 image is 600 KB) this
// takes the copy through the socket and the protocol parser off every request.
//
// Regions are mapped read-only; a region in use by a request stays mapped until the request is
// done, even when it is unregistered meanwhile. Outputs are returned in the response as usual.
// The server reads what the client wrote: a client that rewrites a region before its response
// arrives gets undefined inputs, as with Triton.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::serve {

struct SharedMemoryStatus {
  std::string name;
  std::string key;
  uint64_t offset = 0;
  uint64_t byte_size = 0;
  bool pinned = false;  // registered with the GPUs (copies to them read it directly)
  std::string not_pinned;  // why not, when a pin function was set
};

class SharedMemoryRegistry {
 public:
  static constexpr size_t kMaxRegions = 4096;

  // Called on each region's mapping when it is registered: returns a handle that keeps the mapped
  // range page-locked for the GPUs (gpu::pin_host_range), or null with the reason. The handle is
  // dropped before the mapping is unmapped. Without it, regions are not pinned.
  using PinFn = std::function<std::shared_ptr<void>(const void* data, size_t bytes, std::string* why)>;
  void set_pin(PinFn pin);
  // Tries the pin function again on every region not pinned yet: the server calls it when a model
  // has loaded, so regions registered before any GPU was in use get pinned once one is. Returns
  // how many it pinned.
  int pin_unpinned();

  // Maps bytes [offset, offset + byte_size) of the shared-memory object `key` ("/name", as
  // shm_open takes it) under `name`. Throws ServeError kBadRequest with the reason: a bad name or
  // key, a name already registered, an object that cannot be opened or is smaller than the region,
  // too many regions.
  void register_region(const std::string& name, const std::string& key, uint64_t offset, uint64_t byte_size);
  // Drops a region (its mapping lives on while requests use it). An unknown name is no error, as in
  // Triton.
  void unregister(const std::string& name);
  void unregister_all();
  // Every region, or the one named (ServeError kNotFound when it is not registered).
  std::vector<SharedMemoryStatus> status(const std::string& name = "") const;

  // Bytes [offset, offset + byte_size) of region `name`; `owner` keeps the mapping alive. Throws
  // ServeError kBadRequest naming `what` for an unknown region or a range outside it.
  struct View {
    const void* data = nullptr;
    std::shared_ptr<const void> owner;
  };
  View view(const std::string& name, uint64_t offset, uint64_t byte_size, const std::string& what) const;

 private:
  // The mapped pages and their pin handle, if any: the mapping's last user drops the pin, then
  // unmaps. `pin` is only set under mu_ while the region is registered (so the mapping is alive).
  struct Mapped {
    void* base = nullptr;
    size_t length = 0;
    std::shared_ptr<void> pin;
  };
  struct Region {
    SharedMemoryStatus status;
    std::shared_ptr<const void> mapping;  // the region's first byte; munmap when the last user is done
    std::shared_ptr<Mapped> mapped;
  };
  mutable std::mutex mu_;
  std::map<std::string, Region> regions_;
  PinFn pin_;
};

}  // namespace kiln::serve
