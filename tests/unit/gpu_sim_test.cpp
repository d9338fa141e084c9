// The GPU compiler and runtime on the host-simulated device (sim_device.h), so they are tested in
// CI without a GPU: every GPU program case (tests/gpu/gpu_program_cases.h: lowering, layouts,
// fusions, tactics, memory planning, CUDA-graph capture and replay, bad inputs) against the
// reference executor, plus what only a simulation can count: graph capture and replay, memory
// given back by programs and contexts (also when a context runs out of memory half-way), and
// programs on two devices at once.
#include <chrono>
#include <gtest/gtest.h>

#include <filesystem>

#include "../gpu/gpu_engine_cases.h"
#include "../gpu/gpu_program_cases.h"
#include "backends/gpu/host_memory.h"
#include "sim_device.h"

namespace {

using namespace kiln;
using namespace kiln::gpu_cases;

INSTANTIATE_TEST_SUITE_P(Sim, GpuProgram, ::testing::Values(std::string("sim")));
INSTANTIATE_TEST_SUITE_P(Sim, GpuEngine, ::testing::Values(std::string("sim")));

// y = relu(x @ w + b) over [4, 8] x [8, 16]: a two-kernel program (matmul with its epilogue, the
// output copy) on whichever device is asked for.
Builder small_model() {
  Builder b;
  b.input("x", {4, 8}).weight("w", {8, 16}).weight("b", {16});
  b.node("MatMul", {"x", "w"}, {"m"}).node("Add", {"m", "b"}, {"a"}).node("Relu", {"a"}, {"y"}).output("y");
  return b;
}

class SimDevices : public ::testing::Test {
 protected:
  void install(int n, size_t memory = size_t{8} << 30) {
    std::vector<std::shared_ptr<gpu::Device>> all;
    for (int i = 0; i < n; ++i) {
      devices_.push_back(std::make_shared<kiln_test::SimDevice>(i, memory));
      all.push_back(devices_.back());
    }
    gpu::set_device_override(all);
  }
  void TearDown() override { gpu::set_device_override({}); }
  std::vector<std::shared_ptr<kiln_test::SimDevice>> devices_;
};

TEST_F(SimDevices, GraphIsCapturedOnceAndReplayed) {
  install(1);
  Builder b = small_model();
  auto built = gpu::build_gpu_program(b.m, {{"x", {4, 8}}}, 0, {}, 3);
  gpu::GpuContext ctx(built.program);
  const Tensor x = b.random({4, 8});
  const auto want = reference::Executor(b.m).run({{"x", x}});
  for (int i = 0; i < 3; ++i) {
    const auto got = ctx.run({{"x", x}});
    EXPECT_LT(rel_error(got.at("y"), want.at("y")), 2e-2);
  }
  // One capture (the first run, after one plain run), then a replay per run.
  EXPECT_EQ(devices_[0]->graphs_made(), 1);
  EXPECT_EQ(devices_[0]->graph_launches(), 3);
  EXPECT_GT(ctx.run_compute_only(), -1.f);
  EXPECT_EQ(devices_[0]->graph_launches(), 4);
  gpu::GpuContext eager(built.program, /*use_graph=*/false);
  eager.run({{"x", x}});
  EXPECT_EQ(devices_[0]->graphs_made(), 1) << "a context without graphs captures nothing";
}

TEST_F(SimDevices, ProgramsAndContextsGiveTheirMemoryBack) {
  install(1);
  Builder b = small_model();
  {
    auto built = gpu::build_gpu_program(b.m, {{"x", {4, 8}}}, 0, {}, 3);
    EXPECT_GE(devices_[0]->used_memory(), built.program->weight_bytes());
    EXPECT_GT(built.program->weight_bytes(), 0u);
    {
      gpu::GpuContext ctx(built.program);
      ctx.run({{"x", b.random({4, 8})}});
      EXPECT_GT(devices_[0]->used_memory(), built.program->weight_bytes());
    }
    EXPECT_EQ(devices_[0]->used_memory(), built.program->weight_bytes()) << "the context's buffers were not freed";
  }
  EXPECT_EQ(devices_[0]->used_memory(), 0u) << "the program's weights were not freed";
}

// A context that runs out of device memory half-way through its allocations gives back what it took
// and reports it; the program stays usable for a context that fits.
TEST_F(SimDevices, OutOfMemoryInAContextLeavesNothingAllocated) {
  Builder b;
  b.input("x", {64, 256}).weight("w", {256, 256});
  b.node("MatMul", {"x", "w"}, {"m"}).node("Relu", {"m"}, {"y"}).output("y");
  // Weights (128 KiB in FP16) fit; the context's arena, input and output buffers do not all fit.
  install(1, size_t{160} << 10);
  auto built = gpu::build_gpu_program(b.m, {{"x", {64, 256}}}, 0, {}, 3);
  const size_t after_build = devices_[0]->used_memory();
  try {
    gpu::GpuContext ctx(built.program);
    FAIL() << "a context larger than the device's memory was created";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("out of GPU memory"), std::string::npos) << e.what();
  }
  EXPECT_EQ(devices_[0]->used_memory(), after_build) << "the failed context leaked device memory";
}

