// The herd binary as users run it: a real process, its stdout, stderr and
// exit code.
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using testing::ReadF32File;
using testing::TempDir;
using testing::TestDataPath;

using RunResult = testing::CommandResult;
using testing::RunHerd;

const char kIds[] = "1,17,42,0,511,100,256,7,300,42,42,99,5,400,128,64";

TEST(HerdCliTest, GeneratePrintsLlamaCppGreedyTokens) {
  for (const char* model : {"tiny-f32", "tiny-q8_0", "tiny-q4_0"}) {
    SCOPED_TRACE(model);
    const RunResult r = RunHerd("generate --model " +
                                TestDataPath(std::string("llamacpp-tiny/") + model + ".gguf") +
                                " --prompt-ids " + kIds + " --max-new-tokens 16 --threads 2");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "449,414,34,27,400,34,27,400,328,231,400,328,231,400,328,231\n");
  }
}

TEST(HerdCliTest, DumpLogitsWritesFixtureLayout) {
  TempDir tmp;
  const std::string dump = tmp.Join("logits.f32");
  const RunResult r =
      RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") + " --prompt-ids " +
              kIds + " --max-new-tokens 16 --dump-logits " + dump);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<float> got = ReadF32File(dump);
  std::vector<float> ref = ReadF32File(TestDataPath("llamacpp-tiny/tiny-f32.prefill.f32.bin"));
  const std::vector<float> decode =
      ReadF32File(TestDataPath("llamacpp-tiny/tiny-f32.decode.f32.bin"));
  ref.insert(ref.end(), decode.begin(), decode.end());
  ASSERT_EQ(got.size(), ref.size());  // [16 + 16, 512]
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-4) << "row " << i / 512;
}

TEST(HerdCliTest, ZeroNewTokensEvaluatesThePromptOnly) {
  TempDir tmp;
  const std::string dump = tmp.Join("logits.f32");
  const RunResult r =
      RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") + " --prompt-ids " +
              kIds + " --max-new-tokens 0 --dump-logits " + dump);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "\n");
  EXPECT_EQ(ReadF32File(dump).size(), 16u * 512u);
}

TEST(HerdCliTest, SamplingIsSeeded) {
  const std::string base = "generate --model " + TestDataPath("llamacpp-tiny/tiny-q8_0.gguf") +
                           " --prompt-ids 1,2,3 --max-new-tokens 12 --temperature 1.5 --top-p 0.95";
  const RunResult a = RunHerd(base + " --seed 7");
  const RunResult b = RunHerd(base + " --seed 7");
  const RunResult c = RunHerd(base + " --seed 8");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
}

// --top-k 1 or --min-p 1 leave only the most likely token: the greedy output
// at any temperature; a negative --top-k is refused.
TEST(HerdCliTest, TopKAndMinPNarrowSampling) {
  const std::string base = "generate --model " + TestDataPath("llamacpp-tiny/tiny-q8_0.gguf") +
                           " --prompt-ids 1,2,3 --max-new-tokens 12";
  const RunResult greedy = RunHerd(base);
  ASSERT_EQ(greedy.exit_code, 0) << greedy.err;
  for (const char* narrow : {" --top-k 1", " --min-p 1"}) {
    const RunResult r = RunHerd(base + " --temperature 1.5 --seed 7" + narrow);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, greedy.out) << narrow;
  }
  EXPECT_NE(RunHerd(base + " --temperature 1.5 --seed 7 --top-k 40").out, greedy.out);
  const RunResult bad = RunHerd(base + " --top-k -1");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("--top-k must be >= 0"), std::string::npos) << bad.err;
}

TEST(HerdCliTest, InspectDescribesTheModel) {
  const RunResult text = RunHerd("inspect --model " + TestDataPath("llamacpp-tiny/tiny-q4_0.gguf"));
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("mixtral"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("experts"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("Q4_0 x6"), std::string::npos) << text.out;
  // 2 layers x K and V x 2 kv heads x 16 values, 4 or 2 bytes each.
  EXPECT_NE(text.out.find("kv cache      512 B per token at f32, 256 B at f16"), std::string::npos)
      << text.out;

  const RunResult json =
      RunHerd("inspect --json --model " + TestDataPath("llamacpp-tiny/tiny-q4_0.gguf"));
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const auto j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["architecture"], "mixtral");
  EXPECT_EQ(j["num_experts"], 8);
  EXPECT_EQ(j["num_experts_per_token"], 2);
  // 2 layers x 3 matrices x 8 experts x 128 x 64 values.
  EXPECT_EQ(j["modules"]["experts"]["parameters"], 2 * 3 * 8 * 128 * 64);
  EXPECT_EQ(j["modules"]["experts"]["bytes"], 2 * 3 * 8 * 128 * 64 / 32 * 18);
  EXPECT_EQ(j["tensor_types"]["Q4_0"], 6);
  EXPECT_EQ(j["kv_cache_bytes_per_token"]["f32"], 2 * 2 * 2 * 16 * 4);
  EXPECT_EQ(j["kv_cache_bytes_per_token"]["f16"], 2 * 2 * 2 * 16 * 2);
  // Every byte of tensor data in the file is accounted for.
  int64_t bytes = 0;
  for (const auto& [name, m] : j["modules"].items()) bytes += m["bytes"].get<int64_t>();
  EXPECT_EQ(bytes, j["bytes"].get<int64_t>());
  EXPECT_GT(bytes, 500000);
}

