// The grouped W4A16 / W8A16 GEMM, and its dequantize-and-cuBLAS form for
// prefill, against a float64 reference on the same quantized values; the
// host repacking against the stored tensors.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cuda/dequantized_gemm.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/matmul.h"
#include "tests/kernels/cuda/cuda_test_support.h"

namespace herd {
namespace {

using cuda_test::RandomNormal;

// A [rows, cols] tensor of `dtype` holding random values, with its bytes.
struct HostWeight {
  std::vector<uint8_t> bytes;
  TensorView view;
};

HostWeight MakeWeight(DType dtype, int64_t rows, int64_t cols, uint32_t seed) {
  const auto values = RandomNormal(rows * cols, seed);
  HostWeight w;
  w.bytes.resize(rows * RowBytes(dtype, cols));
  for (int64_t r = 0; r < rows; ++r) {
    QuantizeRow(dtype, values.data() + r * cols, w.bytes.data() + r * RowBytes(dtype, cols), cols);
  }
  w.view = TensorView(dtype, {rows, cols}, w.bytes.data());
  return w;
}

struct Packed {
  cuda::PackedShape shape;
  std::vector<uint8_t> qweight;
  std::vector<uint16_t> scales;
};

Packed Pack(const TensorView& weight, cuda::QuantFormat format) {
  Packed p;
  p.shape = {weight.dim(0), weight.dim(1), format};
  p.qweight.resize(p.shape.weight_bytes());
  p.scales.resize(p.shape.scale_bytes() / 2);
  const absl::Status status = cuda::PackWeight(weight, p.shape, p.qweight.data(), p.scales.data());
  EXPECT_TRUE(status.ok()) << status;
  return p;
}

TEST(QuantPackTest, GgufBlocksKeepTheirExactValues) {
  for (DType dtype : {DType::kQ4_0, DType::kQ8_0}) {
    for (auto [rows, cols] :
         std::vector<std::pair<int64_t, int64_t>>{{1, 32}, {17, 96}, {64, 256}}) {
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " " << rows << "x" << cols);
      const HostWeight w = MakeWeight(dtype, rows, cols, 7);
      const Packed p = Pack(w.view, *cuda::NativeFormat(dtype));
      const auto unpacked = cuda::UnpackWeight(p.shape, p.qweight.data(), p.scales.data());
      std::vector<float> row(cols);
      for (int64_t r = 0; r < rows; ++r) {
        DequantizeRow(dtype, w.view.row(r), row.data(), cols);
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_EQ(unpacked[r * cols + c], row[c]) << r << "," << c;
      }
    }
  }
}

TEST(QuantPackTest, FloatWeightsQuantizeWithinAStep) {
  for (int bits : {4, 8}) {
    for (int group : {32, 64, 128}) {
      SCOPED_TRACE(testing::Message() << "int" << bits << " g" << group);
      const int64_t rows = 24;
      const int64_t cols = 200;  // not a multiple of the group: a short last group
      const auto values = RandomNormal(rows * cols, 11);
      const TensorView view(DType::kF32, {rows, cols}, values.data());
      const Packed p = Pack(view, {bits, group});
      const auto unpacked = cuda::UnpackWeight(p.shape, p.qweight.data(), p.scales.data());
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c0 = 0; c0 < cols; c0 += group) {
          float amax = 0.0f;
          for (int64_t c = c0; c < std::min(cols, c0 + group); ++c) {
            amax = std::max(amax, std::fabs(values[r * cols + c]));
          }
          // int4 follows ggml's Q4_0: the scale maps the largest value to -8,
          // so values of the other sign may be clipped at 7 (up to one step).
          const float tolerance = bits == 4 ? amax / 8.0f : 0.51f * amax / 127.0f;
          for (int64_t c = c0; c < std::min(cols, c0 + group); ++c) {
            ASSERT_LE(std::fabs(unpacked[r * cols + c] - values[r * cols + c]), tolerance + 1e-3f)
                << r << "," << c;
          }
        }
      }
    }
  }
}

