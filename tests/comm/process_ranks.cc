#include "tests/comm/process_ranks.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include "comm/env.h"
#include "core/logging.h"
#include "gtest/gtest.h"

namespace herd::comm::testing {
namespace {

// Failures of ranks other than 0, one line each.
class RankFailurePrinter final : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed()) {
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
    }
  }

 private:
  const int rank_;
};

}  // namespace

std::unique_ptr<Communicator> ProcessRankContext::NewCommunicator() {
  auto comm = factory_(DeadlineAfterMs(60000));
  EXPECT_TRUE(comm.ok()) << comm.status();
  return comm.ok() ? std::move(comm).value() : nullptr;
}

void PrepareProcessRank(const char* program, const ControlChannel& control) {
  const int rank = control.rank();
  herd::SetLogPrefix("rank " + std::to_string(rank));
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  std::fprintf(stderr, "%s: rank %d of %d on host %s, pid %d\n", program, rank,
               control.world_size(), host, static_cast<int>(getpid()));
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
}

}  // namespace herd::comm::testing
