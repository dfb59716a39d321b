// The control plane: host messages between the ranks of a group (the
// coordinator's step plans to workers, sampled ids back, NCCL's unique id at
// start-up). Backends: `local` (threads of one process) and `mpi`.
//
// A message is a byte string sent to one rank with a tag; Recv takes the
// first message from a given source (or any) with a given tag, and messages
// from one source with one tag arrive in the order they were sent.
//
// Failures: Recv's DeadlineExceeded names the rank it waited for and leaves
// the channel usable (polling with short deadlines is fine). A Send that
// misses its deadline, a transport error, or Abort() fail the channel: later
// calls return FailedPrecondition (or Aborted) carrying the first error.
//
// Thread-safety: Send and Recv may be called from several threads at once
// (a coordinator thread and a worker thread of rank 0); Abort() from any.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace herd::comm {

// Recv from whichever rank sends first.
inline constexpr int kAnySource = -1;
// Tags callers may use are [0, kMaxControlTag]; higher ones are the channel's own.
inline constexpr int kMaxControlTag = 30000;

struct ControlMessage {
  int src_rank = -1;
  int tag = 0;
  std::string payload;
};

class ControlChannel {
 public:
  virtual ~ControlChannel() = default;

  // "local" or "mpi".
  virtual const char* backend_name() const = 0;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Sends a copy of `payload` to `dest_rank` (which may be this rank). local:
  // returns once queued. mpi: returns once Open MPI has taken the message (at
  // once for small messages; large ones wait for the receiver to match them),
  // or the deadline. Errors: InvalidArgument (rank or tag out of range),
  // DeadlineExceeded naming dest_rank, Aborted, FailedPrecondition, Internal.
  absl::Status Send(int dest_rank, int tag, absl::string_view payload, absl::Time deadline);

  // Receives the first message from `src_rank` (or kAnySource) with `tag`.
  // Errors: InvalidArgument, DeadlineExceeded naming src_rank (or "any
  // rank"), Aborted, FailedPrecondition, Internal.
  absl::StatusOr<ControlMessage> Recv(int src_rank, int tag, absl::Time deadline);

  // Copies `*payload` of `root_rank` into `*payload` on every rank (sizes may
  // differ: receivers' strings are replaced). Every rank calls it. Non-roots
  // wait only for the root. Errors as Send/Recv.
  absl::Status Broadcast(int root_rank, std::string* payload, absl::Time deadline);

  // Collects every rank's `payload` on `root_rank`: there, the payloads
  // indexed by rank; elsewhere, an empty vector. Every rank calls it. Errors
  // as Send/Recv (the root's DeadlineExceeded names the rank it waited for).
  absl::StatusOr<std::vector<std::string>> Gather(int root_rank, absl::string_view payload,
                                                  absl::Time deadline);
  // A check every rank must agree on: rank 0 gathers each rank's `payload`,
  // `judge` (called on rank 0 only) turns them into a verdict ("" = fine),
  // and every rank returns it, as FailedPrecondition when not empty. So a
  // problem one rank finds stops all of them with the same message.
  absl::Status AgreeOnVerdict(
      absl::string_view payload,
      const std::function<std::string(const std::vector<std::string>&)>& judge,
      absl::Time deadline);
  // Fails the channel everywhere. local: pending and later calls of every
  // rank of the world (channels and communicators) return Aborted naming this
  // rank and `reason`. mpi: MPI_Abort, which ends every process of the job
  // and does not return. Any thread.
  virtual void Abort(absl::string_view reason) = 0;

 protected:
  // Backends implement these; tags are already checked (internal tags above
  // kMaxControlTag included) and ranks are in range or kAnySource.
  virtual absl::Status SendImpl(int dest_rank, int tag, absl::string_view payload,
                                absl::Time deadline) = 0;
  virtual absl::StatusOr<ControlMessage> RecvImpl(int src_rank, int tag, absl::Time deadline) = 0;

 private:
  absl::Status CheckRank(int rank, bool allow_any) const;
};

}  // namespace herd::comm
