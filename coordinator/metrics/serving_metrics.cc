#include "coordinator/metrics/serving_metrics.h"

#include <algorithm>
#include <deque>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/status.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/text_serializer.h"

namespace herd {
namespace {

// vLLM's buckets (vllm/v1/metrics/loggers.py), so that dashboards and SLO
// thresholds written for vLLM read the same on Herd.
const prometheus::Histogram::BucketBoundaries& TimeToFirstTokenBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
      1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
  return *buckets;
}
// vLLM's time_per_output_token / inter_token_latency buckets.
const prometheus::Histogram::BucketBoundaries& InterTokenLatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
      0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
  return *buckets;
}
// vLLM's request_latency_buckets (e2e, queue, prefill, decode times).
const prometheus::Histogram::BucketBoundaries& RequestLatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
      30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
  return *buckets;
}
// Dispatch and combine waits: 10 us (an intra-node exchange) to 10 s (a
// straggler rank), 1-2.5-5 per decade.
const prometheus::Histogram::BucketBoundaries& ExchangeBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      1e-5,  2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01,
      0.025, 0.05,   0.1,  0.25, 0.5,    1.0,  2.5,  5.0,    10.0};
  return *buckets;
}

// Background expert migrations: 10 ms (a few experts from the page cache) to
// 10 minutes (a large model's experts from a cold disk).
const prometheus::Histogram::BucketBoundaries& RebalanceBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 600.0};
  return *buckets;
}

// The reasons AddRequestSuccess documents; their series exist from the start.
constexpr const char* kFinishedReasons[] = {"stop", "length", "abort", "error"};

}  // namespace

absl::Status ServingMetricsOptions::Validate() const {
  if (num_layers < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_layers must be >= 0, got ", num_layers));
  }
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("world_size must be >= 1, got ", world_size));
  }
  if (balance_window_steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("balance_window_steps must be >= 1, got ", balance_window_steps));
  }
  if (detailed_expert_metrics && num_experts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("detailed expert metrics need num_experts >= 1, got ", num_experts));
  }
  return absl::OkStatus();
}

struct ServingMetrics::Impl {
  explicit Impl(const ServingMetricsOptions& options);

  // Adds one step's rows to the window, drops the step that falls out of it,
  // and sets every layer's ep_balancedness.
  void PushBalanceStep(const std::vector<std::vector<int64_t>>& layer_rows_by_rank)
      ABSL_LOCKS_EXCLUDED(window_mu);

  const ServingMetricsOptions options;
  const std::shared_ptr<prometheus::Registry> registry;

  // Metrics are owned by their families, which the registry owns; the
  // references stay valid as long as `registry`.
  prometheus::Histogram& time_to_first_token;
  prometheus::Histogram& inter_token_latency;
  prometheus::Histogram& e2e_request_latency;
  prometheus::Histogram& request_queue_time;
  prometheus::Gauge& num_requests_running;
  prometheus::Gauge& num_requests_waiting;
  prometheus::Gauge& kv_cache_usage;
  prometheus::Counter& prompt_tokens;
  prometheus::Counter& generation_tokens;
  prometheus::Family<prometheus::Counter>& request_success;
  prometheus::Counter& num_preemptions;
  prometheus::Counter& prefix_cache_queries;
  prometheus::Counter& prefix_cache_hits;
  prometheus::Counter& all_to_all_bytes;
  prometheus::Counter& expert_calls;
  prometheus::Counter& expert_calls_skipped;
  prometheus::Gauge& placement_version;
  prometheus::Gauge& placement_imbalance;
  prometheus::Histogram& rebalance_seconds;
  prometheus::Counter& expert_bytes_moved;
  prometheus::Counter& rebalance_blocked_steps;

  std::vector<prometheus::Gauge*> ep_balancedness;        // [layer]
  std::vector<prometheus::Counter*> ep_rank_tokens;       // [rank]
  std::vector<prometheus::Counter*> ep_rank_expert_rows;  // [rank]
  std::vector<prometheus::Histogram*> dispatch_seconds;   // [rank]
  std::vector<prometheus::Histogram*> combine_seconds;    // [rank]
  std::vector<prometheus::Counter*> expert_tokens;        // [layer * num_experts + expert]

