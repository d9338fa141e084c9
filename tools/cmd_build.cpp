// `kiln build`: optimizes an ONNX model, selects CPU tactics at its optimization profiles
// (build_engine) and writes an engine file (src/engine); and the glue that lets `run`, `inspect`
// and `bench` take an engine wherever they take a model.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "backends/cpu/timing_cache.h"
#include "backends/gpu/gpu_build.h"
#include "backends/gpu/gpu_engine.h"
#include "backends/gpu/loader.h"
#include "backends/reference/executor.h"
#include "cli_common.h"
#include "engine/engine_file.h"
#include "onnx/onnx_import.h"
#include "quant/calibration.h"
#include "quant/qdq.h"
#include "runtime/builder.h"

namespace kiln::cli {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
using ShapeMap = std::map<std::string, std::vector<int64_t>>;

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

struct BuildArgs {
  std::string model;
  std::string output;
  std::string shapes;                                     // static inputs of every profile
  std::vector<std::string> min_shapes, opt_shapes, max_shapes;  // the k-th of each: profile k
  std::string timing_cache;
  double workspace_mib = 0;  // 0: no limit
  int threads = 0;           // 0: the core count
  int opt_level = 3;
  std::string disabled;      // comma-separated pass names
  bool no_timing = false;
  bool verbose = false;
  // Precision
  bool int8 = false, bf16 = false, fp16 = false;
  std::string calib, calib_method, calib_cache, precision_constraints = "prefer", layer_precision;
  size_t calib_samples = 0;  // 0: all
  int64_t calib_batch = 0;   // 0: 8, or the input's static batch
  std::string accuracy_budget, accuracy_metric = "auto", validation;
  size_t validation_samples = 64;
  // GPU engines
  std::string device = "cpu";
  std::string precision;  // --device cuda: fp16 (default), bf16 or fp32
  bool hardware_compatible = false;
  // --plugin LIB.so is a global option (tools/kiln_main.cpp): libraries load before the model.
};

std::string profile_dims_text(const ProfileDims& d) {
  if (d.min == d.max) return shape_to_string(d.opt);
  return "min " + shape_to_string(d.min) + ", opt " + shape_to_string(d.opt) + ", max " + shape_to_string(d.max);
}

// The optimization profiles from --shapes and the --min/--opt/--max-shapes groups. Inputs with
// dynamic dims that no flag covers get a static profile entry with those dims set to 1 (as
// trtexec does), and `notes` says so. A model that is static and given no flags gets no profile.
std::vector<OptimizationProfile> make_profiles(const Model& model, const BuildArgs& a, std::string* notes) {
  const Graph& g = model.graph;
  const ShapeMap fixed_shapes = parse_shapes(a.shapes, "--shapes");
  check_shape_names(g, fixed_shapes, "--shapes", a.model);
  const size_t n = a.min_shapes.size();
  if (a.opt_shapes.size() != n || a.max_shapes.size() != n)
    throw Error(ErrorCode::kInvalidArgument,
                "--min-shapes, --opt-shapes and --max-shapes go together, once per profile; got " +
                    std::to_string(a.min_shapes.size()) + " --min-shapes, " + std::to_string(a.opt_shapes.size()) +
                    " --opt-shapes, " + std::to_string(a.max_shapes.size()) + " --max-shapes");
  std::vector<OptimizationProfile> profiles(std::max<size_t>(n, 1));
  for (size_t k = 0; k < n; ++k) {
    const ShapeMap mins = parse_shapes(a.min_shapes[k], "--min-shapes");
    const ShapeMap opts = parse_shapes(a.opt_shapes[k], "--opt-shapes");
    const ShapeMap maxs = parse_shapes(a.max_shapes[k], "--max-shapes");
    check_shape_names(g, mins, "--min-shapes", a.model);
    check_shape_names(g, opts, "--opt-shapes", a.model);
    check_shape_names(g, maxs, "--max-shapes", a.model);
    const std::string where = "profile " + std::to_string(k) + ": ";
    auto same_names = [&](const ShapeMap& x, const char* xf, const ShapeMap& y, const char* yf) {
      for (const auto& [name, d] : x)
        if (!y.count(name))
          throw Error(ErrorCode::kInvalidArgument, where + "'" + name + "' is in " + xf + " but not in " + yf +
                                                       " (each dynamic input needs all three)");
    };
    same_names(mins, "--min-shapes", opts, "--opt-shapes");
    same_names(mins, "--min-shapes", maxs, "--max-shapes");
    same_names(opts, "--opt-shapes", mins, "--min-shapes");
    same_names(maxs, "--max-shapes", mins, "--min-shapes");
    for (const auto& [name, d] : mins) {
      if (fixed_shapes.count(name))
        throw Error(ErrorCode::kInvalidArgument,
                    "'" + name + "' is given both a static shape (--shapes) and a range (--min/--opt/--max-shapes)");
      profiles[k].inputs[name] = ProfileDims{d, opts.at(name), maxs.at(name)};
    }
  }
  for (auto& p : profiles)
    for (const auto& [name, d] : fixed_shapes) p.inputs[name] = ProfileDims{d, d, d};

  bool any = n > 0 || !fixed_shapes.empty();
  for (const auto& in : g.inputs) {
    const TensorType* t = g.type_of(in);
    if (!t || !t->shape)
      throw Error(ErrorCode::kInvalidArgument,
                  "input '" + in + "' has an unknown rank; give its shape with --shapes " + in + ":DxDx...");
    bool dynamic = false;
    std::vector<int64_t> dims;
    for (const Dim& d : *t->shape) {
      dynamic |= !d.known();
      dims.push_back(d.known() ? d.value : 1);
    }
    if (!dynamic) continue;
    bool added = false;
    for (auto& p : profiles) {
      if (p.inputs.count(in)) continue;
      p.inputs[in] = ProfileDims{dims, dims, dims};
      added = any = true;
    }
    if (added && notes)
      *notes += "input '" + in + "' is " + t->to_string() + ": no shapes given, built for " + shape_to_string(dims) +
                " only (use --shapes or --min/--opt/--max-shapes)\n";
  }
  if (!any) profiles.clear();
  return profiles;
}

// A one-line progress bar on stderr (only when stderr is a terminal).
struct ProgressBar {
  bool open = false;
  void update(size_t done, size_t total) {
    constexpr size_t kWidth = 30;
    const size_t filled = total ? done * kWidth / total : kWidth;
    std::fprintf(stderr, "\rselecting tactics [%s%s] %zu/%zu nodes", std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, ' ').c_str(), done, total);
    open = done < total;
    if (!open) std::fputc('\n', stderr);
    std::fflush(stderr);
  }
  ~ProgressBar() {
    if (open) std::fputc('\n', stderr);  // an error interrupted it: the message starts on a new line
  }
};

