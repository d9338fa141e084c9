// DType tables. The switch statements have no default so that -Wall flags a forgotten dtype.
#include "ir/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace kiln {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidModel: return "invalid model";
    case ErrorCode::kUnsupported: return "unsupported";
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kIo: return "I/O error";
    case ErrorCode::kInternal: return "internal error";
  }
  return "error";
}

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::kUndefined: return 0;
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kF64: return 8;
    case DType::kI8: return 1;
    case DType::kU8: return 1;
    case DType::kI16: return 2;
    case DType::kU16: return 2;
    case DType::kI32: return 4;
    case DType::kU32: return 4;
    case DType::kI64: return 8;
    case DType::kU64: return 8;
    case DType::kBool: return 1;
    case DType::kF8E4M3FN: return 1;
    case DType::kF8E5M2: return 1;
    case DType::kString: return 0;
  }
  return 0;
}

std::string_view dtype_name(DType dt) {
  switch (dt) {
    case DType::kUndefined: return "undefined";
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kF64: return "f64";
    case DType::kI8: return "i8";
    case DType::kU8: return "u8";
    case DType::kI16: return "i16";
    case DType::kU16: return "u16";
    case DType::kI32: return "i32";
    case DType::kU32: return "u32";
    case DType::kI64: return "i64";
    case DType::kU64: return "u64";
    case DType::kBool: return "bool";
    case DType::kF8E4M3FN: return "f8e4m3fn";
    case DType::kF8E5M2: return "f8e5m2";
    case DType::kString: return "string";
  }
  return "undefined";
}

DType dtype_from_name(std::string_view n) {
  struct Alias { std::string_view name; DType dt; };
  static constexpr Alias kAliases[] = {
      {"f32", DType::kF32},   {"float32", DType::kF32}, {"fp32", DType::kF32},  {"float", DType::kF32},
      {"f16", DType::kF16},   {"float16", DType::kF16}, {"fp16", DType::kF16},  {"half", DType::kF16},
      {"bf16", DType::kBF16}, {"bfloat16", DType::kBF16},
      {"f64", DType::kF64},   {"float64", DType::kF64}, {"double", DType::kF64},
      {"i8", DType::kI8},     {"int8", DType::kI8},     {"u8", DType::kU8},     {"uint8", DType::kU8},
      {"i16", DType::kI16},   {"int16", DType::kI16},   {"u16", DType::kU16},   {"uint16", DType::kU16},
      {"i32", DType::kI32},   {"int32", DType::kI32},   {"u32", DType::kU32},   {"uint32", DType::kU32},
      {"i64", DType::kI64},   {"int64", DType::kI64},   {"u64", DType::kU64},   {"uint64", DType::kU64},
      {"bool", DType::kBool}, {"f8e4m3fn", DType::kF8E4M3FN}, {"f8e5m2", DType::kF8E5M2},
      {"string", DType::kString},
  };
  for (const auto& a : kAliases)
    if (a.name == n) return a.dt;
  return DType::kUndefined;
}

bool dtype_is_float(DType dt) {
  return dt == DType::kF32 || dt == DType::kF16 || dt == DType::kBF16 || dt == DType::kF64 ||
         dt == DType::kF8E4M3FN || dt == DType::kF8E5M2;
}
bool dtype_is_integer(DType dt) {
  switch (dt) {
    case DType::kI8: case DType::kU8: case DType::kI16: case DType::kU16:
    case DType::kI32: case DType::kU32: case DType::kI64: case DType::kU64:
      return true;
    default:
      return false;
  }
}
bool dtype_is_signed(DType dt) {
  return dtype_is_float(dt) || dt == DType::kI8 || dt == DType::kI16 || dt == DType::kI32 ||
         dt == DType::kI64;
}

DType dtype_from_onnx(int t) {
  switch (t) {
    case 1: return DType::kF32;
    case 2: return DType::kU8;
    case 3: return DType::kI8;
    case 4: return DType::kU16;
    case 5: return DType::kI16;
    case 6: return DType::kI32;
    case 7: return DType::kI64;
    case 8: return DType::kString;
    case 9: return DType::kBool;
    case 10: return DType::kF16;
    case 11: return DType::kF64;
    case 12: return DType::kU32;
    case 13: return DType::kU64;
    case 16: return DType::kBF16;
    case 17: return DType::kF8E4M3FN;
    case 19: return DType::kF8E5M2;
    default: return DType::kUndefined;
  }
}

int dtype_to_onnx(DType dt) {
  switch (dt) {
    case DType::kUndefined: return 0;
    case DType::kF32: return 1;
    case DType::kU8: return 2;
    case DType::kI8: return 3;
    case DType::kU16: return 4;
    case DType::kI16: return 5;
    case DType::kI32: return 6;
    case DType::kI64: return 7;
    case DType::kString: return 8;
    case DType::kBool: return 9;
    case DType::kF16: return 10;
    case DType::kF64: return 11;
    case DType::kU32: return 12;
    case DType::kU64: return 13;
    case DType::kBF16: return 16;
    case DType::kF8E4M3FN: return 17;
    case DType::kF8E5M2: return 19;
  }
  return 0;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;          // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;         // overflow (after rounding) -> inf
  if (abs < 0x38800000u) {                               // subnormal or zero in half
    if (abs < 0x33000000u) return sign;                  // rounds to zero
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;
    // value = m * 2^(e-150); the subnormal half counts units of 2^-24, so it is m >> (126 - e).
    uint32_t half_m = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_m & 1u))) ++half_m;
    return sign | static_cast<uint16_t>(half_m);
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);  // round to nearest even on bit 13
  r -= 0x38000000u;                                 // rebias 127 -> 15
  return sign | static_cast<uint16_t>(r >> 13);
}

float e4m3_to_float(uint8_t b) {
  const float sign = (b & 0x80u) ? -1.f : 1.f;
  const int e = (b >> 3) & 15, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<float>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);
  return sign * std::ldexp(1.f + static_cast<float>(m) / 8.f, e - 7);
}

uint8_t float_to_e4m3(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7f;  // NaN
  if (abs >= 0x43e00000u) return sign | 0x7e;  // >= 448 (and inf): saturate
  float a;
  std::memcpy(&a, &abs, 4);
  if (a < 0.015625f) {  // below 2^-6: subnormal steps of 2^-9 (exact scaling; code 8 is 2^-6)
    return sign | static_cast<uint8_t>(std::nearbyint(a * 512.f));
  }
  int e = static_cast<int>(abs >> 23) - 127;  // -6 .. 8
  const uint32_t mant = abs & 0x7fffffu;
  uint32_t r = mant >> 20;
  const uint32_t rem = mant & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (r & 1u))) ++r;
  if (r == 8) r = 0, ++e;
  const uint32_t code = (static_cast<uint32_t>(e + 7) << 3) | r;
  return sign | static_cast<uint8_t>(code > 0x7e ? 0x7e : code);
}

}  // namespace kiln
