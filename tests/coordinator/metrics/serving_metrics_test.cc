// ServingMetrics through its text exposition: every metric's exact name,
// type, labels and value after calls; vLLM's bucket boundaries; the
// balancedness window (mean / max per layer, sliding); bounded cardinality
// without detailed expert metrics; concurrent use.
#include "coordinator/metrics/serving_metrics.h"

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"

namespace herd {
namespace {

constexpr char kModel[] = "test-moe";

// One sample line of the text format: name{labels} value.
struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// A parser for what prometheus-cpp's TextSerializer writes: one sample per
// line, label values in double quotes with \\, \" and \n escaped, no
// timestamps.
struct Exposition {
  std::vector<Sample> samples;
  std::map<std::string, std::string> types;  // metric family name -> type
};

Exposition Parse(const std::string& text) {
  Exposition out;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&line, "# TYPE ")) {
      std::vector<std::string> parts = absl::StrSplit(line, ' ');
      EXPECT_EQ(parts.size(), 2u) << line;
      if (parts.size() == 2) out.types[parts[0]] = parts[1];
      continue;
    }
    if (line.empty() || line[0] == '#') continue;
    Sample sample;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') ++i;
    sample.name = std::string(line.substr(0, i));
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find('=', i);
        EXPECT_NE(eq, absl::string_view::npos) << line;
        if (eq == absl::string_view::npos) return out;
        const std::string key(line.substr(i, eq - i));
        i = eq + 2;  // past ="
        std::string value;
        while (i < line.size() && line[i] != '"') {
          if (line[i] == '\\' && i + 1 < line.size()) {
            ++i;
            value += line[i] == 'n' ? '\n' : line[i];
          } else {
            value += line[i];
          }
          ++i;
        }
        ++i;  // past the closing quote
        if (i < line.size() && line[i] == ',') ++i;
        sample.labels[key] = value;
      }
      ++i;  // past }
    }
    EXPECT_TRUE(i < line.size() && line[i] == ' ') << line;
    sample.value = std::stod(std::string(line.substr(i + 1)));
    out.samples.push_back(std::move(sample));
  }
  return out;
}

// The samples called `name` whose labels, less model_name, are exactly
// `labels` (model_name is checked to be kModel).
std::vector<double> Find(const Exposition& e, const std::string& name,
                         std::map<std::string, std::string> labels = {}) {
  labels["model_name"] = kModel;
  std::vector<double> values;
  for (const Sample& s : e.samples) {
    if (s.name == name && s.labels == labels) values.push_back(s.value);
  }
  return values;
}

// The one sample called `name` with `labels`; fails the test when there is
// not exactly one.
double Value(const Exposition& e, const std::string& name,
             std::map<std::string, std::string> labels = {}) {
  const std::vector<double> values = Find(e, name, labels);
  EXPECT_EQ(values.size(), 1u) << name;
  return values.empty() ? -1.0 : values[0];
}

// The le boundaries (without +Inf) of the histogram series `name` with
// `labels`, in output order.
std::vector<double> Boundaries(const Exposition& e, const std::string& name,
                               std::map<std::string, std::string> labels = {}) {
  labels["model_name"] = kModel;
  std::vector<double> bounds;
  for (const Sample& s : e.samples) {
    if (s.name != name + "_bucket") continue;
    std::map<std::string, std::string> rest = s.labels;
    const std::string le = rest["le"];
    rest.erase("le");
    if (rest == labels && le != "+Inf") bounds.push_back(std::stod(le));
  }
  return bounds;
}

ServingMetricsOptions Options(int num_layers, int world_size) {
  ServingMetricsOptions options;
  options.model_name = kModel;
  options.num_layers = num_layers;
  options.num_experts = 4;
  options.world_size = world_size;
  return options;
}

ExpertStepLoad RowsStep(std::vector<std::vector<int64_t>> layer_rows_by_rank) {
  ExpertStepLoad load;
  load.layer_rows_by_rank = std::move(layer_rows_by_rank);
  return load;
}

