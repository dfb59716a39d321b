// The tokenizer's parts: UTF-8 handling, the byte-level map, ICU
// normalization, regex splits with each Hugging Face behavior, added-token
// matching, the merge engine, streaming decode and spec validation.
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/tokenizer/added_tokens.h"
#include "model/tokenizer/bpe.h"
#include "model/tokenizer/pre_tokenizer.h"
#include "model/tokenizer/regex.h"
#include "model/tokenizer/tokenizer.h"
#include "model/tokenizer/unicode.h"
#include "tests/support/test_support.h"

namespace herd::tokenizer {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(Utf8Test, RejectsIllFormedSequences) {
  EXPECT_TRUE(ValidateUtf8("plain \xC3\xA9 \xF0\x9F\x99\x82").ok());
  for (const char* bad : {"\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE2\x82", "\xFF"}) {
    const absl::Status status = ValidateUtf8(std::string("ab") + bad);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("at byte 2"));
  }
}

TEST(Utf8Test, SanitizesMaximalSubparts) {
  EXPECT_EQ(SanitizeUtf8("\xE2\x82"
                         "A"),
            "\xEF\xBF\xBD"
            "A");
  EXPECT_EQ(SanitizeUtf8("\xF0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("ok"), "ok");
  EXPECT_EQ(CompleteUtf8Prefix("a\xF0\x9F\x99"), 1u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xF0\x9F\x99\x82"), 5u);
  EXPECT_EQ(CompleteUtf8Prefix("a\xFF"), 2u);  // never valid: emitted (as U+FFFD)
}

TEST(ByteLevelMapTest, IsGpt2sMap) {
  const ByteLevelMap& map = ByteLevelMap::Get();
  EXPECT_EQ(map.CharFor(' '), "\xC4\xA0");   // U+0120 "Ġ"
  EXPECT_EQ(map.CharFor('\n'), "\xC4\x8A");  // U+010A "Ċ"
  EXPECT_EQ(map.CharFor('A'), "A");
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(map.Decode(map.Encode(all)), all);
}

TEST(UnicodeTest, NormalizesThroughIcu) {
  EXPECT_EQ(*Normalize("e\xCC\x81", NormalizationForm::kNfc), "\xC3\xA9");
  EXPECT_EQ(*Normalize("\xC3\xA9", NormalizationForm::kNfd), "e\xCC\x81");
  EXPECT_EQ(*Normalize("\xEF\xAC\x81", NormalizationForm::kNfkc), "fi");  // U+FB01 ligature
  EXPECT_EQ(*Lowercase("\xC3\x80"
                       "BC \xD0\x96"),
            "\xC3\xA0"
            "bc \xD0\xB6");
  EXPECT_TRUE(IsWhiteSpace(0x3000));
  EXPECT_FALSE(IsWhiteSpace('x'));
}

TEST(RegexTest, UsesUnicodeClassesAndReportsBadPatterns) {
  auto regex = Regex::Compile(R"(\p{L}+)");
  ASSERT_TRUE(regex.ok());
  std::vector<std::string> words;
  const std::string text = "Привет, world 42";
  ASSERT_TRUE(
      (*regex)
          ->ForEachMatch(text, [&](size_t b, size_t e) { words.push_back(text.substr(b, e - b)); })
          .ok());
  EXPECT_THAT(words, ElementsAre("Привет", "world"));
  auto bad = Regex::Compile("[a-");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("[a-"));
}

std::vector<std::string> Pieces(const PreTokenizer& pre, const std::string& text) {
  PreTokenized out;
  EXPECT_TRUE(pre.Run(text, true, &out).ok());
  std::vector<std::string> pieces;
  for (const auto& p : out.pieces) pieces.emplace_back(out.piece_text(p));
  return pieces;
}

// Hugging Face's documented example of each split behavior.
TEST(PreTokenizerTest, SplitBehaviors) {
  const std::string text = "the-final--countdown";
  auto split = [&](SplitBehavior behavior) {
    PreTokenizer pre;
    pre.AddSplit(*Regex::Compile("-"), behavior, false);
    return Pieces(pre, text);
  };
  EXPECT_THAT(split(SplitBehavior::kRemoved), ElementsAre("the", "final", "countdown"));
  EXPECT_THAT(split(SplitBehavior::kIsolated),
              ElementsAre("the", "-", "final", "-", "-", "countdown"));
  EXPECT_THAT(split(SplitBehavior::kMergedWithPrevious),
              ElementsAre("the-", "final-", "-", "countdown"));
  EXPECT_THAT(split(SplitBehavior::kMergedWithNext),
              ElementsAre("the", "-final", "-", "-countdown"));
  EXPECT_THAT(split(SplitBehavior::kContiguous),
              ElementsAre("the", "-", "final", "--", "countdown"));
}

TEST(PreTokenizerTest, MetaspaceAndByteLevel) {
  PreTokenizer metaspace;
  metaspace.AddMetaspace("\xE2\x96\x81", PrependScheme::kFirst, true);
  EXPECT_THAT(Pieces(metaspace, "Hey  you"),
              ElementsAre("\xE2\x96\x81Hey", "\xE2\x96\x81", "\xE2\x96\x81you"));
  PreTokenizer byte_level;
  byte_level.AddByteLevel(true, true, *Regex::Compile(kGpt2Pattern));
  EXPECT_THAT(Pieces(byte_level, "Hello world's 42"), ElementsAre(" Hello", " world", "'s", " 42"));
}

TEST(AddedTokenMatcherTest, LeftmostLongestAndSpecialGating) {
  AddedTokenMatcher matcher;
  matcher.Add({7, "<|im", true});
  matcher.Add({8, "<|im_start|>", true});
  matcher.Add({9, "[x]", false, /*lstrip=*/true, /*rstrip=*/true});
  std::vector<AddedTokenMatcher::Fragment> out;
  const std::string text = "a<|im_start|>b  [x]  c";
  matcher.Split(text, true, &out);
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[1].id, 8);
  EXPECT_EQ(out[3].id, 9);
  EXPECT_EQ(text.substr(out[2].begin, out[2].end - out[2].begin), "b");  // spaces went to [x]
  out.clear();
  matcher.Split(text, false, &out);  // special tokens stay text
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[1].id, 9);
}

