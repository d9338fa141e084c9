// BF16 compute (compute_precision "bf16") in the oneDNN convolution and matmul tactics against the reference.
//
// Tolerances. The reference computes in float32; the bf16 tactics round X/A and W/B to bfloat16 (8-bit
// mantissa, relative error <= 2^-9 each) and accumulate in float32, so every output carries an error of
// about 2^-8 * sqrt(K) * |term|, i.e. a fraction of a percent of the output's RMS. Against the float32
// reference: |got - want| <= 2e-2 * |want| + 2e-2 * rms(want) elementwise, and cosine similarity >= 0.9999.
// And a tight check that it is bf16 with round-to-nearest-even that runs: products of two bf16 values are
// exact in float32, so the tactic must match the reference run on inputs pre-rounded to bf16 (X, W; A, B)
// up to float32 summation order: rtol 1e-4, atol 1e-4 * rms(want).
//
// On a host without native bf16 (host_has_fast_bf16() false, e.g. DNNL_MAX_CPU_ISA=AVX512_CORE_VNNI) the
// same nodes run in float32 and must match the reference at the float32 tolerance (rtol 1e-4, atol 1e-5).
#include <atomic>
#include <cmath>

#include "backends/cpu/dnnl_util.h"
#include "cpu_test_support.h"

