#include "tests/comm/conformance.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "comm/expert_exchange.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace herd::comm::testing {
namespace {

using ::testing::HasSubstr;

#define HERD_ASSERT_OK(expr)                                    \
  do {                                                          \
    const ::absl::Status herd_assert_status = (expr);           \
    ASSERT_TRUE(herd_assert_status.ok()) << herd_assert_status; \
  } while (0)

#define HERD_ASSERT_OK_AND_ASSIGN(lhs, expr)                \
  auto HERD_ASSERT_CONCAT(statusor_, __LINE__) = (expr);    \
  ASSERT_TRUE(HERD_ASSERT_CONCAT(statusor_, __LINE__).ok()) \
      << HERD_ASSERT_CONCAT(statusor_, __LINE__).status();  \
  lhs = std::move(HERD_ASSERT_CONCAT(statusor_, __LINE__)).value()
#define HERD_ASSERT_CONCAT_INNER(a, b) a##b
#define HERD_ASSERT_CONCAT(a, b) HERD_ASSERT_CONCAT_INNER(a, b)

// Calls that should succeed get plenty of time (ranks are oversubscribed);
// calls that must time out get a short deadline.
absl::Time Long() { return DeadlineAfterMs(30000); }
absl::Time Short() { return DeadlineAfterMs(1000); }

uint8_t PatternByte(int src, int dst, int64_t i) {
  return static_cast<uint8_t>((src * 131 + dst * 31 + i * 7 + 1) & 0xff);
}

std::vector<uint8_t> Pattern(int src, int dst, int64_t bytes) {
  std::vector<uint8_t> out(bytes);
  for (int64_t i = 0; i < bytes; ++i) out[i] = PatternByte(src, dst, i);
  return out;
}

// Buffers go through CommBuffer so that the same body drives device memory.
absl::StatusOr<std::unique_ptr<CommBuffer>> Upload(Communicator& comm,
                                                   const std::vector<uint8_t>& host) {
  auto buffer = comm.Allocate(static_cast<int64_t>(host.size()));
  if (!buffer.ok()) return buffer.status();
  const absl::Status copied =
      (*buffer)->CopyFromHost(0, host.data(), static_cast<int64_t>(host.size()));
  if (!copied.ok()) return copied;
  return buffer;
}

absl::StatusOr<std::vector<uint8_t>> Download(const CommBuffer& buffer) {
  std::vector<uint8_t> host(buffer.size_bytes());
  const absl::Status copied = buffer.CopyToHost(0, host.data(), buffer.size_bytes());
  if (!copied.ok()) return copied;
  return host;
}

// The ranks named after each "rank(s) " in an error message.
std::set<int> BlamedRanks(const std::string& message) {
  std::set<int> ranks;
  const std::string key = "rank(s) ";
  for (size_t at = message.find(key); at != std::string::npos; at = message.find(key, at + 1)) {
    size_t i = at + key.size();
    while (i < message.size() && absl::ascii_isdigit(message[i])) {
      int value = 0;
      while (i < message.size() && absl::ascii_isdigit(message[i])) {
        value = value * 10 + (message[i++] - '0');
      }
      ranks.insert(value);
      if (message.compare(i, 2, ", ") == 0) i += 2;
    }
  }
  return ranks;
}

// One all-to-all-v with bytes(src, dst) per pair; send blocks are laid out in
// reverse rank order with gaps, receive blocks in rank order with gaps whose
// bytes must stay untouched.
struct PairwiseCase {
  std::vector<int64_t> send_bytes, send_offsets, recv_bytes, recv_offsets;
  std::vector<uint8_t> send, recv_init;
};

template <typename BytesFn>
PairwiseCase MakePairwiseCase(int me, int world_size, BytesFn bytes) {
  PairwiseCase c;
  c.send_bytes.assign(world_size, 0);
  c.send_offsets.assign(world_size, 0);
  c.recv_bytes.assign(world_size, 0);
  c.recv_offsets.assign(world_size, 0);
  int64_t at = 0;
  for (int p = world_size - 1; p >= 0; --p) {
    c.send_bytes[p] = bytes(me, p);
    c.send_offsets[p] = at;
    at += c.send_bytes[p] + 3;
  }
  c.send.assign(at, 0xAB);
  for (int p = 0; p < world_size; ++p) {
    const std::vector<uint8_t> block = Pattern(me, p, c.send_bytes[p]);
    std::copy(block.begin(), block.end(), c.send.begin() + c.send_offsets[p]);
  }
  at = 5;
  for (int p = 0; p < world_size; ++p) {
    c.recv_bytes[p] = bytes(p, me);
    c.recv_offsets[p] = at;
    at += c.recv_bytes[p] + 5;
  }
  c.recv_init.assign(at, 0xEE);
  return c;
}

// Runs `cases` as one grouped all-to-all-v and checks every received block
// and every gap.
void RunPairwise(Communicator& comm, const std::vector<PairwiseCase>& cases) {
  const int me = comm.rank();
  std::vector<std::unique_ptr<CommBuffer>> sends, recvs;
  std::vector<AllToAllVArgs> ops;
  for (const PairwiseCase& c : cases) {
    HERD_ASSERT_OK_AND_ASSIGN(auto send, Upload(comm, c.send));
    HERD_ASSERT_OK_AND_ASSIGN(auto recv, Upload(comm, c.recv_init));
    ops.push_back(AllToAllVArgs{send->data(), c.send_bytes, c.send_offsets, recv->data(),
                                c.recv_bytes, c.recv_offsets});
    sends.push_back(std::move(send));
    recvs.push_back(std::move(recv));
  }
  HERD_ASSERT_OK(comm.GroupedAllToAllV(ops, Long()));
  for (size_t k = 0; k < cases.size(); ++k) {
    const PairwiseCase& c = cases[k];
    HERD_ASSERT_OK_AND_ASSIGN(const std::vector<uint8_t> got, Download(*recvs[k]));
    std::vector<uint8_t> expected = c.recv_init;
    for (int p = 0; p < comm.world_size(); ++p) {
      const std::vector<uint8_t> block = Pattern(p, me, c.recv_bytes[p]);
      std::copy(block.begin(), block.end(), expected.begin() + c.recv_offsets[p]);
    }
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i], expected[i]) << "op " << k << " byte " << i << " on rank " << me;
    }
  }
}

