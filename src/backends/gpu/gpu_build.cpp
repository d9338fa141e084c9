// ONNX model -> optimized graph -> GPU program (see gpu_build.h).
#include "backends/gpu/gpu_build.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "backends/gpu/loader.h"
#include "backends/reference/executor.h"
#include "passes/pass.h"

namespace kiln::gpu {

namespace {

// Yields the batches of `inner` whose inputs have exactly `shapes` (an FP8 program is calibrated on
// its own graph, specialized to one set of shapes).
class ShapeFilter final : public quant::Calibrator {
 public:
  ShapeFilter(quant::Calibrator& inner, const ShapeMap& shapes) : inner_(inner), shapes_(shapes) {}
  bool next_batch(quant::TensorMap& batch) override {
    while (inner_.next_batch(batch)) {
      bool same = true;
      for (const auto& [name, dims] : shapes_) {
        auto it = batch.find(name);
        same = same && it != batch.end() && it->second.shape() == dims;
      }
      if (same) {
        ++kept_;
        return true;
      }
      if (skipped_++ == 0) first_skipped_ = shapes_str(batch);
      batch.clear();
    }
    return false;
  }
  void reset() override { inner_.reset(), kept_ = skipped_ = 0; }
  size_t samples_read() const override { return inner_.samples_read(); }
  size_t kept() const { return kept_; }
  size_t skipped() const { return skipped_; }
  // Why nothing fit: the engine's shapes against the first batch skipped.
  std::string mismatch() const {
    std::string s = "the engine's shapes are ";
    bool first = true;
    for (const auto& [name, dims] : shapes_) {
      s += (first ? "" : ", ") + name + ":" + dims_str(dims);
      first = false;
    }
    s += "; " + std::to_string(skipped_) + " batches of other shapes";
    if (!first_skipped_.empty()) s += ", the first " + first_skipped_;
    return s + " (a static batch needs the data in whole batches of that size: at least that many samples)";
  }

 private:
  static std::string dims_str(const std::vector<int64_t>& dims) {
    std::string s;
    for (size_t i = 0; i < dims.size(); ++i) s += (i ? "x" : "") + std::to_string(dims[i]);
    return s;
  }
  std::string shapes_str(const quant::TensorMap& batch) const {
    std::string s;
    for (const auto& [name, dims] : shapes_) {
      auto it = batch.find(name);
      s += (s.empty() ? "" : ", ") + name + ":" + (it == batch.end() ? std::string("missing") : dims_str(it->second.shape()));
    }
    return s;
  }
  std::string first_skipped_;

  quant::Calibrator& inner_;
  const ShapeMap& shapes_;
  size_t kept_ = 0, skipped_ = 0;
};

// Runs the calibration of `tensors` over calib.data (batches of `shapes` only), naming the data's
// source when none fits.
quant::CalibrationTable calibrate_tensors(const Model& model, const ShapeMap& shapes, const GpuCalibration& calib,
                                          const std::vector<std::string>& tensors, const char* what) {
  ShapeFilter data(*calib.data, shapes);
  quant::CalibrateOptions co;
  co.method = calib.method;
  try {
    return quant::calibrate(model, data, tensors, co);
  } catch (const Error& e) {
    if (data.kept() == 0)
      throw Error(ErrorCode::kInvalidArgument, std::string(what) + " calibration: " + calib.source +
                                                   " has no batch of the engine's shapes (" + data.mismatch() + ")");
    throw;
  }
}

}  // namespace

std::vector<size_t> fp8_gemm_candidates(const Model& model) {
  const Graph& g = model.graph;
  std::vector<size_t> out;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    const bool gemm = (n.domain.empty() && (n.op_type == "MatMul" || n.op_type == "Gemm")) ||
                      (n.domain == "kiln" && n.op_type == "FusedMatMul");
    if (!gemm || n.inputs.size() < 2 || n.inputs[0].empty()) continue;
    if (n.op_type != "MatMul") {
      const Attribute* ta = n.attr("transA");
      if (ta && ta->i != 0) continue;
    }
    auto b = g.initializers.find(n.inputs[1]);
    if (b == g.initializers.end() || b->second.rank() != 2 || !dtype_is_float(b->second.dtype())) continue;
    const TensorType* a = g.type_of(n.inputs[0]);
    if (!a || a->dtype != DType::kF32) continue;
    out.push_back(i);
  }
  return out;
}

