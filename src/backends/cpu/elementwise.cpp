// Kiln's own elementwise kernels ("kiln.eltwise"): kiln::ElementwiseChain, kiln::Gelu, unary and
// broadcasting binary ai.onnx ops, Where and Cast, on plain or channels-last tensors.
//
// f32 ops compile at create() into a small program: one operand loaded into an accumulator, then
// steps (unary functions, binary ops against another broadcast operand). The output is walked in
// blocks of up to kBlock contiguous elements and each step is one tight vector loop over the block,
// so the accumulator stays in L1 between steps. The loops are written as scalar code the compiler
// vectorizes (`omp simd`) once per ISA (target_clones: AVX-512, AVX2, baseline), with polynomial
// exp/log/tanh/erf accurate to ~2 ulp; every step rounds to f32 like the unfused reference ops.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numbers>
#include <optional>
#include <type_traits>

#include "backends/cpu/cpu_kernel.h"
#include "backends/reference/cast_rules.h"

namespace kiln::cpu {

namespace {

#define KILN_EW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define KILN_EW_INLINE inline __attribute__((always_inline))

constexpr int64_t kBlock = 1024;         // elements per step call: 4 KB, stays in L1 across the steps
constexpr int64_t kMinRun = 64;          // shorter innermost runs are batched several rows per block
constexpr int64_t kParallelMin = 16384;  // smaller tensors run serially: a parallel region costs more

const char* isa_name() {
  static const char* name = [] {
    __builtin_cpu_init();
    // The feature sets of the clones' x86-64-v4 and -v3 levels (clang 14 has no level names here).
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd"))
      return "avx512";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
      return "avx2";
    return "generic";
  }();
  return name;
}

std::vector<std::string> isa_features() {
  const std::string isa = isa_name();
  if (isa == "avx512") return {"avx512f"};
  if (isa == "avx2") return {"avx2"};
  return {};
}

// ---- Scalar math written so that loops over it vectorize (no calls, no branches).

KILN_EW_INLINE float from_bits(int32_t b) { return std::bit_cast<float>(b); }
KILN_EW_INLINE int32_t to_bits(float f) { return std::bit_cast<int32_t>(f); }

// e^x: Cephes' reduction x = n ln2 + r with a degree-5 polynomial (~1 ulp). 2^n is applied in two
// halves so that subnormal results and overflow to inf come out right.
KILN_EW_INLINE float exp_f(float x) {
  const float xc = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float t = xc * 1.44269504088896341f + kShift;
  const int32_t n = to_bits(t) - to_bits(kShift);
  const float fn = t - kShift;
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t n1 = n >> 1, n2 = n - n1;
  const float y = p * from_bits((n1 + 127) << 23) * from_bits((n2 + 127) << 23);
  return x != x ? x : y;
}

// ln x: Cephes' logf, x = m 2^e with m in [sqrt(1/2), sqrt(2)) and a degree-8 polynomial in m - 1.
KILN_EW_INLINE float log_f(float x) {
  // Subnormals are scaled into the normal range first. (Written so that GCC 12 if-converts it: two
  // selects of constants on `tiny` kept it from vectorizing.)
  const bool tiny = x < 1.17549435e-38f;
  const float xs = x * (tiny ? 8388608.0f : 1.0f);
  const int32_t b = to_bits(xs);
  const float bias = tiny ? 149.0f : 126.0f;
  float fe = static_cast<float>((b >> 23) & 0xff) - bias;
  const float m = from_bits((b & 0x007fffff) | 0x3f000000);  // xs = m 2^fe with m in [0.5, 1)
  const bool low = m < 0.707106781186547524f;
  const float f = low ? m + m - 1.0f : m - 1.0f;
  fe = low ? fe - 1.0f : fe;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y + fe * -2.12194440e-4f;
  y = y - 0.5f * z;
  float r = f + y;
  r = r + fe * 0.693359375f;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  r = x == 0.0f ? -kInf : r;
  r = x < 0.0f ? std::numeric_limits<float>::quiet_NaN() : r;
  r = x == kInf ? kInf : r;
  return x != x ? x : r;
}

// tanh: Cephes' odd polynomial below 0.625, else 1 - 2 / (e^2|x| + 1) with the sign of x.
KILN_EW_INLINE float tanh_f(float x) {
  const float a = std::fabs(x);
  const float s = x * x;
  float p = -5.70498872745e-3f;
  p = p * s + 2.06390887954e-2f;
  p = p * s - 5.37397155531e-2f;
  p = p * s + 1.33314422036e-1f;
  p = p * s - 3.33332819422e-1f;
  const float small = p * s * x + x;
  const float big = 1.0f - 2.0f / (exp_f(a + a) + 1.0f);
  const float r = a < 0.625f ? small : (x < 0.0f ? -big : big);
  return x != x ? x : r;
}

// erf: its Taylor series below 0.5; above, 1 - erfc with erfc from Numerical Recipes' erfcc
// (t exp(-x^2 + P(t)), t = 1 / (1 + x/2), fractional error < 1.2e-7 on the whole half line).
KILN_EW_INLINE float erf_f(float x) {
  const float a = std::fabs(x);
  const float s = x * x;
  float p = 1.2055332981789664e-4f;  // 2/sqrt(pi) / (6! 13)
  p = p * s - 8.5483270234508e-4f;   // -2/sqrt(pi) / (5! 11)
  p = p * s + 5.2239776254421e-3f;
  p = p * s - 2.6866170645131e-2f;
  p = p * s + 1.1283791670955126e-1f;
  p = p * s - 3.7612638903183752e-1f;
  p = p * s + 1.1283791670955126f;
  const float small = x * p;
  const float t = 1.0f / (1.0f + 0.5f * a);
  float q = 0.17087277f;
  q = q * t - 0.82215223f;
  q = q * t + 1.48851587f;
  q = q * t - 1.13520398f;
  q = q * t + 0.27886807f;
  q = q * t - 0.18628806f;
  q = q * t + 0.09678418f;
  q = q * t + 0.37409196f;
  q = q * t + 1.00002368f;
  q = q * t - 1.26551223f;
  const float big = 1.0f - t * exp_f(q - a * a);
  const float r = a < 0.5f ? small : (x < 0.0f ? -big : big);
  return x != x ? x : r;
}

// log(1 + u) for u >= 0 without losing u's low bits (Goldberg's trick).
KILN_EW_INLINE float log1p_f(float u) {
  const float w = 1.0f + u;
  const float d = w - 1.0f;
  const float r = log_f(w) * (u / d);  // evaluated unconditionally: a trapping op under a select blocks if-conversion
  return d == 0.0f ? u : r;
}

// std::min / std::max as the reference writes them (argument order decides NaN handling).
KILN_EW_INLINE float std_min(float a, float b) { return b < a ? b : a; }
KILN_EW_INLINE float std_max(float a, float b) { return a < b ? b : a; }

// Max/Min of the variadic ops: a NaN operand wins, like numpy's maximum/minimum.
KILN_EW_INLINE float nan_max(float a, float b) {
  const float r = b > a ? b : a;
  return a != a ? a : (b != b ? b : r);
}
KILN_EW_INLINE float nan_min(float a, float b) {
  const float r = b < a ? b : a;
  return a != a ? a : (b != b ? b : r);
}

// ---- Step loops.

// clang-format off
enum class UOp : uint8_t {
  kRelu, kLeakyRelu, kSigmoid, kTanh, kExp, kLog, kSqrt, kErf, kNeg, kAbs, kReciprocal,
  kClip, kHardSigmoid, kHardSwish, kSoftplus, kGelu, kGeluTanh, kElu,
};
// clang-format on
enum class BOp : uint8_t { kAdd, kSub, kMul, kDiv, kPow, kMax, kMin, kPRelu };

const char* uop_name(UOp op) {
  static const char* names[] = {"Relu",        "LeakyRelu", "Sigmoid",  "Tanh", "Exp",        "Log",
                                "Sqrt",        "Erf",       "Neg",      "Abs",  "Reciprocal", "Clip",
                                "HardSigmoid", "HardSwish", "Softplus", "Gelu", "GeluTanh",   "Elu"};
  return names[static_cast<int>(op)];
}
const char* bop_name(BOp op) {
  static const char* names[] = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu"};
  return names[static_cast<int>(op)];
}

// d[i] = f(s[i]); d may equal s. Clip's bounds are p0/p1, NaN meaning "no bound".
KILN_EW_CLONES void unary_loop(UOp op, float* d, const float* s, int64_t n, float p0, float p1) {
#define KILN_EW_LOOP(expr)                              \
  _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) { \
    const float x = s[i];                               \
    d[i] = (expr);                                      \
  }                                                     \
  break;
  switch (op) {
    case UOp::kRelu:
      KILN_EW_LOOP(x > 0.0f ? x : 0.0f)
    case UOp::kLeakyRelu:
      KILN_EW_LOOP(x < 0.0f ? p0 * x : x)
    case UOp::kSigmoid:
      KILN_EW_LOOP(1.0f / (1.0f + exp_f(-x)))
    case UOp::kTanh:
      KILN_EW_LOOP(tanh_f(x))
    case UOp::kExp:
      KILN_EW_LOOP(exp_f(x))
    case UOp::kLog:
      KILN_EW_LOOP(log_f(x))
    case UOp::kErf:
      KILN_EW_LOOP(erf_f(x))
    case UOp::kNeg:
      KILN_EW_LOOP(-x)
    case UOp::kAbs:
      KILN_EW_LOOP(std::fabs(x))
    case UOp::kReciprocal:
      KILN_EW_LOOP(1.0f / x)
    case UOp::kClip:
      KILN_EW_LOOP((x < p0 ? p0 : x) > p1 ? p1 : (x < p0 ? p0 : x))
    case UOp::kHardSigmoid:
      KILN_EW_LOOP(std_max(0.0f, std_min(1.0f, p0 * x + p1)))
    case UOp::kHardSwish:
      KILN_EW_LOOP(x * std_max(0.0f, std_min(1.0f, x / 6.0f + 0.5f)))
    case UOp::kSoftplus:
      KILN_EW_LOOP((x > 0.0f ? x : 0.0f) + log1p_f(exp_f(-std::fabs(x))))  // the reference's two branches in one
    case UOp::kGelu:
      KILN_EW_LOOP(0.5f * x * (1.0f + erf_f(x / static_cast<float>(std::numbers::sqrt2))))
    case UOp::kGeluTanh: {
      const float k = static_cast<float>(std::sqrt(2.0 / std::numbers::pi));
      KILN_EW_LOOP(0.5f * x * (1.0f + tanh_f(k * (x + 0.044715f * x * x * x))))
    }
    case UOp::kElu:
      KILN_EW_LOOP(x < 0.0f ? p0 * (exp_f(x) - 1.0f) : x)
    case UOp::kSqrt:
      break;  // sqrt_loop: the compiler keeps errno handling in sqrtf loops
  }
#undef KILN_EW_LOOP
}

__attribute__((target("avx512f"))) void sqrt_avx512(float* d, const float* s, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, _mm512_maskz_sqrt_ps(0xffff, _mm512_loadu_ps(s + i)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(d + i, m, _mm512_maskz_sqrt_ps(m, _mm512_maskz_loadu_ps(m, s + i)));
  }
}
__attribute__((target("avx"))) void sqrt_avx(float* d, const float* s, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_sqrt_ps(_mm256_loadu_ps(s + i)));
  for (; i < n; ++i) d[i] = std::sqrt(s[i]);
}
void sqrt_loop(float* d, const float* s, int64_t n) {
  static const auto fn = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return &sqrt_avx512;
    if (__builtin_cpu_supports("avx")) return &sqrt_avx;
    return static_cast<void (*)(float*, const float*, int64_t)>([](float* dd, const float* ss, int64_t nn) {
      for (int64_t i = 0; i < nn; ++i) dd[i] = std::sqrt(ss[i]);
    });
  }();
  fn(d, s, n);
}

