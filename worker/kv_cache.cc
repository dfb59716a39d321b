#include "worker/kv_cache.h"

#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "core/huge_pages.h"

namespace herd {

KvCache::~KvCache() {
  if (release_) release_(data_);
}

int64_t KvCache::BytesPerBlock(const ModelSpec& spec, int64_t block_tokens, DType type) {
  if (block_tokens < 1) return 0;
  return 2 * spec.num_layers * block_tokens * spec.num_kv_heads * spec.head_dim * BlockBytes(type);
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const ModelSpec& spec, int64_t num_blocks,
                                                         int64_t block_tokens, DType type,
                                                         const KvMemory* memory) {
  if (!IsKvCacheType(type)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a KV cache holds F32 or F16 elements, not ", DTypeName(type)));
  }
  if (num_blocks < 1 || num_blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache blocks must be in [1, 2^31 - 1] (block ids are I32), got ", num_blocks));
  }
  if (block_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache block must hold >= 1 token, got ", block_tokens));
  }
  const int64_t token_bytes = BytesPerBlock(spec, 1, type);
  if (token_bytes <= 0) return absl::InvalidArgumentError("the model has no K/V rows to cache");
  const int64_t max_bytes = std::numeric_limits<int64_t>::max();
  if (block_tokens > max_bytes / token_bytes ||
      num_blocks > max_bytes / (token_bytes * block_tokens)) {
    return absl::ResourceExhaustedError(absl::StrCat("a KV cache of ", num_blocks, " blocks x ",
                                                     block_tokens, " tokens overflows 64 bits"));
  }
  const int64_t block_bytes = token_bytes * block_tokens;
  const int64_t row_elements = spec.num_kv_heads * spec.head_dim;
  const size_t num_bytes = static_cast<size_t>(num_blocks * block_bytes);
  const auto exhausted = [&](const std::string& why) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a KV cache of ", num_blocks,
                                                     " blocks x ", block_tokens, " tokens (",
                                                     num_blocks * block_bytes, " bytes)", why));
  };
  std::unique_ptr<KvCache> cache(
      new KvCache(num_blocks, block_tokens, row_elements, type, num_bytes));
  if (memory != nullptr) {
    absl::StatusOr<void*> data = memory->allocate(num_bytes);
    if (!data.ok())
      return exhausted(absl::StrCat(" on ", memory->device, ": ", data.status().message()));
    cache->data_ = *data;
    cache->device_ = memory->device;
    cache->release_ = memory->release;
    return cache;
  }
  // In huge pages where the kernel allows: attention reads one kv head's
  // rows a row apart, so with 4 KiB pages it would cross a page every few
  // positions.
  std::shared_ptr<uint8_t[]> storage = AllocateHugePageBacked(num_bytes);
  if (storage == nullptr) return exhausted("");
  cache->data_ = storage.get();
  cache->release_ = [storage = std::move(storage)](void*) mutable { storage.reset(); };
  return cache;
}

}  // namespace herd
