// `kiln compare`: runs an engine (or an ONNX model built for the CPU backend) and a reference of its
// ONNX model (Kiln's FP32 reference executor, the fp32 CPU build, ONNX Runtime through
// tools/onnxrt_runner.js, or outputs saved earlier) on the same inputs, and reports per output the max
// abs/rel error, cosine similarity and top-1 agreement, checked against tolerances (Polygraphy-style);
// with --per-layer/--mark-all also every intermediate tensor both sides have, marking where the error
// first jumps. Inputs and outputs can be saved to .npz and loaded on another machine.
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <google/protobuf/io/coded_stream.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "backends/reference/executor.h"
#include "cli_common.h"
#include "onnx/onnx.pb.h"
#include "onnx/onnx_import.h"
#include "quant/calibration.h"
#include "quant/metrics.h"
#include "quant/qdq.h"
#include "runtime/builder.h"
#include "runtime/runtime.h"
#include "util/mapped_file.h"
#include "util/npy.h"

extern char** environ;

namespace kiln::cli {
namespace {

using json = nlohmann::json;
using ShapeMap = std::map<std::string, std::vector<int64_t>>;
using reference::TensorMap;
using quant::ErrorStats;
namespace fs = std::filesystem;

// Per-layer: below this cosine (when --min-cosine is not given) a tensor counts as divergent.
constexpr double kDefaultLayerCosine = 0.999;
// Per-layer: a tensor's max abs error jumping by more than this factor over the previous compared
// tensor counts as divergent...
constexpr double kJumpFactor = 10.0;
// ...when it is also above this fraction of the tensor's scale (max |reference|), so that fp32
// rounding noise growing from 1e-8 to 1e-7 is never reported as a jump.
constexpr double kJumpNoiseFloor = 1e-4;

struct CompareArgs {
  std::string target;  // engine file or ONNX model under test
  std::string model;   // the ONNX model the reference runs
  std::vector<std::string> inputs;
  std::string input_flag = "--input";  // or --load-inputs, for messages
  std::string calib;
  int64_t samples = 0;  // 0: 1 random sample, every calibration sample, every --input
  int64_t batch = 1;
  std::string shapes;
  uint64_t seed = 0;
  std::vector<int64_t> int_range = {0, 10};
  double atol = 0, rtol = 0, min_cosine = 0;
  bool has_atol = false, has_rtol = false, has_min_cosine = false;
  bool per_layer = false;
  std::string reference = "reference";  // reference, cpu, onnxrt, or "loaded" (--load-outputs)
  bool onnxrt = false;  // --onnxrt: reference = "onnxrt"
  std::string onnxrt_opt_level = "disabled";
  std::string save_inputs, save_outputs, save_target_outputs, load_outputs;
  bool json = false;
  int threads = 0;
};

bool is_float(DType dt) { return dtype_is_float(dt); }

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// A number for the tables: fixed for cosines, scientific for errors.
std::string sci(double v) {
  std::ostringstream os;
  os << std::scientific << std::setprecision(3) << v;
  return os.str();
}
std::string cos_text(double v) { return fixed(v, 6); }

// Appends to the graph's outputs every node output `want` accepts that is not an output already:
// the intermediate tensors a per-layer comparison reads back. Only values with a known float or
// 8-bit integer type qualify (shape arithmetic is folded away at concrete shapes anyway).
void expose_values(Model& model, const std::function<bool(const std::string&)>& want) {
  Graph& g = model.graph;
  std::set<std::string> present(g.outputs.begin(), g.outputs.end());
  for (const Node& n : g.nodes)
    for (const auto& o : n.outputs) {
      if (o.empty() || present.count(o) || !want(o)) continue;
      const TensorType* t = g.type_of(o);
      if (!t || !(is_float(t->dtype) || dtype_is_8bit(t->dtype))) continue;
      g.outputs.push_back(o);
      present.insert(o);
    }
}

// expose_values before a build: types are inferred on a copy first (an ONNX model declares few).
void mark_outputs(Model& model, const std::function<bool(const std::string&)>& want) {
  Model typed = model;
  InferOptions o;
  o.evaluator = reference::constant_evaluator();
  infer_types(typed, o);
  expose_values(typed, want);
  model.graph.outputs = typed.graph.outputs;
}

// ---------------------------------------------------------------------------------------------
// Tensor-set files (--save-inputs/--save-outputs/--save-target-outputs, read by --input,
// --load-inputs and --load-outputs): one .npz where member "K/NAME" is tensor NAME of input set K
// (K = 0, 1, ...), so several sets of any shapes fit in one file. Members "kiln.*" are metadata:
// "kiln.input_crc32" (uint32[sets]: a checksum of each input set the outputs came from) and
// "kiln.source" (uint8 text: what produced them).

constexpr const char* kCrcMember = "kiln.input_crc32";
constexpr const char* kSourceMember = "kiln.source";

// CRC-32 of an input set: names, dtypes, shapes and bytes, in name order.
uint32_t input_set_crc(const TensorMap& inputs) {
  uLong crc = crc32(0L, Z_NULL, 0);
  auto feed = [&crc](const void* p, size_t n) {
    const auto* b = static_cast<const Bytef*>(p);
    while (n > 0) {
      const uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
      crc = crc32(crc, b, chunk);
      b += chunk;
      n -= chunk;
    }
  };
  for (const auto& [name, t] : inputs) {
    feed(name.data(), name.size() + 1);
    const std::string dt(dtype_name(t.dtype()));
    feed(dt.data(), dt.size() + 1);
    for (int64_t d : t.shape()) feed(&d, sizeof d);
    feed(t.raw(), t.nbytes());
  }
  return static_cast<uint32_t>(crc);
}

Tensor text_tensor(const std::string& s) {
  return Tensor::from_vector<uint8_t>({static_cast<int64_t>(s.size())}, std::vector<uint8_t>(s.begin(), s.end()));
}

// .npy has no bfloat16: such tensors are saved as float32 (exactly).
Tensor npy_writable(const Tensor& t) {
  if (t.dtype() != DType::kBF16) return t;
  const std::vector<double> v = t.to_double_vector();
  return Tensor::from_vector<float>(t.shape(), std::vector<float>(v.begin(), v.end()));
}

// Accumulates sets for one file, written at the end.
class SetFileWriter {
 public:
  SetFileWriter(std::string path, std::string source) : path_(std::move(path)), source_(std::move(source)) {}
  bool active() const { return !path_.empty(); }
  // Set `k`'s tensors; `inputs` (for the checksum) may be null when the file holds inputs itself.
  void add(size_t k, const TensorMap& tensors, const TensorMap* inputs) {
    if (!active()) return;
    for (const auto& [name, t] : tensors) members_.emplace_back(std::to_string(k) + "/" + name, npy_writable(t));
    if (inputs) crcs_.push_back(input_set_crc(*inputs));
  }
  void write() const {
    if (!active()) return;
    NamedTensors all = members_;
    if (!crcs_.empty())
      all.emplace_back(kCrcMember, Tensor::from_vector<uint32_t>({static_cast<int64_t>(crcs_.size())}, crcs_));
    all.emplace_back(kSourceMember, text_tensor(source_));
    write_npz(path_, all);
  }

