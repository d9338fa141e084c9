// `kiln bench`: measures a model's inference latency and throughput, the way trtexec does.
//
//   kiln bench MODEL.onnx [--shapes NAME:1x3x224x224,...] [--warmup-ms N]
//                         [--iterations N | --duration S] [--threads N] [--json FILE]
//                         [--dump-profile] [--opt-level 0-3] [--seed N] [--int-range LO,HI]
//
// Steps: load the model; at --opt-level > 0 run PassManager::standard() with the resolved input
// shapes as the profile; build seeded random inputs (as `kiln run` does); warm up for
// --warmup-ms; then time whole inferences (default: at least 10 iterations and at least 3 s,
// whichever is longer). The figures printed are also written by --json, with the same field
// names as bench/ort_bench.js (the ONNX Runtime peer), so the two can be compared row by row.
//
// The executor is behind BenchTarget, so a later backend (CPU engine, CUDA) plugs in as one more
// implementation; today the reference executor is the only one.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <unordered_map>

#include "backends/reference/executor.h"
#include "cli_common.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"

namespace kiln::cli {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using reference::TensorMap;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

struct BenchArgs {
  std::string model;
  std::string shapes;
  double warmup_ms = 200;
  int64_t iterations = 0;   // 0: not given
  double duration_s = 0;    // 0: not given
  int threads = 1;
  std::string json_path;
  bool dump_profile = false;
  int opt_level = 3;
  uint64_t seed = 0;
  std::vector<int64_t> int_range = {0, 10};
};

// Defaults when neither --iterations nor --duration is given: whichever is longer of these.
constexpr int64_t kDefaultMinIterations = 10;
constexpr double kDefaultMinSeconds = 3.0;
constexpr size_t kMaxRecordedLatencies = 100000;

// ---- Executors under test.

struct BenchTarget {
  virtual ~BenchTarget() = default;
  virtual std::string name() const = 0;
  // Threads the executor really uses for a requested count, and a note when they differ.
  virtual int threads_used(int requested) const = 0;
  virtual std::string threads_note(int requested) const = 0;
  virtual TensorMap run(const TensorMap& inputs) = 0;
};

class ReferenceTarget final : public BenchTarget {
 public:
  explicit ReferenceTarget(Model model) : exec_(std::move(model)) {}
  std::string name() const override { return "reference"; }
  int threads_used(int) const override { return 1; }
  std::string threads_note(int requested) const override {
    return requested == 1 ? std::string()
                          : "the reference executor is single-threaded: --threads " + std::to_string(requested) +
                                " is recorded but it runs on 1 thread";
  }
  TensorMap run(const TensorMap& inputs) override { return exec_.run(inputs); }
  const Model& model() const { return exec_.model(); }

 private:
  reference::Executor exec_;
};

// ---- Statistics (the same definitions as bench/ort_bench.js).

// Linear interpolation between closest ranks (numpy's default); `sorted` is ascending, non-empty.
double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.size() == 1) return sorted[0];
  const double pos = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

json latency_stats(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  const double n = static_cast<double>(ms.size());
  const double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / n;
  double var = 0;
  for (double x : ms) var += (x - mean) * (x - mean);
  return {{"min", ms.front()},
          {"mean", mean},
          {"median", percentile(ms, 50)},
          {"p90", percentile(ms, 90)},
          {"p95", percentile(ms, 95)},
          {"p99", percentile(ms, 99)},
          {"max", ms.back()},
          {"stddev", std::sqrt(var / n)}};
}

// ---- Per-node profile: the reference executor's loop, one node at a time, each timed.

struct NodeTime {
  size_t index = 0;
  std::string name, op;
  double total_ms = 0;
};

