// The conformance suite on the mpi backends. Run it under mpirun: ctest does
// with np 2, 3 and 4 on loopback, and tests/integration runs it across three
// network namespaces over TCP and UCX. Every rank runs every test in the same
// order; each rank exits with its own gtest result, so mpirun fails when any
// rank fails. Ranks other than 0 print only their failures, prefixed.
#include <cstdio>
#include <memory>

#include "comm/env.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_control_channel.h"
#include "comm/mpi_runtime.h"
#include "gtest/gtest.h"
#include "tests/comm/conformance.h"
#include "tests/comm/process_ranks.h"

namespace herd::comm::testing {
namespace {

ProcessRankContext* g_context = nullptr;

#define HERD_COMM_MPI_CASE(name) \
  TEST(MpiConformance, name) { name(*g_context); }
HERD_COMM_CONFORMANCE_CASES(HERD_COMM_MPI_CASE)
#undef HERD_COMM_MPI_CASE

}  // namespace
}  // namespace herd::comm::testing

int main(int argc, char** argv) {
  using namespace herd::comm;
  ::testing::InitGoogleTest(&argc, argv);
  const absl::Status init = InitializeMpi();
  if (!init.ok()) {
    std::fprintf(stderr, "comm_mpi_conformance: %s\n", init.ToString().c_str());
    return 1;
  }
  auto control = CreateMpiControlChannel(DeadlineAfterMs(60000));
  if (!control.ok()) {
    std::fprintf(stderr, "comm_mpi_conformance: %s\n", control.status().ToString().c_str());
    return 1;
  }
  const int rank = (*control)->rank();
  herd::comm::testing::PrepareProcessRank("comm_mpi_conformance", **control);
  herd::comm::testing::ProcessRankContext context(control->get(), &CreateMpiCommunicator,
                                                  /*abort_returns=*/false);
  herd::comm::testing::g_context = &context;
  const int result = RUN_ALL_TESTS();
  control->reset();
  const absl::Status finalized = FinalizeMpi();
  if (!finalized.ok()) {
    std::fprintf(stderr, "comm_mpi_conformance: rank %d: %s\n", rank, finalized.ToString().c_str());
    return 1;
  }
  return result;
}
