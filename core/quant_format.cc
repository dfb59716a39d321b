#include "core/quant_format.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/status.h"

namespace herd {
namespace {

uint16_t EncodeScale(DType type, float value) {
  return type == DType::kBF16 ? F32ToBF16(value) : F32ToF16(value);
}

float DecodeScale(DType type, uint16_t bits) {
  return type == DType::kBF16 ? BF16ToF32(bits) : F16ToF32(bits);
}

// Where value `col` of row `row` lives: the 64-byte slices of its block and
// the byte of the row within a slice.
struct CodeLocation {
  int64_t block_offset;  // bytes from the start of the codes to the block's payload
  int64_t byte;          // 4 * (row % 16) + value % 4
  int step;              // (value % 32) / 4
};

CodeLocation Locate(const QuantFormat& format, int64_t cols, int64_t row, int64_t col) {
  const int64_t blocks_per_row = cols / kQuantBlockValues;
  const int64_t tile = row / kQuantTileRows;
  const int64_t block = col / kQuantBlockValues;
  const int64_t in_block = col % kQuantBlockValues;
  return CodeLocation{(tile * blocks_per_row + block) * 64 * format.bits,
                      4 * (row % kQuantTileRows) + in_block % 4, static_cast<int>(in_block / 4)};
}

// The slice and bit shift of a step for the power-of-two widths (2, 4, 8).
int SliceOf(int width, int step) { return step % width; }
int ShiftOf(int width, int step) { return width * (step / width); }

}  // namespace

absl::Status QuantFormat::Validate() const {
  if (bits != 8 && bits != 4 && bits != 3 && bits != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantization bits must be 8, 4, 3 or 2, got ", bits));
  }
  if (group_size != 0 && group_size != 32 && group_size != 64 && group_size != 128) {
    return absl::InvalidArgumentError(absl::StrCat(
        "quantization group size must be 32, 64, 128 or 0 (per channel), got ", group_size));
  }
  if (scale_type != DType::kF16 && scale_type != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantization scale type must be F16 or BF16, got ", DTypeName(scale_type)));
  }
  return absl::OkStatus();
}

absl::Status QuantFormat::ValidateShape(int64_t rows, int64_t cols) const {
  HERD_RETURN_IF_ERROR(Validate());
  if (rows <= 0 || cols <= 0 || cols % kQuantBlockValues != 0 || cols % GroupLength(cols) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a [", rows, ", ", cols, "] matrix does not fit ", Name(),
        ": rows must be positive and the row length a positive multiple of 32 and of the group "
        "size"));
  }
  return absl::OkStatus();
}

std::string QuantFormat::Name() const {
  return absl::StrCat("int", bits, "-", group_size == 0 ? "ch" : absl::StrCat("g", group_size), "-",
                      symmetric ? "sym" : "asym", "-", scale_type == DType::kBF16 ? "bf16" : "f16");
}

absl::StatusOr<QuantFormat> QuantFormat::Parse(const std::string& name) {
  const std::vector<std::string> parts = absl::StrSplit(name, '-');
  const auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("quantization format '", name, "': ", why,
                                                   " (expected e.g. int4-g128-sym-f16)"));
  };
  if (parts.size() != 4) return bad("expected four parts separated by '-'");
  QuantFormat f;
  if (parts[0].rfind("int", 0) != 0 || !absl::SimpleAtoi(parts[0].substr(3), &f.bits)) {
    return bad(absl::StrCat("bad bits '", parts[0], "'"));
  }
  if (parts[1] == "ch") {
    f.group_size = 0;
  } else if (parts[1].empty() || parts[1][0] != 'g' ||
             !absl::SimpleAtoi(parts[1].substr(1), &f.group_size)) {
    return bad(absl::StrCat("bad group '", parts[1], "'"));
  }
  if (parts[2] != "sym" && parts[2] != "asym") return bad("symmetry must be sym or asym");
  f.symmetric = parts[2] == "sym";
  if (parts[3] != "f16" && parts[3] != "bf16") return bad("scale type must be f16 or bf16");
  f.scale_type = parts[3] == "bf16" ? DType::kBF16 : DType::kF16;
  if (absl::Status s = f.Validate(); !s.ok()) return bad(std::string(s.message()));
  return f;
}

QuantizedMatrixSizes QuantizedSizes(const QuantFormat& format, int64_t rows, int64_t cols) {
  const int64_t tiles = (rows + kQuantTileRows - 1) / kQuantTileRows;
  const int64_t groups = cols / format.GroupLength(cols);
  QuantizedMatrixSizes sizes;
  sizes.codes = tiles * (cols / kQuantBlockValues) * 64 * format.bits;
  sizes.scales = tiles * groups * kQuantTileRows * 2;
  sizes.mins = format.symmetric ? 0 : sizes.scales;
  return sizes;
}

QuantGroupParams ChooseGroupParams(const QuantFormat& format, const float* values, int64_t n) {
  QuantGroupParams p;
  if (format.symmetric) {
    float extreme = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
      if (std::fabs(values[i]) > std::fabs(extreme)) extreme = values[i];
    }
    const float scale = extreme / -static_cast<float>(format.ZeroCode());
    p.scale = DecodeScale(format.scale_type, EncodeScale(format.scale_type, scale));
  } else {
    float lo = values[0], hi = values[0];
    for (int64_t i = 1; i < n; ++i) {
      lo = std::min(lo, values[i]);
      hi = std::max(hi, values[i]);
    }
    const float scale = (hi - lo) / static_cast<float>(format.MaxCode());
    p.scale = DecodeScale(format.scale_type, EncodeScale(format.scale_type, scale));
    p.min = DecodeScale(format.scale_type, EncodeScale(format.scale_type, lo));
  }
  return p;
}

