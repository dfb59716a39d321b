// Prompt-then-decode generation for one sequence: what `herd generate` runs.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/forward_engine.h"

namespace herd {

struct SamplingOptions {
  // <= 0: greedy (argmax). Otherwise softmax(logits / temperature).
  float temperature = 0.0f;
  // Nucleus sampling mass in (0, 1]; 1 keeps every token.
  float top_p = 1.0f;
  // Before top_p, as the server's (cpu::SampleTopP): the top_k most likely
  // tokens (0: all), and none less likely than min_p times the most likely.
  int32_t top_k = 0;
  float min_p = 0.0f;
  // Seeds the sampler; the same seed and inputs give the same tokens.
  uint64_t seed = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 16;
  SamplingOptions sampling;
  // Keep logits of every prompt position and of every generated token (the
  // row after feeding it), F32 [prompt + max_new_tokens, vocab], as llama.cpp
  // fixture files lay them out. Costs one extra decode step.
  bool keep_logits = false;
  // Tokens of context the sequence's cache holds; 0 = prompt + max_new_tokens.
  int64_t max_context_tokens = 0;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids, in order
  std::vector<float> logits;    // see GenerateOptions::keep_logits; empty otherwise
};

// Evaluates `prompt` in one batch, then decodes one token per step.
// With expert parallelism every rank calls Generate with the same options;
// ranks that own no sequence pass an empty prompt and take part in the same
// number of steps with empty batches (their result is empty).
// InvalidArgument for an empty prompt (single rank), ids outside the vocabulary, bad
// sampling options, or a context larger than max_context_tokens.
absl::StatusOr<GenerateResult> Generate(ForwardEngine& engine, const std::vector<int32_t>& prompt,
                                        const GenerateOptions& options);

}  // namespace herd
