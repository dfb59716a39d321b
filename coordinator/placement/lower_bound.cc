#include "coordinator/placement/lower_bound.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <unordered_map>

#include "coordinator/placement/apportion.h"
#include "core/status.h"

namespace herd {
namespace {

double Sum(const double* w, int n) {
  double s = 0.0;
  for (int i = 0; i < n; ++i) s += w[i];
  return s;
}

// max w + the (slots_per_rank - 1) smallest of the other loads: what the rank
// holding the heaviest expert carries at least when nothing is replicated.
double HeaviestRankWithoutReplicas(std::vector<double> w, int slots_per_rank) {
  std::sort(w.begin(), w.end());
  double value = w.back();
  for (int i = 0; i < slots_per_rank - 1 && i < static_cast<int>(w.size()) - 1; ++i) {
    value += w[i];
  }
  return value;
}

// Everything one partition search needs.
class NodeSearch {
 public:
  NodeSearch(const double* w, int num_experts, int num_groups, int num_nodes, int num_slots,
             int num_ranks, bool slot_term)
      : w_(w),
        group_size_(num_experts / num_groups),
        num_groups_(num_groups),
        num_nodes_(num_nodes),
        groups_per_node_(num_groups / num_nodes),
        ranks_per_node_(num_ranks / num_nodes),
        node_slots_(num_slots / num_nodes),
        slots_per_rank_(num_slots / num_ranks),
        slot_term_(slot_term) {
    mean_ = Sum(w, num_experts) / num_ranks;
    group_load_.resize(num_groups);
    for (int g = 0; g < num_groups; ++g) group_load_[g] = Sum(w + g * group_size_, group_size_);
  }

  double mean() const { return mean_; }
  const std::vector<double>& group_load() const { return group_load_; }

  // The bound of a node holding `groups`, as a ratio to the mean rank load.
  double NodeValue(const std::vector<int32_t>& groups) const {
    std::vector<double> loads;
    loads.reserve(groups.size() * group_size_);
    double node_load = 0.0;
    for (int32_t g : groups) {
      for (int i = 0; i < group_size_; ++i) loads.push_back(w_[g * group_size_ + i]);
      node_load += group_load_[g];
    }
    const int n = static_cast<int>(loads.size());
    const std::vector<int32_t> counts =
        ApportionReplicas(loads.data(), n, node_slots_, node_slots_);
    double value = std::max(node_load / ranks_per_node_, MaxReplicaLoad(loads.data(), counts));
    if (slot_term_ && node_slots_ == n) {
      value = std::max(value, HeaviestRankWithoutReplicas(loads, slots_per_rank_));
    }
    return value / mean_;
  }

  // Enumerates every partition (num_groups <= 64); memoises node values.
  GroupsToNodes Enumerate() {
    std::vector<int32_t> node_of_group(num_groups_, -1);
    best_ = {};
    best_.bound = std::numeric_limits<double>::infinity();
    best_sq_ = std::numeric_limits<double>::infinity();
    Recurse(0, 0, 0.0, 0.0, &node_of_group);
    best_.exact = true;
    return best_;
  }

  // Greedy by group load, then group swaps between nodes while they help.
  GroupsToNodes Improve() {
    std::vector<int32_t> order(num_groups_);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return group_load_[a] > group_load_[b]; });
    std::vector<std::vector<int32_t>> nodes(num_nodes_);
    std::vector<double> load(num_nodes_, 0.0);
    for (int32_t g : order) {
      int pick = -1;
      for (int n = 0; n < num_nodes_; ++n) {
        if (static_cast<int>(nodes[n].size()) < groups_per_node_ &&
            (pick < 0 || load[n] < load[pick])) {
          pick = n;
        }
      }
      nodes[pick].push_back(g);
      load[pick] += group_load_[g];
    }
    std::vector<double> value(num_nodes_);
    for (int n = 0; n < num_nodes_; ++n) value[n] = NodeValue(nodes[n]);
    for (int iter = 0; iter < 64 * num_groups_; ++iter) {
      const int top =
          static_cast<int>(std::max_element(value.begin(), value.end()) - value.begin());
      double best_pair = value[top];
      int best_n = -1, best_i = -1, best_j = -1;
      double best_vt = 0, best_vn = 0;
      for (int n = 0; n < num_nodes_; ++n) {
        if (n == top) continue;
        for (int i = 0; i < groups_per_node_; ++i) {
          for (int j = 0; j < groups_per_node_; ++j) {
            std::swap(nodes[top][i], nodes[n][j]);
            const double vt = NodeValue(nodes[top]), vn = NodeValue(nodes[n]);
            std::swap(nodes[top][i], nodes[n][j]);
            if (std::max(vt, vn) < best_pair - 1e-12) {
              best_pair = std::max(vt, vn);
              best_n = n, best_i = i, best_j = j, best_vt = vt, best_vn = vn;
            }
          }
        }
      }
      if (best_n < 0) break;
      std::swap(nodes[top][best_i], nodes[best_n][best_j]);
      value[top] = best_vt;
      value[best_n] = best_vn;
    }
    GroupsToNodes result;
    result.node_of_group.assign(num_groups_, 0);
    for (int n = 0; n < num_nodes_; ++n) {
      for (int32_t g : nodes[n]) result.node_of_group[g] = n;
    }
    result.bound = *std::max_element(value.begin(), value.end());
    result.exact = false;
    return result;
  }

 private:
  double MemoValue(uint64_t mask) {
    auto it = memo_.find(mask);
    if (it != memo_.end()) return it->second;
    std::vector<int32_t> groups;
    for (int g = 0; g < num_groups_; ++g) {
      if (mask >> g & 1) groups.push_back(g);
    }
    const double v = NodeValue(groups);
    memo_.emplace(mask, v);
    return v;
  }

