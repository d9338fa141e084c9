// `kiln check` end to end: a clean model, a custom op planted mid-graph (unsupported node, plugin
// suggestion, supported/unsupported/supported partition and its boundary tensors, --save-subgraphs),
// unsupported opsets, lint warnings, a shape that only the reference backend can run, the example
// plugin making the custom op buildable, the JSON report, broken files and bad flags.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backends/reference/executor.h"
#include "onnx/onnx.pb.h"
#include "onnx/onnx_import.h"
#include "test_support.h"
#include "util/mapped_file.h"

namespace fs = std::filesystem;
using namespace kiln;
using json = nlohmann::json;

namespace {

using Result = kiln_test::CliResult;
Result kiln_cli(const std::string& args) { return kiln_test::run_kiln_cli(args); }

// stdout alone (the JSON report), stderr dropped.
Result kiln_stdout(const std::string& args) { return kiln_test::run_kiln_cli(args, kiln_test::Stderr::kDrop); }

std::string example_plugin() { return KILN_EXAMPLE_PLUGIN; }

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// The issues of one check id in a JSON report.
std::vector<json> issues_of(const json& report, const std::string& check) {
  std::vector<json> found;
  for (const auto& i : report["issues"])
    if (i["check"] == check) found.push_back(i);
  return found;
}

std::vector<std::string> names_of(const json& values) {
  std::vector<std::string> names;
  for (const auto& v : values) names.push_back(v["name"]);
  return names;
}

class CheckCliTest : public kiln_test::TempDirTest {
 protected:
  CheckCliTest() : TempDirTest("kiln_check_test_") {}

  std::string save_proto(const onnx::ModelProto& p, const std::string& name) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    p.SerializeToOstream(&out);
    return path;
  }

  // x f32[2,3] -> Relu 'relu' -> a -> <op> 'mid' -> b -> Add(b, w) 'add' -> y
  static Model chain(const std::string& domain, const std::string& op, int64_t domain_opset) {
    Model m;
    m.opsets[""] = 17;
    if (!domain.empty()) m.opsets[domain] = domain_opset;
    m.graph.inputs = {"x"};
    m.graph.outputs = {"y"};
    m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
    m.graph.initializers["w"] = Tensor::from_vector<float>({3}, {1, 2, 3});
    m.graph.nodes.push_back(Node{"relu", "Relu", "", {"x"}, {"a"}, {}});
    m.graph.nodes.push_back(Node{"mid", op, domain, {"a"}, {"b"}, {}});
    m.graph.nodes.push_back(Node{"add", "Add", "", {"b", "w"}, {"y"}, {}});
    return m;
  }
  // The chain with com.acme::Mystery in the middle; with `declare_b`, the model declares b's type
  // (value_info), as exporters do for custom ops.
  std::string planted(bool declare_b, const std::string& name = "planted.onnx") {
    onnx::ModelProto p;
    model_to_proto(chain("com.acme", "Mystery", 1), &p);
    if (declare_b) {
      auto* vi = p.mutable_graph()->add_value_info();
      vi->set_name("b");
      auto* tt = vi->mutable_type()->mutable_tensor_type();
      tt->set_elem_type(onnx::TensorProto::FLOAT);
      tt->mutable_shape()->add_dim()->set_dim_value(2);
      tt->mutable_shape()->add_dim()->set_dim_value(3);
    }
    return save_proto(p, name);
  }
};

}  // namespace

