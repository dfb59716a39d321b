// The coordinator's half of online rebalancing: the sliding window of expert
// counts, the trigger (full window, threshold, minimum interval), the planned
// placement and its cap on moves, and the stage -> every rank ready -> switch
// protocol, with the metrics it sets.
#include "coordinator/scheduler/rebalancer.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace herd {
namespace {

constexpr int kNumLayers = 2;
constexpr int kNumExperts = 8;
constexpr int kNumRanks = 4;

// Experts 0 and 1 (the hot ones) both on rank 0; 3 slots per rank.
ExpertPlacement BadPlacement() {
  std::vector<LayerPlacementSpec> layers(
      kNumLayers, LayerPlacementSpec::FromRanks({{0, 1, 2}, {3, 4, 5}, {6, 7, 2}, {3, 4, 5}}));
  auto placement = ExpertPlacement::Create(kNumExperts, kNumRanks, 1, std::move(layers));
  EXPECT_TRUE(placement.ok()) << placement.status();
  return *placement;
}

// One step's counts: experts 0 and 1 get `hot` tokens each, the others 1.
std::vector<int64_t> SkewedStep(int64_t hot) {
  std::vector<int64_t> counts(kNumLayers * kNumExperts, 1);
  for (int l = 0; l < kNumLayers; ++l) {
    counts[l * kNumExperts + 0] = hot;
    counts[l * kNumExperts + 1] = hot;
  }
  return counts;
}

RebalanceStepReport Report(const std::vector<int64_t>& counts, uint64_t ready_version,
                           int num_ready = kNumRanks) {
  RebalanceStepReport report;
  report.expert_tokens = counts;
  for (int r = 0; r < kNumRanks; ++r) {
    report.ready_version.push_back(r < num_ready ? ready_version : 0);
    report.staged_bytes.push_back(r < num_ready && ready_version > 0 ? 1000 : 0);
    report.stage_error.emplace_back();
    report.load_wait_seconds.push_back(0.0);
  }
  return report;
}

double Metric(const ServingMetrics& metrics, const std::string& name) {
  const std::string text = metrics.Serialize();
  const std::string prefix = name + "{model_name=\"m\"} ";
  const size_t pos = text.find(prefix);
  if (pos == std::string::npos) return -1;
  return std::stod(text.substr(pos + prefix.size()));
}

ServingMetricsOptions MetricsOptions() {
  ServingMetricsOptions options;
  options.model_name = "m";
  options.num_layers = kNumLayers;
  options.world_size = kNumRanks;
  return options;
}

RebalanceConfig Config() {
  RebalanceConfig config;
  config.enabled = true;
  config.window_steps = 3;
  config.threshold = 1.2;
  config.min_interval_s = 10;
  return config;
}

TEST(ExpertLoadWindowTest, SumsTheLastStepsOnly) {
  ExpertLoadWindow window(2, 3);
  EXPECT_FALSE(window.full());
  window.Push({1, 2, 3});
  window.Push({10, 20, 30});
  EXPECT_TRUE(window.full());
  EXPECT_EQ(window.totals(), (std::vector<int64_t>{11, 22, 33}));
  window.Push({100, 0, 0});
  EXPECT_EQ(window.totals(), (std::vector<int64_t>{110, 20, 30}));
  EXPECT_EQ(window.num_steps(), 2);
}

TEST(PlanRebalanceTest, SpreadsHotExpertsAndHonoursTheMoveCap) {
  const ExpertPlacement bad = BadPlacement();
  LoadMatrix loads{kNumLayers, kNumExperts, {}};
  for (int64_t c : SkewedStep(40)) loads.values.push_back(static_cast<double>(c));

  auto plan = PlanRebalance(bad, loads, /*max_experts_moved=*/0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_GT(plan->imbalance_before, 2.5);
  EXPECT_LT(plan->imbalance_after, 1.2);
  EXPECT_GT(plan->experts_moved, 0);
  EXPECT_EQ(plan->placement.UniformSlotsPerRank(), 3);

  // Room for one layer's moves only: the other layer keeps its placement.
  const int64_t per_layer = plan->experts_moved / kNumLayers;
  auto capped = PlanRebalance(bad, loads, per_layer);
  ASSERT_TRUE(capped.ok()) << capped.status();
  EXPECT_LE(capped->experts_moved, per_layer);
  EXPECT_LT(capped->imbalance_after, capped->imbalance_before);
  EXPECT_GT(capped->imbalance_after, plan->imbalance_after);
  int kept_layers = 0;
  for (int l = 0; l < kNumLayers; ++l) {
    kept_layers += capped->placement.SlotExperts(l) == bad.SlotExperts(l) ? 1 : 0;
  }
  EXPECT_EQ(kept_layers, 1);
}

TEST(RebalancerTest, StagesWaitsForEveryRankThenSwitchesAtOneStep) {
  ServingMetrics metrics(MetricsOptions());
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  auto rebalancer = Rebalancer::Create(Config(), BadPlacement(), &metrics, t0);
  ASSERT_TRUE(rebalancer.ok()) << rebalancer.status();
  Rebalancer& r = **rebalancer;

  // Before min_interval_s: counts accumulate, nothing is staged.
  for (int i = 0; i < 3; ++i) {
    const PlacementDirective d = r.BeginStep(t0 + absl::Seconds(1));
    EXPECT_EQ(d.placement_version, 1u);
    EXPECT_EQ(d.stage_version, 0u);
    r.EndStep(Report(SkewedStep(40), 0), t0 + absl::Seconds(1));
  }
  EXPECT_GT(r.WindowImbalance(), 2.5);
  EXPECT_NEAR(Metric(metrics, "herd:placement_imbalance"), r.WindowImbalance(), 1e-9);

  // The trigger fires: the plan carries the new placement to every rank.
  const absl::Time t1 = t0 + absl::Seconds(11);
  PlacementDirective staged = r.BeginStep(t1);
  EXPECT_EQ(staged.placement_version, 1u);
  ASSERT_EQ(staged.stage_version, 2u);
  auto parsed = ParsePlacement(staged.stage_placement, "staged");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  r.EndStep(Report(SkewedStep(40), 2, /*num_ready=*/3), t1);

  // Not every rank is ready: steps stay on version 1, nothing restaged.
  PlacementDirective waiting = r.BeginStep(t1 + absl::Milliseconds(10));
  EXPECT_EQ(waiting.placement_version, 1u);
  EXPECT_EQ(waiting.stage_version, 0u);
  r.EndStep(Report(SkewedStep(40), 2), t1 + absl::Milliseconds(500));

  // Every rank ready: the next step runs version 2 everywhere.
  PlacementDirective switching = r.BeginStep(t1 + absl::Milliseconds(600));
  EXPECT_EQ(switching.placement_version, 2u);
  EXPECT_EQ(switching.stage_version, 0u);
  EXPECT_EQ(r.placement_version(), 1u);
  r.EndStep(Report(SkewedStep(40), 0), t1 + absl::Milliseconds(700));
  EXPECT_EQ(r.placement_version(), 2u);
  EXPECT_LT(r.WindowImbalance(), 1.2);
  EXPECT_EQ(Metric(metrics, "herd:placement_version"), 2);
  EXPECT_EQ(Metric(metrics, "herd:expert_bytes_moved_total"), 4000);
  EXPECT_EQ(Metric(metrics, "herd:rebalance_seconds_count"), 1);
  EXPECT_NEAR(Metric(metrics, "herd:rebalance_seconds_sum"), 0.5, 1e-9);
  EXPECT_EQ(Metric(metrics, "herd:rebalance_blocked_steps_total"), 0);

  // Balanced now: nothing more to do, however long it runs.
  for (int i = 0; i < 5; ++i) {
    const PlacementDirective d = r.BeginStep(t1 + absl::Seconds(100 + i));
    EXPECT_EQ(d.placement_version, 2u);
    EXPECT_EQ(d.stage_version, 0u);
    r.EndStep(Report(SkewedStep(40), 0), t1 + absl::Seconds(100 + i));
  }
}

TEST(RebalancerTest, BelowThresholdOrBeforeTheWindowFillsNothingMoves) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  RebalanceConfig config = Config();
  config.min_interval_s = 0;
  auto rebalancer = Rebalancer::Create(config, BadPlacement(), nullptr, t0);
  ASSERT_TRUE(rebalancer.ok());
  // Two skewed steps: the window (3) is not full yet.
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ((*rebalancer)->BeginStep(t0).stage_version, 0u);
    (*rebalancer)->EndStep(Report(SkewedStep(40), 0), t0);
  }
  // Uniform load: the bad placement (imbalance 1.25 for it) is within the
  // threshold.
  config.threshold = 1.3;
  auto uniform = Rebalancer::Create(config, BadPlacement(), nullptr, t0);
  ASSERT_TRUE(uniform.ok());
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ((*uniform)->BeginStep(t0).stage_version, 0u);
    (*uniform)->EndStep(Report(SkewedStep(1), 0), t0);
  }
  EXPECT_LT((*uniform)->WindowImbalance(), config.threshold);
}

