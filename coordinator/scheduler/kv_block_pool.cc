#include "coordinator/scheduler/kv_block_pool.h"

#include <algorithm>
#include <cassert>

namespace herd {

KvBlockPool::KvBlockPool(int64_t num_blocks, int64_t block_tokens, bool prefix_caching)
    : block_tokens_(block_tokens),
      prefix_caching_(prefix_caching),
      refs_(num_blocks, 0),
      evictable_pos_(num_blocks) {
  free_.reserve(num_blocks);
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

KvBlockPool::Match KvBlockPool::Lookup(absl::Span<const int32_t> tokens, int64_t max_blocks) const {
  Match match;
  if (!prefix_caching_) return match;
  const int64_t whole = std::min<int64_t>(max_blocks, tokens.size() / block_tokens_);
  EntryKey key;
  for (int64_t i = 0; i < whole; ++i) {
    key.first = match.key;
    key.second.assign(tokens.begin() + i * block_tokens_, tokens.begin() + (i + 1) * block_tokens_);
    auto it = blocks_by_key_.find(key);
    if (it == blocks_by_key_.end()) break;
    match.blocks.push_back(it->second.block);
    match.key = it->second.prefix;
  }
  return match;
}

int64_t KvBlockPool::NumUnreferenced(absl::Span<const int32_t> blocks) const {
  int64_t count = 0;
  for (int32_t b : blocks) count += refs_[b] == 0 ? 1 : 0;
  return count;
}

void KvBlockPool::Hold(absl::Span<const int32_t> blocks) {
  for (int32_t b : blocks) {
    if (refs_[b]++ == 0) {
      assert(keys_by_block_.contains(b));  // only cached blocks are found unreferenced
      evictable_.erase(evictable_pos_[b]);
    }
  }
}

int32_t KvBlockPool::Allocate() {
  int32_t block = -1;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else if (!evictable_.empty()) {
    block = evictable_.front();
    evictable_.pop_front();
    Forget(block);
  } else {
    return -1;
  }
  refs_[block] = 1;
  return block;
}

void KvBlockPool::Release(absl::Span<const int32_t> blocks) {
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    const int32_t b = *it;
    assert(refs_[b] > 0);
    if (--refs_[b] > 0) continue;
    if (keys_by_block_.contains(b)) {
      evictable_pos_[b] = evictable_.insert(evictable_.end(), b);
    } else {
      free_.push_back(b);
    }
  }
}

KvBlockPool::PrefixKey KvBlockPool::Commit(PrefixKey parent, absl::Span<const int32_t> tokens,
                                           int32_t block) {
  if (!prefix_caching_) return kEmptyPrefix;
  assert(static_cast<int64_t>(tokens.size()) == block_tokens_ && refs_[block] > 0);
  // A block from Allocate has no entry; one from Lookup is never committed.
  assert(!keys_by_block_.contains(block));
  EntryKey key(parent, std::vector<int32_t>(tokens.begin(), tokens.end()));
  if (auto it = blocks_by_key_.find(key); it != blocks_by_key_.end()) return it->second.prefix;
  const PrefixKey prefix = next_key_++;
  keys_by_block_.emplace(block, key);
  blocks_by_key_.emplace(std::move(key), Entry{block, prefix});
  return prefix;
}

void KvBlockPool::Forget(int32_t block) {
  auto it = keys_by_block_.find(block);
  blocks_by_key_.erase(it->second);
  keys_by_block_.erase(it);
}

}  // namespace herd
