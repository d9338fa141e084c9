// Int8 tactics against the reference kernels on fresh random inputs: dnnl.qconv.nhwc (kiln::QConv),
// dnnl.qmatmul (kiln::QMatMul), kiln.quantize (QuantizeLinear / DequantizeLinear).
//
// Tolerances: an int8 output may differ from the reference by 1 (one quantization step): the
// reference rounds a float32 result computed in another summation order, so values within float
// rounding of a .5 boundary can round either way. Float outputs get rtol 1e-4 plus an atol of 1e-4
// of the output's scale, for the same reason. Quantize/dequantize are exact.
#include <gtest/gtest.h>

#include <random>

#include "cpu_test_support.h"

using namespace kiln_cpu_test;

namespace {

Tensor random_q(DType dt, std::vector<int64_t> shape, uint32_t seed) {
  Tensor t(dt, std::move(shape));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> u(dt == DType::kU8 ? 0 : -128, dt == DType::kU8 ? 255 : 127);
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (dt == DType::kU8) t.mutable_data<uint8_t>()[i] = static_cast<uint8_t>(u(rng));
    else t.mutable_data<int8_t>()[i] = static_cast<int8_t>(u(rng));
  }
  return t;
}

std::vector<float> random_scales(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.002f, 0.01f);
  std::vector<float> s(static_cast<size_t>(n));
  for (auto& v : s) v = u(rng);
  return s;
}

struct QConvCase {
  DType x = DType::kU8;
  DType y = DType::kI8;
  int64_t c = 16, m = 32, k = 3, hw = 9, group = 1, stride = 1;
  bool bias = true, per_channel = true;
  DType z = DType::kUndefined;  // residual input type
  std::string act = "";
  int64_t x_zp = 0, y_zp = 0;
};

NodeRun qconv_run(const QConvCase& c, uint32_t seed) {
  NodeRun r;
  r.node = Node{"qconv", "QConv", "kiln", {"x", "w", c.bias ? "b" : ""}, {"y"}, {}};
  auto& a = r.node.attrs;
  a["pads"] = Attribute::of_ints({c.k / 2, c.k / 2, c.k / 2, c.k / 2});
  a["strides"] = Attribute::of_ints({c.stride, c.stride});
  a["group"] = Attribute::of_int(c.group);
  a["x_scale"] = Attribute::of_float(0.02f);
  a["x_zero_point"] = Attribute::of_int(c.x_zp);
  a["w_scale"] = Attribute::of_floats(c.per_channel ? random_scales(c.m, seed + 7) : std::vector<float>{0.005f});
  a["y_type"] = Attribute::of_string(c.y == DType::kF32 ? "float32" : c.y == DType::kU8 ? "uint8" : "int8");
  if (c.y != DType::kF32) {
    a["y_scale"] = Attribute::of_float(0.05f);
    a["y_zero_point"] = Attribute::of_int(c.y_zp);
  }
  if (!c.act.empty()) a["activation"] = Attribute::of_string(c.act);
  r.inputs = {random_q(c.x, {1, c.c, c.hw, c.hw}, seed), random_q(DType::kI8, {c.m, c.c / c.group, c.k, c.k}, seed + 1),
              c.bias ? random_tensor(DType::kF32, {c.m}, seed + 2) : Tensor()};
  r.constant = {false, true, true};
  if (c.z != DType::kUndefined) {
    const int64_t out = (c.hw + 2 * (c.k / 2) - c.k) / c.stride + 1;
    r.node.inputs.push_back("z");
    r.inputs.push_back(c.z == DType::kF32 ? random_tensor(DType::kF32, {1, c.m, out, out}, seed + 3, -3, 3)
                                          : random_q(c.z, {1, c.m, out, out}, seed + 3));
    r.constant.push_back(false);
    a["z_scale"] = Attribute::of_float(0.03f);
  }
  r.producer_layouts = {Layout::kChannelsLast, Layout::kPlain, Layout::kPlain, Layout::kChannelsLast};
  return r;
}

void expect_qconv(const QConvCase& c, uint32_t seed) {
  const NodeRun r = qconv_run(c, seed);
  ASSERT_TRUE(tactic_supports("dnnl.qconv.nhwc", r));
  if (c.y == DType::kF32) expect_matches_reference("dnnl.qconv.nhwc", r, 1e-4, 1e-3);
  else expect_matches_reference("dnnl.qconv.nhwc", r, 0, 1.0);
}

}  // namespace

TEST(Int8QConv, PerChannelU8InS8Out) { expect_qconv({}, 1); }
TEST(Int8QConv, S8InU8OutRelu) { expect_qconv({.x = DType::kI8, .y = DType::kU8, .act = "Relu"}, 2); }
TEST(Int8QConv, FloatOutputPerTensorNoBias) {
  expect_qconv({.y = DType::kF32, .bias = false, .per_channel = false}, 3);
}
TEST(Int8QConv, Strided1x1AndDepthwise) {
  expect_qconv({.c = 32, .m = 64, .k = 1, .hw = 8, .stride = 2}, 4);
  expect_qconv({.c = 32, .m = 32, .k = 3, .hw = 10, .group = 32}, 5);
}
TEST(Int8QConv, ResidualSumInt8) { expect_qconv({.z = DType::kI8, .act = "Relu"}, 6); }
// A signed residual (a downsample branch) into an unsigned post-ReLU output: the sum post-op reads
// Z's bytes as int8 in Y's uint8 buffer.
TEST(Int8QConv, ResidualSignedIntoUnsigned) {
  expect_qconv({.y = DType::kU8, .z = DType::kI8, .act = "Relu"}, 11);
  expect_qconv({.x = DType::kI8, .y = DType::kI8, .z = DType::kU8}, 12);
}
TEST(Int8QConv, ResidualFloatIntoFloat) { expect_qconv({.y = DType::kF32, .z = DType::kF32, .act = "Relu"}, 7); }
TEST(Int8QConv, ZeroPoints) { expect_qconv({.x = DType::kU8, .y = DType::kU8, .x_zp = 128, .y_zp = 3}, 8); }
TEST(Int8QConv, NonHomogeneousActivation) { expect_qconv({.act = "SiLU"}, 9); }

