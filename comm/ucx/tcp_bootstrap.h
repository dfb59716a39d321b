// Internal to the ucx backend: the start-up exchange through rank 0 over TCP,
// in place of mpirun's. Every rank hands in one blob (its UCP worker
// address) and gets every rank's blob back, indexed by rank.
//
// Rank 0 listens on the leader port (all interfaces) and waits for the other
// ranks; the others connect to the leader address, retrying until the
// deadline because pods start in any order and the leader's DNS name may not
// resolve yet. Each sends "HRD1", its rank, the world size and its blob; once
// all have joined, rank 0 sends each the table of all blobs and the sockets
// close. Nothing else goes over TCP: the data travels over UCP.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "comm/ucx/ucx_env.h"

namespace herd::comm {

// Collective over the env's world; blocks until every rank has joined or the
// deadline. Errors: DeadlineExceeded (rank 0 names the ranks that did not
// join; other ranks say whether the leader was unreachable or silent),
// InvalidArgument (ranks that disagree on the world size, a rank that
// joined twice), Unavailable (the port is taken, a connection broke).
absl::StatusOr<std::vector<std::string>> ExchangeThroughLeader(const UcxBootstrapEnv& env,
                                                               absl::string_view blob,
                                                               absl::Time deadline);

}  // namespace herd::comm
