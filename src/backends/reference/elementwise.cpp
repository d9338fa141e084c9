// Reference kernels of elementwise, comparison and logic ops, and Cast/CastLike.
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <optional>
#include <type_traits>

#include "backends/reference/cast_rules.h"
#include "backends/reference/kernel.h"

namespace kiln::reference {

namespace {

// ---- Dtype dispatch restricted to the dtypes an op accepts, so each op's arithmetic is only
// instantiated for types where it makes sense (no `%` on floats, no `~` on bool).

enum TypeSet : unsigned { kF = 1, kSI = 2, kUI = 4, kB = 8, kI = kSI | kUI, kNum = kF | kI, kAll = kNum | kB };

template <unsigned S, typename Fn>
void dispatch(const NodeView& ctx, DType dt, Fn&& fn) {
  switch (dt) {
    case DType::kF32: if constexpr ((S & kF) != 0) { fn(float{}); return; } break;
    case DType::kF64: if constexpr ((S & kF) != 0) { fn(double{}); return; } break;
    case DType::kF16: if constexpr ((S & kF) != 0) { fn(Half{}); return; } break;
    case DType::kBF16: if constexpr ((S & kF) != 0) { fn(BFloat16{}); return; } break;
    case DType::kI8: if constexpr ((S & kSI) != 0) { fn(int8_t{}); return; } break;
    case DType::kI16: if constexpr ((S & kSI) != 0) { fn(int16_t{}); return; } break;
    case DType::kI32: if constexpr ((S & kSI) != 0) { fn(int32_t{}); return; } break;
    case DType::kI64: if constexpr ((S & kSI) != 0) { fn(int64_t{}); return; } break;
    case DType::kU8: if constexpr ((S & kUI) != 0) { fn(uint8_t{}); return; } break;
    case DType::kU16: if constexpr ((S & kUI) != 0) { fn(uint16_t{}); return; } break;
    case DType::kU32: if constexpr ((S & kUI) != 0) { fn(uint32_t{}); return; } break;
    case DType::kU64: if constexpr ((S & kUI) != 0) { fn(uint64_t{}); return; } break;
    case DType::kBool: if constexpr ((S & kB) != 0) { fn(bool{}); return; } break;
    default: break;
  }
  const std::string name(dtype_name(dt));
  if (dt == DType::kString || dt == DType::kF8E4M3FN || dt == DType::kF8E5M2 || dt == DType::kUndefined)
    ctx.unsupported("no reference kernel computes on dtype " + name);
  std::string expected;
  if (S & kF) expected += " float";
  if (S & kSI) expected += " signed-integer";
  if (S & kUI) expected += " unsigned-integer";
  if (S & kB) expected += " bool";
  ctx.fail("dtype " + name + " is not valid for this op (expected a" + expected + " dtype)");
}

template <typename T>
constexpr bool kIsFloat = std::is_floating_point_v<T> || std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;
template <typename C>
constexpr bool kIsInt = std::is_integral_v<C> && !std::is_same_v<C, bool>;

// Integer arithmetic wraps (two's complement) instead of overflowing, which is undefined for
// signed types and, through integer promotion, even for uint16 * uint16.
template <typename C> C add_wrap(C a, C b) {
  if constexpr (kIsInt<C>) return static_cast<C>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
  else return a + b;
}
template <typename C> C sub_wrap(C a, C b) {
  if constexpr (kIsInt<C>) return static_cast<C>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
  else return a - b;
}
template <typename C> C mul_wrap(C a, C b) {
  if constexpr (kIsInt<C>) return static_cast<C>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
  else return a * b;
}
template <typename C> C neg_wrap(C a) {
  if constexpr (kIsInt<C>) return static_cast<C>(uint64_t{0} - static_cast<uint64_t>(a));
  else return -a;
}

// One element of Cast, for every pair of non-fp8 numeric/bool dtypes.
template <typename To, typename From>
To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, bool>) {
    return convert<To, uint8_t>(v ? 1 : 0);
  } else if constexpr (std::is_same_v<To, bool>) {
    return static_cast<compute_t<From>>(v) != 0;  // NaN is true, as in C and numpy
  } else if constexpr (kIsFloat<From> && std::is_integral_v<To>) {
    return float_to_int<To>(static_cast<double>(static_cast<compute_t<From>>(v)));
  } else if constexpr (std::is_same_v<To, Half> || std::is_same_v<To, BFloat16>) {
    return To(to_float_round_odd(static_cast<double>(static_cast<compute_t<From>>(v))));
  } else {
    return static_cast<To>(static_cast<compute_t<From>>(v));  // int<->int wraps; others round once
  }
}

// ---- fp8 (E4M3FN: no infinities, NaN = 0x7f; E5M2: IEEE-like). Storage only: Cast converts.

