// Runs each exported model through the importer and the reference executor and compares with
// PyTorch's outputs saved at export time. Error metric: max |kiln - torch| / max |torch| per
// output (a normalized error, so near-zero outputs do not dominate), required < 1e-4 in FP32.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "engine/engine_file.h"
#include "passes/pass.h"
#include "runtime/builder.h"
#include "runtime/runtime.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using namespace kiln;

class ModelTest : public ::testing::TestWithParam<std::string> {};

namespace {

struct Loaded {
  Model model;
  reference::TensorMap inputs;
  std::map<std::string, Tensor> expected;
};

bool load_exported(const std::string& name, Loaded* out) {
  const char* dir_env = std::getenv("KILN_MODEL_DIR");
  fs::path dir = dir_env ? dir_env : "";
  fs::path model_path = dir / (name + ".onnx");
  fs::path io_path = dir / (name + ".io.npz");
  if (dir.empty() || !fs::exists(model_path) || !fs::exists(io_path)) return false;
  out->model = load_onnx(model_path);
  const auto& inputs = out->model.graph.inputs;
  for (auto& [key, t] : read_npz(io_path)) {
    if (std::find(inputs.begin(), inputs.end(), key) != inputs.end()) out->inputs[key] = t;
    else out->expected[key] = t;
  }
  return true;
}

void expect_matches(const std::string& name, const Graph& g, const reference::TensorMap& outputs,
                    const std::map<std::string, Tensor>& expected) {
  for (const auto& out_name : g.outputs) {
    ASSERT_TRUE(expected.count(out_name)) << "io file lacks output " << out_name;
    const Tensor& want = expected.at(out_name);
    const Tensor& got = outputs.at(out_name);
    ASSERT_EQ(got.shape(), want.shape()) << out_name;
    auto a = got.to_double_vector(), b = want.to_double_vector();
    double max_diff = 0, max_ref = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_FALSE(std::isnan(a[i])) << out_name << "[" << i << "] is NaN";
      max_diff = std::max(max_diff, std::fabs(a[i] - b[i]));
      max_ref = std::max(max_ref, std::fabs(b[i]));
    }
    const double rel = max_diff / std::max(max_ref, 1e-30);
    std::cout << name << " output " << out_name << ": max abs diff " << max_diff << ", max |ref| " << max_ref
              << ", relative " << rel << "\n";
    EXPECT_LT(rel, 1e-4) << out_name;
  }
}

}  // namespace

TEST_P(ModelTest, MatchesPyTorch) {
  const std::string name = GetParam();
  Loaded l;
  if (!load_exported(name, &l)) GTEST_SKIP() << "model " << name << " not exported (run scripts/export-models.sh)";
  reference::Executor exec(std::move(l.model));
  ASSERT_EQ(l.inputs.size(), exec.model().graph.inputs.size()) << "io file lacks some inputs";
  expect_matches(name, exec.model().graph, exec.run(l.inputs), l.expected);
}

// The whole optimization pipeline (every pass at the highest level, shapes from the saved
// inputs) must keep the model's outputs within the same tolerance of PyTorch's.
TEST_P(ModelTest, OptimizedMatchesPyTorch) {
  const std::string name = GetParam();
  Loaded l;
  if (!load_exported(name, &l)) GTEST_SKIP() << "model " << name << " not exported (run scripts/export-models.sh)";
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(l.model, infer);
  const size_t nodes_before = l.model.graph.nodes.size();
  PassContext ctx;
  ctx.opt_level = 3;
  ctx.verify_after_each_pass = true;
  ctx.evaluator = reference::constant_evaluator();
  for (const auto& [k, t] : l.inputs) ctx.input_shapes[k] = t.shape();
  PassManager::standard().run(l.model, ctx);
  std::map<std::string, int> histogram;
  for (const Node& n : l.model.graph.nodes) ++histogram[n.domain.empty() ? n.op_type : n.domain + "::" + n.op_type];
  std::cout << name << ": " << nodes_before << " nodes before, " << l.model.graph.nodes.size() << " after;";
  for (const auto& [op, c] : histogram) std::cout << " " << op << "=" << c;
  std::cout << "\n";
  for (const auto& line : ctx.log) std::cout << "  " << line << "\n";
  reference::Executor exec(std::move(l.model));
  expect_matches(name, exec.model().graph, exec.run(l.inputs), l.expected);
}

