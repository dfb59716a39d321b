// The step runner on one rank, driven by plans as the coordinator sends
// them, on the tiny llama.cpp fixture model: greedy plans reproduce
// Generate, sampling does not depend on blocks, batch or preemption, a plan
// the rank cannot run is reported (and runs nothing), and the worker loop
// ends on shutdown.
#include "worker/step_runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "comm/local_world.h"
#include "core/status.h"
#include "gtest/gtest.h"
#include "kernels/sampling.h"
#include "model/model_loader.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"
#include "worker/engine.h"
#include "worker/generator.h"
#include "worker/rank_model.h"

namespace herd {
namespace {

using testing::ReadFileText;
using testing::TestDataPath;

constexpr int64_t kBlockTokens = 4;
constexpr int64_t kNumBlocks = 32;

std::vector<int32_t> FixturePrompt() {
  const auto manifest =
      nlohmann::json::parse(ReadFileText(TestDataPath("llamacpp-tiny/manifest.json")));
  return manifest["ids"].get<std::vector<int32_t>>();
}

// A sequence as the coordinator tracks it: tokens so far, its blocks, and how
// many of its positions are in them.
struct PlannedSequence {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // prompt, then generated
  int64_t num_prompt = 0;
  std::vector<int32_t> block_table;
  int64_t num_cached = 0;
  SamplingParams sampling;
};

// The next chunk of `seq`: up to `max_tokens` of what is not cached yet;
// samples when it reaches the last token.
PlannedChunk NextChunk(const PlannedSequence& seq, int64_t max_tokens) {
  PlannedChunk c;
  c.sequence_id = seq.id;
  c.start_pos = seq.num_cached;
  const int64_t end =
      std::min<int64_t>(static_cast<int64_t>(seq.tokens.size()), seq.num_cached + max_tokens);
  c.token_ids.assign(seq.tokens.begin() + seq.num_cached, seq.tokens.begin() + end);
  const int64_t num_blocks = (end + kBlockTokens - 1) / kBlockTokens;
  c.block_table.assign(seq.block_table.begin(), seq.block_table.begin() + num_blocks);
  c.sample = end == static_cast<int64_t>(seq.tokens.size());
  c.sampling = seq.sampling;
  c.sample_idx = static_cast<int64_t>(seq.tokens.size()) - seq.num_prompt;
  return c;
}

// Runs `seqs` together, prefill in chunks of `prefill_chunk` tokens, until
// each has `num_new` generated tokens; returns them per sequence.
std::vector<std::vector<int32_t>> Serve(StepRunner& runner, std::vector<PlannedSequence> seqs,
                                        int64_t num_new, int64_t prefill_chunk) {
  uint64_t step_idx = 0;
  auto done = [&](const PlannedSequence& s) {
    return static_cast<int64_t>(s.tokens.size()) - s.num_prompt >= num_new;
  };
  while (!std::all_of(seqs.begin(), seqs.end(), done)) {
    RankStepPlan plan;
    plan.step_idx = step_idx++;
    for (const PlannedSequence& s : seqs) {
      if (!done(s)) plan.chunks.push_back(NextChunk(s, prefill_chunk));
    }
    auto result = runner.Run(plan);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) break;
    EXPECT_EQ(result->error, "");
    EXPECT_EQ(result->step_idx, plan.step_idx);
    if (!result->error.empty()) break;
    size_t sampled = 0;
    for (const PlannedChunk& c : plan.chunks) {
      PlannedSequence& s = *std::find_if(seqs.begin(), seqs.end(),
                                         [&](const auto& x) { return x.id == c.sequence_id; });
      s.num_cached += static_cast<int64_t>(c.token_ids.size());
      if (c.sample) {
        EXPECT_EQ(result->sampled[sampled].sequence_id, s.id);
        s.tokens.push_back(result->sampled[sampled++].token_id);
      }
    }
    EXPECT_EQ(sampled, result->sampled.size());
  }
  std::vector<std::vector<int32_t>> generated;
  for (const PlannedSequence& s : seqs) {
    generated.emplace_back(s.tokens.begin() + s.num_prompt, s.tokens.end());
  }
  return generated;
}

PlannedSequence NewSequence(uint64_t id, const std::vector<int32_t>& prompt,
                            std::vector<int32_t> block_table, SamplingParams sampling = {}) {
  PlannedSequence s;
  s.id = id;
  s.tokens = prompt;
  s.num_prompt = static_cast<int64_t>(prompt.size());
  s.block_table = std::move(block_table);
  s.sampling = sampling;
  return s;
}

std::vector<int32_t> Blocks(int32_t first, int32_t step, int32_t n) {
  std::vector<int32_t> v;
  for (int32_t i = 0; i < n; ++i) v.push_back(first + i * step);
  return v;
}

class StepRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    prompt_ = FixturePrompt();
    auto model = LoadModel(TestDataPath("llamacpp-tiny/tiny-q4_0.gguf"));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto engine = Engine::Create(*model_, {.num_threads = 2});
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  std::unique_ptr<StepRunner> NewRunner(bool count_expert_tokens = false) {
    StepRunnerOptions options;
    options.num_kv_blocks = kNumBlocks;
    options.kv_block_tokens = kBlockTokens;
    options.count_expert_tokens = count_expert_tokens;
    auto runner = StepRunner::Create(engine_.get(), options);
    EXPECT_TRUE(runner.ok()) << runner.status();
    return runner.ok() ? std::move(*runner) : nullptr;
  }

