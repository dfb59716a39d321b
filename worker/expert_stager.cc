#include "worker/expert_stager.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace herd {

ExpertStager::~ExpertStager() { Join(); }

void ExpertStager::Join() {
  if (thread_.joinable()) thread_.join();
}

void ExpertStager::Start(uint64_t version, std::shared_ptr<const ExpertPlacement> placement,
                         std::shared_ptr<const ExpertTable> current, int rank,
                         std::string model_path) {
  Join();
  {
    absl::MutexLock lock(&mu_);
    version_ = version;
    done_ = false;
    status_ = absl::OkStatus();
    loaded_bytes_ = 0;
    staged_ = StagedPlacement();
  }
  thread_ = std::thread([this, version, placement = std::move(placement),
                         current = std::move(current), rank, model_path = std::move(model_path)] {
    absl::StatusOr<LoadedExperts> loaded =
        LoadExpertsForPlacement(*current, *placement, rank, model_path);
    absl::MutexLock lock(&mu_);
    done_ = true;
    if (!loaded.ok()) {
      status_ = loaded.status();
      return;
    }
    loaded_bytes_ = loaded->loaded_bytes;
    staged_ = {version, placement, std::move(loaded->table)};
  });
}

ExpertStager::Progress ExpertStager::progress() const {
  absl::MutexLock lock(&mu_);
  return {version_, done_, status_, loaded_bytes_};
}

absl::StatusOr<StagedPlacement> ExpertStager::Take(uint64_t version, absl::Duration* waited) {
  bool done;
  {
    absl::MutexLock lock(&mu_);
    if (version_ == 0 || version_ != version) {
      return absl::FailedPreconditionError(absl::StrCat(
          "placement version ", version, " was not staged on this rank (staged: ", version_, ")"));
    }
    done = done_;
  }
  const absl::Time start = absl::Now();
  Join();  // returns at once when the load is done
  if (waited != nullptr) *waited = done ? absl::ZeroDuration() : absl::Now() - start;
  absl::MutexLock lock(&mu_);
  version_ = 0;
  if (!status_.ok()) return status_;
  return std::move(staged_);
}

}  // namespace herd