float fp8_to_float(uint8_t b, DType dt) {
  const float sign = (b & 0x80) ? -1.0f : 1.0f;
  if (dt == DType::kF8E4M3FN) {
    const int e = (b >> 3) & 0xf, m = b & 7;
    if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
    return sign * (e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(static_cast<float>(8 + m), e - 10));
  }
  const int e = (b >> 2) & 0x1f, m = b & 3;
  if (e == 31) return m == 0 ? sign * std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  return sign * (e == 0 ? std::ldexp(static_cast<float>(m), -16) : std::ldexp(static_cast<float>(4 + m), e - 17));
}

// Rounds to nearest even. Out-of-range values (and infinities) become the largest finite value
// when saturating, else NaN (E4M3FN) or infinity (E5M2), as Cast-19 specifies.
uint8_t float_to_fp8(double x, DType dt, bool saturate) {
  const bool e4 = dt == DType::kF8E4M3FN;
  const int mbits = e4 ? 3 : 2, emin = e4 ? -6 : -14, bias = e4 ? 7 : 15;
  const double max = e4 ? 448.0 : 57344.0;
  const uint8_t max_code = e4 ? 0x7e : 0x7b, nan_code = 0x7f, inf_code = 0x7c;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  if (std::isnan(x)) return nan_code | sign;
  const double a = std::fabs(x);
  const uint8_t overflow = saturate ? max_code : (e4 ? nan_code : inf_code);
  if (std::isinf(a)) return overflow | sign;
  if (a == 0) return sign;
  int ex;
  std::frexp(a, &ex);
  const int e = std::max(ex - 1, emin);
  const double quantum = std::ldexp(1.0, e - mbits);
  const double r = std::nearbyint(a / quantum) * quantum;
  if (r > max) return overflow | sign;
  if (r == 0) return sign;
  std::frexp(r, &ex);
  const int er = ex - 1;
  if (er < emin) return sign | static_cast<uint8_t>(r / std::ldexp(1.0, emin - mbits));
  const int mant = static_cast<int>(r / std::ldexp(1.0, er - mbits)) - (1 << mbits);
  return sign | static_cast<uint8_t>((er + bias) << mbits | mant);
}

bool is_fp8(DType dt) { return dt == DType::kF8E4M3FN || dt == DType::kF8E5M2; }

// ---- Shared loops.

void require_same_dtype(const KernelContext& ctx, const Tensor& a, const Tensor& b, const char* what) {
  if (a.dtype() != b.dtype())
    ctx.fail(std::string(what) + " have different dtypes " + std::string(dtype_name(a.dtype())) + " and " +
             std::string(dtype_name(b.dtype())));
}

// B's shape as broadcast against A. From opset 7 that is numpy broadcasting; the opset 1-6
// entries (which declare a `broadcast` attribute) broadcast B to A only with broadcast=1, by
// suffix matching or aligned at `axis`; the result is B's shape padded with 1s to A's rank.
std::vector<int64_t> rhs_shape(const KernelContext& ctx, const Tensor& a, const Tensor& b) {
  if (!ctx.schema().find_attr("broadcast")) return b.shape();
  const int64_t ra = static_cast<int64_t>(a.rank()), rb = static_cast<int64_t>(b.rank());
  const bool bcast = ctx.attr_int("broadcast") != 0;
  auto mismatch = [&] {
    ctx.fail("B of shape " + shape_to_string(b.shape()) + " cannot be broadcast to A of shape " +
             shape_to_string(a.shape()) + " (broadcast=" + std::to_string(bcast) + ")");
  };
  if (!bcast) {
    if (a.shape() != b.shape()) mismatch();
    return b.shape();
  }
  if (rb > ra) mismatch();
  std::vector<int64_t> padded(static_cast<size_t>(ra), 1);
  if (b.numel() == 1) return padded;  // a one-element B is a scalar whatever its shape
  int64_t axis = ra - rb;
  if (auto ax = ctx.attr_int_opt("axis")) axis = *ax < 0 ? *ax + ra : *ax;
  if (axis < 0 || axis + rb > ra) mismatch();
  for (int64_t k = 0; k < rb; ++k) {
    const int64_t d = b.dim(static_cast<size_t>(k));
    if (d != 1 && d != a.dim(static_cast<size_t>(axis + k))) mismatch();
    padded[static_cast<size_t>(axis + k)] = d;
  }
  return padded;
}

