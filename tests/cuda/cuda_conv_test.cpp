// cuDNN convolutions (CudnnConv) against a float64 NHWC convolution computed here on the host, on
// fresh random inputs every run: ResNet, MobileNetV2 (depthwise, ReLU6) and stem shapes, grouped
// and dilated kernels, every fused epilogue, in FP32 (TF32), FP16 and BF16, with per-dtype
// tolerances on ||out - ref|| / ||ref||. Outputs are poisoned (NaN) first, so an unwritten element
// fails. GPU tests skip with a message when there is no GPU; parameter checks run everywhere.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backends/cuda/conv.h"
#include "backends/cuda/cuda_util.h"
#include "cuda_test_support.h"

namespace kiln::cuda {
namespace {

using namespace test;

double tolerance(DType t) { return t == DType::kF32 ? 5e-3 : t == DType::kF16 ? 1e-2 : 3e-2; }

// The convolution by its definition: y[n,oh,ow,k] = act(sum_{r,s,ci} x[n, oh*sh - ph + r*dh,
// ow*sw - pw + s*dw, g*cg + ci] * w[k,r,s,ci] + bias[k] + z[n,oh,ow,k]) with g = k / (K / groups),
// taps outside the input reading zero.
std::vector<double> reference(const ConvParams& p, const std::vector<float>& x, const std::vector<float>& w,
                              const std::vector<float>& bias, const std::vector<float>& z) {
  const int64_t oh = p.out_h(), ow = p.out_w(), cg = p.c / p.groups, kg = p.k / p.groups;
  std::vector<double> y(static_cast<size_t>(p.n * oh * ow * p.k));
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j)
        for (int64_t k = 0; k < p.k; ++k) {
          const int64_t g = k / kg, o = ((n * oh + i) * ow + j) * p.k + k;
          double acc = 0;
          for (int64_t r = 0; r < p.r; ++r) {
            const int64_t ih = i * p.stride_h - p.pad_h + r * p.dil_h;
            if (ih < 0 || ih >= p.h) continue;
            for (int64_t s = 0; s < p.s; ++s) {
              const int64_t iw = j * p.stride_w - p.pad_w + s * p.dil_w;
              if (iw < 0 || iw >= p.w) continue;
              const float* xp = &x[static_cast<size_t>(((n * p.h + ih) * p.w + iw) * p.c + g * cg)];
              const float* wp = &w[static_cast<size_t>(((k * p.r + r) * p.s + s) * cg)];
              for (int64_t c = 0; c < cg; ++c) acc += double(xp[c]) * wp[c];
            }
          }
          if (p.bias) acc += bias[static_cast<size_t>(k)];
          if (p.residual) acc += z[static_cast<size_t>(o)];
          if (p.act == ConvAct::kRelu) acc = std::max(acc, 0.0);
          if (p.act == ConvAct::kClip) acc = std::min(std::max(acc, double(p.clip_lo)), double(p.clip_hi));
          if (p.act == ConvAct::kSilu) acc = acc / (1.0 + std::exp(-acc));
          y[static_cast<size_t>(o)] = acc;
        }
  return y;
}

class CudaConv : public GpuTest {
 protected:

