// `kiln bench` end to end on a tiny model: the JSON figures and their consistency, the timing
// rules (--iterations, --duration, warm-up), --threads, --opt-level, --dump-profile, on the cpu
// backend (the default) and the reference executor, and the errors (bad flags exit 2, bad shapes
// and files exit 1). Engines, profiles and --streams: build_cli_test.cpp.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backends/gpu/loader.h"
#include "onnx/onnx_import.h"
#include "test_support.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace kiln;

namespace {

using Result = kiln_test::CliResult;
Result kiln_cli(const std::string& args) { return kiln_test::run_kiln_cli(args); }

class BenchCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_bench_cli_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // y = Relu(Identity(x) + w), x: f32[batch,3]; the Identity is removed at --opt-level > 0.
    Model m;
    m.opsets[""] = 17;
    m.graph.inputs = {"x"};
    m.graph.outputs = {"y"};
    m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim(3)}};
    m.graph.initializers["w"] = Tensor::from_vector<float>({3}, {1, -5, 0.5f});
    m.graph.nodes.push_back(Node{"id", "Identity", "", {"x"}, {"xi"}, {}});
    m.graph.nodes.push_back(Node{"add", "Add", "", {"xi", "w"}, {"s"}, {}});
    m.graph.nodes.push_back(Node{"relu", "Relu", "", {"s"}, {"y"}, {}});
    model_ = (dir_ / "m.onnx").string();
    save_onnx(m, model_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  json read_json(const fs::path& p) {
    std::ifstream f(p);
    EXPECT_TRUE(f.good()) << p;
    return json::parse(f);
  }

  fs::path dir_;
  std::string model_;
};

void expect_sane_latency(const json& j) {
  const json& l = j.at("latency_ms");
  for (const char* k : {"min", "mean", "median", "p90", "p95", "p99", "max", "stddev"})
    ASSERT_TRUE(l.contains(k)) << k << " missing: " << j.dump(2);
  const double min = l["min"], mean = l["mean"], median = l["median"], p90 = l["p90"], p95 = l["p95"],
               p99 = l["p99"], max = l["max"];
  EXPECT_GE(min, 0.0);
  EXPECT_LE(min, median);
  EXPECT_LE(median, p90);
  EXPECT_LE(p90, p95);
  EXPECT_LE(p95, p99);
  EXPECT_LE(p99, max);
  EXPECT_LE(min, mean);
  EXPECT_LE(mean, max);
  EXPECT_GE(l["stddev"].get<double>(), 0.0);
  // The summary agrees with the raw latencies (recorded up to 100000 iterations).
  const int64_t iterations = j.at("iterations");
  ASSERT_GE(iterations, 1);
  double sum = mean * static_cast<double>(iterations);
  if (iterations > 100000) {
    EXPECT_FALSE(j.contains("latencies_ms"));
  } else {
    const auto& raw = j.at("latencies_ms");
    ASSERT_EQ(static_cast<int64_t>(raw.size()), iterations);
    double lo = raw[0], hi = raw[0];
    sum = 0;
    for (const auto& v : raw) {
      lo = std::min(lo, v.get<double>());
      hi = std::max(hi, v.get<double>());
      sum += v.get<double>();
    }
    EXPECT_DOUBLE_EQ(lo, min);
    EXPECT_DOUBLE_EQ(hi, max);
    EXPECT_NEAR(sum / static_cast<double>(raw.size()), mean, 1e-9 * (1 + mean));
  }
  // Throughput: iterations over the timed wall time; the timed wall time covers every inference.
  const double total_ms = j.at("total_ms");
  EXPECT_GE(total_ms, sum * (1 - 1e-9));
  const double ips = j.at("throughput").at("inferences_per_s");
  EXPECT_NEAR(ips, static_cast<double>(iterations) / (total_ms / 1000.0), 1e-6 * ips);
  EXPECT_NEAR(j["throughput"]["items_per_s"].get<double>(), ips * j.at("batch").get<double>(), 1e-6 * ips);
}

}  // namespace

