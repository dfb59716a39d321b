// Shared by expert_parallel_test.cc (ranks as threads) and
// expert_parallel_mpi_test.cc (ranks as mpirun processes): run `herd generate`
// on N ranks and compare with the single-process run, byte for byte.
#pragma once

#include <sys/wait.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace herd {
namespace expert_parallel_testing {

using ::herd::testing::ReadFileBytes;
using ::herd::testing::TempDir;
using ::herd::testing::TestDataPath;

const char kIds[] = "1,17,42,0,511,100,256,7,300,42,42,99,5,400,128,64";

using ShellRun = ::herd::testing::CommandResult;
// stdout only; stderr is captured apart and dropped by the callers' "2>/dev/null".
inline ShellRun Shell(const std::string& command) { return ::herd::testing::RunCommand(command); }

inline std::string Generate(const std::string& model, const std::string& dump,
                            const std::string& extra) {
  return std::string(HERD_CLI_PATH) + " generate --model " + model + " --prompt-ids " + kIds +
         " --max-new-tokens 16 --dump-logits " + dump + " " + extra + " 2>/dev/null";
}

inline std::string Mpirun(int ranks) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 mpirun -np " +
         std::to_string(ranks) +
         " --oversubscribe --mca btl self,vader,tcp --mca btl_tcp_if_include lo"
         " --mca oob_tcp_if_include lo --mca mpi_yield_when_idle 1 ";
}

// Placements of the fixture's 2 layers x 8 experts.
inline std::string WritePlacement(const TempDir& dir, const std::string& name, int ranks,
                                  const std::string& layer) {
  const std::string path = dir.Join(name + ".yaml");
  ::herd::testing::WriteFileText(
      path, "format: herd-placement/v1\nnum_experts: 8\nnum_ranks: " + std::to_string(ranks) +
                "\nlayers:\n  - " + layer + "\n  - " + layer + "\n");
  return path;
}

struct Case {
  std::string name;
  int ranks;
  std::string placement_layer;  // empty: the default contiguous split
};

inline std::vector<Case> Cases() {
  return {
      {"contiguous_2", 2, ""},
      {"contiguous_3", 3, ""},
      {"contiguous_4", 4, ""},
      // Rank 0 holds six experts, rank 1 two.
      {"uneven_2", 2, "ranks: [[0, 1, 2, 3, 4, 5], [6, 7]]"},
      // Every expert twice (uneven shares for some), some replicas on one rank.
      {"replicated_3", 3,
       "{ranks: [[0, 1, 2, 3, 4, 5], [6, 7, 0, 1, 2], [3, 4, 5, 6, 7]], "
       "shares: [[0.5, 0.25, 0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.75, 0.5], "
       "[0.5, 0.5, 0.5, 0.5, 0.5]]}"},
  };
}

// The three llama.cpp fixture files, and gtest names for them ("tiny_q8_0").
inline const std::vector<std::string> kFixtureModels = {"tiny-f32", "tiny-q8_0", "tiny-q4_0"};
inline std::string FixtureTestName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name = info.param;
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

// The fixtures again, compressed by `herd compress` into Herd checkpoints
// whose experts (and, for Q4_0, attention) are re-quantized, some of them
// trimmed or skipping experts: Herd's own int4/int8 formats, dropped experts
// and MoE sublayers, and dynamic skipping under expert parallelism. Names are "<fixture>:<flags>".
inline const std::vector<std::string> kHerdCheckpointModels = {
    "tiny-q4_0:--bits 4 --group-size 32 --asym --modules experts,attention",
    "tiny-f32:--bits 8 --group-size 0 --modules experts",
    "tiny-f32:--bits 3 --group-size 64 --scale-type bf16 --modules experts",
    // Trimmed: experts dropped (per layer and globally) and an MoE sublayer.
    // (Block drop changes the number of layers, so these placements do not fit.)
    "tiny-f32:--bits 4 --group-size 32 --drop-experts 3 --drop-layers 1 --no-speed",
    "tiny-q4_0:--bits 4 --group-size 32 --drop-experts 2 --expert-drop global --no-speed",
    // Dynamic skipping: skipped slots are not dispatched at all.
    "tiny-f32:--bits 8 --group-size 0 --skip-threshold auto --no-speed",
};
inline std::string HerdCheckpointTestName(const ::testing::TestParamInfo<std::string>& info) {
  std::string name;
  for (char ch : info.param) {
    if (std::isalnum(static_cast<unsigned char>(ch))) name += ch;
  }
  return name;
}

