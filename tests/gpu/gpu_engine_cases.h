// GPU engine files and the GPU timing cache (src/backends/gpu/gpu_engine.h), shared by two
// binaries like gpu_program_cases.h: kiln_gpu_tests runs them on the real GPU (cuBLASLt algorithm
// records and cuDNN candidates really round-trip) and kiln_unit_tests on the simulated device.
//
// Every case builds a model with each tuned kernel family (a 3x3 convolution, a depthwise one, a
// 1x1 convolution and a Gemm), and checks what the issue asks of engines: a saved and reloaded
// engine times nothing and computes what the built program computed; a timing cache makes a second
// build time nothing; an engine for another SM or other libraries is refused saying what differs; a
// hardware-compatible one loads there and re-times; a corrupted tactic is timed again, not trusted.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include "backends/gpu/gpu_engine.h"
#include "gpu_program_cases.h"

namespace kiln::gpu_cases {

class GpuEngine : public GpuProgram {
 protected:
  // x[2,8,12,12] -> 3x3 conv + bias + relu -> depthwise 3x3 -> 1x1 conv (+ residual) -> pool -> Gemm.
  static Builder model() {
    Builder b;
    b.input("x", {2, 8, 12, 12}).weight("w1", {16, 8, 3, 3}).weight("b1", {16}).weight("dw", {16, 1, 3, 3})
        .weight("w2", {16, 16, 1, 1}).weight("wf", {10, 16}).weight("bf", {10});
    b.node("Conv", {"x", "w1", "b1"}, {"c1"}, {{"pads", ints({1, 1, 1, 1})}})
        .node("Relu", {"c1"}, {"r1"})
        .node("Conv", {"r1", "dw"}, {"d"}, {{"group", i64(16)}, {"pads", ints({1, 1, 1, 1})}})
        .node("Conv", {"d", "w2"}, {"c2"})
        .node("Add", {"c2", "r1"}, {"s"})
        .node("Relu", {"s"}, {"r2"})
        .node("GlobalAveragePool", {"r2"}, {"g"})
        .node("Flatten", {"g"}, {"f"}, {{"axis", i64(1)}})
        .node("Gemm", {"f", "wf", "bf"}, {"y"}, {{"transB", i64(1)}})
        .output("y");
    return b;
  }
  static gpu::ShapeMap shapes() { return {{"x", {2, 8, 12, 12}}}; }