// `kiln build` then `kiln run`: the engine (passes, tactics timed at the saved inputs' shapes,
// serialized and loaded back) matches PyTorch and the reference executor, both < 1e-4.
TEST_P(ModelTest, EngineMatchesPyTorch) {
  const std::string name = GetParam();
  Loaded l;
  if (!load_exported(name, &l)) GTEST_SKIP() << "model " << name << " not exported (run scripts/export-models.sh)";
  const Model original = l.model;
  BuildConfig cfg;
  cfg.profiles.resize(1);
  for (const auto& [k, t] : l.inputs) cfg.profiles[0].inputs[k] = {t.shape(), t.shape(), t.shape()};
  BuildResult built = build_engine(l.model, cfg);
  std::cout << name << ": " << built.nodes_before << " nodes -> " << built.model.graph.nodes.size() << ", "
            << built.info.kernels << " kernels, peak activations " << built.info.memory_peak / 1048576.0
            << " MiB of " << built.info.memory_total / 1048576.0 << " MiB\n";
  std::map<std::string, int> tactics;
  for (const auto& t : built.info.node_tactics) ++tactics[t.empty() ? "(folded)" : t];
  for (const auto& [t, c] : tactics) std::cout << "  " << t << " x" << c << "\n";
  const auto bytes = serialize_engine(built.model, built.info);
  LoadedEngine loaded = load_engine_from_memory(bytes);
  auto rt = std::make_shared<EngineRuntime>(std::move(loaded.model), loaded.info);
  Context ctx(rt);
  auto got = ctx.run(l.inputs);
  expect_matches(name, rt->model().graph, got, l.expected);
  reference::Executor ref(original);
  auto want = ref.run(l.inputs);
  std::map<std::string, Tensor> want_map(want.begin(), want.end());
  expect_matches(name + " vs reference", rt->model().graph, got, want_map);
}

INSTANTIATE_TEST_SUITE_P(Exported, ModelTest,
                         ::testing::Values("resnet50", "mobilenet_v2", "bert", "gpt",  //
                                           "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf",
                                           "shufflenet_v2_x0_5", "densenet121", "squeezenet1_1",
                                           "convnext_tiny", "vit_b16_2layer", "yolov8_tiny"),
                         [](const auto& info) { return info.param; });

// A batch of 3 run as sub-batches (runtime/batch_split.h, 2 threads) against the same engine run
// as one program: the samples are the saved inputs scaled three ways. Every exported model has a
// dynamic batch axis and keeps its samples apart, so each must split, except ViT: torchvision's
// attention runs sequence-first, and the check only follows a batch on axis 0. < 1e-4 of the
// largest output.
TEST_P(ModelTest, SplitBatchMatchesWholeBatch) {
  const std::string name = GetParam();
  Loaded l;
  if (!load_exported(name, &l)) GTEST_SKIP() << "model " << name << " not exported (run scripts/export-models.sh)";
  constexpr int64_t kBatch = 3;
  reference::TensorMap batch;
  BuildConfig cfg;
  cfg.time_tactics = false;
  cfg.threads = 2;
  cfg.profiles.resize(1);
  for (const auto& [k, t] : l.inputs) {
    auto dims = t.shape();
    ASSERT_FALSE(dims.empty());
    const int64_t per = t.numel() / dims[0];
    auto one = dims, three = dims;
    one[0] = 1;
    three[0] = kBatch;
    cfg.profiles[0].inputs[k] = {one, three, three};
    Tensor b(t.dtype(), three);
    const auto src = t.to_double_vector();
    for (int64_t s = 0; s < kBatch; ++s)
      for (int64_t i = 0; i < per; ++i) {
        const double v = src[static_cast<size_t>(i)];
        const double scaled = t.dtype() == DType::kF32 ? v * (1.0 - 0.25 * static_cast<double>(s)) : v;
        dispatch_dtype(t.dtype(), [&](auto tag) {
          using T = decltype(tag);
          b.mutable_data<T>()[s * per + i] = static_cast<T>(scaled);
        });
      }
    batch[k] = b;
  }
  BuildResult built = build_engine(l.model, cfg);
  auto split = std::make_shared<EngineRuntime>(built.model, built.info, 2);
  auto whole = std::make_shared<EngineRuntime>(built.model, built.info, 2);
  whole->set_batch_split(false);
  Context cs(split), cw(whole);
  const auto got = cs.run(batch);
  ASSERT_NE(cs.last_plan(), nullptr);
  std::cout << name << ": batch of " << kBatch << " split into sub-batches of " << cs.last_plan()->sub
            << (cs.last_plan()->split() ? "" : " (not split: " + cs.last_plan()->why + ")") << "\n";
  if (name == "vit_b16_2layer") EXPECT_NE(cs.last_plan()->why.find("moves axis 0"), std::string::npos);
  else EXPECT_TRUE(cs.last_plan()->split()) << cs.last_plan()->why;
  const auto want = cw.run(batch);
  std::map<std::string, Tensor> want_map(want.begin(), want.end());
  expect_matches(name + " split vs whole", split->model().graph, got, want_map);
}
