// Shared CLI helpers.
#include "cli_common.h"

#include <cmath>
#include <limits>
#include <random>
#include <sstream>

namespace kiln::cli {

std::map<std::string, std::vector<int64_t>> parse_shapes(const std::string& spec) {
  std::map<std::string, std::vector<int64_t>> out;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    auto colon = item.rfind(':');
    if (colon == std::string::npos || colon == 0)
      throw Error(ErrorCode::kInvalidArgument, "--shapes: '" + item + "' should look like NAME:1x3x224x224");
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
          throw Error(ErrorCode::kInvalidArgument, "--shapes: bad dimension '" + d + "' in '" + item + "'");
        shape.push_back(v);
      }
    }
    if (!out.emplace(name, shape).second)
      throw Error(ErrorCode::kInvalidArgument, "--shapes: input '" + name + "' is given twice");
  }
  return out;
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

}  // namespace kiln::cli
