// `kiln serve` KIND_GPU test cases, shared by two binaries like gpu_program_cases.h: kiln_gpu_tests
// runs them on the host's real GPUs, however many (tests/gpu/serve_gpu_test.cpp, skipped without
// one), and kiln_unit_tests on host-simulated GPUs (tests/unit/serve_gpu_test.cpp). They serve a
// small batching model from a repository and check every batch size (padded ones included) against
// the reference executor, and that concurrent clients' batches run on every GPU.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backends/gpu/gpu_engine.h"
#include "backends/gpu/loader.h"
#include "backends/reference/executor.h"
#include "serve/gpu_instances.h"
#include "../unit/serve_test_support.h"
#include "../unit/sim_device.h"

namespace kiln::serve_gpu_cases {

using namespace kiln;
using namespace kiln::serve;

// y = relu(x @ w + b), x [batch, 8], w [8, 16]: a batching model with a matmul and an epilogue.
inline Model matmul_relu_model() {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.outputs = {"y"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim(8)}};
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.f, 0.5f);
  std::vector<float> w(8 * 16), b(16);
  for (float& v : w) v = n(rng);
  for (float& v : b) v = n(rng);
  m.graph.initializers["w"] = Tensor::from_vector<float>({8, 16}, w);
  m.graph.initializers["b"] = Tensor::from_vector<float>({16}, b);
  m.graph.nodes.push_back(Node{"mm", "MatMul", "", {"x", "w"}, {"m"}, {}});
  m.graph.nodes.push_back(Node{"add", "Add", "", {"m", "b"}, {"a"}, {}});
  m.graph.nodes.push_back(Node{"relu", "Relu", "", {"a"}, {"y"}, {}});
  return m;
}

inline std::vector<float> random_rows(int64_t rows, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(static_cast<size_t>(rows) * 8);
  for (float& v : x) v = u(rng);
  return x;
}

// What the model gives for x, from the reference executor.
inline std::vector<float> expected(const std::vector<float>& x) {
  const int64_t rows = static_cast<int64_t>(x.size() / 8);
  auto out = reference::Executor(matmul_relu_model()).run({{"x", Tensor::from_vector<float>({rows, 8}, x)}});
  const Tensor& y = out.at("y");
  return {y.data<float>(), y.data<float>() + y.numel()};
}

// The count a metrics line reports, or -1 when the line is missing.
inline int64_t metric(const std::string& text, const std::string& key) {
  const size_t at = text.find(key + " ");
  return at == std::string::npos ? -1 : std::stoll(text.substr(at + key.size() + 1));
}

// "sim": `sim_gpus` kiln_test::SimDevice's installed as the GPUs; "cuda": the host's GPUs (skipped
// without one).
class ServeGpu : public kiln_test::ServeRepositoryTest, public ::testing::WithParamInterface<std::string> {
 protected:
  ServeGpu() : ServeRepositoryTest("kiln_serve_gpu_") {}
  bool sim() const { return GetParam() == "sim"; }
  void SetUp() override {
    ServeRepositoryTest::SetUp();
    if (sim()) return;
    std::string why;
    gpus_ = gpu::device_count(&why);
    if (gpus_ == 0) GTEST_SKIP() << "no usable GPU (" << why << "): the KIND_GPU serving tests are skipped";
  }
  // Makes the GPUs available: `n` simulated ones, or the real ones (all of them).
  void install(int n, size_t memory = size_t{1} << 30) {
    if (!sim()) return;
    std::vector<std::shared_ptr<gpu::Device>> all;
    for (int i = 0; i < n; ++i) {
      devices_.push_back(std::make_shared<kiln_test::SimDevice>(i, memory));
      all.push_back(devices_.back());
    }
    gpu::set_device_override(all);
    gpus_ = n;
  }
  void TearDown() override {
    server_.reset();
    if (sim()) gpu::set_device_override({});
    ServeRepositoryTest::TearDown();
  }
  void start(const std::string& config, const Model& model = matmul_relu_model()) {
    add_model("mm", config, model);
    server_ = std::make_unique<InferenceServer>(fast_options({}));
    server_->start();
  }
  // Runs x (rows x 8) through the server; returns y or fails the test.
  std::vector<float> infer(const std::vector<float>& x) {
    InferenceRequest r;
    r.model = "mm";
    InputTensor in;
    in.name = "x";
    in.datatype = DataType::kFP32;
    in.shape = {static_cast<int64_t>(x.size() / 8), 8};
    in.data = x.data();
    in.byte_size = x.size() * sizeof(float);
    r.inputs.push_back(in);
    InferenceOutcome o = server_->infer_sync(r);
    EXPECT_EQ(o.status, Status::kOk) << o.error;
    if (o.status != Status::kOk || o.result.outputs.empty()) return {};
    const Tensor& y = o.result.outputs[0].tensor;
    return {y.data<float>(), y.data<float>() + y.numel()};
  }
  // Exact enough for FP32 on the simulated device; TF32 matmuls on a real GPU.
  float tolerance() const { return sim() ? 1e-4f : 2e-2f; }
  void expect_near(const std::vector<float>& got, const std::vector<float>& want) const {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tolerance()) << "element " << i;
  }
  int gpus_ = 0;
  std::vector<std::shared_ptr<kiln_test::SimDevice>> devices_;
  std::unique_ptr<InferenceServer> server_;
};

