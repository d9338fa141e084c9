// Folding passes (remove-noop-reshapes, constant-folding, shape-subgraph-folding): golden
// before/after graphs, must-not-change cases for every guard, numeric equivalence with the
// reference executor, and the exported real models when present in the model cache (kiln_test::model_dir()).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <random>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"
#include "util/npy.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace kiln;

namespace {

Node node(std::string name, std::string op, std::vector<std::string> in, std::vector<std::string> out,
          std::map<std::string, Attribute> attrs = {}) {
  return Node{std::move(name), std::move(op), "", std::move(in), std::move(out), std::move(attrs)};
}

Shape dims(std::initializer_list<Dim> d) { return Shape(d); }

// A model with one f32 input "x" of the given (possibly symbolic) shape.
Model make_model(Shape x_shape, std::vector<Node> nodes, std::vector<std::string> outputs, int64_t opset = 17) {
  Model m;
  m.opsets[""] = opset;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = TensorType{DType::kF32, std::move(x_shape)};
  m.graph.outputs = std::move(outputs);
  m.graph.nodes = std::move(nodes);
  return m;
}

void add_ints(Model& m, const std::string& name, std::vector<int64_t> v, bool scalar = false) {
  std::vector<int64_t> shape;
  if (!scalar) shape.push_back(static_cast<int64_t>(v.size()));
  m.graph.initializers[name] = Tensor::from_vector<int64_t>(shape, v);
}

// "Relu(x)->a; Neg(a)->y; out: y" style one-line summary of the graph's nodes and outputs.
std::string summary(const Model& m) {
  std::string s;
  for (const Node& n : m.graph.nodes) {
    s += n.op_type + "(";
    for (size_t i = 0; i < n.inputs.size(); ++i) s += (i ? "," : "") + n.inputs[i];
    s += ")->";
    for (size_t i = 0; i < n.outputs.size(); ++i) s += (i ? "," : "") + n.outputs[i];
    s += "; ";
  }
  s += "out:";
  for (const auto& o : m.graph.outputs) s += " " + o;
  return s;
}

std::vector<int64_t> ints_of(const Model& m, const std::string& name) {
  auto it = m.graph.initializers.find(name);
  if (it == m.graph.initializers.end()) return {-999};
  return it->second.to_int64_vector();
}

struct RunOpts {
  bool evaluator = true;
  std::map<std::string, std::vector<int64_t>> input_shapes;
};

// Infers types, then runs one pass (verifying the IR afterwards).
int run_pass(std::unique_ptr<Pass> pass, Model& m, const RunOpts& o = {}) {
  infer_types(m);
  PassManager pm;
  pm.add(std::move(pass));
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  if (o.evaluator) ctx.evaluator = reference::constant_evaluator();
  ctx.input_shapes = o.input_shapes;
  return pm.run(m, ctx);
}

// Runs both models on the same seeded random f32 input of shape `x` and compares the outputs:
// exactly (these passes do not change the arithmetic) or within the fp32 tolerance if `tol`.
void expect_equivalent(const Model& before, const Model& after, const std::vector<int64_t>& x, bool tol = false) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-2, 2);
  std::vector<float> xs(static_cast<size_t>(shape_numel(x)));
  for (auto& v : xs) v = dist(rng);
  reference::TensorMap in{{"x", Tensor::from_vector<float>(x, xs)}};
  auto a = reference::Executor(before).run(in);
  auto b = reference::Executor(after).run(in);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    ASSERT_EQ(t.shape(), b.at(name).shape()) << name;
    auto va = t.to_double_vector(), vb = b.at(name).to_double_vector();
    if (!tol) {
      EXPECT_EQ(va, vb) << name;
      continue;
    }
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < va.size(); ++i) {
      max_diff = std::max(max_diff, std::fabs(va[i] - vb[i]));
      max_ref = std::max(max_ref, std::fabs(va[i]));
    }
    EXPECT_LE(max_diff, 1e-5 * std::max(1.0, max_ref)) << name;
  }
}

Attribute ints(std::vector<int64_t> v) { return Attribute::of_ints(std::move(v)); }

}  // namespace

// ---------------------------------------------------------------- remove-noop-reshapes

TEST(RemoveNoopReshapes, RemovesReshapeToSameStaticShape) {
  Model m = make_model(dims({2, 3}),
                       {node("r", "Relu", {"x"}, {"a"}), node("rs", "Reshape", {"a", "s"}, {"b"}),
                        node("n", "Neg", {"b"}, {"y"})},
                       {"y"});
  add_ints(m, "s", {2, 3});
  Model before = m;
  EXPECT_EQ(run_pass(make_remove_noop_reshapes(), m), 1);
  EXPECT_EQ(summary(m), "Relu(x)->a; Neg(a)->y; out: y");
  expect_equivalent(before, m, {2, 3});
}

