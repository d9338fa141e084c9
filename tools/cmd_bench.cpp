// `kiln bench`: measures a model's inference latency and throughput, the way trtexec does.
//
//   kiln bench MODEL.onnx|ENGINE [--backend cpu|reference] [--shapes NAME:1x3x224x224,...]
//                         [--warmup-ms N] [--iterations N | --duration S] [--threads N]
//                         [--streams N] [--json FILE] [--dump-profile] [--opt-level 0-3]
//                         [--seed N] [--int-range LO,HI]
//
// Steps: load the model or engine; on the cpu backend (the default) an ONNX model is built in
// memory (build_engine) at the resolved input shapes, an engine file runs with its tactics; on
// the reference backend an ONNX model goes through PassManager::standard() at --opt-level > 0.
// Then seeded random inputs (as `kiln run` makes them), a warm-up of --warmup-ms, and whole
// inferences timed (default: at least 10 iterations and at least 3 s, whichever is longer). With
// --streams N, N threads each run their own Context on the one shared EngineRuntime concurrently,
// each under that rule; throughput is their total over the wall time. The figures printed are also
// written by --json, with the same field names as bench/ort_bench.js (the ONNX Runtime peer), so
// the two can be compared row by row.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <latch>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "backends/gpu/gpu_build.h"
#include "backends/gpu/loader.h"
#include "backends/reference/executor.h"
#include "cli_common.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"
#include "runtime/runtime.h"

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
  std::string backend = "cpu";
  std::string shapes;
  double warmup_ms = 200;
  int64_t iterations = 0;   // 0: not given
  double duration_s = 0;    // 0: not given
  int threads = 0;          // 0: not given (cpu: the cores shared among the streams; reference: 1)
  int streams = 1;
  std::string json_path;
  bool dump_profile = false;
  int opt_level = 3;
  uint64_t seed = 0;
  std::vector<int64_t> int_range = {0, 10};
  std::string device = "cpu";      // cpu, cuda or cuda:N
  std::string precision;  // GPU: fp32 (TF32), fp16 or bf16; "": a GPU engine's, else fp16
  bool no_cuda_graph = false;
  size_t workspace_mib = 1024;
  bool no_batch_split = false;  // cpu: run every batch as one program
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

// The CPU backend: one Context (its own activation arena) on a shared EngineRuntime. One per stream.
class CpuTarget final : public BenchTarget {
 public:
  explicit CpuTarget(std::shared_ptr<const EngineRuntime> runtime) : runtime_(runtime), ctx_(std::move(runtime)) {}
  std::string name() const override { return "cpu"; }
  int threads_used(int) const override { return runtime_->threads(); }
  std::string threads_note(int requested) const override {
    return requested == runtime_->threads() ? std::string()
                                            : "runs on " + std::to_string(runtime_->threads()) + " threads";
  }
  TensorMap run(const TensorMap& inputs) override { return ctx_.run(inputs); }
  TensorMap run_profiled(const TensorMap& inputs, std::vector<double>* step_ms) { return ctx_.run(inputs, step_ms); }
  const cpu::Program* program() const { return ctx_.last_program(); }

