// `kiln build --device cuda` and GPU engine files through the CLI, on the simulated GPU module
// (sim_module.cpp, loaded through KILN_CUDA_MODULE), so CI runs the whole path without a GPU:
// build, inspect, run and bench a GPU engine; the timing cache across builds; and the refusals
// (a GPU engine on the CPU, another SM, an older GPU, another precision or shape, CPU-only flags,
// no GPU at all), each with the message that says what to do.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "onnx/onnx_import.h"
#include "test_support.h"
#include "util/npy.h"

namespace {

using namespace kiln;
using kiln_test::run_kiln_cli;
using kiln_test::Stderr;

const std::string kModel = std::string(KILN_SOURCE_DIR) + "/examples/tiny_cnn.onnx";

class GpuEngineCli : public kiln_test::TempDirTest {
 protected:
  GpuEngineCli() : TempDirTest("kiln_gpu_engine_cli_") {}
  // The simulated module with `gpus` devices of compute capability `sm` (major*10+minor).
  static std::string sim(int gpus = 1, int sm = 90) {
    return std::string("KILN_CUDA_MODULE=") + KILN_SIM_GPU_MODULE + " KILN_SIM_GPUS=" + std::to_string(gpus) +
           " KILN_SIM_GPU_SM=" + std::to_string(sm);
  }
  kiln_test::CliResult kiln(const std::string& args, const std::string& env = sim()) {
    return run_kiln_cli(args, Stderr::kMerge, env);
  }
  std::string engine() const { return (dir_ / "tiny.kiln").string(); }
  // Builds the example for image:2x1x28x28 on the simulated GPU.
  void build(const std::string& extra = "", const std::string& env = sim()) {
    const auto r = kiln("build " + kModel + " --device cuda --shapes image:2x1x28x28 -o " + engine() + " " + extra, env);
    ASSERT_EQ(r.code, 0) << r.out;
  }
  static bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
};

TEST_F(GpuEngineCli, BuildInspectRunAndBenchAGpuEngine) {
  const auto b = kiln("build " + kModel + " --device cuda --shapes image:2x1x28x28 -o " + engine());
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_TRUE(has(b.out, "Kiln simulated GPU 0 (sm_90")) << b.out;
  EXPECT_TRUE(has(b.out, "precision:    fp16")) << b.out;
  EXPECT_TRUE(has(b.out, "3 tuned kernels (3 distinct): 3 timed, 0 from the timing cache")) << b.out;  // 2 convs, 1 Gemm

  const auto i = kiln("inspect " + engine());
  ASSERT_EQ(i.code, 0) << i.out;
  EXPECT_TRUE(has(i.out, "target:     GPU Kiln simulated GPU 0 (sm_90)")) << i.out;
  EXPECT_TRUE(has(i.out, "runs on sm_90 only")) << i.out;
  EXPECT_TRUE(has(i.out, "tactics:    3 tuned kernels recorded")) << i.out;

  // The GPU engine's outputs against the CPU's on the same seeded inputs.
  const auto gpu_dir = dir_ / "gpu", cpu_dir = dir_ / "cpu";
  const auto r = kiln("run " + engine() + " --device cuda --seed 7 -o " + gpu_dir.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "GPU engine (recorded tactics)")) << r.out;
  const auto c = kiln("run " + kModel + " --shapes image:2x1x28x28 --seed 7 -o " + cpu_dir.string(), "");
  ASSERT_EQ(c.code, 0) << c.out;
  const Tensor g = read_npy(gpu_dir / "probabilities.npy"), want = read_npy(cpu_dir / "probabilities.npy");
  ASSERT_EQ(g.shape(), (std::vector<int64_t>{2, 10}));
  ASSERT_EQ(g.shape(), want.shape());
  for (int64_t k = 0; k < g.numel(); ++k) EXPECT_NEAR(g.data<float>()[k], want.data<float>()[k], 2e-3) << k;

  const auto bench = kiln("bench " + engine() + " --device cuda --iterations 5 --warmup-ms 0");
  ASSERT_EQ(bench.code, 0) << bench.out;
  EXPECT_TRUE(has(bench.out, "recorded tactics, nothing timed")) << bench.out;
}

