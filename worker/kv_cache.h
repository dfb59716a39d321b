// The key/value cache of one sequence: F32, contiguous per layer.
//
// Layout: for each layer, K and V are F32 [capacity_tokens, num_kv_heads *
// head_dim], position p at row p. The engine writes the rows of new tokens
// before attention reads [0, position]. Not thread-safe; one sequence is
// driven by one caller at a time. (The serving issue replaces this with a
// paged cache shared by many sequences.)
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model.h"

namespace herd {

class KvCache {
 public:
  // Allocates capacity_tokens positions for every layer of `spec`.
  // ResourceExhausted if the allocation fails.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const ModelSpec& spec,
                                                         int64_t capacity_tokens);

  int64_t capacity_tokens() const { return capacity_tokens_; }
  int64_t row_floats() const { return row_floats_; }
  size_t num_bytes() const { return storage_.size() * sizeof(float); }

  float* keys(int64_t layer_idx) { return storage_.data() + (2 * layer_idx) * layer_floats(); }
  float* values(int64_t layer_idx) {
    return storage_.data() + (2 * layer_idx + 1) * layer_floats();
  }

 private:
  KvCache(int64_t num_layers, int64_t capacity_tokens, int64_t row_floats);
  int64_t layer_floats() const { return capacity_tokens_ * row_floats_; }

  int64_t capacity_tokens_;
  int64_t row_floats_;
  std::vector<float> storage_;
};

}  // namespace herd
