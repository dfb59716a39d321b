#include "comm/expert_exchange.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd::comm {
namespace {

std::atomic<uint64_t> g_next_exchange_id{1};

// Byte sizes and offsets of one all-to-all-v, built per peer.
struct ByteLayout {
  explicit ByteLayout(int world_size)
      : send_bytes(world_size, 0),
        send_offsets(world_size, 0),
        recv_bytes(world_size, 0),
        recv_offsets(world_size, 0) {}
  AllToAllVArgs Args(const void* send, void* recv) const {
    return AllToAllVArgs{send, send_bytes, send_offsets, recv, recv_bytes, recv_offsets};
  }
  std::vector<int64_t> send_bytes;
  std::vector<int64_t> send_offsets;
  std::vector<int64_t> recv_bytes;
  std::vector<int64_t> recv_offsets;
};

// First row of peer p's block in a packed buffer that leaves out this rank's
// own block: | p=0 | ... | p=me-1 | p=me+1 | ... |.
int64_t PackedRow(const std::vector<int64_t>& offsets, int p, int me) {
  return p > me ? offsets[p] - (offsets[me + 1] - offsets[me]) : offsets[p];
}

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
  const int me = comm_->rank();
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
  {
    std::vector<int64_t> cursor(send_offsets.begin(), send_offsets.end() - 1);
    for (int64_t slot = 0; slot < num_slots; ++slot) {
      const int32_t dest = args.dest_rank[slot];
      if (dest >= 0) handle.send_slots_[cursor[dest]++] = static_cast<int32_t>(slot);
    }
  }

  // 1. Counts: one int64 per rank pair.
  std::vector<int64_t>& num_recv_rows = handle.num_recv_rows_per_rank_;
  num_recv_rows.assign(world_size, 0);
  {
    ByteLayout counts(world_size);
    for (int p = 0; p < world_size; ++p) {
      counts.send_bytes[p] = counts.recv_bytes[p] = sizeof(int64_t);
      counts.send_offsets[p] = counts.recv_offsets[p] = p * static_cast<int64_t>(sizeof(int64_t));
    }
    const AllToAllVArgs op = counts.Args(num_send_rows.data(), num_recv_rows.data());
    HERD_RETURN_IF_ERROR(Exchange(absl::MakeConstSpan(&op, 1), deadline));
  }
  std::vector<int64_t>& recv_offsets = handle.recv_rank_offsets_;
  recv_offsets.assign(world_size + 1, 0);
  for (int p = 0; p < world_size; ++p) {
    if (num_recv_rows[p] < 0) {
      return absl::InternalError(
          absl::StrCat("dispatch: rank ", p, " announced ", num_recv_rows[p], " rows"));
    }
    recv_offsets[p + 1] = recv_offsets[p] + num_recv_rows[p];
  }
  const int64_t num_recv = recv_offsets[world_size];
  handle.recv_x_ = std::move(spare_recv_x_);
  handle.recv_x_.resize(num_recv * hidden_size);
  handle.recv_expert_idx_ = std::move(spare_recv_expert_idx_);
  handle.recv_expert_idx_.resize(num_recv);

  // Rows for this rank itself: a copy, never the network.
  const size_t row_bytes = hidden_size * sizeof(float);
  for (int64_t i = send_offsets[me]; i < send_offsets[me + 1]; ++i) {
    const int32_t slot = handle.send_slots_[i];
    const int64_t row = recv_offsets[me] + (i - send_offsets[me]);
    std::memcpy(handle.recv_x_.data() + row * hidden_size,
                args.hidden + (slot / top_k) * hidden_size, row_bytes);
    handle.recv_expert_idx_[row] = args.topk_idx[slot];
  }

  // 2. Payload: pack the rows for the other ranks, then ids and rows in one round.
  const int64_t num_packed = send_offsets[world_size] - num_send_rows[me];
  send_x_.resize(num_packed * hidden_size);
  send_expert_idx_.resize(num_packed);
  ByteLayout ids(world_size);
  ByteLayout rows(world_size);
  for (int p = 0; p < world_size; ++p) {
    if (p == me) continue;
    const int64_t packed = PackedRow(send_offsets, p, me);
    for (int64_t i = 0; i < num_send_rows[p]; ++i) {
      const int32_t slot = handle.send_slots_[send_offsets[p] + i];
      std::memcpy(send_x_.data() + (packed + i) * hidden_size,
                  args.hidden + (slot / top_k) * hidden_size, row_bytes);
      send_expert_idx_[packed + i] = args.topk_idx[slot];
    }
    ids.send_bytes[p] = num_send_rows[p] * static_cast<int64_t>(sizeof(int32_t));
    ids.send_offsets[p] = packed * static_cast<int64_t>(sizeof(int32_t));
    ids.recv_bytes[p] = num_recv_rows[p] * static_cast<int64_t>(sizeof(int32_t));
    ids.recv_offsets[p] = recv_offsets[p] * static_cast<int64_t>(sizeof(int32_t));
    rows.send_bytes[p] = num_send_rows[p] * static_cast<int64_t>(row_bytes);
    rows.send_offsets[p] = packed * static_cast<int64_t>(row_bytes);
    rows.recv_bytes[p] = num_recv_rows[p] * static_cast<int64_t>(row_bytes);
    rows.recv_offsets[p] = recv_offsets[p] * static_cast<int64_t>(row_bytes);
  }
  const AllToAllVArgs ops[2] = {
      ids.Args(send_expert_idx_.data(), handle.recv_expert_idx_.data()),
      rows.Args(send_x_.data(), handle.recv_x_.data()),
  };
  HERD_RETURN_IF_ERROR(Exchange(ops, deadline));
  return handle;
}

