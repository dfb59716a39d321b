// Random-weight models for tests and benchmarks, written as GGUF in
// llama.cpp's layout so llama.cpp runs the very same file.
//
// Weights are N(0, 0.02^2) (norm weights 1 + N(0, 0.05^2)), the recipe of the
// llama.cpp fixture. `outliers` shapes the model like a trained one for
// compression studies:
//   - matrices follow a heavy-tailed Student-t(4) distribution of the same
//     scale, and in a quarter of them (chosen by name; for the experts'
//     stacked tensors, one projection of all experts of a layer) about 1% of
//     the input channels are amplified 8-24x, as in trained LLMs, whose
//     outliers sit in some layers more than others (the outlier scorer of
//     mixed precision looks for exactly these);
//   - the token embedding is low-rank (32 random directions with a 1/k
//     variance spectrum, plus 30% isotropic noise), 2.5x as large as the
//     blocks' updates together (std 0.001 * hidden * sqrt(layers)), so the
//     residual stream carries the token through the blocks and the inputs
//     every projection sees are correlated (what GPTQ exploits). With the
//     plain recipe a deep random network is chaotic: every block's update
//     dwarfs the std-0.02 embedding, and any weight error changes the output
//     completely.
// The same options and seed give the same bytes.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "core/dtype.h"

namespace herd {

struct SynthOptions {
  std::string arch = "mixtral";  // GGUF `llama` with experts; the only one so far
  int64_t num_layers = 2;
  int64_t hidden_size = 64;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  int64_t num_experts = 8;
  int64_t num_experts_per_token = 2;
  int64_t expert_ffn_size = 128;
  int64_t vocab_size = 512;
  // A GGUF file whose tokenizer (every `tokenizer.*` key) the model takes, so
  // that herd and llama.cpp serve it with text: llama.cpp's vocabulary files
  // (ggml-vocab-*.gguf) or any GGUF model. Its token count must equal
  // vocab_size; 0 there takes that count. Empty: no tokenizer
  // (`tokenizer.ggml.model` "none"), ids only.
  std::string tokenizer_from;
  int64_t context_length = 4096;
  float rope_theta = 10000.0f;
  // Storage of every matrix, embeddings and lm head included (as
  // `llama-quantize --pure` does); norms stay F32.
  DType dtype = DType::kF32;
  bool outliers = false;
  // A skewed router, for load-balancing tests: the router rows of experts
  // [0, hot_experts) of every layer are multiplied by hot_expert_scale, so
  // their logits spread wider and top-k picks them far more often than the
  // others. 0 hot experts (the default) leaves the router untouched.
  int64_t hot_experts = 0;
  float hot_expert_scale = 8.0f;
  uint64_t seed = 1;
  // Threads that generate weights (0 = all cores); the bytes do not depend on it.
  int num_threads = 0;

  // InvalidArgument naming the field when a dimension is non-positive (a
  // vocab_size of 0 is allowed with tokenizer_from), heads
  // do not divide, top-k exceeds experts, a row length does not fit the
  // dtype's block size, or hot experts are outside [0, experts] or their
  // scale is not finite and > 0.
  absl::Status Validate() const;
};

// Writes the model to `path` (via a temporary name, renamed when complete).
// Beyond Validate's errors: tokenizer_from's own open errors, and
// InvalidArgument naming it when it has no `tokenizer.ggml.tokens` array or
// its token count is not vocab_size.
absl::Status SynthesizeModel(const SynthOptions& options, const std::string& path);

}  // namespace herd
