// Engine files: round trips (a small model and the optimized tiny CNN, outputs identical through
// the reference executor), weight alignment and zero-copy views, and every bad-input case the
// loader must reject with a clear kiln::Error: truncation, flipped bytes, bad magic, other format
// or Kiln versions, a target lacking ISA features, offsets past the end, unknown ops, an empty
// file and a directory. Plus `kiln build` + `kiln run ENGINE` end to end.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "backends/reference/executor.h"
#include "engine/engine_file.h"
#include "engine/engine_generated.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"
#include "util/mapped_file.h"
#include "util/npy.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace kiln;
using kiln_test::ModelBuilder;

namespace {

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_engine_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// y = LeakyRelu(Relu(x + w)), x: f32[batch,4]; 'b' is an unused initializer of odd size, so the
// next one must still start 64-byte aligned.
Model small_model() {
  ModelBuilder b(17);
  b.input("x", DType::kF32, Shape{Dim::sym("batch"), Dim(4)});
  b.init("w", Tensor::from_vector<float>({4}, {1, -2, 3, -4}));
  b.init("b", Tensor::from_vector<float>({3}, {0.5f, 0.25f, 0.125f}));
  b.node("Add", {"x", "w"}, {"s"}, {}, "add0");
  b.node("Relu", {"s"}, {"r"}, {}, "relu0");
  b.node("LeakyRelu", {"r"}, {"y"}, {{"alpha", Attribute::of_float(0.2f)}}, "leaky0");
  b.m.graph.outputs = {"y"};
  b.m.producer = "test";
  return b.m;
}

std::vector<uint8_t> read_all(const fs::path& p) { return read_file_bytes(p); }
void write_all(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void fix_crc(std::vector<uint8_t>& bytes);  // below

// Expects load_engine to throw a kiln::Error whose message holds every needle.
void expect_load_error(const fs::path& p, std::vector<std::string> needles, const EngineLoadOptions& opt = {}) {
  try {
    load_engine(p, opt);
    FAIL() << "expected an error loading " << p;
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in: " << msg;
  }
}

uint32_t crc_of(const std::vector<uint8_t>& bytes) {
  uint32_t c = static_cast<uint32_t>(::crc32(0, nullptr, 0));
  return static_cast<uint32_t>(::crc32(c, bytes.data() + 64, static_cast<uInt>(bytes.size() - 64)));
}
void fix_crc(std::vector<uint8_t>& bytes) {
  uint32_t c = crc_of(bytes);
  std::memcpy(bytes.data() + 48, &c, 4);
}

reference::TensorMap run_model(Model m, const reference::TensorMap& in) {
  reference::Executor exec(std::move(m));
  return exec.run(in);
}

}  // namespace

TEST_F(EngineTest, RoundTripSmallModel) {
  Model m = small_model();
  infer_types(m);
  fs::path p = dir_ / "small.kiln";
  EngineInfo info;
  info.opt_level = 2;
  info.profile_shapes["x"] = {2, 4};
  save_engine(m, info, p);
  LoadedEngine e = load_engine(p);
  EXPECT_EQ(e.info.kiln_version, KILN_VERSION);
  EXPECT_EQ(e.info.opt_level, 2);
  EXPECT_EQ(e.info.profile_shapes.at("x"), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(e.info.target.backend, "reference");
  EXPECT_EQ(e.header.format_version, kEngineFormatVersion);
  EXPECT_EQ(e.header.file_size, fs::file_size(p));
  const Graph& g = e.model.graph;
  EXPECT_EQ(g.inputs, (std::vector<std::string>{"x"}));
  EXPECT_EQ(g.outputs, (std::vector<std::string>{"y"}));
  EXPECT_EQ(g.type_of("x")->to_string(), "f32[batch,4]");
  ASSERT_EQ(g.nodes.size(), 3u);
  EXPECT_EQ(g.nodes[2].op_type, "LeakyRelu");
  EXPECT_FLOAT_EQ(g.nodes[2].attr("alpha")->f, 0.2f);
  EXPECT_EQ(e.model.opsets.at(""), 17);
  EXPECT_EQ(e.model.producer, "test");

  reference::TensorMap in{{"x", Tensor::from_vector<float>({2, 4}, {0, 1, -5, 2, 3, 3, 3, 3})}};
  auto a = run_model(small_model(), in);
  auto b = run_model(std::move(e.model), in);
  EXPECT_EQ(a.at("y").to_double_vector(), b.at("y").to_double_vector());

  // Same bytes from memory.
  LoadedEngine f = load_engine_from_memory(read_all(p));
  EXPECT_EQ(f.model.graph.nodes.size(), 3u);
}

// Format 2: tactics per node, several profiles, threads, memory figures and the cpu backend.
TEST_F(EngineTest, RoundTripCpuBuildFields) {
  Model m = small_model();
  infer_types(m);
  EngineInfo info;
  info.target.backend = "cpu";
  info.target.required_isa = {};
  info.node_tactics = {"kiln.eltwise", "", "reference"};
  OptimizationProfile p0, p1;
  p0.inputs["x"] = {{1, 4}, {2, 4}, {8, 4}};
  p1.inputs["x"] = {{9, 4}, {16, 4}, {32, 4}};
  info.profiles = {p0, p1};
  info.threads = 3;
  info.memory_peak = 4096;
  info.memory_total = 12288;
  info.kernels = 2;
  fs::path p = dir_ / "cpu.kiln";
  save_engine(m, info, p);
  LoadedEngine e = load_engine(p);
  EXPECT_EQ(e.info.target.backend, "cpu");
  EXPECT_EQ(e.info.node_tactics, info.node_tactics);
  ASSERT_EQ(e.info.profiles.size(), 2u);
  EXPECT_EQ(e.info.profiles[1].inputs.at("x").min, (std::vector<int64_t>{9, 4}));
  EXPECT_EQ(e.info.profiles[0].inputs.at("x").opt, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(e.info.profiles[1].inputs.at("x").max, (std::vector<int64_t>{32, 4}));
  EXPECT_EQ(e.info.threads, 3);
  EXPECT_EQ(e.info.memory_peak, 4096u);
  EXPECT_EQ(e.info.memory_total, 12288u);
  EXPECT_EQ(e.info.kernels, 2u);
  // A tactic list that does not match the nodes is refused at save time.
  info.node_tactics = {"kiln.eltwise"};
  EXPECT_THROW(save_engine(m, info, dir_ / "bad.kiln"), Error);
}

// A profile with min > opt in the file is an invalid engine, named as such.
TEST_F(EngineTest, InvertedProfileIsRefused) {
  Model m = small_model();
  infer_types(m);
  EngineInfo info;
  OptimizationProfile p0;
  p0.inputs["x"] = {{4, 4}, {2, 4}, {8, 4}};
  info.profiles = {p0};
  fs::path p = dir_ / "inverted.kiln";
  save_engine(m, info, p);
  try {
    load_engine(p);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("min <= opt <= max"), std::string::npos) << e.what();
  }
}

TEST_F(EngineTest, InitializersAreAlignedViewsIntoTheMapping) {
  Model m = small_model();
  fs::path p = dir_ / "a.kiln";
  save_engine(m, EngineInfo{}, p);
  LoadedEngine e = load_engine(p);
  std::vector<uint8_t> bytes = read_all(p);
  uint64_t woff;
  std::memcpy(&woff, bytes.data() + 32, 8);
  EXPECT_EQ(woff % 64, 0u);
  // The mapping of the same file lies elsewhere in memory, but the offsets inside the blob are
  // 64-aligned and the tensors' bytes are the file's bytes at those offsets.
  for (const auto& [name, t] : e.model.graph.initializers) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u) << name;
    EXPECT_EQ(std::memcmp(t.raw(), m.graph.initializers.at(name).raw(), t.nbytes()), 0) << name;
  }
  // Views, not copies: 'b' and 'w' lie in one mapping, 64 bytes apart (sorted by name, 12 bytes padded).
  const auto* pb = static_cast<const uint8_t*>(e.model.graph.initializers.at("b").raw());
  const auto* pw = static_cast<const uint8_t*>(e.model.graph.initializers.at("w").raw());
  EXPECT_EQ(pw - pb, 64);
  // And the mapping outlives the LoadedEngine while a tensor holds it.
  Tensor w = e.model.graph.initializers.at("w");
  e = LoadedEngine{};
  EXPECT_EQ(w.to_double_vector(), (std::vector<double>{1, -2, 3, -4}));
}

