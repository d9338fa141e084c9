// The CUDA backend's kernels against float64 references computed here on the host, on fresh random
// inputs every run, with per-dtype tolerances on ||out - ref|| / ||ref||; outputs are poisoned
// (NaN) before each run so an unwritten element fails. Skips with a message when there is no GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "backends/cuda/cuda_util.h"
#include "backends/cuda/kernels.h"
#include "backends/cuda/lt_matmul.h"
#include "backends/cuda/ops.h"
#include "cuda_test_support.h"

namespace kiln::cuda {
namespace {

class Cuda : public test::GpuTest {};

using namespace test;

double tolerance(DType t) { return t == DType::kF32 ? 1e-5 : t == DType::kF16 ? 2e-3 : 1e-2; }

const DType kTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

TEST_F(Cuda, DeviceQueryAndClearErrors) {
  DeviceInfo d = query_device(0);
  EXPECT_FALSE(d.name.empty());
  EXPECT_GE(d.sm_major, 8) << d.sm();
  EXPECT_GT(d.total_memory, size_t{1} << 30);
  EXPECT_GT(d.driver_version, 0);
  EXPECT_GT(d.cublaslt_version, 0u);
  require_compute_capability(d, 8, 0);  // what the backend needs: passes on Ampere and Hopper
  try {
    require_compute_capability(d, 99, 0);
    FAIL() << "an impossible SM requirement passed";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("Kiln's CUDA backend needs sm_990 or newer"), std::string::npos) << e.what();
  }
  const int n = device_count();
  try {
    query_device(n + 3);
    FAIL();
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("GPU " + std::to_string(n + 3) + " does not exist"), std::string::npos);
  }
  try {
    DeviceBuffer huge(size_t{1} << 50);
    FAIL() << "a 1 PiB allocation succeeded";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot allocate"), std::string::npos) << e.what();
    EXPECT_FALSE(e.sticky());
  }
  // A failed call leaves the context usable: the next kernel still runs correctly.
  EXPECT_THROW(KILN_CUDA_CHECK(cudaMemcpy(nullptr, reinterpret_cast<void*>(1), 16, cudaMemcpyDeviceToDevice)),
               CudaError);
  std::vector<float> a = {1, 2, 3}, b = {10, 20, 30};
  DeviceBuffer da = upload(DType::kF32, a), db = upload(DType::kF32, b), dy = poisoned(DType::kF32, 3);
  add(DType::kF32, da.get(), db.get(), dy.get(), 3, nullptr);
  EXPECT_EQ(download(DType::kF32, dy, 3), std::vector<float>({11, 22, 33}));
}

TEST_F(Cuda, LayerNormMatchesReference) {
  for (DType t : kTypes) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{3, 768}, {257, 1000}, {1, 4096}, {64, 33}}) {
      std::vector<float> x = random(static_cast<size_t>(rows * cols)), g = random(cols, 0.5f, 1.5f),
                         b = random(cols, -0.5f, 0.5f);
      DeviceBuffer dx = upload(t, x), dg = upload(t, g), db = upload(t, b), dy = poisoned(t, x.size());
      layer_norm(t, dx.get(), dg.get(), db.get(), dy.get(), rows, cols, 1e-5f, nullptr);
      std::vector<double> ref(x.size());
      for (int64_t r = 0; r < rows; ++r) {
        double mean = 0, var = 0;
        for (int64_t c = 0; c < cols; ++c) mean += x[r * cols + c];
        mean /= cols;
        for (int64_t c = 0; c < cols; ++c) var += (x[r * cols + c] - mean) * (x[r * cols + c] - mean);
        var /= cols;
        for (int64_t c = 0; c < cols; ++c)
          ref[r * cols + c] = (x[r * cols + c] - mean) / std::sqrt(var + 1e-5) * g[c] + b[c];
      }
      EXPECT_LT(rel_error(download(t, dy, x.size()), ref), tolerance(t))
          << dtype_name(t) << " " << rows << "x" << cols;
    }
  }
}