TEST(RemoveNoopReshapes, RemovesReshapeToSameSymbolicShapeAndKeepsOutputName) {
  // [batch,seq,8] reshaped by a Constant node [0,-1,8]: provably the same shape. The Reshape's
  // output is the graph output, so the producer is renamed to keep the interface.
  Model m = make_model(dims({Dim::sym("batch"), Dim::sym("seq"), 8}),
                       {node("r", "Relu", {"x"}, {"a"}),
                        node("c", "Constant", {}, {"s"},
                             {{"value", Attribute::of_tensor(Tensor::from_vector<int64_t>({3}, {0, -1, 8}))}}),
                        node("rs", "Reshape", {"a", "s"}, {"y"})},
                       {"y"});
  Model before = m;
  EXPECT_EQ(run_pass(make_remove_noop_reshapes(), m), 1);
  EXPECT_EQ(summary(m), "Relu(x)->y; Constant()->s; out: y");
  expect_equivalent(before, m, {2, 5, 8});
}

TEST(RemoveNoopReshapes, CollapsesReshapeChains) {
  // Reshape -> Reshape -> Reshape: collapsed into the last one, which keeps its constant shape.
  Model m = make_model(dims({2, 3, 4}),
                       {node("r", "Relu", {"x"}, {"a"}), node("r1", "Reshape", {"a", "s1"}, {"b"}),
                        node("r2", "Reshape", {"b", "s2"}, {"c"}), node("r3", "Reshape", {"c", "s3"}, {"d"}),
                        node("n", "Neg", {"d"}, {"y"})},
                       {"y"});
  add_ints(m, "s1", {24});
  add_ints(m, "s2", {6, 4});
  add_ints(m, "s3", {4, -1});
  Model before = m;
  EXPECT_EQ(run_pass(make_remove_noop_reshapes(), m), 2);
  EXPECT_EQ(summary(m), "Relu(x)->a; Reshape(a,s3)->d; Neg(d)->y; out: y");
  expect_equivalent(before, m, {2, 3, 4});
}

TEST(RemoveNoopReshapes, CollapsesFlattenSqueezeUnsqueezeIntoReshape) {
  Model m = make_model(dims({2, 1, 3, 4}),
                       {node("f", "Flatten", {"x"}, {"a"}, {{"axis", Attribute::of_int(2)}}),
                        node("r1", "Reshape", {"a", "s1"}, {"b"}), node("sq", "Squeeze", {"x", "ax1"}, {"c"}),
                        node("r2", "Reshape", {"c", "s2"}, {"d"}), node("us", "Unsqueeze", {"x", "ax0"}, {"e"}),
                        node("r3", "Reshape", {"e", "s3"}, {"f"})},
                       {"b", "d", "f"});
  add_ints(m, "s1", {6, 4});
  add_ints(m, "s2", {2, 12});
  add_ints(m, "s3", {-1});
  add_ints(m, "ax1", {1});
  add_ints(m, "ax0", {0});
  Model before = m;
  EXPECT_EQ(run_pass(make_remove_noop_reshapes(), m), 3);
  EXPECT_EQ(summary(m), "Reshape(x,s1)->b; Reshape(x,s2)->d; Reshape(x,s3)->f; out: b d f");
  expect_equivalent(before, m, {2, 1, 3, 4});
}

TEST(RemoveNoopReshapes, ResolvesZerosOfTheFinalShape) {
  // Static: the 0 of [0,2,2] copies the intermediate's dim; the final output type [6,2,2] is
  // static and becomes a new constant.
  Model m = make_model(dims({2, 3, 4}),
                       {node("r1", "Reshape", {"x", "s1"}, {"a"}), node("r2", "Reshape", {"a", "s2"}, {"y"})},
                       {"y"});
  add_ints(m, "s1", {6, 4});
  add_ints(m, "s2", {0, 2, 2});
  Model before = m;
  EXPECT_EQ(run_pass(make_remove_noop_reshapes(), m), 1);
  EXPECT_EQ(summary(m), "Reshape(x,r2_shape)->y; out: y");
  EXPECT_EQ(ints_of(m, "r2_shape"), (std::vector<int64_t>{6, 2, 2}));
  expect_equivalent(before, m, {2, 3, 4});

  // Symbolic: [batch,3,4] -> [0,12] = [batch,12] -> [-1,0,1]; the final type [batch,12,1] is not
  // static, but the 0 reads the intermediate's known dim 12.
  Model sym = make_model(dims({Dim::sym("batch"), 3, 4}),
                         {node("r1", "Reshape", {"x", "s1"}, {"a"}), node("r2", "Reshape", {"a", "s2"}, {"y"})},
                         {"y"});
  add_ints(sym, "s1", {0, 12});
  add_ints(sym, "s2", {-1, 0, 1});
  Model sym_before = sym;
  EXPECT_EQ(run_pass(make_remove_noop_reshapes(), sym), 1);
  EXPECT_EQ(summary(sym), "Reshape(x,r2_shape)->y; out: y");
  EXPECT_EQ(ints_of(sym, "r2_shape"), (std::vector<int64_t>{-1, 12, 1}));
  expect_equivalent(sym_before, sym, {5, 3, 4});
}

