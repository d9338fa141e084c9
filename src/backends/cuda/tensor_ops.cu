// Reductions, TopK, Pad, separable resampling (Resize) and GatherElements (see ops.h): the ops of
// detection heads, DenseNet's unfused BatchNorm neighbourhood and global means that are not pools.
// Float kernels are templated on the element type (float, __half, __nv_bfloat16) and compute in FP32.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "backends/cuda/convert.cuh"
#include "backends/cuda/cuda_util.h"
#include "backends/cuda/ops.h"

namespace kiln::cuda {

namespace {

// Calls f(T{}) for the float element type t.
template <typename F>
void with_float_type(ElemType t, const char* what, F&& f) {
  if (t == ElemType::kF32) f(float{});
  else if (t == ElemType::kF16) f(__half{});
  else if (t == ElemType::kBF16) f(__nv_bfloat16{});
  else throw CudaError(std::string(what) + ": unsupported type " + elem_type_name(t));
}

// ---- reductions over the middle axis of [outer, r, inner]

__device__ __forceinline__ void reduce_step(ReduceOp op, float v, int64_t j, bool last, float& acc, int64_t& at) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kMean: acc += v; break;
    case ReduceOp::kProd: acc *= v; break;
    case ReduceOp::kMax: acc = (v > acc || isnan(v)) && !isnan(acc) ? v : acc; break;
    case ReduceOp::kMin: acc = (v < acc || isnan(v)) && !isnan(acc) ? v : acc; break;
    case ReduceOp::kArgMax:
      if (v > acc || (last && v == acc) || at < 0) acc = v, at = j;
      break;
    case ReduceOp::kArgMin:
      if (v < acc || (last && v == acc) || at < 0) acc = v, at = j;
      break;
  }
}

__device__ __forceinline__ float reduce_init(ReduceOp op) {
  return op == ReduceOp::kProd ? 1.f : op == ReduceOp::kMax ? -INFINITY : op == ReduceOp::kMin ? INFINITY : 0.f;
}

template <typename T>
__global__ void reduce_kernel(const T* __restrict__ x, void* __restrict__ y, ReduceOp op, int64_t outer, int64_t r,
                              int64_t inner, bool last) {
  const int64_t total = outer * inner;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = e / inner, i = e % inner;
    const T* row = x + o * r * inner + i;
    float acc = reduce_init(op);
    int64_t at = -1;
    for (int64_t j = 0; j < r; ++j) reduce_step(op, to_f(row[j * inner]), j, last, acc, at);
    if (op == ReduceOp::kArgMax || op == ReduceOp::kArgMin) {
      static_cast<int64_t*>(y)[e] = at < 0 ? 0 : at;
    } else {
      if (op == ReduceOp::kMean) acc /= static_cast<float>(r);
      static_cast<T*>(y)[e] = from_f<T>(acc);
    }
  }
}

// ---- TopK: one block per row; k rounds, each selecting the best element after the last selected
// one in the order (key descending, index ascending). No scratch memory.

__device__ __forceinline__ float topk_key(float v, bool largest) {
  if (isnan(v)) return largest ? INFINITY : -INFINITY;  // NaN sorts as the largest value
  return largest ? v : -v;
}

// True when (ka, ia) comes before (kb, ib).
__device__ __forceinline__ bool topk_before(float ka, int64_t ia, float kb, int64_t ib) {
  return ka > kb || (ka == kb && ia < ib);
}