 private:
  std::string path_, source_;
  NamedTensors members_;
  std::vector<uint32_t> crcs_;
};

// A file of sets as written by SetFileWriter.
struct SetFile {
  std::string path;
  std::vector<TensorMap> sets;
  std::vector<uint32_t> input_crc;  // empty when the file has none
  std::string source;               // what wrote it, when recorded
};

// Splits "K/NAME" into K and NAME; false for any other member name.
bool split_set_member(const std::string& member, size_t* k, std::string* name) {
  const size_t slash = member.find('/');
  if (slash == 0 || slash == std::string::npos || slash + 1 == member.size() || slash > 9) return false;
  for (size_t i = 0; i < slash; ++i)
    if (!std::isdigit(static_cast<unsigned char>(member[i]))) return false;
  *k = std::stoul(member.substr(0, slash));
  *name = member.substr(slash + 1);
  return true;
}

SetFile read_set_file(const std::string& path, const std::string& flag) {
  SetFile f;
  f.path = path;
  std::map<size_t, TensorMap> sets;
  for (auto& [member, t] : read_npz(path)) {
    if (member == kCrcMember) {
      if (t.dtype() != DType::kU32 || t.rank() != 1)
        throw Error(ErrorCode::kInvalidArgument,
                    flag + " " + path + ": member '" + member + "' should be uint32[sets]");
      auto v = t.values<uint32_t>();
      f.input_crc.assign(v.begin(), v.end());
      continue;
    }
    if (member == kSourceMember) {
      if (t.dtype() == DType::kU8) f.source.assign(t.data<uint8_t>(), t.data<uint8_t>() + t.numel());
      continue;
    }
    if (member.rfind("kiln.", 0) == 0) continue;  // metadata of a later version
    size_t k = 0;
    std::string name;
    if (!split_set_member(member, &k, &name))
      throw Error(ErrorCode::kInvalidArgument, flag + " " + path + ": member '" + member +
                                                   "' is not SET/NAME (a file written by --save-outputs holds tensor "
                                                   "NAME of input set K as member 'K/NAME')");
    sets[k][name] = std::move(t);
  }
  size_t expect = 0;
  for (auto& [k, set] : sets) {
    if (k != expect)
      throw Error(ErrorCode::kInvalidArgument, flag + " " + path + ": holds input set " + std::to_string(k) +
                                                   " but no set " + std::to_string(expect));
    f.sets.push_back(std::move(set));
    ++expect;
  }
  if (f.sets.empty())
    throw Error(ErrorCode::kInvalidArgument, flag + " " + path + ": holds no tensors (expected members 'K/NAME')");
  if (!f.input_crc.empty() && f.input_crc.size() != f.sets.size())
    throw Error(ErrorCode::kInvalidArgument, flag + " " + path + ": holds tensors of " + std::to_string(f.sets.size()) +
                                                 " input sets but was saved "
                                                 "from " +
                                                 std::to_string(f.input_crc.size()) + " ('" + kCrcMember +
                                                 "'): a set is missing");
  return f;
}

// ---------------------------------------------------------------------------------------------
// ONNX Runtime as the reference: tools/onnxrt_runner.js under node, run once over every input set.

// A scratch folder, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "kiln-compare-XXXXXX").string();
    if (!mkdtemp(tmpl.data()))
      throw Error(ErrorCode::kIo,
                  "cannot create a folder in " + fs::temp_directory_path().string() + ": " + std::strerror(errno));
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

constexpr const char* kOrtHelp = "docs/compare.md#onnx-runtime-setup";

bool is_executable(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

// $KILN_NODE (a path, or a name looked up on PATH), else `node` on PATH.
fs::path find_node() {
  const char* env = std::getenv("KILN_NODE");
  const std::string want = env && *env ? env : "node";
  if (want.find('/') != std::string::npos) {
    if (is_executable(want)) return want;
    throw Error(ErrorCode::kIo, "KILN_NODE=" + want + " is not an executable file (" + kOrtHelp + ")");
  }
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "");
  for (std::string dir; std::getline(ss, dir, ':');)
    if (!dir.empty() && is_executable(fs::path(dir) / want)) return fs::path(dir) / want;
  throw Error(ErrorCode::kIo, std::string(env && *env ? "KILN_NODE=" + want + ": not found on PATH"
                                                      : "node (Node.js) not found on PATH") +
                                  ": --onnxrt runs ONNX Runtime through onnxruntime-node; install both with "
                                  "scripts/setup-bench.sh, or set KILN_NODE to the node binary (" +
                                  kOrtHelp + ")");
}

// $KILN_ORT_RUNNER, else tools/onnxrt_runner.js of the source tree this kiln was built in (a build
// folder sits inside it), else share/kiln/onnxrt_runner.js next to an installed bin/kiln.
fs::path find_runner() {
  if (const char* env = std::getenv("KILN_ORT_RUNNER"); env && *env) {
    if (fs::is_regular_file(env)) return env;
    throw Error(ErrorCode::kIo, std::string("KILN_ORT_RUNNER=") + env + ": no such file (" + kOrtHelp + ")");
  }
  std::vector<fs::path> tried;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path dir = exe.parent_path();
    for (int up = 0; up < 4 && !dir.empty(); ++up, dir = dir.parent_path()) {
      tried.push_back(dir / "tools" / "onnxrt_runner.js");
      if (dir == dir.parent_path()) break;
    }
    tried.push_back(exe.parent_path().parent_path() / "share" / "kiln" / "onnxrt_runner.js");
  }
  std::string looked;
  for (const auto& p : tried) {
    if (fs::is_regular_file(p, ec)) return p;
    looked += (looked.empty() ? "" : ", ") + p.string();
  }
  throw Error(ErrorCode::kIo, "cannot find onnxrt_runner.js (looked at " + looked +
                                  "): set KILN_ORT_RUNNER to tools/onnxrt_runner.js of the Kiln sources (" + kOrtHelp +
                                  ")");
}

// $KILN_ORT_MODULES, else bench/node_modules beside the runner's tools/ folder when it exists, else
// none (node's own search path).
std::string ort_modules(const fs::path& runner) {
  if (const char* env = std::getenv("KILN_ORT_MODULES"); env && *env) return env;
  std::error_code ec;
  const fs::path bench = runner.parent_path().parent_path() / "bench" / "node_modules";
  return fs::is_directory(bench, ec) ? bench.string() : std::string();
}

// Runs argv (argv[0] a path) with stdout and stderr into `log`; returns the wait status.
int run_process(const std::vector<std::string>& argv, const fs::path& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw Error(ErrorCode::kIo, "cannot start " + argv[0] + ": " + std::strerror(rc));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw Error(ErrorCode::kIo, "waiting for " + argv[0] + ": " + std::strerror(errno));
  return status;
}

// What the runner printed, without its prefix, trimmed to a readable length.
std::string runner_message(const fs::path& log) {
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const std::string prefix : {"onnxrt_runner: error: ", "onnxrt_runner: "})
    if (const size_t at = text.find(prefix); at != std::string::npos) {
      text = text.substr(at + prefix.size());
      break;
    }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  constexpr size_t kMax = 4000;
  if (text.size() > kMax) text = text.substr(0, kMax) + " ...";
  return text.empty() ? std::string("(no message)") : text;
}

