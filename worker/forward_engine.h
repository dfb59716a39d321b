// What every engine offers the code that drives it (generation, benchmarks,
// serving): Forward over a Batch of tokens against a paged KV cache the
// engine made where it runs. The CPU engine (worker/engine.h) and the CUDA
// engine (worker/cuda/cuda_engine.h) implement it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/placement.h"
#include "model/model.h"
#include "worker/batch.h"
#include "worker/engine_stats.h"
#include "worker/kv_cache.h"

namespace herd {

class ExpertTable;

// Called once per layer and internal step with the router's choice for every
// token of the step: expert_idx I32 [num_tokens, top_k] and weights F32
// [num_tokens, top_k] (host memory, valid during the call). Slots that
// dynamic skipping dropped have expert -1 and weight 0.
using RoutingObserver = std::function<void(int layer_idx, int64_t num_tokens, int64_t top_k,
                                           const int32_t* expert_idx, const float* weights)>;

// Online rebalancing of an expert-parallel engine: the placement in force,
// the experts this rank holds for it, and switching to another.
class ExpertPlacementSwitch {
 public:
  virtual ~ExpertPlacementSwitch() = default;

  // This rank in the expert-parallel group.
  virtual int rank() const = 0;
  // The placement in force and the experts this rank holds for it. Valid
  // until the next SwapPlacement; a caller that keeps the shared_ptr keeps
  // what it points to alive.
  virtual const ExpertPlacement& placement() const = 0;
  virtual std::shared_ptr<const ExpertTable> experts() const = 0;
  // The checkpoint the model was loaded from (rebalancing reads experts from it).
  virtual const std::string& model_path() const = 0;
  // Runs the following Forward calls with `placement` and `experts` (built
  // for it by LoadExpertsForPlacement). Call between Forward calls, on the
  // thread that drives the engine. NOTE: every rank must swap before the
  // same Forward call, or tokens go to ranks that no longer hold their
  // experts. InvalidArgument (nothing changed) for a placement of another
  // shape, or when `experts` lacks an expert the placement gives this rank.
  virtual absl::Status SwapPlacement(std::shared_ptr<const ExpertPlacement> placement,
                                     std::shared_ptr<const ExpertTable> experts) = 0;
};

class ForwardEngine {
 public:
  virtual ~ForwardEngine() = default;

  // Runs `batch`; writes F32 [batch.logit_rows.size(), vocab] into `logits`
  // (host memory). InvalidArgument (ValidateBatch) before anything is written
  // to the cache. An expert-parallel Forward is a collective: every rank
  // calls it the same number of times, with an empty batch when it has no
  // tokens.
  virtual absl::Status Forward(const Batch& batch, float* logits) = 0;

  // The checks Forward runs first: herd::ValidateBatch (worker/batch.h), and
  // a cache that lives where this engine runs. A caller that must not miss a
  // collective checks first and runs an empty batch instead of a bad one.
  virtual absl::Status ValidateBatch(const Batch& batch) const = 0;

  // A paged cache of num_blocks x block_tokens positions for this engine's
  // model, in the memory this engine's Forward reads (host or device).
  virtual absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(int64_t num_blocks,
                                                                 int64_t block_tokens) = 0;

  // Routing of the following Forward calls goes to `observer` (nullptr:
  // nowhere). On a device, observing copies the routing to the host each step.
  virtual void SetRoutingObserver(RoutingObserver observer) = 0;

  virtual const ModelSpec& spec() const = 0;
  virtual const EngineStats& stats() const = 0;
  // Whether Forward is a collective over several ranks.
  virtual bool expert_parallel() const = 0;
  // "cpu" or "cuda:N": where Forward runs.
  virtual std::string device() const = 0;
  // Expert parallelism: switching placements while serving; null for an
  // engine that runs every expert itself.
  virtual ExpertPlacementSwitch* placement_switch() { return nullptr; }
  // One line for the logs: threads or GPU, and the weights it holds.
  virtual std::string Describe() const = 0;
};

}  // namespace herd
