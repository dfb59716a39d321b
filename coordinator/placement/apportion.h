// Replica counts: how many slots each expert gets.
//
// Giving expert e c_e replicas and splitting its load evenly makes each
// replica carry w_e / c_e. The D'Hondt (greatest-divisor) rule hands out
// slots one at a time to the expert whose replicas are currently heaviest;
// it minimises the largest replica load max_e w_e / c_e exactly, which makes
// it both the planner's starting point and the basis of the lower bound.
#pragma once

#include <cstdint>
#include <vector>

namespace herd {

// Replica counts for `num_experts` experts with loads `w` (F64 [num_experts],
// >= 0) sharing `num_slots` slots: every expert gets one, and the
// num_slots - num_experts extra slots go by D'Hondt, never giving an expert
// more than `max_replicas` (pass num_slots for no cap). When the cap stops
// every expert, the remaining slots go round-robin over experts in order of
// load (they would otherwise stay empty). Ties go to the lower expert index,
// so the result is deterministic. Requires num_slots >= num_experts >= 1 and
// max_replicas >= 1 (checked).
std::vector<int32_t> ApportionReplicas(const double* w, int num_experts, int num_slots,
                                       int max_replicas);

// max_e w_e / counts_e.
double MaxReplicaLoad(const double* w, const std::vector<int32_t>& counts);

}  // namespace herd
