#include "worker/engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"
#include "core/status.h"
#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/rope.h"
#include "kernels/router.h"

namespace herd {

Engine::Engine(const Model& model, int num_threads, int64_t max_step_tokens)
    : model_(model), pool_(num_threads), max_step_tokens_(max_step_tokens) {}

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
    HERD_ASSIGN_OR_RETURN(p.router, cpu::PackMatrix(w.router));
    const size_t num_experts = w.experts.size();
    p.gate.resize(num_experts);
    p.up.resize(num_experts);
    p.down.resize(num_experts);
    p.experts.resize(num_experts);
    for (size_t e = 0; e < num_experts; ++e) {
      HERD_ASSIGN_OR_RETURN(p.gate[e], cpu::PackMatrix(w.experts[e].gate));
      HERD_ASSIGN_OR_RETURN(p.up[e], cpu::PackMatrix(w.experts[e].up));
      HERD_ASSIGN_OR_RETURN(p.down[e], cpu::PackMatrix(w.experts[e].down));
      p.experts[e] = {&p.gate[e], &p.up[e], &p.down[e]};
    }
    if (w.shared_expert.resident()) {
      HERD_ASSIGN_OR_RETURN(p.shared_gate, cpu::PackMatrix(w.shared_expert.gate));
      HERD_ASSIGN_OR_RETURN(p.shared_up, cpu::PackMatrix(w.shared_expert.up));
      HERD_ASSIGN_OR_RETURN(p.shared_down, cpu::PackMatrix(w.shared_expert.down));
      p.shared = {{&p.shared_gate, &p.shared_up, &p.shared_down}};
    }
  }
  return absl::OkStatus();
}

void Engine::ReleaseRepackedSources() {
  auto release = [](const cpu::PackedMatrix& m) {
    if (m.layout != cpu::PackedLayout::kRowMajor) {
      ReleaseMappedPages(m.source.data(), m.source.num_bytes());
    }
  };
  release(packed_lm_head_);
  for (const PackedLayer& p : packed_layers_) {
    for (const cpu::PackedMatrix* m :
         {&p.q, &p.k, &p.v, &p.o, &p.router, &p.shared_gate, &p.shared_up, &p.shared_down}) {
      release(*m);
    }
    for (size_t e = 0; e < p.gate.size(); ++e) {
      release(p.gate[e]);
      release(p.up[e]);
      release(p.down[e]);
    }
  }
}

int64_t Engine::packed_weight_bytes() const {
  int64_t bytes = packed_lm_head_.num_bytes() + model_.token_embedding.num_bytes();
  for (const PackedLayer& p : packed_layers_) {
    for (const cpu::PackedMatrix* m :
         {&p.q, &p.k, &p.v, &p.o, &p.router, &p.shared_gate, &p.shared_up, &p.shared_down}) {
      bytes += m->num_bytes();
    }
    for (size_t e = 0; e < p.gate.size(); ++e) {
      bytes += p.gate[e].num_bytes() + p.up[e].num_bytes() + p.down[e].num_bytes();
    }
  }
  return bytes;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const Model& model,
                                                       const EngineOptions& options) {
  for (size_t l = 0; l < model.layers.size(); ++l) {
    for (size_t e = 0; e < model.layers[l].experts.size(); ++e) {
      if (!model.layers[l].experts[e].resident()) {
        return absl::InvalidArgumentError(
            absl::StrCat("the single-rank engine needs every expert; layer ", l, " expert ", e,
                         " was not loaded"));
      }
    }
  }
  const int threads =
      options.num_threads > 0 ? options.num_threads : ThreadPool::DefaultNumThreads();
  if (options.max_step_tokens < 1) {
    return absl::InvalidArgumentError("EngineOptions.max_step_tokens must be >= 1");
  }
  std::unique_ptr<Engine> engine(new Engine(model, threads, options.max_step_tokens));
  HERD_RETURN_IF_ERROR(engine->PackWeights());
  engine->ReleaseRepackedSources();
  return engine;
}

absl::Status Engine::ValidateBatch(const Batch& batch) const {
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  int64_t covered = 0;
  for (const SequenceChunk& c : batch.chunks) {
    if (c.cache == nullptr || c.num_tokens <= 0 || c.start_pos < 0) {
      return absl::InvalidArgumentError("batch chunk needs a cache, tokens and a position >= 0");
    }
    if (c.start_pos + c.num_tokens > c.cache->capacity_tokens()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence would reach position ", c.start_pos + c.num_tokens,
                       " but its KV cache holds ", c.cache->capacity_tokens(), " tokens"));
    }
    covered += c.num_tokens;
  }
  if (covered != num_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch chunks cover ", covered, " tokens but the batch has ", num_tokens));
  }
  for (int32_t id : batch.token_ids) {
    if (id < 0 || id >= model_.spec.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is outside the vocabulary [0, ", model_.spec.vocab_size, ")"));
    }
  }
  for (int64_t row : batch.logit_rows) {
    if (row < 0 || row >= num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("logit row ", row, " is outside the batch"));
    }
  }
  return absl::OkStatus();
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
    if (!p.shared.empty()) {
      bytes = std::max(bytes, cpu::GroupedExpertFfnWorkspaceBytes(p.shared[0], num_tokens));
    }
    if (!p.experts.empty()) {
      bytes = std::max(bytes, cpu::GroupedExpertFfnWorkspaceBytes(
                                  p.experts[0], num_tokens * s.num_experts_per_token));
    }
  }
  workspace_.resize(bytes);
  reserved_tokens_ = num_tokens;
  reserved_context_ = max_context;
}

