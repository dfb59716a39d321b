// The conformance suite on the local backends: N = 1, 2, 3, 4 ranks as
// threads of this process, plus what only threads can check (an Abort seen
// by every rank at once).
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/local_world.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/comm/conformance.h"

namespace herd::comm::testing {
namespace {

using ::testing::HasSubstr;

class LocalRankContext final : public RankContext {
 public:
  LocalRankContext(std::shared_ptr<LocalWorld> world, int rank)
      : world_(std::move(world)), rank_(rank) {
    auto control = world_->CreateControlChannel(rank);
    EXPECT_TRUE(control.ok()) << control.status();
    if (control.ok()) control_ = std::move(control).value();
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_->world_size(); }
  std::unique_ptr<Communicator> NewCommunicator() override {
    auto comm = world_->CreateCommunicator(rank_);
    EXPECT_TRUE(comm.ok()) << comm.status();
    return comm.ok() ? std::move(comm).value() : nullptr;
  }
  ControlChannel& control() override { return *control_; }
  bool abort_returns() const override { return true; }
  bool names_missing_peer() const override { return true; }

 private:
  std::shared_ptr<LocalWorld> world_;
  const int rank_;
  std::unique_ptr<ControlChannel> control_;
};

// Runs `body` on `num_ranks` threads sharing a fresh world.
template <typename Body>
void RunOnThreads(int num_ranks, const Body& body) {
  auto world = LocalWorld::Create(num_ranks);
  ASSERT_TRUE(world.ok()) << world.status();
  std::vector<std::thread> threads;
  for (int r = 0; r < num_ranks; ++r) {
    threads.emplace_back([&, r] {
      LocalRankContext ctx(*world, r);
      body(ctx);
    });
  }
  for (std::thread& t : threads) t.join();
}

class LocalConformance : public ::testing::TestWithParam<int> {};

#define HERD_COMM_LOCAL_CASE(name) \
  TEST_P(LocalConformance, name) { RunOnThreads(GetParam(), name); }
HERD_COMM_CONFORMANCE_CASES(HERD_COMM_LOCAL_CASE)
#undef HERD_COMM_LOCAL_CASE

INSTANTIATE_TEST_SUITE_P(Threads, LocalConformance, ::testing::Values(1, 2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat(info.param, "ranks");
                         });

TEST(LocalWorldTest, RejectsBadSizesAndRanks) {
  EXPECT_EQ(LocalWorld::Create(0).status().code(), absl::StatusCode::kInvalidArgument);
  auto world = LocalWorld::Create(2);
  ASSERT_TRUE(world.ok());
  EXPECT_EQ((*world)->CreateCommunicator(2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*world)->CreateControlChannel(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LocalWorldTest, AbortWakesEveryRankOfTheWorld) {
  RunOnThreads(3, [](RankContext& ctx) {
    std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
    ASSERT_NE(comm, nullptr);
    const absl::Time start = absl::Now();
    absl::Status status;
    if (ctx.rank() == 0) {
      absl::SleepFor(absl::Milliseconds(100));
      comm->Abort("the test says so");
      status = comm->Barrier(DeadlineAfterMs(30000));
    } else if (ctx.rank() == 1) {
      status = comm->Barrier(DeadlineAfterMs(30000));
    } else {
      status = ctx.control().Recv(0, 5, DeadlineAfterMs(30000)).status();
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kAborted) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("rank 0 aborted: the test says so"));
    EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "waiters were not woken";
    EXPECT_EQ(ctx.control().Send(0, 1, "x", DeadlineAfterMs(1000)).code(),
              absl::StatusCode::kAborted);
  });
}

TEST(LocalWorldTest, GroupsFailIndependently) {
  RunOnThreads(2, [](RankContext& ctx) {
    std::unique_ptr<Communicator> broken = ctx.NewCommunicator();
    std::unique_ptr<Communicator> healthy = ctx.NewCommunicator();
    ASSERT_NE(broken, nullptr);
    ASSERT_NE(healthy, nullptr);
    if (ctx.rank() == 0) {
      EXPECT_EQ(broken->Barrier(DeadlineAfterMs(200)).code(), absl::StatusCode::kDeadlineExceeded);
    }
    EXPECT_TRUE(healthy->Barrier(DeadlineAfterMs(30000)).ok());
    if (ctx.rank() == 1) {
      // Rank 1 comes late to the broken group: it sees rank 0's failure.
      const absl::Status late = broken->Barrier(DeadlineAfterMs(30000));
      EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition) << late;
      EXPECT_THAT(std::string(late.message()), HasSubstr("rank(s) 1 did not take part"));
    }
  });
}

TEST(LocalWorldTest, MismatchedCollectivesAreReported) {
  RunOnThreads(2, [](RankContext& ctx) {
    std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
    ASSERT_NE(comm, nullptr);
    int value = ctx.rank();
    const absl::Status status =
        ctx.rank() == 0 ? comm->Barrier(DeadlineAfterMs(30000))
                        : comm->Broadcast(0, &value, sizeof(value), DeadlineAfterMs(30000));
    EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("called"));
  });
}

}  // namespace
}  // namespace herd::comm::testing
