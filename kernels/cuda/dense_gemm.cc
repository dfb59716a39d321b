#include "kernels/cuda/dense_gemm.h"

#include <cublas_v2.h>

#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/cuda/cuda_ops.h"

namespace herd::cuda {
namespace {

absl::Status FromCublas(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cublasGetStatusName(status)));
}

}  // namespace

absl::Status BlasHandle::Create(BlasHandle* out) {
  BlasHandle created;
  cublasHandle_t handle = nullptr;
  HERD_RETURN_IF_ERROR(FromCublas(cublasCreate(&handle), "cublasCreate"));
  created.handle_ = handle;
  HERD_RETURN_IF_ERROR(Malloc(&created.workspace_, kWorkspaceBytes));
  // The default (non-TF32) math: f32 GEMMs keep the CPU's precision.
  HERD_RETURN_IF_ERROR(
      FromCublas(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode"));
  *out = std::move(created);
  return absl::OkStatus();
}

BlasHandle::~BlasHandle() {
  if (handle_ != nullptr) cublasDestroy(static_cast<cublasHandle_t>(handle_));
  if (workspace_ != nullptr) (void)Free(workspace_);
  handle_ = nullptr;
  workspace_ = nullptr;
}

BlasHandle::BlasHandle(BlasHandle&& other) noexcept
    : handle_(std::exchange(other.handle_, nullptr)),
      workspace_(std::exchange(other.workspace_, nullptr)) {}

BlasHandle& BlasHandle::operator=(BlasHandle&& other) noexcept {
  if (this != &other) {
    this->~BlasHandle();
    handle_ = std::exchange(other.handle_, nullptr);
    workspace_ = std::exchange(other.workspace_, nullptr);
  }
  return *this;
}

absl::Status BlasHandle::Bind(void* stream) const {
  auto handle = static_cast<cublasHandle_t>(handle_);
  HERD_RETURN_IF_ERROR(
      FromCublas(cublasSetStream(handle, static_cast<cudaStream_t>(stream)), "cublasSetStream"));
  // cublasSetStream resets the workspace to cuBLAS's own pool.
  return FromCublas(cublasSetWorkspace(handle, workspace_, kWorkspaceBytes), "cublasSetWorkspace");
}

size_t DenseGemmWorkspaceBytes(const DenseWeights& weights, int64_t max_rows) {
  if (weights.dtype != DType::kBF16 || max_rows <= 0) return 0;
  return static_cast<size_t>(max_rows * weights.cols) * sizeof(uint16_t);
}

absl::Status DenseGemm(const BlasHandle& blas, const DenseWeights& weights, const float* x,
                       int64_t num_rows, float* out, void* workspace, size_t workspace_bytes,
                       void* stream) {
  if (weights.dtype != DType::kF32 && weights.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("DenseGemm takes F32 or BF16 weights, got ", DTypeName(weights.dtype)));
  }
  if (weights.rows <= 0 || weights.cols <= 0 || weights.rows > INT_MAX || weights.cols > INT_MAX ||
      num_rows < 0 || num_rows > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("DenseGemm: weights ", weights.rows, " x ",
                                                   weights.cols, ", ", num_rows, " rows"));
  }
  if (workspace_bytes < DenseGemmWorkspaceBytes(weights, num_rows)) {
    return absl::InvalidArgumentError(absl::StrCat("DenseGemm: workspace of ", workspace_bytes,
                                                   " bytes, needs ",
                                                   DenseGemmWorkspaceBytes(weights, num_rows)));
  }
  if (num_rows == 0) return absl::OkStatus();
  HERD_RETURN_IF_ERROR(blas.Bind(stream));
  auto handle = static_cast<cublasHandle_t>(blas.get());
  // Row-major out [n, rows] is column-major out^T [rows, n] = W x^T, where
  // row-major W [rows, cols] is column-major W^T: op(A) = T.
  const int m = static_cast<int>(weights.rows);
  const int n = static_cast<int>(num_rows);
  const int k = static_cast<int>(weights.cols);
  const float alpha = 1.0f;
  const float beta = 0.0f;
  if (weights.dtype == DType::kF32) {
    return FromCublas(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha,
                                  static_cast<const float*>(weights.data), k, x, k, &beta, out, m),
                      "cublasSgemm");
  }
  auto* x_bf16 = static_cast<uint16_t*>(workspace);
  HERD_RETURN_IF_ERROR(FloatToBf16(x, num_rows * weights.cols, x_bf16, stream));
  return FromCublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, weights.data,
                                 CUDA_R_16BF, k, x_bf16, CUDA_R_16BF, k, &beta, out, CUDA_R_32F, m,
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                    "cublasGemmEx");
}

}  // namespace herd::cuda
