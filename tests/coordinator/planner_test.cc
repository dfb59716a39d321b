// The planner's contract: valid placements of the requested shape, the
// hierarchical constraint, anti-affinity, shares, determinism, and clear
// errors for bad input.
#include "coordinator/placement/planner.h"

#include <cmath>
#include <random>
#include <set>
#include <string>

#include "coordinator/placement/lower_bound.h"
#include "coordinator/placement/memory_model.h"
#include "coordinator/placement/metrics.h"
#include "coordinator/placement/packing.h"
#include "coordinator/placement/replica_shares.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/eplb_fixture.h"

namespace herd {
namespace {

using ::testing::HasSubstr;

LoadMatrix RandomLoads(int layers, int experts, uint32_t seed, double skew) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  LoadMatrix m;
  m.num_layers = layers;
  m.num_experts = experts;
  for (int i = 0; i < layers * experts; ++i) {
    m.values.push_back(std::floor(1000.0 * std::pow(u(rng), skew)));
  }
  return m;
}

void ExpectValid(const ExpertPlacement& p, const LoadMatrix& loads, const ClusterShape& c) {
  ASSERT_EQ(p.num_layers(), loads.num_layers);
  ASSERT_EQ(p.num_experts(), loads.num_experts);
  ASSERT_EQ(p.num_ranks(), c.num_ranks());
  ASSERT_EQ(p.num_nodes(), c.num_nodes);
  ASSERT_EQ(p.UniformSlotsPerRank(), c.slots_per_rank);
  for (int l = 0; l < p.num_layers(); ++l) {
    for (int e = 0; e < p.num_experts(); ++e) {
      ASSERT_GE(p.NumReplicas(l, e), 1);
      double sum = 0.0;
      for (int32_t s : p.ReplicaSlots(l, e)) sum += p.SlotShare(l, s);
      ASSERT_NEAR(sum, 1.0, 1e-9);
    }
  }
}

TEST(PlannerTest, GlobalPlansAreValidBoundedAndDuplicateFree) {
  for (int s : {1, 2, 3, 5, 9}) {
    for (double skew : {1.0, 3.0, 8.0}) {
      SCOPED_TRACE(absl::StrCat("slots ", s, " skew ", skew));
      const LoadMatrix loads = RandomLoads(6, 64, 100 + s, skew);
      ClusterShape c{2, 16, s};
      if (c.num_slots() < 64) continue;
      PlannerOptions o;
      absl::StatusOr<PlanResult> plan = PlanPlacement(loads, c, o);
      ASSERT_TRUE(plan.ok()) << plan.status();
      EXPECT_EQ(plan->mode, PlacementMode::kGlobal);
      ExpectValid(plan->placement, loads, c);
      EXPECT_EQ(DuplicateReplicas(plan->placement), 0);
      const ImbalanceSummary weighted = ScoreImbalance(plan->placement, loads, true);
      const ImbalanceSummary even = ScoreImbalance(plan->placement, loads, false);
      const ImbalanceSummary bound = LowerBoundSummary(loads, c.num_slots(), c.num_ranks());
      for (int l = 0; l < loads.num_layers; ++l) {
        EXPECT_GE(weighted.per_layer[l], bound.per_layer[l] - 1e-9);
        EXPECT_LE(weighted.per_layer[l], even.per_layer[l] + 1e-9);
      }
    }
  }
}

TEST(PlannerTest, LayersWithoutTrafficStillPlaceEveryExpert) {
  LoadMatrix loads{2, 16, std::vector<double>(32, 0.0)};
  for (int e = 0; e < 16; ++e) loads.values[16 + e] = e == 3 ? 100.0 : 0.0;  // one hot expert
  for (const ReplicaSplit split : {ReplicaSplit::kEven, ReplicaSplit::kWeighted}) {
    PlannerOptions o;
    o.split = split;
    ClusterShape c{1, 4, 5};
    absl::StatusOr<PlanResult> plan = PlanPlacement(loads, c, o);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ExpectValid(plan->placement, loads, c);
    const ImbalanceSummary s = ScoreImbalance(plan->placement, loads, true);
    EXPECT_DOUBLE_EQ(s.per_layer[0], 1.0);   // no load: balanced by definition
    EXPECT_NEAR(s.per_layer[1], 1.0, 1e-9);  // the hot expert on all four ranks
    EXPECT_EQ(plan->placement.NumReplicas(1, 3), 4);
  }
}

TEST(PlannerTest, OneSlotPerRankReachesTheBound) {
  // With one slot per rank the rank load is the replica load, and D'Hondt
  // minimises the largest replica load exactly.
  const LoadMatrix loads = RandomLoads(4, 32, 5, 4.0);
  ClusterShape c{5, 8, 1};
  absl::StatusOr<PlanResult> plan = PlanPlacement(loads, c, PlannerOptions{});
  ASSERT_TRUE(plan.ok());
  const ImbalanceSummary got = ScoreImbalance(plan->placement, loads, true);
  const ImbalanceSummary bound = LowerBoundSummary(loads, 40, 40);
  for (int l = 0; l < 4; ++l) EXPECT_NEAR(got.per_layer[l], bound.per_layer[l], 1e-12);
}

TEST(PlannerTest, HierarchicalKeepsGroupsAndReplicasInTheirNode) {
  const ExpertLoadTrace t = testing::ReadFixtureTrace("dsv3_hot5-40");
  absl::StatusOr<LoadMatrix> loads = TraceLoads(t, 0);
  ASSERT_TRUE(loads.ok());
  ClusterShape c{4, 8, 9};
  PlannerOptions o;
  o.num_groups = 8;
  absl::StatusOr<PlanResult> plan = PlanPlacement(*loads, c, o);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->mode, PlacementMode::kHierarchical);  // auto: 4 nodes divide 8 groups
  ExpectValid(plan->placement, *loads, c);
  ASSERT_EQ(plan->node_of_group.size(), 58u);
  for (int l = 0; l < 58; ++l) {
    std::vector<int> groups_per_node(4, 0);
    for (int32_t n : plan->node_of_group[l]) ++groups_per_node[n];
    EXPECT_EQ(groups_per_node, (std::vector<int>{2, 2, 2, 2}));
    for (int s = 0; s < plan->placement.NumSlots(l); ++s) {
      const int group = plan->placement.SlotExpert(l, s) / 32;
      ASSERT_EQ(plan->placement.NodeOfRank(plan->placement.SlotRank(l, s)),
                plan->node_of_group[l][group])
          << "layer " << l << " slot " << s;
    }
  }
  // Never below the hierarchical bound.
  const ImbalanceSummary got = ScoreImbalance(plan->placement, *loads, true);
  for (int l = 0; l < 58; ++l) {
    EXPECT_GE(got.per_layer[l],
              HierarchicalLowerBound(loads->Layer(l), 256, 8, 4, 288, 32).value - 1e-9);
  }
}

