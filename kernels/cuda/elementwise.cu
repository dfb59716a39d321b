// CUDA element-wise and row-wise ops; see cuda_ops.h.
#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_ops.h"

namespace herd::cuda {
namespace {

absl::Status FromCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

// One block per row; a block-wide sum of squares in shared memory.
__global__ void RmsNormKernel(const float* x, const float* weight, int64_t dim, float eps,
                              float* out) {
  extern __shared__ float partial[];
  const float* xr = x + blockIdx.x * dim;
  float* yr = out + blockIdx.x * dim;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += xr[i] * xr[i];
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  const float scale = rsqrtf(partial[0] / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * scale * weight[i];
}

__global__ void SwiGluKernel(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

}  // namespace

absl::Status DeviceCount(int* count) {
  *count = 0;
  return FromCuda(cudaGetDeviceCount(count), "cudaGetDeviceCount");
}

absl::Status RmsNorm(const float* x, const float* weight, int64_t num_rows, int64_t dim, float eps,
                     float* out, void* stream) {
  if (num_rows == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  RmsNormKernel<<<static_cast<unsigned>(num_rows), kThreads, kThreads * sizeof(float),
                  static_cast<cudaStream_t>(stream)>>>(x, weight, dim, eps, out);
  return FromCuda(cudaGetLastError(), "RmsNorm launch");
}

absl::Status SwiGlu(const float* gate, const float* up, int64_t n, float* out, void* stream) {
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  SwiGluKernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(gate, up, n, out);
  return FromCuda(cudaGetLastError(), "SwiGlu launch");
}

absl::Status Malloc(void** ptr, size_t bytes) {
  return FromCuda(cudaMalloc(ptr, bytes), "cudaMalloc");
}
absl::Status Free(void* ptr) { return FromCuda(cudaFree(ptr), "cudaFree"); }
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes) {
  return FromCuda(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}
absl::Status CopyToHost(void* dst, const void* src, size_t bytes) {
  return FromCuda(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}
absl::Status Synchronize(void* stream) {
  return FromCuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)),
                  "cudaStreamSynchronize");
}

}  // namespace herd::cuda
