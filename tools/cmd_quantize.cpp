// `kiln quantize`: calibrates a float model (or reads a calibration cache) and writes it as a
// standard QDQ ONNX model (QuantizeLinear/DequantizeLinear pairs, int8 weights), which other
// runtimes, and `kiln build` through its explicit Q/DQ path, can run in int8.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "backends/reference/executor.h"
#include "cli_common.h"
#include "onnx/onnx_import.h"
#include "passes/pass.h"
#include "quant/calibration.h"
#include "quant/qdq.h"

namespace kiln::cli {
namespace {

namespace fs = std::filesystem;

struct QuantizeArgs {
  std::string model;
  std::string output;
  std::string calib, calib_method = "entropy", calib_cache, layer_precision;
  size_t calib_samples = 0;  // 0: all
  int64_t calib_batch = 0;   // 0: 8, or the input's static batch
  int threads = 0;           // 0: the core count
  std::string matmul_weights = "per-channel";
};

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorCode::kInvalidArgument, message); }

// --layer-precision NAME:fp32,NAME:int8,...: the layers left in float, checked against the model's
// node names (the same rules as `kiln build`).
std::set<std::string> keep_float_layers(const std::string& spec, const Model& model) {
  std::set<std::string> names;
  for (const Node& n : model.graph.nodes) names.insert(n.name);
  std::set<std::string> keep_float;
  for (const auto& [layer, prec] : cli::parse_layer_precision(spec, "NAME:fp32 or NAME:int8")) {
    if (!names.count(layer)) invalid("--layer-precision: the model has no layer (node) named '" + layer + "'");
    if (prec == "fp32") keep_float.insert(layer);
    else if (prec != "int8") invalid("--layer-precision " + layer + ":" + prec + ": the precision must be fp32 or int8");
  }
  return keep_float;
}

