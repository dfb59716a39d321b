// Dense (not quantized) matrices on the GPU through cuBLAS: the projections
// of float models and the router. F32 weights run as an f32 GEMM (no TF32,
// the CPU's precision); BF16 weights read activations rounded to bf16, with
// f32 accumulation and output.
//
// As in cuda_ops.h: pointers are device memory, `stream` is a cudaStream_t
// passed as void*, calls are asynchronous on the stream and never allocate
// (the bf16 activations go to the caller's workspace), so they can be
// captured in a CUDA graph.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/dtype.h"

namespace herd::cuda {

// A cuBLAS handle bound to the current device, with a workspace of its own
// (so that cuBLAS never allocates while a CUDA graph is being captured).
class BlasHandle {
 public:
  // The workspace each handle owns (cuBLAS's advice for Hopper).
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

  // Internal with cuBLAS's status name when the library cannot start.
  static absl::Status Create(BlasHandle* out);
  BlasHandle() = default;
  ~BlasHandle();
  BlasHandle(BlasHandle&& other) noexcept;
  BlasHandle& operator=(BlasHandle&& other) noexcept;
  BlasHandle(const BlasHandle&) = delete;
  BlasHandle& operator=(const BlasHandle&) = delete;

  // Binds the handle to `stream` with its own workspace; DenseGemm calls it.
  absl::Status Bind(void* stream) const;
  void* get() const { return handle_; }  // cublasHandle_t

 private:
  void* handle_ = nullptr;  // cublasHandle_t
  void* workspace_ = nullptr;
};

// A [rows, cols] matrix (rows = output features), row-major, F32 or BF16.
struct DenseWeights {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Workspace bytes DenseGemm needs for up to `max_rows` rows of x.
size_t DenseGemmWorkspaceBytes(const DenseWeights& weights, int64_t max_rows);

// out F32 [num_rows, weights.rows] = x F32 [num_rows, weights.cols] W^T.
// InvalidArgument for a dtype other than F32/BF16, non-positive dims, or a
// workspace smaller than DenseGemmWorkspaceBytes; Internal for cuBLAS errors.
absl::Status DenseGemm(const BlasHandle& blas, const DenseWeights& weights, const float* x,
                       int64_t num_rows, float* out, void* workspace, size_t workspace_bytes,
                       void* stream);

}  // namespace herd::cuda
