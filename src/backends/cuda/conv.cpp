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
#include <deque>

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
  if (p.act == ConvAct::kSilu) add("silu");
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

const char* conv_act_name(ConvAct a) {
  switch (a) {
    case ConvAct::kNone: return "none";
    case ConvAct::kRelu: return "relu";
    case ConvAct::kClip: return "clip";
    case ConvAct::kSilu: return "silu";
  }
  return "?";
}

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

// ---- The graph API: convolution + bias + residual + activation as one cuDNN operation graph ----

namespace {

// A cuDNN backend descriptor, destroyed with its owner.
class BackendDesc {
 public:
  explicit BackendDesc(cudnnBackendDescriptorType_t t) { KILN_CUDNN_CHECK(cudnnBackendCreateDescriptor(t, &d_)); }
  ~BackendDesc() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  BackendDesc(BackendDesc&& o) noexcept : d_(o.d_) { o.d_ = nullptr; }
  BackendDesc(const BackendDesc&) = delete;
  BackendDesc& operator=(const BackendDesc&) = delete;
  BackendDesc& operator=(BackendDesc&&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }
  BackendDesc& set(cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t, int64_t count, const void* v) {
    KILN_CUDNN_CHECK(cudnnBackendSetAttribute(d_, a, t, count, v));
    return *this;
  }
  BackendDesc& set_desc(cudnnBackendAttributeName_t a, const BackendDesc& other) {
    cudnnBackendDescriptor_t o = other.get();
    return set(a, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &o);
  }
  void finalize() { KILN_CUDNN_CHECK(cudnnBackendFinalize(d_)); }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// The variant pack's unique ids.
enum : int64_t { kUidX = 1, kUidW, kUidY, kUidBias, kUidZ, kUidScale, kUidZScale, kUidYInv, kUidVirtual = 100 };

size_t cudnn_size(cudnnDataType_t t) {
  switch (t) {
    case CUDNN_DATA_FLOAT:
    case CUDNN_DATA_INT32: return 4;
    case CUDNN_DATA_HALF:
    case CUDNN_DATA_BFLOAT16: return 2;
    default: return 1;  // INT8, FP8
  }
}

}  // namespace

struct CudnnGraphConv::Impl {
  ConvParams p;
  bool quant = false;  // the 8-bit form (GraphQuant)
  GraphQuant q;
  // The tensors' types: x and w, the accumulation, the convolution's (virtual) output, bias, z, y.
  cudnnDataType_t xw = CUDNN_DATA_HALF, comp = CUDNN_DATA_FLOAT, acc = CUDNN_DATA_FLOAT, bias_t = CUDNN_DATA_HALF,
                  z_t = CUDNN_DATA_HALF, y_t = CUDNN_DATA_HALF;
  DeviceBuffer consts;  // the 8-bit form's scalars: z_scale, 1 / y_scale
  cudnnHandle_t handle = nullptr;
  std::deque<BackendDesc> keep;  // every descriptor the operation graph refers to (stable addresses)
  std::unique_ptr<BackendDesc> graph, plan;
  int index = -1, considered = 0;
  std::vector<float> timings;  // per configuration tried: ms, or -1 (did not finalize or run)
  size_t workspace = 0;
  float ms = -1;
  mutable std::mutex mu;

  ~Impl() {
    plan.reset();
    graph.reset();
    keep.clear();
    if (handle) cudnnDestroy(handle);
  }

  void set_types() {
    if (!quant) {
      xw = bias_t = z_t = y_t = cudnn_type(p.type);
      return;
    }
    const cudnnDataType_t b8 = q.fp8 ? CUDNN_DATA_FP8_E4M3 : CUDNN_DATA_INT8;
    xw = b8;
    comp = q.fp8 ? CUDNN_DATA_FLOAT : CUDNN_DATA_INT32;
    acc = comp;
    bias_t = CUDNN_DATA_FLOAT;
    z_t = q.z_8bit ? b8 : CUDNN_DATA_HALF;
    y_t = q.y_8bit ? b8 : CUDNN_DATA_HALF;
  }

