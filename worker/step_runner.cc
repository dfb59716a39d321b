#include "worker/step_runner.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "core/placement.h"
#include "core/status.h"
#include "kernels/sampling.h"

namespace herd {
namespace {

// Sebastiano Vigna's splitmix64 finaliser: nearby inputs give unrelated outputs.
uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The random stream of a sequence's sample_idx-th token.
uint64_t TokenSeed(uint64_t seed, int64_t sample_idx) {
  return SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(sample_idx));
}

absl::Status ValidateChunk(const PlannedChunk& c, int64_t vocab_size) {
  if (c.token_ids.empty()) return absl::InvalidArgumentError("the chunk has no tokens");
  if (c.prompt_logprobs) {
    if (c.sampling.top_logprobs < 0 || c.sampling.top_logprobs > kMaxTopLogprobs) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt log probabilities need top_logprobs in [0, ", kMaxTopLogprobs,
                       "], got ", c.sampling.top_logprobs));
    }
    if (c.next_token_id < -1 || c.next_token_id >= vocab_size ||
        (c.sample && c.next_token_id >= 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "next_token_id ", c.next_token_id, " (a sampling chunk has none; else -1 or an id)"));
    }
  }
  if (!c.sample) return absl::OkStatus();
  if (!std::isfinite(c.sampling.temperature) || c.sampling.temperature < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be finite and >= 0, got ", c.sampling.temperature));
  }
  if (!(c.sampling.top_p > 0.0f && c.sampling.top_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_p must be in (0, 1], got ", c.sampling.top_p));
  }
  if (c.sample_idx < 0) {
    return absl::InvalidArgumentError(absl::StrCat("sample_idx must be >= 0, got ", c.sample_idx));
  }
  if (c.sampling.top_k < 0) {
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", c.sampling.top_k));
  }
  if (!(c.sampling.min_p >= 0.0f && c.sampling.min_p <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_p must be in [0, 1], got ", c.sampling.min_p));
  }
  if (!(std::fabs(c.sampling.presence_penalty) <= 2.0f &&
        std::fabs(c.sampling.frequency_penalty) <= 2.0f && c.sampling.repetition_penalty > 0.0f &&
        std::isfinite(c.sampling.repetition_penalty))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "penalties: presence and frequency must be in [-2, 2] and repetition > 0, got ",
        c.sampling.presence_penalty, ", ", c.sampling.frequency_penalty, ", ",
        c.sampling.repetition_penalty));
  }
  for (const TokenBias& b : c.sampling.logit_bias) {
    if (b.token_id < 0 || b.token_id >= vocab_size || !(std::fabs(b.bias) <= 100.0f)) {
      return absl::InvalidArgumentError(absl::StrCat("logit bias ", b.bias, " of token ",
                                                     b.token_id,
                                                     " (ids in the vocabulary, "
                                                     "biases in [-100, 100])"));
    }
  }
  for (const std::vector<int32_t>* ids : {&c.penalized_prompt, &c.penalized_output}) {
    for (const int32_t id : *ids) {
      if (id < 0 || id >= vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("penalized token ", id, " is outside the vocabulary"));
      }
    }
  }
  if (c.sampling.top_logprobs < -1 || c.sampling.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs must be in [-1, ", kMaxTopLogprobs,
                                                   "], got ", c.sampling.top_logprobs));
  }
  if (!c.allowed_tokens.empty()) {
    if (static_cast<int64_t>(c.allowed_tokens.size()) != (vocab_size + 63) / 64) {
      return absl::InvalidArgumentError(absl::StrCat("the allowed-token mask has ",
                                                     c.allowed_tokens.size(), " words, not ",
                                                     (vocab_size + 63) / 64));
    }
    bool any = false;
    for (int64_t t = 0; t < vocab_size && !any; ++t)
      any = (c.allowed_tokens[t / 64] >> (t % 64)) & 1;
    if (!any) return absl::InvalidArgumentError("the allowed-token mask allows no token");
  }
  return absl::OkStatus();
}

}  // namespace

StepRunner::StepRunner(ForwardEngine* engine, const StepRunnerOptions& options,
                       std::unique_ptr<KvCache> cache)
    : engine_(engine),
      placement_switch_(engine->placement_switch()),
      options_(options),
      cache_(std::move(cache)) {}