// The accuracy guard's data: --validation, else --calib.
std::string validation_data(const BuildArgs& args) {
  const std::string data = !args.validation.empty() ? args.validation : args.calib;
  if (data.empty())
    throw Error(ErrorCode::kInvalidArgument, "--accuracy-budget needs validation data (--validation DATA or --calib DATA)");
  return data;
}

// `kiln build --device cuda[:N]`: a GPU engine (src/backends/gpu/gpu_engine.h) for one set of
// static shapes, its tuned kernels timed on that GPU (or taken from --timing-cache).
int cmd_build_gpu(const BuildArgs& args, int gpu_index) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> cpu_only;
  const bool fp8 = args.precision == "fp8", int8 = args.precision == "int8";
  if (args.int8 || args.bf16 || args.fp16) cpu_only.push_back("--int8/--bf16/--fp16 (use --precision fp16, bf16, fp32, fp8 or int8)");
  if (!args.calib.empty() && !fp8 && !int8)
    cpu_only.push_back("--calib without --precision fp8 or int8 (the GPU calibrates only FP8 GEMM and INT8 convolution tensors)");
  if (!args.calib_cache.empty()) cpu_only.push_back("--calib-cache (CPU INT8 engines only)");
  if (!int8 && (!args.accuracy_budget.empty() || !args.validation.empty() || !args.layer_precision.empty()))
    cpu_only.push_back("--accuracy-budget, --validation and --layer-precision without --precision int8 (on the GPU they "
                       "choose between INT8 and FP16 convolutions)");
  if (!args.min_shapes.empty() || !args.opt_shapes.empty() || !args.max_shapes.empty())
    cpu_only.push_back("--min/--opt/--max-shapes (GPU engines have static shapes: give them with --shapes)");
  if (args.threads > 0) cpu_only.push_back("--threads");
  if (args.no_timing) cpu_only.push_back("--no-timing");
  if (!args.disabled.empty()) cpu_only.push_back("--disable-pass");
  if (!cpu_only.empty()) {
    std::string msg = "not supported with --device " + args.device + ":";
    for (const auto& c : cpu_only) msg += "\n  " + c;
    throw Error(ErrorCode::kInvalidArgument, msg);
  }
  gpu::GpuEngineOptions opt;
  opt.precision = gpu::parse_precision(args.precision.empty() ? "fp16" : args.precision);
  if (args.workspace_mib > 0) opt.workspace_limit = static_cast<size_t>(args.workspace_mib * 1024.0 * 1024.0);
  opt.hardware_compatible = args.hardware_compatible;
  opt.opt_level = args.opt_level;
  std::vector<std::string> log;
  if (args.verbose) opt.log = &log;

  Model model = load_onnx(args.model);
  const ShapeMap given = parse_shapes(args.shapes);
  check_shape_names(model.graph, given, "--shapes", args.model);
  std::string notes;
  ShapeMap shapes;
  for (const auto& name : model.graph.inputs) {
    const TensorType* type = model.graph.type_of(name);
    if (!type) throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has no tensor type");
    shapes[name] = resolve_input_shape(name, *type, given, &notes);
  }
  std::cerr << notes;
  // The cache's target is the GPU's; a file for another GPU or library is ignored (and rewritten).
  auto device = gpu::open_device(gpu_index);
  cpu::TimingCache cache(gpu::gpu_target(device->props()));
  if (!args.timing_cache.empty()) {
    const std::string warning = cache.load(args.timing_cache);
    if (!warning.empty()) std::cerr << "kiln: warning: " << warning << "\n";
  }
  opt.timing_cache = &cache;
  // FP8 and INT8: the scales from --calib, in batches of the engine's batch size (FP8 MinMax and
  // INT8 entropy by default, as TensorRT's calibrators).
  std::unique_ptr<quant::FileCalibrator> calibrator;
  gpu::Fp8Calibration fp8_calib;
  if ((fp8 || int8) && !args.calib.empty()) {
    const auto& first = shapes.at(model.graph.inputs.at(0));
    calibrator = std::make_unique<quant::FileCalibrator>(args.calib, model, first.empty() ? 1 : first[0], args.calib_samples);
    fp8_calib.data = calibrator.get();
    fp8_calib.method = quant::parse_calib_method(args.calib_method.empty() ? (fp8 ? "minmax" : "entropy") : args.calib_method);
    fp8_calib.source = "--calib " + args.calib;
    opt.fp8 = &fp8_calib;
  }
  // INT8: --layer-precision NAME:fp16 and the accuracy guard.
  std::unique_ptr<quant::FileCalibrator> validation;
  if (int8) {
    for (const auto& [layer, prec] : parse_layer_precision(args.layer_precision, "NAME:fp16")) {
      if (prec != "fp16")
        throw Error(ErrorCode::kInvalidArgument, "--layer-precision " + layer + ":" + prec +
                                                     ": a GPU INT8 engine keeps layers in fp16 (NAME:fp16); the others "
                                                     "run in INT8 where it is faster");
      fp8_calib.keep_fp16.insert(layer);
    }
    if (!args.accuracy_budget.empty()) {
      fp8_calib.guard.budget = quant::parse_accuracy_budget(args.accuracy_budget);
      fp8_calib.guard.metric = quant::parse_accuracy_metric(args.accuracy_metric);
      fp8_calib.guard.max_samples = args.validation_samples;
      const std::string data = validation_data(args);
      const auto& first = shapes.at(model.graph.inputs.at(0));
      validation = std::make_unique<quant::FileCalibrator>(data, model, first.empty() ? 1 : first[0], args.validation_samples);
      fp8_calib.validation = validation.get();
      if (args.verbose) fp8_calib.guard.progress = [](const std::string& line) { std::cerr << "guard: " << line << "\n"; };
    } else if (!args.validation.empty()) {
      throw Error(ErrorCode::kInvalidArgument, "--validation needs --accuracy-budget");
    }
    opt.fp8 = &fp8_calib;
  }
  gpu::GpuEngineBuild b = gpu::build_gpu_engine(std::move(model), shapes, gpu_index, opt);
  const auto t_write = std::chrono::steady_clock::now();
  save_engine(b.optimized, b.info, args.output);
  const double write_ms = ms_since(t_write);
  if (!args.timing_cache.empty()) cache.save(args.timing_cache);
  std::error_code ec;
  const auto size = fs::file_size(args.output, ec);

  const gpu::GpuProgram& prog = *b.program;
  const gpu::DeviceProps& dp = prog.device().props();
  const gpu::TacticStats& ts = prog.tactic_stats();
  std::cout << "model:        " << args.model << "\n";
  std::cout << "device:       cuda:" << dp.id << " " << dp.name << " (" << dp.sm() << "; CUDA " << dp.runtime_version
            << ", cuBLASLt " << dp.cublaslt_version << ", cuDNN " << dp.cudnn_version << ")\n";
  std::cout << "precision:    " << gpu::precision_name(opt.precision) << (opt.hardware_compatible ? ", hardware-compatible (SM 8.0 and newer)" : "") << "\n";
  if (fp8)
    std::cout << "fp8:          " << fp8_gemm_summary(prog) << " (the others were not faster in FP8); " << b.fp8_gemms
              << " GEMM inputs calibrated (" << fp8_calib.source << ", " << quant::to_string(fp8_calib.method) << ", "
              << (calibrator ? calibrator->samples_read() : 0) << " samples) in " << fixed(b.calib_ms, 1) << " ms\n";
  if (int8)
    std::cout << "int8:         " << int8_conv_summary(prog) << " (the others were not faster in INT8 or have no INT8 kernel); "
              << b.int8_convs << " convolutions" << (b.int8_gemms ? " and " + std::to_string(b.int8_gemms) + " GEMMs" : "")
              << " calibrated (" << fp8_calib.source << ", " << quant::to_string(fp8_calib.method)
              << ", " << (calibrator ? calibrator->samples_read() : 0) << " samples) in " << fixed(b.calib_ms, 1) << " ms\n";
  if (b.guard && b.guard->layers.empty())
    std::cout << "guard:        no convolution can run in INT8: nothing to guard\n";
  else if (b.guard) {
    std::istringstream report(quant::format_guard_report(*b.guard, fp8_calib.guard.budget, "fp16"));
    std::string line;
    for (bool first = true; std::getline(report, line); first = false)
      std::cout << (first ? "guard:        " : "              ") << line << "\n";
    std::cout << "              (" << fixed(b.guard_ms, 1) << " ms)\n";
  }
  std::cout << "shapes:      ";
  for (const auto& [name, dims] : shapes) std::cout << " " << name << ":" << shape_to_string(dims);
  std::cout << "\n";
  std::cout << "nodes:        " << b.nodes_before << " -> " << b.nodes_after << " -> " << prog.steps().size()
            << " kernels; passes " << fixed(b.pass_ms, 1) << " ms, kernels chosen in " << fixed(b.compile_ms, 1) << " ms\n";
  // Per tuned kernel: timed, or found in the cache (filled by earlier builds and by earlier
  // kernels of the same shape in this one). The engine records each distinct one.
  std::cout << "tactics:      " << ts.timed + ts.recorded << " tuned kernels (" << b.info.tactics.size()
            << " distinct): " << ts.timed << " timed, " << ts.recorded << " from the timing cache"
            << (ts.rejected ? ", " + std::to_string(ts.rejected) + " cached ones rejected and timed again" : "") << "\n";
  std::cout << "memory:       weights " << mib(prog.weight_bytes()) << ", activations " << mib(prog.arena_bytes())
            << ", workspace " << mib(prog.workspace_bytes()) << "\n";
  std::cout << "engine:       " << args.output << " (" << mib(size) << ", written in " << fixed(write_ms, 1) << " ms; total "
            << fixed(ms_since(t0), 1) << " ms)\n";
  if (args.verbose)
    for (const auto& line : log) std::cout << "  " << line << "\n";
  return 0;
}

