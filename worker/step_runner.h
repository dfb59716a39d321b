// Runs the coordinator's step plans on one rank: owns the rank's paged KV
// cache, turns a RankStepPlan into one engine batch, samples, and reports.
//
// Sampling is a pure function of the logits and (sampling.seed, sample_idx):
// each sampled token draws from its own random stream, so a sequence gets the
// same tokens on any rank, with any blocks, in any batch, and after being
// preempted and re-planned.
//
// Thread-safety: one thread drives a StepRunner (it drives the engine).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/control_channel.h"
#include "worker/expert_stager.h"
#include "worker/forward_engine.h"
#include "worker/kv_cache.h"
#include "worker/step_plan.h"

namespace herd {

struct StepRunnerOptions {
  // Blocks of the rank's paged KV cache and tokens per block. The coordinator
  // plans with the same numbers for every rank.
  int64_t num_kv_blocks = 0;
  int64_t kv_block_tokens = kDefaultKvBlockTokens;
  // Fill RankStepResult::expert_tokens. The runner then owns the engine's
  // routing observer (ForwardEngine::SetRoutingObserver) for its lifetime.
  bool count_expert_tokens = false;
  // Deadline of handing a result to the control channel in RunWorkerLoop: a
  // coordinator that stops taking results becomes an error, not a hang.
  absl::Duration result_send_timeout = absl::Seconds(120);
};

class StepRunner {
 public:
  // `engine` (CPU or GPU) is borrowed and must outlive the runner; the cache
  // comes from engine->CreateKvCache. InvalidArgument for a null engine or
  // non-positive sizes, ResourceExhausted if the cache cannot be allocated.
  static absl::StatusOr<std::unique_ptr<StepRunner>> Create(ForwardEngine* engine,
                                                            const StepRunnerOptions& options);
  ~StepRunner();
  StepRunner(const StepRunner&) = delete;
  StepRunner& operator=(const StepRunner&) = delete;

  // Blocks of `type` elements a cache of `kv_cache_bytes` holds for `spec`:
  // at least 0, at most 2^31 - 1 (block ids are I32).
  static int64_t KvBlocksForBytes(const ModelSpec& spec, int64_t kv_cache_bytes,
                                  int64_t kv_block_tokens, DType type = DType::kF32);

  // Runs one step: one engine batch of all the plan's chunks, logits for the
  // last token of each chunk with sample = true, one sampled token each
  // (argmax when temperature <= 0, else nucleus sampling), with its log
  // probabilities when the chunk asks (sampling.top_logprobs >= 0), and the
  // log probabilities of each position's next token for chunks with
  // prompt_logprobs (the API's echo). A plan
  // the rank cannot run (an empty chunk, ids outside the vocabulary, block
  // ids outside the cache, a block table too short for the chunk, two tokens
  // writing one cache position, temperature < 0 or not finite, top_p
  // outside (0, 1], top_k < 0, min_p outside [0, 1], penalties out of range
  // or penalizing ids outside the vocabulary, sample_idx < 0, top_logprobs
  // outside [-1, kMaxTopLogprobs]) gives a result whose `error` says why, with nothing
  // written to the cache and nothing sampled; the rank still takes part in
  // the step's collectives (an empty batch) so its peers do not hang.
  //
  // Online rebalancing (expert parallelism): a plan with stage_version > 0
  // starts loading that placement's experts in the background (a placement
  // that does not parse or fit is reported in the result's stage_error); a
  // plan whose placement_version differs from the one in force switches to
  // the placement staged under that version before the forward pass (waiting
  // for its load if it has not ended: load_wait_seconds), and the result
  // reports the staged version once its experts are ready.
  //
  // Returns an error only when the forward pass failed (with expert
  // parallelism: a collective, a peer is gone) or the rank cannot switch to
  // the placement the plan names (it was not staged, or its load failed),
  // after which the group cannot continue.
  absl::StatusOr<RankStepResult> Run(const RankStepPlan& plan);

  // The placement version in force (1 until the first switch).
  uint64_t placement_version() const { return placement_version_; }

  ForwardEngine& engine() { return *engine_; }
  const StepRunnerOptions& options() const { return options_; }
  const KvCache& cache() const { return *cache_; }

 private:
  StepRunner(ForwardEngine* engine, const StepRunnerOptions& options,
             std::unique_ptr<KvCache> cache);
  // The plan's chunks as one batch (borrowing the plan's block tables), and
  // the chunks to sample, in order; an error when the plan cannot run.
  // to_sample: the chunks that sample, whose last rows are the batch's
  // first logit rows; to_score: those asking for prompt log probabilities,
  // whose rows follow.
  absl::Status BuildBatch(const RankStepPlan& plan, Batch& batch,
                          std::vector<const PlannedChunk*>& to_sample,
                          std::vector<const PlannedChunk*>& to_score) const;
  // Starts loading the plan's staged placement; why it cannot, if so.
  absl::Status StartStaging(const RankStepPlan& plan);
  // Swaps in the placement staged as `version`; its wait goes into `result`.
  absl::Status SwitchPlacement(uint64_t version, RankStepResult& result);

  // This rank in the expert-parallel group (0 for a single rank).
  int rank() const;

  ForwardEngine* engine_;
  ExpertPlacementSwitch* const placement_switch_;  // engine_'s, or null
  StepRunnerOptions options_;
  std::unique_ptr<KvCache> cache_;
  uint64_t placement_version_ = 1;
  ExpertStager stager_;
  // Routing counts of the current step, [layer * num_experts + expert],
  // filled by the engine's routing observer (count_expert_tokens).
  std::vector<int64_t> expert_tokens_;
  // Scratch reused across steps.
  std::vector<float> logits_;  // F32 [samples, vocab]
  std::vector<std::pair<float, int32_t>> sampling_scratch_;
  std::vector<float> penalized_logits_;  // F32 [vocab]: a row with penalties
  std::vector<int32_t> penalty_scratch_;
};

// The loop of a rank other than the coordinator's: receives a plan from rank
// 0 (tag kStepPlanTag), runs it, sends the result back (kStepResultTag),
// until a plan says shutdown (OK) or the channel or a collective fails (that
// error). A plan that does not decode means the coordinator is broken:
// Internal. Waiting for the next plan has no deadline (an idle server sends
// no plans); once idle for HERD_COMM_POLL_SLEEP_AFTER_MS the channel sleeps
// between polls, so an idle rank uses next to no CPU. Blocks the caller.
absl::Status RunWorkerLoop(StepRunner& runner, comm::ControlChannel& control);

}  // namespace herd