TEST(QuantPackTest, RejectsBadInput) {
  const HostWeight q4 = MakeWeight(DType::kQ4_0, 16, 64, 1);
  cuda::PackedShape shape{16, 64, {8, 32}};
  std::vector<uint8_t> qweight(shape.weight_bytes());
  std::vector<uint16_t> scales(shape.scale_bytes() / 2);
  EXPECT_EQ(cuda::PackWeight(q4.view, shape, qweight.data(), scales.data()).code(),
            absl::StatusCode::kInvalidArgument);  // Q4_0 cannot become int8
  shape = {16, 32, {4, 32}};
  EXPECT_EQ(cuda::PackWeight(q4.view, shape, qweight.data(), scales.data()).code(),
            absl::StatusCode::kInvalidArgument);  // wrong shape
  shape = {16, 64, {4, 48}};
  EXPECT_EQ(cuda::ValidatePackedShape(shape).code(), absl::StatusCode::kInvalidArgument);
  shape = {16, 64, {3, 32}};
  EXPECT_EQ(cuda::ValidatePackedShape(shape).code(), absl::StatusCode::kInvalidArgument);
  const HostWeight q41 = MakeWeight(DType::kQ4_1, 16, 64, 1);
  EXPECT_FALSE(cuda::NativeFormat(DType::kQ4_1).ok());
}

// Which form of the expert GEMM a check runs.
enum class ExpertGemm {
  kGrouped,      // GroupedGemm: offsets on the device, exact int products scaled in f32
  kDequantized,  // DequantizedGroupedGemm: offsets on the host, weights rounded to bf16
};

class CudaGroupedGemmTest : public cuda_test::CudaTest {
 protected:
  // Runs `gemm` for experts with `rows_per_expert` rows each and checks every
  // output against float64 products of the packed values (rounded to bf16
  // for kDequantized) and bf16(x).
  void Check(DType dtype, cuda::QuantFormat format, int64_t out_features, int64_t in_features,
             const std::vector<int32_t>& rows_per_expert, uint32_t seed,
             ExpertGemm gemm = ExpertGemm::kGrouped) {
    const int64_t num_experts = static_cast<int64_t>(rows_per_expert.size());
    std::vector<Packed> experts;
    for (int64_t e = 0; e < num_experts; ++e) {
      const HostWeight w = MakeWeight(dtype, out_features, in_features, seed + e);
      experts.push_back(Pack(w.view, format));
    }
    const cuda::PackedShape shape = experts[0].shape;
    std::vector<uint8_t> all_q;
    std::vector<uint16_t> all_s;
    for (const Packed& p : experts) {
      all_q.insert(all_q.end(), p.qweight.begin(), p.qweight.end());
      all_s.insert(all_s.end(), p.scales.begin(), p.scales.end());
    }
    std::vector<int32_t> offsets(num_experts + 1, 0);
    std::partial_sum(rows_per_expert.begin(), rows_per_expert.end(), offsets.begin() + 1);
    const int64_t num_rows = offsets.back();
    const auto x = RandomNormal(num_rows * in_features, seed + 100);

    cuda::GroupedWeights weights{Upload(all_q), Upload(all_s), num_experts, shape};
    float* out = Alloc<float>(num_rows * out_features);
    if (gemm == ExpertGemm::kGrouped) {
      const size_t ws_bytes = cuda::GroupedGemmWorkspaceBytes(weights, num_rows);
      const absl::Status status =
          cuda::GroupedGemm(weights, Upload(x), num_rows, Upload(offsets), out,
                            Alloc<uint8_t>(ws_bytes), ws_bytes, nullptr);
      ASSERT_TRUE(status.ok()) << status;
    } else {
      cuda::BlasHandle blas;
      ASSERT_TRUE(cuda::BlasHandle::Create(&blas).ok());
      const size_t scratch_bytes = cuda::DequantizedGroupedGemmScratchBytes(weights);
      const size_t ws_bytes = cuda::DequantizedGroupedGemmWorkspaceBytes(
          weights, *std::max_element(rows_per_expert.begin(), rows_per_expert.end()));
      const absl::Status status = cuda::DequantizedGroupedGemm(
          blas, weights, Upload(x), num_rows, offsets.data(), out, Alloc<uint8_t>(scratch_bytes),
          scratch_bytes, Alloc<uint8_t>(ws_bytes), ws_bytes, nullptr);
      ASSERT_TRUE(status.ok()) << status;
    }
    const auto got = Download(out, num_rows * out_features);

    for (int64_t e = 0; e < num_experts; ++e) {
      auto w = cuda::UnpackWeight(shape, experts[e].qweight.data(), experts[e].scales.data());
      if (gemm == ExpertGemm::kDequantized) {
        for (float& v : w) v = BF16ToF32(F32ToBF16(v));
      }
      for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
        for (int64_t f = 0; f < out_features; ++f) {
          double sum = 0.0;
          double magnitude = 0.0;
          for (int64_t k = 0; k < in_features; ++k) {
            const double xk = BF16ToF32(F32ToBF16(x[r * in_features + k]));
            sum += xk * w[f * in_features + k];
            magnitude += std::fabs(xk * w[f * in_features + k]);
          }
          ASSERT_NEAR(got[r * out_features + f], sum, 1e-5 * magnitude + 1e-6)
              << "expert " << e << " row " << r << " feature " << f;
        }
      }
    }
  }
};

