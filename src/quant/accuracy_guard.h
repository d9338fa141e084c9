// The INT8 accuracy guard (kiln build --int8 --accuracy-budget 1%): measures how sensitive each
// int8-capable layer is (the end-to-end metric when only that layer is INT8), then keeps the most
// sensitive layers in floating point until the whole model is within the budget.
//
// The metric compares the INT8 engine's outputs with the FP32 model's on a validation set:
// top-1 agreement for classifiers (every output is [N, classes]), otherwise the smallest cosine
// similarity over the outputs. Within budget means metric >= 1 - budget.
#pragma once
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "quant/calibration.h"
#include "quant/qdq.h"

namespace kiln::quant {

enum class AccuracyMetric { kAuto, kTop1, kCosine };
AccuracyMetric parse_accuracy_metric(const std::string& text);  // "auto", "top1", "cosine"

// "1%", "0.5%" or a fraction "0.01"; must be in [0, 1). Throws kInvalidArgument.
double parse_accuracy_budget(const std::string& text);

struct GuardOptions {
  double budget = 0.01;
  AccuracyMetric metric = AccuracyMetric::kAuto;
  size_t max_samples = 64;  // validation samples used (0: all)
  int threads = 0;
  std::function<void(const std::string&)> progress;  // one line per evaluation
  // Applied to each candidate graph after the INT8 rewrite, so layers kept out of INT8 are
  // evaluated in the precision the engine will give them (BF16 when --bf16 is on).
  std::function<void(Model&)> finalize;
};

struct LayerSensitivity {
  std::string layer;      // node name in the optimized graph
  std::string op;         // FusedConv, FusedMatMul, MatMul
  double metric = 0;      // the model's metric with only this layer in INT8 (-1: not measured)
  bool int8 = true;       // the guard's decision
};

struct GuardResult {
  std::string metric_name;             // "top-1 agreement" or "cosine"
  double metric = 0;                   // with the chosen precisions
  double all_int8_metric = 0;          // with every candidate layer in INT8
  bool within_budget = false;          // the chosen precisions meet the budget
  std::set<std::string> keep_float;    // layers the guard keeps in floating point
  std::vector<LayerSensitivity> layers;  // most sensitive first
  size_t samples = 0;
  int evaluations = 0;
};

// `optimized` is the FP32 optimized graph; `base` carries user-forced float layers (never INT8).
GuardResult accuracy_guard(const Model& optimized, const CalibrationTable& table, const Int8Options& base,
                           Calibrator& validation, const GuardOptions& options);

// The pieces of the guard that do not depend on the backend (the GPU's INT8 guard uses them too).
using GuardOutputs = std::vector<TensorMap>;  // per validation batch: the graph outputs by name
struct GuardLayer {
  std::string name;  // node name in the optimized graph
  std::string op;
};
// Reads the validation batches (rewinding first) until max_samples samples (0: all). Throws
// kInvalidArgument when there is none.
std::vector<TensorMap> read_validation(Calibrator& validation, size_t max_samples);
// `model` (FP32) on every batch on the CPU: the reference the guard compares with.
GuardOutputs run_fp32(Model model, const std::vector<TensorMap>& batches, int threads);
// The guard's search over `layers` (graph order): evaluates run(keep_float) against `reference`
// with every layer in INT8, then (when that misses the budget) each layer alone in INT8, then the
// fewest most sensitive layers kept float that meet it. `run` gives the outputs of the model with
// the named layers kept in floating point and the other layers in INT8. Fills everything but
// `samples`. Throws kInvalidArgument when the metric is top1 and the outputs are not classifiers'.
GuardResult guard_search(const std::vector<GuardLayer>& layers, const GuardOutputs& reference,
                         const std::function<GuardOutputs(const std::set<std::string>& keep_float)>& run,
                         const GuardOptions& options);

// The per-layer report the build prints; `float_name`: the precision kept layers run in.
std::string format_guard_report(const GuardResult& r, double budget, const std::string& float_name = "fp32");

}  // namespace kiln::quant