class NodeProfiler {
 public:
  explicit NodeProfiler(const Model& model) : model_(model) {
    const Graph& g = model.graph;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const Node& n = g.nodes[i];
      auto it = model.opsets.find(n.domain);
      const int64_t opset = it == model.opsets.end() ? 0 : it->second;
      const OpSchema* schema = OpRegistry::global().find(n.domain, n.op_type, opset);
      if (!schema) throw Error(ErrorCode::kUnsupported, n.describe() + ": no schema at opset " + std::to_string(opset));
      schemas_.push_back(schema);
      opsets_.push_back(opset);
      times_.push_back({i, n.name.empty() ? "#" + std::to_string(i) : n.name,
                        n.domain.empty() ? n.op_type : n.domain + "::" + n.op_type, 0});
      for (const auto& in : n.inputs) last_use_[in] = i;
    }
    for (const auto& o : g.outputs) is_output_[o] = true;
  }

  void run_once(const TensorMap& inputs) {
    const Graph& g = model_.graph;
    std::unordered_map<std::string, Tensor> env;
    for (const auto& [name, t] : g.initializers) env.emplace(name, t);
    for (const auto& [name, t] : inputs) env[name] = t;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const Node& n = g.nodes[i];
      std::vector<const Tensor*> in;
      for (const auto& name : n.inputs) {
        if (name.empty()) {
          in.push_back(nullptr);
          continue;
        }
        auto it = env.find(name);
        if (it == env.end()) throw Error(ErrorCode::kInternal, n.describe() + ": input '" + name + "' has not been computed");
        in.push_back(&it->second);
      }
      const auto t0 = Clock::now();
      std::vector<Tensor> outs = reference::evaluate_node(n, *schemas_[i], opsets_[i], in);
      times_[i].total_ms += ms_between(t0, Clock::now());
      for (size_t k = 0; k < n.outputs.size() && k < outs.size(); ++k)
        if (!n.outputs[k].empty()) env[n.outputs[k]] = std::move(outs[k]);
      for (const auto& name : n.inputs) {  // free intermediates after their last use
        if (name.empty() || is_output_.count(name) || g.is_initializer(name)) continue;
        auto lu = last_use_.find(name);
        if (lu != last_use_.end() && lu->second == i) env.erase(name);
      }
    }
    ++runs_;
  }

  int64_t runs() const { return runs_; }
  const std::vector<NodeTime>& times() const { return times_; }

 private:
  const Model& model_;
  std::vector<const OpSchema*> schemas_;
  std::vector<int64_t> opsets_;
  std::vector<NodeTime> times_;
  std::unordered_map<std::string, size_t> last_use_;
  std::unordered_map<std::string, bool> is_output_;
  int64_t runs_ = 0;
};

std::string fixed(double v, int digits = 3) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << v;
  return os.str();
}

