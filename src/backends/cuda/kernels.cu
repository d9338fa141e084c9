// Kiln's own CUDA kernels (see kernels.h). Rows are reduced by one block each (warp shuffles,
// then shared memory across warps); element loops are grid-stride. Statistics accumulate in FP32.
#include <chrono>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "backends/cuda/convert.cuh"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"

namespace kiln::cuda {

const char* dtype_name(DType t) { return t == DType::kF32 ? "fp32" : t == DType::kF16 ? "fp16" : "bf16"; }

namespace {



constexpr int kBlock = 256;

// Sum over the block; every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `shared` may still be read from a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += shared[w];
  return total;
}

__device__ __forceinline__ float block_max(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float m = -INFINITY;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) m = fmaxf(m, shared[w]);
  return m;
}

// One byte of a narrow GEMM's input: E4M3 (nearest even, saturated) or INT8 (half to even, saturated).
__device__ __forceinline__ uint8_t narrow_copy(float v, bool int8) {
  if (int8) return static_cast<uint8_t>(static_cast<int8_t>(max(-128, min(127, __float2int_rn(v)))));
  return __nv_fp8_e4m3(v).__x;
}

// Two passes over the row (mean, then the centred variance: no cancellation), a third to write.
template <typename T>
__global__ void layer_norm_kernel(const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ gamma,
                                  const T* __restrict__ beta, T* __restrict__ y, T* __restrict__ sum, int64_t cols,
                                  float eps, uint8_t* __restrict__ y8, float y8_mul, bool y8_int8) {
  __shared__ float shared[32];
  const T* row = x + blockIdx.x * cols;
  const T* rrow = res ? res + blockIdx.x * cols : nullptr;
  T* out = y + blockIdx.x * cols;
  // x + residual, rounded to T like the unfused Add's output.
  auto at = [&](int64_t c) { return rrow ? to_f(from_f<T>(to_f(row[c]) + to_f(rrow[c]))) : to_f(row[c]); };
  float s = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += at(c);
  const float mean = block_sum(s, shared) / static_cast<float>(cols);
  float v = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = at(c) - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(block_sum(v, shared) / static_cast<float>(cols) + eps);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float r = (at(c) - mean) * rstd;
    if (gamma) r *= to_f(gamma[c]);
    if (beta) r += to_f(beta[c]);
    out[c] = from_f<T>(r);
    if (sum) sum[blockIdx.x * cols + c] = from_f<T>(at(c));
    if (y8) y8[blockIdx.x * cols + c] = narrow_copy(to_f(from_f<T>(r)) * y8_mul, y8_int8);
  }
}

template <typename T>
__global__ void softmax_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t cols) {
  __shared__ float shared[32];
  const T* row = x + blockIdx.x * cols;
  T* out = y + blockIdx.x * cols;
  float m = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, to_f(row[c]));
  m = block_max(m, shared);
  float s = 0;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += __expf(to_f(row[c]) - m);
  const float inv = 1.f / block_sum(s, shared);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[c] = from_f<T>(__expf(to_f(row[c]) - m) * inv);
}

// Rows of up to 32 * VPL * N elements, one warp per row, 16-byte loads (N elements each) kept in
// registers: the row is read from memory once and written once, and no thread idles on short rows
// (a block per row leaves most of 256 threads without work at 768 or 128 columns).
template <typename T>
struct Vec {
  static constexpr int N = 16 / static_cast<int>(sizeof(T));
  union {
    uint4 raw;
    T v[N];
  };
};

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

constexpr int kWarpsPerBlock = 4;

