// core/quant_format: names, validation, sizes, the rows16 layout byte by byte,
// and round-to-nearest error bounds for every format.
#include "core/quant_format.h"

#include <cmath>
#include <random>
#include <vector>

#include "core/tensor_view.h"
#include "gtest/gtest.h"

namespace herd {
namespace {

std::vector<QuantFormat> AllFormats() {
  std::vector<QuantFormat> formats;
  for (int bits : {8, 4, 3, 2}) {
    for (bool symmetric : {true, false}) {
      for (int group : {32, 64, 128, 0}) {
        for (DType scale : {DType::kF16, DType::kBF16}) {
          formats.push_back(QuantFormat{bits, symmetric, group, scale});
        }
      }
    }
  }
  return formats;
}

// A quantized matrix with its storage.
struct Packed {
  std::vector<uint8_t> codes;
  std::vector<uint16_t> scales, mins;
  QuantizedMatrixData data() const {
    return {codes.data(), scales.data(), mins.empty() ? nullptr : mins.data()};
  }
};

Packed Allocate(const QuantFormat& f, int64_t rows, int64_t cols) {
  const QuantizedMatrixSizes sizes = QuantizedSizes(f, rows, cols);
  Packed p;
  p.codes.assign(sizes.codes, 0xEE);  // poison: packing must write every byte
  p.scales.assign(sizes.scales / 2, 0xEEEE);
  p.mins.assign(sizes.mins / 2, 0xEEEE);
  return p;
}

TEST(QuantFormatTest, NamesRoundTripAndBadNamesSayWhy) {
  for (const QuantFormat& f : AllFormats()) {
    const absl::StatusOr<QuantFormat> parsed = QuantFormat::Parse(f.Name());
    ASSERT_TRUE(parsed.ok()) << f.Name() << ": " << parsed.status();
    EXPECT_EQ(*parsed, f) << f.Name();
  }
  EXPECT_EQ((QuantFormat{4, true, 128, DType::kF16}).Name(), "int4-g128-sym-f16");
  EXPECT_EQ((QuantFormat{8, false, 0, DType::kBF16}).Name(), "int8-ch-asym-bf16");
  for (const char* bad : {"", "int4", "int5-g32-sym-f16", "int4-g48-sym-f16", "int4-g32-sim-f16",
                          "int4-g32-sym-f32", "q4-g32-sym-f16", "int4-32-sym-f16"}) {
    const absl::StatusOr<QuantFormat> parsed = QuantFormat::Parse(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("quantization format"), std::string::npos);
  }
}

TEST(QuantFormatTest, ValidateNamesTheFieldAndTheShape) {
  const QuantFormat bad_bits{5, true, 32, DType::kF16};
  const QuantFormat bad_group{4, true, 48, DType::kF16};
  const QuantFormat bad_scale{4, true, 32, DType::kF32};
  EXPECT_NE(bad_bits.Validate().message().find("bits"), std::string::npos);
  EXPECT_NE(bad_group.Validate().message().find("group size"), std::string::npos);
  EXPECT_NE(bad_scale.Validate().message().find("scale type"), std::string::npos);
  const QuantFormat g128{4, true, 128, DType::kF16};
  EXPECT_TRUE(g128.ValidateShape(1, 256).ok());
  EXPECT_FALSE(g128.ValidateShape(1, 96).ok());  // not a multiple of the group
  EXPECT_FALSE(g128.ValidateShape(0, 128).ok());
  const QuantFormat per_channel{4, true, 0, DType::kF16};
  EXPECT_TRUE(per_channel.ValidateShape(3, 96).ok());
  EXPECT_FALSE(per_channel.ValidateShape(3, 100).ok());  // not a multiple of 32
}

TEST(QuantFormatTest, SizesCountTilesGroupsAndMins) {
  // 40 rows = 3 tiles of 16; 256 values = 8 blocks; group 64 -> 4 groups.
  const QuantizedMatrixSizes s = QuantizedSizes(QuantFormat{3, false, 64, DType::kF16}, 40, 256);
  EXPECT_EQ(s.codes, 3 * 8 * 64 * 3);
  EXPECT_EQ(s.scales, 3 * 4 * 16 * 2);
  EXPECT_EQ(s.mins, s.scales);
  EXPECT_EQ(s.total(), s.codes + 2 * s.scales);
  EXPECT_EQ(QuantizedSizes(QuantFormat{8, true, 0, DType::kBF16}, 16, 64).mins, 0);
  // Bits per value of a large int4 g128 matrix: 4 + 16 / 128.
  const QuantizedMatrixSizes big =
      QuantizedSizes(QuantFormat{4, true, 128, DType::kF16}, 1024, 4096);
  EXPECT_DOUBLE_EQ(8.0 * big.total() / (1024.0 * 4096.0), 4.125);
}

// The layout of core/quant_format.h, checked at hand-computed byte positions.
TEST(QuantFormatTest, Rows16LayoutPutsEachCodeWhereTheHeaderSays) {
  const int64_t rows = 20, cols = 64;
  // Row 17, value 37: tile 1, block 1, value 5 of the block -> step 1, i = 1;
  // byte 4 * (17 % 16) + 1 = 5 of each slice of block (1 * 2 + 1) = 3.
  for (int bits : {8, 4, 3, 2}) {
    const QuantFormat f{bits, true, 32, DType::kF16};
    std::vector<uint8_t> codes(rows * cols, 0);
    const uint8_t code = static_cast<uint8_t>(f.MaxCode() == 255 ? 0xA5 : f.MaxCode());
    codes[17 * cols + 37] = code;
    std::vector<QuantGroupParams> params(rows * 2, QuantGroupParams{1.0f, 0.0f});
    Packed p = Allocate(f, rows, cols);
    PackQuantizedMatrix(f, rows, cols, codes.data(), params.data(), p.codes.data(), p.scales.data(),
                        nullptr);
    const int64_t block = 3 * 64 * bits;
    std::vector<uint8_t> expected(p.codes.size(), 0);
    switch (bits) {
      case 8:
        expected[block + 1 * 64 + 5] = code;  // slice = step
        break;
      case 4:
        expected[block + 1 * 64 + 5] = code;  // slice 1, low nibble
        break;
      case 2:
        expected[block + 1 * 64 + 5] = code;  // slice 1, bits 0-1
        break;
      case 3:
        expected[block + 1 * 64 + 5] = code & 3;  // low bits: slice 1, bits 0-1
        expected[block + 2 * 64 + 5] = 1 << 1;    // bit 2 of step 1 in slice 2
        break;
    }
    EXPECT_EQ(p.codes, expected) << "bits " << bits;
    EXPECT_EQ(ReadCode(f, p.codes.data(), cols, 17, 37), code);
  }
  // A step past the first slice group: value 29 of row 2 is step 7, i = 1.
  const QuantFormat int4{4, true, 32, DType::kF16};
  std::vector<uint8_t> codes(16 * 32, 0);
  codes[2 * 32 + 29] = 0xB;
  std::vector<QuantGroupParams> params(16, QuantGroupParams{1.0f, 0.0f});
  Packed p = Allocate(int4, 16, 32);
  PackQuantizedMatrix(int4, 16, 32, codes.data(), params.data(), p.codes.data(), p.scales.data(),
                      nullptr);
  EXPECT_EQ(p.codes[3 * 64 + 9], 0xB0);  // slice 7 % 4 = 3, high nibble, byte 4 * 2 + 1
}

TEST(QuantFormatTest, ScalesAreTiledSixteenRowsPerGroup) {
  const QuantFormat f{8, false, 32, DType::kBF16};
  const int64_t rows = 18, cols = 64;  // 2 tiles, 2 groups per row
  std::vector<uint8_t> codes(rows * cols, 0);
  std::vector<QuantGroupParams> params(rows * 2);
  for (int64_t r = 0; r < rows; ++r) {
    for (int g = 0; g < 2; ++g) params[r * 2 + g] = {static_cast<float>(r * 2 + g), -1.0f * r};
  }
  Packed p = Allocate(f, rows, cols);
  PackQuantizedMatrix(f, rows, cols, codes.data(), params.data(), p.codes.data(), p.scales.data(),
                      p.mins.data());
  // Row 17, group 1 -> tile 1, group 1, lane 1: index (1 * 2 + 1) * 16 + 1.
  EXPECT_EQ(BF16ToF32(p.scales[3 * 16 + 1]), 35.0f);
  EXPECT_EQ(BF16ToF32(p.mins[3 * 16 + 1]), -17.0f);
  EXPECT_EQ(p.scales[3 * 16 + 2], 0);  // padding rows are zero
  const QuantGroupParams read = ReadGroupParams(f, p.data(), cols, 17, 40);
  EXPECT_EQ(read.scale, 35.0f);
  EXPECT_EQ(read.min, -17.0f);
}

TEST(QuantFormatTest, RoundToNearestErrorStaysWithinOneStepForEveryFormat) {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  const int64_t rows = 19, cols = 256;
  std::vector<float> w(rows * cols);
  for (float& v : w) v = dist(rng);
  w[3] = 9.0f;  // an outlier: its group gets a large scale
  for (const QuantFormat& f : AllFormats()) {
    SCOPED_TRACE(f.Name());
    Packed p = Allocate(f, rows, cols);
    QuantizeMatrixRtn(f, w.data(), rows, cols, p.codes.data(), p.scales.data(),
                      f.symmetric ? nullptr : p.mins.data());
    std::vector<float> row(cols);
    for (int64_t r = 0; r < rows; ++r) {
      DequantizeQuantizedRow(f, p.data(), cols, r, row.data());
      for (int64_t c = 0; c < cols; ++c) {
        const QuantGroupParams params = ReadGroupParams(f, p.data(), cols, r, c);
        const float original = w[r * cols + c];
        // Half a step, plus what rounding the scale and min to 16 bits costs
        // at the far end of the code range (the symmetric formats clamp the
        // one side that has a code fewer).
        const float step = std::fabs(params.scale);
        const float slack = (f.scale_type == DType::kBF16 ? 1.0f / 128 : 1.0f / 1024) *
                            (std::fabs(original) + std::fabs(params.min) + step);
        const float bound = (f.symmetric ? 1.0f : 0.5f) * step + slack + 1e-6f;
        ASSERT_LE(std::fabs(row[c] - original), bound) << "row " << r << " col " << c;
      }
    }
  }
}

TEST(QuantFormatTest, QuantizedViewReportsItsBytesAndFormat) {
  const QuantFormat f{2, false, 64, DType::kF16};
  Packed p = Allocate(f, 32, 128);
  const TensorView v = TensorView::Quantized(f, 32, 128, p.data());
  EXPECT_EQ(v.dtype(), DType::kQuant);
  EXPECT_EQ(v.num_bytes(), QuantizedSizes(f, 32, 128).total());
  EXPECT_EQ(v.DebugString(), "int2-g64-asym-f16 [32, 128]");
  EXPECT_EQ(v.quantized().mins, p.mins.data());
}

}  // namespace
}  // namespace herd