TEST_F(BenchCliTest, IterationsAndJsonFields) {
  for (const std::string backend : {"cpu", "reference"}) {
    SCOPED_TRACE(backend);
    const fs::path out = dir_ / ("r_" + backend + ".json");
    Result r = kiln_cli("bench " + model_ + " --backend " + backend + " --shapes x:4x3 --iterations 7 --warmup-ms 0 --seed 3 --json " +
                        out.string());
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("executor:   " + backend), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("inferences/s"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("items/s (batch 4)"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("median"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("p99"), std::string::npos) << r.out;
    json j = read_json(out);
    EXPECT_EQ(j.at("tool"), "kiln bench");
    EXPECT_EQ(j.at("executor"), backend);
    EXPECT_EQ(j.at("iterations"), 7);
    EXPECT_EQ(j.at("latencies_ms").size(), 7u);
    EXPECT_EQ(j.at("batch"), 4);
    EXPECT_EQ(j.at("seed"), 3);
    EXPECT_EQ(j.at("streams"), 1);
    EXPECT_EQ(j.at("engine_file"), false);
    if (backend == "reference") {
      EXPECT_EQ(j.at("threads"), 1);
      EXPECT_EQ(j.at("threads_used"), 1);
      EXPECT_FALSE(j.contains("engine"));
    } else {  // default: every core (one stream)
      EXPECT_GE(j.at("threads").get<int>(), 1);
      EXPECT_EQ(j.at("threads_used"), j.at("threads"));
      EXPECT_GT(j.at("engine").at("kernels").get<int>(), 0);
    }
    EXPECT_FALSE(j.contains("threads_note"));
    EXPECT_EQ(j.at("warmup").at("iterations"), 0);
    ASSERT_EQ(j.at("inputs").size(), 1u);
    EXPECT_EQ(j["inputs"][0].at("name"), "x");
    EXPECT_EQ(j["inputs"][0].at("dtype"), "f32");
    EXPECT_EQ(j["inputs"][0].at("shape"), json::array({4, 3}));
    EXPECT_EQ(j.at("model"), model_);
    for (const char* k : {"load", "optimize", "tactics", "prepare"})
      EXPECT_GE(j.at("setup_ms").at(k).get<double>(), 0.0) << k;
    EXPECT_FALSE(j.contains("profile"));
    expect_sane_latency(j);
  }
}

TEST_F(BenchCliTest, DurationAndWarmup) {
  const fs::path out = dir_ / "d.json";
  Result r = kiln_cli("bench " + model_ + " --duration 0.25 --warmup-ms 50 --json " + out.string());
  ASSERT_EQ(r.code, 0) << r.out;
  json j = read_json(out);
  EXPECT_GE(j.at("total_ms").get<double>(), 250.0);
  EXPECT_GE(j.at("iterations").get<int64_t>(), 1);
  EXPECT_GE(j.at("warmup").at("iterations").get<int64_t>(), 1);
  EXPECT_GE(j["warmup"].at("ms").get<double>(), 50.0);
  EXPECT_EQ(j.at("batch"), 1);  // the dynamic batch dim defaults to 1
  EXPECT_NE(r.out.find("dynamic dim batch set to 1"), std::string::npos) << r.out;
  expect_sane_latency(j);
}

TEST_F(BenchCliTest, ThreadsAreRecordedAndTheReferenceExecutorSaysItUsesOne) {
  const fs::path out = dir_ / "t.json";
  Result r = kiln_cli("bench " + model_ + " --backend reference --threads 2 --iterations 3 --warmup-ms 0 --json " +
                      out.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("single-threaded"), std::string::npos) << r.out;
  json j = read_json(out);
  EXPECT_EQ(j.at("threads"), 2);
  EXPECT_EQ(j.at("threads_used"), 1);
  EXPECT_NE(j.at("threads_note").get<std::string>().find("single-threaded"), std::string::npos);

  // The cpu backend uses what it is given.
  const fs::path cpu = dir_ / "tc.json";
  r = kiln_cli("bench " + model_ + " --threads 2 --iterations 3 --warmup-ms 0 --json " + cpu.string());
  ASSERT_EQ(r.code, 0) << r.out;
  j = read_json(cpu);
  EXPECT_EQ(j.at("executor"), "cpu");
  EXPECT_EQ(j.at("threads"), 2);
  EXPECT_EQ(j.at("threads_used"), 2);
  EXPECT_FALSE(j.contains("threads_note"));
}

TEST_F(BenchCliTest, OptLevel) {  // on the cpu backend: the in-memory build runs the passes
  const fs::path o0 = dir_ / "o0.json", o3 = dir_ / "o3.json";
  Result r0 = kiln_cli("bench " + model_ + " --opt-level 0 --iterations 2 --warmup-ms 0 --json " + o0.string());
  Result r3 = kiln_cli("bench " + model_ + " --opt-level 3 --iterations 2 --warmup-ms 0 --json " + o3.string());
  ASSERT_EQ(r0.code, 0) << r0.out;
  ASSERT_EQ(r3.code, 0) << r3.out;
  json j0 = read_json(o0), j3 = read_json(o3);
  EXPECT_EQ(j0.at("opt_level"), 0);
  EXPECT_EQ(j0.at("nodes_before"), 3);
  EXPECT_EQ(j0.at("nodes"), 3);
  EXPECT_TRUE(j0.at("passes").empty());
  EXPECT_EQ(j3.at("opt_level"), 3);
  EXPECT_EQ(j3.at("nodes_before"), 3);
  EXPECT_LT(j3.at("nodes").get<int>(), 3);  // at least the Identity is gone
  EXPECT_FALSE(j3.at("passes").empty());
}

TEST_F(BenchCliTest, DumpProfileReference) {  // the cpu profile (per step): build_cli_test.cpp
  const fs::path out = dir_ / "p.json";
  Result r = kiln_cli("bench " + model_ + " --backend reference --opt-level 0 --iterations 5 --warmup-ms 0 --dump-profile --json " +
                      out.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("=== Profile"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("add (Add)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("relu (Relu)"), std::string::npos) << r.out;
  json j = read_json(out);
  const json& p = j.at("profile");
  EXPECT_EQ(p.at("runs"), 5);
  ASSERT_EQ(p.at("nodes").size(), 3u);
  double pct = 0, sum = 0, prev = 1e300;
  for (const auto& n : p["nodes"]) {
    EXPECT_LE(n.at("total_ms").get<double>(), prev);  // sorted by time, largest first
    prev = n["total_ms"];
    sum += n["total_ms"].get<double>();
    pct += n.at("percent").get<double>();
    EXPECT_NEAR(n.at("mean_ms").get<double>() * 5, n["total_ms"].get<double>(), 1e-9);
  }
  EXPECT_NEAR(sum, p.at("total_ms").get<double>(), 1e-9);
  if (sum > 0) {
    EXPECT_NEAR(pct, 100.0, 1e-6);
  }
  EXPECT_EQ(p.at("ops").size(), 3u);
}

TEST_F(BenchCliTest, BadFlagsExit2) {
  for (const char* flags :
       {"--iterations 0", "--iterations -3", "--iterations abc", "--duration 0", "--iterations 3 --duration 1",
        "--opt-level 4", "--opt-level -1", "--threads 0", "--warmup-ms -5", "--no-such-flag", "--int-range 1"}) {
    Result r = kiln_cli("bench " + model_ + " " + std::string(flags));
    EXPECT_EQ(r.code, 2) << flags << "\n" << r.out;
    EXPECT_FALSE(r.out.empty()) << flags;
  }
  Result r = kiln_cli("bench");  // no model
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("model"), std::string::npos) << r.out;
  r = kiln_cli("bench " + model_ + " --opt-level 4");
  EXPECT_NE(r.out.find("--opt-level"), std::string::npos) << r.out;
  r = kiln_cli("bench " + model_ + " --iterations 3 --duration 1");
  EXPECT_NE(r.out.find("excludes"), std::string::npos) << r.out;
  r = kiln_cli("bench --help");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("--dump-profile"), std::string::npos) << r.out;
}

// --device for `bench` and `run`: bad values are refused, and without a GPU (or without the CUDA
// module, as in the sanitizer build) `--device cuda` fails with a clear message instead of running
// on the CPU. On a machine with a GPU the last part is skipped (the GPU tests cover it there).
TEST_F(BenchCliTest, DeviceFlag) {
  Result r = kiln_cli("bench " + model_ + " --device cuda --precision int4");
  EXPECT_EQ(r.code, 2) << r.out;
  for (const char* cmd : {"bench", "run"}) {
    r = kiln_cli(std::string(cmd) + " " + model_ + " --device gpu7");
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("is not cpu, cuda or cuda:N"), std::string::npos) << r.out;
    r = kiln_cli(std::string(cmd) + " " + model_ + " --device cuda --backend reference");
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("runs on the CPU"), std::string::npos) << r.out;
  }
  std::string why;
  if (gpu::device_count(&why) > 0) GTEST_SKIP() << "this machine has a GPU: --device cuda runs there";
  for (const char* cmd : {"bench", "run"}) {
    r = kiln_cli(std::string(cmd) + " " + model_ + " --device cuda");
    EXPECT_EQ(r.code, 1) << r.out;
    EXPECT_NE(r.out.find("error (unsupported)"), std::string::npos) << r.out;
    EXPECT_TRUE(r.out.find("no CUDA GPU") != std::string::npos ||
                r.out.find("libkiln_cuda.so could not be loaded") != std::string::npos)
        << r.out;
  }
}

TEST_F(BenchCliTest, BadShapesAndFilesExit1) {
  Result r = kiln_cli("bench " + model_ + " --iterations 1 --shapes x:4xq");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("bad dimension 'q'"), std::string::npos) << r.out;

  r = kiln_cli("bench " + model_ + " --iterations 1 --shapes x:4x5");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("static shape [batch,3]"), std::string::npos) << r.out;

  r = kiln_cli("bench " + model_ + " --iterations 1 --shapes x:4x3x1");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("has rank 2"), std::string::npos) << r.out;

  r = kiln_cli("bench " + model_ + " --iterations 1 --shapes z:4x3");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("'z' is not an input"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(inputs: x)"), std::string::npos) << r.out;

  r = kiln_cli("bench " + model_ + " --iterations 1 --shapes x4x3");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("should look like NAME:1x3x224x224"), std::string::npos) << r.out;

  r = kiln_cli("bench " + model_ + " --iterations 1 --int-range 5,5");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--int-range"), std::string::npos) << r.out;

  r = kiln_cli("bench " + (dir_ / "missing.onnx").string() + " --iterations 1");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("missing.onnx: cannot open"), std::string::npos) << r.out;

  r = kiln_cli("bench " + model_ + " --iterations 1 --json " + (dir_ / "no" / "such" / "dir.json").string());
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("cannot open for writing"), std::string::npos) << r.out;
}
