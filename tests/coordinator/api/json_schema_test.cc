// Guided JSON under schemas: JsonSchema::Compile's subset and errors, and
// JsonPrefix against an independent validator (the jsonschema package's
// verdicts in tests/data/json-schema/cases.json, made by generate.py there):
// it takes exactly the documents jsonschema finds valid, and, on random walks
// over the bytes it allows, never reaches a dead end.
#include "coordinator/api/json_schema.h"

#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/api/json_prefix.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd {
namespace {

using Json = nlohmann::ordered_json;
using ::testing::HasSubstr;

std::shared_ptr<const JsonSchema> MustCompile(const std::string& text) {
  absl::StatusOr<std::shared_ptr<const JsonSchema>> schema = JsonSchema::Compile(Json::parse(text));
  EXPECT_TRUE(schema.ok()) << text << ": " << schema.status();
  return schema.ok() ? *schema : nullptr;
}

// 1: a whole accepted value; 0: a prefix of one; -1: refused.
int Verdict(const JsonSchema& schema, const std::string& text) {
  JsonPrefix prefix(&schema);
  if (!prefix.Push(text)) return -1;
  return prefix.complete() ? 1 : 0;
}

// A random walk under `schema` over the bytes the recognizer takes (closing
// bytes favoured with `close_often`, so that walks end) until the value is
// whole or `max_bytes` are written; a dead end on the way is a failure.
// Sets *whole to whether the value closed.
std::string WalkRandomly(const JsonSchema& schema, std::mt19937& rng, size_t max_bytes,
                         bool close_often, bool* whole) {
  JsonPrefix prefix(&schema);
  std::string text;
  while (!prefix.complete() && text.size() < max_bytes) {
    std::vector<uint8_t> taken;
    for (int b = 0; b < 256; ++b) {
      if (JsonPrefix(prefix).Push(static_cast<uint8_t>(b))) taken.push_back(b);
    }
    if (taken.empty()) {
      ADD_FAILURE() << "dead end after " << text << " under " << schema.text();
      break;
    }
    uint8_t next = taken[rng() % taken.size()];
    for (const uint8_t b : taken) {
      if (close_often && (b == '}' || b == ']' || b == '"') && rng() % 3 == 0) next = b;
    }
    EXPECT_TRUE(prefix.Push(next));
    text += static_cast<char>(next);
  }
  *whole = prefix.complete();
  return text;
}

Json Cases() {
  return Json::parse(
      herd::testing::ReadFileText(herd::testing::TestDataPath("json-schema/cases.json")));
}

TEST(JsonSchemaTest, TakesExactlyWhatJsonschemaFindsValid) {
  const Json cases = Cases();
  ASSERT_THAT(cases["peer"].get<std::string>(), HasSubstr("jsonschema"));
  int64_t valid = 0;
  int64_t invalid = 0;
  for (const Json& c : cases["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::shared_ptr<const JsonSchema> schema = MustCompile(c["schema"].dump());
    ASSERT_NE(schema, nullptr);
    for (const Json& document : c["documents"]) {
      const std::string text = document["text"];
      if (document["valid"].get<bool>()) {
        // Every prefix is taken, and only the whole is complete.
        JsonPrefix prefix(schema.get());
        for (size_t k = 0; k < text.size(); ++k) {
          ASSERT_FALSE(prefix.complete()) << text.substr(0, k);
          ASSERT_TRUE(prefix.Push(static_cast<uint8_t>(text[k])))
              << "refused byte " << k << " ('" << text[k] << "') of a valid " << text;
        }
        EXPECT_TRUE(prefix.complete()) << text;
        ++valid;
      } else {
        EXPECT_NE(Verdict(*schema, text), 1) << "took an invalid " << text;
        ++invalid;
      }
    }
  }
  EXPECT_GT(valid, 400);
  EXPECT_GT(invalid, 200);
}

// From each state, some byte is always taken until the value is whole (no
// dead ends, the recognizer's promise to guided decoding), and what the walk
// writes is JSON (nlohmann parses it).
TEST(JsonSchemaTest, RandomWalksNeverReachADeadEnd) {
  const Json cases = Cases();
  std::mt19937 rng(5);
  int64_t whole = 0;
  for (const Json& c : cases["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::shared_ptr<const JsonSchema> schema = MustCompile(c["schema"].dump());
    ASSERT_NE(schema, nullptr);
    for (int walk = 0; walk < 40; ++walk) {
      bool closed = false;
      const std::string text = WalkRandomly(*schema, rng, 400, /*close_often=*/true, &closed);
      if (!closed) continue;
      ++whole;
      try {
        EXPECT_FALSE(Json::parse(text).is_discarded());
      } catch (const Json::parse_error& e) {
        ADD_FAILURE() << e.what() << ": " << text;
      } catch (const Json::out_of_range&) {
        // A number past a double (1e999): JSON, but not nlohmann's.
      }
    }
  }
  EXPECT_GT(whole, 200);
}

TEST(JsonSchemaTest, KeepsThePropertiesOrderAndSkipsOnlyOptionalOnes) {
  const auto schema = MustCompile(R"({"type": "object", "properties": {
      "b": {"type": "integer"}, "c": {"type": "integer"}, "a": {"type": "integer"}},
      "required": ["a"]})");
  EXPECT_EQ(Verdict(*schema, R"({"b":1,"c":2,"a":3})"), 1);
  EXPECT_EQ(Verdict(*schema, R"({"c":2,"a":3})"), 1);
  EXPECT_EQ(Verdict(*schema, R"({"a":3})"), 1);
  EXPECT_EQ(Verdict(*schema, R"({"a":3,"b":1})"), -1);  // out of order
  EXPECT_EQ(Verdict(*schema, R"({"b":1})"), -1);        // a is required
  EXPECT_EQ(Verdict(*schema, R"({"b":1,"b")"), -1);     // no repeats
  EXPECT_EQ(Verdict(*schema, R"({"b":1.5)"), -1);       // an integer
  EXPECT_EQ(Verdict(*schema, R"({"d")"), -1);           // undeclared
  EXPECT_EQ(Verdict(*schema, R"({)"), 0);
}

// Integer bounds: every digit keeps some integer within them reachable, and
// the number ends only within them.
TEST(JsonSchemaTest, BoundsIntegersDigitByDigit) {
  const auto schema = MustCompile(R"({"type": "array", "items": {"anyOf": [
      {"type": "integer", "minimum": -5, "maximum": 120},
      {"type": "integer", "exclusiveMinimum": 999, "maximum": 1000.5}]}})");
  for (const char* taken : {"[-5]", "[-0]", "[0]", "[120]", "[13]", "[1000]", "[7,-1,1000]"}) {
    EXPECT_EQ(Verdict(*schema, taken), 1) << taken;
  }
  for (const char* refused :
       {"[-6", "[-05", "[130", "[121]", "[999]", "[1001", "[01", "[-]", "[1.0"}) {
    EXPECT_EQ(Verdict(*schema, refused), -1) << refused;
  }
  EXPECT_EQ(Verdict(*schema, "[12"), 0);  // 12, or 100 to 120 to come
  // A prefix of a value within the bounds is taken, but may not end there.
  const auto at_least_7 = MustCompile(R"({"type": "array", "items": {"type": "integer",
      "minimum": 7}})");
  EXPECT_EQ(Verdict(*at_least_7, "[6"), 0);  // 60 and up
  EXPECT_EQ(Verdict(*at_least_7, "[6]"), -1);
  EXPECT_EQ(Verdict(*at_least_7, "[6,"), -1);
  EXPECT_EQ(Verdict(*at_least_7, "[7]"), 1);
  const auto positive = MustCompile(R"({"type": "array", "items": {"type": "integer",
      "exclusiveMinimum": 0}})");
  EXPECT_EQ(Verdict(*positive, "[0"), -1);
  EXPECT_EQ(Verdict(*positive, "[-"), -1);
  EXPECT_EQ(Verdict(*positive, "[9223372036854775"), 0);
}

