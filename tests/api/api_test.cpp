// The public runtime API (include/kiln/kiln.h): networks by hand and from ONNX, the builder and its
// config, profiles, engine round trips, bad engine bytes, logging, and concurrent contexts.
// Float results are compared with rtol 1e-4, atol 1e-5 (kernels may reorder sums).
#include <cmath>
#include <cstring>
#include <thread>

#include "api_test_support.h"
#include "backends/reference/executor.h"
#include "engine/engine_file.h"
#include "onnx/onnx_import.h"

namespace kiln_api_test {
namespace {

using kiln::AttrValue;
using kiln::DataType;
using kiln::Dims;
using kiln::OptProfileSelector;
using kiln::TensorIOMode;

// y = relu(0.5 * x @ W^T + b) then LeakyRelu(alpha 0.1): Gemm's alpha/transB and LeakyRelu's alpha
// exercise attributes of each kind given in C++ literals.
struct GemmNet {
  static constexpr int M = 3, K = 7, N = 5;
  std::vector<float> w = random_floats(N * K, 11), b = random_floats(N, 12);

  void define(kiln::NetworkDefinition& net) const {
    ASSERT_TRUE(net.addInput("x", DataType::kFLOAT, Dims::of({M, K})));
    ASSERT_TRUE(net.addConstant("w", DataType::kFLOAT, Dims::of({N, K}), w.data()));
    ASSERT_TRUE(net.addConstant("b", DataType::kFLOAT, Dims::of({N}), b.data()));
    ASSERT_TRUE(net.addNode("Gemm", {"x", "w", "b"}, {"g"}, {{"alpha", 0.5}, {"transB", 1}}));
    ASSERT_TRUE(net.addLayer("LeakyRelu", {"g"}, {"y"}, {{"alpha", 0.1f}}));
    ASSERT_TRUE(net.markOutput("y"));
  }
  std::vector<float> expected(const std::vector<float>& x) const {
    std::vector<float> y(M * N);
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        double acc = 0;
        for (int k = 0; k < K; ++k) acc += static_cast<double>(x[i * K + k]) * w[j * K + k];
        const double g = 0.5 * acc + b[j];
        y[i * N + j] = static_cast<float>(g > 0 ? g : 0.1 * g);
      }
    return y;
  }
};

TEST(ApiLogger, ConsoleLoggerFiltersBySeverity) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  kiln::ConsoleLogger logger(Severity::kWARNING, f);
  logger.log(Severity::kERROR, "an error");
  logger.log(Severity::kWARNING, "a warning");
  logger.log(Severity::kINFO, "some info");
  logger.log(Severity::kVERBOSE, "details");
  logger.setThreshold(Severity::kVERBOSE);
  logger.log(Severity::kVERBOSE, "now shown");
  std::rewind(f);
  std::string text;
  for (int c; (c = std::fgetc(f)) != EOF;) text += static_cast<char>(c);
  std::fclose(f);
  EXPECT_NE(text.find("[kiln] ERROR: an error"), std::string::npos) << text;
  EXPECT_NE(text.find("[kiln] WARNING: a warning"), std::string::npos);
  EXPECT_EQ(text.find("some info"), std::string::npos);
  EXPECT_EQ(text.find("details"), std::string::npos);
  EXPECT_NE(text.find("[kiln] VERBOSE: now shown"), std::string::npos);
}

// A build reports its steps at kINFO and the tactic timings at kVERBOSE, and no error.
TEST(ApiLogger, BuildLogsStepsAtInfoAndTimingsAtVerbose) {
  CaptureLogger logger;
  kiln::Builder builder(logger);
  auto net = builder.createNetworkV2();
  GemmNet g;
  g.define(*net);
  auto cfg = builder.createBuilderConfig();
  cfg->setNbThreads(1);
  auto bytes = builder.buildSerializedNetwork(*net, *cfg);
  ASSERT_FALSE(bytes.empty()) << logger.errors();
  EXPECT_EQ(logger.count(Severity::kERROR), 0u);
  EXPECT_TRUE(logger.has(Severity::kINFO, "building engine"));
  EXPECT_TRUE(logger.has(Severity::kINFO, "engine built"));
  EXPECT_TRUE(logger.has(Severity::kINFO, "kernels selected"));
  EXPECT_TRUE(logger.has(Severity::kVERBOSE, "ms")) << "tactic timings are logged at kVERBOSE";
  EXPECT_FALSE(logger.has(Severity::kINFO, "ms ->")) << "tactic timings stay out of kINFO";
}

