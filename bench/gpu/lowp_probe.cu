// Library kernels at low precision on the GPU, against FP16: what cuDNN's INT8 convolutions and
// cuBLASLt's INT8 (IMMA) and FP8 (E4M3) GEMMs reach on ResNet-50 and BERT-base shapes, before the
// GPU lowering relies on them. Standalone (CUDA runtime, cuDNN, cuBLASLt only):
//   nvcc -O2 -std=c++17 -gencode=arch=compute_90a,code=sm_90a bench/gpu/lowp_probe.cu -lcudnn -lcublasLt -o lowp_probe
//   ./lowp_probe [gemm]     one line per (shape, variant): median ms over 20 runs, TOPS, or why it
//                           failed; `gemm`: the GEMMs only
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace {

bool ok_cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::printf("    %s: %s\n", what, cudaGetErrorString(e));
  cudaGetLastError();
  return false;
}

struct Buf {
  void* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t bytes) : n(bytes) {
    if (bytes && cudaMalloc(&p, bytes) != cudaSuccess) {
      p = nullptr;
      cudaGetLastError();
    }
    if (p) cudaMemset(p, 0x11, bytes);
  }
  ~Buf() { cudaFree(p); }
};

// Median milliseconds of 20 runs of f (after 3 warm-ups); -1 when f fails.
template <class F>
float time_ms(F f) {
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int i = 0; i < 3; ++i)
    if (!f()) return -1;
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    cudaEventRecord(a);
    if (!f()) return -1;
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (!ok_cuda(cudaGetLastError(), "run")) return -1;
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

void report(const std::string& what, double ops, float ms) {
  if (ms < 0)
    std::printf("  %-44s failed\n", what.c_str());
  else
    std::printf("  %-44s %8.4f ms  %7.1f TOPS\n", what.c_str(), ms, ops / (ms * 1e-3) / 1e12);
}

struct Conv {
  int n, c, h, w, k, r, s, stride, pad;
  int oh() const { return (h + 2 * pad - r) / stride + 1; }
  int ow() const { return (w + 2 * pad - s) / stride + 1; }
};

// cuDNN: the fastest forward algorithm that runs, over every algorithm (the legacy API's list).
float cudnn_conv(cudnnHandle_t h, const Conv& p, cudnnDataType_t xt, cudnnTensorFormat_t xf, cudnnDataType_t yt,
                 cudnnTensorFormat_t yf, cudnnDataType_t compute, bool bias_relu, int* best_algo) {
  cudnnTensorDescriptor_t x, y, b;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t cd;
  cudnnActivationDescriptor_t act;
  cudnnCreateTensorDescriptor(&x);
  cudnnCreateTensorDescriptor(&y);
  cudnnCreateTensorDescriptor(&b);
  cudnnCreateFilterDescriptor(&w);
  cudnnCreateConvolutionDescriptor(&cd);
  cudnnCreateActivationDescriptor(&act);
  float best = -1;
  *best_algo = -1;
  if (cudnnSetTensor4dDescriptor(x, xf, xt, p.n, p.c, p.h, p.w) != CUDNN_STATUS_SUCCESS ||
      cudnnSetFilter4dDescriptor(w, xt, xf, p.k, p.c, p.r, p.s) != CUDNN_STATUS_SUCCESS ||
      cudnnSetConvolution2dDescriptor(cd, p.pad, p.pad, p.stride, p.stride, 1, 1, CUDNN_CROSS_CORRELATION, compute) !=
          CUDNN_STATUS_SUCCESS ||
      cudnnSetTensor4dDescriptor(y, yf, yt, p.n, p.k, p.oh(), p.ow()) != CUDNN_STATUS_SUCCESS) {
    std::printf("    descriptors rejected\n");
    return -1;
  }
  cudnnSetTensor4dDescriptor(b, CUDNN_TENSOR_NCHW, yt == CUDNN_DATA_HALF ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT, 1, p.k,
                             1, 1);
  cudnnSetActivationDescriptor(act, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0);
  if (xt == CUDNN_DATA_HALF) cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH);
  const size_t xe = xt == CUDNN_DATA_HALF ? 2 : 1, ye = yt == CUDNN_DATA_HALF ? 2 : yt == CUDNN_DATA_FLOAT ? 4 : 1;
  Buf xb(size_t(p.n) * p.c * p.h * p.w * xe), wb(size_t(p.k) * p.c * p.r * p.s * xe),
      yb(size_t(p.n) * p.k * p.oh() * p.ow() * ye), bb(size_t(p.k) * 4);
  cudaMemset(bb.p, 0, bb.n);
  for (int algo = 0; algo < CUDNN_CONVOLUTION_FWD_ALGO_COUNT; ++algo) {
    size_t ws = 0;
    if (cudnnGetConvolutionForwardWorkspaceSize(h, x, w, cd, y, cudnnConvolutionFwdAlgo_t(algo), &ws) !=
        CUDNN_STATUS_SUCCESS)
      continue;
    if (ws > (256u << 20)) continue;
    Buf wsb(ws);
    const float one = 1.f, zero = 0.f;
    const float ms = time_ms([&] {
      cudnnStatus_t s;
      if (bias_relu)
        s = cudnnConvolutionBiasActivationForward(h, &one, x, xb.p, w, wb.p, cd, cudnnConvolutionFwdAlgo_t(algo),
                                                  wsb.p, ws, &zero, y, yb.p, b, bb.p, act, y, yb.p);
      else
        s = cudnnConvolutionForward(h, &one, x, xb.p, w, wb.p, cd, cudnnConvolutionFwdAlgo_t(algo), wsb.p, ws, &zero,
                                    y, yb.p);
      return s == CUDNN_STATUS_SUCCESS;
    });
    if (ms >= 0 && (best < 0 || ms < best)) {
      best = ms;
      *best_algo = algo;
    }
  }
  cudnnDestroyActivationDescriptor(act);
  cudnnDestroyConvolutionDescriptor(cd);
  cudnnDestroyFilterDescriptor(w);
  cudnnDestroyTensorDescriptor(b);
  cudnnDestroyTensorDescriptor(y);
  cudnnDestroyTensorDescriptor(x);
  return best;
}

