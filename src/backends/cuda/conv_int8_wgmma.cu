// The INT8 convolution's wgmma kernel (conv_int8.h, tiles "w128x<BN>"): the implicit GEMM of
// conv_int8.cu on Hopper's warpgroup MMA (wgmma.mma_async m64nNk32 s8, sm_90a).
//
// A CTA of two warpgroups computes 128 output pixels x BN output channels. K advances 128 bytes a
// stage: every thread gathers 16-byte chunks of the im2col rows (A) and of the filters (B) with
// cp.async into shared memory laid out as wgmma's 128-byte swizzle wants it (8-row atoms of 1024
// bytes, chunk c of row r at c ^ (r % 8)), STAGES deep; each warpgroup then issues four k32 wgmmas
// for its 64 rows from shared-memory descriptors and keeps one stage of them in flight while the
// next stage's copies land. The epilogue is conv_int8.cu's (per accumulator pair, or staged
// through shared memory). Built into the sm_90a image only; elsewhere the kernel is a trap and
// wgmma_available() says no.
#include <cuda.h>  // CUtensorMap (the encoder comes through the runtime's driver entry point)
#include <cuda_fp16.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "backends/cuda/conv_int8_common.cuh"
#include "backends/cuda/cuda_util.h"

namespace kiln::cuda::int8conv {
namespace {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KILN_WGMMA 1
#endif

constexpr int kBM = 128, kBK = 128, kThreads = 256;

#ifdef KILN_WGMMA
// A shared-memory matrix descriptor: K-major rows of 128 bytes, 128-byte swizzle, 8-row atoms
// 1024 bytes apart (the leading offset is unused with this swizzle: 1 by convention).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3ffff) >> 4) | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) |
         (uint64_t{1} << 62);
}
// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in the 128-byte swizzle.
__device__ __forceinline__ uint32_t swz128(int row, int chunk) {
  return static_cast<uint32_t>(row * kBK + ((chunk ^ (row & 7)) << 4));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keeps the compiler from moving accumulator accesses across the asynchronous MMAs.
template <int R>
__device__ __forceinline__ void fence_regs(int (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

__device__ __forceinline__ void wgmma_s8_n64(int (&d)[32], uint64_t da, uint64_t db) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31])
      : "l"(da), "l"(db));
}
__device__ __forceinline__ void wgmma_s8_n128(int (&d)[64], uint64_t da, uint64_t db) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, %64, %65, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
        "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
        "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
        "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
        "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "l"(da), "l"(db));
}
__device__ __forceinline__ void wgmma_s8_n256(int (&d)[128], uint64_t da, uint64_t db) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
        "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
        "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
        "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
        "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]),
        "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]),
        "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]),
        "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]),
        "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]),
        "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]),
        "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]),
        "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]),
        "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
      : "l"(da), "l"(db));
}
template <int BN>
__device__ __forceinline__ void wgmma_s8(int (&d)[BN / 2], uint64_t da, uint64_t db) {
  if constexpr (BN == 64) wgmma_s8_n64(d, da, db);
  else if constexpr (BN == 128) wgmma_s8_n128(d, da, db);
  else wgmma_s8_n256(d, da, db);
}
#endif

