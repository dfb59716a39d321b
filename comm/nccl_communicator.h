// The `nccl` data plane: device memory, NCCL 2.28 (built when HERD_WITH_NCCL,
// in its own library herd_comm_nccl so the rest builds without CUDA).
//
// Bootstrap: rank 0 creates the ncclUniqueId and broadcasts it over the
// ControlChannel; every rank then joins with ncclCommInitRankConfig in
// nonblocking mode, polled until the deadline. Collectives are enqueued on the
// communicator's own CUDA stream (all-to-all-v as grouped ncclSend/ncclRecv,
// the block for this rank as a device-to-device cudaMemcpyAsync) and the call
// polls cudaStreamQuery and ncclCommGetAsyncError until done or the deadline.
// On a missed deadline or an asynchronous NCCL error the communicator is
// aborted (ncclCommAbort), which stops its kernels; NCCL cannot tell which
// peer is missing, so the error names the operation only.
//
// NCCL reads its own environment: NCCL_SOCKET_IFNAME (bootstrap and socket
// transport interface, e.g. "lo" in tests), NCCL_DEBUG, NCCL_IB_*. They are
// printed by CommEnvReport (comm/env.h).
#pragma once

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"
#include "comm/control_channel.h"

namespace herd::comm {

// Number of CUDA devices this process can use. Errors (no driver, no device)
// carry CUDA's message; GPU tests skip on them.
absl::StatusOr<int> NcclDeviceCount();

// Joins every rank of `control`'s group into one NCCL communicator on CUDA
// device `cuda_device` (-1: control.rank() modulo the device count), after
// the pre-flight check (comm/nccl_preflight.h) passed on every rank.
// Collective over `control`. Blocks until every rank joined or the deadline.
// `control` is only used during the call. Errors: FailedPrecondition (the
// pre-flight check's message, the same on every rank), DeadlineExceeded,
// Internal (CUDA or NCCL message).
absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(ControlChannel& control,
                                                                     int cuda_device,
                                                                     absl::Time deadline);

}  // namespace herd::comm
