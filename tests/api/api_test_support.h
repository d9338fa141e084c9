// Helpers for the public API tests: a logger that records, random data, temporary files.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "kiln/kiln.h"

namespace kiln_api_test {

using kiln::ILogger;
using Severity = kiln::ILogger::Severity;

// Records every message; thread-safe (contexts log from several threads).
class CaptureLogger : public ILogger {
 public:
  void log(Severity s, const char* msg) noexcept override {
    std::lock_guard lock(mu_);
    entries_.emplace_back(s, msg);
  }
  std::vector<std::string> messages(Severity s) const {
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    for (const auto& [sev, m] : entries_)
      if (sev == s) out.push_back(m);
    return out;
  }
  size_t count(Severity s) const { return messages(s).size(); }
  // True when some message of severity s contains `needle`.
  bool has(Severity s, const std::string& needle) const {
    for (const auto& m : messages(s))
      if (m.find(needle) != std::string::npos) return true;
    return false;
  }
  std::string errors() const {
    std::string all;
    for (const auto& m : messages(Severity::kERROR)) all += m + "\n";
    return all;
  }
  void clear() {
    std::lock_guard lock(mu_);
    entries_.clear();
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<Severity, std::string>> entries_;
};

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -2.0f, float hi = 2.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// A fresh directory under the system temp dir, per test.
inline std::filesystem::path temp_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  auto dir = std::filesystem::temp_directory_path() /
             ("kiln_api_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline void write_file(const std::filesystem::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

inline std::vector<uint8_t> read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

inline void expect_near_all(const std::vector<float>& got, const std::vector<float>& want, float rtol, float atol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], atol + rtol * std::abs(want[i])) << "at " << i;
}

// Builds an engine from a network (no profiles unless given) and deserializes it.
inline std::shared_ptr<kiln::Engine> build_and_load(kiln::Builder& builder, kiln::NetworkDefinition& network,
                                                   kiln::Runtime& runtime, kiln::BuilderConfig* config = nullptr) {
  std::unique_ptr<kiln::BuilderConfig> own;
  if (!config) {
    own = builder.createBuilderConfig();
    own->setNbThreads(1);
    config = own.get();
  }
  auto bytes = builder.buildSerializedNetwork(network, *config);
  if (bytes.empty()) return nullptr;
  return runtime.deserializeEngine(bytes.data(), bytes.size());
}

}  // namespace kiln_api_test
