// Fused attention on tensor cores (FP16/BF16 in, FP32 accumulation), flash-attention style, in
// three kernels picked by the number of queries (launch() at the end):
// - 32 queries or more: attention_mma_kernel, mma.sync with scores and accumulators in
//   registers, operands through ldmatrix, K/V tiles double-buffered with cp.async;
// - fewer queries, 64 keys or more: attention_tc_split_kernel, 16 queries per block whose 4 warps
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

// Large grids: the tensor cores through mma.sync (m16n8k16, FP32 accumulation) with scores,
// probabilities and the output accumulator in registers, flash-attention 2 style. A block of 4
// warps takes 64 queries of one (batch, head); each warp owns 16. K and V come in tiles of 64 keys,
// staged in shared memory (rows padded by 8 elements) by cp.async into two buffers: tile t + 1 is
// in flight while tile t is computed. For every tile each warp computes its 16x64 scores into
// registers, updates the running max and sum of its rows (in the log2 domain: scores times
// scale * log2(e), then exp2), turns the probabilities into the A operand of P V in registers (the
// accumulator layout of one mma is the operand layout of the next), and accumulates O in
// registers. Q, K and V operands come by ldmatrix (Q's once, but read again from the Q tile for
// every key tile where registers are short: D = 64 at 4 blocks per SM, a mask row per query); O
// goes out through the warp's own 16 rows of the Q tile (16-byte stores). A key-padding mask (one row of key biases for all queries)
// is staged with its K tile. Full tiles below the causal diagonal skip the bounds checks, and
// 16-key slices past the last key a warp sees (the last tile, causal) are skipped.
//
// Fragments (g = lane / 4, t = lane % 4; mma.m16n8k16.row.col, pairs packed low element first):
//   A (16x16, m x k): a0 = (m g, k 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 8+2t..), a3 = (g+8, 8+2t..)
//   B (16x8,  k x n): b0 = (k 2t..2t+1, n g), b1 = (k 8+2t.., n g)
//   C (16x8,  m x n): c0, c1 = (m g, n 2t..2t+1), c2, c3 = (m g+8, n 2t..)
// ldmatrix .x4: lanes 8i..8i+7 give the addresses of the 8 rows (16 bytes each) of matrix i, and
// register i of a lane receives (row g, cols 2t..2t+1) of matrix i (with .trans, of its transpose,
// that is (rows 2t..2t+1, col g) of the matrix in memory). All tiles are stored [row][d]:
// - Q, A of S = Q K^T (m = query, k = d), per 16 columns of d: lane -> query lane & 15, column
//   8 * (lane >> 4); matrices (q 0-7, d 0-7), (q 8-15, d 0-7), (q 0-7, d 8-15), (q 8-15, d 8-15)
//   are a0..a3.
// - K, B of S (k = d, n = key; (key g, d 2t..2t+1) is b0's pair, no transpose), per 16 keys 16p..
//   and 16 columns of d: lane -> key (lane & 7) + 8 * (lane >> 4), column 8 * ((lane >> 3) & 1);
//   matrices (keys 0-7, d 0-7) and (keys 0-7, d 8-15) are b0, b1 of score tile 2p (keys 16p..16p+7),
//   (keys 8-15, d 0-7) and (keys 8-15, d 8-15) b0, b1 of score tile 2p + 1.
// - V, B of O += P V (k = key, n = d; b0's pair is (keys 2t..2t+1, d g): .trans), per 16 keys and
//   16 columns of d (16np..): lane -> key lane & 15, column 8 * (lane >> 4); matrices (keys 0-7,
//   d 0-7) and (keys 8-15, d 0-7) are b0, b1 of output tile 2np, (keys 0-7, d 8-15) and (keys 8-15,
//   d 8-15) b0, b1 of output tile 2np + 1.
// - P, A of O += P V for keys 16kk..16kk+15, is the C of score tiles 2kk and 2kk + 1: a0 = c0 c1 of
//   2kk, a1 = c2 c3 of 2kk, a2 = c0 c1 of 2kk + 1, a3 = c2 c3 of 2kk + 1.
// Rows are (D + 8) * 2 bytes apart: 16-byte aligned, and 8 consecutive rows fall on 8 different
// 16-byte bank groups, so each 8-address phase of an ldmatrix is free of bank conflicts.
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

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
// cp.async of 16 (4) bytes; when !ok nothing is read and the destination is zero-filled (src-size 0).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ float ex2(float x) {  // 2^x (ex2.approx: 2^-inf = 0)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
constexpr float kLog2e = 1.4426950408889634f;

