// Vocabulary shared by model specs and kernels: how RoPE rotates, how the
// router scores experts. Kept in core/ so model/ and kernels/ agree without
// depending on each other.
#pragma once

namespace herd {

// How RoPE pairs the dimensions of a head it rotates.
enum class RopeStyle {
  // GPT-J / llama.cpp "normal": consecutive pairs (x[2i], x[2i+1]).
  // GGUF `llama` files (Q/K rows permuted by the converter) use this.
  kGptJ,
  // GPT-NeoX "rotate half": pairs (x[i], x[i + rope_dim/2]). Hugging Face
  // checkpoints and GGUF qwen2moe/qwen3moe/olmoe use this.
  kNeox,
};

// How router logits become expert probabilities.
enum class RouterScoring {
  kSoftmax,  // softmax over all experts, then top-k (Mixtral, Qwen, OLMoE)
  kSigmoid,  // independent sigmoid per expert, then top-k (DeepSeek-V3 style)
};

inline const char* RopeStyleName(RopeStyle s) { return s == RopeStyle::kGptJ ? "gptj" : "neox"; }
inline const char* RouterScoringName(RouterScoring s) {
  return s == RouterScoring::kSoftmax ? "softmax" : "sigmoid";
}

}  // namespace herd
