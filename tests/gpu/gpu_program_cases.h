// The GPU program test cases, shared by two binaries: kiln_gpu_tests runs them on the real GPU
// (tests/gpu/gpu_program_test.cpp, skipped without one) and kiln_unit_tests on the host-simulated
// device (tests/unit/gpu_sim_test.cpp), so CI exercises the GPU compiler and runtime everywhere.
// Each case builds a small graph covering ops the GPU backend lowers and compares the program's
// outputs with Kiln's reference executor on fresh random inputs, in FP32 (TF32 matmuls and
// convolutions) and FP16, with tolerances on ||out - ref|| / ||ref||, with and without the CUDA
// graph; and the bad-input cases (unsupported nodes, wrong input shapes and dtypes).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>

#include "backends/gpu/gpu_build.h"
#include "quant/calibration.h"
#include "backends/gpu/loader.h"
#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "util/npy.h"
#include "../unit/model_dir.h"
#include "../unit/sim_device.h"

namespace kiln::gpu_cases {

using namespace kiln;


struct Builder {
  Model m;
  std::mt19937 rng{std::random_device{}()};
  explicit Builder(int64_t opset = 17) { m.opsets[""] = opset, m.opsets["kiln"] = 1; }
  Builder& input(const std::string& name, std::vector<int64_t> dims, DType dt = DType::kF32) {
    m.graph.inputs.push_back(name);
    Shape s;
    for (int64_t d : dims) s.push_back(Dim(d));
    m.graph.types[name] = TensorType{dt, s};
    return *this;
  }
  Tensor random(std::vector<int64_t> dims, float lo = -1, float hi = 1) {
    Tensor t(DType::kF32, std::move(dims));
    std::uniform_real_distribution<float> u(lo, hi);
    for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = u(rng);
    return t;
  }
  Builder& weight(const std::string& name, std::vector<int64_t> dims, float scale = 0.3f) {
    m.graph.initializers[name] = random(std::move(dims), -scale, scale);
    return *this;
  }
  Builder& init(const std::string& name, Tensor t) {
    m.graph.initializers[name] = std::move(t);
    return *this;
  }
  Builder& node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out,
                std::map<std::string, Attribute> attrs = {}, const std::string& domain = "") {
    m.graph.nodes.push_back(Node{op + std::to_string(m.graph.nodes.size()), op, domain, std::move(in), std::move(out),
                                 std::move(attrs)});
    return *this;
  }
  Builder& output(const std::string& name) {
    m.graph.outputs.push_back(name);
    return *this;
  }
};

inline Attribute ints(std::vector<int64_t> v) { return Attribute::of_ints(std::move(v)); }
inline Attribute i64(int64_t v) { return Attribute::of_int(v); }
inline Attribute f32(float v) { return Attribute::of_float(v); }

inline double rel_error(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  if (got.shape() != want.shape()) return 1e9;
  double num = 0, den = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double g = got.dtype() == DType::kF32 ? got.data<float>()[i] : static_cast<double>(got.data<int64_t>()[i]);
    const double w = want.dtype() == DType::kF32 ? want.data<float>()[i] : static_cast<double>(want.data<int64_t>()[i]);
    if (!std::isfinite(g)) return 1e9;
    num += (g - w) * (g - w);
    den += w * w;
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// An exported model (models/export.py) with its fixed inputs and PyTorch's outputs for them.
struct ExportedModel {
  Model model;
  reference::TensorMap inputs, expected;
  gpu::ShapeMap shapes;
};

// DIR/NAME.onnx and DIR/NAME.io.npz (split into the model's inputs and the expected outputs);
// nullopt when either file is missing.
inline std::optional<ExportedModel> load_exported(const std::filesystem::path& dir, const std::string& name) {
  const auto onnx = dir / (name + ".onnx"), io = dir / (name + ".io.npz");
  if (dir.empty() || !std::filesystem::exists(onnx) || !std::filesystem::exists(io)) return std::nullopt;
  ExportedModel e;
  e.model = load_onnx(onnx.string());
  const auto& ins = e.model.graph.inputs;
  for (auto& [k, t] : read_tensor_file(io.string())) {
    if (std::find(ins.begin(), ins.end(), k) != ins.end()) e.inputs[k] = t;
    else e.expected[k] = t;
  }
  for (const auto& [k, t] : e.inputs) e.shapes[k] = t.shape();
  return e;
}

class GpuProgram : public ::testing::TestWithParam<std::string> {
 protected:
  // "cuda": the real GPU (skipped without one); "sim": kiln_test::SimDevice (tests/unit/sim_device.h)
  // installed as the only device, so the compiler and runtime run without a GPU.
  void SetUp() override {
    if (GetParam() == "sim") {
      sim_ = std::make_shared<kiln_test::SimDevice>(0);
      gpu::set_device_override({sim_});
      return;
    }
    std::string why;
    if (gpu::device_count(&why) == 0) GTEST_SKIP() << "no usable GPU (" << why << "): the GPU program tests are skipped";
  }
  void TearDown() override {
    if (sim_) gpu::set_device_override({});
  }
  std::shared_ptr<kiln_test::SimDevice> sim_;
  // True on a real GPU without FP8 tensor cores (SM below 8.9); the simulated device has them.
  bool no_fp8() const {
    if (sim_) return false;
    const auto& p = gpu::open_device(0)->props();
    return p.sm_major * 10 + p.sm_minor < 89;
  }

  // Runs `m` on the reference executor and on the GPU (at each precision) with the same random
  // inputs; checks the relative error of every output.
  void check(Builder& b, const std::map<std::string, Tensor>& inputs, double tol32 = 1e-2, double tol16 = 2e-2,
             int opt_level = 3, const std::string& conv1x1 = "auto", const std::string& depthwise = "auto") {
    reference::Executor ref(b.m);
    const auto want = ref.run(inputs);
    gpu::ShapeMap shapes;
    for (const auto& [n, t] : inputs) shapes[n] = t.shape();
    for (auto p : {gpu::Precision::kFP32, gpu::Precision::kFP16}) {
      gpu::CompileOptions opt;
      opt.precision = p;
      opt.conv1x1_tactic = conv1x1;
      opt.depthwise_tactic = depthwise;
      auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, opt_level);
      for (bool graph : {true, false}) {
        gpu::GpuContext ctx(built.program, graph);
        for (int rep = 0; rep < 2; ++rep) {  // the second run replays the captured graph
          const auto got = ctx.run(inputs);
          for (const auto& o : b.m.graph.outputs) {
            const double e = rel_error(got.at(o), want.at(o));
            EXPECT_LT(e, p == gpu::Precision::kFP32 ? tol32 : tol16)
                << "output " << o << " at " << gpu::precision_name(p) << (graph ? " (graph)" : "");
          }
        }
      }
    }
  }
};

// MinMax INT8 calibration over the given batches, for GPU INT8 builds.
struct MinMaxCalibration {
  quant::MemoryCalibrator data;
  gpu::GpuCalibration calib;
  explicit MinMaxCalibration(std::vector<quant::TensorMap> batches) : data(std::move(batches)) {
    calib.data = &data;
    calib.method = {quant::CalibMethod::kMinMax, 99.99};
    calib.source = "test batches";
  }
};
// `count` batches of random input "x" shaped `dims`.
inline std::vector<quant::TensorMap> random_batches(Builder& b, const std::vector<int64_t>& dims, int count = 3) {
  std::vector<quant::TensorMap> batches;
  for (int i = 0; i < count; ++i) batches.push_back({{"x", b.random(dims)}});
  return batches;
}

