// Expert parallelism end to end with ranks as threads (--local-ranks): `herd
// generate` on N ranks gives exactly the logits and tokens of the
// single-process run, for the default contiguous split, an uneven split and a
// placement with replicated experts. Each rank computes its experts' rows
// with the same kernels on the same inputs, and every token sums its experts
// in the same order, so the results are bit-identical.
#include "tests/tools/expert_parallel_testing.h"

namespace herd {
namespace expert_parallel_testing {
namespace {

TEST_P(ExpertParallelTest, LocalRanksMatchSingleProcess) {
  for (const Case& c : Cases()) ExpectSameAsSingleProcess("", c);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ExpertParallelTest, ::testing::ValuesIn(kFixtureModels),
                         FixtureTestName);
INSTANTIATE_TEST_SUITE_P(HerdCheckpoints, ExpertParallelTest,
                         ::testing::ValuesIn(kHerdCheckpointModels), HerdCheckpointTestName);

TEST(ExpertParallelMidSizeTest, LocalRanksMatchSingleProcess) { ExpectMidSizeModelMatches("", ""); }

// The Hugging Face architectures (shared expert, q/k norms, biases) shard the
// same way: 2 and 3 ranks give the single process's logits byte for byte.
TEST(ExpertParallelHfTest, EveryArchitectureMatchesSingleProcess) {
  for (const char* arch : {"qwen2moe", "qwen3moe", "olmoe"}) {
    SCOPED_TRACE(arch);
    TempDir dir;
    const std::string model = TestDataPath(std::string("hf-reference/") + arch);
    auto run = [&](const std::string& extra, const std::string& dump) {
      return Shell(std::string(HERD_CLI_PATH) + " generate --model " + model +
                   " --prompt-ids 1,17,42,0,127,100 --max-new-tokens 6 --dump-logits " + dump +
                   " " + extra + " 2>/dev/null");
    };
    const ShellRun single = run("", dir.Join("single.f32"));
    ASSERT_EQ(single.exit_code, 0);
    for (int ranks : {2, 3}) {
      const std::string dump = dir.Join("ep" + std::to_string(ranks) + ".f32");
      const ShellRun ep = run("--local-ranks " + std::to_string(ranks), dump);
      ASSERT_EQ(ep.exit_code, 0) << ranks;
      EXPECT_EQ(ep.out, single.out) << ranks;
      EXPECT_EQ(ReadFileBytes(dump), ReadFileBytes(dir.Join("single.f32"))) << ranks;
    }
  }
}

TEST(ExpertParallelBenchTest, EveryRankRunsItsOwnSequenceAndReportsItsCommunication) {
  const ShellRun run = Shell(std::string(HERD_CLI_PATH) + " bench --model " +
                             TestDataPath("llamacpp-tiny/tiny-q4_0.gguf") +
                             " --local-ranks 3 --prompt 16 --gen 8 --repetitions 2 2>/dev/null");
  ASSERT_EQ(run.exit_code, 0) << run.out;
  EXPECT_NE(run.out.find("ranks     3"), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("| pp16 "), std::string::npos) << run.out;
  EXPECT_NE(run.out.find("| tg8 "), std::string::npos) << run.out;
  for (const char* row : {"|    0 |", "|    1 |", "|    2 |"}) {
    EXPECT_NE(run.out.find(row), std::string::npos) << row << "\n" << run.out;
  }
}

TEST(ExpertParallelErrorsTest, PlacementThatDoesNotFitIsAClearError) {
  TempDir dir;
  const std::string bad = WritePlacement(dir, "bad", 3, "ranks: [[0, 1], [2, 3], [4, 5, 6, 7]]");
  const ShellRun run = Shell(std::string(HERD_CLI_PATH) + " generate --model " +
                             TestDataPath("llamacpp-tiny/tiny-q4_0.gguf") +
                             " --prompt-ids 1,2 --local-ranks 2 --placement " + bad + " 2>&1");
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.out.find("3 ranks"), std::string::npos) << run.out;
}

}  // namespace
}  // namespace expert_parallel_testing
}  // namespace herd