TEST(PlannerTest, DeterministicAndIndependentOfThreads) {
  const LoadMatrix loads = RandomLoads(12, 128, 9, 3.0);
  ClusterShape c{2, 8, 9};
  PlannerOptions one;
  PlannerOptions many = one;
  many.num_threads = 4;
  int progress_calls = 0, last_done = 0;
  many.progress = [&](int done, int total) {
    ++progress_calls;
    EXPECT_EQ(total, 12);
    EXPECT_EQ(done, last_done + 1);  // serialised and counting up
    last_done = done;
  };
  absl::StatusOr<PlanResult> a = PlanPlacement(loads, c, one);
  absl::StatusOr<PlanResult> b = PlanPlacement(loads, c, many);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(progress_calls, 12);
  EXPECT_EQ(PlacementToYaml(a->placement), PlacementToYaml(b->placement));
}

TEST(PlannerTest, EvenSplitMayUseDuplicatesOnlyWhenTheyHelp) {
  // Mixtral zipf1.5 on 8 ranks x 2 slots: under an even split one rank
  // holding two replicas of an expert acts as a double share and balances
  // better than any duplicate-free plan with D'Hondt's counts.
  const ExpertLoadTrace t = testing::ReadFixtureTrace("mixtral8x7b_zipf1.5");
  absl::StatusOr<LoadMatrix> loads = TraceLoads(t, 0);
  ASSERT_TRUE(loads.ok());
  ClusterShape c{1, 8, 2};
  PlannerOptions even;
  even.split = ReplicaSplit::kEven;
  PlannerOptions weighted;
  absl::StatusOr<PlanResult> e = PlanPlacement(*loads, c, even);
  absl::StatusOr<PlanResult> w = PlanPlacement(*loads, c, weighted);
  ASSERT_TRUE(e.ok() && w.ok());
  EXPECT_FALSE(e->placement.HasUnevenShares());
  EXPECT_EQ(DuplicateReplicas(w->placement), 0);
  EXPECT_GT(DuplicateReplicas(e->placement), 0);
  // The weighted plan with its shares beats the even plan.
  EXPECT_LT(ScoreImbalance(w->placement, *loads, true).mean,
            ScoreImbalance(e->placement, *loads, false).mean);
  // And a duplicate-free even plan would be worse than what the even mode chose.
  for (int l = 0; l < t.num_layers; ++l) {
    const DomainPlacement strict = PackDomain(loads->Layer(l), 8, 8, 2, false);
    const std::vector<double> strict_loads = DomainRankLoads(loads->Layer(l), 8, strict);
    const std::vector<double> chosen = RankLoads(e->placement, l, loads->Layer(l), false);
    EXPECT_LE(*std::max_element(chosen.begin(), chosen.end()),
              *std::max_element(strict_loads.begin(), strict_loads.end()) + 1e-9);
  }
}

