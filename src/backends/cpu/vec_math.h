// Vectorizable float math shared by the CPU kernels' loops: always inlined into each ISA variant
// of the caller (target attributes, target_clones), where it vectorizes with the caller's loop.
#pragma once
#include <cstdint>
#include <cstring>

namespace kiln::cpu::vec {

// exp(x) to ~1 ulp (Cephes' polynomial with Cody-Waite reduction); exactly 0 below -87 (incl. -inf), NaN stays
// NaN, large x saturate at exp(88).
static inline __attribute__((always_inline)) float vexp(float x) {
  float xc = x < -87.0f ? -87.0f : x;
  xc = xc > 88.0f ? 88.0f : xc;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const float nf = (xc * 1.44269504088896341f + magic) - magic;
  float r = xc - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const float e = q * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(nf) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float res = e * scale;
  return x < -87.0f ? 0.0f : res;
}

}  // namespace kiln::cpu::vec
