// The fuse-qdq pass and the INT8 rewrite: golden before/after graphs for explicit Q/DQ models
// (conv with requantized output, residual, int8 max pool, matmul, shared Q merging, guards that
// must leave the graph alone), numeric equivalence of the fused graph with the unfused Q/DQ graph
// on the reference executor, and quantize_int8 on a calibrated float model.
//
// Tolerance: the fused int8 ops compute the same real-valued expression as the Q/DQ graph, with
// float32 sums in another order, so a quantized value may round to the neighbouring level: outputs
// are compared to within one quantization step of the last quantizer.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backends/reference/executor.h"
#include "passes/pass.h"
#include "quant/qdq.h"

using namespace kiln;

namespace {

Tensor random_f32(std::vector<int64_t> shape, uint32_t seed, float lo = -1, float hi = 1) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  Tensor t(DType::kF32, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = d(rng);
  return t;
}

Tensor q8(DType dt, std::vector<int64_t> shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(-127, 127);
  Tensor t(dt, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<int8_t>()[i] = static_cast<int8_t>(d(rng));
  return t;
}

Tensor zp(DType dt) {
  Tensor t(dt, {});
  if (dt == DType::kU8) t.mutable_data<uint8_t>()[0] = 0;
  else t.mutable_data<int8_t>()[0] = 0;
  return t;
}

// Builds explicit Q/DQ models the way ONNX Runtime's quantizer writes them.
struct QdqBuilder {
  Model m;
  int counter = 0;
  QdqBuilder() {
    m.opsets[""] = 17;
    m.graph.inputs = {"x"};
    m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(1), Dim(8), Dim(10), Dim(10)}};
  }
  std::string fresh(const std::string& p) { return p + std::to_string(counter++); }
  // Q then DQ of `v` with `scale`; returns the DQ output.
  std::string qdq(const std::string& v, float scale, DType dt = DType::kU8) {
    const std::string s = fresh("s"), z = fresh("z"), q = fresh("q"), d = fresh("dq");
    m.graph.initializers[s] = Tensor::scalar<float>(scale);
    m.graph.initializers[z] = zp(dt);
    m.graph.nodes.push_back(Node{fresh("Q"), "QuantizeLinear", "", {v, s, z}, {q}, {}});
    m.graph.nodes.push_back(Node{fresh("DQ"), "DequantizeLinear", "", {q, s, z}, {d}, {}});
    return d;
  }
  // A per-output-channel int8 weight of `shape`, dequantized.
  std::string weight(std::vector<int64_t> shape, int64_t axis, uint32_t seed) {
    const std::string w = fresh("w"), s = fresh("ws"), z = fresh("wz"), d = fresh("wdq");
    const int64_t c = shape[static_cast<size_t>(axis)];
    m.graph.initializers[w] = q8(DType::kI8, shape, seed);
    std::vector<float> sc(static_cast<size_t>(c));
    for (int64_t i = 0; i < c; ++i) sc[static_cast<size_t>(i)] = 0.004f + 0.0005f * static_cast<float>(i % 5);
    m.graph.initializers[s] = Tensor::from_vector<float>({c}, sc);
    Tensor zt(DType::kI8, {c});
    for (int64_t i = 0; i < c; ++i) zt.mutable_data<int8_t>()[i] = 0;
    m.graph.initializers[z] = zt;
    Node n{fresh("WDQ"), "DequantizeLinear", "", {w, s, z}, {d}, {}};
    n.attrs["axis"] = Attribute::of_int(axis);
    m.graph.nodes.push_back(n);
    return d;
  }
  std::string conv(const std::string& x, int64_t cin, int64_t cout, uint32_t seed, bool relu) {
    const std::string w = weight({cout, cin, 3, 3}, 0, seed), b = fresh("b"), y = fresh("conv");
    m.graph.initializers[b] = random_f32({cout}, seed + 100, -0.1f, 0.1f);
    Node n{fresh("Conv"), "Conv", "", {x, w, b}, {y}, {}};
    n.attrs["pads"] = Attribute::of_ints({1, 1, 1, 1});
    m.graph.nodes.push_back(n);
    if (!relu) return y;
    const std::string r = fresh("relu");
    m.graph.nodes.push_back(Node{fresh("Relu"), "Relu", "", {y}, {r}, {}});
    return r;
  }
  void output(const std::string& v) { m.graph.outputs = {v}; }
};