TEST_F(EngineTest, RoundTripOptimizedTinyCnn) {
  const fs::path src = fs::path(KILN_SOURCE_DIR) / "examples" / "tiny_cnn.onnx";
  Model original = load_onnx(src);
  Model m = load_onnx(src);
  require_supported(m);
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(m, infer);
  PassContext ctx;
  ctx.evaluator = reference::constant_evaluator();
  PassManager::standard().run(m, ctx);
  infer_types(m, infer);
  const size_t nodes = m.graph.nodes.size();
  bool fused = false;
  for (const Node& n : m.graph.nodes) fused |= n.attr("fused_ops") != nullptr;
  EXPECT_TRUE(fused);
  fs::path p = dir_ / "tiny.kiln";
  save_engine(m, EngineInfo{}, p);
  LoadedEngine e = load_engine(p);
  EXPECT_EQ(e.model.graph.nodes.size(), nodes);
  for (const Node& n : e.model.graph.nodes)
    if (const Attribute* f = n.attr("fused_ops")) {
      EXPECT_FALSE(f->strings.empty());
    }

  reference::Executor ref(std::move(original));
  reference::TensorMap in;
  for (const auto& name : ref.model().graph.inputs) {
    const TensorType* t = ref.model().graph.type_of(name);
    std::vector<int64_t> dims;
    for (const Dim& d : *t->shape) dims.push_back(d.known() ? d.value : 1);
    Tensor x(t->dtype, dims);
    float* xv = x.mutable_data<float>();
    for (int64_t i = 0; i < x.numel(); ++i) xv[i] = static_cast<float>((i * 37) % 17) / 8.0f - 1.0f;
    in[name] = x;
  }
  auto a = ref.run(in);
  auto b = run_model(std::move(e.model), in);
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    // The optimized graph (folded BatchNorm, fused convs) is within rounding of the original...
    auto va = t.to_double_vector(), vb = b.at(name).to_double_vector();
    ASSERT_EQ(va.size(), vb.size());
    for (size_t i = 0; i < va.size(); ++i) EXPECT_NEAR(va[i], vb[i], 1e-4 * (1 + std::abs(va[i]))) << name << "[" << i << "]";
  }
  // ...and the engine is bit-identical to the optimized graph it was built from.
  auto c = run_model(std::move(m), in);
  for (const auto& [name, t] : c) EXPECT_EQ(t.to_double_vector(), b.at(name).to_double_vector()) << name;
}

