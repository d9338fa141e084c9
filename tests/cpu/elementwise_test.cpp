// kiln.eltwise against the reference kernels: unary, binary (numpy broadcasting), variadic, Where,
// Cast, kiln::Gelu and kiln::ElementwiseChain, in plain and channels-last layouts.
//
// Tolerance: rtol 1e-5 / atol 1e-6 for every f32 op. Arithmetic steps are the reference's own f32
// operations (bit-identical); exp/log/tanh/erf are polynomial approximations within ~4e-7 relative
// of the exact function, and the accuracy tests hold them to rtol 2e-6 / atol 1e-7 against glibc.
#include <limits>

#include "cpu_test_support.h"

namespace kiln_cpu_test {
namespace {

constexpr const char* kTactic = "kiln.eltwise";
constexpr double kRtol = 1e-5, kAtol = 1e-6;

uint32_t fresh_seed() {
  static uint32_t next = 1000;
  return next++;
}

Tensor rnd(std::vector<int64_t> shape, double lo = -3.0, double hi = 3.0, DType dt = DType::kF32) {
  return random_tensor(dt, std::move(shape), fresh_seed(), lo, hi);
}

Attribute strings_attr(std::vector<std::string> v) {
  Attribute a;
  a.kind = AttrKind::kStrings;
  a.strings = std::move(v);
  return a;
}

Node make_node(const std::string& op, size_t inputs, std::map<std::string, Attribute> attrs = {},
               const std::string& domain = "") {
  Node n;
  n.name = op + "_test";
  n.op_type = op;
  n.domain = domain;
  for (size_t i = 0; i < inputs; ++i) n.inputs.push_back("x" + std::to_string(i));
  n.outputs = {"y"};
  n.attrs = std::move(attrs);
  return n;
}

NodeRun make_run(Node n, std::vector<Tensor> inputs, int64_t opset = 17, std::vector<bool> constant = {},
                 std::vector<Layout> layouts = {}) {
  NodeRun r;
  r.node = std::move(n);
  r.opset = opset;
  r.inputs = std::move(inputs);
  r.constant = std::move(constant);
  r.producer_layouts = std::move(layouts);
  return r;
}

const std::vector<Layout> kBothLayouts = {Layout::kPlain, Layout::kChannelsLast};

// expect_matches_reference for kiln.eltwise, also accepting equal infinities (to expect_close,
// |inf - inf| is NaN).
void expect_matches(const NodeRun& r, double rtol = kRtol, double atol = kAtol) {
  const auto got = run_tactic(kTactic, r);
  const auto want = run_reference(r);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].shape(), want[i].shape());
    const auto g = got[i].to_double_vector(), w = want[i].to_double_vector();
    int bad = 0;
    for (size_t k = 0; k < g.size() && bad < 5; ++k) {
      if ((std::isnan(g[k]) && std::isnan(w[k])) || g[k] == w[k]) continue;
      if (std::fabs(g[k] - w[k]) <= atol + rtol * std::fabs(w[k])) continue;
      ADD_FAILURE() << "element " << k << ": got " << g[k] << ", want " << w[k];
      ++bad;
    }
  }
}

// Runs `r` with every input produced in layout `l`.
void expect_in_layout(NodeRun r, Layout l, double rtol = kRtol, double atol = kAtol) {
  r.producer_layouts.assign(r.inputs.size(), l);
  SCOPED_TRACE(std::string("layout ") + cpu::layout_name(l));
  expect_matches(r, rtol, atol);
}

const cpu::Tactic& tactic(const std::string& op, const std::string& domain = "") {
  const cpu::Tactic* t = cpu::TacticRegistry::global().find_named(domain, op, kTactic);
  if (!t) throw Error(ErrorCode::kInternal, "kiln.eltwise not registered for " + op);
  return *t;
}

// ---- Unary ops.

