#include "model/tokenizer/bpe.h"

#include <limits>
#include <queue>

#include "absl/container/inlined_vector.h"

namespace herd::tokenizer {
namespace {

constexpr int32_t kNoRank = std::numeric_limits<int32_t>::max();
// Pieces up to this many symbols use the quadratic scan.
constexpr size_t kSmallPiece = 48;

}  // namespace

void MergeTable::Add(int32_t left, int32_t right, int32_t rank, int32_t result) {
  auto [it, inserted] = merges_.try_emplace(Key(left, right), Merge{rank, result});
  if (!inserted && rank < it->second.rank) it->second = Merge{rank, result};
}

void MergeTable::Apply(std::vector<Symbol>* symbols) const {
  if (symbols->size() < 2) return;
  if (symbols->size() <= kSmallPiece) {
    ApplySmall(symbols);
  } else {
    ApplyLarge(symbols);
  }
}

void MergeTable::ApplySmall(std::vector<Symbol>* symbols) const {
  std::vector<Symbol>& s = *symbols;
  // pairs[i] is the merge of s[i] and s[i + 1], if any.
  absl::InlinedVector<Merge, kSmallPiece> pairs(s.size() - 1);
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    const Merge* m = Find(s[i].id, s[i + 1].id);
    pairs[i] = m != nullptr ? *m : Merge{kNoRank, kNoToken};
  }
  while (!pairs.empty()) {
    size_t best = 0;
    for (size_t i = 1; i < pairs.size(); ++i) {
      if (pairs[i].rank < pairs[best].rank) best = i;
    }
    if (pairs[best].rank == kNoRank) break;
    s[best].id = pairs[best].result;
    s[best].end = s[best + 1].end;
    s.erase(s.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    pairs.erase(pairs.begin() + static_cast<std::ptrdiff_t>(best));
    if (best > 0) {
      const Merge* m = Find(s[best - 1].id, s[best].id);
      pairs[best - 1] = m != nullptr ? *m : Merge{kNoRank, kNoToken};
    }
    if (best < pairs.size()) {
      const Merge* m = Find(s[best].id, s[best + 1].id);
      pairs[best] = m != nullptr ? *m : Merge{kNoRank, kNoToken};
    }
  }
}

void MergeTable::ApplyLarge(std::vector<Symbol>* symbols) const {
  std::vector<Symbol>& s = *symbols;
  const int n = static_cast<int>(s.size());
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int left;
    int32_t left_id;
    int32_t right_id;
    int32_t result;
  };
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.left > b.left;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  auto push = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    const int right = next[left];
    const Merge* m = Find(s[left].id, s[right].id);
    if (m != nullptr) queue.push({m->rank, left, s[left].id, s[right].id, m->result});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  std::vector<bool> alive(n, true);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    // Skip candidates made stale by an earlier merge.
    if (!alive[c.left] || next[c.left] < 0) continue;
    const int right = next[c.left];
    if (s[c.left].id != c.left_id || s[right].id != c.right_id) continue;
    s[c.left].id = c.result;
    s[c.left].end = s[right].end;
    alive[right] = false;
    next[c.left] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  std::vector<Symbol> out;
  out.reserve(n);
  for (int i = 0; i >= 0; i = next[i]) out.push_back(s[i]);
  s = std::move(out);
}

}  // namespace herd::tokenizer
