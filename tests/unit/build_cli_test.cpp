// `kiln build`, and engines through `run`, `inspect` and `bench` on the CPU backend, end to end:
// static and min/opt/max profiles (shapes inside and outside), outputs against the reference
// executor, the timing cache (hits, byte-identical engines), the engine description, per-step
// profiles, concurrent streams, and the errors of bad flags and values.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <regex>

#include "onnx/onnx_import.h"
#include "test_support.h"
#include "util/mapped_file.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace kiln;

namespace {

using Result = kiln_test::CliResult;
Result kiln_cli(const std::string& args) { return kiln_test::run_kiln_cli(args); }

Tensor seeded(const std::vector<int64_t>& shape, uint32_t seed) {
  Tensor t(DType::kF32, shape);
  float* p = t.mutable_data<float>();
  uint32_t s = seed * 2654435761u + 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s = s * 1664525u + 1013904223u;
    p[i] = static_cast<float>(s >> 8) / static_cast<float>(1 << 24) - 0.5f;
  }
  return t;
}

class BuildCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_build_cli_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // x[batch,3,8,8] -> Conv(5, 3x3, pad 1) + bias -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y[batch,4]
    kiln_test::ModelBuilder b(17);
    b.input("x", DType::kF32, Shape{Dim::sym("batch"), Dim(3), Dim(8), Dim(8)})
        .init("w", seeded({5, 3, 3, 3}, 1))
        .init("b", seeded({5}, 2))
        .init("fw", seeded({5, 4}, 3))
        .init("fb", seeded({4}, 4));
    b.m.graph.nodes.push_back(Node{"conv", "Conv", "", {"x", "w", "b"}, {"c"}, {{"pads", Attribute::of_ints({1, 1, 1, 1})}}});
    b.m.graph.nodes.push_back(Node{"relu", "Relu", "", {"c"}, {"r"}, {}});
    b.m.graph.nodes.push_back(Node{"gap", "GlobalAveragePool", "", {"r"}, {"p"}, {}});
    b.m.graph.nodes.push_back(Node{"flat", "Flatten", "", {"p"}, {"f"}, {}});
    b.m.graph.nodes.push_back(Node{"fc", "Gemm", "", {"f", "fw", "fb"}, {"y"}, {}});
    b.m.graph.outputs = {"y"};
    model_ = (dir_ / "cnn.onnx").string();
    save_onnx(b.m, model_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  json read_json(const fs::path& p) {
    std::ifstream f(p);
    EXPECT_TRUE(f.good()) << p;
    return json::parse(f);
  }

  // Runs `target` (an engine or the model) on the cpu backend and the model on the reference
  // executor with the same seeded input of `shape`; the outputs agree to FP32 reordering error.
  void expect_run_matches_reference(const std::string& target, const std::string& shape, const std::string& tag) {
    SCOPED_TRACE(tag + " at " + shape);
    Result cpu = kiln_cli("run " + target + " --shapes x:" + shape + " --seed 11 -o " + path(tag + "_cpu"));
    Result ref = kiln_cli("run " + model_ + " --backend reference --shapes x:" + shape + " --seed 11 -o " +
                          path(tag + "_ref"));
    ASSERT_EQ(cpu.code, 0) << cpu.out;
    ASSERT_EQ(ref.code, 0) << ref.out;
    EXPECT_NE(cpu.out.find("backend: cpu"), std::string::npos) << cpu.out;
    EXPECT_NE(ref.out.find("backend: reference"), std::string::npos) << ref.out;
    Tensor a = read_npy(dir_ / (tag + "_cpu") / "y.npy"), b = read_npy(dir_ / (tag + "_ref") / "y.npy");
    ASSERT_EQ(a.shape(), b.shape());
    EXPECT_EQ(a.shape().front(), std::stoll(shape.substr(0, shape.find('x'))));
    auto va = a.to_double_vector(), vb = b.to_double_vector();
    for (size_t i = 0; i < va.size(); ++i) EXPECT_NEAR(va[i], vb[i], 1e-5 + 1e-4 * std::abs(vb[i])) << i;
  }

  fs::path dir_;
  std::string model_;
};

}  // namespace

