#include "comm/ucx/ucx_communicator.h"

#include <atomic>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/row_packer.h"
#include "comm/ucx/ucx_requests.h"
#include "comm/ucx/ucx_world.h"
#include "core/status.h"

namespace herd::comm {
namespace {

class UcxCommunicator final : public Communicator {
 public:
  UcxCommunicator(UcxWorld& world, uint16_t channel)
      : world_(world), channel_(channel), rank_(world.rank()), world_size_(world.world_size()) {}

  // What this rank sent last should reach its peers even if the process
  // exits right after. A failed communicator has a peer that may never take
  // its data, so it does not wait.
  ~UcxCommunicator() override {
    if (CheckUsable().ok()) world_.Flush(absl::Now() + absl::Seconds(5));
  }

  const char* backend_name() const override { return "ucx"; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }
  MemorySpace memory_space() const override { return MemorySpace::kHost; }

  absl::StatusOr<std::unique_ptr<CommBuffer>> Allocate(int64_t bytes) override {
    if (bytes < 0) return absl::InvalidArgumentError("negative buffer size");
    return std::unique_ptr<CommBuffer>(new HostCommBuffer(bytes));
  }

  absl::Status GroupedAllToAllV(absl::Span<const AllToAllVArgs> ops, absl::Time deadline) override {
    for (const AllToAllVArgs& args : ops) {
      HERD_RETURN_IF_ERROR(ValidateAllToAllVArgs(args, world_size_));
      if (args.send_bytes[rank_] != args.recv_bytes[rank_]) {
        return absl::InvalidArgumentError(
            absl::StrCat("all_to_all_v: rank ", rank_, " sends itself ", args.send_bytes[rank_],
                         " bytes but expects ", args.recv_bytes[rank_]));
      }
    }
    HERD_RETURN_IF_ERROR(CheckUsable());
    const uint32_t first_seq = seq_;
    for (size_t i = 0; i < ops.size(); ++i) NextSeq();
    UcxRequests requests(world_, channel_, Where("all_to_all_v", first_seq));
    int64_t bytes_sent = 0;
    // Receives first, so that data finds its buffer waiting.
    for (size_t i = 0; i < ops.size(); ++i) {
      const AllToAllVArgs& a = ops[i];
      for (int p = 0; p < world_size_; ++p) {
        if (p == rank_) continue;
        HERD_RETURN_IF_ERROR(Fail(
            requests.PostRecv(p, SeqAt(first_seq, i),
                              static_cast<uint8_t*>(a.recv) + a.recv_offsets[p], a.recv_bytes[p])));
      }
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      const AllToAllVArgs& a = ops[i];
      // Start with the next rank so that not every rank sends to rank 0 first.
      for (int step = 1; step < world_size_; ++step) {
        const int p = (rank_ + step) % world_size_;
        HERD_RETURN_IF_ERROR(Fail(requests.PostSend(
            p, SeqAt(first_seq, i), static_cast<const uint8_t*>(a.send) + a.send_offsets[p],
            a.send_bytes[p])));
        bytes_sent += a.send_bytes[p];
      }
      if (a.recv_bytes[rank_] > 0) {
        std::memcpy(static_cast<uint8_t*>(a.recv) + a.recv_offsets[rank_],
                    static_cast<const uint8_t*>(a.send) + a.send_offsets[rank_],
                    static_cast<size_t>(a.recv_bytes[rank_]));
      }
    }
    HERD_RETURN_IF_ERROR(Fail(requests.WaitAll(deadline)));
    Count(bytes_sent);
    return absl::OkStatus();
  }

  absl::Status GroupedRowAllToAllV(absl::Span<const RowAllToAllVArgs> ops,
                                   absl::Time deadline) override {
    return row_packer_.Run(*this, ops, deadline);
  }

  absl::Status AllGather(const void* send, int64_t bytes_per_rank, void* recv,
                         absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(ValidateAllGatherArgs(send, bytes_per_rank, recv));
    HERD_RETURN_IF_ERROR(CheckUsable());
    const uint32_t seq = NextSeq();
    UcxRequests requests(world_, channel_, Where("all_gather", seq));
    uint8_t* out = static_cast<uint8_t*>(recv);
    for (int p = 0; p < world_size_; ++p) {
      if (p == rank_) continue;
      HERD_RETURN_IF_ERROR(Fail(requests.PostRecv(p, seq, out + p * bytes_per_rank, bytes_per_rank,
                                                  /*post_empty=*/true)));
    }
    for (int step = 1; step < world_size_; ++step) {
      const int p = (rank_ + step) % world_size_;
      HERD_RETURN_IF_ERROR(
          Fail(requests.PostSend(p, seq, send, bytes_per_rank, /*post_empty=*/true)));
    }
    if (bytes_per_rank > 0 && out + rank_ * bytes_per_rank != send) {
      std::memcpy(out + rank_ * bytes_per_rank, send, static_cast<size_t>(bytes_per_rank));
    }
    HERD_RETURN_IF_ERROR(Fail(requests.WaitAll(deadline)));
    Count(bytes_per_rank * (world_size_ - 1));
    return absl::OkStatus();
  }

