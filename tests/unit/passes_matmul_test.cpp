// fuse-layernorm, fuse-gelu and fuse-matmul-bias-activation, and their fused ops kiln::Gelu,
// kiln::LayerNormalization and kiln::FusedMatMul: schemas (symbolic dims), kernels against hand-checked
// values and the unfused graphs, golden before/after graphs for every pattern variant, must-not-change
// cases for every guard, numeric equivalence, and the exported transformer models.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <limits>
#include <numbers>
#include <random>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"
#include "util/npy.h"
#include "test_support.h"

using namespace kiln;

namespace {

Node node(std::string name, std::string op, std::vector<std::string> in, std::vector<std::string> out,
          std::map<std::string, Attribute> attrs = {}, std::string domain = "") {
  return Node{std::move(name), std::move(op), std::move(domain), std::move(in), std::move(out), std::move(attrs)};
}

TensorType f32(Shape s) { return TensorType{DType::kF32, std::move(s)}; }

// A model with the given typed inputs, nodes and outputs at ai.onnx `opset`.
Model make_model(std::vector<std::pair<std::string, TensorType>> inputs, std::vector<Node> nodes,
                 std::vector<std::string> outputs, int64_t opset = 17) {
  Model m;
  m.opsets[""] = opset;
  for (auto& [name, t] : inputs) {
    m.graph.inputs.push_back(name);
    m.graph.types[name] = t;
  }
  m.graph.nodes = std::move(nodes);
  m.graph.outputs = std::move(outputs);
  return m;
}

Tensor scalar(float v) { return Tensor::scalar<float>(v); }

Tensor random_tensor(const std::vector<int64_t>& shape, uint32_t seed, float lo = -2, float hi = 2) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (auto& x : v) x = dist(rng);
  return Tensor::from_vector<float>(shape, v);
}

// "kiln::Gelu(x)->y; Relu(y)->z; out: z" style one-line summary of the graph's nodes and outputs.
std::string summary(const Model& m) {
  std::string s;
  for (const Node& n : m.graph.nodes) {
    s += (n.domain.empty() ? "" : n.domain + "::") + n.op_type + "(";
    for (size_t i = 0; i < n.inputs.size(); ++i) s += (i ? "," : "") + n.inputs[i];
    s += ")->";
    for (size_t i = 0; i < n.outputs.size(); ++i) s += (i ? "," : "") + n.outputs[i];
    s += "; ";
  }
  s += "out:";
  for (const auto& o : m.graph.outputs) s += " " + o;
  return s;
}

int run_passes(std::vector<std::unique_ptr<Pass>> passes, Model& m) {
  infer_types(m);  // passes run on typed models
  PassManager pm;
  for (auto& p : passes) pm.add(std::move(p));
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  return pm.run(m, ctx);
}
int run_pass(std::unique_ptr<Pass> pass, Model& m) {
  std::vector<std::unique_ptr<Pass>> v;
  v.push_back(std::move(pass));
  return run_passes(std::move(v), m);
}

// Expects the pass to leave the graph exactly as it was.
void expect_unchanged(std::unique_ptr<Pass> pass, Model m) {
  const std::string golden = summary(m);
  EXPECT_EQ(run_pass(std::move(pass), m), 0);
  EXPECT_EQ(summary(m), golden);
}

// Random inputs (seeded) for every graph input; symbolic or unknown dims become 3.
reference::TensorMap random_inputs(const Model& m, uint32_t seed) {
  reference::TensorMap in;
  for (const auto& name : m.graph.inputs) {
    const TensorType& t = m.graph.types.at(name);
    std::vector<int64_t> dims;
    for (const Dim& d : *t.shape) dims.push_back(d.known() ? d.value : 3);
    Tensor r = random_tensor(dims, seed++);
    if (t.dtype == DType::kF64) {
      Tensor d(DType::kF64, dims);
      auto v = r.to_double_vector();
      std::copy(v.begin(), v.end(), d.mutable_data<double>());
      r = d;
    }
    in[name] = r;
  }
  return in;
}

// Max |a - b| over all outputs, relative to max(1, max |a|).
double max_scaled_diff(const reference::TensorMap& a, const reference::TensorMap& b) {
  double worst = 0;
  for (const auto& [name, t] : a) {
    EXPECT_TRUE(b.count(name)) << name;
    if (!b.count(name)) continue;
    EXPECT_EQ(t.shape(), b.at(name).shape()) << name;
    const auto x = t.to_double_vector(), y = b.at(name).to_double_vector();
    double diff = 0, ref = 1;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      diff = std::max(diff, std::fabs(x[i] - y[i]));
      ref = std::max(ref, std::fabs(x[i]));
      if (std::isnan(x[i]) != std::isnan(y[i])) diff = INFINITY;
    }
    worst = std::max(worst, diff / ref);
  }
  return worst;
}

// Runs `before` and `after` on the same random inputs: fp32 tolerance max|a-b| <= tol * max(1, max|ref|)
// (tol = 0 demands identical outputs, for rewrites that keep the math).
void expect_equivalent(const Model& before, const Model& after, double tol = 1e-5, uint32_t seed = 7) {
  const auto in = random_inputs(before, seed);
  const auto a = reference::Executor(before).run(in);
  const auto b = reference::Executor(after).run(in);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_LE(max_scaled_diff(a, b), tol);
}

reference::TensorMap run_model(const Model& m, const reference::TensorMap& in) {
  return reference::Executor(m).run(in);
}

void expect_values(const Tensor& t, const std::vector<double>& want, double tol) {
  const auto v = t.to_double_vector();
  ASSERT_EQ(v.size(), want.size());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(v[i], want[i], tol) << "element " << i;
}

// Type of `value` after inference, as text.
std::string inferred(Model m, const std::string& value) {
  m.opsets["kiln"] = 1;
  infer_types(m);
  return m.graph.types.at(value).to_string();
}