  absl::Mutex window_mu;
  // The last <= balance_window_steps steps' rows, each [layer * world_size +
  // rank], oldest first.
  std::deque<std::vector<int64_t>> window ABSL_GUARDED_BY(window_mu);
  // [layer * world_size + rank]: the sum of `window`.
  std::vector<int64_t> window_rows ABSL_GUARDED_BY(window_mu);
};

namespace {

prometheus::Labels ModelLabels(const ServingMetricsOptions& options) {
  return {{"model_name", options.model_name}};
}

prometheus::Family<prometheus::Counter>& CounterFamily(prometheus::Registry& registry,
                                                       const ServingMetricsOptions& options,
                                                       const std::string& name,
                                                       const std::string& help) {
  return prometheus::BuildCounter()
      .Name(name)
      .Help(help)
      .Labels(ModelLabels(options))
      .Register(registry);
}
prometheus::Family<prometheus::Gauge>& GaugeFamily(prometheus::Registry& registry,
                                                   const ServingMetricsOptions& options,
                                                   const std::string& name,
                                                   const std::string& help) {
  return prometheus::BuildGauge()
      .Name(name)
      .Help(help)
      .Labels(ModelLabels(options))
      .Register(registry);
}
prometheus::Family<prometheus::Histogram>& HistogramFamily(prometheus::Registry& registry,
                                                           const ServingMetricsOptions& options,
                                                           const std::string& name,
                                                           const std::string& help) {
  return prometheus::BuildHistogram()
      .Name(name)
      .Help(help)
      .Labels(ModelLabels(options))
      .Register(registry);
}

}  // namespace

