// Kiln's fused CNN stem (stem.cu): a 7x7 stride-2 convolution of a 1-4 channel NCHW image to 64
// channels, bias, clamp and 3x3 stride-2 max pooling in one kernel (device_api.h: StemPoolDesc).
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "backends/gpu/device_api.h"

namespace kiln::cuda {

// Why the kernel does not take `d`, or "" when it does.
std::string stem_pool_unsupported(const gpu::StemPoolDesc& d);
// Enqueues the stem: x NCHW (d.x_type), w the packed FP16 filter (gpu::stem_filter_order), bias
// FP16 [64], y NHWC (d.y_type). Throws CudaError for a shape it does not take.
void stem_pool(const gpu::StemPoolDesc& d, const void* x, const void* w, const void* bias, void* y, cudaStream_t stream);

}  // namespace kiln::cuda
