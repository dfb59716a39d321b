// Herd's planner against DeepSeek's EPLB on every trace, cluster case and
// snapshot of the placement fixtures (tests/data/placement):
// * Herd's metric reproduces EPLB's recorded balancedness from EPLB's own maps,
//   so the numbers below are comparable;
// * with the same load model (every expert's tokens split evenly over its
//   replicas) and the same constraints (EPLB's code path: groups kept in nodes
//   on its hierarchical path), Herd's imbalance is never above EPLB's, and is
//   below it on every hierarchical case;
// * Herd's default plan (duplicate-free, uneven token shares the runtime
//   honours) is never above EPLB either, and never below the lower bound;
// * on the DeepSeek-V3 cases Herd plans at least 10x faster than EPLB's
//   recorded runtime (single thread, like EPLB's measurement).
#include <time.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <string>

#include "coordinator/placement/lower_bound.h"
#include "coordinator/placement/metrics.h"
#include "coordinator/placement/planner.h"
#include "gtest/gtest.h"
#include "tests/coordinator/eplb_fixture.h"

namespace herd {
namespace {

double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// The cluster and options that give Herd EPLB's constraints for a case.
void CaseSetup(const testing::EplbCase& c, ClusterShape* cluster, PlannerOptions* options) {
  const bool hierarchical = c.hierarchical();
  // Node count only matters for hierarchical plans; otherwise keep it when it
  // divides the ranks (node balance is then reported), else one node.
  cluster->num_nodes = hierarchical || c.num_gpus % c.num_nodes == 0 ? c.num_nodes : 1;
  cluster->ranks_per_node = c.num_gpus / cluster->num_nodes;
  cluster->slots_per_rank = c.num_replicas / c.num_gpus;
  options->num_groups = c.num_groups;
  options->mode = hierarchical ? PlacementMode::kHierarchical : PlacementMode::kGlobal;
  options->num_threads = 1;
}

class EplbComparisonTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EplbComparisonTest, NeverWorseThanEplbAndNeverBelowTheBound) {
  const std::string name = GetParam();
  const ExpertLoadTrace trace = testing::ReadFixtureTrace(name);
  for (const testing::EplbCase& c : testing::ReadEplbCases(name)) {
    ClusterShape cluster;
    PlannerOptions options;
    CaseSetup(c, &cluster, &options);
    double eplb_sum = 0.0, even_sum = 0.0, weighted_sum = 0.0, bound_sum = 0.0;
    int64_t eplb_dups = 0, herd_dups = 0;
    for (const testing::EplbSnapshot& s : c.snapshots) {
      SCOPED_TRACE(name + " " + c.case_id + " snapshot " + std::to_string(s.snapshot));
      absl::StatusOr<LoadMatrix> loads = TraceLoads(trace, s.snapshot);
      ASSERT_TRUE(loads.ok());

      // EPLB's map scored by Herd's metric equals EPLB's recorded score.
      const ExpertPlacement eplb = testing::EplbPlacement(c, s, trace.num_experts);
      const ImbalanceSummary eplb_score = ScoreImbalance(eplb, *loads, /*use_shares=*/false);
      for (int l = 0; l < trace.num_layers; ++l) {
        ASSERT_NEAR(eplb_score.per_layer[l], s.eplb_balancedness[l], 2e-6) << "layer " << l;
      }
      eplb_dups += DuplicateReplicas(eplb);

      options.split = ReplicaSplit::kEven;
      absl::StatusOr<PlanResult> even = PlanPlacement(*loads, cluster, options);
      ASSERT_TRUE(even.ok()) << even.status();
      options.split = ReplicaSplit::kWeighted;
      absl::StatusOr<PlanResult> weighted = PlanPlacement(*loads, cluster, options);
      ASSERT_TRUE(weighted.ok()) << weighted.status();

      const ImbalanceSummary even_score = ScoreImbalance(even->placement, *loads, false);
      const ImbalanceSummary weighted_score = ScoreImbalance(weighted->placement, *loads, true);
      // The relevant bound: groups kept in nodes on the hierarchical path.
      const std::vector<double>& bound = c.hierarchical() ? s.lower_bound_hier : s.lower_bound;
      double bound_mean = 0.0;
      for (int l = 0; l < trace.num_layers; ++l) {
        EXPECT_GE(even_score.per_layer[l], bound[l] - 2e-6) << "layer " << l;
        EXPECT_GE(weighted_score.per_layer[l], bound[l] - 2e-6) << "layer " << l;
        bound_mean += bound[l] / trace.num_layers;
      }
      EXPECT_LE(even_score.mean, eplb_score.mean + 1e-12);
      EXPECT_LE(weighted_score.mean, eplb_score.mean + 1e-12);
      if (c.hierarchical()) {
        EXPECT_LT(even_score.mean, eplb_score.mean);
      }
      // Herd's default plan has no avoidable duplicate: more slots than ranks
      // per expert never happen in these cases.
      herd_dups += DuplicateReplicas(weighted->placement);
      eplb_sum += eplb_score.mean;
      even_sum += even_score.mean;
      weighted_sum += weighted_score.mean;
      bound_sum += bound_mean;
    }
    EXPECT_EQ(herd_dups, 0) << name << " " << c.case_id;
    const int n = static_cast<int>(c.snapshots.size());
    std::printf(
        "%-22s %-18s %-12s eplb %.4f (dups %5ld)  herd even %.4f  herd weighted %.4f  "
        "bound %.4f\n",
        name.c_str(), c.case_id.c_str(), c.code_path.substr(0, 12).c_str(), eplb_sum / n,
        static_cast<long>(eplb_dups), even_sum / n, weighted_sum / n, bound_sum / n);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllTraces, EplbComparisonTest, ::testing::ValuesIn(testing::FixtureTraceNames()),
    [](const ::testing::TestParamInfo<std::string>& info) {
      std::string name = info.param;
      std::replace_if(
          name.begin(), name.end(),
          [](char ch) { return !std::isalnum(static_cast<unsigned char>(ch)); }, '_');
      return name;
    });

TEST(EplbRuntimeTest, AtLeastTenTimesFasterOnDeepSeekV3Cases) {
  for (const std::string name : {"dsv3_zipf1.0", "dsv3_hot5-40"}) {
    const ExpertLoadTrace trace = testing::ReadFixtureTrace(name);
    absl::StatusOr<LoadMatrix> loads = TraceLoads(trace, 0);
    ASSERT_TRUE(loads.ok());
    for (const testing::EplbCase& c : testing::ReadEplbCases(name)) {
      ClusterShape cluster;
      PlannerOptions options;
      CaseSetup(c, &cluster, &options);
      // Herd's default plan (weighted shares included): the best CPU time of
      // the planning thread over at least twenty runs and half a second, so
      // that a sub-millisecond case sees calm moments of a loaded CI machine
      // too; EPLB: its best recorded wall time.
      double herd = 1e9;
      double spent = 0.0;
      for (int rep = 0; rep < 20 || spent < 0.5; ++rep) {
        const double start = ThreadCpuSeconds();
        absl::StatusOr<PlanResult> plan = PlanPlacement(*loads, cluster, options);
        const double seconds = ThreadCpuSeconds() - start;
        herd = std::min(herd, seconds);
        spent += seconds;
        ASSERT_TRUE(plan.ok());
      }
      const double eplb = c.snapshots[0].runtime_min_seconds;
      std::printf("%-14s %-18s herd %.5f s  eplb %.5f s  speed-up %.1fx\n", name.c_str(),
                  c.case_id.c_str(), herd, eplb, eplb / herd);
      EXPECT_LE(herd * 10.0, eplb) << name << " " << c.case_id;
    }
  }
}

}  // namespace
}  // namespace herd