TEST(ApiNetwork, HandBuiltNetworkMatchesIndependentComputation) {
  CaptureLogger logger;
  kiln::Builder builder(logger);
  kiln::Runtime runtime(logger);
  auto net = builder.createNetworkV2();
  GemmNet g;
  g.define(*net);
  EXPECT_EQ(net->getNbInputs(), 1);
  EXPECT_EQ(net->getInputName(0), "x");
  EXPECT_EQ(net->getNbOutputs(), 1);
  EXPECT_EQ(net->getNbNodes(), 2);
  auto engine = build_and_load(builder, *net, runtime);
  ASSERT_NE(engine, nullptr) << logger.errors();

  ASSERT_EQ(engine->getNbIOTensors(), 2);
  EXPECT_STREQ(engine->getIOTensorName(0), "x");
  EXPECT_STREQ(engine->getIOTensorName(1), "y");
  EXPECT_EQ(engine->getIOTensorName(2), nullptr);
  EXPECT_EQ(engine->getTensorIOMode("x"), TensorIOMode::kINPUT);
  EXPECT_EQ(engine->getTensorIOMode("y"), TensorIOMode::kOUTPUT);
  EXPECT_EQ(engine->getTensorIOMode("g"), TensorIOMode::kNONE);
  EXPECT_EQ(engine->getTensorDataType("y"), DataType::kFLOAT);
  EXPECT_EQ(engine->getTensorShape("y"), (Dims{2, {GemmNet::M, GemmNet::N}}));  // TensorRT-style aggregate
  EXPECT_EQ(engine->getNbOptimizationProfiles(), 1);

  auto ctx = engine->createExecutionContext();
  ASSERT_NE(ctx, nullptr);
  EXPECT_TRUE(ctx->allInputDimensionsSpecified());
  EXPECT_EQ(ctx->getTensorShape("y"), Dims::of({GemmNet::M, GemmNet::N}));
  for (uint32_t seed : {1u, 2u}) {
    auto x = random_floats(GemmNet::M * GemmNet::K, seed);
    std::vector<float> y(GemmNet::M * GemmNet::N, -1.0f);
    ASSERT_TRUE(ctx->setInputTensorAddress("x", x.data()));
    ASSERT_TRUE(ctx->setTensorAddress("y", y.data()));
    ASSERT_TRUE(ctx->execute()) << logger.errors();
    expect_near_all(y, g.expected(x), 1e-4f, 1e-5f);
  }
  // executeV2 takes the addresses in IO tensor order.
  auto x = random_floats(GemmNet::M * GemmNet::K, 3);
  std::vector<float> y(GemmNet::M * GemmNet::N);
  void* bindings[] = {x.data(), y.data()};
  ASSERT_TRUE(ctx->executeV2(bindings));
  expect_near_all(y, g.expected(x), 1e-4f, 1e-5f);
  EXPECT_FALSE(ctx->enqueueV3(reinterpret_cast<void*>(0x1)));
  EXPECT_TRUE(logger.has(Severity::kERROR, "stream"));
}

TEST(ApiNetwork, MistakesAreLoggedAndRefused) {
  CaptureLogger logger;
  kiln::Builder builder(logger);
  auto net = builder.createNetworkV2();
  ASSERT_TRUE(net->addInput("x", DataType::kFLOAT, Dims::of({2, -1})));
  EXPECT_FALSE(net->addInput("x", DataType::kFLOAT, Dims::of({2})));
  EXPECT_TRUE(logger.has(Severity::kERROR, "already defined"));
  EXPECT_FALSE(net->addInput("z", DataType::kFLOAT, Dims::of({2, -3})));
  EXPECT_FALSE(net->addConstant("c", DataType::kFLOAT, Dims::of({2}), nullptr));
  EXPECT_FALSE(net->addConstant("c", DataType::kFLOAT, Dims::of({-1}), nullptr));
  EXPECT_FALSE(net->addNode("Relu", {"nope"}, {"y"}));
  EXPECT_TRUE(logger.has(Severity::kERROR, "'nope' is not defined"));
  EXPECT_FALSE(net->addNode("Relu", {"x"}, {"x"}));
  EXPECT_FALSE(net->markOutput("y"));
  ASSERT_TRUE(net->addNode("Relu", {"x"}, {"y"}));
  ASSERT_TRUE(net->markOutput("y"));
  EXPECT_FALSE(net->markOutput("y"));

  // A dynamic input without a profile fails the build, naming the API to use.
  logger.clear();
  auto cfg = builder.createBuilderConfig();
  EXPECT_TRUE(builder.buildSerializedNetwork(*net, *cfg).empty());
  EXPECT_TRUE(logger.has(Severity::kERROR, "IOptimizationProfile")) << logger.errors();

  // An unknown op fails the build with the model check's message, which mentions plugins.
  logger.clear();
  auto bad = builder.createNetworkV2();
  ASSERT_TRUE(bad->addInput("x", DataType::kFLOAT, Dims::of({2})));
  ASSERT_TRUE(bad->addNode("NoSuchOp", {"x"}, {"y"}));
  ASSERT_TRUE(bad->markOutput("y"));
  EXPECT_TRUE(builder.buildSerializedNetwork(*bad, *cfg).empty());
  EXPECT_TRUE(logger.has(Severity::kERROR, "NoSuchOp")) << logger.errors();
  EXPECT_TRUE(logger.has(Severity::kERROR, "plugin")) << logger.errors();

  // No outputs.
  logger.clear();
  auto empty = builder.createNetworkV2();
  ASSERT_TRUE(empty->addInput("x", DataType::kFLOAT, Dims::of({2})));
  EXPECT_TRUE(builder.buildSerializedNetwork(*empty, *cfg).empty());
  EXPECT_TRUE(logger.has(Severity::kERROR, "markOutput"));
}