TEST(ReplicaSharesTest, MinimiseTheLargestRankLoad) {
  // Rank 0: A(6) + B(share); rank 1: B(share) + C(1); rank 2: C... hand-made.
  // Experts: 0 (w=6) on rank 0 only; 1 (w=6) on ranks 0 and 1; 2 (w=2) on rank 1.
  const std::vector<double> w = {6, 6, 2};
  const std::vector<int32_t> slot_expert = {0, 1, 1, 2};
  const std::vector<int32_t> slot_rank = {0, 0, 1, 1};
  const std::vector<double> shares = BalanceReplicaShares(w.data(), 3, 2, slot_expert, slot_rank);
  // Even split: rank 0 = 6 + 3 = 9, rank 1 = 3 + 2 = 5. Optimum: 7 and 7,
  // i.e. expert 1 sends 1/6 to rank 0 and 5/6 to rank 1.
  ASSERT_EQ(shares.size(), 4u);
  EXPECT_NEAR(shares[1], 1.0 / 6, 1e-6);
  EXPECT_NEAR(shares[2], 5.0 / 6, 1e-6);
  EXPECT_DOUBLE_EQ(shares[0], 1.0);
  EXPECT_DOUBLE_EQ(shares[3], 1.0);
}

TEST(PlannerTest, BadInputGivesClearErrors) {
  const LoadMatrix loads = RandomLoads(2, 16, 1, 1.0);
  struct Case {
    const char* what;
    ClusterShape cluster;
    int groups;
    PlacementMode mode;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"too few slots", {1, 4, 3}, 1, PlacementMode::kAuto, "12 expert slots"},
      {"zero ranks", {1, 0, 4}, 1, PlacementMode::kAuto, "at least one node"},
      {"groups do not divide experts",
       {1, 4, 4},
       3,
       PlacementMode::kAuto,
       "3 expert groups do not divide 16 experts"},
      {"hierarchical, nodes do not divide groups",
       {3, 2, 4},
       4,
       PlacementMode::kHierarchical,
       "number of nodes (3) must divide the number of groups (4)"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    PlannerOptions o;
    o.num_groups = c.groups;
    o.mode = c.mode;
    absl::StatusOr<PlanResult> plan = PlanPlacement(loads, c.cluster, o);
    ASSERT_FALSE(plan.ok());
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(plan.status().message()), HasSubstr(c.message));
  }
  LoadMatrix negative = loads;
  negative.values[5] = -1.0;
  absl::StatusOr<PlanResult> neg = PlanPlacement(negative, ClusterShape{1, 4, 4}, PlannerOptions{});
  ASSERT_FALSE(neg.ok());
  EXPECT_THAT(std::string(neg.status().message()), HasSubstr("layer 0 expert 5 is -1"));
  // A current placement of another shape.
  absl::StatusOr<ExpertPlacement> other = ExpertPlacement::Contiguous(2, 16, 8);
  ASSERT_TRUE(other.ok());
  absl::StatusOr<PlanResult> mismatch =
      PlanPlacement(loads, ClusterShape{1, 4, 4}, PlannerOptions{}, &*other);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_THAT(std::string(mismatch.status().message()),
              HasSubstr("the current placement has 2 layers x 16 experts on 8 ranks"));
  // Slots per rank from a redundancy that does not divide.
  absl::StatusOr<int> slots = SlotsPerRank(256, 30, 32);
  ASSERT_FALSE(slots.ok());
  EXPECT_THAT(std::string(slots.status().message()),
              HasSubstr("286 slots do not divide over 32 ranks; use 0 or 32 redundant experts"));
  EXPECT_EQ(*SlotsPerRank(256, 32, 32), 9);
  EXPECT_FALSE(ParsePlacementMode("local").ok());
  EXPECT_FALSE(ParseReplicaSplit("half").ok());
}

TEST(MemoryModelTest, TooLittleMemoryIsAClearError) {
  MemoryModel m;
  m.dense_bytes = 1000;
  m.expert_bytes = 10;
  EXPECT_EQ(RankWeightBytes(4, 3, m), 1120);
  EXPECT_TRUE(CheckMemoryFits(4, 3, m, 1120).ok());
  const absl::Status small = CheckMemoryFits(4, 3, m, 1119);
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(small.message()), HasSubstr("memory per rank is too small"));
  EXPECT_THAT(std::string(small.message()), HasSubstr("at most 2 slots per rank fit"));
  EXPECT_EQ(MaxSlotsPerRank(4, m, 999), 0);
}

}  // namespace
}  // namespace herd