// The narrow copy a LayerNorm writes beside y for the GEMM that reads it: y (as stored) times the
// multiplier, in INT8 (half to even, saturated) or E4M3, on the warp path (768 columns) and the
// block path (1000, 33). Exact: the copy is a function of the stored y.
TEST_F(Cuda, LayerNormWritesInt8AndFp8CopiesOfItsOutput) {
  for (DType t : {DType::kF16, DType::kF32}) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{37, 768}, {5, 1000}, {9, 33}}) {
      std::vector<float> x = random(static_cast<size_t>(rows * cols), -3.f, 3.f), res = random(x.size()),
                         g = random(cols, 0.5f, 1.5f), b = random(cols, -0.5f, 0.5f);
      for (bool i8 : {true, false}) {
        DeviceBuffer dx = upload(t, x), dr = upload(t, res), dg = upload(t, g), db = upload(t, b), dy = poisoned(t, x.size());
        DeviceBuffer dq(x.size());
        const float mul = i8 ? 127.f / 2.5f : 448.f / 2.5f;  // some values saturate
        layer_norm(t, dx.get(), dr.get(), dg.get(), db.get(), dy.get(), rows, cols, 1e-5f, nullptr, nullptr, dq.get(), mul, i8);
        KILN_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<float> y = download(t, dy, x.size());
        std::vector<uint8_t> q(x.size());
        KILN_CUDA_CHECK(cudaMemcpy(q.data(), dq.get(), q.size(), cudaMemcpyDeviceToHost));
        int64_t bad = 0, saturated = 0;
        for (size_t i = 0; i < y.size(); ++i) {
          const float v = y[i] * mul;
          uint8_t want;
          if (i8) {
            want = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(std::nearbyint(v), -128.f, 127.f)));
            saturated += std::fabs(v) > 127.5f;
          } else {
            want = __nv_fp8_e4m3(v).__x;
            saturated += std::fabs(v) > 448.f;
          }
          bad += q[i] != want;
        }
        EXPECT_EQ(bad, 0) << dtype_name(t) << " " << rows << "x" << cols << (i8 ? " int8" : " fp8");
        EXPECT_GT(saturated, 0) << "the test's multiplier should saturate some values";
      }
    }
  }
}

TEST_F(Cuda, SoftmaxMatchesReference) {
  for (DType t : kTypes) {
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{12 * 128, 128}, {5, 1000}, {2, 30001}}) {
      std::vector<float> x = random(static_cast<size_t>(rows * cols), -8.f, 8.f);
      DeviceBuffer dx = upload(t, x), dy = poisoned(t, x.size());
      softmax_rows(t, dx.get(), dy.get(), rows, cols, nullptr);
      std::vector<double> ref(x.size());
      for (int64_t r = 0; r < rows; ++r) {
        double m = -INFINITY, s = 0;
        for (int64_t c = 0; c < cols; ++c) m = std::max(m, double(x[r * cols + c]));
        for (int64_t c = 0; c < cols; ++c) s += std::exp(x[r * cols + c] - m);
        for (int64_t c = 0; c < cols; ++c) ref[r * cols + c] = std::exp(x[r * cols + c] - m) / s;
      }
      // __expf is a fast approximation: a looser FP32 bound.
      EXPECT_LT(rel_error(download(t, dy, x.size()), ref), std::max(tolerance(t), 1e-5 * 20))
          << dtype_name(t) << " " << rows << "x" << cols;
    }
  }
}

TEST_F(Cuda, BiasGeluAndAddMatchReference) {
  for (DType t : kTypes) {
    const int64_t rows = 77, cols = 3072;
    std::vector<float> x = random(static_cast<size_t>(rows * cols), -4.f, 4.f), bias = random(cols);
    std::vector<float> other = random(x.size());
    DeviceBuffer dx = upload(t, x), db = upload(t, bias), dy = poisoned(t, x.size());
    bias_gelu(t, dx.get(), db.get(), dy.get(), rows, cols, nullptr);
    std::vector<double> ref(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const double v = double(x[i]) + bias[i % cols];
      ref[i] = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
    }
    EXPECT_LT(rel_error(download(t, dy, x.size()), ref), tolerance(t)) << dtype_name(t);
    DeviceBuffer dother = upload(t, other), dsum = poisoned(t, x.size());
    add(t, dx.get(), dother.get(), dsum.get(), static_cast<int64_t>(x.size()), nullptr);
    for (size_t i = 0; i < x.size(); ++i) ref[i] = double(x[i]) + other[i];
    EXPECT_LT(rel_error(download(t, dsum, x.size()), ref), tolerance(t)) << dtype_name(t);
  }
}

