#include "coordinator/api/json_schema.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace herd {

using Json = nlohmann::ordered_json;

namespace {

// Constraint keywords outside the subset: a schema with one is refused, not
// loosened.
constexpr const char* kUnsupportedKeywords[] = {
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "contains",
    "minContains",
    "maxContains",
    "prefixItems",
    "additionalItems",
    "unevaluatedItems",
    "unevaluatedProperties",
    "if",
    "then",
    "else",
    "not",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "$dynamicRef",
    "$recursiveRef",
};

// Keywords that only apply with the type they name: without "type", they say
// the node's type.
constexpr std::pair<const char*, uint8_t> kTypedKeywords[] = {
    {"properties", JsonSchema::kObject},
    {"required", JsonSchema::kObject},
    {"additionalProperties", JsonSchema::kObject},
    {"items", JsonSchema::kArray},
    {"minItems", JsonSchema::kArray},
    {"maxItems", JsonSchema::kArray},
    {"minLength", JsonSchema::kString},
    {"maxLength", JsonSchema::kString},
};

absl::Status Invalid(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat("schema at '", where.empty() ? "#" : "#" + where, "': ", what));
}

// `where` (a JSON pointer) extended by `key`, escaped as RFC 6901 says.
std::string Child(const std::string& where, const std::string& key) {
  std::string child = where + "/";
  for (const char c : key) {
    if (c == '~') {
      child += "~0";
    } else if (c == '/') {
      child += "~1";
    } else {
      child += c;
    }
  }
  return child;
}

uint8_t TypeBit(const std::string& name) {
  if (name == "null") return JsonSchema::kNull;
  if (name == "boolean") return JsonSchema::kBoolean;
  if (name == "integer") return JsonSchema::kInteger;
  if (name == "number") return JsonSchema::kNumber;
  if (name == "string") return JsonSchema::kString;
  if (name == "array") return JsonSchema::kArray;
  if (name == "object") return JsonSchema::kObject;
  return 0;
}

// Whether `value` is of a type in `types`.
bool HasType(const Json& value, uint8_t types) {
  switch (value.type()) {
    case Json::value_t::null:
      return types & JsonSchema::kNull;
    case Json::value_t::boolean:
      return types & JsonSchema::kBoolean;
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return types & (JsonSchema::kInteger | JsonSchema::kNumber);
    case Json::value_t::number_float:
      return types & JsonSchema::kNumber;
    case Json::value_t::string:
      return types & JsonSchema::kString;
    case Json::value_t::array:
      return types & JsonSchema::kArray;
    case Json::value_t::object:
      return types & JsonSchema::kObject;
    default:
      return false;
  }
}

// Whether `value` nests at most `depth` containers deep (the recursion stops
// there, however deep the value).
bool NestsAtMost(const Json& value, int depth) {
  if (!value.is_structured()) return true;
  if (depth == 0) return false;
  for (const Json& item : value) {
    if (!NestsAtMost(item, depth - 1)) return false;
  }
  return true;
}

}  // namespace

class JsonSchemaCompiler {
 public:
  explicit JsonSchemaCompiler(const Json& document) : document_(document) {
    schema_ = std::make_shared<JsonSchema>();
    schema_->text_ = document.dump();
    JsonSchema::Node any;
    any.additional = 0;
    any.first_required = {0};
    schema_->nodes_.push_back(std::move(any));
  }

  absl::StatusOr<std::shared_ptr<const JsonSchema>> Run() {
    HERD_ASSIGN_OR_RETURN(schema_->root_, NewNode(""));
    by_pointer_[""] = schema_->root_;
    HERD_RETURN_IF_ERROR(CompileInto(document_, "", schema_->root_));
    HERD_RETURN_IF_ERROR(FlattenChoices());
    MarkSatisfiable();
    return CheckRoot();
  }

 private:
  using Node = JsonSchema::Node;

