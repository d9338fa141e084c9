// The kiln command line: `kiln inspect`, `kiln run` (cpu backend by default, or the reference
// executor), `kiln bench` (tools/cmd_bench.cpp), `kiln optimize` and `kiln build`
// (tools/cmd_build.cpp); check and compare join under the same conventions.
#include <CLI/CLI.hpp>

#include "kiln/plugin.h"

#include <chrono>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>

#include "backends/reference/executor.h"
#include "backends/gpu/gpu_build.h"
#include "backends/gpu/loader.h"
#include "cli_common.h"
#include "onnx/onnx_import.h"
#include "util/npy.h"

namespace fs = std::filesystem;
using namespace kiln;
using json = nlohmann::json;

namespace kiln::cli {
// tools/cmd_bench.cpp: registers `kiln bench`; *run runs it once the command line is parsed.
CLI::App* add_bench_command(CLI::App& app, std::function<int()>* run);
// tools/cmd_optimize.cpp: registers `kiln optimize`.
CLI::App* add_optimize_command(CLI::App& app, std::function<int()>* run);
// tools/cmd_build.cpp: registers `kiln build` (engine files).
CLI::App* add_build_command(CLI::App& app, std::function<int()>* run);
// tools/cmd_quantize.cpp: registers `kiln quantize` (calibrated model -> standard QDQ ONNX).
CLI::App* add_quantize_command(CLI::App& app, std::function<int()>* run);
// tools/cmd_compare.cpp: registers `kiln compare` (accuracy against the fp32 reference).
CLI::App* add_compare_command(CLI::App& app, std::function<int()>* run);
// tools/cmd_check.cpp: registers `kiln check` (lint, capability, supported subgraphs).
CLI::App* add_check_command(CLI::App& app, std::function<int()>* run);
// tools/cmd_debug.cpp: registers `kiln debug reduce` (smallest failing subgraph).
CLI::App* add_debug_command(CLI::App& app, std::function<int()>* run);
// tools/cmd_serve.cpp: registers `kiln serve` (KServe v2 server over a model repository).
CLI::App* add_serve_command(CLI::App& app, std::function<int()>* run);
// tools/cmd_perf.cpp: registers `kiln perf` (a KServe v2 load generator like perf_analyzer).
CLI::App* add_perf_command(CLI::App& app, std::function<int()>* run);
}  // namespace kiln::cli

