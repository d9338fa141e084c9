// Batch splitting (runtime/batch_split.h): the check accepts graphs that keep the samples apart
// and names the node that ties them together otherwise; a split run gives the unsplit run's and
// the reference executor's outputs (with a tail sub-batch, one sample per sub-batch, and sizes that
// change between runs); `kiln bench` reports the plan and --no-batch-split turns it off.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"
#include "runtime/batch_split.h"
#include "runtime/builder.h"
#include "runtime/runtime.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace kiln;
using kiln_test::seeded;
using ::testing::HasSubstr;

namespace {

using Shapes = std::map<std::string, std::vector<int64_t>>;

Node make(const std::string& name, const std::string& op, std::vector<std::string> in, std::vector<std::string> out,
          std::map<std::string, Attribute> attrs = {}) {
  return Node{name, op, "", std::move(in), std::move(out), std::move(attrs)};
}

Model base(std::vector<std::pair<std::string, Shape>> inputs, std::vector<std::string> outputs,
           DType dt = DType::kF32) {
  Model m;
  m.opsets[""] = 17;
  for (auto& [name, shape] : inputs) {
    m.graph.inputs.push_back(name);
    m.graph.types[name] = TensorType{dt, shape};
  }
  m.graph.outputs = std::move(outputs);
  return m;
}

const Dim kBatch = Dim::sym("batch");

// Conv -> Relu -> MaxPool -> GlobalAveragePool -> Flatten -> Gemm -> Softmax(axis 1).
Model small_cnn(int64_t hw = 8, int64_t out_channels = 4) {
  const int64_t channels = 3;
  Model m = base({{"x", Shape{kBatch, channels, hw, hw}}}, {"prob"});
  auto& g = m.graph;
  g.initializers["w"] = seeded({out_channels, channels, 3, 3}, 1);
  g.initializers["b"] = seeded({out_channels}, 2);
  g.initializers["fc"] = seeded({out_channels, 5}, 3);
  g.initializers["fcb"] = seeded({5}, 4);
  g.nodes = {make("conv", "Conv", {"x", "w", "b"}, {"c"}, {{"pads", Attribute::of_ints({1, 1, 1, 1})}}),
             make("relu", "Relu", {"c"}, {"r"}),
             make("pool", "MaxPool", {"r"}, {"p"}, {{"kernel_shape", Attribute::of_ints({2, 2})},
                                                   {"strides", Attribute::of_ints({2, 2})}}),
             make("gap", "GlobalAveragePool", {"p"}, {"gp"}),
             make("flat", "Flatten", {"gp"}, {"f"}),
             make("fc", "Gemm", {"f", "fc", "fcb"}, {"logits"}),
             make("softmax", "Softmax", {"logits"}, {"prob"}, {{"axis", Attribute::of_int(1)}})};
  return m;
}

// Self-attention without heads on x[batch, 6, 8]: projections, LayerNorm, Q.K^T, Softmax, .V,
// then a Shape chain reshapes the result to [batch, 48].
Model small_attention() {
  Model m = base({{"x", Shape{kBatch, 6, 8}}}, {"y"});
  auto& g = m.graph;
  g.initializers["wq"] = seeded({8, 8}, 5);
  g.initializers["wk"] = seeded({8, 8}, 6);
  g.initializers["wv"] = seeded({8, 8}, 7);
  g.initializers["gamma"] = seeded({8}, 8, 1.0f);
  g.initializers["beta"] = seeded({8}, 9);
  g.initializers["zero"] = Tensor::from_vector<int64_t>({1}, {0});
  g.initializers["one"] = Tensor::from_vector<int64_t>({1}, {1});
  g.initializers["minus1"] = Tensor::from_vector<int64_t>({1}, {-1});
  g.nodes = {make("ln", "LayerNormalization", {"x", "gamma", "beta"}, {"h"}, {{"axis", Attribute::of_int(-1)}}),
             make("q", "MatMul", {"h", "wq"}, {"q"}),
             make("k", "MatMul", {"h", "wk"}, {"k"}),
             make("v", "MatMul", {"h", "wv"}, {"v"}),
             make("kt", "Transpose", {"k"}, {"kt"}, {{"perm", Attribute::of_ints({0, 2, 1})}}),
             make("scores", "MatMul", {"q", "kt"}, {"s"}),
             make("softmax", "Softmax", {"s"}, {"a"}, {{"axis", Attribute::of_int(-1)}}),
             make("context", "MatMul", {"a", "v"}, {"c"}),
             make("shape", "Shape", {"c"}, {"shape"}),
             make("batch", "Slice", {"shape", "zero", "one"}, {"n"}),
             make("target", "Concat", {"n", "minus1"}, {"target"}, {{"axis", Attribute::of_int(0)}}),
             make("reshape", "Reshape", {"c", "target"}, {"y"})};
  return m;
}

// An embedding lookup and a mean over the sequence: ids[batch, 5] -> [batch, 4].
Model small_embedding() {
  Model m = base({{"ids", Shape{kBatch, 5}}}, {"y"}, DType::kI64);
  m.graph.initializers["emb"] = seeded({10, 4}, 10);
  m.graph.nodes = {make("lookup", "Gather", {"emb", "ids"}, {"e"}, {{"axis", Attribute::of_int(0)}}),
                   make("mean", "ReduceMean", {"e"}, {"y"}, {{"axes", Attribute::of_ints({1})},
                                                            {"keepdims", Attribute::of_int(0)}})};
  return m;
}

// x[batch, 4] -> one node `op` (with `attrs` and an optional weight) -> y.
Model one_node(const std::string& op, std::map<std::string, Attribute> attrs, std::vector<std::string> extra = {}) {
  Model m = base({{"x", Shape{kBatch, 4}}}, {"y"});
  std::vector<std::string> in = {"x"};
  for (const auto& e : extra) in.push_back(e);
  m.graph.nodes = {make("culprit", op, in, {"y"}, std::move(attrs))};
  return m;
}

BatchSplitCheck check(const Model& m, const Shapes& full, int64_t sub) {
  InferOptions io;
  io.evaluator = reference::constant_evaluator();
  Model typed = m;
  infer_types(typed, io);
  return analyze_batch_split(typed, full, sub);
}

TEST(BatchSplitCheck, AcceptsGraphsThatKeepTheSamplesApart) {
  for (int64_t sub : {1, 2, 3}) {
    SCOPED_TRACE(sub);
    auto cnn = check(small_cnn(), {{"x", {4, 3, 8, 8}}}, sub);
    EXPECT_TRUE(cnn.ok) << cnn.why;
    auto att = check(small_attention(), {{"x", {4, 6, 8}}}, sub);
    EXPECT_TRUE(att.ok) << att.why;
    auto emb = check(small_embedding(), {{"ids", {4, 5}}}, sub);
    EXPECT_TRUE(emb.ok) << emb.why;
  }
}

TEST(BatchSplitCheck, NamesWhatTiesTheSamplesTogether) {
  const Shapes x = {{"x", {4, 4}}};
  struct Case {
    Model model;
    const char* why;
  };
  Model concat = one_node("Concat", {{"axis", Attribute::of_int(0)}}, {"x"});
  Model gemm_t = one_node("Gemm", {{"transA", Attribute::of_int(1)}}, {"x"});
  Model lstm = base({{"x", Shape{kBatch, 2, 4}}}, {"y"});
  lstm.graph.initializers["w"] = seeded({1, 8, 4}, 1);
  lstm.graph.initializers["r"] = seeded({1, 8, 2}, 2);
  lstm.graph.nodes = {make("culprit", "LSTM", {"x", "w", "r"}, {"y"}, {{"hidden_size", Attribute::of_int(2)}})};
  Model fixed = base({{"x", Shape{4, 4}}}, {"y"});
  fixed.graph.nodes = {make("culprit", "Relu", {"x"}, {"y"})};
  std::vector<Case> cases;
  cases.push_back({one_node("ReduceSum", {{"keepdims", Attribute::of_int(1)}}), "reduces over every axis"});
  cases.push_back({one_node("ReduceMax", {{"axes", Attribute::of_ints({0})}}), "works along axis 0"});
  cases.push_back({one_node("Softmax", {{"axis", Attribute::of_int(0)}}), "works along axis 0"});
  cases.push_back({one_node("Transpose", {{"perm", Attribute::of_ints({1, 0})}}), "moves axis 0"});
  cases.push_back({one_node("CumSum", {}, {"zero"}), "works along axis 0"});
  cases.back().model.graph.initializers["zero"] = Tensor::from_vector<int64_t>({}, {0});
  cases.push_back({concat, "works along axis 0"});
  cases.push_back({gemm_t, "multiplies samples with each other"});
  cases.push_back({lstm, "is not known to keep the samples apart"});
  cases.push_back({fixed, "does not take a batch of 2"});
  for (const auto& c : cases) {
    SCOPED_TRACE(c.why);
    const Shapes full = c.model.graph.inputs.size() == 1 && c.model.graph.types.at("x").shape->size() == 3
                            ? Shapes{{"x", {4, 2, 4}}}
                            : x;
    auto r = check(c.model, full, 2);
    EXPECT_FALSE(r.ok);
    EXPECT_THAT(r.why, HasSubstr(c.why));
    if (std::string(c.why).find("batch of") == std::string::npos) EXPECT_THAT(r.why, HasSubstr("culprit"));
  }
  // A batch of one, or a sub-batch as large as the batch, is nothing to split.
  EXPECT_FALSE(check(small_cnn(), {{"x", {1, 3, 8, 8}}}, 1).ok);
  EXPECT_FALSE(check(small_cnn(), {{"x", {4, 3, 8, 8}}}, 4).ok);
}

// An engine with a profile of batches 1..max at `threads` threads; every input's axis 0 dynamic.
std::shared_ptr<EngineRuntime> engine(const Model& m, const Shapes& opt, int64_t max_batch, int threads) {
  BuildConfig cfg;
  cfg.time_tactics = false;
  cfg.threads = threads;
  cfg.profiles.resize(1);
  for (const auto& [name, dims] : opt) {
    auto lo = dims, hi = dims;
    lo[0] = 1;
    hi[0] = max_batch;
    cfg.profiles[0].inputs[name] = {lo, dims, hi};
  }
  BuildResult built = build_engine(m, cfg);
  return std::make_shared<EngineRuntime>(built.model, built.info, threads);
}

void expect_near(const Tensor& got, const Tensor& want, double tol) {
  ASSERT_EQ(got.shape(), want.shape());
  const auto g = got.to_double_vector(), w = want.to_double_vector();
  for (size_t i = 0; i < g.size(); ++i) ASSERT_NEAR(g[i], w[i], tol * (1 + std::abs(w[i]))) << "element " << i;
}

reference::TensorMap inputs_for(const Model& m, const Shapes& shapes, uint32_t seed) {
  reference::TensorMap in;
  for (const auto& [name, dims] : shapes) {
    if (m.graph.types.at(name).dtype == DType::kI64) {
      Tensor t(DType::kI64, dims);
      for (int64_t i = 0; i < t.numel(); ++i) t.mutable_data<int64_t>()[i] = (i * 7 + seed) % 10;
      in[name] = t;
    } else {
      in[name] = seeded(dims, seed);
    }
  }
  return in;
}

// Split runs against the unsplit engine and the reference executor, at several batch sizes on one
// context (the plan and the workers' arenas change with the size). Tolerance 1e-5 relative: the
// one-thread and two-thread kernels may sum in another order.
void expect_split_matches(const Model& m, const Shapes& opt, std::vector<int64_t> batches, int64_t want_sub) {
  auto split = engine(m, opt, 8, 2);
  auto whole = engine(m, opt, 8, 2);
  whole->set_batch_split(false);
  Context cs(split), cw(whole);
  reference::Executor ref(m);
  for (int64_t n : batches) {
    SCOPED_TRACE("batch " + std::to_string(n));
    Shapes shapes = opt;
    for (auto& [name, dims] : shapes) dims[0] = n;
    const auto in = inputs_for(m, shapes, static_cast<uint32_t>(n));
    const auto got = cs.run(in);
    ASSERT_NE(cs.last_plan(), nullptr);
    EXPECT_EQ(cs.last_plan()->split(), n > 1) << cs.last_plan()->why;
    if (n == 1) EXPECT_EQ(cs.last_plan()->why, "a batch of 1");
    if (n > 1 && want_sub > 0) EXPECT_EQ(cs.last_plan()->sub, std::min(want_sub, (n + 1) / 2));
    const auto base_out = cw.run(in);
    EXPECT_FALSE(cw.last_plan()->split());
    EXPECT_EQ(cw.last_plan()->why, "off");
    const auto want = ref.run(in);
    for (const auto& [name, w] : want) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(got.count(name));
      expect_near(got.at(name), w, 1e-4);
      expect_near(got.at(name), base_out.at(name), 1e-5);
    }
  }
}

