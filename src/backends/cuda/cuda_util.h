// CUDA runtime helpers of the GPU backend (libkiln_cuda.so): error checking that turns every
// failed CUDA, cuBLAS(Lt) call or launch into a CudaError naming the call and the reason, device
// queries (SM, memory, driver and library versions), and RAII device buffers, streams and events.
// Nothing here depends on the rest of Kiln, so the module loads without oneDNN.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace kiln::cuda {

// A CUDA failure. `sticky` is true when the context is unusable afterwards (an illegal address,
// a launch failure): the process must not reuse the device.
class CudaError : public std::runtime_error {
 public:
  CudaError(const std::string& message, bool sticky = false) : std::runtime_error(message), sticky_(sticky) {}
  bool sticky() const { return sticky_; }

 private:
  bool sticky_;
};

// Throws CudaError for a failed runtime call: "<what>: <cudaGetErrorName>: <cudaGetErrorString>".
void check(cudaError_t e, const char* what);
// Checks the last launch (cudaGetLastError) of `kernel`.
void check_launch(const char* kernel);

#define KILN_CUDA_CHECK(call) ::kiln::cuda::check((call), #call)

struct DeviceInfo {
  int id = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;  // compute capability
  int multiprocessors = 0;
  size_t total_memory = 0;
  size_t l2_bytes = 0;
  int driver_version = 0;   // cudaDriverGetVersion, e.g. 13000
  int runtime_version = 0;  // cudaRuntimeGetVersion
  size_t cublaslt_version = 0;
  std::string sm() const { return "sm_" + std::to_string(sm_major) + std::to_string(sm_minor); }
};

// The number of usable GPUs; 0 (never an exception) when there is no driver or no device.
// `why`, when given, receives the reason there is none.
int device_count(std::string* why = nullptr);
// Describes device `id`. Throws CudaError when there is no GPU ("no CUDA GPU: <reason>") or no
// such device ("GPU 3 does not exist; this machine has 1").
DeviceInfo query_device(int id);
// Throws CudaError unless the device's compute capability is at least major.minor:
// "GPU 0 (NAME) is sm_75; Kiln's CUDA backend needs sm_80 or newer".
void require_compute_capability(const DeviceInfo& d, int major, int minor);

// cudaMalloc of `bytes` on the current device (null for 0). Throws CudaError "out of GPU memory:
// cannot allocate N bytes on GPU I (F MiB of T MiB free): <reason>" and leaves no error pending.
void* device_malloc(size_t bytes);

// Device memory; moves only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void synchronize() const;

 private:
  cudaStream_t s_ = nullptr;
};

// Milliseconds between two events recorded on a stream.
class EventTimer {
 public:
  EventTimer();
  ~EventTimer();
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  void start(cudaStream_t s);
  float stop(cudaStream_t s);  // synchronizes on the stop event

 private:
  cudaEvent_t a_ = nullptr, b_ = nullptr;
};

// A tactic's GPU time, ms per run: what one candidate (a cuDNN algorithm, a cuBLASLt algorithm, a
// CTA tile) costs inside an engine's CUDA graph. After a warm-up run on `stream` (which also loads
// lazily loaded kernels), `run` is captured several times back to back into a CUDA graph (as many
// as make a replay last about 0.2 ms, at most 16) on a private stream, and the median of 5 replays
// is divided by the count. Timing single runs between two events instead would count the host's
// launch overhead whenever it exceeds the kernel (libraries that launch several kernels per call
// lose most), which is not what a graph replay pays. Where capture fails, the same back-to-back
// runs are timed on the stream. Exceptions from `run` propagate (the candidate does not run).
float time_tactic(const std::function<void(cudaStream_t)>& run, cudaStream_t stream);

}  // namespace kiln::cuda
