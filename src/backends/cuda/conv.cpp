// 2-D NHWC convolution on cuDNN with a fused bias + residual + activation epilogue (see conv.h).
// cuDNN 9's legacy convolution API is deprecated but complete for this (and far more compact than
// building operation graphs), so its deprecation warnings are silenced in this file only.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#include "backends/cuda/conv.h"

#include <cudnn.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>

namespace kiln::cuda {

namespace {

// Throws CudaError for a failed cuDNN status: "<call>: <status string> (<cuDNN's last message>)".
void check_cudnn(cudnnStatus_t s, const char* what) {
  if (s == CUDNN_STATUS_SUCCESS) return;
  char detail[512] = {0};
  cudnnGetLastErrorString(detail, sizeof(detail));
  throw CudaError(std::string(what) + ": " + cudnnGetErrorString(s) +
                  (detail[0] ? std::string(" (") + detail + ")" : ""));
}
#define KILN_CUDNN_CHECK(call) check_cudnn((call), #call)

const char* algo_name(int a) {
  static const char* const names[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT", "FFT", "FFT_TILING",
                                      "WINOGRAD",      "WINOGRAD_NONFUSED"};
  return a >= 0 && a < 8 ? names[a] : "?";
}

cudnnDataType_t cudnn_type(DType t) {
  return t == DType::kF32 ? CUDNN_DATA_FLOAT : t == DType::kF16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;
}
size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

std::string fmt(float v) {
  std::string s = std::to_string(v);
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// "bias+residual+relu", "clip[-1,1]", "plain" (no epilogue).
std::string epilogue_str(const ConvParams& p) {
  std::string s;
  auto add = [&](const std::string& part) { s += (s.empty() ? "" : "+") + part; };
  if (p.bias) add("bias");
  if (p.residual) add("residual");
  if (p.act == ConvAct::kRelu) add("relu");
  if (p.act == ConvAct::kClip) add("clip[" + fmt(p.clip_lo) + "," + fmt(p.clip_hi) + "]");
  return s.empty() ? "plain" : s;
}

int64_t out_dim(int64_t in, int pad, int64_t kernel, int dil, int stride) {
  if (stride <= 0 || dil <= 0 || kernel <= 0) return 0;
  const int64_t span = in + 2 * int64_t{pad} - int64_t{dil} * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

// Throws CudaError naming the first parameter cuDNN (or the convolution itself) cannot take.
void validate(const ConvParams& p) {
  const std::string what = "conv " + p.str() + ": ";
  if (p.n <= 0 || p.c <= 0 || p.h <= 0 || p.w <= 0 || p.k <= 0 || p.r <= 0 || p.s <= 0)
    throw CudaError(what + "every dimension (n, c, h, w, k, r, s) must be positive");
  if (p.groups < 1) throw CudaError(what + "groups must be at least 1");
  if (p.c % p.groups != 0)
    throw CudaError(what + "input channels c=" + std::to_string(p.c) +
                    " are not divisible by groups=" + std::to_string(p.groups));
  if (p.k % p.groups != 0)
    throw CudaError(what + "output channels k=" + std::to_string(p.k) +
                    " are not divisible by groups=" + std::to_string(p.groups));
  if (p.pad_h < 0 || p.pad_w < 0) throw CudaError(what + "padding must not be negative");
  if (p.stride_h < 1 || p.stride_w < 1) throw CudaError(what + "strides must be at least 1");
  if (p.dil_h < 1 || p.dil_w < 1) throw CudaError(what + "dilations must be at least 1");
  if (p.out_h() < 1 || p.out_w() < 1)
    throw CudaError(what + "the kernel (" + std::to_string(p.dil_h * (p.r - 1) + 1) + "x" +
                    std::to_string(p.dil_w * (p.s - 1) + 1) + " dilated) is larger than the padded input (" +
                    std::to_string(p.h + 2 * p.pad_h) + "x" + std::to_string(p.w + 2 * p.pad_w) + ")");
  if (p.act == ConvAct::kClip && !(p.clip_lo <= p.clip_hi))
    throw CudaError(what + "clip_lo " + fmt(p.clip_lo) + " is above clip_hi " + fmt(p.clip_hi));
  const int64_t x = p.n * p.h * p.w * p.c, y = p.n * p.out_h() * p.out_w() * p.k,
                w = p.k * p.r * p.s * (p.c / p.groups);
  if (std::max({x, y, w}) > INT_MAX)
    throw CudaError(what + "a tensor has more than 2^31 - 1 elements, beyond cuDNN's 32-bit descriptors");
}

}  // namespace

const char* conv_act_name(ConvAct a) { return a == ConvAct::kNone ? "none" : a == ConvAct::kRelu ? "relu" : "clip"; }

int64_t ConvParams::out_h() const { return out_dim(h, pad_h, r, dil_h, stride_h); }
int64_t ConvParams::out_w() const { return out_dim(w, pad_w, s, dil_w, stride_w); }

std::string ConvParams::str() const {
  // snprintf rather than a chain of operator+ (GCC 12 warns falsely about those under -O3).
  char buf[256];
  std::snprintf(
      buf, sizeof(buf), "n%lld c%lld %lldx%lld -> k%lld %lldx%lld pad %d,%d stride %d,%d dil %d,%d groups %lld %s ",
      static_cast<long long>(n), static_cast<long long>(c), static_cast<long long>(h), static_cast<long long>(w),
      static_cast<long long>(k), static_cast<long long>(r), static_cast<long long>(s), pad_h, pad_w, stride_h, stride_w,
      dil_h, dil_w, static_cast<long long>(groups), dtype_name(type));
  return buf + epilogue_str(*this);
}

CudnnConv::CudnnConv(const ConvParams& p, size_t workspace_limit, cudaStream_t stream, const std::string& tactic)
    : p_(p) {
  validate(p);
  try {
    const cudnnDataType_t dt = cudnn_type(p.type);
    const int64_t oh = p.out_h(), ow = p.out_w();
    KILN_CUDNN_CHECK(cudnnCreate(&handle_));
    KILN_CUDNN_CHECK(cudnnSetStream(handle_, stream));
    KILN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x_desc_));
    KILN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y_desc_));
    KILN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bias_desc_));
    KILN_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w_desc_));
    KILN_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv_desc_));
    KILN_CUDNN_CHECK(cudnnCreateActivationDescriptor(&act_desc_));
    const auto i = [](int64_t v) { return static_cast<int>(v); };  // validate() bounded every size
    KILN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x_desc_, CUDNN_TENSOR_NHWC, dt, i(p.n), i(p.c), i(p.h), i(p.w)));
    KILN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y_desc_, CUDNN_TENSOR_NHWC, dt, i(p.n), i(p.k), i(oh), i(ow)));
    KILN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(bias_desc_, CUDNN_TENSOR_NHWC, dt, 1, i(p.k), 1, 1));
    KILN_CUDNN_CHECK(
        cudnnSetFilter4dDescriptor(w_desc_, dt, CUDNN_TENSOR_NHWC, i(p.k), i(p.c / p.groups), i(p.r), i(p.s)));
    // FP32 accumulation for every type (FP16 accumulation loses too much over deep reductions).
    KILN_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv_desc_, p.pad_h, p.pad_w, p.stride_h, p.stride_w, p.dil_h,
                                                     p.dil_w, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    KILN_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv_desc_, i(p.groups)));
    // DEFAULT math lets FP32 run on TF32 tensor cores; FP16/BF16 ask for tensor cores outright.
    KILN_CUDNN_CHECK(
        cudnnSetConvolutionMathType(conv_desc_, p.type == DType::kF32 ? CUDNN_DEFAULT_MATH : CUDNN_TENSOR_OP_MATH));
    int dims[4] = {0, 0, 0, 0};
    KILN_CUDNN_CHECK(
        cudnnGetConvolution2dForwardOutputDim(conv_desc_, x_desc_, w_desc_, &dims[0], &dims[1], &dims[2], &dims[3]));
    if (dims[0] != p.n || dims[1] != p.k || dims[2] != oh || dims[3] != ow)
      throw CudaError("conv " + p.str() + ": cuDNN computes output " + std::to_string(dims[2]) + "x" +
                      std::to_string(dims[3]) + ", expected " + std::to_string(oh) + "x" + std::to_string(ow));

    // cuDNN fuses ReLU and ClippedReLU (min(max(v, 0), coef)); IDENTITY only with IMPLICIT_PRECOMP_GEMM.
    // A clip with another floor runs cuDNN's plain convolution and Kiln's epilogue kernel.
    const bool fusable = p.act == ConvAct::kRelu || (p.act == ConvAct::kClip && p.clip_lo == 0 && p.clip_hi > 0) ||
                         (p.act == ConvAct::kNone && (p.bias || p.residual));
    const cudnnActivationMode_t mode = p.act == ConvAct::kRelu   ? CUDNN_ACTIVATION_RELU
                                       : p.act == ConvAct::kClip ? CUDNN_ACTIVATION_CLIPPED_RELU
                                                                 : CUDNN_ACTIVATION_IDENTITY;
    KILN_CUDNN_CHECK(cudnnSetActivationDescriptor(act_desc_, mode, CUDNN_PROPAGATE_NAN, p.clip_hi));

    // Candidates: every (algorithm, math type) cuDNN's heuristics consider supported, within the limit.
    int max_algos = 0;
    KILN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(handle_, &max_algos));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(static_cast<size_t>(std::max(max_algos, 1)) * 2);
    int returned = 0;
    KILN_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle_, x_desc_, w_desc_, conv_desc_, y_desc_,
                                                            static_cast<int>(perf.size()), &returned, perf.data()));
    std::vector<ConvTiming> candidates;
    size_t ws_max = 0;
    for (int j = 0; j < returned; ++j) {
      const cudnnConvolutionFwdAlgoPerf_t& q = perf[static_cast<size_t>(j)];
      if (q.status != CUDNN_STATUS_SUCCESS) continue;
      if (std::any_of(candidates.begin(), candidates.end(),
                      [&](const ConvTiming& t) { return t.algo == q.algo && t.math_type == q.mathType; }))
        continue;
      size_t ws = q.memory;
      if (cudnnSetConvolutionMathType(conv_desc_, q.mathType) != CUDNN_STATUS_SUCCESS ||
          cudnnGetConvolutionForwardWorkspaceSize(handle_, x_desc_, w_desc_, conv_desc_, y_desc_, q.algo, &ws) !=
              CUDNN_STATUS_SUCCESS)
        continue;
      ws = std::max(ws, q.memory);
      if (ws > workspace_limit) continue;
      ws_max = std::max(ws_max, ws);
      const bool fused =
          fusable && (p.act != ConvAct::kNone || q.algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM);
      if (fused) candidates.push_back({q.algo, q.mathType, true, ws, -1});
      candidates.push_back({q.algo, q.mathType, false, ws, -1});
    }
    if (candidates.empty())
      throw CudaError("conv " + p.str() + ": cuDNN has no forward algorithm for it within a " +
                      std::to_string(workspace_limit) + "-byte workspace");
    if (!tactic.empty()) {
      // A recorded candidate: it must be one cuDNN offers here within the limit; used untimed.
      int algo = -1, math = -1, fused = -1;
      char tail = 0;
      if (std::sscanf(tactic.c_str(), "cudnn:%d:%d:%d%c", &algo, &math, &fused, &tail) != 3 || fused < 0 || fused > 1)
        throw CudaError("conv " + p.str() + ": tactic '" + tactic + "' is not a cuDNN candidate record");
      auto it = std::find_if(candidates.begin(), candidates.end(), [&](const ConvTiming& t) {
        return t.algo == algo && t.math_type == math && t.fused == (fused == 1);
      });
      if (it == candidates.end())
        throw CudaError("conv " + p.str() + ": the recorded cuDNN candidate '" + tactic + "' is not offered here");
      const ConvTiming forced = *it;
      candidates = {forced};
      ws_max = forced.workspace;
    }

    // Time each candidate on scratch operands (a constant nonzero byte pattern) through enqueue(),
    // the very call run() makes, as a CUDA graph replays it (time_tactic).
    // A recorded tactic allocates no scratch operands: nothing is timed.
    const bool timing = tactic.empty();
    const size_t es = dtype_size(p.type), y_bytes = static_cast<size_t>(p.n * oh * ow * p.k) * es;
    DeviceBuffer x(timing ? static_cast<size_t>(p.n * p.h * p.w * p.c) * es : 0),
        w(timing ? static_cast<size_t>(p.k * p.r * p.s * (p.c / p.groups)) * es : 0), y(timing ? y_bytes : 0),
        bias(timing ? static_cast<size_t>(p.k) * es : 0), z(timing && p.residual ? y_bytes : 0);
    if (timing) {
      KILN_CUDA_CHECK(cudaMemsetAsync(x.get(), 0x3c, x.bytes(), stream));
      KILN_CUDA_CHECK(cudaMemsetAsync(w.get(), 0x31, w.bytes(), stream));
      KILN_CUDA_CHECK(cudaMemsetAsync(bias.get(), 0x30, bias.bytes(), stream));
      if (p.residual) KILN_CUDA_CHECK(cudaMemsetAsync(z.get(), 0x30, z.bytes(), stream));
    }
    if (fusable && !p.bias) {
      zero_bias_ = DeviceBuffer(static_cast<size_t>(p.k) * es);
      KILN_CUDA_CHECK(cudaMemsetAsync(zero_bias_.get(), 0, zero_bias_.bytes(), stream));
    }
    workspace_ = DeviceBuffer(ws_max);
    std::string last_error;
    if (!timing) {
      timings_ = candidates;
      chosen_ = 0;
    }
    for (ConvTiming& t : candidates) {
      if (!timing) break;
      try {
        KILN_CUDNN_CHECK(cudnnSetConvolutionMathType(conv_desc_, static_cast<cudnnMathType_t>(t.math_type)));
        const void* b = p.bias ? bias.get() : nullptr;
        const void* zz = p.residual ? z.get() : nullptr;
        t.ms = time_tactic([&](cudaStream_t s) { enqueue(t, x.get(), w.get(), b, zz, y.get(), s, workspace_.get()); },
                           stream);
      } catch (const CudaError& e) {
        if (e.sticky()) throw;
        t.ms = -1;  // this candidate does not run here
        last_error = e.what();
      }
      timings_.push_back(t);
      const int idx = static_cast<int>(timings_.size()) - 1;
      if (t.ms >= 0 && (chosen_ < 0 || t.ms < timings_[static_cast<size_t>(chosen_)].ms)) chosen_ = idx;
    }
    if (chosen_ < 0)
      throw CudaError("conv " + p.str() + ": none of cuDNN's " + std::to_string(timings_.size()) +
                      " candidates ran (last error: " + last_error + ")");
    const ConvTiming& best = timings_[static_cast<size_t>(chosen_)];
    KILN_CUDNN_CHECK(cudnnSetConvolutionMathType(conv_desc_, static_cast<cudnnMathType_t>(best.math_type)));
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));  // the scratch buffers and old workspace are freed next
    if (best.workspace != workspace_.bytes()) workspace_ = DeviceBuffer(best.workspace);
    if (!best.fused) zero_bias_ = DeviceBuffer();
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&workspace_free_, cudaEventDisableTiming));
  } catch (...) {
    release();
    throw;
  }
}