// Pow computes in double and rounds once, as the reference does; x^2 is that rounding of x*x.
float pow_one(float b, float e) { return static_cast<float>(std::pow(static_cast<double>(b), static_cast<double>(e))); }

#define KILN_EW_BINARY_CASES(A, B)             \
  case BOp::kAdd:                              \
    KILN_EW_LOOP((A) + (B))                    \
  case BOp::kSub:                              \
    KILN_EW_LOOP((A) - (B))                    \
  case BOp::kMul:                              \
    KILN_EW_LOOP((A) * (B))                    \
  case BOp::kDiv:                              \
    KILN_EW_LOOP((A) / (B))                    \
  case BOp::kMax:                              \
    KILN_EW_LOOP(nan_max((A), (B)))            \
  case BOp::kMin:                              \
    KILN_EW_LOOP(nan_min((A), (B)))            \
  case BOp::kPRelu:                            \
    KILN_EW_LOOP((A) < 0.0f ? (B) * (A) : (A)) \
  case BOp::kPow:                              \
    KILN_EW_LOOP_SCALAR(pow_one((A), (B)))

#define KILN_EW_LOOP(expr)                                           \
  _Pragma("omp simd") for (int64_t i = 0; i < n; ++i) d[i] = (expr); \
  break;
#define KILN_EW_LOOP_SCALAR(expr)                \
  for (int64_t i = 0; i < n; ++i) d[i] = (expr); \
  break;

