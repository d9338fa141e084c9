// Shared CLI helpers.
#include "cli_common.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iomanip>
#include <limits>
#include <random>
#include <sstream>

namespace kiln::cli {

std::map<std::string, std::vector<int64_t>> parse_shapes(const std::string& spec, const std::string& flag) {
  std::map<std::string, std::vector<int64_t>> out;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    auto colon = item.rfind(':');
    if (colon == std::string::npos || colon == 0)
      throw Error(ErrorCode::kInvalidArgument, flag + ": '" + item + "' should look like NAME:1x3x224x224");
    std::string name = item.substr(0, colon);
    std::string dims = item.substr(colon + 1);
    std::vector<int64_t> shape;
    if (dims != "scalar" && !dims.empty()) {
      std::stringstream ds(dims);
      std::string d;
      while (std::getline(ds, d, 'x')) {
        size_t used = 0;
        long long v = -1;
        try {
          v = std::stoll(d, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used != d.size() || d.empty() || v < 0)
          throw Error(ErrorCode::kInvalidArgument, flag + ": bad dimension '" + d + "' in '" + item + "'");
        shape.push_back(v);
      }
    }
    if (!out.emplace(name, shape).second)
      throw Error(ErrorCode::kInvalidArgument, flag + ": input '" + name + "' is given twice");
  }
  return out;
}

void check_shape_names(const Graph& graph, const std::map<std::string, std::vector<int64_t>>& shapes,
                       const std::string& flag, const std::string& model_path) {
  for (const auto& [name, dims] : shapes) {
    if (std::find(graph.inputs.begin(), graph.inputs.end(), name) != graph.inputs.end()) continue;
    std::string names;
    for (const auto& in : graph.inputs) names += (names.empty() ? "" : ", ") + in;
    throw Error(ErrorCode::kInvalidArgument,
                flag + ": '" + name + "' is not an input of " + model_path + " (inputs: " + names + ")");
  }
}

std::vector<int64_t> resolve_input_shape(const std::string& name, const TensorType& type,
                                         const std::map<std::string, std::vector<int64_t>>& shapes, std::string* note) {
  auto it = shapes.find(name);
  if (it != shapes.end()) {
    if (type.shape) {
      if (type.shape->size() != it->second.size())
        throw Error(ErrorCode::kInvalidArgument, "--shapes: input '" + name + "' has rank " +
                                                     std::to_string(type.shape->size()) + " " +
                                                     shape_to_string(*type.shape) + ", got " + shape_to_string(it->second));
      for (size_t i = 0; i < it->second.size(); ++i) {
        const Dim& d = (*type.shape)[i];
        if (d.known() && d.value != it->second[i])
          throw Error(ErrorCode::kInvalidArgument, "--shapes: input '" + name + "' has static shape " +
                                                       shape_to_string(*type.shape) + ", got " +
                                                       shape_to_string(it->second));
      }
    }
    return it->second;
  }
  if (!type.shape)
    throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has unknown rank; give its shape with --shapes " + name + ":DxDx...");
  std::vector<int64_t> dims;
  for (const Dim& d : *type.shape) {
    if (d.known()) {
      dims.push_back(d.value);
    } else {
      dims.push_back(1);
      if (note) *note += "input '" + name + "': dynamic dim " + d.to_string() + " set to 1 (use --shapes to choose)\n";
    }
  }
  return dims;
}

void check_inputs(const Graph& g, const reference::TensorMap& inputs) {
  for (const auto& [name, t] : inputs) {
    if (std::find(g.inputs.begin(), g.inputs.end(), name) != g.inputs.end()) continue;
    std::string names;
    for (const auto& in : g.inputs) names += (names.empty() ? "" : ", ") + in;
    throw Error(ErrorCode::kInvalidArgument, "'" + name + "' is not an input of the model (inputs: " + names + ")");
  }
  std::map<std::string, int64_t> symbols;  // a symbolic dim takes one size across inputs
  for (const auto& name : g.inputs) {
    auto it = inputs.find(name);
    const TensorType* declared = g.type_of(name);
    if (it == inputs.end())
      throw Error(ErrorCode::kInvalidArgument,
                  "missing input '" + name + "'" + (declared ? " of type " + declared->to_string() : std::string()));
    const Tensor& t = it->second;
    if (!declared) continue;
    if (declared->dtype != DType::kUndefined && t.dtype() != declared->dtype)
      throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has dtype " + std::string(dtype_name(t.dtype())) +
                                                   ", expected " + std::string(dtype_name(declared->dtype)));
    if (!declared->shape) continue;
    const Shape& shape = *declared->shape;
    bool ok = shape.size() == t.rank();
    for (size_t i = 0; ok && i < t.rank(); ++i) ok = !shape[i].known() || shape[i].value == t.dim(i);
    if (!ok)
      throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has shape " + shape_to_string(t.shape()) +
                                                   ", expected " + shape_to_string(shape));
    for (size_t i = 0; i < t.rank(); ++i) {
      const Dim& d = shape[i];
      if (d.known() || d.symbol.empty()) continue;
      auto [sit, inserted] = symbols.emplace(d.symbol, t.dim(i));
      if (!inserted && sit->second != t.dim(i))
        throw Error(ErrorCode::kInvalidArgument, "input '" + name + "' has " + d.symbol + "=" + std::to_string(t.dim(i)) +
                                                     " but another input has " + d.symbol + "=" +
                                                     std::to_string(sit->second));
    }
  }
}