TEST_F(Cuda, AttentionMatchesReference) {
  struct Case {
    int64_t b, h, sq, sk, d;
    bool mask, causal;
  };
  const Case cases[] = {{2, 3, 128, 128, 64, true, false}, {1, 12, 77, 77, 64, false, true},
                        {2, 2, 5, 200, 32, true, false},   {1, 2, 65, 65, 128, false, false},
                        {1, 1, 33, 33, 16, true, true},     {1, 2, 10, 4, 32, false, true},
                        // Enough query rows (b*h*sq >= 128 per SM) for the thread-per-query tactic:
                        {8, 12, 200, 200, 64, true, false}, {4, 16, 300, 300, 32, false, true},
                        {6, 16, 130, 130, 128, true, false}, {3, 12, 513, 257, 64, false, true},
                        // The mma.sync kernel's fast paths: BERT b32 (full key tiles, key-padding
                        // mask staged with K) and ViT-B/16 b64 (no mask, a partial last key tile).
                        {32, 12, 128, 128, 64, true, false}, {64, 12, 197, 197, 64, false, false}};
  for (DType t : kTypes) {
    for (const Case& c : cases) {
      std::vector<float> q = random(static_cast<size_t>(c.b * c.h * c.sq * c.d), -1.f, 1.f),
                         k = random(static_cast<size_t>(c.b * c.h * c.sk * c.d), -1.f, 1.f),
                         v = random(static_cast<size_t>(c.b * c.h * c.sk * c.d), -1.f, 1.f);
      // BERT's padding mask: each batch row keeps a random number of keys (at least one).
      std::vector<float> mask(static_cast<size_t>(c.b * c.sk), 0.f);
      if (c.mask)
        for (int64_t b = 0; b < c.b; ++b) {
          const int64_t keep = 1 + static_cast<int64_t>(rng_() % static_cast<unsigned>(c.sk));
          for (int64_t j = keep; j < c.sk; ++j) mask[b * c.sk + j] = -10000.f;
        }
      DeviceBuffer dq = upload(t, q), dk = upload(t, k), dv = upload(t, v), dout = poisoned(t, q.size());
      DeviceBuffer dmask(mask.size() * 4);
      KILN_CUDA_CHECK(cudaMemcpy(dmask.get(), mask.data(), mask.size() * 4, cudaMemcpyHostToDevice));
      const float scale = 1.f / std::sqrt(static_cast<float>(c.d));
      attention(t, dq.get(), dk.get(), dv.get(), dout.get(), c.b, c.h, c.sq, c.sk, c.d, scale,
                c.mask ? dmask.as<float>() : nullptr, c.causal, nullptr);
      std::vector<double> ref(q.size(), 0.0);
      for (int64_t b = 0; b < c.b; ++b)
        for (int64_t h = 0; h < c.h; ++h)
          for (int64_t i = 0; i < c.sq; ++i) {
            const int64_t bh = b * c.h + h;
            std::vector<double> s(static_cast<size_t>(c.sk), -INFINITY);
            double mx = -INFINITY;
            for (int64_t j = 0; j < c.sk; ++j) {
              if (c.causal && j > i + (c.sk - c.sq)) continue;
              double dot = 0;
              for (int64_t d = 0; d < c.d; ++d) dot += double(q[(bh * c.sq + i) * c.d + d]) * k[(bh * c.sk + j) * c.d + d];
              s[j] = dot * scale + (c.mask ? mask[b * c.sk + j] : 0.f);
              mx = std::max(mx, s[j]);
            }
            if (mx == -INFINITY) continue;  // sees no key: zeros
            double sum = 0;
            for (int64_t j = 0; j < c.sk; ++j) sum += s[j] == -INFINITY ? 0 : std::exp(s[j] - mx);
            for (int64_t j = 0; j < c.sk; ++j) {
              if (s[j] == -INFINITY) continue;
              const double p = std::exp(s[j] - mx) / sum;
              for (int64_t d = 0; d < c.d; ++d) ref[(bh * c.sq + i) * c.d + d] += p * v[(bh * c.sk + j) * c.d + d];
            }
          }
      const double tol = t == DType::kF32 ? 1e-4 : tolerance(t);  // __expf: a looser FP32 bound
      EXPECT_LT(rel_error(download(t, dout, q.size()), ref), tol)
          << dtype_name(t) << " b=" << c.b << " h=" << c.h << " sq=" << c.sq << " sk=" << c.sk << " d=" << c.d
          << (c.mask ? " mask" : "") << (c.causal ? " causal" : "");
      // The tensor-core kernels on the same problem, through explicit strides: mma.sync with 4
      // warps of 16 queries each (dispatched for large grids, the last six cases), 4 warps
      // splitting the keys of 16 queries (small grids, sk >= 64), one warp of 16 queries.
      AttnLayout L{};
      for (auto* x : {L.q, L.o}) x[0] = c.h * c.sq * c.d, x[1] = c.sq * c.d, x[2] = c.d;
      for (auto* x : {L.k, L.v}) x[0] = c.h * c.sk * c.d, x[1] = c.sk * c.d, x[2] = c.d;
      L.mask[0] = c.sk, L.mask[1] = 0, L.mask[2] = 0;
      if (!attention_tc_supported(t, c.d, L)) continue;
      // Each kernel as dispatched (kAuto), then each forced on every case it takes.
      for (AttnKernel which : {AttnKernel::kAuto, AttnKernel::kMma, AttnKernel::kSplit, AttnKernel::kWarp}) {
        if (which == AttnKernel::kSplit && c.sk < 64) continue;
        DeviceBuffer dtc = poisoned(t, q.size());
        attention_tc(t, dq.get(), dk.get(), dv.get(), dtc.get(), c.b, c.h, c.sq, c.sk, c.d, scale, L,
                     c.mask ? dmask.as<float>() : nullptr, c.causal, nullptr, which);
        EXPECT_LT(rel_error(download(t, dtc, q.size()), ref), tolerance(t))
            << "tensor cores (kernel " << static_cast<int>(which) << ") " << dtype_name(t) << " b=" << c.b
            << " h=" << c.h << " sq=" << c.sq << " sk=" << c.sk
            << " d=" << c.d << (c.mask ? " mask" : "") << (c.causal ? " causal" : "");
      }
    }
  }
  DeviceBuffer x(64);
  try {
    attention(DType::kF16, x.get(), x.get(), x.get(), x.get(), 1, 1, 1, 1, 48, 1.f, nullptr, false, nullptr);
    FAIL() << "head_dim 48 was accepted";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim 48 is not supported"), std::string::npos) << e.what();
  }
}