// d[i] = a[i] op b[i]; d may equal a or b.
KILN_EW_CLONES void binary_vv(BOp op, float* d, const float* a, const float* b, int64_t n) {
  switch (op) { KILN_EW_BINARY_CASES(a[i], b[i]) }
}
// d[i] = a[i] op b.
KILN_EW_CLONES void binary_vs(BOp op, float* d, const float* a, float b, int64_t n) {
  switch (op) { KILN_EW_BINARY_CASES(a[i], b) }
}
// d[i] = a op b[i].
KILN_EW_CLONES void binary_sv(BOp op, float* d, float a, const float* b, int64_t n) {
  switch (op) { KILN_EW_BINARY_CASES(a, b[i]) }
}
#undef KILN_EW_LOOP
#undef KILN_EW_LOOP_SCALAR
#undef KILN_EW_BINARY_CASES

// ---- Broadcast iteration.

// Logical dim held by each physical dim of a rank-r value stored in `layout` (N, D1..Dk, C for
// channels-last).
std::vector<size_t> physical_order(size_t r, Layout layout) {
  std::vector<size_t> p(r);
  for (size_t i = 0; i < r; ++i) p[i] = i;
  if (layout == Layout::kChannelsLast && r >= 3) {
    for (size_t i = 1; i + 1 < r; ++i) p[i] = i + 1;
    p[r - 1] = 1;
  }
  return p;
}

// Strides over the logical dims of `out` of a value of logical `shape` whose own per-dim strides
// are `own` (right-aligned numpy broadcasting; 0 on broadcast dims).
std::vector<int64_t> broadcast_onto(const std::vector<int64_t>& shape, const std::vector<int64_t>& own,
                                    const std::vector<int64_t>& out) {
  std::vector<int64_t> s(out.size(), 0);
  const size_t lead = out.size() - shape.size();
  for (size_t k = 0; k < shape.size(); ++k)
    if (shape[k] != 1) s[lead + k] = own[k];
  return s;
}

// True when `shape` broadcasts onto `out` in one direction (rank <= out's, each dim 1 or equal).
bool broadcasts_onto(const std::vector<int64_t>& shape, const std::vector<int64_t>& out) {
  if (shape.size() > out.size()) return false;
  const size_t lead = out.size() - shape.size();
  for (size_t k = 0; k < shape.size(); ++k)
    if (shape[k] != 1 && shape[k] != out[lead + k]) return false;
  return true;
}

// The output's iteration space in physical order with unit dims dropped and neighbouring dims
// merged where every operand walks them as one; per-operand strides in elements (0: broadcast).
struct Plan {
  std::vector<int64_t> dims;                  // outermost first; {1} for a single element
  std::vector<std::vector<int64_t>> strides;  // [operand][dim]
  int64_t total = 0;

  int64_t inner() const { return dims.back(); }
  int64_t rows() const { return total == 0 ? 0 : total / inner(); }
  // Element offset of the first element of `row` (an index over all dims but the last) per operand.
  void row_offsets(int64_t row, int64_t* off) const {
    for (size_t j = 0; j < strides.size(); ++j) off[j] = 0;
    for (size_t d = dims.size() - 1; d-- > 0;) {
      const int64_t idx = row % dims[d];
      row /= dims[d];
      for (size_t j = 0; j < strides.size(); ++j) off[j] += idx * strides[j][d];
    }
  }
};

Plan make_plan(const std::vector<int64_t>& out_dims, const std::vector<std::vector<int64_t>>& op_strides) {
  Plan p;
  p.total = shape_numel(out_dims);
  const size_t k = op_strides.size();
  p.strides.resize(k);
  for (size_t d = 0; d < out_dims.size(); ++d) {
    if (out_dims[d] == 1) continue;
    bool merge = !p.dims.empty();
    for (size_t j = 0; j < k && merge; ++j) merge = p.strides[j].back() == op_strides[j][d] * out_dims[d];
    if (merge) {
      p.dims.back() *= out_dims[d];
      for (size_t j = 0; j < k; ++j) p.strides[j].back() = op_strides[j][d];
      continue;
    }
    p.dims.push_back(out_dims[d]);
    for (size_t j = 0; j < k; ++j) p.strides[j].push_back(op_strides[j][d]);
  }
  if (p.dims.empty()) {
    p.dims = {1};
    for (auto& s : p.strides) s = {0};
  }
  return p;
}

// The plan for plain operands `shapes` broadcast onto a plain output.
Plan plain_plan(const std::vector<int64_t>& out, const std::vector<std::vector<int64_t>>& shapes) {
  std::vector<std::vector<int64_t>> st;
  for (const auto& s : shapes) st.push_back(broadcast_onto(s, layout_strides(s, Layout::kPlain), out));
  return make_plan(out, st);
}

// Calls fn(offsets, out_offset) for every row of the plan; rows in parallel for large outputs.
template <typename Fn>
void for_each_row(const Plan& p, Fn&& fn) {
  if (p.total == 0) return;
  const int64_t rows = p.rows(), inner = p.inner();
  auto one = [&](int64_t row) {
    int64_t off[3];
    p.row_offsets(row, off);
    fn(off, row * inner);
  };
  if (p.total >= kParallelMin && rows > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t row = 0; row < rows; ++row) one(row);
  } else {
    for (int64_t row = 0; row < rows; ++row) one(row);
  }
}

// ---- What a node compiles to.

