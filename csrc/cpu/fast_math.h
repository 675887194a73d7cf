// exp for inner loops that must vectorise: libm's expf is a scalar call that blocks auto-vectorisation.
// exp(x) = 2^i * 2^f with i = round(x log2 e), f in [-0.5, 0.5]; 2^f from Cephes' exp2f polynomial (relative error
// ~2e-7 over the range, i.e. float rounding). Inputs are clamped to [-87, 88] (results below 1.6e-38 or overflow
// are not needed by the scans: decays lie in (0, 1]).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace hybrid_cpu {

inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);  // not fmin/fmax: their NaN rules block vectorisation
  const float t = x * 1.44269504088896341f;
  const float fi = std::floor(t + 0.5f);
  const float f = t - fi;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fi) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace hybrid_cpu