int cmd_build(const BuildArgs& args) {
  if (const int gpu_index = gpu::parse_device(args.device); gpu_index >= 0) return cmd_build_gpu(args, gpu_index);
  if (!args.precision.empty() || args.hardware_compatible)
    throw Error(ErrorCode::kInvalidArgument,
                "--precision and --hardware-compatible are for GPU engines (--device cuda); CPU engines take --bf16, "
                "--fp16 and --int8");
  const auto t0 = std::chrono::steady_clock::now();
  Model model = load_onnx(args.model);
  std::string notes;
  BuildConfig cfg;
  cfg.profiles = make_profiles(model, args, &notes);
  cfg.opt_level = args.opt_level;
  std::stringstream ss(args.disabled);
  for (std::string name; std::getline(ss, name, ',');)
    if (!name.empty()) cfg.disabled_passes.insert(name);
  cfg.threads = args.threads;
  cfg.workspace_bytes = static_cast<size_t>(args.workspace_mib * 1024.0 * 1024.0);
  cfg.time_tactics = !args.no_timing;

  cpu::TimingCache cache;
  std::string cache_warning;
  if (!args.timing_cache.empty()) {
    cache_warning = cache.load(args.timing_cache);
    if (!cache_warning.empty()) std::cerr << "kiln: warning: " << cache_warning << "\n";
  }
  cfg.timing_cache = &cache;  // always: the hit/miss counts are reported even without a file

  std::vector<std::string> log;
  if (args.verbose) cfg.log = &log;
  auto bar = std::make_shared<ProgressBar>();
  if (::isatty(STDERR_FILENO)) cfg.progress = [bar](size_t done, size_t total) { bar->update(done, total); };
  std::cerr << notes;

  // Precision flags.
  std::unique_ptr<quant::FileCalibrator> calibrator;
  cfg.precision.int8 = args.int8;
  cfg.precision.bf16 = args.bf16;
  cfg.precision.fp16 = args.fp16;
  cfg.precision.constraints = args.precision_constraints;
  cfg.precision.calib_method = quant::parse_calib_method(args.calib_method.empty() ? "entropy" : args.calib_method);
  cfg.precision.calib_cache = args.calib_cache;
  cfg.precision.layer_precision = parse_layer_precision(args.layer_precision, "NAME:PRECISION (fp32, bf16, fp16, int8)");
  if (!args.int8 && (!args.calib.empty() || !args.calib_cache.empty()))
    throw Error(ErrorCode::kInvalidArgument, "--calib and --calib-cache need --int8");
  if (args.int8 && !args.calib.empty() && !(std::filesystem::exists(args.calib_cache))) {
    const int64_t batch = args.calib_batch > 0 ? args.calib_batch : default_calib_batch(model, cfg.profiles);
    calibrator = std::make_unique<quant::FileCalibrator>(args.calib, model, batch, args.calib_samples);
    cfg.precision.calibrator = calibrator.get();
  }
  std::unique_ptr<quant::FileCalibrator> validation;
  if (!args.accuracy_budget.empty()) {
    if (!args.int8) throw Error(ErrorCode::kInvalidArgument, "--accuracy-budget needs --int8");
    cfg.precision.accuracy_budget = quant::parse_accuracy_budget(args.accuracy_budget);
    cfg.precision.accuracy_metric = quant::parse_accuracy_metric(args.accuracy_metric);
    cfg.precision.validation_samples = args.validation_samples;
    const std::string data = validation_data(args);
    validation = std::make_unique<quant::FileCalibrator>(data, model, 1, args.validation_samples);
    cfg.precision.validation = validation.get();
    if (args.verbose) cfg.precision.guard_progress = [](const std::string& line) { std::cerr << "guard: " << line << "\n"; };
  } else if (!args.validation.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "--validation needs --accuracy-budget");
  }
  if (::isatty(STDERR_FILENO))
    cfg.precision.calib_progress = [](size_t n) { std::fprintf(stderr, "\rcalibrating: %zu samples", n); };

  BuildResult r = build_engine(std::move(model), cfg);
  if (cfg.precision.calib_progress) std::fputc('\n', stderr);
  const auto t_write = std::chrono::steady_clock::now();
  save_engine(r.model, r.info, args.output);
  const double write_ms = ms_since(t_write);
  if (!args.timing_cache.empty()) cache.save(args.timing_cache);
  const double total_ms = ms_since(t0);
  std::error_code ec;
  const auto size = fs::file_size(args.output, ec);

  const EngineInfo& info = r.info;
  std::cout << "model:        " << args.model << "\n";
  std::cout << "nodes:        " << r.nodes_before << " -> " << r.model.graph.nodes.size() << " (opt level "
            << args.opt_level << (args.opt_level > 3 ? ", which behaves as 3 for now" : "") << ")\n";
  for (const auto& line : r.pass_log) std::cout << "  " << line << "\n";
  if (!r.precision_log.empty()) {
    std::cout << "precision:\n";
    for (const auto& line : r.precision_log) std::cout << "  " << line << "\n";
  }
  if (info.profiles.empty()) {
    std::cout << "profiles:     none (every input is static)\n";
  } else {
    std::cout << "profiles:     " << info.profiles.size() << " (tactics timed at profile 0's opt shapes)\n";
    for (size_t p = 0; p < info.profiles.size(); ++p)
      for (const auto& [name, d] : info.profiles[p].inputs)
        std::cout << "  profile " << p << ": " << name << " " << profile_dims_text(d) << "\n";
  }
  std::map<std::string, int> by_tactic;
  for (const auto& t : info.node_tactics)
    if (!t.empty()) ++by_tactic[t];
  std::cout << "tactics:     ";
  for (const auto& [t, count] : by_tactic) std::cout << " " << t << " x" << count;
  if (by_tactic.empty()) std::cout << " none";
  std::cout << (args.no_timing ? " (not timed: first supporting tactic)" : "") << "\n";
  std::cout << "kernels:      " << info.kernels << " per inference, " << info.threads << " threads\n";
  std::cout << "memory:       peak activations " << mib(info.memory_peak) << " vs " << mib(info.memory_total)
            << " summed over all activations";
  if (info.memory_total > 0)
    std::cout << " (" << fixed(100.0 * static_cast<double>(info.memory_peak) / static_cast<double>(info.memory_total), 1)
              << "%)";
  std::cout << "\n";
  if (cfg.workspace_bytes) std::cout << "workspace:    " << mib(cfg.workspace_bytes) << " per kernel at most\n";
  std::cout << "build time:   " << fixed(total_ms, 1) << " ms (passes " << fixed(r.pass_ms, 1) << " ms, tactic selection "
            << fixed(r.tactic_ms, 1) << " ms, " << (r.calib_ms > 0 ? "calibration " + fixed(r.calib_ms, 1) + " ms, " : "")
            << (r.guard_ms > 0 ? "accuracy guard " + fixed(r.guard_ms, 1) + " ms, " : "")
            << "writing " << fixed(write_ms, 1) << " ms)\n";
  std::cout << "timing cache: " << cache.hits() << " hits, " << cache.misses() << " misses";
  if (!args.timing_cache.empty())
    std::cout << "; " << args.timing_cache << " (" << cache.size() << " entries" << (cache_warning.empty() ? "" : ", rebuilt")
              << ")";
  else
    std::cout << " (no --timing-cache: nothing kept)";
  std::cout << "\n";
  std::cout << "target:       " << info.target.cpu_model << ", backend " << info.target.backend << ", requires";
  for (const auto& f : info.target.required_isa) std::cout << " " << f;
  if (info.target.required_isa.empty()) std::cout << " nothing";
  std::cout << "\n";
  std::cout << "engine:       " << args.output << " (" << size << " bytes, " << mib(size) << ")\n";

  if (args.verbose) {
    std::cout << "tactic log:\n";
    for (const auto& line : log) std::cout << "  " << line << "\n";
    std::cout << "steps at the opt shapes (name, op, tactic, implementation, timed ms):\n";
    for (const auto& s : r.program->steps()) {
      std::cout << "  " << s.name << "  " << s.op << "  " << s.tactic << "  " << s.impl;
      if (s.timed_ms >= 0) std::cout << "  " << fixed(s.timed_ms, 4) << " ms";
      std::cout << "\n";
    }
  }
  return 0;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

