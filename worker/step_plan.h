// One step of the cluster, as the coordinator plans it for a rank and as the
// rank reports it back: the messages of the control plane while serving.
//
// Each step the coordinator sends every rank a RankStepPlan (its own
// sequences' chunks: data-parallel attention), every rank runs it in the same
// collective step (ranks with no chunks still take part in the expert
// exchange), and every rank answers with a RankStepResult.
//
// KV blocks are assigned by the coordinator: a chunk names the blocks of the
// rank's paged KV cache that hold its sequence, so a rank keeps no per-sequence
// state between steps and a preempted sequence is simply re-planned.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace herd {

// Control-channel tags of the serving loop.
inline constexpr int kStepPlanTag = 101;
inline constexpr int kStepResultTag = 102;

// Most top log probabilities a sampled token may carry (vLLM's default
// max_logprobs).
inline constexpr int32_t kMaxTopLogprobs = 20;

// A value added to one token's logit before sampling (OpenAI's logit_bias).
struct TokenBias {
  int32_t token_id = 0;
  float bias = 0.0f;  // [-100, 100]
};

struct SamplingParams {
  // <= 0: greedy (argmax). Otherwise softmax(logits / temperature).
  float temperature = 0.0f;
  // Nucleus mass in (0, 1].
  float top_p = 1.0f;
  // vLLM's: keep at most top_k most likely tokens (0: all), and drop those
  // less likely than min_p times the most likely (0: none); applied before
  // top_p (cpu::SampleTopP).
  int32_t top_k = 0;
  float min_p = 0.0f;
  // OpenAI's presence and frequency penalties ([-2, 2]) and vLLM's
  // repetition penalty (> 0; 1: none), cpu::ApplyPenalties before sampling
  // (greedy too) over the chunk's penalized_prompt and penalized_output.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  // Added to the logits before the penalties, as vLLM orders them.
  std::vector<TokenBias> logit_bias;
  bool has_penalties() const {
    return presence_penalty != 0.0f || frequency_penalty != 0.0f || repetition_penalty != 1.0f;
  }
  // With sample_idx, selects the random stream: the same seed gives the same
  // tokens whichever rank runs the sequence and however often it is preempted.
  uint64_t seed = 0;
  // Log probabilities with each sampled token (cpu::LogProbabilities: the raw
  // distribution): -1 none; k in [0, kMaxTopLogprobs]: the sampled token's
  // and the k most likely tokens'.
  int32_t top_logprobs = -1;
};

// A token and its log probability.
struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
};

// A run of consecutive tokens of one sequence.
struct PlannedChunk {
  uint64_t sequence_id = 0;
  // Positions [0, start_pos) of the sequence are already in its KV blocks.
  int64_t start_pos = 0;
  std::vector<int32_t> token_ids;
  // The sequence's KV blocks on this rank, in position order; they cover
  // [0, start_pos + token_ids.size()).
  std::vector<int32_t> block_table;
  // Sample one token after the chunk's last token (the last chunk of a
  // prompt, and every decode chunk).
  bool sample = false;
  SamplingParams sampling;
  // Index of the token being sampled among the sequence's generated tokens.
  int64_t sample_idx = 0;
  // Prompt log probabilities (the API's echo): the rank returns, for each
  // position of the chunk, the log probability of the token that follows it
  // (ChunkLogprobs), with sampling.top_logprobs (>= 0) top tokens. The token
  // after the chunk's last position is next_token_id when the chunk does not
  // sample (-1: none, that position is left out); a sampling chunk's last
  // position predicts the sampled token, whose log probabilities come with it.
  bool prompt_logprobs = false;
  int32_t next_token_id = -1;
  // A sampling chunk of a sequence with penalties: its generated tokens so
  // far, and its prompt when the repetition penalty needs it.
  std::vector<int32_t> penalized_prompt;
  std::vector<int32_t> penalized_output;
  // Guided decoding: a sampling chunk may only sample the tokens whose bits
  // are set (bit t % 64 of word t / 64, over the vocabulary); empty: any.
  std::vector<uint64_t> allowed_tokens;
};

