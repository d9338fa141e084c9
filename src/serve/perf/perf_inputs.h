// `kiln perf` request data: resolves each input's shape from the server's metadata, -b and
// --shape, and fills it with zeros, seeded random values or the values of a perf_analyzer-style
// JSON data file.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "serve/perf/perf_transport.h"

namespace kiln::serve::perf {

// Bytes per element of a v2 datatype ("FP32" -> 4); 0 for BYTES and unknown names.
size_t datatype_size(std::string_view datatype);

// --shape NAME:D1,D2,... (repeatable) -> name -> dims. The name ends at the last ':', so names
// holding ':' ("input:0") work. Throws kInvalidArgument for a missing ':', an empty name, a dim
// that is not a positive integer, or a name given twice.
std::map<std::string, std::vector<int64_t>> parse_shape_flags(const std::vector<std::string>& flags);

struct InputOptions {
  int64_t batch = 1;
  // Dims without the batch dim for a batching model, the whole shape otherwise.
  std::map<std::string, std::vector<int64_t>> shapes;
  std::string data = "random";  // "zero", "random" or a JSON file
  uint64_t seed = 0;
};

// One request's inputs, or one per entry of a JSON data file (sent in turn). Throws kiln::Error
// kInvalidArgument: -b on a model that does not batch or over max_batch_size, a --shape naming no
// input or disagreeing with the model, a dim of -1 without --shape (naming the input), BYTES
// inputs, and data file errors (naming the entry and input).
std::vector<Inputs> make_inputs(const ModelInfo& model, const InputOptions& options);

// "[-1,3,224,224]"
std::string dims_text(const std::vector<int64_t>& dims);

}  // namespace kiln::serve::perf
