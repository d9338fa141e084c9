// The memory planner, and whole programs against the reference executor.
#include <random>

#include "backends/cpu/program.h"
#include "cpu_test_support.h"
#include "runtime/builder.h"
#include "runtime/runtime.h"

namespace kiln_cpu_test {
namespace {

using cpu::BufferRequest;
using cpu::plan_memory;

bool overlaps(size_t a, size_t as, size_t b, size_t bs) { return a < b + bs && b < a + as; }

// No two buffers alive at the same step may share bytes; checked on random lifetimes.
TEST(MemoryPlanner, LiveBuffersNeverOverlap) {
  std::mt19937 rng(42);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<BufferRequest> reqs;
    for (int i = 0; i < 40; ++i) {
      int a = static_cast<int>(rng() % 30), len = static_cast<int>(rng() % 6);
      reqs.push_back({1 + rng() % 5000, a, a + len});
    }
    auto plan = plan_memory(reqs, 64);
    ASSERT_EQ(plan.offsets.size(), reqs.size());
    size_t sum = 0;
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(plan.offsets[i] % 64, 0u);
      EXPECT_LE(plan.offsets[i] + reqs[i].bytes, plan.arena_bytes);
      sum += (reqs[i].bytes + 63) / 64 * 64;
      for (size_t j = 0; j < i; ++j) {
        const bool live_together = reqs[i].first_step <= reqs[j].last_step && reqs[j].first_step <= reqs[i].last_step;
        if (live_together) {
          EXPECT_FALSE(overlaps(plan.offsets[i], reqs[i].bytes, plan.offsets[j], reqs[j].bytes))
              << "buffers " << i << " and " << j;
        }
      }
    }
    EXPECT_EQ(plan.total_bytes, sum);
    EXPECT_LE(plan.arena_bytes, plan.total_bytes);
  }
}

// A chain a -> b -> c -> d: each buffer dies when the next is written, so two slots suffice.
TEST(MemoryPlanner, ChainReusesMemory) {
  std::vector<BufferRequest> reqs = {{1000, 0, 1}, {1000, 1, 2}, {1000, 2, 3}, {1000, 3, 4}};
  auto plan = plan_memory(reqs, 64);
  EXPECT_EQ(plan.total_bytes, 4 * 1024u);
  EXPECT_EQ(plan.arena_bytes, 2 * 1024u);
}

TEST(MemoryPlanner, RejectsBadInput) {
  EXPECT_THROW(plan_memory({{10, 3, 2}}, 64), Error);
  EXPECT_THROW(plan_memory({{10, 0, 1}}, 48), Error);
}

Model small_cnn() {
  // x[1,3,9,9] -> Conv(4, 3x3, pad 1) + bias -> Relu -> MaxPool 2x2 -> Reshape [1, 64] -> Gemm -> y
  Model m;
  m.opsets[""] = 17;
  Graph& g = m.graph;
  g.inputs = {"x"};
  g.types["x"] = TensorType{DType::kF32, Shape{Dim(1), Dim(3), Dim(8), Dim(8)}};
  g.initializers["w"] = random_tensor(DType::kF32, {4, 3, 3, 3}, 1);
  g.initializers["b"] = random_tensor(DType::kF32, {4}, 2);
  g.initializers["shape"] = Tensor::from_vector<int64_t>({2}, {1, 64});
  g.initializers["fw"] = random_tensor(DType::kF32, {64, 10}, 3);
  g.initializers["fb"] = random_tensor(DType::kF32, {10}, 4);
  auto attr_ints = [](std::vector<int64_t> v) { return Attribute::of_ints(std::move(v)); };
  g.nodes.push_back(Node{"conv", "Conv", "", {"x", "w", "b"}, {"c"}, {{"pads", attr_ints({1, 1, 1, 1})}}});
  g.nodes.push_back(Node{"relu", "Relu", "", {"c"}, {"r"}, {}});
  g.nodes.push_back(Node{"pool", "MaxPool", "", {"r"}, {"p"},
                         {{"kernel_shape", attr_ints({2, 2})}, {"strides", attr_ints({2, 2})}}});
  g.nodes.push_back(Node{"flat", "Reshape", "", {"p", "shape"}, {"f"}, {}});
  g.nodes.push_back(Node{"fc", "Gemm", "", {"f", "fw", "fb"}, {"y"}, {}});
  g.outputs = {"y", "r"};  // an intermediate is also an output
  return m;
}