namespace kiln_cpu_test {
namespace {

using Attrs = std::map<std::string, Attribute>;

uint32_t next_seed() {
  static std::atomic<uint32_t> seed{9001};
  return seed++;
}

Attribute ints(std::vector<int64_t> v) { return Attribute::of_ints(std::move(v)); }

double rms(const Tensor& t) {
  double s = 0;
  for (double v : t.to_double_vector()) s += v * v;
  return t.numel() ? std::sqrt(s / static_cast<double>(t.numel())) : 0.0;
}

double cosine(const Tensor& a, const Tensor& b) {
  const auto x = a.to_double_vector(), y = b.to_double_vector();
  double xy = 0, xx = 0, yy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    xy += x[i] * y[i];
    xx += x[i] * x[i];
    yy += y[i] * y[i];
  }
  return xx == 0 && yy == 0 ? 1.0 : xy / std::sqrt(xx * yy);
}

// A float32 tensor with every element rounded to the nearest bfloat16 (ties to even), kept as float32.
Tensor rounded_to_bf16(const Tensor& t) {
  Tensor r = t.clone();
  float* p = r.mutable_data<float>();
  for (int64_t i = 0; i < r.numel(); ++i) p[i] = bf16_to_float(float_to_bf16(p[i]));
  return r;
}

// The tactic on a bf16-marked node against the float32 reference (see the tolerances above). `multiplied`:
// the inputs the kernel rounds to bf16 (X and W, or A and B).
void check_bf16(const std::string& tactic, const NodeRun& r, std::vector<size_t> multiplied = {0, 1}) {
  ASSERT_TRUE(tactic_supports(tactic, r));
  const Tensor got = run_tactic(tactic, r)[0];
  const Tensor want = run_reference(r)[0];
  if (!cpu::host_has_fast_bf16()) {
    expect_close(got, want, 1e-4, 1e-5);  // the clean fallback: the same tactic in float32
    return;
  }
  const double scale = rms(want);
  {
    SCOPED_TRACE("against the float32 reference");
    expect_close(got, want, 2e-2, 2e-2 * scale);
    EXPECT_GE(cosine(got, want), 0.9999);
  }
  NodeRun pre = r;
  for (size_t i : multiplied) pre.inputs[i] = rounded_to_bf16(r.inputs[i]);
  const Tensor exact = run_reference(pre)[0];
  {
    SCOPED_TRACE("against the reference on bf16-rounded inputs");
    expect_close(got, exact, 1e-4, 1e-4 * scale);
  }
  // Being bf16 must show: the result is not the float32 one.
  EXPECT_GT(cosine(got, want), 0.0);
  double max_diff = 0;
  const auto g = got.to_double_vector(), w = want.to_double_vector();
  for (size_t i = 0; i < g.size(); ++i) max_diff = std::max(max_diff, std::fabs(g[i] - w[i]));
  EXPECT_GT(max_diff, 1e-6 * scale) << "identical to float32: the tactic did not compute in bf16";
}

// ---- Convolution

const char* const kConvTactics[] = {"dnnl.conv.nhwc", "dnnl.conv.nchw"};

struct ConvSpec {
  std::vector<int64_t> x, w;
  Attrs attrs;
  bool bias = true;
  bool z = false;
  std::string act;
  std::vector<float> act_params;
  bool const_w = true;
  std::string precision = "bf16";
};

NodeRun make_conv(const ConvSpec& s, Layout producer) {
  NodeRun r;
  r.node.name = "conv";
  r.node.op_type = "FusedConv";
  r.node.domain = "kiln";
  r.opset = 1;
  r.node.inputs = {"X", "W", s.bias ? "B" : ""};
  r.node.outputs = {"Y"};
  r.node.attrs = s.attrs;
  if (!s.precision.empty()) r.node.attrs["compute_precision"] = Attribute::of_string(s.precision);
  if (!s.act.empty()) r.node.attrs["activation"] = Attribute::of_string(s.act);
  if (!s.act_params.empty()) r.node.attrs["activation_params"] = Attribute::of_floats(s.act_params);
  r.inputs = {random_tensor(DType::kF32, s.x, next_seed()), random_tensor(DType::kF32, s.w, next_seed(), -0.5, 0.5)};
  r.inputs.push_back(s.bias ? random_tensor(DType::kF32, {s.w[0]}, next_seed()) : Tensor());
  r.constant = {false, s.const_w, s.const_w};
  if (s.z) {
    const auto y = infer_outputs(r)[0];
    std::vector<int64_t> yshape;
    for (const Dim& d : *y.shape) yshape.push_back(d.value);
    r.node.inputs.push_back("Z");
    r.inputs.push_back(random_tensor(DType::kF32, yshape, next_seed()));
    r.constant.push_back(false);
  }
  r.producer_layouts = std::vector<Layout>(r.inputs.size(), producer);
  return r;
}

void check_conv(const ConvSpec& s) {
  for (const char* tactic : kConvTactics)
    for (Layout l : {Layout::kPlain, Layout::kChannelsLast}) {
      SCOPED_TRACE(std::string(tactic) + ", producer " + cpu::layout_name(l));
      check_bf16(tactic, make_conv(s, l));
    }
}

TEST(BF16Conv, Pointwise1x1) {
  check_conv({.x = {1, 64, 14, 14}, .w = {128, 64, 1, 1}});
  check_conv({.x = {2, 24, 7, 9}, .w = {40, 24, 1, 1}, .bias = false});
}

TEST(BF16Conv, ResNet3x3Relu) {
  check_conv({.x = {1, 64, 14, 14}, .w = {64, 64, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .act = "Relu"});
}

TEST(BF16Conv, StridedAndStem) {
  check_conv({.x = {2, 32, 15, 15},
              .w = {48, 32, 3, 3},
              .attrs = {{"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}},
              .act = "Relu"});
  check_conv({.x = {1, 3, 33, 31},
              .w = {64, 3, 7, 7},
              .attrs = {{"strides", ints({2, 2})}, {"pads", ints({3, 3, 3, 3})}},
              .act = "Relu"});
}

TEST(BF16Conv, DepthwiseAndGrouped) {
  check_conv({.x = {1, 48, 17, 17},
              .w = {48, 1, 3, 3},
              .attrs = {{"group", Attribute::of_int(48)}, {"strides", ints({2, 2})}, {"pads", ints({1, 1, 1, 1})}},
              .act = "SiLU"});
  check_conv({.x = {2, 32, 10, 10},
              .w = {64, 8, 3, 3},
              .attrs = {{"group", Attribute::of_int(4)}, {"pads", ints({1, 1, 1, 1})}},
              .act = "Clip",
              .act_params = {0.f, 6.f}});
}

TEST(BF16Conv, ResidualWithActivation) {
  check_conv({.x = {1, 64, 14, 14}, .w = {256, 64, 1, 1}, .z = true, .act = "Relu"});
  check_conv(
      {.x = {1, 32, 10, 10}, .w = {32, 32, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .z = true, .act = "SiLU"});
  check_conv({.x = {2, 16, 9, 9}, .w = {24, 16, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .z = true});
}

TEST(BF16Conv, RunTimeWeightsAnd1D) {
  // W not constant: converted to packed bf16 on each run.
  check_conv({.x = {1, 32, 12, 12},
              .w = {40, 32, 3, 3},
              .attrs = {{"pads", ints({1, 1, 1, 1})}},
              .z = true,
              .act = "Relu",
              .const_w = false});
  check_conv({.x = {2, 16, 30}, .w = {32, 16, 5}, .attrs = {{"pads", ints({2, 2})}}, .act = "SiLU"});
}

// Y written over Z's buffer (Z dead after the node): the sum post-op accumulates onto Z in place.
TEST(BF16Conv, ResidualInPlace) {
  const NodeRun r = make_conv({.x = {1, 64, 14, 14}, .w = {64, 64, 1, 1}, .z = true, .act = "Relu"},
                              Layout::kChannelsLast);
  const cpu::Tactic* t = cpu::TacticRegistry::global().find_named("kiln", "FusedConv", "dnnl.conv.nhwc");
  ASSERT_NE(t, nullptr);
  cpu::KernelConfig cfg = make_config(r);
  for (auto& v : cfg.inputs)
    if (v.present() && !v.constant) v.layout = Layout::kChannelsLast;
  if (t->inplace_input(cfg) != 3) GTEST_SKIP() << "oneDNN has no sum post-op for this convolution here";
  cfg.output0_inplace_of = 3;
  cfg.outputs[0].layout = Layout::kChannelsLast;
  auto k = t->create(cfg);
  const auto& shape = r.inputs[0].shape();
  Tensor x(DType::kF32, shape), zy(DType::kF32, r.inputs[3].shape());
  cpu::reorder(r.inputs[0].raw(), Layout::kPlain, x.mutable_raw(), Layout::kChannelsLast, DType::kF32, shape);
  cpu::reorder(r.inputs[3].raw(), Layout::kPlain, zy.mutable_raw(), Layout::kChannelsLast, DType::kF32, zy.shape());
  Tensor scratch(DType::kU8, {static_cast<int64_t>(k->scratch_bytes()) + 1});
  const void* in[] = {x.raw(), r.inputs[1].raw(), r.inputs[2].raw(), zy.raw()};
  void* out[] = {zy.mutable_raw()};
  cpu::set_threads(r.threads);
  k->run({in, out, scratch.mutable_raw()});
  Tensor got(DType::kF32, zy.shape());
  cpu::reorder(zy.raw(), Layout::kChannelsLast, got.mutable_raw(), Layout::kPlain, DType::kF32, zy.shape());
  const Tensor want = run_reference(r)[0];
  if (!cpu::host_has_fast_bf16()) {
    expect_close(got, want, 1e-4, 1e-5);
    return;
  }
  expect_close(got, want, 2e-2, 2e-2 * rms(want));
  EXPECT_GE(cosine(got, want), 0.9999);
  EXPECT_NE(k->describe().find("sum in place"), std::string::npos) << k->describe();
}

TEST(BF16Conv, DescribesBf16KernelAndIsa) {
  for (const char* tactic : kConvTactics) {
    SCOPED_TRACE(tactic);
    const Layout l = std::string(tactic) == "dnnl.conv.nhwc" ? Layout::kChannelsLast : Layout::kPlain;
    const NodeRun r = make_conv(
        {.x = {1, 64, 14, 14}, .w = {64, 64, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}, .act = "Relu"}, l);
    const cpu::Tactic* t = cpu::TacticRegistry::global().find_named("kiln", "FusedConv", tactic);
    ASSERT_NE(t, nullptr);
    cpu::KernelConfig cfg = make_config(r);
    for (auto& o : cfg.outputs) o.layout = l;
    auto k = t->create(cfg);
    const std::string d = k->describe();
    const auto isa = k->required_isa();
    const bool needs_bf16 = std::find(isa.begin(), isa.end(), "avx512_bf16") != isa.end();
    if (cpu::host_has_fast_bf16()) {
      EXPECT_NE(d.find("bf16"), std::string::npos) << d;
      EXPECT_TRUE(needs_bf16);
      // channels-last gets oneDNN's native bf16 kernels (brgconv on AMX or AVX512_BF16).
      if (l == Layout::kChannelsLast) {
        EXPECT_TRUE(d.find("amx") != std::string::npos || d.find("avx512_core_bf16") != std::string::npos) << d;
      }
    } else {
      EXPECT_EQ(d.find("bf16"), std::string::npos) << d;
      EXPECT_FALSE(needs_bf16);
    }
  }
}

// ---- Matmul

const char* const kMatmulTactics[] = {"dnnl.matmul", "dnnl.inner_product"};

struct MatmulSpec {
  std::vector<int64_t> a, b;
  std::optional<std::vector<int64_t>> c;
  Attrs attrs;
  std::string act;
  bool const_b = true;
  std::string precision = "bf16";
};

NodeRun make_matmul(const MatmulSpec& s) {
  NodeRun r;
  r.node.name = "mm";
  r.node.domain = "kiln";
  r.node.op_type = "FusedMatMul";
  r.opset = 1;
  r.node.inputs = {"A", "B"};
  r.node.outputs = {"Y"};
  r.node.attrs = s.attrs;
  if (!s.precision.empty()) r.node.attrs["compute_precision"] = Attribute::of_string(s.precision);
  if (!s.act.empty()) r.node.attrs["activation"] = Attribute::of_string(s.act);
  r.inputs = {random_tensor(DType::kF32, s.a, next_seed()), random_tensor(DType::kF32, s.b, next_seed())};
  r.constant = {false, s.const_b};
  if (s.c) {
    r.node.inputs.push_back("C");
    r.inputs.push_back(random_tensor(DType::kF32, *s.c, next_seed()));
    r.constant.push_back(true);
  }
  return r;
}

// `tactics`: those that must support the case.
void check_matmul(const MatmulSpec& s, std::vector<std::string> tactics = {"dnnl.matmul", "dnnl.inner_product"}) {
  const NodeRun r = make_matmul(s);
  for (const std::string& t : tactics) {
    SCOPED_TRACE(t);
    check_bf16(t, r);
  }
}

TEST(BF16MatMul, TwoDimensionalWithBias) {
  check_matmul({.a = {32, 96}, .b = {96, 80}, .c = std::vector<int64_t>{80}});
  check_matmul({.a = {7, 33}, .b = {33, 19}});
}

TEST(BF16MatMul, BatchedAWithSharedBGelu) {
  check_matmul({.a = {2, 16, 128}, .b = {128, 96}, .c = std::vector<int64_t>{96}, .act = "Gelu"});
  check_matmul({.a = {3, 5, 64}, .b = {64, 48}, .c = std::vector<int64_t>{48}, .act = "Relu"});
}

TEST(BF16MatMul, Transposes) {
  check_matmul({.a = {24, 64},
                .b = {40, 64},
                .c = std::vector<int64_t>{40},
                .attrs = {{"transB", Attribute::of_int(1)}},
                .act = "GeluTanh"});
  // transA: dnnl.matmul only (inner product reads A plain).
  check_matmul({.a = {64, 24}, .b = {64, 40}, .attrs = {{"transA", Attribute::of_int(1)}}}, {"dnnl.matmul"});
}

TEST(BF16MatMul, AlphaBetaAndFullC) {
  check_matmul({.a = {16, 64},
                .b = {64, 32},
                .c = std::vector<int64_t>{16, 32},
                .attrs = {{"alpha", Attribute::of_float(0.5f)}, {"beta", Attribute::of_float(2.0f)}},
                .act = "Relu"},
               {"dnnl.matmul"});
}

TEST(BF16MatMul, RunTimeB) {
  // Attention-like: both operands computed, batched; B converted to bf16 on each run.
  check_matmul({.a = {2, 3, 16, 64}, .b = {2, 3, 64, 24}, .const_b = false}, {"dnnl.matmul"});
  check_matmul({.a = {16, 64}, .b = {24, 64}, .attrs = {{"transB", Attribute::of_int(1)}}, .const_b = false},
               {"dnnl.matmul"});
}

TEST(BF16MatMul, DescribesBf16KernelAndIsa) {
  const NodeRun r = make_matmul({.a = {128, 256}, .b = {256, 384}, .c = std::vector<int64_t>{384}, .act = "Gelu"});
  for (const char* tactic : kMatmulTactics) {
    SCOPED_TRACE(tactic);
    const cpu::Tactic* t = cpu::TacticRegistry::global().find_named("kiln", "FusedMatMul", tactic);
    ASSERT_NE(t, nullptr);
    auto k = t->create(make_config(r));
    const std::string d = k->describe();
    const auto isa = k->required_isa();
    const bool needs_bf16 = std::find(isa.begin(), isa.end(), "avx512_bf16") != isa.end();
    if (cpu::host_has_fast_bf16()) {
      EXPECT_NE(d.find("bf16"), std::string::npos) << d;
      EXPECT_TRUE(needs_bf16);
    } else {
      EXPECT_EQ(d.find("bf16"), std::string::npos) << d;
    }
  }
}

// ---- The float32-only tactics and the fallback

TEST(BF16Fallback, Float32TacticsRefuseBf16NodesOnBf16Hosts) {
  const NodeRun mm = make_matmul({.a = {16, 64}, .b = {64, 32}, .c = std::vector<int64_t>{32}});
  MatmulSpec plain_mm{.a = {16, 64}, .b = {64, 32}, .c = std::vector<int64_t>{32}, .precision = ""};
  const ConvSpec wino{.x = {1, 64, 28, 28}, .w = {64, 64, 3, 3}, .attrs = {{"pads", ints({1, 1, 1, 1})}}};
  ConvSpec wino_f32 = wino;
  wino_f32.precision = "";
  // The same nodes without the mark are theirs (where oneDNN has Winograd at all).
  EXPECT_TRUE(tactic_supports("kiln.sgemm", make_matmul(plain_mm)));
  const bool has_wino = tactic_supports("dnnl.conv.winograd", make_conv(wino_f32, Layout::kPlain));
  const NodeRun conv = make_conv(wino, Layout::kPlain);
  if (cpu::host_has_fast_bf16()) {
    EXPECT_FALSE(tactic_supports("kiln.sgemm", mm));
    EXPECT_FALSE(tactic_supports("dnnl.conv.winograd", conv));
  } else {
    // No native bf16: every tactic runs the node in float32.
    ASSERT_TRUE(tactic_supports("kiln.sgemm", mm));
    expect_matches_reference("kiln.sgemm", mm);
    if (has_wino) {
      ASSERT_TRUE(tactic_supports("dnnl.conv.winograd", conv));
      expect_matches_reference("dnnl.conv.winograd", conv, 1e-3, 1e-3);
    }
  }
}

TEST(BF16Fallback, HostProbeAgreesWithOneDnnIsa) {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  if ((isa & bf16) != bf16) {
    EXPECT_FALSE(cpu::host_has_fast_bf16());
  }
  EXPECT_EQ(cpu::host_has_fast_bf16(), cpu::host_has_fast_bf16());  // cached, stable
}

TEST(BF16Fallback, IsaOfBf16Impls) {
  auto has = [](const std::vector<std::string>& v, const char* f) {
    return std::find(v.begin(), v.end(), f) != v.end();
  };
  const auto amx = cpu::isa_of_impl("brgconv:avx512_core_amx_bf16");
  EXPECT_TRUE(has(amx, "amx"));
  EXPECT_TRUE(has(amx, "avx512_bf16"));
  EXPECT_TRUE(has(amx, "avx512f"));
  const auto dw = cpu::isa_of_impl("brdgmm_dw:avx512_core_bf16");
  EXPECT_TRUE(has(dw, "avx512_bf16"));
  EXPECT_FALSE(has(dw, "amx"));
  EXPECT_EQ(cpu::isa_of_impl("brg:avx512_core"), std::vector<std::string>{"avx512f"});
  std::vector<std::string> gemm = cpu::isa_of_impl("x64:gemm:jit");
  cpu::add_bf16_isa(gemm);
  cpu::add_bf16_isa(gemm);
  EXPECT_EQ(gemm, (std::vector<std::string>{"avx512f", "avx512_bf16"}));
}

// ---- Schemas

TEST(BF16Schema, RejectsUnknownPrecision) {
  for (const std::string p : {"fp8", "BF16", "fp16"}) {
    SCOPED_TRACE(p);
    ConvSpec cs{.x = {1, 8, 6, 6}, .w = {8, 8, 3, 3}};
    cs.precision = p;
    NodeRun conv = make_conv(cs, Layout::kPlain);
    try {
      infer_outputs(conv);
      ADD_FAILURE() << "FusedConv accepted compute_precision " << p;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("compute_precision"), std::string::npos) << e.what();
    }
    MatmulSpec ms{.a = {4, 8}, .b = {8, 3}};
    ms.precision = p;
    try {
      infer_outputs(make_matmul(ms));
      ADD_FAILURE() << "FusedMatMul accepted compute_precision " << p;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("compute_precision"), std::string::npos) << e.what();
    }
  }
}

TEST(BF16Schema, DefaultIsFloat32AndBf16KeepsTypes) {
  // The attribute is declared with default "" (float32); "bf16" leaves the output float32.
  const OpSchema* conv = OpRegistry::global().find("kiln", "FusedConv", 1);
  const OpSchema* mm = OpRegistry::global().find("kiln", "FusedMatMul", 1);
  ASSERT_NE(conv, nullptr);
  ASSERT_NE(mm, nullptr);
  for (const OpSchema* s : {conv, mm}) {
    const AttrSpec* a = s->find_attr("compute_precision");
    ASSERT_NE(a, nullptr) << s->name;
    EXPECT_EQ(a->kind, AttrKind::kString);
    ASSERT_TRUE(a->default_value.has_value());
    EXPECT_EQ(a->default_value->s, "");
  }
  const auto y = infer_outputs(make_matmul({.a = {4, 8}, .b = {8, 3}}));
  EXPECT_EQ(y[0].dtype, DType::kF32);
  const auto yc = infer_outputs(make_conv({.x = {1, 8, 6, 6}, .w = {8, 8, 3, 3}}, Layout::kPlain));
  EXPECT_EQ(yc[0].dtype, DType::kF32);
}

}  // namespace
}  // namespace kiln_cpu_test
