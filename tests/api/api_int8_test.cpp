// Reduced precision through the public API: INT8 with an IInt8Calibrator (entropy, min/max,
// percentile), the calibration cache round trip, the accuracy guard, per-layer precision and
// constraints, BF16/FP16 flags, explicit Q/DQ networks, and the mistakes the builder refuses.
// Reduced-precision engines are compared with the FP32 engine by cosine similarity.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "api_test_support.h"

namespace kiln_api_test {
namespace {

using kiln::DataType;
using kiln::Dims;
using kiln::OptProfileSelector;

constexpr int64_t kC = 3, kH = 8, kW = 8, kClasses = 10;
constexpr int64_t kSample = kC * kH * kW;

// x[N,3,8,8] -> conv1(3->8)+relu6 -> conv2(8->8)+relu6 -> pool(2x2) -> conv3(8->8) -> add(conv3, pool)
//   -> gap -> flat -> fc (Gemm 8->10) -> y[N,10]; N dynamic (1..8, opt 4).
void define_cnn(kiln::NetworkDefinition& net) {
  auto constant = [&](const std::string& name, std::initializer_list<int64_t> dims, uint32_t seed) {
    const Dims d = Dims::of(dims);
    const auto v = random_floats(static_cast<size_t>(d.volume()), seed, -0.5f, 0.5f);
    ASSERT_TRUE(net.addConstant(name, DataType::kFLOAT, d, v.data()));
  };
  ASSERT_TRUE(net.addInput("x", DataType::kFLOAT, Dims::of({-1, kC, kH, kW})));
  constant("w1", {8, kC, 3, 3}, 1);
  constant("b1", {8}, 2);
  constant("w2", {8, 8, 3, 3}, 3);
  constant("w3", {8, 8, 3, 3}, 4);
  constant("b3", {8}, 5);
  constant("fw", {8, kClasses}, 6);
  constant("fb", {kClasses}, 7);
  const auto pads = kiln::AttrValue::ints({1, 1, 1, 1});
  ASSERT_TRUE(net.addNode("Conv", {"x", "w1", "b1"}, {"c1"}, {{"pads", pads}}, "", "conv1"));
  // ReLU6 (Clip), not Relu: a plugin test of this binary replaces Relu, which turns off the fusions
  // INT8 builds on.
  const float lo = 0.0f, hi = 6.0f;
  ASSERT_TRUE(net.addConstant("lo", DataType::kFLOAT, Dims{0, {}}, &lo));
  ASSERT_TRUE(net.addConstant("hi", DataType::kFLOAT, Dims{0, {}}, &hi));
  ASSERT_TRUE(net.addNode("Clip", {"c1", "lo", "hi"}, {"r1"}, {}, "", "relu1"));
  ASSERT_TRUE(net.addNode("Conv", {"r1", "w2"}, {"c2"}, {{"pads", pads}}, "", "conv2"));
  ASSERT_TRUE(net.addNode("Clip", {"c2", "lo", "hi"}, {"r2"}, {}, "", "relu2"));
  ASSERT_TRUE(net.addNode("MaxPool", {"r2"}, {"p"},
                          {{"kernel_shape", kiln::AttrValue::ints({2, 2})}, {"strides", kiln::AttrValue::ints({2, 2})}},
                          "", "pool"));
  ASSERT_TRUE(net.addNode("Conv", {"p", "w3", "b3"}, {"c3"}, {{"pads", pads}}, "", "conv3"));
  ASSERT_TRUE(net.addNode("Add", {"c3", "p"}, {"a"}, {}, "", "add"));
  ASSERT_TRUE(net.addNode("GlobalAveragePool", {"a"}, {"g"}, {}, "", "gap"));
  ASSERT_TRUE(net.addNode("Flatten", {"g"}, {"f"}, {}, "", "flat"));
  ASSERT_TRUE(net.addNode("Gemm", {"f", "fw", "fb"}, {"y"}, {}, "", "fc"));
  ASSERT_TRUE(net.markOutput("y"));
}

// Seeded random batches of `batch` samples, `batches` times; records what the builder asks for.
class RandomCalibrator : public kiln::IInt8EntropyCalibrator2 {
 public:
  RandomCalibrator(int32_t batch, int batches) : batch_(batch), batches_(batches) {}
  int32_t getBatchSize() const override { return batch_; }
  bool getBatch(void* bindings[], const char* names[], int32_t nbBindings) override {
    ++calls;
    if (nbBindings != 1 || std::string(names[0]) != "x" || !bindings[0]) bad_bindings = true;
    if (produced >= batches_) return false;
    const auto v = random_floats(static_cast<size_t>(batch_ * kSample), 1000 + static_cast<uint32_t>(produced));
    std::memcpy(bindings[0], v.data(), v.size() * sizeof(float));
    ++produced;
    return true;
  }
  const void* readCalibrationCache(std::size_t& length) override {
    length = cache_in.size();
    return cache_in.empty() ? nullptr : cache_in.data();
  }
  void writeCalibrationCache(const void* ptr, std::size_t length) override {
    ++writes;
    cache_out.assign(static_cast<const char*>(ptr), length);
  }