// Reduced-precision flags are covered in api_int8_test.cpp; here the flags round-trip and a bad
// optimization level is refused.
TEST(ApiBuilder, FlagsRoundTripAndBadOptimizationLevelIsRefused) {
  CaptureLogger logger;
  kiln::Builder builder(logger);
  auto net = builder.createNetworkV2();
  GemmNet g;
  g.define(*net);
  for (auto flag : {kiln::BuilderFlag::kFP16, kiln::BuilderFlag::kBF16, kiln::BuilderFlag::kINT8}) {
    auto cfg = builder.createBuilderConfig();
    cfg->setFlag(flag);
    EXPECT_TRUE(cfg->getFlag(flag));
    cfg->clearFlag(flag);
    EXPECT_FALSE(cfg->getFlag(flag));
  }
  auto cfg = builder.createBuilderConfig();
  cfg->setBuilderOptimizationLevel(7);
  EXPECT_TRUE(builder.buildSerializedNetwork(*net, *cfg).empty());
  EXPECT_TRUE(logger.has(Severity::kERROR, "optimization level 7"));
}

// The timing cache file is written after a build, read by the next one (which then times nothing),
// and ignored when kDISABLE_TIMING_CACHE is set.
TEST(ApiBuilder, TimingCacheFileIsWrittenAndReused) {
  const auto dir = temp_dir();
  const std::string cache = (dir / "timing.json").string();
  CaptureLogger logger;
  kiln::Builder builder(logger);
  auto net = builder.createNetworkV2();
  GemmNet g;
  g.define(*net);
  auto cfg = builder.createBuilderConfig();
  cfg->setNbThreads(1);
  cfg->setMemoryPoolLimit(kiln::MemoryPoolType::kWORKSPACE, 1 << 20);
  EXPECT_EQ(cfg->getMemoryPoolLimit(kiln::MemoryPoolType::kWORKSPACE), 1u << 20);
  cfg->setTimingCache(cache);
  EXPECT_EQ(cfg->getTimingCache(), cache);
  ASSERT_FALSE(builder.buildSerializedNetwork(*net, *cfg).empty()) << logger.errors();
  ASSERT_TRUE(std::filesystem::exists(cache));
  EXPECT_TRUE(logger.has(Severity::kINFO, "timing cache saved"));
  logger.clear();
  ASSERT_FALSE(builder.buildSerializedNetwork(*net, *cfg).empty());
  EXPECT_TRUE(logger.has(Severity::kINFO, " 0 misses")) << "the second build finds every node in the cache";
  std::filesystem::remove(cache);
  cfg->setFlag(kiln::BuilderFlag::kDISABLE_TIMING_CACHE);
  ASSERT_FALSE(builder.buildSerializedNetwork(*net, *cfg).empty());
  EXPECT_FALSE(std::filesystem::exists(cache));
}

