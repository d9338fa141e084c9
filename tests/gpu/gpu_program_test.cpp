// GPU programs (src/backends/gpu) against Kiln's reference executor: small graphs covering every op
// the GPU backend lowers, on fresh random inputs, in FP32 (TF32 matmuls and convolutions) and FP16,
// with tolerances on ||gpu - ref|| / ||ref||; the exported real models ($KILN_MODEL_DIR) against
// PyTorch's outputs; and the bad-input cases (no GPU or module, bad --device, unsupported nodes,
// wrong input shapes and dtypes). Everything that needs a GPU skips with a message without one.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <random>
#include <set>

#include "backends/gpu/gpu_build.h"
#include "backends/gpu/loader.h"
#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "util/npy.h"

using namespace kiln;
namespace fs = std::filesystem;

#include "gpu_engine_cases.h"
#include "gpu_program_cases.h"

namespace {

using namespace kiln::gpu_cases;

INSTANTIATE_TEST_SUITE_P(Cuda, GpuProgram, ::testing::Values(std::string("cuda")));
INSTANTIATE_TEST_SUITE_P(Cuda, GpuEngine, ::testing::Values(std::string("cuda")));

class Gpu : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (gpu::device_count(&why) == 0) GTEST_SKIP() << "no usable GPU (" << why << "): the GPU model tests are skipped";
  }
};

TEST(GpuDevice, ParsesDeviceStrings) {
  EXPECT_EQ(gpu::parse_device("cpu"), -1);
  EXPECT_EQ(gpu::parse_device("cuda"), 0);
  EXPECT_EQ(gpu::parse_device("cuda:3"), 3);
  for (const char* bad : {"cuda:", "cuda:-1", "cuda:x", "gpu0", "cuda:123456789", "tpu"}) {
    try {
      gpu::parse_device(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("cuda:N"), std::string::npos) << e.what();
    }
  }
}

// Without a GPU (or the module) opening a device is a clear kUnsupported error; with one, an index
// past the last GPU names how many there are.
TEST(GpuDevice, MissingGpuOrIndexIsAClearError) {
  std::string why;
  const int n = gpu::device_count(&why);
  try {
    gpu::open_device(n == 0 ? 0 : n);
    ADD_FAILURE() << "opened a device that does not exist";
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (n == 0) {
      EXPECT_EQ(e.code(), ErrorCode::kUnsupported);
      EXPECT_TRUE(msg.find("no CUDA GPU") != std::string::npos || msg.find("libkiln_cuda.so") != std::string::npos)
          << msg;
    } else {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(msg.find("this machine has " + std::to_string(n)), std::string::npos) << msg;
    }
  }
}

// The exported models (models/export.py) against PyTorch's FP32 outputs for their fixed inputs, in
// FP32 (TF32 tensor cores) and FP16. Transformers: relative L2 error under 1e-2. The CNNs have
// random weights with calibrated BatchNorm, which makes their logits far more sensitive to rounding
// than trained networks': PyTorch's own FP16 misses 1e-2 on them (ResNet-50 3.1%, MobileNetV2 1.8%
// on an H100, bench/gpu/torch_accuracy.py, bench/results/2026-11-26-gpu-models.md), and so does
// TF32. Their check is what a classifier's user needs: under 5e-2 relative error, cosine above
// 0.999 and the same top-1 class for every sample.
std::string int8_conv_summary_of(const gpu::GpuProgram& p) {
  int convs = 0, int8 = 0, gemms = 0, gemms8 = 0;
  for (const auto& st : p.steps()) {
    const bool i8 = st.kernel.find("int8") != std::string::npos;
    if (st.op == "FusedConv" || st.op == "Conv") ++convs, int8 += i8;
    // A GEMM's own step, not its elementwise epilogue (which carries the GEMM's op).
    if ((st.op == "FusedMatMul" || st.op == "MatMul" || st.op == "Gemm") && st.kernel.rfind("elementwise", 0) != 0)
      ++gemms, gemms8 += i8;
  }
  return std::to_string(int8) + " of " + std::to_string(convs) + " convolutions and " + std::to_string(gemms8) + " of " +
         std::to_string(gemms) + " GEMMs in INT8";
}

