// Convolution passes (fold-batchnorm, fuse-conv-bias-activation) and the kiln::FusedConv op: golden
// before/after graphs, must-not-change cases for every guard, numeric equivalence with the reference
// executor, FusedConv's schema and kernel against the unfused graph, and the exported real models.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <random>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"
#include "util/npy.h"
#include "test_support.h"

using namespace kiln;
namespace fs = std::filesystem;

namespace {

// ---- Building small models.

Tensor random_tensor(std::vector<int64_t> shape, uint32_t seed, float lo = -1, float hi = 1, DType dt = DType::kF32) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  Tensor t(dt, std::move(shape));
  dispatch_float(dt, [&](auto tag) {
    using T = decltype(tag);
    T* p = t.mutable_data<T>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<T>(dist(rng));
  });
  return t;
}

Tensor scalar_f32(float v) { return Tensor::from_vector<float>({}, {v}); }

struct Builder {
  Model m;
  uint32_t seed = 1;

  explicit Builder(int64_t opset = 17) { m.opsets[""] = opset; }
  Builder& input(const std::string& name, Shape shape, DType dt = DType::kF32) {
    m.graph.inputs.push_back(name);
    m.graph.types[name] = TensorType{dt, std::move(shape)};
    return *this;
  }
  Builder& init(const std::string& name, Tensor t) {
    m.graph.initializers[name] = std::move(t);
    return *this;
  }
  Builder& rand_init(const std::string& name, std::vector<int64_t> shape, float lo = -1, float hi = 1,
                     DType dt = DType::kF32) {
    return init(name, random_tensor(std::move(shape), seed++, lo, hi, dt));
  }
  Builder& node(const std::string& name, const std::string& op, std::vector<std::string> in,
                std::vector<std::string> out, std::map<std::string, Attribute> attrs = {},
                const std::string& domain = "") {
    m.graph.nodes.push_back(Node{name, op, domain, std::move(in), std::move(out), std::move(attrs)});
    if (domain == "kiln") m.opsets["kiln"] = 1;
    return *this;
  }
  Builder& constant(const std::string& name, Tensor t) {
    return node(name, "Constant", {}, {name}, {{"value", Attribute::of_tensor(std::move(t))}});
  }
  // Conv of x [.., cin, ..] with random weights [cout, cin/group, k...] and, if `bias`, a random bias.
  Builder& conv(const std::string& name, const std::string& x, const std::string& y, int64_t cin, int64_t cout,
                std::vector<int64_t> kernel, bool bias, std::map<std::string, Attribute> attrs = {}) {
    int64_t group = attrs.count("group") ? attrs.at("group").i : 1;
    std::vector<int64_t> wshape = {cout, cin / group};
    wshape.insert(wshape.end(), kernel.begin(), kernel.end());
    rand_init(name + "_w", wshape, -0.5f, 0.5f);
    std::vector<std::string> in = {x, name + "_w"};
    if (bias) {
      rand_init(name + "_b", {cout});
      in.push_back(name + "_b");
    }
    return node(name, "Conv", in, {y}, std::move(attrs));
  }
  // BatchNormalization of x with random statistics (positive variance) over `c` channels.
  Builder& bn(const std::string& name, const std::string& x, const std::string& y, int64_t c,
              std::map<std::string, Attribute> attrs = {}) {
    rand_init(name + "_scale", {c}, 0.5f, 1.5f);
    rand_init(name + "_bias", {c});
    rand_init(name + "_mean", {c});
    rand_init(name + "_var", {c}, 0.2f, 2.0f);
    return node(name, "BatchNormalization", {x, name + "_scale", name + "_bias", name + "_mean", name + "_var"}, {y},
                std::move(attrs));
  }
  Builder& output(const std::string& name) {
    m.graph.outputs.push_back(name);
    return *this;
  }
};

Attribute ints(std::vector<int64_t> v) { return Attribute::of_ints(std::move(v)); }

// "Conv(x,w)->a; Relu(a)->y; out: y"; fused ops print their domain and activation:
// "kiln::FusedConv[Relu](x,w,b)->y".
std::string summary(const Model& m) {
  std::string s;
  for (const Node& n : m.graph.nodes) {
    s += (n.domain.empty() ? "" : n.domain + "::") + n.op_type;
    if (const Attribute* a = n.attr("activation"); a && n.domain == "kiln") s += "[" + a->s + "]";
    s += "(";
    for (size_t i = 0; i < n.inputs.size(); ++i) s += (i ? "," : "") + n.inputs[i];
    s += ")->";
    for (size_t i = 0; i < n.outputs.size(); ++i) s += (i ? "," : "") + n.outputs[i];
    s += "; ";
  }
  s += "out:";
  for (const auto& o : m.graph.outputs) s += " " + o;
  return s;
}

int run_passes(Model& m, std::vector<std::unique_ptr<Pass>> passes, PassContext* out_ctx = nullptr) {
  infer_types(m);  // passes run on typed models
  PassManager pm;
  for (auto& p : passes) pm.add(std::move(p));
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  int n = pm.run(m, ctx);
  if (out_ctx) *out_ctx = ctx;
  return n;
}
int run_pass(std::unique_ptr<Pass> pass, Model& m) {
  std::vector<std::unique_ptr<Pass>> v;
  v.push_back(std::move(pass));
  return run_passes(m, std::move(v));
}
int fold(Model& m) { return run_pass(make_fold_batchnorm(), m); }
int fuse(Model& m) { return run_pass(make_fuse_conv_bias_activation(), m); }

// Random inputs for every graph input (static shapes), the same for every call with one seed.
reference::TensorMap random_inputs(const Model& m, uint32_t seed = 42) {
  reference::TensorMap in;
  for (const auto& name : m.graph.inputs) {
    const TensorType& t = m.graph.types.at(name);
    in[name] = random_tensor(static_dims(*t.shape), seed++, -2, 2, t.dtype);
  }
  return in;
}

// Runs both models on the same random inputs; fp32 tolerance: max abs diff <= tol * max(1, max|ref|)
// (tol = 0: bit-exact).
void expect_equivalent(const Model& before, const Model& after, double tol = 1e-5, uint32_t seed = 42) {
  auto in = random_inputs(before, seed);
  auto a = reference::Executor(before).run(in);
  auto b = reference::Executor(after).run(in);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    ASSERT_EQ(t.shape(), b.at(name).shape()) << name;
    ASSERT_EQ(t.dtype(), b.at(name).dtype()) << name;
    auto x = t.to_double_vector(), y = b.at(name).to_double_vector();
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      max_diff = std::max(max_diff, std::fabs(x[i] - y[i]));
      max_ref = std::max(max_ref, std::fabs(x[i]));
    }
    EXPECT_LE(max_diff, tol * std::max(1.0, max_ref)) << name << ": max |ref| " << max_ref;
  }
}