TEST(RemoveNoopReshapes, CancelsAndComposesTransposePairs) {
  Model m = make_model(dims({2, 3, 4}),
                       {node("r", "Relu", {"x"}, {"a"}),
                        node("t1", "Transpose", {"a"}, {"b"}, {{"perm", ints({0, 2, 1})}}),
                        node("t2", "Transpose", {"b"}, {"c"}, {{"perm", ints({0, 2, 1})}}),
                        node("n", "Neg", {"c"}, {"d"}),
                        node("t3", "Transpose", {"d"}, {"e"}, {{"perm", ints({1, 0, 2})}}),
                        node("t4", "Transpose", {"e"}, {"y"}, {{"perm", ints({0, 2, 1})}})},
                       {"y"});
  Model before = m;
  EXPECT_EQ(run_pass(make_remove_noop_reshapes(), m), 2);
  EXPECT_EQ(summary(m), "Relu(x)->a; Neg(a)->d; Transpose(d)->y; out: y");
  // y[i,j,k] = e[i,k,j] = d[k,i,j]: perm [1,0,2] then [0,2,1] composes to [1,2,0].
  EXPECT_EQ(m.graph.nodes[2].attr("perm")->ints, (std::vector<int64_t>{1, 2, 0}));
  expect_equivalent(before, m, {2, 3, 4});

  // Default perms (reverse) cancel; a cancelling pair ending in a graph output renames the producer.
  Model d = make_model(dims({2, 3, 4}),
                       {node("r", "Relu", {"x"}, {"a"}), node("t1", "Transpose", {"a"}, {"b"}),
                        node("t2", "Transpose", {"b"}, {"y"})},
                       {"y"});
  Model d_before = d;
  EXPECT_EQ(run_pass(make_remove_noop_reshapes(), d), 1);
  EXPECT_EQ(summary(d), "Relu(x)->y; out: y");
  expect_equivalent(d_before, d, {2, 3, 4});
}

TEST(RemoveNoopReshapes, MustNotChange) {
  // A Reshape that changes the shape and whose output has a second consumer (r0 -> r1, n1); a
  // chain whose intermediate is a graph output (r2 -> r3); a Transpose pair with a shared
  // intermediate (t1 -> t2, n2); a cancelling pair from a graph input straight to a graph output
  // (t3 -> t4); a symbolic final shape whose 0 copies an unknown dim (r4 -> r5); a Reshape to a
  // computed (non-constant) shape (r6).
  Model m = make_model(dims({Dim::sym("batch"), 3, 4}),
                       {node("r0", "Reshape", {"x", "s0"}, {"a"}),                      // [batch,12]
                        node("r1", "Reshape", {"a", "s1"}, {"b"}), node("n1", "Neg", {"a"}, {"c"}),
                        node("r2", "Reshape", {"x", "s0"}, {"o1"}), node("r3", "Reshape", {"o1", "s1"}, {"o2"}),
                        node("t1", "Transpose", {"x"}, {"t"}, {{"perm", ints({0, 2, 1})}}),
                        node("t2", "Transpose", {"t"}, {"u"}, {{"perm", ints({1, 0, 2})}}),
                        node("n2", "Neg", {"t"}, {"v"}),
                        node("t3", "Transpose", {"x"}, {"w"}, {{"perm", ints({0, 2, 1})}}),
                        node("t4", "Transpose", {"w"}, {"z"}, {{"perm", ints({0, 2, 1})}}),
                        node("r4", "Reshape", {"x", "s0"}, {"p"}), node("r5", "Reshape", {"p", "s4"}, {"q"}),
                        node("sh", "Shape", {"x"}, {"shp"}), node("r6", "Reshape", {"x", "shp"}, {"k"})},
                       {"b", "c", "o1", "o2", "u", "v", "z", "q", "k"});
  add_ints(m, "s0", {0, 12});
  add_ints(m, "s1", {-1, 2, 6});
  add_ints(m, "s4", {0, 0, 1});  // the second 0 reads the known dim 12, the first reads batch
  std::string golden = summary(m);
  EXPECT_EQ(run_pass(make_remove_noop_reshapes(), m), 0);
  EXPECT_EQ(summary(m), golden);
}

// ---------------------------------------------------------------- constant-folding

