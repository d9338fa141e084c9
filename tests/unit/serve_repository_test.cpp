// kiln serve model repositories: version policies, model-name validation against hostile names, the
// scan (good model, missing config, empty version folder, ignored folders, symlinks escaping the
// repository) with its index, and loading versions: ONNX built on load (and run), engine files
// checked against their profiles, and the memory budget.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/engine_file.h"
#include "kiln/error.h"
#include "onnx/onnx_import.h"
#include "runtime/builder.h"
#include "runtime/runtime.h"
#include "serve/repository.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace kiln;
using namespace kiln::serve;
using kiln_test::ModelBuilder;

namespace {

// y = Relu(x + w), x: f32[batch, 4].
Model add_relu_model() {
  ModelBuilder b(17);
  b.input("x", DType::kF32, Shape{Dim::sym("batch"), Dim(4)});
  b.init("w", Tensor::from_vector<float>({4}, {1, -2, 3, -4}));
  b.node("Add", {"x", "w"}, {"s"}, {}, "add0");
  b.node("Relu", {"s"}, {"y"}, {}, "relu0");
  b.m.graph.outputs = {"y"};
  return b.m;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

const IndexEntry* find_entry(const std::vector<IndexEntry>& index, const std::string& name,
                             const std::string& version) {
  for (const auto& e : index)
    if (e.name == name && e.version == version) return &e;
  return nullptr;
}
// The result points into `index`: a temporary would leave it dangling.
const IndexEntry* find_entry(std::vector<IndexEntry>&& index, const std::string& name, const std::string& version) = delete;

class ServeRepository : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = fs::temp_directory_path() / ("kiln_serve_repo_test_" + std::to_string(::getpid()));
    fs::remove_all(base_);
    repo_ = base_ / "repo";
    outside_ = base_ / "outside";
    fs::create_directories(repo_);
    fs::create_directories(outside_);
  }
  void TearDown() override { fs::remove_all(base_); }