TEST(ServingMetricsTest, ExposesEveryMetricWithExactNamesAndTypes) {
  ServingMetrics metrics(Options(/*num_layers=*/2, /*world_size=*/2));
  const std::string text = metrics.Serialize();
  const Exposition e = Parse(text);
  const std::map<std::string, std::string> expected = {
      {"herd:time_to_first_token_seconds", "histogram"},
      {"herd:inter_token_latency_seconds", "histogram"},
      {"herd:e2e_request_latency_seconds", "histogram"},
      {"herd:request_queue_time_seconds", "histogram"},
      {"herd:num_requests_running", "gauge"},
      {"herd:num_requests_waiting", "gauge"},
      {"herd:kv_cache_usage_perc", "gauge"},
      {"herd:prompt_tokens_total", "counter"},
      {"herd:generation_tokens_total", "counter"},
      {"herd:request_success_total", "counter"},
      {"herd:num_preemptions_total", "counter"},
      {"herd:prefix_cache_queries_total", "counter"},
      {"herd:prefix_cache_hits_total", "counter"},
      {"herd:ep_balancedness", "gauge"},
      {"herd:ep_rank_tokens_total", "counter"},
      {"herd:dispatch_seconds", "histogram"},
      {"herd:combine_seconds", "histogram"},
      {"herd:all_to_all_bytes_total", "counter"},
      {"herd:expert_calls_total", "counter"},
      {"herd:expert_calls_skipped_total", "counter"},
      {"herd:placement_version", "gauge"},
      {"herd:ep_rank_expert_rows_total", "counter"},
      {"herd:placement_imbalance", "gauge"},
      {"herd:rebalance_seconds", "histogram"},
      {"herd:expert_bytes_moved_total", "counter"},
      {"herd:rebalance_blocked_steps_total", "counter"},
  };
  EXPECT_EQ(e.types, expected);
  EXPECT_EQ(text.find("_total_total"), std::string::npos);
  for (const Sample& s : e.samples) {
    EXPECT_EQ(s.labels.count("model_name"), 1u) << s.name;
  }
  // Every series exists before anything happened.
  EXPECT_EQ(Value(e, "herd:prompt_tokens_total"), 0);
  for (const char* reason : {"stop", "length", "abort", "error"}) {
    EXPECT_EQ(Value(e, "herd:request_success_total", {{"finished_reason", reason}}), 0);
  }
  for (const char* layer : {"0", "1"}) {
    EXPECT_EQ(Value(e, "herd:ep_balancedness", {{"layer", layer}}), 1.0);
  }
  for (const char* rank : {"0", "1"}) {
    EXPECT_EQ(Value(e, "herd:ep_rank_tokens_total", {{"rank", rank}}), 0);
    EXPECT_EQ(Value(e, "herd:dispatch_seconds_count", {{"rank", rank}}), 0);
    EXPECT_EQ(Value(e, "herd:combine_seconds_count", {{"rank", rank}}), 0);
  }
}

