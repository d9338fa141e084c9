// Softmax family, reductions, ArgMax/ArgMin, TopK, CumSum, Einsum and NonMaxSuppression: opset 18+
// forms, symbolic-shape inference, edge cases the ONNX suite lacks, and error reporting.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

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
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isinf(want[i])) EXPECT_EQ(got[i], want[i]) << "element " << i;
    else EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
  }
}

// Runs the model expecting a kiln::Error whose message contains every one of `parts`.
void expect_error(const Model& m, const reference::TensorMap& inputs, const std::vector<std::string>& parts) {
  try {
    reference::Executor exec(m);
    exec.run(inputs);
    FAIL() << "no error";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

Tensor iota_f32(std::vector<int64_t> shape) {
  Tensor t(DType::kF32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = static_cast<float>(i);
  return t;
}

constexpr double kInf = std::numeric_limits<double>::infinity();

}  // namespace

// ---- Reductions

TEST(Reduce, Opset18AxesInputAndKeepdims) {
  // x = [[0,1,2],[3,4,5]]; sums over axis 1: 3, 12; means over axis 0: 1.5, 2.5, 3.5.
  ModelBuilder b(18);
  b.input("x", DType::kF32, {2, 3}).init("a1", Tensor::from_vector<int64_t>({1}, {1}))
      .init("a0", Tensor::from_vector<int64_t>({1}, {-2}))
      .node("ReduceSum", {"x", "a1"}, {"s"}, {{"keepdims", Attribute::of_int(0)}}, "sum")
      .node("ReduceMean", {"x", "a0"}, {"m"}, {}, "mean")
      .node("ReduceSumSquare", {"x", "a1"}, {"q"}, {}, "sq")
      .node("ReduceL1", {"x"}, {"l1"}, {{"keepdims", Attribute::of_int(0)}}, "l1");
  auto out = run(b.m, {{"x", iota_f32({2, 3})}});
  expect_values(out["s"], {2}, {3, 12});
  expect_values(out["m"], {1, 3}, {1.5, 2.5, 3.5});
  expect_values(out["q"], {2, 1}, {5, 50});
  expect_values(out["l1"], {}, {15});
}

TEST(Reduce, EmptyAxesReduceAllOrNothing) {
  ModelBuilder b(18);
  b.input("x", DType::kF32, {2, 2}).init("none", Tensor(DType::kI64, {0}))
      .node("ReduceMax", {"x", "none"}, {"all"}, {}, "all")
      .node("ReduceProd", {"x", "none"}, {"noop"}, {{"noop_with_empty_axes", Attribute::of_int(1)}}, "noop")
      .node("ReduceMin", {"x", ""}, {"omitted"}, {{"noop_with_empty_axes", Attribute::of_int(1)}}, "omitted");
  Tensor x = Tensor::from_vector<float>({2, 2}, {3, -1, 7, 2});
  auto out = run(b.m, {{"x", x}});
  expect_values(out["all"], {1, 1}, {7});
  expect_values(out["noop"], {2, 2}, {3, -1, 7, 2});
  expect_values(out["omitted"], {2, 2}, {3, -1, 7, 2});
}

TEST(Reduce, OverZeroSizeDims) {
  // Reducing axis 1 of a [2,0,3] tensor: every output element reduces an empty set.
  ModelBuilder b(18);
  b.input("x", DType::kF32, {2, 0, 3}).init("a", Tensor::from_vector<int64_t>({1}, {1}));
  const char* ops[] = {"ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceLogSumExp", "ReduceLogSum",
                       "ReduceL2"};
  for (const char* op : ops) b.node(op, {"x", "a"}, {op}, {}, op);
  auto out = run(b.m, {{"x", Tensor(DType::kF32, {2, 0, 3})}});
  expect_values(out["ReduceMax"], {2, 1, 3}, std::vector<double>(6, -kInf));
  expect_values(out["ReduceMin"], {2, 1, 3}, std::vector<double>(6, kInf));
  expect_values(out["ReduceSum"], {2, 1, 3}, std::vector<double>(6, 0));
  expect_values(out["ReduceProd"], {2, 1, 3}, std::vector<double>(6, 1));
  expect_values(out["ReduceLogSumExp"], {2, 1, 3}, std::vector<double>(6, -kInf));
  expect_values(out["ReduceLogSum"], {2, 1, 3}, std::vector<double>(6, -kInf));
  expect_values(out["ReduceL2"], {2, 1, 3}, std::vector<double>(6, 0));

  // Integers have no infinity: the extreme values of the type stand in.
  ModelBuilder bi(13);
  bi.input("x", DType::kI32, {0, 2})
      .node("ReduceMax", {"x"}, {"mx"}, {{"axes", Attribute::of_ints({0})}}, "mx")
      .node("ReduceMin", {"x"}, {"mn"}, {{"axes", Attribute::of_ints({0})}, {"keepdims", Attribute::of_int(0)}}, "mn");
  auto oi = run(bi.m, {{"x", Tensor(DType::kI32, {0, 2})}});
  EXPECT_EQ(oi["mx"].to_int64_vector(), (std::vector<int64_t>{INT32_MIN, INT32_MIN}));
  EXPECT_EQ(oi["mn"].shape(), (std::vector<int64_t>{2}));
  EXPECT_EQ(oi["mn"].to_int64_vector(), (std::vector<int64_t>{INT32_MAX, INT32_MAX}));

  // A zero-size non-reduced axis gives an empty output.
  ModelBuilder bz(13);
  bz.input("x", DType::kF32, {0, 3}).node("ReduceSum", {"x"}, {"y"});
  EXPECT_EQ(run(bz.m, {{"x", Tensor(DType::kF32, {0, 3})}})["y"].shape(), (std::vector<int64_t>{1, 1}));
}

TEST(Reduce, IntegerAndBoolInputs) {
  ModelBuilder b(20);
  b.input("x", DType::kI32, {2, 3}).input("m", DType::kBool, {2, 2})
      .node("ReduceMean", {"x"}, {"mean"}, {{"keepdims", Attribute::of_int(0)}}, "mean")
      .node("ReduceL2", {"x"}, {"l2"}, {{"keepdims", Attribute::of_int(0)}}, "l2")
      .node("ReduceL1", {"x"}, {"l1"}, {{"keepdims", Attribute::of_int(0)}}, "l1")
      .node("ReduceMax", {"m"}, {"any"}, {{"keepdims", Attribute::of_int(0)}}, "any")
      .node("ReduceMin", {"m"}, {"all"}, {{"keepdims", Attribute::of_int(0)}}, "all");
  Tensor x = Tensor::from_vector<int32_t>({2, 3}, {1, -2, 3, 4, 5, 6});
  Tensor m = Tensor::from_vector<bool>({2, 2}, {true, false, true, true});
  auto out = run(b.m, {{"x", x}, {"m", m}});
  EXPECT_EQ(out["mean"].dtype(), DType::kI32);
  EXPECT_EQ(out["mean"].to_int64_vector(), std::vector<int64_t>{2});  // 17 / 6 truncated
  EXPECT_EQ(out["l2"].to_int64_vector(), std::vector<int64_t>{9});    // sqrt(91) = 9.54 truncated
  EXPECT_EQ(out["l1"].to_int64_vector(), std::vector<int64_t>{21});
  EXPECT_EQ(out["any"].to_int64_vector(), std::vector<int64_t>{1});
  EXPECT_EQ(out["all"].to_int64_vector(), std::vector<int64_t>{0});
}

TEST(Reduce, LogSumExpIsStableForLargeInputs) {
  ModelBuilder b(13);
  b.input("x", DType::kF32, {3}).node("ReduceLogSumExp", {"x"}, {"y"});
  auto out = run(b.m, {{"x", Tensor::from_vector<float>({3}, {1000, 1000, -std::numeric_limits<float>::infinity()})}});
  expect_values(out["y"], {1}, {1000 + std::log(2.0)}, 1e-3);
}

TEST(Reduce, Float16ComputesInFloat) {
  ModelBuilder b(13);
  b.input("x", DType::kF16, {4}).node("ReduceSum", {"x"}, {"y"});
  Tensor x = Tensor::from_vector<Half>({4}, {Half(0.5f), Half(0.25f), Half(1024.0f), Half(-1024.0f)});
  expect_values(run(b.m, {{"x", x}})["y"], {1}, {0.75});
}

TEST(Reduce, InferenceKeepsSymbolicDims) {
  ModelBuilder b(18);
  b.input("x", DType::kF32, {Dim::sym("batch"), 3, Dim::sym("h"), 5})
      .init("a", Tensor::from_vector<int64_t>({2}, {1, -1}))
      .node("ReduceMean", {"x", "a"}, {"keep"}, {}, "keep")
      .node("ReduceMax", {"x", "a"}, {"drop"}, {{"keepdims", Attribute::of_int(0)}}, "drop");
  EXPECT_EQ(inferred(b.m, "keep"), "f32[batch,1,h,1]");
  EXPECT_EQ(inferred(b.m, "drop"), "f32[batch,h]");

  ModelBuilder old(13);
  old.input("x", DType::kF32, {Dim::sym("batch"), 3, 224, 224})
      .node("ReduceL2", {"x"}, {"y"}, {{"axes", Attribute::of_ints({2, 3})}, {"keepdims", Attribute::of_int(0)}});
  EXPECT_EQ(inferred(old.m, "y"), "f32[batch,3]");
  auto out = run(old.m, {{"x", Tensor(DType::kF32, {2, 3, 224, 224})}});
  EXPECT_EQ(out["y"].shape(), (std::vector<int64_t>{2, 3}));
}

TEST(Reduce, AxesFromAGraphInput) {
  // Axes known only at run time: keepdims keeps the rank, sizes other than 1 become unknown.
  ModelBuilder b(18);
  b.input("x", DType::kF32, {Dim::sym("batch"), 1, 4}).input("axes", DType::kI64, {1})
      .node("ReduceSum", {"x", "axes"}, {"keep"}, {}, "keep")
      .node("ReduceSum", {"x", "axes"}, {"drop"}, {{"keepdims", Attribute::of_int(0)}}, "drop");
  EXPECT_EQ(inferred(b.m, "keep"), "f32[?,1,?]");
  EXPECT_EQ(inferred(b.m, "drop"), "f32[?,?]");
  auto out = run(b.m, {{"x", iota_f32({2, 1, 4})}, {"axes", Tensor::from_vector<int64_t>({1}, {2})}});
  expect_values(out["keep"], {2, 1, 1}, {6, 22});
  expect_values(out["drop"], {2, 1}, {6, 22});
}

TEST(Reduce, ErrorsNameTheNode) {
  ModelBuilder dup(13);
  dup.input("x", DType::kF32, {2, 3}).node("ReduceMax", {"x"}, {"y"}, {{"axes", Attribute::of_ints({1, -1})}}, "rmax");
  expect_error(dup.m, {{"x", iota_f32({2, 3})}}, {"rmax", "ReduceMax", "listed twice"});

  ModelBuilder range(18);
  range.input("x", DType::kF32, {2, 3}).init("a", Tensor::from_vector<int64_t>({1}, {2}))
      .node("ReduceMean", {"x", "a"}, {"y"}, {}, "rmean");
  expect_error(range.m, {{"x", iota_f32({2, 3})}}, {"rmean", "out of range"});

  // Axes only known at run time: the kernel reports the bad axis.
  ModelBuilder late(18);
  late.input("x", DType::kF32, {2, 3}).input("a", DType::kI64, {1}).node("ReduceProd", {"x", "a"}, {"y"}, {}, "rprod");
  expect_error(late.m, {{"x", iota_f32({2, 3})}, {"a", Tensor::from_vector<int64_t>({1}, {-3})}},
               {"rprod", "axis -3 is out of range"});

  ModelBuilder type(13);
  type.input("x", DType::kBool, {2}).node("ReduceSum", {"x"}, {"y"}, {}, "rsum");
  expect_error(type.m, {{"x", Tensor::from_vector<bool>({2}, {true, false})}}, {"rsum", "bool"});
}

// ---- Softmax family

TEST(Softmax, Opset13UsesOneAxisAndOlderOpsetsFlatten) {
  // x: [1,2,2] = [[[0,1],[2,3]]], axis 1.
  Tensor x = iota_f32({1, 2, 2});
  const double e2 = std::exp(2.0);
  ModelBuilder b13(13);
  b13.input("x", DType::kF32, {1, 2, 2}).node("Softmax", {"x"}, {"y"}, {{"axis", Attribute::of_int(1)}});
  // Along axis 1 only: pairs (0,2) and (1,3).
  expect_values(run(b13.m, {{"x", x}})["y"], {1, 2, 2}, {1 / (1 + e2), 1 / (1 + e2), e2 / (1 + e2), e2 / (1 + e2)});

  ModelBuilder b11(11);
  b11.input("x", DType::kF32, {1, 2, 2}).node("Softmax", {"x"}, {"y"}, {{"axis", Attribute::of_int(1)}});
  // Coerced to [1, 4]: one softmax over all four values.
  const double s = 1 + std::exp(1.0) + e2 + std::exp(3.0);
  expect_values(run(b11.m, {{"x", x}})["y"], {1, 2, 2}, {1 / s, std::exp(1.0) / s, e2 / s, std::exp(3.0) / s});

  // Default axes differ: -1 at opset 13, 1 before.
  ModelBuilder d13(13), d12(12);
  d13.input("x", DType::kF32, {1, 2, 2}).node("LogSoftmax", {"x"}, {"y"});
  d12.input("x", DType::kF32, {1, 2, 2}).node("LogSoftmax", {"x"}, {"y"});
  const double l = std::log(1 + std::exp(1.0));
  expect_values(run(d13.m, {{"x", x}})["y"], {1, 2, 2}, {-l, 1 - l, -l, 1 - l});
  expect_values(run(d12.m, {{"x", x}})["y"], {1, 2, 2},
                {-std::log(s), 1 - std::log(s), 2 - std::log(s), 3 - std::log(s)});
}

TEST(Softmax, LargeValuesAndHardmaxTies) {
  ModelBuilder b(13);
  b.input("x", DType::kF32, {2, 3}).node("Softmax", {"x"}, {"s"}, {}, "s").node("Hardmax", {"x"}, {"h"}, {}, "h");
  Tensor x = Tensor::from_vector<float>({2, 3}, {1000, 1000, 0, 5, 7, 7});
  auto out = run(b.m, {{"x", x}});
  // Row [5,7,7]: e^5 / (e^5 + 2e^7) = e^-2 / (e^-2 + 2).
  const double d = std::exp(-2.0) + 2;
  expect_values(out["s"], {2, 3}, {0.5, 0.5, 0, std::exp(-2.0) / d, 1 / d, 1 / d});
  expect_values(out["h"], {2, 3}, {1, 0, 0, 0, 1, 0});  // the first maximum wins
}

TEST(Softmax, InferenceKeepsSymbolsAndChecksAxis) {
  ModelBuilder b(13);
  b.input("x", DType::kF32, {Dim::sym("batch"), 3, 224, 224})
      .node("Softmax", {"x"}, {"y"}, {{"axis", Attribute::of_int(1)}});
  EXPECT_EQ(inferred(b.m, "y"), "f32[batch,3,224,224]");

  ModelBuilder bad(13);
  bad.input("x", DType::kF32, {2, 3}).node("Softmax", {"x"}, {"y"}, {{"axis", Attribute::of_int(2)}}, "sm");
  expect_error(bad.m, {{"x", iota_f32({2, 3})}}, {"sm", "Softmax", "opset 13", "axis 2"});

  ModelBuilder ints(13);
  ints.input("x", DType::kI32, {2}).node("Softmax", {"x"}, {"y"}, {}, "smi");
  expect_error(ints.m, {{"x", Tensor::from_vector<int32_t>({2}, {1, 2})}}, {"smi", "i32"});
}

// ---- ArgMax / ArgMin

TEST(ArgMax, SelectLastIndexAndKeepdims) {
  ModelBuilder b(13);
  b.input("x", DType::kF32, {2, 3})
      .node("ArgMax", {"x"}, {"first"}, {{"axis", Attribute::of_int(1)}}, "first")
      .node("ArgMax", {"x"}, {"last"}, {{"axis", Attribute::of_int(1)}, {"select_last_index", Attribute::of_int(1)},
                                        {"keepdims", Attribute::of_int(0)}}, "last")
      .node("ArgMin", {"x"}, {"min"}, {}, "min");
  Tensor x = Tensor::from_vector<float>({2, 3}, {4, 9, 9, 1, 1, 0});
  auto out = run(b.m, {{"x", x}});
  EXPECT_EQ(out["first"].shape(), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(out["first"].to_int64_vector(), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(out["last"].shape(), (std::vector<int64_t>{2}));
  EXPECT_EQ(out["last"].to_int64_vector(), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(out["min"].to_int64_vector(), (std::vector<int64_t>{1, 1, 1}));  // axis 0 by default
}

TEST(ArgMax, InferenceAndEmptyAxis) {
  ModelBuilder b(13);
  b.input("x", DType::kI64, {Dim::sym("batch"), 10}).node("ArgMin", {"x"}, {"y"}, {{"axis", Attribute::of_int(-1)}});
  EXPECT_EQ(inferred(b.m, "y"), "i64[batch,1]");

  ModelBuilder e(13);
  e.input("x", DType::kF32, {2, Dim::sym("n")}).node("ArgMax", {"x"}, {"y"}, {{"axis", Attribute::of_int(1)}}, "am");
  expect_error(e.m, {{"x", Tensor(DType::kF32, {2, 0})}}, {"am", "size 0"});
}

// ---- TopK

TEST(TopK, TiesGoToTheLowerIndex) {
  ModelBuilder b(11);
  b.input("x", DType::kF32, {2, 4}).init("k", Tensor::from_vector<int64_t>({1}, {3}))
      .node("TopK", {"x", "k"}, {"v", "i"}, {}, "top")
      .node("TopK", {"x", "k"}, {"sv", "si"}, {{"largest", Attribute::of_int(0)}}, "bottom");
  Tensor x = Tensor::from_vector<float>({2, 4}, {1, 3, 3, 2, 5, 5, 5, 5});
  auto out = run(b.m, {{"x", x}});
  expect_values(out["v"], {2, 3}, {3, 3, 2, 5, 5, 5});
  EXPECT_EQ(out["i"].to_int64_vector(), (std::vector<int64_t>{1, 2, 3, 0, 1, 2}));
  expect_values(out["sv"], {2, 3}, {1, 2, 3, 5, 5, 5});
  EXPECT_EQ(out["si"].to_int64_vector(), (std::vector<int64_t>{0, 3, 1, 0, 1, 2}));
}

TEST(TopK, KAttributeBeforeOpset10AndAxis0) {
  ModelBuilder b(9);
  b.input("x", DType::kI32, {3, 2})
      .node("TopK", {"x"}, {"v", "i"}, {{"k", Attribute::of_int(2)}, {"axis", Attribute::of_int(0)}});
  auto out = run(b.m, {{"x", Tensor::from_vector<int32_t>({3, 2}, {1, 6, 4, 5, 2, 9})}});
  EXPECT_EQ(out["v"].dtype(), DType::kI32);
  EXPECT_EQ(out["v"].to_int64_vector(), (std::vector<int64_t>{4, 9, 2, 6}));
  EXPECT_EQ(out["i"].to_int64_vector(), (std::vector<int64_t>{1, 2, 2, 0}));
}

TEST(TopK, InferenceAndErrors) {
  ModelBuilder b(11);
  b.input("x", DType::kF32, {Dim::sym("batch"), 10}).init("k", Tensor::from_vector<int64_t>({1}, {4}))
      .node("TopK", {"x", "k"}, {"v", "i"});
  EXPECT_EQ(inferred(b.m, "v"), "f32[batch,4]");
  EXPECT_EQ(inferred(b.m, "i"), "i64[batch,4]");

  ModelBuilder dyn(11);
  dyn.input("x", DType::kF32, {Dim::sym("batch"), 10})
      .input("k", DType::kI64, {1})
      .node("TopK", {"x", "k"}, {"v", "i"}, {}, "tk");
  EXPECT_EQ(inferred(dyn.m, "v"), "f32[batch,?]");
  expect_error(dyn.m, {{"x", iota_f32({2, 10})}, {"k", Tensor::from_vector<int64_t>({1}, {11})}}, {"tk", "k = 11"});
  expect_error(dyn.m, {{"x", iota_f32({2, 10})}, {"k", Tensor::from_vector<int64_t>({1}, {-1})}}, {"tk", "k = -1"});

  ModelBuilder big(11);
  big.input("x", DType::kF32, {2, 3})
      .init("k", Tensor::from_vector<int64_t>({1}, {5}))
      .node("TopK", {"x", "k"}, {"v", "i"}, {}, "tk5");
  expect_error(big.m, {{"x", iota_f32({2, 3})}}, {"tk5", "larger than axis"});
}

// ---- CumSum

TEST(CumSum, ExclusiveReverseAndAxisInput) {
  ModelBuilder b(14);
  b.input("x", DType::kF64, {2, 3})
      .init("ax", Tensor::scalar<int32_t>(1))
      .init("a0", Tensor::scalar<int64_t>(-2))
      .node("CumSum", {"x", "ax"}, {"plain"}, {}, "plain")
      .node("CumSum", {"x", "ax"}, {"ex"}, {{"exclusive", Attribute::of_int(1)}}, "ex")
      .node("CumSum", {"x", "ax"}, {"rev"}, {{"reverse", Attribute::of_int(1)}}, "rev")
      .node("CumSum", {"x", "ax"}, {"both"}, {{"reverse", Attribute::of_int(1)}, {"exclusive", Attribute::of_int(1)}},
            "both")
      .node("CumSum", {"x", "a0"}, {"down"}, {}, "down");
  Tensor x = Tensor::from_vector<double>({2, 3}, {1, 2, 3, 4, 5, 6});
  auto out = run(b.m, {{"x", x}});
  expect_values(out["plain"], {2, 3}, {1, 3, 6, 4, 9, 15});
  expect_values(out["ex"], {2, 3}, {0, 1, 3, 0, 4, 9});
  expect_values(out["rev"], {2, 3}, {6, 5, 3, 15, 11, 6});
  expect_values(out["both"], {2, 3}, {5, 3, 0, 11, 6, 0});
  expect_values(out["down"], {2, 3}, {1, 2, 3, 5, 7, 9});
}

TEST(CumSum, IntegersSymbolsAndErrors) {
  ModelBuilder b(14);
  b.input("x", DType::kI64, {Dim::sym("n")}).init("ax", Tensor::from_vector<int64_t>({1}, {0}))
      .node("CumSum", {"x", "ax"}, {"y"});
  EXPECT_EQ(inferred(b.m, "y"), "i64[n]");
  EXPECT_EQ(run(b.m, {{"x", Tensor::from_vector<int64_t>({3}, {5, -2, 7})}})["y"].to_int64_vector(),
            (std::vector<int64_t>{5, 3, 10}));

  ModelBuilder bad(14);
  bad.input("x", DType::kF32, {3}).input("ax", DType::kF32, {}).node("CumSum", {"x", "ax"}, {"y"}, {}, "cs");
  expect_error(bad.m, {{"x", iota_f32({3})}, {"ax", Tensor::scalar<float>(0)}}, {"cs", "axis input has dtype f32"});
}

// ---- Einsum

TEST(Einsum, TracesDiagonalsAndImplicitOutput) {
  // m = [[0,1,2],[3,4,5],[6,7,8]]
  ModelBuilder b(12);
  b.input("m", DType::kF32, {3, 3})
      .node("Einsum", {"m"}, {"trace"}, {{"equation", Attribute::of_string("ii")}}, "trace")
      .node("Einsum", {"m"}, {"diag"}, {{"equation", Attribute::of_string("ii->i")}}, "diag")
      .node("Einsum", {"m"}, {"t"}, {{"equation", Attribute::of_string("ji")}}, "t")  // implicit "ij": a transpose
      .node("Einsum", {"m"}, {"rows"}, {{"equation", Attribute::of_string("ij -> i")}}, "rows");
  auto out = run(b.m, {{"m", iota_f32({3, 3})}});
  expect_values(out["trace"], {}, {12});
  expect_values(out["diag"], {3}, {0, 4, 8});
  expect_values(out["t"], {3, 3}, {0, 3, 6, 1, 4, 7, 2, 5, 8});
  expect_values(out["rows"], {3}, {3, 12, 21});
}

TEST(Einsum, ThreeOperandsAndBroadcastEllipsis) {
  // a: [2,3] iota, b: [3] = [1,1,1], c: [2] = [1,2]; "ij,j,i->" = sum_i c_i * sum_j a_ij = 1*3 + 2*12 = 27.
  ModelBuilder b(12);
  b.input("a", DType::kF32, {2, 3}).input("b", DType::kF32, {3}).input("c", DType::kF32, {2})
      .node("Einsum", {"a", "b", "c"}, {"s"}, {{"equation", Attribute::of_string("ij,j,i->")}});
  auto out = run(b.m, {{"a", iota_f32({2, 3})}, {"b", Tensor::from_vector<float>({3}, {1, 1, 1})},
                       {"c", Tensor::from_vector<float>({2}, {1, 2})}});
  expect_values(out["s"], {}, {27});

  // Batched matmul whose batch dims broadcast: x [2,1,2,2] @ y [3,2,1] -> [2,3,2,1].
  ModelBuilder mm(12);
  mm.input("x", DType::kF32, {2, 1, 2, 2}).input("y", DType::kF32, {3, 2, 1})
      .node("Einsum", {"x", "y"}, {"z"}, {{"equation", Attribute::of_string("...ij,...jk->...ik")}});
  Tensor y = Tensor::from_vector<float>({3, 2, 1}, {1, 0, 0, 1, 1, 1});
  auto o = run(mm.m, {{"x", iota_f32({2, 1, 2, 2})}, {"y", y}});
  // For batch b and y-batch k: column 0 of x_b, column 1 of x_b, then row sums of x_b.
  expect_values(o["z"], {2, 3, 2, 1}, {0, 2, 1, 3, 1, 5, 4, 6, 5, 7, 9, 13});
}

TEST(Einsum, IntegerInputsAndInference) {
  ModelBuilder b(12);
  b.input("a", DType::kI32, {Dim::sym("batch"), 2, 3}).input("b", DType::kI32, {3, Dim::sym("n")})
      .node("Einsum", {"a", "b"}, {"c"}, {{"equation", Attribute::of_string("bij,jk->bik")}});
  EXPECT_EQ(inferred(b.m, "c"), "i32[batch,2,n]");
  Tensor a = Tensor::from_vector<int32_t>({1, 2, 3}, {1, 2, 3, 4, 5, 6});
  Tensor bb = Tensor::from_vector<int32_t>({3, 1}, {1, -1, 2});
  EXPECT_EQ(run(b.m, {{"a", a}, {"b", bb}})["c"].to_int64_vector(), (std::vector<int64_t>{5, 11}));

  ModelBuilder e(12);
  e.input("a", DType::kF32, {Dim::sym("batch"), 4, 5}).input("b", DType::kF32, {Dim::sym("batch"), 5})
      .node("Einsum", {"a", "b"}, {"c"}, {{"equation", Attribute::of_string("...ij,...j")}});
  EXPECT_EQ(inferred(e.m, "c"), "f32[batch,4]");
}

TEST(Einsum, Errors) {
  auto model = [](const std::string& eq, Shape sa, Shape sb) {
    ModelBuilder b(12);
    b.input("a", DType::kF32, std::move(sa)).input("b", DType::kF32, std::move(sb))
        .node("Einsum", {"a", "b"}, {"c"}, {{"equation", Attribute::of_string(eq)}}, "ein");
    return b.m;
  };
  const reference::TensorMap in = {{"a", iota_f32({2, 3})}, {"b", iota_f32({2, 3})}};
  expect_error(model("ij,jk->ik", {2, 3}, {2, 3}), in, {"ein", "Einsum", "label 'j'"});
  expect_error(model("ij->ij", {2, 3}, {2, 3}), in, {"ein", "1 operand terms", "2 inputs"});
  expect_error(model("ij,ij->iq", {2, 3}, {2, 3}), in, {"ein", "'q' does not appear"});
  expect_error(model("ij,ij->ii", {2, 3}, {2, 3}), in, {"ein", "more than once"});
  expect_error(model("i1,ij", {2, 3}, {2, 3}), in, {"ein", "invalid character '1'"});
  expect_error(model("ijk,ij", {2, 3}, {2, 3}), in, {"ein", "rank 2"});
}

// ---- NonMaxSuppression

TEST(NonMaxSuppression, SelectsGreedilyPerClass) {
  // Boxes 0 and 1 overlap with IOU 0.81 (corner format, box 1 given with flipped corners);
  // box 2 is far away. Class 0 prefers box 1, class 1 prefers box 0.
  ModelBuilder b(11);
  b.input("boxes", DType::kF32, {1, 3, 4}).input("scores", DType::kF32, {1, 2, 3})
      .init("max", Tensor::from_vector<int64_t>({1}, {5})).init("iou", Tensor::from_vector<float>({1}, {0.5f}))
      .init("thr", Tensor::from_vector<float>({1}, {0.1f}))
      .node("NonMaxSuppression", {"boxes", "scores", "max", "iou", "thr"}, {"sel"});
  Tensor boxes = Tensor::from_vector<float>({1, 3, 4}, {0, 0, 10, 10, 10, 10, 1, 1, 20, 20, 30, 30});
  Tensor scores = Tensor::from_vector<float>({1, 2, 3}, {0.5f, 0.9f, 0.3f, 0.8f, 0.7f, 0.05f});
  EXPECT_EQ(inferred(b.m, "sel"), "i64[?,3]");
  auto out = run(b.m, {{"boxes", boxes}, {"scores", scores}});
  EXPECT_EQ(out["sel"].shape(), (std::vector<int64_t>{3, 3}));
  // Class 1's box 2 scores 0.05, below the 0.1 threshold.
  EXPECT_EQ(out["sel"].to_int64_vector(), (std::vector<int64_t>{0, 0, 1, 0, 0, 2, 0, 1, 0}));
}

TEST(NonMaxSuppression, MaxOutputDefaultsToNone) {
  ModelBuilder b(10);
  b.input("boxes", DType::kF32, {1, 1, 4}).input("scores", DType::kF32, {1, 1, 1})
      .node("NonMaxSuppression", {"boxes", "scores"}, {"sel"});
  auto out = run(b.m, {{"boxes", Tensor::from_vector<float>({1, 1, 4}, {0, 0, 1, 1})},
                       {"scores", Tensor::from_vector<float>({1, 1, 1}, {0.9f})}});
  EXPECT_EQ(out["sel"].shape(), (std::vector<int64_t>{0, 3}));
}
