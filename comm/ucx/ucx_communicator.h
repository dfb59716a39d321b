// The `ucx` data plane: one process per rank, host memory, UCP tag messages
// between ranks that joined from environment variables (comm/ucx/ucx_env.h),
// no MPI. UCX picks the transport per pair of ranks: shared memory (posix,
// sysv, cma) on one host, TCP (or RDMA where present) between hosts;
// UCX_TLS and UCX_NET_DEVICES narrow the choice.
//
// Every collective is direct, as in the mpi backend: each rank posts a
// receive from, and a send to, every peer it exchanges data with, then polls
// with a deadline (comm/ucx/ucx_requests.h), so a timeout names exactly the
// ranks that did not deliver. The block for this rank itself is a memcpy.
// Each collective takes the next 32-bit sequence number of its communicator
// as its tag, so that a rank that disagrees on the order of calls gets a
// size or deadline error instead of another call's data.
//
// Abort() sends a notice to this communicator on every rank: their pending
// and later calls return Aborted naming this rank, and so do this rank's.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"

namespace herd::comm {

// Joins the process's ucx world if needed (blocks until every rank joined,
// or the deadline) and opens a communicator on it. Collective: every rank
// creates its ucx channels and communicators in the same order, which gives
// them the same channel id. Not thread-safe with other creations. Errors:
// as UcxWorld::Join.
absl::StatusOr<std::unique_ptr<Communicator>> CreateUcxCommunicator(absl::Time deadline);

}  // namespace herd::comm