TEST_F(CheckCliTest, CleanModelIsBuildableAndEveryNodeSupported) {
  const std::string path = save(kiln_test::add_relu_model(), "clean.onnx");

  Result r = kiln_cli("check " + path);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(contains(r.out, "nodes: 2 (2 supported, 0 unsupported)")) << r.out;
  EXPECT_TRUE(contains(r.out, "result: buildable (0 errors")) << r.out;
  EXPECT_TRUE(contains(r.out, "0: supported, 2 nodes: add, relu")) << r.out;
  // The dynamic batch is checked at 1, and says so.
  EXPECT_TRUE(contains(r.out, "dynamic-input  'x'")) << r.out;
  EXPECT_TRUE(contains(r.out, "checked at 1x3")) << r.out;

  Result j = kiln_stdout("check --json " + path + " --shapes x:4x3");
  ASSERT_EQ(j.code, 0) << j.out;
  const json report = json::parse(j.out);
  EXPECT_TRUE(report["buildable"].get<bool>());
  EXPECT_EQ(report["counts"]["unsupported"], 0);
  EXPECT_EQ(report["counts"]["errors"], 0);
  EXPECT_EQ(report["shapes"]["x"], json::array({4, 3}));
  EXPECT_TRUE(issues_of(report, "dynamic-input").empty());  // --shapes chose it
  ASSERT_EQ(report["nodes"].size(), 2u);
  for (const auto& n : report["nodes"]) {
    EXPECT_TRUE(n["supported"].get<bool>()) << n;
    EXPECT_EQ(n["subgraph"], 0);
  }
  ASSERT_EQ(report["subgraphs"].size(), 1u);
  const json& sg = report["subgraphs"][0];
  EXPECT_TRUE(sg["supported"].get<bool>());
  EXPECT_EQ(sg["nodes"], json::array({"add", "relu"}));
  EXPECT_EQ(names_of(sg["inputs"]), std::vector<std::string>{"x"});
  EXPECT_EQ(names_of(sg["outputs"]), std::vector<std::string>{"y"});
  // Add and Relu have fast CPU kernels: nothing falls back to the reference kernels.
  ASSERT_FALSE(report["kernels"].empty());
  for (const auto& k : report["kernels"]) {
    EXPECT_EQ(k["kind"], "fast") << k;
    // The untimed pick is the first supporting tactic; the reference kernels take any op they have.
    ASSERT_GE(k["tactics"].size(), 2u) << k;
    EXPECT_EQ(k["tactics"][0], k["tactic"]) << k;
    EXPECT_EQ(k["tactics"].back(), "reference") << k;
  }
  EXPECT_EQ(report["counts"]["kernels_reference"], 0);
  EXPECT_TRUE(issues_of(report, "reference-fallback").empty());
}