std::string op_name(const Node& n) { return n.domain.empty() ? n.op_type : n.domain + "::" + n.op_type; }

void describe(const LoadedEngine& e, std::string* text, std::string* js) {
  const EngineHeader& h = e.header;
  const EngineInfo& info = e.info;
  const TargetFingerprint& t = info.target;
  json j;
  j["format_version"] = h.format_version;
  j["header_size"] = h.header_size;
  j["flatbuffer"] = {{"offset", h.flatbuffer_offset}, {"size", h.flatbuffer_size}};
  j["weights"] = {{"offset", h.weights_offset}, {"size", h.weights_size}};
  j["crc32"] = hex32(h.crc32);
  j["file_size"] = h.file_size;
  j["kiln_version"] = info.kiln_version;
  j["target"] = {{"cpu_vendor", t.cpu_vendor}, {"cpu_model", t.cpu_model}, {"isa_features", t.isa_features},
                 {"required_isa", t.required_isa}, {"backend", t.backend}, {"properties", t.properties}};
  j["tactics"] = json::array();
  for (const auto& [key, tac] : info.tactics) j["tactics"].push_back({{"key", key}, {"tactic", tac.tactic}, {"ms", tac.ms}});
  json shapes = json::object();
  for (const auto& [n, d] : info.profile_shapes) shapes[n] = d;
  j["build"] = {{"opt_level", info.opt_level}, {"profile_shapes", shapes}, {"disabled_passes", info.disabled_passes}};
  j["profiles"] = json::array();
  for (const auto& p : info.profiles) {
    json pj = json::object();
    for (const auto& [name, d] : p.inputs) pj[name] = {{"min", d.min}, {"opt", d.opt}, {"max", d.max}};
    j["profiles"].push_back(pj);
  }
  j["threads"] = info.threads;
  j["kernels"] = info.kernels;
  j["memory"] = {{"peak_bytes", info.memory_peak}, {"total_bytes", info.memory_total}};

  std::ostringstream os;
  os << "engine:     format version " << h.format_version << ", header " << h.header_size << " bytes, flatbuffer ["
     << h.flatbuffer_offset << ", +" << h.flatbuffer_size << "), weights [" << h.weights_offset << ", +" << h.weights_size
     << "), CRC-32 " << hex32(h.crc32) << ", " << h.file_size << " bytes\n";
  os << "built by:   kiln " << info.kiln_version << ", opt level " << info.opt_level;
  for (const auto& p : info.disabled_passes) os << ", -" << p;
  os << "\n";
  // A GPU engine's precision is the engine's (every float layer); a CPU engine's is per node.
  const bool gpu_engine = t.backend == "cuda";
  auto prop = [&](const char* k) {
    const std::string v = t.property(k);
    return v.empty() ? std::string("?") : v;
  };
  if (gpu_engine) {
    os << "target:     GPU " << prop("gpu") << " (" << prop("sm") << "); CUDA " << prop("cuda") << ", cuBLASLt "
       << prop("cublaslt") << ", cuDNN " << prop("cudnn") << "; " << prop("precision")
       << (prop("hardware_compatible") == "1" ? "; hardware-compatible (SM 8.0 and newer)" : "; runs on " + prop("sm") + " only")
       << "\n";
    os << "tactics:    " << info.tactics.size() << " tuned kernels recorded\n";
    for (const auto& [key, tac] : info.tactics)
      os << "  " << key << " -> " << (tac.tactic.size() > 48 ? tac.tactic.substr(0, 45) + "..." : tac.tactic)
         << (tac.ms >= 0 ? " (" + fixed(tac.ms, 4) + " ms)" : std::string()) << "\n";
  } else {
    os << "target:     " << t.cpu_vendor << " / " << t.cpu_model << "; backend " << t.backend << "; ISA";
    for (const auto& f : t.isa_features) os << " " << f;
    if (t.isa_features.empty()) os << " (none)";
    os << "; requires";
    for (const auto& f : t.required_isa) os << " " << f;
    if (t.required_isa.empty()) os << " nothing";
    os << "\n";
  }
  if (info.profiles.empty()) {
    os << "profiles:   none (static shapes";
    for (const auto& [n, d] : info.profile_shapes) os << ", " << n << ":" << shape_to_string(d);
    os << ")\n";
  } else {
    os << "profiles:   " << info.profiles.size() << "\n";
    for (size_t p = 0; p < info.profiles.size(); ++p)
      for (const auto& [name, d] : info.profiles[p].inputs)
        os << "  profile " << p << ": " << name << " " << profile_dims_text(d) << "\n";
  }
  if (!gpu_engine) os << "threads:    " << (info.threads > 0 ? std::to_string(info.threads) : std::string("not set")) << "\n";
  os << "kernels:    " << info.kernels << " per inference (at the opt shapes)\n";
  os << "memory:     peak activations " << mib(info.memory_peak) << " vs " << mib(info.memory_total)
     << " summed over all activations\n";

  // The per-node table: what runs each node, and what each fused node replaced.
  const auto& nodes = e.model.graph.nodes;
  const bool have_tactics = info.node_tactics.size() == nodes.size();
  size_t wn = 4, wo = 2, wt = 6;
  std::vector<std::string> tactics(nodes.size(), "-");
  std::map<std::string, int> by_precision;
  auto precision_of = [&](const Node& n) { return gpu_engine ? prop("precision") : quant::node_precision(e.model.graph, n); };
  for (const Node& n : nodes) ++by_precision[precision_of(n)];
  os << "precision: ";
  for (const auto& [p, count] : by_precision) os << " " << p << " x" << count;
  os << "\n";
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (have_tactics && !info.node_tactics[i].empty()) tactics[i] = info.node_tactics[i];
    wn = std::max(wn, nodes[i].name.size());
    wo = std::max(wo, op_name(nodes[i]).size());
    wt = std::max(wt, tactics[i].size());
  }
  wn = std::min<size_t>(wn, 48);
  os << "nodes:      " << nodes.size() << " (tactic per node; '-': none, folded at the opt shapes"
     << (have_tactics ? "" : " or not recorded") << ")\n";
  os << "  " << std::left << std::setw(static_cast<int>(wn)) << "node" << "  " << std::setw(static_cast<int>(wo)) << "op"
     << "  " << std::setw(static_cast<int>(wt)) << "tactic" << "  " << std::setw(10) << "precision" << "  fused\n";
  j["nodes"] = json::array();
  j["fused_nodes"] = json::array();
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    const Attribute* f = n.attr("fused_ops");
    std::string fused;
    if (f)
      for (size_t k = 0; k < f->strings.size(); ++k) fused += (k ? " + " : "") + f->strings[k];
    os << "  " << std::setw(static_cast<int>(wn)) << n.name << "  " << std::setw(static_cast<int>(wo)) << op_name(n)
       << "  " << std::setw(static_cast<int>(wt)) << tactics[i] << "  " << std::setw(10)
       << precision_of(n) << "  " << (f ? "<- " + fused : std::string()) << "\n";
    json nj = {{"index", i}, {"name", n.name}, {"op", op_name(n)},
               {"tactic", have_tactics ? info.node_tactics[i] : std::string()},
               {"precision", precision_of(n)}};
    nj["fused_ops"] = f ? f->strings : std::vector<std::string>{};
    j["nodes"].push_back(nj);
    if (f) j["fused_nodes"].push_back({{"name", n.name}, {"op", op_name(n)}, {"fused_ops", f->strings}});
  }
  os << std::right;
  if (text) *text = os.str();
  if (js) *js = j.dump();
}

}  // namespace

