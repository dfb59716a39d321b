// core/placement: the placement type the planner writes and the expert-parallel
// runtime loads. Validation, file round trips, the contiguous default and the
// deterministic replica picker.
#include "core/placement.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::testing::HasSubstr;

LayerPlacementSpec Ranks(const std::vector<std::vector<int32_t>>& ranks,
                         const std::vector<std::vector<double>>& shares = {}) {
  return LayerPlacementSpec::FromRanks(ranks, shares);
}

// 8 experts on 4 ranks, experts 7 and 6 replicated, uneven shares for 7.
ExpertPlacement Example() {
  absl::StatusOr<ExpertPlacement> p = ExpertPlacement::Create(
      8, 4, 2,
      {Ranks({{0, 1, 7}, {2, 3, 7}, {4, 5, 6}, {6, 0, 1}},
             {{0.5, 0.5, 0.25}, {1, 1, 0.75}, {1, 1, 0.5}, {0.5, 0.5, 0.5}}),
       Ranks({{0, 1}, {2, 3}, {4, 5}, {6, 7}})});
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

TEST(ExpertPlacementTest, IndexesSlotsRanksAndReplicas) {
  const ExpertPlacement p = Example();
  EXPECT_EQ(p.num_layers(), 2);
  EXPECT_EQ(p.num_experts(), 8);
  EXPECT_EQ(p.num_ranks(), 4);
  EXPECT_EQ(p.num_nodes(), 2);
  EXPECT_EQ(p.ranks_per_node(), 2);
  EXPECT_EQ(p.NodeOfRank(3), 1);
  EXPECT_EQ(p.NumSlots(0), 12);
  EXPECT_EQ(p.NumSlots(1), 8);
  EXPECT_EQ(p.UniformSlotsPerRank(), -1);  // 3 per rank in layer 0, 2 in layer 1
  EXPECT_EQ(p.RankSlotBegin(0, 2), 6);
  EXPECT_EQ(p.SlotExpert(0, 8), 6);
  EXPECT_EQ(p.SlotRank(0, 8), 2);
  const std::vector<int32_t> slots_of_7(p.ReplicaSlots(0, 7).begin(), p.ReplicaSlots(0, 7).end());
  EXPECT_EQ(slots_of_7, (std::vector<int32_t>{2, 5}));
  EXPECT_EQ(p.NumReplicas(0, 0), 2);
  EXPECT_EQ(p.NumReplicas(1, 0), 1);
  EXPECT_DOUBLE_EQ(p.SlotShare(0, 2), 0.25);
  EXPECT_DOUBLE_EQ(p.SlotShare(0, 5), 0.75);
  EXPECT_DOUBLE_EQ(p.SlotShare(1, 0), 1.0);
  EXPECT_TRUE(p.HasUnevenShares());
  const std::vector<int32_t> rank3(p.RankExperts(0, 3).begin(), p.RankExperts(0, 3).end());
  EXPECT_EQ(rank3, (std::vector<int32_t>{6, 0, 1}));
}

TEST(ExpertPlacementTest, EvenSharesByDefault) {
  absl::StatusOr<ExpertPlacement> p =
      ExpertPlacement::Create(3, 2, 1, {Ranks({{0, 1, 2}, {0, 2, 2}})});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_DOUBLE_EQ(p->SlotShare(0, 0), 0.5);
  EXPECT_DOUBLE_EQ(p->SlotShare(0, 1), 1.0);
  EXPECT_DOUBLE_EQ(p->SlotShare(0, 2), 1.0 / 3);
  EXPECT_FALSE(p->HasUnevenShares());
  EXPECT_EQ(p->UniformSlotsPerRank(), 3);
}

TEST(ExpertPlacementTest, ContiguousSplitsBlocksOfExperts) {
  absl::StatusOr<ExpertPlacement> p = ExpertPlacement::Contiguous(3, 8, 4);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_layers(), 3);
  for (int l = 0; l < 3; ++l) {
    for (int r = 0; r < 4; ++r) {
      const std::vector<int32_t> got(p->RankExperts(l, r).begin(), p->RankExperts(l, r).end());
      EXPECT_EQ(got, (std::vector<int32_t>{2 * r, 2 * r + 1}));
    }
  }
  // Uneven: 8 experts on 3 ranks; more ranks than experts leaves ranks empty.
  absl::StatusOr<ExpertPlacement> uneven = ExpertPlacement::Contiguous(1, 8, 3);
  ASSERT_TRUE(uneven.ok());
  EXPECT_EQ(uneven->RankSlotEnd(0, 0) + (uneven->RankSlotEnd(0, 1) - uneven->RankSlotBegin(0, 1)) +
                (uneven->RankSlotEnd(0, 2) - uneven->RankSlotBegin(0, 2)),
            8);
  absl::StatusOr<ExpertPlacement> sparse = ExpertPlacement::Contiguous(1, 4, 6);
  ASSERT_TRUE(sparse.ok());
  int empty = 0;
  for (int r = 0; r < 6; ++r) empty += sparse->RankExperts(0, r).empty();
  EXPECT_EQ(empty, 2);
  EXPECT_FALSE(ExpertPlacement::Contiguous(0, 8, 4).ok());
  EXPECT_FALSE(ExpertPlacement::Contiguous(1, 8, 4, 3).ok());  // 3 nodes do not divide 4 ranks
}

