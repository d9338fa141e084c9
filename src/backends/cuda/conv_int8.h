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
// tap) and k % 8 == 0; ungrouped only.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
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
enum class Int8Tile { k128x128, k128x64, k64x64, k128x128s, k128x64s, k64x64s, kCount };
const char* int8_tile_name(Int8Tile t);  // "128x128"
bool parse_int8_tile(const std::string& s, Int8Tile* t);

// Why the kernel cannot take `p` ("" when it can): shape rules, and the GPU (sm_80 or newer).
std::string conv_int8_unsupported(const Int8ConvParams& p);

// Enqueues on `stream` only (no allocation, no sync: graph capture is fine). Throws CudaError when
// conv_int8_unsupported(p) is not empty.
void conv_int8(const Int8ConvParams& p, Int8Tile tile, const int8_t* x, const int8_t* w, const float* scale,
               const float* bias, const void* z, void* y, cudaStream_t stream);

}  // namespace kiln::cuda
