// Dynamic expert skipping (NAEE, seeds-methods.md §7.5 D1) end to end:
// calibration's threshold is the median of w2/w1; a threshold of 1 runs only
// each token's top expert, exactly like top-1 routing with renormalisation;
// skipped calls are counted and reach routing observers as expert -1; turning
// skipping off restores the unskipped model bit for bit; thresholds survive
// a checkpoint round trip (block drop renumbering included), and bad ones
// are refused.
#include <algorithm>
#include <fstream>
#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "model/herd_checkpoint_writer.h"
#include "model/model_loader.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"
#include "worker/calibration.h"
#include "worker/engine.h"
#include "worker/fidelity.h"
#include "worker/kv_cache.h"

namespace herd {
namespace {

const std::vector<std::vector<int32_t>> kTokens = {{1, 17, 42, 0, 511, 300, 7, 64},
                                                   {3, 3, 90, 12, 200}};
constexpr int64_t kNumTokens = 13;

std::unique_ptr<Model> Fixture() {
  // Mixtral routing: softmax, top-2, renormalised.
  auto model = LoadModel(testing::TestDataPath("llamacpp-tiny/tiny-f32.gguf"));
  EXPECT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->spec.num_experts_per_token, 2);
  EXPECT_TRUE((*model)->spec.norm_topk_prob);
  return std::move(*model);
}

void SetThreshold(Model& model, float beta) {
  for (LayerWeights& w : model.layers) w.expert_skip_threshold = beta;
}

// kTokens through `engine` (with its observers), one prefill per sequence:
// the logits of every position.
std::vector<float> RunSequences(Engine& engine, const ModelSpec& spec) {
  auto cache = KvCache::Create(spec, 1, 16);
  EXPECT_TRUE(cache.ok());
  const std::vector<int32_t> table = {0};
  std::vector<float> logits;
  for (const auto& tokens : kTokens) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    Batch batch;
    batch.cache = cache->get();
    batch.token_ids = tokens;
    batch.chunks = {{table, 0, n}};
    for (int64_t i = 0; i < n; ++i) batch.logit_rows.push_back(i);
    const size_t offset = logits.size();
    logits.resize(offset + n * spec.vocab_size);
    EXPECT_TRUE(engine.Forward(batch, logits.data() + offset).ok());
  }
  return logits;
}

TEST(ExpertSkippingTest, CalibratedThresholdIsTheMedianOfSecondOverFirstWeight) {
  std::unique_ptr<Model> model = Fixture();
  EngineOptions options;
  options.num_threads = 1;
  auto engine = Engine::Create(*model, options);
  ASSERT_TRUE(engine.ok());
  std::vector<std::vector<float>> ratios(model->spec.num_layers);
  (*engine)->SetRoutingObserver(
      [&](int layer, int64_t n, int64_t top_k, const int32_t*, const float* w) {
        for (int64_t t = 0; t < n; ++t) ratios[layer].push_back(w[t * top_k + 1] / w[t * top_k]);
      });
  RunSequences(**engine, model->spec);
  auto calibration = Calibration::Run(*model, kTokens, 1);
  ASSERT_TRUE(calibration.ok()) << calibration.status();
  for (int l = 0; l < model->spec.num_layers; ++l) {
    std::vector<float>& r = ratios[l];
    ASSERT_EQ(static_cast<int64_t>(r.size()), kNumTokens);
    std::sort(r.begin(), r.end());
    const double median = r[r.size() / 2];  // 13 tokens: the middle one
    EXPECT_FLOAT_EQ(calibration->layer(l).skip_threshold, median) << "layer " << l;
    EXPECT_GT(median, 0.0);
    EXPECT_LE(median, 1.0);
  }
}

TEST(ExpertSkippingTest, ThresholdOneRunsOnlyTheTopExpertLikeTopOneRouting) {
  std::unique_ptr<Model> skipping = Fixture();
  SetThreshold(*skipping, 1.0f);
  std::unique_ptr<Model> top1 = Fixture();
  top1->spec.num_experts_per_token = 1;

  EngineStats stats;
  auto got = SequenceLogits(*skipping, kTokens, 1, &stats);
  auto want = SequenceLogits(*top1, kTokens, 1);
  ASSERT_TRUE(got.ok() && want.ok());
  const FidelityResult same = CompareLogits(*want, *got, skipping->spec.vocab_size);
  EXPECT_LT(same.logits_relative_error, 1e-5);
  EXPECT_EQ(same.top1_agreement, 1.0);
  // Every token's second expert is skipped (random weights never tie).
  const int64_t layers = skipping->spec.num_layers;
  EXPECT_EQ(stats.routed_slots, layers * kNumTokens * 2);
  EXPECT_EQ(stats.skipped_slots, layers * kNumTokens);
  EXPECT_EQ(stats.layer_expert_rows[0], kNumTokens);
}

