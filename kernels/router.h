// Router: expert scores -> top-k experts and their routing weights.
#pragma once

#include <cstdint>

#include "core/op_types.h"

namespace herd::cpu {

// logits F32 [num_tokens, num_experts]. For each token: probabilities by
// `scoring` (softmax over all experts or per-expert sigmoid), the top_k
// largest (ties: lower expert index first) in descending order into
// expert_idx I32 [num_tokens, top_k], their probabilities into weights F32
// [num_tokens, top_k], divided by their sum when `renormalize`.
void RouterTopK(const float* logits, int64_t num_tokens, int64_t num_experts, int64_t top_k,
                RouterScoring scoring, bool renormalize, int32_t* expert_idx, float* weights);

}  // namespace herd::cpu