constexpr int kMmaQTile = 64, kMmaKTile = 64;
template <int D>
constexpr int kMmaLd = D + 8;  // padded row stride of the shared tiles (elements)
template <int D>
constexpr size_t mma_smem_bytes(size_t elem) {
  // The Q tile, two K and two V tiles, then two tiles of 64 key biases (FP32).
  return static_cast<size_t>(kMmaQTile + 4 * kMmaKTile) * kMmaLd<D> * elem + 2 * kMmaKTile * sizeof(float);
}

// This thread's share of a cp.async copy of 64 rows of D elements into a tile (row stride
// kMmaLd<D>) by 128 threads: chunks of 16 bytes at column c = 8 * (tid % (D / 8)) of rows
// r0 + kMmaRowStep<D> * u, r0 = tid / (D / 8). dst: the shared address of (r0, c) in the tile;
// src: the element (r0, c) of the rows in global memory (row stride ld); rows at or past `valid`
// are zero-filled (from `any`, a readable address: nothing is read). Needs 16-byte aligned rows.
template <int D>
constexpr int kMmaRowStep = 128 / (D / 8);
template <typename T, int D>
__device__ __forceinline__ void cp_rows(uint32_t dst, const T* src, int64_t ld, int r0, int valid, const T* any) {
#pragma unroll
  for (int u = 0; u < kMmaKTile / kMmaRowStep<D>; ++u) {
    const bool ok = r0 + u * kMmaRowStep<D> < valid;
    cp_async16(dst + static_cast<uint32_t>(u * kMmaRowStep<D> * kMmaLd<D> * sizeof(T)),
               ok ? src + u * kMmaRowStep<D> * ld : any, ok);
  }
}

// This thread's share of a synchronous copy of 64 rows of D elements (any alignment) into a tile
// (row stride kMmaLd<D>), rows `first` + 0..63 of src (row stride ld), zeros at or past `valid`.
// Four elements per step, loaded before they are stored; the loop is kept rolled (few registers:
// it runs inside the tile loop, only for unaligned rows).
template <typename T, int D>
__device__ __forceinline__ void copy_rows_sync(T* dst, const T* src, int64_t ld, int first, int valid, int tid) {
#pragma unroll 1
  for (int base = tid; base < kMmaKTile * D; base += 4 * 128) {
    T x[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int idx = base + u * 128, r = idx / D, d = idx % D;
      x[u] = first + r < valid ? src[static_cast<int64_t>(first + r) * ld + d] : T(0.f);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int idx = base + u * 128;
      dst[(idx / D) * kMmaLd<D> + idx % D] = x[u];
    }
  }
}