Model load_model_or_engine(const std::string& path, bool* is_engine, std::string* engine_text, std::string* engine_json,
                           EngineInfo* info) {
  if (is_engine) *is_engine = false;
  if (!is_engine_file(path)) return load_onnx(path);
  LoadedEngine e = load_engine(path);
  if (is_engine) *is_engine = true;
  if (engine_text || engine_json) describe(e, engine_text, engine_json);
  if (info) *info = e.info;
  return std::move(e.model);
}

CpuEngine cpu_engine_from_file(Model optimized, EngineInfo info, int threads) {
  CpuEngine c;
  c.nodes_before = optimized.graph.nodes.size();
  c.runtime = std::make_shared<EngineRuntime>(std::move(optimized), std::move(info), threads);
  return c;
}

CpuEngine cpu_engine_from_onnx(Model model, const ShapeMap& shapes, int opt_level, int threads) {
  BuildConfig cfg;
  cfg.opt_level = opt_level;
  cfg.threads = threads;
  cfg.time_tactics = true;
  cfg.profiles.resize(1);
  for (const auto& [name, d] : shapes) cfg.profiles[0].inputs[name] = ProfileDims{d, d, d};
  BuildResult r = build_engine(std::move(model), cfg);
  CpuEngine c;
  c.nodes_before = r.nodes_before;
  c.pass_log = r.pass_log;
  c.pass_ms = r.pass_ms;
  c.tactic_ms = r.tactic_ms;
  c.runtime = std::make_shared<EngineRuntime>(std::move(r.model), std::move(r.info), threads);
  c.runtime->add_program(shapes, r.program);  // the program the build compiled is the one to run
  return c;
}

