// Choosing the next token from logits.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace herd::cpu {

// Index of the largest logit (the first one on ties).
int32_t ArgMax(const float* logits, int64_t n);

// Samples from softmax(logits / temperature) restricted to the smallest set of
// most likely tokens whose probability reaches top_p (nucleus sampling).
// temperature <= 0 means greedy. Deterministic for a given rng state.
// `scratch` is reused across calls to avoid allocation after the first.
int32_t SampleTopP(const float* logits, int64_t n, float temperature, float top_p,
                   std::mt19937_64& rng, std::vector<std::pair<float, int32_t>>& scratch);

}  // namespace herd::cpu
