// Internal to the ucx backends: UCP tag sends and receives of one call,
// waited on with a deadline, remembering which peer each one talks to so
// that a failure names the ranks that did not deliver or take their data.
//
// UCP has no blocking call with a timeout, so every operation is posted
// nonblocking and polled (ucp_worker_progress under the world's mutex, paced
// by PollPacer, comm/env.h). While waiting it also watches the channel's
// abort notices and the peers' endpoint errors. On failure, receives still
// pending are cancelled and released; sends still pending are released to
// UCP, which may still read their buffers (the communicator contract: a
// failed call's buffers stay alive).
#pragma once

#include <ucp/api/ucp.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "comm/ucx/ucx_world.h"

namespace herd::comm {

class UcxRequests {
 public:
  // `what` names the operation in errors, e.g. "ucx all_to_all_v #3 on rank 0".
  UcxRequests(UcxWorld& world, uint16_t channel, std::string what);
  // Releases whatever is still pending, as on failure.
  ~UcxRequests();
  UcxRequests(const UcxRequests&) = delete;
  UcxRequests& operator=(const UcxRequests&) = delete;

  // Sends `bytes` to `peer` with sequence `tag` on the channel. With bytes
  // == 0 nothing is sent unless `post_empty` (a zero-byte message that
  // proves this rank took part). Internal if UCP refuses.
  absl::Status PostSend(int peer, uint32_t tag, const void* data, int64_t bytes,
                        bool post_empty = false);
  // Receives exactly `bytes` from `peer` with sequence `tag`; a message of
  // another size fails WaitAll naming the peer.
  absl::Status PostRecv(int peer, uint32_t tag, void* data, int64_t bytes, bool post_empty = false);
  // Receives a message already taken off UCP's queue by ucp_tag_probe_nb
  // (the control channel), `bytes` long, from `peer`.
  absl::Status PostProbedRecv(ucp_tag_message_h message, int peer, void* data, int64_t bytes);

  // Polls until every operation completes. Errors: Aborted (this channel
  // was aborted here or by a peer), DeadlineExceeded naming the peers that
  // did not deliver / take their data, Internal naming the peer for a
  // transport error (a dead peer) or a size mismatch.
  absl::Status WaitAll(absl::Time deadline);

 private:
  struct Op {
    ucs_status_ptr_t request;  // nullptr once complete
    bool is_recv;
    int peer;
    int64_t bytes;
    ucp_tag_recv_info_t info;  // receives completed at posting
    ucs_status_t status;       // UCS_INPROGRESS until complete
  };
  // Records what *_nbx returned for `op` (complete, pending or failed).
  absl::Status Track(Op op, ucs_status_ptr_t returned, const char* call);
  // Checks a completed operation: OK or the error naming its peer.
  absl::Status CheckDone(const Op& op) const;
  void Abandon();

  UcxWorld& world_;
  const uint16_t channel_;
  std::string what_;
  absl::Time start_;
  std::vector<Op> ops_;
};

}  // namespace herd::comm
