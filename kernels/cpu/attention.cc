#include "kernels/attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/fast_exp.h"

namespace herd::cpu {
namespace {

// Positions [first, first + num_positions) of a sequence, back to back in
// memory from block `block_idx` on.
struct Run {
  int64_t block_idx;
  int64_t num_positions;
  int64_t num_blocks;
};

// The run starting at position `first` (entry j of the table): one block, or
// when blocks are laid out back to back (`merge`), every following block
// whose id is the next one, so that a sequence in consecutive blocks is read
// like a contiguous cache, without a loop exit per block.
inline Run NextRun(const int32_t* block_table, int64_t j, int64_t first, int64_t context,
                   int64_t block_tokens, bool merge) {
  int64_t num_blocks = 1;
  while (merge && first + num_blocks * block_tokens < context &&
         block_table[j + num_blocks] == block_table[j] + num_blocks) {
    ++num_blocks;
  }
  return {block_table[j], std::min(num_blocks * block_tokens, context - first), num_blocks};
}

// One query head against `context` cached positions, read run by run
// through `block_table` (k_blocks and v_blocks already point at this kv
// head's columns of block 0). The `omp simd` loops let the compiler
// vectorise the dot products, which it may not do for a plain float sum.
// kHeadDim > 0 fixes head_dim at compile time (the common 64 and 128), so the
// dot products unroll and the output row stays in registers while the values
// are summed; 0 reads it from head_dim. Per position the arithmetic is the
// same as over one contiguous cache, so the result does not depend on the
// block size or on which blocks hold the sequence. Always inlined: the entry
// points below are built for several ISAs, and an out-of-line copy would be
// built for the baseline one only.
template <int kHeadDim>
__attribute__((always_inline)) inline void AttendOneHead(
    const float* qh, const float* k_blocks, const float* v_blocks, const int32_t* block_table,
    int64_t block_stride, int64_t block_tokens, bool merge, int64_t kv_stride, int64_t head_dim,
    int64_t context, float scale, float* scores, float* oh) {
  const int64_t d = kHeadDim > 0 ? kHeadDim : head_dim;
  float max_score = -INFINITY;
  for (int64_t first = 0, j = 0; first < context;) {
    const Run run = NextRun(block_table, j, first, context, block_tokens, merge);
    const float* kb = k_blocks + run.block_idx * block_stride;
    for (int64_t p = 0; p < run.num_positions; ++p) {
      const float* kp = kb + p * kv_stride;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < d; ++i) s += qh[i] * kp[i];
      s *= scale;
      scores[first + p] = s;
      max_score = std::max(max_score, s);
    }
    first += run.num_positions;
    j += run.num_blocks;
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t p = 0; p < context; ++p) {
    scores[p] = ExpNonPositive(scores[p] - max_score);
    sum += scores[p];
  }
  const float inv = 1.0f / sum;
  float acc[kHeadDim > 0 ? kHeadDim : 1];
  float* out = kHeadDim > 0 ? acc : oh;
  std::fill(out, out + d, 0.0f);
  for (int64_t first = 0, j = 0; first < context;) {
    const Run run = NextRun(block_table, j, first, context, block_tokens, merge);
    const float* vb = v_blocks + run.block_idx * block_stride;
    for (int64_t p = 0; p < run.num_positions; ++p) {
      const float w = scores[first + p] * inv;
      const float* vp = vb + p * kv_stride;
#pragma omp simd
      for (int64_t i = 0; i < d; ++i) out[i] += w * vp[i];
    }
    first += run.num_positions;
    j += run.num_blocks;
  }
  if (kHeadDim > 0) std::copy(acc, acc + d, oh);
}

// The entry points, each built for AVX-512, AVX2 and baseline x86-64 (the
// loader picks the best at startup; the kernel above is inlined into each).
#define HERD_ATTEND_ONE_HEAD(name, head_dim)                                                     \
  __attribute__((target_clones("avx512f", "avx2", "default"))) void name(                        \
      const float* qh, const float* k_blocks, const float* v_blocks, const int32_t* block_table, \
      int64_t block_stride, int64_t block_tokens, bool merge, int64_t kv_stride, int64_t d,      \
      int64_t context, float scale, float* scores, float* oh) {                                  \
    AttendOneHead<head_dim>(qh, k_blocks, v_blocks, block_table, block_stride, block_tokens,     \
                            merge, kv_stride, d, context, scale, scores, oh);                    \
  }
HERD_ATTEND_ONE_HEAD(AttendOneHead64, 64)
HERD_ATTEND_ONE_HEAD(AttendOneHead128, 128)
HERD_ATTEND_ONE_HEAD(AttendOneHeadAnyDim, 0)
#undef HERD_ATTEND_ONE_HEAD

using AttendOneHeadFn = decltype(&AttendOneHeadAnyDim);

AttendOneHeadFn AttendOneHeadFor(int64_t head_dim) {
  switch (head_dim) {
    case 64:
      return &AttendOneHead64;
    case 128:
      return &AttendOneHead128;
    default:
      return &AttendOneHeadAnyDim;
  }
}

}  // namespace

size_t AttentionWorkspaceBytes(const AttentionShape& shape, int64_t max_context, int num_threads) {
  return static_cast<size_t>(num_threads) * max_context * sizeof(float);
}

void Attention(const AttentionShape& shape, const KvBlocks& kv, const AttentionSequence* sequences,
               int64_t num_sequences, void* workspace, size_t workspace_bytes, ThreadPool& pool) {
  const int64_t d = shape.head_dim;
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const int64_t kv_stride = shape.num_kv_heads * d;
  const int64_t q_stride = shape.num_heads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const bool merge = kv.block_stride == kv.block_tokens * kv_stride;
  int64_t num_work = 0;
  int64_t max_context = 0;
  for (int64_t s = 0; s < num_sequences; ++s) {
    num_work += sequences[s].num_tokens * shape.num_heads;
    max_context = std::max(max_context, sequences[s].start_pos + sequences[s].num_tokens);
  }
  float* scratch_base = static_cast<float*>(workspace);
  const AttendOneHeadFn attend = AttendOneHeadFor(d);

  // Work item w is (sequence, token, head), heads fastest, sequences in order.
  pool.ParallelFor(num_work, 1, [&](int64_t begin, int64_t end, int thread) {
    float* scores = scratch_base + thread * max_context;
    int64_t s = 0;
    int64_t first_work = 0;  // work index of sequence s's first item
    for (int64_t work = begin; work < end; ++work) {
      while (work - first_work >= sequences[s].num_tokens * shape.num_heads) {
        first_work += sequences[s].num_tokens * shape.num_heads;
        ++s;
      }
      const AttentionSequence& seq = sequences[s];
      const int64_t t = (work - first_work) / shape.num_heads;
      const int64_t h = (work - first_work) % shape.num_heads;
      const int64_t kv_h = h / group;
      attend(seq.q + t * q_stride + h * d, kv.keys + kv_h * d, kv.values + kv_h * d,
             seq.block_table, kv.block_stride, kv.block_tokens, merge, kv_stride, d,
             seq.start_pos + t + 1, scale, scores, seq.out + t * q_stride + h * d);
    }
  });
}

}  // namespace herd::cpu