struct StepSpec {
  bool binary = false;
  UOp u = UOp::kRelu;
  BOp b = BOp::kAdd;
  int input = -1;  // binary: the node input of the other operand; -1: the constant `value`
  float value = 0;
  bool reversed = false;             // binary: acc = other op acc
  float p0 = 0, p1 = 0;              // unary parameters (Clip: lo, hi; NaN for no bound)
  int p0_input = -1, p1_input = -1;  // Clip bounds read from these node inputs on each run

  std::string describe() const {
    if (!binary) return uop_name(u);
    return std::string(bop_name(b)) + (input >= 0 ? ":" + std::to_string(input) : ":c") + (reversed ? ":r" : "");
  }
};

enum class Kind { kF32, kIntBinary, kWhere, kCast };

struct Spec {
  Kind kind = Kind::kF32;
  int init = 0;  // kF32: the node input the accumulator starts from
  std::vector<StepSpec> steps;
  BOp int_op = BOp::kAdd;

  // Node inputs walked over the output (the accumulator's start and binary operands).
  std::vector<int> operands() const {
    std::vector<int> ops = {init};
    for (const auto& s : steps)
      if (s.binary && s.input >= 0 && std::find(ops.begin(), ops.end(), s.input) == ops.end()) ops.push_back(s.input);
    return ops;
  }
};

constexpr size_t kMaxOperands = 16;
constexpr float kNoBound = std::numeric_limits<float>::quiet_NaN();

bool chain_unary(const std::string& op, UOp& u) {
  static const std::pair<const char*, UOp> table[] = {{"Sqrt", UOp::kSqrt}, {"Exp", UOp::kExp},
                                                      {"Log", UOp::kLog},   {"Erf", UOp::kErf},
                                                      {"Tanh", UOp::kTanh}, {"Sigmoid", UOp::kSigmoid},
                                                      {"Relu", UOp::kRelu}, {"Neg", UOp::kNeg},
                                                      {"Abs", UOp::kAbs},   {"Reciprocal", UOp::kReciprocal}};
  for (const auto& [name, op_code] : table)
    if (op == name) return u = op_code, true;
  return false;
}

bool binary_op(const std::string& op, BOp& b) {
  static const std::pair<const char*, BOp> table[] = {
      {"Add", BOp::kAdd}, {"Sub", BOp::kSub}, {"Mul", BOp::kMul}, {"Div", BOp::kDiv}, {"Pow", BOp::kPow}};
  for (const auto& [name, op_code] : table)
    if (op == name) return b = op_code, true;
  return false;
}

bool int_dtype(DType dt) { return dt == DType::kI32 || dt == DType::kI64; }
bool cast_dtype(DType dt) {
  return dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16 || dt == DType::kI32 || dt == DType::kI64;
}

// kiln::ElementwiseChain's ops/params (encoding at the top of src/ops/fused_attention.cpp).
bool parse_chain(const KernelConfig& cfg, Spec& s) {
  const NodeView v = cfg.view();
  const auto& ops = v.attr_strings("ops");
  const auto& params = v.attr_floats("params");
  size_t next = 0;
  for (const std::string& step : ops) {
    const size_t c1 = step.find(':');
    const std::string op = step.substr(0, c1);
    StepSpec st;
    if (op == "LeakyRelu" || op == "Clip") {
      if (c1 != std::string::npos || next + (op == "Clip" ? 2 : 1) > params.size()) return false;
      st.u = op == "Clip" ? UOp::kClip : UOp::kLeakyRelu;
      st.p0 = params[next++];
      if (op == "Clip") {
        st.p1 = params[next++];
        // An infinite bound stands for an omitted Clip input: it clamps nothing, not even to +-inf.
        if (std::isinf(st.p0)) st.p0 = kNoBound;
        if (std::isinf(st.p1)) st.p1 = kNoBound;
      }
    } else if (chain_unary(op, st.u)) {
      if (c1 != std::string::npos) return false;
    } else if (binary_op(op, st.b)) {
      if (c1 == std::string::npos) return false;
      const size_t c2 = step.find(':', c1 + 1);
      const std::string index = step.substr(c1 + 1, c2 == std::string::npos ? std::string::npos : c2 - c1 - 1);
      if (c2 != std::string::npos && step.substr(c2 + 1) != "r") return false;
      if (index.empty() || index.size() > 6 || index.find_first_not_of("0123456789") != std::string::npos) return false;
      st.binary = true;
      st.input = std::stoi(index);
      st.reversed = c2 != std::string::npos;
      if (!cfg.has_input(static_cast<size_t>(st.input))) return false;
    } else {
      return false;
    }
    s.steps.push_back(st);
  }
  return next == params.size();
}

