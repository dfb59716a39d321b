// Switching expert placements while serving, on the rank side: expert tables
// built for a new placement share the experts that stay, load the others
// from the checkpoint; and four local ranks that stage a new placement in the
// background and switch at one step boundary produce exactly the greedy
// tokens of a single rank (F32 experts: only which rank computes an expert
// changes, not the arithmetic).
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "comm/local_world.h"
#include "core/placement.h"
#include "gtest/gtest.h"
#include "model/model_loader.h"
#include "model/synth.h"
#include "tests/support/test_support.h"
#include "worker/engine.h"
#include "worker/expert_table.h"
#include "worker/generator.h"
#include "worker/rank_model.h"
#include "worker/step_runner.h"

namespace herd {
namespace {

constexpr int kNumRanks = 4;
constexpr int64_t kBlockTokens = 4;
constexpr int64_t kBlocksPerSequence = 16;

// Rank r holds [r's slots]; experts 0 and 1 (the hot ones) both on rank 0.
ExpertPlacement BadPlacement(int num_layers) {
  std::vector<LayerPlacementSpec> layers(
      num_layers, LayerPlacementSpec::FromRanks({{0, 1, 2}, {3, 4, 5}, {6, 7, 2}, {3, 4, 5}}));
  auto placement = ExpertPlacement::Create(8, kNumRanks, 1, std::move(layers));
  EXPECT_TRUE(placement.ok()) << placement.status();
  return *placement;
}

// The hot experts apart, with replicas on other ranks.
ExpertPlacement GoodPlacement(int num_layers) {
  std::vector<LayerPlacementSpec> layers(
      num_layers, LayerPlacementSpec::FromRanks({{0, 2, 3}, {1, 4, 5}, {0, 6, 7}, {1, 2, 4}}));
  auto placement = ExpertPlacement::Create(8, kNumRanks, 1, std::move(layers));
  EXPECT_TRUE(placement.ok()) << placement.status();
  return *placement;
}

class PlacementSwitchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions options;
    options.num_layers = 2;
    options.hot_experts = 2;
    options.num_threads = 1;
    path_ = dir_.Join("skewed.gguf");
    ASSERT_TRUE(SynthesizeModel(options, path_).ok());
  }

  testing::TempDir dir_;
  std::string path_;
};

TEST_F(PlacementSwitchTest, TablesShareKeptExpertsAndLoadTheRest) {
  auto model = LoadModel(path_);
  ASSERT_TRUE(model.ok()) << model.status();
  const ExpertPlacement bad = BadPlacement(2);
  const ExpertPlacement good = GoodPlacement(2);
  // Rank 0's table under the bad placement: experts 0, 1, 2.
  auto full = ExpertTable::FromModel(**model, nullptr);
  ASSERT_TRUE(full.ok()) << full.status();
  auto initial = LoadExpertsForPlacement(**full, bad, /*rank=*/0, path_);
  ASSERT_TRUE(initial.ok()) << initial.status();
  EXPECT_EQ(initial->num_loaded, 0);  // the full table holds everything already
  for (int l = 0; l < 2; ++l) {
    for (int e = 0; e < 8; ++e) EXPECT_EQ(initial->table->Holds(l, e), e <= 2) << l << " " << e;
  }

  auto next = LoadExpertsForPlacement(*initial->table, good, /*rank=*/0, path_);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->num_loaded, 2);  // per layer, 0 and 2 stay and 3 is new
  for (int l = 0; l < 2; ++l) {
    for (int e = 0; e < 8; ++e) {
      EXPECT_EQ(next->table->Holds(l, e), e == 0 || e == 2 || e == 3) << l << " " << e;
    }
    // Kept experts are the same packed matrices, not copies.
    EXPECT_EQ(next->table->LayerViews(l)[0].gate, initial->table->LayerViews(l)[0].gate);
    EXPECT_EQ(next->table->LayerViews(l)[2].gate, initial->table->LayerViews(l)[2].gate);
  }
  const int64_t expert_bytes = 3 * 128 * 64 * 4;  // gate, up, down F32 [128, 64]
  EXPECT_EQ(next->loaded_bytes, 2 * expert_bytes);
  EXPECT_EQ(next->table->num_bytes(), 2 * 3 * expert_bytes);

  auto wrong_rank = LoadExpertsForPlacement(*initial->table, good, /*rank=*/4, path_);
  EXPECT_EQ(wrong_rank.status().code(), absl::StatusCode::kInvalidArgument);
  auto missing = LoadExpertsForPlacement(*initial->table, good, 0, dir_.Join("missing.gguf"));
  EXPECT_FALSE(missing.ok());
}

