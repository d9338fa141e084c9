// Fused attention on tensor cores (FP16/BF16 in, FP32 accumulation), flash-attention style, in
// three kernels picked by the size of the grid (launch() at the end):
// - many queries: attention_mma_kernel, mma.sync with operands and accumulators in registers;
// - few queries, 64 keys or more: attention_tc_split_kernel, 16 queries per block whose 4 warps
//   split the keys and merge their partial results;
// - otherwise: attention_tc_kernel with one warp of 16 queries per block. It and the split kernel
//   use WMMA: for every tile of keys a warp computes its 16 rows of scores (16x16x16 tiles),
//   updates the running row max and sum (online softmax, FP32) and the output accumulator
//   O += P V, with scores, probabilities and O kept in shared memory between steps (WMMA
//   fragments are opaque, so rows are rescaled there).
// Scores and probabilities never reach global memory. Same contract as attention() in kernels.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "backends/cuda/convert.cuh"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"

namespace kiln::cuda {
namespace {

using namespace nvcuda;

constexpr int kRows = 16;   // queries per warp
constexpr int kKTile = 64;  // keys per tile
// Row strides of the per-warp shared tiles, padded so that the two lanes of a row and the 16 rows
// spread over the banks (unpadded, every lane of a warp hit the same bank: 32-way conflicts).
constexpr int kSLd = kKTile + 4;  // scores, FP32
constexpr int kPLd = kKTile + 8;  // probabilities, 16-bit
template <int D>
constexpr int kOLd = D + 4;       // output accumulator, FP32

template <int W, int D>
constexpr size_t smem_bytes(size_t elem) {
  // K and V tiles (the Q tile of W*16 rows reuses K's space first, so K's tile has max(64, W*16)
  // rows), then per warp: scores (FP32), P (16-bit), O (FP32).
  return (static_cast<size_t>(kKTile > W * kRows ? kKTile : W * kRows) + kKTile) * D * elem +
         W * (static_cast<size_t>(kRows) * kSLd * 4 + static_cast<size_t>(kRows) * kPLd * elem +
              static_cast<size_t>(kRows) * kOLd<D> * 4);
}



// Copies ROWS rows of D elements (row stride ld elements; rows past `valid` are zeros) into shared
// memory (row stride LDS) with THREADS threads (this one is `tid`), 16 bytes at a time when `vec` (D % 8 == 0, ld % 8 == 0, 16-byte
// aligned base). Every load is issued before any store, so a single warp keeps them all in flight.
template <typename T, int D, int ROWS, int THREADS, int LDS = D>
__device__ __forceinline__ void stage_rows(T* dst, const T* src, int64_t ld, int64_t first, int64_t valid, bool vec,
                                           int tid) {
  if (vec) {
    constexpr int kChunks = ROWS * (D / 8);
    constexpr int kPer = (kChunks + THREADS - 1) / THREADS;
    uint4 buf[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int idx = tid + u * THREADS;
      const int r = idx / (D / 8), c = (idx % (D / 8)) * 8;
      const int64_t i = first + r;
      buf[u] = (idx < kChunks && i < valid) ? __ldg(reinterpret_cast<const uint4*>(src + i * ld + c)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int idx = tid + u * THREADS;
      if (idx < kChunks) *reinterpret_cast<uint4*>(dst + (idx / (D / 8)) * LDS + (idx % (D / 8)) * 8) = buf[u];
    }
  } else {
    for (int idx = tid; idx < ROWS * D; idx += THREADS) {
      const int r = idx / D, d = idx % D;
      const int64_t i = first + r;
      dst[r * LDS + d] = i < valid ? src[i * ld + d] : T(0.f);
    }
  }
}

// One warp's step over a tile of KT keys (K and V staged in shared memory, row stride D) for its 16
// queries (Q as WMMA fragments): S = Q K^T into `ss`, the online softmax of each row (this lane
// takes columns half, half + 2, ... of row lane / 2; the partner lane lane ^ 1 the others) with P
// into `ps`, the output accumulator `os` rescaled and O += P V. m and l: the row's running max
// and sum, updated.
template <typename T, int D, int KT, int SLD, int PLD>
__device__ __forceinline__ void tile_step(const wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> (&qf)[D / 16],
                                          const T* ks, const T* vs, float* ss, T* ps, float* os, int lane, int64_t t0,
                                          int64_t sk, int64_t qi, int64_t sq, int64_t last, const float* mrow,
                                          float scale, float& m, float& l) {
  const int r = lane / 2, half = lane % 2;
  // S = Q K^T: K's rows are B's columns (col-major B with ld D).
#pragma unroll
  for (int n = 0; n < KT / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
    wmma::fill_fragment(sf, 0.f);
#pragma unroll
    for (int c = 0; c < D / 16; ++c) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
      wmma::load_matrix_sync(kf, ks + n * 16 * D + c * 16, D);
      wmma::mma_sync(sf, qf[c], kf, sf);
    }
    wmma::store_matrix_sync(ss + n * 16, sf, SLD, wmma::mem_row_major);
  }
  __syncwarp();
  float vals[KT / 2];
  float tile_max = -INFINITY;
#pragma unroll
  for (int c = 0; c < KT / 2; ++c) {
    const int col = 2 * c + half;
    const int64_t j = t0 + col;
    float v = -INFINITY;
    if (j < sk && j <= last && qi < sq) {
      v = ss[r * SLD + col] * scale;
      if (mrow) v += mrow[j];
    }
    vals[c] = v;
    tile_max = fmaxf(tile_max, v);
  }
  tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
  const float m_new = fmaxf(m, tile_max);
  const float corr = m_new == -INFINITY ? 1.f : __expf(m - m_new);
  float sum = 0.f;
#pragma unroll
  for (int c = 0; c < KT / 2; ++c) {
    const float p = vals[c] == -INFINITY ? 0.f : __expf(vals[c] - m_new);
    sum += p;
    ps[r * PLD + 2 * c + half] = from_f<T>(p);
  }
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  l = l * corr + sum;
  m = m_new;
  for (int d = half; d < D; d += 2) os[r * kOLd<D> + d] *= corr;
  __syncwarp();
  // O += P V.
#pragma unroll
  for (int n = 0; n < D / 16; ++n) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
    wmma::load_matrix_sync(of, os + n * 16, kOLd<D>, wmma::mem_row_major);
#pragma unroll
    for (int c = 0; c < KT / 16; ++c) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
      wmma::load_matrix_sync(pf, ps + c * 16, PLD);
      wmma::load_matrix_sync(vf, vs + c * 16 * D + n * 16, D);
      wmma::mma_sync(of, pf, vf, of);
    }
    wmma::store_matrix_sync(os + n * 16, of, kOLd<D>, wmma::mem_row_major);
  }
}

