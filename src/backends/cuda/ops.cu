// Kiln's generic CUDA kernels (see ops.h): one thread per output element, grid-stride loops, the
// element's multi-index decomposed once and reused for every input's offset.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>
#include <string>

#include <cuda_fp8.h>

#include "backends/cuda/convert.cuh"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/ops.h"

namespace kiln::cuda {

size_t elem_size(ElemType t) {
  switch (t) {
    case ElemType::kF32: case ElemType::kI32: return 4;
    case ElemType::kF16: case ElemType::kBF16: return 2;
    case ElemType::kF64: case ElemType::kI64: return 8;
    default: return 1;
  }
}

const char* elem_type_name(ElemType t) {
  static const char* names[] = {"fp32", "fp16", "bf16", "fp64", "int64", "int32", "int8", "uint8", "bool", "fp8e4m3"};
  return names[static_cast<int>(t)];
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 1 ? 1 : b > (1 << 20) ? (1 << 20) : b);
}

int64_t count_of(int rank, const int64_t* dims, const char* what) {
  if (rank < 0 || rank > kMaxRank) throw CudaError(std::string(what) + ": rank " + std::to_string(rank) + " > 6");
  int64_t n = 1;
  for (int d = 0; d < rank; ++d) {
    if (dims[d] < 0) throw CudaError(std::string(what) + ": negative dimension");
    n *= dims[d];
  }
  return n;
}

namespace {

// Loads element i of a typed buffer as float (integers exactly up to 2^24).
__device__ __forceinline__ float load_f(ElemType t, const void* p, int64_t i) {
  switch (t) {
    case ElemType::kF32: return static_cast<const float*>(p)[i];
    case ElemType::kF16: return __half2float(static_cast<const __half*>(p)[i]);
    case ElemType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case ElemType::kF64: return static_cast<float>(static_cast<const double*>(p)[i]);
    case ElemType::kI64: return static_cast<float>(static_cast<const int64_t*>(p)[i]);
    case ElemType::kI32: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    case ElemType::kI8: return static_cast<float>(static_cast<const int8_t*>(p)[i]);
    case ElemType::kU8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    case ElemType::kF8E4M3: return static_cast<float>(static_cast<const __nv_fp8_e4m3*>(p)[i]);
    default: return static_cast<const uint8_t*>(p)[i] ? 1.f : 0.f;
  }
}

// Stores float v as element i (integers truncate toward zero like a C cast, as ONNX Cast does).
__device__ __forceinline__ void store_f(ElemType t, void* p, int64_t i, float v) {
  switch (t) {
    case ElemType::kF32: static_cast<float*>(p)[i] = v; break;
    case ElemType::kF16: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    case ElemType::kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    case ElemType::kF64: static_cast<double*>(p)[i] = v; break;
    case ElemType::kI64: static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    case ElemType::kI32: static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case ElemType::kI8: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); break;
    case ElemType::kU8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
    case ElemType::kF8E4M3: static_cast<__nv_fp8_e4m3*>(p)[i] = __nv_fp8_e4m3(v); break;  // RNE, saturating
    default: static_cast<uint8_t*>(p)[i] = v != 0.f ? 1 : 0; break;
  }
}

// A raw copy of `bytes` bytes (same types), or a conversion through float (integers of 8 bytes are
// copied exactly when both sides are integers of the same size).
__device__ __forceinline__ void move_elem(ElemType xt, const void* x, int64_t xi, ElemType yt, void* y, int64_t yi) {
  if (xt == yt) {
    switch (xt == ElemType::kF64 || xt == ElemType::kI64 ? 8 : xt == ElemType::kF32 || xt == ElemType::kI32 ? 4
            : xt == ElemType::kF16 || xt == ElemType::kBF16                     ? 2
                                                                                : 1) {
      case 8: static_cast<uint64_t*>(y)[yi] = static_cast<const uint64_t*>(x)[xi]; return;
      case 4: static_cast<uint32_t*>(y)[yi] = static_cast<const uint32_t*>(x)[xi]; return;
      case 2: static_cast<uint16_t*>(y)[yi] = static_cast<const uint16_t*>(x)[xi]; return;
      default: static_cast<uint8_t*>(y)[yi] = static_cast<const uint8_t*>(x)[xi]; return;
    }
  }
  if (xt == ElemType::kI64 && yt == ElemType::kI32) {
    static_cast<int32_t*>(y)[yi] = static_cast<int32_t>(static_cast<const int64_t*>(x)[xi]);
    return;
  }
  if (xt == ElemType::kI32 && yt == ElemType::kI64) {
    static_cast<int64_t*>(y)[yi] = static_cast<const int32_t*>(x)[xi];
    return;
  }
  store_f(yt, y, yi, load_f(xt, x, xi));
}

// Element e (row-major over c.dims) of a strided copy: its offsets in x and in y. I is the index
// type of e (32-bit whenever the element count allows).
template <typename I>
__device__ __forceinline__ void strided_offsets(const StridedCopy& c, I e, int64_t& xo, int64_t& yo) {
  xo = yo = 0;
  for (int d = c.rank - 1; d >= 0; --d) {
    const I dim = static_cast<I>(c.dims[d]);
    const I i = e % dim;
    e /= dim;
    xo += static_cast<int64_t>(i) * c.x_strides[d];
    yo += static_cast<int64_t>(i) * c.y_strides[d];
  }
}

template <typename I>
__global__ void copy_strided_kernel(ElemType xt, const void* x, ElemType yt, void* y, StridedCopy copy, I n) {
  __shared__ StridedCopy c;  // see elementwise_kernel: no runtime-indexed kernel parameters
  if (threadIdx.x == 0) c = copy;
  __syncthreads();
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < n; e += static_cast<I>(gridDim.x) * blockDim.x) {
    int64_t xo, yo;
    strided_offsets(c, e, xo, yo);
    move_elem(xt, x, xo, yt, y, yo);
  }
}

// Batched 2-D transpose through 32x32 shared-memory tiles (both sides coalesced), converting the
// type: y[b][c][r] = x[b][r][c] for r < rows, c < cols. NCHW <-> NHWC layout changes are this with
// (rows, cols) = (C, H*W) or (H*W, C).
__global__ void transpose_tiles_kernel(ElemType xt, const void* x, ElemType yt, void* y, int64_t rows, int64_t cols) {
  __shared__ float tile[32][33];
  const int64_t b = blockIdx.z;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * 32, c0 = static_cast<int64_t>(blockIdx.x) * 32;
  const int64_t base = b * rows * cols;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t r = r0 + i, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[i][threadIdx.x] = load_f(xt, x, base + r * cols + c);
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t c = c0 + i, r = r0 + threadIdx.x;
    if (r < rows && c < cols) store_f(yt, y, base + c * rows + r, tile[threadIdx.x][i]);
  }
}