// The scores of one 16x64 tile (sc[j]: this lane's 4 elements of keys 8j..8j+7 of the tile, see
// above) into the log2 domain: s * scale * log2(e) + bias * log2(e). kCheck: keys at or past
// lim0 (row g) / lim1 (row g + 8) become -inf (bounds and the causal diagonal); else every key of
// the tile is visible to both rows. !kRowMask: one row of key biases for all queries, staged in
// shared memory (mt: the tile's, offset by 2t; zeros without a mask); kRowMask: a row of biases
// per query, read from global memory (mrow0/mrow1, indexed by key).
template <bool kCheck, bool kRowMask>
__device__ __forceinline__ void log2_scores(float (&sc)[kMmaKTile / 8][4], float sl2e, int key0, int lim0, int lim1,
                                            const float* mt, const float* mrow0, const float* mrow1) {
#pragma unroll
  for (int j = 0; j < kMmaKTile / 8; ++j) {
    const int k0 = key0 + 8 * j, k1 = k0 + 1;  // the keys of elements 0/2 and 1/3
    float b00, b01, b10, b11;
    if (!kRowMask) {
      const float2 mv = *reinterpret_cast<const float2*>(mt + 8 * j);
      b00 = b10 = mv.x * kLog2e;
      b01 = b11 = mv.y * kLog2e;
    } else {
      b00 = !kCheck || k0 < lim0 ? __ldg(mrow0 + k0) * kLog2e : 0.f;
      b01 = !kCheck || k1 < lim0 ? __ldg(mrow0 + k1) * kLog2e : 0.f;
      b10 = !kCheck || k0 < lim1 ? __ldg(mrow1 + k0) * kLog2e : 0.f;
      b11 = !kCheck || k1 < lim1 ? __ldg(mrow1 + k1) * kLog2e : 0.f;
    }
    sc[j][0] = fmaf(sc[j][0], sl2e, b00);
    sc[j][1] = fmaf(sc[j][1], sl2e, b01);
    sc[j][2] = fmaf(sc[j][2], sl2e, b10);
    sc[j][3] = fmaf(sc[j][3], sl2e, b11);
    if (kCheck) {
      if (k0 >= lim0) sc[j][0] = -INFINITY;
      if (k1 >= lim0) sc[j][1] = -INFINITY;
      if (k0 >= lim1) sc[j][2] = -INFINITY;
      if (k1 >= lim1) sc[j][3] = -INFINITY;
    }
  }
}

