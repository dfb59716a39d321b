#include "kernels/cuda/dequantized_gemm.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd::cuda {
namespace {

DenseWeights Dequantized(const GroupedWeights& weights, const void* scratch) {
  return {scratch, DType::kBF16, weights.shape.rows, weights.shape.cols};
}

}  // namespace

size_t DequantizedGroupedGemmScratchBytes(const GroupedWeights& weights) {
  return DequantizedBytes(weights.shape);
}

size_t DequantizedGroupedGemmWorkspaceBytes(const GroupedWeights& weights, int64_t max_rows) {
  return DenseGemmWorkspaceBytes(Dequantized(weights, nullptr), max_rows);
}

absl::Status DequantizedGroupedGemm(const BlasHandle& blas, const GroupedWeights& weights,
                                    const float* x, int64_t num_rows, const int32_t* host_offsets,
                                    float* out, void* scratch, size_t scratch_bytes,
                                    void* workspace, size_t workspace_bytes, void* stream) {
  HERD_RETURN_IF_ERROR(ValidatePackedShape(weights.shape));
  if (scratch_bytes < DequantizedGroupedGemmScratchBytes(weights)) {
    return absl::InvalidArgumentError(absl::StrCat("dequantized GEMM: scratch of ", scratch_bytes,
                                                   " bytes, needs ",
                                                   DequantizedGroupedGemmScratchBytes(weights)));
  }
  int64_t most_rows = 0;
  for (int64_t e = 0; e < weights.num_experts; ++e) {
    const int64_t rows = host_offsets[e + 1] - host_offsets[e];
    if (host_offsets[e] < 0 || rows < 0 || host_offsets[e + 1] > num_rows) {
      return absl::InvalidArgumentError(absl::StrCat("dequantized GEMM: expert ", e, " has rows [",
                                                     host_offsets[e], ", ", host_offsets[e + 1],
                                                     ") of ", num_rows));
    }
    most_rows = std::max(most_rows, rows);
  }
  const DenseWeights dense = Dequantized(weights, scratch);
  if (workspace_bytes < DenseGemmWorkspaceBytes(dense, most_rows)) {
    return absl::InvalidArgumentError(absl::StrCat("dequantized GEMM: workspace of ",
                                                   workspace_bytes, " bytes, needs ",
                                                   DenseGemmWorkspaceBytes(dense, most_rows)));
  }
  const int64_t in = weights.shape.cols;
  const int64_t features = weights.shape.rows;
  for (int64_t e = 0; e < weights.num_experts; ++e) {
    const int64_t first = host_offsets[e];
    const int64_t rows = host_offsets[e + 1] - first;
    if (rows == 0) continue;
    HERD_RETURN_IF_ERROR(DequantizeExpert(weights, e, static_cast<uint16_t*>(scratch), stream));
    HERD_RETURN_IF_ERROR(DenseGemm(blas, dense, x + first * in, rows, out + first * features,
                                   workspace, workspace_bytes, stream));
  }
  return absl::OkStatus();
}

}  // namespace herd::cuda
