#include "model/herd_checkpoint_writer.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/checksum.h"
#include "core/file_util.h"
#include "core/status.h"
#include "model/herd_manifest.h"
#include "model/hf_arch.h"
#include "model/hf_loader.h"
#include "model/safetensors_writer.h"

namespace herd {
namespace {

using Json = nlohmann::json;

const char* ModelType(Architecture arch) {
  switch (arch) {
    case Architecture::kMixtral:
      return "mixtral";
    case Architecture::kQwen2Moe:
      return "qwen2_moe";
    case Architecture::kQwen3Moe:
      return "qwen3_moe";
    case Architecture::kOlmoe:
      return "olmoe";
  }
  return "";
}

// What Hugging Face's layout for these architectures cannot express.
absl::Status CheckExpressible(const ModelSpec& s) {
  if (s.router_scoring != RouterScoring::kSoftmax) {
    return absl::UnimplementedError("Herd checkpoints hold softmax-routed models only");
  }
  if (s.rope_dim != s.head_dim) {
    return absl::UnimplementedError(absl::StrCat("partial RoPE (", s.rope_dim, " of ", s.head_dim,
                                                 " dims) is not expressible"));
  }
  if (s.architecture == Architecture::kMixtral && s.attention_bias) {
    return absl::UnimplementedError("Mixtral checkpoints have no attention biases");
  }
  if (s.architecture == Architecture::kQwen2Moe && !s.attention_bias) {
    return absl::UnimplementedError("Qwen2-MoE checkpoints always have q/k/v biases");
  }
  if (s.architecture == Architecture::kQwen2Moe && !s.shared_expert_gated) {
    return absl::UnimplementedError("Qwen2-MoE's shared expert is always gated");
  }
  return absl::OkStatus();
}

Json ConfigJson(const ModelSpec& s) {
  const HfArchInfo& arch = HfArchitecture(s.architecture);
  Json c = {{"architectures", {arch.hf_name}},
            {"model_type", ModelType(s.architecture)},
            {"_name_or_path", s.name},
            {"vocab_size", s.vocab_size},
            {"hidden_size", s.hidden_size},
            {"num_hidden_layers", s.num_layers},
            {"num_attention_heads", s.num_heads},
            {"num_key_value_heads", s.num_kv_heads},
            {"head_dim", s.head_dim},
            {"max_position_embeddings", s.context_length},
            {arch.num_experts_key, s.num_experts},
            {"num_experts_per_tok", s.num_experts_per_token},
            {arch.expert_ffn_key, s.expert_ffn_size},
            {"rms_norm_eps", s.rms_norm_eps},
            {"rope_theta", s.rope_theta},
            {"tie_word_embeddings", s.tied_embeddings},
            {"hidden_act", "silu"}};
  if (arch.has_norm_topk_prob_key) c["norm_topk_prob"] = s.norm_topk_prob;
  if (s.architecture == Architecture::kQwen2Moe) {
    c["shared_expert_intermediate_size"] = s.shared_expert_ffn_size;
  }
  if (s.architecture == Architecture::kQwen3Moe || s.architecture == Architecture::kOlmoe) {
    c["attention_bias"] = s.attention_bias;
  }
  return c;
}

// Row order that undoes GGUF's q/k permutation for GPT-J RoPE: within each
// head, HF row j < d/2 is GGUF row 2j and HF row d/2 + j is GGUF row 2j + 1.
std::vector<int64_t> NeoxRowOrder(int64_t num_heads, int64_t head_dim) {
  std::vector<int64_t> order(num_heads * head_dim);
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t j = 0; j < head_dim; ++j) {
      order[h * head_dim + j] = h * head_dim + (j < half ? 2 * j : 2 * (j - half) + 1);
    }
  }
  return order;
}

std::vector<int64_t> Identity(int64_t n) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  return order;
}

