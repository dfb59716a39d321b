// The `mpi` data plane: one process per rank, host memory, Open MPI's
// point-to-point messages (pml ob1 over vader/tcp, or pml ucx).
//
// Every collective is direct: each rank posts a nonblocking receive from, and
// a send to, every peer it exchanges data with, then polls with a deadline
// (comm/mpi_requests.h). No rank relays another's data, so a timeout names
// exactly the ranks that did not deliver. The block for this rank itself is a
// memcpy. Barrier sends a zero-byte message to every peer (O(world_size^2)
// messages, fine for the tens of ranks of one serving job).
//
// Each communicator works on its own duplicate of MPI_COMM_WORLD (with
// MPI_ERRORS_RETURN), so its messages never match another's.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/communicator.h"

namespace herd::comm {

// Initializes MPI if needed (comm/mpi_runtime.h) and duplicates
// MPI_COMM_WORLD with MPI_Comm_idup. Collective: every rank of the job calls
// it, in the same order as its other communicator creations. Blocks until all
// ranks joined or the deadline (DeadlineExceeded). Not thread-safe with other
// creations.
absl::StatusOr<std::unique_ptr<Communicator>> CreateMpiCommunicator(absl::Time deadline);

}  // namespace herd::comm
