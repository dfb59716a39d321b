// The expert GEMM on the GPU: every expert's rows times that expert's
// quantized weights, in one launch, with bf16 tensor-core math (W4A16 and
// W8A16: weights int4 or int8 in groups along K with an f16 scale per group;
// activations rounded to bf16; products accumulated in f32).
//
// Weights are repacked once, on the host at load, into the register layout
// of the tensor cores' A operand (mma.m16n8k16, rows = output features), so
// each lane fetches its part of a 16 x 64 tile with one 16-byte load (int4)
// and dequantizes it in registers:
//   row tile r (16 features), chunk c (64 values along K), lane l (0..31):
//     int4: 4 x u32 at ((r * chunks + c) * 32 + l) * 16 bytes; u32 j covers
//           K values c*64 + j*16 .. +15; with g = l / 4, q = l % 4, its nibble
//           i (i < 4) holds the first and nibble 4 + i the second value of the
//           A-fragment register i: rows g (i even) or g + 8 (i odd), columns
//           2q, 2q + 1 (i < 2) or 2q + 8, 2q + 9 (i >= 2) of the 16 x 16 tile;
//           a nibble n stands for n - 8.
//     int8: 8 x u32 at ((r * chunks + c) * 32 + l) * 32 bytes; u32 pair
//           (2j, 2j+1) covers K values c*64 + j*16 .. +15: bytes 0..7 of the
//           pair are registers 0..3 of the fragment, two values each, as
//           two's-complement int8.
//   scales: f16 [row_tiles][8][K / group_size][2]: entry (r, g, j) holds the
//           scales of rows g and g + 8 of row tile r for group j, so a lane
//           fetches the pairs of a chunk's groups with one load.
// Rows are padded to a multiple of 16 and K to a multiple of 64 (and of the
// group size) with zero weights. GGUF Q4_0 and Q8_0 keep their exact values
// and scales (group size 32); float weights are quantized here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor_view.h"

namespace herd::cuda {

// How one weight matrix is quantized on the device.
struct QuantFormat {
  int bits = 4;         // 4 (values -8..7) or 8 (values -128..127)
  int group_size = 32;  // values along K sharing one f16 scale: 32, 64 or 128
};

// The device layout of one [rows, cols] matrix (rows = output features).
struct PackedShape {
  int64_t rows = 0;
  int64_t cols = 0;
  QuantFormat format;

  int64_t padded_rows() const { return (rows + 15) / 16 * 16; }
  int64_t padded_cols() const;
  int64_t weight_bytes() const { return padded_rows() * padded_cols() * format.bits / 8; }
  int64_t scale_bytes() const { return padded_rows() * (padded_cols() / format.group_size) * 2; }
};

// InvalidArgument unless bits is 4 or 8, the group size 32, 64 or 128, and
// rows and cols positive.
absl::Status ValidatePackedShape(const PackedShape& shape);

// The format a stored dtype repacks to without requantizing (Q4_0 -> int4,
// Q8_0 -> int8, group 32); nullopt-like InvalidArgument for other dtypes.
absl::StatusOr<QuantFormat> NativeFormat(DType dtype);

// Repacks `weight` [rows, cols] into `qweight` (shape.weight_bytes()) and
// `scales` (shape.scale_bytes() / 2 values), host memory. Q4_0 and Q8_0
// weights must use their native format (exact copy of values and scales);
// F32, F16 and BF16 weights are quantized per group, symmetric, to the
// nearest integer (int4: scale = the group's value of largest magnitude / -8,
// as ggml's Q4_0; int8: scale = max |value| / 127). InvalidArgument for other
// dtypes, a shape that does not match, or a format a quantized dtype can't
// take.
absl::Status PackWeight(const TensorView& weight, const PackedShape& shape, uint8_t* qweight,
                        uint16_t* scales);

// The float value of every element of a packed matrix, [rows, cols] row
// major (host memory): what the GPU multiplies by. For tests and references.
std::vector<float> UnpackWeight(const PackedShape& shape, const uint8_t* qweight,
                                const uint16_t* scales);

// A layer's experts on the device: expert e's packed weights start at
// qweight + e * shape.weight_bytes(), its scales at scales + e *
// shape.scale_bytes() / 2.
struct GroupedWeights {
  const uint8_t* qweight = nullptr;
  const uint16_t* scales = nullptr;
  int64_t num_experts = 0;
  PackedShape shape;
};

// Workspace bytes for GroupedGemm over up to `max_rows` rows in all.
size_t GroupedGemmWorkspaceBytes(const GroupedWeights& weights, int64_t max_rows);

// out F32 [num_rows, shape.rows] = bf16(x) W_e^T for the rows [offsets[e],
// offsets[e+1]) of each expert e, where x F32 [num_rows, shape.cols] is
// already grouped by expert and expert_offsets I32 [num_experts + 1] lives in
// device memory (the GPU's own routing wrote it: the host never reads it, so
// the call is asynchronous and capturable in a CUDA graph). num_rows bounds
// offsets[num_experts]. All pointers are device memory; nothing is allocated.
// InvalidArgument for a bad shape or a workspace smaller than
// GroupedGemmWorkspaceBytes.
absl::Status GroupedGemm(const GroupedWeights& weights, const float* x, int64_t num_rows,
                         const int32_t* expert_offsets, float* out, void* workspace,
                         size_t workspace_bytes, void* stream);

// Bytes of one expert's matrix as bf16 [shape.rows, shape.cols].
size_t DequantizedBytes(const PackedShape& shape);

// Expert `expert`'s weights as bf16 [shape.rows, shape.cols], row major, into
// `out` (device, DequantizedBytes bytes): each value q * scale rounded to
// nearest, what a cuBLAS bf16 GEMM multiplies (kernels/cuda/
// dequantized_gemm.h). UnpackWeight's values, rounded to bf16. Asynchronous
// on `stream`. InvalidArgument for a bad shape or an expert outside
// [0, num_experts).
absl::Status DequantizeExpert(const GroupedWeights& weights, int64_t expert, uint16_t* out,
                              void* stream);

}  // namespace herd::cuda