// Few channels (a network's image input) to dense NHWC with P >= C channels per pixel, channels C..
// zero: a thread per pixel reads its C values (x strides of [N, C, H, W]; coalesced across threads
// from NCHW) and writes P contiguously. vec (FP16 out, P 4 or 8, y 16-byte aligned): one 8- or
// 16-byte store per pixel.
__global__ void to_nhwc_few_kernel(ElemType xt, const void* x, ElemType yt, void* y, int64_t n, int c, int p, int64_t h,
                                   int64_t w, int64_t xs0, int64_t xs1, int64_t xs2, int64_t xs3, bool vec) {
  const int64_t total = n * h * w;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / (h * w), hw = e % (h * w), i = hw / w, j = hw % w;
    const int64_t base = b * xs0 + i * xs2 + j * xs3;
    if (vec) {
      __half2 v[4];
      for (int q = 0; q < p / 2; ++q) {
        const float lo = 2 * q < c ? load_f(xt, x, base + (2 * q) * xs1) : 0.f;
        const float hi = 2 * q + 1 < c ? load_f(xt, x, base + (2 * q + 1) * xs1) : 0.f;
        v[q] = __floats2half2_rn(lo, hi);
      }
      if (p == 4) reinterpret_cast<uint2*>(y)[e] = *reinterpret_cast<const uint2*>(v);
      else reinterpret_cast<uint4*>(y)[e] = *reinterpret_cast<const uint4*>(v);
      continue;
    }
    for (int ch = 0; ch < p; ++ch) store_f(yt, y, e * p + ch, ch < c ? load_f(xt, x, base + ch * xs1) : 0.f);
  }
}
// Launches to_nhwc_few_kernel for c (dims [N, C, H, W]) writing P channels per pixel.
void launch_to_nhwc_few(ElemType xt, const void* x, ElemType yt, void* y, const StridedCopy& c, int64_t P,
                        cudaStream_t stream) {
  const int64_t N = c.dims[0], C = c.dims[1], H = c.dims[2], W = c.dims[3];
  const bool vec = yt == ElemType::kF16 && (P == 4 || P == 8) && (reinterpret_cast<uintptr_t>(y) & 15) == 0;
  to_nhwc_few_kernel<<<blocks_for(N * H * W), kThreads, 0, stream>>>(xt, x, yt, y, N, static_cast<int>(C), static_cast<int>(P),
                                                                     H, W, c.x_strides[0], c.x_strides[1], c.x_strides[2],
                                                                     c.x_strides[3], vec);
  check_launch("to_nhwc_few");
}

// The same from a dense NCHW FP32 image to FP16, four pixels per thread: one 16-byte load per
// channel, then one 8- or 16-byte store per pixel (the loads of a few channels over HW pixels are
// what bounds it; hw % 4 == 0).
__global__ void nchw_f32_to_nhwc_f16_padded_kernel(const float* __restrict__ x, __half* __restrict__ y, int64_t n, int c,
                                                   int p, int64_t hw) {
  const int64_t quads = n * hw / 4;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < quads;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t pix = e * 4, b = pix / hw, q = pix % hw;
    float4 v[8];
#pragma unroll
    for (int ch = 0; ch < 8; ++ch)
      v[ch] = ch < c ? __ldg(reinterpret_cast<const float4*>(x + (b * c + ch) * hw + q)) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      auto at = [&](int ch) { return i == 0 ? v[ch].x : i == 1 ? v[ch].y : i == 2 ? v[ch].z : v[ch].w; };
      __half2 h[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) h[k] = __floats2half2_rn(at(2 * k), at(2 * k + 1));
      if (p == 4) reinterpret_cast<uint2*>(y)[pix + i] = *reinterpret_cast<const uint2*>(h);
      else reinterpret_cast<uint4*>(y)[pix + i] = *reinterpret_cast<const uint4*>(h);
    }
  }
}

// A same-type strided copy in units of U (16 bytes: whole vectors of the last, contiguous dim).
template <typename U>
__global__ void copy_units_kernel(const U* __restrict__ x, U* __restrict__ y, StridedCopy copy, uint32_t n) {
  __shared__ StridedCopy c;
  if (threadIdx.x == 0) c = copy;
  __syncthreads();
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) {
    int64_t xo, yo;
    strided_offsets(c, e, xo, yo);
    y[yo] = x[xo];
  }
}

__device__ __forceinline__ float sigmoidf(float v) { return 1.f / (1.f + __expf(-v)); }

__device__ float apply_unary(EwOp op, float v, float p0, float p1) {
  switch (op) {
    case EwOp::kRelu: return v > 0.f ? v : 0.f;
    case EwOp::kSigmoid: return sigmoidf(v);
    case EwOp::kTanh: return tanhf(v);
    case EwOp::kErf: return erff(v);
    case EwOp::kExp: return expf(v);
    case EwOp::kLog: return logf(v);
    case EwOp::kSqrt: return sqrtf(v);
    case EwOp::kNeg: return -v;
    case EwOp::kAbs: return fabsf(v);
    case EwOp::kReciprocal: return 1.f / v;
    case EwOp::kFloor: return floorf(v);
    case EwOp::kCeil: return ceilf(v);
    case EwOp::kRound: return rintf(v);  // half to even, as ONNX Round
    case EwOp::kSign: return v > 0.f ? 1.f : v < 0.f ? -1.f : 0.f;
    case EwOp::kNot: return v != 0.f ? 0.f : 1.f;
    case EwOp::kSin: return sinf(v);
    case EwOp::kCos: return cosf(v);
    case EwOp::kGelu: return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
    case EwOp::kGeluTanh: return 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    case EwOp::kSiLU: return v * sigmoidf(v);
    case EwOp::kHardSwish: return v * fminf(fmaxf(v / 6.f + 0.5f, 0.f), 1.f);
    case EwOp::kHardSigmoid: return fminf(fmaxf(p0 * v + p1, 0.f), 1.f);
    case EwOp::kLeakyRelu: return v < 0.f ? p0 * v : v;
    case EwOp::kElu: return v < 0.f ? p0 * (expf(v) - 1.f) : v;
    case EwOp::kClip: return fminf(fmaxf(v, p0), p1);
    case EwOp::kAffine: return p0 * v + p1;
    default: return v;
  }
}

__device__ float apply_binary(EwOp op, float a, float b) {
  switch (op) {
    case EwOp::kAdd: return a + b;
    case EwOp::kSub: return a - b;
    case EwOp::kMul: return a * b;
    case EwOp::kDiv: return a / b;
    case EwOp::kPow: return powf(a, b);
    case EwOp::kMin: return fminf(a, b);
    case EwOp::kMax: return fmaxf(a, b);
    case EwOp::kMod: return fmodf(a, b);
    case EwOp::kEqual: return a == b ? 1.f : 0.f;
    case EwOp::kLess: return a < b ? 1.f : 0.f;
    case EwOp::kLessEqual: return a <= b ? 1.f : 0.f;
    case EwOp::kGreater: return a > b ? 1.f : 0.f;
    case EwOp::kGreaterEqual: return a >= b ? 1.f : 0.f;
    case EwOp::kAnd: return (a != 0.f && b != 0.f) ? 1.f : 0.f;
    case EwOp::kOr: return (a != 0.f || b != 0.f) ? 1.f : 0.f;
    case EwOp::kXor: return ((a != 0.f) != (b != 0.f)) ? 1.f : 0.f;
    default: return a;
  }
}

struct EwPtrs {
  const void* p[kMaxEwInputs];
};

