// `kiln compare`: runs an engine (or an ONNX model built for the CPU backend) and the FP32
// reference of its ONNX model on the same inputs, and reports per output the max abs/rel error,
// cosine similarity and top-1 agreement, checked against tolerances (Polygraphy-style); with
// --per-layer also every intermediate tensor both graphs have, marking where the error first jumps.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "backends/reference/executor.h"
#include "cli_common.h"
#include "onnx/onnx_import.h"
#include "quant/calibration.h"
#include "quant/metrics.h"
#include "quant/qdq.h"
#include "runtime/builder.h"
#include "runtime/runtime.h"
#include "util/npy.h"

namespace kiln::cli {
namespace {

using json = nlohmann::json;
using ShapeMap = std::map<std::string, std::vector<int64_t>>;
using reference::TensorMap;
using quant::ErrorStats;

// Per-layer: below this cosine (when --min-cosine is not given) a tensor counts as divergent.
constexpr double kDefaultLayerCosine = 0.999;
// Per-layer: a tensor's max abs error jumping by more than this factor over the previous compared
// tensor counts as divergent...
constexpr double kJumpFactor = 10.0;
// ...when it is also above this fraction of the tensor's scale (max |reference|), so that fp32
// rounding noise growing from 1e-8 to 1e-7 is never reported as a jump.
constexpr double kJumpNoiseFloor = 1e-4;

struct CompareArgs {
  std::string target;  // engine file or ONNX model under test
  std::string model;   // the ONNX model of the FP32 reference
  std::vector<std::string> inputs;
  std::string calib;
  int64_t samples = 0;  // 0: 1 random sample, every calibration sample, every --input
  int64_t batch = 1;
  std::string shapes;
  uint64_t seed = 0;
  std::vector<int64_t> int_range = {0, 10};
  double atol = 0, rtol = 0, min_cosine = 0;
  bool has_atol = false, has_rtol = false, has_min_cosine = false;
  bool per_layer = false;
  std::string reference = "reference";
  bool json = false;
  int threads = 0;
};

bool is_float(DType dt) { return dtype_is_float(dt); }

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// A number for the tables: fixed for cosines, scientific for errors.
std::string sci(double v) {
  std::ostringstream os;
  os << std::scientific << std::setprecision(3) << v;
  return os.str();
}
std::string cos_text(double v) { return fixed(v, 6); }

// Appends to the graph's outputs every node output `want` accepts that is not an output already:
// the intermediate tensors a per-layer comparison reads back. Only values with a known float or
// 8-bit integer type qualify (shape arithmetic is folded away at concrete shapes anyway).
void expose_values(Model& model, const std::function<bool(const std::string&)>& want) {
  Graph& g = model.graph;
  std::set<std::string> present(g.outputs.begin(), g.outputs.end());
  for (const Node& n : g.nodes)
    for (const auto& o : n.outputs) {
      if (o.empty() || present.count(o) || !want(o)) continue;
      const TensorType* t = g.type_of(o);
      if (!t || !(is_float(t->dtype) || dtype_is_8bit(t->dtype))) continue;
      g.outputs.push_back(o);
      present.insert(o);
    }
}

// expose_values before a build: types are inferred on a copy first (an ONNX model declares few).
void mark_outputs(Model& model, const std::function<bool(const std::string&)>& want) {
  Model typed = model;
  InferOptions o;
  o.evaluator = reference::constant_evaluator();
  infer_types(typed, o);
  expose_values(typed, want);
  model.graph.outputs = typed.graph.outputs;
}

// One side of the comparison.
class Runner {
 public:
  virtual ~Runner() = default;
  // The graph outputs and, when the runner exposes intermediates, those too.
  virtual TensorMap run(const TensorMap& inputs) = 0;
  // The optimized model that ran last (for the int8 values of a per-layer comparison); null for
  // the reference executor.
  virtual const Model* engine_model() const { return nullptr; }
};

class ReferenceRunner final : public Runner {
 public:
  ReferenceRunner(Model model, bool keep) : exec_(std::move(model)), keep_(keep) {}
  TensorMap run(const TensorMap& inputs) override {
    reference::RunOptions o;
    o.keep_intermediates = keep_;
    return exec_.run(inputs, o);
  }

