// The NCCL pre-flight check on whatever this machine has. Without a GPU (or
// a driver) every rank must stop at once with the same message naming each
// rank; on one GPU two ranks must be told they share it; with two or more
// GPUs they pass. Never a hang: the deadline is far beyond the time allowed.
#include "comm/nccl_preflight.h"

#include <cstdlib>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "comm/local_world.h"
#include "comm/nccl_communicator.h"
#include "gtest/gtest.h"

namespace herd::comm {
namespace {

std::vector<absl::StatusOr<int>> RunOnRanks(int num_ranks) {
  auto world = LocalWorld::Create(num_ranks);
  EXPECT_TRUE(world.ok()) << world.status();
  std::vector<absl::StatusOr<int>> results(num_ranks, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int r = 0; r < num_ranks; ++r) {
    threads.emplace_back([&, r] {
      auto control = (*world)->CreateControlChannel(r);
      if (!control.ok()) {
        results[r] = control.status();
        return;
      }
      NcclPreflightOptions options;
      options.socket_ifname = "lo";
      results[r] = RunNcclPreflight(**control, options, absl::Now() + absl::Seconds(120));
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

TEST(NcclPreflightTest, EveryRankGetsTheSameVerdictQuickly) {
  const absl::StatusOr<int> devices = NcclDeviceCount();
  const int num_devices = devices.ok() ? *devices : 0;
  for (int num_ranks : {1, 2}) {
    SCOPED_TRACE(num_ranks);
    const absl::Time start = absl::Now();
    const std::vector<absl::StatusOr<int>> results = RunOnRanks(num_ranks);
    EXPECT_LT(absl::Now() - start, absl::Seconds(30));
    if (num_devices >= num_ranks) {
      for (int r = 0; r < num_ranks; ++r) {
        ASSERT_TRUE(results[r].ok()) << results[r].status();
        EXPECT_EQ(*results[r], r);
      }
      continue;
    }
    const std::string message(results[0].status().message());
    for (const absl::StatusOr<int>& result : results) {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
      EXPECT_EQ(result.status().message(), message);
    }
    EXPECT_EQ(message.rfind("NCCL pre-flight check failed: ", 0), 0u) << message;
    if (num_devices == 0) {
      // Each rank is named with its host and why it has no device.
      for (int r = 0; r < num_ranks; ++r) {
        EXPECT_NE(message.find("rank " + std::to_string(r) + " (host "), std::string::npos)
            << message;
      }
    } else {
      EXPECT_NE(message.find("ranks 0,1 on host "), std::string::npos) << message;
      EXPECT_NE(message.find("NCCL runs one rank per GPU"), std::string::npos) << message;
    }
  }
}

TEST(NcclPreflightTest, VersionStrings) {
  EXPECT_EQ(NcclVersionString(22803), "2.28.3");
  EXPECT_EQ(NcclVersionString(21903), "2.19.3");
}

}  // namespace
}  // namespace herd::comm