TEST_F(CheckCliTest, PlantedUnknownOpIsListedWithPluginSuggestionAndPartition) {
  const std::string path = planted(/*declare_b=*/true);
  Result r = kiln_cli("check " + path);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "nodes: 3 (2 supported, 1 unsupported)")) << r.out;
  EXPECT_TRUE(contains(r.out, "result: NOT buildable (1 error,")) << r.out;
  EXPECT_TRUE(contains(r.out, "error   unknown-op  com.acme::Mystery 'mid' #1 (opset 1): unknown op")) << r.out;
  EXPECT_TRUE(contains(r.out, "docs/troubleshooting.md#unknown-op")) << r.out;
  EXPECT_TRUE(contains(r.out, "fix: write a plugin providing com.acme::Mystery (IPluginCreator with "
                              "getPluginName()=\"Mystery\", getPluginNamespace()=\"com.acme\"; see "
                              "examples/plugins/scaled_tanh_plugin.cpp and docs/api.md#plugins), then load it "
                              "with --plugin LIB.so"))
      << r.out;
  // supported / unsupported / supported, cut at a and b.
  EXPECT_TRUE(contains(r.out, "0: supported, 1 node: relu\n     inputs:  x f32[2,3]\n     outputs: a f32[2,3]\n"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "1: UNSUPPORTED, 1 node: mid\n     inputs:  a f32[2,3]\n     outputs: b f32[2,3]\n"))
      << r.out;
  EXPECT_TRUE(contains(r.out, "2: supported, 1 node: add\n     inputs:  b f32[2,3]\n     outputs: y f32[2,3]\n"))
      << r.out;
  // b's declared type let the last part be built on its own: no "not checked" note.
  EXPECT_FALSE(contains(r.out, "not-checked")) << r.out;

  Result j = kiln_stdout("check --json " + path);
  EXPECT_EQ(j.code, 1) << j.out;
  const json report = json::parse(j.out);
  EXPECT_FALSE(report["buildable"].get<bool>());
  EXPECT_TRUE(report["loaded"].get<bool>());
  EXPECT_EQ(report["counts"]["nodes"], 3);
  EXPECT_EQ(report["counts"]["unsupported"], 1);
  EXPECT_EQ(report["counts"]["subgraphs"], 3);
  const auto unknown = issues_of(report, "unknown-op");
  ASSERT_EQ(unknown.size(), 1u) << report.dump(2);
  EXPECT_EQ(unknown[0]["severity"], "error");
  EXPECT_EQ(unknown[0]["node"], "mid");
  EXPECT_EQ(unknown[0]["index"], 1);
  EXPECT_EQ(unknown[0]["op"], "com.acme::Mystery");
  EXPECT_EQ(unknown[0]["domain"], "com.acme");
  EXPECT_EQ(unknown[0]["op_type"], "Mystery");
  EXPECT_EQ(unknown[0]["opset"], 1);
  EXPECT_EQ(unknown[0]["help"], "docs/troubleshooting.md#unknown-op");
  EXPECT_TRUE(contains(unknown[0]["suggestion"], "getPluginNamespace()=\"com.acme\"")) << unknown[0];
  EXPECT_TRUE(contains(unknown[0]["reason"], "unknown op")) << unknown[0];
  EXPECT_FALSE(report["nodes"][1]["supported"].get<bool>());
  EXPECT_TRUE(report["nodes"][0]["supported"].get<bool>());
  EXPECT_TRUE(report["nodes"][2]["supported"].get<bool>());

  const json& sgs = report["subgraphs"];
  ASSERT_EQ(sgs.size(), 3u);
  const std::vector<bool> supported = {sgs[0]["supported"], sgs[1]["supported"], sgs[2]["supported"]};
  EXPECT_EQ(supported, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(sgs[0]["nodes"], json::array({"relu"}));
  EXPECT_EQ(sgs[1]["nodes"], json::array({"mid"}));
  EXPECT_EQ(sgs[2]["nodes"], json::array({"add"}));
  EXPECT_EQ(names_of(sgs[0]["inputs"]), std::vector<std::string>{"x"});
  EXPECT_EQ(names_of(sgs[0]["outputs"]), std::vector<std::string>{"a"});
  EXPECT_EQ(names_of(sgs[1]["inputs"]), std::vector<std::string>{"a"});
  EXPECT_EQ(names_of(sgs[1]["outputs"]), std::vector<std::string>{"b"});
  EXPECT_EQ(names_of(sgs[2]["inputs"]), std::vector<std::string>{"b"});  // w is an initializer, inside
  EXPECT_EQ(names_of(sgs[2]["outputs"]), std::vector<std::string>{"y"});
  EXPECT_EQ(sgs[0]["outputs"][0]["dtype"], "f32");
  EXPECT_EQ(sgs[0]["outputs"][0]["shape"], json::array({2, 3}));
  // Both supported parts were built: Relu and Add each got a kernel.
  std::vector<std::string> kernel_ops;
  for (const auto& k : report["kernels"]) kernel_ops.push_back(k["op"]);
  EXPECT_NE(std::find(kernel_ops.begin(), kernel_ops.end(), "Relu"), kernel_ops.end()) << report["kernels"];
  EXPECT_NE(std::find(kernel_ops.begin(), kernel_ops.end(), "Add"), kernel_ops.end()) << report["kernels"];
}

TEST_F(CheckCliTest, PartsPastAnUntypedCustomOpAreNotCheckedButStillPartitioned) {
  const std::string path = planted(/*declare_b=*/false);
  Result j = kiln_stdout("check --json " + path);
  EXPECT_EQ(j.code, 1) << j.out;
  const json report = json::parse(j.out);
  const auto notes = issues_of(report, "not-checked");
  ASSERT_EQ(notes.size(), 1u) << report.dump(2);
  EXPECT_EQ(notes[0]["severity"], "info");
  EXPECT_EQ(notes[0]["node"], "add");
  EXPECT_EQ(notes[0]["index"], 2);
  EXPECT_TRUE(contains(notes[0]["reason"], "depends on 'b', whose type is unknown")) << notes[0];
  ASSERT_EQ(report["subgraphs"].size(), 3u);
  EXPECT_EQ(report["subgraphs"][2]["inputs"][0]["name"], "b");
  EXPECT_EQ(report["subgraphs"][2]["inputs"][0]["dtype"], nullptr);  // unknown: nothing declares it
}