namespace {

// A GEMM's own step (its elementwise epilogue, e.g. an erf-GELU, runs as a step of the same op).
bool is_gemm_step(const gpu::GpuStepInfo& st) {
  return (st.op == "FusedMatMul" || st.op == "MatMul" || st.op == "Gemm") && st.kernel.rfind("elementwise", 0) != 0;
}

}  // namespace

std::string fp8_gemm_summary(const gpu::GpuProgram& program) {
  int gemms = 0, fp8 = 0;
  for (const auto& st : program.steps())
    if (is_gemm_step(st)) {
      ++gemms;
      fp8 += st.kernel.find("fp8") != std::string::npos;
    }
  return std::to_string(fp8) + " of " + std::to_string(gemms) + " GEMMs in FP8";
}

std::string int8_conv_summary(const gpu::GpuProgram& program) {
  int convs = 0, int8 = 0, gemms = 0, gemms8 = 0;
  for (const auto& st : program.steps()) {
    const bool i8 = st.kernel.find("int8") != std::string::npos;
    if (st.op == "FusedConv" || st.op == "Conv") ++convs, int8 += i8;
    if (is_gemm_step(st)) ++gemms, gemms8 += i8;
  }
  std::string s = std::to_string(int8) + " of " + std::to_string(convs) + " convolutions";
  if (gemms > 0) s += " and " + std::to_string(gemms8) + " of " + std::to_string(gemms) + " GEMMs";
  return s + " in INT8";
}

