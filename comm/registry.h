// The one explicit list of comm backends: name -> factory.
//
//   control channels: local, mpi, ucx
//   communicators:    local, mpi, ucx, nccl (when built with HERD_WITH_NCCL)
//
// A rank first creates its ControlChannel, then its Communicator(s) with the
// channel in the CommContext (nccl bootstraps over it). Adding a backend means
// adding one line to a table in registry.cc.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "comm/communicator.h"
#include "comm/control_channel.h"
#include "comm/local_world.h"

namespace herd::comm {

// What a backend needs to join the group of ranks. Borrowed for the call.
struct CommContext {
  // local backends: the world of threads and this thread's rank.
  std::shared_ptr<LocalWorld> local_world;
  int local_rank = -1;
  // Communicator backends that bootstrap through the control plane (nccl).
  ControlChannel* control = nullptr;
  // nccl: CUDA device; -1 = rank modulo the number of devices.
  int cuda_device = -1;
};

struct ControlChannelBackend {
  const char* name;
  const char* summary;
  // Collective for the group; blocks until joined or the deadline.
  absl::StatusOr<std::unique_ptr<ControlChannel>> (*create)(const CommContext& context,
                                                            absl::Time deadline);
};

struct CommunicatorBackend {
  const char* name;
  const char* summary;
  MemorySpace memory_space;
  // Collective for the group; blocks until joined or the deadline.
  absl::StatusOr<std::unique_ptr<Communicator>> (*create)(const CommContext& context,
                                                          absl::Time deadline);
};

// Every backend built into this binary, in a fixed order.
absl::Span<const ControlChannelBackend> ControlChannelBackends();
absl::Span<const CommunicatorBackend> CommunicatorBackends();

// "local, mpi, ucx, nccl": the names, for usage messages.
std::string CommunicatorBackendNames();

// Finds a backend by name and creates this rank's endpoint. Errors: NotFound
// naming the known backends; InvalidArgument when the context lacks what the
// backend needs (a local world, a control channel); then the backend's own.
absl::StatusOr<std::unique_ptr<ControlChannel>> CreateControlChannel(absl::string_view backend,
                                                                     const CommContext& context,
                                                                     absl::Time deadline);
absl::StatusOr<std::unique_ptr<Communicator>> CreateCommunicator(absl::string_view backend,
                                                                 const CommContext& context,
                                                                 absl::Time deadline);

}  // namespace herd::comm
