#include "model/gguf_loader.h"

#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/status.h"
#include "model/gguf_file.h"

namespace herd {
namespace {

constexpr const char* kSupportedArchitectures =
    "llama (with experts, i.e. Mixtral), qwen2moe, qwen3moe";

// llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE values (`<arch>.expert_gating_func`).
constexpr int64_t kGatingSoftmax = 1;
constexpr int64_t kGatingSigmoid = 2;

std::string ShapeString(const TensorView& v) {
  std::string out = "[";
  for (int i = 0; i < v.rank(); ++i) absl::StrAppend(&out, i ? ", " : "", v.dim(i));
  return out + "]";
}

// Builds one Model from one parsed GGUF file. Every error names the file.
class GgufModelBuilder {
 public:
  GgufModelBuilder(const GgufFile& gguf, const ModelLoadOptions& options, Model* model)
      : gguf_(gguf), options_(options), model_(model) {}

  absl::Status Build() {
    HERD_RETURN_IF_ERROR(ReadSpec());
    HERD_RETURN_IF_ERROR(ReadGlobalWeights());
    for (int64_t layer_idx = 0; layer_idx < spec().num_layers; ++layer_idx) {
      model_->layers.emplace_back();
      HERD_RETURN_IF_ERROR(ReadLayer(static_cast<int>(layer_idx), &model_->layers.back()));
    }
    return absl::OkStatus();
  }

 private:
  ModelSpec& spec() { return model_->spec; }

  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(gguf_.path(), ": ", message));
  }

  // ---- metadata ----------------------------------------------------------

  std::string Key(absl::string_view suffix) const { return absl::StrCat(arch_, ".", suffix); }

  absl::Status MissingKey(absl::string_view key) const {
    if (arch_.empty()) return Error(absl::StrCat("missing metadata key '", key, "'"));
    return Error(
        absl::StrCat("missing metadata key '", key, "' (required for architecture ", arch_, ")"));
  }

  absl::StatusOr<int64_t> RequiredInt(absl::string_view suffix) const {
    const std::string key = Key(suffix);
    if (!gguf_.HasKey(key)) return MissingKey(key);
    return gguf_.GetI64(key);
  }
  absl::StatusOr<int64_t> OptionalInt(absl::string_view suffix, int64_t default_value) const {
    const std::string key = Key(suffix);
    if (!gguf_.HasKey(key)) return default_value;
    return gguf_.GetI64(key);
  }
  absl::StatusOr<float> RequiredFloat(absl::string_view suffix) const {
    const std::string key = Key(suffix);
    if (!gguf_.HasKey(key)) return MissingKey(key);
    return gguf_.GetF32(key);
  }
  absl::StatusOr<float> OptionalFloat(absl::string_view suffix, float default_value) const {
    const std::string key = Key(suffix);
    if (!gguf_.HasKey(key)) return default_value;
    return gguf_.GetF32(key);
  }

  absl::Status ReadSpec();

  // ---- tensors -----------------------------------------------------------

  bool Has(const std::string& name) const { return gguf_.FindTensor(name) != nullptr; }

  // The view of tensor `name` (as stored), checked against `shape`. Missing
  // tensors, unsupported types and wrong shapes are InvalidArgument naming it.
  absl::StatusOr<TensorView> Tensor(const std::string& name,
                                    const std::vector<int64_t>& shape) const {
    const GgufTensorInfo* info = gguf_.FindTensor(name);
    if (info == nullptr) return Error(absl::StrCat("missing tensor '", name, "'"));
    HERD_ASSIGN_OR_RETURN(TensorView view, gguf_.GetView(*info));
    bool match = view.rank() == static_cast<int>(shape.size());
    for (int i = 0; match && i < view.rank(); ++i) match = view.dim(i) == shape[i];
    if (!match) {
      std::vector<int64_t> expected_ne(shape.rbegin(), shape.rend());
      return Error(absl::StrCat("tensor '", name, "' has shape ", ShapeString(view), " (ggml ne ",
                                info->NeString(), "), expected [", absl::StrJoin(shape, ", "),
                                "] (ggml ne [", absl::StrJoin(expected_ne, ", "), "])"));
    }
    return view;
  }

  void Record(const std::string& name, ModuleKind module, const TensorView& view) {
    model_->tensors.push_back(TensorRecord{name, module, view});
  }

