// Internal to the ucx backends: this process's UCP context, worker and one
// endpoint per rank, shared by the ucx control channel and communicators.
//
// Joined once per process (comm/ucx/ucx_env.h says from which variables):
// the worker's address goes to every rank through rank 0
// (comm/ucx/tcp_bootstrap.h), then each rank opens an endpoint to every rank,
// itself included. The world lives until the process exits: a peer may still
// send to it, and UCP would otherwise hand stale messages to nobody.
//
// Every channel (the control channel, each communicator) takes a channel id in
// creation order, the same on every rank, and its messages carry it in the
// UCP tag, so that channels never match each other's messages:
//
//   64-bit tag: | channel id (16) | source rank (16) | tag or sequence (32) |
//
// Locking: one mutex guards the worker and its endpoints (UCP worker in
// serialized mode); callers hold it around every UCP call and release it
// between polls. Endpoint errors (a peer that died, a reset connection)
// arrive during progress and are remembered per rank. Abort() of a channel
// sends a notice (sequence kAbortTag) to that channel on every rank.
#pragma once

#include <ucp/api/ucp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace herd::comm {

// The sequence number of a channel's abort notices.
inline constexpr uint32_t kUcxAbortTag = 0xFFFFFFFFu;
// Matches any source rank.
inline constexpr uint64_t kUcxAnySourceMask = ~(uint64_t{0xFFFF} << 32);
inline constexpr uint64_t kUcxExactMask = ~uint64_t{0};

inline uint64_t MakeUcxTag(uint16_t channel, int src_rank, uint32_t tag) {
  return (uint64_t{channel} << 48) | (uint64_t{static_cast<uint16_t>(src_rank)} << 32) | tag;
}
inline int UcxTagSource(uint64_t tag) { return static_cast<int>((tag >> 32) & 0xFFFF); }

// "Connection reset by remote peer": UCX's text for a status.
std::string UcxStatusString(ucs_status_t status);

class UcxWorld {
 public:
  // The process's world, joined on the first call: reads the environment,
  // creates the UCP worker, exchanges addresses through rank 0 and opens the
  // endpoints, all before `deadline`. Later calls return the same world. A
  // failed join may be retried. Thread-safe. Errors: InvalidArgument naming a
  // missing or bad variable, the bootstrap's (comm/ucx/tcp_bootstrap.h),
  // Internal with UCX's message.
  static absl::StatusOr<UcxWorld*> Join(absl::Time deadline);

  UcxWorld(const UcxWorld&) = delete;
  UcxWorld& operator=(const UcxWorld&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }

  // The next channel id. Thread-safe; ranks that create their channels in
  // the same order get the same ids.
  uint16_t NewChannelId();

  absl::Mutex& mu() const ABSL_LOCK_RETURNED(mu_) { return mu_; }
  ucp_worker_h worker() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return worker_; }
  ucp_ep_h endpoint(int rank) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return endpoints_[rank]; }

  // The endpoint error of `rank` ("" when none): set once UCX reports that
  // the connection to it failed.
  const std::string& PeerError(int rank) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return peer_errors_[rank];
  }

  // OK, or Aborted naming the rank that aborted `channel` (this one or a
  // peer, whose notice is looked for here) and its reason.
  absl::Status ChannelAbortStatus(uint16_t channel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Marks `channel` aborted here and sends the notice to every other rank,
  // waiting at most a short grace for the notices to leave. Any thread.
  void AbortChannel(uint16_t channel, absl::string_view reason) ABSL_LOCKS_EXCLUDED(mu_);

  // Waits until what this process sent has left it (UCP worker flush), or
  // the deadline; what cannot be flushed to a dead peer is given up. For
  // tear-down, so that the last messages of an exiting rank arrive.
  void Flush(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  UcxWorld(int rank, int world_size) : rank_(rank), world_size_(world_size) {}
  absl::Status Start(absl::Time deadline);
  // What the endpoint error callback of one rank's endpoint gets.
  struct EndpointArg {
    UcxWorld* world;
    int rank;
  };
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);

  const int rank_;
  const int world_size_;
  mutable absl::Mutex mu_;
  uint16_t next_channel_id_ ABSL_GUARDED_BY(mu_) = 0;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::vector<ucp_ep_h> endpoints_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> peer_errors_ ABSL_GUARDED_BY(mu_);
  // Sized once before the endpoints are made: UCP keeps pointers into it.
  std::vector<EndpointArg> endpoint_args_;
  absl::flat_hash_map<uint16_t, absl::Status> channel_aborts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace herd::comm
