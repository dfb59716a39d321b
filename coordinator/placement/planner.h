// The expert placement planner: per-layer expert loads and a cluster shape in,
// an ExpertPlacement (physical slots -> logical experts, with replicas and the
// token share of each replica) out. It minimises the largest rank load.
//
// Modes:
// * global: any expert anywhere; the whole cluster is one balancing domain
//   (packing.h).
// * hierarchical: every expert group, with all replicas of its experts, stays
//   inside one node, so a token of a group-limited router (DeepSeek-V3) sends
//   its hidden state to few nodes. Groups go to nodes by the exact minimum of
//   the node-level bound (lower_bound.h), then every node is a domain.
// * migration-aware (a current placement is given): per layer, start from the
//   current placement and make the moves that lower the largest rank load
//   most per expert moved, until it is within (1 + balance_tolerance) of what
//   planning from scratch reaches; if that fails, or would move more experts
//   than the scratch plan, take the scratch plan with its ranks renumbered to
//   keep as many experts in place as possible.
//
// Replica token split: kEven splits every expert's tokens evenly over its
// replicas (the load model of DeepSeek's EPLB and of the fixture's score);
// kWeighted (default) plans for the even split and then sets uneven shares
// that lower the largest rank load further (replica_shares.h). Both are
// reported by metrics.h.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/placement/load_trace.h"
#include "core/placement.h"

namespace herd {

enum class PlacementMode { kAuto, kGlobal, kHierarchical };
const char* PlacementModeName(PlacementMode mode);
// "auto", "global" or "hierarchical"; InvalidArgument otherwise.
absl::StatusOr<PlacementMode> ParsePlacementMode(absl::string_view text);

enum class ReplicaSplit { kEven, kWeighted };
const char* ReplicaSplitName(ReplicaSplit split);
absl::StatusOr<ReplicaSplit> ParseReplicaSplit(absl::string_view text);

struct ClusterShape {
  int num_nodes = 1;
  int ranks_per_node = 1;
  // Expert slots on every rank, logical and redundant together; the cluster
  // has num_ranks() * slots_per_rank slots per layer.
  int slots_per_rank = 1;

  int num_ranks() const { return num_nodes * ranks_per_node; }
  int num_slots() const { return num_ranks() * slots_per_rank; }
  // InvalidArgument unless all counts are >= 1 and there is a slot for every
  // expert (num_slots >= num_experts).
  absl::Status Validate(int num_experts) const;
};

// The slots per rank for `num_experts` logical plus `num_redundant` redundant
// experts; InvalidArgument naming the numbers when the ranks do not divide
// them evenly.
absl::StatusOr<int> SlotsPerRank(int num_experts, int num_redundant, int num_ranks);

struct PlannerOptions {
  // kAuto: hierarchical when there are several groups and several nodes and
  // the number of nodes divides the number of groups (the rule of DeepSeek's
  // EPLB), global otherwise. kHierarchical with groups that nodes do not
  // divide is an error.
  PlacementMode mode = PlacementMode::kAuto;
  // Expert groups: expert e is in group e / (num_experts / num_groups).
  int num_groups = 1;
  ReplicaSplit split = ReplicaSplit::kWeighted;
  // Migration-aware mode only: the accepted loss of balance per layer: the
  // migrated layer's largest rank load (even split) may exceed the
  // from-scratch plan's by this fraction (0.02 = 2%). Shares are set after.
  double balance_tolerance = 0.02;
  // Threads planning layers in parallel (the calling thread included).
  int num_threads = 1;
  // Called after each planned layer with (layers done, num_layers); calls are
  // serialised but may come from any planning thread.
  std::function<void(int, int)> progress;
};

struct PlanResult {
  ExpertPlacement placement;
  PlacementMode mode = PlacementMode::kGlobal;  // the mode used (kAuto resolved)
  // Hierarchical mode: I32 [num_layers][num_groups], the node of each group.
  std::vector<std::vector<int32_t>> node_of_group;
  // Migration-aware mode: per layer, whether the from-scratch plan (ranks
  // renumbered) was taken because moving experts could not reach the target.
  std::vector<bool> used_scratch_plan;
  // Migration-aware mode: the from-scratch plan the tolerance refers to.
  std::vector<double> scratch_imbalance;  // per layer, even split
};

// Plans every layer of `loads`. `current` (optional) switches on
// migration-aware mode and must have the same experts, layers and ranks.
// Errors (InvalidArgument, naming the numbers): a shape that does not fit the
// experts, groups that do not divide the experts, hierarchical mode with
// groups the nodes do not divide or with fewer slots per node than experts
// per node, a current placement of another shape, negative or non-finite
// loads.
absl::StatusOr<PlanResult> PlanPlacement(const LoadMatrix& loads, const ClusterShape& cluster,
                                         const PlannerOptions& options,
                                         const ExpertPlacement* current = nullptr);

// The mode kAuto resolves to (see PlannerOptions::mode).
PlacementMode ResolveMode(PlacementMode mode, int num_groups, int num_nodes);

}  // namespace herd