template <typename T, int D, int W>
__global__ void __launch_bounds__(32 * W) attention_tc_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                              const T* __restrict__ v, T* __restrict__ o, AttnLayout L,
                                                              int64_t sq, int64_t sk, float scale,
                                                              const float* __restrict__ mask, bool causal, bool vec) {
  constexpr int kQTile = W * kRows;
  constexpr int kKRows = kKTile > kQTile ? kKTile : kQTile;
  extern __shared__ __align__(128) unsigned char smem[];
  T* ks = reinterpret_cast<T*>(smem);  // [kKRows][D]: the Q tile, then K tiles
  T* vs = ks + kKRows * D;             // [kKTile][D]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* ss_all = reinterpret_cast<float*>(vs + kKTile * D);
  T* ps_all = reinterpret_cast<T*>(ss_all + W * kRows * kSLd);
  float* os_all = reinterpret_cast<float*>(ps_all + W * kRows * kPLd);
  float* ss = ss_all + warp * kRows * kSLd;     // [16][kSLd] scores
  T* ps = ps_all + warp * kRows * kPLd;         // [16][kPLd] probabilities
  float* os = os_all + warp * kRows * kOLd<D>;  // [16][kOLd] output accumulator

  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kQTile;
  const T* qb = q + b * L.q[0] + h * L.q[1];
  const T* kb = k + b * L.k[0] + h * L.k[1];
  const T* vb = v + b * L.v[0] + h * L.v[1];
  const float* mb = mask ? mask + b * L.mask[0] + h * L.mask[1] : nullptr;

  // Q tile through shared memory (rows past sq are zeros), into fragments kept for every key tile.
  stage_rows<T, D, kQTile, 32 * W>(ks, qb, L.q[2], q0, sq, vec, threadIdx.x);
  for (int idx = lane; idx < kRows * kOLd<D>; idx += 32) os[idx] = 0.f;
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
#pragma unroll
  for (int c = 0; c < D / 16; ++c) wmma::load_matrix_sync(qf[c], ks + warp * kRows * D + c * 16, D);

  // This lane: row r = lane / 2, shared with its partner lane (lane ^ 1; see tile_step).
  const int r = lane / 2, half = lane % 2;
  const int64_t qi = q0 + warp * kRows + r;
  float m = -INFINITY, l = 0.f;
  const int64_t block_last_q = min(q0 + kQTile - 1, sq - 1);
  const int64_t key_end = causal ? min(sk, block_last_q + (sk - sq) + 1) : sk;
  const int64_t last = causal ? qi + (sk - sq) : sk - 1;  // the last key this query sees
  const float* mrow = mb && qi < sq ? mb + qi * L.mask[2] : nullptr;

  for (int64_t t0 = 0; t0 < key_end; t0 += kKTile) {
    __syncthreads();  // the previous tiles (or the Q tile) are no longer read
    stage_rows<T, D, kKTile, 32 * W>(ks, kb, L.k[2], t0, sk, vec, threadIdx.x);
    stage_rows<T, D, kKTile, 32 * W>(vs, vb, L.v[2], t0, sk, vec, threadIdx.x);
    __syncthreads();
    tile_step<T, D, kKTile, kSLd, kPLd>(qf, ks, vs, ss, ps, os, lane, t0, sk, qi, sq, last, mrow, scale, m, l);
    __syncwarp();
  }
  if (qi >= sq) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  T* orow = o + b * L.o[0] + h * L.o[1] + qi * L.o[2];
  for (int d = half; d < D; d += 2) orow[d] = from_f<T>(os[r * kOLd<D> + d] * inv);
}

