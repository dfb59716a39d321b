// CUDA RoPE, K/V append and paged attention against the CPU reference (skips
// without a GPU).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "core/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/rope.h"
#include "tests/kernels/cuda/cuda_test_support.h"

namespace herd {
namespace {

using cuda_test::RandomNormal;

// Every element within tol * (1 + |expected|); a NaN (an element the op never
// wrote) fails.
::testing::AssertionResult AllNear(const std::vector<float>& got,
                                   const std::vector<float>& expected, float tol) {
  if (got.size() != expected.size()) {
    return ::testing::AssertionFailure()
           << "size " << got.size() << " != expected " << expected.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(std::fabs(got[i] - expected[i]) <= tol * (1.0f + std::fabs(expected[i])))) {
      return ::testing::AssertionFailure()
             << "element " << i << ": got " << got[i] << ", expected " << expected[i];
    }
  }
  return ::testing::AssertionSuccess();
}

using CudaRopeTest = cuda_test::CudaTest;

TEST_F(CudaRopeTest, MatchesCpuAtLargePositions) {
  struct Case {
    int64_t head_dim;
    int64_t rope_dim;
    float theta;
  };
  constexpr int64_t kTokens = 37;
  constexpr int64_t kHeads = 5;
  std::mt19937 rng(7);
  std::vector<int32_t> positions(kTokens);
  for (int32_t& p : positions) p = std::uniform_int_distribution<int32_t>(0, 32767)(rng);
  positions[0] = 0;
  positions[1] = 1;
  positions[2] = 32767;
  const int32_t* d_positions = Upload(positions);
  for (RopeStyle style : {RopeStyle::kGptJ, RopeStyle::kNeox}) {
    for (const Case& c : {Case{64, 64, 10000.0f}, Case{128, 64, 1e6f}, Case{96, 32, 10000.0f},
                          Case{80, 80, 500000.0f}}) {
      SCOPED_TRACE(testing::Message() << RopeStyleName(style) << " head_dim=" << c.head_dim
                                      << " rope_dim=" << c.rope_dim << " theta=" << c.theta);
      const auto x = RandomNormal(kTokens * kHeads * c.head_dim, 11);
      std::vector<float> expected = x;
      cpu::ApplyRope(expected.data(), kTokens, kHeads, c.head_dim, c.rope_dim, positions.data(),
                     c.theta, style);
      float* dx = Upload(x);
      ASSERT_TRUE(cuda::ApplyRope(dx, kTokens, kHeads, c.head_dim, c.rope_dim, d_positions, c.theta,
                                  style, nullptr)
                      .ok());
      ASSERT_TRUE(AllNear(Download(dx, x.size()), expected, 1e-5f));
    }
  }
}

TEST_F(CudaRopeTest, RejectsBadRopeDim) {
  float* dx = Alloc<float>(64);
  const int32_t* dp = Upload(std::vector<int32_t>{3});
  EXPECT_EQ(cuda::ApplyRope(dx, 1, 1, 64, 63, dp, 10000.0f, RopeStyle::kNeox, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda::ApplyRope(dx, 1, 1, 64, 66, dp, 10000.0f, RopeStyle::kNeox, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

using CudaAppendKvTest = cuda_test::CudaTest;

TEST_F(CudaAppendKvTest, WritesShuffledSlotsAndSkipsNegative) {
  const cpu::AttentionShape shape{8, 2, 64};
  const int64_t row = shape.num_kv_heads * shape.head_dim;
  constexpr int64_t kBlockTokens = 16;
  constexpr int64_t kNumBlocks = 6;
  const int64_t block_stride = kBlockTokens * row + 32;  // padding between blocks stays put
  constexpr int64_t kTokens = 40;
  const auto keys = RandomNormal(kNumBlocks * block_stride, 1);
  const auto values = RandomNormal(kNumBlocks * block_stride, 2);
  const auto k = RandomNormal(kTokens * row, 3);
  const auto v = RandomNormal(kTokens * row, 4);
  std::vector<int32_t> all_slots(kNumBlocks * kBlockTokens);
  std::iota(all_slots.begin(), all_slots.end(), 0);
  std::shuffle(all_slots.begin(), all_slots.end(), std::mt19937(5));
  std::vector<int32_t> slots(all_slots.begin(), all_slots.begin() + kTokens);
  slots[7] = -1;

  std::vector<float> expected_keys = keys;
  std::vector<float> expected_values = values;
  for (int64_t t = 0; t < kTokens; ++t) {
    if (slots[t] < 0) continue;
    const int64_t dst = slots[t] / kBlockTokens * block_stride + slots[t] % kBlockTokens * row;
    std::copy_n(k.begin() + t * row, row, expected_keys.begin() + dst);
    std::copy_n(v.begin() + t * row, row, expected_values.begin() + dst);
  }

  float* d_keys = Upload(keys);
  float* d_values = Upload(values);
  ASSERT_TRUE(cuda::AppendKv(shape, Upload(k), Upload(v), kTokens, Upload(slots),
                             {d_keys, d_values, block_stride, kBlockTokens}, nullptr)
                  .ok());
  ASSERT_TRUE(AllNear(Download(d_keys, keys.size()), expected_keys, 0.0f));
  ASSERT_TRUE(AllNear(Download(d_values, values.size()), expected_values, 0.0f));
}

struct SeqSpec {
  int64_t num_tokens;
  int64_t start_pos;
};

class CudaAttentionTest : public cuda_test::CudaTest {
 protected:
  // Builds a paged cache whose blocks are handed to the sequences in shuffled
  // order (plus spare blocks of noise never read), runs cpu::Attention and
  // cuda::Attention on the same data, and compares every output row. q and
  // out have one row more than the sequences use: it must stay unwritten.
  void CheckAttention(const cpu::AttentionShape& shape, int64_t block_tokens,
                      const std::vector<SeqSpec>& specs, bool use_workspace, uint32_t seed,
                      int64_t block_pad = 0) {
    const int64_t q_stride = shape.num_heads * shape.head_dim;
    const int64_t row = shape.num_kv_heads * shape.head_dim;
    const int64_t block_stride = block_tokens * row + block_pad;
    int64_t seq_tokens = 0;
    int64_t max_tokens = 0;
    int64_t max_context = 0;
    int64_t used_blocks = 0;
    for (const SeqSpec& s : specs) {
      seq_tokens += s.num_tokens;
      max_tokens = std::max(max_tokens, s.num_tokens);
      max_context = std::max(max_context, s.start_pos + s.num_tokens);
      used_blocks += (s.start_pos + s.num_tokens + block_tokens - 1) / block_tokens;
    }
    const int64_t total_tokens = seq_tokens + 1;
    const int64_t num_blocks = used_blocks + 3;
    std::vector<int32_t> block_ids(num_blocks);
    std::iota(block_ids.begin(), block_ids.end(), 0);
    std::shuffle(block_ids.begin(), block_ids.end(), std::mt19937(seed));

    std::vector<int32_t> tables;
    std::vector<cuda::DeviceAttentionSequence> device_seqs;
    int64_t q_row = 0;
    for (const SeqSpec& s : specs) {
      device_seqs.push_back(
          {q_row, s.num_tokens, s.start_pos, static_cast<int64_t>(tables.size())});
      const int64_t blocks = (s.start_pos + s.num_tokens + block_tokens - 1) / block_tokens;
      for (int64_t j = 0; j < blocks; ++j) tables.push_back(block_ids[tables.size()]);
      q_row += s.num_tokens;
    }
    const auto keys = RandomNormal(num_blocks * block_stride, seed + 1);
    const auto values = RandomNormal(num_blocks * block_stride, seed + 2);
    const auto q = RandomNormal(total_tokens * q_stride, seed + 3);

    std::vector<float> expected(seq_tokens * q_stride);
    std::vector<cpu::AttentionSequence> cpu_seqs;
    for (const cuda::DeviceAttentionSequence& s : device_seqs) {
      cpu_seqs.push_back({q.data() + s.q_row * q_stride, expected.data() + s.q_row * q_stride,
                          s.num_tokens, s.start_pos, tables.data() + s.block_table_offset});
    }
    ThreadPool pool(4);
    std::vector<float> cpu_workspace(
        cpu::AttentionWorkspaceBytes(shape, max_context, pool.num_threads()) / sizeof(float));
    cpu::Attention(shape, {keys.data(), values.data(), block_stride, block_tokens}, cpu_seqs.data(),
                   static_cast<int64_t>(cpu_seqs.size()), cpu_workspace.data(),
                   cpu_workspace.size() * sizeof(float), pool);

    const int64_t num_seqs = static_cast<int64_t>(specs.size());
    const size_t workspace_bytes =
        use_workspace ? cuda::AttentionWorkspaceBytes(shape, num_seqs, max_context) : 0;
    void* workspace = workspace_bytes > 0 ? Alloc<uint8_t>(workspace_bytes) : nullptr;
    float* d_out = Alloc<float>(total_tokens * q_stride);
    const absl::Status status =
        cuda::Attention(shape, {Upload(keys), Upload(values), block_stride, block_tokens},
                        Upload(q), Upload(device_seqs), num_seqs, total_tokens, max_tokens,
                        Upload(tables), d_out, workspace, workspace_bytes, nullptr);
    ASSERT_TRUE(status.ok()) << status;
    std::vector<float> got = Download(d_out, total_tokens * q_stride);
    for (int64_t i = seq_tokens * q_stride; i < total_tokens * q_stride; ++i) {
      ASSERT_TRUE(std::isnan(got[i])) << "row outside every sequence written at " << i;
    }
    got.resize(seq_tokens * q_stride);
    ASSERT_TRUE(AllNear(got, expected, 1e-4f));
  }
};

// Single-token sequences with contexts 1 .. 2000.
std::vector<SeqSpec> DecodeBatch(int64_t num_seqs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<SeqSpec> specs;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t context = s == 0   ? 1
                            : s == 1 ? 2000
                                     : std::uniform_int_distribution<int64_t>(1, 2000)(rng);
    specs.push_back({1, context - 1});
  }
  return specs;
}

TEST_F(CudaAttentionTest, DecodeBatchMatchesCpu) {
  struct Case {
    cpu::AttentionShape shape;
    int64_t block_tokens;
  };
  for (const Case& c : {Case{{32, 8, 128}, 16}, Case{{16, 16, 64}, 32}, Case{{32, 4, 96}, 16}}) {
    const cpu::AttentionShape& s = c.shape;
    SCOPED_TRACE(testing::Message() << "heads=" << s.num_heads << " kv_heads=" << s.num_kv_heads
                                    << " head_dim=" << s.head_dim << " block=" << c.block_tokens);
    ASSERT_NO_FATAL_FAILURE(CheckAttention(s, c.block_tokens, DecodeBatch(48, 3), true, 21));
  }
}

TEST_F(CudaAttentionTest, DecodeSplitsLongContexts) {
  const std::vector<SeqSpec> specs = {{1, 4999}, {1, 36}, {1, 0}};
  // Few sequences over long contexts: the workspace splits each context.
  const cpu::AttentionShape shape{16, 2, 128};
  ASSERT_GT(cuda::AttentionWorkspaceBytes(shape, 3, 5000), 0u);
  for (bool use_workspace : {true, false}) {
    SCOPED_TRACE(testing::Message() << "workspace=" << use_workspace);
    ASSERT_NO_FATAL_FAILURE(CheckAttention(shape, 16, specs, use_workspace, 31));
  }
  // 16 query heads on one kv head take two tiles of rows; head_dim 80.
  ASSERT_NO_FATAL_FAILURE(CheckAttention({16, 1, 80}, 32, specs, true, 41));
  // head_dim 256, the largest.
  ASSERT_NO_FATAL_FAILURE(CheckAttention({4, 2, 256}, 16, specs, true, 51));
}

TEST_F(CudaAttentionTest, PrefillOneSequenceMatchesCpu) {
  for (const SeqSpec& spec : {SeqSpec{300, 0}, SeqSpec{77, 500}, SeqSpec{2, 0}}) {
    SCOPED_TRACE(testing::Message() << "tokens=" << spec.num_tokens << " start=" << spec.start_pos);
    ASSERT_NO_FATAL_FAILURE(CheckAttention({8, 8, 128}, 32, {spec}, true, 61));
    ASSERT_NO_FATAL_FAILURE(CheckAttention({8, 2, 64}, 16, {spec}, true, 71));
  }
}

TEST_F(CudaAttentionTest, PrefillSeveralSequencesMatchesCpu) {
  const std::vector<SeqSpec> specs = {{1, 0}, {300, 0}, {45, 130}, {128, 17}, {2, 2}};
  // GQA 8 with head_dim 96; blocks padded apart (the CPU then reads block by
  // block instead of merging runs).
  ASSERT_NO_FATAL_FAILURE(CheckAttention({32, 4, 96}, 16, specs, true, 81, /*block_pad=*/8));
  ASSERT_NO_FATAL_FAILURE(CheckAttention({8, 8, 64}, 32, specs, true, 91));
  ASSERT_NO_FATAL_FAILURE(CheckAttention({4, 2, 256}, 16, {{70, 40}, {3, 0}}, true, 101));
}

TEST_F(CudaAttentionTest, MixedBatchMatchesCpu) {
  const std::vector<SeqSpec> specs = {{1, 1999}, {1, 5}, {200, 0}, {33, 700}, {1, 0}};
  ASSERT_NO_FATAL_FAILURE(CheckAttention({16, 4, 64}, 32, specs, true, 111));
  ASSERT_NO_FATAL_FAILURE(CheckAttention({8, 1, 80}, 16, specs, true, 121));
  ASSERT_NO_FATAL_FAILURE(CheckAttention({32, 8, 128}, 16, specs, false, 131));
}

TEST_F(CudaAttentionTest, RejectsBadShapes) {
  const cpu::KvBlocks kv{nullptr, nullptr, 0, 16};
  const auto call = [&](const cpu::AttentionShape& shape, const cpu::KvBlocks& blocks) {
    return cuda::Attention(shape, blocks, nullptr, nullptr, 1, 1, 1, nullptr, nullptr, nullptr, 0,
                           nullptr)
        .code();
  };
  EXPECT_EQ(call({4, 4, 257}, kv), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({6, 4, 64}, kv), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({4, 0, 64}, kv), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(call({4, 4, 64}, {nullptr, nullptr, 0, 0}), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace herd