TEST_F(GpuEngineCli, TheTimingCacheMakesTheSecondBuildTimeNothing) {
  const std::string cache = (dir_ / "cache.json").string();
  build("--timing-cache " + cache);
  const auto second = kiln("build " + kModel + " --device cuda --shapes image:2x1x28x28 -o " + engine() +
                           " --timing-cache " + cache);
  ASSERT_EQ(second.code, 0) << second.out;
  EXPECT_TRUE(has(second.out, "3 tuned kernels (3 distinct): 0 timed, 3 from the timing cache")) << second.out;
  // On another GPU the cache is ignored (with a warning) and rebuilt.
  const auto other = kiln("build " + kModel + " --device cuda --shapes image:2x1x28x28 -o " + engine() +
                              " --timing-cache " + cache,
                          sim(1, 80));
  ASSERT_EQ(other.code, 0) << other.out;
  EXPECT_TRUE(has(other.out, "warning: timing cache")) << other.out;
  EXPECT_TRUE(has(other.out, "3 timed, 0 from the timing cache")) << other.out;
}

TEST_F(GpuEngineCli, AGpuEngineIsRefusedWhereItCannotRun) {
  build();
  // On the CPU.
  auto r = kiln("run " + engine(), "");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "GPU engine") && has(r.out, "--device cuda")) << r.out;
  // On another SM: what differs, and what to do.
  r = kiln("run " + engine() + " --device cuda", sim(1, 80));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "(sm_90)") && has(r.out, "(sm_80)") && has(r.out, "--hardware-compatible")) << r.out;
  // Another precision or shape than the engine's.
  r = kiln("run " + engine() + " --device cuda --precision fp32");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "built for fp16")) << r.out;
  r = kiln("run " + engine() + " --device cuda --shapes image:3x1x28x28");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "static shapes image:2x1x28x28")) << r.out;
  // A GPU index the host lacks, and no GPU at all.
  r = kiln("run " + engine() + " --device cuda:1");
  EXPECT_EQ(r.code, 1) << r.out;
  r = kiln("run " + engine() + " --device cuda", sim(0));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "no CUDA GPU")) << r.out;
}

TEST_F(GpuEngineCli, AHardwareCompatibleEngineRunsOnOtherArchitecturesFromSm80) {
  build("--hardware-compatible");
  const auto i = kiln("inspect " + engine());
  EXPECT_TRUE(has(i.out, "hardware-compatible (SM 8.0 and newer)")) << i.out;
  auto r = kiln("run " + engine() + " --device cuda", sim(1, 80));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "GPU engine (tactics timed here)")) << r.out;
  r = kiln("run " + engine() + " --device cuda");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "GPU engine (recorded tactics)")) << r.out;
  r = kiln("run " + engine() + " --device cuda", sim(1, 75));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "SM 8.0 and newer") && has(r.out, "sm_75")) << r.out;
}

// --precision fp8: FP8 GEMMs (the example's final Gemm) with the input scale calibrated from
// --calib; without data it is refused, and --calib without fp8 too. On an SM 8.0 GPU the build
// keeps every GEMM in FP16 (no FP8 kernels there) and says so.
TEST_F(GpuEngineCli, Fp8EnginesAreCalibratedFromCalibData) {
  const std::string base = "build " + kModel + " --device cuda --shapes image:2x1x28x28 -o " + engine();
  auto r = kiln(base + " --precision fp8");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "needs calibration data")) << r.out;
  const auto calib = dir_ / "calib.npz";
  Tensor images(DType::kF32, {6, 1, 28, 28});
  for (int64_t i = 0; i < images.numel(); ++i) images.mutable_data<float>()[i] = static_cast<float>((i * 7919) % 1000) / 1000.f;
  write_npz(calib, {{"image", images}});
  r = kiln(base + " --calib " + calib.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "--calib without --precision fp8")) << r.out;

  r = kiln(base + " --precision fp8 --calib " + calib.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "precision:    fp8")) << r.out;
  EXPECT_TRUE(has(r.out, "1 of 1 GEMMs in FP8")) << r.out;
  EXPECT_TRUE(has(r.out, "1 GEMM inputs calibrated (--calib " + calib.string() + ", minmax, 6 samples)")) << r.out;
  // The engine carries the scale: it runs with no data, close to the CPU's FP32 result.
  const auto gpu_dir = dir_ / "gpu", cpu_dir = dir_ / "cpu";
  r = kiln("run " + engine() + " --device cuda --seed 3 -o " + gpu_dir.string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = kiln("run " + kModel + " --shapes image:2x1x28x28 --seed 3 -o " + cpu_dir.string(), "");
  ASSERT_EQ(r.code, 0) << r.out;
  const Tensor g = read_npy(gpu_dir / "probabilities.npy"), want = read_npy(cpu_dir / "probabilities.npy");
  ASSERT_EQ(g.shape(), want.shape());
  for (int64_t k = 0; k < g.numel(); ++k) EXPECT_NEAR(g.data<float>()[k], want.data<float>()[k], 3e-2) << k;
  // bench of the ONNX model calibrates on its own generated inputs.
  r = kiln("bench " + kModel + " --device cuda --precision fp8 --shapes image:2x1x28x28 --iterations 3 --warmup-ms 0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "FP8 scales calibrated on the generated inputs") && has(r.out, "GEMMs in FP8")) << r.out;
  // SM 8.0: no FP8 kernels, so the GEMM stays FP16.
  r = kiln(base + " --precision fp8 --calib " + calib.string(), sim(1, 80));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "0 of 1 GEMMs in FP8")) << r.out;
}

