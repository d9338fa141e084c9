// Accuracy metrics (quant::ErrorStats on hand-computed vectors) and `kiln compare` end to end:
// a model against itself, an engine against its model, a different model failing the checks,
// --per-layer finding the first divergent tensor, input sources, and bad flags.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "onnx/onnx_import.h"
#include "quant/metrics.h"
#include "test_support.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using namespace kiln;
using kiln::quant::ErrorStats;
using json = nlohmann::json;

namespace {

Tensor f32(std::vector<int64_t> shape, std::vector<float> v) { return Tensor::from_vector<float>(std::move(shape), v); }

}  // namespace

TEST(Metrics, CosineOfTwoVectors) {
  ErrorStats s;
  s.add(f32({2}, {1, 0}), f32({2}, {1, 1}));
  EXPECT_NEAR(s.cosine, 1.0 / std::sqrt(2.0), 1e-12);
  EXPECT_DOUBLE_EQ(s.max_abs, 1.0);
  EXPECT_DOUBLE_EQ(s.max_rel, 1.0);  // |0 - 1| / 1
  EXPECT_DOUBLE_EQ(s.mean_abs(), 0.5);
  EXPECT_EQ(s.count, 2);
  EXPECT_FALSE(s.has_nan);
}

TEST(Metrics, CosineAccumulatesOverSamplesNotPerSampleMean) {
  ErrorStats s;
  s.add(f32({2}, {2, 0}), f32({2}, {2, 0}));  // cosine 1 alone
  s.add(f32({2}, {0, 1}), f32({2}, {1, 0}));  // cosine 0 alone
  // dot = 4, |a|^2 = 5, |b|^2 = 5: 0.8 (the mean of per-sample cosines would be 0.5).
  EXPECT_NEAR(s.cosine, 0.8, 1e-12);
  EXPECT_EQ(s.samples, 2);
  EXPECT_EQ(s.count, 4);
}

TEST(Metrics, TopOneAgreementPerRow) {
  ErrorStats s;
  // Row 0: argmax 1 on both sides; row 1: 0 vs 1.
  s.add(f32({2, 3}, {1, 3, 2, 5, 0, 1}), f32({2, 3}, {0, 4, 1, 0, 9, 1}));
  EXPECT_EQ(s.top1_agree, 1);
  EXPECT_EQ(s.top1_total, 2);
  EXPECT_DOUBLE_EQ(s.top1_rate(), 0.5);
  // A last dim of 1 has no top-1.
  ErrorStats single;
  single.add(f32({3, 1}, {1, 2, 3}), f32({3, 1}, {1, 2, 3}));
  EXPECT_FALSE(single.has_top1());
  EXPECT_EQ(single.top1_total, 0);
}

TEST(Metrics, RelativeErrorUsesFloorForZeros) {
  ErrorStats s;
  s.add(f32({2}, {1.5f, 0}), f32({2}, {1, 0}));
  EXPECT_DOUBLE_EQ(s.max_abs, 0.5);
  EXPECT_DOUBLE_EQ(s.max_rel, 0.5);  // 0.5 / 1
  ErrorStats z;
  z.add(Tensor::from_vector<double>({1}, {1e-3}), Tensor::from_vector<double>({1}, {0.0}));
  EXPECT_NEAR(z.max_rel, 1e-3 / 1e-6, 1e-6);  // |b| below the 1e-6 floor
  EXPECT_DOUBLE_EQ(z.max_want, 0.0);
}

TEST(Metrics, ToleranceCountsElementsOutside) {
  ErrorStats s;
  s.set_tolerance(0.1, 0.1);
  // |a-b| = 0.25, 0.5, 0.05 against limits 0.1 + 0.1*|b| = 0.2, 0.3, 0.1.
  s.add(Tensor::from_vector<double>({3}, {1.25, 2.5, 0.05}), Tensor::from_vector<double>({3}, {1, 2, 0}));
  EXPECT_EQ(s.tolerance_failures, 2);
  EXPECT_NEAR(s.worst_excess, 0.2, 1e-12);  // 0.5 - 0.3
  ErrorStats off;  // no tolerance set: nothing counted
  off.add(f32({1}, {5}), f32({1}, {0}));
  EXPECT_EQ(off.tolerance_failures, 0);
}