TEST(RebalancerTest, AFailedLoadAbandonsAndAWaitIsCounted) {
  ServingMetrics metrics(MetricsOptions());
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  RebalanceConfig config = Config();
  config.min_interval_s = 5;
  auto rebalancer = Rebalancer::Create(config, BadPlacement(), &metrics, t0);
  ASSERT_TRUE(rebalancer.ok());
  Rebalancer& r = **rebalancer;
  for (int i = 0; i < 3; ++i) {
    r.BeginStep(t0);
    r.EndStep(Report(SkewedStep(40), 0), t0);
  }
  const absl::Time t1 = t0 + absl::Seconds(6);
  ASSERT_EQ(r.BeginStep(t1).stage_version, 2u);
  RebalanceStepReport failed = Report(SkewedStep(40), 0);
  failed.stage_error[2] = "disk gone";
  failed.load_wait_seconds[1] = 0.25;
  r.EndStep(failed, t1);
  EXPECT_EQ(Metric(metrics, "herd:rebalance_blocked_steps_total"), 1);
  // Abandoned: version 1 stays, and the next try waits min_interval_s and
  // uses a fresh version number.
  EXPECT_EQ(r.BeginStep(t1 + absl::Seconds(1)).stage_version, 0u);
  r.EndStep(Report(SkewedStep(40), 0), t1 + absl::Seconds(1));
  EXPECT_EQ(r.placement_version(), 1u);
  EXPECT_EQ(r.BeginStep(t1 + absl::Seconds(6)).stage_version, 3u);
}

