// CUDA element-wise and row-wise ops; see cuda_ops.h.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <climits>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_status.h"

namespace herd::cuda {
namespace {

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

__global__ void AddRowBiasKernel(float* x, const float* bias, int64_t cols, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] += bias[i % cols];
}

// One block per row: out[r] += sigmoid(gate_logits[r]) * y[r] (scale 1
// without gate logits), the sigmoid as the CPU's shared-expert gate.
__global__ void AddGatedRowsKernel(float* out, const float* y, const float* gate_logits,
                                   int64_t dim) {
  const int64_t r = blockIdx.x;
  const float scale = gate_logits != nullptr ? 1.0f / (1.0f + expf(-gate_logits[r])) : 1.0f;
  float* o = out + r * dim;
  const float* yr = y + r * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] += scale * yr[i];
}

__global__ void FloatToBf16Kernel(const float* x, int64_t n, uint16_t* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    const __nv_bfloat16 b = __float2bfloat16_rn(x[i]);
    out[i] = *reinterpret_cast<const uint16_t*>(&b);
  }
}

__global__ void SwiGluKernel(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// IEEE half bits to float, exactly as F16ToF32 (core/dtype.cc), NaN payloads
// included.
__device__ float HalfBitsToFloat(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24 is exact in float
    bits = sign | __float_as_uint(__fmul_rn(static_cast<float>(mantissa), 0x1p-24f));
  } else if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  return __uint_as_float(bits);
}

// Little-endian f16 at a 2-byte aligned address.
__device__ float LoadHalf(const uint8_t* p) {
  return HalfBitsToFloat(*reinterpret_cast<const uint16_t*>(p));
}

// Value i of a table row, as DequantizeRow computes it: products and sums
// rounded separately (no FMA), so the result is bit-identical.
__device__ float RowValue(const uint8_t* row, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kF32:
      return reinterpret_cast<const float*>(row)[i];
    case DType::kF16:
      return HalfBitsToFloat(reinterpret_cast<const uint16_t*>(row)[i]);
    case DType::kBF16:
      return __uint_as_float(static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(row)[i])
                             << 16);
    case DType::kQ8_0: {
      const uint8_t* block = row + i / 32 * sizeof(BlockQ8_0);
      const auto q = static_cast<int8_t>(block[2 + i % 32]);
      return __fmul_rn(LoadHalf(block), static_cast<float>(q));
    }
    case DType::kQ4_0: {
      const uint8_t* block = row + i / 32 * sizeof(BlockQ4_0);
      const int w = static_cast<int>(i % 32);
      const uint8_t q = block[2 + w % 16];
      const int nibble = w < 16 ? q & 0x0F : q >> 4;
      return __fmul_rn(LoadHalf(block), static_cast<float>(nibble - 8));
    }
    case DType::kQ4_1: {
      const uint8_t* block = row + i / 32 * sizeof(BlockQ4_1);
      const int w = static_cast<int>(i % 32);
      const uint8_t q = block[4 + w % 16];
      const int nibble = w < 16 ? q & 0x0F : q >> 4;
      return __fadd_rn(__fmul_rn(LoadHalf(block), static_cast<float>(nibble)), LoadHalf(block + 2));
    }
    default:  // rejected on the host
      return 0.0f;
  }
}

// One block per token.
__global__ void EmbeddingLookupKernel(const uint8_t* table, DType dtype, int64_t vocab, int64_t dim,
                                      int64_t row_bytes, const int32_t* ids, float* out,
                                      int32_t* bad_id_count) {
  const int32_t id = ids[blockIdx.x];
  float* dst = out + blockIdx.x * dim;
  if (id < 0 || id >= vocab) {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = 0.0f;
    if (threadIdx.x == 0 && bad_id_count != nullptr) atomicAdd(bad_id_count, 1);
    return;
  }
  const uint8_t* row = table + id * row_bytes;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = RowValue(row, dtype, i);
}

__global__ void AddInPlaceKernel(float* acc, const float* x, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) acc[i] += x[i];
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

absl::Status EmbeddingLookup(const void* table, DType dtype, int64_t vocab, int64_t dim,
                             const int32_t* ids, int64_t num_tokens, float* out,
                             int32_t* bad_id_count, void* stream) {
  if (dtype == DType::kI32) {
    return absl::InvalidArgumentError("EmbeddingLookup: an I32 table has no float values");
  }
  if (vocab < 0 || dim < 0 || dim % BlockSize(dtype) != 0 || num_tokens < 0 ||
      num_tokens > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("EmbeddingLookup: ", DTypeName(dtype),
                                                   " table [", vocab, ", ", dim, "], ", num_tokens,
                                                   " tokens"));
  }
  if (num_tokens == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  EmbeddingLookupKernel<<<static_cast<unsigned>(num_tokens), kThreads, 0,
                          static_cast<cudaStream_t>(stream)>>>(
      static_cast<const uint8_t*>(table), dtype, vocab, dim, RowBytes(dtype, dim), ids, out,
      bad_id_count);
  return FromCuda(cudaGetLastError(), "EmbeddingLookup launch");
}