// A sequence per rank, decoded greedily in lockstep steps; the coordinator
// (this test's rank 0 thread) stages the good placement at step 2 and
// switches once every rank reports it ready. Staging runs in the background,
// so on a loaded machine it can take longer than a few decode steps: halfway
// through the sequences the coordinator sends idle steps (no chunks) until
// every rank is ready, the way a server keeps stepping while it waits.
TEST_F(PlacementSwitchTest, SwitchingAtAStepBoundaryKeepsGreedyTokens) {
  constexpr int64_t kNumNew = 16;
  std::vector<std::vector<int32_t>> prompts;
  for (int r = 0; r < kNumRanks; ++r) {
    std::vector<int32_t> prompt;
    for (int i = 0; i < 5 + r; ++i) prompt.push_back((37 * (r + 1) + 11 * i) % 512);
    prompts.push_back(prompt);
  }
  std::vector<std::vector<int32_t>> expected;
  {
    auto model = LoadModel(path_);
    ASSERT_TRUE(model.ok());
    auto engine = Engine::Create(**model, {.num_threads = 1});
    ASSERT_TRUE(engine.ok());
    GenerateOptions options;
    options.max_new_tokens = kNumNew;
    for (const auto& prompt : prompts) {
      auto out = Generate(**engine, prompt, options);
      ASSERT_TRUE(out.ok()) << out.status();
      expected.push_back(out->tokens);
    }
  }

  auto world = comm::LocalWorld::Create(kNumRanks);
  ASSERT_TRUE(world.ok());
  const ExpertPlacement bad = BadPlacement(2);
  const std::string good_json = PlacementToJson(GoodPlacement(2));
  std::vector<std::vector<int32_t>> got(kNumRanks);
  uint64_t switch_step = 0;
  int64_t tokens_at_switch = 0;  // new tokens per sequence when the switch happened
  double load_wait_seconds = 0;
  int64_t staged_bytes = 0;
  std::vector<absl::Status> statuses(kNumRanks);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < kNumRanks; ++rank) {
    threads.emplace_back([&, rank] {
      statuses[rank] = [&]() -> absl::Status {
        HERD_ASSIGN_OR_RETURN(auto control, (*world)->CreateControlChannel(rank));
        HERD_ASSIGN_OR_RETURN(auto comm, (*world)->CreateCommunicator(rank));
        HERD_ASSIGN_OR_RETURN(RankModel rank_model, LoadModelForRank(path_, comm.get(), bad));
        EngineOptions engine_options;
        engine_options.num_threads = 1;
        engine_options.expert_parallelism = {comm.get(), &*rank_model.placement};
        HERD_ASSIGN_OR_RETURN(auto engine, Engine::Create(*rank_model.model, engine_options));
        StepRunnerOptions runner_options;
        runner_options.num_kv_blocks = kBlocksPerSequence;
        runner_options.kv_block_tokens = kBlockTokens;
        runner_options.count_expert_tokens = true;
        HERD_ASSIGN_OR_RETURN(auto runner, StepRunner::Create(engine.get(), runner_options));
        if (rank != 0) return RunWorkerLoop(*runner, *control);

        std::vector<std::vector<int32_t>> tokens = prompts;
        std::vector<int64_t> cached(kNumRanks, 0);
        uint64_t version = 1;
        bool ready = false;
        const absl::Time deadline = absl::Now() + absl::Seconds(60);
        for (uint64_t step_idx = 0;
             static_cast<int64_t>(tokens[0].size() - prompts[0].size()) < kNumNew; ++step_idx) {
          const int64_t generated = static_cast<int64_t>(tokens[0].size() - prompts[0].size());
          const bool idle = !ready && step_idx > 2 && generated >= kNumNew / 2;
          if (idle) absl::SleepFor(absl::Milliseconds(1));
          std::vector<RankStepPlan> plans(kNumRanks);
          for (int r = 0; r < kNumRanks; ++r) {
            RankStepPlan& plan = plans[r];
            plan.step_idx = step_idx;
            if (ready) plan.placement_version = 2;
            if (idle) continue;
            PlannedChunk chunk;
            chunk.sequence_id = r;
            chunk.start_pos = cached[r];
            chunk.token_ids.assign(tokens[r].begin() + cached[r], tokens[r].end());
            for (int b = 0; b < kBlocksPerSequence; ++b) chunk.block_table.push_back(b);
            chunk.sample = true;
            chunk.sample_idx = static_cast<int64_t>(tokens[r].size() - prompts[r].size());
            plan.chunks = {chunk};
            if (step_idx == 2) {
              plan.stage_version = 2;
              plan.stage_placement = good_json;
            }
          }
          if (ready && switch_step == 0) {
            switch_step = step_idx;
            tokens_at_switch = generated;
          }
          for (int r = 1; r < kNumRanks; ++r) {
            HERD_RETURN_IF_ERROR(
                control->Send(r, kStepPlanTag, EncodeStepPlan(plans[r]), deadline));
          }
          std::vector<RankStepResult> results(kNumRanks);
          HERD_ASSIGN_OR_RETURN(results[0], runner->Run(plans[0]));
          for (int r = 1; r < kNumRanks; ++r) {
            HERD_ASSIGN_OR_RETURN(comm::ControlMessage m,
                                  control->Recv(r, kStepResultTag, deadline));
            HERD_ASSIGN_OR_RETURN(results[r], DecodeStepResult(m.payload));
          }
          bool all_ready = true;
          for (int r = 0; r < kNumRanks; ++r) {
            const RankStepResult& result = results[r];
            if (!result.error.empty() || !result.stage_error.empty()) {
              return absl::InternalError(result.error + result.stage_error);
            }
            if (result.placement_version != plans[r].placement_version) {
              return absl::InternalError("a rank ran another placement version");
            }
            version = result.placement_version;
            all_ready = all_ready && result.ready_version == 2;
            load_wait_seconds += result.load_wait_seconds;
            if (result.ready_version == 2 && !ready) staged_bytes += result.staged_bytes;
            if (idle) continue;
            cached[r] = static_cast<int64_t>(tokens[r].size());
            tokens[r].push_back(result.sampled.at(0).token_id);
          }
          ready = ready || all_ready;
        }
        for (int r = 0; r < kNumRanks; ++r) {
          got[r].assign(tokens[r].begin() + prompts[r].size(), tokens[r].end());
        }
        RankStepPlan shutdown;
        shutdown.shutdown = true;
        for (int r = 1; r < kNumRanks; ++r) {
          HERD_RETURN_IF_ERROR(control->Send(r, kStepPlanTag, EncodeStepPlan(shutdown), deadline));
        }
        if (version != 2) return absl::InternalError("the ranks never switched");
        return absl::OkStatus();
      }();
      if (!statuses[rank].ok()) (*world)->Abort(rank, statuses[rank].message());
    });
  }
  for (std::thread& t : threads) t.join();
  for (int rank = 0; rank < kNumRanks; ++rank) EXPECT_TRUE(statuses[rank].ok()) << statuses[rank];
  EXPECT_GT(switch_step, 2u);  // after staging, while sequences were decoding
  EXPECT_LE(tokens_at_switch, kNumNew / 2);
  EXPECT_EQ(load_wait_seconds, 0.0);  // switched only once every rank was ready
  EXPECT_GT(staged_bytes, 0);
  for (int r = 0; r < kNumRanks; ++r) EXPECT_EQ(got[r], expected[r]) << "sequence " << r;
}

}  // namespace
}  // namespace herd
