// CPU tactics of the transformer ops: ai.onnx Softmax / LogSoftmax, LayerNormalization (ai.onnx and kiln) and
// kiln::Attention, on Kiln's own vectorized row kernels (AVX-512, AVX2 or generic, picked at run time).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "backends/cpu/cpu_kernel.h"
#include "backends/cpu/vec_math.h"
#include "backends/cpu/dnnl_util.h"
#include "kiln/error.h"

namespace kiln::cpu {

namespace {

// ---- Row kernels
//
// Written as plain loops that GCC vectorizes (`omp simd`) once per ISA variant below. Comparisons must not be
// treated as trapping, or GCC keeps the selects as branches; nothing here reads the FP exception flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

#define KILN_INLINE static inline __attribute__((always_inline))

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// vexp: src/backends/cpu/vec_math.h (Softmax only feeds it x <= 0).
using vec::vexp;  // src/backends/cpu/vec_math.h

KILN_INLINE float row_max(const float* x, int64_t n) {
  float mx = kNegInf;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < n; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

// Sums in float vector lanes over blocks, blocks in double: long rows stay accurate.
KILN_INLINE double row_sum(const float* x, int64_t n) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += 1024) {
    const int64_t e = n - b < 1024 ? n - b : 1024;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < e; ++j) s += x[b + j];
    total += s;
  }
  return total;
}

KILN_INLINE double row_sq_dev(const float* x, int64_t n, float mean) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += 1024) {
    const int64_t e = n - b < 1024 ? n - b : 1024;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < e; ++j) {
      const float d = x[b + j] - mean;
      s += d * d;
    }
    total += s;
  }
  return total;
}

// y = softmax(x) or log-softmax over one contiguous row, max-subtracted like the reference (an all -inf row or a
// NaN gives NaN). y may be x.
KILN_INLINE void softmax_row_body(const float* x, float* y, int64_t n, bool log) {
  const float mx = row_max(x, n);
  float sum = 0.0f;
  if (log) {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) sum += vexp(x[j] - mx);
    const float ls = std::log(sum);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - mx) - ls;
    return;
  }
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = vexp(x[j] - mx);
    y[j] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] *= inv;
}

constexpr int64_t kLanes = 256;  // lanes of the strided softmax processed together

// Softmax over an axis of n steps `inner` elements apart, for w <= kLanes adjacent lanes: vectorized across lanes.
KILN_INLINE void softmax_lanes_body(const float* x, float* y, int64_t n, int64_t inner, int64_t w, bool log) {
  float mx[kLanes], sum[kLanes];
  for (int64_t l = 0; l < w; ++l) {
    mx[l] = kNegInf;
    sum[l] = 0.0f;
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* xr = x + j * inner;
#pragma omp simd
    for (int64_t l = 0; l < w; ++l) mx[l] = xr[l] > mx[l] ? xr[l] : mx[l];
  }
  for (int64_t j = 0; j < n; ++j) {
    const float* xr = x + j * inner;
    float* yr = y + j * inner;
#pragma omp simd
    for (int64_t l = 0; l < w; ++l) {
      const float e = vexp(xr[l] - mx[l]);
      if (!log) yr[l] = e;
      sum[l] += e;
    }
  }
  for (int64_t l = 0; l < w; ++l) sum[l] = log ? std::log(sum[l]) : 1.0f / sum[l];
  for (int64_t j = 0; j < n; ++j) {
    const float* xr = x + j * inner;
    float* yr = y + j * inner;
    if (log) {
#pragma omp simd
      for (int64_t l = 0; l < w; ++l) yr[l] = (xr[l] - mx[l]) - sum[l];
    } else {
#pragma omp simd
      for (int64_t l = 0; l < w; ++l) yr[l] *= sum[l];
    }
  }
}

// y = (x - mean) / sqrt(var + eps) * scale + bias over one row (bias may be null); returns mean and 1/std.
KILN_INLINE void layernorm_row_body(const float* x, float* y, int64_t n, const float* scale, const float* bias,
                                    float eps, float* mean_out, float* inv_std_out) {
  const float mean = static_cast<float>(row_sum(x, n) / static_cast<double>(n));
  const float var = static_cast<float>(row_sq_dev(x, n, mean) / static_cast<double>(n));
  const float inv = 1.0f / std::sqrt(var + eps);
  if (bias) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - mean) * inv * scale[j] + bias[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - mean) * inv * scale[j];
  }
  *mean_out = mean;
  *inv_std_out = inv;
}

