// `herd plan` as users run it: a real process, its stdout, stderr, exit code
// and the files it writes.
#include <sys/wait.h>

#include <cstdio>
#include <string>

#include "coordinator/placement/load_trace.h"
#include "core/placement.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;
using testing::TestDataPath;

using RunResult = testing::CommandResult;
using testing::RunHerd;

std::string Trace(const std::string& name) {
  return TestDataPath("placement/traces/" + name + ".json.gz");
}

TEST(PlanCliTest, PlansWritesAndReportsJson) {
  TempDir dir;
  const std::string out = dir.Join("placement.yaml"), svg = dir.Join("heatmap.svg");
  const RunResult r = RunHerd("plan --trace " + Trace("dsv3_zipf1.0") +
                              " --nodes 4 --ranks-per-node 8 --redundant 32 --hidden-size 7168 "
                              "--threads 1 --json --out " +
                              out + " --svg " + svg);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  for (const char* key :
       {"imbalance_before", "imbalance_after", "lower_bound", "experts_moved", "runtime_seconds"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["mode"], "hierarchical");
  EXPECT_EQ(j["cluster"]["slots_per_rank"], 9);
  EXPECT_EQ(j["snapshot"], "all");
  const double before = j["imbalance_before"], after = j["imbalance_after"];
  const double bound = j["lower_bound_hierarchical"];
  EXPECT_GT(before, 4.0);  // the contiguous split of a skewed trace
  EXPECT_LT(after, 1.25);
  EXPECT_GE(after, bound - 1e-9);
  EXPECT_LE(after, j["imbalance_after_even_split"].get<double>() + 1e-12);
  EXPECT_EQ(j["per_layer"]["after"].size(), 58u);
  EXPECT_EQ(j["duplicate_replicas"], 0);
  EXPECT_GT(j["dispatch"]["inter_node_bytes_per_token"].get<double>(), 0.0);
  EXPECT_GT(j["runtime_seconds"].get<double>(), 0.0);
  absl::StatusOr<ExpertPlacement> p = ReadPlacementFile(out);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_ranks(), 32);
  EXPECT_EQ(p->num_nodes(), 4);
  EXPECT_EQ(p->UniformSlotsPerRank(), 9);
  EXPECT_EQ(p->metadata().at("trace"), "dsv3_zipf1.0");
  const std::string heatmap = testing::ReadFileText(svg);
  EXPECT_THAT(heatmap, HasSubstr("<svg"));
  EXPECT_THAT(heatmap, HasSubstr("before (contiguous)"));
}

TEST(PlanCliTest, TextReportAndSnapshots) {
  TempDir dir;
  const RunResult r =
      RunHerd("plan --trace " + Trace("olmoe_drift") +
              " --ranks-per-node 8 --redundant 8 --snapshot 7 --out " + dir.Join("p.yaml"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("snapshot 7 of 10"));
  EXPECT_THAT(r.out, HasSubstr("imbalance"));
  EXPECT_THAT(r.out, HasSubstr("per layer"));
  const RunResult bad = RunHerd("plan --trace " + Trace("olmoe_drift") +
                                " --ranks-per-node 8 --snapshot 10 --out " + dir.Join("q.yaml"));
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, HasSubstr("--snapshot 10 is not in"));
}

TEST(PlanCliTest, MigrationAwareFromTheCurrentPlacement) {
  TempDir dir;
  const std::string t0 = dir.Join("t0.yaml"), t1 = dir.Join("t1.json");
  const std::string common =
      "plan --trace " + Trace("qwen3moe30b_drift") + " --ranks-per-node 32 --redundant 32 ";
  ASSERT_EQ(RunHerd(common + "--snapshot 0 --out " + t0).exit_code, 0);
  const RunResult r = RunHerd(common + "--snapshot 1 --json --current " + t0 + " --out " + t1);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["migration_aware"].get<bool>());
  EXPECT_EQ(j["before"], "current");
  const int64_t moved = j["experts_moved"];
  const int64_t scratch_moved = j["replan_from_scratch"]["experts_moved"];
  EXPECT_LT(moved, scratch_moved / 2);
  EXPECT_LT(j["imbalance_after"].get<double>(), j["imbalance_before"].get<double>());
  EXPECT_TRUE(ReadPlacementFile(t1).ok());
}