// The program and the input pointers are copied to shared memory once per block: indexing a kernel
// parameter with a runtime index would make every thread copy the whole struct to local memory.
// `dense` has bit k set when input k is stored like the output (offset = element index) and
// `scalar` when it is one broadcast value; other inputs take the general strided path. I is the
// index type: 32-bit whenever the element count allows (64-bit division costs ~4x as much).
template <typename I>
__global__ void elementwise_kernel(EwProgram prog, EwPtrs ptrs, I n, void* y, unsigned dense, unsigned scalar) {
  __shared__ EwProgram p;
  __shared__ EwPtrs ins;
  if (threadIdx.x == 0) {
    p = prog;
    ins = ptrs;
  }
  __syncthreads();
  const bool all_simple = ((dense | scalar) & ((1u << p.num_inputs) - 1)) == ((1u << p.num_inputs) - 1);
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < n; e += static_cast<I>(gridDim.x) * blockDim.x) {
    I offs[kMaxEwInputs];
    if (all_simple) {
      for (int k = 0; k < p.num_inputs; ++k) offs[k] = (dense >> k) & 1u ? e : 0;
    } else {
      for (int k = 0; k < p.num_inputs; ++k) offs[k] = 0;
      I rest = e;
      for (int d = p.rank - 1; d >= 0; --d) {
        const I dim = static_cast<I>(p.dims[d]);
        const I i = rest % dim;
        rest /= dim;
        for (int k = 0; k < p.num_inputs; ++k) offs[k] += i * static_cast<I>(p.in_strides[k][d]);
      }
    }
    float acc = 0.f;
    for (int s = 0; s < p.num_steps; ++s) {
      const EwStep st = p.steps[s];
      if (st.op == EwOp::kLoad) {
        acc = load_f(p.in_types[st.a], ins.p[st.a], offs[st.a]);
      } else if (st.op == EwOp::kWhere) {
        acc = acc != 0.f ? load_f(p.in_types[st.a], ins.p[st.a], offs[st.a])
                         : load_f(p.in_types[st.b], ins.p[st.b], offs[st.b]);
      } else if (st.op <= EwOp::kXor) {
        const float v = load_f(p.in_types[st.a], ins.p[st.a], offs[st.a]);
        acc = st.reversed ? apply_binary(st.op, v, acc) : apply_binary(st.op, acc, v);
      } else {
        acc = apply_unary(st.op, acc, st.p0, st.p1);
      }
    }
    store_f(p.out_type, y, e, acc);
  }
}



// The common case of the interpreter: every input and the output of one float type T, every input
// dense (offset = element index) or one broadcast scalar (offset 0). No index arithmetic, no type
// dispatch; kPer consecutive elements per thread.
template <typename T>
__global__ void elementwise_dense_kernel(EwProgram prog, EwPtrs ptrs, uint32_t n, T* __restrict__ y, unsigned scalar) {
  constexpr int kPer = 4;
  __shared__ EwProgram p;
  __shared__ EwPtrs ins;
  if (threadIdx.x == 0) {
    p = prog;
    ins = ptrs;
  }
  __syncthreads();
  const uint32_t stride = gridDim.x * blockDim.x * kPer;
  for (uint32_t e0 = (blockIdx.x * blockDim.x + threadIdx.x) * kPer; e0 < n; e0 += stride) {
    float acc[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) acc[u] = 0.f;
    for (int s = 0; s < p.num_steps; ++s) {
      const EwStep st = p.steps[s];
      if (st.op >= EwOp::kRelu) {
#pragma unroll
        for (int u = 0; u < kPer; ++u) acc[u] = apply_unary(st.op, acc[u], st.p0, st.p1);
        continue;
      }
      const T* a = static_cast<const T*>(ins.p[st.a]);
      const bool sa = (scalar >> st.a) & 1u;
      const T* b = static_cast<const T*>(ins.p[st.b]);
      const bool sb = (scalar >> st.b) & 1u;
#pragma unroll
      for (int u = 0; u < kPer; ++u) {
        const uint32_t e = e0 + u;
        if (e >= n) break;
        const float va = to_f(a[sa ? 0u : e]);
        if (st.op == EwOp::kLoad) acc[u] = va;
        else if (st.op == EwOp::kWhere) acc[u] = acc[u] != 0.f ? va : to_f(b[sb ? 0u : e]);
        else acc[u] = st.reversed ? apply_binary(st.op, va, acc[u]) : apply_binary(st.op, acc[u], va);
      }
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u)
      if (e0 + u < n) y[e0 + u] = from_f<T>(acc[u]);
  }
}

// The dense kernel with 16-byte loads and stores: kPer = 16 / sizeof(T) elements per thread and
// step (8 FP16/BF16 or 4 FP32). Taken when the element count is a multiple of kPer and every
// non-scalar pointer is 16-byte aligned; nvec counts the 16-byte vectors. Inputs in `inner` vary
// along the innermost dim only (a per-channel vector over NHWC: a BatchNormalization's scale and
// shift), inner_vecs 16-byte vectors long: vector vi reads their vector vi % inner_vecs.
template <typename T>
__global__ void elementwise_vec_kernel(EwProgram prog, EwPtrs ptrs, uint32_t nvec, T* __restrict__ y, unsigned scalar,
                                       unsigned inner = 0, uint32_t inner_vecs = 1) {
  constexpr int kPer = 16 / sizeof(T);
  __shared__ EwProgram p;
  __shared__ EwPtrs ins;
  if (threadIdx.x == 0) {
    p = prog;
    ins = ptrs;
  }
  __syncthreads();
  auto load = [&](int k, uint32_t vi, float* out) {
    const T* src = static_cast<const T*>(ins.p[k]);
    if ((scalar >> k) & 1u) {
      const float v = to_f(src[0]);
#pragma unroll
      for (int u = 0; u < kPer; ++u) out[u] = v;
    } else {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(src) + ((inner >> k) & 1u ? vi % inner_vecs : vi));
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int u = 0; u < kPer; ++u) out[u] = to_f(e[u]);
    }
  };
  for (uint32_t vi = blockIdx.x * blockDim.x + threadIdx.x; vi < nvec; vi += gridDim.x * blockDim.x) {
    float acc[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) acc[u] = 0.f;
    for (int s = 0; s < p.num_steps; ++s) {
      const EwStep st = p.steps[s];
      if (st.op >= EwOp::kRelu) {
#pragma unroll
        for (int u = 0; u < kPer; ++u) acc[u] = apply_unary(st.op, acc[u], st.p0, st.p1);
        continue;
      }
      float va[kPer];
      load(st.a, vi, va);
      if (st.op == EwOp::kLoad) {
#pragma unroll
        for (int u = 0; u < kPer; ++u) acc[u] = va[u];
      } else if (st.op == EwOp::kWhere) {
        float vb[kPer];
        load(st.b, vi, vb);
#pragma unroll
        for (int u = 0; u < kPer; ++u) acc[u] = acc[u] != 0.f ? va[u] : vb[u];
      } else {
#pragma unroll
        for (int u = 0; u < kPer; ++u)
          acc[u] = st.reversed ? apply_binary(st.op, va[u], acc[u]) : apply_binary(st.op, acc[u], va[u]);
      }
    }
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int u = 0; u < kPer; ++u) e[u] = from_f<T>(acc[u]);
    reinterpret_cast<uint4*>(y)[vi] = raw;
  }
}

