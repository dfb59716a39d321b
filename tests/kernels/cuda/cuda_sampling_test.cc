// CUDA greedy and top-p sampling against the CPU reference (skips without a
// GPU).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/sampling.h"
#include "kernels/sampling.h"
#include "tests/kernels/cuda/cuda_test_support.h"

namespace herd {
namespace {

using CudaSamplingTest = cuda_test::CudaTest;

TEST_F(CudaSamplingTest, ArgMaxRowsMatchesCpu) {
  for (int64_t vocab : {1, 2, 1000, 1023, 1024, 1025, 151936}) {
    SCOPED_TRACE(testing::Message() << "vocab=" << vocab);
    constexpr int64_t kRows = 5;
    std::vector<float> logits = cuda_test::RandomNormal(kRows * vocab, 1);
    std::mt19937 rng(2);
    // Row 1: the maximum repeated at several places (the first one wins).
    float* tied = logits.data() + vocab;
    const float top = *std::max_element(tied, tied + vocab);
    for (int i = 0; i < 4; ++i) tied[rng() % vocab] = top;
    // Row 2: all equal; row 3: all -inf; row 4: the maximum last.
    std::fill_n(logits.data() + 2 * vocab, vocab, 0.5f);
    std::fill_n(logits.data() + 3 * vocab, vocab, -INFINITY);
    logits[5 * vocab - 1] = 100.0f;
    std::vector<int32_t> want(kRows);
    for (int64_t r = 0; r < kRows; ++r) want[r] = cpu::ArgMax(logits.data() + r * vocab, vocab);
    int32_t* ids = Alloc<int32_t>(kRows);
    ASSERT_TRUE(cuda::ArgMaxRows(Upload(logits), kRows, vocab, ids, nullptr).ok());
    EXPECT_EQ(Download(ids, kRows), want);
  }
}

struct RowConfig {
  float temperature;
  float top_p;
  double u01;
};

int32_t CpuSample(const float* logits, int64_t vocab, const RowConfig& c,
                  std::vector<std::pair<float, int32_t>>& scratch) {
  return cpu::SampleTopPWithUniform(logits, vocab, c.temperature, c.top_p, c.u01, scratch);
}

// Whether the CPU's choice stays `want` when u01 or top_p moves by 1e-6
// (relative). Where it does not, u01 * kept or top_p * sum lies within 1e-6 of
// a running sum of the sorted probabilities, where the GPU's fixed-point sums
// (sampling.h) may legitimately round the other way; such rows are not
// compared.
bool WellConditioned(const float* logits, int64_t vocab, const RowConfig& c, int32_t want,
                     std::vector<std::pair<float, int32_t>>& scratch) {
  const double below_one = std::nextafter(1.0, 0.0);
  for (double f : {1.0 - 1e-6, 1.0 + 1e-6}) {
    RowConfig moved = c;
    moved.u01 = std::min(c.u01 * f, below_one);
    if (CpuSample(logits, vocab, moved, scratch) != want) return false;
    moved = c;
    moved.top_p = static_cast<float>(c.top_p * f);
    if (CpuSample(logits, vocab, moved, scratch) != want) return false;
  }
  return true;
}

// Rows of logits [rows.size(), vocab] and their sampling parameters.
struct Batch {
  std::vector<float> logits;
  std::vector<RowConfig> rows;
};

// Random rows: logits N(0, 1) times a random scale (every fourth row rounded
// to integers, so that many tokens share a probability), a random temperature
// (some greedy), top_p (some outside [0, 1]) and draw (some 0 and the largest
// double below 1).
Batch RandomBatch(int64_t num_rows, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  const float scales[] = {0.5f, 2.0f, 8.0f};
  const float temperatures[] = {0.0f, -1.0f, 0.05f, 0.3f, 0.7f, 1.0f, 1.5f};
  const float top_ps[] = {0.0f, 0.1f, 0.5f, 0.9f, 0.95f, 1.0f, 1.5f};
  Batch b;
  b.logits.resize(num_rows * vocab);
  for (int64_t r = 0; r < num_rows; ++r) {
    const float scale = scales[rng() % 3];
    const bool few_values = r % 4 == 3;
    for (int64_t i = 0; i < vocab; ++i) {
      const float x = normal(rng) * scale;
      b.logits[r * vocab + i] = few_values ? std::round(x) : x;
    }
    RowConfig c;
    c.temperature = temperatures[rng() % 7];
    c.top_p = top_ps[rng() % 7];
    c.u01 = r % 32 == 0   ? 0.0
            : r % 32 == 1 ? std::nextafter(1.0, 0.0)
                          : std::generate_canonical<double, 53>(rng);
    b.rows.push_back(c);
  }
  return b;
}

TEST_F(CudaSamplingTest, SampleTopPRowsMatchesCpu) {
  int64_t sampled = 0;
  int64_t compared = 0;
  std::vector<std::pair<float, int32_t>> scratch;
  for (int64_t vocab : {1, 2, 7, 1000, 1025, 32000, 151936, 262144}) {
    SCOPED_TRACE(testing::Message() << "vocab=" << vocab);
    const int64_t num_rows = vocab >= 150000 ? 8 : vocab >= 32000 ? 24 : 200;
    const Batch b = RandomBatch(num_rows, vocab, static_cast<uint64_t>(vocab));
    std::vector<float> temperature, top_p;
    std::vector<double> u01;
    for (const RowConfig& c : b.rows) {
      temperature.push_back(c.temperature);
      top_p.push_back(c.top_p);
      u01.push_back(c.u01);
    }
    const size_t bytes = cuda::SampleTopPRowsWorkspaceBytes(num_rows, vocab);
    const float* d_logits = Upload(b.logits);
    const float* d_temperature = Upload(temperature);
    const float* d_top_p = Upload(top_p);
    const double* d_u01 = Upload(u01);
    uint8_t* workspace = Alloc<uint8_t>(bytes);
    int32_t* ids = Alloc<int32_t>(num_rows);
    ASSERT_TRUE(cuda::SampleTopPRows(d_logits, num_rows, vocab, d_temperature, d_top_p, d_u01, ids,
                                     workspace, bytes, nullptr)
                    .ok());
    const auto got = Download(ids, num_rows);
    // Deterministic: a second run gives the same ids.
    ASSERT_TRUE(cuda::SampleTopPRows(d_logits, num_rows, vocab, d_temperature, d_top_p, d_u01, ids,
                                     workspace, bytes, nullptr)
                    .ok());
    ASSERT_EQ(Download(ids, num_rows), got);
    for (int64_t r = 0; r < num_rows; ++r) {
      const RowConfig& c = b.rows[r];
      SCOPED_TRACE(testing::Message() << "row=" << r << " temperature=" << c.temperature
                                      << " top_p=" << c.top_p << " u01=" << c.u01);
      const float* row = b.logits.data() + r * vocab;
      const int32_t want = CpuSample(row, vocab, c, scratch);
      if (c.temperature <= 0.0f) {
        ASSERT_EQ(got[r], want);
        continue;
      }
      ++sampled;
      if (!WellConditioned(row, vocab, c, want, scratch)) continue;
      ++compared;
      ASSERT_EQ(got[r], want);
    }
  }
  // Ill-conditioned draws are rare (mostly u01 just below 1 with a long tail
  // of tiny probabilities); nearly every row is compared.
  EXPECT_GE(compared, sampled * 9 / 10) << compared << " of " << sampled;
}

TEST_F(CudaSamplingTest, SampleTopPRowsWithManyEqualProbabilities) {
  // Logits from {0, 0.5, 1, 1.5}: the sampled token is usually the m-th
  // (m > 1) of a group of equal probabilities, ordered by id.
  constexpr int64_t kRows = 64;
  constexpr int64_t kVocab = 3000;
  std::mt19937_64 rng(5);
  std::vector<float> logits(kRows * kVocab);
  for (float& x : logits) x = static_cast<float>(rng() % 4) * 0.5f;
  std::vector<float> temperature(kRows), top_p(kRows);
  std::vector<double> u01(kRows);
  for (int64_t r = 0; r < kRows; ++r) {
    temperature[r] = r % 2 == 0 ? 1.0f : 0.4f;
    top_p[r] = r % 3 == 0 ? 1.0f : 0.6f;
    u01[r] = std::generate_canonical<double, 53>(rng);
  }
  const size_t bytes = cuda::SampleTopPRowsWorkspaceBytes(kRows, kVocab);
  int32_t* ids = Alloc<int32_t>(kRows);
  ASSERT_TRUE(cuda::SampleTopPRows(Upload(logits), kRows, kVocab, Upload(temperature),
                                   Upload(top_p), Upload(u01), ids, Alloc<uint8_t>(bytes), bytes,
                                   nullptr)
                  .ok());
  const auto got = Download(ids, kRows);
  std::vector<std::pair<float, int32_t>> scratch;
  int64_t compared = 0;
  for (int64_t r = 0; r < kRows; ++r) {
    SCOPED_TRACE(testing::Message() << "row=" << r);
    const RowConfig c{temperature[r], top_p[r], u01[r]};
    const int32_t want = CpuSample(logits.data() + r * kVocab, kVocab, c, scratch);
    if (!WellConditioned(logits.data() + r * kVocab, kVocab, c, want, scratch)) continue;
    ++compared;
    EXPECT_EQ(got[r], want);
  }
  EXPECT_GE(compared, kRows * 9 / 10);
}

TEST_F(CudaSamplingTest, Arguments) {
  const float* logits = Upload(cuda_test::RandomNormal(64, 1));
  const float* temperature = Upload(std::vector<float>(2, 1.0f));
  const float* top_p = Upload(std::vector<float>(2, 0.9f));
  const double* u01 = Upload(std::vector<double>(2, 0.5));
  int32_t* ids = Alloc<int32_t>(2);
  const size_t bytes = cuda::SampleTopPRowsWorkspaceBytes(2, 32);
  EXPECT_EQ(bytes, 2u * 32u * 4u);
  uint8_t* workspace = Alloc<uint8_t>(bytes);
  EXPECT_TRUE(
      cuda::SampleTopPRows(logits, 2, 32, temperature, top_p, u01, ids, workspace, bytes, nullptr)
          .ok());
  EXPECT_EQ(cuda::SampleTopPRows(logits, 2, 32, temperature, top_p, u01, ids, workspace, bytes - 1,
                                 nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      cuda::SampleTopPRows(logits, 2, 0, temperature, top_p, u01, ids, workspace, bytes, nullptr)
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      cuda::SampleTopPRows(nullptr, 0, 32, nullptr, nullptr, nullptr, nullptr, nullptr, 0, nullptr)
          .ok());
  EXPECT_EQ(cuda::ArgMaxRows(logits, 2, 0, ids, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(cuda::ArgMaxRows(nullptr, 0, 32, nullptr, nullptr).ok());
  ASSERT_TRUE(cuda::Synchronize(nullptr).ok());
}

}  // namespace
}  // namespace herd
