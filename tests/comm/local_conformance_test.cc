// The conformance suite on the local backends: N = 1, 2, 3, 4 ranks as
// threads of this process, plus what only threads can check (an Abort seen
// by every rank at once). The suite runs a second time on the local backend
// dressed as a device communicator (DeviceStagingCommunicator), so that the
// staging a device backend (nccl) needs, in ExpertExchange and RowPacker, is
// exercised on machines without a GPU.
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/local_world.h"
#include "core/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/comm/conformance.h"

namespace herd::comm::testing {
namespace {

using ::testing::HasSubstr;

// A local communicator that presents itself as a device communicator: its
// buffers are host memory it keeps track of, and its collectives refuse any
// pointer outside them (InvalidArgument), as a device backend cannot read
// host memory. What the suite runs on it therefore goes through Allocate and
// the buffers' copies, exactly as it must for nccl.
class DeviceStagingCommunicator final : public Communicator {
 public:
  explicit DeviceStagingCommunicator(std::unique_ptr<Communicator> host)
      : host_(std::move(host)), buffers_(std::make_shared<Registry>()) {}

  const char* backend_name() const override { return "local-as-device"; }
  int rank() const override { return host_->rank(); }
  int world_size() const override { return host_->world_size(); }
  MemorySpace memory_space() const override { return MemorySpace::kDevice; }

  absl::StatusOr<std::unique_ptr<CommBuffer>> Allocate(int64_t bytes) override {
    if (bytes < 0) return absl::InvalidArgumentError("negative buffer size");
    return std::unique_ptr<CommBuffer>(new TrackedBuffer(bytes, buffers_));
  }

  absl::Status GroupedAllToAllV(absl::Span<const AllToAllVArgs> ops, absl::Time deadline) override {
    for (const AllToAllVArgs& a : ops) {
      for (int p = 0; p < world_size() && p < static_cast<int>(a.send_bytes.size()); ++p) {
        HERD_RETURN_IF_ERROR(CheckOnDevice(a.send, a.send_offsets, a.send_bytes, p));
        HERD_RETURN_IF_ERROR(CheckOnDevice(a.recv, a.recv_offsets, a.recv_bytes, p));
      }
    }
    return host_->GroupedAllToAllV(ops, deadline);
  }
  absl::Status AllGather(const void* send, int64_t bytes_per_rank, void* recv,
                         absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(CheckOnDevice(send, bytes_per_rank));
    HERD_RETURN_IF_ERROR(CheckOnDevice(recv, bytes_per_rank * world_size()));
    return host_->AllGather(send, bytes_per_rank, recv, deadline);
  }
  absl::Status Broadcast(int root_rank, void* buffer, int64_t bytes, absl::Time deadline) override {
    HERD_RETURN_IF_ERROR(CheckOnDevice(buffer, bytes));
    return host_->Broadcast(root_rank, buffer, bytes, deadline);
  }
  absl::Status Barrier(absl::Time deadline) override { return host_->Barrier(deadline); }
  void Abort(absl::string_view reason) override { host_->Abort(reason); }
  CommStats stats() const override { return host_->stats(); }

 private:
  // Live buffers: first byte -> size.
  struct Registry {
    std::mutex mu;
    std::map<const uint8_t*, int64_t> ranges;
  };
  class TrackedBuffer final : public CommBuffer {
   public:
    TrackedBuffer(int64_t bytes, std::shared_ptr<Registry> registry)
        : host_(bytes), registry_(std::move(registry)) {
      std::lock_guard<std::mutex> lock(registry_->mu);
      if (bytes > 0) registry_->ranges[static_cast<const uint8_t*>(host_.data())] = bytes;
    }
    ~TrackedBuffer() override {
      std::lock_guard<std::mutex> lock(registry_->mu);
      registry_->ranges.erase(static_cast<const uint8_t*>(host_.data()));
    }
    void* data() override { return host_.data(); }
    int64_t size_bytes() const override { return host_.size_bytes(); }
    absl::Status CopyFromHost(int64_t offset, const void* src, int64_t bytes) override {
      return host_.CopyFromHost(offset, src, bytes);
    }
    absl::Status CopyToHost(int64_t offset, void* dst, int64_t bytes) const override {
      return host_.CopyToHost(offset, dst, bytes);
    }

