// `kiln build --int8` from the command line on a small CNN (Conv-Relu-Conv-Relu-MaxPool-Conv with a
// residual Add, GlobalAveragePool, Gemm): the int8 engine (inspect, compare against the float
// model), the calibration cache (written, reused without data, byte-identical engines), the
// accuracy guard and --layer-precision, and a clear error for every bad input: calibration data,
// caches, precision flags, and explicit Q/DQ models with invalid quantization parameters.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

#include "onnx/onnx_import.h"
#include "test_support.h"
#include "util/mapped_file.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using namespace kiln;

namespace {

using Result = kiln_test::CliResult;
Result kiln_cli(const std::string& args) { return kiln_test::run_kiln_cli(args); }

using kiln_test::seeded;

// x[N,3,8,8] -> conv1(3->8)+relu1 -> conv2(8->8)+relu2 -> pool(2x2) -> conv3(8->8) -> add(conv3, pool)
//   -> gap -> flat -> fc (Gemm 8->10) -> y[N,10]
Model small_cnn(int64_t opset = 17) {
  kiln_test::ModelBuilder b(opset);
  b.input("x", DType::kF32, Shape{Dim::sym("N"), Dim(3), Dim(8), Dim(8)})
      .init("w1", seeded({8, 3, 3, 3}, 1))
      .init("b1", seeded({8}, 2))
      .init("w2", seeded({8, 8, 3, 3}, 3))
      .init("w3", seeded({8, 8, 3, 3}, 4))
      .init("b3", seeded({8}, 5))
      .init("fw", seeded({8, 10}, 6))
      .init("fb", seeded({10}, 7));
  const auto pads = Attribute::of_ints({1, 1, 1, 1});
  auto& n = b.m.graph.nodes;
  n.push_back(Node{"conv1", "Conv", "", {"x", "w1", "b1"}, {"c1"}, {{"pads", pads}}});
  n.push_back(Node{"relu1", "Relu", "", {"c1"}, {"r1"}, {}});
  n.push_back(Node{"conv2", "Conv", "", {"r1", "w2"}, {"c2"}, {{"pads", pads}}});
  n.push_back(Node{"relu2", "Relu", "", {"c2"}, {"r2"}, {}});
  n.push_back(Node{"pool", "MaxPool", "", {"r2"}, {"p"},
                   {{"kernel_shape", Attribute::of_ints({2, 2})}, {"strides", Attribute::of_ints({2, 2})}}});
  n.push_back(Node{"conv3", "Conv", "", {"p", "w3", "b3"}, {"c3"}, {{"pads", pads}}});
  n.push_back(Node{"add", "Add", "", {"c3", "p"}, {"a"}, {}});
  n.push_back(Node{"gap", "GlobalAveragePool", "", {"a"}, {"g"}, {}});
  n.push_back(Node{"flat", "Flatten", "", {"g"}, {"f"}, {}});
  n.push_back(Node{"fc", "Gemm", "", {"f", "fw", "fb"}, {"y"}, {}});
  b.m.graph.outputs = {"y"};
  return b.m;
}

// y = DequantizeLinear(QuantizeLinear(x, s_q, zp), s_dq, zp) of x f32[1,4]: the smallest explicit Q/DQ model.
Model qdq_pair(float q_scale, float dq_scale, Tensor zero_point) {
  kiln_test::ModelBuilder b(17);
  b.input("x", DType::kF32, Shape{Dim(1), Dim(4)})
      .init("sq", Tensor::scalar<float>(q_scale))
      .init("sdq", Tensor::scalar<float>(dq_scale))
      .init("zp", std::move(zero_point));
  b.m.graph.nodes.push_back(Node{"q", "QuantizeLinear", "", {"x", "sq", "zp"}, {"xq"}, {}});
  b.m.graph.nodes.push_back(Node{"dq", "DequantizeLinear", "", {"xq", "sdq", "zp"}, {"y"}, {}});
  b.m.graph.outputs = {"y"};
  return b.m;
}

class Int8CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_int8_cli_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = save(small_cnn(), "cnn.onnx");
    calib_ = path("calib.npz");
    write_npz(calib_, {{"x", seeded({32, 3, 8, 8}, 100, 2.f)}});
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string save(const Model& m, const std::string& name) {
    save_onnx(m, path(name));
    return path(name);
  }
  // `kiln build MODEL -o ENGINE --shapes x:1x3x8x8 --no-timing` plus `flags`.
  Result build(const std::string& flags, const std::string& engine = "e.kiln", const std::string& model = "") {
    return kiln_cli("build " + (model.empty() ? model_ : model) + " -o " + path(engine) +
                    " --shapes x:1x3x8x8 --no-timing " + flags);
  }
  // The op `inspect` shows for node `name` of an engine.
  std::string op_of(const std::string& engine, const std::string& name) {
    Result r = kiln_cli("inspect " + path(engine));
    EXPECT_EQ(r.code, 0) << r.out;
    std::smatch m;
    if (std::regex_search(r.out, m, std::regex("\n  " + name + " +([A-Za-z:]+) "))) return m[1];
    ADD_FAILURE() << "no node '" << name << "' in\n" << r.out;
    return "";
  }
  // Expects exit 1 and every one of `messages` in the output.
  static void expect_error(const Result& r, std::initializer_list<std::string> messages, const std::string& what) {
    EXPECT_EQ(r.code, 1) << what << "\n" << r.out;
    EXPECT_NE(r.out.find("kiln: error"), std::string::npos) << what << "\n" << r.out;
    for (const auto& m : messages) EXPECT_NE(r.out.find(m), std::string::npos) << what << ": " << m << "\n" << r.out;
  }