  struct Result {
    double error = INFINITY;
    std::vector<double> ref;
    std::string describe;
  };
  // Runs `p` on random data (x in [-3, 3], weights scaled so outputs have a spread of about 3) and
  // compares with the reference. `in_place`: the residual z is read from y's own buffer. `graph`:
  // through cuDNN's graph API (CudnnGraphConv) instead of the legacy one.
  Result check(const ConvParams& p, size_t workspace_limit = 64u << 20, bool in_place = false, bool graph = false) {
    const size_t xs = static_cast<size_t>(p.n * p.h * p.w * p.c),
                 ws = static_cast<size_t>(p.k * p.r * p.s * (p.c / p.groups)),
                 ys = static_cast<size_t>(p.n * p.out_h() * p.out_w() * p.k);
    const float wscale = 3.f / std::sqrt(static_cast<float>(p.r * p.s * (p.c / p.groups)));
    std::vector<float> x = random(xs, -3, 3), w = random(ws, -wscale, wscale), bias = random(p.k, -1, 1),
                       z = random(ys, -2, 2);
    DeviceBuffer dx = upload(p.type, x), dw = upload(p.type, w), db = upload(p.type, bias), dz = upload(p.type, z);
    DeviceBuffer dy = poisoned(p.type, ys);
    if (in_place) KILN_CUDA_CHECK(cudaMemcpy(dy.get(), dz.get(), dz.bytes(), cudaMemcpyDeviceToDevice));
    Result res;
    const void* zz = p.residual ? (in_place ? dy.get() : dz.get()) : nullptr;
    if (graph) {
      CudnnGraphConv conv(p, workspace_limit);
      EXPECT_LE(conv.workspace_bytes(), workspace_limit);
      DeviceBuffer ws(conv.workspace_bytes());
      conv.run(dx.get(), dw.get(), p.bias ? db.get() : nullptr, zz, dy.get(), nullptr, ws.get(), ws.bytes());
      res.describe = conv.describe();
    } else {
      CudnnConv conv(p, workspace_limit);
      EXPECT_LE(conv.workspace_bytes(), workspace_limit);
      conv.run(dx.get(), dw.get(), p.bias ? db.get() : nullptr, zz, dy.get(), nullptr);
      res.describe = conv.describe();
    }
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    res.ref = reference(p, x, w, bias, z);
    res.error = rel_error(download(p.type, dy, ys), res.ref);
    EXPECT_LT(res.error, tolerance(p.type)) << p.str() << ": " << res.describe;
    return res;
  }
};

ConvParams make(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t r, int64_t s, int pad, int stride,
                DType t) {
  ConvParams p;
  p.n = n, p.c = c, p.h = h, p.w = w, p.k = k, p.r = r, p.s = s;
  p.pad_h = p.pad_w = pad;
  p.stride_h = p.stride_w = stride;
  p.type = t;
  return p;
}

const DType kTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

// SiLU fused through cuDNN's graph API (one operation graph: convolution, bias, residual,
// activation), and SiLU and ReLU6 through the legacy path (cuDNN, then Kiln's epilogue). A ReLU6
// graph runs where cuDNN has an engine for it (cuDNN 9.19 on the H100 has none for some shapes,
// and says so: the kernel then keeps the legacy path).
TEST_F(CudaConv, SiluAndClipFuseThroughTheGraphApi) {
  for (DType t : {DType::kF16, DType::kBF16}) {
    ConvParams a = make(2, 32, 20, 20, 64, 3, 3, 1, 1, t);
    a.bias = true, a.act = ConvAct::kSilu;
    ConvParams b = make(2, 64, 10, 10, 32, 1, 1, 0, 1, t);
    b.bias = true, b.residual = true, b.act = ConvAct::kSilu;
    ConvParams c = make(1, 48, 17, 17, 96, 3, 3, 1, 2, t);
    c.bias = true, c.act = ConvAct::kClip, c.clip_lo = 0, c.clip_hi = 6;
    ConvParams d = make(3, 16, 9, 9, 24, 1, 1, 0, 1, t);
    d.act = ConvAct::kSilu;
    for (const ConvParams& p : {a, b, d}) {
      const Result g = check(p, 64u << 20, false, true);
      EXPECT_NE(g.describe.find("cudnn graph"), std::string::npos) << g.describe;
      check(p);  // the legacy path with Kiln's SiLU epilogue
    }
    try {
      check(c, 64u << 20, false, true);
    } catch (const CudaError& e) {
      EXPECT_NE(std::string(e.what()).find("no configuration ran"), std::string::npos) << e.what();
    }
    check(c);
  }
}

// What the graph path does not take, named (no GPU needed).
TEST(CudaConvGraph, RefusesWhatItCannotTake) {
  ConvParams p = make(1, 16, 8, 8, 16, 3, 3, 1, 1, DType::kF16);
  p.act = ConvAct::kSilu;
  EXPECT_EQ(conv_graph_unsupported(p), "");
  p.type = DType::kF32;
  EXPECT_NE(conv_graph_unsupported(p).find("FP16 and BF16"), std::string::npos);
  p.type = DType::kF16, p.groups = 2;
  EXPECT_NE(conv_graph_unsupported(p).find("ungrouped"), std::string::npos);
  p.groups = 1, p.act = ConvAct::kClip, p.clip_lo = -1;
  EXPECT_NE(conv_graph_unsupported(p).find("clips at 0"), std::string::npos);
  p.clip_lo = 0, p.c = 12;
  EXPECT_NE(conv_graph_unsupported(p).find("multiples of 8"), std::string::npos);
  EXPECT_THROW(CudnnGraphConv{p}, CudaError);
}

TEST_F(CudaConv, ResNet3x3BiasRelu) {
  for (DType t : kTypes) {
    ConvParams p = make(2, 64, 14, 14, 64, 3, 3, 1, 1, t);
    p.bias = true, p.act = ConvAct::kRelu;
    Result res = check(p);
    EXPECT_NE(res.describe.find("cudnn fwd algo "), std::string::npos) << res.describe;
    EXPECT_NE(res.describe.find(std::string("nhwc ") + dtype_name(t)), std::string::npos) << res.describe;
  }
}

TEST_F(CudaConv, Pointwise1x1Stride2NoBias) {
  for (DType t : {DType::kF32, DType::kF16}) check(make(2, 64, 15, 14, 128, 1, 1, 0, 2, t));  // 8x7 out
}

TEST_F(CudaConv, Stem7x7Stride2ThreeChannels) {
  for (DType t : kTypes) {
    ConvParams p = make(2, 3, 32, 30, 64, 7, 7, 3, 2, t);
    p.bias = true, p.act = ConvAct::kRelu;
    check(p);
  }
}

TEST_F(CudaConv, ResidualBiasRelu) {
  for (DType t : kTypes) {
    ConvParams p = make(2, 32, 9, 11, 48, 3, 3, 1, 1, t);
    p.bias = true, p.residual = true, p.act = ConvAct::kRelu;
    check(p);
    check(p, 64u << 20, /*in_place=*/true);  // z is y's own buffer
  }
}

TEST_F(CudaConv, ResidualOnlyNoActivation) {
  ConvParams p = make(1, 16, 8, 8, 32, 1, 1, 0, 1, DType::kF16);
  p.residual = true;
  check(p);
}

TEST_F(CudaConv, DepthwiseClip6Stride2And1) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16})
    for (int stride : {2, 1}) {
      ConvParams p = make(2, 32, 15, 15, 32, 3, 3, 1, stride, t);
      p.groups = 32, p.bias = true, p.act = ConvAct::kClip, p.clip_lo = 0, p.clip_hi = 6;
      Result res = check(p);
      // The data must reach both bounds, or the clip is not tested.
      EXPECT_GT(std::count(res.ref.begin(), res.ref.end(), 6.0), 0) << p.str();
      EXPECT_GT(std::count(res.ref.begin(), res.ref.end(), 0.0), 0) << p.str();
    }
}