 private:
  std::shared_ptr<const EngineRuntime> runtime_;
  Context ctx_;
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

// The inputs' shapes with axis 0 set to a sub-batch's size.
std::map<std::string, std::vector<int64_t>> cpu_sub_shapes(std::map<std::string, std::vector<int64_t>> shapes,
                                                           int64_t sub) {
  for (auto& [name, dims] : shapes) dims[0] = sub;
  return shapes;
}

// ---- The timed loop, over one or several streams.

struct StreamRun {
  int64_t warmup_iterations = 0;
  std::vector<double> latencies;
};

struct TimedRuns {
  std::vector<StreamRun> streams;
  double warmup_ms = 0;  // wall time of the warm-up phase (every stream)
  double total_ms = 0;   // wall time of the timed phase (every stream)
};

// Each stream warms up for warmup_ms (at least one inference when it is > 0), then all start
// timing together and each runs until it has min_iterations and min_ms has passed. One stream runs
// on the calling thread; several run on their own threads (each with its own OpenMP team).
TimedRuns run_streams(std::vector<std::unique_ptr<BenchTarget>>& targets, const TensorMap& inputs, double warmup_ms,
                      int64_t min_iterations, double min_ms) {
  const size_t n = targets.size();
  TimedRuns out;
  out.streams.resize(n);
  std::atomic<bool> failed{false};
  auto warm_up = [&](size_t s) {
    StreamRun& sr = out.streams[s];
    const auto w0 = Clock::now();
    while (warmup_ms > 0 && !failed && (sr.warmup_iterations == 0 || ms_between(w0, Clock::now()) < warmup_ms)) {
      targets[s]->run(inputs);
      ++sr.warmup_iterations;
    }
  };
  auto timed = [&](size_t s, Clock::time_point r0) {
    StreamRun& sr = out.streams[s];
    while (!failed && (static_cast<int64_t>(sr.latencies.size()) < min_iterations || ms_between(r0, Clock::now()) < min_ms)) {
      const auto a = Clock::now();
      TensorMap result = targets[s]->run(inputs);
      sr.latencies.push_back(ms_between(a, Clock::now()));
    }
  };
  const auto w0 = Clock::now();
  if (n == 1) {  // no thread: the figures are those of a plain loop on the caller
    warm_up(0);
    out.warmup_ms = ms_between(w0, Clock::now());
    const auto r0 = Clock::now();
    timed(0, r0);
    out.total_ms = ms_between(r0, Clock::now());
    return out;
  }
  std::latch warmed(static_cast<std::ptrdiff_t>(n) + 1), go(1);
  std::mutex mu;
  std::exception_ptr error;
  Clock::time_point r0;  // written before `go` opens; read by the streams after it
  auto body = [&](size_t s) {
    auto fail = [&] {
      std::lock_guard lock(mu);
      if (!error) error = std::current_exception();
      failed = true;
    };
    try {
      warm_up(s);
    } catch (...) {
      fail();
    }
    warmed.count_down();  // even after a failure, so nobody waits forever
    go.wait();
    try {
      timed(s, r0);
    } catch (...) {
      fail();
    }
  };
  std::vector<std::thread> threads;
  for (size_t s = 0; s < n; ++s) threads.emplace_back(body, s);
  warmed.arrive_and_wait();
  out.warmup_ms = ms_between(w0, Clock::now());
  r0 = Clock::now();
  go.count_down();
  for (auto& t : threads) t.join();
  out.total_ms = ms_between(r0, Clock::now());
  if (error) std::rethrow_exception(error);
  return out;
}

// ---- Per-step profile of the CPU backend: Context::run with step times, summed over runs.

json cpu_profile(CpuTarget& target, const TensorMap& inputs, int64_t runs) {
  std::vector<double> total, step_ms;
  for (int64_t r = 0; r < runs; ++r) {
    target.run_profiled(inputs, &step_ms);
    if (total.size() < step_ms.size()) total.resize(step_ms.size(), 0.0);
    for (size_t i = 0; i < step_ms.size(); ++i) total[i] += step_ms[i];
  }
  const auto& steps = target.program()->steps();
  struct Row {
    size_t index;
    const cpu::StepInfo* info;
    double ms;
  };
  std::vector<Row> rows;
  double sum = 0;
  for (size_t i = 0; i < steps.size() && i < total.size(); ++i) {
    if (steps[i].impl.rfind("alias", 0) == 0) continue;  // no kernel runs for an alias
    rows.push_back({i, &steps[i], total[i]});
    sum += total[i];
  }
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.ms > b.ms; });
  auto pct = [&](double v) { return sum > 0 ? 100.0 * v / sum : 0.0; };
  const double n = static_cast<double>(std::max<int64_t>(runs, 1));
  json pj;
  pj["runs"] = runs;
  pj["total_ms"] = sum;
  pj["steps"] = json::array();
  std::map<std::string, std::pair<double, int>> by_op;
  for (const auto& r : rows) {
    pj["steps"].push_back({{"index", r.index}, {"name", r.info->name}, {"op", r.info->op}, {"tactic", r.info->tactic},
                           {"impl", r.info->impl}, {"total_ms", r.ms}, {"mean_ms", r.ms / n}, {"percent", pct(r.ms)}});
    by_op[r.info->op].first += r.ms;
    ++by_op[r.info->op].second;
  }
  std::vector<std::pair<std::string, std::pair<double, int>>> ops(by_op.begin(), by_op.end());
  std::stable_sort(ops.begin(), ops.end(), [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
  pj["ops"] = json::array();
  for (const auto& [op, v] : ops)
    pj["ops"].push_back({{"op", op}, {"count", v.second}, {"total_ms", v.first}, {"percent", pct(v.first)}});

  std::cout << "=== Profile (" << runs << " runs, step by step; mean per run) ===\n";
  std::cout << "total step time " << fixed(sum / n, 4) << " ms per run, " << rows.size() << " kernel steps; top "
            << std::min<size_t>(30, rows.size()) << " by time:\n";
  std::cout << std::right << std::setw(12) << "mean ms" << std::setw(8) << "%" << "  step (op) tactic [impl]\n";
  for (size_t i = 0; i < rows.size() && i < 30; ++i)
    std::cout << std::setw(12) << fixed(rows[i].ms / n, 4) << std::setw(8) << fixed(pct(rows[i].ms), 1) << "  "
              << rows[i].info->name << " (" << rows[i].info->op << ") " << rows[i].info->tactic << " ["
              << rows[i].info->impl << "]\n";
  std::cout << "by op:\n";
  for (const auto& [op, v] : ops)
    std::cout << std::setw(12) << fixed(v.first / n, 4) << std::setw(8) << fixed(pct(v.first), 1) << "  " << op << " x"
              << v.second << "\n";
  return pj;
}

// ---- Per-node profile of the reference executor (separate runs, node by node).

json reference_profile(const Model& m, const TensorMap& inputs, int64_t runs_wanted) {
  NodeProfiler prof(m);
  for (int64_t i = 0; i < runs_wanted; ++i) prof.run_once(inputs);
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
  return pj;
}

// The generated inputs of a run (seeded random data at the resolved shapes), their JSON description,
// the batch (the first input's leading dim) and the "inputs:" line both executors print.
struct BenchInputs {
  TensorMap tensors;
  json described = json::array();
  int64_t batch = 1;
  std::string line;
};

BenchInputs make_bench_inputs(const BenchArgs& args, const std::vector<std::pair<std::string, DType>>& input_types,
                              const std::map<std::string, std::vector<int64_t>>& resolved) {
  BenchInputs in;
  std::ostringstream os;
  for (size_t i = 0; i < input_types.size(); ++i) {
    const auto& [name, dtype] = input_types[i];
    const auto& dims = resolved.at(name);
    in.tensors[name] = random_tensor(dtype, dims, args.seed + i, args.int_range[0], args.int_range[1]);
    in.described.push_back({{"name", name}, {"dtype", std::string(dtype_name(dtype))}, {"shape", dims}});
    os << (i ? ", " : "") << name << " " << dtype_name(dtype) << "[" << shape_to_string(dims) << "]";
  }
  if (!input_types.empty() && !resolved.at(input_types.front().first).empty())
    in.batch = resolved.at(input_types.front().first).front();
  os << " (random, seed " << args.seed << "); batch " << in.batch;
  in.line = os.str();
  return in;
}

// When a timed loop stops: --iterations exactly, --duration at least, else both defaults.
struct StopRule {
  int64_t min_iterations = kDefaultMinIterations;
  double min_ms = kDefaultMinSeconds * 1000;
  std::string text = "at least " + std::to_string(kDefaultMinIterations) + " iterations and at least " +
                     fixed(kDefaultMinSeconds, 1) + " s";
};

StopRule stop_rule_of(const BenchArgs& args) {
  StopRule r;
  if (args.iterations > 0) {
    r.min_iterations = args.iterations;
    r.min_ms = 0;
    r.text = std::to_string(args.iterations) + " iterations";
  } else if (args.duration_s > 0) {
    r.min_iterations = 1;
    r.min_ms = args.duration_s * 1000;
    r.text = "at least " + fixed(args.duration_s, 3) + " s";
  }
  return r;
}

// --- The GPU path (--device cuda[:N]): a GPU program built for the resolved shapes, run by one
// GpuContext. Like trtexec it reports end-to-end latency (host to device copies, compute, device
// to host copies; host wall clock) and GPU compute time (CUDA events around the graph launch)
// separately, and a compute-only loop (inputs already on the device, what PyTorch's CUDA-event
// timings measure).
int bench_gpu(const BenchArgs& args, int gpu_index, Model model, const EngineInfo* engine,
              const std::map<std::string, std::vector<int64_t>>& resolved,
              const std::vector<std::pair<std::string, DType>>& input_types, std::ofstream& json_file) {
  const bool is_engine = engine != nullptr;
  BenchInputs generated = make_bench_inputs(args, input_types, resolved);
  // FP8 from an ONNX model: the GEMM inputs are calibrated on the generated inputs (a speed
  // measurement; an engine built with --calib carries scales from real data).
  GpuRun built = gpu_program_for(std::move(model), engine, resolved, gpu_index, args.precision,
                                 args.workspace_mib << 20, args.opt_level, &generated.tensors);
  const gpu::GpuProgram& prog = *built.program;
  const gpu::Precision precision = prog.precision();
  const gpu::DeviceProps& dp = prog.device().props();
  const TensorMap& inputs = generated.tensors;
  const json& inputs_json = generated.described;
  const int64_t batch = generated.batch;
  gpu::GpuContext ctx(built.program, !args.no_cuda_graph);

  std::cout << "model:      " << args.model << (is_engine ? " (engine)" : "") << "\n";
  std::cout << "device:     cuda:" << dp.id << " " << dp.name << " (" << dp.sm() << ", " << dp.multiprocessors
            << " SMs, driver " << dp.driver_version << ", runtime " << dp.runtime_version << ", cuBLASLt "
            << dp.cublaslt_version << ", cuDNN " << dp.cudnn_version << ")\n";
  std::cout << "precision:  " << gpu::precision_name(precision) << " (FP32 at the inputs and outputs"
            << (precision == gpu::Precision::kFP8 && !is_engine ? "; FP8 scales calibrated on the generated inputs" : "")
            << (precision == gpu::Precision::kINT8 && !is_engine ? "; INT8 scales calibrated on the generated inputs (MinMax)" : "")
            << ")\n";
  if (precision == gpu::Precision::kFP8)
    std::cout << "fp8:        " << fp8_gemm_summary(prog) << " (the others were not faster in FP8)\n";
  if (precision == gpu::Precision::kINT8)
    std::cout << "int8:       " << int8_conv_summary(prog) << " (the others were not faster in INT8 or have no INT8 kernel)\n";
  if (built.gpu_engine)
    std::cout << "build:      GPU engine, " << built.nodes_after << " nodes -> " << prog.steps().size()
              << " kernels; loaded in " << fixed(built.compile_ms, 1) << " ms ("
              << (built.tactics_used ? "recorded tactics, nothing timed" : "tuned kernels timed on this GPU") << ")\n";
  else
    std::cout << "build:      " << built.nodes_before << " nodes -> " << built.nodes_after << " nodes -> "
              << prog.steps().size() << " kernels; passes " << fixed(built.pass_ms, 1) << " ms, kernels chosen in "
              << fixed(built.compile_ms, 1) << " ms\n";
  std::cout << "memory:     weights " << mib(prog.weight_bytes()) << ", activations " << mib(prog.arena_bytes())
            << " (vs " << mib(prog.activation_bytes_total()) << " summed), workspace " << mib(prog.workspace_bytes())
            << "; CUDA graph " << (args.no_cuda_graph ? "off" : "on") << "\n";
  std::cout << "inputs:     " << generated.line << "\n" << std::flush;

  const StopRule stop = stop_rule_of(args);
  // Warm-up (the first run captures the CUDA graph).
  const auto tw = Clock::now();
  int64_t warm = 0;
  do {
    ctx.run(inputs);
    ++warm;
  } while (ms_between(tw, Clock::now()) < args.warmup_ms);
  // End to end.
  std::vector<double> e2e, compute, h2d, d2h, compute_only;
  const auto t0 = Clock::now();
  while (static_cast<int64_t>(e2e.size()) < stop.min_iterations || ms_between(t0, Clock::now()) < stop.min_ms) {
    const auto a = Clock::now();
    ctx.run(inputs);
    e2e.push_back(ms_between(a, Clock::now()));
    compute.push_back(ctx.last_timing().compute_ms);
    h2d.push_back(ctx.last_timing().h2d_ms);
    d2h.push_back(ctx.last_timing().d2h_ms);
  }
  const double e2e_total = ms_between(t0, Clock::now());
  // Compute only, as many runs.
  for (size_t i = 0; i < e2e.size(); ++i) compute_only.push_back(ctx.run_compute_only());
  const json lat = latency_stats(e2e), comp = latency_stats(compute_only), h = latency_stats(h2d),
             d = latency_stats(d2h);
  const double e2e_per_s = static_cast<double>(e2e.size()) / (e2e_total / 1000.0);
  const double compute_per_s = 1000.0 / comp["median"].get<double>();
  // Per-step profile (kernel by kernel, so launch gaps are included): the median of 5 runs.
  std::vector<double> profile;
  if (args.dump_profile) {
    std::vector<std::vector<float>> runs;
    for (int r = 0; r < 5; ++r) runs.push_back(ctx.profile_steps());
    for (size_t i = 0; i < prog.steps().size(); ++i) {
      std::vector<float> v;
      for (const auto& r : runs) v.push_back(r[i]);
      std::sort(v.begin(), v.end());
      profile.push_back(v[v.size() / 2]);
    }
  }

  std::cout << "warm-up:    " << warm << " iterations\n";
  std::cout << "timed:      " << e2e.size() << " end-to-end iterations in " << fixed(e2e_total / 1000.0, 3)
            << " s, then as many compute-only runs\n";
  std::cout << "=== Performance summary ===\n";
  std::cout << "throughput: " << fixed(compute_per_s, 3) << " inferences/s, "
            << fixed(compute_per_s * static_cast<double>(batch), 1) << " items/s on GPU compute (median); "
            << fixed(e2e_per_s * static_cast<double>(batch), 1) << " items/s end to end (batch " << batch << ")\n";
  std::cout << "GPU compute: min " << fixed(comp["min"]) << " ms, mean " << fixed(comp["mean"]) << " ms, median "
            << fixed(comp["median"]) << " ms, p99 " << fixed(comp["p99"]) << " ms, max " << fixed(comp["max"]) << " ms\n";
  std::cout << "H2D copies: median " << fixed(h["median"]) << " ms; D2H copies: median " << fixed(d["median"]) << " ms\n";
  std::cout << "latency:    min " << fixed(lat["min"]) << " ms, mean " << fixed(lat["mean"]) << " ms, median "
            << fixed(lat["median"]) << " ms, p99 " << fixed(lat["p99"]) << " ms, max " << fixed(lat["max"])
            << " ms (end to end, host clock)\n";
  if (!profile.empty()) {
    // By op, then the slowest steps.
    std::map<std::string, std::pair<double, int>> by_op;
    double total = 0;
    for (size_t i = 0; i < profile.size(); ++i) {
      auto& e = by_op[prog.steps()[i].op];
      e.first += profile[i], ++e.second, total += profile[i];
    }
    std::cout << "=== Profile (kernel by kernel, median of 5 runs, " << fixed(total) << " ms in all) ===\n";
    for (const auto& [op, e] : by_op)
      std::cout << "  " << std::left << std::setw(20) << op << std::right << std::setw(4) << e.second << " steps "
                << fixed(e.first) << " ms (" << fixed(100 * e.first / total, 1) << "%)\n";
    std::vector<size_t> order(profile.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return profile[a] > profile[b]; });
    for (size_t k = 0; k < order.size() && k < 12; ++k) {
      const auto& s = prog.steps()[order[k]];
      std::cout << "  " << fixed(profile[order[k]]) << " ms  " << s.op << " '" << s.name << "': " << s.kernel << "\n";
    }
  }
  if (json_file.is_open()) {
    json j;
    j["tool"] = "kiln bench";
    j["kiln_version"] = KILN_VERSION;
    j["model"] = args.model;
    j["executor"] = "cuda";
    j["device"] = {{"index", dp.id}, {"name", dp.name}, {"sm", dp.sm()}, {"driver", dp.driver_version},
                   {"runtime", dp.runtime_version}, {"cublaslt", dp.cublaslt_version}, {"cudnn", dp.cudnn_version}};
    j["precision"] = gpu::precision_name(precision);
    j["cuda_graph"] = !args.no_cuda_graph;
    j["engine_file"] = is_engine;
    j["gpu_engine"] = built.gpu_engine;
    j["tactics"] = {{"timed", prog.tactic_stats().timed}, {"recorded", prog.tactic_stats().recorded},
                    {"rejected", prog.tactic_stats().rejected}};
    j["nodes_before"] = built.nodes_before;
    j["nodes"] = built.nodes_after;
    j["kernels"] = prog.steps().size();
    j["memory_bytes"] = {{"weights", prog.weight_bytes()}, {"activations", prog.arena_bytes()},
                         {"workspace", prog.workspace_bytes()}};
    j["setup_ms"] = {{"passes", built.pass_ms}, {"compile", built.compile_ms}};
    j["inputs"] = inputs_json;
    j["batch"] = batch;
    j["iterations"] = e2e.size();
    j["throughput"] = {{"compute_inferences_per_s", compute_per_s},
                       {"compute_items_per_s", compute_per_s * static_cast<double>(batch)},
                       {"end_to_end_items_per_s", e2e_per_s * static_cast<double>(batch)}};
    j["gpu_compute_ms"] = comp;
    j["gpu_compute_in_e2e_ms"] = latency_stats(compute);
    j["h2d_ms"] = h;
    j["d2h_ms"] = d;
    j["latency_ms"] = lat;
    if (args.dump_profile) {
      j["steps"] = json::array();
      for (size_t i = 0; i < prog.steps().size(); ++i) {
        const auto& s = prog.steps()[i];
        j["steps"].push_back({{"name", s.name}, {"op", s.op}, {"kernel", s.kernel}, {"timed_ms", s.timed_ms},
                              {"gpu_ms", profile.empty() ? -1.0 : profile[i]}});
      }
    }
    json_file << j.dump(2) << "\n";
    if (!json_file.flush()) throw Error(ErrorCode::kIo, args.json_path + ": write failed");
    std::cout << "json:       " << args.json_path << "\n";
  }
  return 0;
}

