// The herd binary as users run it: a real process, its stdout, stderr and
// exit code.
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
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

struct RunResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};

RunResult RunHerd(const std::string& args) {
  TempDir tmp;
  const std::string err_path = tmp.Join("stderr");
  const std::string command = std::string(HERD_CLI_PATH) + " " + args + " 2>" + err_path;
  RunResult result{-1, "", ""};
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.out.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.err = testing::ReadFileText(err_path);
  return result;
}

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

TEST(HerdCliTest, InspectDescribesTheModel) {
  const RunResult text = RunHerd("inspect --model " + TestDataPath("llamacpp-tiny/tiny-q4_0.gguf"));
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("mixtral"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("experts"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("Q4_0 x6"), std::string::npos) << text.out;

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
  // Every byte of tensor data in the file is accounted for.
  int64_t bytes = 0;
  for (const auto& [name, m] : j["modules"].items()) bytes += m["bytes"].get<int64_t>();
  EXPECT_EQ(bytes, j["bytes"].get<int64_t>());
  EXPECT_GT(bytes, 500000);
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
       }) {
    SCOPED_TRACE(c.args);
    const RunResult r = RunHerd(c.args);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace herd
