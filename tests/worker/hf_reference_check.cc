#include "tests/worker/hf_reference_check.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "gtest/gtest.h"
#include "model/model_loader.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"
#include "worker/generator.h"

namespace herd::testing {

void ExpectTransformersLogitsAndTokens(const std::string& arch, const EngineFactory& make_engine,
                                       float tolerance, const std::string& who) {
  const std::string dir = TestDataPath("hf-reference/" + arch);
  const auto reference = nlohmann::json::parse(ReadFileText(dir + "/reference.json"));
  auto model = LoadModel(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto engine = make_engine(**model);
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
  EXPECT_LE(max_diff, tolerance) << reference["peer"];
  // The tokens are comparable only where the top two logits are further apart
  // than the tolerance; the generator records the smallest margin.
  ASSERT_GT(reference["min_greedy_margin_top1_minus_top2"].get<double>(), tolerance);
  std::printf("[ %s ] max |%s - transformers| = %.3g over %zu logits\n", arch.c_str(), who.c_str(),
              max_diff, expected.size());
  EXPECT_EQ(result->tokens, greedy);
}

}  // namespace herd::testing
