// Which INT8 GEMM configurations cuBLASLt runs on this GPU, and how fast: a probe, not part of the
// build. For ResNet-50's 1x1 layers at batch 256 (M pixels, N output channels, K input channels),
// TN INT8 operands with INT32 accumulation, every combination of output type, pointer mode and
// epilogue is asked for heuristics; each supported one is timed (best of up to 8 algorithms,
// median of 10 runs), next to the FP16 GEMM with bias + ReLU that Kiln's FP16 program runs.
//   g++ -O2 -std=c++17 -I/usr/local/cuda/include bench/gpu/int8_lt_probe.cpp \
//       -L/usr/local/cuda/lib64 -lcublasLt -lcudart -o int8_lt_probe
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

namespace {

struct Config {
  const char* name;
  cudaDataType_t ab, cd, scale;
  cublasComputeType_t compute;
  int pointer_mode;  // -1: the default (host scalars)
  cublasLtEpilogue_t epilogue;
  bool residual;
};

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

size_t esize(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_8I: return 1;
    case CUDA_R_16F: return 2;
    default: return 4;
  }
}

// Returns the best median ms, or a negative cuBLAS status when nothing ran.
float probe(cublasLtHandle_t lt, const Config& c, int64_t m, int64_t n, int64_t k, cudaStream_t s) {
  cublasLtMatmulDesc_t op = nullptr;
  if (cublasLtMatmulDescCreate(&op, c.compute, c.scale) != CUBLAS_STATUS_SUCCESS) return -1;
  const bool tn = c.ab == CUDA_R_8I;
  const cublasOperation_t ta = tn ? CUBLAS_OP_T : CUBLAS_OP_N, nb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nb, sizeof(nb));
  if (c.pointer_mode >= 0) {
    const cublasLtPointerMode_t pm = static_cast<cublasLtPointerMode_t>(c.pointer_mode);
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof(pm));
  }
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &c.epilogue, sizeof(c.epilogue));
  const bool bias = c.epilogue == CUBLASLT_EPILOGUE_BIAS || c.epilogue == CUBLASLT_EPILOGUE_RELU_BIAS;
  const cudaDataType_t bias_t = c.cd == CUDA_R_8I ? CUDA_R_32F : c.cd;
  void *x, *w, *y, *z, *b, *alpha_v, *ws;
  const size_t wsb = 64u << 20;
  check(cudaMalloc(&x, m * k * esize(c.ab)), "x");
  check(cudaMalloc(&w, n * k * esize(c.ab)), "w");
  check(cudaMalloc(&y, m * n * esize(c.cd)), "y");
  check(cudaMalloc(&z, m * n * esize(c.cd)), "z");
  check(cudaMalloc(&b, n * 4), "b");
  check(cudaMalloc(&alpha_v, n * 4), "alpha");
  check(cudaMalloc(&ws, wsb), "ws");
  cudaMemset(x, 0x3c, m * k * esize(c.ab));
  cudaMemset(w, 0x31, n * k * esize(c.ab));
  cudaMemset(z, 0x30, m * n * esize(c.cd));
  cudaMemset(b, 0, n * 4);
  cudaMemset(alpha_v, 0x30, n * 4);
  if (bias) {
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_t, sizeof(bias_t));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof(b));
  }
  // Column major: D[N,M] = op(A)[N,K] B[K,M]; A is W stored [N,K] row major (TN) or [K,N] (NN).
  cublasLtMatrixLayout_t a, bl, cl;
  if (tn) cublasLtMatrixLayoutCreate(&a, c.ab, k, n, k);
  else cublasLtMatrixLayoutCreate(&a, c.ab, n, k, n);
  cublasLtMatrixLayoutCreate(&bl, c.ab, k, m, k);
  cublasLtMatrixLayoutCreate(&cl, c.cd, n, m, n);
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb));
  cublasLtMatmulHeuristicResult_t found[8];
  int returned = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt, op, a, bl, cl, cl, pref, 8, found, &returned);
  float best = hs != CUBLAS_STATUS_SUCCESS ? -static_cast<float>(hs) : -1000;
  const float one_f = 1.f, beta_f = c.residual ? 0.5f : 0.f;
  const int32_t one_i = 1, beta_i = c.residual ? 1 : 0;
  const bool vec = c.pointer_mode == CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO ||
                   c.pointer_mode == CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST;
  const void* alpha = vec ? alpha_v : c.scale == CUDA_R_32I ? static_cast<const void*>(&one_i) : &one_f;
  const void* beta = c.scale == CUDA_R_32I ? static_cast<const void*>(&beta_i) : &beta_f;
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  for (int i = 0; hs == CUBLAS_STATUS_SUCCESS && i < returned; ++i) {
    auto run = [&] {
      return cublasLtMatmul(lt, op, alpha, w, a, x, bl, beta, c.residual ? z : y, cl, y, cl, &found[i].algo, ws, wsb, s);
    };
    if (run() != CUBLAS_STATUS_SUCCESS) continue;
    std::vector<float> ms;
    for (int r = 0; r < 10; ++r) {
      cudaEventRecord(e0, s);
      run();
      cudaEventRecord(e1, s);
      cudaEventSynchronize(e1);
      float t = 0;
      cudaEventElapsedTime(&t, e0, e1);
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    if (best < 0 || ms[5] < best) best = ms[5];
  }
  check(cudaDeviceSynchronize(), "run");
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(a);
  cublasLtMatrixLayoutDestroy(bl);
  cublasLtMatrixLayoutDestroy(cl);
  cublasLtMatmulDescDestroy(op);
  for (void* p : {x, w, y, z, b, alpha_v, ws}) cudaFree(p);
  return best;
}

}  // namespace

