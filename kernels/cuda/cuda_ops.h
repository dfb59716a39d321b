// The CUDA backend of kernels/ (built when HERD_WITH_CUDA is on).
//
// Same contracts as the CPU ops of the same names (kernels/elementwise.h);
// pointers are device memory, `stream` is a cudaStream_t passed as void* so
// that host code needs no CUDA headers. Ops are asynchronous on the stream and
// never allocate. Errors (launch failures) come back as a Status carrying
// CUDA's message.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "core/dtype.h"

namespace herd::cuda {

// Number of usable CUDA devices. A machine without a GPU or a driver gives an
// error status (cudaGetDeviceCount's message), which GPU tests use to skip.
absl::Status DeviceCount(int* count);

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight; F32 [num_rows, dim].
absl::Status RmsNorm(const float* x, const float* weight, int64_t num_rows, int64_t dim, float eps,
                     float* out, void* stream);

// out[i] = silu(gate[i]) * up[i]; F32 [n].
absl::Status SwiGlu(const float* gate, const float* up, int64_t n, float* out, void* stream);

// out F32 [num_tokens, dim] = rows ids[t] of `table` [vocab, dim] (device
// bytes, rows packed per RowBytes(dtype, dim)), dequantized bit-identically to
// DequantizeRow (core/dtype.h); dtype is F32, F16, BF16, Q8_0, Q4_0 or Q4_1.
// An id outside [0, vocab) gives a row of zeros and adds 1 to *bad_id_count
// (device I32, nullptr: not counted; the caller zeroes it beforehand), where
// cpu::EmbeddingLookup fails. The table must be aligned to 4 bytes for F32
// and 2 bytes otherwise (cudaMalloc'd memory is). InvalidArgument for an I32
// table, a dim that is not a multiple of BlockSize(dtype), or negative sizes.
absl::Status EmbeddingLookup(const void* table, DType dtype, int64_t vocab, int64_t dim,
                             const int32_t* ids, int64_t num_tokens, float* out,
                             int32_t* bad_id_count, void* stream);

// acc[i] += x[i]; F32 [n]. InvalidArgument if n < 0.
absl::Status AddInPlace(float* acc, const float* x, int64_t n, void* stream);

// x[r * cols + c] += bias[c] for every row r < num_rows; F32. A bias of
// -inf masks a column (the router's dropped experts). InvalidArgument for
// negative sizes.
absl::Status AddRowBias(float* x, const float* bias, int64_t num_rows, int64_t cols, void* stream);

// The shared expert's output into the MoE output: out[r] += s_r * y[r] for
// rows r < num_rows of F32 [num_rows, dim], s_r = sigmoid(gate_logits[r]), or
// 1 when gate_logits is null (an ungated shared expert). InvalidArgument for
// negative sizes.
absl::Status AddGatedRows(float* out, const float* y, const float* gate_logits, int64_t num_rows,
                          int64_t dim, void* stream);

// out[i] = x[i] rounded to bfloat16 (nearest even); n values. InvalidArgument
// if n < 0.
absl::Status FloatToBf16(const float* x, int64_t n, uint16_t* out, void* stream);

// Streams, asynchronous copies on a stream, and the device's free memory,
// for the worker's engine.
absl::Status StreamCreate(void** stream);
absl::Status StreamDestroy(void* stream);
absl::Status CopyToDeviceAsync(void* dst, const void* src, size_t bytes, void* stream);
absl::Status CopyToHostAsync(void* dst, const void* src, size_t bytes, void* stream);
absl::Status MemsetAsync(void* dst, int byte, size_t bytes, void* stream);
absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes);
// Makes device `ordinal` the calling thread's current device.
absl::Status SetDevice(int ordinal);
// The current device's name ("NVIDIA H100 80GB HBM3") and its number in this process.
absl::Status DeviceName(std::string* name, int* ordinal);

// Events (cudaEvent_t passed as void*, without timing): a point in a
// stream's work, to order two streams or to wait for part of a stream.
absl::Status EventCreate(void** event);
absl::Status EventDestroy(void* event);
// The point after the work issued on `stream` so far.
absl::Status EventRecord(void* event, void* stream);
// The host waits until the recorded point is reached.
absl::Status EventSynchronize(void* event);
// Work issued on `stream` from now on starts after the recorded point.
absl::Status StreamWaitEvent(void* stream, void* event);

// CUDA graphs: the launches a stream receives between StreamBeginCapture and
// StreamEndCapture become a graph (no kernel runs meanwhile); GraphLaunch
// replays it on a stream. Handles are cudaGraphExec_t passed as void*.
absl::Status StreamBeginCapture(void* stream);
absl::Status StreamEndCapture(void* stream, void** graph_exec);
absl::Status GraphLaunch(void* graph_exec, void* stream);
absl::Status GraphDestroy(void* graph_exec);

// Copies between host and device, and device allocation, for tests and the
// worker's weight upload. Synchronous.
absl::Status Malloc(void** ptr, size_t bytes);
absl::Status Free(void* ptr);
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes);
absl::Status CopyToHost(void* dst, const void* src, size_t bytes);
absl::Status Synchronize(void* stream);

}  // namespace herd::cuda