   private:
    HostCommBuffer host_;
    std::shared_ptr<Registry> registry_;
  };

  absl::Status CheckOnDevice(const void* begin, int64_t bytes) const {
    if (bytes <= 0) return absl::OkStatus();
    const auto* p = static_cast<const uint8_t*>(begin);
    std::lock_guard<std::mutex> lock(buffers_->mu);
    auto it = buffers_->ranges.upper_bound(p);
    if (it != buffers_->ranges.begin()) {
      --it;
      if (p >= it->first && p + bytes <= it->first + it->second) return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        "local-as-device: a collective was given memory outside this communicator's buffers");
  }
  absl::Status CheckOnDevice(const void* base, absl::Span<const int64_t> offsets,
                             absl::Span<const int64_t> bytes, int p) const {
    if (base == nullptr || p >= static_cast<int>(offsets.size())) return absl::OkStatus();
    return CheckOnDevice(static_cast<const uint8_t*>(base) + offsets[p], bytes[p]);
  }

  std::unique_ptr<Communicator> host_;
  std::shared_ptr<Registry> buffers_;
};

class LocalRankContext final : public RankContext {
 public:
  LocalRankContext(std::shared_ptr<LocalWorld> world, int rank, bool as_device = false)
      : world_(std::move(world)), rank_(rank), as_device_(as_device) {
    auto control = world_->CreateControlChannel(rank);
    EXPECT_TRUE(control.ok()) << control.status();
    if (control.ok()) control_ = std::move(control).value();
  }
  int rank() const override { return rank_; }
  int world_size() const override { return world_->world_size(); }
  std::unique_ptr<Communicator> NewCommunicator() override {
    auto comm = world_->CreateCommunicator(rank_);
    EXPECT_TRUE(comm.ok()) << comm.status();
    if (!comm.ok()) return nullptr;
    if (as_device_) return std::make_unique<DeviceStagingCommunicator>(std::move(comm).value());
    return std::move(comm).value();
  }
  ControlChannel& control() override { return *control_; }
  bool abort_returns() const override { return true; }
  bool names_missing_peer() const override { return true; }

