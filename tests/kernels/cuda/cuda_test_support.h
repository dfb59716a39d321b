// Shared pieces of the CUDA conformance tests: a fixture that skips without a
// usable GPU and owns the device buffers a test uploads, and seeded inputs.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/cuda_ops.h"

namespace herd::cuda_test {

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    const absl::Status status = cuda::DeviceCount(&count);
    if (!status.ok() || count == 0) GTEST_SKIP() << "no CUDA device: " << status.message();
  }
  void TearDown() override {
    for (void* p : buffers_) (void)cuda::Free(p);
  }

  // A device copy of `host`, freed in TearDown.
  template <typename T>
  T* Upload(const std::vector<T>& host) {
    T* ptr = Alloc<T>(host.size());
    if (!host.empty()) {
      EXPECT_TRUE(cuda::CopyToDevice(ptr, host.data(), host.size() * sizeof(T)).ok());
    }
    return ptr;
  }
  // `n` elements of device memory filled with 0xFF bytes (NaN for floats, -1
  // for integers), so an element the op forgets to write shows up.
  template <typename T>
  T* Alloc(size_t n) {
    void* ptr = nullptr;
    EXPECT_TRUE(cuda::Malloc(&ptr, n == 0 ? 1 : n * sizeof(T)).ok());
    buffers_.push_back(ptr);
    std::vector<uint8_t> poison(n * sizeof(T), 0xFF);
    if (n > 0) {
      EXPECT_TRUE(cuda::CopyToDevice(ptr, poison.data(), poison.size()).ok());
    }
    return static_cast<T*>(ptr);
  }
  // Waits for the default stream, then copies `n` elements back.
  template <typename T>
  std::vector<T> Download(const T* device, size_t n) {
    std::vector<T> host(n);
    EXPECT_TRUE(cuda::Synchronize(nullptr).ok());
    if (n > 0) {
      EXPECT_TRUE(cuda::CopyToHost(host.data(), device, n * sizeof(T)).ok());
    }
    return host;
  }

 private:
  std::vector<void*> buffers_;
};

// n draws from N(0, 1), fixed by `seed`.
inline std::vector<float> RandomNormal(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace herd::cuda_test
