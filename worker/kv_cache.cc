#include "worker/kv_cache.h"

#include <new>

#include "absl/strings/str_cat.h"

namespace herd {

KvCache::KvCache(int64_t num_layers, int64_t capacity_tokens, int64_t row_floats)
    : capacity_tokens_(capacity_tokens),
      row_floats_(row_floats),
      storage_(static_cast<size_t>(2 * num_layers * capacity_tokens * row_floats)) {}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const ModelSpec& spec,
                                                         int64_t capacity_tokens) {
  if (capacity_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache capacity must be > 0 tokens, got ", capacity_tokens));
  }
  const int64_t row_floats = spec.num_kv_heads * spec.head_dim;
  try {
    return std::unique_ptr<KvCache>(new KvCache(spec.num_layers, capacity_tokens, row_floats));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate a KV cache of ", capacity_tokens, " tokens (",
                     2 * spec.num_layers * capacity_tokens * row_floats * 4, " bytes)"));
  }
}

}  // namespace herd
