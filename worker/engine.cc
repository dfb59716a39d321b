#include "worker/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "core/config.h"
#include "core/human_format.h"
#include "core/mapped_file.h"
#include "core/status.h"
#include "kernels/attention.h"
#include "kernels/convert.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/rope.h"
#include "kernels/router.h"

namespace herd {
namespace {

// body(first, count) over tokens [0, num_tokens) in pieces of 16 run on
// `pool` (inline for fewer): the per-token steps between the matmuls (norms,
// RoPE, routing, combining, residual adds), which would otherwise leave the
// other threads waiting. A template, so that a decode step's many calls wrap
// no std::function of their own.
template <typename Body>
void ForTokens(ThreadPool& pool, int64_t num_tokens, const Body& body) {
  constexpr int64_t kTokensPerPiece = 16;
  pool.ParallelFor(num_tokens, kTokensPerPiece,
                   [&body](int64_t begin, int64_t end, int) { body(begin, end - begin); });
}

// Layer `layer_idx`'s blocks of `cache` as the attention kernel reads them.
cpu::KvBlocks LayerKvBlocks(const KvCache& cache, int layer_idx) {
  if (cache.type() == DType::kF16) {
    return {cache.keys<uint16_t>(layer_idx, 0), cache.values<uint16_t>(layer_idx, 0),
            cache.block_elements(), cache.block_tokens(), DType::kF16};
  }
  return {cache.keys(layer_idx, 0), cache.values(layer_idx, 0), cache.block_elements(),
          cache.block_tokens(), DType::kF32};
}

}  // namespace

Engine::Engine(const Model& model, const EngineOptions& options, int num_threads)
    : model_(model),
      pool_(num_threads),
      max_step_tokens_(options.max_step_tokens),
      expert_skipping_(options.expert_skipping),
      kv_cache_type_(options.kv_cache_type),
      ep_(options.expert_parallelism) {
  stats_.layer_expert_rows.assign(model.spec.num_layers, 0);
  if (ep_.comm != nullptr) {
    exchange_ = std::make_unique<ExpertRowExchange>(ep_);
    expert_slots_.resize(model.spec.num_experts);
    std::iota(expert_slots_.begin(), expert_slots_.end(), 0);
  }
}

absl::Status Engine::PackWeights() {
  HERD_ASSIGN_OR_RETURN(packed_lm_head_, cpu::PackMatrix(model_.lm_head));
  packed_layers_.resize(model_.layers.size());
  for (size_t l = 0; l < model_.layers.size(); ++l) {
    const LayerWeights& w = model_.layers[l];
    PackedLayer& p = packed_layers_[l];
    HERD_ASSIGN_OR_RETURN(p.q, cpu::PackMatrix(w.q.weight));
    HERD_ASSIGN_OR_RETURN(p.k, cpu::PackMatrix(w.k.weight));
    HERD_ASSIGN_OR_RETURN(p.v, cpu::PackMatrix(w.v.weight));
    HERD_ASSIGN_OR_RETURN(p.o, cpu::PackMatrix(w.o.weight));
    if (w.moe_dropped) continue;  // layer drop: no router, no experts
    HERD_ASSIGN_OR_RETURN(p.router, cpu::PackMatrix(w.router));
    if (w.shared_expert.resident()) {
      HERD_ASSIGN_OR_RETURN(p.shared_gate, cpu::PackMatrix(w.shared_expert.gate));
      HERD_ASSIGN_OR_RETURN(p.shared_up, cpu::PackMatrix(w.shared_expert.up));
      HERD_ASSIGN_OR_RETURN(p.shared_down, cpu::PackMatrix(w.shared_expert.down));
      p.shared = {{&p.shared_gate, &p.shared_up, &p.shared_down}};
    }
  }
  // The engine's own model outlives the engine: its experts need no owner.
  HERD_ASSIGN_OR_RETURN(experts_, ExpertTable::FromModel(model_, nullptr));
  return absl::OkStatus();
}

void Engine::ReleaseRepackedSources() {
  auto release = [](const cpu::PackedMatrix& m) {
    if (m.storage != nullptr) {  // repacked into a copy; the mapped source is unused now
      ReleaseMappedPages(m.source.data(), m.source.num_bytes());
    }
  };
  release(packed_lm_head_);
  for (const PackedLayer& p : packed_layers_) {
    for (const cpu::PackedMatrix* m :
         {&p.q, &p.k, &p.v, &p.o, &p.router, &p.shared_gate, &p.shared_up, &p.shared_down}) {
      release(*m);
    }
  }
}

int64_t Engine::resident_expert_bytes() const { return experts_->num_bytes(); }

std::string Engine::Describe() const {
  return absl::StrCat("cpu, ", num_threads(), " threads, resident expert weights ",
                      HumanBytes(static_cast<double>(resident_expert_bytes())));
}

int64_t Engine::packed_weight_bytes() const {
  int64_t bytes = packed_lm_head_.num_bytes() + model_.token_embedding.num_bytes();
  for (const PackedLayer& p : packed_layers_) {
    for (const cpu::PackedMatrix* m :
         {&p.q, &p.k, &p.v, &p.o, &p.router, &p.shared_gate, &p.shared_up, &p.shared_down}) {
      bytes += m->num_bytes();
    }
  }
  return bytes + resident_expert_bytes();
}

absl::Status Engine::CheckPlacement(const ExpertPlacement& p, const ExpertTable* experts) const {
  HERD_RETURN_IF_ERROR(CheckPlacementShape(p, model_.spec, ep_.comm->world_size()));
  if (experts == nullptr) return absl::OkStatus();
  for (int l = 0; l < p.num_layers(); ++l) {
    for (int32_t e : p.RankExperts(l, ep_.comm->rank())) {
      if (!experts->Holds(l, e) && model_.layers[l].ExpertExists(e)) {
        return absl::InvalidArgumentError(
            absl::StrCat("the placement gives rank ", ep_.comm->rank(), " expert ", e, " of layer ",
                         l, ", which its expert table does not hold"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::SwapPlacement(std::shared_ptr<const ExpertPlacement> placement,
                                   std::shared_ptr<const ExpertTable> experts) {
  if (!expert_parallel()) {
    return absl::InvalidArgumentError("a single-rank engine has no placement to swap");
  }
  if (placement == nullptr || experts == nullptr) {
    return absl::InvalidArgumentError("SwapPlacement needs a placement and an expert table");
  }
  HERD_RETURN_IF_ERROR(CheckPlacement(*placement, experts.get()));
  placement_ = std::move(placement);
  experts_ = std::move(experts);
  // The workspace was sized for the previous experts' shapes.
  reserved_tokens_ = 0;
  reserved_context_ = 0;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Model& model,
                                                       const EngineOptions& options) {
  const ExpertParallelism& ep = options.expert_parallelism;
  HERD_RETURN_IF_ERROR(CheckRankHoldsItsExperts(model, ep));
  const int threads =
      options.num_threads > 0 ? options.num_threads : ThreadPool::DefaultNumThreads();
  if (options.max_step_tokens < 1) {
    return absl::InvalidArgumentError("EngineOptions.max_step_tokens must be >= 1");
  }
  if (!IsKvCacheType(options.kv_cache_type)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EngineOptions.kv_cache_type must be F32 or F16, got ", DTypeName(options.kv_cache_type)));
  }
  std::unique_ptr<Engine> engine(new Engine(model, options, threads));
  if (ep.comm != nullptr) {
    HERD_RETURN_IF_ERROR(engine->CheckPlacement(*ep.placement, nullptr));
    engine->placement_ = std::make_shared<const ExpertPlacement>(*ep.placement);
  }
  HERD_RETURN_IF_ERROR(engine->PackWeights());
  engine->ReleaseRepackedSources();
  return engine;
}

absl::Status Engine::ValidateBatch(const Batch& batch) const {
  if (batch.cache != nullptr && !batch.cache->device().empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the batch's KV cache lives on ", batch.cache->device(), "; this engine runs on the CPU"));
  }
  return herd::ValidateBatch(model_.spec, batch);
}

absl::StatusOr<std::unique_ptr<KvCache>> Engine::CreateKvCache(int64_t num_blocks,
                                                               int64_t block_tokens) {
  return KvCache::Create(model_.spec, num_blocks, block_tokens, kv_cache_type_);
}

void Engine::Reserve(int64_t num_tokens, int64_t max_context) {
  if (num_tokens <= reserved_tokens_ && max_context <= reserved_context_) return;
  num_tokens = std::max(num_tokens, reserved_tokens_);
  max_context = std::max(max_context, reserved_context_);
  const ModelSpec& s = model_.spec;
  const int64_t q_dim = s.num_heads * s.head_dim;
  const int64_t kv_dim = s.num_kv_heads * s.head_dim;
  const int64_t slots = num_tokens * s.num_experts_per_token;
  x_.resize(num_tokens * s.hidden_size);
  h_.resize(num_tokens * s.hidden_size);
  q_.resize(num_tokens * q_dim);
  k_.resize(num_tokens * kv_dim);
  v_.resize(num_tokens * kv_dim);
  attn_.resize(num_tokens * q_dim);
  proj_.resize(num_tokens * s.hidden_size);
  router_logits_.resize(num_tokens * s.num_experts);
  expert_idx_.resize(slots);
  expert_weights_.resize(slots);
  row_to_slot_.resize(slots);
  slot_to_row_.resize(slots);
  expert_offsets_.resize(s.num_experts + 1);
  expert_in_.resize(slots * s.hidden_size);
  expert_out_.resize(slots * s.hidden_size);
  positions_.resize(num_tokens);

  size_t bytes = cpu::AttentionWorkspaceBytes({s.num_heads, s.num_kv_heads, s.head_dim},
                                              max_context, pool_.num_threads());
  auto grow = [&](const cpu::PackedMatrix& w) {
    if (w.rows > 0) bytes = std::max(bytes, cpu::MatmulWorkspaceBytes(w, num_tokens));
  };
  grow(packed_lm_head_);
  for (const PackedLayer& p : packed_layers_) {
    for (const cpu::PackedMatrix* w : {&p.q, &p.k, &p.v, &p.o, &p.router}) grow(*w);
    const cpu::MatmulTask qkv[3] = {{&p.q, nullptr, nullptr, num_tokens, nullptr},
                                    {&p.k, nullptr, nullptr, num_tokens, nullptr},
                                    {&p.v, nullptr, nullptr, num_tokens, nullptr}};
    bytes = std::max(bytes, cpu::MatmulBatchWorkspaceBytes(qkv, 3));
    if (!p.shared.empty()) {
      bytes = std::max(bytes, cpu::GroupedExpertFfnWorkspaceBytes(p.shared[0], num_tokens));
    }
  }
  for (int l = 0; l < experts_->num_layers(); ++l) {
    for (const cpu::ExpertFfnView& e : experts_->LayerViews(l)) {
      if (e.gate == nullptr) continue;
      bytes = std::max(
          bytes, cpu::GroupedExpertFfnWorkspaceBytes(e, num_tokens * s.num_experts_per_token));
    }
  }
  workspace_.resize(bytes);
  reserved_tokens_ = num_tokens;
  reserved_context_ = max_context;
}

absl::Status Engine::Forward(const Batch& batch, float* logits) {
  HERD_RETURN_IF_ERROR(ValidateBatch(batch));
  const absl::Time start = absl::Now();
  ++stats_.forward_calls;
  absl::Cleanup account = [&] {
    stats_.forward_seconds += absl::ToDoubleSeconds(absl::Now() - start);
  };
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  int64_t num_steps = (num_tokens + max_step_tokens_ - 1) / max_step_tokens_;
  if (expert_parallel()) {
    HERD_ASSIGN_OR_RETURN(num_steps,
                          AgreeOnStepCount(*ep_.comm, num_steps, absl::Now() + ep_.timeout));
  }
  // Long batches (prefill) run in steps of at most max_step_tokens_ tokens.
  // This bounds activation memory; weights are still reused across a step.
  return RunInSteps(batch, max_step_tokens_, num_steps, model_.spec.vocab_size, logits,
                    [this](const Batch& step, float* out) { return ForwardStep(step, out); });
}

absl::Status Engine::ForwardStep(const Batch& batch, float* logits) {
  const ModelSpec& s = model_.spec;
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  // An expert-parallel rank with no tokens still takes part in every layer's
  // dispatch and combine.
  if (num_tokens == 0 && !expert_parallel()) return absl::OkStatus();
  int64_t max_context = 0;
  for (const SequenceChunk& c : batch.chunks) {
    max_context = std::max(max_context, c.start_pos + c.num_tokens);
  }
  Reserve(num_tokens, max_context);
  const int64_t q_dim = s.num_heads * s.head_dim;
  attention_sequences_.clear();
  {
    int64_t row = 0;
    for (const SequenceChunk& c : batch.chunks) {
      attention_sequences_.push_back({q_.data() + row * q_dim, attn_.data() + row * q_dim,
                                      c.num_tokens, c.start_pos, c.block_table.data()});
      for (int64_t i = 0; i < c.num_tokens; ++i) {
        positions_[row++] = static_cast<int32_t>(c.start_pos + i);
      }
    }
  }

  HERD_RETURN_IF_ERROR(
      cpu::EmbeddingLookup(model_.token_embedding, batch.token_ids.data(), num_tokens, x_.data()));
  for (int layer_idx = 0; layer_idx < s.num_layers; ++layer_idx) {
    const auto observe = [&](ResidualPoint point) {
      if (residual_observer_)
        residual_observer_(layer_idx, point, x_.data(), num_tokens, s.hidden_size);
    };
    observe(ResidualPoint::kBlockInput);
    HERD_RETURN_IF_ERROR(AttentionBlock(layer_idx, batch, num_tokens));
    observe(ResidualPoint::kMoeInput);
    HERD_RETURN_IF_ERROR(MoeBlock(layer_idx, num_tokens));
    observe(ResidualPoint::kBlockOutput);
  }

  // Final norm and lm head for the requested rows only.
  const int64_t num_rows = static_cast<int64_t>(batch.logit_rows.size());
  if (num_rows == 0) return absl::OkStatus();
  for (int64_t r = 0; r < num_rows; ++r) {
    cpu::RmsNorm(x_.data() + batch.logit_rows[r] * s.hidden_size, model_.output_norm.as<float>(), 1,
                 s.hidden_size, s.rms_norm_eps, h_.data() + r * s.hidden_size);
  }
  return cpu::Matmul(packed_lm_head_, nullptr, h_.data(), num_rows, logits, workspace_.data(),
                     workspace_.size(), pool_);
}

absl::Status Engine::AttentionBlock(int layer_idx, const Batch& batch, int64_t num_tokens) {
  const ModelSpec& s = model_.spec;
  const LayerWeights& w = model_.layers[layer_idx];
  const PackedLayer& p = packed_layers_[layer_idx];
  const int64_t q_dim = s.num_heads * s.head_dim;
  const int64_t kv_dim = s.num_kv_heads * s.head_dim;
  void* ws = workspace_.data();
  const size_t ws_bytes = workspace_.size();

  const int64_t hidden = s.hidden_size;
  ForTokens(pool_, num_tokens, [&](int64_t t, int64_t n) {
    cpu::RmsNorm(x_.data() + t * hidden, w.attn_norm.as<float>(), n, hidden, s.rms_norm_eps,
                 h_.data() + t * hidden);
  });
  if (linear_input_observer_) {
    linear_input_observer_(layer_idx, LinearInput::kAttention, h_.data(), num_tokens, s.hidden_size,
                           nullptr);
  }
  // q, k and v read the same input: one quantization, one parallel loop.
  const cpu::MatmulTask qkv[3] = {{&p.q, w.q.bias.as<float>(), h_.data(), num_tokens, q_.data()},
                                  {&p.k, w.k.bias.as<float>(), h_.data(), num_tokens, k_.data()},
                                  {&p.v, w.v.bias.as<float>(), h_.data(), num_tokens, v_.data()}};
  HERD_RETURN_IF_ERROR(cpu::MatmulBatch(qkv, 3, ws, ws_bytes, pool_));
  ForTokens(pool_, num_tokens, [&](int64_t t, int64_t n) {
    float* q = q_.data() + t * q_dim;
    float* k = k_.data() + t * kv_dim;
    if (s.qk_norm == QkNorm::kPerHead) {
      cpu::RmsNorm(q, w.q_norm.as<float>(), n * s.num_heads, s.head_dim, s.rms_norm_eps, q);
      cpu::RmsNorm(k, w.k_norm.as<float>(), n * s.num_kv_heads, s.head_dim, s.rms_norm_eps, k);
    } else if (s.qk_norm == QkNorm::kAllHeads) {
      cpu::RmsNorm(q, w.q_norm.as<float>(), n, q_dim, s.rms_norm_eps, q);
      cpu::RmsNorm(k, w.k_norm.as<float>(), n, kv_dim, s.rms_norm_eps, k);
    }
    cpu::ApplyRope(q, n, s.num_heads, s.head_dim, s.rope_dim, positions_.data() + t, s.rope_theta,
                   s.rope_style);
    cpu::ApplyRope(k, n, s.num_kv_heads, s.head_dim, s.rope_dim, positions_.data() + t,
                   s.rope_theta, s.rope_style);
  });

  // Each new token's K/V row goes to its position's block, then every
  // chunk's tokens attend over their blocks in one parallel loop. (An
  // expert-parallel rank with an empty batch has no cache to touch.)
  if (!batch.chunks.empty()) {
    KvCache& cache = *batch.cache;
    const int64_t block_tokens = cache.block_tokens();
    const bool half = cache.type() == DType::kF16;
    int64_t row = 0;
    for (const SequenceChunk& c : batch.chunks) {
      for (int64_t pos = c.start_pos; pos < c.start_pos + c.num_tokens; ++pos, ++row) {
        const int32_t block_idx = c.block_table[pos / block_tokens];
        const int64_t offset = (pos % block_tokens) * kv_dim;
        const float* k = k_.data() + row * kv_dim;
        const float* v = v_.data() + row * kv_dim;
        if (half) {
          cpu::ConvertF32ToF16(k, kv_dim, cache.keys<uint16_t>(layer_idx, block_idx) + offset);
          cpu::ConvertF32ToF16(v, kv_dim, cache.values<uint16_t>(layer_idx, block_idx) + offset);
        } else {
          std::memcpy(cache.keys(layer_idx, block_idx) + offset, k, kv_dim * sizeof(float));
          std::memcpy(cache.values(layer_idx, block_idx) + offset, v, kv_dim * sizeof(float));
        }
      }
    }
    cpu::Attention({s.num_heads, s.num_kv_heads, s.head_dim}, LayerKvBlocks(cache, layer_idx),
                   attention_sequences_.data(), static_cast<int64_t>(attention_sequences_.size()),
                   ws, ws_bytes, pool_);
  }
  if (linear_input_observer_) {
    linear_input_observer_(layer_idx, LinearInput::kAttentionOutput, attn_.data(), num_tokens,
                           q_dim, nullptr);
  }
  HERD_RETURN_IF_ERROR(cpu::Matmul(p.o, w.o.bias.as<float>(), attn_.data(), num_tokens,
                                   proj_.data(), ws, ws_bytes, pool_));
  ForTokens(pool_, num_tokens, [&](int64_t t, int64_t n) {
    cpu::AddInPlace(x_.data() + t * hidden, proj_.data() + t * hidden, n * hidden);
  });
  return absl::OkStatus();
}

absl::Status Engine::MoeBlock(int layer_idx, int64_t num_tokens) {
  const ModelSpec& s = model_.spec;
  const LayerWeights& w = model_.layers[layer_idx];
  const PackedLayer& p = packed_layers_[layer_idx];
  const int64_t top_k = s.num_experts_per_token;
  const int64_t hidden = s.hidden_size;
  void* ws = workspace_.data();
  const size_t ws_bytes = workspace_.size();

  if (w.moe_dropped) return absl::OkStatus();  // layer drop: every rank skips it alike
  const absl::Time start = absl::Now();
  absl::Cleanup account = [&] { stats_.moe_seconds += absl::ToDoubleSeconds(absl::Now() - start); };
  ForTokens(pool_, num_tokens, [&](int64_t t, int64_t n) {
    cpu::RmsNorm(x_.data() + t * hidden, w.ffn_norm.as<float>(), n, hidden, s.rms_norm_eps,
                 h_.data() + t * hidden);
  });
  if (linear_input_observer_) {
    linear_input_observer_(layer_idx, LinearInput::kMoe, h_.data(), num_tokens, hidden, nullptr);
  }
  HERD_RETURN_IF_ERROR(cpu::Matmul(p.router, nullptr, h_.data(), num_tokens, router_logits_.data(),
                                   ws, ws_bytes, pool_));
  // Expert drop: dropped experts can never be chosen (with softmax scoring,
  // the others' probabilities are those of a router without their rows).
  for (int e = 0; e < static_cast<int>(w.expert_dropped.size()); ++e) {
    if (!w.expert_dropped[e]) continue;
    for (int64_t t = 0; t < num_tokens; ++t) {
      router_logits_[t * s.num_experts + e] = -std::numeric_limits<float>::infinity();
    }
  }
  ForTokens(pool_, num_tokens, [&](int64_t t, int64_t n) {
    cpu::RouterTopK(router_logits_.data() + t * s.num_experts, n, s.num_experts, top_k,
                    s.router_scoring, s.norm_topk_prob, expert_idx_.data() + t * top_k,
                    expert_weights_.data() + t * top_k);
  });
  stats_.routed_slots += num_tokens * top_k;
  if (expert_skipping_) {
    stats_.skipped_slots += cpu::SkipMinorExperts(num_tokens, top_k, w.expert_skip_threshold,
                                                  expert_idx_.data(), expert_weights_.data());
  }
  if (routing_observer_) {
    routing_observer_(layer_idx, num_tokens, top_k, expert_idx_.data(), expert_weights_.data());
  }

  HERD_RETURN_IF_ERROR(expert_parallel() ? DispatchedExperts(layer_idx, num_tokens)
                                         : LocalExperts(layer_idx, num_tokens));
  ForTokens(pool_, num_tokens, [&](int64_t t, int64_t n) {
    std::fill_n(proj_.data() + t * hidden, n * hidden, 0.0f);
    cpu::CombineWeighted(expert_out_.data(), slot_to_row_.data() + t * top_k,
                         expert_weights_.data() + t * top_k, n, top_k, hidden,
                         proj_.data() + t * hidden);
  });
  if (s.shared_expert_ffn_size > 0) HERD_RETURN_IF_ERROR(SharedExpert(layer_idx, num_tokens));
  ForTokens(pool_, num_tokens, [&](int64_t t, int64_t n) {
    cpu::AddInPlace(x_.data() + t * hidden, proj_.data() + t * hidden, n * hidden);
  });
  return absl::OkStatus();
}

// Runs the routed experts of every slot in this process: expert_out_ gets one
// row per slot (row order: grouped by expert), slot_to_row_ maps slots to rows.
absl::Status Engine::LocalExperts(int layer_idx, int64_t num_tokens) {
  const ModelSpec& s = model_.spec;
  const int64_t top_k = s.num_experts_per_token;
  const int64_t num_slots = num_tokens * top_k;
  const int64_t hidden = s.hidden_size;
  cpu::PermuteByExpert(expert_idx_.data(), num_slots, s.num_experts, row_to_slot_.data(),
                       expert_offsets_.data());
  const int64_t num_rows = expert_offsets_[s.num_experts];  // skipped slots get no row
  stats_.layer_expert_rows[layer_idx] += num_rows;
  if (num_rows < num_slots) std::fill(slot_to_row_.begin(), slot_to_row_.begin() + num_slots, -1);
  pool_.ParallelFor(num_rows, 16, [&](int64_t begin, int64_t end, int) {
    for (int64_t r = begin; r < end; ++r) {
      const int32_t slot = row_to_slot_[r];
      slot_to_row_[slot] = static_cast<int32_t>(r);
      std::memcpy(expert_in_.data() + r * hidden, h_.data() + (slot / top_k) * hidden,
                  hidden * sizeof(float));
    }
  });
  if (linear_input_observer_) {
    linear_input_observer_(layer_idx, LinearInput::kExperts, expert_in_.data(), num_rows, hidden,
                           expert_offsets_.data());
  }
  return cpu::GroupedExpertFfn(experts_->LayerViews(layer_idx), expert_offsets_.data(),
                               expert_in_.data(), expert_out_.data(), workspace_.data(),
                               workspace_.size(), pool_);
}

// The same across ranks: each slot's hidden row goes to the rank holding the
// chosen replica of its expert (dispatch), that rank runs its local experts
// over everything it received, and the results come back to the slot they
// left from (combine). expert_out_ then holds one row per slot in slot order.
absl::Status Engine::DispatchedExperts(int layer_idx, int64_t num_tokens) {
  const ModelSpec& s = model_.spec;
  const int64_t top_k = s.num_experts_per_token;
  HERD_RETURN_IF_ERROR(exchange_->Dispatch(*placement_, layer_idx, h_.data(), expert_idx_.data(),
                                           num_tokens, top_k, s.hidden_size, expert_slots_,
                                           s.num_experts, stats_));
  // The rows that arrived, grouped by expert, through the local experts.
  const int64_t num_recv = exchange_->num_recv();
  const std::vector<cpu::ExpertFfnView>& experts = experts_->LayerViews(layer_idx);
  for (const cpu::ExpertFfnView& e : experts) {
    if (e.gate == nullptr) continue;
    const size_t bytes = cpu::GroupedExpertFfnWorkspaceBytes(e, num_recv);
    if (workspace_.size() < bytes) workspace_.resize(bytes);
    break;
  }
  HERD_RETURN_IF_ERROR(cpu::GroupedExpertFfn(experts, exchange_->offsets(), exchange_->grouped_in(),
                                             exchange_->grouped_out(), workspace_.data(),
                                             workspace_.size(), pool_));
  // Results come back in slot order: row = slot.
  HERD_RETURN_IF_ERROR(exchange_->Combine(expert_out_.data(), stats_));
  std::iota(slot_to_row_.begin(), slot_to_row_.begin() + num_tokens * top_k, 0);
  return absl::OkStatus();
}

// Adds the shared expert's output, scaled by its sigmoid gate, into proj_.
absl::Status Engine::SharedExpert(int layer_idx, int64_t num_tokens) {
  const ModelSpec& s = model_.spec;
  const LayerWeights& w = model_.layers[layer_idx];
  const int64_t hidden = s.hidden_size;
  const int32_t offsets[2] = {0, static_cast<int32_t>(num_tokens)};
  // expert_in_/expert_out_ hold num_tokens * top_k >= num_tokens rows.
  HERD_RETURN_IF_ERROR(cpu::GroupedExpertFfn(packed_layers_[layer_idx].shared, offsets, h_.data(),
                                             expert_out_.data(), workspace_.data(),
                                             workspace_.size(), pool_));
  ForTokens(pool_, num_tokens, [&](int64_t first, int64_t n) {
    for (int64_t t = first; t < first + n; ++t) {
      float gate = 1.0f;
      if (s.shared_expert_gated) {
        const float* g = w.shared_expert_gate.as<float>();
        float dot = 0.0f;
        for (int64_t i = 0; i < hidden; ++i) dot += g[i] * h_[t * hidden + i];
        gate = 1.0f / (1.0f + std::exp(-dot));
      }
      float* out = proj_.data() + t * hidden;
      const float* y = expert_out_.data() + t * hidden;
      for (int64_t i = 0; i < hidden; ++i) out[i] += gate * y[i];
    }
  });
  return absl::OkStatus();
}

}  // namespace herd
