// Guided decoding's token masks on a real vocabulary (llama's SentencePiece
// one): a token is allowed exactly when its text keeps the output a prefix
// of a JSON object (JSON mode), of a value a schema accepts or of a text a
// pattern matches; control tokens never are, a chat reply's first token
// counts without its space prefix, and the value's closing token completes
// it; masks are cached by grammar.
#include "coordinator/api/guided_decoding.h"

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

class GuidedDecodingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tokenizer =
        Tokenizer::Load(herd::testing::TestDataPath("tokenizers/ggml-vocab-llama-spm.gguf"));
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
    texts_ = new TokenTexts(*tokenizer_, tokenizer_->vocab_size());
    caches_ = new MaskCaches<JsonPrefix>(texts_);
    masks_ = new std::shared_ptr<JsonMaskCache>(
        caches_->For(JsonSchema::AnyObject()->text(), JsonSchema::AnyObject()));
  }
  static void TearDownTestSuite() {
    delete masks_;
    delete caches_;
    delete texts_;
    delete tokenizer_;
  }

  static std::vector<uint64_t> Mask(const TokenConstraint& constraint, int64_t* count) {
    std::vector<uint64_t> mask((tokenizer_->vocab_size() + 63) / 64, 0);
    *count = constraint.Allowed(absl::MakeSpan(mask));
    return mask;
  }
  static bool Has(const std::vector<uint64_t>& mask, int32_t id) {
    return (mask[id / 64] >> (id % 64)) & 1;
  }
  static int32_t Id(const std::string& piece) { return *tokenizer_->TokenId(piece); }

  static const Tokenizer* tokenizer_;
  static const TokenTexts* texts_;
  static MaskCaches<JsonPrefix>* caches_;
  static std::shared_ptr<JsonMaskCache>* masks_;  // JSON mode's
};
const Tokenizer* GuidedDecodingTest::tokenizer_ = nullptr;
const TokenTexts* GuidedDecodingTest::texts_ = nullptr;
MaskCaches<JsonPrefix>* GuidedDecodingTest::caches_ = nullptr;
std::shared_ptr<JsonMaskCache>* GuidedDecodingTest::masks_ = nullptr;

TEST_F(GuidedDecodingTest, AllowsExactlyTheTokensThatKeepAnObjectPrefix) {
  JsonConstraint constraint(*masks_, /*chat=*/false);
  int64_t count = 0;
  std::vector<uint64_t> mask = Mask(constraint, &count);
  // Brute force over the vocabulary with JsonPrefix on the texts.
  std::string output;
  auto check = [&](const std::string& what) {
    int64_t want = 0;
    for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
      const std::string& text = texts_->text(id);
      JsonPrefix prefix(JsonSchema::AnyObject().get());
      const bool ok = !text.empty() && prefix.Push(output + text);
      want += ok;
      ASSERT_EQ(Has(mask, id), ok) << what << ": token " << id << " '" << text << "'";
    }
    EXPECT_EQ(count, want) << what;
  };
  check("start");
  EXPECT_TRUE(Has(mask, Id("{")));
  EXPECT_FALSE(Has(mask, Id("▁{")));  // a completion keeps the space
  EXPECT_FALSE(Has(mask, tokenizer_->bos_id()));
  EXPECT_FALSE(Has(mask, tokenizer_->eos_id()));
  for (const std::string piece : {"{", "\"", "a", "\"", ":", "▁", "1"}) {
    const int32_t id = Id(piece);
    ASSERT_TRUE(Has(mask, id)) << piece << " after '" << output << "'";
    constraint.Accept(id);
    output += texts_->text(id);
    EXPECT_FALSE(constraint.complete());
    mask = Mask(constraint, &count);
    check("after '" + output + "'");
  }
  EXPECT_TRUE(Has(mask, Id("}")));
  EXPECT_TRUE(Has(mask, Id("0")));  // 10
  EXPECT_FALSE(Has(mask, Id("]")));
  constraint.Accept(Id("}"));
  EXPECT_TRUE(constraint.complete());
  EXPECT_EQ(Mask(constraint, &count), std::vector<uint64_t>(mask.size(), 0));
  EXPECT_EQ(count, 0);
}

TEST_F(GuidedDecodingTest, AChatReplysFirstTokenCountsWithoutItsSpacePrefix) {
  JsonConstraint constraint(*masks_, /*chat=*/true);
  int64_t count = 0;
  std::vector<uint64_t> mask = Mask(constraint, &count);
  EXPECT_TRUE(Has(mask, Id("{")));
  EXPECT_TRUE(Has(mask, Id("▁{")));
  constraint.Accept(Id("▁{"));
  mask = Mask(constraint, &count);
  // After the first token the space counts: whitespace inside the object.
  EXPECT_TRUE(Has(mask, Id("▁\"")));
  EXPECT_FALSE(Has(mask, Id("▁{")));
}

