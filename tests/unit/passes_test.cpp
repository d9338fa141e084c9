// Pass manager and the first passes: before/after golden graphs (including must-not-change
// cases) and numeric equivalence with the reference executor on random inputs.
#include <gtest/gtest.h>

#include <random>

#include "backends/reference/executor.h"
#include "passes/pass.h"

using namespace kiln;

namespace {

Model make_model(std::vector<Node> nodes, std::vector<std::string> outputs) {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
  m.graph.outputs = std::move(outputs);
  m.graph.nodes = std::move(nodes);
  return m;
}

Node node(std::string name, std::string op, std::vector<std::string> in, std::vector<std::string> out,
          std::map<std::string, Attribute> attrs = {}) {
  return Node{std::move(name), std::move(op), "", std::move(in), std::move(out), std::move(attrs)};
}

// "Relu(x)->a; Identity(a)->y" style one-line summary of the graph's nodes and outputs.
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

int run_pass(std::unique_ptr<Pass> pass, Model& m) {
  infer_types(m);  // passes run on typed models
  PassManager pm;
  pm.add(std::move(pass));
  PassContext ctx;
  ctx.verify_after_each_pass = true;
  return pm.run(m, ctx);
}

// Runs `before` and `after` on the same random input and expects identical outputs.
void expect_equivalent(const Model& before, const Model& after) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-2, 2);
  std::vector<float> xs(6);
  for (auto& v : xs) v = dist(rng);
  reference::TensorMap in{{"x", Tensor::from_vector<float>({2, 3}, xs)}};
  auto a = reference::Executor(before).run(in);
  auto b = reference::Executor(after).run(in);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_EQ(t.to_double_vector(), b.at(name).to_double_vector()) << name;
  }
}

}  // namespace

TEST(DeadNodeElimination, RemovesUnusedNodesAndInitializers) {
  Model m = make_model({node("a", "Relu", {"x"}, {"a"}), node("dead", "Neg", {"x"}, {"d"}),
                        node("dead2", "Abs", {"d"}, {"d2"})},
                       {"a"});
  m.graph.initializers["unused"] = Tensor::from_vector<float>({1}, {1});
  Model before = m;
  EXPECT_EQ(run_pass(make_dead_node_elimination(), m), 3);
  EXPECT_EQ(summary(m), "Relu(x)->a; out: a");
  EXPECT_EQ(m.graph.initializers.count("unused"), 0u);
  expect_equivalent(before, m);
}

TEST(DeadNodeElimination, KeepsEverythingLive) {
  Model m = make_model({node("a", "Relu", {"x"}, {"a"}), node("b", "Neg", {"a"}, {"b"})}, {"a", "b"});
  std::string golden = summary(m);
  EXPECT_EQ(run_pass(make_dead_node_elimination(), m), 0);
  EXPECT_EQ(summary(m), golden);
}

TEST(RemoveIdentityOps, RemovesIdentityDropoutAndSameTypeCast) {
  Model m = make_model({node("a", "Relu", {"x"}, {"a"}), node("i", "Identity", {"a"}, {"b"}),
                        node("d", "Dropout", {"b"}, {"c"}),
                        node("c", "Cast", {"c"}, {"e"}, {{"to", Attribute::of_int(1)}}),
                        node("n", "Neg", {"e"}, {"y"})},
                       {"y"});
  m.graph.types["c"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
  Model before = m;
  EXPECT_EQ(run_pass(make_remove_identity_ops(), m), 3);
  EXPECT_EQ(summary(m), "Relu(x)->a; Neg(a)->y; out: y");
  expect_equivalent(before, m);
}

TEST(RemoveIdentityOps, KeepsGraphOutputNamesAndRealCasts) {
  // Identity producing a graph output: the producer is renamed, the output name survives.
  Model m = make_model({node("a", "Relu", {"x"}, {"a"}), node("i", "Identity", {"a"}, {"y"})}, {"y"});
  Model before = m;
  EXPECT_EQ(run_pass(make_remove_identity_ops(), m), 1);
  EXPECT_EQ(summary(m), "Relu(x)->y; out: y");
  expect_equivalent(before, m);

  // Must not change: Identity of a graph input straight to a graph output, a Cast that
  // changes dtype, and a Dropout whose mask is used.
  Model keep = make_model({node("i", "Identity", {"x"}, {"y"}),
                           node("c", "Cast", {"x"}, {"z"}, {{"to", Attribute::of_int(7)}}),
                           node("d", "Dropout", {"x"}, {"w", "mask"})},
                          {"y", "z", "mask"});
  std::string golden = summary(keep);
  EXPECT_EQ(run_pass(make_remove_identity_ops(), keep), 0);
  EXPECT_EQ(summary(keep), golden);
}

TEST(PassManager, OptLevelsAndDisabledPasses) {
  Model m = make_model({node("a", "Relu", {"x"}, {"a"}), node("i", "Identity", {"a"}, {"b"}),
                        node("dead", "Neg", {"x"}, {"d"}), node("n", "Neg", {"b"}, {"y"})},
                       {"y"});
  PassManager pm = PassManager::standard();
  PassContext ctx;
  ctx.opt_level = 0;  // only level-0 passes (dead-node elimination)
  Model m0 = m;
  EXPECT_EQ(pm.run(m0, ctx), 1);
  EXPECT_EQ(summary(m0), "Relu(x)->a; Identity(a)->b; Neg(b)->y; out: y");

  PassContext off;
  off.disabled = {"dead-node-elimination"};
  Model m1 = m;
  EXPECT_EQ(pm.run(m1, off), 1);
  EXPECT_EQ(summary(m1), "Relu(x)->a; Neg(x)->d; Neg(a)->y; out: y");

  PassContext bad;
  bad.disabled = {"no-such-pass"};
  Model m2 = m;
  try {
    pm.run(m2, bad);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown pass 'no-such-pass'"), std::string::npos);
  }
}
