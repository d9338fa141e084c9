// A CNN's stem in one kernel (device_api.h: StemPoolDesc): the 7x7 stride-2 convolution of a 3-
// (at most 4-) channel image to 64 channels, its bias and activation, and the 3x3 stride-2 max
// pooling after it. The separate steps move the 64-channel full-resolution map through memory
// twice (ResNet-50 at batch 256: 411 MB written in FP16 by the convolution, read back by the
// pooling) and read the image through a converting copy; here it stays in shared memory.
//
// Each CTA is persistent: it keeps the packed FP16 filter resident and walks tiles of 7 x 14
// pooled outputs of one image. A tile needs 15 x 29 convolution outputs (the pooling window's
// halo) and so a 35 x 64 patch of each input channel, converted to FP16 into shared memory. Seven
// warps each take two 32-pixel jobs of the 435 (448 with the last partial) and run the 7x7 filter
// as an implicit GEMM on mma.sync m16n8k16: k = channel * 56 + row * 8 + column (column 7 zero), so
// each A register is one 32-bit load of two neighbouring columns from the patch, and B comes from
// the resident filter by ldmatrix. The activated outputs go to shared memory (INT8 outputs are
// quantized first: max and rounding commute), then the pooled tile is stored 16 bytes at a time.
#include <cuda_fp16.h>

#include <algorithm>
#include <mutex>

#include "backends/cuda/cuda_util.h"
#include "backends/cuda/stem.h"