  int calls = 0, produced = 0, writes = 0;
  bool bad_bindings = false;
  std::string cache_in, cache_out;

 private:
  int32_t batch_;
  int batches_;
};

// The same data, calibrated by another method.
class RandomMinMaxCalibrator : public RandomCalibrator {
 public:
  using RandomCalibrator::RandomCalibrator;
  kiln::CalibrationAlgoType getAlgorithm() override { return kiln::CalibrationAlgoType::kMINMAX_CALIBRATION; }
};
class RandomPercentileCalibrator : public RandomCalibrator {
 public:
  using RandomCalibrator::RandomCalibrator;
  kiln::CalibrationAlgoType getAlgorithm() override { return kiln::CalibrationAlgoType::kPERCENTILE_CALIBRATION; }
  double getPercentile() override { return percentile; }
  double percentile = 99.9;
};

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

class ApiInt8 : public ::testing::Test {
 protected:
  void SetUp() override {
    net_ = builder_.createNetworkV2();
    define_cnn(*net_);
  }

  // A config with the dynamic batch's profile (opt 4) and one thread.
  std::unique_ptr<kiln::BuilderConfig> config() {
    auto cfg = builder_.createBuilderConfig();
    cfg->setNbThreads(1);
    kiln::IOptimizationProfile p;
    p.setDimensions("x", OptProfileSelector::kMIN, Dims::of({1, kC, kH, kW}));
    p.setDimensions("x", OptProfileSelector::kOPT, Dims::of({4, kC, kH, kW}));
    p.setDimensions("x", OptProfileSelector::kMAX, Dims::of({8, kC, kH, kW}));
    EXPECT_EQ(cfg->addOptimizationProfile(p), 0);
    return cfg;
  }

  std::shared_ptr<kiln::Engine> build(kiln::BuilderConfig& cfg) {
    return build_and_load(builder_, *net_, runtime_, &cfg);
  }

  // The engine's output for `batch` test samples (not the calibration data).
  static std::vector<float> run(kiln::Engine& engine, int64_t batch = 3, uint32_t seed = 77) {
    auto ctx = engine.createExecutionContext();
    EXPECT_TRUE(ctx->setInputShape("x", Dims::of({batch, kC, kH, kW})));
    const auto x = random_floats(static_cast<size_t>(batch * kSample), seed);
    std::vector<float> y(static_cast<size_t>(batch * kClasses), NAN);
    EXPECT_TRUE(ctx->setInputTensorAddress("x", x.data()));
    EXPECT_TRUE(ctx->setTensorAddress("y", y.data()));
    EXPECT_TRUE(ctx->execute());
    return y;
  }

  std::vector<float> fp32_output() {
    auto cfg = config();
    auto engine = build(*cfg);
    EXPECT_NE(engine, nullptr) << logger_.errors();
    return engine ? run(*engine) : std::vector<float>{};
  }

  // Expects the build to fail with an error containing every one of `needles`.
  void expect_build_error(kiln::BuilderConfig& cfg, std::initializer_list<std::string> needles) {
    logger_.clear();
    EXPECT_TRUE(builder_.buildSerializedNetwork(*net_, cfg).empty());
    for (const auto& n : needles) EXPECT_TRUE(logger_.has(Severity::kERROR, n)) << n << "\n" << logger_.errors();
  }

