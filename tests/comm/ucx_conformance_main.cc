// The conformance suite on the ucx backends. Each rank is a separate process
// that joins from the environment only (HERD_RANK, HERD_WORLD_SIZE,
// HERD_LEADER_ADDRESS, HERD_LEADER_PORT); ctest starts 2, 3 and 4 of them
// with tests/support/ucx_ranks.sh. Every rank runs every test in the same
// order and exits with its own gtest result, so the launcher fails when any
// rank fails. Ranks other than 0 print only their failures, prefixed.
#include <cstdio>
#include <memory>
#include <string>

#include "comm/env.h"
#include "comm/ucx/ucx_communicator.h"
#include "comm/ucx/ucx_control_channel.h"
#include "gtest/gtest.h"
#include "tests/comm/conformance.h"
#include "tests/comm/process_ranks.h"

namespace herd::comm::testing {
namespace {

ProcessRankContext* g_context = nullptr;

#define HERD_COMM_UCX_CASE(name) \
  TEST(UcxConformance, name) { name(*g_context); }
HERD_COMM_CONFORMANCE_CASES(HERD_COMM_UCX_CASE)
#undef HERD_COMM_UCX_CASE

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
  herd::comm::testing::PrepareProcessRank("comm_ucx_conformance", **control);
  herd::comm::testing::ProcessRankContext context(control->get(), &CreateUcxCommunicator,
                                                  /*abort_returns=*/true);
  herd::comm::testing::g_context = &context;
  return RUN_ALL_TESTS();
}