namespace {

int cmd_inspect(const std::string& path, bool as_json, bool dump) {
  bool is_engine = false;
  std::string engine_text, engine_json;
  Model model = cli::load_model_or_engine(path, &is_engine, &engine_text, &engine_json);
  auto issues = check_model(model);
  // Kernels missing from the reference backend count as unsupported too.
  if (issues.empty()) {
    for (const Node& n : model.graph.nodes)
      if (!reference::KernelRegistry::global().find(n.domain, n.op_type))
        issues.push_back({n.name, n.op_type, model.opsets[n.domain], "no reference kernel", ErrorCode::kUnsupported});
  }
  std::string inference_error;
  if (issues.empty()) {
    try {
      InferOptions options;
      options.evaluator = reference::constant_evaluator();
      infer_types(model, options);
    } catch (const Error& e) {
      inference_error = e.what();
    }
  }
  std::map<std::string, int> histogram;
  for (const Node& n : model.graph.nodes) ++histogram[n.domain.empty() ? n.op_type : n.domain + "::" + n.op_type];
  int64_t params = 0, param_bytes = 0;
  for (const auto& [name, t] : model.graph.initializers) {
    params += t.numel();
    param_bytes += static_cast<int64_t>(t.nbytes());
  }

  if (as_json) {
    json j;
    j["path"] = path;
    if (is_engine) j["engine"] = json::parse(engine_json);
    j["producer"] = model.producer;
    j["ir_version"] = model.ir_version;
    json opsets = json::object();
    for (const auto& [d, v] : model.opsets) opsets[d.empty() ? "ai.onnx" : d] = v;
    j["opsets"] = opsets;
    j["inputs"] = json::array();
    for (const auto& in : model.graph.inputs) {
      json e = cli::type_json(model.graph.type_of(in));
      e["name"] = in;
      j["inputs"].push_back(e);
    }
    j["outputs"] = json::array();
    for (const auto& out : model.graph.outputs) {
      json e = cli::type_json(model.graph.type_of(out));
      e["name"] = out;
      j["outputs"].push_back(e);
    }
    j["nodes"] = model.graph.nodes.size();
    j["parameters"] = params;
    j["parameter_bytes"] = param_bytes;
    j["op_histogram"] = histogram;
    j["unsupported"] = json::array();
    for (const auto& i : issues)
      j["unsupported"].push_back({{"node", i.node}, {"op", i.op}, {"opset", i.opset}, {"reason", i.reason}});
    if (!inference_error.empty()) j["inference_error"] = inference_error;
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << "model:      " << path << "\n";
    std::cout << engine_text;
    std::cout << "producer:   " << (model.producer.empty() ? "-" : model.producer) << ", IR version " << model.ir_version
              << "\n";
    std::cout << "opsets:    ";
    for (const auto& [d, v] : model.opsets) std::cout << ' ' << (d.empty() ? "ai.onnx" : d) << '=' << v;
    std::cout << "\n";
    std::cout << "parameters: " << params << " (" << param_bytes / (1024.0 * 1024.0) << " MiB)\n";
    std::cout << "inputs:\n";
    for (const auto& in : model.graph.inputs) {
      const TensorType* t = model.graph.type_of(in);
      std::cout << "  " << in << ": " << (t ? t->to_string() : "?") << "\n";
    }
    std::cout << "outputs:\n";
    for (const auto& out : model.graph.outputs) {
      const TensorType* t = model.graph.type_of(out);
      std::cout << "  " << out << ": " << (t ? t->to_string() : "?") << "\n";
    }
    std::cout << "nodes: " << model.graph.nodes.size() << "\n";
    for (const auto& [op, count] : histogram) std::cout << "  " << op << ": " << count << "\n";
    if (issues.empty()) {
      std::cout << "unsupported: none\n";
    } else {
      std::cout << "unsupported: " << issues.size() << "\n";
      for (const auto& i : issues) std::cout << "  " << i.to_string() << "\n";
    }
    if (!inference_error.empty()) std::cout << "type inference failed: " << inference_error << "\n";
    if (dump) std::cout << "\n" << dump_model(model);
  }
  return issues.empty() && inference_error.empty() ? 0 : 1;
}

struct RunArgs {
  std::string model;
  std::vector<std::string> inputs;  // NAME=FILE.npy or FILE.npz
  std::string output_dir;
  std::string shapes;
  uint64_t seed = 0;
  std::vector<int64_t> int_range = {0, 10};
  bool save_inputs = false;
  std::string backend = "cpu";
  int threads = 0;  // 0: the engine's, else the core count
  int opt_level = 3;
  std::string device = "cpu";
  std::string precision;  // "": a GPU engine's, else fp16
};

double ms_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

int cmd_run(const RunArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  bool is_engine = false;
  EngineInfo info;
  Model model = cli::load_model_or_engine(args.model, &is_engine, nullptr, nullptr, &info);
  auto shapes = cli::parse_shapes(args.shapes);
  cli::check_shape_names(model.graph, shapes, "--shapes", args.model);
  std::string notes;
  // An engine's dynamic inputs default to the shapes its tactics were timed at.
  if (is_engine)
    for (const auto& [name, dims] : info.profile_shapes)
      if (!shapes.count(name)) shapes[name] = dims;

  const Graph& g0 = model.graph;
  reference::TensorMap inputs;
  for (const auto& spec : args.inputs) {
    auto eq = spec.find('=');
    if (eq == std::string::npos) {  // a whole .npz of named inputs
      for (auto& [name, t] : read_tensor_file(spec)) {
        if (std::find(g0.inputs.begin(), g0.inputs.end(), name) == g0.inputs.end()) continue;  // e.g. expected outputs
        inputs[name] = std::move(t);
      }
      continue;
    }
    std::string name = spec.substr(0, eq);
    auto tensors = read_tensor_file(spec.substr(eq + 1));
    if (tensors.size() != 1)
      throw Error(ErrorCode::kInvalidArgument, "--input " + spec + ": expected a file holding one tensor, found " +
                                                   std::to_string(tensors.size()));
    inputs[name] = std::move(tensors.front().second);
  }
  for (size_t i = 0; i < g0.inputs.size(); ++i) {
    const std::string& name = g0.inputs[i];
    if (inputs.count(name)) continue;
    const TensorType* type = g0.type_of(name);
    if (!type || type->dtype == DType::kUndefined)
      throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has no tensor type; give it with --input");
    auto dims = cli::resolve_input_shape(name, *type, shapes, &notes);
    inputs[name] = cli::random_tensor(type->dtype, dims, args.seed + i, args.int_range[0], args.int_range[1]);
    notes += "input '" + name + "': random " + std::string(dtype_name(type->dtype)) + "[" + shape_to_string(dims) +
             "] (seed " + std::to_string(args.seed + i) + ")\n";
  }
  std::cerr << notes;
  cli::check_inputs(g0, inputs);
  const std::vector<std::string> output_names = g0.outputs;
  const size_t nodes_in_file = g0.nodes.size();

  const auto t1 = std::chrono::steady_clock::now();
  reference::TensorMap outputs;
  std::string backend_line;
  double prepare_ms = 0, run_ms = 0;
  const int gpu_index = gpu::parse_device(args.device);
  if (gpu_index >= 0 && args.backend != "cpu")
    throw Error(ErrorCode::kInvalidArgument, "--backend " + args.backend + " runs on the CPU; drop it with --device " + args.device);
  if (gpu_index >= 0) {
    std::map<std::string, std::vector<int64_t>> actual;
    for (const auto& [name, t] : inputs) actual[name] = t.shape();
    cli::GpuRun built = cli::gpu_program_for(std::move(model), is_engine ? &info : nullptr, actual, gpu_index,
                                             args.precision, size_t{1} << 30, args.opt_level, &inputs);
    gpu::GpuContext ctx(built.program);
    const auto t2 = std::chrono::steady_clock::now();
    outputs = ctx.run(inputs);
    prepare_ms = ms_between(t1, t2);
    run_ms = ms_between(t2, std::chrono::steady_clock::now());
    const auto& dp = built.program->device().props();
    std::ostringstream os;
    os << "cuda:" << dp.id << " " << dp.name << " (" << dp.sm() << "), " << gpu::precision_name(built.program->precision())
       << ", " << built.program->steps().size() << " kernels"
       << (built.gpu_engine ? built.tactics_used ? ", GPU engine (recorded tactics)" : ", GPU engine (tactics timed here)" : "")
       << ", GPU compute " << cli::fixed(ctx.last_timing().compute_ms, 3) << " ms (first run captures the CUDA graph)";
    backend_line = os.str();
  } else if (args.backend == "reference") {
    reference::Executor exec(std::move(model));
    const auto t2 = std::chrono::steady_clock::now();
    outputs = exec.run(inputs);
    prepare_ms = ms_between(t1, t2);
    run_ms = ms_between(t2, std::chrono::steady_clock::now());
    backend_line = "reference executor, 1 thread";
  } else {
    std::map<std::string, std::vector<int64_t>> actual;
    for (const auto& [name, t] : inputs) actual[name] = t.shape();
    cli::CpuEngine engine = is_engine ? cli::cpu_engine_from_file(std::move(model), info, args.threads)
                                      : cli::cpu_engine_from_onnx(std::move(model), actual, args.opt_level, args.threads);
    // Compiled (or checked against the profiles) before the clock starts: the run is timed alone.
    auto program = engine.runtime->program_for(actual);
    Context ctx(engine.runtime);
    const auto t2 = std::chrono::steady_clock::now();
    outputs = ctx.run(inputs);
    prepare_ms = ms_between(t1, t2);
    run_ms = ms_between(t2, std::chrono::steady_clock::now());
    std::ostringstream os;
    os << "cpu, " << program->threads() << " threads, " << program->kernel_count() << " kernels, peak activations "
       << cli::mib(program->arena_bytes());
    if (!is_engine)
      os << "; built in memory: " << engine.nodes_before << " -> " << engine.runtime->model().graph.nodes.size()
         << " nodes (opt level " << args.opt_level << "), passes " << cli::fixed(engine.pass_ms, 1)
         << " ms, tactic selection " << cli::fixed(engine.tactic_ms, 1) << " ms";
    backend_line = os.str();
  }

  // Tensor names become file names: PyTorch's ("/layer1/Relu_output_0") hold '/', so every
  // character outside [A-Za-z0-9._-] becomes '_', and a name that then collides gets a suffix.
  std::map<std::string, fs::path> files;
  if (!args.output_dir.empty()) {
    fs::create_directories(args.output_dir);
    std::set<std::string> taken;
    auto file_for = [&](const std::string& stem) {
      std::string base = cli::safe_file_stem(stem), candidate = base;
      for (int k = 2; !taken.insert(candidate).second; ++k) candidate = base + "~" + std::to_string(k);
      return fs::path(args.output_dir) / (candidate + ".npy");
    };
    for (const auto& name : output_names) files[name] = file_for(name);
    for (const auto& [name, t] : outputs) {
      if (!files.count(name)) files[name] = file_for(name);
      write_npy(files[name], t);
    }
    if (args.save_inputs)
      for (const auto& [name, t] : inputs) write_npy(file_for("input." + name), t);
  }
  std::cout << "model: " << args.model << " (" << (is_engine ? "engine, " : "") << nodes_in_file << " nodes)\n";
  std::cout << "backend: " << backend_line << "\n";
  for (const auto& name : output_names) {
    auto it = outputs.find(name);
    if (it == outputs.end()) throw Error(ErrorCode::kInternal, "output '" + name + "' was not produced");
    std::cout << "output " << name << ": " << cli::summarize(it->second);
    if (!args.output_dir.empty()) std::cout << " -> " << files.at(name).string();
    std::cout << "\n";
  }
  std::cout << "load " << cli::fixed(ms_between(t0, t1), 3) << " ms, " << (args.backend == "reference" ? "prepare " : "build/compile ")
            << cli::fixed(prepare_ms, 3) << " ms, run " << cli::fixed(run_ms, 3) << " ms (" << args.backend << ")\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kiln: compiles ONNX models into optimized inference engines"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("kiln ") + KILN_VERSION);
  // Custom-op libraries (include/kiln/plugin.h), loaded before any model or engine; accepted
  // after every subcommand (kiln build m.onnx --plugin lib.so), repeatable.
  std::vector<std::string> plugins;
  app.add_option("--plugin", plugins, "Load a plugin library (custom ops; repeatable)")->check(CLI::ExistingFile);
  app.fallthrough();

