// Shared by the kiln serve front-end tests (HTTP, gRPC): a temporary model repository with models
// added one folder at a time, and server options that load them quickly.
#pragma once
#include <filesystem>
#include <string>

#include "onnx/onnx_import.h"
#include "serve/server.h"
#include "test_support.h"

namespace kiln_test {

class ServeRepositoryTest : public TempDirTest {
 protected:
  using TempDirTest::TempDirTest;

  std::filesystem::path repo() const { return dir_ / "repo"; }
  // repo()/<name>/config.pbtxt and version 1 holding `model` as model.onnx.
  void add_model(const std::string& name, const std::string& config, const kiln::Model& model = add_relu_model()) {
    write_text(repo() / name / "config.pbtxt", config);
    std::filesystem::create_directories(repo() / name / "1");
    kiln::save_onnx(model, repo() / name / "1" / "model.onnx");
  }
  // `o` over repo(), building untimed on one thread per instance.
  kiln::serve::ServerOptions fast_options(kiln::serve::ServerOptions o) const {
    o.model_repository = repo();
    o.repository.time_tactics = false;
    o.repository.threads = 1;
    return o;
  }
};

}  // namespace kiln_test
