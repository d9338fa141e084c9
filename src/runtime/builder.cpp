// build_engine(): passes, then tactic selection at the opt shapes (see builder.h).
#include "runtime/builder.h"

#include <chrono>

#include "backends/reference/executor.h"
#include "ops/model_check.h"
#include "passes/pass.h"
#include "plugins/plugins.h"

namespace kiln {

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

void validate_profiles(const Model& model, const std::vector<OptimizationProfile>& profiles) {
  const Graph& g = model.graph;
  for (size_t p = 0; p < profiles.size(); ++p) {
    const std::string where = "optimization profile " + std::to_string(p);
    for (const auto& [name, d] : profiles[p].inputs) {
      if (std::find(g.inputs.begin(), g.inputs.end(), name) == g.inputs.end())
        throw Error(ErrorCode::kInvalidArgument, where + ": '" + name + "' is not an input of the model");
      const TensorType* t = g.type_of(name);
      if (d.min.size() != d.opt.size() || d.opt.size() != d.max.size())
        throw Error(ErrorCode::kInvalidArgument, where + ": '" + name + "' has min/opt/max of different ranks");
      if (t && t->shape && t->shape->size() != d.opt.size())
        throw Error(ErrorCode::kInvalidArgument, where + ": '" + name + "' has rank " +
                                                     std::to_string(t->shape->size()) + ", the profile gives " +
                                                     shape_to_string(d.opt));
      for (size_t k = 0; k < d.opt.size(); ++k) {
        if (d.min[k] < 0 || d.min[k] > d.opt[k] || d.opt[k] > d.max[k])
          throw Error(ErrorCode::kInvalidArgument, where + ": '" + name + "' needs 0 <= min <= opt <= max in every " +
                                                       "dimension, got min " + shape_to_string(d.min) + ", opt " +
                                                       shape_to_string(d.opt) + ", max " + shape_to_string(d.max));
        if (t && t->shape && (*t->shape)[k].known() &&
            ((*t->shape)[k].value != d.min[k] || (*t->shape)[k].value != d.max[k]))
          throw Error(ErrorCode::kInvalidArgument, where + ": '" + name + "' dimension " + std::to_string(k) +
                                                       " is static (" + std::to_string((*t->shape)[k].value) +
                                                       ") but the profile gives " + std::to_string(d.min[k]) + ".." +
                                                       std::to_string(d.max[k]));
      }
    }
  }
}

cpu::ShapeMap opt_shapes(const Model& model, const OptimizationProfile* profile) {
  cpu::ShapeMap shapes;
  for (const auto& in : model.graph.inputs) {
    if (profile) {
      auto it = profile->inputs.find(in);
      if (it != profile->inputs.end()) {
        shapes[in] = it->second.opt;
        continue;
      }
    }
    const TensorType* t = model.graph.type_of(in);
    if (!t || !t->shape) throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' has an unknown rank; give a profile");
    std::vector<int64_t> dims;
    for (const Dim& d : *t->shape) {
      if (!d.known())
        throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' is " + t->to_string() +
                                                     ": give its shapes (--shapes, or --min/opt/max-shapes)");
      dims.push_back(d.value);
    }
    shapes[in] = dims;
  }
  return shapes;
}

BuildResult build_engine(Model model, const BuildConfig& user_config) {
  BuildResult r;
  // A plugin that replaces a built-in op turns off the passes that could fuse that op away.
  BuildConfig config = user_config;
  std::vector<std::string> plugin_notes = plugins::adapt_build_config(model, config);
  require_supported(model);
  validate_profiles(model, config.profiles);
  const OptimizationProfile* p0 = config.profiles.empty() ? nullptr : &config.profiles.front();
  const cpu::ShapeMap opt = opt_shapes(model, p0);

  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(model, infer);
  r.nodes_before = model.graph.nodes.size();

  auto t0 = std::chrono::steady_clock::now();
  PassContext ctx;
  ctx.opt_level = config.opt_level;
  ctx.disabled = config.disabled_passes;
  ctx.evaluator = reference::constant_evaluator();
  // Passes may specialize shape chains only for inputs whose every profile pins one shape.
  for (const auto& in : model.graph.inputs) {
    bool fixed = !config.profiles.empty();
    for (const auto& p : config.profiles) {
      auto it = p.inputs.find(in);
      if (it == p.inputs.end() || it->second.min != it->second.max || it->second.min != opt.at(in)) fixed = false;
    }
    if (fixed) ctx.input_shapes[in] = opt.at(in);
  }
  if (config.opt_level > 0) PassManager::standard().run(model, ctx);
  infer_types(model, infer);
  r.pass_ms = ms_since(t0);
  r.pass_log = plugin_notes;
  r.pass_log.insert(r.pass_log.end(), ctx.log.begin(), ctx.log.end());

  t0 = std::chrono::steady_clock::now();
  cpu::CompileOptions co;
  co.threads = config.threads;
  co.time_tactics = config.time_tactics;
  co.timing_cache = config.timing_cache;
  co.workspace_bytes = config.workspace_bytes;
  co.progress = config.progress;
  co.log = config.log;
  r.program = cpu::Program::compile(model, opt, co);
  r.tactic_ms = ms_since(t0);

  r.info.opt_level = config.opt_level;
  r.info.disabled_passes.assign(config.disabled_passes.begin(), config.disabled_passes.end());
  r.info.profile_shapes = opt;
  r.info.profiles = config.profiles;
  r.info.node_tactics = r.program->node_tactics();
  r.info.threads = r.program->threads();
  r.info.target.backend = "cpu";
  r.info.target.required_isa = r.program->required_isa();
  r.info.memory_peak = r.program->arena_bytes();
  r.info.memory_total = r.program->activation_bytes_total();
  r.info.kernels = r.program->kernel_count();
  r.model = std::move(model);
  plugins::pin_plugin_tactics(r);  // the engine names the plugin whatever won the timing
  return r;
}

}  // namespace kiln
