#include "coordinator/placement/planner.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <numeric>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "coordinator/placement/lower_bound.h"
#include "coordinator/placement/packing.h"
#include "coordinator/placement/replica_shares.h"
#include "core/status.h"
#include "core/thread_pool.h"

namespace herd {
namespace {

// One layer's even-split plan: I32 [num_ranks * slots_per_rank], rank-major.
struct LayerSlots {
  std::vector<int32_t> slot_expert;
  std::vector<int32_t> node_of_group;  // hierarchical only
};

struct LayerOutput {
  LayerPlacementSpec spec;
  std::vector<int32_t> node_of_group;
  bool used_scratch = false;
  double scratch_imbalance = 1.0;
};

double MaxRankLoad(const double* w, int num_experts, const ClusterShape& c,
                   const std::vector<int32_t>& slot_expert) {
  DomainPlacement p{c.num_ranks(), c.slots_per_rank, slot_expert};
  const std::vector<double> loads = DomainRankLoads(w, num_experts, p);
  return *std::max_element(loads.begin(), loads.end());
}

// The experts of each node under a group -> node assignment, ascending.
std::vector<std::vector<int32_t>> NodeExperts(const std::vector<int32_t>& node_of_group,
                                              int num_experts, int num_nodes) {
  const int group_size = num_experts / static_cast<int>(node_of_group.size());
  std::vector<std::vector<int32_t>> experts(num_nodes);
  for (int e = 0; e < num_experts; ++e) experts[node_of_group[e / group_size]].push_back(e);
  return experts;
}

LayerSlots PlanFromScratch(const double* w, int num_experts, const ClusterShape& c,
                           PlacementMode mode, int num_groups, bool even_split) {
  LayerSlots out;
  if (mode == PlacementMode::kGlobal) {
    out.slot_expert =
        PackDomain(w, num_experts, c.num_ranks(), c.slots_per_rank, even_split).slot_expert;
    return out;
  }
  out.node_of_group = AssignGroupsToNodes(w, num_experts, num_groups, c.num_nodes, c.num_slots(),
                                          c.num_ranks(), /*slot_term=*/true)
                          .node_of_group;
  out.slot_expert.assign(c.num_slots(), -1);
  const auto node_experts = NodeExperts(out.node_of_group, num_experts, c.num_nodes);
  const int node_slots = c.ranks_per_node * c.slots_per_rank;
  for (int n = 0; n < c.num_nodes; ++n) {
    const std::vector<int32_t>& ids = node_experts[n];
    std::vector<double> local(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) local[i] = w[ids[i]];
    const DomainPlacement p = PackDomain(local.data(), static_cast<int>(ids.size()),
                                         c.ranks_per_node, c.slots_per_rank, even_split);
    for (int s = 0; s < node_slots; ++s)
      out.slot_expert[n * node_slots + s] = ids[p.slot_expert[s]];
  }
  return out;
}

// Multiset overlap of two slot lists.
int Overlap(const int32_t* a, const int32_t* b, int n) {
  int common = 0;
  std::vector<char> used(n, 0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      if (!used[j] && a[i] == b[j]) {
        used[j] = 1;
        ++common;
        break;
      }
    }
  }
  return common;
}

// Greedy matching of `num` new units to old units by overlap (largest first);
// returns new unit -> old unit.
std::vector<int> GreedyMatch(int num, const std::function<int(int, int)>& overlap) {
  struct Pair {
    int common, fresh, old;
  };
  std::vector<Pair> pairs;
  for (int f = 0; f < num; ++f) {
    for (int o = 0; o < num; ++o) {
      const int common = overlap(f, o);
      if (common > 0) pairs.push_back({common, f, o});
    }
  }
  std::stable_sort(pairs.begin(), pairs.end(),
                   [](const Pair& a, const Pair& b) { return a.common > b.common; });
  std::vector<int> to_old(num, -1);
  std::vector<char> taken(num, 0);
  for (const Pair& p : pairs) {
    if (to_old[p.fresh] < 0 && !taken[p.old]) {
      to_old[p.fresh] = p.old;
      taken[p.old] = 1;
    }
  }
  int next_free = 0;
  for (int f = 0; f < num; ++f) {
    if (to_old[f] >= 0) continue;
    while (taken[next_free]) ++next_free;
    to_old[f] = next_free;
    taken[next_free] = 1;
  }
  return to_old;
}

// Renumbers the ranks of a fresh plan so that as many replicas as possible
// stay where `current` has them. Nodes move as a whole (hierarchical plans
// keep their groups inside nodes); ranks move within their node.
std::vector<int32_t> RenumberLike(const std::vector<int32_t>& fresh,
                                  const std::vector<int32_t>& current, const ClusterShape& c) {
  const int S = c.slots_per_rank;
  const int node_slots = c.ranks_per_node * S;
  std::vector<int> node_to_old(c.num_nodes, 0);
  if (c.num_nodes > 1) {
    node_to_old = GreedyMatch(c.num_nodes, [&](int f, int o) {
      return Overlap(fresh.data() + f * node_slots, current.data() + o * node_slots, node_slots);
    });
  }
  std::vector<int32_t> out(fresh.size());
  for (int n = 0; n < c.num_nodes; ++n) {
    const int old_node = node_to_old[n];
    const std::vector<int> rank_to_old = GreedyMatch(c.ranks_per_node, [&](int f, int o) {
      return Overlap(fresh.data() + n * node_slots + f * S,
                     current.data() + old_node * node_slots + o * S, S);
    });
    for (int r = 0; r < c.ranks_per_node; ++r) {
      const int32_t* src = fresh.data() + n * node_slots + r * S;
      const int32_t* old = current.data() + old_node * node_slots + rank_to_old[r] * S;
      int32_t* dst = out.data() + old_node * node_slots + rank_to_old[r] * S;
      // Keep experts that stay on this rank in their old slot index.
      std::vector<int32_t> pending(src, src + S);
      std::vector<char> filled(S, 0);
      for (int i = 0; i < S; ++i) {
        auto it = std::find(pending.begin(), pending.end(), old[i]);
        if (it != pending.end()) {
          dst[i] = *it;
          filled[i] = 1;
          pending.erase(it);
        }
      }
      size_t k = 0;
      for (int i = 0; i < S; ++i) {
        if (!filled[i]) dst[i] = pending[k++];
      }
    }
  }
  return out;
}

// Replicas in `to` that `from` did not have on the same rank.
int64_t MovedReplicas(const std::vector<int32_t>& from, const std::vector<int32_t>& to, int S) {
  int64_t moved = 0;
  for (size_t r = 0; r * S < to.size(); ++r) {
    moved += S - Overlap(from.data() + r * S, to.data() + r * S, S);
  }
  return moved;
}

// Group -> node of `slots` if every group's replicas sit in one node and each
// node has num_groups / num_nodes groups; empty otherwise.
std::vector<int32_t> HierarchicalGroupsOf(const std::vector<int32_t>& slots, int num_experts,
                                          int num_groups, const ClusterShape& c) {
  const int group_size = num_experts / num_groups;
  const int node_slots = c.ranks_per_node * c.slots_per_rank;
  std::vector<int32_t> node_of_group(num_groups, -1);
  for (size_t s = 0; s < slots.size(); ++s) {
    const int g = slots[s] / group_size, n = static_cast<int>(s) / node_slots;
    if (node_of_group[g] < 0) node_of_group[g] = n;
    if (node_of_group[g] != n) return {};
  }
  std::vector<int> per_node(c.num_nodes, 0);
  for (int32_t n : node_of_group) {
    if (n < 0) return {};
    ++per_node[n];
  }
  for (int n : per_node) {
    if (n != num_groups / c.num_nodes) return {};
  }
  return node_of_group;
}

// Migration from `current` within the mode's domains; empty if it cannot
// reach `target_max_load`.
std::vector<int32_t> Migrate(const double* w, int num_experts, const ClusterShape& c,
                             PlacementMode mode, int num_groups,
                             const std::vector<int32_t>& current, double target_max_load,
                             std::vector<int32_t>* node_of_group) {
  const int max_replicas = MaxReplicas(num_experts, c.num_ranks(), c.slots_per_rank, false);
  if (mode == PlacementMode::kGlobal) {
    DomainPlacement p{c.num_ranks(), c.slots_per_rank, current};
    if (!MigrateDomain(w, num_experts, max_replicas, target_max_load, &p)) return {};
    return p.slot_expert;
  }
  *node_of_group = HierarchicalGroupsOf(current, num_experts, num_groups, c);
  if (node_of_group->empty()) return {};
  const auto node_experts = NodeExperts(*node_of_group, num_experts, c.num_nodes);
  const int node_slots = c.ranks_per_node * c.slots_per_rank;
  std::vector<int32_t> out(current.size());
  for (int n = 0; n < c.num_nodes; ++n) {
    const std::vector<int32_t>& ids = node_experts[n];
    std::vector<int32_t> local_of(num_experts, -1);
    std::vector<double> local(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      local_of[ids[i]] = static_cast<int32_t>(i);
      local[i] = w[ids[i]];
    }
    DomainPlacement p{c.ranks_per_node, c.slots_per_rank, {}};
    for (int s = 0; s < node_slots; ++s)
      p.slot_expert.push_back(local_of[current[n * node_slots + s]]);
    const int node_max =
        MaxReplicas(static_cast<int>(ids.size()), c.ranks_per_node, c.slots_per_rank, false);
    if (!MigrateDomain(local.data(), static_cast<int>(ids.size()), node_max, target_max_load, &p)) {
      return {};
    }
    for (int s = 0; s < node_slots; ++s) out[n * node_slots + s] = ids[p.slot_expert[s]];
  }
  return out;
}

LayerOutput PlanLayer(const double* w, int num_experts, const ClusterShape& c, PlacementMode mode,
                      const PlannerOptions& options, const ExpertPlacement* current, int layer) {
  LayerOutput out;
  LayerSlots plan = PlanFromScratch(w, num_experts, c, mode, options.num_groups,
                                    options.split == ReplicaSplit::kEven);
  if (current != nullptr) {
    std::vector<int32_t> old(current->NumSlots(layer));
    for (int s = 0; s < current->NumSlots(layer); ++s) old[s] = current->SlotExpert(layer, s);
    double total = 0.0;
    for (int e = 0; e < num_experts; ++e) total += w[e];
    const double mean = total / c.num_ranks();
    const double scratch_max = MaxRankLoad(w, num_experts, c, plan.slot_expert);
    out.scratch_imbalance = mean > 0.0 ? scratch_max / mean : 1.0;
    const double target = scratch_max * (1.0 + options.balance_tolerance);
    std::vector<int32_t> migrated_groups;
    std::vector<int32_t> migrated =
        Migrate(w, num_experts, c, mode, options.num_groups, old, target, &migrated_groups);
    std::vector<int32_t> renumbered = RenumberLike(plan.slot_expert, old, c);
    if (!migrated.empty() && MovedReplicas(old, migrated, c.slots_per_rank) <
                                 MovedReplicas(old, renumbered, c.slots_per_rank)) {
      plan.slot_expert = std::move(migrated);
      plan.node_of_group = std::move(migrated_groups);
    } else {
      plan.slot_expert = std::move(renumbered);
      out.used_scratch = true;
      if (mode == PlacementMode::kHierarchical) {
        plan.node_of_group =
            HierarchicalGroupsOf(plan.slot_expert, num_experts, options.num_groups, c);
      }
    }
  }
  const int S = c.slots_per_rank;
  std::vector<double> shares;
  if (options.split == ReplicaSplit::kWeighted && S > 1) {
    std::vector<int32_t> slot_rank(plan.slot_expert.size());
    for (size_t s = 0; s < slot_rank.size(); ++s) slot_rank[s] = static_cast<int32_t>(s / S);
    shares = BalanceReplicaShares(w, num_experts, c.num_ranks(), plan.slot_expert, slot_rank);
  }
  out.spec =
      LayerPlacementSpec::Uniform(c.num_ranks(), S, std::move(plan.slot_expert), std::move(shares));
  out.node_of_group = std::move(plan.node_of_group);
  return out;
}

}  // namespace

