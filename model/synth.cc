#include "model/synth.h"

#include <cmath>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "model/gguf_file.h"
#include "model/gguf_writer.h"

namespace herd {
namespace {

constexpr char kTokenizerTokensKey[] = "tokenizer.ggml.tokens";

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in (0, 1).
double Uniform(uint64_t& state) {
  return (static_cast<double>(SplitMix64(state) >> 11) + 0.5) * 0x1.0p-53;
}

double Normal(uint64_t& state) {
  return std::sqrt(-2.0 * std::log(Uniform(state))) * std::cos(2.0 * M_PI * Uniform(state));
}

uint64_t HashName(const std::string& name, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

constexpr char kTokenEmbedding[] = "token_embd.weight";
// The trained-like token embedding of `outliers` models (synth.h): rows mix
// kEmbeddingRank random directions with a 1/k variance spectrum, plus
// isotropic noise of kEmbeddingNoise times their size.
constexpr int64_t kEmbeddingRank = 32;
constexpr double kOutlierMatrixShare = 0.25;
constexpr double kEmbeddingNoise = 0.3;

// Its std: a block's update to the residual stream passes two projections of
// gain 0.02 * sqrt(hidden) each (v then o; gate/up then down), about
// 0.0004 * hidden per value, and L blocks add sqrt(L) times that. The
// embedding is 2.5x their sum, so the token dominates the residual stream.
double EmbeddingStd(const SynthOptions& o) {
  return 2.5 * 0.0004 * static_cast<double>(o.hidden_size) *
         std::sqrt(static_cast<double>(o.num_layers));
}

// Fills a [rows, cols] matrix in `dtype`; each row has its own RNG stream so
// rows can be generated in parallel and the result is thread-count independent.
std::vector<uint8_t> RandomMatrix(const std::string& name, int64_t rows, int64_t cols, DType dtype,
                                  const SynthOptions& o, ThreadPool& pool) {
  const bool low_rank_embedding = o.outliers && name == kTokenEmbedding;
  const double std_dev = low_rank_embedding ? EmbeddingStd(o) : 0.02;
  const uint64_t base = HashName(name, o.seed);
  // The low-rank embedding's directions, scaled by their spectrum, so that
  // sum_k coef_k * basis_k with coef ~ N(0, 1) has variance ~1 per value.
  std::vector<float> basis;
  if (low_rank_embedding) {
    double spectrum = 0.0;
    for (int64_t k = 0; k < kEmbeddingRank; ++k) spectrum += 1.0 / static_cast<double>(k + 1);
    basis.resize(kEmbeddingRank * cols);
    uint64_t state = base ^ 0xBA515ull;
    for (int64_t k = 0; k < kEmbeddingRank; ++k) {
      const double scale = 1.0 / std::sqrt(static_cast<double>(k + 1) * spectrum);
      for (int64_t c = 0; c < cols; ++c) {
        basis[k * cols + c] = static_cast<float>(Normal(state) * scale);
      }
    }
  }
  // Outlier input channels, in a quarter of the matrices (by name: for the
  // experts' stacked tensors, one projection of every expert of a layer):
  // the same channels for every row.
  std::vector<float> channel_scale(cols, 1.0f);
  uint64_t pick = base ^ 0x0D1CEull;
  if (o.outliers && !low_rank_embedding && Uniform(pick) < kOutlierMatrixShare) {
    uint64_t state = base ^ 0xC0FFEEull;
    for (int64_t c = 0; c < cols; ++c) {
      if (Uniform(state) < 0.01) channel_scale[c] = static_cast<float>(8.0 + 16.0 * Uniform(state));
    }
  }
  const int64_t row_bytes = RowBytes(dtype, cols);
  std::vector<uint8_t> bytes(rows * row_bytes);
  pool.ParallelFor(rows, 16, [&](int64_t begin, int64_t end, int) {
    std::vector<float> row(cols);
    for (int64_t r = begin; r < end; ++r) {
      uint64_t state = base + static_cast<uint64_t>(r) * 0x9E3779B97F4A7C15ull;
      for (int64_t c = 0; c < cols; ++c) {
        double v;
        if (o.outliers) {
          // Student-t with 4 degrees of freedom, scaled to std kStd (var = 4/2).
          double chi2 = 0.0;
          for (int k = 0; k < 4; ++k) {
            const double z = Normal(state);
            chi2 += z * z;
          }
          v = Normal(state) / std::sqrt(chi2 / 4.0) * std_dev / std::sqrt(2.0);
        } else {
          v = Normal(state) * std_dev;
        }
        row[c] = static_cast<float>(v) * channel_scale[c];
      }
      if (low_rank_embedding) {
        double coef[kEmbeddingRank];
        for (double& x : coef) x = Normal(state);
        for (int64_t c = 0; c < cols; ++c) {
          double mix = 0.0;
          for (int64_t k = 0; k < kEmbeddingRank; ++k) mix += coef[k] * basis[k * cols + c];
          row[c] = static_cast<float>(kEmbeddingNoise * row[c] + std_dev * mix);
        }
      }
      QuantizeRow(dtype, row.data(), bytes.data() + r * row_bytes, cols);
    }
  });
  return bytes;
}

std::vector<uint8_t> NormWeights(const std::string& name, int64_t n, const SynthOptions& o) {
  uint64_t state = HashName(name, o.seed);
  std::vector<float> w(n);
  for (float& x : w) x = static_cast<float>(1.0 + 0.05 * Normal(state));
  std::vector<uint8_t> bytes(n * sizeof(float));
  std::memcpy(bytes.data(), w.data(), bytes.size());
  return bytes;
}

uint32_t GgufFileType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 0;
    case DType::kF16:
      return 1;
    case DType::kQ4_0:
      return 2;
    case DType::kQ4_1:
      return 3;
    case DType::kQ8_0:
      return 7;
    case DType::kBF16:
      return 32;
    default:
      return 0;
  }
}

// Opens the GGUF whose tokenizer a model takes, and checks (or, when it is
// 0, sets) the vocabulary size against its token count.
absl::StatusOr<std::unique_ptr<GgufFile>> OpenTokenizerSource(const std::string& path,
                                                              int64_t* vocab_size) {
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path));
  const GgufValue* tokens = file->FindValue(kTokenizerTokensKey);
  if (tokens == nullptr || !tokens->is_array() || tokens->array_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has no tokenizer (no ", kTokenizerTokensKey, " array)"));
  }
  const auto num_tokens = static_cast<int64_t>(tokens->array_size());
  if (*vocab_size == 0) *vocab_size = num_tokens;
  if (*vocab_size != num_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("--vocab is ", *vocab_size, " but the tokenizer of ", path, " has ",
                     num_tokens, " tokens; leave --vocab out to take its count"));
  }
  return file;
}

}  // namespace

