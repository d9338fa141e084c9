// INT8 calibration: method parsing, streaming |x| histograms, the entropy/percentile/MinMax
// thresholds, model fingerprints, the calibration cache, and the calibration run on the CPU backend.
#include "quant/calibration.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "runtime/runtime.h"
#include "backends/reference/executor.h"
#include "ops/model_check.h"

namespace kiln::quant {

namespace {

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorCode::kInvalidArgument, message); }

// Shortest text that reads back as the same double.
std::string shortest(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

// Round-trip text of a float (9 significant digits always identify a float).
std::string float_text(float v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

// Whole-string numeric parses (no leading/trailing junk).
template <typename T>
bool parse_number(std::string_view s, T& out) {
  if (s.empty()) return false;
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

// The smallest power of two strictly above `a` (> 0, finite), capped at 2^127 so it stays a float.
float pow2_above(float a) {
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e with m in [0.5, 1), so 2^e > a
  return std::ldexp(1.0f, std::min(e, 127));
}

const float kMaxRange = std::ldexp(1.0f, 127);

}  // namespace

// ---------------------------------------------------------------------------------------------
// Methods

CalibMethodSpec parse_calib_method(const std::string& text) {
  const std::string forms = "expected entropy, minmax, percentile or percentile=P with 0 < P <= 100";
  CalibMethodSpec spec;
  if (text == "entropy") return spec;
  if (text == "minmax") {
    spec.method = CalibMethod::kMinMax;
    return spec;
  }
  if (text == "percentile") {
    spec.method = CalibMethod::kPercentile;
    return spec;
  }
  if (text.starts_with("percentile=")) {
    const std::string value = text.substr(11);
    double p = 0;
    if (!parse_number(value, p) || !std::isfinite(p))
      invalid("calibration method '" + text + "': '" + value + "' is not a number; " + forms);
    if (!(p > 0 && p <= 100))
      invalid("calibration method '" + text + "': the percentile must be in (0, 100], got " + value);
    spec.method = CalibMethod::kPercentile;
    spec.percentile = p;
    return spec;
  }
  invalid("unknown calibration method '" + text + "'; " + forms);
}

std::string to_string(const CalibMethodSpec& spec) {
  switch (spec.method) {
    case CalibMethod::kEntropy: return "entropy";
    case CalibMethod::kMinMax: return "minmax";
    case CalibMethod::kPercentile: return "percentile=" + shortest(spec.percentile);
  }
  return "entropy";
}

// ---------------------------------------------------------------------------------------------
// TensorHistogram

void TensorHistogram::add(const float* data, size_t n) {
  // First pass: this batch's extremes, so the range grows once per batch, not per value.
  float bmin = std::numeric_limits<float>::infinity(), bmax = -bmin, finite_absmax = 0;
  uint64_t valid = 0;
  for (size_t i = 0; i < n; ++i) {
    const float x = data[i];
    if (std::isnan(x)) continue;
    ++valid;
    bmin = std::min(bmin, x);
    bmax = std::max(bmax, x);
    const float a = std::fabs(x);
    if (a <= std::numeric_limits<float>::max()) finite_absmax = std::max(finite_absmax, a);
  }
  if (valid == 0) return;
  if (count_ == 0) {
    min_ = bmin;
    max_ = bmax;
  } else {
    min_ = std::min(min_, bmin);
    max_ = std::max(max_, bmax);
  }
  count_ += valid;
  if (bins_.empty()) bins_.assign(kBins, 0);
  if (finite_absmax > 0) {
    if (range_ == 0) {
      range_ = pow2_above(finite_absmax);  // zeros counted so far sit in bin 0 at any range
    } else {
      while (finite_absmax >= range_ && range_ < kMaxRange) {
        // Doubling the range: new bin i covers old bins 2i and 2i+1 exactly (power-of-two widths).
        for (int i = 0; i < kBins / 2; ++i) bins_[i] = bins_[2 * i] + bins_[2 * i + 1];
        std::fill(bins_.begin() + kBins / 2, bins_.end(), 0);
        range_ *= 2;
      }
    }
  }
  // kBins / range_ is a power of two, so a * scale is exact and the bin index does not depend on
  // rounding: merged bins stay identical to bins built at the final range.
  const double scale = range_ > 0 ? kBins / static_cast<double>(range_) : 0;
  for (size_t i = 0; i < n; ++i) {
    const float x = data[i];
    if (std::isnan(x)) continue;
    const float a = std::fabs(x);
    size_t b;
    if (a == 0) b = 0;
    else if (!(a < range_)) b = kBins - 1;  // +-inf, or beyond a range capped at 2^127
    else b = std::min(static_cast<size_t>(static_cast<double>(a) * scale), static_cast<size_t>(kBins - 1));
    ++bins_[b];
  }
}

float TensorHistogram::absmax() const { return std::max(std::fabs(min_), std::fabs(max_)); }

float TensorHistogram::amax(const CalibMethodSpec& spec) const {
  // Infinities carry no usable magnitude: the finite bound is then the histogram's range.
  const float am = absmax();
  const float finite_absmax = std::isfinite(am) ? am : range_;
  if (count_ == 0 || !(finite_absmax > 0) || range_ == 0) return kZeroAmax;
  const double width = static_cast<double>(range_) / kBins;
  double t = finite_absmax;
  switch (spec.method) {
    case CalibMethod::kMinMax: t = finite_absmax; break;
    case CalibMethod::kPercentile: {
      // Smallest t with fraction(|x| <= t) >= p/100, assuming values spread evenly within a bin.
      const double target = spec.percentile / 100.0 * static_cast<double>(count_);
      double cum = 0;
      for (int b = 0; b < kBins; ++b) {
        const double c = static_cast<double>(bins_[b]);
        if (c > 0 && cum + c >= target) {
          t = (b + std::clamp((target - cum) / c, 0.0, 1.0)) * width;
          break;
        }
        cum += c;
      }
      break;
    }
    case CalibMethod::kEntropy: {
      // Bin 0 takes bin 1's count (as NVIDIA's pytorch-quantization does): after a ReLU it holds
      // every exact zero, a spike that only the smallest candidates model exactly, so the search
      // would otherwise clip a half-Gaussian at about 2 sigma. 128 levels for uint8 tensors too:
      // 256 would start the candidates at range/8, out of reach of thresholds that clip outliers.
      std::vector<uint64_t> bins = bins_;
      bins[0] = bins[1];
      t = static_cast<double>(entropy_threshold_bin(bins, 128)) * width;
      break;
    }
  }
  // A threshold above the largest value only wastes levels.
  t = std::min(t, static_cast<double>(finite_absmax));
  const float r = static_cast<float>(t);
  return r > 0 && std::isfinite(r) ? r : kZeroAmax;
}

// TensorRT's "entropy calibration 2". For a candidate i, P = bins[0..i) with the tail sum added to
// P[i-1]; Q merges bins[0..i) into `levels` groups (bin j goes to group j * levels / i) and spreads
// each group's sum evenly over the bins of the group where P is nonzero. KL(P||Q) over P > 0, with
// Q = kEps (normalized) where Q is 0 but P is not (the clipped tail landing on an empty group).
// Ties keep the smallest i. KL is computed from precomputed logs: sum p_j (log P_j - log S_P -
// log Q_g), so the search costs no log per bin.
size_t entropy_threshold_bin(const std::vector<uint64_t>& bins, int levels) {
  if (levels <= 0) invalid("entropy_threshold_bin: levels must be positive");
  const size_t n = bins.size();
  const size_t L = static_cast<size_t>(levels);
  if (n <= L) return n;
  std::vector<double> tail(n + 1, 0.0);
  for (size_t j = n; j-- > 0;) tail[j] = tail[j + 1] + static_cast<double>(bins[j]);
  const double total = tail[0];
  if (total <= 0) return n;
  std::vector<double> logb(n, 0.0);
  for (size_t j = 0; j < n; ++j)
    if (bins[j]) logb[j] = std::log(static_cast<double>(bins[j]));
  const double log_total = std::log(total);
  constexpr double kEps = 1e-10;
  const double log_eps = std::log(kEps);

  size_t best_i = n;
  double best_kl = std::numeric_limits<double>::infinity();
  std::vector<size_t> start(L + 1);  // group g holds bins [start[g], start[g+1]): j * L / i == g
  // Candidates that clip more than kMaxClipped of the values are skipped: KL(P||Q) only sees the
  // shapes of P and Q, so a threshold below almost all the mass (a tensor living in [0.37, 1.8],
  // such as pooled features) folds everything into P's last bin, where Q matches it exactly and
  // the divergence is zero, while the quantized tensor is all one value.
  constexpr double kMaxClipped = 1e-3;
  for (size_t i = L; i <= n; ++i) {
    if (tail[i] > kMaxClipped * total) continue;
    for (size_t g = 0; g <= L; ++g) start[g] = (g * i + L - 1) / L;
    const double outliers = tail[i];
    const double q_total = total - outliers;  // Q leaves the clipped tail out
    double kl = 0;
    for (size_t g = 0; g < L; ++g) {
      double sum = 0;
      uint32_t nonzero = 0;
      for (size_t j = start[g]; j < start[g + 1]; ++j) {
        sum += static_cast<double>(bins[j]);
        nonzero += bins[j] != 0;
      }
      const bool last_group = start[g + 1] == i;
      if (last_group && outliers > 0 && bins[i - 1] == 0) ++nonzero;  // P[i-1] holds the tail
      if (!nonzero) continue;
      const double log_q = (q_total > 0 && sum > 0) ? std::log(sum / nonzero) - std::log(q_total) : log_eps;
      const size_t end = last_group ? i - 1 : start[g + 1];
      for (size_t j = start[g]; j < end; ++j)
        if (bins[j]) kl += static_cast<double>(bins[j]) / total * (logb[j] - log_total - log_q);
      if (last_group) {
        const double last = static_cast<double>(bins[i - 1]) + outliers;  // P's total is `total`
        if (last > 0) kl += last / total * (std::log(last) - log_total - log_q);
      }
    }
    if (kl < best_kl) {
      best_kl = kl;
      best_i = i;
    }
  }
  return best_i;
}

// ---------------------------------------------------------------------------------------------
// Fingerprint

std::string model_fingerprint(const Model& model) {
  // FNV-1a 64 over a canonical text; unit (0x1f) and record (0x1e) separators keep fields apart.
  uint64_t h = 0xcbf29ce484222325ull;
  auto feed = [&](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 0x100000001b3ull;
    }
    h ^= 0x1f;
    h *= 0x100000001b3ull;
  };
  auto record = [&](const char* tag) {
    h ^= 0x1e;
    h *= 0x100000001b3ull;
    feed(tag);
  };
  const Graph& g = model.graph;
  record("kiln-fingerprint-1");
  record("inputs");
  for (const auto& in : g.inputs) feed(in);
  record("outputs");
  for (const auto& out : g.outputs) feed(out);
  for (const auto& n : g.nodes) {
    record("node");
    feed(canonical_domain(n.domain));
    feed(n.op_type);
    feed(std::to_string(n.inputs.size()));
    for (const auto& in : n.inputs) feed(in);
    feed(std::to_string(n.outputs.size()));
    for (const auto& out : n.outputs) feed(out);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Cache

namespace {
constexpr const char* kCacheMagic = "kiln-calibration";
constexpr int kCacheVersion = 1;

// Splits off the next blank-separated token of `line` starting at `pos`.
std::string_view next_token(std::string_view line, size_t& pos) {
  while (pos < line.size() && (line[pos] == ' ' || line[pos] == '\t')) ++pos;
  const size_t start = pos;
  while (pos < line.size() && line[pos] != ' ' && line[pos] != '\t') ++pos;
  return line.substr(start, pos - start);
}
}  // namespace

void write_calibration_cache(const std::filesystem::path& path, const CalibrationTable& table) {
  const std::string source = path.string();
  const std::string& fp = table.model_fingerprint;
  if (fp.empty() || fp.find_first_of(" \t\r\n") != std::string::npos)
    invalid("calibration cache '" + source + "': the table has no valid model fingerprint ('" + fp + "')");
  std::string text = std::string(kCacheMagic) + " " + std::to_string(kCacheVersion) +
                     " method=" + to_string(table.method) + " samples=" + std::to_string(table.samples) +
                     " model=" + fp + "\n# amax min max tensor\n";
  for (const auto& [name, r] : table.ranges) {
    if (name.empty() || name.find_first_of("\r\n") != std::string::npos)
      invalid("calibration cache '" + source + "': tensor name '" + name +
              "' cannot be stored (empty, or contains a line break)");
    if (!(r.amax > 0) || !std::isfinite(r.amax))
      invalid("calibration cache '" + source + "': tensor '" + name + "' has amax " + float_text(r.amax) +
              ", not a positive finite number");
    text += float_text(r.amax) + " " + float_text(r.min) + " " + float_text(r.max) + " " + name + "\n";
  }
  // Write a temporary file and rename it, so a reader never sees half a cache.
  const std::filesystem::path tmp = path.string() + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Error(ErrorCode::kIo, "cannot write calibration cache '" + source + "': " + std::strerror(errno));
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    f.close();
    if (!f) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw Error(ErrorCode::kIo, "cannot write calibration cache '" + source + "': write error");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ec2;
    std::filesystem::remove(tmp, ec2);
    throw Error(ErrorCode::kIo, "cannot write calibration cache '" + source + "': " + ec.message());
  }
}

CalibrationTable read_calibration_cache(const std::filesystem::path& path) {
  const std::string source = path.string();
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw Error(ErrorCode::kIo, "cannot read calibration cache '" + source + "': it is a directory");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(ErrorCode::kIo, "cannot read calibration cache '" + source + "': " + std::strerror(errno));

  CalibrationTable table;
  bool have_header = false;
  std::string line;
  size_t lineno = 0;
  auto fail = [&](const std::string& what) -> void {
    invalid("calibration cache " + source + ":" + std::to_string(lineno) + ": " + what);
  };
  while (std::getline(f, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string_view v = line;
    if (v.find_first_not_of(" \t") == std::string_view::npos || v.front() == '#') continue;
    size_t pos = 0;
    if (!have_header) {
      const std::string_view magic = next_token(v, pos);
      if (magic != kCacheMagic)
        fail("not a Kiln calibration cache (expected a first line '" + std::string(kCacheMagic) + " " +
             std::to_string(kCacheVersion) + " method=... samples=... model=...')");
      const std::string_view version = next_token(v, pos);
      int ver = 0;
      if (!parse_number(version, ver)) fail("bad format version '" + std::string(version) + "'");
      if (ver != kCacheVersion)
        fail("calibration cache format version " + std::to_string(ver) + ", this Kiln reads version " +
             std::to_string(kCacheVersion) + "; delete it to recalibrate");
      std::set<std::string> seen;
      for (std::string_view tok = next_token(v, pos); !tok.empty(); tok = next_token(v, pos)) {
        const size_t eq = tok.find('=');
        if (eq == std::string_view::npos) fail("header field '" + std::string(tok) + "' is not key=value");
        const std::string key(tok.substr(0, eq)), value(tok.substr(eq + 1));
        if (!seen.insert(key).second) fail("header field '" + key + "' appears twice");
        if (key == "method") {
          try {
            table.method = parse_calib_method(value);
          } catch (const Error& e) {
            fail(e.what());
          }
        } else if (key == "samples") {
          uint64_t s = 0;
          if (!parse_number(std::string_view(value), s)) fail("samples '" + value + "' is not a non-negative integer");
          table.samples = static_cast<size_t>(s);
        } else if (key == "model") {
          table.model_fingerprint = value;
        } else {
          fail("unknown header field '" + key + "'");
        }
      }
      if (!seen.count("method")) fail("the header lacks method=");
      if (!seen.count("samples")) fail("the header lacks samples=");
      if (table.model_fingerprint.empty()) fail("the header lacks the model fingerprint (model=...)");
      have_header = true;
      continue;
    }
    float nums[3] = {0, 0, 0};
    const char* what[3] = {"amax", "min", "max"};
    for (int k = 0; k < 3; ++k) {
      const std::string_view tok = next_token(v, pos);
      if (tok.empty()) fail("expected '<amax> <min> <max> <tensor name>'");
      if (!parse_number(tok, nums[k])) fail(std::string(what[k]) + " '" + std::string(tok) + "' is not a number");
    }
    // Exactly one blank separates max from the name, so names may start with a blank.
    if (pos >= v.size() || pos + 1 >= v.size()) fail("missing tensor name after the numbers");
    const std::string name(v.substr(pos + 1));
    if (!(nums[0] > 0) || !std::isfinite(nums[0]))
      fail("amax " + float_text(nums[0]) + " of tensor '" + name + "' must be a positive finite number");
    if (std::isnan(nums[1]) || std::isnan(nums[2]) || nums[1] > nums[2])
      fail("min " + float_text(nums[1]) + " and max " + float_text(nums[2]) + " of tensor '" + name +
           "' are not a valid range");
    if (table.ranges.count(name)) fail("tensor '" + name + "' appears twice");
    table.ranges[name] = TensorRange{nums[0], nums[1], nums[2]};
  }
  if (f.bad()) throw Error(ErrorCode::kIo, "cannot read calibration cache '" + source + "': read error");
  if (!have_header) {
    lineno = std::max<size_t>(lineno, 1);
    fail("empty file: no '" + std::string(kCacheMagic) + "' header");
  }
  return table;
}

void check_calibration_table(const CalibrationTable& table, const Model& model, const std::vector<std::string>& needed,
                             const std::string& source) {
  const std::string fp = model_fingerprint(model);
  if (table.model_fingerprint != fp)
    invalid("calibration cache '" + source + "' was made for another model (fingerprint " + table.model_fingerprint +
            ", this model is " + fp + "); delete it or pass another --calib-cache");
  std::vector<std::string> missing;
  for (const auto& n : needed)
    if (!table.ranges.count(n) && std::find(missing.begin(), missing.end(), n) == missing.end()) missing.push_back(n);
  if (missing.empty()) return;
  std::string list;
  for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", '" : "'") + missing[i] + "'";
  if (missing.size() > 5) list += " and " + std::to_string(missing.size() - 5) + " more";
  invalid("calibration cache '" + source + "' has no range for tensor" + (missing.size() > 1 ? "s " : " ") + list +
          "; delete it to recalibrate");
}

// ---------------------------------------------------------------------------------------------
// The calibration run

CalibrationTable calibrate(const Model& model, Calibrator& data, const std::vector<std::string>& tensors,
                           const CalibrateOptions& options) {
  Model m = model;
  require_supported(m);
  InferOptions io;
  io.evaluator = reference::constant_evaluator();
  infer_types(m, io);
  Graph& g = m.graph;

  std::set<std::string> values(g.inputs.begin(), g.inputs.end());
  for (const auto& n : g.nodes)
    for (const auto& o : n.outputs)
      if (!o.empty()) values.insert(o);
  for (const auto& [name, t] : g.initializers) values.insert(name);

  std::vector<std::string> names;
  for (const auto& t : tensors) {
    if (std::find(names.begin(), names.end(), t) != names.end()) continue;
    if (!values.count(t)) invalid("calibration: '" + t + "' is not a tensor of the model");
    const TensorType* type = g.type_of(t);
    if (!type || type->dtype != DType::kF32)
      invalid("calibration: tensor '" + t + "' is " +
              (type ? std::string(dtype_name(type->dtype)) : std::string("of unknown type")) +
              "; only f32 tensors can be calibrated");
    names.push_back(t);
  }
  // Every calibrated tensor becomes a graph output, so the program writes it to a buffer we read.
  for (const auto& n : names)
    if (std::find(g.outputs.begin(), g.outputs.end(), n) == g.outputs.end()) g.outputs.push_back(n);

  // The engine runtime compiles a program per batch shape (first supporting tactic per node).
  Context ctx(std::make_shared<EngineRuntime>(m, EngineInfo{}, options.threads));
  std::vector<TensorHistogram> hists(names.size());

  data.reset();
  TensorMap batch;
  size_t batches = 0;
  for (;;) {
    batch.clear();
    if (!data.next_batch(batch)) break;
    ++batches;
    const std::string where = "calibration batch " + std::to_string(batches);
    for (const auto& [name, t] : batch)
      if (std::find(g.inputs.begin(), g.inputs.end(), name) == g.inputs.end())
        invalid(where + ": '" + name + "' is not an input of the model");
    for (const auto& in : g.inputs) {
      auto it = batch.find(in);
      if (it == batch.end()) invalid(where + " has no tensor for the model's input '" + in + "'");
      const TensorType* decl = g.type_of(in);
      if (decl && decl->dtype != DType::kUndefined && decl->dtype != it->second.dtype())
        invalid(where + ": input '" + in + "' must be " + std::string(dtype_name(decl->dtype)) + ", got " +
                std::string(dtype_name(it->second.dtype())));
    }
    reference::TensorMap outputs;
    try {
      outputs = ctx.run(batch);
    } catch (const Error& e) {
      throw Error(e.code(), where + ": " + e.what());
    }
    for (size_t k = 0; k < names.size(); ++k) {
      const Tensor& t = outputs.at(names[k]);
      if (t.dtype() != DType::kF32)
        throw Error(ErrorCode::kInternal, "calibration: the program does not output f32 tensor '" + names[k] + "'");
      hists[k].add(t.data<float>(), static_cast<size_t>(t.numel()));
    }
    if (options.progress) options.progress(data.samples_read());
  }
  if (batches == 0) invalid("calibration: the calibration data yielded no batch");

  CalibrationTable table;
  table.method = options.method;
  table.samples = data.samples_read();
  table.model_fingerprint = model_fingerprint(model);
  for (size_t k = 0; k < names.size(); ++k)
    table.ranges[names[k]] = TensorRange{hists[k].amax(options.method), hists[k].min(), hists[k].max()};
  return table;
}

}  // namespace kiln::quant