Tensor random_tensor(DType dtype, const std::vector<int64_t>& shape, uint64_t seed, int64_t int_lo, int64_t int_hi) {
  Tensor t(dtype, shape);
  std::mt19937_64 rng(seed);
  if (dtype == DType::kBool) {
    std::uniform_int_distribution<int> dist(0, 1);
    auto* p = static_cast<uint8_t*>(t.mutable_raw());
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<uint8_t>(dist(rng));
    return t;
  }
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* p = t.mutable_data<T>();
    if constexpr (std::is_integral_v<T>) {
      if (int_hi <= int_lo) throw Error(ErrorCode::kInvalidArgument, "--int-range: empty range");
      std::uniform_int_distribution<int64_t> dist(int_lo, int_hi - 1);
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<T>(dist(rng));
    } else {
      std::uniform_real_distribution<double> dist(-1.0, 1.0);
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<T>(static_cast<compute_t<T>>(dist(rng)));
    }
  });
  return t;
}

std::string summarize(const Tensor& t) {
  std::ostringstream os;
  os << dtype_name(t.dtype()) << "[" << shape_to_string(t.shape()) << "]";
  if (t.numel() == 0) return os.str();
  std::vector<double> v = t.to_double_vector();
  double lo = std::numeric_limits<double>::infinity(), hi = -lo, sum = 0;
  size_t nan = 0;
  for (double x : v) {
    if (std::isnan(x)) {
      ++nan;
      continue;
    }
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    sum += x;
  }
  os << " min=" << lo << " max=" << hi << " mean=" << (v.size() > nan ? sum / static_cast<double>(v.size() - nan) : 0);
  if (nan) os << " nan=" << nan;
  return os.str();
}

std::string fixed(double v, int digits) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << v;
  return os.str();
}

std::string mib(uint64_t bytes) { return fixed(static_cast<double>(bytes) / (1024.0 * 1024.0)) + " MiB"; }

std::map<std::string, std::string> parse_layer_precision(const std::string& spec, const std::string& form) {
  std::map<std::string, std::string> out;
  std::stringstream ss(spec);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    const auto colon = item.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == item.size())
      throw Error(ErrorCode::kInvalidArgument, "--layer-precision: expected " + form + ", got '" + item + "'");
    out[item.substr(0, colon)] = item.substr(colon + 1);
  }
  return out;
}

int64_t default_calib_batch(const Model& model, const std::vector<OptimizationProfile>& profiles) {
  if (!profiles.empty())
    for (const auto& [name, d] : profiles[0].inputs)
      if (!d.opt.empty()) return d.opt[0];
  for (const auto& in : model.graph.inputs)
    if (const TensorType* t = model.graph.type_of(in); t && t->shape && !t->shape->empty() && (*t->shape)[0].known())
      return (*t->shape)[0].value;
  return 8;
}

std::string safe_file_stem(const std::string& name) {
  std::string out = name;
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (!std::isalnum(u) && c != '.' && c != '_' && c != '-') c = '_';
  }
  if (out.empty() || out == "." || out == "..") out = "_";
  return out;
}

nlohmann::json type_json(const TensorType* t) {
  nlohmann::json j;
  j["dtype"] = t && t->dtype != DType::kUndefined ? nlohmann::json(std::string(dtype_name(t->dtype))) : nlohmann::json(nullptr);
  if (t && t->shape) {
    nlohmann::json dims = nlohmann::json::array();
    for (const Dim& d : *t->shape) {
      if (d.known()) dims.push_back(d.value);
      else dims.push_back(d.symbol.empty() ? "?" : d.symbol);
    }
    j["shape"] = dims;
  } else {
    j["shape"] = nullptr;
  }
  return j;
}

}  // namespace kiln::cli
