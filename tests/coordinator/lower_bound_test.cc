// Lower bounds and replica apportionment, checked against the fixture's
// independently computed bounds and a direct D'Hondt reference.
#include "coordinator/placement/lower_bound.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "coordinator/placement/apportion.h"
#include "gtest/gtest.h"
#include "tests/coordinator/eplb_fixture.h"

namespace herd {
namespace {

// D'Hondt as its definition reads: one slot at a time to the heaviest replica.
std::vector<int32_t> ReferenceDHondt(const std::vector<double>& w, int num_slots, int cap) {
  std::vector<int32_t> c(w.size(), 1);
  for (int s = static_cast<int>(w.size()); s < num_slots; ++s) {
    int best = -1;
    for (size_t e = 0; e < w.size(); ++e) {
      if (c[e] >= cap) continue;
      if (best < 0 || w[e] / c[e] > w[best] / c[best]) best = static_cast<int>(e);
    }
    if (best < 0) return {};  // everything capped
    ++c[best];
  }
  return c;
}

TEST(ApportionTest, MatchesDirectDHondtOnFixtureLayers) {
  for (const std::string name :
       {"dsv3_zipf1.0", "qwen3moe30b_hot5-40", "olmoe_zipf1.5", "mixtral8x7b_zipf0.5"}) {
    const ExpertLoadTrace t = testing::ReadFixtureTrace(name);
    absl::StatusOr<LoadMatrix> loads = TraceLoads(t, 0);
    ASSERT_TRUE(loads.ok());
    for (int l = 0; l < t.num_layers; l += 5) {
      const std::vector<double> w(loads->Layer(l), loads->Layer(l) + t.num_experts);
      for (int extra :
           {0, 1, t.num_experts / 8, t.num_experts / 4, t.num_experts, 3 * t.num_experts}) {
        for (int cap : {2, 8, 1 << 20}) {
          const int slots = t.num_experts + extra;
          const std::vector<int32_t> want = ReferenceDHondt(w, slots, cap);
          if (want.empty()) continue;
          SCOPED_TRACE(name + " layer " + std::to_string(l) + " extra " + std::to_string(extra) +
                       " cap " + std::to_string(cap));
          EXPECT_EQ(ApportionReplicas(w.data(), t.num_experts, slots, cap), want);
        }
      }
    }
  }
}

TEST(ApportionTest, TiesZerosAndCapsAreDeterministic) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 40);
    std::vector<double> w(n);
    // Few distinct values: many exact ties, including between w_a / i and w_b / j.
    for (double& v : w) v = static_cast<double>(rng() % 4) * 6.0;
    const int slots = n + static_cast<int>(rng() % (2 * n + 1));
    const int cap = 1 + static_cast<int>(rng() % 6);
    SCOPED_TRACE(trial);
    const std::vector<int32_t> got = ApportionReplicas(w.data(), n, slots, cap);
    ASSERT_EQ(got.size(), static_cast<size_t>(n));
    int total = 0;
    for (int32_t c : got) {
      EXPECT_GE(c, 1);
      total += c;
    }
    EXPECT_EQ(total, slots);  // every slot is handed out, even past the cap
    const std::vector<int32_t> want = ReferenceDHondt(w, slots, cap);
    if (!want.empty()) {
      // With zero loads the reference keeps handing slots to zero-load experts
      // in index order; both agree on the minimal largest replica load.
      EXPECT_DOUBLE_EQ(MaxReplicaLoad(w.data(), got), MaxReplicaLoad(w.data(), want));
      bool has_zero = std::find(w.begin(), w.end(), 0.0) != w.end();
      if (!has_zero) {
        EXPECT_EQ(got, want);
      }
    }
  }
}

TEST(LowerBoundTest, MatchesTheFixtureBoundsEverywhere) {
  int checked = 0, hier_checked = 0;
  for (const std::string& name : testing::FixtureTraceNames()) {
    const ExpertLoadTrace t = testing::ReadFixtureTrace(name);
    for (const testing::EplbCase& c : testing::ReadEplbCases(name)) {
      for (const testing::EplbSnapshot& s : c.snapshots) {
        absl::StatusOr<LoadMatrix> loads = TraceLoads(t, s.snapshot);
        ASSERT_TRUE(loads.ok());
        for (int l = 0; l < t.num_layers; ++l) {
          SCOPED_TRACE(name + " " + c.case_id + " snapshot " + std::to_string(s.snapshot) +
                       " layer " + std::to_string(l));
          const double got =
              GlobalLowerBound(loads->Layer(l), t.num_experts, c.num_replicas, c.num_gpus);
          EXPECT_NEAR(got, s.lower_bound[l], 1.5e-6);
          ++checked;
          if (!s.lower_bound_hier.empty()) {
            const HierarchicalBound h =
                HierarchicalLowerBound(loads->Layer(l), t.num_experts, c.num_groups, c.num_nodes,
                                       c.num_replicas, c.num_gpus);
            EXPECT_TRUE(h.exact);
            EXPECT_NEAR(h.value, s.lower_bound_hier[l], 1.5e-6);
            ++hier_checked;
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 10000);
  EXPECT_GT(hier_checked, 2000);
}

TEST(LowerBoundTest, SmallHandComputedCases) {
  // 4 experts on 2 ranks, no redundancy: the rank with the 10 holds one more.
  const std::vector<double> w = {10, 1, 2, 3};
  EXPECT_DOUBLE_EQ(GlobalLowerBound(w.data(), 4, 4, 2), (10.0 + 1.0) / 8.0);
  // Two redundant slots: D'Hondt gives the 10 three replicas (10/3 < 3.4).
  EXPECT_DOUBLE_EQ(GlobalLowerBound(w.data(), 4, 6, 2), 1.0);
  const std::vector<double> zeros = {0, 0};
  EXPECT_DOUBLE_EQ(GlobalLowerBound(zeros.data(), 2, 2, 2), 1.0);
}

TEST(LowerBoundTest, GroupAssignmentSearch) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<double> w(64);
    for (double& v : w) v = static_cast<double>(rng() % 1000);
    SCOPED_TRACE(trial);
    const GroupsToNodes exact = AssignGroupsToNodes(w.data(), 64, 8, 4, 72, 8, false);
    EXPECT_TRUE(exact.exact);
    // Each node gets two whole groups.
    std::vector<int> per_node(4, 0);
    for (int32_t n : exact.node_of_group) ++per_node[n];
    EXPECT_EQ(per_node, (std::vector<int>{2, 2, 2, 2}));
    // The local search (forced by a zero partition budget) is never better
    // than the exhaustive optimum.
    const GroupsToNodes heuristic = AssignGroupsToNodes(w.data(), 64, 8, 4, 72, 8, false, 0);
    EXPECT_FALSE(heuristic.exact);
    EXPECT_GE(heuristic.bound, exact.bound - 1e-12);
    // And the hierarchical bound is at least the global one.
    EXPECT_GE(HierarchicalLowerBound(w.data(), 64, 8, 4, 72, 8).value,
              GlobalLowerBound(w.data(), 64, 72, 8) - 1e-12);
  }
}

}  // namespace
}  // namespace herd