TEST(HerdCliTest, SynthWritesAModelThatLoadsAndRuns) {
  TempDir tmp;
  const std::string path = tmp.Join("synth.gguf");
  const RunResult synth = RunHerd(
      "synth --layers 2 --hidden 128 --heads 4 --kv-heads 2 --experts 4 --top-k 2 --ffn 96 "
      "--vocab 300 --dtype q4_0 --outliers --seed 7 --out " +
      path);
  ASSERT_EQ(synth.exit_code, 0) << synth.err;
  const RunResult inspect = RunHerd("inspect --json --model " + path);
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  const auto j = nlohmann::json::parse(inspect.out);
  EXPECT_EQ(j["architecture"], "mixtral");
  EXPECT_EQ(j["hidden_size"], 128);
  EXPECT_EQ(j["num_experts"], 4);
  EXPECT_EQ(j["expert_ffn_size"], 96);
  EXPECT_EQ(j["vocab_size"], 300);
  // Every matrix but the F32 router is Q4_0, embeddings and lm head included;
  // norms stay F32 (2 layers x 2 + the output norm).
  EXPECT_EQ(j["tensor_types"]["Q4_0"], 2 + 2 * (4 + 3));
  EXPECT_EQ(j["tensor_types"]["F32"], 2 * 3 + 1);
  // The same options and seed give the same bytes.
  const std::string again = tmp.Join("again.gguf");
  ASSERT_EQ(RunHerd("synth --layers 2 --hidden 128 --heads 4 --kv-heads 2 --experts 4 --top-k 2 "
                    "--ffn 96 --vocab 300 --dtype q4_0 --outliers --seed 7 --out " +
                    again)
                .exit_code,
            0);
  EXPECT_EQ(testing::ReadFileBytes(path), testing::ReadFileBytes(again));
  const RunResult gen =
      RunHerd("generate --model " + path + " --prompt-ids 1,2,3 --max-new-tokens 4");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  EXPECT_EQ(std::count(gen.out.begin(), gen.out.end(), ','), 3);
  const RunResult bad = RunHerd("synth --hidden 80 --heads 4 --dtype q8_0 --out " + tmp.Join("x"));
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("multiples of 32"), std::string::npos) << bad.err;
}

// --tokenizer-from gives the model the tokenizer of another GGUF (here
// llama.cpp's llama vocabulary file) and its vocabulary size: text then
// tokenizes exactly as with that file, and generate takes text.
TEST(HerdCliTest, SynthTakesTheTokenizerOfAnotherGguf) {
  TempDir tmp;
  const std::string vocab = TestDataPath("tokenizers/ggml-vocab-llama-spm.gguf");
  const std::string shape =
      "synth --layers 1 --hidden 64 --heads 2 --kv-heads 1 --experts 2 --top-k 1 --ffn 64 "
      "--dtype q8_0 --seed 3 ";
  const std::string path = tmp.Join("spm.gguf");
  const RunResult synth = RunHerd(shape + "--tokenizer-from " + vocab + " --out " + path);
  ASSERT_EQ(synth.exit_code, 0) << synth.err;
  const RunResult inspect = RunHerd("inspect --json --model " + path);
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  EXPECT_EQ(nlohmann::json::parse(inspect.out)["vocab_size"], 32000);
  // llama.cpp's tokenizer test strings, all of them as one text.
  const std::string text_file = vocab + ".inp";
  const RunResult expected = RunHerd("tokenize --model " + vocab + " --text-file " + text_file);
  ASSERT_EQ(expected.exit_code, 0) << expected.err;
  ASSERT_GT(expected.out.size(), 1000u);
  const RunResult ids = RunHerd("tokenize --model " + path + " --text-file " + text_file);
  ASSERT_EQ(ids.exit_code, 0) << ids.err;
  EXPECT_EQ(ids.out, expected.out);
  const RunResult gen =
      RunHerd("generate --model " + path + " --prompt 'Hello world' --max-new-tokens 4");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;

  const RunResult mismatch =
      RunHerd(shape + "--vocab 300 --tokenizer-from " + vocab + " --out " + tmp.Join("a.gguf"));
  EXPECT_NE(mismatch.exit_code, 0);
  EXPECT_NE(mismatch.err.find("has 32000 tokens"), std::string::npos) << mismatch.err;
  const std::string no_tokenizer = TestDataPath("llamacpp-tiny/tiny-f32.gguf");
  const RunResult none =
      RunHerd(shape + "--tokenizer-from " + no_tokenizer + " --out " + tmp.Join("b.gguf"));
  EXPECT_NE(none.exit_code, 0);
  EXPECT_NE(none.err.find("has no tokenizer"), std::string::npos) << none.err;
  const RunResult missing = RunHerd(shape + "--tokenizer-from " + tmp.Join("missing.gguf") +
                                    " --out " + tmp.Join("c.gguf"));
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.err.find("missing.gguf"), std::string::npos) << missing.err;
  for (const char* name : {"a.gguf", "b.gguf", "c.gguf"}) {
    EXPECT_FALSE(std::filesystem::exists(tmp.Join(name))) << name;
  }
}

