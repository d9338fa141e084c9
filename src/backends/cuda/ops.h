// Kiln's generic CUDA kernels for the ops a GPU program needs besides matmuls, convolutions and the
// transformer kernels (kernels.h): strided copies with dtype conversion (Transpose, Slice, Expand,
// Concat, Split, layout changes, Cast), an elementwise program interpreter (any chain of unary,
// binary, comparison and select steps over broadcast inputs, one pass over memory), Gather along an
// axis, and NHWC pooling. Everything enqueues on the given stream and allocates nothing, so a GPU
// program can be captured into a CUDA graph.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cmath>
#include <cstdint>

#include "backends/gpu/device_api.h"

namespace kiln::cuda {

// The descriptors are the module interface's (plain C++, shared with the core).
using gpu::ElemType;
using gpu::EwOp;
using gpu::EwProgram;
using gpu::EwStep;
using gpu::kMaxEwInputs;
using gpu::kMaxEwSteps;
using gpu::kMaxRank;
using gpu::GatherElementsDesc;
using gpu::PadDesc;
using gpu::Pool2d;
using gpu::ReduceOp;
using gpu::ResampleDesc;
using gpu::StridedCopy;
size_t elem_size(ElemType t);
const char* elem_type_name(ElemType t);

// Launch shapes shared by the module's generic kernels: kThreads per block, and enough blocks for
// n threads (at least 1, at most 2^20; the kernels stride over the rest).
constexpr int kThreads = 256;
unsigned blocks_for(int64_t n);
// The element count of `dims` (rank 0..6); throws CudaError naming `what` for a bad rank or a
// negative dimension.
int64_t count_of(int rank, const int64_t* dims, const char* what);

void copy_strided(ElemType xt, const void* x, ElemType yt, void* y, const StridedCopy& c, cudaStream_t stream);
// inputs[k] points at input k's first element.
void elementwise(const EwProgram& p, const void* const* inputs, void* y, cudaStream_t stream);

// y[o, t, i] = data[o, idx[t], i] for o < outer, t < count, i < inner; negative indices count from
// the end (ONNX); an index outside [-axis_dim, axis_dim) gives zeros. idx is I64 or I32.
void gather(ElemType idx_type, const void* data, const void* idx, void* y, int64_t outer, int64_t axis_dim,
            int64_t inner, int64_t count, size_t elem_bytes, cudaStream_t stream);

void pool2d_nhwc(ElemType t, const void* x, void* y, const Pool2d& p, cudaStream_t stream);
// Depthwise 2-D convolution over NHWC (groups == channels, one filter per channel), with the bias,
// the residual z and a clamp (lo, hi: ReLU is (0, inf), ReLU6 (0, 6), none (-inf, inf)) fused:
// y[n,oy,ox,c] = clamp(bias[c] + z[n,oy,ox,c] + sum_{ky,kx} x[n, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw, c]
// * w[ky, kx, c]). w is [R, S, C]; bias and z may be null.
struct Depthwise2d {
  int64_t n = 0, h = 0, w = 0, c = 0, oh = 0, ow = 0;
  int r = 1, s = 1, sh = 1, sw = 1, pad_t = 0, pad_l = 0, dh = 1, dw = 1;
  float lo = -INFINITY, hi = INFINITY;
  float in_hi = INFINITY;  // inputs are clamped to at most this as they are read
};
void depthwise_nhwc(ElemType t, const void* x, const void* w, const void* bias, const void* z, void* y,
                    const Depthwise2d& p, cudaStream_t stream);
// y[n, c] = mean over s of x[n, s, c] (GlobalAveragePool in NHWC: s = H*W).
void mean_middle(ElemType t, const void* x, void* y, int64_t n, int64_t s, int64_t c, cudaStream_t stream);

// tensor_ops.cu: the semantics are the device interface's (gpu::Device::reduce, topk, pad,
// resample, gather_elements). Float types (kF32, kF16, kBF16) except gather_elements (any size).
void reduce(ElemType t, ReduceOp op, const void* x, void* y, int64_t outer, int64_t r, int64_t inner, bool select_last,
            cudaStream_t stream);
void topk(ElemType t, const void* x, void* values, void* indices, int64_t outer, int64_t n, int64_t inner, int64_t k,
          bool largest, cudaStream_t stream);
void pad(ElemType t, const void* x, void* y, const PadDesc& d, cudaStream_t stream);
void resample(ElemType t, const void* x, const void* taps, void* y, const ResampleDesc& d, cudaStream_t stream);
void gather_elements(ElemType idx_type, const void* data, const void* idx, void* y, const GatherElementsDesc& d,
                     size_t elem_bytes, cudaStream_t stream);

}  // namespace kiln::cuda
