// A JSON Schema compiled for guided decoding (response_format json_schema,
// and JSON mode as "any object"): a graph of nodes that JsonPrefix walks byte
// by byte. Compile takes the subset structured-output engines (OpenAI's
// strict mode, xgrammar) take and refuses the rest by name, so that a schema
// is never silently loosened.
//
// Taken: type (one or a list), enum, const, properties, required,
// additionalProperties (absent means none where properties are declared, as
// in OpenAI's strict mode, and any where none are; true, {} or a schema allow
// others), items, minItems, maxItems,
// minLength, maxLength (in code points), minimum, maximum,
// exclusiveMinimum, exclusiveMaximum (on integers), pattern (ECMAScript, see
// regex.h;
// a match anywhere unless anchored, as JSON Schema says), format (date,
// time, date-time, uuid, ipv4, email: each as a regular expression of its
// shape), anyOf, oneOf (read as anyOf),
// allOf of one schema, $ref to "#" or a JSON pointer into the document
// ($defs, definitions; recursion allowed), nullable (OpenAPI), and the
// annotations (title, description, default, examples, ...), which change
// nothing. Without a type, a node's type-specific keywords say its type
// (properties: an object); with none, any value.
//
// A string's pattern or format and its maxLength hold together (a match
// that fits); minLength beside them is refused.
//
// Generated objects write their declared properties in the schema's order
// (OpenAI's outputs do too): optional ones may be left out, others come
// after all required ones. The top level must end by itself: not a number.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/api/regex.h"
#include "nlohmann/json_fwd.hpp"

namespace herd {

class JsonSchema {
 public:
  // The most declared properties one object, and the most values one enum,
  // may have (the recognizer tracks candidates in a 64-bit set).
  static constexpr int kMaxCandidates = 64;
  static constexpr int kMaxNodes = 4096;
  // How deep subschemas, and enum values, may nest.
  static constexpr int kMaxNesting = 64;
  static constexpr int64_t kUnbounded = std::numeric_limits<int64_t>::max();

  // Type bits.
  enum Type : uint8_t {
    kNull = 1,
    kBoolean = 2,
    kInteger = 4,
    kNumber = 8,  // any number, integers included
    kString = 16,
    kArray = 32,
    kObject = 64,
    kAnyType = 127,
  };

  struct Property {
    std::string escaped_name;  // the key as JSON writes it, without quotes
    int32_t node = 0;
    bool required = false;
  };

  struct Node {
    // Non-empty: the value is one of these nodes' (none of them a choice
    // itself); the fields below are unused.
    std::vector<int32_t> choices;
    uint8_t types = kAnyType;
    // enum / const: the value is one of these compact JSON texts.
    bool enumerated = false;
    std::vector<std::string> literals;
    // Objects.
    std::vector<Property> properties;
    // first_required[i]: the first required property at index >= i
    // (properties.size() if none), for i in [0, properties.size()].
    std::vector<uint16_t> first_required;
    int32_t additional = -1;  // the node of undeclared keys' values; -1: none
    // Arrays.
    int32_t items = 0;
    int64_t min_items = 0;
    int64_t max_items = kUnbounded;
    // Integers: the bounds (inclusive).
    int64_t minimum = std::numeric_limits<int64_t>::min();
    int64_t maximum = std::numeric_limits<int64_t>::max();
    // Strings.
    int64_t min_length = 0;
    int64_t max_length = kUnbounded;
    // pattern or format: the string's code points match it; null: any.
    std::shared_ptr<const Regex> pattern;
    // The types some finite value of satisfies the node in (a choice node:
    // nonzero if some choice is satisfiable). What is not satisfiable is
    // never started: the recognizer takes no prefix it cannot complete.
    uint8_t satisfiable_types = kAnyType;

    bool satisfiable() const { return satisfiable_types != 0; }
  };

  // Compiles `schema`. InvalidArgument naming the keyword and where (a JSON
  // pointer) for a malformed schema, a keyword outside the subset above, a
  // $ref that leads nowhere, a schema no value satisfies, a number at the top
  // level, or more than kMaxCandidates properties or enum values.
  // `schema` is ordered: its properties' order is the generated one.
  //
  // `whitespace_pattern` (vLLM's guided_whitespace_pattern): what may come
  // between tokens, a regular expression over JSON whitespace (" ?", "" for
  // none); without one, runs of at most JsonPrefix::kMaxWhitespaceRun.
  static absl::StatusOr<std::shared_ptr<const JsonSchema>> Compile(
      const nlohmann::ordered_json& schema,
      const std::optional<std::string>& whitespace_pattern = std::nullopt);

  // JSON mode's schema: an object with any properties.
  static std::shared_ptr<const JsonSchema> AnyObject();

  // Node 0 is "any value".
  const Node& node(int32_t id) const { return nodes_[id]; }
  int32_t root() const { return root_; }
  // The compact text of the schema compiled, and the whitespace pattern if
  // any (equal texts compile alike).
  const std::string& text() const { return text_; }
  // The whitespace pattern; null: runs of at most kMaxWhitespaceRun.
  const Regex* whitespace() const { return whitespace_.get(); }

 private:
  friend class JsonSchemaCompiler;

  std::vector<Node> nodes_;
  int32_t root_ = 0;
  std::string text_;
  std::shared_ptr<const Regex> whitespace_;
};

}  // namespace herd