// out[i] = fn(a[i'], b[i'']) with numpy broadcasting; out has a's dtype, or bool when kBoolOut.
// fn gets and returns the compute type (float for 16-bit floats).
template <unsigned S, bool kBoolOut = false, typename Fn>
void binary_kernel(KernelContext& ctx, Fn fn) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  require_same_dtype(ctx, a, b, "inputs");
  const std::vector<int64_t> b_shape = rhs_shape(ctx, a, b);
  std::vector<int64_t> shape = broadcast_dims(ctx, {a.shape(), b_shape});
  Tensor& out = ctx.allocate_output(0, kBoolOut ? DType::kBool : a.dtype(), shape);
  dispatch<S>(ctx, a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    using O = std::conditional_t<kBoolOut, bool, T>;
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    O* po = out.mutable_data<O>();
    for_each_index(shape, {broadcast_strides(a.shape(), shape), broadcast_strides(b_shape, shape)},
                   [&](int64_t i, const std::vector<int64_t>& off) {
                     po[i] = static_cast<O>(fn(static_cast<C>(pa[off[0]]), static_cast<C>(pb[off[1]])));
                   });
  });
}

// y[i] = fn(x[i]); y has x's dtype, or bool when kBoolOut.
template <unsigned S, bool kBoolOut = false, typename Fn>
void unary_kernel(KernelContext& ctx, Fn fn) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.allocate_output(0, kBoolOut ? DType::kBool : x.dtype(), x.shape());
  dispatch<S>(ctx, x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    using O = std::conditional_t<kBoolOut, bool, T>;
    const T* px = x.data<T>();
    O* py = y.mutable_data<O>();
    for (int64_t i = 0; i < x.numel(); ++i) py[i] = static_cast<O>(fn(static_cast<C>(px[i])));
  });
}

// Float-only unary op whose function is written once for the compute type.
template <typename Fn>
void unary_float(KernelContext& ctx, Fn fn) {
  unary_kernel<kF>(ctx, fn);
}

// Variadic op over all inputs with broadcasting: acc = first input, then acc = fn(acc, next)
// in the compute type; `finish(acc, n)` maps the result (Mean divides).
template <unsigned S, typename Fn, typename Finish>
void variadic_kernel(KernelContext& ctx, Fn fn, Finish finish) {
  std::vector<const Tensor*> ins;
  std::vector<std::vector<int64_t>> shapes;
  for (size_t i = 0; i < ctx.num_inputs(); ++i) {
    const Tensor& t = ctx.input(i);
    if (!ins.empty()) require_same_dtype(ctx, *ins[0], t, "inputs");
    ins.push_back(&t);
    shapes.push_back(t.shape());
  }
  if (ins.empty()) ctx.fail("needs at least one input");
  std::vector<int64_t> shape = broadcast_dims(ctx, shapes);
  Tensor& out = ctx.allocate_output(0, ins[0]->dtype(), shape);
  dispatch<S>(ctx, ins[0]->dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    std::vector<C> acc(static_cast<size_t>(shape_numel(shape)));
    for (size_t k = 0; k < ins.size(); ++k) {
      const T* p = ins[k]->data<T>();
      for_each_index(shape, {broadcast_strides(ins[k]->shape(), shape)},
                     [&](int64_t i, const std::vector<int64_t>& off) {
                       const C v = static_cast<C>(p[off[0]]);
                       acc[i] = k == 0 ? v : fn(acc[i], v);
                     });
    }
    T* po = out.mutable_data<T>();
    for (size_t i = 0; i < acc.size(); ++i) po[i] = static_cast<T>(finish(acc[i], ins.size()));
  });
}

constexpr auto keep = [](auto v, size_t) { return v; };

// ---- Binary arithmetic.

void add_kernel(KernelContext& ctx) {
  binary_kernel<kNum>(ctx, [](auto x, auto y) { return add_wrap(x, y); });
}
void sub_kernel(KernelContext& ctx) {
  binary_kernel<kNum>(ctx, [](auto x, auto y) { return sub_wrap(x, y); });
}
void mul_kernel(KernelContext& ctx) {
  binary_kernel<kNum>(ctx, [](auto x, auto y) { return mul_wrap(x, y); });
}

void div_kernel(KernelContext& ctx) {
  binary_kernel<kNum>(ctx, [&](auto x, auto y) {
    using C = decltype(x);
    if constexpr (kIsInt<C>) {
      // Integer division truncates toward zero, like C++; a zero divisor would trap (SIGFPE).
      if (y == 0) ctx.fail("integer division by zero");
      if constexpr (std::is_signed_v<C>)
        if (y == -1) return neg_wrap(x);  // INT_MIN / -1 traps too; the wrapped result is INT_MIN
      return static_cast<C>(x / y);
    } else {
      return x / y;
    }
  });
}