enum class LtKind { kF16NN, kI8, kI8Vec, kI32, kF8, kF8Bf16 };

// Row-major Y[M,N] = X[M,K] W[K,N] on cuBLASLt, as column-major Y^T = W^T X^T.
// kF16NN: W stored [K,N] (A = W, no transpose), FP16 everywhere, bias+ReLU epilogue when asked.
// kI8 / kI8Vec: W stored [N,K] (A = W transposed: the TN form IMMA needs), int8 in, int8 out,
//   float scale (kI8Vec: one alpha per output channel, from device memory).
// kI32: int8 in, int32 out (TN, int32 scale): exact accumulators for a separate requantizing pass.
// kF8 / kF8Bf16: E4M3 in (TN), FP16 / BF16 out, per-tensor A/B scales, bias+ReLU when asked.
float lt_gemm(cublasLtHandle_t lt, int64_t m, int64_t n, int64_t k, LtKind kind, bool bias_relu, std::string* why) {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cudaDataType_t ab, cd_t, scale = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  switch (kind) {
    case LtKind::kF16NN: ab = CUDA_R_16F; cd_t = CUDA_R_16F; break;
    case LtKind::kI8: case LtKind::kI8Vec: ab = CUDA_R_8I; cd_t = CUDA_R_8I; compute = CUBLAS_COMPUTE_32I; break;
    case LtKind::kI32: ab = CUDA_R_8I; cd_t = CUDA_R_32I; compute = CUBLAS_COMPUTE_32I; scale = CUDA_R_32I; break;
    case LtKind::kF8Bf16: ab = CUDA_R_8F_E4M3; cd_t = CUDA_R_16BF; break;
    default: ab = CUDA_R_8F_E4M3; cd_t = CUDA_R_16F; break;
  }
  const bool tn = kind != LtKind::kF16NN;
  auto fail = [&](const char* w, cublasStatus_t s) {
    *why = std::string(w) + ": " + cublasLtGetStatusName(s);
    return -1.f;
  };
  cublasStatus_t s = cublasLtMatmulDescCreate(&op, compute, scale);
  if (s) return fail("desc", s);
  const cublasOperation_t ta = tn ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  Buf xb(size_t(m * k) * (ab == CUDA_R_16F ? 2 : 1)), wb(size_t(k * n) * (ab == CUDA_R_16F ? 2 : 1)),
      yb(size_t(m * n) * (cd_t == CUDA_R_16F || cd_t == CUDA_R_16BF ? 2 : cd_t == CUDA_R_32I ? 4 : 1)), bias(size_t(n) * 4), alpha_vec(size_t(n) * 4),
      scales(64), ws(32u << 20);
  cudaMemset(bias.p, 0, bias.n);
  {
    std::vector<float> av(size_t(n), 1.f / 4096);
    cudaMemcpy(alpha_vec.p, av.data(), av.size() * 4, cudaMemcpyHostToDevice);
    const float sc[16] = {0.01f, 0, 0, 0, 0.01f, 0, 0, 0, 1.f, 0, 0, 0, 1.f, 0, 0, 0};  // 16-byte aligned scalars
    cudaMemcpy(scales.p, sc, sizeof(sc), cudaMemcpyHostToDevice);
  }
  if (bias_relu) {
    const cublasLtEpilogue_t e = CUBLASLT_EPILOGUE_RELU_BIAS;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof(e));
    const cudaDataType_t bt = kind == LtKind::kF16NN || kind == LtKind::kF8 ? CUDA_R_16F
                              : kind == LtKind::kF8Bf16                   ? CUDA_R_16BF
                                                                          : CUDA_R_32F;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias.p, sizeof(bias.p));
  }
  if (kind == LtKind::kI8Vec) {
    const cublasLtPointerMode_t pm = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_ZERO;
    s = cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pm, sizeof(pm));
    if (s) return fail("pointer mode", s);
  }
  if (kind == LtKind::kF8 || kind == LtKind::kF8Bf16) {
    void* sa = scales.p;
    void* sb = static_cast<char*>(scales.p) + 16;
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa));
    cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof(sb));
  }
  // A: W as N x K (ld N, no transpose) or, TN, stored K x N column-major = [N,K] row-major (ld K).
  if (tn)
    cublasLtMatrixLayoutCreate(&a, ab, k, n, k);
  else
    cublasLtMatrixLayoutCreate(&a, ab, n, k, n);
  cublasLtMatrixLayoutCreate(&b, ab, k, m, k);
  cublasLtMatrixLayoutCreate(&c, cd_t, n, m, n);
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  size_t wsl = ws.n;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsl, sizeof(wsl));
  cublasLtMatmulHeuristicResult_t found[8];
  int returned = 0;
  s = cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, c, c, pref, 8, found, &returned);
  cublasLtMatmulPreferenceDestroy(pref);
  float best = -1;
  if (s || returned == 0) {
    *why = std::string("heuristic: ") + (s ? cublasLtGetStatusName(s) : "no algorithm");
  } else {
    for (int i = 0; i < returned; ++i) {
      const float one = 1.f, zero_f = 0.f;
      const int32_t one_i = 1, zero_i = 0;
      const void* alpha = kind == LtKind::kI8Vec ? alpha_vec.p : kind == LtKind::kI32 ? static_cast<const void*>(&one_i)
                                                                                      : static_cast<const void*>(&one);
      const void* zero = kind == LtKind::kI32 ? static_cast<const void*>(&zero_i) : static_cast<const void*>(&zero_f);
      cublasStatus_t last = CUBLAS_STATUS_SUCCESS;
      const float ms = time_ms([&] {
        last = cublasLtMatmul(lt, op, alpha, wb.p, a, xb.p, b, zero, yb.p, c, yb.p, c, &found[i].algo, ws.p, ws.n,
                              nullptr);
        return last == CUBLAS_STATUS_SUCCESS;
      });
      if (ms < 0) *why = std::string("run: ") + cublasLtGetStatusName(last);
      if (ms >= 0 && (best < 0 || ms < best)) best = ms;
    }
    if (best < 0 && why->empty()) *why = "no candidate ran";
  }
  cublasLtMatrixLayoutDestroy(a);
  cublasLtMatrixLayoutDestroy(b);
  cublasLtMatrixLayoutDestroy(c);
  cublasLtMatmulDescDestroy(op);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const bool gemm_only = argc > 1 && std::string(argv[1]) == "gemm";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::printf("lowp_probe: no GPU\n");
    return 1;
  }
  std::printf("%s sm_%d%d, cuDNN %zu, cuBLASLt %zu\n", prop.name, prop.major, prop.minor, cudnnGetVersion(),
              cublasLtGetVersion());
  cudnnHandle_t dnn;
  cudnnCreate(&dnn);
  cublasLtHandle_t lt;
  cublasLtCreate(&lt);

  const int N = 256;
  const std::vector<Conv> convs = {
      {N, 64, 56, 56, 64, 3, 3, 1, 1},     {N, 128, 28, 28, 128, 3, 3, 1, 1}, {N, 256, 14, 14, 256, 3, 3, 1, 1},
      {N, 512, 7, 7, 512, 3, 3, 1, 1},     {N, 128, 56, 56, 128, 3, 3, 2, 1}, {N, 256, 56, 56, 64, 1, 1, 1, 0},
      {N, 64, 56, 56, 256, 1, 1, 1, 0},    {N, 1024, 14, 14, 256, 1, 1, 1, 0}, {N, 256, 14, 14, 1024, 1, 1, 1, 0},
      {N, 2048, 7, 7, 512, 1, 1, 1, 0},    {N, 4, 224, 224, 64, 7, 7, 2, 3}};
  if (!gemm_only) std::printf("\ncuDNN convolutions, batch %d, NHWC (best over algorithms)\n", N);
  for (const Conv& p : gemm_only ? std::vector<Conv>{} : convs) {
    const double ops = 2.0 * p.n * p.k * p.oh() * p.ow() * p.c * p.r * p.s;
    std::printf("c%d %dx%d -> k%d %dx%d s%d\n", p.c, p.h, p.w, p.k, p.r, p.s, p.stride);
    int algo = -1;
    float ms = cudnn_conv(dnn, p, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC,
                          CUDNN_DATA_FLOAT, true, &algo);
    report("fp16 nhwc bias+relu (algo " + std::to_string(algo) + ")", ops, ms);
    ms = cudnn_conv(dnn, p, CUDNN_DATA_INT8, CUDNN_TENSOR_NHWC, CUDNN_DATA_INT8, CUDNN_TENSOR_NHWC, CUDNN_DATA_INT32,
                    false, &algo);
    report("int8 nhwc -> int8 (algo " + std::to_string(algo) + ")", ops, ms);
    ms = cudnn_conv(dnn, p, CUDNN_DATA_INT8, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, CUDNN_DATA_INT32,
                    false, &algo);
    report("int8 nhwc -> fp32 (algo " + std::to_string(algo) + ")", ops, ms);
    ms = cudnn_conv(dnn, p, CUDNN_DATA_INT8, CUDNN_TENSOR_NHWC, CUDNN_DATA_INT8, CUDNN_TENSOR_NHWC, CUDNN_DATA_INT32,
                    true, &algo);
    report("int8 nhwc -> int8 bias+relu (algo " + std::to_string(algo) + ")", ops, ms);
    if (p.c % 32 == 0 && p.k % 32 == 0) {
      ms = cudnn_conv(dnn, p, CUDNN_DATA_INT8x32, CUDNN_TENSOR_NCHW_VECT_C, CUDNN_DATA_INT8x32,
                      CUDNN_TENSOR_NCHW_VECT_C, CUDNN_DATA_INT32, true, &algo);
      report("int8x32 nc/32hw32 bias+relu (algo " + std::to_string(algo) + ")", ops, ms);
    }
  }

  struct G {
    int64_t m, n, k;
  };
  const std::vector<G> gemms = {{N * 56 * 56, 64, 256},  {N * 56 * 56, 256, 64},   {N * 14 * 14, 256, 1024},
                                {N * 14 * 14, 1024, 256}, {N * 7 * 7, 512, 2048},   {4096, 2304, 768},
                                {4096, 3072, 768},        {4096, 768, 3072},        {16384, 3072, 768},
                                {128, 2304, 768},         {128, 3072, 768},         {128, 768, 3072}};
  std::printf("\ncuBLASLt GEMMs Y[M,N] = X[M,K] W[K,N] (best of up to 8 heuristic candidates)\n");
  for (const G& g : gemms) {
    const double ops = 2.0 * g.m * g.n * g.k;
    std::printf("M=%lld N=%lld K=%lld\n", (long long)g.m, (long long)g.n, (long long)g.k);
    for (bool br : {false, true}) {
      const char* e = br ? " bias+relu" : "";
      std::string why;
      float ms = lt_gemm(lt, g.m, g.n, g.k, LtKind::kF16NN, br, &why);
      report(std::string("fp16 NN") + e + (ms < 0 ? " " + why : ""), ops, ms);
      why.clear();
      ms = lt_gemm(lt, g.m, g.n, g.k, LtKind::kI8, br, &why);
      report(std::string("int8 TN -> int8") + e + (ms < 0 ? " " + why : ""), ops, ms);
      why.clear();
      ms = lt_gemm(lt, g.m, g.n, g.k, LtKind::kI8Vec, br, &why);
      report(std::string("int8 TN -> int8 alpha vec") + e + (ms < 0 ? " " + why : ""), ops, ms);
      why.clear();
      ms = lt_gemm(lt, g.m, g.n, g.k, LtKind::kF8, br, &why);
      report(std::string("fp8 e4m3 TN -> fp16") + e + (ms < 0 ? " " + why : ""), ops, ms);
      why.clear();
      ms = lt_gemm(lt, g.m, g.n, g.k, LtKind::kF8Bf16, br, &why);
      report(std::string("fp8 e4m3 TN -> bf16") + e + (ms < 0 ? " " + why : ""), ops, ms);
      if (!br) {
        why.clear();
        ms = lt_gemm(lt, g.m, g.n, g.k, LtKind::kI32, false, &why);
        report(std::string("int8 TN -> int32") + (ms < 0 ? " " + why : ""), ops, ms);
      }
    }
  }
  cublasLtDestroy(lt);
  cudnnDestroy(dnn);
  return 0;
}