TEST(ExpertPlacementTest, RejectsInvalidPlacementsWithClearErrors) {
  struct Case {
    const char* what;
    int num_experts, num_ranks, num_nodes;
    std::vector<LayerPlacementSpec> layers;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"expert out of range", 4, 2, 1, {Ranks({{0, 1}, {2, 4}})}, "expert id 4 is outside [0, 4)"},
      {"negative expert", 4, 2, 1, {Ranks({{0, 1}, {2, -1}})}, "expert id -1"},
      {"missing expert", 4, 2, 1, {Ranks({{0, 1}, {2, 2}})}, "expert 3 has no replica"},
      {"wrong rank count",
       4,
       3,
       1,
       {Ranks({{0, 1}, {2, 3}})},
       "has 2 ranks, expected num_ranks = 3"},
      {"nodes do not divide", 4, 2, 3, {Ranks({{0, 1}, {2, 3}})}, "num_nodes (3)"},
      {"shares do not sum to 1",
       3,
       2,
       1,
       {Ranks({{0, 1}, {2, 0}}, {{0.5, 1}, {1, 0.4}})},
       "expert 0's 2 replicas sum to 0.9"},
      {"negative share", 3, 2, 1, {Ranks({{0, 1}, {2, 0}}, {{1.5, 1}, {1, -0.5}})}, "must be >= 0"},
      {"share shape", 3, 2, 1, {Ranks({{0, 1}, {2}}, {{1, 1}, {1, 0}})}, "3 slots"},
      {"no layers", 3, 2, 1, {}, "at least one layer"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    absl::StatusOr<ExpertPlacement> p =
        ExpertPlacement::Create(c.num_experts, c.num_ranks, c.num_nodes, c.layers);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(p.status().message()), HasSubstr(c.message));
  }
}

TEST(ExpertPlacementTest, YamlAndJsonRoundTrip) {
  ExpertPlacement p = Example();
  p.set_metadata({{"created_by", "test"}, {"note", "quote \" and colon: ok"}});
  testing::TempDir dir;
  for (const char* name : {"p.yaml", "p.json"}) {
    SCOPED_TRACE(name);
    const std::string path = dir.Join(name);
    ASSERT_TRUE(WritePlacementFile(p, path).ok());
    absl::StatusOr<ExpertPlacement> back = ReadPlacementFile(path);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_EQ(back->num_layers(), p.num_layers());
    EXPECT_EQ(back->num_nodes(), 2);
    EXPECT_EQ(back->metadata(), p.metadata());
    for (int l = 0; l < p.num_layers(); ++l) {
      ASSERT_EQ(back->NumSlots(l), p.NumSlots(l));
      for (int s = 0; s < p.NumSlots(l); ++s) {
        EXPECT_EQ(back->SlotExpert(l, s), p.SlotExpert(l, s));
        EXPECT_EQ(back->SlotRank(l, s), p.SlotRank(l, s));
        EXPECT_NEAR(back->SlotShare(l, s), p.SlotShare(l, s), 1e-9);
      }
    }
  }
  // Even splits are written without shares.
  absl::StatusOr<ExpertPlacement> even = ExpertPlacement::Contiguous(1, 4, 2);
  ASSERT_TRUE(even.ok());
  EXPECT_EQ(PlacementToYaml(*even).find("    shares:"), std::string::npos);
  EXPECT_NE(PlacementToYaml(p).find("    shares:"), std::string::npos);
}

