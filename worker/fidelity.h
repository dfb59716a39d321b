// How far a compressed model's next-token distributions are from the
// original's, the fidelity half of `herd compress`'s report.
//
// Both models run the same held-out sequences (teacher-forced, one prefill
// per sequence); at every position the original's distribution P and the
// compressed model's Q give KL(P || Q) (natural log, from log-softmax in
// double), whether their top-1 tokens agree, and the logits' squared
// difference. A position counts once per sequence position, so every token
// weighs the same.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "worker/engine.h"

namespace herd {

struct FidelityResult {
  int64_t positions = 0;
  double mean_kl = 0;  // mean over positions of KL(P || Q)
  double max_kl = 0;
  double top1_agreement = 0;  // fraction of positions whose argmax agrees
  // ||logits_Q - logits_P|| / ||logits_P|| over every logit of every position.
  double logits_relative_error = 0;
};

// Logits F32 [positions, vocab] of `model` for each sequence, concatenated;
// the engine's counters into `stats` when given (e.g. how many expert calls
// dynamic skipping left out). InvalidArgument for ids outside the vocabulary
// or a sequence longer than the context.
absl::StatusOr<std::vector<float>> SequenceLogits(
    const Model& model, const std::vector<std::vector<int32_t>>& sequences, int num_threads,
    EngineStats* stats = nullptr);

// Compares two logit sets of the same shape (from SequenceLogits).
FidelityResult CompareLogits(const std::vector<float>& reference,
                             const std::vector<float>& candidate, int64_t vocab);

}  // namespace herd