  // A weight matrix [rows, cols], recorded and returned as a view into the map.
  absl::StatusOr<TensorView> Matrix(const std::string& name, ModuleKind module, int64_t rows,
                                    int64_t cols) {
    HERD_ASSIGN_OR_RETURN(TensorView view, Tensor(name, {rows, cols}));
    Record(name, module, view);
    return view;
  }

  // A 1-D tensor of `n` values (also accepted stored as [1, n]), recorded and
  // returned as an owned F32 copy.
  absl::StatusOr<TensorView> Vector(const std::string& name, ModuleKind module, int64_t n) {
    const GgufTensorInfo* info = gguf_.FindTensor(name);
    const bool two_dim = info != nullptr && info->num_dims == 2 && info->ne[1] == 1;
    HERD_ASSIGN_OR_RETURN(TensorView view, two_dim ? Tensor(name, {1, n}) : Tensor(name, {n}));
    if (view.dtype() == DType::kI32) {
      return Error(absl::StrCat("tensor '", name, "' is I32; expected a float type"));
    }
    Record(name, module, view);
    return model_->OwnF32Copy(view);
  }

  absl::Status ReadGlobalWeights();
  absl::Status ReadLayer(int layer_idx, LayerWeights* layer);
  absl::Status ReadExperts(int layer_idx, LayerWeights* layer);

  const GgufFile& gguf_;
  const ModelLoadOptions& options_;
  Model* model_;
  std::string arch_;
};

