// Probe: where a persistent INT8 1x1 kernel's time goes on a memory-bound layer (ResNet-50's res2
// expansion, 1x1 64 -> 256 with an INT8 residual, batch 256, 56x56: 461 MB moved, 13 GOPs), by
// switching its parts off one at a time. Moving the layer's bytes alone takes 0.17-0.18 ms on the
// H100 (bench/gpu/stream_probe.cu); Kiln's INT8 tiles take 0.33 ms, cuBLASLt's FP16 GEMM 0.32.
// The kernel: filters resident in shared memory, 64-pixel tiles and their residual loaded by
// cp.async STAGES - 1 tiles ahead, mma.sync m16n8k32, the finished INT8 tile staged for 16-byte
// stores. Not part of the build; timings only (outputs of the ablated variants are wrong).
// Measured on the H100 (bench/results/2026-11-27-gpu-stem-padding.md): the loads and stores alone
// run at the layer's memory ceiling; the epilogue's dependent instructions set the time, more
// warps per SM hide them (64 x 128 tiles at four CTAs per SM: 0.235 ms), and conversions without
// I2F/F2I do not help. The shipped streaming tiles (src/backends/cuda/conv_int8_stream.cu) came
// from it.
//
//   /usr/local/cuda/bin/nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -Isrc \
//     bench/gpu/int8_stream_probe.cu -o build-cuda/int8_stream_probe
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "backends/cuda/conv_int8_common.cuh"

using namespace kiln::cuda::int8conv;

#define CHECK(x)                                                                      \
  do {                                                                                \
    cudaError_t e = (x);                                                              \
    if (e != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); \
      std::exit(1);                                                                   \
    }                                                                                 \
  } while (0)

// Exact integer <-> float conversions without I2F/F2I (which issue at a quarter rate): for
// |i| <= 2^22, float(i) = bits(0x4B400000 + i) - 1.5 * 2^23; adding 1.5 * 2^23 to |f| < 2^22
// rounds it half to even into the low bits.
__device__ __forceinline__ float small_int_to_float(int i) { return __int_as_float(0x4B400000 + i) - 12582912.f; }
__device__ __forceinline__ int q8(float v) { return __float_as_int(fminf(fmaxf(v, -128.f), 127.f) + 12582912.f) - 0x4B400000; }

enum Part : int { kAll = 0, kNoMma = 1, kNoEpilogue = 2, kNoStore = 4, kZDirect = 8, kNoLoads = 16, kFastCvt = 32, kScaleRegs = 64, kNoScale = 128 };

constexpr int BM = 64, N = 256, K = 64, kThreads = 256;  // the layer: 64 -> 256 channels

