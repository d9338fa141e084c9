// `kiln debug reduce` end to end (a planted unsupported node, a planted mis-computing kernel checked
// against ONNX Runtime, linear mode on parallel branches, dynamic shapes, artifacts, timeouts and
// the errors), and the subgraph cutting it builds on (src/onnx/subgraph.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "onnx/subgraph.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace kiln;
using kiln_test::CliResult;
using kiln_test::run_kiln_cli;
using kiln_test::seeded;

namespace {

const std::string kKiln = KILN_CLI_PATH;

// Builds a model node by node; unlike kiln_test::ModelBuilder, graph outputs are named explicitly.
struct Net {
  Model m;
  explicit Net(int64_t opset = 17) { m.opsets[""] = opset; }
  Net& input(const std::string& name, Shape shape, DType dt = DType::kF32) {
    m.graph.inputs.push_back(name);
    m.graph.types[name] = TensorType{dt, std::move(shape)};
    return *this;
  }
  Net& init(const std::string& name, Tensor t) {
    m.graph.initializers[name] = std::move(t);
    return *this;
  }
  Net& node(const std::string& name, const std::string& op, std::vector<std::string> in, std::vector<std::string> out,
            const std::string& domain = "") {
    if (!domain.empty()) m.opsets[domain] = 1;
    m.graph.nodes.push_back(Node{name, op, domain, std::move(in), std::move(out), {}});
    return *this;
  }
  Net& outputs(std::vector<std::string> names) {
    m.graph.outputs = std::move(names);
    return *this;
  }
};

// 18 nodes on two branches that meet, split and meet again, with two graph outputs; the one
// node Kiln cannot run, com.example::Mystery, reads one tensor of each branch.
Model branchy_model(Shape x_shape) {
  Net n;
  n.input("x", std::move(x_shape)).init("w1", seeded({8}, 1)).init("w2", seeded({8}, 2));
  n.node("add1", "Add", {"x", "w1"}, {"a1"})
      .node("relu1", "Relu", {"a1"}, {"r1"})
      .node("mul1", "Mul", {"x", "w2"}, {"m1"})
      .node("sigmoid1", "Sigmoid", {"m1"}, {"s1"})
      .node("tanh1", "Tanh", {"r1"}, {"t1"})
      .node("add2", "Add", {"t1", "s1"}, {"a2"})
      .node("exp1", "Exp", {"s1"}, {"e1"})
      .node("neg1", "Neg", {"a2"}, {"n1"})
      .node("mystery", "Mystery", {"n1", "e1"}, {"q"}, "com.example")
      .node("relu2", "Relu", {"a2"}, {"r2"})
      .node("add3", "Add", {"r2", "e1"}, {"a3"})
      .node("abs1", "Abs", {"q"}, {"b1"})
      .node("mul2", "Mul", {"b1", "w1"}, {"m2"})
      .node("sigmoid2", "Sigmoid", {"a3"}, {"s2"})
      .node("add4", "Add", {"m2", "s2"}, {"c"})
      .node("relu3", "Relu", {"c"}, {"y1"})
      .node("tanh2", "Tanh", {"a3"}, {"t2"})
      .node("mul3", "Mul", {"t2", "s2"}, {"y2"})
      .outputs({"y1", "y2"});
  return n.m;
}

// Three Mystery nodes on three parallel branches, interleaved in topological order.
Model three_branch_model() {
  Net n;
  n.input("x", {Dim(4)});
  n.node("relu1", "Relu", {"x"}, {"r1"})
      .node("m1", "Mystery", {"r1"}, {"q1"}, "com.example")
      .node("neg2", "Neg", {"x"}, {"r2"})
      .node("abs3", "Abs", {"r2"}, {"r3"})
      .node("m2", "Mystery", {"r3"}, {"q2"}, "com.example")
      .node("exp4", "Exp", {"x"}, {"r4"})
      .node("m3", "Mystery", {"r4"}, {"q3"}, "com.example")
      .node("sum", "Sum", {"q1", "q2", "q3"}, {"y"})
      .outputs({"y"});
  return n.m;
}

// A small MLP-like float model with one Tanh in the middle: the op the faulty plugin replaces.
Model tanh_model() {
  Net n;
  n.input("x", {Dim(2), Dim(16)});
  n.init("W1", seeded({16, 16}, 11)).init("b1", seeded({16}, 12)).init("W2", seeded({16, 16}, 13, 1.0f));
  n.init("W3", seeded({16, 4}, 14));
  n.node("mm1", "MatMul", {"x", "W1"}, {"h1"})
      .node("add1", "Add", {"h1", "b1"}, {"h2"})
      .node("relu1", "Relu", {"h2"}, {"h3"})
      .node("sig1", "Sigmoid", {"h2"}, {"g1"})
      .node("mul1", "Mul", {"h3", "g1"}, {"h4"})
      .node("mm2", "MatMul", {"h4", "W2"}, {"h5"})
      .node("tanh", "Tanh", {"h5"}, {"t"})
      .node("add2", "Add", {"t", "h4"}, {"h6"})
      .node("sig2", "Sigmoid", {"h6"}, {"h7"})
      .node("mul2", "Mul", {"h7", "h6"}, {"h8"})
      .node("mm3", "MatMul", {"h8", "W3"}, {"y"})
      .node("neg", "Neg", {"h4"}, {"z"})
      .outputs({"y", "z"});
  return n.m;
}

std::vector<std::string> ops_of(const Model& m) {
  std::vector<std::string> ops;
  for (const Node& n : m.graph.nodes) ops.push_back(n.domain.empty() ? n.op_type : n.domain + "::" + n.op_type);
  return ops;
}

class DebugReduceTest : public kiln_test::TempDirTest {
 protected:
  DebugReduceTest() : TempDirTest("kiln_reduce_test_") {}