size_t count_op(const Model& m, const std::string& op) {
  size_t n = 0;
  for (const Node& node : m.graph.nodes) n += node.op_type == op;
  return n;
}

const Node* find_node(const Model& m, const std::string& op) {
  for (const Node& n : m.graph.nodes)
    if (n.op_type == op) return &n;
  return nullptr;
}

const Shape kImage = {Dim(2), Dim(3), Dim(6), Dim(6)};

}  // namespace

// ===================================================================== kiln::FusedConv schema

TEST(FusedConvSchema, InfersLikeConvWithSymbolicDims) {
  Builder b;
  b.input("x", {Dim::sym("N"), Dim(4), Dim::sym("H"), Dim::sym("W")})
      .rand_init("w", {8, 2, 1, 1})
      .rand_init("bias", {8})
      .node("c", "FusedConv", {"x", "w", "bias"}, {"y"},
            {{"group", Attribute::of_int(2)}, {"activation", Attribute::of_string("Relu")}}, "kiln")
      .output("y");
  infer_types(b.m);
  EXPECT_EQ(shape_to_string(*b.m.graph.types.at("y").shape), "[N,8,H,W]");
  EXPECT_EQ(b.m.graph.types.at("y").dtype, DType::kF32);

  // Strided 3x3: spatial dims unknown to Conv's inference, pinned down by the residual Z.
  Builder r;
  r.input("x", {Dim::sym("N"), Dim(3), Dim::sym("H"), Dim::sym("W")})
      .input("z", {Dim::sym("N"), Dim(4), Dim::sym("H2"), Dim::sym("W2")})
      .rand_init("w", {4, 3, 3, 3})
      .node("c", "FusedConv", {"x", "w", "", "z"}, {"y"}, {{"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}},
            "kiln")
      .output("y");
  infer_types(r.m);
  EXPECT_EQ(shape_to_string(*r.m.graph.types.at("y").shape), "[N,4,H2,W2]");

  Builder s;
  s.input("x", {Dim(1), Dim(3), Dim(7), Dim(7)})
      .rand_init("w", {5, 3, 3, 3})
      .node("c", "FusedConv", {"x", "w"}, {"y"},
            {{"strides", ints({2, 2})},
             {"activation", Attribute::of_string("Clip")},
             {"activation_params", Attribute::of_floats({0, 6})}},
            "kiln")
      .output("y");
  infer_types(s.m);
  EXPECT_EQ(shape_to_string(*s.m.graph.types.at("y").shape), "[1,5,3,3]");
}

TEST(FusedConvSchema, RejectsBadActivationsAndResiduals) {
  auto build = [](std::map<std::string, Attribute> attrs, Shape z) {
    Builder b;
    b.input("x", {Dim(1), Dim(3), Dim(4), Dim(4)}).input("z", std::move(z)).rand_init("w", {2, 3, 1, 1});
    b.node("c", "FusedConv", {"x", "w", "", "z"}, {"y"}, std::move(attrs), "kiln").output("y");
    return b.m;
  };
  const Shape good = {Dim(1), Dim(2), Dim(4), Dim(4)};
  Model ok = build({}, good);
  EXPECT_NO_THROW(infer_types(ok));
  Model bad_act = build({{"activation", Attribute::of_string("Swish")}}, good);
  EXPECT_THROW(infer_types(bad_act), Error);
  Model bad_params = build({{"activation", Attribute::of_string("Clip")}}, good);
  EXPECT_THROW(infer_types(bad_params), Error);
  Model relu_params =
      build({{"activation", Attribute::of_string("Relu")}, {"activation_params", Attribute::of_floats({1})}}, good);
  EXPECT_THROW(infer_types(relu_params), Error);
  Model bad_z = build({}, {Dim(1), Dim(2), Dim(1), Dim(1)});  // no broadcasting of Z
  EXPECT_THROW(infer_types(bad_z), Error);
  Model bad_rank = build({}, {Dim(2), Dim(4), Dim(4)});
  EXPECT_THROW(infer_types(bad_rank), Error);
}

// ===================================================================== kiln::FusedConv kernel

namespace {

struct ActCase {
  std::string fused;  // FusedConv activation
  std::vector<float> params;
};

// The unfused graph for act(Conv(x, w, b) + z), written with standard ops (opset 20 for Gelu).
Builder unfused_graph(const ActCase& act, bool bias, bool residual, const Shape& x_shape, const Shape& z_shape,
                      int64_t cin, int64_t cout, std::vector<int64_t> kernel, std::map<std::string, Attribute> attrs,
                      DType dt = DType::kF32) {
  Builder b(20);
  b.input("x", x_shape, dt);
  if (residual) b.input("z", z_shape, dt);
  const int64_t group = attrs.count("group") ? attrs.at("group").i : 1;
  std::vector<int64_t> wshape = {cout, cin / group};
  wshape.insert(wshape.end(), kernel.begin(), kernel.end());
  b.rand_init("w", wshape, -0.5f, 0.5f, dt);
  std::vector<std::string> in = {"x", "w"};
  if (bias) {
    b.rand_init("b", {cout}, -1, 1, dt);
    in.push_back("b");
  }
  std::string v = "conv";
  b.node("conv", "Conv", in, {v}, attrs);
  if (residual) {
    b.node("add", "Add", {v, "z"}, {"sum"});
    v = "sum";
  }
  const std::string& a = act.fused;
  if (a.empty()) {
    b.node("id", "Identity", {v}, {"y"});
  } else if (a == "SiLU") {
    b.node("sig", "Sigmoid", {v}, {"s"}).node("mul", "Mul", {v, "s"}, {"y"});
  } else if (a == "Clip") {
    b.init("lo", Tensor(dt, {})).init("hi", Tensor(dt, {}));
    dispatch_float(dt, [&](auto tag) {
      using T = decltype(tag);
      b.m.graph.initializers["lo"].mutable_data<T>()[0] = static_cast<T>(act.params[0]);
      b.m.graph.initializers["hi"].mutable_data<T>()[0] = static_cast<T>(act.params[1]);
    });
    b.node("clip", "Clip", {v, "lo", "hi"}, {"y"});
  } else if (a == "LeakyRelu") {
    b.node("act", a, {v}, {"y"}, {{"alpha", Attribute::of_float(act.params[0])}});
  } else if (a == "HardSigmoid") {
    b.node("act", a, {v}, {"y"},
           {{"alpha", Attribute::of_float(act.params[0])}, {"beta", Attribute::of_float(act.params[1])}});
  } else if (a == "Gelu" || a == "GeluTanh") {
    b.node("act", "Gelu", {v}, {"y"}, {{"approximate", Attribute::of_string(a == "Gelu" ? "none" : "tanh")}});
  } else {
    b.node("act", a, {v}, {"y"});
  }
  b.output("y");
  return b;
}

// The same computation as one FusedConv node over the same weights.
Model fused_graph(const Model& unfused, const ActCase& act, bool bias, bool residual,
                  std::map<std::string, Attribute> attrs) {
  Model m;
  m.opsets = {{"", 20}, {"kiln", 1}};
  m.graph.inputs = unfused.graph.inputs;
  for (const auto& in : m.graph.inputs) m.graph.types[in] = unfused.graph.types.at(in);
  m.graph.initializers["w"] = unfused.graph.initializers.at("w");
  std::vector<std::string> in = {"x", "w", bias ? "b" : "", residual ? "z" : ""};
  if (bias) m.graph.initializers["b"] = unfused.graph.initializers.at("b");
  while (!in.empty() && in.back().empty()) in.pop_back();
  if (!act.fused.empty()) attrs["activation"] = Attribute::of_string(act.fused);
  if (!act.params.empty()) attrs["activation_params"] = Attribute::of_floats(act.params);
  m.graph.nodes.push_back(Node{"fc", "FusedConv", "kiln", in, {"y"}, attrs});
  m.graph.outputs = {"y"};
  return m;
}

const std::vector<ActCase> kAllActivations = {{"", {}},
                                              {"Relu", {}},
                                              {"Clip", {0, 6}},
                                              {"Clip", {-0.5f, 0.25f}},
                                              {"Sigmoid", {}},
                                              {"SiLU", {}},
                                              {"HardSwish", {}},
                                              {"HardSigmoid", {0.3f, 0.4f}},
                                              {"LeakyRelu", {0.2f}},
                                              {"Gelu", {}},
                                              {"GeluTanh", {}},
                                              {"Tanh", {}}};

}  // namespace

TEST(FusedConvKernel, MatchesUnfusedGraphForEveryActivation) {
  // Several conv geometries: 2-D padded, strided grouped 2-D with dilation, 1-D, 3-D.
  struct Geometry {
    Shape x;
    int64_t cin, cout;
    std::vector<int64_t> kernel;
    std::map<std::string, Attribute> attrs;
  };
  const std::vector<Geometry> geometries = {
      {{Dim(2), Dim(3), Dim(7), Dim(6)}, 3, 4, {3, 3}, {{"pads", ints({1, 1, 1, 1})}}},
      {{Dim(1), Dim(4), Dim(9), Dim(9)},
       4,
       6,
       {3, 3},
       {{"group", Attribute::of_int(2)}, {"strides", ints({2, 2})}, {"dilations", ints({2, 1})}}},
      {{Dim(2), Dim(3), Dim(10)}, 3, 5, {3}, {{"auto_pad", Attribute::of_string("SAME_UPPER")}}},
      {{Dim(1), Dim(2), Dim(4), Dim(5), Dim(3)}, 2, 3, {2, 2, 2}, {}},
  };
  int checked = 0;
  for (const auto& geo : geometries)
    for (const auto& act : kAllActivations)
      for (int variant = 0; variant < 4; ++variant) {
        const bool bias = variant & 1, residual = variant & 2;
        Builder u = unfused_graph(act, bias, residual, geo.x, {}, geo.cin, geo.cout, geo.kernel, geo.attrs);
        if (residual) {
          // Z has the output's shape: infer it from the unfused graph.
          Model probe = u.m;
          probe.graph.nodes.resize(1);
          probe.graph.outputs = {"conv"};
          probe.graph.inputs = {"x"};
          infer_types(probe);
          u.m.graph.types["z"] = probe.graph.types.at("conv");
        }
        Model f = fused_graph(u.m, act, bias, residual, geo.attrs);
        SCOPED_TRACE("activation '" + act.fused + "' bias " + std::to_string(bias) + " residual " +
                     std::to_string(residual) + " x " + shape_to_string(geo.x));
        expect_equivalent(u.m, f, 0.0, 7 + checked);  // same formulas, same rounding: bit-exact
        ++checked;
      }
  EXPECT_EQ(checked, 4 * 12 * 4);
}

TEST(FusedConvKernel, HalfPrecisionRoundsEachStepLikeTheUnfusedGraph) {
  const Shape x = {Dim(1), Dim(3), Dim(5), Dim(5)};
  const Shape z = {Dim(1), Dim(4), Dim(5), Dim(5)};
  const std::map<std::string, Attribute> attrs = {{"pads", ints({1, 1, 1, 1})}};
  for (const auto& act : kAllActivations) {
    for (DType dt : {DType::kF16, DType::kBF16, DType::kF64}) {
      Builder u = unfused_graph(act, true, true, x, z, 3, 4, {3, 3}, attrs, dt);
      Model f = fused_graph(u.m, act, true, true, attrs);
      SCOPED_TRACE(act.fused + " " + std::string(dtype_name(dt)));
      expect_equivalent(u.m, f, 0.0);
    }
  }
}

// ===================================================================== fold-batchnorm

TEST(FoldBatchnorm, ConvWithAndWithoutBias) {
  Builder b;
  b.input("x", kImage)
      .conv("c1", "x", "a", 3, 4, {3, 3}, true, {{"pads", ints({1, 1, 1, 1})}})
      .bn("bn1", "a", "b", 4)
      .node("r", "Relu", {"b"}, {"r"})
      .conv("c2", "r", "c", 4, 4, {1, 1}, false)
      .bn("bn2", "c", "y", 4, {{"epsilon", Attribute::of_float(1e-3f)}})
      .output("y");
  Model m = b.m;
  EXPECT_EQ(fold(m), 2);
  EXPECT_EQ(summary(m),
            "Conv(x,c1_w_bnfold,c1_bias_bnfold)->b; Relu(b)->r; Conv(r,c2_w_bnfold,c2_bias_bnfold)->y; out: y");
  expect_equivalent(b.m, m);
  // The original weights are untouched (another node could share them).
  EXPECT_EQ(m.graph.initializers.at("c1_w").to_double_vector(), b.m.graph.initializers.at("c1_w").to_double_vector());
}

TEST(FoldBatchnorm, GroupedConvAndConvTranspose) {
  Builder b;
  b.input("x", {Dim(1), Dim(4), Dim(5), Dim(5)})
      .conv("dw", "x", "a", 4, 4, {3, 3}, false, {{"group", Attribute::of_int(4)}})
      .bn("bn1", "a", "b", 4)
      .rand_init("wt", {4, 3, 2, 2}, -0.5f, 0.5f)  // ConvTranspose W [C_in, M/group, k, k] with group 2: M = 6
      .rand_init("bt", {6})
      .node("ct", "ConvTranspose", {"b", "wt", "bt"}, {"c"},
            {{"group", Attribute::of_int(2)}, {"strides", ints({2, 2})}})
      .bn("bn2", "c", "y", 6)
      .output("y");
  Model m = b.m;
  EXPECT_EQ(fold(m), 2);
  EXPECT_EQ(summary(m), "Conv(x,dw_w_bnfold,dw_bias_bnfold)->b; ConvTranspose(b,wt_bnfold,ct_bias_bnfold)->y; out: y");
  expect_equivalent(b.m, m);
}

TEST(FoldBatchnorm, GemmTransBAndScaledBias) {
  Builder b;
  b.input("x", {Dim(3), Dim(5)})
      .rand_init("w1", {4, 5})  // transB: [N, K]
      .rand_init("c1", {4})
      .node("g1", "Gemm", {"x", "w1", "c1"}, {"a"}, {{"transB", Attribute::of_int(1)}})
      .bn("bn1", "a", "b", 4)
      .rand_init("w2", {4, 6})
      .rand_init("c2", {3, 1})  // [M, 1]: broadcasts along N, kept per row
      .node("g2", "Gemm", {"b", "w2", "c2"}, {"c"},
            {{"alpha", Attribute::of_float(0.5f)}, {"beta", Attribute::of_float(2.0f)}})
      .bn("bn2", "c", "d", 6)
      .rand_init("w3", {6, 2})
      .node("g3", "Gemm", {"d", "w3"}, {"e"})  // no C: one is created
      .bn("bn3", "e", "y", 2)
      .output("y");
  Model m = b.m;
  EXPECT_EQ(fold(m), 3);
  EXPECT_EQ(summary(m),
            "Gemm(x,w1_bnfold,g1_bias_bnfold)->b; Gemm(b,w2_bnfold,g2_bias_bnfold)->d; "
            "Gemm(d,w3_bnfold,g3_bias_bnfold)->y; out: y");
  EXPECT_EQ(m.graph.initializers.at("g2_bias_bnfold").shape(), (std::vector<int64_t>{3, 6}));
  EXPECT_EQ(find_node(m, "Gemm")->attr("beta")->f, 1.0f);
  expect_equivalent(b.m, m);
}

TEST(FoldBatchnorm, MatMulBecomesGemm) {
  Builder b;
  b.input("x", {Dim(4), Dim(5)})
      .rand_init("w", {5, 3})
      .node("mm", "MatMul", {"x", "w"}, {"a"})
      .bn("bn", "a", "y", 3)
      .output("y");
  Model m = b.m;
  EXPECT_EQ(fold(m), 1);
  EXPECT_EQ(summary(m), "Gemm(x,w_bnfold,mm_bias_bnfold)->y; out: y");
  expect_equivalent(b.m, m);
}

TEST(FoldBatchnorm, ConstantNodeStatisticsAndNameClashes) {
  Builder b;
  b.input("x", kImage).conv("c", "x", "a", 3, 2, {1, 1}, false);
  b.constant("s", random_tensor({2}, 5, 0.5f, 1.5f))
      .constant("t", random_tensor({2}, 6))
      .constant("mu", random_tensor({2}, 7))
      .constant("var", random_tensor({2}, 8, 0.5f, 1.0f))
      .node("bn", "BatchNormalization", {"a", "s", "t", "mu", "var"}, {"y"})
      .rand_init("c_w_bnfold", {1})  // a name the pass would otherwise pick
      .node("keep", "Identity", {"c_w_bnfold"}, {"k"})
      .output("y")
      .output("k");
  Model m = b.m;
  EXPECT_EQ(fold(m), 1);
  EXPECT_EQ(summary(m),
            "Conv(x,c_w_bnfold_1,c_bias_bnfold)->y; Constant()->s; Constant()->t; Constant()->mu; Constant()->var; "
            "Identity(c_w_bnfold)->k; out: y k");
  expect_equivalent(b.m, m);
}

TEST(FoldBatchnorm, MustNotChange) {
  auto base = [] {
    Builder b;
    b.input("x", kImage).conv("c", "x", "a", 3, 4, {3, 3}, true);
    return b;
  };
  std::vector<std::pair<std::string, Model>> cases;
  {  // the conv output has a second consumer
    Builder b = base();
    b.bn("bn", "a", "y", 4).node("r", "Relu", {"a"}, {"r"}).output("y").output("r");
    cases.emplace_back("two consumers", b.m);
  }
  {  // the conv output is a graph output
    Builder b = base();
    b.bn("bn", "a", "y", 4).output("y").output("a");
    cases.emplace_back("graph output in the middle", b.m);
  }
  {  // non-constant weights
    Builder b;
    b.input("x", kImage).input("w", {Dim(4), Dim(3), Dim(3), Dim(3)});
    b.node("c", "Conv", {"x", "w"}, {"a"}).bn("bn", "a", "y", 4).output("y");
    cases.emplace_back("weights are an input", b.m);
  }
  {  // non-constant statistics
    Builder b = base();
    b.input("mean", {Dim(4)}).rand_init("s", {4}).rand_init("t", {4}).rand_init("v", {4}, 0.5f, 1);
    b.node("bn", "BatchNormalization", {"a", "s", "t", "mean", "v"}, {"y"}).output("y");
    cases.emplace_back("mean is an input", b.m);
  }
  {  // a non-constant conv bias
    Builder b;
    b.input("x", kImage).input("cb", {Dim(4)}).rand_init("w", {4, 3, 3, 3});
    b.node("c", "Conv", {"x", "w", "cb"}, {"a"}).bn("bn", "a", "y", 4).output("y");
    cases.emplace_back("conv bias is an input", b.m);
  }
  {  // training mode
    Builder b = base();
    b.bn("bn", "a", "y", 4, {{"training_mode", Attribute::of_int(1)}}).output("y");
    cases.emplace_back("training mode", b.m);
  }
  {  // the running-mean output is used (training-style graph)
    Builder b = base();
    b.bn("bn", "a", "y", 4);
    b.m.graph.nodes.back().outputs = {"y", "rm", "rv"};
    b.m.graph.nodes.back().attrs["training_mode"] = Attribute::of_int(1);
    b.output("y").output("rm");
    cases.emplace_back("extra outputs used", b.m);
  }
  {  // nothing foldable before the BatchNormalization
    Builder b;
    b.input("x", kImage).node("r", "Relu", {"x"}, {"a"}).bn("bn", "a", "y", 3).output("y");
    cases.emplace_back("producer is a Relu", b.m);
  }
  {  // a 3-D MatMul: BatchNormalization's channel axis (1) is not the weight's column axis
    Builder b;
    b.input("x", {Dim(2), Dim(3), Dim(5)}).rand_init("w", {5, 3});
    b.node("mm", "MatMul", {"x", "w"}, {"a"}).bn("bn", "a", "y", 3).output("y");
    cases.emplace_back("3-D MatMul", b.m);
  }
  {  // BatchNormalization-7 with spatial=0 (per-position statistics)
    Builder b(7);
    b.input("x", {Dim(2), Dim(4)}).rand_init("w", {4, 4}).rand_init("c", {4});
    b.node("g", "Gemm", {"x", "w", "c"}, {"a"}).bn("bn", "a", "y", 4, {{"spatial", Attribute::of_int(0)}}).output("y");
    cases.emplace_back("spatial=0", b.m);
  }
  for (auto& [what, m] : cases) {
    SCOPED_TRACE(what);
    const std::string golden = summary(m);
    EXPECT_EQ(fold(m), 0);
    EXPECT_EQ(summary(m), golden);
  }
}

// ===================================================================== fuse-conv-bias-activation

TEST(FuseConvBiasActivation, ConvRelu) {
  Builder b;
  b.input("x", kImage).conv("c", "x", "a", 3, 4, {3, 3}, true).node("r", "Relu", {"a"}, {"y"}).output("y");
  Model m = b.m;
  EXPECT_EQ(fuse(m), 1);
  EXPECT_EQ(summary(m), "kiln::FusedConv[Relu](x,c_w,c_b)->y; out: y");
  const Attribute* ops = m.graph.nodes[0].attr("fused_ops");
  ASSERT_TRUE(ops);
  EXPECT_EQ(ops->strings, (std::vector<std::string>{"Conv:c", "Relu:r"}));
  EXPECT_EQ(m.graph.nodes[0].name, "c");
  EXPECT_EQ(m.opsets.at("kiln"), 1);
  expect_equivalent(b.m, m);
}

TEST(FuseConvBiasActivation, BiasAddsFoldIntoB) {
  // [C,1,1] onto a bias-less conv, then [1,C,1,1] and a scalar Constant.
  Builder b;
  b.input("x", kImage)
      .conv("c", "x", "a", 3, 4, {3, 3}, false, {{"pads", ints({1, 1, 1, 1})}})
      .rand_init("k1", {4, 1, 1})
      .node("add1", "Add", {"a", "k1"}, {"b"})
      .rand_init("k2", {1, 4, 1, 1})
      .node("add2", "Add", {"k2", "b"}, {"c"})
      .constant("k3", scalar_f32(0.25f))
      .node("add3", "Add", {"c", "k3"}, {"d"})
      .node("r", "Relu", {"d"}, {"y"})
      .output("y");
  Model m = b.m;
  EXPECT_EQ(fuse(m), 1);
  EXPECT_EQ(summary(m), "Constant()->k3; kiln::FusedConv[Relu](x,c_w,c_bias_fused)->y; out: y");
  expect_equivalent(b.m, m);
}

TEST(FuseConvBiasActivation, ResNetBlockResidualThenRelu) {
  // Main path conv3 + downsample conv, Add, Relu (ResNet): the first conv in order takes the Add
  // with the other conv's output as Z; the downsample conv becomes a bare FusedConv.
  Builder b;
  b.input("x", kImage)
      .conv("c1", "x", "a", 3, 4, {3, 3}, true, {{"pads", ints({1, 1, 1, 1})}})
      .node("r1", "Relu", {"a"}, {"ar"})
      .conv("c3", "ar", "main", 4, 8, {1, 1}, true)
      .conv("ds", "x", "short", 3, 8, {1, 1}, true)
      .node("add", "Add", {"main", "short"}, {"sum"})
      .node("r", "Relu", {"sum"}, {"y"})
      .output("y");
  Model m = b.m;
  EXPECT_EQ(fuse(m), 3);
  EXPECT_EQ(summary(m),
            "kiln::FusedConv[Relu](x,c1_w,c1_b)->ar; kiln::FusedConv(x,ds_w,ds_b)->short; "
            "kiln::FusedConv[Relu](ar,c3_w,c3_b,short)->y; out: y");
  EXPECT_EQ(m.graph.nodes[2].attr("fused_ops")->strings, (std::vector<std::string>{"Conv:c3", "Add:add", "Relu:r"}));
  expect_equivalent(b.m, m);
}

TEST(FuseConvBiasActivation, BiasThenResidualThenActivation) {
  Builder b;
  b.input("x", kImage)
      .input("z", {Dim(2), Dim(4), Dim(4), Dim(4)})
      .conv("c", "x", "a", 3, 4, {3, 3}, true)
      .rand_init("k", {1, 4, 1, 1})
      .node("addb", "Add", {"a", "k"}, {"b"})
      .node("addz", "Add", {"z", "b"}, {"s"})
      .node("act", "LeakyRelu", {"s"}, {"y"}, {{"alpha", Attribute::of_float(0.1f)}})
      .output("y");
  Model m = b.m;
  EXPECT_EQ(fuse(m), 1);
  EXPECT_EQ(summary(m), "kiln::FusedConv[LeakyRelu](x,c_w,c_bias_fused,z)->y; out: y");
  EXPECT_EQ(m.graph.nodes[0].attr("activation_params")->floats, (std::vector<float>{0.1f}));
  expect_equivalent(b.m, m);
}

TEST(FuseConvBiasActivation, EveryActivationForm) {
  struct Case {
    std::string name, expected_act;
    std::vector<float> expected_params;
    std::function<void(Builder&)> tail;  // consumes "a", produces "y"
    int64_t opset = 17;
  };
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<Case> cases = {
      {"ReLU6 via Constant nodes",
       "Clip",
       {0, 6},
       [](Builder& b) {
         b.constant("lo", scalar_f32(0)).constant("hi", scalar_f32(6)).node("clip", "Clip", {"a", "lo", "hi"}, {"y"});
       }},
      {"Clip with min only",
       "Clip",
       {-1, inf},
       [](Builder& b) {
         b.init("lo", scalar_f32(-1)).node("clip", "Clip", {"a", "lo"}, {"y"});
       }},
      {"Clip-6 attributes",
       "Clip",
       {-0.5f, 0.5f},
       [](Builder& b) {
         b.node("clip", "Clip", {"a"}, {"y"},
                {{"min", Attribute::of_float(-0.5f)}, {"max", Attribute::of_float(0.5f)}});
       },
       9},
      {"Sigmoid", "Sigmoid", {}, [](Builder& b) { b.node("s", "Sigmoid", {"a"}, {"y"}); }},
      {"SiLU",
       "SiLU",
       {},
       [](Builder& b) {
         b.node("s", "Sigmoid", {"a"}, {"s"}).node("m", "Mul", {"s", "a"}, {"y"});
       }},
      {"HardSwish", "HardSwish", {}, [](Builder& b) { b.node("h", "HardSwish", {"a"}, {"y"}); }},
      {"HardSigmoid defaults",
       "HardSigmoid",
       {0.2f, 0.5f},
       [](Builder& b) { b.node("h", "HardSigmoid", {"a"}, {"y"}); }},
      {"HardSigmoid attrs",
       "HardSigmoid",
       {1.0f / 6, 0.5f},
       [](Builder& b) {
         b.node("h", "HardSigmoid", {"a"}, {"y"}, {{"alpha", Attribute::of_float(1.0f / 6)}});
       }},
      {"LeakyRelu default", "LeakyRelu", {0.01f}, [](Builder& b) { b.node("l", "LeakyRelu", {"a"}, {"y"}); }},
      {"Tanh", "Tanh", {}, [](Builder& b) { b.node("t", "Tanh", {"a"}, {"y"}); }},
      {"ONNX Gelu", "Gelu", {}, [](Builder& b) { b.node("g", "Gelu", {"a"}, {"y"}); }, 20},
      {"ONNX Gelu tanh",
       "GeluTanh",
       {},
       [](Builder& b) {
         b.node("g", "Gelu", {"a"}, {"y"}, {{"approximate", Attribute::of_string("tanh")}});
       },
       20},
  };
  if (OpRegistry::global().find("kiln", "Gelu", 1) && reference::KernelRegistry::global().find("kiln", "Gelu")) {
    cases.push_back({"kiln::Gelu", "Gelu", {}, [](Builder& b) { b.node("g", "Gelu", {"a"}, {"y"}, {}, "kiln"); }});
    cases.push_back({"kiln::Gelu tanh", "GeluTanh", {}, [](Builder& b) {
                       b.node("g", "Gelu", {"a"}, {"y"}, {{"approximate", Attribute::of_string("tanh")}}, "kiln");
                     }});
  } else {
    std::cout << "kiln::Gelu is not registered yet: its fusion is not tested\n";
  }
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    Builder b(c.opset);
    b.input("x", kImage).conv("c", "x", "a", 3, 4, {3, 3}, true);
    c.tail(b);
    b.output("y");
    Model m = b.m;
    EXPECT_EQ(fuse(m), 1);
    ASSERT_EQ(count_op(m, "FusedConv"), 1u);
    const Node* f = find_node(m, "FusedConv");
    EXPECT_EQ(f->attr("activation")->s, c.expected_act);
    const Attribute* p = f->attr("activation_params");
    EXPECT_EQ(p ? p->floats : std::vector<float>{}, c.expected_params);
    EXPECT_EQ(f->outputs[0], "y");
    for (const Node& n : m.graph.nodes) EXPECT_TRUE(n.op_type == "FusedConv" || n.op_type == "Constant") << n.op_type;
    expect_equivalent(b.m, m);
  }
}

TEST(FuseConvBiasActivation, ActivationBeforeAddFusesOnlyTheActivation) {
  // Relu then Add (the add is after the activation): only the Relu is fused.
  Builder b;
  b.input("x", kImage)
      .input("z", {Dim(2), Dim(4), Dim(4), Dim(4)})
      .conv("c", "x", "a", 3, 4, {3, 3}, true)
      .node("r", "Relu", {"a"}, {"r"})
      .node("add", "Add", {"r", "z"}, {"y"})
      .output("y");
  Model m = b.m;
  EXPECT_EQ(fuse(m), 1);
  EXPECT_EQ(summary(m), "kiln::FusedConv[Relu](x,c_w,c_b)->r; Add(r,z)->y; out: y");
  expect_equivalent(b.m, m);
}

TEST(FuseConvBiasActivation, MustNotAbsorb) {
  // Each case: the conv still becomes a (bare or partly fused) FusedConv, but the guarded node stays.
  struct Case {
    std::string what, golden;
    std::function<void(Builder&)> build;  // after x and conv "c" producing "a"
  };
  std::vector<Case> cases = {
      {"conv output has two consumers", "kiln::FusedConv(x,c_w,c_b)->a; Relu(a)->y; Neg(a)->n; out: y n",
       [](Builder& b) { b.node("r", "Relu", {"a"}, {"y"}).node("n", "Neg", {"a"}, {"n"}).output("y").output("n"); }},
      {"conv output is a graph output", "kiln::FusedConv(x,c_w,c_b)->a; Relu(a)->y; out: y a",
       [](Builder& b) { b.node("r", "Relu", {"a"}, {"y"}).output("y").output("a"); }},
      {"residual output is a graph output", "kiln::FusedConv(x,c_w,c_b,z)->s; Relu(s)->y; out: y s",
       [](Builder& b) {
         b.input("z", {Dim(2), Dim(4), Dim(4), Dim(4)});
         b.node("add", "Add", {"a", "z"}, {"s"}).node("r", "Relu", {"s"}, {"y"}).output("y").output("s");
       }},
      {"constant that is not per-channel", "kiln::FusedConv(x,c_w,c_b)->a; Add(a,k)->y; out: y",
       [](Builder& b) {
         b.rand_init("k", {4, 4, 4}).node("add", "Add", {"a", "k"}, {"y"}).output("y");
       }},
      {"[C] constant broadcasts along the last axis", "kiln::FusedConv(x,c_w,c_b)->a; Add(a,k)->y; out: y",
       [](Builder& b) {
         b.rand_init("k", {4}).node("add", "Add", {"a", "k"}, {"y"}).output("y");
       }},
      {"residual that broadcasts", "kiln::FusedConv(x,c_w,c_b)->a; Add(a,z)->y; out: y",
       [](Builder& b) {
         b.input("z", {Dim(1), Dim(4), Dim(1), Dim(1)});
         b.node("add", "Add", {"a", "z"}, {"y"}).output("y");
       }},
      {"Clip with a non-constant bound", "kiln::FusedConv(x,c_w,c_b)->a; Clip(a,lo)->y; out: y",
       [](Builder& b) {
         b.input("lo", {}).node("clip", "Clip", {"a", "lo"}, {"y"}).output("y");
       }},
      {"Sigmoid gating another tensor (SE block)", "kiln::FusedConv[Sigmoid](x,c_w,c_b)->s; Mul(x2,s)->y; out: y",
       [](Builder& b) {
         b.input("x2", {Dim(2), Dim(4), Dim(4), Dim(4)});
         b.node("sig", "Sigmoid", {"a"}, {"s"}).node("mul", "Mul", {"x2", "s"}, {"y"}).output("y");
       }},
      {"Sigmoid output also used elsewhere",
       "kiln::FusedConv(x,c_w,c_b)->a; Sigmoid(a)->s; Mul(a,s)->y; Neg(s)->n; out: y n",
       [](Builder& b) {
         b.node("sig", "Sigmoid", {"a"}, {"s"}).node("mul", "Mul", {"a", "s"}, {"y"}).node("n", "Neg", {"s"}, {"n"});
         b.output("y").output("n");
       }},
      {"unsupported activation", "kiln::FusedConv(x,c_w,c_b)->a; Elu(a)->y; out: y",
       [](Builder& b) { b.node("e", "Elu", {"a"}, {"y"}).output("y"); }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    Builder b;
    b.input("x", kImage).conv("c", "x", "a", 3, 4, {3, 3}, true);
    c.build(b);
    Model m = b.m;
    EXPECT_EQ(fuse(m), 1);
    EXPECT_EQ(summary(m), c.golden);
    expect_equivalent(b.m, m);
  }

  // A bias Add after a conv whose own bias is not constant is left alone.
  Builder nb;
  nb.input("x", kImage).input("cb", {Dim(4)}).rand_init("w", {4, 3, 3, 3}).rand_init("k", {4, 1, 1});
  nb.node("c", "Conv", {"x", "w", "cb"}, {"a"}).node("add", "Add", {"a", "k"}, {"y"}).output("y");
  Model m = nb.m;
  EXPECT_EQ(fuse(m), 1);
  EXPECT_EQ(summary(m), "kiln::FusedConv(x,w,cb)->a; Add(a,k)->y; out: y");
  expect_equivalent(nb.m, m);

  // Nothing to do without a Conv.
  Builder none;
  none.input("x", kImage).node("r", "Relu", {"x"}, {"y"}).output("y");
  Model n = none.m;
  EXPECT_EQ(fuse(n), 0);
  EXPECT_EQ(summary(n), "Relu(x)->y; out: y");
  EXPECT_EQ(n.opsets.count("kiln"), 0u);
}

// ===================================================================== decompose-batchnorm

// DenseNet's pattern: a BatchNormalization after a Concat (no producer to fold into) becomes
// Mul + Add of [C, 1, 1] constants; with fuse-elementwise-chains, Mul, Add and the ReLU are one node.
TEST(DecomposeBatchnorm, AfterAConcatAndFusedWithItsRelu) {
  Builder b;
  b.input("x", kImage)
      .conv("c", "x", "a", 3, 4, {1, 1}, true)
      .node("cat", "Concat", {"x", "a"}, {"k"}, {{"axis", Attribute::of_int(1)}})
      .bn("bn", "k", "b", 7, {{"epsilon", Attribute::of_float(1e-3f)}})
      .node("r", "Relu", {"b"}, {"y"})
      .output("y");
  Model m = b.m;
  EXPECT_EQ(run_pass(make_decompose_batchnorm(), m), 1);
  EXPECT_EQ(summary(m), "Conv(x,c_w,c_b)->a; Concat(x,a)->k; Mul(k,bn_scale_1)->b_scaled; Add(b_scaled,bn_shift)->b; "
                        "Relu(b)->y; out: y");
  EXPECT_EQ(m.graph.initializers.at("bn_scale_1").shape(), (std::vector<int64_t>{7, 1, 1}));
  expect_equivalent(b.m, m);
  Model chained = b.m;
  std::vector<std::unique_ptr<Pass>> passes;
  passes.push_back(make_fold_batchnorm());
  passes.push_back(make_decompose_batchnorm());
  passes.push_back(make_fuse_elementwise_chains());
  run_passes(chained, std::move(passes));
  int chains = 0, others = 0;
  for (const Node& n : chained.graph.nodes) (n.op_type == "ElementwiseChain" ? chains : others) += 1;
  EXPECT_EQ(chains, 1) << summary(chained);
  EXPECT_EQ(others, 2) << "the Conv and the Concat: " << summary(chained);
  expect_equivalent(b.m, chained);
}

TEST(DecomposeBatchnorm, MustNotChange) {
  std::vector<std::pair<std::string, Model>> cases;
  {  // training mode
    Builder b;
    b.input("x", kImage).bn("bn", "x", "y", 3, {{"training_mode", Attribute::of_int(1)}}).output("y");
    cases.emplace_back("training mode", b.m);
  }
  {  // non-constant statistics
    Builder b;
    b.input("x", kImage).input("mean", {Dim(3)}).rand_init("s", {3}).rand_init("t", {3}).rand_init("v", {3}, 0.5f, 1);
    b.node("bn", "BatchNormalization", {"x", "s", "t", "mean", "v"}, {"y"}).output("y");
    cases.emplace_back("mean is an input", b.m);
  }
  {  // BatchNormalization-7 with spatial=0
    Builder b(7);
    b.input("x", {Dim(2), Dim(4)}).bn("bn", "x", "y", 4, {{"spatial", Attribute::of_int(0)}}).output("y");
    cases.emplace_back("spatial=0", b.m);
  }
  for (auto& [what, m] : cases) {
    SCOPED_TRACE(what);
    const std::string golden = summary(m);
    EXPECT_EQ(run_pass(make_decompose_batchnorm(), m), 0);
    EXPECT_EQ(summary(m), golden);
  }
}

TEST(FuseConvBiasActivation, AfterFoldBatchnormWithDeadNodeElimination) {
  Builder b;
  b.input("x", {Dim::sym("N"), Dim(3), Dim(6), Dim(6)})
      .conv("c", "x", "a", 3, 4, {3, 3}, false, {{"pads", ints({1, 1, 1, 1})}})
      .bn("bn", "a", "b", 4)
      .constant("lo", scalar_f32(0))
      .constant("hi", scalar_f32(6))
      .node("clip", "Clip", {"b", "lo", "hi"}, {"y"})
      .output("y");
  Model m = b.m;
  std::vector<std::unique_ptr<Pass>> passes;
  passes.push_back(make_fold_batchnorm());
  passes.push_back(make_fuse_conv_bias_activation());
  passes.push_back(make_dead_node_elimination());
  PassContext ctx;
  EXPECT_GT(run_passes(m, std::move(passes), &ctx), 0);
  EXPECT_EQ(summary(m), "kiln::FusedConv[Clip](x,c_w_bnfold,c_bias_bnfold)->y; out: y");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("y").shape), "[N,4,6,6]");  // symbolic batch kept
  EXPECT_EQ(m.graph.initializers.size(), 2u);
  // Symbolic batch: run with a concrete one.
  Model before = b.m, after = m;
  before.graph.types = after.graph.types = {{"x", TensorType{DType::kF32, kImage}}};
  expect_equivalent(before, after);
}