GpuRun gpu_program_for(Model model, const EngineInfo* engine, const ShapeMap& shapes, int gpu_index,
                       const std::string& precision, size_t workspace_limit, int opt_level,
                       const std::map<std::string, Tensor>* fp8_calib_inputs) {
  GpuRun r;
  r.nodes_before = r.nodes_after = model.graph.nodes.size();
  if (engine && gpu::is_gpu_engine(*engine)) {
    gpu::LoadedGpuEngine e = gpu::load_gpu_engine(model, *engine, gpu_index);
    if (!precision.empty() && gpu::parse_precision(precision) != e.precision)
      throw Error(ErrorCode::kInvalidArgument, std::string("this GPU engine was built for ") +
                                                   gpu::precision_name(e.precision) + "; --precision " + precision +
                                                   " needs another engine (kiln build --device cuda --precision " +
                                                   precision + ")");
    if (shapes != e.shapes) {
      std::string want, got;
      for (const auto& [n, d] : e.shapes) want += " " + n + ":" + shape_to_string(d);
      for (const auto& [n, d] : shapes) got += " " + n + ":" + shape_to_string(d);
      throw Error(ErrorCode::kInvalidArgument,
                  "this GPU engine has static shapes" + want + "; the inputs are" + got + " (rebuild it with --shapes)");
    }
    r.program = e.program;
    r.compile_ms = e.compile_ms;
    r.gpu_engine = true;
    r.tactics_used = e.tactics_used;
    return r;
  }
  gpu::CompileOptions opt;
  opt.precision = gpu::parse_precision(precision.empty() ? "fp16" : precision);
  opt.workspace_limit = workspace_limit;
  std::unique_ptr<quant::MemoryCalibrator> calibrator;
  gpu::Fp8Calibration fp8;
  if ((opt.precision == gpu::Precision::kFP8 || opt.precision == gpu::Precision::kINT8) && fp8_calib_inputs) {
    calibrator = std::make_unique<quant::MemoryCalibrator>(std::vector<quant::TensorMap>{*fp8_calib_inputs});
    fp8.data = calibrator.get();
    fp8.source = "the inputs it runs";
  }
  gpu::GpuBuild b = gpu::build_gpu_program(std::move(model), shapes, gpu_index, opt, engine ? 0 : opt_level, &fp8);
  r.program = b.program;
  r.nodes_before = b.nodes_before;
  r.nodes_after = b.nodes_after;
  r.pass_ms = b.pass_ms;
  r.compile_ms = b.compile_ms;
  return r;
}

