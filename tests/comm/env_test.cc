// The comm layer's environment knobs: parsing, defaults, warnings, report.
#include "comm/env.h"

#include <map>
#include <string>
#include <vector>

#include "absl/time/clock.h"
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

TEST(CommEnvTest, DefaultsWhenUnset) {
  std::vector<std::string> warnings;
  const CommEnv env = ParseCommEnv(FakeEnv{}, &warnings);
  EXPECT_EQ(env.timeout_ms, 30000);
  EXPECT_EQ(env.poll_sleep_after_ms, 1000);
  EXPECT_EQ(env.poll_sleep_us, 50);
  EXPECT_TRUE(warnings.empty());
}

TEST(CommEnvTest, ReadsValidValues) {
  const FakeEnv fake{{{"HERD_COMM_TIMEOUT_MS", "1500"},
                      {"HERD_COMM_POLL_SLEEP_AFTER_MS", "0"},
                      {"HERD_COMM_POLL_SLEEP_US", "7"}}};
  std::vector<std::string> warnings;
  const CommEnv env = ParseCommEnv(fake, &warnings);
  EXPECT_EQ(env.timeout_ms, 1500);
  EXPECT_EQ(env.poll_sleep_after_ms, 0);
  EXPECT_EQ(env.poll_sleep_us, 7);
  EXPECT_TRUE(warnings.empty());
}

TEST(CommEnvTest, BadValuesKeepTheDefaultAndWarnByName) {
  const FakeEnv fake{{{"HERD_COMM_TIMEOUT_MS", "0"}, {"HERD_COMM_POLL_SLEEP_US", "fast"}}};
  std::vector<std::string> warnings;
  const CommEnv env = ParseCommEnv(fake, &warnings);
  EXPECT_EQ(env.timeout_ms, 30000);
  EXPECT_EQ(env.poll_sleep_us, 50);
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_THAT(warnings[0], HasSubstr("HERD_COMM_TIMEOUT_MS='0'"));
  EXPECT_THAT(warnings[1], HasSubstr("HERD_COMM_POLL_SLEEP_US='fast'"));
}

TEST(CommEnvTest, ReportSaysWhereEachValueCameFrom) {
  const FakeEnv fake{{{"HERD_COMM_TIMEOUT_MS", "1500"}, {"NCCL_SOCKET_IFNAME", "lo"}}};
  const std::string report = CommEnvReport(ParseCommEnv(fake, nullptr), fake);
  EXPECT_THAT(report, HasSubstr("HERD_COMM_TIMEOUT_MS=1500 (env)\n"));
  EXPECT_THAT(report, HasSubstr("HERD_COMM_POLL_SLEEP_US=50 (default)\n"));
  EXPECT_THAT(report, HasSubstr("NCCL_SOCKET_IFNAME=lo (read by NCCL)\n"));
  EXPECT_THAT(report, HasSubstr("UCX_NET_DEVICES unset\n"));
}

TEST(CommEnvTest, DeadlinesAreInTheFuture) {
  const absl::Time now = absl::Now();
  EXPECT_GE(DeadlineAfterMs(100) - now, absl::Milliseconds(100));
  EXPECT_GE(DefaultDeadline() - now, absl::Milliseconds(GetCommEnv().timeout_ms));
}

// How long `n` pauses of `pacer` take.
absl::Duration TimePauses(PollPacer& pacer, int n) {
  const absl::Time start = absl::Now();
  for (int i = 0; i < n; ++i) pacer.Pause();
  return absl::Now() - start;
}

// Knobs under which a pacer sleeps from its first pause, `sleep_us` first.
CommEnv SleepAtOnce(int64_t sleep_us) {
  CommEnv env;
  env.poll_sleep_after_ms = 0;
  env.poll_sleep_us = sleep_us;
  return env;
}

TEST(CommEnvTest, PacerSleepsOnlyAfterTheIdlePeriod) {
  CommEnv env = SleepAtOnce(20000);
  PollPacer sleeping(env);
  EXPECT_GE(TimePauses(sleeping, 1), absl::Milliseconds(15));

  env.poll_sleep_after_ms = 60000;
  PollPacer yielding(env);
  EXPECT_LT(TimePauses(yielding, 10), absl::Milliseconds(150));
}

// 100, 200, 400, 800 us, then 1 ms each: ten sleeps take at least 7.5 ms
// where ten of the first would take 1 ms. Progress starts over at 100 us.
TEST(CommEnvTest, PacerSleepsLongerTheLongerNothingHappens) {
  const CommEnv env = SleepAtOnce(100);
  PollPacer pacer(env);
  EXPECT_GE(TimePauses(pacer, 10), absl::Microseconds(7500));
  pacer.Progress();
  EXPECT_GE(TimePauses(pacer, 3), absl::Microseconds(700));
}

}  // namespace
}  // namespace herd::comm
