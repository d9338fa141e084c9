// The INT8 convolution's streaming tiles (conv_int8.h: "str64x64", "str64x128") for the 1x1
// layers of a CNN that memory bounds rather than the tensor cores: a plain GEMM (1x1 filter,
// stride 1, no padding) over 64, 128 or 256 input channels with INT8 input, residual and output,
// where each output costs a few MACs and the bytes of its row, residual and result dominate
// (ResNet-50's res2 expansion, 64 -> 256 with its residual, moves 462 MB for 13 GOPs at batch 256).
//
// Each CTA is persistent: it keeps one chunk of BN output channels resident (filter rows in shared
// memory, their scales and biases in registers) and walks 64-pixel tiles through a two-stage
// cp.async pipeline that loads a tile's pixels together with its residual while the previous tile
// is multiplied (mma.sync m16n8k32) and finished (residual, activation, requantization) into a
// staged tile stored 16 bytes at a time. What sets the time on such a layer is the epilogue's
// instructions, not DRAM (bench/gpu/int8_stream_probe.cu), so the kernel is written for
// occupancy: 256 threads in at most 64 registers, four CTAs (32 warps) per SM.
#include <algorithm>
#include <mutex>

#include "backends/cuda/conv_int8_common.cuh"
#include "backends/cuda/cuda_util.h"