TEST(HerdCliTest, BenchReportsSpeedBandwidthComputeAndMemory) {
  const RunResult r =
      RunHerd("bench --json --model " + TestDataPath("llamacpp-tiny/tiny-q8_0.gguf") +
              " --prompt 16 --gen 8 --repetitions 2 --bandwidth-bytes 16777216");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_GT(j["prefill"]["tokens_per_second_median"].get<double>(), 0);
  EXPECT_EQ(j["prefill"]["samples"].size(), 2u);
  EXPECT_GT(j["decode"]["tokens_per_second_median"].get<double>(), 0);
  EXPECT_GT(j["bandwidth"]["read_gbps"].get<double>(), 0);
  // Per decode step: 2 x (4 attention + router) F32 matrices, 2 of 8 Q8_0
  // experts' three matrices per layer, the F32 lm head and one embedding row.
  const int64_t attention = 2 * (64 * 64 * 2 + 32 * 64 * 2) * 4;
  const int64_t router = 2 * 8 * 64 * 4;
  const int64_t experts = 2 * 2 * 3 * 128 * 64 / 32 * 34;
  const int64_t lm_head = 512 * 64 * 4;
  EXPECT_EQ(j["decode"]["weight_bytes_per_token"].get<int64_t>(),
            attention + router + experts + lm_head + 64 * 4);
  // The prefill of 16 tokens: 2 FLOPs per weight per token (2 experts), the
  // causal attention's q.k and p.v over 1 + ... + 16 positions (64 = heads x
  // head_dim, 2 layers), the lm head once.
  const double per_token = 2 * (64 * 64 * 2 + 32 * 64 * 2 + 8 * 64 + 2 * 3 * 128 * 64);
  const double prefill_flops = 2 * per_token * 16 + 4.0 * 64 * (16 * 17 / 2) * 2 + 2 * 512 * 64;
  EXPECT_DOUBLE_EQ(j["prefill"]["flops"].get<double>(), prefill_flops);
  EXPECT_NEAR(j["prefill"]["gflops"].get<double>(),
              prefill_flops * j["prefill"]["tokens_per_second_median"].get<double>() / 16 / 1e9,
              1e-9);
  EXPECT_GT(j["compute"]["f32_fma_peak_gflops"].get<double>(), 0);
  // The model's resident bytes are what the process gained by loading and
  // running it: at least the weights it reads (the F32 file is used in place
  // and every matrix is touched), less than the whole process.
  const int64_t resident = j["memory"]["resident_bytes"].get<int64_t>();
  EXPECT_EQ(resident, j["memory"]["process_resident_bytes"].get<int64_t>() -
                          j["memory"]["process_resident_bytes_before_load"].get<int64_t>());
  EXPECT_GE(resident, j["memory"]["weight_bytes"].get<int64_t>() * 9 / 10);
  EXPECT_GT(j["memory"]["process_resident_bytes_before_load"].get<int64_t>(), 0);
  EXPECT_EQ(j["step_tokens"], 128);  // the engine's default
}

// `herd bench` on the tiny Q8_0 model, one repetition, a small bandwidth
// buffer, plus `flags`.
RunResult BenchTinyModel(const std::string& flags) {
  return RunHerd("bench --model " + TestDataPath("llamacpp-tiny/tiny-q8_0.gguf") +
                 " --repetitions 1 --bandwidth-bytes 16777216 " + flags);
}

// BenchTinyModel(flags) succeeds and its table holds `text`.
void ExpectBenchPrints(const std::string& flags, const std::string& text) {
  const RunResult r = BenchTinyModel(flags);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(text), std::string::npos) << r.out;
}

// BenchTinyModel(flags) fails, saying `message`.
void ExpectBenchRefuses(const std::string& flags, const std::string& message) {
  const RunResult r = BenchTinyModel(flags);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find(message), std::string::npos) << r.err;
}