// kRowMask: the mask has a row per query (L.mask[2] != 0); else it is one row of key biases shared
// by every query (a key-padding mask), or there is none. Blocks per SM: 4 up to D = 64 (at most 128
// registers, 46 KB of shared memory at D = 64), 3 with a mask row per query (its biases are read
// from global memory, and the loads in flight need registers), 2 at D = 128 (87 KB).
template <int D, bool kRowMask>
constexpr int kMmaMinBlocks = D > 64 ? 2 : kRowMask ? 3 : 4;
template <typename T, int D, bool kRowMask>
__global__ void __launch_bounds__(128, (kMmaMinBlocks<D, kRowMask>))
    attention_mma_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ o,
                         AttnLayout L, int64_t sq64, int64_t sk64, float scale, const float* __restrict__ mask,
                         bool causal, bool vec, bool ovec) {
  constexpr int LD = kMmaLd<D>;
  constexpr int kTile = kMmaKTile * LD;  // elements of one staged tile
  static_assert(kMmaQTile == kMmaKTile, "Q, K and V tiles share one size");
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem);                    // [64][LD]
  T* ks = qs + kTile;                                    // [2][64][LD]
  T* vs = ks + 2 * kTile;                                // [2][64][LD]
  float* ms = reinterpret_cast<float*>(vs + 2 * kTile);  // [2][64] key biases (!kRowMask)
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t = lane & 3;  // the mma fragment's row group and column pair
  // launch() routes only sq, sk < 2^30 here: 32-bit query and key indices.
  const int sq = static_cast<int>(sq64), sk = static_cast<int>(sk64);

  const int64_t b = blockIdx.z, h = blockIdx.y;
  const int q0 = static_cast<int>(blockIdx.x) * kMmaQTile;
  const T* qb = q + b * L.q[0] + h * L.q[1] + static_cast<int64_t>(q0) * L.q[2];
  const T* kb = k + b * L.k[0] + h * L.k[1];
  const T* vb = v + b * L.v[0] + h * L.v[1];
  const float* mb = mask ? mask + b * L.mask[0] + h * L.mask[1] : nullptr;

  const int block_last_q = min(q0 + kMmaQTile, sq) - 1;
  const int key_end = causal ? min(sk, block_last_q + (sk - sq) + 1) : sk;
  const int ntiles = key_end > 0 ? (key_end + kMmaKTile - 1) / kMmaKTile : 0;

  // This thread's chunks of a staged tile (cp_rows): rows cr0 + kMmaRowStep<D> * u, column cc.
  const int cr0 = tid / (D / 8), cc = (tid % (D / 8)) * 8;
  const uint32_t cdst = smem_addr(qs + cr0 * LD + cc);  // in the Q tile; + a tile's offset
  // Stages key tile `tile` (K, V and, with a shared mask row, its key biases) into buffer `buf`,
  // as one cp.async group (plain loads and stores when !vec: unaligned rows).
  auto stage = [&](int tile, int buf) {
    const int t0 = tile * kMmaKTile;
    if (vec) {
      const int64_t row = t0 + cr0;
      cp_rows<T, D>(cdst + (1 + buf) * kTile * sizeof(T), kb + row * L.k[2] + cc, L.k[2], cr0, sk - t0, kb);
      cp_rows<T, D>(cdst + (3 + buf) * kTile * sizeof(T), vb + row * L.v[2] + cc, L.v[2], cr0, sk - t0, vb);
    } else {
      copy_rows_sync<T, D>(ks + buf * kTile, kb, L.k[2], t0, sk, tid);
      copy_rows_sync<T, D>(vs + buf * kTile, vb, L.v[2], t0, sk, tid);
    }
    if (!kRowMask && mb && tid < kMmaKTile) {
      const bool ok = t0 + tid < sk;
      cp_async4(smem_addr(ms + buf * kMmaKTile + tid), ok ? mb + t0 + tid : mb, ok);
    }
    cp_async_commit();
  };

  // The Q tile (rows past sq are zeros; its own group, so that the wait below covers it even when
  // the block sees no key and O is written through the Q tile at once), the first key tile, and
  // zero key biases without a mask.
  if (vec)
    cp_rows<T, D>(cdst, qb + cr0 * L.q[2] + cc, L.q[2], cr0, sq - q0, qb);
  else
    copy_rows_sync<T, D>(qs, qb, L.q[2], 0, sq - q0, tid);
  cp_async_commit();
  if (!kRowMask && !mb) ms[tid] = 0.f;  // both buffers: 2 * 64 = 128 values
  if (ntiles > 0) stage(0, 0);
  cp_async_wait_all();
  __syncthreads();
  // This warp's Q rows as A operands (ldmatrix.x4 per 16 columns of D: q_lane + 32 bytes * c): held
  // in registers, but at D = 64 (4 blocks per SM, at most 128 registers: no room) and with a mask
  // row per query read again from the Q tile for every key tile.
  constexpr bool kQInRegs = D != 64 && !kRowMask;
  const uint32_t q_lane = smem_addr(qs + (warp * 16 + (lane & 15)) * LD + (lane >> 4) * 8);
  uint32_t qreg[kQInRegs ? D / 16 : 1][4];
  if constexpr (kQInRegs) {
#pragma unroll
    for (int c = 0; c < D / 16; ++c) ldsm_x4(q_lane + c * 16 * sizeof(T), qreg[c]);
  }
  // This lane's ldmatrix row addresses in the K and V tiles of buffer 0; see above.
  const uint32_t k_lane = smem_addr(ks + ((lane & 7) + ((lane >> 4) << 3)) * LD + ((lane >> 3) & 1) * 8);
  const uint32_t v_lane = smem_addr(vs + (lane & 15) * LD + (lane >> 4) * 8);

  // This lane's rows: g and g + 8 of the warp's 16. A row sees the keys below its limit (causal:
  // key <= row + sk - sq). Rows past sq compute on zero Q rows and are never stored.
  const int wq0 = q0 + warp * 16, shift = sk - sq;
  const int row0 = wq0 + g, row1 = row0 + 8;
  const int lim0 = causal ? min(sk, row0 + shift + 1) : sk, lim1 = causal ? min(sk, row1 + shift + 1) : sk;
  // Keys below warp_full are visible to every row of the warp (tiles below it need no checks);
  // keys at or past warp_lim to none of its rows before sq (score slices there are skipped).
  const int warp_full = causal ? min(sk, wq0 + shift + 1) : sk;
  const int warp_lim = wq0 >= sq ? 0 : causal ? min(sk, min(wq0 + 15, sq - 1) + shift + 1) : sk;
  const float sl2e = scale * kLog2e;

  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // running max (log2 domain) and sum
  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  for (int it = 0; it < ntiles; ++it) {
    const int buf = it & 1, t0 = it * kMmaKTile;
    // The next tile into the other buffer (every warp is done with it: the barrier at the end of
    // the previous iteration), in flight while this one is computed.
    if (it + 1 < ntiles) stage(it + 1, buf ^ 1);
    // 16-key slices of this tile with a key some row of the warp sees (4 but at the end or past
    // the diagonal); the rest are neither multiplied nor accumulated (their P would be 0).
    const int rem = warp_lim - t0;
    const int nsl = rem >= kMmaKTile ? 4 : rem <= 0 ? 0 : (rem + 15) >> 4;
    if (nsl > 0) {
      const uint32_t kt = k_lane + buf * kTile * sizeof(T), vt = v_lane + buf * kTile * sizeof(T);
      // S = Q K^T: 8 tiles of 16x8 (keys 8j .. 8j+7), two per ldmatrix.x4 of K.
      float sc[kMmaKTile / 8][4];
#pragma unroll
      for (int j = 0; j < kMmaKTile / 8; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
      for (int c = 0; c < D / 16; ++c) {
        uint32_t qf[4];
        if constexpr (kQInRegs) {
          qf[0] = qreg[c][0], qf[1] = qreg[c][1], qf[2] = qreg[c][2], qf[3] = qreg[c][3];
        } else {
          ldsm_x4(q_lane + c * 16 * sizeof(T), qf);
        }
#pragma unroll
        for (int p = 0; p < kMmaKTile / 16; ++p) {
          if (p < nsl) {
            uint32_t kf[4];
            ldsm_x4(kt + (p * 16 * LD + c * 16) * sizeof(T), kf);
            mma16816<T>(sc[2 * p], qf, kf[0], kf[1]);
            mma16816<T>(sc[2 * p + 1], qf, kf[2], kf[3]);
          }
        }
      }
      // Scale and mask into the log2 domain; no checks when every key of the tile is visible to
      // every row of the warp.
      const int key0 = t0 + 2 * t;
      const float* mt = ms + buf * kMmaKTile + 2 * t;
      const float* mrow0 = nullptr;
      const float* mrow1 = nullptr;
      if (kRowMask) {  // the mask rows of rows past sq: the last row's (read, never stored)
        mrow0 = mb + static_cast<int64_t>(min(row0, sq - 1)) * L.mask[2];
        mrow1 = mb + static_cast<int64_t>(min(row1, sq - 1)) * L.mask[2];
      }
      if (t0 + kMmaKTile <= warp_full)
        log2_scores<false, kRowMask>(sc, sl2e, key0, lim0, lim1, mt, mrow0, mrow1);
      else
        log2_scores<true, kRowMask>(sc, sl2e, key0, lim0, lim1, mt, mrow0, mrow1);
      // The running max of each row (over the 4 lanes that share it).
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int j = 0; j < kMmaKTile / 8; ++j) {
        mx0 = fmaxf(mx0, fmaxf(sc[j][0], sc[j][1]));
        mx1 = fmaxf(mx1, fmaxf(sc[j][2], sc[j][3]));
      }
#pragma unroll
      for (int x = 1; x <= 2; x <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
      }
      const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
      // Subtracted from the scores: the new max, or 0 while the row has seen no key (every score
      // -inf: P = 0, and the correction 2^(m - z) = 0 of a zero accumulator).
      const float z0 = n0 == -INFINITY ? 0.f : n0, z1 = n1 == -INFINITY ? 0.f : n1;
      const float c0 = ex2(m0 - z0), c1 = ex2(m1 - z1);
      m0 = n0, m1 = n1;
      float s0 = 0.f, s1 = 0.f;
#pragma unroll
      for (int j = 0; j < kMmaKTile / 8; ++j) {
        sc[j][0] = ex2(sc[j][0] - z0);
        sc[j][1] = ex2(sc[j][1] - z0);
        sc[j][2] = ex2(sc[j][2] - z1);
        sc[j][3] = ex2(sc[j][3] - z1);
        s0 += sc[j][0] + sc[j][1];
        s1 += sc[j][2] + sc[j][3];
      }
      l0 = l0 * c0 + s0;  // this lane's columns only; the 4 lanes' sums are added at the end
      l1 = l1 * c1 + s1;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) acc[n][0] *= c0, acc[n][1] *= c0, acc[n][2] *= c1, acc[n][3] *= c1;
      // O += P V, 16 keys at a time: P's A operand from two score tiles, V's B operands for two
      // output tiles of 8 columns per ldmatrix.x4.trans.
#pragma unroll
      for (int kk = 0; kk < kMmaKTile / 16; ++kk) {
        if (kk < nsl) {
          uint32_t pf[4];
          pf[0] = pack2<T>(sc[2 * kk][0], sc[2 * kk][1]);
          pf[1] = pack2<T>(sc[2 * kk][2], sc[2 * kk][3]);
          pf[2] = pack2<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
          pf[3] = pack2<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
          for (int np = 0; np < D / 16; ++np) {
            uint32_t vf[4];
            ldsm_x4_trans(vt + (kk * 16 * LD + np * 16) * sizeof(T), vf);
            mma16816<T>(acc[2 * np], pf, vf[0], vf[1]);
            mma16816<T>(acc[2 * np + 1], pf, vf[2], vf[3]);
          }
        }
      }
    }
    cp_async_wait_all();
    __syncthreads();  // the next tile has landed, and this one is no longer read
  }
