// CUDA element-wise ops against the CPU reference (skips without a GPU).
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/tensor_view.h"
#include "gtest/gtest.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/elementwise.h"
#include "tests/kernels/cuda/cuda_test_support.h"

namespace herd {
namespace {

using CudaElementwiseTest = cuda_test::CudaTest;
using cuda_test::RandomNormal;

TEST_F(CudaElementwiseTest, RmsNormMatchesCpu) {
  for (int64_t rows : {1, 3, 17}) {
    for (int64_t dim : {1, 31, 64, 1000, 4096}) {
      SCOPED_TRACE(testing::Message() << "rows=" << rows << " dim=" << dim);
      const auto x = RandomNormal(rows * dim, 1);
      const auto w = RandomNormal(dim, 2);
      std::vector<float> expected(rows * dim);
      cpu::RmsNorm(x.data(), w.data(), rows, dim, 1e-5f, expected.data());
      float* dx = Upload(x);
      float* dw = Upload(w);
      float* dy = Upload(std::vector<float>(rows * dim));
      ASSERT_TRUE(cuda::RmsNorm(dx, dw, rows, dim, 1e-5f, dy, nullptr).ok());
      const auto got = Download(dy, rows * dim);
      for (int64_t i = 0; i < rows * dim; ++i) ASSERT_NEAR(got[i], expected[i], 1e-4f) << i;
    }
  }
}

TEST_F(CudaElementwiseTest, SwiGluMatchesCpu) {
  for (int64_t n : {0, 1, 255, 256, 257, 100000}) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    const auto g = RandomNormal(n, 3);
    const auto u = RandomNormal(n, 4);
    std::vector<float> expected(n);
    cpu::SwiGlu(g.data(), u.data(), n, expected.data());
    if (n == 0) {
      ASSERT_TRUE(cuda::SwiGlu(nullptr, nullptr, 0, nullptr, nullptr).ok());
      continue;
    }
    float* dg = Upload(g);
    float* du = Upload(u);
    float* dy = Upload(std::vector<float>(n));
    ASSERT_TRUE(cuda::SwiGlu(dg, du, n, dy, nullptr).ok());
    const auto got = Download(dy, n);
    for (int64_t i = 0; i < n; ++i)
      ASSERT_NEAR(got[i], expected[i], 1e-5f * (1 + std::fabs(expected[i]))) << i;
  }
}

// A [vocab, dim] table of `dtype` with random bytes: every F32, F16 and BF16
// bit pattern (subnormals, infinities, NaNs) and, for quantized blocks, any
// quants with any finite f16 scale (and minimum).
std::vector<uint8_t> RandomTable(DType dtype, int64_t vocab, int64_t dim, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> bytes(vocab * RowBytes(dtype, dim));
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  if (IsQuantized(dtype)) {
    const int64_t f16_fields = dtype == DType::kQ4_1 ? 2 : 1;  // d, and m for Q4_1
    for (size_t block = 0; block < bytes.size(); block += BlockBytes(dtype)) {
      for (int64_t f = 0; f < f16_fields; ++f) {
        uint8_t& high = bytes[block + 2 * f + 1];
        if ((high & 0x7C) == 0x7C) high &= 0xBF;  // Inf/NaN exponent -> a finite one
      }
    }
  }
  return bytes;
}

TEST_F(CudaElementwiseTest, EmbeddingLookupMatchesCpuBitForBit) {
  constexpr int64_t kVocab = 50;
  for (DType dtype :
       {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    for (int64_t dim : {31, 32, 96, 4096}) {
      if (dim % BlockSize(dtype) != 0) continue;
      for (int64_t tokens : {0, 1, 17}) {
        SCOPED_TRACE(testing::Message()
                     << DTypeName(dtype) << " dim=" << dim << " tokens=" << tokens);
        const auto table = RandomTable(dtype, kVocab, dim, static_cast<uint32_t>(dim));
        std::mt19937 rng(1);
        std::vector<int32_t> ids(tokens);
        for (int32_t& id : ids) id = static_cast<int32_t>(rng() % kVocab);
        if (tokens > 2) {
          ids[0] = 0;
          ids[1] = kVocab - 1;
        }
        std::vector<float> want(tokens * dim);
        ASSERT_TRUE(cpu::EmbeddingLookup(TensorView(dtype, {kVocab, dim}, table.data()), ids.data(),
                                         tokens, want.data())
                        .ok());
        float* out = Alloc<float>(tokens * dim);
        int32_t* bad = Upload(std::vector<int32_t>{0});
        ASSERT_TRUE(cuda::EmbeddingLookup(Upload(table), dtype, kVocab, dim, Upload(ids), tokens,
                                          out, bad, nullptr)
                        .ok());
        const auto got = Download(out, tokens * dim);
        for (int64_t i = 0; i < tokens * dim; ++i) {
          uint32_t got_bits, want_bits;
          std::memcpy(&got_bits, &got[i], 4);
          std::memcpy(&want_bits, &want[i], 4);
          ASSERT_EQ(got_bits, want_bits) << i << ": " << got[i] << " vs " << want[i];
        }
        EXPECT_EQ(Download(bad, 1)[0], 0);
      }
    }
  }
}

TEST_F(CudaElementwiseTest, EmbeddingLookupZeroesAndCountsBadIds) {
  constexpr int64_t kVocab = 10;
  constexpr int64_t kDim = 64;
  const auto table = RandomTable(DType::kQ8_0, kVocab, kDim, 3);
  const std::vector<int32_t> ids = {3, -1, kVocab, 0, INT_MIN, INT_MAX, kVocab - 1};
  const auto tokens = static_cast<int64_t>(ids.size());
  const uint8_t* d_table = Upload(table);
  const int32_t* d_ids = Upload(ids);
  int32_t* bad = Upload(std::vector<int32_t>{10});  // counts on from what is there
  for (int32_t* counter : {bad, static_cast<int32_t*>(nullptr)}) {
    SCOPED_TRACE(counter == nullptr ? "no counter" : "counter");
    float* out = Alloc<float>(tokens * kDim);
    ASSERT_TRUE(cuda::EmbeddingLookup(d_table, DType::kQ8_0, kVocab, kDim, d_ids, tokens, out,
                                      counter, nullptr)
                    .ok());
    const auto got = Download(out, tokens * kDim);
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<float> want(kDim, 0.0f);
      if (ids[t] >= 0 && ids[t] < kVocab) {
        DequantizeRow(DType::kQ8_0, table.data() + ids[t] * RowBytes(DType::kQ8_0, kDim),
                      want.data(), kDim);
      }
      for (int64_t i = 0; i < kDim; ++i) ASSERT_EQ(got[t * kDim + i], want[i]) << t << "," << i;
    }
  }
  EXPECT_EQ(Download(bad, 1)[0], 14);
}

TEST_F(CudaElementwiseTest, EmbeddingLookupArguments) {
  EXPECT_EQ(cuda::EmbeddingLookup(nullptr, DType::kI32, 4, 4, nullptr, 1, nullptr, nullptr, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      cuda::EmbeddingLookup(nullptr, DType::kQ4_0, 4, 48, nullptr, 1, nullptr, nullptr, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      cuda::EmbeddingLookup(nullptr, DType::kF16, 4, 8, nullptr, -1, nullptr, nullptr, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      cuda::EmbeddingLookup(nullptr, DType::kF16, 4, 8, nullptr, 0, nullptr, nullptr, nullptr)
          .ok());
}

TEST_F(CudaElementwiseTest, AddInPlaceMatchesCpu) {
  for (int64_t n : {0, 1, 255, 256, 257, 100000}) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    std::vector<float> want = RandomNormal(n, 5);
    const auto x = RandomNormal(n, 6);
    float* acc = Upload(want);
    cpu::AddInPlace(want.data(), x.data(), n);
    ASSERT_TRUE(cuda::AddInPlace(acc, Upload(x), n, nullptr).ok());
    EXPECT_EQ(Download(acc, n), want);
  }
  EXPECT_EQ(cuda::AddInPlace(nullptr, nullptr, -1, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

// The shared expert's gated add, against the CPU engine's arithmetic:
// out[r] += sigmoid(g[r]) * y[r] (a few ulp apart: the GPU's expf).
TEST_F(CudaElementwiseTest, AddGatedRowsMatchesCpu) {
  for (const bool gated : {false, true}) {
    for (int64_t rows : {0, 1, 7}) {
      for (int64_t dim : {1, 300, 1024}) {
        SCOPED_TRACE(testing::Message() << "gated=" << gated << " rows=" << rows << " dim=" << dim);
        std::vector<float> want = RandomNormal(rows * dim, 7);
        const auto y = RandomNormal(rows * dim, 8);
        const auto g = RandomNormal(rows, 9);
        float* out = Upload(want);
        for (int64_t r = 0; r < rows; ++r) {
          const float scale = gated ? 1.0f / (1.0f + std::exp(-g[r])) : 1.0f;
          for (int64_t i = 0; i < dim; ++i) want[r * dim + i] += scale * y[r * dim + i];
        }
        ASSERT_TRUE(cuda::AddGatedRows(out, Upload(y), gated && rows > 0 ? Upload(g) : nullptr,
                                       rows, dim, nullptr)
                        .ok());
        const auto got = Download(out, rows * dim);
        for (int64_t i = 0; i < rows * dim; ++i) {
          ASSERT_NEAR(got[i], want[i], 1e-5f * (1.0f + std::fabs(want[i]))) << i;
        }
      }
    }
  }
  EXPECT_EQ(cuda::AddGatedRows(nullptr, nullptr, nullptr, -1, 4, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace herd