  fs::path dir_;
  std::string model_, calib_;
};

}  // namespace

TEST_F(Int8CliTest, BuildInspectAndCompare) {
  Result r = build("--int8 --calib " + calib_);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("calibration: 32 samples, entropy"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("int8: 4 layers"), std::string::npos) << r.out;
  Result i = kiln_cli("inspect " + path("e.kiln"));
  ASSERT_EQ(i.code, 0) << i.out;
  EXPECT_NE(i.out.find("kiln::QConv: 3"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("kiln::QMatMul: 1"), std::string::npos) << i.out;
  for (const char* conv : {"conv1", "conv2", "conv3"}) EXPECT_EQ(op_of("e.kiln", conv), "kiln::QConv") << conv;
  Result c = kiln_cli("compare " + path("e.kiln") + " --model " + model_ + " --calib " + calib_ + " --min-cosine 0.99");
  EXPECT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("32 runs, 32 samples"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("PASSED"), std::string::npos) << c.out;
}

TEST_F(Int8CliTest, CalibrationCacheIsWrittenAndReused) {
  const std::string cache = path("calib.cache");
  Result a = build("--int8 --calib " + calib_ + " --calib-cache " + cache, "a.kiln");
  ASSERT_EQ(a.code, 0) << a.out;
  EXPECT_NE(a.out.find("calibration cache written: " + cache), std::string::npos) << a.out;
  ASSERT_TRUE(fs::exists(cache));
  std::ifstream f(cache);
  std::string first;
  std::getline(f, first);
  EXPECT_EQ(first.rfind("kiln-calibration", 0), 0u) << first;
  // No data: the cache alone, and the same engine byte for byte.
  Result b = build("--int8 --calib-cache " + cache, "b.kiln");
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("calibration: cache " + cache + " (entropy, 32 samples)"), std::string::npos) << b.out;
  EXPECT_EQ(read_file_bytes(path("a.kiln")), read_file_bytes(path("b.kiln")));
  // With data too, an existing cache wins (no calibration run).
  Result c = build("--int8 --calib " + calib_ + " --calib-cache " + cache, "c.kiln");
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("calibration: cache"), std::string::npos) << c.out;
  EXPECT_EQ(read_file_bytes(path("a.kiln")), read_file_bytes(path("c.kiln")));
}

