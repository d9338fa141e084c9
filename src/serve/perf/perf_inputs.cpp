// `kiln perf` request data (see perf_inputs.h).
#include "serve/perf/perf_inputs.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>

#include "ir/dtype.h"
#include "kiln/error.h"

namespace kiln::serve::perf {

using json = nlohmann::json;

size_t datatype_size(std::string_view dt) {
  if (dt == "BOOL" || dt == "UINT8" || dt == "INT8") return 1;
  if (dt == "UINT16" || dt == "INT16" || dt == "FP16" || dt == "BF16") return 2;
  if (dt == "UINT32" || dt == "INT32" || dt == "FP32") return 4;
  if (dt == "UINT64" || dt == "INT64" || dt == "FP64") return 8;
  return 0;
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + "]";
}

namespace {

Error bad(const std::string& message) { return Error(ErrorCode::kInvalidArgument, message); }

int64_t positive_dim(const std::string& text, const std::string& context) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || v <= 0)
    throw bad(context + ": '" + text + "' is not a positive dimension");
  return v;
}

int64_t numel(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// Writes `v` (a double holding the JSON number) as one element of `dt` at `out`. Integers must be
// whole and in the type's range.
void put_element(const std::string& dt, double v, char* out, const std::string& context) {
  auto integral = [&](auto tag, double lo, double hi) {
    using T = decltype(tag);
    if (std::floor(v) != v || v < lo || v > hi)
      throw bad(context + ": " + json(v).dump() + " is not a " + dt + " value");
    T x = static_cast<T>(v);
    std::memcpy(out, &x, sizeof(T));
  };
  if (dt == "BOOL") {
    if (v != 0 && v != 1) throw bad(context + ": " + json(v).dump() + " is not a BOOL value (0, 1, true or false)");
    out[0] = static_cast<char>(v != 0);
  } else if (dt == "UINT8") integral(uint8_t{}, 0, 255);
  else if (dt == "INT8") integral(int8_t{}, -128, 127);
  else if (dt == "UINT16") integral(uint16_t{}, 0, 65535);
  else if (dt == "INT16") integral(int16_t{}, -32768, 32767);
  else if (dt == "UINT32") integral(uint32_t{}, 0, 4294967295.0);
  else if (dt == "INT32") integral(int32_t{}, -2147483648.0, 2147483647.0);
  else if (dt == "UINT64") integral(uint64_t{}, 0, 18446744073709549568.0);
  else if (dt == "INT64") integral(int64_t{}, -9223372036854775808.0, 9223372036854774784.0);
  else if (dt == "FP16") {
    Half h(static_cast<float>(v));
    std::memcpy(out, &h.bits, 2);
  } else if (dt == "BF16") {
    BFloat16 h(static_cast<float>(v));
    std::memcpy(out, &h.bits, 2);
  } else if (dt == "FP32") {
    float f = static_cast<float>(v);
    std::memcpy(out, &f, 4);
  } else if (dt == "FP64") {
    std::memcpy(out, &v, 8);
  } else {
    throw bad(context + ": datatype " + dt + " is not supported");
  }
}

// Seeded values: floats uniform in [-1, 1), integers in [0, 10), bools 0/1 (as `kiln run` makes
// its inputs).
std::string random_bytes(const std::string& dt, int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> real(-1.0, 1.0);
  std::uniform_int_distribution<int> ints(0, 9), bits(0, 1);
  const size_t size = datatype_size(dt);
  std::string bytes(static_cast<size_t>(count) * size, '\0');
  const bool is_float = dt == "FP16" || dt == "BF16" || dt == "FP32" || dt == "FP64";
  for (int64_t i = 0; i < count; ++i) {
    const double v = is_float ? real(rng) : dt == "BOOL" ? bits(rng) : ints(rng);
    put_element(dt, v, bytes.data() + static_cast<size_t>(i) * size, "random data");
  }
  return bytes;
}

void flatten(const json& v, std::vector<double>& out, const std::string& context) {
  if (v.is_array()) {
    for (const auto& e : v) flatten(e, out, context);
  } else if (v.is_boolean()) {
    out.push_back(v.get<bool>() ? 1.0 : 0.0);
  } else if (v.is_number()) {
    out.push_back(v.get<double>());
  } else {
    throw bad(context + ": " + v.dump() + " is not a number (string and base64 data are not supported)");
  }
}

// One sample's dims: --shape (or the data file's shape) where given, checked against the model's
// dims; -1 dims must be given.
std::vector<int64_t> resolve_dims(const TensorSpec& in, const std::vector<int64_t>& model_dims,
                                  const std::vector<int64_t>* given, const std::string& given_by) {
  if (!given) {
    for (int64_t d : model_dims)
      if (d < 0)
        throw bad("input '" + in.name + "' has a dynamic dim (shape " + dims_text(model_dims) +
                  "); give its dims with --shape " + in.name + ":D1,D2,...");
    return model_dims;
  }
  if (given->size() != model_dims.size())
    throw bad(given_by + " gives input '" + in.name + "' " + std::to_string(given->size()) + " dims " +
              dims_text(*given) + ", but the model's input has " + std::to_string(model_dims.size()) + " " +
              dims_text(model_dims));
  for (size_t i = 0; i < model_dims.size(); ++i)
    if (model_dims[i] >= 0 && model_dims[i] != (*given)[i])
      throw bad(given_by + " gives input '" + in.name + "' dim " + std::to_string(i) + " = " +
                std::to_string((*given)[i]) + ", but the model fixes it at " + std::to_string(model_dims[i]) +
                " (shape " + dims_text(model_dims) + ")");
  return *given;
}

}  // namespace