 private:
  reference::Executor exec_;
  bool keep_;
};

// An engine file, or an ONNX model built with build_engine's default config once per set of input
// shapes (a static profile each, as `kiln run` does).
class CpuRunner final : public Runner {
 public:
  using Want = std::function<bool(const std::string&)>;
  // An engine file's optimized model; `expose` picks intermediate values to read back (after the
  // build: the engine's tactics stay as they are, forced by node index).
  CpuRunner(Model optimized, EngineInfo info, int threads, const Want& expose) : threads_(threads) {
    if (expose) expose_values(optimized, expose);
    fixed_ = std::make_shared<EngineRuntime>(std::move(optimized), std::move(info), threads);
    ctx_fixed_ = std::make_unique<Context>(fixed_);
  }
  // An ONNX model (its outputs already marked for a per-layer comparison), built on first use at
  // each input shape.
  CpuRunner(Model onnx, int threads) : onnx_(std::move(onnx)), threads_(threads) {}

  TensorMap run(const TensorMap& inputs) override {
    if (fixed_) {
      last_ = fixed_.get();
      return ctx_fixed_->run(inputs);
    }
    ShapeMap shapes;
    for (const auto& [name, t] : inputs) shapes[name] = t.shape();
    auto it = built_.find(shapes);
    if (it == built_.end()) {
      BuildConfig cfg;
      cfg.threads = threads_;
      cfg.profiles.resize(1);
      for (const auto& [name, d] : shapes) cfg.profiles[0].inputs[name] = ProfileDims{d, d, d};
      BuildResult r = build_engine(*onnx_, cfg);
      Built b;
      b.runtime = std::make_shared<EngineRuntime>(std::move(r.model), std::move(r.info), threads_);
      b.runtime->add_program(shapes, r.program);  // the program the build compiled is the one to run
      b.context = std::make_unique<Context>(b.runtime);
      it = built_.emplace(shapes, std::move(b)).first;
    }
    last_ = it->second.runtime.get();
    return it->second.context->run(inputs);
  }
  const Model* engine_model() const override { return last_ ? &last_->model() : nullptr; }

 private:
  struct Built {
    std::shared_ptr<EngineRuntime> runtime;
    std::unique_ptr<Context> context;
  };
  std::optional<Model> onnx_;
  int threads_;
  std::shared_ptr<EngineRuntime> fixed_;
  std::unique_ptr<Context> ctx_fixed_;
  std::map<ShapeMap, Built> built_;
  const EngineRuntime* last_ = nullptr;
};

// The inputs to compare on: files, calibration batches or seeded random tensors, one set at a time.
class SampleSource {
 public:
  SampleSource(const CompareArgs& a, const Model& model, bool is_engine, const EngineInfo& info)
      : a_(a), model_(model) {
    const Graph& g = model.graph;
    if (!a.calib.empty()) {
      calib_ = std::make_unique<quant::FileCalibrator>(a.calib, model, a.batch,
                                                      static_cast<size_t>(std::max<int64_t>(a.samples, 0)));
      description_ = "calibration data " + a.calib + " (batch " + std::to_string(a.batch) + ")";
      return;
    }
    if (!a.inputs.empty()) {
      load_files(g);
      return;
    }
    shapes_ = parse_shapes(a.shapes);
    check_shape_names(g, shapes_, "--shapes", a.model);
    // An engine's dynamic inputs default to the shapes its tactics were timed at (as `kiln run`).
    if (is_engine)
      for (const auto& [name, dims] : info.profile_shapes)
        if (!shapes_.count(name)) shapes_[name] = dims;
    random_count_ = a.samples > 0 ? a.samples : 1;
    std::string shapes_text;
    for (const auto& in : g.inputs) {
      const TensorType* type = g.type_of(in);
      if (!type || type->dtype == DType::kUndefined)
        throw Error(ErrorCode::kInvalidArgument, "input '" + in + "' has no tensor type; give it with --input");
      dims_[in] = resolve_input_shape(in, *type, shapes_, &notes_);
      shapes_text += (shapes_text.empty() ? "" : ", ") + in + " " + std::string(dtype_name(type->dtype)) + "[" +
                     shape_to_string(dims_[in]) + "]";
    }
    description_ = "random (seed " + std::to_string(a.seed) + "): " + shapes_text;
  }