absl::Status SynthOptions::Validate() const {
  if (arch != "mixtral") {
    return absl::InvalidArgumentError(
        absl::StrCat("--arch '", arch, "' is not supported by synth (supported: mixtral)"));
  }
  const std::pair<const char*, int64_t> dims[] = {
      {"layers", num_layers},     {"hidden", hidden_size},    {"heads", num_heads},
      {"kv-heads", num_kv_heads}, {"experts", num_experts},   {"top-k", num_experts_per_token},
      {"ffn", expert_ffn_size},   {"context", context_length}};
  for (const auto& [field, value] : dims) {
    if (value <= 0) return absl::InvalidArgumentError(absl::StrCat("--", field, " must be > 0"));
  }
  if (vocab_size < 0 || (vocab_size == 0 && tokenizer_from.empty())) {
    return absl::InvalidArgumentError(
        "--vocab must be > 0 (or left out with --tokenizer-from, which gives it)");
  }
  if (hidden_size % num_heads != 0 || (hidden_size / num_heads) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--hidden (", hidden_size, ") must be an even multiple of --heads (", num_heads, ")"));
  }
  if (num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError("--heads must be a multiple of --kv-heads");
  }
  if (num_experts_per_token > num_experts) {
    return absl::InvalidArgumentError("--top-k must not exceed --experts");
  }
  if (hot_experts < 0 || hot_experts > num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("--hot-experts must be in [0, --experts], got ", hot_experts));
  }
  if (!(std::isfinite(hot_expert_scale) && hot_expert_scale > 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--hot-expert-scale must be finite and > 0, got ", hot_expert_scale));
  }
  if (dtype == DType::kI32) return absl::InvalidArgumentError("--dtype i32 is not a weight type");
  for (int64_t cols : {hidden_size, expert_ffn_size}) {
    if (cols % BlockSize(dtype) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(DTypeName(dtype), " needs --hidden and --ffn to be multiples of ",
                       BlockSize(dtype), ", got ", cols));
    }
  }
  return absl::OkStatus();
}

