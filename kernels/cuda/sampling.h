// The CUDA backend of kernels/sampling.h: greedy and nucleus (top-p) token
// choice for a batch of rows of logits.
//
// As in cuda_ops.h: pointers are device memory, `stream` is a cudaStream_t
// passed as void*, ops are asynchronous on the stream, never allocate and
// never synchronise with the host; launch shapes depend only on the arguments
// (one block per row), so they can be captured in a CUDA graph. Argument
// errors are InvalidArgument; launch failures are Internal with CUDA's message.
// Logits must not be NaN or +inf; -inf (a masked token) is fine as long as a
// row has a finite logit.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace herd::cuda {

// ids I32 [num_rows] = cpu::ArgMax of each row of logits F32 [num_rows, vocab]
// (the first index of the largest logit). InvalidArgument unless
// 1 <= vocab <= INT32_MAX and 0 <= num_rows <= INT32_MAX.
absl::Status ArgMaxRows(const float* logits, int64_t num_rows, int64_t vocab, int32_t* ids,
                        void* stream);

// Bytes of workspace SampleTopPRows needs: one 32-bit word per logit.
size_t SampleTopPRowsWorkspaceBytes(int64_t num_rows, int64_t vocab);

// ids I32 [num_rows]: row r is cpu::SampleTopPWithUniform(logits + r * vocab,
// vocab, temperature[r], top_p[r], u01[r]); temperature, top_p F32 [num_rows]
// and u01 F64 [num_rows] (each in [0, 1)) are device arrays. temperature <= 0
// means greedy (ArgMaxRows). InvalidArgument unless 1 <= vocab <= INT32_MAX,
// 0 <= num_rows <= INT32_MAX and workspace_bytes >=
// SampleTopPRowsWorkspaceBytes(num_rows, vocab); the workspace needs no
// initialisation.
//
// The probabilities p = exp((logit - max) / temperature) are the CPU's floats
// (float subtraction and division rounded to nearest, exp correctly rounded;
// glibc's expf is off by one ulp for about 1 input in 2000), so the order by
// p descending, ties by lower id, is the CPU's up to such one-ulp near-ties.
// The masses the CPU sums in double are summed here in 64-bit fixed point:
// each p (the most likely token has p = 1) rounded to a multiple of
// 2^-(63 - b), vocab <= 2^b, so no sum can overflow and the result is
// deterministic. It equals the CPU's except where u01 * kept or top_p * sum
// lies within vocab * 2^-(64 - b) (2^-28 for a 256k vocab) of a running sum of
// the sorted probabilities, where the two roundings can disagree. Tokens with
// p < 2^-(64 - b) are never chosen.
absl::Status SampleTopPRows(const float* logits, int64_t num_rows, int64_t vocab,
                            const float* temperature, const float* top_p, const double* u01,
                            int32_t* ids, void* workspace, size_t workspace_bytes, void* stream);

}  // namespace herd::cuda
