// Where the GPU engine's distance from the CPU engine on deep random models
// comes from, measured without a GPU. An f64 forward pass of the model
// (dequantized weights, exact arithmetic) is the reference; the CPU engine
// is held to it, and so is the same f64 pass with the CUDA engine's
// roundings (worker/cuda/cuda_engine.h): activations rounded to bf16 before
// every GEMM but the router's and F32 weights', F16/BF16 weights rounded to
// bf16, Q4_0/Q8_0 weights exact. The drift the simulated GPU shows is what
// precision alone costs; the GPU engine's own test (cuda_engine_test,
// CudaEngineMidSizeTest) measures the real one.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"
#include "model/model_loader.h"
#include "model/synth.h"
#include "tests/support/test_support.h"
#include "worker/engine.h"
#include "worker/generator.h"

namespace herd {
namespace {

double RoundToBf16(double x) { return BF16ToF32(F32ToBF16(static_cast<float>(x))); }

// A [rows, cols] matrix as doubles, and whether the GPU rounds its input
// activations to bf16 (grouped GEMM or a BF16 cuBLAS matrix).
struct RefMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<double> w;
  bool bf16_input = false;
};

// `f32` is the GPU's rule for the router: F32 whatever the stored dtype.
RefMatrix Load(const TensorView& t, bool gpu_rounding, bool f32) {
  RefMatrix m;
  m.rows = t.dim(0);
  m.cols = t.dim(1);
  m.w.resize(m.rows * m.cols);
  std::vector<float> row(m.cols);
  const DType d = t.dtype();
  const bool native = d == DType::kQ4_0 || d == DType::kQ8_0;
  const bool to_bf16 = gpu_rounding && !f32 && !native && d != DType::kF32;
  for (int64_t r = 0; r < m.rows; ++r) {
    DequantizeRow(d, t.row(r), row.data(), m.cols);
    for (int64_t c = 0; c < m.cols; ++c) {
      m.w[r * m.cols + c] = to_bf16 ? RoundToBf16(row[c]) : row[c];
    }
  }
  m.bf16_input = gpu_rounding && !f32 && d != DType::kF32;
  return m;
}

// y [n, rows] = x [n, cols] W^T.
std::vector<double> Apply(const RefMatrix& m, const std::vector<double>& x, int64_t n) {
  std::vector<double> in = x;
  if (m.bf16_input) {
    for (double& v : in) v = RoundToBf16(v);
  }
  std::vector<double> y(n * m.rows, 0.0);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t r = 0; r < m.rows; ++r) {
      const double* w = m.w.data() + r * m.cols;
      const double* xi = in.data() + t * m.cols;
      double acc = 0.0;
      for (int64_t c = 0; c < m.cols; ++c) acc += w[c] * xi[c];
      y[t * m.rows + r] = acc;
    }
  }
  return y;
}

std::vector<double> RmsNorm(const std::vector<double>& x, const TensorView& weight, int64_t n,
                            int64_t dim, double eps) {
  std::vector<double> y(n * dim);
  const float* w = weight.as<float>();
  for (int64_t t = 0; t < n; ++t) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += x[t * dim + i] * x[t * dim + i];
    const double scale = 1.0 / std::sqrt(ss / dim + eps);
    for (int64_t i = 0; i < dim; ++i) y[t * dim + i] = x[t * dim + i] * scale * w[i];
  }
  return y;
}

void Rope(std::vector<double>& x, int64_t n, int64_t heads, const ModelSpec& s) {
  const int64_t half = s.rope_dim / 2;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      double* v = x.data() + (t * heads + h) * s.head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const double angle = t * std::pow(static_cast<double>(s.rope_theta), -2.0 * i / s.rope_dim);
        const int64_t a = s.rope_style == RopeStyle::kGptJ ? 2 * i : i;
        const int64_t b = s.rope_style == RopeStyle::kGptJ ? 2 * i + 1 : i + half;
        const double x0 = v[a];
        const double x1 = v[b];
        v[a] = x0 * std::cos(angle) - x1 * std::sin(angle);
        v[b] = x0 * std::sin(angle) + x1 * std::cos(angle);
      }
    }
  }
}

// Each layer's chosen experts per token, sorted: [layer][token * top_k + j].
using Routing = std::vector<std::vector<int32_t>>;