TEST_F(CudaConv, Grouped4) {
  for (DType t : {DType::kF16, DType::kBF16}) {
    ConvParams p = make(2, 32, 10, 10, 64, 3, 3, 1, 1, t);
    p.groups = 4, p.bias = true, p.act = ConvAct::kRelu;
    check(p);
  }
}

TEST_F(CudaConv, Dilation2) {
  for (DType t : {DType::kF32, DType::kF16}) {
    ConvParams p = make(2, 16, 13, 12, 32, 3, 3, 2, 1, t);
    p.dil_h = p.dil_w = 2, p.bias = true;
    check(p);
  }
}

TEST_F(CudaConv, AnisotropicStridePadDilation) {
  ConvParams p = make(1, 8, 17, 10, 16, 3, 5, 0, 1, DType::kF32);
  p.pad_h = 1, p.pad_w = 2, p.stride_h = 2, p.stride_w = 1, p.dil_h = 1, p.dil_w = 2, p.bias = true;
  check(p);
}

TEST_F(CudaConv, ClipWithNonzeroFloorUsesKilnEpilogue) {
  for (DType t : {DType::kF16, DType::kBF16, DType::kF32}) {
    ConvParams p = make(2, 16, 9, 9, 24, 3, 3, 1, 1, t);
    p.bias = true, p.residual = true, p.act = ConvAct::kClip, p.clip_lo = -1.5f, p.clip_hi = 2;
    Result res = check(p);
    EXPECT_NE(res.describe.find("(kiln epilogue)"), std::string::npos) << res.describe;
    EXPECT_GT(std::count(res.ref.begin(), res.ref.end(), -1.5), 0);
    EXPECT_GT(std::count(res.ref.begin(), res.ref.end(), 2.0), 0);
  }
}

TEST_F(CudaConv, NoWorkspaceAllowed) {
  ConvParams p = make(2, 32, 12, 12, 32, 3, 3, 1, 1, DType::kF16);
  p.bias = true, p.act = ConvAct::kRelu;
  check(p, /*workspace_limit=*/0);
}

