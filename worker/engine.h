// The engine of one rank: runs the model's forward pass over a batch of
// tokens from one or more sequences.
//
// One step, per layer: RMSNorm -> q/k/v projections (+bias, q/k norm) ->
// RoPE -> write K/V into each sequence's blocks of the paged cache -> causal
// GQA attention over those blocks -> output projection + residual -> RMSNorm
// -> router top-k -> permute tokens by expert -> grouped expert SwiGLU FFNs
// (+ the shared expert) -> weighted combine + residual. After the last layer,
// the final norm and the lm head run only for the rows whose logits were
// asked for.
//
// Thread-safety: an Engine is driven by one thread at a time (it owns scratch
// buffers); kernels inside use its thread pool. The Model must outlive it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "comm/expert_exchange.h"
#include "core/placement.h"
#include "core/thread_pool.h"
#include "kernels/attention.h"
#include "kernels/moe.h"
#include "model/model.h"
#include "worker/batch.h"
#include "worker/engine_stats.h"
#include "worker/expert_parallelism.h"
#include "worker/expert_table.h"
#include "worker/forward_engine.h"
#include "worker/kv_cache.h"

namespace herd {

struct EngineOptions {
  // Kernel threads including the caller; 0 = every core this process may use.
  int num_threads = 0;
  // Tokens one internal step processes; longer batches (prefill) run in
  // several steps. Bounds activation memory (~60 KiB per token per 1024 of
  // hidden size) while keeping weight reuse high.
  int64_t max_step_tokens = 128;
  ExpertParallelism expert_parallelism;
  // Dynamic expert skipping with the model's per-layer thresholds
  // (LayerWeights::expert_skip_threshold, set by `herd compress
  // --skip-threshold`); false runs every routed expert.
  bool expert_skipping = true;
  // Element type of the caches CreateKvCache makes: F32, or F16 (half the
  // memory and of what attention reads; keys and values are rounded to F16
  // as they are written, as llama.cpp's default cache does).
  DType kv_cache_type = DType::kF32;
};

// Which input of a layer's linear projections a LinearInputObserver sees.
enum class LinearInput {
  kAttention,        // F32 [tokens, hidden], normed: what q, k and v read
  kAttentionOutput,  // F32 [tokens, heads * head_dim]: what o reads
  kExperts,          // F32 [slots, hidden] grouped by expert, with the offsets: what gate/up read
  kMoe,              // F32 [tokens, hidden], normed: what the router and shared expert read
};
// Called during Forward with each projection input (single rank only), for
// calibration; expert_offsets I32 [num_experts + 1] for kExperts, else null.
using LinearInputObserver =
    std::function<void(int layer_idx, LinearInput input, const float* x, int64_t rows, int64_t cols,
                       const int32_t* expert_offsets)>;

// Points of the residual stream a ResidualObserver sees, per layer.
enum class ResidualPoint {
  kBlockInput,   // entering the block (before the attention norm)
  kMoeInput,     // after the attention residual add, entering the MoE norm
  kBlockOutput,  // after the MoE residual add
};
// Called during Forward with the residual stream x F32 [tokens, hidden], for
// calibration (block and layer similarities).
using ResidualObserver = std::function<void(int layer_idx, ResidualPoint point, const float* x,
                                            int64_t num_tokens, int64_t hidden)>;

class Engine final : public ForwardEngine, public ExpertPlacementSwitch {
 public:
  // Single rank: the model must hold every expert. Expert parallelism: it
  // must hold every expert the placement gives this rank (others may be
  // absent), and the placement must match the model and the group.
  // InvalidArgument otherwise.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const Model& model,
                                                        const EngineOptions& options);

  // Runs `batch`; writes F32 [batch.logit_rows.size(), vocab] into `logits`.
  // InvalidArgument (see ValidateBatch) before anything is written to the
  // cache and, with expert parallelism, before any collective. With expert
  // parallelism Forward is a collective: every rank calls it the same number
  // of times, with an empty batch when it has no tokens; errors of a peer
  // surface as the Communicator's errors.
  absl::Status Forward(const Batch& batch, float* logits) override;
  // A host cache of EngineOptions::kv_cache_type (KvCache::Create).
  absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(int64_t num_blocks,
                                                         int64_t block_tokens) override;

  // The checks Forward runs first: herd::ValidateBatch (worker/batch.h), and
  // a cache in host memory. A caller that must not miss a collective (expert
  // parallelism) checks first and runs an empty batch instead of a bad one.
  absl::Status ValidateBatch(const Batch& batch) const;

  void SetRoutingObserver(RoutingObserver observer) { routing_observer_ = std::move(observer); }
  void SetLinearInputObserver(LinearInputObserver observer) {
    linear_input_observer_ = std::move(observer);
  }
  void SetResidualObserver(ResidualObserver observer) { residual_observer_ = std::move(observer); }
  bool expert_parallel() const override { return ep_.comm != nullptr; }
  const EngineStats& stats() const override { return stats_; }
  std::string device() const override { return "cpu"; }
  int rank() const override { return ep_.comm != nullptr ? ep_.comm->rank() : 0; }
  // This engine itself with expert parallelism, else null.
  ExpertPlacementSwitch* placement_switch() override { return expert_parallel() ? this : nullptr; }
  // "cpu, N threads, resident expert weights B".
  std::string Describe() const override;
  // Bytes of expert weights this rank holds (as the kernels read them).
  int64_t resident_expert_bytes() const;

