// The matrix-multiply tactics (dnnl.matmul, dnnl.inner_product, kiln.sgemm) on kiln::FusedMatMul, MatMul and
// Gemm against the reference kernels. Tolerance: rtol 1e-4, atol 1e-5 (oneDNN and dnnl_sgemm reorder the K sums).
#include <limits>

#include "cpu_test_support.h"

namespace kiln_cpu_test {
namespace {

const std::vector<std::string> kTactics = {"dnnl.matmul", "dnnl.inner_product", "kiln.sgemm"};

uint32_t next_seed() {
  static uint32_t seed = 1234;
  return seed += 7919;
}

struct Case {
  std::string domain, op;
  std::vector<int64_t> a, b;
  std::optional<std::vector<int64_t>> c;
  std::map<std::string, Attribute> attrs;
  bool const_b = true, const_c = true;
  Layout a_layout = Layout::kPlain;
};

NodeRun make_run(const Case& c) {
  NodeRun r;
  r.node.name = "mm";
  r.node.domain = c.domain;
  r.node.op_type = c.op;
  r.node.inputs = {"a", "b"};
  r.node.outputs = {"y"};
  r.node.attrs = c.attrs;
  r.opset = c.domain == "kiln" ? 1 : 17;
  r.inputs = {random_tensor(DType::kF32, c.a, next_seed()), random_tensor(DType::kF32, c.b, next_seed())};
  r.constant = {false, c.const_b};
  if (c.c) {
    r.node.inputs.push_back("c");
    r.inputs.push_back(random_tensor(DType::kF32, *c.c, next_seed()));
    r.constant.push_back(c.const_c);
  }
  r.producer_layouts = {c.a_layout, Layout::kPlain, Layout::kPlain};
  return r;
}

Case fused(std::vector<int64_t> a, std::vector<int64_t> b, std::optional<std::vector<int64_t>> c,
           const std::string& act = "", std::vector<float> params = {}) {
  Case k{"kiln", "FusedMatMul", std::move(a), std::move(b), std::move(c), {}};
  if (!act.empty()) k.attrs["activation"] = Attribute::of_string(act);
  if (!params.empty()) k.attrs["activation_params"] = Attribute::of_floats(std::move(params));
  return k;
}

// Every tactic that supports the case must match; `expect` names those that must support it.
void check(const Case& c, const std::vector<std::string>& expect) {
  const NodeRun r = make_run(c);
  int ran = 0;
  for (const std::string& t : kTactics) {
    SCOPED_TRACE(t);
    const bool must = std::find(expect.begin(), expect.end(), t) != expect.end();
    const bool supported = tactic_supports(t, r);
    if (must) {
      EXPECT_TRUE(supported);
    }
    if (!supported) continue;
    expect_matches_reference(t, r);
    ++ran;
  }
  EXPECT_GE(ran, static_cast<int>(expect.size()));
}

const std::vector<std::string> kAll = kTactics;
const std::vector<std::string> kMatmulAndSgemm = {"dnnl.matmul", "kiln.sgemm"};

TEST(MatMulTactics, BertLikeFusedBiasActivations) {
  for (const char* act : {"", "Relu", "Gelu", "GeluTanh", "Sigmoid", "Tanh"}) {
    SCOPED_TRACE(act);
    check(fused({2, 7, 32}, {32, 48}, std::vector<int64_t>{48}, act), kAll);
  }
  check(fused({2, 7, 32}, {32, 48}, std::vector<int64_t>{48}, "LeakyRelu", {0.2f}), kAll);
  check(fused({2, 7, 32}, {32, 48}, std::vector<int64_t>{48}, "LeakyRelu"), kAll);
  check(fused({2, 7, 32}, {32, 48}, std::vector<int64_t>{48}, "Clip", {-0.3f, 0.4f}), kAll);
  check(fused({2, 7, 32}, {32, 48}, std::vector<int64_t>{48}, "Clip", {0.0f, std::numeric_limits<float>::infinity()}),
        kAll);
}

TEST(MatMulTactics, FusedOddSizesAndLayouts) {
  Case c = fused({3, 37, 65}, {65, 19}, std::vector<int64_t>{19}, "Gelu");
  c.a_layout = Layout::kChannelsLast;
  check(c, kAll);
  check(fused({1, 1, 33}, {33, 70}, std::vector<int64_t>{1, 70}, "Relu"), kAll);
  check(fused({5, 3}, {3, 1}, std::vector<int64_t>{1}), kAll);
  // Activations over a wider range of inputs than [-1, 1]: K = 200 sums reach about +-10.
  check(fused({4, 200}, {200, 17}, std::nullopt, "Gelu"), kAll);
  check(fused({4, 200}, {200, 17}, std::nullopt, "GeluTanh"), kAll);
  check(fused({4, 200}, {200, 17}, std::nullopt, "Tanh"), kAll);
  check(fused({4, 200}, {200, 17}, std::nullopt, "Sigmoid"), kAll);
}

TEST(MatMulTactics, FusedAlphaBetaAndCShapes) {
  for (bool const_b : {true, false})
    for (bool const_c : {true, false})
      for (std::vector<int64_t> cs : {std::vector<int64_t>{48}, {1, 48}, {7, 48}, {7, 1}, {2, 7, 48}, {2, 1, 48},
                                      {2, 7, 1}, {1}, {}}) {
        SCOPED_TRACE(shape_to_string(cs) + (const_b ? " const B" : "") + (const_c ? " const C" : ""));
        Case c = fused({2, 7, 32}, {32, 48}, cs, "Relu");
        c.attrs["alpha"] = Attribute::of_float(0.75f);
        c.attrs["beta"] = Attribute::of_float(-1.5f);
        c.const_b = const_b;
        c.const_c = const_c;
        check(c, {"dnnl.matmul", "kiln.sgemm"});
        c.attrs.erase("alpha");
        c.attrs.erase("beta");
        check(c, {"dnnl.matmul", "kiln.sgemm"});
      }
}

TEST(MatMulTactics, FusedTransposes) {
  for (int ta : {0, 1})
    for (int tb : {0, 1})
      for (bool const_b : {true, false}) {
        SCOPED_TRACE("transA " + std::to_string(ta) + " transB " + std::to_string(tb));
        Case c = fused(ta ? std::vector<int64_t>{21, 9} : std::vector<int64_t>{9, 21},
                       tb ? std::vector<int64_t>{13, 21} : std::vector<int64_t>{21, 13}, std::vector<int64_t>{13},
                       "GeluTanh");
        c.attrs["transA"] = Attribute::of_int(ta);
        c.attrs["transB"] = Attribute::of_int(tb);
        c.attrs["alpha"] = Attribute::of_float(1.25f);
        c.const_b = const_b;
        std::vector<std::string> expect = kMatmulAndSgemm;
        if (!ta && const_b) expect.push_back("dnnl.inner_product");
        check(c, expect);
      }
}

TEST(MatMulTactics, GemmAttributesAndC) {
  for (int ta : {0, 1})
    for (int tb : {0, 1})
      for (std::vector<int64_t> cs : {std::vector<int64_t>{17}, {1, 17}, {5, 1}, {5, 17}, {1}, {}})
        for (bool const_b : {true, false}) {
          SCOPED_TRACE("transA " + std::to_string(ta) + " transB " + std::to_string(tb) + " C " + shape_to_string(cs));
          Case c{"", "Gemm", ta ? std::vector<int64_t>{33, 5} : std::vector<int64_t>{5, 33},
                 tb ? std::vector<int64_t>{17, 33} : std::vector<int64_t>{33, 17}, cs, {}};
          c.attrs["transA"] = Attribute::of_int(ta);
          c.attrs["transB"] = Attribute::of_int(tb);
          c.const_b = const_b;
          check(c, kMatmulAndSgemm);
          c.attrs["alpha"] = Attribute::of_float(0.5f);
          c.attrs["beta"] = Attribute::of_float(2.0f);
          check(c, kMatmulAndSgemm);
        }
  // The common classifier head: transB = 1, C = bias.
  Case head{"", "Gemm", {3, 64}, {10, 64}, std::vector<int64_t>{10}, {{"transB", Attribute::of_int(1)}}};
  check(head, kAll);
  Case no_c{"", "Gemm", {3, 64}, {64, 10}, std::nullopt, {}};
  check(no_c, kAll);
  // Gemm 7..10 (C required, always broadcast).
  NodeRun old = make_run(Case{"", "Gemm", {4, 9}, {9, 6}, std::vector<int64_t>{6}, {{"beta", Attribute::of_float(0.5f)}}});
  old.opset = 9;
  for (const std::string& t : kTactics) {
    SCOPED_TRACE(t);
    ASSERT_TRUE(tactic_supports(t, old));
    expect_matches_reference(t, old);
  }
}

TEST(MatMulTactics, BatchedAndBroadcastMatMul) {
  for (bool const_b : {true, false}) {
    SCOPED_TRACE(const_b ? "const B" : "B computed");
    auto mm = [&](std::vector<int64_t> a, std::vector<int64_t> b) {
      Case c{"", "MatMul", std::move(a), std::move(b), std::nullopt, {}};
      c.const_b = const_b;
      return c;
    };
    check(mm({2, 3, 5, 4}, {2, 3, 4, 6}), kMatmulAndSgemm);
    check(mm({2, 1, 5, 4}, {3, 4, 6}), kMatmulAndSgemm);
    check(mm({5, 4}, {2, 3, 4, 6}), kMatmulAndSgemm);
    check(mm({2, 3, 5, 4}, {1, 3, 4, 6}), kMatmulAndSgemm);
    check(mm({2, 12, 7, 16}, {2, 12, 16, 7}), kMatmulAndSgemm);  // attention-style scores
    check(mm({2, 7, 32}, {32, 48}), const_b ? kAll : kMatmulAndSgemm);
    // 1-D operands.
    check(mm({4}, {2, 4, 6}), kMatmulAndSgemm);
    check(mm({2, 5, 4}, {4}), kMatmulAndSgemm);
    check(mm({4}, {4}), kMatmulAndSgemm);
    check(mm({4}, {4, 9}), kMatmulAndSgemm);
  }
  Case layout{"", "MatMul", {2, 9, 5}, {2, 5, 3}, std::nullopt, {}};
  layout.a_layout = Layout::kChannelsLast;
  layout.const_b = false;
  check(layout, kMatmulAndSgemm);
}

TEST(MatMulTactics, FusedBatchedWithC) {
  check(fused({2, 3, 5, 4}, {2, 3, 4, 6}, std::vector<int64_t>{6}, "Relu"), kMatmulAndSgemm);
  check(fused({2, 3, 5, 4}, {3, 4, 6}, std::vector<int64_t>{3, 5, 6}, "Gelu"), kMatmulAndSgemm);
  check(fused({2, 3, 5, 4}, {4, 6}, std::vector<int64_t>{3, 1, 6}), kMatmulAndSgemm);  // C blocks the fold
  check(fused({4}, {2, 4, 6}, std::vector<int64_t>{2, 6}, "Tanh"), kMatmulAndSgemm);
  check(fused({2, 5, 4}, {4}, std::vector<int64_t>{2, 5}), kMatmulAndSgemm);
}

TEST(MatMulTactics, UnsupportedCases) {
  // Not f32.
  Case i32{"", "MatMul", {3, 4}, {4, 5}, std::nullopt, {}};
  NodeRun r = make_run(i32);
  r.inputs[0] = random_tensor(DType::kI32, {3, 4}, 1, -5, 5);
  r.inputs[1] = random_tensor(DType::kI32, {4, 5}, 2, -5, 5);
  for (const std::string& t : kTactics) EXPECT_FALSE(tactic_supports(t, r)) << t;
  r.inputs[0] = random_tensor(DType::kF64, {3, 4}, 1);
  r.inputs[1] = random_tensor(DType::kF64, {4, 5}, 2);
  for (const std::string& t : kTactics) EXPECT_FALSE(tactic_supports(t, r)) << t;
  // An empty inner dimension.
  NodeRun empty = make_run(Case{"", "MatMul", {3, 0}, {0, 5}, std::nullopt, {}});
  for (const std::string& t : kTactics) EXPECT_FALSE(tactic_supports(t, empty)) << t;
  // Inner product needs constant 2-D weights.
  Case computed_b = fused({2, 7, 32}, {32, 48}, std::vector<int64_t>{48});
  computed_b.const_b = false;
  EXPECT_FALSE(tactic_supports("dnnl.inner_product", make_run(computed_b)));
  EXPECT_FALSE(tactic_supports("dnnl.inner_product", make_run(Case{"", "MatMul", {2, 5, 4}, {2, 4, 6}, {}, {}})));
  // beta = 0 with a computed C: only the sgemm epilogue computes 0 * C exactly.
  Case beta0 = fused({3, 8}, {8, 5}, std::vector<int64_t>{3, 5});
  beta0.attrs["beta"] = Attribute::of_float(0.0f);
  beta0.const_c = false;
  EXPECT_FALSE(tactic_supports("dnnl.matmul", make_run(beta0)));
  check(beta0, {"kiln.sgemm"});
  beta0.const_c = true;
  check(beta0, {"dnnl.matmul", "kiln.sgemm"});
}

// A constant C with inf times beta = 0 must give NaN like the reference; C is fed as a constant.
TEST(MatMulTactics, BetaZeroConstantCKeepsNaN) {
  Case c = fused({3, 8}, {8, 5}, std::vector<int64_t>{5});
  c.attrs["beta"] = Attribute::of_float(0.0f);
  NodeRun r = make_run(c);
  r.inputs[2].mutable_data<float>()[1] = std::numeric_limits<float>::infinity();
  for (const std::string t : {"dnnl.matmul", "kiln.sgemm"}) {
    SCOPED_TRACE(t);
    ASSERT_TRUE(tactic_supports(t, r));
    expect_matches_reference(t, r);
    EXPECT_TRUE(std::isnan(run_tactic(t, r)[0].data<float>()[1]));
  }
}

}  // namespace
}  // namespace kiln_cpu_test
