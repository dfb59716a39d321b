// Can every rank open a TCP connection to every other rank over the network
// interface NCCL would use? NCCL's bootstrap and socket transport connect
// ranks to each other over NCCL_SOCKET_IFNAME's interface; when that
// interface is not routable between hosts (loopback, a docker bridge, a
// management network) NCCL hangs until its own timeout, or forever. This
// probe, run before NCCL starts, turns that into a clear error that names the
// ranks, hosts, addresses and interface.
//
// Interface choice follows NCCL's: NCCL_SOCKET_IFNAME is a comma-separated
// list of name prefixes; a leading '^' excludes the listed prefixes instead,
// a leading '=' makes the names exact. Unset, NCCL prefers interfaces whose
// name starts with "ib", then any but "docker*" and "lo", then "lo".
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "comm/control_channel.h"

namespace herd::comm {

// One address of a network interface of this host.
struct SocketInterface {
  std::string name;     // "eth0"
  std::string address;  // numeric: "10.0.0.1", "fe80::1"
  bool ipv6 = false;
};

// The interfaces of this host that are up, with their IPv4 and IPv6
// addresses (getifaddrs; IPv6 link-local addresses left out).
absl::StatusOr<std::vector<SocketInterface>> ListSocketInterfaces();

// The first address NCCL would pick among `interfaces` for `socket_ifname`
// (the value of NCCL_SOCKET_IFNAME, "" when unset); IPv4 before IPv6 on one
// interface. FailedPrecondition naming the spec and every interface when
// nothing matches.
absl::StatusOr<SocketInterface> SelectSocketInterface(
    const std::vector<SocketInterface>& interfaces, const std::string& socket_ifname);

// A rank's listening endpoint in the probe.
struct PeerEndpoint {
  int rank = 0;
  std::string host;  // gethostname()
  SocketInterface interface;
  int port = 0;
};

// Opens TCP connections to every endpoint at once and waits for them until
// `deadline`; one line per endpoint that could not be reached ("rank 2 (host
// b) at 10.0.0.2:41234 over eth0: Connection refused"), empty when all were.
std::vector<std::string> ProbeEndpoints(const std::vector<PeerEndpoint>& endpoints,
                                        absl::Time deadline);

// Collective over `control`'s group: every rank listens on the interface
// `socket_ifname` selects, the endpoints travel through rank 0, each rank
// connects to every other one, and rank 0 sends every rank the verdict, so
// that all return the same status. FailedPrecondition listing the ranks
// without a usable interface, or every pair that could not connect (at most
// `probe_timeout` per connection); the channel's errors (DeadlineExceeded,
// Aborted) when a rank does not take part.
absl::Status CheckPeerReachability(ControlChannel& control, const std::string& socket_ifname,
                                   absl::Duration probe_timeout, absl::Time deadline);

}  // namespace herd::comm