TEST(ConstantFolding, FoldsConstantChainsAndConstantNodes) {
  Model m = make_model(dims({2, 3}),
                       {node("c", "Constant", {}, {"k"},
                             {{"value", Attribute::of_tensor(Tensor::from_vector<float>({3}, {1, 2, 3}))}}),
                        node("a1", "Add", {"w", "k"}, {"s"}), node("m1", "Mul", {"s", "w"}, {"p"}),
                        node("t", "Transpose", {"p"}, {"pt"}, {{"perm", ints({1, 0})}}),
                        node("t2", "Transpose", {"pt"}, {"pp"}, {{"perm", ints({1, 0})}}),
                        node("a2", "Add", {"x", "pp"}, {"y"})},
                       {"y"});
  m.graph.initializers["w"] = Tensor::from_vector<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  Model before = m;
  EXPECT_EQ(run_pass(make_constant_folding(), m), 5);
  EXPECT_EQ(summary(m), "Add(x,pp)->y; out: y");
  EXPECT_EQ(m.graph.initializers.at("pp").to_double_vector(), (std::vector<double>{2, 8, 18, 20, 35, 54}));
  EXPECT_EQ(m.graph.types.at("pp").to_string(), TensorType({DType::kF32, dims({2, 3})}).to_string());
  expect_equivalent(before, m, {2, 3});
}

TEST(ConstantFolding, FoldsShapeOpsOfConstantsAndKeepsGraphOutputNames) {
  // ConstantOfShape of a constant shape, and a constant subgraph producing a graph output.
  Model m = make_model(dims({2, 3}),
                       {node("cs", "ConstantOfShape", {"shape"}, {"z"},
                             {{"value", Attribute::of_tensor(Tensor::from_vector<float>({1}, {0.5f}))}}),
                        node("a", "Add", {"x", "z"}, {"y"}), node("n", "Neg", {"w"}, {"const_out"})},
                       {"y", "const_out"});
  add_ints(m, "shape", {2, 3});
  m.graph.initializers["w"] = Tensor::from_vector<float>({2}, {1, -2});
  Model before = m;
  EXPECT_EQ(run_pass(make_constant_folding(), m), 2);
  EXPECT_EQ(summary(m), "Add(x,z)->y; out: y const_out");
  EXPECT_EQ(m.graph.initializers.at("const_out").to_double_vector(), (std::vector<double>{-1, 2}));
  expect_equivalent(before, m, {2, 3});
}

TEST(ConstantFolding, MustNotChange) {
  // Random ops (even with constant inputs); a node with a non-constant input; the Q/DQ pair;
  // an Expand of a small constant into 128 MiB; dead constant nodes.
  Model m = make_model(dims({2, 3}),
                       {node("rn", "RandomNormal", {}, {"r"}, {{"shape", ints({2, 3})}}),
                        node("ru", "RandomUniformLike", {"w"}, {"ru_out"}),
                        node("a", "Add", {"x", "r"}, {"y"}), node("b", "Add", {"y", "ru_out"}, {"y2"}),
                        node("dq", "DequantizeLinear", {"q", "scale"}, {"dq_out"}),
                        node("e", "Expand", {"one", "big"}, {"huge"}), node("rm", "ReduceMax", {"huge"}, {"hm"}),
                        node("dead", "Neg", {"w"}, {"unused"})},
                       {"y2", "dq_out", "hm"});
  m.graph.initializers["w"] = Tensor::from_vector<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  m.graph.initializers["q"] = Tensor::from_vector<int8_t>({4}, {1, 2, 3, 4});
  m.graph.initializers["scale"] = Tensor::scalar<float>(0.5f);
  m.graph.initializers["one"] = Tensor::from_vector<float>({1}, {1});
  add_ints(m, "big", {8192, 4096});
  std::string golden = summary(m);
  EXPECT_EQ(run_pass(make_constant_folding(), m), 0);
  EXPECT_EQ(summary(m), golden);

  // Without an evaluator the pass does nothing.
  Model c = make_model(dims({2, 3}), {node("n", "Neg", {"w"}, {"k"}), node("a", "Add", {"x", "k"}, {"y"})}, {"y"});
  c.graph.initializers["w"] = Tensor::from_vector<float>({2, 3}, {1, 2, 3, 4, 5, 6});
  std::string golden_c = summary(c);
  EXPECT_EQ(run_pass(make_constant_folding(), c, {.evaluator = false}), 0);
  EXPECT_EQ(summary(c), golden_c);
}

TEST(ConstantFolding, KeepsSameSizedFoldsOfLargeConstants) {
  // A Transpose of a constant larger than the limit does not grow the model: it is folded.
  Model m = make_model(dims({2, 3}), {node("t", "Transpose", {"w"}, {"wt"}), node("s", "Shape", {"wt"}, {"y"})},
                       {"y"});
  m.graph.initializers["w"] = Tensor(DType::kF32, {4, 4096, 1025});  // 64 MiB + 64 KiB
  EXPECT_EQ(run_pass(make_constant_folding(), m), 2);
  EXPECT_EQ(summary(m), "out: y");
  EXPECT_EQ(ints_of(m, "y"), (std::vector<int64_t>{1025, 4096, 4}));
}

// ---------------------------------------------------------------- shape-subgraph-folding

