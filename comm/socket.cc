#include "comm/socket.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace herd::comm {

std::string Errno(const char* call) { return absl::StrCat(call, ": ", std::strerror(errno)); }

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "?";
  return name;
}

Socket::~Socket() {
  if (fd_ >= 0) close(fd_);
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

int PollMillisUntil(absl::Time deadline) {
  const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
  return static_cast<int>(std::clamp<int64_t>(ms, 0, 1000));
}

bool WaitFor(int fd, short events, absl::Time deadline) {
  while (absl::Now() < deadline) {
    pollfd p{fd, events, 0};
    const int rc = poll(&p, 1, PollMillisUntil(deadline));
    if (rc > 0) return true;
    if (rc < 0 && errno != EINTR) return true;
  }
  return false;
}

}  // namespace herd::comm
