// ResidentRowExchange (rows kept in the communicator's memory space, gathered
// by a RowMover) against ExpertRowExchange (rows through the host) on the
// same layers: ranks as threads of a local world, the host row mover. One
// test body runs both exchanges; they must receive, group and return every
// row alike, and both must return each slot its expert's row.
#include "worker/resident_row_exchange.h"

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "comm/local_world.h"
#include "core/placement.h"
#include "gtest/gtest.h"
#include "worker/expert_parallelism.h"
#include "worker/row_mover.h"

namespace herd {
namespace {

constexpr int kNumLayers = 2;
constexpr int kNumExperts = 6;
constexpr int64_t kHidden = 5;

// One rank's layer: its tokens' rows and routing.
struct RankLayer {
  int64_t num_tokens = 0;
  std::vector<float> hidden;        // F32 [num_tokens, kHidden]
  std::vector<int32_t> expert_idx;  // I32 [num_tokens, top_k], -1 skipped
};

// What one rank saw of one layer.
struct RankOutcome {
  absl::Status status;
  int64_t num_recv = 0;
  std::vector<int32_t> offsets;
  std::vector<float> grouped_in;
  std::vector<float> out;  // F32 [num_tokens * top_k, kHidden]
  int64_t dispatched_slots = 0, received_rows = 0;
};

// Storage slot of each logical expert on `rank` (-1: not held).
std::vector<int32_t> LocalSlots(const ExpertPlacement& p, int layer, int rank) {
  std::vector<int32_t> local(kNumExperts, -1);
  const auto experts = p.RankExperts(layer, rank);
  for (size_t i = 0; i < experts.size(); ++i) {
    if (local[experts[i]] < 0) local[experts[i]] = static_cast<int32_t>(i);
  }
  return local;
}

// The stand-in for a rank's experts: a row of storage slot s becomes
// row * (s + 1) + 0.5 s.
float Expert(float x, int32_t slot) { return x * static_cast<float>(slot + 1) + 0.5f * slot; }

std::vector<float> RunExperts(const std::vector<float>& grouped_in,
                              const std::vector<int32_t>& offsets) {
  std::vector<float> out(grouped_in.size());
  for (size_t s = 0; s + 1 < offsets.size(); ++s) {
    for (int64_t r = offsets[s]; r < offsets[s + 1]; ++r) {
      for (int64_t c = 0; c < kHidden; ++c) {
        out[r * kHidden + c] = Expert(grouped_in[r * kHidden + c], static_cast<int32_t>(s));
      }
    }
  }
  return out;
}

enum class Exchange { kThroughHost, kResident };

std::string Name(Exchange e) { return e == Exchange::kResident ? "resident" : "through host"; }

// Every rank runs layers[round][rank] on layer `round % kNumLayers` with one
// exchange object per rank (so buffers are reused and grown across rounds).
std::vector<std::vector<RankOutcome>> RunRounds(Exchange kind, const ExpertPlacement& placement,
                                                const std::vector<std::vector<RankLayer>>& rounds,
                                                int64_t top_k) {
  const int world_size = placement.num_ranks();
  auto world = comm::LocalWorld::Create(world_size);
  EXPECT_TRUE(world.ok()) << world.status();
  std::vector<std::vector<RankOutcome>> outcomes(rounds.size(),
                                                 std::vector<RankOutcome>(world_size));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world_size; ++rank) {
    threads.emplace_back([&, rank] {
      auto comm = (*world)->CreateCommunicator(rank);
      ASSERT_TRUE(comm.ok()) << comm.status();
      const ExpertParallelism ep{comm->get(), &placement, absl::Seconds(30)};
      EngineStats stats;
      stats.layer_expert_rows.assign(kNumLayers, 0);
      HostRowMover mover;
      ExpertRowExchange through_host(ep);
      ResidentRowExchange resident(ep, &mover);
      for (size_t round = 0; round < rounds.size(); ++round) {
        const RankLayer& in = rounds[round][rank];
        const int layer = static_cast<int>(round % kNumLayers);
        const std::vector<int32_t> local = LocalSlots(placement, layer, rank);
        const int64_t num_slots = static_cast<int64_t>(placement.RankExperts(layer, rank).size());
        RankOutcome& o = outcomes[round][rank];
        o.out.assign(in.num_tokens * top_k * kHidden, -7.0f);  // every entry must be written
        const int64_t slots_before = stats.dispatched_slots, rows_before = stats.received_rows;
        if (kind == Exchange::kThroughHost) {
          o.status = through_host.Dispatch(placement, layer, in.hidden.data(), in.expert_idx.data(),
                                           in.num_tokens, top_k, kHidden, local, num_slots, stats);
          if (!o.status.ok()) return;
          o.num_recv = through_host.num_recv();
          o.offsets.assign(through_host.offsets(), through_host.offsets() + num_slots + 1);
          o.grouped_in.assign(through_host.grouped_in(),
                              through_host.grouped_in() + o.num_recv * kHidden);
          const std::vector<float> expert_out = RunExperts(o.grouped_in, o.offsets);
          std::copy(expert_out.begin(), expert_out.end(), through_host.grouped_out());
          o.status = through_host.Combine(o.out.data(), stats);
        } else {
          o.status = resident.Dispatch(placement, layer, in.hidden.data(), in.expert_idx.data(),
                                       in.num_tokens, top_k, kHidden, local, num_slots, stats);
          if (!o.status.ok()) return;
          o.num_recv = resident.num_recv();
          o.offsets.assign(resident.offsets(), resident.offsets() + num_slots + 1);
          o.grouped_in.assign(o.num_recv * kHidden, -9.0f);
          o.status = resident.GatherGrouped(o.grouped_in.data());
          if (!o.status.ok()) return;
          // In place, as the CUDA engine runs it: the experts' rows and the
          // combined slots share one buffer.
          std::vector<float> buffer = RunExperts(o.grouped_in, o.offsets);
          buffer.resize(std::max(buffer.size(), o.out.size()));
          o.status = resident.Combine(buffer.data(), buffer.data(), stats);
          std::copy(buffer.begin(), buffer.begin() + static_cast<int64_t>(o.out.size()),
                    o.out.begin());
        }
        if (!o.status.ok()) return;
        o.dispatched_slots = stats.dispatched_slots - slots_before;
        o.received_rows = stats.received_rows - rows_before;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return outcomes;
}

// Rounds of random layers: 0..max_tokens tokens per rank (rank 1 has none in
// round 0), about one slot in seven skipped.
std::vector<std::vector<RankLayer>> RandomRounds(int world_size, int num_rounds, int64_t top_k,
                                                 int max_tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<std::vector<RankLayer>> rounds(num_rounds);
  for (int round = 0; round < num_rounds; ++round) {
    for (int rank = 0; rank < world_size; ++rank) {
      RankLayer l;
      l.num_tokens = (round == 0 && rank == 1) ? 0 : rng() % (max_tokens + 1);
      for (int64_t i = 0; i < l.num_tokens * kHidden; ++i) l.hidden.push_back(value(rng));
      for (int64_t t = 0; t < l.num_tokens; ++t) {
        std::vector<int32_t> experts(kNumExperts);
        for (int e = 0; e < kNumExperts; ++e) experts[e] = e;
        std::shuffle(experts.begin(), experts.end(), rng);
        for (int64_t k = 0; k < top_k; ++k) {
          l.expert_idx.push_back(rng() % 7 == 0 ? -1 : experts[k]);
        }
      }
      rounds[round].push_back(std::move(l));
    }
  }
  return rounds;
}

// Expert e's replicas: every rank holds expert 0, the rest round-robin.
ExpertPlacement Replicated(int world_size) {
  std::vector<std::vector<int32_t>> rank_experts(world_size, std::vector<int32_t>{0});
  for (int e = 1; e < kNumExperts; ++e) rank_experts[e % world_size].push_back(e);
  std::vector<LayerPlacementSpec> layers(kNumLayers, LayerPlacementSpec::FromRanks(rank_experts));
  auto p = ExpertPlacement::Create(kNumExperts, world_size, 1, layers);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

void ExpectEveryExchangeReturnsEachSlotItsExpertsRow(const ExpertPlacement& placement,
                                                     int64_t top_k, uint32_t seed) {
  const int world_size = placement.num_ranks();
  const auto rounds = RandomRounds(world_size, 4, top_k, 9, seed);
  const auto host = RunRounds(Exchange::kThroughHost, placement, rounds, top_k);
  const auto resident = RunRounds(Exchange::kResident, placement, rounds, top_k);
  for (size_t round = 0; round < rounds.size(); ++round) {
    const int layer = static_cast<int>(round % kNumLayers);
    for (int rank = 0; rank < world_size; ++rank) {
      SCOPED_TRACE(absl::StrCat("world ", world_size, ", top_k ", top_k, ", seed ", seed,
                                ", round ", round, ", rank ", rank));
      const RankOutcome& h = host[round][rank];
      const RankOutcome& r = resident[round][rank];
      ASSERT_TRUE(h.status.ok()) << h.status;
      ASSERT_TRUE(r.status.ok()) << r.status;
      EXPECT_EQ(r.num_recv, h.num_recv);
      EXPECT_EQ(r.offsets, h.offsets);
      EXPECT_EQ(r.grouped_in, h.grouped_in);
      EXPECT_EQ(r.dispatched_slots, h.dispatched_slots);
      EXPECT_EQ(r.received_rows, h.received_rows);
      // Each slot gets its expert's row from the rank the placement picked.
      const RankLayer& in = rounds[round][rank];
      std::vector<int32_t> dest(in.num_tokens * top_k);
      PickDestinationRanks(placement, layer, rank, in.expert_idx.data(),
                           static_cast<int64_t>(dest.size()), dest.data());
      for (const RankOutcome* o : {&h, &r}) {
        SCOPED_TRACE(Name(o == &h ? Exchange::kThroughHost : Exchange::kResident));
        for (size_t slot = 0; slot < dest.size(); ++slot) {
          const int32_t expert = in.expert_idx[slot];
          const int32_t storage =
              expert < 0 ? -1 : LocalSlots(placement, layer, dest[slot])[expert];
          for (int64_t c = 0; c < kHidden; ++c) {
            const float want =
                expert < 0 ? 0.0f : Expert(in.hidden[slot / top_k * kHidden + c], storage);
            ASSERT_EQ(o->out[slot * kHidden + c], want) << "slot " << slot << " column " << c;
          }
        }
      }
    }
  }
}

TEST(ResidentRowExchangeTest, MatchesTheExchangeThroughTheHostOnContiguousPlacements) {
  for (int world_size : {1, 2, 3, 4}) {
    auto placement = ExpertPlacement::Contiguous(kNumLayers, kNumExperts, world_size);
    ASSERT_TRUE(placement.ok()) << placement.status();
    for (int64_t top_k : {1, 2, 3}) {
      ExpectEveryExchangeReturnsEachSlotItsExpertsRow(*placement, top_k, 17 + world_size);
    }
  }
}

TEST(ResidentRowExchangeTest, MatchesTheExchangeThroughTheHostWithReplicas) {
  for (int world_size : {2, 3}) {
    ExpectEveryExchangeReturnsEachSlotItsExpertsRow(Replicated(world_size), 2, 5 + world_size);
  }
}

TEST(ResidentRowExchangeTest, NamesARowForAnExpertTheRankDoesNotHold) {
  // Rank 1's storage table misses expert 5, which the placement gives it.
  auto placement = ExpertPlacement::Contiguous(kNumLayers, kNumExperts, 2);
  ASSERT_TRUE(placement.ok());
  auto world = comm::LocalWorld::Create(2);
  ASSERT_TRUE(world.ok());
  std::vector<absl::Status> statuses(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      auto comm = (*world)->CreateCommunicator(rank);
      ASSERT_TRUE(comm.ok());
      const ExpertParallelism ep{comm->get(), &*placement, absl::Seconds(30)};
      EngineStats stats;
      stats.layer_expert_rows.assign(kNumLayers, 0);
      HostRowMover mover;
      ResidentRowExchange exchange(ep, &mover);
      std::vector<int32_t> local = LocalSlots(*placement, 0, rank);
      if (rank == 1) local[5] = -1;
      const std::vector<float> hidden(kHidden, 1.0f);
      const std::vector<int32_t> expert_idx = {rank == 0 ? 5 : 0};
      statuses[rank] = exchange.Dispatch(*placement, 0, hidden.data(), expert_idx.data(), 1, 1,
                                         kHidden, local, 3, stats);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(statuses[0].ok()) << statuses[0];
  EXPECT_EQ(statuses[1].code(), absl::StatusCode::kInternal);
  EXPECT_NE(statuses[1].message().find("rank 1 received a row for expert 5 of layer 0"),
            std::string::npos)
      << statuses[1];
}

}  // namespace
}  // namespace herd