// A mask with one row per query ([B, Sq, Sk], shared by the heads: strides {Sq*Sk, 0, Sk}), as
// a decoder's padding-plus-causal mask arrives: every tensor-core kernel, forced.
TEST_F(Cuda, AttentionPerQueryMaskMatchesReference) {
  struct Case {
    int64_t b, h, sq, sk, d;
  };
  const Case cases[] = {{3, 4, 150, 150, 64}, {2, 2, 70, 90, 32}, {1, 2, 33, 200, 128}};
  for (DType t : {DType::kF16, DType::kBF16}) {
    for (const Case& c : cases) {
      std::vector<float> q = random(static_cast<size_t>(c.b * c.h * c.sq * c.d), -1.f, 1.f),
                         k = random(static_cast<size_t>(c.b * c.h * c.sk * c.d), -1.f, 1.f),
                         v = random(static_cast<size_t>(c.b * c.h * c.sk * c.d), -1.f, 1.f);
      std::vector<float> mask(static_cast<size_t>(c.b * c.sq * c.sk), 0.f);
      for (size_t i = 0; i < mask.size(); ++i)
        if (i % static_cast<size_t>(c.sk) != 0 && rng_() % 3 == 0) mask[i] = -10000.f;  // key 0 always seen
      const float scale = 1.f / std::sqrt(static_cast<float>(c.d));
      std::vector<double> ref(q.size(), 0.0);
      for (int64_t b = 0; b < c.b; ++b)
        for (int64_t h = 0; h < c.h; ++h)
          for (int64_t i = 0; i < c.sq; ++i) {
            const int64_t bh = b * c.h + h;
            std::vector<double> s(static_cast<size_t>(c.sk));
            double mx = -INFINITY;
            for (int64_t j = 0; j < c.sk; ++j) {
              double dot = 0;
              for (int64_t d = 0; d < c.d; ++d) dot += double(q[(bh * c.sq + i) * c.d + d]) * k[(bh * c.sk + j) * c.d + d];
              s[j] = dot * scale + mask[(b * c.sq + i) * c.sk + j];
              mx = std::max(mx, s[j]);
            }
            double sum = 0;
            for (int64_t j = 0; j < c.sk; ++j) sum += std::exp(s[j] - mx);
            for (int64_t j = 0; j < c.sk; ++j)
              for (int64_t d = 0; d < c.d; ++d)
                ref[(bh * c.sq + i) * c.d + d] += std::exp(s[j] - mx) / sum * v[(bh * c.sk + j) * c.d + d];
          }
      DeviceBuffer dq = upload(t, q), dk = upload(t, k), dv = upload(t, v);
      DeviceBuffer dmask(mask.size() * 4);
      KILN_CUDA_CHECK(cudaMemcpy(dmask.get(), mask.data(), mask.size() * 4, cudaMemcpyHostToDevice));
      AttnLayout L{};
      for (auto* x : {L.q, L.o}) x[0] = c.h * c.sq * c.d, x[1] = c.sq * c.d, x[2] = c.d;
      for (auto* x : {L.k, L.v}) x[0] = c.h * c.sk * c.d, x[1] = c.sk * c.d, x[2] = c.d;
      L.mask[0] = c.sq * c.sk, L.mask[1] = 0, L.mask[2] = c.sk;
      for (AttnKernel which : {AttnKernel::kMma, AttnKernel::kSplit, AttnKernel::kWarp}) {
        DeviceBuffer dtc = poisoned(t, q.size());
        attention_tc(t, dq.get(), dk.get(), dv.get(), dtc.get(), c.b, c.h, c.sq, c.sk, c.d, scale, L, dmask.as<float>(),
                     false, nullptr, which);
        EXPECT_LT(rel_error(download(t, dtc, q.size()), ref), tolerance(t))
            << "kernel " << static_cast<int>(which) << " " << dtype_name(t) << " b=" << c.b << " sq=" << c.sq
            << " sk=" << c.sk << " d=" << c.d;
      }
    }
  }
}

