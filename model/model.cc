#include "model/model.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd {

const char* ArchitectureName(Architecture arch) {
  switch (arch) {
    case Architecture::kMixtral:
      return "mixtral";
    case Architecture::kQwen2Moe:
      return "qwen2moe";
    case Architecture::kQwen3Moe:
      return "qwen3moe";
    case Architecture::kOlmoe:
      return "olmoe";
  }
  return "?";
}

const char* ModuleKindName(ModuleKind kind) {
  switch (kind) {
    case ModuleKind::kAttention:
      return "attention";
    case ModuleKind::kExperts:
      return "experts";
    case ModuleKind::kSharedExpert:
      return "shared_expert";
    case ModuleKind::kRouter:
      return "router";
    case ModuleKind::kEmbeddings:
      return "embeddings";
    case ModuleKind::kNorms:
      return "norms";
    case ModuleKind::kOther:
      return "other";
  }
  return "?";
}

absl::Status ModelSpec::Validate() const {
  auto positive = [](const char* field, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(field, " must be > 0, got ", v));
    return absl::OkStatus();
  };
  HERD_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  HERD_RETURN_IF_ERROR(positive("hidden_size", hidden_size));
  HERD_RETURN_IF_ERROR(positive("num_layers", num_layers));
  HERD_RETURN_IF_ERROR(positive("num_heads", num_heads));
  HERD_RETURN_IF_ERROR(positive("num_kv_heads", num_kv_heads));
  HERD_RETURN_IF_ERROR(positive("head_dim", head_dim));
  HERD_RETURN_IF_ERROR(positive("num_experts", num_experts));
  HERD_RETURN_IF_ERROR(positive("num_experts_per_token", num_experts_per_token));
  HERD_RETURN_IF_ERROR(positive("expert_ffn_size", expert_ffn_size));
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_heads (", num_heads, ") must be a multiple of num_kv_heads (", num_kv_heads, ")"));
  }
  if (num_experts_per_token > num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("num_experts_per_token (", num_experts_per_token,
                                                   ") exceeds num_experts (", num_experts, ")"));
  }
  if (rope_dim <= 0 || rope_dim > head_dim || rope_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope_dim must be even and in (0, head_dim=", head_dim, "], got ", rope_dim));
  }
  if (shared_expert_ffn_size < 0) {
    return absl::InvalidArgumentError("shared_expert_ffn_size must be >= 0");
  }
  if (!(rms_norm_eps > 0.0f) || !(rope_theta > 0.0f)) {
    return absl::InvalidArgumentError("rms_norm_eps and rope_theta must be > 0");
  }
  return absl::OkStatus();
}

TensorView Model::OwnF32Copy(const TensorView& src) {
  const int64_t n = src.num_elements();
  auto buffer = std::make_unique<float[]>(n > 0 ? n : 1);
  DequantizeRow(src.dtype(), src.data(), buffer.get(), n);
  TensorView view(DType::kF32, {n}, buffer.get());
  owned_buffers.push_back(std::move(buffer));
  return view;
}

namespace {

bool IsWeightDType(DType t) { return t != DType::kI32; }

absl::Status CheckMatrix(const std::string& what, const TensorView& t, int64_t rows, int64_t cols,
                         bool required = true) {
  if (t.empty()) {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("missing tensor: ", what));
  }
  if (t.rank() != 2 || t.dim(0) != rows || t.dim(1) != cols) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", what, " has shape ", t.DebugString(),
                                                   ", expected [", rows, ", ", cols, "]"));
  }
  if (!IsWeightDType(t.dtype())) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", what, " has unsupported dtype ", DTypeName(t.dtype())));
  }
  if (t.dtype() == DType::kQuant) {
    if (absl::Status fits = t.quant_format().ValidateShape(rows, cols); !fits.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", what, ": ", fits.message()));
    }
  }
  if (cols % BlockSize(t.dtype()) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", what, " row length ", cols,
                                                   " is not a multiple of the ",
                                                   DTypeName(t.dtype()), " block size"));
  }
  return absl::OkStatus();
}

