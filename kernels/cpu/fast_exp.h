// Internal to kernels/cpu: an exponential that vectorises inside `omp simd`
// loops (std::exp is a library call per element).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

namespace herd::cpu {

// e^x for x <= 0 (softmax's shifted scores), written so that a loop of it
// vectorises: round x / ln 2 to n with the 1.5 * 2^23 trick, a degree-6
// polynomial for e^r on the remainder r = x - n ln 2 (|r| <= ln 2 / 2; ln 2 in
// two parts keeps r exact), times 2^n built in the exponent bits. Within 2 ulp
// of std::exp; below -87 it returns e^-87 (about 1.6e-38), which adds
// nothing next to the maximum's e^0 = 1. Both functions here are always
// inlined, so they take the ISA of the (target_clones) loop that calls them.
__attribute__((always_inline)) inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

// x / (1 + e^-x) through ExpNonPositive(-|x|), so no exponent overflows.
__attribute__((always_inline)) inline float Silu(float x) {
  const float e = ExpNonPositive(-std::abs(x));
  return x >= 0.0f ? x / (1.0f + e) : x * e / (1.0f + e);
}

}  // namespace herd::cpu
