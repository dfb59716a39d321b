// The conformance suite on the nccl backend: N ranks as threads, one CUDA
// device each, bootstrapped over a local control channel. Label gpu; every
// case skips when fewer than N devices are usable (always on machines
// without a GPU or driver).
#include <cstdlib>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/env.h"
#include "comm/local_world.h"
#include "comm/nccl_communicator.h"
#include "gtest/gtest.h"
#include "tests/comm/conformance.h"

namespace herd::comm::testing {
namespace {

// NCCL's bootstrap must stay on loopback in tests (ENVIRONMENT.md gotcha 7).
const bool kLoopbackOnly = setenv("NCCL_SOCKET_IFNAME", "lo", /*overwrite=*/0) == 0;

class NcclRankContext final : public RankContext {
 public:
  NcclRankContext(std::shared_ptr<LocalWorld> world, int rank)
      : world_(std::move(world)), rank_(rank) {
    auto control = world_->CreateControlChannel(rank);
    EXPECT_TRUE(control.ok()) << control.status();
    if (control.ok()) control_ = std::move(control).value();
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_->world_size(); }
  std::unique_ptr<Communicator> NewCommunicator() override {
    auto comm = CreateNcclCommunicator(*control_, rank_, DeadlineAfterMs(60000));
    EXPECT_TRUE(comm.ok()) << comm.status();
    return comm.ok() ? std::move(comm).value() : nullptr;
  }
  ControlChannel& control() override { return *control_; }
  bool abort_returns() const override { return true; }
  bool names_missing_peer() const override { return false; }

 private:
  std::shared_ptr<LocalWorld> world_;
  const int rank_;
  std::unique_ptr<ControlChannel> control_;
};

class NcclConformance : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kLoopbackOnly);
    const absl::StatusOr<int> count = NcclDeviceCount();
    if (!count.ok()) GTEST_SKIP() << "no CUDA device: " << count.status().message();
    if (*count < GetParam()) {
      GTEST_SKIP() << GetParam() << " ranks need " << GetParam() << " CUDA devices, found "
                   << *count;
    }
  }

  template <typename Body>
  void RunOnThreads(const Body& body) {
    auto world = LocalWorld::Create(GetParam());
    ASSERT_TRUE(world.ok()) << world.status();
    std::vector<std::thread> threads;
    for (int r = 0; r < GetParam(); ++r) {
      threads.emplace_back([&, r] {
        NcclRankContext ctx(*world, r);
        body(ctx);
      });
    }
    for (std::thread& t : threads) t.join();
  }
};

#define HERD_COMM_NCCL_CASE(name) \
  TEST_P(NcclConformance, name) { RunOnThreads(name); }
HERD_COMM_CONFORMANCE_CASES(HERD_COMM_NCCL_CASE)
#undef HERD_COMM_NCCL_CASE

INSTANTIATE_TEST_SUITE_P(Devices, NcclConformance, ::testing::Values(1, 2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat(info.param, "ranks");
                         });

}  // namespace
}  // namespace herd::comm::testing
