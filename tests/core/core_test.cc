// core/: float conversions, quantization round trips, thread pool, logging
// levels, tensor views.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/logging.h"
#include "core/tensor_view.h"
#include "core/thread_pool.h"
#include "gtest/gtest.h"

namespace herd {
namespace {

TEST(DTypeTest, F16RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(f))));
      continue;
    }
    ASSERT_EQ(F32ToF16(f), h) << "half 0x" << std::hex << h;
  }
}

TEST(DTypeTest, F16RoundsToNearestEven) {
  EXPECT_EQ(F16ToF32(F32ToF16(1.0f + 1.0f / 2048)), 1.0f);                // halfway: to even
  EXPECT_EQ(F16ToF32(F32ToF16(1.0f + 3.0f / 2048)), 1.0f + 2.0f / 1024);  // halfway: up to even
  EXPECT_EQ(F16ToF32(F32ToF16(65520.0f)), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(F32ToF16(65519.0f)), 65504.0f);
  EXPECT_EQ(F16ToF32(F32ToF16(5.96e-8f)), 5.9604645e-8f);  // smallest subnormal
  EXPECT_EQ(F16ToF32(F32ToF16(-0.0f)), -0.0f);
}

TEST(DTypeTest, BF16RoundsToNearestEven) {
  EXPECT_EQ(BF16ToF32(F32ToBF16(1.0f)), 1.0f);
  EXPECT_EQ(BF16ToF32(F32ToBF16(1.00390625f)), 1.0f);       // halfway: to even
  EXPECT_EQ(BF16ToF32(F32ToBF16(1.01171875f)), 1.015625f);  // halfway: up to even
  EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(std::nanf("")))));
}

TEST(DTypeTest, QuantizedRoundTripErrorIsBounded) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> x(256);
  for (float& v : x) v = dist(rng);
  for (DType type : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(type));
    std::vector<uint8_t> bytes(RowBytes(type, 256));
    std::vector<float> back(256);
    QuantizeRow(type, x.data(), bytes.data(), 256);
    DequantizeRow(type, bytes.data(), back.data(), 256);
    for (int b = 0; b < 8; ++b) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[b * 32 + i]));
      // Half a quantization step, plus the f16 rounding of the scale. Q4_0
      // maps [-8d, 7d] with d = -max/8, so the side opposite the largest
      // magnitude clamps at 7/8 of it: up to a whole step there.
      const float step = type == DType::kQ8_0   ? amax / 127
                         : type == DType::kQ4_0 ? 2 * amax / 8
                         : type == DType::kQ4_1 ? 2 * amax / 15
                                                : amax / 128;
      for (int i = 0; i < 32; ++i) {
        ASSERT_LE(std::fabs(back[b * 32 + i] - x[b * 32 + i]), 0.5f * step + 1e-3f * amax) << i;
      }
    }
  }
}

TEST(DTypeTest, Q4_0MatchesGgmlLayout) {
  // Values -8d..7d in ggml's nibble order: value j in the low nibble of qs[j],
  // value j+16 in the high nibble.
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[i] = static_cast<float>((i % 16) - 8);
  x[0] = -8.0f;
  BlockQ4_0 block;
  QuantizeRow(DType::kQ4_0, x.data(), &block, 32);
  EXPECT_EQ(F16ToF32(block.d), 1.0f);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(block.qs[j] & 0x0F, j);
    EXPECT_EQ(block.qs[j] >> 4, j);
  }
}

TEST(DTypeTest, NamesRoundTrip) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1,
                  DType::kI32}) {
    auto parsed = ParseDType(DTypeName(t));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, t);
  }
  EXPECT_FALSE(ParseDType("q3_k").ok());
  EXPECT_EQ(RowBytes(DType::kQ4_0, 64), 36);
  EXPECT_EQ(RowBytes(DType::kQ8_0, 64), 68);
}

TEST(TensorViewTest, RowsAndBytes) {
  std::vector<uint8_t> data(3 * RowBytes(DType::kQ8_0, 64));
  const TensorView v(DType::kQ8_0, {3, 64}, data.data());
  EXPECT_EQ(v.num_rows(), 3);
  EXPECT_EQ(v.row_bytes(), 68);
  EXPECT_EQ(v.num_bytes(), 204);
  EXPECT_EQ(v.row(2), data.data() + 136);
  EXPECT_EQ(v.DebugString(), "Q8_0 [3, 64]");
}

TEST(ThreadPoolTest, CoversRangeExactlyOnce) {
  for (int threads : {1, 2, 5}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 7, 100, 1001}) {
      for (int64_t grain : {1, 8, 64}) {
        std::vector<std::atomic<int>> hits(n);
        pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end, int thread) {
          ASSERT_LT(thread, threads);
          for (int64_t i = begin; i < end; ++i) hits[i]++;
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
      }
    }
  }
}

TEST(ThreadPoolTest, PiecesAreWholeGrainsAndShrinkToOneGrain) {
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    for (int64_t grain : {1, 8}) {
      const int64_t n = 1000 * grain + 3;
      std::mutex mutex;
      std::vector<std::pair<int64_t, int64_t>> pieces;
      pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end, int) {
        std::lock_guard<std::mutex> lock(mutex);
        pieces.emplace_back(begin, end);
      });
      std::sort(pieces.begin(), pieces.end());
      SCOPED_TRACE(testing::Message() << "threads=" << threads << " grain=" << grain);
      ASSERT_GT(pieces.size(), 4u);
      for (size_t i = 0; i < pieces.size(); ++i) {
        const auto [begin, end] = pieces[i];
        EXPECT_EQ(begin % grain, 0) << "piece " << i;
        if (end != n) {
          EXPECT_EQ((end - begin) % grain, 0) << "piece " << i;
        }
        // Large pieces first (the first is a 1/(2 * threads) share), then
        // smaller ones: a piece is never larger than the one before it.
        if (i > 0) {
          EXPECT_LE(end - begin, pieces[i - 1].second - pieces[i - 1].first) << "piece " << i;
        }
      }
      EXPECT_EQ(pieces.front().second, (n / (2 * threads * grain)) * grain);
      // The last whole piece is a single grain, so no thread waits long on another's.
      EXPECT_EQ(pieces[pieces.size() - 2].second - pieces[pieces.size() - 2].first, grain);
    }
  }
}

TEST(ThreadPoolTest, LongLoopsUseEveryThread) {
  ThreadPool pool(2);
  std::atomic<int> mask{0};
  // 64 pieces of 1 ms: the worker wakes long before the caller could take them all.
  pool.ParallelFor(64, 1, [&](int64_t begin, int64_t end, int thread) {
    mask |= 1 << thread;
    std::this_thread::sleep_for(std::chrono::milliseconds(end - begin));
  });
  EXPECT_EQ(mask.load(), 3);
}

TEST(LoggingTest, ParsesLevels) {
  LogLevel level;
  EXPECT_TRUE(ParseLogLevel("DEBUG", &level));
  EXPECT_EQ(level, LogLevel::kDebug);
  EXPECT_TRUE(ParseLogLevel("warn", &level));
  EXPECT_EQ(level, LogLevel::kWarn);
  EXPECT_FALSE(ParseLogLevel("verbose", &level));
  const LogLevel saved = GetLogLevel();
  SetLogLevel(LogLevel::kError);
  int evaluated = 0;
  HERD_LOG(INFO) << (++evaluated);  // below the threshold: not evaluated
  EXPECT_EQ(evaluated, 0);
  SetLogLevel(saved);
}

}  // namespace
}  // namespace herd
