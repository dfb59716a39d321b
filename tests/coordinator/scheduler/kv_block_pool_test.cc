// The KV block pool's prefix cache: lookups find exactly the blocks computed
// for the same tokens at the same positions, references keep shared blocks
// from being reused, and released cached blocks are reused last, least
// recently released first.
#include "coordinator/scheduler/kv_block_pool.h"

#include <vector>

#include "gtest/gtest.h"

namespace herd {
namespace {

constexpr int64_t kBlockTokens = 4;

// Allocates a block per whole block of `tokens` and commits each, as the
// executor does once their positions are computed.
std::vector<int32_t> Compute(KvBlockPool& pool, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> blocks;
  KvBlockPool::PrefixKey key = KvBlockPool::kEmptyPrefix;
  for (size_t b = 0; (b + 1) * kBlockTokens <= tokens.size(); ++b) {
    const int32_t block = pool.Allocate();
    EXPECT_GE(block, 0);
    blocks.push_back(block);
    key = pool.Commit(key, absl::MakeConstSpan(tokens).subspan(b * kBlockTokens, kBlockTokens),
                      block);
  }
  return blocks;
}

TEST(KvBlockPoolTest, FreeBlocksGoOutLowestIdFirst) {
  KvBlockPool pool(3, kBlockTokens, true);
  EXPECT_EQ(pool.num_available(), 3);
  EXPECT_EQ(pool.Allocate(), 0);
  EXPECT_EQ(pool.Allocate(), 1);
  EXPECT_EQ(pool.Allocate(), 2);
  EXPECT_EQ(pool.Allocate(), -1);
  EXPECT_EQ(pool.num_held(), 3);
  pool.Release(std::vector<int32_t>{1});
  EXPECT_EQ(pool.num_available(), 1);
  EXPECT_EQ(pool.Allocate(), 1);
}

TEST(KvBlockPoolTest, LookupFindsTheLongestRunOfWholeCachedBlocks) {
  KvBlockPool pool(8, kBlockTokens, true);
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  const std::vector<int32_t> blocks = Compute(pool, tokens);
  ASSERT_EQ(blocks.size(), 2u);
  EXPECT_EQ(pool.num_cached(), 2);

  EXPECT_EQ(pool.Lookup(tokens, 8).blocks, blocks);
  EXPECT_EQ(pool.Lookup(tokens, 1).blocks, std::vector<int32_t>{blocks[0]});
  // A partial block never matches; a different second block stops the run.
  EXPECT_EQ(pool.Lookup({1, 2, 3, 4, 5, 6, 7}, 8).blocks, std::vector<int32_t>{blocks[0]});
  EXPECT_EQ(pool.Lookup({1, 2, 3, 4, 5, 6, 7, 0, 9}, 8).blocks, std::vector<int32_t>{blocks[0]});
  // The same tokens after another prefix are another prefix.
  EXPECT_TRUE(pool.Lookup({0, 2, 3, 4, 5, 6, 7, 8}, 8).blocks.empty());
  EXPECT_TRUE(pool.Lookup({5, 6, 7, 8}, 8).blocks.empty());
  // Continuing from a match's key extends the same chain.
  const KvBlockPool::Match first = pool.Lookup(tokens, 1);
  const int32_t third = pool.Allocate();
  pool.Commit(first.key, std::vector<int32_t>{5, 6, 7, 0}, third);
  EXPECT_EQ(pool.Lookup({1, 2, 3, 4, 5, 6, 7, 0}, 8).blocks,
            (std::vector<int32_t>{blocks[0], third}));
}

TEST(KvBlockPoolTest, SharedBlocksStayHeldUntilEveryHolderReleases) {
  KvBlockPool pool(4, kBlockTokens, true);
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<int32_t> a = Compute(pool, tokens);
  const KvBlockPool::Match match = pool.Lookup(tokens, 8);
  EXPECT_EQ(pool.NumUnreferenced(match.blocks), 0);
  pool.Hold(match.blocks);  // a second sequence
  EXPECT_EQ(pool.num_held(), 2);
  pool.Release(a);
  EXPECT_EQ(pool.num_held(), 2);  // the second still holds them
  pool.Release(match.blocks);
  EXPECT_EQ(pool.num_held(), 0);
  EXPECT_EQ(pool.num_available(), 4);
  // Unreferenced, still cached: a lookup finds them and Hold takes them back
  // out of the available ones.
  const KvBlockPool::Match again = pool.Lookup(tokens, 8);
  EXPECT_EQ(again.blocks, a);
  EXPECT_EQ(pool.NumUnreferenced(again.blocks), 2);
  pool.Hold(again.blocks);
  EXPECT_EQ(pool.num_available(), 2);
  // The free blocks go out before any cached one.
  EXPECT_EQ(pool.Allocate(), 2);
  EXPECT_EQ(pool.Allocate(), 3);
  EXPECT_EQ(pool.Allocate(), -1);
  EXPECT_EQ(pool.num_cached(), 2);
}

TEST(KvBlockPoolTest, ReusingACachedBlockForgetsItAndWhatFollowsItIsUnreachable) {
  KvBlockPool pool(2, kBlockTokens, true);
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<int32_t> blocks = Compute(pool, tokens);
  pool.Release(blocks);
  // Released last to first: the sequence's last block is reused first.
  EXPECT_EQ(pool.Allocate(), blocks[1]);
  EXPECT_EQ(pool.num_cached(), 1);
  EXPECT_EQ(pool.Lookup(tokens, 8).blocks, std::vector<int32_t>{blocks[0]});
  EXPECT_EQ(pool.Allocate(), blocks[0]);
  EXPECT_EQ(pool.num_cached(), 0);
  EXPECT_TRUE(pool.Lookup(tokens, 8).blocks.empty());

  // Evicting a first block leaves the second cached but unreachable; the
  // same tokens computed again make a new chain.
  KvBlockPool other(3, kBlockTokens, true);
  const std::vector<int32_t> chain = Compute(other, tokens);
  other.Release(std::vector<int32_t>{chain[0]});
  EXPECT_EQ(other.Allocate(), 2);         // the free block first
  EXPECT_EQ(other.Allocate(), chain[0]);  // then the cached first block
  EXPECT_TRUE(other.Lookup(tokens, 8).blocks.empty());
  EXPECT_EQ(other.num_cached(), 1);  // chain[1], orphaned
  other.Release(std::vector<int32_t>{chain[0], 2});
  const std::vector<int32_t> recomputed = Compute(other, tokens);
  EXPECT_EQ(other.Lookup(tokens, 8).blocks, recomputed);
}

TEST(KvBlockPoolTest, TheLeastRecentlyReleasedCachedBlockIsReusedFirst) {
  KvBlockPool pool(3, kBlockTokens, true);
  const std::vector<int32_t> a = Compute(pool, {1, 1, 1, 1});
  const std::vector<int32_t> b = Compute(pool, {2, 2, 2, 2});
  const std::vector<int32_t> c = Compute(pool, {3, 3, 3, 3});
  pool.Release(b);
  pool.Release(a);
  pool.Release(c);
  // A lookup that holds and releases `b` again makes it the most recent.
  const KvBlockPool::Match hit = pool.Lookup({2, 2, 2, 2}, 1);
  pool.Hold(hit.blocks);
  pool.Release(hit.blocks);
  EXPECT_EQ(pool.Allocate(), a[0]);
  EXPECT_EQ(pool.Allocate(), c[0]);
  EXPECT_EQ(pool.Allocate(), b[0]);
}

TEST(KvBlockPoolTest, ADuplicateCommitKeepsTheFirstBlockAndItsKey) {
  KvBlockPool pool(4, kBlockTokens, true);
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  // Two sequences computed the same prompt in the same step.
  const std::vector<int32_t> first = Compute(pool, tokens);
  const std::vector<int32_t> second = Compute(pool, tokens);
  EXPECT_EQ(pool.num_cached(), 2);
  EXPECT_EQ(pool.Lookup(tokens, 8).blocks, first);
  // The duplicates were never cached: released, they are free, not cached.
  pool.Release(second);
  EXPECT_EQ(pool.num_cached(), 2);
  EXPECT_EQ(pool.Allocate(), second[0]);
}

TEST(KvBlockPoolTest, WithoutPrefixCachingNothingIsCached) {
  KvBlockPool pool(4, kBlockTokens, false);
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::vector<int32_t> blocks = Compute(pool, tokens);
  EXPECT_EQ(pool.num_cached(), 0);
  EXPECT_TRUE(pool.Lookup(tokens, 8).blocks.empty());
  pool.Release(blocks);
  EXPECT_EQ(pool.num_available(), 4);
  EXPECT_EQ(pool.Allocate(), blocks[0]);  // free again, lowest id first
}

}  // namespace
}  // namespace herd