TEST_P(GpuProgram, ConvBiasReluPoolGemm) {
  Builder b;
  b.input("x", {2, 3, 20, 20}).weight("w1", {16, 3, 3, 3}).weight("b1", {16}).weight("w2", {16, 16, 1, 1})
      .weight("wf", {10, 16}).weight("bf", {10});
  b.node("Conv", {"x", "w1", "b1"}, {"c1"}, {{"pads", ints({1, 1, 1, 1})}, {"strides", ints({1, 1})}})
      .node("Relu", {"c1"}, {"r1"})
      .node("MaxPool", {"r1"}, {"p1"}, {{"kernel_shape", ints({3, 3})}, {"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}})
      .node("Conv", {"p1", "w2"}, {"c2"})
      .node("Add", {"c2", "p1"}, {"s2"})  // a residual add, fused into the convolution
      .node("Relu", {"s2"}, {"r2"})
      .node("GlobalAveragePool", {"r2"}, {"g"})
      .node("Flatten", {"g"}, {"f"}, {{"axis", i64(1)}})
      .node("Gemm", {"f", "wf", "bf"}, {"y"}, {{"transB", i64(1)}})
      .output("y");
  const Tensor x = b.random({2, 3, 20, 20});
  // The 1x1 convolution with its residual and ReLU, on cuDNN and as a cuBLASLt GEMM.
  for (const char* tactic : {"cudnn", "gemm"}) {
    SCOPED_TRACE(std::string("1x1 convolutions on ") + tactic);
    check(b, {{"x", x}}, 1e-2, 2e-2, 3, tactic);
  }
}

TEST_P(GpuProgram, DepthwiseClipAveragePoolAndStridedConv) {
  Builder b;
  b.input("x", {1, 8, 17, 17}).weight("dw", {8, 1, 3, 3}).weight("w", {12, 8, 3, 3}).weight("b", {12});
  b.node("Conv", {"x", "dw"}, {"d"}, {{"group", i64(8)}, {"pads", ints({1, 1, 1, 1})}, {"strides", ints({2, 2})}})
      .node("Clip", {"d", "lo", "hi"}, {"c"})
      .node("Conv", {"c", "w", "b"}, {"e"}, {{"dilations", ints({2, 2})}, {"pads", ints({2, 2, 2, 2})}})
      .node("Sigmoid", {"e"}, {"s"})
      .node("AveragePool", {"s"}, {"y"}, {{"kernel_shape", ints({2, 2})}, {"strides", ints({2, 2})}})
      .output("y");
  b.init("lo", Tensor::from_vector<float>({}, {0.f})).init("hi", Tensor::from_vector<float>({}, {0.5f}));
  const Tensor x = b.random({1, 8, 17, 17});
  for (const char* tactic : {"cudnn", "kiln"}) {  // the depthwise convolution on cuDNN and on Kiln's kernel
    SCOPED_TRACE(std::string("depthwise on ") + tactic);
    check(b, {{"x", x}}, 1e-2, 2e-2, 3, "auto", tactic);
  }
}

// MobileNetV2's inverted residual: 1x1 expansion with ReLU6 -> depthwise 3x3 with ReLU6 -> 1x1
// projection. The expansion runs with a plain ReLU (fusable in cuDNN's and cuBLASLt's epilogues)
// and the depthwise kernel clamps its input at 6 as it reads it. Expansion outputs above 6 are
// common here (weights of scale 1), so a missing clamp shows. With the expansion's output read
// by another node too, or the depthwise convolution forced to cuDNN, nothing moves.
TEST_P(GpuProgram, Relu6OfAnExpansionIsClampedByTheDepthwiseRead) {
  for (int form = 0; form < 3; ++form) {
    SCOPED_TRACE(form == 0 ? "deferred" : form == 1 ? "expansion read twice" : "depthwise on cuDNN");
    Builder b;
    b.input("x", {2, 8, 10, 10}).weight("we", {24, 8, 1, 1}, 1.f).weight("be", {24}).weight("wd", {24, 1, 3, 3}, 1.f)
        .weight("bd", {24}).weight("wp", {8, 24, 1, 1}).weight("bp", {8});
    const std::map<std::string, Attribute> relu6 = {{"activation", Attribute::of_string("Clip")},
                                                    {"activation_params", Attribute::of_floats({0.f, 6.f})}};
    auto dw = relu6;
    dw["group"] = i64(24);
    dw["pads"] = ints({1, 1, 1, 1});
    b.node("FusedConv", {"x", "we", "be"}, {"e"}, relu6, "kiln")
        .node("FusedConv", {"e", "wd", "bd"}, {"d"}, dw, "kiln")
        .node("FusedConv", {"d", "wp", "bp"}, {"y"}, {}, "kiln")
        .output("y");
    if (form == 1) b.node("Sigmoid", {"e"}, {"es"}).output("es");
    const Tensor x = b.random({2, 8, 10, 10}, -3.f, 3.f);
    const std::string dw_tactic = form == 2 ? "cudnn" : "auto";
    check(b, {{"x", x}}, 1e-2, 2e-2, 0, "auto", dw_tactic);
    gpu::CompileOptions opt;
    opt.depthwise_tactic = dw_tactic;
    auto built = gpu::build_gpu_program(b.m, {{"x", {2, 8, 10, 10}}}, 0, opt, 0);
    bool clamped_read = false;
    for (const auto& st : built.program->steps()) clamped_read = clamped_read || st.kernel.find("input<=6") != std::string::npos;
    EXPECT_EQ(clamped_read, form == 0);
  }
}

// YOLO's Conv + SiLU (a Sigmoid and a Mul after the convolution): the fusion pass makes it a
// FusedConv with activation SiLU, and the GPU runs the SiLU inside the convolution (cuDNN's graph
// API, or cuDNN then Kiln's epilogue), with no pass of its own. A depthwise convolution with SiLU
// keeps Kiln's depthwise kernel and a separate pass. Against the reference executor, FP32 and FP16.
TEST_P(GpuProgram, SiluFusesIntoTheConvolution) {
  Builder b;
  b.input("x", {2, 16, 12, 12}).weight("w1", {32, 16, 3, 3}).weight("b1", {32}).weight("w2", {32, 32, 1, 1})
      .weight("b2", {32}).weight("wd", {32, 1, 3, 3}).weight("bd", {32});
  b.node("Conv", {"x", "w1", "b1"}, {"c1"}, {{"pads", ints({1, 1, 1, 1})}})
      .node("Sigmoid", {"c1"}, {"s1"})
      .node("Mul", {"c1", "s1"}, {"a1"})
      .node("Conv", {"a1", "w2", "b2"}, {"c2"})
      .node("Sigmoid", {"c2"}, {"s2"})
      .node("Mul", {"c2", "s2"}, {"a2"})
      .node("Conv", {"a2", "wd", "bd"}, {"c3"}, {{"group", i64(32)}, {"pads", ints({1, 1, 1, 1})}})
      .node("Sigmoid", {"c3"}, {"s3"})
      .node("Mul", {"c3", "s3"}, {"y"})
      .output("y");
  const Tensor x = b.random({2, 16, 12, 12}, -2.f, 2.f);
  check(b, {{"x", x}});
  auto built = gpu::build_gpu_program(b.m, {{"x", {2, 16, 12, 12}}}, 0, gpu::CompileOptions{}, 3);
  int convs = 0, passes = 0;
  for (const auto& st : built.program->steps()) {
    if (st.name.find(" activation") != std::string::npos) ++passes;
    else if (st.op == "Conv" || st.op == "FusedConv") ++convs;
  }
  EXPECT_EQ(convs, 3);
  EXPECT_EQ(passes, 1) << "only the depthwise convolution's SiLU runs as a pass of its own";
}

// An image's first convolution (3 input channels, 7x7 stride 2) and a grayscale one (1 channel)
// on their inputs zero-padded to 4 and 8 channels per pixel (filters padded to match), forced and
// timed, against the reference executor: one converting copy writes the padded NHWC input, and
// FP32 programs (TF32 convolutions) never pad.
TEST_P(GpuProgram, FewChannelConvolutionsRunOnZeroPaddedChannels) {
  Builder b;
  b.input("x", {2, 3, 23, 23}).input("g", {2, 1, 9, 9}).weight("w1", {16, 3, 7, 7}).weight("b1", {16})
      .weight("w2", {16, 16, 3, 3}).weight("wg", {8, 1, 3, 3});
  b.node("Conv", {"x", "w1", "b1"}, {"c1"}, {{"pads", ints({3, 3, 3, 3})}, {"strides", ints({2, 2})}})
      .node("Relu", {"c1"}, {"r1"})
      .node("Conv", {"r1", "w2"}, {"y"}, {{"pads", ints({1, 1, 1, 1})}})
      .node("Conv", {"g", "wg"}, {"yg"})
      .output("y")
      .output("yg");
  const std::map<std::string, Tensor> inputs = {{"x", b.random({2, 3, 23, 23})}, {"g", b.random({2, 1, 9, 9})}};
  reference::Executor ref(b.m);
  const auto want = ref.run(inputs);
  const gpu::ShapeMap shapes = {{"x", {2, 3, 23, 23}}, {"g", {2, 1, 9, 9}}};
  for (const std::string pad : {"4", "8", "off", "auto"}) {
    for (auto p : {gpu::Precision::kFP16, gpu::Precision::kFP32}) {
      SCOPED_TRACE("channel_pad " + pad + " at " + gpu::precision_name(p));
      gpu::CompileOptions opt;
      opt.precision = p;
      opt.channel_pad = pad;
      auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3);
      int padded_copies = 0;
      for (const auto& st : built.program->steps())
        if (st.op == "Copy" && st.name.find(" channels)") != std::string::npos) {
          ++padded_copies;
          if (pad == "4" || pad == "8") {
            EXPECT_NE(st.name.find("(" + pad + " channels)"), std::string::npos) << st.name;
          }
        }
      const bool forced = (pad == "4" || pad == "8") && p == gpu::Precision::kFP16;
      if (forced) {
        EXPECT_EQ(padded_copies, 2) << "both few-channel inputs are padded";
      }
      if (pad == "off" || p == gpu::Precision::kFP32) {
        EXPECT_EQ(padded_copies, 0);
      }
      gpu::GpuContext ctx(built.program, true);
      for (int rep = 0; rep < 2; ++rep) {
        const auto got = ctx.run(inputs);
        for (const char* o : {"y", "yg"}) EXPECT_LT(rel_error(got.at(o), want.at(o)), p == gpu::Precision::kFP32 ? 1e-2 : 2e-2) << o;
      }
    }
  }
  gpu::CompileOptions bad;
  bad.channel_pad = "3";
  EXPECT_THROW(gpu::build_gpu_program(b.m, shapes, 0, bad, 3), Error);

  // The choice is a recorded tactic: a second build with the same timing cache makes the padded
  // kernels from the records, untimed, and computes the same.
  cpu::TimingCache cache(gpu::gpu_target(gpu::open_device(0)->props()));
  gpu::CompileOptions cached;
  cached.channel_pad = "8";
  cached.tactics = &cache;
  const auto first = gpu::build_gpu_program(b.m, shapes, 0, cached, 3);
  const auto second = gpu::build_gpu_program(b.m, shapes, 0, cached, 3);
  int padded = 0;
  for (const auto& [key, t] : first.program->tactics())
    if (t.tactic.rfind("cudnn-pad8|", 0) == 0) {
      ++padded;
      EXPECT_EQ(second.program->tactics().at(key).tactic, t.tactic) << key;
    }
  EXPECT_EQ(padded, 2) << "both few-channel convolutions recorded as padded to 8";
  EXPECT_EQ(second.program->tactic_stats().timed, 0);
  EXPECT_EQ(second.program->tactic_stats().rejected, 0);
  EXPECT_EQ(second.program->tactic_stats().recorded, first.program->tactic_stats().timed);
  gpu::GpuContext c1(first.program), c2(second.program);
  const auto y1 = c1.run(inputs), y2 = c2.run(inputs);
  for (const char* o : {"y", "yg"}) {
    EXPECT_LT(rel_error(y2.at(o), y1.at(o)), 1e-3) << o << ": the recorded tactics run the timed kernels";
    EXPECT_LT(rel_error(y2.at(o), want.at(o)), 2e-2) << o << " from the recorded tactics";
  }
}

// A detection head's ops: reductions (adjacent axes, with and without keepdims, axes as an input),
// ArgMax/ArgMin (select_last_index), TopK (largest and smallest, along a middle axis) and
// GatherElements (negative indices), against the reference executor. The input's values are
// distinct multiples of 1/64, exact in FP16, so the FP16 program sees no ties the FP32 one does not.
// A CNN stem (7x7/2 over 3 channels to 64, bias, ReLU or a clip) read only by a 3x3/2 max pooling
// runs as Kiln's fused stem kernel from the FP32 NCHW input: forced ("on"), never ("off") and timed
// ("auto"), each matching the reference; FP32 programs and stems with a second reader keep the
// separate steps; a bad option value is refused.
TEST_P(GpuProgram, StemConvAndMaxPoolFuseIntoOneKernel) {
  for (const bool clip : {false, true}) {
    Builder b;
    b.input("x", {2, 3, 45, 37}).weight("ws", {64, 3, 7, 7}, 0.2f).weight("bs", {64}).weight("w1", {32, 64, 1, 1})
        .weight("b1", {32});
    b.node("Conv", {"x", "ws", "bs"}, {"s"}, {{"pads", ints({3, 3, 3, 3})}, {"strides", ints({2, 2})}});
    if (clip) b.node("Clip", {"s", "lo", "hi"}, {"a"}).init("lo", Tensor::scalar(0.f)).init("hi", Tensor::scalar(0.75f));
    else b.node("Relu", {"s"}, {"a"});
    b.node("MaxPool", {"a"}, {"p"}, {{"kernel_shape", ints({3, 3})}, {"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}})
        .node("Conv", {"p", "w1", "b1"}, {"y"})
        .output("y");
    const std::map<std::string, Tensor> inputs = {{"x", b.random({2, 3, 45, 37})}};
    reference::Executor ref(b.m);
    const auto want = ref.run(inputs);
    const gpu::ShapeMap shapes = {{"x", {2, 3, 45, 37}}};
    for (const std::string mode : {"on", "off", "auto"})
      for (auto p : {gpu::Precision::kFP16, gpu::Precision::kFP32}) {
        SCOPED_TRACE("stem_pool " + mode + " at " + gpu::precision_name(p) + (clip ? " with a clip" : " with ReLU"));
        gpu::CompileOptions opt;
        opt.precision = p;
        opt.stem_pool = mode;
        auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3);
        int fused = 0, pools = 0, copies = 0;
        for (const auto& st : built.program->steps()) {
          fused += st.op == "Conv+MaxPool";
          pools += st.op == "MaxPool";
          copies += st.op == "Copy" && st.name.rfind("to nhwc x", 0) == 0;
        }
        if (p == gpu::Precision::kFP32 || mode == "off") {
          EXPECT_EQ(fused, 0);
          EXPECT_EQ(pools, 1);
        } else if (mode == "on") {
          EXPECT_EQ(fused, 1);
          EXPECT_EQ(pools, 0) << "the pooling runs inside the fused kernel";
          EXPECT_EQ(copies, 0) << "the fused kernel reads the FP32 NCHW input itself";
        } else {
          EXPECT_EQ(fused + pools, 1);
        }
        for (bool graph : {true, false}) {
          gpu::GpuContext ctx(built.program, graph);
          EXPECT_LT(rel_error(ctx.run(inputs).at("y"), want.at("y")), p == gpu::Precision::kFP32 ? 1e-2 : 2e-2);
        }
      }
  }
  // A second reader of the stem's output keeps the separate steps, even with "on".
  Builder b;
  b.input("x", {1, 3, 32, 32}).weight("ws", {64, 3, 7, 7}, 0.2f).weight("bs", {64});
  b.node("Conv", {"x", "ws", "bs"}, {"s"}, {{"pads", ints({3, 3, 3, 3})}, {"strides", ints({2, 2})}})
      .node("MaxPool", {"s"}, {"p"}, {{"kernel_shape", ints({3, 3})}, {"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}})
      .output("p")
      .output("s");
  gpu::CompileOptions opt;
  opt.stem_pool = "on";
  const gpu::ShapeMap shapes = {{"x", {1, 3, 32, 32}}};
  auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3);
  for (const auto& st : built.program->steps()) EXPECT_NE(st.op, "Conv+MaxPool");
  const std::map<std::string, Tensor> inputs = {{"x", b.random({1, 3, 32, 32})}};
  reference::Executor ref(b.m);
  const auto want = ref.run(inputs);
  gpu::GpuContext ctx(built.program, true);
  const auto got = ctx.run(inputs);
  for (const char* o : {"p", "s"}) EXPECT_LT(rel_error(got.at(o), want.at(o)), 2e-2) << o;
  opt.stem_pool = "fused";
  EXPECT_THROW(gpu::build_gpu_program(b.m, shapes, 0, opt, 3), Error);
}

// The fused stem's choice is recorded like a tactic ("gpu.stempool <conv key>"): a second build
// with the same timing cache replays it untimed, and a recorded "split" or "fused" is what the
// program then runs, computing the same.
TEST_P(GpuProgram, FusedStemChoiceIsRecordedInTheTimingCache) {
  Builder b;
  b.input("x", {2, 3, 30, 30}).weight("ws", {64, 3, 7, 7}, 0.2f).weight("bs", {64});
  b.node("Conv", {"x", "ws", "bs"}, {"s"}, {{"pads", ints({3, 3, 3, 3})}, {"strides", ints({2, 2})}})
      .node("Relu", {"s"}, {"a"})
      .node("MaxPool", {"a"}, {"y"}, {{"kernel_shape", ints({3, 3})}, {"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}})
      .output("y");
  const gpu::ShapeMap shapes = {{"x", {2, 3, 30, 30}}};
  const std::map<std::string, Tensor> inputs = {{"x", b.random({2, 3, 30, 30})}};
  reference::Executor ref(b.m);
  const auto want = ref.run(inputs);
  cpu::TimingCache cache(gpu::gpu_target(gpu::open_device(0)->props()));
  std::vector<std::string> log;
  gpu::CompileOptions opt;
  opt.tactics = &cache;
  opt.log = &log;
  auto timings = [&] {
    return std::count_if(log.begin(), log.end(), [](const std::string& l) { return l.find("separate steps") != std::string::npos; });
  };
  const auto first = gpu::build_gpu_program(b.m, shapes, 0, opt, 3);
  std::string key;
  for (const auto& [k, t] : first.program->tactics())
    if (k.rfind("gpu.stempool ", 0) == 0) key = k;
  ASSERT_FALSE(key.empty()) << "the choice is in the program's record";
  EXPECT_EQ(timings(), 1);
  ASSERT_TRUE(cache.find(key).has_value());
  log.clear();
  const auto second = gpu::build_gpu_program(b.m, shapes, 0, opt, 3);
  EXPECT_EQ(timings(), 0) << "replayed from the cache";
  EXPECT_EQ(second.program->tactics().at(key).tactic, first.program->tactics().at(key).tactic);
  for (const std::string choice : {"split", "fused"}) {
    SCOPED_TRACE("recorded " + choice);
    cache.put(key, {choice, 1.0});
    log.clear();
    const auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3);
    EXPECT_EQ(timings(), 0);
    int fused = 0;
    for (const auto& st : built.program->steps()) fused += st.op == "Conv+MaxPool";
    EXPECT_EQ(fused, choice == "fused" ? 1 : 0);
    gpu::GpuContext ctx(built.program, true);
    EXPECT_LT(rel_error(ctx.run(inputs).at("y"), want.at("y")), 2e-2);
  }
}

// In an INT8 program whose pooled stem output is read only by INT8 convolutions, the fused stem
// writes it in INT8 itself (quantized before the max, which commutes): no quantizing pass.
TEST_P(GpuProgram, FusedStemWritesInt8ForInt8Readers) {
  Builder b;
  b.input("x", {2, 3, 40, 40}).weight("ws", {64, 3, 7, 7}, 0.2f).weight("bs", {64});
  b.weight("w1", {32, 64, 1, 1}).weight("b1", {32}).weight("w2", {32, 32, 3, 3}).weight("b2", {32});
  b.node("Conv", {"x", "ws", "bs"}, {"s"}, {{"pads", ints({3, 3, 3, 3})}, {"strides", ints({2, 2})}})
      .node("Relu", {"s"}, {"a"})
      .node("MaxPool", {"a"}, {"p"}, {{"kernel_shape", ints({3, 3})}, {"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}})
      .node("Conv", {"p", "w1", "b1"}, {"c1"}).node("Relu", {"c1"}, {"r1"})
      .node("Conv", {"r1", "w2", "b2"}, {"y"}, {{"pads", ints({1, 1, 1, 1})}})
      .output("y");
  const gpu::ShapeMap shapes = {{"x", {2, 3, 40, 40}}};
  MinMaxCalibration cal(random_batches(b, {2, 3, 40, 40}));
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  opt.int8_convs = sim_ ? "auto" : "always";
  opt.int8_program_check = false;
  opt.stem_pool = "on";
  if (sim_) sim_->set_modeled_time(true);
  auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3, &cal.calib);
  int fused8 = 0, quantize = 0, int8 = 0;
  for (const auto& st : built.program->steps()) {
    fused8 += st.op == "Conv+MaxPool" && st.kernel.find("-> int8") != std::string::npos;
    quantize += st.op == "QuantizeINT8";
    int8 += st.op != "Conv+MaxPool" && st.kernel.find("int8") != std::string::npos;
  }
  EXPECT_EQ(int8, 2) << "both convolutions after the stem in INT8";
  EXPECT_EQ(fused8, 1) << "the stem writes INT8";
  EXPECT_EQ(quantize, 0);
  reference::Executor ref(b.m);
  const quant::TensorMap in = {{"x", b.random({2, 3, 40, 40})}};
  const auto want = ref.run(in);
  gpu::GpuContext ctx(built.program, true);
  const double e = rel_error(ctx.run(in).at("y"), want.at("y"));
  EXPECT_LT(e, 8e-2);
  EXPECT_GT(e, 1e-5) << "INT8 rounding leaves a trace";
}

TEST_P(GpuProgram, ReductionsArgMaxTopKAndGatherElements) {
  Builder b;
  b.input("x", {2, 6, 5});
  Tensor idx(DType::kI64, {2, 3, 5});
  for (int64_t i = 0; i < idx.numel(); ++i) idx.mutable_data<int64_t>()[i] = (i * 7) % 11 - 5;  // in [-5, 5]
  b.init("idx", idx).init("k", Tensor::from_vector<int64_t>({1}, {3})).init("axes", Tensor::from_vector<int64_t>({2}, {1, 2}));
  b.node("ReduceMax", {"x"}, {"rmax"}, {{"axes", ints({1})}, {"keepdims", i64(0)}})
      .node("ReduceMean", {"x"}, {"rmean"}, {{"axes", ints({2})}})
      .node("ReduceMin", {"x"}, {"rmin"}, {{"axes", ints({0, 1})}, {"keepdims", i64(0)}})
      .node("ReduceSum", {"x", "axes"}, {"rsum"})
      .node("ArgMax", {"x"}, {"amax"}, {{"axis", i64(1)}, {"keepdims", i64(0)}})
      .node("ArgMin", {"x"}, {"amin"}, {{"axis", i64(-1)}, {"select_last_index", i64(1)}})
      .node("TopK", {"x", "k"}, {"tv", "ti"}, {{"axis", i64(1)}})
      .node("TopK", {"x", "k"}, {"sv", "si"}, {{"axis", i64(-1)}, {"largest", i64(0)}})
      .node("GatherElements", {"x", "idx"}, {"ge"}, {{"axis", i64(1)}});
  for (const char* o : {"rmax", "rmean", "rmin", "rsum", "amax", "amin", "tv", "ti", "sv", "si", "ge"}) b.output(o);
  Tensor x(DType::kF32, {2, 6, 5});
  std::vector<int> perm(60);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), b.rng);
  for (int i = 0; i < 60; ++i) x.mutable_data<float>()[i] = static_cast<float>(perm[static_cast<size_t>(i)] - 30) / 64.f;
  check(b, {{"x", x}});
}

// DenseNet's and detectors' data ops: Pad (constant, reflect, edge, a crop), Resize (nearest
// asymmetric/floor by scales, linear half_pixel and align_corners by sizes, nearest
// round_prefer_floor shrinking) and a BatchNormalization that no convolution absorbs, read both
// from an NHWC convolution output and from a plain input.
TEST_P(GpuProgram, PadResizeAndBatchNormalization) {
  Builder b;
  b.input("x", {1, 3, 4, 5}).weight("w", {3, 3, 1, 1});
  auto f = [](std::vector<float> v) { return Tensor::from_vector<float>({static_cast<int64_t>(v.size())}, v); };
  auto i = [](std::vector<int64_t> v) { return Tensor::from_vector<int64_t>({static_cast<int64_t>(v.size())}, v); };
  b.init("p1", i({0, 0, 1, 2, 0, 0, 2, 1})).init("p2", i({0, 0, 2, 3, 0, 0, 1, 4})).init("p3", i({0, 1, -1, 0, 0, 0, 0, -2}));
  b.init("cv", Tensor::scalar(0.5f)).init("s2", f({1, 1, 2, 2})).init("sz", i({1, 3, 7, 9})).init("sz2", i({1, 3, 3, 3}));
  b.init("g", f({1.5f, 0.5f, -1.f})).init("bb", f({0.1f, -0.2f, 0.3f})).init("mu", f({0.2f, -0.1f, 0.f})).init("var", f({0.5f, 2.f, 1.f}));
  b.node("Pad", {"x", "p1", "cv"}, {"pc"})
      .node("Pad", {"x", "p2"}, {"pr"}, {{"mode", Attribute::of_string("reflect")}})
      .node("Pad", {"x", "p3"}, {"pe"}, {{"mode", Attribute::of_string("edge")}})
      .node("Resize", {"x", "", "s2"}, {"rn"}, {{"mode", Attribute::of_string("nearest")},
                                               {"coordinate_transformation_mode", Attribute::of_string("asymmetric")},
                                               {"nearest_mode", Attribute::of_string("floor")}})
      .node("Resize", {"x", "", "", "sz"}, {"rl"}, {{"mode", Attribute::of_string("linear")}})
      .node("Resize", {"x", "", "", "sz"}, {"ra"}, {{"mode", Attribute::of_string("linear")},
                                                    {"coordinate_transformation_mode", Attribute::of_string("align_corners")}})
      .node("Resize", {"x", "", "", "sz2"}, {"rd"}, {{"mode", Attribute::of_string("nearest")}})
      .node("Conv", {"x", "w"}, {"c"})
      .node("BatchNormalization", {"c", "g", "bb", "mu", "var"}, {"bn"}, {{"epsilon", f32(1e-3f)}})
      .node("BatchNormalization", {"x", "g", "bb", "mu", "var"}, {"bx"});
  for (const char* o : {"pc", "pr", "pe", "rn", "rl", "ra", "rd", "bn", "bx"}) b.output(o);
  const Tensor x = b.random({1, 3, 4, 5});
  check(b, {{"x", x}});
  // Without the passes the BatchNormalizations reach the GPU lowering itself.
  check(b, {{"x", x}}, 1e-2, 2e-2, 0);
}

// Channel Split, Slice and Concat of convolution outputs, a BatchNormalization + ReLU after the Concat
// (decompose-batchnorm and the chain fusion make it one elementwise kernel) and a nearest Resize,
// all kept in the convolutions' NHWC layout: no layout change anywhere between the first
// convolution and the last. Against the reference executor.
TEST_P(GpuProgram, ChannelSplitConcatBatchNormAndResizeStayNhwc) {
  Builder b;
  b.input("x", {2, 8, 6, 6}).weight("w0", {16, 8, 1, 1}).weight("w1", {8, 8, 3, 3}).weight("w2", {16, 24, 1, 1});
  // (The Slice takes channels 4..11 of the first convolution's 16.)
  auto f = [](std::vector<float> v) { return Tensor::from_vector<float>({static_cast<int64_t>(v.size())}, v); };
  std::vector<float> g(24), be(24), mu(24), var(24);
  for (int i = 0; i < 24; ++i) g[i] = 0.5f + 0.05f * i, be[i] = 0.01f * i - 0.1f, mu[i] = 0.02f * (i % 5), var[i] = 0.5f + 0.1f * (i % 7);
  b.init("g", f(g)).init("be", f(be)).init("mu", f(mu)).init("var", f(var)).init("sc", f({1, 1, 2, 2}));
  b.init("split", Tensor::from_vector<int64_t>({2}, {8, 8}));
  b.init("st", Tensor::from_vector<int64_t>({1}, {4})).init("en", Tensor::from_vector<int64_t>({1}, {12}));
  b.init("ax", Tensor::from_vector<int64_t>({1}, {1}));
  const auto pad1 = std::map<std::string, Attribute>{{"pads", ints({1, 1, 1, 1})}};
  b.node("Conv", {"x", "w0"}, {"c0"})
      .node("Split", {"c0", "split"}, {"s0", "s1"}, {{"axis", i64(1)}})
      .node("Conv", {"s1", "w1"}, {"c1"}, pad1)
      .node("Slice", {"c0", "st", "en", "ax"}, {"sl"})
      .node("Concat", {"s0", "sl", "c1"}, {"cat"}, {{"axis", i64(1)}})
      .node("BatchNormalization", {"cat", "g", "be", "mu", "var"}, {"bn"})
      .node("Relu", {"bn"}, {"r"})
      .node("Resize", {"r", "", "sc"}, {"up"}, {{"mode", Attribute::of_string("nearest")}})
      .node("Conv", {"up", "w2"}, {"y"})
      .output("y");
  check(b, {{"x", b.random({2, 8, 6, 6})}});
  gpu::CompileOptions opt;
  const auto built = gpu::build_gpu_program(b.m, {{"x", {2, 8, 6, 6}}}, 0, opt);
  int layout = 0, elementwise = 0;
  std::string steps;
  for (const auto& st : built.program->steps()) {
    steps += st.op + " " + st.name + "\n";
    layout += st.name.rfind("to nhwc", 0) == 0 || st.name.rfind("to nchw", 0) == 0;
    elementwise += st.op == "ElementwiseChain";
  }
  EXPECT_EQ(layout, 1) << "only the graph input's, before the first convolution:\n" << steps;
  EXPECT_EQ(elementwise, 1) << steps;
}

// A dense block (DenseNet): each layer concatenates every feature so far. A Concat whose inputs
// begin with an earlier Concat's copies that one's output as one part, so the block costs two
// copies per layer, not one per layer and earlier feature. Against the reference executor.
TEST_P(GpuProgram, DenseBlockConcatsReuseTheEarlierConcat) {
  Builder b;
  b.input("x", {2, 8, 5, 5}).weight("w0", {16, 8, 1, 1});
  b.node("Conv", {"x", "w0"}, {"f0"});
  std::vector<std::string> feats = {"f0"};
  int64_t channels = 16;
  for (int layer = 1; layer <= 3; ++layer) {
    const std::string l = std::to_string(layer), in = layer == 1 ? "f0" : "cat" + std::to_string(layer - 1);
    b.weight("w" + l, {8, channels, 3, 3});
    b.node("Conv", {in, "w" + l}, {"f" + l}, {{"pads", ints({1, 1, 1, 1})}});
    feats.push_back("f" + l);
    b.node("Concat", feats, {"cat" + l}, {{"axis", i64(1)}});
    channels += 8;
  }
  b.node("Relu", {"cat3"}, {"y"}).output("y");
  check(b, {{"x", b.random({2, 8, 5, 5})}});
  const auto built = gpu::build_gpu_program(b.m, {{"x", {2, 8, 5, 5}}}, 0, {});
  int copies = 0;
  for (const auto& st : built.program->steps()) copies += st.op == "Concat";
  EXPECT_EQ(copies, 6) << "two parts per Concat: the previous Concat's output and the new feature";
}

TEST_P(GpuProgram, TransformerBlockWithLayerNormSoftmaxAndDataMovement) {
  const int64_t B = 2, S = 12, H = 32;
  Builder b;
  b.input("x", {B, S, H}).weight("w1", {H, 4 * H}).weight("b1", {4 * H}).weight("w2", {4 * H, H}).weight("g", {H}, 1.f)
      .weight("be", {H});
  b.node("MatMul", {"x", "w1"}, {"m1"})
      .node("Add", {"m1", "b1"}, {"a1"})
      .node("Gelu", {"a1"}, {"ge"}, {}, "")
      .node("MatMul", {"ge", "w2"}, {"m2"})
      .node("Add", {"m2", "x"}, {"r"})
      .node("LayerNormalization", {"r", "g", "be"}, {"ln"}, {{"axis", i64(-1)}, {"epsilon", f32(1e-5f)}})
      .node("Reshape", {"ln", "shape4"}, {"rs"})
      .node("Transpose", {"rs"}, {"tr"}, {{"perm", ints({0, 2, 1, 3})}})
      .node("Softmax", {"tr"}, {"sm"}, {{"axis", i64(-1)}})
      .node("Slice", {"sm", "st", "en", "ax"}, {"sl"})
      .node("Split", {"sl", "split"}, {"sp0", "sp1"}, {{"axis", i64(1)}})
      .node("Concat", {"sp1", "sp0"}, {"y"}, {{"axis", i64(1)}})
      .output("y")
      .output("ln");
  b.init("shape4", Tensor::from_vector<int64_t>({4}, {B, S, 4, H / 4}));
  b.init("st", Tensor::from_vector<int64_t>({2}, {1, 0}));
  b.init("en", Tensor::from_vector<int64_t>({2}, {4, 7}));
  b.init("ax", Tensor::from_vector<int64_t>({2}, {1, 3}));
  b.init("split", Tensor::from_vector<int64_t>({2}, {1, 2}));
  b.m.opsets[""] = 20;  // Gelu is an ONNX op from opset 20
  check(b, {{"x", b.random({B, S, H})}});
}

TEST_P(GpuProgram, EmbeddingGatherMaskChainAndWhere) {
  const int64_t B = 2, S = 9, V = 50, E = 16;
  Builder b;
  b.input("ids", {B, S}, DType::kI64).input("mask", {B, S}, DType::kI64).weight("emb", {V, E}, 1.f).weight("pos", {S, E});
  b.node("Gather", {"emb", "ids"}, {"e"}, {{"axis", i64(0)}})
      .node("Add", {"e", "pos"}, {"ep"})
      .node("Cast", {"mask"}, {"mf"}, {{"to", i64(1)}})
      .node("Unsqueeze", {"mf", "ax2"}, {"mu"})
      .node("Sub", {"one", "mu"}, {"inv"})
      .node("Mul", {"inv", "big"}, {"add_mask"})
      .node("Equal", {"mask", "zero"}, {"is_pad"})
      .node("Unsqueeze", {"is_pad", "ax2"}, {"pu"})
      .node("Expand", {"pu", "eshape"}, {"pe"})
      .node("Where", {"pe", "fill", "ep"}, {"y"})
      .node("Add", {"y", "add_mask"}, {"z"})
      .output("z");
  b.init("ax2", Tensor::from_vector<int64_t>({1}, {2}));
  b.init("one", Tensor::from_vector<float>({}, {1.f}));
  b.init("big", Tensor::from_vector<float>({}, {-100.f}));
  b.init("zero", Tensor::from_vector<int64_t>({}, {0}));
  b.init("fill", Tensor::from_vector<float>({}, {7.f}));
  b.init("eshape", Tensor::from_vector<int64_t>({3}, {B, S, E}));
  Tensor ids(DType::kI64, {B, S}), mask(DType::kI64, {B, S});
  for (int64_t i = 0; i < B * S; ++i) {
    ids.mutable_data<int64_t>()[i] = static_cast<int64_t>(b.rng() % V);
    mask.mutable_data<int64_t>()[i] = (i % S) < 6 ? 1 : 0;
  }
  check(b, {{"ids", ids}, {"mask", mask}});
}

// kiln::Attention (what fuse-attention makes) with a [B,1,1,S] padding mask and with a causal one.
TEST_P(GpuProgram, FusedAttentionWithMasks) {
  // Short (one partial tile) and long (several key tiles, a partial query tile) sequences.
  for (auto [S, D] : {std::pair<int64_t, int64_t>{24, 32}, {150, 64}, {70, 128}})
  for (bool causal : {false, true}) {
    const int64_t B = 2, Hh = 3;
    SCOPED_TRACE("S=" + std::to_string(S) + " D=" + std::to_string(D) + (causal ? " causal" : " padding mask"));
    Builder b;
    b.input("q", {B, S, Hh * D}).input("k", {B, S, Hh * D}).input("v", {B, S, Hh * D});
    Tensor mask = causal ? Tensor(DType::kF32, {S, S}) : Tensor(DType::kF32, {B, 1, 1, S});
    for (int64_t i = 0; i < mask.numel(); ++i)
      mask.mutable_data<float>()[i] = causal ? ((i % S) > (i / S) ? -1e9f : 0.f) : ((i % S) >= S - 5 ? -10000.f : 0.f);
    b.init("mask", mask);
    b.node("Attention", {"q", "k", "v", "mask"}, {"y"}, {{"num_heads", i64(Hh)}}, "kiln").output("y");
    check(b, {{"q", b.random({B, S, Hh * D})}, {"k", b.random({B, S, Hh * D})}, {"v", b.random({B, S, Hh * D})}},
          1e-2, 2e-2, 0);
  }
}

// Elementwise chains whose element count is a multiple of 8 run with 16-byte loads and stores;
// others (and unaligned ones) element by element: both against the reference, with a broadcast
// scalar, a select and erf in the chain.
TEST_P(GpuProgram, ElementwiseChainsVectorizedAndNot) {
  for (int64_t cols : {40, 13}) {
    SCOPED_TRACE("cols " + std::to_string(cols));
    Builder b;
    b.input("x", {3, cols}).input("z", {3, cols});
    b.init("zero", Tensor::from_vector<float>({}, {0.f}));
    b.init("half", Tensor::from_vector<float>({}, {0.5f}));
    b.node("Greater", {"x", "zero"}, {"g"})
        .node("Mul", {"x", "z"}, {"m"})
        .node("Where", {"g", "m", "x"}, {"w"})
        .node("Add", {"w", "half"}, {"a"})
        .node("Erf", {"a"}, {"e"})
        .node("Sigmoid", {"z"}, {"s"})
        .node("Mul", {"s", "e"}, {"y"})
        .output("y");
    check(b, {{"x", b.random({3, cols})}, {"z", b.random({3, cols})}});
  }
}

// One activation of one dense input runs as a kernel specialized for it (GELU with a fast erf, tanh
// GELU, Erf, Sigmoid, Tanh, ReLU) when the element count fills 16-byte vectors (cols 64), and in
// the interpreter otherwise (cols 13); a GEMM's erf-GELU too (cuBLASLt's GELU is the tanh form).
TEST_P(GpuProgram, SingleActivationsOnDenseInputs) {
  for (int64_t cols : {64, 13}) {
    SCOPED_TRACE("cols " + std::to_string(cols));
    Builder b;
    b.input("x", {4, cols}).weight("w", {cols, 32}).weight("bias", {32});
    b.node("Gelu", {"x"}, {"gelu"}, {}, "kiln")
        .node("Gelu", {"x"}, {"gelu_tanh"}, {{"approximate", Attribute::of_string("tanh")}}, "kiln")
        .node("Erf", {"x"}, {"erf"})
        .node("Sigmoid", {"x"}, {"sigmoid"})
        .node("Tanh", {"x"}, {"tanh"})
        .node("Relu", {"x"}, {"relu"})
        .node("FusedMatMul", {"x", "w", "bias"}, {"ffn"}, {{"activation", Attribute::of_string("Gelu")}}, "kiln");
    for (const char* o : {"gelu", "gelu_tanh", "erf", "sigmoid", "tanh", "relu", "ffn"}) b.output(o);
    check(b, {{"x", b.random({4, cols}, -4.f, 4.f)}});
  }
}

// An attention's Q, K and V projections (BERT's three Linear layers) run as one GEMM by the
// concatenated weights, the attention reading Q, K and V in place; when one projection has another
// reader, or the projections read different inputs, each keeps its own GEMM.
TEST_P(GpuProgram, QkvProjectionsOfAnAttentionRunAsOneGemm) {
  const int64_t B = 2, S = 20, Hh = 2, D = 32, E = Hh * D;
  enum Form { kPacked, kSharedK, kOtherInput, kNoBias };
  for (Form form : {kPacked, kSharedK, kOtherInput, kNoBias}) {
    SCOPED_TRACE("form " + std::to_string(form));
    Builder b;
    b.input("x", {B, S, E}).input("x2", {B, S, E});
    b.weight("wq", {E, E}).weight("wk", {E, E}).weight("wv", {E, E}).weight("wo", {E, E});
    b.weight("bq", {E}).weight("bk", {E}).weight("bv", {E});
    const bool bias = form != kNoBias;
    auto proj = [&](const std::string& in, const std::string& w, const std::string& bb, const std::string& out) {
      std::vector<std::string> ins = {in, w};
      if (bias) ins.push_back(bb);
      b.node("FusedMatMul", ins, {out}, {}, "kiln");
    };
    proj("x", "wq", "bq", "q");
    proj(form == kOtherInput ? "x2" : "x", "wk", "bk", "k");
    proj("x", "wv", "bv", "v");
    b.node("Attention", {"q", "k", "v"}, {"a"}, {{"num_heads", i64(Hh)}}, "kiln");
    b.node("MatMul", {"a", "wo"}, {"y"}).output("y");
    if (form == kSharedK) b.node("Relu", {"k"}, {"kr"}).output("kr");
    const Tensor x = b.random({B, S, E}), x2 = b.random({B, S, E});
    check(b, {{"x", x}, {"x2", x2}}, 1e-2, 2e-2, 0);
    auto built = gpu::build_gpu_program(b.m, {{"x", {B, S, E}}, {"x2", {B, S, E}}}, 0, {}, 0);
    int gemms = 0;
    for (const auto& st : built.program->steps()) gemms += st.op == "FusedMatMul";
    const bool packed = form == kPacked || form == kNoBias;
    EXPECT_EQ(gemms, packed ? 1 : 3) << "projections, besides the output projection's MatMul";
  }
}

// Q, K and V as last-axis Slices of one packed projection (torch's nn.MultiheadAttention after
// split-packed-projections and cancel-transposes): the attention reads them in place, no Slice
// runs. A Slice with another reader keeps all three.
TEST_P(GpuProgram, AttentionReadsSlicesOfAPackedProjectionInPlace) {
  const int64_t B = 2, S = 17, Hh = 2, D = 32, E = Hh * D;
  for (bool shared : {false, true}) {
    SCOPED_TRACE(shared ? "K sliced for another reader too" : "in place");
    Builder b;
    b.input("x", {B, S, E}).weight("w", {E, 3 * E}).weight("bias", {3 * E}).weight("wo", {E, E});
    b.node("FusedMatMul", {"x", "w", "bias"}, {"proj"}, {}, "kiln");
    const char* names[3] = {"q", "k", "v"};
    for (int64_t j = 0; j < 3; ++j) {
      const std::string n = names[j];
      b.init(n + "_lo", Tensor::from_vector<int64_t>({1}, {j * E}))
          .init(n + "_hi", Tensor::from_vector<int64_t>({1}, {(j + 1) * E}))
          .init(n + "_ax", Tensor::from_vector<int64_t>({1}, {-1}));
      b.node("Slice", {"proj", n + "_lo", n + "_hi", n + "_ax"}, {n});
    }
    b.node("Attention", {"q", "k", "v"}, {"a"}, {{"num_heads", i64(Hh)}}, "kiln");
    b.node("MatMul", {"a", "wo"}, {"y"}).output("y");
    if (shared) b.node("Relu", {"k"}, {"kr"}).output("kr");
    const Tensor x = b.random({B, S, E});
    check(b, {{"x", x}}, 1e-2, 2e-2, 0);
    auto built = gpu::build_gpu_program(b.m, {{"x", {B, S, E}}}, 0, {}, 0);
    int slices = 0;
    for (const auto& st : built.program->steps()) slices += st.op == "Slice";
    EXPECT_EQ(slices, shared ? 3 : 0);
  }
}

// Attention left unfused: MatMuls whose both operands are computed run as strided batches.
TEST_P(GpuProgram, BatchedMatMulOfComputedOperands) {
  const int64_t B = 2, H = 3, S = 10, D = 16;
  Builder b;
  b.input("q", {B, H, S, D}).input("k", {B, H, S, D}).input("v", {B, H, S, D}).input("x", {S, D});
  b.node("Transpose", {"k"}, {"kt"}, {{"perm", ints({0, 1, 3, 2})}})
      .node("MatMul", {"q", "kt"}, {"s"})
      .node("Div", {"s", "scale"}, {"sd"})
      .node("Softmax", {"sd"}, {"p"}, {{"axis", i64(-1)}})
      .node("MatMul", {"p", "v"}, {"o"})
      .node("Transpose", {"x"}, {"xt"})
      .node("MatMul", {"o", "xt"}, {"y"})  // a computed 2-D B shared by every batch
      .output("y");
  b.init("scale", Tensor::from_vector<float>({}, {4.f}));
  check(b, {{"q", b.random({B, H, S, D})}, {"k", b.random({B, H, S, D})}, {"v", b.random({B, H, S, D})},
            {"x", b.random({S, D})}}, 1e-2, 2e-2, 0);
}

// A pre-LN transformer's residual stream: s1 = x + a feeds a LayerNorm first and a later Add too.
// The LayerNorm kernel adds x + a itself and also writes s1 for its other readers (no Add kernel).
TEST_P(GpuProgram, ResidualAddFusesIntoTheLayerNormAndKeepsItsSum) {
  const int64_t B = 2, S = 6, H = 32;
  Builder b;
  b.input("x", {B, S, H}).input("a", {B, S, H}).weight("g", {H}, 1.f).weight("be", {H}).weight("w", {H, H});
  b.node("Add", {"x", "a"}, {"s1"})
      .node("LayerNormalization", {"s1", "g", "be"}, {"l"}, {{"axis", i64(-1)}, {"epsilon", f32(1e-5f)}})
      .node("MatMul", {"l", "w"}, {"m"})
      .node("Add", {"s1", "m"}, {"s2"})
      .output("s2")
      .output("s1");
  const Tensor x = b.random({B, S, H}), a = b.random({B, S, H});
  check(b, {{"x", x}, {"a", a}});
  auto built = gpu::build_gpu_program(b.m, {{"x", {B, S, H}}, {"a", {B, S, H}}}, 0, {}, 0);
  int fused = 0, adds = 0;
  for (const auto& st : built.program->steps()) {
    fused += st.op == "Add+LayerNormalization";
    adds += st.op == "Add";
  }
  EXPECT_EQ(fused, 1);
  EXPECT_EQ(adds, 1) << "only the second residual Add runs as its own kernel";
}

// Transposes that only move dims of size 1 ([S,1,D] <-> [1,S,D] at batch 1) keep every element in
// place: they alias their input like a Reshape, with no kernel. A real transpose still copies.
TEST_P(GpuProgram, TransposesOfSizeOneDimsAreFree) {
  Builder b;
  b.input("x", {5, 1, 8});
  b.node("Transpose", {"x"}, {"t"}, {{"perm", ints({1, 0, 2})}})
      .node("Relu", {"t"}, {"r"})
      .node("Transpose", {"r"}, {"u"}, {{"perm", ints({0, 2, 1})}})  // [1,8,5]: moves the 8 and the 5
      .node("Transpose", {"u"}, {"y"}, {{"perm", ints({2, 1, 0})}})  // [5,8,1]: moves the 5 past the 8
      .output("y");
  check(b, {{"x", b.random({5, 1, 8})}});
  auto built = gpu::build_gpu_program(b.m, {{"x", {5, 1, 8}}}, 0, {}, 0);
  int transposes = 0;
  for (const auto& st : built.program->steps()) transposes += st.op == "Transpose";
  EXPECT_EQ(transposes, 2) << "the first Transpose moves only a size-1 dim";
}

TEST_P(GpuProgram, UnsupportedNodesAreNamedAtBuild) {
  Builder b;
  b.input("x", {2, 8});
  b.node("CumSum", {"x", "axis"}, {"y"}).output("y");
  b.init("axis", Tensor::scalar<int64_t>(1));
  try {
    gpu::build_gpu_program(b.m, {{"x", {2, 8}}}, 0, {}, 0);
    FAIL() << "CumSum built for the GPU";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
    EXPECT_NE(std::string(e.what()).find("CumSum"), std::string::npos) << e.what();
  }
}

// An explicit Q/DQ model (as ONNX Runtime's quantizer or PyTorch's QAT export writes one): int8
// activations quantized and dequantized around two convolutions with per-channel int8 weights, a
// uint8 pair after the ReLU and a standalone DequantizeLinear of an int8 input. The GPU has no Q/DQ
// kernels; decompose-qdq makes them float arithmetic with the same values, so the program matches
// the reference executor on the Q/DQ model itself: every output on the last quantizer's grid, and
// near the reference's value. A GPU sum in another order, or FP16 storage, can move a value across
// a rounding boundary of the next quantizer (a step of the last one: 0.05, outputs of about 1).
TEST_P(GpuProgram, ExplicitQdqModelRunsAsFloatArithmetic) {
  Builder b;
  b.input("x", {2, 16, 10, 10}).input("bias_q", {2, 8, 10, 10}, DType::kI8);
  auto q8 = [&](std::vector<int64_t> dims) {
    Tensor t(DType::kI8, dims);
    std::uniform_int_distribution<int> d(-127, 127);
    for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<int8_t>()[i] = static_cast<int8_t>(d(b.rng));
    return t;
  };
  auto channel_scales = [](int64_t c, float base) {
    std::vector<float> v(static_cast<size_t>(c));
    for (int64_t i = 0; i < c; ++i) v[static_cast<size_t>(i)] = base * (1.f + 0.25f * static_cast<float>(i % 4));
    return Tensor::from_vector<float>({c}, v);
  };
  Tensor zi8(DType::kI8, {}), zu8(DType::kU8, {});
  zi8.mutable_data<int8_t>()[0] = 0;
  zu8.mutable_data<uint8_t>()[0] = 0;
  b.init("s_x", Tensor::scalar<float>(0.01f)).init("s_r", Tensor::scalar<float>(0.02f)).init("s_y", Tensor::scalar<float>(0.05f))
      .init("z8", zi8).init("zu8", zu8)
      .init("w1", q8({32, 16, 3, 3})).init("w1_s", channel_scales(32, 0.004f)).init("w1_z", Tensor(DType::kI8, {32}))
      .init("w2", q8({8, 32, 1, 1})).init("w2_s", channel_scales(8, 0.006f)).init("w2_z", Tensor(DType::kI8, {8}))
      .init("s_b", Tensor::scalar<float>(0.004f))
      .weight("b1", {32}, 0.1f).weight("b2", {8}, 0.1f);
  for (const char* z : {"w1_z", "w2_z"}) std::fill_n(b.m.graph.initializers[z].mutable_data<int8_t>(), b.m.graph.initializers[z].numel(), 0);
  b.node("QuantizeLinear", {"x", "s_x", "z8"}, {"xq"}).node("DequantizeLinear", {"xq", "s_x", "z8"}, {"xd"})
      .node("DequantizeLinear", {"w1", "w1_s", "w1_z"}, {"w1d"}, {{"axis", i64(0)}})
      .node("Conv", {"xd", "w1d", "b1"}, {"c1"}, {{"pads", ints({1, 1, 1, 1})}})
      .node("Relu", {"c1"}, {"r1"})
      .node("QuantizeLinear", {"r1", "s_r", "zu8"}, {"rq"}).node("DequantizeLinear", {"rq", "s_r", "zu8"}, {"rd"})
      .node("DequantizeLinear", {"w2", "w2_s", "w2_z"}, {"w2d"}, {{"axis", i64(0)}})
      .node("Conv", {"rd", "w2d", "b2"}, {"c2"})
      .node("DequantizeLinear", {"bias_q", "s_b", "z8"}, {"bd"})
      .node("Add", {"c2", "bd"}, {"s2"})
      .node("QuantizeLinear", {"s2", "s_y", "z8"}, {"yq"}).node("DequantizeLinear", {"yq", "s_y", "z8"}, {"y"})
      .output("y");
  const Tensor x = b.random({2, 16, 10, 10});
  const Tensor bq = q8({2, 8, 10, 10});
  check(b, {{"x", x}, {"bias_q", bq}}, 2e-2, 3e-2);
  // Element by element: every output sits on the last quantizer's grid (multiples of 0.05, within
  // FP16's rounding of them), none is more than one step from the reference's, and few are a step
  // away at all (only values that a sum in another order moved across a rounding boundary).
  reference::Executor ref(b.m);
  const Tensor want = ref.run({{"x", x}, {"bias_q", bq}}).at("y");
  for (auto p : {gpu::Precision::kFP32, gpu::Precision::kFP16}) {
    SCOPED_TRACE(gpu::precision_name(p));
    gpu::CompileOptions opt;
    opt.precision = p;
    auto prog = gpu::build_gpu_program(b.m, {{"x", x.shape()}, {"bias_q", bq.shape()}}, 0, opt, 3);
    gpu::GpuContext ctx(prog.program);
    const Tensor got = ctx.run({{"x", x}, {"bias_q", bq}}).at("y");
    ASSERT_EQ(got.shape(), want.shape());
    int64_t off_grid = 0, far = 0, stepped = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
      const double g = got.data<float>()[i], w = want.data<float>()[i];
      off_grid += std::fabs(g / 0.05 - std::nearbyint(g / 0.05)) > 0.08;
      far += std::fabs(g - w) > 0.05 * 1.01;
      stepped += std::fabs(g - w) > 0.025;
    }
    EXPECT_EQ(off_grid, 0);
    // FP16 (and TF32 convolutions) round the activations before the next quantizer divides them:
    // on the simulated device FP32 matched the reference exactly and FP16 moved 18-25% of the
    // outputs by a step and 4-7% by two.
    const bool fp16 = p == gpu::Precision::kFP16;
    EXPECT_LE(far, got.numel() / (fp16 ? 10 : 50));
    EXPECT_LE(stepped, got.numel() * (fp16 ? 35 : 15) / 100);
  }
  // Nothing quantized is left for the GPU to refuse, and the build says what it did.
  auto built = gpu::build_gpu_program(b.m, {{"x", x.shape()}, {"bias_q", bq.shape()}}, 0, {}, 3);
  bool logged = false;
  for (const std::string& line : built.pass_log) logged = logged || line.rfind("decompose-qdq: 9 ", 0) == 0;
  EXPECT_TRUE(logged) << "no decompose-qdq line in the pass log";
}

// A post-LN transformer layer over x [B, S, Hh * D]: separate Q, K and V projections (packed into
// one GEMM by the GPU compiler), attention, the output projection with its residual, an FFN with
// erf-GELU, its residual, and LayerNorms.
inline void post_ln_transformer_layer(Builder& b, int64_t B, int64_t S, int64_t Hh, int64_t D) {
  const int64_t E = Hh * D, F = 4 * E;
  b.input("x", {B, S, E});
  for (const char* w : {"wq", "wk", "wv", "wo"}) b.weight(w, {E, E});
  for (const char* bb : {"bq", "bk", "bv", "bo"}) b.weight(bb, {E});
  b.weight("w1", {E, F}).weight("b1", {F}).weight("w2", {F, E}).weight("b2", {E});
  b.weight("g1", {E}, 1.f).weight("be1", {E}).weight("g2", {E}, 1.f).weight("be2", {E});
  const auto ln = [](float eps) { return std::map<std::string, Attribute>{{"axis", i64(-1)}, {"epsilon", f32(eps)}}; };
  b.node("LayerNormalization", {"x", "g1", "be1"}, {"h"}, ln(1e-5f));
  b.node("FusedMatMul", {"h", "wq", "bq"}, {"q"}, {}, "kiln")
      .node("FusedMatMul", {"h", "wk", "bk"}, {"k"}, {}, "kiln")
      .node("FusedMatMul", {"h", "wv", "bv"}, {"v"}, {}, "kiln")
      .node("Attention", {"q", "k", "v"}, {"a"}, {{"num_heads", i64(Hh)}}, "kiln")
      .node("FusedMatMul", {"a", "wo", "bo"}, {"o"}, {}, "kiln")
      .node("Add", {"o", "h"}, {"r1"})
      .node("LayerNormalization", {"r1", "g2", "be2"}, {"h2"}, ln(1e-5f))
      .node("FusedMatMul", {"h2", "w1", "b1"}, {"f1"}, {{"activation", Attribute::of_string("Gelu")}}, "kiln")
      .node("FusedMatMul", {"f1", "w2", "b2"}, {"f2"}, {}, "kiln")
      .node("Add", {"f2", "h2"}, {"r2"})
      .node("LayerNormalization", {"r2", "g2", "be2"}, {"y"}, ln(1e-5f))
      .output("y");
}

// Precision fp8: a post-LN transformer layer (packed QKV projection, attention, output projection
// with its residual, FFN with erf-GELU) with every GEMM in FP8 E4M3, its input scales calibrated on
// the CPU. The GELU writes the second FFN GEMM's input in FP8 itself, the LayerNorms write FP8
// copies of their outputs beside them, and the attention output goes through one quantizing step.
// Within FP8's error of the FP32 reference (the simulated device rounds exactly as the GPU does).
// FP8 is forced on every GEMM (these small GEMMs would stay FP16 on a GPU where FP8 does not pay);
// on the simulated device, where FP8 GEMMs report a tenth of FP16's time, "auto" chooses the same.
TEST_P(GpuProgram, Fp8TransformerLayerMatchesTheReference) {
  if (no_fp8()) GTEST_SKIP() << "FP8 GEMMs need SM 8.9 or newer";
  const int64_t B = 2, S = 16, Hh = 2, D = 32, E = Hh * D;
  Builder b;
  post_ln_transformer_layer(b, B, S, Hh, D);
  const gpu::ShapeMap shapes = {{"x", {B, S, E}}};
  std::vector<quant::TensorMap> batches;
  for (int i = 0; i < 3; ++i) batches.push_back({{"x", b.random({B, S, E}, -2.f, 2.f)}});
  batches.push_back({{"x", b.random({1, S, E}, -2.f, 2.f)}});  // another shape: skipped
  quant::MemoryCalibrator data(batches);
  gpu::Fp8Calibration calib;
  calib.data = &data;
  calib.source = "test batches";
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kFP8;
  opt.fp8_gemms = sim_ ? "auto" : "always";
  SCOPED_TRACE("fp8_gemms " + opt.fp8_gemms);
  auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 0, &calib);
  EXPECT_EQ(built.fp8_gemms, 6u);
  int fp8_gemms = 0, quantize = 0, ln_copies = 0;
  for (const auto& st : built.program->steps()) {
    fp8_gemms += st.op == "FusedMatMul" && st.kernel.find("fp8") != std::string::npos;
    quantize += st.op == "QuantizeFP8";
    ln_copies += st.op.find("LayerNormalization") != std::string::npos && st.kernel.find("fp8") != std::string::npos;
  }
  EXPECT_EQ(fp8_gemms, 4) << "the packed QKV, output and two FFN GEMMs";
  EXPECT_EQ(quantize, 1) << "the attention output; the GELU writes FP8 itself";
  EXPECT_EQ(ln_copies, 2) << "the LayerNorms before the QKV and FFN GEMMs write their FP8 copies";
  // The scales are in the optimized graph (what an engine stores): a rebuild needs no data.
  for (const Node& n : built.optimized.graph.nodes) {
    if (n.op_type == "FusedMatMul") {
      EXPECT_GT(gpu::fp8_input_scale(n), 0.f) << n.name;
    }
  }
  auto again = gpu::build_gpu_program(built.optimized, shapes, 0, opt, 0);
  EXPECT_EQ(again.fp8_gemms, 0u);

  reference::Executor ref(b.m);
  for (const auto& in : {batches[0], quant::TensorMap{{"x", b.random({B, S, E}, -2.f, 2.f)}}}) {
    const auto want = ref.run(in);
    for (bool graph : {true, false}) {
      gpu::GpuContext ctx(built.program, graph);
      const auto got = ctx.run(in);
      const double e = rel_error(got.at("y"), want.at("y"));
      // E4M3's 3 mantissa bits round each operand by up to 6.25% (3.6% rms): 4-6% per GEMM here,
      // measured 4-6.5% after the layer's four GEMMs.
      EXPECT_LT(e, 1e-1) << (graph ? "graph" : "no graph");
      EXPECT_GT(e, 1e-4) << "FP8 rounding leaves a trace; an exact match means FP8 did not run";
    }
  }
}

// Precision int8 on a transformer: the same layer with every GEMM on Kiln's INT8 kernel (a 1x1
// convolution over the rows, weights per output column, FP16 out), activation scales calibrated on
// the CPU (MinMax). As with FP8, the LayerNorms write INT8 copies of their outputs for the QKV and
// first FFN GEMMs, the GELU writes the second FFN GEMM's input in INT8 itself, and the attention
// output goes through one quantizing step; residuals and LayerNorms stay FP16. On a GPU every GEMM
// is forced to INT8 (these small GEMMs may not pay); on the simulated device, where INT8 reports a
// tenth of FP16's time (modeled, also for the whole-program check), "auto" chooses the same.
TEST_P(GpuProgram, Int8TransformerLayerMatchesTheReference) {
  const int64_t B = 2, S = 16, Hh = 2, D = 32, E = Hh * D;
  Builder b;
  post_ln_transformer_layer(b, B, S, Hh, D);
  const gpu::ShapeMap shapes = {{"x", {B, S, E}}};
  const std::vector<quant::TensorMap> batches = random_batches(b, {B, S, E});
  MinMaxCalibration cal(batches);
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  opt.int8_gemms = sim_ ? "auto" : "always";
  if (sim_) sim_->set_modeled_time(true);
  SCOPED_TRACE("int8_gemms " + opt.int8_gemms);
  auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 0, &cal.calib);
  EXPECT_EQ(built.int8_gemms, 6u);
  EXPECT_EQ(built.int8_convs, 0u);
  int int8_gemms = 0, quantize = 0, ln_copies = 0;
  for (const auto& st : built.program->steps()) {
    int8_gemms += st.op == "FusedMatMul" && st.kernel.find("int8") != std::string::npos;
    quantize += st.op == "QuantizeINT8";
    ln_copies += st.op.find("LayerNormalization") != std::string::npos && st.kernel.find("int8 copy") != std::string::npos;
  }
  EXPECT_EQ(int8_gemms, 4) << "the packed QKV, output and two FFN GEMMs";
  EXPECT_EQ(quantize, 1) << "the attention output; the GELU writes INT8 itself";
  EXPECT_EQ(ln_copies, 2) << "the LayerNorms before the QKV and FFN GEMMs write their INT8 copies";
  // The scales are in the optimized graph (what an engine stores): a rebuild needs no data.
  for (const Node& n : built.optimized.graph.nodes) {
    if (n.op_type == "FusedMatMul") {
      EXPECT_TRUE(gpu::int8_scales(n).ok()) << n.name;
    }
  }
  auto again = gpu::build_gpu_program(built.optimized, shapes, 0, opt, 0);
  EXPECT_EQ(again.int8_gemms, 0u);
  // int8_gemms "none": every GEMM in FP16, no quantizing step.
  gpu::CompileOptions none = opt;
  none.int8_gemms = "none";
  auto fp16 = gpu::build_gpu_program(built.optimized, shapes, 0, none, 0);
  for (const auto& st : fp16.program->steps()) {
    EXPECT_EQ(st.kernel.find("int8"), std::string::npos) << st.name << ": " << st.kernel;
    EXPECT_NE(st.op, "QuantizeINT8");
  }

  reference::Executor ref(b.m);
  for (const auto& in : {batches[0], quant::TensorMap{{"x", b.random({B, S, E}, -2.f, 2.f)}}}) {
    const auto want = ref.run(in);
    for (const auto& program : {built.program, again.program})
      for (bool graph : {true, false}) {
        gpu::GpuContext ctx(program, graph);
        const double e = rel_error(ctx.run(in).at("y"), want.at("y"));
        // Per-tensor INT8 activations and per-column INT8 weights: about 1% per GEMM; measured
        // 1-3% after the layer's four GEMMs and LayerNorms.
        EXPECT_LT(e, 6e-2) << (graph ? "graph" : "no graph");
        EXPECT_GT(e, 1e-4) << "INT8 rounding leaves a trace; an exact match means INT8 did not run";
      }
  }
  const double e16 = rel_error(gpu::GpuContext(fp16.program).run(batches[0]).at("y"), ref.run(batches[0]).at("y"));
  EXPECT_LT(e16, 1e-2) << "the FP16 program";

  // --layer-precision NAME:fp16 names a GEMM too: the second FFN GEMM (node 9) stays FP16, so the
  // GELU before it writes FP16, and the engine's graph carries the decision.
  MinMaxCalibration named(batches);
  named.calib.keep_fp16 = {"FusedMatMul9"};
  const auto kept = gpu::build_gpu_program(b.m, shapes, 0, opt, 0, &named.calib);
  std::set<std::string> int8_names;
  int kept_quantize = 0;
  for (const auto& st : kept.program->steps()) {
    if (st.op == "FusedMatMul" && st.kernel.find("int8") != std::string::npos) int8_names.insert(st.name);
    kept_quantize += st.op == "QuantizeINT8";
  }
  EXPECT_EQ(int8_names.size(), 3u) << "the packed QKV, output and first FFN GEMMs";
  EXPECT_FALSE(int8_names.count("FusedMatMul9"));
  EXPECT_EQ(kept_quantize, 1) << "the attention output only";
  EXPECT_EQ(kept.int8_gemms, 5u) << "the kept GEMM is not calibrated";
  for (const Node& n : kept.optimized.graph.nodes) {
    if (n.name == "FusedMatMul9") {
      EXPECT_FALSE(gpu::int8_scales(n).ok());
      EXPECT_NE(n.attr(gpu::kInt8KeepFloat), nullptr);
    }
  }
}

// An INT8 Gemm honours transB, alpha and beta (folded into the per-column weight scales and the
// FP32 bias) and fuses ReLU; a MatMul whose N is not a multiple of 8 is no INT8 candidate and runs
// in FP16. Against the reference on fresh inputs.
TEST_P(GpuProgram, Int8GemmHonoursTransBAlphaAndBeta) {
  Builder b;
  b.input("x", {6, 48}).weight("w", {32, 48}).weight("c", {32}).weight("w2", {32, 12});
  b.node("Gemm", {"x", "w", "c"}, {"g"}, {{"transB", i64(1)}, {"alpha", f32(0.5f)}, {"beta", f32(2.f)}})
      .node("Relu", {"g"}, {"r"})
      .node("MatMul", {"r", "w2"}, {"y"})
      .output("y");
  const gpu::ShapeMap shapes = {{"x", {6, 48}}};
  const std::vector<quant::TensorMap> batches = random_batches(b, {6, 48});
  MinMaxCalibration cal(batches);
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  opt.int8_gemms = "always";
  const auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3, &cal.calib);
  EXPECT_EQ(built.int8_gemms, 1u) << "the MatMul's 12 columns are no INT8 candidate";
  int int8 = 0, gemms = 0;
  for (const auto& st : built.program->steps()) {
    if (st.kernel.rfind("elementwise", 0) == 0) continue;
    const bool gemm = st.op == "FusedMatMul" || st.op == "MatMul" || st.op == "Gemm";
    gemms += gemm;
    int8 += gemm && st.kernel.find("int8") != std::string::npos;
  }
  EXPECT_EQ(gemms, 2);
  EXPECT_EQ(int8, 1);
  reference::Executor ref(b.m);
  for (const auto& in : {batches[0], quant::TensorMap{{"x", b.random({6, 48})}}}) {
    const double e = rel_error(gpu::GpuContext(built.program).run(in).at("y"), ref.run(in).at("y"));
    EXPECT_LT(e, 3e-2);
    EXPECT_GT(e, 1e-5) << "INT8 rounding leaves a trace";
  }
}

// Bad int8_gemms values are a clear error.
TEST_P(GpuProgram, Int8GemmsOptionIsValidated) {
  Builder b;
  b.input("x", {4, 32}).weight("w", {32, 16}).weight("c", {16});
  b.node("Gemm", {"x", "w", "c"}, {"y"}).output("y");
  const std::vector<quant::TensorMap> batches = random_batches(b, {4, 32});
  MinMaxCalibration cal(batches);
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  opt.int8_gemms = "sometimes";
  try {
    gpu::build_gpu_program(b.m, {{"x", {4, 32}}}, 0, opt, 0, &cal.calib);
    ADD_FAILURE() << "int8_gemms 'sometimes' was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("int8_gemms 'sometimes'"), std::string::npos) << e.what();
  }
}

// FP8 needs its input scales: a build without calibration data is a clear error, and scales are
// MinMax amax / 448 of what the calibration batches held.
TEST_P(GpuProgram, Fp8NeedsCalibrationAndScalesAreTheInputsAmax) {
  Builder b;
  b.input("x", {4, 32}).weight("w", {32, 16}).weight("c", {16});
  b.node("Gemm", {"x", "w", "c"}, {"y"}).output("y");
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kFP8;
  try {
    gpu::build_gpu_program(b.m, {{"x", {4, 32}}}, 0, opt, 0);
    ADD_FAILURE() << "an FP8 build without calibration data ran";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("calibration data"), std::string::npos) << e.what();
  }
  std::vector<quant::TensorMap> batches = {{{"x", b.random({4, 32})}}, {{"x", b.random({4, 32}, -3.f, 3.f)}}};
  float amax = 0;
  for (const auto& t : batches)
    for (int64_t i = 0; i < 4 * 32; ++i) amax = std::max(amax, std::fabs(t.at("x").data<float>()[i]));
  quant::MemoryCalibrator data(batches);
  gpu::Fp8Calibration calib;
  calib.data = &data;
  if (no_fp8()) GTEST_SKIP() << "FP8 GEMMs need SM 8.9 or newer";
  const gpu::GpuBuild built = gpu::build_gpu_program(b.m, {{"x", {4, 32}}}, 0, opt, 0, &calib);
  const Node& gemm = built.optimized.graph.nodes.at(0);
  EXPECT_FLOAT_EQ(gpu::fp8_input_scale(gemm), amax / 448.f);
  // Calibration data of other shapes only: named in the error.
  quant::MemoryCalibrator wrong({{{"x", b.random({2, 32})}}});
  calib.data = &wrong;
  calib.source = "the wrong batches";
  try {
    gpu::build_gpu_program(b.m, {{"x", {4, 32}}}, 0, opt, 0, &calib);
    ADD_FAILURE() << "calibration data of another shape was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the wrong batches"), std::string::npos) << e.what();
  }
  const Tensor x = b.random({4, 32});
  const auto want = reference::Executor(b.m).run({{"x", x}});
  EXPECT_LT(rel_error(gpu::GpuContext(built.program).run({{"x", x}}).at("y"), want.at("y")), 6e-2);
}

// Precision int8: a ResNet-style stem and bottleneck (1x1, 3x3, 1x1 with the residual Add and
// ReLU fused) and a strided 3x3, with activation scales calibrated on the CPU (MinMax). The stem
// (3 input channels) stays FP16; the four other convolutions run on Kiln's INT8 kernel. Values
// read only by INT8 convolutions stay INT8 (the bottleneck's inner values and its output); the
// stem's output is quantized once for the first 1x1 and read in FP16 as the residual; the last
// convolution writes FP16 for the pooling. Within INT8's error of the FP32 reference.
TEST_P(GpuProgram, Int8BottleneckMatchesTheReference) {
  Builder b;
  b.input("x", {2, 3, 16, 16}).weight("ws", {32, 3, 3, 3}).weight("bs", {32});
  b.weight("w1", {16, 32, 1, 1}).weight("b1", {16}).weight("w2", {16, 16, 3, 3}).weight("b2", {16});
  b.weight("w3", {32, 16, 1, 1}).weight("b3", {32}).weight("w4", {32, 32, 3, 3}).weight("b4", {32});
  b.weight("wf", {10, 32}).weight("bf", {10});
  const auto pad1 = std::map<std::string, Attribute>{{"pads", ints({1, 1, 1, 1})}};
  b.node("Conv", {"x", "ws", "bs"}, {"s"}, pad1).node("Relu", {"s"}, {"a"})
      .node("Conv", {"a", "w1", "b1"}, {"c1"}).node("Relu", {"c1"}, {"r1"})
      .node("Conv", {"r1", "w2", "b2"}, {"c2"}, pad1).node("Relu", {"c2"}, {"r2"})
      .node("Conv", {"r2", "w3", "b3"}, {"c3"}).node("Add", {"c3", "a"}, {"s3"}).node("Relu", {"s3"}, {"r3"})
      .node("Conv", {"r3", "w4", "b4"}, {"c4"}, {{"pads", ints({1, 1, 1, 1})}, {"strides", ints({2, 2})}})
      .node("Relu", {"c4"}, {"r4"})
      .node("GlobalAveragePool", {"r4"}, {"g"})
      .node("Flatten", {"g"}, {"f"}, {{"axis", i64(1)}})
      .node("Gemm", {"f", "wf", "bf"}, {"y"}, {{"transB", i64(1)}})
      .output("y");
  const gpu::ShapeMap shapes = {{"x", {2, 3, 16, 16}}};
  const std::vector<quant::TensorMap> batches = random_batches(b, {2, 3, 16, 16});
  MinMaxCalibration cal(batches);
  auto& calib = cal.calib;
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  // Every candidate in INT8 (on a GPU these tiny convolutions may not pay); on the simulated
  // device, where INT8 reports a tenth of FP16's time (modeled, also for the whole-program check),
  // "auto" chooses the same.
  opt.int8_convs = sim_ ? "auto" : "always";
  if (sim_) sim_->set_modeled_time(true);
  SCOPED_TRACE("int8_convs " + opt.int8_convs);
  auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3, &calib);
  EXPECT_EQ(built.int8_convs, 4u) << "every convolution but the stem is a candidate";
  int int8 = 0, int8_out = 0, quantize = 0;
  for (const auto& st : built.program->steps()) {
    const bool i8 = st.kernel.find("int8") != std::string::npos && st.op.find("Conv") != std::string::npos;
    int8 += i8;
    int8_out += i8 && st.kernel.find("-> int8") != std::string::npos;
    quantize += st.op == "QuantizeINT8";
  }
  EXPECT_EQ(int8, 4);
  EXPECT_EQ(int8_out, 3) << "the bottleneck's 1x1 and 3x3 and its output stay INT8; the last conv writes FP16";
  EXPECT_EQ(quantize, 1) << "the stem's output, once";
  // The scales are in the optimized graph (what an engine stores): a rebuild needs no data.
  int scaled = 0;
  for (const Node& n : built.optimized.graph.nodes) scaled += gpu::int8_scales(n).ok();
  EXPECT_EQ(scaled, 4);
  auto again = gpu::build_gpu_program(built.optimized, shapes, 0, opt, 0);
  EXPECT_EQ(again.int8_convs, 0u);

  reference::Executor ref(b.m);
  for (const auto& in : {batches[0], quant::TensorMap{{"x", b.random({2, 3, 16, 16})}}}) {
    const auto want = ref.run(in);
    for (const auto& program : {built.program, again.program})
      for (bool graph : {true, false}) {
        gpu::GpuContext ctx(program, graph);
        const double e = rel_error(ctx.run(in).at("y"), want.at("y"));
        // Per-tensor INT8 activations (7 bits after a ReLU) and per-channel INT8 weights: about
        // 1% per layer here.
        EXPECT_LT(e, 8e-2) << (graph ? "graph" : "no graph");
        EXPECT_GT(e, 1e-5) << "INT8 rounding leaves a trace; an exact match means INT8 did not run";
      }
  }
}