TEST_F(EngineTest, TruncatedAtSeveralLengths) {
  fs::path p = dir_ / "t.kiln";
  save_engine(small_model(), EngineInfo{}, p);
  std::vector<uint8_t> bytes = read_all(p);
  for (size_t len : {size_t{1}, size_t{7}, size_t{8}, size_t{63}, size_t{64}, size_t{65}, size_t{100}, bytes.size() / 2,
                     bytes.size() - 64, bytes.size() - 1}) {
    fs::path q = dir_ / ("t" + std::to_string(len) + ".kiln");
    write_all(q, std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<long>(len)));
    try {
      load_engine(q);
      ADD_FAILURE() << "truncated at " << len << " loaded";
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(q.string()), std::string::npos) << msg;
      if (len >= 64) {
        EXPECT_NE(msg.find("truncated"), std::string::npos) << len << ": " << msg;
      }
    }
  }
}

TEST_F(EngineTest, FlippedByteAnywhere) {
  fs::path p = dir_ / "f.kiln";
  save_engine(small_model(), EngineInfo{}, p);
  const std::vector<uint8_t> bytes = read_all(p);
  fs::path q = dir_ / "flipped.kiln";
  for (size_t i = 0; i < bytes.size(); i += (i < 64 ? 1 : 7)) {
    std::vector<uint8_t> b = bytes;
    b[i] ^= 0x5a;
    write_all(q, b);
    try {
      load_engine(q);
      // Only a flip in the header's padding is harmless.
      EXPECT_GE(i, 52u) << "byte " << i;
      EXPECT_LT(i, 64u) << "byte " << i;
    } catch (const Error& e) {
      if (i >= 64) {
        EXPECT_NE(std::string(e.what()).find("CRC-32 mismatch"), std::string::npos) << i << ": " << e.what();
      }
    }
  }
}