template <int BN, int STAGES, bool STAGED>
__global__ void __launch_bounds__(kThreads, BN <= 64 ? 2 : 1) conv_int8_wgmma_kernel(const Args a) {
#ifdef KILN_WGMMA
  constexpr int A_CHUNKS = kBM * 8 / kThreads, B_CHUNKS = BN * 8 / kThreads;
  extern __shared__ __align__(128) int8_t smem_raw[];
  // wgmma's swizzle works on address bits: the tiles start on 1024 bytes.
  int8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  int8_t* sa = smem;                       // [STAGES][128][128]
  int8_t* sb = smem + STAGES * kBM * kBK;  // [STAGES][BN][128]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wg = warp >> 2;
  const int tile_n = blockIdx.x % a.n_tiles, tile_m = blockIdx.x / a.n_tiles;
  const int m0 = tile_m * kBM, n0 = tile_n * BN;
  const int col = tid & 7;  // this thread's 16-byte chunk of every row it loads

  PixelRow prow[A_CHUNKS];
#pragma unroll
  for (int i = 0; i < A_CHUNKS; ++i) prow[i] = pixel_row(a, m0 + (tid >> 3) + i * (kThreads / 8));
  const int8_t* b_row[B_CHUNKS];
  bool b_ok[B_CHUNKS];
#pragma unroll
  for (int i = 0; i < B_CHUNKS; ++i) {
    const int row = (tid >> 3) + i * (kThreads / 8);
    b_ok[i] = n0 + row < a.k;
    b_row[i] = a.w + static_cast<int64_t>(b_ok[i] ? n0 + row : 0) * a.ktot;
  }
  auto load_stage = [&](int slot, int kt) {
    const int kk = kt * kBK + col * 16;
    const KPos kp = k_pos(a, kk);
    const uint32_t base_a = smem_addr(sa + slot * kBM * kBK), base_b = smem_addr(sb + slot * BN * kBK);
#pragma unroll
    for (int i = 0; i < A_CHUNKS; ++i) load_a_chunk(a, prow[i], kp, base_a + swz128((tid >> 3) + i * (kThreads / 8), col));
#pragma unroll
    for (int i = 0; i < B_CHUNKS; ++i) {
      const int row = (tid >> 3) + i * (kThreads / 8);
      const bool ok = kp.ok && b_ok[i];
      cp_async16(base_b + swz128(row, col), ok ? b_row[i] + kk : a.w, ok);
    }
  };

  int acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0;

  // Loads run STAGES - 2 stages ahead: one slot is being read by the wgmmas still in flight.
  const int k_tiles = (a.ktot + kBK - 1) / kBK;
#pragma unroll
  for (int st = 0; st < STAGES - 2; ++st) {
    if (st < k_tiles) load_stage(st, st);
    cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<STAGES - 3>();  // this thread's copies of stage kt have landed
    fence_async_shared();         // ... and are visible to the tensor cores' (async) reads
    __syncthreads();              // everyone's; and every warpgroup is past stage kt - 2's wgmmas
    const int next = kt + STAGES - 2;
    if (next < k_tiles) load_stage(next % STAGES, next);
    cp_async_commit();
    const int slot = kt % STAGES;
    const uint32_t base_a = smem_addr(sa + slot * kBM * kBK) + wg * 64 * kBK, base_b = smem_addr(sb + slot * BN * kBK);
    fence_regs(acc);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kBK / 32; ++ks) wgmma_s8<BN>(acc, smem_desc(base_a + ks * 32), smem_desc(base_b + ks * 32));
    wgmma_commit();
    fence_regs(acc);
    wgmma_wait<1>();
  }
  wgmma_wait<0>();
  fence_regs(acc);
  cp_async_wait<0>();

  // Accumulator layout: warp w of the warpgroup holds rows 16w + g and 16w + g + 8 of its 64;
  // acc[4j + 2h + e] is row 16w + g + 8h, column 8j + 2t + e.
  const int g = lane >> 2, t = lane & 3;
  const int row0 = wg * 64 + (warp & 3) * 16 + g;
  if constexpr (STAGED) {
    constexpr int LD = BN + 8;
    float* stage = reinterpret_cast<float*>(smem);
    __syncthreads();  // every warp is done with the pipeline buffers
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int cc = j * 8 + 2 * t;
      float2 sc, bi;
      channel_pair(a, n0 + cc, sc, bi);
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<float2*>(stage + (row0 + 8 * h) * LD + cc) =
            make_float2(fmaf(static_cast<float>(acc[4 * j + 2 * h]), sc.x, bi.x),
                        fmaf(static_cast<float>(acc[4 * j + 2 * h + 1]), sc.y, bi.y));
    }
    __syncthreads();
    drain_staged<kBM, BN, kThreads, 0>(a, stage, m0, n0, tid, nullptr, false);
  } else {
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int nc = n0 + j * 8 + 2 * t;
      float2 sc, bi;
      channel_pair(a, nc, sc, bi);
#pragma unroll
      for (int h = 0; h < 2; ++h)
        finish_pair(a, m0 + row0 + 8 * h, nc, fmaf(static_cast<float>(acc[4 * j + 2 * h]), sc.x, bi.x),
                    fmaf(static_cast<float>(acc[4 * j + 2 * h + 1]), sc.y, bi.y));
    }
  }
#else
  __trap();  // not built for this GPU: wgmma_available() is false and the host never launches it
#endif
}

