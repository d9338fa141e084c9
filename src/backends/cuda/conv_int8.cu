// INT8 implicit-GEMM convolution (conv_int8.h).
#include <cuda_fp16.h>

#include <cmath>
#include <mutex>
#include <sstream>

#include "backends/cuda/conv_int8.h"
#include "backends/cuda/conv_int8_common.cuh"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/ops.h"

namespace kiln::cuda {

int64_t Int8ConvParams::out_h() const {
  if (stride_h <= 0) return 0;
  const int64_t span = h + 2 * pad_h - static_cast<int64_t>(dil_h) * (r - 1) - 1;
  return span < 0 ? 0 : span / stride_h + 1;
}
int64_t Int8ConvParams::out_w() const {
  if (stride_w <= 0) return 0;
  const int64_t span = w + 2 * pad_w - static_cast<int64_t>(dil_w) * (s - 1) - 1;
  return span < 0 ? 0 : span / stride_w + 1;
}
std::string Int8ConvParams::str() const {
  std::ostringstream os;
  os << "n" << n << " c" << c << " " << h << "x" << w << " -> k" << k << " " << r << "x" << s << " pad " << pad_h << ","
     << pad_w << " stride " << stride_h << "," << stride_w << " dil " << dil_h << "," << dil_w << " int8";
  if (bias) os << " bias";
  if (residual) os << (z_f16 ? " +z(fp16)" : " +z(int8)");
  os << (act == ConvAct::kRelu ? " relu" : act == ConvAct::kClip ? " clip" : "") << " -> " << (y_f16 ? "fp16" : "int8");
  return os.str();
}

const char* int8_tile_name(Int8Tile t) {
  switch (t) {
    case Int8Tile::k128x128: return "128x128";
    case Int8Tile::k128x64: return "128x64";
    case Int8Tile::k64x64: return "64x64";
    case Int8Tile::k128x128s: return "128x128s";
    case Int8Tile::k128x64s: return "128x64s";
    case Int8Tile::k64x64s: return "64x64s";
    case Int8Tile::kW128x256: return "w128x256";
    case Int8Tile::kW128x64s: return "w128x64s";
    case Int8Tile::kW128x128s: return "w128x128s";
    case Int8Tile::kW128x256s: return "w128x256s";
    case Int8Tile::kWs128x128: return "ws128x128";
    case Int8Tile::kStr64x64: return "str64x64";
    case Int8Tile::kStr64x128: return "str64x128";
    default: return "?";
  }
}
bool parse_int8_tile(const std::string& s, Int8Tile* t) {
  for (int i = 0; i < static_cast<int>(Int8Tile::kCount); ++i)
    if (s == int8_tile_name(static_cast<Int8Tile>(i))) return *t = static_cast<Int8Tile>(i), true;
  return false;
}
bool int8_tile_available(Int8Tile t) {
  const bool wgmma = t >= Int8Tile::kW128x256 && t <= Int8Tile::kWs128x128;
  return !wgmma || int8conv::wgmma_available();
}

namespace {
// The kernels' arguments for `p` (pointers as given; z only with a residual).
int8conv::Args make_args(const Int8ConvParams& p, const int8_t* x, const int8_t* w, const float* scale, const float* bias,
                         const void* z, void* y) {
  int8conv::Args a{};
  a.x = x, a.w = w, a.scale = scale, a.bias = p.bias ? bias : nullptr, a.z = p.residual ? z : nullptr, a.y = y;
  a.n = static_cast<int>(p.n), a.h = static_cast<int>(p.h), a.w_ = static_cast<int>(p.w), a.c = static_cast<int>(p.c);
  a.k = static_cast<int>(p.k), a.r = static_cast<int>(p.r), a.s = static_cast<int>(p.s);
  a.oh = static_cast<int>(p.out_h()), a.ow = static_cast<int>(p.out_w());
  a.pad_h = p.pad_h, a.pad_w = p.pad_w, a.stride_h = p.stride_h, a.stride_w = p.stride_w, a.dil_h = p.dil_h, a.dil_w = p.dil_w;
  a.m = a.n * a.oh * a.ow;
  a.ktot = a.r * a.s * a.c;
  a.z_f16 = p.z_f16, a.y_f16 = p.y_f16, a.z_scale = p.z_scale;
  a.y_inv = p.y_f16 ? 1.f : 1.f / p.y_scale;
  a.lo = -INFINITY, a.hi = INFINITY;
  if (p.act == ConvAct::kRelu) a.lo = 0.f;
  if (p.act == ConvAct::kClip) a.lo = p.clip_lo, a.hi = p.clip_hi;
  return a;
}
bool is_stream(Int8Tile t) { return t == Int8Tile::kStr64x64 || t == Int8Tile::kStr64x128; }
}  // namespace

bool int8_tile_takes(const Int8ConvParams& p, Int8Tile t) {
  if (!int8_tile_available(t)) return false;
  if (!is_stream(t)) return true;
  static const int8_t probe = 0;  // stands for the residual's pointer: only its presence matters
  return int8conv::stream_takes(make_args(p, nullptr, nullptr, nullptr, nullptr, &probe, nullptr));
}

namespace {

using namespace int8conv;

constexpr int kBK = 64;      // bytes (= INT8 values) of K per pipeline stage: four 16-byte chunks a row
constexpr int kStages = 4;

__device__ __forceinline__ int swz(int row, int chunk) { return swz64(row, chunk); }

// STAGED: the accumulators (scaled, bias added) go through shared memory first, and the residual
// read, activation and store run on 16 consecutive channels per thread: 16-byte loads and stores,
// for the layers bound by memory (a 1x1 expansion with its residual). Otherwise each thread
// finishes its own accumulator pairs (2-byte INT8 stores).
// Staged variants keep at least three CTAs of 256 threads per SM (the memory-bound layers they
// serve need bytes in flight more than registers).
template <int BM, int BN, int WM_WARPS, int WN_WARPS, bool STAGED>
__global__ void __launch_bounds__(WM_WARPS* WN_WARPS * 32, STAGED && BM * BN <= 128 * 64 ? 768 / (WM_WARPS * WN_WARPS * 32) : 2)
    conv_int8_kernel(const Args a) {
  constexpr int kThreads = WM_WARPS * WN_WARPS * 32;
  constexpr int WM = BM / WM_WARPS, WN = BN / WN_WARPS;  // warp tile
  constexpr int MI = WM / 16, NI = WN / 8;               // MMA tiles per warp
  constexpr int A_CHUNKS = BM * 4 / kThreads, B_CHUNKS = BN * 4 / kThreads;
  static_assert(A_CHUNKS >= 1 && B_CHUNKS >= 1 && NI % 2 == 0, "tile shape");
  extern __shared__ __align__(128) int8_t smem[];
  int8_t* sa = smem;                       // [kStages][BM][64]
  int8_t* sb = smem + kStages * BM * kBK;  // [kStages][BN][64]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / WN_WARPS, wn = warp % WN_WARPS;
  // Neighbouring CTAs share their rows of A (output pixels): the output-channel tiles of one pixel
  // tile run together, so A comes from DRAM once.
  const int tile_n = blockIdx.x % a.n_tiles, tile_m = blockIdx.x / a.n_tiles;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int col = tid & 3;  // this thread's 16-byte chunk within a 64-byte row (same for all its rows)

  // Per A row this thread loads: the image's offset and the window's top-left corner.
  PixelRow prow[A_CHUNKS];
#pragma unroll
  for (int i = 0; i < A_CHUNKS; ++i) prow[i] = pixel_row(a, m0 + (tid >> 2) + i * (kThreads / 4));
  const int8_t* b_row[B_CHUNKS];
  bool b_ok[B_CHUNKS];
#pragma unroll
  for (int i = 0; i < B_CHUNKS; ++i) {
    const int row = (tid >> 2) + i * (kThreads / 4);
    b_ok[i] = n0 + row < a.k;
    b_row[i] = a.w + static_cast<int64_t>(b_ok[i] ? n0 + row : 0) * a.ktot;
  }

  auto load_stage = [&](int slot, int kt) {
    const int kk = kt * kBK + col * 16;
    const KPos kp = k_pos(a, kk);
    const uint32_t base_a = smem_addr(sa + slot * BM * kBK), base_b = smem_addr(sb + slot * BN * kBK);
#pragma unroll
    for (int i = 0; i < A_CHUNKS; ++i) load_a_chunk(a, prow[i], kp, base_a + swz((tid >> 2) + i * (kThreads / 4), col));
#pragma unroll
    for (int i = 0; i < B_CHUNKS; ++i) {
      const int row = (tid >> 2) + i * (kThreads / 4);
      const bool ok = kp.ok && b_ok[i];
      cp_async16(base_b + swz(row, col), ok ? b_row[i] + kk : a.w, ok);
    }
  };

  // The staged epilogue's INT8 residual, loaded before the main loop (it does not depend on it),
  // so its DRAM latency hides behind the operands' (tiles with at most two chunks per thread; the
  // others would lose occupancy to the registers).
  constexpr int kChunks = BM * BN / 16;
  constexpr int kPre = STAGED && kChunks / kThreads <= 2 ? kChunks / kThreads : 0;
  uint4 zpre[kPre > 0 ? kPre : 1];
  const bool prefetched = kPre > 0 && a.z && !a.z_f16 && a.k % 16 == 0;
  if (prefetched) {
#pragma unroll
    for (int j = 0; j < kPre; ++j) {
      const int ch = tid + j * kThreads;
      const int row = ch / (BN / 16), col = (ch % (BN / 16)) * 16;
      const int m = m0 + row, nc = n0 + col;
      zpre[j] = m < a.m && nc < a.k
                    ? __ldg(reinterpret_cast<const uint4*>(static_cast<const int8_t*>(a.z) + static_cast<int64_t>(m) * a.k + nc))
                    : make_uint4(0, 0, 0, 0);
    }
  }

  int acc[MI][NI][4];
  zero_acc(acc);

  const int k_tiles = (a.ktot + kBK - 1) / kBK;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < k_tiles) load_stage(st, st);
    cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = kt + kStages - 1;
    if (next < k_tiles) load_stage(next % kStages, next);
    cp_async_commit();
    const int slot = kt % kStages;
    mma_block64<MI, NI>(smem_addr(sa + slot * BM * kBK), wm * WM, smem_addr(sb + slot * BN * kBK), wn * WN, lane, acc);
  }
  cp_async_wait<0>();