std::string error_of(Model m) {
  m.opsets["kiln"] = 1;
  try {
    infer_types(m);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

// ============================================================================================
// Fused op schemas
// ============================================================================================

TEST(FusedMatmulOps, GeluSchemaKeepsSymbolicDimsAndChecksApproximate) {
  const Shape bs8 = {Dim::sym("batch"), Dim::sym("seq"), Dim(8)};
  Model m = make_model({{"x", f32(bs8)}}, {node("g", "Gelu", {"x"}, {"y"}, {}, "kiln")}, {"y"});
  EXPECT_EQ(inferred(m, "y"), "f32[batch,seq,8]");
  m.graph.nodes[0].attrs["approximate"] = Attribute::of_string("fast");
  const std::string err = error_of(m);
  EXPECT_TRUE(contains(err, "'g'") && contains(err, "approximate")) << err;
  Model ints = make_model({{"x", TensorType{DType::kI32, bs8}}}, {node("g", "Gelu", {"x"}, {"y"}, {}, "kiln")}, {"y"});
  EXPECT_TRUE(contains(error_of(ints), "float")) << error_of(ints);
}

TEST(FusedMatmulOps, LayerNormSchemaKeepsSymbolicDimsAndChecksAxisAndParams) {
  const Shape bs8 = {Dim::sym("batch"), Dim::sym("seq"), Dim(8)};
  Model m = make_model({{"x", f32(bs8)}, {"s", f32({Dim(8)})}, {"b", f32({Dim(8)})}},
                       {node("ln", "LayerNormalization", {"x", "s", "b"}, {"y"}, {}, "kiln")}, {"y"});
  EXPECT_EQ(inferred(m, "y"), "f32[batch,seq,8]");
  Model bad_axis = m;
  bad_axis.graph.nodes[0].attrs["axis"] = Attribute::of_int(3);
  EXPECT_TRUE(contains(error_of(bad_axis), "'ln'")) << error_of(bad_axis);
  Model bad_scale = m;
  bad_scale.graph.types["s"] = f32({Dim(7)});
  EXPECT_TRUE(contains(error_of(bad_scale), "Scale")) << error_of(bad_scale);
  Model unknown_rank = m;
  unknown_rank.graph.types["x"] = TensorType{DType::kF32, std::nullopt};
  EXPECT_EQ(inferred(unknown_rank, "y"), "f32[*]");
}

TEST(FusedMatmulOps, FusedMatMulSchemaShapes) {
  auto fm = [](std::vector<std::string> in, std::map<std::string, Attribute> attrs = {}) {
    return node("fm", "FusedMatMul", std::move(in), {"y"}, std::move(attrs), "kiln");
  };
  const Dim b = Dim::sym("batch"), s = Dim::sym("seq");
  // Batched A times a weight, bias along the last dim: symbols survive.
  Model m = make_model({{"a", f32({b, s, Dim(16)})}, {"w", f32({Dim(16), Dim(32)})}, {"c", f32({Dim(32)})}},
                       {fm({"a", "w", "c"}, {{"activation", Attribute::of_string("Relu")}})}, {"y"});
  EXPECT_EQ(inferred(m, "y"), "f32[batch,seq,32]");
  // transA/transB on 2-D operands.
  Model t = make_model({{"a", f32({Dim(16), b})}, {"w", f32({Dim(32), Dim(16)})}},
                       {fm({"a", "w"}, {{"transA", Attribute::of_int(1)}, {"transB", Attribute::of_int(1)}})}, {"y"});
  EXPECT_EQ(inferred(t, "y"), "f32[batch,32]");
  // Batch broadcasting of both operands, and 1-D A.
  Model bb = make_model({{"a", f32({Dim(2), Dim(1), Dim(3), Dim(4)})}, {"w", f32({Dim(5), Dim(4), Dim(6)})}},
                        {fm({"a", "w"})}, {"y"});
  EXPECT_EQ(inferred(bb, "y"), "f32[2,5,3,6]");
  Model vec = make_model({{"a", f32({Dim(4)})}, {"w", f32({Dim(4), Dim(6)})}}, {fm({"a", "w"})}, {"y"});
  EXPECT_EQ(inferred(vec, "y"), "f32[6]");
  // Unknown rank A: unknown shape, known dtype.
  Model unk = make_model({{"a", TensorType{DType::kF32, std::nullopt}}, {"w", f32({Dim(4), Dim(6)})}},
                         {fm({"a", "w"})}, {"y"});
  EXPECT_EQ(inferred(unk, "y"), "f32[*]");

  // Errors name the node.
  auto err = [&](Model x) {
    const std::string e = error_of(std::move(x));
    EXPECT_TRUE(contains(e, "'fm'")) << e;
    return e;
  };
  Model trans3d = make_model({{"a", f32({b, Dim(3), Dim(4)})}, {"w", f32({Dim(4), Dim(6)})}},
                             {fm({"a", "w"}, {{"transA", Attribute::of_int(1)}})}, {"y"});
  EXPECT_TRUE(contains(err(trans3d), "transA"));
  Model inner = make_model({{"a", f32({Dim(3), Dim(5)})}, {"w", f32({Dim(4), Dim(6)})}}, {fm({"a", "w"})}, {"y"});
  EXPECT_TRUE(contains(err(inner), "inner dimensions"));
  Model bad_c = make_model({{"a", f32({Dim(3), Dim(4)})}, {"w", f32({Dim(4), Dim(6)})}, {"c", f32({Dim(5)})}},
                           {fm({"a", "w", "c"})}, {"y"});
  EXPECT_TRUE(contains(err(bad_c), "does not broadcast"));
  Model c_expands = make_model({{"a", f32({Dim(3), Dim(4)})}, {"w", f32({Dim(4), Dim(6)})},
                                {"c", f32({Dim(2), Dim(3), Dim(6)})}},
                               {fm({"a", "w", "c"})}, {"y"});
  EXPECT_TRUE(contains(err(c_expands), "does not broadcast"));
  Model bad_act = make_model({{"a", f32({Dim(3), Dim(4)})}, {"w", f32({Dim(4), Dim(6)})}},
                             {fm({"a", "w"}, {{"activation", Attribute::of_string("Swish")}})}, {"y"});
  EXPECT_TRUE(contains(err(bad_act), "unknown activation"));
  Model bad_params = make_model({{"a", f32({Dim(3), Dim(4)})}, {"w", f32({Dim(4), Dim(6)})}},
                                {fm({"a", "w"}, {{"activation", Attribute::of_string("Clip")},
                                                 {"activation_params", Attribute::of_floats({0.f})}})},
                                {"y"});
  EXPECT_TRUE(contains(err(bad_params), "activation_params"));
  Model mixed = make_model({{"a", f32({Dim(3), Dim(4)})}, {"w", TensorType{DType::kF64, Shape{Dim(4), Dim(6)}}}},
                           {fm({"a", "w"})}, {"y"});
  EXPECT_TRUE(contains(err(mixed), "dtype"));
}

// ============================================================================================
// Fused op kernels
// ============================================================================================

TEST(FusedMatmulKernels, HandCheckedValues) {
  // A = [[1,2],[3,4]], B = [[1,-1],[2,0]]: A x B = [[5,-1],[11,-3]]; + C [0.5,1] = [[5.5,0],[11.5,-2]]; Relu.
  Model m = make_model({{"a", f32({Dim(2), Dim(2)})}},
                       {node("fm", "FusedMatMul", {"a", "b", "c"}, {"y"},
                             {{"activation", Attribute::of_string("Relu")}}, "kiln")},
                       {"y"});
  m.opsets["kiln"] = 1;
  m.graph.initializers["b"] = Tensor::from_vector<float>({2, 2}, {1, -1, 2, 0});
  m.graph.initializers["c"] = Tensor::from_vector<float>({2}, {0.5f, 1});
  const reference::TensorMap in{{"a", Tensor::from_vector<float>({2, 2}, {1, 2, 3, 4})}};
  expect_values(run_model(m, in).at("y"), {5.5, 0, 11.5, 0}, 0);
  // transB, alpha 2, beta -1, Clip(0, 10): A x B^T = [[-1,2],[-1,6]]; * 2 - C = [[-2.5,3],[-2.5,11]];
  // clipped: [[0,3],[0,10]].
  Node& n = m.graph.nodes[0];
  n.attrs["transB"] = Attribute::of_int(1);
  n.attrs["alpha"] = Attribute::of_float(2);
  n.attrs["beta"] = Attribute::of_float(-1);
  n.attrs["activation"] = Attribute::of_string("Clip");
  n.attrs["activation_params"] = Attribute::of_floats({0, 10});
  expect_values(run_model(m, in).at("y"), {0, 3, 0, 10}, 0);
  // transA: A^T x B = [[1,3],[2,4]] x B = [[7,-1],[10,-2]]; LeakyRelu(0.5) after + C: [[7.5,0],[10.5,-0.5]].
  n.attrs = {{"transA", Attribute::of_int(1)}, {"activation", Attribute::of_string("LeakyRelu")},
             {"activation_params", Attribute::of_floats({0.5f})}};
  expect_values(run_model(m, in).at("y"), {7.5, 0, 10.5, -0.5}, 1e-6);
}

TEST(FusedMatmulKernels, GeluAndLayerNormHandCheckedValues) {
  Model g = make_model({{"x", f32({Dim(3)})}}, {node("g", "Gelu", {"x"}, {"y"}, {}, "kiln")}, {"y"});
  g.opsets["kiln"] = 1;
  const reference::TensorMap in{{"x", Tensor::from_vector<float>({3}, {1, -1, 0})}};
  // Phi(1) = 0.8413447, so gelu(1) = 0.8413447 and gelu(-1) = -(1 - 0.8413447).
  expect_values(run_model(g, in).at("y"), {0.8413447, -0.1586553, 0}, 1e-6);
  g.graph.nodes[0].attrs["approximate"] = Attribute::of_string("tanh");
  expect_values(run_model(g, in).at("y"), {0.8411920, -0.1588080, 0}, 1e-6);

  // x = [1,2,3,4]: mean 2.5, var 1.25, (x - 2.5) / sqrt(1.25) = [-1.341641, -0.447214, 0.447214, 1.341641];
  // * 2 + 1.
  Model ln = make_model({{"x", f32({Dim(1), Dim(4)})}},
                        {node("ln", "LayerNormalization", {"x", "s", "b"}, {"y"},
                              {{"epsilon", Attribute::of_float(0)}}, "kiln")},
                        {"y"});
  ln.opsets["kiln"] = 1;
  ln.graph.initializers["s"] = Tensor::from_vector<float>({4}, {2, 2, 2, 2});
  ln.graph.initializers["b"] = Tensor::from_vector<float>({4}, {1, 1, 1, 1});
  expect_values(run_model(ln, {{"x", Tensor::from_vector<float>({1, 4}, {1, 2, 3, 4})}}).at("y"),
                {-1.683282, 0.105573, 1.894427, 3.683282}, 1e-5);
}

// kiln::Gelu against the exported erf/tanh subgraphs, kiln::LayerNormalization against the ONNX op and
// its decomposition, on random inputs of several shapes.
TEST(FusedMatmulKernels, GeluAndLayerNormMatchUnfusedGraphs) {
  const std::vector<std::vector<int64_t>> shapes = {{7}, {2, 3, 5}, {1, 2, 4, 6}};
  uint32_t seed = 200;
  for (const auto& shape : shapes) {
    SCOPED_TRACE(shape_to_string(shape));
    const Shape s = shape_from_dims(shape);
    // 0.5 * x * (1 + erf(x / sqrt2)) and 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))).
    Model erf = make_model({{"x", f32(s)}},
                           {node("d", "Div", {"x", "sqrt2"}, {"s"}), node("e", "Erf", {"s"}, {"e"}),
                            node("a", "Add", {"e", "one"}, {"a"}), node("m", "Mul", {"x", "a"}, {"m"}),
                            node("y", "Mul", {"m", "half"}, {"y"})},
                           {"y"});
    erf.graph.initializers["sqrt2"] = scalar(static_cast<float>(std::sqrt(2.0)));
    erf.graph.initializers["one"] = scalar(1);
    erf.graph.initializers["half"] = scalar(0.5f);
    Model tanh = make_model({{"x", f32(s)}},
                            {node("p", "Pow", {"x", "three"}, {"c"}), node("w", "Mul", {"c", "k1"}, {"w"}),
                             node("v", "Add", {"x", "w"}, {"v"}), node("u", "Mul", {"v", "k2"}, {"u"}),
                             node("t", "Tanh", {"u"}, {"t"}), node("a", "Add", {"t", "one"}, {"a"}),
                             node("m", "Mul", {"x", "a"}, {"m"}), node("y", "Mul", {"m", "half"}, {"y"})},
                            {"y"});
    tanh.graph.initializers["three"] = scalar(3);
    tanh.graph.initializers["k1"] = scalar(0.044715f);
    tanh.graph.initializers["k2"] = scalar(static_cast<float>(std::sqrt(2.0 / std::numbers::pi)));
    tanh.graph.initializers["one"] = scalar(1);
    tanh.graph.initializers["half"] = scalar(0.5f);
    for (Model* unfused : {&erf, &tanh}) {
      Model fused = *unfused;
      fused.graph.nodes = {node("g", "Gelu", {"x"}, {"y"},
                                {{"approximate", Attribute::of_string(unfused == &erf ? "none" : "tanh")}}, "kiln")};
      fused.opsets["kiln"] = 1;
      expect_equivalent(*unfused, fused, 1e-6, seed++);
    }

    // LayerNormalization over each trailing range of axes, with and without bias.
    for (int64_t axis = -1; axis >= -static_cast<int64_t>(shape.size()); --axis) {
      const std::vector<int64_t> norm(shape.end() + axis, shape.end());
      for (bool bias : {true, false}) {
        std::vector<std::string> in = {"x", "s"};
        if (bias) in.push_back("b");
        const std::map<std::string, Attribute> attrs = {{"axis", Attribute::of_int(axis)},
                                                        {"epsilon", Attribute::of_float(1e-3f)}};
        Model onnx = make_model({{"x", f32(s)}}, {node("ln", "LayerNormalization", in, {"y"}, attrs)}, {"y"});
        onnx.graph.initializers["s"] = random_tensor(norm, seed++);
        onnx.graph.initializers["b"] = random_tensor(norm, seed++);
        Model fused = onnx;
        fused.graph.nodes = {node("ln", "LayerNormalization", in, {"y"}, attrs, "kiln")};
        fused.opsets["kiln"] = 1;
        expect_equivalent(onnx, fused, 0, seed++);
        // The decomposition: (x - mean) / sqrt(var + eps) * s [+ b], means over the same axes.
        std::vector<int64_t> axes;
        for (int64_t a = axis; a < 0; ++a) axes.push_back(a);
        Model dec = make_model(
            {{"x", f32(s)}},
            {node("m", "ReduceMean", {"x"}, {"mean"}, {{"axes", Attribute::of_ints(axes)}}),
             node("d", "Sub", {"x", "mean"}, {"d"}), node("q", "Mul", {"d", "d"}, {"q"}),
             node("v", "ReduceMean", {"q"}, {"var"}, {{"axes", Attribute::of_ints(axes)}}),
             node("ve", "Add", {"var", "eps"}, {"ve"}), node("sd", "Sqrt", {"ve"}, {"sd"}),
             node("n", "Div", {"d", "sd"}, {"n"}), node("sc", "Mul", {"n", "s"}, {bias ? "ns" : "y"})},
            {"y"});
        if (bias) dec.graph.nodes.push_back(node("bb", "Add", {"ns", "b"}, {"y"}));
        dec.graph.initializers = onnx.graph.initializers;
        dec.graph.initializers["eps"] = scalar(1e-3f);
        expect_equivalent(dec, fused, 1e-5, seed++);
      }
    }
  }
}

// kiln::FusedMatMul against MatMul (+ Add) (+ activation) on random inputs of several shapes.
TEST(FusedMatmulKernels, MatchUnfusedGraphs) {
  struct Case {
    std::vector<int64_t> a, b, c;  // c empty: no bias
    std::string act;
    std::vector<float> params;
  };
  const std::vector<Case> cases = {
      {{2, 3, 4, 5}, {5, 6}, {6}, "Relu", {}},
      {{3, 5}, {2, 5, 6}, {1, 6}, "Gelu", {}},
      {{5}, {5, 6}, {6}, "GeluTanh", {}},
      {{2, 1, 3, 5}, {4, 5, 7}, {3, 7}, "Sigmoid", {}},
      {{4, 5}, {5, 6}, {}, "Tanh", {}},
      {{7, 5}, {5, 3}, {7, 3}, "LeakyRelu", {0.2f}},
      {{2, 3, 5}, {5, 6}, {6}, "Clip", {-0.5f, 1.f}},
      {{2, 3, 5}, {5, 6}, {1}, "", {}},
  };
  uint32_t seed = 100;
  for (const auto& c : cases) {
    SCOPED_TRACE("activation " + c.act);
    std::vector<Node> nodes = {node("mm", "MatMul", {"a", "b"}, {"p"})};
    std::string tail = "p";
    if (!c.c.empty()) {
      nodes.push_back(node("add", "Add", {tail, "c"}, {"q"}));
      tail = "q";
    }
    Model unfused = make_model({{"a", f32(shape_from_dims(c.a))}, {"b", f32(shape_from_dims(c.b))}}, {}, {}, 16);
    if (!c.c.empty()) unfused.graph.initializers["c"] = random_tensor(c.c, seed++);
    std::map<std::string, Attribute> act_attrs;
    std::vector<std::string> act_in = {tail};
    std::string op = c.act;
    if (c.act == "Gelu" || c.act == "GeluTanh") {
      op = "Gelu";
      unfused.opsets[""] = 20;
      act_attrs["approximate"] = Attribute::of_string(c.act == "Gelu" ? "none" : "tanh");
    } else if (c.act == "LeakyRelu") {
      act_attrs["alpha"] = Attribute::of_float(c.params[0]);
    } else if (c.act == "Clip") {
      unfused.graph.initializers["lo"] = scalar(c.params[0]);
      unfused.graph.initializers["hi"] = scalar(c.params[1]);
      act_in = {tail, "lo", "hi"};
    }
    if (!c.act.empty()) {
      nodes.push_back(node("act", op, act_in, {"y"}, act_attrs));
      tail = "y";
    }
    unfused.graph.nodes = nodes;
    unfused.graph.outputs = {tail};

    Model fused = unfused;
    std::vector<std::string> fin = {"a", "b"};
    if (!c.c.empty()) fin.push_back("c");
    std::map<std::string, Attribute> fattrs = {{"activation", Attribute::of_string(c.act)}};
    if (!c.params.empty()) fattrs["activation_params"] = Attribute::of_floats(c.params);
    fused.graph.nodes = {node("fm", "FusedMatMul", fin, {tail}, fattrs, "kiln")};
    fused.opsets["kiln"] = 1;
    // Same kernels step by step: identical results.
    expect_equivalent(unfused, fused, 0, seed++);
  }
}

// Gemm's attributes map one to one; f64 and f16 go through the same path.
TEST(FusedMatmulKernels, MatchGemmAndOtherFloatTypes) {
  for (DType dt : {DType::kF32, DType::kF64}) {
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        const std::map<std::string, Attribute> attrs = {{"transA", Attribute::of_int(ta)},
                                                        {"transB", Attribute::of_int(tb)},
                                                        {"alpha", Attribute::of_float(0.75f)},
                                                        {"beta", Attribute::of_float(-1.5f)}};
        const Shape as = ta ? Shape{Dim(5), Dim(3)} : Shape{Dim(3), Dim(5)};
        const Shape bs = tb ? Shape{Dim(4), Dim(5)} : Shape{Dim(5), Dim(4)};
        Model gemm = make_model(
            {{"a", TensorType{dt, as}}, {"b", TensorType{dt, bs}}, {"c", TensorType{dt, Shape{Dim(3), Dim(1)}}}},
            {node("g", "Gemm", {"a", "b", "c"}, {"y"}, attrs)}, {"y"});
        Model fused = gemm;
        fused.graph.nodes = {node("g", "FusedMatMul", {"a", "b", "c"}, {"y"}, attrs, "kiln")};
        fused.opsets["kiln"] = 1;
        expect_equivalent(gemm, fused, dt == DType::kF32 ? 1e-6 : 1e-12, 11 + 2 * ta + tb);
      }
  }
  // f16: the fused kernel rounds where MatMul and Add do, so results are identical.
  Model unfused = make_model({{"a", TensorType{DType::kF16, Shape{Dim(3), Dim(8)}}}},
                             {node("mm", "MatMul", {"a", "w"}, {"p"}), node("add", "Add", {"p", "c"}, {"y"})}, {"y"});
  std::vector<Half> w(8 * 4), c(4), a(3 * 8);
  for (size_t i = 0; i < w.size(); ++i) w[i] = Half(0.125f * static_cast<float>(static_cast<int>(i % 7) - 3));
  for (size_t i = 0; i < c.size(); ++i) c[i] = Half(0.5f * static_cast<float>(i));
  for (size_t i = 0; i < a.size(); ++i) a[i] = Half(0.25f * static_cast<float>(static_cast<int>(i % 5) - 2));
  unfused.graph.initializers["w"] = Tensor::from_vector<Half>({8, 4}, w);
  unfused.graph.initializers["c"] = Tensor::from_vector<Half>({4}, c);
  Model fused = unfused;
  fused.graph.nodes = {node("fm", "FusedMatMul", {"a", "w", "c"}, {"y"}, {}, "kiln")};
  fused.opsets["kiln"] = 1;
  const reference::TensorMap in{{"a", Tensor::from_vector<Half>({3, 8}, a)}};
  EXPECT_EQ(run_model(unfused, in).at("y").to_double_vector(), run_model(fused, in).at("y").to_double_vector());
}

// ============================================================================================
// fuse-gelu
// ============================================================================================

namespace {

// x -> Erf GELU in BERT's order: Div(x, sqrt2) -> Erf -> Add 1 -> Mul x -> Mul 0.5.
Model bert_gelu(float sqrt2 = 1.4142135f, float half = 0.5f) {
  Model m = make_model({{"x", f32({Dim::sym("batch"), Dim(6)})}},
                       {node("div", "Div", {"x", "sqrt2"}, {"s"}), node("erf", "Erf", {"s"}, {"e"}),
                        node("add", "Add", {"e", "one"}, {"a"}), node("mul", "Mul", {"x", "a"}, {"m"}),
                        node("mul1", "Mul", {"m", "half"}, {"y"})},
                       {"y"});
  m.graph.initializers["sqrt2"] = scalar(sqrt2);
  m.graph.initializers["one"] = scalar(1);
  m.graph.initializers["half"] = scalar(half);
  return m;
}

}  // namespace

TEST(FuseGelu, ErfFormBertOrder) {
  Model m = bert_gelu();
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_gelu(), m), 1);
  EXPECT_EQ(summary(m), "kiln::Gelu(x)->y; out: y");
  const Node& g = m.graph.nodes[0];
  EXPECT_EQ(g.name, "div");
  EXPECT_EQ(g.attr("approximate")->s, "none");
  EXPECT_EQ(g.attr("fused_ops")->strings,
            (std::vector<std::string>{"Div:div", "Erf:erf", "Add:add", "Mul:mul", "Mul:mul1"}));
  EXPECT_EQ(m.opsets.at("kiln"), 1);
  EXPECT_EQ(m.graph.types.at("y").to_string(), "f32[batch,6]");
  EXPECT_EQ(m.graph.types.count("s") + m.graph.types.count("e") + m.graph.types.count("m"), 0u);
  expect_equivalent(before, m, 1e-6);
}