// Two simulated GPUs: a program per device, each with its own copy of the weights and its own
// contexts, running side by side with the same results.
TEST_F(SimDevices, ProgramsCompiledWithOnePoolShareTheirWeights) {
  install(1);
  Builder b4 = small_model();
  Builder b2 = b4;  // the same weights, another batch size
  b2.m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(8)}};
  auto pool = std::make_shared<gpu::WeightPool>(devices_[0]);
  gpu::CompileOptions o;
  o.weights = pool;
  auto p4 = gpu::build_gpu_program(b4.m, {{"x", {4, 8}}}, 0, o, 3).program;
  const size_t after_one = devices_[0]->used_memory();
  const size_t pooled = pool->bytes();
  EXPECT_EQ(pooled, p4->weight_bytes());
  auto p2 = gpu::build_gpu_program(b2.m, {{"x", {2, 8}}}, 0, o, 3).program;
  // The second program of another batch size found every weight in the pool: nothing new uploaded.
  EXPECT_EQ(pool->bytes(), pooled);
  EXPECT_EQ(devices_[0]->used_memory(), after_one);
  EXPECT_EQ(p2->weight_bytes(), p4->weight_bytes());
  // Both still compute their own results.
  const Tensor x2 = b2.random({2, 8});
  EXPECT_LT(rel_error(gpu::GpuContext(p2).run({{"x", x2}}).at("y"), reference::Executor(b2.m).run({{"x", x2}}).at("y")),
            2e-2);
  // A weight of equal name but other values is not taken from the pool.
  Builder other = small_model();
  other.m.graph.initializers["w"] = other.random({8, 16});
  auto p_other = gpu::build_gpu_program(other.m, {{"x", {4, 8}}}, 0, o, 3).program;
  EXPECT_GT(pool->bytes(), pooled);
  const Tensor x4 = other.random({4, 8});
  EXPECT_LT(rel_error(gpu::GpuContext(p_other).run({{"x", x4}}).at("y"),
                      reference::Executor(other.m).run({{"x", x4}}).at("y")),
            2e-2);
  // The pool lives as long as a program uses it.
  pool.reset();
  o.weights.reset();
  p4.reset();
  p2.reset();
  EXPECT_GT(devices_[0]->used_memory(), 0u);
  p_other.reset();
  EXPECT_EQ(devices_[0]->used_memory(), 0u);
  // A pool of another device is refused.
  install(1);
  gpu::CompileOptions wrong;
  wrong.weights = std::make_shared<gpu::WeightPool>(devices_[0]);
  EXPECT_THROW(gpu::build_gpu_program(b4.m, {{"x", {4, 8}}}, 0, wrong, 3), Error);
}

