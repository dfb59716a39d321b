// The backend registry: what is listed, lookups, and what each factory needs.
#include "comm/registry.h"

#include <string>
#include <thread>
#include <vector>

#include "comm/env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace herd::comm {
namespace {

using ::testing::HasSubstr;

TEST(RegistryTest, ListsTheBuiltBackends) {
  std::vector<std::string> names;
  for (const CommunicatorBackend& b : CommunicatorBackends()) names.push_back(b.name);
#ifdef HERD_COMM_WITH_NCCL
  EXPECT_EQ(names, (std::vector<std::string>{"local", "mpi", "ucx", "nccl"}));
  EXPECT_EQ(CommunicatorBackendNames(), "local, mpi, ucx, nccl");
#else
  EXPECT_EQ(names, (std::vector<std::string>{"local", "mpi", "ucx"}));
#endif
  std::vector<std::string> control;
  for (const ControlChannelBackend& b : ControlChannelBackends()) control.push_back(b.name);
  EXPECT_EQ(control, (std::vector<std::string>{"local", "mpi", "ucx"}));
  for (const CommunicatorBackend& b : CommunicatorBackends()) {
    EXPECT_EQ(b.memory_space,
              std::string(b.name) == "nccl" ? MemorySpace::kDevice : MemorySpace::kHost);
  }
}

TEST(RegistryTest, UnknownNamesListTheKnownOnes) {
  const auto status = CreateCommunicator("gloo", CommContext{}, DeadlineAfterMs(1000)).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("'gloo'"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("local, mpi, ucx"));
  EXPECT_EQ(CreateControlChannel("nccl", CommContext{}, DeadlineAfterMs(1000)).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(RegistryTest, LocalNeedsAWorld) {
  EXPECT_EQ(CreateCommunicator("local", CommContext{}, DeadlineAfterMs(1000)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateControlChannel("local", CommContext{}, DeadlineAfterMs(1000)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

#ifdef HERD_COMM_WITH_NCCL
TEST(RegistryTest, NcclNeedsAControlChannel) {
  EXPECT_EQ(CreateCommunicator("nccl", CommContext{}, DeadlineAfterMs(1000)).status().code(),
            absl::StatusCode::kInvalidArgument);
}
#endif

TEST(RegistryTest, LocalBackendsWorkThroughTheRegistry) {
  auto world = LocalWorld::Create(2);
  ASSERT_TRUE(world.ok());
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      CommContext context;
      context.local_world = *world;
      context.local_rank = r;
      auto control = CreateControlChannel("local", context, DeadlineAfterMs(30000));
      ASSERT_TRUE(control.ok()) << control.status();
      context.control = control->get();
      auto comm = CreateCommunicator("local", context, DeadlineAfterMs(30000));
      ASSERT_TRUE(comm.ok()) << comm.status();
      EXPECT_STREQ((*comm)->backend_name(), "local");
      int64_t value = 10 + r;
      int64_t gathered[2] = {0, 0};
      ASSERT_TRUE((*comm)->AllGather(&value, sizeof(value), gathered, DeadlineAfterMs(30000)).ok());
      EXPECT_EQ(gathered[0], 10);
      EXPECT_EQ(gathered[1], 11);
    });
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace
}  // namespace herd::comm
