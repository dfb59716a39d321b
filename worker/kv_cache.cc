#include "worker/kv_cache.h"

#include <exception>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace herd {

KvCache::~KvCache() {
  if (release_) release_(data_);
}

int64_t KvCache::BytesPerBlock(const ModelSpec& spec, int64_t block_tokens) {
  if (block_tokens < 1) return 0;
  return 2 * spec.num_layers * block_tokens * spec.num_kv_heads * spec.head_dim *
         static_cast<int64_t>(sizeof(float));
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const ModelSpec& spec, int64_t num_blocks,
                                                         int64_t block_tokens,
                                                         const KvMemory* memory) {
  if (num_blocks < 1 || num_blocks > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache blocks must be in [1, 2^31 - 1] (block ids are I32), got ", num_blocks));
  }
  if (block_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache block must hold >= 1 token, got ", block_tokens));
  }
  const int64_t token_bytes = BytesPerBlock(spec, 1);
  if (token_bytes <= 0) return absl::InvalidArgumentError("the model has no K/V rows to cache");
  const int64_t max_bytes = std::numeric_limits<int64_t>::max();
  if (block_tokens > max_bytes / token_bytes ||
      num_blocks > max_bytes / (token_bytes * block_tokens)) {
    return absl::ResourceExhaustedError(absl::StrCat("a KV cache of ", num_blocks, " blocks x ",
                                                     block_tokens, " tokens overflows 64 bits"));
  }
  const int64_t block_bytes = token_bytes * block_tokens;
  const int64_t row_floats = spec.num_kv_heads * spec.head_dim;
  const size_t num_floats = static_cast<size_t>(num_blocks * block_bytes) / sizeof(float);
  const auto exhausted = [&](const std::string& why) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a KV cache of ", num_blocks,
                                                     " blocks x ", block_tokens, " tokens (",
                                                     num_blocks * block_bytes, " bytes)", why));
  };
  std::unique_ptr<KvCache> cache(new KvCache(num_blocks, block_tokens, row_floats, num_floats));
  if (memory != nullptr) {
    absl::StatusOr<float*> data = memory->allocate(num_floats * sizeof(float));
    if (!data.ok())
      return exhausted(absl::StrCat(" on ", memory->device, ": ", data.status().message()));
    cache->data_ = *data;
    cache->device_ = memory->device;
    cache->release_ = memory->release;
    return cache;
  }
  try {
    cache->data_ = new float[num_floats]();
  } catch (const std::exception&) {  // bad_alloc, or bad_array_new_length
    return exhausted("");
  }
  cache->release_ = [](float* data) { delete[] data; };
  return cache;
}

}  // namespace herd