namespace {

// The BERT attention reshape: x [batch,seq,768] -> Reshape(x, [batch, seq, 12, 64]) with the
// batch and seq dims read from Shape(x).
Model bert_chain() {
  Model m = make_model(dims({Dim::sym("batch"), Dim::sym("seq"), 768}),
                       {node("sh", "Shape", {"x"}, {"s"}), node("g0", "Gather", {"s", "i0"}, {"b"}),
                        node("g1", "Gather", {"s", "i1"}, {"q"}), node("u0", "Unsqueeze", {"b", "ax"}, {"b1"}),
                        node("u1", "Unsqueeze", {"q", "ax"}, {"q1"}),
                        node("cc", "Concat", {"b1", "q1", "heads"}, {"shape"}, {{"axis", Attribute::of_int(0)}}),
                        node("rs", "Reshape", {"x", "shape"}, {"y"})},
                       {"y"});
  add_ints(m, "i0", {0}, true);
  add_ints(m, "i1", {1}, true);
  add_ints(m, "ax", {0});
  add_ints(m, "heads", {12, 64});
  return m;
}

}  // namespace

TEST(ShapeSubgraphFolding, BertChainWithProfileShapes) {
  Model m = bert_chain();
  Model before = m;
  // 6 folded nodes, plus the symbolic refinement of y's type that precedes the profile phase.
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), m, {.input_shapes = {{"x", {2, 16, 768}}}}), 7);
  EXPECT_EQ(summary(m), "Reshape(x,shape)->y; out: y");
  ASSERT_TRUE(m.graph.is_initializer("shape"));
  EXPECT_EQ(ints_of(m, "shape"), (std::vector<int64_t>{2, 16, 12, 64}));
  // The model is specialized to the profile: its input is now declared static, and so is y.
  EXPECT_EQ(shape_to_string(*m.graph.types.at("x").shape), "[2,16,768]");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("y").shape), "[2,16,12,64]");
  expect_equivalent(before, m, {2, 16, 768});
}

TEST(ShapeSubgraphFolding, BertChainWithoutProfileOnlyRefinesTypes) {
  // Nothing folds (batch and seq are dynamic), but the Reshape's type becomes
  // [batch,seq,12,64] instead of inference's [?,?,?,?]: the one rewrite.
  Model m = bert_chain();
  infer_types(m);
  EXPECT_EQ(shape_to_string(*m.graph.types.at("y").shape), "[?,?,?,?]");
  std::string golden = summary(m);
  Model before = m;
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), m), 1);
  EXPECT_EQ(summary(m), golden);
  EXPECT_EQ(shape_to_string(*m.graph.types.at("x").shape), "[batch,seq,768]");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("y").shape), "[batch,seq,12,64]");
  expect_equivalent(before, m, {2, 3, 768});

  // Refined types propagate to the next shape chain: Reshape(y, [seq, batch, -1]) with y typed
  // [batch,seq,12,64] resolves the -1 to 768 by cancelling the symbols.
  Model m2 = bert_chain();
  m2.graph.nodes.push_back(node("sh2", "Shape", {"y"}, {"s2"}));
  m2.graph.nodes.push_back(node("g2", "Gather", {"s2", "i1"}, {"q2"}));
  m2.graph.nodes.push_back(node("u2", "Unsqueeze", {"q2", "ax"}, {"q21"}));
  m2.graph.nodes.push_back(node("g3", "Gather", {"s2", "i0"}, {"b2"}));
  m2.graph.nodes.push_back(node("u3", "Unsqueeze", {"b2", "ax"}, {"b21"}));
  m2.graph.nodes.push_back(
      node("cc2", "Concat", {"q21", "b21", "neg1"}, {"shape2"}, {{"axis", Attribute::of_int(0)}}));
  m2.graph.nodes.push_back(node("rs2", "Reshape", {"y", "shape2"}, {"z"}));
  m2.graph.outputs = {"z"};
  add_ints(m2, "neg1", {-1});
  Model m2_before = m2;
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), m2), 2);
  EXPECT_EQ(shape_to_string(*m2.graph.types.at("z").shape), "[seq,batch,768]");
  expect_equivalent(m2_before, m2, {2, 3, 768});
}

