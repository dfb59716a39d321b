// model/bit_allocation: rule strings, average-bits accounting, the outlier
// score by hand, and the budget solver.
#include "model/bit_allocation.h"

#include <vector>

#include "gtest/gtest.h"
#include "model/model_loader.h"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using testing::TestDataPath;

std::vector<BitUnit> FixtureUnits() {
  auto model = LoadModel(TestDataPath("llamacpp-tiny/tiny-f32.gguf"));
  EXPECT_TRUE(model.ok()) << model.status();
  return WeightUnits(**model);
}

int BitsOf(const std::vector<BitUnit>& units, const std::string& name) {
  for (const BitUnit& u : units) {
    if (u.name == name) return u.bits;
  }
  ADD_FAILURE() << "no unit " << name;
  return -1;
}

TEST(BitAllocationTest, UnitsNameEveryQuantizableMatrixAtSixteenBits) {
  const std::vector<BitUnit> units = FixtureUnits();
  // 2 layers x (4 attention + 8 experts x 3) + embedding + lm head.
  EXPECT_EQ(units.size(), 2u * (4 + 8 * 3) + 2);
  for (const BitUnit& u : units) EXPECT_EQ(u.bits, 16) << u.name;
  EXPECT_EQ(AverageBits(units), 16.0);
  EXPECT_EQ(QuantizedAverageBits(units), 0.0);  // nothing quantized yet
}

TEST(BitAllocationTest, LaterRulesOverrideEarlierOnes) {
  std::vector<BitUnit> units = FixtureUnits();
  ASSERT_TRUE(ApplyBitRules("main_2,attn_4,layer_1_3,exp_l0e5_8,keyword__w2__4", &units).ok());
  EXPECT_EQ(BitsOf(units, "model.layers.0.block_sparse_moe.experts.0.w1.weight"), 2);
  EXPECT_EQ(BitsOf(units, "model.layers.1.block_sparse_moe.experts.0.w1.weight"), 3);
  EXPECT_EQ(BitsOf(units, "model.layers.0.block_sparse_moe.experts.5.w3.weight"), 8);
  EXPECT_EQ(BitsOf(units, "model.layers.0.block_sparse_moe.experts.5.w2.weight"),
            4);  // keyword last
  EXPECT_EQ(BitsOf(units, "model.layers.1.self_attn.o_proj.weight"), 4);
  EXPECT_EQ(BitsOf(units, "model.embed_tokens.weight"), 16);
}

TEST(BitAllocationTest, AverageBitsWeighsByValues) {
  std::vector<BitUnit> units = {{"a", ModuleKind::kExperts, 0, 0, 300, 2},
                                {"b", ModuleKind::kExperts, 0, 1, 100, 4},
                                {"c", ModuleKind::kAttention, 0, -1, 100, 16}};
  EXPECT_DOUBLE_EQ(QuantizedAverageBits(units), (2.0 * 300 + 4.0 * 100) / 400);
  EXPECT_DOUBLE_EQ(AverageBits(units), (2.0 * 300 + 4.0 * 100 + 16.0 * 100) / 500);
  // The average is 2.5: a target of 2.5 raises nothing; 3 passes over "b"
  // (already at 4) and raises "a", which lifts the average to 4.
  EXPECT_EQ(RaiseUntilAverage({1, 0}, 4, 2.5, &units), 0);
  EXPECT_EQ(RaiseUntilAverage({1, 0}, 4, 3.0, &units), 1);
  EXPECT_EQ(units[0].bits, 4);
  EXPECT_EQ(RaiseUntilAverage({0, 1}, 4, 8.0, &units), 0);  // nothing left below 4
}

TEST(BitAllocationTest, OutlierScoreIsTheWorstColumnsMaxOverMean) {
  // Column 0: |w| = 1, 1, 1, 1 -> 1. Column 1: 0, 0, 0, 8 -> 8 / 2 = 4.
  const std::vector<float> w = {1, 0, -1, 0, 1, 0, -1, 8};
  const TensorView view(DType::kF32, {4, 2}, w.data());
  EXPECT_DOUBLE_EQ(OutlierScore(view), 4.0);
}

TEST(BitAllocationTest, BadRulesSayWhich) {
  std::vector<BitUnit> units = FixtureUnits();
  for (const char* bad : {"main_5", "main", "attn_four", "layer_9_4", "exp_l0e99_4", "mlp_4"}) {
    const absl::Status status = ApplyBitRules(bad, &units);
    ASSERT_FALSE(status.ok()) << bad;
    EXPECT_NE(status.message().find(bad), std::string::npos) << status;
  }
}

}  // namespace
}  // namespace herd