TEST(FuseGelu, ErfFormOtherAssociationOrders) {
  // Mul(x, 0.7071) for the division, 0.5 applied to x first: (0.5 * x) * (1 + erf).
  Model a = make_model({{"x", f32({Dim(4), Dim(6)})}},
                       {node("h", "Mul", {"half", "x"}, {"h"}), node("s", "Mul", {"x", "rsqrt2"}, {"s"}),
                        node("erf", "Erf", {"s"}, {"e"}), node("add", "Add", {"one", "e"}, {"a"}),
                        node("y", "Mul", {"h", "a"}, {"y"})},
                       {"y"});
  a.graph.initializers["half"] = scalar(0.5f);
  a.graph.initializers["rsqrt2"] = scalar(0.70710677f);
  a.graph.initializers["one"] = scalar(1);
  Model before_a = a;
  EXPECT_EQ(run_pass(make_fuse_gelu(), a), 1);
  EXPECT_EQ(summary(a), "kiln::Gelu(x)->y; out: y");
  expect_equivalent(before_a, a, 1e-6);

  // 0.5 applied to (1 + erf) first: x * (0.5 * (1 + erf)), constants as Constant nodes, Div by 2
  // not needed; dead Constant nodes stay for dead-node elimination.
  Model b = make_model({{"x", f32({Dim(4), Dim(6)})}},
                       {node("c1", "Constant", {}, {"sqrt2"}, {{"value", Attribute::of_tensor(scalar(1.41421f))}}),
                        node("c2", "Constant", {}, {"one"}, {{"value_float", Attribute::of_float(1)}}),
                        node("c3", "Constant", {}, {"half"}, {{"value", Attribute::of_tensor(scalar(0.5f))}}),
                        node("div", "Div", {"x", "sqrt2"}, {"s"}), node("erf", "Erf", {"s"}, {"e"}),
                        node("add", "Add", {"e", "one"}, {"a"}), node("h", "Mul", {"a", "half"}, {"h"}),
                        node("y", "Mul", {"x", "h"}, {"y"})},
                       {"y"});
  Model before_b = b;
  EXPECT_EQ(run_pass(make_fuse_gelu(), b), 1);
  EXPECT_EQ(summary(b), "Constant()->sqrt2; Constant()->one; Constant()->half; kiln::Gelu(x)->y; out: y");
  expect_equivalent(before_b, b, 1e-6);
  EXPECT_EQ(run_pass(make_dead_node_elimination(), b), 3);
  EXPECT_EQ(summary(b), "kiln::Gelu(x)->y; out: y");

  // (x * a) / 2 as the last step.
  Model c = bert_gelu();
  c.graph.nodes[4] = node("div2", "Div", {"m", "two"}, {"y"});
  c.graph.initializers["two"] = scalar(2);
  Model before_c = c;
  EXPECT_EQ(run_pass(make_fuse_gelu(), c), 1);
  EXPECT_EQ(summary(c), "kiln::Gelu(x)->y; out: y");
  expect_equivalent(before_c, c, 1e-6);
}