StepRunner::~StepRunner() {
  if (options_.count_expert_tokens) engine_->SetRoutingObserver(nullptr);
}

absl::StatusOr<std::unique_ptr<StepRunner>> StepRunner::Create(ForwardEngine* engine,
                                                               const StepRunnerOptions& options) {
  if (engine == nullptr) return absl::InvalidArgumentError("a step runner needs an engine");
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                        engine->CreateKvCache(options.num_kv_blocks, options.kv_block_tokens));
  std::unique_ptr<StepRunner> runner(new StepRunner(engine, options, std::move(cache)));
  if (options.count_expert_tokens) {
    const ModelSpec& s = engine->spec();
    StepRunner* self = runner.get();
    self->expert_tokens_.assign(s.num_layers * s.num_experts, 0);
    engine->SetRoutingObserver(
        [self, num_experts = s.num_experts](int layer_idx, int64_t num_tokens, int64_t top_k,
                                            const int32_t* expert_idx, const float* /*weights*/) {
          int64_t* counts = self->expert_tokens_.data() + layer_idx * num_experts;
          for (int64_t slot = 0; slot < num_tokens * top_k; ++slot) {
            if (expert_idx[slot] >= 0) ++counts[expert_idx[slot]];  // -1: skipped
          }
        });
  }
  return runner;
}

int64_t StepRunner::KvBlocksForBytes(const ModelSpec& spec, int64_t kv_cache_bytes,
                                     int64_t kv_block_tokens, DType type) {
  const int64_t block_bytes = KvCache::BytesPerBlock(spec, kv_block_tokens, type);
  if (block_bytes <= 0 || kv_cache_bytes <= 0) return 0;
  return std::min<int64_t>(kv_cache_bytes / block_bytes, std::numeric_limits<int32_t>::max());
}

// The log probabilities of `token` and of the top_logprobs most likely
// tokens under one row of logits.
SampledLogprobs ScoreToken(const float* logits, int64_t vocab, int32_t token, int32_t top_logprobs,
                           std::vector<std::pair<float, int32_t>>& scratch) {
  const int k = static_cast<int>(std::min<int64_t>(top_logprobs, vocab));
  SampledLogprobs scored;
  scored.logprob = cpu::LogProbabilities(logits, vocab, token, k, scratch);
  for (const auto& [logprob, id] : scratch) scored.top.push_back({id, logprob});
  return scored;
}

// The positions of chunk c whose next token's log probability it asks for:
// all but the last, and the last too when its next token is given.
int64_t PromptLogprobRows(const PlannedChunk& c) {
  if (!c.prompt_logprobs) return 0;
  return static_cast<int64_t>(c.token_ids.size()) - 1 + (c.next_token_id >= 0 ? 1 : 0);
}

absl::Status StepRunner::BuildBatch(const RankStepPlan& plan, Batch& batch,
                                    std::vector<const PlannedChunk*>& to_sample,
                                    std::vector<const PlannedChunk*>& to_score) const {
  batch.cache = cache_.get();
  std::vector<int64_t> chunk_begin;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const PlannedChunk& c = plan.chunks[i];
    absl::Status chunk_status = ValidateChunk(c, engine_->spec().vocab_size);
    if (!chunk_status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", i, " (sequence ", c.sequence_id, "): ", chunk_status.message()));
    }
    const int64_t num_tokens = static_cast<int64_t>(c.token_ids.size());
    chunk_begin.push_back(static_cast<int64_t>(batch.token_ids.size()));
    batch.token_ids.insert(batch.token_ids.end(), c.token_ids.begin(), c.token_ids.end());
    batch.chunks.push_back({c.block_table, c.start_pos, num_tokens});
    if (c.sample) {
      batch.logit_rows.push_back(static_cast<int64_t>(batch.token_ids.size()) - 1);
      to_sample.push_back(&c);
    }
  }
  // The rows scored for prompt log probabilities follow the sampled ones.
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    if (!plan.chunks[i].prompt_logprobs) continue;
    const int64_t rows = PromptLogprobRows(plan.chunks[i]);
    for (int64_t j = 0; j < rows; ++j) batch.logit_rows.push_back(chunk_begin[i] + j);
    to_score.push_back(&plan.chunks[i]);
  }
  return engine_->ValidateBatch(batch);
}

int StepRunner::rank() const {
  return placement_switch_ != nullptr ? placement_switch_->rank() : 0;
}

