// The CUDA backend of the MoE routing ops (kernels/router.h, kernels/moe.h):
// router top-k, the sort of (token, j) slots by expert, the dispatch gather and
// the weighted combine.
//
// As in cuda_ops.h: pointers are device memory, `stream` is a cudaStream_t
// passed as void*, ops are asynchronous on the stream, never allocate and
// never synchronise with the host, and their launch shapes depend only on the
// arguments, so they can be captured in a CUDA graph. Argument errors are
// InvalidArgument (checked on the host before anything is launched); launch
// failures are Internal with CUDA's message.
//
// Vocabulary (kernels/moe.h): slot = token * top_k + j; rows are slots sorted
// by expert.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/op_types.h"

namespace herd::cuda {

// Largest num_experts and top_k RouterTopK and PermuteByExpert accept.
inline constexpr int64_t kMaxRouterExperts = 512;
inline constexpr int64_t kMaxRouterTopK = 16;

// cpu::RouterTopK on the GPU. logits F32 [num_tokens, num_experts]; for each
// token the top_k experts by logit (ties: lower expert index first) in
// descending order into expert_idx I32 [num_tokens, top_k], and their
// probabilities by `scoring` into weights F32 [num_tokens, top_k], divided by
// their sum when `renormalize`. Indices equal the CPU's; weights are computed
// in the CPU's precision (float exp correctly rounded, double softmax sum) and
// agree within rounding of the softmax sum (~1e-7 relative). Logits must not
// be NaN. InvalidArgument unless 1 <= num_experts <= kMaxRouterExperts and
// 1 <= top_k <= min(num_experts, kMaxRouterTopK). num_tokens may be 0.
absl::Status RouterTopK(const float* logits, int64_t num_tokens, int64_t num_experts, int64_t top_k,
                        RouterScoring scoring, bool renormalize, int32_t* expert_idx,
                        float* weights, void* stream);

// cpu::SkipMinorExperts on the GPU, in place on RouterTopK's output: for each
// token, slots j >= 1 whose weight is below beta * weights[0] get expert -1
// and weight 0, and the kept weights are scaled to the sum all top_k had.
// Bit-identical to the CPU (the same roundings, no FMA). beta <= 0 skips
// nothing. InvalidArgument unless num_tokens >= 0 and top_k >= 1.
absl::Status SkipMinorExperts(int64_t num_tokens, int64_t top_k, float beta, int32_t* expert_idx,
                              float* weights, void* stream);

// Bytes of workspace PermuteByExpert needs for these sizes (0 when
// num_slots is 0).
size_t PermuteByExpertWorkspaceBytes(int64_t num_slots, int64_t num_experts);

// cpu::PermuteByExpert on the GPU: a counting sort of slots by expert, stable
// in slot order. expert_idx I32 [num_slots]; row_to_slot I32 [num_slots]
// receives the slots ordered by expert; expert_offsets I32 [num_experts + 1]:
// expert e owns rows [offsets[e], offsets[e+1]). slot_to_row I32 [num_slots]
// (nullptr: not written) receives the inverse: row_to_slot[slot_to_row[s]] = s.
//
// Slots whose expert index is outside [0, num_experts) (as on the CPU, e.g.
// -1 for a skipped slot) belong to no expert: their slot_to_row is -1, they appear nowhere
// in row_to_slot, offsets[num_experts] counts only the valid slots, and
// row_to_slot[offsets[num_experts] ...] is filled with -1. With only valid
// slots the outputs equal the CPU's. Deterministic.
//
// InvalidArgument unless 1 <= num_experts <= kMaxRouterExperts, 0 <= num_slots
// <= INT32_MAX and workspace_bytes >= PermuteByExpertWorkspaceBytes(...).
// The workspace is scratch; its contents need no initialisation.
absl::Status PermuteByExpert(const int32_t* expert_idx, int64_t num_slots, int64_t num_experts,
                             int32_t* row_to_slot, int32_t* expert_offsets, int32_t* slot_to_row,
                             void* workspace, size_t workspace_bytes, void* stream);

// The dispatch gather: out F32 [num_rows, hidden], row r = x[row_to_slot[r] /
// top_k] where x is F32 [num_tokens, hidden]; a row whose row_to_slot is
// negative (see PermuteByExpert) is zeros. InvalidArgument unless top_k >= 1
// and num_rows, hidden >= 0.
absl::Status GatherRows(const float* x, const int32_t* row_to_slot, int64_t num_rows, int64_t top_k,
                        int64_t hidden, float* out, void* stream);

// cpu::CombineWeighted on the GPU: out F32 [num_tokens, hidden] +=
// sum_j weights[t*top_k+j] * expert_out[slot_to_row[t*top_k+j]], j ascending,
// each product and sum rounded separately as on the CPU (bit-identical to the
// CPU built without FMA contraction). Slots whose slot_to_row is negative add
// nothing. InvalidArgument unless top_k >= 1 and num_tokens, hidden >= 0.
absl::Status CombineWeighted(const float* expert_out, const int32_t* slot_to_row,
                             const float* weights, int64_t num_tokens, int64_t top_k,
                             int64_t hidden, float* out, void* stream);

}  // namespace herd::cuda