// A model written with save_onnx and examples/tiny_cnn.onnx, parsed from files; results against
// the reference executor.
TEST(ApiOnnxParser, ParsesFilesAndMatchesReference) {
  const auto dir = temp_dir();
  kiln::Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"a"};
  m.graph.types["a"] = kiln::TensorType{kiln::DType::kF32, kiln::Shape{kiln::Dim(2), kiln::Dim(6)}};
  m.graph.initializers["k"] = kiln::Tensor::from_vector<float>({6}, random_floats(6, 5));
  m.graph.nodes.push_back(kiln::Node{"mul", "Mul", "", {"a", "k"}, {"p"}, {}});
  m.graph.nodes.push_back(kiln::Node{"sm", "Softmax", "", {"p"}, {"out"}, {{"axis", kiln::Attribute::of_int(1)}}});
  m.graph.outputs = {"out"};
  const auto path = dir / "small.onnx";
  kiln::save_onnx(m, path);

  CaptureLogger logger;
  kiln::Builder builder(logger);
  kiln::Runtime runtime(logger);
  {
    auto net = builder.createNetworkV2();
    kiln::OnnxParser parser(*net, logger);
    ASSERT_TRUE(parser.parseFromFile(path.string())) << logger.errors();
    EXPECT_EQ(parser.getNbErrors(), 0);
    auto engine = build_and_load(builder, *net, runtime);
    ASSERT_NE(engine, nullptr) << logger.errors();
    auto ctx = engine->createExecutionContext();
    auto a = random_floats(12, 6);
    std::vector<float> out(12);
    ctx->setInputTensorAddress("a", a.data());
    ctx->setTensorAddress("out", out.data());
    ASSERT_TRUE(ctx->execute()) << logger.errors();
    kiln::reference::Executor ref(m);
    auto want = ref.run({{"a", kiln::Tensor::from_vector<float>({2, 6}, a)}}).at("out");
    expect_near_all(out, std::vector<float>(want.data<float>(), want.data<float>() + 12), 1e-4f, 1e-5f);
  }
  {
    // tiny_cnn has a dynamic batch: a profile is needed.
    const std::string tiny = std::string(KILN_SOURCE_DIR) + "/examples/tiny_cnn.onnx";
    auto net = builder.createNetworkV2();
    kiln::OnnxParser parser(*net, logger);
    ASSERT_TRUE(parser.parseFromFile(tiny)) << logger.errors();
    // Parsing into a network that is not empty is refused.
    EXPECT_FALSE(parser.parseFromFile(tiny));
    EXPECT_EQ(parser.getNbErrors(), 1);
    EXPECT_NE(std::string(parser.getError(0)).find("not empty"), std::string::npos);
    parser.clearErrors();
    auto cfg = builder.createBuilderConfig();
    cfg->setNbThreads(1);
    kiln::IOptimizationProfile* p = builder.createOptimizationProfile();
    ASSERT_TRUE(p->setDimensions("image", OptProfileSelector::kMIN, Dims::of({1, 1, 28, 28})));
    ASSERT_TRUE(p->setDimensions("image", OptProfileSelector::kOPT, Dims::of({2, 1, 28, 28})));
    ASSERT_TRUE(p->setDimensions("image", OptProfileSelector::kMAX, Dims::of({4, 1, 28, 28})));
    ASSERT_EQ(cfg->addOptimizationProfile(p), 0);
    auto engine = build_and_load(builder, *net, runtime, cfg.get());
    ASSERT_NE(engine, nullptr) << logger.errors();
    auto ctx = engine->createExecutionContext();
    ASSERT_TRUE(ctx->setInputShape("image", Dims::of({3, 1, 28, 28})));
    ASSERT_EQ(ctx->getTensorShape("probabilities"), Dims::of({3, 10}));
    auto image = random_floats(3 * 28 * 28, 7);
    std::vector<float> probs(30);
    ctx->setInputTensorAddress("image", image.data());
    ctx->setTensorAddress("probabilities", probs.data());
    ASSERT_TRUE(ctx->execute()) << logger.errors();
    kiln::reference::Executor ref(kiln::load_onnx(tiny));
    auto want = ref.run({{"image", kiln::Tensor::from_vector<float>({3, 1, 28, 28}, image)}}).at("probabilities");
    expect_near_all(probs, std::vector<float>(want.data<float>(), want.data<float>() + 30), 1e-4f, 1e-5f);
  }
}