// Row `src_row` of a stored matrix as floats.
void SourceRow(const TensorView& w, int64_t src_row, float* out) {
  if (w.dtype() == DType::kQuant) {
    DequantizeQuantizedRow(w.quant_format(), w.quantized(), w.dim(1), src_row, out);
  } else {
    DequantizeRow(w.dtype(), w.row(src_row), out, w.dim(1));
  }
}

// Codes and group parameters that reproduce a GGUF block row exactly in
// ExactQuantFormat(type).
void ExactCodes(const TensorView& w, int64_t src_row, uint8_t* codes, QuantGroupParams* params) {
  const int64_t blocks = w.dim(1) / 32;
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* u = codes + b * 32;
    switch (w.dtype()) {
      case DType::kQ8_0: {
        const auto& blk = reinterpret_cast<const BlockQ8_0*>(w.row(src_row))[b];
        for (int i = 0; i < 32; ++i) u[i] = static_cast<uint8_t>(blk.qs[i] + 128);
        params[b] = {F16ToF32(blk.d), 0.0f};
        break;
      }
      case DType::kQ4_0: {
        const auto& blk = reinterpret_cast<const BlockQ4_0*>(w.row(src_row))[b];
        for (int j = 0; j < 16; ++j) {
          u[j] = blk.qs[j] & 0x0F;
          u[j + 16] = blk.qs[j] >> 4;
        }
        params[b] = {F16ToF32(blk.d), 0.0f};
        break;
      }
      default: {  // kQ4_1
        const auto& blk = reinterpret_cast<const BlockQ4_1*>(w.row(src_row))[b];
        for (int j = 0; j < 16; ++j) {
          u[j] = blk.qs[j] & 0x0F;
          u[j + 16] = blk.qs[j] >> 4;
        }
        params[b] = {F16ToF32(blk.d), F16ToF32(blk.m)};
        break;
      }
    }
  }
}

class CheckpointBuilder {
 public:
  CheckpointBuilder(const Model& model, const HerdCheckpointOptions& options)
      : model_(model), options_(options) {
    const ModelSpec& s = model.spec;
    const int64_t layers = s.num_layers - static_cast<int64_t>(options.drop_blocks.size());
    total_ = 2 + layers * (5 + 3 * s.num_experts + (s.shared_expert_ffn_size > 0 ? 3 : 0));
  }