// One row of attention scores in place: s += mask (mask_step 1: a row; 0: one value), then softmax. The
// reference adds the mask in double, so a row masked with one large negative everywhere keeps the scores'
// differences (-1e9) or loses them (-FLT_MAX): the mask's largest value is subtracted first (softmax does not
// change) when that is exact, and the rare row whose largest mask value is beyond 1e9 is added in double.
KILN_INLINE void attention_row_body(float* s, int64_t n, const float* mask, int64_t mask_step) {
  if (mask) {
    const float mm = mask_step == 0 ? mask[0] : row_max(mask, n);
    if (std::isfinite(mm) && std::fabs(mm) > 1e9f) {
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        const double v = static_cast<double>(s[j]) + static_cast<double>(mask[j * mask_step]);
        mx = v > mx ? v : mx;
      }
      for (int64_t j = 0; j < n; ++j)
        s[j] = static_cast<float>((static_cast<double>(s[j]) + static_cast<double>(mask[j * mask_step])) - mx);
    } else {
      const float shift = std::isfinite(mm) ? mm : 0.0f;
      if (mask_step == 0) {
        const float add = mask[0] - shift;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) s[j] += add;
      } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) s[j] += mask[j] - shift;
      }
    }
  }
  softmax_row_body(s, s, n, false);
}

struct RowKernels {
  void (*softmax_row)(const float* x, float* y, int64_t n, bool log);
  void (*softmax_lanes)(const float* x, float* y, int64_t n, int64_t inner, int64_t w, bool log);
  void (*layernorm_row)(const float* x, float* y, int64_t n, const float* scale, const float* bias, float eps,
                        float* mean, float* inv_std);
  void (*attention_row)(float* s, int64_t n, const float* mask, int64_t mask_step);
  std::vector<std::string> isa;  // what the variant's code needs
  const char* name;
};

#define KILN_ROW_KERNELS(SUFFIX, TARGET)                                                                          \
  TARGET void softmax_row_##SUFFIX(const float* x, float* y, int64_t n, bool log) {                              \
    softmax_row_body(x, y, n, log);                                                                               \
  }                                                                                                               \
  TARGET void softmax_lanes_##SUFFIX(const float* x, float* y, int64_t n, int64_t inner, int64_t w, bool log) {  \
    softmax_lanes_body(x, y, n, inner, w, log);                                                                   \
  }                                                                                                               \
  TARGET void layernorm_row_##SUFFIX(const float* x, float* y, int64_t n, const float* scale, const float* bias, \
                                     float eps, float* mean, float* inv_std) {                                    \
    layernorm_row_body(x, y, n, scale, bias, eps, mean, inv_std);                                                 \
  }                                                                                                               \
  TARGET void attention_row_##SUFFIX(float* s, int64_t n, const float* mask, int64_t mask_step) {                \
    attention_row_body(s, n, mask, mask_step);                                                                    \
  }

KILN_ROW_KERNELS(avx512, __attribute__((target("avx512f,fma"))))
KILN_ROW_KERNELS(avx2, __attribute__((target("avx2,fma"))))
KILN_ROW_KERNELS(generic, )

#undef KILN_ROW_KERNELS
#undef KILN_INLINE
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// The best variant for this machine, chosen once.
const RowKernels& row_kernels() {
  static const RowKernels k = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma"))
      return RowKernels{softmax_row_avx512, softmax_lanes_avx512, layernorm_row_avx512, attention_row_avx512,
                        {"avx512f", "fma"}, "avx512"};
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return RowKernels{softmax_row_avx2, softmax_lanes_avx2, layernorm_row_avx2, attention_row_avx2,
                        {"avx2", "fma"}, "avx2"};
    return RowKernels{softmax_row_generic, softmax_lanes_generic, layernorm_row_generic, attention_row_generic,
                      {}, "generic"};
  }();
  return k;
}

std::string unsupported_message(const KernelConfig& cfg, const std::string& tactic) {
  return cfg.node->describe() + ": tactic " + tactic + " does not support this node";
}

std::vector<int64_t> dense_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) s[i - 1] = s[i] * dims[i];
  return s;
}

// ---- kiln.softmax: ai.onnx Softmax and LogSoftmax

// [outer, n, inner] around the softmax axis (opset < 13: the input coerced to 2-D at `axis`).
struct SoftmaxGeom {
  int64_t outer = 1, n = 1, inner = 1;
};