// The convolution steps of a program that run an INT8 kernel.
inline int int8_conv_steps(const gpu::GpuProgram& p) {
  int n = 0;
  for (const auto& st : p.steps()) n += st.op.find("Conv") != std::string::npos && st.kernel.find("int8") != std::string::npos;
  return n;
}

// Precision int8 "auto" keeps the INT8 program only when the whole program is faster than the
// same graph with every convolution in FP16 (a verdict recorded as a tactic, replayed from a
// timing cache or an engine). On the simulated device with modeled time INT8 wins; a recorded
// "fp16" verdict gives the FP16 program, and the recorded "int8" one the INT8 program, untimed.
TEST_P(GpuProgram, Int8ProgramIsKeptOnlyWhenTheWholeProgramIsFaster) {
  if (!sim_) GTEST_SKIP() << "timing-dependent: runs on the simulated device with modeled time";
  sim_->set_modeled_time(true);
  Builder b;
  b.input("x", {1, 16, 8, 8}).weight("w1", {32, 16, 3, 3}).weight("w2", {16, 32, 1, 1});
  b.node("Conv", {"x", "w1"}, {"c"}, {{"pads", ints({1, 1, 1, 1})}}).node("Relu", {"c"}, {"r"})
      .node("Conv", {"r", "w2"}, {"y"}).output("y");
  quant::MemoryCalibrator data({{{"x", b.random({1, 16, 8, 8})}}});
  gpu::GpuCalibration calib;
  calib.data = &data;
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  const gpu::ShapeMap shapes = {{"x", {1, 16, 8, 8}}};
  const auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3, &calib);
  EXPECT_EQ(int8_conv_steps(*built.program), 2);
  std::string key;
  for (const auto& [k, e] : built.program->tactics())
    if (k.rfind("gpu.int8.program", 0) == 0) {
      key = k;
      EXPECT_EQ(e.tactic, "int8");
    }
  ASSERT_FALSE(key.empty()) << "the whole-program verdict is recorded";
  cpu::TimingCache cache(gpu::gpu_target(gpu::open_device(0)->props()));
  for (const auto& [k, e] : built.program->tactics()) cache.put(k, e);
  const int timed = sim_->tuned_timed();
  const auto again = gpu::GpuProgram::compile(gpu::open_device(0), built.optimized, shapes, [&] {
    gpu::CompileOptions o = opt;
    o.tactics = &cache;
    return o;
  }());
  EXPECT_EQ(int8_conv_steps(*again), 2);
  EXPECT_EQ(sim_->tuned_timed(), timed) << "recorded: nothing timed";
  cache.put(key, cpu::TimingCache::Entry{"fp16", 1.0});
  opt.tactics = &cache;
  const auto fp16 = gpu::GpuProgram::compile(gpu::open_device(0), built.optimized, shapes, opt);
  EXPECT_EQ(int8_conv_steps(*fp16), 0) << "a recorded fp16 verdict gives the FP16 program";
  EXPECT_EQ(fp16->tactics().at(key).tactic, "fp16");
  const Tensor x = b.random({1, 16, 8, 8});
  const auto want = reference::Executor(b.m).run({{"x", x}});
  EXPECT_LT(rel_error(gpu::GpuContext(fp16).run({{"x", x}}).at("y"), want.at("y")), 2e-2);
  EXPECT_LT(rel_error(gpu::GpuContext(again).run({{"x", x}}).at("y"), want.at("y")), 5e-2);
}

