// From an ONNX model to a GPU program: type inference, the standard graph passes specialized to
// the given input shapes (so shape chains fold and attention fuses), then GpuProgram::compile on
// the chosen device. What `kiln run/bench --device cuda` and the GPU tests use.
#pragma once
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "backends/gpu/gpu_program.h"
#include "quant/accuracy_guard.h"
#include "quant/calibration.h"

namespace kiln::gpu {

// Calibration of FP8 and INT8 programs: the activations that FP8 GEMMs read get a per-tensor scale
// amax / 448, those that INT8 convolutions read and write amax / 127, from a run of the optimized
// FP32 graph on the CPU over `data`.
struct Fp8Calibration {
  quant::Calibrator* data = nullptr;  // batches of the model's inputs; those of other shapes are skipped
  quant::CalibMethodSpec method{quant::CalibMethod::kMinMax, 99.99};
  std::string source;  // where the data came from, for messages ("--calib DIR", "the generated inputs")

  // INT8 only. Convolutions (node names of the optimized graph, which keep the ONNX Conv's name)
  // kept in FP16 whatever timing says (--layer-precision NAME:fp16). An unknown name is an error.
  std::set<std::string> keep_fp16;
  // INT8 only: the accuracy guard (--accuracy-budget), off when budget < 0. As on the CPU
  // (quant/accuracy_guard.h): the INT8 program, with every candidate convolution in INT8, is
  // compared with the FP32 graph on the CPU over `validation` (default: `data`; batches of the
  // program's shapes only); when it misses the budget, each convolution's sensitivity is measured
  // and the fewest most sensitive ones are kept in FP16.
  quant::GuardOptions guard{-1.0};
  quant::Calibrator* validation = nullptr;
};
using GpuCalibration = Fp8Calibration;

// The GEMMs an FP8 program can run in FP8: MatMul, Gemm and FusedMatMul nodes of a 2-D constant B
// (no transposed A) whose A is an FP32 activation. Their indices in model.graph.nodes.
std::vector<size_t> fp8_gemm_candidates(const Model& model);

// Sets fp8_input_scale on every FP8 GEMM candidate of `model` (optimized and specialized to
// `shapes`) from a calibration run over calib.data; returns how many were set. Throws
// kInvalidArgument when the data has no batch of `shapes` (naming calib.source).
size_t annotate_fp8_scales(Model& model, const ShapeMap& shapes, const Fp8Calibration& calib);

// The convolutions an INT8 program can run in INT8 (Kiln's INT8 kernel takes them): Conv and
// FusedConv nodes of a constant 4-D float filter, ungrouped, with input channels a multiple of 16
// and output channels a multiple of 8, no activation or ReLU or Clip(0, hi), and an FP32 input;
// not marked kInt8KeepFloat.
std::vector<size_t> int8_conv_candidates(const Model& model);

// The GEMMs an INT8 program can run in INT8: fp8_gemm_candidates() with K a multiple of 16 and N
// of 8 (the INT8 kernel's rules), not marked kInt8KeepFloat.
std::vector<size_t> int8_gemm_candidates(const Model& model);

// Sets int8_scales {input, output, residual} (amax / 127 of each tensor) on every INT8 candidate
// (convolution and GEMM) of `model` (optimized and specialized to `shapes`) from a calibration run
// over calib.data (entropy by default, as TensorRT's INT8 calibrator); returns how many of each were
// set. Throws kInvalidArgument as annotate_fp8_scales does.
struct Int8Annotated {
  size_t convs = 0, gemms = 0;
};
Int8Annotated annotate_int8_scales(Model& model, const ShapeMap& shapes, const GpuCalibration& calib);

struct GpuBuild {
  std::shared_ptr<const GpuProgram> program;
  Model optimized;  // the graph after the passes (what a GPU engine file stores)
  size_t nodes_before = 0, nodes_after = 0;
  double pass_ms = 0, compile_ms = 0;
  std::vector<std::string> pass_log;
  size_t fp8_gemms = 0;  // FP8 builds: GEMMs given an input scale by calibration
  size_t int8_convs = 0;  // INT8 builds: convolutions given scales by calibration
  size_t int8_gemms = 0;  // INT8 builds: GEMMs given scales by calibration
  double calib_ms = 0;
  std::optional<quant::GuardResult> guard;  // INT8 builds with the accuracy guard on
  double guard_ms = 0;
};

// The node attribute that marks a convolution or GEMM kept in FP16 by --layer-precision or the
// accuracy guard (int 1): the INT8 candidates skip it and its int8_scales are removed, so an engine
// carries the decision.
inline constexpr const char* kInt8KeepFloat = "int8_keep_float";

// `shapes` must give every dynamic input's shape. opt_level 0 runs no passes. An FP8 (INT8) build of
// a graph whose candidates have no scales yet calibrates them with `fp8` (after the passes);
// without it, that is a kInvalidArgument error asking for calibration data. An INT8 build then
// applies fp8->keep_fp16 and runs the accuracy guard when fp8->guard.budget >= 0.
GpuBuild build_gpu_program(Model model, const ShapeMap& shapes, int device_index, const CompileOptions& options,
                           int opt_level = 3, const Fp8Calibration* fp8 = nullptr);

}  // namespace kiln::gpu
