// Matrix multiplication against stored weights: y = x W^T (+ b).
//
// W [out, in] comes from a checkpoint in any weight dtype (F32, F16, BF16,
// Q8_0, Q4_0, Q4_1). PackMatrix prepares it once, at load, for the fast
// kernels: Q8_0 and Q4_0 are repacked, with their values and scales unchanged,
// into groups of 16 rows interleaved 4 bytes at a time, so that one 64-byte
// load feeds one AVX-512 VNNI instruction for 16 rows; F16 and BF16 are
// repacked, values unchanged, into groups of 16 rows interleaved one value at
// a time, so that one load gives one column of 16 rows and a token's product
// is a broadcast multiply-add per column, with no sum across lanes; F32, Q4_1
// and Herd's quantized matrices are used in place (no copy).
//
// For quantized weights the activations are first quantized per 32-value
// block to int8 with a float scale, as llama.cpp does (Q8_0 rounding), and
// each block product is an integer dot product scaled by both block scales.
// This keeps Herd within float reassociation of llama.cpp's results.
// For BF16 weights the activations are first rounded to BF16 (to nearest
// even), as llama.cpp does too (its BF16 dot product takes BF16 activations):
// every product is then exact in F32, and where the CPU has AVX512_BF16 a
// prefill's token tiles multiply on the BF16 dot product (vdpbf16ps, two
// products per lane per instruction), within float reassociation of the
// other kernels (it also reads BF16 subnormals as zero).
//
// Layout of a repacked group of 16 rows (rows past `out` are zero padding):
//   for each 32-value block b:  payload, then F16 scales [16] (one per row)
//   Q8_0x16 payload: 8 steps x 64 B; step s holds, for row r = 0..15, the
//                    int8 values 4s..4s+3 of that row's block b (bytes r*4..r*4+3)
//                    in offset binary (byte = value + 128), so that, like Q4_0's
//                    nibbles, they are the unsigned operand of vpdpbusd and the
//                    offset comes back off as 128 * sum(activations)
//   Q4_0x16 payload: 4 steps x 64 B; step s holds, for row r, the ggml bytes
//                    qs[4s..4s+3]: low nibbles are values 4s..4s+3, high
//                    nibbles values 16+4s..16+4s+3
// A group is 16 x 34 B (Q8_0) or 16 x 18 B (Q4_0) per block: exactly the
// bytes of the source rows.
//   HalfRows16 (F16, BF16): for each column k, the 16 rows' values at k
//                    (32 B), so a group is 16 x cols x 2 B.
//
// Herd's own quantized matrices (DType::kQuant, core/quant_format.h) are
// stored in this same 16-row interleaving, so they are used in place from the
// checkpoint's memory map with no repacking; their scales (and mins) are
// separate arrays, applied once per group. Codes u are unsigned; each block's
// integer dot product is sum(u * a), and per group
//   y += s * sum_blocks(d_a * dot) - s * ZeroCode() * sum_blocks(d_a * sum(a))   (symmetric)
//   y += s * sum_blocks(d_a * dot) + m * sum_blocks(d_a * sum(a))                (asymmetric)
// (the scalar and AVX2 kernels centre each block's dot on ZeroCode() instead; all
// agree to float rounding).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/tensor_view.h"
#include "core/thread_pool.h"

namespace herd::cpu {

enum class PackedLayout {
  kRowMajor,  // the source tensor as stored (F32, Q4_1)
  kQ8_0x16,
  kQ4_0x16,
  kHalfRows16,   // F16 and BF16, one column of 16 rows at a time
  kQuantRows16,  // Herd's quantized formats, in place
};

constexpr int64_t kPackRows = 16;

// A weight matrix ready for Matmul. Cheap to move; owns its repacked bytes
// (if any); the source tensor must outlive it. Immutable, thread-safe to share.
struct PackedMatrix {
  TensorView source;  // [rows, cols] as loaded
  PackedLayout layout = PackedLayout::kRowMajor;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* data = nullptr;  // source bytes, or the repacked groups
  std::shared_ptr<const uint8_t[]> storage;
  // kQuantRows16: the format and its scales and mins (data = the codes).
  QuantFormat format;
  const uint16_t* scales = nullptr;
  const uint16_t* mins = nullptr;

  int64_t num_groups() const { return (rows + kPackRows - 1) / kPackRows; }
  // Calls fn(data, bytes) for each range of the source the kernels read in
  // place (the row-major tensor, or a quantized matrix's codes, scales and
  // mins); nothing when the matrix was repacked into `storage`.
  void ForEachInPlaceRange(const std::function<void(const void*, size_t)>& fn) const;
  // Bytes of the packed representation (for resident-memory accounting).
  int64_t num_bytes() const;
};

// Prepares `weight` [rows, cols]; a repacked copy goes to memory from
// AllocateHugePageBacked (core/huge_pages.h). InvalidArgument when it is not
// 2-D, its dtype is not a weight dtype, or cols is not a multiple of the
// block size; ResourceExhausted when the copy gets no memory.
absl::StatusOr<PackedMatrix> PackMatrix(const TensorView& weight);

// Bytes of workspace Matmul needs for `num_tokens` rows of activations.
size_t MatmulWorkspaceBytes(const PackedMatrix& weight, int64_t num_tokens);

// x F32 [num_tokens, cols]; y F32 [num_tokens, rows] (overwritten); bias F32
// [rows] or nullptr. Splits row groups over `pool` and runs the fastest kernel
// of ActiveIsa(). Never allocates. InvalidArgument when the workspace is too
// small.
absl::Status Matmul(const PackedMatrix& weight, const float* bias, const float* x,
                    int64_t num_tokens, float* y, void* workspace, size_t workspace_bytes,
                    ThreadPool& pool);

// One product of a batch: y F32 [num_tokens, w.rows] = x F32 [num_tokens, w.cols] W^T (+ bias).
struct MatmulTask {
  const PackedMatrix* weight = nullptr;
  const float* bias = nullptr;
  const float* x = nullptr;
  int64_t num_tokens = 0;
  float* y = nullptr;
};

// Runs several independent products as one parallel loop over all their row
// groups: the MoE layer's projections of every active expert at once, so both
// cores stay busy even when each expert has a single token. Tasks with the
// same x, num_tokens and cols share one quantization of x (gate and up).
size_t MatmulBatchWorkspaceBytes(const MatmulTask* tasks, size_t num_tasks);
absl::Status MatmulBatch(const MatmulTask* tasks, size_t num_tasks, void* workspace,
                         size_t workspace_bytes, ThreadPool& pool);

// The scalar reference: the same product computed directly from the stored
// tensor, one row and token at a time. Conformance tests compare every
// kernel against it.
size_t MatmulReferenceWorkspaceBytes(DType weight_type, int64_t num_tokens, int64_t in);
absl::Status MatmulReference(const TensorView& weight, const float* bias, const float* x,
                             int64_t num_tokens, float* y, void* workspace, size_t workspace_bytes,
                             ThreadPool& pool);

}  // namespace herd::cpu