std::optional<SoftmaxGeom> softmax_geom(const KernelConfig& cfg) {
  if (cfg.inputs.empty() || !cfg.has_input(0) || cfg.outputs.size() != 1 || !all_f32(cfg)) return std::nullopt;
  const std::vector<int64_t>& x = cfg.inputs[0].shape;
  const int64_t rank = static_cast<int64_t>(x.size());
  if (rank == 0 || shape_numel(x) == 0 || cfg.outputs[0].shape != x) return std::nullopt;
  const int64_t axis_attr = cfg.view().attr_int("axis");
  SoftmaxGeom g;
  if (cfg.opset >= 13) {
    if (axis_attr < -rank || axis_attr >= rank) return std::nullopt;
    const int64_t axis = axis_attr < 0 ? axis_attr + rank : axis_attr;
    for (int64_t i = 0; i < rank; ++i) (i < axis ? g.outer : i == axis ? g.n : g.inner) *= x[i];
  } else {
    if (axis_attr < -rank || axis_attr > rank) return std::nullopt;
    const int64_t axis = axis_attr < 0 ? axis_attr + rank : axis_attr;
    for (int64_t i = 0; i < rank; ++i) (i < axis ? g.outer : g.n) *= x[i];
  }
  return g;
}

class SoftmaxKernel final : public CpuKernel {
 public:
  SoftmaxKernel(SoftmaxGeom g, bool log) : g_(g), log_(log), k_(row_kernels()) {}

  void run(const KernelArgs& args) override {
    const float* x = static_cast<const float*>(args.inputs[0]);
    float* y = static_cast<float*>(args.outputs[0]);
    const int64_t n = g_.n, inner = g_.inner;
    if (inner == 1) {
#pragma omp parallel for schedule(static)
      for (int64_t o = 0; o < g_.outer; ++o) k_.softmax_row(x + o * n, y + o * n, n, log_);
      return;
    }
    const int64_t chunks = (inner + kLanes - 1) / kLanes, tasks = g_.outer * chunks;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t o = t / chunks, l0 = (t % chunks) * kLanes;
      const int64_t off = o * n * inner + l0;
      k_.softmax_lanes(x + off, y + off, n, inner, std::min(kLanes, inner - l0), log_);
    }
  }
  std::string describe() const override { return std::string(k_.name) + (log_ ? " log-softmax" : " softmax"); }
  std::vector<std::string> required_isa() const override { return k_.isa; }

 private:
  SoftmaxGeom g_;
  bool log_;
  const RowKernels& k_;
};

class SoftmaxTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.softmax"; }
  bool supports(const KernelConfig& cfg) const override { return softmax_geom(cfg).has_value(); }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const std::optional<SoftmaxGeom> g = softmax_geom(cfg);
    if (!g) throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, name()));
    return std::make_unique<SoftmaxKernel>(*g, cfg.node->op_type == "LogSoftmax");
  }
};

// ---- kiln.layernorm: kiln::LayerNormalization and ai.onnx LayerNormalization (with Mean / InvStdDev)

// How Scale or B meets the normalized columns of a row (dims [axis, rank) of X): read in place when it holds
// exactly one value per column, else spread over the columns through its broadcast strides.
struct ColumnParam {
  bool present = false;
  bool dense = false;
  std::vector<int64_t> dims, strides;  // X's dims from axis on; the parameter's strides there (0: broadcast)
  std::vector<float> spread;           // the spread values of a constant parameter
};

void spread_columns(const float* src, const ColumnParam& p, float* dst) {
  std::vector<int64_t> idx(p.dims.size(), 0);
  const int64_t cols = shape_numel(p.dims);
  int64_t off = 0;
  for (int64_t j = 0; j < cols; ++j) {
    dst[j] = src[off];
    for (size_t d = p.dims.size(); d-- > 0;) {
      off += p.strides[d];
      if (++idx[d] < p.dims[d]) break;
      off -= p.strides[d] * idx[d];
      idx[d] = 0;
    }
  }
}