size_t annotate_fp8_scales(Model& model, const ShapeMap& shapes, const Fp8Calibration& calib) {
  const std::vector<size_t> gemms = fp8_gemm_candidates(model);
  if (gemms.empty()) return 0;
  if (!calib.data)
    throw Error(ErrorCode::kInvalidArgument,
                "precision fp8 needs calibration data for the " + std::to_string(gemms.size()) +
                    " GEMM inputs it quantizes (kiln build --precision fp8 --calib DATA)");
  std::vector<std::string> tensors;
  for (size_t i : gemms) tensors.push_back(model.graph.nodes[i].inputs[0]);
  const quant::CalibrationTable table = calibrate_tensors(model, shapes, calib, tensors, "FP8");
  for (size_t i : gemms) {
    Node& n = model.graph.nodes[i];
    const quant::TensorRange& r = table.ranges.at(n.inputs[0]);
    n.attrs[kFp8InputScale] = Attribute::of_float(r.amax / kE4M3Max);
  }
  return gemms.size();
}

std::vector<size_t> int8_conv_candidates(const Model& model) {
  const Graph& g = model.graph;
  std::vector<size_t> out;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    const bool conv = (n.domain.empty() && n.op_type == "Conv") || (n.domain == "kiln" && n.op_type == "FusedConv");
    if (!conv || n.inputs.size() < 2 || n.inputs[0].empty() || n.outputs.empty()) continue;
    if (const Attribute* keep = n.attr(kInt8KeepFloat); keep && keep->i) continue;
    const Attribute* group = n.attr("group");
    if (group && group->i != 1) continue;
    auto w = g.initializers.find(n.inputs[1]);
    if (w == g.initializers.end() || w->second.rank() != 4 || !dtype_is_float(w->second.dtype())) continue;
    if (w->second.shape()[1] % 16 != 0 || w->second.shape()[0] % 8 != 0) continue;
    const Attribute* act = n.attr("activation");
    const Attribute* params = n.attr("activation_params");
    const std::string a = act ? act->s : "";
    const bool clip0 = a == "Clip" && params && params->floats.size() == 2 && params->floats[0] == 0.f;
    if (!(a.empty() || a == "Relu" || clip0)) continue;
    const TensorType* x = g.type_of(n.inputs[0]);
    if (!x || x->dtype != DType::kF32) continue;
    out.push_back(i);
  }
  return out;
}

std::vector<size_t> int8_gemm_candidates(const Model& model) {
  std::vector<size_t> out;
  for (size_t i : fp8_gemm_candidates(model)) {
    const Node& n = model.graph.nodes[i];
    if (const Attribute* keep = n.attr(kInt8KeepFloat); keep && keep->i) continue;
    const auto& bd = model.graph.initializers.at(n.inputs[1]).shape();
    const Attribute* tb = n.op_type == "MatMul" ? nullptr : n.attr("transB");
    const int64_t k = tb && tb->i ? bd[1] : bd[0], cols = tb && tb->i ? bd[0] : bd[1];
    if (k % 16 == 0 && cols % 8 == 0) out.push_back(i);  // the INT8 kernel's shape rules
  }
  return out;
}

namespace {

// Every INT8 candidate, convolutions and GEMMs, in graph order.
std::vector<size_t> int8_candidates(const Model& model) {
  std::vector<size_t> all = int8_conv_candidates(model), gemms = int8_gemm_candidates(model);
  all.insert(all.end(), gemms.begin(), gemms.end());
  std::sort(all.begin(), all.end());
  return all;
}

}  // namespace

