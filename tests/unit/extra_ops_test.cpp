// Loss ops, GridSample, Unique, Det, window generators, RoiAlign and random generators: opset 20 forms,
// symbolic-shape inference, hand-checked values the ONNX suite lacks, and error reporting.
#include <gtest/gtest.h>

#include <cmath>

#include "backends/reference/executor.h"
#include "test_support.h"

using namespace kiln;

namespace {

using kiln_test::ModelBuilder;

reference::TensorMap run(const Model& m, reference::TensorMap inputs) {
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
  std::vector<double> got = t.to_double_vector();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

void expect_error(const Model& m, const reference::TensorMap& inputs, const std::vector<std::string>& parts) {
  try {
    reference::Executor exec(m);
    exec.run(inputs);
    FAIL() << "no error";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

Attribute s(const char* v) { return Attribute::of_string(v); }
Attribute i(int64_t v) { return Attribute::of_int(v); }

// The NegativeLogLikelihoodLoss examples of the ONNX spec: N=2, C=3, d1=2.
Tensor nll_input() {
  return Tensor::from_vector<float>({2, 3, 2}, {1, 2, 2, 2, 3, 2, 0, 1, 2, 2, 1, 2});
}
Tensor nll_target() { return Tensor::from_vector<int64_t>({2, 2}, {2, 1, 0, 2}); }

}  // namespace

// ---- NegativeLogLikelihoodLoss / SoftmaxCrossEntropyLoss

TEST(Loss, NllSpecExamples) {
  ModelBuilder b(13);
  b.input("x", DType::kF32, {2, 3, 2}).input("t", DType::kI64, {2, 2}).input("w", DType::kF32, {3})
      .node("NegativeLogLikelihoodLoss", {"x", "t"}, {"none"}, {{"reduction", s("none")}}, "none")
      .node("NegativeLogLikelihoodLoss", {"x", "t", "w"}, {"sum"}, {{"reduction", s("sum")}}, "sum")
      .node("NegativeLogLikelihoodLoss", {"x", "t", "w"}, {"mean"}, {}, "mean");
  Tensor w = Tensor::from_vector<float>({3}, {0.2f, 0.3f, 0.1f});
  auto out = run(b.m, {{"x", nll_input()}, {"t", nll_target()}, {"w", w}});
  expect_values(out["none"], {2, 2}, {-3, -2, 0, -2});
  // Weighted: -(3*0.1 + 2*0.3 + 0*0.2 + 2*0.1) = -1.1; mean divides by 0.1+0.3+0.2+0.1 = 0.7.
  expect_values(out["sum"], {}, {-1.1});
  expect_values(out["mean"], {}, {-1.1 / 0.7});
}

TEST(Loss, NllIgnoreIndexMeanCountsOnlyKeptSamples) {
  ModelBuilder b(12);
  b.input("x", DType::kF64, {2, 3, 2}).input("t", DType::kI32, {2, 2})
      .node("NegativeLogLikelihoodLoss", {"x", "t"}, {"y"}, {{"ignore_index", i(-1)}}, "nll");
  Tensor x = Tensor::from_vector<double>({2, 3, 2}, {1, 2, 2, 2, 3, 2, 0, 1, 2, 2, 1, 2});
  // Targets 2, -1(ignored), 0, 2: losses -3, 0, -0, -2 over 3 kept samples.
  auto out = run(b.m, {{"x", x}, {"t", Tensor::from_vector<int32_t>({2, 2}, {2, -1, 0, 2})}});
  expect_values(out["y"], {}, {-5.0 / 3.0});
  EXPECT_EQ(out["y"].dtype(), DType::kF64);
}

TEST(Loss, SymbolicBatchIsKept) {
  ModelBuilder b(13);
  b.input("x", DType::kF32, {Dim::sym("batch"), 3, 5}).input("t", DType::kI64, {Dim::sym("batch"), 5})
      .node("NegativeLogLikelihoodLoss", {"x", "t"}, {"nll"}, {{"reduction", s("none")}}, "nll")
      .node("SoftmaxCrossEntropyLoss", {"x", "t"}, {"sce", "logp"}, {}, "sce");
  EXPECT_EQ(inferred(b.m, "nll"), "f32[batch,5]");
  EXPECT_EQ(inferred(b.m, "sce"), "f32[]");
  EXPECT_EQ(inferred(b.m, "logp"), "f32[batch,3,5]");
}

TEST(Loss, SoftmaxCrossEntropyValuesAndLogProb) {
  // Row 0: scores [1,2,3], label 2: log(e^1+e^2+e^3) - 3 = log(1 + e^-1 + e^-2) = 0.4076059.
  // Row 1: scores [0,0,0], label 0: log 3 = 1.0986123.
  ModelBuilder b(13);
  b.input("x", DType::kF32, {2, 3}).input("t", DType::kI64, {2})
      .node("SoftmaxCrossEntropyLoss", {"x", "t"}, {"l", "lp"}, {{"reduction", s("none")}}, "sce");
  auto out = run(b.m, {{"x", Tensor::from_vector<float>({2, 3}, {1, 2, 3, 0, 0, 0})},
                       {"t", Tensor::from_vector<int64_t>({2}, {2, 0})}});
  expect_values(out["l"], {2}, {0.4076059, 1.0986123});
  expect_values(out["lp"], {2, 3}, {-2.4076059, -1.4076059, -0.4076059, -1.0986123, -1.0986123, -1.0986123});
}

TEST(Loss, Errors) {
  {
    ModelBuilder b(13);
    b.input("x", DType::kF32, {2, 3, 2}).input("t", DType::kI64, {2, 2})
        .node("NegativeLogLikelihoodLoss", {"x", "t"}, {"y"}, {}, "nll");
    expect_error(b.m, {{"x", nll_input()}, {"t", Tensor::from_vector<int64_t>({2, 2}, {2, 3, 0, 1})}},
                 {"nll", "target value 3", "out of range [0, 3)"});
  }
  {
    ModelBuilder b(13);
    b.input("x", DType::kF32, {2, 3, 2}).input("t", DType::kI64, {2, 2})
        .node("NegativeLogLikelihoodLoss", {"x", "t"}, {"y"}, {{"reduction", s("avg")}}, "nll");
    expect_error(b.m, {}, {"nll", "reduction", "'avg'"});
  }
  {
    ModelBuilder b(13);
    b.input("x", DType::kF32, {2, 3, 2}).input("t", DType::kI64, {2, 4})
        .node("SoftmaxCrossEntropyLoss", {"x", "t"}, {"y"}, {}, "sce");
    expect_error(b.m, {}, {"sce", "target dimension 1"});
  }
}

// ---- GridSample

TEST(GridSample, Opset20VolumetricLinear) {
  // X[d][h][w] = 4d + 2h + w on a 2x2x2 volume; with align_corners the grid's extrema hit the corners.
  ModelBuilder b(20);
  b.input("x", DType::kF32, {1, 1, 2, 2, 2}).input("g", DType::kF32, {1, 1, 1, 4, 3})
      .node("GridSample", {"x", "g"}, {"y"}, {{"align_corners", i(1)}}, "gs");
  Tensor x = Tensor::from_vector<float>({1, 1, 2, 2, 2}, {0, 1, 2, 3, 4, 5, 6, 7});
  // Points (x, y, z): centre, (-1,-1,-1), (1,-1,-1) and (1,1,1).
  Tensor g = Tensor::from_vector<float>({1, 1, 1, 4, 3}, {0, 0, 0, -1, -1, -1, 1, -1, -1, 1, 1, 1});
  auto out = run(b.m, {{"x", x}, {"g", g}});
  expect_values(out["y"], {1, 1, 1, 1, 4}, {3.5, 0, 1, 7});
}

TEST(GridSample, Opset20PaddingModes1D) {
  // 1 spatial dim, X = [1, 2, 3], align_corners=1: grid 1.5 maps to position 2.5 (past the last pixel).
  ModelBuilder b(20);
  b.input("x", DType::kF32, {1, 1, 3}).input("g", DType::kF32, {1, 1, 1})
      .node("GridSample", {"x", "g"}, {"zeros"}, {{"align_corners", i(1)}}, "z")
      .node("GridSample", {"x", "g"}, {"border"}, {{"align_corners", i(1)}, {"padding_mode", s("border")}}, "b")
      .node("GridSample", {"x", "g"}, {"refl"}, {{"align_corners", i(1)}, {"padding_mode", s("reflection")}}, "r");
  auto out = run(b.m, {{"x", Tensor::from_vector<float>({1, 1, 3}, {1, 2, 3})},
                       {"g", Tensor::from_vector<float>({1, 1, 1}, {1.5f})}});
  expect_values(out["zeros"], {1, 1, 1}, {1.5});  // 0.5 * X[2] + 0.5 * 0
  expect_values(out["border"], {1, 1, 1}, {3});   // clamped to position 2
  expect_values(out["refl"], {1, 1, 1}, {2.5});   // reflected to position 1.5
}

TEST(GridSample, Opset20IntegerInputAndCubic) {
  ModelBuilder b(20);
  b.input("x", DType::kI32, {1, 1, 1, 2}).input("g", DType::kF32, {1, 1, 1, 2})
      .input("c", DType::kF64, {1, 1, 4, 4}).input("gc", DType::kF32, {1, 1, 1, 2})
      .node("GridSample", {"x", "g"}, {"y"}, {{"align_corners", i(1)}}, "int")
      .node("GridSample", {"c", "gc"}, {"yc"}, {{"mode", s("cubic")}}, "cubic");
  Tensor c(DType::kF64, {1, 1, 4, 4});
  for (int64_t k = 0; k < 16; ++k) c.mutable_data<double>()[k] = 5.0;
  // Cubic weights sum to one, so a constant interior region stays constant.
  auto out = run(b.m, {{"x", Tensor::from_vector<int32_t>({1, 1, 1, 2}, {10, 21})},
                       {"g", Tensor::from_vector<float>({1, 1, 1, 2}, {0, 0})},
                       {"c", c},
                       {"gc", Tensor::from_vector<float>({1, 1, 1, 2}, {0.1f, -0.05f})}});
  EXPECT_EQ(out["y"].dtype(), DType::kI32);
  expect_values(out["y"], {1, 1, 1, 1}, {15});  // 15.5 truncated
  expect_values(out["yc"], {1, 1, 1, 1}, {5}, 1e-9);
}

TEST(GridSample, SymbolicShapeAndErrors) {
  {
    ModelBuilder b(16);
    b.input("x", DType::kF32, {Dim::sym("batch"), 3, 8, 8}).input("g", DType::kF32, {Dim::sym("batch"), 4, 5, 2})
        .node("GridSample", {"x", "g"}, {"y"}, {}, "gs");
    EXPECT_EQ(inferred(b.m, "y"), "f32[batch,3,4,5]");
  }
  {
    ModelBuilder b(16);
    b.input("x", DType::kF32, {1, 3, 8, 8}).input("g", DType::kF32, {1, 4, 5, 3})
        .node("GridSample", {"x", "g"}, {"y"}, {}, "gs");
    expect_error(b.m, {}, {"gs", "last dimension of grid must be 2"});
  }
  {
    ModelBuilder b(16);
    b.input("x", DType::kF32, {1, 3, 2, 8, 8}).input("g", DType::kF32, {1, 2, 4, 5, 3})
        .node("GridSample", {"x", "g"}, {"y"}, {}, "gs");
    expect_error(b.m, {}, {"gs", "opset 16", "X must have rank 4"});
  }
  {
    ModelBuilder b(20);
    b.input("x", DType::kF32, {1, 1, 2, 2}).input("g", DType::kF32, {1, 1, 1, 2})
        .node("GridSample", {"x", "g"}, {"y"}, {{"padding_mode", s("wrap")}}, "gs");
    expect_error(b.m, {}, {"gs", "padding_mode", "'wrap'"});
  }
}

// ---- Unique

TEST(Unique, UnsortedSpecExampleAndInference) {
  ModelBuilder b(11);
  b.input("x", DType::kI64, {6}).node("Unique", {"x"}, {"y", "idx", "inv", "cnt"}, {{"sorted", i(0)}}, "u");
  EXPECT_EQ(inferred(b.m, "y"), "i64[?]");
  EXPECT_EQ(inferred(b.m, "inv"), "i64[6]");
  // Large values that doubles could not tell apart must stay distinct.
  const int64_t big = (int64_t{1} << 60);
  auto out = run(b.m, {{"x", Tensor::from_vector<int64_t>({6}, {big + 2, big + 1, big + 1, 3, 4, 3})}});
  EXPECT_EQ(out["y"].to_int64_vector(), (std::vector<int64_t>{big + 2, big + 1, 3, 4}));
  EXPECT_EQ(out["idx"].to_int64_vector(), (std::vector<int64_t>{0, 1, 3, 4}));
  EXPECT_EQ(out["inv"].to_int64_vector(), (std::vector<int64_t>{0, 1, 1, 2, 3, 2}));
  EXPECT_EQ(out["cnt"].to_int64_vector(), (std::vector<int64_t>{1, 2, 2, 1}));
}

TEST(Unique, AxisKeepsOtherDimsSymbolic) {
  ModelBuilder b(11);
  b.input("x", DType::kF32, {Dim::sym("batch"), 4}).node("Unique", {"x"}, {"y", "", "inv"}, {{"axis", i(1)}}, "u");
  EXPECT_EQ(inferred(b.m, "y"), "f32[batch,?]");
  EXPECT_EQ(inferred(b.m, "inv"), "i64[4]");
  // Columns [1,1], [0,1], [1,1], [0,0]: sorted unique columns [0,0], [0,1], [1,1].
  auto out = run(b.m, {{"x", Tensor::from_vector<float>({2, 4}, {1, 0, 1, 0, 1, 1, 1, 0})}});
  expect_values(out["y"], {2, 3}, {0, 0, 1, 0, 1, 1});
  EXPECT_EQ(out["inv"].to_int64_vector(), (std::vector<int64_t>{2, 1, 2, 0}));
}

TEST(Unique, BadAxisFails) {
  ModelBuilder b(11);
  b.input("x", DType::kF32, {2, 4}).node("Unique", {"x"}, {"y"}, {{"axis", i(2)}}, "u");
  expect_error(b.m, {}, {"u", "axis"});
}

// ---- Det

TEST(Det, ValuesWithPivotingAndBatchSymbol) {
  ModelBuilder b(11);
  b.input("x", DType::kF64, {Dim::sym("batch"), 3, 3}).node("Det", {"x"}, {"d"}, {}, "det");
  EXPECT_EQ(inferred(b.m, "d"), "f64[batch]");
  // A row swap (-1), a diagonal matrix (2*3*4 = 24) and a singular matrix.
  Tensor x = Tensor::from_vector<double>({3, 3, 3}, {0, 1, 0, 1, 0, 0, 0, 0, 1,  //
                                                     2, 0, 0, 0, 3, 0, 0, 0, 4,  //
                                                     1, 2, 3, 2, 4, 6, 0, 1, 1});
  auto out = run(b.m, {{"x", x}});
  expect_values(out["d"], {3}, {-1, 24, 0}, 1e-12);
}

TEST(Det, NonSquareFails) {
  ModelBuilder b(11);
  b.input("x", DType::kF32, {2, 3}).node("Det", {"x"}, {"d"}, {}, "det");
  expect_error(b.m, {}, {"det", "square"});
}

// ---- Windows

TEST(Window, HandCheckedValues) {
  ModelBuilder b(17);
  b.init("four", Tensor::scalar<int64_t>(4)).init("five", Tensor::scalar<int32_t>(5))
      .init("three", Tensor::scalar<int64_t>(3)).init("two", Tensor::scalar<int64_t>(2))
      .node("HannWindow", {"four"}, {"hann_p"}, {}, "hp")
      .node("HannWindow", {"five"}, {"hann_s"}, {{"periodic", i(0)}}, "hs")
      .node("BlackmanWindow", {"three"}, {"black_s"}, {{"periodic", i(0)}, {"output_datatype", i(11)}}, "bs")
      .node("HammingWindow", {"two"}, {"hamm_p"}, {}, "mp");
  auto out = run(b.m, {});
  expect_values(out["hann_p"], {4}, {0, 0.5, 1, 0.5});
  expect_values(out["hann_s"], {5}, {0, 0.5, 1, 0.5, 0});
  EXPECT_EQ(out["black_s"].dtype(), DType::kF64);
  expect_values(out["black_s"], {3}, {0, 1, 0}, 1e-12);
  expect_values(out["hamm_p"], {2}, {4.0 / 46.0, 1.0});
}

TEST(Window, RuntimeSizeAndErrors) {
  {
    ModelBuilder b(17);
    b.input("n", DType::kI64, {}).node("HannWindow", {"n"}, {"w"}, {{"output_datatype", i(10)}}, "w");
    EXPECT_EQ(inferred(b.m, "w"), "f16[?]");
    auto out = run(b.m, {{"n", Tensor::scalar<int64_t>(2)}});
    expect_values(out["w"], {2}, {0, 1});
  }
  {
    ModelBuilder b(17);
    b.init("n", Tensor::scalar<int64_t>(0)).node("HannWindow", {"n"}, {"w"}, {}, "w");
    expect_error(b.m, {}, {"'w'", "size must be greater than 0"});
  }
  {
    ModelBuilder b(17);
    b.init("n", Tensor::scalar<int64_t>(4)).node("HannWindow", {"n"}, {"w"}, {{"output_datatype", i(8)}}, "w");
    expect_error(b.m, {}, {"'w'", "output_datatype"});
  }
}

// ---- RoiAlign

TEST(RoiAlign, AvgAndMaxOnALinearRamp) {
  // X[h][w] = w on a 4x4 map, RoI [0,0,4,4], one 1x1 bin with 2x2 samples: bilinear sampling of a ramp
  // is exact, so avg = mean of the sample x positions and max = the largest one.
  Tensor x(DType::kF32, {1, 1, 4, 4});
  for (int64_t k = 0; k < 16; ++k) x.mutable_data<float>()[k] = static_cast<float>(k % 4);
  auto model = [](int64_t opset, const char* mode) {
    ModelBuilder b(opset);
    b.input("x", DType::kF32, {1, 1, 4, 4}).input("r", DType::kF32, {1, 4}).input("i", DType::kI64, {1})
        .node("RoiAlign", {"x", "r", "i"}, {"y"}, {{"sampling_ratio", i(2)}, {"mode", s(mode)}}, "roi");
    return b.m;
  };
  reference::TensorMap in = {{"x", x}, {"r", Tensor::from_vector<float>({1, 4}, {0, 0, 4, 4})},
                             {"i", Tensor::from_vector<int64_t>({1}, {0})}};
  // Opset 10: no half-pixel shift, samples at x = 1 and 3.
  expect_values(run(model(10, "avg"), in)["y"], {1, 1, 1, 1}, {2});
  expect_values(run(model(10, "max"), in)["y"], {1, 1, 1, 1}, {3});
  // Opset 16 default half_pixel: samples at x = 0.5 and 2.5.
  expect_values(run(model(16, "avg"), in)["y"], {1, 1, 1, 1}, {1.5});
}

TEST(RoiAlign, InferenceAndErrors) {
  {
    ModelBuilder b(16);
    b.input("x", DType::kF32, {Dim::sym("batch"), 8, 16, 16}).input("r", DType::kF32, {Dim::sym("rois"), 4})
        .input("i", DType::kI64, {Dim::sym("rois")})
        .node("RoiAlign", {"x", "r", "i"}, {"y"}, {{"output_height", i(3)}, {"output_width", i(2)}}, "roi");
    EXPECT_EQ(inferred(b.m, "y"), "f32[rois,8,3,2]");
  }
  {
    ModelBuilder b(16);
    b.input("x", DType::kF32, {1, 1, 4, 4}).input("r", DType::kF32, {1, 4}).input("i", DType::kI64, {1})
        .node("RoiAlign", {"x", "r", "i"}, {"y"}, {}, "roi");
    expect_error(b.m,
                 {{"x", Tensor(DType::kF32, {1, 1, 4, 4})}, {"r", Tensor::from_vector<float>({1, 4}, {0, 0, 1, 1})},
                  {"i", Tensor::from_vector<int64_t>({1}, {1})}},
                 {"roi", "batch_indices[0] = 1", "out of range"});
  }
  {
    ModelBuilder b(16);
    b.input("x", DType::kF32, {1, 1, 4, 4}).input("r", DType::kF32, {1, 4}).input("i", DType::kI64, {1})
        .node("RoiAlign", {"x", "r", "i"}, {"y"}, {{"coordinate_transformation_mode", s("asymmetric")}}, "roi");
    expect_error(b.m, {}, {"roi", "coordinate_transformation_mode"});
  }
}

// ---- Random generators

TEST(Random, DtypeShapeRangeAndSeed) {
  ModelBuilder b(17);
  b.input("x", DType::kF32, {Dim::sym("batch"), 3})
      .node("RandomUniform", {}, {"u"},
            {{"shape", Attribute::of_ints({2, 3})}, {"dtype", i(11)}, {"low", Attribute::of_float(2)},
             {"high", Attribute::of_float(3)}, {"seed", Attribute::of_float(7)}},
            "u")
      .node("RandomNormalLike", {"x"}, {"n"}, {{"dtype", i(10)}}, "n")
      .node("RandomUniformLike", {"x"}, {"ul"}, {}, "ul");
  EXPECT_EQ(inferred(b.m, "u"), "f64[2,3]");
  EXPECT_EQ(inferred(b.m, "n"), "f16[batch,3]");
  EXPECT_EQ(inferred(b.m, "ul"), "f32[batch,3]");
  auto a = run(b.m, {{"x", Tensor(DType::kF32, {4, 3})}});
  auto c = run(b.m, {{"x", Tensor(DType::kF32, {4, 3})}});
  EXPECT_EQ(a["n"].shape(), (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(a["n"].dtype(), DType::kF16);
  for (double v : a["u"].to_double_vector()) {
    EXPECT_GE(v, 2.0);
    EXPECT_LT(v, 3.0);
  }
  EXPECT_EQ(a["u"].to_double_vector(), c["u"].to_double_vector());  // same seed, same values
}

TEST(Random, BernoulliExtremesAndErrors) {
  {
    ModelBuilder b(15);
    b.input("p", DType::kF32, {4}).node("Bernoulli", {"p"}, {"y"}, {{"dtype", i(9)}}, "b");
    auto out = run(b.m, {{"p", Tensor::from_vector<float>({4}, {0, 1, 1, 0})}});
    EXPECT_EQ(out["y"].dtype(), DType::kBool);
    expect_values(out["y"], {4}, {0, 1, 1, 0});
  }
  {
    ModelBuilder b(15);
    b.input("p", DType::kF32, {2}).node("Bernoulli", {"p"}, {"y"}, {}, "b");
    expect_error(b.m, {{"p", Tensor::from_vector<float>({2}, {0.5f, 1.5f})}}, {"'b'", "input[1]", "[0, 1]"});
  }
  {
    ModelBuilder b(15);
    b.input("x", DType::kI32, {2}).node("RandomNormalLike", {"x"}, {"y"}, {}, "rn");
    expect_error(b.m, {}, {"'rn'", "i32", "dtype attribute"});
  }
}
