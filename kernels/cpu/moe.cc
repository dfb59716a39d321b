#include "kernels/moe.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"

namespace herd::cpu {

void PermuteByExpert(const int32_t* expert_idx, int64_t num_slots, int64_t num_experts,
                     int32_t* row_to_slot, int32_t* expert_offsets) {
  // Count into offsets[e + 1], prefix-sum to end-of-expert positions, then
  // fill backwards (stable) so offsets[e + 1] falls to the start of expert e;
  // a final shift turns those starts into the usual [begin, end) offsets.
  const auto valid = [num_experts](int32_t e) { return e >= 0 && e < num_experts; };
  std::fill(expert_offsets, expert_offsets + num_experts + 1, 0);
  for (int64_t s = 0; s < num_slots; ++s) {
    if (valid(expert_idx[s])) ++expert_offsets[expert_idx[s] + 1];
  }
  for (int64_t e = 0; e < num_experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  const int32_t num_rows = expert_offsets[num_experts];
  for (int64_t s = num_slots - 1; s >= 0; --s) {
    if (valid(expert_idx[s])) {
      row_to_slot[--expert_offsets[expert_idx[s] + 1]] = static_cast<int32_t>(s);
    }
  }
  for (int64_t e = 0; e < num_experts; ++e) expert_offsets[e] = expert_offsets[e + 1];
  expert_offsets[num_experts] = num_rows;
}

namespace {

// Experts that can hold rows in one call: all of a layer's, generously.
constexpr size_t kMaxExperts = 512;
// Rows of one pass: the workspace holds a pass's gate and up outputs (2 x
// rows x ffn floats), so a long step runs in passes of at most this many
// rows, an expert's rows cut where a pass ends. An expert's tokens share its
// weights within a pass; 256 rows are 128 tokens at top-2.
constexpr int64_t kMaxPassRows = 256;
// Experts (or parts of one) per pass: 2 tasks each for MatmulBatch's 64.
constexpr int kMaxPassPieces = 32;

struct FfnWorkspaceLayout {
  size_t gate_bytes, up_bytes, matmul_bytes;
};

FfnWorkspaceLayout Layout(const ExpertFfnView& like, int64_t max_rows) {
  const int64_t ffn = like.gate->rows;
  const int64_t pass_rows = std::min(max_rows, kMaxPassRows);
  FfnWorkspaceLayout l;
  l.gate_bytes = (pass_rows * ffn * sizeof(float) + 63) / 64 * 64;
  l.up_bytes = l.gate_bytes;
  // Upper bound over every split of a pass's rows into experts: one
  // quantized copy of all rows for gate/up, one for down.
  const MatmulTask gate_up[2] = {{like.gate, nullptr, nullptr, pass_rows, nullptr},
                                 {like.up, nullptr, nullptr, pass_rows, nullptr}};
  const MatmulTask down{like.down, nullptr, nullptr, pass_rows, nullptr};
  l.matmul_bytes =
      std::max(MatmulBatchWorkspaceBytes(gate_up, 2), MatmulBatchWorkspaceBytes(&down, 1)) +
      4096;  // per-task alignment slack (QuantizedActivationsBytes)
  return l;
}

// Rows [begin, end) of one expert, run in one pass.
struct PassPiece {
  size_t expert;
  int64_t begin, end;
};

}  // namespace

size_t GroupedExpertFfnWorkspaceBytes(const ExpertFfnView& like, int64_t max_rows) {
  const FfnWorkspaceLayout l = Layout(like, max_rows);
  return l.gate_bytes + l.up_bytes + l.matmul_bytes;
}

absl::Status GroupedExpertFfn(const std::vector<ExpertFfnView>& experts, const int32_t* offsets,
                              const float* x, float* out, void* workspace, size_t workspace_bytes,
                              ThreadPool& pool) {
  if (experts.size() > kMaxExperts) {
    return absl::InvalidArgumentError("GroupedExpertFfn: too many experts");
  }
  const int64_t num_rows = offsets[experts.size()];
  if (num_rows == 0) return absl::OkStatus();
  const ExpertFfnView* like = nullptr;
  for (size_t e = 0; e < experts.size(); ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    const ExpertFfnView& w = experts[e];
    if (w.gate == nullptr || w.up == nullptr || w.down == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("GroupedExpertFfn: expert ", e, " has ", rows, " rows but no weights"));
    }
    if (like == nullptr) like = &w;
  }
  const int64_t hidden = like->gate->cols;
  const int64_t ffn = like->gate->rows;
  const FfnWorkspaceLayout l = Layout(*like, num_rows);
  if (workspace_bytes < l.gate_bytes + l.up_bytes + l.matmul_bytes) {
    return absl::InvalidArgumentError("GroupedExpertFfn: workspace too small");
  }
  auto* gate = static_cast<float*>(workspace);
  auto* up = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + l.gate_bytes);
  void* mm = static_cast<uint8_t*>(workspace) + l.gate_bytes + l.up_bytes;

  // Each pass: every piece's gate and up as one parallel loop, SwiGLU, then
  // every piece's down (work split over pieces x output rows).
  size_t e = 0;
  for (int64_t row = 0; row < num_rows;) {
    const int64_t pass_begin = row;
    PassPiece pieces[kMaxPassPieces];
    int n = 0;
    while (row < num_rows && n < kMaxPassPieces && row < pass_begin + kMaxPassRows) {
      while (offsets[e + 1] <= row) ++e;
      const int64_t end = std::min<int64_t>(offsets[e + 1], pass_begin + kMaxPassRows);
      pieces[n++] = {e, row, end};
      row = end;
    }
    MatmulTask tasks[2 * kMaxPassPieces];
    for (int i = 0; i < n; ++i) {
      const PassPiece& p = pieces[i];
      const int64_t rows = p.end - p.begin;
      const float* in = x + p.begin * hidden;
      const int64_t at = (p.begin - pass_begin) * ffn;
      tasks[2 * i] = {experts[p.expert].gate, nullptr, in, rows, gate + at};
      tasks[2 * i + 1] = {experts[p.expert].up, nullptr, in, rows, up + at};
    }
    HERD_RETURN_IF_ERROR(MatmulBatch(tasks, 2 * n, mm, l.matmul_bytes, pool));
    pool.ParallelFor((row - pass_begin) * ffn, 4096, [&](int64_t begin, int64_t end, int) {
      SwiGlu(gate + begin, up + begin, end - begin, gate + begin);
    });
    for (int i = 0; i < n; ++i) {
      const PassPiece& p = pieces[i];
      tasks[i] = {experts[p.expert].down, nullptr, gate + (p.begin - pass_begin) * ffn,
                  p.end - p.begin, out + p.begin * hidden};
    }
    HERD_RETURN_IF_ERROR(MatmulBatch(tasks, n, mm, l.matmul_bytes, pool));
  }
  return absl::OkStatus();
}

void CombineWeighted(const float* expert_out, const int32_t* slot_to_row, const float* weights,
                     int64_t num_tokens, int64_t top_k, int64_t hidden, float* out) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    float* ot = out + t * hidden;
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t slot = t * top_k + j;
      if (slot_to_row[slot] < 0) continue;
      const float w = weights[slot];
      const float* y = expert_out + static_cast<int64_t>(slot_to_row[slot]) * hidden;
      for (int64_t i = 0; i < hidden; ++i) ot[i] += w * y[i];
    }
  }
}

}  // namespace herd::cpu
