// ONNX import through the protobuf schema compiled from Debian's onnx.proto.
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "ir/graph.h"

namespace onnx {
class TensorProto;
class ModelProto;
}  // namespace onnx

namespace kiln {

// Loads a model file. External data is resolved relative to the model's folder and must stay
// inside it; side files are memory-mapped, so weights beyond 2 GiB load without copies.
// Structural problems (malformed protobuf, cycles, undefined inputs, bad initializer sizes,
// missing or escaping external data) throw kInvalidModel/kIo naming the file and node.
Model load_onnx(const std::filesystem::path& path);
// Same, from bytes in memory. `base_dir` resolves external data ("" forbids external data).
Model parse_onnx(std::span<const uint8_t> bytes, const std::filesystem::path& base_dir, const std::string& source);
// Converts an already parsed ModelProto.
Model import_model_proto(const onnx::ModelProto& proto, const std::filesystem::path& base_dir, const std::string& source);

// A TensorProto file (the ONNX test suite's input_N.pb / output_N.pb).
Tensor read_tensor_proto_file(const std::filesystem::path& path, std::string* name = nullptr);
Tensor tensor_from_proto(const onnx::TensorProto& proto, const std::filesystem::path& base_dir, const std::string& source);
void tensor_to_proto(const Tensor& t, const std::string& name, onnx::TensorProto* proto);

// Writes a model (all weights inline) as ONNX. Used to export small and test models.
void save_onnx(const Model& model, const std::filesystem::path& path);
void model_to_proto(const Model& model, onnx::ModelProto* proto);

}  // namespace kiln
