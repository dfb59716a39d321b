#include "kernels/attention.h"

#include <algorithm>
#include <cmath>

namespace herd::cpu {
namespace {

// One query head against `context` cached positions. Built for AVX-512,
// AVX2 and baseline x86-64 (the loader picks the best at startup); the
// `omp simd` reductions let the compiler vectorise the dot products, which
// it may not do for a plain float sum.
__attribute__((target_clones("avx512f", "avx2", "default"))) void AttendOneHead(
    const float* qh, const float* k_cache, const float* v_cache, int64_t kv_stride,
    int64_t head_dim, int64_t context, float scale, float* scores, float* oh) {
  float max_score = -INFINITY;
  for (int64_t p = 0; p < context; ++p) {
    const float* kp = k_cache + p * kv_stride;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < head_dim; ++i) s += qh[i] * kp[i];
    s *= scale;
    scores[p] = s;
    max_score = std::max(max_score, s);
  }
  float sum = 0.0f;
  for (int64_t p = 0; p < context; ++p) {
    scores[p] = std::exp(scores[p] - max_score);
    sum += scores[p];
  }
  const float inv = 1.0f / sum;
  std::fill(oh, oh + head_dim, 0.0f);
  for (int64_t p = 0; p < context; ++p) {
    const float w = scores[p] * inv;
    const float* vp = v_cache + p * kv_stride;
#pragma omp simd
    for (int64_t i = 0; i < head_dim; ++i) oh[i] += w * vp[i];
  }
}

}  // namespace

size_t AttentionWorkspaceBytes(const AttentionShape& shape, int64_t max_context, int num_threads) {
  return static_cast<size_t>(num_threads) * max_context * sizeof(float);
}

void Attention(const AttentionShape& shape, const float* q, int64_t num_tokens, int64_t start_pos,
               const float* k_cache, const float* v_cache, float* out, void* workspace,
               size_t workspace_bytes, ThreadPool& pool) {
  const int64_t d = shape.head_dim;
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const int64_t kv_stride = shape.num_kv_heads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int64_t max_context = start_pos + num_tokens;
  float* scratch_base = static_cast<float*>(workspace);

  pool.ParallelFor(num_tokens * shape.num_heads, 1, [&](int64_t begin, int64_t end, int thread) {
    float* scores = scratch_base + thread * max_context;
    for (int64_t work = begin; work < end; ++work) {
      const int64_t t = work / shape.num_heads;
      const int64_t h = work % shape.num_heads;
      const int64_t kv_h = h / group;
      AttendOneHead(q + (t * shape.num_heads + h) * d, k_cache + kv_h * d, v_cache + kv_h * d,
                    kv_stride, d, start_pos + t + 1, scale, scores,
                    out + t * shape.num_heads * d + h * d);
    }
  });
}

}  // namespace herd::cpu