TEST(ServingMetricsTest, RequestMetricsReadBackAfterCalls) {
  ServingMetrics metrics(Options(1, 1));
  metrics.SetRequestsRunning(7);
  metrics.SetRequestsWaiting(3);
  metrics.SetKvCacheUsage(0.25);
  metrics.AddPromptTokens(100);
  metrics.AddPromptTokens(28);
  metrics.AddGenerationTokens(64);
  metrics.AddRequestSuccess("stop");
  metrics.AddRequestSuccess("stop");
  metrics.AddRequestSuccess("length");
  metrics.AddRequestSuccess("abort");
  metrics.AddPreemptions(2);
  metrics.AddPrefixCacheLookup(100, 64);
  metrics.AddPrefixCacheLookup(28, 0);
  metrics.SetPlacementVersion(5);
  metrics.ObserveInterTokenLatency(0.02);
  metrics.ObserveE2eRequestLatency(3.0);
  metrics.ObserveRequestQueueTime(0.1);

  const Exposition e = Parse(metrics.Serialize());
  EXPECT_EQ(Value(e, "herd:num_requests_running"), 7);
  EXPECT_EQ(Value(e, "herd:num_requests_waiting"), 3);
  EXPECT_EQ(Value(e, "herd:kv_cache_usage_perc"), 0.25);
  EXPECT_EQ(Value(e, "herd:prompt_tokens_total"), 128);
  EXPECT_EQ(Value(e, "herd:generation_tokens_total"), 64);
  EXPECT_EQ(Value(e, "herd:request_success_total", {{"finished_reason", "stop"}}), 2);
  EXPECT_EQ(Value(e, "herd:request_success_total", {{"finished_reason", "length"}}), 1);
  EXPECT_EQ(Value(e, "herd:request_success_total", {{"finished_reason", "abort"}}), 1);
  EXPECT_EQ(Value(e, "herd:request_success_total", {{"finished_reason", "error"}}), 0);
  EXPECT_EQ(Value(e, "herd:num_preemptions_total"), 2);
  EXPECT_EQ(Value(e, "herd:prefix_cache_queries_total"), 128);
  EXPECT_EQ(Value(e, "herd:prefix_cache_hits_total"), 64);
  EXPECT_EQ(Value(e, "herd:placement_version"), 5);
  EXPECT_EQ(Value(e, "herd:inter_token_latency_seconds_count"), 1);
  EXPECT_EQ(Value(e, "herd:inter_token_latency_seconds_bucket", {{"le", "0.01"}}), 0);
  EXPECT_EQ(Value(e, "herd:inter_token_latency_seconds_bucket", {{"le", "0.025"}}), 1);
  EXPECT_EQ(Value(e, "herd:e2e_request_latency_seconds_sum"), 3.0);
  EXPECT_EQ(Value(e, "herd:e2e_request_latency_seconds_bucket", {{"le", "2.5"}}), 0);
  EXPECT_EQ(Value(e, "herd:e2e_request_latency_seconds_bucket", {{"le", "5"}}), 1);
  EXPECT_EQ(Value(e, "herd:request_queue_time_seconds_bucket", {{"le", "0.3"}}), 1);

  // A reason outside the four gets its own series.
  metrics.AddRequestSuccess("other");
  EXPECT_EQ(Value(Parse(metrics.Serialize()), "herd:request_success_total",
                  {{"finished_reason", "other"}}),
            1);
}

TEST(ServingMetricsTest, HistogramsUseVllmBuckets) {
  ServingMetrics metrics(Options(1, 1));
  const Exposition e = Parse(metrics.Serialize());
  EXPECT_EQ(Boundaries(e, "herd:time_to_first_token_seconds"),
            (std::vector<double>{0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                 0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                 20.0,  40.0,  80.0, 160.0, 640.0, 2560.0}));
  EXPECT_EQ(Boundaries(e, "herd:inter_token_latency_seconds"),
            (std::vector<double>{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                                 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}));
  const std::vector<double> request_latency = {0.3,  0.5,  0.8,   1.0,   1.5,   2.0,   2.5,
                                               5.0,  10.0, 15.0,  20.0,  30.0,  40.0,  50.0,
                                               60.0, 120., 240.0, 480.0, 960.0, 1920., 7680.};
  EXPECT_EQ(Boundaries(e, "herd:e2e_request_latency_seconds"), request_latency);
  EXPECT_EQ(Boundaries(e, "herd:request_queue_time_seconds"), request_latency);
  const std::vector<double> exchange = Boundaries(e, "herd:dispatch_seconds", {{"rank", "0"}});
  ASSERT_FALSE(exchange.empty());
  EXPECT_EQ(exchange.front(), 1e-5);
  EXPECT_EQ(exchange.back(), 10.0);
  EXPECT_EQ(Boundaries(e, "herd:combine_seconds", {{"rank", "0"}}), exchange);
}

TEST(ServingMetricsTest, HistogramBucketsAreCumulative) {
  ServingMetrics metrics(Options(1, 1));
  metrics.ObserveTimeToFirstToken(0.003);
  metrics.ObserveTimeToFirstToken(0.05);
  metrics.ObserveTimeToFirstToken(0.06);  // on a boundary: le is inclusive
  metrics.ObserveTimeToFirstToken(1000);
  metrics.ObserveTimeToFirstToken(5000);  // past the last boundary
  const Exposition e = Parse(metrics.Serialize());
  const std::string name = "herd:time_to_first_token_seconds";
  EXPECT_EQ(Value(e, name + "_count"), 5);
  EXPECT_DOUBLE_EQ(Value(e, name + "_sum"), 0.003 + 0.05 + 0.06 + 1000 + 5000);
  EXPECT_EQ(Value(e, name + "_bucket", {{"le", "0.001"}}), 0);
  EXPECT_EQ(Value(e, name + "_bucket", {{"le", "0.005"}}), 1);
  EXPECT_EQ(Value(e, name + "_bucket", {{"le", "0.04"}}), 1);
  EXPECT_EQ(Value(e, name + "_bucket", {{"le", "0.06"}}), 3);
  EXPECT_EQ(Value(e, name + "_bucket", {{"le", "640"}}), 3);
  EXPECT_EQ(Value(e, name + "_bucket", {{"le", "2560"}}), 4);
  EXPECT_EQ(Value(e, name + "_bucket", {{"le", "+Inf"}}), 5);
}

