#include "worker/expert_parallelism.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status.h"
#include "kernels/moe.h"

namespace herd {

absl::Status CheckRankHoldsItsExperts(const Model& model, const ExpertParallelism& ep) {
  if (ep.comm != nullptr && ep.placement == nullptr) {
    return absl::InvalidArgumentError("expert parallelism needs a placement");
  }
  if (ep.comm != nullptr) {
    HERD_RETURN_IF_ERROR(CheckPlacementShape(*ep.placement, model.spec, ep.comm->world_size()));
  }
  for (size_t l = 0; l < model.layers.size(); ++l) {
    std::vector<bool> needed(model.layers[l].experts.size(), ep.comm == nullptr);
    if (ep.comm != nullptr) {
      for (int32_t e : ep.placement->RankExperts(static_cast<int>(l), ep.comm->rank())) {
        needed[e] = true;
      }
    }
    for (size_t e = 0; e < needed.size(); ++e) {
      if (needed[e] && model.layers[l].ExpertExists(static_cast<int>(e)) &&
          !model.layers[l].experts[e].resident()) {
        return absl::InvalidArgumentError(absl::StrCat(
            ep.comm == nullptr ? "the single-rank engine needs every expert; "
                               : "this rank's placement needs an expert that was not loaded: ",
            "layer ", l, " expert ", e));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPlacementShape(const ExpertPlacement& p, const ModelSpec& spec, int num_ranks) {
  if (p.num_layers() != spec.num_layers || p.num_experts() != spec.num_experts ||
      p.num_ranks() != num_ranks) {
    return absl::InvalidArgumentError(
        absl::StrCat("the placement has ", p.num_layers(), " layers x ", p.num_experts(),
                     " experts on ", p.num_ranks(), " ranks, but the model has ", spec.num_layers,
                     " x ", spec.num_experts, " and the group ", num_ranks, " ranks"));
  }
  return absl::OkStatus();
}

int64_t PickDestinationRanks(const ExpertPlacement& placement, int layer_idx, int rank,
                             const int32_t* expert_idx, int64_t num_slots, int32_t* dest_rank) {
  int64_t num_sent = 0;
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const uint64_t token_key = (static_cast<uint64_t>(rank) << 32) | static_cast<uint64_t>(slot);
    dest_rank[slot] = expert_idx[slot] < 0  // skipped: not sent, combined as zeros
                          ? -1
                          : placement.PickReplicaRank(layer_idx, expert_idx[slot], token_key);
    num_sent += dest_rank[slot] >= 0;
  }
  return num_sent;
}

absl::Status GroupByStorageSlot(const int32_t* recv_expert_idx, int64_t num_recv,
                                const std::vector<int32_t>& local_slot, int64_t num_slots,
                                int layer_idx, int rank, std::vector<int32_t>& recv_slot,
                                std::vector<int32_t>& row_to_recv, std::vector<int32_t>& offsets) {
  recv_slot.resize(num_recv);
  for (int64_t r = 0; r < num_recv; ++r) {
    const int32_t e = recv_expert_idx[r];
    const int32_t slot = e >= 0 && e < static_cast<int32_t>(local_slot.size()) ? local_slot[e] : -1;
    if (slot < 0 || slot >= num_slots) {
      return absl::InternalError(absl::StrCat("rank ", rank, " received a row for expert ", e,
                                              " of layer ", layer_idx, ", which it does not hold"));
    }
    recv_slot[r] = slot;
  }
  row_to_recv.resize(num_recv);
  offsets.assign(num_slots + 1, 0);
  cpu::PermuteByExpert(recv_slot.data(), num_recv, num_slots, row_to_recv.data(), offsets.data());
  return absl::OkStatus();
}

ExpertRowExchange::ExpertRowExchange(const ExpertParallelism& ep)
    : comm_(ep.comm), timeout_(ep.timeout), exchange_(ep.comm) {}

absl::Status ExpertRowExchange::Dispatch(const ExpertPlacement& placement, int layer_idx,
                                         const float* hidden, const int32_t* expert_idx,
                                         int64_t num_tokens, int64_t top_k, int64_t hidden_size,
                                         const std::vector<int32_t>& local_slot, int64_t num_slots,
                                         EngineStats& stats) {
  const int rank = comm_->rank();
  const int64_t num_slots_sent = num_tokens * top_k;
  dest_rank_.resize(num_slots_sent);
  const int64_t num_sent = PickDestinationRanks(placement, layer_idx, rank, expert_idx,
                                                num_slots_sent, dest_rank_.data());
  comm::DispatchArgs args;
  args.hidden = hidden;
  args.topk_idx = expert_idx;
  args.dest_rank = dest_rank_.data();
  args.num_tokens = num_tokens;
  args.top_k = top_k;
  args.hidden_size = hidden_size;
  const int64_t bytes_before = comm_->stats().bytes_sent;
  const absl::Time start = absl::Now();
  absl::StatusOr<comm::DispatchHandle> handle = exchange_.Dispatch(args, start + timeout_);
  stats.dispatch_seconds += absl::ToDoubleSeconds(absl::Now() - start);
  stats.all_to_all_bytes += comm_->stats().bytes_sent - bytes_before;
  HERD_RETURN_IF_ERROR(handle.status());
  handle_ = std::move(*handle);
  const int64_t num_recv = handle_.num_recv_rows();
  stats.dispatched_slots += num_sent;
  stats.received_rows += num_recv;
  stats.layer_expert_rows[layer_idx] += num_recv;

  HERD_RETURN_IF_ERROR(GroupByStorageSlot(handle_.recv_expert_idx(), num_recv, local_slot,
                                          num_slots, layer_idx, rank, recv_slot_, row_to_recv_,
                                          offsets_));
  grouped_in_.resize(num_recv * hidden_size);
  grouped_out_.resize(num_recv * hidden_size);
  for (int64_t r = 0; r < num_recv; ++r) {
    std::memcpy(grouped_in_.data() + r * hidden_size,
                handle_.recv_x() + row_to_recv_[r] * hidden_size, hidden_size * sizeof(float));
  }
  return absl::OkStatus();
}

absl::Status ExpertRowExchange::Combine(float* out, EngineStats& stats) {
  const int64_t hidden_size = handle_.hidden_size();
  const int64_t num_recv = handle_.num_recv_rows();
  recv_out_.resize(num_recv * hidden_size);
  for (int64_t r = 0; r < num_recv; ++r) {
    std::memcpy(recv_out_.data() + row_to_recv_[r] * hidden_size,
                grouped_out_.data() + r * hidden_size, hidden_size * sizeof(float));
  }
  const int64_t bytes_before = comm_->stats().bytes_sent;
  const absl::Time start = absl::Now();
  const absl::Status status =
      exchange_.Combine(std::move(handle_), recv_out_.data(), out, start + timeout_);
  stats.combine_seconds += absl::ToDoubleSeconds(absl::Now() - start);
  stats.all_to_all_bytes += comm_->stats().bytes_sent - bytes_before;
  return status;
}

absl::StatusOr<int64_t> AgreeOnStepCount(comm::Communicator& comm, int64_t num_steps,
                                         absl::Time deadline) {
  // Through a buffer of the communicator's memory space (device memory for
  // nccl): this rank's count, then everyone's.
  const int world_size = comm.world_size();
  constexpr int64_t kBytes = sizeof(int64_t);
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<comm::CommBuffer> buffer,
                        comm.Allocate((world_size + 1) * kBytes));
  HERD_RETURN_IF_ERROR(buffer->CopyFromHost(0, &num_steps, kBytes));
  HERD_RETURN_IF_ERROR(comm.AllGather(buffer->data(), kBytes,
                                      static_cast<uint8_t*>(buffer->data()) + kBytes, deadline));
  std::vector<int64_t> all(world_size);
  HERD_RETURN_IF_ERROR(buffer->CopyToHost(kBytes, all.data(), world_size * kBytes));
  return std::max<int64_t>(1, *std::max_element(all.begin(), all.end()));
}

}  // namespace herd
