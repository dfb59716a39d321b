// The reachability probe of the NCCL pre-flight check: which interface NCCL's
// rules pick, real TCP connections that succeed and fail, and the collective
// check over ranks that are threads (every rank gets the same verdict).
#include "comm/peer_reachability.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <thread>
#include <vector>

#include "comm/env.h"
#include "comm/local_world.h"
#include "comm/socket.h"
#include "gtest/gtest.h"

namespace herd::comm {
namespace {

const std::vector<SocketInterface> kHost = {
    {"lo", "127.0.0.1", false},  {"docker0", "172.17.0.1", false}, {"eth0", "fd00::1", true},
    {"eth0", "10.0.0.1", false}, {"ib0", "192.168.7.1", false},    {"enp1s0", "10.1.0.1", false},
};

std::string Pick(const std::vector<SocketInterface>& interfaces, const std::string& spec) {
  absl::StatusOr<SocketInterface> chosen = SelectSocketInterface(interfaces, spec);
  if (!chosen.ok()) return std::string(chosen.status().message());
  return chosen->name + " " + chosen->address;
}

TEST(SelectSocketInterfaceTest, FollowsNcclRules) {
  // Unset: ib* first, then anything but docker* and lo, then lo.
  EXPECT_EQ(Pick(kHost, ""), "ib0 192.168.7.1");
  EXPECT_EQ(Pick({kHost[0], kHost[1], kHost[2], kHost[3]}, ""), "eth0 10.0.0.1");  // IPv4 first
  EXPECT_EQ(Pick({kHost[0], kHost[1]}, ""), "lo 127.0.0.1");
  // Prefixes, exclusion, exact names.
  EXPECT_EQ(Pick(kHost, "eth"), "eth0 10.0.0.1");
  EXPECT_EQ(Pick(kHost, "enp,eth"), "eth0 10.0.0.1");  // the host's order, not the spec's
  EXPECT_EQ(Pick(kHost, "^lo,docker,ib,eth"), "enp1s0 10.1.0.1");
  EXPECT_EQ(Pick(kHost, "=lo"), "lo 127.0.0.1");
  EXPECT_EQ(Pick({{"eth1", "fd00::2", true}}, "eth1"), "eth1 fd00::2");
}

TEST(SelectSocketInterfaceTest, NothingMatchingSaysWhatTheHostHas) {
  absl::StatusOr<SocketInterface> chosen = SelectSocketInterface(kHost, "=eth");
  ASSERT_EQ(chosen.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(chosen.status().message(),
            "NCCL_SOCKET_IFNAME==eth matches no interface that is up on this host (it has lo "
            "127.0.0.1, docker0 172.17.0.1, eth0 fd00::1, eth0 10.0.0.1, ib0 192.168.7.1, enp1s0 "
            "10.1.0.1)");
  EXPECT_EQ(SelectSocketInterface({}, "").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ListSocketInterfacesTest, FindsLoopback) {
  absl::StatusOr<std::vector<SocketInterface>> interfaces = ListSocketInterfaces();
  ASSERT_TRUE(interfaces.ok()) << interfaces.status();
  EXPECT_EQ(Pick(*interfaces, "=lo"), "lo 127.0.0.1");
}

// A listening socket on 127.0.0.1 and its port; with listen = false, a port
// that was just free and nobody listens on.
int LoopbackPort(Socket* keep, bool listen_on_it) {
  Socket s(socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  if (listen_on_it) {
    EXPECT_EQ(listen(s.fd(), 8), 0);
  }
  socklen_t length = sizeof(addr);
  getsockname(s.fd(), reinterpret_cast<sockaddr*>(&addr), &length);
  if (listen_on_it) *keep = std::move(s);
  return ntohs(addr.sin_port);
}

TEST(ProbeEndpointsTest, ReportsEveryEndpointItCannotConnectTo) {
  Socket listener;
  const int open_port = LoopbackPort(&listener, true);
  const int closed_port = LoopbackPort(nullptr, false);
  const SocketInterface lo{"lo", "127.0.0.1", false};
  const std::vector<PeerEndpoint> endpoints = {{1, "a", lo, open_port}, {3, "b", lo, closed_port}};
  const std::vector<std::string> problems =
      ProbeEndpoints(endpoints, absl::Now() + absl::Seconds(10));
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0], "rank 3 (host b) at 127.0.0.1:" + std::to_string(closed_port) +
                             " over lo: connect: Connection refused");
  EXPECT_TRUE(ProbeEndpoints({endpoints[0]}, absl::Now() + absl::Seconds(10)).empty());
}

// Every rank of a LocalWorld runs the check; their statuses, by rank.
std::vector<absl::Status> RunOnRanks(int num_ranks, const std::string& spec) {
  auto world = LocalWorld::Create(num_ranks);
  EXPECT_TRUE(world.ok()) << world.status();
  std::vector<absl::Status> statuses(num_ranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < num_ranks; ++r) {
    threads.emplace_back([&, r] {
      auto control = (*world)->CreateControlChannel(r);
      if (!control.ok()) {
        statuses[r] = control.status();
        return;
      }
      statuses[r] =
          CheckPeerReachability(**control, spec, absl::Seconds(5), absl::Now() + absl::Seconds(60));
    });
  }
  for (std::thread& t : threads) t.join();
  return statuses;
}

TEST(CheckPeerReachabilityTest, RanksOnLoopbackReachEachOther) {
  for (const absl::Status& s : RunOnRanks(4, "lo")) EXPECT_TRUE(s.ok()) << s;
  for (const absl::Status& s : RunOnRanks(1, "lo")) EXPECT_TRUE(s.ok()) << s;
}

TEST(CheckPeerReachabilityTest, AnInterfaceNoRankHasStopsEveryRankWithOneMessage) {
  const std::vector<absl::Status> statuses = RunOnRanks(3, "nonexistent0");
  for (const absl::Status& s : statuses) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_EQ(s.message(), statuses[0].message());
  }
  const std::string message(statuses[0].message());
  EXPECT_NE(message.find("no usable network interface: rank 0 (host "), std::string::npos)
      << message;
  EXPECT_NE(message.find("rank 2 (host "), std::string::npos) << message;
  EXPECT_NE(message.find("NCCL_SOCKET_IFNAME=nonexistent0 matches no interface"), std::string::npos)
      << message;
}

}  // namespace
}  // namespace herd::comm
