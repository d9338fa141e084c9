// Fused attention on tensor cores (FP16/BF16 in, FP32 accumulation), flash-attention style: a block
// of 4 warps takes 64 queries of one (batch, head); each warp owns 16 of them. For every tile of 64
// keys the block stages K and V in shared memory, each warp computes its 16x64 scores with WMMA
// (16x16x16 tiles), updates the running row max and sum (online softmax, FP32) and the output
// accumulator O += P V with WMMA again, O kept in shared memory between tiles (WMMA accumulator
// fragments can be loaded from and stored to memory, so rows are rescaled there). Scores and
// probabilities never reach global memory. Same contract as attention() in kernels.h.
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
// memory with THREADS threads, 16 bytes at a time when `vec` (D % 8 == 0, ld % 8 == 0, 16-byte
// aligned base). Every load is issued before any store, so a single warp keeps them all in flight.
template <typename T, int D, int ROWS, int THREADS>
__device__ __forceinline__ void stage_rows(T* dst, const T* src, int64_t ld, int64_t first, int64_t valid, bool vec) {
  if (vec) {
    constexpr int kChunks = ROWS * (D / 8);
    constexpr int kPer = (kChunks + THREADS - 1) / THREADS;
    uint4 buf[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int idx = threadIdx.x + u * THREADS;
      const int r = idx / (D / 8), c = (idx % (D / 8)) * 8;
      const int64_t i = first + r;
      buf[u] = (idx < kChunks && i < valid) ? __ldg(reinterpret_cast<const uint4*>(src + i * ld + c)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int idx = threadIdx.x + u * THREADS;
      if (idx < kChunks) *reinterpret_cast<uint4*>(dst + (idx / (D / 8)) * D + (idx % (D / 8)) * 8) = buf[u];
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * D; idx += THREADS) {
      const int r = idx / D, d = idx % D;
      const int64_t i = first + r;
      dst[idx] = i < valid ? src[i * ld + d] : T(0.f);
    }
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
  stage_rows<T, D, kQTile, 32 * W>(ks, qb, L.q[2], q0, sq, vec);
  for (int idx = lane; idx < kRows * kOLd<D>; idx += 32) os[idx] = 0.f;
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
#pragma unroll
  for (int c = 0; c < D / 16; ++c) wmma::load_matrix_sync(qf[c], ks + warp * kRows * D + c * 16, D);

  // This lane's half row: row r = lane / 2, columns [half * 32, half * 32 + 32) of each score tile.
  const int r = lane / 2, half = lane % 2;
  const int64_t qi = q0 + warp * kRows + r;
  float m = -INFINITY, l = 0.f;
  const int64_t block_last_q = min(q0 + kQTile - 1, sq - 1);
  const int64_t key_end = causal ? min(sk, block_last_q + (sk - sq) + 1) : sk;
  const int64_t last = causal ? qi + (sk - sq) : sk - 1;  // the last key this query sees
  const float* mrow = mb && qi < sq ? mb + qi * L.mask[2] : nullptr;

  for (int64_t t0 = 0; t0 < key_end; t0 += kKTile) {
    __syncthreads();  // the previous tiles (or the Q tile) are no longer read
    stage_rows<T, D, kKTile, 32 * W>(ks, kb, L.k[2], t0, sk, vec);
    stage_rows<T, D, kKTile, 32 * W>(vs, vb, L.v[2], t0, sk, vec);
    __syncthreads();
    // S = Q K^T for 64 keys: K's rows are B's columns (col-major B with ld D).
#pragma unroll
    for (int n = 0; n < kKTile / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
      wmma::fill_fragment(sf, 0.f);
#pragma unroll
      for (int c = 0; c < D / 16; ++c) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, ks + n * 16 * D + c * 16, D);
        wmma::mma_sync(sf, qf[c], kf, sf);
      }
      wmma::store_matrix_sync(ss + n * 16, sf, kSLd, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax over this lane's 32 scores; the partner lane (lane ^ 1) has the other 32.
    float vals[32];
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const int col = 2 * c + half;
      const int64_t j = t0 + col;
      float s = -INFINITY;
      if (j < sk && j <= last && qi < sq) {
        s = ss[r * kSLd + col] * scale;
        if (mrow) s += mrow[j];
      }
      vals[c] = s;
      tile_max = fmaxf(tile_max, s);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    const float corr = m_new == -INFINITY ? 1.f : __expf(m - m_new);
    float sum = 0.f;
#pragma unroll
    for (int c = 0; c < 32; ++c) {
      const float p = vals[c] == -INFINITY ? 0.f : __expf(vals[c] - m_new);
      sum += p;
      ps[r * kPLd + 2 * c + half] = from_f<T>(p);
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
      for (int c = 0; c < kKTile / 16; ++c) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
        wmma::load_matrix_sync(pf, ps + c * 16, kPLd);
        wmma::load_matrix_sync(vf, vs + c * 16 * D + n * 16, D);
        wmma::mma_sync(of, pf, vf, of);
      }
      wmma::store_matrix_sync(os + n * 16, of, kOLd<D>, wmma::mem_row_major);
    }
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

// Four warps (64 queries) per block share each K/V tile; with too few such blocks to fill the GPU
// (small batches), one warp (16 queries) per block gives 4x the blocks.
template <typename T, int D>
void launch(const void* q, const void* k, const void* v, void* o, int64_t batch, int64_t heads, int64_t sq, int64_t sk,
            float scale, const AttnLayout& L, const float* mask, bool causal, bool vec, int sms, cudaStream_t stream) {
  if (batch * heads * ((sq + 63) / 64) >= 2 * sms)
    launch_w<T, D, 4>(q, k, v, o, batch, heads, sq, sk, scale, L, mask, causal, vec, stream);
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
