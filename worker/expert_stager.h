// Loads the experts of a new placement on a background thread while the rank
// keeps serving with the old one: the rank's half of online rebalancing.
//
// One load at a time: Start replaces the load before it (waiting for it to
// end first). The rank polls progress() once per step to report readiness to
// the coordinator, and calls Take when the coordinator switches placements.
//
// Thread-safety: Start, progress and Take are called by the thread that
// drives the engine; the load runs on a thread the stager owns and touches
// only what Start handed it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/placement.h"
#include "worker/expert_table.h"

namespace herd {

// A placement and the experts loaded for it, ready to swap into the engine.
struct StagedPlacement {
  uint64_t version = 0;
  std::shared_ptr<const ExpertPlacement> placement;
  std::shared_ptr<const ExpertTable> experts;
};

class ExpertStager {
 public:
  ExpertStager() = default;
  // Waits for a load in progress to end.
  ~ExpertStager();
  ExpertStager(const ExpertStager&) = delete;
  ExpertStager& operator=(const ExpertStager&) = delete;

  // Starts loading, on the stager's thread, the table `placement` gives
  // `rank` (LoadExpertsForPlacement from `current` and `model_path`), staged
  // as `version`. Drops whatever was staged before (joining its thread).
  void Start(uint64_t version, std::shared_ptr<const ExpertPlacement> placement,
             std::shared_ptr<const ExpertTable> current, int rank, std::string model_path);

  struct Progress {
    uint64_t version = 0;  // the version staged last; 0 = none
    bool done = false;     // its load has ended (see status)
    absl::Status status;   // when done: OK, or why the load failed
    int64_t loaded_bytes = 0;
  };
  Progress progress() const;

  // Hands over the staged placement `version`, waiting for its load to end
  // if it has not (the wait is returned in *waited, which may be null).
  // FailedPrecondition when `version` is not the one staged; the load's error
  // when it failed. The stager is empty afterwards.
  absl::StatusOr<StagedPlacement> Take(uint64_t version, absl::Duration* waited);

 private:
  void Join();

  std::thread thread_;
  mutable absl::Mutex mu_;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  int64_t loaded_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  StagedPlacement staged_ ABSL_GUARDED_BY(mu_);
};

}  // namespace herd
