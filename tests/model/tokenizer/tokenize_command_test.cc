// herd tokenize / detokenize / generate --prompt, called as library functions.
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/gguf_file.h"
#include "model/gguf_writer.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/unicode.h"
#include "tests/support/test_support.h"
#include "tools/commands.h"

namespace herd {
namespace {

using ::herd::testing::TempDir;
using ::herd::testing::TestDataPath;
using ::herd::testing::WriteFileText;
using ::testing::HasSubstr;

absl::StatusOr<std::string> RunCommand(absl::Status (*command)(const std::vector<std::string>&,
                                                               std::ostream&),
                                       const std::vector<std::string>& args) {
  std::ostringstream out;
  absl::Status status = command(args, out);
  if (!status.ok()) return status;
  return out.str();
}

std::string Gpt2() { return TestDataPath("tokenizers/ggml-vocab-gpt-2.gguf"); }
std::string LlamaSpm() { return TestDataPath("tokenizers/ggml-vocab-llama-spm.gguf"); }
std::string Tiny() { return TestDataPath("llamacpp-tiny/tiny-f32.gguf"); }

TEST(TokenizeCommandTest, PrintsIdsOnOneLine) {
  auto out = RunCommand(RunTokenizeCommand, {"--model", Gpt2(), "--text", "Hello world"});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "15496 995\n");
  out = RunCommand(RunTokenizeCommand, {"--model", Gpt2(), "--text", "Hello world", "--bos"});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "50256 15496 995\n");
  // Control tokens are text unless --special.
  out = RunCommand(RunTokenizeCommand, {"--model", Gpt2(), "--text", "<|endoftext|>", "--special"});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "50256\n");
  out = RunCommand(RunTokenizeCommand, {"--model", Gpt2(), "--text", "<|endoftext|>"});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_NE(*out, "50256\n");
}

TEST(TokenizeCommandTest, ReadsTextFile) {
  TempDir dir;
  WriteFileText(dir.Join("in.txt"), " Hello World!");
  auto out =
      RunCommand(RunTokenizeCommand, {"--model", LlamaSpm(), "--text-file", dir.Join("in.txt")});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "29871 15043 2787 29991\n");  // the fixture's ids for this text
}

