// Helpers shared by the unit tests: building small models in C++ and running the kiln binary.
#pragma once
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "ir/tensor.h"
#include "model_dir.h"
#include "onnx/onnx_import.h"

namespace kiln_test {

using namespace kiln;

// Builds a Model node by node; every named node output becomes a graph output.
struct ModelBuilder {
  Model m;
  explicit ModelBuilder(int64_t opset) { m.opsets[""] = opset; }
  ModelBuilder& input(const std::string& name, DType dt, Shape shape) {
    m.graph.inputs.push_back(name);
    m.graph.types[name] = TensorType{dt, std::move(shape)};
    return *this;
  }
  ModelBuilder& init(const std::string& name, Tensor t) {
    m.graph.initializers[name] = std::move(t);
    return *this;
  }
  ModelBuilder& node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out,
                     std::map<std::string, Attribute> attrs = {}, const std::string& name = "n") {
    m.graph.nodes.push_back(Node{name, op, "", std::move(in), out, std::move(attrs)});
    for (const auto& o : out)
      if (!o.empty()) m.graph.outputs.push_back(o);
    return *this;
  }
};

// Uniform in [-scale, scale) float32 values from a fixed LCG: the same on every run and platform.
inline Tensor seeded(const std::vector<int64_t>& shape, uint32_t seed, float scale = 0.5f) {
  Tensor t(DType::kF32, shape);
  float* p = t.mutable_data<float>();
  uint32_t s = seed * 2654435761u + 1;
  for (int64_t i = 0; i < t.numel(); ++i) {
    s = s * 1664525u + 1013904223u;
    p[i] = (static_cast<float>(s >> 8) / static_cast<float>(1 << 24) * 2.f - 1.f) * scale;
  }
  return t;
}

struct CliResult {
  int code;
  std::string out;  // stdout and stderr together
};

// Runs the kiln binary under test with `args` (a shell-quoted string); `out` holds stdout and
// stderr, or stdout alone (a JSON report) with stderr dropped. `env`: "NAME=value ..." set for it.
enum class Stderr { kMerge, kDrop };
inline CliResult run_kiln_cli(const std::string& args, Stderr err = Stderr::kMerge, const std::string& env = {}) {
  std::string cmd = (env.empty() ? std::string() : "env " + env + " ") + std::string(KILN_CLI_PATH) + " " + args +
                    (err == Stderr::kMerge ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, "popen failed"};
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// y = Relu(x + w) with x: f32[batch,3] and w = {1, -5, 0.5}: the smallest model the CLI tests run.
inline Model add_relu_model() {
  Model m;
  m.opsets[""] = 17;
  m.graph.inputs = {"x"};
  m.graph.outputs = {"y"};
  m.graph.types["x"] = TensorType{DType::kF32, Shape{Dim::sym("batch"), Dim(3)}};
  m.graph.initializers["w"] = Tensor::from_vector<float>({3}, {1, -5, 0.5f});
  m.graph.nodes.push_back(Node{"add", "Add", "", {"x", "w"}, {"s"}, {}});
  m.graph.nodes.push_back(Node{"relu", "Relu", "", {"s"}, {"y"}, {}});
  return m;
}

// add_relu_model()'s function, y = relu(x + [1, -5, 0.5]) along the last dim, computed here
// independently of Kiln, for tests that check served or built results.
inline std::vector<float> add_relu_reference(const std::vector<float>& x) {
  const float w[3] = {1, -5, 0.5f};
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = std::max(0.f, x[i] + w[i % 3]);
  return y;
}

// Writes `text` to `p`, creating its folders.
inline void write_text(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

// A fixture with a fresh folder per test, named after the process and the test (parallel ctest
// processes never share one) and removed afterwards; save() writes a model into it.
class TempDirTest : public ::testing::Test {
 protected:
  explicit TempDirTest(std::string prefix) : prefix_(std::move(prefix)) {}
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           (prefix_ + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string save(const Model& m, const std::string& name) const {
    const std::string path = (dir_ / name).string();
    save_onnx(m, path);
    return path;
  }

  std::filesystem::path dir_;

 private:
  std::string prefix_;
};

}  // namespace kiln_test