std::optional<ColumnParam> column_param(const ValueInfo& v, const std::vector<int64_t>& x, size_t axis) {
  ColumnParam p;
  if (!v.present()) return p;
  p.present = true;
  if (v.shape.size() > x.size()) return std::nullopt;
  std::vector<int64_t> s(x.size() - v.shape.size(), 1);
  s.insert(s.end(), v.shape.begin(), v.shape.end());
  const std::vector<int64_t> st = dense_strides(s);
  p.dense = true;
  for (size_t d = 0; d < x.size(); ++d) {
    if (s[d] != 1 && s[d] != x[d]) return std::nullopt;
    if (d < axis) {
      if (s[d] != 1) return std::nullopt;  // varies across rows: not a per-column parameter
      continue;
    }
    p.dims.push_back(x[d]);
    p.strides.push_back(s[d] == 1 ? 0 : st[d]);
    if (s[d] != x[d]) p.dense = false;
  }
  if (v.constant && !p.dense) {
    p.spread.resize(static_cast<size_t>(shape_numel(p.dims)));
    spread_columns(v.constant->data<float>(), p, p.spread.data());
  }
  return p;
}

struct LayerNormPlan {
  int64_t rows = 1, cols = 1;
  float eps = 1e-5f;
  ColumnParam scale, bias;
  bool mean_out = false, inv_std_out = false;
};

std::optional<LayerNormPlan> layernorm_plan(const KernelConfig& cfg) {
  if (cfg.inputs.size() < 2 || !cfg.has_input(0) || !cfg.has_input(1) || cfg.outputs.empty() ||
      !cfg.outputs[0].present() || !all_f32(cfg))
    return std::nullopt;
  const NodeView v = cfg.view();
  const bool onnx = cfg.node->domain.empty();
  if (onnx && v.attr_int("stash_type") != 1) return std::nullopt;
  if (!onnx && cfg.outputs.size() > 1) return std::nullopt;
  const std::vector<int64_t>& x = cfg.inputs[0].shape;
  const int64_t rank = static_cast<int64_t>(x.size());
  const int64_t axis_attr = v.attr_int("axis");
  if (rank == 0 || axis_attr < -rank || axis_attr >= rank || shape_numel(x) == 0 || cfg.outputs[0].shape != x)
    return std::nullopt;
  const size_t axis = static_cast<size_t>(axis_attr < 0 ? axis_attr + rank : axis_attr);
  LayerNormPlan p;
  for (size_t d = 0; d < x.size(); ++d) (d < axis ? p.rows : p.cols) *= x[d];
  p.eps = v.attr_float("epsilon");
  std::optional<ColumnParam> scale = column_param(cfg.inputs[1], x, axis);
  std::optional<ColumnParam> bias =
      column_param(cfg.has_input(2) ? cfg.inputs[2] : ValueInfo{}, x, axis);
  if (!scale || !bias) return std::nullopt;
  p.scale = std::move(*scale);
  p.bias = std::move(*bias);
  // Mean and InvStdDev: [X's dims before axis, 1, ...], one value per row.
  for (size_t i = 1; i < cfg.outputs.size() && i < 3; ++i) {
    if (!cfg.outputs[i].present()) continue;
    if (shape_numel(cfg.outputs[i].shape) != p.rows) return std::nullopt;
    (i == 1 ? p.mean_out : p.inv_std_out) = true;
  }
  if (cfg.outputs.size() > 3) return std::nullopt;
  return p;
}

class LayerNormKernel final : public CpuKernel {
 public:
  explicit LayerNormKernel(LayerNormPlan p) : p_(std::move(p)), k_(row_kernels()) {}

  void run(const KernelArgs& args) override {
    const float* x = static_cast<const float*>(args.inputs[0]);
    float* y = static_cast<float*>(args.outputs[0]);
    float* scratch = static_cast<float*>(args.scratch);
    const float* scale = column_values(p_.scale, args.inputs[1], scratch);
    const float* bias = p_.bias.present ? column_values(p_.bias, args.inputs[2], scratch + p_.cols) : nullptr;
    float* mean = p_.mean_out ? static_cast<float*>(args.outputs[1]) : nullptr;
    float* inv_std = p_.inv_std_out ? static_cast<float*>(args.outputs[2]) : nullptr;
    const int64_t cols = p_.cols;
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < p_.rows; ++r) {
      float m = 0.0f, is = 0.0f;
      k_.layernorm_row(x + r * cols, y + r * cols, cols, scale, bias, p_.eps, &m, &is);
      if (mean) mean[r] = m;
      if (inv_std) inv_std[r] = is;
    }
  }
  // Room to spread a non-constant broadcast Scale and B over the columns (the bias' room follows the scale's).
  size_t scratch_bytes() const override {
    const bool spread = needs_room(p_.scale) || needs_room(p_.bias);
    return spread ? 2 * static_cast<size_t>(p_.cols) * sizeof(float) : 0;
  }
  std::string describe() const override { return std::string(k_.name) + " layernorm"; }
  std::vector<std::string> required_isa() const override { return k_.isa; }

 private:
  static bool needs_room(const ColumnParam& c) { return c.present && !c.dense && c.spread.empty(); }
  const float* column_values(const ColumnParam& c, const void* input, float* room) const {
    if (c.dense) return static_cast<const float*>(input);
    if (!c.spread.empty()) return c.spread.data();
    spread_columns(static_cast<const float*>(input), c, room);
    return room;
  }

  LayerNormPlan p_;
  const RowKernels& k_;
};

class LayerNormTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.layernorm"; }
  bool supports(const KernelConfig& cfg) const override { return layernorm_plan(cfg).has_value(); }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    std::optional<LayerNormPlan> p = layernorm_plan(cfg);
    if (!p) throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, name()));
    return std::make_unique<LayerNormKernel>(std::move(*p));
  }
};

// ---- kiln.attention: kiln::Attention, one (batch, head, query block) per task

struct AttentionPlan {
  int64_t batch = 1, sq = 1, sk = 1, heads = 1, dk = 1, dv = 1;
  float scale = 1.0f;
  bool has_mask = false;
  std::vector<int64_t> mask_strides = {0, 0, 0, 0};  // over [B, H, Sq, Sk]; 0 where the mask broadcasts
  int64_t q_block = 1;                               // query rows per task
  int threads = 1;                                   // per-thread scratch slots
};

std::optional<AttentionPlan> attention_plan(const KernelConfig& cfg) {
  if (cfg.inputs.size() < 3 || !cfg.has_input(0) || !cfg.has_input(1) || !cfg.has_input(2) || cfg.outputs.size() != 1 ||
      !all_f32(cfg))
    return std::nullopt;
  const std::vector<int64_t>& q = cfg.inputs[0].shape;
  const std::vector<int64_t>& k = cfg.inputs[1].shape;
  const std::vector<int64_t>& v = cfg.inputs[2].shape;
  if (q.size() != 3 || k.size() != 3 || v.size() != 3) return std::nullopt;
  AttentionPlan p;
  p.heads = cfg.view().attr_int("num_heads");
  if (p.heads <= 0 || q[2] % p.heads != 0 || v[2] % p.heads != 0) return std::nullopt;
  p.batch = q[0];
  p.sq = q[1];
  p.sk = k[1];
  p.dk = q[2] / p.heads;
  p.dv = v[2] / p.heads;
  if (k[0] != p.batch || v[0] != p.batch || k[2] != q[2] || v[1] != p.sk) return std::nullopt;
  for (int64_t d : {p.batch, p.sq, p.sk, p.dk, p.dv})
    if (d <= 0) return std::nullopt;
  if (cfg.outputs[0].shape != std::vector<int64_t>{p.batch, p.sq, v[2]}) return std::nullopt;
  const float scale_attr = cfg.view().attr_float("scale");
  p.scale = scale_attr != 0.0f ? scale_attr : static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.dk)));
  if (cfg.has_input(3)) {
    const std::vector<int64_t>& m = cfg.inputs[3].shape;
    if (m.size() > 4) return std::nullopt;
    const std::vector<int64_t> full = {p.batch, p.heads, p.sq, p.sk};
    std::vector<int64_t> padded(4 - m.size(), 1);
    padded.insert(padded.end(), m.begin(), m.end());
    const std::vector<int64_t> st = dense_strides(padded);
    for (size_t i = 0; i < 4; ++i) {
      if (padded[i] != 1 && padded[i] != full[i]) return std::nullopt;
      p.mask_strides[i] = padded[i] == 1 ? 0 : st[i];
    }
    p.has_mask = true;
  }
  p.threads = std::max({cfg.threads, omp_get_max_threads(), 1});
  // Rows per task: at most 64 (the score block stays in cache), fewer when (batch, head) pairs alone would leave
  // threads idle.
  p.q_block = std::min<int64_t>(p.sq, 64);
  while (p.q_block > 8 && p.batch * p.heads * ((p.sq + p.q_block - 1) / p.q_block) < 2 * p.threads)
    p.q_block = (p.q_block + 1) / 2;
  return p;
}

class AttentionKernel final : public CpuKernel {
 public:
  explicit AttentionKernel(AttentionPlan p) : p_(std::move(p)), k_(row_kernels()) {}

