// INT8 implicit-GEMM convolution (conv_int8.h).
#include <cuda_fp16.h>

#include <cmath>
#include <mutex>
#include <sstream>

#include "backends/cuda/conv_int8.h"
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
    default: return "?";
  }
}
bool parse_int8_tile(const std::string& s, Int8Tile* t) {
  for (int i = 0; i < static_cast<int>(Int8Tile::kCount); ++i)
    if (s == int8_tile_name(static_cast<Int8Tile>(i))) return *t = static_cast<Int8Tile>(i), true;
  return false;
}

namespace {

constexpr int kBK = 64;      // bytes (= INT8 values) of K per pipeline stage: four 16-byte chunks a row
constexpr int kStages = 4;

struct Args {
  const int8_t* x;
  const int8_t* w;
  const float* scale;
  const float* bias;
  const void* z;
  void* y;
  int n, h, w_, c, k, r, s, oh, ow;
  int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w;
  int m;      // n * oh * ow
  int ktot;   // r * s * c
  int n_tiles;
  bool z_f16, y_f16;
  float z_scale, y_inv, lo, hi;
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;  // 0: the 16 bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}
__device__ __forceinline__ void mma_s8(int* c, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Byte offset of 16-byte chunk `chunk` (0..3) of tile row `row`: rows of 64 bytes, chunks XORed
// with (row / 2) % 4 so that the 8 rows one ldmatrix phase reads hit 8 different bank groups.
__device__ __forceinline__ int swz(int row, int chunk) { return row * kBK + ((chunk ^ ((row >> 1) & 3)) << 4); }

// The finishing of one output value: residual, activation, store (INT8 or FP16).
__device__ __forceinline__ float finish(const Args& a, float v, int64_t off) {
  if (a.z) {
    if (a.z_f16) v += __half2float(static_cast<const __half*>(a.z)[off]);
    else v = fmaf(static_cast<float>(static_cast<const int8_t*>(a.z)[off]), a.z_scale, v);
  }
  return fminf(fmaxf(v, a.lo), a.hi);  // lo/hi are -inf/inf without an activation
}
__device__ __forceinline__ void store1(const Args& a, float v, int64_t off) {
  if (a.y_f16) static_cast<__half*>(a.y)[off] = __float2half_rn(v);
  else static_cast<int8_t*>(a.y)[off] = static_cast<int8_t>(max(-128, min(127, __float2int_rn(v * a.y_inv))));
}

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
  int64_t a_base[A_CHUNKS];
  int a_ih[A_CHUNKS], a_iw[A_CHUNKS];
#pragma unroll
  for (int i = 0; i < A_CHUNKS; ++i) {
    const int row = (tid >> 2) + i * (kThreads / 4);
    const int m = m0 + row;
    if (m < a.m) {
      const int img = m / (a.oh * a.ow), rem = m - img * (a.oh * a.ow);
      const int oy = rem / a.ow, ox = rem - oy * a.ow;
      a_base[i] = static_cast<int64_t>(img) * a.h * a.w_ * a.c;
      a_ih[i] = oy * a.stride_h - a.pad_h;
      a_iw[i] = ox * a.stride_w - a.pad_w;
    } else {
      a_base[i] = 0;
      a_ih[i] = -(1 << 29);  // never inside the input: zero-filled
      a_iw[i] = 0;
    }
  }
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
    const bool k_ok = kk < a.ktot;
    const int rs = kk / a.c, ci = kk - rs * a.c;
    const int fr = rs / a.s, fs = rs - fr * a.s;
    const int dy = fr * a.dil_h, dx = fs * a.dil_w;
    const uint32_t base_a = smem_addr(sa + slot * BM * kBK), base_b = smem_addr(sb + slot * BN * kBK);
#pragma unroll
    for (int i = 0; i < A_CHUNKS; ++i) {
      const int row = (tid >> 2) + i * (kThreads / 4);
      const int ih = a_ih[i] + dy, iw = a_iw[i] + dx;
      const bool ok = k_ok && ih >= 0 && ih < a.h && iw >= 0 && iw < a.w_;
      const int8_t* src = ok ? a.x + a_base[i] + (static_cast<int64_t>(ih) * a.w_ + iw) * a.c + ci : a.x;
      cp_async16(base_a + swz(row, col), src, ok);
    }
#pragma unroll
    for (int i = 0; i < B_CHUNKS; ++i) {
      const int row = (tid >> 2) + i * (kThreads / 4);
      const bool ok = k_ok && b_ok[i];
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
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[i][j][v] = 0;

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
    const uint32_t base_a = smem_addr(sa + slot * BM * kBK), base_b = smem_addr(sb + slot * BN * kBK);
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // two k32 steps per 64-byte stage
      uint32_t af[MI][4], bf[NI][2];
      const int j = lane >> 3, rr = lane & 7;
#pragma unroll
      for (int i = 0; i < MI; ++i) {
        const int row = wm * WM + i * 16 + (j & 1) * 8 + rr;
        ldmatrix_x4(base_a + swz(row, ks * 2 + (j >> 1)), af[i][0], af[i][1], af[i][2], af[i][3]);
      }
#pragma unroll
      for (int i = 0; i < NI / 2; ++i) {
        const int row = wn * WN + i * 16 + (j >> 1) * 8 + rr;
        ldmatrix_x4(base_b + swz(row, ks * 2 + (j & 1)), bf[2 * i][0], bf[2 * i][1], bf[2 * i + 1][0], bf[2 * i + 1][1]);
      }
#pragma unroll
      for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int jn = 0; jn < NI; ++jn) mma_s8(acc[i][jn], af[i], bf[jn]);
    }
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
      const int col = wn * WN + jn * 8 + 2 * t, nc = n0 + col;
      float2 sc = make_float2(0.f, 0.f), bi = make_float2(0.f, 0.f);
      if (nc < a.k) {
        sc = *reinterpret_cast<const float2*>(a.scale + nc);
        if (a.bias) bi = *reinterpret_cast<const float2*>(a.bias + nc);
      }
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
    const bool vec = a.k % 16 == 0;
    static_assert(kChunks % kThreads == 0, "whole chunks per thread");
#pragma unroll
    for (int j = 0; j < kChunks / kThreads; ++j) {
      const int ch = tid + j * kThreads;
      const int row = ch / (BN / 16), col = (ch % (BN / 16)) * 16;
      const int m = m0 + row, nc = n0 + col;
      if (m >= a.m || nc >= a.k) continue;
      const int64_t off = static_cast<int64_t>(m) * a.k + nc;
      const float* src = stage + row * LD + col;
      if (!vec) {  // channels not a multiple of 16: element by element (k % 8 == 0 keeps 8 at least)
        for (int e = 0; e < 16 && nc + e < a.k; ++e) store1(a, finish(a, src[e], off + e), off + e);
        continue;
      }
      float v[16];
#pragma unroll
      for (int e = 0; e < 16; e += 4) *reinterpret_cast<float4*>(v + e) = *reinterpret_cast<const float4*>(src + e);
      if (a.z) {
        if (a.z_f16) {
          const uint4* zp = reinterpret_cast<const uint4*>(static_cast<const __half*>(a.z) + off);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint4 raw = zp[h];
            const __half2* z2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float2 f = __half22float2(z2[e]);
              v[h * 8 + 2 * e] += f.x, v[h * 8 + 2 * e + 1] += f.y;
            }
          }
        } else {
          uint4 raw;
          if constexpr (kPre > 0) raw = prefetched ? zpre[j] : *reinterpret_cast<const uint4*>(static_cast<const int8_t*>(a.z) + off);
          else raw = *reinterpret_cast<const uint4*>(static_cast<const int8_t*>(a.z) + off);
          const int8_t* z8 = reinterpret_cast<const int8_t*>(&raw);
#pragma unroll
          for (int e = 0; e < 16; ++e) v[e] = fmaf(static_cast<float>(z8[e]), a.z_scale, v[e]);
        }
      }
#pragma unroll
      for (int e = 0; e < 16; ++e) v[e] = fminf(fmaxf(v[e], a.lo), a.hi);
      if (a.y_f16) {
        uint4 out[2];
        __half2* o2 = reinterpret_cast<__half2*>(out);
#pragma unroll
        for (int e = 0; e < 8; ++e) o2[e] = __floats2half2_rn(v[2 * e], v[2 * e + 1]);
        uint4* dst = reinterpret_cast<uint4*>(static_cast<__half*>(a.y) + off);
        dst[0] = out[0], dst[1] = out[1];
      } else {
        uint4 out;
        int8_t* o8 = reinterpret_cast<int8_t*>(&out);
#pragma unroll
        for (int e = 0; e < 16; ++e) o8[e] = static_cast<int8_t>(max(-128, min(127, __float2int_rn(v[e] * a.y_inv))));
        *reinterpret_cast<uint4*>(static_cast<int8_t*>(a.y) + off) = out;
      }
    }
  } else {
#pragma unroll
  for (int jn = 0; jn < NI; ++jn) {
    const int nc = n0 + wn * WN + jn * 8 + 2 * t;
    if (nc >= a.k) continue;  // k % 8 == 0: both columns are in or out together
    const float2 sc = *reinterpret_cast<const float2*>(a.scale + nc);
    const float2 bi = a.bias ? *reinterpret_cast<const float2*>(a.bias + nc) : make_float2(0.f, 0.f);
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int m = m0 + wm * WM + i * 16 + g + half * 8;
        if (m >= a.m) continue;
        const int64_t off = static_cast<int64_t>(m) * a.k + nc;
        float v0 = fmaf(static_cast<float>(acc[i][jn][2 * half]), sc.x, bi.x);
        float v1 = fmaf(static_cast<float>(acc[i][jn][2 * half + 1]), sc.y, bi.y);
        if (a.z) {
          if (a.z_f16) {
            const float2 zz = __half22float2(*reinterpret_cast<const __half2*>(static_cast<const __half*>(a.z) + off));
            v0 += zz.x, v1 += zz.y;
          } else {
            const char2 zz = *reinterpret_cast<const char2*>(static_cast<const int8_t*>(a.z) + off);
            v0 = fmaf(static_cast<float>(zz.x), a.z_scale, v0);
            v1 = fmaf(static_cast<float>(zz.y), a.z_scale, v1);
          }
        }
        v0 = fminf(fmaxf(v0, a.lo), a.hi);  // lo/hi are -inf/inf without an activation
        v1 = fminf(fmaxf(v1, a.lo), a.hi);
        if (a.y_f16) {
          *reinterpret_cast<__half2*>(static_cast<__half*>(a.y) + off) = __floats2half2_rn(v0, v1);
        } else {
          const int q0 = max(-128, min(127, __float2int_rn(v0 * a.y_inv)));
          const int q1 = max(-128, min(127, __float2int_rn(v1 * a.y_inv)));
          *reinterpret_cast<char2*>(static_cast<int8_t*>(a.y) + off) =
              make_char2(static_cast<signed char>(q0), static_cast<signed char>(q1));
        }
      }
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
  Args a{};
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
  switch (tile) {
    case Int8Tile::k128x128: return launch_tile<128, 128, 2, 4, false>(a, stream);
    case Int8Tile::k128x64: return launch_tile<128, 64, 4, 2, false>(a, stream);
    case Int8Tile::k64x64: return launch_tile<64, 64, 2, 2, false>(a, stream);
    case Int8Tile::k128x128s: return launch_tile<128, 128, 2, 4, true>(a, stream);
    case Int8Tile::k128x64s: return launch_tile<128, 64, 4, 2, true>(a, stream);
    case Int8Tile::k64x64s: return launch_tile<64, 64, 2, 2, true>(a, stream);
    default: throw CudaError("conv_int8: unknown tile");
  }
}

}  // namespace kiln::cuda
