// RNN, GRU, LSTM, DFT, STFT and MelWeightMatrix: hand-computed values, layouts, sequence lengths,
// opset 20 DFT forms, symbolic-shape inference and error reporting.
#include <gtest/gtest.h>

#include <cmath>

#include "backends/reference/executor.h"
#include "test_support.h"

using namespace kiln;

namespace {

using kiln_test::ModelBuilder;

reference::TensorMap run(const Model& m, reference::TensorMap inputs = {}) {
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

Tensor f32(std::vector<int64_t> shape, std::vector<float> v) { return Tensor::from_vector<float>(std::move(shape), v); }
Tensor i64(int64_t v) { return Tensor::scalar<int64_t>(v); }
Attribute ai(int64_t v) { return Attribute::of_int(v); }
Attribute af(float v) { return Attribute::of_float(v); }
Attribute afs(std::vector<float> v) { return Attribute::of_floats(std::move(v)); }
Attribute as(std::string v) { return Attribute::of_string(std::move(v)); }
Attribute astrs(std::vector<std::string> v) {
  Attribute a;
  a.kind = AttrKind::kStrings;
  a.strings = std::move(v);
  return a;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

// ---- RNN

TEST(Rnn, BidirectionalWithSequenceLens) {
  // Affine(1, 0) is the identity, W = R = 1: h_t = x_t + h_{t-1}. Batch 0 has length 2, so its
  // step 2 is skipped; the reverse direction starts at the last valid step.
  // x[t][b]: batch 0 = 1, 2, 3; batch 1 = 10, 20, 30.
  ModelBuilder b(14);
  b.input("X", DType::kF32, {3, 2, 1})
      .init("W", f32({2, 1, 1}, {1, 1}))
      .init("R", f32({2, 1, 1}, {1, 1}))
      .init("L", Tensor::from_vector<int32_t>({2}, {2, 3}))
      .node("RNN", {"X", "W", "R", "", "L"}, {"Y", "Y_h"},
            {{"direction", as("bidirectional")}, {"hidden_size", ai(1)}, {"activations", astrs({"Affine", "Affine"})},
             {"activation_alpha", afs({1, 1})}, {"activation_beta", afs({0, 0})}});
  auto out = run(b.m, {{"X", f32({3, 2, 1}, {1, 10, 2, 20, 3, 30})}});
  // Y[t][d][b]: forward 1,3,(0) and 10,30,60; reverse (from the end) 3,2,(0) and 60,50,30.
  expect_values(out["Y"], {3, 2, 2, 1}, {1, 10, 3, 60, 3, 30, 2, 50, 0, 60, 0, 30});
  expect_values(out["Y_h"], {2, 2, 1}, {3, 60, 3, 60});

  // The same with layout = 1: X is [batch, seq, input], Y [batch, seq, dir, hidden], Y_h [batch, dir, hidden].
  ModelBuilder l(14);
  l.input("X", DType::kF32, {2, 3, 1})
      .init("W", f32({2, 1, 1}, {1, 1}))
      .init("R", f32({2, 1, 1}, {1, 1}))
      .init("L", Tensor::from_vector<int32_t>({2}, {2, 3}))
      .node("RNN", {"X", "W", "R", "", "L"}, {"Y", "Y_h"},
            {{"direction", as("bidirectional")}, {"layout", ai(1)}, {"activations", astrs({"Affine"})},
             {"activation_alpha", afs({1})}, {"activation_beta", afs({0})}});
  auto lo = run(l.m, {{"X", f32({2, 3, 1}, {1, 2, 3, 10, 20, 30})}});
  expect_values(lo["Y"], {2, 3, 2, 1}, {1, 3, 3, 2, 0, 0, 10, 60, 30, 50, 60, 30});
  expect_values(lo["Y_h"], {2, 2, 1}, {3, 3, 60, 60});
}

TEST(Rnn, Opset7ActivationParamsAndClip) {
  // Affine(2, 1): h_t = 2 (x_t + h_{t-1}) + 1 -> 3, 11. With clip 4 the pre-activation is clamped:
  // h1 = 2 * 1 + 1 = 3, h2 = 2 * min(2 + 3, 4) + 1 = 9.
  for (bool with_clip : {false, true}) {
    ModelBuilder b(7);
    std::map<std::string, Attribute> attrs = {
        {"activations", astrs({"Affine"})}, {"activation_alpha", afs({2})}, {"activation_beta", afs({1})}};
    if (with_clip) attrs["clip"] = af(4);
    b.input("X", DType::kF32, {2, 1, 1})
        .init("W", f32({1, 1, 1}, {1}))
        .init("R", f32({1, 1, 1}, {1}))
        .node("RNN", {"X", "W", "R"}, {"Y"}, attrs);
    auto out = run(b.m, {{"X", f32({2, 1, 1}, {1, 2})}});
    expect_values(out["Y"], {2, 1, 1, 1}, {3, with_clip ? 9.0 : 11.0});
  }
}

TEST(Rnn, ReverseDefaultTanhWithBiasAndInitialH) {
  // Reverse: step t = 1 first. h = tanh(x W + h R + Wb + Rb) with W = 0.5, R = -1, Wb + Rb = 0.1 + 0.2.
  ModelBuilder b(21);
  b.input("X", DType::kF64, {2, 1, 1})
      .init("W", Tensor::from_vector<double>({1, 1, 1}, {0.5}))
      .init("R", Tensor::from_vector<double>({1, 1, 1}, {-1}))
      .init("B", Tensor::from_vector<double>({1, 2}, {0.1, 0.2}))
      .init("H0", Tensor::from_vector<double>({1, 1, 1}, {0.4}))
      .node("RNN", {"X", "W", "R", "B", "", "H0"}, {"Y", "Y_h"}, {{"direction", as("reverse")}});
  auto out = run(b.m, {{"X", Tensor::from_vector<double>({2, 1, 1}, {1.0, 3.0})}});
  const double h1 = std::tanh(3.0 * 0.5 - 0.4 + 0.3);
  const double h0 = std::tanh(1.0 * 0.5 - h1 + 0.3);
  expect_values(out["Y"], {2, 1, 1, 1}, {h0, h1}, 1e-12);
  expect_values(out["Y_h"], {1, 1, 1}, {h0}, 1e-12);
}

TEST(Rnn, HalfPrecision) {
  // f16 in and out, computed in higher precision: h1 = tanh(0.5), h2 = tanh(1 + 0.5 h1).
  ModelBuilder b(14);
  b.input("X", DType::kF16, {2, 1, 1})
      .init("W", Tensor::from_vector<Half>({1, 1, 1}, {Half(1.0f)}))
      .init("R", Tensor::from_vector<Half>({1, 1, 1}, {Half(0.5f)}))
      .node("RNN", {"X", "W", "R"}, {"Y"});
  auto out = run(b.m, {{"X", Tensor::from_vector<Half>({2, 1, 1}, {Half(0.5f), Half(1.0f)})}});
  EXPECT_EQ(out["Y"].dtype(), DType::kF16);
  const double h1 = std::tanh(0.5);
  expect_values(out["Y"], {2, 1, 1, 1}, {h1, std::tanh(1.0 + 0.5 * h1)}, 1e-3);
}

// ---- GRU

TEST(Gru, LinearBeforeReset) {
  // One step, hidden 1: W = [z, r, h] = 0.1, 0.2, 0.3; R = 0.4, 0.5, 0.6; B = Wb (0.01, 0.02, 0.03),
  // Rb (0.04, 0.05, 0.06); x = 0.5, h0 = 0.7.
  const double x = 0.5, h = 0.7;
  const double z = sigmoid(0.1 * x + 0.4 * h + 0.01 + 0.04);
  const double r = sigmoid(0.2 * x + 0.5 * h + 0.02 + 0.05);
  const double ht_default = std::tanh(0.3 * x + (r * h) * 0.6 + 0.06 + 0.03);
  const double ht_linear = std::tanh(0.3 * x + r * (h * 0.6 + 0.06) + 0.03);
  for (int lbr : {0, 1}) {
    ModelBuilder b(14);
    b.input("X", DType::kF32, {1, 1, 1})
        .init("W", f32({1, 3, 1}, {0.1f, 0.2f, 0.3f}))
        .init("R", f32({1, 3, 1}, {0.4f, 0.5f, 0.6f}))
        .init("B", f32({1, 6}, {0.01f, 0.02f, 0.03f, 0.04f, 0.05f, 0.06f}))
        .init("H0", f32({1, 1, 1}, {0.7f}))
        .node("GRU", {"X", "W", "R", "B", "", "H0"}, {"", "Y_h"}, {{"linear_before_reset", ai(lbr)}});
    auto out = run(b.m, {{"X", f32({1, 1, 1}, {0.5f})}});
    const double ht = lbr ? ht_linear : ht_default;
    expect_values(out["Y_h"], {1, 1, 1}, {(1 - z) * ht + z * h});
  }
}

// ---- LSTM

TEST(Lstm, PeepholesAllOutputs) {
  // Gates i, o, f, c; peepholes i, o, f.
  const double x = 0.5, h = 0.9, c = -0.3;
  const double i = sigmoid(0.1 * x + 0.5 * h + 0.01 + 0.05 + 0.11 * c);
  const double f = sigmoid(0.3 * x + 0.7 * h + 0.03 + 0.07 + 0.33 * c);
  const double g = std::tanh(0.4 * x + 0.8 * h + 0.04 + 0.08);
  const double C = f * c + i * g;
  const double o = sigmoid(0.2 * x + 0.6 * h + 0.02 + 0.06 + 0.22 * C);
  const double H = o * std::tanh(C);
  ModelBuilder b(14);
  b.input("X", DType::kF32, {1, 1, 1})
      .init("W", f32({1, 4, 1}, {0.1f, 0.2f, 0.3f, 0.4f}))
      .init("R", f32({1, 4, 1}, {0.5f, 0.6f, 0.7f, 0.8f}))
      .init("B", f32({1, 8}, {0.01f, 0.02f, 0.03f, 0.04f, 0.05f, 0.06f, 0.07f, 0.08f}))
      .init("H0", f32({1, 1, 1}, {0.9f}))
      .init("C0", f32({1, 1, 1}, {-0.3f}))
      .init("P", f32({1, 3}, {0.11f, 0.22f, 0.33f}))
      .node("LSTM", {"X", "W", "R", "B", "", "H0", "C0", "P"}, {"Y", "Y_h", "Y_c"});
  auto out = run(b.m, {{"X", f32({1, 1, 1}, {0.5f})}});
  expect_values(out["Y"], {1, 1, 1, 1}, {H});
  expect_values(out["Y_h"], {1, 1, 1}, {H});
  expect_values(out["Y_c"], {1, 1, 1}, {C});
}

TEST(Lstm, InputForgetClipAndActivationParams) {
  // f = HardSigmoid(0.5, 0.5), g = Tanh, h = Affine(2, 0): the alpha/beta lists are consumed in
  // order by the functions that take them. input_forget couples f = 1 - i; clip 0.5 bounds the
  // pre-activations.
  auto clip = [](double v) { return std::fmax(-0.5, std::fmin(0.5, v)); };
  auto hs = [](double v) { return std::fmax(0.0, std::fmin(1.0, 0.5 * v + 0.5)); };
  const double x = 2.0, h = 0.9, c = -0.3;
  const double i = hs(clip(0.1 * x + 0.5 * h));
  const double g = std::tanh(clip(0.4 * x + 0.8 * h));
  const double C = (1 - i) * c + i * g;
  const double o = hs(clip(0.2 * x + 0.6 * h));
  const double H = o * (2 * C);
  ModelBuilder b(13);
  b.input("X", DType::kF32, {1, 1, 1})
      .init("W", f32({1, 4, 1}, {0.1f, 0.2f, 0.3f, 0.4f}))
      .init("R", f32({1, 4, 1}, {0.5f, 0.6f, 0.7f, 0.8f}))
      .init("H0", f32({1, 1, 1}, {0.9f}))
      .init("C0", f32({1, 1, 1}, {-0.3f}))
      .node("LSTM", {"X", "W", "R", "", "", "H0", "C0"}, {"", "Y_h", "Y_c"},
            {{"input_forget", ai(1)}, {"clip", af(0.5f)}, {"activations", astrs({"HardSigmoid", "Tanh", "Affine"})},
             {"activation_alpha", afs({0.5f, 2.0f})}, {"activation_beta", afs({0.5f, 0.0f})}});
  auto out = run(b.m, {{"X", f32({1, 1, 1}, {2.0f})}});
  expect_values(out["Y_h"], {1, 1, 1}, {H});
  expect_values(out["Y_c"], {1, 1, 1}, {C});
}

TEST(Lstm, PyTorchStyleExportKeepsSymbolicDims) {
  // As torch.onnx exports nn.LSTM(4, 3, bidirectional=True): weights as initializers, symbolic
  // seq/batch, initial states as graph inputs.
  ModelBuilder b(14);
  b.input("X", DType::kF32, {Dim::sym("seq"), Dim::sym("batch"), 4})
      .input("h0", DType::kF32, {2, Dim::sym("batch"), 3})
      .input("c0", DType::kF32, {2, Dim::sym("batch"), 3})
      .init("W", Tensor(DType::kF32, {2, 12, 4}))
      .init("R", Tensor(DType::kF32, {2, 12, 3}))
      .init("B", Tensor(DType::kF32, {2, 24}))
      .node("LSTM", {"X", "W", "R", "B", "", "h0", "c0"}, {"Y", "Y_h", "Y_c"},
            {{"direction", as("bidirectional")}, {"hidden_size", ai(3)}});
  EXPECT_EQ(inferred(b.m, "Y"), "f32[seq,2,batch,3]");
  EXPECT_EQ(inferred(b.m, "Y_h"), "f32[2,batch,3]");
  EXPECT_EQ(inferred(b.m, "Y_c"), "f32[2,batch,3]");
  // Zero weights: every gate is sigmoid(0) = 0.5 and c~ = 0, so C = 0.5 c0 and H = 0.5 tanh(C) per step.
  Tensor h0(DType::kF32, {2, 5, 3});
  Tensor c0 = f32({2, 5, 3}, std::vector<float>(30, 1.0f));
  auto out = run(b.m, {{"X", Tensor(DType::kF32, {7, 5, 4})}, {"h0", h0}, {"c0", c0}});
  EXPECT_EQ(out["Y"].shape(), (std::vector<int64_t>{7, 2, 5, 3}));
  const double C7 = std::pow(0.5, 7);
  expect_values(out["Y_c"], {2, 5, 3}, std::vector<double>(30, C7));
  expect_values(out["Y_h"], {2, 5, 3}, std::vector<double>(30, 0.5 * std::tanh(C7)));

  // layout = 1 swaps seq and batch in X, Y and the states.
  ModelBuilder l(14);
  l.input("X", DType::kF32, {Dim::sym("batch"), Dim::sym("seq"), 4})
      .init("W", Tensor(DType::kF32, {1, 12, 4}))
      .init("R", Tensor(DType::kF32, {1, 12, 3}))
      .node("LSTM", {"X", "W", "R"}, {"Y", "Y_h", "Y_c"}, {{"layout", ai(1)}});
  EXPECT_EQ(inferred(l.m, "Y"), "f32[batch,seq,1,3]");
  EXPECT_EQ(inferred(l.m, "Y_c"), "f32[batch,1,3]");

  // Unknown-rank X still gives outputs of the right rank.
  ModelBuilder u(14);
  u.m.graph.inputs.push_back("X");
  u.m.graph.types["X"] = TensorType{DType::kF32, std::nullopt};
  u.init("W", Tensor(DType::kF32, {1, 2, 4})).init("R", Tensor(DType::kF32, {1, 2, 2}))
      .node("RNN", {"X", "W", "R"}, {"Y"}, {{"activations", astrs({"Relu"})}});
  EXPECT_EQ(inferred(u.m, "Y"), "f32[?,1,?,2]");
}

TEST(Recurrent, Errors) {
  {
    ModelBuilder b(14);
    b.input("X", DType::kF32, {1, 1, 1}).init("W", f32({1, 4, 1}, {0, 0, 0, 0})).init("R", f32({1, 4, 1}, {0, 0, 0, 0}))
        .node("LSTM", {"X", "W", "R"}, {"Y"}, {{"direction", as("sideways")}}, "lstm1");
    expect_error(b.m, {{"X", f32({1, 1, 1}, {0})}}, {"lstm1", "direction must be"});
  }
  {
    ModelBuilder b(14);
    b.input("X", DType::kF32, {1, 1, 1}).init("W", f32({1, 2, 1}, {0, 0})).init("R", f32({1, 1, 1}, {0}))
        .node("RNN", {"X", "W", "R"}, {"Y"}, {}, "rnn1");
    expect_error(b.m, {{"X", f32({1, 1, 1}, {0})}}, {"rnn1", "W's second dimension is 2, expected 1"});
  }
  {
    ModelBuilder b(14);
    b.input("X", DType::kF32, {3, 1, 1}).input("L", DType::kI32, {1})
        .init("W", f32({1, 3, 1}, {0, 0, 0})).init("R", f32({1, 3, 1}, {0, 0, 0}))
        .node("GRU", {"X", "W", "R", "", "L"}, {"Y"}, {}, "gru1");
    expect_error(b.m, {{"X", f32({3, 1, 1}, {0, 0, 0})}, {"L", Tensor::from_vector<int32_t>({1}, {4})}},
                 {"gru1", "sequence_lens value 4"});
  }
  {
    ModelBuilder b(14);
    b.input("X", DType::kF32, {1, 1, 1}).init("W", f32({1, 1, 1}, {0})).init("R", f32({1, 1, 1}, {0}))
        .node("RNN", {"X", "W", "R"}, {"Y"}, {{"activations", astrs({"Gelu"})}}, "rnn2");
    expect_error(b.m, {{"X", f32({1, 1, 1}, {0})}}, {"rnn2", "unknown activation 'Gelu'"});
  }
  {
    ModelBuilder b(14);
    b.input("X", DType::kF32, {1, 2, 1}).init("W", f32({1, 1, 1}, {0})).init("R", f32({1, 1, 1}, {0}))
        .init("H0", f32({1, 3, 1}, {0, 0, 0}))
        .node("RNN", {"X", "W", "R", "", "", "H0"}, {"Y"}, {}, "rnn3");
    expect_error(b.m, {{"X", f32({1, 2, 1}, {0, 0})}}, {"rnn3", "initial_h's dimension 1 is 3, expected 2"});
  }
}

// ---- DFT

TEST(Dft, Opset17LengthAndInverse) {
  // DFT of [1, 2] zero-padded to 4: 3, 1 - 2i, -1, 1 + 2i.
  ModelBuilder b(17);
  b.input("x", DType::kF32, {1, 2, 1}).init("n", i64(4)).node("DFT", {"x", "n"}, {"y"});
  expect_values(run(b.m, {{"x", f32({1, 2, 1}, {1, 2})}})["y"], {1, 4, 2}, {3, 0, 1, -2, -1, 0, 1, 2});

  // Inverse of the spectrum of [1, 2, 3, 4] (10, -2 + 2i, -2, -2 - 2i).
  ModelBuilder i(17);
  i.input("x", DType::kF32, {1, 4, 2}).node("DFT", {"x"}, {"y"}, {{"inverse", ai(1)}});
  expect_values(run(i.m, {{"x", f32({1, 4, 2}, {10, 0, -2, 2, -2, 0, -2, -2})}})["y"], {1, 4, 2},
                {1, 0, 2, 0, 3, 0, 4, 0});
}

TEST(Dft, Opset20AxisInputOnesidedAndIrfft) {
  // Axis as an input (0 here); onesided keeps bins 0..N/2.
  ModelBuilder b(20);
  b.input("x", DType::kF32, {4, 1}).init("axis", i64(0))
      .node("DFT", {"x", "", "axis"}, {"full"}, {}, "full")
      .node("DFT", {"x", "", "axis"}, {"half"}, {{"onesided", ai(1)}}, "half");
  auto out = run(b.m, {{"x", f32({4, 1}, {1, 2, 3, 4})}});
  expect_values(out["full"], {4, 2}, {10, 0, -2, 2, -2, 0, -2, -2});
  expect_values(out["half"], {3, 2}, {10, 0, -2, 2, -2, 0});

  // onesided + inverse is the IRFFT: one-sided spectrum in, real signal of 2 * (3 - 1) samples out.
  ModelBuilder ir(20);
  ir.input("s", DType::kF64, {3, 2}).node("DFT", {"s"}, {"y"}, {{"inverse", ai(1)}, {"onesided", ai(1)}});
  EXPECT_EQ(inferred(ir.m, "y"), "f64[4,1]");
  expect_values(run(ir.m, {{"s", Tensor::from_vector<double>({3, 2}, {10, 0, -2, 2, -2, 0})}})["y"], {4, 1},
                {1, 2, 3, 4}, 1e-12);
}

TEST(Dft, SymbolicInference) {
  ModelBuilder b(17);
  b.input("x", DType::kF32, {Dim::sym("batch"), 16, 1})
      .input("n", DType::kI64, {})
      .node("DFT", {"x"}, {"full"}, {}, "full")
      .node("DFT", {"x"}, {"half"}, {{"onesided", ai(1)}}, "half")
      .node("DFT", {"x", "n"}, {"unknown_n"}, {}, "unknown_n");
  EXPECT_EQ(inferred(b.m, "full"), "f32[batch,16,2]");
  EXPECT_EQ(inferred(b.m, "half"), "f32[batch,9,2]");
  EXPECT_EQ(inferred(b.m, "unknown_n"), "f32[batch,?,2]");

  // Opset 20 with an axis only known at run time: a plain transform keeps every dim.
  ModelBuilder a(20);
  a.input("x", DType::kF32, {Dim::sym("batch"), 16, 2}).input("axis", DType::kI64, {})
      .node("DFT", {"x", "", "axis"}, {"y"});
  EXPECT_EQ(inferred(a.m, "y"), "f32[batch,16,2]");
}

TEST(Dft, Errors) {
  ModelBuilder b(17);
  b.input("x", DType::kF32, {1, 4, 1}).node("DFT", {"x"}, {"y"}, {{"axis", ai(2)}}, "dft1");
  expect_error(b.m, {{"x", f32({1, 4, 1}, {0, 0, 0, 0})}}, {"dft1", "axis 2 is out of range"});

  ModelBuilder c(17);
  c.input("x", DType::kF32, {1, 4, 3}).node("DFT", {"x"}, {"y"}, {}, "dft2");
  expect_error(c.m, {{"x", Tensor(DType::kF32, {1, 4, 3})}}, {"dft2", "must be 1 (real) or 2 (complex)"});

  ModelBuilder d(17);
  d.input("x", DType::kF32, {1, 4, 1}).input("n", DType::kI64, {}).node("DFT", {"x", "n"}, {"y"}, {}, "dft3");
  expect_error(d.m, {{"x", Tensor(DType::kF32, {1, 4, 1})}, {"n", i64(0)}}, {"dft3", "dft_length must be positive"});
}

// ---- STFT

TEST(Stft, FramesWindowAndInference) {
  // Signal 1, 2, 3, 4; frames of 2 every 2 samples: [1, 2] -> (3, -1), [3, 4] -> (7, -1).
  // With window [0.5, 1]: [0.5, 2] -> (2.5, -1.5), [1.5, 4] -> (5.5, -2.5).
  ModelBuilder b(17);
  b.input("x", DType::kF32, {1, 4, 1}).init("step", i64(2)).init("len", i64(2)).init("w", f32({2}, {0.5f, 1.0f}))
      .node("STFT", {"x", "step", "", "len"}, {"plain"}, {}, "plain")
      .node("STFT", {"x", "step", "w"}, {"windowed"}, {}, "windowed")
      .node("STFT", {"x", "step", "w", "len"}, {"full"}, {{"onesided", ai(0)}}, "full");
  auto out = run(b.m, {{"x", f32({1, 4, 1}, {1, 2, 3, 4})}});
  expect_values(out["plain"], {1, 2, 2, 2}, {3, 0, -1, 0, 7, 0, -1, 0});
  expect_values(out["windowed"], {1, 2, 2, 2}, {2.5, 0, -1.5, 0, 5.5, 0, -2.5, 0});
  expect_values(out["full"], {1, 2, 2, 2}, {2.5, 0, -1.5, 0, 5.5, 0, -2.5, 0});

  ModelBuilder s(17);
  s.input("x", DType::kF32, {Dim::sym("batch"), 128, 1}).init("step", i64(8)).init("len", i64(16))
      .node("STFT", {"x", "step", "", "len"}, {"y"});
  EXPECT_EQ(inferred(s.m, "y"), "f32[batch,15,9,2]");

  ModelBuilder e(17);
  e.input("x", DType::kF32, {1, 4, 1}).init("step", i64(1)).init("len", i64(8))
      .node("STFT", {"x", "step", "", "len"}, {"y"}, {}, "stft1");
  expect_error(e.m, {{"x", Tensor(DType::kF32, {1, 4, 1})}}, {"stft1", "longer than the signal"});
}

// ---- MelWeightMatrix

TEST(MelWeightMatrix, SmallBankAsDouble) {
  // 2 mel bins, dft_length 16 at 16 kHz over [0, 8000] Hz: mel edges 0, 710, 1420, 2130 (step
  // 2840 / 4) are 0, 614.5, 1768.5 and 3935.5 Hz, i.e. DFT bins floor(17 hz / 16000) = 0, 0, 1, 4.
  // Filter 0 is the spike at bin 0; filter 1 rises over bins 0..1 and falls over 1..4.
  ModelBuilder b(17);
  b.init("bins", Tensor::scalar<int32_t>(2)).init("n", Tensor::scalar<int32_t>(16))
      .init("sr", Tensor::scalar<int32_t>(16000)).init("lo", Tensor::scalar<float>(0))
      .init("hi", Tensor::scalar<float>(8000))
      .node("MelWeightMatrix", {"bins", "n", "sr", "lo", "hi"}, {"m"}, {{"output_datatype", ai(11)}});
  EXPECT_EQ(inferred(b.m, "m"), "f64[9,2]");
  std::vector<double> want(18, 0.0);
  want[0 * 2 + 0] = 1;
  want[1 * 2 + 1] = 1;
  want[2 * 2 + 1] = 2.0 / 3;
  want[3 * 2 + 1] = 1.0 / 3;
  expect_values(run(b.m)["m"], {9, 2}, want, 1e-12);

  // An upper edge far past Nyquist maps outside the spectrogram bins.
  ModelBuilder e(17);
  e.input("hi", DType::kF32, {}).init("bins", Tensor::scalar<int32_t>(2)).init("n", Tensor::scalar<int32_t>(16))
      .init("sr", Tensor::scalar<int32_t>(16000)).init("lo", Tensor::scalar<float>(0))
      .node("MelWeightMatrix", {"bins", "n", "sr", "lo", "hi"}, {"m"}, {}, "mel1");
  EXPECT_EQ(inferred(e.m, "m"), "f32[9,2]");
  expect_error(e.m, {{"hi", Tensor::scalar<float>(40000)}}, {"mel1", "spectrogram bins"});
}
