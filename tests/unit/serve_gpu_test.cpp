// KIND_GPU instances of `kiln serve` on host-simulated GPUs (sim_device.h), so placement, batch
// padding, per-GPU metrics and load-time memory checks run in CI without a GPU: the shared cases of
// tests/gpu/serve_gpu_cases.h (also run on real GPUs by kiln_gpu_tests), config parsing and
// instance placement, and what only a simulation controls: refusals for too little GPU memory and
// over-budget models, dynamic dims and engine files.
#include <gtest/gtest.h>

#include "../gpu/serve_gpu_cases.h"
#include "engine/engine_file.h"
#include "runtime/builder.h"
#include "serve/model_config.h"

namespace {

using namespace kiln;
using namespace kiln::serve;
using namespace kiln::serve_gpu_cases;

INSTANTIATE_TEST_SUITE_P(Sim, ServeGpu, ::testing::Values(std::string("sim")));

ModelConfig config_of(const std::string& text) { return parse_model_config(text, "config.pbtxt", "m"); }

TEST(ServeGpuConfig, KindGpuWithDeviceIds) {
  const ModelConfig c = config_of(
      "max_batch_size: 8\ninstance_group [ { count: 2 kind: KIND_GPU gpus: [1, 0] }, { kind: KIND_CPU } ]\n"
      "kiln { build { gpu_batch_size: [3, 5] } }");
  ASSERT_EQ(c.instance_groups.size(), 2u);
  EXPECT_EQ(c.instance_groups[0].kind, InstanceKind::kGpu);
  EXPECT_EQ(c.instance_groups[0].gpus, (std::vector<int>{1, 0}));
  EXPECT_EQ(c.kiln.build.gpu_batch_sizes, (std::vector<int64_t>{3, 5}));
  // Triton's rule: count instances on each listed GPU; they alternate over the GPUs.
  const auto placed = place_instances(c, 2, "");
  ASSERT_EQ(placed.size(), 5u);
  EXPECT_EQ(placed[0].gpu, 1);
  EXPECT_EQ(placed[1].gpu, 0);
  EXPECT_EQ(placed[2].gpu, 1);
  EXPECT_EQ(placed[3].gpu, 0);
  EXPECT_EQ(placed[4].gpu, -1);  // the CPU group
  EXPECT_EQ(placed[0].group, "m_0");
}

TEST(ServeGpuConfig, NoGpusListedMeansEveryGpu) {
  const ModelConfig c = config_of("max_batch_size: 4\ninstance_group { kind: KIND_GPU }");
  const auto placed = place_instances(c, 3, "");
  ASSERT_EQ(placed.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(placed[static_cast<size_t>(i)].gpu, i);
  // KIND_AUTO stays on the CPU.
  const auto cpu = place_instances(config_of("max_batch_size: 4\ninstance_group { count: 2 }"), 3, "");
  ASSERT_EQ(cpu.size(), 2u);
  EXPECT_EQ(cpu[0].gpu, -1);
}

TEST(ServeGpuConfig, PlacementErrorsNameTheGroupAndTheHost) {
  const ModelConfig c = config_of("max_batch_size: 4\ninstance_group { name: \"g\" kind: KIND_GPU gpus: [0, 2] }");
  try {
    place_instances(c, 2, "");
    FAIL() << "GPU 2 of a two-GPU host was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("instance_group \"g\" lists GPU 2 but this host has 2 GPU(s)"),
              std::string::npos)
        << e.what();
  }
  try {
    place_instances(c, 0, "no CUDA GPU: cudaGetDeviceCount failed");
    FAIL() << "KIND_GPU was accepted without a GPU";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no usable GPU (no CUDA GPU: cudaGetDeviceCount failed); use KIND_CPU"),
              std::string::npos)
        << e.what();
  }
}

TEST(ServeGpuConfig, BadGpuFieldsAreRefused) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"instance_group { kind: KIND_GPU gpus: [-1] }", "gpus lists -1"},
      {"instance_group { kind: KIND_GPU gpus: [0, 0] }", "gpus lists GPU 0 twice"},
      {"instance_group { kind: KIND_CPU gpus: [0] }", "gpus is set but the kind is not KIND_GPU"},
      {"max_batch_size: 4\nkiln { build { gpu_batch_size: [8] } }", "gpu_batch_size 8 is outside [1, max_batch_size 4]"},
      {"max_batch_size: 4\nkiln { build { gpu_batch_size: [0] } }", "gpu_batch_size 0 is outside"},
      {"kiln { build { gpu_batch_size: [1] } }", "gpu_batch_size needs max_batch_size > 0"},
  };
  for (const auto& [text, want] : cases) {
    try {
      config_of(text);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << text << "\n" << e.what();
    }
  }
}