 private:
  std::shared_ptr<LocalWorld> world_;
  const int rank_;
  const bool as_device_;
  std::unique_ptr<ControlChannel> control_;
};

// Runs `body` on `num_ranks` threads sharing a fresh world.
template <typename Body>
void RunOnThreads(int num_ranks, const Body& body, bool as_device = false) {
  auto world = LocalWorld::Create(num_ranks);
  ASSERT_TRUE(world.ok()) << world.status();
  std::vector<std::thread> threads;
  for (int r = 0; r < num_ranks; ++r) {
    threads.emplace_back([&, r] {
      LocalRankContext ctx(*world, r, as_device);
      body(ctx);
    });
  }
  for (std::thread& t : threads) t.join();
}

class LocalConformance : public ::testing::TestWithParam<int> {};

#define HERD_COMM_LOCAL_CASE(name) \
  TEST_P(LocalConformance, name) { RunOnThreads(GetParam(), name); }
HERD_COMM_CONFORMANCE_CASES(HERD_COMM_LOCAL_CASE)
#undef HERD_COMM_LOCAL_CASE

INSTANTIATE_TEST_SUITE_P(Threads, LocalConformance, ::testing::Values(1, 2, 3, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat(info.param, "ranks");
                         });

class DeviceStagingConformance : public ::testing::TestWithParam<int> {};

#define HERD_COMM_STAGING_CASE(name) \
  TEST_P(DeviceStagingConformance, name) { RunOnThreads(GetParam(), name, /*as_device=*/true); }
HERD_COMM_CONFORMANCE_CASES(HERD_COMM_STAGING_CASE)
#undef HERD_COMM_STAGING_CASE

INSTANTIATE_TEST_SUITE_P(Threads, DeviceStagingConformance, ::testing::Values(1, 2, 3),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat(info.param, "ranks");
                         });

// The staging communicator refuses host memory, so the suite above really
// runs through device buffers.
TEST(DeviceStagingCommunicatorTest, RefusesMemoryOutsideItsBuffers) {
  RunOnThreads(
      2,
      [](RankContext& ctx) {
        std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
        ASSERT_NE(comm, nullptr);
        ASSERT_EQ(comm->memory_space(), MemorySpace::kDevice);
        int host_value = 7;
        EXPECT_EQ(
            comm->Broadcast(0, &host_value, sizeof(host_value), DeadlineAfterMs(30000)).code(),
            absl::StatusCode::kInvalidArgument);
        auto buffer = comm->Allocate(sizeof(int));
        ASSERT_TRUE(buffer.ok());
        ASSERT_TRUE((*buffer)->CopyFromHost(0, &host_value, sizeof(int)).ok());
        EXPECT_TRUE(
            comm->Broadcast(0, (*buffer)->data(), sizeof(int), DeadlineAfterMs(30000)).ok());
      },
      /*as_device=*/true);
}

TEST(LocalWorldTest, RejectsBadSizesAndRanks) {
  EXPECT_EQ(LocalWorld::Create(0).status().code(), absl::StatusCode::kInvalidArgument);
  auto world = LocalWorld::Create(2);
  ASSERT_TRUE(world.ok());
  EXPECT_EQ((*world)->CreateCommunicator(2).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*world)->CreateControlChannel(-1).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(LocalWorldTest, AbortWakesEveryRankOfTheWorld) {
  RunOnThreads(3, [](RankContext& ctx) {
    std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
    ASSERT_NE(comm, nullptr);
    const absl::Time start = absl::Now();
    absl::Status status;
    if (ctx.rank() == 0) {
      absl::SleepFor(absl::Milliseconds(100));
      comm->Abort("the test says so");
      status = comm->Barrier(DeadlineAfterMs(30000));
    } else if (ctx.rank() == 1) {
      status = comm->Barrier(DeadlineAfterMs(30000));
    } else {
      status = ctx.control().Recv(0, 5, DeadlineAfterMs(30000)).status();
    }
    EXPECT_EQ(status.code(), absl::StatusCode::kAborted) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("rank 0 aborted: the test says so"));
    EXPECT_LT(absl::Now() - start, absl::Seconds(10)) << "waiters were not woken";
    EXPECT_EQ(ctx.control().Send(0, 1, "x", DeadlineAfterMs(1000)).code(),
              absl::StatusCode::kAborted);
  });
}

TEST(LocalWorldTest, GroupsFailIndependently) {
  RunOnThreads(2, [](RankContext& ctx) {
    std::unique_ptr<Communicator> broken = ctx.NewCommunicator();
    std::unique_ptr<Communicator> healthy = ctx.NewCommunicator();
    ASSERT_NE(broken, nullptr);
    ASSERT_NE(healthy, nullptr);
    if (ctx.rank() == 0) {
      EXPECT_EQ(broken->Barrier(DeadlineAfterMs(200)).code(), absl::StatusCode::kDeadlineExceeded);
    }
    EXPECT_TRUE(healthy->Barrier(DeadlineAfterMs(30000)).ok());
    if (ctx.rank() == 1) {
      // Rank 1 comes late to the broken group: it sees rank 0's failure.
      const absl::Status late = broken->Barrier(DeadlineAfterMs(30000));
      EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition) << late;
      EXPECT_THAT(std::string(late.message()), HasSubstr("rank(s) 1 did not take part"));
    }
  });
}

TEST(LocalWorldTest, MismatchedCollectivesAreReported) {
  RunOnThreads(2, [](RankContext& ctx) {
    std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
    ASSERT_NE(comm, nullptr);
    int value = ctx.rank();
    const absl::Status status =
        ctx.rank() == 0 ? comm->Barrier(DeadlineAfterMs(30000))
                        : comm->Broadcast(0, &value, sizeof(value), DeadlineAfterMs(30000));
    EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("called"));
  });
}

}  // namespace
}  // namespace herd::comm::testing
