// Probe: can a 1x1 INT8 convolution with a small K (a ResNet bottleneck's 1x1 layers at 56x56)
// beat cuBLASLt's FP16 GEMM, which streams at close to the HBM rate? Kiln's general INT8 kernel
// (conv_int8.h) reaches about 1.4 TB/s on these layers and loses. This kernel keeps the CTA's
// weight tile resident in shared memory and loops over pixel tiles (persistent CTAs), loading the
// next tile's activations and residual (cp.async, double-buffered) while the current one computes
// and is written. Not part of the build: a standalone measurement for the next step.
//
//   /usr/local/cuda/bin/nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Isrc \
//     bench/gpu/int8_1x1_probe.cu -Lbuild-cuda/src/backends/cuda -lkiln_cuda -lcublasLt \
//     -o build-cuda/probe/int8_1x1_probe
//   (run with libkiln_cuda.so on LD_LIBRARY_PATH; prints correctness, then ms per kernel)
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "backends/cuda/conv_int8.h"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/lt_matmul.h"

using namespace kiln::cuda;

namespace {

constexpr int BM = 64, kThreads = 256;  // 8 warps: 2 (pixels) x 4 (channels), 32 x BN/4 each

__device__ __forceinline__ uint32_t saddr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void cp16(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldm4(uint32_t a, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a));
}
__device__ __forceinline__ void mma(int* c, const uint32_t* a, const uint32_t* b) {
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Rows of C bytes (C/16 chunks), chunks XORed so that 8 rows at one logical chunk hit 8 bank groups.
template <int C>
__device__ __forceinline__ int swz(int row, int chunk) {
  constexpr int kCpr = C / 16;
  const int f = kCpr >= 8 ? (row & 7) : ((row >> 1) & 3);
  return row * C + ((chunk ^ f) << 4);
}

// y[m, n] = relu(scale[n] * sum_c x[m, c] w[n, c] + bias[n] + zs * z[m, n]) as INT8 of y / ys.
template <int C, int MINB, int BN>
__global__ void __launch_bounds__(kThreads, MINB) conv1x1_int8(const int8_t* __restrict__ x, const int8_t* __restrict__ w,
                                                        const float* __restrict__ scale, const float* __restrict__ bias,
                                                        const int8_t* __restrict__ z, int8_t* __restrict__ y, int M,
                                                        int N, float zs, float y_inv) {
  extern __shared__ __align__(128) int8_t smem[];
  int8_t* sb = smem;                 // [BN][C]
  int8_t* sa = sb + BN * C;          // [2][BM][C]
  int8_t* sz = sa + 2 * BM * C;      // [2][BM][BN] residual in, output out
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp / 4, wn = warp % 4;
  const int n0 = blockIdx.y * BN;
  const int m_tiles = (M + BM - 1) / BM;
  constexpr int kCpr = C / 16;
  // Weights once.
  for (int i = tid; i < BN * kCpr; i += kThreads) {
    const int row = i / kCpr, ch = i % kCpr;
    const bool ok = n0 + row < N;
    cp16(saddr(sb + swz<C>(row, ch)), ok ? w + static_cast<int64_t>(n0 + row) * C + ch * 16 : w, ok);
  }
  auto load_tile = [&](int t, int buf) {
    const int m0 = t * BM;
    for (int i = tid; i < BM * kCpr; i += kThreads) {
      const int row = i / kCpr, ch = i % kCpr;
      const bool ok = m0 + row < M;
      cp16(saddr(sa + buf * BM * C + swz<C>(row, ch)), ok ? x + static_cast<int64_t>(m0 + row) * C + ch * 16 : x, ok);
    }
    for (int i = tid; i < BM * (BN / 16); i += kThreads) {
      const int row = i / (BN / 16), ch = i % (BN / 16);
      const bool ok = m0 + row < M && n0 + ch * 16 < N;
      cp16(saddr(sz + buf * BM * BN + row * BN + ch * 16), ok ? z + static_cast<int64_t>(m0 + row) * N + n0 + ch * 16 : z, ok);
    }
  };
  int t = blockIdx.x;
  if (t < m_tiles) load_tile(t, 0);
  commit();
  constexpr int WN = BN / 4, NI = WN / 8;
  const int g = lane >> 2, q = lane & 3;
  float2 sc[NI], bi[NI];
#pragma unroll
  for (int j = 0; j < NI; ++j) {
    const int n = n0 + wn * WN + j * 8 + 2 * q;
    sc[j] = n < N ? *reinterpret_cast<const float2*>(scale + n) : make_float2(0, 0);
    bi[j] = n < N ? *reinterpret_cast<const float2*>(bias + n) : make_float2(0, 0);
  }
  for (int buf = 0; t < m_tiles; t += gridDim.x, buf ^= 1) {
    const int next = t + gridDim.x;
    if (next < m_tiles) load_tile(next, buf ^ 1);
    commit();
    wait_group<1>();
    __syncthreads();
    int acc[2][NI][4] = {};
    const uint32_t a_base = saddr(sa + buf * BM * C), b_base = saddr(sb);
    const int j8 = lane >> 3, r8 = lane & 7;
#pragma unroll
    for (int ks = 0; ks < C / 32; ++ks) {
      uint32_t af[2][4], bf[NI][2];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        ldm4(a_base + swz<C>(wm * 32 + i * 16 + (j8 & 1) * 8 + r8, ks * 2 + (j8 >> 1)), af[i][0], af[i][1], af[i][2], af[i][3]);
#pragma unroll
      for (int i = 0; i < NI / 2; ++i)
        ldm4(b_base + swz<C>(wn * WN + i * 16 + (j8 >> 1) * 8 + r8, ks * 2 + (j8 & 1)), bf[2 * i][0], bf[2 * i][1],
             bf[2 * i + 1][0], bf[2 * i + 1][1]);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j) mma(acc[i][j], af[i], bf[j]);
    }
    // Epilogue in place over the residual tile: each thread reads its z pairs and writes y there.
    int8_t* zt = sz + buf * BM * BN;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = wm * 32 + i * 16 + g + h * 8, col = wn * WN + j * 8 + 2 * q;
          char2* p = reinterpret_cast<char2*>(zt + row * BN + col);
          const char2 zz = *p;
          float v0 = fmaf(static_cast<float>(acc[i][j][2 * h]), sc[j].x, bi[j].x) + zs * zz.x;
          float v1 = fmaf(static_cast<float>(acc[i][j][2 * h + 1]), sc[j].y, bi[j].y) + zs * zz.y;
          v0 = fmaxf(v0, 0.f), v1 = fmaxf(v1, 0.f);
          *p = make_char2(static_cast<signed char>(min(127, __float2int_rn(v0 * y_inv))),
                          static_cast<signed char>(min(127, __float2int_rn(v1 * y_inv))));
        }
    __syncthreads();
    const int m0 = t * BM;
    for (int i = tid; i < BM * (BN / 16); i += kThreads) {
      const int row = i / (BN / 16), ch = i % (BN / 16);
      if (m0 + row < M && n0 + ch * 16 < N)
        *reinterpret_cast<uint4*>(y + static_cast<int64_t>(m0 + row) * N + n0 + ch * 16) =
            *reinterpret_cast<const uint4*>(zt + row * BN + ch * 16);
    }
    __syncthreads();  // the buffer is refilled two tiles on
  }
  wait_group<0>();
}

