// Kiln's fused stem kernel (stem.cu) against its definition computed here in float64: a 7x7/2 pad 3
// convolution of an NCHW image (FP16-rounded input and filter, as the kernel reads them), bias,
// clamp, then 3x3/2 pad 1 max pooling, on fresh random inputs every run. Sizes that leave partial
// tiles on both axes and every channel count 1-4 are covered, FP32 and FP16 inputs, FP16 and INT8
// outputs. Tolerances: FP16 outputs within 1e-3 relative plus 1e-3 absolute of the reference (one
// FP16 rounding of FP32 sums); INT8 outputs at most one code from round(ref / scale), and at most
// 1% of them one code off (FP32 sums landing on the other side of a rounding boundary). Outputs
// are poisoned first, so an unwritten element fails. Refusals run without a GPU.
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backends/cuda/cuda_util.h"
#include "backends/cuda/stem.h"
#include "cuda_test_support.h"

namespace kiln::cuda {
namespace {

using namespace test;
using gpu::ElemType;
using gpu::StemPoolDesc;

float to_half(float v) { return __half2float(__float2half_rn(v)); }

// The stem by its definition, [n][ph][pw][64].
std::vector<double> reference(const StemPoolDesc& d, const std::vector<float>& x, const std::vector<float>& w,
                              const std::vector<float>& bias) {
  const int64_t oh = d.conv_h(), ow = d.conv_w(), ph = d.out_h(), pw = d.out_w();
  std::vector<double> conv(static_cast<size_t>(d.n * oh * ow * 64));
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j)
        for (int64_t k = 0; k < 64; ++k) {
          double acc = bias[static_cast<size_t>(k)];
          for (int64_t c = 0; c < d.c; ++c)
            for (int64_t r = 0; r < 7; ++r)
              for (int64_t s = 0; s < 7; ++s) {
                const int64_t y = i * 2 - 3 + r, xx = j * 2 - 3 + s;
                if (y < 0 || y >= d.h || xx < 0 || xx >= d.w) continue;
                acc += static_cast<double>(x[static_cast<size_t>(((n * d.c + c) * d.h + y) * d.w + xx)]) *
                       w[static_cast<size_t>(((k * d.c + c) * 7 + r) * 7 + s)];
              }
          conv[static_cast<size_t>(((n * oh + i) * ow + j) * 64 + k)] = std::min<double>(std::max<double>(acc, d.lo), d.hi);
        }
  std::vector<double> out(static_cast<size_t>(d.n * ph * pw * 64));
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < ph; ++i)
      for (int64_t j = 0; j < pw; ++j)
        for (int64_t k = 0; k < 64; ++k) {
          double m = -INFINITY;
          for (int64_t r = 0; r < 3; ++r)
            for (int64_t s = 0; s < 3; ++s) {
              const int64_t y = i * 2 - 1 + r, xx = j * 2 - 1 + s;
              if (y >= 0 && y < oh && xx >= 0 && xx < ow) m = std::max(m, conv[static_cast<size_t>(((n * oh + y) * ow + xx) * 64 + k)]);
            }
          out[static_cast<size_t>(((n * ph + i) * pw + j) * 64 + k)] = m;
        }
  return out;
}

class CudaStem : public GpuTest {
 protected:
  void check(StemPoolDesc d) {
    SCOPED_TRACE("n" + std::to_string(d.n) + " c" + std::to_string(d.c) + " " + std::to_string(d.h) + "x" +
                 std::to_string(d.w) + (d.x_type == ElemType::kF16 ? " x16" : " x32") +
                 (d.y_type == ElemType::kI8 ? " y8" : " y16"));
    std::vector<float> x = random(static_cast<size_t>(d.n * d.c * d.h * d.w), -1.f, 1.f);
    std::vector<float> w = random(static_cast<size_t>(64 * d.c * 49), -0.2f, 0.2f);
    std::vector<float> bias = random(64, -0.3f, 0.3f);
    for (float& v : x) v = to_half(v);  // the kernel reads FP16 (an FP32 input is rounded as it is read)
    for (float& v : w) v = to_half(v);
    for (float& v : bias) v = to_half(v);
    // The packed filter, bias and input on the device.
    const auto order = gpu::stem_filter_order(d.c);
    std::vector<float> packed(order.size());
    for (size_t i = 0; i < order.size(); ++i) packed[i] = order[i] < 0 ? 0.f : w[static_cast<size_t>(order[i])];
    DeviceBuffer dw = upload(DType::kF16, packed), db = upload(DType::kF16, bias);
    std::vector<float> xs = x;
    DeviceBuffer dx = upload(d.x_type == ElemType::kF16 ? DType::kF16 : DType::kF32, xs);
    const auto ref = reference(d, x, w, bias);
    const size_t n_out = ref.size();
    if (d.y_type == ElemType::kF16) {
      DeviceBuffer y = poisoned(DType::kF16, n_out);
      stem_pool(d, dx.get(), dw.get(), db.get(), y.get(), nullptr);
      const auto out = download(DType::kF16, y, n_out);
      size_t bad = 0;
      for (size_t i = 0; i < n_out; ++i)
        if (!(std::fabs(out[i] - ref[i]) <= 1e-3 * std::fabs(ref[i]) + 1e-3)) ++bad;
      EXPECT_EQ(bad, 0u) << "of " << n_out << " outputs";
    } else {
      DeviceBuffer y(n_out);
      KILN_CUDA_CHECK(cudaMemset(y.get(), 0x80, n_out));  // -128: never the max of a ReLU output here
      stem_pool(d, dx.get(), dw.get(), db.get(), y.get(), nullptr);
      KILN_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<int8_t> out(n_out);
      KILN_CUDA_CHECK(cudaMemcpy(out.data(), y.get(), n_out, cudaMemcpyDeviceToHost));
      size_t off = 0, far = 0;
      for (size_t i = 0; i < n_out; ++i) {
        const double q = std::min(127.0, std::max(-128.0, std::nearbyint(ref[i] / d.y_scale)));
        const double e = std::fabs(out[i] - q);
        off += e == 1;
        far += e > 1;
      }
      EXPECT_EQ(far, 0u) << "outputs more than one code off, of " << n_out;
      EXPECT_LE(off, n_out / 100) << "outputs one code off, of " << n_out;
    }
  }
};

