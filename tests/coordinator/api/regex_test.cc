// Regex against CPython's re module (the verdicts in
// tests/data/regex/cases.json, made by generate.py there): the DFA accepts
// exactly the strings re matches (fullmatch, or search for JSON Schema's
// unanchored patterns), every state it reaches on a match's way can still
// finish, and what it cannot do is refused by name.
#include "coordinator/api/regex.h"

#include <string>
#include <vector>

#include "coordinator/api/regex_prefix.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using ::testing::HasSubstr;

std::vector<uint32_t> CodePoints(const std::string& text) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < text.size();) {
    const auto b = static_cast<uint8_t>(text[i]);
    const int length = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
    uint32_t c = length == 1 ? b : b & (0x7F >> length);
    for (int k = 1; k < length; ++k) c = (c << 6) | (static_cast<uint8_t>(text[i + k]) & 0x3F);
    out.push_back(c);
    i += length;
  }
  return out;
}

// Whether `regex` matches all of `text`; `live` is false if some prefix
// already had no way on.
bool Matches(const Regex& regex, const std::string& text, bool* live = nullptr) {
  int32_t state = regex.start();
  for (const uint32_t c : CodePoints(text)) {
    EXPECT_TRUE(regex.accepting(state) || regex.may_continue(state));
    state = regex.Next(state, c);
    if (state < 0) {
      if (live != nullptr) *live = false;
      return false;
    }
  }
  if (live != nullptr) *live = true;
  return regex.accepting(state);
}

std::shared_ptr<const Regex> MustCompile(const std::string& pattern, Regex::Mode mode) {
  absl::StatusOr<std::shared_ptr<const Regex>> regex = Regex::Compile(pattern, mode);
  EXPECT_TRUE(regex.ok()) << pattern << ": " << regex.status();
  return regex.ok() ? *regex : nullptr;
}

TEST(RegexTest, MatchesWhatPythonsReMatches) {
  const nlohmann::json cases = nlohmann::json::parse(
      herd::testing::ReadFileText(herd::testing::TestDataPath("regex/cases.json")));
  int64_t matched = 0;
  int64_t unmatched = 0;
  for (const nlohmann::json& c : cases["cases"]) {
    const std::string pattern = c["pattern"];
    SCOPED_TRACE(pattern);
    const auto regex =
        MustCompile(pattern, c["mode"] == "full" ? Regex::Mode::kFullMatch : Regex::Mode::kSearch);
    ASSERT_NE(regex, nullptr);
    for (const nlohmann::json& s : c["strings"]) {
      const std::string text = s["text"];
      const bool want = s["match"];
      EXPECT_EQ(Matches(*regex, text), want) << "'" << text << "'";
      (want ? matched : unmatched) += 1;
    }
  }
  EXPECT_GT(matched, 500);
  EXPECT_GT(unmatched, 1000);
}

TEST(RegexTest, StopsAsSoonAsNoTextCanMatch) {
  const auto date = MustCompile(R"(\d{4}-(0[1-9]|1[0-2]))", Regex::Mode::kFullMatch);
  bool live = true;
  EXPECT_FALSE(Matches(*date, "2024-1", &live));
  EXPECT_TRUE(live);  // a prefix of 2024-10
  EXPECT_FALSE(Matches(*date, "2024-13", &live));
  EXPECT_FALSE(live);  // no month starts 13
  int32_t state = date->start();
  for (const uint32_t c : CodePoints("2024-12")) state = date->Next(state, c);
  EXPECT_TRUE(date->accepting(state));
  EXPECT_FALSE(date->may_continue(state));
  EXPECT_EQ(date->min_to_accept(date->start()), 7);
  EXPECT_EQ(date->min_to_accept(state), 0);
  // Surrogates are never matched, even by a class that names them.
  const auto any = MustCompile("[^a]", Regex::Mode::kFullMatch);
  EXPECT_LT(any->Next(any->start(), 0xD800), 0);
  EXPECT_GE(any->Next(any->start(), 0x10FFFF), 0);
  EXPECT_LT(any->Next(any->start(), 0x110000), 0);
  // An unanchored pattern goes on after its match.
  const auto search = MustCompile("ab", Regex::Mode::kSearch);
  EXPECT_TRUE(Matches(*search, "xxabyy"));
}

// RegexPrefix reads UTF-8 a byte at a time: a sequence is taken while some
// code point it may still become can match, and never an overlong, a
// surrogate or a stray continuation byte.
TEST(RegexTest, RegexPrefixTakesUtf8ByteByByte) {
  const auto regex = MustCompile("[a-zé日]+!?", Regex::Mode::kFullMatch);
  const auto verdict = [&](const std::string& bytes) {
    RegexPrefix prefix(regex.get());
    if (!prefix.Push(bytes)) return -1;
    return prefix.complete() ? 2 : prefix.may_end() ? 1 : 0;
  };
  EXPECT_EQ(verdict("ab"), 1);    // matches, and more may follow
  EXPECT_EQ(verdict("ab!"), 2);   // nothing may follow
  EXPECT_EQ(verdict("\xC3"), 0);  // the first byte of é
  EXPECT_EQ(verdict("\xC3\xA9"), 1);
  EXPECT_EQ(verdict("\xC3\xA8"), -1);      // è
  EXPECT_EQ(verdict("\xC4"), -1);          // no code point from C4 matches
  EXPECT_EQ(verdict("\xE6\x97\xA5"), 1);   // 日
  EXPECT_EQ(verdict("\xE0\x80"), -1);      // overlong
  EXPECT_EQ(verdict("\xC1\xA1"), -1);      // overlong a
  EXPECT_EQ(verdict("\xED\xA0\x80"), -1);  // a surrogate
  EXPECT_EQ(verdict("\x80"), -1);
  EXPECT_EQ(verdict(""), 0);
}

TEST(RegexTest, RefusesWhatADfaCannotDoByName) {
  const std::pair<const char*, const char*> refused[] = {
      {R"((a)\1)", "backreference"},
      {R"(a(?=b))", "lookaround"},
      {R"((?<!a)b)", "lookaround"},
      {R"(\bword)", "word boundary"},
      {R"(a^b)", "anchor"},
      {R"(a$b)", "anchor"},
      {R"(*a)", "nothing to repeat"},
      {R"(a{2,1})", "m < n"},
      {R"(a{1001})", "repeat count over"},
      {R"((a)", "without ')'"},
      {R"(a))", "unmatched ')'"},
      {R"([a)", "without ']'"},
      {R"([z-a])", "out of order"},
      {R"(\q)", "unknown escape"},
      {R"(\u12)", "hex digits"},
      {R"([\uD800])", "surrogate"},
      {R"([^\s\S])", "no text matches"},
      {R"(((((a{100}){100}){100})))", "states"},
  };
  for (const auto& [pattern, message] : refused) {
    absl::StatusOr<std::shared_ptr<const Regex>> regex =
        Regex::Compile(pattern, Regex::Mode::kFullMatch);
    ASSERT_FALSE(regex.ok()) << pattern;
    EXPECT_EQ(regex.status().code(), absl::StatusCode::kInvalidArgument) << pattern;
    EXPECT_THAT(std::string(regex.status().message()), HasSubstr(message)) << pattern;
  }
  // A '$' escaped is a literal, and '{' that is not a repeat is itself.
  EXPECT_TRUE(Matches(*MustCompile(R"(a\$)", Regex::Mode::kFullMatch), "a$"));
  EXPECT_TRUE(Matches(*MustCompile(R"(a{b)", Regex::Mode::kFullMatch), "a{b"));
}

}  // namespace
}  // namespace herd