template <typename T, int D, int W>
void launch_w(const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads, int64_t sq, int64_t sk,
              float scale, const AttnLayout& L, const float* mask, bool causal, bool vec, cudaStream_t stream) {
  const size_t smem = smem_bytes<W, D>(sizeof(T));
  KILN_CUDA_CHECK(cudaFuncSetAttribute(attention_tc_kernel<T, D, W>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  const int64_t q_tile = W * kRows;
  const dim3 grid(static_cast<unsigned>((sq + q_tile - 1) / q_tile), static_cast<unsigned>(heads),
                  static_cast<unsigned>(batch));
  attention_tc_kernel<T, D, W><<<grid, 32 * W, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                              static_cast<const T*>(v), static_cast<T*>(o), L, sq, sk,
                                                              scale, mask, causal, vec);
}

// Few queries (small batches): a block of S warps takes 16 queries of one (batch, head) and splits
// the keys among its warps (warp w takes key tiles w, w + S, ... of 32 keys), each keeping its own
// running max, sum and output accumulator; the block then merges the S partial results. Where the
// kernel above gives each warp 16 queries and every key, one after the other, this one runs S key
// tiles at once: BERT at batch 1 (12 heads x 128 queries, 128 keys) has 96 blocks either way, but
// each here is 4 warps deep.
constexpr int kSplitKTile = 32;
constexpr int kSplitSLd = kSplitKTile + 4;  // scores, FP32
constexpr int kSplitPLd = kSplitKTile + 8;  // probabilities, 16-bit
constexpr int kSplitWarps = 4;

template <int D>
constexpr size_t split_warp_bytes(size_t elem) {
  // K and V tiles, scores (FP32), P (16-bit), O (FP32), then the 16 rows' max and sum.
  return 2 * static_cast<size_t>(kSplitKTile) * D * elem + static_cast<size_t>(kRows) * kSplitSLd * 4 +
         static_cast<size_t>(kRows) * kSplitPLd * elem + static_cast<size_t>(kRows) * kOLd<D> * 4 + 2 * kRows * 4;
}
template <int D>
constexpr size_t split_smem_bytes(size_t elem) {
  return static_cast<size_t>(kRows) * D * elem + kSplitWarps * split_warp_bytes<D>(elem);
}

template <typename T, int D>
__global__ void __launch_bounds__(32 * kSplitWarps)
    attention_tc_split_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              T* __restrict__ o, AttnLayout L, int64_t sq, int64_t sk, float scale,
                              const float* __restrict__ mask, bool causal, bool vec) {
  constexpr size_t kWarpBytes = split_warp_bytes<D>(sizeof(T));
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* qs = reinterpret_cast<T*>(smem);  // [16][D]
  unsigned char* warps = smem + static_cast<size_t>(kRows) * D * sizeof(T);
  auto stats_of = [&](int w) { return reinterpret_cast<float*>(warps + w * kWarpBytes + kWarpBytes) - 2 * kRows; };
  auto out_of = [&](int w) { return stats_of(w) - kRows * kOLd<D>; };
  T* ks = reinterpret_cast<T*>(warps + warp * kWarpBytes);  // [32][D]
  T* vs = ks + kSplitKTile * D;                             // [32][D]
  float* ss = reinterpret_cast<float*>(vs + kSplitKTile * D);  // [16][kSplitSLd]
  T* ps = reinterpret_cast<T*>(ss + kRows * kSplitSLd);        // [16][kSplitPLd]
  float* os = out_of(warp);                                    // [16][kOLd]
  float* st = stats_of(warp);                                  // max [16], sum [16]

  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const T* qb = q + b * L.q[0] + h * L.q[1];
  const T* kb = k + b * L.k[0] + h * L.k[1];
  const T* vb = v + b * L.v[0] + h * L.v[1];
  const float* mb = mask ? mask + b * L.mask[0] + h * L.mask[1] : nullptr;

  stage_rows<T, D, kRows, 32 * kSplitWarps>(qs, qb, L.q[2], q0, sq, vec, threadIdx.x);
  for (int idx = lane; idx < kRows * kOLd<D>; idx += 32) os[idx] = 0.f;
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
#pragma unroll
  for (int c = 0; c < D / 16; ++c) wmma::load_matrix_sync(qf[c], qs + c * 16, D);

  const int r = lane / 2, half = lane % 2;  // this lane: row r, columns half, half + 2, ... of a tile
  const int64_t qi = q0 + r;
  float m = -INFINITY, l = 0.f;
  const int64_t block_last_q = min(q0 + kRows - 1, sq - 1);
  const int64_t key_end = causal ? min(sk, block_last_q + (sk - sq) + 1) : sk;
  const int64_t last = causal ? qi + (sk - sq) : sk - 1;
  const float* mrow = mb && qi < sq ? mb + qi * L.mask[2] : nullptr;

  for (int64_t t0 = static_cast<int64_t>(warp) * kSplitKTile; t0 < key_end; t0 += kSplitWarps * kSplitKTile) {
    __syncwarp();  // this warp's previous tiles are no longer read
    stage_rows<T, D, kSplitKTile, 32>(ks, kb, L.k[2], t0, sk, vec, lane);
    stage_rows<T, D, kSplitKTile, 32>(vs, vb, L.v[2], t0, sk, vec, lane);
    __syncwarp();
    tile_step<T, D, kSplitKTile, kSplitSLd, kSplitPLd>(qf, ks, vs, ss, ps, os, lane, t0, sk, qi, sq, last, mrow, scale,
                                                       m, l);
  }
  if (half == 0) st[r] = m, st[kRows + r] = l;
  __syncthreads();
  // Merge: O = sum_w e^(m_w - M) O_w / sum_w e^(m_w - M) l_w, over the warps that saw a key.
  for (int idx = threadIdx.x; idx < kRows * D; idx += 32 * kSplitWarps) {
    const int row = idx / D, d = idx % D;
    const int64_t qrow = q0 + row;
    if (qrow >= sq) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kSplitWarps; ++w) mx = fmaxf(mx, stats_of(w)[row]);
    float num = 0.f, den = 0.f;
#pragma unroll
    for (int w = 0; w < kSplitWarps; ++w) {
      const float mw = stats_of(w)[row];
      if (mw == -INFINITY) continue;
      const float f = __expf(mw - mx);
      num += f * out_of(w)[row * kOLd<D> + d];
      den += f * stats_of(w)[kRows + row];
    }
    o[b * L.o[0] + h * L.o[1] + qrow * L.o[2] + d] = from_f<T>(den > 0.f ? num / den : 0.f);
  }
}