TEST_F(Cuda, MatmulEpiloguesMatchReference) {
  const std::pair<GemmType, DType> types[] = {
      {GemmType::kF32, DType::kF32}, {GemmType::kF16, DType::kF16}, {GemmType::kBF16, DType::kBF16}};
  for (auto [gt, dt] : types) {
    for (GemmShape s : {GemmShape{128, 768, 768}, GemmShape{1, 3072, 768}, GemmShape{257, 1000, 512}}) {
      for (Epilogue e : {Epilogue::kNone, Epilogue::kRelu, Epilogue::kGelu, Epilogue::kBias, Epilogue::kBiasRelu,
                         Epilogue::kBiasGelu}) {
        std::vector<float> x = random(static_cast<size_t>(s.m * s.k), -1.f, 1.f),
                           w = random(static_cast<size_t>(s.k * s.n), -1.f, 1.f), b = random(s.n);
        DeviceBuffer dx = upload(dt, x), dw = upload(dt, w), db = upload(dt, b), dy = poisoned(dt, s.m * s.n);
        LtMatmul mm(s, gt, e);
        ASSERT_GE(mm.chosen(), 0);
        ASSERT_FALSE(mm.timings().empty());
        mm.run(dx.get(), dw.get(), db.get(), dy.get(), nullptr);
        std::vector<double> ref(static_cast<size_t>(s.m * s.n));
        const bool bias = e == Epilogue::kBias || e == Epilogue::kBiasRelu || e == Epilogue::kBiasGelu;
        for (int64_t i = 0; i < s.m; ++i)
          for (int64_t j = 0; j < s.n; ++j) {
            double acc = bias ? b[j] : 0;
            for (int64_t k = 0; k < s.k; ++k) acc += double(x[i * s.k + k]) * w[k * s.n + j];
            if (e == Epilogue::kRelu || e == Epilogue::kBiasRelu) acc = std::max(acc, 0.0);
            if (e == Epilogue::kGelu || e == Epilogue::kBiasGelu)  // cuBLASLt's tanh form
              acc = 0.5 * acc * (1 + std::tanh(0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)));
            ref[i * s.n + j] = acc;
          }
        // TF32 rounds operands to 10 mantissa bits: FP16-like accuracy.
        const double tol = gt == GemmType::kF32 ? 2e-3 : tolerance(dt);
        EXPECT_LT(rel_error(download(dt, dy, ref.size()), ref), tol)
            << dtype_name(dt) << " M=" << s.m << " N=" << s.n << " K=" << s.k << " " << epilogue_name(e) << " "
            << mm.describe();
      }
    }
  }
}

// FP8 E4M3 GEMMs (SM 8.9+): operands quantized here with CUDA's own host conversion, the reference
// computed in float64 from the same quantized values and scales, so only accumulation order and the
// output's rounding differ.
TEST_F(Cuda, Fp8MatmulMatchesReference) {
  int dev = 0, major = 0, minor = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
  if (major * 10 + minor < 89) GTEST_SKIP() << "FP8 GEMMs need SM 8.9 or newer";
  for (auto [gt, dt] : {std::pair{GemmType::kF16, DType::kF16}, std::pair{GemmType::kBF16, DType::kBF16}}) {
    for (GemmShape s : {GemmShape{128, 768, 768}, GemmShape{1, 3072, 768}, GemmShape{300, 512, 256, 1, 0, true}}) {
      for (Epilogue e : {Epilogue::kNone, Epilogue::kBias, Epilogue::kBiasRelu, Epilogue::kBiasGelu}) {
        std::vector<float> x = random(static_cast<size_t>(s.m * s.k), -3.f, 3.f),
                           w = random(static_cast<size_t>(s.k * s.n), -0.2f, 0.2f), b = random(s.n), c = random(s.m * s.n);
        float xa = 0, wa = 0;
        for (float v : x) xa = std::max(xa, std::fabs(v));
        for (float v : w) wa = std::max(wa, std::fabs(v));
        const float sx = xa / 448.f, sw = wa / 448.f;
        // X [M,K] and W stored [N,K], as E4M3 codes; the values they stand for.
        std::vector<__nv_fp8_e4m3> xq(x.size()), wq(w.size());
        std::vector<double> xv(x.size()), wv(w.size());
        for (size_t i = 0; i < x.size(); ++i) xq[i] = __nv_fp8_e4m3(x[i] / sx), xv[i] = float(xq[i]);
        for (int64_t k = 0; k < s.k; ++k)
          for (int64_t j = 0; j < s.n; ++j) {
            const size_t at = static_cast<size_t>(j * s.k + k);
            wq[at] = __nv_fp8_e4m3(w[k * s.n + j] / sw), wv[at] = float(wq[at]);
          }
        DeviceBuffer dx(xq.size()), dw(wq.size());
        KILN_CUDA_CHECK(cudaMemcpy(dx.get(), xq.data(), xq.size(), cudaMemcpyHostToDevice));
        KILN_CUDA_CHECK(cudaMemcpy(dw.get(), wq.data(), wq.size(), cudaMemcpyHostToDevice));
        DeviceBuffer db = upload(dt, b), dc = upload(dt, c), dy = poisoned(dt, s.m * s.n);
        LtMatmul mm(s, gt, e, 32u << 20, 8, nullptr, {}, Fp8Inputs{true, sx, sw});
        ASSERT_GE(mm.chosen(), 0) << mm.describe();
        mm.run(dx.get(), dw.get(), db.get(), dy.get(), nullptr, nullptr, 0, s.accumulate ? dc.get() : nullptr);
        std::vector<double> ref(static_cast<size_t>(s.m * s.n));
        const bool bias = e != Epilogue::kNone;
        for (int64_t i = 0; i < s.m; ++i)
          for (int64_t j = 0; j < s.n; ++j) {
            double acc = 0;
            for (int64_t k = 0; k < s.k; ++k) acc += xv[i * s.k + k] * wv[j * s.k + k];
            acc = acc * sx * sw + (bias ? b[j] : 0) + (s.accumulate ? c[i * s.n + j] : 0);
            if (e == Epilogue::kBiasRelu) acc = std::max(acc, 0.0);
            if (e == Epilogue::kBiasGelu) acc = 0.5 * acc * (1 + std::tanh(0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)));
            ref[i * s.n + j] = acc;
          }
        EXPECT_LT(rel_error(download(dt, dy, ref.size()), ref), tolerance(dt))
            << dtype_name(dt) << " M=" << s.m << " N=" << s.n << " K=" << s.k << " " << epilogue_name(e) << " "
            << mm.describe();
      }
    }
  }
  EXPECT_THROW(LtMatmul(GemmShape{4, 8, 8}, GemmType::kF32, Epilogue::kNone, 32u << 20, 8, nullptr, {}, Fp8Inputs{true, 1, 1}),
               CudaError);
  EXPECT_THROW(LtMatmul(GemmShape{4, 8, 8}, GemmType::kF16, Epilogue::kNone, 32u << 20, 8, nullptr, {}, Fp8Inputs{true, 0, 1}),
               CudaError);
}

