// Scores of a placement against expert loads.
//
// Imbalance of a layer = max rank load / mean rank load (1.0 is perfect,
// larger is worse), where mean = total load / num_ranks. This is the
// placement fixtures' "balancedness" and what `herd plan` reports. The serving
// metric herd:ep_balancedness is its inverse, mean / max (<= 1, SGLang's and
// vLLM's convention). Rank loads follow either the even split (each replica
// carries w_e / c_e: EPLB's load model, used for every comparison with EPLB)
// or the placement's shares (what the runtime does with a weighted split).
#pragma once

#include <cstdint>
#include <vector>

#include "coordinator/placement/load_trace.h"
#include "core/placement.h"

namespace herd {

// F64 [num_ranks]: the load of every rank in `layer`; `w` is F64 [num_experts].
std::vector<double> RankLoads(const ExpertPlacement& placement, int layer, const double* w,
                              bool use_shares);
// F64 [num_nodes]: the same summed per node.
std::vector<double> NodeLoads(const ExpertPlacement& placement, int layer, const double* w,
                              bool use_shares);
// max / mean of `loads`; 1 when they sum to 0.
double Imbalance(const std::vector<double>& loads);

struct ImbalanceSummary {
  std::vector<double> per_layer;
  double mean = 1.0;  // arithmetic mean over layers (the fixture's trace-level figure)
  double max = 1.0;   // worst layer
};
// Requires loads and placement to have the same layers and experts (checked).
ImbalanceSummary ScoreImbalance(const ExpertPlacement& placement, const LoadMatrix& loads,
                                bool use_shares);
ImbalanceSummary ScoreNodeImbalance(const ExpertPlacement& placement, const LoadMatrix& loads,
                                    bool use_shares);
// Mean over layers of the global lower bound (lower_bound.h) for `num_slots`
// slots on `num_ranks` ranks, and per layer.
ImbalanceSummary LowerBoundSummary(const LoadMatrix& loads, int num_slots, int num_ranks);

// Summed over layers: copies of an expert on a rank that already holds it.
int64_t DuplicateReplicas(const ExpertPlacement& placement);

struct MovedReplicas {
  int64_t moved = 0;  // replicas in `to` that `from` did not have on the same rank
  int64_t total = 0;  // replicas in `to`
  double fraction() const { return total > 0 ? static_cast<double>(moved) / total : 0.0; }
};
// Per rank and layer, the multiset difference to - from: the expert weights
// that must be copied to go from one placement to the other (the fixture's
// gpu_new_expert_frac). Requires the same layers and ranks (checked).
MovedReplicas CountMovedReplicas(const ExpertPlacement& from, const ExpertPlacement& to);

// Expected copies of a token's hidden state that dispatch sends per token,
// summed over layers, under this model: tokens start on ranks uniformly
// (data-parallel attention); a token routed to expert e (probability
// w_e / tokens) goes to the replica its share picks; choices of different
// experts are independent; a token crosses the network once per remote node
// that holds any of its experts (node-level deduplication, as DeepEP's
// internode dispatch does) and NVLink once per other rank of its own node that
// does. Forwarding inside a remote node is not counted. Combine returns the
// same amounts, so bytes per token = 2 * copies * hidden_size * activation
// bytes.
struct DispatchTraffic {
  double intra_node_copies_per_token = 0.0;
  double inter_node_copies_per_token = 0.0;
};
// `tokens` is the number of tokens behind `loads` (per layer); when <= 0 it is
// estimated as sum_e w_e / top_k, and with top_k <= 0 too the result is zero.
DispatchTraffic EstimateDispatchTraffic(const ExpertPlacement& placement, const LoadMatrix& loads,
                                        double tokens, int top_k);

}  // namespace herd