// erf to within 1.5e-7 absolute (Abramowitz and Stegun 7.1.26): one reciprocal, one exp and five
// FMAs, where erff costs a few dozen instructions with branches. The GELU after a transformer's
// first FFN GEMM is the largest elementwise pass of BERT and ViT, and with erff it is bound by
// instructions rather than memory.
__device__ __forceinline__ float erf_fast(float x) {
  const float a = fabsf(x);
  const float t = __frcp_rn(fmaf(0.3275911f, a, 1.f));
  float p = fmaf(1.061405429f, t, -1.453152027f);
  p = fmaf(p, t, 1.421413741f);
  p = fmaf(p, t, -0.284496736f);
  p = fmaf(p, t, 0.254829592f);
  const float r = 1.f - p * t * __expf(-a * a);
  return copysignf(r, x);
}

template <EwOp Op>
__device__ __forceinline__ float unary_fast(float v) {
  if constexpr (Op == EwOp::kLoad) return v;  // no op (the quantizing kernel's plain copy)
  else if constexpr (Op == EwOp::kGelu) return 0.5f * v * (1.f + erf_fast(v * 0.70710678118654752f));
  else if constexpr (Op == EwOp::kErf) return erf_fast(v);
  else if constexpr (Op == EwOp::kGeluTanh) return 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
  else if constexpr (Op == EwOp::kSiLU) return v * sigmoidf(v);
  else if constexpr (Op == EwOp::kSigmoid) return sigmoidf(v);
  else if constexpr (Op == EwOp::kTanh) return tanhf(v);
  else return v > 0.f ? v : 0.f;  // kRelu
}

// One unary op on one dense input of the output's type, 16-byte loads and stores: the op is a
// template argument, so there is no interpreter loop or switch per element.
template <typename T, EwOp Op>
__global__ void unary_vec_kernel(const T* __restrict__ x, T* __restrict__ y, uint32_t nvec) {
  constexpr int kPer = 16 / sizeof(T);
  for (uint32_t vi = blockIdx.x * blockDim.x + threadIdx.x; vi < nvec; vi += gridDim.x * blockDim.x) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(x) + vi);
    const T* e = reinterpret_cast<const T*>(&raw);
    uint4 out;
    T* o = reinterpret_cast<T*>(&out);
#pragma unroll
    for (int u = 0; u < kPer; ++u) o[u] = from_f<T>(unary_fast<Op>(to_f(e[u])));
    reinterpret_cast<uint4*>(y)[vi] = out;
  }
}

// FP8 quantization of one dense input of type T, optionally through one unary op first:
// y = e4m3(op(x) * scale), 8 elements per thread (one 16-byte or two 16-byte loads, one 8-byte
// store). What an FP8 GEMM's activation goes through when its producer could not write FP8 itself,
// and the GELU between a transformer's FFN GEMMs when it can.
template <typename T, EwOp Op>
__global__ void quantize_fp8_kernel(const T* __restrict__ x, uint2* __restrict__ y, float scale, uint32_t n8) {
  constexpr int kLoads = 8 * sizeof(T) / 16;
  for (uint32_t vi = blockIdx.x * blockDim.x + threadIdx.x; vi < n8; vi += gridDim.x * blockDim.x) {
    float v[8];
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(x) + static_cast<size_t>(vi) * kLoads + l);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int u = 0; u < 8 / kLoads; ++u) v[l * (8 / kLoads) + u] = unary_fast<Op>(to_f(e[u])) * scale;
    }
    uint32_t w[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      w[u] = __nv_cvt_float2_to_fp8x2(make_float2(v[2 * u], v[2 * u + 1]), __NV_SATFINITE, __NV_E4M3);
    y[vi] = make_uint2(w[0] | (w[1] << 16), w[2] | (w[3] << 16));
  }
}

// INT8 quantization of one dense input of type T, optionally through one unary op first:
// y = saturate(round_half_even(op(x) * scale)), 8 elements per thread (16-byte loads, one 8-byte
// store). An INT8 convolution's or GEMM's input when its producer is not an INT8 convolution, and
// the GELU between a transformer's FFN GEMMs in an INT8 program.
template <typename T, EwOp Op>
__global__ void quantize_i8_kernel(const T* __restrict__ x, uint2* __restrict__ y, float scale, uint32_t n8) {
  constexpr int kLoads = 8 * sizeof(T) / 16;
  for (uint32_t vi = blockIdx.x * blockDim.x + threadIdx.x; vi < n8; vi += gridDim.x * blockDim.x) {
    uint32_t w[2] = {0, 0};
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(x) + static_cast<size_t>(vi) * kLoads + l);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int u = 0; u < 8 / kLoads; ++u) {
        const int i = l * (8 / kLoads) + u;
        const int q = max(-128, min(127, __float2int_rn(unary_fast<Op>(to_f(e[u])) * scale)));
        w[i / 4] |= (static_cast<uint32_t>(q) & 0xffu) << (8 * (i % 4));
      }
    }
    y[vi] = make_uint2(w[0], w[1]);
  }
}

// The quantizing kernel of one activation `op` (or none: kLoad) to FP8 or, with I8, to INT8.
template <typename T, bool I8>
bool launch_quantize(EwOp op, const void* x, void* y, float scale, uint32_t n8, unsigned blocks, cudaStream_t stream) {
  const T* xt = static_cast<const T*>(x);
  uint2* yt = static_cast<uint2*>(y);
  auto go = [&](auto tag) {
    constexpr EwOp kOp = decltype(tag)::value;
    if constexpr (I8) quantize_i8_kernel<T, kOp><<<blocks, kThreads, 0, stream>>>(xt, yt, scale, n8);
    else quantize_fp8_kernel<T, kOp><<<blocks, kThreads, 0, stream>>>(xt, yt, scale, n8);
    return true;
  };
  switch (op) {
    case EwOp::kLoad: return go(std::integral_constant<EwOp, EwOp::kLoad>{});
    case EwOp::kGelu: return go(std::integral_constant<EwOp, EwOp::kGelu>{});
    case EwOp::kGeluTanh: return go(std::integral_constant<EwOp, EwOp::kGeluTanh>{});
    case EwOp::kSiLU: return go(std::integral_constant<EwOp, EwOp::kSiLU>{});
    case EwOp::kRelu: return go(std::integral_constant<EwOp, EwOp::kRelu>{});
    default: return false;
  }
}