TEST(ApiOnnxParser, ReportsErrors) {
  CaptureLogger logger;
  kiln::Builder builder(logger);
  auto net = builder.createNetworkV2();
  kiln::OnnxParser parser(*net, logger);
  EXPECT_FALSE(parser.parseFromFile("/nonexistent/model.onnx"));
  ASSERT_EQ(parser.getNbErrors(), 1);
  EXPECT_NE(std::string(parser.getError(0)).find("/nonexistent/model.onnx"), std::string::npos);
  EXPECT_EQ(parser.getError(1), nullptr);
  EXPECT_TRUE(logger.has(Severity::kERROR, "/nonexistent/model.onnx"));
  const char junk[] = "definitely not protobuf";
  EXPECT_FALSE(parser.parse(junk, sizeof junk));
  EXPECT_EQ(parser.getNbErrors(), 2);

  // Every unsupported node is one error; the unknown-op message points at plugins.
  const auto dir = temp_dir();
  kiln::Model m;
  m.opsets[""] = 17;
  m.opsets["com.acme"] = 1;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = kiln::TensorType{kiln::DType::kF32, kiln::Shape{kiln::Dim(4)}};
  m.graph.nodes.push_back(kiln::Node{"f1", "Frobnicate", "com.acme", {"x"}, {"y"}, {}});
  m.graph.nodes.push_back(kiln::Node{"f2", "Frobnicate", "com.acme", {"y"}, {"z"}, {}});
  m.graph.outputs = {"z"};
  kiln::save_onnx(m, dir / "custom.onnx");
  parser.clearErrors();
  EXPECT_FALSE(parser.parseFromFile((dir / "custom.onnx").string()));
  ASSERT_EQ(parser.getNbErrors(), 2);
  EXPECT_NE(std::string(parser.getError(0)).find("com.acme::Frobnicate"), std::string::npos);
  EXPECT_NE(std::string(parser.getError(0)).find("plugin"), std::string::npos) << parser.getError(0);
  EXPECT_EQ(net->getNbNodes(), 0) << "a failed parse leaves the network empty";
}

// y = x @ W for x [batch, 4], batch dynamic: profile ranges, out-of-profile shapes, two profiles.
class ApiProfiles : public ::testing::Test {
 protected:
  void build(const std::vector<std::pair<int64_t, int64_t>>& ranges) {
    auto net = builder_.createNetworkV2();
    ASSERT_TRUE(net->addInput("x", DataType::kFLOAT, Dims::of({-1, 4})));
    ASSERT_TRUE(net->addConstant("w", DataType::kFLOAT, Dims::of({4, 3}), w_.data()));
    ASSERT_TRUE(net->addNode("MatMul", {"x", "w"}, {"y"}));
    ASSERT_TRUE(net->markOutput("y"));
    auto cfg = builder_.createBuilderConfig();
    cfg->setNbThreads(1);
    for (auto [lo, hi] : ranges) {
      kiln::IOptimizationProfile p;
      p.setDimensions("x", OptProfileSelector::kMIN, Dims::of({lo, 4}));
      p.setDimensions("x", OptProfileSelector::kOPT, Dims::of({hi, 4}));
      p.setDimensions("x", OptProfileSelector::kMAX, Dims::of({hi, 4}));
      ASSERT_GE(cfg->addOptimizationProfile(p), 0);
    }
    engine_ = build_and_load(builder_, *net, runtime_, cfg.get());
    ASSERT_NE(engine_, nullptr) << logger_.errors();
  }
  std::vector<float> expected(const std::vector<float>& x) const {
    const size_t b = x.size() / 4;
    std::vector<float> y(b * 3, 0.0f);
    for (size_t i = 0; i < b; ++i)
      for (size_t j = 0; j < 3; ++j)
        for (size_t k = 0; k < 4; ++k) y[i * 3 + j] += x[i * 4 + k] * w_[k * 3 + j];
    return y;
  }
  CaptureLogger logger_;
  kiln::Builder builder_{logger_};
  kiln::Runtime runtime_{logger_};
  std::vector<float> w_ = random_floats(12, 21);
  std::shared_ptr<kiln::Engine> engine_;
};