namespace kiln::cuda::int8conv {
namespace {

constexpr int kBM = 64;        // output pixels per tile
constexpr int kStages = 2;     // tiles in the pipeline
constexpr int kThreads = 256;  // 8 warps: 2 over the pixels, 4 over the channels
constexpr int kPerSm = 4;      // CTAs per SM the kernel is built for

// Shared memory of one CTA: filters [kb][BN][64], kStages x (pixels [kb][64][64], residual
// [64][BN + 16]), the finished tile [64][BN + 16] (rows padded by 16 bytes: conflict-free pairs).
template <int BN, bool Z>
constexpr size_t smem_bytes(int kb) {
  return static_cast<size_t>(kb) * BN * 64 + kStages * (static_cast<size_t>(kb) * kBM * 64 + (Z ? kBM * (BN + 16) : 0)) +
         static_cast<size_t>(kBM) * (BN + 16);
}

// Grid: n_chunks channel chunks times the CTAs per chunk; CTA b takes chunk b % n_chunks and the
// pixel tiles b / n_chunks, + step, + 2 step... (step: CTAs per chunk).
template <int BN, bool Z>
__global__ void __launch_bounds__(kThreads, kPerSm) conv_int8_stream_kernel(const Args a, int m_tiles, int n_chunks) {
  constexpr int WN = BN / 4, NI = WN / 8, MI = 2, P = BN + 16;  // warp tile 32 x WN; staged row pitch
  static_assert(NI >= 2 && NI % 2 == 0, "tile shape");
  extern __shared__ __align__(128) int8_t smem[];
  const int kb = a.ktot / 64;
  const int a_bytes = kb * kBM * 64, stage_bytes = a_bytes + (Z ? kBM * P : 0);
  int8_t* sb = smem;
  int8_t* stages = smem + kb * BN * 64;
  int8_t* so = stages + kStages * stage_bytes;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
  const int n0 = (blockIdx.x % n_chunks) * BN;
  const int first = blockIdx.x / n_chunks, step = gridDim.x / n_chunks;
  const int my_tiles = first < m_tiles ? (m_tiles - first + step - 1) / step : 0;
  const int row_chunks = kb * 4;  // 16-byte chunks per row of K

  for (int i = tid; i < BN * row_chunks; i += kThreads) {  // the chunk's filter rows, zero past the last channel
    const int row = i / row_chunks, rest = i - row * row_chunks;
    const bool ok = n0 + row < a.k;
    const int8_t* src = ok ? a.w + static_cast<int64_t>(n0 + row) * a.ktot + rest * 16 : a.w;
    cp_async16(smem_addr(sb + (rest >> 2) * BN * 64 + swz64(row, rest & 3)), src, ok);
  }
  auto load_tile = [&](int slot, int tile) {
    int8_t* sa = stages + slot * stage_bytes;
    const int m0 = tile * kBM;
    for (int i = tid; i < kBM * row_chunks; i += kThreads) {
      const int row = i / row_chunks, rest = i - row * row_chunks;
      const bool ok = m0 + row < a.m;
      const int8_t* src = ok ? a.x + static_cast<int64_t>(m0 + row) * a.ktot + rest * 16 : a.x;
      cp_async16(smem_addr(sa + (rest >> 2) * kBM * 64 + swz64(row, rest & 3)), src, ok);
    }
    if constexpr (Z) {
      const int8_t* z = static_cast<const int8_t*>(a.z);
      for (int i = tid; i < kBM * (BN / 16); i += kThreads) {
        const int row = i / (BN / 16), c = i % (BN / 16);
        const bool ok = m0 + row < a.m && n0 + c * 16 < a.k;
        const int8_t* src = ok ? z + static_cast<int64_t>(m0 + row) * a.k + n0 + c * 16 : z;
        cp_async16(smem_addr(sa + a_bytes + row * P + c * 16), src, ok);
      }
    }
  };

  // This thread's output channels (2t, 2t + 1 of each 8-column MMA tile): scale and bias, held in
  // registers where they fit the 64 (BN 64), else read per tile (L1 hits after the first).
  const int g = lane >> 2, t = lane & 3;
  constexpr bool kHold = NI <= 2;
  float2 sc_held[kHold ? NI : 1], bi_held[kHold ? NI : 1];
  if constexpr (kHold) {
#pragma unroll
    for (int jn = 0; jn < NI; ++jn) channel_pair(a, n0 + wn * WN + jn * 8 + 2 * t, sc_held[jn], bi_held[jn]);
  }

  if (my_tiles > 0) load_tile(0, first);
  cp_async_commit();  // the filters travel with the first tile
  for (int it = 0; it < my_tiles; ++it) {
    cp_async_wait<0>();
    __syncthreads();  // tile `it` is in; every thread is done with the other slot and with `so`
    if (it + 1 < my_tiles) load_tile((it + 1) % kStages, first + (it + 1) * step);
    cp_async_commit();
    const int8_t* sa = stages + (it % kStages) * stage_bytes;

    int acc[MI][NI][4];
    zero_acc(acc);
#pragma unroll 1
    for (int blk = 0; blk < kb; ++blk)
      mma_block64<MI, NI>(smem_addr(sa + blk * kBM * 64), wm * 32, smem_addr(sb + blk * BN * 64), wn * WN, lane, acc);

    // Finish into `so`: scale and bias, the residual from its staged rows, activation, INT8.
#pragma unroll
    for (int jn = 0; jn < NI; ++jn) {
      const int col = wn * WN + jn * 8 + 2 * t;
      float2 sc, bi;
      if constexpr (kHold) sc = sc_held[jn], bi = bi_held[jn];
      else channel_pair(a, n0 + col, sc, bi);
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = wm * 32 + i * 16 + g + half * 8;
          float v0 = fmaf(static_cast<float>(acc[i][jn][2 * half]), sc.x, bi.x);
          float v1 = fmaf(static_cast<float>(acc[i][jn][2 * half + 1]), sc.y, bi.y);
          if constexpr (Z) {
            const char2 zz = *reinterpret_cast<const char2*>(sa + a_bytes + row * P + col);
            v0 = fmaf(static_cast<float>(zz.x), a.z_scale, v0);
            v1 = fmaf(static_cast<float>(zz.y), a.z_scale, v1);
          }
          v0 = fminf(fmaxf(v0, a.lo), a.hi);
          v1 = fminf(fmaxf(v1, a.lo), a.hi);
          *reinterpret_cast<char2*>(so + row * P + col) = quantize_pair(a, v0, v1);
        }
    }
    __syncthreads();
    const int m0 = (first + it * step) * kBM;
    int8_t* y = static_cast<int8_t*>(a.y);
    for (int i = tid; i < kBM * (BN / 16); i += kThreads) {  // rows of BN outputs, 16 bytes a thread (coalesced)
      const int row = i / (BN / 16), c = i % (BN / 16);
      if (m0 + row < a.m && n0 + c * 16 < a.k)
        *reinterpret_cast<uint4*>(y + static_cast<int64_t>(m0 + row) * a.k + n0 + c * 16) =
            *reinterpret_cast<const uint4*>(so + row * P + c * 16);
    }
  }
  cp_async_wait<0>();
}

template <int BN, bool Z>
void launch(const Args& a, cudaStream_t stream) {
  const size_t smem = smem_bytes<BN, Z>(a.ktot / 64);
  static std::once_flag once;
  std::call_once(once, [] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(conv_int8_stream_kernel<BN, Z>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes<BN, Z>(4))));
  });
  int dev = 0, sms = 0, per_sm = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  KILN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, conv_int8_stream_kernel<BN, Z>, kThreads, smem));
  if (per_sm < 1) throw CudaError("conv_int8: the streaming tile's shared memory does not fit this GPU");
  const int m_tiles = (a.m + kBM - 1) / kBM, n_chunks = (a.k + BN - 1) / BN;
  const int per_chunk = std::max(1, std::min(m_tiles, sms * per_sm / n_chunks));
  conv_int8_stream_kernel<BN, Z><<<static_cast<unsigned>(per_chunk * n_chunks), kThreads, smem, stream>>>(a, m_tiles, n_chunks);
  KILN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

bool stream_takes(const Args& a) {
  const bool gemm = a.r == 1 && a.s == 1 && a.stride_h == 1 && a.stride_w == 1 && a.pad_h == 0 && a.pad_w == 0;
  return gemm && (a.ktot == 64 || a.ktot == 128 || a.ktot == 256) && a.k % 16 == 0 && !a.y_f16 && !(a.z && a.z_f16);
}

void launch_stream(const Args& a, int bn, cudaStream_t stream) {
  if (!stream_takes(a))
    throw CudaError("conv_int8: the streaming tiles take 1x1 layers with stride 1, no padding, 64, 128 or 256 input "
                    "channels, output channels a multiple of 16, and INT8 output and residual");
  const bool z = a.z != nullptr;
  if (bn == 64) return z ? launch<64, true>(a, stream) : launch<64, false>(a, stream);
  return z ? launch<128, true>(a, stream) : launch<128, false>(a, stream);
}

}  // namespace kiln::cuda::int8conv
