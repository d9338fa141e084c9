// The kiln command end to end: inspect (text and JSON), run with given and generated inputs (on
// the cpu backend and the reference executor), and the errors users meet (bad flags, wrong input
// shape or dtype, missing files).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include "onnx/onnx_import.h"
#include "util/npy.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace kiln;

namespace {

using Result = kiln_test::CliResult;
Result kiln_cli(const std::string& args) { return kiln_test::run_kiln_cli(args); }

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_cli_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = (dir_ / "m.onnx").string();
    save_onnx(kiln_test::add_relu_model(), model_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
  std::string model_;
};

}  // namespace

TEST_F(CliTest, InspectText) {
  Result r = kiln_cli("inspect " + model_);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("x: f32[batch,3]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("y: f32[batch,3]"), std::string::npos) << r.out;  // inferred, batch kept
  EXPECT_NE(r.out.find("Add: 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("unsupported: none"), std::string::npos) << r.out;
}

TEST_F(CliTest, InspectJson) {
  Result r = kiln_cli("inspect --json " + model_);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("\"batch\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"parameters\": 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"unsupported\": []"), std::string::npos) << r.out;
}

TEST_F(CliTest, RunWithGivenInputWritesOutputs) {
  write_npy(dir_ / "x.npy", Tensor::from_vector<float>({2, 3}, {0, 0, 0, 1, 10, -1}));
  for (const std::string backend : {"cpu", "reference"}) {  // cpu is the default
    SCOPED_TRACE(backend);
    const std::string flag = backend == "cpu" ? "" : " --backend reference";
    Result r = kiln_cli("run " + model_ + flag + " --input x=" + (dir_ / "x.npy").string() + " -o " +
                        (dir_ / backend).string());
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("backend: " + backend), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("run "), std::string::npos) << r.out;
    Tensor y = read_npy(dir_ / backend / "y.npy");
    ASSERT_EQ(y.shape(), (std::vector<int64_t>{2, 3}));
    auto v = y.values<float>();
    EXPECT_EQ(std::vector<float>(v.begin(), v.end()), (std::vector<float>{1, 0, 0.5f, 2, 5, 0}));
  }
}

TEST_F(CliTest, RunGeneratesSeededInputsFromShapes) {
  Result a = kiln_cli("run " + model_ + " --shapes x:4x3 --seed 7 --save-inputs -o " + (dir_ / "a").string());
  Result b = kiln_cli("run " + model_ + " --shapes x:4x3 --seed 7 -o " + (dir_ / "b").string());
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  Tensor x = read_npy(dir_ / "a" / "input.x.npy");
  Tensor ya = read_npy(dir_ / "a" / "y.npy"), yb = read_npy(dir_ / "b" / "y.npy");
  ASSERT_EQ(x.shape(), (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(ya.to_double_vector(), yb.to_double_vector());  // same seed, same data
  const float w[3] = {1, -5, 0.5f};
  auto xv = x.values<float>();
  auto yv = ya.values<float>();
  for (int i = 0; i < 12; ++i) EXPECT_FLOAT_EQ(yv[i], std::max(0.0f, xv[i] + w[i % 3]));
}

TEST_F(CliTest, BadInputs) {
  write_npy(dir_ / "bad_shape.npy", Tensor(DType::kF32, {2, 4}));
  Result r = kiln_cli("run " + model_ + " --input x=" + (dir_ / "bad_shape.npy").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("input 'x' has shape 2x4, expected [batch,3]"), std::string::npos) << r.out;

  write_npy(dir_ / "bad_dtype.npy", Tensor(DType::kI64, {2, 3}));
  r = kiln_cli("run " + model_ + " --input x=" + (dir_ / "bad_dtype.npy").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("input 'x' has dtype i64, expected f32"), std::string::npos) << r.out;

  r = kiln_cli("run " + model_ + " --input x=" + (dir_ / "nothere.npy").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("nothere.npy"), std::string::npos) << r.out;

  r = kiln_cli("run " + model_ + " --shapes x:4xq");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("bad dimension 'q'"), std::string::npos) << r.out;

  r = kiln_cli("run " + model_ + " --shapes x:4x5");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("static shape [batch,3]"), std::string::npos) << r.out;

  r = kiln_cli("run " + model_ + " --shapes z:4x3");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("'z' is not an input"), std::string::npos) << r.out;

  r = kiln_cli("run " + (dir_ / "missing.onnx").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("missing.onnx: cannot open"), std::string::npos) << r.out;

  r = kiln_cli("frobnicate");
  EXPECT_EQ(r.code, 2);  // bad flags and subcommands exit 2
  r = kiln_cli("run");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("model"), std::string::npos) << r.out;
  r = kiln_cli("run " + model_ + " --no-such-flag");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--no-such-flag"), std::string::npos) << r.out;
  r = kiln_cli("run " + model_ + " --backend gpu");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--backend"), std::string::npos) << r.out;
}

TEST(CliOptimize, FusesTheExampleAndKeepsItsOutputs) {
  const fs::path dir = fs::temp_directory_path() / ("kiln_cli_opt_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string example = std::string(KILN_SOURCE_DIR) + "/examples/tiny_cnn.onnx";
  const std::string optimized = (dir / "opt.onnx").string();
  Result r = kiln_cli("optimize " + example + " -o " + optimized);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("nodes: 9 -> "), std::string::npos) << r.out;
  // Each Conv (BatchNorm already folded by the exporter) absorbs its Relu.
  EXPECT_NE(r.out.find("kiln::FusedConv '/features/features.0/Conv' <- Conv:/features/features.0/Conv + Relu:"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("kiln::FusedMatMul"), std::string::npos) << r.out;

  // The optimized graph, written as ONNX with kiln-domain ops, loads and computes the same outputs.
  Result a = kiln_cli("run " + example + " --shapes image:3x1x28x28 --seed 5 -o " + (dir / "a").string());
  Result b = kiln_cli("run " + optimized + " --shapes image:3x1x28x28 --seed 5 -o " + (dir / "b").string());
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  auto ya = read_npy(dir / "a" / "probabilities.npy").to_double_vector();
  auto yb = read_npy(dir / "b" / "probabilities.npy").to_double_vector();
  ASSERT_EQ(ya.size(), 30u);
  ASSERT_EQ(ya.size(), yb.size());
  for (size_t i = 0; i < ya.size(); ++i) EXPECT_NEAR(ya[i], yb[i], 1e-6) << i;

  r = kiln_cli("optimize " + example + " --disable-pass no-such-pass");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("unknown pass 'no-such-pass'"), std::string::npos) << r.out;
  r = kiln_cli("optimize " + example + " --opt-level 9");
  EXPECT_EQ(r.code, 2);
  fs::remove_all(dir);
}
