#include "comm/ucx/tcp_bootstrap.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/socket.h"
#include "core/status.h"

namespace herd::comm {
namespace {

constexpr uint32_t kMagic = 0x31445248;  // "HRD1" in little-endian memory
// A blob is a UCP worker address (hundreds of bytes); anything far larger is
// not one of ours.
constexpr uint32_t kMaxBlobBytes = 1 << 20;

absl::Status WriteAll(int fd, const void* data, size_t bytes, absl::Time deadline,
                      const std::string& what) {
  const char* at = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = send(fd, at, bytes, MSG_NOSIGNAL);
    if (n > 0) {
      at += n;
      bytes -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat(what, ": ", Errno("send")));
    }
    if (!WaitFor(fd, POLLOUT, deadline)) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": send timed out"));
    }
  }
  return absl::OkStatus();
}

absl::Status ReadAll(int fd, void* data, size_t bytes, absl::Time deadline,
                     const std::string& what) {
  char* at = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = recv(fd, at, bytes, 0);
    if (n > 0) {
      at += n;
      bytes -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return absl::UnavailableError(absl::StrCat(what, ": connection closed"));
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat(what, ": ", Errno("recv")));
    }
    if (!WaitFor(fd, POLLIN, deadline)) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": nothing received by the deadline"));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteU32(int fd, uint32_t value, absl::Time deadline, const std::string& what) {
  return WriteAll(fd, &value, sizeof(value), deadline, what);
}

absl::StatusOr<uint32_t> ReadU32(int fd, absl::Time deadline, const std::string& what) {
  uint32_t value = 0;
  HERD_RETURN_IF_ERROR(ReadAll(fd, &value, sizeof(value), deadline, what));
  return value;
}

absl::Status WriteBlob(int fd, absl::string_view blob, absl::Time deadline,
                       const std::string& what) {
  HERD_RETURN_IF_ERROR(WriteU32(fd, static_cast<uint32_t>(blob.size()), deadline, what));
  return WriteAll(fd, blob.data(), blob.size(), deadline, what);
}

absl::StatusOr<std::string> ReadBlob(int fd, absl::Time deadline, const std::string& what) {
  HERD_ASSIGN_OR_RETURN(const uint32_t bytes, ReadU32(fd, deadline, what));
  if (bytes > kMaxBlobBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": a blob of ", bytes, " bytes"));
  }
  std::string blob(bytes, '\0');
  HERD_RETURN_IF_ERROR(ReadAll(fd, blob.data(), bytes, deadline, what));
  return blob;
}

// What a joining rank sends first.
struct Hello {
  int rank = -1;
  int world_size = 0;
  std::string blob;
};

absl::StatusOr<Hello> ReadHello(int fd, absl::Time deadline) {
  const std::string what = "ucx bootstrap on rank 0: a joining rank";
  HERD_ASSIGN_OR_RETURN(const uint32_t magic, ReadU32(fd, deadline, what));
  if (magic != kMagic) return absl::InvalidArgumentError("not a herd rank");
  Hello hello;
  HERD_ASSIGN_OR_RETURN(const uint32_t rank, ReadU32(fd, deadline, what));
  HERD_ASSIGN_OR_RETURN(const uint32_t world_size, ReadU32(fd, deadline, what));
  HERD_ASSIGN_OR_RETURN(hello.blob, ReadBlob(fd, deadline, what));
  hello.rank = static_cast<int>(std::min<uint32_t>(rank, 1u << 30));
  hello.world_size = static_cast<int>(std::min<uint32_t>(world_size, 1u << 30));
  return hello;
}

// Rank 0's listening socket on every interface (IPv6 with IPv4 mapped, or
// IPv4 where the host has no IPv6).
absl::StatusOr<Socket> Listen(int port) {
  Socket s(socket(AF_INET6, SOCK_STREAM, 0));
  const int one = 1;
  const int zero = 0;
  int rc = -1;
  if (s.fd() >= 0) {
    setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(s.fd(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(static_cast<uint16_t>(port));
    rc = bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  }
  if (s.fd() < 0 || (rc != 0 && errno == EAFNOSUPPORT)) {
    s = Socket(socket(AF_INET, SOCK_STREAM, 0));
    if (s.fd() < 0) return absl::UnavailableError(Errno("socket"));
    setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    rc = bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  }
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("ucx bootstrap on rank 0: cannot listen on port ",
                                               port, " (HERD_LEADER_PORT): ", Errno("bind")));
  }
  if (listen(s.fd(), 128) != 0) return absl::UnavailableError(Errno("listen"));
  SetNonBlocking(s.fd());
  return s;
}

