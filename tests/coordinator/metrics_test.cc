// Scores of placements: rank and node loads, imbalance, moved and duplicate
// replicas, dispatch traffic, and the SVG heatmap.
#include "coordinator/placement/metrics.h"

#include <string>

#include "coordinator/placement/heatmap_svg.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace herd {
namespace {

using ::testing::HasSubstr;

ExpertPlacement Make(int experts, int ranks, int nodes,
                     const std::vector<std::vector<std::vector<int32_t>>>& layers,
                     const std::vector<std::vector<std::vector<double>>>& shares = {}) {
  std::vector<LayerPlacementSpec> specs;
  for (size_t l = 0; l < layers.size(); ++l) {
    specs.push_back(LayerPlacementSpec::FromRanks(
        layers[l], shares.empty() ? std::vector<std::vector<double>>{} : shares[l]));
  }
  absl::StatusOr<ExpertPlacement> p = ExpertPlacement::Create(experts, ranks, nodes, specs);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

TEST(MetricsTest, RankLoadsEvenAndWithShares) {
  // Expert 0 (load 8) on ranks 0 and 1 with shares 1/4 and 3/4; expert 1 (4) on rank 0.
  const ExpertPlacement p = Make(2, 2, 1, {{{0, 1}, {0}}}, {{{0.25, 1}, {0.75}}});
  const double w[] = {8, 4};
  EXPECT_EQ(RankLoads(p, 0, w, false), (std::vector<double>{8, 4}));
  EXPECT_EQ(RankLoads(p, 0, w, true), (std::vector<double>{6, 6}));
  EXPECT_DOUBLE_EQ(Imbalance({8, 4}), 8.0 / 6.0);
  EXPECT_DOUBLE_EQ(Imbalance({0, 0}), 1.0);
  LoadMatrix m{1, 2, {8, 4}};
  EXPECT_DOUBLE_EQ(ScoreImbalance(p, m, true).mean, 1.0);
  EXPECT_DOUBLE_EQ(ScoreImbalance(p, m, false).max, 8.0 / 6.0);
}

TEST(MetricsTest, NodeLoadsAndDuplicates) {
  const ExpertPlacement p = Make(3, 4, 2, {{{0, 0}, {1}, {2}, {2}}});
  const double w[] = {2, 3, 4};
  EXPECT_EQ(NodeLoads(p, 0, w, false), (std::vector<double>{5, 4}));
  EXPECT_EQ(DuplicateReplicas(p), 1);
}

TEST(MetricsTest, MovedReplicasAreAMultisetDifferencePerRank) {
  const ExpertPlacement from = Make(4, 2, 1, {{{0, 1, 1}, {2, 3, 3}}});
  // Rank 0 keeps 0 and one 1, gains 2; rank 1 keeps 2, 3, 3 reordered.
  const ExpertPlacement to = Make(4, 2, 1, {{{1, 2, 0}, {3, 2, 3}}});
  const MovedReplicas m = CountMovedReplicas(from, to);
  EXPECT_EQ(m.moved, 1);
  EXPECT_EQ(m.total, 6);
  EXPECT_DOUBLE_EQ(m.fraction(), 1.0 / 6.0);
  EXPECT_EQ(CountMovedReplicas(to, to).moved, 0);
}

TEST(MetricsTest, DispatchTrafficByHand) {
  // 100 tokens; expert 0 picked by half of them, expert 1 by all of them.
  LoadMatrix m{1, 2, {50, 100}};
  // Two nodes of one rank: every needed rank is a remote node for half the
  // sources: (0.5 + 1) * 1/2 = 0.75 network copies, no NVLink copies.
  const ExpertPlacement two_nodes = Make(2, 2, 2, {{{0}, {1}}});
  DispatchTraffic t = EstimateDispatchTraffic(two_nodes, m, 100, 0);
  EXPECT_NEAR(t.inter_node_copies_per_token, 0.75, 1e-9);
  EXPECT_NEAR(t.intra_node_copies_per_token, 0.0, 1e-12);
  // One node of two ranks: the same copies go over NVLink.
  const ExpertPlacement one_node = Make(2, 2, 1, {{{0}, {1}}});
  t = EstimateDispatchTraffic(one_node, m, 100, 0);
  EXPECT_NEAR(t.intra_node_copies_per_token, 0.75, 1e-9);
  EXPECT_NEAR(t.inter_node_copies_per_token, 0.0, 1e-12);
  // Without a token count, top_k gives it: 150 / 2 = 75 tokens.
  t = EstimateDispatchTraffic(one_node, m, 0, 2);
  EXPECT_NEAR(t.intra_node_copies_per_token, (50.0 / 75 + 1.0) / 2, 1e-9);
  // Both experts on one rank of a node: a token needs that rank with
  // probability 1 - (1 - 0.5)(1 - 1) = 1 (deduplicated per rank).
  const ExpertPlacement together = Make(2, 2, 2, {{{0, 1}, {}}});
  t = EstimateDispatchTraffic(together, m, 100, 0);
  EXPECT_NEAR(t.inter_node_copies_per_token, 0.5, 1e-9);
}

TEST(HeatmapSvgTest, OneCellPerRankAndLayerInEachPanel) {
  HeatmapPanel before{"before <x>", 3, 4, std::vector<double>(12, 1.0)};
  HeatmapPanel after{"after", 3, 4, {0, 0.5, 1, 2, 3, 1, 1, 1, 1, 1, 1, 1}};
  const std::string svg = LoadHeatmapSvg("title & co", {before, after});
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_THAT(svg, HasSubstr("</svg>"));
  EXPECT_THAT(svg, HasSubstr("title &amp; co"));
  EXPECT_THAT(svg, HasSubstr("before &lt;x&gt;"));
  size_t cells = 0;
  for (size_t pos = svg.find("<rect x="); pos != std::string::npos;
       pos = svg.find("<rect x=", pos + 1)) {
    ++cells;
  }
  // 2 panels x 12 cells, 2 frames, 60 legend steps.
  EXPECT_EQ(cells, 24u + 2u + 60u);
  // White at the mean, red above, blue below.
  EXPECT_THAT(svg, HasSubstr("fill=\"#ffffff\""));
  EXPECT_THAT(svg, HasSubstr("fill=\"#d7191c\""));  // 3.0 is the top of the scale
  EXPECT_THAT(svg, HasSubstr("fill=\"#2c7bb6\""));  // 0.0
}

}  // namespace
}  // namespace herd
