// What moving a memory-bound 1x1 layer's bytes costs on this GPU, without any arithmetic: the
// ceiling for ResNet-50's res2 expansion (1x1 64 -> 256 with a residual, batch 256, 56x56) in
// INT8 and in FP16. Each probe reads the layer's input rows and residual and writes its output,
// with 16-byte loads and stores per thread over a grid-stride loop, timed by CUDA events (median
// of 20 after 5 warm-ups). Bandwidth counts bytes read plus bytes written.
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 bench/gpu/stream_probe.cu -o stream_probe
//   ./stream_probe
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#define CHECK(x)                                                                      \
  do {                                                                                \
    cudaError_t e = (x);                                                              \
    if (e != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); \
      return 1;                                                                       \
    }                                                                                 \
  } while (0)

// y[i] = z[i] (+ a[i / ratio] when a is given): 16-byte units.
__global__ void stream(const uint4* __restrict__ a, const uint4* __restrict__ z, uint4* __restrict__ y, long n, int ratio) {
  for (long i = blockIdx.x * static_cast<long>(blockDim.x) + threadIdx.x; i < n; i += static_cast<long>(gridDim.x) * blockDim.x) {
    uint4 v = z ? z[i] : make_uint4(0, 0, 0, 0);
    if (a) {
      const uint4 w = a[i / ratio];
      v.x ^= w.x, v.y ^= w.y, v.z ^= w.z, v.w ^= w.w;
    }
    y[i] = v;
  }
}

int main() {
  const long pixels = 256L * 56 * 56;
  struct Probe {
    const char* name;
    int elem;  // bytes per value
    bool a, z;
  };
  const Probe probes[] = {
      {"int8: write y only", 1, false, false},      {"int8: z -> y (residual read, output write)", 1, false, true},
      {"int8: a + z -> y (the whole layer)", 1, true, true}, {"fp16: write y only", 2, false, false},
      {"fp16: z -> y", 2, false, true},              {"fp16: a + z -> y (the whole layer)", 2, true, true},
  };
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  for (const Probe& p : probes) {
    const size_t ybytes = static_cast<size_t>(pixels) * 256 * p.elem, abytes = static_cast<size_t>(pixels) * 64 * p.elem;
    void *a = nullptr, *z = nullptr, *y = nullptr;
    CHECK(cudaMalloc(&y, ybytes));
    if (p.z) {
      CHECK(cudaMalloc(&z, ybytes));
      CHECK(cudaMemset(z, 1, ybytes));
    }
    if (p.a) {
      CHECK(cudaMalloc(&a, abytes));
      CHECK(cudaMemset(a, 2, abytes));
    }
    const long n = static_cast<long>(ybytes / 16);
    for (int per_sm : {4, 8, 16}) {
      cudaEvent_t e0, e1;
      CHECK(cudaEventCreate(&e0));
      CHECK(cudaEventCreate(&e1));
      std::vector<float> ms;
      for (int it = 0; it < 25; ++it) {
        CHECK(cudaEventRecord(e0));
        stream<<<sms * per_sm, 256>>>(static_cast<const uint4*>(a), static_cast<const uint4*>(z), static_cast<uint4*>(y), n, 4);
        CHECK(cudaEventRecord(e1));
        CHECK(cudaEventSynchronize(e1));
        float t = 0;
        CHECK(cudaEventElapsedTime(&t, e0, e1));
        if (it >= 5) ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      const float med = ms[ms.size() / 2];
      const double bytes = static_cast<double>(ybytes) * (p.z ? 2 : 1) + (p.a ? abytes : 0);
      std::printf("%-46s %3d CTAs/SM  %.3f ms  %.2f TB/s (%.0f MB)\n", p.name, per_sm, med, bytes / (med * 1e-3) / 1e12, bytes / 1e6);
      CHECK(cudaEventDestroy(e0));
      CHECK(cudaEventDestroy(e1));
    }
    CHECK(cudaFree(y));
    if (z) CHECK(cudaFree(z));
    if (a) CHECK(cudaFree(a));
  }
  return 0;
}