TEST(Eltwise, UnaryOpsMatchReference) {
  struct Case {
    const char* op;
    double lo, hi;
  };
  const Case cases[] = {{"Relu", -3, 3},      {"Sigmoid", -12, 12},   {"Tanh", -6, 6},      {"Exp", -20, 20},
                        {"Log", -0.5, 50},    {"Sqrt", -0.5, 50},     {"Erf", -4, 4},       {"Neg", -3, 3},
                        {"Abs", -3, 3},       {"Reciprocal", -3, 3},  {"HardSwish", -5, 5}, {"Softplus", -30, 30},
                        {"LeakyRelu", -3, 3}, {"HardSigmoid", -5, 5}, {"Elu", -5, 5}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.op);
    for (std::vector<int64_t> shape : {std::vector<int64_t>{1, 3, 7, 9}, {2, 37}, {5}, {}, {2, 16, 33, 40}}) {
      SCOPED_TRACE(shape_to_string(shape));
      for (Layout l : kBothLayouts) expect_in_layout(make_run(make_node(c.op, 1), {rnd(shape, c.lo, c.hi)}), l);
    }
  }
}

TEST(Eltwise, UnaryAttributes) {
  for (float alpha : {0.01f, 0.3f, -1.5f}) {
    expect_matches(make_run(make_node("LeakyRelu", 1, {{"alpha", Attribute::of_float(alpha)}}), {rnd({3, 41})}));
    expect_matches(make_run(make_node("Elu", 1, {{"alpha", Attribute::of_float(alpha)}}), {rnd({3, 41})}));
  }
  expect_matches(make_run(
      make_node("HardSigmoid", 1, {{"alpha", Attribute::of_float(0.5f)}, {"beta", Attribute::of_float(0.25f)}}),
      {rnd({2, 3, 5, 7}, -4, 4)}));
}

TEST(Eltwise, GeluBothApproximations) {
  for (const char* approx : {"none", "tanh"}) {
    SCOPED_TRACE(approx);
    const Tensor x = rnd({2, 5, 77}, -6, 6);
    expect_matches(make_run(make_node("Gelu", 1, {{"approximate", Attribute::of_string(approx)}}), {x}, 20));
    expect_matches(make_run(make_node("Gelu", 1, {{"approximate", Attribute::of_string(approx)}}, "kiln"), {x}, 1));
  }
}

// The polynomial exp/log/tanh/erf against glibc at a tight tolerance over their useful ranges,
// on a tensor large enough for the parallel path.
TEST(Eltwise, TranscendentalAccuracy) {
  struct Case {
    const char* op;
    double lo, hi;
  };
  for (const Case& c :
       {Case{"Exp", -87, 88}, Case{"Exp", -1, 1}, Case{"Log", 1e-30, 1e30}, Case{"Log", 0.5, 2}, Case{"Tanh", -10, 10},
        Case{"Tanh", -0.7, 0.7}, Case{"Erf", -5, 5}, Case{"Erf", -0.7, 0.7}, Case{"Sigmoid", -80, 80}}) {
    SCOPED_TRACE(std::string(c.op) + " on [" + std::to_string(c.lo) + ", " + std::to_string(c.hi) + "]");
    expect_matches(make_run(make_node(c.op, 1), {rnd({1, 8, 100, 100}, c.lo, c.hi)}), 2e-6, 1e-7);
  }
  for (const char* approx : {"none", "tanh"})
    expect_matches(make_run(make_node("Gelu", 1, {{"approximate", Attribute::of_string(approx)}}, "kiln"),
                            {rnd({300, 256}, -8, 8)}, 1),
                   2e-6, 1e-6);  // 1 + erf(x) cancels for x << 0: an ulp of erf is ~1e-7 * |x| absolute
}

// Infinities and NaN behave as in the reference (NaN through Relu is 0 there; Max/Min propagate).
TEST(Eltwise, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> vals = {0.0f, -0.0f, 1.0f, -1.0f, inf, -inf, nan, 1e-40f, -1e-40f, 100.0f, -100.0f, 0.3f};
  const Tensor x = Tensor::from_vector<float>({3, 4}, vals);
  for (const char* op : {"Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Erf", "Neg", "Abs", "Reciprocal",
                         "HardSwish", "Softplus", "LeakyRelu", "HardSigmoid", "Elu"}) {
    SCOPED_TRACE(op);
    expect_matches(make_run(make_node(op, 1), {x}));
  }
  std::vector<float> rev(vals.rbegin(), vals.rend());
  const Tensor y = Tensor::from_vector<float>({3, 4}, rev);
  for (const char* op : {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}) {
    SCOPED_TRACE(op);
    expect_matches(make_run(make_node(op, 2), {x, y}));
  }
  expect_matches(make_run(make_node("Clip", 3), {x, Tensor::scalar(-1.0f), Tensor::scalar(1.0f)}, 13));
}

