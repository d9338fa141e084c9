// Reduced precision on real models.
//
//  - Digits: a small CNN trained on scikit-learn's handwritten digits (models/digits.py) is
//    calibrated on its training images; its test-set accuracy in INT8 must be within 0.5
//    percentage points of FP32. BF16 accuracy is measured too.
//  - ResNet-50, MobileNetV2, BERT (random weights, so agreement rather than accuracy): INT8 with
//    the accuracy guard on (0.5% cosine budget on 16 validation inputs), calibrated on 256 samples,
//    must reach output cosine
//    similarity >= 0.99 against the FP32 engine on held-out inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "onnx/onnx_import.h"
#include "quant/calibration.h"
#include "runtime/builder.h"
#include "runtime/runtime.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using namespace kiln;

namespace {

fs::path model_dir() {
  const char* d = std::getenv("KILN_MODEL_DIR");
  return d ? fs::path(d) : fs::path();
}

// Runs a built engine on one input set.
reference::TensorMap run_engine(BuildResult& b, const reference::TensorMap& inputs) {
  auto rt = std::make_shared<EngineRuntime>(b.model, b.info);
  Context ctx(rt);
  return ctx.run(inputs);
}

double cosine(const Tensor& a, const Tensor& b) {
  auto x = a.to_double_vector(), y = b.to_double_vector();
  double d = 0, xx = 0, yy = 0;
  for (size_t i = 0; i < x.size(); ++i) d += x[i] * y[i], xx += x[i] * x[i], yy += y[i] * y[i];
  return d / std::sqrt(xx * yy);
}

// A calibrator over tensors generated in memory (a stacked .npz written to a temp file).
struct TempData {
  fs::path path;
  explicit TempData(const std::string& name, const NamedTensors& t) {
    path = fs::temp_directory_path() / ("kiln_precision_" + name + "_" + std::to_string(::getpid()) + ".npz");
    write_npz(path, t);
  }
  ~TempData() { fs::remove(path); }
};

Tensor normal_images(int64_t n, int64_t c, int64_t hw, uint32_t seed) {
  Tensor t(DType::kF32, {n, c, hw, hw});
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<float>()[i] = d(rng);
  return t;
}

Tensor slice_rows(const Tensor& t, int64_t begin, int64_t count) {
  std::vector<int64_t> shape = t.shape();
  const int64_t row = t.numel() / shape[0];
  shape[0] = count;
  Tensor out(t.dtype(), shape);
  std::memcpy(out.mutable_raw(), static_cast<const char*>(t.raw()) + begin * row * dtype_size(t.dtype()),
              static_cast<size_t>(count * row) * dtype_size(t.dtype()));
  return out;
}

int64_t correct(const Tensor& logits, const Tensor& labels) {
  const int64_t n = logits.dim(0), k = logits.dim(1);
  int64_t ok = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* row = logits.data<float>() + i * k;
    ok += std::max_element(row, row + k) - row == labels.data<int64_t>()[i];
  }
  return ok;
}

}  // namespace

TEST(PrecisionModels, DigitsInt8WithinHalfPointOfFp32) {
  const fs::path dir = model_dir();
  if (dir.empty() || !fs::exists(dir / "digits.onnx")) GTEST_SKIP() << "digits model not exported (scripts/export-models.sh)";
  const Model model = load_onnx(dir / "digits.onnx");
  const auto test = read_npz(dir / "digits_test.npz");
  Tensor images, labels;
  for (const auto& [k, t] : test) (k == "input" ? images : labels) = t;
  const int64_t n = images.dim(0);
  auto build = [&](bool int8, bool bf16, quant::Calibrator* calib) {
    BuildConfig cfg;
    cfg.profiles.resize(1);
    cfg.profiles[0].inputs["input"] = {{1, 1, 32, 32}, {100, 1, 32, 32}, {n, 1, 32, 32}};
    cfg.time_tactics = false;
    cfg.precision.int8 = int8;
    cfg.precision.bf16 = bf16;
    cfg.precision.calibrator = calib;
    return build_engine(model, cfg);
  };
  quant::FileCalibrator calib(dir / "digits_train.npz", model, 100);
  BuildResult f32 = build(false, false, nullptr), bf16 = build(false, true, nullptr), int8 = build(true, false, &calib);
  const reference::TensorMap in = {{"input", images}};
  const double acc32 = 100.0 * correct(run_engine(f32, in).at("logits"), labels) / n;
  const double acc16 = 100.0 * correct(run_engine(bf16, in).at("logits"), labels) / n;
  const double acc8 = 100.0 * correct(run_engine(int8, in).at("logits"), labels) / n;
  std::cout << "digits test accuracy (" << n << " images): fp32 " << acc32 << "%, bf16 " << acc16 << "%, int8 " << acc8
            << "% (calibrated on " << calib.samples_read() << " training images)\n";
  for (const auto& l : int8.precision_log) std::cout << "  " << l << "\n";
  EXPECT_GT(acc32, 95.0);
  EXPECT_LE(std::fabs(acc8 - acc32), 0.5);
  EXPECT_LE(std::fabs(acc16 - acc32), 0.5);
}