template <typename T>
bool launch_unary_vec(EwOp op, const void* x, void* y, uint32_t nvec, unsigned blocks, cudaStream_t stream) {
  const T* xt = static_cast<const T*>(x);
  T* yt = static_cast<T*>(y);
  switch (op) {
    case EwOp::kGelu: unary_vec_kernel<T, EwOp::kGelu><<<blocks, kThreads, 0, stream>>>(xt, yt, nvec); return true;
    case EwOp::kErf: unary_vec_kernel<T, EwOp::kErf><<<blocks, kThreads, 0, stream>>>(xt, yt, nvec); return true;
    case EwOp::kGeluTanh: unary_vec_kernel<T, EwOp::kGeluTanh><<<blocks, kThreads, 0, stream>>>(xt, yt, nvec); return true;
    case EwOp::kSiLU: unary_vec_kernel<T, EwOp::kSiLU><<<blocks, kThreads, 0, stream>>>(xt, yt, nvec); return true;
    case EwOp::kSigmoid: unary_vec_kernel<T, EwOp::kSigmoid><<<blocks, kThreads, 0, stream>>>(xt, yt, nvec); return true;
    case EwOp::kTanh: unary_vec_kernel<T, EwOp::kTanh><<<blocks, kThreads, 0, stream>>>(xt, yt, nvec); return true;
    case EwOp::kRelu: unary_vec_kernel<T, EwOp::kRelu><<<blocks, kThreads, 0, stream>>>(xt, yt, nvec); return true;
    default: return false;
  }
}

// U: the unit copied (1, 4 or 16 bytes); inner counts units.
template <typename U>
__global__ void gather_kernel(ElemType it, const U* __restrict__ data, const void* __restrict__ idx, U* __restrict__ y,
                              int64_t outer, int64_t axis_dim, int64_t inner, int64_t count) {
  const int64_t n = outer * count * inner;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e % inner, t = (e / inner) % count, o = e / (inner * count);
    int64_t j = it == ElemType::kI64 ? static_cast<const int64_t*>(idx)[t] : static_cast<const int32_t*>(idx)[t];
    if (j < 0) j += axis_dim;
    if (j < 0 || j >= axis_dim) {
      y[e] = U{};
      continue;
    }
    y[e] = data[(o * axis_dim + j) * inner + i];
  }
}



// One thread per output element (channels fastest, so a warp reads 32 neighbouring channels).
template <typename T, typename I>
__global__ void pool2d_nhwc_kernel(const T* __restrict__ x, T* __restrict__ y, Pool2d p, I n) {
  const I C = static_cast<I>(p.c), OW = static_cast<I>(p.ow), OH = static_cast<I>(p.oh);
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < n; e += static_cast<I>(gridDim.x) * blockDim.x) {
    const I c = e % C, r = e / C;
    const I ox = r % OW, r2 = r / OW;
    const I oy = r2 % OH, b = r2 / OH;
    float acc = p.max ? -INFINITY : 0.f;
    int count = 0;
    for (int ky = 0; ky < p.kh; ++ky) {
      const int64_t iy = static_cast<int64_t>(oy) * p.sh - p.pad_t + ky * p.dh;
      for (int kx = 0; kx < p.kw; ++kx) {
        const int64_t ix = static_cast<int64_t>(ox) * p.sw - p.pad_l + kx * p.dw;
        if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) {
          if (p.count_include_pad) ++count;
          continue;
        }
        const float v = to_f(x[((static_cast<int64_t>(b) * p.h + iy) * p.w + ix) * p.c + c]);
        acc = p.max ? fmaxf(acc, v) : acc + v;
        ++count;
      }
    }
    y[e] = from_f<T>(p.max ? acc : (count ? acc / count : 0.f));
  }
}

// The same with 16 bytes (8 or 4 channels) per thread when the channel count allows: one index
// computation and one 16-byte load per tap for 8 outputs (the scalar kernel is bound by its
// integer arithmetic, not by memory).
template <typename T>
__global__ void pool2d_nhwc_vec_kernel(const T* __restrict__ x, T* __restrict__ y, Pool2d p, uint32_t n) {
  constexpr int V = 16 / sizeof(T);
  const uint32_t CV = static_cast<uint32_t>(p.c / V), OW = static_cast<uint32_t>(p.ow), OH = static_cast<uint32_t>(p.oh);
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) {
    const uint32_t cv = e % CV, r = e / CV;
    const uint32_t ox = r % OW, r2 = r / OW;
    const uint32_t oy = r2 % OH, b = r2 / OH;
    float acc[V];
#pragma unroll
    for (int u = 0; u < V; ++u) acc[u] = p.max ? -INFINITY : 0.f;
    int count = 0;
    for (int ky = 0; ky < p.kh; ++ky) {
      const int iy = static_cast<int>(oy) * p.sh - p.pad_t + ky * p.dh;
      for (int kx = 0; kx < p.kw; ++kx) {
        const int ix = static_cast<int>(ox) * p.sw - p.pad_l + kx * p.dw;
        if (iy < 0 || iy >= p.h || ix < 0 || ix >= p.w) {
          if (p.count_include_pad) ++count;
          continue;
        }
        union {
          uint4 raw;
          T v[V];
        } in;
        in.raw = *reinterpret_cast<const uint4*>(x + ((static_cast<size_t>(b) * p.h + iy) * p.w + ix) * p.c + cv * V);
#pragma unroll
        for (int u = 0; u < V; ++u) acc[u] = p.max ? fmaxf(acc[u], to_f(in.v[u])) : acc[u] + to_f(in.v[u]);
        ++count;
      }
    }
    union {
      uint4 raw;
      T v[V];
    } out;
#pragma unroll
    for (int u = 0; u < V; ++u) out.v[u] = from_f<T>(p.max ? acc[u] : (count ? acc[u] / count : 0.f));
    *reinterpret_cast<uint4*>(y + static_cast<size_t>(e) * V) = out.raw;
  }
}

// A thread per output pixel and V channels (16 bytes when the channel count allows, else 1):
// one 16-byte load per tap of the input and of the [R][S][C] filter.
template <typename T, int V>
__global__ void depthwise_nhwc_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                                      const T* __restrict__ z, T* __restrict__ y, Depthwise2d p, uint32_t n) {
  const uint32_t CV = static_cast<uint32_t>(p.c / V), OW = static_cast<uint32_t>(p.ow), OH = static_cast<uint32_t>(p.oh);
  const int C = static_cast<int>(p.c);
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) {
    const uint32_t cv = e % CV, r = e / CV;
    const uint32_t ox = r % OW, r2 = r / OW;
    const uint32_t oy = r2 % OH, b = r2 / OH;
    const int c0 = static_cast<int>(cv) * V;
    float acc[V];
#pragma unroll
    for (int u = 0; u < V; ++u) acc[u] = bias ? to_f(bias[c0 + u]) : 0.f;
    for (int ky = 0; ky < p.r; ++ky) {
      const int iy = static_cast<int>(oy) * p.sh - p.pad_t + ky * p.dh;
      if (iy < 0 || iy >= p.h) continue;
      for (int kx = 0; kx < p.s; ++kx) {
        const int ix = static_cast<int>(ox) * p.sw - p.pad_l + kx * p.dw;
        if (ix < 0 || ix >= p.w) continue;
        const T* xp = x + ((static_cast<size_t>(b) * p.h + iy) * p.w + ix) * C + c0;
        const T* wp = w + (static_cast<size_t>(ky) * p.s + kx) * C + c0;
        if constexpr (V == 1) {
          acc[0] += fminf(to_f(*xp), p.in_hi) * to_f(*wp);
        } else {
          union {
            uint4 raw;
            T v[V];
          } xv, wv;
          xv.raw = __ldg(reinterpret_cast<const uint4*>(xp));
          wv.raw = __ldg(reinterpret_cast<const uint4*>(wp));
#pragma unroll
          for (int u = 0; u < V; ++u) acc[u] += fminf(to_f(xv.v[u]), p.in_hi) * to_f(wv.v[u]);
        }
      }
    }
    const size_t o = static_cast<size_t>(e) * V;
#pragma unroll
    for (int u = 0; u < V; ++u) {
      float v = acc[u];
      if (z) v += to_f(z[o + u]);
      v = fminf(fmaxf(v, p.lo), p.hi);
      y[o + u] = from_f<T>(v);
    }
  }
}

