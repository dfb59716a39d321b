#include "coordinator/placement/packing.h"

#include <algorithm>
#include <numeric>
#include <queue>

#include "coordinator/placement/apportion.h"
#include "coordinator/placement/lower_bound.h"
#include "core/status.h"

namespace herd {
namespace {

// The mutable state of step 3. Slots hold experts; an expert's replicas each
// carry w / count.
class DomainSearch {
 public:
  DomainSearch(const double* w, int num_experts, int max_replicas, bool allow_duplicates,
               DomainPlacement* p)
      : w_(w),
        num_experts_(num_experts),
        max_replicas_(max_replicas),
        allow_duplicates_(allow_duplicates),
        num_ranks_(p->num_ranks),
        slots_per_rank_(p->slots_per_rank),
        slot_expert_(p->slot_expert),
        count_(num_experts, 0),
        load_(p->num_ranks, 0.0) {
    for (int32_t e : slot_expert_) ++count_[e];
    RecomputeLoads();
    double total = 0.0;
    for (int e = 0; e < num_experts; ++e) total += w[e];
    const double mean = total / num_ranks_;
    eps_ = 1e-12 * std::max(mean, 1e-300);
    target_ = total > 0.0
                  ? GlobalLowerBound(w, num_experts, num_ranks_ * slots_per_rank_, num_ranks_) *
                        mean * (1.0 + 1e-9)
                  : 0.0;
  }

  // Pure balancing: swaps first (they keep replica counts), then re-splits.
  void Run() {
    if (num_ranks_ <= 1) return;
    const int max_steps = 64 * num_ranks_ * slots_per_rank_ + 1000;
    for (int step = 0; step < max_steps; ++step) {
      const int top = TopRank();
      if (load_[top] <= target_) break;
      Move move = BestSwap(top);
      if (move.kind == Move::kNone) move = BestResplit(top);
      if (move.kind == Move::kNone) break;
      Apply(move);
    }
    RecomputeLoads();
  }

  // Migration: moves until the largest rank load is at most `target`, each
  // time the move that lowers the top rank the most per expert moved (a swap
  // moves two, a re-split one). Returns whether the target was reached.
  bool Migrate(double target) {
    bool reached = false;
    const int max_steps = 4 * num_ranks_ * slots_per_rank_ + 100;
    for (int step = 0; step < max_steps; ++step) {
      const int top = TopRank();
      if (load_[top] <= target * (1.0 + 1e-12)) {
        reached = true;
        break;
      }
      if (num_ranks_ <= 1) break;
      const Move swap = BestSwap(top);
      const Move resplit = BestResplit(top);
      const double swap_gain = swap.kind == Move::kNone ? 0.0 : (load_[top] - swap.value) / 2.0;
      const double resplit_gain = resplit.kind == Move::kNone ? 0.0 : load_[top] - resplit.value;
      if (swap_gain <= 0.0 && resplit_gain <= 0.0) break;
      Apply(resplit_gain >= swap_gain ? resplit : swap);
    }
    RecomputeLoads();
    return reached;
  }

 private:
  struct Move {
    enum Kind { kNone, kSwap, kResplit } kind = kNone;
    int slot_a = -1;  // kSwap: the two slots; kResplit: the slot that changes
    int slot_b = -1;
    int32_t expert = -1;  // kResplit: the slot's new expert
    double value = 0.0;   // the largest new load among the ranks it touches
  };

  void Apply(const Move& m) {
    if (m.kind == Move::kSwap) {
      const double d = Size(slot_expert_[m.slot_a]) - Size(slot_expert_[m.slot_b]);
      std::swap(slot_expert_[m.slot_a], slot_expert_[m.slot_b]);
      load_[m.slot_a / slots_per_rank_] -= d;
      load_[m.slot_b / slots_per_rank_] += d;
    } else if (m.kind == Move::kResplit) {
      --count_[slot_expert_[m.slot_a]];
      ++count_[m.expert];
      slot_expert_[m.slot_a] = m.expert;
      RecomputeLoads();
    }
  }

  double Size(int32_t expert) const { return w_[expert] / count_[expert]; }

  // Whether placing `expert` on `rank` would duplicate it there (never when
  // duplicates are allowed).
  bool Blocked(int rank, int32_t expert) const { return !allow_duplicates_ && Holds(rank, expert); }

  bool Holds(int rank, int32_t expert) const {
    const int32_t* s = &slot_expert_[static_cast<size_t>(rank) * slots_per_rank_];
    for (int i = 0; i < slots_per_rank_; ++i) {
      if (s[i] == expert) return true;
    }
    return false;
  }

  int TopRank() const {
    return static_cast<int>(std::max_element(load_.begin(), load_.end()) - load_.begin());
  }

  void RecomputeLoads() {
    std::fill(load_.begin(), load_.end(), 0.0);
    for (size_t s = 0; s < slot_expert_.size(); ++s) {
      load_[s / slots_per_rank_] += Size(slot_expert_[s]);
    }
  }