TEST_F(BuildCliTest, StaticShapesBuildRunsLikeTheReference) {
  const std::string eng = path("static.kiln");
  Result r = kiln_cli("build " + model_ + " -o " + eng + " --shapes x:2x3x8x8 --threads 2");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* s : {"nodes:        5 -> ", "profile 0: x 2x3x8x8", "kernels:", "per inference, 2 threads",
                        "peak activations", "summed over all activations", "build time:", "passes", "tactic selection",
                        "timing cache:", "misses", "backend cpu", "engine:       " })
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  expect_run_matches_reference(eng, "2x3x8x8", "engine");
  // An ONNX model on the cpu backend is built in memory at the input shapes.
  expect_run_matches_reference(model_, "3x3x8x8", "onnx");
  Result m = kiln_cli("run " + model_ + " --shapes x:3x3x8x8 --threads 1");
  ASSERT_EQ(m.code, 0) << m.out;
  EXPECT_NE(m.out.find("built in memory: 5 -> "), std::string::npos) << m.out;
  EXPECT_NE(m.out.find("cpu, 1 threads"), std::string::npos) << m.out;
  // Without --shapes an engine runs at its profile's opt shapes; others are refused.
  Result d = kiln_cli("run " + eng + " -o " + path("d"));
  ASSERT_EQ(d.code, 0) << d.out;
  EXPECT_EQ(read_npy(dir_ / "d" / "y.npy").shape(), (std::vector<int64_t>{2, 4}));
  Result out = kiln_cli("run " + eng + " --shapes x:3x3x8x8");
  EXPECT_EQ(out.code, 1) << out.out;
  EXPECT_NE(out.out.find("outside optimization profile 0"), std::string::npos) << out.out;
  // The reference backend still runs an engine.
  Result ref = kiln_cli("run " + eng + " --backend reference");
  EXPECT_EQ(ref.code, 0) << ref.out;
}