int cmd_bench(const BenchArgs& args) {
  // Opened first, so an unwritable --json fails before minutes of benchmarking.
  std::ofstream json_file;
  if (!args.json_path.empty()) {
    json_file.open(args.json_path);
    if (!json_file) throw Error(ErrorCode::kIo, args.json_path + ": cannot open for writing");
  }

  // --- Load and check.
  const auto t_load = Clock::now();
  bool is_engine = false;  // an engine is already optimized: the passes are not run again
  Model model = load_model_or_engine(args.model, &is_engine);
  require_supported(model);
  const Graph& g0 = model.graph;
  auto shapes = parse_shapes(args.shapes);
  for (const auto& [name, dims] : shapes)
    if (std::find(g0.inputs.begin(), g0.inputs.end(), name) == g0.inputs.end()) {
      std::string names;
      for (const auto& in : g0.inputs) names += (names.empty() ? "" : ", ") + in;
      throw Error(ErrorCode::kInvalidArgument,
                  "--shapes: '" + name + "' is not an input of " + args.model + " (inputs: " + names + ")");
    }
  if (args.int_range[1] <= args.int_range[0])
    throw Error(ErrorCode::kInvalidArgument, "--int-range: empty range [" + std::to_string(args.int_range[0]) + ", " +
                                                 std::to_string(args.int_range[1]) + ")");

  // Concrete shape of every input (--shapes, then static dims, then 1 for the remaining dynamic
  // dims), from the declared types.
  std::string notes;
  std::map<std::string, std::vector<int64_t>> resolved;
  for (const auto& name : g0.inputs) {
    const TensorType* type = g0.type_of(name);
    if (!type || type->dtype == DType::kUndefined)
      throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has no tensor type; kiln bench cannot generate it");
    resolved[name] = resolve_input_shape(name, *type, shapes, &notes);
  }

  // --- Optimize.
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(model, infer);
  const size_t nodes_before = model.graph.nodes.size();
  const auto t_opt = Clock::now();
  PassContext pctx;
  pctx.opt_level = args.opt_level;
  pctx.evaluator = reference::constant_evaluator();
  pctx.input_shapes = resolved;
  if (args.opt_level > 0 && !is_engine) {
    PassManager::standard().run(model, pctx);
    infer_types(model, infer);  // the passes leave new values untyped; the executor needs them all
  }
  const auto t_prepare = Clock::now();

  // --- Executor and inputs.
  auto ref = std::make_unique<ReferenceTarget>(std::move(model));
  const Model& m = ref->model();
  BenchTarget& target = *ref;
  const Graph& g = m.graph;
  TensorMap inputs;
  json inputs_json = json::array();
  for (size_t i = 0; i < g.inputs.size(); ++i) {
    const std::string& name = g.inputs[i];
    const TensorType* type = g.type_of(name);
    if (!type || type->dtype == DType::kUndefined)
      throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has no tensor type; kiln bench cannot generate it");
    const auto& dims = resolved.at(name);
    inputs[name] = random_tensor(type->dtype, dims, args.seed + i, args.int_range[0], args.int_range[1]);
    inputs_json.push_back({{"name", name}, {"dtype", std::string(dtype_name(type->dtype))}, {"shape", dims}});
  }
  // Items per inference: the leading (batch) dim of the first input.
  int64_t batch = 1;
  if (!g.inputs.empty() && !resolved.at(g.inputs.front()).empty()) batch = resolved.at(g.inputs.front()).front();
  const auto t_ready = Clock::now();

  std::cerr << notes;
  std::cout << "model:      " << args.model << "\n";
  std::cout << "executor:   " << target.name() << "\n";
  std::cout << "threads:    " << args.threads << " requested, " << target.threads_used(args.threads) << " used";
  if (auto note = target.threads_note(args.threads); !note.empty()) std::cout << " (" << note << ")";
  std::cout << "\n";
  std::cout << "opt level:  " << args.opt_level << ": " << nodes_before << " nodes -> " << g.nodes.size() << " nodes\n";
  for (const auto& line : pctx.log) std::cout << "  " << line << "\n";
  std::cout << "inputs:     ";
  for (size_t i = 0; i < g.inputs.size(); ++i)
    std::cout << (i ? ", " : "") << g.inputs[i] << " " << dtype_name(inputs.at(g.inputs[i]).dtype()) << "["
              << shape_to_string(inputs.at(g.inputs[i]).shape()) << "]";
  std::cout << " (random, seed " << args.seed << "); batch " << batch << "\n" << std::flush;

  // --- Warm-up: whole inferences until warmup_ms has passed (none when it is 0).
  int64_t warmup_iterations = 0;
  const auto w0 = Clock::now();
  while (args.warmup_ms > 0 && (warmup_iterations == 0 || ms_between(w0, Clock::now()) < args.warmup_ms)) {
    target.run(inputs);
    ++warmup_iterations;
  }
  const double warmup_elapsed = ms_between(w0, Clock::now());

  // --- Timed iterations.
  int64_t min_iterations = kDefaultMinIterations;
  double min_ms = kDefaultMinSeconds * 1000;
  std::string stop_rule = "at least " + std::to_string(kDefaultMinIterations) + " iterations and at least " +
                          fixed(kDefaultMinSeconds, 1) + " s";
  if (args.iterations > 0) {
    min_iterations = args.iterations;
    min_ms = 0;
    stop_rule = std::to_string(args.iterations) + " iterations";
  } else if (args.duration_s > 0) {
    min_iterations = 1;
    min_ms = args.duration_s * 1000;
    stop_rule = "at least " + fixed(args.duration_s, 3) + " s";
  }
  std::vector<double> latencies;
  const auto r0 = Clock::now();
  while (static_cast<int64_t>(latencies.size()) < min_iterations || ms_between(r0, Clock::now()) < min_ms) {
    const auto a = Clock::now();
    TensorMap out = target.run(inputs);
    latencies.push_back(ms_between(a, Clock::now()));
  }
  const double total_ms = ms_between(r0, Clock::now());
  const json lat = latency_stats(latencies);
  const double inferences_per_s = static_cast<double>(latencies.size()) / (total_ms / 1000.0);

  json j;
  j["tool"] = "kiln bench";
  j["kiln_version"] = KILN_VERSION;
  j["model"] = args.model;
  j["executor"] = target.name();
  j["threads"] = args.threads;
  j["threads_used"] = target.threads_used(args.threads);
  if (auto note = target.threads_note(args.threads); !note.empty()) j["threads_note"] = note;
  j["opt_level"] = args.opt_level;
  j["nodes_before"] = nodes_before;
  j["nodes"] = g.nodes.size();
  j["passes"] = pctx.log;
  j["inputs"] = inputs_json;
  j["batch"] = batch;
  j["seed"] = args.seed;
  j["setup_ms"] = {{"load", ms_between(t_load, t_opt)},
                   {"optimize", ms_between(t_opt, t_prepare)},
                   {"prepare", ms_between(t_prepare, t_ready)}};
  j["warmup"] = {{"requested_ms", args.warmup_ms}, {"iterations", warmup_iterations}, {"ms", warmup_elapsed}};
  j["stop_rule"] = stop_rule;
  j["iterations"] = latencies.size();
  j["total_ms"] = total_ms;
  j["throughput"] = {{"inferences_per_s", inferences_per_s}, {"items_per_s", inferences_per_s * static_cast<double>(batch)}};
  j["latency_ms"] = lat;
  // Every latency, in order (omitted past kMaxRecordedLatencies, to keep the file small).
  if (latencies.size() <= kMaxRecordedLatencies) j["latencies_ms"] = latencies;

  std::cout << "warm-up:    " << warmup_iterations << " iterations, " << fixed(warmup_elapsed, 1) << " ms (requested "
            << fixed(args.warmup_ms, 0) << " ms)\n";
  std::cout << "timed:      " << latencies.size() << " iterations in " << fixed(total_ms / 1000.0, 3) << " s ("
            << stop_rule << ")\n";
  std::cout << "=== Performance summary ===\n";
  std::cout << "throughput: " << fixed(inferences_per_s, 3) << " inferences/s, "
            << fixed(inferences_per_s * static_cast<double>(batch), 3) << " items/s (batch " << batch << ")\n";
  std::cout << "latency:    min " << fixed(lat["min"]) << " ms, mean " << fixed(lat["mean"]) << " ms, median "
            << fixed(lat["median"]) << " ms, p90 " << fixed(lat["p90"]) << " ms, p95 " << fixed(lat["p95"])
            << " ms, p99 " << fixed(lat["p99"]) << " ms, max " << fixed(lat["max"]) << " ms\n";

  // --- Per-node profile: as many separate runs as timed iterations, so the figures above are
  // not perturbed by the per-node timers.
  if (args.dump_profile) {
    NodeProfiler prof(m);
    for (size_t i = 0; i < latencies.size(); ++i) prof.run_once(inputs);
    std::vector<NodeTime> nodes = prof.times();
    double sum = 0;
    for (const auto& n : nodes) sum += n.total_ms;
    std::stable_sort(nodes.begin(), nodes.end(), [](const NodeTime& a, const NodeTime& b) { return a.total_ms > b.total_ms; });
    std::map<std::string, std::pair<double, int>> by_op;
    for (const auto& n : nodes) {
      by_op[n.op].first += n.total_ms;
      ++by_op[n.op].second;
    }
    auto pct = [&](double v) { return sum > 0 ? 100.0 * v / sum : 0.0; };
    const double runs = static_cast<double>(prof.runs());
    json pj;
    pj["runs"] = prof.runs();
    pj["total_ms"] = sum;
    pj["nodes"] = json::array();
    for (const auto& n : nodes)
      pj["nodes"].push_back({{"index", n.index}, {"name", n.name}, {"op", n.op}, {"total_ms", n.total_ms},
                             {"mean_ms", n.total_ms / runs}, {"percent", pct(n.total_ms)}});
    std::vector<std::pair<std::string, std::pair<double, int>>> ops(by_op.begin(), by_op.end());
    std::stable_sort(ops.begin(), ops.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    pj["ops"] = json::array();
    for (const auto& [op, v] : ops)
      pj["ops"].push_back({{"op", op}, {"count", v.second}, {"total_ms", v.first}, {"percent", pct(v.first)}});
    j["profile"] = pj;

    std::cout << "=== Profile (" << prof.runs() << " runs, node by node; times summed over runs) ===\n";
    std::cout << "total node time " << fixed(sum, 3) << " ms, " << nodes.size() << " nodes; top "
              << std::min<size_t>(20, nodes.size()) << " by time:\n";
    std::cout << std::right << std::setw(12) << "total ms" << std::setw(12) << "mean ms" << std::setw(8) << "%"
              << "  node (op)\n";
    for (size_t i = 0; i < nodes.size() && i < 20; ++i)
      std::cout << std::setw(12) << fixed(nodes[i].total_ms) << std::setw(12) << fixed(nodes[i].total_ms / runs)
                << std::setw(8) << fixed(pct(nodes[i].total_ms), 1) << "  " << nodes[i].name << " (" << nodes[i].op
                << ")\n";
    std::cout << "by op:\n";
    for (const auto& [op, v] : ops)
      std::cout << std::setw(12) << fixed(v.first) << std::setw(8) << fixed(pct(v.first), 1) << "  " << op << " x"
                << v.second << "\n";
  }

  if (json_file.is_open()) {
    json_file << j.dump(2) << "\n";
    if (!json_file.flush()) throw Error(ErrorCode::kIo, args.json_path + ": write failed");
    std::cout << "json:       " << args.json_path << "\n";
  }
  return 0;
}

}  // namespace

