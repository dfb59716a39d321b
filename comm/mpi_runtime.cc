#include "comm/mpi_runtime.h"

#include <mpi.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "comm/mpi_requests.h"
#include "core/logging.h"

namespace herd::comm {
namespace {

std::mutex& InitMutex() {
  static std::mutex mutex;
  return mutex;
}

std::atomic<bool> g_unclean{false};
bool g_finalize_at_exit = false;  // guarded by InitMutex()

void FinalizeAtExit() { (void)FinalizeMpi(); }

}  // namespace

absl::Status InitializeMpi() {
  std::lock_guard<std::mutex> lock(InitMutex());
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) return absl::FailedPreconditionError("MPI was already finalized");
  int provided = MPI_THREAD_SINGLE;
  if (!initialized) {
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) {
      return absl::InternalError(absl::StrCat("MPI_Init_thread: ", MpiErrorString(rc)));
    }
    if (!g_finalize_at_exit) {
      g_finalize_at_exit = true;
      std::atexit(FinalizeAtExit);
    }
  } else {
    MPI_Query_thread(&provided);
  }
  if (provided < MPI_THREAD_MULTIPLE) {
    return absl::FailedPreconditionError(
        absl::StrCat("MPI provides thread level ", provided,
                     " but the comm layer needs MPI_THREAD_MULTIPLE (", MPI_THREAD_MULTIPLE,
                     "); initialize MPI with MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...)"));
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return absl::OkStatus();
}

absl::Status FinalizeMpi() {
  std::lock_guard<std::mutex> lock(InitMutex());
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return absl::OkStatus();
  if (g_unclean.load()) {
    HERD_LOG(WARN) << "skipping MPI_Finalize: a failed operation left MPI requests to a peer that "
                      "may be dead";
    return absl::FailedPreconditionError("MPI_Finalize skipped after a failed operation");
  }
  const int rc = MPI_Finalize();
  if (rc != MPI_SUCCESS) {
    return absl::InternalError(absl::StrCat("MPI_Finalize: ", MpiErrorString(rc)));
  }
  return absl::OkStatus();
}

void MarkMpiUnclean() { g_unclean.store(true); }
bool IsMpiUnclean() { return g_unclean.load(); }

bool LaunchedByMpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
         std::getenv("PMIX_RANK") != nullptr;
}

}  // namespace herd::comm