absl::Status CheckVector(const std::string& what, const TensorView& t, int64_t n,
                         bool required = true) {
  if (t.empty()) {
    if (!required) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("missing tensor: ", what));
  }
  if (t.dtype() != DType::kF32 || t.num_elements() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", what, " is ", t.DebugString(), ", expected F32 [", n, "]"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelWeights(const Model& model) {
  const ModelSpec& s = model.spec;
  HERD_RETURN_IF_ERROR(s.Validate());
  const int64_t h = s.hidden_size;
  const int64_t q_dim = s.num_heads * s.head_dim;
  const int64_t kv_dim = s.num_kv_heads * s.head_dim;
  HERD_RETURN_IF_ERROR(CheckMatrix("token embedding", model.token_embedding, s.vocab_size, h));
  HERD_RETURN_IF_ERROR(CheckMatrix("lm head", model.lm_head, s.vocab_size, h));
  HERD_RETURN_IF_ERROR(CheckVector("output norm", model.output_norm, h));
  if (static_cast<int64_t>(model.layers.size()) != s.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("model has ", model.layers.size(), " layers, spec says ", s.num_layers));
  }
  for (int64_t l = 0; l < s.num_layers; ++l) {
    const LayerWeights& w = model.layers[l];
    const std::string p = absl::StrCat("layer ", l, " ");
    HERD_RETURN_IF_ERROR(CheckVector(p + "attn_norm", w.attn_norm, h));
    HERD_RETURN_IF_ERROR(CheckMatrix(p + "q", w.q.weight, q_dim, h));
    HERD_RETURN_IF_ERROR(CheckMatrix(p + "k", w.k.weight, kv_dim, h));
    HERD_RETURN_IF_ERROR(CheckMatrix(p + "v", w.v.weight, kv_dim, h));
    HERD_RETURN_IF_ERROR(CheckMatrix(p + "o", w.o.weight, h, q_dim));
    HERD_RETURN_IF_ERROR(CheckVector(p + "q bias", w.q.bias, q_dim, s.attention_bias));
    HERD_RETURN_IF_ERROR(CheckVector(p + "k bias", w.k.bias, kv_dim, s.attention_bias));
    HERD_RETURN_IF_ERROR(CheckVector(p + "v bias", w.v.bias, kv_dim, s.attention_bias));
    HERD_RETURN_IF_ERROR(CheckVector(p + "o bias", w.o.bias, h, /*required=*/false));
    if (s.qk_norm != QkNorm::kNone) {
      const bool per_head = s.qk_norm == QkNorm::kPerHead;
      HERD_RETURN_IF_ERROR(CheckVector(p + "q_norm", w.q_norm, per_head ? s.head_dim : q_dim));
      HERD_RETURN_IF_ERROR(CheckVector(p + "k_norm", w.k_norm, per_head ? s.head_dim : kv_dim));
    }
    if (w.moe_dropped) continue;  // layer drop: attention only
    if (!w.expert_dropped.empty() &&
        static_cast<int64_t>(w.expert_dropped.size()) != s.num_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          p, "has ", w.expert_dropped.size(), " expert-drop flags, expected ", s.num_experts));
    }
    if (!(w.expert_skip_threshold >= 0.0f && w.expert_skip_threshold <= 1.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "expert skip threshold ", w.expert_skip_threshold, " is not in [0, 1]"));
    }
    int64_t kept = 0;
    for (int64_t e = 0; e < s.num_experts; ++e) kept += w.ExpertExists(static_cast<int>(e));
    if (kept < s.num_experts_per_token) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "keeps ", kept, " experts, fewer than top-k ", s.num_experts_per_token));
    }
    HERD_RETURN_IF_ERROR(CheckVector(p + "ffn_norm", w.ffn_norm, h));
    HERD_RETURN_IF_ERROR(CheckMatrix(p + "router", w.router, s.num_experts, h));
    if (static_cast<int64_t>(w.experts.size()) != s.num_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, "has ", w.experts.size(), " expert slots, expected ", s.num_experts));
    }
    for (int64_t e = 0; e < s.num_experts; ++e) {
      const ExpertFfnWeights& x = w.experts[e];
      if (!x.resident()) continue;
      const std::string pe = absl::StrCat(p, "expert ", e, " ");
      HERD_RETURN_IF_ERROR(CheckMatrix(pe + "gate", x.gate, s.expert_ffn_size, h));
      HERD_RETURN_IF_ERROR(CheckMatrix(pe + "up", x.up, s.expert_ffn_size, h));
      HERD_RETURN_IF_ERROR(CheckMatrix(pe + "down", x.down, h, s.expert_ffn_size));
    }
    if (s.shared_expert_ffn_size > 0) {
      const int64_t f = s.shared_expert_ffn_size;
      HERD_RETURN_IF_ERROR(CheckMatrix(p + "shared expert gate", w.shared_expert.gate, f, h));
      HERD_RETURN_IF_ERROR(CheckMatrix(p + "shared expert up", w.shared_expert.up, f, h));
      HERD_RETURN_IF_ERROR(CheckMatrix(p + "shared expert down", w.shared_expert.down, h, f));
      HERD_RETURN_IF_ERROR(CheckVector(p + "shared expert gate vector", w.shared_expert_gate, h,
                                       s.shared_expert_gated));
    }
  }
  return absl::OkStatus();
}

}  // namespace herd