// Writes a copy of the ONNX file with `values` added as graph outputs, edited at the protobuf level
// so ONNX Runtime runs the model exactly as written. External-data files are linked next to it.
// (The locations were checked to stay inside the model's folder when the model was loaded.)
fs::path write_marked_model(const std::string& model, const std::vector<std::string>& values, const fs::path& dir) {
  auto file = MappedFile::open(model);
  onnx::ModelProto proto;
  google::protobuf::io::CodedInputStream stream(file->data(),
                                                static_cast<int>(std::min<size_t>(file->size(), INT_MAX)));
  stream.SetTotalBytesLimit(INT_MAX);
  if (file->size() > static_cast<size_t>(INT_MAX) || !proto.ParseFromCodedStream(&stream))
    throw Error(ErrorCode::kUnsupported, model +
                                             ": cannot parse it to mark its intermediate tensors as outputs "
                                             "(models over 2 GiB need their weights in external data)");
  onnx::GraphProto* g = proto.mutable_graph();
  std::set<std::string> present;
  for (const auto& o : g->output()) present.insert(o.name());
  for (const auto& v : values)
    if (present.insert(v).second) g->add_output()->set_name(v);  // no type: ONNX Runtime infers it
  // External-data files appear in `dir` under the same relative names: hard links (ONNX Runtime
  // resolves symbolic links and refuses files outside the model's folder), copies across file systems.
  const fs::path model_dir = fs::absolute(fs::path(model)).parent_path();
  auto link = [&](const onnx::TensorProto& t) {
    if (t.data_location() != onnx::TensorProto::EXTERNAL) return;
    for (const auto& kv : t.external_data()) {
      if (kv.key() != "location") continue;
      const fs::path to = dir / kv.value();
      std::error_code ec;
      if (fs::exists(to, ec)) continue;
      fs::create_directories(to.parent_path());
      fs::create_hard_link(model_dir / kv.value(), to, ec);
      if (ec) fs::copy_file(model_dir / kv.value(), to);
    }
  };
  for (const auto& t : g->initializer()) link(t);
  for (const auto& n : g->node())
    for (const auto& a : n.attribute())
      if (a.has_t()) link(a.t());
  const fs::path out = dir / "marked.onnx";
  std::ofstream os(out, std::ios::binary | std::ios::trunc);
  if (!os || !proto.SerializeToOstream(&os))
    throw Error(ErrorCode::kIo, out.string() + ": cannot write the model with its intermediate tensors as outputs");
  return out;
}

// Every input set goes to a temporary folder; one runner process computes the outputs of all of
// them; they are read back one set at a time.
class OrtReference {
 public:
  OrtReference(const CompareArgs& a, const std::vector<std::string>& mark)
      : a_(a), mark_(mark), in_(tmp_.path() / "inputs"), out_(tmp_.path() / "outputs") {
    node_ = find_node();
    runner_ = find_runner();
    modules_ = ort_modules(runner_);
    fs::create_directories(in_);
  }

  // Writes input set `k` (sets come in order 0, 1, ...).
  void add_inputs(const TensorMap& inputs) {
    const size_t k = manifest_.size();
    json items = json::array();
    size_t i = 0;
    for (const auto& [name, t] : inputs) {
      const std::string file = std::to_string(k) + "_" + std::to_string(i++) + ".npy";
      write_npy(in_ / file, t);
      items.push_back({{"name", name}, {"file", file}});
    }
    manifest_.push_back({{"inputs", items}});
  }
  size_t sets() const { return manifest_.size(); }

  // Runs ONNX Runtime over the sets written so far.
  void run() {
    {
      std::ofstream m(in_ / "manifest.json");
      m << json{{"sets", manifest_}}.dump() << "\n";
      if (!m) throw Error(ErrorCode::kIo, (in_ / "manifest.json").string() + ": cannot write");
    }
    const std::string model = mark_.empty() ? a_.model : write_marked_model(a_.model, mark_, tmp_.path()).string();
    std::vector<std::string> argv = {node_.string(), runner_.string(), model,         "--inputs",         in_.string(),
                                     "--outputs",    out_.string(),    "--opt-level", a_.onnxrt_opt_level};
    if (a_.threads > 0) argv.insert(argv.end(), {"--threads", std::to_string(a_.threads)});
    if (!modules_.empty()) argv.insert(argv.end(), {"--modules", modules_});
    const fs::path log = tmp_.path() / "runner.log";
    const int status = run_process(argv, log);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
      throw Error(ErrorCode::kIo, "ONNX Runtime is not available: " + runner_message(log) +
                                      ". Install onnxruntime-node with scripts/setup-bench.sh (or: cd bench && npm "
                                      "install --ignore-scripts), or set KILN_ORT_MODULES to a node_modules folder "
                                      "that holds it (" +
                                      kOrtHelp + ")");
    if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
      throw Error(ErrorCode::kInvalidModel, "ONNX Runtime failed on " + a_.model + ": " + runner_message(log));
    if (!WIFEXITED(status))
      throw Error(ErrorCode::kInternal, node_.string() + " " + runner_.string() + " was killed by signal " +
                                            std::to_string(WTERMSIG(status)) + ": " + runner_message(log));
    std::ifstream m(out_ / "manifest.json");
    try {
      result_ = json::parse(m);
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kInternal, (out_ / "manifest.json").string() + ": unreadable runner output: " + e.what());
    }
    if (!result_.contains("sets") || result_["sets"].size() != manifest_.size())
      throw Error(ErrorCode::kInternal, "onnxrt_runner.js returned outputs of " +
                                            std::to_string(result_.value("sets", json::array()).size()) + " sets for " +
                                            std::to_string(manifest_.size()));
  }

  TensorMap inputs(size_t k) const { return read_set(in_, manifest_.at(k)["inputs"]); }
  TensorMap outputs(size_t k) const { return read_set(out_, result_["sets"].at(k)["outputs"]); }

  std::string description() const {
    return "onnxruntime-node " + result_.value("ort_version", std::string("?")) + ", CPU EP, graph optimizations " +
           a_.onnxrt_opt_level;
  }

 private:
  static TensorMap read_set(const fs::path& dir, const json& items) {
    TensorMap m;
    for (const auto& it : items) m[it.at("name").get<std::string>()] = read_npy(dir / it.at("file").get<std::string>());
    return m;
  }

  const CompareArgs& a_;
  std::vector<std::string> mark_;
  TempDir tmp_;
  fs::path in_, out_, node_, runner_;
  std::string modules_;
  json manifest_ = json::array();
  json result_;
};

// One side of the comparison.
class Runner {
 public:
  virtual ~Runner() = default;
  // The graph outputs and, when the runner exposes intermediates, those too.
  virtual TensorMap run(const TensorMap& inputs) = 0;
  // The optimized model that ran last (for the int8 values of a per-layer comparison); null for
  // the reference executor.
  virtual const Model* engine_model() const { return nullptr; }
};

class ReferenceRunner final : public Runner {
 public:
  ReferenceRunner(Model model, bool keep) : exec_(std::move(model)), keep_(keep) {}
  TensorMap run(const TensorMap& inputs) override {
    reference::RunOptions o;
    o.keep_intermediates = keep_;
    return exec_.run(inputs, o);
  }

 private:
  reference::Executor exec_;
  bool keep_;
};

// An engine file, or an ONNX model built with build_engine's default config once per set of input
// shapes (a static profile each, as `kiln run` does).
class CpuRunner final : public Runner {
 public:
  using Want = std::function<bool(const std::string&)>;
  // An engine file's optimized model; `expose` picks intermediate values to read back (after the
  // build: the engine's tactics stay as they are, forced by node index).
  CpuRunner(Model optimized, EngineInfo info, int threads, const Want& expose) : threads_(threads) {
    if (expose) expose_values(optimized, expose);
    fixed_ = std::make_shared<EngineRuntime>(std::move(optimized), std::move(info), threads);
    ctx_fixed_ = std::make_unique<Context>(fixed_);
  }
  // An ONNX model (its outputs already marked for a per-layer comparison), built on first use at
  // each input shape.
  CpuRunner(Model onnx, int threads) : onnx_(std::move(onnx)), threads_(threads) {}

