#include "coordinator/placement/replica_shares.h"

#include <algorithm>
#include <limits>
#include <map>

namespace herd {
namespace {

// Dinic's max flow on a small graph with real capacities.
class MaxFlow {
 public:
  explicit MaxFlow(int num_nodes) : adj_(num_nodes), level_(num_nodes), next_(num_nodes) {}

  // Adds u -> v with capacity `cap`; returns the edge index (its reverse is index ^ 1).
  int AddEdge(int u, int v, double cap) {
    adj_[u].push_back(static_cast<int>(edges_.size()));
    edges_.push_back({v, cap, cap});
    adj_[v].push_back(static_cast<int>(edges_.size()));
    edges_.push_back({u, 0.0, 0.0});
    return static_cast<int>(edges_.size()) - 2;
  }
  void SetCapacity(int edge, double cap) { edges_[edge].initial = cap; }
  double Flow(int edge) const { return edges_[edge ^ 1].residual; }

  double Run(int source, int sink, double eps) {
    for (Edge& e : edges_) e.residual = e.initial;
    double total = 0.0;
    while (Levels(source, sink, eps)) {
      std::fill(next_.begin(), next_.end(), 0);
      while (true) {
        const double pushed = Push(source, sink, std::numeric_limits<double>::infinity(), eps);
        if (pushed <= eps) break;
        total += pushed;
      }
    }
    return total;
  }

 private:
  struct Edge {
    int to;
    double residual;
    double initial;
  };

  bool Levels(int source, int sink, double eps) {
    std::fill(level_.begin(), level_.end(), -1);
    std::vector<int> queue = {source};
    level_[source] = 0;
    for (size_t i = 0; i < queue.size(); ++i) {
      const int u = queue[i];
      for (int id : adj_[u]) {
        const Edge& e = edges_[id];
        if (e.residual > eps && level_[e.to] < 0) {
          level_[e.to] = level_[u] + 1;
          queue.push_back(e.to);
        }
      }
    }
    return level_[sink] >= 0;
  }

  double Push(int u, int sink, double limit, double eps) {
    if (u == sink) return limit;
    for (int& i = next_[u]; i < static_cast<int>(adj_[u].size()); ++i) {
      const int id = adj_[u][i];
      Edge& e = edges_[id];
      if (e.residual <= eps || level_[e.to] != level_[u] + 1) continue;
      const double pushed = Push(e.to, sink, std::min(limit, e.residual), eps);
      if (pushed > eps) {
        e.residual -= pushed;
        edges_[id ^ 1].residual += pushed;
        return pushed;
      }
    }
    return 0.0;
  }

  std::vector<Edge> edges_;
  std::vector<std::vector<int>> adj_;
  std::vector<int> level_;
  std::vector<int> next_;
};

}  // namespace

std::vector<double> BalanceReplicaShares(const double* w, int num_experts, int num_ranks,
                                         const std::vector<int32_t>& slot_expert,
                                         const std::vector<int32_t>& slot_rank) {
  const int num_slots = static_cast<int>(slot_expert.size());
  std::vector<int32_t> count(num_experts, 0);
  for (int32_t e : slot_expert) ++count[e];
  std::vector<double> shares(num_slots);
  for (int s = 0; s < num_slots; ++s) shares[s] = 1.0 / count[slot_expert[s]];

  // Distinct ranks per expert; experts spread over >= 2 ranks are flexible.
  std::vector<std::map<int32_t, int>> ranks_of(num_experts);  // rank -> slots there
  for (int s = 0; s < num_slots; ++s) ++ranks_of[slot_expert[s]][slot_rank[s]];
  std::vector<double> base(num_ranks, 0.0), even(num_ranks, 0.0);
  std::vector<int32_t> flexible;
  double total = 0.0, need = 0.0;
  for (int e = 0; e < num_experts; ++e) total += w[e];
  for (int s = 0; s < num_slots; ++s)
    even[slot_rank[s]] += w[slot_expert[s]] / count[slot_expert[s]];
  for (int e = 0; e < num_experts; ++e) {
    if (ranks_of[e].size() >= 2 && w[e] > 0.0) {
      flexible.push_back(e);
      need += w[e];
    } else {
      for (const auto& [r, slots] : ranks_of[e]) base[r] += w[e] * slots / count[e];
    }
  }
  if (flexible.empty() || !(total > 0.0)) return shares;
  const double mean = total / num_ranks;
  double hi = *std::max_element(even.begin(), even.end());
  double lo = std::max(mean, *std::max_element(base.begin(), base.end()));
  const double tolerance = 1e-7 * mean;
  if (hi - lo <= tolerance) return shares;

  // source -> expert (its load) -> ranks holding it -> sink (room under T).
  const int num_flex = static_cast<int>(flexible.size());
  const int source = 0, sink = 1, expert0 = 2, rank0 = 2 + num_flex;
  MaxFlow flow(2 + num_flex + num_ranks);
  struct Arc {
    int32_t expert;
    int32_t rank;
    int edge;
  };
  std::vector<Arc> arcs;
  for (int i = 0; i < num_flex; ++i) {
    const int32_t e = flexible[i];
    flow.AddEdge(source, expert0 + i, w[e]);
    for (const auto& [r, slots] : ranks_of[e]) {
      arcs.push_back({e, r, flow.AddEdge(expert0 + i, rank0 + r, need)});
    }
  }
  std::vector<int> sink_edges(num_ranks);
  for (int r = 0; r < num_ranks; ++r) sink_edges[r] = flow.AddEdge(rank0 + r, sink, 0.0);
  const double eps = 1e-12 * need;
  auto feasible = [&](double t) {
    for (int r = 0; r < num_ranks; ++r) flow.SetCapacity(sink_edges[r], std::max(0.0, t - base[r]));
    return flow.Run(source, sink, eps) >= need * (1.0 - 1e-12);
  };
  while (hi - lo > tolerance) {
    const double mid = 0.5 * (lo + hi);
    if (feasible(mid)) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  if (!feasible(hi)) return shares;  // rounding: keep the even split
  // Read the flow: each (expert, rank) amount, split evenly over that rank's
  // slots of the expert; then normalise each expert's shares to sum to 1.
  std::map<std::pair<int32_t, int32_t>, double> amount;
  for (const Arc& a : arcs) amount[{a.expert, a.rank}] = std::max(0.0, flow.Flow(a.edge));
  std::vector<double> sum(num_experts, 0.0);
  std::vector<char> is_flexible(num_experts, 0);
  for (int32_t e : flexible) is_flexible[e] = 1;
  for (int s = 0; s < num_slots; ++s) {
    const int32_t e = slot_expert[s];
    if (!is_flexible[e]) continue;
    shares[s] = amount[{e, slot_rank[s]}] / ranks_of[e][slot_rank[s]];
    sum[e] += shares[s];
  }
  for (int s = 0; s < num_slots; ++s) {
    const int32_t e = slot_expert[s];
    if (is_flexible[e]) shares[s] = sum[e] > 0.0 ? shares[s] / sum[e] : 1.0 / count[e];
  }
  return shares;
}

}  // namespace herd