TEST_F(BuildCliTest, MinOptMaxProfilesAcceptInsideAndRefuseOutside) {
  const std::string eng = path("dyn.kiln");
  Result r = kiln_cli("build " + model_ + " -o " + eng +
                      " --min-shapes x:1x3x8x8 --opt-shapes x:2x3x8x8 --max-shapes x:4x3x8x8 --threads 2");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("profile 0: x min 1x3x8x8, opt 2x3x8x8, max 4x3x8x8"), std::string::npos) << r.out;
  expect_run_matches_reference(eng, "1x3x8x8", "min");
  expect_run_matches_reference(eng, "3x3x8x8", "mid");
  Result out = kiln_cli("run " + eng + " --shapes x:5x3x8x8");
  EXPECT_EQ(out.code, 1) << out.out;
  EXPECT_NE(out.out.find("input 'x' has shape 5x3x8x8, outside optimization profile 0 (min 1x3x8x8, max 4x3x8x8)"),
            std::string::npos)
      << out.out;
  EXPECT_NE(out.out.find("rebuild the engine"), std::string::npos) << out.out;
  Result bench = kiln_cli("bench " + eng + " --shapes x:5x3x8x8 --iterations 1 --warmup-ms 0");
  EXPECT_EQ(bench.code, 1) << bench.out;
  EXPECT_NE(bench.out.find("outside optimization profile 0"), std::string::npos) << bench.out;

  // Two profiles: the k-th --min/--opt/--max-shapes form profile k.
  const std::string two = path("two.kiln");
  r = kiln_cli("build " + model_ + " -o " + two +
               " --min-shapes x:1x3x8x8 --opt-shapes x:1x3x8x8 --max-shapes x:2x3x8x8"
               " --min-shapes x:6x3x8x8 --opt-shapes x:7x3x8x8 --max-shapes x:8x3x8x8");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("profiles:     2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("profile 1: x min 6x3x8x8, opt 7x3x8x8, max 8x3x8x8"), std::string::npos) << r.out;
  expect_run_matches_reference(two, "2x3x8x8", "p0");
  expect_run_matches_reference(two, "8x3x8x8", "p1");
  out = kiln_cli("run " + two + " --shapes x:4x3x8x8");
  EXPECT_EQ(out.code, 1) << out.out;
  EXPECT_NE(out.out.find("and every other profile"), std::string::npos) << out.out;
  Result i = kiln_cli("inspect " + two);
  EXPECT_EQ(i.code, 0) << i.out;
  EXPECT_NE(i.out.find("profiles:   2"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("profile 1: x min 6x3x8x8, opt 7x3x8x8, max 8x3x8x8"), std::string::npos) << i.out;
}

TEST_F(BuildCliTest, TimingCacheIsReusedAndBuildsAreByteIdentical) {
  const std::string cache = path("tc.json");
  const std::string flags = " --shapes x:2x3x8x8 --threads 2 --timing-cache " + cache;
  Result a = kiln_cli("build " + model_ + " -o " + path("a.kiln") + flags);
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_TRUE(fs::exists(cache));
  EXPECT_NE(a.out.find("timing cache: 0 hits"), std::string::npos) << a.out;
  json c = read_json(cache);
  ASSERT_TRUE(c.contains("entries"));
  EXPECT_FALSE(c["entries"].empty());

  Result b = kiln_cli("build " + model_ + " -o " + path("b.kiln") + flags);
  ASSERT_EQ(b.code, 0) << b.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(b.out, m, std::regex("timing cache: (\\d+) hits, (\\d+) misses"))) << b.out;
  EXPECT_GT(std::stoi(m[1]), 0) << b.out;
  EXPECT_EQ(std::stoi(m[2]), 0) << b.out;
  // Same tactics from the cache: the same engine, byte for byte, every time.
  Result b2 = kiln_cli("build " + model_ + " -o " + path("b2.kiln") + flags);
  ASSERT_EQ(b2.code, 0) << b2.out;
  const auto bytes_a = read_file_bytes(path("a.kiln")), bytes_b = read_file_bytes(path("b.kiln"));
  EXPECT_FALSE(bytes_b.empty());
  EXPECT_TRUE(bytes_b == read_file_bytes(path("b2.kiln")));
  EXPECT_TRUE(bytes_a == bytes_b);  // the cache holds the first build's winners

  // A cache measured on another machine is ignored with a warning, then rewritten.
  const std::string other = path("other.json");
  std::ofstream(other) << R"({"format": 1, "target": "some other CPU [sse2]", "entries": {}})";
  Result o = kiln_cli("build " + model_ + " -o " + path("o.kiln") + " --shapes x:2x3x8x8 --timing-cache " + other);
  EXPECT_EQ(o.code, 0) << o.out;
  EXPECT_NE(o.out.find("kiln: warning: timing cache"), std::string::npos) << o.out;
  EXPECT_NE(o.out.find("ignored"), std::string::npos) << o.out;
  EXPECT_NE(read_json(other).at("target").get<std::string>(), "some other CPU [sse2]");
  // A malformed one is an error.
  std::ofstream(path("bad.json")) << "{ not json";
  Result bad = kiln_cli("build " + model_ + " -o " + path("x.kiln") + " --shapes x:2x3x8x8 --timing-cache " + path("bad.json"));
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("malformed"), std::string::npos) << bad.out;
}

