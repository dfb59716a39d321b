// Expert parallelism, what every engine shares: the group and placement an
// engine runs in, the checks that a rank holds what its placement gives it,
// the choice of the rank each routed slot travels to, and the all-to-all of
// a layer's rows around the experts.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "comm/expert_exchange.h"
#include "core/placement.h"
#include "model/model.h"
#include "worker/engine_stats.h"

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

// Groups a layer's received rows by the storage slot of their expert, as the
// grouped expert GEMMs take them: row r of recv_expert_idx I32 [num_recv]
// (logical experts) belongs to slot local_slot[e] of [0, num_slots);
// row_to_recv I32 [num_recv] lists the received rows slot by slot (stable)
// and offsets I32 [num_slots + 1] bounds each slot's rows. recv_slot is
// scratch. InternalError naming layer and rank for a row whose expert this
// rank does not hold.
absl::Status GroupByStorageSlot(const int32_t* recv_expert_idx, int64_t num_recv,
                                const std::vector<int32_t>& local_slot, int64_t num_slots,
                                int layer_idx, int rank, std::vector<int32_t>& recv_slot,
                                std::vector<int32_t>& row_to_recv, std::vector<int32_t>& offsets);

// One rank's side of a layer's expert all-to-all, as both engines run it:
// Dispatch sends each slot's row to the rank the placement picks and groups
// what arrives by the slot of its expert in this rank's expert storage; the
// engine runs its experts from grouped_in() into grouped_out() (the same row
// order); Combine sends the results back, each into the slot it left from.
// Time, slots, rows and bytes are counted into the EngineStats given.
// Thread-safety: one thread, one layer at a time.
class ExpertRowExchange {
 public:
  // ep.comm must be set; the placement is passed to each Dispatch.
  explicit ExpertRowExchange(const ExpertParallelism& ep);

  // Collective. hidden F32 [num_tokens, hidden_size], expert_idx I32
  // [num_tokens, top_k] (-1: skipped, not sent). A received row for expert e
  // goes to storage slot local_slot[e] of [0, num_slots); InternalError for a
  // row whose expert this rank does not hold (local_slot -1 or too short).
  absl::Status Dispatch(const ExpertPlacement& placement, int layer_idx, const float* hidden,
                        const int32_t* expert_idx, int64_t num_tokens, int64_t top_k,
                        int64_t hidden_size, const std::vector<int32_t>& local_slot,
                        int64_t num_slots, EngineStats& stats);
  int64_t num_recv() const { return handle_.num_recv_rows(); }
  // F32 [num_recv, hidden_size], grouped by slot; offsets I32 [num_slots + 1].
  const float* grouped_in() const { return grouped_in_.data(); }
  const int32_t* offsets() const { return offsets_.data(); }
  // F32 [num_recv, hidden_size]: the caller writes the experts' outputs here.
  float* grouped_out() { return grouped_out_.data(); }

  // Collective. out F32 [num_tokens * top_k, hidden_size] gets each slot's
  // row (zeros for skipped slots), in slot order.
  absl::Status Combine(float* out, EngineStats& stats);

 private:
  comm::Communicator* const comm_;
  const absl::Duration timeout_;  // of each collective
  comm::ExpertExchange exchange_;
  comm::DispatchHandle handle_;
  std::vector<int32_t> dest_rank_;    // I32 [slots]: rank each slot goes to
  std::vector<int32_t> recv_slot_;    // I32 [R]: storage slot of each received row
  std::vector<int32_t> row_to_recv_;  // I32 [R]: grouped row -> received row
  std::vector<int32_t> offsets_;      // I32 [num_slots + 1]
  std::vector<float> grouped_in_, grouped_out_, recv_out_;  // F32 [R, hidden]
};

// Every rank of `comm` runs the same number of engine steps (each is a
// collective): as many as the rank needing the most, and at least one. Any
// communicator (the count goes through a buffer of its memory space).
absl::StatusOr<int64_t> AgreeOnStepCount(comm::Communicator& comm, int64_t num_steps,
                                         absl::Time deadline);

}  // namespace herd
