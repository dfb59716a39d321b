// Block drop end to end: calibration scores a block that adds nothing to the
// residual stream (its attention output and its experts' outputs are zero)
// as the most similar one, and a checkpoint written without it gives the
// same logits as the full model.
#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "model/herd_checkpoint_writer.h"
#include "model/model_loader.h"
#include "model/synth.h"
#include "tests/support/test_support.h"
#include "worker/calibration.h"
#include "worker/fidelity.h"

namespace herd {
namespace {

TEST(BlockDropTest, AnIdentityBlockScoresHighestAndDroppingItChangesNothing) {
  testing::TempDir dir;
  SynthOptions o;
  o.num_layers = 3;
  o.hidden_size = 64;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.num_experts = 4;
  o.expert_ffn_size = 96;
  o.vocab_size = 128;
  o.seed = 4;
  ASSERT_TRUE(SynthesizeModel(o, dir.Join("m.gguf")).ok());
  auto loaded = LoadModel(dir.Join("m.gguf"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  Model& model = **loaded;
  // Block 1 becomes an identity: o_proj and every expert's down projection are zero.
  const int64_t h = model.spec.hidden_size;
  const int64_t q_dim = model.spec.num_heads * model.spec.head_dim;
  const int64_t ffn = model.spec.expert_ffn_size;
  model.owned_buffers.push_back(std::make_unique<float[]>(h * std::max(q_dim, ffn)));
  const float* zeros = model.owned_buffers.back().get();
  std::fill_n(model.owned_buffers.back().get(), h * std::max(q_dim, ffn), 0.0f);
  model.layers[1].o.weight = TensorView(DType::kF32, {h, q_dim}, zeros);
  for (ExpertFfnWeights& e : model.layers[1].experts) {
    e.down = TensorView(DType::kF32, {h, ffn}, zeros);
  }

  const std::vector<std::vector<int32_t>> tokens = {{1, 5, 9, 33, 2, 100, 7, 64},
                                                    {3, 3, 3, 90, 12}};
  auto calibration = Calibration::Run(model, tokens, 1);
  ASSERT_TRUE(calibration.ok()) << calibration.status();
  EXPECT_NEAR(calibration->layer(1).block_similarity, 1.0, 1e-6);
  EXPECT_NEAR(calibration->layer(1).moe_similarity, 1.0, 1e-6);
  for (int l : {0, 2}) EXPECT_LT(calibration->layer(l).block_similarity, 0.9999) << l;
  EXPECT_NEAR(calibration->SpanSimilarity(1, 2), calibration->layer(1).block_similarity, 1e-12);

  HerdCheckpointOptions options;
  options.drop_blocks = {1};
  ASSERT_TRUE(WriteHerdCheckpoint(model, options, dir.Join("dropped")).ok());
  auto dropped = LoadModel(dir.Join("dropped"));
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_EQ((*dropped)->spec.num_layers, 2);
  auto full_logits = SequenceLogits(model, tokens, 1);
  auto dropped_logits = SequenceLogits(**dropped, tokens, 1);
  ASSERT_TRUE(full_logits.ok() && dropped_logits.ok());
  const FidelityResult same = CompareLogits(*full_logits, *dropped_logits, model.spec.vocab_size);
  EXPECT_EQ(same.positions, 13);
  EXPECT_LT(same.mean_kl, 1e-10);
  EXPECT_EQ(same.top1_agreement, 1.0);
  EXPECT_LT(same.logits_relative_error, 1e-5);

  // Dropping a block that does something is visible, and bad requests are errors.
  options.drop_blocks = {0};
  ASSERT_TRUE(WriteHerdCheckpoint(model, options, dir.Join("lossy")).ok());
  auto lossy = LoadModel(dir.Join("lossy"));
  ASSERT_TRUE(lossy.ok());
  auto lossy_logits = SequenceLogits(**lossy, tokens, 1);
  ASSERT_TRUE(lossy_logits.ok());
  EXPECT_GT(CompareLogits(*full_logits, *lossy_logits, model.spec.vocab_size).mean_kl, 1e-6);
  for (const std::vector<int>& bad : {std::vector<int>{3}, {1, 1}, {0, 1, 2}}) {
    options.drop_blocks = bad;
    EXPECT_EQ(WriteHerdCheckpoint(model, options, dir.Join("bad")).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace herd
