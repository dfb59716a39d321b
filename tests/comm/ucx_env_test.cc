// Where a ucx rank finds its group: the environment contract of
// comm/ucx/ucx_env.h (HERD_*, LeaderWorkerSet, StatefulSet), and its errors.
#include "comm/ucx/ucx_env.h"

#include <map>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace herd::comm {
namespace {

using ::testing::HasSubstr;

struct FakeEnv {
  std::map<std::string, std::string> values;
  const char* operator()(const char* name) const {
    auto it = values.find(name);
    return it == values.end() ? nullptr : it->second.c_str();
  }
};

std::string ErrorOf(const FakeEnv& fake) {
  const absl::StatusOr<UcxBootstrapEnv> env = ParseUcxBootstrapEnv(fake);
  EXPECT_FALSE(env.ok());
  EXPECT_EQ(env.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(env.status().message());
}

TEST(UcxEnvTest, HerdVariables) {
  const FakeEnv fake{{{"HERD_RANK", "2"},
                      {"HERD_WORLD_SIZE", "3"},
                      {"HERD_LEADER_ADDRESS", "10.0.0.1"},
                      {"HERD_LEADER_PORT", "31000"}}};
  const absl::StatusOr<UcxBootstrapEnv> env = ParseUcxBootstrapEnv(fake);
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->rank, 2);
  EXPECT_EQ(env->world_size, 3);
  EXPECT_EQ(env->leader_address, "10.0.0.1");
  EXPECT_EQ(env->leader_port, 31000);
  EXPECT_EQ(env->rank_source, "HERD_RANK");
}

TEST(UcxEnvTest, LeaderWorkerSetVariablesAndDefaultPort) {
  const FakeEnv fake{{{"LWS_WORKER_INDEX", "1"},
                      {"LWS_GROUP_SIZE", "4"},
                      {"LWS_LEADER_ADDRESS", "herd-0.herd.default"},
                      {"HOSTNAME", "herd-0-3"}}};
  const absl::StatusOr<UcxBootstrapEnv> env = ParseUcxBootstrapEnv(fake);
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->rank, 1);  // LWS_WORKER_INDEX wins over the host name
  EXPECT_EQ(env->world_size, 4);
  EXPECT_EQ(env->leader_address, "herd-0.herd.default");
  EXPECT_EQ(env->leader_port, 29500);
}

TEST(UcxEnvTest, HerdVariablesWinOverLeaderWorkerSet) {
  const FakeEnv fake{{{"HERD_RANK", "0"},
                      {"LWS_WORKER_INDEX", "1"},
                      {"HERD_WORLD_SIZE", "2"},
                      {"LWS_GROUP_SIZE", "8"}}};
  const absl::StatusOr<UcxBootstrapEnv> env = ParseUcxBootstrapEnv(fake);
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->rank, 0);
  EXPECT_EQ(env->world_size, 2);
  EXPECT_EQ(env->leader_address, "");  // rank 0 needs none
}

TEST(UcxEnvTest, StatefulSetOrdinalFromHostname) {
  const FakeEnv fake{
      {{"HOSTNAME", "herd-worker-12"}, {"HERD_WORLD_SIZE", "16"}, {"HERD_LEADER_ADDRESS", "h"}}};
  const absl::StatusOr<UcxBootstrapEnv> env = ParseUcxBootstrapEnv(fake);
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->rank, 12);
  EXPECT_THAT(env->rank_source, HasSubstr("HOSTNAME"));
}

TEST(UcxEnvTest, MissingVariablesAreNamed) {
  EXPECT_THAT(ErrorOf(FakeEnv{{{"HERD_RANK", "0"}}}), HasSubstr("HERD_WORLD_SIZE"));
  EXPECT_THAT(ErrorOf(FakeEnv{{{"HERD_WORLD_SIZE", "2"}, {"HOSTNAME", "laptop"}}}),
              HasSubstr("HERD_RANK"));
  EXPECT_THAT(ErrorOf(FakeEnv{{{"HERD_WORLD_SIZE", "2"}, {"HERD_RANK", "1"}}}),
              HasSubstr("HERD_LEADER_ADDRESS"));
  // An empty value counts as unset.
  EXPECT_THAT(ErrorOf(FakeEnv{{{"HERD_WORLD_SIZE", ""}, {"HERD_RANK", "0"}}}),
              HasSubstr("HERD_WORLD_SIZE"));
}

TEST(UcxEnvTest, InvalidValuesAreNamed) {
  EXPECT_THAT(ErrorOf(FakeEnv{{{"HERD_RANK", "x"}, {"HERD_WORLD_SIZE", "2"}}}),
              HasSubstr("HERD_RANK='x'"));
  EXPECT_THAT(ErrorOf(FakeEnv{{{"HERD_RANK", "0"}, {"HERD_WORLD_SIZE", "0"}}}),
              HasSubstr("HERD_WORLD_SIZE='0'"));
  EXPECT_THAT(ErrorOf(FakeEnv{
                  {{"HERD_RANK", "0"}, {"HERD_WORLD_SIZE", "2"}, {"HERD_LEADER_PORT", "70000"}}}),
              HasSubstr("HERD_LEADER_PORT='70000'"));
  const std::string too_big = ErrorOf(FakeEnv{{{"HERD_RANK", "3"}, {"HERD_WORLD_SIZE", "3"}}});
  EXPECT_THAT(too_big, HasSubstr("HERD_RANK"));
  EXPECT_THAT(too_big, HasSubstr("HERD_WORLD_SIZE"));
}

}  // namespace
}  // namespace herd::comm