int count_op(const Model& m, const std::string& op) {
  int n = 0;
  for (const Node& node : m.graph.nodes) n += node.op_type == op;
  return n;
}

Model optimized(Model m) {
  InferOptions io;
  io.evaluator = reference::constant_evaluator();
  infer_types(m, io);
  PassContext ctx;
  ctx.evaluator = reference::constant_evaluator();
  PassManager::standard().run(m, ctx);
  infer_types(m, io);
  return m;
}

Tensor run(const Model& m, const Tensor& x) {
  reference::Executor e(m);
  auto out = e.run({{"x", x}});
  return out.at(m.graph.outputs[0]);
}

// |got - want| <= steps * step elementwise.
void expect_within_steps(const Tensor& got, const Tensor& want, float step, float steps = 1.01f) {
  ASSERT_EQ(got.shape(), want.shape());
  auto g = got.to_double_vector(), w = want.to_double_vector();
  int bad = 0;
  for (size_t i = 0; i < g.size() && bad < 5; ++i)
    if (std::fabs(g[i] - w[i]) > steps * step) {
      ADD_FAILURE() << "element " << i << ": got " << g[i] << ", want " << w[i];
      ++bad;
    }
}

}  // namespace

// x -Q/DQ-> Conv -> Relu -Q/DQ-> Conv -Q/DQ-> y: both convs become QConv, the first with an int8
// (uint8, post-ReLU) output that the second reads directly, the second requantized to int8.
TEST(FuseQdq, ConvChainBecomesInt8Kernels) {
  QdqBuilder b;
  std::string v = b.qdq("x", 0.01f, DType::kI8);
  v = b.conv(v, 8, 16, 1, true);
  v = b.qdq(v, 0.02f);
  v = b.conv(v, 16, 8, 2, false);
  v = b.qdq(v, 0.05f, DType::kI8);
  b.output(v);
  const Model before = b.m;
  const Model after = optimized(before);
  EXPECT_EQ(count_op(after, "QConv"), 2);
  EXPECT_EQ(count_op(after, "Conv") + count_op(after, "FusedConv"), 0);
  EXPECT_EQ(count_op(after, "QuantizeLinear"), 1);    // the graph input's
  EXPECT_EQ(count_op(after, "DequantizeLinear"), 1);  // the graph output's
  int int8_out = 0;
  for (const Node& n : after.graph.nodes)
    if (n.op_type == "QConv") int8_out += n.attr("y_type")->s != "float32";
  EXPECT_EQ(int8_out, 2);
  const Tensor x = random_f32({1, 8, 10, 10}, 7);
  expect_within_steps(run(after, x), run(before, x), 0.05f);
}

// A residual: relu(conv(x) + DQ(identity)) with an int8 identity joins the QConv as Z.
TEST(FuseQdq, ResidualJoinsAsInt8Z) {
  QdqBuilder b;
  const std::string xin = b.qdq("x", 0.01f, DType::kI8);
  std::string v = b.conv(xin, 8, 8, 3, false);
  const std::string sum = b.fresh("sum"), r = b.fresh("r");
  b.m.graph.nodes.push_back(Node{"add", "Add", "", {v, xin}, {sum}, {}});
  b.m.graph.nodes.push_back(Node{"relu", "Relu", "", {sum}, {r}, {}});
  b.output(b.qdq(r, 0.03f));
  const Model before = b.m;
  const Model after = optimized(before);
  ASSERT_EQ(count_op(after, "QConv"), 1);
  for (const Node& n : after.graph.nodes)
    if (n.op_type == "QConv") {
      ASSERT_EQ(n.inputs.size(), 4u);
      EXPECT_EQ(after.graph.type_of(n.inputs[3])->dtype, DType::kI8);
      EXPECT_EQ(n.attr("y_type")->s, "uint8");
      EXPECT_FLOAT_EQ(n.attr("z_scale")->f, 0.01f);
    }
  const Tensor x = random_f32({1, 8, 10, 10}, 8);
  expect_within_steps(run(after, x), run(before, x), 0.03f);
}

