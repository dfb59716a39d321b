// Environment knobs of the comm layer, NCCL-style: each one is named, typed,
// defaulted, documented, and printable with where its value came from.
//
//   HERD_COMM_TIMEOUT_MS           int64 >= 1, default 30000
//       Deadline of a comm call when the caller passes DefaultDeadline():
//       how long a rank waits for a peer before it reports that peer.
//   HERD_COMM_POLL_SLEEP_AFTER_MS  int64 >= 0, default 1000
//       How long a waiting call polls its transport while only yielding the
//       core; after that, and until progress, it sleeps between polls.
//   HERD_COMM_POLL_SLEEP_US        int64 >= 0, default 50
//       The first sleep between polls once HERD_COMM_POLL_SLEEP_AFTER_MS has
//       passed; each further one doubles, up to 1 ms (or this value when it
//       is larger), so a long-idle rank polls about a thousand times a second.
//
// Transport knobs that the libraries read themselves are only reported:
// NCCL_SOCKET_IFNAME (NCCL), UCX_NET_DEVICES and UCX_TLS (UCX, through Open
// MPI's pml ucx).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace herd::comm {

struct CommEnv {
  // HERD_COMM_TIMEOUT_MS: see the file comment.
  int64_t timeout_ms = 30000;
  // HERD_COMM_POLL_SLEEP_AFTER_MS: yield-only polling before sleeping; long
  // enough that a large transfer (which progresses only while it is polled)
  // is never slowed down by the sleeps.
  int64_t poll_sleep_after_ms = 1000;
  // HERD_COMM_POLL_SLEEP_US: keeps a rank that waits for a dead peer from
  // burning a core until its deadline.
  int64_t poll_sleep_us = 50;
};

// Reads the knobs through `lookup` (name -> value or nullptr when unset).
// A value that does not parse or is out of range keeps the default and adds
// one message naming the knob to `warnings` (may be nullptr). Thread-safe.
CommEnv ParseCommEnv(const std::function<const char*(const char*)>& lookup,
                     std::vector<std::string>* warnings);

// The process's knobs, read from the environment on first use (warnings are
// logged once). Thread-safe.
const CommEnv& GetCommEnv();

// One line per knob, "NAME=value (default|env)", then the transport knobs
// read by NCCL and UCX, "NAME=value (read by NCCL)" or "NAME unset".
std::string CommEnvReport(const CommEnv& env,
                          const std::function<const char*(const char*)>& lookup);

// absl::Now() + HERD_COMM_TIMEOUT_MS.
absl::Time DefaultDeadline();

// absl::Now() + `timeout_ms` milliseconds.
absl::Time DeadlineAfterMs(int64_t timeout_ms);

// Paces a polling loop (MPI_Test*, cudaStreamQuery): yields the core on every
// call until `poll_sleep_after_ms` has passed without Progress(), then sleeps
// `poll_sleep_us` on the first call and twice as long on each next one, up to
// kMaxPollSleepUs (or poll_sleep_us when larger). Yielding matters because
// tests and benches run more ranks than cores (mpi_yield_when_idle is only for
// MPI's own waits); the growing sleep keeps an idle rank's share of a core
// small where a poll itself costs tens of microseconds (one poll per 50 us
// cost an idle rank a third of a core on a Xeon).
// Not thread-safe; one per waiting call.
class PollPacer {
 public:
  static constexpr int64_t kMaxPollSleepUs = 1000;

  explicit PollPacer(const CommEnv& env);
  // Call between two polls that found nothing new.
  void Pause();
  // Call when a poll completed something: yields again for a while.
  void Progress();

 private:
  const CommEnv& env_;
  absl::Time idle_since_;
  int64_t next_sleep_us_;  // the next sleep, once sleeping
};

}  // namespace herd::comm
