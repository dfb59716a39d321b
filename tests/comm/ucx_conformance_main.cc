// The conformance suite on the ucx backends. Each rank is a separate process
// that joins from the environment only (HERD_RANK, HERD_WORLD_SIZE,
// HERD_LEADER_ADDRESS, HERD_LEADER_PORT); ctest starts 2, 3 and 4 of them
// with tests/support/ucx_ranks.sh. Every rank runs every test in the same
// order and exits with its own gtest result, so the launcher fails when any
// rank fails. Ranks other than 0 print only their failures, prefixed.
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "comm/env.h"
#include "comm/ucx/ucx_communicator.h"
#include "comm/ucx/ucx_control_channel.h"
#include "core/logging.h"
#include "gtest/gtest.h"
#include "tests/comm/conformance.h"

namespace herd::comm::testing {
namespace {

class UcxRankContext final : public RankContext {
 public:
  explicit UcxRankContext(ControlChannel* control) : control_(control) {}
  int rank() const override { return control_->rank(); }
  int world_size() const override { return control_->world_size(); }
  std::unique_ptr<Communicator> NewCommunicator() override {
    auto comm = CreateUcxCommunicator(DeadlineAfterMs(60000));
    EXPECT_TRUE(comm.ok()) << comm.status();
    return comm.ok() ? std::move(comm).value() : nullptr;
  }
  ControlChannel& control() override { return *control_; }
  bool abort_returns() const override { return true; }
  bool names_missing_peer() const override { return true; }

 private:
  ControlChannel* const control_;
};

UcxRankContext* g_context = nullptr;

#define HERD_COMM_UCX_CASE(name) \
  TEST(UcxConformance, name) { name(*g_context); }
HERD_COMM_CONFORMANCE_CASES(HERD_COMM_UCX_CASE)
#undef HERD_COMM_UCX_CASE

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
}  // namespace herd::comm::testing

int main(int argc, char** argv) {
  using namespace herd::comm;
  ::testing::InitGoogleTest(&argc, argv);
  auto control = CreateUcxControlChannel(DeadlineAfterMs(60000));
  if (!control.ok()) {
    std::fprintf(stderr, "comm_ucx_conformance: %s\n", control.status().ToString().c_str());
    return 1;
  }
  const int rank = (*control)->rank();
  herd::SetLogPrefix("rank " + std::to_string(rank));
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  std::fprintf(stderr, "comm_ucx_conformance: rank %d of %d on host %s, pid %d\n", rank,
               (*control)->world_size(), host, static_cast<int>(getpid()));
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new herd::comm::testing::RankFailurePrinter(rank));
  }
  herd::comm::testing::UcxRankContext context(control->get());
  herd::comm::testing::g_context = &context;
  return RUN_ALL_TESTS();
}