  absl::StatusOr<int32_t> NewNode(const std::string& where) {
    if (schema_->nodes_.size() >= JsonSchema::kMaxNodes) {
      return Invalid(where, absl::StrCat("more than ", JsonSchema::kMaxNodes, " subschemas"));
    }
    schema_->nodes_.emplace_back();
    return static_cast<int32_t>(schema_->nodes_.size() - 1);
  }

  absl::StatusOr<int32_t> Compile(const Json& schema, const std::string& where) {
    if (schema.is_boolean() && schema.get<bool>()) return 0;
    HERD_ASSIGN_OR_RETURN(const int32_t id, NewNode(where));
    HERD_RETURN_IF_ERROR(CompileInto(schema, where, id));
    return id;
  }

  // The node a "$ref" names, compiled once (a recursive schema refers back
  // to a node still being compiled).
  absl::StatusOr<int32_t> Resolve(const Json& ref, const std::string& where) {
    if (!ref.is_string() || ref.get<std::string>().empty() || ref.get<std::string>()[0] != '#') {
      return Invalid(where, absl::StrCat("'$ref' must be \"#\" or \"#/...\" (a pointer into this "
                                         "schema), got ",
                                         ref.dump()));
    }
    const std::string pointer = ref.get<std::string>().substr(1);
    if (auto it = by_pointer_.find(pointer); it != by_pointer_.end()) return it->second;
    const Json* target = nullptr;
    try {
      target = &document_.at(Json::json_pointer(pointer));
    } catch (const Json::exception&) {
    }
    if (target == nullptr) {
      return Invalid(where, absl::StrCat("'$ref' ", ref.dump(), " names nothing in the schema"));
    }
    HERD_ASSIGN_OR_RETURN(const int32_t id, NewNode(where));
    by_pointer_[pointer] = id;
    HERD_RETURN_IF_ERROR(CompileInto(*target, pointer, id));
    return id;
  }

  absl::Status CompileInto(const Json& schema, const std::string& where, int32_t id) {
    if (depth_ >= JsonSchema::kMaxNesting) {
      return Invalid(where, absl::StrCat("subschemas nest deeper than ", JsonSchema::kMaxNesting));
    }
    ++depth_;
    absl::Status status = CompileNode(schema, where, id);
    --depth_;
    return status;
  }

  absl::Status CompileNode(const Json& schema, const std::string& where, int32_t id) {
    if (schema.is_boolean()) {
      // true: a choice of "any value"; false: nothing satisfies it.
      Node& node = schema_->nodes_[id];
      if (schema.get<bool>()) {
        node.choices = {0};
      } else {
        node.types = 0;
      }
      return absl::OkStatus();
    }
    if (!schema.is_object()) {
      return Invalid(where,
                     absl::StrCat("a schema must be an object or a boolean, got ", schema.dump()));
    }
    for (const char* keyword : kUnsupportedKeywords) {
      if (schema.contains(keyword)) {
        return Invalid(where, absl::StrCat("'", keyword,
                                           "' is not supported in guided decoding (supported: "
                                           "type, enum, const, properties, required, "
                                           "additionalProperties, items, minItems, maxItems, "
                                           "minLength, maxLength, anyOf, oneOf, allOf of one, "
                                           "$ref)"));
      }
    }
    if (const auto it = schema.find("uniqueItems"); it != schema.end() && *it != false) {
      return Invalid(where, "'uniqueItems' true is not supported in guided decoding");
    }
    const bool has_type = schema.contains("type");
    const char* combinator = schema.contains("$ref")    ? "$ref"
                             : schema.contains("anyOf") ? "anyOf"
                             : schema.contains("oneOf") ? "oneOf"
                             : schema.contains("allOf") ? "allOf"
                                                        : nullptr;
    if (combinator != nullptr) {
      for (const char* other : {"$ref", "anyOf", "oneOf", "allOf", "type", "enum", "const"}) {
        if (other != combinator && schema.contains(other)) {
          return Invalid(where, absl::StrCat("'", combinator, "' beside '", other,
                                             "' is not supported: move it into each choice"));
        }
      }
      for (const auto& [keyword, type] : kTypedKeywords) {
        if (schema.contains(keyword)) {
          return Invalid(where, absl::StrCat("'", combinator, "' beside '", keyword,
                                             "' is not supported: move it into each choice"));
        }
      }
      return CompileCombinator(schema, combinator, where, id);
    }

    Node node;
    if (has_type) {
      HERD_ASSIGN_OR_RETURN(node.types, ParseType(schema["type"], Child(where, "type")));
      if (const auto it = schema.find("nullable"); it != schema.end() && *it == true) {
        node.types |= JsonSchema::kNull;
      }
    } else {
      uint8_t implied = 0;
      for (const auto& [keyword, type] : kTypedKeywords) {
        if (schema.contains(keyword)) implied |= type;
      }
      if (implied != 0) node.types = implied;
    }
    HERD_RETURN_IF_ERROR(ParseEnum(schema, where, &node));
    HERD_RETURN_IF_ERROR(ParseObject(schema, where, &node));
    if (const auto it = schema.find("items"); it != schema.end()) {
      if (!it->is_object() && !it->is_boolean()) {
        return Invalid(where, "'items' must be a schema (a list of schemas is not supported)");
      }
      HERD_ASSIGN_OR_RETURN(node.items, Compile(*it, Child(where, "items")));
    }
    HERD_ASSIGN_OR_RETURN(node.min_items, Count(schema, "minItems", where, 0));
    HERD_ASSIGN_OR_RETURN(node.max_items, Count(schema, "maxItems", where, JsonSchema::kUnbounded));
    HERD_ASSIGN_OR_RETURN(node.min_length, Count(schema, "minLength", where, 0));
    HERD_ASSIGN_OR_RETURN(node.max_length,
                          Count(schema, "maxLength", where, JsonSchema::kUnbounded));
    schema_->nodes_[id] = std::move(node);
    return absl::OkStatus();
  }