  // Epilogue: accumulator (row g / g + 8, columns 2t, 2t + 1) of each MMA tile, in FP32.
  const int g = lane >> 2, t = lane & 3;
  if constexpr (STAGED) {
    constexpr int LD = BN + 8;  // floats per staged row (padding: two wavefronts per warp store)
    float* stage = reinterpret_cast<float*>(smem);
    __syncthreads();  // every warp is done reading the pipeline buffers
#pragma unroll
    for (int jn = 0; jn < NI; ++jn) {
      const int col = wn * WN + jn * 8 + 2 * t;
      float2 sc, bi;
      channel_pair(a, n0 + col, sc, bi);
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int row = wm * WM + i * 16 + g + half * 8;
          *reinterpret_cast<float2*>(stage + row * LD + col) =
              make_float2(fmaf(static_cast<float>(acc[i][jn][2 * half]), sc.x, bi.x),
                          fmaf(static_cast<float>(acc[i][jn][2 * half + 1]), sc.y, bi.y));
        }
    }
    __syncthreads();
    drain_staged<BM, BN, kThreads, kPre>(a, stage, m0, n0, tid, zpre, prefetched);
  } else {
#pragma unroll
    for (int jn = 0; jn < NI; ++jn) {
      const int nc = n0 + wn * WN + jn * 8 + 2 * t;
      float2 sc, bi;
      channel_pair(a, nc, sc, bi);
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int half = 0; half < 2; ++half)
          finish_pair(a, m0 + wm * WM + i * 16 + g + half * 8, nc,
                      fmaf(static_cast<float>(acc[i][jn][2 * half]), sc.x, bi.x),
                      fmaf(static_cast<float>(acc[i][jn][2 * half + 1]), sc.y, bi.y));
    }
  }
}

