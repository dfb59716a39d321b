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

// Dynamic expert skipping (NAEE, seeds-methods.md §7.5 D1), on RouterTopK's
// output: for each token, every slot j >= 1 whose weight is below
// beta * weights[0] (the token's largest) is skipped: its expert becomes -1
// and its weight 0, and the kept weights are scaled so that they sum to what
// all top_k summed before (1 with renormalization). beta <= 0 skips nothing.
// Returns the number of slots skipped.
int64_t SkipMinorExperts(int64_t num_tokens, int64_t top_k, float beta, int32_t* expert_idx,
                         float* weights);

}  // namespace herd::cpu