TEST_F(ApiProfiles, ShapesInsideTheProfileRunAndOthersAreRefused) {
  ASSERT_NO_FATAL_FAILURE(build({{1, 8}}));
  EXPECT_EQ(engine_->getTensorShape("x"), Dims::of({-1, 4}));
  EXPECT_EQ(engine_->getTensorShape("y"), Dims::of({-1, 3}));
  EXPECT_EQ(engine_->getNbOptimizationProfiles(), 1);
  EXPECT_EQ(engine_->getProfileShape("x", 0, OptProfileSelector::kMIN), Dims::of({1, 4}));
  EXPECT_EQ(engine_->getProfileShape("x", 0, OptProfileSelector::kOPT), Dims::of({8, 4}));
  EXPECT_EQ(engine_->getProfileShape("x", 0, OptProfileSelector::kMAX), Dims::of({8, 4}));
  EXPECT_EQ(engine_->getProfileShape("x", 1, OptProfileSelector::kMIN).nbDims, -1);
  EXPECT_EQ(engine_->getProfileShape("y", 0, OptProfileSelector::kMIN).nbDims, -1);

  auto ctx = engine_->createExecutionContext();
  EXPECT_FALSE(ctx->allInputDimensionsSpecified());
  EXPECT_EQ(ctx->getTensorShape("y"), Dims::of({-1, 3}));
  std::vector<float> dummy(64);
  ctx->setTensorAddress("x", dummy.data());
  ctx->setTensorAddress("y", dummy.data());
  EXPECT_FALSE(ctx->execute()) << "the dynamic input has no shape yet";
  EXPECT_TRUE(logger_.has(Severity::kERROR, "setInputShape"));

  for (int64_t b : {1, 5, 8}) {
    ASSERT_TRUE(ctx->setInputShape("x", Dims::of({b, 4}))) << logger_.errors();
    EXPECT_EQ(ctx->getTensorShape("x"), Dims::of({b, 4}));
    EXPECT_EQ(ctx->getTensorShape("y"), Dims::of({b, 3}));
    auto x = random_floats(static_cast<size_t>(b) * 4, 30 + static_cast<uint32_t>(b));
    std::vector<float> y(static_cast<size_t>(b) * 3);
    ctx->setInputTensorAddress("x", x.data());
    ctx->setTensorAddress("y", y.data());
    ASSERT_TRUE(ctx->execute()) << logger_.errors();
    expect_near_all(y, expected(x), 1e-4f, 1e-5f);
  }
  logger_.clear();
  EXPECT_FALSE(ctx->setInputShape("x", Dims::of({9, 4})));
  EXPECT_TRUE(logger_.has(Severity::kERROR, "outside every optimization profile")) << logger_.errors();
  EXPECT_FALSE(ctx->setInputShape("x", Dims::of({2, 4, 1})));
  EXPECT_TRUE(logger_.has(Severity::kERROR, "rank 2"));
  EXPECT_FALSE(ctx->setInputShape("x", Dims::of({2, 5})));
  EXPECT_TRUE(logger_.has(Severity::kERROR, "static"));
  EXPECT_FALSE(ctx->setInputShape("y", Dims::of({2, 3})));
  EXPECT_EQ(ctx->getTensorShape("x"), Dims::of({8, 4})) << "a refused shape leaves the last good one";
}

TEST_F(ApiProfiles, TheContextFindsTheProfileThatHoldsTheShape) {
  ASSERT_NO_FATAL_FAILURE(build({{1, 4}, {5, 16}}));
  EXPECT_EQ(engine_->getNbOptimizationProfiles(), 2);
  EXPECT_EQ(engine_->getProfileShape("x", 1, OptProfileSelector::kMIN), Dims::of({5, 4}));
  auto ctx = engine_->createExecutionContext();
  EXPECT_EQ(ctx->getOptimizationProfile(), -1);
  ASSERT_TRUE(ctx->setInputShape("x", Dims::of({3, 4})));
  EXPECT_EQ(ctx->getOptimizationProfile(), 0);
  ASSERT_TRUE(ctx->setInputShape("x", Dims::of({12, 4})));
  EXPECT_EQ(ctx->getOptimizationProfile(), 1);
  auto x = random_floats(48, 40);
  std::vector<float> y(36);
  ctx->setInputTensorAddress("x", x.data());
  ctx->setTensorAddress("y", y.data());
  ASSERT_TRUE(ctx->execute()) << logger_.errors();
  expect_near_all(y, expected(x), 1e-4f, 1e-5f);
  EXPECT_FALSE(ctx->setInputShape("x", Dims::of({17, 4})));
  EXPECT_TRUE(logger_.has(Severity::kERROR, "profile 1: min 5x4, max 16x4")) << logger_.errors();
}