absl::Status AddInPlace(float* acc, const float* x, int64_t n, void* stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("AddInPlace: n ", n));
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  AddInPlaceKernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(acc, x, n);
  return FromCuda(cudaGetLastError(), "AddInPlace launch");
}

absl::Status AddRowBias(float* x, const float* bias, int64_t num_rows, int64_t cols, void* stream) {
  if (num_rows < 0 || cols < 0) {
    return absl::InvalidArgumentError(absl::StrCat("AddRowBias: shape ", num_rows, " x ", cols));
  }
  const int64_t n = num_rows * cols;
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  AddRowBiasKernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, bias, cols, n);
  return FromCuda(cudaGetLastError(), "AddRowBias launch");
}

absl::Status AddGatedRows(float* out, const float* y, const float* gate_logits, int64_t num_rows,
                          int64_t dim, void* stream) {
  if (num_rows < 0 || num_rows > INT_MAX || dim < 0) {
    return absl::InvalidArgumentError(absl::StrCat("AddGatedRows: shape ", num_rows, " x ", dim));
  }
  if (num_rows == 0 || dim == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  AddGatedRowsKernel<<<static_cast<unsigned>(num_rows), kThreads, 0,
                       static_cast<cudaStream_t>(stream)>>>(out, y, gate_logits, dim);
  return FromCuda(cudaGetLastError(), "AddGatedRows launch");
}

absl::Status FloatToBf16(const float* x, int64_t n, uint16_t* out, void* stream) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("FloatToBf16: n ", n));
  if (n == 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  const unsigned blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  FloatToBf16Kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, n, out);
  return FromCuda(cudaGetLastError(), "FloatToBf16 launch");
}

absl::Status StreamCreate(void** stream) {
  cudaStream_t s = nullptr;
  HERD_RETURN_IF_ERROR(
      FromCuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
  *stream = s;
  return absl::OkStatus();
}
absl::Status StreamDestroy(void* stream) {
  return FromCuda(cudaStreamDestroy(static_cast<cudaStream_t>(stream)), "cudaStreamDestroy");
}
absl::Status CopyToDeviceAsync(void* dst, const void* src, size_t bytes, void* stream) {
  return FromCuda(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)),
      "cudaMemcpyAsync H2D");
}
absl::Status CopyToHostAsync(void* dst, const void* src, size_t bytes, void* stream) {
  return FromCuda(
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)),
      "cudaMemcpyAsync D2H");
}
absl::Status MemsetAsync(void* dst, int byte, size_t bytes, void* stream) {
  return FromCuda(cudaMemsetAsync(dst, byte, bytes, static_cast<cudaStream_t>(stream)),
                  "cudaMemsetAsync");
}
absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes) {
  return FromCuda(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}
absl::Status SetDevice(int ordinal) { return FromCuda(cudaSetDevice(ordinal), "cudaSetDevice"); }

absl::Status DeviceName(std::string* name, int* ordinal) {
  HERD_RETURN_IF_ERROR(FromCuda(cudaGetDevice(ordinal), "cudaGetDevice"));
  cudaDeviceProp prop{};
  HERD_RETURN_IF_ERROR(
      FromCuda(cudaGetDeviceProperties(&prop, *ordinal), "cudaGetDeviceProperties"));
  *name = prop.name;
  return absl::OkStatus();
}

absl::Status EventCreate(void** event) {
  cudaEvent_t e = nullptr;
  HERD_RETURN_IF_ERROR(
      FromCuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate"));
  *event = e;
  return absl::OkStatus();
}
absl::Status EventDestroy(void* event) {
  return FromCuda(cudaEventDestroy(static_cast<cudaEvent_t>(event)), "cudaEventDestroy");
}
absl::Status EventRecord(void* event, void* stream) {
  return FromCuda(
      cudaEventRecord(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream)),
      "cudaEventRecord");
}
absl::Status EventSynchronize(void* event) {
  return FromCuda(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
}
absl::Status StreamWaitEvent(void* stream, void* event) {
  return FromCuda(
      cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event), 0),
      "cudaStreamWaitEvent");
}

absl::Status StreamBeginCapture(void* stream) {
  return FromCuda(
      cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeThreadLocal),
      "cudaStreamBeginCapture");
}
absl::Status StreamEndCapture(void* stream, void** graph_exec) {
  cudaGraph_t graph = nullptr;
  HERD_RETURN_IF_ERROR(FromCuda(cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &graph),
                                "cudaStreamEndCapture"));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  HERD_RETURN_IF_ERROR(FromCuda(err, "cudaGraphInstantiate"));
  *graph_exec = exec;
  return absl::OkStatus();
}
absl::Status GraphLaunch(void* graph_exec, void* stream) {
  return FromCuda(
      cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph_exec), static_cast<cudaStream_t>(stream)),
      "cudaGraphLaunch");
}
absl::Status GraphDestroy(void* graph_exec) {
  return FromCuda(cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph_exec)),
                  "cudaGraphExecDestroy");
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