TEST(TokenizeCommandTest, RejectsBadInput) {
  auto out = RunCommand(RunTokenizeCommand, {"--model", Gpt2()});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  out = RunCommand(RunTokenizeCommand, {"--model", Gpt2(), "--text", "a", "--text-file", "b"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  out = RunCommand(RunTokenizeCommand, {"--model", Gpt2(), "--text-file", "/nonexistent/file"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kNotFound);

  TempDir dir;
  WriteFileText(dir.Join("bad.txt"), "ok \xC3\x28 bad");
  out = RunCommand(RunTokenizeCommand, {"--model", Gpt2(), "--text-file", dir.Join("bad.txt")});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("not valid UTF-8"));
  EXPECT_THAT(out.status().message(), HasSubstr("byte 3"));
}

TEST(TokenizeCommandTest, ModelWithoutTokenizerIsAClearError) {
  auto out = RunCommand(RunTokenizeCommand, {"--model", Tiny(), "--text", "hello"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(out.status().message(), HasSubstr("has no tokenizer"));
  EXPECT_THAT(out.status().message(), HasSubstr("\"none\""));
  out = RunCommand(RunDetokenizeCommand, {"--model", Tiny(), "--ids", "1,2"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);

  TempDir dir;  // a Hugging Face directory without tokenizer.json
  WriteFileText(dir.Join("config.json"), "{}");
  out = RunCommand(RunTokenizeCommand, {"--model", dir.path(), "--text", "hello"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(out.status().message(), HasSubstr("no tokenizer.json"));
}

TEST(TokenizeCommandTest, UnknownKindsNameTheKind) {
  TempDir dir;
  GgufWriter bert;
  bert.AddString("tokenizer.ggml.model", "bert");
  bert.AddStringArray("tokenizer.ggml.tokens", {"a", "b"});
  ASSERT_TRUE(bert.WriteFile(dir.Join("bert.gguf")).ok());
  auto out = RunCommand(RunTokenizeCommand, {"--model", dir.Join("bert.gguf"), "--text", "ab"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(out.status().message(), HasSubstr("'bert'"));

  GgufWriter pre;
  pre.AddString("tokenizer.ggml.model", "gpt2");
  pre.AddString("tokenizer.ggml.pre", "klingon");
  pre.AddStringArray("tokenizer.ggml.tokens", {"a", "b", "ab"});
  pre.AddStringArray("tokenizer.ggml.merges", {"a b"});
  ASSERT_TRUE(pre.WriteFile(dir.Join("pre.gguf")).ok());
  out = RunCommand(RunTokenizeCommand, {"--model", dir.Join("pre.gguf"), "--text", "ab"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(out.status().message(), HasSubstr("'klingon'"));
  EXPECT_THAT(out.status().message(), HasSubstr("'qwen2'"));
}

TEST(DetokenizeCommandTest, PrintsText) {
  auto out = RunCommand(RunDetokenizeCommand, {"--model", Gpt2(), "--ids", "15496,995"});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "Hello world\n");
  out = RunCommand(RunDetokenizeCommand, {"--model", LlamaSpm(), "--ids", "1,15043,2787"});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "Hello World\n");
  out = RunCommand(RunDetokenizeCommand, {"--model", LlamaSpm(), "--ids", "1,15043,2787",
                                          "--special", "--keep-space-prefix"});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, "<s> Hello World\n");
  out = RunCommand(RunDetokenizeCommand, {"--model", Gpt2(), "--ids", "15496,50257"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("50257"));
}

// The tiny fixture model with a small byte-level BPE vocabulary of its 512 ids.
std::string WriteTinyModelWithTokenizer(const TempDir& dir) {
  auto tiny = GgufFile::Open(Tiny());
  EXPECT_TRUE(tiny.ok()) << tiny.status();
  GgufWriter writer;
  for (const std::string& key : (*tiny)->metadata_keys()) {
    if (key.rfind("tokenizer.", 0) == 0) continue;
    const GgufValue& v = *(*tiny)->FindValue(key);
    switch (v.type()) {
      case GgufType::kString:
        writer.AddString(key, std::string(*v.AsString()));
        break;
      case GgufType::kF32:
        writer.AddF32(key, static_cast<float>(*v.AsDouble()));
        break;
      case GgufType::kU32:
        writer.AddU32(key, static_cast<uint32_t>(*v.AsUint64()));
        break;
      default:
        ADD_FAILURE() << "unexpected metadata type for " << key;
    }
  }
  const tokenizer::ByteLevelMap& map = tokenizer::ByteLevelMap::Get();
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(map.CharFor(static_cast<uint8_t>(b)));
  std::vector<std::string> merges;
  const std::string space = map.CharFor(' ');
  std::vector<std::string> firsts = {space};
  for (char c : std::string("etaoinshrdlu")) firsts.push_back(std::string(1, c));
  for (const std::string& first : firsts) {
    for (char c : std::string("etaoinshrdlucmfwypgb")) {
      if (tokens.size() == 511) break;
      merges.push_back(absl::StrCat(first, " ", std::string(1, c)));
      tokens.push_back(absl::StrCat(first, std::string(1, c)));
    }
  }
  tokens.push_back("<|endoftext|>");
  std::vector<int32_t> types(tokens.size(), 1);
  types.back() = 3;
  writer.AddString("tokenizer.ggml.model", "gpt2");
  writer.AddString("tokenizer.ggml.pre", "gpt-2");
  writer.AddStringArray("tokenizer.ggml.tokens", tokens);
  writer.AddI32Array("tokenizer.ggml.token_type", types);
  writer.AddStringArray("tokenizer.ggml.merges", merges);
  writer.AddU32("tokenizer.ggml.bos_token_id", 511);
  writer.AddU32("tokenizer.ggml.eos_token_id", 511);
  writer.AddBool("tokenizer.ggml.add_bos_token", true);
  for (const GgufTensorInfo& info : (*tiny)->tensors()) {
    auto view = (*tiny)->GetView(info);
    EXPECT_TRUE(view.ok()) << view.status();
    std::vector<int64_t> shape;
    for (int i = 0; i < view->rank(); ++i) shape.push_back(view->dim(i));
    EXPECT_TRUE(
        writer.AddTensor(info.name, view->dtype(), shape, view->data(), view->num_bytes()).ok());
  }
  const std::string path = dir.Join("tiny-with-tokenizer.gguf");
  EXPECT_TRUE(writer.WriteFile(path).ok());
  return path;
}

TEST(GenerateCommandTest, PromptTextGoesThroughTheTokenizer) {
  TempDir dir;
  const std::string model = WriteTinyModelWithTokenizer(dir);
  const std::string prompt = "the model is a tiny one";
  // The same prompt as ids: BOS (add_bos_token) + the encoded text.
  auto ids = RunCommand(RunTokenizeCommand, {"--model", model, "--text", prompt, "--bos"});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_THAT(*ids, ::testing::StartsWith("511 "));
  std::vector<std::string> id_list = absl::StrSplit(absl::StripSuffix(*ids, "\n"), ' ');
  auto by_ids = RunCommand(
      RunGenerateCommand,
      {"--model", model, "--prompt-ids", absl::StrJoin(id_list, ","), "--max-new-tokens", "12"});
  ASSERT_TRUE(by_ids.ok()) << by_ids.status();
  // Expected text: the generated ids up to the first EOS, decoded as a continuation.
  std::vector<int32_t> generated;
  for (absl::string_view item : absl::StrSplit(absl::StripSuffix(*by_ids, "\n"), ',')) {
    const int32_t id = std::stoi(std::string(item));
    if (id == 511) break;
    generated.push_back(id);
  }
  auto tok = Tokenizer::Load(model);
  ASSERT_TRUE(tok.ok()) << tok.status();
  DecodeOptions options;
  options.strip_space_prefix = false;
  auto expected = (*tok)->Decode(generated, options);
  ASSERT_TRUE(expected.ok());

  auto by_text = RunCommand(RunGenerateCommand,
                            {"--model", model, "--prompt", prompt, "--max-new-tokens", "12"});
  ASSERT_TRUE(by_text.ok()) << by_text.status();
  EXPECT_EQ(*by_text, *expected + "\n");
  EXPECT_TRUE(tokenizer::ValidateUtf8(*by_text).ok());
}

TEST(GenerateCommandTest, PromptFlagsAreExclusiveAndNeedATokenizer) {
  auto out =
      RunCommand(RunGenerateCommand, {"--model", Tiny(), "--prompt", "hi", "--prompt-ids", "1,2"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("mutually exclusive"));
  out = RunCommand(RunGenerateCommand, {"--model", Tiny(), "--prompt", "hi"});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(out.status().message(), HasSubstr("has no tokenizer"));
}

}  // namespace
}  // namespace herd