  // Builds, serializes and reads back (the bytes a file would hold).
  static LoadedEngine round_trip(const gpu::GpuEngineBuild& b) {
    return load_engine_from_memory(serialize_engine(b.optimized, b.info));
  }
  static std::string expect_refused(const Model& m, const EngineInfo& info, ErrorCode code) {
    try {
      gpu::load_gpu_engine(m, info, 0);
      ADD_FAILURE() << "the engine was loaded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      return e.what();
    }
    return {};
  }
  static bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
};

TEST_P(GpuEngine, ASavedEngineLoadsItsRecordedTacticsAndComputesTheSame) {
  Builder b = model();
  const Tensor x = b.random({2, 8, 12, 12});
  const auto want = reference::Executor(b.m).run({{"x", x}});
  for (auto p : {gpu::Precision::kFP16, gpu::Precision::kFP32}) {
    SCOPED_TRACE(gpu::precision_name(p));
    gpu::GpuEngineOptions opt;
    opt.precision = p;
    const gpu::GpuEngineBuild built = gpu::build_gpu_engine(b.m, shapes(), 0, opt);
    // Four tuned kernels, all timed: 3x3 conv, depthwise, 1x1 conv, Gemm.
    EXPECT_EQ(built.program->tactic_stats().timed, 4);
    EXPECT_EQ(built.program->tactic_stats().recorded, 0);
    ASSERT_EQ(built.info.tactics.size(), 4u);
    for (const auto& [key, t] : built.info.tactics) EXPECT_FALSE(t.tactic.empty()) << key;
    EXPECT_EQ(built.info.target.backend, "cuda");
    EXPECT_EQ(built.info.target.properties.at("sm"), built.program->device().props().sm());
    EXPECT_EQ(built.info.target.properties.at("precision"), gpu::precision_name(p));

    const LoadedEngine file = round_trip(built);
    EXPECT_EQ(file.info.tactics.size(), built.info.tactics.size());
    const gpu::LoadedGpuEngine loaded = gpu::load_gpu_engine(file.model, file.info, 0);
    EXPECT_TRUE(loaded.tactics_used);
    EXPECT_EQ(loaded.precision, p);
    EXPECT_EQ(loaded.shapes, shapes());
    EXPECT_EQ(loaded.program->tactic_stats().timed, 0) << "a loaded engine times nothing";
    EXPECT_EQ(loaded.program->tactic_stats().recorded, 4);
    EXPECT_EQ(loaded.program->tactic_stats().rejected, 0);
    ASSERT_EQ(loaded.program->tactics().size(), built.program->tactics().size());
    for (const auto& [key, t] : built.program->tactics()) EXPECT_EQ(loaded.program->tactics().at(key).tactic, t.tactic) << key;
    EXPECT_EQ(loaded.program->steps().size(), built.program->steps().size());

    gpu::GpuContext a(built.program), c(loaded.program);
    const auto ya = a.run({{"x", x}}), yc = c.run({{"x", x}});
    // The same kernels (bit-identical, but for split-K reductions whose order may vary on a GPU).
    EXPECT_LT(rel_error(yc.at("y"), ya.at("y")), 1e-3) << "the loaded engine runs the built kernels";
    EXPECT_LT(rel_error(yc.at("y"), want.at("y")), p == gpu::Precision::kFP32 ? 1e-2 : 2e-2);
  }
}

// An FP8 engine keeps its calibrated input scales in the stored graph: it loads without
// calibration data, and computes what the built program computed.
TEST_P(GpuEngine, AnFp8EngineKeepsItsScales) {
  if (no_fp8()) GTEST_SKIP() << "FP8 GEMMs need SM 8.9 or newer";
  Builder b;
  b.input("x", {8, 64}).weight("w1", {64, 128}).weight("b1", {128}).weight("w2", {128, 32}).weight("b2", {32});
  b.node("FusedMatMul", {"x", "w1", "b1"}, {"h"}, {{"activation", Attribute::of_string("Gelu")}}, "kiln")
      .node("Gemm", {"h", "w2", "b2"}, {"y"})
      .output("y");
  quant::MemoryCalibrator data({{{"x", b.random({8, 64})}}, {{"x", b.random({8, 64})}}});
  gpu::Fp8Calibration calib;
  calib.data = &data;
  gpu::GpuEngineOptions opt;
  opt.precision = gpu::Precision::kFP8;  // FP8 where timing says it pays (FP16 elsewhere: same test)
  try {
    gpu::build_gpu_engine(b.m, {{"x", {8, 64}}}, 0, opt);
    ADD_FAILURE() << "an FP8 engine was built without calibration data";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
  }
  opt.fp8 = &calib;
  const gpu::GpuEngineBuild built = gpu::build_gpu_engine(b.m, {{"x", {8, 64}}}, 0, opt);
  EXPECT_EQ(built.fp8_gemms, 2u);
  EXPECT_EQ(built.info.target.properties.at("precision"), "fp8");
  const LoadedEngine file = round_trip(built);
  const int timed_before = sim_ ? sim_->tuned_timed() : 0;
  const gpu::LoadedGpuEngine loaded = gpu::load_gpu_engine(file.model, file.info, 0);
  // The FP8-or-FP16 choice of each GEMM is recorded with the tactics: loading times nothing.
  if (sim_) {
    EXPECT_EQ(sim_->tuned_timed(), timed_before);
  }
  EXPECT_EQ(loaded.program->tactic_stats().timed, 0);
  EXPECT_EQ(loaded.precision, gpu::Precision::kFP8);
  EXPECT_TRUE(loaded.tactics_used);
  int scaled = 0;
  for (const Node& n : file.model.graph.nodes) scaled += gpu::fp8_input_scale(n) > 0;
  EXPECT_EQ(scaled, 2);
  const Tensor x = b.random({8, 64});
  const auto ya = gpu::GpuContext(built.program).run({{"x", x}}), yc = gpu::GpuContext(loaded.program).run({{"x", x}});
  EXPECT_LT(rel_error(yc.at("y"), ya.at("y")), 1e-3);
  EXPECT_LT(rel_error(yc.at("y"), reference::Executor(b.m).run({{"x", x}}).at("y")), 1e-1);
}

// An INT8 engine stores its convolutions' scales and the INT8-or-FP16 choice of each: loading
// needs no calibration data and times nothing.
TEST_P(GpuEngine, AnInt8EngineKeepsItsScales) {
  Builder b;
  b.input("x", {2, 16, 8, 8}).weight("w1", {32, 16, 3, 3}).weight("b1", {32}).weight("w2", {16, 32, 1, 1});
  b.node("Conv", {"x", "w1", "b1"}, {"c"}, {{"pads", Attribute::of_ints({1, 1, 1, 1})}})
      .node("Relu", {"c"}, {"r"})
      .node("Conv", {"r", "w2"}, {"y"})
      .output("y");
  quant::MemoryCalibrator data({{{"x", b.random({2, 16, 8, 8})}}, {{"x", b.random({2, 16, 8, 8})}}});
  gpu::GpuCalibration calib;
  calib.data = &data;
  gpu::GpuEngineOptions opt;
  opt.precision = gpu::Precision::kINT8;  // INT8 where timing says it pays (FP16 elsewhere: same test)
  try {
    gpu::build_gpu_engine(b.m, {{"x", {2, 16, 8, 8}}}, 0, opt);
    ADD_FAILURE() << "an INT8 engine was built without calibration data";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
  }
  opt.fp8 = &calib;
  const gpu::GpuEngineBuild built = gpu::build_gpu_engine(b.m, {{"x", {2, 16, 8, 8}}}, 0, opt);
  EXPECT_EQ(built.int8_convs, 2u);
  EXPECT_EQ(built.info.target.properties.at("precision"), "int8");
  const LoadedEngine file = round_trip(built);
  const int timed_before = sim_ ? sim_->tuned_timed() : 0;
  const gpu::LoadedGpuEngine loaded = gpu::load_gpu_engine(file.model, file.info, 0);
  if (sim_) {
    EXPECT_EQ(sim_->tuned_timed(), timed_before);
  }
  EXPECT_EQ(loaded.program->tactic_stats().timed, 0);
  EXPECT_EQ(loaded.precision, gpu::Precision::kINT8);
  int scaled = 0;
  for (const Node& n : file.model.graph.nodes) scaled += gpu::int8_scales(n).ok();
  EXPECT_EQ(scaled, 2);
  const Tensor x = b.random({2, 16, 8, 8});
  const auto ya = gpu::GpuContext(built.program).run({{"x", x}}), yc = gpu::GpuContext(loaded.program).run({{"x", x}});
  EXPECT_LT(rel_error(yc.at("y"), ya.at("y")), 1e-3);
  EXPECT_LT(rel_error(yc.at("y"), reference::Executor(b.m).run({{"x", x}}).at("y")), 5e-2);
}

TEST_P(GpuEngine, ATimingCacheMakesTheSecondBuildTimeNothing) {
  Builder b = model();
  auto device = gpu::open_device(0);
  cpu::TimingCache cache(gpu::gpu_target(device->props()));
  gpu::GpuEngineOptions opt;
  opt.timing_cache = &cache;
  const auto first = gpu::build_gpu_engine(b.m, shapes(), 0, opt);
  EXPECT_EQ(first.program->tactic_stats().timed, 4);
  EXPECT_EQ(cache.size(), 4u);
  const auto second = gpu::build_gpu_engine(b.m, shapes(), 0, opt);
  EXPECT_EQ(second.program->tactic_stats().timed, 0);
  EXPECT_EQ(second.program->tactic_stats().recorded, 4);
  for (const auto& [key, t] : first.info.tactics) EXPECT_EQ(second.info.tactics.at(key).tactic, t.tactic) << key;

  // Saved and read back for this GPU: still every hit. For another target: ignored, with the reason.
  const auto path = std::filesystem::temp_directory_path() / ("kiln_gpu_cache_" + std::to_string(::getpid()) + ".json");
  cache.save(path);
  cpu::TimingCache same(cache.target());
  EXPECT_EQ(same.load(path), "");
  EXPECT_EQ(same.size(), 4u);
  cpu::TimingCache other("Another GPU sm_80 cuda 12000 cublasLt 120000 cudnn 90000");
  const std::string why = other.load(path);
  EXPECT_TRUE(has(why, "ignored")) << why;
  EXPECT_EQ(other.size(), 0u);
  std::filesystem::remove(path);

  // Another precision or workspace limit is another key: timed again.
  opt.precision = gpu::Precision::kFP32;
  EXPECT_EQ(gpu::build_gpu_engine(b.m, shapes(), 0, opt).program->tactic_stats().timed, 4);
}

TEST_P(GpuEngine, AnEngineForAnotherGpuOrLibrariesIsRefusedSayingWhatDiffers) {
  Builder b = model();
  const auto built = gpu::build_gpu_engine(b.m, shapes(), 0, {});
  const LoadedEngine file = round_trip(built);
  const std::string here = built.program->device().props().sm();
  const std::string other_sm = here == "sm_80" ? "sm_86" : "sm_80";

  EngineInfo sm = file.info;
  sm.target.properties["sm"] = other_sm;
  std::string why = expect_refused(file.model, sm, ErrorCode::kUnsupported);
  EXPECT_TRUE(has(why, other_sm) && has(why, here) && has(why, "--hardware-compatible")) << why;

  EngineInfo libs = file.info;
  libs.target.properties["cudnn"] = "80100";
  libs.target.properties["cublaslt"] = "110000";
  why = expect_refused(file.model, libs, ErrorCode::kUnsupported);
  EXPECT_TRUE(has(why, "cuDNN 80100 at build") && has(why, "cuBLASLt 110000 at build")) << why;

  // Hardware-compatible: runs on another SM, its kernels timed there (the records are not used).
  EngineInfo compatible = sm;
  compatible.target.properties["hardware_compatible"] = "1";
  compatible.target.properties["tactic_target"] = "Another GPU " + other_sm;
  const gpu::LoadedGpuEngine loaded = gpu::load_gpu_engine(file.model, compatible, 0);
  EXPECT_FALSE(loaded.tactics_used);
  EXPECT_EQ(loaded.program->tactic_stats().timed, 4);
  EXPECT_EQ(loaded.program->tactic_stats().recorded, 0);

  // Not a GPU engine, or an incomplete record.
  EngineInfo cpu_engine = file.info;
  cpu_engine.target.backend = "cpu";
  why = expect_refused(file.model, cpu_engine, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(has(why, "CPU engine")) << why;
  EngineInfo incomplete = file.info;
  incomplete.target.properties.erase("precision");
  why = expect_refused(file.model, incomplete, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(has(why, "incomplete")) << why;
  // Hostile shapes: another rank, a dim that does not fit the graph, an absurd size.
  for (const std::vector<int64_t>& dims : std::vector<std::vector<int64_t>>{
           {2, 8, 12}, {2, 9, 12, 12}, {int64_t{1} << 40, 8, 12, 12}, {-3, 8, 12, 12}}) {
    EngineInfo shapes_info = file.info;
    shapes_info.profile_shapes["x"] = dims;
    try {
      gpu::load_gpu_engine(file.model, shapes_info, 0);
      ADD_FAILURE() << "an engine with input shape " << ::testing::PrintToString(dims) << " was loaded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
      EXPECT_TRUE(has(e.what(), "input 'x'")) << e.what();
    }
  }
  // With a dynamic batch dim, sizes that overflow or cannot be allocated are errors too.
  Model dynamic = file.model;
  dynamic.graph.types["x"].shape->at(0) = Dim::sym("batch");
  for (int64_t batch : {int64_t{1} << 40, int64_t{1} << 62}) {
    EngineInfo huge = file.info;
    huge.profile_shapes["x"] = {batch, 8, 12, 12};
    try {
      gpu::load_gpu_engine(dynamic, huge, 0);
      ADD_FAILURE() << "an engine at batch " << batch << " was loaded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
      EXPECT_TRUE(has(e.what(), "no tensor on cuda:0 can hold")) << e.what();
    }
  }
  EngineInfo bad_ws = file.info;
  bad_ws.target.properties["workspace_limit"] = "12x";
  why = expect_refused(file.model, bad_ws, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(has(why, "12x")) << why;
}

TEST_P(GpuEngine, ARecordedTacticTheDeviceRefusesIsTimedAgain) {
  Builder b = model();
  const auto built = gpu::build_gpu_engine(b.m, shapes(), 0, {});
  LoadedEngine file = round_trip(built);
  // One record of each kind corrupted: a matmul record, and a convolution naming an unknown family.
  bool matmul = false, conv = false;
  for (auto& [key, t] : file.info.tactics) {
    if (key.starts_with("gpu.matmul") && !matmul) t.tactic = "lt:not-an-algorithm", matmul = true;
    else if (key.starts_with("gpu.conv") && !conv) t.tactic = "winograd|42", conv = true;
  }
  ASSERT_TRUE(matmul && conv);
  std::vector<std::string> log;
  const gpu::LoadedGpuEngine loaded = gpu::load_gpu_engine(file.model, file.info, 0, nullptr, &log);
  EXPECT_EQ(loaded.program->tactic_stats().rejected, 2);
  EXPECT_EQ(loaded.program->tactic_stats().timed, 2);
  EXPECT_EQ(loaded.program->tactic_stats().recorded, 2);
  int lines = 0;
  for (const auto& l : log) lines += has(l, "recorded tactic not usable");
  EXPECT_EQ(lines, 2);
  const Tensor x = b.random({2, 8, 12, 12});
  gpu::GpuContext ctx(loaded.program);
  EXPECT_LT(rel_error(ctx.run({{"x", x}}).at("y"), reference::Executor(b.m).run({{"x", x}}).at("y")), 2e-2);
}

TEST_P(GpuEngine, WrongShapesAndMissingShapesAreRefusedAtBuild) {
  Builder b = model();
  try {
    gpu::build_gpu_engine(b.m, {}, 0, {});
    ADD_FAILURE() << "built without shapes";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_TRUE(has(e.what(), "'x'")) << e.what();
  }
  // A workspace limit no convolution algorithm fits: a build error naming the kernel (on the
  // simulated device every kernel fits, so only the real GPU can show it).
  if (GetParam() == "cuda") {
    gpu::GpuEngineOptions tight;
    tight.precision = gpu::Precision::kFP32;
    tight.workspace_limit = 0;
    try {
      const auto built = gpu::build_gpu_engine(b.m, shapes(), 0, tight);
      EXPECT_EQ(built.program->workspace_bytes(), 0u) << "a zero limit was exceeded";
    } catch (const Error& e) {
      EXPECT_TRUE(has(e.what(), "workspace")) << e.what();
    }
  }
}

}  // namespace kiln::gpu_cases
