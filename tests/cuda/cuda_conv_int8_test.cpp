// Kiln's INT8 implicit-GEMM convolution (conv_int8.h) against an exact host computation on fresh
// random INT8 inputs every run: 1x1, 3x3 (padded, strided, dilated) and 7x7 filters, output
// channels and K that are not multiples of the tiles, pixel counts that leave partial tiles, every
// tile, INT8 and FP16 outputs, INT8 and FP16 residuals, ReLU and clip. The integer sums are exact;
// the FP32 epilogue may round differently from the float64 reference, so an INT8 output may be one
// code off (and at most 1% of them are); an FP16 output is within FP16 rounding of the reference.
// Outputs are poisoned first, so an unwritten element fails. GPU tests skip with a message when
// there is no GPU; parameter checks run everywhere.
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backends/cuda/conv_int8.h"
#include "backends/cuda/cuda_util.h"

namespace kiln::cuda {
namespace {

bool have_gpu(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    *why = e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device";
    return false;
  }
  int major = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  if (major < 8) {
    *why = "the GPU is older than sm_80";
    return false;
  }
  return true;
}
#define REQUIRE_GPU()                                                   \
  do {                                                                  \
    std::string why_;                                                   \
    if (!have_gpu(&why_)) GTEST_SKIP() << "no usable GPU: " << why_;    \
  } while (0)

template <class T>
DeviceBuffer to_device(const std::vector<T>& v) {
  DeviceBuffer d(std::max<size_t>(1, v.size() * sizeof(T)));
  if (!v.empty()) KILN_CUDA_CHECK(cudaMemcpy(d.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

struct Case {
  Int8ConvParams p;
  const char* what;
};

// tile == Int8Tile::kCount: the layer as one cuBLASLt INT8 GEMM (Int8ConvGemm); `graph`: on cuDNN's
// graph API (CudnnGraphConv's 8-bit form), whose construction may throw (no engine for the shape).
void run_case(const Case& cs, Int8Tile tile, uint32_t seed, bool graph = false) {
  const Int8ConvParams& p = cs.p;
  const bool gemm = tile == Int8Tile::kCount;
  SCOPED_TRACE(std::string(cs.what) + " " + p.str() + " tile " +
               (graph ? "cudnn graph" : gemm ? "cublasLt gemm" : int8_tile_name(tile)));
  std::unique_ptr<CudnnGraphConv> g8;
  if (graph) g8 = std::make_unique<CudnnGraphConv>(int8_conv_shape(p), int8_graph_quant(p), 64u << 20, nullptr);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> q(-127, 127);
  std::uniform_real_distribution<float> u(-1.f, 1.f), pos(0.5f, 1.5f);
  const int64_t oh = p.out_h(), ow = p.out_w(), ktot = p.r * p.s * p.c;
  std::vector<int8_t> x(static_cast<size_t>(p.n * p.h * p.w * p.c)), w(static_cast<size_t>(p.k * ktot));
  for (auto& v : x) v = static_cast<int8_t>(q(rng));
  for (auto& v : w) v = static_cast<int8_t>(q(rng));
  // Scales that put the output near the INT8 range: about 1 / (127 * sqrt(K) * 127 / 3).
  const float base = 3.f / (127.f * 127.f * std::sqrt(static_cast<float>(ktot)));
  std::vector<float> scale(static_cast<size_t>(p.k)), bias(static_cast<size_t>(p.k));
  for (auto& v : scale) v = base * pos(rng);
  for (auto& v : bias) v = u(rng);
  const size_t ny = static_cast<size_t>(p.n * oh * ow * p.k);
  std::vector<int8_t> z8(ny);
  std::vector<__half> z16(ny);
  std::vector<double> zval(ny, 0.0);
  for (size_t i = 0; i < ny; ++i) {
    z8[i] = static_cast<int8_t>(q(rng));
    z16[i] = __float2half_rn(u(rng));
    zval[i] = p.z_f16 ? static_cast<double>(__half2float(z16[i])) : z8[i] * static_cast<double>(p.z_scale);
  }
  DeviceBuffer dx = to_device(x), dw = to_device(w), ds = to_device(scale), db = to_device(bias);
  DeviceBuffer dz = p.z_f16 ? to_device(z16) : to_device(z8);
  DeviceBuffer dy(ny * (p.y_f16 ? 2 : 1));
  KILN_CUDA_CHECK(cudaMemset(dy.get(), p.y_f16 ? 0xff : 0x80, dy.bytes()));  // NaN / -128 where unwritten
  if (graph) {
    DeviceBuffer ws(g8->workspace_bytes());
    g8->run_quant(dx.get(), dw.get(), static_cast<const float*>(ds.get()), db.get(), dz.get(), dy.get(), nullptr, ws.get(),
                  ws.bytes());
  } else if (gemm) {
    Int8ConvGemm g(p, 64u << 20, nullptr);
    DeviceBuffer ws(g.workspace_bytes());
    g.run(static_cast<const int8_t*>(dx.get()), static_cast<const int8_t*>(dw.get()), static_cast<const float*>(ds.get()),
          static_cast<const float*>(db.get()), dz.get(), dy.get(), nullptr, ws.get());
  } else {
    conv_int8(p, tile, static_cast<const int8_t*>(dx.get()), static_cast<const int8_t*>(dw.get()),
              static_cast<const float*>(ds.get()), static_cast<const float*>(db.get()), dz.get(), dy.get(), nullptr);
  }
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint8_t> out(dy.bytes());
  KILN_CUDA_CHECK(cudaMemcpy(out.data(), dy.get(), out.size(), cudaMemcpyDeviceToHost));

  int64_t off_by_one = 0, bad = 0, exact_nonsat = 0;
  double max_f16_err = 0;
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t i = 0; i < oh; ++i)
      for (int64_t j = 0; j < ow; ++j)
        for (int64_t k = 0; k < p.k; ++k) {
          int64_t acc = 0;
          for (int64_t r = 0; r < p.r; ++r)
            for (int64_t s = 0; s < p.s; ++s) {
              const int64_t ih = i * p.stride_h - p.pad_h + r * p.dil_h, iw = j * p.stride_w - p.pad_w + s * p.dil_w;
              if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) continue;
              for (int64_t c = 0; c < p.c; ++c)
                acc += static_cast<int64_t>(x[static_cast<size_t>(((n * p.h + ih) * p.w + iw) * p.c + c)]) *
                       w[static_cast<size_t>(k * ktot + (r * p.s + s) * p.c + c)];
            }
          const size_t o = static_cast<size_t>(((n * oh + i) * ow + j) * p.k + k);
          double v = static_cast<double>(acc) * scale[static_cast<size_t>(k)] + (p.bias ? bias[static_cast<size_t>(k)] : 0.0);
          if (p.residual) v += zval[o];
          if (p.act == ConvAct::kRelu) v = std::max(v, 0.0);
          if (p.act == ConvAct::kClip) v = std::min(std::max(v, static_cast<double>(p.clip_lo)), static_cast<double>(p.clip_hi));
          if (p.y_f16) {
            __half h;
            std::memcpy(&h, &out[2 * o], 2);
            const double got = __half2float(h);
            const double err = std::fabs(got - v) / std::max(1.0, std::fabs(v));
            max_f16_err = std::max(max_f16_err, std::isnan(got) ? 1e9 : err);
          } else {
            const double ref = std::nearbyint(std::min(127.0, std::max(-128.0, v / p.y_scale)));
            const int got = static_cast<int8_t>(out[o]);
            const double d = std::fabs(got - ref);
            if (d > 1) ++bad;
            else if (d == 1) ++off_by_one;
            else if (std::fabs(ref) < 127) ++exact_nonsat;
          }
        }
  if (p.y_f16) {
    EXPECT_LT(max_f16_err, 2e-3);
  } else {
    EXPECT_EQ(bad, 0);
    EXPECT_LE(off_by_one, static_cast<int64_t>(ny / 100 + 1));
    EXPECT_GT(exact_nonsat, static_cast<int64_t>(ny / 4)) << "the outputs were mostly saturated: the test's scales are wrong";
  }
}

std::vector<Case> cases() {
  std::vector<Case> v;
  v.reserve(24);  // add() hands out a reference to the last element
  auto add = [&](int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t r, int pad, int stride, int dil,
                 const char* what) -> Int8ConvParams& {
    Case cs;
    cs.p.n = n, cs.p.c = c, cs.p.h = h, cs.p.w = w, cs.p.k = k, cs.p.r = r, cs.p.s = r;
    cs.p.pad_h = cs.p.pad_w = pad, cs.p.stride_h = cs.p.stride_w = stride, cs.p.dil_h = cs.p.dil_w = dil;
    cs.p.bias = true, cs.p.y_scale = 0.05f, cs.p.z_scale = 0.02f;
    cs.what = what;
    v.push_back(cs);
    return v.back().p;
  };
  add(2, 64, 14, 14, 256, 1, 0, 1, 1, "1x1 expand").act = ConvAct::kRelu;
  { auto& p = add(2, 256, 7, 9, 64, 1, 0, 1, 1, "1x1 reduce, residual int8"); p.residual = true; p.act = ConvAct::kRelu; }
  add(3, 64, 13, 11, 72, 3, 1, 1, 1, "3x3 pad 1, 72 channels").act = ConvAct::kRelu;
  add(2, 128, 15, 15, 128, 3, 1, 2, 1, "3x3 stride 2");
  add(1, 32, 16, 16, 40, 3, 2, 1, 2, "3x3 dilation 2").act = ConvAct::kClip;
  add(2, 16, 20, 20, 64, 7, 3, 2, 1, "7x7 stride 2, K = 784");
  { auto& p = add(2, 48, 9, 9, 136, 1, 0, 2, 1, "1x1 stride 2, fp16 out"); p.y_f16 = true; }
  { auto& p = add(1, 64, 10, 10, 64, 3, 1, 1, 1, "3x3 fp16 residual"); p.residual = true; p.z_f16 = true; p.act = ConvAct::kRelu; }
  { auto& p = add(1, 32, 5, 5, 16, 3, 1, 1, 1, "no bias, fp16 out, residual"); p.bias = false; p.y_f16 = true; p.residual = true; }
  add(3, 48, 7, 5, 136, 1, 0, 1, 1, "1x1, 48 -> 136, no activation");
  { auto& p = add(1, 96, 6, 6, 40, 1, 0, 1, 1, "1x1 no bias, residual int8"); p.bias = false; p.residual = true; }
  // More output tiles than an H100 has SMs: the persistent kernel's CTAs take several tiles each
  // (its loads run into the next tile while the last one finishes), by TMA (1x1) and by cp.async (3x3).
  add(4, 64, 48, 48, 256, 1, 0, 1, 1, "1x1, 144 tiles of 128x128").act = ConvAct::kRelu;
  add(4, 16, 48, 48, 256, 3, 1, 1, 1, "3x3, 144 tiles of 128x128").act = ConvAct::kRelu;
  // The streaming tiles' layers: more 64-pixel tiles than their CTAs (each walks several through
  // its pipeline, the last one partial), K = 64 with a residual and K = 256 without, two chunks of
  // channels with the last one partial (k = 208).
  { auto& p = add(6, 64, 47, 48, 256, 1, 0, 1, 1, "1x1 64 -> 256, int8 residual, 212 pixel tiles"); p.residual = true; p.act = ConvAct::kRelu; }
  add(8, 256, 30, 31, 208, 1, 0, 1, 1, "1x1 256 -> 208, 117 pixel tiles").act = ConvAct::kClip;
  return v;
}

TEST(CudaInt8Conv, MatchesTheExactReferenceOnEveryTile) {
  REQUIRE_GPU();
  uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (const Case& c : cases())
    for (int t = 0; t < static_cast<int>(Int8Tile::kCount); ++t) {
      if (!int8_tile_takes(c.p, static_cast<Int8Tile>(t))) continue;
      run_case(c, static_cast<Int8Tile>(t), seed++);
    }
}

// The streaming tiles take only 1x1 plain-GEMM layers with 64, 128 or 256 input channels, output
// channels a multiple of 16 and INT8 output and residual, and refuse the others with a clear error.
TEST(CudaInt8Conv, StreamingTilesTakeOnlyShortGemmLayers) {
  REQUIRE_GPU();
  Int8ConvParams p;
  p.n = 2, p.c = 64, p.h = p.w = 8, p.k = 256, p.r = p.s = 1, p.y_scale = 0.1f, p.residual = true;
  EXPECT_TRUE(int8_tile_takes(p, Int8Tile::kStr64x128));
  EXPECT_TRUE(int8_tile_takes(p, Int8Tile::k128x128));
  auto refused = [&](Int8ConvParams q, const char* why) {
    EXPECT_FALSE(int8_tile_takes(q, Int8Tile::kStr64x64)) << why;
    EXPECT_FALSE(int8_tile_takes(q, Int8Tile::kStr64x128)) << why;
    EXPECT_TRUE(int8_tile_takes(q, Int8Tile::k128x128)) << why;
  };
  Int8ConvParams q = p;
  q.r = q.s = 3, q.pad_h = q.pad_w = 1;
  refused(q, "3x3");
  q = p, q.c = 96;
  refused(q, "96 input channels");
  q = p, q.c = 512;
  refused(q, "512 input channels");
  q = p, q.k = 136;
  refused(q, "136 output channels");
  q = p, q.stride_h = q.stride_w = 2;
  refused(q, "stride 2");
  q = p, q.y_f16 = true;
  refused(q, "an FP16 output");
  q = p, q.z_f16 = true;
  refused(q, "an FP16 residual");
  q = p, q.r = q.s = 3, q.pad_h = q.pad_w = 1;
  try {
    conv_int8(q, Int8Tile::kStr64x64, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
    ADD_FAILURE() << "a 3x3 layer on a streaming tile was not refused";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("1x1"), std::string::npos) << e.what();
  }
}

// The wgmma tiles run wherever the GPU is an sm_90 one (the build always has the sm_90a image), so
// on Hopper the test above cannot pass without them; elsewhere they refuse with a clear error.
TEST(CudaInt8Conv, WgmmaTilesRunOnHopperAndRefuseElsewhere) {
  REQUIRE_GPU();
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  const bool hopper = major == 9 && minor == 0;
  EXPECT_EQ(int8_tile_available(Int8Tile::kW128x256), hopper);
  EXPECT_TRUE(int8_tile_available(Int8Tile::k128x128));
  if (hopper) return;
  Int8ConvParams p;
  p.n = 1, p.c = 32, p.h = p.w = 8, p.k = 16, p.r = p.s = 1, p.y_scale = 0.1f;
  try {
    conv_int8(p, Int8Tile::kW128x256, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
    ADD_FAILURE() << "a wgmma tile launched on sm_" << major << minor;
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("sm_90"), std::string::npos) << e.what();
  }
}

// The 1x1 layers as one cuBLASLt INT8 GEMM, against the same exact reference.
TEST(CudaInt8Conv, OneByOneLayersAsCublasLtGemmsMatchTheExactReference) {
  REQUIRE_GPU();
  uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  int ran = 0;
  for (const Case& c : cases()) {
    if (!conv_int8_gemm_unsupported(c.p).empty()) continue;
    run_case(c, Int8Tile::kCount, seed++);
    ++ran;
  }
  EXPECT_EQ(ran, 6);  // the 1x1 cases with stride 1, an INT8 output and an INT8 residual or none, and ReLU or none
}

// The same layers on cuDNN's graph API (INT8 in, INT32 accumulation, the scale, bias, residual,
// activation and requantization fused), against the same exact reference: the layers with channels
// in multiples of 16. A layer cuDNN has no engine for is named and skipped; most must run.
TEST(CudaInt8Conv, CudnnGraphLayersMatchTheExactReference) {
  REQUIRE_GPU();
  uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  int ran = 0, took = 0;
  for (const Case& c : cases()) {
    if (!conv_graph_quant_unsupported(int8_conv_shape(c.p), int8_graph_quant(c.p)).empty()) continue;
    ++took;
    try {
      run_case(c, Int8Tile::kCount, seed++, true);
      ++ran;
    } catch (const CudaError& e) {
      if (e.sticky()) throw;
      std::printf("[ info ] cuDNN graph: no INT8 engine for %s: %.200s\n", c.what, e.what());
    }
  }
  EXPECT_EQ(took, 10);  // the cases with channels in multiples of 16
  EXPECT_GE(ran, took / 2);
}

TEST(CudaInt8Conv, RefusesShapesItCannotTake) {
  Int8ConvParams p;
  p.n = 1, p.c = 24, p.h = 8, p.w = 8, p.k = 16, p.r = p.s = 3, p.pad_h = p.pad_w = 1;
  EXPECT_NE(conv_int8_unsupported(p).find("multiple of 16"), std::string::npos);
  p.c = 32, p.k = 12;
  EXPECT_NE(conv_int8_unsupported(p).find("multiple of 8"), std::string::npos);
  p.k = 16, p.y_scale = 0;
  EXPECT_NE(conv_int8_unsupported(p).find("scale"), std::string::npos);
  p.y_scale = 1, p.r = p.s = 11, p.pad_h = p.pad_w = 0;
  EXPECT_NE(conv_int8_unsupported(p).find("larger"), std::string::npos);
  EXPECT_THROW(conv_int8(p, Int8Tile::k64x64, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr), CudaError);
  Int8Tile t;
  EXPECT_TRUE(parse_int8_tile("128x64", &t));
  EXPECT_EQ(t, Int8Tile::k128x64);
  EXPECT_FALSE(parse_int8_tile("256x256", &t));
  // What one GEMM cannot take, with the reason (no GPU needed).
  Int8ConvParams g;
  g.n = 1, g.c = 32, g.h = 4, g.w = 4, g.k = 16, g.r = g.s = 1, g.y_scale = 1;
  EXPECT_EQ(conv_int8_gemm_unsupported(g), "");
  g.stride_h = 2;
  EXPECT_NE(conv_int8_gemm_unsupported(g).find("1x1"), std::string::npos);
  g.stride_h = 1, g.y_f16 = true;
  EXPECT_NE(conv_int8_gemm_unsupported(g).find("FP16"), std::string::npos);
  g.y_f16 = false, g.act = ConvAct::kClip;
  EXPECT_NE(conv_int8_gemm_unsupported(g).find("clip"), std::string::npos);
  g.act = ConvAct::kNone, g.residual = true, g.z_f16 = true;
  EXPECT_NE(conv_int8_gemm_unsupported(g).find("residual"), std::string::npos);
  EXPECT_THROW(Int8ConvGemm(g, 1u << 20, nullptr), CudaError);
  // What cuDNN's 8-bit graph cannot take (no GPU needed).
  Int8ConvParams q = g;
  q.residual = false, q.z_f16 = false, q.act = ConvAct::kRelu;
  EXPECT_EQ(conv_graph_quant_unsupported(int8_conv_shape(q), int8_graph_quant(q)), "");
  q.k = 24;
  EXPECT_NE(conv_graph_quant_unsupported(int8_conv_shape(q), int8_graph_quant(q)).find("multiples of 16"), std::string::npos);
  q.k = 16, q.act = ConvAct::kClip, q.clip_lo = -1;
  EXPECT_NE(conv_graph_quant_unsupported(int8_conv_shape(q), int8_graph_quant(q)).find("clips at 0"), std::string::npos);
  q.act = ConvAct::kRelu, q.y_scale = 0;
  EXPECT_NE(conv_graph_quant_unsupported(int8_conv_shape(q), int8_graph_quant(q)).find("output scale"), std::string::npos);
  EXPECT_THROW(CudnnGraphConv(int8_conv_shape(q), int8_graph_quant(q), 1u << 20, nullptr), CudaError);
}

}  // namespace
}  // namespace kiln::cuda