  CaptureLogger logger_;
  kiln::Builder builder_{logger_};
  kiln::Runtime runtime_{logger_};
  std::unique_ptr<kiln::NetworkDefinition> net_;
};

// The INT8 engine runs close to FP32, survives serialize -> deserialize, and hands its cache to
// writeCalibrationCache; a second build from that cache calls getBatch() not once and gives the
// same engine.
TEST_F(ApiInt8, EntropyCalibrationCacheAndRoundTrip) {
  const auto want = fp32_output();
  RandomCalibrator calib(4, 8);
  auto cfg = config();
  cfg->setFlag(kiln::BuilderFlag::kINT8);
  cfg->setInt8Calibrator(&calib);
  EXPECT_EQ(cfg->getInt8Calibrator(), &calib);
  logger_.clear();
  auto engine = build(*cfg);
  ASSERT_NE(engine, nullptr) << logger_.errors();
  EXPECT_EQ(calib.produced, 8);
  EXPECT_EQ(calib.calls, 9) << "getBatch is called until it returns false, and not after";
  EXPECT_FALSE(calib.bad_bindings);
  EXPECT_TRUE(logger_.has(Severity::kINFO, "precision: int8: 4 layers")) << "conv1-3 and fc run in INT8";
  const auto got = run(*engine);
  EXPECT_GE(cosine(got, want), 0.99);
  EXPECT_NE(got, want) << "an INT8 engine does not reproduce FP32 bit for bit";

  // The engine's own bytes load again and compute the same.
  const auto bytes = engine->serialize();
  auto again = runtime_.deserializeEngine(bytes.data(), bytes.size());
  ASSERT_NE(again, nullptr) << logger_.errors();
  EXPECT_EQ(run(*again), got);

  ASSERT_EQ(calib.writes, 1);
  EXPECT_EQ(calib.cache_out.rfind("kiln-calibration", 0), 0u) << calib.cache_out.substr(0, 80);

  // From the cache: no calibration data is read, nothing is written back, the same ranges.
  RandomCalibrator cached(4, 8);
  cached.cache_in = calib.cache_out;
  cfg->setInt8Calibrator(&cached);
  logger_.clear();
  auto from_cache = build(*cfg);
  ASSERT_NE(from_cache, nullptr) << logger_.errors();
  EXPECT_EQ(cached.calls, 0);
  EXPECT_EQ(cached.writes, 0);
  EXPECT_TRUE(logger_.has(Severity::kINFO, "readCalibrationCache"));
  EXPECT_GE(cosine(run(*from_cache), got), 0.9999);
}

// A cache that is not Kiln's, or made for another network, fails the build naming the call.
TEST_F(ApiInt8, BadCacheIsRefused) {
  RandomCalibrator calib(4, 2);
  calib.cache_in = "not a calibration cache\n";
  auto cfg = config();
  cfg->setFlag(kiln::BuilderFlag::kINT8);
  cfg->setInt8Calibrator(&calib);
  expect_build_error(*cfg, {"readCalibrationCache"});
  EXPECT_EQ(calib.calls, 0);

  // A valid cache of another network (a single Conv).
  auto other = builder_.createNetworkV2();
  ASSERT_TRUE(other->addInput("x", DataType::kFLOAT, Dims::of({-1, kC, kH, kW})));
  const auto w = random_floats(4 * kC * 9, 9);
  ASSERT_TRUE(other->addConstant("w", DataType::kFLOAT, Dims::of({4, kC, 3, 3}), w.data()));
  ASSERT_TRUE(other->addNode("Conv", {"x", "w"}, {"y"}, {}, "", "conv"));
  ASSERT_TRUE(other->markOutput("y"));
  RandomCalibrator first(4, 2);
  cfg->setInt8Calibrator(&first);
  ASSERT_FALSE(builder_.buildSerializedNetwork(*other, *cfg).empty()) << logger_.errors();
  ASSERT_EQ(first.writes, 1);
  calib.cache_in = first.cache_out;
  cfg->setInt8Calibrator(&calib);
  expect_build_error(*cfg, {"readCalibrationCache", "another model"});
}

TEST_F(ApiInt8, MinMaxAndPercentileCalibrators) {
  const auto want = fp32_output();
  RandomMinMaxCalibrator minmax(2, 6);
  RandomPercentileCalibrator percentile(2, 6);
  for (kiln::IInt8Calibrator* c : {static_cast<kiln::IInt8Calibrator*>(&minmax),
                                   static_cast<kiln::IInt8Calibrator*>(&percentile)}) {
    auto cfg = config();
    cfg->setFlag(kiln::BuilderFlag::kINT8);
    cfg->setInt8Calibrator(c);
    logger_.clear();
    auto engine = build(*cfg);
    ASSERT_NE(engine, nullptr) << logger_.errors();
    EXPECT_GE(cosine(run(*engine), want), 0.99);
  }
  EXPECT_NE(minmax.cache_out.find("method=minmax"), std::string::npos) << minmax.cache_out.substr(0, 80);
  EXPECT_NE(percentile.cache_out.find("method=percentile"), std::string::npos) << percentile.cache_out.substr(0, 80);

  percentile.percentile = 0;
  auto cfg = config();
  cfg->setFlag(kiln::BuilderFlag::kINT8);
  cfg->setInt8Calibrator(&percentile);
  expect_build_error(*cfg, {"getPercentile()"});
}

// The accuracy guard validates on the batches kept from calibration: getBatch() runs once through
// the data, never again.
TEST_F(ApiInt8, AccuracyGuardReplaysCalibrationBatches) {
  const auto want = fp32_output();
  RandomCalibrator calib(4, 8);
  auto cfg = config();
  cfg->setFlag(kiln::BuilderFlag::kINT8);
  cfg->setInt8Calibrator(&calib);
  cfg->setAccuracyBudget(0.0);
  EXPECT_EQ(cfg->getAccuracyBudget(), 0.0);
  logger_.clear();
  auto engine = build(*cfg);
  ASSERT_NE(engine, nullptr) << logger_.errors();
  EXPECT_EQ(calib.calls, 9);
  EXPECT_TRUE(logger_.has(Severity::kINFO, "accuracy guard")) << "the guard's report is logged";
  EXPECT_GE(cosine(run(*engine), want), 0.99);

  // From a cache, the guard reads its validation batches from getBatch() (and stops at 64 samples).
  RandomCalibrator cached(4, 100);
  cached.cache_in = calib.cache_out;
  cfg->setInt8Calibrator(&cached);
  logger_.clear();
  ASSERT_NE(build(*cfg), nullptr) << logger_.errors();
  EXPECT_EQ(cached.produced, 16) << "64 validation samples of 4";
  EXPECT_EQ(cached.writes, 0);

  cfg->setAccuracyBudget(1.5);
  expect_build_error(*cfg, {"setAccuracyBudget", "[0, 1)"});
}

// setLayerPrecision by node name: kFLOAT keeps a layer out of INT8; with kOBEY a layer that cannot
// run INT8 (a pooling average) fails the build.
TEST_F(ApiInt8, LayerPrecisionAndConstraints) {
  const auto want = fp32_output();
  RandomCalibrator calib(4, 4);
  auto cfg = config();
  cfg->setFlag(kiln::BuilderFlag::kINT8);
  cfg->setInt8Calibrator(&calib);
  cfg->setLayerPrecision("conv2", DataType::kFLOAT);
  logger_.clear();
  auto engine = build(*cfg);
  ASSERT_NE(engine, nullptr) << logger_.errors();
  EXPECT_TRUE(logger_.has(Severity::kINFO, "int8: 3 layers, 1 kept in fp32")) << "conv2 stays FP32";
  EXPECT_GE(cosine(run(*engine), want), 0.99);

  // The cache holds every INT8-capable tensor, conv2's input included, so a build that moves conv2
  // into INT8 runs from it without calling getBatch().
  RandomCalibrator calib2(4, 4);
  calib2.cache_in = calib.cache_out;
  cfg->setInt8Calibrator(&calib2);
  cfg->setLayerPrecision("conv2", DataType::kINT8);
  logger_.clear();
  ASSERT_NE(build(*cfg), nullptr) << logger_.errors();
  EXPECT_EQ(calib2.calls, 0);
  EXPECT_TRUE(logger_.has(Severity::kINFO, "int8: 4 layers")) << logger_.errors();
  calib2.cache_in.clear();
  cfg->setFlag(kiln::BuilderFlag::kOBEY_PRECISION_CONSTRAINTS);
  cfg->setLayerPrecision("conv2", DataType::kINT8);
  logger_.clear();
  ASSERT_NE(build(*cfg), nullptr) << logger_.errors();
  calib2.cache_in = calib2.cache_out;  // its data is spent: later builds read its cache
  cfg->setLayerPrecision("gap", DataType::kINT8);
  expect_build_error(*cfg, {"gap", "kOBEY_PRECISION_CONSTRAINTS", "cannot run in int8"});
  EXPECT_FALSE(logger_.has(Severity::kERROR, "--")) << "no command-line flag names in API errors";
}

TEST_F(ApiInt8, Bf16AndFp16) {
  const auto want = fp32_output();
  {
    auto cfg = config();
    cfg->setFlag(kiln::BuilderFlag::kBF16);
    logger_.clear();
    auto engine = build(*cfg);
    ASSERT_NE(engine, nullptr) << logger_.errors();
    EXPECT_TRUE(logger_.has(Severity::kINFO, "bf16: 4 ")) << "conv1-3 and fc are BF16 layers";
    const auto got = run(*engine);
    EXPECT_GT(cosine(got, want), 0.9999);
    float scale = 0;
    for (float v : want) scale = std::max(scale, std::abs(v));
    expect_near_all(got, want, 1e-2f, 1e-2f * scale);
  }
  {
    // FP16 has no CPU kernels: the engine is FP32, with a warning.
    auto cfg = config();
    cfg->setFlag(kiln::BuilderFlag::kFP16);
    logger_.clear();
    auto engine = build(*cfg);
    ASSERT_NE(engine, nullptr) << logger_.errors();
    EXPECT_TRUE(logger_.has(Severity::kWARNING, "FP16")) << "a warning says FP16 layers stay FP32";
    expect_near_all(run(*engine), want, 1e-4f, 1e-5f);
  }
  {
    // Best available: INT8 for the calibrated layers, BF16 for the one kept out of INT8.
    RandomCalibrator calib(4, 4);
    auto cfg = config();
    cfg->setFlag(kiln::BuilderFlag::kINT8);
    cfg->setFlag(kiln::BuilderFlag::kBF16);
    cfg->setInt8Calibrator(&calib);
    cfg->setLayerPrecision("conv2", DataType::kBF16);
    logger_.clear();
    auto engine = build(*cfg);
    ASSERT_NE(engine, nullptr) << logger_.errors();
    EXPECT_TRUE(logger_.has(Severity::kINFO, "bf16: 1 ")) << "conv2 runs in BF16";
    EXPECT_GE(cosine(run(*engine), want), 0.99);
  }
}

TEST_F(ApiInt8, MistakesAreLoggedAndRefused) {
  {
    auto cfg = config();
    cfg->setFlag(kiln::BuilderFlag::kINT8);
    expect_build_error(*cfg, {"kINT8", "setInt8Calibrator"});
  }
  {
    auto cfg = config();
    cfg->setLayerPrecision("no_such_layer", DataType::kFLOAT);
    expect_build_error(*cfg, {"setLayerPrecision('no_such_layer', kFLOAT)", "no layer"});
  }
  {
    auto cfg = config();
    cfg->setLayerPrecision("conv1", DataType::kINT32);
    expect_build_error(*cfg, {"kINT32", "kFLOAT, kBF16, kHALF or kINT8"});
  }
  {
    auto cfg = config();
    cfg->setFlag(kiln::BuilderFlag::kOBEY_PRECISION_CONSTRAINTS);
    cfg->setLayerPrecision("conv1", DataType::kHALF);
    expect_build_error(*cfg, {"setLayerPrecision('conv1', kHALF)", "kOBEY_PRECISION_CONSTRAINTS", "FP16"});
    // kPREFER lets it run in FP32.
    cfg->clearFlag(kiln::BuilderFlag::kOBEY_PRECISION_CONSTRAINTS);
    cfg->setFlag(kiln::BuilderFlag::kPREFER_PRECISION_CONSTRAINTS);
    logger_.clear();
    EXPECT_FALSE(builder_.buildSerializedNetwork(*net_, *cfg).empty()) << logger_.errors();
  }
  {
    RandomCalibrator empty(4, 0);
    auto cfg = config();
    cfg->setFlag(kiln::BuilderFlag::kINT8);
    cfg->setInt8Calibrator(&empty);
    expect_build_error(*cfg, {"getBatch returned false on its first call"});
    EXPECT_EQ(empty.calls, 1);
    EXPECT_EQ(empty.writes, 0);
  }
  {
    RandomCalibrator zero(0, 2);
    auto cfg = config();
    cfg->setFlag(kiln::BuilderFlag::kINT8);
    cfg->setInt8Calibrator(&zero);
    expect_build_error(*cfg, {"getBatchSize() returned 0"});
    EXPECT_EQ(zero.calls, 0);
  }
  {
    // A static batch of 1 cannot take batches of 4.
    auto net = builder_.createNetworkV2();
    ASSERT_TRUE(net->addInput("x", DataType::kFLOAT, Dims::of({1, 4})));
    const auto w = random_floats(12, 3);
    ASSERT_TRUE(net->addConstant("w", DataType::kFLOAT, Dims::of({4, 3}), w.data()));
    ASSERT_TRUE(net->addNode("MatMul", {"x", "w"}, {"y"}));
    ASSERT_TRUE(net->markOutput("y"));
    RandomCalibrator calib(4, 2);
    auto cfg = builder_.createBuilderConfig();
    cfg->setFlag(kiln::BuilderFlag::kINT8);
    cfg->setInt8Calibrator(&calib);
    logger_.clear();
    EXPECT_TRUE(builder_.buildSerializedNetwork(*net, *cfg).empty());
    EXPECT_TRUE(logger_.has(Severity::kERROR, "static batch dimension of 1")) << logger_.errors();
  }
  {
    // A calibrator without kINT8 is not used (a warning says so); the engine is FP32.
    RandomCalibrator calib(4, 2);
    auto cfg = config();
    cfg->setInt8Calibrator(&calib);
    logger_.clear();
    EXPECT_FALSE(builder_.buildSerializedNetwork(*net_, *cfg).empty()) << logger_.errors();
    EXPECT_TRUE(logger_.has(Severity::kWARNING, "kINT8"));
    EXPECT_EQ(calib.calls, 0);
  }
}

// A network with explicit QuantizeLinear/DequantizeLinear nodes builds with kINT8 and no calibrator:
// y = DequantizeLinear(QuantizeLinear(x, 0.1, 0), 0.1, 0) rounds x to multiples of 0.1 in [-12.8, 12.7].
TEST_F(ApiInt8, ExplicitQdqNetworkNeedsNoCalibrator) {
  auto net = builder_.createNetworkV2();
  ASSERT_TRUE(net->addInput("x", DataType::kFLOAT, Dims::of({1, 6})));
  const float scale = 0.1f;
  const int8_t zero = 0;
  ASSERT_TRUE(net->addConstant("s", DataType::kFLOAT, Dims{0, {}}, &scale));
  ASSERT_TRUE(net->addConstant("z", DataType::kINT8, Dims{0, {}}, &zero));
  ASSERT_TRUE(net->addNode("QuantizeLinear", {"x", "s", "z"}, {"q"}));
  ASSERT_TRUE(net->addNode("DequantizeLinear", {"q", "s", "z"}, {"y"}));
  ASSERT_TRUE(net->markOutput("y"));
  auto cfg = builder_.createBuilderConfig();
  cfg->setNbThreads(1);
  cfg->setFlag(kiln::BuilderFlag::kINT8);
  logger_.clear();
  auto engine = build_and_load(builder_, *net, runtime_, cfg.get());
  ASSERT_NE(engine, nullptr) << logger_.errors();
  std::vector<float> x = {0.04f, 0.26f, -0.31f, 1.0f, 20.0f, -20.0f}, y(6, NAN);
  const std::vector<float> want = {0.0f, 0.3f, -0.3f, 1.0f, 12.7f, -12.8f};
  auto ctx = engine->createExecutionContext();
  ASSERT_TRUE(ctx->setInputTensorAddress("x", x.data()));
  ASSERT_TRUE(ctx->setTensorAddress("y", y.data()));
  ASSERT_TRUE(ctx->execute()) << logger_.errors();
  expect_near_all(y, want, 1e-6f, 1e-6f);
}

}  // namespace
}  // namespace kiln_api_test