void expect_engine_matches_reference(const Model& model, const reference::TensorMap& inputs, bool time_tactics) {
  reference::Executor ref(model);
  auto want = ref.run(inputs);
  BuildConfig cfg;
  cfg.time_tactics = time_tactics;
  for (const auto& [name, t] : inputs) cfg.profiles.resize(1), cfg.profiles[0].inputs[name] = {t.shape(), t.shape(), t.shape()};
  BuildResult built = build_engine(model, cfg);
  auto rt = std::make_shared<EngineRuntime>(built.model, built.info);
  Context ctx(rt);
  auto got = ctx.run(inputs);
  for (const auto& [name, w] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    expect_close(got.at(name), w, 1e-4, 1e-5);
  }
  // Running again on the same context reuses the arena and gives the same result.
  auto again = ctx.run(inputs);
  for (const auto& [name, w] : want) expect_close(again.at(name), got.at(name), 0, 0);
}

TEST(Program, SmallCnnMatchesReference) {
  Model m = small_cnn();
  reference::TensorMap in{{"x", random_tensor(DType::kF32, {1, 3, 8, 8}, 9)}};
  expect_engine_matches_reference(m, in, false);
  expect_engine_matches_reference(m, in, true);
}

TEST(Program, ReportsPeakBelowTotalAndKernelCount) {
  Model m = small_cnn();
  auto p = cpu::Program::compile(m, {{"x", {1, 3, 8, 8}}});
  EXPECT_GT(p->activation_bytes_total(), 0u);
  EXPECT_LE(p->arena_bytes(), p->activation_bytes_total());
  // Reshape is an alias: no kernel runs for it.
  EXPECT_LT(p->kernel_count(), p->steps().size() + 1);
  ASSERT_EQ(p->node_tactics().size(), m.graph.nodes.size());
  for (const auto& t : p->node_tactics()) EXPECT_FALSE(t.empty());
}

TEST(Program, OutputThatIsAnInputOrConstantIsCopied) {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(3)}};
  m.graph.initializers["k"] = random_tensor(DType::kF32, {3}, 5);
  m.graph.nodes.push_back(Node{"add", "Add", "", {"x", "k"}, {"y"}, {}});
  m.graph.outputs = {"y", "x", "k"};
  reference::TensorMap in{{"x", random_tensor(DType::kF32, {2, 3}, 6)}};
  expect_engine_matches_reference(m, in, false);
}

// A dynamic-batch model runs at any batch inside its profile and refuses shapes outside it.
TEST(Program, DynamicShapesWithinProfile) {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim(4)}};
  m.graph.initializers["w"] = random_tensor(DType::kF32, {4, 5}, 7);
  m.graph.nodes.push_back(Node{"mm", "MatMul", "", {"x", "w"}, {"h"}, {}});
  m.graph.nodes.push_back(Node{"shape", "Shape", "", {"h"}, {"s"}, {}});
  m.graph.nodes.push_back(Node{"r", "Reshape", "", {"h", "s"}, {"y"}, {}});
  m.graph.outputs = {"y"};
  BuildConfig cfg;
  cfg.profiles.resize(1);
  cfg.profiles[0].inputs["x"] = {{1, 4}, {4, 4}, {8, 4}};
  BuildResult built = build_engine(m, cfg);
  auto rt = std::make_shared<EngineRuntime>(built.model, built.info);
  Context ctx(rt);
  reference::Executor ref(m);
  for (int64_t b : {1, 3, 8}) {
    reference::TensorMap in{{"x", random_tensor(DType::kF32, {b, 4}, 10 + static_cast<uint32_t>(b))}};
    auto got = ctx.run(in);
    expect_close(got.at("y"), ref.run(in).at("y"), 1e-4, 1e-5);
  }
  reference::TensorMap too_big{{"x", random_tensor(DType::kF32, {9, 4}, 1)}};
  try {
    ctx.run(too_big);
    ADD_FAILURE() << "batch 9 is outside the profile";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("outside optimization profile 0"), std::string::npos) << e.what();
  }
  reference::TensorMap wrong_dtype{{"x", Tensor(DType::kF64, {2, 4})}};
  EXPECT_THROW(ctx.run(wrong_dtype), Error);
}

TEST(Program, BadProfilesAreRefused) {
  Model m = small_cnn();
  BuildConfig cfg;
  cfg.profiles.resize(1);
  cfg.profiles[0].inputs["x"] = {{1, 3, 8, 8}, {1, 3, 8, 8}, {1, 3, 8, 9}};  // a static dim given a range
  EXPECT_THROW(build_engine(m, cfg), Error);
  cfg.profiles[0].inputs.clear();
  cfg.profiles[0].inputs["nope"] = {{1}, {1}, {1}};
  EXPECT_THROW(build_engine(m, cfg), Error);
  cfg.profiles[0].inputs.clear();
  cfg.profiles[0].inputs["x"] = {{1, 3, 8, 8}, {1, 3, 8}, {1, 3, 8, 8}};
  EXPECT_THROW(build_engine(m, cfg), Error);
}

}  // namespace
}  // namespace kiln_cpu_test

