// ONNX import: round trips, external data (including > 2 GiB), and every bad-input case the
// importer must reject with a clear error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "backends/reference/executor.h"
#include "onnx/onnx.pb.h"
#include "onnx/onnx_import.h"

namespace fs = std::filesystem;
using namespace kiln;

namespace {

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("kiln_import_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  const fs::path& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  fs::path path_;
};

// y = Relu(x + w): one input, one initializer, two nodes.
onnx::ModelProto small_model() {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.set_producer_name("test");
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(17);
  auto* g = m.mutable_graph();
  g->set_name("g");
  auto* x = g->add_input();
  x->set_name("x");
  x->mutable_type()->mutable_tensor_type()->set_elem_type(1);
  auto* shape = x->mutable_type()->mutable_tensor_type()->mutable_shape();
  shape->add_dim()->set_dim_param("batch");
  shape->add_dim()->set_dim_value(4);
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(1);
  w->add_dims(4);
  for (float v : {1.0f, -2.0f, 3.0f, -4.0f}) w->add_float_data(v);
  auto* add = g->add_node();
  add->set_name("add0");
  add->set_op_type("Add");
  add->add_input("x");
  add->add_input("w");
  add->add_output("s");
  auto* relu = g->add_node();
  relu->set_name("relu0");
  relu->set_op_type("Relu");
  relu->add_input("s");
  relu->add_output("y");
  g->add_output()->set_name("y");
  return m;
}

void write_proto(const onnx::ModelProto& m, const fs::path& p) {
  std::ofstream out(p, std::ios::binary);
  ASSERT_TRUE(m.SerializeToOstream(&out));
}

// Expects load + check + executor construction to fail with `code` and a message containing
// every string in `needles`.
void expect_load_error(const fs::path& p, ErrorCode code, std::vector<std::string> needles) {
  try {
    Model m = load_onnx(p);
    reference::Executor exec(std::move(m));
    FAIL() << "expected an error loading " << p;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what() << "\nmissing: " << n;
  }
}

}  // namespace

TEST(OnnxImport, LoadsAndRunsSmallModel) {
  TempDir dir;
  write_proto(small_model(), dir.path() / "m.onnx");
  Model m = load_onnx(dir.path() / "m.onnx");
  EXPECT_EQ(m.default_opset(), 17);
  ASSERT_EQ(m.graph.inputs, std::vector<std::string>{"x"});
  EXPECT_EQ(m.graph.type_of("x")->to_string(), "f32[batch,4]");
  reference::Executor exec(std::move(m));
  // Inference keeps the symbolic batch dim through Add and Relu.
  EXPECT_EQ(exec.model().graph.type_of("y")->to_string(), "f32[batch,4]");
  auto out = exec.run({{"x", Tensor::from_vector<float>({2, 4}, {0, 0, 0, 0, 1, 1, 1, 1})}});
  auto y = out.at("y").values<float>();
  std::vector<float> expected = {1, 0, 3, 0, 2, 0, 4, 0};
  EXPECT_EQ(std::vector<float>(y.begin(), y.end()), expected);
}

TEST(OnnxImport, SaveLoadRoundTrip) {
  TempDir dir;
  write_proto(small_model(), dir.path() / "m.onnx");
  Model m = load_onnx(dir.path() / "m.onnx");
  save_onnx(m, dir.path() / "again.onnx");
  Model m2 = load_onnx(dir.path() / "again.onnx");
  EXPECT_EQ(dump_model(m).substr(dump_model(m).find('\n')), dump_model(m2).substr(dump_model(m2).find('\n')));
}

TEST(OnnxImport, ExternalDataInsideModelFolder) {
  TempDir dir;
  onnx::ModelProto m = small_model();
  auto* w = m.mutable_graph()->mutable_initializer(0);
  w->clear_float_data();
  w->set_data_location(onnx::TensorProto::EXTERNAL);
  auto add_kv = [&](const std::string& k, const std::string& v) {
    auto* kv = w->add_external_data();
    kv->set_key(k);
    kv->set_value(v);
  };
  add_kv("location", "weights/w.bin");
  add_kv("offset", "8");
  add_kv("length", "16");
  fs::create_directories(dir.path() / "weights");
  {
    std::ofstream out(dir.path() / "weights/w.bin", std::ios::binary);
    float pad[2] = {99, 99};
    float vals[4] = {1, -2, 3, -4};
    out.write(reinterpret_cast<char*>(pad), sizeof pad);
    out.write(reinterpret_cast<char*>(vals), sizeof vals);
  }
  write_proto(m, dir.path() / "m.onnx");
  Model loaded = load_onnx(dir.path() / "m.onnx");
  auto vals = loaded.graph.initializers.at("w").values<float>();
  EXPECT_EQ(std::vector<float>(vals.begin(), vals.end()), (std::vector<float>{1, -2, 3, -4}));
}