  // The check that finds unsupported nodes: `kiln check` exits 1 when a node cannot be built.
  static std::string unsupported_check() { return "--check '" + kKiln + " check {model}'"; }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Subgraph cutting

TEST(Subgraph, MiddleNodesGetTypedInputsAndTheirInitializers) {
  Model m = branchy_model({Dim(2), Dim(8)});
  // tanh1 (reads r1) and add2 (reads t1, s1): r1 and s1 become inputs, a2 the output.
  PartialTypes types = infer_types_partial(m);
  Model sub = extract_subgraph(m, {4, 5}, types);
  EXPECT_EQ(sub.graph.inputs, (std::vector<std::string>{"r1", "s1"}));
  EXPECT_EQ(sub.graph.outputs, (std::vector<std::string>{"a2"}));
  ASSERT_EQ(sub.graph.nodes.size(), 2u);
  EXPECT_EQ(sub.graph.type_of("r1")->to_string(), "f32[2,8]");
  EXPECT_TRUE(sub.graph.initializers.empty());
  EXPECT_EQ(sub.opsets, m.opsets);

  // add1 and relu2, not connected: x, then the cut tensor a2, are inputs; the shared initializer w1
  // comes along; a1 (read by relu1) and r2 (read by add3) are outputs.
  Model two = extract_subgraph(m, {9, 0}, types);
  EXPECT_EQ(two.graph.inputs, (std::vector<std::string>{"x", "a2"}));
  EXPECT_EQ(two.graph.outputs, (std::vector<std::string>{"a1", "r2"}));
  EXPECT_EQ(two.graph.initializers.size(), 1u);
  EXPECT_EQ(two.graph.initializers.count("w1"), 1u);
  // Outputs carry the inferred dtype but no shape, so no other tool can contradict it.
  ASSERT_NE(two.graph.type_of("r2"), nullptr);
  EXPECT_EQ(two.graph.type_of("r2")->dtype, DType::kF32);
  EXPECT_FALSE(two.graph.type_of("r2")->shape.has_value());
  EXPECT_NO_THROW(verify_graph(two.graph));
}

TEST(Subgraph, UnknownTypeAfterAnUnsupportedNodeIsRefused) {
  Model m = branchy_model({Dim(2), Dim(8)});
  PartialTypes types = infer_types_partial(m);
  // mystery (index 8) is skipped, and so is everything downstream of its output q.
  std::set<size_t> skipped;
  for (const auto& s : types.skipped) skipped.insert(s.node);
  EXPECT_EQ(skipped, (std::set<size_t>{8, 11, 12, 14, 15}));
  EXPECT_NE(types.skipped.front().reason.find("unknown op"), std::string::npos) << types.skipped.front().reason;
  EXPECT_EQ(types.types.count("q"), 0u);
  EXPECT_EQ(types.types.at("y2").to_string(), "f32[2,8]");
  try {
    extract_subgraph(m, {12}, types);  // mul2 reads b1 = Abs(q)
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("'b1'"), std::string::npos) << e.what();
  }
}

TEST(Subgraph, ShapeChainValuesBecomeInitializers) {
  // y = Reshape(Neg(r), Shape(r)) with r = Relu(x): cutting before Reshape keeps the shape constant.
  Net n;
  n.input("x", {Dim(2), Dim(3), Dim(4)});
  n.node("relu", "Relu", {"x"}, {"r"})
      .node("shape", "Shape", {"r"}, {"s"})
      .node("neg", "Neg", {"r"}, {"g"})
      .node("reshape", "Reshape", {"g", "s"}, {"y"})
      .outputs({"y"});
  InferOptions options;
  options.evaluator = reference::constant_evaluator();
  PartialTypes types = infer_types_partial(n.m, options);
  Model sub = extract_subgraph(n.m, {3}, types);
  EXPECT_EQ(sub.graph.inputs, (std::vector<std::string>{"g"}));
  ASSERT_EQ(sub.graph.initializers.count("s"), 1u);
  EXPECT_EQ(sub.graph.initializers.at("s").to_int64_vector(), (std::vector<int64_t>{2, 3, 4}));
}

TEST(Subgraph, ConstantNodesStayWithTheirUsers) {
  // w2 = Mul(w, w) depends on weights alone: keeping Add brings it along instead of making w2 an input.
  Net n;
  n.input("x", {Dim(3)}).init("w", Tensor::from_vector<float>({3}, {1, 2, 3}));
  n.node("square", "Mul", {"w", "w"}, {"w2"}).node("add", "Add", {"x", "w2"}, {"a"}).node("neg", "Neg", {"a"}, {"y"});
  n.outputs({"y"});
  std::vector<bool> constant = constant_nodes(n.m.graph);
  EXPECT_EQ(constant, (std::vector<bool>{true, false, false}));
  std::vector<size_t> keep = with_constant_producers(n.m.graph, {1}, constant);
  EXPECT_EQ(keep, (std::vector<size_t>{0, 1}));
  Model sub = extract_subgraph(n.m, keep, infer_types_partial(n.m));
  EXPECT_EQ(sub.graph.inputs, (std::vector<std::string>{"x"}));
  EXPECT_EQ(sub.graph.outputs, (std::vector<std::string>{"a"}));
  EXPECT_EQ(sub.graph.initializers.count("w"), 1u);
}

TEST(Subgraph, ConstantNodesLowerIntoInitializers) {
  Net n;
  n.input("x", {Dim(2)});
  n.m.graph.nodes.push_back(Node{"c", "Constant", "", {}, {"k"}, {{"value_floats", Attribute::of_floats({5, 7})}}});
  n.node("add", "Add", {"x", "k"}, {"y"}).outputs({"y"});
  EXPECT_EQ(lower_constant_nodes(n.m), 1u);
  ASSERT_EQ(n.m.graph.nodes.size(), 1u);
  auto v = n.m.graph.initializers.at("k").values<float>();
  EXPECT_EQ(std::vector<float>(v.begin(), v.end()), (std::vector<float>{5, 7}));
}

// ---------------------------------------------------------------------------------------------
// kiln debug reduce

TEST_F(DebugReduceTest, FindsThePlantedUnsupportedNode) {
  const std::string model = save(branchy_model({Dim(2), Dim(8)}), "branchy.onnx");
  const std::string out = (dir_ / "reduced.onnx").string();
  CliResult r = run_kiln_cli("debug reduce " + model + " " + unsupported_check() + " -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("18 nodes -> 1 node"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("mystery (com.example::Mystery)"), std::string::npos) << r.out;
  Model reduced = load_onnx(out);
  ASSERT_EQ(reduced.graph.nodes.size(), 1u) << r.out;
  EXPECT_EQ(reduced.graph.nodes[0].op_type, "Mystery");
  EXPECT_EQ(reduced.graph.nodes[0].domain, "com.example");
  // What feeds it became graph inputs of their static types; its output is the graph output.
  EXPECT_EQ(reduced.graph.inputs, (std::vector<std::string>{"n1", "e1"}));
  for (const char* in : {"n1", "e1"}) EXPECT_EQ(reduced.graph.type_of(in)->to_string(), "f32[2,8]");
  EXPECT_EQ(reduced.graph.outputs, (std::vector<std::string>{"q"}));
  EXPECT_EQ(reduced.opsets.at("com.example"), 1);
}

TEST_F(DebugReduceTest, LinearModeRemovesBoundaryNodesBisectionKeeps) {
  // The failure needs all three Mystery nodes (three unsupported nodes): bisection keeps the window
  // between the first and the last, linear mode then drops the Relu, Neg, Abs and Exp beside them.
  const std::string model = save(three_branch_model(), "three.onnx");
  const std::string check = "--check '" + kKiln + " inspect {model}' --fail-regex 'unsupported: [3-9]'";
  const std::string bisect_out = (dir_ / "bisect.onnx").string(), linear_out = (dir_ / "linear.onnx").string();
  CliResult b = run_kiln_cli("debug reduce " + model + " " + check + " -o " + bisect_out);
  ASSERT_EQ(b.code, 0) << b.out;
  CliResult l = run_kiln_cli("debug reduce " + model + " " + check + " --mode linear -o " + linear_out);
  ASSERT_EQ(l.code, 0) << l.out;

  Model bisected = load_onnx(bisect_out), linear = load_onnx(linear_out);
  const std::vector<std::string> bisected_ops = ops_of(bisected);
  EXPECT_GT(bisected_ops.size(), 3u) << b.out;
  EXPECT_EQ(std::count(bisected_ops.begin(), bisected_ops.end(), "com.example::Mystery"), 3) << b.out;
  EXPECT_NE(b.out.find("--mode linear may remove more nodes"), std::string::npos) << b.out;
  EXPECT_EQ(ops_of(linear), (std::vector<std::string>(3, "com.example::Mystery"))) << l.out;
  EXPECT_EQ(linear.graph.inputs, (std::vector<std::string>{"r1", "r3", "r4"})) << l.out;
  EXPECT_NE(l.out.find("8 nodes -> 3 nodes"), std::string::npos) << l.out;
}

TEST_F(DebugReduceTest, FindsTheMiscomputingKernelAgainstOnnxRuntime) {
  const std::string ort_check = std::string(KILN_SOURCE_DIR) + "/tests/data/reduce/ort_check.js";
  if (std::system(("node " + ort_check + " --probe >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "onnxruntime-node cannot be loaded (node, or bench/node_modules from scripts/setup-bench.sh, "
                    "missing): no independent oracle";
  const std::string model = save(tanh_model(), "mlp.onnx");
  // kiln builds an engine of each candidate (engines run the plugin's tactic), runs it with seeded
  // inputs and writes inputs and outputs next to the candidate; ort_check.js exits 3 on a mismatch,
  // so a candidate kiln cannot build or run (exit 1) does not count as the failure.
  auto check_with = [&](const std::string& plugin) {
    const std::string kiln = kKiln + plugin;
    return "--check '" + kiln + " build {model} -o {model}.engine >/dev/null && " + kiln +
           " run {model}.engine -o {model}.out --save-inputs >/dev/null && node " + ort_check +
           " {model} {model}.out' --fail-returncode 3";
  };
  // Control: without the plugin, kiln agrees with ONNX Runtime.
  CliResult clean = run_kiln_cli("debug reduce " + model + " " + check_with("") + " -o " + (dir_ / "c.onnx").string());
  EXPECT_EQ(clean.code, 1) << clean.out;
  EXPECT_NE(clean.out.find("the check passes on the original model: nothing to reduce"), std::string::npos)
      << clean.out;

  const std::string out = (dir_ / "reduced.onnx").string();
  CliResult r = run_kiln_cli("debug reduce " + model + " " +
                             check_with(std::string(" --plugin ") + KILN_FAULTY_PLUGIN) + " -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  Model reduced = load_onnx(out);
  const auto ops = ops_of(reduced);
  ASSERT_NE(std::find(ops.begin(), ops.end(), "Tanh"), ops.end()) << r.out;
  EXPECT_EQ(ops.size(), 1u) << r.out;  // the Tanh alone, its input h5 a graph input
  EXPECT_EQ(reduced.graph.inputs, (std::vector<std::string>{"h5"})) << r.out;
}

TEST_F(DebugReduceTest, FindsTheMiscomputingKernelWithKilnCompareOnnxrt) {
  // The same hunt with `kiln compare --onnxrt` as the check, where this Kiln has it.
  if (run_kiln_cli("compare --help").out.find("--onnxrt") == std::string::npos)
    GTEST_SKIP() << "kiln compare has no --onnxrt here";
  const std::string ort_check = std::string(KILN_SOURCE_DIR) + "/tests/data/reduce/ort_check.js";
  if (std::system(("node " + ort_check + " --probe >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "onnxruntime-node cannot be loaded: no independent oracle";
  const std::string model = save(tanh_model(), "mlp.onnx");
  const std::string kiln = kKiln + " --plugin " + KILN_FAULTY_PLUGIN;
  // compare exits 1 on a failed tolerance check and on errors alike: the regex tells them apart.
  const std::string check = "--check '" + kiln + " build {model} -o {model}.engine >/dev/null && " + kiln +
                            " compare {model}.engine -m {model} --onnxrt --atol 1e-4 --rtol 1e-3'" +
                            " --fail-regex \"FAILED: output\"";
  const std::string out = (dir_ / "reduced.onnx").string();
  CliResult r = run_kiln_cli("debug reduce " + model + " " + check + " -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(ops_of(load_onnx(out)), (std::vector<std::string>{"Tanh"})) << r.out;
}

TEST_F(DebugReduceTest, DynamicInputsNeedShapesToCutFromTheInputsSide) {
  const std::string model = save(branchy_model({Dim::sym("batch"), Dim(8)}), "dynamic.onnx");
  const std::string no_shapes = (dir_ / "a.onnx").string(), with_shapes = (dir_ / "b.onnx").string();
  CliResult a = run_kiln_cli("debug reduce " + model + " " + unsupported_check() + " -o " + no_shapes);
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(a.out.find("note: input 'x' has the dynamic shape [batch,8]"), std::string::npos) << a.out;
  EXPECT_NE(a.out.find("is not static"), std::string::npos) << a.out;  // the skipped candidates say why
  Model ra = load_onnx(no_shapes);
  EXPECT_GT(ra.graph.nodes.size(), 1u);
  EXPECT_EQ(ra.graph.inputs, (std::vector<std::string>{"x"}));  // could not cut x's dependents off

  CliResult b = run_kiln_cli("debug reduce " + model + " " + unsupported_check() + " --shapes x:2x8 -o " + with_shapes);
  ASSERT_EQ(b.code, 0) << b.out;
  Model rb = load_onnx(with_shapes);
  EXPECT_EQ(ops_of(rb), (std::vector<std::string>{"com.example::Mystery"})) << b.out;
  EXPECT_EQ(rb.graph.type_of("n1")->to_string(), "f32[2,8]");
}

TEST_F(DebugReduceTest, FixedModelPathAndArtifacts) {
  // No {model} in the check: each candidate is written to --artifacts/kiln_debug_reduce.onnx.
  const std::string model = save(three_branch_model(), "three.onnx");
  const fs::path art = dir_ / "art";
  const std::string fixed = (art / "kiln_debug_reduce.onnx").string();
  CliResult r = run_kiln_cli("debug reduce " + model + " --check '" + kKiln + " inspect " + fixed +
                             "' --fail-regex 'unsupported: [1-9]' --artifacts " + art.string() + " -o " +
                             (dir_ / "r.onnx").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(ops_of(load_onnx(dir_ / "r.onnx")), (std::vector<std::string>{"com.example::Mystery"})) << r.out;
  EXPECT_FALSE(fs::exists(fixed)) << "the fixed candidate path is removed at the end";
  int models = 0, logs = 0, failing = 0;
  for (const auto& e : fs::directory_iterator(art)) {
    const std::string name = e.path().filename().string();
    if (e.path().extension() == ".onnx") ++models;
    if (e.path().extension() == ".log") ++logs;
    if (name.find("-fail.onnx") != std::string::npos) ++failing;
  }
  EXPECT_GT(models, 2);
  EXPECT_EQ(models, logs);
  EXPECT_GE(failing, 2);  // at least the original and the result
  EXPECT_TRUE(fs::exists(art / "001-original-8n-fail.onnx")) << r.out;
}

TEST_F(DebugReduceTest, TimeoutCountsAsExitStatus124) {
  const std::string model = save(three_branch_model(), "three.onnx");
  // Every check hangs: each one is killed and fails (status 124 is not 0), down to one node.
  CliResult r =
      run_kiln_cli("debug reduce " + model + " --check 'sleep 30' --timeout 0.2 -o " + (dir_ / "r.onnx").string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("timed out after 0.2 s, counted as exit status 124"), std::string::npos) << r.out;
  EXPECT_EQ(load_onnx(dir_ / "r.onnx").graph.nodes.size(), 1u) << r.out;
  // When only status 3 counts, a timeout is a pass: the original then passes.
  CliResult p = run_kiln_cli("debug reduce " + model + " --check 'sleep 30' --timeout 0.2 --fail-returncode 3 -o " +
                             (dir_ / "p.onnx").string());
  EXPECT_EQ(p.code, 1) << p.out;
  EXPECT_NE(p.out.find("the check passes on the original model: nothing to reduce"), std::string::npos) << p.out;
}

TEST_F(DebugReduceTest, Errors) {
  const std::string model = save(three_branch_model(), "three.onnx");
  const std::string out = " -o " + (dir_ / "r.onnx").string();

  CliResult passes = run_kiln_cli("debug reduce " + model + " --check 'true'" + out);
  EXPECT_EQ(passes.code, 1) << passes.out;
  EXPECT_NE(
      passes.out.find("kiln: error (invalid argument): the check passes on the original model: nothing to reduce"),
      std::string::npos)
      << passes.out;
  EXPECT_FALSE(fs::exists(dir_ / "r.onnx"));

  // With --fail-regex alone, a zero exit status fails when the output matches, and a non-zero one
  // passes when it does not.
  CliResult no_match = run_kiln_cli("debug reduce " + model + " --check 'echo fine; exit 1' --fail-regex BROKEN" + out);
  EXPECT_EQ(no_match.code, 1) << no_match.out;
  EXPECT_NE(no_match.out.find("    | fine"), std::string::npos) << no_match.out;  // the check's output is shown
  CliResult match = run_kiln_cli("debug reduce " + model + " --check 'echo BROKEN' --fail-regex BROKEN" + out);
  EXPECT_EQ(match.code, 0) << match.out;

  CliResult missing = run_kiln_cli("debug reduce " + (dir_ / "nope.onnx").string() + " --check 'false'" + out);
  EXPECT_EQ(missing.code, 1) << missing.out;
  EXPECT_NE(missing.out.find("nope.onnx"), std::string::npos) << missing.out;

  CliResult bad_mode = run_kiln_cli("debug reduce " + model + " --check 'false' --mode fast" + out);
  EXPECT_EQ(bad_mode.code, 2) << bad_mode.out;
  CliResult no_check = run_kiln_cli("debug reduce " + model + out);
  EXPECT_EQ(no_check.code, 2) << no_check.out;
  CliResult bad_regex = run_kiln_cli("debug reduce " + model + " --check 'false' --fail-regex '(unclosed'" + out);
  EXPECT_EQ(bad_regex.code, 2) << bad_regex.out;
  CliResult bad_timeout = run_kiln_cli("debug reduce " + model + " --check 'false' --timeout 0" + out);
  EXPECT_EQ(bad_timeout.code, 2) << bad_timeout.out;
  CliResult bad_shape = run_kiln_cli("debug reduce " + model + " --check 'false' --shapes y:4" + out);
  EXPECT_EQ(bad_shape.code, 1) << bad_shape.out;
  EXPECT_NE(bad_shape.out.find("'y'"), std::string::npos) << bad_shape.out;
  CliResult wrong_rank = run_kiln_cli("debug reduce " + model + " --check 'false' --shapes x:2x2" + out);
  EXPECT_EQ(wrong_rank.code, 1) << wrong_rank.out;
  EXPECT_NE(wrong_rank.out.find("rank 1"), std::string::npos) << wrong_rank.out;
}

// A plugin replacing a built-in op runs in every program Kiln makes from an ONNX file, also when
// the built-in kernel won the timing (the in-memory build of kiln run/compare used to keep the
// timed program): the faulty Tanh must show against the reference executor.
TEST_F(DebugReduceTest, ReplacingPluginRunsInInMemoryBuilds) {
  const std::string model = save(tanh_model(), "tanh.onnx");
  const std::string compare = "compare " + model + " --model " + model + " --atol 1e-4";
  CliResult clean = run_kiln_cli(compare);
  EXPECT_EQ(clean.code, 0) << clean.out;
  CliResult faulty = run_kiln_cli(std::string("--plugin ") + KILN_FAULTY_PLUGIN + " " + compare);
  EXPECT_EQ(faulty.code, 1) << faulty.out;
  EXPECT_NE(faulty.out.find("FAILED"), std::string::npos) << faulty.out;
}

