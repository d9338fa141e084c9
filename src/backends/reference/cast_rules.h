// Cast's float-to-integer and double-to-float rules, shared by the reference Cast kernel and the
// CPU backend's Cast so both convert every value identically.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace kiln::reference {

// Float to integer: truncation toward zero. ONNX leaves NaN and out-of-range values undefined;
// the reference saturates them (NaN -> 0) so that the result is at least deterministic.
template <typename To>
inline To float_to_int(double v) {
  if (std::isnan(v)) return To(0);
  const double t = std::trunc(v);
  const double hi = std::ldexp(1.0, std::numeric_limits<To>::digits);  // 2^7 for i8, 2^64 for u64
  const double lo = std::is_signed_v<To> ? -hi : 0.0;
  if (t < lo) return std::numeric_limits<To>::min();
  if (t >= hi) return std::numeric_limits<To>::max();
  return static_cast<To>(t);
}

// Double to float rounding toward zero with the last bit forced to 1 when inexact ("round to
// odd"): a second rounding of that float to f16/bf16 is then the correct single rounding of `d`.
inline float to_float_round_odd(double d) {
  float f = static_cast<float>(d);
  if (std::isnan(d) || static_cast<double>(f) == d) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u |= 1u;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace kiln::reference
