// The paged KV cache: where each layer's block lives, what Create refuses,
// and the sizes the coordinator plans with.
#include "worker/kv_cache.h"

#include <cstdint>
#include <limits>
#include <set>
#include <string>

#include "core/dtype.h"
#include "gtest/gtest.h"

namespace herd {
namespace {

ModelSpec SmallSpec() {
  ModelSpec spec;
  spec.num_layers = 3;
  spec.num_kv_heads = 2;
  spec.head_dim = 4;
  return spec;
}

TEST(KvCacheTest, EveryLayerBlockHasItsOwnRowsInsideTheStorage) {
  auto cache = KvCache::Create(SmallSpec(), 5, 4);
  ASSERT_TRUE(cache.ok()) << cache.status();
  KvCache& c = **cache;
  EXPECT_EQ(c.num_blocks(), 5);
  EXPECT_EQ(c.block_tokens(), 4);
  EXPECT_EQ(c.capacity_tokens(), 20);
  EXPECT_EQ(c.row_elements(), 8);
  EXPECT_EQ(c.block_elements(), 32);
  EXPECT_EQ(c.num_bytes(), size_t{2 * 3 * 5 * 4 * 8 * 4});

  // Within a layer the blocks of K (and of V) are block_elements apart, which
  // the attention kernel relies on; all the blocks tile the storage.
  const float* base = c.keys(0, 0);
  std::set<int64_t> starts;
  for (int64_t l = 0; l < 3; ++l) {
    for (int64_t b = 0; b < 5; ++b) {
      EXPECT_EQ(c.keys(l, b) - c.keys(l, 0), b * c.block_elements());
      EXPECT_EQ(c.values(l, b) - c.values(l, 0), b * c.block_elements());
      for (const float* p : {c.keys(l, b), c.values(l, b)}) {
        const int64_t start = p - base;
        EXPECT_EQ(start % c.block_elements(), 0);
        EXPECT_GE(start, 0);
        EXPECT_LE((start + c.block_elements()) * 4, static_cast<int64_t>(c.num_bytes()));
        starts.insert(start);
      }
    }
  }
  EXPECT_EQ(starts.size(), 2u * 3u * 5u);

  // A write lands in one block of one layer only.
  c.values(1, 3)[c.block_elements() - 1] = 7.0f;
  int64_t sevens = 0;
  for (int64_t l = 0; l < 3; ++l) {
    for (int64_t b = 0; b < 5; ++b) {
      for (int64_t i = 0; i < c.block_elements(); ++i) {
        sevens += (c.keys(l, b)[i] == 7.0f) + (c.values(l, b)[i] == 7.0f);
      }
    }
  }
  EXPECT_EQ(sevens, 1);
  EXPECT_EQ(static_cast<const KvCache&>(c).values(1, 3)[c.block_elements() - 1], 7.0f);
}

TEST(KvCacheTest, CreateRefusesSizesItCannotHold) {
  const ModelSpec spec = SmallSpec();
  for (int64_t num_blocks : {int64_t{0}, int64_t{-1}, int64_t{1} << 31}) {
    auto cache = KvCache::Create(spec, num_blocks, 16);
    EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument) << num_blocks;
  }
  for (int64_t block_tokens : {0, -16}) {
    auto cache = KvCache::Create(spec, 4, block_tokens);
    EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument) << block_tokens;
  }
  // More bytes than 64 bits count, and more than any machine has.
  EXPECT_EQ(KvCache::Create(spec, 1, std::numeric_limits<int64_t>::max() / 2).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(
      KvCache::Create(spec, std::numeric_limits<int32_t>::max(), int64_t{1} << 40).status().code(),
      absl::StatusCode::kResourceExhausted);
  ModelSpec empty;
  EXPECT_EQ(KvCache::Create(empty, 4, 16).status().code(), absl::StatusCode::kInvalidArgument);
  for (DType type : {DType::kBF16, DType::kQ8_0, DType::kI32}) {
    const auto cache = KvCache::Create(spec, 4, 16, type);
    EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument) << DTypeName(type);
    EXPECT_NE(cache.status().message().find("F32 or F16"), std::string::npos) << cache.status();
  }
}

