// Calibration for `herd compress`: runs token sequences through the original
// model on one rank and keeps the input of every linear projection, so that
// GPTQ can build each weight's Hessian from exactly the inputs it sees. An
// expert keeps only the rows of the tokens the router sent to it; its down
// projection's input (silu(gate x) * up x) is computed from those rows when
// asked for. Inputs are kept rather than Hessians: a few thousand rows of
// activations are far smaller than one cols x cols matrix per expert.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/thread_pool.h"
#include "model/model.h"

namespace herd {

// Rows F32 [rows, cols], row-major.
struct InputRows {
  int64_t cols = 0;
  std::vector<float> values;
  int64_t rows() const { return cols > 0 ? static_cast<int64_t>(values.size()) / cols : 0; }
};

struct LayerCalibration {
  InputRows attention;                 // q, k, v
  InputRows attention_output;          // o
  std::vector<InputRows> experts;      // [num_experts]: gate and up of each routed expert
  InputRows shared_expert;             // gate and up of the shared expert
  std::vector<int64_t> expert_tokens;  // [num_experts]: routed tokens (the frequency of B3)
  // [num_experts]: the expert-drop score S(E_i), the mean over tokens of the
  // full softmax of the router logits (no top-k mask), 0 for dropped experts.
  std::vector<double> expert_scores;
  // Mean over calibration tokens of cosine similarities of the residual
  // stream (seeds-methods.md §3.3): the block's input and output (block
  // drop, S_l = cos(h_l, h_l+1)), and the MoE sublayer's input and output
  // (layer drop, cos(x', x' + MoE(Norm(x')))).
  double block_similarity = 0;
  double moe_similarity = 0;
  // Dynamic skipping's beta (seeds-methods.md §7.5 D1): the median over
  // calibration tokens of w2 / w1, a token's second-largest routing weight
  // over its largest, with every expert run (no skipping while calibrating).
  // 0 with top-1 routing, a dropped MoE sublayer, or no tokens.
  double skip_threshold = 0;
};

class Calibration {
 public:
  // Runs `sequences` (token ids, each at most the model's context) through
  // `model`, which must hold every expert. InvalidArgument for bad ids.
  static absl::StatusOr<Calibration> Run(const Model& model,
                                         const std::vector<std::vector<int32_t>>& sequences,
                                         int num_threads);

  const LayerCalibration& layer(int layer_idx) const { return layers_[layer_idx]; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  // Mean over tokens of cos(h_i, h_j), h_i the residual stream entering block
  // i (h_L: the last block's output), 0 <= i < j <= num_layers: the
  // consecutive block drop's criterion for dropping blocks i..j-1.
  double SpanSimilarity(int i, int j) const;
  int64_t num_tokens() const { return num_tokens_; }

  // The down projection's inputs of routed expert `expert` (shared expert when
  // expert < 0) of layer `layer_idx`: silu(gate x) * up x over its rows, with
  // the model's own weights.
  absl::StatusOr<InputRows> DownInputs(const Model& model, int layer_idx, int expert,
                                       ThreadPool& pool) const;

 private:
  std::vector<LayerCalibration> layers_;
  std::vector<InputRows> block_inputs_;  // [num_layers + 1]: h_0 .. h_L over all tokens
  int64_t num_tokens_ = 0;
};

}  // namespace herd