TEST_F(SimDevices, RunRowsPadsWithZerosAndCutsTheOutputs) {
  install(1);
  Builder b = small_model();
  auto built = gpu::build_gpu_program(b.m, {{"x", {4, 8}}}, 0, {}, 3);
  gpu::GpuContext ctx(built.program);
  for (int64_t rows = 1; rows <= 4; ++rows) {
    const Tensor x = b.random({rows, 8});
    // The reference of the same rows padded with zero rows to the program's 4, cut back to `rows`.
    Tensor padded(DType::kF32, {4, 8});
    std::fill_n(padded.mutable_data<float>(), 32, 0.f);
    std::copy_n(x.data<float>(), rows * 8, padded.mutable_data<float>());
    const Tensor full = reference::Executor(b.m).run({{"x", padded}}).at("y");
    const Tensor got = ctx.run_rows({{"x", x}}, rows).at("y");
    ASSERT_EQ(got.shape(), (std::vector<int64_t>{rows, 16}));
    for (int64_t i = 0; i < rows * 16; ++i) EXPECT_NEAR(got.data<float>()[i], full.data<float>()[i], 1e-2) << i;
  }
  // The same batch in parts (one per request), copied in order.
  const Tensor a = b.random({1, 8}), c = b.random({2, 8});
  Tensor padded(DType::kF32, {4, 8});
  std::fill_n(padded.mutable_data<float>(), 32, 0.f);
  std::copy_n(a.data<float>(), 8, padded.mutable_data<float>());
  std::copy_n(c.data<float>(), 16, padded.mutable_data<float>() + 8);
  const Tensor full = reference::Executor(b.m).run({{"x", padded}}).at("y");
  const reference::TensorMap pa{{"x", a}}, pc{{"x", c}};
  const Tensor got = ctx.run_parts({&pa, &pc}, 3).at("y");
  ASSERT_EQ(got.shape(), (std::vector<int64_t>{3, 16}));
  for (int64_t i = 0; i < 3 * 16; ++i) EXPECT_NEAR(got.data<float>()[i], full.data<float>()[i], 1e-2) << i;
  EXPECT_THROW(ctx.run_parts({&pa, &pc}, 4), Error);  // the parts hold 3 rows, not 4
  EXPECT_THROW(ctx.run_parts({&pc, &pc, &pc}, 4), Error);  // 6 rows do not fit 4
  EXPECT_THROW(ctx.run_parts({}, 2), Error);
  EXPECT_THROW(ctx.run_rows({{"x", b.random({5, 8})}}, 5), Error);
  EXPECT_THROW(ctx.run_rows({{"x", b.random({2, 8})}}, 3), Error);  // rows and the input disagree
}

TEST_F(SimDevices, PartsInRegisteredHostMemoryAreCopiedStraightToTheGpu) {
  // No GPU in use: nothing is pinned (and no GPU is opened for it).
  std::vector<float> host(3 * 8);
  std::string why;
  if (!gpu::any_open_device()) {  // (a real GPU opened by an earlier test would pin it)
    EXPECT_EQ(gpu::pin_host_range(host.data(), host.size() * sizeof(float), &why), nullptr);
    EXPECT_NE(why.find("no GPU is in use"), std::string::npos) << why;
  }

  install(1);
  Builder b = small_model();
  auto built = gpu::build_gpu_program(b.m, {{"x", {4, 8}}}, 0, {}, 3);
  gpu::GpuContext ctx(built.program);
  const Tensor a = b.random({1, 8}), c = b.random({2, 8}), d = b.random({1, 8});
  // a and d live in one registered host buffer (a client's shared memory, say); c does not.
  auto buffer = std::make_shared<std::vector<float>>(16);
  std::copy_n(a.data<float>(), 8, buffer->data());
  std::copy_n(d.data<float>(), 8, buffer->data() + 8);
  std::shared_ptr<void> pin = gpu::pin_host_range(buffer->data(), 16 * sizeof(float), &why);
  ASSERT_NE(pin, nullptr) << why;
  EXPECT_EQ(devices_[0]->registered_ranges(), 1u);
  EXPECT_TRUE(gpu::host_range_pinned(buffer->data() + 8, 8 * sizeof(float)));
  EXPECT_FALSE(gpu::host_range_pinned(buffer->data() + 8, 9 * sizeof(float)));  // runs past its end
  EXPECT_FALSE(gpu::host_range_pinned(c.data<float>(), 16 * sizeof(float)));
  const reference::TensorMap pa{{"x", Tensor::view(DType::kF32, {1, 8}, buffer, buffer->data())}};
  const reference::TensorMap pc{{"x", c}};
  const reference::TensorMap pd{{"x", Tensor::view(DType::kF32, {1, 8}, buffer, buffer->data() + 8)}};

  Tensor padded(DType::kF32, {4, 8});
  std::fill_n(padded.mutable_data<float>(), 32, 0.f);
  std::copy_n(a.data<float>(), 8, padded.mutable_data<float>());
  std::copy_n(c.data<float>(), 16, padded.mutable_data<float>() + 8);
  std::copy_n(d.data<float>(), 8, padded.mutable_data<float>() + 24);
  const Tensor full = reference::Executor(b.m).run({{"x", padded}}).at("y");
  const Tensor got = ctx.run_parts({&pa, &pc, &pd}, 4).at("y");
  ASSERT_EQ(got.shape(), (std::vector<int64_t>{4, 16}));
  for (int64_t i = 0; i < 4 * 16; ++i) EXPECT_NEAR(got.data<float>()[i], full.data<float>()[i], 1e-2) << i;
  EXPECT_EQ(ctx.last_timing().direct_bytes, 2 * 8 * sizeof(float));
  EXPECT_EQ(ctx.last_timing().staged_bytes, 2 * 8 * sizeof(float));

  // Unpinned again: every byte is staged, with the same result.
  pin.reset();
  EXPECT_EQ(devices_[0]->registered_ranges(), 0u);
  EXPECT_FALSE(gpu::host_range_pinned(buffer->data(), 8 * sizeof(float)));
  const Tensor again = ctx.run_parts({&pa, &pc, &pd}, 4).at("y");
  for (int64_t i = 0; i < 4 * 16; ++i) EXPECT_EQ(again.data<float>()[i], got.data<float>()[i]) << i;
  EXPECT_EQ(ctx.last_timing().direct_bytes, 0u);
  EXPECT_EQ(ctx.last_timing().staged_bytes, 4 * 8 * sizeof(float));

  // A driver that refuses: no handle, the reason, nothing recorded.
  devices_[0]->set_refuse_register(true);
  why.clear();
  EXPECT_EQ(gpu::pin_host_range(buffer->data(), 16 * sizeof(float), &why), nullptr);
  EXPECT_NE(why.find("refused"), std::string::npos) << why;
  EXPECT_FALSE(gpu::host_range_pinned(buffer->data(), 8 * sizeof(float)));
}