  // A weight matrix, rows taken from the source in `order`.
  absl::Status Matrix(WeightInfo info, const TensorView& w, const std::vector<int64_t>& order) {
    info.source = &w;
    if (w.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("weight ", info.name,
                                                     " is not loaded (load every expert to write a "
                                                     "checkpoint)"));
    }
    const int64_t rows = w.dim(0), cols = w.dim(1);
    std::optional<QuantFormat> format;
    if (options_.choose_format) format = options_.choose_format(info);
    const std::optional<QuantFormat> exact =
        w.dtype() == DType::kQuant ? std::optional(w.quant_format()) : ExactQuantFormat(w.dtype());
    if (!format.has_value()) format = exact;
    if (!format.has_value()) {
      HERD_RETURN_IF_ERROR(FloatRows(info.name, w, order));
    } else {
      if (absl::Status fits = format->ValidateShape(rows, cols); !fits.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("weight ", info.name, ": ", fits.message()));
      }
      HERD_RETURN_IF_ERROR(QuantizedRows(info, w, order, *format, format == exact));
    }
    if (options_.progress) options_.progress(++done_, total_);
    return absl::OkStatus();
  }

  // A 1-D F32 vector (norms, biases), reordered like its matrix.
  absl::Status Vector(const std::string& name, const TensorView& v,
                      const std::vector<int64_t>& order, std::vector<int64_t> shape = {}) {
    if (v.empty()) return absl::OkStatus();
    std::vector<float> values(order.size());
    for (size_t i = 0; i < order.size(); ++i) values[i] = v.as<float>()[order[i]];
    if (shape.empty()) shape = {static_cast<int64_t>(values.size())};
    return Add(name, SafetensorsDType::kF32, shape, values.data(), values.size() * sizeof(float));
  }

  void DropMoe(int layer) { manifest_.dropped_moe_layers.push_back(layer); }
  void DropExpert(int layer, int expert) { manifest_.dropped_experts[layer].push_back(expert); }
  void SkipThreshold(int layer, float beta) { manifest_.expert_skip_thresholds[layer] = beta; }

  absl::Status Write(const std::string& dir) {
    HERD_RETURN_IF_ERROR(writer_.WriteFile(dir + "/model.safetensors"));
    manifest_.compression = options_.compression;
    HERD_RETURN_IF_ERROR(
        WriteFileAtomically(dir + "/" + kHerdManifestFile, manifest_.ToJson().dump(2) + "\n"));
    ModelSpec spec = model_.spec;
    spec.num_layers -= static_cast<int64_t>(options_.drop_blocks.size());
    return WriteFileAtomically(dir + "/config.json", ConfigJson(spec).dump(2) + "\n");
  }

 private:
  absl::Status Add(const std::string& name, SafetensorsDType dtype,
                   const std::vector<int64_t>& shape, const void* data, size_t bytes) {
    manifest_.checksums[name] = Crc32c(data, bytes);
    return writer_.AddTensor(name, dtype, shape, data, bytes);
  }

  absl::Status FloatRows(const std::string& name, const TensorView& w,
                         const std::vector<int64_t>& order) {
    const int64_t rows = w.dim(0), cols = w.dim(1);
    if (w.dtype() == DType::kF32 || w.dtype() == DType::kF16 || w.dtype() == DType::kBF16) {
      const int64_t row_bytes = w.row_bytes();
      std::vector<uint8_t> bytes(rows * row_bytes);
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(bytes.data() + r * row_bytes, w.row(order[r]), row_bytes);
      }
      HERD_ASSIGN_OR_RETURN(const SafetensorsDType dtype, FromHerdDType(w.dtype()));
      return Add(name, dtype, {rows, cols}, bytes.data(), bytes.size());
    }
    return absl::InvalidArgumentError(
        absl::StrCat("weight ", name, ": ", DTypeName(w.dtype()), " has no float form to keep"));
  }

  absl::Status QuantizedRows(const WeightInfo& info, const TensorView& w,
                             const std::vector<int64_t>& order, const QuantFormat& format,
                             bool exact) {
    const std::string& name = info.name;
    const int64_t rows = w.dim(0), cols = w.dim(1);
    const int64_t groups = cols / format.GroupLength(cols);
    std::vector<uint8_t> codes(rows * cols);
    std::vector<QuantGroupParams> params(rows * groups);
    if (exact) {
      for (int64_t r = 0; r < rows; ++r) {
        uint8_t* row_codes = codes.data() + r * cols;
        QuantGroupParams* row_params = params.data() + r * groups;
        if (w.dtype() == DType::kQuant) {
          for (int64_t c = 0; c < cols; ++c) {
            row_codes[c] = ReadCode(format, w.quantized().codes, cols, order[r], c);
          }
          for (int64_t g = 0; g < groups; ++g) {
            row_params[g] = ReadGroupParams(format, w.quantized(), cols, order[r],
                                            g * format.GroupLength(cols));
          }
        } else {
          ExactCodes(w, order[r], row_codes, row_params);
        }
      }
    } else {
      std::vector<float> values(rows * cols);
      for (int64_t r = 0; r < rows; ++r) SourceRow(w, order[r], values.data() + r * cols);
      if (options_.quantize) {
        HERD_RETURN_IF_ERROR(options_.quantize(info, format, values.data(), rows, cols,
                                               codes.data(), params.data()));
      } else {
        QuantizeCodesRtn(format, values.data(), rows, cols, codes.data(), params.data());
      }
    }
    const QuantizedMatrixSizes sizes = QuantizedSizes(format, rows, cols);
    std::vector<uint8_t> packed(sizes.codes);
    std::vector<uint16_t> scales(sizes.scales / 2), mins(sizes.mins / 2);
    PackQuantizedMatrix(format, rows, cols, codes.data(), params.data(), packed.data(),
                        scales.data(), format.symmetric ? nullptr : mins.data());
    const SafetensorsDType scale_type =
        format.scale_type == DType::kBF16 ? SafetensorsDType::kBF16 : SafetensorsDType::kF16;
    const int64_t tiles = (rows + kQuantTileRows - 1) / kQuantTileRows;
    HERD_RETURN_IF_ERROR(Add(QuantizedCodesName(name), SafetensorsDType::kU8, {sizes.codes},
                             packed.data(), packed.size()));
    HERD_RETURN_IF_ERROR(Add(QuantizedScalesName(name), scale_type, {tiles, groups, kQuantTileRows},
                             scales.data(), sizes.scales));
    if (!format.symmetric) {
      HERD_RETURN_IF_ERROR(Add(QuantizedMinsName(name), scale_type, {tiles, groups, kQuantTileRows},
                               mins.data(), sizes.mins));
    }
    manifest_.quantized[name] = QuantizedTensorEntry{format, rows, cols};
    return absl::OkStatus();
  }

  const Model& model_;
  const HerdCheckpointOptions& options_;
  SafetensorsWriter writer_;
  HerdManifest manifest_;
  int64_t done_ = 0;
  int64_t total_ = 0;
};

