// Expert-load traces: the fixture format, Herd's writer, gzip, and malformed
// input.
#include "coordinator/placement/load_trace.h"

#include <string>

#include "coordinator/placement/gzip_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/coordinator/eplb_fixture.h"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::testing::HasSubstr;

TEST(LoadTraceTest, ReadsEveryFixtureTrace) {
  for (const std::string& name : testing::FixtureTraceNames()) {
    SCOPED_TRACE(name);
    const ExpertLoadTrace t = testing::ReadFixtureTrace(name);
    EXPECT_EQ(t.name, name);
    EXPECT_EQ(t.num_snapshots, name.find("drift") != std::string::npos ? 10 : 1);
    ASSERT_EQ(t.tokens_per_snapshot.size(), static_cast<size_t>(t.num_snapshots));
    EXPECT_EQ(t.tokens_per_snapshot[0], 65536);
    // Every layer sums to about tokens * top_k (binomial noise, README).
    for (int l = 0; l < t.num_layers; ++l) {
      int64_t sum = 0;
      for (int e = 0; e < t.num_experts; ++e) sum += t.Load(0, l, e);
      EXPECT_NEAR(static_cast<double>(sum), 65536.0 * t.top_k, 0.02 * 65536 * t.top_k);
    }
  }
  const ExpertLoadTrace dsv3 = testing::ReadFixtureTrace("dsv3_zipf1.0");
  EXPECT_EQ(dsv3.num_layers, 58);
  EXPECT_EQ(dsv3.num_experts, 256);
  EXPECT_EQ(dsv3.top_k, 8);
  EXPECT_EQ(dsv3.num_groups, 8);
  EXPECT_EQ(dsv3.shape, "dsv3");
}

TEST(LoadTraceTest, WriterRoundTripsPlainAndGzip) {
  ExpertLoadTrace t;
  t.name = "recorded by a test";
  t.shape = "tiny";
  t.num_layers = 2;
  t.num_experts = 4;
  t.num_snapshots = 3;
  t.top_k = 2;
  t.num_groups = 2;
  t.tokens_per_snapshot = {10, 12, 7};
  for (int i = 0; i < 3 * 2 * 4; ++i) t.loads.push_back((i * 7) % 11);
  testing::TempDir dir;
  for (const char* file : {"t.json", "t.json.gz"}) {
    SCOPED_TRACE(file);
    const std::string path = dir.Join(file);
    ASSERT_TRUE(WriteExpertLoadTrace(t, path).ok());
    absl::StatusOr<ExpertLoadTrace> back = ReadExpertLoadTrace(path);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->name, t.name);
    EXPECT_EQ(back->shape, t.shape);
    EXPECT_EQ(back->num_layers, 2);
    EXPECT_EQ(back->num_experts, 4);
    EXPECT_EQ(back->num_snapshots, 3);
    EXPECT_EQ(back->top_k, 2);
    EXPECT_EQ(back->num_groups, 2);
    EXPECT_EQ(back->tokens_per_snapshot, t.tokens_per_snapshot);
    EXPECT_EQ(back->loads, t.loads);
  }
  // The .gz file really is gzip.
  const std::vector<uint8_t> bytes = testing::ReadFileBytes(dir.Join("t.json.gz"));
  ASSERT_GE(bytes.size(), 2u);
  EXPECT_EQ(bytes[0], 0x1f);
  EXPECT_EQ(bytes[1], 0x8b);
  // Writing an invalid trace fails before touching the disk.
  t.loads.pop_back();
  EXPECT_FALSE(WriteExpertLoadTrace(t, dir.Join("bad.json")).ok());
}

TEST(LoadTraceTest, TraceLoadsPicksOrSumsSnapshots) {
  const ExpertLoadTrace t = testing::ReadFixtureTrace("mixtral8x7b_drift");
  absl::StatusOr<LoadMatrix> s3 = TraceLoads(t, 3);
  ASSERT_TRUE(s3.ok());
  EXPECT_EQ(s3->Layer(5)[2], static_cast<double>(t.Load(3, 5, 2)));
  absl::StatusOr<LoadMatrix> all = TraceLoads(t, -1);
  ASSERT_TRUE(all.ok());
  double expected = 0.0;
  for (int s = 0; s < t.num_snapshots; ++s) expected += static_cast<double>(t.Load(s, 7, 1));
  EXPECT_EQ(all->Layer(7)[1], expected);
  absl::StatusOr<LoadMatrix> missing = TraceLoads(t, 10);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("snapshot 10 is not in the trace"));
}