void mod_kernel(KernelContext& ctx) {
  const int64_t fmod = ctx.attr_int("fmod");
  if (fmod != 0 && fmod != 1) ctx.fail("fmod must be 0 or 1, got " + std::to_string(fmod));
  binary_kernel<kNum>(ctx, [&](auto x, auto y) {
    using C = decltype(x);
    if constexpr (kIsInt<C>) {
      if (y == 0) ctx.fail("integer modulo by zero");
      if constexpr (std::is_signed_v<C>) {
        if (y == -1) return C(0);  // INT_MIN % -1 would trap
        C r = static_cast<C>(x % y);  // C++: sign of the dividend (fmod=1)
        if (fmod == 0 && r != 0 && ((r < 0) != (y < 0))) r = static_cast<C>(r + y);  // sign of the divisor
        return r;
      } else {
        return static_cast<C>(x % y);
      }
    } else {
      if (fmod == 0) ctx.fail("fmod must be 1 for floating-point inputs");
      return static_cast<C>(std::fmod(x, y));
    }
  });
}

// base ^ exp on integers, wrapping on overflow; a negative exponent truncates 1/base^n toward
// zero as the float result cast to an integer would.
template <typename T, typename E>
T int_pow(const KernelContext& ctx, T base, E exp) {
  if constexpr (std::is_signed_v<E>) {
    if (exp < 0) {
      if (base == 0) ctx.fail("integer 0 raised to a negative power");
      if (base == 1) return T(1);
      if constexpr (std::is_signed_v<T>)
        if (base == -1) return (exp % 2 == 0) ? T(1) : T(-1);
      return T(0);
    }
  }
  uint64_t result = 1, b = static_cast<uint64_t>(base), e = static_cast<uint64_t>(exp);
  while (e) {
    if (e & 1) result *= b;
    b *= b;
    e >>= 1;
  }
  return static_cast<T>(result);
}

void pow_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& y = ctx.input(1);
  if (ctx.opset() < 12) require_same_dtype(ctx, x, y, "base and exponent");
  const std::vector<int64_t> y_shape = rhs_shape(ctx, x, y);
  std::vector<int64_t> shape = broadcast_dims(ctx, {x.shape(), y_shape});
  Tensor& out = ctx.allocate_output(0, x.dtype(), shape);
  const std::vector<std::vector<int64_t>> strides = {broadcast_strides(x.shape(), shape),
                                                     broadcast_strides(y_shape, shape)};
  dispatch<kNum>(ctx, x.dtype(), [&](auto xtag) {
    using T = decltype(xtag);
    dispatch<kNum>(ctx, y.dtype(), [&](auto ytag) {
      using E = decltype(ytag);
      const T* px = x.data<T>();
      const E* py = y.data<E>();
      T* po = out.mutable_data<T>();
      for_each_index(shape, strides, [&](int64_t i, const std::vector<int64_t>& off) {
        const auto b = static_cast<compute_t<T>>(px[off[0]]);
        const auto e = static_cast<compute_t<E>>(py[off[1]]);
        if constexpr (kIsInt<T> && kIsInt<E>) {
          po[i] = int_pow<T>(ctx, b, e);
        } else {
          const double r = std::pow(static_cast<double>(b), static_cast<double>(e));
          if constexpr (kIsInt<T>) po[i] = float_to_int<T>(r);
          else po[i] = convert<T, double>(r);
        }
      });
    });
  });
}

void bitshift_kernel(KernelContext& ctx) {
  const std::string& dir = ctx.attr_string("direction");
  if (dir != "LEFT" && dir != "RIGHT") ctx.fail("direction must be \"LEFT\" or \"RIGHT\", got \"" + dir + "\"");
  const bool left = dir == "LEFT";
  binary_kernel<kUI>(ctx, [left](auto x, auto y) {
    using C = decltype(x);
    // Shifting by the bit width or more is undefined in C++; every bit is shifted out.
    if (y >= static_cast<C>(std::numeric_limits<C>::digits)) return C(0);
    return left ? static_cast<C>(x << y) : static_cast<C>(x >> y);
  });
}

void prelu_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Tensor& slope = ctx.input(1);
  require_same_dtype(ctx, x, slope, "X and slope");
  std::vector<int64_t> s_shape = slope.shape();
  // PRelu-6 (from Caffe2) applies a 1-D slope of X's channel count along dim 1.
  if (ctx.opset() < 7 && slope.rank() == 1 && x.rank() >= 2 && slope.dim(0) == x.dim(1) && slope.numel() != 1) {
    s_shape.assign(x.rank() - 1, 1);
    s_shape[0] = slope.dim(0);
  }
  if (broadcast_dims(ctx, {x.shape(), s_shape}) != x.shape())
    ctx.fail("slope of shape " + shape_to_string(slope.shape()) + " does not broadcast to X of shape " +
             shape_to_string(x.shape()));
  Tensor& out = ctx.allocate_output(0, x.dtype(), x.shape());
  dispatch<kF | kI>(ctx, x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T* px = x.data<T>();
    const T* ps = slope.data<T>();
    T* po = out.mutable_data<T>();
    for_each_index(x.shape(), {dense_strides(x.shape()), broadcast_strides(s_shape, x.shape())},
                   [&](int64_t i, const std::vector<int64_t>& off) {
                     const C v = static_cast<C>(px[off[0]]);
                     po[i] = static_cast<T>(v < C(0) ? mul_wrap(static_cast<C>(ps[off[1]]), v) : v);
                   });
  });
}