absl::Status StepRunner::StartStaging(const RankStepPlan& plan) {
  if (placement_switch_ == nullptr) {
    return absl::InvalidArgumentError("a single rank has no placement to rebalance");
  }
  HERD_ASSIGN_OR_RETURN(
      ExpertPlacement placement,
      ParsePlacement(plan.stage_placement, absl::StrCat("staged placement ", plan.stage_version)));
  const ModelSpec& s = engine_->spec();
  const ExpertPlacement& current = placement_switch_->placement();
  if (placement.num_layers() != s.num_layers || placement.num_experts() != s.num_experts ||
      placement.num_ranks() != current.num_ranks()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "staged placement ", plan.stage_version, " has ", placement.num_layers(), " layers x ",
        placement.num_experts(), " experts on ", placement.num_ranks(), " ranks; the model has ",
        s.num_layers, " x ", s.num_experts, " on ", current.num_ranks()));
  }
  stager_.Start(plan.stage_version, std::make_shared<const ExpertPlacement>(std::move(placement)),
                placement_switch_->experts(), placement_switch_->rank(),
                placement_switch_->model_path());
  return absl::OkStatus();
}

absl::Status StepRunner::SwitchPlacement(uint64_t version, RankStepResult& result) {
  absl::Duration waited;
  absl::StatusOr<StagedPlacement> staged = stager_.Take(version, &waited);
  result.load_wait_seconds = absl::ToDoubleSeconds(waited);
  if (!staged.ok() || placement_switch_ == nullptr) {
    return absl::InternalError(
        absl::StrCat("rank ", rank(), " cannot switch to placement version ", version, ": ",
                     staged.ok() ? "a single rank has no placement" : staged.status().message()));
  }
  HERD_RETURN_IF_ERROR(placement_switch_->SwapPlacement(staged->placement, staged->experts));
  placement_version_ = version;
  return absl::OkStatus();
}