TEST(LoadTraceTest, MalformedTracesGiveClearErrors) {
  const std::string head =
      R"({"format": "moe-expert-load-trace/v1", "num_layers": 2, "num_experts": 3, )";
  struct Case {
    std::string text;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"{not json", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {R"({"format": "other", "num_layers": 1, "num_experts": 1, "loads": [[[1]]]})",
       "format is \"other\""},
      {R"({"num_layers": 1, "num_experts": 1, "loads": [[[1]]]})", "missing 'format'"},
      {head + R"("num_snapshots": 1})", "missing key 'loads'"},
      {head + R"("loads": [[[1,2,3]]]})",
       "loads[0] must be a list of num_layers = 2 layers, got 1"},
      {head + R"("loads": [[[1,2,3],[4,5]]]})",
       "loads[0][1] must be a list of num_experts = 3 counts, got 2"},
      {head + R"("loads": [[[1,2,3],[4,-5,6]]]})", "loads[0][1][1] = -5 is negative"},
      {head + R"("loads": [[[1,2,3],[4,5.5,6]]]})", "loads[0][1][1] must be an integer count"},
      {head + R"("num_snapshots": 2, "loads": [[[1,2,3],[4,5,6]]]})",
       "'loads' has 1 snapshots, expected num_snapshots = 2"},
      {head + R"("num_groups": 2, "loads": [[[1,2,3],[4,5,6]]]})", "num_groups (2) must divide"},
      {head + R"("top_k": 9, "loads": [[[1,2,3],[4,5,6]]]})", "'top_k' = 9 is outside [0, 3]"},
      {head + R"("tokens_per_snapshot": "many", "loads": [[[1,2,3],[4,5,6]]]})",
       "'tokens_per_snapshot' must be an integer or a list"},
      {R"({"format": "moe-expert-load-trace/v1", "num_layers": 0, "num_experts": 3, "loads": []})",
       "'num_layers' = 0 is outside"},
      {R"({"format": "moe-expert-load-trace/v1", "num_layers": "2", "num_experts": 3})",
       "'num_layers' must be an integer"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    absl::StatusOr<ExpertLoadTrace> t = ParseExpertLoadTrace(c.text, "trace.json");
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(t.status().message()), HasSubstr("trace.json: "));
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(c.message));
  }
}

TEST(LoadTraceTest, OptionalKeysHaveDefaults) {
  absl::StatusOr<ExpertLoadTrace> t = ParseExpertLoadTrace(
      R"({"format": "moe-expert-load-trace/v1", "num_layers": 2, "num_experts": 3,
          "family": "ignored", "params": {"s": 1}, "loads": [[[1,2,3],[4,5,6]]]})",
      "trace.json");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->num_snapshots, 1);
  EXPECT_EQ(t->num_groups, 1);
  EXPECT_EQ(t->top_k, 0);
  EXPECT_TRUE(t->tokens_per_snapshot.empty());
  EXPECT_EQ(t->Load(0, 1, 2), 6);
}

TEST(LoadTraceTest, UnreadableAndCorruptFiles) {
  EXPECT_EQ(ReadExpertLoadTrace("/nonexistent/trace.json").status().code(),
            absl::StatusCode::kNotFound);
  testing::TempDir dir;
  // A truncated gzip stream is DataLoss, not a parse error of half a file.
  const std::vector<uint8_t> gz =
      testing::ReadFileBytes(testing::TestDataPath("placement/traces/olmoe_zipf1.0.json.gz"));
  const std::string cut = dir.Join("cut.json.gz");
  testing::WriteFileBytes(cut, gz.data(), gz.size() / 2);
  absl::StatusOr<ExpertLoadTrace> t = ReadExpertLoadTrace(cut);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kDataLoss) << t.status();
  const std::string empty = dir.Join("empty.json");
  testing::WriteFileText(empty, "");
  EXPECT_EQ(ReadExpertLoadTrace(empty).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace herd
