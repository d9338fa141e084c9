// The host-simulated GPU (sim_device.h) as a GPU backend module: a stand-in for libkiln_cuda.so
// that the kiln CLI loads through KILN_CUDA_MODULE, so CLI tests exercise `--device cuda` (build,
// run, bench, serve) in CI without a GPU. KILN_SIM_GPUS sets the number of devices (default 1);
// KILN_SIM_GPU_SM their compute capability as major*10+minor (default 90); KILN_SIM_MODELED_TIME=1
// makes their event timings modeled (deterministic) instead of the host clock.
#include <cstdlib>
#include <string>

#include "sim_device.h"

namespace {
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return end && *end == 0 && n >= 0 && n <= 1000 ? static_cast<int>(n) : fallback;
}
}  // namespace

extern "C" __attribute__((visibility("default"))) int kiln_gpu_api_version() { return kiln::gpu::kApiVersion; }

extern "C" __attribute__((visibility("default"))) int kiln_gpu_device_count(char* why, size_t why_len) {
  const int n = env_int("KILN_SIM_GPUS", 1);
  if (n == 0) kiln::gpu::copy_message("KILN_SIM_GPUS=0: the simulated module has no devices", why, why_len);
  return n;
}

extern "C" __attribute__((visibility("default"))) kiln::gpu::Device* kiln_gpu_open_device(int index, char* error,
                                                                                         size_t error_len) {
  if (index < 0 || index >= env_int("KILN_SIM_GPUS", 1)) {
    kiln::gpu::copy_message("no simulated GPU " + std::to_string(index), error, error_len);
    return nullptr;
  }
  const int sm = env_int("KILN_SIM_GPU_SM", 90);
  auto* d = new kiln_test::SimDevice(index, size_t{8} << 30, sm / 10, sm % 10);
  d->set_modeled_time(env_int("KILN_SIM_MODELED_TIME", 0) != 0);  // deterministic timings (sim_device.h)
  return d;
}
