// `kiln build`: optimizes an ONNX model and writes an engine file (src/engine); and the glue that
// lets `run`, `inspect` and `bench` take an engine wherever they take a model.
#include <CLI/CLI.hpp>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backends/reference/executor.h"
#include "cli_common.h"
#include "engine/engine_file.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"

namespace kiln::cli {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

struct BuildArgs {
  std::string model;
  std::string output;
  std::string shapes;
  int opt_level = 3;
};

int cmd_build(const BuildArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  Model model = load_onnx(args.model);
  require_supported(model);
  auto shapes = parse_shapes(args.shapes);
  for (const auto& [name, dims] : shapes)
    if (std::find(model.graph.inputs.begin(), model.graph.inputs.end(), name) == model.graph.inputs.end())
      throw Error(ErrorCode::kInvalidArgument, "--shapes: '" + name + "' is not an input of " + args.model);
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(model, infer);
  const size_t before = model.graph.nodes.size();

  PassContext ctx;
  ctx.opt_level = args.opt_level;
  ctx.evaluator = reference::constant_evaluator();
  ctx.input_shapes = shapes;
  PassManager::standard().run(model, ctx);
  infer_types(model, infer);

  EngineInfo info;
  info.opt_level = args.opt_level;
  info.profile_shapes = shapes;
  save_engine(model, info, args.output);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::error_code ec;
  const auto size = fs::file_size(args.output, ec);

  std::cout << "model:  " << args.model << "\n";
  std::cout << "nodes:  " << before << " -> " << model.graph.nodes.size() << " (opt level " << args.opt_level << ")\n";
  for (const auto& line : ctx.log) std::cout << "  " << line << "\n";
  std::cout << "target: " << info.target.cpu_model << ", backend " << info.target.backend << "\n";
  std::cout << "engine: " << args.output << " (" << size << " bytes, " << size / (1024.0 * 1024.0) << " MiB)\n";
  std::cout << "build time: " << ms << " ms\n";
  return 0;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

void describe(const LoadedEngine& e, std::string* text, std::string* js) {
  const EngineHeader& h = e.header;
  const TargetFingerprint& t = e.info.target;
  json j;
  j["format_version"] = h.format_version;
  j["header_size"] = h.header_size;
  j["flatbuffer"] = {{"offset", h.flatbuffer_offset}, {"size", h.flatbuffer_size}};
  j["weights"] = {{"offset", h.weights_offset}, {"size", h.weights_size}};
  j["crc32"] = hex32(h.crc32);
  j["file_size"] = h.file_size;
  j["kiln_version"] = e.info.kiln_version;
  j["target"] = {{"cpu_vendor", t.cpu_vendor}, {"cpu_model", t.cpu_model}, {"isa_features", t.isa_features},
                 {"required_isa", t.required_isa}, {"backend", t.backend}};
  json shapes = json::object();
  for (const auto& [n, d] : e.info.profile_shapes) shapes[n] = d;
  j["build"] = {{"opt_level", e.info.opt_level}, {"profile_shapes", shapes}};
  j["fused_nodes"] = json::array();
  std::ostringstream os;
  os << "engine:     format version " << h.format_version << ", header " << h.header_size << " bytes, flatbuffer ["
     << h.flatbuffer_offset << ", +" << h.flatbuffer_size << "), weights [" << h.weights_offset << ", +" << h.weights_size
     << "), CRC-32 " << hex32(h.crc32) << ", " << h.file_size << " bytes\n";
  os << "built by:   kiln " << e.info.kiln_version << ", opt level " << e.info.opt_level;
  for (const auto& [n, d] : e.info.profile_shapes) os << ", " << n << ":" << shape_to_string(d);
  os << "\n";
  os << "target:     " << t.cpu_vendor << " / " << t.cpu_model << "; backend " << t.backend << "; ISA";
  for (const auto& f : t.isa_features) os << " " << f;
  if (t.isa_features.empty()) os << " (none)";
  os << "; requires";
  for (const auto& f : t.required_isa) os << " " << f;
  if (t.required_isa.empty()) os << " nothing";
  os << "\n";
  os << "fused nodes:\n";
  for (const Node& n : e.model.graph.nodes) {
    const Attribute* f = n.attr("fused_ops");
    if (!f) continue;
    os << "  " << n.domain << "::" << n.op_type << " '" << n.name << "' <- ";
    for (size_t i = 0; i < f->strings.size(); ++i) os << (i ? " + " : "") << f->strings[i];
    os << "\n";
    j["fused_nodes"].push_back({{"name", n.name}, {"op", n.domain + "::" + n.op_type}, {"fused_ops", f->strings}});
  }
  if (text) *text = os.str();
  if (js) *js = j.dump();
}

}  // namespace

Model load_model_or_engine(const std::string& path, bool* is_engine, std::string* engine_text, std::string* engine_json) {
  if (is_engine) *is_engine = false;
  if (!is_engine_file(path)) return load_onnx(path);
  LoadedEngine e = load_engine(path);
  if (is_engine) *is_engine = true;
  if (engine_text || engine_json) describe(e, engine_text, engine_json);
  return std::move(e.model);
}

// Registers `kiln build` on `app`; *run is set to the function that runs it once parsed.
CLI::App* add_build_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<BuildArgs>();
  auto* sub = app.add_subcommand("build", "Optimize a model and write an engine file");
  sub->add_option("model", args->model, "ONNX model")->required();
  sub->add_option("--output,-o", args->output, "Engine file to write")->required();
  sub->add_option("--shapes", args->shapes, "Profile shapes of dynamic inputs: NAME:1x3x224x224,...");
  sub->add_option("--opt-level", args->opt_level, "Graph optimization level 0-3 (default 3)")->check(CLI::Range(0, 3));
  *run = [args] { return cmd_build(*args); };
  return sub;
}

}  // namespace kiln::cli
