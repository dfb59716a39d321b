#include "worker/kv_cache.h"

#include <exception>
#include <limits>

#include "absl/strings/str_cat.h"

namespace herd {

KvCache::KvCache(int64_t num_layers, int64_t num_blocks, int64_t block_tokens, int64_t row_floats)
    : num_blocks_(num_blocks),
      block_tokens_(block_tokens),
      row_floats_(row_floats),
      storage_(static_cast<size_t>(2 * num_layers * num_blocks * block_tokens * row_floats)) {}

int64_t KvCache::BytesPerBlock(const ModelSpec& spec, int64_t block_tokens) {
  if (block_tokens < 1) return 0;
  return 2 * spec.num_layers * block_tokens * spec.num_kv_heads * spec.head_dim *
         static_cast<int64_t>(sizeof(float));
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const ModelSpec& spec, int64_t num_blocks,
                                                         int64_t block_tokens) {
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
  try {
    return std::unique_ptr<KvCache>(
        new KvCache(spec.num_layers, num_blocks, block_tokens, row_floats));
  } catch (const std::exception&) {  // bad_alloc, or length_error past the vector's max_size
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a KV cache of ", num_blocks,
                                                     " blocks x ", block_tokens, " tokens (",
                                                     num_blocks * block_bytes, " bytes)"));
  }
}

}  // namespace herd