// ---- Clip.

TEST(Eltwise, ClipAttributesAndInputs) {
  const Tensor x = rnd({2, 3, 7, 9}, -4, 4);
  // Opset 6: attributes.
  expect_matches(make_run(
      make_node("Clip", 1, {{"min", Attribute::of_float(-1.5f)}, {"max", Attribute::of_float(0.5f)}}), {x}, 6));
  // Opset 13: constant bounds, runtime bounds, one bound, none, min > max, infinite bounds.
  const float inf = std::numeric_limits<float>::infinity();
  struct Bounds {
    std::optional<float> lo, hi;
  };
  for (const Bounds& b : {Bounds{-1.0f, 1.0f}, Bounds{0.0f, std::nullopt}, Bounds{std::nullopt, 0.25f}, Bounds{},
                          Bounds{2.0f, -2.0f}, Bounds{-inf, inf}, Bounds{inf, -inf}}) {
    for (bool constant : {true, false}) {
      std::vector<Tensor> ins = {x, b.lo ? Tensor::scalar(*b.lo) : Tensor(), b.hi ? Tensor::scalar(*b.hi) : Tensor()};
      Node n = make_node("Clip", 3);
      if (!b.lo) n.inputs[1] = "";
      if (!b.hi) n.inputs[2] = "";
      if (!b.lo && !b.hi)
        n.inputs.resize(1), ins.resize(1);
      else if (!b.hi)
        n.inputs.resize(2), ins.resize(2);
      for (Layout l : kBothLayouts) expect_in_layout(make_run(n, ins, 13, {false, constant, constant}), l);
    }
  }
}

// ---- Binary ops and broadcasting.

struct BroadcastCase {
  std::vector<int64_t> a, b;
};

const std::vector<BroadcastCase> kBroadcastCases = {
    {{1, 3, 7, 9}, {1, 3, 7, 9}},  // same shape
    {{2, 37}, {2, 37}},
    {{1, 3, 7, 9}, {}},            // scalar
    {{1, 3, 7, 9}, {1}},           // one-element vector
    {{}, {2, 5, 7, 3}},            // scalar first
    {{2, 37}, {37}},               // row vector
    {{2, 37}, {2, 1}},             // column vector
    {{2, 6, 7, 9}, {6, 1, 1}},     // per-channel [C, 1, 1]
    {{2, 6, 7, 9}, {1, 6, 1, 1}},  // per-channel [1, C, 1, 1]
    {{2, 6, 7, 9}, {2, 6, 1, 1}},  // SE block [N, C, 1, 1]
    {{1, 6, 1, 1}, {2, 6, 7, 9}},  // per-channel first
    {{2, 1, 5}, {3, 1}},           // general: both broadcast
    {{300, 3}, {300, 1}},          // short rows
    {{4, 1, 6, 1}, {1, 5, 1, 7}},
    {{2, 16, 40, 40}, {16, 1, 1}},  // large enough for the parallel path
    {{2, 16, 40, 40}, {40}},
    {{0, 3}, {3}},  // empty
    {{2, 0, 4, 4}, {1, 1}},
};

TEST(Eltwise, BinaryOpsBroadcast) {
  for (const char* op : {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}) {
    for (const auto& c : kBroadcastCases) {
      SCOPED_TRACE(std::string(op) + " " + shape_to_string(c.a) + " vs " + shape_to_string(c.b));
      const bool pow = std::string(op) == "Pow";
      const Tensor a = pow ? rnd(c.a, 0.1, 3) : rnd(c.a), b = pow ? rnd(c.b, -2, 2) : rnd(c.b);
      for (bool const_b : {false, true})
        for (Layout l : kBothLayouts) expect_in_layout(make_run(make_node(op, 2), {a, b}, 17, {false, const_b}), l);
    }
  }
}

