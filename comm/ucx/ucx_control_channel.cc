#include "comm/ucx/ucx_control_channel.h"

#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/ucx/ucx_requests.h"
#include "comm/ucx/ucx_world.h"
#include "core/status.h"

namespace herd::comm {
namespace {

class UcxControlChannel final : public ControlChannel {
 public:
  UcxControlChannel(UcxWorld& world, uint16_t channel) : world_(world), channel_(channel) {}

  // What this rank sent last should reach its peers even if the process
  // exits right after. A failed channel has a peer that may never take its
  // data, so it does not wait.
  ~UcxControlChannel() override {
    if (CheckUsable().ok()) world_.Flush(absl::Now() + absl::Seconds(5));
  }

  const char* backend_name() const override { return "ucx"; }
  int rank() const override { return world_.rank(); }
  int world_size() const override { return world_.world_size(); }

  void Abort(absl::string_view reason) override { world_.AbortChannel(channel_, reason); }

 protected:
  absl::Status SendImpl(int dest_rank, int tag, absl::string_view payload,
                        absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(CheckUsable());
    // A private copy: after a deadline UCP may still read it, so it is then
    // left to UCP on purpose instead of freed.
    auto copy = std::make_unique<std::string>(payload);
    absl::Status status;
    {
      UcxRequests requests(
          world_, channel_,
          absl::StrCat("ucx control send to rank ", dest_rank, " tag ", tag, " on rank ", rank()));
      status = requests.PostSend(dest_rank, static_cast<uint32_t>(tag), copy->data(),
                                 static_cast<int64_t>(copy->size()), /*post_empty=*/true);
      if (status.ok()) status = requests.WaitAll(deadline);
    }
    if (!status.ok()) {
      (void)copy.release();
      return Fail(status);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ControlMessage> RecvImpl(int src_rank, int tag, absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(CheckUsable());
    const std::string what = absl::StrCat(
        "ucx control recv on rank ", rank(), " (tag ", tag, ", from ",
        src_rank == kAnySource ? std::string("any rank") : absl::StrCat("rank ", src_rank), ")");
    const uint64_t want =
        MakeUcxTag(channel_, src_rank == kAnySource ? 0 : src_rank, static_cast<uint32_t>(tag));
    const uint64_t mask = src_rank == kAnySource ? kUcxAnySourceMask : kUcxExactMask;
    const absl::Time start = absl::Now();
    PollPacer pacer(GetCommEnv());
    ucp_tag_message_h message = nullptr;
    ucp_tag_recv_info_t info{};
    while (true) {
      {
        absl::MutexLock lock(&world_.mu());
        ucp_worker_progress(world_.worker());
        message = ucp_tag_probe_nb(world_.worker(), want, mask, /*remove=*/1, &info);
        if (message != nullptr) break;
        if (absl::Status aborted = world_.ChannelAbortStatus(channel_); !aborted.ok()) {
          return Fail(aborted);
        }
        if (src_rank != kAnySource && !world_.PeerError(src_rank).empty()) {
          return Fail(absl::InternalError(absl::StrCat(what, ": connection to rank ", src_rank,
                                                       " failed: ", world_.PeerError(src_rank))));
        }
      }
      if (absl::Now() >= deadline) {
        // NOTE: nothing was taken, so a missed deadline leaves the channel usable.
        return absl::DeadlineExceededError(absl::StrCat(
            what, ": no message after ", absl::ToInt64Milliseconds(absl::Now() - start), " ms"));
      }
      pacer.Pause();
    }
    ControlMessage result;
    result.src_rank = UcxTagSource(info.sender_tag);
    result.tag = tag;
    auto payload = std::make_unique<std::string>(info.length, '\0');
    absl::Status received;
    {
      UcxRequests requests(world_, channel_, what);
      received = requests.PostProbedRecv(message, result.src_rank, payload->data(),
                                         static_cast<int64_t>(info.length));
      if (received.ok()) received = requests.WaitAll(deadline);
    }
    if (!received.ok()) {
      (void)payload.release();  // UCP may still write into it
      return Fail(received);
    }
    result.payload = std::move(*payload);
    return result;
  }

 private:
  absl::Status CheckUsable() {
    {
      absl::MutexLock lock(&world_.mu());
      HERD_RETURN_IF_ERROR(world_.ChannelAbortStatus(channel_));
    }
    absl::MutexLock lock(&mu_);
    if (failed_.ok()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat("ucx control channel on rank ", rank(),
                                                      " failed earlier: ", failed_.ToString()));
  }

  absl::Status Fail(absl::Status status) {
    absl::MutexLock lock(&mu_);
    if (!status.ok() && failed_.ok()) failed_ = status;
    return status;
  }

  UcxWorld& world_;
  const uint16_t channel_;
  mutable absl::Mutex mu_;
  absl::Status failed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<ControlChannel>> CreateUcxControlChannel(absl::Time deadline) {
  HERD_ASSIGN_OR_RETURN(UcxWorld * world, UcxWorld::Join(deadline));
  return std::unique_ptr<ControlChannel>(new UcxControlChannel(*world, world->NewChannelId()));
}

}  // namespace herd::comm
