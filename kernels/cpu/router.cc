#include "kernels/router.h"

#include <algorithm>
#include <cmath>

namespace herd::cpu {

void RouterTopK(const float* logits, int64_t num_tokens, int64_t num_experts, int64_t top_k,
                RouterScoring scoring, bool renormalize, int32_t* expert_idx, float* weights) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* row = logits + t * num_experts;
    int32_t* idx = expert_idx + t * top_k;
    float* w = weights + t * top_k;
    // Softmax and sigmoid are monotonic, so the top-k by logit is the top-k by
    // probability. Selection keeps the lower index on ties (strict '>').
    for (int64_t j = 0; j < top_k; ++j) {
      int32_t best = -1;
      for (int64_t e = 0; e < num_experts; ++e) {
        bool taken = false;
        for (int64_t i = 0; i < j; ++i) taken |= idx[i] == e;
        if (!taken && (best < 0 || row[e] > row[best])) best = static_cast<int32_t>(e);
      }
      idx[j] = best;
    }
    if (scoring == RouterScoring::kSoftmax) {
      const float max_logit = *std::max_element(row, row + num_experts);
      double sum = 0.0;
      for (int64_t e = 0; e < num_experts; ++e) sum += std::exp(row[e] - max_logit);
      for (int64_t j = 0; j < top_k; ++j) {
        w[j] = static_cast<float>(std::exp(row[idx[j]] - max_logit) / sum);
      }
    } else {
      for (int64_t j = 0; j < top_k; ++j) w[j] = 1.0f / (1.0f + std::exp(-row[idx[j]]));
    }
    if (renormalize) {
      float sum = 0.0f;
      for (int64_t j = 0; j < top_k; ++j) sum += w[j];
      for (int64_t j = 0; j < top_k; ++j) w[j] /= sum;
    }
  }
}

int64_t SkipMinorExperts(int64_t num_tokens, int64_t top_k, float beta, int32_t* expert_idx,
                         float* weights) {
  if (beta <= 0.0f) return 0;
  int64_t skipped = 0;
  for (int64_t t = 0; t < num_tokens; ++t) {
    int32_t* idx = expert_idx + t * top_k;
    float* w = weights + t * top_k;
    const float threshold = beta * w[0];
    float total = w[0];
    float kept = w[0];
    int64_t skipped_here = 0;
    for (int64_t j = 1; j < top_k; ++j) {
      total += w[j];
      if (w[j] < threshold) {
        idx[j] = -1;
        w[j] = 0.0f;
        ++skipped_here;
      } else {
        kept += w[j];
      }
    }
    if (skipped_here == 0) continue;  // (else kept >= weights[0] > 0)
    const float scale = total / kept;
    for (int64_t j = 0; j < top_k; ++j) w[j] *= scale;
    skipped += skipped_here;
  }
  return skipped;
}

}  // namespace herd::cpu
