// The `local` backends: N ranks that are threads of one process (the
// embedded default, `--local-ranks N`, and the unit-test workhorse).
//
// A LocalWorld is what the threads share: one mailbox per rank for the
// control channels and any number of communicator groups. Collectives copy
// straight from the sender's buffer into the receiver's (one memcpy per
// block, no staging), so a rank returns only once every peer has finished
// reading its send buffers.
//
//   auto world = LocalWorld::Create(4);
//   // in thread r:
//   auto control = world->CreateControlChannel(r);
//   auto comm = world->CreateCommunicator(r);  // k-th call of each rank: group k
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "comm/communicator.h"
#include "comm/control_channel.h"

namespace herd::comm {

class LocalWorld : public std::enable_shared_from_this<LocalWorld> {
 public:
  // InvalidArgument unless 1 <= world_size <= 4096.
  static absl::StatusOr<std::shared_ptr<LocalWorld>> Create(int world_size);

  int world_size() const { return world_size_; }

  // A channel for `rank` onto the world's mailboxes. Several channels of one
  // rank share its mailbox. The channel keeps the world alive. Thread-safe;
  // does not block. InvalidArgument for a rank out of range.
  absl::StatusOr<std::unique_ptr<ControlChannel>> CreateControlChannel(int rank);

  // `rank`'s communicator in the next group: the k-th call made for a rank
  // joins group k, as MPI_Comm_dup does, so every rank creates its
  // communicators in the same order. Each group fails on its own (a deadline
  // in one leaves the others usable); Abort fails the whole world. The
  // communicator keeps the world alive. Thread-safe; does not block.
  absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(int rank);

  // Fails every channel and group of the world with Aborted("rank R aborted:
  // reason") and wakes every waiting call. The first abort wins. Any thread.
  void Abort(int rank, absl::string_view reason);

 private:
  friend class LocalControlChannel;
  friend class LocalCommunicator;

  // One communicator group. Rank r posts its operation for round k by setting
  // posted[r] and arrived[r] = k; once all have arrived, each rank copies what
  // it receives from the peers' posted operations, then sets finished[r] = k
  // and waits until all have finished, so no rank leaves (and frees a buffer
  // that a peer is reading) early.
  struct Group {
    explicit Group(int world_size)
        : arrived(world_size, 0), finished(world_size, 0), posted(world_size, nullptr) {}
    std::vector<uint64_t> arrived;
    std::vector<uint64_t> finished;
    std::vector<const void*> posted;  // a LocalCommunicator's operation of that round
    absl::Status failed;              // first failure of the group; OK until then
  };

  struct Mailbox {
    std::deque<ControlMessage> messages;  // in arrival order
  };

  explicit LocalWorld(int world_size);

  const int world_size_;
  absl::Mutex mu_;
  absl::Status aborted_ ABSL_GUARDED_BY(mu_);
  std::vector<Mailbox> mailboxes_ ABSL_GUARDED_BY(mu_);              // one per rank
  std::vector<std::unique_ptr<Group>> groups_ ABSL_GUARDED_BY(mu_);  // stable addresses
  std::vector<int> num_groups_joined_ ABSL_GUARDED_BY(mu_);          // one per rank
};

}  // namespace herd::comm
