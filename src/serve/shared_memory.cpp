// System shared-memory regions of `kiln serve` (see shared_memory.h).
#include "serve/shared_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "serve/server.h"

namespace kiln::serve {
namespace {

std::string dq(const std::string& s) { return "\"" + s + "\""; }

[[noreturn]] void bad(const std::string& message) { throw ServeError(Status::kBadRequest, message); }

bool valid_name(const std::string& n) {
  if (n.empty() || n.size() > 255) return false;
  for (char c : n)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

}  // namespace

void SharedMemoryRegistry::register_region(const std::string& name, const std::string& key, uint64_t offset,
                                           uint64_t byte_size) {
  if (!valid_name(name)) bad("invalid shared-memory region name " + dq(name) + " (use [A-Za-z0-9_.-], 1-255 characters)");
  // A POSIX shared-memory name: one leading slash, no other.
  if (key.size() < 2 || key.size() > 255 || key[0] != '/' || !valid_name(key.substr(1)))
    bad("invalid shared-memory key " + dq(key) + " (a shm_open name like \"/my_region\")");
  if (byte_size == 0) bad("shared-memory region " + dq(name) + " has byte_size 0");
  if (offset > UINT64_MAX - byte_size) bad("shared-memory region " + dq(name) + ": offset + byte_size overflows");
  {
    std::lock_guard lock(mu_);
    if (regions_.count(name)) bad("shared-memory region " + dq(name) + " is already registered (unregister it first)");
    if (regions_.size() >= kMaxRegions)
      bad("too many shared-memory regions (" + std::to_string(kMaxRegions) + "); unregister some first");
  }
  const int fd = shm_open(key.c_str(), O_RDONLY, 0);
  if (fd < 0) bad("cannot open shared memory " + dq(key) + " for region " + dq(name) + ": " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int e = errno;
    close(fd);
    bad("cannot stat shared memory " + dq(key) + ": " + std::strerror(e));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (offset + byte_size > size) {
    close(fd);
    bad("shared-memory region " + dq(name) + " [" + std::to_string(offset) + ", " + std::to_string(offset + byte_size) +
        ") runs past the end of " + dq(key) + " (" + std::to_string(size) + " bytes)");
  }
  // mmap offsets are page-aligned: map from the page holding `offset`.
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  const size_t length = static_cast<size_t>(offset + byte_size - start);
  void* p = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
  const int e = errno;
  close(fd);  // the mapping keeps the object
  if (p == MAP_FAILED) bad("cannot map shared memory " + dq(key) + ": " + std::strerror(e));
  SharedMemoryStatus status{name, key, offset, byte_size};
  PinFn pin;
  {
    std::lock_guard lock(mu_);
    pin = pin_;
  }
  auto mapped = std::make_shared<Mapped>(Mapped{p, length, nullptr});
  if (pin) {
    mapped->pin = pin(p, length, &status.not_pinned);
    status.pinned = mapped->pin != nullptr;
    if (status.pinned) status.not_pinned.clear();
  }
  // The last user of the region unpins it, then unmaps it.
  std::shared_ptr<const void> mapping(static_cast<const char*>(p) + (offset - start), [mapped](const void*) {
    mapped->pin.reset();
    munmap(mapped->base, mapped->length);
  });
  std::lock_guard lock(mu_);
  if (regions_.count(name)) bad("shared-memory region " + dq(name) + " is already registered (unregister it first)");
  regions_[name] = Region{std::move(status), std::move(mapping), std::move(mapped)};
}

int SharedMemoryRegistry::pin_unpinned() {
  std::lock_guard lock(mu_);
  if (!pin_) return 0;
  int pinned = 0;
  for (auto& [n, r] : regions_) {
    if (r.status.pinned) continue;
    std::string why;
    r.mapped->pin = pin_(r.mapped->base, r.mapped->length, &why);
    r.status.pinned = r.mapped->pin != nullptr;
    r.status.not_pinned = r.status.pinned ? std::string() : why;
    pinned += r.status.pinned;
  }
  return pinned;
}

void SharedMemoryRegistry::set_pin(PinFn pin) {
  std::lock_guard lock(mu_);
  pin_ = std::move(pin);
}

void SharedMemoryRegistry::unregister(const std::string& name) {
  std::lock_guard lock(mu_);
  regions_.erase(name);
}

void SharedMemoryRegistry::unregister_all() {
  std::lock_guard lock(mu_);
  regions_.clear();
}

std::vector<SharedMemoryStatus> SharedMemoryRegistry::status(const std::string& name) const {
  std::lock_guard lock(mu_);
  std::vector<SharedMemoryStatus> out;
  if (!name.empty()) {
    auto it = regions_.find(name);
    if (it == regions_.end())
      throw ServeError(Status::kNotFound, "shared-memory region " + dq(name) + " is not registered");
    out.push_back(it->second.status);
    return out;
  }
  for (const auto& [n, r] : regions_) out.push_back(r.status);
  return out;
}

SharedMemoryRegistry::View SharedMemoryRegistry::view(const std::string& name, uint64_t offset, uint64_t byte_size,
                                                      const std::string& what) const {
  std::lock_guard lock(mu_);
  auto it = regions_.find(name);
  if (it == regions_.end()) bad(what + ": shared-memory region " + dq(name) + " is not registered");
  const uint64_t size = it->second.status.byte_size;
  if (offset > size || byte_size > size - offset)
    bad(what + ": shared-memory range [" + std::to_string(offset) + ", +" + std::to_string(byte_size) +
        ") is outside region " + dq(name) + " (" + std::to_string(size) + " bytes)");
  View v;
  v.owner = it->second.mapping;
  v.data = static_cast<const char*>(v.owner.get()) + offset;
  return v;
}

}  // namespace kiln::serve