TEST(OnnxImport, ExternalDataBeyondTwoGiBLoadsWithoutCopy) {
  TempDir dir;
  const int64_t n = (int64_t{1} << 29) + 16;  // 2 GiB + 64 bytes of float32
  onnx::ModelProto m = small_model();
  auto* w = m.mutable_graph()->mutable_initializer(0);
  w->clear_float_data();
  w->clear_dims();
  w->add_dims(n);
  w->set_data_location(onnx::TensorProto::EXTERNAL);
  auto* kv = w->add_external_data();
  kv->set_key("location");
  kv->set_value("big.bin");
  // A sparse file: 2 GiB of zeros costs no disk; the last float is 7.
  {
    std::ofstream out(dir.path() / "big.bin", std::ios::binary);
    out.seekp(n * 4 - 4);
    float seven = 7;
    out.write(reinterpret_cast<char*>(&seven), 4);
  }
  write_proto(m, dir.path() / "m.onnx");
  Model loaded = load_onnx(dir.path() / "m.onnx");
  const Tensor& t = loaded.graph.initializers.at("w");
  EXPECT_EQ(t.numel(), n);
  EXPECT_GT(t.nbytes(), size_t{2} << 30);
  EXPECT_EQ(t.data<float>()[n - 1], 7.0f);
  EXPECT_EQ(t.data<float>()[0], 0.0f);
}

