#include "worker/fidelity.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "worker/engine.h"
#include "worker/kv_cache.h"

namespace herd {
namespace {

constexpr int64_t kBlockTokens = 16;

// log-softmax of one row, in double.
void LogSoftmax(const float* logits, int64_t vocab, std::vector<double>* out) {
  out->resize(vocab);
  const double max = *std::max_element(logits, logits + vocab);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(logits[i] - max);
  const double log_sum = std::log(sum) + max;
  for (int64_t i = 0; i < vocab; ++i) (*out)[i] = logits[i] - log_sum;
}

}  // namespace

absl::StatusOr<std::vector<float>> SequenceLogits(
    const Model& model, const std::vector<std::vector<int32_t>>& sequences, int num_threads,
    EngineStats* stats) {
  EngineOptions options;
  options.num_threads = num_threads;
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, options));
  const int64_t vocab = model.spec.vocab_size;
  int64_t longest = 0;
  for (const auto& s : sequences) longest = std::max<int64_t>(longest, s.size());
  if (longest > model.spec.context_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a sequence of ", longest, " tokens exceeds the context of ", model.spec.context_length));
  }
  const int64_t blocks = std::max<int64_t>(1, (longest + kBlockTokens - 1) / kBlockTokens);
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                        KvCache::Create(model.spec, blocks, kBlockTokens));
  std::vector<int32_t> block_table(blocks);
  std::iota(block_table.begin(), block_table.end(), 0);
  std::vector<float> logits;
  for (const std::vector<int32_t>& sequence : sequences) {
    if (sequence.empty()) continue;
    const int64_t n = static_cast<int64_t>(sequence.size());
    Batch batch;
    batch.cache = cache.get();
    batch.token_ids = sequence;
    batch.chunks = {{block_table, 0, n}};
    for (int64_t i = 0; i < n; ++i) batch.logit_rows.push_back(i);
    const size_t offset = logits.size();
    logits.resize(offset + n * vocab);
    HERD_RETURN_IF_ERROR(engine->Forward(batch, logits.data() + offset));
  }
  if (stats != nullptr) *stats = engine->stats();
  return logits;
}

FidelityResult CompareLogits(const std::vector<float>& reference,
                             const std::vector<float>& candidate, int64_t vocab) {
  FidelityResult r;
  r.positions = static_cast<int64_t>(std::min(reference.size(), candidate.size())) / vocab;
  std::vector<double> log_p, log_q;
  double kl_sum = 0.0, diff2 = 0.0, ref2 = 0.0;
  int64_t agree = 0;
  for (int64_t pos = 0; pos < r.positions; ++pos) {
    const float* p = reference.data() + pos * vocab;
    const float* q = candidate.data() + pos * vocab;
    LogSoftmax(p, vocab, &log_p);
    LogSoftmax(q, vocab, &log_q);
    double kl = 0.0;
    for (int64_t i = 0; i < vocab; ++i) kl += std::exp(log_p[i]) * (log_p[i] - log_q[i]);
    kl = std::max(kl, 0.0);  // rounding can make a zero divergence slightly negative
    kl_sum += kl;
    r.max_kl = std::max(r.max_kl, kl);
    if (std::max_element(p, p + vocab) - p == std::max_element(q, q + vocab) - q) ++agree;
    for (int64_t i = 0; i < vocab; ++i) {
      diff2 += (static_cast<double>(q[i]) - p[i]) * (static_cast<double>(q[i]) - p[i]);
      ref2 += static_cast<double>(p[i]) * p[i];
    }
  }
  if (r.positions > 0) {
    r.mean_kl = kl_sum / r.positions;
    r.top1_agreement = static_cast<double>(agree) / r.positions;
    r.logits_relative_error = ref2 > 0.0 ? std::sqrt(diff2 / ref2) : 0.0;
  }
  return r;
}

}  // namespace herd
