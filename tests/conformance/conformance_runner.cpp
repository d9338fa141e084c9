// Runs the ONNX backend test suite (Debian's libonnx-testdata) through the importer and the
// reference executor, and compares against the checked-in list of expected failures. The list
// only shrinks: an unlisted failure or a listed test that now passes fails the run.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "backends/reference/executor.h"
#include "onnx/onnx_import.h"

namespace fs = std::filesystem;
using namespace kiln;

namespace {

struct Outcome {
  enum Kind { kPass, kFail, kSkip } kind = kPass;
  std::string reason;
};

std::string compare(const Tensor& got, const Tensor& want, double rtol, double atol) {
  if (got.dtype() != want.dtype())
    return "dtype " + std::string(dtype_name(got.dtype())) + " != expected " + std::string(dtype_name(want.dtype()));
  if (got.shape() != want.shape())
    return "shape " + shape_to_string(got.shape()) + " != expected " + shape_to_string(want.shape());
  std::vector<double> g = got.to_double_vector(), w = want.to_double_vector();
  const bool exact = !dtype_is_float(want.dtype());
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(w[i]) && std::isnan(g[i])) continue;
    if (exact ? g[i] == w[i] : (std::fabs(g[i] - w[i]) <= atol + rtol * std::fabs(w[i]) || g[i] == w[i])) continue;
    std::ostringstream os;
    os << "value mismatch at element " << i << ": got " << g[i] << ", expected " << w[i];
    return os.str();
  }
  return {};
}

