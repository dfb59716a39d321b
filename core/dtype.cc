#include "core/dtype.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd {

const char* DTypeName(DType type) {
  switch (type) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kQ8_0:
      return "Q8_0";
    case DType::kQ4_0:
      return "Q4_0";
    case DType::kQ4_1:
      return "Q4_1";
    case DType::kI32:
      return "I32";
    case DType::kQuant:
      return "QUANT";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(const std::string& name) {
  const std::string upper = absl::AsciiStrToUpper(name);
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1,
                  DType::kI32}) {
    if (upper == DTypeName(t)) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", name, "' (expected F32, F16, BF16, Q8_0, Q4_0, Q4_1, I32)"));
}

int64_t BlockSize(DType type) {
  switch (type) {
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQuant:
      return 32;
    default:
      return 1;
  }
}

int64_t BlockBytes(DType type) {
  switch (type) {
    case DType::kF32:
      return 4;
    case DType::kF16:
      return 2;
    case DType::kBF16:
      return 2;
    case DType::kQ8_0:
      return sizeof(BlockQ8_0);
    case DType::kQ4_0:
      return sizeof(BlockQ4_0);
    case DType::kQ4_1:
      return sizeof(BlockQ4_1);
    case DType::kI32:
      return 4;
    case DType::kQuant:
      break;
  }
  HERD_CHECK(type != DType::kQuant);  // sizes come from QuantizedSizes
  return 0;
}

bool IsQuantized(DType type) { return BlockSize(type) > 1; }

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1F;
  uint32_t mantissa = h & 0x3FF;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mantissa <<= 1;
      } while ((mantissa & 0x400) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mantissa & 0x3FF) << 13);
    }
  } else if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits >= 0x7F800000u) {  // Inf or NaN
    return sign | 0x7C00 | (abs_bits > 0x7F800000u ? 0x200 : 0);
  }
  if (abs_bits >= 0x477FF000u) return sign | 0x7C00;  // rounds to >= 65520: overflow to Inf
  if (abs_bits < 0x38800000u) {                       // result is subnormal or zero
    if (abs_bits < 0x33000000u) return sign;          // below half the smallest subnormal
    const uint32_t exponent = abs_bits >> 23;
    const uint32_t mantissa = (abs_bits & 0x7FFFFF) | 0x800000;
    const uint32_t shift = 126 - exponent;  // 14 + (113 - exponent)
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1))) ++half;
    return sign | static_cast<uint16_t>(half);
  }
  uint32_t half = ((abs_bits >> 13) - (112u << 10));
  const uint32_t rest = abs_bits & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) ++half;
  return sign | static_cast<uint16_t>(half);
}

uint16_t F32ToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

void DequantizeRow(DType type, const void* src, float* dst, int64_t num_values) {
  switch (type) {
    case DType::kF32:
      std::memcpy(dst, src, num_values * sizeof(float));
      return;
    case DType::kF16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < num_values; ++i) dst[i] = F16ToF32(h[i]);
      return;
    }
    case DType::kBF16: {
      const auto* b = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < num_values; ++i) dst[i] = BF16ToF32(b[i]);
      return;
    }
    case DType::kQ8_0: {
      const auto* blocks = static_cast<const BlockQ8_0*>(src);
      for (int64_t b = 0; b < num_values / 32; ++b) {
        const float d = F16ToF32(blocks[b].d);
        for (int i = 0; i < 32; ++i) dst[b * 32 + i] = d * blocks[b].qs[i];
      }
      return;
    }
    case DType::kQ4_0: {
      const auto* blocks = static_cast<const BlockQ4_0*>(src);
      for (int64_t b = 0; b < num_values / 32; ++b) {
        const float d = F16ToF32(blocks[b].d);
        for (int j = 0; j < 16; ++j) {
          dst[b * 32 + j] = d * ((blocks[b].qs[j] & 0x0F) - 8);
          dst[b * 32 + j + 16] = d * ((blocks[b].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case DType::kQ4_1: {
      const auto* blocks = static_cast<const BlockQ4_1*>(src);
      for (int64_t b = 0; b < num_values / 32; ++b) {
        const float d = F16ToF32(blocks[b].d);
        const float m = F16ToF32(blocks[b].m);
        for (int j = 0; j < 16; ++j) {
          dst[b * 32 + j] = d * (blocks[b].qs[j] & 0x0F) + m;
          dst[b * 32 + j + 16] = d * (blocks[b].qs[j] >> 4) + m;
        }
      }
      return;
    }
    case DType::kI32:
    case DType::kQuant:
      HERD_CHECK(false && "DequantizeRow converts neither I32 nor kQuant");
  }
}

void QuantizeRow(DType type, const float* src, void* dst, int64_t num_values) {
  switch (type) {
    case DType::kF32:
      std::memcpy(dst, src, num_values * sizeof(float));
      return;
    case DType::kF16: {
      auto* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < num_values; ++i) h[i] = F32ToF16(src[i]);
      return;
    }
    case DType::kBF16: {
      auto* b = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < num_values; ++i) b[i] = F32ToBF16(src[i]);
      return;
    }
    case DType::kQ8_0: {
      auto* blocks = static_cast<BlockQ8_0*>(dst);
      for (int64_t b = 0; b < num_values / 32; ++b) {
        const float* x = src + b * 32;
        float amax = 0.0f;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        blocks[b].d = F32ToF16(d);
        for (int i = 0; i < 32; ++i) blocks[b].qs[i] = static_cast<int8_t>(std::roundf(x[i] * id));
      }
      return;
    }
    case DType::kQ4_0: {
      auto* blocks = static_cast<BlockQ4_0*>(dst);
      for (int64_t b = 0; b < num_values / 32; ++b) {
        const float* x = src + b * 32;
        float amax = 0.0f;
        float max = 0.0f;  // the value of largest magnitude, with its sign
        for (int i = 0; i < 32; ++i) {
          if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
          }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        blocks[b].d = F32ToF16(d);
        for (int j = 0; j < 16; ++j) {
          const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
          const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 8.5f)));
          blocks[b].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
        }
      }
      return;
    }
    case DType::kQ4_1: {
      auto* blocks = static_cast<BlockQ4_1*>(dst);
      for (int64_t b = 0; b < num_values / 32; ++b) {
        const float* x = src + b * 32;
        float min = x[0];
        float max = x[0];
        for (int i = 1; i < 32; ++i) {
          min = std::min(min, x[i]);
          max = std::max(max, x[i]);
        }
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        blocks[b].d = F32ToF16(d);
        blocks[b].m = F32ToF16(min);
        for (int j = 0; j < 16; ++j) {
          const int lo =
              std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - min) * id + 0.5f)));
          const int hi =
              std::min(15, static_cast<int>(static_cast<int8_t>((x[j + 16] - min) * id + 0.5f)));
          blocks[b].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
        }
      }
      return;
    }
    case DType::kI32:
    case DType::kQuant:
      HERD_CHECK(false && "QuantizeRow converts to neither I32 nor kQuant");
  }
}

}  // namespace herd
