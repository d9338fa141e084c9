// The oneDNN convolution and pooling tactics (src/backends/cpu/dnnl_conv.cpp) against the reference kernels.
#include <atomic>
#include <thread>

#include "cpu_test_support.h"

namespace kiln_cpu_test {
namespace {

using Attrs = std::map<std::string, Attribute>;

const char* const kConvTactics[] = {"dnnl.conv.nhwc", "dnnl.conv.nchw"};
const Layout kLayouts[] = {Layout::kPlain, Layout::kChannelsLast};

// Fresh seeds per tensor so that no two inputs (or tests) share data.
uint32_t next_seed() {
  static std::atomic<uint32_t> seed{1234};
  return seed++;
}

Attribute ints(std::vector<int64_t> v) { return Attribute::of_ints(std::move(v)); }

struct ConvSpec {
  std::vector<int64_t> x, w;  // X [N, C, ...], W [M, C/group, k...]
  Attrs attrs;                // group, strides, pads, dilations, auto_pad, ...
  bool bias = true;
  bool z = false;   // residual input (FusedConv only)
  std::string act;  // FusedConv activation
  std::vector<float> act_params;
  bool fused = true;    // kiln::FusedConv, else ai.onnx Conv
  bool const_w = true;  // W and B as constants (prepacked) or as run-time inputs
  DType dtype = DType::kF32;
};

// A FusedConv (or Conv) node with random X, W, B and Z (Z shaped like the inferred output).
NodeRun make_conv(const ConvSpec& s, Layout producer) {
  NodeRun r;
  r.node.name = "conv";
  r.node.op_type = s.fused ? "FusedConv" : "Conv";
  r.node.domain = s.fused ? "kiln" : "";
  if (s.fused) r.opset = 1;
  r.node.inputs = {"X", "W", s.bias ? "B" : ""};
  r.node.outputs = {"Y"};
  r.node.attrs = s.attrs;
  if (!s.act.empty()) r.node.attrs["activation"] = Attribute::of_string(s.act);
  if (!s.act_params.empty()) r.node.attrs["activation_params"] = Attribute::of_floats(s.act_params);
  r.inputs = {random_tensor(s.dtype, s.x, next_seed()), random_tensor(s.dtype, s.w, next_seed(), -0.5, 0.5)};
  r.inputs.push_back(s.bias ? random_tensor(s.dtype, {s.w[0]}, next_seed()) : Tensor());
  r.constant = {false, s.const_w, s.const_w};  // non-constant W comes with a non-constant B
  if (s.z) {
    const auto y = infer_outputs(r)[0];
    std::vector<int64_t> yshape;
    for (const Dim& d : *y.shape) yshape.push_back(d.value);
    r.node.inputs.push_back("Z");
    r.inputs.push_back(random_tensor(s.dtype, yshape, next_seed()));
    r.constant.push_back(false);
  }
  r.producer_layouts = std::vector<Layout>(r.inputs.size(), producer);
  return r;
}

// Both conv tactics, both producer layouts.
void check_conv(const ConvSpec& s, double rtol = 1e-4, double atol = 1e-5) {
  for (const char* tactic : kConvTactics)
    for (Layout l : kLayouts) {
      SCOPED_TRACE(std::string(tactic) + ", producer " + cpu::layout_name(l));
      const NodeRun r = make_conv(s, l);
      ASSERT_TRUE(tactic_supports(tactic, r));
      expect_matches_reference(tactic, r, rtol, atol);
    }
}

// ---- ResNet-like

TEST(DnnlConv, ResNetStem7x7Stride2Pad3) {
  check_conv({.x = {1, 3, 33, 31},
              .w = {64, 3, 7, 7},
              .attrs = {{"strides", ints({2, 2})}, {"pads", ints({3, 3, 3, 3})}},
              .act = "Relu"});
}

TEST(DnnlConv, ResNet3x3WithRelu) {
  check_conv({.x = {1, 64, 14, 14}, .w = {64, 64, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .act = "Relu"});
  check_conv({.x = {3, 40, 9, 11},
              .w = {24, 40, 3, 3},
              .attrs = {{"pads", ints({1, 1, 1, 1})}, {"strides", ints({2, 2})}},
              .act = "Relu"});
}

TEST(DnnlConv, ResNet1x1ResidualRelu) {
  // The bottleneck's expand conv: Y = Relu(Conv(X) + B + Z).
  check_conv({.x = {1, 64, 14, 14}, .w = {256, 64, 1, 1}, .z = true, .act = "Relu"});
  check_conv({.x = {3, 24, 7, 9}, .w = {40, 24, 1, 1}, .z = true, .act = "Relu"});
  // Residual on a 3x3 (the brgconv path with a separate add) and without activation.
  check_conv(
      {.x = {1, 24, 10, 10}, .w = {24, 24, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .z = true, .act = "Relu"});
  check_conv({.x = {3, 5, 10, 10}, .w = {24, 5, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .z = true});
}

TEST(DnnlConv, ResNetDownsample1x1Stride2) {
  check_conv({.x = {3, 64, 15, 15}, .w = {40, 64, 1, 1}, .attrs = {{"strides", ints({2, 2})}}, .bias = false});
}

// ---- MobileNet-like

TEST(DnnlConv, DepthwiseStride2Relu6) {
  check_conv({.x = {1, 24, 17, 17},
              .w = {24, 1, 3, 3},
              .attrs = {{"group", Attribute::of_int(24)}, {"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}},
              .act = "Clip",
              .act_params = {0.f, 6.f}});
  check_conv({.x = {3, 40, 12, 12},
              .w = {40, 1, 3, 3},
              .attrs = {{"group", Attribute::of_int(40)}, {"pads", ints({1, 1, 1, 1})}},
              .act = "Clip",
              .act_params = {0.f, 6.f}});
}

TEST(DnnlConv, DepthwiseWithResidual) {
  check_conv({.x = {3, 24, 9, 9},
              .w = {24, 1, 3, 3},
              .attrs = {{"group", Attribute::of_int(24)}, {"pads", ints({1, 1, 1, 1})}},
              .z = true,
              .act = "Relu"});
}

TEST(DnnlConv, Pointwise1x1Linear) {
  check_conv({.x = {1, 24, 13, 13}, .w = {40, 24, 1, 1}});
  check_conv({.x = {3, 40, 5, 7}, .w = {5, 40, 1, 1}, .z = true});
}

// ---- EfficientNet-like activations

TEST(DnnlConv, Activations) {
  const std::pair<const char*, std::vector<float>> acts[] = {
      {"SiLU", {}},      {"HardSwish", {}},     {"HardSigmoid", {}},    {"HardSigmoid", {0.25f, 0.4f}},
      {"Sigmoid", {}},   {"Gelu", {}},          {"GeluTanh", {}},       {"Tanh", {}},
      {"LeakyRelu", {}}, {"LeakyRelu", {0.2f}}, {"Clip", {-0.5f, 0.5f}}};
  for (const auto& [act, params] : acts) {
    SCOPED_TRACE(act);
    // Inputs in [-1, 1] and 24*9 taps keep pre-activations in the range where the curves bend.
    check_conv({.x = {1, 24, 9, 9},
                .w = {40, 24, 3, 3},
                .attrs = {{"pads", ints({1, 1, 1, 1})}},
                .act = act,
                .act_params = params});
    check_conv({.x = {3, 5, 6, 6}, .w = {5, 5, 1, 1}, .z = true, .act = act, .act_params = params});
  }
}

TEST(DnnlConv, DepthwiseSiLU) {
  check_conv({.x = {1, 40, 11, 11},
              .w = {40, 1, 5, 5},
              .attrs = {{"group", Attribute::of_int(40)}, {"strides", ints({2, 2})}, {"pads", ints({2, 2, 2, 2})}},
              .act = "SiLU"});
}

// ---- Geometry

TEST(DnnlConv, Groups2) {
  check_conv({.x = {3, 10, 9, 8},
              .w = {24, 5, 3, 3},
              .attrs = {{"group", Attribute::of_int(2)}, {"pads", ints({1, 1, 1, 1})}}});
}

TEST(DnnlConv, Dilation2) {
  check_conv({.x = {1, 5, 15, 13},
              .w = {24, 5, 3, 3},
              .attrs = {{"dilations", ints({2, 2})}, {"pads", ints({2, 2, 2, 2})}},
              .act = "Relu"});
  check_conv({.x = {3, 24, 12, 12},
              .w = {24, 1, 3, 3},
              .attrs = {{"group", Attribute::of_int(24)}, {"dilations", ints({2, 3})}, {"pads", ints({2, 3, 1, 0})}}});
}

TEST(DnnlConv, AsymmetricPads) {
  check_conv({.x = {1, 3, 10, 11}, .w = {5, 3, 3, 4}, .attrs = {{"pads", ints({0, 1, 2, 3})}}});
  check_conv({.x = {3, 5, 7, 8},
              .w = {24, 5, 3, 3},
              .attrs = {{"pads", ints({2, 0, 1, 1})}, {"strides", ints({2, 3})}},
              .z = true,
              .act = "Relu"});
}

TEST(DnnlConv, AutoPad) {
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER", "VALID"}) {
    SCOPED_TRACE(mode);
    check_conv({.x = {1, 5, 11, 10},
                .w = {24, 5, 3, 4},
                .attrs = {{"auto_pad", Attribute::of_string(mode)}, {"strides", ints({2, 2})}}});
    check_conv(
        {.x = {3, 3, 9, 9}, .w = {5, 3, 4, 4}, .attrs = {{"auto_pad", Attribute::of_string(mode)}}, .act = "Relu"});
  }
}

TEST(DnnlConv, OneDimensional) {
  check_conv(
      {.x = {3, 5, 29}, .w = {24, 5, 3}, .attrs = {{"pads", ints({1, 2})}, {"strides", ints({2})}}, .act = "SiLU"});
  check_conv({.x = {1, 24, 17},
              .w = {24, 1, 5},
              .attrs = {{"group", Attribute::of_int(24)}, {"dilations", ints({2})}, {"pads", ints({4, 4})}},
              .z = true});
}

TEST(DnnlConv, ThreeDimensional) {
  check_conv(
      {.x = {1, 5, 6, 7, 8}, .w = {24, 5, 3, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1, 1, 1})}}, .act = "Relu"});
  check_conv({.x = {3, 3, 5, 6, 5},
              .w = {5, 3, 2, 3, 1},
              .attrs = {{"strides", ints({2, 1, 2})}, {"pads", ints({0, 1, 0, 1, 0, 0})}},
              .z = true});
}

TEST(DnnlConv, PlainOnnxConv) {
  check_conv({.x = {3, 5, 9, 9}, .w = {24, 5, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .fused = false});
  check_conv({.x = {1, 3, 8, 8}, .w = {5, 3, 1, 1}, .bias = false, .fused = false});
}

TEST(DnnlConv, KernelShapeAttributeMatchingW) {
  check_conv({.x = {1, 5, 8, 8}, .w = {24, 5, 3, 3}, .attrs = {{"kernel_shape", ints({3, 3})}}});
}

TEST(DnnlConv, NonConstantWeightsAreRepackedPerRun) {
  check_conv({.x = {3, 24, 9, 9},
              .w = {40, 24, 3, 3},
              .attrs = {{"pads", ints({1, 1, 1, 1})}},
              .z = true,
              .act = "Relu",
              .const_w = false});
  check_conv({.x = {1, 24, 9, 9}, .w = {24, 1, 3, 3}, .attrs = {{"group", Attribute::of_int(24)}}, .const_w = false});
}

TEST(DnnlConv, DescribesImplementationAndIsa) {
  const NodeRun r =
      make_conv({.x = {1, 64, 14, 14}, .w = {64, 64, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .act = "Relu"},
                Layout::kChannelsLast);
  const cpu::Tactic* t = cpu::TacticRegistry::global().find_named("kiln", "FusedConv", "dnnl.conv.nhwc");
  ASSERT_NE(t, nullptr);
  cpu::KernelConfig cfg = make_config(r);
  for (auto& o : cfg.outputs) o.layout = Layout::kChannelsLast;
  auto k = t->create(cfg);
  EXPECT_FALSE(k->describe().empty());
  if (k->describe().find("avx512") != std::string::npos) {
    const auto isa = k->required_isa();
    EXPECT_NE(std::find(isa.begin(), isa.end(), "avx512f"), isa.end());
  }
}

TEST(DnnlConv, NhwcIsRegisteredFirst) {
  const auto tactics = cpu::TacticRegistry::global().find("kiln", "FusedConv");
  ASSERT_FALSE(tactics.empty());
  EXPECT_EQ(tactics.front()->name(), "dnnl.conv.nhwc");
}

TEST(DnnlConv, UnsupportedCases) {
  for (const char* tactic : {"dnnl.conv.nhwc", "dnnl.conv.nchw", "dnnl.conv.winograd"}) {
    SCOPED_TRACE(tactic);
    // float64 is not a oneDNN type.
    EXPECT_FALSE(tactic_supports(
        tactic, make_conv({.x = {1, 3, 8, 8}, .w = {5, 3, 3, 3}, .dtype = DType::kF64}, Layout::kPlain)));
    // 16-bit floats would round the fused steps differently from the reference.
    EXPECT_FALSE(tactic_supports(
        tactic, make_conv({.x = {1, 3, 8, 8}, .w = {5, 3, 3, 3}, .dtype = DType::kF16}, Layout::kPlain)));
  }
}

// Winograd (F(2x2,3x3), or F(4x4,3x3) at larger batches) transforms X and W before the products, which
// costs a few ulps of the transformed partial sums rather than of the output: near-zero outputs get
// absolute errors of the order of eps * max|Y|. Measured against the reference at 64..256 channels,
// the max error is 0.6e-6 * max|Y| for F(2x2) and 3.4e-6 * max|Y| for F(4x4) (oneDNN's direct brgconv:
// 1.8e-6). Here max|Y| is ~15, so atol 1e-4 (~7e-6 * max|Y|) is the justified bound; rtol stays 1e-4.
TEST(DnnlConv, Winograd3x3) {
  for (Layout l : kLayouts) {
    SCOPED_TRACE(cpu::layout_name(l));
    for (bool z : {false, true}) {
      for (const char* act : {"", "Relu", "SiLU"}) {
        const NodeRun r = make_conv(
            {.x = {1, 64, 14, 14}, .w = {64, 64, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .z = z, .act = act},
            l);
        if (!tactic_supports("dnnl.conv.winograd", r)) {
          GTEST_SKIP() << "oneDNN has no Winograd convolution on this machine";
        }
        expect_matches_reference("dnnl.conv.winograd", r, 1e-4, 1e-4);
      }
    }
  }
}

TEST(DnnlConv, WinogradRefusesWhatItCannotDo) {
  // Stride 2 and 5x5 kernels are not Winograd F(., 3x3).
  EXPECT_FALSE(tactic_supports(
      "dnnl.conv.winograd",
      make_conv({.x = {1, 16, 14, 14}, .w = {16, 16, 3, 3}, .attrs = {{"strides", ints({2, 2})}}}, Layout::kPlain)));
  EXPECT_FALSE(tactic_supports("dnnl.conv.winograd",
                               make_conv({.x = {1, 16, 14, 14}, .w = {16, 16, 5, 5}}, Layout::kChannelsLast)));
  // 1-D convolutions neither.
  EXPECT_FALSE(tactic_supports("dnnl.conv.winograd", make_conv({.x = {1, 16, 14}, .w = {16, 16, 3}}, Layout::kPlain)));
}

// One kernel run from several threads at once, each on its own buffers and scratch.
TEST(DnnlConv, ConcurrentRunsOnDifferentBuffers) {
  for (const char* tactic : {"dnnl.conv.nhwc", "dnnl.conv.nchw", "dnnl.conv.winograd"}) {
    SCOPED_TRACE(tactic);
    const NodeRun r = make_conv(
        {.x = {3, 24, 10, 10}, .w = {24, 24, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .z = true, .act = "Relu"},
        Layout::kChannelsLast);
    const cpu::Tactic* t = cpu::TacticRegistry::global().find_named("kiln", "FusedConv", tactic);
    ASSERT_NE(t, nullptr);
    cpu::KernelConfig cfg = make_config(r);
    ASSERT_TRUE(t->supports(cfg));
    const auto want_layouts = t->input_layouts(cfg);
    for (size_t i = 0; i < cfg.inputs.size(); ++i)
      if (!cfg.inputs[i].constant && want_layouts[i] != Layout::kAny) cfg.inputs[i].layout = want_layouts[i];
    cfg.outputs[0].layout = t->output_layouts(cfg)[0];
    auto kernel = t->create(cfg);
    const Tensor want = run_reference(r)[0];
    std::atomic<int> bad{0};
    std::vector<std::thread> threads;
    for (int th = 0; th < 3; ++th)
      threads.emplace_back([&] {
        cpu::set_threads(1);
        std::vector<Tensor> staged(r.inputs.size());
        std::vector<const void*> in(r.inputs.size());
        for (size_t i = 0; i < r.inputs.size(); ++i) {
          staged[i] = Tensor(r.inputs[i].dtype(), r.inputs[i].shape());
          cpu::reorder(r.inputs[i].raw(), Layout::kPlain, staged[i].mutable_raw(), cfg.inputs[i].layout,
                       r.inputs[i].dtype(), r.inputs[i].shape());
          in[i] = staged[i].raw();
        }
        Tensor y(DType::kF32, cfg.outputs[0].shape), plain(DType::kF32, cfg.outputs[0].shape);
        Tensor scratch(DType::kU8, {static_cast<int64_t>(kernel->scratch_bytes()) + 1});
        void* out = y.mutable_raw();
        cpu::KernelArgs args{in.data(), &out, scratch.mutable_raw()};
        for (int it = 0; it < 20; ++it) kernel->run(args);
        cpu::reorder(y.raw(), cfg.outputs[0].layout, plain.mutable_raw(), Layout::kPlain, DType::kF32, y.shape());
        const auto g = plain.to_double_vector(), w = want.to_double_vector();
        for (size_t i = 0; i < g.size(); ++i)
          if (std::fabs(g[i] - w[i]) > 1e-4 + 1e-4 * std::fabs(w[i])) ++bad;  // Winograd's bound (Winograd3x3)
      });
    for (auto& th : threads) th.join();
    EXPECT_EQ(bad.load(), 0);
  }
}

// ---- Pooling

struct PoolSpec {
  std::string op;
  std::vector<int64_t> x;
  Attrs attrs;
  int64_t opset = 17;
  DType dtype = DType::kF32;
  bool indices = false;  // MaxPool's optional second output
};

NodeRun make_pool(const PoolSpec& s, Layout producer) {
  NodeRun r;
  r.node.name = "pool";
  r.node.op_type = s.op;
  r.node.inputs = {"X"};
  r.node.outputs = {"Y"};
  if (s.indices) r.node.outputs.push_back("I");
  r.node.attrs = s.attrs;
  r.opset = s.opset;
  // Integer inputs over a wide range so that maxima are distinct.
  const bool integral = s.dtype == DType::kU8 || s.dtype == DType::kI8;
  r.inputs = {integral ? random_tensor(s.dtype, s.x, next_seed(), 0, s.dtype == DType::kU8 ? 255 : 127)
                       : random_tensor(s.dtype, s.x, next_seed(), -2, 2)};
  r.producer_layouts = {producer};
  return r;
}

void check_pool(const PoolSpec& s, const char* tactic = "dnnl.pool") {
  for (Layout l : kLayouts) {
    SCOPED_TRACE(s.op + ", " + tactic + ", producer " + cpu::layout_name(l));
    const NodeRun r = make_pool(s, l);
    ASSERT_TRUE(tactic_supports(tactic, r));
    expect_matches_reference(tactic, r);
  }
}

TEST(DnnlPool, MaxPoolResNet) {
  check_pool({.op = "MaxPool",
              .x = {1, 64, 17, 17},
              .attrs = {{"kernel_shape", ints({3, 3})}, {"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}}});
  check_pool(
      {.op = "MaxPool", .x = {3, 5, 9, 10}, .attrs = {{"kernel_shape", ints({2, 2})}, {"strides", ints({2, 2})}}});
}

TEST(DnnlPool, MaxPoolCeilModeDilationsAndAsymmetricPads) {
  check_pool(
      {.op = "MaxPool",
       .x = {3, 5, 10, 11},
       .attrs = {{"kernel_shape", ints({3, 3})}, {"strides", ints({2, 2})}, {"ceil_mode", Attribute::of_int(1)}}});
  check_pool({.op = "MaxPool",
              .x = {1, 24, 12, 13},
              .attrs = {{"kernel_shape", ints({3, 2})},
                        {"strides", ints({2, 3})},
                        {"pads", ints({1, 0, 0, 1})},
                        {"ceil_mode", Attribute::of_int(1)}}});
  check_pool({.op = "MaxPool",
              .x = {3, 5, 13, 12},
              .attrs = {{"kernel_shape", ints({3, 3})}, {"dilations", ints({2, 2})}, {"pads", ints({1, 2, 1, 0})}}});
}

TEST(DnnlPool, MaxPoolAutoPad) {
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER", "VALID"}) {
    SCOPED_TRACE(mode);
    check_pool(
        {.op = "MaxPool",
         .x = {3, 5, 11, 10},
         .attrs = {
             {"kernel_shape", ints({3, 2})}, {"strides", ints({2, 2})}, {"auto_pad", Attribute::of_string(mode)}}});
  }
}

TEST(DnnlPool, MaxPool1dAnd3dAndOldOpset) {
  check_pool({.op = "MaxPool", .x = {3, 5, 20}, .attrs = {{"kernel_shape", ints({3})}, {"strides", ints({2})}}});
  check_pool(
      {.op = "MaxPool",
       .x = {1, 24, 6, 7, 8},
       .attrs = {{"kernel_shape", ints({2, 3, 2})}, {"strides", ints({2, 2, 2})}, {"pads", ints({0, 1, 0, 0, 1, 1})}}});
  check_pool({.op = "MaxPool", .x = {1, 5, 9, 9}, .attrs = {{"kernel_shape", ints({3, 3})}}, .opset = 7});
}

TEST(DnnlPool, MaxPoolUint8) {
  PoolSpec s{.op = "MaxPool",
             .x = {1, 24, 9, 9},
             .attrs = {{"kernel_shape", ints({3, 3})}, {"pads", ints({1, 1, 1, 1})}},
             .dtype = DType::kU8};
  if (!tactic_supports("dnnl.pool", make_pool(s, Layout::kPlain))) GTEST_SKIP() << "no u8 pooling in this oneDNN";
  check_pool(s);
}

TEST(DnnlPool, AveragePoolExcludeAndIncludePad) {
  for (int64_t include : {0, 1}) {
    SCOPED_TRACE("count_include_pad " + std::to_string(include));
    check_pool({.op = "AveragePool",
                .x = {3, 5, 10, 11},
                .attrs = {{"kernel_shape", ints({3, 3})},
                          {"strides", ints({2, 2})},
                          {"pads", ints({1, 1, 1, 1})},
                          {"count_include_pad", Attribute::of_int(include)}}});
    check_pool({.op = "AveragePool",
                .x = {1, 24, 9, 8},
                .attrs = {{"kernel_shape", ints({3, 2})},
                          {"pads", ints({2, 0, 0, 1})},
                          {"count_include_pad", Attribute::of_int(include)}}});
  }
}

TEST(DnnlPool, AveragePoolCeilMode) {
  // Exclude-pad: the windows past the end are averaged over their valid taps.
  check_pool(
      {.op = "AveragePool",
       .x = {3, 5, 10, 11},
       .attrs = {{"kernel_shape", ints({3, 3})}, {"strides", ints({2, 2})}, {"ceil_mode", Attribute::of_int(1)}}});
  // Include-pad with ceil mode is supported where ceil mode adds no window past the end pad (where it
  // does, the reference counts only the taps inside the pad: see UnsupportedCases).
  check_pool({.op = "AveragePool",
              .x = {1, 5, 11, 11},
              .attrs = {{"kernel_shape", ints({3, 3})},
                        {"strides", ints({2, 2})},
                        {"pads", ints({1, 1, 1, 1})},
                        {"ceil_mode", Attribute::of_int(1)},
                        {"count_include_pad", Attribute::of_int(1)}}});
}

TEST(DnnlPool, AveragePoolAutoPadAnd1d3d) {
  check_pool({.op = "AveragePool",
              .x = {3, 5, 11, 10},
              .attrs = {{"kernel_shape", ints({3, 3})},
                        {"strides", ints({2, 2})},
                        {"auto_pad", Attribute::of_string("SAME_UPPER")}}});
  check_pool({.op = "AveragePool", .x = {3, 24, 17}, .attrs = {{"kernel_shape", ints({4})}, {"pads", ints({1, 2})}}});
  check_pool({.op = "AveragePool",
              .x = {1, 5, 6, 6, 7},
              .attrs = {{"kernel_shape", ints({2, 2, 3})}, {"strides", ints({2, 2, 2})}}});
}

TEST(DnnlPool, AveragePoolDilationsOpset19) {
  for (int64_t include : {0, 1}) {
    SCOPED_TRACE("count_include_pad " + std::to_string(include));
    check_pool({.op = "AveragePool",
                .x = {3, 5, 12, 11},
                .attrs = {{"kernel_shape", ints({3, 3})},
                          {"dilations", ints({2, 2})},
                          {"pads", ints({1, 2, 1, 2})},
                          {"count_include_pad", Attribute::of_int(include)}},
                .opset = 19});
  }
}

TEST(DnnlPool, GlobalPools) {
  for (const char* tactic : {"dnnl.pool", "kiln.global_pool"})
    for (const char* op : {"GlobalAveragePool", "GlobalMaxPool"}) {
      // Channel counts around the 64-channel blocks, planes shorter and longer than 16 lanes.
      check_pool({.op = op, .x = {1, 64, 7, 7}}, tactic);
      check_pool({.op = op, .x = {1, 200, 7, 7}}, tactic);
      check_pool({.op = op, .x = {3, 40, 5, 9}}, tactic);
      check_pool({.op = op, .x = {3, 5, 13}}, tactic);
      check_pool({.op = op, .x = {1, 24, 3, 4, 5}}, tactic);
      check_pool({.op = op, .x = {2, 3, 1, 1}}, tactic);
    }
}

TEST(DnnlPool, KilnGlobalPoolIsPreferredAndRefusesOthers) {
  const auto tactics = cpu::TacticRegistry::global().find("", "GlobalAveragePool");
  ASSERT_FALSE(tactics.empty());
  EXPECT_EQ(tactics.front()->name(), "kiln.global_pool");
  EXPECT_FALSE(
      tactic_supports("kiln.global_pool",
                      make_pool({.op = "GlobalAveragePool", .x = {1, 5, 8, 8}, .dtype = DType::kF64}, Layout::kPlain)));
  EXPECT_FALSE(tactic_supports(
      "kiln.global_pool", make_pool({.op = "GlobalMaxPool", .x = {1, 5, 8, 8}, .dtype = DType::kU8}, Layout::kPlain)));
}

TEST(DnnlPool, UnsupportedCases) {
  // MaxPool with its Indices output.
  EXPECT_FALSE(tactic_supports(
      "dnnl.pool",
      make_pool({.op = "MaxPool", .x = {1, 5, 8, 8}, .attrs = {{"kernel_shape", ints({2, 2})}}, .indices = true},
                Layout::kPlain)));
  // float64 (not a oneDNN type) and averages of 8-bit integers.
  EXPECT_FALSE(tactic_supports(
      "dnnl.pool",
      make_pool(
          {.op = "AveragePool", .x = {1, 5, 8, 8}, .attrs = {{"kernel_shape", ints({2, 2})}}, .dtype = DType::kF64},
          Layout::kPlain)));
  EXPECT_FALSE(tactic_supports(
      "dnnl.pool", make_pool({.op = "GlobalMaxPool", .x = {1, 5, 8, 8}, .dtype = DType::kF64}, Layout::kPlain)));
  // Include-pad averages whose ceil-mode window runs past the end pad (the reference counts fewer taps).
  EXPECT_FALSE(tactic_supports("dnnl.pool", make_pool({.op = "AveragePool",
                                                       .x = {1, 5, 10, 10},
                                                       .attrs = {{"kernel_shape", ints({3, 3})},
                                                                 {"strides", ints({2, 2})},
                                                                 {"ceil_mode", Attribute::of_int(1)},
                                                                 {"count_include_pad", Attribute::of_int(1)}}},
                                                      Layout::kPlain)));
  // A window entirely inside the padding.
  EXPECT_FALSE(tactic_supports(
      "dnnl.pool",
      make_pool(
          {.op = "MaxPool", .x = {1, 5, 4, 4}, .attrs = {{"kernel_shape", ints({2, 2})}, {"pads", ints({3, 0, 0, 0})}}},
          Layout::kPlain)));
}

}  // namespace
}  // namespace kiln_cpu_test