TEST(Eltwise, PowBySquareAndNegativeBase) {
  const Tensor x = rnd({3, 50}, -4, 4);
  for (float e : {2.0f, 3.0f, 0.5f, -1.0f, 0.0f})
    expect_matches(make_run(make_node("Pow", 2), {x, Tensor::scalar(e)}, 17, {false, true}));
  expect_matches(make_run(make_node("Pow", 2), {Tensor::scalar(2.0f), x}));
}

TEST(Eltwise, VariadicOps) {
  for (const char* op : {"Max", "Min", "Sum", "Mean"}) {
    SCOPED_TRACE(op);
    expect_matches(make_run(make_node(op, 1), {rnd({4, 9})}));
    expect_matches(make_run(make_node(op, 3), {rnd({2, 1, 9}), rnd({3, 1}), rnd({2, 3, 9})}));
    for (Layout l : kBothLayouts)
      expect_in_layout(make_run(make_node(op, 3), {rnd({1, 5, 6, 7}), rnd({5, 1, 1}), rnd({1, 5, 6, 7})}), l);
  }
}

TEST(Eltwise, PRelu) {
  for (Layout l : kBothLayouts) {
    expect_in_layout(make_run(make_node("PRelu", 2), {rnd({2, 5, 6, 7}), rnd({5, 1, 1})}, 16, {false, true}), l);
    expect_in_layout(make_run(make_node("PRelu", 2), {rnd({2, 5, 6, 7}), rnd({7})}, 16), l);
  }
}

TEST(Eltwise, IntegerArithmetic) {
  auto ints = [](std::vector<int64_t> shape, DType dt, int64_t lo, int64_t hi) {
    return random_tensor(dt, std::move(shape), fresh_seed(), static_cast<double>(lo), static_cast<double>(hi));
  };
  for (DType dt : {DType::kI64, DType::kI32}) {
    for (const char* op : {"Add", "Sub", "Mul", "Div", "Max", "Min"}) {
      SCOPED_TRACE(std::string(op) + " " + std::string(dtype_name(dt)));
      Tensor b = ints({4}, dt, 1, 9);
      expect_matches(make_run(make_node(op, 2), {ints({3, 4}, dt, -100, 100), b}));
      expect_matches(make_run(make_node(op, 2), {ints({3, 1}, dt, -100, 100), ints({1, 5}, dt, 1, 7)}));
    }
  }
  // Integer division by zero fails in run(), as in the reference.
  const NodeRun r = make_run(make_node("Div", 2),
                             {Tensor::from_vector<int64_t>({2}, {4, 5}), Tensor::from_vector<int64_t>({2}, {1, 0})});
  EXPECT_THROW(run_tactic(kTactic, r), Error);
}

TEST(Eltwise, Where) {
  auto cond = [](std::vector<int64_t> shape) {
    Tensor c(DType::kBool, shape);
    std::mt19937 rng(fresh_seed());
    bool* p = c.mutable_data<bool>();
    for (int64_t i = 0; i < c.numel(); ++i) p[i] = (rng() & 1) != 0;
    return c;
  };
  expect_matches(make_run(make_node("Where", 3), {cond({2, 3, 7}), rnd({2, 3, 7}), rnd({2, 3, 7})}));
  expect_matches(make_run(make_node("Where", 3), {cond({1, 7}), rnd({3, 1}), Tensor::scalar(-1e9f)}));
  expect_matches(make_run(make_node("Where", 3), {cond({2, 1, 64, 64}), Tensor::scalar(int64_t{7}),
                                                  random_tensor(DType::kI64, {2, 4, 64, 64}, fresh_seed(), -50, 50)}));
}

