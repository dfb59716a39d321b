// JSON mode's token masks on a real vocabulary (llama's SentencePiece one):
// a token is allowed exactly when its text keeps the output a prefix of a
// JSON object, control tokens never are, a chat reply's first token counts
// without its space prefix, and the object's closing token completes it.
#include "coordinator/api/json_constraint.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/test_support.h"

namespace herd {
namespace {

class JsonConstraintTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tokenizer =
        Tokenizer::Load(herd::testing::TestDataPath("tokenizers/ggml-vocab-llama-spm.gguf"));
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = tokenizer->release();
    texts_ = new TokenTexts(*tokenizer_, tokenizer_->vocab_size());
    masks_ = new JsonMaskCache(texts_);
  }
  static void TearDownTestSuite() {
    delete masks_;
    delete texts_;
    delete tokenizer_;
  }

  static std::vector<uint64_t> Mask(const JsonConstraint& constraint, int64_t* count) {
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
  static JsonMaskCache* masks_;
};
const Tokenizer* JsonConstraintTest::tokenizer_ = nullptr;
const TokenTexts* JsonConstraintTest::texts_ = nullptr;
JsonMaskCache* JsonConstraintTest::masks_ = nullptr;

TEST_F(JsonConstraintTest, AllowsExactlyTheTokensThatKeepAnObjectPrefix) {
  JsonConstraint constraint(masks_, /*chat=*/false);
  int64_t count = 0;
  std::vector<uint64_t> mask = Mask(constraint, &count);
  // Brute force over the vocabulary with JsonPrefix on the texts.
  std::string output;
  auto check = [&](const std::string& what) {
    int64_t want = 0;
    for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
      const std::string& text = texts_->text(id);
      JsonPrefix prefix;
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

TEST_F(JsonConstraintTest, AChatReplysFirstTokenCountsWithoutItsSpacePrefix) {
  JsonConstraint constraint(masks_, /*chat=*/true);
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

}  // namespace
}  // namespace herd