__global__ void mean_middle_kernel(ElemType t, const void* x, void* y, int64_t n, int64_t s, int64_t c) {
  const int64_t total = n * c;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ch = e % c, b = e / c;
    float acc = 0.f;
    for (int64_t i = 0; i < s; ++i) acc += load_f(t, x, (b * s + i) * c + ch);
    store_f(t, y, e, acc / static_cast<float>(s));
  }
}


}  // namespace

void copy_strided(ElemType xt, const void* x, ElemType yt, void* y, const StridedCopy& c, cudaStream_t stream) {
  const int64_t n = count_of(c.rank, c.dims, "copy_strided");
  if (n == 0) return;
  if (c.pad_channels > 0) {
    if (!gpu::channel_pad_ok(c)) throw CudaError("copy_strided: pad_channels needs rank 4 and a dense NHWC output of 1-64 channels, at least C");
    const int64_t N = c.dims[0], C = c.dims[1], H = c.dims[2], W = c.dims[3], P = c.pad_channels;
    const bool nchw = c.x_strides[3] == 1 && c.x_strides[2] == W && c.x_strides[1] == H * W && c.x_strides[0] == C * H * W;
    if (nchw && xt == ElemType::kF32 && yt == ElemType::kF16 && (P == 4 || P == 8) && (H * W) % 4 == 0 &&
        (reinterpret_cast<uintptr_t>(x) & 15) == 0 && (reinterpret_cast<uintptr_t>(y) & 15) == 0) {
      nchw_f32_to_nhwc_f16_padded_kernel<<<blocks_for(N * H * W / 4), kThreads, 0, stream>>>(
          static_cast<const float*>(x), static_cast<__half*>(y), N, static_cast<int>(C), static_cast<int>(P), H * W);
      check_launch("nchw_f32_to_nhwc_f16_padded");
      return;
    }
    launch_to_nhwc_few(xt, x, yt, y, c, P, stream);
    return;
  }
  // NCHW <-> NHWC of floats: tiled transposes. dims are the logical [N, C, H, W].
  const bool floats = xt != ElemType::kI64 && xt != ElemType::kI32 && yt != ElemType::kI64 && yt != ElemType::kI32 &&
                      xt != ElemType::kF64 && yt != ElemType::kF64;
  if (c.rank == 4 && floats && n < (int64_t{1} << 31)) {
    const int64_t N = c.dims[0], C = c.dims[1], HW = c.dims[2] * c.dims[3], W = c.dims[3];
    const int64_t nchw[4] = {C * HW, HW, W, 1}, nhwc[4] = {HW * C, 1, W * C, C};
    auto is = [](const int64_t* s, const int64_t* want) {
      for (int d = 0; d < 4; ++d)
        if (s[d] != want[d]) return false;
      return true;
    };
    const bool to_nhwc = is(c.x_strides, nchw) && is(c.y_strides, nhwc);
    const bool to_nchw = is(c.x_strides, nhwc) && is(c.y_strides, nchw);
    if (to_nhwc && C <= 8) {
      launch_to_nhwc_few(xt, x, yt, y, c, C, stream);
      return;
    }
    if ((to_nhwc || to_nchw) && N <= 65535 && C >= 32) {
      const int64_t rows = to_nhwc ? C : HW, cols = to_nhwc ? HW : C;
      const dim3 grid(static_cast<unsigned>((cols + 31) / 32), static_cast<unsigned>((rows + 31) / 32),
                      static_cast<unsigned>(N));
      if (grid.y <= 65535) {
        transpose_tiles_kernel<<<grid, dim3(32, 8), 0, stream>>>(xt, x, yt, y, rows, cols);
        check_launch("transpose_tiles");
        return;
      }
    }
  }
  // Same type, last dim contiguous on both sides: move 16-byte vectors.
  if (xt == yt && c.rank >= 1 && c.x_strides[c.rank - 1] == 1 && c.y_strides[c.rank - 1] == 1 &&
      (reinterpret_cast<uintptr_t>(x) & 15) == 0 && (reinterpret_cast<uintptr_t>(y) & 15) == 0) {
    const int64_t v = 16 / static_cast<int64_t>(elem_size(xt));
    bool ok = c.dims[c.rank - 1] % v == 0;
    for (int d = 0; d + 1 < c.rank; ++d) ok = ok && c.x_strides[d] % v == 0 && c.y_strides[d] % v == 0;
    if (ok && n / v < (int64_t{1} << 31)) {
      StridedCopy u = c;
      u.dims[c.rank - 1] /= v;
      for (int d = 0; d + 1 < c.rank; ++d) u.x_strides[d] /= v, u.y_strides[d] /= v;
      copy_units_kernel<uint4><<<blocks_for(n / v), kThreads, 0, stream>>>(static_cast<const uint4*>(x),
                                                                            static_cast<uint4*>(y), u,
                                                                            static_cast<uint32_t>(n / v));
      check_launch("copy_strided");
      return;
    }
  }
  if (n < (int64_t{1} << 31))
    copy_strided_kernel<uint32_t><<<blocks_for(n), kThreads, 0, stream>>>(xt, x, yt, y, c, static_cast<uint32_t>(n));
  else
    copy_strided_kernel<int64_t><<<blocks_for(n), kThreads, 0, stream>>>(xt, x, yt, y, c, n);
  check_launch("copy_strided");
}

