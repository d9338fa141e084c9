// `kiln quantize` end to end: a small CNN (with a BatchNormalization to fold) calibrated and
// exported as standard QDQ ONNX, checked structurally (Q/DQ placement, int8 weights per output
// channel, per tensor below opset 13, scales from the data), by Kiln's loader, checker and reference
// executor against the float model, by `kiln build` (explicit Q/DQ -> kiln::QConv), by Debian's
// python3 onnx checker when installed, and the calibration cache and error paths.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "ops/model_check.h"
#include "quant/metrics.h"
#include "test_support.h"
#include "util/mapped_file.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using namespace kiln;

namespace {

using Result = kiln_test::CliResult;
Result kiln_cli(const std::string& args) { return kiln_test::run_kiln_cli(args); }

using kiln_test::seeded;

Tensor positive(const std::vector<int64_t>& shape, uint32_t seed) {
  Tensor t = seeded(shape, seed, 0.25f);
  float* p = t.mutable_data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] += 1.f;  // in [0.75, 1.25): BatchNorm scale and variance
  return t;
}

// x[N,3,8,8] -> conv1(3->8) -> bn1 -> relu1 -> conv2(8->8) -> relu2 -> pool(2x2) -> conv3(8->8) -> add(conv3, pool)
//   -> gap -> flat -> fc (Gemm, transB) -> y[N,10]
Model small_cnn(int64_t opset) {
  kiln_test::ModelBuilder b(opset);
  b.input("x", DType::kF32, Shape{Dim::sym("N"), Dim(3), Dim(8), Dim(8)})
      .init("w1", seeded({8, 3, 3, 3}, 1))
      .init("b1", seeded({8}, 2))
      .init("bn_s", positive({8}, 3))
      .init("bn_b", seeded({8}, 4))
      .init("bn_m", seeded({8}, 5))
      .init("bn_v", positive({8}, 6))
      .init("w2", seeded({8, 8, 3, 3}, 7))
      .init("w3", seeded({8, 8, 3, 3}, 8))
      .init("b3", seeded({8}, 9))
      .init("fw", seeded({10, 8}, 10))
      .init("fb", seeded({10}, 11));
  const auto pads = Attribute::of_ints({1, 1, 1, 1});
  auto& n = b.m.graph.nodes;
  n.push_back(Node{"conv1", "Conv", "", {"x", "w1", "b1"}, {"c1"}, {{"pads", pads}}});
  n.push_back(Node{"bn1", "BatchNormalization", "", {"c1", "bn_s", "bn_b", "bn_m", "bn_v"}, {"bn1"}, {}});
  n.push_back(Node{"relu1", "Relu", "", {"bn1"}, {"r1"}, {}});
  n.push_back(Node{"conv2", "Conv", "", {"r1", "w2"}, {"c2"}, {{"pads", pads}}});
  n.push_back(Node{"relu2", "Relu", "", {"c2"}, {"r2"}, {}});
  n.push_back(Node{"pool", "MaxPool", "", {"r2"}, {"p"},
                   {{"kernel_shape", Attribute::of_ints({2, 2})}, {"strides", Attribute::of_ints({2, 2})}}});
  n.push_back(Node{"conv3", "Conv", "", {"p", "w3", "b3"}, {"c3"}, {{"pads", pads}}});
  n.push_back(Node{"add", "Add", "", {"c3", "p"}, {"a"}, {}});
  n.push_back(Node{"gap", "GlobalAveragePool", "", {"a"}, {"g"}, {}});
  n.push_back(Node{"flat", "Flatten", "", {"g"}, {"f"}, {}});
  n.push_back(Node{"fc", "Gemm", "", {"f", "fw", "fb"}, {"y"}, {{"transB", Attribute::of_int(1)}}});
  b.m.graph.outputs = {"y"};
  b.m.ir_version = 8;
  return b.m;
}

const Node* producer(const Graph& g, const std::string& v) {
  for (const Node& n : g.nodes)
    if (std::find(n.outputs.begin(), n.outputs.end(), v) != n.outputs.end()) return &n;
  return nullptr;
}

int count_op(const Graph& g, const std::string& op) {
  return static_cast<int>(
      std::count_if(g.nodes.begin(), g.nodes.end(), [&](const Node& n) { return n.op_type == op; }));
}