// Under a schema, along random walks over the allowed tokens (seeded): each
// mask is the brute-force one, and every walk ends in a whole value.
TEST_F(GuidedDecodingTest, SchemaMasksAreTheBruteForceOnes) {
  const nlohmann::ordered_json text = nlohmann::ordered_json::parse(R"({"type": "object",
      "properties": {"name": {"type": "string", "maxLength": 3},
                     "kind": {"enum": ["cat", "dog"]},
                     "legs": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                     "tag": {"type": "string", "pattern": "^[A-Z]{2}\\d$"},
                     "born": {"type": "string", "format": "date"}},
      "required": ["name", "kind", "legs", "tag", "born"], "additionalProperties": false})");
  const std::shared_ptr<const JsonSchema> schema = *JsonSchema::Compile(text);
  const std::shared_ptr<JsonMaskCache> masks = caches_->For(schema->text(), schema);
  std::mt19937 rng(1);
  int whole = 0;
  for (int walk = 0; walk < 6; ++walk) {
    JsonConstraint constraint(masks, /*chat=*/false);
    JsonPrefix output(schema.get());  // the brute force's, token by token
    std::string text;
    for (int step = 0; step < 120 && !constraint.complete(); ++step) {
      int64_t count = 0;
      const std::vector<uint64_t> mask = Mask(constraint, &count);
      std::vector<int32_t> allowed;
      std::vector<int32_t> no_space;  // walks that skip whitespace end sooner
      for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
        const std::string& piece = texts_->text(id);
        JsonPrefix next = output;
        const bool ok = !piece.empty() && next.Push(piece);
        ASSERT_EQ(Has(mask, id), ok)
            << "after '" << text << "': token " << id << " '" << piece << "'";
        if (!ok) continue;
        allowed.push_back(id);
        if (piece.find_first_of(" \n\t\r") == std::string::npos) no_space.push_back(id);
      }
      ASSERT_EQ(count, static_cast<int64_t>(allowed.size()));
      ASSERT_FALSE(allowed.empty()) << "dead end after '" << text << "'";
      const std::vector<int32_t>& pool = no_space.empty() ? allowed : no_space;
      const int32_t id = pool[rng() % pool.size()];
      constraint.Accept(id);
      ASSERT_TRUE(output.Push(texts_->text(id)));
      text += texts_->text(id);
    }
    whole += constraint.complete();
  }
  EXPECT_GT(whole, 0);
}

TEST_F(GuidedDecodingTest, CachesMasksByGrammarKey) {
  const auto compile = [](const std::string& text) {
    return *JsonSchema::Compile(nlohmann::ordered_json::parse(text));
  };
  const auto cache = [&](const std::string& text) {
    const std::shared_ptr<const JsonSchema> schema = compile(text);
    return caches_->For(schema->text(), schema);
  };
  const std::shared_ptr<JsonMaskCache> first = cache(R"({"type": "array"})");
  EXPECT_EQ(cache(R"({"type":"array"})"), first);  // the same text, compact
  // Other keys' order is another schema (its objects write them in order).
  EXPECT_NE(cache(R"({"properties": {"a": {}, "b": {}}})"),
            cache(R"({"properties": {"b": {}, "a": {}}})"));
  // The least recently used goes when more than kMaxGrammars are in use.
  for (size_t i = 0; i < MaskCaches<JsonPrefix>::kMaxGrammars; ++i) {
    cache(absl::StrCat(R"({"type": "array", "maxItems": )", i, "}"));
  }
  EXPECT_NE(cache(R"({"type": "array"})"), first);
}

// guided_regex's masks: each the brute-force one along random walks (UTF-8
// split across tokens included), stop ids allowed (may_end) exactly where
// the text already matches but could go on, and the walk done when nothing
// may follow.
TEST_F(GuidedDecodingTest, RegexMasksAreTheBruteForceOnes) {
  for (const char* pattern :
       {R"((yes|no|maybe)( [a-z]{1,3}){0,2})", R"([é日本]{1,4}\.)", R"(\d{2,3}(-\d{2})?)"}) {
    SCOPED_TRACE(pattern);
    const std::shared_ptr<const Regex> regex = *Regex::Compile(pattern, Regex::Mode::kFullMatch);
    MaskCaches<RegexPrefix> caches(texts_);
    const std::shared_ptr<RegexMaskCache> masks = caches.For(pattern, regex);
    std::mt19937 rng(3);
    for (int walk = 0; walk < 4; ++walk) {
      RegexConstraint constraint(masks, /*chat=*/false);
      RegexPrefix output(regex.get());
      std::string text;
      for (int step = 0; step < 40 && !constraint.complete(); ++step) {
        int64_t count = 0;
        const std::vector<uint64_t> mask = Mask(constraint, &count);
        std::vector<int32_t> allowed;
        for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
          const std::string& piece = texts_->text(id);
          RegexPrefix next = output;
          const bool ok = !piece.empty() && next.Push(piece);
          ASSERT_EQ(Has(mask, id), ok)
              << "after '" << text << "': token " << id << " '" << piece << "'";
          if (ok) allowed.push_back(id);
        }
        ASSERT_EQ(count, static_cast<int64_t>(allowed.size()));
        EXPECT_EQ(constraint.may_end(), output.may_end());
        ASSERT_FALSE(allowed.empty() && !output.may_end()) << "dead end after '" << text << "'";
        if (allowed.empty() || (output.may_end() && rng() % 4 == 0)) break;  // "stops" here
        const int32_t id = allowed[rng() % allowed.size()];
        constraint.Accept(id);
        ASSERT_TRUE(output.Push(texts_->text(id)));
        text += texts_->text(id);
      }
      EXPECT_TRUE(output.may_end() || !constraint.complete()) << text;
    }
  }
}

}  // namespace
}  // namespace herd