template <class F>
float time_ms(F f) {
  for (int i = 0; i < 3; ++i) f();
  EventTimer t;
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    t.start(nullptr);
    f();
    ms.push_back(t.stop(nullptr));
  }
  std::sort(ms.begin(), ms.end());
  return ms[10];
}

template <int C, int MINB = 2, int BN = 128>
void run_case(int64_t M, int N, bool check) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> u(-127, 127);
  std::vector<int8_t> hx(static_cast<size_t>(M * C)), hw(static_cast<size_t>(N * C)), hz(static_cast<size_t>(M * N));
  for (auto& v : hx) v = static_cast<int8_t>(u(rng));
  for (auto& v : hw) v = static_cast<int8_t>(u(rng));
  for (auto& v : hz) v = static_cast<int8_t>(u(rng));
  std::vector<float> hs(N), hb(N);
  for (int n = 0; n < N; ++n) hs[n] = 3.f / (127.f * 127.f * std::sqrt(float(C))) * (0.5f + (n % 7) / 7.f), hb[n] = 0.1f * (n % 5);
  DeviceBuffer x(hx.size()), w(hw.size()), z(hz.size()), y(hz.size()), y2(hz.size()), s(N * 4), b(N * 4);
  KILN_CUDA_CHECK(cudaMemcpy(x.get(), hx.data(), hx.size(), cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaMemcpy(w.get(), hw.data(), hw.size(), cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaMemcpy(z.get(), hz.data(), hz.size(), cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaMemcpy(s.get(), hs.data(), N * 4, cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaMemcpy(b.get(), hb.data(), N * 4, cudaMemcpyHostToDevice));
  const float zs = 0.02f, ys = 0.05f;
  const size_t smem = BN * C + 2 * BM * C + 2 * BM * BN;
  KILN_CUDA_CHECK(cudaFuncSetAttribute(conv1x1_int8<C, MINB, BN>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int sms = 0, per_sm = 0;
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  KILN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, conv1x1_int8<C, MINB, BN>, kThreads, smem));
  const int n_tiles = (N + BN - 1) / BN, m_tiles = static_cast<int>((M + BM - 1) / BM);
  const dim3 grid(std::max(1, std::min(m_tiles, sms * per_sm / n_tiles)), n_tiles);
  auto mine = [&] {
    conv1x1_int8<C, MINB, BN><<<grid, kThreads, smem>>>(static_cast<const int8_t*>(x.get()), static_cast<const int8_t*>(w.get()),
                                               static_cast<const float*>(s.get()), static_cast<const float*>(b.get()),
                                               static_cast<const int8_t*>(z.get()), static_cast<int8_t*>(y.get()),
                                               static_cast<int>(M), N, zs, 1.f / ys);
  };
  Int8ConvParams p;
  p.n = M, p.h = p.w = 1, p.c = C, p.k = N, p.r = p.s = 1, p.bias = true, p.residual = true, p.z_scale = zs, p.y_scale = ys;
  p.act = ConvAct::kRelu;
  auto general = [&](Int8Tile tile) {
    conv_int8(p, tile, static_cast<const int8_t*>(x.get()), static_cast<const int8_t*>(w.get()),
              static_cast<const float*>(s.get()), static_cast<const float*>(b.get()), z.get(), y2.get(), nullptr);
  };
  if (check) {
    mine();
    general(Int8Tile::k128x64s);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<int8_t> a(hz.size()), c(hz.size());
    KILN_CUDA_CHECK(cudaMemcpy(a.data(), y.get(), a.size(), cudaMemcpyDeviceToHost));
    KILN_CUDA_CHECK(cudaMemcpy(c.data(), y2.get(), c.size(), cudaMemcpyDeviceToHost));
    int64_t bad = 0;
    for (size_t i = 0; i < a.size(); ++i) bad += std::abs(int(a[i]) - int(c[i])) > 1;
    std::printf("check M=%lld C=%d N=%d: %lld of %zu outputs differ by more than 1 from conv_int8\n", (long long)M, C, N,
                (long long)bad, a.size());
  }
  const float t_mine = time_ms(mine);
  float t_gen = 1e9f;
  for (Int8Tile tile : {Int8Tile::k128x64s, Int8Tile::k64x64s, Int8Tile::k128x128s, Int8Tile::k128x64})
    t_gen = std::min(t_gen, time_ms([&] { general(tile); }));
  // FP16 cuBLASLt with bias + ReLU and the residual as C (what Kiln FP16 runs).
  DeviceBuffer hx16(M * C * 2), hw16(C * N * 2), hb16(N * 2), hz16(M * N * 2), hy16(M * N * 2);
  KILN_CUDA_CHECK(cudaMemset(hx16.get(), 0x3c, hx16.bytes()));
  KILN_CUDA_CHECK(cudaMemset(hw16.get(), 0x31, hw16.bytes()));
  KILN_CUDA_CHECK(cudaMemset(hb16.get(), 0x30, hb16.bytes()));
  KILN_CUDA_CHECK(cudaMemset(hz16.get(), 0x30, hz16.bytes()));
  GemmShape gs;
  gs.m = M, gs.n = N, gs.k = C, gs.accumulate = true;
  LtMatmul mm(gs, GemmType::kF16, Epilogue::kBiasRelu, 64u << 20);
  DeviceBuffer ws(std::max<size_t>(mm.chosen_workspace_bytes(), 16));
  const float t16 = time_ms([&] { mm.run(hx16.get(), hw16.get(), hb16.get(), hy16.get(), nullptr, ws.get(), ws.bytes(), hz16.get()); });
  const double bytes8 = double(M) * C + double(M) * N * 2, bytes16 = 2 * bytes8;
  std::printf("[BN %d, min %d CTAs/SM] M=%lld C=%d N=%d: fp16 cublasLt %.3f ms (%.0f GB/s) | int8 general %.3f ms | int8 1x1 persistent %.3f ms (%.0f GB/s, "
              "grid %dx%d, %d CTAs/SM) | 1x1 vs fp16 %.2fx\n",
              BN, MINB, (long long)M, C, N, t16, bytes16 / t16 / 1e6, t_gen, t_mine, bytes8 / t_mine / 1e6, grid.x, grid.y, per_sm,
              t16 / t_mine);
}

}  // namespace

int main() {
  try {
    run_case<64>(1000, 256, true);
    run_case<128>(777, 512, true);
    run_case<64, 3>(1000, 256, true);
    run_case<64, 4>(1000, 256, true);
    run_case<64, 1, 256>(1000, 256, true);
    run_case<64, 2, 256>(1000, 256, true);
    run_case<64>(256LL * 56 * 56, 256, true);     // res2 conv3 and downsample, batch 256
    run_case<64, 3>(256LL * 56 * 56, 256, false);
    run_case<64, 4>(256LL * 56 * 56, 256, false);
    run_case<64, 1, 256>(256LL * 56 * 56, 256, true);  // whole rows of 256 channels per CTA
    run_case<64, 2, 256>(256LL * 56 * 56, 256, false);
    run_case<128>(256LL * 28 * 28, 512, false);   // res3 conv3
    run_case<128, 3>(256LL * 28 * 28, 512, false);
    run_case<128, 1, 256>(256LL * 28 * 28, 512, false);
    run_case<64>(32LL * 56 * 56, 256, false);     // batch 32
  } catch (const CudaError& e) {
    std::fprintf(stderr, "int8_1x1_probe: %s\n", e.what());
    return 1;
  }
  return 0;
}