namespace kiln::cuda {
namespace {

constexpr int kPH = 7, kPW = 14;                   // pooled outputs per tile
constexpr int kCR = 2 * kPH + 1, kCC = 2 * kPW + 1;  // convolution outputs per tile (15 x 29)
constexpr int kPix = kCR * kCC;                    // 435
constexpr int kJobs = (kPix + 31) / 32;            // 14 jobs of 32 pixels
constexpr int kWarps = 7, kThreads = kWarps * 32;
constexpr int kIR = 2 * kCR + 5, kICP = 64;  // patch rows; columns (2 * 28 + 7 + 1)
constexpr int kF16Pitch = 64 + 8, kI8Pitch = 80;  // staged output rows: halves, bytes (conflict-free)

template <int C>
struct Shape {
  static constexpr int kSteps = (C * 56 + 15) / 16, kPitch = kSteps * 16 + 8;  // stem_filter_pitch
  static constexpr int kPatch = C * kIR * kICP;                                // halves
  static size_t smem(bool y8) {
    return (static_cast<size_t>(kPatch) + 64 * kPitch) * 2 + static_cast<size_t>(kPix) * (y8 ? kI8Pitch : kF16Pitch * 2);
  }
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void mma_f16(float* c, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ float load_x(const void* x, bool f16, int64_t i) {
  return f16 ? __half2float(static_cast<const __half*>(x)[i]) : static_cast<const float*>(x)[i];
}

template <int C>
__global__ void __launch_bounds__(kThreads, 2)
    stem_pool_kernel(const gpu::StemPoolDesc d, const void* __restrict__ x, const __half* __restrict__ w,
                     const __half* __restrict__ bias, void* __restrict__ y, int tiles_y, int tiles_x, int OH, int OW,
                     int PH, int PW) {
  using S = Shape<C>;
  extern __shared__ __align__(16) unsigned char smem[];
  __half* patch = reinterpret_cast<__half*>(smem);
  __half* wsm = patch + S::kPatch;
  unsigned char* staged = reinterpret_cast<unsigned char*>(wsm + 64 * S::kPitch);
  const bool x16 = d.x_type == gpu::ElemType::kF16, y8 = d.y_type == gpu::ElemType::kI8;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const int H = static_cast<int>(d.h), W = static_cast<int>(d.w);
  const float y_inv = 1.f / d.y_scale;

  for (int i = tid; i < 64 * S::kPitch / 8; i += kThreads)  // the filter, 16 bytes at a time
    reinterpret_cast<uint4*>(wsm)[i] = reinterpret_cast<const uint4*>(w)[i];
  float2 bi[8];  // this thread's output channels: 8 j + 2 t and + 1
#pragma unroll
  for (int j = 0; j < 8; ++j) bi[j] = __half22float2(reinterpret_cast<const __half2*>(bias)[4 * j + t]);

  const int64_t tiles = static_cast<int64_t>(d.n) * tiles_y * tiles_x;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int img = static_cast<int>(tile / (tiles_y * tiles_x)), rest = static_cast<int>(tile % (tiles_y * tiles_x));
    const int py0 = rest / tiles_x * kPH, px0 = rest % tiles_x * kPW;
    const int cr0 = 2 * py0 - 1, cc0 = 2 * px0 - 1;  // the tile's first convolution output row / column
    const int ir0 = 2 * cr0 - 3, ic0 = 2 * cc0 - 3;  // the patch's first input row / column

    // The patch: C planes of kIR x kICP FP16 values, zero outside the image, two columns a thread
    // per item. The thread's 5 C items go in batches of 5, every load of a batch issued before the
    // first is stored, so their latencies overlap (more at once would spill registers).
    constexpr int kItems = C * kIR * (kICP / 2) / kThreads, kBatch = 5;
    static_assert(kItems * kThreads == C * kIR * (kICP / 2) && kItems % kBatch == 0, "whole batches per thread");
#pragma unroll 1
    for (int u0 = 0; u0 < kItems; u0 += kBatch) {
      float2 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int row = warp + (u0 + u) * kWarps;  // item tid + u * kThreads: patch row `row`, column pair `lane`
        const int c = row / kIR, r = row - c * kIR;
        const int gy = ir0 + r, gx = ic0 + 2 * lane;
        v[u] = make_float2(0.f, 0.f);
        if (gy >= 0 && gy < H) {
          const int64_t at = ((static_cast<int64_t>(img) * C + c) * H + gy) * W;  // the input row's start
          if (gx >= 0 && gx < W) v[u].x = load_x(x, x16, at + gx);
          if (gx + 1 >= 0 && gx + 1 < W) v[u].y = load_x(x, x16, at + gx + 1);
        }
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u)
        reinterpret_cast<__half2*>(patch)[tid + (u0 + u) * kThreads] = __float22half2_rn(v[u]);
    }
    __syncthreads();

    for (int job = warp; job < kJobs; job += kWarps) {
      int base[4];  // patch offsets of this thread's pixels: rows g, g + 8 of both 16-pixel tiles
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int p = min(job * 32 + q * 8 + g, kPix - 1);
        base[q] = (p / kCC) * 2 * kICP + (p % kCC) * 2 + 2 * t;  // + this thread's column pair
      }
      float acc[2][8][4] = {};
#pragma unroll
      for (int s = 0; s < S::kSteps; ++s) {
        // k = 16 s + 2 t (+ 8): filter rows q = 2 s and 2 s + 1 (q = channel * 7 + row), column 2 t,
        // so the offsets are constants once the loop is unrolled.
        const int o0 = (2 * s) / 7 * kIR * kICP + (2 * s) % 7 * kICP, o1 = (2 * s + 1) / 7 * kIR * kICP + (2 * s + 1) % 7 * kICP;
        const bool pad1 = 2 * s + 1 >= 7 * C;  // past the last channel: zero (the filter is zero there too)
        uint32_t a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          a[mi][0] = *reinterpret_cast<const uint32_t*>(patch + base[2 * mi] + o0);
          a[mi][1] = *reinterpret_cast<const uint32_t*>(patch + base[2 * mi + 1] + o0);
          a[mi][2] = pad1 ? 0u : *reinterpret_cast<const uint32_t*>(patch + base[2 * mi] + o1);
          a[mi][3] = pad1 ? 0u : *reinterpret_cast<const uint32_t*>(patch + base[2 * mi + 1] + o1);
        }
#pragma unroll
        for (int jp = 0; jp < 4; ++jp) {
          const int mat = lane >> 3, n = jp * 16 + (mat >> 1) * 8 + (lane & 7);
          uint32_t b[4];
          ldsm_x4(smem_u32(wsm + n * S::kPitch + s * 16 + (mat & 1) * 8), b);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            mma_f16(acc[mi][2 * jp], a[mi], b[0], b[1]);
            mma_f16(acc[mi][2 * jp + 1], a[mi], b[2], b[3]);
          }
        }
      }
      // Bias, activation, (quantization,) staged per pixel.
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int p = job * 32 + mi * 16 + half * 8 + g;
          if (p >= kPix) continue;
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const float v0 = fminf(fmaxf(acc[mi][j][2 * half] + bi[j].x, d.lo), d.hi);
            const float v1 = fminf(fmaxf(acc[mi][j][2 * half + 1] + bi[j].y, d.lo), d.hi);
            const int col = j * 8 + 2 * t;
            if (y8) {
              const int q0 = max(-128, min(127, __float2int_rn(v0 * y_inv)));
              const int q1 = max(-128, min(127, __float2int_rn(v1 * y_inv)));
              *reinterpret_cast<char2*>(staged + p * kI8Pitch + col) =
                  make_char2(static_cast<signed char>(q0), static_cast<signed char>(q1));
            } else {
              *reinterpret_cast<__half2*>(staged + (p * kF16Pitch + col) * 2) = __floats2half2_rn(v0, v1);
            }
          }
        }
    }
    __syncthreads();

    // The pooling: 16 bytes of channels a thread (16 INT8 or 8 FP16), windows clipped to the map.
    const int vec = y8 ? 16 : 8, chunks = 64 / vec;
    for (int i = tid; i < kPH * kPW * chunks; i += kThreads) {
      const int ly = i / (kPW * chunks), lx = i / chunks % kPW, ch = i % chunks;
      const int py = py0 + ly, px = px0 + lx;
      if (py >= PH || px >= PW) continue;
      uint4 m = make_uint4(0, 0, 0, 0);
      bool first = true;
      for (int dy = 0; dy < 3; ++dy) {
        const int cy = 2 * py - 1 + dy;
        if (cy < 0 || cy >= OH) continue;
        for (int dx = 0; dx < 3; ++dx) {
          const int cx = 2 * px - 1 + dx;
          if (cx < 0 || cx >= OW) continue;
          const int p = (2 * ly + dy) * kCC + 2 * lx + dx;
          const uint4 v = y8 ? *reinterpret_cast<const uint4*>(staged + p * kI8Pitch + ch * 16)
                             : *reinterpret_cast<const uint4*>(staged + (p * kF16Pitch + ch * 8) * 2);
          if (first) {
            m = v, first = false;
          } else if (y8) {
            m.x = __vmaxs4(m.x, v.x), m.y = __vmaxs4(m.y, v.y), m.z = __vmaxs4(m.z, v.z), m.w = __vmaxs4(m.w, v.w);
          } else {
            uint32_t* mm = &m.x;
            const uint32_t* vv = &v.x;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const __half2 r = __hmax2(*reinterpret_cast<const __half2*>(mm + e), *reinterpret_cast<const __half2*>(vv + e));
              mm[e] = *reinterpret_cast<const uint32_t*>(&r);
            }
          }
        }
      }
      const int64_t o = ((static_cast<int64_t>(img) * PH + py) * PW + px) * 64 + ch * vec;
      if (y8) *reinterpret_cast<uint4*>(static_cast<int8_t*>(y) + o) = m;
      else *reinterpret_cast<uint4*>(static_cast<__half*>(y) + o) = m;
    }
    // The next tile's patch load touches only the patch; its first barrier orders the staging.
  }
}