template <typename T, int VPL>
__global__ void layer_norm_warp_kernel(const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ gamma,
                                       const T* __restrict__ beta, T* __restrict__ y, T* __restrict__ sum, int64_t rows,
                                       int cols, float eps, uint8_t* __restrict__ y8, float y8_mul, bool y8_int8) {
  constexpr int N = Vec<T>::N;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int vecs = cols / N;
  const uint4* in = reinterpret_cast<const uint4*>(x + row * cols);
  const uint4* rin = res ? reinterpret_cast<const uint4*>(res + row * cols) : nullptr;
  float vals[VPL][N];
  float s = 0;
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    const int v = lane + 32 * j;
    Vec<T> a, r;
    a.raw = v < vecs ? in[v] : make_uint4(0, 0, 0, 0);
    r.raw = rin && v < vecs ? rin[v] : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int e = 0; e < N; ++e) {
      // x + residual, rounded to T like the unfused Add's output.
      vals[j][e] = v < vecs ? (rin ? to_f(from_f<T>(to_f(a.v[e]) + to_f(r.v[e]))) : to_f(a.v[e])) : 0.f;
      s += vals[j][e];
    }
    if (sum && v < vecs) {  // the residual sum itself, for its other readers
      Vec<T> o;
#pragma unroll
      for (int e = 0; e < N; ++e) o.v[e] = from_f<T>(vals[j][e]);
      reinterpret_cast<uint4*>(sum + row * cols)[v] = o.raw;
    }
  }
  const float mean = warp_sum(s) / static_cast<float>(cols);
  float q = 0;
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    if (lane + 32 * j >= vecs) continue;
#pragma unroll
    for (int e = 0; e < N; ++e) {
      const float d = vals[j][e] - mean;
      q += d * d;
    }
  }
  const float rstd = rsqrtf(warp_sum(q) / static_cast<float>(cols) + eps);
  uint4* out = reinterpret_cast<uint4*>(y + row * cols);
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    const int v = lane + 32 * j;
    if (v >= vecs) continue;
    Vec<T> g, b, o;
    if (gamma) g.raw = reinterpret_cast<const uint4*>(gamma)[v];
    if (beta) b.raw = reinterpret_cast<const uint4*>(beta)[v];
#pragma unroll
    for (int e = 0; e < N; ++e) {
      float r = (vals[j][e] - mean) * rstd;
      if (gamma) r *= to_f(g.v[e]);
      if (beta) r += to_f(b.v[e]);
      o.v[e] = from_f<T>(r);
    }
    out[v] = o.raw;
    if (y8) {  // the same values in FP8 or INT8 (a narrow GEMM's input), as a quantizing pass would write them
      uint8_t q[N];
#pragma unroll
      for (int e = 0; e < N; ++e) q[e] = narrow_copy(to_f(o.v[e]) * y8_mul, y8_int8);
      uint8_t* dst = y8 + row * cols + static_cast<int64_t>(v) * N;
      if constexpr (N == 8) *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(q);
      else *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(q);
    }
  }
}

template <typename T, int VPL>
__global__ void softmax_warp_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int cols) {
  constexpr int N = Vec<T>::N;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const int vecs = cols / N;
  const uint4* in = reinterpret_cast<const uint4*>(x + row * cols);
  float vals[VPL][N];
  float m = -INFINITY;
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    const int v = lane + 32 * j;
    Vec<T> a;
    a.raw = v < vecs ? in[v] : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int e = 0; e < N; ++e) {
      vals[j][e] = v < vecs ? to_f(a.v[e]) : -INFINITY;
      m = fmaxf(m, vals[j][e]);
    }
  }
  m = warp_max(m);
  float s = 0;
#pragma unroll
  for (int j = 0; j < VPL; ++j)
#pragma unroll
    for (int e = 0; e < N; ++e) {
      vals[j][e] = lane + 32 * j < vecs ? __expf(vals[j][e] - m) : 0.f;
      s += vals[j][e];
    }
  const float inv = 1.f / warp_sum(s);
  uint4* out = reinterpret_cast<uint4*>(y + row * cols);
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    const int v = lane + 32 * j;
    if (v >= vecs) continue;
    Vec<T> o;
#pragma unroll
    for (int e = 0; e < N; ++e) o.v[e] = from_f<T>(vals[j][e] * inv);
    out[v] = o.raw;
  }
}

// Whether rows of `cols` take the warp path: 16-byte aligned rows of at most 32 * 16 vectors.
template <typename T>
bool warp_path(int64_t cols, std::initializer_list<const void*> ptrs) {
  constexpr int N = Vec<T>::N;
  if (cols % N != 0 || cols > 32 * 16 * N) return false;
  for (const void* p : ptrs)
    if (p && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// Calls f(std::integral_constant<int, VPL>) with the smallest VPL in {1, 2, 4, 8, 16} that covers
// `vecs` vectors per row.
template <typename F>
void with_vpl(int64_t vecs, F&& f) {
  if (vecs <= 32) f(std::integral_constant<int, 1>{});
  else if (vecs <= 64) f(std::integral_constant<int, 2>{});
  else if (vecs <= 128) f(std::integral_constant<int, 4>{});
  else if (vecs <= 256) f(std::integral_constant<int, 8>{});
  else f(std::integral_constant<int, 16>{});
}

template <typename T>
__global__ void bias_gelu_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y, int64_t n,
                                 int64_t cols) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = to_f(x[i]);
    if (bias) v += to_f(bias[i % cols]);
    y[i] = from_f<T>(0.5f * v * (1.f + erff(v * 0.70710678118654752f)));
  }
}

