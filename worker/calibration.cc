#include "worker/calibration.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "worker/engine.h"
#include "worker/kv_cache.h"

namespace herd {
namespace {

constexpr int64_t kBlockTokens = 16;

void Append(InputRows* rows, const float* x, int64_t n, int64_t cols) {
  rows->cols = cols;
  rows->values.insert(rows->values.end(), x, x + n * cols);
}

// Sum over rows of cos(a_t, b_t); rows that are all zero count as 0.
double SumCosines(const float* a, const float* b, int64_t rows, int64_t cols) {
  double total = 0.0;
  for (int64_t t = 0; t < rows; ++t) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < cols; ++i) {
      const double x = a[t * cols + i], y = b[t * cols + i];
      ab += x * y;
      aa += x * x;
      bb += y * y;
    }
    if (aa > 0 && bb > 0) total += ab / std::sqrt(aa * bb);
  }
  return total;
}

}  // namespace

absl::StatusOr<Calibration> Calibration::Run(const Model& model,
                                             const std::vector<std::vector<int32_t>>& sequences,
                                             int num_threads) {
  EngineOptions options;
  options.num_threads = num_threads;
  options.expert_skipping = false;  // calibrate on every routed expert
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, options));
  Calibration c;
  const int64_t num_experts = model.spec.num_experts;
  c.layers_.resize(model.spec.num_layers);
  // Each layer's router as floats, for the expert scores.
  std::vector<std::vector<float>> routers(model.spec.num_layers);
  for (int64_t l = 0; l < model.spec.num_layers; ++l) {
    LayerCalibration& layer = c.layers_[l];
    layer.experts.resize(num_experts);
    layer.expert_tokens.assign(num_experts, 0);
    layer.expert_scores.assign(num_experts, 0.0);
    const TensorView& router = model.layers[l].router;
    if (router.empty()) continue;  // layer drop
    routers[l].resize(num_experts * model.spec.hidden_size);
    for (int64_t e = 0; e < num_experts; ++e) {
      DequantizeRow(router.dtype(), router.row(e), routers[l].data() + e * model.spec.hidden_size,
                    model.spec.hidden_size);
    }
  }
  const bool has_shared = model.spec.shared_expert_ffn_size > 0;
  engine->SetLinearInputObserver([&](int layer, LinearInput input, const float* x, int64_t rows,
                                     int64_t cols, const int32_t* offsets) {
    LayerCalibration& l = c.layers_[layer];
    switch (input) {
      case LinearInput::kAttention:
        Append(&l.attention, x, rows, cols);
        break;
      case LinearInput::kAttentionOutput:
        Append(&l.attention_output, x, rows, cols);
        break;
      case LinearInput::kMoe: {
        if (has_shared) Append(&l.shared_expert, x, rows, cols);
        const LayerWeights& w = model.layers[layer];
        std::vector<double> p(num_experts);
        for (int64_t t = 0; t < rows; ++t) {
          double max = -1e300, sum = 0.0;
          for (int64_t e = 0; e < num_experts; ++e) {
            if (!w.ExpertExists(static_cast<int>(e))) continue;
            double dot = 0.0;
            const float* r = routers[layer].data() + e * cols;
            for (int64_t i = 0; i < cols; ++i) dot += static_cast<double>(r[i]) * x[t * cols + i];
            p[e] = dot;
            max = std::max(max, dot);
          }
          for (int64_t e = 0; e < num_experts; ++e) {
            p[e] = w.ExpertExists(static_cast<int>(e)) ? std::exp(p[e] - max) : 0.0;
            sum += p[e];
          }
          for (int64_t e = 0; e < num_experts; ++e) l.expert_scores[e] += p[e] / sum;
        }
        break;
      }
      case LinearInput::kExperts:
        for (size_t e = 0; e < l.experts.size(); ++e) {
          const int64_t n = offsets[e + 1] - offsets[e];
          Append(&l.experts[e], x + offsets[e] * cols, n, cols);
          l.expert_tokens[e] += n;
        }
        break;
    }
  });
  // w2 / w1 of every token, per layer, for the skip thresholds.
  std::vector<std::vector<float>> weight_ratios(model.spec.num_layers);
  engine->SetRoutingObserver([&weight_ratios](int layer, int64_t num_tokens, int64_t top_k,
                                              const int32_t*, const float* weights) {
    if (top_k < 2) return;
    for (int64_t t = 0; t < num_tokens; ++t) {
      const float w1 = weights[t * top_k], w2 = weights[t * top_k + 1];
      weight_ratios[layer].push_back(w1 > 0.0f ? w2 / w1 : 1.0f);
    }
  });
  // The residual stream: every block's input (and the last output) is kept;
  // the MoE similarity needs the attention-added stream of the same step.
  c.block_inputs_.resize(model.spec.num_layers + 1);
  std::vector<float> moe_input;
  engine->SetResidualObserver(
      [&c, &moe_input](int layer, ResidualPoint point, const float* x, int64_t rows, int64_t cols) {
        switch (point) {
          case ResidualPoint::kBlockInput:
            Append(&c.block_inputs_[layer], x, rows, cols);
            break;
          case ResidualPoint::kMoeInput:
            moe_input.assign(x, x + rows * cols);
            break;
          case ResidualPoint::kBlockOutput:
            c.layers_[layer].moe_similarity += SumCosines(moe_input.data(), x, rows, cols);
            if (layer + 1 == c.num_layers()) Append(&c.block_inputs_[layer + 1], x, rows, cols);
            break;
        }
      });
  int64_t longest = 0;
  for (const auto& s : sequences) longest = std::max<int64_t>(longest, s.size());
  if (longest > model.spec.context_length) {
    return absl::InvalidArgumentError(absl::StrCat("a calibration sequence of ", longest,
                                                   " tokens exceeds the context of ",
                                                   model.spec.context_length));
  }
  const int64_t blocks = std::max<int64_t>(1, (longest + kBlockTokens - 1) / kBlockTokens);
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                        KvCache::Create(model.spec, blocks, kBlockTokens));
  std::vector<int32_t> block_table(blocks);
  std::iota(block_table.begin(), block_table.end(), 0);
  std::vector<float> logits(model.spec.vocab_size);
  for (const std::vector<int32_t>& sequence : sequences) {
    if (sequence.empty()) continue;
    Batch batch;
    batch.cache = cache.get();
    batch.token_ids = sequence;
    batch.chunks = {{block_table, 0, static_cast<int64_t>(sequence.size())}};
    batch.logit_rows = {static_cast<int64_t>(sequence.size()) - 1};
    HERD_RETURN_IF_ERROR(engine->Forward(batch, logits.data()));
    c.num_tokens_ += static_cast<int64_t>(sequence.size());
  }
  for (int l = 0; l < c.num_layers(); ++l) {
    LayerCalibration& layer = c.layers_[l];
    layer.moe_similarity = c.num_tokens_ > 0 ? layer.moe_similarity / c.num_tokens_ : 0.0;
    for (double& score : layer.expert_scores) score = c.num_tokens_ > 0 ? score / c.num_tokens_ : 0;
    layer.block_similarity = c.SpanSimilarity(l, l + 1);
    std::vector<float>& ratios = weight_ratios[l];
    if (!ratios.empty()) {
      // The median; an even count takes the mean of the two middle values.
      const size_t mid = ratios.size() / 2;
      std::nth_element(ratios.begin(), ratios.begin() + mid, ratios.end());
      double median = ratios[mid];
      if (ratios.size() % 2 == 0) {
        median = (median + *std::max_element(ratios.begin(), ratios.begin() + mid)) / 2.0;
      }
      layer.skip_threshold = median;
    }
  }
  return c;
}

