// CUDA element-wise ops against the CPU reference (skips without a GPU).
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/elementwise.h"

namespace herd {
namespace {

class CudaElementwiseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    const absl::Status status = cuda::DeviceCount(&count);
    if (!status.ok() || count == 0) GTEST_SKIP() << "no CUDA device: " << status.message();
  }

  // Uploads host floats; the buffer is freed in TearDown.
  float* Upload(const std::vector<float>& host) {
    void* ptr = nullptr;
    EXPECT_TRUE(cuda::Malloc(&ptr, host.size() * sizeof(float)).ok());
    EXPECT_TRUE(cuda::CopyToDevice(ptr, host.data(), host.size() * sizeof(float)).ok());
    buffers_.push_back(ptr);
    return static_cast<float*>(ptr);
  }
  std::vector<float> Download(const float* device, size_t n) {
    std::vector<float> host(n);
    EXPECT_TRUE(cuda::Synchronize(nullptr).ok());
    EXPECT_TRUE(cuda::CopyToHost(host.data(), device, n * sizeof(float)).ok());
    return host;
  }
  void TearDown() override {
    for (void* p : buffers_) (void)cuda::Free(p);
  }

  std::vector<void*> buffers_;
};

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

TEST_F(CudaElementwiseTest, RmsNormMatchesCpu) {
  for (int64_t rows : {1, 3, 17}) {
    for (int64_t dim : {1, 31, 64, 1000, 4096}) {
      SCOPED_TRACE(testing::Message() << "rows=" << rows << " dim=" << dim);
      const auto x = Random(rows * dim, 1);
      const auto w = Random(dim, 2);
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
    const auto g = Random(n, 3);
    const auto u = Random(n, 4);
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
