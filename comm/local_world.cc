#include "comm/local_world.h"

#include "absl/strings/str_cat.h"

namespace herd::comm {

absl::StatusOr<std::shared_ptr<LocalWorld>> LocalWorld::Create(int world_size) {
  if (world_size < 1 || world_size > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("a local world needs 1 to 4096 ranks, got ", world_size));
  }
  return std::shared_ptr<LocalWorld>(new LocalWorld(world_size));
}

LocalWorld::LocalWorld(int world_size)
    : world_size_(world_size), mailboxes_(world_size), num_groups_joined_(world_size, 0) {}

void LocalWorld::Abort(int rank, absl::string_view reason) {
  absl::MutexLock lock(&mu_);
  if (aborted_.ok()) {
    aborted_ = absl::AbortedError(absl::StrCat("rank ", rank, " aborted: ", reason));
  }
}

}  // namespace herd::comm