  absl::Status CompileCombinator(const Json& schema, const std::string& combinator,
                                 const std::string& where, int32_t id) {
    std::vector<int32_t> choices;
    if (combinator == "$ref") {
      HERD_ASSIGN_OR_RETURN(const int32_t target, Resolve(schema["$ref"], Child(where, "$ref")));
      choices.push_back(target);
    } else {
      const Json& list = schema[combinator];
      const std::string at = Child(where, combinator);
      if (!list.is_array() || list.empty()) {
        return Invalid(at, absl::StrCat("'", combinator, "' must be a non-empty list of schemas"));
      }
      if (combinator == "allOf" && list.size() != 1) {
        return Invalid(at, "'allOf' of more than one schema is not supported");
      }
      for (size_t i = 0; i < list.size(); ++i) {
        HERD_ASSIGN_OR_RETURN(const int32_t choice, Compile(list[i], Child(at, std::to_string(i))));
        choices.push_back(choice);
      }
    }
    schema_->nodes_[id].choices = std::move(choices);
    return absl::OkStatus();
  }

  absl::StatusOr<uint8_t> ParseType(const Json& type, const std::string& where) {
    std::vector<Json> names = type.is_array() ? type.get<std::vector<Json>>() : std::vector{type};
    uint8_t types = 0;
    for (const Json& name : names) {
      const uint8_t bit = name.is_string() ? TypeBit(name.get<std::string>()) : 0;
      if (bit == 0) {
        return Invalid(where, absl::StrCat("'type' must be null, boolean, integer, number, "
                                           "string, array or object (or a list of them), got ",
                                           name.dump()));
      }
      types |= bit;
    }
    if (types == 0) return Invalid(where, "'type' is an empty list");
    return types;
  }

