// MatMul / Gemm on cuBLASLt with fused epilogues (see lt_matmul.h).
#include "backends/cuda/lt_matmul.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace kiln::cuda {

void check_cublas(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw CudaError(std::string(what) + ": " + cublasLtGetStatusName(s) + " (" + cublasLtGetStatusString(s) + ")");
}

#define KILN_CUBLAS_CHECK(call) ::kiln::cuda::check_cublas((call), #call)

const char* epilogue_name(Epilogue e) {
  switch (e) {
    case Epilogue::kNone: return "none";
    case Epilogue::kRelu: return "relu";
    case Epilogue::kGelu: return "gelu";
    case Epilogue::kBias: return "bias";
    case Epilogue::kBiasRelu: return "bias+relu";
    case Epilogue::kBiasGelu: return "bias+gelu";
  }
  return "?";
}

namespace {
cudaDataType_t data_type(GemmType t) {
  switch (t) {
    case GemmType::kF16: return CUDA_R_16F;
    case GemmType::kBF16: return CUDA_R_16BF;
    case GemmType::kF32: return CUDA_R_32F;
    case GemmType::kI8: return CUDA_R_8I;
  }
  return CUDA_R_32F;
}
const char* type_name(GemmType t) {
  switch (t) {
    case GemmType::kF16: return "fp16";
    case GemmType::kBF16: return "bf16";
    case GemmType::kF32: return "fp32";
    case GemmType::kI8: return "int8";
  }
  return "?";
}
size_t type_size(GemmType t) { return t == GemmType::kF32 ? 4 : t == GemmType::kI8 ? 1 : 2; }
cublasLtEpilogue_t lt_epilogue(Epilogue e) {
  switch (e) {
    case Epilogue::kNone: return CUBLASLT_EPILOGUE_DEFAULT;
    case Epilogue::kRelu: return CUBLASLT_EPILOGUE_RELU;
    case Epilogue::kGelu: return CUBLASLT_EPILOGUE_GELU;
    case Epilogue::kBias: return CUBLASLT_EPILOGUE_BIAS;
    case Epilogue::kBiasRelu: return CUBLASLT_EPILOGUE_RELU_BIAS;
    case Epilogue::kBiasGelu: return CUBLASLT_EPILOGUE_GELU_BIAS;
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}
bool has_bias(Epilogue e) { return e == Epilogue::kBias || e == Epilogue::kBiasRelu || e == Epilogue::kBiasGelu; }

// A cublasLtMatmulAlgo_t as "lt:" + its 8 words in hex (16 digits each), and back.
constexpr char kAlgoPrefix[] = "lt:";
std::string format_algo(const cublasLtMatmulAlgo_t& a) {
  std::string s = kAlgoPrefix;
  char buf[17];
  for (uint64_t word : a.data) {
    std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(word));
    s += buf;
  }
  return s;
}
bool parse_algo(const std::string& s, cublasLtMatmulAlgo_t* a) {
  const size_t prefix = sizeof(kAlgoPrefix) - 1, words = sizeof(a->data) / sizeof(a->data[0]);
  if (s.size() != prefix + 16 * words || s.compare(0, prefix, kAlgoPrefix) != 0) return false;
  for (size_t i = 0; i < words; ++i) {
    uint64_t v = 0;
    for (size_t j = 0; j < 16; ++j) {
      const char c = s[prefix + 16 * i + j];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return false;
      v = v << 4 | static_cast<uint64_t>(d);
    }
    a->data[i] = v;
  }
  return true;
}
}  // namespace