// DQ -> MaxPool -> Q with equal parameters runs the pool on the 8-bit values.
TEST(FuseQdq, MaxPoolBetweenEqualQuantizersRunsInInt8) {
  QdqBuilder b;
  std::string v = b.conv(b.qdq("x", 0.01f, DType::kI8), 8, 8, 4, true);
  v = b.qdq(v, 0.02f);
  const std::string p = b.fresh("pool");
  Node pool{"pool", "MaxPool", "", {v}, {p}, {}};
  pool.attrs["kernel_shape"] = Attribute::of_ints({2, 2});
  pool.attrs["strides"] = Attribute::of_ints({2, 2});
  b.m.graph.nodes.push_back(pool);
  v = b.qdq(p, 0.02f);
  b.output(b.conv(v, 8, 4, 5, false));
  const Model before = b.m;
  const Model after = optimized(before);
  for (const Node& n : after.graph.nodes)
    if (n.op_type == "MaxPool") {
      EXPECT_EQ(after.graph.type_of(n.inputs[0])->dtype, DType::kU8);
    }
  EXPECT_EQ(count_op(after, "QConv"), 2);
  const Tensor x = random_f32({1, 8, 10, 10}, 9);
  // The last QConv outputs float: within rounding of the float sums plus a step of its input.
  const Tensor got = run(after, x), want = run(before, x);
  double dot = 0, gg = 0, ww = 0;
  auto g = got.to_double_vector(), w = want.to_double_vector();
  for (size_t i = 0; i < g.size(); ++i) dot += g[i] * w[i], gg += g[i] * g[i], ww += w[i] * w[i];
  EXPECT_GT(dot / std::sqrt(gg * ww), 0.9999);
}

// Guards: a pool between different quantizers, or a weight with a nonzero zero point, stays Q/DQ.
TEST(FuseQdq, GuardsLeaveOtherPatternsAlone) {
  QdqBuilder b;
  std::string v = b.qdq("x", 0.01f);
  const std::string p = b.fresh("pool");
  Node pool{"pool", "MaxPool", "", {v}, {p}, {}};
  pool.attrs["kernel_shape"] = Attribute::of_ints({2, 2});
  b.m.graph.nodes.push_back(pool);
  b.output(b.qdq(p, 0.02f));  // another scale: not a passthrough
  const Model after = optimized(b.m);
  for (const Node& n : after.graph.nodes)
    if (n.op_type == "MaxPool") {
      EXPECT_EQ(after.graph.type_of(n.inputs[0])->dtype, DType::kF32);
    }
  EXPECT_EQ(count_op(after, "QuantizeLinear"), 2);

  QdqBuilder c;
  const std::string w = c.weight({8, 8, 3, 3}, 0, 3);
  // Nonzero weight zero point: the int8 kernels need symmetric weights.
  for (auto& n : c.m.graph.nodes)
    if (n.op_type == "DequantizeLinear" && n.outputs[0] == w) c.m.graph.initializers[n.inputs[2]].mutable_data<int8_t>()[0] = 3;
  const std::string y = c.fresh("y");
  Node conv{"conv", "Conv", "", {c.qdq("x", 0.01f), w}, {y}, {}};
  conv.attrs["pads"] = Attribute::of_ints({1, 1, 1, 1});
  c.m.graph.nodes.push_back(conv);
  c.output(y);
  const Model after2 = optimized(c.m);
  EXPECT_EQ(count_op(after2, "QConv"), 0);
  const Tensor x = random_f32({1, 8, 10, 10}, 10);
  const Tensor got = run(after2, x), want = run(c.m, x);
  auto g = got.to_double_vector(), wv = want.to_double_vector();
  for (size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], wv[i], 1e-4);
}

// MatMul with DQ inputs and a bias becomes QMatMul; two identical Qs of one tensor merge first.
TEST(FuseQdq, MatMulAndSharedQuantizers) {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(5), Dim(16)}};
  QdqBuilder b;
  b.m = m;
  const std::string a1 = b.qdq("x", 0.01f, DType::kI8), a2 = b.qdq("x", 0.01f, DType::kI8);
  const std::string w1 = b.weight({16, 12}, 1, 11), w2 = b.weight({16, 12}, 1, 12);
  b.m.graph.initializers["bias"] = random_f32({12}, 13);
  b.m.graph.nodes.push_back(Node{"mm1", "MatMul", "", {a1, w1}, {"m1"}, {}});
  b.m.graph.nodes.push_back(Node{"add", "Add", "", {"m1", "bias"}, {"y1"}, {}});
  b.m.graph.nodes.push_back(Node{"mm2", "MatMul", "", {a2, w2}, {"y2"}, {}});
  b.m.graph.nodes.push_back(Node{"sum", "Add", "", {"y1", "y2"}, {"y"}, {}});
  b.output("y");
  const Model before = b.m;
  const Model after = optimized(before);
  EXPECT_EQ(count_op(after, "QMatMul"), 2);
  EXPECT_EQ(count_op(after, "QuantizeLinear"), 1);  // merged
  const Tensor x = random_f32({2, 5, 16}, 14);
  reference::Executor e1(before), e2(after);
  const Tensor want = e1.run({{"x", x}}).at("y"), got = e2.run({{"x", x}}).at("y");
  auto g = got.to_double_vector(), w = want.to_double_vector();
  for (size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], w[i], 1e-4 * (1 + std::fabs(w[i])));
}