template <int C>
void launch(const gpu::StemPoolDesc& d, const void* x, const void* w, const void* bias, void* y, cudaStream_t stream) {
  const bool y8 = d.y_type == gpu::ElemType::kI8;
  const size_t smem = Shape<C>::smem(y8);
  static std::once_flag once;
  std::call_once(once, [] {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(stem_pool_kernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(Shape<C>::smem(false))));
  });
  int dev = 0, sms = 0, per_sm = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  KILN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, stem_pool_kernel<C>, kThreads, smem));
  if (per_sm < 1) throw CudaError("stem_pool: the kernel's shared memory does not fit this GPU");
  const int tiles_y = static_cast<int>((d.out_h() + kPH - 1) / kPH), tiles_x = static_cast<int>((d.out_w() + kPW - 1) / kPW);
  const int64_t tiles = d.n * tiles_y * tiles_x;
  const int grid = static_cast<int>(std::min<int64_t>(tiles, static_cast<int64_t>(sms) * per_sm));
  stem_pool_kernel<C><<<static_cast<unsigned>(grid), kThreads, smem, stream>>>(
      d, x, static_cast<const __half*>(w), static_cast<const __half*>(bias), y, tiles_y, tiles_x, static_cast<int>(d.conv_h()),
      static_cast<int>(d.conv_w()), static_cast<int>(d.out_h()), static_cast<int>(d.out_w()));
  KILN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

std::string stem_pool_unsupported(const gpu::StemPoolDesc& d) {
  if (d.c < 1 || d.c > 4) return "the fused stem takes 1 to 4 input channels, not " + std::to_string(d.c);
  if (d.n < 1 || d.h < 1 || d.w < 1 || d.n > (1 << 24) || d.h > (1 << 16) || d.w > (1 << 16))
    return "the fused stem's input dims are out of range";
  if (d.x_type != gpu::ElemType::kF32 && d.x_type != gpu::ElemType::kF16) return "the fused stem reads FP32 or FP16";
  if (d.y_type != gpu::ElemType::kF16 && d.y_type != gpu::ElemType::kI8) return "the fused stem writes FP16 or INT8";
  if (d.y_type == gpu::ElemType::kI8 && !(d.y_scale > 0 && std::isfinite(d.y_scale)))
    return "the fused stem's INT8 output needs a positive scale";
  if (!(d.lo <= d.hi)) return "the fused stem's clamp needs lo <= hi";
  return {};
}

void stem_pool(const gpu::StemPoolDesc& d, const void* x, const void* w, const void* bias, void* y, cudaStream_t stream) {
  if (const std::string why = stem_pool_unsupported(d); !why.empty()) throw CudaError("stem_pool: " + why);
  switch (d.c) {
    case 1: return launch<1>(d, x, w, bias, y, stream);
    case 2: return launch<2>(d, x, w, bias, y, stream);
    case 3: return launch<3>(d, x, w, bias, y, stream);
    default: return launch<4>(d, x, w, bias, y, stream);
  }
}

}  // namespace kiln::cuda
