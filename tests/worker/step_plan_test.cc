// The control-plane messages of serving: every field survives a round trip,
// and bytes that are not a message (truncated, mutated, another version) are
// InvalidArgument, never a crash or a read out of bounds (run under ASan by
// HERD_SANITIZE=address).
#include "worker/step_plan.h"

#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "gtest/gtest.h"

namespace herd {
namespace {

RankStepPlan FullPlan() {
  RankStepPlan plan;
  plan.step_idx = 0x0123456789abcdefULL;
  plan.shutdown = false;
  PlannedChunk prefill;
  prefill.sequence_id = 42;
  prefill.start_pos = 0;
  prefill.token_ids = {1, 17, 42, 0, 511, std::numeric_limits<int32_t>::max()};
  prefill.block_table = {7, 3};
  prefill.sample = false;
  PlannedChunk decode;
  decode.sequence_id = std::numeric_limits<uint64_t>::max();
  decode.start_pos = 1234567890123;
  decode.token_ids = {-5};
  decode.block_table = {0, 1, 2, 3, 4, std::numeric_limits<int32_t>::min()};
  decode.sample = true;
  decode.sampling.temperature = 0.8f;
  decode.sampling.top_p = 0.95f;
  decode.sampling.seed = 0xfeedfacecafebeefULL;
  decode.sampling.top_logprobs = 5;
  decode.sampling.top_k = 40;
  decode.sampling.min_p = 0.05f;
  decode.sampling.presence_penalty = 0.5f;
  decode.sampling.frequency_penalty = -1.0f;
  decode.sampling.repetition_penalty = 1.2f;
  decode.sampling.logit_bias = {{5, 100.0f}, {6, -0.5f}};
  decode.penalized_prompt = {1, 2};
  decode.penalized_output = {3};
  decode.allowed_tokens = {0x5, ~uint64_t{0}};
  decode.prompt_logprobs = true;
  decode.next_token_id = 77;
  decode.sample_idx = 99;
  PlannedChunk empty;  // no tokens, no blocks: still encodes
  plan.chunks = {prefill, decode, empty};
  plan.placement_version = 7;
  plan.stage_version = 8;
  plan.stage_placement = "{\"format\": \"herd-placement/v1\"}";
  return plan;
}

RankStepResult FullResult() {
  RankStepResult result;
  result.step_idx = 77;
  result.rank = 3;
  result.error = std::string("chunk 2: block 9 is outside\0the cache", 37);
  result.sampled = {{42, 17}, {std::numeric_limits<uint64_t>::max(), -1}};
  result.sampled[0].logprobs =
      SampledLogprobs{-0.25f, {{17, -0.25f}, {3, -std::numeric_limits<float>::infinity()}}};
  result.prompt_logprobs = {{42, 3, {SampledLogprobs{-1.5f, {{9, -0.5f}}}, SampledLogprobs{}}},
                            {7, 0, {}}};
  result.num_tokens = 1025;
  result.layer_expert_rows = {2050, 0, std::numeric_limits<int64_t>::min()};
  result.expert_tokens = {1, 2, 3, 4, 5, 6};
  result.forward_seconds = 0.125;
  result.dispatch_seconds = 1e-9;
  result.combine_seconds = -0.0;
  result.all_to_all_bytes = int64_t{1} << 40;
  result.placement_version = 7;
  result.ready_version = 8;
  result.staged_bytes = int64_t{3} << 33;
  result.stage_error = "rank 3: cannot open model.gguf";
  result.load_wait_seconds = 0.5;
  result.routed_expert_calls = 4100;
  result.skipped_expert_calls = 1999;
  return result;
}

void ExpectSamePlan(const RankStepPlan& a, const RankStepPlan& b) {
  EXPECT_EQ(a.step_idx, b.step_idx);
  EXPECT_EQ(a.shutdown, b.shutdown);
  ASSERT_EQ(a.chunks.size(), b.chunks.size());
  for (size_t i = 0; i < a.chunks.size(); ++i) {
    SCOPED_TRACE(i);
    const PlannedChunk& x = a.chunks[i];
    const PlannedChunk& y = b.chunks[i];
    EXPECT_EQ(x.sequence_id, y.sequence_id);
    EXPECT_EQ(x.start_pos, y.start_pos);
    EXPECT_EQ(x.token_ids, y.token_ids);
    EXPECT_EQ(x.block_table, y.block_table);
    EXPECT_EQ(x.sample, y.sample);
    EXPECT_EQ(x.sampling.temperature, y.sampling.temperature);
    EXPECT_EQ(x.sampling.top_p, y.sampling.top_p);
    EXPECT_EQ(x.sampling.seed, y.sampling.seed);
    EXPECT_EQ(x.sampling.top_logprobs, y.sampling.top_logprobs);
    EXPECT_EQ(x.sampling.top_k, y.sampling.top_k);
    EXPECT_EQ(x.sampling.min_p, y.sampling.min_p);
    EXPECT_EQ(x.sampling.presence_penalty, y.sampling.presence_penalty);
    EXPECT_EQ(x.sampling.frequency_penalty, y.sampling.frequency_penalty);
    EXPECT_EQ(x.sampling.repetition_penalty, y.sampling.repetition_penalty);
    ASSERT_EQ(x.sampling.logit_bias.size(), y.sampling.logit_bias.size());
    for (size_t j = 0; j < x.sampling.logit_bias.size(); ++j) {
      EXPECT_EQ(x.sampling.logit_bias[j].token_id, y.sampling.logit_bias[j].token_id);
      EXPECT_EQ(x.sampling.logit_bias[j].bias, y.sampling.logit_bias[j].bias);
    }
    EXPECT_EQ(x.penalized_prompt, y.penalized_prompt);
    EXPECT_EQ(x.penalized_output, y.penalized_output);
    EXPECT_EQ(x.allowed_tokens, y.allowed_tokens);
    EXPECT_EQ(x.prompt_logprobs, y.prompt_logprobs);
    EXPECT_EQ(x.next_token_id, y.next_token_id);
    EXPECT_EQ(x.sample_idx, y.sample_idx);
  }
  EXPECT_EQ(a.placement_version, b.placement_version);
  EXPECT_EQ(a.stage_version, b.stage_version);
  EXPECT_EQ(a.stage_placement, b.stage_placement);
}

void ExpectSameLogprobs(const SampledLogprobs& x, const SampledLogprobs& y) {
  EXPECT_EQ(x.logprob, y.logprob);
  ASSERT_EQ(x.top.size(), y.top.size());
  for (size_t j = 0; j < x.top.size(); ++j) {
    EXPECT_EQ(x.top[j].token_id, y.top[j].token_id);
    EXPECT_EQ(x.top[j].logprob, y.top[j].logprob);
  }
}

void ExpectSameResult(const RankStepResult& a, const RankStepResult& b) {
  ASSERT_EQ(a.prompt_logprobs.size(), b.prompt_logprobs.size());
  for (size_t i = 0; i < a.prompt_logprobs.size(); ++i) {
    const ChunkLogprobs& x = a.prompt_logprobs[i];
    const ChunkLogprobs& y = b.prompt_logprobs[i];
    EXPECT_EQ(x.sequence_id, y.sequence_id);
    EXPECT_EQ(x.start_pos, y.start_pos);
    ASSERT_EQ(x.entries.size(), y.entries.size());
    for (size_t j = 0; j < x.entries.size(); ++j) ExpectSameLogprobs(x.entries[j], y.entries[j]);
  }
  EXPECT_EQ(a.step_idx, b.step_idx);
  EXPECT_EQ(a.rank, b.rank);
  EXPECT_EQ(a.error, b.error);
  ASSERT_EQ(a.sampled.size(), b.sampled.size());
  for (size_t i = 0; i < a.sampled.size(); ++i) {
    EXPECT_EQ(a.sampled[i].sequence_id, b.sampled[i].sequence_id);
    EXPECT_EQ(a.sampled[i].token_id, b.sampled[i].token_id);
    ASSERT_EQ(a.sampled[i].logprobs.has_value(), b.sampled[i].logprobs.has_value());
    if (a.sampled[i].logprobs) ExpectSameLogprobs(*a.sampled[i].logprobs, *b.sampled[i].logprobs);
  }
  EXPECT_EQ(a.num_tokens, b.num_tokens);
  EXPECT_EQ(a.layer_expert_rows, b.layer_expert_rows);
  EXPECT_EQ(a.expert_tokens, b.expert_tokens);
  EXPECT_EQ(a.forward_seconds, b.forward_seconds);
  EXPECT_EQ(a.dispatch_seconds, b.dispatch_seconds);
  EXPECT_EQ(std::signbit(a.combine_seconds), std::signbit(b.combine_seconds));
  EXPECT_EQ(a.combine_seconds, b.combine_seconds);
  EXPECT_EQ(a.all_to_all_bytes, b.all_to_all_bytes);
  EXPECT_EQ(a.placement_version, b.placement_version);
  EXPECT_EQ(a.ready_version, b.ready_version);
  EXPECT_EQ(a.staged_bytes, b.staged_bytes);
  EXPECT_EQ(a.stage_error, b.stage_error);
  EXPECT_EQ(a.load_wait_seconds, b.load_wait_seconds);
  EXPECT_EQ(a.routed_expert_calls, b.routed_expert_calls);
  EXPECT_EQ(a.skipped_expert_calls, b.skipped_expert_calls);
}

TEST(StepPlanTest, PlanRoundTripsEveryField) {
  const RankStepPlan plan = FullPlan();
  auto decoded = DecodeStepPlan(EncodeStepPlan(plan));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSamePlan(*decoded, plan);

  RankStepPlan shutdown;
  shutdown.step_idx = 5;
  shutdown.shutdown = true;
  decoded = DecodeStepPlan(EncodeStepPlan(shutdown));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSamePlan(*decoded, shutdown);
}

TEST(StepPlanTest, ResultRoundTripsEveryField) {
  const RankStepResult result = FullResult();
  auto decoded = DecodeStepResult(EncodeStepResult(result));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSameResult(*decoded, result);

  decoded = DecodeStepResult(EncodeStepResult(RankStepResult()));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ExpectSameResult(*decoded, RankStepResult());
}

TEST(StepPlanTest, MessagesOfTheOtherKindOrAnotherVersionAreRefused) {
  const std::string plan = EncodeStepPlan(FullPlan());
  const std::string result = EncodeStepResult(FullResult());
  EXPECT_EQ(DecodeStepPlan(result).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeStepResult(plan).status().code(), absl::StatusCode::kInvalidArgument);
  std::string other_version = plan;
  other_version[4] = 9;  // the version's low byte
  EXPECT_EQ(DecodeStepPlan(other_version).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeStepPlan("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeStepPlan(plan + "x").status().code(), absl::StatusCode::kInvalidArgument);
  std::string bad_flag = plan;
  bad_flag[16] = 2;  // shutdown: after magic, version and step_idx
  const absl::Status status = DecodeStepPlan(bad_flag).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("byte 16"), absl::string_view::npos) << status;
}

TEST(StepPlanTest, EveryTruncationIsInvalidArgument) {
  for (const std::string& bytes : {EncodeStepPlan(FullPlan()), EncodeStepResult(FullResult())}) {
    const bool is_plan = bytes == EncodeStepPlan(FullPlan());
    for (size_t n = 0; n < bytes.size(); ++n) {
      // A copy of exactly n bytes, so ASan sees any read past the end.
      const std::string prefix = bytes.substr(0, n);
      const absl::Status status =
          is_plan ? DecodeStepPlan(prefix).status() : DecodeStepResult(prefix).status();
      ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << n << " bytes: " << status;
    }
  }
}

// Random byte flips, insertions of huge counts and truncations: decoding
// either fails with InvalidArgument or yields a message that encodes back to
// the same bytes.
TEST(StepPlanTest, MutatedBytesNeverCrash) {
  std::mt19937 rng(1);
  const std::string plan = EncodeStepPlan(FullPlan());
  const std::string result = EncodeStepResult(FullResult());
  int decoded_ok = 0;
  for (int iteration = 0; iteration < 20000; ++iteration) {
    const bool is_plan = iteration % 2 == 0;
    std::string bytes = is_plan ? plan : result;
    const int num_mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < num_mutations; ++m) {
      const size_t at = rng() % bytes.size();
      switch (rng() % 4) {
        case 0:
          bytes[at] = static_cast<char>(rng());
          break;
        case 1:
          bytes[at] ^= static_cast<char>(1u << (rng() % 8));
          break;
        case 2:  // a count-sized word of 0xff
          bytes.replace(at, std::min<size_t>(4, bytes.size() - at), 4, '\xff');
          break;
        case 3:
          bytes.resize(at + 1);
          break;
      }
    }
    const std::string copy(bytes.data(), bytes.size());
    if (is_plan) {
      auto decoded = DecodeStepPlan(copy);
      if (decoded.ok()) {
        ++decoded_ok;
        EXPECT_EQ(EncodeStepPlan(*decoded), copy);
      } else {
        ASSERT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
      }
    } else {
      auto decoded = DecodeStepResult(copy);
      if (decoded.ok()) {
        ++decoded_ok;
        EXPECT_EQ(EncodeStepResult(*decoded), copy);
      } else {
        ASSERT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
      }
    }
  }
  // Flips inside payload values decode to other valid messages.
  EXPECT_GT(decoded_ok, 0);
}

}  // namespace
}  // namespace herd
