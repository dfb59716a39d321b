#include "coordinator/placement/recommend.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "coordinator/placement/metrics.h"
#include "core/status.h"

namespace herd {

absl::StatusOr<Recommendation> RecommendCluster(const LoadMatrix& loads,
                                                const RecommendOptions& options) {
  if (!(options.target >= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the imbalance target is max/mean rank load and must be >= 1.0, got ", options.target));
  }
  if (options.ranks_per_node < 1 || options.max_nodes < 1 || options.min_ranks < 1 ||
      options.max_redundant_per_rank < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ranks per node (", options.ranks_per_node, "), max nodes (", options.max_nodes,
        ") and min ranks (", options.min_ranks, ") must be >= 1 and max redundant per rank (",
        options.max_redundant_per_rank, ") >= 0"));
  }
  if (options.memory_per_rank_bytes <= 0 || options.memory.expert_bytes <= 0) {
    return absl::InvalidArgumentError(
        "--recommend needs the memory per rank and the size of an expert (--memory-per-rank with "
        "--model or --expert-bytes): without a memory limit one rank holding every expert is "
        "always perfectly balanced");
  }
  const int E = loads.num_experts, L = loads.num_layers;
  const int max_slots = MaxSlotsPerRank(L, options.memory, options.memory_per_rank_bytes);
  Recommendation result;
  int total_candidates = 0;
  for (int n = 1; n <= options.max_nodes; ++n) {
    const int G = n * options.ranks_per_node;
    const int min_s = (E + G - 1) / G;
    total_candidates +=
        std::max(0, std::min(max_slots, min_s + options.max_redundant_per_rank) - min_s + 1);
  }
  int done = 0;
  PlannerOptions planner = options.planner;
  planner.progress = nullptr;
  for (int n = 1; n <= options.max_nodes; ++n) {
    ClusterShape cluster;
    cluster.num_nodes = n;
    cluster.ranks_per_node = options.ranks_per_node;
    const int G = cluster.num_ranks();
    const int min_s = (E + G - 1) / G;
    const int last_s = std::min(max_slots, min_s + options.max_redundant_per_rank);
    if (G < options.min_ranks) {
      done += std::max(0, last_s - min_s + 1);
      continue;
    }
    for (int s = min_s; s <= last_s; ++s) {
      cluster.slots_per_rank = s;
      planner.mode = options.planner.mode;
      // Hierarchical only where this node count allows it.
      if (planner.mode == PlacementMode::kHierarchical && planner.num_groups % n != 0) {
        planner.mode = PlacementMode::kGlobal;
      }
      HERD_ASSIGN_OR_RETURN(PlanResult plan, PlanPlacement(loads, cluster, planner));
      ClusterCandidate c;
      c.cluster = cluster;
      c.num_redundant = cluster.num_slots() - E;
      c.imbalance =
          ScoreImbalance(plan.placement, loads, planner.split == ReplicaSplit::kWeighted).mean;
      c.lower_bound = LowerBoundSummary(loads, cluster.num_slots(), G).mean;
      c.bytes_per_rank = RankWeightBytes(L, s, options.memory);
      c.meets_target = c.imbalance <= options.target;
      result.tried.push_back(c);
      if (options.progress) options.progress(++done, total_candidates);
      if (c.meets_target) {
        result.found = true;
        result.best = c;
        return result;
      }
    }
  }
  return result;
}

}  // namespace herd
