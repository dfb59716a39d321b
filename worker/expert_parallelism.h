// Expert parallelism, what every engine shares: the group and placement an
// engine runs in, the checks that a rank holds what its placement gives it,
// and the choice of the rank each routed slot travels to.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "core/placement.h"
#include "model/model.h"

namespace herd {

// Expert parallelism: the engine is one rank of `comm`'s group. It runs
// attention on its own sequences (data-parallel) and only the experts
// `placement` puts on its rank; every token's hidden state travels to the
// ranks holding its chosen experts (dispatch) and back (combine).
struct ExpertParallelism {
  comm::Communicator* comm = nullptr;  // borrowed; nullptr = single rank
  // The initial placement, copied by the engine's Create; as many ranks as
  // comm. The CPU engine's SwapPlacement replaces it while serving.
  const ExpertPlacement* placement = nullptr;
  // Deadline of each collective, from the moment it starts: a dead or stopped
  // peer turns into DeadlineExceeded naming it, never a hang.
  absl::Duration timeout = absl::Seconds(120);
};

// InvalidArgument when `model` lacks an expert this rank needs: every
// existing expert without expert parallelism (ep.comm null), else every one
// ep.placement gives this rank (the placement must be there).
absl::Status CheckRankHoldsItsExperts(const Model& model, const ExpertParallelism& ep);

// InvalidArgument unless `placement` has the model's layers and experts and
// `num_ranks` ranks.
absl::Status CheckPlacementShape(const ExpertPlacement& placement, const ModelSpec& spec,
                                 int num_ranks);

// dest_rank I32 [num_slots]: the rank each slot's row goes to, the replica
// `placement` picks for (layer, expert, rank, slot), a pure function of
// them, so the same batch always takes the same route; -1 for skipped slots
// (expert -1). Returns how many slots are sent.
int64_t PickDestinationRanks(const ExpertPlacement& placement, int layer_idx, int rank,
                             const int32_t* expert_idx, int64_t num_slots, int32_t* dest_rank);

// Every rank of `comm` runs the same number of engine steps (each is a
// collective): as many as the rank needing the most, and at least one.
absl::StatusOr<int64_t> AgreeOnStepCount(comm::Communicator& comm, int64_t num_steps,
                                         absl::Time deadline);

}  // namespace herd
