// The expert GEMM for prefill-sized groups through cuBLAS: each expert with
// rows is dequantized to a bf16 matrix (DequantizeExpert) and multiplied by a
// cuBLAS bf16 GEMM (DenseGemm), which runs at the tensor cores' rate where
// the grouped W4A16/W8A16 kernel (grouped_gemm.h), built for decode's few
// rows per expert, does not. What vLLM does for AWQ weights from 256 tokens
// on. The dequantization reads the expert's packed weights once and writes 2
// bytes per value: worth it once an expert has a few hundred rows.
//
// As in cuda_ops.h: pointers are device memory unless named host_, `stream`
// is a cudaStream_t passed as void*, calls are asynchronous on the stream and
// never allocate.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/dense_gemm.h"
#include "kernels/cuda/grouped_gemm.h"

namespace herd::cuda {

// Scratch for one dequantized expert matrix, and workspace for the bf16
// activations of up to `max_rows` rows of one expert.
size_t DequantizedGroupedGemmScratchBytes(const GroupedWeights& weights);
size_t DequantizedGroupedGemmWorkspaceBytes(const GroupedWeights& weights, int64_t max_rows);

// GroupedGemm's product with the row offsets on the host: out F32 [num_rows,
// shape.rows] = bf16(x) bf16(W_e)^T for the rows [host_offsets[e],
// host_offsets[e + 1]) of each expert e (x F32 [num_rows, shape.cols],
// grouped by expert), the experts one after another. The weights are rounded
// to bf16 (q * scale) where GroupedGemm scales exact integer products in f32,
// so results differ from it by about 2^-9 relative per weight. Errors:
// InvalidArgument for offsets that decrease or pass num_rows, or a scratch or
// workspace smaller than the sizes above; DenseGemm's errors.
absl::Status DequantizedGroupedGemm(const BlasHandle& blas, const GroupedWeights& weights,
                                    const float* x, int64_t num_rows, const int32_t* host_offsets,
                                    float* out, void* scratch, size_t scratch_bytes,
                                    void* workspace, size_t workspace_bytes, void* stream);

}  // namespace herd::cuda