  const std::string& notes() const { return notes_; }
  // Samples of a partial last calibration batch that were left out.
  int64_t skipped() const { return skipped_; }
  const std::string& description() const { return description_; }

  // The next set of inputs; false when done.
  bool next(TensorMap& out) {
    const Graph& g = model_.graph;
    out.clear();
    if (calib_) {
      quant::TensorMap batch;
      while (calib_->next_batch(batch)) {
        // A smaller last batch would fall outside an engine's static profile: left out (noted).
        int64_t rows = a_.batch;
        for (const auto& [name, t] : batch) rows = t.rank() > 0 ? std::min(rows, t.dim(0)) : rows;
        if (a_.batch > 1 && index_ > 0 && rows < a_.batch) {
          skipped_ += rows;
          continue;
        }
        for (auto& [name, t] : batch) out[name] = std::move(t);
        ++index_;
        return true;
      }
      return false;
    }
    if (!files_.empty() || !a_.inputs.empty()) {
      if (index_ >= files_.size()) return false;
      out = files_[index_++];
      return true;
    }
    if (index_ >= static_cast<size_t>(random_count_)) return false;
    for (size_t i = 0; i < g.inputs.size(); ++i) {
      const std::string& in = g.inputs[i];
      // Sample 0 uses the seeds `kiln run --seed S` uses, so its inputs are the same.
      const uint64_t seed = a_.seed + index_ * g.inputs.size() + i;
      out[in] = random_tensor(g.type_of(in)->dtype, dims_.at(in), seed, a_.int_range[0], a_.int_range[1]);
    }
    ++index_;
    return true;
  }

 private:
  // Each FILE.npz (named inputs; other members such as expected outputs are ignored) or FILE.npy
  // (the single input) is one set of inputs; NAME=FILE.npy items together make one more.
  void load_files(const Graph& g) {
    TensorMap named;
    for (const auto& spec : a_.inputs) {
      auto eq = spec.find('=');
      if (eq != std::string::npos) {
        const std::string name = spec.substr(0, eq);
        auto tensors = read_tensor_file(spec.substr(eq + 1));
        if (tensors.size() != 1)
          throw Error(ErrorCode::kInvalidArgument, "--input " + spec + ": expected a file holding one tensor, found " +
                                                       std::to_string(tensors.size()));
        named[name] = std::move(tensors.front().second);
        continue;
      }
      TensorMap sample;
      auto tensors = read_tensor_file(spec);
      if (spec.size() >= 4 && spec.compare(spec.size() - 4, 4, ".npy") == 0) {
        if (g.inputs.size() != 1)
          throw Error(ErrorCode::kInvalidArgument, "--input " + spec + ": a .npy file feeds a model with one input; " +
                                                       "this one has " + std::to_string(g.inputs.size()) + " (" +
                                                       join(g.inputs) + "): use NAME=FILE.npy or a .npz");
        sample[g.inputs[0]] = std::move(tensors.front().second);
      } else {
        for (auto& [name, t] : tensors)
          if (std::find(g.inputs.begin(), g.inputs.end(), name) != g.inputs.end()) sample[name] = std::move(t);
        if (sample.empty())
          throw Error(ErrorCode::kInvalidArgument, "--input " + spec + ": no member is named after an input of " +
                                                       a_.model + " (inputs: " + join(g.inputs) + ")");
      }
      check_inputs(g, sample);
      files_.push_back(std::move(sample));
    }
    if (!named.empty()) {
      check_inputs(g, named);
      files_.push_back(std::move(named));
    }
    if (a_.samples > 0 && files_.size() > static_cast<size_t>(a_.samples))
      files_.resize(static_cast<size_t>(a_.samples));
    description_ = std::to_string(files_.size()) + " input set" + (files_.size() == 1 ? "" : "s") + " from --input";
  }