absl::Status GgufModelBuilder::ReadSpec() {
  ModelSpec& s = spec();
  if (!gguf_.HasKey("general.architecture")) return MissingKey("general.architecture");
  HERD_ASSIGN_OR_RETURN(arch_, gguf_.GetString("general.architecture"));
  if (arch_ == "llama") {
    s.architecture = Architecture::kMixtral;
    s.rope_style = RopeStyle::kGptJ;
    s.norm_topk_prob = true;
  } else if (arch_ == "qwen2moe") {
    s.architecture = Architecture::kQwen2Moe;
    s.rope_style = RopeStyle::kNeox;
    s.norm_topk_prob = false;
  } else if (arch_ == "qwen3moe") {
    s.architecture = Architecture::kQwen3Moe;
    s.rope_style = RopeStyle::kNeox;
    s.norm_topk_prob = true;
  } else {
    return Error(absl::StrCat("unsupported architecture '", arch_, "'; Herd supports ",
                              kSupportedArchitectures));
  }
  if (gguf_.HasKey("general.name")) {
    HERD_ASSIGN_OR_RETURN(s.name, gguf_.GetString("general.name"));
  }

  HERD_ASSIGN_OR_RETURN(s.num_experts, OptionalInt("expert_count", 0));
  if (s.num_experts <= 0) {
    if (arch_ == "llama") {
      return Error(absl::StrCat("architecture llama without experts (", Key("expert_count"),
                                " missing or 0) is a dense model; dense models are not "
                                "supported, Herd runs mixture-of-experts models only"));
    }
    if (!gguf_.HasKey(Key("expert_count"))) return MissingKey(Key("expert_count"));
    return Error(absl::StrCat(Key("expert_count"), " must be > 0, got ", s.num_experts));
  }
  HERD_ASSIGN_OR_RETURN(s.num_experts_per_token, RequiredInt("expert_used_count"));
  HERD_ASSIGN_OR_RETURN(s.hidden_size, RequiredInt("embedding_length"));
  HERD_ASSIGN_OR_RETURN(s.num_layers, RequiredInt("block_count"));
  HERD_ASSIGN_OR_RETURN(s.context_length, OptionalInt("context_length", 0));
  HERD_ASSIGN_OR_RETURN(s.num_heads, RequiredInt("attention.head_count"));
  HERD_ASSIGN_OR_RETURN(s.num_kv_heads, OptionalInt("attention.head_count_kv", s.num_heads));
  HERD_ASSIGN_OR_RETURN(s.rms_norm_eps, RequiredFloat("attention.layer_norm_rms_epsilon"));
  HERD_ASSIGN_OR_RETURN(s.rope_theta, OptionalFloat("rope.freq_base", 10000.0f));

  // NOTE: the layer loop allocates per layer, so bound the count by what the
  // file can hold before trusting it.
  if (s.num_layers > static_cast<int64_t>(gguf_.tensors().size())) {
    return Error(absl::StrCat(Key("block_count"), " = ", s.num_layers, " but the file has only ",
                              gguf_.tensors().size(), " tensors"));
  }
  if (s.num_heads <= 0 || s.hidden_size <= 0) {
    return Error(absl::StrCat(Key("attention.head_count"), " and ", Key("embedding_length"),
                              " must be > 0, got ", s.num_heads, " and ", s.hidden_size));
  }
  if (gguf_.HasKey(Key("attention.key_length"))) {
    HERD_ASSIGN_OR_RETURN(s.head_dim, RequiredInt("attention.key_length"));
  } else {
    if (s.hidden_size % s.num_heads != 0) {
      return Error(absl::StrCat(Key("embedding_length"), " (", s.hidden_size,
                                ") is not a multiple of ", Key("attention.head_count"), " (",
                                s.num_heads, ") and ", Key("attention.key_length"), " is not set"));
    }
    s.head_dim = s.hidden_size / s.num_heads;
  }
  HERD_ASSIGN_OR_RETURN(const int64_t value_length,
                        OptionalInt("attention.value_length", s.head_dim));
  if (value_length != s.head_dim) {
    return Error(absl::StrCat(Key("attention.value_length"), " (", value_length, ") differs from ",
                              "the key length (", s.head_dim, "); Herd needs them equal"));
  }
  HERD_ASSIGN_OR_RETURN(s.rope_dim, OptionalInt("rope.dimension_count", s.head_dim));

  if (gguf_.HasKey(Key("rope.scaling.type"))) {
    HERD_ASSIGN_OR_RETURN(const std::string scaling, gguf_.GetString(Key("rope.scaling.type")));
    HERD_ASSIGN_OR_RETURN(const float factor, OptionalFloat("rope.scaling.factor", 0.0f));
    if (scaling != "none" && factor != 1.0f) {
      return Error(
          absl::StrCat("RoPE scaling '", scaling, "' (factor ", factor, ") is not supported"));
    }
  }
  HERD_ASSIGN_OR_RETURN(const int64_t gating, OptionalInt("expert_gating_func", kGatingSoftmax));
  if (gating == kGatingSoftmax) {
    s.router_scoring = RouterScoring::kSoftmax;
  } else if (gating == kGatingSigmoid) {
    s.router_scoring = RouterScoring::kSigmoid;
  } else {
    return Error(absl::StrCat(Key("expert_gating_func"), " = ", gating,
                              " is not supported (1 = softmax, 2 = sigmoid)"));
  }
  if (gguf_.HasKey(Key("expert_weights_norm"))) {
    HERD_ASSIGN_OR_RETURN(s.norm_topk_prob, gguf_.GetBool(Key("expert_weights_norm")));
  }

  // Expert FFN width: llama keeps it in feed_forward_length, the Qwen MoE
  // families in expert_feed_forward_length; when the key is absent the
  // stored tensor says.
  const char* ffn_key = arch_ == "llama" ? "feed_forward_length" : "expert_feed_forward_length";
  if (gguf_.HasKey(Key(ffn_key))) {
    HERD_ASSIGN_OR_RETURN(s.expert_ffn_size, RequiredInt(ffn_key));
  } else if (const GgufTensorInfo* t = gguf_.FindTensor("blk.0.ffn_gate_exps.weight")) {
    s.expert_ffn_size = t->ne[1];
  } else if (const GgufTensorInfo* t0 = gguf_.FindTensor("blk.0.ffn_gate.0.weight")) {
    s.expert_ffn_size = t0->ne[1];
  } else {
    return MissingKey(Key(ffn_key));
  }

  // Qwen2-MoE always has a gated shared expert (llama.cpp requires it);
  // other families get one when the file holds its tensors.
  const bool has_shared = arch_ == "qwen2moe" || Has("blk.0.ffn_up_shexp.weight");
  if (has_shared) {
    if (gguf_.HasKey(Key("expert_shared_feed_forward_length"))) {
      HERD_ASSIGN_OR_RETURN(s.shared_expert_ffn_size,
                            RequiredInt("expert_shared_feed_forward_length"));
    } else if (const GgufTensorInfo* t = gguf_.FindTensor("blk.0.ffn_up_shexp.weight")) {
      s.shared_expert_ffn_size = t->ne[1];
    } else {
      return Error("missing tensor 'blk.0.ffn_up_shexp.weight'");
    }
    if (s.shared_expert_ffn_size <= 0) {
      return Error(absl::StrCat(Key("expert_shared_feed_forward_length"), " must be > 0, got ",
                                s.shared_expert_ffn_size));
    }
    s.shared_expert_gated = arch_ == "qwen2moe" || Has("blk.0.ffn_gate_inp_shexp.weight");
  }
  s.attention_bias = arch_ == "qwen2moe" || Has("blk.0.attn_q.bias");
  s.qk_norm =
      (arch_ == "qwen3moe" || Has("blk.0.attn_q_norm.weight")) ? QkNorm::kPerHead : QkNorm::kNone;

  // The vocabulary: the key when present, else the embedding's rows.
  if (gguf_.HasKey(Key("vocab_size"))) {
    HERD_ASSIGN_OR_RETURN(s.vocab_size, RequiredInt("vocab_size"));
  } else if (const GgufTensorInfo* t = gguf_.FindTensor("token_embd.weight")) {
    s.vocab_size = t->ne[1];
  } else {
    return Error("missing tensor 'token_embd.weight'");
  }

  const absl::Status valid = s.Validate();
  if (!valid.ok()) return Error(valid.message());
  return absl::OkStatus();
}

