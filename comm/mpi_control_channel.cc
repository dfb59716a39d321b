#include "comm/mpi_control_channel.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/mpi_requests.h"
#include "comm/mpi_runtime.h"
#include "core/status.h"

namespace herd::comm {
namespace {

class MpiControlChannel final : public ControlChannel {
 public:
  MpiControlChannel(MPI_Comm comm, int rank, int world_size)
      : comm_(comm), rank_(rank), world_size_(world_size) {}

  // NOTE: the duplicate of MPI_COMM_WORLD is not freed. A peer may still have
  // sent on it (a call this rank gave up on, or one it never made because a
  // peer timed out first); Open MPI would hand the freed context id to the
  // next communicator, and those stale messages would match its receives.
  // MPI_Finalize releases it.
  ~MpiControlChannel() override = default;

  const char* backend_name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }

  void Abort(absl::string_view reason) override {
    std::fprintf(stderr, "herd: rank %d calls MPI_Abort: %.*s\n", rank_,
                 static_cast<int>(reason.size()), reason.data());
    std::fflush(stderr);
    MPI_Abort(comm_, 1);
    std::abort();  // NOTE: see MpiCommunicator::Abort
  }

 protected:
  absl::Status SendImpl(int dest_rank, int tag, absl::string_view payload,
                        absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(CheckUsable());
    if (payload.size() > static_cast<size_t>(kMaxMpiMessageBytes)) {
      return absl::InvalidArgumentError(absl::StrCat("control message of ", payload.size(),
                                                     " bytes is over ", kMaxMpiMessageBytes));
    }
    // A private copy: after a deadline MPI may still read it, so it is then
    // leaked on purpose instead of freed.
    auto copy = std::make_unique<std::string>(payload);
    MpiRequests requests(
        absl::StrCat("mpi control send to rank ", dest_rank, " tag ", tag, " on rank ", rank_));
    absl::Status status = requests.PostSend(copy->data(), static_cast<int64_t>(copy->size()),
                                            dest_rank, tag, comm_, /*post_empty=*/true);
    if (status.ok()) status = requests.WaitAll(deadline);
    if (!status.ok()) {
      (void)copy.release();
      return Fail(status);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ControlMessage> RecvImpl(int src_rank, int tag, absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(CheckUsable());
    const std::string what = absl::StrCat(
        "mpi control recv on rank ", rank_, " (tag ", tag, ", from ",
        src_rank == kAnySource ? std::string("any rank") : absl::StrCat("rank ", src_rank), ")");
    const absl::Time start = absl::Now();
    PollPacer pacer(GetCommEnv());
    MPI_Message handle = MPI_MESSAGE_NULL;
    MPI_Status status;
    while (true) {
      int found = 0;
      const int rc = MPI_Improbe(src_rank == kAnySource ? MPI_ANY_SOURCE : src_rank, tag, comm_,
                                 &found, &handle, &status);
      if (rc != MPI_SUCCESS) {
        return Fail(absl::InternalError(absl::StrCat(what, ": MPI_Improbe: ", MpiErrorString(rc))));
      }
      if (found) break;
      if (absl::Now() >= deadline) {
        // NOTE: nothing was posted, so a missed deadline leaves the channel usable.
        return absl::DeadlineExceededError(absl::StrCat(
            what, ": no message after ", absl::ToInt64Milliseconds(absl::Now() - start), " ms"));
      }
      pacer.Pause();
    }
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    ControlMessage message;
    message.src_rank = status.MPI_SOURCE;
    message.tag = status.MPI_TAG;
    auto payload = std::make_unique<std::string>(static_cast<size_t>(count), '\0');
    MPI_Request request = MPI_REQUEST_NULL;
    const int rc = MPI_Imrecv(payload->data(), count, MPI_BYTE, &handle, &request);
    if (rc != MPI_SUCCESS) {
      return Fail(absl::InternalError(absl::StrCat(what, ": MPI_Imrecv: ", MpiErrorString(rc))));
    }
    MpiRequests requests(what);
    requests.Track(request, /*is_recv=*/true, message.src_rank, count);
    const absl::Status received = requests.WaitAll(deadline);
    if (!received.ok()) {
      (void)payload.release();  // MPI may still write into it
      return Fail(received);
    }
    message.payload = std::move(*payload);
    return message;
  }

 private:
  absl::Status CheckUsable() const {
    absl::MutexLock lock(&mu_);
    if (failed_.ok()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat("mpi control channel on rank ", rank_,
                                                      " failed earlier: ", failed_.ToString()));
  }

  absl::Status Fail(absl::Status status) {
    absl::MutexLock lock(&mu_);
    if (!status.ok() && failed_.ok()) failed_ = status;
    return status;
  }

  MPI_Comm comm_;
  const int rank_;
  const int world_size_;
  mutable absl::Mutex mu_;
  absl::Status failed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<ControlChannel>> CreateMpiControlChannel(absl::Time deadline) {
  HERD_RETURN_IF_ERROR(InitializeMpi());
  HERD_ASSIGN_OR_RETURN(MPI_Comm comm, DupWorldComm("mpi control channel", deadline));
  int rank = 0;
  int world_size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &world_size);
  return std::unique_ptr<ControlChannel>(new MpiControlChannel(comm, rank, world_size));
}

}  // namespace herd::comm