class ExpertParallelTest : public ::testing::TestWithParam<std::string> {
 protected:
  // The model under test: a fixture file, or (for "<fixture>:<flags>") that
  // fixture compressed into a Herd checkpoint with those flags.
  std::string Model() {
    const size_t colon = GetParam().find(':');
    const std::string fixture =
        TestDataPath("llamacpp-tiny/" + GetParam().substr(0, colon) + ".gguf");
    if (colon == std::string::npos) return fixture;
    const std::string out = dir_.Join("herd-checkpoint");
    if (!std::filesystem::exists(out)) {
      const ShellRun compress =
          Shell(std::string(HERD_CLI_PATH) + " compress --model " + fixture + " --out " + out +
                " " + GetParam().substr(colon + 1) + " >/dev/null 2>&1");
      EXPECT_EQ(compress.exit_code, 0) << GetParam();
    }
    return out;
  }

  // The single-process reference: ids line and logits.
  void SetUp() override {
    reference_ = Shell(Generate(Model(), dir_.Join("single.f32"), ""));
    ASSERT_EQ(reference_.exit_code, 0);
    reference_logits_ = ReadFileBytes(dir_.Join("single.f32"));
    ASSERT_EQ(reference_logits_.size(), 32u * 512u * 4u);
  }

  void ExpectSameAsSingleProcess(const std::string& launcher, const Case& c) {
    SCOPED_TRACE(c.name);
    std::string extra = launcher.empty() ? "--local-ranks " + std::to_string(c.ranks) : "";
    if (!c.placement_layer.empty()) {
      extra += " --placement " + WritePlacement(dir_, c.name, c.ranks, c.placement_layer);
    }
    const std::string dump = dir_.Join(c.name + ".f32");
    const ShellRun run = Shell(launcher + Generate(Model(), dump, extra));
    ASSERT_EQ(run.exit_code, 0) << run.out;
    // Written once, by rank 0.
    EXPECT_EQ(run.out, reference_.out);
    EXPECT_EQ(ReadFileBytes(dump), reference_logits_) << "logits differ from the single process";
  }

  TempDir dir_;
  ShellRun reference_;
  std::vector<uint8_t> reference_logits_;
};

// The mid-size synthetic model of docs/performance.md (vocab 32000, hidden
// 1024, 8 layers, 16 heads, 4 kv heads, 8 experts top-2, ffn 2816) in Q4_0:
// single process vs N ranks launched by `launcher(N)` (empty: local ranks).
inline void ExpectMidSizeModelMatches(const std::string& mpirun_prefix_for_2,
                                      const std::string& mpirun_prefix_for_4) {
  TempDir dir;
  const std::string model = dir.Join("mid-q4_0.gguf");
  const std::string cli = HERD_CLI_PATH;
  ASSERT_EQ(Shell(cli +
                  " synth --layers 8 --hidden 1024 --heads 16 --kv-heads 4 --experts 8 "
                  "--top-k 2 --ffn 2816 --vocab 32000 --dtype q4_0 --seed 1 --out " +
                  model + " >/dev/null 2>&1")
                .exit_code,
            0);
  auto run = [&](const std::string& prefix, const std::string& extra, const std::string& dump) {
    return Shell(prefix + cli + " generate --model " + model +
                 " --prompt-ids 11,2222,333,4444,55,6666,777,8888 --max-new-tokens 4"
                 " --dump-logits " +
                 dump + " " + extra + " 2>/dev/null");
  };
  const ShellRun single = run("", "", dir.Join("single.f32"));
  ASSERT_EQ(single.exit_code, 0);
  const std::vector<uint8_t> reference = ReadFileBytes(dir.Join("single.f32"));
  ASSERT_EQ(reference.size(), 12u * 32000u * 4u);
  const std::pair<std::string, std::string> launches[] = {
      {mpirun_prefix_for_2, mpirun_prefix_for_2.empty() ? "--local-ranks 2" : ""},
      {mpirun_prefix_for_4, mpirun_prefix_for_4.empty() ? "--local-ranks 4" : ""}};
  int i = 0;
  for (const auto& [prefix, extra] : launches) {
    const std::string dump = dir.Join("ep" + std::to_string(i++) + ".f32");
    const ShellRun ep = run(prefix, extra, dump);
    ASSERT_EQ(ep.exit_code, 0) << prefix << extra;
    EXPECT_EQ(ep.out, single.out) << prefix << extra;
    EXPECT_EQ(ReadFileBytes(dump), reference) << prefix << extra;
  }
}

}  // namespace expert_parallel_testing
}  // namespace herd