TEST_F(Int8CliTest, BadCalibrationData) {
  fs::create_directories(path("empty"));
  expect_error(build("--int8 --calib " + path("empty")), {"calibration folder", "has no .npy or .npz files"},
               "empty folder");
  write_npz(path("f64.npz"), {{"x", Tensor(DType::kF64, {4, 3, 8, 8})}});
  expect_error(build("--int8 --calib " + path("f64.npz")),
               {"f64.npz': member 'x' has dtype f64, the model's input 'x' is f32"}, "wrong dtype");
  write_npz(path("shape.npz"), {{"x", Tensor(DType::kF32, {4, 3, 9, 9})}});
  expect_error(build("--int8 --calib " + path("shape.npz")),
               {"member 'x' has shape 4x3x9x9", "[N,3,8,8]", "dimension 2 must be 8"}, "wrong shape");
  write_npz(path("name.npz"), {{"z", Tensor(DType::kF32, {4, 3, 8, 8})}});
  expect_error(build("--int8 --calib " + path("name.npz")), {"member 'z' is not an input of the model"}, "wrong name");
  expect_error(build("--int8 --calib " + path("nothere.npz")), {"nothere.npz' does not exist"}, "missing");
  EXPECT_FALSE(fs::exists(path("e.kiln")));
}

TEST_F(Int8CliTest, BadCalibrationCaches) {
  const std::string cache = path("good.cache");
  ASSERT_EQ(build("--int8 --calib " + calib_ + " --calib-cache " + cache).code, 0);
  std::stringstream ss;
  ss << std::ifstream(cache).rdbuf();
  const std::string text = ss.str();
  // A garbage line: the file and line are named.
  const int lines = static_cast<int>(std::count(text.begin(), text.end(), '\n'));
  std::ofstream(path("garbage.cache")) << text << "garbage line here\n";
  expect_error(build("--int8 --calib-cache " + path("garbage.cache")),
               {"calibration cache", "garbage.cache:" + std::to_string(lines + 1), "'garbage' is not a number"},
               "garbage line");
  std::ofstream(path("text.cache")) << "hello\n";
  expect_error(build("--int8 --calib-cache " + path("text.cache")), {"text.cache:1: not a Kiln calibration cache"},
               "not a cache");
  // Model A's cache with model B (one more node): refused, naming the cache.
  Model other = small_cnn();
  other.graph.nodes.push_back(Node{"relu_out", "Relu", "", {"y"}, {"y2"}, {}});
  other.graph.outputs = {"y2"};
  expect_error(build("--int8 --calib-cache " + cache, "b.kiln", save(other, "b.onnx")),
               {"calibration cache '" + cache + "' was made for another model", "delete it"}, "another model");
}

TEST_F(Int8CliTest, BadPrecisionFlags) {
  const std::string c = " --calib " + calib_;
  expect_error(build("--int8" + c + " --layer-precision conv9:fp32"),
               {"--layer-precision: the model has no layer (node) named 'conv9'"}, "unknown layer");
  expect_error(build("--int8" + c + " --layer-precision conv2:fp64"), {"conv2:fp64: the precision must be"},
               "bad precision");
  expect_error(build("--int8"), {"--int8 needs calibration data (--calib DATA) or an existing calibration cache"},
               "no data");
  expect_error(build("--calib " + calib_), {"--calib and --calib-cache need --int8"}, "--calib without --int8");
  expect_error(build("--int8" + c + " --accuracy-budget 150%"), {"--accuracy-budget must be in [0%, 100%), got '150%'"},
               "budget 150%");
  expect_error(build("--accuracy-budget 1%"), {"--accuracy-budget needs --int8"}, "budget without --int8");
  EXPECT_FALSE(fs::exists(path("e.kiln")));
}

