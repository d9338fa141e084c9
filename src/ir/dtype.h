// Element types of the IR, their sizes and names, and the 16-bit float types used by the
// reference kernels (which compute in fp32 and round on store).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "kiln/error.h"

namespace kiln {

// Values are Kiln's own and never serialized by position; files use dtype_name().
enum class DType : uint8_t {
  kUndefined = 0,
  kF32,
  kF16,
  kBF16,
  kF64,
  kI8,
  kU8,
  kI16,
  kU16,
  kI32,
  kU32,
  kI64,
  kU64,
  kBool,
  kF8E4M3FN,  // room for fp8: storage only for now
  kF8E5M2,
  kString,    // recognised on import so errors can name it; no kernel computes on it
};

size_t dtype_size(DType dt);             // bytes per element; 0 for undefined/string
std::string_view dtype_name(DType dt);   // "f32", "i64", ...
DType dtype_from_name(std::string_view name);  // inverse of dtype_name (also accepts numpy names)
bool dtype_is_float(DType dt);
bool dtype_is_integer(DType dt);
bool dtype_is_signed(DType dt);
// int8 or uint8: the types of quantized activations and weights.
inline bool dtype_is_8bit(DType dt) { return dt == DType::kI8 || dt == DType::kU8; }

// ONNX TensorProto.DataType <-> DType. Unknown codes map to kUndefined.
DType dtype_from_onnx(int onnx_type);
int dtype_to_onnx(DType dt);

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
inline float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// FP8 E4M3FN (OCP; ONNX float8e4m3fn): 4 exponent bits (bias 7), 3 mantissa bits, no infinities,
// NaN 0x7f/0xff, largest finite 448. float_to_e4m3 rounds to nearest even and saturates: values
// beyond +-448 (and infinities) become +-448, as the GPU's __NV_SATFINITE conversion does; NaN stays NaN.
float e4m3_to_float(uint8_t b);
uint8_t float_to_e4m3(float f);
inline constexpr float kE4M3Max = 448.f;

inline uint16_t float_to_bf16(float f) {  // round to nearest even, NaN kept quiet
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Storage types with implicit conversion to and from float, so that templated reference
// kernels can be written once for all float types.
struct Half {
  uint16_t bits = 0;
  Half() = default;
  Half(float f) : bits(float_to_half(f)) {}  // NOLINT(google-explicit-constructor)
  operator float() const { return half_to_float(bits); }  // NOLINT
};
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  BFloat16(float f) : bits(float_to_bf16(f)) {}  // NOLINT
  operator float() const { return bf16_to_float(bits); }  // NOLINT
};
static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2);

template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::kF32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::kF64; };
template <> struct DTypeOf<Half> { static constexpr DType value = DType::kF16; };
template <> struct DTypeOf<BFloat16> { static constexpr DType value = DType::kBF16; };
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::kI8; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::kU8; };
template <> struct DTypeOf<int16_t> { static constexpr DType value = DType::kI16; };
template <> struct DTypeOf<uint16_t> { static constexpr DType value = DType::kU16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kI32; };
template <> struct DTypeOf<uint32_t> { static constexpr DType value = DType::kU32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::kI64; };
template <> struct DTypeOf<uint64_t> { static constexpr DType value = DType::kU64; };
template <> struct DTypeOf<bool> { static constexpr DType value = DType::kBool; };

// Calls fn(T{}) with the C++ type of dt. Throws kUnsupported for fp8/string/undefined.
// Usage: dispatch_dtype(dt, [&](auto tag) { using T = decltype(tag); ... });
template <typename Fn>
decltype(auto) dispatch_dtype(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::kF32: return fn(float{});
    case DType::kF64: return fn(double{});
    case DType::kF16: return fn(Half{});
    case DType::kBF16: return fn(BFloat16{});
    case DType::kI8: return fn(int8_t{});
    case DType::kU8: return fn(uint8_t{});
    case DType::kI16: return fn(int16_t{});
    case DType::kU16: return fn(uint16_t{});
    case DType::kI32: return fn(int32_t{});
    case DType::kU32: return fn(uint32_t{});
    case DType::kI64: return fn(int64_t{});
    case DType::kU64: return fn(uint64_t{});
    case DType::kBool: return fn(bool{});
    default:
      throw Error(ErrorCode::kUnsupported,
                  std::string("no kernel computes on dtype ") + std::string(dtype_name(dt)));
  }
}

// Same, restricted to float types (f32, f64, f16, bf16).
template <typename Fn>
decltype(auto) dispatch_float(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::kF32: return fn(float{});
    case DType::kF64: return fn(double{});
    case DType::kF16: return fn(Half{});
    case DType::kBF16: return fn(BFloat16{});
    default:
      throw Error(ErrorCode::kUnsupported,
                  std::string("expected a float dtype, got ") + std::string(dtype_name(dt)));
  }
}

// Arithmetic type used to compute on a storage type: float for 16-bit floats, T otherwise.
template <typename T> struct ComputeType { using type = T; };
template <> struct ComputeType<Half> { using type = float; };
template <> struct ComputeType<BFloat16> { using type = float; };
template <typename T> using compute_t = typename ComputeType<T>::type;

}  // namespace kiln
