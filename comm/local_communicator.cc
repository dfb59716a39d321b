// The local communicator: ranks are threads; a collective is a rendezvous in
// the LocalWorld's group (see LocalWorld::Group) followed by memcpy from the
// peers' buffers, each rank pulling what it receives.
#include <atomic>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/local_world.h"
#include "comm/row_packer.h"
#include "core/status.h"

namespace herd::comm {
namespace {

enum class OpKind { kAllToAllV, kAllGather, kBroadcast, kBarrier };

const char* OpName(OpKind kind) {
  switch (kind) {
    case OpKind::kAllToAllV:
      return "all_to_all_v";
    case OpKind::kAllGather:
      return "all_gather";
    case OpKind::kBroadcast:
      return "broadcast";
    case OpKind::kBarrier:
      return "barrier";
  }
  return "?";
}

// One rank's side of a collective, read by its peers during the round.
struct LocalOp {
  OpKind kind = OpKind::kBarrier;
  absl::Span<const AllToAllVArgs> ops;  // kAllToAllV
  const void* send = nullptr;           // kAllGather
  void* buffer = nullptr;               // kAllGather: recv; kBroadcast: the data
  int64_t bytes = 0;                    // kAllGather: per rank; kBroadcast: total
  int root_rank = 0;                    // kBroadcast
};

}  // namespace

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalWorld> world, LocalWorld::Group* group, int rank,
                    int group_idx)
      : world_(std::move(world)), group_(group), rank_(rank), group_idx_(group_idx) {}

  const char* backend_name() const override { return "local"; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_->world_size(); }
  MemorySpace memory_space() const override { return MemorySpace::kHost; }

  absl::StatusOr<std::unique_ptr<CommBuffer>> Allocate(int64_t bytes) override {
    if (bytes < 0) return absl::InvalidArgumentError("negative buffer size");
    return std::unique_ptr<CommBuffer>(new HostCommBuffer(bytes));
  }

  absl::Status GroupedAllToAllV(absl::Span<const AllToAllVArgs> ops, absl::Time deadline) override {
    int64_t bytes_sent = 0;
    for (const AllToAllVArgs& args : ops) {
      HERD_RETURN_IF_ERROR(ValidateAllToAllVArgs(args, world_size()));
      for (int p = 0; p < world_size(); ++p) {
        if (p != rank_) bytes_sent += args.send_bytes[p];
      }
    }
    LocalOp op;
    op.kind = OpKind::kAllToAllV;
    op.ops = ops;
    return Run(op, deadline, bytes_sent);
  }

  absl::Status GroupedRowAllToAllV(absl::Span<const RowAllToAllVArgs> ops,
                                   absl::Time deadline) override {
    return row_packer_.Run(*this, ops, deadline);
  }

  absl::Status AllGather(const void* send, int64_t bytes_per_rank, void* recv,
                         absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(ValidateAllGatherArgs(send, bytes_per_rank, recv));
    LocalOp op;
    op.kind = OpKind::kAllGather;
    op.send = send;
    op.buffer = recv;
    op.bytes = bytes_per_rank;
    return Run(op, deadline, bytes_per_rank * (world_size() - 1));
  }

  absl::Status Broadcast(int root_rank, void* buffer, int64_t bytes, absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(ValidateBroadcastArgs(root_rank, world_size(), buffer, bytes));
    LocalOp op;
    op.kind = OpKind::kBroadcast;
    op.buffer = buffer;
    op.bytes = bytes;
    op.root_rank = root_rank;
    return Run(op, deadline, rank_ == root_rank ? bytes * (world_size() - 1) : 0);
  }

  absl::Status Barrier(absl::Time deadline) override {
    LocalOp op;
    op.kind = OpKind::kBarrier;
    return Run(op, deadline, 0);
  }

  void Abort(absl::string_view reason) override { world_->Abort(rank_, reason); }

  CommStats stats() const override {
    return CommStats{num_collectives_.load(), bytes_sent_.load()};
  }

 private:
  // The rendezvous of LocalWorld::Group, then the copies of this rank.
  absl::Status Run(const LocalOp& op, absl::Time deadline, int64_t bytes_sent);
  // Copies what this rank receives in `op` from the peers' posted operations.
  // Returns Internal when a peer's operation does not match.
  absl::Status Receive(const LocalOp& op, const std::vector<const LocalOp*>& peers) const;
  std::string Where(const LocalOp& op, uint64_t round) const {
    return absl::StrCat("local ", OpName(op.kind), " #", round, " of group ", group_idx_,
                        " on rank ", rank_);
  }

  const std::shared_ptr<LocalWorld> world_;
  LocalWorld::Group* const group_;  // owned by world_
  const int rank_;
  const int group_idx_;
  uint64_t round_ = 0;
  RowPacker row_packer_;  // packs row lists for the block all-to-all-v
  std::atomic<int64_t> num_collectives_{0};
  std::atomic<int64_t> bytes_sent_{0};
};

