// Pieces shared by the INT8 convolution's two kernels (conv_int8.h): the mma.sync implicit GEMM
// (conv_int8.cu, sm_80 and newer) and the wgmma one (conv_int8_wgmma.cu, sm_90a): the kernel
// arguments, cp.async, and the FP32 epilogue (scale, bias, residual, activation, INT8 or FP16
// store), per accumulator pair or staged through shared memory 16 channels per thread.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kiln::cuda::int8conv {

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
// c += a * b on the integer tensor cores (m16n8k32, s8 x s8 -> s32; sm_80 and newer).
__device__ __forceinline__ void mma_s8(int* c, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// Byte offset of 16-byte chunk `chunk` (0..3) of tile row `row` in rows of 64 bytes, chunks XORed
// with (row / 2) % 4 so that the 8 rows one ldmatrix phase reads hit 8 different bank groups.
__device__ __forceinline__ int swz64(int row, int chunk) { return row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4); }

// acc += one 64-byte K block of a warp's MI x NI grid of m16n8k32 tiles (two k32 steps): A's rows
// a_row0 + 16 i.. and B's rows b_row0 + 16 i.. of swizzled [rows][64] shared tiles (swz64).
// Zeroes an MI x NI block of m16n8 accumulator fragments (4 INT32 per thread each).
template <int MI, int NI>
__device__ __forceinline__ void zero_acc(int (&acc)[MI][NI][4]) {
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[i][j][v] = 0;
}

template <int MI, int NI>
__device__ __forceinline__ void mma_block64(uint32_t base_a, int a_row0, uint32_t base_b, int b_row0, int lane,
                                            int (&acc)[MI][NI][4]) {
  static_assert(NI % 2 == 0, "B loads two 8-column tiles at a time");
  const int j = lane >> 3, rr = lane & 7;
#pragma unroll
  for (int ks = 0; ks < 2; ++ks) {
    uint32_t af[MI][4], bf[NI][2];
#pragma unroll
    for (int i = 0; i < MI; ++i)
      ldmatrix_x4(base_a + swz64(a_row0 + i * 16 + (j & 1) * 8 + rr, ks * 2 + (j >> 1)), af[i][0], af[i][1], af[i][2],
                  af[i][3]);
#pragma unroll
    for (int i = 0; i < NI / 2; ++i)
      ldmatrix_x4(base_b + swz64(b_row0 + i * 16 + (j >> 1) * 8 + rr, ks * 2 + (j & 1)), bf[2 * i][0], bf[2 * i][1],
                  bf[2 * i + 1][0], bf[2 * i + 1][1]);
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int jn = 0; jn < NI; ++jn) mma_s8(acc[i][jn], af[i], bf[jn]);
  }
}

// The per-row part of an implicit-GEMM A load: output pixel m's image offset and the top-left
// corner of its window (a row past the end is never inside the input: zero-filled).
struct PixelRow {
  int64_t base;
  int ih, iw;
};
__device__ __forceinline__ PixelRow pixel_row(const Args& a, int m) {
  if (m >= a.m) return {0, -(1 << 29), 0};
  const int img = m / (a.oh * a.ow), rem = m - img * (a.oh * a.ow);
  const int oy = rem / a.ow, ox = rem - oy * a.ow;
  return {static_cast<int64_t>(img) * a.h * a.w_ * a.c, oy * a.stride_h - a.pad_h, ox * a.stride_w - a.pad_w};
}
// The filter tap and channel of K offset kk (a 16-byte chunk never straddles taps: c % 16 == 0).
struct KPos {
  bool ok;
  int ci, dy, dx;
};
__device__ __forceinline__ KPos k_pos(const Args& a, int kk) {
  const int rs = kk / a.c, ci = kk - rs * a.c;
  const int fr = rs / a.s, fs = rs - fr * a.s;
  return {kk < a.ktot, ci, fr * a.dil_h, fs * a.dil_w};
}
// Issues the cp.async of A's 16-byte chunk for (row, kpos) to shared address dst.
__device__ __forceinline__ void load_a_chunk(const Args& a, const PixelRow& pr, const KPos& kp, uint32_t dst) {
  const int ih = pr.ih + kp.dy, iw = pr.iw + kp.dx;
  const bool ok = kp.ok && ih >= 0 && ih < a.h && iw >= 0 && iw < a.w_;
  const int8_t* src = ok ? a.x + pr.base + (static_cast<int64_t>(ih) * a.w_ + iw) * a.c + kp.ci : a.x;
  cp_async16(dst, src, ok);
}

