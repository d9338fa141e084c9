// MatMul/Gemm, convolutions, normalizations and pooling: opset 18+ forms, the blocked GEMM and
// Conv against naive loops, symbolic-shape inference, and error reporting.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backends/reference/executor.h"
#include "test_support.h"

using namespace kiln;

namespace {

using kiln_test::ModelBuilder;

reference::TensorMap run(const Model& m, const reference::TensorMap& inputs) {
  reference::Executor exec(m);
  return exec.run(inputs);
}

std::string inferred(const Model& m, const std::string& value) {
  reference::Executor exec(m);
  const TensorType* t = exec.model().graph.type_of(value);
  return t ? t->to_string() : "none";
}

void expect_values(const Tensor& t, const std::vector<int64_t>& shape, const std::vector<double>& want,
                   double tol = 1e-5) {
  ASSERT_EQ(t.shape(), shape);
  const std::vector<double> got = t.to_double_vector();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

// Expects a kiln::Error (at construction or run) whose message contains every one of `parts`.
void expect_error(const Model& m, const reference::TensorMap& inputs, const std::vector<std::string>& parts) {
  try {
    reference::Executor exec(m);
    exec.run(inputs);
    FAIL() << "no error";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

Tensor iota(std::vector<int64_t> shape, float start = 0, float step = 1) {
  Tensor t(DType::kF32, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = start + step * static_cast<float>(i);
  return t;
}

Tensor random_f32(std::vector<int64_t> shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  Tensor t(DType::kF32, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = dist(rng);
  return t;
}

Attribute ints(std::vector<int64_t> v) { return Attribute::of_ints(std::move(v)); }
Attribute int_(int64_t v) { return Attribute::of_int(v); }

// ---- Naive references, written independently of the kernels.

std::vector<double> naive_matmul(const std::vector<double>& a, const std::vector<double>& b, int64_t m, int64_t k,
                                 int64_t n) {
  std::vector<double> c(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p) c[i * n + j] += a[i * k + p] * b[p * n + j];
  return c;
}

// Multi-index helpers for the naive N-d convolutions.
std::vector<int64_t> unravel(int64_t i, const std::vector<int64_t>& shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = i % shape[d];
    i /= shape[d];
  }
  return idx;
}
int64_t ravel(const std::vector<int64_t>& idx, const std::vector<int64_t>& shape) {
  int64_t i = 0;
  for (size_t d = 0; d < shape.size(); ++d) i = i * shape[d] + idx[d];
  return i;
}

struct ConvCase {
  std::vector<int64_t> x_shape;  // [N, C, spatial...]
  int64_t maps, group;
  std::vector<int64_t> kernel, strides, dilations, pads;
};

// y[n, m, o] = b[m] + sum_{c in group, k} x[n, c, o*s - pb + k*d] * w[m, c, k]
std::vector<double> naive_conv(const ConvCase& cc, const std::vector<double>& x, const std::vector<double>& w,
                               const std::vector<double>& b, std::vector<int64_t>& out_shape) {
  const size_t nd = cc.kernel.size();
  const int64_t n = cc.x_shape[0], c = cc.x_shape[1], cg = c / cc.group, mg = cc.maps / cc.group;
  std::vector<int64_t> in(cc.x_shape.begin() + 2, cc.x_shape.end()), out(nd);
  for (size_t d = 0; d < nd; ++d)
    out[d] = (in[d] + cc.pads[d] + cc.pads[d + nd] - (cc.kernel[d] - 1) * cc.dilations[d] - 1) / cc.strides[d] + 1;
  out_shape = {n, cc.maps};
  out_shape.insert(out_shape.end(), out.begin(), out.end());
  int64_t out_size = 1, ksize = 1, in_size = 1;
  for (size_t d = 0; d < nd; ++d) out_size *= out[d], ksize *= cc.kernel[d], in_size *= in[d];
  std::vector<double> y(n * cc.maps * out_size);
  for (int64_t b_ = 0; b_ < n; ++b_)
    for (int64_t m = 0; m < cc.maps; ++m)
      for (int64_t o = 0; o < out_size; ++o) {
        const std::vector<int64_t> opos = unravel(o, out);
        double acc = b.empty() ? 0.0 : b[m];
        const int64_t g = m / mg;
        for (int64_t ci = 0; ci < cg; ++ci)
          for (int64_t k = 0; k < ksize; ++k) {
            const std::vector<int64_t> kpos = unravel(k, cc.kernel);
            std::vector<int64_t> ipos(nd);
            bool valid = true;
            for (size_t d = 0; d < nd; ++d) {
              ipos[d] = opos[d] * cc.strides[d] - cc.pads[d] + kpos[d] * cc.dilations[d];
              valid = valid && ipos[d] >= 0 && ipos[d] < in[d];
            }
            if (!valid) continue;
            acc += x[(b_ * c + g * cg + ci) * in_size + ravel(ipos, in)] * w[(m * cg + ci) * ksize + k];
          }
        y[(b_ * cc.maps + m) * out_size + o] = acc;
      }
  return y;
}

// Scatter form of ConvTranspose: y[n, g*mg + m, i*s - pb + k*d] += x[n, c, i] * w[c, m, k].
std::vector<double> naive_conv_transpose(const ConvCase& cc, const std::vector<int64_t>& out_pad,
                                         const std::vector<double>& x, const std::vector<double>& w,
                                         std::vector<int64_t>& out_shape) {
  const size_t nd = cc.kernel.size();
  const int64_t n = cc.x_shape[0], c = cc.x_shape[1], cg = c / cc.group, mg = cc.maps / cc.group;
  std::vector<int64_t> in(cc.x_shape.begin() + 2, cc.x_shape.end()), out(nd);
  for (size_t d = 0; d < nd; ++d)
    out[d] = cc.strides[d] * (in[d] - 1) + out_pad[d] + (cc.kernel[d] - 1) * cc.dilations[d] + 1 - cc.pads[d] -
             cc.pads[d + nd];
  out_shape = {n, cc.maps};
  out_shape.insert(out_shape.end(), out.begin(), out.end());
  int64_t out_size = 1, ksize = 1, in_size = 1;
  for (size_t d = 0; d < nd; ++d) out_size *= out[d], ksize *= cc.kernel[d], in_size *= in[d];
  std::vector<double> y(n * cc.maps * out_size, 0.0);
  for (int64_t b_ = 0; b_ < n; ++b_)
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t i = 0; i < in_size; ++i) {
        const std::vector<int64_t> ipos = unravel(i, in);
        const int64_t g = ch / cg;
        for (int64_t m = 0; m < mg; ++m)
          for (int64_t k = 0; k < ksize; ++k) {
            const std::vector<int64_t> kpos = unravel(k, cc.kernel);
            std::vector<int64_t> opos(nd);
            bool valid = true;
            for (size_t d = 0; d < nd; ++d) {
              opos[d] = ipos[d] * cc.strides[d] - cc.pads[d] + kpos[d] * cc.dilations[d];
              valid = valid && opos[d] >= 0 && opos[d] < out[d];
            }
            if (!valid) continue;
            y[(b_ * cc.maps + g * mg + m) * out_size + ravel(opos, out)] +=
                x[(b_ * c + ch) * in_size + i] * w[(ch * mg + m) * ksize + k];
          }
      }
  return y;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol) << "element " << i;
}

}  // namespace

TEST(MathSchemas, CoverEveryOpsetFromIntroductionTo21) {
  const std::vector<std::pair<std::string, int>> ops = {
      {"MatMul", 7}, {"Gemm", 7}, {"MatMulInteger", 10}, {"QLinearMatMul", 10}, {"Conv", 7}, {"ConvTranspose", 7},
      {"ConvInteger", 10}, {"QLinearConv", 10}, {"BatchNormalization", 6}, {"InstanceNormalization", 7},
      {"LayerNormalization", 17}, {"GroupNormalization", 18}, {"LpNormalization", 7}, {"MeanVarianceNormalization", 9},
      {"LRN", 7}, {"MaxPool", 7}, {"AveragePool", 7}, {"LpPool", 7}, {"GlobalAveragePool", 7}, {"GlobalMaxPool", 7},
      {"GlobalLpPool", 7}, {"MaxUnpool", 9}};
  for (const auto& [op, since] : ops)
    for (int opset = since; opset <= 21; ++opset)
      EXPECT_NE(OpRegistry::global().find("", op, opset), nullptr) << op << " at opset " << opset;
  EXPECT_EQ(OpRegistry::global().find("", "GroupNormalization", 17), nullptr);
  // Attributes appear with the version that introduced them.
  EXPECT_EQ(OpRegistry::global().find("", "AveragePool", 18)->find_attr("dilations"), nullptr);
  EXPECT_NE(OpRegistry::global().find("", "AveragePool", 19)->find_attr("dilations"), nullptr);
  EXPECT_EQ(OpRegistry::global().find("", "LpPool", 17)->find_attr("ceil_mode"), nullptr);
  EXPECT_NE(OpRegistry::global().find("", "LpPool", 18)->find_attr("ceil_mode"), nullptr);
  EXPECT_NE(OpRegistry::global().find("", "GroupNormalization", 21)->find_attr("stash_type"), nullptr);
}

// ---- MatMul and Gemm

TEST(MatMul, VectorPromotionAndBatchBroadcast) {
  // [3] x [3,2] -> [2]; [2,3] x [3] -> [2]; [3] x [3] -> scalar.
  auto a = Tensor::from_vector<float>({3}, {1, 2, 3});
  auto m = Tensor::from_vector<float>({3, 2}, {1, 2, 3, 4, 5, 6});
  ModelBuilder b(13);
  b.input("a", DType::kF32, {Dim(3)})
      .input("m", DType::kF32, {Dim(3), Dim(2)})
      .input("mt", DType::kF32, {Dim(2), Dim(3)});
  b.node("MatMul", {"a", "m"}, {"vm"}, {}, "vm").node("MatMul", {"mt", "a"}, {"mv"}, {}, "mv");
  b.node("MatMul", {"a", "a"}, {"vv"}, {}, "vv");
  auto out = run(b.m, {{"a", a}, {"m", m}, {"mt", Tensor::from_vector<float>({2, 3}, {1, 3, 5, 2, 4, 6})}});
  expect_values(out["vm"], {2}, {22, 28});
  expect_values(out["mv"], {2}, {22, 28});
  expect_values(out["vv"], {}, {14});

  // [2,1,2,3] x [3,3,2] -> [2,3,2,2]: every (i, j) batch pairs A[i,0] with B[j].
  ModelBuilder bb(13);
  bb.input("A", DType::kF32, {Dim(2), Dim(1), Dim(2), Dim(3)}).input("B", DType::kF32, {Dim(3), Dim(3), Dim(2)});
  bb.node("MatMul", {"A", "B"}, {"Y"});
  const Tensor ta = iota({2, 1, 2, 3}), tb = iota({3, 3, 2}, 1, 0.5f);
  auto y = run(bb.m, {{"A", ta}, {"B", tb}})["Y"];
  ASSERT_EQ(y.shape(), (std::vector<int64_t>{2, 3, 2, 2}));
  const auto av = ta.to_double_vector(), bv = tb.to_double_vector(), yv = y.to_double_vector();
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) {
      const auto want = naive_matmul(std::vector<double>(av.begin() + i * 6, av.begin() + i * 6 + 6),
                                     std::vector<double>(bv.begin() + j * 6, bv.begin() + j * 6 + 6), 2, 3, 2);
      for (int e = 0; e < 4; ++e) EXPECT_NEAR(yv[(i * 3 + j) * 4 + e], want[e], 1e-4);
    }
}

TEST(MatMul, LargeShapesCrossEveryBlockBoundary) {
  // M, N, K exceed the GEMM's MC/NC/KC blocks and are not multiples of the register tile.
  const int64_t m = 131, k = 301, n = 2053;
  const Tensor a = random_f32({m, k}, 1), b = random_f32({k, n}, 2);
  ModelBuilder mb(13);
  mb.input("A", DType::kF32, {Dim(m), Dim(k)}).input("B", DType::kF32, {Dim(k), Dim(n)});
  mb.node("MatMul", {"A", "B"}, {"Y"});
  auto y = run(mb.m, {{"A", a}, {"B", b}})["Y"];
  ASSERT_EQ(y.shape(), (std::vector<int64_t>{m, n}));
  expect_close(y.to_double_vector(), naive_matmul(a.to_double_vector(), b.to_double_vector(), m, k, n), 1e-3);
}

TEST(MatMul, BatchedActivationsTimesSharedWeights) {
  const int64_t b = 3, m = 50, k = 70, n = 40;
  const Tensor x = random_f32({b, m, k}, 3), w = random_f32({k, n}, 4);
  ModelBuilder mb(13);
  mb.input("X", DType::kF32, {Dim(b), Dim(m), Dim(k)}).init("W", w);
  mb.node("MatMul", {"X", "W"}, {"Y"});
  auto y = run(mb.m, {{"X", x}})["Y"];
  ASSERT_EQ(y.shape(), (std::vector<int64_t>{b, m, n}));
  const auto xv = x.to_double_vector(), yv = y.to_double_vector();
  for (int64_t i = 0; i < b; ++i) {
    const auto want = naive_matmul(std::vector<double>(xv.begin() + i * m * k, xv.begin() + (i + 1) * m * k),
                                   w.to_double_vector(), m, k, n);
    expect_close(std::vector<double>(yv.begin() + i * m * n, yv.begin() + (i + 1) * m * n), want, 1e-4);
  }
}

TEST(MatMul, IntegerAndHalfTypes) {
  ModelBuilder b(13);
  b.input("A", DType::kI64, {Dim(2), Dim(2)}).input("B", DType::kI64, {Dim(2), Dim(2)});
  b.node("MatMul", {"A", "B"}, {"Y"});
  auto y = run(b.m, {{"A", Tensor::from_vector<int64_t>({2, 2}, {1, -2, 3, 4})},
                     {"B", Tensor::from_vector<int64_t>({2, 2}, {5, 6, -7, 8})}})["Y"];
  EXPECT_EQ(y.dtype(), DType::kI64);
  expect_values(y, {2, 2}, {19, -10, -13, 50});

  ModelBuilder h(13);
  h.input("A", DType::kF16, {Dim(1), Dim(3)}).input("B", DType::kF16, {Dim(3), Dim(1)});
  h.node("MatMul", {"A", "B"}, {"Y"});
  auto yh = run(h.m, {{"A", Tensor::from_vector<Half>({1, 3}, {Half(0.5f), Half(1.5f), Half(-2.0f)})},
                      {"B", Tensor::from_vector<Half>({3, 1}, {Half(2.0f), Half(4.0f), Half(0.25f)})}})["Y"];
  EXPECT_EQ(yh.dtype(), DType::kF16);
  expect_values(yh, {1, 1}, {6.5});
}

TEST(MatMul, SymbolicInferenceAndErrors) {
  ModelBuilder b(13);
  b.input("X", DType::kF32, {Dim::sym("batch"), Dim::sym("seq"), Dim(768)});
  b.init("W", Tensor(DType::kF32, {768, 64}));
  b.node("MatMul", {"X", "W"}, {"Y"});
  EXPECT_EQ(inferred(b.m, "Y"), "f32[batch,seq,64]");

  ModelBuilder bad(13);
  bad.input("X", DType::kF32, {Dim(2), Dim(3)}).input("W", DType::kF32, {Dim(4), Dim(5)});
  bad.node("MatMul", {"X", "W"}, {"Y"}, {}, "proj");
  expect_error(bad.m, {}, {"MatMul", "proj", "inner dimensions"});

  // Dims only known at run time are checked by the kernel.
  ModelBuilder late(13);
  late.input("X", DType::kF32, {Dim(2), Dim::sym("k")}).input("W", DType::kF32, {Dim::sym("j"), Dim(5)});
  late.node("MatMul", {"X", "W"}, {"Y"}, {}, "late");
  expect_error(late.m, {{"X", Tensor(DType::kF32, {2, 3})}, {"W", Tensor(DType::kF32, {4, 5})}},
               {"late", "inner dimensions"});
}

TEST(Gemm, TransposesScalesAndBroadcastsC) {
  // A is stored [K, M] = [[1,2],[3,4]], so op(A) = [[1,3],[2,4]];
  // B is stored [N, K] = [[1,0],[0,1],[1,1]], so op(B) = [[1,0,1],[0,1,1]].
  ModelBuilder b(13);
  b.input("A", DType::kF32, {Dim(2), Dim(2)})
      .input("B", DType::kF32, {Dim(3), Dim(2)})
      .input("C", DType::kF32, {Dim(3)});
  b.node("Gemm", {"A", "B", "C"}, {"Y"},
         {{"transA", int_(1)},
          {"transB", int_(1)},
          {"alpha", Attribute::of_float(2)},
          {"beta", Attribute::of_float(0.5f)}});
  auto y = run(b.m, {{"A", Tensor::from_vector<float>({2, 2}, {1, 2, 3, 4})},
                     {"B", Tensor::from_vector<float>({3, 2}, {1, 0, 0, 1, 1, 1})},
                     {"C", Tensor::from_vector<float>({3}, {10, 20, 30})}})["Y"];
  // op(A) x op(B) = [[1,3,4],[2,4,6]]; *2 + 0.5*C.
  expect_values(y, {2, 3}, {7, 16, 23, 9, 18, 27});

  // Opset 11+: C is optional.
  ModelBuilder noc(11);
  noc.input("A", DType::kF32, {Dim::sym("batch"), Dim(2)}).input("B", DType::kF32, {Dim(2), Dim(2)});
  noc.node("Gemm", {"A", "B"}, {"Y"});
  EXPECT_EQ(inferred(noc.m, "Y"), "f32[batch,2]");
  auto y2 = run(noc.m, {{"A", Tensor::from_vector<float>({1, 2}, {1, 2})},
                        {"B", Tensor::from_vector<float>({2, 2}, {1, 2, 3, 4})}})["Y"];
  expect_values(y2, {1, 2}, {7, 10});

  // Before opset 11 C is required.
  ModelBuilder old(9);
  old.input("A", DType::kF32, {Dim(1), Dim(2)}).input("B", DType::kF32, {Dim(2), Dim(2)});
  old.node("Gemm", {"A", "B"}, {"Y"}, {}, "fc");
  expect_error(old.m, {}, {"fc", "inputs"});

  // C must broadcast towards [M, N] only.
  ModelBuilder badc(13);
  badc.input("A", DType::kF32, {Dim(2), Dim(2)})
      .input("B", DType::kF32, {Dim(2), Dim(3)})
      .input("C", DType::kF32, {Dim(2)});
  badc.node("Gemm", {"A", "B", "C"}, {"Y"}, {}, "fc");
  expect_error(badc.m, {}, {"Gemm", "fc", "does not broadcast"});
}

TEST(MatMulInteger, PerRowAndPerColumnZeroPoints) {
  ModelBuilder b(10);
  b.input("A", DType::kU8, {Dim(2), Dim(2)}).input("B", DType::kI8, {Dim(2), Dim(2)});
  b.input("az", DType::kU8, {Dim(2)}).input("bz", DType::kI8, {Dim(2)});
  b.node("MatMulInteger", {"A", "B", "az", "bz"}, {"Y"});
  // A - az (per row) = [[1,2],[3,4]]; B - bz (per column) = [[1,-1],[2,0]].
  auto y = run(b.m, {{"A", Tensor::from_vector<uint8_t>({2, 2}, {11, 12, 23, 24})},
                     {"B", Tensor::from_vector<int8_t>({2, 2}, {2, 0, 3, 1})},
                     {"az", Tensor::from_vector<uint8_t>({2}, {10, 20})},
                     {"bz", Tensor::from_vector<int8_t>({2}, {1, 1})}})["Y"];
  EXPECT_EQ(y.dtype(), DType::kI32);
  expect_values(y, {2, 2}, {5, -1, 11, -3});
}

TEST(QLinearMatMul, RequantizesWithRoundingAndSaturation) {
  ModelBuilder b(10);
  b.input("a", DType::kU8, {Dim(1), Dim(2)}).input("b", DType::kU8, {Dim(2), Dim(2)});
  b.init("as", Tensor::scalar<float>(0.5f)).init("az", Tensor::scalar<uint8_t>(1));
  b.init("bs", Tensor::scalar<float>(1.0f)).init("bz", Tensor::scalar<uint8_t>(0));
  b.init("ys", Tensor::scalar<float>(2.0f)).init("yz", Tensor::scalar<uint8_t>(3));
  b.node("QLinearMatMul", {"a", "as", "az", "b", "bs", "bz", "ys", "yz"}, {"y"});
  // (a - 1) = [4, 2]; x b = [4*1+2*3, 4*250+2*250] = [10, 1500]; * 0.5 / 2 = [2.5, 375] -> rint [2, 375] + 3.
  auto y = run(b.m, {{"a", Tensor::from_vector<uint8_t>({1, 2}, {5, 3})},
                     {"b", Tensor::from_vector<uint8_t>({2, 2}, {1, 250, 3, 250})}})["y"];
  EXPECT_EQ(y.dtype(), DType::kU8);
  expect_values(y, {1, 2}, {5, 255});
}

// ---- Convolution

TEST(Conv, HandCheckedPaddedStridedExample) {
  // 1x1x3x3 input 1..9, 2x2 kernel of ones, pads 1, strides 2 -> 2x2 output of window sums.
  ModelBuilder b(11);
  b.input("X", DType::kF32, {Dim(1), Dim(1), Dim(3), Dim(3)});
  b.init("W", Tensor::from_vector<float>({1, 1, 2, 2}, {1, 1, 1, 1}));
  b.init("B", Tensor::from_vector<float>({1}, {0.5f}));
  b.node("Conv", {"X", "W", "B"}, {"Y"}, {{"pads", ints({1, 1, 1, 1})}, {"strides", ints({2, 2})}});
  auto y = run(b.m, {{"X", iota({1, 1, 3, 3}, 1)}})["Y"];
  expect_values(y, {1, 1, 2, 2}, {1.5, 5.5, 11.5, 28.5});
}

TEST(Conv, MatchesNaiveLoopsAcrossRanksGroupsAndWindows) {
  const std::vector<ConvCase> cases = {
      {{2, 4, 11}, 6, 2, {3}, {2}, {2}, {1, 2}},                            // 1-D, grouped, dilated
      {{1, 6, 9, 8}, 6, 3, {3, 2}, {1, 2}, {2, 1}, {1, 0, 2, 1}},             // 2-D, asymmetric pads
      {{1, 8, 7, 7}, 8, 8, {3, 3}, {2, 2}, {1, 1}, {1, 1, 1, 1}},             // depthwise
      {{2, 5, 6, 6}, 7, 1, {1, 1}, {1, 1}, {1, 1}, {0, 0, 0, 0}},             // pointwise
      {{1, 3, 33, 40}, 9, 1, {5, 5}, {1, 1}, {1, 1}, {2, 2, 2, 2}},           // larger GEMM
      {{1, 2, 5, 6, 4}, 4, 2, {2, 3, 2}, {2, 1, 1}, {1, 1, 2}, {0, 1, 1, 1, 0, 1}},  // 3-D
  };
  uint32_t seed = 10;
  for (const ConvCase& cc : cases) {
    const size_t nd = cc.kernel.size();
    std::vector<int64_t> wshape = {cc.maps, cc.x_shape[1] / cc.group};
    wshape.insert(wshape.end(), cc.kernel.begin(), cc.kernel.end());
    const Tensor x = random_f32(cc.x_shape, seed++), w = random_f32(wshape, seed++),
                 bias = random_f32({cc.maps}, seed++);
    ModelBuilder b(11);
    b.input("X", DType::kF32, shape_from_dims(cc.x_shape)).init("W", w).init("B", bias);
    b.node("Conv", {"X", "W", "B"}, {"Y"},
           {{"group", int_(cc.group)}, {"strides", ints(cc.strides)}, {"dilations", ints(cc.dilations)},
            {"pads", ints(cc.pads)}, {"kernel_shape", ints(cc.kernel)}});
    auto y = run(b.m, {{"X", x}})["Y"];
    std::vector<int64_t> want_shape;
    const auto want = naive_conv(cc, x.to_double_vector(), w.to_double_vector(), bias.to_double_vector(), want_shape);
    SCOPED_TRACE("conv case with " + std::to_string(nd) + " spatial axes, group " + std::to_string(cc.group));
    ASSERT_EQ(y.shape(), want_shape);
    expect_close(y.to_double_vector(), want, 1e-4);
  }
}

TEST(Conv, AutoPadSameUpperAndLowerPlaceTheOddPixel) {
  // 1-D input [1,2,3,4], kernel [1,1] (length 2), stride 1: total padding 1.
  for (const std::string mode : {"SAME_UPPER", "SAME_LOWER"}) {
    ModelBuilder b(11);
    b.input("X", DType::kF32, {Dim(1), Dim(1), Dim(4)});
    b.init("W", Tensor::from_vector<float>({1, 1, 2}, {1, 10}));
    b.node("Conv", {"X", "W"}, {"Y"}, {{"auto_pad", Attribute::of_string(mode)}});
    auto y = run(b.m, {{"X", iota({1, 1, 4}, 1)}})["Y"];
    // SAME_UPPER pads at the end: [1+20, 2+30, 3+40, 4+0]; SAME_LOWER at the start: [0+10, 1+20, 2+30, 3+40].
    if (mode == "SAME_UPPER") expect_values(y, {1, 1, 4}, {21, 32, 43, 4});
    else expect_values(y, {1, 1, 4}, {10, 21, 32, 43});
  }
}

TEST(Conv, SymbolicShapesAndF16) {
  ModelBuilder b(11);
  b.input("X", DType::kF32, {Dim::sym("batch"), Dim(3), Dim(224), Dim(224)});
  b.init("W", Tensor(DType::kF32, {64, 3, 7, 7}));
  b.node("Conv", {"X", "W"}, {"Y"}, {{"strides", ints({2, 2})}, {"pads", ints({3, 3, 3, 3})}});
  EXPECT_EQ(inferred(b.m, "Y"), "f32[batch,64,112,112]");

  // SAME with stride 1 keeps symbolic spatial dims; stride 2 cannot name the result.
  ModelBuilder s(11);
  s.input("X", DType::kF32, {Dim::sym("n"), Dim(4), Dim::sym("h"), Dim::sym("w")});
  s.init("W", Tensor(DType::kF32, {8, 4, 3, 3}));
  s.node("Conv", {"X", "W"}, {"Y"}, {{"auto_pad", Attribute::of_string("SAME_UPPER")}, {"strides", ints({1, 2})}});
  EXPECT_EQ(inferred(s.m, "Y"), "f32[n,8,h,?]");

  ModelBuilder h(11);
  h.input("X", DType::kF16, {Dim(1), Dim(1), Dim(2)});
  h.init("W", Tensor::from_vector<Half>({1, 1, 2}, {Half(0.5f), Half(2.0f)}));
  h.node("Conv", {"X", "W"}, {"Y"});
  auto y = run(h.m, {{"X", Tensor::from_vector<Half>({1, 1, 2}, {Half(4.0f), Half(1.5f)})}})["Y"];
  EXPECT_EQ(y.dtype(), DType::kF16);
  expect_values(y, {1, 1, 1}, {5.0});
}

TEST(Conv, ErrorsNameTheNode) {
  ModelBuilder ch(11);
  ch.input("X", DType::kF32, {Dim(1), Dim(3), Dim(8), Dim(8)});
  ch.init("W", Tensor(DType::kF32, {4, 2, 3, 3}));
  ch.node("Conv", {"X", "W"}, {"Y"}, {}, "stem");
  expect_error(ch.m, {}, {"Conv", "stem", "channels"});

  ModelBuilder ks(11);
  ks.input("X", DType::kF32, {Dim(1), Dim(2), Dim(8), Dim(8)});
  ks.init("W", Tensor(DType::kF32, {4, 2, 3, 3}));
  ks.node("Conv", {"X", "W"}, {"Y"}, {{"kernel_shape", ints({5, 5})}}, "stem");
  expect_error(ks.m, {}, {"stem", "kernel_shape"});

  ModelBuilder st(11);
  st.input("X", DType::kF32, {Dim(1), Dim(2), Dim(8), Dim(8)});
  st.init("W", Tensor(DType::kF32, {4, 2, 3, 3}));
  st.node("Conv", {"X", "W"}, {"Y"}, {{"strides", ints({0, 1})}}, "stem");
  expect_error(st.m, {}, {"stem", "strides"});

  ModelBuilder ap(11);
  ap.input("X", DType::kF32, {Dim(1), Dim(2), Dim(8), Dim(8)});
  ap.init("W", Tensor(DType::kF32, {4, 2, 3, 3}));
  ap.node("Conv", {"X", "W"}, {"Y"}, {{"auto_pad", Attribute::of_string("SAME")}}, "stem");
  expect_error(ap.m, {}, {"stem", "auto_pad"});

  ModelBuilder big(11);
  big.input("X", DType::kF32, {Dim(1), Dim(2), Dim(2), Dim(2)});
  big.init("W", Tensor(DType::kF32, {4, 2, 3, 3}));
  big.node("Conv", {"X", "W"}, {"Y"}, {}, "stem");
  expect_error(big.m, {}, {"stem", "larger than the padded input"});

  // Unknown at inference, wrong at run time: the kernel reports it.
  ModelBuilder late(11);
  late.input("X", DType::kF32, {Dim(1), Dim::sym("c"), Dim(4)}).input("W", DType::kF32, {Dim(2), Dim(3), Dim(1)});
  late.node("Conv", {"X", "W"}, {"Y"}, {}, "late");
  expect_error(late.m, {{"X", Tensor(DType::kF32, {1, 2, 4})}, {"W", Tensor(DType::kF32, {2, 3, 1})}},
               {"late", "channels"});
}

TEST(ConvTranspose, MatchesNaiveScatterLoops) {
  struct Case {
    ConvCase cc;
    std::vector<int64_t> out_pad;
  };
  const std::vector<Case> cases = {
      {{{1, 2, 5}, 3, 1, {3}, {2}, {1}, {1, 0}}, {1}},
      {{{2, 4, 3, 4}, 6, 2, {3, 2}, {2, 3}, {1, 2}, {1, 0, 0, 1}}, {1, 0}},
      {{{1, 2, 3, 2, 3}, 2, 1, {2, 2, 2}, {1, 2, 1}, {2, 1, 1}, {0, 0, 1, 0, 1, 0}}, {0, 1, 0}},
  };
  uint32_t seed = 40;
  for (const Case& c : cases) {
    const ConvCase& cc = c.cc;
    std::vector<int64_t> wshape = {cc.x_shape[1], cc.maps / cc.group};
    wshape.insert(wshape.end(), cc.kernel.begin(), cc.kernel.end());
    const Tensor x = random_f32(cc.x_shape, seed++), w = random_f32(wshape, seed++);
    ModelBuilder b(11);
    b.input("X", DType::kF32, shape_from_dims(cc.x_shape)).init("W", w);
    b.node("ConvTranspose", {"X", "W"}, {"Y"},
           {{"group", int_(cc.group)}, {"strides", ints(cc.strides)}, {"dilations", ints(cc.dilations)},
            {"pads", ints(cc.pads)}, {"output_padding", ints(c.out_pad)}});
    auto y = run(b.m, {{"X", x}})["Y"];
    std::vector<int64_t> want_shape;
    const auto want = naive_conv_transpose(cc, c.out_pad, x.to_double_vector(), w.to_double_vector(), want_shape);
    ASSERT_EQ(y.shape(), want_shape);
    expect_close(y.to_double_vector(), want, 1e-4);
  }
}

TEST(ConvTranspose, OutputShapeAndSymbolicBatch) {
  ModelBuilder b(11);
  b.input("X", DType::kF32, {Dim::sym("batch"), Dim(4), Dim(5), Dim(5)});
  b.init("W", Tensor(DType::kF32, {4, 3, 3, 3}));
  b.node("ConvTranspose", {"X", "W"}, {"Y"}, {{"strides", ints({2, 2})}, {"group", int_(2)}});
  EXPECT_EQ(inferred(b.m, "Y"), "f32[batch,6,11,11]");
  ModelBuilder o(11);
  o.input("X", DType::kF32, {Dim::sym("batch"), Dim(4), Dim(5), Dim(5)});
  o.init("W", Tensor(DType::kF32, {4, 3, 3, 3}));
  o.node("ConvTranspose", {"X", "W"}, {"Y"}, {{"strides", ints({2, 2})}, {"output_shape", ints({10, 12})}});
  EXPECT_EQ(inferred(o.m, "Y"), "f32[batch,3,10,12]");
  auto y = run(o.m, {{"X", Tensor(DType::kF32, {2, 4, 5, 5})}})["Y"];
  EXPECT_EQ(y.shape(), (std::vector<int64_t>{2, 3, 10, 12}));
}

TEST(ConvInteger, PerChannelWeightZeroPoints) {
  ModelBuilder b(10);
  b.input("x", DType::kU8, {Dim(1), Dim(1), Dim(3)});
  b.init("w", Tensor::from_vector<uint8_t>({2, 1, 2}, {3, 4, 10, 10}));
  b.init("xz", Tensor::scalar<uint8_t>(1));
  b.init("wz", Tensor::from_vector<uint8_t>({2}, {2, 9}));
  b.node("ConvInteger", {"x", "w", "xz", "wz"}, {"y"});
  // x - 1 = [1, 2, 3]; w0 - 2 = [1, 2]; w1 - 9 = [1, 1].
  auto y = run(b.m, {{"x", Tensor::from_vector<uint8_t>({1, 1, 3}, {2, 3, 4})}})["y"];
  EXPECT_EQ(y.dtype(), DType::kI32);
  expect_values(y, {1, 2, 2}, {5, 8, 3, 5});
}

// ---- Pooling

TEST(Pool, AveragePool19Dilations) {
  ModelBuilder b(19);
  b.input("X", DType::kF32, {Dim(1), Dim(1), Dim(4), Dim(4)});
  b.node("AveragePool", {"X"}, {"Y"}, {{"kernel_shape", ints({2, 2})}, {"dilations", ints({2, 2})}});
  auto y = run(b.m, {{"X", iota({1, 1, 4, 4})}})["Y"];
  // Window at (0,0) covers (0,0),(0,2),(2,0),(2,2) = 0,2,8,10.
  expect_values(y, {1, 1, 2, 2}, {5, 6, 9, 10});
}

TEST(Pool, AveragePoolCountIncludePad) {
  for (int include : {0, 1}) {
    ModelBuilder b(11);
    b.input("X", DType::kF32, {Dim(1), Dim(1), Dim(3)});
    b.node("AveragePool", {"X"}, {"Y"},
           {{"kernel_shape", ints({2})},
            {"pads", ints({1, 1})},
            {"strides", ints({2})},
            {"count_include_pad", int_(include)}});
    auto y = run(b.m, {{"X", Tensor::from_vector<float>({1, 1, 3}, {2, 4, 6})}})["Y"];
    // Windows: [pad, 2], [4, 6].
    if (include) expect_values(y, {1, 1, 2}, {1, 5});
    else expect_values(y, {1, 1, 2}, {2, 5});
  }
}

TEST(Pool, CeilModeDropsWindowsStartingInPadding) {
  // in 4, kernel 2, stride 2, end pad 1: ceil gives 3 windows, the last starting in the padding.
  ModelBuilder b(12);
  b.input("X", DType::kF32, {Dim(1), Dim(1), Dim(4)});
  b.node("MaxPool", {"X"}, {"Y"},
         {{"kernel_shape", ints({2})}, {"strides", ints({2})}, {"pads", ints({0, 1})}, {"ceil_mode", int_(1)}});
  EXPECT_EQ(inferred(b.m, "Y"), "f32[1,1,2]");
  expect_values(run(b.m, {{"X", Tensor::from_vector<float>({1, 1, 4}, {3, 1, 2, 5})}})["Y"], {1, 1, 2}, {3, 5});

  // A window that starts inside the input but runs past it is kept.
  ModelBuilder k(12);
  k.input("X", DType::kF32, {Dim(1), Dim(1), Dim(5)});
  k.node("MaxPool", {"X"}, {"Y"}, {{"kernel_shape", ints({2})}, {"strides", ints({2})}, {"ceil_mode", int_(1)}});
  expect_values(run(k.m, {{"X", Tensor::from_vector<float>({1, 1, 5}, {3, 1, 2, 5, 4})}})["Y"], {1, 1, 3}, {3, 5, 4});
}

TEST(Pool, MaxPoolIndicesInBothStorageOrders) {
  // X [1,2,2,3]; channel 1 is channel 0 + 10, so its indices are offset by 6.
  Tensor x = Tensor::from_vector<float>({1, 2, 2, 3}, {1, 5, 2, 4, 3, 6, 11, 15, 12, 14, 13, 16});
  for (int order : {0, 1}) {
    ModelBuilder b(12);
    b.input("X", DType::kF32, {Dim(1), Dim(2), Dim(2), Dim(3)});
    b.node("MaxPool", {"X"}, {"Y", "I"}, {{"kernel_shape", ints({2, 2})}, {"storage_order", int_(order)}});
    auto out = run(b.m, {{"X", x}});
    expect_values(out["Y"], {1, 2, 1, 2}, {5, 6, 15, 16});
    EXPECT_EQ(out["I"].dtype(), DType::kI64);
    // Max at (0,1) and (1,2): row-major 1 and 5, column-major (w*H + h) 2 and 5.
    if (order == 0) expect_values(out["I"], {1, 2, 1, 2}, {1, 5, 7, 11});
    else expect_values(out["I"], {1, 2, 1, 2}, {2, 5, 8, 11});
  }
}

TEST(Pool, MaxPoolInt8AndSymbolicShapes) {
  ModelBuilder b(12);
  b.input("X", DType::kI8, {Dim::sym("batch"), Dim(1), Dim(4)});
  b.node("MaxPool", {"X"}, {"Y"}, {{"kernel_shape", ints({2})}, {"strides", ints({2})}});
  EXPECT_EQ(inferred(b.m, "Y"), "i8[batch,1,2]");
  auto y = run(b.m, {{"X", Tensor::from_vector<int8_t>({1, 1, 4}, {-5, -7, 100, -128})}})["Y"];
  EXPECT_EQ(y.dtype(), DType::kI8);
  expect_values(y, {1, 1, 2}, {-5, 100});

  ModelBuilder g(12);
  g.input("X", DType::kF32, {Dim::sym("batch"), Dim(8), Dim::sym("h"), Dim::sym("w")});
  g.node("GlobalAveragePool", {"X"}, {"G"}, {}, "gap");
  g.node("MaxPool", {"X"}, {"M"}, {{"kernel_shape", ints({3, 3})}, {"auto_pad", Attribute::of_string("SAME_LOWER")}},
         "mp");
  EXPECT_EQ(inferred(g.m, "G"), "f32[batch,8,1,1]");
  EXPECT_EQ(inferred(g.m, "M"), "f32[batch,8,h,w]");
}

TEST(Pool, LpPool18CeilModeAndDilations) {
  ModelBuilder b(18);
  b.input("X", DType::kF32, {Dim(1), Dim(1), Dim(5)});
  b.node("LpPool", {"X"}, {"A"}, {{"kernel_shape", ints({2})}, {"strides", ints({2})}, {"ceil_mode", int_(1)}}, "a");
  b.node("LpPool", {"X"}, {"B"}, {{"kernel_shape", ints({2})}, {"dilations", ints({2})}}, "b");
  b.node("LpPool", {"X"}, {"C"}, {{"kernel_shape", ints({5})}, {"p", int_(1)}}, "c");
  auto out = run(b.m, {{"X", Tensor::from_vector<float>({1, 1, 5}, {1, -2, 3, 4, 5})}});
  expect_values(out["A"], {1, 1, 3}, {std::sqrt(5.0), 5, 5});
  expect_values(out["B"], {1, 1, 3}, {std::sqrt(10.0), std::sqrt(20.0), std::sqrt(34.0)});
  expect_values(out["C"], {1, 1, 1}, {15});
}

TEST(Pool, GlobalPools) {
  ModelBuilder b(13);
  b.input("X", DType::kF32, {Dim(1), Dim(2), Dim(2)});
  b.node("GlobalMaxPool", {"X"}, {"M"}, {}, "m").node("GlobalAveragePool", {"X"}, {"A"}, {}, "a");
  b.node("GlobalLpPool", {"X"}, {"L"}, {}, "l");
  auto out = run(b.m, {{"X", Tensor::from_vector<float>({1, 2, 2}, {3, -4, 1, 7})}});
  expect_values(out["M"], {1, 2, 1}, {3, 7});
  expect_values(out["A"], {1, 2, 1}, {-0.5, 4});
  expect_values(out["L"], {1, 2, 1}, {5, std::sqrt(50.0)});
}

TEST(Pool, ErrorsNameTheNode) {
  ModelBuilder k(12);
  k.input("X", DType::kF32, {Dim(1), Dim(1), Dim(4), Dim(4)});
  k.node("MaxPool", {"X"}, {"Y"}, {{"kernel_shape", ints({2})}}, "pool1");
  expect_error(k.m, {}, {"MaxPool", "pool1", "kernel_shape"});

  ModelBuilder p(12);
  p.input("X", DType::kF32, {Dim(1), Dim(1), Dim(4), Dim(4)});
  p.node("AveragePool", {"X"}, {"Y"}, {{"kernel_shape", ints({2, 2})}, {"pads", ints({1, 1})}}, "pool2");
  expect_error(p.m, {}, {"pool2", "pads"});

  ModelBuilder u(11);
  u.input("X", DType::kF32, {Dim(1), Dim(1), Dim(2)}).input("I", DType::kI64, {Dim(1), Dim(1), Dim(2)});
  u.node("MaxUnpool", {"X", "I"}, {"Y"}, {{"kernel_shape", ints({2})}, {"strides", ints({2})}}, "unpool");
  expect_error(
      u.m,
      {{"X", Tensor::from_vector<float>({1, 1, 2}, {1, 2})}, {"I", Tensor::from_vector<int64_t>({1, 1, 2}, {0, 4})}},
      {"unpool", "out of range"});
}

TEST(Pool, MaxUnpoolScattersAtIndices) {
  ModelBuilder b(11);
  b.input("X", DType::kF32, {Dim(1), Dim(1), Dim(2)}).input("I", DType::kI64, {Dim(1), Dim(1), Dim(2)});
  b.node("MaxUnpool", {"X", "I"}, {"Y"}, {{"kernel_shape", ints({2})}, {"strides", ints({2})}});
  auto y = run(b.m, {{"X", Tensor::from_vector<float>({1, 1, 2}, {7, 9})},
                     {"I", Tensor::from_vector<int64_t>({1, 1, 2}, {1, 2})}})["Y"];
  expect_values(y, {1, 1, 4}, {0, 7, 9, 0});
}

// ---- Normalization

TEST(Norm, GroupNormalization18PerGroupAnd21PerChannel) {
  // X [1, 4, 2]; two groups of two channels: {0,1,2,3} and {4,5,6,7}, both with mean m+1.5 and var 1.25.
  const double sd = std::sqrt(1.25);
  const std::vector<double> z = {-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd};
  {
    ModelBuilder b(18);
    b.input("X", DType::kF32, {Dim::sym("n"), Dim(4), Dim(2)});
    b.init("s", Tensor::from_vector<float>({2}, {2, 3})).init("b", Tensor::from_vector<float>({2}, {1, -1}));
    b.node("GroupNormalization", {"X", "s", "b"}, {"Y"},
           {{"num_groups", int_(2)}, {"epsilon", Attribute::of_float(0)}});
    EXPECT_EQ(inferred(b.m, "Y"), "f32[n,4,2]");
    auto y = run(b.m, {{"X", iota({1, 4, 2})}})["Y"];
    std::vector<double> want;
    for (double v : z) want.push_back(2 * v + 1);
    for (double v : z) want.push_back(3 * v - 1);
    expect_values(y, {1, 4, 2}, want);
  }
  {
    ModelBuilder b(21);
    b.input("X", DType::kF32, {Dim(1), Dim(4), Dim(2)});
    b.init("s", Tensor::from_vector<float>({4}, {1, 2, 3, 4})).init("b", Tensor::from_vector<float>({4}, {0, 0, 0, 1}));
    b.node("GroupNormalization", {"X", "s", "b"}, {"Y"},
           {{"num_groups", int_(2)}, {"epsilon", Attribute::of_float(0)}});
    auto y = run(b.m, {{"X", iota({1, 4, 2})}})["Y"];
    expect_values(y, {1, 4, 2}, {z[0], z[1], 2 * z[2], 2 * z[3], 3 * z[0], 3 * z[1], 4 * z[2] + 1, 4 * z[3] + 1});
  }
  // Opset 18 rejects per-channel parameters, 21 per-group ones.
  ModelBuilder bad(21);
  bad.input("X", DType::kF32, {Dim(1), Dim(4), Dim(2)});
  bad.init("s", Tensor::from_vector<float>({2}, {1, 1})).init("b", Tensor::from_vector<float>({2}, {0, 0}));
  bad.node("GroupNormalization", {"X", "s", "b"}, {"Y"}, {{"num_groups", int_(2)}}, "gn");
  expect_error(bad.m, {{"X", iota({1, 4, 2})}}, {"GroupNormalization", "gn", "scale"});
  ModelBuilder div(18);
  div.input("X", DType::kF32, {Dim(1), Dim(6), Dim(2)});
  div.init("s", Tensor::from_vector<float>({4}, {1, 1, 1, 1})).init("b", Tensor::from_vector<float>({4}, {0, 0, 0, 0}));
  div.node("GroupNormalization", {"X", "s", "b"}, {"Y"}, {{"num_groups", int_(4)}}, "gn");
  expect_error(div.m, {}, {"gn", "divisible"});
}

TEST(Norm, LayerNormalizationStatsOutputs) {
  ModelBuilder b(17);
  b.input("X", DType::kF32, {Dim::sym("batch"), Dim(2), Dim(2)});
  b.init("s", Tensor::from_vector<float>({2}, {1, 2})).init("b", Tensor::from_vector<float>({2}, {0, 1}));
  b.node("LayerNormalization", {"X", "s", "b"}, {"Y", "M", "R"},
         {{"axis", int_(1)}, {"epsilon", Attribute::of_float(0)}});
  EXPECT_EQ(inferred(b.m, "Y"), "f32[batch,2,2]");
  EXPECT_EQ(inferred(b.m, "M"), "f32[batch,1,1]");
  auto out = run(b.m, {{"X", Tensor::from_vector<float>({1, 2, 2}, {1, 3, 5, 7})}});
  // mean 4, var 5: z = [-3, -1, 1, 3] / sqrt(5); scale/bias broadcast over the last axis.
  const double r = 1 / std::sqrt(5.0);
  expect_values(out["Y"], {1, 2, 2}, {-3 * r, -2 * r + 1, 1 * r, 6 * r + 1});
  expect_values(out["M"], {1, 1, 1}, {4});
  expect_values(out["R"], {1, 1, 1}, {r});

  // f16 input with the default stash type reports its statistics in f32.
  ModelBuilder h(17);
  h.input("X", DType::kF16, {Dim(2), Dim(2)});
  h.init("s", Tensor::from_vector<Half>({2}, {Half(1.0f), Half(1.0f)}));
  h.node("LayerNormalization", {"X", "s"}, {"Y", "M"});
  EXPECT_EQ(inferred(h.m, "M"), "f32[2,1]");
  auto hy = run(h.m, {{"X", Tensor::from_vector<Half>({2, 2}, {Half(1.0f), Half(3.0f), Half(2.0f), Half(2.0f)})}});
  expect_values(hy["M"], {2, 1}, {2, 2});
  expect_values(hy["Y"], {2, 2}, {-1, 1, 0, 0}, 1e-2);

  ModelBuilder ax(17);
  ax.input("X", DType::kF32, {Dim(2), Dim(2)});
  ax.init("s", Tensor::from_vector<float>({2}, {1, 1}));
  ax.node("LayerNormalization", {"X", "s"}, {"Y"}, {{"axis", int_(2)}}, "ln");
  expect_error(ax.m, {}, {"LayerNormalization", "ln", "axis"});
}

TEST(Norm, BatchNormalizationTrainingMode) {
  ModelBuilder b(15);
  b.input("X", DType::kF32, {Dim(2), Dim(1), Dim(2)});
  b.init("s", Tensor::from_vector<float>({1}, {2})).init("b", Tensor::from_vector<float>({1}, {1}));
  b.init("m", Tensor::from_vector<float>({1}, {0})).init("v", Tensor::from_vector<float>({1}, {1}));
  b.node("BatchNormalization", {"X", "s", "b", "m", "v"}, {"Y", "RM", "RV"},
         {{"training_mode", int_(1)}, {"epsilon", Attribute::of_float(0)}});
  auto out = run(b.m, {{"X", Tensor::from_vector<float>({2, 1, 2}, {1, 2, 3, 4})}});
  // Batch mean 2.5 and (population) variance 1.25; running stats move 10% of the way.
  const double sd = std::sqrt(1.25);
  expect_values(out["Y"], {2, 1, 2}, {-3 / sd + 1, -1 / sd + 1, 1 / sd + 1, 3 / sd + 1});
  expect_values(out["RM"], {1}, {0.25});
  expect_values(out["RV"], {1}, {1.025});
}

TEST(Norm, BatchNormalization7PerPositionParameters) {
  ModelBuilder b(7);
  b.input("X", DType::kF32, {Dim(1), Dim(1), Dim(2)});
  b.init("s", Tensor::from_vector<float>({1, 2}, {1, 2})).init("b", Tensor::from_vector<float>({1, 2}, {0, 1}));
  b.init("m", Tensor::from_vector<float>({1, 2}, {1, 2})).init("v", Tensor::from_vector<float>({1, 2}, {4, 1}));
  b.node("BatchNormalization", {"X", "s", "b", "m", "v"}, {"Y"},
         {{"spatial", int_(0)}, {"epsilon", Attribute::of_float(0)}});
  auto y = run(b.m, {{"X", Tensor::from_vector<float>({1, 1, 2}, {5, 5})}})["Y"];
  expect_values(y, {1, 1, 2}, {2, 7});

  ModelBuilder bad(15);
  bad.input("X", DType::kF32, {Dim(1), Dim(3), Dim(2)});
  bad.init("s", Tensor(DType::kF32, {2})).init("b", Tensor(DType::kF32, {3}));
  bad.init("m", Tensor(DType::kF32, {3})).init("v", Tensor(DType::kF32, {3}));
  bad.node("BatchNormalization", {"X", "s", "b", "m", "v"}, {"Y"}, {}, "bn");
  expect_error(bad.m, {{"X", Tensor(DType::kF32, {1, 3, 2})}}, {"BatchNormalization", "bn", "scale"});
}

TEST(Norm, InstanceLpMvnAndLrn) {
  ModelBuilder b(13);
  b.input("X", DType::kF32, {Dim(1), Dim(2), Dim(2)});
  b.init("s", Tensor::from_vector<float>({2}, {1, 2})).init("b", Tensor::from_vector<float>({2}, {0, 1}));
  b.node("InstanceNormalization", {"X", "s", "b"}, {"I"}, {{"epsilon", Attribute::of_float(0)}}, "in");
  b.node("LpNormalization", {"X"}, {"L1"}, {{"axis", int_(1)}, {"p", int_(1)}}, "l1");
  b.node("LpNormalization", {"X"}, {"L2"}, {}, "l2");
  b.node("MeanVarianceNormalization", {"X"}, {"V"}, {{"axes", ints({2})}}, "mvn");
  b.node("LRN", {"X"}, {"R"},
         {{"size", int_(2)}, {"alpha", Attribute::of_float(0.5f)}, {"beta", Attribute::of_float(1)}}, "lrn");
  auto out = run(b.m, {{"X", Tensor::from_vector<float>({1, 2, 2}, {1, 3, 3, 4})}});
  expect_values(out["I"], {1, 2, 2}, {-1, 1, -1, 3});
  expect_values(out["L1"], {1, 2, 2}, {0.25, 3.0 / 7, 0.75, 4.0 / 7});
  expect_values(out["L2"], {1, 2, 2}, {1 / std::sqrt(10.0), 3 / std::sqrt(10.0), 0.6, 0.8});
  expect_values(out["V"], {1, 2, 2}, {-1, 1, -1, 1});
  // size 2: channel c sums c and c+1; y = x / (1 + 0.5/2 * sum).
  expect_values(out["R"], {1, 2, 2},
                {1 / (1 + 0.25 * 10), 3 / (1 + 0.25 * 25), 3 / (1 + 0.25 * 9), 4 / (1 + 0.25 * 16)});
}