void CudnnConv::release() {
  if (act_desc_) cudnnDestroyActivationDescriptor(act_desc_);
  if (conv_desc_) cudnnDestroyConvolutionDescriptor(conv_desc_);
  if (w_desc_) cudnnDestroyFilterDescriptor(w_desc_);
  if (bias_desc_) cudnnDestroyTensorDescriptor(bias_desc_);
  if (y_desc_) cudnnDestroyTensorDescriptor(y_desc_);
  if (x_desc_) cudnnDestroyTensorDescriptor(x_desc_);
  if (handle_) cudnnDestroy(handle_);
  if (workspace_free_) cudaEventDestroy(workspace_free_);
  workspace_free_ = nullptr;
  act_desc_ = nullptr, conv_desc_ = nullptr, w_desc_ = nullptr, bias_desc_ = y_desc_ = x_desc_ = nullptr;
  handle_ = nullptr;
}

CudnnConv::~CudnnConv() { release(); }

void CudnnConv::enqueue(const ConvTiming& t, const void* x, const void* w, const void* bias, const void* z, void* y,
                        cudaStream_t stream, void* workspace) const {
  KILN_CUDNN_CHECK(cudnnSetStream(handle_, stream));
  const auto algo = static_cast<cudnnConvolutionFwdAlgo_t>(t.algo);
  const float one = 1.f, zero = 0.f;
  if (t.fused) {
    // y = act(1 * conv + alpha2 * z + bias); without a residual z is y itself, scaled by 0.
    KILN_CUDNN_CHECK(cudnnConvolutionBiasActivationForward(
        handle_, &one, x_desc_, x, w_desc_, w, conv_desc_, algo, workspace, t.workspace, z ? &one : &zero, y_desc_,
        z ? z : y, bias_desc_, bias ? bias : zero_bias_.get(), act_desc_, y_desc_, y));
    return;
  }
  // An in-place residual (z == y) is accumulated by cuDNN itself (beta = 1): the convolution would
  // otherwise overwrite z before the epilogue reads it.
  const bool accumulate = z != nullptr && z == y;
  KILN_CUDNN_CHECK(cudnnConvolutionForward(handle_, &one, x_desc_, x, w_desc_, w, conv_desc_, algo, workspace,
                                           t.workspace, accumulate ? &one : &zero, y_desc_, y));
  const void* zz = accumulate ? nullptr : z;
  if (bias || zz || p_.act != ConvAct::kNone)
    conv_epilogue(p_.type, y, bias, zz, p_.n * p_.out_h() * p_.out_w() * p_.k, p_.k, p_.act, p_.clip_lo, p_.clip_hi,
                  stream);
}