  // Expert parallelism: the placement in force and the experts this rank
  // holds for it. Valid until the next SwapPlacement; a caller that keeps a
  // shared_ptr keeps what it points to alive.
  const ExpertPlacement& placement() const override { return *placement_; }
  std::shared_ptr<const ExpertTable> experts() const override { return experts_; }

  // Expert parallelism: runs the following Forward calls with `placement`
  // (dispatch routes by it) and `experts` (built for it, off this thread, by
  // LoadExpertsForPlacement). Cheap: two pointer swaps; the previous table's
  // experts that `experts` does not share are freed when no one else holds
  // them. Call between Forward calls, on the thread that drives the engine.
  // NOTE: every rank must swap before the same Forward call, or tokens go to
  // ranks that no longer hold their experts. InvalidArgument (nothing
  // changed) without expert parallelism, for a placement of another shape, or
  // when `experts` lacks an expert the placement gives this rank.
  absl::Status SwapPlacement(std::shared_ptr<const ExpertPlacement> placement,
                             std::shared_ptr<const ExpertTable> experts) override;
  const ModelSpec& spec() const override { return model_.spec; }
  // The checkpoint the model was loaded from (rebalancing reads experts from it).
  const std::string& model_path() const override { return model_.source_path; }
  int num_threads() const { return pool_.num_threads(); }
  // Bytes of weights as the kernels read them (repacked copies included).
  int64_t packed_weight_bytes() const;

 private:
  Engine(const Model& model, const EngineOptions& options, int num_threads);
  // Forward for at most max_step_tokens_ tokens (Forward validated the batch).
  absl::Status ForwardStep(const Batch& batch, float* logits);
  void Reserve(int64_t num_tokens, int64_t max_context);
  absl::Status AttentionBlock(int layer_idx, const Batch& batch, int64_t num_tokens);
  absl::Status MoeBlock(int layer_idx, int64_t num_tokens);
  // The routed experts: in-process, or across ranks through exchange_.
  absl::Status LocalExperts(int layer_idx, int64_t num_tokens);
  absl::Status DispatchedExperts(int layer_idx, int64_t num_tokens);
  absl::Status SharedExpert(int layer_idx, int64_t num_tokens);

  // Every matrix of one layer but the routed experts (experts_), prepared
  // for the CPU kernels.
  struct PackedLayer {
    cpu::PackedMatrix q, k, v, o, router;
    cpu::PackedMatrix shared_gate, shared_up, shared_down;
    std::vector<cpu::ExpertFfnView> shared;  // one view, or none
  };
  // InvalidArgument unless `placement` fits the model and the group and
  // `experts` holds every expert it gives this rank.
  absl::Status CheckPlacement(const ExpertPlacement& placement, const ExpertTable* experts) const;
  absl::Status PackWeights();
  // Drops the mapped pages of matrices that were repacked, so a loaded model
  // stays resident once, not twice.
  void ReleaseRepackedSources();

  const Model& model_;
  ThreadPool pool_;
  const int64_t max_step_tokens_;
  const bool expert_skipping_;
  const DType kv_cache_type_;
  const ExpertParallelism ep_;  // ep_.placement is not used after Create
  std::unique_ptr<ExpertRowExchange> exchange_;
  // Expert e is storage slot e: the expert tables index experts by id.
  std::vector<int32_t> expert_slots_;
  // Expert parallelism: the placement in force (null for a single rank).
  std::shared_ptr<const ExpertPlacement> placement_;
  // The routed experts this rank holds (every expert for a single rank).
  std::shared_ptr<const ExpertTable> experts_;
  EngineStats stats_;
  RoutingObserver routing_observer_;
  LinearInputObserver linear_input_observer_;
  ResidualObserver residual_observer_;
  std::vector<PackedLayer> packed_layers_;
  cpu::PackedMatrix packed_lm_head_;

  // Scratch, grown on demand and reused across steps.
  int64_t reserved_tokens_ = 0;
  int64_t reserved_context_ = 0;
  std::vector<float> x_;                 // F32 [T, hidden] residual stream
  std::vector<float> h_;                 // F32 [T, hidden] normed input
  std::vector<float> q_;                 // F32 [T, heads * head_dim]
  std::vector<float> k_;                 // F32 [T, kv_heads * head_dim]
  std::vector<float> v_;                 // F32 [T, kv_heads * head_dim]
  std::vector<float> attn_;              // F32 [T, heads * head_dim]
  std::vector<float> proj_;              // F32 [T, hidden]
  std::vector<float> router_logits_;     // F32 [T, experts]
  std::vector<int32_t> expert_idx_;      // I32 [T, top_k]
  std::vector<float> expert_weights_;    // F32 [T, top_k]
  std::vector<int32_t> row_to_slot_;     // I32 [T * top_k]
  std::vector<int32_t> slot_to_row_;     // I32 [T * top_k]
  std::vector<int32_t> expert_offsets_;  // I32 [experts + 1]
  std::vector<float> expert_in_;         // F32 [T * top_k, hidden], rows grouped by expert
  std::vector<float> expert_out_;        // F32 [T * top_k, hidden]
  std::vector<int32_t> positions_;       // I32 [T]
  std::vector<cpu::AttentionSequence> attention_sequences_;  // one per chunk of the step
  std::vector<uint8_t> workspace_;
};

}  // namespace herd