// One row all-to-all-v with num_rows(src, dst) rows per pair. Rank s sends
// rows of a table whose row r holds RowByte(s, r, i); with list_send the rows
// for rank d are picked with repeats, else the table is sent in order. With
// list_recv the rows land in reverse order with a gap row between any two,
// else in order; unlisted receive rows must stay untouched.
struct RowCase {
  int64_t row_bytes = 0;
  std::vector<int64_t> send_row_offsets, recv_row_offsets;  // [world_size + 1]
  std::vector<int32_t> send_rows, recv_rows;                // empty when not listed
  std::vector<uint8_t> send, recv_init, expected;
};

uint8_t RowByte(int src, int64_t row, int64_t i) {
  return static_cast<uint8_t>((src * 131 + row * 29 + i * 7 + 1) & 0xff);
}

template <typename NumRowsFn>
RowCase MakeRowCase(int me, int world_size, int64_t row_bytes, bool list_send, bool list_recv,
                    NumRowsFn num_rows) {
  // What rank `src` sends: its offsets, table size and the table row of
  // entry i of its list for `dst`.
  auto send_offsets_of = [&](int src) {
    std::vector<int64_t> offsets(world_size + 1, 0);
    for (int d = 0; d < world_size; ++d) offsets[d + 1] = offsets[d] + num_rows(src, d);
    return offsets;
  };
  auto table_rows_of = [&](int src) {
    return std::max<int64_t>(send_offsets_of(src)[world_size], 7);
  };
  auto sent_row = [&](int src, int dst, int64_t i) -> int64_t {
    if (!list_send) return send_offsets_of(src)[dst] + i;
    return (dst * 5 + i * 3) % table_rows_of(src);
  };

  RowCase c;
  c.row_bytes = row_bytes;
  c.send_row_offsets = send_offsets_of(me);
  const int64_t table_rows = table_rows_of(me);
  c.send.resize(table_rows * row_bytes);
  for (int64_t r = 0; r < table_rows; ++r) {
    for (int64_t i = 0; i < row_bytes; ++i) c.send[r * row_bytes + i] = RowByte(me, r, i);
  }
  if (list_send) {
    for (int d = 0; d < world_size; ++d) {
      for (int64_t i = 0; i < num_rows(me, d); ++i) {
        c.send_rows.push_back(static_cast<int32_t>(sent_row(me, d, i)));
      }
    }
  }
  c.recv_row_offsets.assign(world_size + 1, 0);
  for (int p = 0; p < world_size; ++p) {
    c.recv_row_offsets[p + 1] = c.recv_row_offsets[p] + num_rows(p, me);
  }
  const int64_t num_recv = c.recv_row_offsets[world_size];
  const int64_t buffer_rows = list_recv ? 2 * num_recv + 1 : num_recv + 1;
  c.recv_init.assign(buffer_rows * row_bytes, 0xEE);
  c.expected = c.recv_init;
  for (int p = 0; p < world_size; ++p) {
    for (int64_t i = 0; i < num_rows(p, me); ++i) {
      const int64_t entry = c.recv_row_offsets[p] + i;
      const int64_t row = list_recv ? 2 * (num_recv - 1 - entry) + 1 : entry;
      if (list_recv) c.recv_rows.push_back(static_cast<int32_t>(row));
      for (int64_t b = 0; b < row_bytes; ++b) {
        c.expected[row * row_bytes + b] = RowByte(p, sent_row(p, me, i), b);
      }
    }
  }
  return c;
}

// Runs `cases` as one grouped row all-to-all-v (host memory) and checks
// every receive buffer, gaps included.
void RunRowCases(Communicator& comm, std::vector<RowCase> cases) {
  std::vector<std::vector<uint8_t>> recvs;
  std::vector<RowAllToAllVArgs> ops;
  for (const RowCase& c : cases) recvs.push_back(c.recv_init);
  for (size_t k = 0; k < cases.size(); ++k) {
    const RowCase& c = cases[k];
    ops.push_back(RowAllToAllVArgs{c.row_bytes, c.send.data(), c.send_rows, c.send_row_offsets,
                                   recvs[k].data(), c.recv_rows, c.recv_row_offsets});
  }
  HERD_ASSERT_OK(comm.GroupedRowAllToAllV(ops, Long()));
  for (size_t k = 0; k < cases.size(); ++k) {
    ASSERT_EQ(recvs[k].size(), cases[k].expected.size());
    for (size_t i = 0; i < recvs[k].size(); ++i) {
      ASSERT_EQ(recvs[k][i], cases[k].expected[i])
          << "op " << k << " (row_bytes " << cases[k].row_bytes << ", send listed "
          << !cases[k].send_rows.empty() << ", recv listed " << !cases[k].recv_rows.empty()
          << ") byte " << i << " on rank " << comm.rank();
    }
  }
}

// ---- Expert exchange helpers -------------------------------------------

enum class DestRule { kRandom, kAllToRank, kSelf };

struct Routing {
  int64_t num_tokens = 0;
  int64_t top_k = 0;
  int64_t hidden_size = 0;
  std::vector<float> hidden;       // F32 [num_tokens, hidden_size]
  std::vector<int32_t> topk_idx;   // I32 [num_tokens, top_k]
  std::vector<int32_t> dest_rank;  // I32 [num_tokens, top_k]
  DispatchArgs Args() const {
    return DispatchArgs{hidden.data(), topk_idx.data(), dest_rank.data(),
                        num_tokens,    top_k,           hidden_size};
  }
};