template <typename T, int D>
void launch_split(const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads, int64_t sq,
                  int64_t sk, float scale, const AttnLayout& L, const float* mask, bool causal, bool vec,
                  cudaStream_t stream) {
  const size_t smem = split_smem_bytes<D>(sizeof(T));
  KILN_CUDA_CHECK(cudaFuncSetAttribute(attention_tc_split_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((sq + kRows - 1) / kRows), static_cast<unsigned>(heads),
                  static_cast<unsigned>(batch));
  attention_tc_split_kernel<T, D><<<grid, 32 * kSplitWarps, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<T*>(o), L, sq, sk,
      scale, mask, causal, vec);
}

// Large grids: the tensor cores through mma.sync (m16n8k16, FP32 accumulation) with every operand
// and accumulator in registers, flash-attention 2 style. A block of 4 warps takes 64 queries of
// one (batch, head); each warp owns 16. For every tile of 64 keys the block stages K and V in
// shared memory (rows padded by 8 elements against bank conflicts); each warp computes its 16x64
// scores into registers, updates the running max and sum of its rows, turns the scores into the
// A operand of P V in registers (the accumulator layout of one mma is the operand layout of the
// next), and accumulates O in registers. Nothing but K and V goes through shared memory.
template <typename T>
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Two values as one 32-bit operand register (the first in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <typename T>
__device__ __forceinline__ uint32_t pair(const T* p) {  // two adjacent elements (4-byte aligned)
  return *reinterpret_cast<const uint32_t*>(p);
}
template <typename T>
__device__ __forceinline__ uint32_t pair2(const T* lo, const T* hi) {  // two elements of different rows
  const unsigned short a = *reinterpret_cast<const unsigned short*>(lo), b = *reinterpret_cast<const unsigned short*>(hi);
  return static_cast<uint32_t>(a) | (static_cast<uint32_t>(b) << 16);
}

constexpr int kMmaQTile = 64, kMmaKTile = 64;
template <int D>
constexpr int kMmaLd = D + 8;  // padded row stride of the shared tiles (elements)
template <int D>
constexpr size_t mma_smem_bytes(size_t elem) {
  return static_cast<size_t>(kMmaQTile + 2 * kMmaKTile) * kMmaLd<D> * elem;
}

template <typename T, int D>
__global__ void __launch_bounds__(128) attention_mma_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                            const T* __restrict__ v, T* __restrict__ o, AttnLayout L,
                                                            int64_t sq, int64_t sk, float scale,
                                                            const float* __restrict__ mask, bool causal, bool vec) {
  constexpr int LD = kMmaLd<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);  // [64][LD]
  T* ks = qs + kMmaQTile * LD;         // [64][LD]
  T* vs = ks + kMmaKTile * LD;         // [64][LD]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane >> 2, t = lane & 3;  // the mma fragment's row group and column pair

  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kMmaQTile;
  const T* qb = q + b * L.q[0] + h * L.q[1];
  const T* kb = k + b * L.k[0] + h * L.k[1];
  const T* vb = v + b * L.v[0] + h * L.v[1];
  const float* mb = mask ? mask + b * L.mask[0] + h * L.mask[1] : nullptr;

  stage_rows<T, D, kMmaQTile, 128, LD>(qs, qb, L.q[2], q0, sq, vec, threadIdx.x);
  __syncthreads();
  // This warp's Q rows as A operands, one set of 4 registers per 16 columns of D.
  uint32_t qf[D / 16][4];
  const T* qw = qs + warp * 16 * LD;