template <int BM, int BN, int WMW, int WNW, bool STAGED>
void launch_tile(const Args& args, cudaStream_t stream) {
  constexpr size_t pipeline = static_cast<size_t>(kStages) * (BM + BN) * kBK;
  constexpr size_t staged = STAGED ? static_cast<size_t>(BM) * (BN + 8) * 4 : 0;
  constexpr size_t smem = pipeline > staged ? pipeline : staged;
  static std::once_flag once;
  std::call_once(once, [] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(conv_int8_kernel<BM, BN, WMW, WNW, STAGED>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  });
  Args a = args;
  a.n_tiles = (a.k + BN - 1) / BN;
  const int64_t blocks = static_cast<int64_t>((a.m + BM - 1) / BM) * a.n_tiles;
  conv_int8_kernel<BM, BN, WMW, WNW, STAGED><<<static_cast<unsigned>(blocks), WMW * WNW * 32, smem, stream>>>(a);
  check_launch("conv_int8");
}

__global__ void scale_channels_kernel(const float* scale, const float* bias, float inv, int64_t k, float* alpha,
                                      float* bias_out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= k) return;
  alpha[i] = scale[i] * inv;
  if (bias) bias_out[i] = bias[i] * inv;
}

}  // namespace

void scale_channels(const float* scale, const float* bias, float inv, int64_t k, float* alpha, float* bias_out,
                    cudaStream_t stream) {
  if (k <= 0) return;
  scale_channels_kernel<<<blocks_for(k), kThreads, 0, stream>>>(scale, bias, inv, k, alpha, bias_out);
  KILN_CUDA_CHECK(cudaGetLastError());
}