TEST(PlanCliTest, ModelGivesMemoryAndChecksCapacity) {
  TempDir dir;
  // A trace for the tiny test model: 2 layers x 8 experts, top-2.
  ExpertLoadTrace t;
  t.name = "tiny";
  t.num_layers = 2;
  t.num_experts = 8;
  t.num_snapshots = 1;
  t.top_k = 2;
  t.tokens_per_snapshot = {100};
  t.loads = {40, 30, 20, 30, 20, 20, 20, 20, 10, 60, 20, 20, 30, 20, 20, 20};
  const std::string trace = dir.Join("tiny.json");
  ASSERT_TRUE(WriteExpertLoadTrace(t, trace).ok());
  const std::string model = TestDataPath("llamacpp-tiny/tiny-q4_0.gguf");
  const RunResult r = RunHerd("plan --trace " + trace + " --model " + model +
                              " --ranks-per-node 2 --redundant 2 --memory-per-rank 1MiB --json "
                              "--out " +
                              dir.Join("p.yaml"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_FALSE(j["memory"].is_null());
  const int64_t expert = j["memory"]["expert_bytes"], dense = j["memory"]["dense_bytes"];
  EXPECT_GT(expert, 0);
  EXPECT_GT(dense, 0);
  EXPECT_EQ(j["memory"]["bytes_per_rank"].get<int64_t>(), dense + 2 * 5 * expert);
  EXPECT_EQ(j["dispatch"]["hidden_size"], 64);
  // Too little memory for 5 slots per rank.
  const RunResult small = RunHerd(
      "plan --trace " + trace + " --model " + model +
      " --ranks-per-node 2 --redundant 2 --memory-per-rank 1000 --out " + dir.Join("q.yaml"));
  EXPECT_EQ(small.exit_code, 2);
  EXPECT_THAT(small.err, HasSubstr("memory per rank is too small"));
  // A model whose shape does not match the trace.
  const RunResult mismatch = RunHerd("plan --trace " + Trace("olmoe_zipf1.0") + " --model " +
                                     model + " --ranks-per-node 8 --out " + dir.Join("r.yaml"));
  EXPECT_EQ(mismatch.exit_code, 2);
  EXPECT_THAT(mismatch.err, HasSubstr("16 MoE layers x 64 experts but the model"));
}

TEST(PlanCliTest, RecommendFindsACluster) {
  TempDir dir;
  const RunResult r = RunHerd("plan --recommend --target 1.05 --trace " + Trace("olmoe_zipf1.0") +
                              " --ranks-per-node 8 --max-nodes 2 --expert-bytes 1000 "
                              "--memory-per-rank 200KB --json --out " +
                              dir.Join("p.yaml"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j["recommend"]["found"].get<bool>());
  EXPECT_EQ(j["recommend"]["cluster"]["num_ranks"], 8);
  EXPECT_EQ(j["recommend"]["cluster"]["slots_per_rank"], 9);
  EXPECT_LE(j["imbalance_after"].get<double>(), 1.05);
  const RunResult none = RunHerd("plan --recommend --target 1.05 --trace " +
                                 Trace("olmoe_zipf1.0") + " --ranks-per-node 8 --max-nodes 1");
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_THAT(none.err, HasSubstr("needs the memory per rank"));
}

TEST(PlanCliTest, BadInputGivesClearErrors) {
  TempDir dir;
  const std::string out = " --out " + dir.Join("p.yaml");
  const std::string broken = dir.Join("broken.json");
  testing::WriteFileText(broken, R"({"format": "moe-expert-load-trace/v1", "num_layers": 2, )"
                                 R"("num_experts": 4, "loads": [[[1, 2, 3, 4], [1, 2, 3]]]})");
  struct Case {
    std::string args;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"plan" + out, "--trace is required"},
      {"plan --trace " + Trace("dsv3_zipf1.0"), "--out is required"},
      {"plan --trace " + broken + out, "loads[0][1] must be a list of num_experts = 4 counts"},
      {"plan --trace " + dir.Join("missing.json") + out, "cannot read"},
      {"plan --trace " + Trace("dsv3_zipf1.0") + " --nodes 4 --ranks-per-node 8 --redundant 30" +
           out,
       "286 slots do not divide over 32 ranks; use 0 or 32 redundant experts"},
      {"plan --trace " + Trace("dsv3_zipf1.0") + " --groups 3 --ranks-per-node 8" + out,
       "--groups 3 does not divide the trace's 256 experts"},
      {"plan --trace " + Trace("dsv3_zipf1.0") +
           " --nodes 3 --ranks-per-node 8 --redundant 32 --mode hierarchical" + out,
       "number of nodes (3) must divide the number of groups (8)"},
      {"plan --trace " + Trace("dsv3_zipf1.0") + " --ranks-per-node 8 --mode local" + out,
       "mode must be auto, global or hierarchical"},
      {"plan --trace " + Trace("dsv3_zipf1.0") +
           " --ranks-per-node 8 --expert-bytes 44MB "
           "--memory-per-rank 10GB" +
           out,
       "memory per rank is too small"},
      {"plan --trace " + Trace("dsv3_zipf1.0") + " --ranks-per-node 8 --memory-per-rank 8GB" + out,
       "--memory-per-rank needs the size of an expert"},
      {"plan --trace " + Trace("dsv3_zipf1.0") + " --ranks-per-node 8 --expert-bytes lots" + out,
       "--expert-bytes must be a byte count"},
      {"plan --trace " + Trace("dsv3_zipf1.0") + " --ranks-per-node 8 --current " + broken + out,
       "unknown key"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    const RunResult r = RunHerd(c.args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_THAT(r.err, HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace herd