template <typename T>
__global__ void add_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));
}

// One thread per query row: Q's row and the output accumulator live in registers, K and V tiles
// of kTileK keys are staged in shared memory (as FP32) once for 64 queries, and each key updates
// the running max, sum and accumulator (online softmax). Best when there are enough query rows to
// fill the GPU (it reuses each K/V tile 8x more than the warp-per-query kernel below).
constexpr int kAttnQueries = 64;  // queries (threads) per block

template <typename T, int D>
__global__ void attention_thread_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                 T* __restrict__ o, AttnLayout L, int64_t sq, int64_t sk, float scale,
                                 const float* __restrict__ mask, bool causal) {
  constexpr int kTileK = D <= 64 ? 64 : 32;
  __shared__ float ks[kTileK][D];
  __shared__ float vs[kTileK][D];
  __shared__ float ms[kTileK];
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kAttnQueries + threadIdx.x;
  const bool active = i < sq;
  const T* kb = k + b * L.k[0] + h * L.k[1];
  const T* vb = v + b * L.v[0] + h * L.v[1];
  // The mask row: shared by the block's queries unless it varies along the query rows.
  const float* mrow = mask ? mask + b * L.mask[0] + h * L.mask[1] : nullptr;
  const bool row_mask = mask && L.mask[2] != 0;
  const float* my_mask = row_mask && active ? mrow + i * L.mask[2] : nullptr;
  float qr[D], acc[D];
#pragma unroll
  for (int d = 0; d < D; ++d) {
    qr[d] = active ? to_f(q[b * L.q[0] + h * L.q[1] + i * L.q[2] + d]) * scale : 0.f;
    acc[d] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  // Keys after `last` are hidden from this query by the causal mask.
  const int64_t last = causal ? i + (sk - sq) : sk - 1;
  // The block's last query decides how far any of its threads looks.
  const int64_t block_last_q = min(static_cast<int64_t>(blockIdx.x) * kAttnQueries + kAttnQueries - 1, sq - 1);
  const int64_t block_end = causal ? min(sk, block_last_q + (sk - sq) + 1) : sk;
  for (int64_t t0 = 0; t0 < block_end; t0 += kTileK) {
    __syncthreads();  // the previous tile is no longer read
    for (int idx = threadIdx.x; idx < kTileK * D; idx += blockDim.x) {
      const int r = idx / D, d = idx % D;
      const int64_t j = t0 + r;
      ks[r][d] = j < sk ? to_f(kb[j * L.k[2] + d]) : 0.f;
      vs[r][d] = j < sk ? to_f(vb[j * L.v[2] + d]) : 0.f;
    }
    for (int r = threadIdx.x; r < kTileK; r += blockDim.x) {
      const int64_t j = t0 + r;
      ms[r] = j >= sk ? -INFINITY : (mrow && !row_mask) ? mrow[j] : 0.f;
    }
    __syncthreads();
    if (!active) continue;
    const int n = static_cast<int>(min(static_cast<int64_t>(kTileK), sk - t0));
    for (int r = 0; r < n; ++r) {
      if (t0 + r > last) break;
      float s = my_mask ? my_mask[t0 + r] : ms[r];
#pragma unroll
      for (int d = 0; d < D; ++d) s += qr[d] * ks[r][d];
      if (s == -INFINITY) continue;  // a fully masked key
      const float m_new = fmaxf(m, s);
      const float corr = __expf(m - m_new);  // 0 on the first key (m = -inf)
      const float p = __expf(s - m_new);
      l = l * corr + p;
#pragma unroll
      for (int d = 0; d < D; ++d) acc[d] = acc[d] * corr + p * vs[r][d];
      m = m_new;
    }
  }
  if (!active) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int d = 0; d < D; ++d) o[b * L.o[0] + h * L.o[1] + i * L.o[2] + d] = from_f<T>(acc[d] * inv);
}

// A warp per query, kAttnWarps queries per block. K and V tiles of kTileK keys are staged in shared
// memory (FP32; K rows padded against bank conflicts) once per block. For every 32 keys of a tile,
// lane j computes key j's score (a full dot product with the query, read from shared memory), the
// warp takes the chunk's max and sum by shuffles (online softmax in FP32), and each lane updates the
// accumulator of its own head dims (d = lane + 32 * c) with all 32 keys' probabilities. Eight
// times the blocks of the thread-per-query kernel, for small batches. FP32 FMA arithmetic.
constexpr int kAttnWarps = 8;

