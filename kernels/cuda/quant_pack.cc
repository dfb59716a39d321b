// Host-side repacking of weight matrices into the tensor-core layout of
// grouped_gemm.h.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/packed_layout.h"

namespace herd::cuda {
namespace {

PackedPosition Locate(const PackedShape& shape, int64_t row, int64_t col) {
  return LocatePacked(shape.padded_cols(), shape.format.bits, row, col);
}

int64_t ScaleIndex(const PackedShape& shape, int64_t row, int64_t col) {
  return PackedScaleIndex(shape.padded_cols(), shape.format.group_size, row, col);
}

void Store(const PackedShape& shape, int64_t row, int64_t col, int q, uint8_t* qweight) {
  const PackedPosition pos = Locate(shape, row, col);
  if (shape.format.bits == 4) {
    const auto nibble = static_cast<uint8_t>(q + 8);
    qweight[pos.byte] =
        static_cast<uint8_t>((qweight[pos.byte] & ~(0xF << pos.shift)) | (nibble << pos.shift));
  } else {
    qweight[pos.byte] = static_cast<uint8_t>(static_cast<int8_t>(q));
  }
}

// Quantizes one group of float values symmetric to `bits`; returns the scale.
float QuantizeGroup(const float* x, int64_t n, int bits, int* q) {
  if (bits == 4) {
    float amax = 0.0f;
    float max = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      if (std::fabs(x[i]) > amax) {
        amax = std::fabs(x[i]);
        max = x[i];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      q[i] = std::clamp(static_cast<int>(std::lround(x[i] * id)), -8, 7);
    }
    return d;
  }
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    q[i] = std::clamp(static_cast<int>(std::lround(x[i] * id)), -127, 127);
  }
  return d;
}

}  // namespace

int64_t PackedShape::padded_cols() const {
  const int64_t unit = std::max<int64_t>(64, format.group_size);
  return (cols + unit - 1) / unit * unit;
}

absl::Status ValidatePackedShape(const PackedShape& shape) {
  if (shape.format.bits != 4 && shape.format.bits != 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantized weights have 4 or 8 bits, not ", shape.format.bits));
  }
  const int g = shape.format.group_size;
  if (g != 32 && g != 64 && g != 128) {
    return absl::InvalidArgumentError(absl::StrCat("group size must be 32, 64 or 128, not ", g));
  }
  if (shape.rows <= 0 || shape.cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight shape [", shape.rows, ", ", shape.cols, "] is empty"));
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantFormat> NativeFormat(DType dtype) {
  switch (dtype) {
    case DType::kQ4_0:
      return QuantFormat{4, 32};
    case DType::kQ8_0:
      return QuantFormat{8, 32};
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(DTypeName(dtype), " has no native GPU format (Q4_0 and Q8_0 do)"));
  }
}

absl::Status PackWeight(const TensorView& weight, const PackedShape& shape, uint8_t* qweight,
                        uint16_t* scales) {
  HERD_RETURN_IF_ERROR(ValidatePackedShape(shape));
  if (weight.rank() != 2 || weight.dim(0) != shape.rows || weight.dim(1) != shape.cols) {
    return absl::InvalidArgumentError(absl::StrCat("weight ", weight.DebugString(),
                                                   " does not match the packed shape [", shape.rows,
                                                   ", ", shape.cols, "]"));
  }
  const DType dtype = weight.dtype();
  const bool native = dtype == DType::kQ4_0 || dtype == DType::kQ8_0;
  if (native) {
    HERD_ASSIGN_OR_RETURN(const QuantFormat format, NativeFormat(dtype));
    if (format.bits != shape.format.bits || format.group_size != shape.format.group_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          DTypeName(dtype), " weights pack to int", format.bits, " with groups of ",
          format.group_size, ", not int", shape.format.bits, " / ", shape.format.group_size));
    }
  } else if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot pack ", DTypeName(dtype), " weights for the GPU"));
  }
  // Padding is zero weights with zero scales.
  std::memset(qweight, 0, shape.weight_bytes());
  std::memset(scales, 0, shape.scale_bytes());
  if (shape.format.bits == 4) {
    // A zero int4 is the nibble 8, not 0.
    for (int64_t r = 0; r < shape.padded_rows(); ++r) {
      for (int64_t c = 0; c < shape.padded_cols(); ++c) Store(shape, r, c, 0, qweight);
    }
  }
  const int g = shape.format.group_size;
  std::vector<float> row(shape.cols);
  std::vector<int> q(g);
  for (int64_t r = 0; r < shape.rows; ++r) {
    const uint8_t* src = weight.row(r);
    for (int64_t c0 = 0; c0 < shape.cols; c0 += g) {
      const int64_t n = std::min<int64_t>(g, shape.cols - c0);
      uint16_t scale = 0;
      if (dtype == DType::kQ4_0) {
        const auto& block = reinterpret_cast<const BlockQ4_0*>(src)[c0 / 32];
        for (int j = 0; j < 16; ++j) {
          q[j] = (block.qs[j] & 15) - 8;
          q[j + 16] = (block.qs[j] >> 4) - 8;
        }
        scale = block.d;
      } else if (dtype == DType::kQ8_0) {
        const auto& block = reinterpret_cast<const BlockQ8_0*>(src)[c0 / 32];
        for (int j = 0; j < 32; ++j) q[j] = block.qs[j];
        scale = block.d;
      } else {
        if (c0 == 0) DequantizeRow(dtype, src, row.data(), shape.cols);
        scale = F32ToF16(QuantizeGroup(row.data() + c0, n, shape.format.bits, q.data()));
      }
      for (int64_t i = 0; i < n; ++i) Store(shape, r, c0 + i, q[i], qweight);
      scales[ScaleIndex(shape, r, c0)] = scale;
    }
  }
  return absl::OkStatus();
}

std::vector<float> UnpackWeight(const PackedShape& shape, const uint8_t* qweight,
                                const uint16_t* scales) {
  std::vector<float> out(shape.rows * shape.cols);
  for (int64_t r = 0; r < shape.rows; ++r) {
    for (int64_t c = 0; c < shape.cols; ++c) {
      out[r * shape.cols + c] =
          static_cast<float>(LoadPacked(shape.padded_cols(), shape.format.bits, r, c, qweight)) *
          F16ToF32(scales[ScaleIndex(shape, r, c)]);
    }
  }
  return out;
}

}  // namespace herd::cuda
