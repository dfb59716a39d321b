// The coordinator's executor: the request queue, the scheduler and the step
// loop of rank 0. Its API has TensorRT-LLM's shape: Enqueue, AwaitResponses
// with a timeout, Cancel, Shutdown, stats.
//
// Scheduling, every step:
//   - continuous batching: requests join and leave the running batch at any
//     step; a new request goes to the rank with the most free KV blocks
//     (data-parallel attention);
//   - decode first: every running sequence feeds its last token; then
//     chunked prefill fills each rank's token budget (max_step_tokens) with
//     waiting prompts, oldest first;
//   - paged KV: each rank's cache is num_kv_blocks blocks of kv_block_tokens;
//     when a sequence needs a block and its rank has none, the newest running
//     sequence of that rank is preempted (its blocks freed, it waits again and
//     recomputes its prompt plus what it had generated; tokens already
//     streamed are not repeated);
//   - prefix caching (kv_block_pool.h): a sequence starts from the longest run
//     of whole blocks its rank already computed for the same leading tokens,
//     and computes only the rest (at least its last token). A new request
//     prefers the rank caching most of it unless that rank runs
//     kCacheAffinitySlack more sequences than the emptiest one. A waiting
//     request whose leading blocks a running one is still computing (the
//     same system prompt arriving in a burst, the n choices of one API
//     request) waits for them instead of computing them a second time
//     (SGLang's in-batch prefix caching).
//
// Thread-safety: every public method may be called from any thread. The step
// loop runs on a thread the executor owns, which also drives rank 0's engine.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "comm/control_channel.h"
#include "coordinator/metrics/serving_metrics.h"
#include "coordinator/scheduler/token_constraint.h"
#include "core/config.h"
#include "core/placement.h"
#include "worker/step_plan.h"
#include "worker/step_runner.h"

namespace herd {

using RequestId = uint64_t;

struct GenerationRequest {
  std::vector<int32_t> prompt_ids;  // not empty; ids < vocab
  // >= 1, or 0 with prompt_logprobs (the prompt is scored, nothing is
  // generated, the request ends as kLength); prompt + max_tokens <=
  // max_context_tokens.
  int64_t max_tokens = 16;
  SamplingParams sampling;
  // Generation stops after any of these ids (the id is part of the output).
  std::vector<int32_t> stop_ids;
  // The log probabilities of prompt tokens 1, 2, ... too (the API's echo),
  // with sampling.top_logprobs (>= 0) top tokens each.
  bool prompt_logprobs = false;
  // Past it, the request finishes with reason kAbort (status DeadlineExceeded).
  absl::Time deadline = absl::InfiniteFuture();
  // Guided decoding (JSON mode): what each sampled token may be; the request
  // ends as stopped once it is complete(). Its own instance (not shared with
  // another request); nullptr: unconstrained. When it allows nothing, only
  // stop_ids may be sampled.
  std::shared_ptr<TokenConstraint> constraint;
};

// A new request goes to the rank caching the longest part of it unless that
// rank runs this many sequences more than the rank with the most free KV
// blocks (SGLang's cache-aware routing, with its balance guard).
inline constexpr int64_t kCacheAffinitySlack = 4;

enum class FinishReason { kStop, kLength, kAbort, kError };
// "stop", "length", "abort", "error" (OpenAI's finish_reason where it has one).
const char* FinishReasonName(FinishReason reason);

// What AwaitResponses hands out: the tokens generated since the last
// response, and at the end, why the request finished.
struct GenerationResponse {
  RequestId request_id = 0;
  std::vector<int32_t> token_ids;
  // One per token id when the request asked for log probabilities
  // (sampling.top_logprobs >= 0); empty otherwise.
  std::vector<SampledLogprobs> logprobs;
  // With request.prompt_logprobs, in the first response (once the prompt is
  // computed): those of prompt tokens 1 .. prompt_tokens - 1.
  std::vector<SampledLogprobs> prompt_logprobs;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kStop;  // when finished
  // When finished with kAbort or kError: why (Cancelled, DeadlineExceeded,
  // Internal...).
  absl::Status status;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;  // so far
  // Prompt tokens whose keys and values came from the prefix cache when the
  // request first ran (OpenAI's usage.prompt_tokens_details.cached_tokens).
  int64_t cached_prompt_tokens = 0;
};

struct ExecutorOptions {
  // Requests waiting for their first step beyond which Enqueue refuses.
  int64_t max_waiting_requests = 256;
  // Sequences running at once on one rank.
  int64_t max_running_per_rank = 64;
  // Tokens (decode + prefill chunks) one rank processes per step.
  int64_t max_step_tokens = 256;
  // Paged KV cache of each rank.
  int64_t num_kv_blocks = 0;
  int64_t kv_block_tokens = 16;
  // Reuse the keys and values of whole blocks of leading tokens a rank
  // already computed (vLLM's --enable-prefix-caching; on by default there
  // too). Requests that ask for the prompt's log probabilities compute it all.
  bool prefix_caching = true;
  // Longest sequence (prompt + generated) a request may ask for.
  int64_t max_context_tokens = 4096;
  int64_t vocab_size = 0;
  // Longest a step may take on any rank before the group counts as broken.
  absl::Duration step_timeout = absl::Seconds(300);
  // Online expert rebalancing (rebalancer.h); needs several ranks, runners
  // that count expert tokens (StepRunnerOptions::count_expert_tokens) and
  // `placement`.
  RebalanceConfig rebalance;
  // The placement the ranks start with (borrowed, read by Create only);
  // nullptr without expert parallelism.
  const ExpertPlacement* placement = nullptr;
};

struct ExecutorStats {
  int64_t num_waiting = 0;
  int64_t num_running = 0;
  int64_t num_steps = 0;
  int64_t num_preemptions = 0;
  int64_t num_finished = 0;
  int64_t num_kv_blocks_used = 0;  // held by sequences, all ranks
  int64_t num_kv_blocks_total = 0;
  // Blocks with a prefix cache entry (held or not), all ranks.
  int64_t num_kv_blocks_cached = 0;
  // Tokens of the sequences admitted to run, and those of them the prefix
  // cache held (their hit rate is prefix_cache_hit_tokens / queried).
  int64_t prefix_cache_queried_tokens = 0;
  int64_t prefix_cache_hit_tokens = 0;
};

// Tokens routed to each expert since the executor started, all ranks
// together; filled only when the ranks count them
// (StepRunnerOptions::count_expert_tokens).
struct ExpertLoadTotals {
  std::vector<int64_t> loads;  // [layer * num_experts + expert]
  int64_t num_tokens = 0;      // tokens that went through the model
};

class Executor {
 public:
  // `runner` is rank 0's (borrowed); `control` reaches the other ranks (nullptr
  // for one rank), which run RunWorkerLoop; `metrics` may be nullptr. Starts the
  // step loop. InvalidArgument for bad limits, and for rebalancing without
  // what it needs (see ExecutorOptions::rebalance).
  static absl::StatusOr<std::unique_ptr<Executor>> Create(StepRunner* runner,
                                                          comm::ControlChannel* control,
                                                          const ExecutorOptions& options,
                                                          ServingMetrics* metrics);
  // Shuts down (cancelling what is left) and joins the step loop.
  ~Executor();