  std::vector<int32_t> GenerateTokens(const std::vector<int32_t>& prompt, int64_t num_new,
                                      SamplingOptions sampling = {}) {
    GenerateOptions options;
    options.max_new_tokens = num_new;
    options.sampling = sampling;
    auto result = Generate(*engine_, prompt, options);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result->tokens : std::vector<int32_t>();
  }

  // The engine's logits at positions `rows` of the prompt, run alone on a
  // cache of its own: F32 [rows, vocab].
  std::vector<float> PromptLogits(const std::vector<int64_t>& rows) {
    const int64_t n = static_cast<int64_t>(prompt_.size());
    auto cache = engine_->CreateKvCache((n + kBlockTokens - 1) / kBlockTokens, kBlockTokens);
    EXPECT_TRUE(cache.ok()) << cache.status();
    if (!cache.ok()) return {};
    std::vector<int32_t> table((n + kBlockTokens - 1) / kBlockTokens);
    std::iota(table.begin(), table.end(), 0);
    Batch batch;
    batch.cache = cache->get();
    batch.token_ids = prompt_;
    batch.chunks = {{table, 0, n}};
    batch.logit_rows = rows;
    std::vector<float> logits(rows.size() * model_->spec.vocab_size);
    const absl::Status status = engine_->Forward(batch, logits.data());
    EXPECT_TRUE(status.ok()) << status;
    return logits;
  }

