#include "coordinator/placement/apportion.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <queue>

#include "core/status.h"

namespace herd {

namespace {

// The heap form of D'Hondt: always give the next slot to the expert whose
// replicas are heaviest now. O(extra log E); used when the selection below
// does not apply.
void ApportionByHeap(const double* w, int num_experts, int max_replicas, int extra,
                     std::vector<int32_t>* counts) {
  struct Entry {
    double load;
    int32_t expert;
  };
  // Max-heap on the replica load; ties prefer the lower index.
  auto less = [](const Entry& a, const Entry& b) {
    return a.load < b.load || (a.load == b.load && a.expert > b.expert);
  };
  std::vector<Entry> storage;
  storage.reserve(num_experts);
  for (int e = 0; e < num_experts; ++e) storage.push_back({w[e], e});
  std::priority_queue<Entry, std::vector<Entry>, decltype(less)> heap(less, std::move(storage));
  while (extra > 0 && !heap.empty()) {
    const int32_t e = heap.top().expert;
    heap.pop();
    const int32_t c = ++(*counts)[e];
    --extra;
    if (c < max_replicas) heap.push({w[e] / c, e});
  }
}

// Moves the k largest values to v[0, k) (in any order). Quickselect with a
// branch-free partition: load comparisons are unpredictable, and
// std::nth_element's branches cost more than the work itself.
void SelectLargest(std::vector<double>* values, int k) {
  double* a = values->data();
  int lo = 0, hi = static_cast<int>(values->size());
  while (hi - lo > 1) {
    // Median of three as the pivot, moved to the end.
    const int mid = lo + (hi - lo) / 2;
    if (a[mid] > a[lo]) std::swap(a[mid], a[lo]);
    if (a[hi - 1] > a[lo]) std::swap(a[hi - 1], a[lo]);
    if (a[mid] > a[hi - 1]) std::swap(a[mid], a[hi - 1]);
    const double pivot = a[hi - 1];
    int store = lo;
    for (int i = lo; i < hi - 1; ++i) {
      const double x = a[i];
      const bool larger = x > pivot;
      a[i] = a[store];
      a[store] = x;
      store += larger;
    }
    std::swap(a[store], a[hi - 1]);
    // a[lo, store) are larger than the pivot, a[store] is it, the rest not larger.
    if (store == k - 1 || store == k) return;
    if (store > k) {
      hi = store;
    } else {
      lo = store + 1;
    }
  }
}

// The number of j >= 1 with w / j > t, for w >= 0 and t > 0, without a
// loop: j runs up to about w / t (`inv_t` = 1 / t gives the guess), and the
// two candidates around the guess are tested with the same division the
// callers use (division is monotone in j).
inline int NumAbove(double w, double t, double inv_t) {
  const double ratio = w * inv_t;
  const int k = ratio < 1.0 ? 1 : (ratio > 1e9 ? 1000000000 : static_cast<int>(ratio));
  return (k - 1) + (w / k > t) + (w / (k + 1) > t);
}

}  // namespace

std::vector<int32_t> ApportionReplicas(const double* w, int num_experts, int num_slots,
                                       int max_replicas) {
  HERD_CHECK(num_experts >= 1 && num_slots >= num_experts && max_replicas >= 1);
  std::vector<int32_t> counts(num_experts, 1);
  int extra = num_slots - num_experts;
  if (extra == 0) return counts;
  if (max_replicas > 1) {
    // D'Hondt gives the extra slots to the `extra` largest quotients w_e / j
    // (j = 1, 2, ...: expert e's (j+1)-th replica), ties to the lower expert.
    // The smallest of those is at least total / num_slots (it is at least
    // the largest replica load left, which is at least the mean), so only
    // quotients that large are generated, and the cut is found by selection:
    // O(E + num_slots) with no per-slot heap work.
    double total = 0.0;
    for (int e = 0; e < num_experts; ++e) total += w[e];
    const double floor_value = total / num_slots;
    if (floor_value > 0.0) {
      // The quotients >= floor_value, and the experts that have any. Written
      // branch-free (store, then advance only if it counts) for the usual one
      // or two per expert: which experts clear the floor is unpredictable,
      // and mispredicted branches would cost more than the arithmetic.
      std::vector<double> quotients(num_slots + 3 * num_experts + 2);
      std::vector<int32_t> candidates(num_experts + 1);
      const double inv_floor = 1.0 / floor_value;
      size_t n = 0, m = 0;
      for (int e = 0; e < num_experts; ++e) {
        const double half = w[e] * 0.5;  // == w / 2 exactly
        candidates[m] = e;
        m += w[e] >= floor_value;
        quotients[n] = w[e];
        n += w[e] >= floor_value;
        quotients[n] = half;
        n += (half >= floor_value) & (max_replicas > 2);
        // w / j >= floor_value needs j <= w / floor_value (+1 for rounding).
        const double ratio = w[e] * inv_floor;
        const int count =
            std::min(max_replicas - 1, ratio > 1e9 ? 1000000000 : static_cast<int>(ratio) + 1);
        for (int j = 3; j <= count; ++j) {
          quotients[n] = w[e] / j;
          n += quotients[n] >= floor_value;
        }
      }
      quotients.resize(n);
      // Every quotient >= floor_value is here; if there are at least `extra`,
      // the winners are among them. (With a binding cap the winners can dip
      // below the floor; the heap handles that.)
      if (static_cast<int>(n) >= extra) {
        SelectLargest(&quotients, extra);
        double cut = quotients[0];
        for (int i = 1; i < extra; ++i) cut = std::min(cut, quotients[i]);
        // Every quotient above the cut wins; those equal to it go to the
        // lowest experts until the slots run out. Only candidates can win
        // (the cut is at least the floor).
        const double inv_cut = 1.0 / cut;
        int given = 0;
        for (size_t i = 0; i < m; ++i) {
          const int32_t e = candidates[i];
          const int above = std::min(max_replicas - 1, NumAbove(w[e], cut, inv_cut));
          counts[e] += above;
          given += above;
        }
        for (size_t i = 0; i < m && given < extra; ++i) {
          const int32_t e = candidates[i];
          const int j = counts[e];  // the next quotient of e is w / j
          if (j < max_replicas && w[e] / j == cut) {
            ++counts[e];
            ++given;
          }
        }
        return counts;
      }
    }
    ApportionByHeap(w, num_experts, max_replicas, extra, &counts);
    extra = num_slots;
    for (int32_t c : counts) extra -= c;
  }
  if (extra > 0) {
    // Every expert is at the cap: duplicates are unavoidable. Spread them by load.
    std::vector<int32_t> order(num_experts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return w[a] > w[b]; });
    for (int i = 0; extra > 0; i = (i + 1) % num_experts, --extra) ++counts[order[i]];
  }
  return counts;
}

double MaxReplicaLoad(const double* w, const std::vector<int32_t>& counts) {
  double m = 0.0;
  for (size_t e = 0; e < counts.size(); ++e) m = std::max(m, w[e] / counts[e]);
  return m;
}

}  // namespace herd