// Registers `kiln build` on `app`; *run is set to the function that runs it once parsed.
CLI::App* add_build_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<BuildArgs>();
  auto* sub = app.add_subcommand("build", "Optimize a model, select CPU or GPU tactics and write an engine file");
  sub->add_option("model", args->model, "ONNX model")->required();
  sub->add_option("--output,-o", args->output, "Engine file to write")->required();
  sub->add_option("--shapes", args->shapes,
                  "Static shapes (min = opt = max) of inputs, in every profile: NAME:1x3x224x224,...");
  // One value per occurrence (never the positional model after it); the k-th of each is profile k.
  sub->add_option("--min-shapes", args->min_shapes, "Smallest shapes of dynamic inputs of one profile: NAME:1x3x224x224,...")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--opt-shapes", args->opt_shapes, "Shapes the tactics are timed at (profile 0's), same names as --min-shapes")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--max-shapes", args->max_shapes, "Largest shapes, same names as --min-shapes")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  sub->add_option("--timing-cache", args->timing_cache,
                  "Read tactic timings from this file (when it exists and is from this CPU) and write them back");
  sub->add_option("--workspace", args->workspace_mib, "Scratch memory one kernel may use, MiB (default 0: no limit)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--threads", args->threads, "Threads the tactics are timed with and the engine runs with (default: cores)")
      ->check(CLI::Range(1, 4096));
  sub->add_option("--opt-level", args->opt_level, "Graph optimization level 0-5 (default 3; 4 and 5 behave as 3 for now)")
      ->check(CLI::Range(0, 5));
  sub->add_option("--disable-pass", args->disabled, "Comma-separated pass names to skip");
  sub->add_flag("--no-timing", args->no_timing, "Do not time tactics: take the first supporting one per node");
  sub->add_flag("--verbose,-v", args->verbose, "Also print the tactic timing log and the chosen kernel of every step");
  sub->add_flag("--bf16", args->bf16, "Run convolutions and matmuls in BF16 (AVX512_BF16/AMX; fp32 on CPUs without)");
  sub->add_flag("--fp16", args->fp16, "Allow FP16 (no CPU kernels: those layers stay fp32; combines with --bf16/--int8)");
  sub->add_flag("--int8", args->int8,
                "Run convolutions and matmuls in INT8 (needs --calib or --calib-cache; explicit Q/DQ models need neither)");
  sub->add_option("--calib", args->calib,
                  "Calibration data: a folder of .npy/.npz files or one .npz of stacked samples (docs/calibration.md)");
  sub->add_option("--calib-method", args->calib_method, "entropy (INT8 default), minmax (FP8 default) or percentile[=99.99]");
  sub->add_option("--calib-cache", args->calib_cache,
                  "Calibration cache: read when it exists (no data needed), else written after calibrating");
  sub->add_option("--calib-samples", args->calib_samples, "Use at most this many calibration samples (default: all)");
  sub->add_option("--calib-batch", args->calib_batch, "Samples per calibration batch (default 8, or the static batch)");
  sub->add_option("--precision-constraints", args->precision_constraints,
                  "prefer (default): layers that cannot take the asked precision fall back; obey: that is an error");
  sub->add_option("--accuracy-budget", args->accuracy_budget,
                  "INT8 accuracy guard: keep the most sensitive layers in fp32 (GPU: fp16) until the metric loss is within this (1%)");
  sub->add_option("--accuracy-metric", args->accuracy_metric,
                  "auto (default: top-1 agreement for classifiers, else cosine), top1 or cosine");
  sub->add_option("--validation", args->validation, "Validation data for the accuracy guard (default: --calib)");
  sub->add_option("--validation-samples", args->validation_samples, "Validation samples the guard uses (default 64)");
  sub->add_option("--layer-precision", args->layer_precision,
                  "Per-layer precision by node name: NAME:fp32,NAME:bf16,NAME:int8,... (GPU int8 engines: NAME:fp16)");
  sub->add_option("--device", args->device,
                  "cpu (default): a CPU engine; cuda or cuda:N: a GPU engine for that GPU (static --shapes)");
  sub->add_option("--precision", args->precision, "GPU engines: fp16 (default), bf16, fp32 (TF32), fp8 (FP8 E4M3 GEMMs, FP16 elsewhere; needs --calib) or int8 (INT8 convolutions and GEMMs, FP16 elsewhere; needs --calib)");
  sub->add_flag("--hardware-compatible", args->hardware_compatible,
                "GPU engines: runnable on any GPU of SM 8.0 or newer (elsewhere than the build GPU, tuned kernels are "
                "timed again at load)");
  sub->footer(
      "Profiles: --shapes fixes inputs to one shape. For a dynamic input give --min-shapes, --opt-shapes and\n"
      "--max-shapes (all three, same names); repeat the three flags to define several profiles: the k-th\n"
      "occurrence of each forms profile k, e.g.\n"
      "  --min-shapes x:1x3 --opt-shapes x:4x3 --max-shapes x:8x3 --min-shapes x:9x3 --opt-shapes x:16x3 --max-shapes x:32x3\n"
      "Dynamic inputs given no shapes are built for their static dims with the dynamic ones set to 1.\n"
      "Errors exit 1; bad flags exit 2.");
  *run = [args] { return cmd_build(*args); };
  return sub;
}

}  // namespace kiln::cli
