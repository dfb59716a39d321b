// Element and block types of tensors, and conversions between float formats.
//
// Quantized types store values in blocks along a row (the fastest-varying
// dimension): a row of `n` values takes `n / BlockSize(t)` blocks of
// `BlockBytes(t)` bytes. Block layouts follow ggml's so that GGUF files map
// directly:
//   Q8_0 (34 B / 32 values): f16 d; int8 q[32];       value i = d * q[i]
//   Q4_0 (18 B / 32 values): f16 d; uint8 qs[16];     value j = d * ((qs[j] & 15) - 8),
//                                                     value j+16 = d * ((qs[j] >> 4) - 8)
//   Q4_1 (20 B / 32 values): f16 d; f16 m; uint8 qs[16]; value = d * nibble + m (same nibble order)
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"

namespace herd {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kI32,
  // Herd's own quantized matrices (core/quant_format.h): the format, codes,
  // scales and mins are in the TensorView; rows are not addressable one by one.
  kQuant,
};

// Human-readable name: "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "I32", "QUANT".
const char* DTypeName(DType type);
// Inverse of DTypeName (case-insensitive) for every type but kQuant, whose
// matrices are named by their QuantFormat; InvalidArgument for unknown names.
absl::StatusOr<DType> ParseDType(const std::string& name);

// Values per block (1 for plain types).
int64_t BlockSize(DType type);
// Bytes per block (element size for plain types). Not defined for kQuant
// (its sizes come from QuantizedSizes); aborts if asked.
int64_t BlockBytes(DType type);
bool IsQuantized(DType type);
// Bytes of a row of `num_values` values; num_values must be a multiple of BlockSize.
inline int64_t RowBytes(DType type, int64_t num_values) {
  return num_values / BlockSize(type) * BlockBytes(type);
}

// Block structs, byte-compatible with ggml.
struct BlockQ8_0 {
  uint16_t d;  // f16 scale
  int8_t qs[32];
};
struct BlockQ4_0 {
  uint16_t d;  // f16 scale
  uint8_t qs[16];
};
struct BlockQ4_1 {
  uint16_t d;  // f16 scale
  uint16_t m;  // f16 minimum
  uint8_t qs[16];
};
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ4_1) == 20);

// IEEE half <-> float, round to nearest even; NaN and Inf preserved.
float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);
// bfloat16 <-> float; F32ToBF16 rounds to nearest even.
inline float BF16ToF32(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
uint16_t F32ToBF16(float f);

// Converts one row of `num_values` values of `type` (any type but I32 and
// kQuant) to float.
void DequantizeRow(DType type, const void* src, float* dst, int64_t num_values);

// Stores one row of floats as `type` (any type but I32 and kQuant) with ggml's reference
// rounding, so files Herd writes hold what llama.cpp's quantizer would write.
// num_values must be a multiple of BlockSize(type); dst holds RowBytes bytes.
void QuantizeRow(DType type, const float* src, void* dst, int64_t num_values);

}  // namespace herd