// NOTE: prometheus-cpp 1.0.1 writes a counter family's name as given (it
// appends no "_total"), so counter names carry their "_total" here. Help
// strings stay on one line without backslashes: 1.0.1 does not escape them.
ServingMetrics::Impl::Impl(const ServingMetricsOptions& opts)
    : options(opts),
      registry(std::make_shared<prometheus::Registry>()),
      time_to_first_token(
          HistogramFamily(*registry, options, "herd:time_to_first_token_seconds",
                          "Time from a request's arrival to its first generated token, in seconds.")
              .Add({}, TimeToFirstTokenBuckets())),
      inter_token_latency(
          HistogramFamily(*registry, options, "herd:inter_token_latency_seconds",
                          "Time between two consecutive generated tokens of a request, in seconds.")
              .Add({}, InterTokenLatencyBuckets())),
      e2e_request_latency(HistogramFamily(*registry, options, "herd:e2e_request_latency_seconds",
                                          "Time from a request's arrival to its end, in seconds.")
                              .Add({}, RequestLatencyBuckets())),
      request_queue_time(HistogramFamily(*registry, options, "herd:request_queue_time_seconds",
                                         "Time a request waited before its first step, in seconds.")
                             .Add({}, RequestLatencyBuckets())),
      num_requests_running(GaugeFamily(*registry, options, "herd:num_requests_running",
                                       "Requests in the running batch.")
                               .Add({})),
      num_requests_waiting(GaugeFamily(*registry, options, "herd:num_requests_waiting",
                                       "Requests waiting for their first step or after preemption.")
                               .Add({})),
      kv_cache_usage(GaugeFamily(*registry, options, "herd:kv_cache_usage_perc",
                                 "Fraction of KV cache blocks in use, all ranks together. "
                                 "1 means 100 percent usage.")
                         .Add({})),
      prompt_tokens(CounterFamily(*registry, options, "herd:prompt_tokens_total",
                                  "Prompt (prefill) tokens processed.")
                        .Add({})),
      generation_tokens(
          CounterFamily(*registry, options, "herd:generation_tokens_total", "Tokens generated.")
              .Add({})),
      request_success(CounterFamily(*registry, options, "herd:request_success_total",
                                    "Requests finished, by finished_reason.")),
      num_preemptions(CounterFamily(*registry, options, "herd:num_preemptions_total",
                                    "Sequences preempted to free KV cache blocks.")
                          .Add({})),
      prefix_cache_queries(
          CounterFamily(*registry, options, "herd:prefix_cache_queries_total",
                        "Tokens of the sequences admitted to run, looked up in the prefix cache.")
              .Add({})),
      prefix_cache_hits(CounterFamily(*registry, options, "herd:prefix_cache_hits_total",
                                      "Tokens of the sequences admitted to run whose keys and "
                                      "values the prefix cache already held.")
                            .Add({})),
      all_to_all_bytes(CounterFamily(*registry, options, "herd:all_to_all_bytes_total",
                                     "Bytes sent between ranks by expert dispatch and combine.")
                           .Add({})),
      expert_calls(CounterFamily(*registry, options, "herd:expert_calls_total",
                                 "Routed expert calls, (token, expert) pairs, the routers chose.")
                       .Add({})),
      expert_calls_skipped(
          CounterFamily(*registry, options, "herd:expert_calls_skipped_total",
                        "Routed expert calls dynamic expert skipping left out (herd compress "
                        "--skip-threshold).")
              .Add({})),
      placement_version(GaugeFamily(*registry, options, "herd:placement_version",
                                    "Version of the expert placement in use.")
                            .Add({})),
      placement_imbalance(
          GaugeFamily(*registry, options, "herd:placement_imbalance",
                      "Max over mean rank load of the placement in use over the rebalancing "
                      "window, mean over layers. 1 is perfect.")
              .Add({})),
      rebalance_seconds(
          HistogramFamily(*registry, options, "herd:rebalance_seconds",
                          "Time from staging a new expert placement until every rank had its "
                          "experts loaded in the background, in seconds.")
              .Add({}, RebalanceBuckets())),
      expert_bytes_moved(CounterFamily(*registry, options, "herd:expert_bytes_moved_total",
                                       "Expert weight bytes ranks loaded for new placements.")
                             .Add({})),
      rebalance_blocked_steps(
          CounterFamily(*registry, options, "herd:rebalance_blocked_steps_total",
                        "Steps in which a rank waited for expert weights to load before "
                        "switching placements.")
              .Add({})),
      window_rows(static_cast<size_t>(opts.num_layers) * opts.world_size, 0) {
  for (const char* reason : kFinishedReasons) request_success.Add({{"finished_reason", reason}});
  placement_imbalance.Set(1.0);

  auto& balancedness_family = GaugeFamily(
      *registry, options, "herd:ep_balancedness",
      "Mean over max of per-rank expert rows in the layer over the recent steps. 1 is perfect.");
  for (int layer = 0; layer < options.num_layers; ++layer) {
    prometheus::Gauge& gauge = balancedness_family.Add({{"layer", std::to_string(layer)}});
    gauge.Set(1.0);
    ep_balancedness.push_back(&gauge);
  }

  auto& rank_tokens_family = CounterFamily(*registry, options, "herd:ep_rank_tokens_total",
                                           "Tokens of each rank's sequences processed.");
  auto& rank_rows_family =
      CounterFamily(*registry, options, "herd:ep_rank_expert_rows_total",
                    "Token rows each rank's routed experts computed, all layers together.");
  auto& dispatch_family = HistogramFamily(*registry, options, "herd:dispatch_seconds",
                                          "Time a rank waited in expert dispatch per step.");
  auto& combine_family = HistogramFamily(*registry, options, "herd:combine_seconds",
                                         "Time a rank waited in expert combine per step.");
  for (int rank = 0; rank < options.world_size; ++rank) {
    const prometheus::Labels labels = {{"rank", std::to_string(rank)}};
    ep_rank_tokens.push_back(&rank_tokens_family.Add(labels));
    ep_rank_expert_rows.push_back(&rank_rows_family.Add(labels));
    dispatch_seconds.push_back(&dispatch_family.Add(labels, ExchangeBuckets()));
    combine_seconds.push_back(&combine_family.Add(labels, ExchangeBuckets()));
  }

  if (options.detailed_expert_metrics) {
    auto& expert_family = CounterFamily(*registry, options, "herd:expert_tokens_total",
                                        "Tokens routed to each expert of each layer.");
    for (int layer = 0; layer < options.num_layers; ++layer) {
      for (int expert = 0; expert < options.num_experts; ++expert) {
        expert_tokens.push_back(&expert_family.Add(
            {{"layer", std::to_string(layer)}, {"expert", std::to_string(expert)}}));
      }
    }
  }
}

