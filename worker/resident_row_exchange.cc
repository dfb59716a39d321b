#include "worker/resident_row_exchange.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/status.h"

namespace herd {
namespace {

// One all-to-all-v's spans over blocks of `unit` bytes: send_rows[p] units
// for rank p at send_offsets[p], recv_rows[p] from rank p at recv_offsets[p]
// (offsets in units too).
struct Blocks {
  std::vector<int64_t> send_bytes, send_offsets, recv_bytes, recv_offsets;

  Blocks(int world_size, int64_t unit, const std::vector<int64_t>& send_offsets_rows,
         const std::vector<int64_t>& recv_offsets_rows) {
    for (int p = 0; p < world_size; ++p) {
      send_bytes.push_back((send_offsets_rows[p + 1] - send_offsets_rows[p]) * unit);
      send_offsets.push_back(send_offsets_rows[p] * unit);
      recv_bytes.push_back((recv_offsets_rows[p + 1] - recv_offsets_rows[p]) * unit);
      recv_offsets.push_back(recv_offsets_rows[p] * unit);
    }
  }
  comm::AllToAllVArgs Args(const void* send, void* recv) const {
    return {send, send_bytes, send_offsets, recv, recv_bytes, recv_offsets};
  }
};

void* At(comm::CommBuffer& buffer, int64_t byte_offset) {
  return static_cast<uint8_t*>(buffer.data()) + byte_offset;
}

}  // namespace

ResidentRowExchange::ResidentRowExchange(const ExpertParallelism& ep, RowMover* mover)
    : comm_(ep.comm), timeout_(ep.timeout), mover_(mover), world_size_(ep.comm->world_size()) {}

absl::Status ResidentRowExchange::Reserve(std::unique_ptr<comm::CommBuffer>& buffer,
                                          int64_t bytes) {
  if (buffer != nullptr && buffer->size_bytes() >= bytes) return absl::OkStatus();
  buffer.reset();  // free the old one before the larger one is allocated
  HERD_ASSIGN_OR_RETURN(buffer, comm_->Allocate(std::max<int64_t>(bytes + bytes / 2, 64)));
  return absl::OkStatus();
}

absl::Status ResidentRowExchange::Dispatch(const ExpertPlacement& placement, int layer_idx,
                                           const float* hidden, const int32_t* expert_idx,
                                           int64_t num_tokens, int64_t top_k, int64_t hidden_size,
                                           const std::vector<int32_t>& local_slot,
                                           int64_t num_slots, EngineStats& stats) {
  const int rank = comm_->rank();
  const int w = world_size_;
  const int64_t row_bytes = hidden_size * static_cast<int64_t>(sizeof(float));
  hidden_size_ = hidden_size;
  num_slots_sent_ = num_tokens * top_k;
  num_recv_ = 0;  // until this dispatch succeeds
  dest_rank_.resize(num_slots_sent_);
  const int64_t num_sent = PickDestinationRanks(placement, layer_idx, rank, expert_idx,
                                                num_slots_sent_, dest_rank_.data());
  HERD_RETURN_IF_ERROR(comm::PlanSends(dest_rank_.data(), num_slots_sent_, top_k, w, send_));
  const int64_t num_send = send_.rank_offsets[w];
  const int64_t bytes_before = comm_->stats().bytes_sent;
  const absl::Time start = absl::Now();

  // Rows to each rank out, rows from each rank in.
  HERD_RETURN_IF_ERROR(mover_->Finish());
  counts_.assign(2 * w, 0);
  for (int p = 0; p < w; ++p) counts_[p] = send_.rank_offsets[p + 1] - send_.rank_offsets[p];
  HERD_RETURN_IF_ERROR(Reserve(counts_buffer_, 2 * w * static_cast<int64_t>(sizeof(int64_t))));
  HERD_RETURN_IF_ERROR(counts_buffer_->CopyFromHost(0, counts_.data(), w * sizeof(int64_t)));
  std::vector<int64_t> one_each(w + 1);
  for (int p = 0; p <= w; ++p) one_each[p] = p;
  const Blocks count_blocks(w, sizeof(int64_t), one_each, one_each);
  HERD_RETURN_IF_ERROR(comm_->AllToAllV(
      count_blocks.Args(counts_buffer_->data(), At(*counts_buffer_, w * sizeof(int64_t))),
      absl::Now() + timeout_));
  HERD_RETURN_IF_ERROR(
      counts_buffer_->CopyToHost(w * sizeof(int64_t), counts_.data() + w, w * sizeof(int64_t)));
  recv_offsets_.assign(w + 1, 0);
  for (int p = 0; p < w; ++p) {
    if (counts_[w + p] < 0) {
      return absl::InternalError(
          absl::StrCat("rank ", rank, " was told rank ", p, " sends ", counts_[w + p], " rows"));
    }
    recv_offsets_[p + 1] = recv_offsets_[p] + counts_[w + p];
  }
  const int64_t num_recv = recv_offsets_[w];

  // The experts (from the host) and the rows (gathered by token) out.
  send_experts_.resize(num_send);
  for (int64_t i = 0; i < num_send; ++i) send_experts_[i] = expert_idx[send_.slots[i]];
  const auto i32 = [](int64_t n) { return n * static_cast<int64_t>(sizeof(int32_t)); };
  HERD_RETURN_IF_ERROR(Reserve(send_experts_buffer_, i32(num_send)));
  HERD_RETURN_IF_ERROR(Reserve(recv_experts_buffer_, i32(num_recv)));
  HERD_RETURN_IF_ERROR(Reserve(send_rows_, num_send * row_bytes));
  HERD_RETURN_IF_ERROR(Reserve(recv_rows_, num_recv * row_bytes));
  HERD_RETURN_IF_ERROR(Reserve(index_, i32(std::max(num_send, num_recv))));
  HERD_RETURN_IF_ERROR(send_experts_buffer_->CopyFromHost(0, send_experts_.data(), i32(num_send)));
  HERD_RETURN_IF_ERROR(index_->CopyFromHost(0, send_.tokens.data(), i32(num_send)));
  HERD_RETURN_IF_ERROR(mover_->GatherRows(hidden, static_cast<const int32_t*>(index_->data()),
                                          num_send, hidden_size,
                                          static_cast<float*>(send_rows_->data())));
  HERD_RETURN_IF_ERROR(mover_->Finish());
  const Blocks expert_blocks(w, sizeof(int32_t), send_.rank_offsets, recv_offsets_);
  const Blocks row_blocks(w, row_bytes, send_.rank_offsets, recv_offsets_);
  const comm::AllToAllVArgs ops[2] = {
      expert_blocks.Args(send_experts_buffer_->data(), recv_experts_buffer_->data()),
      row_blocks.Args(send_rows_->data(), recv_rows_->data()),
  };
  const absl::Status sent = comm_->GroupedAllToAllV(ops, absl::Now() + timeout_);
  stats.dispatch_seconds += absl::ToDoubleSeconds(absl::Now() - start);
  stats.all_to_all_bytes += comm_->stats().bytes_sent - bytes_before;
  HERD_RETURN_IF_ERROR(sent);
  stats.dispatched_slots += num_sent;
  stats.received_rows += num_recv;
  stats.layer_expert_rows[layer_idx] += num_recv;

  // Grouped by storage slot, on the host.
  recv_experts_.resize(num_recv);
  HERD_RETURN_IF_ERROR(recv_experts_buffer_->CopyToHost(0, recv_experts_.data(), i32(num_recv)));
  HERD_RETURN_IF_ERROR(GroupByStorageSlot(recv_experts_.data(), num_recv, local_slot, num_slots,
                                          layer_idx, rank, recv_slot_, row_to_recv_, offsets_));
  num_recv_ = num_recv;
  return absl::OkStatus();
}

absl::Status ResidentRowExchange::GatherGrouped(float* grouped_in) {
  const int64_t num_recv = num_recv_;
  HERD_RETURN_IF_ERROR(mover_->Finish());
  HERD_RETURN_IF_ERROR(index_->CopyFromHost(0, row_to_recv_.data(),
                                            num_recv * static_cast<int64_t>(sizeof(int32_t))));
  HERD_RETURN_IF_ERROR(mover_->GatherRows(static_cast<const float*>(recv_rows_->data()),
                                          static_cast<const int32_t*>(index_->data()), num_recv,
                                          hidden_size_, grouped_in));
  return mover_->ComputeWaitsForGathers();
}

absl::Status ResidentRowExchange::Combine(const float* grouped_out, float* out,
                                          EngineStats& stats) {
  const int w = world_size_;
  const int64_t num_recv = num_recv_;
  const int64_t row_bytes = hidden_size_ * static_cast<int64_t>(sizeof(float));
  const auto i32 = [](int64_t n) { return n * static_cast<int64_t>(sizeof(int32_t)); };
  const int64_t bytes_before = comm_->stats().bytes_sent;
  const absl::Time start = absl::Now();

  // Back to arrival order, once the experts' GEMMs are done.
  recv_to_row_.resize(num_recv);
  for (int64_t r = 0; r < num_recv; ++r) recv_to_row_[row_to_recv_[r]] = static_cast<int32_t>(r);
  HERD_RETURN_IF_ERROR(mover_->Finish());
  HERD_RETURN_IF_ERROR(index_->CopyFromHost(0, recv_to_row_.data(), i32(num_recv)));
  HERD_RETURN_IF_ERROR(mover_->WaitForCompute());
  HERD_RETURN_IF_ERROR(mover_->GatherRows(grouped_out, static_cast<const int32_t*>(index_->data()),
                                          num_recv, hidden_size_,
                                          static_cast<float*>(recv_rows_->data())));
  HERD_RETURN_IF_ERROR(mover_->Finish());

  // To the senders, which get them in their send order.
  const Blocks row_blocks(w, row_bytes, recv_offsets_, send_.rank_offsets);
  const absl::Status returned = comm_->AllToAllV(
      row_blocks.Args(recv_rows_->data(), send_rows_->data()), absl::Now() + timeout_);
  stats.combine_seconds += absl::ToDoubleSeconds(absl::Now() - start);
  stats.all_to_all_bytes += comm_->stats().bytes_sent - bytes_before;
  HERD_RETURN_IF_ERROR(returned);

  // Into the slots they left from; zeros for the unsent.
  const int64_t num_send = send_.rank_offsets[w];
  slot_to_send_.assign(num_slots_sent_, -1);
  for (int64_t i = 0; i < num_send; ++i) slot_to_send_[send_.slots[i]] = static_cast<int32_t>(i);
  HERD_RETURN_IF_ERROR(Reserve(index_, i32(num_slots_sent_)));
  HERD_RETURN_IF_ERROR(index_->CopyFromHost(0, slot_to_send_.data(), i32(num_slots_sent_)));
  HERD_RETURN_IF_ERROR(mover_->GatherRows(static_cast<const float*>(send_rows_->data()),
                                          static_cast<const int32_t*>(index_->data()),
                                          num_slots_sent_, hidden_size_, out));
  num_recv_ = 0;
  return mover_->ComputeWaitsForGathers();
}

}  // namespace herd
