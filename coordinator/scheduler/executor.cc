#include "coordinator/scheduler/executor.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <list>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/scheduler/kv_block_pool.h"
#include "coordinator/scheduler/rebalancer.h"
#include "core/logging.h"
#include "core/status.h"

namespace herd {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kError:
      return "error";
  }
  return "error";
}

namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Names the prompt prefix through a block: a 64-bit mix of the previous
// block's hash and this block's tokens. Only scheduling looks at it (a
// collision at worst holds a request back a few steps); the prefix cache
// itself matches tokens exactly.
uint64_t PromptBlockHash(uint64_t previous, absl::Span<const int32_t> tokens) {
  uint64_t h = previous ^ 0x9E3779B97F4A7C15ULL;
  for (const int32_t token : tokens) {
    h ^= static_cast<uint32_t>(token);
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 31;
  }
  return h;
}

double SecondsBetween(absl::Time from, absl::Time to) { return absl::ToDoubleSeconds(to - from); }

// One request from Enqueue until its final response is collected.
struct Sequence {
  RequestId id = 0;
  GenerationRequest request;
  std::vector<int32_t> generated;
  // Positions of prompt + generated whose K/V are in `blocks`.
  int64_t num_computed = 0;
  // The rank running it, or -1 while it waits (new or preempted).
  int rank = -1;
  std::vector<int32_t> blocks;
  // Leading blocks entered in (or found in) the prefix cache, and the key of
  // the prefix through them.
  int64_t num_committed_blocks = 0;
  KvBlockPool::PrefixKey committed_key = KvBlockPool::kEmptyPrefix;
  // Prompt tokens the prefix cache held when the request first ran.
  int64_t cached_prompt_tokens = 0;
  // With prefix caching: PromptBlockHash of each whole block of the prompt.
  std::vector<uint64_t> prompt_block_hashes;
  // With a constraint: the tokens it allows next (AllowedMask).
  std::vector<uint64_t> allowed_tokens;
  absl::Time arrival_time;
  absl::Time last_token_time;
  bool scheduled_once = false;
  bool prompt_counted = false;
  // Set by Cancel (kAbort) or FinishAsStopped (kStop); acted upon at the next
  // step boundary.
  bool cancel_requested = false;
  FinishReason cancel_reason = FinishReason::kAbort;
  bool finished = false;
  // Not yet collected by AwaitResponses (pending_logprobs: one per pending
  // token when the request asked for log probabilities).
  std::vector<int32_t> pending_tokens;
  std::vector<SampledLogprobs> pending_logprobs;
  // With request.prompt_logprobs: those of prompt positions 1, 2, ... so far,
  // handed out once complete.
  std::vector<SampledLogprobs> prompt_logprobs;
  bool prompt_logprobs_sent = false;
  bool pending_finish = false;
  FinishReason finish_reason = FinishReason::kStop;
  absl::Status finish_status;

  int64_t num_tokens() const {
    return static_cast<int64_t>(request.prompt_ids.size() + generated.size());
  }
  int32_t token_at(int64_t pos) const {
    const int64_t prompt = static_cast<int64_t>(request.prompt_ids.size());
    return pos < prompt ? request.prompt_ids[pos] : generated[pos - prompt];
  }
  // Tokens [begin, end) of prompt + generated.
  std::vector<int32_t> tokens(int64_t begin, int64_t end) const {
    std::vector<int32_t> out;
    out.reserve(end - begin);
    for (int64_t p = begin; p < end; ++p) out.push_back(token_at(p));
    return out;
  }
  bool has_news() const { return !pending_tokens.empty() || pending_finish; }
  int64_t num_prompt_logprobs() const { return static_cast<int64_t>(prompt_logprobs.size()); }
};

}  // namespace

class Executor::Impl {
 public:
  Impl(StepRunner* runner, comm::ControlChannel* control, const ExecutorOptions& options,
       ServingMetrics* metrics, std::unique_ptr<Rebalancer> rebalancer)
      : runner_(runner),
        control_(control),
        options_(options),
        metrics_(metrics),
        rebalancer_(std::move(rebalancer)),
        world_size_(control != nullptr ? control->world_size() : 1),
        running_count_(world_size_, 0) {
    pools_.reserve(world_size_);
    for (int r = 0; r < world_size_; ++r) {
      pools_.emplace_back(options_.num_kv_blocks, options_.kv_block_tokens,
                          options_.prefix_caching);
    }
    loop_ = std::thread([this] { StepLoop(); });
  }

  ~Impl() {
    Shutdown(absl::ZeroDuration()).IgnoreError();
    if (loop_.joinable()) loop_.join();
  }