// ---- Variadic.

template <typename C> C nan_or_min(C a, C b) {
  if (a != a) return a;  // NaN propagates, as in numpy's minimum
  if (b != b) return b;
  return b < a ? b : a;
}
template <typename C> C nan_or_max(C a, C b) {
  if (a != a) return a;
  if (b != b) return b;
  return b > a ? b : a;
}

void min_kernel(KernelContext& ctx) {
  variadic_kernel<kNum>(
      ctx, [](auto a, auto b) { return nan_or_min(a, b); }, keep);
}
void max_kernel(KernelContext& ctx) {
  variadic_kernel<kNum>(
      ctx, [](auto a, auto b) { return nan_or_max(a, b); }, keep);
}
void sum_kernel(KernelContext& ctx) { variadic_kernel<kNum>(ctx, [](auto a, auto b) { return add_wrap(a, b); }, keep); }
void mean_kernel(KernelContext& ctx) {
  variadic_kernel<kF>(ctx, [](auto a, auto b) { return a + b; },
                      [](auto acc, size_t n) { return acc / static_cast<decltype(acc)>(n); });
}

// ---- Unary math.

void sqrt_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::sqrt(x); }); }
void exp_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::exp(x); }); }
void log_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::log(x); }); }
void tanh_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::tanh(x); }); }
void sigmoid_kernel(KernelContext& ctx) {
  unary_float(ctx, [](auto x) { return decltype(x)(1) / (decltype(x)(1) + std::exp(-x)); });
}
void erf_kernel(KernelContext& ctx) {
  unary_kernel<kNum>(ctx, [](auto x) {
    if constexpr (kIsInt<decltype(x)>) return float_to_int<decltype(x)>(std::erf(static_cast<double>(x)));
    else return std::erf(x);
  });
}
void reciprocal_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return decltype(x)(1) / x; }); }
void floor_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::floor(x); }); }
void ceil_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::ceil(x); }); }
// nearbyint rounds halves to even under the default rounding mode, which nothing here changes.
void round_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::nearbyint(x); }); }
void sin_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::sin(x); }); }
void cos_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::cos(x); }); }
void tan_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::tan(x); }); }
void asin_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::asin(x); }); }
void acos_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::acos(x); }); }
void atan_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::atan(x); }); }
void sinh_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::sinh(x); }); }
void cosh_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::cosh(x); }); }
void asinh_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::asinh(x); }); }
void acosh_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::acosh(x); }); }
void atanh_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return std::atanh(x); }); }

// log(1 + exp(x)) without overflowing exp for large x.
template <typename C> C softplus(C x) { return x > C(0) ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

void softplus_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return softplus(x); }); }
void softsign_kernel(KernelContext& ctx) {
  unary_float(ctx, [](auto x) { return x / (decltype(x)(1) + std::fabs(x)); });
}
void mish_kernel(KernelContext& ctx) { unary_float(ctx, [](auto x) { return x * std::tanh(softplus(x)); }); }

void relu_kernel(KernelContext& ctx) {
  unary_kernel<kF | kSI>(ctx, [](auto x) { return x > decltype(x)(0) ? x : decltype(x)(0); });
}
void abs_kernel(KernelContext& ctx) {
  unary_kernel<kNum>(ctx, [](auto x) {
    using C = decltype(x);
    if constexpr (std::is_unsigned_v<C>) return x;
    else if constexpr (kIsInt<C>) return x < 0 ? neg_wrap(x) : x;
    else return std::fabs(x);
  });
}
void neg_kernel(KernelContext& ctx) { unary_kernel<kF | kSI>(ctx, [](auto x) { return neg_wrap(x); }); }
void sign_kernel(KernelContext& ctx) {
  unary_kernel<kNum>(ctx, [](auto x) {
    using C = decltype(x);
    if (x != x) return x;  // NaN
    return static_cast<C>(x > C(0) ? 1 : (x < C(0) ? -1 : 0));
  });
}