// The quantizing elementwise kernels (plain, and through GELU) write exactly the codes of CUDA's
// host conversion of op(x) * scale: round to nearest even, saturating at +-448. Sizes that are and
// are not multiples of 8 take the vectorized and the generic kernel.
TEST_F(Cuda, Fp8QuantizeIsExact) {
  for (int64_t n : {4096, 1000, 8 * 1000 + 3}) {
    for (EwOp op : {EwOp::kLoad, EwOp::kGelu, EwOp::kRelu}) {
      std::vector<float> x = random(static_cast<size_t>(n), -8.f, 8.f);
      DeviceBuffer dx = upload(DType::kF16, x);  // x now holds the FP16 values
      DeviceBuffer dy(static_cast<size_t>(n));
      KILN_CUDA_CHECK(cudaMemset(dy.get(), 0x7f, dy.bytes()));
      const float scale = 60.f;  // pushes values past 448: saturation is exercised
      EwProgram p;
      p.rank = 1, p.dims[0] = n, p.num_inputs = 1, p.in_types[0] = ElemType::kF16, p.in_strides[0][0] = 1;
      p.steps[0] = EwStep{};
      int s = 1;
      if (op != EwOp::kLoad) p.steps[s++] = EwStep{op};
      p.steps[s++] = EwStep{EwOp::kAffine, 0, 0, false, scale, 0.f};
      p.num_steps = s;
      p.out_type = ElemType::kF8E4M3;
      const void* ins[1] = {dx.get()};
      elementwise(p, ins, dy.get(), nullptr);
      std::vector<uint8_t> got(static_cast<size_t>(n));
      KILN_CUDA_CHECK(cudaDeviceSynchronize());
      KILN_CUDA_CHECK(cudaMemcpy(got.data(), dy.get(), got.size(), cudaMemcpyDeviceToHost));
      int bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        float v = x[i];
        if (op == EwOp::kRelu) v = std::max(v, 0.f);
        if (op == EwOp::kGelu) v = 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
        const __nv_fp8_e4m3 want(v * scale);
        // GELU runs with a fast erf (1.5e-7 absolute): a value within that of a rounding midpoint
        // may land on the neighbouring code.
        const int diff = std::abs(int(got[i] & 0x7f) - int(want.__x & 0x7f));
        // Zero's sign may differ (the interpreter's affine step adds +0: -0 * s + 0 is +0).
        const bool zeros = (got[i] & 0x7f) == 0 && (want.__x & 0x7f) == 0;
        if (got[i] != want.__x && !zeros && !(op == EwOp::kGelu && diff == 1 && (got[i] & 0x80) == (want.__x & 0x80))) ++bad;
      }
      EXPECT_EQ(bad, 0) << "n=" << n << " op " << static_cast<int>(op);
    }
  }
}