  absl::StatusOr<RequestId> Enqueue(GenerationRequest request) {
    HERD_RETURN_IF_ERROR(ValidateRequest(request));
    absl::MutexLock lock(&mu_);
    if (!loop_status_.ok()) {
      return absl::UnavailableError(
          absl::StrCat("the server cannot run requests: ", loop_status_.message()));
    }
    if (!accepting_) return absl::UnavailableError("the server is shutting down");
    if (static_cast<int64_t>(waiting_.size()) >= options_.max_waiting_requests) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the request queue is full (", options_.max_waiting_requests, " waiting); retry later"));
    }
    auto seq = std::make_unique<Sequence>();
    seq->id = next_id_++;
    seq->request = std::move(request);
    if (seq->request.constraint != nullptr) {
      seq->allowed_tokens = AllowedMask(seq->request);
      if (seq->allowed_tokens.empty()) {
        return absl::InvalidArgumentError("the output constraint allows no first token");
      }
    }
    if (options_.prefix_caching) {
      const absl::Span<const int32_t> prompt = seq->request.prompt_ids;
      const int64_t block_tokens = options_.kv_block_tokens;
      uint64_t hash = 0;
      for (int64_t b = 0; (b + 1) * block_tokens <= static_cast<int64_t>(prompt.size()); ++b) {
        hash = PromptBlockHash(hash, prompt.subspan(b * block_tokens, block_tokens));
        seq->prompt_block_hashes.push_back(hash);
      }
    }
    seq->arrival_time = absl::Now();
    Sequence* raw = seq.get();
    sequences_.emplace(raw->id, std::move(seq));
    waiting_.push_back(raw);
    UpdateQueueGauges();
    work_cv_.SignalAll();  // an idle step loop starts now, not at its next timeout
    return raw->id;
  }

  absl::StatusOr<std::vector<GenerationResponse>> AwaitResponses(absl::Span<const RequestId> ids,
                                                                 absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    std::vector<Sequence*> seqs;
    for (RequestId id : ids) {
      auto it = sequences_.find(id);
      if (it == sequences_.end()) return absl::NotFoundError(absl::StrCat("no request ", id));
      seqs.push_back(it->second.get());
    }
    mu_.AwaitWithTimeout(absl::Condition(
                             +[](std::vector<Sequence*>* waited) {
                               return std::any_of(waited->begin(), waited->end(),
                                                  [](Sequence* s) { return s->has_news(); });
                             },
                             &seqs),
                         timeout);
    // The wait released mu_: an Enqueue may have rehashed the map, but the
    // sequences themselves stay put (one awaiter per id).
    std::vector<GenerationResponse> responses;
    for (Sequence* seq : seqs) {
      if (seq->has_news()) responses.push_back(CollectNews(seq));
    }
    return responses;
  }

  // Hands out what `seq` has queued since the last call; a finished sequence
  // is then forgotten.
  GenerationResponse CollectNews(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const RequestId id = seq->id;
    GenerationResponse response;
    response.request_id = id;
    response.token_ids = std::move(seq->pending_tokens);
    seq->pending_tokens.clear();
    response.logprobs = std::move(seq->pending_logprobs);
    seq->pending_logprobs.clear();
    if (seq->request.prompt_logprobs && !seq->prompt_logprobs_sent &&
        seq->num_prompt_logprobs() + 1 >= static_cast<int64_t>(seq->request.prompt_ids.size())) {
      response.prompt_logprobs = std::move(seq->prompt_logprobs);
      seq->prompt_logprobs_sent = true;
    }
    response.prompt_tokens = static_cast<int64_t>(seq->request.prompt_ids.size());
    response.completion_tokens = static_cast<int64_t>(seq->generated.size());
    response.cached_prompt_tokens = seq->cached_prompt_tokens;
    if (seq->pending_finish) {
      response.finished = true;
      response.finish_reason = seq->finish_reason;
      response.status = seq->finish_status;
      sequences_.erase(id);
    }
    return response;
  }

  void Cancel(RequestId id, FinishReason reason) {
    absl::MutexLock lock(&mu_);
    auto it = sequences_.find(id);
    if (it == sequences_.end() || it->second->finished || it->second->cancel_requested) return;
    it->second->cancel_requested = true;
    it->second->cancel_reason = reason;
    work_cv_.SignalAll();
  }

  absl::Status Shutdown(absl::Duration drain_timeout) {
    absl::MutexLock lock(&mu_);
    accepting_ = false;
    const absl::Time deadline = absl::Now() + drain_timeout;
    auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return (waiting_.empty() && running_.empty()) || loop_done_;
    };
    while (!idle() && absl::Now() < deadline) {
      work_cv_.WaitWithDeadline(&mu_, std::min(deadline, absl::Now() + absl::Milliseconds(50)));
    }
    absl::Status status;
    if (!idle()) {
      const int64_t left = static_cast<int64_t>(waiting_.size() + running_.size());
      status = absl::DeadlineExceededError(absl::StrCat(
          left, " request(s) did not finish within the drain timeout and were cancelled"));
      for (auto& [id, seq] : sequences_) {
        if (!seq->finished) seq->cancel_requested = true;
      }
    }
    stopping_ = true;
    work_cv_.SignalAll();
    return status;
  }

  void JoinLoop() {
    if (loop_.joinable()) loop_.join();
  }

  ExecutorStats stats() const {
    absl::MutexLock lock(&mu_);
    ExecutorStats stats;
    stats.num_waiting = static_cast<int64_t>(waiting_.size());
    stats.num_running = static_cast<int64_t>(running_.size());
    stats.num_steps = num_steps_;
    stats.num_preemptions = num_preemptions_;
    stats.num_finished = num_finished_;
    stats.num_kv_blocks_total = options_.num_kv_blocks * world_size_;
    stats.num_kv_blocks_used = HeldBlocksTotal();
    for (const KvBlockPool& pool : pools_) stats.num_kv_blocks_cached += pool.num_cached();
    stats.prefix_cache_queried_tokens = prefix_cache_queried_tokens_;
    stats.prefix_cache_hit_tokens = prefix_cache_hit_tokens_;
    return stats;
  }

  ExpertLoadTotals expert_load() const {
    absl::MutexLock lock(&mu_);
    return expert_load_;
  }

  absl::Status health() const {
    absl::MutexLock lock(&mu_);
    return loop_status_;
  }

 private:
  absl::Status ValidateRequest(const GenerationRequest& request) const {
    const int64_t prompt = static_cast<int64_t>(request.prompt_ids.size());
    if (prompt == 0) return absl::InvalidArgumentError("the prompt is empty");
    for (size_t i = 0; i < request.prompt_ids.size(); ++i) {
      const int32_t id = request.prompt_ids[i];
      if (id < 0 || id >= options_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, " is ", id,
                                                       ", outside the vocabulary [0, ",
                                                       options_.vocab_size, ")"));
      }
    }
    for (const int32_t id : request.stop_ids) {
      if (id < 0 || id >= options_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "stop id ", id, " is outside the vocabulary [0, ", options_.vocab_size, ")"));
      }
    }
    if (request.max_tokens < (request.prompt_logprobs ? 0 : 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "max_tokens must be >= 1 (0 only to score the prompt), got ", request.max_tokens));
    }
    if (prompt + request.max_tokens > options_.max_context_tokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("this model's maximum context length is ", options_.max_context_tokens,
                       " tokens; the request asks for ", prompt + request.max_tokens, " (", prompt,
                       " in the prompt, ", request.max_tokens, " to generate)"));
    }
    if (CeilDiv(prompt + request.max_tokens, options_.kv_block_tokens) > options_.num_kv_blocks) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the request needs ", prompt + request.max_tokens, " tokens of KV cache; one rank holds ",
          options_.num_kv_blocks * options_.kv_block_tokens, " (raise --kv-cache-bytes)"));
    }
    const SamplingParams& s = request.sampling;
    if (!std::isfinite(s.temperature) || s.temperature < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("temperature must be >= 0, got ", s.temperature));
    }
    if (!(s.top_p > 0 && s.top_p <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", s.top_p));
    }
    if (s.top_logprobs < -1 || s.top_logprobs > kMaxTopLogprobs) {
      return absl::InvalidArgumentError(absl::StrCat("top_logprobs must be in [-1, ",
                                                     kMaxTopLogprobs, "], got ", s.top_logprobs));
    }
    if (!(std::fabs(s.presence_penalty) <= 2 && std::fabs(s.frequency_penalty) <= 2 &&
          s.repetition_penalty > 0 && std::isfinite(s.repetition_penalty))) {
      return absl::InvalidArgumentError(
          "presence and frequency penalties must be in [-2, 2] and the repetition penalty > 0");
    }
    for (const TokenBias& b : s.logit_bias) {
      if (b.token_id < 0 || b.token_id >= options_.vocab_size || !(std::fabs(b.bias) <= 100)) {
        return absl::InvalidArgumentError(
            absl::StrCat("logit bias ", b.bias, " of token ", b.token_id,
                         ": ids must be in the vocabulary, biases in [-100, 100]"));
      }
    }
    if (s.top_k < 0) {
      return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", s.top_k));
    }
    if (!(s.min_p >= 0 && s.min_p <= 1)) {
      return absl::InvalidArgumentError(absl::StrCat("min_p must be in [0, 1], got ", s.min_p));
    }
    if (request.prompt_logprobs && s.top_logprobs < 0) {
      return absl::InvalidArgumentError("prompt log probabilities need top_logprobs >= 0");
    }
    return absl::OkStatus();
  }

  int64_t HeldBlocksTotal() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int64_t total = 0;
    for (const KvBlockPool& pool : pools_) total += pool.num_held();
    return total;
  }

  void UpdateQueueGauges() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (metrics_ == nullptr) return;
    metrics_->SetRequestsWaiting(static_cast<int64_t>(waiting_.size()));
    metrics_->SetRequestsRunning(static_cast<int64_t>(running_.size()));
    const int64_t total = options_.num_kv_blocks * world_size_;
    metrics_->SetKvCacheUsage(total > 0 ? static_cast<double>(HeldBlocksTotal()) / total : 0.0);
  }

  void ReleaseBlocks(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (seq->rank < 0) return;
    pools_[seq->rank].Release(seq->blocks);
    seq->blocks.clear();
    seq->num_computed = 0;
    seq->num_committed_blocks = 0;
    seq->committed_key = KvBlockPool::kEmptyPrefix;
    --running_count_[seq->rank];
    running_.remove(seq);
    seq->rank = -1;
  }

  // Ends `seq`: frees its blocks, queues the final response, counts it.
  void Finish(Sequence* seq, FinishReason reason, absl::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (seq->finished) return;
    if (seq->rank >= 0) {
      ReleaseBlocks(seq);
    } else {
      waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), seq), waiting_.end());
    }
    seq->finished = true;
    seq->pending_finish = true;
    seq->finish_reason = reason;
    seq->finish_status = std::move(status);
    ++num_finished_;
    if (metrics_ != nullptr) {
      metrics_->AddRequestSuccess(FinishReasonName(reason));
      metrics_->ObserveE2eRequestLatency(SecondsBetween(seq->arrival_time, absl::Now()));
    }
  }

  // Moves `seq` from running back to the front of the queue; it recomputes
  // its prompt and generated tokens when it runs again.
  void Preempt(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ReleaseBlocks(seq);
    waiting_.push_front(seq);
    ++num_preemptions_;
    if (metrics_ != nullptr) metrics_->AddPreemptions(1);
  }

  // Grows `seq`'s block table to hold `num_positions`, preempting the newest
  // running sequences of its rank that are not in `scheduled` when blocks
  // run out. False when `seq` itself had to be preempted.
  bool ReserveBlocks(Sequence* seq, int64_t num_positions, const std::vector<Sequence*>& scheduled)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int rank = seq->rank;
    const int64_t needed =
        CeilDiv(num_positions, options_.kv_block_tokens) - static_cast<int64_t>(seq->blocks.size());
    KvBlockPool& pool = pools_[rank];
    while (pool.num_available() < needed) {
      Sequence* victim = nullptr;
      for (auto it = running_.rbegin(); it != running_.rend(); ++it) {
        Sequence* s = *it;
        if (s->rank != rank || s == seq) continue;
        if (std::find(scheduled.begin(), scheduled.end(), s) != scheduled.end()) continue;
        victim = s;
        break;
      }
      if (victim == nullptr) {
        Preempt(seq);
        return false;
      }
      Preempt(victim);
    }
    for (int64_t i = 0; i < needed; ++i) seq->blocks.push_back(pool.Allocate());
    return true;
  }

  // Enters `seq`'s blocks whose positions are all computed in its rank's
  // prefix cache.
  void CommitBlocks(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (seq->rank < 0 || !options_.prefix_caching) return;
    const int64_t block_tokens = options_.kv_block_tokens;
    KvBlockPool& pool = pools_[seq->rank];
    while ((seq->num_committed_blocks + 1) * block_tokens <= seq->num_computed) {
      const int64_t b = seq->num_committed_blocks++;
      seq->committed_key =
          pool.Commit(seq->committed_key, seq->tokens(b * block_tokens, (b + 1) * block_tokens),
                      seq->blocks[b]);
    }
  }

  // The most leading blocks of `seq` the prefix cache may offer it: at
  // least its last token is computed, and a request scoring its prompt
  // computes every position.
  int64_t MaxCachedBlocks(const Sequence& seq) const {
    if (!options_.prefix_caching || seq.request.prompt_logprobs) return 0;
    return (seq.num_tokens() - 1) / options_.kv_block_tokens;
  }

  // Leading prompt blocks of waiting `seq` that sequences in their prefill
  // are computing now (`pending`: their prompt block hashes).
  int64_t PendingBlocks(const Sequence& seq, const absl::flat_hash_set<uint64_t>& pending) const {
    const int64_t max_blocks =
        std::min<int64_t>(MaxCachedBlocks(seq), seq.prompt_block_hashes.size());
    int64_t blocks = 0;
    while (blocks < max_blocks && pending.contains(seq.prompt_block_hashes[blocks])) ++blocks;
    return blocks;
  }

  // Where a waiting sequence may start: a rank and the cached blocks of its
  // leading tokens there.
  struct Admission {
    int rank = -1;
    KvBlockPool::Match match;
  };

  // The rank for waiting `seq` (budget and running slots left): the one
  // caching most of it unless it runs kCacheAffinitySlack more sequences than
  // the one with the most available blocks, which is the choice otherwise.
  Admission ChooseRank(const Sequence& seq, const std::vector<int64_t>& budget) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // At least the last token is computed (its logits sample the next one);
    // a request scoring its prompt computes every position.
    const int64_t max_blocks = MaxCachedBlocks(seq);
    const std::vector<int32_t> tokens = max_blocks > 0
                                            ? seq.tokens(0, max_blocks * options_.kv_block_tokens)
                                            : std::vector<int32_t>{};
    Admission balanced;
    Admission cached;
    for (int r = 0; r < world_size_; ++r) {
      if (budget[r] <= 0 || running_count_[r] >= options_.max_running_per_rank) continue;
      KvBlockPool::Match match = pools_[r].Lookup(tokens, max_blocks);
      if (balanced.rank < 0 || pools_[r].num_available() > pools_[balanced.rank].num_available()) {
        balanced = {r, match};
      }
      if (!match.blocks.empty() &&
          (cached.rank < 0 || match.blocks.size() > cached.match.blocks.size())) {
        cached = {r, std::move(match)};
      }
    }
    if (cached.rank >= 0 && cached.match.blocks.size() > balanced.match.blocks.size() &&
        running_count_[cached.rank] <= running_count_[balanced.rank] + kCacheAffinitySlack) {
      return cached;
    }
    return balanced;
  }

  PlannedChunk MakeChunk(const Sequence& seq, int64_t num_tokens) const {
    PlannedChunk chunk;
    chunk.sequence_id = seq.id;
    chunk.start_pos = seq.num_computed;
    chunk.token_ids.reserve(num_tokens);
    for (int64_t p = seq.num_computed; p < seq.num_computed + num_tokens; ++p) {
      chunk.token_ids.push_back(seq.token_at(p));
    }
    chunk.block_table = seq.blocks;
    chunk.sample = seq.num_computed + num_tokens == seq.num_tokens() && seq.request.max_tokens > 0;
    chunk.sampling = seq.request.sampling;
    chunk.sample_idx = static_cast<int64_t>(seq.generated.size());
    if (chunk.sample) chunk.allowed_tokens = seq.allowed_tokens;
    if (chunk.sample && chunk.sampling.has_penalties()) {
      chunk.penalized_output = seq.generated;
      if (chunk.sampling.repetition_penalty != 1.0f) {
        chunk.penalized_prompt = seq.request.prompt_ids;
      }
    }
    // Prompt log probabilities until every prompt position has scored its
    // next token (a preempted sequence's recompute asks for none).
    const int64_t prompt = static_cast<int64_t>(seq.request.prompt_ids.size());
    const int64_t end = chunk.start_pos + num_tokens;
    if (seq.request.prompt_logprobs && seq.num_prompt_logprobs() < prompt - 1 &&
        chunk.start_pos < prompt - 1) {
      chunk.prompt_logprobs = true;
      chunk.next_token_id = !chunk.sample && end < prompt ? seq.request.prompt_ids[end] : -1;
    }
    return chunk;
  }

  // The tokens `request`'s constraint allows next, as a vocabulary bitmask,
  // with its stop ids where the output may end there; its stop ids when it
  // allows nothing; empty when that is nothing either.
  std::vector<uint64_t> AllowedMask(const GenerationRequest& request) const {
    std::vector<uint64_t> mask((options_.vocab_size + 63) / 64, 0);
    const int64_t allowed = request.constraint->Allowed(absl::MakeSpan(mask));
    if (allowed > 0 && !request.constraint->may_end()) return mask;
    for (const int32_t id : request.stop_ids) mask[id / 64] |= uint64_t{1} << (id % 64);
    if (allowed == 0 && request.stop_ids.empty()) mask.clear();
    return mask;
  }

  // Finishes cancelled and expired requests (step boundary).
  void ReapCancelled() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = absl::Now();
    std::vector<Sequence*> done;
    for (auto& [id, seq] : sequences_) {
      if (seq->finished) continue;
      if (seq->cancel_requested || now >= seq->request.deadline) done.push_back(seq.get());
    }
    for (Sequence* seq : done) {
      if (seq->cancel_requested && seq->cancel_reason == FinishReason::kStop) {
        Finish(seq, FinishReason::kStop, absl::OkStatus());
      } else if (seq->cancel_requested) {
        Finish(seq, FinishReason::kAbort, absl::CancelledError("the request was cancelled"));
      } else {
        Finish(seq, FinishReason::kAbort,
               absl::DeadlineExceededError("the request ran past its deadline"));
      }
    }
  }

  // Decides the next step: the chunk of every sequence that runs in it, per
  // rank. `scheduled[r]` are the sequences of rank r's chunks, in order.
  std::vector<RankStepPlan> PlanStep(std::vector<std::vector<Sequence*>>& scheduled)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<RankStepPlan> plans(world_size_);
    std::vector<int64_t> budget(world_size_, options_.max_step_tokens);
    std::vector<Sequence*> all_scheduled;
    auto schedule = [&](Sequence* seq, int64_t num_tokens) {
      plans[seq->rank].chunks.push_back(MakeChunk(*seq, num_tokens));
      scheduled[seq->rank].push_back(seq);
      all_scheduled.push_back(seq);
      budget[seq->rank] -= num_tokens;
    };
    // Running sequences, oldest first: decodes and unfinished prefills.
    const std::vector<Sequence*> running(running_.begin(), running_.end());
    for (Sequence* seq : running) {
      if (seq->rank < 0) continue;  // preempted by an older one in this loop
      const int rank = seq->rank;
      const int64_t num_tokens = std::min(seq->num_tokens() - seq->num_computed, budget[rank]);
      if (num_tokens <= 0) continue;
      if (!ReserveBlocks(seq, seq->num_computed + num_tokens, all_scheduled)) continue;
      schedule(seq, num_tokens);
    }
    // The prompt blocks of the sequences in their prefill.
    absl::flat_hash_set<uint64_t> pending;
    auto add_pending = [&](const Sequence& seq) {
      if (seq.num_computed < static_cast<int64_t>(seq.request.prompt_ids.size())) {
        pending.insert(seq.prompt_block_hashes.begin(), seq.prompt_block_hashes.end());
      }
    };
    for (const Sequence* seq : running_) add_pending(*seq);
    // Waiting sequences, in queue order, onto the rank with the most free KV
    // (or the one caching most of them). One whose leading blocks are being
    // computed waits for them rather than computing them again.
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      Sequence* seq = *it;
      Admission admission = ChooseRank(*seq, budget);
      if (admission.rank < 0) break;
      if (PendingBlocks(*seq, pending) > static_cast<int64_t>(admission.match.blocks.size())) {
        ++it;
        continue;
      }
      const int best = admission.rank;
      KvBlockPool& pool = pools_[best];
      const std::vector<int32_t>& shared = admission.match.blocks;
      const int64_t cached_tokens = static_cast<int64_t>(shared.size()) * options_.kv_block_tokens;
      const int64_t num_tokens = std::min(seq->num_tokens() - cached_tokens, budget[best]);
      const int64_t needed = CeilDiv(cached_tokens + num_tokens, options_.kv_block_tokens) -
                             static_cast<int64_t>(shared.size());
      if (pool.num_available() - pool.NumUnreferenced(shared) < needed) break;
      it = waiting_.erase(it);
      seq->rank = best;
      running_.push_back(seq);
      ++running_count_[best];
      pool.Hold(shared);
      seq->blocks = shared;
      seq->num_computed = cached_tokens;
      seq->num_committed_blocks = static_cast<int64_t>(shared.size());
      seq->committed_key = admission.match.key;
      add_pending(*seq);
      ReserveBlocks(seq, cached_tokens + num_tokens, all_scheduled);
      prefix_cache_queried_tokens_ += seq->num_tokens();
      prefix_cache_hit_tokens_ += cached_tokens;
      if (metrics_ != nullptr) metrics_->AddPrefixCacheLookup(seq->num_tokens(), cached_tokens);
      if (!seq->scheduled_once) {
        seq->scheduled_once = true;
        seq->cached_prompt_tokens = cached_tokens;
        if (metrics_ != nullptr) {
          metrics_->ObserveRequestQueueTime(SecondsBetween(seq->arrival_time, absl::Now()));
        }
      }
      schedule(seq, num_tokens);
    }
    for (int r = 0; r < world_size_; ++r) plans[r].step_idx = num_steps_;
    return plans;
  }

  // Sends every other rank its plan, runs rank 0's, and collects the results
  // (index = rank).
  absl::StatusOr<std::vector<RankStepResult>> RunStep(const std::vector<RankStepPlan>& plans) {
    const absl::Time deadline = absl::Now() + options_.step_timeout;
    for (int r = 1; r < world_size_; ++r) {
      HERD_RETURN_IF_ERROR(control_->Send(r, kStepPlanTag, EncodeStepPlan(plans[r]), deadline));
    }
    std::vector<RankStepResult> results(world_size_);
    HERD_ASSIGN_OR_RETURN(results[0], runner_->Run(plans[0]));
    for (int r = 1; r < world_size_; ++r) {
      HERD_ASSIGN_OR_RETURN(comm::ControlMessage message,
                            control_->Recv(r, kStepResultTag, deadline));
      HERD_ASSIGN_OR_RETURN(results[r], DecodeStepResult(message.payload));
      if (results[r].step_idx != plans[r].step_idx) {
        return absl::InternalError(absl::StrCat("rank ", r, " answered step ", results[r].step_idx,
                                                " to step ", plans[r].step_idx));
      }
    }
    for (int r = 0; r < world_size_; ++r) {
      if (results[r].placement_version != plans[r].placement_version) {
        return absl::InternalError(
            absl::StrCat("rank ", r, " ran step ", plans[r].step_idx, " with placement version ",
                         results[r].placement_version, ", not ", plans[r].placement_version));
      }
    }
    return results;
  }

  // Applies a step's results: positions computed, tokens sampled, requests
  // finished.
  void ApplyResults(const std::vector<std::vector<Sequence*>>& scheduled,
                    const std::vector<RankStepPlan>& plans,
                    const std::vector<RankStepResult>& results) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = absl::Now();
    int64_t generated_tokens = 0;
    for (int r = 0; r < world_size_; ++r) {
      const RankStepResult& result = results[r];
      if (!result.error.empty()) {
        // A plan this rank could not run is a coordinator bug: end its requests.
        HERD_LOG(ERROR) << "rank " << r << " could not run step " << result.step_idx << ": "
                        << result.error;
        for (Sequence* seq : scheduled[r]) {
          Finish(seq, FinishReason::kError,
                 absl::InternalError(absl::StrCat("rank ", r, ": ", result.error)));
        }
        continue;
      }
      size_t sampled_idx = 0;
      size_t scored_idx = 0;
      for (size_t c = 0; c < scheduled[r].size(); ++c) {
        Sequence* seq = scheduled[r][c];
        const PlannedChunk& chunk = plans[r].chunks[c];
        if (chunk.prompt_logprobs && scored_idx < result.prompt_logprobs.size() &&
            result.prompt_logprobs[scored_idx].sequence_id == seq->id) {
          AddPromptLogprobs(seq, result.prompt_logprobs[scored_idx++]);
        }
        seq->num_computed += static_cast<int64_t>(chunk.token_ids.size());
        CommitBlocks(seq);
        if (!seq->prompt_counted &&
            seq->num_computed >= static_cast<int64_t>(seq->request.prompt_ids.size())) {
          seq->prompt_counted = true;
          if (metrics_ != nullptr) {
            metrics_->AddPromptTokens(static_cast<int64_t>(seq->request.prompt_ids.size()));
          }
        }
        if (!chunk.sample) {
          // A request that only scores its prompt ends once it is computed.
          if (seq->request.max_tokens == 0 && seq->num_computed == seq->num_tokens()) {
            Finish(seq, FinishReason::kLength, absl::OkStatus());
          }
          continue;
        }
        if (sampled_idx >= result.sampled.size() ||
            result.sampled[sampled_idx].sequence_id != seq->id) {
          Finish(seq, FinishReason::kError,
                 absl::InternalError(
                     absl::StrCat("rank ", r, " returned no token for request ", seq->id)));
          continue;
        }
        const SampledToken& sampled = result.sampled[sampled_idx++];
        if (seq->finished) continue;  // cancelled while the step ran: drop the token
        AppendToken(seq, sampled, now);
        ++generated_tokens;
      }
    }
    if (metrics_ != nullptr && generated_tokens > 0) {
      metrics_->AddGenerationTokens(generated_tokens);
    }
    const ExpertStepLoad load = ExpertLoad(results);
    for (int64_t tokens : load.tokens_by_rank) expert_load_.num_tokens += tokens;
    if (!load.expert_tokens.empty()) {
      expert_load_.loads.resize(load.expert_tokens.size(), 0);
      for (size_t i = 0; i < load.expert_tokens.size(); ++i) {
        expert_load_.loads[i] += load.expert_tokens[i];
      }
    }
    if (metrics_ != nullptr) metrics_->RecordExpertStep(load);
  }

  // Keeps the entries of `scored` for prompt positions not yet scored.
  static void AddPromptLogprobs(Sequence* seq, const ChunkLogprobs& scored) {
    const int64_t prompt = static_cast<int64_t>(seq->request.prompt_ids.size());
    for (size_t j = 0; j < scored.entries.size(); ++j) {
      const int64_t position = scored.start_pos + static_cast<int64_t>(j) + 1;
      if (position == seq->num_prompt_logprobs() + 1 && position < prompt) {
        seq->prompt_logprobs.push_back(scored.entries[j]);
      }
    }
  }

  void AppendToken(Sequence* seq, const SampledToken& sampled, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int32_t token = sampled.token_id;
    if (metrics_ != nullptr) {
      if (seq->generated.empty()) {
        metrics_->ObserveTimeToFirstToken(SecondsBetween(seq->arrival_time, now));
      } else {
        metrics_->ObserveInterTokenLatency(SecondsBetween(seq->last_token_time, now));
      }
    }
    seq->last_token_time = now;
    seq->generated.push_back(token);
    seq->pending_tokens.push_back(token);
    if (seq->request.sampling.top_logprobs >= 0) {
      seq->pending_logprobs.push_back(sampled.logprobs.value_or(SampledLogprobs{}));
    }
    const auto& stop = seq->request.stop_ids;
    bool constrained_end = false;
    if (seq->request.constraint != nullptr) {
      seq->request.constraint->Accept(token);
      if (!seq->request.constraint->complete()) seq->allowed_tokens = AllowedMask(seq->request);
      constrained_end = seq->request.constraint->complete() || seq->allowed_tokens.empty();
    }
    if (std::find(stop.begin(), stop.end(), token) != stop.end() || constrained_end) {
      Finish(seq, FinishReason::kStop, absl::OkStatus());
    } else if (static_cast<int64_t>(seq->generated.size()) >= seq->request.max_tokens) {
      Finish(seq, FinishReason::kLength, absl::OkStatus());
    }
  }

  ExpertStepLoad ExpertLoad(const std::vector<RankStepResult>& results) const {
    ExpertStepLoad load;
    for (const RankStepResult& result : results) {
      load.layer_rows_by_rank.push_back(result.layer_expert_rows);
      load.tokens_by_rank.push_back(result.num_tokens);
      load.dispatch_seconds_by_rank.push_back(result.dispatch_seconds);
      load.combine_seconds_by_rank.push_back(result.combine_seconds);
      load.all_to_all_bytes += result.all_to_all_bytes;
      load.routed_expert_calls += result.routed_expert_calls;
      load.skipped_expert_calls += result.skipped_expert_calls;
      if (!result.expert_tokens.empty()) {
        load.expert_tokens.resize(result.expert_tokens.size(), 0);
        for (size_t i = 0; i < result.expert_tokens.size(); ++i) {
          load.expert_tokens[i] += result.expert_tokens[i];
        }
      }
    }
    return load;
  }

  // Sets every plan's placement fields from the rebalancer (if any).
  void DirectPlacement(std::vector<RankStepPlan>& plans) {
    if (rebalancer_ == nullptr) return;
    const PlacementDirective directive = rebalancer_->BeginStep(absl::Now());
    for (RankStepPlan& plan : plans) {
      plan.placement_version = directive.placement_version;
      plan.stage_version = directive.stage_version;
      plan.stage_placement = directive.stage_placement;
    }
  }

  // Hands the step's results to the rebalancer (if any).
  void ReportPlacement(const std::vector<RankStepResult>& results) {
    if (rebalancer_ == nullptr) return;
    RebalanceStepReport report;
    for (const RankStepResult& result : results) {
      if (!result.expert_tokens.empty()) {
        report.expert_tokens.resize(result.expert_tokens.size(), 0);
        for (size_t i = 0; i < result.expert_tokens.size(); ++i) {
          report.expert_tokens[i] += result.expert_tokens[i];
        }
      }
      report.ready_version.push_back(result.ready_version);
      report.staged_bytes.push_back(result.staged_bytes);
      report.stage_error.push_back(result.stage_error);
      report.load_wait_seconds.push_back(result.load_wait_seconds);
    }
    rebalancer_->EndStep(report, absl::Now());
  }

  // Ends every request with `status` after the loop failed.
  void FailAll(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    loop_status_ = status;
    for (auto& [id, seq] : sequences_) {
      if (!seq->finished) Finish(seq.get(), FinishReason::kError, status);
    }
  }

  void StepLoop() {
    while (true) {
      std::vector<std::vector<Sequence*>> scheduled(world_size_);
      std::vector<RankStepPlan> plans;
      {
        absl::MutexLock lock(&mu_);
        ReapCancelled();
        UpdateQueueGauges();
        while (waiting_.empty() && running_.empty() && !stopping_) {
          work_cv_.WaitWithTimeout(&mu_, absl::Milliseconds(100));
          ReapCancelled();
        }
        if (stopping_ && waiting_.empty() && running_.empty()) break;
        plans = PlanStep(scheduled);
        UpdateQueueGauges();
      }
      // Outside mu_: a rebalance may plan, and requests keep arriving.
      DirectPlacement(plans);
      absl::StatusOr<std::vector<RankStepResult>> results = RunStep(plans);
      if (results.ok()) ReportPlacement(*results);
      absl::MutexLock lock(&mu_);
      ++num_steps_;
      if (!results.ok()) {
        HERD_LOG(ERROR) << "step " << num_steps_ - 1 << " failed: " << results.status();
        FailAll(results.status());
        loop_done_ = true;
        work_cv_.SignalAll();
        return;  // the group is broken: no shutdown plans can reach it
      }
      ApplyResults(scheduled, plans, *results);
      work_cv_.SignalAll();
    }
    // Tell the other ranks to leave their loops.
    RankStepPlan shutdown;
    shutdown.shutdown = true;
    const absl::Time deadline = absl::Now() + options_.step_timeout;
    for (int r = 1; r < world_size_; ++r) {
      const absl::Status status =
          control_->Send(r, kStepPlanTag, EncodeStepPlan(shutdown), deadline);
      if (!status.ok()) {
        HERD_LOG(WARN) << "shutdown of rank " << r << ": " << status;
      }
    }
    absl::MutexLock lock(&mu_);
    loop_done_ = true;
    if (loop_status_.ok()) loop_status_ = absl::UnavailableError("the server has shut down");
    work_cv_.SignalAll();
  }

  StepRunner* const runner_;
  comm::ControlChannel* const control_;
  const ExecutorOptions options_;
  ServingMetrics* const metrics_;
  // Only the step loop uses it.
  const std::unique_ptr<Rebalancer> rebalancer_;
  const int world_size_;

  mutable absl::Mutex mu_;
  absl::CondVar work_cv_;
  absl::flat_hash_map<RequestId, std::unique_ptr<Sequence>> sequences_ ABSL_GUARDED_BY(mu_);
  std::deque<Sequence*> waiting_ ABSL_GUARDED_BY(mu_);
  // In admission order: the back is the newest (the first to be preempted).
  std::list<Sequence*> running_ ABSL_GUARDED_BY(mu_);
  std::vector<KvBlockPool> pools_ ABSL_GUARDED_BY(mu_);  // by rank
  std::vector<int64_t> running_count_ ABSL_GUARDED_BY(mu_);
  RequestId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool loop_done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status loop_status_ ABSL_GUARDED_BY(mu_);
  int64_t num_steps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t num_preemptions_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t num_finished_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t prefix_cache_queried_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t prefix_cache_hit_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  ExpertLoadTotals expert_load_ ABSL_GUARDED_BY(mu_);
  std::thread loop_;
};