Int8Annotated annotate_int8_scales(Model& model, const ShapeMap& shapes, const GpuCalibration& calib) {
  const std::vector<size_t> convs = int8_candidates(model);
  if (convs.empty()) return {};
  if (!calib.data)
    throw Error(ErrorCode::kInvalidArgument,
                "precision int8 needs calibration data for the " + std::to_string(convs.size()) +
                    " convolutions and GEMMs it quantizes (kiln build --device cuda --precision int8 --calib DATA)");
  std::vector<std::string> tensors;
  for (size_t i : convs) {
    const Node& n = model.graph.nodes[i];
    tensors.push_back(n.inputs[0]);
    tensors.push_back(n.outputs[0]);
    if (n.inputs.size() > 3 && !n.inputs[3].empty()) tensors.push_back(n.inputs[3]);
  }
  std::sort(tensors.begin(), tensors.end());
  tensors.erase(std::unique(tensors.begin(), tensors.end()), tensors.end());
  const quant::CalibrationTable table = calibrate_tensors(model, shapes, calib, tensors, "INT8");
  auto scale = [&](const std::string& t) {
    const float amax = table.ranges.at(t).amax;
    return amax > 0 && std::isfinite(amax) ? amax / 127.f : 1.f / 127.f;  // all zeros: any positive scale
  };
  Int8Annotated out;
  for (size_t i : convs) {
    Node& n = model.graph.nodes[i];
    const bool conv = n.op_type == "Conv" || n.op_type == "FusedConv";
    const bool z = conv && n.inputs.size() > 3 && !n.inputs[3].empty();
    n.attrs[kInt8Scales] = Attribute::of_floats({scale(n.inputs[0]), scale(n.outputs[0]), z ? scale(n.inputs[3]) : 0.f});
    ++(conv ? out.convs : out.gemms);
  }
  return out;
}

namespace {

// Marks `node` kept in FP16: no scales, skipped as an INT8 candidate.
void keep_in_fp16(Node& node) {
  node.attrs.erase(kInt8Scales);
  node.attrs[kInt8KeepFloat] = Attribute::of_int(1);
}

// --layer-precision NAME:fp16 on the optimized graph. `names`: the node names of the graph before
// the passes (a fused node answers to the names of the nodes it fused).
void apply_keep_fp16(Model& model, const std::set<std::string>& keep, const std::set<std::string>& names) {
  for (const std::string& k : keep)
    if (!names.count(k))
      throw Error(ErrorCode::kInvalidArgument, "--layer-precision: the model has no layer (node) named '" + k + "'");
  if (keep.empty()) return;
  for (size_t i : int8_candidates(model))
    if (quant::node_matches_layer(model.graph.nodes[i], keep)) keep_in_fp16(model.graph.nodes[i]);
}

// The INT8 accuracy guard on the GPU (see Fp8Calibration::guard): programs compiled with every
// candidate not kept in FP16 forced to INT8, run on the validation batches, against the FP32 graph
// on the CPU. Marks the convolutions it keeps in FP16. Nothing to guard (an empty result, no
// evaluation) when no convolution can run in INT8.
quant::GuardResult int8_accuracy_guard(const std::shared_ptr<Device>& device, Model& model, const ShapeMap& shapes,
                                       const CompileOptions& options, const GpuCalibration& calib) {
  quant::Calibrator* source = calib.validation ? calib.validation : calib.data;
  if (!source)
    throw Error(ErrorCode::kInvalidArgument,
                "--accuracy-budget needs validation data (--validation DATA or --calib DATA)");
  std::vector<quant::GuardLayer> layers;
  for (size_t i : int8_candidates(model)) {
    const Node& n = model.graph.nodes[i];
    if (int8_scales(n).ok()) layers.push_back(quant::GuardLayer{n.name, n.op_type});
  }
  if (layers.empty()) return {};  // no convolution or GEMM can run in INT8: the program is FP16's
  ShapeFilter data(*source, shapes);
  std::vector<quant::TensorMap> batches;
  try {
    batches = quant::read_validation(data, calib.guard.max_samples);
  } catch (const Error&) {
    throw Error(ErrorCode::kInvalidArgument,
                "accuracy guard: the validation data has no batch of the engine's shapes (" + data.mismatch() + ")");
  }
  size_t samples = 0;
  for (const auto& b : batches) samples += b.empty() || b.begin()->second.rank() == 0 ? 1 : b.begin()->second.dim(0);
  // The reference: the FP32 graph (scales are attributes the CPU ignores).
  const quant::GuardOutputs reference = quant::run_fp32(model, batches, calib.guard.threads);

  // Every evaluation compiles a program: one timing cache keeps the kernels timed once.
  std::unique_ptr<cpu::TimingCache> local;
  CompileOptions co = options;
  co.int8_convs = co.int8_gemms = "always";  // the accuracy of the INT8 kernel wherever timing would put it
  co.int8_program_check = false;
  co.log = nullptr;
  if (!co.tactics) {
    local = std::make_unique<cpu::TimingCache>(gpu_target(device->props()));
    co.tactics = local.get();
  }
  auto run = [&](const std::set<std::string>& keep_float) {
    Model m = model;
    for (Node& n : m.graph.nodes)
      if (keep_float.count(n.name)) keep_in_fp16(n);
    GpuContext ctx(GpuProgram::compile(device, m, shapes, co));
    quant::GuardOutputs out;
    for (const auto& b : batches) out.push_back(ctx.run(b));
    return out;
  };
  quant::GuardResult r = quant::guard_search(layers, reference, run, calib.guard);
  r.samples = samples;
  for (Node& n : model.graph.nodes)
    if (r.keep_float.count(n.name)) keep_in_fp16(n);
  return r;
}

}  // namespace