TEST(FuseGelu, TanhForms) {
  // GPT-2 style: x*x*x, 0.5 applied last: 0.5 * (x * (1 + tanh(k * (x + 0.044715 * x^3)))).
  Model gpt = make_model({{"x", f32({Dim(2), Dim(3), Dim(8)})}},
                         {node("sq", "Mul", {"x", "x"}, {"sq"}), node("cube", "Mul", {"x", "sq"}, {"cube"}),
                          node("w", "Mul", {"c", "cube"}, {"w"}), node("v", "Add", {"x", "w"}, {"v"}),
                          node("u", "Mul", {"k", "v"}, {"u"}), node("t", "Tanh", {"u"}, {"t"}),
                          node("a", "Add", {"one", "t"}, {"a"}), node("m", "Mul", {"x", "a"}, {"m"}),
                          node("y", "Mul", {"half", "m"}, {"y"})},
                         {"y"});
  gpt.graph.initializers["c"] = scalar(0.044715f);
  gpt.graph.initializers["k"] = scalar(0.7978846f);
  gpt.graph.initializers["one"] = scalar(1);
  gpt.graph.initializers["half"] = scalar(0.5f);
  Model before = gpt;
  EXPECT_EQ(run_pass(make_fuse_gelu(), gpt), 1);
  EXPECT_EQ(summary(gpt), "kiln::Gelu(x)->y; out: y");
  EXPECT_EQ(gpt.graph.nodes[0].attr("approximate")->s, "tanh");
  EXPECT_EQ(gpt.graph.nodes[0].name, "sq");
  EXPECT_EQ(gpt.graph.nodes[0].attr("fused_ops")->strings.size(), 9u);
  expect_equivalent(before, gpt, 1e-6);

  // HF/TF style: Pow(x, 3), Add(w, x), Mul(v, k), 0.5 * x first.
  Model hf = make_model({{"x", f32({Dim(4), Dim(8)})}},
                        {node("h", "Mul", {"x", "half"}, {"h"}), node("p", "Pow", {"x", "three"}, {"cube"}),
                         node("w", "Mul", {"cube", "c"}, {"w"}), node("v", "Add", {"w", "x"}, {"v"}),
                         node("u", "Mul", {"v", "k"}, {"u"}), node("t", "Tanh", {"u"}, {"t"}),
                         node("a", "Add", {"t", "one"}, {"a"}), node("y", "Mul", {"h", "a"}, {"y"})},
                        {"y"});
  hf.graph.initializers["three"] = scalar(3);
  hf.graph.initializers["c"] = scalar(0.0447f);  // within 1e-3 relative of 0.044715
  hf.graph.initializers["k"] = scalar(0.79788f);
  hf.graph.initializers["one"] = scalar(1);
  hf.graph.initializers["half"] = scalar(0.5f);
  Model before_hf = hf;
  EXPECT_EQ(run_pass(make_fuse_gelu(), hf), 1);
  EXPECT_EQ(summary(hf), "kiln::Gelu(x)->y; out: y");
  EXPECT_EQ(hf.graph.nodes[0].name, "h");
  // The tolerated constant (0.0447 vs 0.044715) moves the result by ~1e-5 at |x| = 2.
  expect_equivalent(before_hf, hf, 1e-4);
}