TEST_F(CudaGroupedGemmTest, EveryFormatAndConfiguration) {
  // Row counts that pick each tile configuration (<= 8, 16, 32 and more rows
  // per expert on average), with empty experts and ragged tails.
  const std::vector<std::vector<int32_t>> loads = {
      {1}, {3, 0, 5, 1}, {16, 9, 0, 14}, {30, 0, 33, 25}, {70, 0, 3, 129}};
  for (int bits : {4, 8}) {
    for (int group : {32, 64, 128}) {
      for (const auto& load : loads) {
        SCOPED_TRACE(testing::Message() << "int" << bits << " g" << group << " experts "
                                        << load.size() << " first " << load[0]);
        Check(DType::kF32, {bits, group}, 48, 256, load, 3);
      }
    }
  }
}

TEST_F(CudaGroupedGemmTest, GgufWeightsAndPaddedShapes) {
  Check(DType::kQ4_0, {4, 32}, 40, 96, {5, 2, 0, 9}, 21);  // rows and K padded
  Check(DType::kQ8_0, {8, 32}, 40, 96, {5, 2, 0, 9}, 22);
  Check(DType::kQ4_0, {4, 32}, 1000, 1024, {2, 1, 3}, 23);     // many row tiles, split K
  Check(DType::kQ4_0, {4, 32}, 64, 2816, {40, 1}, 24);         // K of the mid-size model's down
  Check(DType::kF16, {4, 128}, 17, 1000, {1, 0, 0, 300}, 25);  // short last group
}

TEST_F(CudaGroupedGemmTest, WideLayersShareActivationsAcrossRowTiles) {
  // Enough row tiles that each warp takes four (with a ragged last group of
  // tiles: 4117 features are 258 row tiles), at 1-8 and 9-16 rows per expert.
  for (int bits : {4, 8}) {
    SCOPED_TRACE(testing::Message() << "int" << bits);
    Check(DType::kF32, {bits, 32}, 4117, 64, {1, 2, 1, 1, 3, 1, 8, 1}, 41);
    Check(DType::kF32, {bits, 64}, 4117, 128, {9, 12, 16, 10, 11, 9, 13, 14}, 42);
  }
}

TEST_F(CudaGroupedGemmTest, CloseToTheCpuMatmulReference) {
  // The CPU quantizes activations to int8 per block (as llama.cpp); the GPU
  // rounds them to bf16. Both approximate the same product.
  const int64_t out_features = 128;
  const int64_t in_features = 512;
  const int64_t num_rows = 6;
  const HostWeight w = MakeWeight(DType::kQ4_0, out_features, in_features, 31);
  const Packed p = Pack(w.view, {4, 32});
  const auto x = RandomNormal(num_rows * in_features, 32);
  ThreadPool pool(1);
  std::vector<float> expected(num_rows * out_features);
  std::vector<uint8_t> cpu_ws(
      cpu::MatmulReferenceWorkspaceBytes(DType::kQ4_0, num_rows, in_features));
  ASSERT_TRUE(cpu::MatmulReference(w.view, nullptr, x.data(), num_rows, expected.data(),
                                   cpu_ws.data(), cpu_ws.size(), pool)
                  .ok());
  cuda::GroupedWeights weights{Upload(p.qweight), Upload(p.scales), 1, p.shape};
  const size_t ws_bytes = cuda::GroupedGemmWorkspaceBytes(weights, num_rows);
  float* out = Alloc<float>(num_rows * out_features);
  ASSERT_TRUE(cuda::GroupedGemm(weights, Upload(x), num_rows,
                                Upload(std::vector<int32_t>{0, static_cast<int32_t>(num_rows)}),
                                out, Alloc<uint8_t>(ws_bytes), ws_bytes, nullptr)
                  .ok());
  const auto got = Download(out, num_rows * out_features);
  double err = 0.0;
  double ref = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    err += (got[i] - expected[i]) * (got[i] - expected[i]);
    ref += expected[i] * expected[i];
  }
  EXPECT_LT(std::sqrt(err / ref), 1e-2);
}