TEST_F(CheckCliTest, SaveSubgraphsWritesEachPartWithTypedBoundaries) {
  const std::string path = planted(/*declare_b=*/true);
  const fs::path out = dir_ / "parts";
  Result r = kiln_cli("check " + path + " --save-subgraphs " + out.string());
  EXPECT_EQ(r.code, 1) << r.out;
  ASSERT_TRUE(fs::exists(out / "supported_subgraph-0.onnx")) << r.out;
  ASSERT_TRUE(fs::exists(out / "unsupported_subgraph-1.onnx")) << r.out;
  ASSERT_TRUE(fs::exists(out / "supported_subgraph-2.onnx")) << r.out;
  EXPECT_TRUE(contains(r.out, "written: " + (out / "supported_subgraph-0.onnx").string())) << r.out;

  Model first = load_onnx(out / "supported_subgraph-0.onnx");
  EXPECT_EQ(first.graph.inputs, std::vector<std::string>{"x"});
  EXPECT_EQ(first.graph.outputs, std::vector<std::string>{"a"});
  ASSERT_EQ(first.graph.nodes.size(), 1u);
  EXPECT_EQ(first.graph.nodes[0].op_type, "Relu");
  Model last = load_onnx(out / "supported_subgraph-2.onnx");
  EXPECT_EQ(last.graph.inputs, std::vector<std::string>{"b"});
  EXPECT_EQ(last.graph.outputs, std::vector<std::string>{"y"});
  ASSERT_NE(last.graph.type_of("b"), nullptr);
  EXPECT_EQ(last.graph.type_of("b")->to_string(), "f32[2,3]");
  // The saved part computes what the original does there: y = b + w.
  reference::Executor exec(std::move(last));
  auto y = exec.run({{"b", Tensor::from_vector<float>({2, 3}, {0, 1, 2, -1, -2, -3})}}).at("y");
  auto v = y.values<float>();
  EXPECT_EQ(std::vector<float>(v.begin(), v.end()), (std::vector<float>{1, 3, 5, 0, 0, 0}));
  Model middle = load_onnx(out / "unsupported_subgraph-1.onnx");
  ASSERT_EQ(middle.graph.nodes.size(), 1u);
  EXPECT_EQ(middle.graph.nodes[0].domain, "com.acme");
  EXPECT_EQ(middle.graph.inputs, std::vector<std::string>{"a"});
}

TEST_F(CheckCliTest, ExamplePluginMakesTheCustomOpSupported) {
  const std::string plugin = example_plugin();
  ASSERT_TRUE(fs::exists(plugin)) << plugin << " is missing: build the kiln_example_plugin target";
  const std::string path = save(chain("kiln.example", "ScaledTanh", 1), "scaled_tanh.onnx");

  Result without = kiln_stdout("check --json " + path);
  EXPECT_EQ(without.code, 1) << without.out;
  const json before = json::parse(without.out);
  ASSERT_EQ(issues_of(before, "unknown-op").size(), 1u) << before.dump(2);
  EXPECT_EQ(issues_of(before, "unknown-op")[0]["op"], "kiln.example::ScaledTanh");

  Result with = kiln_stdout("check --json " + path + " --plugin " + plugin);
  ASSERT_EQ(with.code, 0) << with.out;
  const json after = json::parse(with.out);
  EXPECT_TRUE(after["buildable"].get<bool>());
  EXPECT_EQ(after["counts"]["unsupported"], 0);
  ASSERT_EQ(after["subgraphs"].size(), 1u);
  bool found = false;
  for (const auto& k : after["kernels"])
    if (k["op"] == "kiln.example::ScaledTanh") {
      found = true;
      EXPECT_EQ(k["kind"], "plugin");
      EXPECT_EQ(k["tactic"], "plugin:kiln.example::ScaledTanh:1");
    }
  EXPECT_TRUE(found) << after["kernels"];
}

