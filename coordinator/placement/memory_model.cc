#include "coordinator/placement/memory_model.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace herd {
namespace {

std::string Bytes(int64_t bytes) {
  const double gib = static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0);
  if (gib >= 1.0) return absl::StrFormat("%d bytes (%.2f GiB)", bytes, gib);
  return absl::StrFormat("%d bytes (%.2f MiB)", bytes, static_cast<double>(bytes) / (1 << 20));
}

}  // namespace

absl::StatusOr<MemoryModel> MemoryModelFromModel(const Model& model) {
  const ModelSpec& spec = model.spec;
  if (spec.num_experts <= 0 || spec.num_layers <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(model.source_path, " has no routed experts to place"));
  }
  int64_t expert_total = 0, dense = 0;
  for (const TensorRecord& t : model.tensors) {
    (t.module == ModuleKind::kExperts ? expert_total : dense) += t.view.num_bytes();
  }
  if (expert_total <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(model.source_path, " has no routed expert tensors"));
  }
  MemoryModel m;
  m.dense_bytes = dense;
  m.expert_bytes = expert_total / (spec.num_layers * spec.num_experts);
  return m;
}

int64_t RankWeightBytes(int num_layers, int slots_per_rank, const MemoryModel& memory) {
  return memory.dense_bytes +
         static_cast<int64_t>(num_layers) * slots_per_rank * memory.expert_bytes;
}

int MaxSlotsPerRank(int num_layers, const MemoryModel& memory, int64_t memory_per_rank_bytes) {
  const int64_t room = memory_per_rank_bytes - memory.dense_bytes;
  if (room < 0) return 0;
  const int64_t per_slot = static_cast<int64_t>(num_layers) * memory.expert_bytes;
  if (per_slot <= 0) return std::numeric_limits<int>::max();
  return static_cast<int>(std::min<int64_t>(room / per_slot, std::numeric_limits<int>::max()));
}

absl::Status CheckMemoryFits(int num_layers, int slots_per_rank, const MemoryModel& memory,
                             int64_t memory_per_rank_bytes) {
  const int64_t need = RankWeightBytes(num_layers, slots_per_rank, memory);
  if (need <= memory_per_rank_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "memory per rank is too small for this placement: ", slots_per_rank, " expert slots x ",
      num_layers, " layers x ", memory.expert_bytes, " bytes + ", memory.dense_bytes,
      " dense bytes = ", Bytes(need), " per rank, but only ", Bytes(memory_per_rank_bytes),
      " is available (at most ", MaxSlotsPerRank(num_layers, memory, memory_per_rank_bytes),
      " slots per rank fit)"));
}

}  // namespace herd