// --precision int8: a two-convolution model whose convolutions the INT8 kernel takes (16 input
// channels); without --calib it is refused; with it, both convolutions run in INT8 (the simulated
// device reports INT8 faster), the engine carries the scales and runs close to the CPU's FP32.
// The example model's convolutions (1 and 8 input channels) have no INT8 kernel: no data needed.
TEST_F(GpuEngineCli, Int8EnginesAreCalibratedFromCalibData) {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(16), Dim(8), Dim(8)}};
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  auto weight = [&](const std::string& name, std::vector<int64_t> dims) {
    Tensor t(DType::kF32, std::move(dims));
    for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = u(rng);
    m.graph.initializers[name] = t;
  };
  weight("w1", {32, 16, 3, 3}), weight("b1", {32}), weight("w2", {16, 32, 1, 1});
  m.graph.nodes.push_back(Node{"c1", "Conv", "", {"x", "w1", "b1"}, {"h"}, {{"pads", Attribute::of_ints({1, 1, 1, 1})}}});
  m.graph.nodes.push_back(Node{"r1", "Relu", "", {"h"}, {"r"}, {}});
  m.graph.nodes.push_back(Node{"c2", "Conv", "", {"r", "w2"}, {"y"}, {}});
  m.graph.outputs = {"y"};
  const auto model = dir_ / "convs.onnx";
  save_onnx(m, model);
  const std::string base = "build " + model.string() + " --device cuda --shapes x:2x16x8x8 -o " + engine();
  // Modeled time: the INT8-or-FP16 choices (per convolution and for the whole program) are
  // deterministic on the simulated device.
  const std::string env = sim() + " KILN_SIM_MODELED_TIME=1";
  auto kiln = [&](const std::string& args, const std::string& e = "") { return this->kiln(args, e.empty() ? env : e); };
  auto r = kiln(base + " --precision int8");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "needs calibration data")) << r.out;
  // Fewer samples than the batch --shapes fixes (the model's own batch is dynamic): no whole batch,
  // said with both shapes.
  {
    Model dyn = m;
    dyn.graph.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("N"), Dim(16), Dim(8), Dim(8)}};
    const auto dyn_model = dir_ / "convs_dynamic.onnx";
    save_onnx(dyn, dyn_model);
    const auto one = dir_ / "one.npz";
    Tensor x1(DType::kF32, {1, 16, 8, 8});
    for (int64_t i = 0; i < x1.numel(); ++i) x1.mutable_data<float>()[i] = static_cast<float>(i % 13) / 13.f;
    write_npz(one, {{"x", x1}});
    r = kiln("build " + dyn_model.string() + " --device cuda --shapes x:2x16x8x8 -o " + engine() +
             " --precision int8 --calib " + one.string());
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_TRUE(has(r.out, "has no batch of the engine's shapes (the engine's shapes are x:2x16x8x8; 1 batches of "
                           "other shapes, the first x:1x16x8x8")) << r.out;
  }
  const auto calib = dir_ / "calib.npz";
  Tensor x(DType::kF32, {4, 16, 8, 8});
  for (int64_t i = 0; i < x.numel(); ++i) x.mutable_data<float>()[i] = static_cast<float>((i * 7919) % 1000) / 500.f - 1.f;
  write_npz(calib, {{"x", x}});
  r = kiln(base + " --precision int8 --calib " + calib.string() + " --calib-method minmax");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "precision:    int8")) << r.out;
  EXPECT_TRUE(has(r.out, "2 of 2 convolutions in INT8")) << r.out;
  EXPECT_TRUE(has(r.out, "2 convolutions calibrated (--calib " + calib.string() + ", minmax, 4 samples)")) << r.out;
  const auto gpu_dir = dir_ / "gpu", cpu_dir = dir_ / "cpu";
  r = kiln("run " + engine() + " --device cuda --seed 3 -o " + gpu_dir.string());
  ASSERT_EQ(r.code, 0) << r.out;
  r = this->kiln("run " + model.string() + " --seed 3 -o " + cpu_dir.string(), "");
  ASSERT_EQ(r.code, 0) << r.out;
  const Tensor g = read_npy(gpu_dir / "y.npy"), want = read_npy(cpu_dir / "y.npy");
  ASSERT_EQ(g.shape(), want.shape());
  double num = 0, den = 0;
  for (int64_t k = 0; k < g.numel(); ++k) {
    const double d = g.data<float>()[k] - want.data<float>()[k];
    num += d * d, den += double(want.data<float>()[k]) * want.data<float>()[k];
  }
  EXPECT_LT(std::sqrt(num / den), 5e-2);
  // The accuracy guard and --layer-precision NAME:fp16 (their choices are the compiler's, tested in
  // the GPU program cases; here the flags and the report).
  r = kiln(base + " --precision int8 --calib " + calib.string() + " --accuracy-budget 50%");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "guard:        accuracy guard: cosine >= 0.5 needed (budget 50%), 4 validation samples")) << r.out;
  EXPECT_TRUE(has(r.out, "with 0 of 2 layers kept in fp16")) << r.out;
  r = kiln(base + " --precision int8 --calib " + calib.string() + " --layer-precision c2:fp16");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "; 1 convolutions calibrated")) << "c2 is no INT8 candidate any more\n" << r.out;
  r = kiln(base + " --precision int8 --calib " + calib.string() + " --layer-precision c2:fp32");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "keeps layers in fp16 (NAME:fp16)")) << r.out;
  r = kiln(base + " --precision int8 --calib " + calib.string() + " --layer-precision nope:fp16");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "no layer (node) named 'nope'")) << r.out;
  r = kiln(base + " --precision int8 --accuracy-budget 1%");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "needs validation data")) << r.out;
  r = kiln(base + " --precision int8 --calib " + calib.string() + " --validation " + calib.string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "--validation needs --accuracy-budget")) << r.out;
  r = kiln(base + " --accuracy-budget 1%");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "without --precision int8")) << r.out;
  // bench of the ONNX model calibrates on its own generated inputs.
  r = kiln("bench " + model.string() + " --device cuda --precision int8 --shapes x:2x16x8x8 --iterations 3 --warmup-ms 0");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "INT8 scales calibrated on the generated inputs") && has(r.out, "2 of 2 convolutions in INT8")) << r.out;
  // The example's convolutions have no INT8 kernel: built in FP16 without data.
  r = kiln("build " + kModel + " --device cuda --shapes image:2x1x28x28 -o " + engine() + " --precision int8");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "0 of 2 convolutions and 0 of 1 GEMMs in INT8")) << r.out;
}

TEST_F(GpuEngineCli, BadBuildFlagsAreRefused) {
  const std::string base = "build " + kModel + " --shapes image:2x1x28x28 -o " + engine();
  auto r = kiln(base + " --device cuda --int8");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "not supported with --device cuda") && has(r.out, "--precision fp16")) << r.out;
  r = kiln("build " + kModel + " --device cuda -o " + engine() + " --min-shapes image:1x1x28x28 --opt-shapes "
           "image:2x1x28x28 --max-shapes image:4x1x28x28");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "static shapes")) << r.out;
  r = kiln(base + " --precision fp16", "");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "GPU engines (--device cuda)")) << r.out;
  r = kiln(base + " --device cuda --precision int4");
  EXPECT_NE(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "int4")) << r.out;
  r = kiln(base + " --device cuda", sim(0));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "no CUDA GPU")) << r.out;
  EXPECT_FALSE(std::filesystem::exists(engine())) << "a failed build left a file";
}

}  // namespace