int cmd_bench(const BenchArgs& args) {
  // Opened first, so an unwritable --json fails before minutes of benchmarking.
  std::ofstream json_file;
  if (!args.json_path.empty()) {
    json_file.open(args.json_path);
    if (!json_file) throw Error(ErrorCode::kIo, args.json_path + ": cannot open for writing");
  }
  const bool cpu = args.backend == "cpu";
  if (!cpu && args.streams > 1)
    throw Error(ErrorCode::kInvalidArgument, "--streams " + std::to_string(args.streams) +
                                                 " needs --backend cpu (the reference executor runs one stream)");

  // --- Load and check.
  const auto t_load = Clock::now();
  bool is_engine = false;  // an engine is already optimized: the passes are not run again
  EngineInfo info;
  Model model = load_model_or_engine(args.model, &is_engine, nullptr, nullptr, &info);
  require_supported(model);
  const Graph& g0 = model.graph;
  auto shapes = parse_shapes(args.shapes);
  check_shape_names(g0, shapes, "--shapes", args.model);
  if (args.int_range[1] <= args.int_range[0])
    throw Error(ErrorCode::kInvalidArgument, "--int-range: empty range [" + std::to_string(args.int_range[0]) + ", " +
                                                 std::to_string(args.int_range[1]) + ")");
  // An engine's dynamic inputs default to the shapes its tactics were timed at.
  if (is_engine)
    for (const auto& [name, dims] : info.profile_shapes)
      if (!shapes.count(name)) shapes[name] = dims;

  // Concrete shape of every input (--shapes, then static dims, then 1 for the remaining dynamic
  // dims), from the declared types.
  std::string notes;
  std::map<std::string, std::vector<int64_t>> resolved;
  std::vector<std::pair<std::string, DType>> input_types;
  for (const auto& name : g0.inputs) {
    const TensorType* type = g0.type_of(name);
    if (!type || type->dtype == DType::kUndefined)
      throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has no tensor type; kiln bench cannot generate it");
    resolved[name] = resolve_input_shape(name, *type, shapes, &notes);
    input_types.emplace_back(name, type->dtype);
  }
  if (const int gpu_index = gpu::parse_device(args.device); gpu_index >= 0) {
    if (args.backend != "cpu") throw Error(ErrorCode::kInvalidArgument, "--backend " + args.backend + " runs on the CPU; drop it with --device " + args.device);
    if (args.streams > 1) throw Error(ErrorCode::kInvalidArgument, "--streams is not supported with --device cuda yet");
    std::cerr << notes;
    return bench_gpu(args, gpu_index, std::move(model), is_engine ? &info : nullptr, resolved, input_types, json_file);
  }
  const int streams = args.streams;
  const int threads_requested =
      args.threads > 0 ? args.threads : cpu ? std::max(1, cpu::default_threads() / streams) : 1;

  // --- Optimize (reference: the passes; cpu: build_engine, or the engine file's tactics).
  size_t nodes_before = model.graph.nodes.size();
  std::vector<std::string> pass_log;
  double optimize_ms = 0, tactics_ms = 0;
  const auto t_opt = Clock::now();
  std::vector<std::unique_ptr<BenchTarget>> targets;
  std::shared_ptr<EngineRuntime> runtime;
  const Model* final_model = nullptr;
  if (cpu) {
    CpuEngine engine = is_engine ? cpu_engine_from_file(std::move(model), info, threads_requested)
                                 : cpu_engine_from_onnx(std::move(model), resolved, args.opt_level, threads_requested);
    runtime = engine.runtime;
    nodes_before = engine.nodes_before;
    pass_log = engine.pass_log;
    optimize_ms = engine.pass_ms;
    tactics_ms = engine.tactic_ms;
    final_model = &runtime->model();
    for (int s = 0; s < streams; ++s) targets.push_back(std::make_unique<CpuTarget>(runtime));
  } else {
    InferOptions infer;
    infer.evaluator = reference::constant_evaluator();
    infer_types(model, infer);
    nodes_before = model.graph.nodes.size();
    PassContext pctx;
    pctx.opt_level = args.opt_level;
    pctx.evaluator = reference::constant_evaluator();
    pctx.input_shapes = resolved;
    if (args.opt_level > 0 && !is_engine) {
      PassManager::standard().run(model, pctx);
      infer_types(model, infer);  // the passes leave new values untyped; the executor needs them all
    }
    pass_log = pctx.log;
    optimize_ms = ms_between(t_opt, Clock::now());
    auto ref = std::make_unique<ReferenceTarget>(std::move(model));
    final_model = &ref->model();
    targets.push_back(std::move(ref));
  }
  const auto t_prepare = Clock::now();

  // --- Inputs.
  BenchTarget& target = *targets.front();
  const Graph& g = final_model->graph;
  BenchInputs generated = make_bench_inputs(args, input_types, resolved);
  const TensorMap& inputs = generated.tensors;
  const json& inputs_json = generated.described;
  // The program for these shapes, compiled (or refused as outside every profile) before timing.
  std::shared_ptr<const cpu::Program> program;
  const EngineRuntime::BatchPlan* split = nullptr;
  if (cpu) {
    runtime->set_batch_split(!args.no_batch_split);
    program = runtime->program_for(resolved);
    split = &runtime->batch_plan(resolved);
    if (split->split()) program = runtime->program_at(cpu_sub_shapes(resolved, split->sub), 1);
  }
  const int64_t batch = generated.batch;  // items per inference
  const auto t_ready = Clock::now();

  std::cerr << notes;
  const int threads_used = target.threads_used(threads_requested);
  const std::string threads_note = target.threads_note(threads_requested);
  std::cout << "model:      " << args.model << (is_engine ? " (engine)" : "") << "\n";
  std::cout << "executor:   " << target.name() << "\n";
  std::cout << "threads:    " << threads_requested << (args.threads > 0 ? " requested" : " (default)") << ", "
            << threads_used << " used";
  if (!threads_note.empty()) std::cout << " (" << threads_note << ")";
  if (streams > 1) std::cout << " per stream; " << streams << " streams";
  std::cout << "\n";
  if (is_engine)
    std::cout << "engine:     " << g.nodes.size() << " nodes, built at opt level " << info.opt_level << "\n";
  else
    std::cout << "opt level:  " << args.opt_level << ": " << nodes_before << " nodes -> " << g.nodes.size() << " nodes\n";
  for (const auto& line : pass_log) std::cout << "  " << line << "\n";
  if (program)
    std::cout << "kernels:    " << program->kernel_count() << " per inference; peak activations "
              << mib(program->arena_bytes()) << " vs " << mib(program->activation_bytes_total())
              << " summed; tactic selection " << fixed(tactics_ms, 1) << " ms\n";
  if (split) {
    if (split->split())
      std::cout << "batch:      split into sub-batches of " << split->sub << " (one per thread at a time; kernels "
                << "and peak above are a sub-batch's)\n";
    else if (split->batch > 1)
      std::cout << "batch:      not split (" << split->why << ")\n";
  }
  std::cout << "inputs:     " << generated.line << "\n" << std::flush;

  // --- Warm-up and timed iterations.
  const StopRule stop = stop_rule_of(args);
  std::string stop_rule = stop.text;
  if (streams > 1) stop_rule += " per stream";
  TimedRuns timed = run_streams(targets, inputs, args.warmup_ms, stop.min_iterations, stop.min_ms);
  std::vector<double> latencies;
  int64_t warmup_iterations = 0;
  for (const auto& s : timed.streams) {
    latencies.insert(latencies.end(), s.latencies.begin(), s.latencies.end());
    warmup_iterations += s.warmup_iterations;
  }
  const double total_ms = timed.total_ms;
  const json lat = latency_stats(latencies);
  const double inferences_per_s = static_cast<double>(latencies.size()) / (total_ms / 1000.0);

  json j;
  j["tool"] = "kiln bench";
  j["kiln_version"] = KILN_VERSION;
  j["model"] = args.model;
  j["engine_file"] = is_engine;
  j["executor"] = target.name();
  j["threads"] = threads_requested;
  j["threads_used"] = threads_used;
  if (!threads_note.empty()) j["threads_note"] = threads_note;
  j["streams"] = streams;
  j["opt_level"] = is_engine ? info.opt_level : args.opt_level;
  j["nodes_before"] = nodes_before;
  j["nodes"] = g.nodes.size();
  j["passes"] = pass_log;
  if (program) {
    std::map<std::string, int> by_tactic;
    for (const auto& t : program->node_tactics())
      if (!t.empty()) ++by_tactic[t];
    j["engine"] = {{"kernels", program->kernel_count()},
                   {"memory_peak_bytes", program->arena_bytes()},
                   {"memory_total_bytes", program->activation_bytes_total()},
                   {"required_isa", program->required_isa()},
                   {"tactics", by_tactic}};
  }
  j["inputs"] = inputs_json;
  j["batch"] = batch;
  if (split) j["batch_split"] = {{"sub_batch", split->sub}, {"why_not", split->why}};
  j["seed"] = args.seed;
  j["setup_ms"] = {{"load", ms_between(t_load, t_opt)},
                   {"optimize", optimize_ms},
                   {"tactics", tactics_ms},
                   {"prepare", ms_between(t_prepare, t_ready)}};
  j["warmup"] = {{"requested_ms", args.warmup_ms}, {"iterations", warmup_iterations}, {"ms", timed.warmup_ms}};
  j["stop_rule"] = stop_rule;
  j["iterations"] = latencies.size();
  j["total_ms"] = total_ms;
  j["throughput"] = {{"inferences_per_s", inferences_per_s}, {"items_per_s", inferences_per_s * static_cast<double>(batch)}};
  j["latency_ms"] = lat;
  if (streams > 1) {
    j["per_stream"] = json::array();
    for (const auto& s : timed.streams)
      j["per_stream"].push_back({{"iterations", s.latencies.size()},
                                 {"inferences_per_s", static_cast<double>(s.latencies.size()) / (total_ms / 1000.0)},
                                 {"latency_ms", latency_stats(s.latencies)}});
  }
  // Every latency, in order, stream after stream (omitted past kMaxRecordedLatencies, to keep the file small).
  if (latencies.size() <= kMaxRecordedLatencies) j["latencies_ms"] = latencies;

  std::cout << "warm-up:    " << warmup_iterations << " iterations, " << fixed(timed.warmup_ms, 1) << " ms (requested "
            << fixed(args.warmup_ms, 0) << " ms" << (streams > 1 ? " per stream" : "") << ")\n";
  std::cout << "timed:      " << latencies.size() << " iterations in " << fixed(total_ms / 1000.0, 3) << " s ("
            << stop_rule << ")\n";
  std::cout << "=== Performance summary ===\n";
  std::cout << "throughput: " << fixed(inferences_per_s, 3) << " inferences/s, "
            << fixed(inferences_per_s * static_cast<double>(batch), 3) << " items/s (batch " << batch;
  if (streams > 1) std::cout << ", " << streams << " streams together";
  std::cout << ")\n";
  std::cout << "latency:    min " << fixed(lat["min"]) << " ms, mean " << fixed(lat["mean"]) << " ms, median "
            << fixed(lat["median"]) << " ms, p90 " << fixed(lat["p90"]) << " ms, p95 " << fixed(lat["p95"])
            << " ms, p99 " << fixed(lat["p99"]) << " ms, max " << fixed(lat["max"]) << " ms\n";

  // --- Profile: as many separate runs as one stream's timed iterations, so the figures above are
  // not perturbed by the per-step timers.
  if (args.dump_profile) {
    const int64_t runs = static_cast<int64_t>(timed.streams.front().latencies.size());
    j["profile"] = cpu ? cpu_profile(static_cast<CpuTarget&>(target), inputs, runs)
                       : reference_profile(*final_model, inputs, runs);
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
  sub->add_option("--backend", args->backend,
                  "cpu (default: the engine's tactics, or the model built in memory) or reference")
      ->check(CLI::IsMember({"cpu", "reference"}));
  sub->add_option("--shapes", args->shapes, "Shapes of the generated inputs: NAME:1x3x224x224,...");
  sub->add_option("--warmup-ms", args->warmup_ms, "Warm up for this long before timing (default 200; 0: none)")
      ->check(CLI::NonNegativeNumber);
  auto* iters = sub->add_option("--iterations", args->iterations, "Time exactly this many inferences (per stream)")
                    ->check(CLI::PositiveNumber);
  auto* dur = sub->add_option("--duration", args->duration_s, "Time inferences for at least this many seconds")
                  ->check(CLI::PositiveNumber);
  iters->excludes(dur);
  sub->add_option("--threads", args->threads,
                  "Threads per inference (cpu default: the cores divided among the streams; the reference executor uses 1)")
      ->check(CLI::Range(1, 4096));
  sub->add_option("--streams", args->streams,
                  "Run N inferences concurrently, each stream its own context on one shared engine (cpu only)")
      ->check(CLI::Range(1, 256));
  sub->add_option("--json", args->json_path, "Write every figure as JSON to this file");
  sub->add_flag("--dump-profile", args->dump_profile,
                "Also time each step (cpu: kernel, tactic, implementation; reference: node) in separate runs");
  sub->add_option("--opt-level", args->opt_level, "Graph optimization level 0-3 of an ONNX model (default 3; 0: no passes)")
      ->check(CLI::Range(0, 3));
  sub->add_option("--device", args->device, "cpu (default), cuda or cuda:N (the GPU backend module)");
  sub->add_option("--precision", args->precision,
                  "GPU precision of float layers: fp16 (default; a GPU engine's own), bf16, fp32 (TF32), fp8 (FP8 GEMMs, FP16 elsewhere) "
                  "or int8 (INT8 convolutions and GEMMs, FP16 elsewhere)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16", "fp8", "int8"}));
  sub->add_flag("--no-batch-split", args->no_batch_split,
                "cpu: run a batch as one program over every thread, not as one-thread sub-batches");
  sub->add_flag("--no-cuda-graph", args->no_cuda_graph, "GPU: launch kernel by kernel instead of replaying a CUDA graph");
  sub->add_option("--workspace", args->workspace_mib, "GPU: scratch limit per library kernel in MiB (default 1024)")
      ->check(CLI::Range(0, 1 << 20));
  sub->add_option("--seed", args->seed, "Seed of the generated inputs");
  sub->add_option("--int-range", args->int_range, "Range [LO,HI) of generated integer inputs (default 0,10)")
      ->expected(2)
      ->delimiter(',');
  sub->footer("Default timing: at least " + std::to_string(kDefaultMinIterations) + " iterations and at least " +
              fixed(kDefaultMinSeconds, 0) + " s, whichever is longer (per stream). An engine's dynamic inputs default " +
              "to its profile 0 opt shapes; shapes outside its profiles are refused. Errors exit 1; bad flags exit 2.");
  *run = [args] { return cmd_bench(*args); };
  return sub;
}

}  // namespace kiln::cli
