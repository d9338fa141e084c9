// 2-D convolution on cuDNN, NHWC, with a fused epilogue y = act(conv(x, w) + bias + z): grouped and
// depthwise included, in FP16, BF16 or FP32 (TF32 tensor cores). The algorithm is chosen by timing
// cuDNN's candidates on the actual shapes, fused with the epilogue or followed by Kiln's own
// epilogue kernel, whichever is faster.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"

// cuDNN's handle and descriptor types, so that users of this header need not include cudnn.h.
struct cudnnContext;
struct cudnnTensorStruct;
struct cudnnFilterStruct;
struct cudnnConvolutionStruct;
struct cudnnActivationStruct;

namespace kiln::cuda {

// kClip: min(max(v, clip_lo), clip_hi) (ReLU6: 0, 6); kSilu: v * sigmoid(v).
enum class ConvAct { kNone, kRelu, kClip, kSilu };
const char* conv_act_name(ConvAct a);

struct ConvParams {
  int64_t n = 0, c = 0, h = 0, w = 0;  // input, NHWC in memory
  int64_t k = 0, r = 0, s = 0;         // output channels, kernel height, width
  int64_t groups = 1;                  // c % groups == 0, k % groups == 0 (depthwise: groups == c)
  int pad_h = 0, pad_w = 0;            // symmetric padding (top=bottom, left=right)
  int stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  DType type = DType::kF16;  // kF32, kF16 or kBF16 (x, w, bias, z, y all of this type)
  bool bias = false;         // bias[k]
  bool residual = false;     // z: NHWC like y, added before the activation
  ConvAct act = ConvAct::kNone;
  float clip_lo = 0, clip_hi = 6;
  // floor((h + 2 pad - dil (r - 1) - 1) / stride) + 1; 0 when the dilated kernel exceeds the padded
  // input (or the stride is not positive).
  int64_t out_h() const;
  int64_t out_w() const;
  std::string str() const;  // "n2 c64 14x14 -> k64 3x3 pad 1,1 stride 1,1 dil 1,1 groups 1 fp16 bias+relu"
};

// One timed candidate: a cuDNN forward algorithm, with the epilogue fused into cuDNN's call or run
// as Kiln's kernel after it.
struct ConvTiming {
  int algo = 0;       // cudnnConvolutionFwdAlgo_t
  int math_type = 0;  // cudnnMathType_t
  bool fused = false;
  size_t workspace = 0;
  float ms = -1;  // -1: failed to run
};

class CudnnConv {
 public:
  // Checks the parameters, creates the descriptors, chooses the algorithm by timing cuDNN's
  // candidates that fit workspace_limit (on scratch buffers allocated here) and allocates the
  // chosen one's workspace. Throws CudaError naming the offending parameter, or the problem when
  // cuDNN runs none of its candidates.
  // With `tactic` (what tactic() returned on a build with the same cuDNN and GPU), that candidate is
  // used without timing; one that does not parse or is not among cuDNN's candidates here within the
  // limit throws CudaError.
  CudnnConv(const ConvParams& p, size_t workspace_limit = 64u << 20, cudaStream_t stream = nullptr,
            const std::string& tactic = {});
  ~CudnnConv();
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;

  // y = act(conv(x, w) + bias + z). x [n,h,w,c], w [k, r, s, c/groups] (KRSC, cuDNN's NHWC filter
  // format), bias [k] or null, z [n,oh,ow,k] or null (it may be y itself), y [n,oh,ow,k]. Enqueues
  // on `stream` only: no sync and no allocation, so it can be captured into a CUDA graph. Safe to
  // call from several threads on different streams: calls are serialized around the handle, and
  // since they share this object's workspace, runs on different streams are ordered on the GPU by an
  // event (outside graph capture; concurrent graphs or streams should pass their own workspace).
  void run(const void* x, const void* w, const void* bias, const void* z, void* y, cudaStream_t stream) const;
  // The same with the caller's workspace of at least workspace_bytes() (a context's own, so runs on
  // several streams never share scratch and need no ordering).
  void run(const void* x, const void* w, const void* bias, const void* z, void* y, cudaStream_t stream, void* workspace,
           size_t workspace_bytes) const;

  size_t workspace_bytes() const { return chosen_ < 0 ? 0 : timings_[static_cast<size_t>(chosen_)].workspace; }
  // e.g. "cudnn fwd algo IMPLICIT_PRECOMP_GEMM bias+relu (fused) nhwc fp16 (0.123 ms)"
  std::string describe() const;
  float chosen_ms() const { return chosen_ < 0 ? -1.f : timings_[static_cast<size_t>(chosen_)].ms; }
  const std::vector<ConvTiming>& timings() const { return timings_; }
  const ConvParams& params() const { return p_; }
  // The chosen candidate: "cudnn:<algo>:<math type>:<fused 0/1>".
  std::string tactic() const;