const char* PlacementModeName(PlacementMode mode) {
  switch (mode) {
    case PlacementMode::kAuto:
      return "auto";
    case PlacementMode::kGlobal:
      return "global";
    case PlacementMode::kHierarchical:
      return "hierarchical";
  }
  return "?";
}

absl::StatusOr<PlacementMode> ParsePlacementMode(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "auto") return PlacementMode::kAuto;
  if (lower == "global") return PlacementMode::kGlobal;
  if (lower == "hierarchical") return PlacementMode::kHierarchical;
  return absl::InvalidArgumentError(
      absl::StrCat("mode must be auto, global or hierarchical, got '", text, "'"));
}

const char* ReplicaSplitName(ReplicaSplit split) {
  return split == ReplicaSplit::kEven ? "even" : "weighted";
}

absl::StatusOr<ReplicaSplit> ParseReplicaSplit(absl::string_view text) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "even") return ReplicaSplit::kEven;
  if (lower == "weighted") return ReplicaSplit::kWeighted;
  return absl::InvalidArgumentError(
      absl::StrCat("split must be even or weighted, got '", text, "'"));
}

absl::Status ClusterShape::Validate(int num_experts) const {
  if (num_nodes < 1 || ranks_per_node < 1 || slots_per_rank < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the cluster needs at least one node, rank per node and slot per rank; got ", num_nodes,
        " nodes x ", ranks_per_node, " ranks x ", slots_per_rank, " slots"));
  }
  if (static_cast<int64_t>(num_nodes) * ranks_per_node > (1 << 20) ||
      static_cast<int64_t>(num_ranks()) * slots_per_rank > (1 << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("cluster of ", num_nodes, " nodes x ",
                                                   ranks_per_node, " ranks x ", slots_per_rank,
                                                   " slots is too large"));
  }
  if (num_slots() < num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("the cluster has ", num_slots(), " expert slots (", num_ranks(), " ranks x ",
                     slots_per_rank, ") but the model has ", num_experts, " experts per layer"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> SlotsPerRank(int num_experts, int num_redundant, int num_ranks) {
  if (num_redundant < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("redundant experts must be >= 0, got ", num_redundant));
  }
  if (num_ranks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("ranks must be >= 1, got ", num_ranks));
  }
  const int64_t slots = static_cast<int64_t>(num_experts) + num_redundant;
  if (slots % num_ranks != 0) {
    const int64_t lower = slots / num_ranks * num_ranks - num_experts;
    const int64_t upper = (slots / num_ranks + 1) * num_ranks - num_experts;
    return absl::InvalidArgumentError(
        absl::StrCat(num_experts, " experts + ", num_redundant, " redundant = ", slots,
                     " slots do not divide over ", num_ranks, " ranks; use ",
                     lower >= 0 ? absl::StrCat(lower, " or ") : "", upper, " redundant experts"));
  }
  return static_cast<int>(slots / num_ranks);
}