TEST(ApiProfileValidation, InvalidProfilesAreRefused) {
  CaptureLogger logger;
  kiln::Builder builder(logger);
  auto cfg = builder.createBuilderConfig();
  kiln::IOptimizationProfile p;
  EXPECT_FALSE(p.setDimensions("x", OptProfileSelector::kMIN, Dims::of({-1, 4})));
  p.setDimensions("x", OptProfileSelector::kMIN, Dims::of({4, 4}));
  p.setDimensions("x", OptProfileSelector::kOPT, Dims::of({2, 4}));
  EXPECT_FALSE(p.isValid());
  EXPECT_EQ(cfg->addOptimizationProfile(p), -1);
  EXPECT_TRUE(logger.has(Severity::kERROR, "kMIN, kOPT and kMAX"));
  p.setDimensions("x", OptProfileSelector::kMAX, Dims::of({8, 4}));
  EXPECT_EQ(cfg->addOptimizationProfile(p), -1);
  EXPECT_TRUE(logger.has(Severity::kERROR, "min <= opt <= max"));
  p.setDimensions("x", OptProfileSelector::kOPT, Dims::of({6, 4}));
  EXPECT_TRUE(p.isValid());
  EXPECT_EQ(cfg->addOptimizationProfile(&p), 0);
  EXPECT_EQ(cfg->addOptimizationProfile(nullptr), -1);
  EXPECT_EQ(cfg->getNbOptimizationProfiles(), 1);
}

// serialize() -> deserializeEngine(), and a file through loadEngine(), give the same results; a
// context outlives its engine handle and runtime.
TEST(ApiEngine, SerializeAndLoadRoundTrip) {
  const auto dir = temp_dir();
  CaptureLogger logger;
  kiln::Builder builder(logger);
  auto net = builder.createNetworkV2();
  GemmNet g;
  g.define(*net);
  auto cfg = builder.createBuilderConfig();
  cfg->setNbThreads(1);
  const auto bytes = builder.buildSerializedNetwork(*net, *cfg);
  ASSERT_FALSE(bytes.empty());
  auto runtime = std::make_unique<kiln::Runtime>(logger);
  auto e1 = runtime->deserializeEngine(bytes.data(), bytes.size());
  ASSERT_NE(e1, nullptr) << logger.errors();
  const auto again = e1->serialize();
  ASSERT_FALSE(again.empty());
  write_file(dir / "gemm.kiln", again);
  auto e2 = runtime->loadEngine((dir / "gemm.kiln").string());
  ASSERT_NE(e2, nullptr) << logger.errors();
  EXPECT_GT(e2->getActivationMemorySize() + 1, 0u);

  auto x = random_floats(GemmNet::M * GemmNet::K, 50);
  auto run = [&](kiln::ExecutionContext& ctx) {
    std::vector<float> y(GemmNet::M * GemmNet::N);
    ctx.setInputTensorAddress("x", x.data());
    ctx.setTensorAddress("y", y.data());
    EXPECT_TRUE(ctx.execute()) << logger.errors();
    return y;
  };
  auto c1 = e1->createExecutionContext();
  auto c2 = e2->createExecutionContext();
  e1.reset();
  e2.reset();
  runtime.reset();
  const auto y1 = run(*c1), y2 = run(*c2);
  EXPECT_EQ(y1, y2);
  expect_near_all(y1, g.expected(x), 1e-4f, 1e-5f);
  EXPECT_EQ(c1->getEngine().getNbIOTensors(), 2);
}

// Truncated, corrupted, foreign and empty bytes give nullptr and an error, never a crash.
TEST(ApiEngine, BadBytesGiveNullptrAndAnError) {
  const auto dir = temp_dir();
  CaptureLogger logger;
  kiln::Builder builder(logger);
  kiln::Runtime runtime(logger);
  auto net = builder.createNetworkV2();
  GemmNet g;
  g.define(*net);
  auto cfg = builder.createBuilderConfig();
  cfg->setNbThreads(1);
  const auto bytes = builder.buildSerializedNetwork(*net, *cfg);
  ASSERT_GT(bytes.size(), 200u);

  auto refused = [&](const std::vector<uint8_t>& b, const std::string& needle) {
    logger.clear();
    EXPECT_EQ(runtime.deserializeEngine(b.data(), b.size()), nullptr);
    EXPECT_TRUE(logger.has(Severity::kERROR, needle)) << "expected '" << needle << "' in: " << logger.errors();
  };
  refused(std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<long>(bytes.size() / 2)), "deserializeEngine");
  std::vector<uint8_t> flipped = bytes;
  flipped[flipped.size() / 2] ^= 0x5a;
  refused(flipped, "deserializeEngine");
  refused(std::vector<uint8_t>(1000, 0x42), "deserializeEngine");
  EXPECT_EQ(runtime.deserializeEngine(nullptr, 0), nullptr);

  // An engine whose kernels need an ISA feature this machine lacks (a foreign target).
  auto loaded = kiln::load_engine_from_memory(bytes);
  loaded.info.target.required_isa.push_back("isa_from_the_future");
  refused(kiln::serialize_engine(loaded.model, loaded.info), "isa_from_the_future");

  write_file(dir / "bad.kiln", flipped);
  logger.clear();
  EXPECT_EQ(runtime.loadEngine((dir / "bad.kiln").string()), nullptr);
  EXPECT_TRUE(logger.has(Severity::kERROR, "bad.kiln")) << logger.errors();
  EXPECT_EQ(runtime.loadEngine((dir / "missing.kiln").string()), nullptr);
  EXPECT_TRUE(logger.has(Severity::kERROR, "missing.kiln"));
}