// --depth, as llama-bench -d: both tests run after that many tokens of
// context, and the prefill's attention counts them.
TEST(HerdCliTest, BenchRunsTheTestsAfterDepthTokens) {
  const RunResult r = BenchTinyModel("--json --prompt 16 --gen 4 --depth 8");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["depth"], 8);
  EXPECT_GT(j["decode"]["tokens_per_second_median"].get<double>(), 0);
  // As in BenchReportsSpeedBandwidthComputeAndMemory, with token t of the
  // prompt attending to 8 + t + 1 positions.
  const double per_token = 2 * (64 * 64 * 2 + 32 * 64 * 2 + 8 * 64 + 2 * 3 * 128 * 64);
  const double attention = 4.0 * 64 * (16 * 8 + 16 * 17 / 2) * 2;
  EXPECT_DOUBLE_EQ(j["prefill"]["flops"].get<double>(),
                   2 * per_token * 16 + attention + 2 * 512 * 64);
  ExpectBenchPrints("--prompt 16 --gen 4 --depth 8", "| pp16 @ d8 |");
  ExpectBenchPrints("--prompt 0 --gen 4 --depth 8", "| tg4 @ d8 |");
  ExpectBenchRefuses("--depth -1", "--depth must be >= 0");
}

TEST(HerdCliTest, BenchRunsThePromptInStepsOfStepTokens) {
  const RunResult r = BenchTinyModel("--json --prompt 16 --gen 0 --step-tokens 5");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["step_tokens"], 5);
  ExpectBenchPrints("--prompt 8 --gen 0 --step-tokens 3", "steps of 3 tokens");
  ExpectBenchRefuses("--step-tokens 0", "--step-tokens >= 1");
}

// --kv-cache-type f16 halves the cache the bench reports, reaches the JSON
// and the text, and a type the cache cannot hold is refused.
TEST(HerdCliTest, BenchAndGenerateTakeAnF16KvCache) {
  const RunResult f32 = BenchTinyModel("--json --prompt 16 --gen 4");
  const RunResult f16 = BenchTinyModel("--json --prompt 16 --gen 4 --kv-cache-type f16");
  ASSERT_EQ(f32.exit_code, 0) << f32.err;
  ASSERT_EQ(f16.exit_code, 0) << f16.err;
  const auto j32 = nlohmann::json::parse(f32.out);
  const auto j16 = nlohmann::json::parse(f16.out);
  EXPECT_EQ(j32["kv_cache_type"], "f32");
  EXPECT_EQ(j16["kv_cache_type"], "f16");
  // 2 layers x 16 positions x K and V x 32 values of 4 or 2 bytes.
  EXPECT_EQ(j32["memory"]["kv_cache_bytes"], 2 * 16 * 2 * 32 * 4);
  EXPECT_EQ(j16["memory"]["kv_cache_bytes"], 2 * 16 * 2 * 32 * 2);
  ExpectBenchPrints("--prompt 8 --gen 0 --kv-cache-type f16", "f16 KV cache");
  ExpectBenchRefuses("--kv-cache-type q8_0", "f32 or f16");

  // The fixture's greedy tokens hold with keys and values rounded to F16.
  const RunResult gen =
      RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-q8_0.gguf") +
              " --prompt-ids " + kIds + " --max-new-tokens 16 --threads 2 --kv-cache-type f16");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  EXPECT_EQ(gen.out, "449,414,34,27,400,34,27,400,328,231,400,328,231,400,328,231\n");
  const RunResult cuda =
      RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-q8_0.gguf") +
              " --prompt-ids 1,2 --device cuda --kv-cache-type f16");
  EXPECT_NE(cuda.exit_code, 0);
  EXPECT_NE(cuda.err.find("--kv-cache-type f16 runs on the CPU engine"), std::string::npos)
      << cuda.err;
}

TEST(HerdCliTest, InspectPrintsThePerRankSplitOfAPlacement) {
  TempDir tmp;
  const std::string placement = tmp.Join("p.yaml");
  testing::WriteFileText(placement,
                         "format: herd-placement/v1\nnum_experts: 8\nnum_ranks: 3\nlayers:\n"
                         "  - ranks: [[0, 1, 2, 3, 4, 5], [6, 7, 0, 1, 2], [3, 4, 5, 6, 7]]\n"
                         "  - ranks: [[0, 1, 2], [3, 4, 5], [6, 7]]\n");
  const RunResult r =
      RunHerd("inspect --json --model " + TestDataPath("llamacpp-tiny/tiny-q4_0.gguf") +
              " --placement " + placement);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["ranks"].size(), 3u);
  // One Q4_0 expert of the fixture: 3 matrices of 128 x 64 values.
  const int64_t expert_bytes = 3 * 128 * 64 / 32 * 18;
  EXPECT_EQ(j["ranks"][0]["slots"], 9);
  EXPECT_EQ(j["ranks"][0]["expert_bytes"], 9 * expert_bytes);
  EXPECT_EQ(j["ranks"][2]["expert_bytes"], 7 * expert_bytes);
  EXPECT_EQ(j["ranks"][1]["experts_per_layer"][0], nlohmann::json({6, 7, 0, 1, 2}));
}

