// Finding and loading the GPU backend module (libkiln_cuda.so) at run time, and opening its devices.
// The module is looked up, in order, at $KILN_CUDA_MODULE (a file), beside the running executable,
// in ../lib and in the build tree's src/backends/cuda relative to it, then by the dynamic loader's
// own search (LD_LIBRARY_PATH, the system). A CPU-only install never loads it.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backends/gpu/device_api.h"

namespace kiln::gpu {

// The number of usable GPUs. 0 with `why` set when the module is missing, fails to load, or sees no
// GPU (never throws).
int device_count(std::string* why = nullptr);

// Device `index` (shared: one per process and index). Throws kiln::Error kUnsupported when the
// module or the GPU is missing ("no CUDA GPU: ..."), kInvalidArgument for an index that does not
// exist, naming what was found.
std::shared_ptr<Device> open_device(int index);

// A device this process already uses (opened by open_device, or the first override), or null:
// for process-wide work, such as registering host memory, that must not open a GPU by itself.
std::shared_ptr<Device> any_open_device();

// Parses "cuda" or "cuda:N" (N >= 0); returns -1 for "cpu" and throws kInvalidArgument otherwise.
int parse_device(const std::string& spec);

// Where the module was loaded from ("" when not loaded).
std::string module_path();

// Replaces the module's devices with these (tests: a host-simulated device stands in for GPUs, so
// the GPU compiler and runtime run in CI); an empty list restores the module.
void set_device_override(std::vector<std::shared_ptr<Device>> devices);

}  // namespace kiln::gpu
