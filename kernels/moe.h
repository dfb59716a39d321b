// The expert layer in three steps, as the Elephants paper runs it: sort the
// (token, slot) pairs by expert, run each expert once over all its rows
// (SwiGLU FFN), then combine each token's expert outputs with its routing
// weights. Expert parallelism puts dispatch between the first two steps and
// combine between the last two; with one rank they run back to back.
//
// Vocabulary: a "slot" is one (token, j) pair, slot = token * top_k + j, so
// there are num_tokens * top_k slots; "rows" are slots sorted by expert.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/tensor_view.h"
#include "core/thread_pool.h"
#include "kernels/matmul.h"

namespace herd::cpu {

// Counting sort of slots by expert, stable in slot order.
// expert_idx I32 [num_slots]; row_to_slot I32 [num_slots] receives the slots
// ordered by expert; expert_offsets I32 [num_experts + 1]: expert e owns rows
// [offsets[e], offsets[e+1]). Slots whose expert is outside [0, num_experts)
// (-1: skipped, see SkipMinorExperts) belong to no expert and get no row:
// offsets[num_experts] counts only the others, and row_to_slot's entries
// from there on are left as they were (cuda::PermuteByExpert agrees).
void PermuteByExpert(const int32_t* expert_idx, int64_t num_slots, int64_t num_experts,
                     int32_t* row_to_slot, int32_t* expert_offsets);

// One expert's weights as the FFN kernel sees them (nullptr: not held here).
struct ExpertFfnView {
  const PackedMatrix* gate = nullptr;  // [ffn, hidden]
  const PackedMatrix* up = nullptr;    // [ffn, hidden]
  const PackedMatrix* down = nullptr;  // [hidden, ffn]
};

// Workspace for GroupedExpertFfn over up to `max_rows` rows in all, for
// experts shaped like `like`.
size_t GroupedExpertFfnWorkspaceBytes(const ExpertFfnView& like, int64_t max_rows);

// x F32 [num_rows, hidden] already grouped by expert; out F32 [num_rows, hidden]
// (overwritten) = down(silu(gate x) * up x) with expert e's weights for rows
// [offsets[e], offsets[e+1]). Runs in passes of up to 256 rows (an expert's
// rows cut where a pass ends, so the workspace does not grow past a pass):
// the gate and up projections of a pass's experts run as one parallel loop,
// then their down projections (work split over experts x output rows).
// Experts with no rows are skipped (their views may be null); an expert with
// rows and no weights is InvalidArgument.
absl::Status GroupedExpertFfn(const std::vector<ExpertFfnView>& experts, const int32_t* offsets,
                              const float* x, float* out, void* workspace, size_t workspace_bytes,
                              ThreadPool& pool);

// out F32 [num_tokens, hidden] += sum_j weights[t*top_k+j] * expert_out[slot_to_row[t*top_k+j]],
// j ascending. expert_out F32 [num_rows, hidden] in row order; slots whose
// slot_to_row is negative (no row) add nothing.
void CombineWeighted(const float* expert_out, const int32_t* slot_to_row, const float* weights,
                     int64_t num_tokens, int64_t top_k, int64_t hidden, float* out);

}  // namespace herd::cpu