  // The swap of a replica on `top` with one on another rank that lowers
  // max(load[top], load[other]) the most, if any lowers it.
  Move BestSwap(int top) const {
    const double top_load = load_[top];
    Move best;
    best.value = top_load - eps_;
    const int32_t* top_slots = &slot_expert_[static_cast<size_t>(top) * slots_per_rank_];
    for (int r = 0; r < num_ranks_; ++r) {
      if (r == top || load_[r] >= top_load - eps_) continue;
      const int32_t* slots = &slot_expert_[static_cast<size_t>(r) * slots_per_rank_];
      for (int i = 0; i < slots_per_rank_; ++i) {
        const int32_t ea = top_slots[i];
        const double sa = Size(ea);
        for (int j = 0; j < slots_per_rank_; ++j) {
          const int32_t eb = slots[j];
          if (ea == eb) continue;
          const double d = sa - Size(eb);
          if (d <= eps_) continue;
          const double value = std::max(top_load - d, load_[r] + d);
          if (value >= best.value) continue;
          if (Blocked(r, ea) || Blocked(top, eb)) continue;
          best.kind = Move::kSwap;
          best.value = value;
          best.slot_a = top * slots_per_rank_ + i;
          best.slot_b = r * slots_per_rank_ + j;
        }
      }
    }
    return best;
  }

  // Re-assigns one slot to another expert, changing two experts' replica
  // counts: either a slot of an expert with spare replicas goes to an expert
  // on `top` (whose replicas, the one on `top` included, get lighter), or a
  // slot on `top` whose expert has other replicas goes to any expert. Returns
  // the move that lowers the largest load among the ranks it touches below
  // load[top] the most.
  Move BestResplit(int top) {
    Move best;
    if (num_ranks_ * slots_per_rank_ == num_experts_) return best;  // nothing to spare
    slots_of_.assign(num_experts_, {});
    for (size_t s = 0; s < slot_expert_.size(); ++s) {
      slots_of_[slot_expert_[s]].push_back(static_cast<int32_t>(s));
    }
    best.value = load_[top] - eps_;
    auto consider = [&](int slot, int32_t b) {
      const int32_t a = slot_expert_[slot];
      const double a_old = Size(a), a_new = w_[a] / (count_[a] - 1);
      const double b_old = Size(b), b_new = w_[b] / (count_[b] + 1);
      touched_.clear();
      for (int32_t sa : slots_of_[a]) {
        touched_.push_back({sa / slots_per_rank_, sa == slot ? -a_old : a_new - a_old});
      }
      for (int32_t sb : slots_of_[b]) touched_.push_back({sb / slots_per_rank_, b_new - b_old});
      touched_.push_back({slot / slots_per_rank_, b_new});
      double value = 0.0;
      for (size_t k = 0; k < touched_.size(); ++k) {
        const int r = touched_[k].first;
        bool seen = false;
        for (size_t m = 0; m < k && !seen; ++m) seen = touched_[m].first == r;
        if (seen) continue;
        double l = load_[r];
        for (size_t m = k; m < touched_.size(); ++m) {
          if (touched_[m].first == r) l += touched_[m].second;
        }
        value = std::max(value, l);
        if (value >= best.value) return;
      }
      best.kind = Move::kResplit;
      best.value = value;
      best.slot_a = slot;
      best.expert = b;
    };
    // (1) Spare slots elsewhere to experts on top.
    for (int i = 0; i < slots_per_rank_; ++i) {
      const int32_t b = slot_expert_[static_cast<size_t>(top) * slots_per_rank_ + i];
      if (count_[b] >= max_replicas_) continue;
      for (int32_t a = 0; a < num_experts_; ++a) {
        if (a == b || count_[a] < 2) continue;
        for (int32_t s : slots_of_[a]) {
          if (!Blocked(s / slots_per_rank_, b)) consider(s, b);
        }
      }
    }
    // (2) A replicated expert's slot on top to any expert not on top.
    for (int i = 0; i < slots_per_rank_; ++i) {
      const int slot = top * slots_per_rank_ + i;
      if (count_[slot_expert_[slot]] < 2) continue;
      for (int32_t b = 0; b < num_experts_; ++b) {
        if (count_[b] < max_replicas_ && !Blocked(top, b)) consider(slot, b);
      }
    }
    return best;
  }