// The whole-program judge also times the program with every candidate in INT8 and keeps it when
// it is faster. Under modeled time (INT8 kernels 0.1 ms, FP16 kernels and quantizing passes
// 1 ms) a lone convolution whose input needs a quantizing pass does not pay, so "auto" keeps two
// of three convolutions in INT8 and beats "all"; a recorded "int8all" verdict gives all three.
TEST_P(GpuProgram, Int8JudgeAlsoTimesEveryCandidateInInt8) {
  if (!sim_) GTEST_SKIP() << "timing-dependent: runs on the simulated device with modeled time";
  sim_->set_modeled_time(true);
  Builder b;
  b.input("x", {1, 16, 8, 8}).input("x2", {1, 16, 8, 8}).weight("w1", {32, 16, 3, 3}).weight("w2", {16, 32, 1, 1})
      .weight("w3", {16, 16, 1, 1});
  b.node("Conv", {"x", "w1"}, {"c"}, {{"pads", ints({1, 1, 1, 1})}}).node("Relu", {"c"}, {"r"})
      .node("Conv", {"r", "w2"}, {"y"}).node("Conv", {"x2", "w3"}, {"y2"}).output("y").output("y2");
  quant::MemoryCalibrator data({{{"x", b.random({1, 16, 8, 8})}, {"x2", b.random({1, 16, 8, 8})}}});
  gpu::GpuCalibration calib;
  calib.data = &data;
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  std::vector<std::string> log;
  opt.log = &log;
  const gpu::ShapeMap shapes = {{"x", {1, 16, 8, 8}}, {"x2", {1, 16, 8, 8}}};
  const auto built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3, &calib);
  EXPECT_EQ(int8_conv_steps(*built.program), 2);
  std::string key, line;
  for (const auto& [k, e] : built.program->tactics())
    if (k.rfind("gpu.int8.program", 0) == 0) {
      key = k;
      EXPECT_EQ(e.tactic, "int8");
    }
  for (const auto& l : log)
    if (l.find("int8 program:") != std::string::npos) line = l;
  EXPECT_NE(line.find("with all 3"), std::string::npos) << line;
  EXPECT_NE(line.find("INT8 kept"), std::string::npos) << line;
  ASSERT_FALSE(key.empty());
  cpu::TimingCache cache(gpu::gpu_target(gpu::open_device(0)->props()));
  for (const auto& [k, e] : built.program->tactics()) cache.put(k, e);
  cache.put(key, cpu::TimingCache::Entry{"int8all", 1.0});
  opt.tactics = &cache;
  opt.log = nullptr;
  const auto all = gpu::GpuProgram::compile(gpu::open_device(0), built.optimized, shapes, opt);
  EXPECT_EQ(int8_conv_steps(*all), 3) << "a recorded int8all verdict gives every candidate in INT8";
  EXPECT_EQ(all->tactics().at(key).tactic, "int8all");
  const Tensor x = b.random({1, 16, 8, 8}), x2 = b.random({1, 16, 8, 8});
  const auto want = reference::Executor(b.m).run({{"x", x}, {"x2", x2}});
  const auto got = gpu::GpuContext(all).run({{"x", x}, {"x2", x2}});
  EXPECT_LT(rel_error(got.at("y"), want.at("y")), 5e-2);
  EXPECT_LT(rel_error(got.at("y2"), want.at("y2")), 5e-2);
}

