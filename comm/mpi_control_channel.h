// The `mpi` control channel: host messages between the processes of an
// mpirun job, on a duplicate of MPI_COMM_WORLD of its own.
//
// Send is MPI_Isend of a private copy of the payload, waited on with the
// deadline. Recv polls MPI_Improbe (matched probe, so several threads may
// receive at once) and then takes the message with MPI_Imrecv, also under the
// deadline. A payload is one MPI message, so at most 1 GiB.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/control_channel.h"

namespace herd::comm {

// Initializes MPI if needed and duplicates MPI_COMM_WORLD. Collective: every
// rank of the job calls it. Blocks until all ranks joined or the deadline
// (DeadlineExceeded).
absl::StatusOr<std::unique_ptr<ControlChannel>> CreateMpiControlChannel(absl::Time deadline);

}  // namespace herd::comm
