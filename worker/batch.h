// What one Forward call of an engine runs: tokens of one or more sequences,
// each chunk writing its own positions of a paged KV cache, and the rows
// whose logits are wanted. Shared by every engine (CPU and CUDA), with the
// checks they run first and the split of long batches into steps.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "model/model.h"
#include "worker/kv_cache.h"

namespace herd {

// A run of consecutive tokens of one sequence inside a batch.
struct SequenceChunk {
  // I32: the sequence's blocks of the batch's cache in position order (entry
  // j holds positions [j * block_tokens, (j + 1) * block_tokens)), covering
  // at least [0, start_pos + num_tokens). Positions [0, start_pos) are
  // already there; the chunk writes its own. Borrowed for the Forward call.
  std::span<const int32_t> block_table;
  int64_t start_pos = 0;  // position of the chunk's first token
  int64_t num_tokens = 0;
};

struct Batch {
  // The paged cache every chunk's block table points into (borrowed); may be
  // nullptr only for a batch without chunks. It must live where the engine
  // runs (ForwardEngine::CreateKvCache makes one that does).
  KvCache* cache = nullptr;
  // I32 [num_tokens]: the chunks' tokens, concatenated in chunk order.
  std::vector<int32_t> token_ids;
  // NOTE: the positions a chunk writes must not be read by another sequence
  // of the batch (no block is written by one sequence and shared by another).
  std::vector<SequenceChunk> chunks;
  // Batch rows whose logits are wanted, in the order they are written.
  std::vector<int64_t> logit_rows;
};

// InvalidArgument for ids outside the vocabulary, chunks that do not add up
// to the tokens, chunks without a cache, block ids outside the cache, a block
// table too short for its chunk, two tokens writing the same cache position,
// or logit rows outside the batch.
absl::Status ValidateBatch(const ModelSpec& spec, const Batch& batch);

// Runs a validated `batch` as consecutive steps of at most max_step_tokens
// tokens each (one step if it fits, and exactly `min_steps` >= 1 steps if
// more are asked for; later steps may be empty). A chunk's tokens keep their
// order across steps, so its later tokens see the K/V its earlier ones
// wrote. `step` writes F32 [step.logit_rows.size(), vocab] to its output;
// the rows land where `batch.logit_rows` puts them in `logits`.
absl::Status RunInSteps(const Batch& batch, int64_t max_step_tokens, int64_t min_steps,
                        int64_t vocab, float* logits,
                        const std::function<absl::Status(const Batch& step, float* logits)>& step);

}  // namespace herd