  const double* w_;
  const int num_experts_;
  const int max_replicas_;
  const bool allow_duplicates_;
  const int num_ranks_;
  const int slots_per_rank_;
  std::vector<int32_t>& slot_expert_;
  std::vector<int32_t> count_;
  std::vector<double> load_;
  double eps_ = 0.0;
  double target_ = 0.0;
  std::vector<std::vector<int32_t>> slots_of_;   // scratch: slots of each expert
  std::vector<std::pair<int, double>> touched_;  // scratch: rank, load change
};

DomainPlacement PackOnce(const double* w, int num_experts, int num_ranks, int slots_per_rank,
                         bool allow_duplicates) {
  const int num_slots = num_ranks * slots_per_rank;
  DomainPlacement p;
  p.num_ranks = num_ranks;
  p.slots_per_rank = slots_per_rank;
  // At most one replica per rank unless there are more slots than that allows.
  const int max_replicas = MaxReplicas(num_experts, num_ranks, slots_per_rank, allow_duplicates);
  const std::vector<int32_t> counts = ApportionReplicas(w, num_experts, num_slots, max_replicas);

  std::vector<int32_t> items;
  items.reserve(num_slots);
  if (slots_per_rank == 1 || num_ranks == 1) {
    // One slot per rank (or one rank): every assignment has the same rank
    // loads. Every expert once in order, then the extra replicas: expert e's
    // first replica stays in slot e, so plans for drifting loads differ only
    // in the redundant slots.
    for (int e = 0; e < num_experts; ++e) items.push_back(e);
    for (int e = 0; e < num_experts; ++e) {
      for (int c = 1; c < counts[e]; ++c) items.push_back(e);
    }
    p.slot_expert = std::move(items);
    return p;
  }
  // Replicas, largest first (ties: lower expert first).
  for (int e = 0; e < num_experts; ++e) {
    for (int c = 0; c < counts[e]; ++c) items.push_back(e);
  }
  std::stable_sort(items.begin(), items.end(),
                   [&](int32_t a, int32_t b) { return w[a] / counts[a] > w[b] / counts[b]; });

  // Step 2: largest first onto the least-loaded eligible rank.
  p.slot_expert.assign(num_slots, -1);
  std::vector<int> filled(num_ranks, 0);
  using Entry = std::pair<double, int>;  // load, rank
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> open;
  for (int r = 0; r < num_ranks; ++r) open.push({0.0, r});
  std::vector<Entry> skipped;
  auto holds = [&](int r, int32_t e) {
    for (int i = 0; i < filled[r]; ++i) {
      if (p.slot_expert[static_cast<size_t>(r) * slots_per_rank + i] == e) return true;
    }
    return false;
  };
  for (int32_t e : items) {
    skipped.clear();
    while (!allow_duplicates && !open.empty() && counts[e] > 1 && holds(open.top().second, e)) {
      skipped.push_back(open.top());
      open.pop();
    }
    Entry pick;
    if (!open.empty()) {
      pick = open.top();
      open.pop();
    } else {
      // Every open rank holds e already (only when duplicates are forced).
      pick = skipped.front();
      skipped.erase(skipped.begin());
    }
    const int r = pick.second;
    p.slot_expert[static_cast<size_t>(r) * slots_per_rank + filled[r]++] = e;
    if (filled[r] < slots_per_rank) open.push({pick.first + w[e] / counts[e], r});
    for (const Entry& s : skipped) open.push(s);
  }

  // Step 3.
  DomainSearch(w, num_experts, max_replicas, allow_duplicates, &p).Run();
  return p;
}

}  // namespace

int MaxReplicas(int num_experts, int num_ranks, int slots_per_rank, bool allow_duplicates) {
  const int num_slots = num_ranks * slots_per_rank;
  if (allow_duplicates) return num_slots;
  return static_cast<int64_t>(num_experts) * num_ranks >= num_slots ? num_ranks : num_slots;
}

DomainPlacement PackDomain(const double* w, int num_experts, int num_ranks, int slots_per_rank,
                           bool consider_duplicates) {
  HERD_CHECK(num_experts >= 1 && num_ranks >= 1 && slots_per_rank >= 1 &&
             num_ranks * slots_per_rank >= num_experts);
  DomainPlacement strict = PackOnce(w, num_experts, num_ranks, slots_per_rank, false);
  if (!consider_duplicates || slots_per_rank == 1 || num_ranks == 1) return strict;
  const std::vector<double> strict_loads = DomainRankLoads(w, num_experts, strict);
  const double strict_max = *std::max_element(strict_loads.begin(), strict_loads.end());
  double total = 0.0;
  for (int e = 0; e < num_experts; ++e) total += w[e];
  const double bound =
      GlobalLowerBound(w, num_experts, num_ranks * slots_per_rank, num_ranks) * total / num_ranks;
  if (strict_max <= bound * (1.0 + 1e-9)) return strict;
  DomainPlacement loose = PackOnce(w, num_experts, num_ranks, slots_per_rank, true);
  const std::vector<double> loose_loads = DomainRankLoads(w, num_experts, loose);
  const double loose_max = *std::max_element(loose_loads.begin(), loose_loads.end());
  return loose_max < strict_max * (1.0 - 1e-12) ? loose : strict;
}

bool MigrateDomain(const double* w, int num_experts, int max_replicas, double target_max_load,
                   DomainPlacement* p) {
  return DomainSearch(w, num_experts, max_replicas, /*allow_duplicates=*/false, p)
      .Migrate(target_max_load);
}

std::vector<double> DomainRankLoads(const double* w, int num_experts, const DomainPlacement& p) {
  std::vector<int32_t> count(num_experts, 0);
  for (int32_t e : p.slot_expert) ++count[e];
  std::vector<double> load(p.num_ranks, 0.0);
  for (size_t s = 0; s < p.slot_expert.size(); ++s) {
    load[s / p.slots_per_rank] += w[p.slot_expert[s]] / count[p.slot_expert[s]];
  }
  return load;
}

}  // namespace herd