// A CTA takes channel chunk blockIdx.x % (N / BN) and every (gridDim.x / (N / BN))-th pixel tile.
template <int STAGES, int BN, int MINB>
__global__ void __launch_bounds__(kThreads, MINB)
    probe_kernel(const int8_t* __restrict__ x, const int8_t* __restrict__ w, const float* __restrict__ scale,
                 const int8_t* __restrict__ z, int8_t* __restrict__ y, int m, int m_tiles, int parts) {
  constexpr int WN = BN / 4, NI = WN / 8, ZP = BN + 16, YP = BN + 16, NCH = N / BN;  // staged row pitches (bytes)
  extern __shared__ __align__(128) int8_t smem[];
  constexpr int A_BYTES = BM * K, STAGE = A_BYTES + BM * ZP;
  int8_t* sb = smem;
  int8_t* stages = smem + BN * K;
  int8_t* so = stages + STAGES * STAGE;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 2, wn = warp & 3;
  const int n0 = (blockIdx.x % NCH) * BN, first = blockIdx.x / NCH, step = gridDim.x / NCH;
  const int my_tiles = first < m_tiles ? (m_tiles - first + step - 1) / step : 0;
  const bool z_staged = !(parts & kZDirect);
  for (int i = tid; i < BN * 4; i += kThreads) cp_async16(smem_addr(sb + swz64(i >> 2, i & 3)), w + n0 * K + i * 16, true);
  auto load = [&](int slot, int tile) {
    if (parts & kNoLoads) return;
    int8_t* sa = stages + slot * STAGE;
    const int m0 = tile * BM;
    {
      const int row = tid >> 2, c = tid & 3;
      const bool ok = m0 + row < m;
      cp_async16(smem_addr(sa + swz64(row, c)), ok ? x + static_cast<int64_t>(m0 + row) * K + c * 16 : x, ok);
    }
    if (z_staged)
      for (int i = tid; i < BM * (BN / 16); i += kThreads) {
        const int row = i >> 4, c = i & 15;
        const bool ok = m0 + row < m;
        cp_async16(smem_addr(sa + A_BYTES + row * ZP + c * 16), ok ? z + static_cast<int64_t>(m0 + row) * N + n0 + c * 16 : z, ok);
      }
  };
  const int g = lane >> 2, t = lane & 3;
  float2 sreg[NI];  // kScaleRegs: this thread's scales, loaded once
#pragma unroll
  for (int jn = 0; jn < NI; ++jn)
    sreg[jn] = (parts & kScaleRegs) ? __ldg(reinterpret_cast<const float2*>(scale + n0 + wn * WN + jn * 8 + 2 * t)) : make_float2(1.f, 1.f);
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < my_tiles) load(s, first + s * step);
    cp_async_commit();
  }
  for (int it = 0; it < my_tiles; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int nxt = it + STAGES - 1;
    if (nxt < my_tiles) load(nxt % STAGES, first + nxt * step);
    cp_async_commit();
    const int8_t* sa = stages + (it % STAGES) * STAGE;
    const int m0 = (first + it * step) * BM;
    int acc[2][NI][4] = {};
    if (!(parts & kNoMma)) mma_block64<2, NI>(smem_addr(sa), wm * 32, smem_addr(sb), wn * WN, lane, acc);
    if (!(parts & kNoEpilogue)) {
#pragma unroll
      for (int jn = 0; jn < NI; ++jn) {
        const int col = wn * WN + jn * 8 + 2 * t;
        const float2 sc = (parts & (kScaleRegs | kNoScale)) ? sreg[jn] : __ldg(reinterpret_cast<const float2*>(scale + n0 + col));
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int row = wm * 32 + i * 16 + g + h * 8;
            char2 zz;
            if (z_staged) zz = *reinterpret_cast<const char2*>(sa + A_BYTES + row * ZP + col);
            else zz = m0 + row < m ? __ldg(reinterpret_cast<const char2*>(z + static_cast<int64_t>(m0 + row) * N + n0 + col)) : make_char2(0, 0);
            if (parts & kFastCvt) {  // the full-rate conversions of conv_int8_common.cuh
              float v0 = small_int_to_float(acc[i][jn][2 * h]) * sc.x, v1 = small_int_to_float(acc[i][jn][2 * h + 1]) * sc.y;
              v0 = fmaxf(fmaf(small_int_to_float(zz.x), 0.02f, v0), 0.f);
              v1 = fmaxf(fmaf(small_int_to_float(zz.y), 0.02f, v1), 0.f);
              *reinterpret_cast<char2*>(so + row * YP + col) =
                  make_char2(static_cast<signed char>(q8(v0 * 20.f)), static_cast<signed char>(q8(v1 * 20.f)));
            } else {  // cvt instructions (I2F, F2I)
              float v0 = acc[i][jn][2 * h] * sc.x, v1 = acc[i][jn][2 * h + 1] * sc.y;
              v0 = fmaxf(fmaf(zz.x, 0.02f, v0), 0.f);
              v1 = fmaxf(fmaf(zz.y, 0.02f, v1), 0.f);
              *reinterpret_cast<char2*>(so + row * YP + col) =
                  make_char2(static_cast<signed char>(min(127, __float2int_rn(v0 * 20.f))),
                             static_cast<signed char>(min(127, __float2int_rn(v1 * 20.f))));
            }
          }
      }
    }
    __syncthreads();
    if (!(parts & kNoStore))
      for (int i = tid; i < BM * (BN / 16); i += kThreads) {
        const int row = i >> 4, c = i & 15;
        if (m0 + row < m)
          *reinterpret_cast<uint4*>(y + static_cast<int64_t>(m0 + row) * N + n0 + c * 16) = *reinterpret_cast<const uint4*>(so + row * YP + c * 16);
      }
  }
  cp_async_wait<0>();
}

