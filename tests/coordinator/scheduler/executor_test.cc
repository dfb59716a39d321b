// The executor on the real engine (the shipped tiny model): continuous
// batching, chunked prefill and preemption must not change a single greedy
// token against Generate; the queue bound, validation, cancel, deadlines,
// stop ids and shutdown behave as executor.h says; and the same holds with
// two expert-parallel ranks (rank 1 in RunWorkerLoop).
#include "coordinator/scheduler/executor.h"

#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "comm/local_world.h"
#include "core/status.h"
#include "gtest/gtest.h"
#include "kernels/sampling.h"
#include "model/model_loader.h"
#include "tests/support/test_support.h"
#include "worker/engine.h"
#include "worker/generator.h"
#include "worker/rank_model.h"
#include "worker/step_runner.h"

namespace herd {
namespace {

using testing::TestDataPath;

constexpr char kModel[] = "llamacpp-tiny/tiny-q4_0.gguf";

// Prompts of different lengths, from a fixed generator.
std::vector<std::vector<int32_t>> Prompts(int count, int64_t vocab) {
  std::vector<std::vector<int32_t>> prompts;
  uint64_t state = 12345;
  for (int i = 0; i < count; ++i) {
    std::vector<int32_t> prompt(3 + (i * 7) % 29);
    for (int32_t& id : prompt) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      id = static_cast<int32_t>((state >> 33) % vocab);
    }
    prompts.push_back(prompt);
  }
  return prompts;
}

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<SampledLogprobs> logprobs;  // one per token, when asked for
  std::vector<SampledLogprobs> prompt_logprobs;
  int responses_with_prompt_logprobs = 0;
  GenerationResponse last;
};

// Collects every response of `id` until it finishes.
Outcome Collect(Executor& executor, RequestId id) {
  Outcome outcome;
  while (true) {
    auto responses = executor.AwaitResponses(id, absl::Seconds(60));
    EXPECT_TRUE(responses.ok()) << responses.status();
    if (!responses.ok()) return outcome;
    EXPECT_FALSE(responses->empty()) << "no news of request " << id << " for 60 s";
    if (responses->empty()) return outcome;
    for (GenerationResponse& r : *responses) {
      outcome.tokens.insert(outcome.tokens.end(), r.token_ids.begin(), r.token_ids.end());
      outcome.logprobs.insert(outcome.logprobs.end(), r.logprobs.begin(), r.logprobs.end());
      if (!r.prompt_logprobs.empty()) {
        ++outcome.responses_with_prompt_logprobs;
        outcome.prompt_logprobs = r.prompt_logprobs;
      }
      outcome.last = r;
    }
    if (outcome.last.finished) return outcome;
  }
}

class ExecutorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = LoadModel(TestDataPath(kModel));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    EngineOptions engine_options;
    engine_options.num_threads = 1;
    auto engine = Engine::Create(*model_, engine_options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    reference_engine_ = std::move(*Engine::Create(*model_, engine_options));
  }

  // Starts an executor over a fresh runner with `num_kv_blocks`.
  void Start(ExecutorOptions options) {
    StepRunnerOptions runner_options;
    runner_options.num_kv_blocks = options.num_kv_blocks;
    runner_options.kv_block_tokens = options.kv_block_tokens;
    auto runner = StepRunner::Create(engine_.get(), runner_options);
    ASSERT_TRUE(runner.ok()) << runner.status();
    runner_ = std::move(*runner);
    if (options.vocab_size == 0) options.vocab_size = model_->spec.vocab_size;
    auto executor = Executor::Create(runner_.get(), nullptr, options, nullptr);
    ASSERT_TRUE(executor.ok()) << executor.status();
    executor_ = std::move(*executor);
  }

  std::vector<int32_t> Reference(const std::vector<int32_t>& prompt, int64_t max_tokens,
                                 const SamplingParams& sampling = {}) {
    GenerateOptions options;
    options.max_new_tokens = max_tokens;
    options.sampling.temperature = sampling.temperature;
    options.sampling.top_p = sampling.top_p;
    options.sampling.seed = sampling.seed;
    auto result = Generate(*reference_engine_, prompt, options);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result->tokens : std::vector<int32_t>{};
  }

  // The reference engine's logits at positions 0 .. n - 2 of `tokens`, all
  // computed in one prefill: [n - 1][vocab].
  std::vector<float> Logits(const std::vector<int32_t>& tokens) {
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t vocab = model_->spec.vocab_size;
    auto cache = reference_engine_->CreateKvCache((n + 15) / 16, 16);
    EXPECT_TRUE(cache.ok()) << cache.status();
    if (!cache.ok()) return {};
    std::vector<int32_t> table((n + 15) / 16);
    std::iota(table.begin(), table.end(), 0);
    Batch batch;
    batch.cache = cache->get();
    batch.token_ids = tokens;
    batch.chunks = {{table, 0, n}};
    for (int64_t p = 0; p + 1 < n; ++p) batch.logit_rows.push_back(p);
    std::vector<float> logits(batch.logit_rows.size() * vocab);
    const absl::Status status = reference_engine_->Forward(batch, logits.data());
    EXPECT_TRUE(status.ok()) << status;
    return logits;
  }

  // Expects scored[j] to be the log probability of tokens[first + j] after
  // the tokens before it, under one reference prefill of `tokens` (1e-4),
  // with the reference's top_k most likely tokens.
  void ExpectScored(const std::vector<int32_t>& tokens, int64_t first,
                    const std::vector<SampledLogprobs>& scored, int top_k) {
    ASSERT_EQ(first + static_cast<int64_t>(scored.size()), static_cast<int64_t>(tokens.size()));
    const std::vector<float> logits = Logits(tokens);
    const int64_t vocab = model_->spec.vocab_size;
    std::vector<std::pair<float, int32_t>> top;
    for (size_t j = 0; j < scored.size(); ++j) {
      const int64_t t = first + static_cast<int64_t>(j);
      const float want =
          cpu::LogProbabilities(logits.data() + (t - 1) * vocab, vocab, tokens[t], top_k, top);
      EXPECT_NEAR(scored[j].logprob, want, 1e-4) << "token " << t;
      ASSERT_EQ(scored[j].top.size(), static_cast<size_t>(top_k)) << "token " << t;
      for (int k = 0; k < top_k; ++k) {
        EXPECT_EQ(scored[j].top[k].token_id, top[k].second) << "token " << t << ", top " << k;
      }
    }
  }

  // Expects the generated tokens' log probabilities to be the reference's
  // (ExpectScored): a wrong key or value anywhere in the context moves them,
  // even where it leaves the greedy choice alone.
  void ExpectReferenceLogprobs(const std::vector<int32_t>& prompt, const Outcome& outcome) {
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), outcome.tokens.begin(), outcome.tokens.end());
    ExpectScored(all, static_cast<int64_t>(prompt.size()), outcome.logprobs, 0);
  }

  // Expects `outcome`'s generated tokens to be greedy Generate's, with the
  // reference's log probabilities.
  void ExpectReferenceOutput(const std::vector<int32_t>& prompt, const Outcome& outcome) {
    EXPECT_EQ(outcome.tokens, Reference(prompt, static_cast<int64_t>(outcome.tokens.size())));
    ExpectReferenceLogprobs(prompt, outcome);
  }

  // Request() asking for the generated tokens' log probabilities.
  GenerationRequest WithLogprobs(const std::vector<int32_t>& prompt, int64_t max_tokens) {
    GenerationRequest request = Request(prompt, max_tokens);
    request.sampling.top_logprobs = 0;
    return request;
  }

  GenerationRequest Request(const std::vector<int32_t>& prompt, int64_t max_tokens) {
    GenerationRequest request;
    request.prompt_ids = prompt;
    request.max_tokens = max_tokens;
    return request;
  }

  std::unique_ptr<Model> model_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<Engine> reference_engine_;
  std::unique_ptr<StepRunner> runner_;
  std::unique_ptr<Executor> executor_;
};

ExecutorOptions RoomyOptions() {
  ExecutorOptions options;
  options.num_kv_blocks = 256;
  options.kv_block_tokens = 16;
  options.max_context_tokens = 512;
  return options;
}

TEST_F(ExecutorTest, ConcurrentGreedyRequestsMatchGenerate) {
  Start(RoomyOptions());
  const auto prompts = Prompts(12, model_->spec.vocab_size);
  std::vector<RequestId> ids;
  for (const auto& prompt : prompts) {
    auto id = executor_->Enqueue(Request(prompt, 12));
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Outcome outcome = Collect(*executor_, ids[i]);
    EXPECT_EQ(outcome.tokens, Reference(prompts[i], 12)) << "request " << i;
    EXPECT_EQ(outcome.last.finish_reason, FinishReason::kLength);
    EXPECT_EQ(outcome.last.prompt_tokens, static_cast<int64_t>(prompts[i].size()));
    EXPECT_EQ(outcome.last.completion_tokens, 12);
  }
  // Finished ids are forgotten.
  EXPECT_EQ(executor_->AwaitResponses(ids[0], absl::ZeroDuration()).status().code(),
            absl::StatusCode::kNotFound);
  const ExecutorStats stats = executor_->stats();
  EXPECT_EQ(stats.num_finished, 12);
  EXPECT_EQ(stats.num_kv_blocks_used, 0);
  EXPECT_EQ(stats.num_running, 0);
}

// 5 tokens per step force chunked prefill; 12 blocks of 4 tokens (48
// positions) cannot hold six of Prompts' sequences of up to 31 + 16 tokens:
// some are preempted and recompute.
ExecutorOptions CrampedOptions() {
  ExecutorOptions options;
  options.num_kv_blocks = 12;
  options.kv_block_tokens = 4;
  options.max_step_tokens = 5;
  options.max_context_tokens = 48;
  return options;
}