// What the node compiles to, or nullopt when this tactic does not implement it exactly.
std::optional<Spec> build_spec(const KernelConfig& cfg) {
  try {
    if (cfg.outputs.empty() || !cfg.outputs[0].present() || !cfg.has_input(0)) return std::nullopt;
    for (size_t i = 1; i < cfg.outputs.size(); ++i)
      if (cfg.outputs[i].present()) return std::nullopt;
    const Node& n = *cfg.node;
    const NodeView v = cfg.view();
    const ValueInfo& out = cfg.outputs[0];
    const size_t num_in = cfg.inputs.size();
    Spec s;
    auto unary = [&](UOp op, float p0 = 0, float p1 = 0) {
      StepSpec st;
      st.u = op;
      st.p0 = p0;
      st.p1 = p1;
      s.steps.push_back(st);
      return num_in == 1;
    };
    auto binary = [&](BOp op, int input) {
      StepSpec st;
      st.binary = true;
      st.b = op;
      st.input = input;
      s.steps.push_back(st);
    };
    const std::string& op = n.op_type;
    bool ok = true;
    if (n.domain == "kiln") {
      if (op == "ElementwiseChain") {
        ok = parse_chain(cfg, s);
      } else if (op == "Gelu") {
        const std::string& approx = v.attr_string("approximate");
        if (approx != "none" && approx != "tanh") return std::nullopt;
        ok = unary(approx == "tanh" ? UOp::kGeluTanh : UOp::kGelu);
      } else {
        return std::nullopt;
      }
    } else if (!n.domain.empty()) {
      return std::nullopt;
    } else if (cfg.schema->find_attr("broadcast")) {
      return std::nullopt;  // opset < 7 binary ops: legacy broadcasting, left to the reference
    } else if (UOp u = UOp::kRelu; chain_unary(op, u) || op == "HardSwish" || op == "Softplus") {
      ok = unary(op == "HardSwish" ? UOp::kHardSwish : op == "Softplus" ? UOp::kSoftplus : u);
    } else if (op == "LeakyRelu" || op == "Elu") {
      ok = unary(op == "Elu" ? UOp::kElu : UOp::kLeakyRelu, v.attr_float("alpha"));
    } else if (op == "HardSigmoid") {
      ok = unary(UOp::kHardSigmoid, v.attr_float("alpha"), v.attr_float("beta"));
    } else if (op == "Gelu") {
      const std::string& approx = v.attr_string("approximate");
      if (approx != "none" && approx != "tanh") return std::nullopt;
      ok = unary(approx == "tanh" ? UOp::kGeluTanh : UOp::kGelu);
    } else if (op == "Clip") {
      StepSpec st;
      st.u = UOp::kClip;
      if (cfg.opset < 11) {
        st.p0 = v.attr_float("min");
        st.p1 = v.attr_float("max");
        ok = num_in == 1;
      } else {
        st.p0 = st.p1 = kNoBound;
        for (size_t i = 1; i < 3; ++i) {
          if (!cfg.has_input(i)) continue;
          const ValueInfo& b = cfg.inputs[i];
          if (b.dtype != DType::kF32 || b.numel() != 1 || b.shape.size() > 1) return std::nullopt;
          float& p = i == 1 ? st.p0 : st.p1;
          if (b.constant)
            p = b.constant->data<float>()[0];
          else
            (i == 1 ? st.p0_input : st.p1_input) = static_cast<int>(i);
        }
      }
      s.steps.push_back(st);
    } else if (BOp b = BOp::kAdd; binary_op(op, b) || op == "Max" || op == "Min" || op == "PRelu") {
      if (op == "Max") b = BOp::kMax;
      if (op == "Min") b = BOp::kMin;
      if (op == "PRelu") b = BOp::kPRelu;
      if (num_in != 2 && !(num_in >= 1 && (op == "Max" || op == "Min"))) return std::nullopt;
      const DType dt = cfg.inputs[0].dtype;
      // PRelu-6 broadcasts a 1-D slope along dim 1 (Caffe2 style): left to the reference.
      if (op == "PRelu" && (cfg.opset < 7 || cfg.inputs[0].shape != out.shape)) return std::nullopt;
      if (int_dtype(dt) && b != BOp::kPow && b != BOp::kPRelu && num_in == 2) {
        s.kind = Kind::kIntBinary;
        s.int_op = b;
      } else {
        for (size_t i = 1; i < num_in; ++i) binary(b, static_cast<int>(i));
      }
    } else if (op == "Sum" || op == "Mean") {
      for (size_t i = 1; i < num_in; ++i) binary(BOp::kAdd, static_cast<int>(i));
      if (op == "Mean") {
        StepSpec st;
        st.binary = true;
        st.b = BOp::kDiv;
        st.value = static_cast<float>(num_in);
        s.steps.push_back(st);
      }
    } else if (op == "Where") {
      s.kind = Kind::kWhere;
    } else if (op == "Cast" || op == "CastLike") {
      s.kind = Kind::kCast;
    } else {
      return std::nullopt;
    }
    if (!ok) return std::nullopt;

    // Operand checks per kind.
    switch (s.kind) {
      case Kind::kF32: {
        if (out.dtype != DType::kF32) return std::nullopt;
        const auto ops = s.operands();
        if (ops.size() > kMaxOperands) return std::nullopt;
        for (int i : ops) {
          const ValueInfo& in = cfg.inputs[i];
          if (!in.present() || in.dtype != DType::kF32 || !broadcasts_onto(in.shape, out.shape)) return std::nullopt;
        }
        return s;
      }
      case Kind::kIntBinary:
        for (size_t i = 0; i < 2; ++i)
          if (!cfg.has_input(i) || cfg.inputs[i].dtype != out.dtype || !broadcasts_onto(cfg.inputs[i].shape, out.shape))
            return std::nullopt;
        return s;
      case Kind::kWhere: {
        if (num_in != 3 || cfg.inputs[0].dtype != DType::kBool) return std::nullopt;
        const size_t es = dtype_size(out.dtype);
        if (es != 1 && es != 2 && es != 4 && es != 8) return std::nullopt;
        for (size_t i = 0; i < 3; ++i)
          if (!cfg.has_input(i) || !broadcasts_onto(cfg.inputs[i].shape, out.shape)) return std::nullopt;
        if (cfg.inputs[1].dtype != out.dtype || cfg.inputs[2].dtype != out.dtype) return std::nullopt;
        return s;
      }
      case Kind::kCast:
        if (!cast_dtype(cfg.inputs[0].dtype) || !cast_dtype(out.dtype) || cfg.inputs[0].shape != out.shape)
          return std::nullopt;
        return s;
    }
    return std::nullopt;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// ---- The f32 program kernel.

class F32ProgramKernel final : public CpuKernel {
 public:
  F32ProgramKernel(const KernelConfig& cfg, const Spec& spec) : node_(cfg.node->describe()) {
    const ValueInfo& out = cfg.outputs[0];
    const Layout out_layout = out.layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
    const size_t rank = out.shape.size();
    const std::vector<size_t> order = physical_order(rank, out_layout);
    std::vector<int64_t> phys_out(rank);
    for (size_t d = 0; d < rank; ++d) phys_out[d] = out.shape[order[d]];

    const std::vector<int> ops = spec.operands();
    std::vector<std::vector<int64_t>> phys_strides;
    for (int input : ops) {
      const ValueInfo& v = cfg.inputs[input];
      Operand o;
      o.input = input;
      std::vector<int64_t> logical;
      if (v.constant) {
        // Constants are copied in the output's physical dim order, so that they stream like it.
        std::vector<int64_t> padded(rank - v.shape.size(), 1);
        padded.insert(padded.end(), v.shape.begin(), v.shape.end());
        std::vector<int64_t> permuted(rank);
        for (size_t d = 0; d < rank; ++d) permuted[d] = padded[order[d]];
        const std::vector<int64_t> src_strides = layout_strides(padded, Layout::kPlain);
        const std::vector<int64_t> dst_strides = layout_strides(permuted, Layout::kPlain);
        o.packed.resize(static_cast<size_t>(v.numel()));
        const float* src = v.constant->data<float>();
        std::vector<int64_t> idx(rank, 0);
        for (int64_t i = 0; i < v.numel(); ++i) {
          int64_t off = 0;
          for (size_t d = 0; d < rank; ++d) off += idx[d] * src_strides[order[d]];
          o.packed[static_cast<size_t>(i)] = src[off];
          for (size_t d = rank; d-- > 0;)
            if (++idx[d] < permuted[d])
              break;
            else
              idx[d] = 0;
        }
        std::vector<int64_t> st(rank, 0);
        for (size_t d = 0; d < rank; ++d) st[d] = permuted[d] == 1 ? 0 : dst_strides[d];
        phys_strides.push_back(st);
      } else {
        const Layout l = v.layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
        logical = broadcast_onto(v.shape, layout_strides(v.shape, l), out.shape);
        std::vector<int64_t> st(rank);
        for (size_t d = 0; d < rank; ++d) st[d] = logical[order[d]];
        phys_strides.push_back(st);
      }
      operands_.push_back(std::move(o));
    }
    plan_ = make_plan(phys_out, phys_strides);

    auto slot_of = [&](int input) { return static_cast<int>(std::find(ops.begin(), ops.end(), input) - ops.begin()); };
    init_slot_ = slot_of(spec.init);
    for (const StepSpec& st : spec.steps) {
      Step s{st, -1};
      if (st.binary && st.input >= 0) s.slot = slot_of(st.input);
      if (st.p0_input >= 0 || st.p1_input >= 0) runtime_params_ = true;
      steps_.push_back(s);
    }

    // Blocks: chunks of one innermost run when runs are long, else several whole runs.
    const int64_t inner = plan_.inner(), rows = plan_.rows();
    single_row_ = inner >= kMinRun || rows <= 1;
    if (single_row_) {
      chunks_ = std::max<int64_t>(1, (inner + kBlock - 1) / kBlock);
      chunk_len_ = (inner + chunks_ - 1) / chunks_;
      tasks_ = rows * chunks_;
    } else {
      rows_per_task_ = std::max<int64_t>(1, kBlock / inner);
      tasks_ = (rows + rows_per_task_ - 1) / rows_per_task_;
    }
    const size_t nd = plan_.dims.size();
    for (size_t j = 0; j < operands_.size(); ++j) {
      const auto& st = plan_.strides[j];
      Access a = Access::kGather;
      if (single_row_) {
        if (st.back() == 1)
          a = Access::kLinear;
        else if (st.back() == 0)
          a = Access::kScalar;
      } else {
        bool dense = true, zero = true;
        int64_t expect = 1;
        for (size_t d = nd; d-- > 0;) {
          dense = dense && st[d] == expect;
          zero = zero && st[d] == 0;
          expect *= plan_.dims[d];
        }
        a = dense ? Access::kLinear : zero ? Access::kScalar : Access::kGather;
      }
      operands_[j].access = a;
      if (a == Access::kGather) needs_buffer_ = true;
    }
    for (const Step& s : steps_) describe_ += (describe_.empty() ? "" : " ") + s.spec.describe();
  }

  void run(const KernelArgs& args) override {
    const float* base[kMaxOperands];
    for (size_t j = 0; j < operands_.size(); ++j)
      base[j] = operands_[j].packed.empty() ? static_cast<const float*>(args.inputs[operands_[j].input])
                                            : operands_[j].packed.data();
    std::vector<float> params;
    if (runtime_params_) {
      for (const Step& s : steps_) {
        const StepSpec& st = s.spec;
        params.push_back(st.p0_input >= 0 ? static_cast<const float*>(args.inputs[st.p0_input])[0] : st.p0);
        params.push_back(st.p1_input >= 0 ? static_cast<const float*>(args.inputs[st.p1_input])[0] : st.p1);
      }
    }
    const float* p = runtime_params_ ? params.data() : nullptr;  // nullptr: the steps' own params
    float* out = static_cast<float*>(args.outputs[0]);
    if (plan_.total == 0) return;
    const size_t buf_floats = needs_buffer_ ? operands_.size() * kBlock : 0;
    if (plan_.total >= kParallelMin && tasks_ > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel
      {
        std::unique_ptr<float[]> buf(buf_floats ? new float[buf_floats] : nullptr);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks_; ++t) run_task(t, base, p, out, buf.get());
      }
    } else {
      std::unique_ptr<float[]> buf(buf_floats ? new float[buf_floats] : nullptr);
      for (int64_t t = 0; t < tasks_; ++t) run_task(t, base, p, out, buf.get());
    }
  }

  std::string describe() const override {
    return std::string(isa_name()) + " eltwise program [" + describe_ + "] over " + shape_to_string(plan_.dims);
  }
  std::vector<std::string> required_isa() const override { return isa_features(); }

 private:
  enum class Access : uint8_t { kLinear, kScalar, kGather };
  struct Operand {
    int input = 0;
    std::vector<float> packed;  // constants, in the output's physical order
    Access access = Access::kGather;
  };
  struct Step {
    StepSpec spec;
    int slot;  // binary: operand slot, -1 for the constant spec.value
  };
  struct View {
    const float* ptr;  // nullptr: every element is `scalar`
    float scalar;
  };

  void run_task(int64_t t, const float* const* base, const float* params, float* out, float* buf) const {
    const int64_t inner = plan_.inner();
    int64_t row0, nrows, col0, len;
    if (single_row_) {
      row0 = t / chunks_;
      nrows = 1;
      col0 = (t % chunks_) * chunk_len_;
      len = std::min(chunk_len_, inner - col0);
    } else {
      row0 = t * rows_per_task_;
      nrows = std::min(rows_per_task_, plan_.rows() - row0);
      col0 = 0;
      len = nrows * inner;
    }
    const int64_t start = row0 * inner + col0;
    int64_t off[kMaxOperands];
    plan_.row_offsets(row0, off);
    View views[kMaxOperands];
    for (size_t j = 0; j < operands_.size(); ++j) {
      const int64_t s = plan_.strides[j].back();
      float* b = buf + j * kBlock;
      switch (operands_[j].access) {
        case Access::kLinear:
          views[j] = {base[j] + (single_row_ ? off[j] + col0 : start), 0.0f};
          break;
        case Access::kScalar:
          views[j] = {nullptr, base[j][single_row_ ? off[j] : 0]};
          break;
        case Access::kGather:
          if (single_row_) {
            const float* p = base[j] + off[j] + col0 * s;
            for (int64_t i = 0; i < len; ++i) b[i] = p[i * s];
          } else {
            int64_t roff[kMaxOperands];
            for (int64_t r = 0; r < nrows; ++r) {
              plan_.row_offsets(row0 + r, roff);
              const float* p = base[j] + roff[j];
              float* q = b + r * inner;
              if (s == 1)
                std::memcpy(q, p, static_cast<size_t>(inner) * sizeof(float));
              else
                for (int64_t i = 0; i < inner; ++i) q[i] = p[i * s];
            }
          }
          views[j] = {b, 0.0f};
          break;
      }
    }

    float* acc = out + start;
    const View& x = views[init_slot_];
    const float* cur = x.ptr;
    if (!cur) {
      std::fill_n(acc, len, x.scalar);
      cur = acc;
    }
    for (size_t k = 0; k < steps_.size(); ++k) {
      const Step& step = steps_[k];
      const StepSpec& st = step.spec;
      if (!st.binary) {
        const float p0 = params ? params[2 * k] : st.p0, p1 = params ? params[2 * k + 1] : st.p1;
        if (st.u == UOp::kSqrt)
          sqrt_loop(acc, cur, len);
        else
          unary_loop(st.u, acc, cur, len, p0, p1);
      } else {
        const View o = step.slot >= 0 ? views[step.slot] : View{nullptr, st.value};
        if (o.ptr) {
          if (st.reversed)
            binary_vv(st.b, acc, o.ptr, cur, len);
          else
            binary_vv(st.b, acc, cur, o.ptr, len);
        } else if (st.reversed) {
          binary_sv(st.b, acc, o.scalar, cur, len);
        } else if (st.b == BOp::kPow && o.scalar == 2.0f) {
          binary_vv(BOp::kMul, acc, cur, cur, len);  // the double pow rounded to f32 is exactly x*x
        } else {
          binary_vs(st.b, acc, cur, o.scalar, len);
        }
      }
      cur = acc;
    }
    if (cur != acc) std::memcpy(acc, cur, static_cast<size_t>(len) * sizeof(float));
  }

  std::string node_;
  std::vector<Operand> operands_;
  std::vector<Step> steps_;
  Plan plan_;
  int init_slot_ = 0;
  bool runtime_params_ = false;
  bool single_row_ = true;
  bool needs_buffer_ = false;
  int64_t chunks_ = 1, chunk_len_ = 1, rows_per_task_ = 1, tasks_ = 0;
  std::string describe_;
};

// ---- Integer binary ops (shape arithmetic), Where and Cast: plain loops over the plan.

template <typename T>
T int_binary(BOp op, T a, T b) {
  using U = std::make_unsigned_t<T>;
  switch (op) {
    case BOp::kAdd:
      return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));  // wraps, like the reference
    case BOp::kSub:
      return static_cast<T>(static_cast<U>(a) - static_cast<U>(b));
    case BOp::kMul:
      return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
    case BOp::kDiv:
      return b == -1 ? static_cast<T>(U(0) - static_cast<U>(a)) : static_cast<T>(a / b);
    case BOp::kMax:
      return b > a ? b : a;
    case BOp::kMin:
      return b < a ? b : a;
    default:
      return T(0);
  }
}