#ifdef KILN_WGMMA
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives on `bar` once every cp.async this thread issued before has landed.
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// The two consumer warpgroups only (named barrier 1; the producer never joins).
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 1, 256;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// The tensor copy engine: box (c0, c1) of `map` into shared memory at dst, completing on `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
#endif

// The warp-specialized, persistent form: a CTA per SM walks the output tiles; warpgroup 0 only
// loads (the filters, and A for a 1x1 layer that is a plain GEMM, by the tensor copy engine; A's
// im2col rows otherwise by cp.async), each stage completing on a "full" mbarrier; warpgroups 1
// and 2 only multiply (64 pixel rows each) and free a stage on its "empty" mbarrier once their
// wgmmas on it are done. The loads run up to STAGES - 1 stages ahead, across tile boundaries, so
// the next tile's operands arrive while the consumers finish the last one (the scales are loaded
// under the main loop, and the finished outputs go through a shared-memory area of their own so
// that the stores are 16 bytes wide).
constexpr int kWsThreads = 384;

template <int BN, int STAGES>
__global__ void __launch_bounds__(kWsThreads, 1)
    conv_int8_wgmma_ws_kernel(const Args a, const __grid_constant__ CUtensorMap map_b,
                              const __grid_constant__ CUtensorMap map_a, const int a_by_tma) {
#ifdef KILN_WGMMA
  extern __shared__ __align__(128) int8_t smem_raw[];
  __shared__ __align__(8) uint64_t full[STAGES], empty[STAGES];
  int8_t* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  int8_t* sa = smem;                       // [STAGES][128][128]
  int8_t* sb = smem + STAGES * kBM * kBK;  // [STAGES][BN][128]
  constexpr int kStageRow = BN * 2 + 16;  // bytes: FP16 outputs, padded against bank conflicts
  int8_t* stage = sb + STAGES * BN * kBK;  // [128][kStageRow], the epilogue's
  const int tid = threadIdx.x, wg = tid >> 7;
  const int k_tiles = (a.ktot + kBK - 1) / kBK;
  const int tiles = ((a.m + kBM - 1) / kBM) * a.n_tiles;
  if (tid == 0) {
    // full: the producer's 128 cp.async arrivals plus thread 0's expect_tx for the tensor copies.
    for (int i = 0; i < STAGES; ++i) mbar_init(smem_addr(&full[i]), 129), mbar_init(smem_addr(&empty[i]), 256);
  }
  __syncthreads();

  if (wg == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 64;\n" ::: "memory");
    const int col = tid & 7, r0 = tid >> 3;  // chunk `col` of rows r0, r0 + 16, ...
    int it = 0;                              // stages loaded so far, over all tiles
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const int m0 = (tile / a.n_tiles) * kBM, n0 = (tile % a.n_tiles) * BN;
      PixelRow prow[kBM / 16];
      if (!a_by_tma) {
#pragma unroll
        for (int i = 0; i < kBM / 16; ++i) prow[i] = pixel_row(a, m0 + r0 + 16 * i);
      }
      for (int kt = 0; kt < k_tiles; ++kt, ++it) {
        const int slot = it % STAGES;
        if (it >= STAGES) mbar_wait(smem_addr(&empty[slot]), ((it / STAGES) - 1) & 1);
        const uint32_t base_a = smem_addr(sa + slot * kBM * kBK), base_b = smem_addr(sb + slot * BN * kBK);
        const uint32_t bar = smem_addr(&full[slot]);
        if (tid == 0) {
          mbar_expect_tx(bar, BN * kBK + (a_by_tma ? kBM * kBK : 0));
          tma_load_2d(base_b, &map_b, kt * kBK, n0, bar);
          if (a_by_tma) tma_load_2d(base_a, &map_a, kt * kBK, m0, bar);
        }
        if (!a_by_tma) {
          const KPos kp = k_pos(a, kt * kBK + col * 16);
#pragma unroll
          for (int i = 0; i < kBM / 16; ++i) load_a_chunk(a, prow[i], kp, base_a + swz128(r0 + 16 * i, col));
        }
        mbar_arrive_cp_async(bar);
      }
    }
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 216;\n" ::: "memory");
  const int cwg = wg - 1, lane = tid & 31, warp = (tid >> 5) & 3;
  const int g = lane >> 2, t = lane & 3;
  const int row0 = cwg * 64 + warp * 16 + g;  // this thread's first accumulator row in the tile
  int it = 0;
  for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int m0 = (tile / a.n_tiles) * kBM, n0 = (tile % a.n_tiles) * BN;
    float2 sc[BN / 8], bi[BN / 8];  // this thread's channels' scale and bias, loaded under the main loop
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) channel_pair(a, n0 + j * 8 + 2 * t, sc[j], bi[j]);
    int acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0;
    for (int kt = 0; kt < k_tiles; ++kt, ++it) {
      const int slot = it % STAGES;
      mbar_wait(smem_addr(&full[slot]), (it / STAGES) & 1);
      if (!a_by_tma) fence_async_shared();  // the producer's cp.async writes, seen by the tensor cores
      const uint32_t base_a = smem_addr(sa + slot * kBM * kBK) + cwg * 64 * kBK, base_b = smem_addr(sb + slot * BN * kBK);
      fence_regs(acc);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kBK / 32; ++ks) wgmma_s8<BN>(acc, smem_desc(base_a + ks * 32), smem_desc(base_b + ks * 32));
      wgmma_commit();
      fence_regs(acc);
      wgmma_wait<1>();  // the previous stage's wgmmas are done: its slot goes back to the producer
      if (kt > 0) mbar_arrive(smem_addr(&empty[(it - 1) % STAGES]));
    }
    wgmma_wait<0>();
    fence_regs(acc);
    mbar_arrive(smem_addr(&empty[(it - 1) % STAGES]));
    // The epilogue: residual, activation and rounding from the accumulators, the finished values
    // (INT8 or FP16) through this CTA's own staging area (the pipeline's buffers already take the
    // next tile), then out in 16-byte stores. acc[4j + 2h + e] is row row0 + 8h, column 8j + 2t + e.
    consumer_sync();  // the last tile's copy-out is done with the staging area
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int cc = j * 8 + 2 * t, nc = n0 + cc;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = row0 + 8 * h, m = m0 + r;
        float v0 = fmaf(static_cast<float>(acc[4 * j + 2 * h]), sc[j].x, bi[j].x);
        float v1 = fmaf(static_cast<float>(acc[4 * j + 2 * h + 1]), sc[j].y, bi[j].y);
        if (m < a.m && nc < a.k) residual_act_pair(a, static_cast<int64_t>(m) * a.k + nc, v0, v1);
        if (a.y_f16) *reinterpret_cast<__half2*>(stage + r * kStageRow + cc * 2) = __floats2half2_rn(v0, v1);
        else *reinterpret_cast<char2*>(stage + r * kStageRow + cc) = quantize_pair(a, v0, v1);
      }
    }
    consumer_sync();
    const int es = a.y_f16 ? 2 : 1, row_chunks = BN * es / 16;
    const bool vec = a.k * es % 16 == 0;
    for (int ch = tid - 128; ch < kBM * row_chunks; ch += 256) {
      const int r = ch / row_chunks, c0 = (ch - r * row_chunks) * 16 / es, m = m0 + r;  // c0: first channel
      if (m >= a.m || n0 + c0 >= a.k) continue;
      int8_t* dst = static_cast<int8_t*>(a.y) + (static_cast<int64_t>(m) * a.k + n0 + c0) * es;
      const int8_t* src = stage + r * kStageRow + c0 * es;
      if (vec) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      } else {  // channels not a multiple of 16 (8 at least): byte by byte
        for (int e = 0; e < 16 && n0 + c0 + e / es < a.k; ++e) dst[e] = src[e];
      }
    }
  }
