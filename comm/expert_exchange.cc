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
  send_ = std::move(other.send_);
  return *this;
}

ExpertExchange::ExpertExchange(Communicator* comm)
    : comm_(comm), id_(g_next_exchange_id.fetch_add(1)) {}

ExpertExchange::~ExpertExchange() = default;

absl::Status PlanSends(const int32_t* dest_rank, int64_t num_slots, int64_t top_k, int world_size,
                       SendPlan& plan) {
  // Rows per destination, then the slots grouped by destination (stable).
  std::vector<int64_t>& offsets = plan.rank_offsets;
  offsets.assign(world_size + 1, 0);
  plan.unsent_slots.clear();
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const int32_t dest = dest_rank[slot];
    if (dest < -1 || dest >= world_size) {
      return absl::InvalidArgumentError(absl::StrCat("dispatch: dest_rank of token ", slot / top_k,
                                                     " slot ", slot % top_k, " is ", dest,
                                                     ", outside [-1, ", world_size, ")"));
    }
    if (dest >= 0) {
      ++offsets[dest + 1];
    } else {
      plan.unsent_slots.push_back(static_cast<int32_t>(slot));
    }
  }
  for (int p = 0; p < world_size; ++p) offsets[p + 1] += offsets[p];
  plan.slots.resize(offsets[world_size]);
  plan.tokens.resize(offsets[world_size]);
  std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const int32_t dest = dest_rank[slot];
    if (dest < 0) continue;
    const int64_t i = cursor[dest]++;
    plan.slots[i] = static_cast<int32_t>(slot);
    plan.tokens[i] = static_cast<int32_t>(slot / top_k);
  }
  return absl::OkStatus();
}

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

  HERD_RETURN_IF_ERROR(PlanSends(args.dest_rank, num_slots, top_k, world_size, handle.send_));
  const SendPlan& send = handle.send_;

  // Ids and rows in one call, gathered by slot and by token; the counts
  // travel with them (or in one all-to-all first, see
  // GroupedRowAllToAllVUnknownCounts) and `place` sizes the receive buffers,
  // reusing the last combined handle's.
  const RowAllToAllVArgs ops[2] = {
      {sizeof(int32_t), args.topk_idx, send.slots, send.rank_offsets, nullptr, {}, {}},
      {hidden_size * static_cast<int64_t>(sizeof(float)),
       args.hidden,
       send.tokens,
       send.rank_offsets,
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
                            handle.recv_rank_offsets_,       out,        handle.send_.slots,
                            handle.send_.rank_offsets};
  HERD_RETURN_IF_ERROR(Exchange(absl::MakeConstSpan(&op, 1), deadline));
  for (const int32_t slot : handle.send_.unsent_slots) {
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