std::string conv_int8_unsupported(const Int8ConvParams& p) {
  if (p.n <= 0 || p.c <= 0 || p.h <= 0 || p.w <= 0 || p.k <= 0 || p.r <= 0 || p.s <= 0)
    return "every dimension must be positive";
  if (p.c % 16 != 0) return "input channels must be a multiple of 16 (" + std::to_string(p.c) + ")";
  if (p.k % 8 != 0) return "output channels must be a multiple of 8 (" + std::to_string(p.k) + ")";
  if (p.pad_h < 0 || p.pad_w < 0 || p.stride_h <= 0 || p.stride_w <= 0 || p.dil_h <= 0 || p.dil_w <= 0)
    return "negative padding or a non-positive stride or dilation";
  if (p.out_h() <= 0 || p.out_w() <= 0) return "the filter is larger than the padded input";
  const int64_t m = p.n * p.out_h() * p.out_w();
  if (m >= (int64_t{1} << 31) || p.r * p.s * p.c >= (int64_t{1} << 31) || p.h * p.w * p.c >= (int64_t{1} << 31))
    return "the problem exceeds 32-bit indexing";
  if (!p.y_f16 && !(p.y_scale > 0 && std::isfinite(p.y_scale))) return "the INT8 output's scale must be positive";
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
      major < 8)
    return "INT8 tensor-core convolutions need sm_80 or newer (this GPU is sm_" + std::to_string(major) + "x)";
  return {};
}

void conv_int8(const Int8ConvParams& p, Int8Tile tile, const int8_t* x, const int8_t* w, const float* scale,
               const float* bias, const void* z, void* y, cudaStream_t stream) {
  if (const std::string why = conv_int8_unsupported(p); !why.empty()) throw CudaError("conv_int8: " + why);
  const Args a = make_args(p, x, w, scale, bias, z, y);
  switch (tile) {
    case Int8Tile::k128x128: return launch_tile<128, 128, 2, 4, false>(a, stream);
    case Int8Tile::k128x64: return launch_tile<128, 64, 4, 2, false>(a, stream);
    case Int8Tile::k64x64: return launch_tile<64, 64, 2, 2, false>(a, stream);
    case Int8Tile::k128x128s: return launch_tile<128, 128, 2, 4, true>(a, stream);
    case Int8Tile::k128x64s: return launch_tile<128, 64, 4, 2, true>(a, stream);
    case Int8Tile::k64x64s: return launch_tile<64, 64, 2, 2, true>(a, stream);
    case Int8Tile::kW128x256: return launch_wgmma(a, 256, false, false, stream);
    case Int8Tile::kW128x64s: return launch_wgmma(a, 64, true, false, stream);
    case Int8Tile::kW128x128s: return launch_wgmma(a, 128, true, false, stream);
    case Int8Tile::kW128x256s: return launch_wgmma(a, 256, true, false, stream);
    case Int8Tile::kWs128x128: return launch_wgmma(a, 128, false, true, stream);
    case Int8Tile::kStr64x64: return launch_stream(a, 64, stream);
    case Int8Tile::kStr64x128: return launch_stream(a, 128, stream);
    default: throw CudaError("conv_int8: unknown tile");
  }
}

}  // namespace kiln::cuda
