// CUDA element-wise ops against the CPU reference (skips without a GPU).
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_ops.h"
#include "tests/kernels/cuda/cuda_test_support.h"
#include "kernels/elementwise.h"

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

}  // namespace
}  // namespace herd