#pragma unroll
  for (int x = 1; x <= 2; x <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, x);
    l1 += __shfl_xor_sync(0xffffffffu, l1, x);
  }
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  T* ob = o + b * L.o[0] + h * L.o[1];
  if (ovec) {
    // Through this warp's 16 rows of the Q tile (read by no other warp), then 16-byte stores.
    T* ow = qs + warp * 16 * LD;
    __syncwarp();
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int d = n * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(ow + g * LD + d) = pack2<T>(acc[n][0] * inv0, acc[n][1] * inv0);
      *reinterpret_cast<uint32_t*>(ow + (g + 8) * LD + d) = pack2<T>(acc[n][2] * inv1, acc[n][3] * inv1);
    }
    __syncwarp();
    constexpr int kCh = D / 8;
#pragma unroll
    for (int u = 0; u < 16 * kCh / 32; ++u) {
      const int idx = lane + 32 * u, r = idx / kCh, c = (idx % kCh) * 8;
      if (wq0 + r < sq)
        *reinterpret_cast<uint4*>(ob + static_cast<int64_t>(wq0 + r) * L.o[2] + c) =
            *reinterpret_cast<const uint4*>(ow + r * LD + c);
    }
  } else {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      const int d = n * 8 + 2 * t;
      if (row0 < sq) {
        ob[static_cast<int64_t>(row0) * L.o[2] + d] = from_f<T>(acc[n][0] * inv0);
        ob[static_cast<int64_t>(row0) * L.o[2] + d + 1] = from_f<T>(acc[n][1] * inv0);
      }
      if (row1 < sq) {
        ob[static_cast<int64_t>(row1) * L.o[2] + d] = from_f<T>(acc[n][2] * inv1);
        ob[static_cast<int64_t>(row1) * L.o[2] + d + 1] = from_f<T>(acc[n][3] * inv1);
      }
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename T, int D>
void launch_mma(const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads, int64_t sq,
                int64_t sk, float scale, const AttnLayout& L, const float* mask, bool causal, bool vec,
                cudaStream_t stream) {
  const size_t smem = mma_smem_bytes<D>(sizeof(T));
  const bool row_mask = mask && L.mask[2] != 0;
  auto kernel = row_mask ? attention_mma_kernel<T, D, true> : attention_mma_kernel<T, D, false>;
  KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  // Several blocks per SM need most of the SM's memory as shared memory.
  KILN_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
  // 16-byte stores of O when every row start is 16-byte aligned.
  const bool ovec = aligned16(o) && L.o[0] % 8 == 0 && L.o[1] % 8 == 0 && L.o[2] % 8 == 0;
  const dim3 grid(static_cast<unsigned>((sq + kMmaQTile - 1) / kMmaQTile), static_cast<unsigned>(heads),
                  static_cast<unsigned>(batch));
  kernel<<<grid, 128, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                                      static_cast<T*>(o), L, sq, sk, scale, mask, causal, vec, ovec);
}

