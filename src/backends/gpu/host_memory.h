// Host memory page-locked in place for the GPUs (cudaHostRegister), and the process-wide record of
// it. Memory the server did not allocate itself, such as a client's shared-memory region, is
// registered once; copies from it to any GPU then go straight from it (the copy engine reads it)
// instead of through a pinned staging buffer. GpuContext asks `host_range_pinned` for every input.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

namespace kiln::gpu {

// Registers [p, p + bytes) with the GPU backend, through a GPU the process already uses (the
// registration is portable, so every GPU copies from it directly; no GPU is opened for it). The
// range stays registered, and is recorded, while the returned handle lives. Returns null with `why`
// set when no GPU is in use or the driver refuses: the memory is then not pinned, and copies from
// it are staged as before.
std::shared_ptr<void> pin_host_range(const void* p, size_t bytes, std::string* why = nullptr);

// Whether [p, p + bytes) lies inside one range registered by pin_host_range.
bool host_range_pinned(const void* p, size_t bytes);

}  // namespace kiln::gpu