TEST_F(BuildCliTest, InspectEngineShowsProfilesTacticsAndMemory) {
  const std::string eng = path("i.kiln");
  Result r = kiln_cli("build " + model_ + " -o " + eng + " --shapes x:2x3x8x8 --threads 2 --verbose");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("tactic log:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("steps at the opt shapes"), std::string::npos) << r.out;

  Result t = kiln_cli("inspect " + eng);
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("backend cpu"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("threads:    2"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("per inference"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("memory:     peak activations"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("<- Conv:conv + Relu:relu"), std::string::npos) << t.out;

  Result js = kiln_cli("inspect --json " + eng);
  ASSERT_EQ(js.code, 0) << js.out;
  json j = json::parse(js.out);
  const json& e = j.at("engine");
  EXPECT_EQ(e.at("target").at("backend"), "cpu");
  EXPECT_EQ(e.at("threads"), 2);
  EXPECT_GT(e.at("kernels").get<int>(), 0);
  const uint64_t peak = e.at("memory").at("peak_bytes"), total = e.at("memory").at("total_bytes");
  EXPECT_GT(peak, 0u);
  EXPECT_LE(peak, total);
  ASSERT_EQ(e.at("profiles").size(), 1u);
  EXPECT_EQ(e["profiles"][0].at("x").at("opt"), json::array({2, 3, 8, 8}));
  ASSERT_EQ(e.at("nodes").size(), j.at("nodes").get<size_t>());
  bool fused_conv = false;
  for (const auto& n : e["nodes"]) {
    EXPECT_FALSE(n.at("tactic").get<std::string>().empty()) << n.dump();
    if (n.at("op") == "kiln::FusedConv") {
      fused_conv = true;
      EXPECT_EQ(n.at("fused_ops"), json::array({"Conv:conv", "Relu:relu"})) << n.dump();
    }
  }
  EXPECT_TRUE(fused_conv) << e.dump(2);
}

TEST_F(BuildCliTest, BenchEngineDumpProfileJsonAndStreams) {
  const std::string eng = path("bench.kiln");
  ASSERT_EQ(kiln_cli("build " + model_ + " -o " + eng + " --shapes x:2x3x8x8 --threads 1").code, 0);
  const fs::path out = dir_ / "b.json";
  Result r = kiln_cli("bench " + eng + " --iterations 6 --warmup-ms 0 --dump-profile --json " + out.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("executor:   cpu"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("=== Profile (6 runs, step by step"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("kiln::FusedConv"), std::string::npos) << r.out;
  json j = read_json(out);
  EXPECT_EQ(j.at("executor"), "cpu");
  EXPECT_EQ(j.at("engine_file"), true);
  EXPECT_EQ(j.at("threads_used"), j.at("threads"));  // default: the core count, whatever the engine was timed with
  EXPECT_EQ(j.at("streams"), 1);
  EXPECT_EQ(j.at("iterations"), 6);
  EXPECT_EQ(j.at("inputs")[0].at("shape"), json::array({2, 3, 8, 8}));  // the profile's opt shape
  EXPECT_EQ(j.at("batch"), 2);
  EXPECT_GT(j.at("engine").at("kernels").get<int>(), 0);
  EXPECT_LE(j["engine"].at("memory_peak_bytes").get<uint64_t>(), j["engine"].at("memory_total_bytes").get<uint64_t>());
  for (const char* k : {"min", "mean", "median", "p90", "p95", "p99", "max"})
    EXPECT_TRUE(j.at("latency_ms").contains(k)) << k;
  EXPECT_GT(j.at("throughput").at("inferences_per_s").get<double>(), 0.0);
  const json& p = j.at("profile");
  EXPECT_EQ(p.at("runs"), 6);
  ASSERT_FALSE(p.at("steps").empty());
  double pct = 0, sum = 0;
  for (const auto& s : p["steps"]) {
    for (const char* k : {"name", "op", "tactic", "impl"}) EXPECT_TRUE(s.at(k).is_string()) << k << s.dump();
    EXPECT_FALSE(s.at("tactic").get<std::string>().empty()) << s.dump();
    EXPECT_NEAR(s.at("mean_ms").get<double>() * 6, s.at("total_ms").get<double>(), 1e-9);
    pct += s.at("percent").get<double>();
    sum += s.at("total_ms").get<double>();
  }
  EXPECT_NEAR(sum, p.at("total_ms").get<double>(), 1e-9);
  if (sum > 0) {
    EXPECT_NEAR(pct, 100.0, 1e-6);
  }
  EXPECT_FALSE(p.at("ops").empty());

  // Two streams, each its own context on the one engine, run concurrently.
  const fs::path s2 = dir_ / "s2.json";
  r = kiln_cli("bench " + eng + " --streams 2 --iterations 5 --warmup-ms 10 --json " + s2.string());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("2 streams"), std::string::npos) << r.out;
  j = read_json(s2);
  EXPECT_EQ(j.at("streams"), 2);
  EXPECT_EQ(j.at("iterations"), 10);
  ASSERT_EQ(j.at("per_stream").size(), 2u);
  for (const auto& s : j["per_stream"]) EXPECT_EQ(s.at("iterations"), 5);
  EXPECT_NEAR(j.at("throughput").at("inferences_per_s").get<double>(),
              10.0 / (j.at("total_ms").get<double>() / 1000.0), 1e-6 * j["throughput"]["inferences_per_s"].get<double>());

  // An ONNX model on the cpu backend, with streams and the default thread count.
  r = kiln_cli("bench " + model_ + " --shapes x:1x3x8x8 --streams 2 --iterations 2 --warmup-ms 0");
  EXPECT_EQ(r.code, 0) << r.out;
}

TEST_F(BuildCliTest, BadFlagsExit2AndBadValuesExit1) {
  const std::string o = " -o " + path("e.kiln");
  for (const char* flags : {"--threads 0", "--workspace -1", "--opt-level 9", "--opt-level -1", "--no-such-flag",
                            "--threads x"}) {
    Result r = kiln_cli("build " + model_ + o + " --shapes x:1x3x8x8 " + flags);
    EXPECT_EQ(r.code, 2) << flags << "\n" << r.out;
    EXPECT_FALSE(r.out.empty()) << flags;
  }
  Result r = kiln_cli("build " + model_ + o + " --opt-level 9");
  EXPECT_NE(r.out.find("--opt-level"), std::string::npos) << r.out;
  r = kiln_cli("build " + model_ + o + " --workspace -1");
  EXPECT_NE(r.out.find("--workspace"), std::string::npos) << r.out;
  EXPECT_EQ(kiln_cli("build " + model_).code, 2);  // no -o

  struct Case {
    std::string flags, message;
  };
  for (const Case& c : std::vector<Case>{
           {"--shapes x:2xqx8x8", "--shapes: bad dimension 'q'"},
           {"--shapes x2x3x8x8", "should look like NAME:1x3x224x224"},
           {"--shapes z:1x3x8x8", "--shapes: 'z' is not an input"},
           {"--shapes x:1x4x8x8", "static (3)"},
           {"--shapes x:1x3x8", "has rank 4"},
           {"--min-shapes x:1x3x8x8 --opt-shapes x:2x3x8x8", "go together"},
           {"--min-shapes x:4x3x8x8 --opt-shapes x:2x3x8x8 --max-shapes x:8x3x8x8", "min <= opt <= max"},
           {"--min-shapes x:1x3x8x8 --opt-shapes y:2x3x8x8 --max-shapes x:8x3x8x8", "--opt-shapes: 'y' is not an input"},
           {"--shapes x:1x3x8x8 --min-shapes x:1x3x8x8 --opt-shapes x:1x3x8x8 --max-shapes x:2x3x8x8", "both"},
           {"--disable-pass nope", "unknown pass 'nope'"}}) {
    r = kiln_cli("build " + model_ + o + " " + c.flags);
    EXPECT_EQ(r.code, 1) << c.flags << "\n" << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << c.flags << "\n" << r.out;
  }
  r = kiln_cli("build " + path("missing.onnx") + o);
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("missing.onnx: cannot open"), std::string::npos) << r.out;

  // Accepted values: level 5 behaves as 3 (and says so), a workspace limit, no timing; a dynamic
  // input given no shapes is built for batch 1 with a note.
  r = kiln_cli("build " + model_ + o + " --opt-level 5 --workspace 0.5 --no-timing");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("behaves as 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("not timed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("no shapes given, built for 1x3x8x8"), std::string::npos) << r.out;
  r = kiln_cli("build --help");
  EXPECT_EQ(r.code, 0) << r.out;
  for (const char* s : {"--min-shapes", "--timing-cache", "--workspace", "behave as 3", "profile k"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;

  // run and bench.
  for (const char* flags : {"--backend gpu", "--threads 0"}) {
    EXPECT_EQ(kiln_cli("run " + model_ + " " + flags).code, 2) << flags;
    EXPECT_EQ(kiln_cli("bench " + model_ + " --iterations 1 " + flags).code, 2) << flags;
  }
  EXPECT_EQ(kiln_cli("bench " + model_ + " --iterations 1 --streams 0").code, 2);
  r = kiln_cli("bench " + model_ + " --iterations 1 --backend reference --streams 2");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("--streams 2 needs --backend cpu"), std::string::npos) << r.out;
}