struct RankStepPlan {
  uint64_t step_idx = 0;
  // The serving loop ends: the rank returns from its worker loop.
  bool shutdown = false;
  std::vector<PlannedChunk> chunks;
  // Expert parallelism: the placement version every rank runs the step with.
  // Versions start at 1 (the placement the ranks started with); a rank whose
  // version differs switches to the placement it staged under this version
  // before the step, so all ranks switch at the same step boundary.
  uint64_t placement_version = 1;
  // Online rebalancing: when stage_version > 0, a placement (PlacementToJson
  // text) the rank starts loading in the background, replacing any earlier
  // staged one; steps keep running on the current placement meanwhile.
  uint64_t stage_version = 0;
  std::string stage_placement;
};

// A sampled token's log probabilities (cpu::LogProbabilities).
struct SampledLogprobs {
  float logprob = 0.0f;  // of the sampled token
  // The sampling.top_logprobs most likely tokens, most likely first (ties:
  // lower id).
  std::vector<TokenLogprob> top;
};

struct SampledToken {
  uint64_t sequence_id = 0;
  int32_t token_id = 0;
  // When the chunk asked for them (sampling.top_logprobs >= 0).
  std::optional<SampledLogprobs> logprobs;
};

// The log probabilities of the tokens following a chunk's positions:
// entries[j] is that of the token at position start_pos + j + 1.
struct ChunkLogprobs {
  uint64_t sequence_id = 0;
  int64_t start_pos = 0;
  std::vector<SampledLogprobs> entries;
};

struct RankStepResult {
  uint64_t step_idx = 0;
  int rank = 0;
  // Empty when the step ran; otherwise why it failed on this rank.
  std::string error;
  // One per chunk with sample = true, in chunk order.
  std::vector<SampledToken> sampled;
  // One per chunk with prompt_logprobs = true, in chunk order.
  std::vector<ChunkLogprobs> prompt_logprobs;
  // Tokens of this rank's sequences in the step.
  int64_t num_tokens = 0;
  // F32-row count this rank's experts computed in the step, per layer (the
  // load expert parallelism balances). Single rank: tokens * top_k.
  std::vector<int64_t> layer_expert_rows;
  // Tokens of this rank's sequences routed to each expert in the step,
  // [layer * num_experts + expert]; empty unless asked for (detailed expert
  // metrics, expert-load recording).
  std::vector<int64_t> expert_tokens;
  double forward_seconds = 0;
  double dispatch_seconds = 0;
  double combine_seconds = 0;
  // Bytes this rank sent to other ranks in the step's all-to-alls.
  int64_t all_to_all_bytes = 0;
  // (token, expert) pairs the routers chose for this rank's tokens in the
  // step, and how many of them dynamic expert skipping left out.
  int64_t routed_expert_calls = 0;
  int64_t skipped_expert_calls = 0;
  // The placement version the step ran with.
  uint64_t placement_version = 1;
  // Online rebalancing: the staged version whose experts are loaded and ready
  // to switch to (0: none), the bytes that load read from the checkpoint, and
  // why it failed (empty: it did not).
  uint64_t ready_version = 0;
  int64_t staged_bytes = 0;
  std::string stage_error;
  // Seconds the step waited for a staged load to finish before it could
  // switch placements. Always 0 when the coordinator switches only after
  // every rank reported ready; exported so that this stays true.
  double load_wait_seconds = 0;
};

// Binary encodings for the control channel: little-endian, with a magic and
// a version up front (the layout is in step_plan.cc). Decode* check structure
// only (StepRunner::Run checks what a plan asks for) and return
// InvalidArgument for truncated, malformed or trailing bytes, or another
// version; they never read outside `bytes` and allocate in proportion to
// its size.
std::string EncodeStepPlan(const RankStepPlan& plan);
absl::StatusOr<RankStepPlan> DecodeStepPlan(absl::string_view bytes);
std::string EncodeStepResult(const RankStepResult& result);
absl::StatusOr<RankStepResult> DecodeStepResult(absl::string_view bytes);

}  // namespace herd