TEST(FuseGelu, OnnxGeluBecomesKilnGelu) {
  Model m = make_model({{"x", f32({Dim::sym("n"), Dim(5)})}},
                       {node("g", "Gelu", {"x"}, {"y"}, {{"approximate", Attribute::of_string("tanh")}}),
                        node("g2", "Gelu", {"y"}, {"z"})},
                       {"z"}, 20);
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_gelu(), m), 2);
  EXPECT_EQ(summary(m), "kiln::Gelu(x)->y; kiln::Gelu(y)->z; out: z");
  EXPECT_EQ(m.graph.nodes[0].attr("approximate")->s, "tanh");
  EXPECT_EQ(m.graph.nodes[1].attr("approximate")->s, "none");
  expect_equivalent(before, m, 0);
}

TEST(FuseGelu, MustNotChange) {
  // Wrong constants: sqrt(2) replaced by 1.5, 0.5 by 0.55.
  expect_unchanged(make_fuse_gelu(), bert_gelu(1.5f));
  expect_unchanged(make_fuse_gelu(), bert_gelu(1.4142135f, 0.55f));
  // An intermediate that is a graph output, or has a second consumer.
  Model out = bert_gelu();
  out.graph.outputs.push_back("e");
  expect_unchanged(make_fuse_gelu(), out);
  Model two = bert_gelu();
  two.graph.nodes.push_back(node("other", "Neg", {"a"}, {"z"}));
  two.graph.outputs.push_back("z");
  expect_unchanged(make_fuse_gelu(), two);
  // The tail multiplies by something other than x.
  Model other_x = bert_gelu();
  other_x.graph.inputs.push_back("x2");
  other_x.graph.types["x2"] = f32({Dim(1), Dim(6)});
  other_x.graph.nodes[3].inputs = {"x2", "a"};
  expect_unchanged(make_fuse_gelu(), other_x);
  // A constant that broadcasts x to a higher rank is not a scalar factor.
  Model expands = bert_gelu();
  expands.graph.initializers["half"] = Tensor::from_vector<float>({1, 1, 1}, {0.5f});
  expect_unchanged(make_fuse_gelu(), expands);
  // Non-constant factor (a graph input that happens to hold 0.5 is not known to).
  Model var = bert_gelu();
  var.graph.initializers.erase("half");
  var.graph.inputs.push_back("half");
  var.graph.types["half"] = f32({});
  expect_unchanged(make_fuse_gelu(), var);
  // Float64 is fine, but the constants' dtype must match x's.
  Model f64 = bert_gelu();
  f64.graph.types["x"] = TensorType{DType::kF64, Shape{Dim::sym("batch"), Dim(6)}};
  f64.graph.initializers["sqrt2"] = Tensor::scalar<double>(1.4142135623730951);
  f64.graph.initializers["one"] = Tensor::scalar<double>(1);
  f64.graph.initializers["half"] = Tensor::scalar<double>(0.5);
  Model f64_before = f64;
  EXPECT_EQ(run_pass(make_fuse_gelu(), f64), 1);
  expect_equivalent(f64_before, f64, 1e-12);
  // Tanh form with a wrong cubic coefficient.
  Model t = make_model({{"x", f32({Dim(4), Dim(8)})}},
                       {node("p", "Pow", {"x", "three"}, {"cube"}), node("w", "Mul", {"cube", "c"}, {"w"}),
                        node("v", "Add", {"w", "x"}, {"v"}), node("u", "Mul", {"v", "k"}, {"u"}),
                        node("t", "Tanh", {"u"}, {"t"}), node("a", "Add", {"t", "one"}, {"a"}),
                        node("m", "Mul", {"x", "a"}, {"m"}), node("y", "Mul", {"m", "half"}, {"y"})},
                       {"y"});
  t.graph.initializers["three"] = scalar(3);
  t.graph.initializers["c"] = scalar(0.05f);
  t.graph.initializers["k"] = scalar(0.7978846f);
  t.graph.initializers["one"] = scalar(1);
  t.graph.initializers["half"] = scalar(0.5f);
  expect_unchanged(make_fuse_gelu(), t);
  t.graph.initializers["c"] = scalar(0.044715f);
  t.graph.initializers["three"] = scalar(2);  // x^2, not x^3
  expect_unchanged(make_fuse_gelu(), t);
}

// ============================================================================================
// fuse-layernorm
// ============================================================================================

namespace {

// Decomposed LayerNorm over the last axis of x [batch, 4, 8] (opset 17: axes as attribute).
Model decomposed_ln(bool use_pow = true, bool scale = true, bool bias = true, int64_t opset = 17) {
  auto rm = [&](std::string name, std::string in, std::string out) {
    if (opset >= 18) return node(std::move(name), "ReduceMean", {std::move(in), "axes"}, {std::move(out)});
    return node(std::move(name), "ReduceMean", {std::move(in)}, {std::move(out)}, {{"axes", Attribute::of_ints({-1})}});
  };
  std::vector<Node> nodes = {rm("mean", "x", "mean"), node("sub", "Sub", {"x", "mean"}, {"d"})};
  nodes.push_back(use_pow ? node("pow", "Pow", {"d", "two"}, {"sq"}) : node("sq", "Mul", {"d", "d"}, {"sq"}));
  nodes.push_back(rm("var", "sq", "var"));
  nodes.push_back(node("addeps", "Add", {"var", "eps"}, {"ve"}));
  nodes.push_back(node("sqrt", "Sqrt", {"ve"}, {"std"}));
  nodes.push_back(node("div", "Div", {"d", "std"}, {scale || bias ? "n" : "y"}));
  if (scale) nodes.push_back(node("mul", "Mul", {"n", "gamma"}, {bias ? "ns" : "y"}));
  if (bias) nodes.push_back(node("addb", "Add", {"beta", scale ? "ns" : "n"}, {"y"}));
  Model m = make_model({{"x", f32({Dim::sym("batch"), Dim(4), Dim(8)})}}, nodes, {"y"}, opset);
  m.graph.initializers["two"] = scalar(2);
  m.graph.initializers["eps"] = scalar(1e-5f);
  m.graph.initializers["gamma"] = random_tensor({8}, 1);
  m.graph.initializers["beta"] = random_tensor({8}, 2);
  if (opset >= 18) m.graph.initializers["axes"] = Tensor::from_vector<int64_t>({1}, {-1});
  return m;
}

}  // namespace

TEST(FuseLayernorm, DecomposedWithPowScaleAndBias) {
  Model m = decomposed_ln();
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_layernorm(), m), 1);
  EXPECT_EQ(summary(m), "kiln::LayerNormalization(x,gamma,beta)->y; out: y");
  const Node& ln = m.graph.nodes[0];
  EXPECT_EQ(ln.name, "mean");
  EXPECT_EQ(ln.attr("axis")->i, -1);
  EXPECT_FLOAT_EQ(ln.attr("epsilon")->f, 1e-5f);
  EXPECT_EQ(ln.attr("fused_ops")->strings.size(), 9u);
  EXPECT_EQ(m.graph.types.at("y").to_string(), "f32[batch,4,8]");
  expect_equivalent(before, m, 1e-5);
}

TEST(FuseLayernorm, MulSquareAxesInputAndNoAffine) {
  // Opset 18 (axes as an input), Mul(d, d) for the square, no scale or bias: Scale becomes ones.
  Model m = decomposed_ln(false, false, false, 18);
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_layernorm(), m), 1);
  EXPECT_EQ(summary(m), "kiln::LayerNormalization(x,mean_ones)->y; out: y");
  EXPECT_EQ(m.graph.initializers.at("mean_ones").to_double_vector(), std::vector<double>{1.0});
  expect_equivalent(before, m, 1e-5);

  // Scale only; bias only.
  Model s = decomposed_ln(true, true, false);
  Model before_s = s;
  EXPECT_EQ(run_pass(make_fuse_layernorm(), s), 1);
  EXPECT_EQ(summary(s), "kiln::LayerNormalization(x,gamma)->y; out: y");
  expect_equivalent(before_s, s, 1e-5);
  Model b = decomposed_ln(false, false, true, 18);
  Model before_b = b;
  EXPECT_EQ(run_pass(make_fuse_layernorm(), b), 1);
  EXPECT_EQ(summary(b), "kiln::LayerNormalization(x,mean_ones,beta)->y; out: y");
  expect_equivalent(before_b, b, 1e-5);
}