void CudnnConv::check_args(const void* x, const void* w, const void* bias, const void* z, const void* y) const {
  if (!x || !w || !y) throw CudaError("conv " + p_.str() + ": x, w and y must not be null");
  if ((bias != nullptr) != p_.bias)
    throw CudaError("conv " + p_.str() + (p_.bias ? ": needs a bias" : ": was built without a bias, got one"));
  if ((z != nullptr) != p_.residual)
    throw CudaError("conv " + p_.str() +
                    (p_.residual ? ": needs a residual z" : ": was built without a residual, got one"));
}

void CudnnConv::run(const void* x, const void* w, const void* bias, const void* z, void* y, cudaStream_t stream) const {
  check_args(x, w, bias, z, y);
  const ConvTiming& t = timings_[static_cast<size_t>(chosen_)];
  std::lock_guard<std::mutex> lock(run_mu_);  // the handle's stream is shared state
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  KILN_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  // The previous run on the shared workspace may still be executing on another stream.
  const bool order = t.workspace > 0 && capture == cudaStreamCaptureStatusNone;
  if (order) KILN_CUDA_CHECK(cudaStreamWaitEvent(stream, workspace_free_, 0));
  enqueue(t, x, w, bias, z, y, stream, workspace_.get());
  if (order) KILN_CUDA_CHECK(cudaEventRecord(workspace_free_, stream));
}