// Of the (token, layer) pairs, how many chose other experts in `a` than in `b`.
int64_t RoutingDifferences(const Routing& a, const Routing& b, int64_t top_k) {
  int64_t differ = 0;
  for (size_t l = 0; l < std::min(a.size(), b.size()); ++l) {
    for (size_t t = 0; t * top_k < a[l].size(); ++t) {
      differ += !std::equal(a[l].begin() + t * top_k, a[l].begin() + (t + 1) * top_k,
                            b[l].begin() + t * top_k);
    }
  }
  return differ;
}

// Logits [n, vocab] of every position of `tokens` (positions 0..n-1), and
// the experts each layer chose.
std::vector<double> ReferenceLogits(const Model& model, const std::vector<int32_t>& tokens,
                                    bool gpu_rounding, Routing* routing) {
  const ModelSpec& s = model.spec;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t hidden = s.hidden_size;
  const int64_t hd = s.head_dim;
  const int64_t group = s.num_heads / s.num_kv_heads;
  std::vector<double> x(n * hidden);
  std::vector<float> row(hidden);
  for (int64_t t = 0; t < n; ++t) {
    DequantizeRow(model.token_embedding.dtype(), model.token_embedding.row(tokens[t]), row.data(),
                  hidden);
    std::copy(row.begin(), row.end(), x.begin() + t * hidden);
  }
  for (const LayerWeights& w : model.layers) {
    const std::vector<double> h = RmsNorm(x, w.attn_norm, n, hidden, s.rms_norm_eps);
    std::vector<double> q = Apply(Load(w.q.weight, gpu_rounding, false), h, n);
    std::vector<double> k = Apply(Load(w.k.weight, gpu_rounding, false), h, n);
    const std::vector<double> v = Apply(Load(w.v.weight, gpu_rounding, false), h, n);
    Rope(q, n, s.num_heads, s);
    Rope(k, n, s.num_kv_heads, s);
    std::vector<double> attn(n * s.num_heads * hd, 0.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t head = 0; head < s.num_heads; ++head) {
        const int64_t kvh = head / group;
        const double* qh = q.data() + (t * s.num_heads + head) * hd;
        std::vector<double> p(t + 1);
        double max_score = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          const double* kj = k.data() + (j * s.num_kv_heads + kvh) * hd;
          double dot = 0.0;
          for (int64_t i = 0; i < hd; ++i) dot += qh[i] * kj[i];
          p[j] = dot * scale;
          max_score = std::max(max_score, p[j]);
        }
        double sum = 0.0;
        for (double& pj : p) sum += (pj = std::exp(pj - max_score));
        double* out = attn.data() + (t * s.num_heads + head) * hd;
        for (int64_t j = 0; j <= t; ++j) {
          const double* vj = v.data() + (j * s.num_kv_heads + kvh) * hd;
          for (int64_t i = 0; i < hd; ++i) out[i] += p[j] / sum * vj[i];
        }
      }
    }
    const std::vector<double> o = Apply(Load(w.o.weight, gpu_rounding, false), attn, n);
    for (int64_t i = 0; i < n * hidden; ++i) x[i] += o[i];
    if (w.moe_dropped) continue;
    const std::vector<double> hm = RmsNorm(x, w.ffn_norm, n, hidden, s.rms_norm_eps);
    const std::vector<double> logits = Apply(Load(w.router, gpu_rounding, true), hm, n);
    routing->emplace_back();
    std::vector<RefMatrix> gate, up, down;
    for (const ExpertFfnWeights& e : w.experts) {
      gate.push_back(Load(e.gate, gpu_rounding, false));
      up.push_back(Load(e.up, gpu_rounding, false));
      down.push_back(Load(e.down, gpu_rounding, false));
    }
    for (int64_t t = 0; t < n; ++t) {
      // Softmax router, top-k (ties: lower index), renormalized as the spec says.
      std::vector<double> prob(s.num_experts);
      const double* l = logits.data() + t * s.num_experts;
      const double top = *std::max_element(l, l + s.num_experts);
      double z = 0.0;
      for (int64_t e = 0; e < s.num_experts; ++e) z += (prob[e] = std::exp(l[e] - top));
      for (double& pe : prob) pe /= z;
      std::vector<int64_t> order(s.num_experts);
      for (int64_t e = 0; e < s.num_experts; ++e) order[e] = e;
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return prob[a] > prob[b]; });
      double chosen = 0.0;
      for (int64_t j = 0; j < s.num_experts_per_token; ++j) chosen += prob[order[j]];
      std::vector<int32_t> picked(order.begin(), order.begin() + s.num_experts_per_token);
      std::sort(picked.begin(), picked.end());
      routing->back().insert(routing->back().end(), picked.begin(), picked.end());
      const std::vector<double> xt(hm.begin() + t * hidden, hm.begin() + (t + 1) * hidden);
      for (int64_t j = 0; j < s.num_experts_per_token; ++j) {
        const int64_t e = order[j];
        const double weight = s.norm_topk_prob ? prob[e] / chosen : prob[e];
        const std::vector<double> g = Apply(gate[e], xt, 1);
        const std::vector<double> u = Apply(up[e], xt, 1);
        std::vector<double> a(g.size());
        for (size_t i = 0; i < a.size(); ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
        const std::vector<double> y = Apply(down[e], a, 1);
        for (int64_t i = 0; i < hidden; ++i) x[t * hidden + i] += weight * y[i];
      }
    }
  }
  const std::vector<double> hf = RmsNorm(x, model.output_norm, n, hidden, s.rms_norm_eps);
  return Apply(Load(model.lm_head, gpu_rounding, false), hf, n);
}