// The expert loads llama.cpp's routing of the fixture (32 positions, top-2)
// gives, [layer][expert].
std::vector<std::vector<int64_t>> FixtureExpertLoads() {
  const auto manifest =
      nlohmann::json::parse(testing::ReadFileText(TestDataPath("llamacpp-tiny/manifest.json")));
  const auto& routing = manifest["models"]["tiny-f32"]["routing"]["experts"];
  std::vector<std::vector<int64_t>> loads(2, std::vector<int64_t>(8, 0));
  for (int layer = 0; layer < 2; ++layer) {
    for (const auto& position : routing[layer]) {
      for (const auto& e : position) ++loads[layer][e.get<int>()];
    }
  }
  return loads;
}

// The routing llama.cpp recorded for the fixture is what
// --record-expert-load must count, expert by expert.
TEST(HerdCliTest, RecordExpertLoadWritesATraceHerdPlanReads) {
  TempDir tmp;
  const std::string trace_path = tmp.Join("load.json");
  const RunResult r = RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") +
                              " --prompt-ids " + kIds + " --max-new-tokens 16 --dump-logits " +
                              tmp.Join("l.f32") + " --record-expert-load " + trace_path);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto trace = nlohmann::json::parse(testing::ReadFileText(trace_path));
  const std::vector<std::vector<int64_t>> expected = FixtureExpertLoads();
  EXPECT_EQ(trace["format"], "moe-expert-load-trace/v1");
  for (int layer = 0; layer < 2; ++layer) {
    EXPECT_EQ(trace["loads"][0][layer].get<std::vector<int64_t>>(), expected[layer])
        << "layer " << layer;
  }
  // herd plan takes it as it is.
  const RunResult plan = RunHerd("plan --trace " + trace_path +
                                 " --ranks-per-node 2 --json --out " + tmp.Join("p.yaml"));
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_TRUE(nlohmann::json::parse(plan.out).contains("imbalance_after"));
}

TEST(HerdCliTest, ErrorsGoToStderrWithNonZeroExit) {
  struct Case {
    std::string args;
    std::string message;
  };
  const std::string model = TestDataPath("llamacpp-tiny/tiny-f32.gguf");
  for (const Case& c : std::vector<Case>{
           {"generate --prompt-ids 1", "--model is required"},
           {"generate --model " + model, "--prompt-ids or --prompt is required"},
           {"generate --model " + model + " --prompt-ids 1,x", "'x' is not an integer"},
           {"generate --model " + model + " --prompt-ids 512", "outside the vocabulary"},
           {"generate --model " + model + " --prompt-ids 1 --top-p 0", "top_p must be in (0, 1]"},
           {"generate --model /nonexistent.gguf --prompt-ids 1", "/nonexistent.gguf"},
           {"generate --model " + model + " --prompt-ids 1 --bogus 3", "unknown flag --bogus"},
           {"inspect", "--model is required"},
           {"frobnicate", "unknown command"},
           {"generate --model " + model + " --prompt-ids 1 --device tpu",
            "--device must be cpu or cuda"},
           {"bench --model " + model + " --device cuda --local-ranks 2",
            "--device cuda runs one rank"},
           {"bench --model " + model + " --device cuda --step-tokens 64",
            "--step-tokens applies to the CPU engine"},
           {"bench --model " + model + " --device cuda --kv-cache-type f16",
            "--kv-cache-type f16 runs on the CPU engine"},
           {"serve --model " + model + " --device cuda --kv-cache-type f16",
            "--kv-cache-type f16 runs on the CPU engine"},
           {"serve --model " + model + " --kv-cache-type int8", "f32 or f16 elements, not 'int8'"},
           {"serve --model " + model + " --device tpu", "--device must be cpu or cuda, got 'tpu'"},
           {"serve --model " + model + " --device cuda --local-ranks 2 --rebalance",
            "with --device cuda it is not implemented yet"},
           {"generate --model " + model + " --prompt-ids 1 --comm tcp",
            "--comm (or HERD_COMM) must be ucx or nccl"},
           {"bench --model " + model + " --comm nccl",
            "--comm nccl runs in herd generate and herd serve"},
       }) {
    SCOPED_TRACE(c.args);
    const RunResult r = RunHerd(c.args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
}

// --device cuda on whatever this machine is: with a GPU, the CPU's tokens
// and llama.cpp's expert loads; without one (or in a build without CUDA), an
// error that names the flag.
TEST(HerdCliTest, DeviceCudaRunsOnAGpuOrSaysWhyNot) {
  TempDir tmp;
  const std::string trace_path = tmp.Join("load.json");
  const RunResult r =
      RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") + " --prompt-ids " +
              kIds + " --max-new-tokens 16 --device cuda --record-expert-load " + trace_path);
  if (r.exit_code == 0) {
    const RunResult cpu =
        RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") +
                " --prompt-ids " + kIds + " --max-new-tokens 16");
    EXPECT_EQ(r.out, cpu.out);
    // Two expert-parallel ranks (threads) on this machine's GPUs.
    const RunResult ep =
        RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") +
                " --prompt-ids " + kIds + " --max-new-tokens 16 --device cuda --local-ranks 2");
    ASSERT_EQ(ep.exit_code, 0) << ep.err;
    EXPECT_EQ(ep.out, cpu.out);
    // A group of one rank over NCCL: the experts' rows stay on the GPU and
    // go through NCCL to the rank itself.
    const RunResult nccl =
        RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-q4_0.gguf") +
                " --prompt-ids " + kIds + " --max-new-tokens 16 --device cuda --comm nccl");
    ASSERT_EQ(nccl.exit_code, 0) << nccl.err;
    EXPECT_EQ(nccl.out, RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-q4_0.gguf") +
                                " --prompt-ids " + kIds + " --max-new-tokens 16 --device cuda")
                            .out);
    const auto trace = nlohmann::json::parse(testing::ReadFileText(trace_path));
    const std::vector<std::vector<int64_t>> expected = FixtureExpertLoads();
    for (int layer = 0; layer < 2; ++layer) {
      EXPECT_EQ(trace["loads"][0][layer].get<std::vector<int64_t>>(), expected[layer])
          << "layer " << layer;
    }
  } else {
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find("--device cuda"), std::string::npos) << r.err;
    // NCCL is refused with the reason: not built, or no GPU for its check.
    const RunResult nccl =
        RunHerd("generate --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") +
                " --prompt-ids " + kIds + " --max-new-tokens 2 --device cuda --comm nccl");
    EXPECT_NE(nccl.exit_code, 0);
    EXPECT_EQ(nccl.out, "");
    EXPECT_TRUE(nccl.err.find("--comm nccl needs a build with NCCL") != std::string::npos ||
                nccl.err.find("NCCL pre-flight check failed") != std::string::npos)
        << nccl.err;
  }
}