#pragma unroll
  for (int c = 0; c < D / 16; ++c) {
    qf[c][0] = pair(qw + g * LD + c * 16 + 2 * t);
    qf[c][1] = pair(qw + (g + 8) * LD + c * 16 + 2 * t);
    qf[c][2] = pair(qw + g * LD + c * 16 + 8 + 2 * t);
    qf[c][3] = pair(qw + (g + 8) * LD + c * 16 + 8 + 2 * t);
  }
  // This lane's rows: g and g + 8 of the warp's 16.
  const int64_t row0 = q0 + warp * 16 + g, row1 = row0 + 8;
  const int64_t last0 = causal ? row0 + (sk - sq) : sk - 1, last1 = causal ? row1 + (sk - sq) : sk - 1;
  const float* mrow0 = mb && row0 < sq ? mb + row0 * L.mask[2] : nullptr;
  const float* mrow1 = mb && row1 < sq ? mb + row1 * L.mask[2] : nullptr;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  const int64_t block_last_q = min(q0 + kMmaQTile - 1, sq - 1);
  const int64_t key_end = causal ? min(sk, block_last_q + (sk - sq) + 1) : sk;
  for (int64_t t0 = 0; t0 < key_end; t0 += kMmaKTile) {
    __syncthreads();  // the previous K and V tiles are no longer read
    stage_rows<T, D, kMmaKTile, 128, LD>(ks, kb, L.k[2], t0, sk, vec, threadIdx.x);
    stage_rows<T, D, kMmaKTile, 128, LD>(vs, vb, L.v[2], t0, sk, vec, threadIdx.x);
    __syncthreads();
    // S = Q K^T: 8 tiles of 16x8 (keys 8j .. 8j+7).
    float sc[kMmaKTile / 8][4];
#pragma unroll
    for (int j = 0; j < kMmaKTile / 8; ++j) {
      sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
      const T* kr = ks + (8 * j + g) * LD + 2 * t;
#pragma unroll
      for (int c = 0; c < D / 16; ++c) mma16816<T>(sc[j], qf[c], pair(kr + c * 16), pair(kr + c * 16 + 8));
    }
    // Scale, mask, and the running max of each row (over the 4 lanes that share it).
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kMmaKTile / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = t0 + 8 * j + 2 * t + (e & 1);
        const bool upper = e >= 2;
        const int64_t row = upper ? row1 : row0;
        const float* mrow = upper ? mrow1 : mrow0;
        float s = -INFINITY;
        if (key < sk && key <= (upper ? last1 : last0) && row < sq) {
          s = sc[j][e] * scale;
          if (mrow) s += mrow[key];
        }
        sc[j][e] = s;
        if (upper) mx1 = fmaxf(mx1, s);
        else mx0 = fmaxf(mx0, s);
      }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
    }
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    const float c0 = n0 == -INFINITY ? 1.f : __expf(m0 - n0), c1 = n1 == -INFINITY ? 1.f : __expf(m1 - n1);
    m0 = n0, m1 = n1;
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int j = 0; j < kMmaKTile / 8; ++j) {
      sc[j][0] = sc[j][0] == -INFINITY ? 0.f : __expf(sc[j][0] - n0);
      sc[j][1] = sc[j][1] == -INFINITY ? 0.f : __expf(sc[j][1] - n0);
      sc[j][2] = sc[j][2] == -INFINITY ? 0.f : __expf(sc[j][2] - n1);
      sc[j][3] = sc[j][3] == -INFINITY ? 0.f : __expf(sc[j][3] - n1);
      s0 += sc[j][0] + sc[j][1];
      s1 += sc[j][2] + sc[j][3];
    }
    l0 = l0 * c0 + s0;  // this lane's columns only; the 4 lanes' sums are added at the end
    l1 = l1 * c1 + s1;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] *= c0, acc[n][1] *= c0, acc[n][2] *= c1, acc[n][3] *= c1;
    // O += P V, 16 keys at a time: P's A operand from two score tiles, V's B operand from shared memory.