absl::Status ExpertExchange::Combine(DispatchHandle handle, const float* expert_out, float* out,
                                     absl::Time deadline) {
  if (handle.exchange_id_ != id_) {
    return absl::InvalidArgumentError(
        "combine: the handle does not come from this exchange's Dispatch, or was combined");
  }
  const int world_size = comm_->world_size();
  const int me = comm_->rank();
  const int64_t hidden_size = handle.hidden_size_;
  const int64_t num_slots = handle.num_tokens_ * handle.top_k_;
  if ((handle.num_recv_rows() > 0 && expert_out == nullptr) || (num_slots > 0 && out == nullptr)) {
    return absl::InvalidArgumentError("combine: expert_out and out must be set");
  }
  const std::vector<int64_t>& send_offsets = handle.send_rank_offsets_;
  const std::vector<int64_t>& recv_offsets = handle.recv_rank_offsets_;
  const size_t row_bytes = hidden_size * sizeof(float);

  // This rank's own rows: a copy.
  for (int64_t i = send_offsets[me]; i < send_offsets[me + 1]; ++i) {
    const int64_t row = recv_offsets[me] + (i - send_offsets[me]);
    std::memcpy(out + handle.send_slots_[i] * hidden_size, expert_out + row * hidden_size,
                row_bytes);
  }

  // expert_out is already grouped by source rank; what comes back is packed
  // the way Dispatch packed it, then scattered to its slots.
  const int64_t num_packed = send_offsets[world_size] - (send_offsets[me + 1] - send_offsets[me]);
  combine_recv_x_.resize(num_packed * hidden_size);
  ByteLayout rows(world_size);
  for (int p = 0; p < world_size; ++p) {
    if (p == me) continue;
    rows.send_bytes[p] = (recv_offsets[p + 1] - recv_offsets[p]) * static_cast<int64_t>(row_bytes);
    rows.send_offsets[p] = recv_offsets[p] * static_cast<int64_t>(row_bytes);
    rows.recv_bytes[p] = (send_offsets[p + 1] - send_offsets[p]) * static_cast<int64_t>(row_bytes);
    rows.recv_offsets[p] = PackedRow(send_offsets, p, me) * static_cast<int64_t>(row_bytes);
  }
  const AllToAllVArgs op = rows.Args(expert_out, combine_recv_x_.data());
  HERD_RETURN_IF_ERROR(Exchange(absl::MakeConstSpan(&op, 1), deadline));

  for (int p = 0; p < world_size; ++p) {
    if (p == me) continue;
    const int64_t packed = PackedRow(send_offsets, p, me);
    for (int64_t i = 0; i < send_offsets[p + 1] - send_offsets[p]; ++i) {
      std::memcpy(out + handle.send_slots_[send_offsets[p] + i] * hidden_size,
                  combine_recv_x_.data() + (packed + i) * hidden_size, row_bytes);
    }
  }
  for (const int32_t slot : handle.unsent_slots_) {
    std::memset(out + slot * hidden_size, 0, row_bytes);
  }
  if (handle.recv_x_.capacity() > spare_recv_x_.capacity()) {
    spare_recv_x_ = std::move(handle.recv_x_);
    spare_recv_expert_idx_ = std::move(handle.recv_expert_idx_);
  }
  return absl::OkStatus();
}

absl::Status ExpertExchange::Exchange(absl::Span<const AllToAllVArgs> ops, absl::Time deadline) {
  if (comm_->memory_space() == MemorySpace::kHost) return comm_->GroupedAllToAllV(ops, deadline);

  // Device communicator: copy each op's send blocks into a device buffer, run
  // the exchange there, and copy the received blocks back.
  std::vector<AllToAllVArgs> device_ops(ops.begin(), ops.end());
  if (staging_.size() < 2 * ops.size()) staging_.resize(2 * ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    const AllToAllVArgs& a = ops[i];
    int64_t send_extent = 0;
    int64_t recv_extent = 0;
    for (size_t p = 0; p < a.send_bytes.size(); ++p) {
      send_extent = std::max(send_extent, a.send_offsets[p] + a.send_bytes[p]);
      recv_extent = std::max(recv_extent, a.recv_offsets[p] + a.recv_bytes[p]);
    }
    for (int side = 0; side < 2; ++side) {
      std::unique_ptr<CommBuffer>& buffer = staging_[2 * i + side];
      const int64_t needed = side == 0 ? send_extent : recv_extent;
      if (buffer == nullptr || buffer->size_bytes() < needed) {
        HERD_ASSIGN_OR_RETURN(buffer, comm_->Allocate(needed));
      }
    }
    for (size_t p = 0; p < a.send_bytes.size(); ++p) {
      if (a.send_bytes[p] == 0) continue;
      HERD_RETURN_IF_ERROR(staging_[2 * i]->CopyFromHost(
          a.send_offsets[p], static_cast<const uint8_t*>(a.send) + a.send_offsets[p],
          a.send_bytes[p]));
    }
    device_ops[i].send = staging_[2 * i]->data();
    device_ops[i].recv = staging_[2 * i + 1]->data();
  }
  HERD_RETURN_IF_ERROR(comm_->GroupedAllToAllV(device_ops, deadline));
  for (size_t i = 0; i < ops.size(); ++i) {
    const AllToAllVArgs& a = ops[i];
    for (size_t p = 0; p < a.recv_bytes.size(); ++p) {
      if (a.recv_bytes[p] == 0) continue;
      HERD_RETURN_IF_ERROR(staging_[2 * i + 1]->CopyToHost(
          a.recv_offsets[p], static_cast<uint8_t*>(a.recv) + a.recv_offsets[p], a.recv_bytes[p]));
    }
  }
  return absl::OkStatus();
}

}  // namespace herd::comm
