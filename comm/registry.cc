#include "comm/registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "comm/mpi_communicator.h"
#include "comm/mpi_control_channel.h"
#include "comm/ucx/ucx_communicator.h"
#include "comm/ucx/ucx_control_channel.h"
#ifdef HERD_COMM_WITH_NCCL
#include "comm/nccl_communicator.h"
#endif

namespace herd::comm {
namespace {

absl::Status NeedLocalWorld(const CommContext& context) {
  if (context.local_world == nullptr) {
    return absl::InvalidArgumentError("the local backend needs CommContext::local_world");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ControlChannel>> LocalControl(const CommContext& context,
                                                             absl::Time) {
  if (absl::Status s = NeedLocalWorld(context); !s.ok()) return s;
  return context.local_world->CreateControlChannel(context.local_rank);
}

absl::StatusOr<std::unique_ptr<ControlChannel>> MpiControl(const CommContext&,
                                                           absl::Time deadline) {
  return CreateMpiControlChannel(deadline);
}

absl::StatusOr<std::unique_ptr<ControlChannel>> UcxControl(const CommContext&,
                                                           absl::Time deadline) {
  return CreateUcxControlChannel(deadline);
}

absl::StatusOr<std::unique_ptr<Communicator>> LocalComm(const CommContext& context, absl::Time) {
  if (absl::Status s = NeedLocalWorld(context); !s.ok()) return s;
  return context.local_world->CreateCommunicator(context.local_rank);
}

absl::StatusOr<std::unique_ptr<Communicator>> MpiComm(const CommContext&, absl::Time deadline) {
  return CreateMpiCommunicator(deadline);
}

absl::StatusOr<std::unique_ptr<Communicator>> UcxComm(const CommContext&, absl::Time deadline) {
  return CreateUcxCommunicator(deadline);
}

#ifdef HERD_COMM_WITH_NCCL
absl::StatusOr<std::unique_ptr<Communicator>> NcclComm(const CommContext& context,
                                                       absl::Time deadline) {
  if (context.control == nullptr) {
    return absl::InvalidArgumentError(
        "the nccl backend bootstraps over a control channel: set CommContext::control");
  }
  return CreateNcclCommunicator(*context.control, context.cuda_device, deadline);
}
#endif

constexpr ControlChannelBackend kControlChannelBackends[] = {
    {"local", "threads of one process", LocalControl},
    {"mpi", "processes of an mpirun job (Open MPI)", MpiControl},
    {"ucx", "processes that join from HERD_RANK/HERD_WORLD_SIZE/HERD_LEADER_ADDRESS (UCP)",
     UcxControl},
};

constexpr CommunicatorBackend kCommunicatorBackends[] = {
    {"local", "threads of one process, host memory", MemorySpace::kHost, LocalComm},
    {"mpi", "Open MPI point-to-point, host memory", MemorySpace::kHost, MpiComm},
    {"ucx", "UCP tag messages without MPI (shared memory, TCP), host memory", MemorySpace::kHost,
     UcxComm},
#ifdef HERD_COMM_WITH_NCCL
    {"nccl", "NCCL on CUDA devices, bootstrapped over the control channel", MemorySpace::kDevice,
     NcclComm},
#endif
};

template <typename Backend>
absl::StatusOr<const Backend*> Find(absl::Span<const Backend> backends, absl::string_view name,
                                    const char* kind) {
  for (const Backend& b : backends) {
    if (name == b.name) return &b;
  }
  std::vector<const char*> names;
  for (const Backend& b : backends) names.push_back(b.name);
  return absl::NotFoundError(absl::StrCat("unknown ", kind, " backend '", name,
                                          "' (built: ", absl::StrJoin(names, ", "), ")"));
}

}  // namespace

absl::Span<const ControlChannelBackend> ControlChannelBackends() { return kControlChannelBackends; }

absl::Span<const CommunicatorBackend> CommunicatorBackends() { return kCommunicatorBackends; }

std::string CommunicatorBackendNames() {
  std::vector<const char*> names;
  for (const CommunicatorBackend& b : kCommunicatorBackends) names.push_back(b.name);
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<std::unique_ptr<ControlChannel>> CreateControlChannel(absl::string_view backend,
                                                                     const CommContext& context,
                                                                     absl::Time deadline) {
  auto found = Find(ControlChannelBackends(), backend, "control channel");
  if (!found.ok()) return found.status();
  return (*found)->create(context, deadline);
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(absl::string_view backend,
                                                                 const CommContext& context,
                                                                 absl::Time deadline) {
  auto found = Find(CommunicatorBackends(), backend, "communicator");
  if (!found.ok()) return found.status();
  return (*found)->create(context, deadline);
}

}  // namespace herd::comm