// INT8 needs its scales: a build without calibration data is a clear error; the scales are the
// MinMax amax / 127 of the convolution's input and output over the calibration batches.
TEST_P(GpuProgram, Int8NeedsCalibrationAndScalesAreTheTensorsAmax) {
  Builder b;
  b.input("x", {1, 16, 6, 6}).weight("w", {8, 16, 3, 3}).weight("c", {8});
  b.node("Conv", {"x", "w", "c"}, {"y"}, {{"pads", ints({1, 1, 1, 1})}}).output("y");
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  opt.int8_convs = "always";
  try {
    gpu::build_gpu_program(b.m, {{"x", {1, 16, 6, 6}}}, 0, opt, 0);
    ADD_FAILURE() << "an INT8 build without calibration data ran";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("calibration data"), std::string::npos) << e.what();
  }
  std::vector<quant::TensorMap> batches = {{{"x", b.random({1, 16, 6, 6})}}, {{"x", b.random({1, 16, 6, 6}, -3.f, 3.f)}}};
  reference::Executor ref(b.m);
  float ax = 0, ay = 0;
  for (const auto& t : batches) {
    const Tensor y = ref.run(t).at("y");
    for (int64_t i = 0; i < t.at("x").numel(); ++i) ax = std::max(ax, std::fabs(t.at("x").data<float>()[i]));
    for (int64_t i = 0; i < y.numel(); ++i) ay = std::max(ay, std::fabs(y.data<float>()[i]));
  }
  quant::MemoryCalibrator data(batches);
  gpu::GpuCalibration calib;
  calib.data = &data;
  calib.method = {quant::CalibMethod::kMinMax, 99.99};
  const gpu::GpuBuild built = gpu::build_gpu_program(b.m, {{"x", {1, 16, 6, 6}}}, 0, opt, 0, &calib);
  const gpu::Int8Scales sc = gpu::int8_scales(built.optimized.graph.nodes.at(0));
  EXPECT_FLOAT_EQ(sc.x, ax / 127.f);
  EXPECT_NEAR(sc.y, ay / 127.f, 1e-5 * ay) << "the calibration run sums in another order than this reference run";
  EXPECT_EQ(sc.z, 0.f);
  const Tensor x = b.random({1, 16, 6, 6});
  EXPECT_LT(rel_error(gpu::GpuContext(built.program).run({{"x", x}}).at("y"), ref.run({{"x", x}}).at("y")), 3e-2);
  // A graph whose convolutions the INT8 kernel cannot take (3 input channels) needs no data and
  // runs in FP16.
  Builder c;
  c.input("x", {1, 3, 6, 6}).weight("w", {8, 3, 3, 3});
  c.node("Conv", {"x", "w"}, {"y"}).output("y");
  const gpu::GpuBuild fp16 = gpu::build_gpu_program(c.m, {{"x", {1, 3, 6, 6}}}, 0, opt, 0);
  EXPECT_EQ(fp16.int8_convs, 0u);
  for (const auto& st : fp16.program->steps()) EXPECT_EQ(st.kernel.find("int8"), std::string::npos) << st.kernel;
}

