// `kiln optimize`: runs the graph passes on a model, prints what was fused into what, and writes
// the optimized graph as ONNX (fused ops in the "kiln" domain) for inspection or `kiln run`.
#include <CLI/CLI.hpp>

#include <iostream>
#include <sstream>

#include "backends/reference/executor.h"
#include "cli_common.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"

namespace kiln::cli {
namespace {

struct OptimizeArgs {
  std::string model;
  std::string output;
  int opt_level = 3;
  std::string disabled;  // comma-separated pass names
  std::string shapes;
};

int cmd_optimize(const OptimizeArgs& args) {
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
  std::stringstream ss(args.disabled);
  std::string name;
  while (std::getline(ss, name, ','))
    if (!name.empty()) ctx.disabled.insert(name);
  PassManager::standard().run(model, ctx);
  infer_types(model, infer);

  std::cout << "model: " << args.model << "\n";
  std::cout << "nodes: " << before << " -> " << model.graph.nodes.size() << " (opt level " << args.opt_level << ")\n";
  for (const auto& line : ctx.log) std::cout << "  " << line << "\n";
  std::cout << "fused nodes:\n";
  for (const Node& n : model.graph.nodes) {
    const Attribute* f = n.attr("fused_ops");
    if (!f) continue;
    std::cout << "  " << n.domain << "::" << n.op_type << " '" << n.name << "' <- ";
    for (size_t i = 0; i < f->strings.size(); ++i) std::cout << (i ? " + " : "") << f->strings[i];
    if (const Attribute* act = n.attr("activation"); act && !act->s.empty()) std::cout << "  [activation " << act->s << "]";
    std::cout << "\n";
  }
  if (!args.output.empty()) {
    save_onnx(model, args.output);
    std::cout << "wrote " << args.output << "\n";
  }
  return 0;
}

}  // namespace

// Registers `kiln optimize` on `app`; *run is set to the function that runs it once parsed.
CLI::App* add_optimize_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<OptimizeArgs>();
  auto* sub = app.add_subcommand("optimize", "Run the graph passes, show what was fused, write the optimized graph");
  sub->add_option("model", args->model, "ONNX model")->required();
  sub->add_option("--output,-o", args->output, "Write the optimized graph here (ONNX with kiln-domain ops)");
  sub->add_option("--opt-level", args->opt_level, "Graph optimization level 0-3 (default 3)")->check(CLI::Range(0, 3));
  sub->add_option("--disable-pass", args->disabled, "Comma-separated pass names to skip");
  sub->add_option("--shapes", args->shapes, "Concrete shapes of dynamic inputs (specializes the graph): NAME:1x3x224x224,...");
  *run = [args] { return cmd_optimize(*args); };
  return sub;
}

}  // namespace kiln::cli