int cmd_quantize(const QuantizeArgs& args) {
  Model model = load_onnx(args.model);
  const int64_t opset = model.default_opset();
  if (opset < 10)
    invalid(args.model + " uses opset " + std::to_string(opset) +
            " of the default domain; QuantizeLinear/DequantizeLinear need opset 10 or later (13 or later for "
            "per-channel weights): convert the model to a newer opset first");
  require_supported(model);
  if (quant::has_qdq_nodes(model.graph))
    invalid(args.model + " already has QuantizeLinear/DequantizeLinear nodes; quantize its float version instead");
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(model, infer);
  const Model original = model;  // its fingerprint keys the calibration cache, as in `kiln build`
  const size_t nodes_in = model.graph.nodes.size();

  quant::Int8Options options;
  options.keep_float = keep_float_layers(args.layer_precision, original);
  if (args.matmul_weights != "per-channel" && args.matmul_weights != "per-tensor")
    invalid("--matmul-weights must be per-channel or per-tensor, got '" + args.matmul_weights + "'");
  options.per_channel_matmul_weights = args.matmul_weights == "per-channel";
  const quant::CalibMethodSpec method = quant::parse_calib_method(args.calib_method);
  const bool cache_exists = !args.calib_cache.empty() && fs::exists(args.calib_cache);
  if (args.calib.empty() && !cache_exists) {
    if (args.calib_cache.empty())
      invalid("kiln quantize needs calibration data (--calib DATA) or an existing calibration cache "
              "(--calib-cache FILE)");
    invalid("calibration cache '" + args.calib_cache + "' does not exist; give calibration data with --calib DATA");
  }

  // Standard-ONNX clean-ups only (no kiln-domain fusions), so BatchNormalization folds into the
  // convolution before its weights are quantized and the output stays runnable anywhere.
  PassManager pm;
  pm.add(make_remove_identity_ops());
  pm.add(make_remove_noop_reshapes());
  pm.add(make_constant_folding());
  pm.add(make_fold_batchnorm());
  pm.add(make_dead_node_elimination());
  PassContext ctx;
  ctx.evaluator = reference::constant_evaluator();
  pm.run(model, ctx);
  infer_types(model, infer);
  const size_t nodes_float = model.graph.nodes.size();

  for (const auto& layer : options.keep_float) {
    bool weighted = false;
    for (const Node& n : model.graph.nodes)
      weighted |= n.domain.empty() && (n.op_type == "Conv" || n.op_type == "Gemm" || n.op_type == "MatMul") &&
                  quant::node_matches_layer(n, {layer});
    if (!weighted)
      std::cerr << "note: --layer-precision " << layer << ":fp32: '" << layer
                << "' is not a Conv, Gemm or MatMul layer; only those are quantized, so it changes nothing\n";
  }
  const std::vector<std::string> tensors = quant::export_qdq_tensors(model, options);
  // A dry run with placeholder ranges tells, before the (slow) calibration, whether any layer is
  // left to quantize: residual Adds alone would give a model with Q/DQ pairs and no int8 layer.
  {
    Model probe = model;
    quant::CalibrationTable placeholder;
    for (const auto& t : tensors) placeholder.ranges[t] = quant::TensorRange{1.f, -1.f, 1.f};
    if (quant::export_qdq(probe, placeholder, options) == 0)
      invalid(args.model + ": nothing to quantize (no Conv, Gemm or MatMul with constant weights" +
              std::string(options.keep_float.empty() ? "" : " outside --layer-precision's fp32 layers") + ")");
  }

  quant::CalibrationTable table;
  std::string calib_line;
  if (cache_exists) {
    table = quant::read_calibration_cache(args.calib_cache);
    try {
      quant::check_calibration_table(table, original, tensors, args.calib_cache);
    } catch (const Error& e) {
      // Same model, missing tensors: most likely a cache of `kiln build --int8`, whose fused graph
      // has fewer quantized tensors (no Add inputs) than the QDQ export.
      if (table.model_fingerprint != quant::model_fingerprint(original)) throw;
      invalid(std::string(e.what()) + " (a cache written by `kiln build --int8` covers only the tensors of its " +
              "fused graph, not every tensor the QDQ export quantizes: calibrate again with --calib DATA)");
    }
    calib_line = "cache " + args.calib_cache + " (" + quant::to_string(table.method) + ", " +
                 std::to_string(table.samples) + " samples)";
  } else {
    const int64_t batch = args.calib_batch > 0 ? args.calib_batch : cli::default_calib_batch(original, {});
    quant::FileCalibrator data(args.calib, original, batch, args.calib_samples);
    quant::CalibrateOptions co;
    co.method = method;
    co.threads = args.threads;
    const bool tty = ::isatty(STDERR_FILENO);
    if (tty) co.progress = [](size_t n) { std::fprintf(stderr, "\rcalibrating: %zu samples", n); };
    table = quant::calibrate(model, data, tensors, co);
    if (tty) std::fputc('\n', stderr);
    table.model_fingerprint = quant::model_fingerprint(original);
    calib_line = std::to_string(table.samples) + " samples of " + args.calib + ", " + quant::to_string(table.method);
    if (!args.calib_cache.empty()) {
      quant::write_calibration_cache(args.calib_cache, table);
      calib_line += "; cache written: " + args.calib_cache;
    }
  }

  const int layers = quant::export_qdq(model, table, options);
  // The result must be a valid model Kiln itself can load back: check it before writing.
  require_supported(model);
  infer_types(model, infer);
  save_onnx(model, args.output);
  std::error_code ec;
  const auto size = fs::file_size(args.output, ec);

  std::set<std::string> dequantized;  // outputs of DequantizeLinear nodes
  for (const Node& n : model.graph.nodes)
    if (n.domain.empty() && n.op_type == "DequantizeLinear") dequantized.insert(n.outputs[0]);
  std::map<std::string, int> quantized_ops;  // op -> layers whose weight is dequantized
  for (const Node& n : model.graph.nodes) {
    if (!n.domain.empty() || (n.op_type != "Conv" && n.op_type != "Gemm" && n.op_type != "MatMul")) continue;
    if (n.inputs.size() > 1 && dequantized.count(n.inputs[1])) ++quantized_ops[n.op_type];
  }
  int q = 0, dq = 0;
  for (const Node& n : model.graph.nodes) {
    if (!n.domain.empty()) continue;
    q += n.op_type == "QuantizeLinear";
    dq += n.op_type == "DequantizeLinear";
  }
  std::cout << "model:        " << args.model << " (" << nodes_in << " nodes, opset " << opset << ")\n";
  std::cout << "passes:       " << nodes_in << " -> " << nodes_float << " nodes (standard ONNX passes only)\n";
  for (const auto& line : ctx.log) std::cout << "  " << line << "\n";
  std::cout << "calibration:  " << calib_line << "\n";
  std::cout << "quantized:    " << layers << " layers";
  std::string sep = " (";
  for (const auto& [op, count] : quantized_ops) {
    std::cout << sep << op << " x" << count;
    sep = ", ";
  }
  if (!quantized_ops.empty()) std::cout << ")";
  std::cout << ", " << tensors.size() << " activation tensors calibrated; weights int8 "
            << (opset >= 13 ? "per output channel" : "per tensor (opset < 13)") << "\n";
  if (!options.keep_float.empty()) {
    std::cout << "kept in fp32:";
    for (const auto& l : options.keep_float) std::cout << " " << l;
    std::cout << "\n";
  }
  std::cout << "output:       " << args.output << " (" << model.graph.nodes.size() << " nodes: " << q
            << " QuantizeLinear, " << dq << " DequantizeLinear; " << size << " bytes, " << mib(size) << ")\n";
  return 0;
}

}  // namespace