TEST(Int8QConv, RefusesFloatInputs) {
  NodeRun r = qconv_run({}, 10);
  r.inputs[0] = random_tensor(DType::kF32, {1, 16, 9, 9}, 10);
  EXPECT_THROW(tactic_supports("dnnl.qconv.nhwc", r), Error);  // inference rejects a float X
}

namespace {

NodeRun qmatmul_run(DType a, DType y, bool trans_b, bool bias, const std::string& act, uint32_t seed,
                    std::vector<int64_t> a_shape = {2, 5, 48}, int64_t n = 40) {
  const int64_t k = a_shape.back();
  NodeRun r;
  r.node = Node{"qmm", "QMatMul", "kiln", {"a", "b", bias ? "c" : ""}, {"y"}, {}};
  auto& at = r.node.attrs;
  at["transB"] = Attribute::of_int(trans_b ? 1 : 0);
  at["alpha"] = Attribute::of_float(0.5f);
  at["a_scale"] = Attribute::of_float(0.03f);
  at["a_zero_point"] = Attribute::of_int(a == DType::kU8 ? 10 : 0);
  at["b_scale"] = Attribute::of_floats(random_scales(n, seed));
  at["y_type"] = Attribute::of_string(y == DType::kF32 ? "float32" : y == DType::kU8 ? "uint8" : "int8");
  if (y != DType::kF32) at["y_scale"] = Attribute::of_float(0.04f);
  if (!act.empty()) at["activation"] = Attribute::of_string(act);
  r.inputs = {random_q(a, a_shape, seed + 1), random_q(DType::kI8, trans_b ? std::vector<int64_t>{n, k}
                                                                         : std::vector<int64_t>{k, n}, seed + 2),
              bias ? random_tensor(DType::kF32, {n}, seed + 3) : Tensor()};
  r.constant = {false, true, true};
  return r;
}

}  // namespace

TEST(Int8QMatMul, MatchesReference) {
  expect_matches_reference("dnnl.qmatmul", qmatmul_run(DType::kI8, DType::kF32, false, true, "", 1), 1e-4, 1e-3);
  expect_matches_reference("dnnl.qmatmul", qmatmul_run(DType::kU8, DType::kI8, true, true, "Relu", 2), 0, 1.0);
  expect_matches_reference("dnnl.qmatmul", qmatmul_run(DType::kI8, DType::kU8, false, false, "Gelu", 3), 0, 1.0);
  expect_matches_reference("dnnl.qmatmul", qmatmul_run(DType::kI8, DType::kF32, true, false, "", 4, {7, 64}, 10),
                           1e-4, 1e-3);
}

TEST(Int8Quantize, ExactAgainstReference) {
  for (DType q : {DType::kI8, DType::kU8}) {
    NodeRun r;
    r.opset = 13;
    r.node = Node{"q", "QuantizeLinear", "", {"x", "s", "z"}, {"y"}, {}};
    // Values on exact .5 boundaries (x/scale = k + 0.5) check round-half-to-even; 1037 elements
    // cover the vector body and the scalar tail; the range exceeds the type to check saturation.
    Tensor x = random_tensor(DType::kF32, {1037}, 5, -300, 300);
    for (int i = 0; i < 40; ++i) x.mutable_data<float>()[i] = 0.25f * static_cast<float>(i - 20) + 0.125f;
    Tensor z(q, {});
    if (q == DType::kU8) z.mutable_data<uint8_t>()[0] = 7;
    else z.mutable_data<int8_t>()[0] = -3;
    r.inputs = {x, Tensor::scalar<float>(0.25f), z};
    r.constant = {false, true, true};
    auto got = run_tactic("kiln.quantize", r);
    auto want = run_reference(r);
    expect_close(got[0], want[0], 0, 0);

    NodeRun d;
    d.opset = 13;
    d.node = Node{"dq", "DequantizeLinear", "", {"q", "s", "z"}, {"y"}, {}};
    d.inputs = {random_q(q, {3, 4, 5, 7}, 6), Tensor::scalar<float>(0.125f), z};
    d.constant = {false, true, true};
    d.producer_layouts = {Layout::kChannelsLast};
    expect_matches_reference("kiln.quantize", d, 0, 0);
  }
}

TEST(Int8Quantize, PerAxisLeftToReference) {
  NodeRun r;
  r.opset = 13;
  r.node = Node{"q", "QuantizeLinear", "", {"x", "s"}, {"y"}, {}};
  r.node.attrs["axis"] = Attribute::of_int(0);
  r.inputs = {random_tensor(DType::kF32, {2, 3}, 1), Tensor::from_vector<float>({2}, {0.1f, 0.2f})};
  r.constant = {false, true};
  EXPECT_FALSE(tactic_supports("kiln.quantize", r));
}