TEST_F(SimDevices, ProgramsOnTwoDevices) {
  install(2);
  EXPECT_EQ(gpu::device_count(), 2);
  Builder b = small_model();
  auto on0 = gpu::build_gpu_program(b.m, {{"x", {4, 8}}}, 0, {}, 3);
  auto on1 = gpu::build_gpu_program(b.m, {{"x", {4, 8}}}, 1, {}, 3);
  EXPECT_EQ(&on0.program->device(), devices_[0].get());
  EXPECT_EQ(&on1.program->device(), devices_[1].get());
  EXPECT_EQ(devices_[0]->used_memory(), devices_[1]->used_memory()) << "each device holds its own weights";
  gpu::GpuContext c0(on0.program), c1(on1.program);
  const Tensor x = b.random({4, 8});
  const auto y0 = c0.run({{"x", x}}), y1 = c1.run({{"x", x}});
  EXPECT_EQ(rel_error(y0.at("y"), y1.at("y")), 0.0);
  EXPECT_GT(devices_[0]->kernels_run(), 0);
  EXPECT_GT(devices_[1]->kernels_run(), 0);
  try {
    gpu::open_device(2);
    ADD_FAILURE() << "a third device opened";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("this machine has 2"), std::string::npos) << e.what();
  }
}

// Whole exported models (models/export.py) through the GPU compiler and runtime, run by the
// simulated device in FP32, against PyTorch's outputs: the lowering (layouts, fusions, weight
// reorders, data movement) must keep them to FP32 accuracy (measured 1e-7 to 5e-6). The models
// chosen run in seconds on the simulation; models with ops the GPU backend lacks must name them.
TEST_F(SimDevices, ExportedModelsMatchPyTorchInFp32) {
  install(1);
  const std::filesystem::path dir = kiln_test::model_dir();
  int checked = 0;
  // (DenseNet-121 runs on a real GPU only: 30 s on this simulator.)
  for (const char* name : {"digits", "gpt", "squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x0_5", "yolov8_tiny"}) {
    auto e = load_exported(dir, name);
    if (!e) continue;
    gpu::CompileOptions opt;
    opt.precision = gpu::Precision::kFP32;
    auto built = gpu::build_gpu_program(e->model, e->shapes, 0, opt);
    gpu::GpuContext ctx(built.program);
    const auto t0 = std::chrono::steady_clock::now();
    const auto got = ctx.run(e->inputs);
    std::cout << "[ model ] " << name << " on the simulated GPU: "
              << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s\n";
    for (const auto& [k, want] : e->expected) {
      // Every output, integer ones (the detector's labels and indices) exactly.
      EXPECT_LE(rel_error(got.at(k), want), want.dtype() == DType::kF32 ? 1e-4 : 0.0) << name << " " << k;
    }
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no exported models in " << dir << " (scripts/export-models.sh)";
}

}  // namespace