  absl::Status ParseEnum(const Json& schema, const std::string& where, Node* node) {
    std::vector<Json> values;
    if (const auto it = schema.find("const"); it != schema.end()) {
      values.push_back(*it);
    } else if (const auto it = schema.find("enum"); it != schema.end()) {
      if (!it->is_array() || it->empty()) {
        return Invalid(where, "'enum' must be a non-empty list");
      }
      values = it->get<std::vector<Json>>();
    } else {
      return absl::OkStatus();
    }
    node->enumerated = true;
    for (const Json& value : values) {
      if (!NestsAtMost(value, JsonSchema::kMaxNesting)) {
        return Invalid(where, absl::StrCat("an 'enum' or 'const' value nests deeper than ",
                                           JsonSchema::kMaxNesting));
      }
      if (value.is_number_float() && !std::isfinite(value.get<double>())) continue;
      if (!HasType(value, node->types)) continue;
      std::string text = value.dump();
      if (std::find(node->literals.begin(), node->literals.end(), text) == node->literals.end()) {
        node->literals.push_back(std::move(text));
      }
    }
    if (node->literals.empty()) {
      return Invalid(where, "no value of 'enum' or 'const' has the schema's type");
    }
    if (node->literals.size() > JsonSchema::kMaxCandidates) {
      return Invalid(where,
                     absl::StrCat("'enum' has more than ", JsonSchema::kMaxCandidates, " values"));
    }
    return absl::OkStatus();
  }

  absl::Status ParseObject(const Json& schema, const std::string& where, Node* node) {
    absl::flat_hash_map<std::string, size_t> index;
    if (const auto it = schema.find("properties"); it != schema.end()) {
      if (!it->is_object()) return Invalid(where, "'properties' must be an object");
      if (it->size() > JsonSchema::kMaxCandidates) {
        return Invalid(where, absl::StrCat("more than ", JsonSchema::kMaxCandidates,
                                           " properties in one object"));
      }
      // In the order the request wrote them (an ordered_json).
      for (const auto& [name, value] : it->items()) {
        JsonSchema::Property property;
        const std::string quoted = Json(name).dump();
        property.escaped_name = quoted.substr(1, quoted.size() - 2);
        HERD_ASSIGN_OR_RETURN(property.node,
                              Compile(value, Child(Child(where, "properties"), name)));
        index[name] = node->properties.size();
        node->properties.push_back(std::move(property));
      }
    }
    if (const auto it = schema.find("required"); it != schema.end()) {
      if (!it->is_array()) return Invalid(where, "'required' must be a list of property names");
      for (const Json& name : *it) {
        const auto found = name.is_string() ? index.find(name.get<std::string>()) : index.end();
        if (found == index.end()) {
          return Invalid(where, absl::StrCat("required ", name.dump(), " is not in 'properties'"));
        }
        node->properties[found->second].required = true;
      }
    }
    node->first_required.assign(node->properties.size() + 1,
                                static_cast<uint16_t>(node->properties.size()));
    for (int i = static_cast<int>(node->properties.size()) - 1; i >= 0; --i) {
      node->first_required[i] = node->properties[i].required ? i : node->first_required[i + 1];
    }
    if (const auto it = schema.find("additionalProperties"); it != schema.end()) {
      if (!it->is_boolean() && !it->is_object()) {
        return Invalid(where, "'additionalProperties' must be a boolean or a schema");
      }
      if (*it != false) {
        HERD_ASSIGN_OR_RETURN(node->additional, Compile(*it, Child(where, "additionalProperties")));
      }
    } else if (node->properties.empty()) {
      node->additional = 0;  // {"type": "object"}: any object
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> Count(const Json& schema, const char* keyword, const std::string& where,
                                int64_t absent) {
    const auto it = schema.find(keyword);
    if (it == schema.end()) return absent;
    if (!it->is_number_integer() || it->get<int64_t>() < 0) {
      return Invalid(
          where, absl::StrCat("'", keyword, "' must be a non-negative integer, got ", it->dump()));
    }
    return it->get<int64_t>();
  }

  // Replaces each choice that is itself a choice node by its choices.
  absl::Status FlattenChoices() {
    std::vector<Node>& nodes = schema_->nodes_;
    for (size_t id = 0; id < nodes.size(); ++id) {
      if (nodes[id].choices.empty()) continue;
      std::vector<int32_t> flat;
      std::vector<int32_t> path = {static_cast<int32_t>(id)};
      HERD_RETURN_IF_ERROR(Expand(static_cast<int32_t>(id), &path, &flat));
      nodes[id].choices = std::move(flat);
    }
    return absl::OkStatus();
  }

  absl::Status Expand(int32_t id, std::vector<int32_t>* path, std::vector<int32_t>* flat) {
    for (const int32_t choice : schema_->nodes_[id].choices) {
      if (schema_->nodes_[choice].choices.empty()) {
        if (std::find(flat->begin(), flat->end(), choice) == flat->end()) flat->push_back(choice);
        continue;
      }
      if (std::find(path->begin(), path->end(), choice) != path->end()) {
        return Invalid("", "a '$ref' or choice refers back to itself with no value between");
      }
      path->push_back(choice);
      HERD_RETURN_IF_ERROR(Expand(choice, path, flat));
      path->pop_back();
    }
    return absl::OkStatus();
  }

  bool TypeSatisfiable(const Node& node, uint8_t type, const std::vector<bool>& sat) const {
    if (!(node.types & type)) return false;
    switch (type) {
      case JsonSchema::kString:
        return node.min_length <= node.max_length;
      case JsonSchema::kArray:
        return node.min_items <= node.max_items && (node.min_items == 0 || sat[node.items]);
      case JsonSchema::kObject:
        return std::all_of(
            node.properties.begin(), node.properties.end(),
            [&](const JsonSchema::Property& p) { return !p.required || sat[p.node]; });
      default:
        return true;
    }
  }

  // The least fixed point: a node is satisfiable when some finite value
  // satisfies it given which of the others are.
  void MarkSatisfiable() {
    std::vector<Node>& nodes = schema_->nodes_;
    std::vector<bool> sat(nodes.size(), false);
    for (Node& node : nodes) node.satisfiable_types = 0;
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t id = 0; id < nodes.size(); ++id) {
        Node& node = nodes[id];
        uint8_t types = 0;
        if (!node.choices.empty()) {
          for (const int32_t choice : node.choices) types |= sat[choice] ? JsonSchema::kAnyType : 0;
        } else if (node.enumerated) {
          types = JsonSchema::kAnyType;
        } else {
          for (uint8_t type = 1; type < JsonSchema::kAnyType; type <<= 1) {
            if (TypeSatisfiable(node, type, sat)) types |= type;
          }
        }
        if (types != node.satisfiable_types) {
          node.satisfiable_types = types;
          sat[id] = types != 0;
          changed = true;
        }
      }
    }
  }