void leaky_relu_kernel(KernelContext& ctx) {
  const float alpha = ctx.attr_float("alpha");
  unary_float(ctx, [alpha](auto x) {
    using C = decltype(x);
    return x < C(0) ? static_cast<C>(alpha) * x : x;
  });
}
void elu_kernel(KernelContext& ctx) {
  const float alpha = ctx.attr_float("alpha");
  unary_float(ctx, [alpha](auto x) {
    using C = decltype(x);
    return x < C(0) ? static_cast<C>(alpha) * (std::exp(x) - C(1)) : x;
  });
}
void selu_kernel(KernelContext& ctx) {
  const float alpha = ctx.attr_float("alpha"), gamma = ctx.attr_float("gamma");
  unary_float(ctx, [alpha, gamma](auto x) {
    using C = decltype(x);
    return static_cast<C>(gamma) * (x <= C(0) ? static_cast<C>(alpha) * (std::exp(x) - C(1)) : x);
  });
}
void celu_kernel(KernelContext& ctx) {
  const float alpha = ctx.attr_float("alpha");
  if (alpha == 0) ctx.fail("alpha must not be 0");
  unary_float(ctx, [alpha](auto x) {
    using C = decltype(x);
    const C a = static_cast<C>(alpha);
    return std::max(C(0), x) + std::min(C(0), a * (std::exp(x / a) - C(1)));
  });
}
void gelu_kernel(KernelContext& ctx) {
  const std::string& approx = ctx.attr_string("approximate");
  if (approx != "none" && approx != "tanh")
    ctx.fail("approximate must be \"none\" or \"tanh\", got \"" + approx + "\"");
  const bool tanh_approx = approx == "tanh";
  unary_float(ctx, [tanh_approx](auto x) {
    using C = decltype(x);
    if (tanh_approx) {
      const C k = static_cast<C>(std::sqrt(2.0 / std::numbers::pi));
      return C(0.5) * x * (C(1) + std::tanh(k * (x + C(0.044715) * x * x * x)));
    }
    return C(0.5) * x * (C(1) + std::erf(x / static_cast<C>(std::numbers::sqrt2)));
  });
}
void hard_sigmoid_kernel(KernelContext& ctx) {
  const float alpha = ctx.attr_float("alpha"), beta = ctx.attr_float("beta");
  unary_float(ctx, [alpha, beta](auto x) {
    using C = decltype(x);
    return std::max(C(0), std::min(C(1), static_cast<C>(alpha) * x + static_cast<C>(beta)));
  });
}
void hard_swish_kernel(KernelContext& ctx) {
  unary_float(ctx, [](auto x) {
    using C = decltype(x);
    return x * std::max(C(0), std::min(C(1), x / C(6) + C(0.5)));
  });
}
void thresholded_relu_kernel(KernelContext& ctx) {
  const float alpha = ctx.attr_float("alpha");
  unary_float(ctx, [alpha](auto x) {
    using C = decltype(x);
    return x > static_cast<C>(alpha) ? x : C(0);
  });
}
void shrink_kernel(KernelContext& ctx) {
  const float bias = ctx.attr_float("bias"), lambd = ctx.attr_float("lambd");
  unary_kernel<kNum>(ctx, [bias, lambd](auto x) {
    using C = decltype(x);
    // Integers are shrunk in double (bias and lambd are floats) and converted back.
    const double v = static_cast<double>(x);
    const double r = v < -lambd ? v + bias : (v > lambd ? v - bias : 0.0);
    if constexpr (kIsInt<C>) return float_to_int<C>(r);
    else return static_cast<C>(r);
  });
}
void isnan_kernel(KernelContext& ctx) { unary_kernel<kF, true>(ctx, [](auto x) { return std::isnan(x); }); }
void isinf_kernel(KernelContext& ctx) {
  const bool neg = ctx.attr_int("detect_negative") != 0, pos = ctx.attr_int("detect_positive") != 0;
  unary_kernel<kF, true>(ctx, [neg, pos](auto x) { return std::isinf(x) && (x > 0 ? pos : neg); });
}

// Clip: bounds from attributes (opset < 11) or optional scalar inputs; a missing bound does not
// clip. With min > max every element becomes max, as the spec says.
void clip_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.allocate_output(0, x.dtype(), x.shape());
  const bool attrs = ctx.opset() < 11;
  if (attrs && !dtype_is_float(x.dtype()))
    ctx.fail("Clip before opset 11 takes float inputs only, got " + std::string(dtype_name(x.dtype())));
  for (size_t i = 1; i < 3 && !attrs; ++i) {
    if (!ctx.has_input(i)) continue;
    const Tensor& b = ctx.input(i);
    require_same_dtype(ctx, x, b, i == 1 ? "input and min" : "input and max");
    if (b.numel() != 1 || b.rank() > 1)
      ctx.fail(std::string(i == 1 ? "min" : "max") + " must be a scalar, got shape " + shape_to_string(b.shape()));
  }
  dispatch<kNum>(ctx, x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    std::optional<C> lo, hi;
    if (attrs) {
      if constexpr (!kIsInt<C>) {  // integers were rejected above
        lo = static_cast<C>(ctx.attr_float("min"));
        hi = static_cast<C>(ctx.attr_float("max"));
      }
    } else {
      if (ctx.has_input(1)) lo = static_cast<C>(ctx.input(1).data<T>()[0]);
      if (ctx.has_input(2)) hi = static_cast<C>(ctx.input(2).data<T>()[0]);
    }
    const T* px = x.data<T>();
    T* py = y.mutable_data<T>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      C v = static_cast<C>(px[i]);
      if (lo && v < *lo) v = *lo;
      if (hi && v > *hi) v = *hi;
      py[i] = static_cast<T>(v);
    }
  });
}

