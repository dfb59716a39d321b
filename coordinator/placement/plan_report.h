// What `herd plan` reports about a plan: imbalance per layer and overall
// before and after, the lower bounds and the gap to them, experts moved,
// dispatch traffic, memory per rank and runtime; as text or one JSON object.
//
// Imbalance is max / mean rank load (1.0 is perfect; the fixtures call it
// balancedness). "before" is the current placement when one is given,
// otherwise the default contiguous split with no replicas. "after" honours
// the plan's replica shares (an uneven split when planned with
// ReplicaSplit::kWeighted); "after_even_split" scores the same placement with
// every expert's tokens split evenly over its replicas, DeepSeek EPLB's load
// model, so it can be compared with EPLB directly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/placement/load_trace.h"
#include "coordinator/placement/memory_model.h"
#include "coordinator/placement/metrics.h"
#include "coordinator/placement/planner.h"
#include "coordinator/placement/recommend.h"
#include "core/placement.h"

namespace herd {

struct PlanReportInput {
  std::string trace_name;
  int snapshot = -1;  // -1: all snapshots summed
  int num_snapshots = 1;
  int top_k = 0;  // 0 when unknown
  // Tokens behind each layer's loads (for per-token traffic); 0 when unknown.
  double tokens = 0.0;
  const LoadMatrix* loads = nullptr;
  ClusterShape cluster;
  PlannerOptions options;
  const PlanResult* plan = nullptr;
  const ExpertPlacement* before = nullptr;
  bool before_is_current = false;
  // With a current placement: the plan made from scratch, for comparison.
  const ExpertPlacement* scratch = nullptr;
  std::optional<MemoryModel> memory;
  int64_t memory_per_rank_bytes = 0;  // 0: no limit given
  int64_t hidden_size = 0;            // 0: unknown (bytes are then not reported)
  int activation_bytes = 2;
  double runtime_seconds = 0.0;
  int threads = 1;
  std::optional<Recommendation> recommendation;
  double recommend_target = 0.0;
};

struct PlanReport {
  PlanReportInput input;
  ImbalanceSummary before;
  ImbalanceSummary after;             // with the plan's shares
  ImbalanceSummary after_even_split;  // even split over replicas
  ImbalanceSummary node_after;        // node loads (num_nodes > 1)
  ImbalanceSummary lower_bound;       // global bound, per layer
  // Hierarchical mode: the bound for plans that keep groups in nodes.
  std::optional<ImbalanceSummary> lower_bound_hierarchical;
  bool lower_bound_hierarchical_exact = true;
  double gap_to_lower_bound = 0.0;  // after.mean / (relevant bound).mean - 1
  MovedReplicas moved;              // from `before` to the plan
  int64_t duplicate_replicas = 0;
  std::optional<ImbalanceSummary> scratch_after;
  std::optional<MovedReplicas> scratch_moved;
  DispatchTraffic traffic;
  int64_t bytes_per_rank = 0;  // valid when input.memory is set
};

// Scores everything. Requires loads, plan and before (checked).
PlanReport BuildPlanReport(const PlanReportInput& input);

// Human-readable report, with a per-layer table.
std::string PlanReportText(const PlanReport& report);
// One JSON object (keys documented in docs/placement.md), with at least
// imbalance_before, imbalance_after, lower_bound, experts_moved and
// runtime_seconds.
std::string PlanReportJson(const PlanReport& report);

}  // namespace herd
