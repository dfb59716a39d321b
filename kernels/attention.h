// Causal grouped-query attention of new tokens against one sequence's KV cache.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"

namespace herd::cpu {

struct AttentionShape {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // query head h reads kv head h / (num_heads / num_kv_heads)
  int64_t head_dim = 0;
};

// Bytes of workspace for `num_threads` threads attending over up to
// `max_context` cached positions.
size_t AttentionWorkspaceBytes(const AttentionShape& shape, int64_t max_context, int num_threads);

// q F32 [num_tokens, num_heads, head_dim] for positions start_pos .. start_pos +
// num_tokens - 1; k_cache, v_cache F32 [>= start_pos + num_tokens, num_kv_heads,
// head_dim] already holding those positions. Token t attends to cached
// positions [0, start_pos + t] with scale 1/sqrt(head_dim). out F32
// [num_tokens, num_heads * head_dim]. Work is split over (token, head) pairs.
void Attention(const AttentionShape& shape, const float* q, int64_t num_tokens, int64_t start_pos,
               const float* k_cache, const float* v_cache, float* out, void* workspace,
               size_t workspace_bytes, ThreadPool& pool);

}  // namespace herd::cpu