template <typename T>
__global__ void topk_kernel(const T* __restrict__ x, T* __restrict__ values, int64_t* __restrict__ indices, int64_t n,
                            int64_t inner, int64_t k, bool largest) {
  __shared__ float s_key[32];
  __shared__ int64_t s_idx[32];
  const int64_t row = blockIdx.x;
  const int64_t o = row / inner, i = row % inner;
  const T* src = x + o * n * inner + i;
  float last_key = INFINITY;
  int64_t last_idx = -1;
  for (int64_t round = 0; round < k; ++round) {
    float best_key = -INFINITY;
    int64_t best_idx = -1;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const float key = topk_key(to_f(src[j * inner]), largest);
      const bool after = last_idx < 0 || topk_before(last_key, last_idx, key, j);
      if (after && (best_idx < 0 || topk_before(key, j, best_key, best_idx))) best_key = key, best_idx = j;
    }
    // Block-wide best: warps, then the first warp.
    for (int off = 16; off > 0; off >>= 1) {
      const float ok = __shfl_down_sync(0xffffffffu, best_key, off);
      const int64_t oi = __shfl_down_sync(0xffffffffu, best_idx, off);
      if (oi >= 0 && (best_idx < 0 || topk_before(ok, oi, best_key, best_idx))) best_key = ok, best_idx = oi;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) s_key[warp] = best_key, s_idx[warp] = best_idx;
    __syncthreads();
    if (warp == 0) {
      const int warps = (blockDim.x + 31) / 32;
      best_key = lane < warps ? s_key[lane] : -INFINITY;
      best_idx = lane < warps ? s_idx[lane] : -1;
      for (int off = 16; off > 0; off >>= 1) {
        const float ok = __shfl_down_sync(0xffffffffu, best_key, off);
        const int64_t oi = __shfl_down_sync(0xffffffffu, best_idx, off);
        if (oi >= 0 && (best_idx < 0 || topk_before(ok, oi, best_key, best_idx))) best_key = ok, best_idx = oi;
      }
      if (lane == 0) {
        s_key[0] = best_key, s_idx[0] = best_idx;
        const int64_t at = (o * k + round) * inner + i;
        values[at] = best_idx >= 0 ? src[best_idx * inner] : from_f<T>(0.f);
        indices[at] = best_idx;
      }
    }
    __syncthreads();
    last_key = s_key[0], last_idx = s_idx[0];
    __syncthreads();
  }
}

// ---- Pad

__device__ __forceinline__ int64_t pad_source(int64_t c, int64_t size, PadDesc::Mode mode) {
  if (c >= 0 && c < size) return c;
  switch (mode) {
    case PadDesc::Mode::kEdge: return c < 0 ? 0 : size - 1;
    case PadDesc::Mode::kWrap: return ((c % size) + size) % size;
    case PadDesc::Mode::kReflect: {
      if (size == 1) return 0;
      const int64_t period = 2 * (size - 1);
      int64_t m = ((c % period) + period) % period;
      return m < size ? m : period - m;
    }
    default: return -1;
  }
}

template <typename T>
__global__ void pad_kernel(const T* __restrict__ x, T* __restrict__ y, PadDesc d, int64_t total) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t rest = e, src = 0, stride = 1;
    bool inside = true;
    for (int a = d.rank - 1; a >= 0; --a) {
      const int64_t c = rest % d.out_dims[a];
      rest /= d.out_dims[a];
      const int64_t s = pad_source(c - d.begin[a], d.in_dims[a], d.mode);
      if (s < 0) inside = false;
      src += s * stride;
      stride *= d.in_dims[a];
    }
    y[e] = inside ? x[src] : from_f<T>(d.value);
  }
}

// ---- separable resampling through a host-made tap table

struct Tap {
  int32_t i0, i1;
  float w;
};

template <typename T>
__global__ void resample_kernel(const T* __restrict__ x, const Tap* __restrict__ taps, T* __restrict__ y,
                                ResampleDesc d, int64_t total) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Tap t[kMaxRank];
    int64_t in_stride[kMaxRank];
    int64_t rest = e, stride = 1, offset = 0;
    for (int a = d.rank - 1; a >= 0; --a) {
      in_stride[a] = stride;
      stride *= d.in_dims[a];
    }
    // The table holds axis 0's entries first.
    int64_t axis_base[kMaxRank];
    for (int a = 0; a < d.rank; ++a) axis_base[a] = offset, offset += d.out_dims[a];
    for (int a = d.rank - 1; a >= 0; --a) {
      const int64_t c = rest % d.out_dims[a];
      rest /= d.out_dims[a];
      t[a] = taps[axis_base[a] + c];
    }
    float acc = 0.f;
    for (int corner = 0; corner < (1 << d.rank); ++corner) {
      float w = 1.f;
      int64_t src = 0;
      bool skip = false;
      for (int a = 0; a < d.rank && !skip; ++a) {
        const bool hi = (corner >> a) & 1;
        if (hi && t[a].w == 0.f) skip = true;
        w *= hi ? t[a].w : 1.f - t[a].w;
        src += (hi ? t[a].i1 : t[a].i0) * in_stride[a];
      }
      if (!skip && w != 0.f) acc += w * to_f(x[src]);
    }
    y[e] = from_f<T>(acc);
  }
}

// ---- GatherElements (any element size)

template <typename U>
__global__ void gather_elements_kernel(const U* __restrict__ data, const void* __restrict__ idx, bool idx64,
                                       U* __restrict__ y, GatherElementsDesc d, int64_t total) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t j = idx64 ? static_cast<const int64_t*>(idx)[e] : static_cast<const int32_t*>(idx)[e];
    const int64_t axis_dim = d.data_dims[d.axis];
    if (j < 0) j += axis_dim;
    if (j < 0 || j >= axis_dim) {
      y[e] = U{};
      continue;
    }
    int64_t rest = e, src = 0, stride = 1;
    for (int a = d.rank - 1; a >= 0; --a) {
      const int64_t c = rest % d.out_dims[a];
      rest /= d.out_dims[a];
      src += (a == d.axis ? j : c) * stride;
      stride *= d.data_dims[a];
    }
    y[e] = data[src];
  }
}