// ---- Comparison and logic.

void equal_kernel(KernelContext& ctx) { binary_kernel<kAll, true>(ctx, [](auto a, auto b) { return a == b; }); }
void less_kernel(KernelContext& ctx) { binary_kernel<kNum, true>(ctx, [](auto a, auto b) { return a < b; }); }
void less_equal_kernel(KernelContext& ctx) { binary_kernel<kNum, true>(ctx, [](auto a, auto b) { return a <= b; }); }
void greater_kernel(KernelContext& ctx) { binary_kernel<kNum, true>(ctx, [](auto a, auto b) { return a > b; }); }
void greater_equal_kernel(KernelContext& ctx) { binary_kernel<kNum, true>(ctx, [](auto a, auto b) { return a >= b; }); }
void and_kernel(KernelContext& ctx) { binary_kernel<kB>(ctx, [](bool a, bool b) { return a && b; }); }
void or_kernel(KernelContext& ctx) { binary_kernel<kB>(ctx, [](bool a, bool b) { return a || b; }); }
void xor_kernel(KernelContext& ctx) { binary_kernel<kB>(ctx, [](bool a, bool b) { return a != b; }); }
void not_kernel(KernelContext& ctx) { unary_kernel<kB>(ctx, [](bool a) { return !a; }); }
void bitwise_and_kernel(KernelContext& ctx) { binary_kernel<kI>(ctx, [](auto a, auto b) { return a & b; }); }
void bitwise_or_kernel(KernelContext& ctx) { binary_kernel<kI>(ctx, [](auto a, auto b) { return a | b; }); }
void bitwise_xor_kernel(KernelContext& ctx) { binary_kernel<kI>(ctx, [](auto a, auto b) { return a ^ b; }); }
void bitwise_not_kernel(KernelContext& ctx) {
  unary_kernel<kI>(ctx, [](auto a) { return static_cast<decltype(a)>(~a); });
}

void where_kernel(KernelContext& ctx) {
  const Tensor& c = ctx.input(0);
  const Tensor& x = ctx.input(1);
  const Tensor& y = ctx.input(2);
  if (c.dtype() != DType::kBool) ctx.fail("condition must be bool, got " + std::string(dtype_name(c.dtype())));
  require_same_dtype(ctx, x, y, "X and Y");
  std::vector<int64_t> shape = broadcast_dims(ctx, {c.shape(), x.shape(), y.shape()});
  Tensor& out = ctx.allocate_output(0, x.dtype(), shape);
  dispatch<kAll>(ctx, x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const bool* pc = c.data<bool>();
    const T* px = x.data<T>();
    const T* py = y.data<T>();
    T* po = out.mutable_data<T>();
    for_each_index(shape,
                   {broadcast_strides(c.shape(), shape), broadcast_strides(x.shape(), shape),
                    broadcast_strides(y.shape(), shape)},
                   [&](int64_t i, const std::vector<int64_t>& off) { po[i] = pc[off[0]] ? px[off[1]] : py[off[2]]; });
  });
}

// ---- Cast.