// Per row: max |a - ref| / max(1, max |ref|); returns {median, worst}.
std::pair<double, double> RowDrift(const std::vector<double>& a, const std::vector<double>& ref,
                                   int64_t vocab) {
  std::vector<double> rows;
  for (size_t r = 0; r * vocab < ref.size(); ++r) {
    double diff = 0.0;
    double scale = 1.0;
    for (int64_t v = 0; v < vocab; ++v) {
      diff = std::max(diff, std::fabs(a[r * vocab + v] - ref[r * vocab + v]));
      scale = std::max(scale, std::fabs(ref[r * vocab + v]));
    }
    rows.push_back(diff / scale);
  }
  std::sort(rows.begin(), rows.end());
  return {rows[rows.size() / 2], rows.back()};
}

// The CPU engine's logits of every position of `tokens`, in one batch, and
// the experts each layer chose.
std::vector<double> CpuLogits(const Model& model, const std::vector<int32_t>& tokens,
                              Routing* routing) {
  auto engine = Engine::Create(model, {.num_threads = 2});
  EXPECT_TRUE(engine.ok()) << engine.status();
  (*engine)->SetRoutingObserver(
      [routing](int, int64_t num_tokens, int64_t top_k, const int32_t* expert_idx, const float*) {
        routing->emplace_back(expert_idx, expert_idx + num_tokens * top_k);
        for (int64_t t = 0; t < num_tokens; ++t) {
          std::sort(routing->back().begin() + t * top_k, routing->back().begin() + (t + 1) * top_k);
        }
      });
  const int64_t n = static_cast<int64_t>(tokens.size());
  auto cache = (*engine)->CreateKvCache((n + 15) / 16, 16);
  EXPECT_TRUE(cache.ok()) << cache.status();
  Batch batch;
  batch.cache = cache->get();
  batch.token_ids = tokens;
  std::vector<int32_t> table((n + 15) / 16);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  std::vector<float> logits(n * model.spec.vocab_size);
  batch.chunks = {{table, 0, n}};
  for (int64_t i = 0; i < n; ++i) batch.logit_rows.push_back(i);
  EXPECT_TRUE((*engine)->Forward(batch, logits.data()).ok());
  return std::vector<double>(logits.begin(), logits.end());
}

// The model of the test: the mid-size model's proportions, smaller (or the
// mid-size model itself with HERD_PRECISION_MID_SIZE=1, for docs/gpu.md;
// HERD_PRECISION_LAYERS=N overrides the depth).
SynthOptions Shapes(int64_t layers, DType dtype) {
  SynthOptions o;
  const bool mid = std::getenv("HERD_PRECISION_MID_SIZE") != nullptr;
  const char* layers_env = std::getenv("HERD_PRECISION_LAYERS");
  o.num_layers = layers_env != nullptr ? std::atoi(layers_env) : layers;
  o.hidden_size = mid ? 1024 : 512;
  o.num_heads = mid ? 16 : 8;
  o.num_kv_heads = mid ? 4 : 2;
  o.num_experts = 8;
  o.num_experts_per_token = 2;
  o.expert_ffn_size = mid ? 2816 : 1024;
  o.vocab_size = mid ? 32000 : 2048;
  o.dtype = dtype;
  o.seed = 1;
  return o;
}

std::vector<int32_t> Tokens(int64_t vocab) {
  std::vector<int32_t> t;
  for (int i = 0; i < 24; ++i)
    t.push_back(static_cast<int32_t>((1 + 4021 * i * i + 77 * i) % vocab));
  return t;
}

