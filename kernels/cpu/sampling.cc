#include "kernels/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

namespace herd::cpu {

// Block by block: a vectorised maximum of each block of 64, the first block
// whose maximum beats every earlier one, then the first index inside it that
// holds that maximum. The same answer as one scalar pass (first on ties),
// without its compare-and-branch per value; greedy decoding scans the whole
// vocabulary once per token.
__attribute__((target_clones("avx512f", "avx2", "default"))) int32_t ArgMax(const float* logits,
                                                                            int64_t n) {
  constexpr int64_t kBlock = 64;
  float best_value = logits[0];
  int64_t best_block = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t end = std::min(n, b + kBlock);
    float m = logits[b];
#pragma omp simd reduction(max : m)
    for (int64_t i = b; i < end; ++i) m = std::max(m, logits[i]);
    if (m > best_value) {
      best_value = m;
      best_block = b;
    }
  }
  for (int64_t i = best_block; i < std::min(n, best_block + kBlock); ++i) {
    if (logits[i] == best_value) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(best_block);
}

int32_t SampleTopP(const float* logits, int64_t n, float temperature, float top_p,
                   std::mt19937_64& rng, std::vector<std::pair<float, int32_t>>& scratch,
                   int32_t top_k, float min_p) {
  if (temperature <= 0.0f) return ArgMax(logits, n);
  // libstdc++'s uniform_real_distribution<double>(0, kept) returns this draw
  // times (kept - 0) plus 0, bit for bit the u01 * kept used below.
  const double u01 = std::generate_canonical<double, std::numeric_limits<double>::digits>(rng);
  return SampleTopPWithUniform(logits, n, temperature, top_p, u01, scratch, top_k, min_p);
}

int32_t SampleTopPWithUniform(const float* logits, int64_t n, float temperature, float top_p,
                              double u01, std::vector<std::pair<float, int32_t>>& scratch,
                              int32_t top_k, float min_p) {
  if (temperature <= 0.0f) return ArgMax(logits, n);
  scratch.resize(n);
  const float max_logit = *std::max_element(logits, logits + n);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float p = std::exp((logits[i] - max_logit) / temperature);
    scratch[i] = {p, static_cast<int32_t>(i)};
    sum += p;
  }
  // Most likely first; ties by lower id so the order is fully determined.
  std::sort(scratch.begin(), scratch.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  // min_p, then top_k, cut the sorted list; top_p keeps a share of the rest.
  int64_t candidates = n;
  if (min_p > 0.0f) {
    const float floor = min_p * scratch[0].first;
    while (candidates > 1 && scratch[candidates - 1].first < floor) --candidates;
  }
  if (top_k > 0) candidates = std::min<int64_t>(candidates, top_k);
  if (candidates < n) {
    sum = 0.0;
    for (int64_t i = 0; i < candidates; ++i) sum += scratch[i].first;
  }
  const double keep_mass = std::clamp(static_cast<double>(top_p), 0.0, 1.0) * sum;
  int64_t keep = 0;
  double kept = 0.0;
  while (keep < candidates && (keep == 0 || kept < keep_mass)) kept += scratch[keep++].first;
  const double u = u01 * kept;
  double acc = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += scratch[i].first;
    if (u < acc) return scratch[i].second;
  }
  return scratch[keep - 1].second;
}

void ApplyPenalties(float* logits, int64_t n, std::span<const int32_t> prompt,
                    std::span<const int32_t> output, float presence_penalty,
                    float frequency_penalty, float repetition_penalty,
                    std::vector<int32_t>& scratch) {
  (void)n;  // ids are in range by contract
  if (repetition_penalty != 1.0f) {
    scratch.assign(prompt.begin(), prompt.end());
    scratch.insert(scratch.end(), output.begin(), output.end());
    std::sort(scratch.begin(), scratch.end());
    scratch.erase(std::unique(scratch.begin(), scratch.end()), scratch.end());
    for (const int32_t id : scratch) {
      logits[id] =
          logits[id] > 0.0f ? logits[id] / repetition_penalty : logits[id] * repetition_penalty;
    }
  }
  if (presence_penalty == 0.0f && frequency_penalty == 0.0f) return;
  scratch.assign(output.begin(), output.end());
  std::sort(scratch.begin(), scratch.end());
  for (size_t i = 0; i < scratch.size();) {
    size_t end = i;
    while (end < scratch.size() && scratch[end] == scratch[i]) ++end;
    logits[scratch[i]] -= frequency_penalty * static_cast<float>(end - i) + presence_penalty;
    i = end;
  }
}

float LogProbabilities(const float* logits, int64_t n, int32_t chosen, int k,
                       std::vector<std::pair<float, int32_t>>& top) {
  const float max = logits[ArgMax(logits, n)];
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
  const double log_sum = std::log(sum) + max;
  const auto log_prob = [&](int64_t i) {
    return static_cast<float>(static_cast<double>(logits[i]) - log_sum);
  };
  // The k largest by a bounded min-heap: (logit, id), the worst on top.
  const auto better = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  top.clear();
  if (k > 0) {
    for (int64_t i = 0; i < n; ++i) {
      const std::pair<float, int32_t> entry{logits[i], static_cast<int32_t>(i)};
      if (static_cast<int>(top.size()) < k) {
        top.push_back(entry);
        std::push_heap(top.begin(), top.end(), better);
      } else if (better(entry, top.front())) {
        std::pop_heap(top.begin(), top.end(), better);
        top.back() = entry;
        std::push_heap(top.begin(), top.end(), better);
      }
    }
    std::sort_heap(top.begin(), top.end(), better);
    for (auto& [value, id] : top) value = log_prob(id);
  }
  return log_prob(chosen);
}

}  // namespace herd::cpu