TEST(JsonSchemaTest, CountsStringLengthsInCodePoints) {
  const auto schema = MustCompile(
      R"({"type": "object", "properties": {"s": {"type": "string", "minLength": 2,
          "maxLength": 2}}, "required": ["s"], "additionalProperties": false})");
  EXPECT_EQ(Verdict(*schema, R"({"s":"éü"})"), 1);
  EXPECT_EQ(Verdict(*schema, R"({"s":"\n\u00e9"})"), 1);
  EXPECT_EQ(Verdict(*schema, R"({"s":"😀x"})"), 1);
  EXPECT_EQ(Verdict(*schema, R"({"s":"a"})"), -1);
  EXPECT_EQ(Verdict(*schema, R"({"s":"abc)"), -1);
}

TEST(JsonSchemaTest, FollowsChoicesAsThreads) {
  // Two object choices that only their second key tells apart.
  const auto schema = MustCompile(R"({"anyOf": [
      {"type": "object", "properties": {"k": {"const": 1}, "x": {"type": "string"}},
       "required": ["k", "x"], "additionalProperties": false},
      {"type": "object", "properties": {"k": {"const": 1}, "y": {"type": "boolean"}},
       "required": ["k", "y"], "additionalProperties": false}]})");
  EXPECT_EQ(Verdict(*schema, R"({"k":1,"x":"s"})"), 1);
  EXPECT_EQ(Verdict(*schema, R"({"k":1,"y":true})"), 1);
  EXPECT_EQ(Verdict(*schema, R"({"k":1,"y":"s")"), -1);
  EXPECT_EQ(Verdict(*schema, R"({"k":1,"z")"), -1);
  // A recursive list through $ref and null.
  const auto list = MustCompile(R"({"$defs": {"node": {"type": "object", "properties": {
      "v": {"type": "boolean"}, "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
      "required": ["v", "next"], "additionalProperties": false}}, "$ref": "#/$defs/node"})");
  EXPECT_EQ(Verdict(*list, R"({"v":true,"next":{"v":false,"next":null}})"), 1);
  EXPECT_EQ(Verdict(*list, R"({"v":true,"next":{"v":false}})"), -1);
}