// quantize_int8 on a fused float model: every conv becomes QConv, int8 stays between them, the
// result tracks the float model, and --layer-precision style keep_float is honoured.
TEST(QuantizeInt8, RewritesFusedFloatModel) {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(1), Dim(8), Dim(10), Dim(10)}};
  std::string v = "x";
  for (int i = 0; i < 3; ++i) {
    const std::string w = "w" + std::to_string(i), b = "b" + std::to_string(i), c = "c" + std::to_string(i),
                      r = "r" + std::to_string(i);
    m.graph.initializers[w] = random_f32({8, 8, 3, 3}, 20 + i, -0.3f, 0.3f);
    m.graph.initializers[b] = random_f32({8}, 30 + i, -0.1f, 0.1f);
    Node conv{"conv" + std::to_string(i), "Conv", "", {v, w, b}, {c}, {}};
    conv.attrs["pads"] = Attribute::of_ints({1, 1, 1, 1});
    m.graph.nodes.push_back(conv);
    m.graph.nodes.push_back(Node{"relu" + std::to_string(i), "Relu", "", {c}, {r}, {}});
    v = r;
  }
  m.graph.outputs = {v};
  const Model fused = optimized(m);
  quant::Int8Options o;
  const auto tensors = quant::int8_tensors(fused, o);
  ASSERT_EQ(tensors, (std::vector<std::string>{"x", "r0", "r1"}));
  // Ranges from the data (minmax over one sample): what calibration would find.
  const Tensor x = random_f32({1, 8, 10, 10}, 40);
  Model probe = fused;
  probe.graph.outputs = {"r0", "r1", v};
  reference::Executor pe(probe);
  auto vals = pe.run({{"x", x}});
  vals["x"] = x;
  quant::CalibrationTable table;
  for (const auto& t : tensors) {
    auto d = vals.at(t).to_double_vector();
    quant::TensorRange r;
    r.min = static_cast<float>(*std::min_element(d.begin(), d.end()));
    r.max = static_cast<float>(*std::max_element(d.begin(), d.end()));
    r.amax = std::max(std::fabs(r.min), std::fabs(r.max));
    table.ranges[t] = r;
  }
  Model q = fused;
  EXPECT_EQ(quant::quantize_int8(q, table, o), 3);
  EXPECT_EQ(count_op(q, "QConv"), 3);
  EXPECT_EQ(count_op(q, "QuantizeLinear"), 1);  // only the graph input is quantized by a Q node
  EXPECT_EQ(q.graph.type_of("r0_quantized")->dtype, DType::kU8);  // post-ReLU: unsigned
  reference::Executor ef(fused), eq(q);
  auto f = ef.run({{"x", x}}).at(v).to_double_vector(), g = eq.run({{"x", x}}).at(v).to_double_vector();
  double dot = 0, ff = 0, gg = 0;
  for (size_t i = 0; i < f.size(); ++i) dot += f[i] * g[i], ff += f[i] * f[i], gg += g[i] * g[i];
  EXPECT_GT(dot / std::sqrt(ff * gg), 0.999);

  o.keep_float = {"conv1"};
  Model k = fused;
  EXPECT_EQ(quant::quantize_int8(k, table, o), 2);
  for (const Node& n : k.graph.nodes)
    if (n.name == "conv1") {
      EXPECT_EQ(n.op_type, "FusedConv");
    }

  quant::CalibrationTable missing = table;
  missing.ranges.erase("r1");
  Model bad = fused;
  o.keep_float.clear();
  EXPECT_THROW(quant::quantize_int8(bad, missing, o), Error);
}

