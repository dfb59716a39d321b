// The serving metrics `herd serve` exports on /metrics: request latencies and
// counts in vLLM's shape (names prefixed `herd:`, label model_name, vLLM's
// histogram buckets), and expert-parallel metrics no other server has (balance
// per layer, tokens per rank, dispatch/combine time, all-to-all bytes,
// placement version; per-expert counts only when asked for, so cardinality
// stays bounded by default). docs/metrics.md lists each metric, its type and
// meaning.
//
// Every series a metric can have is created at construction (at 0, or 1.0 for
// balancedness), so dashboards and rate() see it before the first request.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "prometheus/registry.h"

namespace herd {

struct ServingMetricsOptions {
  // Value of the model_name label on every series (the served model's name).
  std::string model_name;
  // Layers with an ep_balancedness series (and expert_tokens rows).
  int num_layers = 0;
  // Experts per layer; only used by detailed expert metrics.
  int num_experts = 0;
  // Ranks with ep_rank_tokens/dispatch/combine series; 1 without expert
  // parallelism (rank 0's series are still exported, balancedness stays 1.0).
  int world_size = 1;
  // Export herd:expert_tokens_total{layer,expert}: num_layers * num_experts
  // series, off by default to keep cardinality bounded.
  bool detailed_expert_metrics = false;
  // ep_balancedness is computed over the expert load of the last this many
  // steps (a sliding window, so it follows the current traffic).
  int balance_window_steps = 100;

  // InvalidArgument for num_layers < 0, world_size < 1,
  // balance_window_steps < 1, or num_experts < 1 with detailed expert metrics.
  absl::Status Validate() const;
};

// The expert-parallel part of one step, gathered from every rank's result.
// Every per-rank vector has world_size entries, or is empty when that part
// was not measured in the step.
struct ExpertStepLoad {
  // [rank][layer]: rows each rank's experts computed in the step (num_layers
  // entries per rank). Empty: the step does not enter the balance window.
  std::vector<std::vector<int64_t>> layer_rows_by_rank;
  // [rank]: tokens of each rank's sequences in the step.
  std::vector<int64_t> tokens_by_rank;
  // [rank]: seconds each rank waited in dispatch / combine in the step.
  std::vector<double> dispatch_seconds_by_rank;
  std::vector<double> combine_seconds_by_rank;
  // Bytes sent between ranks in the step, all ranks together.
  int64_t all_to_all_bytes = 0;
  // Routed expert calls ((token, expert) pairs) the routers chose in the
  // step, and those dynamic expert skipping left out, all ranks together.
  int64_t routed_expert_calls = 0;
  int64_t skipped_expert_calls = 0;
  // [layer * num_experts + expert]: tokens routed there in the step (all
  // ranks); empty unless detailed expert metrics are on (ignored when off).
  std::vector<int64_t> expert_tokens;
};

class ServingMetrics {
 public:
  // Registers every metric in a new registry. Requires options.Validate() to
  // be OK (checked).
  explicit ServingMetrics(const ServingMetricsOptions& options);
  ~ServingMetrics();

  ServingMetrics(const ServingMetrics&) = delete;
  ServingMetrics& operator=(const ServingMetrics&) = delete;

  // Everything registered, in Prometheus text exposition format 0.0.4.
  std::string Serialize() const;
  // The registry behind Serialize(), shared with whoever else collects it.
  std::shared_ptr<prometheus::Registry> registry() const;

  // Requests. Latencies are in seconds.
  void ObserveTimeToFirstToken(double seconds);
  void ObserveInterTokenLatency(double seconds);
  void ObserveE2eRequestLatency(double seconds);
  void ObserveRequestQueueTime(double seconds);
  void SetRequestsRunning(int64_t num_requests);
  void SetRequestsWaiting(int64_t num_requests);
  // Fraction in [0, 1] of KV cache blocks in use, all ranks together.
  void SetKvCacheUsage(double fraction);
  void AddPromptTokens(int64_t num_tokens);
  void AddGenerationTokens(int64_t num_tokens);
  // finished_reason: "stop", "length", "abort" (cancelled, disconnected or
  // past its deadline) or "error". These four series exist from the start;
  // another value gets its own series on first use.
  void AddRequestSuccess(absl::string_view finished_reason);
  void AddPreemptions(int64_t num_preemptions);
  // A sequence admitted to run (new or after preemption): its tokens looked
  // up in the prefix cache, and how many of them the cache held.
  void AddPrefixCacheLookup(int64_t queried_tokens, int64_t hit_tokens);

  // Expert parallelism. Requires every non-empty vector of `load` to have the
  // sizes ExpertStepLoad states (checked: the executor builds it, so a
  // mismatch is a bug).
  void RecordExpertStep(const ExpertStepLoad& load);
  void SetPlacementVersion(int64_t version);

  // Online rebalancing (coordinator/scheduler/rebalancer.h).
  // Imbalance (max / mean rank load, mean over layers) of the placement in
  // use over the rebalancer's window.
  void SetPlacementImbalance(double imbalance);
  // Seconds from staging a new placement until every rank had its experts
  // loaded (the background migration).
  void ObserveRebalanceSeconds(double seconds);
  // Expert weight bytes the ranks loaded for a placement they switched to.
  void AddExpertBytesMoved(int64_t num_bytes);
  // Steps in which some rank had to wait for expert weights to finish
  // loading before it could switch placements (0 by design).
  void AddRebalanceBlockedSteps(int64_t num_steps);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace herd
