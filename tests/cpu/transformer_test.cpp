// The transformer tactics (kiln.softmax, kiln.layernorm, kiln.attention) against the reference kernels.
// Tolerance: rtol 1e-4, atol 1e-5 (float sums in vector lanes and a polynomial exp against double references).
#include <limits>

#include "cpu_test_support.h"

namespace kiln_cpu_test {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

uint32_t next_seed() {
  static uint32_t seed = 4321;
  return seed += 104729;
}

Node make_node(const std::string& domain, const std::string& op, std::vector<std::string> inputs,
               std::vector<std::string> outputs = {"y"}) {
  Node n;
  n.name = "t";
  n.domain = domain;
  n.op_type = op;
  n.inputs = std::move(inputs);
  n.outputs = std::move(outputs);
  return n;
}

// Like expect_matches_reference, but an infinity matches the same infinity (LogSoftmax of -inf is -inf).
void expect_matches_reference_inf(const std::string& tactic, const NodeRun& r) {
  const Tensor got = run_tactic(tactic, r)[0], want = run_reference(r)[0];
  ASSERT_EQ(got.shape(), want.shape());
  const auto g = got.to_double_vector(), w = want.to_double_vector();
  int bad = 0;
  for (size_t i = 0; i < g.size() && bad < 5; ++i) {
    if ((std::isnan(w[i]) && std::isnan(g[i])) || (std::isinf(w[i]) && g[i] == w[i])) continue;
    if (std::fabs(g[i] - w[i]) <= 1e-5 + 1e-4 * std::fabs(w[i])) continue;
    ADD_FAILURE() << "element " << i << ": got " << g[i] << ", want " << w[i];
    ++bad;
  }
}

// ---- Softmax / LogSoftmax

NodeRun softmax_run(const std::string& op, std::vector<int64_t> shape, int64_t opset, std::optional<int64_t> axis,
                    Layout layout = Layout::kPlain) {
  NodeRun r;
  r.node = make_node("", op, {"x"});
  if (axis) r.node.attrs["axis"] = Attribute::of_int(*axis);
  r.opset = opset;
  r.inputs = {random_tensor(DType::kF32, shape, next_seed(), -4.0, 4.0)};
  r.producer_layouts = {layout};
  return r;
}

TEST(SoftmaxTactic, AxesAndOpsets) {
  for (const char* op : {"Softmax", "LogSoftmax"}) {
    SCOPED_TRACE(op);
    for (int64_t axis : {-1, 0, 1, 2, -2}) {
      SCOPED_TRACE("opset 13 axis " + std::to_string(axis));
      NodeRun r = softmax_run(op, {3, 5, 37}, 13, axis);
      ASSERT_TRUE(tactic_supports("kiln.softmax", r));
      expect_matches_reference("kiln.softmax", r);
    }
    for (int64_t axis : {0, 1, 2, 3, -1}) {
      SCOPED_TRACE("opset 11 axis " + std::to_string(axis));
      NodeRun r = softmax_run(op, {3, 5, 37}, 11, axis);
      ASSERT_TRUE(tactic_supports("kiln.softmax", r));
      expect_matches_reference("kiln.softmax", r);
    }
    // Defaults: axis 1 before opset 13 (coerced to 2-D), -1 from 13.
    expect_matches_reference("kiln.softmax", softmax_run(op, {2, 3, 4, 5}, 1, std::nullopt));
    expect_matches_reference("kiln.softmax", softmax_run(op, {2, 3, 4, 5}, 13, std::nullopt));
    // A strided axis wider than one lane block (inner 300 > 256), and a long contiguous row.
    expect_matches_reference("kiln.softmax", softmax_run(op, {2, 3, 300}, 13, 1));
    expect_matches_reference("kiln.softmax", softmax_run(op, {3, 5000}, 13, -1));
    expect_matches_reference("kiln.softmax", softmax_run(op, {7}, 13, 0));
    // Producers in channels-last layout.
    expect_matches_reference("kiln.softmax", softmax_run(op, {2, 12, 9, 9}, 13, -1, Layout::kChannelsLast));
  }
}

TEST(SoftmaxTactic, InfinitiesAndNaNRows) {
  for (const char* op : {"Softmax", "LogSoftmax"}) {
    SCOPED_TRACE(op);
    NodeRun r = softmax_run(op, {4, 19}, 13, -1);
    float* x = r.inputs[0].mutable_data<float>();
    x[3] = -kInf;                                  // row 0: one masked entry
    for (int j = 0; j < 19; ++j) x[19 + j] = -kInf;  // row 1: all -inf gives NaN
    x[2 * 19 + 5] = std::numeric_limits<float>::quiet_NaN();  // row 2: a NaN spreads
    for (int j = 0; j < 19; ++j) x[3 * 19 + j] = j % 2 ? -1e9f : 0.5f;
    expect_matches_reference_inf("kiln.softmax", r);
    const Tensor y = run_tactic("kiln.softmax", r)[0];
    EXPECT_TRUE(std::isnan(y.data<float>()[19]));
    EXPECT_TRUE(std::isnan(y.data<float>()[2 * 19]));
    // The same along a strided axis.
    NodeRun s = softmax_run(op, {19, 4}, 13, 0);
    float* xs = s.inputs[0].mutable_data<float>();
    for (int j = 0; j < 19; ++j) xs[j * 4 + 1] = -kInf;
    xs[2 * 4 + 2] = -kInf;
    expect_matches_reference_inf("kiln.softmax", s);
  }
}

TEST(SoftmaxTactic, Unsupported) {
  NodeRun r = softmax_run("Softmax", {3, 4}, 13, -1);
  r.inputs[0] = random_tensor(DType::kF64, {3, 4}, 5);
  EXPECT_FALSE(tactic_supports("kiln.softmax", r));
  r.inputs[0] = random_tensor(DType::kF16, {3, 4}, 5);
  EXPECT_FALSE(tactic_supports("kiln.softmax", r));
  NodeRun empty = softmax_run("Softmax", {3, 0}, 13, -1);
  EXPECT_FALSE(tactic_supports("kiln.softmax", empty));
}

// ---- LayerNormalization

NodeRun layernorm_run(const std::string& domain, std::vector<int64_t> x, std::vector<int64_t> scale,
                      std::optional<std::vector<int64_t>> bias, int64_t axis, bool const_params = true,
                      Layout layout = Layout::kPlain) {
  NodeRun r;
  std::vector<std::string> ins = {"x", "scale"};
  if (bias) ins.push_back("bias");
  r.node = make_node(domain, "LayerNormalization", ins);
  r.node.attrs["axis"] = Attribute::of_int(axis);
  r.node.attrs["epsilon"] = Attribute::of_float(1e-3f);
  r.opset = domain.empty() ? 17 : 1;
  r.inputs = {random_tensor(DType::kF32, x, next_seed(), -3.0, 5.0), random_tensor(DType::kF32, scale, next_seed())};
  if (bias) r.inputs.push_back(random_tensor(DType::kF32, *bias, next_seed()));
  r.constant = {false, const_params, const_params};
  r.producer_layouts = {layout};
  return r;
}

TEST(LayerNormTactic, KilnAndOnnxWithAndWithoutBias) {
  using Dims = std::vector<int64_t>;
  for (const std::string domain : {"kiln", ""}) {
    SCOPED_TRACE(domain.empty() ? "ai.onnx" : "kiln");
    for (bool const_params : {true, false}) {
      SCOPED_TRACE(const_params ? "constant Scale and B" : "computed Scale and B");
      auto check = [&](Dims x, Dims scale, std::optional<Dims> bias, int64_t axis, Layout layout = Layout::kPlain) {
        expect_matches_reference("kiln.layernorm", layernorm_run(domain, x, scale, bias, axis, const_params, layout));
      };
      check({2, 7, 48}, {48}, Dims{48}, -1);
      check({2, 7, 48}, {48}, std::nullopt, -1);
      check({2, 7, 48}, {7, 48}, Dims{7, 48}, -2);
      check({3, 5, 33}, {33}, Dims{1, 33}, -1, Layout::kChannelsLast);
      // Scale and B broadcast inside the normalized dims: spread over the columns.
      check({2, 7, 48}, {48}, Dims{7, 1}, -2);
      check({2, 7, 48}, {1}, Dims{}, 1);
      // BERT's hidden size, and a row longer than one summation block.
      check({1, 5, 768}, {768}, Dims{768}, -1);
      check({2, 3000}, {3000}, Dims{3000}, 1);
      check({2, 3, 4, 5}, {3, 4, 5}, std::nullopt, 1);
      check({6, 5}, {6, 5}, std::nullopt, 0);
    }
  }
}

TEST(LayerNormTactic, OnnxMeanAndInvStdDevOutputs) {
  NodeRun r = layernorm_run("", {2, 7, 48}, {48}, std::vector<int64_t>{48}, -1);
  r.node.outputs = {"y", "mean", "inv_std"};
  expect_matches_reference("kiln.layernorm", r);
  r.node.outputs = {"y", "", "inv_std"};
  expect_matches_reference("kiln.layernorm", r);
  r = layernorm_run("", {2, 7, 48}, {7, 48}, std::nullopt, -2);
  r.node.outputs = {"y", "mean"};
  expect_matches_reference("kiln.layernorm", r);
}

TEST(LayerNormTactic, Unsupported) {
  // A scale that differs between rows is not a per-column parameter.
  EXPECT_FALSE(tactic_supports("kiln.layernorm", layernorm_run("kiln", {2, 7, 48}, {2, 1, 48}, std::nullopt, -1)));
  EXPECT_FALSE(tactic_supports("kiln.layernorm", layernorm_run("", {2, 7, 48}, {7, 1}, std::nullopt, -1)));
  NodeRun f64 = layernorm_run("kiln", {2, 7, 8}, {8}, std::nullopt, -1);
  f64.inputs[0] = random_tensor(DType::kF64, {2, 7, 8}, 3);
  f64.inputs[1] = random_tensor(DType::kF64, {8}, 4);
  EXPECT_FALSE(tactic_supports("kiln.layernorm", f64));
}

// ---- Attention

NodeRun attention_run(int64_t b, int64_t sq, int64_t sk, int64_t heads, int64_t dk, int64_t dv,
                      std::optional<std::vector<int64_t>> mask, float scale = 0.0f) {
  NodeRun r;
  std::vector<std::string> ins = {"q", "k", "v"};
  if (mask) ins.push_back("mask");
  r.node = make_node("kiln", "Attention", ins);
  r.node.attrs["num_heads"] = Attribute::of_int(heads);
  if (scale != 0.0f) r.node.attrs["scale"] = Attribute::of_float(scale);
  r.opset = 1;
  r.inputs = {random_tensor(DType::kF32, {b, sq, heads * dk}, next_seed(), -2.0, 2.0),
              random_tensor(DType::kF32, {b, sk, heads * dk}, next_seed(), -2.0, 2.0),
              random_tensor(DType::kF32, {b, sk, heads * dv}, next_seed())};
  if (mask) r.inputs.push_back(random_tensor(DType::kF32, *mask, next_seed(), -3.0, 0.0));
  return r;
}

// Sets mask element (i, j) of every leading index (mask of shape [..., rows, cols]) with f(i, j).
template <typename F>
void fill_mask(Tensor& mask, F f) {
  const auto& s = mask.shape();
  const int64_t rows = s.size() >= 2 ? s[s.size() - 2] : 1, cols = s.back();
  float* p = mask.mutable_data<float>();
  for (int64_t i = 0; i < mask.numel(); ++i) p[i] = f(i / cols % rows, i % cols, i / (rows * cols));
}

TEST(AttentionTactic, ShapesWithoutMask) {
  expect_matches_reference("kiln.attention", attention_run(2, 5, 7, 3, 4, 6, std::nullopt));
  expect_matches_reference("kiln.attention", attention_run(1, 9, 9, 2, 8, 8, std::nullopt, 0.3f));
  expect_matches_reference("kiln.attention", attention_run(3, 1, 13, 4, 5, 3, std::nullopt));  // one query (decoding)
  // Several query blocks, and BERT-base.
  expect_matches_reference("kiln.attention", attention_run(1, 70, 33, 1, 16, 16, std::nullopt));
  expect_matches_reference("kiln.attention", attention_run(1, 128, 128, 12, 64, 64, std::nullopt));
}

TEST(AttentionTactic, MaskShapes) {
  for (std::vector<int64_t> m : {std::vector<int64_t>{2, 1, 1, 7}, {2, 1, 5, 7}, {5, 7}, {2, 3, 5, 7}, {1, 3, 1, 7},
                                 {7}, {1}, {}}) {
    SCOPED_TRACE(shape_to_string(m));
    expect_matches_reference("kiln.attention", attention_run(2, 5, 7, 3, 4, 6, m));
  }
}

TEST(AttentionTactic, PaddingAndCausalMasks) {
  // Padding mask [B, 1, 1, Sk] with -1e9 on padded keys; batch 1 is padded everywhere (a uniform -1e9 row must
  // keep the scores' differences, as the reference computes).
  NodeRun pad = attention_run(2, 6, 8, 2, 4, 4, std::vector<int64_t>{2, 1, 1, 8});
  fill_mask(pad.inputs[3], [](int64_t, int64_t j, int64_t b) { return b == 1 || j >= 5 ? -1e9f : 0.0f; });
  expect_matches_reference("kiln.attention", pad);
  // The same with the most negative float.
  fill_mask(pad.inputs[3], [](int64_t, int64_t j, int64_t b) {
    return b == 1 || j >= 5 ? -std::numeric_limits<float>::max() : 0.0f;
  });
  expect_matches_reference("kiln.attention", pad);
  // Causal [Sq, Sk] with -inf, Sq != Sk (queries are the last Sq positions).
  for (float neg : {-kInf, -10000.0f}) {
    NodeRun causal = attention_run(2, 5, 9, 3, 4, 6, std::vector<int64_t>{5, 9});
    fill_mask(causal.inputs[3], [neg](int64_t i, int64_t j, int64_t) { return j > i + 4 ? neg : 0.0f; });
    expect_matches_reference("kiln.attention", causal);
  }
  // Causal [B, 1, Sq, Sk] combined with padding.
  NodeRun both = attention_run(2, 7, 7, 2, 8, 5, std::vector<int64_t>{2, 1, 7, 7});
  fill_mask(both.inputs[3], [](int64_t i, int64_t j, int64_t b) { return j > i || (b == 1 && j >= 4) ? -kInf : 0.0f; });
  expect_matches_reference("kiln.attention", both);
}

TEST(AttentionTactic, FullyMaskedRowIsNaN) {
  NodeRun r = attention_run(2, 4, 6, 2, 4, 3, std::vector<int64_t>{2, 1, 4, 6});
  fill_mask(r.inputs[3], [](int64_t i, int64_t, int64_t b) { return b == 1 && i == 2 ? -kInf : 0.0f; });
  expect_matches_reference("kiln.attention", r);
  const Tensor y = run_tactic("kiln.attention", r)[0];
  // Batch 1, query 2: every head's output is NaN; query 1 is not.
  const float* p = y.data<float>() + (1 * 4 + 2) * 6;
  for (int e = 0; e < 6; ++e) EXPECT_TRUE(std::isnan(p[e])) << e;
  EXPECT_FALSE(std::isnan(y.data<float>()[(1 * 4 + 1) * 6]));
}

TEST(AttentionTactic, Unsupported) {
  NodeRun r = attention_run(1, 3, 3, 2, 4, 4, std::nullopt);
  r.inputs[0] = random_tensor(DType::kF64, {1, 3, 8}, 1);
  r.inputs[1] = random_tensor(DType::kF64, {1, 3, 8}, 2);
  r.inputs[2] = random_tensor(DType::kF64, {1, 3, 8}, 3);
  EXPECT_FALSE(tactic_supports("kiln.attention", r));
}

}  // namespace
}  // namespace kiln_cpu_test