namespace kiln_cpu_test {
namespace {

// A residual FusedConv whose Z dies at the node writes its output into Z's buffer (a sum post-op
// in place); the result must still match the reference, and Z's producer must not be clobbered
// while another consumer still needs it.
TEST(Program, ResidualConvAccumulatesInPlace) {
  for (bool z_used_later : {false, true}) {
    Model m;
    m.opsets[""] = 17;
    m.opsets["kiln"] = 1;
    Graph& g = m.graph;
    g.inputs = {"x"};
    g.types["x"] = TensorType{DType::kF32, Shape{Dim(2), Dim(16), Dim(10), Dim(10)}};
    g.initializers["wa"] = random_tensor(DType::kF32, {16, 16, 3, 3}, 21);
    g.initializers["wb"] = random_tensor(DType::kF32, {16, 16, 1, 1}, 22);
    g.initializers["wc"] = random_tensor(DType::kF32, {16, 16, 1, 1}, 23);
    g.initializers["bc"] = random_tensor(DType::kF32, {16}, 24);
    auto ints = [](std::vector<int64_t> v) { return Attribute::of_ints(std::move(v)); };
    g.nodes.push_back(Node{"a", "Conv", "", {"x", "wa"}, {"za"}, {{"pads", ints({1, 1, 1, 1})}}});
    g.nodes.push_back(Node{"b", "Conv", "", {"x", "wb"}, {"xb"}, {}});
    g.nodes.push_back(Node{"c", "FusedConv", "kiln", {"xb", "wc", "bc", "za"}, {"yc"},
                           {{"activation", Attribute::of_string("Relu")}}});
    g.nodes.push_back(Node{"e", "Sigmoid", "", {"yc"}, {"y"}, {}});  // a graph output is never in place
    g.outputs = {"y"};
    if (z_used_later) {
      g.nodes.push_back(Node{"d", "Relu", "", {"za"}, {"r"}, {}});
      g.outputs.push_back("r");
    }
    reference::TensorMap in{{"x", random_tensor(DType::kF32, {2, 16, 10, 10}, 25)}};
    cpu::CompileOptions untimed;
    untimed.time_tactics = false;  // dnnl.conv.nhwc everywhere, so the residual can go in place
    auto p = cpu::Program::compile(m, {{"x", {2, 16, 10, 10}}}, untimed);
    bool inplace = false;
    for (const auto& s : p->steps()) inplace |= s.impl.find("in place") != std::string::npos;
    EXPECT_EQ(inplace, !z_used_later) << "Z may be overwritten only when nothing reads it later";
    // Every conv tactic forced in turn: the ones that read Z after writing Y (gemm epilogue,
    // Winograd) must not be given Z's buffer, and all must match the reference.
    reference::Executor ref(m);
    const auto want = ref.run(in);
    for (const char* tactic : {"dnnl.conv.nhwc", "dnnl.conv.nchw", "dnnl.conv.winograd"}) {
      SCOPED_TRACE(tactic);
      std::vector<std::string> forced(g.nodes.size(), "");
      forced[0] = forced[1] = forced[2] = tactic;
      cpu::CompileOptions fo;
      fo.time_tactics = false;
      fo.forced_tactics = &forced;
      auto fp = cpu::Program::compile(m, {{"x", {2, 16, 10, 10}}}, fo);
      Tensor arena(DType::kU8, {static_cast<int64_t>(fp->arena_bytes()) + 64});
      Tensor scratch(DType::kU8, {static_cast<int64_t>(fp->scratch_bytes()) + 64});
      std::vector<Tensor> outs;
      std::vector<void*> out_ptrs;
      for (const auto& o : fp->outputs()) {
        outs.emplace_back(o.dtype, o.shape);
        out_ptrs.push_back(outs.back().mutable_raw());
      }
      fp->run(arena.mutable_raw(), scratch.mutable_raw(), {in.at("x").raw()}, out_ptrs);
      for (size_t i = 0; i < outs.size(); ++i) expect_close(outs[i], want.at(fp->outputs()[i].name), 1e-4, 1e-4);
    }
    expect_engine_matches_reference(m, in, true);
    expect_engine_matches_reference(m, in, false);
  }
}

}  // namespace
}  // namespace kiln_cpu_test