TEST(ShapeSubgraphFolding, FoldsStaticElementsOfSymbolicShapes) {
  // Reshape(x, [batch, seq, 12, 768/12]) where the last entry is computed from dim 2: that part
  // folds without a profile, the batch/seq part stays.
  Model m = bert_chain();
  m.graph.nodes.insert(m.graph.nodes.begin() + 5,
                       {node("g2", "Gather", {"s", "i2"}, {"c"}), node("dv", "Div", {"c", "twelve"}, {"hd"}),
                        node("u2", "Unsqueeze", {"hd", "ax"}, {"hd1"})});
  m.graph.nodes[8].inputs = {"b1", "q1", "twelve1", "hd1"};
  add_ints(m, "i2", {2}, true);
  add_ints(m, "twelve", {12}, true);
  add_ints(m, "twelve1", {12});
  Model before = m;
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), m), 4);  // 3 folds, y's type refined
  EXPECT_EQ(summary(m),
            "Shape(x)->s; Gather(s,i0)->b; Gather(s,i1)->q; Unsqueeze(b,ax)->b1; Unsqueeze(q,ax)->q1; "
            "Concat(b1,q1,twelve1,hd1)->shape; Reshape(x,shape)->y; out: y");
  EXPECT_EQ(ints_of(m, "hd1"), (std::vector<int64_t>{64}));
  EXPECT_EQ(m.graph.initializers.count("c"), 0u);  // intermediate constants are not kept
  EXPECT_EQ(shape_to_string(*m.graph.types.at("x").shape), "[batch,seq,768]");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("y").shape), "[batch,seq,12,64]");
  expect_equivalent(before, m, {3, 5, 768});

  // Shape with start (opset 15+) and Slice of a partially known shape: only the static range.
  Model s = make_model(dims({Dim::sym("batch"), 4, 6}),
                       {node("sh", "Shape", {"x"}, {"s"}, {{"start", Attribute::of_int(1)}}),
                        node("sh2", "Shape", {"x"}, {"s2"}), node("sl", "Slice", {"s2", "st", "en"}, {"tail"}),
                        node("ml", "Mul", {"s", "tail"}, {"sq"}), node("sz", "Size", {"sq"}, {"n"}),
                        node("u", "Unsqueeze", {"n", "ax"}, {"n1"}), node("cc", "Concat", {"neg1", "n1"}, {"shape"},
                                                                           {{"axis", Attribute::of_int(0)}}),
                        node("rs", "Reshape", {"x", "shape"}, {"y"})},
                       {"y"});
  add_ints(s, "st", {-2});
  add_ints(s, "en", {100});
  add_ints(s, "ax", {0});
  add_ints(s, "neg1", {-1});
  Model s_before = s;
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), s), 7);  // 6 folds, y's type refined to [?,2]
  EXPECT_EQ(summary(s), "Reshape(x,shape)->y; out: y");
  EXPECT_EQ(ints_of(s, "shape"), (std::vector<int64_t>{-1, 2}));
  expect_equivalent(s_before, s, {3, 4, 6});
}

TEST(ShapeSubgraphFolding, RefinesTypesOfRangeExpandAndConstantOfShape) {
  // GPT-style positions and masks built from dynamic dims: nothing folds, but every type
  // downstream gets its symbolic dims instead of unknowns.
  Model m = make_model(dims({Dim::sym("batch"), Dim::sym("seq"), 8}),
                       {node("sh", "Shape", {"x"}, {"s"}), node("g1", "Gather", {"s", "i1"}, {"q"}),
                        node("g0", "Gather", {"s", "i0"}, {"b"}), node("rg", "Range", {"zero", "q", "one"}, {"pos"}),
                        node("u", "Unsqueeze", {"pos", "ax"}, {"pos2"}), node("emb", "Gather", {"table", "pos2"}, {"pe"}),
                        node("add", "Add", {"x", "pe"}, {"y"}), node("uq", "Unsqueeze", {"q", "ax"}, {"q1"}),
                        node("ub", "Unsqueeze", {"b", "ax"}, {"b1"}),
                        node("cc", "Concat", {"q1", "q1"}, {"mshape"}, {{"axis", Attribute::of_int(0)}}),
                        node("cos", "ConstantOfShape", {"mshape"}, {"mask"}),
                        node("cc2", "Concat", {"b1", "q1", "one1"}, {"eshape"}, {{"axis", Attribute::of_int(0)}}),
                        node("ex", "Expand", {"bias", "eshape"}, {"z"})},
                       {"y", "mask", "z"});
  add_ints(m, "i0", {0}, true);
  add_ints(m, "i1", {1}, true);
  add_ints(m, "zero", {0}, true);
  add_ints(m, "one", {1}, true);
  add_ints(m, "one1", {1});
  add_ints(m, "ax", {0});
  std::vector<float> table(16 * 8), bias(8);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<float>(i) * 0.25f;
  for (size_t i = 0; i < bias.size(); ++i) bias[i] = static_cast<float>(i) - 3.5f;
  m.graph.initializers["table"] = Tensor::from_vector<float>({16, 8}, table);
  m.graph.initializers["bias"] = Tensor::from_vector<float>({1, 1, 8}, bias);
  infer_types(m);
  EXPECT_EQ(shape_to_string(*m.graph.types.at("y").shape), "[batch,?,8]");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("mask").shape), "[?,?]");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("z").shape), "[?,?,?]");
  std::string golden = summary(m);
  Model before = m;
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), m), 3);  // pos, mask and z refined
  EXPECT_EQ(summary(m), golden);
  EXPECT_EQ(shape_to_string(*m.graph.types.at("pos").shape), "[seq]");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("y").shape), "[batch,seq,8]");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("mask").shape), "[seq,seq]");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("z").shape), "[batch,seq,8]");
  expect_equivalent(before, m, {2, 5, 8});
}

