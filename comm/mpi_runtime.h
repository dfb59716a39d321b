// MPI start-up and shut-down for the mpi backends, without MPI types in the
// interface (callers need no mpi.h).
//
// MPI is initialized once per process with MPI_THREAD_MULTIPLE (a control
// channel and a communicator may be used from different threads) and with
// MPI_ERRORS_RETURN on MPI_COMM_WORLD, so that errors become a Status instead
// of killing the job. MPI_Init itself has no deadline: it is Open MPI's
// start-up handshake with mpirun and runs before any peer can be missing.
#pragma once

#include "absl/status/status.h"

namespace herd::comm {

// Initializes MPI unless it is already initialized (by this function or by
// the program), then checks the thread level. When this function initialized
// MPI, MPI_Finalize runs at exit (see FinalizeMpi). Thread-safe, idempotent.
// Errors: FailedPrecondition if MPI was finalized or gives less than
// MPI_THREAD_MULTIPLE; Internal if MPI_Init_thread fails.
absl::Status InitializeMpi();

// Calls MPI_Finalize if MPI is initialized and not finalized, unless a
// failed operation left a request that could be neither completed nor
// cancelled (see MarkMpiUnclean): MPI_Finalize could then wait forever for a
// dead peer, so the process exits without it and mpirun reports the job as
// failed. Blocks until the other live ranks finalize (Open MPI's fence).
// Thread-safe; later calls do nothing.
absl::Status FinalizeMpi();

// Records that a failed operation left a request behind (see FinalizeMpi).
void MarkMpiUnclean();
bool IsMpiUnclean();

// True when this process was started by mpirun / mpiexec (its environment
// carries the job's rank), so the mpi backends are the natural default.
bool LaunchedByMpirun();

}  // namespace herd::comm