TEST_F(ExecutorTest, ChunkedPrefillAndPreemptionKeepEveryToken) {
  Start(CrampedOptions());
  const auto prompts = Prompts(6, model_->spec.vocab_size);
  std::vector<RequestId> ids;
  for (const auto& prompt : prompts) ids.push_back(*executor_->Enqueue(Request(prompt, 16)));
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(Collect(*executor_, ids[i]).tokens, Reference(prompts[i], 16)) << "request " << i;
  }
  EXPECT_GT(executor_->stats().num_preemptions, 0);
  EXPECT_EQ(executor_->stats().num_kv_blocks_used, 0);
}

// Prompt log probabilities (echo) under chunked prefill and preemption: each
// prompt token's comes once, in one response, and is the log softmax of the
// engine's logits at the position before it.
TEST_F(ExecutorTest, PromptLogprobsSurviveChunkedPrefillAndPreemption) {
  Start(CrampedOptions());
  const auto prompts = Prompts(6, model_->spec.vocab_size);
  std::vector<RequestId> ids;
  for (const auto& prompt : prompts) {
    GenerationRequest request = Request(prompt, 16);
    request.sampling.top_logprobs = 1;
    request.prompt_logprobs = true;
    ids.push_back(*executor_->Enqueue(request));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    const Outcome outcome = Collect(*executor_, ids[i]);
    EXPECT_EQ(outcome.responses_with_prompt_logprobs, 1);
    ExpectScored(prompts[i], 1, outcome.prompt_logprobs, 1);
  }
  EXPECT_GT(executor_->stats().num_preemptions, 0);
  GenerationRequest without_top = Request({1, 2, 3}, 2);
  without_top.prompt_logprobs = true;
  EXPECT_EQ(executor_->Enqueue(without_top).status().code(), absl::StatusCode::kInvalidArgument);
}