// Row-major Y[M,N] = X[M,K] W[K,N] is column-major Y^T[N,M] = W^T[N,K] X^T[K,M]: cuBLASLt's A is W
// (N x K, ld N), B is X (K x M, ld K) and D is Y (N x M, ld N); the bias runs along D's rows, N.
LtMatmul::LtMatmul(GemmShape shape, GemmType type, Epilogue epilogue, size_t workspace_limit, int candidates,
                   cudaStream_t stream, const std::string& tactic, Fp8Inputs fp8)
    : shape_(shape), type_(type), epilogue_(epilogue), fp8_(fp8) {
  if (shape.m <= 0 || shape.n <= 0 || shape.k <= 0)
    throw CudaError("matmul: bad shape M=" + std::to_string(shape.m) + " N=" + std::to_string(shape.n) +
                    " K=" + std::to_string(shape.k));
  if (fp8.on && (type == GemmType::kF32 || shape.batch != 1))
    throw CudaError("matmul: FP8 operands need an FP16 or BF16 output and one unbatched product");
  if (fp8.on && !(std::isfinite(fp8.x_scale) && fp8.x_scale > 0 && std::isfinite(fp8.w_scale) && fp8.w_scale > 0))
    throw CudaError("matmul: FP8 scales must be positive and finite");
  const bool i8 = type == GemmType::kI8;
  if (i8 && (fp8.on || shape.batch != 1)) throw CudaError("matmul: INT8 products are unbatched and take no FP8 scales");
  if (i8 && (epilogue == Epilogue::kGelu || epilogue == Epilogue::kBiasGelu))
    throw CudaError("matmul: INT8 products take no GELU epilogue");
  if (shape.accumulate && !std::isfinite(shape.c_scale)) throw CudaError("matmul: the residual's scale must be finite");
  KILN_CUBLAS_CHECK(cublasLtCreate(&lt_));
  const cudaDataType_t dt = data_type(type);
  const cudaDataType_t in_t = fp8.on ? CUDA_R_8F_E4M3 : dt;
  const cublasComputeType_t compute =
      i8 ? CUBLAS_COMPUTE_32I : type == GemmType::kF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_, compute, CUDA_R_32F));
  const cublasOperation_t no = CUBLAS_OP_N, ta = fp8.on || i8 ? CUBLAS_OP_T : CUBLAS_OP_N;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &no, sizeof(no)));
  const cublasLtEpilogue_t epi = lt_epilogue(epilogue);
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (has_bias(epilogue)) {
    const cudaDataType_t bt = i8 ? CUDA_R_32F : dt;
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  if (i8) {
    // alpha: one FP32 per output column, in device memory; beta (the residual's scale, else 0) on
    // the host. (cuBLASLt 13.1 on the H100 has no INT8 algorithm for the "beta zero" vector mode.)
    const cublasLtPointerMode_t mode = CUBLASLT_POINTER_MODE_ALPHA_DEVICE_VECTOR_BETA_HOST;
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_POINTER_MODE, &mode, sizeof(mode)));
    alpha_scratch_ = DeviceBuffer(static_cast<size_t>(shape.n) * 4);
    KILN_CUDA_CHECK(cudaMemsetAsync(alpha_scratch_.get(), 0x30, alpha_scratch_.bytes(), stream));
  }
  if (fp8.on) {
    // The scales live on the device for the kernel's lifetime (cuBLASLt reads them at run time).
    scales_ = DeviceBuffer(32);
    const float host[8] = {fp8.w_scale, 0, 0, 0, fp8.x_scale, 0, 0, 0};
    KILN_CUDA_CHECK(cudaMemcpy(scales_.get(), host, sizeof(host), cudaMemcpyHostToDevice));
    void* sa = scales_.get();
    void* sb = static_cast<char*>(scales_.get()) + 16;
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof(sa)));
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof(sb)));
  }
  if (fp8.on || i8) {
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_, in_t, shape.k, shape.n, shape.k));  // W [N,K] row major
  } else {
    KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_, in_t, shape.n, shape.k, shape.n));
  }
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_, in_t, shape.k, shape.m, shape.k));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c_, dt, shape.n, shape.m, shape.n));
  if (shape.batch < 1 || shape.batch > 0x7fffffff || shape.w_stride < 0)
    throw CudaError("matmul: bad batch " + std::to_string(shape.batch));
  if (shape.batch > 1) {
    const int32_t count = static_cast<int32_t>(shape.batch);
    const int64_t strides[3] = {shape.w_stride, shape.m * shape.k, shape.m * shape.n};
    cublasLtMatrixLayout_t layouts[3] = {a_, b_, c_};
    for (int i = 0; i < 3; ++i) {
      KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layouts[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                         &strides[i], sizeof(strides[i])));
    }
  }

  const std::string what = (shape.batch > 1 ? std::to_string(shape.batch) + "x " : std::string()) + "matmul M=" + std::to_string(shape.m) + " N=" + std::to_string(shape.n) +
                           " K=" + std::to_string(shape.k) + " " + (fp8.on ? "fp8e4m3->" : "") + type_name(type) + " epilogue " +
                           epilogue_name(epilogue);
  if (!tactic.empty()) {
    // A recorded algorithm: parse, check against this problem, use as is.
    if (!parse_algo(tactic, &algo_)) throw CudaError(what + ": tactic '" + tactic + "' is not a cuBLASLt algorithm record");
    cublasLtMatmulHeuristicResult_t check{};
    const cublasStatus_t cs = cublasLtMatmulAlgoCheck(lt_, op_, a_, b_, c_, c_, &algo_, &check);
    if (cs != CUBLAS_STATUS_SUCCESS)
      throw CudaError(what + ": the recorded cuBLASLt algorithm does not run here (" + cublasLtGetStatusName(cs) + ")");
    if (check.workspaceSize > workspace_limit)
      throw CudaError(what + ": the recorded cuBLASLt algorithm needs " + std::to_string(check.workspaceSize) +
                      " workspace bytes, over the " + std::to_string(workspace_limit) + "-byte limit");
    workspace_ = DeviceBuffer(check.workspaceSize);
    chosen_workspace_ = check.workspaceSize;
    chosen_ = 0;
    timings_.push_back({0, -1, check.workspaceSize});
    return;
  }

  cublasLtMatmulPreference_t pref = nullptr;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &workspace_limit, sizeof(workspace_limit)));
  std::vector<cublasLtMatmulHeuristicResult_t> found(static_cast<size_t>(std::max(1, candidates)));
  int returned = 0;
  cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(lt_, op_, a_, b_, c_, c_, pref, static_cast<int>(found.size()),
                                                     found.data(), &returned);
  cublasLtMatmulPreferenceDestroy(pref);
  if (hs != CUBLAS_STATUS_SUCCESS || returned == 0)
    throw CudaError(what + ": cuBLASLt has no algorithm within a " + std::to_string(workspace_limit) +
                    "-byte workspace" + (hs != CUBLAS_STATUS_SUCCESS ? std::string(" (") + cublasLtGetStatusName(hs) + ")" : ""));

  size_t ws = 0;
  for (int i = 0; i < returned; ++i) ws = std::max(ws, found[i].workspaceSize);
  workspace_ = DeviceBuffer(ws);
  // Time every candidate on scratch operands (random-ish bytes: a constant pattern, not zeros).
  const size_t es = type_size(type), in_es = fp8.on ? 1 : es;
  const int64_t w_batches = shape.w_stride ? shape.batch : 1;
  DeviceBuffer x(static_cast<size_t>(shape.batch * shape.m * shape.k) * in_es),
      w(static_cast<size_t>(w_batches * shape.k * shape.n) * in_es),
      y(static_cast<size_t>(shape.batch * shape.m * shape.n) * es), bias(static_cast<size_t>(shape.n) * (i8 ? 4 : es));
  KILN_CUDA_CHECK(cudaMemsetAsync(x.get(), 0x3c, x.bytes(), stream));
  KILN_CUDA_CHECK(cudaMemsetAsync(w.get(), 0x31, w.bytes(), stream));
  KILN_CUDA_CHECK(cudaMemsetAsync(bias.get(), 0x30, bias.bytes(), stream));
  float best = 0;
  const float* alpha = static_cast<const float*>(alpha_scratch_.get());  // INT8 only
  for (int i = 0; i < returned; ++i) {
    AlgoTiming t;
    t.index = i;
    t.workspace = found[i].workspaceSize;
    algo_ = found[i].algo;
    try {
      t.ms = time_tactic(
          [&](cudaStream_t s) {
            run(x.get(), w.get(), bias.get(), y.get(), s, workspace_.get(), workspace_.bytes(), nullptr, alpha);
          },
          stream);
    } catch (const CudaError& e) {
      if (e.sticky()) throw;
      t.ms = -1;  // this candidate does not run here
    }
    timings_.push_back(t);
    if (t.ms >= 0 && (chosen_ < 0 || t.ms < best)) {
      chosen_ = i;
      best = t.ms;
    }
  }
  if (chosen_ < 0) throw CudaError(what + ": none of cuBLASLt's " + std::to_string(returned) + " candidates ran");
  algo_ = found[static_cast<size_t>(chosen_)].algo;
  chosen_workspace_ = found[static_cast<size_t>(chosen_)].workspaceSize;
  best_ms_ = best;
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
}

