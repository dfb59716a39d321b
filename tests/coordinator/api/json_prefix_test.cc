// JsonPrefix under JSON mode's schema (any object) against an independent JSON parser
// (nlohmann::json), over random objects dumped compact and indented and over their one-byte
// mutations: every prefix of an object is taken and only the whole object is
// complete; a text nlohmann finds an error in before its end is refused; a
// text nlohmann parses is complete; a text JsonPrefix takes is one nlohmann
// finds no error in before its end (nlohmann reads whole tokens before it
// judges them, so a bad byte inside a token may only show at the end).
#include "coordinator/api/json_prefix.h"

#include <cctype>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace herd {
namespace {

using Json = nlohmann::json;

// How nlohmann sees `text`: a whole object (1), no error before the end of
// the input (0), or an error before it (-1).
int NlohmannVerdict(const std::string& text) {
  try {
    const Json parsed = Json::parse(text);
    return parsed.is_object() ? 1 : -1;
  } catch (const Json::parse_error& e) {
    return e.byte == text.size() + 1 ? 0 : -1;
  } catch (const Json::out_of_range&) {
    return 2;  // well formed, but a number past a double: no verdict
  }
}

// JsonPrefix's verdict in the same terms.
int PrefixVerdict(const std::string& text) {
  JsonPrefix prefix(JsonSchema::AnyObject().get());
  if (!prefix.Push(text)) return -1;
  return prefix.complete() ? 1 : 0;
}

Json RandomValue(std::mt19937& rng, int depth) {
  std::uniform_int_distribution<int> kind(0, depth < 4 ? 7 : 5);
  switch (kind(rng)) {
    case 0:
      return nullptr;
    case 1:
      return rng() % 2 == 0;
    case 2:
      return static_cast<int64_t>(rng() % 2000) - 1000;
    case 3:
      return std::uniform_real_distribution<double>(-1e6, 1e6)(rng) * (rng() % 2 ? 1e-9 : 1);
    case 4:
    case 5: {
      static const char* const kPieces[] = {"a", "key",  " ", "\"",   "\\", "/", "\n", "\t",
                                            "é", "日本", "😀", "\x01", "}",  "[", ","};
      std::string s;
      for (int i = rng() % 6; i > 0; --i) s += kPieces[rng() % std::size(kPieces)];
      return s;
    }
    case 6: {
      Json array = Json::array();
      for (int i = rng() % 4; i > 0; --i) array.push_back(RandomValue(rng, depth + 1));
      return array;
    }
    default: {
      Json object = Json::object();
      for (int i = rng() % 4; i > 0; --i) {
        object[std::string(1, static_cast<char>('a' + rng() % 26))] = RandomValue(rng, depth + 1);
      }
      return object;
    }
  }
}

Json RandomObject(std::mt19937& rng) {
  Json object = Json::object();
  for (int i = 1 + rng() % 4; i > 0; --i) {
    object[std::string(1 + rng() % 3, static_cast<char>('a' + rng() % 26))] = RandomValue(rng, 1);
  }
  return object;
}

TEST(JsonPrefixTest, EveryPrefixOfAnObjectIsTakenAndOnlyTheWholeIsComplete) {
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    const Json object = RandomObject(rng);
    for (const std::string& text : {object.dump(), object.dump(2), object.dump(1, '\t')}) {
      JsonPrefix prefix(JsonSchema::AnyObject().get());
      for (size_t k = 0; k < text.size(); ++k) {
        ASSERT_FALSE(prefix.complete()) << text.substr(0, k);
        ASSERT_TRUE(prefix.Push(static_cast<uint8_t>(text[k])))
            << "refused byte " << k << " of " << text;
      }
      EXPECT_TRUE(prefix.complete()) << text;
      EXPECT_FALSE(JsonPrefix(prefix).Push(' ')) << "whitespace after the object";
    }
  }
}

// Every prefix of one-byte mutations of random objects.
TEST(JsonPrefixTest, AgreesWithNlohmannOnMutatedObjects) {
  std::mt19937 rng(11);
  const std::string alphabet = "{}[]:,\"\\ \n-+.0123456789eEtrufalsnbx\x01\xC3\xA9\xE2\x82\xFF";
  int64_t compared = 0;
  for (int i = 0; i < 400; ++i) {
    std::string text = RandomObject(rng).dump(rng() % 2 == 0 ? -1 : 2);
    const size_t at = rng() % (text.size() + 1);
    switch (rng() % 3) {
      case 0:
        text.insert(at, 1, alphabet[rng() % alphabet.size()]);
        break;
      case 1:
        if (at < text.size()) text.erase(at, 1);
        break;
      default:
        if (at < text.size()) text[at] = alphabet[rng() % alphabet.size()];
    }
    for (size_t k = 0; k <= text.size(); ++k) {
      const std::string piece = text.substr(0, k);
      // Outside the subset JsonPrefix takes on purpose: an empty or
      // non-object start, whitespace after the object.
      if (piece.empty() || piece[0] != '{') continue;
      const int ours = PrefixVerdict(piece);
      const int theirs = NlohmannVerdict(piece);
      if (theirs == 2) continue;
      if (theirs == 1 && std::isspace(static_cast<unsigned char>(piece.back()))) continue;
      if (theirs != 0 || ours != -1) {
        ASSERT_EQ(ours, theirs) << "text: " << piece;
      }
      ++compared;
    }
  }
  EXPECT_GT(compared, 10000);
}

TEST(JsonPrefixTest, RefusesWhatJsonModeExcludes) {
  // Not an object at the top, whitespace around it, long whitespace runs,
  // lone surrogates, nesting past kMaxDepth.
  for (const std::string& text : std::vector<std::string>{
           "[", "\"a\"", "1", " {", "{} ", "{\"a\":1}\n", "{\"a\":\"\\ud800\"}",
           "{\"a\":\"\\uDFFF\"}", "{" + std::string(JsonPrefix::kMaxWhitespaceRun + 1, ' ')}) {
    EXPECT_EQ(PrefixVerdict(text), -1) << text;
  }
  EXPECT_EQ(PrefixVerdict("{" + std::string(JsonPrefix::kMaxWhitespaceRun, ' ')), 0);
  EXPECT_EQ(PrefixVerdict("{\"a\":\"\\ud7ff\\u00e9\"}"), 1);
  std::string deep = "{\"a\":";
  for (int d = 1; d < JsonPrefix::kMaxDepth; ++d) deep += "[";
  EXPECT_EQ(PrefixVerdict(deep), 0);
  EXPECT_EQ(PrefixVerdict(deep + "["), -1);
}

}  // namespace
}  // namespace herd