TEST(ExpertSkippingTest, SkippedCallsAreCountedAndObservedAsMinusOne) {
  std::unique_ptr<Model> model = Fixture();
  auto calibration = Calibration::Run(*model, kTokens, 1);
  ASSERT_TRUE(calibration.ok());
  for (int l = 0; l < model->spec.num_layers; ++l) {
    model->layers[l].expert_skip_threshold =
        static_cast<float>(calibration->layer(l).skip_threshold);
  }
  EngineOptions options;
  options.num_threads = 1;
  auto engine = Engine::Create(*model, options);
  ASSERT_TRUE(engine.ok());
  int64_t observed_skips = 0, observed_rows = 0;
  (*engine)->SetRoutingObserver(
      [&](int, int64_t n, int64_t top_k, const int32_t* idx, const float* w) {
        for (int64_t t = 0; t < n; ++t) {
          EXPECT_GE(idx[t * top_k], 0);  // the top expert always runs
          EXPECT_NEAR(w[t * top_k] + w[t * top_k + 1], 1.0f, 1e-6f);
          if (idx[t * top_k + 1] < 0) {
            EXPECT_EQ(w[t * top_k + 1], 0.0f);
            ++observed_skips;
          }
          observed_rows += 1 + (idx[t * top_k + 1] >= 0);
        }
      });
  RunSequences(**engine, model->spec);
  const EngineStats& stats = (*engine)->stats();
  EXPECT_EQ(stats.skipped_slots, observed_skips);
  // The median skips about half of the second experts on the calibration
  // tokens themselves (ties at the median are kept: w2 < beta * w1 skips).
  const int64_t layers = model->spec.num_layers;
  EXPECT_GE(observed_skips, layers * (kNumTokens / 2 - 1));
  EXPECT_LE(observed_skips, layers * (kNumTokens / 2 + 1));
  int64_t rows = 0;
  for (int64_t r : stats.layer_expert_rows) rows += r;
  EXPECT_EQ(rows, observed_rows);
  EXPECT_EQ(stats.routed_slots, layers * kNumTokens * 2);
}

TEST(ExpertSkippingTest, TurningSkippingOffRestoresTheModelBitForBit) {
  std::unique_ptr<Model> plain = Fixture();
  std::unique_ptr<Model> thresholded = Fixture();
  SetThreshold(*thresholded, 1.0f);
  auto want = SequenceLogits(*plain, kTokens, 1);
  ASSERT_TRUE(want.ok());

  EngineOptions options;
  options.num_threads = 1;
  options.expert_skipping = false;
  auto engine = Engine::Create(*thresholded, options);
  ASSERT_TRUE(engine.ok());
  EXPECT_EQ(RunSequences(**engine, thresholded->spec), *want);
  EXPECT_EQ((*engine)->stats().skipped_slots, 0);

  // And with skipping on, the same model does change.
  auto skipped = SequenceLogits(*thresholded, kTokens, 1);
  ASSERT_TRUE(skipped.ok());
  EXPECT_NE(*skipped, *want);
}

TEST(ExpertSkippingTest, ThresholdsSurviveTheCheckpointAndBadOnesAreRefused) {
  testing::TempDir dir;
  std::unique_ptr<Model> model = Fixture();
  ASSERT_EQ(model->spec.num_layers, 2);
  model->layers[1].expert_skip_threshold = 0.25f;  // the model's own, kept
  HerdCheckpointOptions options;
  options.expert_skip_thresholds = {{0, 0.5f}};
  ASSERT_TRUE(WriteHerdCheckpoint(*model, options, dir.Join("skip")).ok());
  auto loaded = LoadModel(dir.Join("skip"));
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->layers[0].expert_skip_threshold, 0.5f);
  EXPECT_EQ((*loaded)->layers[1].expert_skip_threshold, 0.25f);
  // Block drop renumbers: layer 1's threshold becomes layer 0's.
  options.drop_blocks = {0};
  ASSERT_TRUE(WriteHerdCheckpoint(*model, options, dir.Join("one-block")).ok());
  auto one_block = LoadModel(dir.Join("one-block"));
  ASSERT_TRUE(one_block.ok()) << one_block.status();
  ASSERT_EQ((*one_block)->layers.size(), 1u);
  EXPECT_EQ((*one_block)->layers[0].expert_skip_threshold, 0.25f);

  for (float bad : {0.0f, 1.5f, -0.1f}) {
    HerdCheckpointOptions wrong;
    wrong.expert_skip_thresholds = {{0, bad}};
    EXPECT_EQ(WriteHerdCheckpoint(*model, wrong, dir.Join("bad")).code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  HerdCheckpointOptions no_layer;
  no_layer.expert_skip_thresholds = {{99, 0.5f}};
  EXPECT_EQ(WriteHerdCheckpoint(*model, no_layer, dir.Join("bad")).code(),
            absl::StatusCode::kInvalidArgument);

  // A hand-edited herd.json with a threshold outside (0, 1] does not load.
  const std::string manifest_path = dir.Join("skip") + "/herd.json";
  nlohmann::json manifest;
  std::ifstream(manifest_path) >> manifest;
  for (const nlohmann::json& bad :
       {nlohmann::json(1.5), nlohmann::json("high"), nlohmann::json(0.0)}) {
    manifest["expert_skip_thresholds"]["0"] = bad;
    std::ofstream(manifest_path) << manifest.dump();
    auto refused = LoadModel(dir.Join("skip"));
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(refused.status().message().find("skip threshold"), std::string::npos)
        << refused.status();
  }
}

}  // namespace
}  // namespace herd