// The INT8 quantizing elementwise program [Load, (GELU or ReLU), Affine(scale), Round, Clip(-128,
// 127)] writes exactly round_half_even(op(x) * scale) saturated, from FP16, BF16 and FP32; sizes
// that are and are not multiples of 8 take the vectorized and the generic kernel.
TEST_F(Cuda, Int8QuantizeIsExact) {
  for (DType t : {DType::kF16, DType::kBF16, DType::kF32})
    for (int64_t n : {4096, 1000, 8 * 1000 + 3})
      for (EwOp op : {EwOp::kLoad, EwOp::kGelu, EwOp::kRelu}) {
        std::vector<float> x = random(static_cast<size_t>(n), -8.f, 8.f);
        x[0] = 0.125f, x[1] = -0.125f, x[2] = 0.375f;  // exact midpoints times 20: 2.5, -2.5, 7.5 (half to even)
        DeviceBuffer dx = upload(t, x);  // x now holds the values in t
        DeviceBuffer dy(static_cast<size_t>(n));
        KILN_CUDA_CHECK(cudaMemset(dy.get(), 0x55, dy.bytes()));
        const float scale = 20.f;  // pushes values past 127: saturation is exercised
        EwProgram p;
        p.rank = 1, p.dims[0] = n, p.num_inputs = 1;
        p.in_types[0] = t == DType::kF16 ? ElemType::kF16 : t == DType::kBF16 ? ElemType::kBF16 : ElemType::kF32;
        p.in_strides[0][0] = 1;
        int s = 0;
        p.steps[s++] = EwStep{};
        if (op != EwOp::kLoad) p.steps[s++] = EwStep{op};
        p.steps[s++] = EwStep{EwOp::kAffine, 0, 0, false, scale, 0.f};
        p.steps[s++] = EwStep{EwOp::kRound};
        p.steps[s++] = EwStep{EwOp::kClip, 0, 0, false, -128.f, 127.f};
        p.num_steps = s;
        p.out_type = ElemType::kI8;
        const void* ins[1] = {dx.get()};
        elementwise(p, ins, dy.get(), nullptr);
        std::vector<int8_t> got(static_cast<size_t>(n));
        KILN_CUDA_CHECK(cudaDeviceSynchronize());
        KILN_CUDA_CHECK(cudaMemcpy(got.data(), dy.get(), got.size(), cudaMemcpyDeviceToHost));
        int bad = 0;
        for (int64_t i = 0; i < n; ++i) {
          float v = x[static_cast<size_t>(i)];
          if (op == EwOp::kRelu) v = std::max(v, 0.f);
          if (op == EwOp::kGelu) v = 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
          const int want = static_cast<int>(std::min(127.f, std::max(-128.f, std::nearbyint(v * scale))));
          // GELU runs with a fast erf (1.5e-7 absolute): a value within that of a rounding
          // midpoint may land on the neighbouring code.
          const int diff = std::abs(got[static_cast<size_t>(i)] - want);
          bad += diff > (op == EwOp::kGelu ? 1 : 0);
        }
        EXPECT_EQ(bad, 0) << "n=" << n << " dtype " << dtype_name(t) << " op " << static_cast<int>(op);
      }
}

// A few-channel image to NHWC with zero channels appended (the padded input of a first
// convolution): NCHW FP32 in, FP16 out, from poisoned (NaN) memory, so every padding channel must
// be written; and from an NHWC input. 8x6 images take the four-pixels-per-thread path, 7x5 ones
// the general one; plain few-channel copies use the same kernel. A malformed request is refused.
TEST_F(Cuda, PaddedNhwcCopyWritesZeroChannels) {
  const int64_t N = 3, C = 3;
  for (auto [H, W] : {std::pair<int64_t, int64_t>{7, 5}, {8, 6}})
  for (int64_t P : {4, 8})
    for (bool from_nhwc : {false, true}) {
      std::vector<float> x = random(static_cast<size_t>(N * C * H * W));
      DeviceBuffer dx = upload(DType::kF32, x);
      DeviceBuffer dy = poisoned(DType::kF16, static_cast<size_t>(N * H * W * P));
      StridedCopy c;
      c.rank = 4;
      const int64_t dims[4] = {N, C, H, W};
      const int64_t nchw[4] = {C * H * W, H * W, W, 1}, nhwc[4] = {H * W * C, 1, W * C, C};
      const int64_t ys[4] = {H * W * P, 1, W * P, P};
      for (int d = 0; d < 4; ++d)
        c.dims[d] = dims[d], c.x_strides[d] = from_nhwc ? nhwc[d] : nchw[d], c.y_strides[d] = ys[d];
      c.pad_channels = P;
      copy_strided(ElemType::kF32, dx.get(), ElemType::kF16, dy.get(), c, nullptr);
      const auto y = download(DType::kF16, dy, static_cast<size_t>(N * H * W * P));
      int bad = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w)
            for (int64_t ch = 0; ch < P; ++ch) {
              const float got = y[static_cast<size_t>(((n * H + h) * W + w) * P + ch)];
              const int64_t xi = n * c.x_strides[0] + ch * c.x_strides[1] + h * c.x_strides[2] + w * c.x_strides[3];
              const float want = ch < C ? __half2float(__float2half_rn(x[static_cast<size_t>(xi)])) : 0.f;
              bad += !(got == want);
            }
      EXPECT_EQ(bad, 0) << H << "x" << W << " P=" << P << (from_nhwc ? " from NHWC" : " from NCHW");
    }
  // The same kernel serves plain few-channel NCHW -> NHWC copies (no padding): 4 channels to FP16
  // (one 8-byte store per pixel) and 3 to FP32.
  for (auto [C2, yt] : {std::pair<int64_t, DType>{4, DType::kF16}, {3, DType::kF32}}) {
    const int64_t H = 5, W = 7;
    std::vector<float> x = random(static_cast<size_t>(N * C2 * H * W));
    DeviceBuffer dx = upload(DType::kF32, x);
    DeviceBuffer dy = poisoned(yt, static_cast<size_t>(N * H * W * C2));
    StridedCopy c;
    c.rank = 4;
    const int64_t dims[4] = {N, C2, H, W}, nchw[4] = {C2 * H * W, H * W, W, 1}, nhwc[4] = {H * W * C2, 1, W * C2, C2};
    for (int d = 0; d < 4; ++d) c.dims[d] = dims[d], c.x_strides[d] = nchw[d], c.y_strides[d] = nhwc[d];
    copy_strided(ElemType::kF32, dx.get(), yt == DType::kF16 ? ElemType::kF16 : ElemType::kF32, dy.get(), c, nullptr);
    const auto y = download(yt, dy, static_cast<size_t>(N * H * W * C2));
    int bad = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < H * W; ++i)
        for (int64_t ch = 0; ch < C2; ++ch) {
          const float v = x[static_cast<size_t>((n * C2 + ch) * H * W + i)];
          const float want = yt == DType::kF16 ? __half2float(__float2half_rn(v)) : v;
          bad += !(y[static_cast<size_t>((n * H * W + i) * C2 + ch)] == want);
        }
    EXPECT_EQ(bad, 0) << C2 << " channels, no padding";
  }
  StridedCopy bad;
  bad.rank = 4, bad.dims[0] = 1, bad.dims[1] = 5, bad.dims[2] = 2, bad.dims[3] = 2, bad.pad_channels = 4;  // P < C
  EXPECT_FALSE(gpu::channel_pad_ok(bad));
  DeviceBuffer b1(64), b2(64);
  EXPECT_THROW(copy_strided(ElemType::kF32, b1.get(), ElemType::kF16, b2.get(), bad, nullptr), std::runtime_error);
}