TEST_F(CudaConv, TimingsAndRunArguments) {
  ConvParams p = make(4, 64, 28, 28, 64, 3, 3, 1, 1, DType::kF16);
  p.bias = true, p.act = ConvAct::kRelu;
  CudnnConv conv(p);
  ASSERT_FALSE(conv.timings().empty());
  float best = INFINITY;
  for (const ConvTiming& t : conv.timings())
    if (t.ms >= 0) best = std::min(best, t.ms);
  EXPECT_GT(conv.chosen_ms(), 0.f);
  EXPECT_EQ(conv.chosen_ms(), best) << conv.describe();  // the fastest candidate wins
  DeviceBuffer x(64), y(64);
  try {
    conv.run(x.get(), x.get(), nullptr, nullptr, y.get(), nullptr);
    FAIL() << "a missing bias was accepted";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("needs a bias"), std::string::npos) << e.what();
  }
  EXPECT_THROW(conv.run(x.get(), x.get(), x.get(), x.get(), y.get(), nullptr), CudaError);  // residual not built
  if (conv.workspace_bytes() > 0) {
    try {
      conv.run(x.get(), x.get(), x.get(), nullptr, y.get(), nullptr, x.get(), conv.workspace_bytes() - 1);
      FAIL() << "a too small workspace was accepted";
    } catch (const CudaError& e) {
      EXPECT_NE(std::string(e.what()).find("-byte workspace, got"), std::string::npos) << e.what();
    }
  }
}

// Several threads share one CudnnConv, each on its own stream and data; half of them use the
// object's workspace (runs ordered on the GPU), half their own.
TEST_F(CudaConv, ConcurrentRunsOnSeveralStreams) {
  ConvParams p = make(2, 32, 10, 10, 32, 3, 3, 1, 1, DType::kF16);
  p.bias = true, p.act = ConvAct::kRelu;
  CudnnConv conv(p);
  const size_t xs = static_cast<size_t>(p.n * p.h * p.w * p.c), ws = static_cast<size_t>(p.k * p.r * p.s * p.c),
               ys = static_cast<size_t>(p.n * p.out_h() * p.out_w() * p.k);
  constexpr int kThreads = 4;
  std::vector<std::vector<float>> x(kThreads), w(kThreads), b(kThreads);
  std::vector<DeviceBuffer> dx, dw, db, dy;
  for (int i = 0; i < kThreads; ++i) {
    x[i] = random(xs, -1, 1), w[i] = random(ws, -0.2f, 0.2f), b[i] = random(p.k, -1, 1);
    dx.push_back(upload(p.type, x[i])), dw.push_back(upload(p.type, w[i])), db.push_back(upload(p.type, b[i]));
    dy.push_back(poisoned(p.type, ys));
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] {
      Stream s;
      DeviceBuffer own(conv.workspace_bytes());
      for (int rep = 0; rep < 20; ++rep) {
        if (i % 2)
          conv.run(dx[i].get(), dw[i].get(), db[i].get(), nullptr, dy[i].get(), s.get(), own.get(), own.bytes());
        else
          conv.run(dx[i].get(), dw[i].get(), db[i].get(), nullptr, dy[i].get(), s.get());
      }
      s.synchronize();
    });
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i)
    EXPECT_LT(rel_error(download(p.type, dy[i], ys), reference(p, x[i], w[i], b[i], {})), tolerance(p.type)) << i;
}

// run() enqueues only, so a CUDA graph can capture it and replay it.
TEST_F(CudaConv, CapturedIntoCudaGraph) {
  for (ConvAct act : {ConvAct::kRelu, ConvAct::kClip}) {
    ConvParams p = make(2, 16, 8, 8, 16, 3, 3, 1, 1, DType::kF16);
    p.bias = true, p.residual = true, p.act = act, p.clip_lo = -1;  // kClip here needs Kiln's epilogue kernel
    const size_t ys = static_cast<size_t>(p.n * p.out_h() * p.out_w() * p.k);
    std::vector<float> x = random(static_cast<size_t>(p.n * p.h * p.w * p.c), -1, 1),
                       w = random(static_cast<size_t>(p.k * p.r * p.s * p.c), -0.3f, 0.3f), b = random(p.k, -1, 1),
                       z = random(ys, -1, 1);
    DeviceBuffer dx = upload(p.type, x), dw = upload(p.type, w), db = upload(p.type, b), dz = upload(p.type, z),
                 dy = poisoned(p.type, ys);
    CudnnConv conv(p);
    Stream s;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    KILN_CUDA_CHECK(cudaStreamBeginCapture(s.get(), cudaStreamCaptureModeGlobal));
    conv.run(dx.get(), dw.get(), db.get(), dz.get(), dy.get(), s.get());
    KILN_CUDA_CHECK(cudaStreamEndCapture(s.get(), &graph));
    KILN_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    KILN_CUDA_CHECK(cudaGraphLaunch(exec, s.get()));
    s.synchronize();
    EXPECT_LT(rel_error(download(p.type, dy, ys), reference(p, x, w, b, z)), tolerance(p.type)) << conv.describe();
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
}

TEST_F(CudaConv, EpilogueKernelMatchesDefinition) {
  for (DType t : kTypes) {
    const int64_t k = 5, n = 3 * 7 * k;
    std::vector<float> y = random(n, -4, 4), b = random(k, -1, 1), z = random(n, -1, 1);
    y[3] = NAN;
    DeviceBuffer dy = upload(t, y), db = upload(t, b), dz = upload(t, z);
    conv_epilogue(t, dy.get(), db.get(), dz.get(), n, k, ConvAct::kClip, -0.5f, 1.25f, nullptr);
    std::vector<float> out = download(t, dy, n);
    EXPECT_TRUE(std::isnan(out[3])) << "NaN must propagate through the clip";
    out[3] = 0;
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i)
      ref[i] = i == 3 ? 0 : std::min(std::max(double(y[i]) + b[i % k] + z[i], -0.5), 1.25);
    EXPECT_LT(rel_error(out, ref), tolerance(t)) << dtype_name(t);
  }
}