// Writes layer `src` of `model` as layer `l` of the checkpoint.
absl::Status AddLayer(const Model& model, const HerdCheckpointOptions& options, int src, int l,
                      CheckpointBuilder* b) {
  const ModelSpec& s = model.spec;
  const LayerWeights& w = model.layers[src];
  const HfArchInfo& arch = HfArchitecture(s.architecture);
  const std::string p = absl::StrCat("model.layers.", l, ".");
  const std::string attn = p + "self_attn.";
  const bool gptj = s.rope_style == RopeStyle::kGptJ;
  const std::vector<int64_t> q_order =
      gptj ? NeoxRowOrder(s.num_heads, s.head_dim) : Identity(s.num_heads * s.head_dim);
  const std::vector<int64_t> k_order =
      gptj ? NeoxRowOrder(s.num_kv_heads, s.head_dim) : Identity(s.num_kv_heads * s.head_dim);
  const std::vector<int64_t> kv_rows = Identity(s.num_kv_heads * s.head_dim);
  const std::vector<int64_t> hidden_rows = Identity(s.hidden_size);

  const auto listed = [](const std::vector<int>& list, int x) {
    return std::find(list.begin(), list.end(), x) != list.end();
  };
  const bool moe_dropped = w.moe_dropped || listed(options.drop_moe_layers, src);
  HERD_RETURN_IF_ERROR(b->Vector(p + "input_layernorm.weight", w.attn_norm, hidden_rows));
  if (!moe_dropped) {
    HERD_RETURN_IF_ERROR(b->Vector(p + "post_attention_layernorm.weight", w.ffn_norm, hidden_rows));
  }
  const auto info = [&](const std::string& name, ModuleKind module, int expert = -1) {
    return WeightInfo{name, module, l, expert, nullptr};
  };
  HERD_RETURN_IF_ERROR(
      b->Matrix(info(attn + "q_proj.weight", ModuleKind::kAttention), w.q.weight, q_order));
  HERD_RETURN_IF_ERROR(
      b->Matrix(info(attn + "k_proj.weight", ModuleKind::kAttention), w.k.weight, k_order));
  HERD_RETURN_IF_ERROR(
      b->Matrix(info(attn + "v_proj.weight", ModuleKind::kAttention), w.v.weight, kv_rows));
  HERD_RETURN_IF_ERROR(
      b->Matrix(info(attn + "o_proj.weight", ModuleKind::kAttention), w.o.weight, hidden_rows));
  HERD_RETURN_IF_ERROR(b->Vector(attn + "q_proj.bias", w.q.bias, q_order));
  HERD_RETURN_IF_ERROR(b->Vector(attn + "k_proj.bias", w.k.bias, k_order));
  HERD_RETURN_IF_ERROR(b->Vector(attn + "v_proj.bias", w.v.bias, kv_rows));
  HERD_RETURN_IF_ERROR(b->Vector(attn + "o_proj.bias", w.o.bias, hidden_rows));
  if (!w.q_norm.empty()) {
    // Per-head norms act within a head (already NeoX order for qwen3moe);
    // all-heads norms (OLMoE) only come from Hugging Face checkpoints.
    HERD_RETURN_IF_ERROR(
        b->Vector(attn + "q_norm.weight", w.q_norm, Identity(w.q_norm.num_elements())));
    HERD_RETURN_IF_ERROR(
        b->Vector(attn + "k_norm.weight", w.k_norm, Identity(w.k_norm.num_elements())));
  }

  if (moe_dropped) {
    b->DropMoe(l);
    return absl::OkStatus();
  }
  const std::string moe = absl::StrCat(p, arch.moe_prefix, ".");
  HERD_RETURN_IF_ERROR(
      b->Matrix(info(moe + "gate.weight", ModuleKind::kRouter), w.router, Identity(s.num_experts)));
  const std::vector<int64_t> ffn_rows = Identity(s.expert_ffn_size);
  const auto skip_it = options.expert_skip_thresholds.find(src);
  const float skip_threshold =
      skip_it != options.expert_skip_thresholds.end() ? skip_it->second : w.expert_skip_threshold;
  if (skip_threshold > 0.0f) b->SkipThreshold(l, skip_threshold);
  const auto drop_it = options.drop_experts.find(src);
  int kept = 0;
  for (int e = 0; e < static_cast<int>(s.num_experts); ++e) {
    if (!w.ExpertExists(e) ||
        (drop_it != options.drop_experts.end() && listed(drop_it->second, e))) {
      b->DropExpert(l, e);
      continue;
    }
    ++kept;
    const ExpertFfnWeights& x = w.experts[e];
    const std::string n = absl::StrCat(moe, "experts.", e, ".");
    HERD_RETURN_IF_ERROR(
        b->Matrix(info(absl::StrCat(n, arch.gate_proj, ".weight"), ModuleKind::kExperts, e), x.gate,
                  ffn_rows));
    HERD_RETURN_IF_ERROR(b->Matrix(
        info(absl::StrCat(n, arch.up_proj, ".weight"), ModuleKind::kExperts, e), x.up, ffn_rows));
    HERD_RETURN_IF_ERROR(
        b->Matrix(info(absl::StrCat(n, arch.down_proj, ".weight"), ModuleKind::kExperts, e), x.down,
                  hidden_rows));
  }
  if (kept < s.num_experts_per_token) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", src, " would keep ", kept,
                                                   " experts, fewer than top-k ",
                                                   s.num_experts_per_token));
  }
  if (s.shared_expert_ffn_size > 0) {
    const std::string n = moe + "shared_expert.";
    const std::vector<int64_t> shared_rows = Identity(s.shared_expert_ffn_size);
    HERD_RETURN_IF_ERROR(b->Matrix(info(n + "gate_proj.weight", ModuleKind::kSharedExpert),
                                   w.shared_expert.gate, shared_rows));
    HERD_RETURN_IF_ERROR(b->Matrix(info(n + "up_proj.weight", ModuleKind::kSharedExpert),
                                   w.shared_expert.up, shared_rows));
    HERD_RETURN_IF_ERROR(b->Matrix(info(n + "down_proj.weight", ModuleKind::kSharedExpert),
                                   w.shared_expert.down, hidden_rows));
    HERD_RETURN_IF_ERROR(b->Vector(moe + "shared_expert_gate.weight", w.shared_expert_gate,
                                   hidden_rows, {1, s.hidden_size}));
  }
  return absl::OkStatus();
}