  std::vector<int32_t> prompt_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(StepRunnerTest, GreedyPlansReproduceGenerate) {
  const std::vector<int32_t> expected = GenerateTokens(prompt_, 16);
  ASSERT_EQ(expected.size(), 16u);
  auto runner = NewRunner();
  // The prompt in chunks of 5, 5, 5 and 1 tokens, then one token per plan;
  // the sequence on every third block, backwards.
  const auto tokens =
      Serve(*runner, {NewSequence(1, prompt_, Blocks(30, -3, 8))}, 16, /*prefill_chunk=*/5);
  EXPECT_EQ(tokens[0], expected);

  // Two sequences at once, on interleaved blocks, each gets its own tokens.
  const std::vector<int32_t> other(prompt_.rbegin(), prompt_.rend() - 4);
  const std::vector<int32_t> other_expected = GenerateTokens(other, 16);
  const auto both = Serve(
      *runner, {NewSequence(1, prompt_, Blocks(0, 2, 8)), NewSequence(2, other, Blocks(1, 2, 8))},
      16, /*prefill_chunk=*/7);
  EXPECT_EQ(both[0], expected);
  EXPECT_EQ(both[1], other_expected);
}

// A chunk that asks for log probabilities gets the log softmax of the
// engine's logits for its sampled token and the top k, for greedy and
// sampled tokens alike; a chunk that does not ask gets none.
TEST_F(StepRunnerTest, SampledTokensCarryTheLogProbabilitiesAskedFor) {
  const std::vector<float> logits = PromptLogits({static_cast<int64_t>(prompt_.size()) - 1});

  auto runner = NewRunner();
  RankStepPlan plan;
  SamplingParams greedy;
  greedy.top_logprobs = 5;
  SamplingParams sampled{.temperature = 0.9f, .top_p = 0.8f, .seed = 7, .top_logprobs = 0};
  plan.chunks = {NextChunk(NewSequence(1, prompt_, Blocks(0, 1, 4), greedy), 64),
                 NextChunk(NewSequence(2, prompt_, Blocks(4, 1, 4), sampled), 64),
                 NextChunk(NewSequence(3, prompt_, Blocks(8, 1, 4)), 64)};
  auto result = runner->Run(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->error, "");
  ASSERT_EQ(result->sampled.size(), 3u);
  std::vector<std::pair<float, int32_t>> want_top;
  for (int i = 0; i < 2; ++i) {
    const SampledToken& t = result->sampled[i];
    SCOPED_TRACE(i == 0 ? "greedy, top 5" : "sampled, top 0");
    ASSERT_TRUE(t.logprobs.has_value());
    const int k = i == 0 ? 5 : 0;
    const float want =
        cpu::LogProbabilities(logits.data(), model_->spec.vocab_size, t.token_id, k, want_top);
    EXPECT_NEAR(t.logprobs->logprob, want, 1e-6);
    EXPECT_LE(t.logprobs->logprob, 0.0f);
    ASSERT_EQ(t.logprobs->top.size(), static_cast<size_t>(k));
    for (int j = 0; j < k; ++j) {
      EXPECT_EQ(t.logprobs->top[j].token_id, want_top[j].second) << "rank " << j;
      EXPECT_NEAR(t.logprobs->top[j].logprob, want_top[j].first, 1e-6);
    }
  }
  // Greedy: the sampled token is the most likely one.
  const SampledLogprobs& greedy_logprobs = *result->sampled[0].logprobs;
  EXPECT_EQ(greedy_logprobs.top[0].token_id, result->sampled[0].token_id);
  EXPECT_EQ(greedy_logprobs.top[0].logprob, greedy_logprobs.logprob);
  EXPECT_FALSE(result->sampled[2].logprobs.has_value());

  plan.chunks.resize(1);
  plan.chunks[0].sampling.top_logprobs = kMaxTopLogprobs + 1;
  auto refused = runner->Run(plan);
  ASSERT_TRUE(refused.ok());
  EXPECT_NE(refused->error.find("top_logprobs must be in [-1, 20]"), std::string::npos)
      << refused->error;
}

// Prompt log probabilities (echo): a prompt in two chunks over two steps,
// the first naming the token after it; each position's next token gets the
// log softmax of the engine's logits at that position.
TEST_F(StepRunnerTest, ChunksScoreTheirPromptsNextTokens) {
  const int64_t n = static_cast<int64_t>(prompt_.size());
  std::vector<int64_t> rows(n);
  std::iota(rows.begin(), rows.end(), 0);
  const std::vector<float> logits = PromptLogits(rows);
  const int64_t vocab = model_->spec.vocab_size;

  auto runner = NewRunner();
  SamplingParams sampling;
  sampling.top_logprobs = 2;
  PlannedSequence seq = NewSequence(9, prompt_, Blocks(0, 1, 4), sampling);
  std::vector<ChunkLogprobs> scored;
  for (uint64_t step = 0; step < 2; ++step) {
    RankStepPlan plan;
    plan.step_idx = step;
    PlannedChunk chunk = NextChunk(seq, 10);
    chunk.prompt_logprobs = true;
    const int64_t end = chunk.start_pos + static_cast<int64_t>(chunk.token_ids.size());
    chunk.next_token_id = end < n ? prompt_[end] : -1;
    plan.chunks = {chunk};
    auto result = runner->Run(plan);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->error, "");
    ASSERT_EQ(result->prompt_logprobs.size(), 1u);
    scored.push_back(result->prompt_logprobs[0]);
    seq.num_cached = end;
  }
  // Positions 0..9 (the 10th predicts the second chunk's first token), then
  // 10..14 (the last position samples instead).
  EXPECT_EQ(scored[0].start_pos, 0);
  EXPECT_EQ(scored[0].entries.size(), 10u);
  EXPECT_EQ(scored[1].start_pos, 10);
  EXPECT_EQ(scored[1].entries.size(), 5u);
  std::vector<std::pair<float, int32_t>> want_top;
  for (const ChunkLogprobs& c : scored) {
    EXPECT_EQ(c.sequence_id, 9u);
    for (size_t j = 0; j < c.entries.size(); ++j) {
      const int64_t p = c.start_pos + static_cast<int64_t>(j);
      const float want =
          cpu::LogProbabilities(logits.data() + p * vocab, vocab, prompt_[p + 1], 2, want_top);
      EXPECT_NEAR(c.entries[j].logprob, want, 1e-5) << "position " << p;
      ASSERT_EQ(c.entries[j].top.size(), 2u);
      EXPECT_EQ(c.entries[j].top[0].token_id, want_top[0].second) << "position " << p;
    }
  }
}

