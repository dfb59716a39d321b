// The expert all-to-all of one MoE layer, DeepEP-style: Dispatch sends each
// (token, k) slot's hidden row to the rank the caller chose for it and returns
// a handle; Combine consumes the handle and sends the experts' outputs back to
// the slots they came from. Placement stays with the caller: it passes
// dest_rank, computed from its placement (replica choice included).
//
// Vocabulary (as kernels/moe.h): slot = token * top_k + k, num_slots =
// num_tokens * top_k; a "row" is one slot's hidden vector on the wire.
//
// Dispatch on rank r, world_size W:
//   the rows and their logical expert ids go out in one grouped row
//   all-to-all-v that gathers each row straight from `hidden`
//   (RowAllToAllVArgs; no packing here), and every rank learns
//   num_recv_rows[p] = rank p's slots with dest_rank == r from it
//   (Communicator::GroupedRowAllToAllVUnknownCounts: mpi reads the counts off
//   the message sizes, one round trip; the other backends exchange the counts
//   in one all-to-all first). Rows for r itself are copied in memory and
//   never go through the network.
// Combine is one row all-to-all-v that scatters each returning row straight
// into its slot of `out`.
//
//   handle.recv_x()            F32 [num_recv_rows, hidden_size]
//   handle.recv_expert_idx()   I32 [num_recv_rows]
//     | rows from rank 0 | rows from rank 1 | ... | rows from rank W-1 |
//       ^ recv_rank_offsets()[p], num_recv_rows_per_rank()[p] rows
//     inside one source's block, rows keep the source's slot order (ascending).
//
// Combine: expert_out F32 [num_recv_rows, hidden_size] in recv_x's row order
// goes back to its sources; out F32 [num_slots, hidden_size] gets, for each
// slot, the row computed for it (row index = slot); slots with dest_rank -1
// are zero-filled, so a weighted sum over slots stays finite.
//
// Every rank calls Dispatch and Combine, in the same order, even with zero
// tokens (the counts still go out). The Communicator's memory space
// does not matter to callers: with a device communicator (nccl) the exchange
// packs rows and stages them through device buffers (comm/row_packer.h).
//
// Thread-safety: one thread drives an ExpertExchange; several handles may be
// outstanding and are combined in the same order on every rank.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "comm/row_packer.h"

namespace herd::comm {

// Where a rank's dispatched slots go: its slots grouped by destination rank
// (ascending slot inside a group), what the exchange sends and Combine
// returns rows into.
struct SendPlan {
  std::vector<int32_t> slots;         // I32 [num_send_rows]
  std::vector<int32_t> tokens;        // I32 [num_send_rows]: slots[i] / top_k
  std::vector<int64_t> rank_offsets;  // [world_size + 1]: first row for each rank
  std::vector<int32_t> unsent_slots;  // slots with dest_rank -1, ascending
};

// Fills `plan` from dest_rank I32 [num_slots] (num_slots a multiple of
// top_k, top_k >= 1 when num_slots > 0). InvalidArgument naming the token
// and slot of a dest rank outside [-1, world_size).
absl::Status PlanSends(const int32_t* dest_rank, int64_t num_slots, int64_t top_k, int world_size,
                       SendPlan& plan);

// What one rank dispatches. Pointers are host memory, borrowed for the call.
struct DispatchArgs {
  const float* hidden = nullptr;       // F32 [num_tokens, hidden_size]
  const int32_t* topk_idx = nullptr;   // I32 [num_tokens, top_k] logical expert ids
  const int32_t* dest_rank = nullptr;  // I32 [num_tokens, top_k]; -1 = slot not sent
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  int64_t hidden_size = 0;  // must be the same on every rank
};

// Returned by Dispatch, consumed by Combine. Owns the received rows. Movable.
class DispatchHandle {
 public:
  DispatchHandle() = default;
  // Moving leaves `other` empty (Combine rejects it).
  DispatchHandle(DispatchHandle&& other) noexcept;
  DispatchHandle& operator=(DispatchHandle&& other) noexcept;

  int64_t num_recv_rows() const { return static_cast<int64_t>(recv_expert_idx_.size()); }
  int64_t hidden_size() const { return hidden_size_; }
  // F32 [num_recv_rows, hidden_size], grouped by source rank (layout above).
  const float* recv_x() const { return recv_x_.data(); }
  // I32 [num_recv_rows]: the logical expert each row was sent to.
  const int32_t* recv_expert_idx() const { return recv_expert_idx_.data(); }
  // [world_size]: rows received from each rank.
  absl::Span<const int64_t> num_recv_rows_per_rank() const { return num_recv_rows_per_rank_; }
  // [world_size + 1]: first row from each rank; the last entry is num_recv_rows.
  absl::Span<const int64_t> recv_rank_offsets() const { return recv_rank_offsets_; }
  // Slots this rank dispatched, and the tokens' layout, for Combine.
  int64_t num_tokens() const { return num_tokens_; }
  int64_t top_k() const { return top_k_; }

 private:
  friend class ExpertExchange;

  uint64_t exchange_id_ = 0;  // 0: empty or already combined
  int64_t num_tokens_ = 0;
  int64_t top_k_ = 0;
  int64_t hidden_size_ = 0;
  std::vector<float> recv_x_;
  std::vector<int32_t> recv_expert_idx_;
  std::vector<int64_t> num_recv_rows_per_rank_;
  std::vector<int64_t> recv_rank_offsets_;
  // This rank's side, for Combine.
  SendPlan send_;
};

class ExpertExchange {
 public:
  // `comm` is borrowed and must outlive the exchange.
  explicit ExpertExchange(Communicator* comm);
  ~ExpertExchange();
  ExpertExchange(const ExpertExchange&) = delete;
  ExpertExchange& operator=(const ExpertExchange&) = delete;

  // Collective. Blocks until this rank has received its rows, or the deadline.
  // Errors: InvalidArgument (null pointer with data, negative sizes, a dest
  // rank outside [-1, world_size), more than 2^31 slots; nothing was sent, so
  // the peers will time out), then the Communicator's errors
  // (DeadlineExceeded naming the silent ranks, Aborted, ...).
  absl::StatusOr<DispatchHandle> Dispatch(const DispatchArgs& args, absl::Time deadline);

  // Collective. `expert_out` F32 [handle.num_recv_rows(), hidden_size] in the
  // handle's row order; `out` F32 [num_tokens * top_k, hidden_size] is fully
  // written (layout in the file comment). Consumes the handle. Errors:
  // InvalidArgument (a handle from another exchange or already combined, null
  // buffers with rows), then the Communicator's errors.
  absl::Status Combine(DispatchHandle handle, const float* expert_out, float* out,
                       absl::Time deadline);

  // Bytes of `out` that Combine writes: num_tokens * top_k * hidden_size * 4.
  static int64_t CombineOutputBytes(int64_t num_tokens, int64_t top_k, int64_t hidden_size);

 private:
  // Runs `ops` (host buffers) on the communicator: directly on a host one,
  // packed and staged through device buffers on a device one.
  absl::Status Exchange(absl::Span<const RowAllToAllVArgs> ops, absl::Time deadline);

  Communicator* const comm_;
  const uint64_t id_;
  // The last combined handle's receive buffers, reused by the next Dispatch:
  // a fresh multi-megabyte buffer per layer costs page faults on every call.
  std::vector<float> spare_recv_x_;
  std::vector<int32_t> spare_recv_expert_idx_;
  // Device communicators (nccl) only.
  RowPacker device_packer_;
};

}  // namespace herd::comm