absl::Status LocalCommunicator::Run(const LocalOp& op, absl::Time deadline, int64_t bytes_sent) {
  LocalWorld& w = *world_;
  LocalWorld::Group& g = *group_;
  const int n = world_size();
  const uint64_t round = ++round_;
  std::vector<const LocalOp*> peers(n, nullptr);
  {
    absl::MutexLock lock(&w.mu_);
    if (!w.aborted_.ok()) return w.aborted_;
    if (!g.failed.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          Where(op, round), ": the communicator failed earlier: ", g.failed.ToString()));
    }
    g.posted[rank_] = &op;
    g.arrived[rank_] = round;
    auto all_arrived = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(w.mu_) {
      for (int p = 0; p < n; ++p) {
        if (g.arrived[p] < round) return false;
      }
      return true;
    };
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(w.mu_) {
      return all_arrived() || !w.aborted_.ok() || !g.failed.ok();
    };
    w.mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
    // NOTE: once every rank has arrived, every rank copies and then waits in
    // the second phase, whatever else happened (an abort, a peer's deadline):
    // leaving now could free a buffer that a peer is reading.
    if (!all_arrived()) {
      if (!w.aborted_.ok()) return w.aborted_;
      if (!g.failed.ok()) return g.failed;
      std::vector<int> missing;
      for (int p = 0; p < n; ++p) {
        if (g.arrived[p] < round) missing.push_back(p);
      }
      g.failed = absl::DeadlineExceededError(
          absl::StrCat(Where(op, round), ": rank(s) ", absl::StrJoin(missing, ", "),
                       " did not take part before the deadline"));
      return g.failed;
    }
    for (int p = 0; p < n; ++p) peers[p] = static_cast<const LocalOp*>(g.posted[p]);
  }

  const absl::Status received = Receive(op, peers);

  absl::MutexLock lock(&w.mu_);
  if (!received.ok() && g.failed.ok()) {
    g.failed = absl::InternalError(absl::StrCat(Where(op, round), ": ", received.message()));
  }
  g.finished[rank_] = round;
  auto all_finished = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(w.mu_) {
    for (int p = 0; p < n; ++p) {
      if (g.finished[p] < round) return false;
    }
    return true;
  };
  // NOTE: no deadline here on purpose: every rank has arrived, so each peer is
  // in Receive (memcpy, which cannot block) and will finish.
  w.mu_.Await(absl::Condition(&all_finished));
  if (!g.failed.ok()) return g.failed;
  num_collectives_.fetch_add(1);
  bytes_sent_.fetch_add(bytes_sent);
  if (!w.aborted_.ok()) return w.aborted_;
  return absl::OkStatus();
}

absl::Status LocalCommunicator::Receive(const LocalOp& op,
                                        const std::vector<const LocalOp*>& peers) const {
  const int n = world_size();
  for (int p = 0; p < n; ++p) {
    if (peers[p]->kind != op.kind) {
      return absl::InternalError(absl::StrCat("rank ", p, " called ", OpName(peers[p]->kind),
                                              " while rank ", rank_, " called ", OpName(op.kind)));
    }
  }
  switch (op.kind) {
    case OpKind::kAllToAllV:
      for (int p = 0; p < n; ++p) {
        if (peers[p]->ops.size() != op.ops.size()) {
          return absl::InternalError(absl::StrCat("rank ", p, " passed ", peers[p]->ops.size(),
                                                  " all-to-all-v ops, rank ", rank_, " passed ",
                                                  op.ops.size()));
        }
      }
      for (size_t i = 0; i < op.ops.size(); ++i) {
        const AllToAllVArgs& mine = op.ops[i];
        for (int p = 0; p < n; ++p) {
          const AllToAllVArgs& theirs = peers[p]->ops[i];
          if (theirs.send_bytes[rank_] != mine.recv_bytes[p]) {
            return absl::InternalError(absl::StrCat("rank ", rank_, " expects ", mine.recv_bytes[p],
                                                    " bytes from rank ", p, " in op ", i,
                                                    ", which sends ", theirs.send_bytes[rank_]));
          }
          if (mine.recv_bytes[p] == 0) continue;
          std::memcpy(static_cast<uint8_t*>(mine.recv) + mine.recv_offsets[p],
                      static_cast<const uint8_t*>(theirs.send) + theirs.send_offsets[rank_],
                      static_cast<size_t>(mine.recv_bytes[p]));
        }
      }
      return absl::OkStatus();
    case OpKind::kAllGather:
      for (int p = 0; p < n; ++p) {
        if (peers[p]->bytes != op.bytes) {
          return absl::InternalError(absl::StrCat("all_gather sizes differ: rank ", p, " has ",
                                                  peers[p]->bytes, " bytes, rank ", rank_, " has ",
                                                  op.bytes));
        }
        if (op.bytes == 0) continue;
        std::memcpy(static_cast<uint8_t*>(op.buffer) + p * op.bytes, peers[p]->send,
                    static_cast<size_t>(op.bytes));
      }
      return absl::OkStatus();
    case OpKind::kBroadcast: {
      const LocalOp& root = *peers[op.root_rank];
      for (int p = 0; p < n; ++p) {
        if (peers[p]->root_rank != op.root_rank || peers[p]->bytes != op.bytes) {
          return absl::InternalError(absl::StrCat("broadcast arguments differ: rank ", p,
                                                  " has root ", peers[p]->root_rank, " and ",
                                                  peers[p]->bytes, " bytes, rank ", rank_,
                                                  " has root ", op.root_rank, " and ", op.bytes));
        }
      }
      if (rank_ != op.root_rank && op.bytes > 0) {
        std::memcpy(op.buffer, root.buffer, static_cast<size_t>(op.bytes));
      }
      return absl::OkStatus();
    }
    case OpKind::kBarrier:
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Communicator>> LocalWorld::CreateCommunicator(int rank) {
  if (rank < 0 || rank >= world_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside the local world of ", world_size_));
  }
  absl::MutexLock lock(&mu_);
  const int group_idx = num_groups_joined_[rank]++;
  while (static_cast<int>(groups_.size()) <= group_idx) {
    groups_.push_back(std::make_unique<Group>(world_size_));
  }
  return std::unique_ptr<Communicator>(
      new LocalCommunicator(shared_from_this(), groups_[group_idx].get(), rank, group_idx));
}

}  // namespace herd::comm