// The INT8 accuracy guard on the GPU (GpuCalibration::guard): the first convolution reads an input
// with one outlier per sample (200 among values in [-1, 1]), so its per-tensor INT8 scale rounds
// everything else to zero; its Clip(0, 1) keeps the outlier from the later layers, which quantize
// well. The guard must find that one layer, keep it in FP16 (marked in the graph an engine stores)
// and leave the others in INT8; --layer-precision NAME:fp16 keeps a named layer likewise.
TEST_P(GpuProgram, Int8AccuracyGuardKeepsTheSensitiveConvolutionInFp16) {
  Builder b;
  b.input("x", {2, 16, 8, 8}).weight("w1", {16, 16, 3, 3}).weight("w2", {16, 16, 3, 3}).weight("w3", {16, 16, 1, 1});
  const auto pad1 = std::map<std::string, Attribute>{{"pads", ints({1, 1, 1, 1})}};
  b.node("Conv", {"x", "w1"}, {"c1"}, pad1)
      .node("Clip", {"c1", "lo", "hi"}, {"a1"})
      .node("Conv", {"a1", "w2"}, {"c2"}, pad1)
      .node("Relu", {"c2"}, {"a2"})
      .node("Conv", {"a2", "w3"}, {"y"})
      .output("y");
  b.m.graph.initializers["lo"] = Tensor::scalar(0.f);
  b.m.graph.initializers["hi"] = Tensor::scalar(1.f);
  auto batch = [&] {
    Tensor x = b.random({2, 16, 8, 8});
    x.mutable_data<float>()[37] = 200.f;
    x.mutable_data<float>()[16 * 64 + 300] = -200.f;
    return quant::TensorMap{{"x", x}};
  };
  std::vector<quant::TensorMap> calib_batches = {batch(), batch()}, validation_batches = {batch(), batch(), batch()};
  // A batch of another shape in the validation data is skipped, not an error.
  validation_batches.push_back({{"x", b.random({1, 16, 8, 8})}});
  quant::MemoryCalibrator data(calib_batches), validation(validation_batches);
  gpu::GpuCalibration calib;
  calib.data = &data;
  calib.method = {quant::CalibMethod::kMinMax, 99.99};
  calib.validation = &validation;
  calib.guard.budget = 0.01;
  std::vector<std::string> progress;
  calib.guard.progress = [&](const std::string& line) { progress.push_back(line); };
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  opt.int8_convs = "always";
  const gpu::ShapeMap shapes = {{"x", {2, 16, 8, 8}}};
  const gpu::GpuBuild built = gpu::build_gpu_program(b.m, shapes, 0, opt, 3, &calib);
  ASSERT_TRUE(built.guard.has_value());
  const quant::GuardResult& g = *built.guard;
  EXPECT_EQ(g.metric_name, "cosine");
  EXPECT_EQ(g.samples, 6u) << "three batches of 2; the batch of another shape is skipped";
  EXPECT_LT(g.all_int8_metric, 0.99) << "the outlier must ruin the first layer in INT8";
  ASSERT_EQ(g.layers.size(), 3u);
  EXPECT_EQ(g.layers.front().layer, "Conv0") << "the first convolution is the most sensitive";
  EXPECT_EQ(g.keep_float, std::set<std::string>{"Conv0"});
  EXPECT_TRUE(g.within_budget);
  EXPECT_GE(g.metric, 0.99);
  EXPECT_FALSE(progress.empty());
  const std::string report = quant::format_guard_report(g, 0.01, "fp16");
  EXPECT_NE(report.find("1 of 3 layers kept in fp16"), std::string::npos) << report;
  std::cout << report;

  auto int8_kernels = [](const gpu::GpuProgram& p) {
    std::set<std::string> names;
    for (const auto& st : p.steps())
      if (st.op.find("Conv") != std::string::npos && st.kernel.find("int8") != std::string::npos) names.insert(st.name);
    return names;
  };
  EXPECT_EQ(int8_kernels(*built.program), (std::set<std::string>{"Conv2", "Conv4"}));
  for (const Node& n : built.optimized.graph.nodes)
    if (n.name == "Conv0") {
      EXPECT_FALSE(gpu::int8_scales(n).ok()) << "the kept layer carries no scales";
      ASSERT_NE(n.attr(gpu::kInt8KeepFloat), nullptr);
    }
  // What an engine stores rebuilds untimed and uncalibrated to the same choice.
  const auto again = gpu::build_gpu_program(built.optimized, shapes, 0, opt, 0);
  EXPECT_EQ(int8_kernels(*again.program), (std::set<std::string>{"Conv2", "Conv4"}));
  EXPECT_EQ(again.int8_convs, 0u) << "nothing to calibrate";

  // The guarded program against the FP32 reference on a fresh batch.
  const quant::TensorMap fresh = batch();
  const Tensor want = reference::Executor(b.m).run(fresh).at("y");
  const Tensor got = gpu::GpuContext(built.program).run(fresh).at("y");
  double dot = 0, gg = 0, ww = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double p = got.data<float>()[i], q = want.data<float>()[i];
    dot += p * q, gg += p * p, ww += q * q;
  }
  EXPECT_GT(dot / std::sqrt(gg * ww), 0.99);

  // --layer-precision NAME:fp16, without the guard.
  gpu::GpuCalibration named;
  named.data = &data;
  named.keep_fp16 = {"Conv4"};
  const gpu::GpuBuild kept = gpu::build_gpu_program(b.m, shapes, 0, opt, 3, &named);
  EXPECT_FALSE(kept.guard.has_value());
  EXPECT_EQ(int8_kernels(*kept.program), (std::set<std::string>{"Conv0", "Conv2"}));
  named.keep_fp16 = {"NoSuchConv"};
  try {
    gpu::build_gpu_program(b.m, shapes, 0, opt, 3, &named);
    ADD_FAILURE() << "an unknown layer name was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("no layer (node) named 'NoSuchConv'"), std::string::npos) << e.what();
  }
  // Validation data without a batch of the program's shapes is a clear error.
  quant::MemoryCalibrator wrong({{{"x", b.random({1, 16, 8, 8})}}});
  calib.validation = &wrong;
  try {
    gpu::build_gpu_program(b.m, shapes, 0, opt, 3, &calib);
    ADD_FAILURE() << "validation data of other shapes was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("no batch of the engine's shapes"), std::string::npos) << e.what();
    // It says what was expected and what came.
    EXPECT_NE(std::string(e.what()).find("the engine's shapes are x:2x16x8x8"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("the first x:1x16x8x8"), std::string::npos) << e.what();
  }
}