TEST(FuseLayernorm, TwoIdenticalSubs) {
  // Some exporters compute X - mean twice: once for the variance, once for the numerator.
  Model m = decomposed_ln();
  m.graph.nodes.insert(m.graph.nodes.begin() + 2, node("sub2", "Sub", {"x", "mean"}, {"d2"}));
  m.graph.nodes[3].inputs[0] = "d2";  // Pow(d2, 2)
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_layernorm(), m), 1);
  EXPECT_EQ(summary(m), "kiln::LayerNormalization(x,gamma,beta)->y; out: y");
  EXPECT_EQ(m.graph.nodes[0].attr("fused_ops")->strings.size(), 10u);
  expect_equivalent(before, m, 1e-5);

  // Must not change: the second Sub subtracts something else, or its result is also used elsewhere.
  Model other = before;
  other.graph.nodes[2].inputs = {"x", "x"};
  expect_unchanged(make_fuse_layernorm(), other);
  Model used = before;
  used.graph.outputs.push_back("d2");
  expect_unchanged(make_fuse_layernorm(), used);
}

TEST(FuseLayernorm, TwoTrailingAxes) {
  // Axes [1, 2] of a rank-3 input (positive, so the rank must be known) normalize the last two: axis -2.
  Model m = decomposed_ln();
  for (Node& n : m.graph.nodes)
    if (n.op_type == "ReduceMean") n.attrs["axes"] = Attribute::of_ints({2, 1});
  m.graph.initializers["gamma"] = random_tensor({4, 8}, 3);
  m.graph.initializers["beta"] = random_tensor({1, 8}, 4);
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_layernorm(), m), 1);
  EXPECT_EQ(summary(m), "kiln::LayerNormalization(x,gamma,beta)->y; out: y");
  EXPECT_EQ(m.graph.nodes[0].attr("axis")->i, -2);
  expect_equivalent(before, m, 1e-5);
}

TEST(FuseLayernorm, OnnxLayerNormalizationWithOnlyY) {
  Model m = make_model({{"x", f32({Dim::sym("batch"), Dim(8)})}},
                       {node("ln", "LayerNormalization", {"x", "s", "b"}, {"y", "", "inv"},
                             {{"epsilon", Attribute::of_float(1e-3f)}, {"stash_type", Attribute::of_int(1)}})},
                       {"y"});
  m.graph.initializers["s"] = random_tensor({8}, 5);
  m.graph.initializers["b"] = random_tensor({8}, 6);
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_layernorm(), m), 1);
  EXPECT_EQ(summary(m), "kiln::LayerNormalization(x,s,b)->y; out: y");
  EXPECT_FLOAT_EQ(m.graph.nodes[0].attr("epsilon")->f, 1e-3f);
  EXPECT_EQ(m.graph.types.count("inv"), 0u);
  expect_equivalent(before, m, 0);

  // Mean or InvStdDev used: unchanged.
  Model used = before;
  used.graph.outputs.push_back("inv");
  expect_unchanged(make_fuse_layernorm(), used);
}

TEST(FuseLayernorm, MustNotChange) {
  // Axes that are not the trailing ones.
  Model mid = decomposed_ln();
  for (Node& n : mid.graph.nodes)
    if (n.op_type == "ReduceMean") n.attrs["axes"] = Attribute::of_ints({1});
  expect_unchanged(make_fuse_layernorm(), mid);
  // The two means over different axes.
  Model diff = decomposed_ln();
  diff.graph.nodes[3].attrs["axes"] = Attribute::of_ints({-2, -1});
  expect_unchanged(make_fuse_layernorm(), diff);
  // keepdims = 0 on a square input (still a valid graph, but the means broadcast along the wrong axis).
  Model nokeep = decomposed_ln();
  nokeep.graph.types["x"] = f32({Dim(8), Dim(8)});
  for (Node& n : nokeep.graph.nodes)
    if (n.op_type == "ReduceMean") n.attrs["keepdims"] = Attribute::of_int(0);
  expect_unchanged(make_fuse_layernorm(), nokeep);
  // Intermediates used elsewhere or graph outputs.
  Model d_out = decomposed_ln();
  d_out.graph.outputs.push_back("d");
  expect_unchanged(make_fuse_layernorm(), d_out);
  Model var_out = decomposed_ln();
  var_out.graph.outputs.push_back("var");
  expect_unchanged(make_fuse_layernorm(), var_out);
  // The mean of a different tensor than the one subtracted from.
  Model other = decomposed_ln();
  other.graph.inputs.push_back("x2");
  other.graph.types["x2"] = f32({Dim::sym("batch"), Dim(4), Dim(8)});
  other.graph.nodes[0].inputs[0] = "x2";
  expect_unchanged(make_fuse_layernorm(), other);
  // Non-constant epsilon; a power other than 2.
  Model eps = decomposed_ln();
  eps.graph.initializers.erase("eps");
  eps.graph.inputs.push_back("eps");
  eps.graph.types["eps"] = f32({});
  expect_unchanged(make_fuse_layernorm(), eps);
  Model cube = decomposed_ln();
  cube.graph.initializers["two"] = scalar(3);
  expect_unchanged(make_fuse_layernorm(), cube);
  // Positive axes with unknown rank cannot be checked to be trailing.
  Model unk = decomposed_ln();
  for (Node& n : unk.graph.nodes)
    if (n.op_type == "ReduceMean") n.attrs["axes"] = Attribute::of_ints({2});
  unk.graph.types["x"] = TensorType{DType::kF32, std::nullopt};
  expect_unchanged(make_fuse_layernorm(), unk);
}

TEST(FuseLayernorm, ScaleThatWouldBroadcastXStaysOutside) {
  // gamma [2,1,8] would expand n [batch,4,8] to [2,4,8] only if batch were 1: the Mul is not
  // absorbed (and the bias Add after it is not either); the normalization itself still fuses.
  Model m = decomposed_ln();
  m.graph.types["x"] = f32({Dim(1), Dim(4), Dim(8)});
  m.graph.initializers["gamma"] = random_tensor({2, 1, 8}, 8);
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_layernorm(), m), 1);
  EXPECT_EQ(summary(m), "kiln::LayerNormalization(x,mean_ones)->n; Mul(n,gamma)->ns; Add(beta,ns)->y; out: y");
  expect_equivalent(before, m, 1e-5);
}

// ============================================================================================
// fuse-matmul-bias-activation
// ============================================================================================

namespace {

// x [batch, seq, 8] x W [8, 6] + b [6], then the given activation nodes (their output is "y").
Model linear(std::vector<Node> act, int64_t opset = 17, bool bias_first = true) {
  std::vector<Node> nodes = {node("mm", "MatMul", {"x", "w"}, {"p"}),
                             node("add", "Add", bias_first ? std::vector<std::string>{"b", "p"}
                                                           : std::vector<std::string>{"p", "b"},
                                  {act.empty() ? "y" : "q"})};
  for (auto& n : act) nodes.push_back(std::move(n));
  Model m = make_model({{"x", f32({Dim::sym("batch"), Dim::sym("seq"), Dim(8)})}}, nodes, {"y"}, opset);
  m.graph.initializers["w"] = random_tensor({8, 6}, 21);
  m.graph.initializers["b"] = random_tensor({6}, 22);
  return m;
}

}  // namespace

TEST(FuseMatmulBiasActivation, MatMulPlusBias) {
  for (bool bias_first : {true, false}) {
    Model m = linear({}, 17, bias_first);
    Model before = m;
    EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), m), 1);
    EXPECT_EQ(summary(m), "kiln::FusedMatMul(x,w,b)->y; out: y");
    const Node& f = m.graph.nodes[0];
    EXPECT_EQ(f.name, "mm");
    EXPECT_EQ(f.attr("activation"), nullptr);
    EXPECT_EQ(f.attr("fused_ops")->strings, (std::vector<std::string>{"MatMul:mm", "Add:add"}));
    EXPECT_EQ(m.graph.types.at("y").to_string(), "f32[batch,seq,6]");
    EXPECT_EQ(m.graph.types.count("p"), 0u);
    expect_equivalent(before, m, 0);
  }
}