// vLLM's guided_whitespace_pattern: between tokens only what the pattern
// matches; a pattern that asks for whitespace gets it everywhere; one that
// could write anything but JSON whitespace is refused.
TEST(JsonSchemaTest, AWhitespacePatternDecidesTheGaps) {
  const Json schema = Json::parse(R"({"type": "object", "properties": {"a": {"type": "array"}},
                                      "required": ["a"], "additionalProperties": false})");
  const auto compact = *JsonSchema::Compile(schema, "");
  EXPECT_EQ(Verdict(*compact, R"({"a":[1,2]})"), 1);
  EXPECT_EQ(Verdict(*compact, R"({ "a")"), -1);
  EXPECT_EQ(Verdict(*compact, R"({"a":[1, )"), -1);
  const auto one_space = *JsonSchema::Compile(schema, " ");
  EXPECT_EQ(Verdict(*one_space, R"({ "a" : [ 1 , 2 ] })"), 1);
  EXPECT_EQ(Verdict(*one_space, R"({"a")"), -1);
  EXPECT_EQ(Verdict(*one_space, R"({  )"), -1);
  const auto newlines = *JsonSchema::Compile(schema, "\n? *");
  EXPECT_EQ(Verdict(*newlines, "{\n  \"a\": [1,\n    2]}"), 1);
  EXPECT_EQ(Verdict(*newlines, "{\n\n"), -1);
  EXPECT_NE(compact->text(), JsonSchema::Compile(schema).value()->text());  // cached apart
  // No dead end with a pattern that wants whitespace.
  std::mt19937 rng(9);
  for (int walk = 0; walk < 20; ++walk) {
    bool closed = false;
    WalkRandomly(*one_space, rng, 200, /*close_often=*/false, &closed);
  }
  for (const char* pattern : {"[ \\n]*x", ".*", "\\s*"}) {
    EXPECT_THAT(std::string(JsonSchema::Compile(schema, pattern).status().message()),
                HasSubstr("matches more than JSON whitespace"))
        << pattern;
  }
  EXPECT_THAT(std::string(JsonSchema::Compile(schema, "(").status().message()),
              HasSubstr("whitespace pattern: pattern:"));
}