#pragma unroll
    for (int kk = 0; kk < kMmaKTile / 16; ++kk) {
      uint32_t pf[4];
      pf[0] = pack2<T>(sc[2 * kk][0], sc[2 * kk][1]);
      pf[1] = pack2<T>(sc[2 * kk][2], sc[2 * kk][3]);
      pf[2] = pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
      pf[3] = pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
      const T* vr = vs + (16 * kk + 2 * t) * LD + g;
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        mma16816<T>(acc[n], pf, pair2(vr + n * 8, vr + LD + n * 8), pair2(vr + 8 * LD + n * 8, vr + 9 * LD + n * 8));
    }
  }
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, x);
    l1 += __shfl_xor_sync(0xffffffffu, l1, x);
  }
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  T* ob = o + b * L.o[0] + h * L.o[1];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int d = n * 8 + 2 * t;
    if (row0 < sq) {
      ob[row0 * L.o[2] + d] = from_f<T>(acc[n][0] * inv0);
      ob[row0 * L.o[2] + d + 1] = from_f<T>(acc[n][1] * inv0);
    }
    if (row1 < sq) {
      ob[row1 * L.o[2] + d] = from_f<T>(acc[n][2] * inv1);
      ob[row1 * L.o[2] + d + 1] = from_f<T>(acc[n][3] * inv1);
    }
  }
}

