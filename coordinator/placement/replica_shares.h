// Uneven token splits across replicas ("weighted" split).
//
// Once replicas are placed, the runtime may send an expert's tokens to its
// replicas in any proportion (ExpertPlacement::PickReplicaSlot honours the
// shares deterministically). Choosing the proportions to minimise the largest
// rank load is a min-max flow problem: experts send their load to the ranks
// holding their replicas, and every rank can take at most T minus what its
// single-replica experts already give it. Herd binary-searches T with a max
// flow (Dinic) and reads the shares off the final flow.
#pragma once

#include <cstdint>
#include <vector>

namespace herd {

// Per-slot shares (F64 [num_slots]; each expert's sum to 1) that minimise the
// largest rank load, to within 1e-7 of the mean rank load. `slot_expert` and
// `slot_rank` are I32 [num_slots]; loads `w` F64 [num_experts]. Experts with a
// single replica, zero load, or whose replicas all sit on one rank keep an
// even split. Never worse than the even split. Deterministic.
std::vector<double> BalanceReplicaShares(const double* w, int num_experts, int num_ranks,
                                         const std::vector<int32_t>& slot_expert,
                                         const std::vector<int32_t>& slot_rank);

}  // namespace herd