#else
  __trap();
#endif
}

__global__ void probe_kernel(int* out) {
#ifdef KILN_WGMMA
  *out = 1;
#else
  *out = 0;
#endif
}

template <int BN, int STAGES, bool STAGED>
void launch(const Args& args, cudaStream_t stream) {
  constexpr size_t pipeline = static_cast<size_t>(STAGES) * (kBM + BN) * kBK;
  constexpr size_t staged = STAGED ? static_cast<size_t>(kBM) * (BN + 8) * 4 : 0;
  constexpr size_t smem = (pipeline > staged ? pipeline : staged) + 1024;  // + alignment slack
  static std::once_flag once;
  std::call_once(once, [] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(conv_int8_wgmma_kernel<BN, STAGES, STAGED>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  });
  Args a = args;
  a.n_tiles = (a.k + BN - 1) / BN;
  const int64_t blocks = static_cast<int64_t>((a.m + kBM - 1) / kBM) * a.n_tiles;
  conv_int8_wgmma_kernel<BN, STAGES, STAGED><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(a);
  check_launch("conv_int8_wgmma");
}

// cuTensorMapEncodeTiled, through the runtime (no link to libcuda).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  if (!fn) throw CudaError("conv_int8: the driver has no cuTensorMapEncodeTiled");
  return fn;
}
// A row-major INT8 matrix of `rows` x `cols` bytes, read in boxes of `box_rows` x 128 bytes laid out
// in the 128-byte swizzle; out-of-range elements read as zeros.
CUtensorMap int8_matrix_map(const void* base, int64_t rows, int64_t cols, int box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kBK), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(base), dims, strides, box,
                                          elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw CudaError("conv_int8: cuTensorMapEncodeTiled failed (" + std::to_string(static_cast<int>(r)) + ")");
  return map;
}