std::map<std::string, std::vector<int64_t>> parse_shape_flags(const std::vector<std::string>& flags) {
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& flag : flags) {
    const size_t colon = flag.rfind(':');
    if (colon == std::string::npos || colon == 0)
      throw bad("--shape " + flag + ": expected NAME:D1,D2,... (for example --shape input:3,224,224)");
    const std::string name = flag.substr(0, colon);
    std::vector<int64_t> dims;
    std::stringstream ss(flag.substr(colon + 1));
    std::string part;
    while (std::getline(ss, part, ',')) dims.push_back(positive_dim(part, "--shape " + flag));
    if (dims.empty()) throw bad("--shape " + flag + ": no dims after ':'");
    if (!out.emplace(name, dims).second) throw bad("--shape: input '" + name + "' given twice");
  }
  return out;
}

std::vector<Inputs> make_inputs(const ModelInfo& model, const InputOptions& options) {
  const bool batching = model.max_batch_size > 0;
  if (options.batch < 1) throw bad("-b " + std::to_string(options.batch) + ": the batch size must be at least 1");
  if (model.max_batch_size == 0 && options.batch != 1)
    throw bad("model '" + model.name + "' does not batch (max_batch_size 0): -b must be 1, got " +
              std::to_string(options.batch));
  if (model.max_batch_size < 0 && options.batch != 1)
    throw bad("the server did not report model '" + model.name +
              "''s max_batch_size (GET .../config), so -b cannot be used; give whole shapes with --shape");
  if (batching && options.batch > model.max_batch_size)
    throw bad("-b " + std::to_string(options.batch) + " is over model '" + model.name + "''s max_batch_size " +
              std::to_string(model.max_batch_size));
  if (model.inputs.empty()) throw bad("model '" + model.name + "' has no inputs in its metadata");

  std::set<std::string> names;
  for (const auto& in : model.inputs) names.insert(in.name);
  for (const auto& [name, dims] : options.shapes)
    if (!names.count(name)) {
      std::string list;
      for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
      throw bad("--shape names '" + name + "', which is not an input of model '" + model.name + "' (inputs: " + list +
                ")");
    }

  // Per input: the model's dims for one sample and the dims --shape resolves.
  std::vector<std::vector<int64_t>> model_dims;
  for (const auto& in : model.inputs) {
    if (in.datatype == "BYTES")
      throw bad("input '" + in.name + "' is BYTES (strings), which kiln perf does not generate");
    if (datatype_size(in.datatype) == 0)
      throw bad("input '" + in.name + "' has datatype '" + in.datatype + "', which kiln perf does not know");
    std::vector<int64_t> dims = in.shape;
    if (batching) {
      if (dims.empty())
        throw bad("input '" + in.name + "' has no batch dim although model '" + model.name + "' batches");
      dims.erase(dims.begin());
    }
    model_dims.push_back(dims);
  }
  auto request_shape = [&](const std::vector<int64_t>& sample) {
    std::vector<int64_t> shape = sample;
    if (batching) shape.insert(shape.begin(), options.batch);
    return shape;
  };
  const int64_t copies = batching ? options.batch : 1;

  std::vector<Inputs> requests;
  if (options.data == "zero" || options.data == "random") {
    Inputs req;
    for (size_t i = 0; i < model.inputs.size(); ++i) {
      const TensorSpec& in = model.inputs[i];
      auto it = options.shapes.find(in.name);
      const auto dims = resolve_dims(in, model_dims[i], it == options.shapes.end() ? nullptr : &it->second, "--shape");
      InputData d{in.name, in.datatype, request_shape(dims), {}};
      const int64_t count = numel(d.shape);
      d.bytes = options.data == "zero" ? std::string(static_cast<size_t>(count) * datatype_size(in.datatype), '\0')
                                       : random_bytes(in.datatype, count, options.seed + i);
      req.push_back(std::move(d));
    }
    requests.push_back(std::move(req));
    return requests;
  }

  // A JSON data file: {"data": [{"NAME": [values] or {"content": [values], "shape": [dims]}}, ...]},
  // each entry one sample (repeated -b times for a batching model).
  std::ifstream file(options.data);
  if (!file)
    throw Error(ErrorCode::kIo, "--input-data " + options.data + ": cannot open the file (or use zero or random)");
  json doc = json::parse(file, nullptr, false);
  if (doc.is_discarded()) throw bad("--input-data " + options.data + ": not valid JSON");
  if (!doc.is_object() || !doc.contains("data") || !doc["data"].is_array() || doc["data"].empty())
    throw bad("--input-data " + options.data + ": expected {\"data\": [{\"INPUT\": [values], ...}, ...]}");
  size_t entry_index = 0;
  for (const auto& entry : doc["data"]) {
    const std::string where = "--input-data " + options.data + ": data[" + std::to_string(entry_index++) + "]";
    if (!entry.is_object()) throw bad(where + " is not an object of inputs");
    for (auto it = entry.begin(); it != entry.end(); ++it)
      if (!names.count(it.key())) throw bad(where + " names '" + it.key() + "', which is not an input of the model");
    Inputs req;
    for (size_t i = 0; i < model.inputs.size(); ++i) {
      const TensorSpec& in = model.inputs[i];
      const std::string context = where + " input '" + in.name + "'";
      if (!entry.contains(in.name)) throw bad(where + " has no values for input '" + in.name + "'");
      const json& value = entry[in.name];
      const json* content = &value;
      std::vector<int64_t> file_shape;
      bool has_file_shape = false;
      if (value.is_object()) {
        if (value.contains("b64")) throw bad(context + ": base64 content is not supported; give the values");
        if (!value.contains("content")) throw bad(context + ": expected \"content\" (and optionally \"shape\")");
        content = &value["content"];
        if (value.contains("shape")) {
          if (!value["shape"].is_array()) throw bad(context + ": \"shape\" is not an array of dims");
          for (const auto& d : value["shape"]) {
            if (!d.is_number_integer() || d.get<int64_t>() <= 0)
              throw bad(context + ": \"shape\" has a dim that is not positive");
            file_shape.push_back(d.get<int64_t>());
          }
          has_file_shape = true;
        }
      }
      const std::vector<int64_t>* given = has_file_shape ? &file_shape : nullptr;
      std::string given_by = where + "'s \"shape\"";
      auto flag = options.shapes.find(in.name);
      if (!given && flag != options.shapes.end()) {
        given = &flag->second;
        given_by = "--shape";
      }
      const auto dims = resolve_dims(in, model_dims[i], given, given_by);
      std::vector<double> values;
      flatten(*content, values, context);
      const int64_t per_sample = numel(dims);
      if (static_cast<int64_t>(values.size()) != per_sample)
        throw bad(context + ": " + std::to_string(values.size()) + " values for shape " + dims_text(dims) + " (" +
                  std::to_string(per_sample) + " expected)");
      const size_t size = datatype_size(in.datatype);
      std::string sample(values.size() * size, '\0');
      for (size_t k = 0; k < values.size(); ++k) put_element(in.datatype, values[k], sample.data() + k * size, context);
      InputData d{in.name, in.datatype, request_shape(dims), {}};
      for (int64_t c = 0; c < copies; ++c) d.bytes += sample;
      req.push_back(std::move(d));
    }
    requests.push_back(std::move(req));
  }
  return requests;
}

}  // namespace kiln::serve::perf