class IntBinaryKernel final : public CpuKernel {
 public:
  IntBinaryKernel(const KernelConfig& cfg, BOp op)
      : node_(cfg.node->describe()),
        op_(op),
        dtype_(cfg.outputs[0].dtype),
        b_numel_(cfg.inputs[1].numel()),
        plan_(plain_plan(cfg.outputs[0].shape, {cfg.inputs[0].shape, cfg.inputs[1].shape})) {}

  void run(const KernelArgs& args) override {
    if (dtype_ == DType::kI64)
      run_typed<int64_t>(args);
    else
      run_typed<int32_t>(args);
  }
  std::string describe() const override { return std::string("integer ") + bop_name(op_) + " loop"; }

 private:
  template <typename T>
  void run_typed(const KernelArgs& args) {
    const T* a = static_cast<const T*>(args.inputs[0]);
    const T* b = static_cast<const T*>(args.inputs[1]);
    T* y = static_cast<T*>(args.outputs[0]);
    if (op_ == BOp::kDiv && plan_.total > 0)
      for (int64_t i = 0; i < b_numel_; ++i)
        if (b[i] == 0) throw Error(ErrorCode::kInvalidModel, node_ + ": integer division by zero");
    const int64_t inner = plan_.inner(), sa = plan_.strides[0].back(), sb = plan_.strides[1].back();
    for_each_row(plan_, [&](const int64_t* off, int64_t o) {
      for (int64_t i = 0; i < inner; ++i) y[o + i] = int_binary<T>(op_, a[off[0] + i * sa], b[off[1] + i * sb]);
    });
  }