TEST_F(CheckCliTest, UnsupportedOpsetGetsTheVersionConverterHint) {
  // Mod exists from opset 10 on (ONNX and Kiln alike): at opset 9 it is an unsupported opset.
  Model m;
  m.opsets[""] = 9;
  m.graph.inputs = {"x"};
  m.graph.outputs = {"y"};
  m.graph.types["x"] = TensorType{DType::kI32, Shape{Dim(4)}};
  m.graph.initializers["k"] = Tensor::from_vector<int32_t>({1}, {3});
  m.graph.nodes.push_back(Node{"mod", "Mod", "", {"x", "k"}, {"y"}, {}});
  const std::string path = save(m, "mod9.onnx");
  Result r = kiln_cli("check " + path);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "unsupported-opset  Mod 'mod' #0 (opset 9): unsupported opset 9 for Mod")) << r.out;
  EXPECT_TRUE(contains(r.out, "docs/troubleshooting.md#unsupported-opset")) << r.out;
  EXPECT_TRUE(contains(r.out, "fix: convert the model to opset 10 with ONNX's version converter")) << r.out;
  EXPECT_TRUE(contains(r.out, "vc.convert_version(onnx.load('" + path + "'), 10)")) << r.out;
  EXPECT_FALSE(contains(r.out, "write a plugin")) << r.out;  // a built-in op's opset is not a plugin's job

  // A whole model newer than Kiln reads.
  Model newer = m;
  newer.opsets[""] = 99;
  newer.graph.nodes[0] = Node{"relu", "Relu", "", {"x"}, {"y"}, {}};
  newer.graph.types["x"].dtype = DType::kF32;
  newer.graph.initializers.clear();
  Result n = kiln_stdout("check --json " + save(newer, "opset99.onnx"));
  EXPECT_EQ(n.code, 1) << n.out;
  const json report = json::parse(n.out);
  const auto opset = issues_of(report, "unsupported-opset");
  ASSERT_EQ(opset.size(), 1u) << report.dump(2);
  EXPECT_EQ(opset[0]["node"], nullptr);
  EXPECT_EQ(opset[0]["opset"], 99);
  EXPECT_TRUE(contains(opset[0]["reason"], "newer than Kiln supports (at most 21)")) << opset[0];
  EXPECT_TRUE(contains(opset[0]["suggestion"], "convert the model to opset 21")) << opset[0];
}

TEST_F(CheckCliTest, LintWarningsKeepTheModelBuildable) {
  // x -> Relu 'relu' -> y; a Sigmoid 'dead' -> d nobody reads, feeding Neg 'dead2' -> e nobody reads;
  // an initializer and an input nobody reads; a node without a name and two nodes named alike.
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x", "unused_in"};
  m.graph.outputs = {"y", "z"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(2)}};
  m.graph.types["unused_in"] = TensorType{DType::kF32, Shape{Dim(1)}};
  m.graph.initializers["unused_w"] = Tensor::from_vector<float>({2}, {1, 2});
  m.graph.nodes.push_back(Node{"relu", "Relu", "", {"x"}, {"y"}, {}});
  m.graph.nodes.push_back(Node{"dead", "Sigmoid", "", {"x"}, {"d"}, {}});
  m.graph.nodes.push_back(Node{"dead2", "Neg", "", {"d"}, {"e"}, {}});
  m.graph.nodes.push_back(Node{"", "Abs", "", {"y"}, {"z1"}, {}});
  m.graph.nodes.push_back(Node{"relu", "Neg", "", {"z1"}, {"z"}, {}});
  onnx::ModelProto p;
  model_to_proto(m, &p);
  // An IR<4-style input that an initializer shadows.
  auto* shadowed = p.mutable_graph()->add_input();
  shadowed->set_name("unused_w");
  shadowed->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  const std::string path = save_proto(p, "lint.onnx");

  Result j = kiln_stdout("check --json " + path);
  ASSERT_EQ(j.code, 0) << j.out;
  const json report = json::parse(j.out);
  EXPECT_TRUE(report["buildable"].get<bool>());
  EXPECT_EQ(report["counts"]["errors"], 0);

  auto unused_init = issues_of(report, "unused-initializer");
  ASSERT_EQ(unused_init.size(), 1u) << report.dump(2);
  EXPECT_EQ(unused_init[0]["severity"], "warning");
  EXPECT_EQ(unused_init[0]["value"], "unused_w");
  auto unused_in = issues_of(report, "unused-input");
  ASSERT_EQ(unused_in.size(), 1u);
  EXPECT_EQ(unused_in[0]["value"], "unused_in");
  auto dead = issues_of(report, "dead-node");
  ASSERT_EQ(dead.size(), 2u) << report.dump(2);
  EXPECT_EQ(dead[0]["node"], "dead");
  EXPECT_EQ(dead[0]["index"], 1);
  EXPECT_TRUE(contains(dead[0]["reason"], "feed only dead nodes")) << dead[0];
  EXPECT_EQ(dead[1]["node"], "dead2");
  EXPECT_TRUE(contains(dead[1]["reason"], "never used")) << dead[1];
  auto unnamed = issues_of(report, "unnamed-node");
  ASSERT_EQ(unnamed.size(), 1u);
  EXPECT_EQ(unnamed[0]["index"], 3);
  EXPECT_EQ(unnamed[0]["op"], "Abs");
  auto dup = issues_of(report, "duplicate-node-name");
  ASSERT_EQ(dup.size(), 1u);
  EXPECT_EQ(dup[0]["index"], 4);
  EXPECT_TRUE(contains(dup[0]["reason"], "node #0")) << dup[0];
  auto shadow = issues_of(report, "initializer-shadows-input");
  ASSERT_EQ(shadow.size(), 1u);
  EXPECT_EQ(shadow[0]["value"], "unused_w");

  Result t = kiln_cli("check " + path);
  EXPECT_EQ(t.code, 0) << t.out;
  EXPECT_TRUE(contains(t.out, "result: buildable (0 errors, 7 warnings")) << t.out;
  EXPECT_TRUE(contains(t.out, "warning dead-node  Sigmoid 'dead' #1 (opset 17)")) << t.out;
}