template <int BN, int STAGES>
void launch_ws(const Args& args, cudaStream_t stream) {
  constexpr size_t smem = static_cast<size_t>(STAGES) * (kBM + BN) * kBK + static_cast<size_t>(kBM) * (BN * 2 + 16) + 1024;
  static int sms = 0;
  static std::once_flag once;
  std::call_once(once, [] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(conv_int8_wgmma_ws_kernel<BN, STAGES>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem)));
    int dev = 0;
    KILN_CUDA_CHECK(cudaGetDevice(&dev));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  });
  Args a = args;
  a.n_tiles = (a.k + BN - 1) / BN;
  // A 1x1 layer with stride 1 and no padding is a plain GEMM: its A rows are the input's pixels.
  const bool a_by_tma = a.r == 1 && a.s == 1 && a.stride_h == 1 && a.stride_w == 1 && a.pad_h == 0 && a.pad_w == 0;
  const CUtensorMap map_b = int8_matrix_map(a.w, a.k, a.ktot, BN);
  const CUtensorMap map_a = a_by_tma ? int8_matrix_map(a.x, a.m, a.c, kBM) : map_b;
  const int64_t tiles = static_cast<int64_t>((a.m + kBM - 1) / kBM) * a.n_tiles;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(tiles, sms));
  conv_int8_wgmma_ws_kernel<BN, STAGES><<<grid, kWsThreads, smem, stream>>>(a, map_b, map_a, a_by_tma ? 1 : 0);
  check_launch("conv_int8_wgmma_ws");
}

}  // namespace

bool wgmma_available() {
  // Per device (a host may mix GPUs): -1 not asked yet, else 0 or 1.
  static std::atomic<int> known[64];
  static std::once_flag init;
  std::call_once(init, [] {
    for (auto& k : known) k.store(-1);
  });
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return false;
  if (dev < 64 && known[dev].load() >= 0) return known[dev].load() == 1;
  bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
            minor == 0;
  if (ok) {
    // Which image the driver loaded: the sm_90a one has the kernels, the others a trap.
    int* d = nullptr;
    int h = 0;
    ok = cudaMalloc(&d, sizeof(int)) == cudaSuccess;
    if (ok) {
      probe_kernel<<<1, 1>>>(d);
      ok = cudaGetLastError() == cudaSuccess && cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess && h == 1;
      cudaFree(d);
    } else {
      (void)cudaGetLastError();
    }
  }
  if (dev < 64) known[dev].store(ok ? 1 : 0);
  return ok;
}

void launch_wgmma(const Args& a, int bn, bool staged, bool specialized, cudaStream_t stream) {
  if (!wgmma_available()) throw CudaError("conv_int8: the wgmma tiles need an sm_90 GPU and Kiln's sm_90a build");
  // The variants that won somewhere on ResNet-50's layers (bench: kiln_cuda_bench's INT8 rows).
  if (specialized && !staged && bn == 128) return launch_ws<128, 5>(a, stream);
  if (!specialized && bn == 64 && staged) return launch<64, 4, true>(a, stream);
  if (!specialized && bn == 128 && staged) return launch<128, 5, true>(a, stream);
  if (!specialized && bn == 256 && !staged) return launch<256, 4, false>(a, stream);
  if (!specialized && bn == 256 && staged) return launch<256, 4, true>(a, stream);
  throw CudaError("conv_int8: no wgmma tile of " + std::to_string(bn) + " channels" + (staged ? ", staged" : "") +
                  (specialized ? ", warp-specialized" : ""));
}

}  // namespace kiln::cuda::int8conv
