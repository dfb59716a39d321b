#include "comm/peer_reachability.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "comm/socket.h"
#include "core/status.h"

namespace herd::comm {
namespace {

constexpr int kMaxListedProblems = 16;

// Socket addresses of `address` (numeric) and `port`.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
};

absl::StatusOr<SocketAddress> ParseAddress(const SocketInterface& interface, int port) {
  SocketAddress a;
  if (interface.ipv6) {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, interface.address.c_str(), &in6->sin6_addr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("bad IPv6 address ", interface.address));
    }
    a.length = sizeof(sockaddr_in6);
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&a.storage);
    in4->sin_family = AF_INET;
    in4->sin_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET, interface.address.c_str(), &in4->sin_addr) != 1) {
      return absl::InvalidArgumentError(absl::StrCat("bad IPv4 address ", interface.address));
    }
    a.length = sizeof(sockaddr_in);
  }
  return a;
}

std::string DescribeSpec(const std::string& socket_ifname) {
  return socket_ifname.empty() ? std::string("NCCL_SOCKET_IFNAME unset")
                               : absl::StrCat("NCCL_SOCKET_IFNAME=", socket_ifname);
}

// A listening socket on `interface` (any free port); its port in `*port`.
absl::StatusOr<Socket> ListenOn(const SocketInterface& interface, int* port) {
  HERD_ASSIGN_OR_RETURN(SocketAddress a, ParseAddress(interface, 0));
  Socket s(socket(a.storage.ss_family, SOCK_STREAM, 0));
  if (s.fd() < 0) return absl::UnavailableError(Errno("socket"));
  if (bind(s.fd(), reinterpret_cast<sockaddr*>(&a.storage), a.length) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", interface.address, " (",
                                               interface.name, "): ", Errno("bind")));
  }
  if (listen(s.fd(), SOMAXCONN) != 0) return absl::UnavailableError(Errno("listen"));
  sockaddr_storage bound{};
  socklen_t length = sizeof(bound);
  if (getsockname(s.fd(), reinterpret_cast<sockaddr*>(&bound), &length) != 0) {
    return absl::UnavailableError(Errno("getsockname"));
  }
  *port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                            : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return s;
}

// One line per endpoint, tab-separated: rank, host, interface, address,
// ipv6 (0/1), port; or rank, host, "!", why it has no endpoint.
std::string EncodeEndpoint(const PeerEndpoint& e) {
  return absl::StrCat(e.rank, "\t", e.host, "\t", e.interface.name, "\t", e.interface.address, "\t",
                      e.interface.ipv6 ? 1 : 0, "\t", e.port);
}

absl::StatusOr<PeerEndpoint> DecodeEndpoint(absl::string_view line) {
  const std::vector<std::string> f = absl::StrSplit(line, '\t');
  PeerEndpoint e;
  int ipv6 = 0;
  if (f.size() != 6 || !absl::SimpleAtoi(f[0], &e.rank) || !absl::SimpleAtoi(f[4], &ipv6) ||
      !absl::SimpleAtoi(f[5], &e.port)) {
    return absl::InternalError(absl::StrCat("reachability probe: bad endpoint '", line, "'"));
  }
  e.host = f[1];
  e.interface = {f[2], f[3], ipv6 != 0};
  return e;
}

// "a; b; c" for at most kMaxListedProblems problems, then how many more.
std::string ListProblems(const std::vector<std::string>& problems) {
  if (static_cast<int>(problems.size()) <= kMaxListedProblems) return absl::StrJoin(problems, "; ");
  return absl::StrCat(absl::StrJoin(problems.begin(), problems.begin() + kMaxListedProblems, "; "),
                      "; and ", problems.size() - kMaxListedProblems, " more");
}

bool MatchesPrefixList(const std::string& name, const std::vector<std::string>& names, bool exact) {
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) {
    return exact ? name == n : absl::StartsWith(name, n);
  });
}

}  // namespace