TEST(Metrics, ZerosNansAndMixedDtypes) {
  ErrorStats zeros;
  zeros.add(f32({2}, {0, 0}), f32({2}, {0, 0}));
  EXPECT_DOUBLE_EQ(zeros.cosine, 1.0);
  ErrorStats one_zero;
  one_zero.add(f32({2}, {0, 0}), f32({2}, {1, 0}));
  EXPECT_DOUBLE_EQ(one_zero.cosine, 0.0);

  ErrorStats nan;
  nan.set_tolerance(1, 1);
  nan.add(f32({2}, {std::numeric_limits<float>::quiet_NaN(), 1}), f32({2}, {1, 1}));
  EXPECT_TRUE(nan.has_nan);
  EXPECT_EQ(nan.tolerance_failures, 1);
  EXPECT_DOUBLE_EQ(nan.max_abs, 0.0);  // the NaN is left out of the sums

  ErrorStats inf;  // the same infinity on both sides is no error
  const float i = std::numeric_limits<float>::infinity();
  inf.add(f32({2}, {i, 1}), f32({2}, {i, 2}));
  EXPECT_DOUBLE_EQ(inf.max_abs, 1.0);
  EXPECT_FALSE(inf.has_nan);

  // bf16 (1.5 is exact) against f32.
  Tensor b = Tensor::from_vector<BFloat16>({2}, {BFloat16(1.5f), BFloat16(-2.0f)});
  ErrorStats mixed;
  mixed.add(b, f32({2}, {1.5f, -2.0f}));
  EXPECT_DOUBLE_EQ(mixed.max_abs, 0.0);
  EXPECT_NEAR(mixed.cosine, 1.0, 1e-12);
}

TEST(Metrics, ShapeMismatchThrows) {
  ErrorStats s;
  try {
    s.add(f32({2, 2}, {1, 2, 3, 4}), f32({4}, {1, 2, 3, 4}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("2x2"), std::string::npos) << e.what();
  }
}

namespace {

using Result = kiln_test::CliResult;
Result kiln_cli(const std::string& args) { return kiln_test::run_kiln_cli(args); }

class CompareCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_compare_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = save(chain({1, 2, -1, 0.5f}, {0.5f, -0.5f, 1, -1}), "a.onnx");
    // Only the second node's weight differs.
    other_ = save(chain({1, 2, -1, 0.5f}, {-2, 2, -1, 3}), "b.onnx");
  }
  void TearDown() override { fs::remove_all(dir_); }

  // y = Tanh(x * w1 + w2): three nodes, x f32[batch,4]; every value named.
  static Model chain(std::vector<float> w1, std::vector<float> w2) {
    Model m;
    m.opsets[""] = 17;
    m.graph.inputs = {"x"};
    m.graph.outputs = {"y"};
    m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim(4)}};
    m.graph.initializers["w1"] = Tensor::from_vector<float>({4}, w1);
    m.graph.initializers["w2"] = Tensor::from_vector<float>({4}, w2);
    m.graph.nodes.push_back(Node{"mul", "Mul", "", {"x", "w1"}, {"t1"}, {}});
    m.graph.nodes.push_back(Node{"add", "Add", "", {"t1", "w2"}, {"t2"}, {}});
    m.graph.nodes.push_back(Node{"tanh", "Tanh", "", {"t2"}, {"y"}, {}});
    return m;
  }
  std::string save(const Model& m, const std::string& name) {
    const std::string p = (dir_ / name).string();
    save_onnx(m, p);
    return p;
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
  std::string model_, other_;
};

json parse_json(const Result& r) {
  try {
    return json::parse(r.out.substr(r.out.find('{')));
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what() << "\n" << r.out;
    return json::object();
  }
}

}  // namespace

