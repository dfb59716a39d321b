#include "comm/expert_exchange.h"

#include <atomic>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd::comm {
namespace {

std::atomic<uint64_t> g_next_exchange_id{1};

}  // namespace

DispatchHandle::DispatchHandle(DispatchHandle&& other) noexcept { *this = std::move(other); }

DispatchHandle& DispatchHandle::operator=(DispatchHandle&& other) noexcept {
  // NOTE: a moved-from handle must not pass Combine's check a second time.
  exchange_id_ = std::exchange(other.exchange_id_, 0);
  num_tokens_ = other.num_tokens_;
  top_k_ = other.top_k_;
  hidden_size_ = other.hidden_size_;
  recv_x_ = std::move(other.recv_x_);
  recv_expert_idx_ = std::move(other.recv_expert_idx_);
  num_recv_rows_per_rank_ = std::move(other.num_recv_rows_per_rank_);
  recv_rank_offsets_ = std::move(other.recv_rank_offsets_);
  send_slots_ = std::move(other.send_slots_);
  send_rank_offsets_ = std::move(other.send_rank_offsets_);
  unsent_slots_ = std::move(other.unsent_slots_);
  return *this;
}

ExpertExchange::ExpertExchange(Communicator* comm)
    : comm_(comm), id_(g_next_exchange_id.fetch_add(1)) {}

ExpertExchange::~ExpertExchange() = default;

int64_t ExpertExchange::CombineOutputBytes(int64_t num_tokens, int64_t top_k, int64_t hidden_size) {
  return num_tokens * top_k * hidden_size * static_cast<int64_t>(sizeof(float));
}

absl::StatusOr<DispatchHandle> ExpertExchange::Dispatch(const DispatchArgs& args,
                                                        absl::Time deadline) {
  const int world_size = comm_->world_size();
  if (args.num_tokens < 0 || args.top_k < 0 || args.hidden_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dispatch: num_tokens ", args.num_tokens, ", top_k ", args.top_k, ", hidden_size ",
        args.hidden_size, " (need num_tokens >= 0, top_k >= 0, hidden_size >= 1)"));
  }
  const int64_t hidden_size = args.hidden_size;
  const int64_t top_k = args.top_k;
  if (args.top_k > 0 && args.num_tokens > std::numeric_limits<int32_t>::max() / args.top_k) {
    return absl::InvalidArgumentError("dispatch: more than 2^31 slots");
  }
  const int64_t num_slots = args.num_tokens * top_k;
  if (num_slots > 0 &&
      (args.hidden == nullptr || args.topk_idx == nullptr || args.dest_rank == nullptr)) {
    return absl::InvalidArgumentError("dispatch: hidden, topk_idx and dest_rank must be set");
  }

  DispatchHandle handle;
  handle.exchange_id_ = id_;
  handle.num_tokens_ = args.num_tokens;
  handle.top_k_ = top_k;
  handle.hidden_size_ = hidden_size;

  // Rows per destination, then the slots grouped by destination (stable).
  std::vector<int64_t> num_send_rows(world_size, 0);
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const int32_t dest = args.dest_rank[slot];
    if (dest < -1 || dest >= world_size) {
      return absl::InvalidArgumentError(absl::StrCat("dispatch: dest_rank of token ", slot / top_k,
                                                     " slot ", slot % top_k, " is ", dest,
                                                     ", outside [-1, ", world_size, ")"));
    }
    if (dest >= 0) {
      ++num_send_rows[dest];
    } else {
      handle.unsent_slots_.push_back(static_cast<int32_t>(slot));
    }
  }
  std::vector<int64_t>& send_offsets = handle.send_rank_offsets_;
  send_offsets.assign(world_size + 1, 0);
  for (int p = 0; p < world_size; ++p) send_offsets[p + 1] = send_offsets[p] + num_send_rows[p];
  handle.send_slots_.resize(send_offsets[world_size]);
  send_tokens_.resize(send_offsets[world_size]);
  {
    std::vector<int64_t> cursor(send_offsets.begin(), send_offsets.end() - 1);
    for (int64_t slot = 0; slot < num_slots; ++slot) {
      const int32_t dest = args.dest_rank[slot];
      if (dest < 0) continue;
      const int64_t i = cursor[dest]++;
      handle.send_slots_[i] = static_cast<int32_t>(slot);
      send_tokens_[i] = static_cast<int32_t>(slot / top_k);
    }
  }

  // Ids and rows in one call, gathered by slot and by token; the counts
  // travel with them (or in one all-to-all first, see
  // GroupedRowAllToAllVUnknownCounts) and `place` sizes the receive buffers,
  // reusing the last combined handle's.
  const RowAllToAllVArgs ops[2] = {
      {sizeof(int32_t), args.topk_idx, handle.send_slots_, send_offsets, nullptr, {}, {}},
      {hidden_size * static_cast<int64_t>(sizeof(float)),
       args.hidden,
       send_tokens_,
       send_offsets,
       nullptr,
       {},
       {}},
  };
  handle.recv_x_ = std::move(spare_recv_x_);
  handle.recv_expert_idx_ = std::move(spare_recv_expert_idx_);
  auto place = [&](absl::Span<const int64_t> recv_offsets, absl::Span<void*> recv) {
    handle.recv_rank_offsets_.assign(recv_offsets.begin(), recv_offsets.end());
    handle.num_recv_rows_per_rank_.resize(world_size);
    for (int p = 0; p < world_size; ++p) {
      handle.num_recv_rows_per_rank_[p] = recv_offsets[p + 1] - recv_offsets[p];
    }
    const int64_t num_recv = recv_offsets[world_size];
    handle.recv_x_.resize(num_recv * hidden_size);
    handle.recv_expert_idx_.resize(num_recv);
    recv[0] = handle.recv_expert_idx_.data();
    recv[1] = handle.recv_x_.data();
  };
  if (comm_->memory_space() == MemorySpace::kHost) {
    HERD_RETURN_IF_ERROR(comm_->GroupedRowAllToAllVUnknownCounts(ops, place, deadline));
  } else {
    HERD_RETURN_IF_ERROR(ValidateUnknownCountsArgs(ops, world_size));
    HERD_RETURN_IF_ERROR(RowAllToAllVCountsFirst(
        world_size, ops, place, [&](absl::Span<const RowAllToAllVArgs> round) {
          return device_packer_.Run(*comm_, round, deadline);
        }));
  }
  return handle;
}

