#include "coordinator/scheduler/rebalancer.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/placement/metrics.h"
#include "coordinator/placement/planner.h"
#include "core/logging.h"
#include "core/status.h"

namespace herd {
namespace {

// A plan must lower the mean imbalance by at least this much to be worth
// moving experts for.
constexpr double kMinImbalanceGain = 0.01;

// Replicas `to` puts on a rank of `layer` that `from` does not have there
// (multiset difference per rank): the experts that rank must load.
int64_t LayerMoves(const ExpertPlacement& from, const ExpertPlacement& to, int layer) {
  int64_t moves = 0;
  for (int rank = 0; rank < to.num_ranks(); ++rank) {
    std::vector<int32_t> had(from.RankExperts(layer, rank).begin(),
                             from.RankExperts(layer, rank).end());
    for (int32_t e : to.RankExperts(layer, rank)) {
      auto it = std::find(had.begin(), had.end(), e);
      if (it == had.end()) {
        ++moves;
      } else {
        had.erase(it);
      }
    }
  }
  return moves;
}

double LayerImbalance(const ExpertPlacement& placement, int layer, const LoadMatrix& loads) {
  return Imbalance(RankLoads(placement, layer, loads.Layer(layer), /*use_shares=*/true));
}

}  // namespace

ExpertLoadWindow::ExpertLoadWindow(int64_t capacity, int64_t num_values)
    : capacity_(capacity), totals_(num_values, 0) {
  HERD_CHECK(capacity >= 1 && num_values >= 0);
}

void ExpertLoadWindow::Push(const std::vector<int64_t>& counts) {
  HERD_CHECK(counts.size() == totals_.size());
  for (size_t i = 0; i < counts.size(); ++i) totals_[i] += counts[i];
  steps_.push_back(counts);
  if (static_cast<int64_t>(steps_.size()) > capacity_) {
    const std::vector<int64_t>& oldest = steps_.front();
    for (size_t i = 0; i < oldest.size(); ++i) totals_[i] -= oldest[i];
    steps_.pop_front();
  }
}

absl::StatusOr<RebalancePlan> PlanRebalance(const ExpertPlacement& current, const LoadMatrix& loads,
                                            int64_t max_experts_moved) {
  const int slots_per_rank = current.UniformSlotsPerRank();
  if (slots_per_rank < 1) {
    return absl::InvalidArgumentError(
        "rebalancing keeps every rank's slot count, so the placement's ranks must all hold the "
        "same number of slots in every layer");
  }
  ClusterShape cluster;
  cluster.num_nodes = current.num_nodes();
  cluster.ranks_per_node = current.ranks_per_node();
  cluster.slots_per_rank = slots_per_rank;
  HERD_ASSIGN_OR_RETURN(PlanResult planned,
                        PlanPlacement(loads, cluster, PlannerOptions(), &current));

  struct LayerGain {
    int layer;
    double before, after;
    int64_t moves;
  };
  const int num_layers = current.num_layers();
  std::vector<LayerGain> gains;
  RebalancePlan plan;
  std::vector<double> after(num_layers);
  double before_sum = 0;
  for (int l = 0; l < num_layers; ++l) {
    const LayerGain g{l, LayerImbalance(current, l, loads),
                      LayerImbalance(planned.placement, l, loads),
                      LayerMoves(current, planned.placement, l)};
    before_sum += g.before;
    after[l] = g.before;
    if (g.after < g.before) gains.push_back(g);
  }
  // Most imbalance removed per expert moved first; layers whose plan moves
  // nothing (shares only) are free.
  std::sort(gains.begin(), gains.end(), [](const LayerGain& a, const LayerGain& b) {
    return (a.before - a.after) * std::max<int64_t>(b.moves, 1) >
           (b.before - b.after) * std::max<int64_t>(a.moves, 1);
  });
  std::vector<LayerPlacementSpec> specs(num_layers);
  for (int l = 0; l < num_layers; ++l) specs[l] = current.LayerSpec(l);
  for (const LayerGain& g : gains) {
    if (max_experts_moved > 0 && plan.experts_moved + g.moves > max_experts_moved) continue;
    specs[g.layer] = planned.placement.LayerSpec(g.layer);
    after[g.layer] = g.after;
    plan.experts_moved += g.moves;
  }
  HERD_ASSIGN_OR_RETURN(plan.placement,
                        ExpertPlacement::Create(current.num_experts(), current.num_ranks(),
                                                current.num_nodes(), std::move(specs)));
  plan.imbalance_before = num_layers > 0 ? before_sum / num_layers : 1.0;
  plan.imbalance_after =
      num_layers > 0 ? std::accumulate(after.begin(), after.end(), 0.0) / num_layers : 1.0;
  return plan;
}

absl::StatusOr<std::unique_ptr<Rebalancer>> Rebalancer::Create(const RebalanceConfig& config,
                                                               const ExpertPlacement& initial,
                                                               ServingMetrics* metrics,
                                                               absl::Time now) {
  HERD_RETURN_IF_ERROR(config.Validate());
  if (initial.num_ranks() < 2) {
    return absl::InvalidArgumentError(
        "rebalancing needs expert parallelism: run several ranks (mpirun -np N or --local-ranks "
        "N, N >= 2)");
  }
  if (initial.UniformSlotsPerRank() < 1) {
    return absl::InvalidArgumentError(
        "rebalancing needs a placement whose ranks all hold the same number of slots in every "
        "layer (the planner keeps each rank's slot count)");
  }
  return std::unique_ptr<Rebalancer>(new Rebalancer(config, initial, metrics, now));
}

Rebalancer::Rebalancer(const RebalanceConfig& config, ExpertPlacement initial,
                       ServingMetrics* metrics, absl::Time now)
    : config_(config),
      metrics_(metrics),
      placement_(std::move(initial)),
      window_(config.window_steps,
              static_cast<int64_t>(placement_.num_layers()) * placement_.num_experts()),
      last_end_(now) {}

LoadMatrix Rebalancer::WindowLoads() const {
  LoadMatrix loads;
  loads.num_layers = placement_.num_layers();
  loads.num_experts = placement_.num_experts();
  loads.values.assign(window_.totals().begin(), window_.totals().end());
  return loads;
}

double Rebalancer::WindowImbalance() const {
  return ScoreImbalance(placement_, WindowLoads(), /*use_shares=*/true).mean;
}

void Rebalancer::MaybeStage(absl::Time now, PlacementDirective& directive) {
  if (!window_.full() || now - last_end_ < absl::Seconds(config_.min_interval_s)) return;
  const double imbalance = WindowImbalance();
  if (imbalance <= config_.threshold) return;
  // Whatever comes of it, the next attempt waits min_interval_s.
  last_end_ = now;
  const absl::Time plan_start = absl::Now();
  absl::StatusOr<RebalancePlan> plan =
      PlanRebalance(placement_, WindowLoads(), config_.max_experts_moved);
  if (!plan.ok()) {
    HERD_LOG(WARN) << "rebalance: planning failed, keeping placement version " << version_ << ": "
                   << plan.status();
    return;
  }
  const std::string summary = absl::StrFormat(
      "imbalance %.3f -> %.3f over the last %d steps, %d expert(s) to move, planned in %.1f ms",
      plan->imbalance_before, plan->imbalance_after, window_.num_steps(), plan->experts_moved,
      absl::ToDoubleMilliseconds(absl::Now() - plan_start));
  if (plan->imbalance_after > plan->imbalance_before - kMinImbalanceGain) {
    HERD_LOG(INFO) << "rebalance: no better placement (" << summary << ")";
    return;
  }
  pending_ = std::move(plan->placement);
  pending_version_ = next_version_++;
  pending_moves_ = plan->experts_moved;
  staged_at_ = now;
  state_ = State::kStaging;
  directive.stage_version = pending_version_;
  directive.stage_placement = PlacementToJson(pending_);
  HERD_LOG(INFO) << "rebalance: staging placement version " << pending_version_ << " (" << summary
                 << ")";
}

PlacementDirective Rebalancer::BeginStep(absl::Time now) {
  PlacementDirective directive;
  directive.placement_version = version_;
  switch (state_) {
    case State::kIdle:
      MaybeStage(now, directive);
      break;
    case State::kStaging:
      break;
    case State::kReady:
      directive.placement_version = pending_version_;
      state_ = State::kSwitching;
      break;
    case State::kSwitching:
      // NOTE: EndStep always follows a kSwitching BeginStep; a step whose
      // results never came ended the loop.
      directive.placement_version = pending_version_;
      break;
  }
  return directive;
}

void Rebalancer::EndStep(const RebalanceStepReport& report, absl::Time now) {
  if (!report.expert_tokens.empty()) window_.Push(report.expert_tokens);
  const bool waited = std::any_of(report.load_wait_seconds.begin(), report.load_wait_seconds.end(),
                                  [](double s) { return s > 0; });
  if (waited && metrics_ != nullptr) metrics_->AddRebalanceBlockedSteps(1);
  switch (state_) {
    case State::kIdle:
    case State::kReady:
      break;
    case State::kStaging: {
      for (size_t rank = 0; rank < report.stage_error.size(); ++rank) {
        if (report.stage_error[rank].empty()) continue;
        HERD_LOG(ERROR) << "rebalance: rank " << rank << " could not load placement version "
                        << pending_version_ << ", keeping version " << version_ << ": "
                        << report.stage_error[rank];
        state_ = State::kIdle;
        last_end_ = now;
        return;
      }
      const bool all_ready = std::all_of(report.ready_version.begin(), report.ready_version.end(),
                                         [this](uint64_t v) { return v == pending_version_; });
      if (!all_ready) break;
      pending_bytes_ =
          std::accumulate(report.staged_bytes.begin(), report.staged_bytes.end(), int64_t{0});
      if (metrics_ != nullptr)
        metrics_->ObserveRebalanceSeconds(absl::ToDoubleSeconds(now - staged_at_));
      state_ = State::kReady;
      break;
    }
    case State::kSwitching:
      placement_ = std::move(pending_);
      version_ = pending_version_;
      state_ = State::kIdle;
      last_end_ = now;
      if (metrics_ != nullptr) {
        metrics_->SetPlacementVersion(static_cast<int64_t>(version_));
        metrics_->AddExpertBytesMoved(pending_bytes_);
      }
      HERD_LOG(INFO) << "rebalance: switched to placement version " << version_ << " ("
                     << pending_moves_ << " expert(s), " << pending_bytes_
                     << " bytes loaded in the background in "
                     << absl::FormatDuration(now - staged_at_) << ")";
      break;
  }
  if (metrics_ != nullptr) metrics_->SetPlacementImbalance(WindowImbalance());
}

}  // namespace herd