TEST_F(CudaStem, ResNetStemFp32InFp16Out) {
  StemPoolDesc d;
  d.n = 2, d.c = 3, d.h = d.w = 224, d.lo = 0;
  check(d);
}

TEST_F(CudaStem, ResNetStemInt8Out) {
  StemPoolDesc d;
  d.n = 2, d.c = 3, d.h = d.w = 224, d.lo = 0, d.y_type = ElemType::kI8, d.y_scale = 0.02f;
  check(d);
}

TEST_F(CudaStem, PartialTilesEveryChannelCountAndType) {
  // 61 x 83: conv 31 x 42, pooled 16 x 21 (tiles of 7 x 14 leave 2 and 7 over).
  for (int64_t c = 1; c <= 4; ++c)
    for (const ElemType xt : {ElemType::kF32, ElemType::kF16})
      for (const ElemType yt : {ElemType::kF16, ElemType::kI8}) {
        StemPoolDesc d;
        d.n = 3, d.c = c, d.h = 61, d.w = 83, d.x_type = xt, d.y_type = yt, d.y_scale = 0.01f;
        d.lo = c == 2 ? -INFINITY : 0.f, d.hi = c == 4 ? 0.5f : INFINITY;  // none, ReLU and a clip
        if (c == 2) d.y_scale = 0.03f;  // outputs of both signs within INT8's range
        check(d);
      }
}

TEST_F(CudaStem, TinyImages) {
  for (int64_t hw : {1, 2, 5, 9}) {
    StemPoolDesc d;
    d.n = 2, d.c = 3, d.h = hw, d.w = hw + 1, d.lo = 0;
    check(d);
  }
}

TEST(CudaStemParams, RefusesWhatItCannotTake) {
  StemPoolDesc d;
  d.n = 1, d.c = 3, d.h = d.w = 224;
  EXPECT_EQ(stem_pool_unsupported(d), "");
  StemPoolDesc e = d;
  e.c = 5;
  EXPECT_NE(stem_pool_unsupported(e).find("1 to 4 input channels"), std::string::npos);
  e = d, e.x_type = ElemType::kI8;
  EXPECT_NE(stem_pool_unsupported(e).find("reads FP32 or FP16"), std::string::npos);
  e = d, e.y_type = ElemType::kF32;
  EXPECT_NE(stem_pool_unsupported(e).find("writes FP16 or INT8"), std::string::npos);
  e = d, e.y_type = ElemType::kI8, e.y_scale = 0;
  EXPECT_NE(stem_pool_unsupported(e).find("positive scale"), std::string::npos);
  e = d, e.lo = 1, e.hi = 0;
  EXPECT_NE(stem_pool_unsupported(e).find("lo <= hi"), std::string::npos);
  e = d, e.h = 0;
  EXPECT_NE(stem_pool_unsupported(e).find("out of range"), std::string::npos);
  // The packed filter's layout: channel 1, row 2, column 3 of output 5 sits at 56 + 16 + 3.
  const auto order = gpu::stem_filter_order(3);
  EXPECT_EQ(gpu::stem_filter_pitch(3), 184);
  EXPECT_EQ(order[5 * 184 + 56 + 16 + 3], ((5 * 3 + 1) * 7 + 2) * 7 + 3);
  EXPECT_EQ(order[5 * 184 + 7], -1);  // column 7 is zero
  EXPECT_EQ(order[5 * 184 + 168], -1);  // past the last channel
}

}  // namespace
}  // namespace kiln::cuda
