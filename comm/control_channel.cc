#include "comm/control_channel.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd::comm {
namespace {

// The channel's own tags for Broadcast and Gather.
constexpr int kBroadcastTag = kMaxControlTag + 1;
constexpr int kGatherTag = kMaxControlTag + 2;

absl::Status CheckTag(int tag) {
  if (tag < 0 || tag > kMaxControlTag) {
    return absl::InvalidArgumentError(
        absl::StrCat("control tag ", tag, " is outside [0, ", kMaxControlTag, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ControlChannel::CheckRank(int rank, bool allow_any) const {
  if ((rank >= 0 && rank < world_size()) || (allow_any && rank == kAnySource)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("rank ", rank, " is outside [0, ", world_size(), ")"));
}

absl::Status ControlChannel::Send(int dest_rank, int tag, absl::string_view payload,
                                  absl::Time deadline) {
  HERD_RETURN_IF_ERROR(CheckRank(dest_rank, /*allow_any=*/false));
  HERD_RETURN_IF_ERROR(CheckTag(tag));
  return SendImpl(dest_rank, tag, payload, deadline);
}

absl::StatusOr<ControlMessage> ControlChannel::Recv(int src_rank, int tag, absl::Time deadline) {
  HERD_RETURN_IF_ERROR(CheckRank(src_rank, /*allow_any=*/true));
  HERD_RETURN_IF_ERROR(CheckTag(tag));
  return RecvImpl(src_rank, tag, deadline);
}

absl::Status ControlChannel::Broadcast(int root_rank, std::string* payload, absl::Time deadline) {
  HERD_RETURN_IF_ERROR(CheckRank(root_rank, /*allow_any=*/false));
  if (rank() == root_rank) {
    // NOTE: one message per rank keeps blame exact: a receiver waits only for
    // the root, never for a relay that may itself be waiting on a dead rank.
    for (int r = 0; r < world_size(); ++r) {
      if (r == root_rank) continue;
      HERD_RETURN_IF_ERROR(SendImpl(r, kBroadcastTag, *payload, deadline));
    }
    return absl::OkStatus();
  }
  HERD_ASSIGN_OR_RETURN(ControlMessage message, RecvImpl(root_rank, kBroadcastTag, deadline));
  *payload = std::move(message.payload);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ControlChannel::Gather(int root_rank,
                                                                absl::string_view payload,
                                                                absl::Time deadline) {
  HERD_RETURN_IF_ERROR(CheckRank(root_rank, /*allow_any=*/false));
  std::vector<std::string> gathered;
  if (rank() != root_rank) {
    HERD_RETURN_IF_ERROR(SendImpl(root_rank, kGatherTag, payload, deadline));
    return gathered;
  }
  gathered.resize(world_size());
  gathered[root_rank] = std::string(payload);
  for (int r = 0; r < world_size(); ++r) {
    if (r == root_rank) continue;
    HERD_ASSIGN_OR_RETURN(ControlMessage message, RecvImpl(r, kGatherTag, deadline));
    gathered[r] = std::move(message.payload);
  }
  return gathered;
}

absl::Status ControlChannel::AgreeOnVerdict(
    absl::string_view payload,
    const std::function<std::string(const std::vector<std::string>&)>& judge, absl::Time deadline) {
  HERD_ASSIGN_OR_RETURN(std::vector<std::string> gathered, Gather(0, payload, deadline));
  std::string verdict;
  if (rank() == 0) verdict = judge(gathered);
  HERD_RETURN_IF_ERROR(Broadcast(0, &verdict, deadline));
  if (!verdict.empty()) return absl::FailedPreconditionError(verdict);
  return absl::OkStatus();
}

}  // namespace herd::comm
