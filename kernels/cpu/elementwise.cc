#include "kernels/elementwise.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/fast_exp.h"

namespace herd::cpu {

absl::Status EmbeddingLookup(const TensorView& table, const int32_t* ids, int64_t num_tokens,
                             float* out) {
  const int64_t vocab = table.dim(0);
  const int64_t dim = table.dim(1);
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", ids[t], " is outside the vocabulary [0, ", vocab, ")"));
    }
    if (table.dtype() == DType::kQuant) {
      DequantizeQuantizedRow(table.quant_format(), table.quantized(), dim, ids[t], out + t * dim);
    } else {
      DequantizeRow(table.dtype(), table.row(ids[t]), out + t * dim, dim);
    }
  }
  return absl::OkStatus();
}

void RmsNorm(const float* x, const float* weight, int64_t num_rows, int64_t dim, float eps,
             float* out) {
  for (int64_t r = 0; r < num_rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = out + r * dim;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < dim; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const float scale = 1.0f / std::sqrt(static_cast<float>(sum / dim) + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * scale * weight[i];
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void SwiGlu(const float* gate,
                                                                         const float* up, int64_t n,
                                                                         float* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = Silu(gate[i]) * up[i];
}

void AddInPlace(float* acc, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += x[i];
}

}  // namespace herd::cpu
