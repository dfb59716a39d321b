// The reachability probe of the NCCL pre-flight check under mpirun, for the
// network-namespace test (tests/integration/reachability_netns_test.sh): each
// rank runs CheckPeerReachability over the interface NCCL_SOCKET_IFNAME
// names and prints its verdict. Exit 0 when the verdict is the expected one
// ("reachable": OK; "unreachable": FailedPrecondition naming an unreachable
// peer) on this rank, 1 otherwise, 2 for bad usage or a failed MPI start.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/mpi_control_channel.h"
#include "comm/mpi_runtime.h"
#include "comm/peer_reachability.h"

int main(int argc, char** argv) {
  const std::string expect = argc == 2 ? argv[1] : "";
  if (expect != "reachable" && expect != "unreachable") {
    std::fprintf(stderr, "usage: comm_reachability_mpi reachable|unreachable\n");
    return 2;
  }
  auto control = herd::comm::CreateMpiControlChannel(herd::comm::DeadlineAfterMs(60000));
  if (!control.ok()) {
    std::fprintf(stderr, "comm_reachability_mpi: %s\n", control.status().ToString().c_str());
    return 2;
  }
  const char* ifname = std::getenv("NCCL_SOCKET_IFNAME");
  const absl::Status status =
      herd::comm::CheckPeerReachability(**control, ifname != nullptr ? ifname : "",
                                        absl::Seconds(5), absl::Now() + absl::Seconds(60));
  const int rank = (*control)->rank();
  std::printf("rank %d: %s\n", rank, status.ToString().c_str());
  std::fflush(stdout);
  control->reset();
  (void)herd::comm::FinalizeMpi();
  const bool as_expected =
      expect == "reachable"
          ? status.ok()
          : status.code() == absl::StatusCode::kFailedPrecondition &&
                status.message().find("connect: Connection refused") != std::string::npos;
  return as_expected ? 0 : 1;
}
