#include "worker/batch.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd {

absl::Status ValidateBatch(const ModelSpec& spec, const Batch& batch) {
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  if (!batch.chunks.empty() && batch.cache == nullptr) {
    return absl::InvalidArgumentError("a batch with chunks needs a KV cache");
  }
  const int64_t block_tokens = batch.cache != nullptr ? batch.cache->block_tokens() : 0;
  int64_t covered = 0;
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    const SequenceChunk& c = batch.chunks[i];
    if (c.num_tokens <= 0 || c.start_pos < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch chunk ", i, " needs tokens and a position >= 0, got ", c.num_tokens,
                       " tokens at position ", c.start_pos));
    }
    // The table's reach; compared so that no sum can overflow.
    const int64_t table_tokens = static_cast<int64_t>(c.block_table.size()) * block_tokens;
    if (c.start_pos > table_tokens || c.num_tokens > table_tokens - c.start_pos) {
      return absl::InvalidArgumentError(
          absl::StrCat("batch chunk ", i, " reaches position ", c.start_pos, " + ", c.num_tokens,
                       " but its block table of ", c.block_table.size(), " blocks holds ",
                       table_tokens, " positions"));
    }
    for (int32_t block_idx : c.block_table) {
      if (block_idx < 0 || block_idx >= batch.cache->num_blocks()) {
        return absl::InvalidArgumentError(absl::StrCat("batch chunk ", i, " names KV block ",
                                                       block_idx, " outside the cache's [0, ",
                                                       batch.cache->num_blocks(), ")"));
      }
    }
    covered += c.num_tokens;
  }
  if (covered != num_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch chunks cover ", covered, " tokens but the batch has ", num_tokens));
  }
  for (int32_t id : batch.token_ids) {
    if (id < 0 || id >= spec.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is outside the vocabulary [0, ", spec.vocab_size, ")"));
    }
  }
  for (int64_t row : batch.logit_rows) {
    if (row < 0 || row >= num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("logit row ", row, " is outside the batch"));
    }
  }
  // Two tokens writing one cache position (a block handed out twice) would
  // corrupt a sequence silently.
  if (num_tokens > 1) {
    std::vector<int64_t> written;
    written.reserve(num_tokens);
    for (const SequenceChunk& c : batch.chunks) {
      for (int64_t pos = c.start_pos; pos < c.start_pos + c.num_tokens; ++pos) {
        written.push_back(c.block_table[pos / block_tokens] * block_tokens + pos % block_tokens);
      }
    }
    std::sort(written.begin(), written.end());
    const auto dup = std::adjacent_find(written.begin(), written.end());
    if (dup != written.end()) {
      return absl::InvalidArgumentError(absl::StrCat("two tokens of the batch write KV block ",
                                                     *dup / block_tokens, " row ",
                                                     *dup % block_tokens));
    }
  }
  return absl::OkStatus();
}

absl::Status RunInSteps(const Batch& batch, int64_t max_step_tokens, int64_t min_steps,
                        int64_t vocab, float* logits,
                        const std::function<absl::Status(const Batch& step, float* logits)>& step) {
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  const int64_t num_steps = std::max((num_tokens + max_step_tokens - 1) / max_step_tokens,
                                     std::max<int64_t>(min_steps, 1));
  if (num_steps == 1) return step(batch, logits);

  std::vector<float> scratch;
  for (int64_t step_idx = 0; step_idx < num_steps; ++step_idx) {
    const int64_t first = std::min(num_tokens, step_idx * max_step_tokens);
    const int64_t last = std::min(num_tokens, first + max_step_tokens);
    Batch part;
    part.cache = batch.cache;
    part.token_ids.assign(batch.token_ids.begin() + first, batch.token_ids.begin() + last);
    int64_t row = 0;
    for (const SequenceChunk& c : batch.chunks) {
      const int64_t begin = std::max(row, first);
      const int64_t end = std::min(row + c.num_tokens, last);
      if (begin < end) {
        part.chunks.push_back({c.block_table, c.start_pos + (begin - row), end - begin});
      }
      row += c.num_tokens;
    }
    std::vector<int64_t> outputs;  // indices into batch.logit_rows
    for (size_t i = 0; i < batch.logit_rows.size(); ++i) {
      if (batch.logit_rows[i] >= first && batch.logit_rows[i] < last) {
        outputs.push_back(static_cast<int64_t>(i));
        part.logit_rows.push_back(batch.logit_rows[i] - first);
      }
    }
    const bool consecutive = outputs.empty() || outputs.back() - outputs.front() + 1 ==
                                                    static_cast<int64_t>(outputs.size());
    if (consecutive) {
      HERD_RETURN_IF_ERROR(step(part, outputs.empty() ? logits : logits + outputs.front() * vocab));
    } else {
      scratch.resize(outputs.size() * vocab);
      HERD_RETURN_IF_ERROR(step(part, scratch.data()));
      for (size_t i = 0; i < outputs.size(); ++i) {
        std::copy_n(scratch.data() + i * vocab, vocab, logits + outputs[i] * vocab);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace herd