// Bad Q/DQ parameters are refused with the node and the value named.
TEST(QdqParams, ZeroScaleAndBadZeroPointAreClearErrors) {
  QdqBuilder b;
  b.output(b.qdq("x", 0.f));  // a zero scale
  InferOptions io;
  io.evaluator = reference::constant_evaluator();
  infer_types(b.m, io);
  try {
    quant::check_qdq_params(b.m);
    FAIL() << "a zero scale passed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidModel);
    EXPECT_NE(std::string(e.what()).find("must be positive and finite, got 0"), std::string::npos) << e.what();
  }
  QdqBuilder c;
  c.output(c.qdq("x", 0.1f));
  for (const Node& n : c.m.graph.nodes)
    if (n.op_type == "QuantizeLinear") c.m.graph.initializers[n.inputs[2]] = Tensor::scalar<int32_t>(300);
  try {
    quant::check_qdq_params(c.m);
    FAIL() << "an int32 zero point of 300 passed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("zero point"), std::string::npos) << e.what();
  }
  QdqBuilder ok;
  ok.output(ok.qdq("x", 0.1f));
  infer_types(ok.m, io);
  EXPECT_NO_THROW(quant::check_qdq_params(ok.m));
}

// ---- decompose-qdq: the GPU's Q/DQ (float arithmetic with the same values).

namespace {

Model typed(Model m) {
  InferOptions io;
  io.evaluator = reference::constant_evaluator();
  infer_types(m, io);
  return m;
}

int decompose(Model& m) {
  PassContext ctx;
  ctx.evaluator = reference::constant_evaluator();
  const int n = make_decompose_qdq()->run(m, ctx);
  InferOptions io;
  io.evaluator = reference::constant_evaluator();
  infer_types(m, io);
  return n;
}

// The largest |a - b| over two tensors of the same shape and dtype.
double max_abs_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  EXPECT_EQ(a.dtype(), b.dtype());
  const auto x = a.to_double_vector(), y = b.to_double_vector();
  double d = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) d = std::max(d, std::fabs(x[i] - y[i]));
  return d;
}

}  // namespace

// Before: x -Q/DQ-> Conv(DQ(int8 weights, per channel)) -> Relu -Q/DQ-> Conv -Q/DQ-> y.
// After: no QuantizeLinear or DequantizeLinear left, the activations' pairs as Div/Round/Clip/Mul
// (zero points 0: no Add/Sub), the weights' DQ as Cast and Mul; the same outputs, value for value,
// on fresh random inputs.
TEST(DecomposeQdq, ConvChainBecomesFloatArithmeticWithTheSameValues) {
  QdqBuilder b;
  std::string v = b.qdq("x", 0.01f, DType::kI8);
  v = b.conv(v, 8, 16, 1, true);
  v = b.qdq(v, 0.02f, DType::kI8);
  v = b.conv(v, 16, 8, 2, false);
  v = b.qdq(v, 0.05f, DType::kI8);
  b.output(v);
  const Model before = typed(b.m);
  Model after = before;
  EXPECT_EQ(decompose(after), 3 + 2);  // three activation pairs (one rewrite each), two weights
  EXPECT_EQ(count_op(after, "QuantizeLinear"), 0);
  EXPECT_EQ(count_op(after, "DequantizeLinear"), 0);
  EXPECT_EQ(count_op(after, "Round"), 3);
  EXPECT_EQ(count_op(after, "Clip"), 3);
  EXPECT_EQ(count_op(after, "Cast"), 2);  // the int8 weights
  EXPECT_EQ(count_op(after, "Add") + count_op(after, "Sub"), 0);
  const Tensor x = random_f32({1, 8, 10, 10}, std::random_device{}());
  EXPECT_LE(max_abs_diff(run(after, x), run(before, x)), 1e-6);
  // And after the standard passes (the weights' casts fold into float weights).
  const Model opt = optimized(after);
  EXPECT_EQ(count_op(opt, "Cast"), 0);
  EXPECT_LE(max_abs_diff(run(opt, x), run(before, x)), 0.05 * 1.01);  // at most one step of the last quantizer
}

