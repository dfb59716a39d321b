// Herd against Hugging Face transformers, the architectures' own peer: tiny
// random-weight Mixtral, Qwen2-MoE (shared expert, qkv bias), Qwen3-MoE
// (per-head q/k norm, head_dim != hidden/heads) and OLMoE (q/k norm over all
// heads) checkpoints with the logits and greedy tokens transformers computed
// for them (tests/data/hf-reference/generate.py, pinned versions in
// reference.json). Loaded through the HF loader, run by the CPU engine.
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "tests/worker/hf_reference_check.h"
#include "worker/engine.h"

namespace herd {
namespace {

class HfReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfReferenceTest, LogitsAndGreedyTokensMatchTransformers) {
  testing::ExpectTransformersLogitsAndTokens(
      GetParam(),
      [](const Model& model) -> absl::StatusOr<std::unique_ptr<ForwardEngine>> {
        return Engine::Create(model, {.num_threads = 2});
      },
      1e-4f, "herd");
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfReferenceTest,
                         ::testing::Values("mixtral", "qwen2moe", "qwen3moe", "olmoe"));

}  // namespace
}  // namespace herd