// Parameter checks come before any CUDA call, so they run without a GPU too.
TEST(CudaConvParams, BadParametersAreNamed) {
  auto message = [](const ConvParams& p) -> std::string {
    try {
      CudnnConv conv(p);
    } catch (const CudaError& e) {
      return e.what();
    }
    return "(no error)";
  };
  auto base = [] { return make(1, 8, 8, 8, 8, 3, 3, 1, 1, DType::kF16); };
  ConvParams p = base();
  p.groups = 3;
  EXPECT_NE(message(p).find("input channels c=8 are not divisible by groups=3"), std::string::npos) << message(p);
  p = make(1, 8, 8, 8, 6, 3, 3, 1, 1, DType::kF16);
  p.groups = 4;
  EXPECT_NE(message(p).find("output channels k=6 are not divisible by groups=4"), std::string::npos) << message(p);
  p = make(1, 8, 4, 4, 8, 7, 7, 1, 1, DType::kF16);
  EXPECT_EQ(p.out_h(), 0);
  EXPECT_NE(message(p).find("the kernel (7x7 dilated) is larger than the padded input (6x6)"), std::string::npos)
      << message(p);
  p = base();
  p.dil_h = 5;  // 11 rows dilated against 8 + 2 padded (dil_h = 4, 9 rows, would fit)
  EXPECT_NE(message(p).find("(11x3 dilated) is larger than the padded input (10x10)"), std::string::npos) << message(p);
  p = base();
  p.c = 0;
  EXPECT_NE(message(p).find("must be positive"), std::string::npos) << message(p);
  p = base();
  p.pad_w = -1;
  EXPECT_NE(message(p).find("padding must not be negative"), std::string::npos) << message(p);
  p = base();
  p.stride_h = 0;
  EXPECT_NE(message(p).find("strides must be at least 1"), std::string::npos) << message(p);
  p = base();
  p.act = ConvAct::kClip, p.clip_lo = 2, p.clip_hi = 1;
  EXPECT_NE(message(p).find("clip_lo 2 is above clip_hi 1"), std::string::npos) << message(p);
  p = base();
  p.groups = 0;
  EXPECT_NE(message(p).find("groups must be at least 1"), std::string::npos) << message(p);
  // Messages name the convolution.
  EXPECT_NE(message(p).find("conv n1 c8 8x8 -> k8 3x3 pad 1,1 stride 1,1"), std::string::npos) << message(p);
}

TEST(CudaConvParams, OutputSizeFormula) {
  ConvParams p = make(1, 3, 224, 224, 64, 7, 7, 3, 2, DType::kF16);
  EXPECT_EQ(p.out_h(), 112);
  EXPECT_EQ(p.out_w(), 112);
  p = make(1, 8, 15, 14, 8, 1, 1, 0, 2, DType::kF16);
  EXPECT_EQ(p.out_h(), 8);
  EXPECT_EQ(p.out_w(), 7);
  p = make(1, 8, 13, 12, 8, 3, 3, 2, 1, DType::kF16);
  p.dil_h = p.dil_w = 2;
  EXPECT_EQ(p.out_h(), 13);
  EXPECT_EQ(p.out_w(), 12);
  p.stride_h = 0;
  EXPECT_EQ(p.out_h(), 0);
}

}  // namespace
}  // namespace kiln::cuda