TEST(Eltwise, Cast) {
  const DType types[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kI32, DType::kI64};
  for (DType from : types)
    for (DType to : types) {
      SCOPED_TRACE(std::string(dtype_name(from)) + " -> " + std::string(dtype_name(to)));
      Tensor x = random_tensor(from, {3, 5, 7}, fresh_seed(), -300.0, 300.0);
      expect_matches(make_run(make_node("Cast", 1, {{"to", Attribute::of_int(dtype_to_onnx(to))}}), {x}, 13), 0, 0);
      expect_matches(make_run(make_node("CastLike", 2), {x, Tensor(to, {1})}, 15), 0, 0);
    }
  // Out-of-range and NaN float -> int saturate like the reference; large int64 -> f16 rounds once.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor f = Tensor::from_vector<float>({4}, {nan, 3e9f, -3e9f, -2.7f});
  expect_matches(make_run(make_node("Cast", 1, {{"to", Attribute::of_int(dtype_to_onnx(DType::kI32))}}), {f}, 13), 0,
                 0);
  const Tensor big = Tensor::from_vector<int64_t>({3}, {(int64_t{1} << 60) + 12345, -65519, 65521});
  for (DType to : {DType::kF16, DType::kBF16, DType::kF32})
    expect_matches(make_run(make_node("Cast", 1, {{"to", Attribute::of_int(dtype_to_onnx(to))}}), {big}, 13), 0, 0);
  // Channels-last in, channels-last out.
  for (Layout l : kBothLayouts)
    expect_in_layout(make_run(make_node("Cast", 1, {{"to", Attribute::of_int(dtype_to_onnx(DType::kF16))}}),
                              {rnd({1, 3, 7, 9})}, 13),
                     l, 0, 0);
}

// ---- kiln::ElementwiseChain.

NodeRun chain(std::vector<std::string> ops, std::vector<float> params, std::vector<Tensor> inputs,
              std::vector<bool> constant = {}) {
  std::map<std::string, Attribute> attrs = {{"ops", strings_attr(std::move(ops))}};
  if (!params.empty()) attrs["params"] = Attribute::of_floats(std::move(params));
  Node n = make_node("ElementwiseChain", inputs.size(), std::move(attrs), "kiln");  // before inputs is moved
  return make_run(std::move(n), std::move(inputs), 1, std::move(constant));
}

TEST(Eltwise, ChainEncodings) {
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    std::vector<std::string> ops;
    std::vector<float> params;
  };
  const Case cases[] = {
      {{"Add:1", "Relu"}, {}},
      {{"Sigmoid", "Mul:0"}, {}},  // x * sigmoid(x)
      {{"Mul:0:r", "Sqrt"}, {}},
      {{"Sub:1:r", "Exp"}, {}},
      {{"Div:1:r", "Tanh"}, {}},
      {{"Div:1", "Erf", "Add:2", "Mul:0"}, {}},
      {{"Mul:1", "Add:2", "Clip"}, {0.0f, 6.0f}},
      {{"Clip", "LeakyRelu"}, {-inf, 1.0f, 0.2f}},
      {{"Clip"}, {-0.5f, inf}},
      {{"Clip"}, {inf, -inf}},  // infinite bounds clamp nothing
      {{"LeakyRelu", "Neg", "Abs", "Reciprocal", "Log"}, {0.1f}},
      {{"Pow:1", "Add:2:r"}, {}},
      {{"Abs", "Pow:2:r"}, {}},
      {{"Relu"}, {}},
      {{}, {}},  // no steps: a copy
  };
  const std::vector<int64_t> x_shape = {2, 6, 7, 9};
  const std::vector<std::vector<int64_t>> extra_shapes = {{2, 6, 7, 9}, {6, 1, 1}, {1, 6, 1, 1}, {9}, {}, {2, 6, 1, 1}};
  for (const Case& c : cases) {
    std::string name;
    for (const auto& s : c.ops) name += s + " ";
    SCOPED_TRACE(name);
    for (const auto& e1 : extra_shapes) {
      SCOPED_TRACE("extra " + shape_to_string(e1));
      const Tensor x = rnd(x_shape, 0.1, 3), a = rnd(e1, 0.5, 2), b = rnd({6, 1, 1}, -1, 1);
      for (bool constant : {false, true})
        for (Layout l : kBothLayouts)
          expect_in_layout(chain(c.ops, c.params, {x, a, b}, {false, constant, constant}), l);
    }
  }
}