  TensorMap run(const TensorMap& inputs) override {
    if (fixed_) {
      last_ = fixed_.get();
      return ctx_fixed_->run(inputs);
    }
    ShapeMap shapes;
    for (const auto& [name, t] : inputs) shapes[name] = t.shape();
    auto it = built_.find(shapes);
    if (it == built_.end()) {
      BuildConfig cfg;
      cfg.threads = threads_;
      cfg.profiles.resize(1);
      for (const auto& [name, d] : shapes) cfg.profiles[0].inputs[name] = ProfileDims{d, d, d};
      BuildResult r = build_engine(*onnx_, cfg);
      Built b;
      b.runtime = std::make_shared<EngineRuntime>(std::move(r.model), std::move(r.info), threads_);
      b.runtime->add_program(shapes, r.program);  // the program the build compiled is the one to run
      b.context = std::make_unique<Context>(b.runtime);
      it = built_.emplace(shapes, std::move(b)).first;
    }
    last_ = it->second.runtime.get();
    return it->second.context->run(inputs);
  }
  const Model* engine_model() const override { return last_ ? &last_->model() : nullptr; }

 private:
  struct Built {
    std::shared_ptr<EngineRuntime> runtime;
    std::unique_ptr<Context> context;
  };
  std::optional<Model> onnx_;
  int threads_;
  std::shared_ptr<EngineRuntime> fixed_;
  std::unique_ptr<Context> ctx_fixed_;
  std::map<ShapeMap, Built> built_;
  const EngineRuntime* last_ = nullptr;
};

// The inputs to compare on: files, calibration batches or seeded random tensors, one set at a time.
class SampleSource {
 public:
  SampleSource(const CompareArgs& a, const Model& model, bool is_engine, const EngineInfo& info)
      : a_(a), model_(model) {
    const Graph& g = model.graph;
    if (!a.calib.empty()) {
      calib_ = std::make_unique<quant::FileCalibrator>(a.calib, model, a.batch,
                                                      static_cast<size_t>(std::max<int64_t>(a.samples, 0)));
      description_ = "calibration data " + a.calib + " (batch " + std::to_string(a.batch) + ")";
      return;
    }
    if (!a.inputs.empty()) {
      load_files(g);
      return;
    }
    shapes_ = parse_shapes(a.shapes);
    check_shape_names(g, shapes_, "--shapes", a.model);
    // An engine's dynamic inputs default to the shapes its tactics were timed at (as `kiln run`).
    if (is_engine)
      for (const auto& [name, dims] : info.profile_shapes)
        if (!shapes_.count(name)) shapes_[name] = dims;
    random_count_ = a.samples > 0 ? a.samples : 1;
    std::string shapes_text;
    for (const auto& in : g.inputs) {
      const TensorType* type = g.type_of(in);
      if (!type || type->dtype == DType::kUndefined)
        throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' has no tensor type; give it with --input");
      dims_[in] = resolve_input_shape(in, *type, shapes_, &notes_);
      shapes_text += (shapes_text.empty() ? "" : ", ") + in + " " + std::string(dtype_name(type->dtype)) + "[" +
                     shape_to_string(dims_[in]) + "]";
    }
    description_ = "random (seed " + std::to_string(a.seed) + "): " + shapes_text;
  }

  const std::string& notes() const { return notes_; }
  // Samples of a partial last calibration batch that were left out.
  int64_t skipped() const { return skipped_; }
  const std::string& description() const { return description_; }

  // The next set of inputs; false when done.
  bool next(TensorMap& out) {
    const Graph& g = model_.graph;
    out.clear();
    if (calib_) {
      quant::TensorMap batch;
      while (calib_->next_batch(batch)) {
        // A smaller last batch would fall outside an engine's static profile: left out (noted).
        int64_t rows = a_.batch;
        for (const auto& [name, t] : batch) rows = t.rank() > 0 ? std::min(rows, t.dim(0)) : rows;
        if (a_.batch > 1 && index_ > 0 && rows < a_.batch) {
          skipped_ += rows;
          continue;
        }
        for (auto& [name, t] : batch) out[name] = std::move(t);
        ++index_;
        return true;
      }
      return false;
    }
    if (!files_.empty() || !a_.inputs.empty()) {
      if (index_ >= files_.size()) return false;
      out = files_[index_++];
      return true;
    }
    if (index_ >= static_cast<size_t>(random_count_)) return false;
    for (size_t i = 0; i < g.inputs.size(); ++i) {
      const std::string& in = g.inputs[i];
      // Sample 0 uses the seeds `kiln run --seed S` uses, so its inputs are the same.
      const uint64_t seed = a_.seed + index_ * g.inputs.size() + i;
      out[in] = random_tensor(g.type_of(in)->dtype, dims_.at(in), seed, a_.int_range[0], a_.int_range[1]);
    }
    ++index_;
    return true;
  }

 private:
  // Each FILE.npz (named inputs; other members such as expected outputs are ignored) or FILE.npy
  // (the single input) is one set of inputs; NAME=FILE.npy items together make one more.
  void load_files(const Graph& g) {
    TensorMap named;
    for (const auto& spec : a_.inputs) {
      auto eq = spec.find('=');
      if (eq != std::string::npos) {
        const std::string name = spec.substr(0, eq);
        auto tensors = read_tensor_file(spec.substr(eq + 1));
        if (tensors.size() != 1)
          throw Error(ErrorCode::kInvalidArgument, a_.input_flag + " " + spec +
                                                       ": expected a file holding one tensor, found " +
                                                       std::to_string(tensors.size()));
        named[name] = std::move(tensors.front().second);
        continue;
      }
      TensorMap sample;
      auto tensors = read_tensor_file(spec);
      if (spec.size() >= 4 && spec.compare(spec.size() - 4, 4, ".npy") == 0) {
        if (g.inputs.size() != 1)
          throw Error(ErrorCode::kInvalidArgument,
                      a_.input_flag + " " + spec + ": a .npy file feeds a model with one input; " + "this one has " +
                          std::to_string(g.inputs.size()) + " (" + join(g.inputs) + "): use NAME=FILE.npy or a .npz");
        sample[g.inputs[0]] = std::move(tensors.front().second);
      } else {
        auto is_input = [&g](const std::string& name) {
          return std::find(g.inputs.begin(), g.inputs.end(), name) != g.inputs.end();
        };
        // Members named after inputs make one set; else members "K/NAME" (--save-inputs) make set K each.
        std::map<size_t, TensorMap> sets;
        for (auto& [name, t] : tensors) {
          size_t k = 0;
          std::string base;
          if (is_input(name))
            sample[name] = std::move(t);
          else if (split_set_member(name, &k, &base) && is_input(base))
            sets[k][base] = std::move(t);
        }
        if (sample.empty() && !sets.empty()) {
          for (auto& [k, set] : sets) {
            try {
              check_inputs(g, set);
            } catch (const Error& e) {
              throw Error(e.code(), a_.input_flag + " " + spec + ": input set " + std::to_string(k) + ": " + e.what());
            }
            files_.push_back(std::move(set));
          }
          continue;
        }
        if (sample.empty())
          throw Error(ErrorCode::kInvalidArgument, a_.input_flag + " " + spec +
                                                       ": no member is named after an input of " + a_.model +
                                                       " (inputs: " + join(g.inputs) + "), nor 'K/NAME'");
      }
      check_inputs(g, sample);
      files_.push_back(std::move(sample));
    }
    if (!named.empty()) {
      check_inputs(g, named);
      files_.push_back(std::move(named));
    }
    if (a_.samples > 0 && files_.size() > static_cast<size_t>(a_.samples))
      files_.resize(static_cast<size_t>(a_.samples));
    description_ =
        std::to_string(files_.size()) + " input set" + (files_.size() == 1 ? "" : "s") + " from " + a_.input_flag;
  }