class Int8ModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Int8ModelTest, GuardedInt8CosineAtLeast099) {
  const std::string name = GetParam();
  const fs::path dir = model_dir();
  if (dir.empty() || !fs::exists(dir / (name + ".onnx"))) GTEST_SKIP() << name << " not exported";
  const Model model = load_onnx(dir / (name + ".onnx"));
  const bool bert = name == "bert";
  const int64_t seq = 128;
  auto make = [&](int64_t count, uint32_t seed) -> NamedTensors {
    if (!bert) return {{"input", normal_images(count, 3, 224, seed)}};
    Tensor ids(DType::kI64, {count, seq}), mask(DType::kI64, {count, seq});
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int64_t> d(0, 30521);
    for (int64_t i = 0; i < ids.numel(); ++i) ids.mutable_data<int64_t>()[i] = d(rng), mask.mutable_data<int64_t>()[i] = 1;
    return {{"input_ids", ids}, {"attention_mask", mask}};
  };
  TempData calib_file(name + "_calib", make(256, 1)), val_file(name + "_val", make(16, 2));
  const NamedTensors held_out = make(8, 3);

  BuildConfig cfg;
  cfg.profiles.resize(1);
  for (const auto& [k, t] : held_out) {
    std::vector<int64_t> s = t.shape();
    s[0] = 1;
    cfg.profiles[0].inputs[k] = {s, s, s};
  }
  cfg.time_tactics = false;
  const BuildResult f32 = build_engine(model, cfg);
  quant::FileCalibrator calib(calib_file.path, model, 1), val(val_file.path, model, 1);
  cfg.precision.int8 = true;
  cfg.precision.calibrator = &calib;
  cfg.precision.accuracy_budget = 0.005;  // guard target 0.995 on validation: margin for held-out inputs
  cfg.precision.accuracy_metric = quant::AccuracyMetric::kCosine;
  cfg.precision.validation = &val;
  cfg.precision.validation_samples = 16;
  BuildResult int8 = build_engine(model, cfg);
  for (const auto& l : int8.precision_log)
    if (l.rfind("      int8", 0) != 0) std::cout << l << "\n";
  int layers = 0;
  for (const Node& n : int8.model.graph.nodes) layers += n.op_type == "QConv" || n.op_type == "QMatMul";
  EXPECT_GT(layers, 0);

  // Held-out agreement, one sample at a time, accumulated over all samples per output.
  BuildResult f32_copy = f32;
  std::map<std::string, std::vector<double>> acc;  // output -> dot, |a|^2, |b|^2
  for (int64_t i = 0; i < 8; ++i) {
    reference::TensorMap in;
    for (const auto& [k, t] : held_out) in[k] = slice_rows(t, i, 1);
    auto a = run_engine(int8, in), b = run_engine(f32_copy, in);
    for (const auto& [k, t] : b) {
      auto x = a.at(k).to_double_vector(), y = t.to_double_vector();
      auto& s = acc[k];
      s.resize(3);
      for (size_t j = 0; j < x.size(); ++j) s[0] += x[j] * y[j], s[1] += x[j] * x[j], s[2] += y[j] * y[j];
    }
  }
  for (const auto& [k, s] : acc) {
    const double c = s[0] / std::sqrt(s[1] * s[2]);
    std::cout << name << " int8 (" << layers << " int8 layers) output " << k << ": cosine " << c
              << " vs fp32 on 8 held-out inputs\n";
    EXPECT_GE(c, 0.99) << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Exported, Int8ModelTest, ::testing::Values("resnet50", "mobilenet_v2", "bert"),
                         [](const auto& info) { return info.param; });

// An explicit Q/DQ model exported from PyTorch's fake quantization: imported as written, fused into
// int8 kernels (no calibration), and matching PyTorch. Tolerance: PyTorch and Kiln sum in
// different orders, so a value near a rounding boundary of an inner quantizer can land one level
// apart; the outputs are averaged logits, so that moves them by far less than 1e-2.
TEST(PrecisionModels, PyTorchQdqModelFusesIntoInt8Kernels) {
  const fs::path dir = model_dir();
  if (dir.empty() || !fs::exists(dir / "pytorch_qdq.onnx")) GTEST_SKIP() << "pytorch_qdq not exported";
  const Model model = load_onnx(dir / "pytorch_qdq.onnx");
  Tensor x, want;
  for (const auto& [k, t] : read_npz(dir / "pytorch_qdq.io.npz")) (k == "input" ? x : want) = t;
  BuildConfig cfg;
  cfg.profiles.resize(1);
  cfg.profiles[0].inputs["input"] = {x.shape(), x.shape(), x.shape()};
  cfg.time_tactics = false;  // the first supporting tactic: which kernels exist, not which won a timing
  BuildResult b = build_engine(model, cfg);
  int qconv = 0, dnnl = 0;
  for (size_t i = 0; i < b.model.graph.nodes.size(); ++i)
    if (b.model.graph.nodes[i].op_type == "QConv") {
      ++qconv;
      dnnl += b.info.node_tactics[i] == "dnnl.qconv.nhwc";
    }
  EXPECT_EQ(qconv, 4);
  EXPECT_EQ(dnnl, 4);
  const Tensor got = run_engine(b, {{"input", x}}).at("output");
  auto g = got.to_double_vector(), w = want.to_double_vector();
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < g.size(); ++i) max_err = std::max(max_err, std::fabs(g[i] - w[i])), max_ref = std::max(max_ref, std::fabs(w[i]));
  std::cout << "pytorch_qdq: " << qconv << " QConv, max |kiln - torch| " << max_err << " (max |torch| " << max_ref
            << "), cosine " << cosine(got, want) << "\n";
  EXPECT_GT(cosine(got, want), 0.9999);
  EXPECT_LT(max_err, 1e-2 * max_ref);
}