TEST_F(CompareCliTest, ModelAgainstItself) {
  Result r = kiln_cli("compare " + model_ + " --model " + model_ + " --shapes x:3x4 --min-cosine 0.9999 --atol 1e-5");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("reference executor"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1.000000"), std::string::npos) << r.out;  // cosine
  EXPECT_NE(r.out.find("3/3 (100.0%)"), std::string::npos) << r.out;  // top-1 over 3 rows
  EXPECT_NE(r.out.find("PASSED"), std::string::npos) << r.out;

  Result j = kiln_cli("compare " + model_ + " --model " + model_ + " --shapes x:3x4 --samples 4 --json");
  ASSERT_EQ(j.code, 0) << j.out;
  json doc = parse_json(j);
  EXPECT_EQ(doc["runs"], 4);
  EXPECT_EQ(doc["samples"], 12);
  ASSERT_EQ(doc["outputs"].size(), 1u);
  const json& y = doc["outputs"][0];
  EXPECT_EQ(y["name"], "y");
  EXPECT_GT(y["cosine"].get<double>(), 1 - 1e-9);
  EXPECT_LT(y["max_abs"].get<double>(), 1e-5);
  EXPECT_EQ(y["top1"]["total"], 12);
  EXPECT_EQ(y["count"], 48);
  EXPECT_TRUE(doc["passed"].get<bool>());

  // The fp32 cpu build as the reference.
  Result c = kiln_cli("compare " + model_ + " --model " + model_ + " --reference cpu --min-cosine 0.9999");
  EXPECT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("cpu backend, fp32 build"), std::string::npos) << c.out;
}

TEST_F(CompareCliTest, EngineAgainstItsModel) {
  const std::string eng = path("a.kiln");
  Result b = kiln_cli("build " + model_ + " -o " + eng + " --shapes x:2x4 --no-timing");
  ASSERT_EQ(b.code, 0) << b.out;
  // The engine's static batch 2 is the default shape of the random inputs.
  Result r =
      kiln_cli("compare " + eng + " --model " + model_ + " --samples 3 --atol 1e-5 --rtol 1e-5 --min-cosine 0.9999");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("(engine)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3 runs, 6 samples"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("6/6 (100.0%)"), std::string::npos) << r.out;

  Result l = kiln_cli("compare " + eng + " --model " + model_ + " --per-layer --json");
  ASSERT_EQ(l.code, 0) << l.out;
  json doc = parse_json(l);
  EXPECT_TRUE(doc["first_divergence"].is_null()) << l.out;
  EXPECT_GE(doc["per_layer_compared"].get<int>(), 1);  // at least y; fused values are missing
  for (const auto& row : doc["per_layer"]) EXPECT_GT(row["cosine"].get<double>(), 0.9999) << row.dump();

  // An engine of another model does not fit: different inputs.
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"z"};
  m.graph.outputs = {"y"};
  m.graph.types["z"] = TensorType{DType::kF32, Shape{Dim(2), Dim(4)}};
  m.graph.nodes.push_back(Node{"r", "Relu", "", {"z"}, {"y"}, {}});
  Result bad = kiln_cli("compare " + eng + " --model " + save(m, "z.onnx"));
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("has inputs (x)"), std::string::npos) << bad.out;
}

TEST_F(CompareCliTest, DifferentModelFailsChecks) {
  Result r = kiln_cli("compare " + other_ + " --model " + model_ + " --shapes x:8x4 --min-cosine 0.999");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("FAILED: output 'y': cosine"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("< --min-cosine 0.999000"), std::string::npos) << r.out;

  Result t = kiln_cli("compare " + other_ + " --model " + model_ + " --shapes x:8x4 --atol 1e-3");
  EXPECT_EQ(t.code, 1) << t.out;
  EXPECT_NE(t.out.find("elements outside |a-b| <= atol + rtol*|b|"), std::string::npos) << t.out;

  // No check given: only reported, exit 0.
  Result n = kiln_cli("compare " + other_ + " --model " + model_ + " --shapes x:8x4");
  EXPECT_EQ(n.code, 0) << n.out;
  EXPECT_NE(n.out.find("none given"), std::string::npos) << n.out;
}

