// The convolution epilogue Kiln runs after cuDNN's plain forward pass when cuDNN cannot fuse it
// (a clip whose floor is not 0, SiLU) or when that is faster: y = act(y + bias + z), in place, NHWC.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backends/cuda/conv.h"
#include "backends/cuda/convert.cuh"

namespace kiln::cuda {

namespace {



// Grid-stride over the elements; the channel is the innermost index. The comparisons are written so
// that a NaN passes through the clamp (ONNX's Relu and Clip propagate NaN).
// I: the index type, 32-bit whenever the element count allows (64-bit modulo costs ~4x as much).
// silu: v * sigmoid(v) instead of the clamp.
template <typename T, typename I>
__global__ void epilogue_kernel(T* y, const T* bias, const T* z, I n, I k, float lo, float hi, bool silu) {
  for (I i = blockIdx.x * I{blockDim.x} + threadIdx.x; i < n; i += I{gridDim.x} * blockDim.x) {
    float v = to_f(y[i]);
    if (bias) v += to_f(bias[i % k]);
    if (z) v += to_f(z[i]);
    if (silu) {
      v = v / (1.f + __expf(-v));
    } else {
      v = v < lo ? lo : v;
      v = v > hi ? hi : v;
    }
    y[i] = from_f<T>(v);
  }
}

template <typename T>
void launch(void* y, const void* bias, const void* z, int64_t n, int64_t k, float lo, float hi, bool silu,
            cudaStream_t s) {
  constexpr int kBlock = 256;
  const int64_t blocks = std::min<int64_t>((n + kBlock - 1) / kBlock, int64_t{1} << 20);
  if (n < (int64_t{1} << 32))
    epilogue_kernel<T, uint32_t><<<static_cast<unsigned>(blocks), kBlock, 0, s>>>(
        static_cast<T*>(y), static_cast<const T*>(bias), static_cast<const T*>(z), static_cast<uint32_t>(n),
        static_cast<uint32_t>(k), lo, hi, silu);
  else
    epilogue_kernel<T, int64_t><<<static_cast<unsigned>(blocks), kBlock, 0, s>>>(
        static_cast<T*>(y), static_cast<const T*>(bias), static_cast<const T*>(z), n, k, lo, hi, silu);
}

}  // namespace

void conv_epilogue(DType t, void* y, const void* bias, const void* z, int64_t elements, int64_t k, ConvAct act,
                   float clip_lo, float clip_hi, cudaStream_t stream) {
  if (elements <= 0) return;
  const float lo = act == ConvAct::kRelu ? 0.f : act == ConvAct::kClip ? clip_lo : -INFINITY;
  const float hi = act == ConvAct::kClip ? clip_hi : INFINITY;
  const bool silu = act == ConvAct::kSilu;
  if (t == DType::kF32)
    launch<float>(y, bias, z, elements, k, lo, hi, silu, stream);
  else if (t == DType::kF16)
    launch<__half>(y, bias, z, elements, k, lo, hi, silu, stream);
  else
    launch<__nv_bfloat16>(y, bias, z, elements, k, lo, hi, silu, stream);
  check_launch("conv_epilogue");
}

}  // namespace kiln::cuda