TEST_F(CheckCliTest, StructuralErrorsAreAllListedWhenTheModelDoesNotLoad) {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.outputs = {"y"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2)}};
  m.graph.nodes.push_back(Node{"add", "Add", "", {"x", "x"}, {"y"}, {}});
  onnx::ModelProto p;
  model_to_proto(m, &p);
  p.mutable_graph()->mutable_node(0)->set_input(1, "ghost_in");
  p.mutable_graph()->add_output()->set_name("ghost_out");
  const std::string path = save_proto(p, "broken.onnx");

  Result j = kiln_stdout("check --json " + path);
  EXPECT_EQ(j.code, 1) << j.out;
  const json report = json::parse(j.out);
  EXPECT_FALSE(report["loaded"].get<bool>());
  EXPECT_FALSE(report["buildable"].get<bool>());
  const auto undefined = issues_of(report, "undefined-input");
  ASSERT_EQ(undefined.size(), 1u) << report.dump(2);
  EXPECT_EQ(undefined[0]["node"], "add");
  EXPECT_EQ(undefined[0]["value"], "ghost_in");
  ASSERT_EQ(issues_of(report, "output-not-produced").size(), 1u);
  EXPECT_EQ(issues_of(report, "output-not-produced")[0]["value"], "ghost_out");
  EXPECT_EQ(issues_of(report, "load-error").size(), 1u);

  Result t = kiln_cli("check " + path);
  EXPECT_EQ(t.code, 1) << t.out;
  EXPECT_TRUE(contains(t.out, "undefined-input  Add 'add' #0 (opset 17): reads 'ghost_in'")) << t.out;
  EXPECT_TRUE(contains(t.out, "kiln: error (invalid model)")) << t.out;
}

