// Rotary position embedding, in place, in both pairings (core/op_types.h).
#pragma once

#include <cstdint>

#include "core/op_types.h"

namespace herd::cpu {

// x F32 [num_tokens, num_heads, head_dim]; positions I32 [num_tokens]. The first
// rope_dim dimensions of each head are rotated: pair i (i < rope_dim/2) by
// angle position * theta^(-2i / rope_dim). kGptJ pairs (2i, 2i+1); kNeox pairs
// (i, i + rope_dim/2).
void ApplyRope(float* x, int64_t num_tokens, int64_t num_heads, int64_t head_dim, int64_t rope_dim,
               const int32_t* positions, float theta, RopeStyle style);

}  // namespace herd::cpu
