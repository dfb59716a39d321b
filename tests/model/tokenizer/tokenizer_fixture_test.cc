// The real vocabularies of tests/data/tokenizers (llama.cpp's tokenizer test
// data): every test string must encode to exactly the ids Hugging Face's
// tokenizer produced, and decode back to the string.
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/tokenizer.h"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::herd::testing::ReadFileText;
using ::herd::testing::TestDataPath;

struct Vocab {
  const char* file;
  TokenizerKind kind;
  int32_t vocab_size;
  int32_t bos_id;
  int32_t eos_id;
};

struct Case {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Case> ReadCases(const std::string& gguf) {
  const std::string inp = ReadFileText(gguf + ".inp");
  const std::string out = ReadFileText(gguf + ".out");
  std::vector<std::string> texts = absl::StrSplit(inp, "\n__ggml_vocab_test__\n");
  texts.pop_back();  // the text after the last separator is not a test
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  EXPECT_GE(lines.size(), texts.size());
  std::vector<Case> cases;
  for (size_t i = 0; i < texts.size() && i < lines.size(); ++i) {
    Case c{texts[i], {}};
    for (absl::string_view item : absl::StrSplit(lines[i], ' ', absl::SkipEmpty())) {
      c.ids.push_back(std::stoi(std::string(item)));
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

class FixtureTest : public ::testing::TestWithParam<Vocab> {
 protected:
  std::string Path() const { return TestDataPath(std::string("tokenizers/") + GetParam().file); }
};

TEST_P(FixtureTest, LoadsMetadata) {
  auto tok = Tokenizer::Load(Path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), GetParam().kind);
  EXPECT_EQ((*tok)->vocab_size(), GetParam().vocab_size);
  EXPECT_EQ((*tok)->bos_id(), GetParam().bos_id);
  EXPECT_EQ((*tok)->eos_id(), GetParam().eos_id);
  EXPECT_TRUE((*tok)->IsEndOfGeneration(GetParam().eos_id));
  EXPECT_GT((*tok)->num_merges(), 1000u);
}

TEST_P(FixtureTest, EncodesEveryTestStringExactly) {
  auto tok = Tokenizer::Load(Path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<Case> cases = ReadCases(Path());
  ASSERT_GE(cases.size(), 40u);
  for (const Case& c : cases) {
    auto ids = (*tok)->Encode(c.text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(absl::StrJoin(*ids, " "), absl::StrJoin(c.ids, " ")) << "text: '" << c.text << "'";
  }
}

TEST_P(FixtureTest, DecodesEveryTestStringBack) {
  auto tok = Tokenizer::Load(Path());
  ASSERT_TRUE(tok.ok()) << tok.status();
  for (const Case& c : ReadCases(Path())) {
    auto text = (*tok)->Decode(c.ids);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c.text) << "ids: " << absl::StrJoin(c.ids, " ");
    // Streaming gives the same text, and never splits a UTF-8 character.
    StreamDecoder stream(**tok);
    std::string streamed;
    for (int32_t id : c.ids) {
      auto piece = stream.Next(id);
      ASSERT_TRUE(piece.ok()) << piece.status();
      EXPECT_TRUE(tokenizer::ValidateUtf8(*piece).ok()) << "chunk splits a character";
      streamed += *piece;
    }
    streamed += stream.Finish();
    EXPECT_EQ(streamed, c.text);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Vocabularies, FixtureTest,
    ::testing::Values(
        Vocab{"ggml-vocab-llama-spm.gguf", TokenizerKind::kSentencePiece, 32000, 1, 2},
        Vocab{"ggml-vocab-phi-3.gguf", TokenizerKind::kSentencePiece, 32064, 1, 32000},
        Vocab{"ggml-vocab-gpt-2.gguf", TokenizerKind::kByteLevelBpe, 50257, 50256, 50256},
        Vocab{"ggml-vocab-deepseek-llm.gguf", TokenizerKind::kByteLevelBpe, 102400, 100000,
              100001}),
    [](const ::testing::TestParamInfo<Vocab>& info) {
      std::string name = info.param.file;
      name = name.substr(std::string("ggml-vocab-").size());
      name = name.substr(0, name.find('.'));
      for (char& c : name) {
        if (c == '-') c = '_';
      }
      return name;
    });

}  // namespace
}  // namespace herd