// uint8 with a non-zero zero point: a Q whose 8-bit output is a graph output stays (as float
// arithmetic and a Cast to uint8) beside the fake quantization its DQ becomes; a DQ of an int8
// graph input becomes Cast, Sub and Mul. Values and dtypes as before.
TEST(DecomposeQdq, ZeroPointsStandaloneQuantizersAndEightBitInputs) {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x", "q_in"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3), Dim(4)}};
  m.graph.types["q_in"] = TensorType{DType::kI8, Shape{Dim(2), Dim(3), Dim(4)}};
  m.graph.initializers["s"] = Tensor::scalar<float>(0.03f);
  Tensor z(DType::kU8, {});
  z.mutable_data<uint8_t>()[0] = 100;
  m.graph.initializers["z"] = z;
  m.graph.initializers["s_in"] = Tensor::from_vector<float>({3}, {0.5f, 0.25f, 0.125f});
  Tensor zin(DType::kI8, {3});
  for (int i = 0; i < 3; ++i) zin.mutable_data<int8_t>()[i] = static_cast<int8_t>(i - 1);
  m.graph.initializers["z_in"] = zin;
  m.graph.nodes.push_back(Node{"q", "QuantizeLinear", "", {"x", "s", "z"}, {"xq"}, {}});
  m.graph.nodes.push_back(Node{"dq", "DequantizeLinear", "", {"xq", "s", "z"}, {"xd"}, {}});
  Node din{"dq_in", "DequantizeLinear", "", {"q_in", "s_in", "z_in"}, {"d_in"}, {}};
  din.attrs["axis"] = Attribute::of_int(1);
  m.graph.nodes.push_back(din);
  m.graph.nodes.push_back(Node{"add", "Add", "", {"xd", "d_in"}, {"y"}, {}});
  m.graph.outputs = {"xq", "y"};
  const Model before = typed(m);
  Model after = before;
  EXPECT_EQ(decompose(after), 3);
  EXPECT_EQ(count_op(after, "QuantizeLinear") + count_op(after, "DequantizeLinear"), 0);
  EXPECT_EQ(after.graph.type_of("xq")->dtype, DType::kU8);
  std::mt19937 rng(std::random_device{}());
  Tensor x = random_f32({2, 3, 4}, rng(), -4.f, 4.f);  // past the uint8 range on both sides
  Tensor qi = q8(DType::kI8, {2, 3, 4}, rng());
  reference::Executor eb(before), ea(after);
  const auto want = eb.run({{"x", x}, {"q_in", qi}}), got = ea.run({{"x", x}, {"q_in", qi}});
  EXPECT_EQ(max_abs_diff(got.at("xq"), want.at("xq")), 0.0);
  EXPECT_LE(max_abs_diff(got.at("y"), want.at("y")), 1e-6);
}

// What it leaves alone: a scale that is not a constant, block quantization, a float16 input.
TEST(DecomposeQdq, GuardsLeaveOtherQuantizersAlone) {
  Model m;
  m.opsets[""] = 21;
  m.graph.inputs = {"x", "s_dyn", "h"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(4), Dim(8)}};
  m.graph.types["s_dyn"] = TensorType{DType::kF32, Shape{}};
  m.graph.types["h"] = TensorType{DType::kF16, Shape{Dim(4), Dim(8)}};
  m.graph.initializers["s"] = Tensor::scalar<float>(0.1f);
  m.graph.initializers["sb"] = Tensor::from_vector<float>({4, 2}, std::vector<float>(8, 0.1f));
  Tensor z(DType::kI8, {});
  z.mutable_data<int8_t>()[0] = 0;
  m.graph.initializers["z"] = z;
  m.graph.nodes.push_back(Node{"q_dyn", "QuantizeLinear", "", {"x", "s_dyn", "z"}, {"a"}, {}});
  Node blocked{"q_block", "QuantizeLinear", "", {"x", "sb"}, {"b"}, {}};
  blocked.attrs["block_size"] = Attribute::of_int(4);
  blocked.attrs["axis"] = Attribute::of_int(1);
  blocked.attrs["output_dtype"] = Attribute::of_int(3);  // int8
  m.graph.nodes.push_back(blocked);
  m.graph.nodes.push_back(Node{"q_half", "QuantizeLinear", "", {"h", "s", "z"}, {"c"}, {}});
  m.graph.outputs = {"a", "b", "c"};
  Model after = m;
  PassContext ctx;
  EXPECT_EQ(make_decompose_qdq()->run(after, ctx), 0);
  EXPECT_EQ(after.graph.nodes.size(), m.graph.nodes.size());
}