LtMatmul::~LtMatmul() {
  if (c_) cublasLtMatrixLayoutDestroy(c_);
  if (b_) cublasLtMatrixLayoutDestroy(b_);
  if (a_) cublasLtMatrixLayoutDestroy(a_);
  if (op_) cublasLtMatmulDescDestroy(op_);
  if (lt_) cublasLtDestroy(lt_);
}

void LtMatmul::run(const void* x, const void* w, const void* bias, void* y, cudaStream_t stream) const {
  run(x, w, bias, y, stream, workspace_.get(), workspace_.bytes());
}

void LtMatmul::run(const void* x, const void* w, const void* bias, void* y, cudaStream_t stream, void* workspace,
                   size_t workspace_bytes, const void* c, const float* alpha_vector) const {
  if (shape_.accumulate && !c) c = y;  // timing runs: Y itself as C
  const bool i8 = type_ == GemmType::kI8;
  if (i8 && !alpha_vector) throw CudaError("matmul: an INT8 product needs its per-column scales (alpha)");
  std::lock_guard<std::mutex> lock(run_mu_);
  if (has_bias(epilogue_)) {
    if (!bias) throw CudaError(std::string("matmul: epilogue ") + epilogue_name(epilogue_) + " needs a bias");
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  const float one = 1.f, beta = shape_.accumulate ? shape_.c_scale : 0.f;
  const void* alpha = i8 ? static_cast<const void*>(alpha_vector) : &one;
  KILN_CUBLAS_CHECK(cublasLtMatmul(lt_, op_, alpha, w, a_, x, b_, &beta, shape_.accumulate ? c : y, c_, y, c_, &algo_, workspace,
                                   workspace_bytes, stream));
}

std::string LtMatmul::tactic() const { return format_algo(algo_); }

std::string LtMatmul::describe() const {
  const std::string types = std::string(fp8_.on ? "fp8e4m3->" : "") + type_name(type_);
  if (best_ms_ < 0) return "cublasLt " + types + " " + epilogue_name(epilogue_) + ": recorded algorithm";
  std::string s = "cublasLt " + types + " " + epilogue_name(epilogue_) + ": candidate " +
                  std::to_string(chosen_) + " of " + std::to_string(timings_.size()) + " [";
  for (const AlgoTiming& t : timings_) {
    if (t.index) s += ' ';
    s += t.ms < 0 ? std::string("x") : std::to_string(t.ms);
  }
  return s + " ms]";
}

}  // namespace kiln::cuda