// Deterministic in (src_rank, seed), so every rank can rebuild every other
// rank's routing and know what it must receive.
Routing MakeRouting(int src_rank, int world_size, uint32_t seed, int64_t num_tokens, int64_t top_k,
                    int64_t hidden_size, DestRule rule, int target = 0) {
  Routing r;
  r.num_tokens = num_tokens;
  r.top_k = top_k;
  r.hidden_size = hidden_size;
  std::mt19937 rng(seed * 7919u + static_cast<uint32_t>(src_rank));
  r.hidden.resize(num_tokens * hidden_size);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t h = 0; h < hidden_size; ++h) {
      r.hidden[t * hidden_size + h] =
          static_cast<float>(src_rank * 1000 + t) + static_cast<float>(h) * 0.25f;
    }
  }
  for (int64_t s = 0; s < num_tokens * top_k; ++s) {
    r.topk_idx.push_back(static_cast<int32_t>(rng() % 8));
    int32_t dest = 0;
    switch (rule) {
      case DestRule::kRandom:
        dest = static_cast<int32_t>(rng() % (world_size + 1)) - 1;  // -1 = not sent
        break;
      case DestRule::kAllToRank:
        dest = target;
        break;
      case DestRule::kSelf:
        dest = src_rank;
        break;
    }
    r.dest_rank.push_back(dest);
  }
  return r;
}

float ExpertFn(float x, int32_t expert) { return x * static_cast<float>(expert + 1) + 0.5f; }

// Dispatches `mine`, checks what arrived against every source's routing,
// applies ExpertFn, combines and checks every slot. `routing_of(p)` rebuilds
// rank p's routing.
template <typename RoutingOf>
void RoundTrip(ExpertExchange& exchange, Communicator& comm, const RoutingOf& routing_of) {
  const int me = comm.rank();
  const int world_size = comm.world_size();
  const Routing mine = routing_of(me);
  const int64_t hidden_size = mine.hidden_size;
  HERD_ASSERT_OK_AND_ASSIGN(DispatchHandle handle, exchange.Dispatch(mine.Args(), Long()));
  ASSERT_EQ(handle.num_recv_rows_per_rank().size(), static_cast<size_t>(world_size));
  ASSERT_EQ(handle.recv_rank_offsets().size(), static_cast<size_t>(world_size + 1));
  for (int p = 0; p < world_size; ++p) {
    SCOPED_TRACE(::testing::Message() << "rows from rank " << p << " on rank " << me);
    const Routing theirs = routing_of(p);
    std::vector<int64_t> slots;
    for (int64_t s = 0; s < theirs.num_tokens * theirs.top_k; ++s) {
      if (theirs.dest_rank[s] == me) slots.push_back(s);
    }
    ASSERT_EQ(handle.num_recv_rows_per_rank()[p], static_cast<int64_t>(slots.size()));
    ASSERT_EQ(handle.recv_rank_offsets()[p + 1] - handle.recv_rank_offsets()[p],
              static_cast<int64_t>(slots.size()));
    for (size_t i = 0; i < slots.size(); ++i) {
      const int64_t row = handle.recv_rank_offsets()[p] + static_cast<int64_t>(i);
      const int64_t token = slots[i] / theirs.top_k;
      ASSERT_EQ(handle.recv_expert_idx()[row], theirs.topk_idx[slots[i]]) << "row " << row;
      ASSERT_EQ(
          std::memcmp(handle.recv_x() + row * hidden_size,
                      theirs.hidden.data() + token * hidden_size, hidden_size * sizeof(float)),
          0)
          << "row " << row << " (slot " << slots[i] << ")";
    }
  }
  ASSERT_EQ(handle.recv_rank_offsets()[world_size], handle.num_recv_rows());

  std::vector<float> expert_out(handle.num_recv_rows() * hidden_size);
  for (int64_t row = 0; row < handle.num_recv_rows(); ++row) {
    for (int64_t h = 0; h < hidden_size; ++h) {
      expert_out[row * hidden_size + h] =
          ExpertFn(handle.recv_x()[row * hidden_size + h], handle.recv_expert_idx()[row]);
    }
  }
  const int64_t num_slots = mine.num_tokens * mine.top_k;
  std::vector<float> out(num_slots * hidden_size, -7.0f);
  HERD_ASSERT_OK(exchange.Combine(std::move(handle), expert_out.data(), out.data(), Long()));
  for (int64_t s = 0; s < num_slots; ++s) {
    for (int64_t h = 0; h < hidden_size; ++h) {
      const float x = mine.hidden[(s / mine.top_k) * hidden_size + h];
      const float expected = mine.dest_rank[s] < 0 ? 0.0f : ExpertFn(x, mine.topk_idx[s]);
      ASSERT_FLOAT_EQ(out[s * hidden_size + h], expected)
          << "slot " << s << " h " << h << " dest " << mine.dest_rank[s] << " on rank " << me;
    }
  }
}

}  // namespace

// ---- Communicator ------------------------------------------------------

