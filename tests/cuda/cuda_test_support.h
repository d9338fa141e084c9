// Helpers shared by the CUDA module's tests: uploads that round values to the dtype first (so the
// host reference sees what the GPU sees), NaN-poisoned outputs (an unwritten element fails),
// downloads, and the relative L2 error.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"

namespace kiln::cuda::test {

inline size_t dsize(DType t) { return t == DType::kF32 ? 4 : 2; }

// Rounds values to the dtype (so the reference sees exactly what the GPU sees) and uploads them.
inline DeviceBuffer upload(DType t, std::vector<float>& v) {
  std::vector<uint8_t> bytes(v.size() * dsize(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) {
      std::memcpy(&bytes[i * 4], &v[i], 4);
    } else if (t == DType::kF16) {
      __half h = __float2half_rn(v[i]);
      v[i] = __half2float(h);
      std::memcpy(&bytes[i * 2], &h, 2);
    } else {
      __nv_bfloat16 b = __float2bfloat16_rn(v[i]);
      v[i] = __bfloat162float(b);
      std::memcpy(&bytes[i * 2], &b, 2);
    }
  }
  DeviceBuffer d(bytes.size());
  KILN_CUDA_CHECK(cudaMemcpy(d.get(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice));
  return d;
}

inline DeviceBuffer poisoned(DType t, size_t n) {
  DeviceBuffer d(n * dsize(t));
  KILN_CUDA_CHECK(cudaMemset(d.get(), 0xff, d.bytes()));  // NaN in every float type
  return d;
}

inline std::vector<float> download(DType t, const DeviceBuffer& d, size_t n) {
  std::vector<uint8_t> bytes(n * dsize(t));
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  KILN_CUDA_CHECK(cudaMemcpy(bytes.data(), d.get(), bytes.size(), cudaMemcpyDeviceToHost));
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::kF32) {
      std::memcpy(&v[i], &bytes[i * 4], 4);
    } else if (t == DType::kF16) {
      __half h;
      std::memcpy(&h, &bytes[i * 2], 2);
      v[i] = __half2float(h);
    } else {
      __nv_bfloat16 b;
      std::memcpy(&b, &bytes[i * 2], 2);
      v[i] = __bfloat162float(b);
    }
  }
  return v;
}

// ||out - ref|| / ||ref||; infinity when any output is NaN (unwritten or broken).
inline double rel_error(const std::vector<float>& out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (std::isnan(out[i])) return INFINITY;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// The fixture of the GPU kernel tests: skips with a message without a GPU; random() draws from a
// generator seeded afresh every run.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (device_count(&why) == 0) GTEST_SKIP() << "no CUDA GPU (" << why << "): the GPU tests are skipped";
    rng_.seed(std::random_device{}());
  }
  std::vector<float> random(size_t n, float lo = -2.f, float hi = 2.f) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = u(rng_);
    return v;
  }
  std::mt19937 rng_;
};

}  // namespace kiln::cuda::test