absl::StatusOr<RankStepResult> StepRunner::Run(const RankStepPlan& plan) {
  const ModelSpec& s = engine_->spec();
  RankStepResult result;
  result.step_idx = plan.step_idx;
  result.rank = rank();
  if (plan.stage_version > 0) {
    if (absl::Status staging = StartStaging(plan); !staging.ok()) {
      result.stage_error = std::string(staging.message());
    }
  }
  if (plan.placement_version != placement_version_) {
    HERD_RETURN_IF_ERROR(SwitchPlacement(plan.placement_version, result));
  }
  result.placement_version = placement_version_;

  Batch batch;
  std::vector<const PlannedChunk*> to_sample;
  std::vector<const PlannedChunk*> to_score;
  absl::Status valid = BuildBatch(plan, batch, to_sample, to_score);
  if (!valid.ok()) {
    // Nothing of this plan runs, but the collectives still need this rank.
    result.error =
        absl::StrCat("step ", plan.step_idx, " on rank ", result.rank, ": ", valid.message());
    batch = Batch();
    to_sample.clear();
    to_score.clear();
  }

  const EngineStats before = engine_->stats();
  std::fill(expert_tokens_.begin(), expert_tokens_.end(), 0);
  logits_.resize(batch.logit_rows.size() * s.vocab_size);
  HERD_RETURN_IF_ERROR(engine_->Forward(batch, logits_.data()));
  const EngineStats& after = engine_->stats();

  for (size_t k = 0; k < to_sample.size(); ++k) {
    const PlannedChunk& c = *to_sample[k];
    const float* logits = logits_.data() + k * s.vocab_size;
    // Biases and penalties change what is sampled, not the reported (raw)
    // log probabilities.
    const float* choose_from = logits;
    if (!c.sampling.logit_bias.empty() || c.sampling.has_penalties() || !c.allowed_tokens.empty()) {
      penalized_logits_.assign(logits, logits + s.vocab_size);
      for (const TokenBias& b : c.sampling.logit_bias) penalized_logits_[b.token_id] += b.bias;
      cpu::ApplyPenalties(penalized_logits_.data(), s.vocab_size, c.penalized_prompt,
                          c.penalized_output, c.sampling.presence_penalty,
                          c.sampling.frequency_penalty, c.sampling.repetition_penalty,
                          penalty_scratch_);
      // Guided decoding: what the mask leaves out cannot be sampled.
      if (!c.allowed_tokens.empty()) {
        for (int64_t t = 0; t < s.vocab_size; ++t) {
          if (!((c.allowed_tokens[t / 64] >> (t % 64)) & 1)) {
            penalized_logits_[t] = -std::numeric_limits<float>::infinity();
          }
        }
      }
      choose_from = penalized_logits_.data();
    }
    int32_t token_id;
    if (c.sampling.temperature <= 0.0f) {
      token_id = cpu::ArgMax(choose_from, s.vocab_size);
    } else {
      std::mt19937_64 rng(TokenSeed(c.sampling.seed, c.sample_idx));
      token_id =
          cpu::SampleTopP(choose_from, s.vocab_size, c.sampling.temperature, c.sampling.top_p, rng,
                          sampling_scratch_, c.sampling.top_k, c.sampling.min_p);
    }
    SampledToken& sampled = result.sampled.emplace_back();
    sampled.sequence_id = c.sequence_id;
    sampled.token_id = token_id;
    if (c.sampling.top_logprobs >= 0) {
      sampled.logprobs =
          ScoreToken(logits, s.vocab_size, token_id, c.sampling.top_logprobs, sampling_scratch_);
    }
  }
  int64_t row = static_cast<int64_t>(to_sample.size());
  for (const PlannedChunk* c : to_score) {
    ChunkLogprobs& scored = result.prompt_logprobs.emplace_back();
    scored.sequence_id = c->sequence_id;
    scored.start_pos = c->start_pos;
    const int64_t rows = PromptLogprobRows(*c);
    for (int64_t j = 0; j < rows; ++j, ++row) {
      const int32_t next = j + 1 < static_cast<int64_t>(c->token_ids.size()) ? c->token_ids[j + 1]
                                                                             : c->next_token_id;
      scored.entries.push_back(ScoreToken(logits_.data() + row * s.vocab_size, s.vocab_size, next,
                                          c->sampling.top_logprobs, sampling_scratch_));
    }
  }
  result.num_tokens = static_cast<int64_t>(batch.token_ids.size());
  result.layer_expert_rows.resize(s.num_layers);
  for (int l = 0; l < s.num_layers; ++l) {
    result.layer_expert_rows[l] = after.layer_expert_rows[l] - before.layer_expert_rows[l];
  }
  if (options_.count_expert_tokens) result.expert_tokens = expert_tokens_;
  result.forward_seconds = after.forward_seconds - before.forward_seconds;
  result.dispatch_seconds = after.dispatch_seconds - before.dispatch_seconds;
  result.combine_seconds = after.combine_seconds - before.combine_seconds;
  result.all_to_all_bytes = after.all_to_all_bytes - before.all_to_all_bytes;
  result.routed_expert_calls = after.routed_slots - before.routed_slots;
  result.skipped_expert_calls = after.skipped_slots - before.skipped_slots;
  const ExpertStager::Progress staging = stager_.progress();
  if (staging.version > 0 && staging.done) {
    if (staging.status.ok()) {
      result.ready_version = staging.version;
      result.staged_bytes = staging.loaded_bytes;
    } else if (result.stage_error.empty()) {
      result.stage_error = std::string(staging.status.message());
    }
  }
  return result;
}

absl::Status RunWorkerLoop(StepRunner& runner, comm::ControlChannel& control) {
  while (true) {
    // One wait per plan, however long the server stays idle: the channel's
    // poll pacing (comm/env.h) then moves from yielding to sleeping, so an
    // idle rank costs next to no CPU.
    absl::StatusOr<comm::ControlMessage> message =
        control.Recv(/*src_rank=*/0, kStepPlanTag, absl::InfiniteFuture());
    HERD_RETURN_IF_ERROR(message.status());
    absl::StatusOr<RankStepPlan> plan = DecodeStepPlan(message->payload);
    if (!plan.ok()) {
      return absl::InternalError(
          absl::StrCat("rank ", control.rank(),
                       " got a step plan it cannot decode from rank 0: ", plan.status().message()));
    }
    if (plan->shutdown) return absl::OkStatus();
    HERD_ASSIGN_OR_RETURN(RankStepResult result, runner.Run(*plan));
    HERD_RETURN_IF_ERROR(control.Send(/*dest_rank=*/0, kStepResultTag, EncodeStepResult(result),
                                      absl::Now() + runner.options().result_send_timeout));
  }
}

}  // namespace herd
