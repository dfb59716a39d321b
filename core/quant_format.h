// Herd's own quantized weight formats: weight-only int8, int4, int3 and int2,
// symmetric or asymmetric, per group of 32 / 64 / 128 values along a row or
// per output channel (one group per row), with F16 or BF16 scales.
//
// A quantized matrix W [rows, cols] is three arrays, stored in Herd's
// checkpoint as separate tensors and used in place from the memory map:
//
//   codes   the unsigned b-bit codes u, in the "rows16" layout below
//   scales  F16/BF16 [row_tiles, groups_per_row, 16]
//   mins    F16/BF16 [row_tiles, groups_per_row, 16], asymmetric formats only
//
// with row_tiles = ceil(rows / 16) and one entry per row of a tile (rows past
// `rows` are zero padding). A value is
//
//   symmetric:   w = s * (u - 2^(b-1))        u in [0, 2^b - 1]
//   asymmetric:  w = s * u + m
//
// The rows16 layout is chosen for SIMD: the CPU kernels load 64 bytes and
// get, for each of 16 rows, 4 consecutive values of one 32-value block, which
// is one VNNI vpdpbusd (or two AVX2 halves) against 4 int8 activations
// broadcast to every row. For row tile t and 32-value block k of the row,
// the payload is b slices of 64 bytes at ((t * blocks_per_row) + k) * 64 * b.
// Byte 4*r + i of a slice belongs to row r of the tile; "step" s = 0..7 names
// values 4s..4s+3 of the block, and value 4s+i of row r is:
//
//   b = 8:  slice s, the whole byte
//   b = 4:  slice s % 4, bits 4*(s / 4) .. +3      (low nibble: steps 0-3)
//   b = 2:  slice s % 2, bits 2*(s / 2) .. +1
//   b = 3:  the low two bits as for b = 2 in slices 0-1; bit 2 is bit s of
//           slice 2
//
// GGUF's Q4_0 repacked for the CPU kernels is this layout with b = 4,
// symmetric, group 32 (with its scales interleaved instead of separate).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace herd {

constexpr int64_t kQuantTileRows = 16;
constexpr int64_t kQuantBlockValues = 32;

struct QuantFormat {
  int bits = 4;                    // 8, 4, 3 or 2
  bool symmetric = true;           // false: a min per group as well as a scale
  int group_size = 128;            // 32, 64, 128, or 0 = one group per row (per channel)
  DType scale_type = DType::kF16;  // kF16 or kBF16

  // InvalidArgument naming the field when bits, group_size or scale_type is
  // not one of the values above.
  absl::Status Validate() const;
  // Also checks that a [rows, cols] matrix fits the format: cols a positive
  // multiple of 32 and of the group size, rows positive.
  absl::Status ValidateShape(int64_t rows, int64_t cols) const;

  // "int4-g128-sym-f16", "int8-ch-asym-bf16" (ch = per channel).
  std::string Name() const;
  // Inverse of Name(); InvalidArgument naming the part that does not parse.
  static absl::StatusOr<QuantFormat> Parse(const std::string& name);

  // Values per group for a row of `cols` values.
  int64_t GroupLength(int64_t cols) const { return group_size == 0 ? cols : group_size; }
  // The code that stands for zero in symmetric formats: 2^(bits-1).
  int32_t ZeroCode() const { return 1 << (bits - 1); }
  int32_t MaxCode() const { return (1 << bits) - 1; }

  // Spelled out: nvcc (which compiles this header into the CUDA sources) has
  // no defaulted comparisons.
  bool operator==(const QuantFormat& other) const {
    return bits == other.bits && symmetric == other.symmetric && group_size == other.group_size &&
           scale_type == other.scale_type;
  }
};

// Sizes in bytes of the three arrays of a [rows, cols] matrix.
struct QuantizedMatrixSizes {
  int64_t codes = 0;
  int64_t scales = 0;
  int64_t mins = 0;  // 0 for symmetric formats
  int64_t total() const { return codes + scales + mins; }
};
QuantizedMatrixSizes QuantizedSizes(const QuantFormat& format, int64_t rows, int64_t cols);

// Pointers to the three arrays of one quantized matrix (mins null when symmetric).
struct QuantizedMatrixData {
  const uint8_t* codes = nullptr;
  const uint16_t* scales = nullptr;
  const uint16_t* mins = nullptr;
};

// Scale and min of one group, as stored (rounded to the scale type).
struct QuantGroupParams {
  float scale = 0.0f;
  float min = 0.0f;  // asymmetric only
};

// Round-to-nearest parameters for one group of `n` values: symmetric takes
// the value of largest magnitude v and s = v / -2^(bits-1), so that v maps to
// code 0 exactly and the full code range is used (as GGUF's Q4_0 does);
// asymmetric takes s = (max - min) / (2^bits - 1) and m = min. Both are
// rounded to the scale type before they are returned.
QuantGroupParams ChooseGroupParams(const QuantFormat& format, const float* values, int64_t n);
// The code of one value under `params`: round to nearest, clamped to the range.
uint8_t QuantizeValue(const QuantFormat& format, const QuantGroupParams& params, float value);
// The value a code stands for.
inline float DequantizeValue(const QuantFormat& format, const QuantGroupParams& params,
                             int32_t code) {
  return format.symmetric ? params.scale * static_cast<float>(code - format.ZeroCode())
                          : params.scale * static_cast<float>(code) + params.min;
}

// Writes a matrix into the three arrays (sized by QuantizedSizes) from its
// codes U8 [rows, cols] (row-major, one code per byte) and the parameters of
// every group, params [rows, groups_per_row]. Padding rows are zeroed.
// Quantizers that choose codes themselves (GPTQ) use this.
void PackQuantizedMatrix(const QuantFormat& format, int64_t rows, int64_t cols,
                         const uint8_t* codes, const QuantGroupParams* params, uint8_t* codes_out,
                         uint16_t* scales_out, uint16_t* mins_out);

// Round-to-nearest codes U8 [rows, cols] and params [rows, groups_per_row] of
// W F32 [rows, cols], before packing.
void QuantizeCodesRtn(const QuantFormat& format, const float* w, int64_t rows, int64_t cols,
                      uint8_t* codes, QuantGroupParams* params);

// Round-to-nearest quantization of W F32 [rows, cols] into the three arrays.
void QuantizeMatrixRtn(const QuantFormat& format, const float* w, int64_t rows, int64_t cols,
                       uint8_t* codes_out, uint16_t* scales_out, uint16_t* mins_out);

// The code of row `row`, value `col` (for references and tests).
int32_t ReadCode(const QuantFormat& format, const uint8_t* codes, int64_t cols, int64_t row,
                 int64_t col);
// The parameters of the group holding (row, col).
QuantGroupParams ReadGroupParams(const QuantFormat& format, const QuantizedMatrixData& data,
                                 int64_t cols, int64_t row, int64_t col);
// Row `row` of the matrix as floats, out [cols].
void DequantizeQuantizedRow(const QuantFormat& format, const QuantizedMatrixData& data,
                            int64_t cols, int64_t row, float* out);

}  // namespace herd