void ServingMetrics::Impl::PushBalanceStep(
    const std::vector<std::vector<int64_t>>& layer_rows_by_rank) {
  const int num_layers = options.num_layers;
  const int world_size = options.world_size;
  std::vector<int64_t> step(static_cast<size_t>(num_layers) * world_size);
  for (int rank = 0; rank < world_size; ++rank) {
    const std::vector<int64_t>& rows = layer_rows_by_rank[rank];
    HERD_CHECK(static_cast<int>(rows.size()) == num_layers);
    for (int layer = 0; layer < num_layers; ++layer) {
      step[static_cast<size_t>(layer) * world_size + rank] = rows[layer];
    }
  }

  absl::MutexLock lock(&window_mu);
  for (size_t i = 0; i < step.size(); ++i) window_rows[i] += step[i];
  window.push_back(std::move(step));
  if (static_cast<int>(window.size()) > options.balance_window_steps) {
    const std::vector<int64_t>& oldest = window.front();
    for (size_t i = 0; i < oldest.size(); ++i) window_rows[i] -= oldest[i];
    window.pop_front();
  }
  for (int layer = 0; layer < num_layers; ++layer) {
    const int64_t* rows = window_rows.data() + static_cast<size_t>(layer) * world_size;
    int64_t total = 0;
    int64_t max = 0;
    for (int rank = 0; rank < world_size; ++rank) {
      total += rows[rank];
      max = std::max(max, rows[rank]);
    }
    // mean / max; a layer with no rows in the window counts as balanced.
    const double balancedness =
        max > 0 ? static_cast<double>(total) / world_size / static_cast<double>(max) : 1.0;
    ep_balancedness[layer]->Set(balancedness);
  }
}

ServingMetrics::ServingMetrics(const ServingMetricsOptions& options) {
  HERD_CHECK(options.Validate().ok());
  impl_ = std::make_unique<Impl>(options);
}

ServingMetrics::~ServingMetrics() = default;

