// Trimming end to end (seeds-methods.md §7.4): calibration scores a block
// that adds nothing to the residual stream as the most similar one, and a
// checkpoint written without it (block drop) gives the same logits; the same
// for an MoE sublayer whose output is zero (layer drop); and experts removed
// by expert drop are never routed to, in one process or across ranks.
#include <cmath>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "model/herd_checkpoint_writer.h"
#include "model/model_loader.h"
#include "model/synth.h"
#include "tests/support/test_support.h"
#include "worker/calibration.h"
#include "worker/engine.h"
#include "worker/fidelity.h"
#include "worker/kv_cache.h"

namespace herd {
namespace {

std::unique_ptr<Model> SmallModel(const testing::TempDir& dir) {
  SynthOptions o;
  o.num_layers = 3;
  o.hidden_size = 64;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.num_experts = 4;
  o.expert_ffn_size = 96;
  o.vocab_size = 128;
  o.seed = 4;
  EXPECT_TRUE(SynthesizeModel(o, dir.Join("m.gguf")).ok());
  auto loaded = LoadModel(dir.Join("m.gguf"));
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  return std::move(*loaded);
}

const std::vector<std::vector<int32_t>> kTokens = {{1, 5, 9, 33, 2, 100, 7, 64}, {3, 3, 3, 90, 12}};

TEST(TrimmingTest, AnIdentityBlockScoresHighestAndDroppingItChangesNothing) {
  testing::TempDir dir;
  std::unique_ptr<Model> owned = SmallModel(dir);
  Model& model = *owned;
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

  const std::vector<std::vector<int32_t>>& tokens = kTokens;
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

TEST(TrimmingTest, AnMoeSublayerWithZeroOutputScoresHighestAndLayerDropChangesNothing) {
  testing::TempDir dir;
  std::unique_ptr<Model> owned = SmallModel(dir);
  Model& model = *owned;
  const int64_t h = model.spec.hidden_size, ffn = model.spec.expert_ffn_size;
  model.owned_buffers.push_back(std::make_unique<float[]>(h * ffn));
  std::fill_n(model.owned_buffers.back().get(), h * ffn, 0.0f);
  for (ExpertFfnWeights& e : model.layers[2].experts) {
    e.down = TensorView(DType::kF32, {h, ffn}, model.owned_buffers.back().get());
  }
  auto calibration = Calibration::Run(model, kTokens, 1);
  ASSERT_TRUE(calibration.ok()) << calibration.status();
  EXPECT_NEAR(calibration->layer(2).moe_similarity, 1.0, 1e-6);
  for (int l : {0, 1}) EXPECT_LT(calibration->layer(l).moe_similarity, 0.9999) << l;

  HerdCheckpointOptions options;
  options.drop_moe_layers = {2};
  const absl::Status written = WriteHerdCheckpoint(model, options, dir.Join("no-moe-2"));
  ASSERT_TRUE(written.ok()) << written;
  auto dropped = LoadModel(dir.Join("no-moe-2"));
  ASSERT_TRUE(dropped.ok()) << dropped.status();
  EXPECT_TRUE((*dropped)->layers[2].moe_dropped);
  EXPECT_TRUE((*dropped)->layers[2].router.empty());
  EXPECT_EQ((*dropped)->spec.num_layers, 3);  // attention stays
  auto full = SequenceLogits(model, kTokens, 1);
  auto trimmed = SequenceLogits(**dropped, kTokens, 1);
  ASSERT_TRUE(full.ok() && trimmed.ok());
  const FidelityResult same = CompareLogits(*full, *trimmed, model.spec.vocab_size);
  EXPECT_LT(same.mean_kl, 1e-10);
  EXPECT_LT(same.logits_relative_error, 1e-5);
}

TEST(TrimmingTest, DroppedExpertsAreNeverRoutedToAndTheirWeightsAreGone) {
  testing::TempDir dir;
  std::unique_ptr<Model> model = SmallModel(dir);
  HerdCheckpointOptions options;
  options.drop_experts = {{0, {1}}, {2, {0, 3}}};
  ASSERT_TRUE(WriteHerdCheckpoint(*model, options, dir.Join("fewer")).ok());
  auto trimmed = LoadModel(dir.Join("fewer"));
  ASSERT_TRUE(trimmed.ok()) << trimmed.status();
  EXPECT_FALSE((*trimmed)->layers[0].experts[1].resident());
  EXPECT_TRUE((*trimmed)->layers[0].experts[0].resident());
  EXPECT_FALSE((*trimmed)->layers[2].ExpertExists(3));
  EXPECT_TRUE((*trimmed)->layers[1].ExpertExists(1));

  EngineOptions engine_options;
  engine_options.num_threads = 1;
  auto engine = Engine::Create(**trimmed, engine_options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  int64_t routed = 0;
  (*engine)->SetRoutingObserver(
      [&](int layer, int64_t tokens, int64_t top_k, const int32_t* idx, const float* weights) {
        for (int64_t i = 0; i < tokens * top_k; ++i) {
          EXPECT_TRUE((*trimmed)->layers[layer].ExpertExists(idx[i]))
              << "layer " << layer << " routed to dropped expert " << idx[i];
          EXPECT_GT(weights[i], 0.0f);
          ++routed;
        }
      });
  auto cache = KvCache::Create((*trimmed)->spec, 4, 16);
  ASSERT_TRUE(cache.ok());
  const std::vector<int32_t> table = {0, 1, 2, 3};
  Batch batch;
  batch.cache = cache->get();
  batch.token_ids = kTokens[0];
  batch.chunks = {{table, 0, static_cast<int64_t>(kTokens[0].size())}};
  batch.logit_rows = {0};
  std::vector<float> logits((*trimmed)->spec.vocab_size);
  ASSERT_TRUE((*engine)->Forward(batch, logits.data()).ok());
  EXPECT_EQ(routed, 3 * 8 * 2);  // layers x tokens x top-k

  // Keeping fewer than top-k experts in a layer is refused.
  options.drop_experts = {{1, {0, 1, 2}}};
  EXPECT_EQ(WriteHerdCheckpoint(*model, options, dir.Join("too-few")).code(),
            absl::StatusCode::kInvalidArgument);
}

// "Dropping an expert the router never picks leaves outputs unchanged": on
// the llama.cpp fixture (Mixtral routing, top-k renormalised), find an
// expert no token of a short sequence is routed to, drop it, and get the
// same logits for that sequence.
TEST(TrimmingTest, DroppingAnExpertTheRouterNeverPicksLeavesOutputsUnchanged) {
  testing::TempDir dir;
  auto model = LoadModel(testing::TestDataPath("llamacpp-tiny/tiny-f32.gguf"));
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<std::vector<int32_t>> tokens = {{1, 17, 42, 0, 511}};
  EngineOptions engine_options;
  engine_options.num_threads = 1;
  auto engine = Engine::Create(**model, engine_options);
  ASSERT_TRUE(engine.ok());
  std::vector<std::vector<bool>> picked((*model)->spec.num_layers,
                                        std::vector<bool>((*model)->spec.num_experts, false));
  (*engine)->SetRoutingObserver(
      [&](int layer, int64_t n, int64_t top_k, const int32_t* idx, const float*) {
        for (int64_t i = 0; i < n * top_k; ++i) picked[layer][idx[i]] = true;
      });
  auto cache = KvCache::Create((*model)->spec, 1, 16);
  ASSERT_TRUE(cache.ok());
  const std::vector<int32_t> table = {0};
  Batch batch;
  batch.cache = cache->get();
  batch.token_ids = tokens[0];
  batch.chunks = {{table, 0, 5}};
  batch.logit_rows = {4};
  std::vector<float> logits((*model)->spec.vocab_size);
  ASSERT_TRUE((*engine)->Forward(batch, logits.data()).ok());
  HerdCheckpointOptions options;
  for (int l = 0; l < static_cast<int>(picked.size()); ++l) {
    for (int e = 0; e < static_cast<int>(picked[l].size()); ++e) {
      if (!picked[l][e]) options.drop_experts[l].push_back(e);
    }
  }
  ASSERT_FALSE(options.drop_experts.empty()) << "every expert was picked; use fewer tokens";
  ASSERT_TRUE(WriteHerdCheckpoint(**model, options, dir.Join("unpicked")).ok());
  auto trimmed = LoadModel(dir.Join("unpicked"));
  ASSERT_TRUE(trimmed.ok()) << trimmed.status();
  auto before = SequenceLogits(**model, tokens, 1);
  auto after = SequenceLogits(**trimmed, tokens, 1);
  ASSERT_TRUE(before.ok() && after.ok());
  const FidelityResult same = CompareLogits(*before, *after, (*model)->spec.vocab_size);
  EXPECT_LT(same.logits_relative_error, 1e-6);
  EXPECT_EQ(same.top1_agreement, 1.0);
}

}  // namespace
}  // namespace herd