void cast_to(KernelContext& ctx, DType to) {
  const Tensor& x = ctx.input(0);
  const DType from = x.dtype();
  if (from == DType::kString || to == DType::kString)
    ctx.unsupported("casts from or to string are not supported");
  if (from == to) {
    ctx.set_output(0, x);  // same storage: tensors are immutable once produced
    return;
  }
  // saturate exists from Cast-19 / CastLike-19 and only affects fp8 targets.
  const bool saturate = ctx.schema().find_attr("saturate") ? ctx.attr_int("saturate") != 0 : true;
  Tensor& y = ctx.allocate_output(0, to, x.shape());
  const int64_t n = x.numel();
  if (is_fp8(from) || is_fp8(to)) {
    // fp8 goes through double: decoding is exact and encoding rounds once.
    std::vector<double> v(static_cast<size_t>(n));
    if (is_fp8(from)) {
      const auto* p = static_cast<const uint8_t*>(x.raw());
      for (int64_t i = 0; i < n; ++i) v[i] = fp8_to_float(p[i], from);
    } else {
      dispatch<kAll>(ctx, from, [&](auto tag) {
        using F = decltype(tag);
        const F* p = x.data<F>();
        for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(static_cast<compute_t<F>>(p[i]));
      });
    }
    if (is_fp8(to)) {
      auto* q = static_cast<uint8_t*>(y.mutable_raw());
      for (int64_t i = 0; i < n; ++i) q[i] = float_to_fp8(v[i], to, saturate);
    } else {
      dispatch<kAll>(ctx, to, [&](auto tag) {
        using T = decltype(tag);
        T* q = y.mutable_data<T>();
        for (int64_t i = 0; i < n; ++i) q[i] = convert<T, double>(v[i]);
      });
    }
    return;
  }
  dispatch<kAll>(ctx, from, [&](auto ftag) {
    using F = decltype(ftag);
    dispatch<kAll>(ctx, to, [&](auto ttag) {
      using T = decltype(ttag);
      const F* p = x.data<F>();
      T* q = y.mutable_data<T>();
      for (int64_t i = 0; i < n; ++i) q[i] = convert<T, F>(p[i]);
    });
  });
}

void cast_kernel(KernelContext& ctx) {
  const int64_t code = ctx.attr_int("to");
  const DType to = dtype_from_onnx(static_cast<int>(code));
  if (to == DType::kUndefined) ctx.unsupported("cast to ONNX data type " + std::to_string(code) + " is not supported");
  cast_to(ctx, to);
}

void cast_like_kernel(KernelContext& ctx) { cast_to(ctx, ctx.input(1).dtype()); }

}  // namespace

void register_elementwise_kernels(KernelRegistry& r) {
  const struct {
    const char* op;
    KernelFn fn;
  } kernels[] = {
      {"Add", add_kernel},
      {"Sub", sub_kernel},
      {"Mul", mul_kernel},
      {"Div", div_kernel},
      {"Mod", mod_kernel},
      {"Pow", pow_kernel},
      {"BitShift", bitshift_kernel},
      {"PRelu", prelu_kernel},
      {"Min", min_kernel},
      {"Max", max_kernel},
      {"Sum", sum_kernel},
      {"Mean", mean_kernel},
      {"Sqrt", sqrt_kernel},
      {"Exp", exp_kernel},
      {"Log", log_kernel},
      {"Erf", erf_kernel},
      {"Tanh", tanh_kernel},
      {"Sigmoid", sigmoid_kernel},
      {"Relu", relu_kernel},
      {"LeakyRelu", leaky_relu_kernel},
      {"Elu", elu_kernel},
      {"Selu", selu_kernel},
      {"Celu", celu_kernel},
      {"Gelu", gelu_kernel},
      {"HardSigmoid", hard_sigmoid_kernel},
      {"HardSwish", hard_swish_kernel},
      {"Clip", clip_kernel},
      {"Abs", abs_kernel},
      {"Neg", neg_kernel},
      {"Reciprocal", reciprocal_kernel},
      {"Floor", floor_kernel},
      {"Ceil", ceil_kernel},
      {"Round", round_kernel},
      {"Sign", sign_kernel},
      {"Sin", sin_kernel},
      {"Cos", cos_kernel},
      {"Tan", tan_kernel},
      {"Asin", asin_kernel},
      {"Acos", acos_kernel},
      {"Atan", atan_kernel},
      {"Sinh", sinh_kernel},
      {"Cosh", cosh_kernel},
      {"Asinh", asinh_kernel},
      {"Acosh", acosh_kernel},
      {"Atanh", atanh_kernel},
      {"Softplus", softplus_kernel},
      {"Softsign", softsign_kernel},
      {"ThresholdedRelu", thresholded_relu_kernel},
      {"Mish", mish_kernel},
      {"Shrink", shrink_kernel},
      {"IsNaN", isnan_kernel},
      {"IsInf", isinf_kernel},
      {"Equal", equal_kernel},
      {"Less", less_kernel},
      {"LessOrEqual", less_equal_kernel},
      {"Greater", greater_kernel},
      {"GreaterOrEqual", greater_equal_kernel},
      {"Where", where_kernel},
      {"Not", not_kernel},
      {"And", and_kernel},
      {"Or", or_kernel},
      {"Xor", xor_kernel},
      {"BitwiseAnd", bitwise_and_kernel},
      {"BitwiseOr", bitwise_or_kernel},
      {"BitwiseXor", bitwise_xor_kernel},
      {"BitwiseNot", bitwise_not_kernel},
      {"Cast", cast_kernel},
      {"CastLike", cast_like_kernel},
  };
  for (const auto& k : kernels) r.add("", k.op, k.fn);
}

}  // namespace kiln::reference