absl::StatusOr<std::vector<std::string>> RunLeader(const UcxBootstrapEnv& env,
                                                   absl::string_view blob, absl::Time deadline) {
  HERD_ASSIGN_OR_RETURN(Socket listener, Listen(env.leader_port));
  std::vector<std::string> blobs(env.world_size);
  std::vector<Socket> peers(env.world_size);
  blobs[0] = std::string(blob);
  std::set<int> missing;
  for (int r = 1; r < env.world_size; ++r) missing.insert(r);
  while (!missing.empty()) {
    if (!WaitFor(listener.fd(), POLLIN, deadline)) {
      return absl::DeadlineExceededError(
          absl::StrCat("ucx bootstrap on rank 0: rank(s) ", absl::StrJoin(missing, ", "),
                       " did not join by the deadline (rank 0 listens on port ", env.leader_port,
                       ", HERD_LEADER_PORT; check their HERD_LEADER_ADDRESS and HERD_RANK)"));
    }
    Socket peer(accept(listener.fd(), nullptr, nullptr));
    if (peer.fd() < 0) continue;  // EAGAIN, or a connection reset before accept
    SetNonBlocking(peer.fd());
    // NOTE: a connection that does not say hello promptly (a port scan, a
    // health probe) is dropped instead of failing the group.
    absl::StatusOr<Hello> hello =
        ReadHello(peer.fd(), std::min(deadline, absl::Now() + absl::Seconds(5)));
    if (!hello.ok()) continue;
    if (hello->world_size != env.world_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("ucx bootstrap: rank ", hello->rank, " has world size ", hello->world_size,
                       " but rank 0 has ", env.world_size, " (", env.world_size_source, ")"));
    }
    if (hello->rank <= 0 || hello->rank >= env.world_size) {
      return absl::InvalidArgumentError(absl::StrCat("ucx bootstrap: a second rank ", hello->rank,
                                                     " joined (check each rank's HERD_RANK)"));
    }
    // A rank that joins again (its pod restarted) replaces its earlier self.
    missing.erase(hello->rank);
    blobs[hello->rank] = std::move(hello->blob);
    peers[hello->rank] = std::move(peer);
  }
  for (int r = 1; r < env.world_size; ++r) {
    const std::string what = absl::StrCat("ucx bootstrap on rank 0: sending the table to rank ", r);
    HERD_RETURN_IF_ERROR(WriteU32(peers[r].fd(), kMagic, deadline, what));
    HERD_RETURN_IF_ERROR(
        WriteU32(peers[r].fd(), static_cast<uint32_t>(env.world_size), deadline, what));
    for (const std::string& b : blobs) {
      HERD_RETURN_IF_ERROR(WriteBlob(peers[r].fd(), b, deadline, what));
    }
  }
  return blobs;
}

// One attempt to connect to any address of the leader; the error otherwise.
absl::StatusOr<Socket> ConnectOnce(const UcxBootstrapEnv& env, absl::Time deadline) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = absl::StrCat(env.leader_port);
  const int rc = getaddrinfo(env.leader_address.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve '", env.leader_address, "' (",
                                               env.leader_address_source, "): ", gai_strerror(rc)));
  }
  std::string last_error = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    Socket s(socket(a->ai_family, a->ai_socktype, a->ai_protocol));
    if (s.fd() < 0) continue;
    SetNonBlocking(s.fd());
    if (connect(s.fd(), a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      last_error = Errno("connect");
      continue;
    }
    // A short wait per attempt: an unroutable address should not eat the
    // whole deadline while the others are still to be tried.
    if (!WaitFor(s.fd(), POLLOUT, std::min(deadline, absl::Now() + absl::Seconds(2)))) {
      last_error = "connect: timed out";
      continue;
    }
    int error = 0;
    socklen_t length = sizeof(error);
    getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &error, &length);
    if (error != 0) {
      last_error = absl::StrCat("connect: ", std::strerror(error));
      continue;
    }
    const int one = 1;
    setsockopt(s.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    freeaddrinfo(found);
    return s;
  }
  freeaddrinfo(found);
  return absl::UnavailableError(last_error);
}

absl::StatusOr<std::vector<std::string>> RunFollower(const UcxBootstrapEnv& env,
                                                     absl::string_view blob, absl::Time deadline) {
  const std::string leader = absl::StrCat(env.leader_address, ":", env.leader_port);
  const std::string what =
      absl::StrCat("ucx bootstrap on rank ", env.rank, ": leader (rank 0) at ", leader);
  absl::StatusOr<Socket> connected = absl::UnavailableError("not tried");
  while (true) {
    connected = ConnectOnce(env, deadline);
    if (connected.ok()) break;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          what, " (", env.leader_address_source,
          ", HERD_LEADER_PORT) not reachable by the deadline: ", connected.status().message()));
    }
    absl::SleepFor(std::min(absl::Milliseconds(200), deadline - absl::Now()));
  }
  const int fd = connected->fd();
  HERD_RETURN_IF_ERROR(WriteU32(fd, kMagic, deadline, what));
  HERD_RETURN_IF_ERROR(WriteU32(fd, static_cast<uint32_t>(env.rank), deadline, what));
  HERD_RETURN_IF_ERROR(WriteU32(fd, static_cast<uint32_t>(env.world_size), deadline, what));
  HERD_RETURN_IF_ERROR(WriteBlob(fd, blob, deadline, what));
  // The leader answers once every rank has joined, so a silent leader means
  // that some other rank is missing: rank 0's error names it.
  const std::string waiting = absl::StrCat(what, " (waiting for every rank to join)");
  HERD_ASSIGN_OR_RETURN(const uint32_t magic, ReadU32(fd, deadline, waiting));
  HERD_ASSIGN_OR_RETURN(const uint32_t world_size, ReadU32(fd, deadline, waiting));
  if (magic != kMagic || static_cast<int>(world_size) != env.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a herd leader, or a world size other than ", env.world_size));
  }
  std::vector<std::string> blobs(env.world_size);
  for (std::string& b : blobs) {
    HERD_ASSIGN_OR_RETURN(b, ReadBlob(fd, deadline, waiting));
  }
  return blobs;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ExchangeThroughLeader(const UcxBootstrapEnv& env,
                                                               absl::string_view blob,
                                                               absl::Time deadline) {
  if (env.world_size == 1) return std::vector<std::string>{std::string(blob)};
  if (env.rank == 0) return RunLeader(env, blob, deadline);
  return RunFollower(env, blob, deadline);
}

}  // namespace herd::comm
