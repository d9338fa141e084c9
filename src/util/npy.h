// .npy and .npz tensor files: the tensor file format of every Kiln tool.
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ir/tensor.h"

namespace kiln {

// Parses a .npy image. `source` names the file in error messages. Supports little-endian
// (and '|') numeric and bool dtypes, C order; fortran_order=True and big-endian are rejected
// with a clear kInvalidArgument error, as are truncated or malformed headers.
Tensor parse_npy(std::span<const uint8_t> bytes, const std::string& source);
Tensor read_npy(const std::filesystem::path& path);
std::vector<uint8_t> serialize_npy(const Tensor& t);
void write_npy(const std::filesystem::path& path, const Tensor& t);

// .npz: a zip of .npy members (stored or deflated). Names drop the ".npy" suffix. Order is the
// archive's order.
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
NamedTensors read_npz(const std::filesystem::path& path);
void write_npz(const std::filesystem::path& path, const NamedTensors& tensors);

// Reads a .npy or .npz by extension.
NamedTensors read_tensor_file(const std::filesystem::path& path);

}  // namespace kiln
