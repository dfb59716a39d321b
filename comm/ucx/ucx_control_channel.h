// The `ucx` control channel: host messages between processes that joined
// from environment variables (comm/ucx/ucx_env.h), over UCP tag messages
// (comm/ucx/ucx_world.h), without mpirun.
//
// Send is a tag send of a private copy of the payload, waited on with the
// deadline. Recv polls ucp_tag_probe_nb, which takes a matching message off
// UCP's queue (so several threads may receive at once), then receives it
// whole, also under the deadline. Abort() sends a notice to every rank's
// channel: their pending and later calls return Aborted naming this rank.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/control_channel.h"

namespace herd::comm {

// Joins the process's ucx world if needed (blocks until every rank joined,
// or the deadline) and opens its control channel. Collective: every rank
// creates its ucx channels and communicators in the same order. Errors: as
// UcxWorld::Join.
absl::StatusOr<std::unique_ptr<ControlChannel>> CreateUcxControlChannel(absl::Time deadline);

}  // namespace herd::comm