// count_of() for the ops here, which need at least one axis.
int64_t count(int rank, const int64_t* dims, const char* what) {
  if (rank < 1) throw CudaError(std::string(what) + ": rank must be 1.." + std::to_string(kMaxRank));
  return count_of(rank, dims, what);
}

}  // namespace

void reduce(ElemType t, ReduceOp op, const void* x, void* y, int64_t outer, int64_t r, int64_t inner, bool select_last,
            cudaStream_t stream) {
  if (outer < 0 || r <= 0 || inner < 0) throw CudaError("reduce: bad shape (an empty axis has no reduction)");
  if (outer * inner == 0) return;
  with_float_type(t, "reduce", [&](auto tag) {
    using T = decltype(tag);
    reduce_kernel<T><<<blocks_for(outer * inner), kThreads, 0, stream>>>(static_cast<const T*>(x), y, op, outer, r,
                                                                        inner, select_last);
  });
  check_launch("reduce");
}

void topk(ElemType t, const void* x, void* values, void* indices, int64_t outer, int64_t n, int64_t inner, int64_t k,
          bool largest, cudaStream_t stream) {
  if (outer < 0 || n < 0 || inner < 0 || k < 0 || k > n) throw CudaError("topk: bad shape or k");
  if (outer * inner * k == 0) return;
  if (outer * inner > (int64_t{1} << 31) - 1) throw CudaError("topk: too many rows");
  with_float_type(t, "topk", [&](auto tag) {
    using T = decltype(tag);
    topk_kernel<T><<<static_cast<unsigned>(outer * inner), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(values), static_cast<int64_t*>(indices), n, inner, k, largest);
  });
  check_launch("topk");
}

void pad(ElemType t, const void* x, void* y, const PadDesc& d, cudaStream_t stream) {
  const int64_t total = count(d.rank, d.out_dims, "pad");
  count(d.rank, d.in_dims, "pad");
  for (int a = 0; a < d.rank; ++a)
    if (d.in_dims[a] == 0 && d.out_dims[a] > 0 && d.mode != PadDesc::Mode::kConstant)
      throw CudaError("pad: edge, reflect and wrap need a non-empty input axis");
  if (total == 0) return;
  with_float_type(t, "pad", [&](auto tag) {
    using T = decltype(tag);
    pad_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(y), d, total);
  });
  check_launch("pad");
}

void resample(ElemType t, const void* x, const void* taps, void* y, const ResampleDesc& d, cudaStream_t stream) {
  const int64_t total = count(d.rank, d.out_dims, "resample");
  count(d.rank, d.in_dims, "resample");
  if (total == 0) return;
  with_float_type(t, "resample", [&](auto tag) {
    using T = decltype(tag);
    resample_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const T*>(x),
                                                                   static_cast<const Tap*>(taps), static_cast<T*>(y),
                                                                   d, total);
  });
  check_launch("resample");
}

void gather_elements(ElemType idx_type, const void* data, const void* idx, void* y, const GatherElementsDesc& d,
                     size_t elem_bytes, cudaStream_t stream) {
  if (idx_type != ElemType::kI64 && idx_type != ElemType::kI32)
    throw CudaError("gather_elements: indices must be int64 or int32");
  if (d.axis < 0 || d.axis >= d.rank) throw CudaError("gather_elements: axis outside the rank");
  const int64_t total = count(d.rank, d.out_dims, "gather_elements");
  count(d.rank, d.data_dims, "gather_elements");
  if (total == 0) return;
  const bool i64 = idx_type == ElemType::kI64;
  auto launch = [&](auto tag) {
    using U = decltype(tag);
    gather_elements_kernel<U><<<blocks_for(total), kThreads, 0, stream>>>(static_cast<const U*>(data), idx, i64,
                                                                          static_cast<U*>(y), d, total);
  };
  switch (elem_bytes) {
    case 1: launch(uint8_t{}); break;
    case 2: launch(uint16_t{}); break;
    case 4: launch(uint32_t{}); break;
    case 8: launch(uint64_t{}); break;
    default: throw CudaError("gather_elements: element size " + std::to_string(elem_bytes) + " is not 1, 2, 4 or 8");
  }
  check_launch("gather_elements");
}

}  // namespace kiln::cuda
