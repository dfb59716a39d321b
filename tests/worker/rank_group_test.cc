// RunRanks and PlannedWorldSize: threads of one process with the local
// backends, --comm checks, and --comm nccl on whatever this build and
// machine have (not built, no GPU for its pre-flight check, or a GPU).
#include "worker/rank_group.h"

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>

#include "comm/registry.h"
#include "gtest/gtest.h"

namespace herd {
namespace {

bool NcclBuilt() {
  for (const comm::CommunicatorBackend& b : comm::CommunicatorBackends()) {
    if (std::string(b.name) == "nccl") return true;
  }
  return false;
}

// Sets an environment variable for the test's lifetime.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

TEST(RankGroupTest, LocalRanksAreThreadsWithTheLocalBackends) {
  RankGroupOptions options;
  options.local_ranks = 3;
  EXPECT_EQ(PlannedWorldSize(options), 3);
  std::mutex mu;
  std::set<int> ranks;
  const absl::Status status =
      RunRanks(options, [&](comm::Communicator* comm, comm::ControlChannel* control) {
        EXPECT_EQ(std::string(comm->backend_name()), "local");
        EXPECT_EQ(std::string(control->backend_name()), "local");
        EXPECT_EQ(comm->world_size(), 3);
        EXPECT_EQ(control->rank(), comm->rank());
        std::lock_guard<std::mutex> lock(mu);
        ranks.insert(comm->rank());
        return absl::OkStatus();
      });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(ranks, (std::set<int>{0, 1, 2}));
}

TEST(RankGroupTest, OneRankRunsWithoutACommunicator) {
  int calls = 0;
  const absl::Status status =
      RunRanks(RankGroupOptions{}, [&](comm::Communicator* comm, comm::ControlChannel* control) {
        EXPECT_EQ(comm, nullptr);
        EXPECT_EQ(control, nullptr);
        ++calls;
        return absl::OkStatus();
      });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(calls, 1);
}

TEST(RankGroupTest, RejectsAnUnknownComm) {
  RankGroupOptions options;
  options.comm = "tcp";
  const absl::Status status = RunRanks(
      options, [](comm::Communicator*, comm::ControlChannel*) { return absl::OkStatus(); });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("must be ucx or nccl, or unset"), std::string::npos) << status;
}

// --comm nccl: a group of one rank, or two threads; NCCL then runs (GPUs
// permitting) or the build or its pre-flight check says why not, before the
// body runs.
TEST(RankGroupTest, NcclRunsOrSaysWhyNot) {
  for (const int local_ranks : {1, 2}) {
    SCOPED_TRACE(local_ranks);
    RankGroupOptions options;
    options.comm = "nccl";
    options.local_ranks = local_ranks;
    options.join_timeout = absl::Seconds(30);
    EXPECT_EQ(PlannedWorldSize(options), local_ranks);
    std::atomic<int> calls{0};
    const absl::Status status =
        RunRanks(options, [&](comm::Communicator* comm, comm::ControlChannel* control) {
          EXPECT_EQ(std::string(comm->backend_name()), "nccl");
          EXPECT_EQ(std::string(control->backend_name()), "local");
          EXPECT_EQ(comm->world_size(), local_ranks);
          ++calls;
          return absl::OkStatus();
        });
    if (!NcclBuilt()) {
      EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_NE(status.message().find("--comm nccl needs a build with NCCL"), std::string::npos)
          << status;
    } else if (!status.ok()) {
      // No GPU (or one GPU for two ranks): the pre-flight check's verdict.
      EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_NE(status.message().find("NCCL pre-flight check failed"), std::string::npos) << status;
    }
    EXPECT_EQ(calls.load(), status.ok() ? local_ranks : 0);
  }
}

// Ranks that the environment describes (as for --comm ucx) join over ucx's
// control channel; they are processes, so not threads as well.
TEST(RankGroupTest, NcclTakesItsRanksFromTheEnvironment) {
  const ScopedEnv world("HERD_WORLD_SIZE", "3");
  const ScopedEnv rank("HERD_RANK", "0");
  RankGroupOptions options;
  options.comm = "nccl";
  EXPECT_EQ(PlannedWorldSize(options), 3);
  options.local_ranks = 2;
  const absl::Status status = RunRanks(
      options, [](comm::Communicator*, comm::ControlChannel*) { return absl::OkStatus(); });
  if (NcclBuilt()) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("--local-ranks cannot be combined with ranks from"),
              std::string::npos)
        << status;
  } else {
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  }
}

}  // namespace
}  // namespace herd