absl::Status Build(const Model& model, const HerdCheckpointOptions& options,
                   const std::string& dir) {
  const ModelSpec& s = model.spec;
  std::vector<bool> dropped(s.num_layers, false);
  for (int l : options.drop_blocks) {
    if (l < 0 || l >= s.num_layers || dropped[l]) {
      return absl::InvalidArgumentError(absl::StrCat("cannot drop block ", l, " of a model with ",
                                                     s.num_layers, " blocks (or twice)"));
    }
    dropped[l] = true;
  }
  if (static_cast<int64_t>(options.drop_blocks.size()) >= s.num_layers) {
    return absl::InvalidArgumentError("dropping every block leaves no model");
  }
  for (const auto& [l, beta] : options.expert_skip_thresholds) {
    if (l < 0 || l >= s.num_layers || !(beta > 0.0f && beta <= 1.0f)) {
      return absl::InvalidArgumentError(absl::StrCat("expert skip threshold ", beta, " for layer ",
                                                     l,
                                                     ": needs a layer of the model and a "
                                                     "threshold in (0, 1]"));
    }
  }
  CheckpointBuilder b(model, options);
  const std::vector<int64_t> vocab_rows = Identity(s.vocab_size);
  HERD_RETURN_IF_ERROR(b.Matrix(WeightInfo{"model.embed_tokens.weight", ModuleKind::kEmbeddings},
                                model.token_embedding, vocab_rows));
  int written = 0;
  for (int l = 0; l < static_cast<int>(s.num_layers); ++l) {
    if (!dropped[l]) HERD_RETURN_IF_ERROR(AddLayer(model, options, l, written++, &b));
  }
  HERD_RETURN_IF_ERROR(b.Vector("model.norm.weight", model.output_norm, Identity(s.hidden_size)));
  if (!s.tied_embeddings) {
    HERD_RETURN_IF_ERROR(
        b.Matrix(WeightInfo{"lm_head.weight", ModuleKind::kEmbeddings}, model.lm_head, vocab_rows));
  }
  return b.Write(dir);
}

}  // namespace