  std::string node_;
  BOp op_;
  DType dtype_;
  int64_t b_numel_;
  Plan plan_;
};

class WhereKernel final : public CpuKernel {
 public:
  explicit WhereKernel(const KernelConfig& cfg)
      : elem_(dtype_size(cfg.outputs[0].dtype)),
        plan_(plain_plan(cfg.outputs[0].shape, {cfg.inputs[0].shape, cfg.inputs[1].shape, cfg.inputs[2].shape})) {}

  void run(const KernelArgs& args) override {
    if (!with_element_type(elem_, [&](auto t) { run_typed<decltype(t)>(args); }))
      throw Error(ErrorCode::kInternal, "unsupported element size " + std::to_string(elem_));
  }
  std::string describe() const override { return "where loop"; }

 private:
  template <typename T>
  void run_typed(const KernelArgs& args) {
    const bool* c = static_cast<const bool*>(args.inputs[0]);
    const T* x = static_cast<const T*>(args.inputs[1]);
    const T* y = static_cast<const T*>(args.inputs[2]);
    T* o = static_cast<T*>(args.outputs[0]);
    const int64_t inner = plan_.inner(), sc = plan_.strides[0].back(), sx = plan_.strides[1].back(),
                  sy = plan_.strides[2].back();
    for_each_row(plan_, [&](const int64_t* off, int64_t base) {
      for (int64_t i = 0; i < inner; ++i) o[base + i] = c[off[0] + i * sc] ? x[off[1] + i * sx] : y[off[2] + i * sy];
    });
  }

