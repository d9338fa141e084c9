// Kiln's INT8 convolution: an implicit GEMM on the tensor cores' integer MMA (mma.sync
// m16n8k32 s8, sm_80 and newer), NHWC activations and KRSC filters, INT32 accumulation and a fused
// epilogue in FP32:
//
//   y = act(scale[k] * sum_{r,s,c} x[n, oh*sh - ph + r*dh, ow*sw - pw + s*dw, c] * w[k, r, s, c]
//           + bias[k] + z_scale * z[n, oh, ow, k])
//
// scale[k] is the input's scale times output channel k's weight scale (per-channel weights). y is
// written as FP16, or as INT8 round(y / y_scale) (half to even, saturated to [-128, 127]): the
// next INT8 convolution reads it as is. z (a residual) is INT8 (times z_scale) or FP16.
//
// The GEMM: M = n * oh * ow output pixels, N = k output channels, K = r * s * c. A CTA computes a
// BM x BN tile of Y over K in steps of 64 bytes, staged through shared memory by cp.async in a
// 4-deep pipeline (zero-filled where the window leaves the input), read by ldmatrix from an
// XOR-swizzled layout (no bank conflicts). Needs c % 16 == 0 (16-byte loads stay within one filter
// tap) and k % 8 == 0; ungrouped only. On Hopper (sm_90, the sm_90a image) the "w" tiles run the
// same GEMM on wgmma in stages of 128 bytes (conv_int8_wgmma.cu), one of them warp-specialized and
// persistent with the filters (and a plain-GEMM 1x1 layer's pixels) loaded by TMA.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "backends/cuda/conv.h"

namespace kiln::cuda {

struct Int8ConvParams {
  int64_t n = 0, c = 0, h = 0, w = 0;  // input, NHWC
  int64_t k = 0, r = 0, s = 0;         // output channels, filter height, width
  int pad_h = 0, pad_w = 0, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  bool bias = false;      // FP32 bias[k]
  bool residual = false;  // z [n, oh, ow, k]
  bool z_f16 = false;     // z is FP16 (else INT8 times z_scale)
  float z_scale = 1.f;
  bool y_f16 = false;  // y is FP16 (else INT8 of y / y_scale)
  float y_scale = 1.f;
  ConvAct act = ConvAct::kNone;
  float clip_lo = 0, clip_hi = 6;
  int64_t out_h() const;
  int64_t out_w() const;
  std::string str() const;
};

// CTA tiles (output pixels x output channels); which is fastest depends on the shape. The "s"
// variants stage the output tile through shared memory and finish 16 channels per thread (16-byte
// residual loads and stores: for layers bound by memory).
// The "w" tiles run on Hopper's wgmma (conv_int8_wgmma.cu: sm_90 GPUs, sm_90a build): 128 pixels
// by 64, 128 or 256 channels, K in stages of 128 bytes.
// The "str" tiles (conv_int8_stream.cu) are persistent and stream 64-pixel tiles with their
// residual through a pipeline, filters resident, at four CTAs per SM: only for 1x1 plain-GEMM
// layers with 64, 128 or 256 input channels, output channels a multiple of 16, INT8 output and
// INT8 residual or none (the memory-bound layers of a CNN).
enum class Int8Tile {
  k128x128, k128x64, k64x64, k128x128s, k128x64s, k64x64s,
  kW128x256, kW128x64s, kW128x128s, kW128x256s, kWs128x128,
  kStr64x64, kStr64x128,
  kCount
};
const char* int8_tile_name(Int8Tile t);  // "128x128"
bool parse_int8_tile(const std::string& s, Int8Tile* t);
// Whether this GPU runs tile `t` (the wgmma tiles need sm_90 and the sm_90a image).
bool int8_tile_available(Int8Tile t);
struct Int8ConvParams;
// Whether tile `t` runs here and takes the shape of `p` (the streaming tiles take only some).
bool int8_tile_takes(const Int8ConvParams& p, Int8Tile t);

// Why the kernel cannot take `p` ("" when it can): shape rules, and the GPU (sm_80 or newer).
std::string conv_int8_unsupported(const Int8ConvParams& p);

// Enqueues on `stream` only (no allocation, no sync: graph capture is fine). Throws CudaError when
// conv_int8_unsupported(p) is not empty.
void conv_int8(const Int8ConvParams& p, Int8Tile tile, const int8_t* x, const int8_t* w, const float* scale,
               const float* bias, const void* z, void* y, cudaStream_t stream);

// The same convolution as one cuBLASLt INT8 GEMM (IMMA, INT32 accumulation) where it is one: a
// 1x1 filter, stride 1, no padding, an INT8 output, ReLU or no activation, and an INT8 residual
// or none. M = n * h * w pixels, N = k channels, K = c; per channel alpha = scale / y_scale and
// bias / y_scale (made on the stream into the workspace's first 2 * k floats, so the weights'
// scales can change between runs), residual scale z_scale / y_scale. Rounds and saturates to INT8
// as conv_int8 does (cuBLASLt's rounding may differ by one code where the FP32 result sits on a
// half).
std::string conv_int8_gemm_unsupported(const Int8ConvParams& p);  // "" when it applies

class LtMatmul;
class Int8ConvGemm {
 public:
  // Picks cuBLASLt's algorithm by timing its candidates (see LtMatmul), or uses `tactic` (an
  // "lt:" record from tactic()). Throws CudaError when the shape does not apply, cuBLASLt has no
  // algorithm within `workspace_limit` bytes, or the tactic does not run here.
  Int8ConvGemm(const Int8ConvParams& p, size_t workspace_limit, cudaStream_t stream, const std::string& tactic = {});
  ~Int8ConvGemm();
  Int8ConvGemm(const Int8ConvGemm&) = delete;
  Int8ConvGemm& operator=(const Int8ConvGemm&) = delete;
  size_t workspace_bytes() const;
  // The arguments of conv_int8; `workspace` holds workspace_bytes().
  void run(const int8_t* x, const int8_t* w, const float* scale, const float* bias, const void* z, void* y,
           cudaStream_t stream, void* workspace) const;
  std::string tactic() const;
  std::string describe() const;

 private:
  Int8ConvParams p_;
  std::unique_ptr<LtMatmul> mm_;
  size_t scales_bytes_ = 0;
};

// The same convolution on cuDNN's graph API (CudnnGraphConv's 8-bit form, conv.h): the shape and
// epilogue as ConvParams, and the types and scales as GraphQuant. Its run_quant takes conv_int8's
// arguments (the FP32 bias as `bias`).
ConvParams int8_conv_shape(const Int8ConvParams& p);
GraphQuant int8_graph_quant(const Int8ConvParams& p);

// alpha[i] = scale[i] * inv and, with a bias, bias_out[i] = bias[i] * inv, for i < k.
void scale_channels(const float* scale, const float* bias, float inv, int64_t k, float* alpha, float* bias_out,
                    cudaStream_t stream);

}  // namespace kiln::cuda
