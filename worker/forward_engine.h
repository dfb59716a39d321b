// What every engine offers the code that drives it (generation, benchmarks,
// serving): Forward over a Batch of tokens against a paged KV cache the
// engine made where it runs. The CPU engine (worker/engine.h) and the CUDA
// engine (worker/cuda/cuda_engine.h) implement it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/model.h"
#include "worker/batch.h"
#include "worker/engine_stats.h"
#include "worker/kv_cache.h"

namespace herd {

class ForwardEngine {
 public:
  virtual ~ForwardEngine() = default;

  // Runs `batch`; writes F32 [batch.logit_rows.size(), vocab] into `logits`
  // (host memory). InvalidArgument (ValidateBatch, or a cache that lives
  // somewhere else than the engine runs) before anything is written to the
  // cache. An expert-parallel Forward is a collective: every rank calls it
  // the same number of times, with an empty batch when it has no tokens.
  virtual absl::Status Forward(const Batch& batch, float* logits) = 0;

  // A paged cache of num_blocks x block_tokens positions for this engine's
  // model, in the memory this engine's Forward reads (host or device).
  virtual absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(int64_t num_blocks,
                                                                 int64_t block_tokens) = 0;

  virtual const ModelSpec& spec() const = 0;
  virtual const EngineStats& stats() const = 0;
  // Whether Forward is a collective over several ranks.
  virtual bool expert_parallel() const = 0;
  // "cpu" or "cuda:N": where Forward runs.
  virtual std::string device() const = 0;
};

}  // namespace herd