// The merge engine against a direct implementation of "lowest rank, then leftmost".
TEST(MergeTableTest, MatchesReferenceOnShortAndLongPieces) {
  std::mt19937 rng(5);
  MergeTable table;
  std::vector<std::vector<int32_t>> known;  // known[l][r] = rank or -1
  const int num_ids = 40;
  known.assign(num_ids, std::vector<int32_t>(num_ids, -1));
  std::uniform_int_distribution<int32_t> id(0, num_ids - 1);
  for (int32_t rank = 0; rank < 300; ++rank) {
    const int32_t l = id(rng), r = id(rng);
    if (known[l][r] >= 0) continue;
    known[l][r] = rank;
    table.Add(l, r, rank, (l * 7 + r * 3) % num_ids);
  }
  for (int trial = 0; trial < 200; ++trial) {
    const size_t n = trial < 100 ? 1 + trial % 20 : 60 + trial;
    std::vector<Symbol> symbols;
    std::vector<int32_t> reference;
    for (size_t i = 0; i < n; ++i) {
      const int32_t x = id(rng);
      symbols.push_back({x, static_cast<uint32_t>(i), static_cast<uint32_t>(i + 1)});
      reference.push_back(x);
    }
    while (true) {
      int best = -1;
      for (size_t i = 0; i + 1 < reference.size(); ++i) {
        const int32_t r = known[reference[i]][reference[i + 1]];
        if (r >= 0 && (best < 0 || r < known[reference[best]][reference[best + 1]])) best = i;
      }
      if (best < 0) break;
      reference[best] = (reference[best] * 7 + reference[best + 1] * 3) % num_ids;
      reference.erase(reference.begin() + best + 1);
    }
    table.Apply(&symbols);
    std::vector<int32_t> got;
    for (const Symbol& s : symbols) got.push_back(s.id);
    ASSERT_EQ(got, reference) << "piece of " << n << " symbols";
    EXPECT_EQ(symbols.back().end, n);
  }
}

TEST(StreamDecoderTest, HoldsBackPartialCharacters) {
  auto tok = Tokenizer::Load(herd::testing::TestDataPath("tokenizers/ggml-vocab-llama-spm.gguf"));
  ASSERT_TRUE(tok.ok()) << tok.status();
  // "🦙" is not in the vocabulary: four byte tokens <0xF0><0x9F><0xA6><0x99>.
  auto ids = (*tok)->Encode("a \xF0\x9F\xA6\x99!");
  ASSERT_TRUE(ids.ok());
  StreamDecoder stream(**tok);
  std::vector<std::string> chunks;
  for (int32_t id : *ids) chunks.push_back(*stream.Next(id));
  EXPECT_EQ(stream.Finish(), "");
  std::string joined;
  for (const std::string& c : chunks) {
    EXPECT_TRUE(ValidateUtf8(c).ok());
    joined += c;
  }
  EXPECT_EQ(joined, "a \xF0\x9F\xA6\x99!");
  EXPECT_THAT(chunks, ::testing::Contains("\xF0\x9F\xA6\x99"));
  // A stream cut inside a character ends with U+FFFD.
  StreamDecoder cut(**tok);
  EXPECT_EQ(*cut.Next(*(*tok)->TokenId("<0xF0>")), "");
  EXPECT_EQ(cut.Finish(), "\xEF\xBF\xBD");
}

TEST(TokenizerSpecTest, ValidationNamesTheProblem) {
  TokenizerSpec spec;
  spec.source = "test";
  spec.tokens = {"a", "b"};
  spec.types = {TokenType::kNormal};
  EXPECT_THAT(Tokenizer::Create(spec).status().message(), HasSubstr("1 token types for 2"));
  spec.types.clear();
  spec.bos_id = 5;
  EXPECT_THAT(Tokenizer::Create(spec).status().message(), HasSubstr("BOS token id 5"));
  spec.bos_id = -1;
  spec.add_bos = true;
  EXPECT_THAT(Tokenizer::Create(spec).status().message(), HasSubstr("no BOS token"));
}

}  // namespace
}  // namespace herd::tokenizer
