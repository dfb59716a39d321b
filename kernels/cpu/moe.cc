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
  std::fill(expert_offsets, expert_offsets + num_experts + 1, 0);
  for (int64_t s = 0; s < num_slots; ++s) ++expert_offsets[expert_idx[s] + 1];
  for (int64_t e = 0; e < num_experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  for (int64_t s = num_slots - 1; s >= 0; --s) {
    row_to_slot[--expert_offsets[expert_idx[s] + 1]] = static_cast<int32_t>(s);
  }
  for (int64_t e = 0; e < num_experts; ++e) expert_offsets[e] = expert_offsets[e + 1];
  expert_offsets[num_experts] = static_cast<int32_t>(num_slots);
}

namespace {

struct FfnWorkspaceLayout {
  size_t gate_bytes, up_bytes, matmul_bytes;
};

FfnWorkspaceLayout Layout(const ExpertFfnView& like, int64_t max_rows) {
  const int64_t hidden = like.gate.dim(1);
  const int64_t ffn = like.gate.dim(0);
  FfnWorkspaceLayout l;
  l.gate_bytes = max_rows * ffn * sizeof(float);
  l.up_bytes = l.gate_bytes;
  l.matmul_bytes = std::max({MatmulWorkspaceBytes(like.gate.dtype(), max_rows, hidden),
                             MatmulWorkspaceBytes(like.up.dtype(), max_rows, hidden),
                             MatmulWorkspaceBytes(like.down.dtype(), max_rows, ffn)});
  return l;
}

}  // namespace

size_t GroupedExpertFfnWorkspaceBytes(const ExpertFfnView& like, int64_t max_rows) {
  const FfnWorkspaceLayout l = Layout(like, max_rows);
  return l.gate_bytes + l.up_bytes + l.matmul_bytes;
}

absl::Status GroupedExpertFfn(const std::vector<ExpertFfnView>& experts, const int32_t* offsets,
                              const float* x, float* out, void* workspace, size_t workspace_bytes,
                              ThreadPool& pool) {
  for (size_t e = 0; e < experts.size(); ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    if (rows == 0) continue;
    const ExpertFfnView& w = experts[e];
    if (w.gate.empty() || w.up.empty() || w.down.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("GroupedExpertFfn: expert ", e, " has ", rows, " rows but no weights"));
    }
    const int64_t hidden = w.gate.dim(1);
    const int64_t ffn = w.gate.dim(0);
    const FfnWorkspaceLayout l = Layout(w, rows);
    if (workspace_bytes < l.gate_bytes + l.up_bytes + l.matmul_bytes) {
      return absl::InvalidArgumentError("GroupedExpertFfn: workspace too small");
    }
    auto* gate = static_cast<float*>(workspace);
    auto* up = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + l.gate_bytes);
    void* mm = static_cast<uint8_t*>(workspace) + l.gate_bytes + l.up_bytes;
    const float* xe = x + offsets[e] * hidden;
    HERD_RETURN_IF_ERROR(Matmul(w.gate, nullptr, xe, rows, gate, mm, l.matmul_bytes, pool));
    HERD_RETURN_IF_ERROR(Matmul(w.up, nullptr, xe, rows, up, mm, l.matmul_bytes, pool));
    SwiGlu(gate, up, rows * ffn, gate);
    HERD_RETURN_IF_ERROR(
        Matmul(w.down, nullptr, gate, rows, out + offsets[e] * hidden, mm, l.matmul_bytes, pool));
  }
  return absl::OkStatus();
}

void CombineWeighted(const float* expert_out, const int32_t* slot_to_row, const float* weights,
                     int64_t num_tokens, int64_t top_k, int64_t hidden, float* out) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    float* ot = out + t * hidden;
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t slot = t * top_k + j;
      const float w = weights[slot];
      const float* y = expert_out + static_cast<int64_t>(slot_to_row[slot]) * hidden;
      for (int64_t i = 0; i < hidden; ++i) ot[i] += w * y[i];
    }
  }
}

}  // namespace herd::cpu
