// The executor on the real engine (the shipped tiny model): continuous
// batching, chunked prefill and preemption must not change a single greedy
// token against Generate; the queue bound, validation, cancel, deadlines,
// stop ids and shutdown behave as executor.h says; and the same holds with
// two expert-parallel ranks (rank 1 in RunWorkerLoop).
#include "coordinator/scheduler/executor.h"

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
  const int64_t vocab = model_->spec.vocab_size;
  std::vector<std::pair<float, int32_t>> top;
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    const Outcome outcome = Collect(*executor_, ids[i]);
    const auto& prompt = prompts[i];
    const int64_t n = static_cast<int64_t>(prompt.size());
    EXPECT_EQ(outcome.responses_with_prompt_logprobs, 1);
    ASSERT_EQ(static_cast<int64_t>(outcome.prompt_logprobs.size()), n - 1);
    auto cache = reference_engine_->CreateKvCache((n + 15) / 16, 16);
    ASSERT_TRUE(cache.ok());
    std::vector<int32_t> table((n + 15) / 16);
    std::iota(table.begin(), table.end(), 0);
    Batch batch;
    batch.cache = cache->get();
    batch.token_ids = prompt;
    batch.chunks = {{table, 0, n}};
    for (int64_t p = 0; p + 1 < n; ++p) batch.logit_rows.push_back(p);
    std::vector<float> logits(batch.logit_rows.size() * vocab);
    ASSERT_TRUE(reference_engine_->Forward(batch, logits.data()).ok());
    for (int64_t p = 0; p + 1 < n; ++p) {
      const float want =
          cpu::LogProbabilities(logits.data() + p * vocab, vocab, prompt[p + 1], 1, top);
      EXPECT_NEAR(outcome.prompt_logprobs[p].logprob, want, 1e-4) << "token " << p + 1;
      ASSERT_EQ(outcome.prompt_logprobs[p].top.size(), 1u);
      EXPECT_EQ(outcome.prompt_logprobs[p].top[0].token_id, top[0].second) << "token " << p + 1;
    }
  }
  EXPECT_GT(executor_->stats().num_preemptions, 0);
  GenerationRequest without_top = Request({1, 2, 3}, 2);
  without_top.prompt_logprobs = true;
  EXPECT_EQ(executor_->Enqueue(without_top).status().code(), absl::StatusCode::kInvalidArgument);
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

// Two expert-parallel ranks as threads: rank 1 runs the worker loop, rank 0
// the executor; sequences spread over both ranks (data-parallel attention) and
// every greedy token equals the single-process Generate.
TEST_F(ExecutorTest, TwoExpertParallelRanksMatchGenerate) {
  const auto prompts = Prompts(8, model_->spec.vocab_size);
  std::vector<std::vector<int32_t>> references;
  for (const auto& prompt : prompts) references.push_back(Reference(prompt, 10));

  auto world = comm::LocalWorld::Create(2);
  ASSERT_TRUE(world.ok()) << world.status();
  std::vector<std::vector<int32_t>> outputs(prompts.size());
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
        std::vector<RequestId> ids;
        for (const auto& prompt : prompts) {
          HERD_ASSIGN_OR_RETURN(RequestId id, executor->Enqueue(Request(prompt, 10)));
          ids.push_back(id);
        }
        for (size_t i = 0; i < ids.size(); ++i) outputs[i] = Collect(*executor, ids[i]).tokens;
        return executor->Shutdown(absl::Seconds(60));
      }();
      if (!statuses[rank].ok()) (*world)->Abort(rank, statuses[rank].message());
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(statuses[0].ok()) << statuses[0];
  EXPECT_TRUE(statuses[1].ok()) << statuses[1];
  EXPECT_GT(rank1_tokens, 0);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(outputs[i], references[i]) << i;
}

}  // namespace
}  // namespace herd