  BackendDesc& tensor(int64_t uid, cudnnDataType_t dt, const int64_t dims[4], const int64_t strides[4], bool virt) {
    keep.emplace_back(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    BackendDesc& t = keep.back();
    const int64_t align = 16;
    t.set(CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt)
        .set(CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims)
        .set(CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides)
        .set(CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid)
        .set(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align)
        .set(CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt);
    t.finalize();
    return t;
  }

  // out = mode(in, b): one pointwise operation (b null for a unary one).
  BackendDesc& pointwise(cudnnPointwiseMode_t mode, const BackendDesc& in, const BackendDesc* b, const BackendDesc& out,
                         double upper_clip = 0, bool clip = false) {
    keep.emplace_back(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    BackendDesc& pw = keep.back();
    const cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    pw.set(CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode)
        .set(CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (clip) {
      const double lower = 0;
      pw.set(CUDNN_ATTR_POINTWISE_RELU_LOWER_CLIP, CUDNN_TYPE_DOUBLE, 1, &lower)
          .set(CUDNN_ATTR_POINTWISE_RELU_UPPER_CLIP, CUDNN_TYPE_DOUBLE, 1, &upper_clip);
    }
    pw.finalize();
    keep.emplace_back(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    BackendDesc& op = keep.back();
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, pw).set_desc(CUDNN_ATTR_OPERATION_POINTWISE_XDESC, in);
    if (b) op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_BDESC, *b);
    op.set_desc(CUDNN_ATTR_OPERATION_POINTWISE_YDESC, out);
    op.finalize();
    return op;
  }

  // The operation graph: conv -> (* scale[k]) -> (+ bias) -> (+ z, or z * z_scale) -> (activation)
  // -> (* 1 / y_scale), the last result in y; intermediates are virtual FP32 tensors.
  void build_graph() {
    const int64_t oh = p.out_h(), ow = p.out_w();
    // Dimensions in NCHW order, strides of NHWC memory.
    const int64_t xd[4] = {p.n, p.c, p.h, p.w}, xs[4] = {p.h * p.w * p.c, 1, p.w * p.c, p.c};
    const int64_t wd[4] = {p.k, p.c, p.r, p.s}, ws[4] = {p.r * p.s * p.c, 1, p.s * p.c, p.c};
    const int64_t yd[4] = {p.n, p.k, oh, ow}, ys[4] = {oh * ow * p.k, 1, ow * p.k, p.k};
    const int64_t bd[4] = {1, p.k, 1, 1}, bs[4] = {p.k, 1, p.k, p.k};
    const int64_t one[4] = {1, 1, 1, 1};
    const bool relu = p.act == ConvAct::kRelu || p.act == ConvAct::kClip;
    const bool z_scaled = quant && p.residual && q.z_8bit, y_scaled = quant && q.y_8bit;
    const int steps = (quant ? 1 : 0) + (p.bias ? 1 : 0) + (p.residual ? 1 : 0) + (p.act != ConvAct::kNone ? 1 : 0) +
                      (y_scaled ? 1 : 0);
    int64_t next_virtual = kUidVirtual;
    // The output of chain step i: a virtual tensor, or y for the last step.
    int step = 0;
    auto result = [&](cudnnDataType_t virtual_type = CUDNN_DATA_FLOAT) -> BackendDesc& {
      ++step;
      return step > steps ? tensor(kUidY, y_t, yd, ys, false) : tensor(next_virtual++, virtual_type, yd, ys, true);
    };
    std::vector<cudnnBackendDescriptor_t> ops;
    BackendDesc& x = tensor(kUidX, xw, xd, xs, false);
    BackendDesc& w = tensor(kUidW, xw, wd, ws, false);
    keep.emplace_back(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    BackendDesc& conv = keep.back();
    const int64_t dims = 2;
    const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    const int64_t dil[2] = {p.dil_h, p.dil_w}, stride[2] = {p.stride_h, p.stride_w}, pad[2] = {p.pad_h, p.pad_w};
    conv.set(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims)
        .set(CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp)
        .set(CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode)
        .set(CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil)
        .set(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride)
        .set(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad)
        .set(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
    conv.finalize();
    BackendDesc* cur = &result(acc);
    keep.emplace_back(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR);
    BackendDesc& conv_op = keep.back();
    const float alpha = 1.f, beta = 0.f;
    conv_op.set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, x)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, w)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, *cur)
        .set_desc(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, conv)
        .set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha)
        .set(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
    conv_op.finalize();
    ops.push_back(conv_op.get());
    // cur = mode(cur, operand) as the chain's next step.
    auto chain = [&](cudnnPointwiseMode_t m, const BackendDesc* operand) {
      BackendDesc& out = result();
      ops.push_back(pointwise(m, *cur, operand, out).get());
      cur = &out;
    };
    if (quant) chain(CUDNN_POINTWISE_MUL, &tensor(kUidScale, CUDNN_DATA_FLOAT, bd, bs, false));
    if (p.bias) chain(CUDNN_POINTWISE_ADD, &tensor(kUidBias, bias_t, bd, bs, false));
    if (p.residual) {
      BackendDesc* z = &tensor(kUidZ, z_t, yd, ys, false);
      if (z_scaled) {  // z * z_scale, off the chain
        BackendDesc& zz = tensor(next_virtual++, CUDNN_DATA_FLOAT, yd, ys, true);
        ops.push_back(pointwise(CUDNN_POINTWISE_MUL, *z, &tensor(kUidZScale, CUDNN_DATA_FLOAT, one, one, false), zz).get());
        z = &zz;
      }
      chain(CUDNN_POINTWISE_ADD, z);
    }
    if (p.act != ConvAct::kNone) {
      BackendDesc& out = result();
      if (relu) {
        const double upper = p.act == ConvAct::kClip ? p.clip_hi : static_cast<double>(3.4e38f);
        ops.push_back(pointwise(CUDNN_POINTWISE_RELU_FWD, *cur, nullptr, out, upper, true).get());
      } else {
        ops.push_back(pointwise(CUDNN_POINTWISE_SWISH_FWD, *cur, nullptr, out).get());
      }
      cur = &out;
    }
    if (y_scaled) chain(CUDNN_POINTWISE_MUL, &tensor(kUidYInv, CUDNN_DATA_FLOAT, one, one, false));
    graph = std::make_unique<BackendDesc>(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    graph->set(CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(ops.size()), ops.data())
        .set(CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle);
    graph->finalize();
  }

  // The heuristic's engine configurations, best first.
  std::vector<BackendDesc> configs() {
    BackendDesc heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    heur.set_desc(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, *graph).set(CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    heur.finalize();
    int64_t count = 0;
    KILN_CUDNN_CHECK(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                              &count, nullptr));
    std::vector<BackendDesc> out;
    std::vector<cudnnBackendDescriptor_t> raw;
    for (int64_t i = 0; i < count; ++i) {
      out.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      raw.push_back(out.back().get());
    }
    int64_t returned = 0;
    if (count > 0)
      KILN_CUDNN_CHECK(cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                                count, &returned, raw.data()));
    while (static_cast<int64_t>(out.size()) > std::max<int64_t>(0, returned)) out.pop_back();
    return out;
  }

  // The execution plan of one configuration; null (and why) when it does not finalize.
  std::unique_ptr<BackendDesc> make_plan(const BackendDesc& cfg, size_t limit, size_t* ws, std::string* why) {
    try {
      auto pl = std::make_unique<BackendDesc>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      pl->set(CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle)
          .set_desc(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfg);
      pl->finalize();
      int64_t bytes = 0, n = 0;
      KILN_CUDNN_CHECK(cudnnBackendGetAttribute(pl->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1,
                                                &n, &bytes));
      if (bytes < 0 || static_cast<size_t>(bytes) > limit) {
        *why = "needs " + std::to_string(bytes) + " workspace bytes, over the " + std::to_string(limit) + "-byte limit";
        return nullptr;
      }
      *ws = static_cast<size_t>(bytes);
      return pl;
    } catch (const CudaError& e) {
      *why = e.what();
      return nullptr;
    }
  }

  void execute(const BackendDesc& pl, const void* x, const void* w, const void* scale, const void* bias, const void* z,
               void* y, cudaStream_t stream, void* ws) const {
    std::vector<int64_t> uids = {kUidX, kUidW, kUidY};
    std::vector<void*> ptrs = {const_cast<void*>(x), const_cast<void*>(w), y};
    if (quant) uids.push_back(kUidScale), ptrs.push_back(const_cast<void*>(scale));
    if (p.bias) uids.push_back(kUidBias), ptrs.push_back(const_cast<void*>(bias));
    if (p.residual) uids.push_back(kUidZ), ptrs.push_back(const_cast<void*>(z));
    if (quant && p.residual && q.z_8bit) uids.push_back(kUidZScale), ptrs.push_back(consts.as<float>());
    if (quant && q.y_8bit) uids.push_back(kUidYInv), ptrs.push_back(consts.as<float>() + 4);
    BackendDesc pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    pack.set(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, static_cast<int64_t>(uids.size()), uids.data())
        .set(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, static_cast<int64_t>(ptrs.size()), ptrs.data())
        .set(CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    pack.finalize();
    KILN_CUDNN_CHECK(cudnnSetStream(handle, stream));
    KILN_CUDNN_CHECK(cudnnBackendExecute(handle, pl.get(), pack.get()));
  }

  // Builds the graph and picks its configuration: the recorded `tactic`, or the fastest of the first
  // `candidates` that finalize within `limit`, timed on scratch operands.
  void choose(cudaStream_t stream, size_t limit, const std::string& tactic, int candidates, const std::string& what) {
    KILN_CUDNN_CHECK(cudnnCreate(&handle));
    KILN_CUDNN_CHECK(cudnnSetStream(handle, stream));
    set_types();
    if (quant) {
      consts = DeviceBuffer(32);  // z_scale at 0, 1 / y_scale at 16 (each 16-byte aligned)
      const float host[8] = {q.z_scale, 0, 0, 0, 1.f / q.y_scale, 0, 0, 0};
      KILN_CUDA_CHECK(cudaMemcpy(consts.get(), host, sizeof(host), cudaMemcpyHostToDevice));
    }
    build_graph();
    std::vector<BackendDesc> cfgs = configs();
    const std::string prefix = quant ? "graph8:" : "graph:";
    if (!tactic.empty()) {
      int i = -1;
      char tail = 0;
      if (tactic.rfind(prefix, 0) != 0 || std::sscanf(tactic.c_str() + prefix.size(), "%d%c", &i, &tail) != 1 || i < 0)
        throw CudaError(what + ": tactic '" + tactic + "' is not a cuDNN graph configuration");
      if (static_cast<size_t>(i) >= cfgs.size())
        throw CudaError(what + ": configuration " + std::to_string(i) + " is not among cuDNN's " +
                        std::to_string(cfgs.size()) + " here");
      std::string why;
      plan = make_plan(cfgs[static_cast<size_t>(i)], limit, &workspace, &why);
      if (!plan) throw CudaError(what + ": the recorded configuration " + std::to_string(i) + " does not run here: " + why);
      index = i;
      considered = 1;
      return;
    }
    const int64_t ny = p.n * p.out_h() * p.out_w() * p.k;
    DeviceBuffer x(static_cast<size_t>(p.n * p.h * p.w * p.c) * cudnn_size(xw)),
        w(static_cast<size_t>(p.k * p.r * p.s * p.c) * cudnn_size(xw)), sc(static_cast<size_t>(p.k) * 4),
        b(static_cast<size_t>(p.k) * cudnn_size(bias_t)), z(static_cast<size_t>(ny) * cudnn_size(z_t)),
        y(static_cast<size_t>(ny) * cudnn_size(y_t));
    KILN_CUDA_CHECK(cudaMemsetAsync(x.get(), 0x3c, x.bytes(), stream));
    KILN_CUDA_CHECK(cudaMemsetAsync(w.get(), 0x31, w.bytes(), stream));
    for (DeviceBuffer* buf : {&sc, &b, &z}) KILN_CUDA_CHECK(cudaMemsetAsync(buf->get(), 0x30, buf->bytes(), stream));
    std::string last_error = "cuDNN's heuristics returned no configuration";
    for (size_t i = 0; i < cfgs.size() && considered < candidates; ++i) {
      size_t ws_bytes = 0;
      std::string why;
      std::unique_ptr<BackendDesc> pl = make_plan(cfgs[i], limit, &ws_bytes, &why);
      if (!pl) {
        timings.push_back(-1);
        last_error = why;
        continue;
      }
      ++considered;
      float t = -1;
      try {
        DeviceBuffer wsb(ws_bytes);
        t = time_tactic(
            [&](cudaStream_t s) { execute(*pl, x.get(), w.get(), sc.get(), b.get(), z.get(), y.get(), s, wsb.get()); },
            stream);
      } catch (const CudaError& e) {
        if (e.sticky()) throw;
        last_error = e.what();
      }
      timings.push_back(t);
      if (t >= 0 && (ms < 0 || t < ms)) {
        ms = t, index = static_cast<int>(i), workspace = ws_bytes;
        plan = std::move(pl);
      }
    }
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (!plan) throw CudaError(what + ": no configuration ran (" + last_error + ")");
  }
};

namespace {
// What neither form of the graph takes.
std::string graph_form_unsupported(const ConvParams& p) {
  if (p.groups != 1) return "the graph path takes ungrouped convolutions";
  if (p.act == ConvAct::kClip && p.clip_lo != 0) return "the graph path clips at 0 from below (ReLU with a ceiling)";
  return {};
}
}  // namespace

std::string conv_graph_unsupported(const ConvParams& p) {
  if (p.type != DType::kF16 && p.type != DType::kBF16) return "the graph path takes FP16 and BF16 convolutions";
  if (std::string why = graph_form_unsupported(p); !why.empty()) return why;
  if ((p.c * 2) % 16 != 0 || (p.k * 2) % 16 != 0) return "the graph path needs channels in multiples of 8";
  return {};
}

std::string conv_graph_quant_unsupported(const ConvParams& p, const GraphQuant& q) {
  if (std::string why = graph_form_unsupported(p); !why.empty()) return why;
  if (p.act == ConvAct::kSilu) return "the 8-bit graph has no SiLU epilogue";
  if (p.c % 16 != 0 || p.k % 16 != 0) return "the 8-bit graph needs channels in multiples of 16";
  if (!(q.y_scale > 0) || !std::isfinite(1.f / q.y_scale)) return "the output scale must be positive and finite";
  if (p.residual && (!(q.z_scale > 0) || !std::isfinite(q.z_scale))) return "the residual scale must be positive and finite";
  return {};
}

CudnnGraphConv::CudnnGraphConv(const ConvParams& p, size_t workspace_limit, cudaStream_t stream, const std::string& tactic,
                               int candidates)
    : impl_(std::make_unique<Impl>()) {
  validate(p);
  if (const std::string why = conv_graph_unsupported(p); !why.empty()) throw CudaError("conv " + p.str() + ": " + why);
  impl_->p = p;
  impl_->choose(stream, workspace_limit, tactic, candidates, "conv " + p.str() + " (cuDNN graph)");
}

CudnnGraphConv::CudnnGraphConv(const ConvParams& p, const GraphQuant& q, size_t workspace_limit, cudaStream_t stream,
                               const std::string& tactic, int candidates)
    : impl_(std::make_unique<Impl>()) {
  validate(p);
  const std::string what = "conv " + p.str() + " (cuDNN graph, " + (q.fp8 ? "fp8" : "int8") + ")";
  if (const std::string why = conv_graph_quant_unsupported(p, q); !why.empty()) throw CudaError(what + ": " + why);
  impl_->p = p;
  impl_->quant = true;
  impl_->q = q;
  impl_->choose(stream, workspace_limit, tactic, candidates, what);
}

CudnnGraphConv::~CudnnGraphConv() = default;

void CudnnGraphConv::run(const void* x, const void* w, const void* bias, const void* z, void* y, cudaStream_t stream,
                         void* workspace, size_t workspace_bytes) const {
  run_quant(x, w, nullptr, bias, z, y, stream, workspace, workspace_bytes);
}

void CudnnGraphConv::run_quant(const void* x, const void* w, const float* scale, const void* bias, const void* z, void* y,
                               cudaStream_t stream, void* workspace, size_t workspace_bytes) const {
  const Impl& m = *impl_;
  if (!x || !w || !y || (m.quant && !scale) || (m.p.bias && !bias) || (m.p.residual && !z))
    throw CudaError("conv " + m.p.str() +
                    " (cuDNN graph): x, w, y and the scales, bias and residual it was built with must not be null");
  if (workspace_bytes < m.workspace || (m.workspace && !workspace))
    throw CudaError("conv " + m.p.str() + " (cuDNN graph): needs " + std::to_string(m.workspace) + " workspace bytes");
  std::lock_guard<std::mutex> lock(m.mu);
  m.execute(*m.plan, x, w, scale, bias, z, y, stream, workspace);
}

size_t CudnnGraphConv::workspace_bytes() const { return impl_->workspace; }
float CudnnGraphConv::chosen_ms() const { return impl_->ms; }
std::string CudnnGraphConv::tactic() const {
  return (impl_->quant ? "graph8:" : "graph:") + std::to_string(impl_->index);
}

std::string CudnnGraphConv::describe() const {
  const Impl& m = *impl_;
  const std::string type = !m.quant ? dtype_name(m.p.type)
                           : std::string(m.q.fp8 ? "fp8" : "int8") + " -> " +
                                 (m.q.y_8bit ? (m.q.fp8 ? "fp8" : "int8") : "fp16");
  std::string s = std::string("cudnn graph conv+") + (m.quant ? "scale+" : "") + epilogue_str(m.p) + " nhwc " + type +
                  ": config " + std::to_string(m.index);
  if (m.ms < 0) return s + " (recorded tactic)";
  s += " of " + std::to_string(m.timings.size()) + " [";
  for (size_t i = 0; i < m.timings.size(); ++i) {
    if (i) s += ' ';
    s += m.timings[i] < 0 ? std::string("x") : std::to_string(m.timings[i]);
  }
  return s + " ms]";
}

}  // namespace kiln::cuda