// The GPU memory plan needs no GPU, only a build with CUDA: the tiny model's
// parts, and a verdict against the memory given.
TEST(HerdCliTest, InspectDeviceCudaPlansTheGpuMemory) {
  const RunResult r = RunHerd("inspect --model " + TestDataPath("llamacpp-tiny/tiny-q4_0.gguf") +
                              " --device cuda --context 2048 --gpu-memory 1000000");
  if (r.exit_code != 0) {
    EXPECT_NE(r.err.find("built without CUDA"), std::string::npos) << r.err;
    return;
  }
  EXPECT_NE(r.out.find("KV cache of 2048 positions"), std::string::npos) << r.out;
  // 2 layers x 8 experts x 3 matrices of 4608 bytes; 2048 positions x 512 bytes of K and V.
  EXPECT_NE(r.out.find("| one GPU | 128.00 KiB | 96.00 KiB | 4.00 KiB | 216.00 KiB |"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("| 1.00 MiB |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("short by"), std::string::npos) << r.out;
  const RunResult json = RunHerd("inspect --model " + TestDataPath("llamacpp-tiny/tiny-q4_0.gguf") +
                                 " --device cuda --context 16 --gpu-memory 85899345920 --json");
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["plan"][0]["expert_bytes"].get<int64_t>(), 2 * 8 * 3 * 4608);
  EXPECT_EQ(j["plan"][0]["kv_bytes"].get<int64_t>(), 16 * 512);
  EXPECT_TRUE(j["plan"][0]["fits"].get<bool>());
}

TEST(HerdCliTest, CompressWritesACheckpointThatRunsAndReportsItsBits) {
  TempDir tmp;
  const std::string out = tmp.Join("int4");
  const std::string report = tmp.Join("report.json");
  const RunResult run =
      RunHerd("compress --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") + " --out " + out +
              " --bits 4 --group-size 32 --asym --modules experts,attention --report " + report);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.out.find("int4-g32-asym-f16 for attention, experts"), std::string::npos) << run.out;
  const nlohmann::json r = nlohmann::json::parse(testing::ReadFileText(report));
  // Experts and attention at 4 + 32/32 bits, the F32 router and embeddings unchanged.
  EXPECT_DOUBLE_EQ(r["size"]["by_module"]["experts"]["bits_after"].get<double>(), 5.0);
  EXPECT_DOUBLE_EQ(r["size"]["by_module"]["attention"]["bits_after"].get<double>(), 5.0);
  EXPECT_DOUBLE_EQ(r["size"]["by_module"]["router"]["bits_after"].get<double>(), 32.0);
  EXPECT_LT(r["size"]["average_bits"].get<double>(),
            r["size"]["average_bits_before"].get<double>());
  const RunResult generated =
      RunHerd("generate --model " + out + " --prompt-ids 1,2,3 --max-new-tokens 4");
  EXPECT_EQ(generated.exit_code, 0) << generated.err;
  const RunResult inspected = RunHerd("inspect --model " + out);
  EXPECT_NE(inspected.out.find("int4-g32-asym-f16 x"), std::string::npos) << inspected.out;

  // Refuses to overwrite, bad bits, groups that do not divide, unknown modules.
  const std::string base = "compress --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf");
  const RunResult exists = RunHerd(base + " --out " + out);
  EXPECT_NE(exists.exit_code, 0);
  EXPECT_NE(exists.err.find("--force"), std::string::npos) << exists.err;
  EXPECT_EQ(RunHerd(base + " --out " + out + " --force --bits 8 --group-size 0").exit_code, 0);
  const RunResult bits = RunHerd(base + " --out " + tmp.Join("b") + " --bits 5");
  EXPECT_NE(bits.err.find("bits"), std::string::npos) << bits.err;
  const RunResult group = RunHerd(base + " --out " + tmp.Join("g") + " --group-size 128");
  EXPECT_NE(group.err.find("int4-g128-sym-f16"), std::string::npos) << group.err;
  const RunResult module = RunHerd(base + " --out " + tmp.Join("m") + " --modules expert");
  EXPECT_NE(module.err.find("unknown module 'expert'"), std::string::npos) << module.err;
  for (const char* name : {"b", "g", "m"}) EXPECT_FALSE(std::filesystem::exists(tmp.Join(name)));
}