absl::StatusOr<std::unique_ptr<Executor>> Executor::Create(StepRunner* runner,
                                                           comm::ControlChannel* control,
                                                           const ExecutorOptions& options,
                                                           ServingMetrics* metrics) {
  if (runner == nullptr) return absl::InvalidArgumentError("the executor needs rank 0's runner");
  if (control != nullptr && control->rank() != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the executor runs on rank 0, not rank ", control->rank()));
  }
  if (options.num_kv_blocks < 1 || options.kv_block_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV cache needs >= 1 block of >= 1 token, got ", options.num_kv_blocks,
                     " of ", options.kv_block_tokens));
  }
  if (options.num_kv_blocks != runner->options().num_kv_blocks ||
      options.kv_block_tokens != runner->options().kv_block_tokens) {
    return absl::InvalidArgumentError("the executor's KV cache shape differs from the runner's");
  }
  if (options.max_waiting_requests < 1 || options.max_running_per_rank < 1 ||
      options.max_step_tokens < 1 || options.max_context_tokens < 1 || options.vocab_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "executor limits must be >= 1: max_waiting_requests ", options.max_waiting_requests,
        ", max_running_per_rank ", options.max_running_per_rank, ", max_step_tokens ",
        options.max_step_tokens, ", max_context_tokens ", options.max_context_tokens,
        ", vocab_size ", options.vocab_size));
  }
  if (options.step_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("step_timeout must be positive");
  }
  std::unique_ptr<Rebalancer> rebalancer;
  if (options.rebalance.enabled) {
    if (options.placement == nullptr || control == nullptr) {
      return absl::InvalidArgumentError(
          "rebalancing needs expert parallelism: run several ranks (mpirun -np N or "
          "--local-ranks N, N >= 2)");
    }
    if (!runner->options().count_expert_tokens) {
      return absl::InvalidArgumentError("rebalancing needs runners that count expert tokens");
    }
    if (options.placement->num_ranks() != control->world_size()) {
      return absl::InvalidArgumentError(absl::StrCat("the placement has ",
                                                     options.placement->num_ranks(),
                                                     " ranks, the group ", control->world_size()));
    }
    HERD_ASSIGN_OR_RETURN(rebalancer, Rebalancer::Create(options.rebalance, *options.placement,
                                                         metrics, absl::Now()));
  }
  return std::unique_ptr<Executor>(new Executor(
      std::make_unique<Impl>(runner, control, options, metrics, std::move(rebalancer))));
}

Executor::Executor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Executor::~Executor() = default;

absl::StatusOr<RequestId> Executor::Enqueue(GenerationRequest request) {
  return impl_->Enqueue(std::move(request));
}

absl::StatusOr<std::vector<GenerationResponse>> Executor::AwaitResponses(RequestId id,
                                                                         absl::Duration timeout) {
  return impl_->AwaitResponses({id}, timeout);
}

absl::StatusOr<std::vector<GenerationResponse>> Executor::AwaitResponses(
    absl::Span<const RequestId> ids, absl::Duration timeout) {
  return impl_->AwaitResponses(ids, timeout);
}

void Executor::Cancel(RequestId id) { impl_->Cancel(id, FinishReason::kAbort); }
void Executor::FinishAsStopped(RequestId id) { impl_->Cancel(id, FinishReason::kStop); }

absl::Status Executor::Shutdown(absl::Duration drain_timeout) {
  absl::Status status = impl_->Shutdown(drain_timeout);
  impl_->JoinLoop();
  return status;
}

ExecutorStats Executor::stats() const { return impl_->stats(); }

ExpertLoadTotals Executor::expert_load() const { return impl_->expert_load(); }

absl::Status Executor::health() const { return impl_->health(); }

}  // namespace herd
