#include "comm/mpi_communicator.h"

#include <mpi.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/mpi_requests.h"
#include "comm/mpi_runtime.h"
#include "comm/row_packer.h"
#include "core/status.h"

namespace herd::comm {
namespace {

// Collectives take tags [0, kNumTags) in turn, so that a rank that disagrees
// on the order of calls gets a size or deadline error instead of another
// call's data. 32767 is the smallest MPI_TAG_UB the standard allows.
constexpr uint64_t kNumTags = 32000;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, int rank, int world_size)
      : comm_(comm), rank_(rank), world_size_(world_size) {}

  // NOTE: the duplicate of MPI_COMM_WORLD is not freed. A peer may still have
  // sent on it (a call this rank gave up on, or one it never made because a
  // peer timed out first); Open MPI would hand the freed context id to the
  // next communicator, and those stale messages would match its receives.
  // MPI_Finalize releases it.
  ~MpiCommunicator() override = default;

  const char* backend_name() const override { return "mpi"; }
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
    const uint64_t first_seq = seq_;
    seq_ += ops.size();
    MpiRequests requests(Where("all_to_all_v", first_seq));
    int64_t bytes_sent = 0;
    // Receives first, so that data finds its buffer waiting.
    for (size_t i = 0; i < ops.size(); ++i) {
      const AllToAllVArgs& a = ops[i];
      const int tag = Tag(first_seq + i);
      for (int p = 0; p < world_size_; ++p) {
        if (p == rank_) continue;
        HERD_RETURN_IF_ERROR(Fail(requests.PostRecv(
            static_cast<uint8_t*>(a.recv) + a.recv_offsets[p], a.recv_bytes[p], p, tag, comm_)));
      }
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      const AllToAllVArgs& a = ops[i];
      const int tag = Tag(first_seq + i);
      // Start with the next rank so that not every rank sends to rank 0 first.
      for (int step = 1; step < world_size_; ++step) {
        const int p = (rank_ + step) % world_size_;
        HERD_RETURN_IF_ERROR(
            Fail(requests.PostSend(static_cast<const uint8_t*>(a.send) + a.send_offsets[p],
                                   a.send_bytes[p], p, tag, comm_)));
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

  // Row lists become derived datatypes (MpiRequests::PostSendRows), so MPI
  // moves rows straight between the callers' buffers; contiguous sides are
  // plain byte messages.
  absl::Status GroupedRowAllToAllV(absl::Span<const RowAllToAllVArgs> ops,
                                   absl::Time deadline) override {
    for (const RowAllToAllVArgs& a : ops) {
      HERD_RETURN_IF_ERROR(ValidateRowAllToAllVArgs(a, rank_, world_size_));
      if (a.row_bytes > kMaxMpiMessageBytes) {
        return absl::InvalidArgumentError(absl::StrCat("row_all_to_all_v: rows of ", a.row_bytes,
                                                       " bytes; mpi takes at most ",
                                                       kMaxMpiMessageBytes));
      }
    }
    HERD_RETURN_IF_ERROR(CheckUsable());
    const uint64_t first_seq = seq_;
    seq_ += ops.size();
    MpiRequests requests(Where("row_all_to_all_v", first_seq));
    int64_t bytes_sent = 0;
    // Receives first, so that data finds its buffer waiting.
    for (size_t i = 0; i < ops.size(); ++i) {
      const RowAllToAllVArgs& a = ops[i];
      const int tag = Tag(first_seq + i);
      for (int p = 0; p < world_size_; ++p) {
        if (p == rank_) continue;
        const int64_t first = a.recv_row_offsets[p];
        const int64_t num_rows = a.recv_row_offsets[p + 1] - first;
        if (a.recv_rows.empty()) {
          HERD_RETURN_IF_ERROR(
              Fail(requests.PostRecv(static_cast<uint8_t*>(a.recv) + first * a.row_bytes,
                                     num_rows * a.row_bytes, p, tag, comm_)));
        } else {
          HERD_RETURN_IF_ERROR(Fail(requests.PostRecvRows(
              a.recv, a.row_bytes, a.recv_rows.subspan(first, num_rows), p, tag, comm_)));
        }
      }
    }
    for (size_t i = 0; i < ops.size(); ++i) {
      const RowAllToAllVArgs& a = ops[i];
      const int tag = Tag(first_seq + i);
      for (int step = 1; step < world_size_; ++step) {
        const int p = (rank_ + step) % world_size_;
        const int64_t first = a.send_row_offsets[p];
        const int64_t num_rows = a.send_row_offsets[p + 1] - first;
        if (a.send_rows.empty()) {
          HERD_RETURN_IF_ERROR(
              Fail(requests.PostSend(static_cast<const uint8_t*>(a.send) + first * a.row_bytes,
                                     num_rows * a.row_bytes, p, tag, comm_)));
        } else {
          HERD_RETURN_IF_ERROR(Fail(requests.PostSendRows(
              a.send, a.row_bytes, a.send_rows.subspan(first, num_rows), p, tag, comm_)));
        }
        bytes_sent += num_rows * a.row_bytes;
      }
      CopyRowsToSelf(a, rank_);
    }
    HERD_RETURN_IF_ERROR(Fail(requests.WaitAll(deadline)));
    Count(bytes_sent);
    return absl::OkStatus();
  }

  // The counts travel as the sizes of op 0's messages (sent to every peer,
  // empty or not), probed before any receive is posted: one round, no
  // counts all-to-all.
  absl::Status GroupedRowAllToAllVUnknownCounts(absl::Span<const RowAllToAllVArgs> ops,
                                                RowRecvPlacer place, absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(ValidateUnknownCountsArgs(ops, world_size_));
    for (const RowAllToAllVArgs& a : ops) {
      if (a.row_bytes > kMaxMpiMessageBytes) {
        return absl::InvalidArgumentError(absl::StrCat("row_all_to_all_v: rows of ", a.row_bytes,
                                                       " bytes; mpi takes at most ",
                                                       kMaxMpiMessageBytes));
      }
    }
    const RowAllToAllVArgs& first_op = ops[0];
    for (int p = 0; p < world_size_; ++p) {
      const int64_t rows = first_op.send_row_offsets[p + 1] - first_op.send_row_offsets[p];
      if (rows * first_op.row_bytes >= kMaxMpiMessageBytes) {
        return absl::InvalidArgumentError(
            absl::StrCat("row_all_to_all_v: op 0 sends rank ", p, " ", rows * first_op.row_bytes,
                         " bytes; with unknown counts mpi takes less than ", kMaxMpiMessageBytes));
      }
    }
    HERD_RETURN_IF_ERROR(CheckUsable());
    const uint64_t first_seq = seq_;
    seq_ += ops.size();
    MpiRequests requests(Where("row_all_to_all_v", first_seq));
    int64_t bytes_sent = 0;
    for (size_t i = 0; i < ops.size(); ++i) {
      const RowAllToAllVArgs& a = ops[i];
      const int tag = Tag(first_seq + i);
      for (int step = 1; step < world_size_; ++step) {
        const int p = (rank_ + step) % world_size_;
        const int64_t first = a.send_row_offsets[p];
        const int64_t num_rows = a.send_row_offsets[p + 1] - first;
        if (a.send_rows.empty() || num_rows == 0) {
          HERD_RETURN_IF_ERROR(Fail(
              requests.PostSend(static_cast<const uint8_t*>(a.send) + first * a.row_bytes,
                                num_rows * a.row_bytes, p, tag, comm_, /*post_empty=*/i == 0)));
        } else {
          HERD_RETURN_IF_ERROR(Fail(requests.PostSendRows(
              a.send, a.row_bytes, a.send_rows.subspan(first, num_rows), p, tag, comm_)));
        }
        bytes_sent += num_rows * a.row_bytes;
      }
    }
    std::vector<int64_t> probed_bytes;
    HERD_RETURN_IF_ERROR(
        Fail(requests.ProbeBytes(rank_, Tag(first_seq), comm_, deadline, &probed_bytes)));
    std::vector<int64_t> recv_row_offsets(world_size_ + 1, 0);
    for (int p = 0; p < world_size_; ++p) {
      int64_t rows = first_op.send_row_offsets[p + 1] - first_op.send_row_offsets[p];
      if (p != rank_) {
        if (probed_bytes[p] % first_op.row_bytes != 0) {
          return Fail(absl::InternalError(
              absl::StrCat(Where("row_all_to_all_v", first_seq), ": rank ", p, " sent ",
                           probed_bytes[p], " bytes, not whole rows of ", first_op.row_bytes,
                           " (the ranks disagree on the row size)")));
        }
        rows = probed_bytes[p] / first_op.row_bytes;
      }
      recv_row_offsets[p + 1] = recv_row_offsets[p] + rows;
    }
    std::vector<void*> recv(ops.size(), nullptr);
    place(recv_row_offsets, absl::MakeSpan(recv));
    for (size_t i = 0; i < ops.size(); ++i) {
      RowAllToAllVArgs a = ops[i];
      a.recv = recv[i];
      a.recv_row_offsets = recv_row_offsets;
      const int tag = Tag(first_seq + i);
      for (int p = 0; p < world_size_; ++p) {
        if (p == rank_) continue;
        const int64_t first = recv_row_offsets[p];
        const int64_t num_rows = recv_row_offsets[p + 1] - first;
        HERD_RETURN_IF_ERROR(
            Fail(requests.PostRecv(static_cast<uint8_t*>(a.recv) + first * a.row_bytes,
                                   num_rows * a.row_bytes, p, tag, comm_, /*post_empty=*/i == 0)));
      }
      CopyRowsToSelf(a, rank_);
    }
    HERD_RETURN_IF_ERROR(Fail(requests.WaitAll(deadline)));
    Count(bytes_sent);
    return absl::OkStatus();
  }

  absl::Status AllGather(const void* send, int64_t bytes_per_rank, void* recv,
                         absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(ValidateAllGatherArgs(send, bytes_per_rank, recv));
    HERD_RETURN_IF_ERROR(CheckUsable());
    const uint64_t seq = seq_++;
    const int tag = Tag(seq);
    MpiRequests requests(Where("all_gather", seq));
    uint8_t* out = static_cast<uint8_t*>(recv);
    for (int p = 0; p < world_size_; ++p) {
      if (p == rank_) continue;
      HERD_RETURN_IF_ERROR(Fail(requests.PostRecv(out + p * bytes_per_rank, bytes_per_rank, p, tag,
                                                  comm_, /*post_empty=*/true)));
    }
    for (int step = 1; step < world_size_; ++step) {
      const int p = (rank_ + step) % world_size_;
      HERD_RETURN_IF_ERROR(
          Fail(requests.PostSend(send, bytes_per_rank, p, tag, comm_, /*post_empty=*/true)));
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
    const uint64_t seq = seq_++;
    const int tag = Tag(seq);
    MpiRequests requests(Where("broadcast", seq));
    int64_t bytes_sent = 0;
    if (rank_ == root_rank) {
      for (int step = 1; step < world_size_; ++step) {
        const int p = (rank_ + step) % world_size_;
        HERD_RETURN_IF_ERROR(
            Fail(requests.PostSend(buffer, bytes, p, tag, comm_, /*post_empty=*/true)));
        bytes_sent += bytes;
      }
    } else {
      HERD_RETURN_IF_ERROR(
          Fail(requests.PostRecv(buffer, bytes, root_rank, tag, comm_, /*post_empty=*/true)));
    }
    HERD_RETURN_IF_ERROR(Fail(requests.WaitAll(deadline)));
    Count(bytes_sent);
    return absl::OkStatus();
  }

  absl::Status Barrier(absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(CheckUsable());
    const uint64_t seq = seq_++;
    const int tag = Tag(seq);
    MpiRequests requests(Where("barrier", seq));
    for (int p = 0; p < world_size_; ++p) {
      if (p == rank_) continue;
      HERD_RETURN_IF_ERROR(Fail(requests.PostRecv(nullptr, 0, p, tag, comm_, /*post_empty=*/true)));
    }
    for (int step = 1; step < world_size_; ++step) {
      const int p = (rank_ + step) % world_size_;
      HERD_RETURN_IF_ERROR(Fail(requests.PostSend(nullptr, 0, p, tag, comm_, /*post_empty=*/true)));
    }
    HERD_RETURN_IF_ERROR(Fail(requests.WaitAll(deadline)));
    Count(0);
    return absl::OkStatus();
  }

  void Abort(absl::string_view reason) override {
    std::fprintf(stderr, "herd: rank %d calls MPI_Abort: %.*s\n", rank_,
                 static_cast<int>(reason.size()), reason.data());
    std::fflush(stderr);
    MPI_Abort(comm_, 1);
    // NOTE: Open MPI's MPI_Abort does not return under mpirun; if a runtime
    // ever does, the process must still not go on as if nothing happened.
    std::abort();
  }

  CommStats stats() const override {
    return CommStats{num_collectives_.load(), bytes_sent_.load()};
  }

 private:
  static int Tag(uint64_t seq) { return static_cast<int>(seq % kNumTags); }

  std::string Where(const char* op, uint64_t seq) const {
    return absl::StrCat("mpi ", op, " #", seq, " on rank ", rank_);
  }

  absl::Status CheckUsable() const {
    if (failed_.ok()) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("mpi communicator on rank ", rank_, " failed earlier: ", failed_.ToString()));
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

  MPI_Comm comm_;
  const int rank_;
  const int world_size_;
  uint64_t seq_ = 0;
  absl::Status failed_;  // touched only by the driving thread
  std::atomic<int64_t> num_collectives_{0};
  std::atomic<int64_t> bytes_sent_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiCommunicator(absl::Time deadline) {
  HERD_RETURN_IF_ERROR(InitializeMpi());
  HERD_ASSIGN_OR_RETURN(MPI_Comm comm, DupWorldComm("mpi communicator", deadline));
  int rank = 0;
  int world_size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &world_size);
  return std::unique_ptr<Communicator>(new MpiCommunicator(comm, rank, world_size));
}

}  // namespace herd::comm
