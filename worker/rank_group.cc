#include "worker/rank_group.h"

#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/local_world.h"
#include "comm/mpi_runtime.h"
#include "comm/registry.h"
#include "comm/ucx/ucx_env.h"
#include "core/logging.h"
#include "core/status.h"

namespace herd {
namespace {

int MpiWorldSizeFromEnvironment() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    if (const char* value = std::getenv(name)) return std::atoi(value);
  }
  return 1;
}

// "ucx", "nccl" or "" (decided by the launch), from the option or else
// HERD_COMM.
absl::StatusOr<std::string> ProcessBackend(const RankGroupOptions& options) {
  std::string comm = options.comm;
  if (comm.empty()) {
    if (const char* value = std::getenv("HERD_COMM")) comm = value;
  }
  if (!comm.empty() && comm != "ucx" && comm != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("--comm (or HERD_COMM) must be ucx or nccl, or unset to let the launch "
                     "decide (mpirun: mpi; else --local-ranks threads); got '",
                     comm, "'"));
  }
  return comm;
}

bool CommunicatorBuilt(const std::string& name) {
  for (const comm::CommunicatorBackend& b : comm::CommunicatorBackends()) {
    if (name == b.name) return true;
  }
  return false;
}

// This process is one rank: control messages over `control_backend` ("mpi"
// or "ucx"), the data plane over `comm_backend` (the same, or "nccl").
absl::Status RunProcessRank(const std::string& control_backend, const std::string& comm_backend,
                            const RankGroupOptions& options, const RankBody& body) {
  const bool mpi = control_backend == "mpi";
  if (mpi) HERD_RETURN_IF_ERROR(comm::InitializeMpi());
  const absl::Time deadline = absl::Now() + options.join_timeout;
  comm::CommContext context;
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<comm::ControlChannel> control,
                        comm::CreateControlChannel(control_backend, context, deadline));
  context.control = control.get();
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<comm::Communicator> communicator,
                        comm::CreateCommunicator(comm_backend, context, deadline));
  SetLogPrefix(absl::StrCat("rank ", communicator->rank()));
  absl::Status status = body(communicator.get(), control.get());
  if (!status.ok()) {
    // The peers may be blocked in a collective or a control receive this
    // rank will never join: fail them now rather than let each of them wait
    // for its deadline (mpi: MPI_Abort ends the job and does not return).
    HERD_LOG(ERROR) << status;
    communicator->Abort(status.message());
    control->Abort(status.message());
  }
  communicator.reset();
  control.reset();
  if (mpi) HERD_RETURN_IF_ERROR(comm::FinalizeMpi());
  return status;
}

// Threads of this process are the ranks: local control channels, and the
// data plane over `comm_backend` ("local" or "nccl").
absl::Status RunLocalRanks(int num_ranks, const std::string& comm_backend,
                           const RankGroupOptions& options, const RankBody& body) {
  HERD_ASSIGN_OR_RETURN(std::shared_ptr<comm::LocalWorld> world,
                        comm::LocalWorld::Create(num_ranks));
  std::vector<absl::Status> statuses(num_ranks);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < num_ranks; ++rank) {
    threads.emplace_back([&, rank] {
      statuses[rank] = [&]() -> absl::Status {
        comm::CommContext context;
        context.local_world = world;
        context.local_rank = rank;
        const absl::Time deadline = absl::Now() + options.join_timeout;
        HERD_ASSIGN_OR_RETURN(std::unique_ptr<comm::ControlChannel> control,
                              comm::CreateControlChannel("local", context, deadline));
        context.control = control.get();
        HERD_ASSIGN_OR_RETURN(std::unique_ptr<comm::Communicator> communicator,
                              comm::CreateCommunicator(comm_backend, context, deadline));
        return body(communicator.get(), control.get());
      }();
      if (!statuses[rank].ok()) world->Abort(rank, statuses[rank].message());
    });
  }
  for (std::thread& t : threads) t.join();
  // The root cause is the first rank that failed on its own; others report
  // the abort. Prefer an error that is not Aborted.
  for (const absl::Status& s : statuses) {
    if (!s.ok() && s.code() != absl::StatusCode::kAborted) return s;
  }
  for (const absl::Status& s : statuses) HERD_RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

}  // namespace

int PlannedWorldSize(const RankGroupOptions& options) {
  const absl::StatusOr<std::string> backend = ProcessBackend(options);
  if (backend.ok() && *backend == "ucx") {
    const absl::StatusOr<comm::UcxBootstrapEnv> env = comm::UcxBootstrapEnvFromProcess();
    return env.ok() ? env->world_size : 1;
  }
  if (comm::LaunchedByMpirun()) return MpiWorldSizeFromEnvironment();
  if (backend.ok() && *backend == "nccl") {
    if (const absl::StatusOr<comm::UcxBootstrapEnv> env = comm::UcxBootstrapEnvFromProcess();
        env.ok()) {
      return env->world_size;
    }
  }
  return options.local_ranks;
}

absl::Status RunRanks(const RankGroupOptions& options, const RankBody& body) {
  if (options.local_ranks < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--local-ranks must be >= 1, got ", options.local_ranks));
  }
  HERD_ASSIGN_OR_RETURN(const std::string backend, ProcessBackend(options));
  if (backend == "ucx") {
    if (options.local_ranks > 1) {
      return absl::InvalidArgumentError("--local-ranks cannot be combined with --comm ucx");
    }
    return RunProcessRank("ucx", "ucx", options, body);
  }
  const std::string data_plane = backend == "nccl" ? "nccl" : "";
  if (!data_plane.empty() && !CommunicatorBuilt(data_plane)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--comm ", data_plane,
                     " needs a build with NCCL (HERD_WITH_NCCL, on when CUDA is found); "
                     "this build has ",
                     comm::CommunicatorBackendNames()));
  }
  if (comm::LaunchedByMpirun() && MpiWorldSizeFromEnvironment() > 1) {
    if (options.local_ranks > 1) {
      return absl::InvalidArgumentError("--local-ranks cannot be combined with mpirun");
    }
    return RunProcessRank("mpi", data_plane.empty() ? "mpi" : data_plane, options, body);
  }
  // nccl between processes that the environment describes (Kubernetes, a
  // shell): their control channel is ucx's, as with --comm ucx.
  if (!data_plane.empty() && comm::UcxBootstrapEnvFromProcess().ok()) {
    if (options.local_ranks > 1) {
      return absl::InvalidArgumentError(
          "--local-ranks cannot be combined with ranks from HERD_WORLD_SIZE or LWS_GROUP_SIZE");
    }
    return RunProcessRank("ucx", data_plane, options, body);
  }
  // nccl forms a group even of one rank: its expert exchange then runs
  // through NCCL to itself, the device path on one GPU.
  if (options.local_ranks > 1 || !data_plane.empty()) {
    return RunLocalRanks(options.local_ranks, data_plane.empty() ? "local" : data_plane, options,
                         body);
  }
  return body(nullptr, nullptr);
}

}  // namespace herd