TEST(ServingMetricsTest, BalancednessIsMeanOverMaxOfTheWindow) {
  ServingMetricsOptions options = Options(/*num_layers=*/3, /*world_size=*/2);
  options.balance_window_steps = 2;
  ServingMetrics metrics(options);
  const auto balancedness = [&metrics](const char* layer) {
    return Value(Parse(metrics.Serialize()), "herd:ep_balancedness", {{"layer", layer}});
  };

  // [rank][layer]. Layer 0: 30 vs 10 -> mean 20 / max 30. Layer 1: even.
  // Layer 2: no rows -> balanced.
  metrics.RecordExpertStep(RowsStep({{30, 5, 0}, {10, 5, 0}}));
  EXPECT_NEAR(balancedness("0"), 20.0 / 30.0, 1e-12);
  EXPECT_EQ(balancedness("1"), 1.0);
  EXPECT_EQ(balancedness("2"), 1.0);

  // Window = both steps: layer 0 is 40 vs 40.
  metrics.RecordExpertStep(RowsStep({{10, 5, 0}, {30, 0, 0}}));
  EXPECT_EQ(balancedness("0"), 1.0);
  EXPECT_NEAR(balancedness("1"), 7.5 / 10.0, 1e-12);

  // The first step leaves the window: layer 0 is 10 + 0 vs 30 + 20 -> 30 / 50.
  metrics.RecordExpertStep(RowsStep({{0, 0, 0}, {20, 0, 0}}));
  EXPECT_NEAR(balancedness("0"), 30.0 / 50.0, 1e-12);
  EXPECT_NEAR(balancedness("1"), 2.5 / 5.0, 1e-12);

  // Steps without rows do not enter the window.
  ExpertStepLoad tokens_only;
  tokens_only.tokens_by_rank = {1, 1};
  metrics.RecordExpertStep(tokens_only);
  EXPECT_NEAR(balancedness("0"), 30.0 / 50.0, 1e-12);

  // Two idle steps push every row out: balanced again.
  metrics.RecordExpertStep(RowsStep({{0, 0, 0}, {0, 0, 0}}));
  metrics.RecordExpertStep(RowsStep({{0, 0, 0}, {0, 0, 0}}));
  EXPECT_EQ(balancedness("0"), 1.0);
  EXPECT_EQ(balancedness("1"), 1.0);
}

TEST(ServingMetricsTest, ExpertStepCountsPerRank) {
  ServingMetrics metrics(Options(/*num_layers=*/1, /*world_size=*/3));
  ExpertStepLoad load;
  load.layer_rows_by_rank = {{6}, {6}, {0}};
  load.tokens_by_rank = {4, 0, 9};
  load.dispatch_seconds_by_rank = {2e-5, 0.003, 20.0};
  load.combine_seconds_by_rank = {1e-5, 1e-5, 1e-5};
  load.all_to_all_bytes = 4096;
  load.routed_expert_calls = 26;
  load.skipped_expert_calls = 7;
  metrics.RecordExpertStep(load);
  load.all_to_all_bytes = 1024;
  metrics.RecordExpertStep(load);

  const Exposition e = Parse(metrics.Serialize());
  EXPECT_EQ(Value(e, "herd:ep_rank_tokens_total", {{"rank", "0"}}), 8);
  EXPECT_EQ(Value(e, "herd:ep_rank_tokens_total", {{"rank", "1"}}), 0);
  EXPECT_EQ(Value(e, "herd:ep_rank_tokens_total", {{"rank", "2"}}), 18);
  EXPECT_EQ(Value(e, "herd:all_to_all_bytes_total"), 5120);
  EXPECT_EQ(Value(e, "herd:expert_calls_total"), 52);
  EXPECT_EQ(Value(e, "herd:expert_calls_skipped_total"), 14);
  EXPECT_NEAR(Value(e, "herd:ep_balancedness", {{"layer", "0"}}), 4.0 / 6.0, 1e-12);
  EXPECT_EQ(Value(e, "herd:dispatch_seconds_count", {{"rank", "1"}}), 2);
  EXPECT_EQ(Value(e, "herd:dispatch_seconds_bucket", {{"rank", "0"}, {"le", "2.5e-05"}}), 2);
  EXPECT_EQ(Value(e, "herd:dispatch_seconds_bucket", {{"rank", "1"}, {"le", "0.0025"}}), 0);
  EXPECT_EQ(Value(e, "herd:dispatch_seconds_bucket", {{"rank", "1"}, {"le", "0.005"}}), 2);
  EXPECT_EQ(Value(e, "herd:dispatch_seconds_bucket", {{"rank", "2"}, {"le", "10"}}), 0);
  EXPECT_EQ(Value(e, "herd:dispatch_seconds_bucket", {{"rank", "2"}, {"le", "+Inf"}}), 2);
  EXPECT_EQ(Value(e, "herd:combine_seconds_bucket", {{"rank", "2"}, {"le", "1e-05"}}), 2);
}