// Real data: the digits CNN (models/digits.py, trained on scikit-learn's handwritten digits) keeps
// its test accuracy (within half a point) with its convolutions in INT8, calibrated on 300 training
// images, as the CPU's INT8 does (tests/models/precision_model_test.cpp).
TEST_P(GpuProgram, Int8DigitsKeepTheirTestAccuracy) {
  const std::filesystem::path dir = kiln_test::model_dir();
  if (dir.empty() || !std::filesystem::exists(dir / "digits.onnx"))
    GTEST_SKIP() << "digits model not exported (scripts/export-models.sh)";
  const Model model = load_onnx((dir / "digits.onnx").string());
  Tensor images, labels;
  for (const auto& [k, t] : read_tensor_file((dir / "digits_test.npz").string())) (k == "input" ? images : labels) = t;
  constexpr int64_t kBatch = 100;
  // All 500 test images on a GPU; 200 on the simulated device, whose loops take ~1.7 s a batch.
  const int64_t n = std::min<int64_t>(images.dim(0), sim_ ? 200 : 500) / kBatch * kBatch;
  quant::FileCalibrator train(dir / "digits_train.npz", model, kBatch, 300);
  gpu::GpuCalibration calib;
  calib.data = &train;
  calib.method = {quant::CalibMethod::kEntropy, 99.99};
  gpu::CompileOptions opt;
  opt.precision = gpu::Precision::kINT8;
  opt.int8_convs = "always";  // accuracy wherever timing would put them
  const gpu::ShapeMap shapes = {{"input", {kBatch, 1, 32, 32}}};
  const gpu::GpuBuild int8 = gpu::build_gpu_program(model, shapes, 0, opt, 3, &calib);
  int convs = 0;
  for (const auto& st : int8.program->steps())
    convs += st.op.find("Conv") != std::string::npos && st.kernel.find("int8") != std::string::npos;
  EXPECT_EQ(convs, 3) << "every convolution but the 1-channel stem";
  gpu::GpuContext ctx(int8.program);
  const Tensor logits32 = quant::run_fp32(model, {{{"input", images}}}, 0).at(0).at("logits");  // the CPU runtime
  const int64_t classes = logits32.dim(1);
  int64_t ok32 = 0, ok8 = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kBatch) {
    Tensor x(DType::kF32, {kBatch, 1, 32, 32});
    std::copy_n(images.data<float>() + b0 * 32 * 32, kBatch * 32 * 32, x.mutable_data<float>());
    const Tensor y = ctx.run({{"input", x}}).at("logits");
    for (int64_t r = 0; r < kBatch; ++r) {
      const int64_t label = labels.data<int64_t>()[b0 + r];
      const float* a = y.data<float>() + r * classes;
      const float* f = logits32.data<float>() + (b0 + r) * classes;
      ok8 += std::max_element(a, a + classes) - a == label;
      ok32 += std::max_element(f, f + classes) - f == label;
    }
  }
  const double acc32 = 100.0 * ok32 / n, acc8 = 100.0 * ok8 / n;
  std::cout << "[ digits ] test accuracy (" << n << " images): fp32 " << acc32 << "%, gpu int8 " << acc8 << "% ("
            << convs << " convolutions in INT8)\n";
  EXPECT_GT(acc32, 95.0);
  EXPECT_LE(std::fabs(acc8 - acc32), std::max(0.5, 100.0 / n)) << "within half a point (one image of 200)";
}