TEST(Eltwise, ChainShapesAndSizes) {
  for (std::vector<int64_t> shape :
       {std::vector<int64_t>{1, 3, 7, 9}, {2, 37}, {1}, {}, {1, 64, 56, 56}, {3, 5, 2, 3, 7}, {1000, 3}}) {
    SCOPED_TRACE(shape_to_string(shape));
    std::vector<int64_t> bias_shape = shape.size() >= 2 ? std::vector<int64_t>{shape[1]} : std::vector<int64_t>{};
    for (size_t i = 2; i < shape.size(); ++i) bias_shape.push_back(1);
    for (Layout l : kBothLayouts)
      expect_in_layout(chain({"Add:1", "Sigmoid", "Mul:0", "Add:2"}, {}, {rnd(shape), rnd(bias_shape), rnd(shape)}), l);
  }
}

// ---- Layout negotiation.

TEST(Eltwise, LayoutsFollowTheFullRankOperands) {
  const cpu::Tactic& add = tactic("Add");
  // Both full-rank operands channels-last: taken as they are, output channels-last.
  {
    NodeRun r = make_run(make_node("Add", 2), {rnd({1, 3, 5, 5}), rnd({1, 3, 5, 5})}, 17, {},
                         {Layout::kChannelsLast, Layout::kChannelsLast});
    auto cfg = make_config(r);
    EXPECT_EQ(add.input_layouts(cfg), (std::vector<Layout>{Layout::kAny, Layout::kAny}));
    EXPECT_EQ(add.output_layouts(cfg)[0], Layout::kChannelsLast);
  }
  // SE block: [N, C, 1, 1] stores the same bytes in both layouts, so it does not force plain.
  {
    NodeRun r = make_run(make_node("Mul", 2), {rnd({2, 8, 5, 5}), rnd({2, 8, 1, 1})}, 17, {},
                         {Layout::kChannelsLast, Layout::kPlain});
    auto cfg = make_config(r);
    EXPECT_EQ(tactic("Mul").input_layouts(cfg), (std::vector<Layout>{Layout::kAny, Layout::kAny}));
    EXPECT_EQ(tactic("Mul").output_layouts(cfg)[0], Layout::kChannelsLast);
    expect_matches(r);
  }
  // Mixed layouts: plain for everything.
  {
    NodeRun r = make_run(make_node("Add", 2), {rnd({1, 3, 5, 5}), rnd({1, 3, 5, 5})}, 17, {},
                         {Layout::kChannelsLast, Layout::kPlain});
    auto cfg = make_config(r);
    EXPECT_EQ(add.input_layouts(cfg), (std::vector<Layout>{Layout::kPlain, Layout::kPlain}));
    expect_matches(r);
  }
  // A rank-3 operand against a rank-4 channels-last one: ambiguous, plain for everything.
  {
    NodeRun r = make_run(make_node("Add", 2), {rnd({2, 3, 5, 6}), rnd({3, 5, 6})}, 17, {},
                         {Layout::kChannelsLast, Layout::kChannelsLast});
    auto cfg = make_config(r);
    EXPECT_EQ(add.input_layouts(cfg), (std::vector<Layout>{Layout::kPlain, Layout::kPlain}));
    expect_matches(r);
  }
  // A constant full-shape operand against a channels-last input: the constant is plain, the
  // output follows the input.
  {
    NodeRun r = make_run(make_node("Add", 2), {rnd({1, 3, 5, 6}), rnd({1, 3, 5, 6})}, 17, {true, false},
                         {Layout::kPlain, Layout::kChannelsLast});
    auto cfg = make_config(r);
    EXPECT_EQ(add.input_layouts(cfg), (std::vector<Layout>{Layout::kPlain, Layout::kAny}));
    EXPECT_EQ(add.output_layouts(cfg)[0], Layout::kChannelsLast);
    expect_matches(r);
  }
  // Where is plain-only: a channels-last label on a [1, C, 1, 1] operand does not make its output
  // channels-last.
  {
    Tensor c(DType::kBool, {1, 3, 1, 1});
    NodeRun r = make_run(make_node("Where", 3), {c, rnd({2, 3, 5, 6}), rnd({})}, 17, {false, true, false},
                         {Layout::kChannelsLast, Layout::kPlain, Layout::kPlain});
    EXPECT_EQ(tactic("Where").output_layouts(make_config(r))[0], Layout::kPlain);
  }
  // Integer and Where kernels are plain-only.
  {
    NodeRun r = make_run(make_node("Add", 2),
                         {random_tensor(DType::kI64, {1, 3, 5, 6}, 1), random_tensor(DType::kI64, {1, 3, 5, 6}, 2)}, 17,
                         {}, {Layout::kChannelsLast, Layout::kChannelsLast});
    EXPECT_EQ(add.input_layouts(make_config(r)), (std::vector<Layout>{Layout::kPlain, Layout::kPlain}));
    expect_matches(r);
  }
}

