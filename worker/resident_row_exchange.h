// A layer's expert all-to-all whose rows never leave the communicator's
// memory space (device memory with nccl): ExpertRowExchange's contract
// (worker/expert_parallelism.h), with the hidden rows, the grouped rows and
// the combined output in that space. Only routing and counts visit the host:
// the rank each slot goes to, the send order and the grouping by storage
// slot are computed there, a few bytes per slot, by the functions
// ExpertRowExchange uses (so both send every row to the same rank and group
// it alike), and `mover` gathers the rows where they are.
//
// One layer on rank r of W:
//   Dispatch: each rank's row count in one all-to-all; then the slots'
//     logical experts (built on the host) and their rows (gathered from
//     `hidden` by token) in one grouped all-to-all-v, by destination rank;
//     the received experts come to the host and are grouped by storage slot.
//   GatherGrouped: the received rows, in that grouping, into the caller's
//     buffer, where the grouped expert GEMMs read them.
//   Combine: the experts' outputs go back to arrival order, then to their
//     senders in one all-to-all-v, and each lands in its slot of `out`
//     (zeros for slots not sent).
// The mover (a CUDA stream of its own) finishes before every collective, so
// the compute side (the engine's stream) may run other work meanwhile, such
// as a shared expert: the gathers of Combine wait for the compute work issued
// before it (the experts' GEMMs), and compute work issued after
// GatherGrouped or Combine waits for their gathers. Both may return before
// those gathers are done.
//
// Thread-safety: one thread, one layer at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "comm/communicator.h"
#include "comm/expert_exchange.h"
#include "core/placement.h"
#include "worker/engine_stats.h"
#include "worker/expert_parallelism.h"
#include "worker/row_mover.h"

namespace herd {

class ResidentRowExchange {
 public:
  // ep.comm must be set; `mover` gathers in ep.comm's memory space. Both are
  // borrowed and must outlive the exchange.
  ResidentRowExchange(const ExpertParallelism& ep, RowMover* mover);

  // Collective. hidden F32 [num_tokens, hidden_size] in the communicator's
  // memory space, already computed (the caller waited for it); expert_idx I32
  // [num_tokens, top_k] on the host (-1: skipped, not sent). A received row
  // for expert e belongs to storage slot local_slot[e] of [0, num_slots);
  // InternalError for a row whose expert this rank does not hold, then the
  // communicator's errors and its Allocate's.
  absl::Status Dispatch(const ExpertPlacement& placement, int layer_idx, const float* hidden,
                        const int32_t* expert_idx, int64_t num_tokens, int64_t top_k,
                        int64_t hidden_size, const std::vector<int32_t>& local_slot,
                        int64_t num_slots, EngineStats& stats);
  int64_t num_recv() const { return num_recv_; }
  // I32 [num_slots + 1] on the host: storage slot s owns grouped rows
  // [offsets[s], offsets[s + 1]).
  const int32_t* offsets() const { return offsets_.data(); }
  // grouped_in F32 [num_recv, hidden_size], in the memory space, gets the
  // received rows grouped by storage slot (for compute work issued after).
  absl::Status GatherGrouped(float* grouped_in);

  // Collective. grouped_out F32 [num_recv, hidden_size]: the experts'
  // outputs in the grouping's row order; out F32 [num_tokens * top_k,
  // hidden_size] gets each slot's row, in slot order, zeros for skipped
  // slots (for compute work issued after). Both in the memory space; they
  // may be the same buffer.
  absl::Status Combine(const float* grouped_out, float* out, EngineStats& stats);

 private:
  // `buffer` holds at least `bytes` (grown by half again when it must grow).
  absl::Status Reserve(std::unique_ptr<comm::CommBuffer>& buffer, int64_t bytes);

  comm::Communicator* const comm_;
  const absl::Duration timeout_;  // of each collective
  RowMover* const mover_;
  const int world_size_;
  int64_t hidden_size_ = 0;
  int64_t num_slots_sent_ = 0;  // this layer's num_tokens * top_k
  int64_t num_recv_ = 0;        // rows received by the last Dispatch

  // Host side, for this layer.
  std::vector<int32_t> dest_rank_;  // I32 [num_tokens * top_k]
  comm::SendPlan send_;
  std::vector<int64_t> counts_;        // [2 * W]: rows to each rank, then from each
  std::vector<int64_t> recv_offsets_;  // [W + 1]: first received row from each rank
  std::vector<int32_t> send_experts_;  // I32 [S]: the logical expert of each sent row
  std::vector<int32_t> recv_experts_;  // I32 [R]
  std::vector<int32_t> recv_slot_, row_to_recv_, offsets_;  // GroupByStorageSlot's
  std::vector<int32_t> recv_to_row_;                        // I32 [R]: inverse of row_to_recv_
  std::vector<int32_t> slot_to_send_;  // I32 [num_tokens * top_k]: send row, -1 unsent

  // In the communicator's memory space; they only grow.
  std::unique_ptr<comm::CommBuffer> counts_buffer_;                              // I64 [2 * W]
  std::unique_ptr<comm::CommBuffer> send_experts_buffer_, recv_experts_buffer_;  // I32
  std::unique_ptr<comm::CommBuffer> send_rows_;  // F32 [S, hidden]; Combine's results too
  std::unique_ptr<comm::CommBuffer> recv_rows_;  // F32 [R, hidden]; arrival order
  // I32: the index of the gather being issued (the mover finishes before it
  // is rewritten).
  std::unique_ptr<comm::CommBuffer> index_;
};

}  // namespace herd
