// Lower bounds on the imbalance (max rank load / mean rank load) of any
// placement, and the exact best assignment of expert groups to nodes.
//
// The definitions are those of the placement fixtures
// (tests/data/placement/README.md), so Herd's bounds can be checked against
// them number for number:
// * global: max(1, M / mean), where M = min over replica counts (sum R, each
//   >= 1) of max_e w_e / c_e (D'Hondt), mean = sum_e w_e / G; when R = E also
//   (max_e w_e + the S - 1 smallest w_e) / mean, S = R / G.
// * hierarchical: the minimum over assignments of K / N whole groups to each
//   node of max over nodes of max(node load / (G / N), M_node) / mean, with
//   M_node computed inside the node with R / N slots; never below the global
//   bound. It bounds placements that keep every group (and its replicas) in
//   one node.
// Both hold for any split of an expert's tokens over its replicas, even or
// not: some replica of e carries at least w_e / c_e.
#pragma once

#include <cstdint>
#include <vector>

namespace herd {

// Ratio >= 1; 1 when the total load is 0. Requires num_slots >= num_experts
// and num_ranks dividing num_slots (checked).
double GlobalLowerBound(const double* w, int num_experts, int num_slots, int num_ranks);

// Which node each expert group goes to.
struct GroupsToNodes {
  std::vector<int32_t> node_of_group;  // I32 [num_groups]
  // max over nodes of the node's bound, as a ratio to the mean rank load.
  double bound = 1.0;
  // True when every partition was enumerated (the bound is then exact).
  bool exact = true;
};

// Finds the assignment of num_groups / num_nodes whole groups to each node
// that minimises max over nodes of max(node load / ranks per node, M_node)
// (ratio to the mean rank load). With `slot_term` the node bound also uses
// (max w + the S - 1 smallest w in the node) when the node has no redundant
// slots, which the planner wants and the fixture's bound does not use.
// Enumerates all partitions when there are at most `max_partitions`;
// otherwise improves a greedy assignment by swapping groups (exact = false).
// Expert e is in group e / (num_experts / num_groups). Requires num_groups to
// divide num_experts and be a multiple of num_nodes, num_nodes to divide
// num_ranks and num_slots, and num_slots / num_nodes >= experts per node
// (checked).
GroupsToNodes AssignGroupsToNodes(const double* w, int num_experts, int num_groups, int num_nodes,
                                  int num_slots, int num_ranks, bool slot_term,
                                  int64_t max_partitions = 200000);

struct HierarchicalBound {
  double value = 1.0;
  bool exact = true;
};
// The hierarchical bound defined above (preconditions as AssignGroupsToNodes).
HierarchicalBound HierarchicalLowerBound(const double* w, int num_experts, int num_groups,
                                         int num_nodes, int num_slots, int num_ranks);

}  // namespace herd
