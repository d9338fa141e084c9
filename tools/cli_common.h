// Helpers shared by the kiln subcommands: shape arguments, input filling, summaries.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "backends/reference/executor.h"

namespace kiln::cli {

// Parses "x:1x3x224x224,mask:1x128" into name -> dims. Throws kInvalidArgument naming the bad part.
std::map<std::string, std::vector<int64_t>> parse_shapes(const std::string& spec);

// Resolves an input's concrete shape: --shapes first, then the declared static dims; symbolic
// dims without a --shapes value become 1 (and `note` says so).
std::vector<int64_t> resolve_input_shape(const std::string& name, const TensorType& type,
                                         const std::map<std::string, std::vector<int64_t>>& shapes, std::string* note);

// Seeded random tensor: floats uniform in [-1, 1), integers uniform in [int_lo, int_hi), bools 0/1.
Tensor random_tensor(DType dtype, const std::vector<int64_t>& shape, uint64_t seed, int64_t int_lo, int64_t int_hi);

// tools/cmd_build.cpp: loads an ONNX model or a Kiln engine file, told apart by the engine magic
// (never the extension). For an engine, *is_engine is set and, when given, *engine_text and
// *engine_json (a JSON object as text) describe its header, target fingerprint and fused nodes.
Model load_model_or_engine(const std::string& path, bool* is_engine = nullptr, std::string* engine_text = nullptr,
                           std::string* engine_json = nullptr);

// "f32[1x1000] min=-2.1 max=3.4 mean=0.01"
std::string summarize(const Tensor& t);

}  // namespace kiln::cli
