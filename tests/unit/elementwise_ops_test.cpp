// Elementwise, comparison, logic and Cast ops: integer semantics, rounding, opset 18+ versions,
// legacy broadcasting, symbolic-shape inference and error cases, with hand-checked values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "backends/reference/executor.h"
#include "ir/graph.h"
#include "ops/model_check.h"

using namespace kiln;

namespace {

struct In {
  std::string name;
  Tensor value;
};

// A one-node model whose inputs are graph inputs typed from the given tensors.
Model one_node(const std::string& op, const std::vector<In>& ins, std::map<std::string, Attribute> attrs,
               int64_t opset) {
  Model m;
  m.opsets[""] = opset;
  Node n;
  n.name = "node_under_test";
  n.op_type = op;
  n.outputs = {"out"};
  n.attrs = std::move(attrs);
  for (const auto& in : ins) {
    n.inputs.push_back(in.name);
    if (in.name.empty()) continue;
    m.graph.inputs.push_back(in.name);
    m.graph.types[in.name] = TensorType{in.value.dtype(), shape_from_dims(in.value.shape())};
  }
  m.graph.nodes.push_back(n);
  m.graph.outputs = {"out"};
  return m;
}

Tensor run(const std::string& op, const std::vector<In>& ins, std::map<std::string, Attribute> attrs = {},
           int64_t opset = 17) {
  reference::Executor exec(one_node(op, ins, std::move(attrs), opset));
  reference::TensorMap feeds;
  for (const auto& in : ins)
    if (!in.name.empty()) feeds[in.name] = in.value;
  return exec.run(feeds).at("out");
}

template <typename T>
Tensor vec(std::vector<int64_t> shape, std::vector<T> v) {
  return Tensor::from_vector<T>(std::move(shape), v);
}
template <typename T>
Tensor vec(std::vector<T> v) {
  const int64_t n = static_cast<int64_t>(v.size());
  return Tensor::from_vector<T>({n}, v);
}

template <typename T>
std::vector<T> values(const Tensor& t) {
  auto s = t.values<T>();
  return {s.begin(), s.end()};
}

// Runs `fn` and checks that it throws a kiln::Error whose message contains every fragment.
template <typename Fn>
void expect_error(Fn fn, std::vector<std::string> fragments) {
  try {
    fn();
    FAIL() << "expected an error mentioning " << fragments.front();
  } catch (const Error& e) {
    for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

// Type inference only: the inferred type of the output for the given input types.
TensorType infer(const std::string& op, const std::vector<std::pair<std::string, TensorType>>& ins,
                 std::map<std::string, Attribute> attrs = {}, int64_t opset = 17) {
  Model m;
  m.opsets[""] = opset;
  Node n{"node_under_test", op, "", {}, {"out"}, std::move(attrs)};
  for (const auto& [name, t] : ins) {
    n.inputs.push_back(name);
    m.graph.inputs.push_back(name);
    m.graph.types[name] = t;
  }
  m.graph.nodes.push_back(n);
  m.graph.outputs = {"out"};
  require_supported(m);
  infer_types(m);
  return *m.graph.type_of("out");
}

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

}  // namespace

// ---- Integer arithmetic

TEST(ElementwiseInt, DivTruncatesTowardZero) {
  Tensor y = run("Div", {{"a", vec<int32_t>({7, -7, 7, -7, std::numeric_limits<int32_t>::min()})},
                         {"b", vec<int32_t>({2, 2, -2, -2, -1})}});
  EXPECT_EQ(values<int32_t>(y), (std::vector<int32_t>{3, -3, -3, 3, std::numeric_limits<int32_t>::min()}));
  Tensor u = run("Div", {{"a", vec<uint8_t>({200, 7})}, {"b", vec<uint8_t>({3, 7})}});
  EXPECT_EQ(values<uint8_t>(u), (std::vector<uint8_t>{66, 1}));
}

TEST(ElementwiseInt, DivisionByZeroIsAnError) {
  expect_error([] { run("Div", {{"a", vec<int64_t>({1, 2})}, {"b", vec<int64_t>({1, 0})}}); },
               {"node_under_test", "Div", "division by zero"});
  expect_error([] { run("Mod", {{"a", vec<int32_t>({1})}, {"b", vec<int32_t>({0})}}); }, {"node_under_test", "zero"});
  // Float division by zero is IEEE: inf.
  Tensor f = run("Div", {{"a", vec<float>({1.0f})}, {"b", vec<float>({0.0f})}});
  EXPECT_TRUE(std::isinf(values<float>(f)[0]));
}

TEST(ElementwiseInt, ModSignRules) {
  // fmod=0: the result takes the divisor's sign (Python's %).
  Tensor m0 = run("Mod", {{"a", vec<int32_t>({-4, 7, 5, -5, 6})}, {"b", vec<int32_t>({3, -3, 2, -2, 3})}});
  EXPECT_EQ(values<int32_t>(m0), (std::vector<int32_t>{2, -2, 1, -1, 0}));
  // fmod=1: the dividend's sign (C fmod).
  Tensor m1 = run("Mod", {{"a", vec<int32_t>({-4, 7, 5, -5})}, {"b", vec<int32_t>({3, -3, 2, -2})}},
                  {{"fmod", Attribute::of_int(1)}});
  EXPECT_EQ(values<int32_t>(m1), (std::vector<int32_t>{-1, 1, 1, -1}));
  Tensor i8 = run("Mod", {{"a", vec<int8_t>({-128, -7})}, {"b", vec<int8_t>({-1, 4})}});
  EXPECT_EQ(values<int8_t>(i8), (std::vector<int8_t>{0, 1}));
  Tensor f = run("Mod", {{"a", vec<float>({-4.5f, 7.5f})}, {"b", vec<float>({2.0f, -2.0f})}},
                 {{"fmod", Attribute::of_int(1)}});
  EXPECT_EQ(values<float>(f), (std::vector<float>{-0.5f, 1.5f}));
  // Float inputs require fmod=1.
  expect_error([] { run("Mod", {{"a", vec<float>({1.0f})}, {"b", vec<float>({2.0f})}}); }, {"node_under_test", "fmod"});
}

TEST(ElementwiseInt, OverflowWraps) {
  Tensor a = run("Add", {{"a", vec<int32_t>({std::numeric_limits<int32_t>::max()})}, {"b", vec<int32_t>({1})}});
  EXPECT_EQ(values<int32_t>(a)[0], std::numeric_limits<int32_t>::min());
  Tensor m = run("Mul", {{"a", vec<uint16_t>({65535})}, {"b", vec<uint16_t>({65535})}});
  EXPECT_EQ(values<uint16_t>(m)[0], 1);  // 65535^2 = 2^32 - 2^17 + 1 = 1 mod 2^16
  Tensor n = run("Neg", {{"x", vec<int8_t>({-128, 5})}});
  EXPECT_EQ(values<int8_t>(n), (std::vector<int8_t>{-128, -5}));
  Tensor s = run("Sum", {{"a", vec<uint8_t>({250})}, {"b", vec<uint8_t>({3})}, {"c", vec<uint8_t>({4})}});
  EXPECT_EQ(values<uint8_t>(s)[0], 1);
}

TEST(ElementwiseInt, PowWithMixedTypes) {
  Tensor ii = run("Pow", {{"x", vec<int64_t>({2, 3, -2, 2, 1, -1})}, {"y", vec<int64_t>({10, 3, 3, -1, -5, -3})}});
  EXPECT_EQ(values<int64_t>(ii), (std::vector<int64_t>{1024, 27, -8, 0, 1, -1}));
  Tensor fi = run("Pow", {{"x", vec<float>({2.0f, 4.0f})}, {"y", vec<int32_t>({3, -1})}}, {}, 15);
  EXPECT_EQ(values<float>(fi), (std::vector<float>{8.0f, 0.25f}));
  Tensor if_ = run("Pow", {{"x", vec<int32_t>({4, 2})}, {"y", vec<float>({0.5f, 3.0f})}}, {}, 15);
  EXPECT_EQ(values<int32_t>(if_), (std::vector<int32_t>{2, 8}));
  // Pow-7 requires one float dtype for base and exponent.
  expect_error([] { run("Pow", {{"x", vec<float>({2.0f})}, {"y", vec<int32_t>({3})}}, {}, 11); },
               {"node_under_test", "Pow"});
  expect_error([] { run("Pow", {{"x", vec<int32_t>({0})}, {"y", vec<int32_t>({-1})}}); }, {"negative power"});
}

TEST(ElementwiseInt, BitShiftAndBitwise) {
  Tensor l = run("BitShift", {{"x", vec<uint8_t>({1, 255, 3})}, {"y", vec<uint8_t>({3, 8, 1})}},
                 {{"direction", Attribute::of_string("LEFT")}});
  EXPECT_EQ(values<uint8_t>(l), (std::vector<uint8_t>{8, 0, 6}));
  Tensor r = run("BitShift", {{"x", vec<uint32_t>({256, 7})}, {"y", vec<uint32_t>({4, 40})}},
                 {{"direction", Attribute::of_string("RIGHT")}});
  EXPECT_EQ(values<uint32_t>(r), (std::vector<uint32_t>{16, 0}));
  expect_error([] {
    run("BitShift", {{"x", vec<uint8_t>({1})}, {"y", vec<uint8_t>({1})}}, {{"direction", Attribute::of_string("UP")}});
  }, {"node_under_test", "direction"});

  Tensor a = run("BitwiseAnd", {{"a", vec<int8_t>({12, -1})}, {"b", vec<int8_t>({10, 5})}}, {}, 18);
  EXPECT_EQ(values<int8_t>(a), (std::vector<int8_t>{8, 5}));
  Tensor o = run("BitwiseOr", {{"a", vec<uint16_t>({12})}, {"b", vec<uint16_t>({10})}}, {}, 18);
  EXPECT_EQ(values<uint16_t>(o)[0], 14);
  Tensor x = run("BitwiseXor", {{"a", vec<int64_t>({12})}, {"b", vec<int64_t>({10})}}, {}, 21);
  EXPECT_EQ(values<int64_t>(x)[0], 6);
  Tensor n = run("BitwiseNot", {{"x", vec<int8_t>({5, -1})}}, {}, 18);
  EXPECT_EQ(values<int8_t>(n), (std::vector<int8_t>{-6, 0}));
  Tensor nu = run("BitwiseNot", {{"x", vec<uint8_t>({0})}}, {}, 18);
  EXPECT_EQ(values<uint8_t>(nu)[0], 255);
  // Opset 17 has no Bitwise ops; floats are not valid.
  EXPECT_THROW(run("BitwiseNot", {{"x", vec<uint8_t>({0})}}, {}, 17), Error);
  expect_error([] { run("BitwiseAnd", {{"a", vec<float>({1})}, {"b", vec<float>({1})}}, {}, 18); },
               {"node_under_test", "f32"});
}

// ---- Float math

TEST(ElementwiseFloat, RoundHalfToEven) {
  Tensor y = run("Round", {{"x", vec<float>({0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 2.4f, 2.6f, -2.6f})}});
  EXPECT_EQ(values<float>(y), (std::vector<float>{0.0f, 2.0f, 2.0f, -0.0f, -2.0f, 2.0f, 3.0f, -3.0f}));
  Tensor h = run("Round", {{"x", vec<Half>({Half(2.5f), Half(3.5f)})}});
  EXPECT_EQ(static_cast<float>(values<Half>(h)[0]), 2.0f);
  EXPECT_EQ(static_cast<float>(values<Half>(h)[1]), 4.0f);
}

TEST(ElementwiseFloat, GeluOpset20) {
  Tensor exact = run("Gelu", {{"x", vec<float>({0.0f, 1.0f, -1.0f})}}, {}, 20);
  auto e = values<float>(exact);
  EXPECT_FLOAT_EQ(e[0], 0.0f);
  EXPECT_NEAR(e[1], 0.8413447460685429, 1e-6);
  EXPECT_NEAR(e[2], -0.15865525393145707, 1e-6);
  Tensor t = run("Gelu", {{"x", vec<double>({1.0, -1.0})}}, {{"approximate", Attribute::of_string("tanh")}}, 20);
  EXPECT_NEAR(values<double>(t)[0], 0.8411919906082768, 1e-12);
  EXPECT_NEAR(values<double>(t)[1], -0.15880800939172324, 1e-12);
  expect_error([] {
    run("Gelu", {{"x", vec<float>({1.0f})}}, {{"approximate", Attribute::of_string("erf")}}, 20);
  }, {"node_under_test", "approximate"});
  EXPECT_THROW(run("Gelu", {{"x", vec<float>({1.0f})}}, {}, 19), Error);  // no Gelu before opset 20
}

TEST(ElementwiseFloat, ActivationsWithAttributes) {
  auto mish = values<float>(run("Mish", {{"x", vec<float>({1.0f, -1.0f})}}, {}, 18));
  EXPECT_NEAR(mish[0], 0.8650983882673103, 1e-6);
  EXPECT_NEAR(mish[1], -0.30340146137410895, 1e-6);
  auto celu = values<float>(run("Celu", {{"x", vec<float>({-1.0f, 1.0f})}}, {{"alpha", Attribute::of_float(2.0f)}}));
  EXPECT_NEAR(celu[0], -0.7869386805747332, 1e-6);
  EXPECT_EQ(celu[1], 1.0f);
  auto selu = values<float>(run("Selu", {{"x", vec<float>({-1.0f, 2.0f})}}));
  EXPECT_NEAR(selu[0], -1.1113307412864784, 1e-6);
  EXPECT_NEAR(selu[1], 2.1014020442962646, 1e-6);
  auto sp = values<float>(run("Softplus", {{"x", vec<float>({1.0f, 100.0f})}}));
  EXPECT_NEAR(sp[0], 1.3132616875182228, 1e-6);
  EXPECT_EQ(sp[1], 100.0f);  // no overflow in exp
  auto hs = values<float>(run("HardSwish", {{"x", vec<float>({-4.0f, 0.0f, 1.5f, 4.0f})}}));
  EXPECT_EQ(hs, (std::vector<float>{0.0f, 0.0f, 1.5f * 0.75f, 4.0f}));
  auto sh = values<int32_t>(run("Shrink", {{"x", vec<int32_t>({-3, 0, 1, 3})}},
                                {{"lambd", Attribute::of_float(1.5f)}, {"bias", Attribute::of_float(1.0f)}}));
  EXPECT_EQ(sh, (std::vector<int32_t>{-2, 0, 0, 2}));
  auto lr = values<float>(run("LeakyRelu", {{"x", vec<float>({-2.0f, 3.0f})}}));
  EXPECT_NEAR(lr[0], -0.02f, 1e-7);
  EXPECT_EQ(lr[1], 3.0f);
}

TEST(ElementwiseFloat, IsInfIsNaNAndSign) {
  Tensor inf =
      run("IsInf", {{"x", vec<float>({-kInf, kInf, 1.0f, kNaN})}}, {{"detect_negative", Attribute::of_int(0)}});
  EXPECT_EQ(values<bool>(inf), (std::vector<bool>{false, true, false, false}));
  Tensor nan = run("IsNaN", {{"x", vec<double>({1.0, std::nan("")})}});
  EXPECT_EQ(values<bool>(nan), (std::vector<bool>{false, true}));
  Tensor s = run("Sign", {{"x", vec<int32_t>({-7, 0, 9})}});
  EXPECT_EQ(values<int32_t>(s), (std::vector<int32_t>{-1, 0, 1}));
}

TEST(ElementwiseFloat, MinMaxMeanVariadic) {
  Tensor mx = run("Max", {{"a", vec<float>({1.0f, kNaN, 3.0f})}, {"b", vec<float>({2.0f, 0.0f, 1.0f})},
                          {"c", vec<float>({}, {2.5f})}});
  auto m = values<float>(mx);
  EXPECT_EQ(m[0], 2.5f);
  EXPECT_TRUE(std::isnan(m[1]));  // NaN propagates
  EXPECT_EQ(m[2], 3.0f);
  Tensor mn = run("Min", {{"a", vec<int64_t>({2, 1}, {5, -3})}, {"b", vec<int64_t>({4, -4})}});
  EXPECT_EQ(mn.shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(values<int64_t>(mn), (std::vector<int64_t>{4, -4, -3, -4}));
  Tensor mean =
      run("Mean", {{"a", vec<float>({1.0f, 2.0f})}, {"b", vec<float>({2.0f, 4.0f})}, {"c", vec<float>({3.0f, 0.0f})}});
  EXPECT_EQ(values<float>(mean), (std::vector<float>{2.0f, 2.0f}));
  Tensor single = run("Sum", {{"a", vec<float>({1.5f})}});
  EXPECT_EQ(values<float>(single)[0], 1.5f);
}

TEST(ElementwiseFloat, ClipVersions) {
  // Opset 6-10: bounds as attributes.
  Tensor a = run("Clip", {{"x", vec<float>({-5.0f, 0.5f, 5.0f})}},
                 {{"min", Attribute::of_float(-1.0f)}, {"max", Attribute::of_float(1.0f)}}, 6);
  EXPECT_EQ(values<float>(a), (std::vector<float>{-1.0f, 0.5f, 1.0f}));
  // Opset 11: optional inputs; only min given; inf stays inf when max is absent.
  Tensor b = run("Clip", {{"x", vec<float>({-5.0f, 0.5f, kInf})}, {"lo", Tensor::scalar<float>(0.0f)}}, {}, 11);
  EXPECT_EQ(values<float>(b), (std::vector<float>{0.0f, 0.5f, kInf}));
  // Only max given (min omitted with "").
  Tensor c =
      run("Clip", {{"x", vec<float>({-5.0f, 5.0f})}, {"", Tensor()}, {"hi", Tensor::scalar<float>(1.0f)}}, {}, 13);
  EXPECT_EQ(values<float>(c), (std::vector<float>{-5.0f, 1.0f}));
  // min > max: everything becomes max.
  Tensor d = run("Clip", {{"x", vec<float>({-5.0f, 0.0f, 5.0f})}, {"lo", Tensor::scalar<float>(2.0f)},
                          {"hi", Tensor::scalar<float>(1.0f)}}, {}, 13);
  EXPECT_EQ(values<float>(d), (std::vector<float>{1.0f, 1.0f, 1.0f}));
  // Integers from opset 12.
  Tensor e = run("Clip", {{"x", vec<int32_t>({-5, 0, 5})}, {"lo", Tensor::scalar<int32_t>(-2)},
                          {"hi", Tensor::scalar<int32_t>(3)}}, {}, 12);
  EXPECT_EQ(values<int32_t>(e), (std::vector<int32_t>{-2, 0, 3}));
  expect_error([] { run("Clip", {{"x", vec<int32_t>({1})}}, {}, 11); }, {"node_under_test", "i32"});
  expect_error([] { run("Clip", {{"x", vec<float>({1.0f})}, {"lo", vec<float>({0.0f, 1.0f})}}, {}, 13); },
               {"node_under_test", "scalar"});
}

// ---- Comparison, logic, Where

TEST(ElementwiseLogic, ComparisonsAndWhere) {
  Tensor lt = run("LessOrEqual", {{"a", vec<int32_t>({1, 2, 3})}, {"b", Tensor::scalar<int32_t>(2)}});
  EXPECT_EQ(lt.dtype(), DType::kBool);
  EXPECT_EQ(values<bool>(lt), (std::vector<bool>{true, true, false}));
  Tensor eq = run("Equal", {{"a", vec<bool>({true, false})}, {"b", vec<bool>({true, true})}});
  EXPECT_EQ(values<bool>(eq), (std::vector<bool>{true, false}));
  Tensor eqn = run("Equal", {{"a", vec<float>({kNaN})}, {"b", vec<float>({kNaN})}}, {}, 19);
  EXPECT_EQ(values<bool>(eqn)[0], false);
  Tensor w = run("Where", {{"c", vec<bool>({2, 1}, {true, false})}, {"x", vec<int64_t>({1, 2})},
                           {"y", Tensor::scalar<int64_t>(-1)}});
  EXPECT_EQ(w.shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(values<int64_t>(w), (std::vector<int64_t>{1, 2, -1, -1}));
  Tensor x = run("Xor", {{"a", vec<bool>({true, true, false})}, {"b", vec<bool>({true, false, false})}});
  EXPECT_EQ(values<bool>(x), (std::vector<bool>{false, true, false}));
  expect_error([] { run("Where", {{"c", vec<bool>({true})}, {"x", vec<float>({1})}, {"y", vec<double>({1})}}); },
               {"node_under_test", "different dtypes"});
  expect_error([] { run("And", {{"a", vec<int32_t>({1})}, {"b", vec<int32_t>({1})}}); }, {"node_under_test", "i32"});
}

// ---- Cast

TEST(ElementwiseCast, FloatToIntTruncatesAndBoolSemantics) {
  auto to = [](DType dt) { return Attribute::of_int(dtype_to_onnx(dt)); };
  Tensor i = run("Cast", {{"x", vec<float>({1.9f, -1.9f, 0.5f, -0.5f, 1e10f, kNaN})}}, {{"to", to(DType::kI32)}});
  EXPECT_EQ(values<int32_t>(i), (std::vector<int32_t>{1, -1, 0, 0, std::numeric_limits<int32_t>::max(), 0}));
  Tensor b = run("Cast", {{"x", vec<float>({0.0f, -0.0f, 2.0f, kNaN, 0.1f})}}, {{"to", to(DType::kBool)}});
  EXPECT_EQ(values<bool>(b), (std::vector<bool>{false, false, true, true, true}));
  Tensor f = run("Cast", {{"x", vec<bool>({true, false})}}, {{"to", to(DType::kF16)}});
  EXPECT_EQ(static_cast<float>(values<Half>(f)[0]), 1.0f);
  EXPECT_EQ(static_cast<float>(values<Half>(f)[1]), 0.0f);
  Tensor w = run("Cast", {{"x", vec<int32_t>({300, -1})}}, {{"to", to(DType::kU8)}});
  EXPECT_EQ(values<uint8_t>(w), (std::vector<uint8_t>{44, 255}));
  Tensor same = run("Cast", {{"x", vec<int64_t>({5})}}, {{"to", to(DType::kI64)}});
  EXPECT_EQ(values<int64_t>(same)[0], 5);
  Tensor like = run("CastLike", {{"x", vec<double>({2.75})}, {"t", vec<int8_t>({0})}});
  EXPECT_EQ(like.dtype(), DType::kI8);
  EXPECT_EQ(values<int8_t>(like)[0], 2);
}

TEST(ElementwiseCast, SixteenBitFloatsRoundOnceToNearestEven) {
  auto to = [](DType dt) { return Attribute::of_int(dtype_to_onnx(dt)); };
  // 1 + 2^-11 is a tie between 1 and 1 + 2^-10 in f16: even wins.
  Tensor h = run("Cast", {{"x", vec<float>({1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f})}}, {{"to", to(DType::kF16)}});
  EXPECT_EQ(static_cast<float>(values<Half>(h)[0]), 1.0f);
  EXPECT_EQ(static_cast<float>(values<Half>(h)[1]), 1.0f + 0x1p-9f);
  // Just above the tie in double: rounding through f32 first would land on the tie and go down.
  Tensor hd = run("Cast", {{"x", vec<double>({1.0 + 0x1p-11 + 0x1p-40})}}, {{"to", to(DType::kF16)}});
  EXPECT_EQ(static_cast<float>(values<Half>(hd)[0]), 1.0f + 0x1p-10f);
  Tensor bd = run("Cast", {{"x", vec<double>({1.0 + 0x1p-8 + 0x1p-40, 1.0 + 0x1p-8})}}, {{"to", to(DType::kBF16)}});
  EXPECT_EQ(static_cast<float>(values<BFloat16>(bd)[0]), 1.0f + 0x1p-7f);
  EXPECT_EQ(static_cast<float>(values<BFloat16>(bd)[1]), 1.0f);
  Tensor back = run("Cast", {{"x", vec<Half>({Half(65504.0f)})}}, {{"to", to(DType::kBF16)}});
  EXPECT_EQ(static_cast<float>(values<BFloat16>(back)[0]), 65536.0f);  // 65504 rounds up in bf16
}

TEST(ElementwiseCast, Fp8Opset19) {
  auto to = [](DType dt) { return Attribute::of_int(dtype_to_onnx(dt)); };
  Tensor e4 = run("Cast", {{"x", vec<float>({1.0f, 448.0f, 500.0f, -0.0f, 0.3f, 0.003f, kInf})}},
                  {{"to", to(DType::kF8E4M3FN)}}, 19);
  ASSERT_EQ(e4.dtype(), DType::kF8E4M3FN);
  const auto* bytes = static_cast<const uint8_t*>(e4.raw());
  EXPECT_EQ(bytes[0], 0x38);  // exponent 7 (bias 7), mantissa 0
  EXPECT_EQ(bytes[1], 0x7e);  // largest finite
  EXPECT_EQ(bytes[2], 0x7e);  // saturated
  EXPECT_EQ(bytes[3], 0x80);  // -0
  EXPECT_EQ(bytes[6], 0x7e);  // inf saturates too
  Tensor back = run("Cast", {{"x", e4}}, {{"to", to(DType::kF32)}}, 19);
  // 0.3 = 9.6 steps of 2^-5 -> 10 steps; 0.003 = 1.536 subnormal steps of 2^-9 -> 2 steps.
  EXPECT_EQ(values<float>(back), (std::vector<float>{1.0f, 448.0f, 448.0f, -0.0f, 0.3125f, 0.00390625f, 448.0f}));

  Tensor ns = run("Cast", {{"x", vec<float>({500.0f})}},
                  {{"to", to(DType::kF8E4M3FN)}, {"saturate", Attribute::of_int(0)}}, 19);
  EXPECT_EQ(static_cast<const uint8_t*>(ns.raw())[0], 0x7f);  // NaN: E4M3FN has no infinity
  Tensor e5 = run("Cast", {{"x", vec<float>({1.0f, 0.3f, kInf})}},
                  {{"to", to(DType::kF8E5M2)}, {"saturate", Attribute::of_int(0)}}, 21);
  const auto* b5 = static_cast<const uint8_t*>(e5.raw());
  EXPECT_EQ(b5[0], 0x3c);
  EXPECT_EQ(b5[2], 0x7c);  // inf kept without saturation
  Tensor back5 = run("Cast", {{"x", e5}}, {{"to", to(DType::kF64)}}, 21);
  EXPECT_EQ(values<double>(back5)[1], 0.3125);
}

TEST(ElementwiseCast, BadTargetIsAnError) {
  expect_error([] { run("Cast", {{"x", vec<float>({1.0f})}}, {{"to", Attribute::of_int(99)}}); },
               {"node_under_test", "to"});
  EXPECT_THROW(run("Cast", {{"x", vec<float>({1.0f})}}), Error);  // `to` is required
}

// ---- Legacy broadcasting (opset 6)

TEST(ElementwiseLegacy, BroadcastAttributeWithAxis) {
  Tensor a = vec<float>({2, 3}, {0, 0, 0, 10, 10, 10});
  Tensor y = run("Add", {{"a", a}, {"b", vec<float>({2}, {1, 2})}},
                 {{"broadcast", Attribute::of_int(1)}, {"axis", Attribute::of_int(0)}}, 6);
  EXPECT_EQ(values<float>(y), (std::vector<float>{1, 1, 1, 12, 12, 12}));
  Tensor s = run("Mul", {{"a", a}, {"b", vec<float>({3}, {1, 2, 3})}}, {{"broadcast", Attribute::of_int(1)}}, 6);
  EXPECT_EQ(values<float>(s), (std::vector<float>{0, 0, 0, 10, 20, 30}));
  expect_error([&] { run("Add", {{"a", a}, {"b", vec<float>({3}, {1, 2, 3})}}, {}, 6); },
               {"node_under_test", "broadcast=0"});
  Tensor p =
      run("PRelu", {{"x", vec<float>({1, 2, 2}, {-1, -1, 1, -2})}, {"s", vec<float>({2}, {0.5f, 0.25f})}}, {}, 6);
  EXPECT_EQ(values<float>(p), (std::vector<float>{-0.5f, -0.5f, 1.0f, -0.5f}));  // slope per channel (dim 1)
  Tensor p16 =
      run("PRelu", {{"x", vec<float>({2, 2}, {-1, -1, 1, -2})}, {"s", vec<float>({2}, {0.5f, 0.25f})}}, {}, 16);
  EXPECT_EQ(values<float>(p16), (std::vector<float>{-0.5f, -0.25f, 1.0f, -0.5f}));  // numpy: last dim
}

// ---- Shape inference

TEST(ElementwiseInference, SymbolicDimsSurvive) {
  const Shape img = {Dim::sym("batch"), Dim(3), Dim(224), Dim(224)};
  TensorType relu = infer("Relu", {{"x", {DType::kF32, img}}});
  EXPECT_EQ(shape_to_string(*relu.shape), "[batch,3,224,224]");
  TensorType add = infer("Add", {{"a", {DType::kF32, img}}, {"b", {DType::kF32, Shape{Dim(3), Dim(1), Dim(1)}}}});
  EXPECT_EQ(shape_to_string(*add.shape), "[batch,3,224,224]");
  TensorType eq = infer("Greater", {{"a", {DType::kI64, Shape{Dim::sym("batch"), Dim(1)}}},
                                    {"b", {DType::kI64, Shape{Dim(1), Dim::sym("seq")}}}});
  EXPECT_EQ(eq.dtype, DType::kBool);
  EXPECT_EQ(shape_to_string(*eq.shape), "[batch,seq]");
  TensorType w = infer("Where", {{"c", {DType::kBool, Shape{Dim::sym("seq")}}},
                                 {"x", {DType::kF16, Shape{Dim::sym("batch"), Dim(1)}}},
                                 {"y", {DType::kF16, Shape{}}}});
  EXPECT_EQ(w.dtype, DType::kF16);
  EXPECT_EQ(shape_to_string(*w.shape), "[batch,seq]");
  TensorType cast = infer("Cast", {{"x", {DType::kF32, img}}}, {{"to", Attribute::of_int(7)}});
  EXPECT_EQ(cast.dtype, DType::kI64);
  EXPECT_EQ(shape_to_string(*cast.shape), "[batch,3,224,224]");
  TensorType pr = infer("PRelu", {{"x", {DType::kF32, img}}, {"s", {DType::kF32, Shape{Dim(3), Dim(1), Dim(1)}}}});
  EXPECT_EQ(shape_to_string(*pr.shape), "[batch,3,224,224]");
  TensorType gelu = infer("Gelu", {{"x", {DType::kBF16, img}}}, {}, 21);
  EXPECT_EQ(gelu.dtype, DType::kBF16);
  EXPECT_EQ(shape_to_string(*gelu.shape), "[batch,3,224,224]");
}

TEST(ElementwiseInference, UnknownRankAndMismatches) {
  TensorType u = infer("Mul", {{"a", {DType::kF32, std::nullopt}}, {"b", {DType::kF32, Shape{Dim(3)}}}});
  EXPECT_EQ(u.dtype, DType::kF32);
  EXPECT_FALSE(u.shape.has_value());
  TensorType s = infer("Sum", {{"a", {DType::kF32, Shape{Dim::sym("n"), Dim(1)}}}, {"b", {DType::kF32, Shape{Dim(4)}}},
                               {"c", {DType::kF32, Shape{Dim(1), Dim(1)}}}});
  EXPECT_EQ(shape_to_string(*s.shape), "[n,4]");
  expect_error([] { infer("Add", {{"a", {DType::kF32, Shape{Dim(2), Dim(3)}}}, {"b", {DType::kF32, Shape{Dim(4)}}}}); },
               {"node_under_test", "broadcast"});
  expect_error([] { infer("Sub", {{"a", {DType::kF32, Shape{Dim(2)}}}, {"b", {DType::kF64, Shape{Dim(2)}}}}); },
               {"node_under_test", "different dtypes"});
  expect_error(
      [] {
        infer("PRelu", {{"x", {DType::kF32, Shape{Dim(2), Dim(3)}}}, {"s", {DType::kF32, Shape{Dim(2)}}}});
      },
      {"node_under_test", "slope"});
  expect_error([] { infer("Sqrt", {{"x", {DType::kI32, Shape{Dim(2)}}}}); }, {"node_under_test", "i32"});
  expect_error(
      [] {
        infer("Mod", {{"a", {DType::kI32, Shape{}}}, {"b", {DType::kI32, Shape{}}}}, {{"fmod", Attribute::of_int(2)}});
      },
      {"node_under_test", "fmod"});
}

// Kernels validate their inputs themselves: constant folding and other backends' tests call them
// without the executor's inference pass.
TEST(ElementwiseKernels, RejectBadInputsWithoutInference) {
  auto eval = [](const std::string& op, std::vector<Tensor> ins, std::map<std::string, Attribute> attrs = {},
                 int64_t opset = 17) {
    Node n{"kernel_node", op, "", {}, {"out"}, std::move(attrs)};
    std::vector<const Tensor*> ptrs;
    for (size_t i = 0; i < ins.size(); ++i) {
      n.inputs.push_back("in" + std::to_string(i));
      ptrs.push_back(&ins[i]);
    }
    const OpSchema* s = OpRegistry::global().find("", op, opset);
    if (!s) throw std::runtime_error("no schema");
    return reference::evaluate_node(n, *s, opset, ptrs);
  };
  expect_error([&] { eval("Add", {vec<float>({1.0f, 2.0f}), vec<float>({1.0f, 2.0f, 3.0f})}); },
               {"kernel_node", "broadcast"});
  expect_error([&] { eval("Mul", {vec<float>({1.0f}), vec<double>({1.0})}); }, {"kernel_node", "different dtypes"});
  expect_error([&] { eval("Where", {vec<int32_t>({1}), vec<float>({1.0f}), vec<float>({2.0f})}); },
               {"kernel_node", "condition"});
  expect_error([&] { eval("Sqrt", {vec<int32_t>({4})}); }, {"kernel_node", "i32"});
  expect_error([&] { eval("Clip", {vec<int32_t>({4})}, {}, 10); }, {"kernel_node", "float"});
  expect_error([&] { eval("Mod", {vec<int16_t>({4}), vec<int16_t>({0})}); }, {"kernel_node", "zero"});
  expect_error([&] { eval("Div", {vec<uint64_t>({4}), vec<uint64_t>({0})}); }, {"kernel_node", "zero"});
  expect_error([&] { eval("PRelu", {vec<float>({2}, {1, 2}), vec<float>({2, 1}, {1, 2})}); }, {"kernel_node", "slope"});
  expect_error([&] { eval("Cast", {vec<float>({1.0f})}, {{"to", Attribute::of_int(8)}}); }, {"kernel_node", "string"});
  auto out = eval("Sub", {vec<float>({2, 1}, {5, 6}), Tensor::scalar<float>(1.0f)});
  EXPECT_EQ(values<float>(out[0]), (std::vector<float>{4, 5}));
}
