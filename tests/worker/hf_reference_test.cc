// Herd against Hugging Face transformers, the architectures' own peer: tiny
// random-weight Mixtral, Qwen2-MoE (shared expert, qkv bias), Qwen3-MoE
// (per-head q/k norm, head_dim != hidden/heads) and OLMoE (q/k norm over all
// heads) checkpoints with the logits and greedy tokens transformers computed
// for them (tests/data/hf-reference/generate.py, pinned versions in
// reference.json). Loaded through the HF loader, run by the CPU engine.
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_loader.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace herd {
namespace {

using testing::ReadF32File;
using testing::ReadFileText;
using testing::TestDataPath;

class HfReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfReferenceTest, LogitsAndGreedyTokensMatchTransformers) {
  const std::string dir = TestDataPath("hf-reference/" + GetParam());
  const auto reference = nlohmann::json::parse(ReadFileText(dir + "/reference.json"));
  auto model = LoadModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto engine = Engine::Create(**model, {.num_threads = 2});
  ASSERT_TRUE(engine.ok()) << engine.status();

  const auto ids = reference["ids"].get<std::vector<int32_t>>();
  const auto greedy = reference["greedy"].get<std::vector<int32_t>>();
  GenerateOptions options;
  options.max_new_tokens = static_cast<int64_t>(greedy.size());
  options.keep_logits = true;
  auto result = Generate(**engine, ids, options);
  ASSERT_TRUE(result.ok()) << result.status();

  // transformers' logits of ids ++ greedy: the layout of --dump-logits.
  const std::vector<float> expected = ReadF32File(dir + "/logits.f32");
  const int64_t vocab = (*model)->spec.vocab_size;
  ASSERT_EQ(expected.size(), (ids.size() + greedy.size()) * vocab);
  ASSERT_EQ(result->logits.size(), expected.size());
  float max_diff = 0.0f;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(result->logits[i] - expected[i]));
  }
  EXPECT_LE(max_diff, 1e-4f) << reference["peer"];
  // The tokens are comparable only where the top two logits are further apart
  // than the tolerance; the generator records the smallest margin.
  ASSERT_GT(reference["min_greedy_margin_top1_minus_top2"].get<double>(), 1e-4);
  std::printf("[ %s ] max |herd - transformers| = %.3g over %zu logits\n", GetParam().c_str(),
              max_diff, expected.size());
  EXPECT_EQ(result->tokens, greedy);
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfReferenceTest,
                         ::testing::Values("mixtral", "qwen2moe", "qwen3moe", "olmoe"));

}  // namespace
}  // namespace herd