  void write(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  void onnx(const fs::path& p) {
    fs::create_directories(p.parent_path());
    save_onnx(add_relu_model(), p);
  }
  RepositoryOptions fast() {
    RepositoryOptions o;
    o.time_tactics = false;
    o.threads = 1;
    return o;
  }

  fs::path base_, repo_, outside_;
};

TEST(ServeVersionPolicy, SelectsVersions) {
  VersionPolicy latest2;
  latest2.num_versions = 2;
  EXPECT_EQ(select_versions(latest2, {1, 5, 2}, "c"), (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(select_versions(VersionPolicy{}, {1, 5, 2}, "c"), (std::vector<int64_t>{5}));  // default: latest 1
  latest2.num_versions = 9;
  EXPECT_EQ(select_versions(latest2, {3}, "c"), (std::vector<int64_t>{3}));
  VersionPolicy all;
  all.kind = VersionPolicy::Kind::kAll;
  EXPECT_EQ(select_versions(all, {5, 1, 2}, "c"), (std::vector<int64_t>{1, 2, 5}));
  VersionPolicy specific;
  specific.kind = VersionPolicy::Kind::kSpecific;
  specific.versions = {1, 5};
  EXPECT_EQ(select_versions(specific, {1, 2, 5}, "c"), (std::vector<int64_t>{1, 5}));
  specific.versions = {1, 3};
  const std::string msg = error_of([&] { select_versions(specific, {1, 2, 5}, "repo/m/config.pbtxt"); });
  EXPECT_NE(msg.find("repo/m/config.pbtxt: version_policy names version 3 but there is no version folder 3"),
            std::string::npos)
      << msg;
}

TEST(ServeModelName, RejectsHostileNames) {
  for (const char* good : {"resnet50", "bert-base_v1.2", "a", "..a", "a.."})
    EXPECT_TRUE(is_valid_model_name(good)) << good;
  for (const std::string& bad : std::vector<std::string>{"", ".", "..", "../x", "a/b", "/etc", "a\\b", "a b",
                                                         std::string("a\0b", 3), "m\n", "~x"}) {
    EXPECT_FALSE(is_valid_model_name(bad)) << bad;
    const std::string msg = error_of([&] { validate_model_name(bad); });
    EXPECT_NE(msg.find("invalid model name"), std::string::npos) << msg;
  }
}

TEST_F(ServeRepository, ScanReportsEveryModel) {
  // good: versions 1, 2, 5 (+ ignored "latest", "05" and a file named 7); latest 2 serves 2 and 5.
  write(repo_ / "good" / "config.pbtxt", "max_batch_size: 4\nversion_policy { latest { num_versions: 2 } }\n");
  for (const char* v : {"1", "2", "5"}) onnx(repo_ / "good" / v / "model.onnx");
  onnx(repo_ / "good" / "latest" / "model.onnx");
  onnx(repo_ / "good" / "05" / "model.onnx");
  write(repo_ / "good" / "7", "not a folder");
  // noconfig: a version but no config.pbtxt.
  onnx(repo_ / "noconfig" / "1" / "model.onnx");
  // nomodel: version 1 holds no model file.
  write(repo_ / "nomodel" / "config.pbtxt", "max_batch_size: 1\n");
  fs::create_directories(repo_ / "nomodel" / "1");
  // badconfig: unknown field.
  write(repo_ / "badconfig" / "config.pbtxt", "max_batch_size: 1\nfoo: 2\n");
  onnx(repo_ / "badconfig" / "1" / "model.onnx");
  // specific: names a version that is not there.
  write(repo_ / "specific" / "config.pbtxt", "version_policy { specific { versions: [1, 3] } }\n");
  onnx(repo_ / "specific" / "1" / "model.onnx");
  // noversions: a config and nothing else.
  write(repo_ / "noversions" / "config.pbtxt", "max_batch_size: 1\n");
  // Symbolic links out of the repository: a model folder, a version folder and a model file.
  write(outside_ / "m" / "config.pbtxt", "max_batch_size: 1\n");
  onnx(outside_ / "m" / "1" / "model.onnx");
  fs::create_directory_symlink(outside_ / "m", repo_ / "escape");
  write(repo_ / "vescape" / "config.pbtxt", "max_batch_size: 1\n");
  fs::create_directory_symlink(outside_ / "m" / "1", repo_ / "vescape" / "1");
  write(repo_ / "fescape" / "config.pbtxt", "max_batch_size: 1\n");
  fs::create_directories(repo_ / "fescape" / "1");
  fs::create_symlink(outside_ / "m" / "1" / "model.onnx", repo_ / "fescape" / "1" / "model.onnx");
  // A link that stays inside is fine.
  write(repo_ / "inlink" / "config.pbtxt", "max_batch_size: 1\n");
  fs::create_directory_symlink(repo_ / "good" / "1", repo_ / "inlink" / "1");
  // Ignored: files, hidden folders. Listed unavailable: a folder with a name Kiln refuses.
  write(repo_ / "README.md", "models");
  onnx(repo_ / ".git" / "1" / "model.onnx");
  write(repo_ / "bad name" / "config.pbtxt", "max_batch_size: 1\n");

  ModelRepository repo(repo_, fast());
  std::vector<std::string> names;
  for (const auto& m : repo.models()) names.push_back(m.name);
  EXPECT_EQ(names, (std::vector<std::string>{"bad name", "badconfig", "escape", "fescape", "good", "inlink", "noconfig",
                                             "nomodel", "noversions", "specific", "vescape"}));

  const ModelEntry& good = repo.model("good");
  EXPECT_EQ(good.error, "");
  ASSERT_EQ(good.versions.size(), 2u);
  EXPECT_EQ(good.versions[0].version, 2);
  EXPECT_EQ(good.versions[1].version, 5);
  EXPECT_EQ(good.versions[1].format, ModelFormat::kOnnx);
  EXPECT_EQ(good.versions[1].model_file.filename(), "model.onnx");
  ASSERT_TRUE(good.config.has_value());
  EXPECT_EQ(good.config->max_batch_size, 4);

  const auto index = repo.index();
  auto reason = [&](const std::string& name, const std::string& version) {
    const IndexEntry* e = find_entry(index, name, version);
    return e ? e->state + ": " + e->reason : std::string("<absent>");
  };
  EXPECT_EQ(reason("good", "2"), "UNAVAILABLE: not loaded");
  EXPECT_EQ(reason("good", "5"), "UNAVAILABLE: not loaded");
  EXPECT_EQ(reason("good", "1"), "<absent>");
  EXPECT_EQ(reason("inlink", "1"), "UNAVAILABLE: not loaded");
  EXPECT_NE(reason("noconfig", "").find("UNAVAILABLE: no config.pbtxt"), std::string::npos);
  EXPECT_NE(reason("nomodel", "1").find("UNAVAILABLE: no model.kiln or model.onnx"), std::string::npos);
  EXPECT_NE(reason("badconfig", "").find("config.pbtxt:2:1: unknown field \"foo\""), std::string::npos)
      << reason("badconfig", "");
  EXPECT_NE(reason("specific", "").find("no version folder 3"), std::string::npos);
  EXPECT_NE(reason("noversions", "").find("no version folders"), std::string::npos);
  EXPECT_NE(reason("escape", "").find("symbolic link leading outside the repository"), std::string::npos);
  EXPECT_NE(reason("vescape", "1").find("symbolic link leading outside the repository"), std::string::npos);
  EXPECT_NE(reason("fescape", "1").find("symbolic link leading outside the repository"), std::string::npos);
  EXPECT_NE(reason("bad name", "").find("invalid model name"), std::string::npos);

  // Refused before any filesystem use: hostile names and unknown models.
  for (const char* hostile : {"../outside/m", "a/b", "", "..", "."})
    EXPECT_NE(error_of([&] { repo.model(hostile); }).find("invalid model name"), std::string::npos) << hostile;
  EXPECT_NE(error_of([&] { repo.load_model_version("../outside/m", 1); }).find("invalid model name"),
            std::string::npos);
  EXPECT_NE(error_of([&] { repo.model("absent"); }).find("no model \"absent\""), std::string::npos);
  // Loading what the scan refused names the reason.
  EXPECT_NE(error_of([&] { repo.load_model_version("escape", 1); }).find("symbolic link"), std::string::npos);
  EXPECT_NE(error_of([&] { repo.load_model_version("fescape", 1); }).find("symbolic link"), std::string::npos);
  EXPECT_NE(error_of([&] { repo.load_model_version("nomodel", 1); }).find("no model.kiln or model.onnx"),
            std::string::npos);
  EXPECT_NE(error_of([&] { repo.load_model_version("good", 1); }).find("no served version 1 (served: 2, 5"),
            std::string::npos);

  // A rescan sees a new version.
  onnx(repo_ / "good" / "9" / "model.onnx");
  repo.scan();
  EXPECT_EQ(repo.model("good").versions.back().version, 9);
}

TEST_F(ServeRepository, LoadingAnOnnxVersionBuildsAndRuns) {
  write(repo_ / "addrelu" / "config.pbtxt",
        "max_batch_size: 4\ninstance_group { count: 2 kind: KIND_CPU }\ndynamic_batching { preferred_batch_size: [2] "
        "}\n");
  onnx(repo_ / "addrelu" / "1" / "model.onnx");
  ModelRepository repo(repo_, fast());
  auto loaded = repo.load_model_version("addrelu", 1);
  ASSERT_TRUE(loaded && loaded->engine);
  EXPECT_TRUE(loaded->built);
  EXPECT_EQ(loaded->version, 1);
  // Auto-completed from the model.
  ASSERT_EQ(loaded->config.inputs.size(), 1u);
  EXPECT_EQ(loaded->config.inputs[0].name, "x");
  EXPECT_EQ(loaded->config.inputs[0].dims, (std::vector<int64_t>{4}));
  ASSERT_EQ(loaded->config.outputs.size(), 1u);
  EXPECT_EQ(loaded->config.outputs[0].name, "y");
  // The profile covers batches 1..4.
  ASSERT_EQ(loaded->engine->info().profiles.size(), 1u);
  EXPECT_EQ(loaded->engine->info().profiles[0].inputs.at("x").min, (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(loaded->engine->info().profiles[0].inputs.at("x").max, (std::vector<int64_t>{4, 4}));
  // The timing cache lands in the version folder.
  EXPECT_EQ(fs::path(loaded->timing_cache), repo_ / "addrelu" / "1" / "timing_cache.json");
  EXPECT_TRUE(fs::exists(repo_ / "addrelu" / "1" / "timing_cache.json"));
  // Weights: w, four floats.
  EXPECT_EQ(loaded->weight_bytes, 16u);
  EXPECT_EQ(loaded->memory_bytes, 16u + 2 * loaded->activation_bytes);

  // It runs: relu(x + [1, -2, 3, -4]) at batch 1 and 3.
  Context ctx(loaded->engine);
  auto one = ctx.run({{"x", Tensor::from_vector<float>({1, 4}, {0.5f, 1.f, -5.f, 6.f})}});
  const auto y1 = one.at("y").values<float>();
  EXPECT_EQ(std::vector<float>(y1.begin(), y1.end()), (std::vector<float>{1.5f, 0.f, 0.f, 2.f}));
  auto three = ctx.run({{"x", Tensor::from_vector<float>({3, 4}, {0, 0, 0, 0, -1, 3, -3, 5, 1, 1, 1, 1})}});
  const auto y3 = three.at("y").values<float>();
  EXPECT_EQ(std::vector<float>(y3.begin(), y3.end()), (std::vector<float>{1, 0, 3, 0, 0, 1, 0, 1, 2, 0, 4, 0}));
  // Batch 5 is beyond max_batch_size, so beyond the profile.
  EXPECT_THROW(ctx.run({{"x", Tensor(DType::kF32, {5, 4})}}), Error);

  const auto index = repo.index();  // find_entry points into it
  const IndexEntry* e = find_entry(index, "addrelu", "1");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->state, "READY");
  repo.mark_unloaded("addrelu", 1);
  const auto after = repo.index();
  ASSERT_NE(find_entry(after, "addrelu", "1"), nullptr);
  EXPECT_EQ(find_entry(after, "addrelu", "1")->reason, "not loaded");
}

TEST_F(ServeRepository, TimingCacheOptions) {
  write(repo_ / "a" / "config.pbtxt", "max_batch_size: 2\nkiln { build { timing_cache: \"tc/cache.json\" } }\n");
  onnx(repo_ / "a" / "3" / "model.onnx");
  write(repo_ / "b" / "config.pbtxt", "max_batch_size: 2\n");
  onnx(repo_ / "b" / "1" / "model.onnx");
  RepositoryOptions o = fast();
  o.cache_dir = base_ / "caches";
  ModelRepository repo(repo_, o);
  repo.load_model_version("a", 3);
  EXPECT_TRUE(fs::exists(repo_ / "a" / "tc" / "cache.json"));  // the config's path wins
  repo.load_model_version("b", 1);
  EXPECT_TRUE(fs::exists(base_ / "caches" / "b" / "1" / "timing_cache.json"));
  EXPECT_FALSE(fs::exists(repo_ / "b" / "1" / "timing_cache.json"));
}

TEST_F(ServeRepository, MemoryBudgetRefusesAModelThatDoesNotFit) {
  // 16 bytes of weights alone exceed a budget of 8.
  write(repo_ / "tight" / "config.pbtxt", "max_batch_size: 2\nkiln { memory_budget_bytes: 8 }\n");
  onnx(repo_ / "tight" / "1" / "model.onnx");
  write(repo_ / "roomy" / "config.pbtxt", "max_batch_size: 2\nkiln { memory_budget_bytes: 1048576 }\n");
  onnx(repo_ / "roomy" / "1" / "model.onnx");
  ModelRepository repo(repo_, fast());
  const std::string msg = error_of([&] { repo.load_model_version("tight", 1); });
  EXPECT_NE(msg.find("model \"tight\" version 1 needs"), std::string::npos) << msg;
  EXPECT_NE(msg.find("over its memory_budget_bytes 8"), std::string::npos) << msg;
  const auto index = repo.index();  // find_entry points into it
  const IndexEntry* e = find_entry(index, "tight", "1");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->state, "UNAVAILABLE");
  EXPECT_NE(e->reason.find("memory_budget_bytes"), std::string::npos);
  EXPECT_NO_THROW(repo.load_model_version("roomy", 1));
}

TEST_F(ServeRepository, EngineVersionsAreCheckedAgainstTheirProfiles) {
  // An engine built for batches 1..4.
  BuildConfig cfg;
  cfg.time_tactics = false;
  cfg.threads = 1;
  OptimizationProfile p;
  p.inputs["x"] = ProfileDims{{1, 4}, {2, 4}, {4, 4}};
  cfg.profiles = {p};
  BuildResult r = build_engine(add_relu_model(), cfg);
  fs::create_directories(repo_ / "eng4" / "1");
  save_engine(r.model, r.info, repo_ / "eng4" / "1" / "model.kiln");
  write(repo_ / "eng4" / "config.pbtxt",
        "platform: \"kiln\"\nmax_batch_size: 4\ninput { name: \"x\" data_type: TYPE_FP32 dims: [4] }\n");
  fs::create_directories(repo_ / "eng8" / "1");
  fs::copy_file(repo_ / "eng4" / "1" / "model.kiln", repo_ / "eng8" / "1" / "model.kiln");
  write(repo_ / "eng8" / "config.pbtxt", "max_batch_size: 8\n");

  ModelRepository repo(repo_, fast());
  EXPECT_EQ(repo.model("eng4").versions[0].format, ModelFormat::kEngine);
  auto loaded = repo.load_model_version("eng4", 1);
  EXPECT_FALSE(loaded->built);
  Context ctx(loaded->engine);
  auto out = ctx.run({{"x", Tensor::from_vector<float>({2, 4}, {1, 1, 1, 1, -2, 2, -4, 4})}});
  const auto y = out.at("y").values<float>();
  EXPECT_EQ(std::vector<float>(y.begin(), y.end()), (std::vector<float>{2, 0, 4, 0, 0, 0, 0, 0}));

  const std::string msg = error_of([&] { repo.load_model_version("eng8", 1); });
  EXPECT_NE(msg.find("max_batch_size 8 exceeds the engine's profiles"), std::string::npos) << msg;
}

TEST_F(ServeRepository, DynamicDimsBesidesTheBatchNeedARange) {
  ModelBuilder b(17);
  b.input("x", DType::kF32, Shape{Dim::sym("batch"), Dim::sym("seq")});
  b.node("Relu", {"x"}, {"y"}, {}, "relu0");
  fs::create_directories(repo_ / "seq" / "1");
  save_onnx(b.m, repo_ / "seq" / "1" / "model.onnx");
  write(repo_ / "seq" / "config.pbtxt", "max_batch_size: 2\n");
  fs::create_directories(repo_ / "seqr" / "1");
  save_onnx(b.m, repo_ / "seqr" / "1" / "model.onnx");
  write(repo_ / "seqr" / "config.pbtxt",
        "max_batch_size: 2\nkiln { build { input_range { name: \"x\" min: [1] opt: [8] max: [16] } } }\n");
  ModelRepository repo(repo_, fast());
  const std::string msg = error_of([&] { repo.load_model_version("seq", 1); });
  EXPECT_NE(msg.find("input \"x\" has a dynamic dim at 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("input_range"), std::string::npos) << msg;

  auto loaded = repo.load_model_version("seqr", 1);
  EXPECT_EQ(loaded->engine->info().profiles[0].inputs.at("x").max, (std::vector<int64_t>{2, 16}));
  Context ctx(loaded->engine);
  auto out = ctx.run({{"x", Tensor::from_vector<float>({1, 3}, {-1, 0, 2})}});
  const auto y = out.at("y").values<float>();
  EXPECT_EQ(std::vector<float>(y.begin(), y.end()), (std::vector<float>{0, 0, 2}));
}

TEST(ServeRepositoryRoot, MissingRootIsAnIoError) {
  try {
    ModelRepository repo("/nonexistent/kiln/repo");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/kiln/repo"), std::string::npos);
  }
}

}  // namespace