GpuBuild build_gpu_program(Model model, const ShapeMap& shapes, int device_index, const CompileOptions& options,
                           int opt_level, const Fp8Calibration* fp8) {
  using Clock = std::chrono::steady_clock;
  GpuBuild out;
  auto device = open_device(device_index);  // before any work: no GPU is the first error to report
  const auto t0 = Clock::now();
  InferOptions infer;
  infer.evaluator = reference::constant_evaluator();
  infer_types(model, infer);
  out.nodes_before = model.graph.nodes.size();
  std::set<std::string> names;  // the layers --layer-precision may name
  for (const Node& n : model.graph.nodes) names.insert(n.name);
  // The GPU has no Q/DQ kernels: an explicit Q/DQ model's quantizers become float arithmetic that
  // computes the same values (at every optimization level, 0 included).
  std::vector<std::string> qdq_log;
  {
    PassContext qctx;
    qctx.evaluator = reference::constant_evaluator();
    auto qdq_nodes = [&] {
      size_t k = 0;
      for (const Node& n : model.graph.nodes)
        k += n.domain.empty() && (n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear");
      return k;
    };
    const size_t before = qdq_nodes();
    if (before > 0 && make_decompose_qdq()->run(model, qctx) > 0) {
      infer_types(model, infer);
      qdq_log.push_back("decompose-qdq: " + std::to_string(before - qdq_nodes()) +
                        " QuantizeLinear/DequantizeLinear nodes as float arithmetic");
    }
  }
  if (opt_level > 0) {
    PassContext ctx;
    ctx.opt_level = opt_level;
    ctx.evaluator = reference::constant_evaluator();
    ctx.input_shapes = shapes;
    PassManager::standard().run(model, ctx);
    infer_types(model, infer);
    out.pass_log = std::move(ctx.log);
  }
  out.pass_log.insert(out.pass_log.begin(), qdq_log.begin(), qdq_log.end());
  out.nodes_after = model.graph.nodes.size();
  if (options.precision == Precision::kFP8) {
    // Engines carry their scales; a graph with every candidate scaled needs no data.
    const auto tc = Clock::now();
    bool missing = false;
    for (size_t i : fp8_gemm_candidates(model)) missing = missing || fp8_input_scale(model.graph.nodes[i]) <= 0;
    if (missing) out.fp8_gemms = annotate_fp8_scales(model, shapes, fp8 ? *fp8 : Fp8Calibration{});
    out.calib_ms = std::chrono::duration<double, std::milli>(Clock::now() - tc).count();
  }
  if (options.precision == Precision::kINT8) {
    const auto tc = Clock::now();
    if (fp8) apply_keep_fp16(model, fp8->keep_fp16, names);
    bool missing = false;
    for (size_t i : int8_candidates(model)) missing = missing || !int8_scales(model.graph.nodes[i]).ok();
    if (missing) {
      const Int8Annotated a = annotate_int8_scales(model, shapes, fp8 ? *fp8 : GpuCalibration{});
      out.int8_convs = a.convs, out.int8_gemms = a.gemms;
    }
    out.calib_ms = std::chrono::duration<double, std::milli>(Clock::now() - tc).count();
    if (fp8 && fp8->guard.budget >= 0) {
      const auto tg = Clock::now();
      out.guard = int8_accuracy_guard(device, model, shapes, options, *fp8);
      out.guard_ms = std::chrono::duration<double, std::milli>(Clock::now() - tg).count();
    }
  }
  const auto t1 = Clock::now();
  out.program = GpuProgram::compile(device, model, shapes, options);
  out.pass_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  out.compile_ms = std::chrono::duration<double, std::milli>(Clock::now() - t1).count();
  out.optimized = std::move(model);
  return out;
}

}  // namespace kiln::gpu
