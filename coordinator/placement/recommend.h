// The cluster-size search behind `herd plan --recommend`: the cheapest
// cluster (fewest ranks, then fewest redundant experts) whose planned
// placement meets an imbalance target and whose weights fit in memory.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/placement/load_trace.h"
#include "coordinator/placement/memory_model.h"
#include "coordinator/placement/planner.h"

namespace herd {

struct RecommendOptions {
  // Largest acceptable imbalance: mean over layers of max / mean rank load.
  double target = 1.05;
  // Nodes are added whole; the search tries 1..max_nodes nodes.
  int ranks_per_node = 8;
  int max_nodes = 64;
  // Fewer ranks are not considered (e.g. for throughput).
  int min_ranks = 1;
  // At most this many redundant experts per rank are tried (memory may stop
  // the search earlier).
  int max_redundant_per_rank = 8;
  MemoryModel memory;
  int64_t memory_per_rank_bytes = 0;
  // Mode, groups, split and threads for every plan; progress is replaced by
  // `progress` below.
  PlannerOptions planner;
  // Called after each candidate with (candidates done, upper bound on the
  // number of candidates).
  std::function<void(int, int)> progress;
};

struct ClusterCandidate {
  ClusterShape cluster;
  int num_redundant = 0;     // num_slots - num_experts
  double imbalance = 0.0;    // as scored for the target (split as planned)
  double lower_bound = 1.0;  // mean over layers of the global lower bound
  int64_t bytes_per_rank = 0;
  bool meets_target = false;
};

struct Recommendation {
  bool found = false;
  ClusterCandidate best;                // valid when found
  std::vector<ClusterCandidate> tried;  // in search order
};

// Tries node counts from small to large and, for each, slots per rank from
// the fewest that hold every expert up to what memory and
// max_redundant_per_rank allow; stops at the first candidate that meets the
// target. InvalidArgument for a target below 1, non-positive limits, or a
// memory limit missing (without one a single rank holding every expert is
// trivially balanced).
absl::StatusOr<Recommendation> RecommendCluster(const LoadMatrix& loads,
                                                const RecommendOptions& options);

}  // namespace herd