std::optional<QuantFormat> ExactQuantFormat(DType type) {
  switch (type) {
    case DType::kQ8_0:
      return QuantFormat{8, true, 32, DType::kF16};
    case DType::kQ4_0:
      return QuantFormat{4, true, 32, DType::kF16};
    case DType::kQ4_1:
      return QuantFormat{4, false, 32, DType::kF16};
    default:
      return std::nullopt;
  }
}

absl::Status WriteHerdCheckpoint(const Model& model, const HerdCheckpointOptions& options,
                                 const std::string& out_dir) {
  namespace fs = std::filesystem;
  HERD_RETURN_IF_ERROR(CheckExpressible(model.spec));
  std::error_code ec;
  const bool exists = fs::exists(out_dir, ec);
  if (exists && !options.overwrite) {
    return absl::AlreadyExistsError(
        absl::StrCat(out_dir, " already exists (pass --force to replace it)"));
  }
  const std::string tmp = absl::StrCat(out_dir, ".tmp-", ::getpid());
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec)) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", tmp, ": ", ec ? ec.message() : "it exists"));
  }
  absl::Status status = Build(model, options, tmp);
  if (status.ok()) {
    // Load it back: every checksum and shape checked before the rename.
    status = LoadHfModel(tmp).status();
    if (!status.ok()) {
      status = absl::InternalError(
          absl::StrCat("the written checkpoint does not load back: ", status.message()));
    }
  }
  if (status.ok() && exists) {
    fs::remove_all(out_dir, ec);
    if (ec)
      status = absl::InternalError(absl::StrCat("cannot replace ", out_dir, ": ", ec.message()));
  }
  if (status.ok()) {
    fs::rename(tmp, out_dir, ec);
    if (ec) status = absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  }
  if (!status.ok()) fs::remove_all(tmp, ec);
  return status;
}

}  // namespace herd