  const CompareArgs& a_;
  const Model& model_;
  std::unique_ptr<quant::FileCalibrator> calib_;
  std::vector<TensorMap> files_;
  ShapeMap shapes_;
  std::map<std::string, std::vector<int64_t>> dims_;
  int64_t random_count_ = 0;
  size_t index_ = 0;
  int64_t skipped_ = 0;
  std::string notes_, description_;
};

Tensor dequantize(const Tensor& q, const quant::QuantizedValue& qv) {
  const std::vector<double> v = q.to_double_vector();
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>((v[i] - qv.zero_point) * qv.scale);
  return Tensor::from_vector<float>(q.shape(), out);
}

// One row of the per-layer table.
struct LayerRow {
  std::string name;            // the reference's tensor
  std::string engine_name;     // the engine's (differs for a dequantized int8 value)
  std::string op;              // the reference node producing it
  DType engine_dtype = DType::kUndefined;
  ErrorStats stats;
  std::string error;           // e.g. a shape mismatch: not compared
};

// top1: only for outputs (an intermediate's last dim is rarely a class axis).
json stats_json(const ErrorStats& s, bool top1) {
  json j = {{"max_abs", s.max_abs},       {"max_rel", s.max_rel}, {"mean_abs", s.mean_abs()},
            {"cosine", s.cosine},         {"count", s.count},     {"has_nan", s.has_nan}};
  if (top1 && s.has_top1()) j["top1"] = {{"agree", s.top1_agree}, {"total", s.top1_total}, {"rate", s.top1_rate()}};
  if (s.check_tolerance) j["tolerance_failures"] = s.tolerance_failures;
  return j;
}

std::string top1_text(const ErrorStats& s) {
  if (!s.has_top1()) return "-";
  return std::to_string(s.top1_agree) + "/" + std::to_string(s.top1_total) + " (" + fixed(100.0 * s.top1_rate(), 1) +
         "%)";
}

// Prints rows as a left-aligned table with a header.
void print_table(std::ostream& os, const std::vector<std::vector<std::string>>& rows, const std::string& indent) {
  std::vector<size_t> w;
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c) {
      if (w.size() <= c) w.push_back(0);
      w[c] = std::max(w[c], r[c].size());
    }
  for (const auto& r : rows) {
    std::string line = indent;
    for (size_t c = 0; c < r.size(); ++c) {
      line += r[c];
      if (c + 1 < r.size()) line += std::string(w[c] - r[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    os << line << "\n";
  }
}

int cmd_compare(const CompareArgs& a) {
  // The thing under test.
  bool is_engine = false;
  EngineInfo info;
  Model target = load_model_or_engine(a.target, &is_engine, nullptr, nullptr, &info);
  // The reference.
  Model ref = load_onnx(a.model);
  topological_sort(ref.graph);
  const std::vector<std::string> ref_outputs = ref.graph.outputs;

  // Same interface, or the comparison means nothing.
  {
    std::set<std::string> ti(target.graph.inputs.begin(), target.graph.inputs.end());
    std::set<std::string> ri(ref.graph.inputs.begin(), ref.graph.inputs.end());
    if (ti != ri)
      throw Error(ErrorCode::kInvalidArgument, a.target + " has inputs (" + join(target.graph.inputs) + ") but " +
                                                   a.model + " has (" + join(ref.graph.inputs) +
                                                   "): compare an engine with the model it was built from");
    for (const auto& o : ref_outputs)
      if (std::find(target.graph.outputs.begin(), target.graph.outputs.end(), o) == target.graph.outputs.end())
        throw Error(ErrorCode::kInvalidArgument, a.target + " has no output '" + o + "' of " + a.model + " (outputs: " +
                                                     join(target.graph.outputs) + ")");
  }

  // Per-layer: the reference's float tensors in topological order, and which engine values to read.
  std::vector<LayerRow> layers;
  std::set<std::string> layer_names;
  if (a.per_layer) {
    Model typed = ref;
    InferOptions o;
    o.evaluator = reference::constant_evaluator();
    infer_types(typed, o);
    for (const Node& n : typed.graph.nodes)
      for (const auto& o : n.outputs) {
        if (o.empty() || layer_names.count(o)) continue;
        const TensorType* t = typed.graph.type_of(o);
        if (t && t->dtype != DType::kUndefined && !is_float(t->dtype)) continue;
        LayerRow row;
        row.name = o;
        row.op = n.op_type;
        layers.push_back(std::move(row));
        layer_names.insert(o);
      }
  }
  // Values of the thing under test to read back: the reference's tensors, and 8-bit values whose
  // source is one of them. An engine exposes them after its build; an ONNX model is built with them
  // as graph outputs (as Polygraphy marks all outputs), so no fusion hides them.
  CpuRunner::Want expose;
  if (a.per_layer) {
    std::set<std::string> quantized;
    for (const auto& [name, qv] : quant::quantized_values(target))
      if (layer_names.count(qv.source)) quantized.insert(name);
    expose = [&layer_names, quantized](const std::string& v) {
      return layer_names.count(v) != 0 || quantized.count(v) != 0;
    };
  }

  SampleSource source(a, ref, is_engine, info);
  std::cerr << source.notes();

  std::unique_ptr<Runner> under_test;
  if (is_engine) {
    under_test = std::make_unique<CpuRunner>(std::move(target), std::move(info), a.threads, expose);
  } else {
    if (a.per_layer) mark_outputs(target, expose);
    under_test = std::make_unique<CpuRunner>(std::move(target), a.threads);
  }
  std::unique_ptr<Runner> reference_side;
  std::string reference_text;
  if (a.reference == "cpu") {
    Model m = ref;
    // Every reference tensor is read back, which only keeps the fp32 reference closer to the model
    // as written.
    if (a.per_layer) mark_outputs(m, [&](const std::string& v) { return layer_names.count(v) != 0; });
    reference_side = std::make_unique<CpuRunner>(std::move(m), a.threads);
    reference_text = "cpu backend, fp32 build";
  } else {
    reference_side = std::make_unique<ReferenceRunner>(ref, a.per_layer);
    reference_text = "reference executor";
  }

  std::map<std::string, ErrorStats> out_stats;
  for (const auto& o : ref_outputs) {
    ErrorStats s;
    if (a.has_atol || a.has_rtol) s.set_tolerance(a.atol, a.rtol);
    out_stats[o] = s;
  }
  std::map<std::string, quant::QuantizedValue> qvalues;  // of the engine model that ran
  const Model* qvalues_of = nullptr;
  int64_t runs = 0, rows = 0;
  TensorMap inputs;
  while (source.next(inputs)) {
    TensorMap want = reference_side->run(inputs);
    TensorMap got = under_test->run(inputs);
    ++runs;
    if (!inputs.empty()) {
      const Tensor& first = inputs.begin()->second;
      rows += first.rank() > 0 ? first.dim(0) : 1;
    }
    for (const auto& o : ref_outputs) {
      auto g = got.find(o), w = want.find(o);
      if (g == got.end() || w == want.end())
        throw Error(ErrorCode::kInternal, "output '" + o + "' was not produced");
      try {
        out_stats[o].add(g->second, w->second);
      } catch (const Error& e) {
        throw Error(e.code(), "output '" + o + "': " + e.what());
      }
    }
    if (!a.per_layer) continue;
    if (under_test->engine_model() != qvalues_of) {
      qvalues_of = under_test->engine_model();
      qvalues = qvalues_of ? quant::quantized_values(*qvalues_of) : decltype(qvalues){};
    }
    std::map<std::string, std::string> by_source;  // reference name -> engine int8 value
    for (const auto& [name, qv] : qvalues)
      if (got.count(name)) by_source.emplace(qv.source, name);
    for (LayerRow& row : layers) {
      auto w = want.find(row.name);
      if (w == want.end() || !is_float(w->second.dtype()) || !row.error.empty()) continue;
      // The engine's own float tensor of that name, else an int8 one read back as floats.
      Tensor engine_value;
      auto g = got.find(row.name);
      if (g != got.end() && !dtype_is_8bit(g->second.dtype())) {
        row.engine_name = row.name;
        engine_value = g->second;
      } else if (g != got.end() && qvalues.count(row.name)) {
        row.engine_name = row.name;
        engine_value = dequantize(g->second, qvalues.at(row.name));
      } else if (auto s = by_source.find(row.name); s != by_source.end()) {
        row.engine_name = s->second;
        engine_value = dequantize(got.at(s->second), qvalues.at(s->second));
      } else {
        continue;  // fused away, or an 8-bit value of unknown scale
      }
      row.engine_dtype = got.at(row.engine_name).dtype();
      try {
        row.stats.add(engine_value, w->second);
      } catch (const Error& e) {
        row.error = e.what();
      }
    }
  }
  if (runs == 0)
    throw Error(ErrorCode::kInvalidArgument, "no inputs to compare: " + source.description() + " is empty");
  if (source.skipped() > 0)
    std::cerr << "note: the last " << source.skipped() << " calibration samples (a partial batch of --batch " << a.batch
              << ") were not compared\n";

  // Checks on the outputs.
  std::vector<std::string> failures;
  for (const auto& o : ref_outputs) {
    const ErrorStats& s = out_stats.at(o);
    if (s.has_nan) failures.push_back("output '" + o + "': NaN in the output or the reference");
    if (s.check_tolerance && s.tolerance_failures > 0)
      failures.push_back("output '" + o + "': " + std::to_string(s.tolerance_failures) + " of " +
                         std::to_string(s.count) + " elements outside |a-b| <= atol + rtol*|b| (atol " +
                         sci(a.atol) + ", rtol " + sci(a.rtol) + "; max abs error " + sci(s.max_abs) + ")");
    if (a.has_min_cosine && !(s.cosine >= a.min_cosine))
      failures.push_back("output '" + o + "': cosine " + cos_text(s.cosine) + " < --min-cosine " +
                         cos_text(a.min_cosine));
  }

  // Per-layer: the first tensor where the error jumps.
  const double layer_cosine = a.has_min_cosine ? a.min_cosine : kDefaultLayerCosine;
  int first_bad = -1;
  std::string first_reason;
  int compared = 0;
  {
    const LayerRow* prev = nullptr;
    for (size_t i = 0; i < layers.size(); ++i) {
      const LayerRow& r = layers[i];
      if (r.stats.count == 0 || !r.error.empty()) continue;
      ++compared;
      if (first_bad >= 0) continue;
      const ErrorStats& s = r.stats;
      if (s.has_nan) {
        first_reason = "NaN";
      } else if (s.cosine < layer_cosine) {
        first_reason = "cosine " + cos_text(s.cosine) + " < " + cos_text(layer_cosine);
      } else if (prev && s.max_abs > kJumpFactor * prev->stats.max_abs && s.normalized_max_abs() > kJumpNoiseFloor) {
        first_reason = "max abs error " + sci(s.max_abs) + " > " + fixed(kJumpFactor, 0) + "x the previous tensor's " +
                       sci(prev->stats.max_abs);
      }
      if (!first_reason.empty()) first_bad = static_cast<int>(i);
      prev = &r;
    }
  }

  const bool passed = failures.empty();
  const std::string under_test_text =
      is_engine ? "engine" : "model, built for the cpu backend with the default config";
  if (a.json) {
    json j;
    j["under_test"] = {{"path", a.target}, {"kind", is_engine ? "engine" : "model"}};
    j["reference"] = {{"path", a.model}, {"kind", a.reference}};
    j["inputs"] = source.description();
    j["runs"] = runs;
    j["samples"] = rows;
    json checks = json::object();
    if (a.has_atol || a.has_rtol) {
      checks["atol"] = a.atol;
      checks["rtol"] = a.rtol;
    }
    if (a.has_min_cosine) checks["min_cosine"] = a.min_cosine;
    j["checks"] = checks;
    j["outputs"] = json::array();
    for (const auto& o : ref_outputs) {
      json e = stats_json(out_stats.at(o), true);
      e["name"] = o;
      j["outputs"].push_back(e);
    }
    if (a.per_layer) {
      j["per_layer"] = json::array();
      for (size_t i = 0; i < layers.size(); ++i) {
        const LayerRow& r = layers[i];
        if (r.stats.count == 0 && r.error.empty()) continue;
        json e = r.error.empty() ? stats_json(r.stats, false) : json::object();
        e["name"] = r.name;
        e["op"] = r.op;
        e["engine_tensor"] = r.engine_name;
        e["engine_dtype"] = std::string(dtype_name(r.engine_dtype));
        e["dequantized"] = r.engine_name != r.name || dtype_is_8bit(r.engine_dtype);
        if (!r.error.empty()) e["error"] = r.error;
        e["first_divergence"] = static_cast<int>(i) == first_bad;
        j["per_layer"].push_back(e);
      }
      j["per_layer_compared"] = compared;
      j["per_layer_missing"] = static_cast<int>(layers.size()) - compared;
      j["first_divergence"] =
          first_bad >= 0 ? json{{"name", layers[first_bad].name}, {"reason", first_reason}} : json(nullptr);
    }
    j["failures"] = failures;
    j["passed"] = passed;
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << "under test: " << a.target << " (" << under_test_text << ")\n";
    std::cout << "reference:  " << a.model << " (" << reference_text << ")\n";
    std::cout << "inputs:     " << source.description() << "; " << runs << " run" << (runs == 1 ? "" : "s") << ", "
              << rows << " sample" << (rows == 1 ? "" : "s") << "\n";
    std::vector<std::vector<std::string>> table = {{"output", "max_abs", "max_rel", "mean_abs", "cosine", "top1"}};
    for (const auto& o : ref_outputs) {
      const ErrorStats& s = out_stats.at(o);
      table.push_back({o, sci(s.max_abs), sci(s.max_rel), sci(s.mean_abs()), cos_text(s.cosine), top1_text(s)});
    }
    print_table(std::cout, table, "  ");
    if (a.per_layer) {
      std::cout << "per layer (reference order; " << compared << " of " << layers.size()
                << " reference tensors found in the "
                << (is_engine ? "engine" : "model under test, built with them as outputs") << "; cosine limit "
                << cos_text(layer_cosine) << "):\n";
      std::vector<std::vector<std::string>> lt = {{"#", "tensor", "op", "engine", "cosine", "max_abs", ""}};
      int k = 0;
      for (size_t i = 0; i < layers.size(); ++i) {
        const LayerRow& r = layers[i];
        if (r.stats.count == 0 && r.error.empty()) continue;
        std::string engine = std::string(dtype_name(r.engine_dtype));
        if (r.engine_name != r.name) engine += " " + r.engine_name;
        if (r.engine_name != r.name || dtype_is_8bit(r.engine_dtype)) engine += " (dequantized)";
        std::string mark = static_cast<int>(i) == first_bad ? "<- first divergence: " + first_reason : "";
        if (!r.error.empty())
          lt.push_back({std::to_string(++k), r.name, r.op, engine, "-", "-", "not compared: " + r.error});
        else
          lt.push_back(
              {std::to_string(++k), r.name, r.op, engine, cos_text(r.stats.cosine), sci(r.stats.max_abs), mark});
      }
      print_table(std::cout, lt, "  ");
      if (first_bad >= 0)
        std::cout << "first divergence: '" << layers[first_bad].name << "' (" << layers[first_bad].op << "): "
                  << first_reason << "\n";
      else
        std::cout << "first divergence: none\n";
    }
    std::vector<std::string> checks;
    if (a.has_atol || a.has_rtol) checks.push_back("|a-b| <= " + sci(a.atol) + " + " + sci(a.rtol) + "*|b|");
    if (a.has_min_cosine) checks.push_back("cosine >= " + cos_text(a.min_cosine));
    std::cout << "checks:     " << (checks.empty() ? std::string("none given (only NaNs fail)") : join(checks)) << "\n";
    for (const auto& f : failures) std::cout << "FAILED: " << f << "\n";
    std::cout << (passed ? "PASSED" : "FAILED") << "\n";
  }
  return passed ? 0 : 1;
}

}  // namespace

// Registers `kiln compare` on `app`; *run is set to the function that runs it once parsed.
CLI::App* add_compare_command(CLI::App& app, std::function<int()>* run) {
  auto args = std::make_shared<CompareArgs>();
  auto* sub = app.add_subcommand("compare",
                                 "Compare an engine (or model) against the FP32 reference of its ONNX model: "
                                 "per-output errors, cosine, top-1, tolerance checks");
  sub->add_option("engine", args->target, "Kiln engine or ONNX model under test")->required();
  sub->add_option("--model,-m", args->model, "The ONNX model of the FP32 reference")->required();
  auto* input = sub->add_option("--input,-i", args->inputs,
                                "FILE.npz of named inputs or FILE.npy of the single input: one set of inputs each; "
                                "NAME=FILE.npy items make one set together (repeatable)");
  auto* calib =
      sub->add_option("--calib", args->calib, "Calibration data: a .npz or a folder of .npy/.npz (as kiln build)");
  calib->excludes(input);
  sub->add_option("--samples", args->samples,
                  "Sets of inputs to compare (default: 1 random, every calibration batch, every --input)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--batch", args->batch, "Samples per calibration batch (default 1)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  sub->add_option("--shapes", args->shapes, "Shapes of generated inputs: NAME:1x3x224x224,...");
  sub->add_option("--seed", args->seed, "Seed of generated inputs (set k, input i uses seed + k*inputs + i)");
  sub->add_option("--int-range", args->int_range, "Range [LO,HI) of generated integer inputs")
      ->expected(2)
      ->delimiter(',');
  auto* atol = sub->add_option("--atol", args->atol, "Fail when |a-b| > atol + rtol*|b| for an element")
                   ->check(CLI::NonNegativeNumber);
  auto* rtol = sub->add_option("--rtol", args->rtol, "Relative tolerance of that check (default 0)")
                   ->check(CLI::NonNegativeNumber);
  auto* min_cos =
      sub->add_option("--min-cosine", args->min_cosine, "Fail when an output's cosine similarity is below this")
          ->check(CLI::Range(-1.0, 1.0));
  sub->add_flag("--per-layer", args->per_layer,
                "Also compare every intermediate tensor both graphs have; mark the first where the error jumps");
  sub->add_option("--reference", args->reference,
                  "reference (default: the reference executor) or cpu (the fp32 model built for the cpu backend)")
      ->check(CLI::IsMember({"reference", "cpu"}));
  sub->add_option("--threads", args->threads, "Threads of the cpu backend (default: the engine's, else the cores)")
      ->check(CLI::Range(1, 4096));
  sub->add_flag("--json", args->json, "Print JSON");
  sub->footer(
      "Per output: max abs error |a-b|, max rel error |a-b|/max(|b|,1e-6), mean abs error, cosine similarity over\n"
      "all samples, and top-1 agreement (argmax over the last dim per row, when it is > 1); a = under test,\n"
      "b = reference. Inputs: --input files, else --calib batches (up to --samples), else --samples seeded random\n"
      "sets. Exit 0 when every check passes, 1 when one fails (--atol/--rtol elementwise, --min-cosine; a NaN\n"
      "always fails) or on errors, 2 on bad flags.\n"
      "--per-layer reads back every tensor of the reference that the thing under test also has (int8 tensors\n"
      "dequantized and compared to their source; an ONNX model under test is built with those tensors as outputs)\n"
      "and marks the first whose cosine falls below --min-cosine (default 0.999) or whose max abs error grows more\n"
      "than 10x over the previous one (and above 1e-4 of the tensor's scale).");
  *run = [args, atol, rtol, min_cos] {
    args->has_atol = atol->count() > 0;
    args->has_rtol = rtol->count() > 0;
    args->has_min_cosine = min_cos->count() > 0;
    return cmd_compare(*args);
  };
  return sub;
}

}  // namespace kiln::cli
