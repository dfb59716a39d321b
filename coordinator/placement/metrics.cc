#include "coordinator/placement/metrics.h"

#include <algorithm>
#include <cmath>

#include "coordinator/placement/lower_bound.h"
#include "core/status.h"

namespace herd {
namespace {

ImbalanceSummary Summarise(std::vector<double> per_layer) {
  ImbalanceSummary s;
  s.per_layer = std::move(per_layer);
  if (s.per_layer.empty()) return s;
  double sum = 0.0;
  s.max = 0.0;
  for (double v : s.per_layer) {
    sum += v;
    s.max = std::max(s.max, v);
  }
  s.mean = sum / s.per_layer.size();
  return s;
}

void CheckShapes(const ExpertPlacement& placement, const LoadMatrix& loads) {
  HERD_CHECK(placement.num_layers() == loads.num_layers &&
             placement.num_experts() == loads.num_experts);
}

}  // namespace

std::vector<double> RankLoads(const ExpertPlacement& placement, int layer, const double* w,
                              bool use_shares) {
  std::vector<double> load(placement.num_ranks(), 0.0);
  for (int s = 0; s < placement.NumSlots(layer); ++s) {
    const int32_t e = placement.SlotExpert(layer, s);
    const double part =
        use_shares ? w[e] * placement.SlotShare(layer, s) : w[e] / placement.NumReplicas(layer, e);
    load[placement.SlotRank(layer, s)] += part;
  }
  return load;
}

std::vector<double> NodeLoads(const ExpertPlacement& placement, int layer, const double* w,
                              bool use_shares) {
  const std::vector<double> ranks = RankLoads(placement, layer, w, use_shares);
  std::vector<double> nodes(placement.num_nodes(), 0.0);
  for (int r = 0; r < placement.num_ranks(); ++r) nodes[placement.NodeOfRank(r)] += ranks[r];
  return nodes;
}

double Imbalance(const std::vector<double>& loads) {
  double total = 0.0, max = 0.0;
  for (double v : loads) {
    total += v;
    max = std::max(max, v);
  }
  if (!(total > 0.0)) return 1.0;
  return max / (total / loads.size());
}

ImbalanceSummary ScoreImbalance(const ExpertPlacement& placement, const LoadMatrix& loads,
                                bool use_shares) {
  CheckShapes(placement, loads);
  std::vector<double> per_layer(loads.num_layers);
  for (int l = 0; l < loads.num_layers; ++l) {
    per_layer[l] = Imbalance(RankLoads(placement, l, loads.Layer(l), use_shares));
  }
  return Summarise(std::move(per_layer));
}

ImbalanceSummary ScoreNodeImbalance(const ExpertPlacement& placement, const LoadMatrix& loads,
                                    bool use_shares) {
  CheckShapes(placement, loads);
  std::vector<double> per_layer(loads.num_layers);
  for (int l = 0; l < loads.num_layers; ++l) {
    per_layer[l] = Imbalance(NodeLoads(placement, l, loads.Layer(l), use_shares));
  }
  return Summarise(std::move(per_layer));
}

ImbalanceSummary LowerBoundSummary(const LoadMatrix& loads, int num_slots, int num_ranks) {
  std::vector<double> per_layer(loads.num_layers);
  for (int l = 0; l < loads.num_layers; ++l) {
    per_layer[l] = GlobalLowerBound(loads.Layer(l), loads.num_experts, num_slots, num_ranks);
  }
  return Summarise(std::move(per_layer));
}

int64_t DuplicateReplicas(const ExpertPlacement& placement) {
  int64_t duplicates = 0;
  for (int l = 0; l < placement.num_layers(); ++l) {
    for (int r = 0; r < placement.num_ranks(); ++r) {
      std::vector<int32_t> experts(placement.RankExperts(l, r).begin(),
                                   placement.RankExperts(l, r).end());
      std::sort(experts.begin(), experts.end());
      for (size_t i = 1; i < experts.size(); ++i) duplicates += experts[i] == experts[i - 1];
    }
  }
  return duplicates;
}

MovedReplicas CountMovedReplicas(const ExpertPlacement& from, const ExpertPlacement& to) {
  HERD_CHECK(from.num_layers() == to.num_layers() && from.num_ranks() == to.num_ranks());
  MovedReplicas m;
  for (int l = 0; l < to.num_layers(); ++l) {
    for (int r = 0; r < to.num_ranks(); ++r) {
      std::vector<int32_t> a(from.RankExperts(l, r).begin(), from.RankExperts(l, r).end());
      std::vector<int32_t> b(to.RankExperts(l, r).begin(), to.RankExperts(l, r).end());
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      std::vector<int32_t> fresh;
      std::set_difference(b.begin(), b.end(), a.begin(), a.end(), std::back_inserter(fresh));
      m.moved += static_cast<int64_t>(fresh.size());
      m.total += static_cast<int64_t>(b.size());
    }
  }
  return m;
}

DispatchTraffic EstimateDispatchTraffic(const ExpertPlacement& placement, const LoadMatrix& loads,
                                        double tokens, int top_k) {
  CheckShapes(placement, loads);
  DispatchTraffic t;
  const int G = placement.num_ranks(), N = placement.num_nodes(), rpn = placement.ranks_per_node();
  std::vector<double> log_rank(G), log_node(N);
  for (int l = 0; l < loads.num_layers; ++l) {
    const double* w = loads.Layer(l);
    double layer_tokens = tokens;
    if (!(layer_tokens > 0.0)) {
      if (top_k <= 0) return DispatchTraffic{};
      double total = 0.0;
      for (int e = 0; e < loads.num_experts; ++e) total += w[e];
      layer_tokens = total / top_k;
    }
    if (!(layer_tokens > 0.0)) continue;
    std::fill(log_rank.begin(), log_rank.end(), 0.0);
    // Probability that a token needs rank r: 1 - prod over r's replicas of
    // (1 - P(token picks this replica)); per node, over the node's replicas.
    std::vector<double> node_share(static_cast<size_t>(N) * loads.num_experts, 0.0);
    for (int s = 0; s < placement.NumSlots(l); ++s) {
      const int32_t e = placement.SlotExpert(l, s);
      const int r = placement.SlotRank(l, s);
      const double q = std::min(1.0 - 1e-12, w[e] * placement.SlotShare(l, s) / layer_tokens);
      log_rank[r] += std::log1p(-q);
      node_share[static_cast<size_t>(placement.NodeOfRank(r)) * loads.num_experts + e] +=
          placement.SlotShare(l, s);
    }
    std::fill(log_node.begin(), log_node.end(), 0.0);
    for (int n = 0; n < N; ++n) {
      for (int e = 0; e < loads.num_experts; ++e) {
        const double share = node_share[static_cast<size_t>(n) * loads.num_experts + e];
        if (share <= 0.0) continue;
        log_node[n] += std::log1p(-std::min(1.0 - 1e-12, w[e] * share / layer_tokens));
      }
    }
    double rank_sum = 0.0, node_sum = 0.0;
    for (int r = 0; r < G; ++r) rank_sum += -std::expm1(log_rank[r]);
    for (int n = 0; n < N; ++n) node_sum += -std::expm1(log_node[n]);
    t.intra_node_copies_per_token += rank_sum * (rpn - 1) / G;
    t.inter_node_copies_per_token += node_sum * (N - 1) / N;
  }
  return t;
}

}  // namespace herd
