#include "kernels/rope.h"

#include <cmath>

namespace herd::cpu {

void ApplyRope(float* x, int64_t num_tokens, int64_t num_heads, int64_t head_dim, int64_t rope_dim,
               const int32_t* positions, float theta, RopeStyle style) {
  const int64_t half = rope_dim / 2;
  // Angles as ggml computes them: position * theta_scale^i by repeated
  // multiplication in float, so Herd's rotations match llama.cpp's to the ulp.
  const float theta_scale = std::pow(theta, -2.0f / static_cast<float>(rope_dim));
  for (int64_t t = 0; t < num_tokens; ++t) {
    float angle = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float c = std::cos(angle);
      const float s = std::sin(angle);
      angle *= theta_scale;
      const int64_t a = style == RopeStyle::kGptJ ? 2 * i : i;
      const int64_t b = style == RopeStyle::kGptJ ? 2 * i + 1 : i + half;
      for (int64_t h = 0; h < num_heads; ++h) {
        float* head = x + (t * num_heads + h) * head_dim;
        const float x0 = head[a];
        const float x1 = head[b];
        head[a] = x0 * c - x1 * s;
        head[b] = x0 * s + x1 * c;
      }
    }
  }
}

}  // namespace herd::cpu