void elementwise(const EwProgram& p, const void* const* inputs, void* y, cudaStream_t stream) {
  const int64_t n = count_of(p.rank, p.dims, "elementwise");
  if (p.num_inputs < 0 || p.num_inputs > kMaxEwInputs || p.num_steps < 0 || p.num_steps > kMaxEwSteps)
    throw CudaError("elementwise: too many inputs or steps");
  for (int s = 0; s < p.num_steps; ++s)
    if (p.steps[s].a < 0 || p.steps[s].a >= p.num_inputs || p.steps[s].b < 0 ||
        (p.steps[s].op == EwOp::kWhere && p.steps[s].b >= p.num_inputs))
      throw CudaError("elementwise: step " + std::to_string(s) + " reads an input that does not exist");
  if (n == 0) return;
  EwPtrs ptrs{};
  unsigned dense = 0, scalar = 0;
  for (int k = 0; k < p.num_inputs; ++k) {
    ptrs.p[k] = inputs[k];
    bool is_dense = true, is_scalar = true;
    int64_t expect = 1;
    for (int d = p.rank - 1; d >= 0; --d) {
      if (p.dims[d] != 1 && p.in_strides[k][d] != expect) is_dense = false;
      if (p.dims[d] != 1 && p.in_strides[k][d] != 0) is_scalar = false;
      expect *= p.dims[d];
    }
    if (is_dense) dense |= 1u << k;
    else if (is_scalar) scalar |= 1u << k;
  }
  // [Load x, (one activation), Affine(scale, 0)] from one dense float input to FP8: the
  // quantizing kernel.
  if (p.out_type == ElemType::kF8E4M3 && p.num_inputs == 1 && (dense & 1u) && (p.num_steps == 2 || p.num_steps == 3) &&
      p.steps[0].op == EwOp::kLoad && p.steps[p.num_steps - 1].op == EwOp::kAffine && p.steps[p.num_steps - 1].p1 == 0.f &&
      n % 8 == 0 && n / 8 < (int64_t{1} << 31) && (reinterpret_cast<uintptr_t>(inputs[0]) & 15) == 0 &&
      (reinterpret_cast<uintptr_t>(y) & 7) == 0) {
    const EwOp op = p.num_steps == 3 ? p.steps[1].op : EwOp::kLoad;
    const float scale = p.steps[p.num_steps - 1].p0;
    const uint32_t n8 = static_cast<uint32_t>(n / 8);
    const unsigned blocks = blocks_for(n8);
    const ElemType xt = p.in_types[0];
    const bool done = xt == ElemType::kF16    ? launch_quantize<__half, false>(op, inputs[0], y, scale, n8, blocks, stream)
                      : xt == ElemType::kBF16 ? launch_quantize<__nv_bfloat16, false>(op, inputs[0], y, scale, n8, blocks, stream)
                      : xt == ElemType::kF32  ? launch_quantize<float, false>(op, inputs[0], y, scale, n8, blocks, stream)
                                              : false;
    if (done) {
      check_launch("elementwise (fp8 quantize)");
      return;
    }
  }
  // [Load x, (one activation), Affine(scale, 0), Round, Clip(-128, 127)] from one dense float
  // input to INT8: the quantizing kernel (the same values: the product is rounded to FP32 either way).
  const int act = p.num_steps - 4;  // 1 with the activation
  if (p.out_type == ElemType::kI8 && p.num_inputs == 1 && (dense & 1u) && (act == 0 || act == 1) &&
      p.steps[0].op == EwOp::kLoad && p.steps[1 + act].op == EwOp::kAffine && p.steps[1 + act].p1 == 0.f &&
      p.steps[2 + act].op == EwOp::kRound && p.steps[3 + act].op == EwOp::kClip && p.steps[3 + act].p0 == -128.f &&
      p.steps[3 + act].p1 == 127.f && n % 8 == 0 && n / 8 < (int64_t{1} << 31) &&
      (reinterpret_cast<uintptr_t>(inputs[0]) & 15) == 0 && (reinterpret_cast<uintptr_t>(y) & 7) == 0) {
    const EwOp op = act ? p.steps[1].op : EwOp::kLoad;
    const float scale = p.steps[1 + act].p0;
    const uint32_t n8 = static_cast<uint32_t>(n / 8);
    const unsigned blocks = blocks_for(n8);
    const ElemType xt = p.in_types[0];
    const bool done = xt == ElemType::kF16    ? launch_quantize<__half, true>(op, inputs[0], y, scale, n8, blocks, stream)
                      : xt == ElemType::kBF16 ? launch_quantize<__nv_bfloat16, true>(op, inputs[0], y, scale, n8, blocks, stream)
                      : xt == ElemType::kF32  ? launch_quantize<float, true>(op, inputs[0], y, scale, n8, blocks, stream)
                                              : false;
    if (done) {
      check_launch("elementwise (int8 quantize)");
      return;
    }
  }
  // Uniform float type, dense or scalar inputs: the typed kernel.
  const int64_t per = p.out_type == ElemType::kF32 ? 4 : 8;  // elements in 16 bytes
  const bool float_out = p.out_type == ElemType::kF32 || p.out_type == ElemType::kF16 || p.out_type == ElemType::kBF16;
  // Inputs that vary along the innermost dim only, whole 16-byte vectors long (16-byte kernel only).
  unsigned inner = 0;
  const int64_t inner_len = p.rank > 0 ? p.dims[p.rank - 1] : 1;
  for (int k = 0; k < p.num_inputs && p.rank > 1; ++k) {
    if (((dense | scalar) >> k) & 1u || p.in_strides[k][p.rank - 1] != 1 || inner_len % per != 0) continue;
    bool only_inner = true;
    for (int d = 0; d + 1 < p.rank; ++d) only_inner = only_inner && (p.dims[d] == 1 || p.in_strides[k][d] == 0);
    if (only_inner) inner |= 1u << k;
  }
  bool uniform = float_out, uniform_vec = float_out;
  for (int k = 0; k < p.num_inputs; ++k) {
    uniform = uniform && p.in_types[k] == p.out_type && (((dense | scalar) >> k) & 1u);
    uniform_vec = uniform_vec && p.in_types[k] == p.out_type && (((dense | scalar | inner) >> k) & 1u);
  }
  bool aligned = (reinterpret_cast<uintptr_t>(y) & 15) == 0;
  for (int k = 0; k < p.num_inputs; ++k)
    aligned = aligned && (((scalar >> k) & 1u) || (reinterpret_cast<uintptr_t>(inputs[k]) & 15) == 0);
  if (uniform_vec && !uniform && aligned && n % per == 0 && n < (int64_t{1} << 31)) {
    const uint32_t nvec = static_cast<uint32_t>(n / per), inner_vecs = static_cast<uint32_t>(inner_len / per);
    const unsigned blocks = blocks_for(nvec);
    if (p.out_type == ElemType::kF32)
      elementwise_vec_kernel<float><<<blocks, kThreads, 0, stream>>>(p, ptrs, nvec, static_cast<float*>(y), scalar, inner, inner_vecs);
    else if (p.out_type == ElemType::kF16)
      elementwise_vec_kernel<__half><<<blocks, kThreads, 0, stream>>>(p, ptrs, nvec, static_cast<__half*>(y), scalar, inner, inner_vecs);
    else
      elementwise_vec_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(p, ptrs, nvec, static_cast<__nv_bfloat16*>(y),
                                                                             scalar, inner, inner_vecs);
  } else if (uniform && aligned && n % per == 0 && n < (int64_t{1} << 31)) {
    const uint32_t nvec = static_cast<uint32_t>(n / per);
    const unsigned blocks = blocks_for(nvec);
    // One activation of one dense input (a GEMM's GELU epilogue): the specialized kernel.
    if (p.num_steps == 2 && p.num_inputs == 1 && (dense & 1u) && p.steps[0].op == EwOp::kLoad) {
      const EwOp op = p.steps[1].op;
      const bool done = p.out_type == ElemType::kF32  ? launch_unary_vec<float>(op, inputs[0], y, nvec, blocks, stream)
                        : p.out_type == ElemType::kF16 ? launch_unary_vec<__half>(op, inputs[0], y, nvec, blocks, stream)
                                                       : launch_unary_vec<__nv_bfloat16>(op, inputs[0], y, nvec, blocks, stream);
      if (done) {
        check_launch("elementwise (unary)");
        return;
      }
    }
    if (p.out_type == ElemType::kF32)
      elementwise_vec_kernel<float><<<blocks, kThreads, 0, stream>>>(p, ptrs, nvec, static_cast<float*>(y), scalar);
    else if (p.out_type == ElemType::kF16)
      elementwise_vec_kernel<__half><<<blocks, kThreads, 0, stream>>>(p, ptrs, nvec, static_cast<__half*>(y), scalar);
    else
      elementwise_vec_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(p, ptrs, nvec,
                                                                             static_cast<__nv_bfloat16*>(y), scalar);
  } else if (uniform && n < (int64_t{1} << 31)) {
    const uint32_t un = static_cast<uint32_t>(n);
    const unsigned blocks = blocks_for((n + 3) / 4);
    if (p.out_type == ElemType::kF32)
      elementwise_dense_kernel<float><<<blocks, kThreads, 0, stream>>>(p, ptrs, un, static_cast<float*>(y), scalar);
    else if (p.out_type == ElemType::kF16)
      elementwise_dense_kernel<__half><<<blocks, kThreads, 0, stream>>>(p, ptrs, un, static_cast<__half*>(y), scalar);
    else
      elementwise_dense_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(p, ptrs, un, static_cast<__nv_bfloat16*>(y),
                                                                               scalar);
  } else if (n < (int64_t{1} << 31))
    elementwise_kernel<uint32_t><<<blocks_for(n), kThreads, 0, stream>>>(p, ptrs, static_cast<uint32_t>(n), y, dense, scalar);
  else
    elementwise_kernel<int64_t><<<blocks_for(n), kThreads, 0, stream>>>(p, ptrs, n, y, dense, scalar);
  check_launch("elementwise");
}

