// The INT8 accuracy guard: per-layer sensitivity, then the fewest most-sensitive layers kept in
// floating point that bring the model within budget (see accuracy_guard.h).
#include "quant/accuracy_guard.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>

#include "backends/reference/executor.h"
#include "kiln/error.h"
#include "quant/metrics.h"
#include "runtime/runtime.h"

namespace kiln::quant {

namespace {

[[noreturn]] void invalid(const std::string& m) { throw Error(ErrorCode::kInvalidArgument, m); }

using Outputs = GuardOutputs;

// Every output's errors, accumulated over the batches.
std::map<std::string, ErrorStats> errors(const Outputs& got, const Outputs& want) {
  std::map<std::string, ErrorStats> stats;
  for (size_t b = 0; b < want.size(); ++b)
    for (const auto& [name, t] : want[b]) stats[name].add(got[b].at(name), t);
  return stats;
}

bool is_classifier(const Outputs& ref) {
  if (ref.empty() || ref[0].empty()) return false;
  for (const auto& [name, t] : ref[0])
    if (t.dtype() != DType::kF32 || t.rank() != 2 || t.dim(1) < 2) return false;
  return true;
}

// Top-1 agreement over the rows of every output; 0 when a NaN appeared.
double top1_agreement(const Outputs& got, const Outputs& want) {
  int64_t agree = 0, total = 0;
  for (const auto& [name, s] : errors(got, want)) {
    if (s.has_nan) return 0.0;
    agree += s.top1_agree;
    total += s.top1_total;
  }
  return total ? static_cast<double>(agree) / static_cast<double>(total) : 1.0;
}

// The smallest cosine similarity over the outputs; 0 when a NaN appeared.
double min_cosine(const Outputs& got, const Outputs& want) {
  double worst = 1.0;
  for (const auto& [name, s] : errors(got, want)) worst = std::min(worst, s.has_nan ? 0.0 : s.cosine);
  return worst;
}

}  // namespace

AccuracyMetric parse_accuracy_metric(const std::string& text) {
  if (text == "auto") return AccuracyMetric::kAuto;
  if (text == "top1") return AccuracyMetric::kTop1;
  if (text == "cosine") return AccuracyMetric::kCosine;
  invalid("--accuracy-metric must be auto, top1 or cosine, got '" + text + "'");
}

double parse_accuracy_budget(const std::string& text) {
  std::string s = text;
  const bool percent = !s.empty() && s.back() == '%';
  if (percent) s.pop_back();
  char* end = nullptr;
  const double v = s.empty() ? NAN : std::strtod(s.c_str(), &end);
  if (s.empty() || !end || *end != '\0' || !std::isfinite(v))
    invalid("--accuracy-budget: expected a percentage like 1% or a fraction like 0.01, got '" + text + "'");
  const double b = percent ? v / 100.0 : v;
  if (b < 0 || b >= 1) invalid("--accuracy-budget must be in [0%, 100%), got '" + text + "'");
  return b;
}

std::vector<TensorMap> read_validation(Calibrator& validation, size_t max_samples) {
  // Kept in memory: each evaluation runs them all.
  std::vector<TensorMap> batches;
  validation.reset();
  for (TensorMap b; validation.next_batch(b); b.clear()) {
    batches.push_back(b);
    if (max_samples && validation.samples_read() >= max_samples) break;
  }
  if (batches.empty()) invalid("accuracy guard: the validation data yielded no batch");
  return batches;
}

// Runs `model` on every batch through the engine runtime (a program per shape set, first
// supporting tactic per node).
GuardOutputs run_fp32(Model model, const std::vector<TensorMap>& batches, int threads) {
  InferOptions io;
  io.evaluator = reference::constant_evaluator();
  infer_types(model, io);
  Context ctx(std::make_shared<EngineRuntime>(std::move(model), EngineInfo{}, threads));
  GuardOutputs out;
  for (const auto& batch : batches) out.push_back(ctx.run(batch));
  return out;
}

GuardResult accuracy_guard(const Model& optimized, const CalibrationTable& table, const Int8Options& base,
                           Calibrator& validation, const GuardOptions& options) {
  const std::vector<TensorMap> batches = read_validation(validation, options.max_samples);
  const size_t samples = validation.samples_read();
  const Outputs reference = run_fp32(optimized, batches, options.threads);
  std::vector<GuardLayer> layers;
  std::map<std::string, std::string> op_of;
  for (const Node& n : optimized.graph.nodes) op_of[n.name] = n.op_type;
  for (const std::string& l : int8_layers(optimized, base)) layers.push_back(GuardLayer{l, op_of[l]});
  GuardResult r = guard_search(
      layers, reference,
      [&](const std::set<std::string>& keep_float) {
        Model m = optimized;
        Int8Options o = base;
        o.keep_float.insert(keep_float.begin(), keep_float.end());
        quantize_int8(m, table, o);
        if (options.finalize) options.finalize(m);
        return run_fp32(std::move(m), batches, options.threads);
      },
      options);
  r.samples = samples;
  return r;
}

GuardResult guard_search(const std::vector<GuardLayer>& candidates, const GuardOutputs& reference,
                         const std::function<GuardOutputs(const std::set<std::string>& keep_float)>& run,
                         const GuardOptions& options) {
  GuardResult r;
  const bool top1 = options.metric == AccuracyMetric::kTop1 ||
                    (options.metric == AccuracyMetric::kAuto && is_classifier(reference));
  if (top1 && !is_classifier(reference))
    invalid("--accuracy-metric top1 needs every output to be [batch, classes] float32");
  r.metric_name = top1 ? "top-1 agreement" : "cosine";
  const double target = 1.0 - options.budget;

  auto evaluate = [&](const std::set<std::string>& keep_float) {
    const Outputs got = run(keep_float);
    ++r.evaluations;
    return top1 ? top1_agreement(got, reference) : min_cosine(got, reference);
  };

  std::vector<std::string> layers;
  std::map<std::string, std::string> op_of;
  for (const GuardLayer& l : candidates) layers.push_back(l.name), op_of[l.name] = l.op;
  const std::set<std::string> all(layers.begin(), layers.end());

  r.all_int8_metric = evaluate({});
  if (options.progress) options.progress("all " + std::to_string(layers.size()) + " layers int8: " + r.metric_name +
                                         " " + std::to_string(r.all_int8_metric));
  if (r.all_int8_metric >= target) {
    // Within budget with every layer in INT8: nothing to keep in float, so the per-layer
    // sensitivities (one evaluation each) are not measured.
    for (const auto& l : layers) r.layers.push_back(LayerSensitivity{l, op_of[l], -1, true});
    r.metric = r.all_int8_metric;
    r.within_budget = true;
    return r;
  }
  // Sensitivity: only layer i in INT8.
  for (const auto& l : layers) {
    std::set<std::string> others = all;
    others.erase(l);
    LayerSensitivity s{l, op_of[l], evaluate(others), true};
    r.layers.push_back(s);
    if (options.progress) options.progress("only " + l + " int8: " + std::to_string(s.metric));
  }
  // Most sensitive (lowest metric) first; ties keep graph order.
  std::stable_sort(r.layers.begin(), r.layers.end(),
                   [](const LayerSensitivity& a, const LayerSensitivity& b) { return a.metric < b.metric; });

  // The fewest most-sensitive layers kept in float that meet the target: grow k by doubling, then
  // bisect between the last failing and the first passing k.
  auto keep_top = [&](size_t k) {
    std::set<std::string> s;
    for (size_t i = 0; i < k && i < r.layers.size(); ++i) s.insert(r.layers[i].layer);
    return s;
  };
  std::map<size_t, double> tried = {{0, r.all_int8_metric}};
  auto metric_at = [&](size_t k) {
    auto it = tried.find(k);
    if (it != tried.end()) return it->second;
    const double m = evaluate(keep_top(k));
    if (options.progress) options.progress(std::to_string(k) + " most sensitive layers kept float: " + std::to_string(m));
    return tried[k] = m;
  };
  size_t lo = 0, hi = 0;  // metric_at(lo) fails, metric_at(hi) passes
  if (metric_at(0) >= target) {
    hi = 0;
  } else {
    size_t k = 1;
    while (k < r.layers.size() && metric_at(k) < target) {
      lo = k;
      k *= 2;
    }
    hi = std::min(k, r.layers.size());
    if (hi == r.layers.size()) tried[hi] = 1.0;  // every layer float: the FP32 model itself
    while (hi - lo > 1) {
      const size_t mid = (lo + hi) / 2;
      if (metric_at(mid) >= target) hi = mid;
      else lo = mid;
    }
  }
  r.keep_float = keep_top(hi);
  r.metric = tried.count(hi) ? tried[hi] : metric_at(hi);
  r.within_budget = r.metric >= target;
  for (auto& s : r.layers) s.int8 = !r.keep_float.count(s.layer);
  return r;
}

std::string format_guard_report(const GuardResult& r, double budget, const std::string& float_name) {
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof buf, "accuracy guard: %s >= %.6g needed (budget %.4g%%), %zu validation samples\n",
                r.metric_name.c_str(), 1.0 - budget, budget * 100.0, r.samples);
  os << buf;
  std::snprintf(buf, sizeof buf, "  all int8: %.6f; chosen: %.6f with %zu of %zu layers kept in %s (%d evaluations)\n",
                r.all_int8_metric, r.metric, r.keep_float.size(), r.layers.size(), float_name.c_str(), r.evaluations);
  os << buf;
  os << "  per layer, most sensitive first (" << r.metric_name << " with only that layer in int8):\n";
  if (!r.layers.empty() && r.layers.front().metric < 0) {
    os << "  every layer int8 is within budget: per-layer sensitivities not measured\n";
    return os.str();
  }
  for (const auto& s : r.layers) {
    std::snprintf(buf, sizeof buf, "    %-6s %.6f  %-12s %s\n", s.int8 ? "int8" : float_name.c_str(), s.metric, s.op.c_str(),
                  s.layer.c_str());
    os << buf;
  }
  return os.str();
}

}  // namespace kiln::quant