absl::Status SynthesizeModel(const SynthOptions& options, const std::string& path) {
  HERD_RETURN_IF_ERROR(options.Validate());
  SynthOptions o = options;
  std::unique_ptr<GgufFile> tokenizer;
  if (!o.tokenizer_from.empty()) {
    HERD_ASSIGN_OR_RETURN(tokenizer, OpenTokenizerSource(o.tokenizer_from, &o.vocab_size));
  }
  ThreadPool pool(o.num_threads > 0 ? o.num_threads : ThreadPool::DefaultNumThreads());
  const int64_t head_dim = o.hidden_size / o.num_heads;
  const int64_t kv_dim = o.num_kv_heads * head_dim;

  GgufWriter w;
  w.AddString("general.architecture", "llama");
  w.AddString("general.name", absl::StrCat("herd-synth-", o.arch, "-", DTypeName(o.dtype),
                                           o.outliers ? "-outliers" : "", "-seed", o.seed));
  w.AddU32("general.file_type", GgufFileType(o.dtype));
  w.AddU32("llama.vocab_size", static_cast<uint32_t>(o.vocab_size));
  w.AddU32("llama.context_length", static_cast<uint32_t>(o.context_length));
  w.AddU32("llama.embedding_length", static_cast<uint32_t>(o.hidden_size));
  w.AddU32("llama.block_count", static_cast<uint32_t>(o.num_layers));
  w.AddU32("llama.feed_forward_length", static_cast<uint32_t>(o.expert_ffn_size));
  w.AddU32("llama.attention.head_count", static_cast<uint32_t>(o.num_heads));
  w.AddU32("llama.attention.head_count_kv", static_cast<uint32_t>(o.num_kv_heads));
  w.AddU32("llama.rope.dimension_count", static_cast<uint32_t>(head_dim));
  w.AddF32("llama.rope.freq_base", o.rope_theta);
  w.AddF32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.AddU32("llama.expert_count", static_cast<uint32_t>(o.num_experts));
  w.AddU32("llama.expert_used_count", static_cast<uint32_t>(o.num_experts_per_token));
  w.AddString("tokenizer.ggml.model", "none");
  if (tokenizer != nullptr) {
    for (const std::string& key : tokenizer->metadata_keys()) {
      if (absl::StartsWith(key, "tokenizer.")) w.AddValue(key, *tokenizer->FindValue(key));
    }
  }

  auto matrix = [&](const std::string& name, std::vector<int64_t> shape) -> absl::Status {
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) rows *= shape[i];
    return w.AddTensor(name, o.dtype, shape,
                       RandomMatrix(name, rows, shape.back(), o.dtype, o, pool));
  };
  auto norm = [&](const std::string& name, int64_t n) {
    return w.AddTensor(name, DType::kF32, {n}, NormWeights(name, n, o));
  };

  HERD_RETURN_IF_ERROR(matrix(kTokenEmbedding, {o.vocab_size, o.hidden_size}));
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const std::string p = absl::StrCat("blk.", l, ".");
    HERD_RETURN_IF_ERROR(norm(p + "attn_norm.weight", o.hidden_size));
    HERD_RETURN_IF_ERROR(matrix(p + "attn_q.weight", {o.hidden_size, o.hidden_size}));
    HERD_RETURN_IF_ERROR(matrix(p + "attn_k.weight", {kv_dim, o.hidden_size}));
    HERD_RETURN_IF_ERROR(matrix(p + "attn_v.weight", {kv_dim, o.hidden_size}));
    HERD_RETURN_IF_ERROR(matrix(p + "attn_output.weight", {o.hidden_size, o.hidden_size}));
    HERD_RETURN_IF_ERROR(norm(p + "ffn_norm.weight", o.hidden_size));
    // The router stays F32, as llama.cpp's quantizer leaves ffn_gate_inp.
    std::vector<uint8_t> router =
        RandomMatrix(p + "ffn_gate_inp.weight", o.num_experts, o.hidden_size, DType::kF32, o, pool);
    float* router_rows = reinterpret_cast<float*>(router.data());
    for (int64_t i = 0; i < o.hot_experts * o.hidden_size; ++i) {
      router_rows[i] *= o.hot_expert_scale;
    }
    HERD_RETURN_IF_ERROR(w.AddTensor(p + "ffn_gate_inp.weight", DType::kF32,
                                     {o.num_experts, o.hidden_size}, std::move(router)));
    HERD_RETURN_IF_ERROR(
        matrix(p + "ffn_gate_exps.weight", {o.num_experts, o.expert_ffn_size, o.hidden_size}));
    HERD_RETURN_IF_ERROR(
        matrix(p + "ffn_up_exps.weight", {o.num_experts, o.expert_ffn_size, o.hidden_size}));
    HERD_RETURN_IF_ERROR(
        matrix(p + "ffn_down_exps.weight", {o.num_experts, o.hidden_size, o.expert_ffn_size}));
  }
  HERD_RETURN_IF_ERROR(norm("output_norm.weight", o.hidden_size));
  HERD_RETURN_IF_ERROR(matrix("output.weight", {o.vocab_size, o.hidden_size}));
  return w.WriteFile(path);
}

}  // namespace herd
