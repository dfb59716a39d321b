// The local control channel: one mailbox per rank inside the LocalWorld.
// Send appends to the destination's mailbox; Recv waits on the world's mutex
// for the first matching message.
#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "comm/local_world.h"

namespace herd::comm {

class LocalControlChannel final : public ControlChannel {
 public:
  LocalControlChannel(std::shared_ptr<LocalWorld> world, int rank)
      : world_(std::move(world)), rank_(rank) {}

  const char* backend_name() const override { return "local"; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_->world_size(); }
  void Abort(absl::string_view reason) override { world_->Abort(rank_, reason); }

 protected:
  absl::Status SendImpl(int dest_rank, int tag, absl::string_view payload,
                        absl::Time deadline) override {
    absl::MutexLock lock(&world_->mu_);
    if (!world_->aborted_.ok()) return world_->aborted_;
    world_->mailboxes_[dest_rank].messages.push_back(
        ControlMessage{rank_, tag, std::string(payload)});
    return absl::OkStatus();
  }

  absl::StatusOr<ControlMessage> RecvImpl(int src_rank, int tag, absl::Time deadline) override {
    LocalWorld& w = *world_;
    std::deque<ControlMessage>* messages = nullptr;
    auto matches = [&](const ControlMessage& m) {
      return m.tag == tag && (src_rank == kAnySource || m.src_rank == src_rank);
    };
    absl::MutexLock lock(&w.mu_);
    messages = &w.mailboxes_[rank_].messages;
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(w.mu_) {
      return !w.aborted_.ok() || std::any_of(messages->begin(), messages->end(), matches);
    };
    w.mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
    if (!w.aborted_.ok()) return w.aborted_;
    auto it = std::find_if(messages->begin(), messages->end(), matches);
    if (it == messages->end()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "local control recv on rank ", rank_, ": no message with tag ", tag, " from ",
          src_rank == kAnySource ? std::string("any rank") : absl::StrCat("rank ", src_rank),
          " before the deadline"));
    }
    ControlMessage message = std::move(*it);
    messages->erase(it);
    return message;
  }

 private:
  const std::shared_ptr<LocalWorld> world_;
  const int rank_;
};

absl::StatusOr<std::unique_ptr<ControlChannel>> LocalWorld::CreateControlChannel(int rank) {
  if (rank < 0 || rank >= world_size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside the local world of ", world_size_));
  }
  return std::unique_ptr<ControlChannel>(new LocalControlChannel(shared_from_this(), rank));
}

}  // namespace herd::comm
