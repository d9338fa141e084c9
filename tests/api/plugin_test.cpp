// Plugins (include/kiln/plugin.h): loading errors, the example library's custom op
// kiln.example::ScaledTanh end to end (file, build, serialize, load, run, reference executor), its
// replacement of ai.onnx Relu, in-process registration, and engines refusing to load without the
// plugin they were built with (checked in fresh processes: a loaded plugin cannot be unloaded).
#include <dlfcn.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "api_test_support.h"
#include "backends/reference/executor.h"
#include "engine/engine_file.h"
#include "onnx/onnx_import.h"

namespace kiln_api_test {
namespace {

using kiln::AttrValue;
using kiln::DataType;
using kiln::Dims;

void load_example_plugin() { kiln::loadPluginLibrary(KILN_EXAMPLE_PLUGIN); }

long plugin_counter(const char* symbol) {
  void* h = dlopen(KILN_EXAMPLE_PLUGIN, RTLD_NOW | RTLD_NOLOAD);
  if (!h) return -1;
  auto fn = reinterpret_cast<long (*)()>(dlsym(h, symbol));
  const long v = fn ? fn() : -1;
  dlclose(h);  // drops only the reference RTLD_NOLOAD took
  return v;
}
long relu_calls() { return plugin_counter("kilnExampleReluCalls"); }
long scaled_tanh_calls() { return plugin_counter("kilnExampleScaledTanhCalls"); }

std::string load_error(const std::string& path) {
  try {
    kiln::loadPluginLibrary(path);
  } catch (const kiln::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// The path of the libm this process uses: a real shared library that is not a Kiln plugin.
std::string libm_path() {
  void* cos_fn = dlsym(RTLD_DEFAULT, "cos");
  Dl_info info{};
  if (!cos_fn || !dladdr(cos_fn, &info) || !info.dli_fname) return {};
  return info.dli_fname;
}

TEST(PluginLoad, MissingFileIsAnIoError) {
  try {
    kiln::loadPluginLibrary("/nonexistent/libnothing.so");
    FAIL() << "no error";
  } catch (const kiln::Error& e) {
    EXPECT_EQ(e.code(), kiln::ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("'/nonexistent/libnothing.so' does not exist"), std::string::npos) << e.what();
  }
  CaptureLogger logger;
  EXPECT_FALSE(kiln::loadPluginLibrary("/nonexistent/libnothing.so", logger));
  EXPECT_TRUE(logger.has(Severity::kERROR, "libnothing.so"));
}

TEST(PluginLoad, LibraryWithoutTheEntryPointIsRefused) {
  const std::string libm = libm_path();
  ASSERT_FALSE(libm.empty());
  const std::string e = load_error(libm);
  EXPECT_NE(e.find("does not export kilnRegisterPlugins"), std::string::npos) << e;
  EXPECT_NE(e.find(libm), std::string::npos) << e;
  // A file that is not a shared library at all.
  const auto dir = temp_dir();
  write_file(dir / "libfake.so", {'n', 'o', 'p', 'e'});
  EXPECT_NE(load_error((dir / "libfake.so").string()).find("cannot load plugin library"), std::string::npos);
}

TEST(PluginLoad, FailedRegistrationLeavesNothingRegistered) {
  EXPECT_NE(load_error(KILN_BAD_PLUGIN_FAIL_STATUS).find("kilnRegisterPlugins returned 1"), std::string::npos);
  const std::string dup = load_error(KILN_BAD_PLUGIN_DUPLICATE);
  EXPECT_NE(dup.find("registered twice"), std::string::npos) << dup;
  const std::string abi = load_error(KILN_BAD_PLUGIN_ABI_MISMATCH);
  EXPECT_NE(abi.find("ABI version 1001"), std::string::npos) << abi;
  EXPECT_EQ(kiln::getPluginRegistry().getCreator("BadIdentity", 1, "kiln.test.bad"), nullptr);
  for (const auto& lib : kiln::getLoadedPluginLibraries()) EXPECT_EQ(lib.find("bad_plugin"), std::string::npos) << lib;
}

TEST(PluginLoad, LoadingTwiceIsANoOp) {
  ASSERT_NO_THROW(load_example_plugin());
  ASSERT_NO_THROW(load_example_plugin());
  size_t n = 0;
  for (const auto& lib : kiln::getLoadedPluginLibraries()) n += lib == KILN_EXAMPLE_PLUGIN;
  EXPECT_EQ(n, 1u);
  kiln::IPluginCreator* c = kiln::getPluginRegistry().getCreator("ScaledTanh", 1, "kiln.example");
  ASSERT_NE(c, nullptr);
  EXPECT_STREQ(c->getPluginNamespace(), "kiln.example");
  EXPECT_EQ(kiln::getPluginRegistry().getCreator("ScaledTanh", 2, "kiln.example"), nullptr);
}

float scaled_tanh(float x, float alpha, float beta) {
  return static_cast<float>(static_cast<double>(alpha) * std::tanh(static_cast<double>(beta) * x));
}

// x -> ScaledTanh(alpha 1.5, beta 0.5) -> t -> ScaledTanh(defaults) -> y, with a node of each.
kiln::Model scaled_tanh_model() {
  kiln::Model m;
  m.opsets[""] = 17;
  m.opsets["kiln.example"] = 1;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = kiln::TensorType{kiln::DType::kF32, kiln::Shape{kiln::Dim::sym("batch"), kiln::Dim(7)}};
  m.graph.nodes.push_back(kiln::Node{"st1", "ScaledTanh", "kiln.example", {"x"}, {"t"},
                                     {{"alpha", kiln::Attribute::of_float(1.5f)}, {"beta", kiln::Attribute::of_float(0.5f)}}});
  m.graph.nodes.push_back(kiln::Node{"st2", "ScaledTanh", "kiln.example", {"t"}, {"y"}, {}});
  m.graph.outputs = {"y"};
  return m;
}

TEST(PluginScaledTanh, OnnxFileBuildsSerializesLoadsAndRuns) {
  load_example_plugin();
  const auto dir = temp_dir();
  const auto model_path = dir / "scaled_tanh.onnx";
  kiln::save_onnx(scaled_tanh_model(), model_path);

  CaptureLogger logger;
  kiln::Builder builder(logger);
  auto net = builder.createNetworkV2();
  kiln::OnnxParser parser(*net, logger);
  ASSERT_TRUE(parser.parseFromFile(model_path.string())) << logger.errors();
  auto cfg = builder.createBuilderConfig();
  cfg->setNbThreads(1);
  kiln::IOptimizationProfile p;
  p.setDimensions("x", kiln::OptProfileSelector::kMIN, Dims::of({1, 7}));
  p.setDimensions("x", kiln::OptProfileSelector::kOPT, Dims::of({3, 7}));
  p.setDimensions("x", kiln::OptProfileSelector::kMAX, Dims::of({5, 7}));
  cfg->addOptimizationProfile(p);
  const auto bytes = builder.buildSerializedNetwork(*net, *cfg);
  ASSERT_FALSE(bytes.empty()) << logger.errors();

  // The engine names the plugin's tactic for both nodes.
  const auto loaded = kiln::load_engine_from_memory(bytes);
  ASSERT_EQ(loaded.info.node_tactics.size(), 2u);
  for (const auto& t : loaded.info.node_tactics) EXPECT_EQ(t, "plugin:kiln.example::ScaledTanh:1");

  const auto engine_path = dir / "scaled_tanh.kiln";
  write_file(engine_path, bytes);
  kiln::Runtime runtime(logger);
  auto engine = runtime.loadEngine(engine_path.string());
  ASSERT_NE(engine, nullptr) << logger.errors();
  auto ctx = engine->createExecutionContext();
  for (int64_t batch : {1, 4}) {
    ASSERT_TRUE(ctx->setInputShape("x", Dims::of({batch, 7})));
    ASSERT_EQ(ctx->getTensorShape("y"), Dims::of({batch, 7}));
    auto x = random_floats(static_cast<size_t>(batch) * 7, 80 + static_cast<uint32_t>(batch), -3.0f, 3.0f);
    std::vector<float> y(x.size());
    ctx->setInputTensorAddress("x", x.data());
    ctx->setTensorAddress("y", y.data());
    const long before = scaled_tanh_calls();
    ASSERT_TRUE(ctx->execute()) << logger.errors();
    EXPECT_EQ(scaled_tanh_calls() - before, 2) << "each node ran the plugin once";
    std::vector<float> want(x.size());
    for (size_t i = 0; i < x.size(); ++i) want[i] = scaled_tanh(scaled_tanh(x[i], 1.5f, 0.5f), 1.0f, 1.0f);
    expect_near_all(y, want, 1e-5f, 1e-6f);
  }
}

// The reference executor (the oracle of conformance checks) and constant folding run plugin ops.
TEST(PluginScaledTanh, ReferenceExecutorAndConstantFoldingRunIt) {
  load_example_plugin();
  kiln::Model m = scaled_tanh_model();
  kiln::reference::Executor ref(m);
  auto x = random_floats(14, 90);
  auto y = ref.run({{"x", kiln::Tensor::from_vector<float>({2, 7}, x)}}).at("y");
  for (size_t i = 0; i < x.size(); ++i)
    EXPECT_NEAR(y.data<float>()[i], scaled_tanh(scaled_tanh(x[i], 1.5f, 0.5f), 1.0f, 1.0f), 1e-6f);

  // c = ScaledTanh(constant) is folded at build: the engine keeps only the Add.
  CaptureLogger logger;
  kiln::Builder builder(logger);
  kiln::Runtime runtime(logger);
  auto net = builder.createNetworkV2();
  auto k = random_floats(7, 91);
  ASSERT_TRUE(net->addInput("x", DataType::kFLOAT, Dims::of({1, 7})));
  ASSERT_TRUE(net->addConstant("k", DataType::kFLOAT, Dims::of({7}), k.data()));
  ASSERT_TRUE(net->addNode("ScaledTanh", {"k"}, {"c"}, {{"alpha", 2}}, "kiln.example"));
  ASSERT_TRUE(net->addNode("Add", {"x", "c"}, {"y"}));
  ASSERT_TRUE(net->markOutput("y"));
  auto engine = build_and_load(builder, *net, runtime);
  ASSERT_NE(engine, nullptr) << logger.errors();
  auto ctx = engine->createExecutionContext();
  auto xv = random_floats(7, 92);
  std::vector<float> out(7);
  ctx->setInputTensorAddress("x", xv.data());
  ctx->setTensorAddress("y", out.data());
  const long before = scaled_tanh_calls();
  ASSERT_TRUE(ctx->execute()) << logger.errors();
  EXPECT_EQ(scaled_tanh_calls(), before) << "the constant branch was folded at build";
  for (size_t i = 0; i < 7; ++i) EXPECT_NEAR(out[i], xv[i] + scaled_tanh(k[i], 2.0f, 1.0f), 1e-5f);
}

// The example's Relu replaces Kiln's: engines record its tactic and every run calls it, even where
// the fusion passes would have folded Relu into the Conv.
TEST(PluginRelu, ReplacesTheBuiltInKernel) {
  load_example_plugin();
  CaptureLogger logger;
  kiln::Builder builder(logger);
  kiln::Runtime runtime(logger);
  auto net = builder.createNetworkV2();
  auto w = random_floats(4 * 2 * 3 * 3, 100), b = random_floats(4, 101);
  ASSERT_TRUE(net->addInput("x", DataType::kFLOAT, Dims::of({1, 2, 6, 6})));
  ASSERT_TRUE(net->addConstant("w", DataType::kFLOAT, Dims::of({4, 2, 3, 3}), w.data()));
  ASSERT_TRUE(net->addConstant("b", DataType::kFLOAT, Dims::of({4}), b.data()));
  ASSERT_TRUE(net->addNode("Conv", {"x", "w", "b"}, {"c"}, {{"pads", AttrValue::ints({1, 1, 1, 1})}}));
  ASSERT_TRUE(net->addNode("Relu", {"c"}, {"y"}));
  ASSERT_TRUE(net->markOutput("y"));
  auto cfg = builder.createBuilderConfig();
  cfg->setNbThreads(1);
  const auto bytes = builder.buildSerializedNetwork(*net, *cfg);
  ASSERT_FALSE(bytes.empty()) << logger.errors();
  EXPECT_TRUE(logger.has(Severity::kINFO, "plugin:ai.onnx::Relu:1")) << "the build says fusions are off";
  const auto loaded = kiln::load_engine_from_memory(bytes);
  bool found = false;
  for (size_t i = 0; i < loaded.model.graph.nodes.size(); ++i)
    if (loaded.model.graph.nodes[i].op_type == "Relu") {
      found = true;
      EXPECT_EQ(loaded.info.node_tactics[i], "plugin:ai.onnx::Relu:1");
    }
  EXPECT_TRUE(found) << "Relu was fused away";

  auto engine = runtime.deserializeEngine(bytes.data(), bytes.size());
  ASSERT_NE(engine, nullptr) << logger.errors();
  auto ctx = engine->createExecutionContext();
  auto x = random_floats(72, 102);
  std::vector<float> y(144);
  ctx->setInputTensorAddress("x", x.data());
  ctx->setTensorAddress("y", y.data());
  const long before = relu_calls();
  ASSERT_TRUE(ctx->execute()) << logger.errors();
  ASSERT_TRUE(ctx->execute());
  EXPECT_EQ(relu_calls() - before, 2);
  // Independent result: direct convolution, then relu.
  for (int oc = 0; oc < 4; ++oc)
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 6; ++j) {
        double acc = b[oc];
        for (int ic = 0; ic < 2; ++ic)
          for (int ki = 0; ki < 3; ++ki)
            for (int kj = 0; kj < 3; ++kj) {
              const int ii = i + ki - 1, jj = j + kj - 1;
              if (ii < 0 || ii >= 6 || jj < 0 || jj >= 6) continue;
              acc += static_cast<double>(x[(ic * 6 + ii) * 6 + jj]) * w[((oc * 2 + ic) * 3 + ki) * 3 + kj];
            }
        EXPECT_NEAR(y[(oc * 6 + i) * 6 + j], std::max(acc, 0.0), 1e-4 + 1e-4 * std::abs(acc));
      }
}

// Where the replacement refuses the types (the example's Relu takes floats only), the built-in
// kernel runs and the engine does not need the plugin.
TEST(PluginRelu, NodesThePluginRefusesKeepTheBuiltInKernel) {
  load_example_plugin();
  CaptureLogger logger;
  kiln::Builder builder(logger);
  kiln::Runtime runtime(logger);
  auto net = builder.createNetworkV2();
  ASSERT_TRUE(net->addInput("x", DataType::kINT32, Dims::of({5})));
  ASSERT_TRUE(net->addNode("Relu", {"x"}, {"y"}));
  ASSERT_TRUE(net->markOutput("y"));
  auto cfg = builder.createBuilderConfig();
  cfg->setNbThreads(1);
  const auto bytes = builder.buildSerializedNetwork(*net, *cfg);
  ASSERT_FALSE(bytes.empty()) << logger.errors();
  const auto loaded = kiln::load_engine_from_memory(bytes);
  ASSERT_EQ(loaded.info.node_tactics.size(), 1u);
  EXPECT_NE(loaded.info.node_tactics[0], "plugin:ai.onnx::Relu:1");
  auto engine = runtime.deserializeEngine(bytes.data(), bytes.size());
  ASSERT_NE(engine, nullptr) << logger.errors();
  auto ctx = engine->createExecutionContext();
  std::vector<int32_t> x = {-2, -1, 0, 1, 2}, y(5, 99);
  ctx->setInputTensorAddress("x", x.data());
  ctx->setTensorAddress("y", y.data());
  const long before = relu_calls();
  ASSERT_TRUE(ctx->execute()) << logger.errors();
  EXPECT_EQ(relu_calls(), before);
  EXPECT_EQ(y, (std::vector<int32_t>{0, 0, 0, 1, 2}));
}

// A creator linked into the program, registered without a library; bad creators are refused.
class AddConstantCreator final : public kiln::IPluginCreator {
 public:
  explicit AddConstantCreator(const char* name, int status = 0) : name_(name), status_(status) {}
  const char* getPluginName() const noexcept override { return name_; }
  const char* getPluginNamespace() const noexcept override { return "kiln.test"; }
  std::vector<kiln::PluginField> getFields() const override {
    return {{"value", AttrValue::Type::kFLOAT, std::nullopt, true}};
  }
  bool getOutputDescs(const std::vector<kiln::PluginTensorDesc>& in, const kiln::Attributes&,
                      std::vector<kiln::PluginTensorDesc>& out, std::string& error) const override {
    if (in[0].type != DataType::kFLOAT) {
      error = "AddConstant takes floats";
      return false;
    }
    out[0] = in[0];
    return true;
  }
  std::unique_ptr<kiln::IPluginKernel> createPlugin(const kiln::Attributes& attrs,
                                                    const std::vector<kiln::PluginTensorDesc>& in,
                                                    const std::vector<kiln::PluginTensorDesc>&) const override {
    struct Kernel final : kiln::IPluginKernel {
      float v = 0;
      int64_t n = 0;
      int status = 0;
      size_t getWorkspaceSize() const noexcept override { return 256; }
      int32_t enqueue(const void* const* i, void* const* o, void* ws) noexcept override {
        if (status) return status;
        std::memset(ws, 0xab, 256);  // the workspace is usable scratch
        for (int64_t k = 0; k < n; ++k) static_cast<float*>(o[0])[k] = static_cast<const float*>(i[0])[k] + v;
        return 0;
      }
    };
    auto k = std::make_unique<Kernel>();
    k->v = attrs.at("value").asFloat();
    k->n = in[0].dims.volume();
    k->status = status_;
    return k;
  }

 private:
  const char* name_;
  int status_;
};

TEST(PluginRegistry, InProcessCreatorsRunAndBadOnesAreRefused) {
  auto& reg = kiln::getPluginRegistry();
  if (!reg.getCreator("AddConstant", 1, "kiln.test")) {
    ASSERT_TRUE(reg.registerCreator(std::make_shared<AddConstantCreator>("AddConstant"))) << reg.getLastError();
    ASSERT_TRUE(reg.registerCreator(std::make_shared<AddConstantCreator>("FailingOp", 7))) << reg.getLastError();
  }
  EXPECT_FALSE(reg.registerCreator(std::make_shared<AddConstantCreator>("AddConstant")));
  EXPECT_NE(std::string(reg.getLastError()).find("already registered"), std::string::npos) << reg.getLastError();
  EXPECT_FALSE(reg.registerCreator(std::make_shared<AddConstantCreator>("bad name")));
  EXPECT_FALSE(reg.registerCreator(nullptr));

  CaptureLogger logger;
  kiln::Builder builder(logger);
  kiln::Runtime runtime(logger);
  {
    auto net = builder.createNetworkV2();
    ASSERT_TRUE(net->addInput("x", DataType::kFLOAT, Dims::of({3})));
    ASSERT_TRUE(net->addNode("AddConstant", {"x"}, {"y"}, {{"value", 2}}, "kiln.test"));  // int given, float declared
    ASSERT_TRUE(net->markOutput("y"));
    auto engine = build_and_load(builder, *net, runtime);
    ASSERT_NE(engine, nullptr) << logger.errors();
    auto ctx = engine->createExecutionContext();
    std::vector<float> x = {1, 2, 3}, y(3);
    ctx->setInputTensorAddress("x", x.data());
    ctx->setTensorAddress("y", y.data());
    ASSERT_TRUE(ctx->execute()) << logger.errors();
    EXPECT_EQ(y, (std::vector<float>{3, 4, 5}));
  }
  {
    // A missing required attribute is a model error.
    logger.clear();
    auto net = builder.createNetworkV2();
    ASSERT_TRUE(net->addInput("x", DataType::kFLOAT, Dims::of({3})));
    ASSERT_TRUE(net->addNode("AddConstant", {"x"}, {"y"}, {}, "kiln.test"));
    ASSERT_TRUE(net->markOutput("y"));
    EXPECT_EQ(build_and_load(builder, *net, runtime), nullptr);
    EXPECT_TRUE(logger.has(Severity::kERROR, "missing required attribute 'value'")) << logger.errors();
  }
  {
    // The plugin's type check rejects int inputs, with its own message.
    logger.clear();
    auto net = builder.createNetworkV2();
    ASSERT_TRUE(net->addInput("x", DataType::kINT32, Dims::of({3})));
    ASSERT_TRUE(net->addNode("AddConstant", {"x"}, {"y"}, {{"value", 1.0}}, "kiln.test"));
    ASSERT_TRUE(net->markOutput("y"));
    EXPECT_EQ(build_and_load(builder, *net, runtime), nullptr);
    EXPECT_TRUE(logger.has(Severity::kERROR, "AddConstant takes floats")) << logger.errors();
  }
  {
    // A kernel that fails makes execute() fail, naming the plugin and its status.
    logger.clear();
    auto net = builder.createNetworkV2();
    ASSERT_TRUE(net->addInput("x", DataType::kFLOAT, Dims::of({3})));
    ASSERT_TRUE(net->addNode("FailingOp", {"x"}, {"y"}, {{"value", 1.0}}, "kiln.test"));
    ASSERT_TRUE(net->markOutput("y"));
    auto engine = build_and_load(builder, *net, runtime);
    ASSERT_NE(engine, nullptr) << logger.errors();
    auto ctx = engine->createExecutionContext();
    std::vector<float> x = {1, 2, 3}, y(3);
    ctx->setInputTensorAddress("x", x.data());
    ctx->setTensorAddress("y", y.data());
    EXPECT_FALSE(ctx->execute());
    EXPECT_TRUE(logger.has(Severity::kERROR, "plugin:kiln.test::FailingOp:1")) << logger.errors();
    EXPECT_TRUE(logger.has(Severity::kERROR, "enqueue returned 7")) << logger.errors();
  }
}

// Engines built with a plugin, loaded in a process without it: the error names the plugin. Each
// step runs in a fresh process ("threadsafe" death tests re-execute the test binary).
TEST(PluginEngineDeathTest, EnginesRefuseToLoadWithoutTheirPlugin) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  // The children re-run this body: they find the parent's folder through the environment.
  if (!std::getenv("KILN_API_PLUGIN_ENGINE_DIR"))
    ::setenv("KILN_API_PLUGIN_ENGINE_DIR",
             (std::filesystem::temp_directory_path() / ("kiln_api_plugin_engines_" + std::to_string(::getpid()))).c_str(), 1);
  const std::filesystem::path dir = std::getenv("KILN_API_PLUGIN_ENGINE_DIR");
  const auto custom = dir / "custom.kiln", relu = dir / "relu.kiln";
  EXPECT_EXIT(
      {
        std::filesystem::create_directories(dir);
        load_example_plugin();
        kiln::ConsoleLogger logger(Severity::kERROR);
        kiln::Builder builder(logger);
        auto cfg = builder.createBuilderConfig();
        cfg->setNbThreads(1);
        auto a = builder.createNetworkV2();
        a->addInput("x", DataType::kFLOAT, Dims::of({4}));
        a->addNode("ScaledTanh", {"x"}, {"y"}, {}, "kiln.example");
        a->markOutput("y");
        write_file(custom, builder.buildSerializedNetwork(*a, *cfg));
        auto b = builder.createNetworkV2();
        b->addInput("x", DataType::kFLOAT, Dims::of({4}));
        b->addNode("Relu", {"x"}, {"y"});
        b->markOutput("y");
        write_file(relu, builder.buildSerializedNetwork(*b, *cfg));
        std::exit(std::filesystem::file_size(custom) > 0 && std::filesystem::file_size(relu) > 0 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
  // A custom op: the engine's op is unknown here, and the error says which plugin provides it.
  EXPECT_EXIT(
      {
        kiln::ConsoleLogger logger(Severity::kERROR);
        kiln::Runtime runtime(logger);
        const auto bytes = read_file(custom);
        std::exit(runtime.deserializeEngine(bytes.data(), bytes.size()) == nullptr &&
                          runtime.loadEngine(custom.string()) == nullptr
                      ? 0
                      : 1);
      },
      ::testing::ExitedWithCode(0), "deserializeEngine: .*plugin:kiln.example::ScaledTanh:1.*loadPluginLibrary");
  // A replaced built-in op: the op is known, but the engine insists on the plugin.
  EXPECT_EXIT(
      {
        kiln::ConsoleLogger logger(Severity::kERROR);
        kiln::Runtime runtime(logger);
        std::exit(runtime.loadEngine(relu.string()) == nullptr ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "loadEngine: .*plugin 'plugin:ai.onnx::Relu:1', which is not loaded");
  // And with the plugin loaded, both load.
  load_example_plugin();
  CaptureLogger logger;
  kiln::Runtime runtime(logger);
  EXPECT_NE(runtime.loadEngine(custom.string()), nullptr) << logger.errors();
  EXPECT_NE(runtime.loadEngine(relu.string()), nullptr) << logger.errors();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kiln_api_test