TEST_F(CheckCliTest, InferenceErrorIsAnError) {
  // f32[2,3] + f32[4]: the shapes do not broadcast.
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.outputs = {"y"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
  m.graph.initializers["w"] = Tensor::from_vector<float>({4}, {1, 2, 3, 4});
  m.graph.nodes.push_back(Node{"bad_add", "Add", "", {"x", "w"}, {"y"}, {}});
  Result j = kiln_stdout("check --json " + save(m, "bad_add.onnx"));
  EXPECT_EQ(j.code, 1) << j.out;
  const json report = json::parse(j.out);
  const auto inference = issues_of(report, "inference-error");
  ASSERT_EQ(inference.size(), 1u) << report.dump(2);
  EXPECT_EQ(inference[0]["node"], "bad_add");
  EXPECT_FALSE(report["nodes"][0]["supported"].get<bool>());
}

TEST_F(CheckCliTest, DataDependentShapeIsCpuOnlyRestriction) {
  // x -> Relu -> NonZero (output shape depends on the data) -> Transpose -> y.
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.outputs = {"y"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
  m.graph.nodes.push_back(Node{"relu", "Relu", "", {"x"}, {"r"}, {}});
  m.graph.nodes.push_back(Node{"nz", "NonZero", "", {"r"}, {"idx"}, {}});
  m.graph.nodes.push_back(Node{"tr", "Transpose", "", {"idx"}, {"y"}, {}});
  const std::string path = save(m, "nonzero.onnx");

  Result cpu = kiln_stdout("check --json " + path);
  EXPECT_EQ(cpu.code, 1) << cpu.out;
  const json report = json::parse(cpu.out);
  const auto dynamic = issues_of(report, "data-dependent-shape");
  ASSERT_EQ(dynamic.size(), 2u) << report.dump(2);  // NonZero, and the Transpose reading its output
  EXPECT_EQ(dynamic[0]["node"], "nz");
  EXPECT_EQ(dynamic[0]["index"], 1);
  EXPECT_EQ(dynamic[1]["node"], "tr");
  EXPECT_EQ(report["counts"]["unsupported"], 2);
  ASSERT_EQ(report["subgraphs"].size(), 2u);
  EXPECT_EQ(report["subgraphs"][0]["nodes"], json::array({"relu"}));
  EXPECT_TRUE(report["subgraphs"][0]["supported"].get<bool>());
  EXPECT_EQ(report["subgraphs"][1]["nodes"], json::array({"nz", "tr"}));
  EXPECT_FALSE(report["subgraphs"][1]["supported"].get<bool>());
  EXPECT_EQ(names_of(report["subgraphs"][1]["inputs"]), std::vector<std::string>{"r"});

  // The reference executor runs data-dependent shapes.
  Result ref = kiln_cli("check " + path + " --backend reference");
  EXPECT_EQ(ref.code, 0) << ref.out;
  EXPECT_TRUE(contains(ref.out, "nodes: 3 (3 supported, 0 unsupported)")) << ref.out;
}

TEST_F(CheckCliTest, BrokenFilesAreClearErrors) {
  const fs::path garbage = dir_ / "garbage.onnx";
  std::ofstream(garbage) << "this is not a protobuf at all \xff\xff\xff\xff";
  Result r = kiln_cli("check " + garbage.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "kiln: error (invalid model): " + garbage.string() +
                                  ": not a valid ONNX model: the protobuf is truncated or corrupted"))
      << r.out;

  // A valid model cut in half.
  const std::string whole = planted(true, "whole.onnx");
  std::vector<uint8_t> bytes = read_file_bytes(whole);
  const fs::path truncated = dir_ / "truncated.onnx";
  std::ofstream(truncated, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size() / 2);
  r = kiln_cli("check " + truncated.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "kiln: error (invalid model)")) << r.out;
  Result j = kiln_stdout("check --json " + truncated.string());
  EXPECT_EQ(j.code, 1) << j.out;
  const json report = json::parse(j.out);
  EXPECT_FALSE(report["loaded"].get<bool>());
  ASSERT_EQ(issues_of(report, "load-error").size(), 1u);

  r = kiln_cli("check " + (dir_ / "missing.onnx").string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "missing.onnx")) << r.out;
}

TEST_F(CheckCliTest, BadFlagsExitTwoAndBadShapesExitOne) {
  const std::string path = planted(true);
  EXPECT_EQ(kiln_cli("check").code, 2);
  EXPECT_EQ(kiln_cli("check " + path + " --backend gpu").code, 2);
  EXPECT_EQ(kiln_cli("check " + path + " --opt-level 9").code, 2);
  EXPECT_EQ(kiln_cli("check " + path + " --no-such-flag").code, 2);
  Result r = kiln_cli("check " + path + " --shapes nothere:1x3");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "'nothere' is not an input")) << r.out;
  r = kiln_cli("check " + path + " --shapes x:2x4");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(contains(r.out, "static shape [2,3]")) << r.out;
}

TEST(CheckCliRealModels, ExportedModelsAreBuildable) {
  const fs::path dir = kiln_test::model_dir();
  int checked = 0;
  for (const char* name : {"resnet50", "bert"}) {
    const fs::path model = dir / (std::string(name) + ".onnx");
    if (dir.empty() || !fs::exists(model)) continue;
    SCOPED_TRACE(name);
    Result j = kiln_stdout("check --json " + model.string());
    ASSERT_EQ(j.code, 0) << j.out.substr(0, 4000);
    const json report = json::parse(j.out);
    EXPECT_TRUE(report["buildable"].get<bool>());
    EXPECT_EQ(report["counts"]["unsupported"], 0);
    EXPECT_EQ(report["counts"]["errors"], 0);
    EXPECT_EQ(report["counts"]["supported_subgraphs"], 1);
    EXPECT_GT(report["counts"]["kernels_fast"].get<int>(), 0);
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no resnet50.onnx or bert.onnx in " << dir << " (KILN_MODEL_DIR)";
}