// Debian's python3 onnx checker, when installed: "" when the model passes, else the reason (the
// sub-check is skipped with a message when python3 or its onnx module is missing).
bool python_onnx_available() {
  static const bool ok = std::system("/usr/bin/python3 -c 'import onnx' >/dev/null 2>&1") == 0;
  return ok;
}
void expect_python_checker_accepts(const std::string& model) {
  if (!python_onnx_available()) {
    std::cout << "[  NOTE    ] /usr/bin/python3 with onnx is not installed: onnx.checker sub-check skipped\n";
    return;
  }
  const std::string cmd = "/usr/bin/python3 -c \"import onnx,sys; onnx.checker.check_model(onnx.load(sys.argv[1]), "
                          "full_check=True)\" " + model + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[4096];
  for (size_t k; (k = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, k);
  EXPECT_EQ(pclose(p), 0) << "onnx.checker rejects " << model << ":\n" << out;
}

class QuantizeCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_quantize_cli_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    model_ = save(small_cnn(17), "cnn.onnx");
    calib_data_ = seeded({32, 3, 8, 8}, 100, 2.f);
    calib_ = path("calib.npz");
    write_npz(calib_, {{"x", calib_data_}});
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string save(const Model& m, const std::string& name) {
    save_onnx(m, path(name));
    return path(name);
  }

  // The exported model on the reference executor against the float model, on the calibration
  // samples (one batch of 32): the cosine of the logits and the top-1 agreement.
  quant::ErrorStats accuracy_against_float(const std::string& qdq, const std::string& float_model) {
    reference::Executor q(load_onnx(qdq)), f(load_onnx(float_model));
    quant::ErrorStats s;
    s.add(q.run({{"x", calib_data_}}).at("y"), f.run({{"x", calib_data_}}).at("y"));
    return s;
  }

  fs::path dir_;
  std::string model_, calib_;
  Tensor calib_data_;
};

}  // namespace