template <int STAGES, int BN, int MINB>
float run(const int8_t* x, const int8_t* w, const float* sc, const int8_t* z, int8_t* y, int m, int parts, int per_sm_want,
          int* per_sm_out) {
  const size_t smem = BN * K + STAGES * (BM * K + BM * (BN + 16)) + BM * (BN + 16);
  CHECK(cudaFuncSetAttribute(probe_kernel<STAGES, BN, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int sms = 0, per_sm = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, probe_kernel<STAGES, BN, MINB>, kThreads, smem));
  per_sm = std::min(per_sm, per_sm_want);
  *per_sm_out = per_sm;
  const int m_tiles = (m + BM - 1) / BM, nch = N / BN;
  const int grid = std::max(1, std::min(m_tiles, sms * per_sm / nch)) * nch;
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int rep = 0; rep < 25; ++rep) {
    CHECK(cudaEventRecord(e0));
    probe_kernel<STAGES, BN, MINB><<<grid, kThreads, smem>>>(x, w, sc, z, y, m, m_tiles, parts);
    CHECK(cudaEventRecord(e1));
    CHECK(cudaEventSynchronize(e1));
    float t = 0;
    CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (rep >= 5) ms.push_back(t);
  }
  CHECK(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int main() {
  const int m = 256 * 56 * 56;
  int8_t *x, *w, *z, *y;
  float* sc;
  CHECK(cudaMalloc(&x, static_cast<size_t>(m) * K));
  CHECK(cudaMalloc(&w, N * K));
  CHECK(cudaMalloc(&z, static_cast<size_t>(m) * N));
  CHECK(cudaMalloc(&y, static_cast<size_t>(m) * N));
  CHECK(cudaMalloc(&sc, N * 4));
  CHECK(cudaMemset(x, 3, static_cast<size_t>(m) * K));
  CHECK(cudaMemset(w, 1, N * K));
  CHECK(cudaMemset(z, 5, static_cast<size_t>(m) * N));
  CHECK(cudaMemset(sc, 0, N * 4));
  const double bytes = static_cast<double>(m) * (K + 2 * N);
  struct V {
    const char* name;
    int parts;
  };
  const V variants[] = {{"all parts", kAll},
                        {"all parts, scales loaded once into registers", kScaleRegs},
                        {"all parts, no scale loads (constant 1)", kNoScale},
                        {"all parts, full-rate conversions", kFastCvt},
                        {"no loads, full-rate conversions", kNoLoads | kFastCvt},
                        {"no MMA", kNoMma},
                        {"no epilogue math", kNoEpilogue},
                        {"no stores", kNoStore},
                        {"residual read in the epilogue (not staged)", kZDirect},
                        {"no loads (A, residual)", kNoLoads},
                        {"only loads", kNoMma | kNoEpilogue | kNoStore},
                        {"only stores", kNoLoads | kNoMma | kNoEpilogue}};
  // (tile channels, CTAs per SM at most): BN 256 fits 2 CTAs of 256 threads, BN 128 up to 4.
  auto one = [&](const char* shape, auto runner) {
    for (const V& v : variants) {
      int per_sm = 0;
      const float ms = runner(v.parts, &per_sm);
      std::printf("%s, %d CTA/SM, %-44s %.3f ms  %.2f TB/s of the layer's bytes\n", shape, per_sm, v.name, ms,
                  bytes / (ms * 1e-3) / 1e12);
    }
  };
  one("64x256 tiles, 3 stages", [&](int parts, int* ps) { return run<3, 256, 2>(x, w, sc, z, y, m, parts, 2, ps); });
  one("64x128 tiles, 3 stages", [&](int parts, int* ps) { return run<3, 128, 3>(x, w, sc, z, y, m, parts, 3, ps); });
  one("64x128 tiles, 2 stages", [&](int parts, int* ps) { return run<2, 128, 4>(x, w, sc, z, y, m, parts, 4, ps); });
  return 0;
}
