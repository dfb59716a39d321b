// Even-split placement inside one balancing domain: a set of ranks with the
// same number of slots each and a set of experts that must live on them (the
// whole cluster in global mode, one node in hierarchical mode).
//
// Herd's algorithm, in three steps:
// 1. Replica counts by D'Hondt (apportion.h), at most one replica of an
//    expert per rank: a second copy on the same rank adds no parallelism.
// 2. A first placement by "largest replica first onto the least-loaded rank
//    that has a free slot and does not hold that expert yet".
// 3. Local search: repeatedly take the most loaded rank and make the swap of
//    two replicas with another rank that lowers the larger of the two ranks'
//    loads the most; when no swap helps, re-assign one slot (from an expert
//    with spare replicas to an expert on that rank, or from a replicated
//    expert on that rank to another expert), which changes two replica
//    counts. Every move lowers the most loaded rank and leaves every rank it
//    touches below it. Stops when nothing helps, or at the lower bound.
// Everything is deterministic (ties go to lower indices).
#pragma once

#include <cstdint>
#include <vector>

namespace herd {

// One domain's placement: I32 [num_ranks * slots_per_rank], rank-major, the
// (domain-local) expert held by each slot.
struct DomainPlacement {
  int num_ranks = 0;
  int slots_per_rank = 0;
  std::vector<int32_t> slot_expert;
};

// Loads are F64 [num_experts], >= 0. Requires num_ranks * slots_per_rank >=
// num_experts >= 1 (checked). Every expert gets at least one slot; no rank
// holds two replicas of an expert unless slots_per_rank > num_experts forces
// it, or `consider_duplicates` is set and a second plan that allows them
// (D'Hondt without the one-per-rank cap, largest-first packing, the same
// local search) has a lower maximum. Under an even split a duplicate acts as
// a double share on its rank, which sometimes balances better; under a
// weighted split one replica with the larger share does the same without
// wasting a slot, so the planner considers duplicates for even splits only.
DomainPlacement PackDomain(const double* w, int num_experts, int num_ranks, int slots_per_rank,
                           bool consider_duplicates);

// The replica cap PackDomain uses: num_ranks (one per rank) unless the slots
// outnumber experts x ranks, or duplicates are allowed.
int MaxReplicas(int num_experts, int num_ranks, int slots_per_rank, bool allow_duplicates);

// Rank loads of a domain placement with each expert's load split evenly over
// its replicas: F64 [num_ranks].
std::vector<double> DomainRankLoads(const double* w, int num_experts, const DomainPlacement& p);

// Migration: from an existing placement, makes the moves that lower the
// largest rank load the most per expert moved (a swap of two replicas moves
// two experts, re-assigning one slot moves one) until that load is at most
// `target_max_load` or no move lowers it. Returns whether the target was met.
bool MigrateDomain(const double* w, int num_experts, int max_replicas, double target_max_load,
                   DomainPlacement* p);

}  // namespace herd