  // Queues a request. InvalidArgument for a request that can never run (empty
  // prompt, ids outside the vocabulary, too long for the context, bad
  // sampling values), ResourceExhausted when the waiting queue is full,
  // Unavailable after Shutdown began or when the step loop failed.
  absl::StatusOr<RequestId> Enqueue(GenerationRequest request);

  // Waits up to `timeout` for news of `id`: returns every response queued
  // since the last call (empty on timeout). After the finished response the
  // id is forgotten; later calls return NotFound, as for unknown ids. One
  // thread at a time awaits a given id.
  absl::StatusOr<std::vector<GenerationResponse>> AwaitResponses(RequestId id,
                                                                 absl::Duration timeout);
  // The same for several requests: waits up to `timeout` for news of any of
  // `ids` (at least one) and returns the responses of every one with news
  // (each names its request). NotFound if any id is unknown.
  absl::StatusOr<std::vector<GenerationResponse>> AwaitResponses(absl::Span<const RequestId> ids,
                                                                 absl::Duration timeout);

  // Finishes `id` with kAbort (status Cancelled) at the next step and frees its
  // KV blocks. Unknown or finished ids are ignored.
  void Cancel(RequestId id);

  // Like Cancel, but the request ends as kStop (status OK): the caller found
  // a stop condition the executor does not see, such as a stop string in the
  // decoded text, so the request is counted as stopped, not aborted.
  void FinishAsStopped(RequestId id);

  // Stops accepting requests (Enqueue returns Unavailable), lets those
  // accepted finish for up to `drain_timeout`, cancels what remains, tells the
  // other ranks to leave their loops, and stops the step loop. Returns
  // DeadlineExceeded if requests had to be cancelled. Idempotent.
  absl::Status Shutdown(absl::Duration drain_timeout);

  ExecutorStats stats() const;
  ExpertLoadTotals expert_load() const;
  // OK while the step loop runs; its error once it failed (a rank is gone).
  absl::Status health() const;

 private:
  class Impl;
  explicit Executor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace herd
