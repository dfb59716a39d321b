// What the CUDA engine (worker/cuda/cuda_engine.h) allocates on the GPU for
// a model, by part. Plain data, visible to builds without CUDA so that the
// CLI can print it or say that this build cannot make one.
#pragma once

#include <cstdint>

namespace herd {

// What CudaEngine::Create puts on the GPU for a model, worked out from its
// shapes and dtypes alone (no GPU needed, no weight read): `herd inspect
// --device cuda`.
struct CudaMemoryPlan {
  int64_t embedding = 0;  // the token embedding table
  int64_t attention = 0;  // q, k, v and o of every layer
  int64_t router = 0;
  int64_t experts = 0;  // the routed experts counted (see PlanMemory)
  int64_t lm_head = 0;
  int64_t norms_and_biases = 0;
  // Activations, logits and workspaces for a step of max_step_tokens tokens,
  // cuBLAS's workspace included (decode attention's split buffers, under a
  // MiB, aside).
  int64_t step_buffers = 0;
  int64_t kv_bytes_per_token = 0;  // K and V of every layer, F32

  // What device_weight_bytes() reports after Create.
  int64_t matrices() const { return embedding + attention + router + experts + lm_head; }
  // Everything for a KV cache of `kv_tokens` positions.
  int64_t Total(int64_t kv_tokens) const {
    return matrices() + norms_and_biases + step_buffers + kv_bytes_per_token * kv_tokens;
  }
};

}  // namespace herd
