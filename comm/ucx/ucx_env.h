// Where a `ucx` rank finds its group: environment variables only, so that a
// Kubernetes manifest (LeaderWorkerSet or StatefulSet) or a shell can start
// the ranks without mpirun or ssh. Each knob is named, typed, defaulted and
// documented here (the style of comm/env.h):
//
//   HERD_RANK            int in [0, world size); this process's rank.
//       Else LWS_WORKER_INDEX (LeaderWorkerSet), else the StatefulSet ordinal:
//       the trailing "-N" of HOSTNAME ("herd-2" is rank 2). Required.
//   HERD_WORLD_SIZE      int in [1, 65535]; the number of ranks.
//       Else LWS_GROUP_SIZE. Required.
//   HERD_LEADER_ADDRESS  host name or IP address of rank 0.
//       Else LWS_LEADER_ADDRESS. Required on every rank but rank 0 (which
//       listens on all of its interfaces) when the world has several ranks.
//   HERD_LEADER_PORT     int in [1, 65535], default 29500; the TCP port on
//       which rank 0 collects and hands out the ranks' UCP worker addresses.
//
// The start-up deadline is the caller's (herd: 120 s, pods start in any
// order); UCX's own knobs (UCX_TLS, UCX_NET_DEVICES) pick the transports.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace herd::comm {

struct UcxBootstrapEnv {
  int rank = 0;
  int world_size = 1;
  // Empty on rank 0 when unset: rank 0 does not connect anywhere.
  std::string leader_address;
  int leader_port = 29500;
  // The variables the values came from, for error messages and logs, e.g.
  // "LWS_WORKER_INDEX" or "HOSTNAME".
  std::string rank_source;
  std::string world_size_source;
  std::string leader_address_source;
};

// Reads the variables above through `lookup` (name -> value, or nullptr when
// unset; an empty value counts as unset). Thread-safe. Errors:
// InvalidArgument naming the variable that is missing, does not parse or is
// out of range (a rank not below the world size names both variables).
absl::StatusOr<UcxBootstrapEnv> ParseUcxBootstrapEnv(
    const std::function<const char*(const char*)>& lookup);

// ParseUcxBootstrapEnv over the process environment.
absl::StatusOr<UcxBootstrapEnv> UcxBootstrapEnvFromProcess();

}  // namespace herd::comm