// Penalties change the greedy choice as cpu::ApplyPenalties changes the
// engine's logits (the most likely token, penalized as if generated three
// times, loses), while the reported log probability stays the raw one.
TEST_F(StepRunnerTest, PenaltiesSteerSamplingButNotTheReportedLogprobs) {
  const std::vector<float> logits = PromptLogits({static_cast<int64_t>(prompt_.size()) - 1});
  const int64_t vocab = model_->spec.vocab_size;
  const int32_t best = cpu::ArgMax(logits.data(), vocab);
  const std::vector<int32_t> output = {best, best, best};
  std::vector<float> penalized = logits;
  std::vector<int32_t> scratch;
  cpu::ApplyPenalties(penalized.data(), vocab, prompt_, output, 0.5f, 1.0f, 1.3f, scratch);
  const int32_t want = cpu::ArgMax(penalized.data(), vocab);
  ASSERT_NE(want, best);

  auto runner = NewRunner();
  SamplingParams sampling;
  sampling.presence_penalty = 0.5f;
  sampling.frequency_penalty = 1.0f;
  sampling.repetition_penalty = 1.3f;
  sampling.top_logprobs = 0;
  RankStepPlan plan;
  plan.chunks = {NextChunk(NewSequence(1, prompt_, Blocks(0, 1, 4), sampling), 64)};
  plan.chunks[0].penalized_prompt = prompt_;
  plan.chunks[0].penalized_output = output;
  auto result = runner->Run(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->error, "");
  EXPECT_EQ(result->sampled[0].token_id, want);
  std::vector<std::pair<float, int32_t>> top;
  EXPECT_NEAR(result->sampled[0].logprobs->logprob,
              cpu::LogProbabilities(logits.data(), vocab, want, 0, top), 1e-6);

  // A bias of 100 makes any token the greedy choice (before the penalties).
  const int32_t favoured = (best + 7) % static_cast<int32_t>(vocab);
  plan.chunks[0].sampling.logit_bias = {{favoured, 100.0f}};
  plan.chunks[0].penalized_output.clear();
  auto biased = runner->Run(plan);
  ASSERT_TRUE(biased.ok()) << biased.status();
  ASSERT_EQ(biased->error, "");
  EXPECT_EQ(biased->sampled[0].token_id, favoured);

  plan.chunks[0].sampling.logit_bias.clear();
  plan.chunks[0].penalized_output = {static_cast<int32_t>(vocab)};
  auto refused = runner->Run(plan);
  ASSERT_TRUE(refused.ok());
  EXPECT_NE(refused->error.find("outside the vocabulary"), std::string::npos) << refused->error;
}

TEST_F(StepRunnerTest, SampledTokensDependOnlyOnSeedAndIndex) {
  SamplingParams sampling;
  sampling.temperature = 0.8f;
  sampling.top_p = 0.95f;
  sampling.seed = 1234;
  auto runner = NewRunner();
  const auto reference =
      Serve(*runner, {NewSequence(1, prompt_, Blocks(0, 1, 8), sampling)}, 16, 16)[0];
  ASSERT_EQ(reference.size(), 16u);
  EXPECT_NE(reference, GenerateTokens(prompt_, 16)) << "the sampler never left argmax";

  // Other blocks, another prefill split, another sequence beside it.
  SamplingParams other_sampling = sampling;
  other_sampling.seed = 99;
  const auto shuffled = Serve(*runner,
                              {NewSequence(7, prompt_, Blocks(31, -1, 8), sampling),
                               NewSequence(8, prompt_, Blocks(8, 1, 8), other_sampling)},
                              16, 3);
  EXPECT_EQ(shuffled[0], reference);
  EXPECT_NE(shuffled[1], reference) << "another seed, another stream";

  // Preempted after 6 tokens: re-planned from scratch on new blocks with
  // prompt + those 6 as its prefill, it continues the same way.
  std::vector<int32_t> resumed_prompt = prompt_;
  resumed_prompt.insert(resumed_prompt.end(), reference.begin(), reference.begin() + 6);
  PlannedSequence resumed = NewSequence(9, resumed_prompt, Blocks(20, 1, 8), sampling);
  resumed.num_prompt = static_cast<int64_t>(prompt_.size());
  const auto continued = Serve(*runner, {resumed}, 16, 16)[0];
  EXPECT_EQ(continued, reference);
}