TEST_P(GpuProgram, WrongInputsAreRefusedAndTheContextStaysUsable) {
  Builder b;
  b.input("x", {2, 3}).weight("w", {3});
  b.node("Add", {"x", "w"}, {"y"}).output("y");
  auto built = gpu::build_gpu_program(b.m, {{"x", {2, 3}}}, 0, {}, 0);
  gpu::GpuContext ctx(built.program);
  auto expect_refused = [&](const reference::TensorMap& in, const char* what) {
    try {
      ctx.run(in);
      ADD_FAILURE() << what << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    }
  };
  expect_refused({{"x", b.random({2, 4})}}, "a wrong shape");
  expect_refused({{"x", Tensor(DType::kI64, {2, 3})}}, "a wrong dtype");
  expect_refused({}, "a missing input");
  expect_refused({{"x", b.random({2, 3})}, {"nope", b.random({1})}}, "an unknown input");
  const Tensor x = b.random({2, 3});
  const auto y = ctx.run({{"x", x}});
  for (int64_t i = 0; i < 6; ++i)
    EXPECT_NEAR(y.at("y").data<float>()[i],
                x.data<float>()[i] + b.m.graph.initializers.at("w").data<float>()[i % 3], 2e-3);
}

}  // namespace kiln::gpu_cases
