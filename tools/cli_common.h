// Helpers shared by the kiln subcommands: shape arguments, input filling and checking, summaries,
// and the CPU engine that `run` and `bench` execute.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/gpu/gpu_program.h"
#include "backends/reference/executor.h"
#include "engine/engine_file.h"
#include "runtime/runtime.h"

namespace kiln::cli {

// Parses "x:1x3x224x224,mask:1x128" into name -> dims. Throws kInvalidArgument naming `flag` and
// the bad part.
std::map<std::string, std::vector<int64_t>> parse_shapes(const std::string& spec, const std::string& flag = "--shapes");

// --layer-precision "NAME:PRECISION,...": layer -> precision. An item without both parts throws
// kInvalidArgument "--layer-precision: expected <form>, got 'ITEM'". Names and precisions are
// checked by the caller (they differ between build and quantize).
std::map<std::string, std::string> parse_layer_precision(const std::string& spec, const std::string& form);

// The calibration batch when --calib-batch is not given: profile 0's opt batch (the optimized graph
// may be specialized to it), else the first input's static batch, else 8.
int64_t default_calib_batch(const Model& model, const std::vector<OptimizationProfile>& profiles);

// Throws kInvalidArgument when a name in `shapes` is not an input of `graph` (listing the inputs).
void check_shape_names(const Graph& graph, const std::map<std::string, std::vector<int64_t>>& shapes,
                       const std::string& flag, const std::string& model_path);

// Resolves an input's concrete shape: --shapes first, then the declared static dims; symbolic
// dims without a --shapes value become 1 (and `note` says so).
std::vector<int64_t> resolve_input_shape(const std::string& name, const TensorType& type,
                                         const std::map<std::string, std::vector<int64_t>>& shapes, std::string* note);

// Checks inputs against the graph's declared inputs (names, dtypes, ranks, static and symbolic
// dims) with the reference executor's messages, so every backend reports a mismatch the same way.
void check_inputs(const Graph& graph, const reference::TensorMap& inputs);

// Seeded random tensor: floats uniform in [-1, 1), integers uniform in [int_lo, int_hi), bools 0/1.
Tensor random_tensor(DType dtype, const std::vector<int64_t>& shape, uint64_t seed, int64_t int_lo, int64_t int_hi);

// tools/cmd_build.cpp: loads an ONNX model or a Kiln engine file, told apart by the engine magic
// (never the extension). For an engine, *is_engine is set and, when given, *engine_text and
// *engine_json (a JSON object as text) describe its header, target, profiles, memory figures and
// per-node tactics, and *info receives its EngineInfo.
Model load_model_or_engine(const std::string& path, bool* is_engine = nullptr, std::string* engine_text = nullptr,
                           std::string* engine_json = nullptr, EngineInfo* info = nullptr);

// tools/cmd_build.cpp: the CPU engine `run` and `bench` execute, from an engine file or built in
// memory from an ONNX model.
struct CpuEngine {
  std::shared_ptr<EngineRuntime> runtime;
  size_t nodes_before = 0;            // before the passes (an engine file: its node count)
  std::vector<std::string> pass_log;  // in-memory builds only
  double pass_ms = 0, tactic_ms = 0;  // in-memory builds only
};
// An engine file's optimized model and info; threads > 0 overrides the engine's thread count.
CpuEngine cpu_engine_from_file(Model optimized, EngineInfo info, int threads);
// Builds an ONNX model in memory with `shapes` (every input) as its one static profile, tactics timed.
CpuEngine cpu_engine_from_onnx(Model model, const std::map<std::string, std::vector<int64_t>>& shapes, int opt_level,
                               int threads);

// tools/cmd_build.cpp: the GPU program `run` and `bench` execute on GPU `gpu_index`. From a GPU
// engine file: checked against the device and compiled from its recorded tactics (nothing timed);
// `shapes` must be the engine's and `precision` ("" or the engine's) cannot change. From an ONNX
// model (or a CPU engine's graph, which is not optimized again): built in memory at `shapes`,
// tactics timed, in `precision` ("": fp16) within `workspace_limit`.
struct GpuRun {
  std::shared_ptr<const gpu::GpuProgram> program;
  size_t nodes_before = 0, nodes_after = 0;
  double pass_ms = 0, compile_ms = 0;
  bool gpu_engine = false;    // from a GPU engine file
  bool tactics_used = false;  // a GPU engine's recorded tactics were used (nothing timed)
};
// An FP8 program built from an ONNX model (not an engine) calibrates its GEMM inputs on
// `fp8_calib_inputs` (one batch of the program's shapes: the inputs `kiln run` and `kiln bench`
// run), MinMax; null for the other precisions.
GpuRun gpu_program_for(Model model, const EngineInfo* engine, const std::map<std::string, std::vector<int64_t>>& shapes,
                       int gpu_index, const std::string& precision, size_t workspace_limit, int opt_level,
                       const std::map<std::string, Tensor>* fp8_calib_inputs = nullptr);

// "48 of 62 GEMMs in FP8": how many of a GPU program's GEMMs run in FP8 (precision fp8 chooses per
// GEMM, by timing).
std::string fp8_gemm_summary(const gpu::GpuProgram& program);
// "52 of 53 convolutions in INT8": the same for precision int8.
std::string int8_conv_summary(const gpu::GpuProgram& program);

// "f32[1x1000] min=-2.1 max=3.4 mean=0.01"
std::string summarize(const Tensor& t);
// A tensor name as a file name stem: characters outside [A-Za-z0-9._-] become '_' ("/a/Relu" ->
// "_a_Relu"), and "", "." and ".." become "_".
std::string safe_file_stem(const std::string& name);
// A value's type as JSON: {"dtype": "float32" or null, "shape": [1, "batch", "?", ...] or null}
// (`kiln inspect --json`, `kiln check --json`).
nlohmann::json type_json(const TensorType* t);

// Bytes as MiB with 3 decimals: "1.250 MiB".
std::string mib(uint64_t bytes);
// A number with `digits` decimals.
std::string fixed(double v, int digits = 3);

}  // namespace kiln::cli