TEST(ExpertPlacementTest, ParseErrorsNameTheProblem) {
  struct Case {
    const char* text;
    const char* message;
  };
  const char* kLayer = "layers:\n  - ranks: [[0, 1], [2, 3]]\n";
  const std::vector<Case> cases = {
      {"format: herd-placement/v1\nnum_experts: 4\nnum_ranks: 2\n", "missing key 'layers'"},
      {"format: other/v9\nnum_experts: 4\nnum_ranks: 2\nlayers: []\n",
       "expected 'herd-placement/v1'"},
      {"format: herd-placement/v1\nnum_experts: four\nnum_ranks: 2\nlayers: []\n",
       "'num_experts' has the wrong type"},
      {"format: herd-placement/v1\nnum_experts: 4\nnum_ranks: 2\nnum_rank: 2\nlayers: []\n",
       "unknown key 'num_rank'"},
      {"format: herd-placement/v1\nnum_experts: 4\nnum_ranks: 2\nnum_layers: 2\nlayers:\n"
       "  - ranks: [[0, 1], [2, 3]]\n",
       "num_layers is 2 but 'layers' has 1"},
      {"format: herd-placement/v1\nnum_experts: 4\nnum_ranks: 2\nlayers:\n  - ranks: [[0, x], [2, "
       "3]]\n",
       "ranks[0][1]"},
      {"format: herd-placement/v1\nnum_experts: 4\nnum_ranks: 2\nlayers:\n  - rank: [[0, 1], [2, "
       "3]]\n",
       "unknown key 'rank'"},
      {"format: herd-placement/v1\nnum_experts: 4\nnum_ranks: 2\nlayers:\n"
       "  - ranks: [[0, 1], [2, 3]]\n    shares: [[1, 1], [1]]\n",
       "shares of rank 1 has 1 entries for 2 experts"},
      {"format: herd-placement/v1\nnum_experts: 4\nnum_ranks: 2\nlayers:\n  - layer: 3\n"
       "    ranks: [[0, 1], [2, 3]]\n",
       "layers must be listed in order"},
      {"format: herd-placement/v1\nnum_experts: 4\nnum_ranks: 2\nlayers: [\n", "invalid YAML/JSON"},
      {"", "empty placement file"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    absl::StatusOr<ExpertPlacement> p = ParsePlacement(c.text, "test.yaml");
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(p.status().message()), HasSubstr("test.yaml"));
    EXPECT_THAT(std::string(p.status().message()), HasSubstr(c.message));
  }
  const std::string ok =
      std::string("format: herd-placement/v1\nnum_experts: 4\nnum_ranks: 2\n") + kLayer;
  EXPECT_TRUE(ParsePlacement(ok, "ok.yaml").ok());
  EXPECT_EQ(ReadPlacementFile("/nonexistent/placement.yaml").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ExpertPlacementTest, PickReplicaIsDeterministicAndHonoursShares) {
  const ExpertPlacement p = Example();
  // Expert 7 of layer 0: slot 2 (rank 0) gets 25%, slot 5 (rank 1) 75%.
  for (uint64_t start : {uint64_t{0}, uint64_t{123456789}, uint64_t{1} << 40}) {
    SCOPED_TRACE(start);
    std::map<int, int> count;
    const int n = 10000;
    for (uint64_t t = start; t < start + n; ++t) {
      const int slot = p.PickReplicaSlot(0, 7, t);
      ASSERT_EQ(slot, p.PickReplicaSlot(0, 7, t));  // same input, same answer
      ++count[slot];
    }
    ASSERT_EQ(count.size(), 2u);
    // A Weyl sequence spreads any run of consecutive tokens almost exactly.
    EXPECT_NEAR(count[2], 0.25 * n, 3);
    EXPECT_NEAR(count[5], 0.75 * n, 3);
    EXPECT_EQ(p.PickReplicaRank(0, 7, start), p.SlotRank(0, p.PickReplicaSlot(0, 7, start)));
  }
  // Even split over three replicas, and a single replica always wins.
  absl::StatusOr<ExpertPlacement> three =
      ExpertPlacement::Create(2, 3, 1, {Ranks({{0, 1}, {0}, {0}})});
  ASSERT_TRUE(three.ok());
  std::map<int, int> count;
  for (uint64_t t = 0; t < 3000; ++t) ++count[three->PickReplicaRank(0, 0, t)];
  for (int r = 0; r < 3; ++r) EXPECT_NEAR(count[r], 1000, 3) << "rank " << r;
  for (uint64_t t = 0; t < 100; ++t) EXPECT_EQ(three->PickReplicaSlot(0, 1, t), 1);
  // A zero share is never picked.
  absl::StatusOr<ExpertPlacement> zero =
      ExpertPlacement::Create(1, 2, 1, {Ranks({{0}, {0}}, {{0}, {1}})});
  ASSERT_TRUE(zero.ok());
  for (uint64_t t = 0; t < 1000; ++t) EXPECT_EQ(zero->PickReplicaRank(0, 0, t), 1);
}

}  // namespace
}  // namespace herd