TEST(FuseMatmulBiasActivation, EachActivation) {
  struct Case {
    std::string op;
    std::map<std::string, Attribute> attrs;
    std::string domain;
    int64_t opset;
    std::string act;
    std::vector<float> params;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<Case> cases = {
      {"Relu", {}, "", 17, "Relu", {}},
      {"Sigmoid", {}, "", 17, "Sigmoid", {}},
      {"Tanh", {}, "", 17, "Tanh", {}},
      {"LeakyRelu", {{"alpha", Attribute::of_float(0.2f)}}, "", 17, "LeakyRelu", {0.2f}},
      {"LeakyRelu", {}, "", 17, "LeakyRelu", {0.01f}},
      {"Gelu", {}, "kiln", 17, "Gelu", {}},
      {"Gelu", {{"approximate", Attribute::of_string("tanh")}}, "kiln", 17, "GeluTanh", {}},
      {"Gelu", {}, "", 20, "Gelu", {}},
      {"Clip", {{"min", Attribute::of_float(0)}, {"max", Attribute::of_float(6)}}, "", 9, "Clip", {0, 6}},
      {"Clip", {}, "", 9, "Clip", {-FLT_MAX, FLT_MAX}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.domain + "::" + c.op + " opset " + std::to_string(c.opset));
    Model m = linear({node("act", c.op, {"q"}, {"y"}, c.attrs, c.domain)}, c.opset);
    if (!c.domain.empty()) m.opsets[c.domain] = 1;
    Model before = m;
    EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), m), 1);
    EXPECT_EQ(summary(m), "kiln::FusedMatMul(x,w,b)->y; out: y");
    const Node& f = m.graph.nodes[0];
    EXPECT_EQ(f.attr("activation")->s, c.act);
    if (c.params.empty()) EXPECT_EQ(f.attr("activation_params"), nullptr);
    else EXPECT_EQ(f.attr("activation_params")->floats, c.params);
    EXPECT_EQ(f.attr("fused_ops")->strings.size(), 3u);
    expect_equivalent(before, m, 0);
  }
  // Clip-13 with constant bound inputs, one of them omitted (no bound on that side).
  Model clip = linear({node("act", "Clip", {"q", "", "hi"}, {"y"})}, 13);
  clip.graph.initializers["hi"] = scalar(0.5f);
  Model before = clip;
  EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), clip), 1);
  EXPECT_EQ(summary(clip), "kiln::FusedMatMul(x,w,b)->y; out: y");
  EXPECT_EQ(clip.graph.nodes[0].attr("activation_params")->floats, (std::vector<float>{-inf, 0.5f}));
  expect_equivalent(before, clip, 0);
}

TEST(FuseMatmulBiasActivation, MatMulActivationWithoutBiasAndConstantA) {
  // No bias: MatMul + Relu.
  Model m = make_model({{"x", f32({Dim(3), Dim(8)})}},
                       {node("mm", "MatMul", {"x", "w"}, {"p"}), node("r", "Relu", {"p"}, {"y"})}, {"y"});
  m.graph.initializers["w"] = random_tensor({8, 6}, 31);
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), m), 1);
  EXPECT_EQ(summary(m), "kiln::FusedMatMul(x,w)->y; out: y");
  expect_equivalent(before, m, 0);

  // Constant A (W x X): the bias runs along X's last dim.
  Model wx = make_model({{"x", f32({Dim(2), Dim(8), Dim(5)})}},
                        {node("mm", "MatMul", {"w", "x"}, {"p"}), node("add", "Add", {"p", "b"}, {"y"})}, {"y"});
  wx.graph.initializers["w"] = random_tensor({3, 8}, 32);
  wx.graph.initializers["b"] = random_tensor({1, 5}, 33);
  Model before_wx = wx;
  EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), wx), 1);
  EXPECT_EQ(summary(wx), "kiln::FusedMatMul(w,x,b)->y; out: y");
  expect_equivalent(before_wx, wx, 0);

  // Weights behind Identity and Constant nodes (as PyTorch exports deduplicated parameters).
  Model id = linear({});
  id.graph.initializers["w0"] = id.graph.initializers.at("w");
  id.graph.initializers.erase("w");
  id.graph.initializers.erase("b");
  id.graph.nodes.insert(id.graph.nodes.begin(), node("idw", "Identity", {"w0"}, {"w"}));
  id.graph.nodes.insert(id.graph.nodes.begin(),
                        node("cb", "Constant", {}, {"b"}, {{"value", Attribute::of_tensor(random_tensor({6}, 34))}}));
  Model before_id = id;
  EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), id), 1);
  EXPECT_EQ(summary(id), "Constant()->b; Identity(w0)->w; kiln::FusedMatMul(x,w,b)->y; out: y");
  expect_equivalent(before_id, id, 0);
}

TEST(FuseMatmulBiasActivation, Gemm) {
  // Gemm + Relu keeps transB/alpha/beta.
  Model m = make_model({{"x", f32({Dim::sym("batch"), Dim(8)})}},
                       {node("fc", "Gemm", {"x", "w", "c"}, {"p"},
                             {{"transB", Attribute::of_int(1)}, {"alpha", Attribute::of_float(0.5f)},
                              {"beta", Attribute::of_float(2)}}),
                        node("r", "Relu", {"p"}, {"y"})},
                       {"y"});
  m.graph.initializers["w"] = random_tensor({6, 8}, 41);
  m.graph.initializers["c"] = random_tensor({6}, 42);
  Model before = m;
  EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), m), 1);
  EXPECT_EQ(summary(m), "kiln::FusedMatMul(x,w,c)->y; out: y");
  const Node& f = m.graph.nodes[0];
  EXPECT_EQ(f.name, "fc");
  EXPECT_EQ(f.attr("transA")->i, 0);
  EXPECT_EQ(f.attr("transB")->i, 1);
  EXPECT_FLOAT_EQ(f.attr("alpha")->f, 0.5f);
  EXPECT_FLOAT_EQ(f.attr("beta")->f, 2.0f);
  EXPECT_EQ(f.attr("activation")->s, "Relu");
  EXPECT_EQ(m.graph.types.at("y").to_string(), "f32[batch,6]");
  expect_equivalent(before, m, 1e-6);

  // Gemm alone (no C, transA) converts too: one op for backends.
  Model g = make_model({{"x", f32({Dim(8), Dim(3)})}},
                       {node("fc", "Gemm", {"x", "w"}, {"y"}, {{"transA", Attribute::of_int(1)}})}, {"y"}, 13);
  g.graph.initializers["w"] = random_tensor({8, 5}, 43);
  Model before_g = g;
  EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), g), 1);
  EXPECT_EQ(summary(g), "kiln::FusedMatMul(x,w)->y; out: y");
  EXPECT_EQ(g.graph.nodes[0].attr("transA")->i, 1);
  expect_equivalent(before_g, g, 1e-6);
}

TEST(FuseMatmulBiasActivation, MustNotChange) {
  // Both operands non-constant: an attention matmul (left to fuse-attention), even with a constant Add.
  Model attn = make_model({{"q", f32({Dim(2), Dim(4), Dim(8)})}, {"k", f32({Dim(2), Dim(8), Dim(4)})}},
                          {node("mm", "MatMul", {"q", "k"}, {"p"}), node("add", "Add", {"p", "b"}, {"y"})}, {"y"});
  attn.graph.initializers["b"] = random_tensor({4}, 51);
  expect_unchanged(make_fuse_matmul_bias_activation(), attn);
  // A lone MatMul.
  Model lone = make_model({{"x", f32({Dim(3), Dim(8)})}}, {node("mm", "MatMul", {"x", "w"}, {"y"})}, {"y"});
  lone.graph.initializers["w"] = random_tensor({8, 6}, 52);
  expect_unchanged(make_fuse_matmul_bias_activation(), lone);
  // MatMul output used twice, or a graph output.
  Model twice = linear({});
  twice.graph.outputs.push_back("p");
  expect_unchanged(make_fuse_matmul_bias_activation(), twice);
  Model twice2 = linear({});
  twice2.graph.nodes.push_back(node("neg", "Neg", {"p"}, {"z"}));
  twice2.graph.outputs.push_back("z");
  expect_unchanged(make_fuse_matmul_bias_activation(), twice2);
  // A non-constant addend (a residual), or a bias along another axis, or one of higher rank.
  Model resid = linear({});
  resid.graph.initializers.erase("b");
  resid.graph.inputs.push_back("b");
  resid.graph.types["b"] = f32({Dim(6)});
  expect_unchanged(make_fuse_matmul_bias_activation(), resid);
  Model col = make_model({{"x", f32({Dim(4), Dim(8)})}},
                         {node("mm", "MatMul", {"x", "w"}, {"p"}), node("add", "Add", {"p", "b"}, {"y"})}, {"y"});
  col.graph.initializers["w"] = random_tensor({8, 6}, 53);
  col.graph.initializers["b"] = random_tensor({4, 1}, 54);
  expect_unchanged(make_fuse_matmul_bias_activation(), col);
  Model high = col;
  high.graph.initializers["b"] = random_tensor({2, 1, 6}, 55);
  expect_unchanged(make_fuse_matmul_bias_activation(), high);
  // Integer MatMul.
  Model ints = make_model({{"x", TensorType{DType::kI32, Shape{Dim(3), Dim(2)}}}},
                          {node("mm", "MatMul", {"x", "w"}, {"p"}), node("add", "Add", {"p", "b"}, {"y"})}, {"y"});
  ints.graph.initializers["w"] = Tensor::from_vector<int32_t>({2, 2}, {1, 2, 3, 4});
  ints.graph.initializers["b"] = Tensor::from_vector<int32_t>({2}, {1, 2});
  expect_unchanged(make_fuse_matmul_bias_activation(), ints);
  // Clip with a non-constant bound; an activation that is not one FusedMatMul applies.
  Model clip = linear({node("act", "Clip", {"q", "lo"}, {"y"})}, 13);
  clip.graph.inputs.push_back("lo");
  clip.graph.types["lo"] = f32({});
  Model clip_before = clip;
  EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), clip), 1);
  EXPECT_EQ(summary(clip), "kiln::FusedMatMul(x,w,b)->q; Clip(q,lo)->y; out: y");
  expect_equivalent(clip_before, clip, 0);
  Model elu = linear({node("act", "Elu", {"q"}, {"y"})});
  EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), elu), 1);
  EXPECT_EQ(summary(elu), "kiln::FusedMatMul(x,w,b)->q; Elu(q)->y; out: y");
  // The biased value is also a graph output: the activation stays separate.
  Model out = linear({node("act", "Relu", {"q"}, {"y"})});
  out.graph.outputs.push_back("q");
  Model out_before = out;
  EXPECT_EQ(run_pass(make_fuse_matmul_bias_activation(), out), 1);
  EXPECT_EQ(summary(out), "kiln::FusedMatMul(x,w,b)->q; Relu(q)->y; out: y q");
  expect_equivalent(out_before, out, 0);
}