absl::StatusOr<std::vector<SocketInterface>> ListSocketInterfaces() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return absl::UnavailableError(Errno("getifaddrs"));
  std::vector<SocketInterface> interfaces;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || (i->ifa_flags & IFF_UP) == 0) continue;
    const int family = i->ifa_addr->sa_family;
    char text[INET6_ADDRSTRLEN] = {};
    if (family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, text,
                sizeof(text));
    } else if (family == AF_INET6) {
      const in6_addr& a = reinterpret_cast<sockaddr_in6*>(i->ifa_addr)->sin6_addr;
      if (IN6_IS_ADDR_LINKLOCAL(&a)) continue;  // needs a scope id to connect to
      inet_ntop(AF_INET6, &a, text, sizeof(text));
    } else {
      continue;
    }
    interfaces.push_back({i->ifa_name, text, family == AF_INET6});
  }
  freeifaddrs(list);
  return interfaces;
}

absl::StatusOr<SocketInterface> SelectSocketInterface(
    const std::vector<SocketInterface>& interfaces, const std::string& socket_ifname) {
  // The first IPv4 address among the interfaces `accept` takes, else the first IPv6.
  const auto first =
      [&](const std::function<bool(const std::string&)>& accept) -> const SocketInterface* {
    const SocketInterface* v6 = nullptr;
    for (const SocketInterface& i : interfaces) {
      if (!accept(i.name)) continue;
      if (!i.ipv6) return &i;
      if (v6 == nullptr) v6 = &i;
    }
    return v6;
  };
  const SocketInterface* chosen = nullptr;
  if (socket_ifname.empty()) {
    chosen = first([](const std::string& n) { return absl::StartsWith(n, "ib"); });
    if (chosen == nullptr) {
      chosen = first([](const std::string& n) {
        return !absl::StartsWith(n, "docker") && !absl::StartsWith(n, "lo");
      });
    }
    if (chosen == nullptr) {
      chosen = first([](const std::string& n) { return absl::StartsWith(n, "lo"); });
    }
  } else {
    absl::string_view spec = socket_ifname;
    const bool exclude = absl::ConsumePrefix(&spec, "^");
    const bool exact = absl::ConsumePrefix(&spec, "=");
    const std::vector<std::string> names = absl::StrSplit(spec, ',', absl::SkipEmpty());
    chosen =
        first([&](const std::string& n) { return MatchesPrefixList(n, names, exact) != exclude; });
  }
  if (chosen != nullptr) return *chosen;
  std::vector<std::string> present;
  for (const SocketInterface& i : interfaces) present.push_back(i.name + " " + i.address);
  return absl::FailedPreconditionError(absl::StrCat(
      DescribeSpec(socket_ifname), " matches no interface that is up on this host (",
      present.empty() ? "it has none" : "it has " + absl::StrJoin(present, ", "), ")"));
}

std::vector<std::string> ProbeEndpoints(const std::vector<PeerEndpoint>& endpoints,
                                        absl::Time deadline) {
  std::vector<std::string> problems;
  const auto where = [](const PeerEndpoint& e) {
    return absl::StrCat(
        "rank ", e.rank, " (host ", e.host, ") at ",
        e.interface.ipv6 ? absl::StrCat("[", e.interface.address, "]") : e.interface.address, ":",
        e.port, " over ", e.interface.name);
  };
  std::vector<Socket> sockets;
  std::vector<const PeerEndpoint*> pending;
  for (const PeerEndpoint& e : endpoints) {
    absl::StatusOr<SocketAddress> a = ParseAddress(e.interface, e.port);
    if (!a.ok()) {
      problems.push_back(absl::StrCat(where(e), ": ", a.status().message()));
      continue;
    }
    Socket s(socket(a->storage.ss_family, SOCK_STREAM, 0));
    if (s.fd() < 0) {
      problems.push_back(absl::StrCat(where(e), ": ", Errno("socket")));
      continue;
    }
    SetNonBlocking(s.fd());
    if (connect(s.fd(), reinterpret_cast<sockaddr*>(&a->storage), a->length) != 0 &&
        errno != EINPROGRESS) {
      problems.push_back(absl::StrCat(where(e), ": ", Errno("connect")));
      continue;
    }
    sockets.push_back(std::move(s));
    pending.push_back(&e);
  }
  std::vector<bool> done(pending.size(), false);
  size_t remaining = pending.size();
  while (remaining > 0 && absl::Now() < deadline) {
    std::vector<pollfd> fds;
    std::vector<size_t> index;
    for (size_t i = 0; i < pending.size(); ++i) {
      if (done[i]) continue;
      fds.push_back({sockets[i].fd(), POLLOUT, 0});
      index.push_back(i);
    }
    const int rc = poll(fds.data(), fds.size(), PollMillisUntil(deadline));
    if (rc <= 0) continue;
    for (size_t k = 0; k < fds.size(); ++k) {
      if (fds[k].revents == 0) continue;
      const size_t i = index[k];
      int error = 0;
      socklen_t length = sizeof(error);
      getsockopt(sockets[i].fd(), SOL_SOCKET, SO_ERROR, &error, &length);
      if (error != 0) {
        problems.push_back(absl::StrCat(where(*pending[i]), ": connect: ", std::strerror(error)));
      }
      done[i] = true;
      --remaining;
    }
  }
  for (size_t i = 0; i < pending.size(); ++i) {
    if (!done[i]) problems.push_back(absl::StrCat(where(*pending[i]), ": connect: timed out"));
  }
  return problems;
}