template <typename T, int D>
__global__ void __launch_bounds__(32 * kAttnWarps) attention_warp_kernel(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o, AttnLayout L,
    int64_t sq, int64_t sk, float scale, const float* __restrict__ mask, bool causal) {
  constexpr int kTileK = D <= 64 ? 64 : 32;
  constexpr int DPL = D >= 32 ? D / 32 : 1;  // head dims per lane
  __shared__ float ks[kTileK][D + 1];
  __shared__ float vs[kTileK][D];
  __shared__ float qs[kAttnWarps][D];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kAttnWarps + warp;
  const bool active = i < sq;
  const T* kb = k + b * L.k[0] + h * L.k[1];
  const T* vb = v + b * L.v[0] + h * L.v[1];
  const float* mrow = mask ? mask + b * L.mask[0] + h * L.mask[1] + (active ? i * L.mask[2] : 0) : nullptr;
  for (int d = lane; d < D; d += 32)
    qs[warp][d] = active ? to_f(q[b * L.q[0] + h * L.q[1] + i * L.q[2] + d]) * scale : 0.f;
  float acc[DPL];
#pragma unroll
  for (int c = 0; c < DPL; ++c) acc[c] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int64_t last = causal ? i + (sk - sq) : sk - 1;  // the last key this query sees
  const int64_t block_last_q = min(static_cast<int64_t>(blockIdx.x) * kAttnWarps + kAttnWarps - 1, sq - 1);
  const int64_t block_end = causal ? min(sk, block_last_q + (sk - sq) + 1) : sk;
  for (int64_t t0 = 0; t0 < block_end; t0 += kTileK) {
    __syncthreads();  // the previous tile is no longer read (and qs is written, on the first pass)
    for (int idx = threadIdx.x; idx < kTileK * D; idx += blockDim.x) {
      const int r = idx / D, d = idx % D;
      const int64_t j = t0 + r;
      ks[r][d] = j < sk ? to_f(kb[j * L.k[2] + d]) : 0.f;
      vs[r][d] = j < sk ? to_f(vb[j * L.v[2] + d]) : 0.f;
    }
    __syncthreads();
    if (!active) continue;
#pragma unroll
    for (int c0 = 0; c0 < kTileK; c0 += 32) {
      const int r = c0 + lane;
      const int64_t j = t0 + r;
      float s = -INFINITY;
      if (j < sk && j <= last) {
        s = mrow ? mrow[j] : 0.f;
#pragma unroll 16
        for (int d = 0; d < D; ++d) s += qs[warp][d] * ks[r][d];
      }
      const float chunk_max = warp_max(s);
      if (chunk_max == -INFINITY) continue;  // no visible key in these 32
      const float m_new = fmaxf(m, chunk_max);
      const float corr = __expf(m - m_new);  // 0 while m is still -inf
      const float p = s == -INFINITY ? 0.f : __expf(s - m_new);
      l = l * corr + warp_sum(p);
#pragma unroll
      for (int c = 0; c < DPL; ++c) acc[c] *= corr;
#pragma unroll 8
      for (int jj = 0; jj < 32; ++jj) {
        const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
        for (int c = 0; c < DPL; ++c) {
          const int d = lane + 32 * c;
          if (d < D) acc[c] += pj * vs[c0 + jj][d];
        }
      }
      m = m_new;
    }
  }
  if (!active) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
  for (int c = 0; c < DPL; ++c) {
    const int d = lane + 32 * c;
    if (d < D) o[b * L.o[0] + h * L.o[1] + i * L.o[2] + d] = from_f<T>(acc[c] * inv);
  }
}

// Softmax with a warp per row for rows of any length up to 32 * 32 (scalar loads, values kept in
// registers): rows whose length is not a multiple of the 16-byte vector (ViT's 197 tokens).
template <typename T, int PER>
__global__ void softmax_warp_scalar_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int cols) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const T* in = x + row * cols;
  float v[PER];
  float m = -INFINITY;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int c = lane + 32 * j;
    v[j] = c < cols ? to_f(in[c]) : -INFINITY;
    m = fmaxf(m, v[j]);
  }
  m = warp_max(m);
  float sum = 0;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    v[j] = lane + 32 * j < cols ? __expf(v[j] - m) : 0.f;
    sum += v[j];
  }
  const float inv = 1.f / warp_sum(sum);
  T* out = y + row * cols;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int c = lane + 32 * j;
    if (c < cols) out[c] = from_f<T>(v[j] * inv);
  }
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  return static_cast<int>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