TEST(HerdCliTest, CompressGptqBeatsRoundToNearestAndMixedBitsMeetTheirBudget) {
  TempDir tmp;
  const std::string base = "compress --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") +
                           " --bits 3 --group-size 32 --modules experts,attention --no-speed";
  auto kl = [&](const std::string& flags, const std::string& name) {
    const std::string report = tmp.Join(name + ".json");
    const RunResult run =
        RunHerd(base + " --out " + tmp.Join(name) + " --report " + report + " " + flags);
    EXPECT_EQ(run.exit_code, 0) << run.err;
    return nlohmann::json::parse(testing::ReadFileText(report));
  };
  const nlohmann::json rtn = kl("", "rtn");
  const nlohmann::json gptq = kl("--method gptq", "gptq");
  EXPECT_LT(gptq["fidelity"]["mean_kl"].get<double>(), rtn["fidelity"]["mean_kl"].get<double>());
  EXPECT_LT(gptq["gptq"]["output_error"].get<double>(),
            gptq["gptq"]["rtn_output_error"].get<double>());
  EXPECT_EQ(gptq["gptq"]["matrices"].get<int64_t>(), 2 * (4 + 8 * 3));
  EXPECT_NE(gptq["gptq"]["calibration_source"].get<std::string>().find("synthetic"),
            std::string::npos);

  // Experts at 2 bits, attention at 4, outlier-ranked experts raised to 4 until 3 bits on average.
  const nlohmann::json mixed =
      kl("--bits 2 --bits-map attn_4 --policy outlier --avg-bits 3", "mixed");
  EXPECT_GE(mixed["nominal_average_bits"].get<double>(), 3.0);
  EXPECT_LT(mixed["nominal_average_bits"].get<double>(), 3.3);
  EXPECT_GT(mixed["policy"]["raised"].get<int64_t>(), 0);
  EXPECT_EQ(mixed["bit_map"]["model.layers.0.self_attn.q_proj.weight"].get<int>(), 4);

  // A trimmed checkpoint says what it lacks.
  ASSERT_EQ(
      RunHerd(base + " --out " + tmp.Join("trim") + " --drop-experts 3 --drop-layers 1").exit_code,
      0);
  const RunResult trimmed = RunHerd("inspect --model " + tmp.Join("trim"));
  EXPECT_NE(trimmed.out.find("trimmed       3 experts dropped; MoE sublayers dropped in layers ["),
            std::string::npos)
      << trimmed.out;
  // By routing frequency: the raised experts are among the most picked.
  const nlohmann::json frequent = kl("--bits 2 --policy frequency --avg-bits 2.5", "frequent");
  EXPECT_GE(frequent["nominal_average_bits"].get<double>(), 2.5);
  EXPECT_EQ(frequent["policy"]["name"], "frequency");
  EXPECT_GT(frequent["policy"]["top_ranked"][0]["score"].get<double>(),
            frequent["policy"]["top_ranked"][7]["score"].get<double>() - 1e-9);

  const RunResult bad_calib = RunHerd(base + " --out " + tmp.Join("x") + " --method gptq --calib " +
                                      TestDataPath("llamacpp-tiny/manifest.json"));
  EXPECT_NE(bad_calib.exit_code, 0);
  EXPECT_NE(bad_calib.err.find("is not a token id"), std::string::npos) << bad_calib.err;
}