absl::Status GgufModelBuilder::ReadGlobalWeights() {
  const ModelSpec& s = model_->spec;
  HERD_ASSIGN_OR_RETURN(
      model_->token_embedding,
      Matrix("token_embd.weight", ModuleKind::kEmbeddings, s.vocab_size, s.hidden_size));
  HERD_ASSIGN_OR_RETURN(model_->output_norm,
                        Vector("output_norm.weight", ModuleKind::kNorms, s.hidden_size));
  if (Has("output.weight")) {
    HERD_ASSIGN_OR_RETURN(model_->lm_head, Matrix("output.weight", ModuleKind::kEmbeddings,
                                                  s.vocab_size, s.hidden_size));
    model_->spec.tied_embeddings = false;
  } else {
    model_->lm_head = model_->token_embedding;
    model_->spec.tied_embeddings = true;
  }
  return absl::OkStatus();
}

absl::Status GgufModelBuilder::ReadLayer(int layer_idx, LayerWeights* layer) {
  const ModelSpec& s = model_->spec;
  const int64_t h = s.hidden_size;
  const int64_t q_dim = s.num_heads * s.head_dim;
  const int64_t kv_dim = s.num_kv_heads * s.head_dim;
  const std::string p = absl::StrCat("blk.", layer_idx, ".");
  constexpr ModuleKind kAttn = ModuleKind::kAttention;

  HERD_ASSIGN_OR_RETURN(layer->attn_norm, Vector(p + "attn_norm.weight", ModuleKind::kNorms, h));
  HERD_ASSIGN_OR_RETURN(layer->q.weight, Matrix(p + "attn_q.weight", kAttn, q_dim, h));
  HERD_ASSIGN_OR_RETURN(layer->k.weight, Matrix(p + "attn_k.weight", kAttn, kv_dim, h));
  HERD_ASSIGN_OR_RETURN(layer->v.weight, Matrix(p + "attn_v.weight", kAttn, kv_dim, h));
  HERD_ASSIGN_OR_RETURN(layer->o.weight, Matrix(p + "attn_output.weight", kAttn, h, q_dim));
  if (Has(p + "attn_output.bias")) {
    return Error(absl::StrCat("tensor '", p,
                              "attn_output.bias': output projection biases are "
                              "not supported"));
  }
  if (s.attention_bias) {
    HERD_ASSIGN_OR_RETURN(layer->q.bias, Vector(p + "attn_q.bias", kAttn, q_dim));
    HERD_ASSIGN_OR_RETURN(layer->k.bias, Vector(p + "attn_k.bias", kAttn, kv_dim));
    HERD_ASSIGN_OR_RETURN(layer->v.bias, Vector(p + "attn_v.bias", kAttn, kv_dim));
  }
  if (s.qk_norm == QkNorm::kPerHead) {
    HERD_ASSIGN_OR_RETURN(layer->q_norm, Vector(p + "attn_q_norm.weight", kAttn, s.head_dim));
    HERD_ASSIGN_OR_RETURN(layer->k_norm, Vector(p + "attn_k_norm.weight", kAttn, s.head_dim));
  }
  HERD_ASSIGN_OR_RETURN(layer->ffn_norm, Vector(p + "ffn_norm.weight", ModuleKind::kNorms, h));
  HERD_ASSIGN_OR_RETURN(layer->router,
                        Matrix(p + "ffn_gate_inp.weight", ModuleKind::kRouter, s.num_experts, h));
  HERD_RETURN_IF_ERROR(ReadExperts(layer_idx, layer));

  if (s.shared_expert_ffn_size > 0) {
    const int64_t f = s.shared_expert_ffn_size;
    constexpr ModuleKind kShared = ModuleKind::kSharedExpert;
    HERD_ASSIGN_OR_RETURN(layer->shared_expert.gate,
                          Matrix(p + "ffn_gate_shexp.weight", kShared, f, h));
    HERD_ASSIGN_OR_RETURN(layer->shared_expert.up,
                          Matrix(p + "ffn_up_shexp.weight", kShared, f, h));
    HERD_ASSIGN_OR_RETURN(layer->shared_expert.down,
                          Matrix(p + "ffn_down_shexp.weight", kShared, h, f));
    if (s.shared_expert_gated) {
      HERD_ASSIGN_OR_RETURN(layer->shared_expert_gate,
                            Vector(p + "ffn_gate_inp_shexp.weight", kShared, h));
    }
  }
  return absl::OkStatus();
}

