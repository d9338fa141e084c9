// Quantize/dequantize graph rewriting: inserting Q/DQ pairs from a calibration table (implicit
// INT8), exporting a calibrated model as standard QDQ ONNX, and describing the int8 values of a
// fused graph (for `kiln compare --per-layer` and `kiln inspect`).
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "ir/graph.h"
#include "quant/calibration.h"

namespace kiln::quant {

// ---- Implicit INT8 (kiln build --int8)

// Which layers the INT8 rewrite may touch. Layer names are node names of the original model; a
// fused node matches when its own name or any node it fused (its "fused_ops") is named.
struct Int8Options {
  std::set<std::string> keep_float;  // layers forced to stay floating point
  // export_qdq only: MatMul/Gemm weights per output column (true) or one scale per tensor (ONNX
  // Runtime's quantize_static default, which its MatMul fusions run fastest).
  bool per_channel_matmul_weights = true;
};

// True when `node` (a node of an optimized graph) is one of `layers`.
bool node_matches_layer(const Node& node, const std::set<std::string>& layers);

// The f32 activations the INT8 rewrite of an optimized (fused) graph quantizes, in graph order:
// X and Z of kiln::FusedConv, A of kiln::FusedMatMul / MatMul with a constant 2-D B, and the input
// of MaxPool nodes that only feed those. These are the tensors to calibrate.
std::vector<std::string> int8_tensors(const Model& optimized, const Int8Options& options);
// The names of the layers (nodes) the INT8 rewrite would quantize, in graph order.
std::vector<std::string> int8_layers(const Model& optimized, const Int8Options& options);

// Rewrites an optimized f32 graph for INT8: inserts QuantizeLinear/DequantizeLinear pairs on the
// activations of int8_tensors() (per-tensor, symmetric: int8, or uint8 when calibration saw no
// negative value) and quantizes the constant weights per output channel (int8, symmetric; per
// tensor for models below opset 13, which lack per-axis DequantizeLinear), then
// runs the fuse-qdq pass so the pairs become kiln::QConv / kiln::QMatMul / int8 MaxPool kernels.
// Returns the number of int8 compute layers. Throws kInvalidArgument when the table lacks a tensor.
int quantize_int8(Model& optimized, const CalibrationTable& table, const Int8Options& options);

// True when the graph has QuantizeLinear or DequantizeLinear nodes (an explicitly quantized model).
bool has_qdq_nodes(const Graph& graph);

// Checks the constant parameters of every QuantizeLinear/DequantizeLinear: scales positive and
// finite, zero points of the quantized type and within its range. Throws kInvalidModel naming the
// node and the bad value (a zero scale would divide by zero; an out-of-range zero point cannot be
// represented).
void check_qdq_params(const Model& model);

// ---- Exporting calibration as a standard QDQ model (kiln quantize)

// Inserts Q/DQ pairs into a standard-ONNX (unfused) model from a calibration table: activations
// (per-tensor) and weights (per output channel) of Conv, Gemm and MatMul with a constant B, plus
// the inputs of Add nodes whose both inputs are calibrated activations, in the placement ONNX
// Runtime's QDQ tooling produces, so other runtimes can run it. The model keeps its opset; weights
// are per output channel from opset 13 (per-axis DequantizeLinear), per tensor below. Returns the
// number of layers quantized.
int export_qdq(Model& model, const CalibrationTable& table, const Int8Options& options);
// The tensors export_qdq() needs ranges for.
std::vector<std::string> export_qdq_tensors(const Model& model, const Int8Options& options);

// The precision a node of an optimized graph computes in, for inspect: "int8" (QConv, QMatMul,
// 8-bit pools), "fp32->int8" / "int8->fp32" (Quantize/DequantizeLinear), "bf16" (compute_precision),
// else its first output's type ("fp32", "int64", ...).
std::string node_precision(const Graph& graph, const Node& node);

// An int8/uint8 activation of a graph: the f32 tensor it stands for (`source`, a name of the
// original model) and how to read it back: x = (q - zero_point) * scale.
struct QuantizedValue {
  std::string source;
  DType dtype = DType::kI8;
  float scale = 1.f;
  int32_t zero_point = 0;
};
// Every int8/uint8 activation produced by QuantizeLinear or by a fused int8 kernel (kiln::QConv,
// kiln::QMatMul) whose scale and zero point are constants, by value name.
std::map<std::string, QuantizedValue> quantized_values(const Model& model);

}  // namespace kiln::quant