 private:
  void enqueue(const ConvTiming& t, const void* x, const void* w, const void* bias, const void* z, void* y,
               cudaStream_t stream, void* workspace) const;
  void check_args(const void* x, const void* w, const void* bias, const void* z, const void* y) const;
  void release();

  ConvParams p_;
  cudnnContext* handle_ = nullptr;
  cudnnTensorStruct *x_desc_ = nullptr, *y_desc_ = nullptr, *bias_desc_ = nullptr;
  cudnnFilterStruct* w_desc_ = nullptr;
  cudnnConvolutionStruct* conv_desc_ = nullptr;
  cudnnActivationStruct* act_desc_ = nullptr;
  DeviceBuffer workspace_;
  cudaEvent_t workspace_free_ = nullptr;  // recorded after each run on the shared workspace
  DeviceBuffer zero_bias_;                // cuDNN's fused call needs a bias; this one stands in when there is none
  std::vector<ConvTiming> timings_;
  int chosen_ = -1;
  mutable std::mutex run_mu_;
};

// The same convolution as one cuDNN graph (cuDNN 9's backend API): convolution -> + bias -> + z ->
// activation, which cuDNN's runtime-fusion engines compile into one kernel. It fuses what the legacy
// fused call cannot: SiLU and a clip (ReLU6). FP16 and BF16, ungrouped; intermediates in FP32. The
// candidates are the first `candidates` engine configurations of cuDNN's heuristics (mode A) that
// finalize within the workspace limit, each timed (time_tactic); tactic "graph:<index>" (the
// configuration's place in the heuristic's list, stable for one cuDNN and GPU).
std::string conv_graph_unsupported(const ConvParams& p);  // "" when the graph applies

// The graph's 8-bit form (an INT8 or FP8 convolution, as conv_int8.h computes it):
//
//   y = act(scale[k] * conv(x, w) + bias[k] + z') [/ y_scale]
//
// x and w are INT8 (INT32 accumulation) or FP8 E4M3 (FP32 accumulation); scale[k] (FP32) is the
// input's scale times channel k's weight scale; bias is FP32; z' is z * z_scale for an 8-bit z, or
// an FP16 z as is; y is 8-bit (of y / y_scale, rounded and saturated by cuDNN) or FP16. The
// ConvParams' type is ignored; tactic "graph8:<index>".
struct GraphQuant {
  bool fp8 = false;  // FP8 E4M3 instead of INT8 (x, w, and an 8-bit z and y)
  bool z_8bit = true;
  float z_scale = 1.f;
  bool y_8bit = true;
  float y_scale = 1.f;
};
std::string conv_graph_quant_unsupported(const ConvParams& p, const GraphQuant& q);  // "" when it applies

class CudnnGraphConv {
 public:
  // Throws CudaError when the parameters do not apply, when no configuration finalizes and runs, or
  // when `tactic` does not parse or does not finalize here.
  CudnnGraphConv(const ConvParams& p, size_t workspace_limit = 64u << 20, cudaStream_t stream = nullptr,
                 const std::string& tactic = {}, int candidates = 4);
  // The 8-bit form (GraphQuant).
  CudnnGraphConv(const ConvParams& p, const GraphQuant& q, size_t workspace_limit, cudaStream_t stream,
                 const std::string& tactic = {}, int candidates = 4);
  ~CudnnGraphConv();
  CudnnGraphConv(const CudnnGraphConv&) = delete;
  CudnnGraphConv& operator=(const CudnnGraphConv&) = delete;
  // As CudnnConv::run with the caller's workspace (at least workspace_bytes()); enqueues on
  // `stream` only, so it can be captured into a CUDA graph.
  void run(const void* x, const void* w, const void* bias, const void* z, void* y, cudaStream_t stream, void* workspace,
           size_t workspace_bytes) const;
  // The 8-bit form's run: scale[k] as GraphQuant describes (bias FP32).
  void run_quant(const void* x, const void* w, const float* scale, const void* bias, const void* z, void* y,
                 cudaStream_t stream, void* workspace, size_t workspace_bytes) const;
  size_t workspace_bytes() const;
  float chosen_ms() const;  // -1 with a recorded tactic
  std::string tactic() const;
  std::string describe() const;  // "cudnn graph conv+bias+silu nhwc fp16: config 0 of 3 [0.1 0.2 x ms]"

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// y = act(y + bias[channel] + z) in place over an NHWC tensor of `elements` values with `k`
// channels innermost; bias and z may be null. kRelu clamps below at 0, kClip to [clip_lo, clip_hi]
// (the bounds are ignored for other activations), kSilu is v * sigmoid(v). NaN propagates.
void conv_epilogue(DType t, void* y, const void* bias, const void* z, int64_t elements, int64_t k, ConvAct act,
                   float clip_lo, float clip_hi, cudaStream_t stream);

}  // namespace kiln::cuda
