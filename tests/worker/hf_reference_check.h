// The Hugging Face reference check of tests/data/hf-reference, one body for
// every engine (the CPU's in hf_reference_test.cc, the GPU's in
// cuda/cuda_engine_test.cc): tiny random-weight checkpoints with the logits
// and greedy tokens transformers computed for them (generate.py, pinned
// versions in each reference.json).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "worker/forward_engine.h"

namespace herd::testing {

using EngineFactory = std::function<absl::StatusOr<std::unique_ptr<ForwardEngine>>(const Model&)>;

// Loads checkpoint `arch` ("mixtral", "qwen2moe", "qwen3moe", "olmoe"),
// generates greedily with the engine `make_engine` builds for it, and
// expects every logit of prompt + generated tokens within `tolerance` of
// transformers' and the same greedy tokens (gtest failures; `who` names the
// engine in the printed line).
void ExpectTransformersLogitsAndTokens(const std::string& arch, const EngineFactory& make_engine,
                                       float tolerance, const std::string& who);

}  // namespace herd::testing
