#include "worker/generator.h"

#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/sampling.h"

namespace herd {

namespace {

// A rank without a sequence: the same number of (empty) Forward calls as the
// rank that generates, so every layer's dispatch and combine has all ranks.
absl::StatusOr<GenerateResult> FollowGeneration(ForwardEngine& engine,
                                                const GenerateOptions& options) {
  int64_t num_forwards = 1;  // the prompt
  if (options.max_new_tokens > 0) {
    num_forwards += options.max_new_tokens - (options.keep_logits ? 0 : 1);
  }
  Batch empty;
  for (int64_t i = 0; i < num_forwards; ++i) HERD_RETURN_IF_ERROR(engine.Forward(empty, nullptr));
  return GenerateResult{};
}

}  // namespace

absl::StatusOr<GenerateResult> Generate(ForwardEngine& engine, const std::vector<int32_t>& prompt,
                                        const GenerateOptions& options) {
  const int64_t vocab = engine.spec().vocab_size;
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  if (prompt.empty()) {
    if (!engine.expert_parallel()) return absl::InvalidArgumentError("the prompt is empty");
    return FollowGeneration(engine, options);
  }
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  }
  if (!(options.sampling.top_p > 0.0f && options.sampling.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1], got ", options.sampling.top_p));
  }
  if (options.sampling.top_k < 0 ||
      !(options.sampling.min_p >= 0.0f && options.sampling.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0 and min_p in [0, 1], got ",
                                                   options.sampling.top_k, " and ",
                                                   options.sampling.min_p));
  }
  if (!std::isfinite(options.sampling.temperature) || options.sampling.temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be >= 0, got ", options.sampling.temperature));
  }
  const int64_t needed = prompt_len + options.max_new_tokens;
  const int64_t capacity = options.max_context_tokens > 0 ? options.max_context_tokens : needed;
  if (needed > capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", prompt_len, ") + max_new_tokens (", options.max_new_tokens,
                     ") exceeds the context of ", capacity, " tokens"));
  }
  // The sequence has the paged cache to itself: enough blocks for the
  // context, in order.
  const int64_t num_blocks = (capacity + kDefaultKvBlockTokens - 1) / kDefaultKvBlockTokens;
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                        engine.CreateKvCache(num_blocks, kDefaultKvBlockTokens));
  std::vector<int32_t> block_table(num_blocks);
  std::iota(block_table.begin(), block_table.end(), 0);

  GenerateResult result;
  const int64_t num_rows = options.keep_logits ? needed : 0;
  result.logits.resize(num_rows * vocab);
  std::vector<float> last(vocab);
  std::mt19937_64 rng(options.sampling.seed);
  std::vector<std::pair<float, int32_t>> scratch;

  // Prefill: every prompt row when logits are kept, else only the last.
  Batch batch;
  batch.cache = cache.get();
  batch.token_ids = prompt;
  batch.chunks = {{block_table, 0, prompt_len}};
  if (options.keep_logits) {
    for (int64_t i = 0; i < prompt_len; ++i) batch.logit_rows.push_back(i);
    HERD_RETURN_IF_ERROR(engine.Forward(batch, result.logits.data()));
    std::copy_n(result.logits.data() + (prompt_len - 1) * vocab, vocab, last.data());
  } else {
    batch.logit_rows = {prompt_len - 1};
    HERD_RETURN_IF_ERROR(engine.Forward(batch, last.data()));
  }

  for (int64_t g = 0; g < options.max_new_tokens; ++g) {
    const int32_t next =
        cpu::SampleTopP(last.data(), vocab, options.sampling.temperature, options.sampling.top_p,
                        rng, scratch, options.sampling.top_k, options.sampling.min_p);
    result.tokens.push_back(next);
    const bool last_step = g + 1 == options.max_new_tokens;
    if (last_step && !options.keep_logits) break;
    // Feed the new token: its logits pick the next one (or fill the dump's last row).
    Batch step;
    step.cache = cache.get();
    step.token_ids = {next};
    step.chunks = {{block_table, prompt_len + g, 1}};
    step.logit_rows = {0};
    float* out =
        options.keep_logits ? result.logits.data() + (prompt_len + g) * vocab : last.data();
    HERD_RETURN_IF_ERROR(engine.Forward(step, out));
    if (options.keep_logits) std::copy_n(out, vocab, last.data());
  }
  return result;
}

}  // namespace herd