// A small transformer MLP block through the three passes: LayerNorm, Linear + erf GELU, Linear.
TEST(FuseMatmulBiasActivation, PipelineOnMlpBlock) {
  Model m = decomposed_ln();
  std::vector<Node> more = {node("fc1", "MatMul", {"y", "w1"}, {"h"}), node("b1add", "Add", {"b1", "h"}, {"hb"}),
                            node("div", "Div", {"hb", "sqrt2"}, {"s"}), node("erf", "Erf", {"s"}, {"e"}),
                            node("one", "Add", {"e", "one"}, {"a"}), node("gm", "Mul", {"hb", "a"}, {"gm"}),
                            node("gh", "Mul", {"gm", "half"}, {"g"}), node("fc2", "MatMul", {"g", "w2"}, {"o"}),
                            node("b2add", "Add", {"o", "b2"}, {"out"})};
  for (auto& n : more) m.graph.nodes.push_back(std::move(n));
  m.graph.outputs = {"out"};
  m.graph.initializers["w1"] = random_tensor({8, 16}, 61, -0.5f, 0.5f);
  m.graph.initializers["b1"] = random_tensor({16}, 62);
  m.graph.initializers["w2"] = random_tensor({16, 8}, 63, -0.5f, 0.5f);
  m.graph.initializers["b2"] = random_tensor({8}, 64);
  m.graph.initializers["sqrt2"] = scalar(1.4142135f);
  m.graph.initializers["one"] = scalar(1);
  m.graph.initializers["half"] = scalar(0.5f);
  Model before = m;
  std::vector<std::unique_ptr<Pass>> passes;
  passes.push_back(make_fuse_layernorm());
  passes.push_back(make_fuse_gelu());
  passes.push_back(make_fuse_matmul_bias_activation());
  passes.push_back(make_dead_node_elimination());
  run_passes(std::move(passes), m);
  EXPECT_EQ(summary(m),
            "kiln::LayerNormalization(x,gamma,beta)->y; kiln::FusedMatMul(y,w1,b1)->g; "
            "kiln::FusedMatMul(g,w2,b2)->out; out: out");
  EXPECT_EQ(m.graph.nodes[1].attr("activation")->s, "Gelu");
  EXPECT_EQ(m.graph.nodes[1].attr("fused_ops")->strings,
            (std::vector<std::string>{"MatMul:fc1", "Add:b1add", "Div:div", "Erf:erf", "Add:one", "Mul:gm", "Mul:gh"}));
  expect_equivalent(before, m, 1e-5);

  // A second run finds nothing left to fuse.
  const std::string golden = summary(m);
  std::vector<std::unique_ptr<Pass>> again;
  again.push_back(make_fuse_layernorm());
  again.push_back(make_fuse_gelu());
  again.push_back(make_fuse_matmul_bias_activation());
  EXPECT_EQ(run_passes(std::move(again), m), 0);
  EXPECT_EQ(summary(m), golden);
}

// ============================================================================================
// Exported models
// ============================================================================================

namespace {

std::map<std::string, int> op_histogram(const Model& m) {
  std::map<std::string, int> h;
  for (const Node& n : m.graph.nodes) {
    std::string key = (n.domain.empty() ? "" : n.domain + "::") + n.op_type;
    if (n.op_type == "FusedMatMul") {
      const Attribute* a = n.attr("activation");
      if (a && !a->s.empty()) key += "[" + a->s + "]";
    }
    ++h[key];
  }
  return h;
}

// max |a - b| / max |b| over every output.
double normalized_error(const reference::TensorMap& got, const reference::TensorMap& want) {
  double worst = 0;
  for (const auto& [name, t] : want) {
    if (!got.count(name)) return INFINITY;
    const auto a = got.at(name).to_double_vector(), b = t.to_double_vector();
    if (a.size() != b.size()) return INFINITY;
    double diff = 0, ref = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::isnan(a[i])) return INFINITY;
      diff = std::max(diff, std::fabs(a[i] - b[i]));
      ref = std::max(ref, std::fabs(b[i]));
    }
    worst = std::max(worst, diff / std::max(ref, 1e-30));
  }
  return worst;
}

struct ModelExpectation {
  std::string name;
  int layernorms, gelus_absorbed, fused_matmuls;  // kiln::LayerNormalization, FusedMatMul[Gelu*], all FusedMatMul
};

class TransformerModels : public ::testing::TestWithParam<ModelExpectation> {};

}  // namespace

TEST_P(TransformerModels, FusesAndMatchesUnfused) {
  namespace fs = std::filesystem;
  const ModelExpectation& want = GetParam();
  const fs::path dir = kiln_test::model_dir();
  const fs::path model_path = dir / (want.name + ".onnx"), io_path = dir / (want.name + ".io.npz");
  if (!fs::exists(model_path) || !fs::exists(io_path)) GTEST_SKIP() << model_path << " not exported";

  Model model = load_onnx(model_path);
  InferOptions opts;
  opts.evaluator = reference::constant_evaluator();
  infer_types(model, opts);
  const Model original = model;
  PassManager pm;
  pm.add(make_fuse_layernorm());
  pm.add(make_fuse_gelu());
  pm.add(make_fuse_matmul_bias_activation());
  pm.add(make_dead_node_elimination());
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  const int rewrites = pm.run(model, ctx);

  std::cout << want.name << ": " << original.graph.nodes.size() << " nodes -> " << model.graph.nodes.size()
            << " nodes, " << rewrites << " rewrites\n";
  for (const auto& line : ctx.log) std::cout << "  " << line << "\n";
  std::cout << "  ops after:";
  const auto hist = op_histogram(model);
  for (const auto& [op, n] : hist) std::cout << " " << op << "=" << n;
  std::cout << "\n";

  int fused = 0, gelu_absorbed = 0;
  for (const auto& [op, n] : hist) {
    if (op.starts_with("kiln::FusedMatMul")) fused += n;
    if (op.starts_with("kiln::FusedMatMul[Gelu")) gelu_absorbed += n;
  }
  EXPECT_EQ(hist.count("kiln::LayerNormalization") ? hist.at("kiln::LayerNormalization") : 0, want.layernorms);
  EXPECT_EQ(gelu_absorbed, want.gelus_absorbed);
  EXPECT_EQ(fused, want.fused_matmuls);
  for (const char* gone : {"LayerNormalization", "Erf", "Gemm", "kiln::Gelu"}) EXPECT_EQ(hist.count(gone), 0u) << gone;

  reference::TensorMap inputs, expected;
  for (auto& [key, t] : read_npz(io_path)) {
    if (std::find(original.graph.inputs.begin(), original.graph.inputs.end(), key) != original.graph.inputs.end())
      inputs[key] = t;
    else
      expected[key] = t;
  }
  const auto before = run_model(original, inputs);
  const auto after = run_model(model, inputs);
  const double err = normalized_error(after, before);
  const double err_torch = normalized_error(after, expected);
  std::cout << "  normalized error after vs before: " << err << ", after vs PyTorch: " << err_torch << "\n";
  EXPECT_LE(err, 1e-4);
  EXPECT_LE(err_torch, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Exported, TransformerModels,
                         ::testing::Values(ModelExpectation{"bert", 25, 12, 73}, ModelExpectation{"gpt", 9, 4, 16},
                                           ModelExpectation{"vit_b16_2layer", 5, 2, 9},
                                           ModelExpectation{"convnext_tiny", 23, 18, 37}),
                         [](const auto& info) { return info.param.name; });
