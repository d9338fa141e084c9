// `kiln compare` with ONNX Runtime as the reference (--onnxrt, tools/onnxrt_runner.js), --mark-all, and
// saving/loading input sets and outputs (--save-inputs/--load-inputs, --save-outputs/--load-outputs,
// --save-target-outputs). The ONNX Runtime tests skip when node or onnxruntime-node is missing.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "onnx/onnx.pb.h"
#include "onnx/onnx_import.h"
#include "test_support.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using namespace kiln;
using json = nlohmann::json;
using kiln_test::CliResult;

namespace {

// Sets an environment variable for the kiln processes a test starts, restoring it afterwards.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_, old_->c_str(), 1);
    else
      unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// The node_modules folder kiln uses by default (or $KILN_ORT_MODULES).
std::string ort_modules() {
  if (const char* env = std::getenv("KILN_ORT_MODULES"); env && *env) return env;
  return std::string(KILN_SOURCE_DIR) + "/bench/node_modules";
}

// Empty when node can load onnxruntime-node, else why not.
const std::string& ort_missing() {
  static const std::string why = [] {
    const char* node = std::getenv("KILN_NODE");
    const std::string cmd = std::string(node && *node ? node : "node") + " -e \"require(process.argv[1])\" '" +
                            ort_modules() + "/onnxruntime-node' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0)
      return "ONNX Runtime not available (node with onnxruntime-node in " + ort_modules() +
             "; install with scripts/setup-bench.sh)";
    return std::string();
  }();
  return why;
}

#define REQUIRE_ORT()                                          \
  do {                                                         \
    if (!ort_missing().empty()) GTEST_SKIP() << ort_missing(); \
  } while (0)

Tensor f32(std::vector<int64_t> shape, std::vector<float> v) { return Tensor::from_vector<float>(std::move(shape), v); }

json parse_json(const CliResult& r) {
  try {
    return json::parse(r.out.substr(r.out.find('{')));
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what() << "\n" << r.out;
    return json::object();
  }
}

// A small CNN classifier: x f32[batch,3,8,8] -> Conv 3x3 (c1) -> Relu (r1) -> Conv 3x3 (c2) -> Relu (r2)
// -> GlobalAveragePool (p) -> Flatten (f) -> MatMul (m) -> Add (logits) -> Softmax (y).
// `w2_scale` scales the second conv's weights: another value plants a divergence at c2.
Model cnn(float w2_scale = 1.f) {
  Model m;
  m.opsets[""] = 17;
  Graph& g = m.graph;
  g.inputs = {"x"};
  g.outputs = {"y"};
  g.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim(3), Dim(8), Dim(8)}};
  g.initializers["w1"] = kiln_test::seeded({6, 3, 3, 3}, 1, 0.4f);
  g.initializers["b1"] = kiln_test::seeded({6}, 2, 0.1f);
  Tensor w2 = kiln_test::seeded({6, 6, 3, 3}, 3, 0.3f);
  for (int64_t i = 0; i < w2.numel(); ++i) w2.mutable_data<float>()[i] *= w2_scale;
  g.initializers["w2"] = w2;
  g.initializers["wm"] = kiln_test::seeded({6, 10}, 4, 1.0f);
  g.initializers["bm"] = kiln_test::seeded({10}, 5, 0.2f);
  const std::map<std::string, Attribute> conv = {{"pads", Attribute::of_ints({1, 1, 1, 1})},
                                                 {"kernel_shape", Attribute::of_ints({3, 3})}};
  g.nodes.push_back(Node{"conv1", "Conv", "", {"x", "w1", "b1"}, {"c1"}, conv});
  g.nodes.push_back(Node{"relu1", "Relu", "", {"c1"}, {"r1"}, {}});
  g.nodes.push_back(Node{"conv2", "Conv", "", {"r1", "w2"}, {"c2"}, conv});
  g.nodes.push_back(Node{"relu2", "Relu", "", {"c2"}, {"r2"}, {}});
  g.nodes.push_back(Node{"pool", "GlobalAveragePool", "", {"r2"}, {"p"}, {}});
  g.nodes.push_back(Node{"flatten", "Flatten", "", {"p"}, {"f"}, {}});
  g.nodes.push_back(Node{"matmul", "MatMul", "", {"f", "wm"}, {"m"}, {}});
  g.nodes.push_back(Node{"add", "Add", "", {"m", "bm"}, {"logits"}, {}});
  g.nodes.push_back(Node{"softmax", "Softmax", "", {"logits"}, {"y"}, {{"axis", Attribute::of_int(-1)}}});
  return m;
}

class CompareOrtTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_compare_ort_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = path("cnn.onnx");
    save_onnx(cnn(), model_);
    // kiln finds tools/onnxrt_runner.js from its own location when it was built inside the source
    // tree; elsewhere the test names it.
    const std::string cli = fs::weakly_canonical(KILN_CLI_PATH).string();
    const std::string src = fs::weakly_canonical(KILN_SOURCE_DIR).string();
    if (cli.rfind(src + "/", 0) != 0)
      runner_env_.emplace("KILN_ORT_RUNNER", std::string(KILN_SOURCE_DIR) + "/tools/onnxrt_runner.js");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  static CliResult kiln(const std::string& args) { return kiln_test::run_kiln_cli(args); }

  // An fp32 engine of the CNN at batch 2.
  std::string fp32_engine() {
    const std::string eng = path("cnn.kiln");
    CliResult b = kiln("build " + model_ + " -o " + eng + " --shapes x:2x3x8x8 --no-timing");
    EXPECT_EQ(b.code, 0) << b.out;
    return eng;
  }

  fs::path dir_;
  std::string model_;
  std::optional<ScopedEnv> runner_env_;
};

}  // namespace

// The ONNX Runtime side on a model simple enough to compute here: y = Softmax(x W + b) for known x.
// The saved reference outputs are ONNX Runtime's, so they match this computation, not kiln's.
TEST_F(CompareOrtTest, OnnxRuntimeOutputsMatchAHandComputation) {
  REQUIRE_ORT();
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.outputs = {"y"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
  const std::vector<float> w = {1, -1, 0.5f, 2, 0, -2};  // 3x2
  const std::vector<float> b = {0.25f, -0.5f};
  m.graph.initializers["w"] = f32({3, 2}, w);
  m.graph.initializers["b"] = f32({2}, b);
  m.graph.nodes.push_back(Node{"mm", "MatMul", "", {"x", "w"}, {"t"}, {}});
  m.graph.nodes.push_back(Node{"add", "Add", "", {"t", "b"}, {"u"}, {}});
  m.graph.nodes.push_back(Node{"sm", "Softmax", "", {"u"}, {"y"}, {{"axis", Attribute::of_int(1)}}});
  const std::string model = path("lin.onnx");
  save_onnx(m, model);
  const std::vector<float> x = {1, 2, 3, -1, 0.5f, 4};
  write_npz(path("x.npz"), {{"x", f32({2, 3}, x)}});

  CliResult r = kiln("compare " + model + " --model " + model + " --onnxrt --input " + path("x.npz") +
                     " --save-outputs " + path("ref.npz") + " --atol 1e-6 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json doc = parse_json(r);
  EXPECT_EQ(doc["reference"]["kind"], "onnxrt");
  EXPECT_NE(doc["reference"]["description"].get<std::string>().find("onnxruntime-node 1."), std::string::npos) << r.out;

  std::map<std::string, Tensor> saved;
  for (auto& [name, t] : read_npz(path("ref.npz"))) saved[name] = t;
  ASSERT_TRUE(saved.count("0/y")) << r.out;
  const Tensor& y = saved.at("0/y");
  ASSERT_EQ(y.shape(), (std::vector<int64_t>{2, 2}));
  for (int row = 0; row < 2; ++row) {
    double u[2];
    for (int j = 0; j < 2; ++j) {
      u[j] = b[j];
      for (int k = 0; k < 3; ++k) u[j] += static_cast<double>(x[row * 3 + k]) * w[k * 2 + j];
    }
    const double mx = std::max(u[0], u[1]);
    const double e0 = std::exp(u[0] - mx), e1 = std::exp(u[1] - mx);
    EXPECT_NEAR(y.data<float>()[row * 2 + 0], e0 / (e0 + e1), 1e-6);
    EXPECT_NEAR(y.data<float>()[row * 2 + 1], e1 / (e0 + e1), 1e-6);
  }
  // The file records where its outputs came from and which inputs they belong to.
  ASSERT_TRUE(saved.count("kiln.source"));
  ASSERT_TRUE(saved.count("kiln.input_crc32"));
  EXPECT_EQ(saved.at("kiln.input_crc32").numel(), 1);
}

// The runner's .npy reader and writer: every dtype passes through ONNX Runtime (Identity) bit for bit.
TEST_F(CompareOrtTest, RunnerRoundTripsEveryDtype) {
  REQUIRE_ORT();
  Model m;
  m.opsets[""] = 17;
  const std::vector<std::pair<std::string, DType>> dtypes = {
      {"f32", DType::kF32}, {"f64", DType::kF64}, {"f16", DType::kF16}, {"i64", DType::kI64},
      {"i32", DType::kI32}, {"i8", DType::kI8},   {"u8", DType::kU8},   {"bool", DType::kBool}};
  for (const auto& [name, dt] : dtypes) {
    m.graph.inputs.push_back("in_" + name);
    m.graph.outputs.push_back("out_" + name);
    m.graph.types["in_" + name] = TensorType{dt, Shape{Dim(2), Dim(3)}};
    m.graph.nodes.push_back(Node{"id_" + name, "Identity", "", {"in_" + name}, {"out_" + name}, {}});
  }
  const std::string model = path("dtypes.onnx");
  save_onnx(m, model);
  CliResult r = kiln("compare " + model + " --model " + model + " --onnxrt --int-range -100,100 --save-inputs " +
                     path("in.npz") + " --save-outputs " + path("out.npz") + " --atol 0");
  ASSERT_EQ(r.code, 0) << r.out;
  std::map<std::string, Tensor> in, out;
  for (auto& [name, t] : read_npz(path("in.npz"))) in[name] = t;
  for (auto& [name, t] : read_npz(path("out.npz"))) out[name] = t;
  for (const auto& [name, dt] : dtypes) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(in.count("0/in_" + name) && out.count("0/out_" + name));
    const Tensor& a = in.at("0/in_" + name);
    const Tensor& b = out.at("0/out_" + name);
    EXPECT_EQ(b.dtype(), dt);
    EXPECT_EQ(b.shape(), (std::vector<int64_t>{2, 3}));
    ASSERT_EQ(a.nbytes(), b.nbytes());
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  }
  // The inputs are not all zero: the comparison above means something.
  EXPECT_NE(in.at("0/in_i64").to_double_vector(), std::vector<double>(6, 0.0));
}

TEST_F(CompareOrtTest, Fp32EngineAgreesWithOnnxRuntime) {
  REQUIRE_ORT();
  const std::string eng = fp32_engine();
  CliResult r = kiln("compare " + eng + " --model " + model_ +
                     " --onnxrt --samples 3 --atol 1e-5 --rtol 1e-4 --min-cosine 0.99999 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json doc = parse_json(r);
  EXPECT_EQ(doc["runs"], 3);
  EXPECT_EQ(doc["samples"], 6);
  const json& y = doc["outputs"][0];
  EXPECT_EQ(y["name"], "y");
  EXPECT_LT(y["max_abs"].get<double>(), 1e-5);
  EXPECT_GT(y["cosine"].get<double>(), 0.99999);
  EXPECT_EQ(y["top1"]["agree"], 6);
  EXPECT_EQ(y["tolerance_failures"], 0);
  EXPECT_TRUE(doc["passed"].get<bool>());

  // Text report, and the alias --reference onnxrt with another ORT optimization level.
  CliResult t = kiln("compare " + eng + " --model " + model_ + " --reference onnxrt --onnxrt-opt-level all");
  EXPECT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("CPU EP, graph optimizations all"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("PASSED"), std::string::npos) << t.out;
}

TEST_F(CompareOrtTest, Int8EngineShowsSmallNonzeroError) {
  REQUIRE_ORT();
  write_npz(path("calib.npz"), {{"x", kiln_test::seeded({16, 3, 8, 8}, 11, 1.0f)}});
  const std::string eng = path("cnn_int8.kiln");
  CliResult b =
      kiln("build " + model_ + " -o " + eng + " --shapes x:2x3x8x8 --no-timing --int8 --calib " + path("calib.npz"));
  ASSERT_EQ(b.code, 0) << b.out;
  CliResult r = kiln("compare " + eng + " --model " + model_ + " --onnxrt --samples 4 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json doc = parse_json(r);
  const json& y = doc["outputs"][0];
  // Quantization error: visible, yet the softmax stays close.
  EXPECT_GT(y["max_abs"].get<double>(), 1e-5) << r.out;
  EXPECT_LT(y["max_abs"].get<double>(), 0.05) << r.out;
  EXPECT_GT(y["cosine"].get<double>(), 0.99) << r.out;
  EXPECT_LT(y["cosine"].get<double>(), 1.0) << r.out;
}

// A planted divergence: the model under test differs from the reference only in conv2's weights, so the
// first intermediate that diverges from ONNX Runtime's is c2; c1 before it agrees.
TEST_F(CompareOrtTest, MarkAllNamesTheFirstDivergentNode) {
  REQUIRE_ORT();
  const std::string bad = path("cnn_bad.onnx");
  save_onnx(cnn(1.5f), bad);
  CliResult r = kiln("compare " + bad + " --model " + model_ + " --onnxrt --mark-all --shapes x:2x3x8x8 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json doc = parse_json(r);
  ASSERT_TRUE(doc["first_divergence"].is_object()) << r.out;
  EXPECT_EQ(doc["first_divergence"]["name"], "c2") << r.out;
  std::map<std::string, json> rows;
  for (const auto& row : doc["per_layer"]) rows[row["name"].get<std::string>()] = row;
  // Every float intermediate of the graph came back from ONNX Runtime and was compared.
  for (const char* name : {"c1", "r1", "c2", "r2", "p", "f", "m", "logits", "y"})
    EXPECT_TRUE(rows.count(name) && rows[name].contains("cosine")) << name << "\n" << r.out;
  EXPECT_GT(rows["c1"]["cosine"].get<double>(), 0.999999);
  EXPECT_LT(rows["c1"]["max_abs"].get<double>(), 1e-5);
  EXPECT_TRUE(rows["c2"]["first_divergence"].get<bool>());

  // The same model against itself: nothing diverges; the text report names ONNX Runtime.
  CliResult same = kiln("compare " + model_ + " --model " + model_ + " --onnxrt --mark-all --shapes x:2x3x8x8");
  EXPECT_EQ(same.code, 0) << same.out;
  EXPECT_NE(same.out.find("first divergence: none"), std::string::npos) << same.out;
  EXPECT_NE(same.out.find("onnxruntime-node"), std::string::npos) << same.out;
  // --per-layer is the same flag.
  CliResult old = kiln("compare " + bad + " --model " + model_ + " --onnxrt --per-layer --shapes x:2x3x8x8");
  EXPECT_NE(old.out.find("first divergence: 'c2' (Conv)"), std::string::npos) << old.out;
}

// --mark-all with ONNX Runtime runs a copy of the model: weights in external data (here in a subfolder)
// still resolve, and the intermediates come back.
TEST_F(CompareOrtTest, MarkAllWithExternalData) {
  REQUIRE_ORT();
  const fs::path folder = dir_ / "ext";
  fs::create_directories(folder / "weights");
  onnx::ModelProto proto;
  const Model m = cnn();  // w2 below refers into it: it must outlive the loop
  model_to_proto(m, &proto);
  for (auto& init : *proto.mutable_graph()->mutable_initializer()) {
    if (init.name() != "w2") continue;
    const Tensor& w2 = m.graph.initializers.at("w2");
    std::ofstream(folder / "weights" / "w2.bin", std::ios::binary)
        .write(static_cast<const char*>(w2.raw()), static_cast<std::streamsize>(w2.nbytes()));
    init.clear_raw_data();
    init.clear_float_data();
    init.set_data_location(onnx::TensorProto::EXTERNAL);
    auto* loc = init.add_external_data();
    loc->set_key("location");
    loc->set_value("weights/w2.bin");
  }
  const std::string model = (folder / "cnn_ext.onnx").string();
  {
    std::ofstream os(model, std::ios::binary);
    ASSERT_TRUE(proto.SerializeToOstream(&os));
  }
  CliResult r = kiln("compare " + model + " --model " + model + " --onnxrt --mark-all --shapes x:1x3x8x8 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json doc = parse_json(r);
  EXPECT_TRUE(doc["first_divergence"].is_null()) << r.out;
  bool has_c2 = false;
  for (const auto& row : doc["per_layer"])
    if (row["name"] == "c2") has_c2 = row["cosine"].get<double>() > 0.99999;
  EXPECT_TRUE(has_c2) << r.out;
  // Nothing was written into the model's folder.
  size_t files = 0;
  for (const auto& e : fs::recursive_directory_iterator(folder)) files += e.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, 2u);
}

// An int8 build where conv1 stays fp32 (--layer-precision): the error appears at conv2, the first int8
// layer, and every fp32 tensor before it agrees with ONNX Runtime.
TEST_F(CompareOrtTest, MarkAllFindsTheFirstInt8Layer) {
  REQUIRE_ORT();
  write_npz(path("calib.npz"), {{"x", kiln_test::seeded({16, 3, 8, 8}, 11, 1.0f)}});
  const std::string eng = path("cnn_int8.kiln");
  CliResult b = kiln("build " + model_ + " -o " + eng + " --shapes x:2x3x8x8 --no-timing --int8 --calib " +
                     path("calib.npz") + " --layer-precision conv1:fp32");
  ASSERT_EQ(b.code, 0) << b.out;
  CliResult r = kiln("compare " + eng + " --model " + model_ + " --onnxrt --mark-all --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json doc = parse_json(r);
  ASSERT_TRUE(doc["first_divergence"].is_object()) << r.out;
  const std::string first = doc["first_divergence"]["name"];
  EXPECT_TRUE(first == "c2" || first == "r2") << r.out;
  for (const auto& row : doc["per_layer"]) {
    if (row["name"] == first) break;
    EXPECT_GT(row["cosine"].get<double>(), 0.99999) << row.dump();
  }
}

// Outputs saved with --onnxrt and compared later with --load-outputs (only the engine runs) give the
// same numbers as the direct comparison; --save-target-outputs loads as a reference too.
TEST_F(CompareOrtTest, SavedOutputsReproduceTheDirectComparison) {
  REQUIRE_ORT();
  const std::string eng = fp32_engine();
  CliResult direct = kiln("compare " + eng + " --model " + model_ + " --onnxrt --mark-all --samples 2 --save-inputs " +
                          path("in.npz") + " --save-outputs " + path("ref.npz") + " --save-target-outputs " +
                          path("got.npz") + " --json");
  ASSERT_EQ(direct.code, 0) << direct.out;
  json d = parse_json(direct);
  EXPECT_EQ(d["saved"]["outputs"], path("ref.npz"));

  // No ONNX Runtime is needed to use the files.
  ScopedEnv no_ort("KILN_ORT_MODULES", "/nonexistent");
  CliResult later = kiln("compare " + eng + " --model " + model_ + " --mark-all --load-inputs " + path("in.npz") +
                         " --load-outputs " + path("ref.npz") + " --json");
  ASSERT_EQ(later.code, 0) << later.out;
  json l = parse_json(later);
  EXPECT_EQ(l["reference"]["kind"], "loaded");
  EXPECT_EQ(l["runs"], 2);
  ASSERT_EQ(l["outputs"].size(), 1u);
  for (const char* key : {"max_abs", "max_rel", "mean_abs", "cosine"})
    EXPECT_EQ(l["outputs"][0][key].get<double>(), d["outputs"][0][key].get<double>()) << key;
  ASSERT_EQ(l["per_layer"].size(), d["per_layer"].size()) << later.out;
  for (size_t i = 0; i < d["per_layer"].size(); ++i) {
    EXPECT_EQ(l["per_layer"][i]["name"], d["per_layer"][i]["name"]);
    EXPECT_EQ(l["per_layer"][i]["max_abs"].get<double>(), d["per_layer"][i]["max_abs"].get<double>());
  }

  // --input reads a --save-inputs file the same way.
  CliResult via_input = kiln("compare " + eng + " --model " + model_ + " --input " + path("in.npz") +
                             " --load-outputs " + path("ref.npz") + " --json");
  ASSERT_EQ(via_input.code, 0) << via_input.out;
  EXPECT_EQ(parse_json(via_input)["outputs"][0]["max_abs"].get<double>(), d["outputs"][0]["max_abs"].get<double>());

  // The engine against its own saved outputs: identical.
  CliResult self = kiln("compare " + eng + " --model " + model_ + " --load-inputs " + path("in.npz") +
                        " --load-outputs " + path("got.npz") + " --atol 0 --json");
  ASSERT_EQ(self.code, 0) << self.out;
  EXPECT_EQ(parse_json(self)["outputs"][0]["max_abs"].get<double>(), 0.0);
}

// Saving and loading work with Kiln's own reference too (no ONNX Runtime involved): the saved inputs are
// the inputs compared, and a tampered outputs file is rejected with the tensor it concerns.
TEST_F(CompareOrtTest, LoadedOutputsAreValidated) {
  const std::string eng = fp32_engine();
  CliResult save = kiln("compare " + eng + " --model " + model_ + " --samples 2 --save-inputs " + path("in.npz") +
                        " --save-outputs " + path("ref.npz"));
  ASSERT_EQ(save.code, 0) << save.out;
  std::map<std::string, Tensor> in, ref;
  for (auto& [name, t] : read_npz(path("in.npz"))) in[name] = t;
  for (auto& [name, t] : read_npz(path("ref.npz"))) ref[name] = t;
  ASSERT_TRUE(in.count("0/x") && in.count("1/x")) << save.out;
  EXPECT_EQ(in.at("0/x").shape(), (std::vector<int64_t>{2, 3, 8, 8}));  // the engine's batch
  ASSERT_TRUE(ref.count("0/y") && ref.count("1/y"));
  // Softmax rows sum to one.
  for (int row = 0; row < 2; ++row) {
    double sum = 0;
    for (int j = 0; j < 10; ++j) sum += ref.at("0/y").data<float>()[row * 10 + j];
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
  const std::string base = "compare " + eng + " --model " + model_ + " --load-inputs " + path("in.npz");

  // ref.npz with member `from` renamed to `to` (or dropped when `to` is empty) or given another tensor.
  auto tampered = [&](const std::string& file, const std::string& from, const std::string& to,
                      std::optional<Tensor> replace = std::nullopt) {
    NamedTensors out;
    for (const auto& [name, t] : ref) {
      if (name != from)
        out.emplace_back(name, t);
      else if (!to.empty())
        out.emplace_back(to, replace ? *replace : t);
    }
    write_npz(path(file), out);
    return path(file);
  };
  // A missing output (set 1 holds another name).
  CliResult missing = kiln(base + " --load-outputs " + tampered("missing.npz", "1/y", "1/z"));
  EXPECT_EQ(missing.code, 1) << missing.out;
  EXPECT_NE(missing.out.find("missing.npz: input set 1 has no output 'y' of " + model_ + " (it holds: z)"),
            std::string::npos)
      << missing.out;
  // A missing set.
  CliResult no_set = kiln(base + " --load-outputs " + tampered("noset.npz", "1/y", ""));
  EXPECT_EQ(no_set.code, 1) << no_set.out;
  EXPECT_NE(no_set.out.find("holds tensors of 1 input sets but was saved from 2"), std::string::npos) << no_set.out;
  // A wrong shape.
  CliResult shape = kiln(base + " --load-outputs " + tampered("shape.npz", "0/y", "0/y", Tensor(DType::kF32, {2, 5})));
  EXPECT_EQ(shape.code, 1) << shape.out;
  EXPECT_NE(shape.out.find("output 'y' of input set 0 has shape 2x5"), std::string::npos) << shape.out;
  EXPECT_NE(shape.out.find("produced 2x10"), std::string::npos) << shape.out;
  // A wrong dtype.
  CliResult dtype = kiln(base + " --load-outputs " + tampered("dtype.npz", "0/y", "0/y", Tensor(DType::kF64, {2, 10})));
  EXPECT_EQ(dtype.code, 1) << dtype.out;
  EXPECT_NE(dtype.out.find("output 'y' of input set 0 is f64 but " + eng + " produced f32"), std::string::npos)
      << dtype.out;
  // A member that is not SET/NAME.
  NamedTensors odd = {{"y", ref.at("0/y")}};
  write_npz(path("odd.npz"), odd);
  CliResult bad_member = kiln(base + " --load-outputs " + path("odd.npz"));
  EXPECT_EQ(bad_member.code, 1) << bad_member.out;
  EXPECT_NE(bad_member.out.find("member 'y' is not SET/NAME"), std::string::npos) << bad_member.out;
  // Other inputs than the outputs were computed from.
  CliResult other =
      kiln("compare " + eng + " --model " + model_ + " --seed 7 --samples 2 --load-outputs " + path("ref.npz"));
  EXPECT_EQ(other.code, 1) << other.out;
  EXPECT_NE(other.out.find("input set 0 is not the one these outputs were computed from"), std::string::npos)
      << other.out;
  // Fewer input sets than the file holds.
  CliResult fewer = kiln(base + " --samples 1 --load-outputs " + path("ref.npz"));
  EXPECT_EQ(fewer.code, 1) << fewer.out;
  EXPECT_NE(fewer.out.find("holds the outputs of 2 input sets but 1 were compared"), std::string::npos) << fewer.out;
  // --mark-all needs intermediates in the file.
  CliResult no_layers = kiln(base + " --mark-all --load-outputs " + path("ref.npz"));
  EXPECT_EQ(no_layers.code, 1) << no_layers.out;
  EXPECT_NE(no_layers.out.find("holds no intermediate tensors"), std::string::npos) << no_layers.out;
}

TEST_F(CompareOrtTest, MissingOnnxRuntimeIsAClearError) {
  {
    ScopedEnv modules("KILN_ORT_MODULES", "/nonexistent");
    CliResult r = kiln("compare " + model_ + " --model " + model_ + " --onnxrt");
    if (r.out.find("node (Node.js) not found") != std::string::npos) GTEST_SKIP() << "no node on PATH";
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("kiln: error (I/O error): ONNX Runtime is not available"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("/nonexistent"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("scripts/setup-bench.sh"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("npm install --ignore-scripts"), std::string::npos) << r.out;
  }
  {
    ScopedEnv node("KILN_NODE", path("no-such-node"));
    CliResult r = kiln("compare " + model_ + " --model " + model_ + " --onnxrt");
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("KILN_NODE=" + path("no-such-node") + " is not an executable file"), std::string::npos)
        << r.out;
  }
}

// A model ONNX Runtime rejects (an op of Kiln's own domain) reports ONNX Runtime's message.
TEST_F(CompareOrtTest, OnnxRuntimeFailureIsReported) {
  REQUIRE_ORT();
  Model m;
  m.opsets[""] = 17;
  m.opsets["kiln"] = 1;
  m.graph.inputs = {"x"};
  m.graph.outputs = {"y"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(4)}};
  m.graph.nodes.push_back(Node{"gelu", "Gelu", "kiln", {"x"}, {"y"}, {}});
  const std::string model = path("kiln_gelu.onnx");
  save_onnx(m, model);
  CliResult r = kiln("compare " + model + " --model " + model + " --onnxrt");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("ONNX Runtime failed on " + model), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Gelu"), std::string::npos) << r.out;
}

TEST_F(CompareOrtTest, BadFlagsExitTwo) {
  const std::string base = "compare " + model_ + " --model " + model_;
  for (const std::string flags :
       {" --onnxrt --reference cpu", " --onnxrt --load-outputs a.npz", " --save-outputs out.txt",
        " --onnxrt-opt-level fast", " --load-inputs a.npz --input b.npz", " --load-inputs a.npz --calib b.npz",
        " --reference loaded", " --load-outputs a.npz --save-outputs b.npz"}) {
    CliResult r = kiln(base + flags);
    EXPECT_EQ(r.code, 2) << flags << "\n" << r.out;
  }
  CliResult opt = kiln(base + " --onnxrt-opt-level all");
  EXPECT_EQ(opt.code, 1) << opt.out;
  EXPECT_NE(opt.out.find("--onnxrt-opt-level needs --onnxrt"), std::string::npos) << opt.out;
}

// Exported real models (scripts/export-models.sh): Kiln's fp32 build agrees with ONNX Runtime.
void expect_agrees_with_ort(const std::string& name, const std::string& inputs) {
  const fs::path dir = kiln_test::model_dir();
  const fs::path model = dir / (name + ".onnx");
  if (dir.empty() || !fs::exists(model)) GTEST_SKIP() << name << " not exported (scripts/export-models.sh)";
  CliResult r = kiln_test::run_kiln_cli("compare " + model.string() + " --model " + model.string() + " --onnxrt " +
                                        inputs + " --min-cosine 0.9999 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json doc = parse_json(r);
  ASSERT_FALSE(doc["outputs"].empty()) << r.out;
  for (const auto& o : doc["outputs"]) EXPECT_GT(o["cosine"].get<double>(), 0.9999) << o.dump();
}

TEST(CompareOrtModels, ResNet50Fp32BuildAgreesWithOnnxRuntime) {
  REQUIRE_ORT();
  // The exported image (resnet50.io.npz also holds PyTorch's output, which --input ignores).
  const fs::path io = kiln_test::model_dir() / "resnet50.io.npz";
  expect_agrees_with_ort("resnet50", fs::exists(io) ? "--input " + io.string() : std::string());
}

TEST(CompareOrtModels, BertFp32BuildAgreesWithOnnxRuntime) {
  REQUIRE_ORT();
  // 16 tokens of ids 0/1 with a 0/1 mask: short enough to keep the test quick.
  expect_agrees_with_ort("bert", "--shapes input_ids:1x16,attention_mask:1x16 --int-range 0,2");
}
