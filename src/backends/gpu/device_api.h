// The interface between Kiln's core and a GPU backend module (libkiln_cuda.so), loaded with dlopen
// at run time (src/backends/gpu/loader.h). The core compiles graphs into GPU programs
// (gpu_program.h) from the kernels a Device makes; the module owns everything CUDA. Neither side
// links the other: the core never needs the CUDA libraries, the module never needs oneDNN.
//
// The header is plain C++ (no CUDA types): streams, events and graphs are opaque pointers. Both
// sides are built by the same compiler from the same tree; kApiVersion guards against mixing
// builds. Errors cross the boundary as std::runtime_error (the module's CudaError derives from it);
// DeviceError-like stickiness is reported through Device::broken().
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace kiln::gpu {

inline constexpr int kApiVersion = 11;

// Element types of device tensors. kBool is one byte, 0 or 1. kF8E4M3 is FP8 E4M3FN (one byte;
// conversions to it round to nearest even and saturate at +-448): the activations and weights of
// FP8 GEMMs, always beside a scale.
enum class ElemType : uint8_t { kF32, kF16, kBF16, kF64, kI64, kI32, kI8, kU8, kBool, kF8E4M3 };

constexpr int kMaxRank = 6;

// y[sum_d i_d * y_strides[d]] = convert(x[sum_d i_d * x_strides[d]]) for every index i < dims.
// Strides count elements and may be 0 (broadcast) or negative (reversed slices).
// pad_channels > 0 (rank 4, dims the logical [N, C, H, W]): y is a dense NHWC tensor of
// pad_channels >= C channels per pixel (y_strides must say so) whose channels C.. are written as
// zeros: a few-channel image padded for the tensor cores (a first convolution over C = 3).
struct StridedCopy {
  int rank = 0;
  int64_t dims[kMaxRank] = {};
  int64_t x_strides[kMaxRank] = {};
  int64_t y_strides[kMaxRank] = {};
  int64_t pad_channels = 0;
};
// Whether a copy with pad_channels is well formed (modules refuse the others when they make it).
inline bool channel_pad_ok(const StridedCopy& c) {
  if (c.pad_channels <= 0) return true;
  if (c.rank != 4 || c.pad_channels < c.dims[1] || c.pad_channels > 64) return false;
  const int64_t p = c.pad_channels, want[4] = {c.dims[2] * c.dims[3] * p, 1, c.dims[3] * p, p};
  for (int d = 0; d < 4; ++d)
    if (c.y_strides[d] != want[d]) return false;
  return true;
}

// The elementwise interpreter: per output element an FP32 accumulator runs the steps in order;
// `a`/`b` name inputs, read at the element's broadcast offset (per-input strides over the output
// dims, 0 where it broadcasts).
enum class EwOp : uint8_t {
  kLoad,  // acc = in[a]
  // acc = acc <op> in[a]  (reversed: in[a] <op> acc)
  kAdd, kSub, kMul, kDiv, kPow, kMin, kMax, kMod,
  // acc = (acc <op> in[a]) ? 1 : 0  (reversed swaps the operands)
  kEqual, kLess, kLessEqual, kGreater, kGreaterEqual, kAnd, kOr, kXor,
  kWhere,  // acc = acc != 0 ? in[a] : in[b]
  // unary, on acc
  kRelu, kSigmoid, kTanh, kErf, kExp, kLog, kSqrt, kNeg, kAbs, kReciprocal, kFloor, kCeil, kRound, kSign, kNot,
  kSin, kCos,
  kGelu,         // 0.5 x (1 + erf(x / sqrt 2))
  kGeluTanh,     // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
  kSiLU,         // x * sigmoid(x)
  kHardSwish,    // x * clamp(x / 6 + 1/2, 0, 1)
  kHardSigmoid,  // clamp(p0 x + p1, 0, 1)
  kLeakyRelu,    // x < 0 ? p0 x : x
  kElu,          // x < 0 ? p0 (exp(x) - 1) : x
  kClip,         // min(max(x, p0), p1)
  kAffine,       // p0 x + p1
};
struct EwStep {
  EwOp op = EwOp::kLoad;
  int8_t a = 0, b = 0;
  bool reversed = false;
  float p0 = 0, p1 = 0;
};
constexpr int kMaxEwInputs = 8;
constexpr int kMaxEwSteps = 24;
struct EwProgram {
  int rank = 0;
  int64_t dims[kMaxRank] = {};
  int num_inputs = 0;
  ElemType in_types[kMaxEwInputs] = {};
  int64_t in_strides[kMaxEwInputs][kMaxRank] = {};
  int num_steps = 0;
  EwStep steps[kMaxEwSteps] = {};
  ElemType out_type = ElemType::kF32;
};

// Max or average pooling over NHWC. Padding never wins a max; averages divide by the window's
// in-bounds count unless count_include_pad.
struct Pool2d {
  bool max = true;
  bool count_include_pad = false;
  int64_t n = 0, h = 0, w = 0, c = 0, oh = 0, ow = 0;
  int kh = 1, kw = 1, sh = 1, sw = 1, pad_t = 0, pad_l = 0, dh = 1, dw = 1;
};

enum class Act : uint8_t { kNone, kRelu, kClip, kSilu };  // kSilu: x * sigmoid(x)

// A CNN's stem as one kernel (Kiln's, FP16 tensor cores): y = maxpool 3x3/2 pad 1 (clamp(conv 7x7/2
// pad 3 (x, w) + bias, lo, hi)) over 64 output channels. x is plain NCHW of x_type (kF32 or kF16)
// with c <= 4 channels, read as FP16; w is the FP16 filter in stem_filter_order's layout; the bias
// FP16 [64]; y dense NHWC of y_type: kF16, or kI8 holding round(y / y_scale) saturated (quantized
// before the max, which is exact: rounding is monotonic). The inputs are x, w, bias.
struct StemPoolDesc {
  int64_t n = 0, c = 0, h = 0, w = 0;
  ElemType x_type = ElemType::kF32, y_type = ElemType::kF16;
  float lo = -INFINITY, hi = INFINITY, y_scale = 1;
  int64_t conv_h() const { return (h - 1) / 2 + 1; }  // 7x7, stride 2, pad 3
  int64_t conv_w() const { return (w - 1) / 2 + 1; }
  int64_t out_h() const { return (conv_h() - 1) / 2 + 1; }  // 3x3, stride 2, pad 1
  int64_t out_w() const { return (conv_w() - 1) / 2 + 1; }
};
// The packed filter's k axis: channel c, row r and column s of the 7x7 filter at c * 56 + r * 8 + s
// (column 7 zero), k steps of 16 (the rest zero), rows padded by 8 halves (conflict-free ldmatrix).
inline int64_t stem_filter_pitch(int64_t c) { return (c * 56 + 15) / 16 * 16 + 8; }
// For each element of the packed [64][stem_filter_pitch(c)] filter, the index into the OIHW
// [64][c][7][7] filter it copies, or -1 for a zero.
inline std::vector<int64_t> stem_filter_order(int64_t c) {
  const int64_t pitch = stem_filter_pitch(c);
  std::vector<int64_t> order(static_cast<size_t>(64 * pitch), -1);
  for (int64_t k = 0; k < 64; ++k)
    for (int64_t ci = 0; ci < c; ++ci)
      for (int64_t r = 0; r < 7; ++r)
        for (int64_t s = 0; s < 7; ++s) order[static_cast<size_t>(k * pitch + ci * 56 + r * 8 + s)] = ((k * c + ci) * 7 + r) * 7 + s;
  return order;
}

// Reductions over the middle axis of x viewed as [outer, r, inner] (y is [outer, inner]): sum, mean,
// max, min and product in FP32, stored as x's type; ArgMax/ArgMin store the index as kI64 (the first
// extreme one, or the last with select_last). NaN wins max and min, as in ONNX Runtime.
enum class ReduceOp : uint8_t { kSum, kMean, kMax, kMin, kProd, kArgMax, kArgMin };

// Pad: y[i] = x[i - begin] where that is inside x; elsewhere the constant `value`, the nearest edge
// element, the reflection (edge not repeated) or the wrapped-around element. begin may be negative
// (a crop); dims count elements of the plain (row-major) layout.
struct PadDesc {
  enum class Mode : uint8_t { kConstant, kEdge, kReflect, kWrap };
  int rank = 0;
  int64_t in_dims[kMaxRank] = {};
  int64_t out_dims[kMaxRank] = {};
  int64_t begin[kMaxRank] = {};
  Mode mode = Mode::kConstant;
  float value = 0;
};

// Separable resampling (Resize, nearest or linear): for output coordinate o of axis a, the input
// coordinates i0, i1 and the weight w of i1 come from a host-made table (the second input: per axis
// in order, out_dims[a] entries of {int32 i0, int32 i1, float w}); y = sum over the corners of the
// products of (1 - w) or w. Axes with w == 0 everywhere cost one tap.
struct ResampleDesc {
  int rank = 0;
  int64_t in_dims[kMaxRank] = {};
  int64_t out_dims[kMaxRank] = {};
};

// GatherElements: y[i] = data[i with coordinate `axis` replaced by idx[i]] (negative indices count
// from the end; one outside the axis gives 0). y and idx have out_dims.
struct GatherElementsDesc {
  int rank = 0;
  int64_t data_dims[kMaxRank] = {};
  int64_t out_dims[kMaxRank] = {};
  int axis = 0;
};

// Y[M,N] = act(X[M,K] · W[K,N] + bias[N]) per batch; W row major [K,N]. type: kF32 (TF32 tensor cores),
// kF16 or kBF16 for X, W, bias and Y. act kGeluTanh is fused by cuBLASLt; others run after.
struct MatmulDesc {
  int64_t m = 0, n = 0, k = 0;
  int64_t batch = 1;     // strided batches: X, Y dense per batch; W advances by w_stride (0: shared)
  int64_t w_stride = 0;
  ElemType type = ElemType::kF16;
  bool bias = false;
  bool residual = false;  // a Y-shaped input added before the activation (inputs: x, w, [bias], residual)
  enum class Epilogue : uint8_t { kNone, kRelu, kGeluTanh } epilogue = Epilogue::kNone;
  // FP8 (Hopper and newer): X [M,K] and W are E4M3, W stored [N,K] row major (K-major, the form FP8
  // tensor cores take), and the product is scaled back: Y = act(x_scale * w_scale * (Xq · Wq^T) +
  // bias + residual). `type` is Y's, the bias's and the residual's (kF16 or kBF16). batch 1 only.
  bool fp8 = false;
  float x_scale = 1, w_scale = 1;
};

// y = act(conv(x, w) + bias + z), NHWC activations, KRSC filter [k, r, s, c/groups].
struct ConvDesc {
  int64_t n = 0, c = 0, h = 0, w = 0, k = 0, r = 0, s = 0, groups = 1;
  int pad_h = 0, pad_w = 0, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  ElemType type = ElemType::kF16;
  bool bias = false, residual = false;
  Act act = Act::kNone;
  float clip_lo = 0, clip_hi = 6;
  // Depthwise only (Kiln's kernel): each input value is clamped to at most in_clip_hi as it is
  // read. The producer's ReLU6 runs as a plain ReLU, fusable where the clamp is not (cuDNN's and
  // cuBLASLt's epilogues), and the clamp rides on this read.
  bool in_clip = false;
  float in_clip_hi = 0;
  // INT8 (type kI8; Kiln's implicit-GEMM kernel, sm_80 and newer): x and w (per output channel
  // scaled) are INT8, and the inputs are x, w, scale, [bias], [z] with FP32 scale[k] (the input's
  // scale times channel k's weight scale) and bias[k]: y = act(scale[k] * sum(x w) + bias[k] +
  // z_scale * z). z is z_type (kI8, times z_scale, or kF16); y is y_type: kF16, or kI8 holding
  // round(y / y_scale) saturated. Needs c % 16 == 0, k % 8 == 0, groups 1.
  ElemType y_type = ElemType::kI8, z_type = ElemType::kI8;
  float y_scale = 1, z_scale = 1;
};

// O = softmax(Q K^T * scale + mask) V. Strides in elements (head dims contiguous): batch, head and
// row strides of Q, K, V, O; the FP32 mask's batch, head and query-row strides (keys contiguous).
struct AttentionDesc {
  int64_t batch = 0, heads = 0, sq = 0, sk = 0, head_dim = 0;
  float scale = 1;
  ElemType type = ElemType::kF16;
  int64_t q[3] = {}, k[3] = {}, v[3] = {}, o[3] = {}, mask[3] = {};
  // Elements from the q, k and v input pointers to their first element (Q, K and V packed in one
  // buffer, each a column range of its rows).
  int64_t q_offset = 0, k_offset = 0, v_offset = 0;
  bool has_mask = false, causal = false;
};

// One launchable step, made by the device for fixed shapes. launch() only enqueues on `stream`
// (no allocation, no synchronization), so a program can be captured into a CUDA graph, and may be
// called from several threads at once with different streams and workspaces.
class Kernel {
 public:
  virtual ~Kernel() = default;
  virtual void launch(const void* const* inputs, void* const* outputs, void* workspace, void* stream) const = 0;
  virtual size_t workspace_bytes() const { return 0; }
  virtual std::string describe() const = 0;
  virtual double timed_ms() const { return -1; }  // the winning tactic's time when it was timed
  // The chosen tactic of a tuned kernel (matmul, conv, depthwise), "" for the others. Passing it
  // back to the same factory on the same GPU and libraries makes the same kernel without timing:
  // what the timing cache and GPU engine files store.
  virtual std::string tactic() const { return {}; }
};

struct DeviceProps {
  int id = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  int multiprocessors = 0;
  size_t total_memory = 0;
  int driver_version = 0, runtime_version = 0;  // e.g. 13000
  size_t cublaslt_version = 0, cudnn_version = 0;
  std::string sm() const { return "sm_" + std::to_string(sm_major) + std::to_string(sm_minor); }
};

class Device {
 public:
  virtual ~Device() = default;
  virtual const DeviceProps& props() const = 0;
  // Makes this device current on the calling thread (every entry point does it too).
  virtual void bind() const = 0;
  // True after a sticky CUDA error: the device must not be used again in this process.
  virtual bool broken() const = 0;

  virtual void* alloc(size_t bytes) = 0;  // throws "out of GPU memory: ..." with the sizes
  virtual void free(void* p) = 0;
  virtual void* alloc_host(size_t bytes) = 0;  // page-locked
  virtual void free_host(void* p) = 0;
  virtual size_t free_memory() const = 0;
  // Page-locks existing host memory in place for every GPU of the process (cudaHostRegister,
  // portable, read-only for the GPU), so copies from it run at full speed without a staging copy.
  // Returns false with `why` set when the driver refuses; unregister_host undoes it.
  virtual bool register_host(const void* p, size_t bytes, std::string* why) {
    (void)p, (void)bytes;
    if (why) *why = "this device cannot register host memory";
    return false;
  }
  virtual void unregister_host(const void* p) { (void)p; }
  // Synchronous copies (setup) and asynchronous ones (cudaMemcpyDefault) on a stream.
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void copy_async(void* dst, const void* src, size_t bytes, void* stream) = 0;
  virtual void memset_async(void* dst, int value, size_t bytes, void* stream) = 0;

  virtual void* create_stream() = 0;
  virtual void destroy_stream(void* stream) = 0;
  virtual void synchronize(void* stream) = 0;  // throws the first error the stream's work hit
  virtual void* create_event() = 0;
  virtual void destroy_event(void* event) = 0;
  virtual void record(void* event, void* stream) = 0;
  virtual float elapsed_ms(void* start, void* stop) = 0;  // both recorded and complete

  // Brings the GPU to its working clocks (about `ms` of busy kernels) so that the tactics timed next
  // compare as they will run; a no-op when it was warmed in the last few seconds.
  virtual void warm_up(int ms) { (void)ms; }

  // CUDA graphs: capture everything enqueued on `stream` between begin and end, then replay.
  virtual void begin_capture(void* stream) = 0;
  virtual void* end_capture(void* stream) = 0;  // an executable graph
  virtual void launch_graph(void* graph, void* stream) = 0;
  virtual void destroy_graph(void* graph) = 0;

  // Kernels. Each throws std::runtime_error naming what it cannot do. workspace_limit bounds the
  // scratch a library kernel may ask for (its algorithms that need more are not considered).
  // `tactic` (tuned kernels): "" times the candidates; a Kernel::tactic() from an earlier build is
  // used untimed, and throws std::runtime_error when it does not parse or does not run here.
  virtual std::unique_ptr<Kernel> matmul(const MatmulDesc& d, size_t workspace_limit, const std::string& tactic = {}) = 0;
  virtual std::unique_ptr<Kernel> conv(const ConvDesc& d, size_t workspace_limit, const std::string& tactic = {}) = 0;
  // Kiln's depthwise convolution (groups == c == k): inputs x, w [r, s, c], [bias], [z]; timed on
  // scratch buffers when made (unless a tactic is given), so it can compete with conv() as a tactic.
  virtual std::unique_ptr<Kernel> depthwise(const ConvDesc& d, const std::string& tactic = {}) = 0;
  virtual std::unique_ptr<Kernel> copy(ElemType x, ElemType y, const StridedCopy& c) = 0;
  virtual std::unique_ptr<Kernel> elementwise(const EwProgram& p) = 0;
  // y[o, t, i] = data[o, idx[t], i]; idx kI64 or kI32 (negative counts from the end).
  virtual std::unique_ptr<Kernel> gather(ElemType idx, size_t elem_bytes, int64_t outer, int64_t axis_dim,
                                         int64_t inner, int64_t count) = 0;
  virtual std::unique_ptr<Kernel> pool(ElemType t, const Pool2d& p) = 0;
  // The fused stem (StemPoolDesc; untimed: the compiler times it against the separate steps);
  // throws where the device has none.
  virtual std::unique_ptr<Kernel> stem_pool(const StemPoolDesc& d) {
    (void)d;
    throw std::runtime_error("this device has no fused stem kernel");
  }
  virtual std::unique_ptr<Kernel> mean_middle(ElemType t, int64_t n, int64_t s, int64_t c) = 0;  // [n,s,c] -> [n,c]
  // Float t (kF32, kF16, kBF16) for reduce, pad, resample and topk.
  virtual std::unique_ptr<Kernel> reduce(ElemType t, ReduceOp op, int64_t outer, int64_t r, int64_t inner,
                                         bool select_last = false) = 0;
  virtual std::unique_ptr<Kernel> pad(ElemType t, const PadDesc& d) = 0;
  // Inputs: x, the tap table (see ResampleDesc).
  virtual std::unique_ptr<Kernel> resample(ElemType t, const ResampleDesc& d) = 0;
  // TopK along the middle axis of [outer, n, inner]: outputs values (t) and indices (kI64), each
  // [outer, k, inner], largest (or smallest) first; equal values keep the lower index first.
  virtual std::unique_ptr<Kernel> topk(ElemType t, int64_t outer, int64_t n, int64_t inner, int64_t k, bool largest) = 0;
  // Any element type of elem_bytes; idx kI64 or kI32.
  virtual std::unique_ptr<Kernel> gather_elements(ElemType idx, size_t elem_bytes, const GatherElementsDesc& d) = 0;
  // Inputs: x, gamma (or null), beta (or null), residual (or null: LayerNorm(x + residual)).
  // Outputs: y, and with write_sum the residual sum x + residual (rounded to t) as a second output;
  // with copy_scale > 0 a last output holds y (rounded to t) / copy_scale as copy_type (a narrow
  // GEMM's input): kF8E4M3 (round to nearest even, saturated) or kI8 (round half to even,
  // saturated to [-128, 127]).
  virtual std::unique_ptr<Kernel> layer_norm(ElemType t, int64_t rows, int64_t cols, float eps, bool write_sum = false,
                                             float copy_scale = 0, ElemType copy_type = ElemType::kF8E4M3) = 0;
  virtual std::unique_ptr<Kernel> softmax(ElemType t, int64_t rows, int64_t cols) = 0;
  // Inputs: q, k, v, mask (FP32, or null).
  virtual std::unique_ptr<Kernel> attention(const AttentionDesc& d) = 0;
};

// Copies `m` into a C entry point's error buffer (truncated, always terminated).
inline void copy_message(const std::string& m, char* buf, size_t len) {
  if (!buf || len == 0) return;
  const size_t n = m.size() < len - 1 ? m.size() : len - 1;
  for (size_t i = 0; i < n; ++i) buf[i] = m[i];
  buf[n] = 0;
}

}  // namespace kiln::gpu

// The module's C entry points (looked up with dlsym).
extern "C" {
// kApiVersion of the module's build.
using kiln_gpu_api_version_fn = int (*)();
// The number of usable GPUs (0 with `why` filled when there is none).
using kiln_gpu_device_count_fn = int (*)(char* why, size_t why_len);
// Opens device `index`; null with `error` filled on failure. The caller deletes the Device.
using kiln_gpu_open_device_fn = kiln::gpu::Device* (*)(int index, char* error, size_t error_len);
}
