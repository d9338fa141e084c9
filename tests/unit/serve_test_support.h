// Shared by the kiln serve front-end tests (HTTP, gRPC): a temporary model repository with models
// added one folder at a time, and server options that load them quickly.
#pragma once
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
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

// A POSIX shared-memory object holding `bytes` (at `offset`), unlinked when the test is done: what a
// client of the system shared-memory extension creates.
class TestSharedMemory {
 public:
  TestSharedMemory(const std::string& bytes, size_t offset = 0)
      : key_("/kiln_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++)) {
    const int fd = shm_open(key_.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) throw std::runtime_error("shm_open " + key_ + " failed");
    size_ = offset + bytes.size();
    if (ftruncate(fd, static_cast<off_t>(size_)) != 0) throw std::runtime_error("ftruncate failed");
    void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    std::memcpy(static_cast<char*>(p) + offset, bytes.data(), bytes.size());
    munmap(p, size_);
  }
  ~TestSharedMemory() { shm_unlink(key_.c_str()); }
  TestSharedMemory(const TestSharedMemory&) = delete;
  TestSharedMemory& operator=(const TestSharedMemory&) = delete;
  const std::string& key() const { return key_; }
  size_t size() const { return size_; }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  std::string key_;
  size_t size_ = 0;
};

template <typename T>
std::string raw_bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

}  // namespace kiln_test
