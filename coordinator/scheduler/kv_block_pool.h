// One rank's KV cache blocks as the scheduler hands them out, with automatic
// prefix caching (vLLM's automatic prefix caching; SGLang's radix cache at
// block granularity): a block whose positions are all computed is remembered
// under the tokens it holds and the prefix before it, so a later sequence
// that starts with the same tokens (a system prompt, the earlier turns of a
// chat, a preempted sequence coming back) holds the same block instead of
// computing its keys and values again.
//
// A block is free, held (by one or more sequences; a block shared by
// several is only ever read), or cached and unreferenced. The last count as
// available: Allocate hands out free blocks first, then reuses the least
// recently released cached one, dropping its entry.
//
// Cache entries are exact: a block is keyed by (the key of the prefix before
// it, its tokens), and keys are never reused, so a lookup can only find a
// block that was computed from the very same tokens at the very same
// positions. Evicting a block leaves the blocks after it unreachable until
// they are evicted in turn.
//
// Not thread-safe; the executor calls it under its lock.
#pragma once

#include <cstdint>
#include <list>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/types/span.h"

namespace herd {

class KvBlockPool {
 public:
  // Names a cached prefix: the tokens of a run of blocks from position 0.
  using PrefixKey = uint64_t;
  static constexpr PrefixKey kEmptyPrefix = 0;

  // `num_blocks` blocks (ids 0 .. num_blocks - 1) of `block_tokens` positions,
  // all free. Without `prefix_caching`, Lookup finds nothing and Commit
  // records nothing.
  KvBlockPool(int64_t num_blocks, int64_t block_tokens, bool prefix_caching);

  int64_t num_blocks() const { return static_cast<int64_t>(refs_.size()); }
  int64_t block_tokens() const { return block_tokens_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks Allocate can hand out now: the free and the cached unreferenced.
  int64_t num_available() const { return static_cast<int64_t>(free_.size() + evictable_.size()); }
  // Blocks some sequence holds.
  int64_t num_held() const { return num_blocks() - num_available(); }
  // Blocks with a cache entry, held or not.
  int64_t num_cached() const { return static_cast<int64_t>(keys_by_block_.size()); }

  struct Match {
    std::vector<int32_t> blocks;   // the cached blocks of tokens' first blocks
    PrefixKey key = kEmptyPrefix;  // the prefix through the last of them
  };
  // The longest run of cached blocks holding tokens[0, n * block_tokens) for
  // n <= max_blocks (only whole blocks match). Takes no reference: Hold does.
  Match Lookup(absl::Span<const int32_t> tokens, int64_t max_blocks) const;

  // Cached unreferenced blocks among `blocks` (Hold would take them out of
  // the available ones).
  int64_t NumUnreferenced(absl::Span<const int32_t> blocks) const;

  // Takes a reference on each of `blocks` (cached or held ones).
  void Hold(absl::Span<const int32_t> blocks);

  // A block for one sequence (one reference): a free one, else the least
  // recently released cached one, whose entry is dropped. -1 when every
  // block is held.
  int32_t Allocate();

  // Drops a reference on each of `blocks`, from the last to the first: an
  // unreferenced cached block waits to be reused (a sequence's last blocks
  // before its first), an unreferenced uncached one is free.
  void Release(absl::Span<const int32_t> blocks);

  // Records that held `block` (one from Allocate, not yet committed) holds
  // `tokens` (block_tokens of them) after the prefix `parent`, and returns
  // the key of the prefix through it. When another block already caches
  // that prefix, `block` stays uncached and that block's key is returned
  // (the contents are the same).
  PrefixKey Commit(PrefixKey parent, absl::Span<const int32_t> tokens, int32_t block);

 private:
  // (The prefix before a block, its tokens).
  using EntryKey = std::pair<PrefixKey, std::vector<int32_t>>;
  struct Entry {
    int32_t block = -1;
    PrefixKey prefix = kEmptyPrefix;  // the key through this block
  };

  // Drops `block`'s cache entry (it must have one).
  void Forget(int32_t block);

  const int64_t block_tokens_;
  const bool prefix_caching_;
  std::vector<int32_t> refs_;
  // Handed out from the back: lowest ids first.
  std::vector<int32_t> free_;
  // Cached unreferenced blocks, least recently released first.
  std::list<int32_t> evictable_;
  std::vector<std::list<int32_t>::iterator> evictable_pos_;
  absl::flat_hash_map<EntryKey, Entry> blocks_by_key_;
  absl::flat_hash_map<int32_t, EntryKey> keys_by_block_;  // the cached blocks'
  PrefixKey next_key_ = kEmptyPrefix + 1;
};

}  // namespace herd