TEST_F(Cuda, MatmulBadInputIsAClearError) {
  EXPECT_THROW(LtMatmul(GemmShape{0, 8, 8}, GemmType::kF16, Epilogue::kNone), CudaError);
  LtMatmul mm(GemmShape{4, 8, 8}, GemmType::kF16, Epilogue::kBias);
  DeviceBuffer x(64), w(128), y(64);
  try {
    mm.run(x.get(), w.get(), nullptr, y.get(), nullptr);
    FAIL() << "a bias epilogue ran without a bias";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("needs a bias"), std::string::npos);
  }
  // INT8: unbatched, no GELU, and run() needs the per-column scales.
  GemmShape batched{4, 8, 16};
  batched.batch = 2;
  EXPECT_THROW(LtMatmul(batched, GemmType::kI8, Epilogue::kNone), CudaError);
  EXPECT_THROW(LtMatmul(GemmShape{4, 8, 16}, GemmType::kI8, Epilogue::kBiasGelu), CudaError);
  LtMatmul i8(GemmShape{4, 8, 16}, GemmType::kI8, Epilogue::kNone);
  try {
    i8.run(x.get(), w.get(), nullptr, y.get(), nullptr, nullptr, 0);
    FAIL() << "an INT8 product ran without its scales";
  } catch (const CudaError& e) {
    EXPECT_NE(std::string(e.what()).find("per-column scales"), std::string::npos) << e.what();
  }
}

// time_tactic() captures the runs into a CUDA graph: the work is really done (the output is right),
// the time is positive, and a run that throws while being captured ends the capture, propagates,
// and leaves the stream and the device usable.
TEST_F(Cuda, TacticTimingRunsInAGraphAndPropagatesFailures) {
  const size_t n = 1 << 20;
  std::vector<float> a = random(n), b = random(n);
  DeviceBuffer da = upload(DType::kF32, a), db = upload(DType::kF32, b), dy = poisoned(DType::kF32, n);
  Stream stream;
  int calls = 0;
  const float ms = time_tactic(
      [&](cudaStream_t s) {
        ++calls;
        add(DType::kF32, da.get(), db.get(), dy.get(), static_cast<int64_t>(n), s);
      },
      stream.get());
  EXPECT_GT(ms, 0.f);
  EXPECT_LT(ms, 100.f);
  EXPECT_GE(calls, 2);  // the warm-up, then at least one captured run
  const std::vector<float> y = download(DType::kF32, dy, n);
  for (size_t i = 0; i < n; i += 4099) EXPECT_FLOAT_EQ(y[i], a[i] + b[i]);

  int tries = 0;
  EXPECT_THROW(time_tactic(
                   [&](cudaStream_t s) {
                     if (++tries == 2) throw CudaError("this candidate does not run here");
                     add(DType::kF32, da.get(), db.get(), dy.get(), static_cast<int64_t>(n), s);
                   },
                   stream.get()),
               CudaError);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusActive;
  ASSERT_EQ(cudaStreamIsCapturing(stream.get(), &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusNone);
  DeviceBuffer dz = poisoned(DType::kF32, n);
  add(DType::kF32, da.get(), da.get(), dz.get(), static_cast<int64_t>(n), stream.get());
  stream.synchronize();
  EXPECT_FLOAT_EQ(download(DType::kF32, dz, n)[7], 2 * a[7]);
}

}  // namespace
}  // namespace kiln::cuda