// Registers `kiln quantize` on `app`; *run is set to the function that runs it once parsed.
CLI::App* add_quantize_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<QuantizeArgs>();
  auto* sub = app.add_subcommand("quantize", "Calibrate a float model and write it as standard QDQ ONNX (int8)");
  sub->add_option("model", args->model, "ONNX model (float32)")->required();
  sub->add_option("--output,-o", args->output, "QDQ ONNX model to write")->required();
  sub->add_option("--calib", args->calib,
                  "Calibration data: a folder of .npy/.npz files or one .npz of stacked samples (docs/calibration.md)");
  sub->add_option("--calib-method", args->calib_method, "entropy (default), minmax or percentile[=99.99]");
  sub->add_option("--calib-cache", args->calib_cache,
                  "Calibration cache: read when it exists (no data needed), else written after calibrating");
  sub->add_option("--calib-samples", args->calib_samples, "Use at most this many calibration samples (default: all)");
  sub->add_option("--calib-batch", args->calib_batch, "Samples per calibration batch (default 8, or the static batch)")
      ->check(CLI::PositiveNumber);
  sub->add_option("--layer-precision", args->layer_precision, "Layers left in float, by node name: NAME:fp32,...");
  sub->add_option("--matmul-weights", args->matmul_weights,
                  "per-channel (default) or per-tensor weight scales for MatMul/Gemm (ONNX Runtime's default, "
                  "which it runs faster)");
  sub->add_option("--threads", args->threads, "Threads of the calibration runs (default: cores)")
      ->check(CLI::Range(1, 4096));
  sub->footer(
      "Activations are quantized per tensor (int8, or uint8 when calibration saw no negative value), the\n"
      "weights of Conv, Gemm and MatMul per output channel (per tensor below opset 13), plus the inputs of\n"
      "residual Adds; BatchNormalization is folded first. `kiln build` of the result (no --int8 needed) runs\n"
      "it with int8 kernels. Errors exit 1; bad flags exit 2.");
  *run = [args] { return cmd_quantize(*args); };
  return sub;
}

}  // namespace kiln::cli
