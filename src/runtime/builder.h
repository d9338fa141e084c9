// The builder: ONNX model -> optimized graph -> CPU tactics timed at the profile's opt shapes ->
// an engine (src/engine/engine_file.h). The public TensorRT-style API (include/kiln) and
// `kiln build` are thin layers over build_engine().
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "backends/cpu/program.h"
#include "engine/engine_file.h"
#include "quant/accuracy_guard.h"
#include "quant/calibration.h"

namespace kiln {

// Reduced precision (kiln build --int8 --calib ...). Explicit Q/DQ models need none of this: their
// Q/DQ pairs are fused into int8 kernels by the standard passes.
struct PrecisionConfig {
  // Allowed reduced precisions; they combine ("best available"): INT8 where calibrated layers can
  // run it, then BF16 for the other convolutions and matmuls, FP32 for everything else (norms,
  // softmax, reductions, elementwise). FP16 has no CPU kernels: its layers stay FP32 (with a note).
  bool int8 = false;
  bool bf16 = false;
  bool fp16 = false;
  // Per-layer overrides by node name of the original model: "fp32", "bf16", "fp16" or "int8" (with
  // constraints "obey", a layer that cannot run in the precision asked for is an error; with
  // "prefer" it falls back to the best allowed one).
  std::map<std::string, std::string> layer_precision;
  std::string constraints = "prefer";         // "prefer" or "obey"
  quant::Calibrator* calibrator = nullptr;    // calibration data
  quant::CalibMethodSpec calib_method;
  std::string calib_cache;                    // read when the file exists, else written after calibrating
  std::function<void(size_t samples)> calib_progress;
  // The accuracy guard (src/quant/accuracy_guard.h): off when accuracy_budget < 0.
  double accuracy_budget = -1;
  quant::AccuracyMetric accuracy_metric = quant::AccuracyMetric::kAuto;
  quant::Calibrator* validation = nullptr;  // default: the calibration data
  size_t validation_samples = 64;
  std::function<void(const std::string&)> guard_progress;
};

struct BuildConfig {
  int opt_level = 3;                         // pass level 0-5 (0: no passes)
  std::set<std::string> disabled_passes;     // pass names to skip
  // Optimization profiles. Each gives min/opt/max for inputs with dynamic dims; an input absent
  // from a profile must be static. Empty: every input must be static.
  std::vector<OptimizationProfile> profiles;
  int threads = 0;                           // 0: the core count
  size_t workspace_bytes = 0;                // per-kernel scratch limit; 0: no limit
  bool time_tactics = true;                  // false: the first supporting tactic per node
  cpu::TimingCache* timing_cache = nullptr;  // consulted and filled
  std::function<void(size_t done, size_t total)> progress;
  std::vector<std::string>* log = nullptr;   // verbose lines (tactic timings)
  PrecisionConfig precision;
};

struct BuildResult {
  Model model;                  // optimized, types inferred
  EngineInfo info;              // tactics, profiles, target, memory figures
  std::shared_ptr<const cpu::Program> program;  // compiled at profile 0's opt shapes
  size_t nodes_before = 0;
  std::vector<std::string> pass_log;
  double pass_ms = 0, tactic_ms = 0, calib_ms = 0, guard_ms = 0;
  std::vector<std::string> precision_log;  // calibration source, int8 layers, layers kept in float
};

// Checks the profiles against the model's inputs: ranks, static dims, 0 < min <= opt <= max.
// Throws kInvalidArgument naming the input and profile.
void validate_profiles(const Model& model, const std::vector<OptimizationProfile>& profiles);

// The opt shapes of a profile, completed with the static shapes of the other inputs.
cpu::ShapeMap opt_shapes(const Model& model, const OptimizationProfile* profile);

BuildResult build_engine(Model model, const BuildConfig& config);

}  // namespace kiln
