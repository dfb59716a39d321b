// tokenizer.json / tokenizer_config.json against the real Hugging Face
// `tokenizers` library: tests/data/tokenizers/hf/generate.py (pinned version)
// wrote the expected ids and decoded texts; this test needs no Python.
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::herd::testing::ReadFileText;
using ::herd::testing::TestDataPath;
using json = nlohmann::json;

class HfTokenizerTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    dir_ = TestDataPath(std::string("tokenizers/hf/") + GetParam());
    auto tok = Tokenizer::Load(dir_);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::move(*tok);
    expected_ = json::parse(ReadFileText(dir_ + "/expected.json"));
    ASSERT_GE(expected_["cases"].size(), 50u);
  }
  std::string dir_;
  std::unique_ptr<Tokenizer> tokenizer_;
  json expected_;
};

std::string Ids(const std::vector<int32_t>& ids) { return absl::StrJoin(ids, " "); }

TEST_P(HfTokenizerTest, EncodesLikeHuggingFace) {
  for (const json& c : expected_["cases"]) {
    const std::string text = c["text"];
    EncodeOptions options;
    options.parse_special = true;
    auto ids = tokenizer_->Encode(text, options);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(Ids(*ids), Ids(c["ids"].get<std::vector<int32_t>>())) << "text: '" << text << "'";
  }
}

TEST_P(HfTokenizerTest, SpecialTokensAreTextUnlessAsked) {
  for (const json& c : expected_["cases"]) {
    const std::string text = c["text"];
    auto ids = tokenizer_->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(Ids(*ids), Ids(c["ids_special_as_text"].get<std::vector<int32_t>>()))
        << "text: '" << text << "'";
  }
}

TEST_P(HfTokenizerTest, AddsBosLikeThePostProcessor) {
  for (const json& c : expected_["cases"]) {
    const std::string text = c["text"];
    EncodeOptions options;
    options.parse_special = true;
    options.add_bos = tokenizer_->add_bos();
    options.add_eos = tokenizer_->add_eos();
    auto ids = tokenizer_->Encode(text, options);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(Ids(*ids), Ids(c["ids_with_bos"].get<std::vector<int32_t>>()))
        << "text: '" << text << "'";
  }
}

TEST_P(HfTokenizerTest, DecodesLikeHuggingFace) {
  for (const json& c : expected_["cases"]) {
    const std::vector<int32_t> ids = c["ids"];
    DecodeOptions options;
    options.render_special = true;
    auto text = tokenizer_->Decode(ids, options);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["decoded"].get<std::string>()) << "ids: " << Ids(ids);
    options.render_special = false;
    text = tokenizer_->Decode(ids, options);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["decoded_skip_special"].get<std::string>()) << "ids: " << Ids(ids);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, HfTokenizerTest,
                         ::testing::Values("byte-level-split", "byte-level-gpt2", "metaspace",
                                           "llama-style"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

TEST(HfTokenizerConfigTest, ReadsTokenizerConfig) {
  auto tok = Tokenizer::Load(TestDataPath("tokenizers/hf/byte-level-split"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), TokenizerKind::kByteLevelBpe);
  EXPECT_EQ((*tok)->bos_id(), -1);
  ASSERT_GE((*tok)->eos_id(), 0);
  EXPECT_EQ((*tok)->token_text((*tok)->eos_id()), "<|im_end|>");
  EXPECT_FALSE((*tok)->add_bos());
  EXPECT_THAT((*tok)->chat_template(), ::testing::HasSubstr("<|im_start|>"));

  auto spm = Tokenizer::Load(TestDataPath("tokenizers/hf/llama-style"));
  ASSERT_TRUE(spm.ok()) << spm.status();
  EXPECT_EQ((*spm)->kind(), TokenizerKind::kBpe);
  EXPECT_TRUE((*spm)->add_bos());
  EXPECT_EQ((*spm)->token_text((*spm)->bos_id()), "<s>");
}

}  // namespace
}  // namespace herd