double Calibration::SpanSimilarity(int i, int j) const {
  const InputRows& a = block_inputs_[i];
  const InputRows& b = block_inputs_[j];
  if (a.rows() == 0) return 0.0;
  return SumCosines(a.values.data(), b.values.data(), a.rows(), a.cols) /
         static_cast<double>(a.rows());
}

absl::StatusOr<InputRows> Calibration::DownInputs(const Model& model, int layer_idx, int expert,
                                                  ThreadPool& pool) const {
  const LayerCalibration& l = layers_[layer_idx];
  const ExpertFfnWeights& w =
      expert < 0 ? model.layers[layer_idx].shared_expert : model.layers[layer_idx].experts[expert];
  const InputRows& x = expert < 0 ? l.shared_expert : l.experts[expert];
  InputRows out;
  out.cols = w.gate.dim(0);
  const int64_t n = x.rows();
  if (n == 0) return out;
  HERD_ASSIGN_OR_RETURN(const cpu::PackedMatrix gate, cpu::PackMatrix(w.gate));
  HERD_ASSIGN_OR_RETURN(const cpu::PackedMatrix up, cpu::PackMatrix(w.up));
  std::vector<float> g(n * out.cols), u(n * out.cols);
  std::vector<uint8_t> ws(cpu::MatmulWorkspaceBytes(gate, n));
  HERD_RETURN_IF_ERROR(
      cpu::Matmul(gate, nullptr, x.values.data(), n, g.data(), ws.data(), ws.size(), pool));
  HERD_RETURN_IF_ERROR(
      cpu::Matmul(up, nullptr, x.values.data(), n, u.data(), ws.data(), ws.size(), pool));
  out.values.resize(n * out.cols);
  cpu::SwiGlu(g.data(), u.data(), n * out.cols, out.values.data());
  return out;
}

}  // namespace herd