uint8_t QuantizeValue(const QuantFormat& format, const QuantGroupParams& params, float value) {
  const float offset = format.symmetric ? static_cast<float>(format.ZeroCode()) : 0.0f;
  const float base = format.symmetric ? 0.0f : params.min;
  float code =
      params.scale != 0.0f ? std::nearbyint((value - base) / params.scale) + offset : offset;
  if (!std::isfinite(code)) code = offset;
  return static_cast<uint8_t>(std::clamp(code, 0.0f, static_cast<float>(format.MaxCode())));
}

void PackQuantizedMatrix(const QuantFormat& format, int64_t rows, int64_t cols,
                         const uint8_t* codes, const QuantGroupParams* params, uint8_t* codes_out,
                         uint16_t* scales_out, uint16_t* mins_out) {
  const QuantizedMatrixSizes sizes = QuantizedSizes(format, rows, cols);
  std::memset(codes_out, 0, sizes.codes);
  std::memset(scales_out, 0, sizes.scales);
  if (mins_out != nullptr) std::memset(mins_out, 0, sizes.mins);
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t col = 0; col < cols; ++col) {
      const CodeLocation at = Locate(format, cols, row, col);
      uint8_t* block = codes_out + at.block_offset;
      const uint32_t u = codes[row * cols + col] & static_cast<uint32_t>(format.MaxCode());
      if (format.bits == 3) {
        block[SliceOf(2, at.step) * 64 + at.byte] |=
            static_cast<uint8_t>((u & 3) << ShiftOf(2, at.step));
        block[2 * 64 + at.byte] |= static_cast<uint8_t>((u >> 2) << at.step);
      } else {
        block[SliceOf(format.bits, at.step) * 64 + at.byte] |=
            static_cast<uint8_t>(u << ShiftOf(format.bits, at.step));
      }
    }
  }
  const int64_t group_length = format.GroupLength(cols);
  const int64_t groups = cols / group_length;
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t at =
          ((row / kQuantTileRows) * groups + g) * kQuantTileRows + row % kQuantTileRows;
      const QuantGroupParams& p = params[row * groups + g];
      scales_out[at] = EncodeScale(format.scale_type, p.scale);
      if (mins_out != nullptr) mins_out[at] = EncodeScale(format.scale_type, p.min);
    }
  }
}

void QuantizeCodesRtn(const QuantFormat& format, const float* w, int64_t rows, int64_t cols,
                      uint8_t* codes, QuantGroupParams* params) {
  const int64_t group_length = format.GroupLength(cols);
  const int64_t groups = cols / group_length;
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* values = w + row * cols + g * group_length;
      const QuantGroupParams p = ChooseGroupParams(format, values, group_length);
      params[row * groups + g] = p;
      for (int64_t i = 0; i < group_length; ++i) {
        codes[row * cols + g * group_length + i] = QuantizeValue(format, p, values[i]);
      }
    }
  }
}

void QuantizeMatrixRtn(const QuantFormat& format, const float* w, int64_t rows, int64_t cols,
                       uint8_t* codes_out, uint16_t* scales_out, uint16_t* mins_out) {
  std::vector<uint8_t> codes(rows * cols);
  std::vector<QuantGroupParams> params(rows * (cols / format.GroupLength(cols)));
  QuantizeCodesRtn(format, w, rows, cols, codes.data(), params.data());
  PackQuantizedMatrix(format, rows, cols, codes.data(), params.data(), codes_out, scales_out,
                      mins_out);
}

int32_t ReadCode(const QuantFormat& format, const uint8_t* codes, int64_t cols, int64_t row,
                 int64_t col) {
  const CodeLocation at = Locate(format, cols, row, col);
  const uint8_t* block = codes + at.block_offset;
  if (format.bits == 3) {
    const int32_t low = (block[SliceOf(2, at.step) * 64 + at.byte] >> ShiftOf(2, at.step)) & 3;
    const int32_t high = (block[2 * 64 + at.byte] >> at.step) & 1;
    return low | (high << 2);
  }
  return (block[SliceOf(format.bits, at.step) * 64 + at.byte] >> ShiftOf(format.bits, at.step)) &
         format.MaxCode();
}

QuantGroupParams ReadGroupParams(const QuantFormat& format, const QuantizedMatrixData& data,
                                 int64_t cols, int64_t row, int64_t col) {
  const int64_t group_length = format.GroupLength(cols);
  const int64_t groups = cols / group_length;
  const int64_t at = ((row / kQuantTileRows) * groups + col / group_length) * kQuantTileRows +
                     row % kQuantTileRows;
  QuantGroupParams p;
  p.scale = DecodeScale(format.scale_type, data.scales[at]);
  if (!format.symmetric) p.min = DecodeScale(format.scale_type, data.mins[at]);
  return p;
}

void DequantizeQuantizedRow(const QuantFormat& format, const QuantizedMatrixData& data,
                            int64_t cols, int64_t row, float* out) {
  const int64_t group_length = format.GroupLength(cols);
  for (int64_t col = 0; col < cols; col += group_length) {
    const QuantGroupParams p = ReadGroupParams(format, data, cols, row, col);
    for (int64_t i = col; i < col + group_length; ++i) {
      out[i] = DequantizeValue(format, p, ReadCode(format, data.codes, cols, row, i));
    }
  }
}

}  // namespace herd