absl::Status Engine::Forward(const Batch& batch, float* logits) {
  HERD_RETURN_IF_ERROR(ValidateBatch(batch));
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  if (num_tokens <= max_step_tokens_) return ForwardStep(batch, logits);

  // Long batches (prefill) run in steps of at most max_step_tokens_ tokens,
  // in order, so a chunk's later tokens see the K/V its earlier ones wrote.
  // This bounds activation memory; weights are still reused across a step.
  const int64_t vocab = model_.spec.vocab_size;
  std::vector<float> scratch;
  for (int64_t first = 0; first < num_tokens; first += max_step_tokens_) {
    const int64_t last = std::min(num_tokens, first + max_step_tokens_);
    Batch step;
    step.token_ids.assign(batch.token_ids.begin() + first, batch.token_ids.begin() + last);
    int64_t row = 0;
    for (const SequenceChunk& c : batch.chunks) {
      const int64_t begin = std::max(row, first);
      const int64_t end = std::min(row + c.num_tokens, last);
      if (begin < end) step.chunks.push_back({c.cache, c.start_pos + (begin - row), end - begin});
      row += c.num_tokens;
    }
    std::vector<int64_t> outputs;  // indices into batch.logit_rows
    for (size_t i = 0; i < batch.logit_rows.size(); ++i) {
      if (batch.logit_rows[i] >= first && batch.logit_rows[i] < last) {
        outputs.push_back(static_cast<int64_t>(i));
        step.logit_rows.push_back(batch.logit_rows[i] - first);
      }
    }
    const bool consecutive = outputs.empty() || outputs.back() - outputs.front() + 1 ==
                                                    static_cast<int64_t>(outputs.size());
    if (consecutive) {
      HERD_RETURN_IF_ERROR(
          ForwardStep(step, outputs.empty() ? logits : logits + outputs.front() * vocab));
    } else {
      scratch.resize(outputs.size() * vocab);
      HERD_RETURN_IF_ERROR(ForwardStep(step, scratch.data()));
      for (size_t i = 0; i < outputs.size(); ++i) {
        std::copy_n(scratch.data() + i * vocab, vocab, logits + outputs[i] * vocab);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Engine::ForwardStep(const Batch& batch, float* logits) {
  const ModelSpec& s = model_.spec;
  const int64_t num_tokens = static_cast<int64_t>(batch.token_ids.size());
  if (num_tokens == 0) return absl::OkStatus();
  int64_t max_context = 0;
  for (const SequenceChunk& c : batch.chunks) {
    max_context = std::max(max_context, c.start_pos + c.num_tokens);
  }
  Reserve(num_tokens, max_context);
  {
    int64_t row = 0;
    for (const SequenceChunk& c : batch.chunks) {
      for (int64_t i = 0; i < c.num_tokens; ++i) {
        positions_[row++] = static_cast<int32_t>(c.start_pos + i);
      }
    }
  }

  HERD_RETURN_IF_ERROR(
      cpu::EmbeddingLookup(model_.token_embedding, batch.token_ids.data(), num_tokens, x_.data()));
  for (int layer_idx = 0; layer_idx < s.num_layers; ++layer_idx) {
    HERD_RETURN_IF_ERROR(AttentionBlock(layer_idx, batch, num_tokens));
    HERD_RETURN_IF_ERROR(MoeBlock(layer_idx, num_tokens));
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

  cpu::RmsNorm(x_.data(), w.attn_norm.as<float>(), num_tokens, s.hidden_size, s.rms_norm_eps,
               h_.data());
  HERD_RETURN_IF_ERROR(cpu::Matmul(p.q, w.q.bias.as<float>(), h_.data(), num_tokens, q_.data(), ws,
                                   ws_bytes, pool_));
  HERD_RETURN_IF_ERROR(cpu::Matmul(p.k, w.k.bias.as<float>(), h_.data(), num_tokens, k_.data(), ws,
                                   ws_bytes, pool_));
  HERD_RETURN_IF_ERROR(cpu::Matmul(p.v, w.v.bias.as<float>(), h_.data(), num_tokens, v_.data(), ws,
                                   ws_bytes, pool_));
  if (s.qk_norm == QkNorm::kPerHead) {
    cpu::RmsNorm(q_.data(), w.q_norm.as<float>(), num_tokens * s.num_heads, s.head_dim,
                 s.rms_norm_eps, q_.data());
    cpu::RmsNorm(k_.data(), w.k_norm.as<float>(), num_tokens * s.num_kv_heads, s.head_dim,
                 s.rms_norm_eps, k_.data());
  } else if (s.qk_norm == QkNorm::kAllHeads) {
    cpu::RmsNorm(q_.data(), w.q_norm.as<float>(), num_tokens, q_dim, s.rms_norm_eps, q_.data());
    cpu::RmsNorm(k_.data(), w.k_norm.as<float>(), num_tokens, kv_dim, s.rms_norm_eps, k_.data());
  }
  cpu::ApplyRope(q_.data(), num_tokens, s.num_heads, s.head_dim, s.rope_dim, positions_.data(),
                 s.rope_theta, s.rope_style);
  cpu::ApplyRope(k_.data(), num_tokens, s.num_kv_heads, s.head_dim, s.rope_dim, positions_.data(),
                 s.rope_theta, s.rope_style);

  int64_t row = 0;
  for (const SequenceChunk& c : batch.chunks) {
    float* keys = c.cache->keys(layer_idx);
    float* values = c.cache->values(layer_idx);
    std::memcpy(keys + c.start_pos * kv_dim, k_.data() + row * kv_dim,
                c.num_tokens * kv_dim * sizeof(float));
    std::memcpy(values + c.start_pos * kv_dim, v_.data() + row * kv_dim,
                c.num_tokens * kv_dim * sizeof(float));
    cpu::Attention({s.num_heads, s.num_kv_heads, s.head_dim}, q_.data() + row * q_dim, c.num_tokens,
                   c.start_pos, keys, values, attn_.data() + row * q_dim, ws, ws_bytes, pool_);
    row += c.num_tokens;
  }
  HERD_RETURN_IF_ERROR(cpu::Matmul(p.o, w.o.bias.as<float>(), attn_.data(), num_tokens,
                                   proj_.data(), ws, ws_bytes, pool_));
  cpu::AddInPlace(x_.data(), proj_.data(), num_tokens * s.hidden_size);
  return absl::OkStatus();
}

absl::Status Engine::MoeBlock(int layer_idx, int64_t num_tokens) {
  const ModelSpec& s = model_.spec;
  const LayerWeights& w = model_.layers[layer_idx];
  const PackedLayer& p = packed_layers_[layer_idx];
  const int64_t top_k = s.num_experts_per_token;
  const int64_t num_slots = num_tokens * top_k;
  const int64_t hidden = s.hidden_size;
  void* ws = workspace_.data();
  const size_t ws_bytes = workspace_.size();

  cpu::RmsNorm(x_.data(), w.ffn_norm.as<float>(), num_tokens, hidden, s.rms_norm_eps, h_.data());
  HERD_RETURN_IF_ERROR(cpu::Matmul(p.router, nullptr, h_.data(), num_tokens, router_logits_.data(),
                                   ws, ws_bytes, pool_));
  cpu::RouterTopK(router_logits_.data(), num_tokens, s.num_experts, top_k, s.router_scoring,
                  s.norm_topk_prob, expert_idx_.data(), expert_weights_.data());
  if (routing_observer_) {
    routing_observer_(layer_idx, num_tokens, top_k, expert_idx_.data(), expert_weights_.data());
  }

  cpu::PermuteByExpert(expert_idx_.data(), num_slots, s.num_experts, row_to_slot_.data(),
                       expert_offsets_.data());
  for (int64_t r = 0; r < num_slots; ++r) {
    const int32_t slot = row_to_slot_[r];
    slot_to_row_[slot] = static_cast<int32_t>(r);
    std::memcpy(expert_in_.data() + r * hidden, h_.data() + (slot / top_k) * hidden,
                hidden * sizeof(float));
  }
  HERD_RETURN_IF_ERROR(cpu::GroupedExpertFfn(p.experts, expert_offsets_.data(), expert_in_.data(),
                                             expert_out_.data(), ws, ws_bytes, pool_));
  std::fill(proj_.begin(), proj_.begin() + num_tokens * hidden, 0.0f);
  cpu::CombineWeighted(expert_out_.data(), slot_to_row_.data(), expert_weights_.data(), num_tokens,
                       top_k, hidden, proj_.data());
  if (s.shared_expert_ffn_size > 0) HERD_RETURN_IF_ERROR(SharedExpert(layer_idx, num_tokens));
  cpu::AddInPlace(x_.data(), proj_.data(), num_tokens * hidden);
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
  for (int64_t t = 0; t < num_tokens; ++t) {
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
  return absl::OkStatus();
}

}  // namespace herd