template <typename T, int D>
void launch_mma(const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads, int64_t sq,
                int64_t sk, float scale, const AttnLayout& L, const float* mask, bool causal, bool vec,
                cudaStream_t stream) {
  const size_t smem = mma_smem_bytes<D>(sizeof(T));
  KILN_CUDA_CHECK(cudaFuncSetAttribute(attention_mma_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>((sq + kMmaQTile - 1) / kMmaQTile), static_cast<unsigned>(heads),
                  static_cast<unsigned>(batch));
  attention_mma_kernel<T, D><<<grid, 128, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k),
                                                         static_cast<const T*>(v), static_cast<T*>(o), L, sq, sk,
                                                         scale, mask, causal, vec);
}

// Enough 64-query blocks to fill the GPU: the register-resident mma.sync kernel. With too few
// (small batches), blocks of 16 queries whose 4 warps split the keys (from 64 keys on), else one
// warp of 16 queries per block.
template <typename T, int D>
void launch(const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads, int64_t sq, int64_t sk,
            float scale, const AttnLayout& L, const float* mask, bool causal, bool vec, int sms, cudaStream_t stream) {
  if (batch * heads * ((sq + 63) / 64) >= 2 * sms)
    launch_mma<T, D>(q, k, v, o, batch, heads, sq, sk, scale, L, mask, causal, vec, stream);
  else if (sk >= 2 * kSplitKTile)
    launch_split<T, D>(q, k, v, o, batch, heads, sq, sk, scale, L, mask, causal, vec, stream);
  else
    launch_w<T, D, 1>(q, k, v, o, batch, heads, sq, sk, scale, L, mask, causal, vec, stream);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

}  // namespace

bool attention_tc_supported(DType t, int64_t head_dim, const AttnLayout& L) {
  if (t == DType::kF32 || (head_dim != 32 && head_dim != 64 && head_dim != 128)) return false;
  // Q rows are staged through shared memory and K/V likewise: any row stride works.
  (void)L;
  return true;
}

void attention_tc(DType t, const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads,
                  int64_t sq, int64_t sk, int64_t head_dim, float scale, const AttnLayout& layout, const float* mask,
                  bool causal, cudaStream_t stream) {
  if (!attention_tc_supported(t, head_dim, layout))
    throw CudaError("attention_tc: needs fp16 or bf16 and head_dim 32, 64 or 128");
  if (batch <= 0 || heads <= 0 || sq <= 0 || sk <= 0 || batch > 65535 || heads > 65535)
    throw CudaError("attention_tc: bad shape");
  // 16-byte loads when every row start is 16-byte aligned.
  const AttnLayout& L = layout;
  bool vec = aligned16(q) && aligned16(k) && aligned16(v);
  for (int i = 0; i < 3; ++i) vec = vec && L.q[i] % 8 == 0 && L.k[i] % 8 == 0 && L.v[i] % 8 == 0;
  int device = 0, sms = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  auto by_dim = [&](auto tag) {
    using T = decltype(tag);
    switch (head_dim) {
      case 32: launch<T, 32>(q, k, v, o, batch, heads, sq, sk, scale, layout, mask, causal, vec, sms, stream); break;
      case 64: launch<T, 64>(q, k, v, o, batch, heads, sq, sk, scale, layout, mask, causal, vec, sms, stream); break;
      default: launch<T, 128>(q, k, v, o, batch, heads, sq, sk, scale, layout, mask, causal, vec, sms, stream); break;
    }
  };
  if (t == DType::kF16) by_dim(__half{});
  else by_dim(__nv_bfloat16{});
  check_launch("attention_tc");
}

}  // namespace kiln::cuda