TEST(ApiContext, ExecuteChecksAddresses) {
  CaptureLogger logger;
  kiln::Builder builder(logger);
  kiln::Runtime runtime(logger);
  auto net = builder.createNetworkV2();
  GemmNet g;
  g.define(*net);
  auto engine = build_and_load(builder, *net, runtime);
  ASSERT_NE(engine, nullptr);
  auto ctx = engine->createExecutionContext();
  auto x = random_floats(GemmNet::M * GemmNet::K, 60);
  ctx->setInputTensorAddress("x", x.data());
  EXPECT_FALSE(ctx->execute());
  EXPECT_TRUE(logger.has(Severity::kERROR, "no address set for 'y'")) << logger.errors();
  EXPECT_FALSE(ctx->setTensorAddress("g", x.data()));
  EXPECT_FALSE(ctx->setInputTensorAddress("y", x.data()));
  EXPECT_EQ(ctx->getTensorAddress("x"), x.data());
}

// Four threads, each with its own context of one engine, run 20 times on their own inputs; every
// result equals what a single context computes for the same input.
TEST(ApiConcurrency, ContextsOfOneEngineRunInParallel) {
  CaptureLogger logger;
  kiln::Builder builder(logger);
  kiln::Runtime runtime(logger);
  auto net = builder.createNetworkV2();
  kiln::OnnxParser parser(*net, logger);
  ASSERT_TRUE(parser.parseFromFile(std::string(KILN_SOURCE_DIR) + "/examples/tiny_cnn.onnx"));
  auto cfg = builder.createBuilderConfig();
  cfg->setNbThreads(1);
  kiln::IOptimizationProfile p;
  p.setDimensions("image", OptProfileSelector::kMIN, Dims::of({1, 1, 28, 28}));
  p.setDimensions("image", OptProfileSelector::kOPT, Dims::of({2, 1, 28, 28}));
  p.setDimensions("image", OptProfileSelector::kMAX, Dims::of({2, 1, 28, 28}));
  cfg->addOptimizationProfile(p);
  auto engine = build_and_load(builder, *net, runtime, cfg.get());
  ASSERT_NE(engine, nullptr) << logger.errors();

  constexpr int kThreads = 4, kRuns = 20;
  std::vector<std::vector<float>> inputs, want;
  auto single = engine->createExecutionContext();
  for (int t = 0; t < kThreads; ++t) {
    const int64_t batch = 1 + t % 2;  // two shapes: contexts also compile programs concurrently
    inputs.push_back(random_floats(static_cast<size_t>(batch) * 784, 70 + static_cast<uint32_t>(t)));
    want.emplace_back(static_cast<size_t>(batch) * 10);
  }
  for (int t = 0; t < kThreads; ++t) {
    const int64_t batch = static_cast<int64_t>(inputs[t].size() / 784);
    ASSERT_TRUE(single->setInputShape("image", Dims::of({batch, 1, 28, 28})));
    single->setInputTensorAddress("image", inputs[t].data());
    single->setTensorAddress("probabilities", want[t].data());
    ASSERT_TRUE(single->execute()) << logger.errors();
  }
  std::vector<int> failures(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      auto ctx = engine->createExecutionContext();
      const int64_t batch = static_cast<int64_t>(inputs[t].size() / 784);
      std::vector<float> out(want[t].size());
      if (!ctx->setInputShape("image", Dims::of({batch, 1, 28, 28}))) ++failures[t];
      ctx->setInputTensorAddress("image", inputs[t].data());
      ctx->setTensorAddress("probabilities", out.data());
      for (int r = 0; r < kRuns; ++r) {
        std::fill(out.begin(), out.end(), -1.0f);
        if (!ctx->execute() || out != want[t]) ++failures[t];
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t << "\n" << logger.errors();
}

}  // namespace
}  // namespace kiln_api_test