void check_rows(int64_t rows, int64_t cols, const char* what) {
  if (rows < 0 || cols <= 0 || rows > 0x7fffffff)
    throw CudaError(std::string(what) + ": bad shape rows=" + std::to_string(rows) + " cols=" + std::to_string(cols));
}

// Calls f<T>() with T the CUDA type of `t`.
template <typename F>
void dispatch(DType t, F&& f) {
  switch (t) {
    case DType::kF32: f(float{}); break;
    case DType::kF16: f(__half{}); break;
    case DType::kBF16: f(__nv_bfloat16{}); break;
  }
}

}  // namespace

void layer_norm(DType t, const void* x, const void* gamma, const void* beta, void* y, int64_t rows, int64_t cols,
                float eps, cudaStream_t stream) {
  layer_norm(t, x, nullptr, gamma, beta, y, rows, cols, eps, stream);
}

void layer_norm(DType t, const void* x, const void* residual, const void* gamma, const void* beta, void* y, int64_t rows,
                int64_t cols, float eps, cudaStream_t stream, void* sum, void* y8, float y8_mul, bool y8_int8) {
  check_rows(rows, cols, "layer_norm");
  if (rows == 0) return;
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    if (warp_path<T>(cols, {x, residual, gamma, beta, y, sum})) {
      with_vpl(cols / Vec<T>::N, [&](auto vpl) {
        const unsigned blocks = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
        layer_norm_warp_kernel<T, decltype(vpl)::value><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(
            static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(gamma),
            static_cast<const T*>(beta), static_cast<T*>(y), static_cast<T*>(sum), rows, static_cast<int>(cols), eps,
            static_cast<uint8_t*>(y8), y8_mul, y8_int8);
      });
      return;
    }
    layer_norm_kernel<T><<<static_cast<unsigned>(rows), kBlock, 0, stream>>>(
        static_cast<const T*>(x), static_cast<const T*>(residual), static_cast<const T*>(gamma),
        static_cast<const T*>(beta), static_cast<T*>(y), static_cast<T*>(sum), cols, eps,
        static_cast<uint8_t*>(y8), y8_mul, y8_int8);
  });
  check_launch("layer_norm");
}

void softmax_rows(DType t, const void* x, void* y, int64_t rows, int64_t cols, cudaStream_t stream) {
  check_rows(rows, cols, "softmax");
  if (rows == 0) return;
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    if (warp_path<T>(cols, {x, y})) {
      with_vpl(cols / Vec<T>::N, [&](auto vpl) {
        const unsigned blocks = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
        softmax_warp_kernel<T, decltype(vpl)::value><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(
            static_cast<const T*>(x), static_cast<T*>(y), rows, static_cast<int>(cols));
      });
      return;
    }
    if (cols <= 32 * 32) {
      const unsigned blocks = static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
      auto go = [&](auto per) {
        softmax_warp_scalar_kernel<T, decltype(per)::value><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(
            static_cast<const T*>(x), static_cast<T*>(y), rows, static_cast<int>(cols));
      };
      const int64_t per = (cols + 31) / 32;
      if (per <= 1) go(std::integral_constant<int, 1>{});
      else if (per <= 2) go(std::integral_constant<int, 2>{});
      else if (per <= 4) go(std::integral_constant<int, 4>{});
      else if (per <= 8) go(std::integral_constant<int, 8>{});
      else if (per <= 16) go(std::integral_constant<int, 16>{});
      else go(std::integral_constant<int, 32>{});
      return;
    }
    softmax_kernel<T><<<static_cast<unsigned>(rows), kBlock, 0, stream>>>(static_cast<const T*>(x),
                                                                            static_cast<T*>(y), cols);
  });
  check_launch("softmax");
}

void bias_gelu(DType t, const void* x, const void* bias, void* y, int64_t rows, int64_t cols, cudaStream_t stream) {
  check_rows(rows, cols, "bias_gelu");
  const int64_t n = rows * cols;
  if (n == 0) return;
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    bias_gelu_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(bias),
                                                            static_cast<T*>(y), n, cols);
  });
  check_launch("bias_gelu");
}

