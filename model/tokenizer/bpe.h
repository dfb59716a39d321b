// The merge engine shared by every tokenizer kind.
//
// A piece of text starts as a list of symbols (one per byte for byte-level
// BPE, one per character otherwise), each with a token id. The engine then
// repeatedly joins the adjacent pair with the best (lowest) rank, the
// leftmost one among equal ranks, until no adjacent pair has a merge. That is
// byte-level BPE when ranks are merge-list positions, and SentencePiece BPE
// when ranks order the merged tokens by descending score.
//
// Built once, then immutable; Apply is thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace herd::tokenizer {

// A token id, or kNoToken for a symbol no token stands for (bytes or
// characters missing from the vocabulary; they never merge).
inline constexpr int32_t kNoToken = -1;

struct Symbol {
  int32_t id = kNoToken;
  uint32_t begin = 0;  // byte offsets of the symbol's text in the piece
  uint32_t end = 0;
};

class MergeTable {
 public:
  // Records that `left` followed by `right` merges into `result` with
  // priority `rank` (lower first). When the pair is already known, the lower
  // rank wins (ties keep the first).
  void Add(int32_t left, int32_t right, int32_t rank, int32_t result);
  size_t size() const { return merges_.size(); }
  bool Contains(int32_t left, int32_t right) const { return Find(left, right) != nullptr; }

  // Merges `symbols` in place until no adjacent pair has a merge.
  void Apply(std::vector<Symbol>* symbols) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  static uint64_t Key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  const Merge* Find(int32_t left, int32_t right) const {
    if (left < 0 || right < 0) return nullptr;
    auto it = merges_.find(Key(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  }
  // O(n^2) scan, fastest for the short pieces most text is made of.
  void ApplySmall(std::vector<Symbol>* symbols) const;
  // O(n log n) with a heap, for long pieces (whitespace runs, unsplit text).
  void ApplyLarge(std::vector<Symbol>* symbols) const;

  absl::flat_hash_map<uint64_t, Merge> merges_;
};

}  // namespace herd::tokenizer
