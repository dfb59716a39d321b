// CUDA routing ops (router top-k, permute, gather, combine) against the CPU
// reference (skips without a GPU).
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/routing.h"
#include "kernels/moe.h"
#include "kernels/router.h"
#include "tests/kernels/cuda/cuda_test_support.h"

namespace herd {
namespace {

using CudaRoutingTest = cuda_test::CudaTest;
using cuda_test::RandomNormal;

// Expert ids for `num_slots` slots: uniform over [0, num_experts), or, when
// `sparse`, over every third expert only (so most experts get no slots), with
// half of the slots on the lowest one.
std::vector<int32_t> RandomExperts(int64_t num_slots, int64_t num_experts, bool sparse,
                                   uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(num_slots);
  for (int32_t& id : ids) {
    if (!sparse) {
      id = static_cast<int32_t>(rng() % num_experts);
    } else {
      const int64_t used = (num_experts + 2) / 3;
      id = rng() % 2 == 0 ? 0 : static_cast<int32_t>(rng() % used * 3);
    }
  }
  return ids;
}

TEST_F(CudaRoutingTest, RouterTopKMatchesCpu) {
  for (int64_t tokens : {1, 37}) {
    for (int64_t experts : {1, 7, 32, 33, 64, 160, 257, 512}) {
      // Powers of two up to 16, and top_k == num_experts where allowed.
      std::vector<int64_t> ks;
      for (int64_t k = 1; k <= std::min<int64_t>(experts, cuda::kMaxRouterTopK); k *= 2) {
        ks.push_back(k);
      }
      if (experts <= cuda::kMaxRouterTopK && ks.back() != experts) ks.push_back(experts);
      for (int64_t k : ks) {
        for (RouterScoring scoring : {RouterScoring::kSoftmax, RouterScoring::kSigmoid}) {
          for (bool renormalize : {false, true}) {
            for (bool ties : {false, true}) {
              SCOPED_TRACE(testing::Message()
                           << "tokens=" << tokens << " experts=" << experts << " k=" << k
                           << " scoring=" << RouterScoringName(scoring)
                           << " renormalize=" << renormalize << " ties=" << ties);
              auto logits = RandomNormal(tokens * experts, static_cast<uint32_t>(experts + k));
              // Ties: logits on a grid of 0.5, so most values repeat.
              if (ties) {
                for (float& x : logits) x = std::round(x * 2.0f) / 2.0f;
              }
              std::vector<int32_t> want_idx(tokens * k);
              std::vector<float> want_w(tokens * k);
              cpu::RouterTopK(logits.data(), tokens, experts, k, scoring, renormalize,
                              want_idx.data(), want_w.data());
              const float* d_logits = Upload(logits);
              int32_t* d_idx = Alloc<int32_t>(tokens * k);
              float* d_w = Alloc<float>(tokens * k);
              ASSERT_TRUE(cuda::RouterTopK(d_logits, tokens, experts, k, scoring, renormalize,
                                           d_idx, d_w, nullptr)
                              .ok());
              ASSERT_EQ(Download(d_idx, tokens * k), want_idx);
              const auto got_w = Download(d_w, tokens * k);
              for (int64_t i = 0; i < tokens * k; ++i) ASSERT_NEAR(got_w[i], want_w[i], 1e-6f) << i;
            }
          }
        }
      }
    }
  }
}

// Dynamic skipping on RouterTopK's output, bit for bit the CPU's: the same
// slots become -1 and the kept weights get the same scale, for thresholds
// that skip nothing, some, and all but the first, and for top_k 1..8.
TEST_F(CudaRoutingTest, SkipMinorExpertsMatchesCpu) {
  constexpr int64_t kTokens = 300;
  constexpr int64_t kExperts = 16;
  for (int64_t k : {1, 2, 4, 8}) {
    for (float beta : {0.0f, 0.3f, 0.7f, 1.0f}) {
      SCOPED_TRACE(testing::Message() << "k=" << k << " beta=" << beta);
      const auto logits = RandomNormal(kTokens * kExperts, static_cast<uint32_t>(k * 10 + 1));
      std::vector<int32_t> want_idx(kTokens * k);
      std::vector<float> want_w(kTokens * k);
      cpu::RouterTopK(logits.data(), kTokens, kExperts, k, RouterScoring::kSoftmax, true,
                      want_idx.data(), want_w.data());
      int32_t* d_idx = Upload(want_idx);
      float* d_w = Upload(want_w);
      const int64_t skipped =
          cpu::SkipMinorExperts(kTokens, k, beta, want_idx.data(), want_w.data());
      ASSERT_TRUE(cuda::SkipMinorExperts(kTokens, k, beta, d_idx, d_w, nullptr).ok());
      EXPECT_EQ(Download(d_idx, kTokens * k), want_idx);
      EXPECT_EQ(Download(d_w, kTokens * k), want_w);
      if (k > 1 && beta > 0.5f) {
        EXPECT_GT(skipped, 0);
      }
    }
  }
  EXPECT_EQ(cuda::SkipMinorExperts(1, 0, 0.5f, nullptr, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaRoutingTest, RouterTopKEdgeRows) {
  // Equal rows (all ties), rows with -inf, and one large logit.
  const int64_t experts = 40;
  const int64_t k = 5;
  std::vector<float> logits(4 * experts, 0.25f);
  for (int64_t e = 0; e < experts; e += 3) logits[experts + e] = -INFINITY;
  for (int64_t e = 0; e < experts; ++e) logits[2 * experts + e] = e % 2 == 0 ? -INFINITY : -1.0f;
  logits[3 * experts + 39] = 80.0f;
  for (RouterScoring scoring : {RouterScoring::kSoftmax, RouterScoring::kSigmoid}) {
    for (bool renormalize : {false, true}) {
      std::vector<int32_t> want_idx(4 * k);
      std::vector<float> want_w(4 * k);
      cpu::RouterTopK(logits.data(), 4, experts, k, scoring, renormalize, want_idx.data(),
                      want_w.data());
      const float* d_logits = Upload(logits);
      int32_t* d_idx = Alloc<int32_t>(4 * k);
      float* d_w = Alloc<float>(4 * k);
      ASSERT_TRUE(
          cuda::RouterTopK(d_logits, 4, experts, k, scoring, renormalize, d_idx, d_w, nullptr)
              .ok());
      EXPECT_EQ(Download(d_idx, 4 * k), want_idx);
      const auto got_w = Download(d_w, 4 * k);
      for (int64_t i = 0; i < 4 * k; ++i) EXPECT_NEAR(got_w[i], want_w[i], 1e-6f) << i;
    }
  }
}

TEST_F(CudaRoutingTest, RouterTopKArguments) {
  const float* logits = Upload(RandomNormal(8 * 512, 1));
  int32_t* idx = Alloc<int32_t>(8 * 16);
  float* w = Alloc<float>(8 * 16);
  const auto run = [&](int64_t tokens, int64_t experts, int64_t k) {
    return cuda::RouterTopK(logits, tokens, experts, k, RouterScoring::kSoftmax, true, idx, w,
                            nullptr);
  };
  EXPECT_TRUE(run(0, 8, 2).ok());
  EXPECT_TRUE(run(1, 512, 16).ok());
  EXPECT_EQ(run(1, 0, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(1, 513, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(1, 8, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(1, 8, 9).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(1, 64, 17).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(-1, 8, 2).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(cuda::Synchronize(nullptr).ok());
}

// The three outputs of cuda::PermuteByExpert.
struct Permutation {
  std::vector<int32_t> row_to_slot, offsets, slot_to_row;
};

TEST_F(CudaRoutingTest, PermuteByExpertMatchesCpu) {
  const auto permute = [&](const std::vector<int32_t>& experts, int64_t num_experts) {
    const int64_t slots = static_cast<int64_t>(experts.size());
    const size_t bytes = cuda::PermuteByExpertWorkspaceBytes(slots, num_experts);
    const int32_t* d_experts = Upload(experts);
    int32_t* d_rows = Alloc<int32_t>(slots);
    int32_t* d_offsets = Alloc<int32_t>(num_experts + 1);
    int32_t* d_slot_to_row = Alloc<int32_t>(slots);
    uint8_t* workspace = Alloc<uint8_t>(bytes);
    EXPECT_TRUE(cuda::PermuteByExpert(d_experts, slots, num_experts, d_rows, d_offsets,
                                      d_slot_to_row, workspace, bytes, nullptr)
                    .ok());
    return Permutation{Download(d_rows, slots), Download(d_offsets, num_experts + 1),
                       Download(d_slot_to_row, slots)};
  };
  for (int64_t slots : {1, 5, 31, 32, 33, 4095, 4096, 4097, 50000}) {
    for (int64_t num_experts : {1, 3, 64, 512}) {
      for (bool sparse : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << "slots=" << slots << " experts=" << num_experts << " sparse=" << sparse);
        const auto experts =
            RandomExperts(slots, num_experts, sparse, static_cast<uint32_t>(slots + num_experts));
        std::vector<int32_t> want_rows(slots), want_offsets(num_experts + 1);
        cpu::PermuteByExpert(experts.data(), slots, num_experts, want_rows.data(),
                             want_offsets.data());
        const Permutation got = permute(experts, num_experts);
        ASSERT_EQ(got.offsets, want_offsets);
        ASSERT_EQ(got.row_to_slot, want_rows);
        for (int64_t s = 0; s < slots; ++s) {
          ASSERT_TRUE(got.slot_to_row[s] >= 0 && got.slot_to_row[s] < slots) << s;
          ASSERT_EQ(got.row_to_slot[got.slot_to_row[s]], s) << s;
        }
      }
    }
  }
  // The largest size the engine plans for, twice: the result is deterministic.
  const auto experts = RandomExperts(int64_t{1} << 20, 512, true, 7);
  std::vector<int32_t> want_rows(experts.size()), want_offsets(513);
  cpu::PermuteByExpert(experts.data(), static_cast<int64_t>(experts.size()), 512, want_rows.data(),
                       want_offsets.data());
  for (int run = 0; run < 2; ++run) {
    const Permutation got = permute(experts, 512);
    ASSERT_EQ(got.offsets, want_offsets);
    ASSERT_EQ(got.row_to_slot, want_rows);
  }
}

TEST_F(CudaRoutingTest, PermuteByExpertWithNoSlots) {
  EXPECT_EQ(cuda::PermuteByExpertWorkspaceBytes(0, 8), 0u);
  int32_t* offsets = Alloc<int32_t>(9);
  ASSERT_TRUE(
      cuda::PermuteByExpert(nullptr, 0, 8, nullptr, offsets, nullptr, nullptr, 0, nullptr).ok());
  EXPECT_EQ(Download(offsets, 9), std::vector<int32_t>(9, 0));
}

TEST_F(CudaRoutingTest, PermuteByExpertLeavesOutInvalidExperts) {
  // Invalid ids belong to no expert: the CPU sort with them all mapped to an
  // extra expert `num_experts` gives the valid part of the expected output.
  const int64_t num_experts = 6;
  for (int64_t slots : {1, 40, 5000}) {
    SCOPED_TRACE(testing::Message() << "slots=" << slots);
    auto experts = RandomExperts(slots, num_experts, false, 11);
    std::mt19937 rng(3);
    const int32_t invalid[] = {-1, 6, 7, INT_MIN, INT_MAX};
    for (int32_t& e : experts) {
      if (rng() % 4 == 0) e = invalid[rng() % 5];
    }
    experts[0] = -1;  // at least one
    std::vector<int32_t> mapped(experts);
    for (int32_t& e : mapped) {
      if (e < 0 || e >= num_experts) e = num_experts;
    }
    std::vector<int32_t> cpu_rows(slots), cpu_offsets(num_experts + 2);
    cpu::PermuteByExpert(mapped.data(), slots, num_experts + 1, cpu_rows.data(),
                         cpu_offsets.data());
    const int32_t num_valid = cpu_offsets[num_experts];
    std::vector<int32_t> want_rows(cpu_rows.begin(), cpu_rows.begin() + num_valid);
    want_rows.resize(slots, -1);
    const std::vector<int32_t> want_offsets(cpu_offsets.begin(), cpu_offsets.end() - 1);

    const size_t bytes = cuda::PermuteByExpertWorkspaceBytes(slots, num_experts);
    int32_t* d_rows = Alloc<int32_t>(slots);
    int32_t* d_offsets = Alloc<int32_t>(num_experts + 1);
    int32_t* d_slot_to_row = Alloc<int32_t>(slots);
    ASSERT_TRUE(cuda::PermuteByExpert(Upload(experts), slots, num_experts, d_rows, d_offsets,
                                      d_slot_to_row, Alloc<uint8_t>(bytes), bytes, nullptr)
                    .ok());
    EXPECT_EQ(Download(d_offsets, num_experts + 1), want_offsets);
    EXPECT_EQ(Download(d_rows, slots), want_rows);
    const auto slot_to_row = Download(d_slot_to_row, slots);
    for (int64_t s = 0; s < slots; ++s) {
      if (mapped[s] == num_experts) {
        EXPECT_EQ(slot_to_row[s], -1) << s;
      } else {
        ASSERT_GE(slot_to_row[s], 0) << s;
        EXPECT_EQ(want_rows[slot_to_row[s]], s) << s;
      }
    }
  }
}

TEST_F(CudaRoutingTest, PermuteByExpertArguments) {
  const int32_t* experts = Upload(std::vector<int32_t>(100, 1));
  int32_t* rows = Alloc<int32_t>(100);
  int32_t* offsets = Alloc<int32_t>(514);
  const size_t bytes = cuda::PermuteByExpertWorkspaceBytes(100, 8);
  ASSERT_GT(bytes, 0u);
  uint8_t* workspace = Alloc<uint8_t>(bytes);
  const auto run = [&](int64_t num_experts, size_t workspace_bytes) {
    return cuda::PermuteByExpert(experts, 100, num_experts, rows, offsets, nullptr, workspace,
                                 workspace_bytes, nullptr);
  };
  EXPECT_TRUE(run(8, bytes).ok());  // slot_to_row may be nullptr
  EXPECT_EQ(run(8, bytes - 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(0, bytes).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run(513, bytes).code(), absl::StatusCode::kInvalidArgument);
  std::vector<int32_t> want_offsets(9, 0);
  for (int e = 2; e <= 8; ++e) want_offsets[e] = 100;
  std::vector<int32_t> want_rows(100);
  std::iota(want_rows.begin(), want_rows.end(), 0);
  EXPECT_EQ(Download(offsets, 9), want_offsets);
  EXPECT_EQ(Download(rows, 100), want_rows);
}

TEST_F(CudaRoutingTest, GatherRowsCopiesTokenRows) {
  for (int64_t tokens : {1, 9}) {
    for (int64_t top_k : {1, 3}) {
      for (int64_t hidden : {1, 100, 257}) {
        SCOPED_TRACE(testing::Message()
                     << "tokens=" << tokens << " top_k=" << top_k << " hidden=" << hidden);
        const int64_t slots = tokens * top_k;
        const auto x = RandomNormal(tokens * hidden, 5);
        // A shuffled slot order with some rows marked empty (-1).
        std::vector<int32_t> row_to_slot(slots);
        std::iota(row_to_slot.begin(), row_to_slot.end(), 0);
        std::shuffle(row_to_slot.begin(), row_to_slot.end(), std::mt19937(2));
        if (slots > 2) row_to_slot[slots - 1] = -1;
        float* out = Alloc<float>(slots * hidden);
        ASSERT_TRUE(
            cuda::GatherRows(Upload(x), Upload(row_to_slot), slots, top_k, hidden, out, nullptr)
                .ok());
        const auto got = Download(out, slots * hidden);
        for (int64_t r = 0; r < slots; ++r) {
          for (int64_t i = 0; i < hidden; ++i) {
            const float want = row_to_slot[r] < 0 ? 0.0f : x[row_to_slot[r] / top_k * hidden + i];
            ASSERT_EQ(got[r * hidden + i], want) << r << "," << i;
          }
        }
      }
    }
  }
  EXPECT_TRUE(cuda::GatherRows(nullptr, nullptr, 0, 2, 16, nullptr, nullptr).ok());
  EXPECT_EQ(cuda::GatherRows(nullptr, nullptr, 4, 0, 16, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaRoutingTest, CombineWeightedMatchesCpu) {
  for (int64_t tokens : {0, 1, 5, 64}) {
    for (int64_t top_k : {1, 2, 8}) {
      for (int64_t hidden : {1, 7, 256, 1000}) {
        SCOPED_TRACE(testing::Message()
                     << "tokens=" << tokens << " top_k=" << top_k << " hidden=" << hidden);
        const int64_t slots = tokens * top_k;
        const auto y = RandomNormal(slots * hidden, 1);
        const auto weights = RandomNormal(slots, 2);
        const auto out0 = RandomNormal(tokens * hidden, 3);
        std::vector<int32_t> slot_to_row(slots);
        std::iota(slot_to_row.begin(), slot_to_row.end(), 0);
        std::shuffle(slot_to_row.begin(), slot_to_row.end(), std::mt19937(4));
        std::vector<float> want = out0;
        cpu::CombineWeighted(y.data(), slot_to_row.data(), weights.data(), tokens, top_k, hidden,
                             want.data());
        float* d_out = Upload(out0);
        ASSERT_TRUE(cuda::CombineWeighted(Upload(y), Upload(slot_to_row), Upload(weights), tokens,
                                          top_k, hidden, d_out, nullptr)
                        .ok());
        const auto got = Download(d_out, tokens * hidden);
        for (int64_t t = 0; t < tokens; ++t) {
          for (int64_t i = 0; i < hidden; ++i) {
            // Same operations in the same order: equal up to the CPU
            // compiler's freedom to fuse multiply-adds.
            float magnitude = std::fabs(out0[t * hidden + i]);
            for (int64_t j = 0; j < top_k; ++j) {
              magnitude +=
                  std::fabs(weights[t * top_k + j] * y[slot_to_row[t * top_k + j] * hidden + i]);
            }
            ASSERT_NEAR(got[t * hidden + i], want[t * hidden + i], 1e-6f * magnitude)
                << t << "," << i;
          }
        }
      }
    }
  }
}

TEST_F(CudaRoutingTest, CombineWeightedSkipsUnroutedSlots) {
  const int64_t tokens = 3, top_k = 2, hidden = 4;
  const auto y = RandomNormal(tokens * top_k * hidden, 1);
  const std::vector<float> weights = {0.5f, 0.25f, 1.0f, 2.0f, -1.0f, 3.0f};
  const std::vector<int32_t> slot_to_row = {5, -1, -1, -1, 0, 2};
  std::vector<float> want(tokens * hidden, 1.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const int32_t row = slot_to_row[t * top_k + j];
      if (row < 0) continue;
      for (int64_t i = 0; i < hidden; ++i) {
        want[t * hidden + i] += weights[t * top_k + j] * y[row * hidden + i];
      }
    }
  }
  float* d_out = Upload(std::vector<float>(tokens * hidden, 1.0f));
  ASSERT_TRUE(cuda::CombineWeighted(Upload(y), Upload(slot_to_row), Upload(weights), tokens, top_k,
                                    hidden, d_out, nullptr)
                  .ok());
  const auto got = Download(d_out, tokens * hidden);
  for (int64_t i = 0; i < tokens * hidden; ++i) EXPECT_NEAR(got[i], want[i], 1e-6f) << i;
}

// Router, sort, gather, a per-expert map and combine on the GPU against the
// same steps on the CPU.
TEST_F(CudaRoutingTest, DispatchAndCombineMatchCpu) {
  const int64_t tokens = 50, num_experts = 20, top_k = 4, hidden = 96;
  const int64_t slots = tokens * top_k;
  const auto logits = RandomNormal(tokens * num_experts, 8);
  const auto x = RandomNormal(tokens * hidden, 9);
  // The "expert": row * (1 + e / 8).
  const auto expert_map = [&](const std::vector<float>& rows, const std::vector<int32_t>& offsets) {
    std::vector<float> out(rows.size());
    for (int64_t e = 0; e < num_experts; ++e) {
      for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
        for (int64_t i = 0; i < hidden; ++i) {
          out[r * hidden + i] = rows[r * hidden + i] * (1.0f + e / 8.0f);
        }
      }
    }
    return out;
  };

  std::vector<int32_t> idx(slots), row_to_slot(slots), offsets(num_experts + 1), slot_to_row(slots);
  std::vector<float> w(slots), rows(slots * hidden), want(tokens * hidden, 0.0f);
  cpu::RouterTopK(logits.data(), tokens, num_experts, top_k, RouterScoring::kSoftmax, true,
                  idx.data(), w.data());
  cpu::PermuteByExpert(idx.data(), slots, num_experts, row_to_slot.data(), offsets.data());
  for (int64_t r = 0; r < slots; ++r) {
    slot_to_row[row_to_slot[r]] = static_cast<int32_t>(r);
    std::copy_n(x.begin() + row_to_slot[r] / top_k * hidden, hidden, rows.begin() + r * hidden);
  }
  const auto y = expert_map(rows, offsets);
  cpu::CombineWeighted(y.data(), slot_to_row.data(), w.data(), tokens, top_k, hidden, want.data());

  int32_t* d_idx = Alloc<int32_t>(slots);
  float* d_w = Alloc<float>(slots);
  int32_t* d_rows = Alloc<int32_t>(slots);
  int32_t* d_offsets = Alloc<int32_t>(num_experts + 1);
  int32_t* d_slot_to_row = Alloc<int32_t>(slots);
  float* d_gathered = Alloc<float>(slots * hidden);
  const size_t bytes = cuda::PermuteByExpertWorkspaceBytes(slots, num_experts);
  ASSERT_TRUE(cuda::RouterTopK(Upload(logits), tokens, num_experts, top_k, RouterScoring::kSoftmax,
                               true, d_idx, d_w, nullptr)
                  .ok());
  ASSERT_TRUE(cuda::PermuteByExpert(d_idx, slots, num_experts, d_rows, d_offsets, d_slot_to_row,
                                    Alloc<uint8_t>(bytes), bytes, nullptr)
                  .ok());
  ASSERT_TRUE(cuda::GatherRows(Upload(x), d_rows, slots, top_k, hidden, d_gathered, nullptr).ok());
  const auto got_offsets = Download(d_offsets, num_experts + 1);
  ASSERT_EQ(got_offsets, offsets);
  ASSERT_EQ(Download(d_gathered, slots * hidden), rows);
  float* d_out = Upload(std::vector<float>(tokens * hidden, 0.0f));
  ASSERT_TRUE(cuda::CombineWeighted(Upload(expert_map(rows, got_offsets)), d_slot_to_row, d_w,
                                    tokens, top_k, hidden, d_out, nullptr)
                  .ok());
  const auto got = Download(d_out, tokens * hidden);
  for (int64_t i = 0; i < tokens * hidden; ++i) EXPECT_NEAR(got[i], want[i], 1e-5f) << i;
}

}  // namespace
}  // namespace herd