TEST(ShapeSubgraphFolding, FoldsThroughFloatArithmeticWithConstantFolding) {
  // Resize-style size computation: floor(float(H) * 0.5) cast back to int. The float part is
  // left to the constant-folding logic, after which the Concat completes in a second round.
  Model m = make_model(dims({Dim::sym("batch"), 8}),
                       {node("sh", "Shape", {"x"}, {"s"}), node("g0", "Gather", {"s", "i0"}, {"b"}),
                        node("g1", "Gather", {"s", "i1"}, {"h"}),
                        node("cf", "Cast", {"h"}, {"hf"}, {{"to", Attribute::of_int(1)}}),
                        node("ml", "Mul", {"hf", "half"}, {"hh"}), node("fl", "Floor", {"hh"}, {"hfl"}),
                        node("ci", "Cast", {"hfl"}, {"hi"}, {{"to", Attribute::of_int(7)}}),
                        node("u0", "Unsqueeze", {"b", "ax"}, {"b1"}), node("u1", "Unsqueeze", {"hi", "ax"}, {"h1"}),
                        node("cc", "Concat", {"b1", "h1", "two"}, {"shape"}, {{"axis", Attribute::of_int(0)}}),
                        node("rs", "Reshape", {"x", "shape"}, {"y"})},
                       {"y"});
  add_ints(m, "i0", {0}, true);
  add_ints(m, "i1", {1}, true);
  add_ints(m, "ax", {0});
  add_ints(m, "two", {2});
  m.graph.initializers["half"] = Tensor::scalar<float>(0.5f);
  Model before = m;
  Model p = m;
  // No profile: the dim-1 part folds (Gather, then the float chain by constant folding).
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), m), 7);  // 1 + 5 folded by constant folding, y refined
  EXPECT_EQ(summary(m),
            "Shape(x)->s; Gather(s,i0)->b; Unsqueeze(b,ax)->b1; Concat(b1,h1,two)->shape; Reshape(x,shape)->y; out: y");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("y").shape), "[batch,4,2]");
  expect_equivalent(before, m, {3, 8});
  // With a profile everything folds: the same 7, then Shape, Gather, Unsqueeze and Concat.
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), p, {.input_shapes = {{"x", {3, 8}}}}), 11);
  EXPECT_EQ(summary(p), "Reshape(x,shape)->y; out: y");
  EXPECT_EQ(ints_of(p, "shape"), (std::vector<int64_t>{3, 4, 2}));
  expect_equivalent(before, p, {3, 8});
}

TEST(ShapeSubgraphFolding, ProfileShapesOnlySpecializeWhenUsed) {
  // Only the static dim is read: the fold does not depend on the profile (the Shape node itself,
  // which the profile would resolve, becomes dead), so the input stays dynamic even though
  // input_shapes is given.
  Model m = make_model(dims({Dim::sym("batch"), 8}),
                       {node("sh", "Shape", {"x"}, {"s"}), node("g", "Gather", {"s", "i1"}, {"c"}),
                        node("u", "Unsqueeze", {"c", "ax"}, {"c1"}),
                        node("cc", "Concat", {"neg1", "c1"}, {"shape"}, {{"axis", Attribute::of_int(0)}}),
                        node("rs", "Reshape", {"x", "shape"}, {"y"})},
                       {"y"});
  add_ints(m, "i1", {1}, true);
  add_ints(m, "ax", {0});
  add_ints(m, "neg1", {-1});
  Model before = m;
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), m, {.input_shapes = {{"x", {4, 8}}}}), 4);  // 3 folds, y refined
  EXPECT_EQ(summary(m), "Reshape(x,shape)->y; out: y");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("x").shape), "[batch,8]");
  EXPECT_EQ(shape_to_string(*m.graph.types.at("y").shape), "[batch,8]");
  expect_equivalent(before, m, {5, 8});
}

TEST(ShapeSubgraphFolding, MustNotChangeAndRejectsBadProfiles) {
  // A Gather whose index is itself dynamic; a Gather of the dynamic dim feeding a Range whose
  // length is not a dim (step 2), so neither folds nor refines anything. Then profiles that
  // name an unknown input, or contradict the rank or a static dim.
  Model m = make_model(dims({Dim::sym("batch"), 8}),
                       {node("sh", "Shape", {"x"}, {"s"}), node("g", "Gather", {"s", "s"}, {"gs"}),
                        node("r", "Range", {"zero", "b", "two"}, {"rg"}), node("g0", "Gather", {"s", "i0"}, {"b"})},
                       {"gs", "rg"});
  std::swap(m.graph.nodes[2], m.graph.nodes[3]);
  add_ints(m, "i0", {0}, true);
  add_ints(m, "zero", {0}, true);
  add_ints(m, "two", {2}, true);
  std::string golden = summary(m);
  EXPECT_EQ(run_pass(make_shape_subgraph_folding(), m), 0);
  EXPECT_EQ(summary(m), golden);

  Model bad = bert_chain();
  EXPECT_THROW(run_pass(make_shape_subgraph_folding(), bad, {.input_shapes = {{"nope", {2, 16, 768}}}}), Error);
  Model bad2 = bert_chain();
  EXPECT_THROW(run_pass(make_shape_subgraph_folding(), bad2, {.input_shapes = {{"x", {2, 16}}}}), Error);
  Model bad3 = bert_chain();
  EXPECT_THROW(run_pass(make_shape_subgraph_folding(), bad3, {.input_shapes = {{"x", {2, 16, 512}}}}), Error);
}