TEST_F(CompareCliTest, PerLayerNamesTheFirstDivergentTensor) {
  Result r = kiln_cli("compare " + other_ + " --model " + model_ + " --shapes x:8x4 --per-layer");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("first divergence: 't2' (Add)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3 of 3 reference tensors"), std::string::npos) << r.out;

  Result j =
      kiln_cli("compare " + other_ + " --model " + model_ + " --shapes x:8x4 --per-layer --json --min-cosine 0.99");
  EXPECT_EQ(j.code, 1) << j.out;
  json doc = parse_json(j);
  ASSERT_TRUE(doc["first_divergence"].is_object()) << j.out;
  EXPECT_EQ(doc["first_divergence"]["name"], "t2");
  ASSERT_EQ(doc["per_layer"].size(), 3u) << j.out;
  EXPECT_EQ(doc["per_layer"][0]["name"], "t1");  // the reference's order
  EXPECT_NEAR(doc["per_layer"][0]["cosine"].get<double>(), 1.0, 1e-9);
  EXPECT_EQ(doc["per_layer"][1]["name"], "t2");
  EXPECT_TRUE(doc["per_layer"][1]["first_divergence"].get<bool>());
  EXPECT_LT(doc["per_layer"][1]["cosine"].get<double>(), 0.99);
  EXPECT_EQ(doc["per_layer"][2]["name"], "y");

  // The same with the fp32 cpu build as the reference.
  Result c = kiln_cli("compare " + other_ + " --model " + model_ + " --shapes x:8x4 --per-layer --reference cpu");
  EXPECT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("first divergence: 't2' (Add)"), std::string::npos) << c.out;
}

TEST_F(CompareCliTest, InputFilesAndCalibrationData) {
  // A .npz with an extra member (an expected output) and a .npy: two input sets.
  write_npz(path("in.npz"), {{"x", f32({2, 4}, {1, 2, 3, 4, -1, -2, -3, -4})}, {"y", f32({1}, {0})}});
  write_npy(path("in.npy"), f32({1, 4}, {0.5f, 0, 0, 1}));
  Result r = kiln_cli("compare " + model_ + " --model " + model_ + " --input " + path("in.npz") + " --input " +
                      path("in.npy") + " --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json doc = parse_json(r);
  EXPECT_EQ(doc["runs"], 2);
  EXPECT_EQ(doc["samples"], 3);

  // Calibration data: one .npz stacking samples; --samples caps it.
  std::vector<float> v(20);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) / 10.f - 1.f;
  write_npz(path("calib.npz"), {{"x", f32({5, 4}, v)}});
  Result c = kiln_cli("compare " + model_ + " --model " + model_ + " --calib " + path("calib.npz") +
                      " --samples 3 --json --min-cosine 0.9999");
  ASSERT_EQ(c.code, 0) << c.out;
  doc = parse_json(c);
  EXPECT_EQ(doc["samples"], 3);
  Result all = kiln_cli("compare " + model_ + " --model " + model_ + " --calib " + path("calib.npz") + " --json");
  ASSERT_EQ(all.code, 0) << all.out;
  EXPECT_EQ(parse_json(all)["samples"], 5);

  Result bad = kiln_cli("compare " + model_ + " --model " + model_ + " --input " + path("nothere.npz"));
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("nothere.npz"), std::string::npos) << bad.out;
}

TEST_F(CompareCliTest, BadFlagsExitTwo) {
  const std::string base = "compare " + model_ + " --model " + model_;
  for (const std::string flags : {" --atol -1", " --rtol x", " --min-cosine 2", " --reference gpu", " --samples -3",
                                  " --nonsense", " --input a.npz --calib b.npz"}) {
    Result r = kiln_cli(base + flags);
    EXPECT_EQ(r.code, 2) << flags << "\n" << r.out;
  }
  Result missing = kiln_cli("compare " + model_);
  EXPECT_EQ(missing.code, 2) << missing.out;
  EXPECT_NE(missing.out.find("--model"), std::string::npos) << missing.out;
  EXPECT_NE(missing.out.find("required"), std::string::npos) << missing.out;
}

// The real-data model (models/digits.py, via scripts/export-models.sh): the cpu build agrees with
// the reference on every test image; skipped when the model has not been exported.
TEST(CompareDigits, CpuBuildAgreesWithReferenceOnTestImages) {
  const fs::path dir = kiln_test::model_dir();
  if (dir.empty() || !fs::exists(dir / "digits.onnx") || !fs::exists(dir / "digits_test.npz"))
    GTEST_SKIP() << "digits model not exported (scripts/export-models.sh)";
  const std::string model = (dir / "digits.onnx").string();
  Result r = kiln_cli("compare " + model + " --model " + model + " --input " + (dir / "digits_test.npz").string() +
                      " --min-cosine 0.99999 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json doc = parse_json(r);
  EXPECT_EQ(doc["samples"], 500);
  const json& logits = doc["outputs"][0];
  EXPECT_EQ(logits["name"], "logits");
  EXPECT_EQ(logits["top1"]["agree"], 500);
  EXPECT_EQ(logits["top1"]["total"], 500);
}
