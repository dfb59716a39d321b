// Small POSIX socket helpers shared by the TCP code of comm/ (the ucx
// backend's bootstrap, the NCCL pre-flight's reachability probe).
#pragma once

#include <string>
#include <utility>

#include "absl/time/time.h"

namespace herd::comm {

// "call: strerror(errno)".
std::string Errno(const char* call);

// This host's name (gethostname), "?" when it cannot be read.
std::string HostName();

// Owns a socket descriptor (closed on destruction; -1 = none).
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket();
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

void SetNonBlocking(int fd);

// Milliseconds to `deadline` for one poll(), clamped to [0, 1000] so that
// callers wake up at least once a second.
int PollMillisUntil(absl::Time deadline);

// Waits for `events` (POLLIN, POLLOUT) on a non-blocking socket; false once
// the deadline passed. A poll error returns true: the next read, write or
// SO_ERROR reports it.
bool WaitFor(int fd, short events, absl::Time deadline);

}  // namespace herd::comm
