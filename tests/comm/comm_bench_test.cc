// herd bench comm's library part on the local backend: rows, payload
// accounting, the table, and option checks.
#include "comm/comm_bench.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace herd::comm {
namespace {

using ::testing::HasSubstr;

TEST(CommBenchTest, LocalRunGivesOneRowPerTokenCount) {
  CommBenchOptions options;
  options.backend = "local";
  options.num_local_ranks = 2;
  options.num_tokens = {0, 4};
  options.hidden_size = 16;
  options.top_k = 2;
  options.num_experts = 4;
  options.iterations = 3;
  options.warmup = 1;
  auto result = RunCommBench(options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->world_size, 2);
  EXPECT_EQ(result->rank, 0);
  ASSERT_EQ(result->rows.size(), 2u);
  EXPECT_EQ(result->rows[0].num_tokens, 0);
  EXPECT_EQ(result->rows[0].payload_bytes, 0);
  // With two ranks every off-rank row is counted by its sender (dispatch) and
  // by the rank that returns it (combine), so the mean over the two ranks is a
  // whole number of rows, at most all 4 x 2 slots there and back.
  const double row_bytes = 16 * 4;
  EXPECT_GT(result->rows[1].payload_bytes, 0);
  EXPECT_LE(result->rows[1].payload_bytes, 2 * 4 * 2 * row_bytes);
  EXPECT_EQ(static_cast<int64_t>(result->rows[1].payload_bytes) % static_cast<int64_t>(row_bytes),
            0);
  EXPECT_GT(result->rows[1].exchange_us, 0);
  EXPECT_GT(result->rows[1].comm_us, 0);
  EXPECT_LT(result->rows[1].mpi_us, 0) << "MPI_Alltoallv is measured for mpi only";
  const std::string table = FormatCommBenchTable(options, *result);
  EXPECT_THAT(table, HasSubstr("backend local, 2 ranks"));
  EXPECT_THAT(table, HasSubstr("exchange/a2av"));
}

TEST(CommBenchTest, RejectsBadOptions) {
  CommBenchOptions options;
  options.top_k = 9;
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  options = CommBenchOptions();
  options.num_tokens = {};
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
  options = CommBenchOptions();
  options.iterations = 0;
  EXPECT_EQ(RunCommBench(options).status().code(), absl::StatusCode::kInvalidArgument);
  options = CommBenchOptions();
  options.backend = "nope";
  EXPECT_EQ(RunCommBench(options).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace herd::comm