  const CompareArgs& a_;
  const Model& model_;
  std::unique_ptr<quant::FileCalibrator> calib_;
  std::vector<TensorMap> files_;
  ShapeMap shapes_;
  std::map<std::string, std::vector<int64_t>> dims_;
  int64_t random_count_ = 0;
  size_t index_ = 0;
  int64_t skipped_ = 0;
  std::string notes_, description_;
};

Tensor dequantize(const Tensor& q, const quant::QuantizedValue& qv) {
  const std::vector<double> v = q.to_double_vector();
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>((v[i] - qv.zero_point) * qv.scale);
  return Tensor::from_vector<float>(q.shape(), out);
}

// One row of the per-layer table.
struct LayerRow {
  std::string name;            // the reference's tensor
  std::string engine_name;     // the engine's (differs for a dequantized int8 value)
  std::string op;              // the reference node producing it
  DType engine_dtype = DType::kUndefined;
  ErrorStats stats;
  std::string error;           // e.g. a shape mismatch: not compared
};

// top1: only for outputs (an intermediate's last dim is rarely a class axis).
json stats_json(const ErrorStats& s, bool top1) {
  json j = {{"max_abs", s.max_abs},       {"max_rel", s.max_rel}, {"mean_abs", s.mean_abs()},
            {"cosine", s.cosine},         {"count", s.count},     {"has_nan", s.has_nan}};
  if (top1 && s.has_top1()) j["top1"] = {{"agree", s.top1_agree}, {"total", s.top1_total}, {"rate", s.top1_rate()}};
  if (s.check_tolerance) j["tolerance_failures"] = s.tolerance_failures;
  return j;
}

std::string top1_text(const ErrorStats& s) {
  if (!s.has_top1()) return "-";
  return std::to_string(s.top1_agree) + "/" + std::to_string(s.top1_total) + " (" + fixed(100.0 * s.top1_rate(), 1) +
         "%)";
}