absl::Status GgufModelBuilder::ReadExperts(int layer_idx, LayerWeights* layer) {
  const ModelSpec& s = model_->spec;
  const int64_t h = s.hidden_size;
  const int64_t f = s.expert_ffn_size;
  const int64_t num_experts = s.num_experts;
  const std::string p = absl::StrCat("blk.", layer_idx, ".");
  auto wanted = [&](int64_t expert_idx) {
    return !options_.load_expert || options_.load_expert(layer_idx, static_cast<int>(expert_idx));
  };

  const std::string gate_name = p + "ffn_gate_exps.weight";
  const std::string up_name = p + "ffn_up_exps.weight";
  const std::string down_name = p + "ffn_down_exps.weight";
  if (Has(gate_name) || !Has(p + "ffn_gate.0.weight")) {
    // Stacked: [num_experts, out, in]; expert e is the e-th contiguous slab.
    HERD_ASSIGN_OR_RETURN(const TensorView gate, Tensor(gate_name, {num_experts, f, h}));
    HERD_ASSIGN_OR_RETURN(const TensorView up, Tensor(up_name, {num_experts, f, h}));
    HERD_ASSIGN_OR_RETURN(const TensorView down, Tensor(down_name, {num_experts, h, f}));
    auto slab = [](const TensorView& stacked, int64_t expert_idx) {
      const int64_t rows = stacked.dim(1);
      const int64_t cols = stacked.dim(2);
      const uint8_t* base = static_cast<const uint8_t*>(stacked.data());
      return TensorView(stacked.dtype(), {rows, cols},
                        base + expert_idx * rows * RowBytes(stacked.dtype(), cols));
    };
    // NOTE: the shapes above were checked against a file whose data section
    // holds them, so num_experts is bounded by the file size here.
    layer->experts.resize(num_experts);
    bool any_loaded = false;
    for (int64_t e = 0; e < num_experts; ++e) {
      if (!wanted(e)) continue;
      layer->experts[e].gate = slab(gate, e);
      layer->experts[e].up = slab(up, e);
      layer->experts[e].down = slab(down, e);
      any_loaded = true;
    }
    if (any_loaded) {
      Record(gate_name, ModuleKind::kExperts, gate);
      Record(up_name, ModuleKind::kExperts, up);
      Record(down_name, ModuleKind::kExperts, down);
    }
    return absl::OkStatus();
  }

  // One tensor per expert (converters before llama.cpp's stacked layout).
  std::vector<ExpertFfnWeights> experts;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (!wanted(e)) {
      experts.emplace_back();
      continue;
    }
    ExpertFfnWeights x;
    auto name = [&](const char* proj) { return absl::StrCat(p, proj, ".", e, ".weight"); };
    HERD_ASSIGN_OR_RETURN(x.gate, Matrix(name("ffn_gate"), ModuleKind::kExperts, f, h));
    HERD_ASSIGN_OR_RETURN(x.up, Matrix(name("ffn_up"), ModuleKind::kExperts, f, h));
    HERD_ASSIGN_OR_RETURN(x.down, Matrix(name("ffn_down"), ModuleKind::kExperts, h, f));
    experts.push_back(x);
  }
  layer->experts = std::move(experts);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path,
                                                     const ModelLoadOptions& options) {
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Parse(file.get()));
  auto model = std::make_unique<Model>();
  HERD_RETURN_IF_ERROR(GgufModelBuilder(*gguf, options, model.get()).Build());
  gguf.reset();
  model->format = "gguf";
  model->source_path = path;
  model->mapped_files.push_back(std::move(file));
  const absl::Status valid = ValidateModelWeights(*model);
  if (!valid.ok()) return absl::Status(valid.code(), absl::StrCat(path, ": ", valid.message()));
  return model;
}

}  // namespace herd