TEST(ServingMetricsTest, SingleRankStillExportsRankZeroAndBalance) {
  ServingMetrics metrics(Options(/*num_layers=*/2, /*world_size=*/1));
  ExpertStepLoad load;
  load.layer_rows_by_rank = {{12, 0}};
  load.tokens_by_rank = {6};
  load.dispatch_seconds_by_rank = {0.0};
  load.combine_seconds_by_rank = {0.0};
  metrics.RecordExpertStep(load);
  const Exposition e = Parse(metrics.Serialize());
  EXPECT_EQ(Value(e, "herd:ep_balancedness", {{"layer", "0"}}), 1.0);
  EXPECT_EQ(Value(e, "herd:ep_balancedness", {{"layer", "1"}}), 1.0);
  EXPECT_EQ(Value(e, "herd:ep_rank_tokens_total", {{"rank", "0"}}), 6);
  EXPECT_EQ(Value(e, "herd:dispatch_seconds_count", {{"rank", "0"}}), 1);
  EXPECT_EQ(Value(e, "herd:combine_seconds_count", {{"rank", "0"}}), 1);
  EXPECT_TRUE(Find(e, "herd:ep_rank_tokens_total", {{"rank", "1"}}).empty());
}

TEST(ServingMetricsTest, NoExpertSeriesByDefault) {
  ServingMetrics metrics(Options(/*num_layers=*/4, /*world_size=*/2));
  ExpertStepLoad load = RowsStep({{1, 1, 1, 1}, {1, 1, 1, 1}});
  load.expert_tokens.assign(4 * 4, 1);  // ignored when the option is off
  metrics.RecordExpertStep(load);
  const std::string text = metrics.Serialize();
  EXPECT_EQ(text.find("expert_tokens"), std::string::npos);
  // Series grow with layers and ranks only, never layers * experts: 132 for
  // the model (docs/metrics.md), one balancedness per layer, and per rank two
  // counters (tokens, expert rows) plus two histograms of 19 buckets + +Inf,
  // _sum, _count.
  const Exposition e = Parse(text);
  std::set<std::string> names;
  for (const Sample& s : e.samples) names.insert(s.name);
  EXPECT_EQ(names.count("herd:expert_tokens_total"), 0u);
  EXPECT_EQ(e.samples.size(), 132u + 4 * 1 + 2 * (2 + 2 * 22));
}

TEST(ServingMetricsTest, DetailedExpertSeriesWhenAsked) {
  ServingMetricsOptions options = Options(/*num_layers=*/2, /*world_size=*/1);
  options.num_experts = 3;
  options.detailed_expert_metrics = true;
  ServingMetrics metrics(options);
  ExpertStepLoad load;
  load.expert_tokens = {1, 2, 3, 4, 5, 6};  // [layer * 3 + expert]
  metrics.RecordExpertStep(load);
  metrics.RecordExpertStep(load);
  const Exposition e = Parse(metrics.Serialize());
  EXPECT_EQ(e.types.at("herd:expert_tokens_total"), "counter");
  EXPECT_EQ(Value(e, "herd:expert_tokens_total", {{"layer", "0"}, {"expert", "0"}}), 2);
  EXPECT_EQ(Value(e, "herd:expert_tokens_total", {{"layer", "0"}, {"expert", "2"}}), 6);
  EXPECT_EQ(Value(e, "herd:expert_tokens_total", {{"layer", "1"}, {"expert", "1"}}), 10);
  int num_series = 0;
  for (const Sample& s : e.samples) num_series += s.name == "herd:expert_tokens_total";
  EXPECT_EQ(num_series, 6);
}

