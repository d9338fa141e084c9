// Runs each exported model through the importer and the reference executor and compares with
// PyTorch's outputs saved at export time. Error metric: max |kiln - torch| / max |torch| per
// output (a normalized error, so near-zero outputs do not dominate), required < 1e-4 in FP32.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using namespace kiln;

class ModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelTest, MatchesPyTorch) {
  const char* dir_env = std::getenv("KILN_MODEL_DIR");
  fs::path dir = dir_env ? dir_env : "";
  const std::string name = GetParam();
  fs::path model_path = dir / (name + ".onnx");
  fs::path io_path = dir / (name + ".io.npz");
  if (dir.empty() || !fs::exists(model_path) || !fs::exists(io_path))
    GTEST_SKIP() << "model " << model_path << " not exported (run scripts/export-models.sh)";

  Model model = load_onnx(model_path);
  reference::Executor exec(std::move(model));
  const Graph& g = exec.model().graph;
  reference::TensorMap inputs;
  std::map<std::string, Tensor> expected;
  for (auto& [key, t] : read_npz(io_path)) {
    if (std::find(g.inputs.begin(), g.inputs.end(), key) != g.inputs.end()) inputs[key] = t;
    else expected[key] = t;
  }
  ASSERT_EQ(inputs.size(), g.inputs.size()) << "io file lacks some inputs";
  auto outputs = exec.run(inputs);
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

// The default set, then the coverage set (models/export.py --set default|coverage).
INSTANTIATE_TEST_SUITE_P(Exported, ModelTest,
                         ::testing::Values("resnet50", "mobilenet_v2", "bert", "gpt",  //
                                           "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf",
                                           "shufflenet_v2_x0_5", "densenet121", "squeezenet1_1",
                                           "convnext_tiny", "vit_b16_2layer", "yolov8_tiny"),
                         [](const auto& info) { return info.param; });