  absl::Status Broadcast(int root_rank, void* buffer, int64_t bytes, absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(ValidateBroadcastArgs(root_rank, world_size_, buffer, bytes));
    HERD_RETURN_IF_ERROR(CheckUsable());
    const uint32_t seq = NextSeq();
    UcxRequests requests(world_, channel_, Where("broadcast", seq));
    int64_t bytes_sent = 0;
    if (rank_ == root_rank) {
      for (int step = 1; step < world_size_; ++step) {
        const int p = (rank_ + step) % world_size_;
        HERD_RETURN_IF_ERROR(Fail(requests.PostSend(p, seq, buffer, bytes, /*post_empty=*/true)));
        bytes_sent += bytes;
      }
    } else {
      HERD_RETURN_IF_ERROR(
          Fail(requests.PostRecv(root_rank, seq, buffer, bytes, /*post_empty=*/true)));
    }
    HERD_RETURN_IF_ERROR(Fail(requests.WaitAll(deadline)));
    Count(bytes_sent);
    return absl::OkStatus();
  }

  absl::Status Barrier(absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(CheckUsable());
    const uint32_t seq = NextSeq();
    UcxRequests requests(world_, channel_, Where("barrier", seq));
    for (int p = 0; p < world_size_; ++p) {
      if (p == rank_) continue;
      HERD_RETURN_IF_ERROR(Fail(requests.PostRecv(p, seq, nullptr, 0, /*post_empty=*/true)));
    }
    for (int step = 1; step < world_size_; ++step) {
      const int p = (rank_ + step) % world_size_;
      HERD_RETURN_IF_ERROR(Fail(requests.PostSend(p, seq, nullptr, 0, /*post_empty=*/true)));
    }
    HERD_RETURN_IF_ERROR(Fail(requests.WaitAll(deadline)));
    Count(0);
    return absl::OkStatus();
  }

  void Abort(absl::string_view reason) override { world_.AbortChannel(channel_, reason); }

  CommStats stats() const override {
    return CommStats{num_collectives_.load(), bytes_sent_.load()};
  }

 private:
  // Sequence numbers wrap below kUcxAbortTag, which is the abort notices'.
  uint32_t NextSeq() {
    const uint32_t seq = seq_;
    seq_ = SeqAt(seq_, 1);
    return seq;
  }
  static uint32_t SeqAt(uint32_t first, size_t i) {
    return static_cast<uint32_t>((uint64_t{first} + i) % kUcxAbortTag);
  }

  std::string Where(const char* op, uint32_t seq) const {
    return absl::StrCat("ucx ", op, " #", seq, " on rank ", rank_);
  }

  absl::Status CheckUsable() {
    {
      absl::MutexLock lock(&world_.mu());
      HERD_RETURN_IF_ERROR(world_.ChannelAbortStatus(channel_));
    }
    if (failed_.ok()) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("ucx communicator on rank ", rank_, " failed earlier: ", failed_.ToString()));
  }

  // Records the first failure; returns `status` unchanged.
  absl::Status Fail(absl::Status status) {
    if (!status.ok() && failed_.ok()) failed_ = status;
    return status;
  }

  void Count(int64_t bytes_sent) {
    num_collectives_.fetch_add(1);
    bytes_sent_.fetch_add(bytes_sent);
  }

  UcxWorld& world_;
  const uint16_t channel_;
  const int rank_;
  const int world_size_;
  uint32_t seq_ = 0;
  absl::Status failed_;   // touched only by the driving thread
  RowPacker row_packer_;  // packs row lists for the block all-to-all-v
  std::atomic<int64_t> num_collectives_{0};
  std::atomic<int64_t> bytes_sent_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateUcxCommunicator(absl::Time deadline) {
  HERD_ASSIGN_OR_RETURN(UcxWorld * world, UcxWorld::Join(deadline));
  return std::unique_ptr<Communicator>(new UcxCommunicator(*world, world->NewChannelId()));
}

}  // namespace herd::comm
