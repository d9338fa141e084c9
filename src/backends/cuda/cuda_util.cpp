// CUDA runtime helpers of the GPU backend (see cuda_util.h).
#include "backends/cuda/cuda_util.h"

#include <algorithm>
#include <vector>

#include <cublasLt.h>

namespace kiln::cuda {

namespace {
// Errors after which the CUDA context is corrupted and every later call fails.
bool is_sticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
      return true;
    default:
      return false;
  }
}
}  // namespace

void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  // Clears a non-sticky error, which the runtime otherwise reports again at the next launch check.
  cudaGetLastError();
  throw CudaError(std::string(what) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e) +
                      (is_sticky(e) ? " (the GPU context is unusable now; restart the process)" : ""),
                  is_sticky(e));
}

void check_launch(const char* kernel) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) check(e, (std::string("launching ") + kernel).c_str());
}

int device_count(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) {
      const std::string cuda = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
      *why = e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice
                 ? "no NVIDIA driver or GPU on this machine (CUDA says " + cuda + ")"
                 : cuda;
    }
    cudaGetLastError();  // clear it
    return 0;
  }
  if (n == 0 && why) *why = "the driver reports no device";
  return n;
}

DeviceInfo query_device(int id) {
  std::string why;
  const int n = device_count(&why);
  if (n == 0) throw CudaError("no CUDA GPU: " + why + " (see docs/troubleshooting.md#gpu)");
  if (id < 0 || id >= n)
    throw CudaError("GPU " + std::to_string(id) + " does not exist; this machine has " + std::to_string(n) +
                    (n == 1 ? " (GPU 0)" : " (GPUs 0-" + std::to_string(n - 1) + ")"));
  cudaDeviceProp p{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&p, id));
  DeviceInfo d;
  d.id = id;
  d.name = p.name;
  d.sm_major = p.major;
  d.sm_minor = p.minor;
  d.multiprocessors = p.multiProcessorCount;
  d.total_memory = p.totalGlobalMem;
  d.l2_bytes = static_cast<size_t>(p.l2CacheSize);
  KILN_CUDA_CHECK(cudaDriverGetVersion(&d.driver_version));
  KILN_CUDA_CHECK(cudaRuntimeGetVersion(&d.runtime_version));
  d.cublaslt_version = cublasLtGetVersion();
  return d;
}

void require_compute_capability(const DeviceInfo& d, int major, int minor) {
  if (d.sm_major > major || (d.sm_major == major && d.sm_minor >= minor)) return;
  throw CudaError("GPU " + std::to_string(d.id) + " (" + d.name + ") is " + d.sm() + "; Kiln's CUDA backend needs sm_" +
                  std::to_string(major) + std::to_string(minor) + " or newer (see docs/troubleshooting.md#gpu)");
}

void* device_malloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaSuccess) return p;
  cudaGetLastError();  // not sticky: clear it so the next call does not report it
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  int device = 0;
  cudaGetDevice(&device);
  throw CudaError("out of GPU memory: cannot allocate " + std::to_string(bytes) + " bytes on GPU " +
                  std::to_string(device) + " (" + std::to_string(free_b >> 20) + " MiB of " +
                  std::to_string(total_b >> 20) + " MiB free): " + cudaGetErrorString(e));
}

DeviceBuffer::DeviceBuffer(size_t bytes) : ptr_(device_malloc(bytes)), bytes_(bytes) {}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

Stream::Stream() { KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
Stream::~Stream() {
  if (s_) cudaStreamDestroy(s_);
}
void Stream::synchronize() const { KILN_CUDA_CHECK(cudaStreamSynchronize(s_)); }

EventTimer::EventTimer() {
  KILN_CUDA_CHECK(cudaEventCreate(&a_));
  KILN_CUDA_CHECK(cudaEventCreate(&b_));
}
EventTimer::~EventTimer() {
  cudaEventDestroy(a_);
  cudaEventDestroy(b_);
}
void EventTimer::start(cudaStream_t s) { KILN_CUDA_CHECK(cudaEventRecord(a_, s)); }
float EventTimer::stop(cudaStream_t s) {
  KILN_CUDA_CHECK(cudaEventRecord(b_, s));
  KILN_CUDA_CHECK(cudaEventSynchronize(b_));
  float ms = 0;
  KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, a_, b_));
  return ms;
}

float time_tactic(const std::function<void(cudaStream_t)>& run, cudaStream_t stream) {
  EventTimer timer;
  timer.start(stream);
  run(stream);  // warm-up, and a first estimate
  const float once = timer.stop(stream);
  const int count = std::max(1, std::min(16, static_cast<int>(0.2f / std::max(once, 1e-3f))));
  Stream own;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  bool captured = cudaStreamBeginCapture(own.get(), cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  if (captured) {
    try {
      for (int i = 0; i < count; ++i) run(own.get());
    } catch (...) {
      cudaStreamEndCapture(own.get(), &graph);
      if (graph) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    captured = cudaStreamEndCapture(own.get(), &graph) == cudaSuccess && graph &&
               cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
    if (graph) cudaGraphDestroy(graph);
    if (!captured) cudaGetLastError();  // an invalidated capture: time on the stream instead
  } else {
    cudaGetLastError();
  }
  auto once_more = [&](cudaStream_t s) {
    if (exec) {
      KILN_CUDA_CHECK(cudaGraphLaunch(exec, s));
    } else {
      for (int i = 0; i < count; ++i) run(s);
    }
  };
  const cudaStream_t s = exec ? own.get() : stream;
  std::vector<float> ms;
  try {
    once_more(s);
    for (int r = 0; r < 5; ++r) {
      timer.start(s);
      once_more(s);
      ms.push_back(timer.stop(s) / static_cast<float>(count));
    }
  } catch (...) {
    if (exec) cudaGraphExecDestroy(exec);
    throw;
  }
  if (exec) cudaGraphExecDestroy(exec);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace kiln::cuda