absl::Status CheckPeerReachability(ControlChannel& control, const std::string& socket_ifname,
                                   absl::Duration probe_timeout, absl::Time deadline) {
  const int rank = control.rank();
  const std::string host = HostName();
  // 1. Every rank listens on its interface; rank 0 learns every endpoint, or
  //    why a rank has none.
  Socket listener;
  std::string mine;
  {
    absl::Status why_not;
    PeerEndpoint self{rank, host, {}, 0};
    absl::StatusOr<std::vector<SocketInterface>> interfaces = ListSocketInterfaces();
    absl::StatusOr<SocketInterface> chosen =
        interfaces.ok() ? SelectSocketInterface(*interfaces, socket_ifname)
                        : absl::StatusOr<SocketInterface>(interfaces.status());
    if (chosen.ok()) {
      self.interface = *chosen;
      absl::StatusOr<Socket> s = ListenOn(self.interface, &self.port);
      if (s.ok()) {
        listener = std::move(*s);
      } else {
        why_not = s.status();
      }
    } else {
      why_not = chosen.status();
    }
    mine = why_not.ok() ? EncodeEndpoint(self)
                        : absl::StrCat(rank, "\t", host, "\t!\t", why_not.message());
  }
  std::string table;
  HERD_RETURN_IF_ERROR(control.AgreeOnVerdict(
      mine,
      [&](const std::vector<std::string>& all) {
        table = absl::StrJoin(all, "\n");
        std::vector<std::string> problems;
        for (const std::string& line : all) {
          const std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits('\t', 3));
          if (f.size() == 4 && f[2] == "!") {
            problems.push_back(absl::StrCat("rank ", f[0], " (host ", f[1], "): ", f[3]));
          }
        }
        if (problems.empty()) return std::string();
        return absl::StrCat("no usable network interface: ", ListProblems(problems));
      },
      deadline));
  HERD_RETURN_IF_ERROR(control.Broadcast(0, &table, deadline));

  // 2. Every rank connects to every other one; rank 0 collects the failures.
  std::vector<PeerEndpoint> peers;
  for (absl::string_view line : absl::StrSplit(table, '\n', absl::SkipEmpty())) {
    HERD_ASSIGN_OR_RETURN(PeerEndpoint e, DecodeEndpoint(line));
    if (e.rank != rank) peers.push_back(std::move(e));
  }
  std::vector<std::string> failed =
      ProbeEndpoints(peers, std::min(deadline, absl::Now() + probe_timeout));
  for (std::string& f : failed) f = absl::StrCat("rank ", rank, " (host ", host, ") -> ", f);
  return control.AgreeOnVerdict(
      absl::StrJoin(failed, "\n"),
      [&](const std::vector<std::string>& all) {
        std::vector<std::string> problems;
        for (const std::string& text : all) {
          for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
            problems.emplace_back(line);
          }
        }
        if (problems.empty()) return std::string();
        return absl::StrCat(
            "ranks cannot open TCP connections to each other over the interface ",
            DescribeSpec(socket_ifname), " selects (what NCCL would use): ", ListProblems(problems),
            ". Set NCCL_SOCKET_IFNAME to an interface every host can reach the others on");
      },
      deadline);
}

}  // namespace herd::comm
