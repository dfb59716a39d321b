// The NCCL pre-flight check: what CreateNcclCommunicator runs before NCCL
// starts, so that a machine or a network NCCL cannot use stops every rank
// with one clear message instead of a hang (or a bare "unhandled system
// error" minutes later).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/control_channel.h"

namespace herd::comm {

struct NcclPreflightOptions {
  // CUDA device of this rank; -1: rank modulo the device count.
  int cuda_device = -1;
  // The interface spec NCCL will use (the value of NCCL_SOCKET_IFNAME; ""
  // when unset); see comm/peer_reachability.h.
  std::string socket_ifname;
  // How long one probe connection between two ranks may take.
  absl::Duration probe_timeout = absl::Seconds(10);
};

// Collective over `control`'s group; every rank returns the same verdict.
// Checks on each rank: a driver is loaded and it supports the CUDA runtime
// herd was built with, a CUDA device exists (and the one asked for), the NCCL
// library loaded is not older than the headers herd was compiled with.
// Across ranks: every rank loaded the same NCCL version, no two ranks on one
// host share a GPU (NCCL refuses that), and with more than one rank every
// rank can open a TCP connection to every other over the interface NCCL
// would use (CheckPeerReachability). Returns this rank's CUDA device;
// FailedPrecondition naming the ranks, hosts and what is wrong; the
// channel's errors when a rank does not take part.
absl::StatusOr<int> RunNcclPreflight(ControlChannel& control, const NcclPreflightOptions& options,
                                     absl::Time deadline);

// "2.28.3" for an NCCL version code.
std::string NcclVersionString(int code);

}  // namespace herd::comm