// ---------------------------------------------------------------- real models

namespace {

std::map<std::string, int> op_histogram(const Model& m) {
  std::map<std::string, int> h;
  for (const Node& n : m.graph.nodes) ++h[n.op_type];
  return h;
}

}  // namespace

class FoldingRealModel : public ::testing::TestWithParam<std::string> {};

TEST_P(FoldingRealModel, FoldsShapeSubgraphsAndKeepsOutputs) {
  const std::string name = GetParam();
  const fs::path dir = kiln_test::model_dir();
  const fs::path model_path = dir / (name + ".onnx"), io_path = dir / (name + ".io.npz");
  if (!fs::exists(model_path) || !fs::exists(io_path)) GTEST_SKIP() << model_path << " not exported";

  Model model = load_onnx(model_path);
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(model, infer);
  reference::TensorMap inputs;
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  ctx.evaluator = reference::constant_evaluator();
  for (auto& [key, t] : read_npz(io_path))
    if (std::find(model.graph.inputs.begin(), model.graph.inputs.end(), key) != model.graph.inputs.end()) {
      ctx.input_shapes[key] = t.shape();
      inputs[key] = t;
    }
  ASSERT_EQ(inputs.size(), model.graph.inputs.size());

  PassManager pm;
  pm.add(make_remove_noop_reshapes());
  pm.add(make_constant_folding());
  pm.add(make_shape_subgraph_folding());
  pm.add(make_dead_node_elimination());

  // Symbolic run (no profile): what folds for any input shape.
  Model symbolic = model;
  PassContext sym_ctx = ctx;
  sym_ctx.input_shapes.clear();
  pm.run(symbolic, sym_ctx);
  // Profile run: specialized to the saved inputs' shapes.
  Model optimized = model;
  pm.run(optimized, ctx);

  const std::vector<std::string> shape_ops = {"Shape",  "Size",   "Gather",          "Unsqueeze", "Squeeze", "Concat",
                                              "Slice",  "Cast",   "ConstantOfShape", "Range",     "Expand",  "Equal",
                                              "Where",  "Reshape", "Transpose",      "Constant",  "Identity"};
  auto before = op_histogram(model), sym = op_histogram(symbolic), after = op_histogram(optimized);
  std::cout << name << ": nodes " << model.graph.nodes.size() << " -> " << symbolic.graph.nodes.size()
            << " (symbolic) -> " << optimized.graph.nodes.size() << " (profile)\n  log (profile):";
  for (const auto& l : ctx.log) std::cout << " [" << l << "]";
  std::cout << "\n  log (symbolic):";
  for (const auto& l : sym_ctx.log) std::cout << " [" << l << "]";
  std::cout << "\n  op: before/symbolic/profile:";
  for (const auto& op : shape_ops)
    if (before[op] || sym[op] || after[op])
      std::cout << " " << op << " " << before[op] << "/" << sym[op] << "/" << after[op];
  std::cout << "\n";
  // With the profile every Shape/Size is resolved.
  EXPECT_EQ(after["Shape"], 0);
  EXPECT_EQ(after["Size"], 0);

  auto ref = reference::Executor(model).run(inputs);
  for (const Model* m : {&symbolic, &optimized}) {
    auto got = reference::Executor(*m).run(inputs);
    for (const auto& out : model.graph.outputs) {
      ASSERT_TRUE(got.count(out)) << out;
      ASSERT_EQ(got.at(out).shape(), ref.at(out).shape()) << out;
      auto a = got.at(out).to_double_vector(), b = ref.at(out).to_double_vector();
      double max_diff = 0, max_ref = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        max_diff = std::max(max_diff, std::fabs(a[i] - b[i]));
        max_ref = std::max(max_ref, std::fabs(b[i]));
      }
      const double rel = max_diff / std::max(max_ref, 1e-30);
      std::cout << "  " << (m == &symbolic ? "symbolic" : "profile") << " output " << out << ": normalized error "
                << rel << "\n";
      EXPECT_LE(rel, 1e-4) << out;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Exported, FoldingRealModel,
                         ::testing::Values("bert", "gpt", "vit_b16_2layer", "yolov8_tiny", "shufflenet_v2_x0_5",
                                           "efficientnet_b0"),
                         [](const auto& info) { return info.param; });