TEST_F(EngineTest, BadMagicEmptyFileDirectoryMissingFile) {
  fs::path p = dir_ / "m.kiln";
  save_engine(small_model(), EngineInfo{}, p);
  std::vector<uint8_t> bytes = read_all(p);
  bytes[0] = 'X';
  write_all(p, bytes);
  expect_load_error(p, {"m.kiln", "not a Kiln engine file (bad magic"});
  EXPECT_FALSE(is_engine_file(p));

  write_all(dir_ / "empty.kiln", {});
  expect_load_error(dir_ / "empty.kiln", {"empty.kiln", "empty"});
  expect_load_error(dir_, {"is a directory"});
  expect_load_error(dir_ / "nothere.kiln", {"nothere.kiln", "cannot open"});
  EXPECT_FALSE(is_engine_file(dir_));
}

TEST_F(EngineTest, OtherFormatVersion) {
  fs::path p = dir_ / "v.kiln";
  save_engine(small_model(), EngineInfo{}, p);
  std::vector<uint8_t> bytes = read_all(p);
  uint32_t v = 7;
  std::memcpy(bytes.data() + 8, &v, 4);
  write_all(p, bytes);
  expect_load_error(p, {"v.kiln", "engine format version 7", "reads format version " + std::to_string(kEngineFormatVersion)});
}

TEST_F(EngineTest, OtherKilnVersion) {
  fs::path p = dir_ / "k.kiln";
  EngineInfo info;
  info.kiln_version = "0.0.9";
  save_engine(small_model(), info, p);
  expect_load_error(p, {"k.kiln", "Kiln 0.0.9", std::string("Kiln ") + KILN_VERSION});
}

TEST_F(EngineTest, FingerprintMismatch) {
  TargetFingerprint built;
  built.cpu_model = "Build CPU";
  built.isa_features = {"avx2", "avx512f", "avx512_vnni", "amx"};
  built.required_isa = {"avx2", "avx512f", "amx"};
  TargetFingerprint host;
  host.cpu_model = "Old CPU";
  host.isa_features = {"avx2"};
  EXPECT_EQ(missing_isa_features(built, host), (std::vector<std::string>{"avx512f", "amx"}));
  EXPECT_TRUE(missing_isa_features(host, built).empty());

  fs::path p = dir_ / "fp.kiln";
  EngineInfo info;
  info.target = built;
  save_engine(small_model(), info, p);
  EngineLoadOptions opt;
  opt.host = host;
  expect_load_error(p, {"fp.kiln", "avx512f, amx", "Old CPU", "Build CPU"}, opt);
  opt.host = built;
  EXPECT_NO_THROW(load_engine(p, opt));
  // The real host has what the reference backend needs: nothing.
  EXPECT_TRUE(host_fingerprint().required_isa.empty());
  EXPECT_FALSE(host_fingerprint().cpu_vendor.empty());
}

TEST_F(EngineTest, OffsetsPastTheEnd) {
  fs::path p = dir_ / "o.kiln";
  save_engine(small_model(), EngineInfo{}, p);
  const std::vector<uint8_t> bytes = read_all(p);
  struct Case { size_t field; uint64_t value; const char* needle; };
  for (const Case& c : {Case{16, uint64_t{1} << 40, "flatbuffer"}, Case{24, uint64_t{1} << 40, "flatbuffer"},
                        Case{32, bytes.size() + 64, "weight blob"}, Case{40, ~uint64_t{0}, "weight blob"},
                        Case{16, 0, "flatbuffer"}}) {
    std::vector<uint8_t> b = bytes;
    std::memcpy(b.data() + c.field, &c.value, 8);
    write_all(p, b);
    expect_load_error(p, {"o.kiln", c.needle});
  }
  // An initializer record pointing past the blob (CRC fixed up, so the range check must catch it).
  Model m = small_model();
  m.graph.initializers["w"] = Tensor::from_vector<float>({4}, {1, 2, 3, 4});
  std::vector<uint8_t> b = serialize_engine(m, EngineInfo{});
  auto* eng = fb::GetMutableSizePrefixedEngine(b.data() + 64);
  auto* inits = eng->mutable_initializers();
  ASSERT_TRUE(inits);
  for (unsigned i = 0; i < inits->size(); ++i) inits->GetMutableObject(i)->mutate_offset(1 << 20);
  fix_crc(b);
  write_all(p, b);
  expect_load_error(p, {"o.kiln", "lies outside the weight blob"});
}