// max_tokens 0 scores the prompt only (OpenAI's legacy loglikelihood form):
// no token, finish reason length, every prompt position scored once, in
// chunks of 5 tokens; without prompt log probabilities it is refused.
TEST_F(ExecutorTest, MaxTokensZeroScoresThePromptOnly) {
  Start(CrampedOptions());
  const auto prompts = Prompts(6, model_->spec.vocab_size);
  std::vector<RequestId> ids;
  for (const auto& prompt : prompts) {
    GenerationRequest request = Request(prompt, 0);
    request.sampling.top_logprobs = 0;
    request.prompt_logprobs = true;
    ids.push_back(*executor_->Enqueue(request));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    const Outcome outcome = Collect(*executor_, ids[i]);
    EXPECT_TRUE(outcome.tokens.empty());
    EXPECT_EQ(outcome.last.finish_reason, FinishReason::kLength);
    EXPECT_EQ(outcome.last.completion_tokens, 0);
    ExpectScored(prompts[i], 1, outcome.prompt_logprobs, 0);
  }
  EXPECT_EQ(executor_->stats().num_kv_blocks_used, 0);
  EXPECT_EQ(executor_->Enqueue(Request(prompts[0], 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ExecutorTest, SeededSamplingIsTheSameUnderPreemption) {
  SamplingParams sampling;
  sampling.temperature = 0.9f;
  sampling.top_p = 0.95f;
  sampling.seed = 77;
  const auto prompts = Prompts(6, model_->spec.vocab_size);
  auto run = [&](ExecutorOptions options) {
    Start(options);
    std::vector<RequestId> ids;
    for (const auto& prompt : prompts) {
      GenerationRequest request = Request(prompt, 16);
      request.sampling = sampling;
      ids.push_back(*executor_->Enqueue(request));
    }
    std::vector<std::vector<int32_t>> tokens;
    for (RequestId id : ids) tokens.push_back(Collect(*executor_, id).tokens);
    return tokens;
  };
  const auto roomy = run(RoomyOptions());
  ExecutorOptions tight;
  tight.num_kv_blocks = 12;
  tight.kv_block_tokens = 4;
  tight.max_step_tokens = 5;
  tight.max_context_tokens = 48;
  const auto tight_tokens = run(tight);
  EXPECT_GT(executor_->stats().num_preemptions, 0);
  EXPECT_EQ(roomy, tight_tokens);
}

TEST_F(ExecutorTest, RejectsRequestsThatCanNeverRun) {
  Start(RoomyOptions());
  const int64_t vocab = model_->spec.vocab_size;
  auto code = [&](GenerationRequest request) {
    return executor_->Enqueue(std::move(request)).status().code();
  };
  EXPECT_EQ(code(Request({}, 4)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request({1, static_cast<int32_t>(vocab)}, 4)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request({1, -1}, 4)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request({1, 2}, 0)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request({1, 2}, 511)), absl::StatusCode::kInvalidArgument);  // 513 > 512
  GenerationRequest bad_top_p = Request({1, 2}, 4);
  bad_top_p.sampling.top_p = 0;
  EXPECT_EQ(code(bad_top_p), absl::StatusCode::kInvalidArgument);
  GenerationRequest bad_temperature = Request({1, 2}, 4);
  bad_temperature.sampling.temperature = -1;
  EXPECT_EQ(code(bad_temperature), absl::StatusCode::kInvalidArgument);
  GenerationRequest bad_stop = Request({1, 2}, 4);
  bad_stop.stop_ids = {static_cast<int32_t>(vocab)};
  EXPECT_EQ(code(bad_stop), absl::StatusCode::kInvalidArgument);
  // Still serving.
  const auto id = executor_->Enqueue(Request({1, 2, 3}, 3));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(Collect(*executor_, *id).tokens, Reference({1, 2, 3}, 3));
}

TEST_F(ExecutorTest, KvCacheTooSmallForTheRequestIsInvalid) {
  ExecutorOptions options = RoomyOptions();
  options.num_kv_blocks = 2;  // 32 positions
  Start(options);
  EXPECT_EQ(executor_->Enqueue(Request({1, 2, 3}, 40)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(ExecutorTest, FullQueueIsResourceExhaustedAndAcceptedRequestsComplete) {
  ExecutorOptions options = RoomyOptions();
  options.max_waiting_requests = 2;
  options.max_running_per_rank = 1;
  Start(options);
  std::vector<RequestId> accepted;
  int refused = 0;
  for (int i = 0; i < 20; ++i) {
    auto id = executor_->Enqueue(Request({1, 2, 3, static_cast<int32_t>(i)}, 8));
    if (id.ok()) {
      accepted.push_back(*id);
    } else {
      EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted) << id.status();
      ++refused;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GE(accepted.size(), 2u);
  for (RequestId id : accepted) {
    const Outcome outcome = Collect(*executor_, id);
    EXPECT_EQ(outcome.tokens.size(), 8u);
    EXPECT_EQ(outcome.last.finish_reason, FinishReason::kLength);
  }
}

TEST_F(ExecutorTest, CancelFreesTheSequence) {
  Start(RoomyOptions());
  const auto id = executor_->Enqueue(Request({5, 6, 7}, 400));
  ASSERT_TRUE(id.ok());
  // Wait for the first token, then cancel.
  auto first = executor_->AwaitResponses(*id, absl::Seconds(30));
  ASSERT_TRUE(first.ok());
  executor_->Cancel(*id);
  const Outcome outcome = Collect(*executor_, *id);
  EXPECT_EQ(outcome.last.finish_reason, FinishReason::kAbort);
  EXPECT_EQ(outcome.last.status.code(), absl::StatusCode::kCancelled);
  EXPECT_LT(outcome.last.completion_tokens, 400);
  EXPECT_EQ(executor_->stats().num_kv_blocks_used, 0);
  executor_->Cancel(*id);  // finished: ignored
  executor_->Cancel(999999);
}

TEST_F(ExecutorTest, FinishAsStoppedEndsWithStop) {
  Start(RoomyOptions());
  const auto id = executor_->Enqueue(Request({5, 6, 7}, 400));
  ASSERT_TRUE(id.ok());
  auto first = executor_->AwaitResponses(*id, absl::Seconds(30));
  ASSERT_TRUE(first.ok());
  executor_->FinishAsStopped(*id);
  executor_->Cancel(*id);  // the first request to end it wins
  const Outcome outcome = Collect(*executor_, *id);
  EXPECT_EQ(outcome.last.finish_reason, FinishReason::kStop);
  EXPECT_TRUE(outcome.last.status.ok()) << outcome.last.status;
  EXPECT_LT(outcome.last.completion_tokens, 400);
  EXPECT_EQ(executor_->stats().num_kv_blocks_used, 0);
}

TEST_F(ExecutorTest, DeadlineEndsTheRequest) {
  // The tiny model is too fast to be caught mid-run: one request is past its
  // deadline on arrival, the other's is far away.
  Start(RoomyOptions());
  GenerationRequest late = Request({5, 6, 7}, 100);
  late.deadline = absl::Now();
  GenerationRequest timely = Request({5, 6, 7}, 100);
  timely.deadline = absl::Now() + absl::Hours(1);
  const auto late_id = executor_->Enqueue(late);
  const auto timely_id = executor_->Enqueue(timely);
  ASSERT_TRUE(late_id.ok() && timely_id.ok());
  const Outcome late_outcome = Collect(*executor_, *late_id);
  EXPECT_EQ(late_outcome.last.finish_reason, FinishReason::kAbort);
  EXPECT_EQ(late_outcome.last.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(late_outcome.tokens.empty());
  const Outcome timely_outcome = Collect(*executor_, *timely_id);
  EXPECT_EQ(timely_outcome.last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(timely_outcome.tokens.size(), 100u);
}

TEST_F(ExecutorTest, StopIdEndsGenerationAfterIt) {
  Start(RoomyOptions());
  const std::vector<int32_t> prompt = {9, 8, 7, 6};
  const std::vector<int32_t> reference = Reference(prompt, 10);
  GenerationRequest request = Request(prompt, 10);
  request.stop_ids = {reference[3]};
  const Outcome outcome = Collect(*executor_, *executor_->Enqueue(request));
  // The first occurrence of the stop id ends it, included.
  size_t expected = 0;
  while (reference[expected] != reference[3]) ++expected;
  EXPECT_EQ(outcome.tokens,
            std::vector<int32_t>(reference.begin(), reference.begin() + expected + 1));
  EXPECT_EQ(outcome.last.finish_reason, FinishReason::kStop);
}

TEST_F(ExecutorTest, ShutdownDrainsAcceptedRequestsThenRefuses) {
  Start(RoomyOptions());
  const auto prompts = Prompts(4, model_->spec.vocab_size);
  std::vector<RequestId> ids;
  for (const auto& prompt : prompts) ids.push_back(*executor_->Enqueue(Request(prompt, 20)));
  std::vector<Outcome> outcomes(ids.size());
  std::thread collector([&] {
    for (size_t i = 0; i < ids.size(); ++i) outcomes[i] = Collect(*executor_, ids[i]);
  });
  EXPECT_TRUE(executor_->Shutdown(absl::Seconds(120)).ok());
  collector.join();
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(outcomes[i].tokens, Reference(prompts[i], 20));
  }
  EXPECT_EQ(executor_->Enqueue(Request({1, 2}, 2)).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(ExecutorTest, ShutdownPastTheDrainTimeoutCancels) {
  ExecutorOptions options = RoomyOptions();
  options.max_running_per_rank = 1;
  Start(options);
  std::vector<RequestId> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(*executor_->Enqueue(Request({1, 2, 3}, 480)));
  std::vector<Outcome> outcomes(ids.size());
  std::thread collector([&] {
    for (size_t i = 0; i < ids.size(); ++i) outcomes[i] = Collect(*executor_, ids[i]);
  });
  EXPECT_EQ(executor_->Shutdown(absl::ZeroDuration()).code(), absl::StatusCode::kDeadlineExceeded);
  collector.join();
  int cancelled = 0;
  for (const Outcome& outcome : outcomes) {
    ASSERT_TRUE(outcome.last.finished);
    if (outcome.last.finish_reason == FinishReason::kAbort) {
      EXPECT_EQ(outcome.last.status.code(), absl::StatusCode::kCancelled);
      ++cancelled;
    }
  }
  EXPECT_GT(cancelled, 0);
}

// Prefix caching: requests that share leading tokens reuse the blocks the
// first computed, only whole blocks of exactly the same leading tokens, and
// not one greedy token changes.
TEST_F(ExecutorTest, PrefixCacheReusesWholeBlocksOfTheSameLeadingTokens) {
  Start(RoomyOptions());  // blocks of 16 tokens
  const int64_t vocab = model_->spec.vocab_size;
  const auto randoms = Prompts(8, vocab);
  std::vector<int32_t> system;  // 40 tokens: two whole blocks and 8 more
  for (const auto& p : randoms) system.insert(system.end(), p.begin(), p.end());
  system.resize(40);
  auto with_suffix = [&](const std::vector<int32_t>& prefix, int i) {
    std::vector<int32_t> prompt = prefix;
    prompt.insert(prompt.end(), randoms[i].begin(), randoms[i].end());
    return prompt;
  };
  // The first computes the system prompt; its blocks are cached once done.
  const Outcome first =
      Collect(*executor_, *executor_->Enqueue(WithLogprobs(with_suffix(system, 1), 8)));
  ExpectReferenceOutput(with_suffix(system, 1), first);
  EXPECT_EQ(first.last.cached_prompt_tokens, 0);

  // Then three at once: each reuses the two whole blocks of the system prompt.
  std::vector<std::vector<int32_t>> prompts = {with_suffix(system, 2), with_suffix(system, 3),
                                               with_suffix(system, 4)};
  // The same second block after another first block is another prefix.
  std::vector<int32_t> other_first = system;
  other_first[0] = (other_first[0] + 1) % static_cast<int32_t>(vocab);
  prompts.push_back(with_suffix(other_first, 5));
  // A prompt that is exactly the cached blocks computes its last token again.
  prompts.emplace_back(system.begin(), system.begin() + 32);
  const std::vector<int64_t> cached = {32, 32, 32, 0, 16};
  const ExecutorStats before = executor_->stats();
  std::vector<RequestId> ids;
  for (const auto& prompt : prompts) ids.push_back(*executor_->Enqueue(WithLogprobs(prompt, 8)));
  int64_t prompt_tokens = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const Outcome outcome = Collect(*executor_, ids[i]);
    SCOPED_TRACE(::testing::Message() << "request " << i);
    ExpectReferenceOutput(prompts[i], outcome);
    EXPECT_EQ(outcome.last.cached_prompt_tokens, cached[i]) << "request " << i;
    prompt_tokens += static_cast<int64_t>(prompts[i].size());
  }
  const ExecutorStats stats = executor_->stats();
  EXPECT_EQ(stats.prefix_cache_queried_tokens - before.prefix_cache_queried_tokens, prompt_tokens);
  EXPECT_EQ(stats.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens, 3 * 32 + 16);
  EXPECT_EQ(stats.num_kv_blocks_used, 0);
  EXPECT_GT(stats.num_kv_blocks_cached, 0);
}

// The next turn of a conversation (prompt + reply + a new message) reuses the
// blocks of the earlier prompt and of the generated reply.
TEST_F(ExecutorTest, PrefixCacheCoversGeneratedTokensOfAnEarlierTurn) {
  Start(RoomyOptions());
  const auto prompts = Prompts(4, model_->spec.vocab_size);
  const std::vector<int32_t>& turn1 = prompts[3];  // 24 tokens
  const Outcome reply = Collect(*executor_, *executor_->Enqueue(WithLogprobs(turn1, 20)));
  ASSERT_EQ(reply.tokens.size(), 20u);
  std::vector<int32_t> turn2 = turn1;
  turn2.insert(turn2.end(), reply.tokens.begin(), reply.tokens.end());
  turn2.insert(turn2.end(), prompts[1].begin(), prompts[1].end());
  // 24 + 20 = 44 positions, of which the first 43 were computed (the last
  // reply token never was): two whole blocks.
  const Outcome next = Collect(*executor_, *executor_->Enqueue(WithLogprobs(turn2, 8)));
  EXPECT_EQ(next.last.cached_prompt_tokens, 32);
  ExpectReferenceOutput(turn2, next);
}

// Without prefix caching nothing is reused; a request that scores its prompt
// (echo) computes every position even with it.
TEST_F(ExecutorTest, NoPrefixReuseWhenOffOrWhenThePromptIsScored) {
  const auto prompts = Prompts(6, model_->spec.vocab_size);
  std::vector<int32_t> prompt = prompts[4];
  prompt.insert(prompt.end(), prompts[5].begin(), prompts[5].end());  // 35 tokens
  ExecutorOptions off = RoomyOptions();
  off.prefix_caching = false;
  Start(off);
  for (int i = 0; i < 2; ++i) {
    const Outcome outcome = Collect(*executor_, *executor_->Enqueue(WithLogprobs(prompt, 4)));
    EXPECT_EQ(outcome.last.cached_prompt_tokens, 0);
    ExpectReferenceOutput(prompt, outcome);
  }
  EXPECT_EQ(executor_->stats().prefix_cache_hit_tokens, 0);
  EXPECT_EQ(executor_->stats().num_kv_blocks_cached, 0);

  Start(RoomyOptions());
  Collect(*executor_, *executor_->Enqueue(WithLogprobs(prompt, 4)));
  GenerationRequest scored = WithLogprobs(prompt, 4);
  scored.prompt_logprobs = true;
  const Outcome outcome = Collect(*executor_, *executor_->Enqueue(scored));
  EXPECT_EQ(outcome.last.cached_prompt_tokens, 0);
  EXPECT_EQ(outcome.prompt_logprobs.size(), prompt.size() - 1);
  EXPECT_EQ(
      Collect(*executor_, *executor_->Enqueue(WithLogprobs(prompt, 4))).last.cached_prompt_tokens,
      32);
}

// Requests with the same prompt arriving together (the n choices of one API
// request, a burst with one system prompt): the others wait for the first to
// compute the prompt and take it from the cache; one AwaitResponses call
// follows them all.
TEST_F(ExecutorTest, RequestsArrivingTogetherComputeASharedPromptOnce) {
  Start(RoomyOptions());
  const auto prompts = Prompts(8, model_->spec.vocab_size);
  std::vector<int32_t> prompt = prompts[6];
  prompt.insert(prompt.end(), prompts[7].begin(), prompts[7].end());  // 44 tokens
  std::vector<RequestId> ids = {*executor_->Enqueue(WithLogprobs(prompt, 6))};
  for (int i = 0; i < 3; ++i) ids.push_back(*executor_->Enqueue(WithLogprobs(prompt, 6)));
  std::map<RequestId, Outcome> outcomes;
  std::vector<RequestId> open = ids;
  while (!open.empty()) {
    auto responses = executor_->AwaitResponses(open, absl::Seconds(60));
    ASSERT_TRUE(responses.ok()) << responses.status();
    ASSERT_FALSE(responses->empty()) << "no news for 60 s";
    for (GenerationResponse& r : *responses) {
      Outcome& outcome = outcomes[r.request_id];
      outcome.tokens.insert(outcome.tokens.end(), r.token_ids.begin(), r.token_ids.end());
      outcome.logprobs.insert(outcome.logprobs.end(), r.logprobs.begin(), r.logprobs.end());
      outcome.last = r;
      if (r.finished) open.erase(std::find(open.begin(), open.end(), r.request_id));
    }
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "choice " << i);
    EXPECT_EQ(outcomes[ids[i]].last.cached_prompt_tokens, i == 0 ? 0 : 32);
    ExpectReferenceOutput(prompt, outcomes[ids[i]]);
  }
  EXPECT_EQ(executor_->AwaitResponses(ids, absl::ZeroDuration()).status().code(),
            absl::StatusCode::kNotFound);
}

// Allows script[i] as the i-th token, then nothing; the output may end
// (stop ids allowed too) after `may_end_after` tokens.
class ScriptedConstraint : public TokenConstraint {
 public:
  explicit ScriptedConstraint(std::vector<int32_t> script, size_t may_end_after = SIZE_MAX)
      : script_(std::move(script)), may_end_after_(may_end_after) {}
  int64_t Allowed(absl::Span<uint64_t> mask) const override {
    if (next_ >= script_.size()) return 0;
    mask[script_[next_] / 64] |= uint64_t{1} << (script_[next_] % 64);
    return 1;
  }
  void Accept(int32_t token_id) override {
    // Past the script, or where the output may end, a stop id may come too
    // (what the executor allows then).
    if (next_ < script_.size() && !may_end()) EXPECT_EQ(token_id, script_[next_]);
    ++next_;
  }
  bool complete() const override { return false; }
  bool may_end() const override { return next_ >= may_end_after_; }

 private:
  std::vector<int32_t> script_;
  size_t may_end_after_;
  size_t next_ = 0;
};

// Guided decoding: the mask travels with the sampling chunk and nothing else
// is sampled (greedy and seeded sampling alike); reported log probabilities
// stay the raw ones; a constraint that allows nothing leaves the stop ids,
// and without them ends the request; one whose output may end allows them
// beside its tokens.
TEST_F(ExecutorTest, AConstraintDecidesWhatIsSampled) {
  Start(RoomyOptions());
  const auto prompts = Prompts(3, model_->spec.vocab_size);
  const std::vector<int32_t> script = {7, 300, 7, 42};
  for (const float temperature : {0.0f, 1.0f}) {
    SCOPED_TRACE(::testing::Message() << "temperature " << temperature);
    GenerationRequest request = WithLogprobs(prompts[2], 16);
    request.sampling.temperature = temperature;
    request.sampling.seed = 3;
    request.stop_ids = {5};
    request.constraint = std::make_shared<ScriptedConstraint>(script);
    const Outcome outcome = Collect(*executor_, *executor_->Enqueue(request));
    EXPECT_EQ(outcome.tokens, (std::vector<int32_t>{7, 300, 7, 42, 5}));
    EXPECT_EQ(outcome.last.finish_reason, FinishReason::kStop);
    // The raw distribution's log probability of each forced token.
    ExpectReferenceLogprobs(prompts[2], outcome);
  }
  GenerationRequest no_stop = Request(prompts[1], 16);
  no_stop.constraint = std::make_shared<ScriptedConstraint>(script);
  const Outcome ended = Collect(*executor_, *executor_->Enqueue(no_stop));
  EXPECT_EQ(ended.tokens, script);
  EXPECT_EQ(ended.last.finish_reason, FinishReason::kStop);
  GenerationRequest nothing = Request(prompts[1], 16);
  nothing.constraint = std::make_shared<ScriptedConstraint>(std::vector<int32_t>{});
  EXPECT_EQ(executor_->Enqueue(nothing).status().code(), absl::StatusCode::kInvalidArgument);
  // Where the output may end, the stop ids are allowed beside the script's
  // token: biased up, the stop id comes there and not before.
  GenerationRequest may_end = Request(prompts[0], 16);
  may_end.stop_ids = {5};
  may_end.sampling.logit_bias = {{5, 100.0f}};
  may_end.constraint = std::make_shared<ScriptedConstraint>(script, /*may_end_after=*/2);
  const Outcome stopped = Collect(*executor_, *executor_->Enqueue(may_end));
  EXPECT_EQ(stopped.tokens, (std::vector<int32_t>{7, 300, 5}));
  EXPECT_EQ(stopped.last.finish_reason, FinishReason::kStop);
}

// Under a cramped cache, preempted sequences come back through their cached
// blocks (while they are not reused) and cached blocks are reused for new
// ones: every token still matches.
TEST_F(ExecutorTest, PrefixCacheUnderPreemptionKeepsEveryToken) {
  Start(CrampedOptions());
  const auto randoms = Prompts(6, model_->spec.vocab_size);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> prompt(randoms[5].begin(), randoms[5].begin() + 9);  // shared
    prompt.insert(prompt.end(), randoms[i].begin(), randoms[i].begin() + 3 + i);
    prompts.push_back(prompt);
  }
  std::vector<RequestId> ids;
  for (const auto& prompt : prompts) ids.push_back(*executor_->Enqueue(WithLogprobs(prompt, 16)));
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    ExpectReferenceOutput(prompts[i], Collect(*executor_, ids[i]));
  }
  const ExecutorStats stats = executor_->stats();
  EXPECT_GT(stats.num_preemptions, 0);
  EXPECT_GT(stats.prefix_cache_hit_tokens, 0);
  EXPECT_EQ(stats.num_kv_blocks_used, 0);
}

// Runs `body` on rank 0's executor with two expert-parallel ranks as threads
// (rank 1 in the worker loop), then shuts down; returns the tokens rank 1's
// sequences ran through the first layer.
int64_t RunOnTwoRanks(const std::function<void(Executor&)>& body) {
  auto world = comm::LocalWorld::Create(2);
  EXPECT_TRUE(world.ok()) << world.status();
  if (!world.ok()) return 0;
  std::vector<absl::Status> statuses(2);
  int64_t rank1_tokens = 0;
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      statuses[rank] = [&]() -> absl::Status {
        HERD_ASSIGN_OR_RETURN(auto control, (*world)->CreateControlChannel(rank));
        HERD_ASSIGN_OR_RETURN(auto comm, (*world)->CreateCommunicator(rank));
        HERD_ASSIGN_OR_RETURN(RankModel rank_model,
                              LoadModelForRank(TestDataPath(kModel), comm.get(), std::nullopt));
        EngineOptions engine_options;
        engine_options.num_threads = 1;
        engine_options.expert_parallelism = {comm.get(), &*rank_model.placement, absl::Seconds(60)};
        HERD_ASSIGN_OR_RETURN(auto engine, Engine::Create(*rank_model.model, engine_options));
        StepRunnerOptions runner_options;
        runner_options.num_kv_blocks = 64;
        runner_options.kv_block_tokens = 8;
        HERD_ASSIGN_OR_RETURN(auto runner, StepRunner::Create(engine.get(), runner_options));
        if (rank == 1) {
          engine->SetRoutingObserver(
              [&](int layer, int64_t num_tokens, int64_t, const int32_t*, const float*) {
                if (layer == 0) rank1_tokens += num_tokens;
              });
          return RunWorkerLoop(*runner, *control);
        }
        ExecutorOptions options;
        options.num_kv_blocks = 64;
        options.kv_block_tokens = 8;
        options.max_context_tokens = 512;
        options.vocab_size = rank_model.model->spec.vocab_size;
        HERD_ASSIGN_OR_RETURN(auto executor,
                              Executor::Create(runner.get(), control.get(), options, nullptr));
        body(*executor);
        return executor->Shutdown(absl::Seconds(60));
      }();
      if (!statuses[rank].ok()) (*world)->Abort(rank, statuses[rank].message());
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(statuses[0].ok()) << statuses[0];
  EXPECT_TRUE(statuses[1].ok()) << statuses[1];
  return rank1_tokens;
}

// Sequences spread over both ranks (data-parallel attention) and every greedy
// token equals the single-process Generate.
TEST_F(ExecutorTest, TwoExpertParallelRanksMatchGenerate) {
  const auto prompts = Prompts(8, model_->spec.vocab_size);
  std::vector<std::vector<int32_t>> references;
  for (const auto& prompt : prompts) references.push_back(Reference(prompt, 10));
  std::vector<std::vector<int32_t>> outputs(prompts.size());
  const int64_t rank1_tokens = RunOnTwoRanks([&](Executor& executor) {
    std::vector<RequestId> ids;
    for (const auto& prompt : prompts) ids.push_back(*executor.Enqueue(Request(prompt, 10)));
    for (size_t i = 0; i < ids.size(); ++i) outputs[i] = Collect(executor, ids[i]).tokens;
  });
  EXPECT_GT(rank1_tokens, 0);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(outputs[i], references[i]) << i;
}

// Each rank caches what it computed: a request goes to the rank holding its
// prefix even where the most-free-blocks rule would pick the other.
TEST_F(ExecutorTest, TwoRanksSendARequestToTheRankCachingItsPrefix) {
  const auto prompts = Prompts(8, model_->spec.vocab_size);
  std::vector<int32_t> system;  // 3 blocks of 8 tokens and 2 more
  for (const auto& p : prompts) system.insert(system.end(), p.begin(), p.end());
  system.resize(26);
  auto with_suffix = [&](int i) {
    std::vector<int32_t> prompt = system;
    prompt.insert(prompt.end(), prompts[i].begin(), prompts[i].end());
    return prompt;
  };
  std::vector<Outcome> outcomes;
  RunOnTwoRanks([&](Executor& executor) {
    // A long request takes rank 0 (both equally free: the lower rank), so the
    // first with the system prompt goes to rank 1, which caches it.
    const RequestId other = *executor.Enqueue(WithLogprobs(prompts[7], 200));
    const RequestId first = *executor.Enqueue(WithLogprobs(with_suffix(1), 4));
    outcomes.push_back(Collect(executor, first));
    outcomes.push_back(Collect(executor, other));
    // Both ranks are as free again; the next ones go where the prefix is.
    for (int i = 2; i < 5; ++i) {
      outcomes.push_back(Collect(executor, *executor.Enqueue(WithLogprobs(with_suffix(i), 4))));
    }
  });
  ASSERT_EQ(outcomes.size(), 5u);
  EXPECT_EQ(outcomes[0].last.cached_prompt_tokens, 0);
  ExpectReferenceOutput(with_suffix(1), outcomes[0]);
  ExpectReferenceOutput(prompts[7], outcomes[1]);
  for (int i = 2; i < 5; ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    EXPECT_EQ(outcomes[i].last.cached_prompt_tokens, 24);
    ExpectReferenceOutput(with_suffix(i), outcomes[i]);
  }
}

}  // namespace
}  // namespace herd
