#include "kernels/attention.h"

#include <algorithm>
#include <cmath>

namespace herd::cpu {

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
      const int64_t context = start_pos + t + 1;
      const float* qh = q + (t * shape.num_heads + h) * d;
      float max_score = -INFINITY;
      for (int64_t p = 0; p < context; ++p) {
        const float* kp = k_cache + p * kv_stride + kv_h * d;
        float s = 0.0f;
        for (int64_t i = 0; i < d; ++i) s += qh[i] * kp[i];
        s *= scale;
        scores[p] = s;
        max_score = std::max(max_score, s);
      }
      double sum = 0.0;
      for (int64_t p = 0; p < context; ++p) {
        scores[p] = std::exp(scores[p] - max_score);
        sum += scores[p];
      }
      const float inv = static_cast<float>(1.0 / sum);
      float* oh = out + t * shape.num_heads * d + h * d;
      std::fill(oh, oh + d, 0.0f);
      for (int64_t p = 0; p < context; ++p) {
        const float w = scores[p] * inv;
        const float* vp = v_cache + p * kv_stride + kv_h * d;
        for (int64_t i = 0; i < d; ++i) oh[i] += w * vp[i];
      }
    }
  });
}

}  // namespace herd::cpu