TEST_F(EngineTest, UnknownOpInTheFlatbuffer) {
  Model m = small_model();
  m.graph.nodes[1].op_type = "Frobnicate";  // a hand-made graph: save does not check ops
  fs::path p = dir_ / "u.kiln";
  save_engine(m, EngineInfo{}, p);
  expect_load_error(p, {"u.kiln", "Frobnicate", "opset 17", "unknown to this Kiln"});

  Model old = small_model();
  old.opsets[""] = 3;  // ops known, opset not supported
  save_engine(old, EngineInfo{}, p);
  expect_load_error(p, {"u.kiln", "opset 3"});
}

TEST_F(EngineTest, FromMemoryNeverCrashesOnGarbage) {
  std::vector<uint8_t> bytes = serialize_engine(small_model(), EngineInfo{});
  EngineLoadOptions opt;
  opt.verify_crc = false;  // reach the flatbuffer decoder, as the fuzzer does
  for (size_t i = 64; i < bytes.size(); i += 3) {
    std::vector<uint8_t> b = bytes;
    b[i] ^= 0xff;
    try {
      load_engine_from_memory(b, opt);
    } catch (const Error&) {
    }
  }
  EXPECT_THROW(load_engine_from_memory({}), Error);
}

TEST_F(EngineTest, CliBuildThenRunMatchesOnnx) {
  const std::string src = (fs::path(KILN_SOURCE_DIR) / "examples" / "tiny_cnn.onnx").string();
  const std::string eng = (dir_ / "X.kiln").string();
  auto r = kiln_test::run_kiln_cli("build " + src + " -o " + eng);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("nodes:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("build time:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("bytes"), std::string::npos) << r.out;

  auto a = kiln_test::run_kiln_cli("run " + src + " --seed 3 -o " + (dir_ / "a").string());
  auto b = kiln_test::run_kiln_cli("run " + eng + " --seed 3 -o " + (dir_ / "b").string());
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  int compared = 0;
  for (const auto& entry : fs::directory_iterator(dir_ / "a")) {
    Tensor ta = read_npy(entry.path()), tb = read_npy(dir_ / "b" / entry.path().filename());
    auto va = ta.to_double_vector(), vb = tb.to_double_vector();
    ASSERT_EQ(va.size(), vb.size());
    for (size_t i = 0; i < va.size(); ++i) EXPECT_NEAR(va[i], vb[i], 1e-4 * (1 + std::abs(va[i])));
    ++compared;
  }
  EXPECT_GT(compared, 0);

  // The engine detected by its magic whatever its name; inspect shows header, target, fusions.
  fs::copy_file(eng, dir_ / "engine.onnx");
  auto i = kiln_test::run_kiln_cli("inspect " + (dir_ / "engine.onnx").string());
  EXPECT_EQ(i.code, 0) << i.out;
  EXPECT_NE(i.out.find("format version " + std::to_string(kEngineFormatVersion)), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("backend cpu"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("FusedConv"), std::string::npos) << i.out;
  auto ij = kiln_test::run_kiln_cli("inspect --json " + eng);
  EXPECT_EQ(ij.code, 0) << ij.out;
  EXPECT_NE(ij.out.find("\"fused_ops\""), std::string::npos) << ij.out;

  auto bench = kiln_test::run_kiln_cli("bench " + eng + " --iterations 2 --warmup-ms 0");
  EXPECT_EQ(bench.code, 0) << bench.out;

  // A corrupted engine: a clear error, exit 1. A bad flag: exit 2.
  std::vector<uint8_t> bytes = read_file_bytes(eng);
  bytes[bytes.size() - 1] ^= 1;
  write_all(dir_ / "bad.kiln", bytes);
  auto bad = kiln_test::run_kiln_cli("run " + (dir_ / "bad.kiln").string());
  EXPECT_EQ(bad.code, 1) << bad.out;
  EXPECT_NE(bad.out.find("CRC-32 mismatch"), std::string::npos) << bad.out;
  EXPECT_EQ(kiln_test::run_kiln_cli("build " + src + " -o " + eng + " --opt-level 9").code, 2);
  EXPECT_EQ(kiln_test::run_kiln_cli("build " + src).code, 2);
}