TEST_F(Gpu, ExportedModelsMatchPyTorch) {
  const fs::path dir = kiln_test::model_dir();
  int checked = 0;
  for (const char* name : {"resnet50", "mobilenet_v2", "bert", "gpt", "vit_b16_2layer", "vit_b16", "efficientnet_b0",
                           "regnet_y_400mf", "convnext_tiny", "squeezenet1_1", "densenet121", "mobilenet_v3_small",
                           "shufflenet_v2_x0_5", "yolov8_tiny"}) {
    auto e = load_exported(dir, name);
    if (!e) continue;
    const Model& m = e->model;
    const reference::TensorMap& inputs = e->inputs;
    const reference::TensorMap& expected = e->expected;
    const gpu::ShapeMap& shapes = e->shapes;
    const bool cnn = inputs.count("input") && inputs.at("input").shape().size() == 4;
    // FP8 (transformers: FP8 GEMMs) is calibrated on another batch of the same kind: float inputs
    // drawn again with their mean and spread, token ids uniformly over the range seen, masks kept.
    quant::TensorMap calib_batch;
    std::mt19937 rng(7);
    for (const auto& [k, t] : inputs) {
      Tensor c = t.clone();
      if (t.dtype() == DType::kF32) {
        double mean = 0, sq = 0;
        for (int64_t i = 0; i < t.numel(); ++i) mean += t.data<float>()[i], sq += double(t.data<float>()[i]) * t.data<float>()[i];
        mean /= static_cast<double>(t.numel());
        std::normal_distribution<float> nd(static_cast<float>(mean), static_cast<float>(std::sqrt(std::max(sq / t.numel() - mean * mean, 1e-12))));
        for (int64_t i = 0; i < t.numel(); ++i) c.mutable_data<float>()[i] = nd(rng);
      } else if (t.dtype() == DType::kI64 && k.find("mask") == std::string::npos) {
        const int64_t* d = t.data<int64_t>();
        std::uniform_int_distribution<int64_t> ud(*std::min_element(d, d + t.numel()), *std::max_element(d, d + t.numel()));
        for (int64_t i = 0; i < t.numel(); ++i) c.mutable_data<int64_t>()[i] = ud(rng);
      }
      calib_batch[k] = c;
    }
    quant::MemoryCalibrator calib_data({calib_batch});
    gpu::Fp8Calibration fp8;
    fp8.data = &calib_data;
    fp8.source = "a second random batch";
    const std::string model_name = name;
    const bool transformer = model_name == "bert" || model_name == "gpt" || model_name.rfind("vit", 0) == 0;
    const auto& props = gpu::open_device(0)->props();
    const bool fp8_ok = transformer && props.sm_major * 10 + props.sm_minor >= 89;
    std::vector<gpu::Precision> precisions = {gpu::Precision::kFP32, gpu::Precision::kFP16};
    if (fp8_ok) precisions.push_back(gpu::Precision::kFP8);
    if ((cnn || transformer) && props.sm_major >= 8) precisions.push_back(gpu::Precision::kINT8);
    for (auto p : precisions) {
      gpu::CompileOptions opt;
      opt.precision = p;
      opt.fp8_gemms = "always";  // the accuracy of every GEMM in FP8, wherever timing would put it
      opt.int8_convs = "always";  // likewise every convolution the INT8 kernel takes
      opt.int8_gemms = "always";  // and every GEMM
      // INT8 activations: entropy calibration (the CLI's and TensorRT's default).
      fp8.method = p == gpu::Precision::kINT8 ? quant::CalibMethodSpec{quant::CalibMethod::kEntropy, 99.99}
                                              : quant::CalibMethodSpec{quant::CalibMethod::kMinMax, 99.99};
      gpu::GpuBuild built;
      try {
        built = gpu::build_gpu_program(m, shapes, 0, opt, 3, &fp8);
      } catch (const Error& e) {
        if (e.code() == ErrorCode::kUnsupported) {
          std::cout << "[ model ] " << name << ": not supported on the GPU yet: " << e.what() << "\n";
          break;
        }
        throw;
      }
      gpu::GpuContext ctx(built.program);
      const auto got = ctx.run(inputs);
      for (const auto& [k, want] : expected) {
        if (!got.count(k)) continue;
        const Tensor& g = got.at(k);
        if (want.dtype() != DType::kF32) {
          // The detector's labels and kept indices follow the order of its scores, and the random-
          // weight detector's scores lie close together, so TF32 and FP16 rounding reorder near-equal
          // ones (measured on an H100: 61-73 of 100 in place). Its sorted scores are checked as
          // floats; these are reported, with how many kept indices both runs keep. The simulated
          // device's IEEE FP32 run matches them exactly (SimDevices.ExportedModelsMatchPyTorchInFp32).
          ASSERT_EQ(g.shape(), want.shape()) << name << " " << k;
          int64_t same = 0;
          for (int64_t i = 0; i < want.numel(); ++i) same += g.data<int64_t>()[i] == want.data<int64_t>()[i];
          std::set<int64_t> a(g.data<int64_t>(), g.data<int64_t>() + g.numel()), b(want.data<int64_t>(), want.data<int64_t>() + want.numel()), both;
          std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::inserter(both, both.begin()));
          std::cout << "[ model ] " << name << " " << gpu::precision_name(p) << " " << k << ": " << same << " of "
                    << want.numel() << " in place, " << both.size() << " of " << b.size() << " distinct values in both\n";
          continue;
        }
        const double e = rel_error(g, want);
        double dot = 0, gg = 0, ww = 0;
        for (int64_t i = 0; i < want.numel(); ++i) {
          const double a = g.data<float>()[i], b = want.data<float>()[i];
          dot += a * b, gg += a * a, ww += b * b;
        }
        const double cosine = dot / std::sqrt(std::max(gg * ww, 1e-300));
        std::cout << "[ model ] " << name << " " << gpu::precision_name(p) << " " << k << ": rel L2 error " << e
                  << ", cosine " << cosine << "\n";
        if (p == gpu::Precision::kINT8) {
          // Per-tensor INT8 activations, per-channel INT8 weights, calibrated on one other random
          // batch; these random-weight CNNs amplify rounding (PyTorch's own FP16 is 1.8-3.1% off).
          int64_t agree = 0;
          const int64_t classes = want.shape().back(), rows = want.numel() / classes;
          for (int64_t r = 0; r < rows; ++r) {
            const float* a = g.data<float>() + r * classes;
            const float* b = want.data<float>() + r * classes;
            agree += std::max_element(a, a + classes) - a == std::max_element(b, b + classes) - b;
          }
          std::cout << "[ model ] " << name << " int8: " << int8_conv_summary_of(*built.program) << ", top-1 agreement "
                    << agree << "/" << rows << "\n";
          if (transformer) {
            // Per-tensor INT8 GEMM inputs, per-column INT8 weights (no class to agree on): held
            // like FP8, whose rounding is coarser.
            EXPECT_LT(e, 0.15) << name << " " << k << " at int8";
            EXPECT_GT(cosine, 0.99) << name << " " << k << " at int8";
            continue;
          }
          // Measured on an H100 (every candidate in INT8, entropy): ResNet-50 18% and cosine
          // 0.983, MobileNetV2 20% and 0.981, the top-1 class kept.
          EXPECT_LT(e, 0.3) << name << " " << k << " at int8";
          EXPECT_GT(cosine, 0.95) << name << " " << k << " at int8";
          continue;
        }
        if (p == gpu::Precision::kFP8) {
          // E4M3 keeps 3 mantissa bits: a few percent per GEMM, compounding over the layers of these
          // random-weight models (measured: BERT 6.9%, GPT 9.1% with every GEMM in FP8).
          EXPECT_LT(e, 0.15) << name << " " << k << " at fp8";
          EXPECT_GT(cosine, 0.99) << name << " " << k << " at fp8";
          continue;
        }
        // The detector: its boxes follow the kept indices (above); its sorted scores come out of a
        // random-weight convolutional network, held like the classifiers' logits below (measured on
        // an H100: 0.7% in TF32, 1.0-1.1% in FP16).
        const bool detector = model_name.rfind("yolo", 0) == 0;
        if (detector && k != "scores") continue;
        if (!cnn && !detector) {
          EXPECT_LT(e, 1e-2) << name << " " << k << " at " << gpu::precision_name(p);
          continue;
        }
        EXPECT_LT(e, 5e-2) << name << " " << k << " at " << gpu::precision_name(p);
        EXPECT_GT(cosine, 0.999) << name << " " << k << " at " << gpu::precision_name(p);
        if (detector) continue;
        const int64_t classes = want.shape().back(), rows = want.numel() / classes;
        for (int64_t r = 0; r < rows; ++r) {
          const float* a = g.data<float>() + r * classes;
          const float* b = want.data<float>() + r * classes;
          EXPECT_EQ(std::max_element(a, a + classes) - a, std::max_element(b, b + classes) - b)
              << name << " sample " << r << " top-1 at " << gpu::precision_name(p);
        }
      }
      ++checked;
    }
  }
  if (checked == 0) GTEST_SKIP() << "no exported models in " << dir << " (models/export.py)";
}

}  // namespace