TEST(ServingMetricsTest, ModelNameIsEscaped) {
  ServingMetricsOptions options = Options(1, 1);
  options.model_name = "org/model \"v2\"";
  ServingMetrics metrics(options);
  const Exposition e = Parse(metrics.Serialize());
  ASSERT_FALSE(e.samples.empty());
  for (const Sample& s : e.samples) EXPECT_EQ(s.labels.at("model_name"), options.model_name);
}

TEST(ServingMetricsTest, OptionsValidate) {
  EXPECT_TRUE(Options(2, 2).Validate().ok());
  EXPECT_EQ(Options(-1, 1).Validate().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Options(1, 0).Validate().code(), absl::StatusCode::kInvalidArgument);
  ServingMetricsOptions options = Options(1, 1);
  options.balance_window_steps = 0;
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  options = Options(1, 1);
  options.num_experts = 0;
  EXPECT_TRUE(options.Validate().ok());
  options.detailed_expert_metrics = true;
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServingMetricsDeathTest, StepWithWrongRankCountIsABug) {
  ServingMetrics metrics(Options(/*num_layers=*/1, /*world_size=*/2));
  EXPECT_DEATH(metrics.RecordExpertStep(RowsStep({{1}, {1}, {1}})), "HERD_CHECK");
  EXPECT_DEATH(metrics.RecordExpertStep(RowsStep({{1, 2}, {1, 2}})), "HERD_CHECK");
}

TEST(ServingMetricsTest, ConcurrentCallsAddUp) {
  constexpr int kThreads = 8;
  constexpr int kIterations = 500;
  ServingMetricsOptions options = Options(/*num_layers=*/2, /*world_size=*/2);
  options.balance_window_steps = 16;
  ServingMetrics metrics(options);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&metrics, t] {
      for (int i = 0; i < kIterations; ++i) {
        metrics.AddPromptTokens(2);
        metrics.AddGenerationTokens(1);
        metrics.ObserveTimeToFirstToken(0.01 * (i % 7));
        metrics.AddRequestSuccess(t % 2 == 0 ? "stop" : "length");
        metrics.SetRequestsRunning(i);
        ExpertStepLoad load = RowsStep({{30, 1}, {10, 1}});
        load.tokens_by_rank = {1, 2};
        load.dispatch_seconds_by_rank = {1e-4, 1e-4};
        load.combine_seconds_by_rank = {1e-4, 1e-4};
        load.all_to_all_bytes = 8;
        metrics.RecordExpertStep(load);
        if (i % 100 == 0) {
          EXPECT_FALSE(metrics.Serialize().empty());
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();

  const Exposition e = Parse(metrics.Serialize());
  const double n = kThreads * kIterations;
  EXPECT_EQ(Value(e, "herd:prompt_tokens_total"), 2 * n);
  EXPECT_EQ(Value(e, "herd:generation_tokens_total"), n);
  EXPECT_EQ(Value(e, "herd:time_to_first_token_seconds_count"), n);
  EXPECT_EQ(Value(e, "herd:request_success_total", {{"finished_reason", "stop"}}), n / 2);
  EXPECT_EQ(Value(e, "herd:request_success_total", {{"finished_reason", "length"}}), n / 2);
  EXPECT_EQ(Value(e, "herd:ep_rank_tokens_total", {{"rank", "1"}}), 2 * n);
  EXPECT_EQ(Value(e, "herd:dispatch_seconds_count", {{"rank", "0"}}), n);
  EXPECT_EQ(Value(e, "herd:all_to_all_bytes_total"), 8 * n);
  EXPECT_NEAR(Value(e, "herd:ep_balancedness", {{"layer", "0"}}), 20.0 / 30.0, 1e-12);
  EXPECT_EQ(Value(e, "herd:ep_balancedness", {{"layer", "1"}}), 1.0);
}

}  // namespace
}  // namespace herd
