// Starts the ranks of this process and hands each its communicator.
//
// Four launches, one code path for the caller:
//   - one rank: the body runs once with no communicator (no communication);
//   - mpirun -np N: this process is one rank; MPI is initialized and the body
//     runs once with an MPI communicator;
//   - --comm ucx (or HERD_COMM=ucx): this process is one rank of a group
//     described by environment variables (HERD_RANK, HERD_WORLD_SIZE,
//     HERD_LEADER_ADDRESS, ...: comm/ucx/ucx_env.h), no mpirun; the body runs
//     once with a ucx communicator;
//   - --local-ranks N: N threads of this process are the ranks (the `local`
//     backends); the body runs once per thread;
//   - --comm nccl (or HERD_COMM=nccl): the data plane is NCCL on the GPUs,
//     with the control channel of the launch: mpi under mpirun; ucx when the
//     environment describes the group as for --comm ucx (HERD_WORLD_SIZE or
//     LWS_GROUP_SIZE set); else local, for --local-ranks threads or one
//     thread (a group of one rank, whose expert exchange runs through NCCL
//     to itself).
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "comm/control_channel.h"

namespace herd {

struct RankGroupOptions {
  // Ranks as threads of this process; ignored under mpirun. 1 = no threads.
  int local_ranks = 1;
  // How ranks are processes: "" = the HERD_COMM variable, else by launch
  // (mpi under mpirun); "ucx" = join the group that the environment
  // describes; "nccl" = the launch's ranks with NCCL as the data plane.
  // Comes from the commands' --comm flag.
  std::string comm;
  // Deadline for joining the group.
  absl::Duration join_timeout = absl::Seconds(120);
};

// The number of ranks RunRanks will start for `options` (mpirun's world size
// under mpirun, HERD_WORLD_SIZE or LWS_GROUP_SIZE with ucx; 1 when those are
// unset, in which case RunRanks reports the error).
int PlannedWorldSize(const RankGroupOptions& options);

// The body each rank runs: its data-plane communicator and its control
// channel (host messages, e.g. step plans), both nullptr for a single rank
// and valid only during the call.
using RankBody =
    std::function<absl::Status(comm::Communicator* comm, comm::ControlChannel* control)>;

// Runs `body` on every rank of this process and blocks until all return.
// When a local rank fails, the others are aborted so that none waits for its
// deadline. Returns the error of the lowest failing rank of this process, or
// OK. InvalidArgument when local_ranks < 1, local ranks are asked for
// under mpirun or with ucx, or `comm` (or HERD_COMM) is not "", "ucx" or
// "nccl"; NotFound when this build has no NCCL (comm/registry.h).
absl::Status RunRanks(const RankGroupOptions& options, const RankBody& body);

}  // namespace herd