// ===================================================================== exported real models

namespace {

double normalized_error(const Tensor& got, const Tensor& want) {
  auto a = got.to_double_vector(), b = want.to_double_vector();
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return std::numeric_limits<double>::infinity();
    max_diff = std::max(max_diff, std::fabs(a[i] - b[i]));
    max_ref = std::max(max_ref, std::fabs(b[i]));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

}  // namespace

class ConvPassesOnModels : public ::testing::TestWithParam<std::string> {};

TEST_P(ConvPassesOnModels, FoldAndFuseKeepOutputs) {
  const fs::path dir = kiln_test::model_dir();
  const std::string name = GetParam();
  const fs::path model_path = dir / (name + ".onnx"), io_path = dir / (name + ".io.npz");
  if (!fs::exists(model_path) || !fs::exists(io_path)) GTEST_SKIP() << model_path << " not exported";

  Model model = load_onnx(model_path);
  require_supported(model);
  InferOptions opts;
  opts.evaluator = reference::constant_evaluator();
  infer_types(model, opts);
  const Model original = model;

  PassManager pm;
  pm.add(make_fold_batchnorm());
  pm.add(make_fuse_conv_bias_activation());
  pm.add(make_dead_node_elimination());
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  pm.run(model, ctx);

  std::map<std::string, int> hist;
  for (const Node& n : model.graph.nodes) ++hist[(n.domain.empty() ? "" : n.domain + "::") + n.op_type];
  std::cout << name << ": " << original.graph.nodes.size() << " -> " << model.graph.nodes.size() << " nodes;";
  for (const auto& line : ctx.log) std::cout << " [" << line << "]";
  std::cout << "\n  after:";
  for (const auto& [op, n] : hist) std::cout << " " << op << "=" << n;
  std::cout << "\n";

  reference::TensorMap inputs;
  std::map<std::string, Tensor> expected;
  for (auto& [key, t] : read_npz(io_path)) {
    if (std::find(original.graph.inputs.begin(), original.graph.inputs.end(), key) != original.graph.inputs.end())
      inputs[key] = t;
    else
      expected[key] = t;
  }
  auto before = reference::Executor(original).run(inputs);
  auto after = reference::Executor(model).run(inputs);
  for (const auto& out : original.graph.outputs) {
    const double err = normalized_error(after.at(out), before.at(out));
    std::cout << "  output " << out << ": before/after normalized error " << err;
    if (expected.count(out)) std::cout << ", vs PyTorch " << normalized_error(after.at(out), expected.at(out));
    std::cout << "\n";
    EXPECT_LE(err, 1e-4) << out;
  }

  // Every Conv (all float, with known channel counts) becomes a FusedConv.
  EXPECT_EQ(hist["kiln::FusedConv"], static_cast<int>(count_op(original, "Conv")));
  EXPECT_EQ(hist.count("Conv"), 0u);
  if (name == "resnet50") {
    // Every Conv+Add+Relu of ResNet-50 is one FusedConv; only the stem pool and the head remain.
    EXPECT_EQ(hist["kiln::FusedConv"], 53);
    EXPECT_EQ(hist.size(), 5u);
    for (const char* op : {"MaxPool", "GlobalAveragePool", "Flatten", "Gemm"}) EXPECT_EQ(hist[op], 1) << op;
  }
}

INSTANTIATE_TEST_SUITE_P(Exported, ConvPassesOnModels,
                         ::testing::Values("resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf",
                                           "densenet121", "convnext_tiny", "yolov8_tiny", "mobilenet_v3_small",
                                           "shufflenet_v2_x0_5"),
                         [](const auto& info) { return info.param; });

// The exporter already folded ResNet-50's BatchNormalizations into its convs; put near-identity ones
// back after every Conv and after the final Gemm (transB=1) and check they fold away again.
TEST(ConvPassesOnRealModels, FoldsReinsertedBatchNormsInResNet50) {
  const fs::path dir = kiln_test::model_dir();
  const fs::path model_path = dir / "resnet50.onnx", io_path = dir / "resnet50.io.npz";
  if (!fs::exists(model_path) || !fs::exists(io_path)) GTEST_SKIP() << model_path << " not exported";
  Model model = load_onnx(model_path);
  Graph& g = model.graph;
  std::vector<Node> nodes;
  uint32_t seed = 100;
  for (const Node& n : g.nodes) {
    nodes.push_back(n);
    if (n.op_type != "Conv" && n.op_type != "Gemm") continue;
    const Tensor& w = g.initializers.at(n.inputs[1]);
    const int64_t c = w.dim(0);  // Conv: W [M, C, k, k]; the Gemm has transB=1: W [N, K]
    const std::string out = n.outputs[0], pre = out + "_pre_bn", p = n.name + "_bn";
    nodes.back().outputs[0] = pre;
    g.initializers[p + "_scale"] = random_tensor({c}, seed++, 0.9f, 1.1f);
    g.initializers[p + "_bias"] = random_tensor({c}, seed++, -0.05f, 0.05f);
    g.initializers[p + "_mean"] = random_tensor({c}, seed++, -0.05f, 0.05f);
    g.initializers[p + "_var"] = random_tensor({c}, seed++, 0.9f, 1.1f);
    nodes.push_back(
        Node{p, "BatchNormalization", "", {pre, p + "_scale", p + "_bias", p + "_mean", p + "_var"}, {out}, {}});
  }
  g.nodes = std::move(nodes);
  InferOptions opts;
  opts.evaluator = reference::constant_evaluator();
  infer_types(model, opts);
  const Model original = model;
  ASSERT_EQ(count_op(original, "BatchNormalization"), 54u);

  PassManager pm;
  pm.add(make_fold_batchnorm());
  pm.add(make_fuse_conv_bias_activation());
  pm.add(make_dead_node_elimination());
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  pm.run(model, ctx);
  std::cout << "resnet50 + BN: " << original.graph.nodes.size() << " -> " << model.graph.nodes.size() << " nodes;";
  for (const auto& line : ctx.log) std::cout << " [" << line << "]";
  std::cout << "\n";
  ASSERT_FALSE(ctx.log.empty());
  EXPECT_EQ(ctx.log[0], "fold-batchnorm: 54 rewrites");
  EXPECT_EQ(count_op(model, "BatchNormalization"), 0u);
  EXPECT_EQ(count_op(model, "FusedConv"), 53u);
  EXPECT_EQ(model.graph.nodes.size(), 57u);

  reference::TensorMap inputs;
  for (auto& [key, t] : read_npz(io_path))
    if (std::find(g.inputs.begin(), g.inputs.end(), key) != g.inputs.end()) inputs[key] = t;
  auto before = reference::Executor(original).run(inputs);
  auto after = reference::Executor(model).run(inputs);
  for (const auto& out : original.graph.outputs) {
    const double err = normalized_error(after.at(out), before.at(out));
    std::cout << "  output " << out << ": before/after normalized error " << err << "\n";
    EXPECT_LE(err, 1e-4) << out;
  }
}