TEST_F(StepRunnerTest, ResultCountsTokensRowsAndExpertTokens) {
  auto runner = NewRunner(/*count_expert_tokens=*/true);
  const ModelSpec& s = model_->spec;
  RankStepPlan plan;
  plan.step_idx = 3;
  PlannedChunk a = NextChunk(NewSequence(1, prompt_, Blocks(0, 1, 8)), 16);
  PlannedChunk b = NextChunk(NewSequence(2, prompt_, Blocks(8, 1, 8)), 5);
  plan.chunks = {a, b};
  auto result = runner->Run(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->error, "");
  EXPECT_EQ(result->rank, 0);
  EXPECT_EQ(result->num_tokens, 21);
  ASSERT_EQ(result->sampled.size(), 1u);  // b's chunk does not reach its last token
  EXPECT_EQ(result->sampled[0].sequence_id, 1u);
  ASSERT_EQ(result->layer_expert_rows.size(), static_cast<size_t>(s.num_layers));
  ASSERT_EQ(result->expert_tokens.size(), static_cast<size_t>(s.num_layers * s.num_experts));
  for (int64_t l = 0; l < s.num_layers; ++l) {
    EXPECT_EQ(result->layer_expert_rows[l], 21 * s.num_experts_per_token);
    const int64_t routed =
        std::accumulate(result->expert_tokens.begin() + l * s.num_experts,
                        result->expert_tokens.begin() + (l + 1) * s.num_experts, int64_t{0});
    EXPECT_EQ(routed, 21 * s.num_experts_per_token);
  }
  EXPECT_GT(result->forward_seconds, 0);
  EXPECT_EQ(result->all_to_all_bytes, 0);

  // The next step reports its own counts, not the sum.
  PlannedChunk decode;
  decode.sequence_id = 1;
  decode.start_pos = 16;
  decode.token_ids = {result->sampled[0].token_id};
  decode.block_table = Blocks(0, 1, 5);
  decode.sample = true;
  plan.chunks = {decode};
  result = runner->Run(plan);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->num_tokens, 1);
  for (int64_t l = 0; l < s.num_layers; ++l) {
    EXPECT_EQ(result->layer_expert_rows[l], s.num_experts_per_token);
  }
  EXPECT_EQ(std::accumulate(result->expert_tokens.begin(), result->expert_tokens.end(), int64_t{0}),
            s.num_layers * s.num_experts_per_token);
}

TEST_F(StepRunnerTest, PlanTheRankCannotRunIsReportedAndRunsNothing) {
  auto runner = NewRunner();
  Serve(*runner, {NewSequence(1, prompt_, Blocks(0, 1, 8))}, 2, 16);
  auto snapshot = [&] {
    const KvCache& c = runner->cache();
    std::vector<float> all;
    for (int64_t l = 0; l < model_->spec.num_layers; ++l) {
      for (int64_t b = 0; b < c.num_blocks(); ++b) {
        all.insert(all.end(), c.keys(l, b), c.keys(l, b) + c.block_elements());
        all.insert(all.end(), c.values(l, b), c.values(l, b) + c.block_elements());
      }
    }
    return all;
  };
  const std::vector<float> before = snapshot();

  const PlannedChunk good = NextChunk(NewSequence(2, prompt_, Blocks(8, 1, 8)), 16);
  struct BadCase {
    std::string what;
    std::string expected_in_error;
    PlannedChunk chunk;
  };
  std::vector<BadCase> cases;
  auto add = [&](std::string what, std::string expected, auto mutate) {
    PlannedChunk c = good;
    mutate(c);
    cases.push_back({std::move(what), std::move(expected), std::move(c)});
  };
  add("token outside the vocabulary", "vocabulary",
      [&](PlannedChunk& c) { c.token_ids[3] = static_cast<int32_t>(model_->spec.vocab_size); });
  add("negative token", "vocabulary", [](PlannedChunk& c) { c.token_ids[0] = -1; });
  add("block outside the cache", "outside the cache",
      [](PlannedChunk& c) { c.block_table[2] = kNumBlocks; });
  add("table too short", "block table", [](PlannedChunk& c) { c.block_table.resize(3); });
  add("no tokens", "no tokens", [](PlannedChunk& c) { c.token_ids.clear(); });
  add("negative temperature", "temperature",
      [](PlannedChunk& c) { c.sampling.temperature = -1.0f; });
  add("NaN temperature", "temperature", [](PlannedChunk& c) { c.sampling.temperature = NAN; });
  add("top_p of 0", "top_p", [](PlannedChunk& c) { c.sampling.top_p = 0.0f; });
  add("top_p above 1", "top_p", [](PlannedChunk& c) { c.sampling.top_p = 1.5f; });
  add("negative sample index", "sample_idx", [](PlannedChunk& c) { c.sample_idx = -1; });
  add("block another chunk writes", "write KV block",
      [](PlannedChunk& c) { c.block_table[0] = 16; });
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.what);
    RankStepPlan plan;
    plan.step_idx = 11;
    // A valid chunk goes with the bad one: the whole plan is refused.
    plan.chunks = {NextChunk(NewSequence(4, prompt_, Blocks(16, 1, 8)), 16), c.chunk};
    auto result = runner->Run(plan);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_NE(result->error.find(c.expected_in_error), std::string::npos) << result->error;
    EXPECT_NE(result->error.find("step 11"), std::string::npos) << result->error;
    EXPECT_EQ(result->step_idx, 11u);
    EXPECT_TRUE(result->sampled.empty());
    EXPECT_EQ(result->num_tokens, 0);
    EXPECT_EQ(snapshot(), before);
  }
  // The runner goes on serving.
  EXPECT_EQ(Serve(*runner, {NewSequence(1, prompt_, Blocks(0, 1, 8))}, 16, 16)[0],
            GenerateTokens(prompt_, 16));
}

