// The in-memory model: its spec and views of its weights.
//
// A Model is what every loader (GGUF, Hugging Face safetensors, Herd's own
// checkpoint) produces and what the engine runs. Weight matrices are views
// into memory-mapped files, in their stored dtype (F32, F16, BF16, Q8_0,
// Q4_0, Q4_1), never copied; 1-D tensors (norm weights, biases) are converted
// to F32 into buffers the Model owns. A Model is immutable after loading and
// safe to share between threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/mapped_file.h"
#include "core/op_types.h"
#include "core/tensor_view.h"

namespace herd {

// The model families Herd runs. Names are what `herd inspect` prints.
enum class Architecture {
  kMixtral,   // GGUF `llama` with experts; HF MixtralForCausalLM
  kQwen2Moe,  // GGUF `qwen2moe`; HF Qwen2MoeForCausalLM (shared expert, qkv bias)
  kQwen3Moe,  // GGUF `qwen3moe`; HF Qwen3MoeForCausalLM (per-head q/k RMSNorm)
  kOlmoe,     // HF OlmoeForCausalLM (q/k RMSNorm over all heads)
};
const char* ArchitectureName(Architecture arch);

// Where q/k RMSNorm applies, if at all.
enum class QkNorm {
  kNone,
  kPerHead,   // weight F32 [head_dim], applied to each head (Qwen3-MoE)
  kAllHeads,  // weight F32 [num_heads * head_dim] over the whole projection (OLMoE)
};

struct ModelSpec {
  Architecture architecture = Architecture::kMixtral;
  std::string name;  // free text from the checkpoint, for display

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;        // may differ from hidden_size / num_heads (Qwen3)
  int64_t context_length = 0;  // trained context, from the checkpoint

  int64_t num_experts = 0;
  int64_t num_experts_per_token = 0;  // top-k
  int64_t expert_ffn_size = 0;
  // Qwen2-MoE style shared expert: 0 = none. It runs on every token; its
  // output is scaled by sigmoid(shared_expert_gate · h) when that gate exists.
  int64_t shared_expert_ffn_size = 0;
  bool shared_expert_gated = false;

  RouterScoring router_scoring = RouterScoring::kSoftmax;
  bool norm_topk_prob = true;  // renormalise the top-k probabilities to sum to 1

  bool attention_bias = false;  // q/k/v projections carry biases (Qwen2-MoE)
  QkNorm qk_norm = QkNorm::kNone;

  RopeStyle rope_style = RopeStyle::kNeox;
  float rope_theta = 10000.0f;
  int64_t rope_dim = 0;  // rotated dimensions per head (<= head_dim, even)
  float rms_norm_eps = 1e-5f;
  bool tied_embeddings = false;  // lm head shares the token embedding

  // Checks that dimensions are positive and consistent (heads divide, top-k
  // <= experts, rope_dim even and <= head_dim). InvalidArgument naming the field.
  absl::Status Validate() const;
};

// A linear layer y = W x + b. W [out, in] in any weight dtype; b F32 [out] or empty.
struct Linear {
  TensorView weight;
  TensorView bias;
};

// One expert's SwiGLU FFN: down(silu(gate x) * up x).
struct ExpertFfnWeights {
  TensorView gate;  // [ffn, hidden]
  TensorView up;    // [ffn, hidden]
  TensorView down;  // [hidden, ffn]
  bool resident() const { return !gate.empty(); }
};

struct LayerWeights {
  TensorView attn_norm;  // F32 [hidden]
  Linear q;              // [num_heads * head_dim, hidden]
  Linear k;              // [num_kv_heads * head_dim, hidden]
  Linear v;              // [num_kv_heads * head_dim, hidden]
  Linear o;              // [hidden, num_heads * head_dim]
  TensorView q_norm;     // F32, see QkNorm; empty if none
  TensorView k_norm;
  TensorView ffn_norm;  // F32 [hidden]
  TensorView router;    // [num_experts, hidden]
  // One entry per logical expert; entries this rank does not hold are empty.
  std::vector<ExpertFfnWeights> experts;
  ExpertFfnWeights shared_expert;  // empty when spec.shared_expert_ffn_size == 0
  TensorView shared_expert_gate;   // F32 [hidden] or empty

  // Trimming by `herd compress` (Herd checkpoints only). Layer drop: the MoE
  // sublayer and its norm are gone, the block is attention only. Expert drop:
  // [num_experts] (or empty = none), true for experts that are gone; the
  // router never picks them (their scores are masked before top-k).
  bool moe_dropped = false;
  std::vector<bool> expert_dropped;
  // Dynamic expert skipping (cpu::SkipMinorExperts): a token skips a routed
  // expert whose weight is below this fraction of its top expert's. 0: never.
  float expert_skip_threshold = 0.0f;
  // Whether expert `e` exists at all (on some rank), i.e. is neither dropped
  // nor in a dropped MoE sublayer.
  bool ExpertExists(int e) const {
    return !moe_dropped && !(e < static_cast<int>(expert_dropped.size()) && expert_dropped[e]);
  }
};

// What a tensor belongs to, for byte accounting in `herd inspect`.
enum class ModuleKind { kAttention, kExperts, kSharedExpert, kRouter, kEmbeddings, kNorms, kOther };
const char* ModuleKindName(ModuleKind kind);

// One stored tensor as the checkpoint names it.
struct TensorRecord {
  std::string name;
  ModuleKind module = ModuleKind::kOther;
  TensorView view;  // as stored (dtype and shape of the checkpoint)
};

struct Model {
  ModelSpec spec;
  TensorView token_embedding;  // [vocab, hidden], any dtype
  std::vector<LayerWeights> layers;
  TensorView output_norm;  // F32 [hidden]
  TensorView lm_head;      // [vocab, hidden]; the embedding when tied
  // Every tensor the checkpoint holds that this process uses.
  std::vector<TensorRecord> tensors;
  std::string source_path;
  std::string format;  // "gguf", "safetensors"

  // Owned storage backing the views above.
  std::vector<std::unique_ptr<MappedFile>> mapped_files;
  std::vector<std::unique_ptr<float[]>> owned_buffers;

  // Converts a 1-D tensor of any float dtype to an owned F32 copy and returns
  // its view. Used by loaders for norms and biases.
  TensorView OwnF32Copy(const TensorView& src);
};

// Which experts this process loads; others stay unmapped in the Model (empty
// views). The default loads all. Expert parallelism passes the placement's
// choice for this rank.
struct ModelLoadOptions {
  std::function<bool(int layer_idx, int expert_idx)> load_expert;
};

// Checks every view of `model` against its spec: dims, dtypes a kernel can
// run, presence of required tensors. Loaders call it last. InvalidArgument
// naming the tensor.
absl::Status ValidateModelWeights(const Model& model);

}  // namespace herd
