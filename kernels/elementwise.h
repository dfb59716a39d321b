// Row-wise and element-wise ops: embedding lookup, RMSNorm, SwiGLU, residual add.
// All are cheap next to the matmuls and run on the calling thread.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor_view.h"

namespace herd::cpu {

// out F32 [num_tokens, dim] = table[ids] dequantized. table [vocab, dim], any
// weight dtype. InvalidArgument if an id is outside [0, vocab).
absl::Status EmbeddingLookup(const TensorView& table, const int32_t* ids, int64_t num_tokens,
                             float* out);

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight, for each of num_rows rows of
// `dim` values. weight F32 [dim]. out may alias x.
void RmsNorm(const float* x, const float* weight, int64_t num_rows, int64_t dim, float eps,
             float* out);

// out[i] = silu(gate[i]) * up[i], silu(z) = z / (1 + exp(-z)). out may alias gate.
void SwiGlu(const float* gate, const float* up, int64_t n, float* out);

// acc[i] += x[i]
void AddInPlace(float* acc, const float* x, int64_t n);

}  // namespace herd::cpu