TEST(ServeGpuConfig, CompiledBatchSizes) {
  EXPECT_EQ(gpu_batch_sizes(config_of("max_batch_size: 16\ndynamic_batching { preferred_batch_size: [6] }")),
            (std::vector<int64_t>{1, 2, 4, 6, 8, 16}));
  EXPECT_EQ(gpu_batch_sizes(config_of("max_batch_size: 1")), (std::vector<int64_t>{1}));
  EXPECT_EQ(gpu_batch_sizes(config_of("max_batch_size: 12\nkiln { build { gpu_batch_size: [4] } }")),
            (std::vector<int64_t>{4, 12}));  // max_batch_size is always there
  EXPECT_EQ(gpu_batch_sizes(config_of("max_batch_size: 0")), (std::vector<int64_t>{0}));
}

TEST_P(ServeGpu, ModelsThatDoNotFitAreRefusedAtLoad) {
  install(1, size_t{64} << 10);  // 64 KiB: the weights fit, three programs' instances do not
  add_model("mm", "max_batch_size: 64\ninstance_group { count: 4 kind: KIND_GPU }\n"
                  "kiln { build { precision: \"fp32\" } }",
            matmul_relu_model());
  server_ = std::make_unique<InferenceServer>(fast_options({}));
  try {
    server_->start();
    FAIL() << "a model larger than the GPU loaded";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("model \"mm\" version 1 on GPU 0 needs"), std::string::npos) << what;
    EXPECT_NE(what.find("are free for the instances"), std::string::npos) << what;
  }
  server_.reset();
  EXPECT_EQ(devices_[0]->used_memory(), 0u) << "a refused model left GPU memory behind";
}

TEST_P(ServeGpu, MemoryBudgetCountsTheGpuCopy) {
  install(1);
  add_model("mm", "max_batch_size: 8\ninstance_group { kind: KIND_GPU }\n"
                  "kiln { memory_budget_bytes: 1000 build { precision: \"fp32\" } }",
            matmul_relu_model());
  server_ = std::make_unique<InferenceServer>(fast_options({}));
  try {
    server_->start();
    FAIL() << "a model over its budget loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("over its memory_budget_bytes 1000"), std::string::npos) << e.what();
  }
}

TEST_P(ServeGpu, DynamicDimsAndEnginesAreRefusedForGpu) {
  install(1);
  Model dyn = matmul_relu_model();
  dyn.graph.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim::sym("k")}};
  add_model("dyn", "max_batch_size: 4\ninstance_group { kind: KIND_GPU }", dyn);
  add_model("eng", "max_batch_size: 4\ninstance_group { kind: KIND_GPU }");
  std::filesystem::remove(repo() / "eng" / "1" / "model.onnx");
  BuildConfig cfg;
  cfg.time_tactics = false;
  cfg.threads = 1;
  OptimizationProfile p;
  p.inputs["x"] = ProfileDims{{1, 8}, {2, 8}, {4, 8}};
  cfg.profiles = {p};
  BuildResult r = build_engine(matmul_relu_model(), cfg);
  save_engine(r.model, r.info, repo() / "eng" / "1" / "model.kiln");
  ServerOptions o = fast_options({});
  o.exit_on_error = false;
  server_ = std::make_unique<InferenceServer>(o);
  server_->start();
  std::map<std::string, std::string> reasons;
  for (const IndexEntry& e : server_->repository_index(false)) reasons[e.name] = e.reason;
  EXPECT_NE(reasons["dyn"].find("GPU programs have fixed shapes"), std::string::npos) << reasons["dyn"];
  EXPECT_NE(reasons["eng"].find("KIND_GPU instances need model.onnx or a GPU engine"), std::string::npos) << reasons["eng"];
  EXPECT_TRUE(server_->live());
}

}  // namespace