// The reference is right: on F32 weights the CPU engine (F32 GEMMs) is
// within float rounding of it.
TEST(PrecisionDriftTest, TheReferenceIsTheCpuEngineOnF32Weights) {
  testing::TempDir dir;
  const std::string path = dir.Join("f32.gguf");
  ASSERT_TRUE(SynthesizeModel(Shapes(2, DType::kF32), path).ok());
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  const std::vector<int32_t> tokens = Tokens((*model)->spec.vocab_size);
  Routing ref_routing;
  Routing cpu_routing;
  const std::vector<double> ref = ReferenceLogits(**model, tokens, false, &ref_routing);
  const auto [median, worst] =
      RowDrift(CpuLogits(**model, tokens, &cpu_routing), ref, (*model)->spec.vocab_size);
  EXPECT_EQ(RoutingDifferences(cpu_routing, ref_routing, (*model)->spec.num_experts_per_token), 0);
  std::printf("[ f32, 2 layers ] cpu vs f64 reference: median %.3g, worst %.3g\n", median, worst);
  EXPECT_LE(worst, 1e-5);
}

class PrecisionDriftDepthTest : public ::testing::TestWithParam<DType> {};

// Eight layers: how far the CPU engine and the GPU engine's roundings each
// land from the exact result, and from each other.
TEST_P(PrecisionDriftDepthTest, GpuRoundingDriftOverEightLayers) {
  testing::TempDir dir;
  const std::string path = dir.Join("deep.gguf");
  ASSERT_TRUE(SynthesizeModel(Shapes(8, GetParam()), path).ok());
  auto model = LoadModel(path);
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t vocab = (*model)->spec.vocab_size;
  const std::vector<int32_t> tokens = Tokens(vocab);
  Routing exact_routing;
  Routing gpu_routing;
  Routing cpu_routing;
  const std::vector<double> exact = ReferenceLogits(**model, tokens, false, &exact_routing);
  const std::vector<double> gpu = ReferenceLogits(**model, tokens, true, &gpu_routing);
  const std::vector<double> cpu = CpuLogits(**model, tokens, &cpu_routing);
  const int64_t top_k = (*model)->spec.num_experts_per_token;
  const int64_t pairs = static_cast<int64_t>(tokens.size()) * (*model)->spec.num_layers;
  const int64_t cpu_flips = RoutingDifferences(cpu_routing, exact_routing, top_k);
  const int64_t gpu_flips = RoutingDifferences(gpu_routing, exact_routing, top_k);
  const auto [cpu_median, cpu_worst] = RowDrift(cpu, exact, vocab);
  const auto [gpu_median, gpu_worst] = RowDrift(gpu, exact, vocab);
  const auto [gc_median, gc_worst] = RowDrift(gpu, cpu, vocab);
  std::printf(
      "[ %s, %lld layers, hidden %lld ] per-row max |x - ref| / max |ref| (median, worst): cpu vs "
      "exact %.3g, %.3g; simulated gpu vs exact %.3g, %.3g; simulated gpu vs cpu %.3g, %.3g\n",
      DTypeName(GetParam()), static_cast<long long>((*model)->spec.num_layers),
      static_cast<long long>((*model)->spec.hidden_size), cpu_median, cpu_worst, gpu_median,
      gpu_worst, gc_median, gc_worst);
  std::printf(
      "(token, layer) pairs routed to other experts than the exact pass: cpu %lld, "
      "simulated gpu %lld, of %lld\n",
      static_cast<long long>(cpu_flips), static_cast<long long>(gpu_flips),
      static_cast<long long>(pairs));
  if (GetParam() == DType::kF16) {
    // F16: the CPU computes in f32 from the exact weights; the GPU's bf16
    // weights and activations are all of the drift.
    EXPECT_LE(cpu_worst, 1e-5);
    EXPECT_EQ(cpu_flips, 0);
    EXPECT_GT(gpu_median, 100 * cpu_median);
  } else {
    // Q4_0: both keep the weights exact; the CPU's int8 activations (per
    // block of 32, as llama.cpp) are coarser than the GPU's bf16, so the GPU
    // lands nearer the exact result than the CPU does.
    EXPECT_LT(gpu_median, cpu_median);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, PrecisionDriftDepthTest,
                         ::testing::Values(DType::kF16, DType::kQ4_0),
                         [](const auto& info) { return std::string(DTypeName(info.param)); });

}  // namespace
}  // namespace herd