// Dynamic skipping (--skip-threshold): auto stores each layer's median
// w2/w1, which skips about half of the second experts on held-out tokens
// drawn like the calibration ones; generate and bench apply it unless told
// not to; bad values are refused before anything is written.
TEST(HerdCliTest, CompressSkipThresholdStoresThresholdsThatTheEngineApplies) {
  TempDir tmp;
  const std::string base = "compress --model " + TestDataPath("llamacpp-tiny/tiny-f32.gguf") +
                           " --bits 8 --group-size 0 --eval-sequences 8 --eval-length 64";
  const std::string out = tmp.Join("skip");
  const std::string report_path = tmp.Join("skip.json");
  const RunResult run =
      RunHerd(base + " --out " + out + " --skip-threshold auto --report " + report_path);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_NE(run.out.find("dynamic skipping (--skip-threshold auto)"), std::string::npos) << run.out;
  const nlohmann::json report = nlohmann::json::parse(testing::ReadFileText(report_path));
  const nlohmann::json& skipping = report["skipping"];
  ASSERT_EQ(skipping["thresholds"].size(), 2u);  // both layers
  for (const auto& [layer, beta] : skipping["thresholds"].items()) {
    EXPECT_GT(beta.get<double>(), 0.0) << layer;
    EXPECT_LE(beta.get<double>(), 1.0) << layer;
  }
  // Of 2 routed calls per token, about half of the second ones are skipped.
  const double skipped = skipping["skipped_fraction"].get<double>();
  EXPECT_GT(skipped, 0.15);
  EXPECT_LT(skipped, 0.35);
  EXPECT_EQ(skipping["routed_expert_calls"].get<int64_t>(), 2 * 8 * 64 * 2);
  EXPECT_NE(skipping["calibration_source"].get<std::string>().find("synthetic"), std::string::npos);
  EXPECT_GT(report["speed"]["after"]["decode_skipped_expert_fraction"].get<double>(), 0.0);
  const nlohmann::json stored = nlohmann::json::parse(testing::ReadFileText(out + "/herd.json"));
  EXPECT_EQ(stored["expert_skip_thresholds"], skipping["thresholds"]);

  // The engine applies them: the logits change unless --no-expert-skip.
  const std::string generate =
      "generate --model " + out + " --prompt-ids " + kIds + " --max-new-tokens 0 --dump-logits ";
  ASSERT_EQ(RunHerd(generate + tmp.Join("skip.f32")).exit_code, 0);
  ASSERT_EQ(RunHerd(generate + tmp.Join("all.f32") + " --no-expert-skip").exit_code, 0);
  const std::string plain = tmp.Join("plain");
  ASSERT_EQ(RunHerd(base + " --out " + plain + " --no-speed").exit_code, 0);
  ASSERT_EQ(RunHerd("generate --model " + plain + " --prompt-ids " + kIds +
                    " --max-new-tokens 0 --dump-logits " + tmp.Join("plain.f32"))
                .exit_code,
            0);
  EXPECT_EQ(testing::ReadFileBytes(tmp.Join("all.f32")),
            testing::ReadFileBytes(tmp.Join("plain.f32")));
  EXPECT_NE(testing::ReadFileBytes(tmp.Join("skip.f32")),
            testing::ReadFileBytes(tmp.Join("plain.f32")));
  const RunResult bench = RunHerd("bench --model " + out + " --prompt 0 --gen 16 --repetitions 1");
  ASSERT_EQ(bench.exit_code, 0) << bench.err;
  EXPECT_NE(bench.out.find("dynamic skipping left out"), std::string::npos) << bench.out;

  // A fixed beta for every layer.
  ASSERT_EQ(
      RunHerd(base + " --out " + tmp.Join("fixed") + " --skip-threshold 0.5 --no-speed").exit_code,
      0);
  const nlohmann::json fixed =
      nlohmann::json::parse(testing::ReadFileText(tmp.Join("fixed") + "/herd.json"));
  EXPECT_EQ(fixed["expert_skip_thresholds"], nlohmann::json({{"0", 0.5}, {"1", 0.5}}));

  for (const char* bad : {"0", "1.5", "-1", "often"}) {
    const RunResult refused =
        RunHerd(base + " --out " + tmp.Join("bad") + " --skip-threshold " + bad);
    EXPECT_NE(refused.exit_code, 0) << bad;
    EXPECT_NE(refused.err.find("--skip-threshold must be auto or a number in (0, 1]"),
              std::string::npos)
        << refused.err;
    EXPECT_FALSE(std::filesystem::exists(tmp.Join("bad")));
  }
}

}  // namespace
}  // namespace herd