// The prefill form: every format, and shapes that pad rows and K.
TEST_F(CudaGroupedGemmTest, DequantizedFormMatchesItsBf16Weights) {
  for (int bits : {4, 8}) {
    for (int group : {32, 64, 128}) {
      SCOPED_TRACE(testing::Message() << "int" << bits << " g" << group);
      Check(DType::kF32, {bits, group}, 48, 256, {70, 0, 3, 129}, 5, ExpertGemm::kDequantized);
    }
  }
  Check(DType::kQ4_0, {4, 32}, 40, 96, {5, 2, 0, 9}, 21, ExpertGemm::kDequantized);
  Check(DType::kQ8_0, {8, 32}, 1000, 1024, {300, 1, 0}, 22, ExpertGemm::kDequantized);
  Check(DType::kF16, {4, 128}, 17, 1000, {1, 0, 0, 300}, 25, ExpertGemm::kDequantized);
}

// DequantizeExpert gives UnpackWeight's values rounded to bf16, bit for bit.
TEST_F(CudaGroupedGemmTest, DequantizeExpertIsUnpackWeightInBf16) {
  for (const auto& [dtype, format] : std::vector<std::pair<DType, cuda::QuantFormat>>{
           {DType::kQ4_0, {4, 32}}, {DType::kQ8_0, {8, 32}}, {DType::kF32, {4, 128}}}) {
    SCOPED_TRACE(DTypeName(dtype));
    std::vector<uint8_t> all_q;
    std::vector<uint16_t> all_s;
    std::vector<Packed> experts;
    for (uint32_t e = 0; e < 3; ++e) {
      const HostWeight w = MakeWeight(dtype, 40, 160, 50 + e);
      experts.push_back(Pack(w.view, format));
      all_q.insert(all_q.end(), experts.back().qweight.begin(), experts.back().qweight.end());
      all_s.insert(all_s.end(), experts.back().scales.begin(), experts.back().scales.end());
    }
    const cuda::GroupedWeights weights{Upload(all_q), Upload(all_s), 3, experts[0].shape};
    uint16_t* out = Alloc<uint16_t>(40 * 160);
    ASSERT_TRUE(cuda::DequantizeExpert(weights, 2, out, nullptr).ok());
    const auto got = Download(out, 40 * 160);
    const auto want =
        cuda::UnpackWeight(experts[2].shape, experts[2].qweight.data(), experts[2].scales.data());
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i], F32ToBF16(want[i])) << "element " << i;
    }
    EXPECT_EQ(cuda::DequantizeExpert(weights, 3, out, nullptr).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST_F(CudaGroupedGemmTest, RejectsASmallWorkspace) {
  const HostWeight w = MakeWeight(DType::kQ4_0, 16, 64, 1);
  const Packed p = Pack(w.view, {4, 32});
  cuda::GroupedWeights weights{Upload(p.qweight), Upload(p.scales), 1, p.shape};
  const size_t need = cuda::GroupedGemmWorkspaceBytes(weights, 4);
  const absl::Status status =
      cuda::GroupedGemm(weights, Alloc<float>(4 * 64), 4, Upload(std::vector<int32_t>{0, 4}),
                        Alloc<float>(4 * 16), Alloc<uint8_t>(need), need - 1, nullptr);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

}  // namespace
}  // namespace herd
