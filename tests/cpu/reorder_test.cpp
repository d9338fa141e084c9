// Layout helpers and the plain <-> channels-last reorder.
#include "cpu_test_support.h"

namespace kiln_cpu_test {
namespace {

TEST(Layout, StridesOfChannelsLast) {
  EXPECT_EQ(cpu::layout_strides({2, 3, 4, 5}, Layout::kPlain), (std::vector<int64_t>{60, 20, 5, 1}));
  // [N, H, W, C] in memory: C is innermost, then W, then H.
  EXPECT_EQ(cpu::layout_strides({2, 3, 4, 5}, Layout::kChannelsLast), (std::vector<int64_t>{60, 1, 15, 3}));
  // Rank < 3 is always plain.
  EXPECT_EQ(cpu::layout_strides({3, 4}, Layout::kChannelsLast), (std::vector<int64_t>{4, 1}));
}

TEST(Layout, CoincideWhenSpatialIsOneOrSingleChannel) {
  EXPECT_TRUE(cpu::layouts_coincide({2, 64, 1, 1}));
  EXPECT_TRUE(cpu::layouts_coincide({2, 1, 7, 7}));
  EXPECT_FALSE(cpu::layouts_coincide({1, 2, 2, 1}));
}

TEST(Reorder, RoundTripsAndPlacesEveryElement) {
  for (std::vector<int64_t> shape : {std::vector<int64_t>{2, 3, 4, 5}, {1, 37, 33}, {3, 64, 2, 3, 5}}) {
    Tensor a = random_tensor(DType::kF32, shape, 7);
    Tensor last(DType::kF32, shape), back(DType::kF32, shape);
    cpu::reorder(a.raw(), Layout::kPlain, last.mutable_raw(), Layout::kChannelsLast, DType::kF32, shape);
    // Element (n, c, s...) must sit at the channels-last strides.
    const auto ps = cpu::layout_strides(shape, Layout::kPlain), ls = cpu::layout_strides(shape, Layout::kChannelsLast);
    const float* src = a.data<float>();
    const float* dst = last.data<float>();
    std::vector<int64_t> idx(shape.size(), 0);
    for (int64_t i = 0; i < a.numel(); ++i) {
      int64_t po = 0, lo = 0;
      for (size_t d = 0; d < shape.size(); ++d) po += idx[d] * ps[d], lo += idx[d] * ls[d];
      ASSERT_EQ(dst[lo], src[po]);
      for (size_t d = shape.size(); d-- > 0;)
        if (++idx[d] < shape[d]) break; else idx[d] = 0;
    }
    cpu::reorder(last.raw(), Layout::kChannelsLast, back.mutable_raw(), Layout::kPlain, DType::kF32, shape);
    EXPECT_EQ(back.to_double_vector(), a.to_double_vector());
  }
}

}  // namespace
}  // namespace kiln_cpu_test