  std::string inspect_path;
  bool inspect_json = false, inspect_dump = false;
  auto* inspect = app.add_subcommand("inspect", "Show a model's inputs, outputs, opsets, ops and unsupported nodes; "
                                                   "for an engine also its profiles, memory and per-node tactics");
  inspect->add_option("model", inspect_path, "ONNX model or Kiln engine")->required();
  inspect->add_flag("--json", inspect_json, "Print JSON");
  inspect->add_flag("--dump", inspect_dump, "Also print the whole graph as text");

  RunArgs run_args;
  auto* run = app.add_subcommand("run", "Run a model or engine (cpu backend) and write its outputs as .npy");
  run->add_option("model", run_args.model, "ONNX model or Kiln engine")->required();
  run->add_option("--input,-i", run_args.inputs, "NAME=FILE.npy, or FILE.npz holding named inputs (repeatable)");
  run->add_option("--output-dir,-o", run_args.output_dir, "Write one NAME.npy per output here");
  run->add_option("--shapes", run_args.shapes, "Shapes of generated inputs: NAME:1x3x224x224,...");
  run->add_option("--seed", run_args.seed, "Seed of generated inputs");
  run->add_option("--int-range", run_args.int_range, "Range [LO,HI) of generated integer inputs")->expected(2)->delimiter(',');
  run->add_flag("--save-inputs", run_args.save_inputs, "Also write the inputs used to --output-dir");
  run->add_option("--backend", run_args.backend, "cpu (default: the engine, or the model built in memory) or reference")
      ->check(CLI::IsMember({"cpu", "reference"}));
  run->add_option("--device", run_args.device, "cpu (default), cuda or cuda:N (the GPU backend module)");
  run->add_option("--precision", run_args.precision,
                  "GPU precision of float layers: fp16 (default; a GPU engine's own), bf16, fp32 (TF32), fp8 "
                  "(FP8 GEMMs calibrated on the inputs run, FP16 elsewhere) or int8 (INT8 convolutions and GEMMs, likewise)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16", "fp8", "int8"}));
  run->add_option("--threads", run_args.threads, "Threads of the cpu backend (default: the engine's, else the cores)")
      ->check(CLI::Range(1, 4096));
  run->add_option("--opt-level", run_args.opt_level, "Graph optimization level 0-5 of an ONNX model built for cpu (default 3)")
      ->check(CLI::Range(0, 5));
  run->footer("An ONNX model runs on the cpu backend after an in-memory build at the input shapes (tactics timed);\n"
              "an engine runs with its tactics, at any shapes inside its profiles (default: profile 0's opt shapes).\n"
              "Errors exit 1; bad flags exit 2.");

  std::function<int()> run_bench;
  auto* bench = cli::add_bench_command(app, &run_bench);
  std::function<int()> run_optimize;
  auto* optimize = cli::add_optimize_command(app, &run_optimize);
  std::function<int()> run_build;
  auto* build = cli::add_build_command(app, &run_build);
  std::function<int()> run_quantize;
  auto* quantize = cli::add_quantize_command(app, &run_quantize);
  std::function<int()> run_compare;
  auto* compare = cli::add_compare_command(app, &run_compare);
  std::function<int()> run_check;
  auto* check = cli::add_check_command(app, &run_check);
  std::function<int()> run_debug;
  auto* debug = cli::add_debug_command(app, &run_debug);
  std::function<int()> run_serve;
  auto* serve = cli::add_serve_command(app, &run_serve);
  std::function<int()> run_perf;
  auto* perf = cli::add_perf_command(app, &run_perf);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    // Bad flags exit 2 (help and --version exit 0), for every subcommand.
    return code != 0 ? 2 : 0;
  }
  try {
    for (const auto& lib : plugins) kiln::loadPluginLibrary(lib);
    if (*inspect) return cmd_inspect(inspect_path, inspect_json, inspect_dump);
    if (*run) return cmd_run(run_args);
    if (*bench) return run_bench();
    if (*optimize) return run_optimize();
    if (*build) return run_build();
    if (*quantize) return run_quantize();
    if (*compare) return run_compare();
    if (*check) return run_check();
    if (*debug) return run_debug();
    if (*serve) return run_serve();
    if (*perf) return run_perf();
  } catch (const Error& e) {
    std::cerr << "kiln: error (" << error_code_name(e.code()) << "): " << error_message_with_help(e) << "\n";
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    std::cerr << "kiln: error (" << error_code_name(ErrorCode::kIo) << "): "
              << error_message_with_help(Error(ErrorCode::kIo, e.what())) << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "kiln: error: " << e.what() << " (see docs/troubleshooting.md#internal-error)\n";
    return 1;
  }
  return 0;
}