// The finishing of one output value: residual, activation (lo/hi are -inf/inf without one).
__device__ __forceinline__ float finish(const Args& a, float v, int64_t off) {
  if (a.z) {
    if (a.z_f16) v += __half2float(static_cast<const __half*>(a.z)[off]);
    else v = fmaf(static_cast<float>(static_cast<const int8_t*>(a.z)[off]), a.z_scale, v);
  }
  return fminf(fmaxf(v, a.lo), a.hi);
}
__device__ __forceinline__ void store1(const Args& a, float v, int64_t off) {
  if (a.y_f16) static_cast<__half*>(a.y)[off] = __float2half_rn(v);
  else static_cast<int8_t*>(a.y)[off] = static_cast<int8_t>(max(-128, min(127, __float2int_rn(v * a.y_inv))));
}

// Output channels nc, nc + 1's scale and bias (zero past the end).
__device__ __forceinline__ void channel_pair(const Args& a, int nc, float2& sc, float2& bi) {
  sc = make_float2(0.f, 0.f), bi = make_float2(0.f, 0.f);
  if (nc < a.k) {
    // Read-only loads: they need not wait for the epilogue's earlier stores (which a plain load
    // would, not knowing that y never aliases the scales), so the unrolled loop issues them early.
    sc = __ldg(reinterpret_cast<const float2*>(a.scale + nc));
    if (a.bias) bi = __ldg(reinterpret_cast<const float2*>(a.bias + nc));
  }
}

// Residual and activation of outputs off and off + 1 (already scaled and biased).
__device__ __forceinline__ void residual_act_pair(const Args& a, int64_t off, float& v0, float& v1) {
  if (a.z) {
    if (a.z_f16) {
      // z is read-only here too (where y is z, each element is read before the same thread writes it).
      const float2 zz = __half22float2(__ldg(reinterpret_cast<const __half2*>(static_cast<const __half*>(a.z) + off)));
      v0 += zz.x, v1 += zz.y;
    } else {
      const char2 zz = __ldg(reinterpret_cast<const char2*>(static_cast<const int8_t*>(a.z) + off));
      v0 = fmaf(static_cast<float>(zz.x), a.z_scale, v0);
      v1 = fmaf(static_cast<float>(zz.y), a.z_scale, v1);
    }
  }
  v0 = fminf(fmaxf(v0, a.lo), a.hi);
  v1 = fminf(fmaxf(v1, a.lo), a.hi);
}
__device__ __forceinline__ char2 quantize_pair(const Args& a, float v0, float v1) {
  const int q0 = max(-128, min(127, __float2int_rn(v0 * a.y_inv)));
  const int q1 = max(-128, min(127, __float2int_rn(v1 * a.y_inv)));
  return make_char2(static_cast<signed char>(q0), static_cast<signed char>(q1));
}

// Finishes and stores outputs (m, nc) and (m, nc + 1), already scaled and biased: residual,
// activation, a 2-element store. k % 8 == 0 keeps both columns in or out together.
__device__ __forceinline__ void finish_pair(const Args& a, int m, int nc, float v0, float v1) {
  if (m >= a.m || nc >= a.k) return;
  const int64_t off = static_cast<int64_t>(m) * a.k + nc;
  residual_act_pair(a, off, v0, v1);
  if (a.y_f16) *reinterpret_cast<__half2*>(static_cast<__half*>(a.y) + off) = __floats2half2_rn(v0, v1);
  else *reinterpret_cast<char2*>(static_cast<int8_t*>(a.y) + off) = quantize_pair(a, v0, v1);
}

// The staged epilogue's second half: `stage` holds the BM x BN tile (scaled and biased, rows of
// BN + 8 floats); each of kThreads threads finishes 16 consecutive channels at a time with 16-byte
// residual loads and stores. zpre/prefetched: an INT8 residual already loaded for this thread's
// chunks (kPre of them), or none.
template <int BM, int BN, int kThreads, int kPre>
__device__ __forceinline__ void drain_staged(const Args& a, const float* stage, int m0, int n0, int tid,
                                             const uint4* zpre, bool prefetched) {
  constexpr int LD = BN + 8;
  constexpr int kChunks = BM * BN / 16;
  static_assert(kChunks % kThreads == 0, "whole chunks per thread");
  const bool vec = a.k % 16 == 0;
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
}

// The wgmma kernels' entry (conv_int8_wgmma.cu): launches tile `bn` (64, 128 or 256 output
// channels; 128 pixels), staged or not, warp-specialized or not. Throws CudaError where the GPU or
// the build has no sm_90a.
void launch_wgmma(const Args& a, int bn, bool staged, bool specialized, cudaStream_t stream);
bool wgmma_available();

// The streaming tiles' entry (conv_int8_stream.cu): tiles of 64 pixels by `bn` (64 or 128)
// channels; stream_takes says whether the layer is one they run (1x1 plain GEMM, K of 64, 128 or
// 256, k % 16 == 0, INT8 output and INT8 residual or none).
bool stream_takes(const Args& a);
void launch_stream(const Args& a, int bn, cudaStream_t stream);

}  // namespace kiln::cuda::int8conv