TEST(JsonSchemaTest, NeverStartsWhatCannotBeFinished) {
  // The array's items cannot be satisfied: only [] may come; the optional
  // property whose schema is false is never offered.
  const auto schema = MustCompile(R"({"type": "object", "properties": {
      "never": false, "list": {"type": "array", "items": {"type": "string", "minLength": 3,
      "maxLength": 2}}}, "required": ["list"], "additionalProperties": false})");
  EXPECT_EQ(Verdict(*schema, R"({"list":[]})"), 1);
  EXPECT_EQ(Verdict(*schema, R"({"list":[")"), -1);
  EXPECT_EQ(Verdict(*schema, R"({"n)"), -1);
  // {"type": "object"} is any object; with properties declared, only them.
  EXPECT_EQ(Verdict(*MustCompile(R"({"type": "object"})"), R"({"q":[1,{}]})"), 1);
  EXPECT_EQ(Verdict(*MustCompile(R"({"properties": {"a": {}}})"), R"({"q")"), -1);
}

// A random subschema: keywords of the subset (and some outside it) with
// values of the right type or not.
Json RandomSchema(std::mt19937& rng, int depth) {
  const auto pick = [&](int n) { return static_cast<int>(rng() % n); };
  if (depth > 3 || pick(6) == 0) {
    const Json leaves[] = {true,
                           false,
                           Json::object(),
                           Json{{"type", "string"}},
                           Json{{"type", "integer"}},
                           Json{{"enum", {1, "a", nullptr}}},
                           Json{{"$ref", "#"}},
                           Json{{"$ref", "#/$defs/d"}},
                           7,
                           "x"};
    return leaves[pick(std::size(leaves))];
  }
  Json schema = Json::object();
  const char* const types[] = {"object", "array",   "string", "integer",
                               "number", "boolean", "null",   "bogus"};
  for (int k = pick(4); k >= 0; --k) {
    switch (pick(13)) {
      case 0:
        schema["type"] = pick(3) == 0 ? Json{types[pick(8)], types[pick(8)]} : Json(types[pick(8)]);
        break;
      case 1:
      case 2: {
        Json properties = Json::object();
        for (int i = pick(4); i > 0; --i) {
          properties[std::string(1, static_cast<char>('a' + pick(4)))] =
              RandomSchema(rng, depth + 1);
        }
        schema["properties"] = properties;
        if (pick(2) == 0) schema["required"] = {std::string(1, static_cast<char>('a' + pick(4)))};
        break;
      }
      case 3:
        schema["additionalProperties"] =
            pick(2) == 0 ? Json(pick(2) == 0) : RandomSchema(rng, depth + 1);
        break;
      case 4:
        schema["items"] = RandomSchema(rng, depth + 1);
        break;
      case 5:
        schema[pick(2) == 0 ? "minItems" : "maxItems"] = pick(4) - 1;
        break;
      case 6:
        schema[pick(2) == 0 ? "minLength" : "maxLength"] = pick(2) == 0 ? Json(pick(5)) : Json("3");
        break;
      case 7:
      case 8: {
        Json choices = Json::array();
        for (int i = pick(4); i > 0; --i) choices.push_back(RandomSchema(rng, depth + 1));
        schema[pick(3) == 0 ? "oneOf" : "anyOf"] = choices;
        break;
      }
      case 9:
        schema["enum"] = pick(4) == 0 ? Json(3) : Json{pick(3), "v", Json{{"k", {1, 2}}}, false};
        break;
      case 10:
        schema["$defs"] = {{"d", RandomSchema(rng, depth + 1)}};
        break;
      case 11: {
        const char* const patterns[] = {"^[é-ü]{2}$", "\\d+",  "^(a|bc)*$", "[^x]",
                                        "^$",         "(?=a)", "^.{3}$"};
        const char* const formats[] = {"date", "uuid", "email", "ipv4", "time", "uri"};
        if (pick(2) == 0) {
          schema["pattern"] = patterns[pick(std::size(patterns))];
        } else {
          schema["format"] = formats[pick(std::size(formats))];
        }
        break;
      }
      default:
        schema["$ref"] = pick(2) == 0 ? "#/$defs/d" : "#/properties/a";
    }
  }
  return schema;
}

// Random schemas either compile or are refused with InvalidArgument (never
// anything worse); those that compile lead random walks that never reach a
// dead end.
TEST(JsonSchemaTest, RandomSchemasCompileOrAreRefusedAndNeverDeadEnd) {
  std::mt19937 rng(17);
  int compiled = 0;
  int refused = 0;
  int64_t walked_bytes = 0;
  for (int i = 0; i < 3000; ++i) {
    const Json text = RandomSchema(rng, 0);
    absl::StatusOr<std::shared_ptr<const JsonSchema>> schema = JsonSchema::Compile(text);
    if (!schema.ok()) {
      ASSERT_EQ(schema.status().code(), absl::StatusCode::kInvalidArgument) << text.dump();
      ++refused;
      continue;
    }
    ++compiled;
    for (int walk = 0; walk < 3; ++walk) {
      bool closed = false;
      walked_bytes += static_cast<int64_t>(
          WalkRandomly(**schema, rng, 200, /*close_often=*/false, &closed).size());
    }
  }
  std::cout << compiled << " compiled, " << refused << " refused, " << walked_bytes
            << " bytes walked\n";
  EXPECT_GT(compiled, 300);
  EXPECT_GT(refused, 300);
  // Nested past kMaxNesting: refused, not a stack overflow.
  Json deep = Json::object();
  for (int d = 0; d < 100; ++d) deep = Json{{"type", "array"}, {"items", std::move(deep)}};
  EXPECT_THAT(std::string(JsonSchema::Compile(deep).status().message()),
              HasSubstr("subschemas nest deeper than 64"));
  for (int d = 0; d < 20000; ++d) deep = Json{{"type", "array"}, {"items", std::move(deep)}};
  EXPECT_THAT(std::string(JsonSchema::Compile(deep).status().message()),
              HasSubstr("JSON nests deeper than 256"));
  Json deep_value = 1;
  for (int d = 0; d < 20000; ++d) deep_value = Json::array({std::move(deep_value)});
  EXPECT_THAT(std::string(JsonSchema::Compile(Json{{"const", deep_value}}).status().message()),
              HasSubstr("nests deeper"));
  EXPECT_THAT(std::string(JsonSchema::Compile(Json{{"type", "object"}, {"x-vendor", deep_value}})
                              .status()
                              .message()),
              HasSubstr("nests deeper"));
}

TEST(JsonSchemaTest, RefusesWhatItCannotHonourByName) {
  const std::pair<std::string, std::string> refused[] = {
      {R"({"type": "string", "pattern": "(a)\\1"})", "backreference"},
      {R"({"type": "object", "properties": {"d": {"type": "string", "format": "uri"}}})",
       "at '#/properties/d': 'format' \"uri\" is not supported"},
      {R"({"type": "string", "pattern": "a", "format": "date"})", "'pattern' beside 'format'"},
      {R"({"type": "string", "pattern": "a", "minLength": 1})", "'minLength' beside"},
      {R"({"type": "string", "pattern": "^a{5}$", "maxLength": 4})", "no value satisfies"},
      {R"({"type": "array", "items": {"type": "number", "minimum": 0}})",
       "at '#/items': 'minimum' is supported on integers only"},
      {R"({"type": "array", "items": {"type": "integer", "multipleOf": 2}})",
       "'multipleOf' is not supported"},
      {R"({"type": "object", "properties": {"a": {"type": "integer", "minimum": 3,
           "exclusiveMaximum": 3}}, "required": ["a"]})",
       "no value satisfies"},
      {R"({"type": "array", "uniqueItems": true})", "'uniqueItems' true"},
      {R"({"allOf": [{"type": "object"}, {"required": []}]})", "'allOf' of more than one"},
      {R"({"anyOf": [{"type": "object"}], "properties": {}})", "'anyOf' beside 'properties'"},
      {R"({"$ref": "#/$defs/missing"})", "names nothing"},
      {R"({"$ref": "http://example.com/s.json"})", "pointer into this schema"},
      {R"({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}},
           "$ref": "#/$defs/a"})",
       "refers back to itself"},
      {R"({"type": "object", "properties": {"a": false}, "required": ["a"]})",
       "no value satisfies"},
      {R"({"type": "object", "properties": {"self": {"$ref": "#"}}, "required": ["self"]})",
       "no value satisfies"},
      {R"({"type": "object", "required": ["a"]})", "required \"a\" is not in 'properties'"},
      {R"({"type": ["integer", "string"]})", "may not be a number"},
      {R"({"enum": ["a", 3]})", "may not be a number"},
      {R"({"type": "string", "enum": [1, 2]})", "no value of 'enum'"},
      {R"({"type": "text"})", "'type' must be null, boolean"},
      {R"({"type": "array", "items": [{}]})", "a list of schemas is not supported"},
      {R"({"type": "string", "maxLength": -1})", "'maxLength' must be a non-negative integer"},
      {R"([1])", "must be an object or a boolean"},
  };
  for (const auto& [text, message] : refused) {
    absl::StatusOr<std::shared_ptr<const JsonSchema>> schema =
        JsonSchema::Compile(Json::parse(text));
    ASSERT_FALSE(schema.ok()) << text;
    EXPECT_EQ(schema.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(std::string(schema.status().message()), HasSubstr(message)) << text;
  }
  Json many = {{"type", "object"}, {"properties", Json::object()}};
  for (int i = 0; i <= JsonSchema::kMaxCandidates; ++i) {
    many["properties"][absl::StrCat("p", i)] = Json::object();
  }
  EXPECT_THAT(std::string(JsonSchema::Compile(many).status().message()),
              HasSubstr("more than 64 properties"));
  // Annotations and unknown keywords change nothing.
  const auto annotated = MustCompile(R"({"title": "T", "description": "d", "$schema": "x",
      "examples": [{}], "x-vendor": 1, "type": "object", "properties": {"a": {"type": "null",
      "default": null}}, "required": ["a"]})");
  EXPECT_EQ(Verdict(*annotated, R"({"a":null})"), 1);
}

}  // namespace
}  // namespace herd