absl::Status ExpertExchange::Combine(DispatchHandle handle, const float* expert_out, float* out,
                                     absl::Time deadline) {
  if (handle.exchange_id_ != id_) {
    return absl::InvalidArgumentError(
        "combine: the handle does not come from this exchange's Dispatch, or was combined");
  }
  const int64_t hidden_size = handle.hidden_size_;
  const int64_t num_slots = handle.num_tokens_ * handle.top_k_;
  if ((handle.num_recv_rows() > 0 && expert_out == nullptr) || (num_slots > 0 && out == nullptr)) {
    return absl::InvalidArgumentError("combine: expert_out and out must be set");
  }
  const size_t row_bytes = hidden_size * sizeof(float);

  // expert_out is grouped by source rank already; each row goes back into
  // its slot of `out`.
  const RowAllToAllVArgs op{static_cast<int64_t>(row_bytes), expert_out, {},
                            handle.recv_rank_offsets_,       out,        handle.send_slots_,
                            handle.send_rank_offsets_};
  HERD_RETURN_IF_ERROR(Exchange(absl::MakeConstSpan(&op, 1), deadline));
  for (const int32_t slot : handle.unsent_slots_) {
    std::memset(out + slot * hidden_size, 0, row_bytes);
  }
  if (handle.recv_x_.capacity() > spare_recv_x_.capacity()) {
    spare_recv_x_ = std::move(handle.recv_x_);
    spare_recv_expert_idx_ = std::move(handle.recv_expert_idx_);
  }
  return absl::OkStatus();
}

absl::Status ExpertExchange::Exchange(absl::Span<const RowAllToAllVArgs> ops, absl::Time deadline) {
  if (comm_->memory_space() == MemorySpace::kHost) return comm_->GroupedRowAllToAllV(ops, deadline);
  return device_packer_.Run(*comm_, ops, deadline);
}

}  // namespace herd::comm
