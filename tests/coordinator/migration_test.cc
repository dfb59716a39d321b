// Migration-aware planning on the drift traces: from the placement deployed
// for the previous snapshot, far fewer experts move than when replanning from
// scratch, for at most the stated loss of balance.
#include <string>

#include "coordinator/placement/metrics.h"
#include "coordinator/placement/planner.h"
#include "gtest/gtest.h"
#include "tests/coordinator/eplb_fixture.h"

namespace herd {
namespace {

struct DriftCase {
  const char* trace;
  ClusterShape cluster;
  int groups;
};

class MigrationTest : public ::testing::TestWithParam<DriftCase> {};

TEST_P(MigrationTest, MovesFarFewerExpertsForAtMostTheToleratedLoss) {
  const DriftCase& dc = GetParam();
  const ExpertLoadTrace trace = testing::ReadFixtureTrace(dc.trace);
  PlannerOptions options;
  options.num_groups = dc.groups;
  options.balance_tolerance = 0.02;
  absl::StatusOr<LoadMatrix> first = TraceLoads(trace, 0);
  ASSERT_TRUE(first.ok());
  absl::StatusOr<PlanResult> start = PlanPlacement(*first, dc.cluster, options);
  ASSERT_TRUE(start.ok()) << start.status();
  ExpertPlacement deployed = start->placement;
  MovedReplicas migrated_total, scratch_total;
  double migrated_imbalance = 0.0, scratch_imbalance = 0.0, stale_imbalance = 0.0;
  for (int t = 1; t < trace.num_snapshots; ++t) {
    SCOPED_TRACE(absl::StrCat(dc.trace, " snapshot ", t));
    absl::StatusOr<LoadMatrix> loads = TraceLoads(trace, t);
    ASSERT_TRUE(loads.ok());
    absl::StatusOr<PlanResult> scratch = PlanPlacement(*loads, dc.cluster, options);
    absl::StatusOr<PlanResult> migrated = PlanPlacement(*loads, dc.cluster, options, &deployed);
    ASSERT_TRUE(scratch.ok() && migrated.ok()) << migrated.status();
    ASSERT_EQ(migrated->scratch_imbalance.size(), static_cast<size_t>(trace.num_layers));
    // Per layer: even-split imbalance within the tolerance of the scratch plan.
    const ImbalanceSummary even = ScoreImbalance(migrated->placement, *loads, false);
    const ImbalanceSummary scratch_even = ScoreImbalance(scratch->placement, *loads, false);
    for (int l = 0; l < trace.num_layers; ++l) {
      EXPECT_NEAR(migrated->scratch_imbalance[l], scratch_even.per_layer[l], 1e-9);
      EXPECT_LE(even.per_layer[l], scratch_even.per_layer[l] * 1.02 + 1e-9) << "layer " << l;
    }
    const MovedReplicas m = CountMovedReplicas(deployed, migrated->placement);
    const MovedReplicas s = CountMovedReplicas(deployed, scratch->placement);
    migrated_total.moved += m.moved;
    migrated_total.total += m.total;
    scratch_total.moved += s.moved;
    scratch_total.total += s.total;
    migrated_imbalance += ScoreImbalance(migrated->placement, *loads, true).mean;
    scratch_imbalance += ScoreImbalance(scratch->placement, *loads, true).mean;
    stale_imbalance += ScoreImbalance(deployed, *loads, true).mean;
    if (migrated->mode == PlacementMode::kHierarchical) {
      EXPECT_EQ(migrated->node_of_group.size(), static_cast<size_t>(trace.num_layers));
    }
    deployed = migrated->placement;
  }
  const int n = trace.num_snapshots - 1;
  std::printf(
      "%-18s %2dx%-2d S%-2d stale %.4f  scratch %.4f moved %.3f  migration %.4f moved %.3f\n",
      dc.trace, dc.cluster.num_nodes, dc.cluster.ranks_per_node, dc.cluster.slots_per_rank,
      stale_imbalance / n, scratch_imbalance / n, scratch_total.fraction(), migrated_imbalance / n,
      migrated_total.fraction());
  // Far fewer moves: under 40% of what replanning from scratch moves.
  EXPECT_LT(migrated_total.fraction(), 0.4 * scratch_total.fraction());
  // Much better than keeping the stale placement, close to replanning.
  EXPECT_LT(migrated_imbalance / n, stale_imbalance / n);
  EXPECT_LE(migrated_imbalance / n, scratch_imbalance / n * 1.02 + 1e-9);
}

INSTANTIATE_TEST_SUITE_P(DriftTraces, MigrationTest,
                         ::testing::Values(DriftCase{"mixtral8x7b_drift", {1, 4, 3}, 1},
                                           DriftCase{"olmoe_drift", {1, 8, 9}, 1},
                                           DriftCase{"qwen3moe30b_drift", {1, 32, 5}, 1},
                                           DriftCase{"dsv3_drift", {1, 32, 9}, 8},
                                           DriftCase{"dsv3_drift", {4, 8, 9}, 8}));

TEST(MigrationTest, AnAlreadyGoodPlacementDoesNotMove) {
  const ExpertLoadTrace trace = testing::ReadFixtureTrace("qwen3moe30b_zipf1.0");
  absl::StatusOr<LoadMatrix> loads = TraceLoads(trace, 0);
  ASSERT_TRUE(loads.ok());
  ClusterShape cluster{1, 8, 18};
  absl::StatusOr<PlanResult> plan = PlanPlacement(*loads, cluster, PlannerOptions{});
  ASSERT_TRUE(plan.ok());
  absl::StatusOr<PlanResult> again =
      PlanPlacement(*loads, cluster, PlannerOptions{}, &plan->placement);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(CountMovedReplicas(plan->placement, again->placement).moved, 0);
}

}  // namespace
}  // namespace herd
