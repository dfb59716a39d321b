// Matrix multiplication against stored weights: y = x W^T (+ b).
//
// W [out, in] is in any weight dtype (F32, F16, BF16, Q8_0, Q4_0, Q4_1) and is
// read in place. For quantized weights the activations are first quantized
// per 32-value block to int8, as llama.cpp does (Q8_0 blocks for Q8_0/Q4_0
// weights; Q8_1 blocks, which also carry d * sum(q), for Q4_1), and each block
// product is an integer dot product scaled by both block scales. This keeps
// Herd bit-for-bit close to llama.cpp and is what the fast kernels accelerate.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/tensor_view.h"
#include "core/thread_pool.h"

namespace herd::cpu {

// Bytes of workspace Matmul needs for `num_tokens` rows of `in` activations
// against weights of `weight_type`. 0 for float weights.
size_t MatmulWorkspaceBytes(DType weight_type, int64_t num_tokens, int64_t in);

// x F32 [num_tokens, in]; y F32 [num_tokens, out] (overwritten); bias F32 [out]
// or nullptr. `workspace` holds at least MatmulWorkspaceBytes bytes. Splits the
// output rows over `pool`. Never allocates. InvalidArgument on shape or dtype
// mismatch.
absl::Status Matmul(const TensorView& weight, const float* bias, const float* x, int64_t num_tokens,
                    float* y, void* workspace, size_t workspace_bytes, ThreadPool& pool);

}  // namespace herd::cpu