// Prints rows as a left-aligned table with a header.
void print_table(std::ostream& os, const std::vector<std::vector<std::string>>& rows, const std::string& indent) {
  std::vector<size_t> w;
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c) {
      if (w.size() <= c) w.push_back(0);
      w[c] = std::max(w[c], r[c].size());
    }
  for (const auto& r : rows) {
    std::string line = indent;
    for (size_t c = 0; c < r.size(); ++c) {
      line += r[c];
      if (c + 1 < r.size()) line += std::string(w[c] - r[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    os << line << "\n";
  }
}

int cmd_compare(const CompareArgs& a) {
  // The thing under test.
  bool is_engine = false;
  EngineInfo info;
  Model target = load_model_or_engine(a.target, &is_engine, nullptr, nullptr, &info);
  // The reference.
  Model ref = load_onnx(a.model);
  topological_sort(ref.graph);
  const std::vector<std::string> ref_outputs = ref.graph.outputs;
  const std::set<std::string> ref_outputs_set(ref_outputs.begin(), ref_outputs.end());

  // Same interface, or the comparison means nothing.
  {
    std::set<std::string> ti(target.graph.inputs.begin(), target.graph.inputs.end());
    std::set<std::string> ri(ref.graph.inputs.begin(), ref.graph.inputs.end());
    if (ti != ri)
      throw Error(ErrorCode::kInvalidArgument, a.target + " has inputs (" + join(target.graph.inputs) + ") but " +
                                                   a.model + " has (" + join(ref.graph.inputs) +
                                                   "): compare an engine with the model it was built from");
    for (const auto& o : ref_outputs)
      if (std::find(target.graph.outputs.begin(), target.graph.outputs.end(), o) == target.graph.outputs.end())
        throw Error(ErrorCode::kInvalidArgument, a.target + " has no output '" + o + "' of " + a.model + " (outputs: " +
                                                     join(target.graph.outputs) + ")");
  }

  // Per-layer: the reference's float tensors in topological order, and which engine values to read.
  std::vector<LayerRow> layers;
  std::set<std::string> layer_names;
  if (a.per_layer) {
    Model typed = ref;
    InferOptions o;
    o.evaluator = reference::constant_evaluator();
    infer_types(typed, o);
    for (const Node& n : typed.graph.nodes)
      for (const auto& o : n.outputs) {
        if (o.empty() || layer_names.count(o)) continue;
        const TensorType* t = typed.graph.type_of(o);
        if (t && t->dtype != DType::kUndefined && !is_float(t->dtype)) continue;
        LayerRow row;
        row.name = o;
        row.op = n.op_type;
        layers.push_back(std::move(row));
        layer_names.insert(o);
      }
  }
  // Values of the thing under test to read back: the reference's tensors, and 8-bit values whose
  // source is one of them. An engine exposes them after its build; an ONNX model is built with them
  // as graph outputs (as Polygraphy marks all outputs), so no fusion hides them.
  CpuRunner::Want expose;
  if (a.per_layer) {
    std::set<std::string> quantized;
    for (const auto& [name, qv] : quant::quantized_values(target))
      if (layer_names.count(qv.source)) quantized.insert(name);
    expose = [&layer_names, quantized](const std::string& v) {
      return layer_names.count(v) != 0 || quantized.count(v) != 0;
    };
  }

  SampleSource source(a, ref, is_engine, info);
  std::cerr << source.notes();

  std::unique_ptr<Runner> under_test;
  if (is_engine) {
    under_test = std::make_unique<CpuRunner>(std::move(target), std::move(info), a.threads, expose);
  } else {
    if (a.per_layer) mark_outputs(target, expose);
    under_test = std::make_unique<CpuRunner>(std::move(target), a.threads);
  }

  // The reference: run per input set (reference executor, cpu build), run once over every set
  // beforehand (ONNX Runtime), or loaded from a file.
  std::unique_ptr<Runner> reference_side;
  std::unique_ptr<OrtReference> ort;
  std::optional<SetFile> loaded;
  std::string reference_text;
  // The next set of inputs: from the source, or read back from where ONNX Runtime read it.
  std::function<bool(TensorMap&)> next_inputs = [&source](TensorMap& in) { return source.next(in); };
  if (a.reference == "cpu") {
    Model m = ref;
    // Every reference tensor is read back, which only keeps the fp32 reference closer to the model
    // as written.
    if (a.per_layer) mark_outputs(m, [&](const std::string& v) { return layer_names.count(v) != 0; });
    reference_side = std::make_unique<CpuRunner>(std::move(m), a.threads);
    reference_text = "cpu backend, fp32 build";
  } else if (a.reference == "onnxrt") {
    // Intermediates become graph outputs of a copy of the model (Polygraphy's `mark all`).
    std::vector<std::string> mark;
    for (const LayerRow& r : layers)
      if (std::find(ref.graph.inputs.begin(), ref.graph.inputs.end(), r.name) == ref.graph.inputs.end())
        mark.push_back(r.name);
    ort = std::make_unique<OrtReference>(a, mark);
    TensorMap in;
    while (source.next(in)) ort->add_inputs(in);
    if (ort->sets() > 0) ort->run();
    reference_text = ort->description();
    next_inputs = [&ort, k = size_t{0}](TensorMap& in) mutable {
      if (k >= ort->sets()) return false;
      in = ort->inputs(k++);
      return true;
    };
  } else if (a.reference == "loaded") {
    loaded = read_set_file(a.load_outputs, "--load-outputs");
    reference_text = "outputs loaded from " + a.load_outputs +
                     (loaded->source.empty() ? std::string() : " (saved from " + loaded->source + ")");
    if (a.per_layer) {
      bool any = false;
      for (const auto& set : loaded->sets)
        for (const auto& [name, t] : set) any = any || (layer_names.count(name) && !ref_outputs_set.count(name));
      if (!any && !layers.empty())
        throw Error(ErrorCode::kInvalidArgument, "--load-outputs " + a.load_outputs +
                                                     ": holds no intermediate tensors of " + a.model +
                                                     " for --mark-all: save them with --mark-all --save-outputs");
    }
  } else {
    reference_side = std::make_unique<ReferenceRunner>(ref, a.per_layer);
    reference_text = "reference executor";
  }
  const std::string target_text = a.target + (is_engine ? " (kiln engine)" : " (kiln cpu build)");
  SetFileWriter save_inputs(a.save_inputs, "kiln compare input sets");
  SetFileWriter save_outputs(a.save_outputs, a.model + " (" + reference_text + ")");
  SetFileWriter save_target(a.save_target_outputs, target_text);

  // The reference outputs of input set k.
  auto reference_outputs = [&](size_t k, const TensorMap& in) -> TensorMap {
    if (ort) return ort->outputs(k);
    if (!loaded) return reference_side->run(in);
    const std::string file = "--load-outputs " + a.load_outputs;
    const size_t n = loaded->sets.size();
    if (k >= n)
      throw Error(ErrorCode::kInvalidArgument,
                  file + ": holds the outputs of " + std::to_string(n) + " input set" + (n == 1 ? "" : "s") +
                      " but more are compared: load the inputs they were saved with (--load-inputs)");
    if (!loaded->input_crc.empty() && loaded->input_crc[k] != input_set_crc(in))
      throw Error(ErrorCode::kInvalidArgument,
                  file + ": input set " + std::to_string(k) +
                      " is not the one these outputs were computed from: load the inputs they were saved with "
                      "(--load-inputs)");
    TensorMap out = loaded->sets[k];
    for (const auto& o : ref_outputs) {
      auto it = out.find(o);
      if (it == out.end()) {
        std::vector<std::string> names;
        for (const auto& [name, t] : out) names.push_back(name);
        throw Error(ErrorCode::kInvalidArgument, file + ": input set " + std::to_string(k) + " has no output '" + o +
                                                     "' of " + a.model + " (it holds: " + join(names) + ")");
      }
      const TensorType* declared = ref.graph.type_of(o);
      if (declared && declared->dtype != DType::kUndefined && it->second.dtype() != declared->dtype)
        throw Error(ErrorCode::kInvalidArgument, file + ": output '" + o + "' of input set " + std::to_string(k) +
                                                     " is " + std::string(dtype_name(it->second.dtype())) + " but " +
                                                     a.model + " declares " + std::string(dtype_name(declared->dtype)));
    }
    return out;
  };

  std::map<std::string, ErrorStats> out_stats;
  for (const auto& o : ref_outputs) {
    ErrorStats s;
    if (a.has_atol || a.has_rtol) s.set_tolerance(a.atol, a.rtol);
    out_stats[o] = s;
  }
  std::map<std::string, quant::QuantizedValue> qvalues;  // of the engine model that ran
  const Model* qvalues_of = nullptr;
  int64_t runs = 0, rows = 0;
  TensorMap inputs;
  while (next_inputs(inputs)) {
    const size_t k = static_cast<size_t>(runs);
    TensorMap want = reference_outputs(k, inputs);
    TensorMap got = under_test->run(inputs);
    ++runs;
    if (!inputs.empty()) {
      const Tensor& first = inputs.begin()->second;
      rows += first.rank() > 0 ? first.dim(0) : 1;
    }
    save_inputs.add(k, inputs, nullptr);
    TensorMap saved_want, saved_got;  // this set's outputs and compared intermediates
    for (const auto& o : ref_outputs) {
      auto g = got.find(o), w = want.find(o);
      if (g == got.end() || w == want.end()) throw Error(ErrorCode::kInternal, "output '" + o + "' was not produced");
      if (loaded && g->second.shape() != w->second.shape())
        throw Error(ErrorCode::kInvalidArgument, "--load-outputs " + a.load_outputs + ": output '" + o +
                                                     "' of input set " + std::to_string(k) + " has shape " +
                                                     shape_to_string(w->second.shape()) + " but " + a.target +
                                                     " produced " + shape_to_string(g->second.shape()));
      if (loaded && g->second.dtype() != w->second.dtype())
        throw Error(ErrorCode::kInvalidArgument, "--load-outputs " + a.load_outputs + ": output '" + o +
                                                     "' of input set " + std::to_string(k) + " is " +
                                                     std::string(dtype_name(w->second.dtype())) + " but " + a.target +
                                                     " produced " + std::string(dtype_name(g->second.dtype())));
      try {
        out_stats[o].add(g->second, w->second);
      } catch (const Error& e) {
        throw Error(e.code(), "output '" + o + "': " + e.what());
      }
      saved_want[o] = w->second;
      saved_got[o] = g->second;
    }
    if (a.per_layer) {
      if (under_test->engine_model() != qvalues_of) {
        qvalues_of = under_test->engine_model();
        qvalues = qvalues_of ? quant::quantized_values(*qvalues_of) : decltype(qvalues){};
      }
      std::map<std::string, std::string> by_source;  // reference name -> engine int8 value
      for (const auto& [name, qv] : qvalues)
        if (got.count(name)) by_source.emplace(qv.source, name);
      for (LayerRow& row : layers) {
        auto w = want.find(row.name);
        if (w == want.end()) continue;
        saved_want.emplace(row.name, w->second);
        if (!is_float(w->second.dtype()) || !row.error.empty()) continue;
        // The engine's own float tensor of that name, else an int8 one read back as floats.
        Tensor engine_value;
        auto g = got.find(row.name);
        if (g != got.end() && !dtype_is_8bit(g->second.dtype())) {
          row.engine_name = row.name;
          engine_value = g->second;
        } else if (g != got.end() && qvalues.count(row.name)) {
          row.engine_name = row.name;
          engine_value = dequantize(g->second, qvalues.at(row.name));
        } else if (auto s = by_source.find(row.name); s != by_source.end()) {
          row.engine_name = s->second;
          engine_value = dequantize(got.at(s->second), qvalues.at(s->second));
        } else {
          continue;  // fused away, or an 8-bit value of unknown scale
        }
        row.engine_dtype = got.at(row.engine_name).dtype();
        saved_got.emplace(row.name, engine_value);
        try {
          row.stats.add(engine_value, w->second);
        } catch (const Error& e) {
          row.error = e.what();
        }
      }
    }
    save_outputs.add(k, saved_want, &inputs);
    save_target.add(k, saved_got, &inputs);
  }
  if (runs == 0)
    throw Error(ErrorCode::kInvalidArgument, "no inputs to compare: " + source.description() + " is empty");
  if (loaded && static_cast<size_t>(runs) != loaded->sets.size())
    throw Error(ErrorCode::kInvalidArgument,
                "--load-outputs " + a.load_outputs + ": holds the outputs of " + std::to_string(loaded->sets.size()) +
                    " input sets but " + std::to_string(runs) +
                    " were compared: load the inputs they were saved with (--load-inputs)");
  save_inputs.write();
  save_outputs.write();
  save_target.write();
  if (source.skipped() > 0)
    std::cerr << "note: the last " << source.skipped() << " calibration samples (a partial batch of --batch " << a.batch
              << ") were not compared\n";

  // Checks on the outputs.
  std::vector<std::string> failures;
  for (const auto& o : ref_outputs) {
    const ErrorStats& s = out_stats.at(o);
    if (s.has_nan) failures.push_back("output '" + o + "': NaN in the output or the reference");
    if (s.check_tolerance && s.tolerance_failures > 0)
      failures.push_back("output '" + o + "': " + std::to_string(s.tolerance_failures) + " of " +
                         std::to_string(s.count) + " elements outside |a-b| <= atol + rtol*|b| (atol " +
                         sci(a.atol) + ", rtol " + sci(a.rtol) + "; max abs error " + sci(s.max_abs) + ")");
    if (a.has_min_cosine && !(s.cosine >= a.min_cosine))
      failures.push_back("output '" + o + "': cosine " + cos_text(s.cosine) + " < --min-cosine " +
                         cos_text(a.min_cosine));
  }

  // Per-layer: the first tensor where the error jumps.
  const double layer_cosine = a.has_min_cosine ? a.min_cosine : kDefaultLayerCosine;
  int first_bad = -1;
  std::string first_reason;
  int compared = 0;
  {
    const LayerRow* prev = nullptr;
    for (size_t i = 0; i < layers.size(); ++i) {
      const LayerRow& r = layers[i];
      if (r.stats.count == 0 || !r.error.empty()) continue;
      ++compared;
      if (first_bad >= 0) continue;
      const ErrorStats& s = r.stats;
      if (s.has_nan) {
        first_reason = "NaN";
      } else if (s.cosine < layer_cosine) {
        first_reason = "cosine " + cos_text(s.cosine) + " < " + cos_text(layer_cosine);
      } else if (prev && s.max_abs > kJumpFactor * prev->stats.max_abs && s.normalized_max_abs() > kJumpNoiseFloor) {
        first_reason = "max abs error " + sci(s.max_abs) + " > " + fixed(kJumpFactor, 0) + "x the previous tensor's " +
                       sci(prev->stats.max_abs);
      }
      if (!first_reason.empty()) first_bad = static_cast<int>(i);
      prev = &r;
    }
  }

  const bool passed = failures.empty();
  const std::string under_test_text =
      is_engine ? "engine" : "model, built for the cpu backend with the default config";
  if (a.json) {
    json j;
    j["under_test"] = {{"path", a.target}, {"kind", is_engine ? "engine" : "model"}};
    j["reference"] = {{"path", a.model}, {"kind", a.reference}, {"description", reference_text}};
    if (loaded) j["reference"]["file"] = a.load_outputs;
    j["inputs"] = source.description();
    j["runs"] = runs;
    j["samples"] = rows;
    json checks = json::object();
    if (a.has_atol || a.has_rtol) {
      checks["atol"] = a.atol;
      checks["rtol"] = a.rtol;
    }
    if (a.has_min_cosine) checks["min_cosine"] = a.min_cosine;
    j["checks"] = checks;
    j["outputs"] = json::array();
    for (const auto& o : ref_outputs) {
      json e = stats_json(out_stats.at(o), true);
      e["name"] = o;
      j["outputs"].push_back(e);
    }
    if (a.per_layer) {
      j["per_layer"] = json::array();
      for (size_t i = 0; i < layers.size(); ++i) {
        const LayerRow& r = layers[i];
        if (r.stats.count == 0 && r.error.empty()) continue;
        json e = r.error.empty() ? stats_json(r.stats, false) : json::object();
        e["name"] = r.name;
        e["op"] = r.op;
        e["engine_tensor"] = r.engine_name;
        e["engine_dtype"] = std::string(dtype_name(r.engine_dtype));
        e["dequantized"] = r.engine_name != r.name || dtype_is_8bit(r.engine_dtype);
        if (!r.error.empty()) e["error"] = r.error;
        e["first_divergence"] = static_cast<int>(i) == first_bad;
        j["per_layer"].push_back(e);
      }
      j["per_layer_compared"] = compared;
      j["per_layer_missing"] = static_cast<int>(layers.size()) - compared;
      j["first_divergence"] =
          first_bad >= 0 ? json{{"name", layers[first_bad].name}, {"reason", first_reason}} : json(nullptr);
    }
    json saved = json::object();
    if (!a.save_inputs.empty()) saved["inputs"] = a.save_inputs;
    if (!a.save_outputs.empty()) saved["outputs"] = a.save_outputs;
    if (!a.save_target_outputs.empty()) saved["target_outputs"] = a.save_target_outputs;
    if (!saved.empty()) j["saved"] = saved;
    j["failures"] = failures;
    j["passed"] = passed;
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << "under test: " << a.target << " (" << under_test_text << ")\n";
    std::cout << "reference:  " << a.model << " (" << reference_text << ")\n";
    std::cout << "inputs:     " << source.description() << "; " << runs << " run" << (runs == 1 ? "" : "s") << ", "
              << rows << " sample" << (rows == 1 ? "" : "s") << "\n";
    std::vector<std::vector<std::string>> table = {{"output", "max_abs", "max_rel", "mean_abs", "cosine", "top1"}};
    for (const auto& o : ref_outputs) {
      const ErrorStats& s = out_stats.at(o);
      table.push_back({o, sci(s.max_abs), sci(s.max_rel), sci(s.mean_abs()), cos_text(s.cosine), top1_text(s)});
    }
    print_table(std::cout, table, "  ");
    if (a.per_layer) {
      std::cout << "per layer (reference order; " << compared << " of " << layers.size()
                << " reference tensors found in the "
                << (is_engine ? "engine" : "model under test, built with them as outputs") << "; cosine limit "
                << cos_text(layer_cosine) << "):\n";
      std::vector<std::vector<std::string>> lt = {{"#", "tensor", "op", "engine", "cosine", "max_abs", ""}};
      int k = 0;
      for (size_t i = 0; i < layers.size(); ++i) {
        const LayerRow& r = layers[i];
        if (r.stats.count == 0 && r.error.empty()) continue;
        std::string engine = std::string(dtype_name(r.engine_dtype));
        if (r.engine_name != r.name) engine += " " + r.engine_name;
        if (r.engine_name != r.name || dtype_is_8bit(r.engine_dtype)) engine += " (dequantized)";
        std::string mark = static_cast<int>(i) == first_bad ? "<- first divergence: " + first_reason : "";
        if (!r.error.empty())
          lt.push_back({std::to_string(++k), r.name, r.op, engine, "-", "-", "not compared: " + r.error});
        else
          lt.push_back(
              {std::to_string(++k), r.name, r.op, engine, cos_text(r.stats.cosine), sci(r.stats.max_abs), mark});
      }
      print_table(std::cout, lt, "  ");
      if (first_bad >= 0)
        std::cout << "first divergence: '" << layers[first_bad].name << "' (" << layers[first_bad].op << "): "
                  << first_reason << "\n";
      else
        std::cout << "first divergence: none\n";
    }
    std::vector<std::string> checks;
    if (a.has_atol || a.has_rtol) checks.push_back("|a-b| <= " + sci(a.atol) + " + " + sci(a.rtol) + "*|b|");
    if (a.has_min_cosine) checks.push_back("cosine >= " + cos_text(a.min_cosine));
    std::cout << "checks:     " << (checks.empty() ? std::string("none given (only NaNs fail)") : join(checks)) << "\n";
    if (!a.save_inputs.empty()) std::cout << "saved:      input sets to " << a.save_inputs << "\n";
    if (!a.save_outputs.empty()) std::cout << "saved:      reference outputs to " << a.save_outputs << "\n";
    if (!a.save_target_outputs.empty())
      std::cout << "saved:      outputs under test to " << a.save_target_outputs << "\n";
    for (const auto& f : failures) std::cout << "FAILED: " << f << "\n";
    std::cout << (passed ? "PASSED" : "FAILED") << "\n";
  }
  return passed ? 0 : 1;
}

}  // namespace

// Registers `kiln compare` on `app`; *run is set to the function that runs it once parsed.
CLI::App* add_compare_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<CompareArgs>();
  auto* sub = app.add_subcommand("compare",
                                 "Compare an engine (or model) against a reference of its ONNX model (Kiln's FP32 "
                                 "reference executor or ONNX Runtime): per-output errors, cosine, top-1, tolerance "
                                 "checks");
  sub->add_option("engine", args->target, "Kiln engine or ONNX model under test")->required();
  sub->add_option("--model,-m", args->model, "The ONNX model the reference runs")->required();
  auto* input = sub->add_option("--input,-i", args->inputs,
                                "FILE.npz of named inputs or FILE.npy of the single input: one set of inputs each; "
                                "NAME=FILE.npy items make one set together (repeatable)");
  auto* calib =
      sub->add_option("--calib", args->calib, "Calibration data: a .npz or a folder of .npy/.npz (as kiln build)");
  calib->excludes(input);
  sub->add_option("--samples", args->samples,
                  "Sets of inputs to compare (default: 1 random, every calibration batch, every --input)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--batch", args->batch, "Samples per calibration batch (default 1)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  sub->add_option("--shapes", args->shapes, "Shapes of generated inputs: NAME:1x3x224x224,...");
  sub->add_option("--seed", args->seed, "Seed of generated inputs (set k, input i uses seed + k*inputs + i)");
  sub->add_option("--int-range", args->int_range, "Range [LO,HI) of generated integer inputs")
      ->expected(2)
      ->delimiter(',');
  auto* atol = sub->add_option("--atol", args->atol, "Fail when |a-b| > atol + rtol*|b| for an element")
                   ->check(CLI::NonNegativeNumber);
  auto* rtol = sub->add_option("--rtol", args->rtol, "Relative tolerance of that check (default 0)")
                   ->check(CLI::NonNegativeNumber);
  auto* min_cos =
      sub->add_option("--min-cosine", args->min_cosine, "Fail when an output's cosine similarity is below this")
          ->check(CLI::Range(-1.0, 1.0));
  sub->add_flag("--per-layer,--mark-all", args->per_layer,
                "Also compare every intermediate tensor both sides have (Polygraphy's `mark all`); name the first "
                "where the error jumps");
  auto* reference = sub->add_option("--reference", args->reference,
                                    "reference (default: Kiln's reference executor), cpu (the fp32 model built for "
                                    "the cpu backend) or onnxrt (ONNX Runtime, as --onnxrt)")
                        ->check(CLI::IsMember({"reference", "cpu", "onnxrt"}));
  auto* onnxrt = sub->add_flag("--onnxrt", args->onnxrt,
                               "The reference is ONNX Runtime (CPU EP) running --model "
                               "(tools/onnxrt_runner.js under node; see docs/compare.md)");
  onnxrt->excludes(reference);
  auto* ort_opt = sub->add_option("--onnxrt-opt-level", args->onnxrt_opt_level,
                                  "ONNX Runtime's graph optimization level (default disabled: the graph as written)")
                      ->check(CLI::IsMember({"disabled", "basic", "extended", "all"}));
  auto npz = [](const std::string& v) {
    return v.size() > 4 && v.compare(v.size() - 4, 4, ".npz") == 0 ? std::string() : "expected a FILE.npz, got " + v;
  };
  sub->add_option("--save-inputs", args->save_inputs, "Write the input sets compared to FILE.npz (members K/NAME)")
      ->check(npz);
  auto* load_in = sub->add_option("--load-inputs", args->inputs,
                                  "Compare on the input sets of a FILE.npz written by --save-inputs (as --input)")
                      ->check(npz);
  load_in->excludes(input);
  load_in->excludes(calib);
  auto* save_out = sub->add_option("--save-outputs", args->save_outputs,
                                   "Write the reference's outputs (and with --mark-all its intermediates) to FILE.npz")
                       ->check(npz);
  sub->add_option("--save-target-outputs", args->save_target_outputs,
                  "Write the outputs under test (and with --mark-all the compared intermediates) to FILE.npz")
      ->check(npz);
  auto* load_out = sub->add_option("--load-outputs", args->load_outputs,
                                   "The reference is FILE.npz written by --save-outputs (or --save-target-outputs): "
                                   "only the thing under test runs")
                       ->check(npz);
  load_out->excludes(reference);
  load_out->excludes(onnxrt);
  load_out->excludes(ort_opt);
  load_out->excludes(save_out);
  sub->add_option("--threads", args->threads, "Threads of the cpu backend (default: the engine's, else the cores)")
      ->check(CLI::Range(1, 4096));
  sub->add_flag("--json", args->json, "Print JSON");
  sub->footer(
      "Per output: max abs error |a-b|, max rel error |a-b|/max(|b|,1e-6), mean abs error, cosine similarity over\n"
      "all samples, and top-1 agreement (argmax over the last dim per row, when it is > 1); a = under test,\n"
      "b = reference. Inputs: --input files, else --calib batches (up to --samples), else --samples seeded random\n"
      "sets. Exit 0 when every check passes, 1 when one fails (--atol/--rtol elementwise, --min-cosine; a NaN\n"
      "always fails) or on errors, 2 on bad flags.\n"
      "--per-layer (alias --mark-all) reads back every tensor of the reference that the thing under test also\n"
      "has (int8 tensors dequantized and compared to their source; an ONNX model under test is built with those\n"
      "tensors as outputs) and marks the first whose cosine falls below --min-cosine (default 0.999) or whose max\n"
      "abs error grows more than 10x over the previous one (and above 1e-4 of the tensor's scale).\n"
      "--onnxrt runs --model in ONNX Runtime (node + onnxruntime-node; env KILN_NODE, KILN_ORT_MODULES).\n"
      "Saved files hold tensor NAME of input set K as member 'K/NAME'; see docs/compare.md.");
  *run = [args, atol, rtol, min_cos, onnxrt, ort_opt, load_in, load_out] {
    if (onnxrt->count() > 0) args->reference = "onnxrt";
    if (ort_opt->count() > 0 && args->reference != "onnxrt")
      throw Error(ErrorCode::kInvalidArgument, "--onnxrt-opt-level needs --onnxrt (ONNX Runtime as the reference)");
    if (load_out->count() > 0) args->reference = "loaded";
    if (load_in->count() > 0) args->input_flag = "--load-inputs";
    args->has_atol = atol->count() > 0;
    args->has_rtol = rtol->count() > 0;
    args->has_min_cosine = min_cos->count() > 0;
    return cmd_compare(*args);
  };
  return sub;
}

}  // namespace kiln::cli