TEST(BatchSplitRun, CnnMatchesTheUnsplitEngineAndTheReference) {
  // Tiny activations: the sub-batch is the batch split evenly over 2 threads (7 = 4 + 3).
  expect_split_matches(small_cnn(), {{"x", {4, 3, 8, 8}}}, {4, 7, 1, 8, 2}, 4);
}

TEST(BatchSplitRun, OneSamplePerSubBatchWhenASamplesActivationsAreLarge) {
  // The conv's output alone is 64 x 64 x 64 floats (1 MiB) per sample: one sample per sub-batch.
  expect_split_matches(small_cnn(64, 64), {{"x", {2, 3, 64, 64}}}, {3, 2}, 1);
}

TEST(BatchSplitRun, AttentionAndEmbeddingMatch) {
  expect_split_matches(small_attention(), {{"x", {4, 6, 8}}}, {5, 8}, 0);
  expect_split_matches(small_embedding(), {{"ids", {4, 5}}}, {6, 3}, 0);
}

TEST(BatchSplitRun, AGraphThatMixesSamplesRunsWhole) {
  // y = x - mean over the batch: splitting would change the answer, so the plan says why not.
  Model m = base({{"x", Shape{kBatch, 4}}}, {"y"});
  m.graph.nodes = {make("mean", "ReduceMean", {"x"}, {"mu"}, {{"axes", Attribute::of_ints({0})}}),
                   make("center", "Sub", {"x", "mu"}, {"y"})};
  auto rt = engine(m, {{"x", {4, 4}}}, 8, 2);
  Context ctx(rt);
  const auto in = inputs_for(m, {{"x", {6, 4}}}, 3);
  const auto got = ctx.run(in);
  ASSERT_NE(ctx.last_plan(), nullptr);
  EXPECT_FALSE(ctx.last_plan()->split());
  EXPECT_THAT(ctx.last_plan()->why, HasSubstr("axis 0"));
  reference::Executor ref(m);
  expect_near(got.at("y"), ref.run(in).at("y"), 1e-5);
  // One thread: nothing to split over.
  auto one = engine(small_cnn(), {{"x", {4, 3, 8, 8}}}, 8, 1);
  Context c1(one);
  c1.run(inputs_for(small_cnn(), {{"x", {4, 3, 8, 8}}}, 1));
  EXPECT_EQ(c1.last_plan()->why, "one thread");
}