// Enough 64-query blocks to fill the GPU: the register-resident mma.sync kernel. With too few
// (small batches), blocks of 16 queries whose 4 warps split the keys (from 64 keys on), else one
// warp of 16 queries per block.
template <typename T, int D>
void launch(const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads, int64_t sq, int64_t sk,
            float scale, const AttnLayout& L, const float* mask, bool causal, bool vec, int sms, cudaStream_t stream,
            AttnKernel which) {
  const bool mma_ok = sq < (int64_t{1} << 30) && sk < (int64_t{1} << 30), split_ok = sk >= 2 * kSplitKTile;
  // The mma.sync kernel wins from 32 queries on, even on grids far too small to fill the GPU
  // (H100, fp16, d 64: BERT s128 batch 1 11.4 us against 15.4 us split and 24.3 us one-warp; ViT
  // s197 batch 1 13.1 against 21.2 and 29.7 us; at batch 32 and up 5-7x faster). Fewer queries
  // leave most of its 64-query block idle: then the key-splitting kernel (from 64 keys), else the
  // one-warp one.
  (void)sms;
  if (which == AttnKernel::kAuto)
    which = sq >= 32 && mma_ok ? AttnKernel::kMma : split_ok ? AttnKernel::kSplit : AttnKernel::kWarp;
  if ((which == AttnKernel::kMma && !mma_ok) || (which == AttnKernel::kSplit && !split_ok))
    throw CudaError("attention_tc: the forced kernel does not take this problem");
  if (which == AttnKernel::kMma)
    launch_mma<T, D>(q, k, v, o, batch, heads, sq, sk, scale, L, mask, causal, vec, stream);
  else if (which == AttnKernel::kSplit)
    launch_split<T, D>(q, k, v, o, batch, heads, sq, sk, scale, L, mask, causal, vec, stream);
  else
    launch_w<T, D, 1>(q, k, v, o, batch, heads, sq, sk, scale, L, mask, causal, vec, stream);
}

}  // namespace

bool attention_tc_supported(DType t, int64_t head_dim, const AttnLayout& L) {
  if (t == DType::kF32 || (head_dim != 32 && head_dim != 64 && head_dim != 128)) return false;
  // Q rows are staged through shared memory and K/V likewise: any row stride works.
  (void)L;
  return true;
}

void attention_tc(DType t, const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads,
                  int64_t sq, int64_t sk, int64_t head_dim, float scale, const AttnLayout& layout, const float* mask,
                  bool causal, cudaStream_t stream, AttnKernel which) {
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
      case 32: launch<T, 32>(q, k, v, o, batch, heads, sq, sk, scale, layout, mask, causal, vec, sms, stream, which); break;
      case 64: launch<T, 64>(q, k, v, o, batch, heads, sq, sk, scale, layout, mask, causal, vec, sms, stream, which); break;
      default: launch<T, 128>(q, k, v, o, batch, heads, sq, sk, scale, layout, mask, causal, vec, sms, stream, which); break;
    }
  };
  if (t == DType::kF16) by_dim(__half{});
  else by_dim(__nv_bfloat16{});
  check_launch("attention_tc");
}

}  // namespace kiln::cuda