void gather(ElemType idx_type, const void* data, const void* idx, void* y, int64_t outer, int64_t axis_dim,
            int64_t inner, int64_t count, size_t elem_bytes, cudaStream_t stream) {
  if (idx_type != ElemType::kI64 && idx_type != ElemType::kI32) throw CudaError("gather: indices must be int64 or int32");
  if (outer < 0 || axis_dim < 0 || inner < 0 || count < 0) throw CudaError("gather: negative dimension");
  const int64_t n = outer * count * inner;
  if (n == 0) return;
  // Whole rows of `inner` elements move together: copy them in the widest unit they allow.
  const int64_t row_bytes = inner * static_cast<int64_t>(elem_bytes);
  const bool a16 = (reinterpret_cast<uintptr_t>(data) & 15) == 0 && (reinterpret_cast<uintptr_t>(y) & 15) == 0;
  const bool a4 = (reinterpret_cast<uintptr_t>(data) & 3) == 0 && (reinterpret_cast<uintptr_t>(y) & 3) == 0;
  if (row_bytes % 16 == 0 && a16) {
    const int64_t units = outer * count * (row_bytes / 16);
    gather_kernel<uint4><<<blocks_for(units), kThreads, 0, stream>>>(idx_type, static_cast<const uint4*>(data), idx,
                                                                      static_cast<uint4*>(y), outer, axis_dim,
                                                                      row_bytes / 16, count);
  } else if (row_bytes % 4 == 0 && a4) {
    const int64_t units = outer * count * (row_bytes / 4);
    gather_kernel<uint32_t><<<blocks_for(units), kThreads, 0, stream>>>(idx_type, static_cast<const uint32_t*>(data), idx,
                                                                         static_cast<uint32_t*>(y), outer, axis_dim,
                                                                         row_bytes / 4, count);
  } else {
    gather_kernel<uint8_t><<<blocks_for(n * static_cast<int64_t>(elem_bytes)), kThreads, 0, stream>>>(
        idx_type, static_cast<const uint8_t*>(data), idx, static_cast<uint8_t*>(y), outer, axis_dim, row_bytes, count);
  }
  check_launch("gather");
}

void pool2d_nhwc(ElemType t, const void* x, void* y, const Pool2d& p, cudaStream_t stream) {
  if (p.kh <= 0 || p.kw <= 0 || p.sh <= 0 || p.sw <= 0 || p.dh <= 0 || p.dw <= 0 || p.oh < 0 || p.ow < 0)
    throw CudaError("pool2d: bad window");
  const int64_t n = p.n * p.oh * p.ow * p.c;
  if (n == 0) return;
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    const bool aligned = (reinterpret_cast<uintptr_t>(x) & 15) == 0 && (reinterpret_cast<uintptr_t>(y) & 15) == 0;
    if (p.c % V == 0 && aligned && n / V < (int64_t{1} << 31)) {
      pool2d_nhwc_vec_kernel<T><<<blocks_for(n / V), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), p,
                                                                             static_cast<uint32_t>(n / V));
    } else if (n < (int64_t{1} << 31))
      pool2d_nhwc_kernel<T, uint32_t><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), p,
                                                                              static_cast<uint32_t>(n));
    else
      pool2d_nhwc_kernel<T, int64_t><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), p, n);
  };
  if (t == ElemType::kF32) launch(float{});
  else if (t == ElemType::kF16) launch(__half{});
  else if (t == ElemType::kBF16) launch(__nv_bfloat16{});
  else throw CudaError(std::string("pool2d: unsupported type ") + elem_type_name(t));
  check_launch("pool2d_nhwc");
}

void depthwise_nhwc(ElemType t, const void* x, const void* w, const void* bias, const void* z, void* y,
                    const Depthwise2d& p, cudaStream_t stream) {
  if (p.r <= 0 || p.s <= 0 || p.sh <= 0 || p.sw <= 0 || p.dh <= 0 || p.dw <= 0 || p.c <= 0)
    throw CudaError("depthwise: bad window");
  const int64_t n = p.n * p.oh * p.ow * p.c;
  if (n == 0) return;
  if (n >= (int64_t{1} << 32)) throw CudaError("depthwise: more than 2^32 outputs");
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    bool aligned = true;
    for (const void* q : {x, w, static_cast<const void*>(y)}) aligned = aligned && (reinterpret_cast<uintptr_t>(q) & 15) == 0;
    if (p.c % V == 0 && aligned)
      depthwise_nhwc_kernel<T, V><<<blocks_for(n / V), kThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias), static_cast<const T*>(z),
          static_cast<T*>(y), p, static_cast<uint32_t>(n / V));
    else
      depthwise_nhwc_kernel<T, 1><<<blocks_for(n), kThreads, 0, stream>>>(
          static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias), static_cast<const T*>(z),
          static_cast<T*>(y), p, static_cast<uint32_t>(n));
  };
  if (t == ElemType::kF32) launch(float{});
  else if (t == ElemType::kF16) launch(__half{});
  else if (t == ElemType::kBF16) launch(__nv_bfloat16{});
  else throw CudaError(std::string("depthwise: unsupported type ") + elem_type_name(t));
  check_launch("depthwise_nhwc");
}

void mean_middle(ElemType t, const void* x, void* y, int64_t n, int64_t s, int64_t c, cudaStream_t stream) {
  if (n < 0 || s <= 0 || c < 0) throw CudaError("mean_middle: bad shape");
  if (n * c == 0) return;
  mean_middle_kernel<<<blocks_for(n * c), kThreads, 0, stream>>>(t, x, y, n, s, c);
  check_launch("mean_middle");
}

}  // namespace kiln::cuda