void add(DType t, const void* a, const void* b, void* y, int64_t n, cudaStream_t stream) {
  if (n < 0) throw CudaError("add: negative element count");
  if (n == 0) return;
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    add_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(static_cast<const T*>(a), static_cast<const T*>(b),
                                                      static_cast<T*>(y), n);
  });
  check_launch("add");
}

void attention(DType t, const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads,
               int64_t sq, int64_t sk, int64_t head_dim, float scale, const float* key_mask, bool causal,
               cudaStream_t stream) {
  const int64_t D = head_dim;
  AttnLayout L{{heads * sq * D, sq * D, D}, {heads * sk * D, sk * D, D}, {heads * sk * D, sk * D, D},
               {heads * sq * D, sq * D, D}, {sk, 0, 0}};
  attention(t, q, k, v, o, batch, heads, sq, sk, head_dim, scale, L, key_mask, causal, stream);
}

void attention(DType t, const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads,
               int64_t sq, int64_t sk, int64_t head_dim, float scale, const AttnLayout& layout, const float* mask,
               bool causal, cudaStream_t stream) {
  if (batch < 0 || heads < 0 || sq < 0 || sk <= 0 || batch > 65535 || heads > 65535)
    throw CudaError("attention: bad shape batch=" + std::to_string(batch) + " heads=" + std::to_string(heads) +
                    " sq=" + std::to_string(sq) + " sk=" + std::to_string(sk));
  if (head_dim != 16 && head_dim != 32 && head_dim != 64 && head_dim != 128)
    throw CudaError("attention: head_dim " + std::to_string(head_dim) + " is not supported (16, 32, 64 or 128)");
  if (batch == 0 || heads == 0 || sq == 0) return;
  // The tactic: one thread per query once there are query rows for two blocks of 64 per
  // multiprocessor (each K/V tile then serves 64 queries), else a warp per query (8x the blocks).
  // Measured on the H100: BERT batch 32 0.17 vs 0.22 ms, batch 1 0.084 vs 0.021 ms.
  int device = 0, sms = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const bool per_thread = batch * heads * sq >= static_cast<int64_t>(kAttnQueries) * 2 * sms;
  const int per_block = per_thread ? kAttnQueries : kAttnWarps;
  const dim3 grid(static_cast<unsigned>((sq + per_block - 1) / per_block), static_cast<unsigned>(heads),
                  static_cast<unsigned>(batch));
  dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      if (per_thread)
        attention_thread_kernel<T, D><<<grid, kAttnQueries, 0, stream>>>(
            static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(o), layout,
            sq, sk, scale, mask, causal);
      else
        attention_warp_kernel<T, D><<<grid, 32 * kAttnWarps, 0, stream>>>(
            static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(o), layout,
            sq, sk, scale, mask, causal);
    };
    switch (head_dim) {
      case 16: launch(std::integral_constant<int, 16>{}); break;
      case 32: launch(std::integral_constant<int, 32>{}); break;
      case 64: launch(std::integral_constant<int, 64>{}); break;
      default: launch(std::integral_constant<int, 128>{}); break;
    }
  });
  check_launch("attention");
}

__global__ void busy_kernel(float* sink, int iters) {
  float a = threadIdx.x * 1e-3f, b = 1.0001f;
  for (int i = 0; i < iters; ++i) a = fmaf(a, b, 1e-7f);
  if (a == -1.f) sink[threadIdx.x] = a;  // never true: keeps the loop from being optimized away
}

void busy_wait(int ms, int multiprocessors) {
  if (ms <= 0) return;
  // Fixed work per launch: its time falls while the clocks ramp up. Done when five launches in a row
  // agree within 3% (after at least a fifth of the budget), or when the budget is spent.
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto since = [](Clock::time_point a) { return std::chrono::duration<double, std::milli>(Clock::now() - a).count(); };
  double recent[5] = {};
  for (int n = 0; since(t0) < ms; ++n) {
    const auto t = Clock::now();
    busy_kernel<<<(multiprocessors > 0 ? multiprocessors : 1) * 4, 256>>>(nullptr, 1 << 20);
    KILN_CUDA_CHECK(cudaGetLastError());
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    recent[n % 5] = since(t);
    if (n >= 5 && since(t0) >= ms / 5.0) {
      double lo = recent[0], hi = recent[0];
      for (double r : recent) lo = r < lo ? r : lo, hi = r > hi ? r : hi;
      if (hi <= lo * 1.03) return;
    }
  }
}

}  // namespace kiln::cuda