// An F16 cache: the same layout in elements of two bytes, so half the bytes
// of an F32 cache of the same blocks.
TEST(KvCacheTest, F16CacheHasTheSameLayoutInHalfTheBytes) {
  const ModelSpec spec = SmallSpec();
  auto cache = KvCache::Create(spec, 5, 4, DType::kF16);
  ASSERT_TRUE(cache.ok()) << cache.status();
  KvCache& c = **cache;
  EXPECT_EQ(c.type(), DType::kF16);
  EXPECT_EQ(c.row_elements(), 8);
  EXPECT_EQ(c.block_elements(), 32);
  EXPECT_EQ(c.num_bytes(), size_t{2 * 3 * 5 * 4 * 8 * 2});
  EXPECT_EQ(KvCache::BytesPerBlock(spec, 4, DType::kF16) * 2, KvCache::BytesPerBlock(spec, 4));
  EXPECT_EQ(static_cast<int64_t>(c.num_bytes()), 5 * KvCache::BytesPerBlock(spec, 4, DType::kF16));
  const uint16_t* base = c.keys<uint16_t>(0, 0);
  std::set<int64_t> starts;
  for (int64_t l = 0; l < 3; ++l) {
    for (int64_t b = 0; b < 5; ++b) {
      EXPECT_EQ(c.keys<uint16_t>(l, b) - c.keys<uint16_t>(l, 0), b * c.block_elements());
      for (const uint16_t* p : {c.keys<uint16_t>(l, b), c.values<uint16_t>(l, b)}) {
        const int64_t start = p - base;
        EXPECT_EQ(start % c.block_elements(), 0);
        EXPECT_LE((start + c.block_elements()) * 2, static_cast<int64_t>(c.num_bytes()));
        EXPECT_EQ(*p, 0) << "zeroed";
        starts.insert(start);
      }
    }
  }
  EXPECT_EQ(starts.size(), 2u * 3u * 5u);
}

TEST(KvCacheTest, BytesPerBlockIsWhatABlockTakes) {
  const ModelSpec spec = SmallSpec();
  EXPECT_EQ(KvCache::BytesPerBlock(spec, 16), 2 * 3 * 16 * 2 * 4 * 4);
  EXPECT_EQ(KvCache::BytesPerBlock(spec, 0), 0);
  EXPECT_EQ(KvCache::BytesPerBlock(spec, -1), 0);
  auto cache = KvCache::Create(spec, 7, 16);
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ(static_cast<int64_t>((*cache)->num_bytes()), 7 * KvCache::BytesPerBlock(spec, 16));
}

// A cache whose storage comes from a device engine's allocator: the same
// layout, the device's name, the memory released once with the cache, and an
// allocation failure reported with the device and the size.
TEST(KvCacheTest, StorageFromAnAllocatorIsReleasedWithTheCache) {
  int allocations = 0;
  int releases = 0;
  KvMemory memory;
  memory.device = "cuda:0";
  memory.allocate = [&](size_t bytes) -> absl::StatusOr<void*> {
    ++allocations;
    return new float[bytes / sizeof(float)]();
  };
  memory.release = [&](void* data) {
    ++releases;
    delete[] static_cast<float*>(data);
  };
  {
    auto cache = KvCache::Create(SmallSpec(), 5, 4, DType::kF32, &memory);
    ASSERT_TRUE(cache.ok()) << cache.status();
    EXPECT_EQ((*cache)->device(), "cuda:0");
    EXPECT_EQ((*cache)->num_bytes(), size_t{2 * 3 * 5 * 4 * 8 * 4});
    EXPECT_EQ((*cache)->values(2, 4) + (*cache)->block_elements() - (*cache)->keys(0, 0),
              static_cast<int64_t>((*cache)->num_bytes() / sizeof(float)));
    EXPECT_EQ(allocations, 1);
    EXPECT_EQ(releases, 0);
  }
  EXPECT_EQ(releases, 1);

  auto host = KvCache::Create(SmallSpec(), 5, 4);
  ASSERT_TRUE(host.ok());
  EXPECT_EQ((*host)->device(), "");

  memory.allocate = [](size_t) -> absl::StatusOr<void*> {
    return absl::InternalError("out of memory");
  };
  auto failed = KvCache::Create(SmallSpec(), 5, 4, DType::kF32, &memory);
  ASSERT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(failed.status().message().find("on cuda:0: out of memory"), std::string::npos)
      << failed.status();
  EXPECT_EQ(releases, 1);
}

}  // namespace
}  // namespace herd