  absl::StatusOr<std::shared_ptr<const JsonSchema>> CheckRoot() {
    const Node& root = schema_->nodes_[schema_->root_];
    if (!root.satisfiable()) return Invalid("", "no value satisfies the schema");
    std::vector<int32_t> alternatives = root.choices;
    if (alternatives.empty()) alternatives.push_back(schema_->root_);
    for (const int32_t id : alternatives) {
      const Node& node = schema_->nodes_[id];
      if (!node.satisfiable()) continue;
      const bool number =
          node.enumerated ? std::any_of(node.literals.begin(), node.literals.end(),
                                        [](const std::string& text) {
                                          return text[0] == '-' ||
                                                 std::isdigit(static_cast<unsigned char>(text[0]));
                                        })
                          : (node.types & (JsonSchema::kInteger | JsonSchema::kNumber)) != 0;
      if (number) {
        return Invalid("",
                       "the top level may not be a number (nothing would end it): wrap it "
                       "in an object");
      }
    }
    return std::shared_ptr<const JsonSchema>(std::move(schema_));
  }

  const Json& document_;
  std::shared_ptr<JsonSchema> schema_;
  int depth_ = 0;  // CompileInto calls under way
  absl::flat_hash_map<std::string, int32_t> by_pointer_;
};

absl::StatusOr<std::shared_ptr<const JsonSchema>> JsonSchema::Compile(const Json& schema) {
  return JsonSchemaCompiler(schema).Run();
}

std::shared_ptr<const JsonSchema> JsonSchema::AnyObject() {
  static const auto* const kAnyObject = new std::shared_ptr<const JsonSchema>(
      *Compile(Json{{"type", "object"}, {"additionalProperties", true}}));
  return *kAnyObject;
}

}  // namespace herd