std::vector<fs::path> numbered(const fs::path& dir, const std::string& stem) {
  std::vector<std::pair<int, fs::path>> files;
  std::regex re(stem + "_(\\d+)\\.pb");
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    std::string name = e.path().filename().string();
    if (std::regex_match(name, m, re)) files.emplace_back(std::stoi(m[1]), e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<fs::path> out;
  for (auto& [i, p] : files) out.push_back(p);
  return out;
}

// Random ops (Bernoulli) cannot reproduce numpy's samples. For them the runner checks what a sample
// must satisfy instead: the expected dtype and shape, and every value 0 or 1.
std::string check_sample(const Tensor& got, const Tensor& want) {
  if (got.dtype() != want.dtype())
    return "dtype " + std::string(dtype_name(got.dtype())) + " != expected " + std::string(dtype_name(want.dtype()));
  if (got.shape() != want.shape())
    return "shape " + shape_to_string(got.shape()) + " != expected " + shape_to_string(want.shape());
  std::vector<double> g = got.to_double_vector();
  for (size_t i = 0; i < g.size(); ++i)
    if (g[i] != 0.0 && g[i] != 1.0) return "sample " + std::to_string(g[i]) + " at element " + std::to_string(i) + " is not 0 or 1";
  return {};
}

Outcome run_test(const fs::path& dir, bool random) {
  const fs::path model_path = dir / "model.onnx";
  if (!fs::exists(model_path)) return {Outcome::kSkip, "no model.onnx"};
  std::vector<fs::path> sets;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && e.path().filename().string().starts_with("test_data_set_")) sets.push_back(e.path());
  std::sort(sets.begin(), sets.end());
  if (sets.empty()) return {Outcome::kSkip, "no test data (needs a download)"};
  try {
    Model model = load_onnx(model_path);
    auto issues = check_model(model);
    if (!issues.empty()) return {Outcome::kFail, "unsupported: " + issues.front().to_string()};
    reference::Executor exec(std::move(model));
    const Graph& g = exec.model().graph;
    const double rtol = 1e-3, atol = 1e-7;  // the ONNX backend runner's defaults
    for (const auto& set : sets) {
      reference::TensorMap inputs;
      auto input_files = numbered(set, "input");
      if (input_files.size() > g.inputs.size())
        return {Outcome::kFail, "error: test has " + std::to_string(input_files.size()) + " inputs, model has " +
                                    std::to_string(g.inputs.size())};
      for (size_t i = 0; i < input_files.size(); ++i) {
        Tensor t = read_tensor_proto_file(input_files[i]);
        // ONNX 1.12's test data stores bfloat16 tensors as uint16 bits.
        const TensorType* declared = g.type_of(g.inputs[i]);
        if (declared && declared->dtype == DType::kBF16 && t.dtype() == DType::kU16) t = t.reinterpreted(DType::kBF16);
        inputs[g.inputs[i]] = std::move(t);
      }
      auto outputs = exec.run(inputs);
      auto output_files = numbered(set, "output");
      for (size_t i = 0; i < output_files.size() && i < g.outputs.size(); ++i) {
        Tensor want = read_tensor_proto_file(output_files[i]);
        if (want.dtype() == DType::kU16 && outputs.at(g.outputs[i]).dtype() == DType::kBF16)
          want = want.reinterpreted(DType::kBF16);
        std::string diff = random ? check_sample(outputs.at(g.outputs[i]), want)
                                  : compare(outputs.at(g.outputs[i]), want, rtol, atol);
        if (!diff.empty())
          return {Outcome::kFail, "mismatch: " + set.filename().string() + " output '" + g.outputs[i] + "': " + diff};
      }
    }
    return {Outcome::kPass, ""};
  } catch (const Error& e) {
    const char* kind = e.code() == ErrorCode::kUnsupported ? "unsupported: " : "error: ";
    return {Outcome::kFail, kind + std::string(e.what())};
  } catch (const std::exception& e) {
    return {Outcome::kFail, std::string("error: ") + e.what()};
  }
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\t', ' ');
  if (s.size() > 300) s = s.substr(0, 300) + "...";
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path data_dir = "/usr/include/onnx/backend/test/data";
  fs::path expected_path;
  fs::path write_expected;
  std::string filter;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "missing value after " << a << "\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--data-dir") data_dir = next();
    else if (a == "--expected") expected_path = next();
    else if (a == "--write-expected") write_expected = next();
    else if (a == "--filter") filter = next();
    else if (a == "--verbose" || a == "-v") verbose = true;
    else {
      std::cerr << "usage: kiln_conformance [--data-dir DIR] [--expected FILE] [--write-expected FILE] [--filter TEXT] [-v]\n";
      return 2;
    }
  }
  if (!fs::is_directory(data_dir)) {
    std::cout << "SKIP: ONNX backend test data not found at " << data_dir << " (install libonnx-testdata)\n";
    return 77;
  }
  std::map<std::string, std::string> expected;  // "folder/test" -> reason
  if (!expected_path.empty()) {
    std::ifstream in(expected_path);
    if (!in) {
      std::cerr << "cannot read " << expected_path << "\n";
      return 2;
    }
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      auto sp = line.find_first_of(" \t");
      std::string key = line.substr(0, sp);
      std::string reason = sp == std::string::npos ? "" : line.substr(line.find_first_not_of(" \t", sp));
      if (reason.empty()) {
        std::cerr << expected_path << ": entry '" << key << "' has no reason\n";
        return 2;
      }
      expected[key] = reason;
    }
  }

  const std::vector<std::string> folders = {"node", "pytorch-converted", "pytorch-operator", "simple", "real"};
  std::map<std::string, std::string> failures;  // all failures, for --write-expected
  std::vector<std::string> unexpected_fail, unexpected_pass;
  int total_pass = 0, total_fail = 0, total_skip = 0;
  for (const auto& folder : folders) {
    fs::path dir = data_dir / folder;
    if (!fs::is_directory(dir)) continue;
    std::vector<fs::path> tests;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory()) tests.push_back(e.path());
    std::sort(tests.begin(), tests.end());
    int pass = 0, fail = 0, xfail = 0, skip = 0, sampled = 0;
    for (const auto& t : tests) {
      std::string key = folder + "/" + t.filename().string();
      if (!filter.empty() && key.find(filter) == std::string::npos) continue;
      auto listed_it = expected.find(key);
      const bool random = listed_it != expected.end() && listed_it->second.starts_with("random:");
      Outcome o = run_test(t, random);
      bool listed = listed_it != expected.end() && !random;
      if (random && o.kind == Outcome::kPass) ++sampled;
      switch (o.kind) {
        case Outcome::kSkip:
          ++skip;
          if (verbose) std::cout << "SKIP " << key << ": " << o.reason << "\n";
          break;
        case Outcome::kPass:
          ++pass;
          if (listed) unexpected_pass.push_back(key);
          if (verbose) std::cout << "PASS " << key << "\n";
          break;
        case Outcome::kFail:
          ++fail;
          failures[key] = one_line(o.reason);
          if (listed) ++xfail;
          else if (random) unexpected_fail.push_back(key + " (random, checked as a sample): " + one_line(o.reason));
          else unexpected_fail.push_back(key + ": " + one_line(o.reason));
          if (verbose) std::cout << "FAIL " << key << ": " << one_line(o.reason) << "\n";
          break;
      }
    }
    std::cout << folder << ": " << pass << " passed (" << sampled << " random, checked as samples), " << fail << " failed (" << xfail << " expected), " << skip
              << " skipped\n";
    total_pass += pass;
    total_fail += fail;
    total_skip += skip;
  }
  if (!write_expected.empty()) {
    std::ofstream out(write_expected);
    out << "# ONNX backend tests Kiln's reference executor is expected to fail, with the reason.\n"
        << "# Generated by kiln_conformance --write-expected; the list may only shrink.\n";
    std::map<std::string, std::string> entries = failures;
    for (const auto& [k, r] : expected)
      if (r.starts_with("random:")) entries[k] = r;  // checked as samples; kept with their reason
    for (const auto& [k, r] : entries) out << k << "  " << r << "\n";
    std::cout << "wrote " << failures.size() << " expected failures to " << write_expected << "\n";
  }
  for (const auto& u : unexpected_fail) std::cout << "UNEXPECTED FAIL " << u << "\n";
  for (const auto& u : unexpected_pass)
    std::cout << "UNEXPECTED PASS " << u << " (remove it from the expected-failure list)\n";
  // A test whose ops are all supported must pass. The only accepted exceptions are listed with a
  // reason that says why the suite's own expectation cannot hold ("random:" or "test data:").
  int supported_failures = 0;
  std::vector<std::string> unexplained;
  for (const auto& [k, r] : failures) {
    if (r.starts_with("unsupported:")) continue;
    ++supported_failures;
    auto it = expected.find(k);
    if (it != expected.end() && !it->second.starts_with("random:") && !it->second.starts_with("test data:"))
      unexplained.push_back(k);
  }
  for (const auto& u : unexplained)
    std::cout << "UNEXPLAINED FAIL " << u << ": its ops are supported, so it must pass (or be listed as 'random:' or "
              << "'test data:')\n";
  std::cout << "total: " << total_pass << " passed, " << total_fail << " failed, " << total_skip << " skipped; "
            << supported_failures << " failures among tests whose ops are all supported (random ops or test-data "
            << "issues, each listed with its reason)\n";
  if (!write_expected.empty()) return 0;
  return unexpected_fail.empty() && unexpected_pass.empty() && unexplained.empty() ? 0 : 1;
}