TEST(Eltwise, DescribesItsIsa) {
  NodeRun r = chain({"Add:1", "Relu"}, {}, {rnd({1, 8, 9, 9}), rnd({8, 1, 1})});
  auto cfg = make_config(r);
  auto k = tactic("ElementwiseChain", "kiln").create(cfg);
  EXPECT_NE(k->describe().find("Add:1 Relu"), std::string::npos) << k->describe();
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) {
    EXPECT_EQ(k->required_isa(), std::vector<std::string>{"avx512f"});
  }
}

// ---- What the tactic leaves to others.

TEST(Eltwise, UnsupportedCases) {
  // f16 / f64 arithmetic, mixed-dtype Pow, legacy broadcasting, casts to other dtypes, f16 chains.
  EXPECT_FALSE(tactic_supports(
      kTactic, make_run(make_node("Add", 2), {rnd({4}, -1, 1, DType::kF16), rnd({4}, -1, 1, DType::kF16)})));
  EXPECT_FALSE(tactic_supports(kTactic, make_run(make_node("Sigmoid", 1), {rnd({4}, -1, 1, DType::kF64)})));
  EXPECT_FALSE(tactic_supports(kTactic, make_run(make_node("Relu", 1), {rnd({4}, -5, 5, DType::kI64)})));
  EXPECT_FALSE(tactic_supports(
      kTactic, make_run(make_node("Pow", 2), {rnd({4}), Tensor::from_vector<int64_t>({1}, {2})}, 17, {false, true})));
  EXPECT_FALSE(tactic_supports(
      kTactic, make_run(make_node("Add", 2, {{"broadcast", Attribute::of_int(1)}}), {rnd({2, 3}), rnd({3})}, 6)));
  EXPECT_FALSE(tactic_supports(
      kTactic,
      make_run(make_node("Cast", 1, {{"to", Attribute::of_int(dtype_to_onnx(DType::kF64))}}), {rnd({4})}, 13)));
  EXPECT_FALSE(tactic_supports(
      kTactic,
      make_run(make_node("Cast", 1, {{"to", Attribute::of_int(dtype_to_onnx(DType::kBool))}}), {rnd({4})}, 13)));
  EXPECT_FALSE(tactic_supports(
      kTactic, chain({"Add:1", "Relu"}, {}, {rnd({2, 3}, -1, 1, DType::kF16), rnd({3}, -1, 1, DType::kF16)})));
  EXPECT_FALSE(tactic_supports(
      kTactic, make_run(make_node("Max", 2), {rnd({2, 3}, -1, 1, DType::kF16), rnd({3}, -1, 1, DType::kF16)})));
  // Where on f16 data is fine (byte copies); Where with a non-bool condition is invalid anyway.
  EXPECT_TRUE(tactic_supports(
      kTactic, make_run(make_node("Where", 3),
                        {Tensor(DType::kBool, {4}), rnd({4}, -1, 1, DType::kF16), rnd({4}, -1, 1, DType::kF16)})));
}

}  // namespace
}  // namespace kiln_cpu_test