  void run(const KernelArgs& args) override {
    const float* q = static_cast<const float*>(args.inputs[0]);
    const float* kk = static_cast<const float*>(args.inputs[1]);
    const float* v = static_cast<const float*>(args.inputs[2]);
    const float* mask = p_.has_mask ? static_cast<const float*>(args.inputs[3]) : nullptr;
    float* y = static_cast<float*>(args.outputs[0]);
    float* scratch = static_cast<float*>(args.scratch);
    const int64_t blocks = (p_.sq + p_.q_block - 1) / p_.q_block;
    const int64_t tasks = p_.batch * p_.heads * blocks;
    const int64_t hdk = p_.heads * p_.dk, hdv = p_.heads * p_.dv;
    const int64_t slot = slot_floats();
    // An exception must not leave the parallel region: the first failure is recorded and thrown after it.
    dnnl_status_t failed = dnnl_success;
    const int team = static_cast<int>(std::min<int64_t>({omp_get_max_threads(), p_.threads, tasks}));
#pragma omp parallel num_threads(team)
    {
      float* s = scratch + omp_get_thread_num() * slot;
#pragma omp for schedule(static)
      for (int64_t t = 0; t < tasks; ++t) {
        const int64_t b = t / (p_.heads * blocks), h = (t / blocks) % p_.heads, i0 = (t % blocks) * p_.q_block;
        const int64_t rows = std::min(p_.q_block, p_.sq - i0);
        // S = Q_h K_h^T * scale, reading the heads in place through the leading dimension H * Dk. Inside the
        // team, oneDNN's GEMM runs on the calling thread alone.
        dnnl_status_t st = dnnl_sgemm('N', 'T', rows, p_.sk, p_.dk, p_.scale, q + (b * p_.sq + i0) * hdk + h * p_.dk,
                                      hdk, kk + b * p_.sk * hdk + h * p_.dk, hdk, 0.0f, s, p_.sk);
        if (st == dnnl_success) {
          for (int64_t i = 0; i < rows; ++i) {
            const float* mrow = mask ? mask + b * p_.mask_strides[0] + h * p_.mask_strides[1] +
                                           (i0 + i) * p_.mask_strides[2]
                                     : nullptr;
            k_.attention_row(s + i * p_.sk, p_.sk, mrow, p_.mask_strides[3] == 0 ? 0 : 1);
          }
          // Y_h = P V_h, written into the head's columns of Y.
          st = dnnl_sgemm('N', 'N', rows, p_.dv, p_.sk, 1.0f, s, p_.sk, v + b * p_.sk * hdv + h * p_.dv, hdv, 0.0f,
                          y + (b * p_.sq + i0) * hdv + h * p_.dv, hdv);
        }
        if (st != dnnl_success) {
#pragma omp critical(kiln_attention_failure)
          failed = st;
        }
      }
    }
    if (failed != dnnl_success)
      throw Error(ErrorCode::kInternal, "attention: dnnl_sgemm failed with status " + std::to_string(failed));
  }
  size_t scratch_bytes() const override { return static_cast<size_t>(p_.threads * slot_floats()) * sizeof(float); }
  std::string describe() const override {
    return "dnnl_sgemm + " + std::string(k_.name) + " softmax, " + std::to_string(p_.q_block) + "-row query blocks";
  }
  std::vector<std::string> required_isa() const override { return k_.isa; }

 private:
  // One thread's score block, rounded to 64 bytes so slots do not share cache lines.
  int64_t slot_floats() const { return (p_.q_block * p_.sk + 15) / 16 * 16; }

  AttentionPlan p_;
  const RowKernels& k_;
};

class AttentionTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.attention"; }
  bool supports(const KernelConfig& cfg) const override { return attention_plan(cfg).has_value(); }
  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    std::optional<AttentionPlan> p = attention_plan(cfg);
    if (!p) throw Error(ErrorCode::kUnsupported, unsupported_message(cfg, name()));
    return std::make_unique<AttentionKernel>(std::move(*p));
  }
};

}  // namespace

void register_transformer_tactics(TacticRegistry& r) {
  auto softmax = std::make_shared<SoftmaxTactic>();
  auto layernorm = std::make_shared<LayerNormTactic>();
  r.add("", "Softmax", softmax);
  r.add("", "LogSoftmax", softmax);
  r.add("", "LayerNormalization", layernorm);
  r.add("kiln", "LayerNormalization", layernorm);
  r.add("kiln", "Attention", std::make_shared<AttentionTactic>());
}

}  // namespace kiln::cpu
