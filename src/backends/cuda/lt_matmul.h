// MatMul / Gemm on cuBLASLt with fused epilogues: Y[M,N] = X[M,K] · W[K,N] (+ bias[N]) (then ReLU
// or GELU), row major, in FP16, BF16 or FP32 (TF32 tensor cores), or from FP8 E4M3 operands with
// per-tensor scales into FP16/BF16, or in INT8 on the integer tensor cores (IMMA) with a per-column
// FP32 scale and an INT8 output. The algorithm is chosen by
// timing cuBLASLt's heuristic candidates on the actual shapes, not by taking its first answer.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include "backends/cuda/cuda_util.h"

namespace kiln::cuda {

// Inputs, outputs and bias share the type, except kI8: INT8 X, W, C and Y, INT32 accumulation, an
// FP32 bias and FP32 scales: Y = saturate(round(epilogue(alpha[n] * (X Wq^T)[m,n] + bias[n] +
// c_scale * C[m,n]))), with W stored [N,K] row major (the transposed-A "TN" form IMMA needs) and
// alpha a device vector of N floats passed to run(). Only unbatched products.
enum class GemmType { kF16, kBF16, kF32, kI8 };
enum class Epilogue { kNone, kRelu, kGelu, kBias, kBiasRelu, kBiasGelu };
const char* epilogue_name(Epilogue e);
// cuBLASLt's GELU epilogue is the tanh approximation, 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))).

struct GemmShape {
  int64_t m = 0, n = 0, k = 0;
  // Strided batches: `batch` products, X and Y dense one after the other; W advances by
  // w_stride elements per batch (0: one W shared by every batch).
  int64_t batch = 1;
  int64_t w_stride = 0;
  // Y = epilogue(X W + c_scale * C (+ bias)): a Y-shaped C (a residual) added before the activation.
  bool accumulate = false;
  float c_scale = 1.f;
};

// FP8 operands (Hopper and newer): X and W in E4M3 with one scale each, W stored [N,K] row major
// (the transposed-A "TN" form FP8 tensor cores need); D = x_scale * w_scale * (Xq Wq^T) + bias, in
// the GemmType (FP16 or BF16, also the bias's and C's). Only unbatched products.
struct Fp8Inputs {
  bool on = false;
  float x_scale = 1, w_scale = 1;
};

// One candidate's timing, for logs and the timing cache.
struct AlgoTiming {
  int index = 0;  // in the heuristic's order
  float ms = -1;  // -1: failed to run
  size_t workspace = 0;
};

class LtMatmul {
 public:
  // Creates the descriptors and picks the algorithm: up to `candidates` heuristic answers that fit
  // `workspace_limit` bytes are run on scratch buffers and timed as a CUDA graph replays them (time_tactic).
  // Throws CudaError when cuBLASLt has no algorithm for the problem (naming shape, type, epilogue).
  // With `tactic` (what tactic() returned on a build with the same cuBLASLt and GPU), that algorithm
  // is checked with cublasLtMatmulAlgoCheck and used without timing; a tactic that does not parse,
  // does not fit the problem or the workspace limit throws CudaError.
  LtMatmul(GemmShape shape, GemmType type, Epilogue epilogue, size_t workspace_limit = 32u << 20,
           int candidates = 8, cudaStream_t stream = nullptr, const std::string& tactic = {}, Fp8Inputs fp8 = {});
  ~LtMatmul();
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;

  // y = epilogue(x · w + bias). bias may be null only for epilogues without bias. Safe to call from
  // several threads (the bias pointer lives in the shared descriptor, so calls are serialized
  // around setting it and enqueueing).
  void run(const void* x, const void* w, const void* bias, void* y, cudaStream_t stream) const;
  // The same with the caller's workspace of at least chosen_workspace_bytes() (a context's own, so
  // concurrent runs on several streams never share scratch).
  // kI8 needs `alpha`, N FP32 scales in device memory.
  void run(const void* x, const void* w, const void* bias, void* y, cudaStream_t stream, void* workspace,
           size_t workspace_bytes, const void* c = nullptr, const float* alpha = nullptr) const;
  size_t chosen_workspace_bytes() const { return chosen_workspace_; }
  float chosen_ms() const { return best_ms_; }

  const std::vector<AlgoTiming>& timings() const { return timings_; }
  // The chosen algorithm: "lt:" and the hex of cuBLASLt's 64-byte algorithm record.
  std::string tactic() const;
  int chosen() const { return chosen_; }
  size_t workspace_bytes() const { return workspace_.bytes(); }
  std::string describe() const;

 private:
  GemmShape shape_;
  GemmType type_;
  Epilogue epilogue_;
  Fp8Inputs fp8_;
  DeviceBuffer scales_;  // FP8: W's scale at byte 0, X's at byte 16 (cuBLASLt wants them 16-byte aligned)
  DeviceBuffer alpha_scratch_;  // INT8: the alpha vector the candidates are timed with
  cublasLtHandle_t lt_ = nullptr;
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
  DeviceBuffer workspace_;
  std::vector<AlgoTiming> timings_;
  int chosen_ = -1;
  size_t chosen_workspace_ = 0;
  float best_ms_ = -1;
  mutable std::mutex run_mu_;
};

// Throws CudaError for a failed cuBLAS(Lt) status: "<what>: <status name>".
void check_cublas(cublasStatus_t s, const char* what);

}  // namespace kiln::cuda