void AllocateAndCopy(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  EXPECT_EQ(comm->rank(), ctx.rank());
  EXPECT_EQ(comm->world_size(), ctx.world_size());
  HERD_ASSERT_OK_AND_ASSIGN(auto empty, comm->Allocate(0));
  EXPECT_EQ(empty->size_bytes(), 0);
  HERD_ASSERT_OK(empty->CopyFromHost(0, nullptr, 0));
  const std::vector<uint8_t> bytes = Pattern(ctx.rank(), 0, 1000);
  HERD_ASSERT_OK_AND_ASSIGN(auto buffer, Upload(*comm, bytes));
  std::vector<uint8_t> middle(10);
  HERD_ASSERT_OK(buffer->CopyToHost(500, middle.data(), 10));
  EXPECT_TRUE(std::equal(middle.begin(), middle.end(), bytes.begin() + 500));
  EXPECT_EQ(buffer->CopyToHost(995, middle.data(), 10).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(buffer->CopyFromHost(-1, bytes.data(), 1).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(comm->Allocate(-1).status().code(), absl::StatusCode::kInvalidArgument);
  HERD_ASSERT_OK(comm->Barrier(Long()));
}

void AllToAllVUnevenCounts(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  auto bytes = [](int src, int dst) -> int64_t {
    if ((src * 2 + dst) % 3 == 2) return 0;
    return ((src + 1) * 37 + dst * 11) % 97 + 1;
  };
  for (int repeat = 0; repeat < 3; ++repeat) {
    RunPairwise(*comm, {MakePairwiseCase(ctx.rank(), ctx.world_size(), bytes)});
    if (::testing::Test::HasFatalFailure()) return;
  }
}

void AllToAllVZeroCounts(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  const std::vector<int64_t> zeros(ctx.world_size(), 0);
  const AllToAllVArgs none{nullptr, zeros, zeros, nullptr, zeros, zeros};
  for (int i = 0; i < 5; ++i) HERD_ASSERT_OK(comm->AllToAllV(none, Long()));
  // Still in step with the peers afterwards.
  RunPairwise(*comm, {MakePairwiseCase(ctx.rank(), ctx.world_size(),
                                       [](int src, int dst) -> int64_t { return src + dst + 1; })});
}

void AllToAllVAllRanksToOne(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  for (int target = 0; target < ctx.world_size(); ++target) {
    SCOPED_TRACE(::testing::Message() << "target rank " << target);
    RunPairwise(*comm, {MakePairwiseCase(ctx.rank(), ctx.world_size(),
                                         [target](int src, int dst) -> int64_t {
                                           return dst == target ? 1000 + src : 0;
                                         })});
    if (::testing::Test::HasFatalFailure()) return;
  }
}

void AllToAllVLargeBlocks(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  // Megabytes per pair: past every eager limit, so rendezvous / pipelined
  // protocols run.
  RunPairwise(*comm,
              {MakePairwiseCase(ctx.rank(), ctx.world_size(), [](int src, int dst) -> int64_t {
                return (3 << 20) + src * 4099 + dst;
              })});
}

void GroupedAllToAllVOneRound(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  const int me = ctx.rank();
  const int n = ctx.world_size();
  RunPairwise(*comm, {MakePairwiseCase(me, n, [](int, int) -> int64_t { return 8; }),
                      MakePairwiseCase(me, n,
                                       [](int src, int dst) -> int64_t {
                                         return (src + dst) % 2 == 0 ? 70000 + src : 3;
                                       }),
                      MakePairwiseCase(me, n, [](int, int) -> int64_t { return 0; })});
  const CommStats before = comm->stats();
  RunPairwise(*comm, {MakePairwiseCase(me, n, [](int, int) -> int64_t { return 1; }),
                      MakePairwiseCase(me, n, [](int, int) -> int64_t { return 2; })});
  EXPECT_EQ(comm->stats().num_collectives - before.num_collectives, 1)
      << "a grouped call is one collective";
}

void RowAllToAllVGatherScatter(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  if (comm->memory_space() != MemorySpace::kHost) {
    GTEST_SKIP() << "row all-to-all-v takes host memory; ExpertExchange stages for device";
  }
  const int me = ctx.rank();
  const int n = ctx.world_size();
  auto uneven = [](int src, int dst) -> int64_t {
    return (src * 2 + dst) % 3 == 2 ? 0 : src + dst + 1;
  };
  // Megabytes per pair: past every eager limit.
  auto large = [](int src, int dst) -> int64_t { return 250 + 3 * src + dst; };
  for (const bool list_send : {false, true}) {
    for (const bool list_recv : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << "send listed " << list_send << ", recv listed " << list_recv);
      RunRowCases(*comm, {MakeRowCase(me, n, 12, list_send, list_recv, uneven)});
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  const CommStats before = comm->stats();
  RunRowCases(*comm, {MakeRowCase(me, n, 4100, true, false, large),
                      MakeRowCase(me, n, 4100, false, true, large),
                      MakeRowCase(me, n, 8, true, true, [](int, int) -> int64_t { return 0; }),
                      MakeRowCase(me, n, 1, true, true, uneven)});
  if (::testing::Test::HasFatalFailure()) return;
  const CommStats after = comm->stats();
  EXPECT_EQ(after.num_collectives - before.num_collectives, 1)
      << "a grouped call is one collective";
  int64_t off_rank_bytes = 0;
  for (int p = 0; p < n; ++p) {
    if (p != me) off_rank_bytes += 4100 * 2 * large(me, p) + uneven(me, p);
  }
  EXPECT_EQ(after.bytes_sent - before.bytes_sent, off_rank_bytes);
}

void RowAllToAllVRejectsBadArgs(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  if (comm->memory_space() != MemorySpace::kHost) {
    GTEST_SKIP() << "row all-to-all-v takes host memory; ExpertExchange stages for device";
  }
  const int me = ctx.rank();
  const int n = ctx.world_size();
  const RowCase good =
      MakeRowCase(me, n, 16, true, true, [](int src, int dst) -> int64_t { return src + dst + 1; });
  std::vector<uint8_t> recv = good.recv_init;
  const RowAllToAllVArgs args{good.row_bytes,        good.send.data(), good.send_rows,
                              good.send_row_offsets, recv.data(),      good.recv_rows,
                              good.recv_row_offsets};
  auto expect_invalid = [&](RowAllToAllVArgs bad, const char* why) {
    const absl::Status status = comm->GroupedRowAllToAllV(absl::MakeConstSpan(&bad, 1), Long());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << why << ": " << status;
  };
  RowAllToAllVArgs bad = args;
  bad.row_bytes = 0;
  expect_invalid(bad, "zero row_bytes");
  bad = args;
  bad.send_row_offsets = absl::MakeConstSpan(good.send_row_offsets).subspan(1);
  expect_invalid(bad, "offsets one short");
  std::vector<int64_t> decreasing = good.recv_row_offsets;
  decreasing[n] = decreasing[n - 1] - 1;
  bad = args;
  bad.recv_row_offsets = decreasing;
  expect_invalid(bad, "decreasing offsets");
  std::vector<int32_t> one_more = good.send_rows;
  one_more.push_back(0);
  bad = args;
  bad.send_rows = one_more;
  expect_invalid(bad, "row list longer than the offsets count");
  std::vector<int32_t> negative = good.recv_rows;
  negative.back() = -1;
  bad = args;
  bad.recv_rows = negative;
  expect_invalid(bad, "negative row");
  bad = args;
  bad.recv = nullptr;
  expect_invalid(bad, "null receive buffer");
  std::vector<int64_t> more_for_me = good.recv_row_offsets;
  for (int p = me + 1; p <= n; ++p) ++more_for_me[p];
  bad = args;
  bad.recv_row_offsets = more_for_me;
  bad.recv_rows = {};
  expect_invalid(bad, "expects more rows from itself than it sends");
  // With unknown counts: receive sides come from `place`, and every op sends
  // each rank as many rows as op 0.
  auto never_called = [](absl::Span<const int64_t>, absl::Span<void*>) {
    ADD_FAILURE() << "place called for invalid ops";
  };
  const RowAllToAllVArgs send_only{
      16, good.send.data(), good.send_rows, good.send_row_offsets, nullptr, {}, {}};
  EXPECT_EQ(
      comm->GroupedRowAllToAllVUnknownCounts(absl::MakeConstSpan(&args, 1), never_called, Long())
          .code(),
      absl::StatusCode::kInvalidArgument)
      << "a receive side was given";
  const std::vector<int64_t> none(n + 1, 0);
  const RowAllToAllVArgs empty_op{16, nullptr, {}, none, nullptr, {}, {}};
  const RowAllToAllVArgs disagree[2] = {send_only, empty_op};
  EXPECT_EQ(comm->GroupedRowAllToAllVUnknownCounts(disagree, never_called, Long()).code(),
            absl::StatusCode::kInvalidArgument)
      << "ops with different counts";
  // Nothing was sent: the communicator still works, in step with its peers.
  HERD_ASSERT_OK(comm->GroupedRowAllToAllV(absl::MakeConstSpan(&args, 1), Long()));
  EXPECT_EQ(recv, good.expected);
}

void AllGatherEveryRank(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  const int n = ctx.world_size();
  for (int64_t bytes : {int64_t{0}, int64_t{1}, int64_t{4097}, int64_t{1} << 20}) {
    SCOPED_TRACE(::testing::Message() << "bytes per rank " << bytes);
    HERD_ASSERT_OK_AND_ASSIGN(auto send, Upload(*comm, Pattern(ctx.rank(), 99, bytes)));
    HERD_ASSERT_OK_AND_ASSIGN(auto recv, Upload(*comm, std::vector<uint8_t>(bytes * n + 7, 0xEE)));
    HERD_ASSERT_OK(comm->AllGather(send->data(), bytes, recv->data(), Long()));
    HERD_ASSERT_OK_AND_ASSIGN(const std::vector<uint8_t> got, Download(*recv));
    for (int p = 0; p < n; ++p) {
      const std::vector<uint8_t> expected = Pattern(p, 99, bytes);
      ASSERT_TRUE(std::equal(expected.begin(), expected.end(), got.begin() + p * bytes))
          << "block of rank " << p;
    }
    for (int64_t i = bytes * n; i < bytes * n + 7; ++i) ASSERT_EQ(got[i], 0xEE) << "overrun";
  }
}

void BroadcastFromEveryRoot(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  for (int root = 0; root < ctx.world_size(); ++root) {
    for (int64_t bytes : {int64_t{0}, int64_t{17}, int64_t{1} << 20}) {
      SCOPED_TRACE(::testing::Message() << "root " << root << " bytes " << bytes);
      const std::vector<uint8_t> data =
          ctx.rank() == root ? Pattern(root, 7, bytes) : std::vector<uint8_t>(bytes, 0xEE);
      HERD_ASSERT_OK_AND_ASSIGN(auto buffer, Upload(*comm, data));
      HERD_ASSERT_OK(comm->Broadcast(root, buffer->data(), bytes, Long()));
      HERD_ASSERT_OK_AND_ASSIGN(const std::vector<uint8_t> got, Download(*buffer));
      ASSERT_EQ(got, Pattern(root, 7, bytes));
    }
  }
}

void BarrierWaitsForTheLastRank(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  for (int i = 0; i < 20; ++i) HERD_ASSERT_OK(comm->Barrier(Long()));
  const int last = ctx.world_size() - 1;
  const absl::Time start = absl::Now();
  if (ctx.rank() == last) absl::SleepFor(absl::Milliseconds(300));
  HERD_ASSERT_OK(comm->Barrier(Long()));
  if (ctx.world_size() > 1) {
    EXPECT_GE(absl::Now() - start, absl::Milliseconds(250))
        << "rank " << ctx.rank() << " left the barrier before rank " << last << " entered it";
  }
}

void InvalidArgumentsKeepCommunicator(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  const int n = ctx.world_size();
  const std::vector<int64_t> short_list(n + 1, 0);
  const std::vector<int64_t> zeros(n, 0);
  EXPECT_EQ(
      comm->AllToAllV({nullptr, short_list, short_list, nullptr, zeros, zeros}, Long()).code(),
      absl::StatusCode::kInvalidArgument);
  std::vector<int64_t> negative(n, 0);
  negative[0] = -1;
  EXPECT_EQ(comm->AllToAllV({nullptr, negative, zeros, nullptr, zeros, zeros}, Long()).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<int64_t> some(n, 4);
  EXPECT_EQ(comm->AllToAllV({nullptr, some, zeros, nullptr, zeros, zeros}, Long()).code(),
            absl::StatusCode::kInvalidArgument)
      << "null send buffer with bytes to send";
  EXPECT_EQ(comm->AllGather(nullptr, -1, nullptr, Long()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->Broadcast(n, nullptr, 0, Long()).code(), absl::StatusCode::kInvalidArgument);
  HERD_ASSERT_OK(comm->Barrier(Long()));
}

void StatsCountOnlyOffRankBytes(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  const CommStats before = comm->stats();
  RunPairwise(*comm, {MakePairwiseCase(ctx.rank(), ctx.world_size(),
                                       [](int, int) -> int64_t { return 100; })});
  const CommStats after = comm->stats();
  EXPECT_EQ(after.num_collectives - before.num_collectives, 1);
  EXPECT_EQ(after.bytes_sent - before.bytes_sent, 100 * (ctx.world_size() - 1))
      << "the block for this rank itself is a copy, not network traffic";
}

void DeadlineNamesMissingRank(RankContext& ctx) {
  if (ctx.world_size() < 2) GTEST_SKIP() << "needs a peer that can be missing";
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  std::unique_ptr<Communicator> comm2 = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ASSERT_NE(comm2, nullptr);
  const int missing = ctx.world_size() - 1;
  if (ctx.rank() == missing) return;  // takes part in nothing

  const std::vector<int64_t> eight(ctx.world_size(), 8);
  std::vector<int64_t> offsets(ctx.world_size());
  for (int p = 0; p < ctx.world_size(); ++p) offsets[p] = 8 * p;
  HERD_ASSERT_OK_AND_ASSIGN(auto send, Upload(*comm, std::vector<uint8_t>(8 * ctx.world_size())));
  HERD_ASSERT_OK_AND_ASSIGN(auto recv, Upload(*comm, std::vector<uint8_t>(8 * ctx.world_size())));
  const absl::Time start = absl::Now();
  const absl::Status status =
      comm->AllToAllV({send->data(), eight, offsets, recv->data(), eight, offsets}, Short());
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(15)) << "the deadline was not honoured";
  if (ctx.names_missing_peer()) {
    EXPECT_EQ(BlamedRanks(std::string(status.message())), std::set<int>{missing}) << status;
  }
  // A failed communicator stays failed.
  EXPECT_EQ(comm->Barrier(Long()).code(), absl::StatusCode::kFailedPrecondition);

  const absl::Status barrier = comm2->Barrier(Short());
  EXPECT_EQ(barrier.code(), absl::StatusCode::kDeadlineExceeded) << barrier;
  if (ctx.names_missing_peer()) {
    EXPECT_EQ(BlamedRanks(std::string(barrier.message())), std::set<int>{missing}) << barrier;
  }
}

void BroadcastDeadlineNamesRoot(RankContext& ctx) {
  if (ctx.world_size() < 2) GTEST_SKIP() << "needs a root that can be missing";
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  if (ctx.rank() == 0) return;  // the root never comes
  HERD_ASSERT_OK_AND_ASSIGN(auto buffer, Upload(*comm, std::vector<uint8_t>(64)));
  const absl::Status status = comm->Broadcast(0, buffer->data(), 64, Short());
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  if (ctx.names_missing_peer()) {
    EXPECT_EQ(BlamedRanks(std::string(status.message())), std::set<int>{0}) << status;
  }
}

void AbortFailsLaterCalls(RankContext& ctx) {
  if (!ctx.abort_returns()) {
    GTEST_SKIP() << "this backend's Abort ends the job (mpi: MPI_Abort); see mpi_fault_test.sh";
  }
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  // NOTE: no collective before the abort: with the local backend the first
  // rank's Abort already fails the peers' calls (the whole world aborts).
  comm->Abort("conformance test");
  const absl::Time start = absl::Now();
  const absl::Status status = comm->Barrier(Long());
  EXPECT_EQ(status.code(), absl::StatusCode::kAborted) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("aborted"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

// ---- ExpertExchange ----------------------------------------------------

void ExchangeRoundTripUneven(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ExpertExchange exchange(comm.get());
  const int n = ctx.world_size();
  struct Shape {
    int64_t top_k, hidden_size;
  };
  uint32_t seed = 1;
  for (const Shape shape : {Shape{1, 1}, Shape{2, 16}, Shape{3, 33}, Shape{8, 5}}) {
    SCOPED_TRACE(::testing::Message()
                 << "top_k " << shape.top_k << " hidden " << shape.hidden_size);
    ++seed;
    RoundTrip(exchange, *comm, [&](int p) {
      return MakeRouting(p, n, seed, (p * 7 + 3) % 11, shape.top_k, shape.hidden_size,
                         DestRule::kRandom);
    });
    if (::testing::Test::HasFatalFailure()) return;
  }
}

void ExchangeZeroTokens(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ExpertExchange exchange(comm.get());
  const int n = ctx.world_size();
  // Nobody has tokens: counts still go around, nothing else.
  RoundTrip(exchange, *comm,
            [&](int p) { return MakeRouting(p, n, 11, 0, 2, 8, DestRule::kRandom); });
  if (::testing::Test::HasFatalFailure()) return;
  // Rank 0 has no tokens but receives rows from the others.
  RoundTrip(exchange, *comm, [&](int p) {
    return MakeRouting(p, n, 12, p == 0 ? 0 : 9, 2, 8, DestRule::kAllToRank, 0);
  });
  if (::testing::Test::HasFatalFailure()) return;
  // top_k = 0.
  RoundTrip(exchange, *comm,
            [&](int p) { return MakeRouting(p, n, 13, 4, 0, 8, DestRule::kRandom); });
}

void ExchangeAllSlotsToOneRank(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ExpertExchange exchange(comm.get());
  const int n = ctx.world_size();
  for (int target = 0; target < n; ++target) {
    SCOPED_TRACE(::testing::Message() << "target rank " << target);
    RoundTrip(exchange, *comm, [&](int p) {
      return MakeRouting(p, n, 20 + target, 6 + p, 2, 64, DestRule::kAllToRank, target);
    });
    if (::testing::Test::HasFatalFailure()) return;
  }
}

void ExchangeLocalRowsSkipNetwork(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ExpertExchange exchange(comm.get());
  const int n = ctx.world_size();
  const int me = ctx.rank();
  const int64_t hidden_size = 32;
  // What the counts cost on this backend: a round trip with no rows at all
  // (an int64 per peer, or nothing where they ride on the rows' messages).
  CommStats before = comm->stats();
  RoundTrip(exchange, *comm,
            [&](int p) { return MakeRouting(p, n, 29, 0, 2, hidden_size, DestRule::kSelf); });
  if (::testing::Test::HasFatalFailure()) return;
  const int64_t counts_bytes = comm->stats().bytes_sent - before.bytes_sent;
  EXPECT_LE(counts_bytes, 8 * (n - 1));

  // Every slot stays on its rank: only the counts go over the network.
  before = comm->stats();
  RoundTrip(exchange, *comm,
            [&](int p) { return MakeRouting(p, n, 30, 10, 2, hidden_size, DestRule::kSelf); });
  if (::testing::Test::HasFatalFailure()) return;
  EXPECT_EQ(comm->stats().bytes_sent - before.bytes_sent, counts_bytes);

  // Random routing: exactly the rows for other ranks (ids + rows), both ways.
  auto routing_of = [&](int p) {
    return MakeRouting(p, n, 31, 12, 3, hidden_size, DestRule::kRandom);
  };
  int64_t expected = counts_bytes;
  const Routing mine = routing_of(me);
  for (int32_t dest : mine.dest_rank) {
    if (dest >= 0 && dest != me) expected += sizeof(int32_t) + hidden_size * sizeof(float);
  }
  for (int p = 0; p < n; ++p) {
    if (p == me) continue;
    for (int32_t dest : routing_of(p).dest_rank) {
      if (dest == me) expected += hidden_size * sizeof(float);  // sent back by Combine
    }
  }
  before = comm->stats();
  RoundTrip(exchange, *comm, routing_of);
  if (::testing::Test::HasFatalFailure()) return;
  EXPECT_EQ(comm->stats().bytes_sent - before.bytes_sent, expected);
}

void ExchangeTwoHandlesInFlight(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ExpertExchange exchange(comm.get());
  const int n = ctx.world_size();
  const Routing a = MakeRouting(ctx.rank(), n, 40, 7, 2, 8, DestRule::kRandom);
  const Routing b = MakeRouting(ctx.rank(), n, 41, 5, 1, 4, DestRule::kRandom);
  HERD_ASSERT_OK_AND_ASSIGN(DispatchHandle ha, exchange.Dispatch(a.Args(), Long()));
  HERD_ASSERT_OK_AND_ASSIGN(DispatchHandle hb, exchange.Dispatch(b.Args(), Long()));
  for (auto* pair : {&a, &b}) {
    DispatchHandle& handle = pair == &a ? ha : hb;
    const Routing& r = *pair;
    std::vector<float> expert_out(handle.recv_x(),
                                  handle.recv_x() + handle.num_recv_rows() * r.hidden_size);
    std::vector<float> out(r.num_tokens * r.top_k * r.hidden_size);
    HERD_ASSERT_OK(exchange.Combine(std::move(handle), expert_out.data(), out.data(), Long()));
    for (int64_t s = 0; s < r.num_tokens * r.top_k; ++s) {
      for (int64_t h = 0; h < r.hidden_size; ++h) {
        const float expected =
            r.dest_rank[s] < 0 ? 0.0f : r.hidden[(s / r.top_k) * r.hidden_size + h];
        ASSERT_EQ(out[s * r.hidden_size + h], expected) << "slot " << s;
      }
    }
    // The handle was consumed: combining it again is refused before any
    // communication.
    EXPECT_EQ(exchange.Combine(std::move(handle), expert_out.data(), out.data(), Long()).code(),
              absl::StatusCode::kInvalidArgument);
  }
}

void ExchangeRejectsBadInput(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ExpertExchange exchange(comm.get());
  ExpertExchange other(comm.get());
  const int n = ctx.world_size();
  Routing r = MakeRouting(ctx.rank(), n, 50, 3, 2, 4, DestRule::kRandom);
  r.dest_rank[1] = n;  // out of range on every rank
  EXPECT_EQ(exchange.Dispatch(r.Args(), Long()).status().code(),
            absl::StatusCode::kInvalidArgument);
  r.dest_rank[1] = -2;
  EXPECT_EQ(exchange.Dispatch(r.Args(), Long()).status().code(),
            absl::StatusCode::kInvalidArgument);
  r.dest_rank[1] = 0;
  DispatchArgs no_hidden = r.Args();
  no_hidden.hidden_size = 0;
  EXPECT_EQ(exchange.Dispatch(no_hidden, Long()).status().code(),
            absl::StatusCode::kInvalidArgument);
  DispatchArgs null_data = r.Args();
  null_data.hidden = nullptr;
  EXPECT_EQ(exchange.Dispatch(null_data, Long()).status().code(),
            absl::StatusCode::kInvalidArgument);

  // A handle is bound to the exchange that made it.
  HERD_ASSERT_OK_AND_ASSIGN(DispatchHandle handle, exchange.Dispatch(r.Args(), Long()));
  std::vector<float> expert_out(handle.num_recv_rows() * 4);
  std::vector<float> out(3 * 2 * 4);
  EXPECT_EQ(other.Combine(std::move(handle), expert_out.data(), out.data(), Long()).code(),
            absl::StatusCode::kInvalidArgument);
  // Nothing above left the ranks out of step.
  RoundTrip(exchange, *comm,
            [&](int p) { return MakeRouting(p, n, 51, 3, 2, 4, DestRule::kRandom); });
}

// ---- ControlChannel ----------------------------------------------------

void ControlPointToPoint(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ControlChannel& control = ctx.control();
  const int me = ctx.rank();
  const int n = ctx.world_size();
  EXPECT_EQ(control.rank(), me);
  EXPECT_EQ(control.world_size(), n);
  const std::vector<int64_t> sizes = {0, 5, 1 << 20};
  // A chain r -> r + 1 (the last rank only receives), then a self-message.
  // NOTE: mpi Send of a large message waits for the receiver to match it, so
  // the chain unwinds from its end.
  if (me + 1 < n) {
    for (int64_t size : sizes) {
      const std::vector<uint8_t> bytes = Pattern(me, me + 1, size);
      HERD_ASSERT_OK(control.Send(me + 1, 100, std::string(bytes.begin(), bytes.end()), Long()));
    }
  }
  if (me > 0) {
    for (int64_t size : sizes) {
      HERD_ASSERT_OK_AND_ASSIGN(ControlMessage m, control.Recv(me - 1, 100, Long()));
      EXPECT_EQ(m.src_rank, me - 1);
      EXPECT_EQ(m.tag, 100);
      const std::vector<uint8_t> expected = Pattern(me - 1, me, size);
      ASSERT_EQ(m.payload, std::string(expected.begin(), expected.end()));
    }
  }
  HERD_ASSERT_OK(control.Send(me, 101, "to myself", Long()));
  HERD_ASSERT_OK_AND_ASSIGN(ControlMessage self, control.Recv(me, 101, Long()));
  EXPECT_EQ(self.payload, "to myself");

  EXPECT_EQ(control.Send(n, 1, "x", Long()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(control.Send(0, kMaxControlTag + 1, "x", Long()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(control.Recv(-2, 1, Long()).status().code(), absl::StatusCode::kInvalidArgument);
  HERD_ASSERT_OK(comm->Barrier(Long()));
}

void ControlAnySourceAndOrder(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ControlChannel& control = ctx.control();
  const int me = ctx.rank();
  const int n = ctx.world_size();
  if (me != 0) {
    for (int i = 0; i < 3; ++i) {
      HERD_ASSERT_OK(control.Send(0, 200, absl::StrCat(me, ":", i), Long()));
    }
    HERD_ASSERT_OK(control.Send(0, 201, "first", Long()));
    HERD_ASSERT_OK(control.Send(0, 202, "second", Long()));
  } else {
    std::vector<int> next(n, 0);
    for (int k = 0; k < 3 * (n - 1); ++k) {
      HERD_ASSERT_OK_AND_ASSIGN(ControlMessage m, control.Recv(kAnySource, 200, Long()));
      ASSERT_GE(m.src_rank, 1);
      ASSERT_LT(m.src_rank, n);
      EXPECT_EQ(m.payload, absl::StrCat(m.src_rank, ":", next[m.src_rank]++))
          << "messages from one source arrive in order";
    }
    for (int p = 1; p < n; ++p) {
      EXPECT_EQ(next[p], 3);
      // Tags select: the later tag can be taken first.
      HERD_ASSERT_OK_AND_ASSIGN(ControlMessage second, control.Recv(p, 202, Long()));
      EXPECT_EQ(second.payload, "second");
      HERD_ASSERT_OK_AND_ASSIGN(ControlMessage first, control.Recv(p, 201, Long()));
      EXPECT_EQ(first.payload, "first");
    }
  }
  HERD_ASSERT_OK(comm->Barrier(Long()));
}

void ControlBroadcast(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ControlChannel& control = ctx.control();
  for (int root = 0; root < ctx.world_size(); ++root) {
    const std::string sent(static_cast<size_t>(root) * 1000 + 1, static_cast<char>('a' + root));
    std::string payload = ctx.rank() == root ? sent : std::string(3, '?');
    HERD_ASSERT_OK(control.Broadcast(root, &payload, Long()));
    EXPECT_EQ(payload, sent) << "root " << root;
  }
  HERD_ASSERT_OK(comm->Barrier(Long()));
}

void ControlRecvDeadlineNamesRank(RankContext& ctx) {
  std::unique_ptr<Communicator> comm = ctx.NewCommunicator();
  ASSERT_NE(comm, nullptr);
  ControlChannel& control = ctx.control();
  const int n = ctx.world_size();
  if (ctx.rank() == 0) {
    const absl::Status status = control.Recv(n - 1, 300, DeadlineAfterMs(300)).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(absl::StrCat("rank ", n - 1)));
    const absl::Status any = control.Recv(kAnySource, 300, DeadlineAfterMs(100)).status();
    EXPECT_EQ(any.code(), absl::StatusCode::kDeadlineExceeded) << any;
    EXPECT_THAT(std::string(any.message()), HasSubstr("any rank"));
  }
  // A missed Recv deadline leaves the channel usable.
  std::string payload = ctx.rank() == 0 ? "still works" : "";
  HERD_ASSERT_OK(control.Broadcast(0, &payload, Long()));
  EXPECT_EQ(payload, "still works");
  HERD_ASSERT_OK(comm->Barrier(Long()));
}

}  // namespace herd::comm::testing
