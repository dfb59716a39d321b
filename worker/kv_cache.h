// The paged key/value cache of one rank, shared by all its sequences
// (vLLM-style): a pool of `num_blocks` blocks of `block_tokens` positions
// each. A sequence owns an ordered list of blocks, its block table: position
// p lives in block block_table[p / block_tokens] at row p % block_tokens. The
// cache knows nothing of sequences; whoever plans the batches (the generator
// for one sequence, the coordinator when serving) hands out the blocks.
//
// Layout: one array of F32 (the default) or F16 elements (half the memory;
// the CPU engine only), [layer][K | V][block][block_tokens][num_kv_heads *
// head_dim], so within a layer the blocks of K (and of V) are evenly spaced
// and the attention kernel reaches block b at keys(layer, 0) + b *
// block_elements(). The engine writes the rows of new tokens before
// attention reads positions [0, position].
//
// The blocks live in host memory, or in a device's memory when the engine
// that runs on that device made the cache (KvMemory); the layout is the same.
//
// Not thread-safe: one engine drives the cache at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "core/dtype.h"
#include "model/model.h"

namespace herd {

// Tokens per block where nobody chose (vLLM's default too): a sequence wastes
// at most 15 positions of its last block, and the attention kernel reads 16
// positions between two block-table lookups.
inline constexpr int64_t kDefaultKvBlockTokens = 16;

// Where a cache's storage comes from: a device engine's allocator. The
// memory it returns must be zeroed and stay valid until `release`.
struct KvMemory {
  std::string device;  // "cuda:0": what the cache's on_device() names
  std::function<absl::StatusOr<void*>(size_t bytes)> allocate;
  std::function<void(void*)> release;
};

class KvCache {
 public:
  // Allocates num_blocks blocks of block_tokens positions of `type`
  // elements for every layer of `spec`, zeroed, in host memory (memory ==
  // nullptr) or from `memory`. InvalidArgument unless 1 <= num_blocks <=
  // 2^31 - 1 (block ids are I32), block_tokens >= 1 and type is F32 or F16;
  // ResourceExhausted if the allocation fails.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const ModelSpec& spec, int64_t num_blocks,
                                                         int64_t block_tokens,
                                                         DType type = DType::kF32,
                                                         const KvMemory* memory = nullptr);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // Bytes one block of `type` (F32 or F16) elements takes over all layers, K
  // and V (0 for block_tokens < 1).
  static int64_t BytesPerBlock(const ModelSpec& spec, int64_t block_tokens,
                               DType type = DType::kF32);

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_tokens() const { return block_tokens_; }
  // Positions the whole pool holds.
  int64_t capacity_tokens() const { return num_blocks_ * block_tokens_; }
  // F32 or F16.
  DType type() const { return type_; }
  // Elements of one position's K (or V) row: num_kv_heads * head_dim.
  int64_t row_elements() const { return row_elements_; }
  // Elements from one block of a layer's K (or V) to the next.
  int64_t block_elements() const { return block_tokens_ * row_elements_; }
  size_t num_bytes() const { return num_bytes_; }
  // The device holding the blocks ("cuda:0"), or empty for host memory.
  const std::string& device() const { return device_; }

  // [block_tokens, row_elements]: the K (V) rows of block `block_idx` in
  // layer `layer_idx` (device pointers for a device cache), as T: float for
  // an F32 cache, uint16_t (F16 bits) for an F16 one. Both indices must be
  // in range and T must match type() (not checked).
  template <typename T = float>
  T* keys(int64_t layer_idx, int64_t block_idx) {
    return static_cast<T*>(data_) + ((2 * layer_idx) * num_blocks_ + block_idx) * block_elements();
  }
  template <typename T = float>
  T* values(int64_t layer_idx, int64_t block_idx) {
    return static_cast<T*>(data_) +
           ((2 * layer_idx + 1) * num_blocks_ + block_idx) * block_elements();
  }
  template <typename T = float>
  const T* keys(int64_t layer_idx, int64_t block_idx) const {
    return const_cast<KvCache*>(this)->keys<T>(layer_idx, block_idx);
  }
  template <typename T = float>
  const T* values(int64_t layer_idx, int64_t block_idx) const {
    return const_cast<KvCache*>(this)->values<T>(layer_idx, block_idx);
  }

 private:
  KvCache(int64_t num_blocks, int64_t block_tokens, int64_t row_elements, DType type,
          size_t num_bytes)
      : num_blocks_(num_blocks),
        block_tokens_(block_tokens),
        row_elements_(row_elements),
        type_(type),
        num_bytes_(num_bytes) {}

  int64_t num_blocks_;
  int64_t block_tokens_;
  int64_t row_elements_;
  DType type_;
  size_t num_bytes_;
  void* data_ = nullptr;
  std::string device_;
  std::function<void(void*)> release_;
};

}  // namespace herd