  void Recurse(uint64_t used, int node, double max_so_far, double sq_so_far,
               std::vector<int32_t>* node_of_group) {
    if (max_so_far > best_.bound + 1e-12) return;
    if (node == num_nodes_) {
      if (max_so_far < best_.bound - 1e-12 ||
          (max_so_far <= best_.bound + 1e-12 && sq_so_far < best_sq_)) {
        best_.bound = max_so_far;
        best_.node_of_group = *node_of_group;
        best_sq_ = sq_so_far;
      }
      return;
    }
    int first = 0;
    while (used >> first & 1) ++first;
    // Choose groups_per_node - 1 companions for `first` among the unused ones.
    std::vector<int32_t> chosen = {first};
    std::function<void(int)> choose = [&](int from) {
      if (static_cast<int>(chosen.size()) == groups_per_node_) {
        uint64_t mask = 0;
        for (int32_t g : chosen) mask |= uint64_t{1} << g;
        const double v = MemoValue(mask);
        for (int32_t g : chosen) (*node_of_group)[g] = node;
        Recurse(used | mask, node + 1, std::max(max_so_far, v), sq_so_far + v * v, node_of_group);
        return;
      }
      for (int g = from; g < num_groups_; ++g) {
        if (used >> g & 1) continue;
        chosen.push_back(g);
        choose(g + 1);
        chosen.pop_back();
      }
    };
    choose(first + 1);
  }

  const double* w_;
  int group_size_, num_groups_, num_nodes_, groups_per_node_, ranks_per_node_, node_slots_,
      slots_per_rank_;
  bool slot_term_;
  double mean_ = 0.0;
  std::vector<double> group_load_;
  std::unordered_map<uint64_t, double> memo_;
  GroupsToNodes best_;
  double best_sq_ = 0.0;
};

// K! / ((K/N)!^N N!), saturating; computed in log space.
double NumPartitions(int num_groups, int num_nodes) {
  const int b = num_groups / num_nodes;
  const double log_count = std::lgamma(num_groups + 1.0) - num_nodes * std::lgamma(b + 1.0) -
                           std::lgamma(num_nodes + 1.0);
  return std::exp(log_count);
}

}  // namespace

double GlobalLowerBound(const double* w, int num_experts, int num_slots, int num_ranks) {
  HERD_CHECK(num_slots >= num_experts && num_ranks > 0 && num_slots % num_ranks == 0);
  const double total = Sum(w, num_experts);
  if (!(total > 0.0)) return 1.0;
  const double mean = total / num_ranks;
  const std::vector<int32_t> counts = ApportionReplicas(w, num_experts, num_slots, num_slots);
  double bound = std::max(1.0, MaxReplicaLoad(w, counts) / mean);
  if (num_slots == num_experts) {
    bound = std::max(bound, HeaviestRankWithoutReplicas(std::vector<double>(w, w + num_experts),
                                                        num_slots / num_ranks) /
                                mean);
  }
  return bound;
}

GroupsToNodes AssignGroupsToNodes(const double* w, int num_experts, int num_groups, int num_nodes,
                                  int num_slots, int num_ranks, bool slot_term,
                                  int64_t max_partitions) {
  HERD_CHECK(num_groups >= 1 && num_experts % num_groups == 0 && num_nodes >= 1 &&
             num_groups % num_nodes == 0 && num_ranks % num_nodes == 0 &&
             num_slots % num_ranks == 0 && num_slots / num_nodes >= num_experts / num_nodes);
  GroupsToNodes result;
  if (num_nodes == 1) {
    result.node_of_group.assign(num_groups, 0);
  } else if (num_groups == num_nodes) {
    result.node_of_group.resize(num_groups);
    std::iota(result.node_of_group.begin(), result.node_of_group.end(), 0);
  }
  NodeSearch search(w, num_experts, num_groups, num_nodes, num_slots, num_ranks, slot_term);
  if (!(search.mean() > 0.0)) {
    if (result.node_of_group.empty()) {
      for (int g = 0; g < num_groups; ++g)
        result.node_of_group.push_back(g / (num_groups / num_nodes));
    }
    result.bound = 1.0;
    return result;
  }
  if (!result.node_of_group.empty()) {
    // Only one partition: evaluate it.
    const int per_node = num_groups / num_nodes;
    result.bound = 0.0;
    for (int n = 0; n < num_nodes; ++n) {
      std::vector<int32_t> groups;
      for (int g = 0; g < num_groups; ++g) {
        if (result.node_of_group[g] == n) groups.push_back(g);
      }
      HERD_CHECK(static_cast<int>(groups.size()) == per_node);
      result.bound = std::max(result.bound, search.NodeValue(groups));
    }
    return result;
  }
  if (num_groups <= 64 &&
      NumPartitions(num_groups, num_nodes) <= static_cast<double>(max_partitions)) {
    return search.Enumerate();
  }
  return search.Improve();
}

HierarchicalBound HierarchicalLowerBound(const double* w, int num_experts, int num_groups,
                                         int num_nodes, int num_slots, int num_ranks) {
  HierarchicalBound bound;
  bound.value = GlobalLowerBound(w, num_experts, num_slots, num_ranks);
  const GroupsToNodes best = AssignGroupsToNodes(w, num_experts, num_groups, num_nodes, num_slots,
                                                 num_ranks, /*slot_term=*/false);
  if (best.exact) {
    bound.value = std::max(bound.value, best.bound);
  } else {
    bound.exact = false;  // only the global bound is certain
  }
  return bound;
}

}  // namespace herd