TEST_P(ServeGpu, EveryBatchSizeMatchesTheReference) {
  install(1);
  start("max_batch_size: 8\ninstance_group { kind: KIND_GPU gpus: [0] }\n"
        "kiln { build { precision: \"fp32\" gpu_batch_size: [2, 4] } }");
  ASSERT_TRUE(server_->ready());
  // 1..8 rows: programs of 2, 4 and 8 rows, padded with zero rows where the batch is smaller.
  for (int64_t rows = 1; rows <= 8; ++rows) {
    const auto x = random_rows(rows, static_cast<uint32_t>(rows));
    SCOPED_TRACE("rows " + std::to_string(rows));
    expect_near(infer(x), expected(x));
  }
  const std::string metrics = server_->metrics_text();
  // 8 batches; padding: 1->2, 3->4, 5,6,7->8 add 1 + 1 + 3 + 2 + 1 rows.
  EXPECT_NE(metrics.find("kiln_gpu_execution_count{model=\"mm\",version=\"1\",gpu=\"0\"} 8"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("kiln_gpu_inference_count{model=\"mm\",version=\"1\",gpu=\"0\"} 36"), std::string::npos);
  EXPECT_NE(metrics.find("kiln_gpu_padded_row_count{model=\"mm\",version=\"1\",gpu=\"0\"} 8"), std::string::npos);
  EXPECT_GT(metric(metrics, "kiln_gpu_compute_duration_us{model=\"mm\",version=\"1\",gpu=\"0\"}"), -1);
  EXPECT_GT(metric(metrics, "kiln_gpu_model_memory_bytes{model=\"mm\",version=\"1\",gpu=\"0\"}"), 576);
  EXPECT_NE(metrics.find("nv_gpu_utilization{gpu=\"0\"}"), std::string::npos);
  if (sim()) {
    EXPECT_EQ(metric(metrics, "nv_gpu_memory_total_bytes{gpu=\"0\"}"), int64_t{1} << 30);
    EXPECT_EQ(metric(metrics, "nv_gpu_memory_used_bytes{gpu=\"0\"}"), static_cast<int64_t>(devices_[0]->used_memory()));
  } else {
    EXPECT_GT(metric(metrics, "nv_gpu_memory_used_bytes{gpu=\"0\"}"), 0);
    EXPECT_GT(metric(metrics, "nv_gpu_memory_total_bytes{gpu=\"0\"}"),
              metric(metrics, "nv_gpu_memory_used_bytes{gpu=\"0\"}"));
  }
  // The config shows where the model lives.
  const std::string config = server_->model_config_json("mm", "");
  EXPECT_NE(config.find("\"batch_sizes\":[2,4,8]"), std::string::npos) << config;
  EXPECT_NE(config.find("\"gpus\":[0]"), std::string::npos) << config;
}

TEST_P(ServeGpu, BatchesSpreadOverEveryGpuWithOneWeightCopyEach) {
  install(2);  // simulated: two GPUs; real: every GPU of the host
  start("max_batch_size: 4\ninstance_group { count: 2 kind: KIND_GPU }\n"
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\nkiln { build { precision: \"fp32\" } }");
  // A simulated batch keeps its GPU busy 20 ms, as a real one takes its time: while one GPU's two
  // instances are busy, 8 clients' requests must go to the other GPU, whatever the thread timing.
  for (const auto& d : devices_) d->set_sync_delay_ms(20);
  // 8 clients, 12 requests each, of 1 to 3 rows: merged into batches on 2 instances per GPU.
  std::vector<std::future<int>> clients;
  for (int c = 0; c < 8; ++c)
    clients.push_back(std::async(std::launch::async, [this, c] {
      int bad = 0;
      for (int i = 0; i < 12; ++i) {
        const auto x = random_rows(1 + (c + i) % 3, static_cast<uint32_t>(100 * c + i));
        const auto want = expected(x);
        const auto got = infer(x);
        bad += got.size() != want.size();
        for (size_t k = 0; k < got.size() && k < want.size(); ++k) bad += std::abs(got[k] - want[k]) > tolerance();
      }
      return bad;
    }));
  for (auto& c : clients) EXPECT_EQ(c.get(), 0);
  const std::string metrics = server_->metrics_text();
  int64_t rows = 0;
  for (int gpu = 0; gpu < gpus_; ++gpu) {
    const int64_t n =
        metric(metrics, "kiln_gpu_inference_count{model=\"mm\",version=\"1\",gpu=\"" + std::to_string(gpu) + "\"}");
    EXPECT_GT(n, 0) << "GPU " << gpu << " ran nothing\n" << metrics;
    rows += std::max<int64_t>(n, 0);
  }
  EXPECT_EQ(rows, 8 * (4 * 1 + 4 * 2 + 4 * 3));  // every row ran once, on one of the GPUs
  // Each GPU holds one copy of the weights, shared by its 3 programs (batch sizes 1, 2, 4).
  for (const auto& d : devices_) EXPECT_GT(d->used_memory(), 0u);
  const std::string config = server_->model_config_json("mm", "");
  for (int gpu = 0; gpu < gpus_; ++gpu)
    EXPECT_NE(config.find("\"" + std::to_string(gpu) + "\":{\"batch_sizes\":[1,2,4],"), std::string::npos) << config;
  EXPECT_NE(config.find("\"weight_bytes\":576"), std::string::npos) << config;  // (8*16 + 16) FP32
}

TEST_P(ServeGpu, AGpuEngineFileServesOnEveryGpuOfItsArchitecture) {
  install(2);
  // Built once, on GPU 0, at batch 4 (kiln build --device cuda); served on every GPU: an engine runs
  // on any GPU of the architecture it was built for, each with its own weights and contexts.
  gpu::GpuEngineOptions opt;
  opt.precision = gpu::Precision::kFP32;
  const gpu::GpuEngineBuild built = gpu::build_gpu_engine(matmul_relu_model(), {{"x", {4, 8}}}, 0, opt);
  add_model("mm", "max_batch_size: 4\ninstance_group { kind: KIND_GPU }\ndynamic_batching { }");
  std::filesystem::remove(repo() / "mm" / "1" / "model.onnx");
  save_engine(built.optimized, built.info, repo() / "mm" / "1" / "model.kiln");
  // The same engine under max_batch_size 8: refused, saying what to rebuild.
  add_model("big", "max_batch_size: 8\ninstance_group { kind: KIND_GPU }");
  std::filesystem::remove(repo() / "big" / "1" / "model.onnx");
  save_engine(built.optimized, built.info, repo() / "big" / "1" / "model.kiln");
  // And on a CPU instance: refused too.
  add_model("cpu", "max_batch_size: 4\ninstance_group { kind: KIND_CPU }");
  std::filesystem::remove(repo() / "cpu" / "1" / "model.onnx");
  save_engine(built.optimized, built.info, repo() / "cpu" / "1" / "model.kiln");
  ServerOptions o = fast_options({});
  o.exit_on_error = false;
  server_ = std::make_unique<InferenceServer>(o);
  server_->start();
  ASSERT_TRUE(server_->model_ready("mm", ""));
  for (int64_t rows = 1; rows <= 4; ++rows) {
    SCOPED_TRACE("rows " + std::to_string(rows));
    const auto x = random_rows(rows, static_cast<uint32_t>(rows + 40));
    expect_near(infer(x), expected(x));
  }
  const std::string config = server_->model_config_json("mm", "");
  for (int gpu = 0; gpu < gpus_; ++gpu)
    EXPECT_NE(config.find("\"" + std::to_string(gpu) + "\":{\"batch_sizes\":[4],"), std::string::npos) << config;
  std::map<std::string, std::string> reasons;
  for (const IndexEntry& e : server_->repository_index(false)) reasons[e.name] = e.reason;
  EXPECT_NE(reasons["big"].find("max_batch_size 8 exceeds the GPU engine's batch 4"), std::string::npos) << reasons["big"];
  EXPECT_NE(reasons["cpu"].find("holds a GPU engine"), std::string::npos) << reasons["cpu"];
}

TEST_P(ServeGpu, InputsInASharedMemoryRegionGoToTheGpuWithoutAStagingCopy) {
  install(1);
  start("max_batch_size: 8\ninstance_group { kind: KIND_GPU gpus: [0] }\n"
        "kiln { build { precision: \"fp32\" gpu_batch_size: [4] } }");
  // A client's region holding 3 rows of x (what the system shared-memory extension registers).
  const auto x = random_rows(3, 77);
  const size_t bytes = x.size() * sizeof(float);
  const std::string key = "/kiln_test_pin_" + std::to_string(::getpid());
  const int fd = ::shm_open(key.c_str(), O_CREAT | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 4096), 0);
  void* w = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  ASSERT_NE(w, MAP_FAILED);
  std::memcpy(w, x.data(), bytes);
  server_->shared_memory().register_region("in", key, 0, bytes);
  const SharedMemoryStatus st = server_->shared_memory().status("in").at(0);
  EXPECT_TRUE(st.pinned) << st.not_pinned;

  InferenceRequest r;
  r.model = "mm";
  InputTensor in;
  in.name = "x";
  in.datatype = DataType::kFP32;
  in.shape = {3, 8};
  SharedMemoryRegistry::View v = server_->shared_memory().view("in", 0, bytes, "input x");
  in.data = v.data;
  in.byte_size = bytes;
  in.owner = v.owner;
  r.inputs.push_back(in);
  InferenceOutcome o = server_->infer_sync(r);
  ASSERT_EQ(o.status, Status::kOk) << o.error;
  const Tensor& y = o.result.outputs.at(0).tensor;
  expect_near({y.data<float>(), y.data<float>() + y.numel()}, expected(x));
  // The same rows from the request body are staged: the same result.
  expect_near(infer(x), expected(x));
  const std::string metrics = server_->metrics_text();
  EXPECT_EQ(metric(metrics, "kiln_gpu_input_direct_bytes{model=\"mm\",version=\"1\",gpu=\"0\"}"),
            static_cast<int64_t>(bytes))
      << metrics;
  EXPECT_EQ(metric(metrics, "kiln_gpu_input_staged_bytes{model=\"mm\",version=\"1\",gpu=\"0\"}"),
            static_cast<int64_t>(bytes));
  // Unregistered and no request holding it: unpinned, then unmapped.
  v = {};
  in.owner.reset();
  r.inputs.clear();
  server_->shared_memory().unregister("in");
  if (sim()) {
    EXPECT_EQ(devices_[0]->registered_ranges(), 0u);
  }
  ::munmap(w, 4096);
  ::shm_unlink(key.c_str());
}

}  // namespace kiln::serve_gpu_cases
