// build_engine(): passes, then tactic selection at the opt shapes (see builder.h).
#include "runtime/builder.h"

#include <chrono>
#include <filesystem>
#include <optional>
#include <set>
#include <sstream>

#include "backends/reference/executor.h"
#include "ops/model_check.h"
#include "passes/pass.h"
#include "plugins/plugins.h"
#include "quant/qdq.h"

namespace kiln {

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Checks --layer-precision against the model's node names and values; returns the layers kept float.
std::set<std::string> check_layer_precision(const Model& model, const PrecisionConfig& p) {
  std::set<std::string> names;
  for (const Node& n : model.graph.nodes) names.insert(n.name);
  std::set<std::string> keep_float;
  for (const auto& [layer, prec] : p.layer_precision) {
    if (!names.count(layer))
      throw Error(ErrorCode::kInvalidArgument, "--layer-precision: the model has no layer (node) named '" + layer + "'");
    if (prec == "fp32" || prec == "bf16" || prec == "fp16") keep_float.insert(layer);
    else if (prec != "int8")
      throw Error(ErrorCode::kInvalidArgument, "--layer-precision " + layer + ":" + prec +
                                                   ": the precision must be fp32, bf16, fp16 or int8");
    if (prec == "fp16" && p.constraints == "obey")
      throw Error(ErrorCode::kInvalidArgument, "--layer-precision " + layer +
                                                   ":fp16 with --precision-constraints obey: the CPU backend has no "
                                                   "FP16 kernels");
  }
  if (p.constraints != "prefer" && p.constraints != "obey")
    throw Error(ErrorCode::kInvalidArgument,
                "--precision-constraints must be prefer or obey, got '" + p.constraints + "'");
  return keep_float;
}

int mark_bf16(Model& model, const PrecisionConfig& p, std::vector<std::string>& log);

// Calibrates (or reads the cache) and rewrites the optimized graph for INT8.
void apply_int8(Model& model, const Model& original, const BuildConfig& config, BuildResult& r) {
  const PrecisionConfig& p = config.precision;
  quant::Int8Options o;
  o.keep_float = check_layer_precision(original, p);
  // The cache holds every INT8-capable tensor, so it stays valid when --layer-precision or the
  // accuracy guard later moves layers between FP32 and INT8; this build needs only `tensors`.
  const std::vector<std::string> tensors = quant::int8_tensors(model, o);
  const std::vector<std::string> all_tensors = quant::int8_tensors(model, {});
  quant::CalibrationTable table;
  const auto t0 = std::chrono::steady_clock::now();
  if (!p.calib_cache.empty() && std::filesystem::exists(p.calib_cache)) {
    table = quant::read_calibration_cache(p.calib_cache);
    quant::check_calibration_table(table, original, tensors, p.calib_cache);
    r.precision_log.push_back("calibration: cache " + p.calib_cache + " (" + quant::to_string(table.method) + ", " +
                              std::to_string(table.samples) + " samples)");
  } else if (p.calibrator) {
    quant::CalibrateOptions co;
    co.method = p.calib_method;
    co.threads = config.threads;
    co.progress = p.calib_progress;
    table = quant::calibrate(model, *p.calibrator, all_tensors, co);
    table.model_fingerprint = quant::model_fingerprint(original);
    r.precision_log.push_back("calibration: " + std::to_string(table.samples) + " samples, " +
                              quant::to_string(table.method) + ", " + std::to_string(all_tensors.size()) + " tensors");
    if (!p.calib_cache.empty()) {
      quant::write_calibration_cache(p.calib_cache, table);
      r.precision_log.push_back("calibration cache written: " + p.calib_cache);
    }
  } else {
    throw Error(ErrorCode::kInvalidArgument,
                "--int8 needs calibration data (--calib DATA) or an existing calibration cache (--calib-cache FILE)");
  }
  r.calib_ms = ms_since(t0);
  if (p.accuracy_budget >= 0) {
    quant::Calibrator* val = p.validation ? p.validation : p.calibrator;
    if (!val)
      throw Error(ErrorCode::kInvalidArgument,
                  "--accuracy-budget needs validation data (--validation DATA, or --calib DATA)");
    quant::GuardOptions go;
    go.budget = p.accuracy_budget;
    go.metric = p.accuracy_metric;
    go.max_samples = p.validation_samples;
    go.threads = config.threads;
    go.progress = p.guard_progress;
    if (p.bf16 || !p.layer_precision.empty())
      go.finalize = [&p](Model& m) {
        std::vector<std::string> ignored;
        mark_bf16(m, p, ignored);
      };
    const auto tg = std::chrono::steady_clock::now();
    const quant::GuardResult g = quant::accuracy_guard(model, table, o, *val, go);
    r.guard_ms = ms_since(tg);
    o.keep_float.insert(g.keep_float.begin(), g.keep_float.end());
    std::istringstream report(quant::format_guard_report(g, p.accuracy_budget));
    for (std::string line; std::getline(report, line);) r.precision_log.push_back(line);
  }
  const int layers = quant::quantize_int8(model, table, o);
  r.precision_log.push_back("int8: " + std::to_string(layers) + " layers" +
                            (o.keep_float.empty() ? "" : ", " + std::to_string(o.keep_float.size()) +
                                                             " kept in fp32 (--layer-precision, accuracy guard)"));
  if (p.constraints == "obey") {
    // Every layer asked for int8 must have become an int8 kernel.
    for (const auto& [layer, prec] : p.layer_precision) {
      if (prec != "int8") continue;
      bool ok = false;
      for (const Node& n : model.graph.nodes)
        if (n.domain == "kiln" && (n.op_type == "QConv" || n.op_type == "QMatMul") &&
            quant::node_matches_layer(n, {layer}))
          ok = true;
      if (!ok)
        throw Error(ErrorCode::kInvalidArgument, "--layer-precision " + layer +
                                                     ":int8 with --precision-constraints obey: the layer cannot run "
                                                     "in int8 (only convolutions and matmuls with constant weights can)");
    }
  }
}

// Marks the float convolutions and matmuls that run in BF16 (compute_precision = "bf16"): every
// one when --bf16 is on, except layers pinned to fp32/fp16; plus layers asked for bf16 explicitly.
// Norms, softmax, attention, reductions and elementwise ops are never marked: they stay FP32.
int mark_bf16(Model& model, const PrecisionConfig& p, std::vector<std::string>& log) {
  int marked = 0;
  for (Node& n : model.graph.nodes) {
    if (n.domain != "kiln" || (n.op_type != "FusedConv" && n.op_type != "FusedMatMul")) continue;
    const TensorType* t = n.outputs.empty() ? nullptr : model.graph.type_of(n.outputs[0]);
    if (!t || t->dtype != DType::kF32) continue;
    std::string asked;
    for (const auto& [layer, prec] : p.layer_precision)
      if (quant::node_matches_layer(n, {layer})) asked = prec;
    const bool bf16 = asked == "bf16" || (p.bf16 && asked != "fp32" && asked != "fp16");
    if (!bf16) continue;
    n.attrs["compute_precision"] = Attribute::of_string("bf16");
    ++marked;
  }
  // On a CPU without BF16 instructions the float tactics take these nodes (they run in fp32).
  if (marked) log.push_back("bf16: " + std::to_string(marked) + " convolutions/matmuls");
  if (p.fp16) log.push_back("fp16: the CPU backend has no FP16 kernels; those layers stay fp32 (or bf16 with --bf16)");
  return marked;
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
  quant::check_qdq_params(model);
  const bool int8 = config.precision.int8 && !quant::has_qdq_nodes(model.graph);
  if (config.precision.int8 && !int8)
    r.precision_log.push_back("int8: the model has explicit Q/DQ nodes; their scales are used, no calibration");
  if (!config.precision.int8) check_layer_precision(model, config.precision);
  std::optional<Model> original;
  if (int8) original = model;

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
  if (int8) apply_int8(model, *original, config, r);
  if (config.precision.bf16 || config.precision.fp16 || !config.precision.layer_precision.empty()) {
    mark_bf16(model, config.precision, r.precision_log);
    infer_types(model, infer);
  }
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
  if (r.info.node_tactics != r.program->node_tactics()) {
    // A plugin that replaces a built-in op lost the timing somewhere: the program handed to the
    // caller (kiln run/compare on an ONNX file) must run what the engine names, so compile it
    // again with the pinned tactics.
    co.forced_tactics = &r.info.node_tactics;
    r.program = cpu::Program::compile(r.model, opt, co);
    r.info.target.required_isa = r.program->required_isa();
    r.info.memory_peak = r.program->arena_bytes();
    r.info.memory_total = r.program->activation_bytes_total();
    r.info.kernels = r.program->kernel_count();
  }
  return r;
}

}  // namespace kiln