std::string ServingMetrics::Serialize() const {
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

std::shared_ptr<prometheus::Registry> ServingMetrics::registry() const { return impl_->registry; }

void ServingMetrics::ObserveTimeToFirstToken(double seconds) {
  impl_->time_to_first_token.Observe(seconds);
}

void ServingMetrics::ObserveInterTokenLatency(double seconds) {
  impl_->inter_token_latency.Observe(seconds);
}

void ServingMetrics::ObserveE2eRequestLatency(double seconds) {
  impl_->e2e_request_latency.Observe(seconds);
}

void ServingMetrics::ObserveRequestQueueTime(double seconds) {
  impl_->request_queue_time.Observe(seconds);
}

void ServingMetrics::SetRequestsRunning(int64_t num_requests) {
  impl_->num_requests_running.Set(static_cast<double>(num_requests));
}

void ServingMetrics::SetRequestsWaiting(int64_t num_requests) {
  impl_->num_requests_waiting.Set(static_cast<double>(num_requests));
}

void ServingMetrics::SetKvCacheUsage(double fraction) { impl_->kv_cache_usage.Set(fraction); }

void ServingMetrics::AddPromptTokens(int64_t num_tokens) {
  impl_->prompt_tokens.Increment(static_cast<double>(num_tokens));
}

void ServingMetrics::AddGenerationTokens(int64_t num_tokens) {
  impl_->generation_tokens.Increment(static_cast<double>(num_tokens));
}

void ServingMetrics::AddRequestSuccess(absl::string_view finished_reason) {
  // Family::Add returns the existing series for known labels (under the
  // family's own lock).
  impl_->request_success.Add({{"finished_reason", std::string(finished_reason)}}).Increment();
}

void ServingMetrics::AddPreemptions(int64_t num_preemptions) {
  impl_->num_preemptions.Increment(static_cast<double>(num_preemptions));
}

void ServingMetrics::AddPrefixCacheLookup(int64_t queried_tokens, int64_t hit_tokens) {
  impl_->prefix_cache_queries.Increment(static_cast<double>(queried_tokens));
  impl_->prefix_cache_hits.Increment(static_cast<double>(hit_tokens));
}

void ServingMetrics::RecordExpertStep(const ExpertStepLoad& load) {
  const int world_size = impl_->options.world_size;
  const auto per_rank = [world_size](size_t size) {
    return size == 0 || static_cast<int>(size) == world_size;
  };
  HERD_CHECK(per_rank(load.layer_rows_by_rank.size()));
  HERD_CHECK(per_rank(load.tokens_by_rank.size()));
  HERD_CHECK(per_rank(load.dispatch_seconds_by_rank.size()));
  HERD_CHECK(per_rank(load.combine_seconds_by_rank.size()));

  if (!load.layer_rows_by_rank.empty()) impl_->PushBalanceStep(load.layer_rows_by_rank);
  for (size_t rank = 0; rank < load.layer_rows_by_rank.size(); ++rank) {
    int64_t rows = 0;
    for (int64_t r : load.layer_rows_by_rank[rank]) rows += r;
    impl_->ep_rank_expert_rows[rank]->Increment(static_cast<double>(rows));
  }
  for (size_t rank = 0; rank < load.tokens_by_rank.size(); ++rank) {
    impl_->ep_rank_tokens[rank]->Increment(static_cast<double>(load.tokens_by_rank[rank]));
  }
  for (size_t rank = 0; rank < load.dispatch_seconds_by_rank.size(); ++rank) {
    impl_->dispatch_seconds[rank]->Observe(load.dispatch_seconds_by_rank[rank]);
  }
  for (size_t rank = 0; rank < load.combine_seconds_by_rank.size(); ++rank) {
    impl_->combine_seconds[rank]->Observe(load.combine_seconds_by_rank[rank]);
  }
  impl_->all_to_all_bytes.Increment(static_cast<double>(load.all_to_all_bytes));
  impl_->expert_calls.Increment(static_cast<double>(load.routed_expert_calls));
  impl_->expert_calls_skipped.Increment(static_cast<double>(load.skipped_expert_calls));

  if (impl_->options.detailed_expert_metrics && !load.expert_tokens.empty()) {
    HERD_CHECK(load.expert_tokens.size() == impl_->expert_tokens.size());
    for (size_t i = 0; i < load.expert_tokens.size(); ++i) {
      impl_->expert_tokens[i]->Increment(static_cast<double>(load.expert_tokens[i]));
    }
  }
}

void ServingMetrics::SetPlacementVersion(int64_t version) {
  impl_->placement_version.Set(static_cast<double>(version));
}

void ServingMetrics::SetPlacementImbalance(double imbalance) {
  impl_->placement_imbalance.Set(imbalance);
}

void ServingMetrics::ObserveRebalanceSeconds(double seconds) {
  impl_->rebalance_seconds.Observe(seconds);
}

void ServingMetrics::AddExpertBytesMoved(int64_t num_bytes) {
  impl_->expert_bytes_moved.Increment(static_cast<double>(num_bytes));
}

void ServingMetrics::AddRebalanceBlockedSteps(int64_t num_steps) {
  impl_->rebalance_blocked_steps.Increment(static_cast<double>(num_steps));
}

}  // namespace herd