TEST_F(QuantizeCliTest, ExportsAStandardQdqModel) {
  const std::string out = path("cnn.qdq.onnx");
  Result r = kiln_cli("quantize " + model_ + " --calib " + calib_ + " --calib-method minmax -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* s : {"fold-batchnorm: 1 rewrites", "calibration:  32 samples", "minmax",
                        "quantized:    4 layers (Conv x3, Gemm x1), 6 activation tensors calibrated",
                        "per output channel", "6 QuantizeLinear, 10 DequantizeLinear"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;

  // Loads, passes Kiln's checks and type inference, keeps its opset.
  Model m = load_onnx(out);
  EXPECT_TRUE(check_model(m).empty());
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  ASSERT_NO_THROW(infer_types(m, infer));
  const Graph& g = m.graph;
  EXPECT_EQ(m.default_opset(), 17);
  EXPECT_EQ(count_op(g, "BatchNormalization"), 0);  // folded into conv1 before quantizing
  EXPECT_EQ(count_op(g, "QuantizeLinear"), 6);       // x, r1, r2 (pool input), p, c3 (Add input), f
  EXPECT_EQ(count_op(g, "DequantizeLinear"), 10);    // the 6 activations and 4 weights
  for (const std::string v : {"x", "r1", "r2", "p", "c3", "f"}) {
    bool quantized = false;
    for (const Node& n : g.nodes) quantized |= n.op_type == "QuantizeLinear" && n.inputs[0] == v;
    EXPECT_TRUE(quantized) << v;
  }

  // Every Conv and Gemm reads its activation and its weight through DequantizeLinear; weights are
  // int8 initializers with one scale per output channel (axis 0 for Conv and for Gemm with transB).
  for (const Node& n : g.nodes) {
    if (n.op_type != "Conv" && n.op_type != "Gemm") continue;
    SCOPED_TRACE(n.name);
    const Node* a = producer(g, n.inputs[0]);
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->op_type, "DequantizeLinear");
    const Node* w = producer(g, n.inputs[1]);
    ASSERT_NE(w, nullptr);
    ASSERT_EQ(w->op_type, "DequantizeLinear");
    ASSERT_TRUE(g.initializers.count(w->inputs[0]));
    EXPECT_EQ(g.initializers.at(w->inputs[0]).dtype(), DType::kI8);
    EXPECT_EQ(g.initializers.at(w->inputs[1]).shape(), std::vector<int64_t>{g.initializers.at(w->inputs[0]).dim(0)});
    ASSERT_NE(w->attr("axis"), nullptr);
    EXPECT_EQ(w->attr("axis")->i, 0);
  }
  // The Add reads both inputs dequantized.
  for (const Node& n : g.nodes) {
    if (n.op_type != "Add") continue;
    for (const auto& in : n.inputs) {
      EXPECT_EQ(producer(g, in)->op_type, "DequantizeLinear") << in;
    }
  }

  // conv2's weight (not touched by the BatchNorm fold): scale[c] = max|w2[c]| / 127, and the int8
  // values round w / scale, so each dequantized weight is within half a step of the float one.
  const Node* conv2 = nullptr;
  for (const Node& n : g.nodes) conv2 = n.name == "conv2" ? &n : conv2;
  ASSERT_NE(conv2, nullptr);
  const Node* wdq = producer(g, conv2->inputs[1]);
  const Tensor w2 = seeded({8, 8, 3, 3}, 7);
  const Tensor& q = g.initializers.at(wdq->inputs[0]);
  const Tensor& scale = g.initializers.at(wdq->inputs[1]);
  for (int64_t c = 0; c < 8; ++c) {
    float amax = 0;
    for (int64_t i = 0; i < 72; ++i) amax = std::max(amax, std::fabs(w2.data<float>()[c * 72 + i]));
    const float s = scale.data<float>()[c];
    EXPECT_NEAR(s, amax / 127.f, 1e-7f) << c;
    for (int64_t i = 0; i < 72; ++i) {
      const int8_t v = q.data<int8_t>()[c * 72 + i];
      EXPECT_LE(std::abs(v), 127);
      EXPECT_LE(std::fabs(static_cast<float>(v) * s - w2.data<float>()[c * 72 + i]), s * 0.5f + 1e-6f) << c << "," << i;
    }
  }
  // minmax: x's scale is the absmax of the calibration data / 127, int8 (the data has negatives);
  // r1 (after a Relu) is uint8.
  float xmax = 0;
  for (int64_t i = 0; i < calib_data_.numel(); ++i) xmax = std::max(xmax, std::fabs(calib_data_.data<float>()[i]));
  for (const Node& n : g.nodes) {
    if (n.op_type != "QuantizeLinear") continue;
    const Tensor& zp = g.initializers.at(n.inputs[2]);
    if (n.inputs[0] == "x") {
      EXPECT_EQ(zp.dtype(), DType::kI8);
      EXPECT_NEAR(g.initializers.at(n.inputs[1]).data<float>()[0], xmax / 127.f, 1e-7f);
    }
    if (n.inputs[0] == "r1") {
      EXPECT_EQ(zp.dtype(), DType::kU8);
    }
  }

  // Runs on the reference executor, close to the float model.
  const quant::ErrorStats s = accuracy_against_float(out, model_);
  EXPECT_GE(s.cosine, 0.99) << "max_abs " << s.max_abs;
  EXPECT_FALSE(s.has_nan);

  // `kiln build` (no --int8) takes the explicit Q/DQ path: every conv becomes kiln::QConv.
  const std::string eng = path("qdq.kiln");
  Result b = kiln_cli("build " + out + " -o " + eng + " --shapes x:1x3x8x8 --no-timing");
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(b.out.find("fuse-qdq"), std::string::npos) << b.out;
  Result i = kiln_cli("inspect " + eng);
  ASSERT_EQ(i.code, 0) << i.out;
  EXPECT_NE(i.out.find("kiln::QConv: 3"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("kiln::QMatMul: 1"), std::string::npos) << i.out;
  Result c = kiln_cli("compare " + eng + " --model " + model_ + " --calib " + calib_ + " --min-cosine 0.99");
  EXPECT_EQ(c.code, 0) << c.out;

  expect_python_checker_accepts(out);
}

TEST_F(QuantizeCliTest, PerTensorWeightsBelowOpset13) {
  const std::string m11 = save(small_cnn(11), "cnn11.onnx"), out = path("cnn11.qdq.onnx");
  Result r = kiln_cli("quantize " + m11 + " --calib " + calib_ + " -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("per tensor (opset < 13)"), std::string::npos) << r.out;
  Model m = load_onnx(out);
  EXPECT_EQ(m.default_opset(), 11);
  int weights = 0;
  for (const Node& n : m.graph.nodes) {
    if (n.op_type != "DequantizeLinear") continue;
    EXPECT_EQ(n.attr("axis"), nullptr) << n.name;  // no axis attribute before opset 13
    EXPECT_EQ(m.graph.initializers.at(n.inputs[1]).numel(), 1) << n.name;
    weights += m.graph.initializers.count(n.inputs[0]) ? 1 : 0;
  }
  EXPECT_EQ(weights, 4);
  // The reference kernels refuse per-axis scales before opset 13, so this run checks it too.
  EXPECT_GE(accuracy_against_float(out, m11).cosine, 0.99);
  const std::string eng = path("q11.kiln");
  Result b = kiln_cli("build " + out + " -o " + eng + " --shapes x:1x3x8x8 --no-timing");
  ASSERT_EQ(b.code, 0) << b.out;
  EXPECT_NE(kiln_cli("inspect " + eng).out.find("kiln::QConv: 3"), std::string::npos);
  expect_python_checker_accepts(out);
}

// --matmul-weights per-tensor: the Gemm's weight gets one scale (ONNX Runtime's default), the
// convolutions keep one per output channel; a bad value is refused.
TEST_F(QuantizeCliTest, PerTensorMatMulWeights) {
  const std::string out = path("pt.qdq.onnx");
  Result r = kiln_cli("quantize " + model_ + " --calib " + calib_ + " --matmul-weights per-tensor -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  Model m = load_onnx(out);
  int gemm_checked = 0, conv_checked = 0;
  for (const Node& n : m.graph.nodes) {
    if (n.op_type != "Conv" && n.op_type != "Gemm") continue;
    const int p = m.graph.producer_index(n.inputs[1]);
    ASSERT_GE(p, 0) << n.name;
    const Node& dq = m.graph.nodes[static_cast<size_t>(p)];
    const int64_t scales = m.graph.initializers.at(dq.inputs[1]).numel();
    if (n.op_type == "Gemm") {
      EXPECT_EQ(scales, 1);
      EXPECT_EQ(dq.attr("axis"), nullptr);
      ++gemm_checked;
    } else {
      EXPECT_GT(scales, 1);
      ++conv_checked;
    }
  }
  EXPECT_EQ(gemm_checked, 1);
  EXPECT_EQ(conv_checked, 3);
  EXPECT_GE(accuracy_against_float(out, model_).cosine, 0.99);
  Result bad = kiln_cli("quantize " + model_ + " --calib " + calib_ + " --matmul-weights per-row -o " + out);
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("--matmul-weights must be per-channel or per-tensor"), std::string::npos) << bad.out;
}

TEST_F(QuantizeCliTest, OpsetBelow10IsRefused) {
  Result r = kiln_cli("quantize " + save(small_cnn(9), "cnn9.onnx") + " --calib " + calib_ + " -o " + path("o.onnx"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("uses opset 9"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("need opset 10 or later"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(path("o.onnx")));
}

TEST_F(QuantizeCliTest, CalibrationCache) {
  const std::string cache = path("calib.cache"), a = path("a.onnx"), b = path("b.onnx");
  Result r = kiln_cli("quantize " + model_ + " --calib " + calib_ + " --calib-cache " + cache + " -o " + a);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("cache written: " + cache), std::string::npos) << r.out;
  std::ifstream f(cache);
  std::string first;
  std::getline(f, first);
  EXPECT_EQ(first.rfind("kiln-calibration", 0), 0u) << first;
  // Without data: the cache alone gives the same model, byte for byte.
  r = kiln_cli("quantize " + model_ + " --calib-cache " + cache + " -o " + b);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("calibration:  cache " + cache + " (entropy, 32 samples)"), std::string::npos) << r.out;
  EXPECT_EQ(read_file_bytes(a), read_file_bytes(b));
  // `kiln build --int8` takes the export's cache (a superset of the fused graph's tensors).
  Result build = kiln_cli("build " + model_ + " -o " + path("e.kiln") + " --shapes x:1x3x8x8 --no-timing --int8 "
                          "--calib-cache " + cache);
  EXPECT_EQ(build.code, 0) << build.out;
  EXPECT_NE(build.out.find("calibration: cache"), std::string::npos) << build.out;

  // A cache of `kiln build --int8` lacks the residual Add's input: a clear error.
  const std::string build_cache = path("build.cache");
  build = kiln_cli("build " + model_ + " -o " + path("e2.kiln") + " --shapes x:1x3x8x8 --no-timing --int8 --calib " +
                   calib_ + " --calib-cache " + build_cache);
  ASSERT_EQ(build.code, 0) << build.out;
  r = kiln_cli("quantize " + model_ + " --calib-cache " + build_cache + " -o " + path("c.onnx"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("has no range for tensor 'c3'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("kiln build --int8"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("calibrate again with --calib DATA"), std::string::npos) << r.out;

  // Another model's cache.
  Model other = small_cnn(17);
  other.graph.nodes.push_back(Node{"relu_out", "Relu", "", {"y"}, {"y2"}, {}});
  other.graph.outputs = {"y2"};
  r = kiln_cli("quantize " + save(other, "other.onnx") + " --calib-cache " + cache + " -o " + path("d.onnx"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("was made for another model"), std::string::npos) << r.out;

  // A cache that does not exist, without data.
  r = kiln_cli("quantize " + model_ + " --calib-cache " + path("none.cache") + " -o " + path("d.onnx"));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("'" + path("none.cache") + "' does not exist"), std::string::npos) << r.out;
}

TEST_F(QuantizeCliTest, LayerPrecisionAndCalibrationFlags) {
  const std::string out = path("lp.onnx");
  Result r = kiln_cli("quantize " + model_ + " --calib " + calib_ + " --layer-precision conv2:fp32,relu1:fp32 " +
                      "--calib-method percentile=99.9 --calib-samples 8 --calib-batch 4 -o " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("8 samples"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("percentile=99.9"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3 layers (Conv x2, Gemm x1)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("kept in fp32: conv2 relu1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'relu1' is not a Conv, Gemm or MatMul layer"), std::string::npos) << r.out;
  Model m = load_onnx(out);
  for (const Node& n : m.graph.nodes)
    if (n.name == "conv2") {
      EXPECT_EQ(n.inputs[0], "r1");  // float activation
      EXPECT_EQ(n.inputs[1], "w2");  // float weight
    }
  EXPECT_GE(accuracy_against_float(out, model_).cosine, 0.99);
  const std::string eng = path("lp.kiln");
  ASSERT_EQ(kiln_cli("build " + out + " -o " + eng + " --shapes x:1x3x8x8 --no-timing").code, 0);
  Result i = kiln_cli("inspect " + eng);
  EXPECT_NE(i.out.find("kiln::QConv: 2"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("kiln::FusedConv: 1"), std::string::npos) << i.out;
}

TEST_F(QuantizeCliTest, Errors) {
  const std::string base = "quantize " + model_ + " -o " + path("o.onnx");
  struct Case {
    std::string flags, message;
  };
  for (const Case& c : std::vector<Case>{
           {"", "needs calibration data (--calib DATA) or an existing calibration cache (--calib-cache FILE)"},
           {" --calib " + path("nothere"), "does not exist"},
           {" --calib " + calib_ + " --layer-precision conv9:fp32", "the model has no layer (node) named 'conv9'"},
           {" --calib " + calib_ + " --layer-precision conv2:fp64", "conv2:fp64: the precision must be fp32 or int8"},
           {" --calib " + calib_ + " --layer-precision conv2", "expected NAME:fp32 or NAME:int8, got 'conv2'"},
           {" --calib " + calib_ + " --calib-method kl", "unknown calibration method 'kl'"},
           {" --calib " + calib_ + " --layer-precision conv1:fp32,conv2:fp32,conv3:fp32,fc:fp32",
            "nothing to quantize"},
       }) {
    Result r = kiln_cli(base + c.flags);
    EXPECT_EQ(r.code, 1) << c.flags << "\n" << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << c.flags << "\n" << r.out;
  }
  EXPECT_FALSE(fs::exists(path("o.onnx")));
  // Wrong calibration data: the FileCalibrator's messages.
  write_npz(path("f64.npz"), {{"x", Tensor(DType::kF64, {4, 3, 8, 8})}});
  Result d = kiln_cli(base + " --calib " + path("f64.npz"));
  EXPECT_EQ(d.code, 1) << d.out;
  EXPECT_NE(d.out.find("has dtype f64, the model's input 'x' is f32"), std::string::npos) << d.out;
  // A model that already has Q/DQ nodes.
  ASSERT_EQ(kiln_cli("quantize " + model_ + " --calib " + calib_ + " -o " + path("q.onnx")).code, 0);
  Result again = kiln_cli("quantize " + path("q.onnx") + " --calib " + calib_ + " -o " + path("qq.onnx"));
  EXPECT_EQ(again.code, 1) << again.out;
  EXPECT_NE(again.out.find("already has QuantizeLinear/DequantizeLinear nodes"), std::string::npos) << again.out;
  // Bad flags exit 2.
  for (const std::string& flags : std::vector<std::string>{"quantize " + model_ + " --calib " + calib_,
                                                           "quantize -o x.onnx", base + " --calib-batch 0",
                                                           base + " --threads 0", base + " --nonsense"}) {
    Result r = kiln_cli(flags);
    EXPECT_EQ(r.code, 2) << flags << "\n" << r.out;
  }
}