TEST_F(StepRunnerTest, CreateAndBlockArithmetic) {
  StepRunnerOptions options;
  options.num_kv_blocks = 0;
  EXPECT_EQ(StepRunner::Create(engine_.get(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.num_kv_blocks = 4;
  options.kv_block_tokens = 0;
  EXPECT_EQ(StepRunner::Create(engine_.get(), options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.kv_block_tokens = 16;
  EXPECT_EQ(StepRunner::Create(nullptr, options).status().code(),
            absl::StatusCode::kInvalidArgument);

  const ModelSpec& s = model_->spec;
  const int64_t block_bytes = KvCache::BytesPerBlock(s, 16);
  EXPECT_EQ(StepRunner::KvBlocksForBytes(s, 10 * block_bytes + block_bytes - 1, 16), 10);
  EXPECT_EQ(StepRunner::KvBlocksForBytes(s, block_bytes - 1, 16), 0);
  EXPECT_EQ(StepRunner::KvBlocksForBytes(s, -1, 16), 0);
  EXPECT_EQ(StepRunner::KvBlocksForBytes(s, block_bytes, 0), 0);
  EXPECT_EQ(StepRunner::KvBlocksForBytes(s, std::numeric_limits<int64_t>::max(), 1),
            std::numeric_limits<int32_t>::max());
}

// The worker loop over a local control channel: rank 0 plays the
// coordinator, rank 1 runs plans until shutdown.
TEST_F(StepRunnerTest, WorkerLoopRunsPlansUntilShutdown) {
  auto world = comm::LocalWorld::Create(2);
  ASSERT_TRUE(world.ok());
  auto control0 = (*world)->CreateControlChannel(0);
  auto control1 = (*world)->CreateControlChannel(1);
  ASSERT_TRUE(control0.ok() && control1.ok());
  auto runner = NewRunner();
  absl::Status loop_status = absl::UnknownError("not run");
  std::thread worker([&] { loop_status = RunWorkerLoop(*runner, **control1); });

  const std::vector<int32_t> expected = GenerateTokens(prompt_, 4);
  PlannedSequence seq = NewSequence(5, prompt_, Blocks(3, 1, 8));
  for (uint64_t step_idx = 0; step_idx < 4; ++step_idx) {
    RankStepPlan plan;
    plan.step_idx = step_idx;
    plan.chunks = {NextChunk(seq, 16)};
    ASSERT_TRUE((*control0)
                    ->Send(1, kStepPlanTag, EncodeStepPlan(plan), absl::Now() + absl::Seconds(10))
                    .ok());
    auto message = (*control0)->Recv(1, kStepResultTag, absl::Now() + absl::Seconds(60));
    ASSERT_TRUE(message.ok()) << message.status();
    auto result = DecodeStepResult(message->payload);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->step_idx, step_idx);
    EXPECT_EQ(result->rank, 0);  // a single-rank engine
    ASSERT_EQ(result->sampled.size(), 1u);
    seq.num_cached = static_cast<int64_t>(seq.tokens.size());
    seq.tokens.push_back(result->sampled[0].token_id);
  }
  EXPECT_EQ(std::vector<int32_t>(seq.tokens.begin() + seq.num_prompt, seq.tokens.end()), expected);

  RankStepPlan shutdown;
  shutdown.shutdown = true;
  ASSERT_TRUE((*control0)
                  ->Send(1, kStepPlanTag, EncodeStepPlan(shutdown), absl::Now() + absl::Seconds(10))
                  .ok());
  worker.join();
  EXPECT_TRUE(loop_status.ok()) << loop_status;
}

TEST_F(StepRunnerTest, WorkerLoopEndsOnAPlanItCannotDecode) {
  auto world = comm::LocalWorld::Create(2);
  ASSERT_TRUE(world.ok());
  auto control0 = (*world)->CreateControlChannel(0);
  auto control1 = (*world)->CreateControlChannel(1);
  ASSERT_TRUE(control0.ok() && control1.ok());
  auto runner = NewRunner();
  ASSERT_TRUE(
      (*control0)->Send(1, kStepPlanTag, "not a plan", absl::Now() + absl::Seconds(10)).ok());
  const absl::Status status = RunWorkerLoop(*runner, **control1);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
}

TEST_F(StepRunnerTest, WorkerLoopEndsWhenTheWorldIsAborted) {
  auto world = comm::LocalWorld::Create(2);
  ASSERT_TRUE(world.ok());
  auto control1 = (*world)->CreateControlChannel(1);
  ASSERT_TRUE(control1.ok());
  auto runner = NewRunner();
  std::thread coordinator([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // the loop polls once idle
    (*world)->Abort(0, "coordinator gone");
  });
  const absl::Status status = RunWorkerLoop(*runner, **control1);
  coordinator.join();
  EXPECT_EQ(status.code(), absl::StatusCode::kAborted) << status;
}

// Expert parallelism over 2 local ranks: rank 1 runs the worker loop, rank 0
// plays the coordinator (sends rank 1 its plan, runs its own, collects the
// result). Each rank serves its own sequence (data-parallel attention) while
// the experts are split between them; both get the single-rank tokens. Rank
// 1 joins late, idles through empty plans while rank 0 decodes, and gets one
// plan it cannot run, which it reports without stalling rank 0.
TEST(StepRunnerExpertParallelTest, WorkerLoopOnRankOneMatchesSingleRank) {
  const std::string path = TestDataPath("llamacpp-tiny/tiny-q4_0.gguf");
  const std::vector<int32_t> prompt_a = FixturePrompt();
  const std::vector<int32_t> prompt_b(prompt_a.rbegin(), prompt_a.rend() - 6);
  constexpr int64_t kNumNew = 12;
  std::vector<int32_t> expected_a, expected_b;
  {
    auto model = LoadModel(path);
    ASSERT_TRUE(model.ok()) << model.status();
    auto engine = Engine::Create(**model, {.num_threads = 1});
    ASSERT_TRUE(engine.ok()) << engine.status();
    GenerateOptions options;
    options.max_new_tokens = kNumNew;
    auto a = Generate(**engine, prompt_a, options);
    auto b = Generate(**engine, prompt_b, options);
    ASSERT_TRUE(a.ok() && b.ok());
    expected_a = a->tokens;
    expected_b = b->tokens;
  }

  auto world = comm::LocalWorld::Create(2);
  ASSERT_TRUE(world.ok());
  std::vector<int32_t> got_a, got_b;
  std::vector<RankStepResult> rank1_results;
  int64_t total_tokens[2] = {0, 0};
  int64_t total_bytes[2] = {0, 0};
  std::vector<int64_t> rows_per_layer;
  int64_t top_k = 0;
  int64_t num_layers = 0;

  // Rank 0's side of the serving loop; an error aborts the world so that
  // rank 1's loop ends too.
  auto coordinate = [&](StepRunner& runner, comm::ControlChannel& control) -> absl::Status {
    const ModelSpec& spec = runner.engine().spec();
    rows_per_layer.assign(spec.num_layers, 0);
    top_k = spec.num_experts_per_token;
    num_layers = spec.num_layers;
    PlannedSequence a = NewSequence(1, prompt_a, Blocks(0, 1, 8));
    PlannedSequence b = NewSequence(2, prompt_b, Blocks(15, -1, 8));
    auto generated = [](const PlannedSequence& s) {
      return static_cast<int64_t>(s.tokens.size()) - s.num_prompt;
    };
    for (uint64_t step_idx = 0; generated(a) < kNumNew || generated(b) < kNumNew; ++step_idx) {
      RankStepPlan plans[2];
      plans[0].step_idx = plans[1].step_idx = step_idx;
      if (generated(a) < kNumNew) plans[0].chunks = {NextChunk(a, 8)};
      const bool b_joined = step_idx >= 3;
      const bool bad_step = step_idx == 5;
      if (bad_step) {
        PlannedChunk bad = NextChunk(b, 8);
        bad.block_table[0] = 1000;
        plans[1].chunks = {bad};
      } else if (b_joined && generated(b) < kNumNew) {
        plans[1].chunks = {NextChunk(b, 8)};
      }
      const absl::Time deadline = absl::Now() + absl::Seconds(60);
      HERD_RETURN_IF_ERROR(control.Send(1, kStepPlanTag, EncodeStepPlan(plans[1]), deadline));
      HERD_ASSIGN_OR_RETURN(RankStepResult result0, runner.Run(plans[0]));
      HERD_ASSIGN_OR_RETURN(comm::ControlMessage message,
                            control.Recv(1, kStepResultTag, deadline));
      HERD_ASSIGN_OR_RETURN(RankStepResult result1, DecodeStepResult(message.payload));
      EXPECT_EQ(result0.error, "");
      EXPECT_EQ(result1.error.empty(), !bad_step) << result1.error;
      EXPECT_EQ(result1.rank, 1);
      EXPECT_EQ(result1.step_idx, step_idx);
      for (int r = 0; r < 2; ++r) {
        const RankStepResult& result = r == 0 ? result0 : result1;
        PlannedSequence& s = r == 0 ? a : b;
        total_tokens[r] += result.num_tokens;
        total_bytes[r] += result.all_to_all_bytes;
        for (int l = 0; l < spec.num_layers; ++l) {
          rows_per_layer[l] += result.layer_expert_rows[l];
        }
        if (!result.error.empty() || plans[r].chunks.empty()) continue;
        s.num_cached += static_cast<int64_t>(plans[r].chunks[0].token_ids.size());
        if (!result.sampled.empty()) s.tokens.push_back(result.sampled[0].token_id);
      }
      rank1_results.push_back(std::move(result1));
    }
    got_a.assign(a.tokens.begin() + a.num_prompt, a.tokens.end());
    got_b.assign(b.tokens.begin() + b.num_prompt, b.tokens.end());
    RankStepPlan shutdown;
    shutdown.shutdown = true;
    return control.Send(1, kStepPlanTag, EncodeStepPlan(shutdown), absl::Now() + absl::Seconds(60));
  };

  absl::Status statuses[2];
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      statuses[rank] = [&]() -> absl::Status {
        HERD_ASSIGN_OR_RETURN(std::unique_ptr<comm::ControlChannel> control,
                              (*world)->CreateControlChannel(rank));
        HERD_ASSIGN_OR_RETURN(std::unique_ptr<comm::Communicator> communicator,
                              (*world)->CreateCommunicator(rank));
        HERD_ASSIGN_OR_RETURN(RankModel rank_model,
                              LoadModelForRank(path, communicator.get(), std::nullopt));
        EngineOptions options;
        options.num_threads = 1;
        options.expert_parallelism.comm = communicator.get();
        options.expert_parallelism.placement = &*rank_model.placement;
        options.expert_parallelism.timeout = absl::Seconds(60);
        HERD_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                              Engine::Create(*rank_model.model, options));
        StepRunnerOptions runner_options;
        runner_options.num_kv_blocks = 16;
        runner_options.kv_block_tokens = kBlockTokens;
        runner_options.count_expert_tokens = true;
        HERD_ASSIGN_OR_RETURN(std::unique_ptr<StepRunner> runner,
                              StepRunner::Create(engine.get(), runner_options));
        if (rank == 1) return RunWorkerLoop(*runner, *control);
        return coordinate(*runner, *control);
      }();
      if (!statuses[rank].ok()) (*world)->Abort(rank, statuses[rank].message());
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(statuses[0].ok()) << statuses[0];
  ASSERT_TRUE(statuses[1].ok()) << statuses[1];
  EXPECT_EQ(got_a, expected_a);
  EXPECT_EQ(got_b, expected_b);

  // Every token's top-k experts ran somewhere, once per layer.
  EXPECT_GT(total_tokens[0], 0);
  EXPECT_GT(total_tokens[1], 0);
  for (int64_t rows : rows_per_layer) {
    EXPECT_EQ(rows, top_k * (total_tokens[0] + total_tokens[1]));
  }
  EXPECT_GT(total_bytes[0], 0);
  EXPECT_GT(total_bytes[1], 0);
  // Rank 1 counted its own tokens' routing only.
  int64_t routed = 0;
  for (const RankStepResult& r : rank1_results) {
    for (int64_t n : r.expert_tokens) routed += n;
  }
  EXPECT_EQ(routed, num_layers * top_k * total_tokens[1]);
}

}  // namespace
}  // namespace herd
