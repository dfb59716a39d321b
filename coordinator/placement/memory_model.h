// Weight memory per rank: what a placement costs in bytes.
//
// Under expert parallelism with data-parallel attention every rank holds all
// dense weights (attention, embeddings, norms, routers, shared experts) and
// one copy of a routed expert per slot.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model.h"

namespace herd {

struct MemoryModel {
  // Weights every rank holds.
  int64_t dense_bytes = 0;
  // One routed expert of one layer (gate, up and down projections).
  int64_t expert_bytes = 0;
};

// From a loaded model's tensors, in their stored dtypes. InvalidArgument for
// a model without routed experts.
absl::StatusOr<MemoryModel> MemoryModelFromModel(const Model& model);

// dense_bytes + num_layers * slots_per_rank * expert_bytes.
int64_t RankWeightBytes(int num_layers, int slots_per_rank, const MemoryModel& memory);

// The most slots per rank that fit in `memory_per_rank_bytes` (0 when not even
// the dense weights fit).
int MaxSlotsPerRank(int num_layers, const MemoryModel& memory, int64_t memory_per_rank_bytes);

// InvalidArgument naming the bytes needed and available when the weights of
// `slots_per_rank` slots per rank do not fit.
absl::Status CheckMemoryFits(int num_layers, int slots_per_rank, const MemoryModel& memory,
                             int64_t memory_per_rank_bytes);

}  // namespace herd