  size_t elem_;
  Plan plan_;
};

// Cast conversions: the reference's own rules (src/backends/reference/cast_rules.h).
using reference::float_to_int;
using reference::to_float_round_odd;

template <typename T>
constexpr bool kFloatLike = std::is_same_v<T, float> || std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

template <typename To, typename From>
To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (kFloatLike<From> && std::is_integral_v<To>) {
    return float_to_int<To>(static_cast<double>(static_cast<float>(v)));
  } else if constexpr (std::is_same_v<To, Half> || std::is_same_v<To, BFloat16>) {
    return To(to_float_round_odd(static_cast<double>(static_cast<compute_t<From>>(v))));
  } else {
    return static_cast<To>(static_cast<compute_t<From>>(v));
  }
}

template <typename Fn>
void dispatch_cast_type(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::kF32:
      fn(float{});
      break;
    case DType::kF16:
      fn(Half{});
      break;
    case DType::kBF16:
      fn(BFloat16{});
      break;
    case DType::kI32:
      fn(int32_t{});
      break;
    default:
      fn(int64_t{});
      break;
  }
}

class CastKernel final : public CpuKernel {
 public:
  explicit CastKernel(const KernelConfig& cfg)
      : from_(cfg.inputs[0].dtype), to_(cfg.outputs[0].dtype), n_(cfg.outputs[0].numel()) {}

  void run(const KernelArgs& args) override {
    dispatch_cast_type(from_, [&](auto ftag) {
      using F = decltype(ftag);
      dispatch_cast_type(to_, [&](auto ttag) {
        using T = decltype(ttag);
        const F* x = static_cast<const F*>(args.inputs[0]);
        T* y = static_cast<T*>(args.outputs[0]);
        if (n_ >= kParallelMin) {
#pragma omp parallel for schedule(static)
          for (int64_t i = 0; i < n_; ++i) y[i] = convert<T, F>(x[i]);
        } else {
          for (int64_t i = 0; i < n_; ++i) y[i] = convert<T, F>(x[i]);
        }
      });
    });
  }
  std::string describe() const override {
    return "cast " + std::string(dtype_name(from_)) + " -> " + std::string(dtype_name(to_)) + " loop";
  }

 private:
  DType from_, to_;
  int64_t n_;
};

// ---- The tactic.

// The layout in which this node's full-rank operands all arrive, when they agree; nullopt when
// they disagree or when a lower-rank operand would make channels-last broadcasting ambiguous.
// Operands whose two layouts hold the same bytes ([N, C, 1, 1], C == 1) are compatible with both.
std::optional<Layout> shared_layout(const KernelConfig& cfg) {
  const size_t rank = cfg.outputs[0].shape.size();
  std::optional<Layout> l;
  for (const ValueInfo& v : cfg.inputs) {
    if (!v.present() || v.constant || v.shape.size() < 3 || layouts_coincide(v.shape)) continue;
    if (v.shape.size() != rank) return std::nullopt;
    const Layout vl = v.layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
    if (l && *l != vl) return std::nullopt;
    l = vl;
  }
  return l ? l : Layout::kPlain;
}

class EltwiseTactic final : public Tactic {
 public:
  std::string name() const override { return "kiln.eltwise"; }

  bool supports(const KernelConfig& cfg) const override { return build_spec(cfg).has_value(); }

  std::vector<Layout> input_layouts(const KernelConfig& cfg) const override {
    std::vector<Layout> want(cfg.inputs.size(), Layout::kPlain);
    const auto spec = build_spec(cfg);
    if (!spec || (spec->kind != Kind::kF32 && spec->kind != Kind::kCast)) return want;
    if (cfg.outputs[0].shape.size() < 3 || !shared_layout(cfg)) return want;
    for (size_t i = 0; i < cfg.inputs.size(); ++i)
      if (cfg.inputs[i].present() && !cfg.inputs[i].constant && cfg.inputs[i].shape.size() >= 3) want[i] = Layout::kAny;
    return want;
  }

  std::vector<Layout> output_layouts(const KernelConfig& cfg) const override {
    std::vector<Layout> out(cfg.outputs.size(), Layout::kPlain);
    const size_t rank = cfg.outputs[0].shape.size();
    const auto spec = build_spec(cfg);
    if (rank < 3 || !spec || (spec->kind != Kind::kF32 && spec->kind != Kind::kCast)) return out;
    // The layout of the first full-rank operand that tells the layouts apart; plain when every
    // operand stores the same bytes either way.
    for (const ValueInfo& v : cfg.inputs) {
      if (!v.present() || v.constant || v.shape.size() != rank || layouts_coincide(v.shape)) continue;
      out[0] = v.layout == Layout::kChannelsLast ? Layout::kChannelsLast : Layout::kPlain;
      break;
    }
    return out;
  }

  std::unique_ptr<CpuKernel> create(const KernelConfig& cfg) const override {
    const auto spec = build_spec(cfg);
    if (!spec) throw Error(ErrorCode::kUnsupported, cfg.node->describe() + ": not supported by kiln.eltwise");
    switch (spec->kind) {
      case Kind::kF32:
        return std::make_unique<F32ProgramKernel>(cfg, *spec);
      case Kind::kIntBinary:
        return std::make_unique<IntBinaryKernel>(cfg, spec->int_op);
      case Kind::kWhere:
        return std::make_unique<WhereKernel>(cfg);
      case Kind::kCast:
        return std::make_unique<CastKernel>(cfg);
    }
    throw Error(ErrorCode::kInternal, cfg.node->describe() + ": unknown eltwise kind");
  }
};

}  // namespace

void register_elementwise_tactics(TacticRegistry& r) {
  auto t = std::make_shared<EltwiseTactic>();
  for (const char* op :
       {"Relu", "LeakyRelu",   "Sigmoid",   "Tanh",     "Exp",   "Log",   "Sqrt", "Erf",     "Neg", "Abs", "Reciprocal",
        "Clip", "HardSigmoid", "HardSwish", "Softplus", "Elu",   "Gelu",  "Add",  "Sub",     "Mul", "Div", "Pow",
        "Max",  "Min",         "Sum",       "Mean",     "PRelu", "Where", "Cast", "CastLike"})
    r.add("", op, t);
  r.add("kiln", "ElementwiseChain", t);
  r.add("kiln", "Gelu", t);
}

}  // namespace kiln::cpu