TEST_F(Int8CliTest, AccuracyGuardAndLayerPrecision) {
  // A 0% budget can never be met by int8, so the guard measures every layer and prints them.
  Result r = build("--int8 --calib " + calib_ + " --accuracy-budget 0% --accuracy-metric cosine");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("accuracy guard: cosine >= "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("per layer, most sensitive first"), std::string::npos) << r.out;
  for (const char* layer : {"conv1", "conv2", "conv3", "fc"})
    EXPECT_TRUE(std::regex_search(r.out, std::regex("\n +(fp32|int8) +[0-9.]+ +Fused[A-Za-z]+ +" + std::string(layer))))
        << layer << "\n" << r.out;

  // --layer-precision keeps conv2 in fp32: a FusedConv between int8 layers.
  Result l = build("--int8 --calib " + calib_ + " --layer-precision conv2:fp32", "lp.kiln");
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_NE(l.out.find("int8: 3 layers, 1 kept in fp32"), std::string::npos) << l.out;
  EXPECT_EQ(op_of("lp.kiln", "conv2"), "kiln::FusedConv");
  EXPECT_EQ(op_of("lp.kiln", "conv1"), "kiln::QConv");
  EXPECT_EQ(op_of("lp.kiln", "conv3"), "kiln::QConv");
  Result c =
      kiln_cli("compare " + path("lp.kiln") + " --model " + model_ + " --calib " + calib_ + " --min-cosine 0.99");
  EXPECT_EQ(c.code, 0) << c.out;
}

// Opset 11 has no per-axis DequantizeLinear: the int8 build must still work.
TEST_F(Int8CliTest, ImplicitInt8BelowOpset13) {
  Result r = build("--int8 --calib " + calib_, "e11.kiln", save(small_cnn(11), "cnn11.onnx"));
  ASSERT_EQ(r.code, 0) << r.out;  // per-tensor weight scales below opset 13
  EXPECT_EQ(op_of("e11.kiln", "conv1"), "kiln::QConv");
}

// Explicit Q/DQ models with invalid parameters: a zero point whose type QuantizeLinear cannot
// produce (int32, value 300: out of range for the 8-bit types the spec allows), and a scale of 0.
TEST_F(Int8CliTest, QdqModelWithBadZeroPoint) {
  const std::string m = save(qdq_pair(0.1f, 0.1f, Tensor::scalar<int32_t>(300)), "zp.onnx");
  Result b = kiln_cli("build " + m + " -o " + path("zp.kiln") + " --no-timing");
  expect_error(b, {"QuantizeLinear", "i32"}, "build");
}

// DequantizeLinear of an int32 tensor (a bias) with zero point 300: the spec requires 0 for int32.
TEST_F(Int8CliTest, QdqModelWithNonzeroInt32DequantizeZeroPoint) {
  kiln_test::ModelBuilder b(17);
  b.input("x", DType::kI32, Shape{Dim(1), Dim(4)})
      .init("s", Tensor::scalar<float>(0.1f))
      .init("zp", Tensor::scalar<int32_t>(300))
      .node("DequantizeLinear", {"x", "s", "zp"}, {"y"}, {}, "dq");
  const std::string m = save(b.m, "dq32.onnx");
  Result r = kiln_cli("build " + m + " -o " + path("dq32.kiln") + " --no-timing");
  expect_error(r, {"DequantizeLinear node 'dq'", "zero point"}, "build");
}

TEST_F(Int8CliTest, QdqModelWithZeroScale) {
  Tensor zp(DType::kU8, {});
  zp.mutable_data<uint8_t>()[0] = 0;
  const std::string m = save(qdq_pair(0.1f, 0.f, zp), "zs.onnx");
  Result b = kiln_cli("build " + m + " -o " + path("zs.kiln") + " --no-timing");
  expect_error(b, {"DequantizeLinear", "scale", "positive"}, "build");
}