int main() {
  cublasLtHandle_t lt;
  cublasLtCreate(&lt);
  cudaStream_t s;
  cudaStreamCreate(&s);
  const int H = CUBLASLT_POINTER_MODE_HOST, VZ = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO,
            VH = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST, DV = CUBLASLT_POINTER_MODE_DEVICE_VECTOR;
  std::vector<Config> configs = {
      {"fp16 bias+relu (Kiln FP16)", CUDA_R_16F, CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F, -1, CUBLASLT_EPILOGUE_RELU_BIAS, false},
      {"fp16 bias+relu +residual", CUDA_R_16F, CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32F, -1, CUBLASLT_EPILOGUE_RELU_BIAS, true},
      {"i8->i32 scale i32", CUDA_R_8I, CUDA_R_32I, CUDA_R_32I, CUBLAS_COMPUTE_32I, -1, CUBLASLT_EPILOGUE_DEFAULT, false},
      {"i8->i8 host alpha", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, H, CUBLASLT_EPILOGUE_DEFAULT, false},
      {"i8->i8 host alpha relu", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, H, CUBLASLT_EPILOGUE_RELU, false},
      {"i8->i8 host alpha bias", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, H, CUBLASLT_EPILOGUE_BIAS, false},
      {"i8->i8 host alpha bias+relu", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, H, CUBLASLT_EPILOGUE_RELU_BIAS, false},
      {"i8->i8 host alpha +residual", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, H, CUBLASLT_EPILOGUE_DEFAULT, true},
      {"i8->i8 vector alpha", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VZ, CUBLASLT_EPILOGUE_DEFAULT, false},
      {"i8->i8 vector alpha relu", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VZ, CUBLASLT_EPILOGUE_RELU, false},
      {"i8->i8 vector alpha bias", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VZ, CUBLASLT_EPILOGUE_BIAS, false},
      {"i8->i8 vector alpha bias+relu", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VZ, CUBLASLT_EPILOGUE_RELU_BIAS, false},
      {"i8->i8 vector alpha, host beta +residual", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VH, CUBLASLT_EPILOGUE_DEFAULT, true},
      {"i8->i8 vector alpha, host beta bias+relu +residual", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VH, CUBLASLT_EPILOGUE_RELU_BIAS, true},
      {"i8->i8 vector alpha, host beta 0", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VH, CUBLASLT_EPILOGUE_DEFAULT, false},
      {"i8->i8 vector alpha, host beta 0 relu", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VH, CUBLASLT_EPILOGUE_RELU, false},
      {"i8->i8 vector alpha, host beta 0 bias", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VH, CUBLASLT_EPILOGUE_BIAS, false},
      {"i8->i8 vector alpha, host beta 0 bias+relu", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, VH, CUBLASLT_EPILOGUE_RELU_BIAS, false},
      {"i8->i8 device vectors", CUDA_R_8I, CUDA_R_8I, CUDA_R_32F, CUBLAS_COMPUTE_32I, DV, CUBLASLT_EPILOGUE_DEFAULT, false},
      {"i8->fp16 host alpha", CUDA_R_8I, CUDA_R_16F, CUDA_R_32F, CUBLAS_COMPUTE_32I, H, CUBLASLT_EPILOGUE_DEFAULT, false},
      {"i8->fp32 host alpha", CUDA_R_8I, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32I, H, CUBLASLT_EPILOGUE_DEFAULT, false},
      {"i8->fp32 host alpha bias+relu", CUDA_R_8I, CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32I, H, CUBLASLT_EPILOGUE_RELU_BIAS, false},
  };
  struct Shape { const char* name; int64_t m, n, k; };
  const Shape shapes[] = {{"res2 1x1 256->64 56 b256", 256 * 56 * 56, 64, 256},
                          {"res2 1x1 64->256 56 b256", 256 * 56 * 56, 256, 64},
                          {"res3 1x1 128->512 28 b256", 256 * 28 * 28, 512, 128},
                          {"res4 1x1 1024->256 14 b256", 256 * 14 * 14, 256, 1024}};
  for (const Shape& sh : shapes) {
    std::printf("\n%s (M=%ld N=%ld K=%ld)\n", sh.name, static_cast<long>(sh.m), static_cast<long>(sh.n), static_cast<long>(sh.k));
    for (const Config& c : configs) {
      const float ms = probe(lt, c, sh.m, sh.n, sh.k, s);
      if (ms >= 0) {
        const double bytes = static_cast<double>(sh.m) * (sh.k * esize(c.ab) + sh.n * esize(c.cd) * (c.residual ? 2 : 1));
        std::printf("  %-52s %8.3f ms  %5.2f TB/s\n", c.name, ms, bytes / (ms * 1e-3) / 1e12);
      } else {
        std::printf("  %-52s unsupported (%s)\n", c.name,
                    ms == -1000 ? "no algorithm" : cublasLtGetStatusName(static_cast<cublasStatus_t>(static_cast<int>(-ms))));
      }
    }
  }
  return 0;
}