TEST(BatchSplitRun, ShapesOutsideTheProfileAreStillRefused) {
  auto rt = engine(small_cnn(), {{"x", {4, 3, 8, 8}}}, 8, 2);
  Context ctx(rt);
  try {
    ctx.run(inputs_for(small_cnn(), {{"x", {9, 3, 8, 8}}}, 1));
    FAIL() << "a batch of 9 is outside the profile 1..8";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("outside optimization profile"));
  }
}

TEST(BatchSplitCli, BenchReportsThePlanAndTheFlagTurnsItOff) {
  const fs::path dir = fs::temp_directory_path() / ("kiln_batch_split_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string model = (dir / "cnn.onnx").string();
  save_onnx(small_cnn(), model);
  const std::string common = "bench " + model + " --shapes x:6x3x8x8 --threads 2 --iterations 3 --warmup-ms 0";
  auto on = kiln_test::run_kiln_cli(common + " --json " + (dir / "on.json").string());
  EXPECT_EQ(on.code, 0) << on.out;
  EXPECT_THAT(on.out, HasSubstr("batch:      split into sub-batches of 3"));
  auto off = kiln_test::run_kiln_cli(common + " --no-batch-split --json " + (dir / "off.json").string());
  EXPECT_EQ(off.code, 0) << off.out;
  EXPECT_THAT(off.out, HasSubstr("batch:      not split (off)"));
  std::ifstream f(dir / "on.json");
  const auto j = nlohmann::json::parse(f);
  EXPECT_EQ(j.at("batch_split").at("sub_batch"), 3);
  fs::remove_all(dir);
}

}  // namespace
