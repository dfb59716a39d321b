// Causal grouped-query attention of new tokens against a paged KV cache:
// every sequence's cached keys and values live in fixed-size blocks that its
// block table names, so many sequences share one pool of blocks.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "core/thread_pool.h"

namespace herd::cpu {

struct AttentionShape {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // query head h reads kv head h / (num_heads / num_kv_heads)
  int64_t head_dim = 0;
};

// One layer's K and V blocks. Block b holds positions [0, block_tokens) of
// whichever sequence owns it, as `type` (F32, or F16 on the CPU):
//   keys + b * block_stride    [block_tokens, num_kv_heads * head_dim]
//   values + b * block_stride  [block_tokens, num_kv_heads * head_dim]
struct KvBlocks {
  const void* keys = nullptr;
  const void* values = nullptr;
  int64_t block_stride = 0;  // elements from one block to the next
  int64_t block_tokens = 0;
  DType type = DType::kF32;
};

// The new tokens of one sequence, at positions start_pos .. start_pos +
// num_tokens - 1, whose K/V rows are already in the sequence's blocks.
struct AttentionSequence {
  const float* q = nullptr;  // F32 [num_tokens, num_heads * head_dim]
  float* out = nullptr;      // F32 [num_tokens, num_heads * head_dim]
  int64_t num_tokens = 0;
  int64_t start_pos = 0;
  // I32 [ceil((start_pos + num_tokens) / block_tokens)]: entry j is the block
  // holding positions [j * block_tokens, (j + 1) * block_tokens).
  const int32_t* block_table = nullptr;
};

// Bytes of workspace for `num_threads` threads attending over up to
// `max_context` cached positions (the largest start_pos + num_tokens): up to
// 16 rows of scores per thread, fewer where contexts are long (a thread's
// share stays within 1 MiB or one row). A larger workspace is used as given.
size_t AttentionWorkspaceBytes(const AttentionShape& shape, int64_t max_context, int num_threads);

// For each of `num_sequences` sequences, token t attends to its positions
// [0, start_pos + t] with scale 1/sqrt(head_dim), reading them block by block
// through the block table (no copy of the context). Work is split over tiles
// of up to 16 (token, head) rows that share a kv head, for all sequences in one
// parallel loop; tiles shrink when a batch is too small to keep every thread
// busy (a single decode). Each row's arithmetic is the same in any tile, so a
// sequence's outputs are bit-identical whatever blocks hold it, whoever
// shares the batch and however its tokens were split into calls. An F16
// cache's keys and values are widened as they are read: the outputs are
// exactly those of an F32 cache holding the same values. Runs ActiveIsa()'s
// build of the kernel. The caller checked the block tables (ids inside `kv`,
// long enough) and gave at least AttentionWorkspaceBytes(shape, this batch's
// max context, pool threads).
void Attention(const AttentionShape& shape, const KvBlocks& kv, const AttentionSequence* sequences,
               int64_t num_sequences, void* workspace, size_t workspace_bytes, ThreadPool& pool);

}  // namespace herd::cpu