PlacementMode ResolveMode(PlacementMode mode, int num_groups, int num_nodes) {
  if (mode != PlacementMode::kAuto) return mode;
  return num_groups > 1 && num_nodes > 1 && num_groups % num_nodes == 0
             ? PlacementMode::kHierarchical
             : PlacementMode::kGlobal;
}

absl::StatusOr<PlanResult> PlanPlacement(const LoadMatrix& loads, const ClusterShape& cluster,
                                         const PlannerOptions& options,
                                         const ExpertPlacement* current) {
  const int E = loads.num_experts, L = loads.num_layers;
  if (E < 1 || L < 1 || loads.values.size() != static_cast<size_t>(E) * L) {
    return absl::InvalidArgumentError(
        absl::StrCat("loads must be [num_layers, num_experts] with "
                     "both >= 1; got ",
                     L, " x ", E, " and ", loads.values.size(), " values"));
  }
  for (size_t i = 0; i < loads.values.size(); ++i) {
    if (!std::isfinite(loads.values[i]) || loads.values[i] < 0.0) {
      return absl::InvalidArgumentError(absl::StrCat("load of layer ", i / E, " expert ", i % E,
                                                     " is ", loads.values[i],
                                                     "; loads must be finite and >= 0"));
    }
  }
  HERD_RETURN_IF_ERROR(cluster.Validate(E));
  if (options.num_groups < 1 || E % options.num_groups != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(options.num_groups, " expert groups do not divide ", E, " experts"));
  }
  if (!(options.balance_tolerance >= 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("balance tolerance must be >= 0, got ", options.balance_tolerance));
  }
  const PlacementMode mode = ResolveMode(options.mode, options.num_groups, cluster.num_nodes);
  if (mode == PlacementMode::kHierarchical && options.num_groups % cluster.num_nodes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hierarchical mode keeps whole expert groups in a node, so the number of nodes (",
        cluster.num_nodes, ") must divide the number of groups (", options.num_groups,
        "); use --mode global or another node count"));
  }
  if (current != nullptr) {
    if (current->num_experts() != E || current->num_layers() != L ||
        current->num_ranks() != cluster.num_ranks() ||
        current->UniformSlotsPerRank() != cluster.slots_per_rank) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the current placement has ", current->num_layers(), " layers x ", current->num_experts(),
          " experts on ", current->num_ranks(), " ranks with ",
          current->UniformSlotsPerRank() < 0 ? std::string("uneven")
                                             : absl::StrCat(current->UniformSlotsPerRank()),
          " slots per rank; the plan is for ", L, " layers x ", E, " experts on ",
          cluster.num_ranks(), " ranks with ", cluster.slots_per_rank, " slots per rank"));
    }
  }

  std::vector<LayerOutput> outputs(L);
  std::atomic<int> next{0};
  std::mutex progress_mutex;
  int done = 0;
  auto work = [&]() {
    for (int l = next.fetch_add(1); l < L; l = next.fetch_add(1)) {
      outputs[l] = PlanLayer(loads.Layer(l), E, cluster, mode, options, current, l);
      if (options.progress) {
        std::lock_guard<std::mutex> lock(progress_mutex);
        options.progress(++done, L);
      }
    }
  };
  const int threads = std::max(1, std::min(options.num_threads, L));
  if (threads == 1) {
    work();
  } else {
    ThreadPool pool(threads);
    pool.ParallelFor(threads, 1, [&](int64_t, int64_t, int) { work(); });
  }

  PlanResult result;
  result.mode = mode;
  std::vector<LayerPlacementSpec> specs(L);
  for (int l = 0; l < L; ++l) {
    specs[l] = std::move(outputs[l].spec);
    if (mode == PlacementMode::kHierarchical) {
      result.node_of_group.push_back(std::move(outputs[l].node_of_group));
    }
    if (current != nullptr) {
      result.used_scratch_plan.push_back(outputs[l].used_scratch);
      result.scratch_imbalance.push_back(outputs[l].scratch_imbalance);
    }
  }
  HERD_ASSIGN_OR_RETURN(
      result.placement,
      ExpertPlacement::Create(E, cluster.num_ranks(), cluster.num_nodes, std::move(specs)));
  return result;
}

}  // namespace herd
