// Choosing the next token from logits.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace herd::cpu {

// Index of the largest logit (the first one on ties).
int32_t ArgMax(const float* logits, int64_t n);

// Samples from softmax(logits / temperature) restricted to the smallest set of
// most likely tokens whose probability reaches top_p (nucleus sampling).
// Before that, as vLLM orders them, min_p > 0 drops the tokens less likely
// than min_p times the most likely one, and top_k > 0 keeps at most the top_k
// most likely; top_p's mass is then that of what is left. temperature <= 0
// means greedy. Deterministic for a given rng state. `scratch` is reused
// across calls to avoid allocation after the first. Draws one number from
// `rng` (none when greedy) and returns what SampleTopPWithUniform returns for
// it.
int32_t SampleTopP(const float* logits, int64_t n, float temperature, float top_p,
                   std::mt19937_64& rng, std::vector<std::pair<float, int32_t>>& scratch,
                   int32_t top_k = 0, float min_p = 0.0f);

// SampleTopP with its random draw given: u01 in [0, 1). The kept tokens are
// sorted by probability (descending, ties by lower id), `kept` is their summed
// (unnormalised) probability in that order, and the first token whose running
// sum exceeds u01 * kept is chosen (the last kept token if none does).
// temperature <= 0 means greedy (u01 unused).
int32_t SampleTopPWithUniform(const float* logits, int64_t n, float temperature, float top_p,
                              double u01, std::vector<std::pair<float, int32_t>>& scratch,
                              int32_t top_k = 0, float min_p = 0.0f);

// The penalties of OpenAI and vLLM on one row of logits, in place, in vLLM's
// order: repetition_penalty r (> 0; 1: none) on every token of `prompt` or
// `output` (a positive logit divided by r, another multiplied by it, as
// Hugging Face's), then for each token of `output` (the generated ones),
// frequency_penalty times its count plus presence_penalty subtracted. Ids
// must be in [0, n). `scratch` is reused across calls.
void ApplyPenalties(float* logits, int64_t n, std::span<const int32_t> prompt,
                    std::span<const int32_t> output, float presence_penalty,
                    float frequency_penalty, float repetition_penalty,
                    std::vector<int32_t>& scratch);

// The raw distribution's log probabilities (log softmax of the logits: no
// temperature, no top-p; sums in double): returns token `chosen`'s, and
// fills `top` with the k most likely tokens as (log probability, id), most
// likely first, ties by lower id. 0 <= k <= n; 0 <= chosen < n. What the API
// reports as logprobs (vLLM's default, raw logprobs). `top` is resized to k.
float LogProbabilities(const float* logits, int64_t n, int32_t chosen, int k,
                       std::vector<std::pair<float, int32_t>>& top);

}  // namespace herd::cpu
