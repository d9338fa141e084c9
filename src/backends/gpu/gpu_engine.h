// GPU engine files: what `kiln build --device cuda` writes and `kiln run/bench --device cuda` load.
//
// A GPU engine is a Kiln engine file (src/engine/engine_file.h) whose target backend is "cuda". It
// holds the graph optimized for one set of static input shapes, the weights (FP32, converted to the
// engine's precision on upload), the tactic of every tuned kernel (cuBLASLt algorithm, cuDNN
// candidate, Kiln's depthwise kernel or a 1x1-convolution GEMM) under its timing-cache key, and
// the target it was built for: the GPU, its SM and the CUDA runtime, cuBLASLt and cuDNN versions.
//
// Loading checks the device first (gpu_engine_mismatch): an engine runs on a GPU of the same SM
// with the same library versions, and its program is compiled from the recorded tactics without
// timing anything. An engine built with hardware_compatible runs on any GPU of SM 8.0 or newer:
// where the target differs, the recorded tactics are not used and the tuned kernels are timed
// again at load (slower to load, never a kernel that the GPU cannot run).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backends/gpu/gpu_build.h"
#include "backends/gpu/gpu_program.h"
#include "engine/engine_file.h"

namespace kiln::gpu {

struct GpuEngineOptions {
  Precision precision = Precision::kFP16;
  size_t workspace_limit = size_t{1} << 30;
  bool hardware_compatible = false;
  int opt_level = 3;
  cpu::TimingCache* timing_cache = nullptr;  // consulted and filled (its target: gpu_target())
  std::vector<std::string>* log = nullptr;
  const Fp8Calibration* fp8 = nullptr;  // precision fp8 or int8: the calibration data (the engine keeps the scales)
};

struct GpuEngineBuild {
  Model optimized;  // what the engine file stores
  EngineInfo info;  // target, shapes and tactics, ready for save_engine()
  std::shared_ptr<const GpuProgram> program;
  size_t nodes_before = 0, nodes_after = 0;
  double pass_ms = 0, compile_ms = 0;
  size_t fp8_gemms = 0, int8_convs = 0, int8_gemms = 0;
  double calib_ms = 0;
  std::optional<quant::GuardResult> guard;  // INT8 with the accuracy guard on
  double guard_ms = 0;
};

// Optimizes `model` for `shapes` (every input's full shape), compiles it on GPU `device_index`
// (timing what the cache does not hold) and records what an engine file needs.
GpuEngineBuild build_gpu_engine(Model model, const ShapeMap& shapes, int device_index, const GpuEngineOptions& options);

// Why a GPU engine cannot run on `device` ("" when it can): another SM, or other CUDA runtime,
// cuBLASLt or cuDNN versions (each difference named), or an SM below 8.0 for a hardware-compatible
// engine.
std::string gpu_engine_mismatch(const EngineInfo& info, const DeviceProps& device);

struct LoadedGpuEngine {
  std::shared_ptr<const GpuProgram> program;
  Precision precision = Precision::kFP16;
  ShapeMap shapes;
  bool tactics_used = false;  // false: a hardware-compatible engine on another target (re-timed)
  double compile_ms = 0;
};

// Compiles a loaded GPU engine on GPU `device_index`. Throws kiln::Error: kInvalidArgument when
// `info` is not a GPU engine or is incomplete, kUnsupported (with gpu_engine_mismatch's reason)
// when the device differs. `weights` and `log` as in CompileOptions.
LoadedGpuEngine load_gpu_engine(const Model& optimized, const EngineInfo& info, int device_index,
                                std::shared_ptr<WeightPool> weights = nullptr, std::vector<std::string>* log = nullptr);

// True for an engine whose target backend is "cuda".
bool is_gpu_engine(const EngineInfo& info);

}  // namespace kiln::gpu
