// Online expert rebalancing, the coordinator's half: watches the tokens routed
// to each expert over a sliding window of steps, re-plans the placement when
// it has become unbalanced, and drives the switch to the new one without
// stopping service.
//
// The protocol, one step at a time (the executor's step loop calls BeginStep
// before it sends a step's plans and EndStep with the step's results):
//   1. idle: once the window is full, min_interval_s has passed and the
//      current placement's imbalance over the window exceeds the threshold,
//      BeginStep plans a new placement (migration-aware, at most
//      max_experts_moved moves) and, if it lowers the imbalance, stages it:
//      the step's plans carry it, and every rank starts loading the experts it
//      gains on a background thread; steps keep running on the old placement.
//   2. staging: each step's results say which ranks have their experts ready.
//      A rank whose load failed abandons the rebalance (logged; the old
//      placement stays).
//   3. ready: once every rank reported ready, the next step's plans carry the
//      new version, and every rank swaps its expert table and routing before
//      that step: all switch at the same step boundary, and no step waits
//      for a load.
// Imbalance is max / mean rank load (1.0 is perfect), the mean over layers,
// with loads from the window's expert counts (metrics.h).
//
// Thread-safety: one thread (the step loop) calls BeginStep and EndStep;
// ServingMetrics is thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coordinator/metrics/serving_metrics.h"
#include "coordinator/placement/load_trace.h"
#include "core/config.h"
#include "core/placement.h"

namespace herd {

// The tokens routed to each expert over the last `capacity` steps.
class ExpertLoadWindow {
 public:
  // `capacity` >= 1 steps of `num_values` counts each (checked).
  ExpertLoadWindow(int64_t capacity, int64_t num_values);

  // Adds one step's counts, [layer * num_experts + expert] (num_values of
  // them, checked), dropping the oldest step once the window is full.
  void Push(const std::vector<int64_t>& counts);
  // The sum over the window's steps.
  const std::vector<int64_t>& totals() const { return totals_; }
  bool full() const { return static_cast<int64_t>(steps_.size()) == capacity_; }
  int64_t num_steps() const { return static_cast<int64_t>(steps_.size()); }

 private:
  const int64_t capacity_;
  std::deque<std::vector<int64_t>> steps_;
  std::vector<int64_t> totals_;
};

// What the next step's plans carry about the placement (RankStepPlan fields).
struct PlacementDirective {
  uint64_t placement_version = 1;
  uint64_t stage_version = 0;   // > 0: every rank starts loading stage_placement
  std::string stage_placement;  // PlacementToJson text
};

// One step's results, as far as rebalancing goes. Per-rank vectors have
// world_size entries.
struct RebalanceStepReport {
  // [layer * num_experts + expert]: tokens routed there in the step, all
  // ranks together.
  std::vector<int64_t> expert_tokens;
  std::vector<uint64_t> ready_version;    // RankStepResult::ready_version
  std::vector<int64_t> staged_bytes;      // RankStepResult::staged_bytes
  std::vector<std::string> stage_error;   // RankStepResult::stage_error
  std::vector<double> load_wait_seconds;  // RankStepResult::load_wait_seconds
};

// A placement planned from a window of loads, and what it does to them.
struct RebalancePlan {
  ExpertPlacement placement;
  double imbalance_before = 1.0;  // the current placement (shares applied)
  double imbalance_after = 1.0;   // the new one
  int64_t experts_moved = 0;      // replicas new to their rank, all layers
};

// Plans a placement for `loads` from `current` (migration-aware mode, weighted
// replica shares, same shape and slots per rank), keeping at most
// `max_experts_moved` moves (0 = no limit) by taking the new plan only for
// the layers that lower imbalance most per move. InvalidArgument when the
// current placement's ranks hold different slot counts; the planner's errors.
absl::StatusOr<RebalancePlan> PlanRebalance(const ExpertPlacement& current, const LoadMatrix& loads,
                                            int64_t max_experts_moved);

class Rebalancer {
 public:
  // `initial` is the placement the ranks start with (version 1); `metrics`
  // may be nullptr. `now` starts the min_interval_s clock. InvalidArgument for
  // an invalid config, fewer than two ranks, or ranks with different slot
  // counts (the planner keeps every rank's slot count).
  static absl::StatusOr<std::unique_ptr<Rebalancer>> Create(const RebalanceConfig& config,
                                                            const ExpertPlacement& initial,
                                                            ServingMetrics* metrics,
                                                            absl::Time now);

  // Before a step: the directive its plans carry. May plan (the planner runs
  // on the calling thread: milliseconds for serving-sized models).
  PlacementDirective BeginStep(absl::Time now);
  // After the step: its expert counts and the ranks' staging reports.
  void EndStep(const RebalanceStepReport& report, absl::Time now);

  uint64_t placement_version() const { return version_; }
  const ExpertPlacement& placement() const { return placement_; }
  // The current placement's imbalance over the window (1.0 when empty).
  double WindowImbalance() const;

 private:
  enum class State { kIdle, kStaging, kReady, kSwitching };

  Rebalancer(const RebalanceConfig& config, ExpertPlacement initial, ServingMetrics* metrics,
             absl::Time now);
  LoadMatrix WindowLoads() const;
  // Plans and stages when the trigger fires; leaves state_ kIdle otherwise.
  void MaybeStage(absl::Time now, PlacementDirective& directive);

  const RebalanceConfig config_;
  ServingMetrics* const metrics_;
  ExpertPlacement placement_;
  uint64_t version_ = 1;
  ExpertLoadWindow window_;
  State state_ = State::kIdle;
  // When the last rebalance ended (or the last plan that did not help, or
  // startup): the next may not start before min_interval_s after it.
  absl::Time last_end_;
  // Versions are never reused, so that a report about an abandoned staging
  // cannot be mistaken for one about the next.
  uint64_t next_version_ = 2;
  // The rebalance in progress (state_ != kIdle).
  ExpertPlacement pending_;
  uint64_t pending_version_ = 0;
  absl::Time staged_at_;
  int64_t pending_moves_ = 0;
  int64_t pending_bytes_ = 0;
};

}  // namespace herd