void CudnnConv::run(const void* x, const void* w, const void* bias, const void* z, void* y, cudaStream_t stream,
                    void* workspace, size_t workspace_bytes) const {
  check_args(x, w, bias, z, y);
  const ConvTiming& t = timings_[static_cast<size_t>(chosen_)];
  if (workspace_bytes < t.workspace || (t.workspace > 0 && !workspace))
    throw CudaError("conv " + p_.str() + ": needs a " + std::to_string(t.workspace) + "-byte workspace, got " +
                    std::to_string(workspace_bytes));
  std::lock_guard<std::mutex> lock(run_mu_);  // the handle's stream is shared state
  enqueue(t, x, w, bias, z, y, stream, workspace);
}

std::string CudnnConv::tactic() const {
  if (chosen_ < 0) return {};
  const ConvTiming& t = timings_[static_cast<size_t>(chosen_)];
  return "cudnn:" + std::to_string(t.algo) + ":" + std::to_string(t.math_type) + ":" + (t.fused ? "1" : "0");
}

std::string CudnnConv::describe() const {
  const ConvTiming& t = timings_[static_cast<size_t>(chosen_)];
  std::string s = std::string("cudnn fwd algo ") + algo_name(t.algo) + " " + epilogue_str(p_);
  if (p_.bias || p_.residual || p_.act != ConvAct::kNone) s += t.fused ? " (fused)" : " (kiln epilogue)";
  if (p_.groups > 1) s += " groups " + std::to_string(p_.groups);
  if (t.ms < 0) return s + " nhwc " + dtype_name(p_.type) + " (recorded tactic)";
  char ms[32];
  std::snprintf(ms, sizeof(ms), "%.3f", t.ms);
  return s + " nhwc " + dtype_name(p_.type) + " (" + ms + " ms, best of " + std::to_string(timings_.size()) + ")";
}

}  // namespace kiln::cuda