// Registers `kiln bench` on `app`; *run is set to the function that runs it once parsed.
CLI::App* add_bench_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<BenchArgs>();
  auto* sub = app.add_subcommand("bench", "Measure inference latency and throughput (like trtexec)");
  sub->add_option("model", args->model, "ONNX model or Kiln engine")->required();
  sub->add_option("--shapes", args->shapes, "Shapes of the generated inputs: NAME:1x3x224x224,...");
  sub->add_option("--warmup-ms", args->warmup_ms, "Warm up for this long before timing (default 200; 0: none)")
      ->check(CLI::NonNegativeNumber);
  auto* iters = sub->add_option("--iterations", args->iterations, "Time exactly this many inferences")
                    ->check(CLI::PositiveNumber);
  auto* dur = sub->add_option("--duration", args->duration_s, "Time inferences for at least this many seconds")
                  ->check(CLI::PositiveNumber);
  iters->excludes(dur);
  sub->add_option("--threads", args->threads, "Threads for the executor (recorded; the reference executor uses 1)")
      ->check(CLI::Range(1, 4096));
  sub->add_option("--json", args->json_path, "Write every figure as JSON to this file");
  sub->add_flag("--dump-profile", args->dump_profile, "Also time each node (separate runs) and print the top 20");
  sub->add_option("--opt-level", args->opt_level, "Graph optimization level 0-3 (default 3; 0: no passes)")
      ->check(CLI::Range(0, 3));
  sub->add_option("--seed", args->seed, "Seed of the generated inputs");
  sub->add_option("--int-range", args->int_range, "Range [LO,HI) of generated integer inputs (default 0,10)")
      ->expected(2)
      ->delimiter(',');
  sub->footer("Default timing: at least " + std::to_string(kDefaultMinIterations) + " iterations and at least " +
              fixed(kDefaultMinSeconds, 0) + " s, whichever is longer. Errors exit 1; bad flags exit 2.");
  *run = [args] { return cmd_bench(*args); };
  return sub;
}

}  // namespace kiln::cli