TEST(RebalancerTest, CreateRejectsWhatItCannotRebalance) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  RebalanceConfig config = Config();
  config.threshold = 0.5;
  EXPECT_EQ(Rebalancer::Create(config, BadPlacement(), nullptr, t0).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto single = ExpertPlacement::Contiguous(kNumLayers, kNumExperts, 1);
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(Rebalancer::Create(Config(), *single, nullptr, t0).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto uneven =
      ExpertPlacement::Create(kNumExperts, 2, 1,
                              {LayerPlacementSpec::FromRanks({{0, 1, 2}, {3, 4, 5, 6, 7}}),
                               LayerPlacementSpec::FromRanks({{0, 1, 2}, {3, 4, 5, 6, 7}})});
  ASSERT_TRUE(uneven.ok());
  EXPECT_EQ(Rebalancer::Create(Config(), *uneven, nullptr, t0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RebalanceConfigTest, ValidateNamesTheField) {
  RebalanceConfig config;
  EXPECT_TRUE(config.Validate().ok());
  config.window_steps = 0;
  EXPECT_NE(config.Validate().message().find("serve.rebalance.window_steps"), std::string::npos);
  config = RebalanceConfig();
  config.threshold = 0.9;
  EXPECT_NE(config.Validate().message().find("serve.rebalance.threshold"), std::string::npos);
  config = RebalanceConfig();
  config.min_interval_s = -1;
  EXPECT_NE(config.Validate().message().find("serve.rebalance.min_interval_s"), std::string::npos);
  config = RebalanceConfig();
  config.max_experts_moved = -1;
  EXPECT_NE(config.Validate().message().find("serve.rebalance.max_experts_moved"),
            std::string::npos);
}

}  // namespace
}  // namespace herd