TEST(OnnxImportErrors, TruncatedAndCorruptedFiles) {
  TempDir dir;
  std::string bytes = small_model().SerializeAsString();
  {
    std::ofstream out(dir.path() / "trunc.onnx", std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  expect_load_error(dir.path() / "trunc.onnx", ErrorCode::kInvalidModel, {"trunc.onnx", "truncated or corrupted"});
  {
    std::ofstream out(dir.path() / "junk.onnx", std::ios::binary);
    out << "this is not a protobuf at all \xff\xff\xff\xff";
  }
  expect_load_error(dir.path() / "junk.onnx", ErrorCode::kInvalidModel, {"junk.onnx"});
  { std::ofstream out(dir.path() / "empty.onnx", std::ios::binary); }
  expect_load_error(dir.path() / "empty.onnx", ErrorCode::kInvalidModel, {"empty.onnx", "no graph"});
  expect_load_error(dir.path() / "missing.onnx", ErrorCode::kIo, {"missing.onnx", "cannot open"});
}

TEST(OnnxImportErrors, ExternalDataProblems) {
  TempDir dir;
  auto with_location = [&](const std::string& loc) {
    onnx::ModelProto m = small_model();
    auto* w = m.mutable_graph()->mutable_initializer(0);
    w->clear_float_data();
    w->set_data_location(onnx::TensorProto::EXTERNAL);
    auto* kv = w->add_external_data();
    kv->set_key("location");
    kv->set_value(loc);
    return m;
  };
  fs::create_directories(dir.path() / "model");
  write_proto(with_location("nothere.bin"), dir.path() / "model/a.onnx");
  expect_load_error(dir.path() / "model/a.onnx", ErrorCode::kIo, {"'w'", "nothere.bin", "does not exist"});

  {
    std::ofstream out(dir.path() / "secret.bin", std::ios::binary);
    out << std::string(16, 'x');
  }
  write_proto(with_location("../secret.bin"), dir.path() / "model/b.onnx");
  expect_load_error(dir.path() / "model/b.onnx", ErrorCode::kInvalidModel, {"'w'", "escapes the model's folder"});
  write_proto(with_location((dir.path() / "secret.bin").string()), dir.path() / "model/c.onnx");
  expect_load_error(dir.path() / "model/c.onnx", ErrorCode::kInvalidModel, {"absolute path"});
  fs::create_symlink(dir.path() / "secret.bin", dir.path() / "model/link.bin");
  write_proto(with_location("link.bin"), dir.path() / "model/d.onnx");
  expect_load_error(dir.path() / "model/d.onnx", ErrorCode::kInvalidModel, {"outside the model's folder"});

  {
    std::ofstream out(dir.path() / "model/short.bin", std::ios::binary);
    out << std::string(8, 'x');  // needs 16
  }
  write_proto(with_location("short.bin"), dir.path() / "model/e.onnx");
  expect_load_error(dir.path() / "model/e.onnx", ErrorCode::kInvalidModel, {"'w'", "8 bytes, expected 16"});
}

TEST(OnnxImportErrors, UnknownOpAndUnsupportedOpset) {
  TempDir dir;
  onnx::ModelProto m = small_model();
  m.mutable_graph()->mutable_node(1)->set_op_type("FrobnicateTensor");
  write_proto(m, dir.path() / "unknown.onnx");
  expect_load_error(dir.path() / "unknown.onnx", ErrorCode::kUnsupported,
                    {"unknown.onnx", "FrobnicateTensor", "relu0", "opset 17", "troubleshooting.md#unknown-op"});

  onnx::ModelProto old = small_model();
  old.mutable_opset_import(0)->set_version(5);  // Add before opset 7 used legacy broadcast attributes
  write_proto(old, dir.path() / "old.onnx");
  expect_load_error(dir.path() / "old.onnx", ErrorCode::kUnsupported, {"Add", "add0", "unsupported opset 5"});

  onnx::ModelProto future = small_model();
  future.mutable_opset_import(0)->set_version(99);
  write_proto(future, dir.path() / "future.onnx");
  expect_load_error(dir.path() / "future.onnx", ErrorCode::kUnsupported, {"opset 99", "newer than Kiln supports"});
}

TEST(OnnxImportErrors, CycleAndUndefinedInput) {
  TempDir dir;
  onnx::ModelProto cyc = small_model();
  cyc.mutable_graph()->mutable_node(0)->set_input(0, "y");  // add0 reads relu0's output
  write_proto(cyc, dir.path() / "cycle.onnx");
  expect_load_error(dir.path() / "cycle.onnx", ErrorCode::kInvalidModel, {"cycle"});

  onnx::ModelProto undef = small_model();
  undef.mutable_graph()->mutable_node(1)->set_input(0, "ghost");
  write_proto(undef, dir.path() / "undef.onnx");
  expect_load_error(dir.path() / "undef.onnx", ErrorCode::kInvalidModel, {"relu0", "'ghost'"});

  onnx::ModelProto bad_out = small_model();
  bad_out.mutable_graph()->mutable_output(0)->set_name("nowhere");
  write_proto(bad_out, dir.path() / "badout.onnx");
  expect_load_error(dir.path() / "badout.onnx", ErrorCode::kInvalidModel, {"'nowhere'"});
}

TEST(OnnxImportErrors, InitializerSizeMismatch) {
  TempDir dir;
  onnx::ModelProto m = small_model();
  m.mutable_graph()->mutable_initializer(0)->add_float_data(5.0f);  // 5 values for shape [4]
  write_proto(m, dir.path() / "a.onnx");
  expect_load_error(dir.path() / "a.onnx", ErrorCode::kInvalidModel, {"'w'", "5 values, expected 4"});

  onnx::ModelProto raw = small_model();
  auto* w = raw.mutable_graph()->mutable_initializer(0);
  w->clear_float_data();
  w->set_raw_data(std::string(12, '\0'));
  write_proto(raw, dir.path() / "b.onnx");
  expect_load_error(dir.path() / "b.onnx", ErrorCode::kInvalidModel, {"'w'", "12 bytes of raw data, expected 16"});

  onnx::ModelProto huge = small_model();
  auto* h = huge.mutable_graph()->mutable_initializer(0);
  h->clear_dims();
  h->add_dims(int64_t{1} << 40);
  h->add_dims(int64_t{1} << 40);
  write_proto(huge, dir.path() / "c.onnx");
  expect_load_error(dir.path() / "c.onnx", ErrorCode::kInvalidModel, {"'w'"});

  // A large but representable shape with little data is rejected before anything is allocated
  // (found by fuzz_tensor_files: it used to request a 1.5 TB buffer).
  onnx::ModelProto big = small_model();
  auto* b = big.mutable_graph()->mutable_initializer(0);
  b->clear_dims();
  b->add_dims(int64_t{1} << 38);
  write_proto(big, dir.path() / "d.onnx");
  expect_load_error(dir.path() / "d.onnx", ErrorCode::kInvalidModel, {"'w'", "4 values, expected 274877906944"});
}

TEST(OnnxImportErrors, WrongInputShapeOrDtype) {
  TempDir dir;
  write_proto(small_model(), dir.path() / "m.onnx");
  reference::Executor exec(load_onnx(dir.path() / "m.onnx"));
  auto expect_run_error = [&](reference::TensorMap in, std::vector<std::string> needles) {
    try {
      exec.run(in);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
  };
  expect_run_error({{"x", Tensor(DType::kF32, {2, 5})}}, {"'x'", "2x5", "[batch,4]"});
  expect_run_error({{"x", Tensor(DType::kI32, {2, 4})}}, {"'x'", "i32", "expected f32"});
  expect_run_error({{"x", Tensor(DType::kF32, {4})}}, {"'x'", "shape 4"});
  expect_run_error({}, {"missing input 'x'"});
  expect_run_error({{"x", Tensor(DType::kF32, {1, 4})}, {"z", Tensor(DType::kF32, {1})}}, {"'z' is not an input"});
}
