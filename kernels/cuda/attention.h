// The CUDA backend of rotary embedding and paged attention: RoPE in place,
// appending new tokens' K/V rows to a paged cache, and causal grouped-query
// attention of a batch of sequences against that cache.
//
// Same contracts as kernels/rope.h and kernels/attention.h; pointers are device
// memory unless a comment says otherwise, `stream` is a cudaStream_t passed as
// void*. Ops are asynchronous on the stream, never allocate and never wait for
// the device, and their launch grids depend only on the arguments, so a
// sequence of them can be captured in a CUDA graph.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/op_types.h"
#include "kernels/attention.h"

namespace herd::cuda {

// Rotates x F32 [num_tokens, num_heads, head_dim] in place by the positions
// I32 [num_tokens] (both device memory), as cpu::ApplyRope does: pair i of the
// first rope_dim dimensions of each head (i < rope_dim / 2) turns by position *
// theta^(-2i / rope_dim), the angle computed with the CPU's float arithmetic
// and its sine and cosine in double precision, so that results match the CPU
// to a few ulps even at positions in the tens of thousands. InvalidArgument
// unless rope_dim is even and 0 <= rope_dim <= head_dim.
absl::Status ApplyRope(float* x, int64_t num_tokens, int64_t num_heads, int64_t head_dim,
                       int64_t rope_dim, const int32_t* positions, float theta, RopeStyle style,
                       void* stream);

// One layer's K and V blocks in device memory, writable: the layout of
// cpu::KvBlocks (block b's rows at keys + b * block_stride, F32 [block_tokens,
// num_kv_heads * head_dim], the same for values).
struct DeviceKvBlocks {
  float* keys = nullptr;
  float* values = nullptr;
  int64_t block_stride = 0;  // floats from one block to the next
  int64_t block_tokens = 0;
};

// Writes the K and V rows of num_tokens new tokens into their cache slots:
// k, v F32 [num_tokens, num_kv_heads * head_dim]; slot_mapping I32
// [num_tokens], entry t = block * block_tokens + offset within the block,
// the row that token t's K (V) goes to. Tokens whose slot is negative
// (padding) are skipped. Slots must be distinct and name blocks of `kv`
// (not checked). InvalidArgument for a non-positive shape or block_tokens.
absl::Status AppendKv(const cpu::AttentionShape& shape, const float* k, const float* v,
                      int64_t num_tokens, const int32_t* slot_mapping, const DeviceKvBlocks& kv,
                      void* stream);

// One sequence of a batched attention call. Its num_tokens new tokens, at
// positions start_pos .. start_pos + num_tokens - 1, are rows [q_row, q_row +
// num_tokens) of q and of out; their K/V rows are already in the cache. Its
// block table is block_tables[block_table_offset ..]: entry j names the block
// holding positions [j * block_tokens, (j + 1) * block_tokens), for
// ceil((start_pos + num_tokens) / block_tokens) entries.
struct DeviceAttentionSequence {
  int64_t q_row = 0;
  int64_t num_tokens = 0;
  int64_t start_pos = 0;
  int64_t block_table_offset = 0;
};

// Bytes of workspace that let Attention split each single-token sequence's
// context among several thread blocks, chosen for `num_sequences` sequences
// whose contexts (start_pos + num_tokens) are at most `max_context`: 0 where
// one block per query row keeps the GPU busy anyway.
size_t AttentionWorkspaceBytes(const cpu::AttentionShape& shape, int64_t num_sequences,
                               int64_t max_context);

// cpu::Attention on the GPU for `num_sequences` sequences (a device array):
// token t of a sequence attends to its positions [0, start_pos + t] with scale
// 1/sqrt(head_dim), query head h reading kv head h / (num_heads /
// num_kv_heads) of `kv` (device pointers) through the sequence's block table
// (block_tables, I32, device). q and out are F32 [total_tokens, num_heads *
// head_dim]; only the sequences' rows of out are written.
//
// max_tokens_per_sequence bounds every sequence's num_tokens (the grid is
// sized by it). Above 1 a tiled prefill kernel runs (a tile of query rows per
// block, online softmax over K/V tiles in shared memory). At most 1 a decode
// kernel runs, which splits each context into as many parts as `workspace`
// (device memory, workspace_bytes long, any size including 0) holds partial
// results for, up to a fixed cap, and merges the parts in a second kernel;
// AttentionWorkspaceBytes gives a size that suits the batch. Block tables
// must be long enough and name blocks of `kv` (not checked). InvalidArgument
// unless kv.type is F32, 1 <= head_dim <= 256, num_kv_heads >= 1, num_heads is a multiple of
// num_kv_heads, kv.block_tokens >= 1, max_tokens_per_sequence <= total_tokens,
// and the batch fits a launch grid.
absl::Status Attention(const cpu::AttentionShape& shape, const cpu::KvBlocks& kv, const float* q,
                       const DeviceAttentionSequence* sequences, int64_t num_sequences,
                       int64_t total_tokens, int64_t max_tokens_per_sequence,
                       const int32_t* block_tables, float* out, void* workspace,
                       size_t workspace_bytes, void* stream);

}  // namespace herd::cuda
