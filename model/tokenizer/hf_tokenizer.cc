// Tokenizer::FromHfDirectory / FromHfJson: Hugging Face tokenizer.json (BPE
// model, normalizer, pre-tokenizer, decoder, post-processor, added tokens)
// and tokenizer_config.json (bos/eos, add_bos_token, chat_template).
//
// Only what changes the ids is interpreted; every component type that Herd
// does not implement is an Unimplemented error naming it, never silently
// ignored.
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "model/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace herd {
namespace {

using json = nlohmann::json;
using tokenizer::PrependScheme;
using tokenizer::Regex;
using tokenizer::SplitBehavior;

struct Context {
  std::string source;
  std::shared_ptr<const Regex> gpt2_regex;
  std::shared_ptr<const Regex> digit_regex;
};

absl::StatusOr<std::string> ReadText(const std::string& path, bool* exists) {
  std::ifstream file(path, std::ios::binary);
  *exists = static_cast<bool>(file);
  if (!file) return std::string();
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return text.str();
}

absl::StatusOr<json> ParseJson(absl::string_view text, const std::string& name) {
  json value = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(name, " is not valid JSON"));
  }
  return value;
}

// Typed field access that reports the path of a bad field instead of throwing.
absl::StatusOr<std::string> GetString(const json& obj, const char* key, const std::string& where,
                                      const std::string& fallback = "") {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return fallback;
  if (!obj[key].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", key, " must be a string"));
  }
  return obj[key].get<std::string>();
}

absl::StatusOr<bool> GetBool(const json& obj, const char* key, const std::string& where,
                             bool fallback) {
  if (!obj.is_object() || !obj.contains(key) || obj[key].is_null()) return fallback;
  if (!obj[key].is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".", key, " must be true or false"));
  }
  return obj[key].get<bool>();
}

std::string EscapeRegex(absl::string_view literal) {
  std::string out;
  for (char c : literal) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// A Split / Replace pattern: {"String": "..."} or {"Regex": "..."}.
absl::StatusOr<std::shared_ptr<const Regex>> GetPattern(const json& obj, const std::string& where,
                                                        std::string* literal = nullptr) {
  if (!obj.is_object() || !obj.contains("pattern") || !obj["pattern"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ".pattern is missing"));
  }
  const json& pattern = obj["pattern"];
  std::string regex_text;
  if (pattern.contains("String") && pattern["String"].is_string()) {
    const std::string text = pattern["String"].get<std::string>();
    if (literal != nullptr) *literal = text;
    regex_text = EscapeRegex(text);
  } else if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
    regex_text = pattern["Regex"].get<std::string>();
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".pattern must hold a String or a Regex"));
  }
  auto regex = Regex::Compile(regex_text);
  if (!regex.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", regex.status().message()));
  }
  return std::shared_ptr<const Regex>(std::move(*regex));
}

absl::Status ParseNormalizer(const json& node, const std::string& where, Context& ctx,
                             tokenizer::Normalizer* out) {
  if (node.is_null()) return absl::OkStatus();
  HERD_ASSIGN_OR_RETURN(std::string type, GetString(node, "type", where));
  if (type == "Sequence") {
    if (!node.contains("normalizers") || !node["normalizers"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".normalizers must be an array"));
    }
    for (size_t i = 0; i < node["normalizers"].size(); ++i) {
      HERD_RETURN_IF_ERROR(ParseNormalizer(node["normalizers"][i],
                                           absl::StrCat(where, ".normalizers[", i, "]"), ctx, out));
    }
  } else if (type == "NFC") {
    out->AddUnicodeForm(tokenizer::NormalizationForm::kNfc);
  } else if (type == "NFD") {
    out->AddUnicodeForm(tokenizer::NormalizationForm::kNfd);
  } else if (type == "NFKC") {
    out->AddUnicodeForm(tokenizer::NormalizationForm::kNfkc);
  } else if (type == "NFKD") {
    out->AddUnicodeForm(tokenizer::NormalizationForm::kNfkd);
  } else if (type == "Lowercase") {
    out->AddLowercase();
  } else if (type == "Replace") {
    HERD_ASSIGN_OR_RETURN(std::string content, GetString(node, "content", where));
    std::string literal;
    HERD_ASSIGN_OR_RETURN(auto regex, GetPattern(node, where, &literal));
    if (node["pattern"].contains("String")) {
      out->AddReplaceLiteral(literal, content);
    } else {
      out->AddReplaceRegex(std::move(regex), content);
    }
  } else if (type == "Prepend") {
    HERD_ASSIGN_OR_RETURN(std::string prepend, GetString(node, "prepend", where));
    out->AddPrepend(prepend);
  } else if (type == "Strip") {
    HERD_ASSIGN_OR_RETURN(bool left, GetBool(node, "strip_left", where, true));
    HERD_ASSIGN_OR_RETURN(bool right, GetBool(node, "strip_right", where, true));
    out->AddStrip(left, right);
  } else {
    return absl::UnimplementedError(
        absl::StrCat(ctx.source, ": normalizer type '", type, "' (", where, ") is not supported"));
  }
  return absl::OkStatus();
}

absl::StatusOr<SplitBehavior> ParseBehavior(const json& node, const std::string& where,
                                            const char* fallback) {
  HERD_ASSIGN_OR_RETURN(std::string behavior, GetString(node, "behavior", where, fallback));
  if (behavior == "Removed") return SplitBehavior::kRemoved;
  if (behavior == "Isolated") return SplitBehavior::kIsolated;
  if (behavior == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (behavior == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (behavior == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(
      absl::StrCat(where, ".behavior '", behavior, "' is not a split behavior"));
}

absl::StatusOr<PrependScheme> ParsePrependScheme(const json& node, const std::string& where) {
  if (node.contains("prepend_scheme") && !node["prepend_scheme"].is_null()) {
    HERD_ASSIGN_OR_RETURN(std::string scheme, GetString(node, "prepend_scheme", where));
    if (scheme == "always") return PrependScheme::kAlways;
    if (scheme == "first") return PrependScheme::kFirst;
    if (scheme == "never") return PrependScheme::kNever;
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".prepend_scheme '", scheme, "' is not always, first or never"));
  }
  // Older files: add_prefix_space.
  HERD_ASSIGN_OR_RETURN(bool add, GetBool(node, "add_prefix_space", where, true));
  return add ? PrependScheme::kAlways : PrependScheme::kNever;
}

absl::Status ParsePreTokenizer(const json& node, const std::string& where, Context& ctx,
                               tokenizer::PreTokenizer* out) {
  if (node.is_null()) return absl::OkStatus();
  HERD_ASSIGN_OR_RETURN(std::string type, GetString(node, "type", where));
  if (type == "Sequence") {
    if (!node.contains("pretokenizers") || !node["pretokenizers"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".pretokenizers must be an array"));
    }
    for (size_t i = 0; i < node["pretokenizers"].size(); ++i) {
      HERD_RETURN_IF_ERROR(ParsePreTokenizer(
          node["pretokenizers"][i], absl::StrCat(where, ".pretokenizers[", i, "]"), ctx, out));
    }
  } else if (type == "ByteLevel") {
    HERD_ASSIGN_OR_RETURN(bool add_prefix_space, GetBool(node, "add_prefix_space", where, true));
    HERD_ASSIGN_OR_RETURN(bool use_regex, GetBool(node, "use_regex", where, true));
    out->AddByteLevel(add_prefix_space, use_regex, ctx.gpt2_regex);
  } else if (type == "Split") {
    HERD_ASSIGN_OR_RETURN(auto regex, GetPattern(node, where));
    HERD_ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(node, where, "Isolated"));
    HERD_ASSIGN_OR_RETURN(bool invert, GetBool(node, "invert", where, false));
    out->AddSplit(std::move(regex), behavior, invert);
  } else if (type == "Metaspace") {
    HERD_ASSIGN_OR_RETURN(std::string replacement,
                          GetString(node, "replacement", where, "\xE2\x96\x81"));
    HERD_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(node, where));
    HERD_ASSIGN_OR_RETURN(bool split, GetBool(node, "split", where, true));
    if (replacement.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".replacement is empty"));
    }
    out->AddMetaspace(replacement, scheme, split);
  } else if (type == "Digits") {
    HERD_ASSIGN_OR_RETURN(bool individual, GetBool(node, "individual_digits", where, false));
    out->AddDigits(individual, ctx.digit_regex);
  } else if (type == "WhitespaceSplit") {
    HERD_ASSIGN_OR_RETURN(auto regex, Regex::Compile(R"(\s+)"));
    out->AddSplit(std::move(regex), SplitBehavior::kRemoved, false);
  } else if (type == "Whitespace") {
    HERD_ASSIGN_OR_RETURN(auto regex, Regex::Compile(R"(\w+|[^\w\s]+)"));
    out->AddSplit(std::move(regex), SplitBehavior::kRemoved, true);
  } else if (type == "Punctuation") {
    HERD_ASSIGN_OR_RETURN(auto regex, Regex::Compile(R"([\p{P}!-/:-@\[-`{-~])"));
    HERD_ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(node, where, "Isolated"));
    out->AddSplit(std::move(regex), behavior, false);
  } else {
    return absl::UnimplementedError(absl::StrCat(ctx.source, ": pre-tokenizer type '", type, "' (",
                                                 where, ") is not supported"));
  }
  return absl::OkStatus();
}

absl::Status ParseDecoder(const json& node, const std::string& where, Context& ctx,
                          TokenizerSpec* spec) {
  if (node.is_null()) return absl::OkStatus();
  HERD_ASSIGN_OR_RETURN(std::string type, GetString(node, "type", where));
  if (type == "Sequence") {
    if (!node.contains("decoders") || !node["decoders"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".decoders must be an array"));
    }
    for (size_t i = 0; i < node["decoders"].size(); ++i) {
      HERD_RETURN_IF_ERROR(
          ParseDecoder(node["decoders"][i], absl::StrCat(where, ".decoders[", i, "]"), ctx, spec));
    }
  } else if (type == "ByteLevel") {
    spec->decode_byte_level = true;
  } else if (type == "Metaspace") {
    HERD_ASSIGN_OR_RETURN(std::string replacement,
                          GetString(node, "replacement", where, "\xE2\x96\x81"));
    HERD_ASSIGN_OR_RETURN(PrependScheme scheme, ParsePrependScheme(node, where));
    spec->decode_replacements.emplace_back(replacement, " ");
    if (scheme != PrependScheme::kNever) spec->metaspace_first_token_drops = replacement;
  } else if (type == "Replace") {
    std::string literal;
    HERD_ASSIGN_OR_RETURN(auto regex, GetPattern(node, where, &literal));
    if (!node["pattern"].contains("String")) {
      return absl::UnimplementedError(absl::StrCat(
          ctx.source, ": a Replace decoder with a Regex pattern (", where, ") is not supported"));
    }
    HERD_ASSIGN_OR_RETURN(std::string content, GetString(node, "content", where));
    spec->decode_replacements.emplace_back(literal, content);
  } else if (type == "ByteFallback") {
    spec->decode_byte_fallback = true;
  } else if (type == "Fuse") {
    // Joining pieces changes nothing for a decoder that concatenates bytes.
  } else if (type == "Strip") {
    HERD_ASSIGN_OR_RETURN(std::string content, GetString(node, "content", where, " "));
    const int64_t start = node.value("start", int64_t{0});
    const int64_t stop = node.value("stop", int64_t{0});
    if (content != " " || start > 1 || stop != 0) {
      return absl::UnimplementedError(absl::StrCat(
          ctx.source, ": only Strip(content=' ', start<=1, stop=0) decoders are supported (", where,
          ")"));
    }
    if (start == 1) spec->strips_space_prefix = true;
  } else {
    return absl::UnimplementedError(
        absl::StrCat(ctx.source, ": decoder type '", type, "' (", where, ") is not supported"));
  }
  return absl::OkStatus();
}

// BOS / EOS that a TemplateProcessing post-processor puts around a single text.
void ParsePostProcessor(const json& node, std::string* bos, std::string* eos) {
  if (!node.is_object()) return;
  const std::string type = node.value("type", std::string());
  if (type == "Sequence" && node.contains("processors") && node["processors"].is_array()) {
    for (const json& p : node["processors"]) ParsePostProcessor(p, bos, eos);
    return;
  }
  if (type != "TemplateProcessing" || !node.contains("single") || !node["single"].is_array()) {
    return;
  }
  bool seen_sequence = false;
  for (const json& item : node["single"]) {
    if (!item.is_object()) continue;
    if (item.contains("Sequence")) {
      seen_sequence = true;
    } else if (item.contains("SpecialToken") && item["SpecialToken"].is_object()) {
      const std::string id = item["SpecialToken"].value("id", std::string());
      (seen_sequence ? *eos : *bos) = id;
    }
  }
}

// A token in tokenizer_config.json: "text", {"content": "text"} or null.
std::string ConfigToken(const json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return "";
  const json& value = config[key];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return "";
}

absl::StatusOr<TokenizerSpec> BuildHfSpec(absl::string_view tokenizer_json,
                                          absl::string_view config_json,
                                          const std::string& source) {
  Context ctx;
  ctx.source = source;
  HERD_ASSIGN_OR_RETURN(auto gpt2, Regex::Compile(tokenizer::kGpt2Pattern));
  ctx.gpt2_regex = std::move(gpt2);
  HERD_ASSIGN_OR_RETURN(auto digits, Regex::Compile(R"(\p{N})"));
  ctx.digit_regex = std::move(digits);

  HERD_ASSIGN_OR_RETURN(json root, ParseJson(tokenizer_json, source + "/tokenizer.json"));
  json config = json::object();
  if (!config_json.empty()) {
    HERD_ASSIGN_OR_RETURN(config, ParseJson(config_json, source + "/tokenizer_config.json"));
  }
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, "/tokenizer.json has no model"));
  }
  const json& model = root["model"];
  const std::string where = "model";
  HERD_ASSIGN_OR_RETURN(std::string model_type, GetString(model, "type", where, "BPE"));
  if (model_type != "BPE") {
    return absl::UnimplementedError(absl::StrCat(source, ": tokenizer.json model type '",
                                                 model_type, "' is not supported (only BPE)"));
  }
  for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() &&
        !(model[key].is_string() && model[key].get<std::string>().empty())) {
      return absl::UnimplementedError(
          absl::StrCat(source, ": BPE option model.", key, " is not supported"));
    }
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": model.vocab must be an object"));
  }

  TokenizerSpec spec;
  spec.source = source;
  HERD_ASSIGN_OR_RETURN(spec.byte_fallback, GetBool(model, "byte_fallback", where, false));
  HERD_ASSIGN_OR_RETURN(spec.fuse_unk, GetBool(model, "fuse_unk", where, false));
  HERD_ASSIGN_OR_RETURN(spec.ignore_merges, GetBool(model, "ignore_merges", where, false));

  // Vocabulary (ids may have gaps; added tokens may extend it).
  int64_t max_id = -1;
  for (const auto& [text, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 24)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": model.vocab['", text, "'] is not a valid token id"));
    }
    max_id = std::max(max_id, id.get<int64_t>());
  }
  std::vector<tokenizer::AddedToken> added;
  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (size_t i = 0; i < root["added_tokens"].size(); ++i) {
      const json& t = root["added_tokens"][i];
      const std::string w = absl::StrCat("added_tokens[", i, "]");
      tokenizer::AddedToken token;
      if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() ||
          t["id"].get<int64_t>() < 0 || t["id"].get<int64_t>() > (1 << 24)) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": ", w, ".id is not a token id"));
      }
      token.id = static_cast<int32_t>(t["id"].get<int64_t>());
      HERD_ASSIGN_OR_RETURN(token.text, GetString(t, "content", w));
      HERD_ASSIGN_OR_RETURN(token.special, GetBool(t, "special", w, false));
      HERD_ASSIGN_OR_RETURN(token.lstrip, GetBool(t, "lstrip", w, false));
      HERD_ASSIGN_OR_RETURN(token.rstrip, GetBool(t, "rstrip", w, false));
      HERD_ASSIGN_OR_RETURN(token.single_word, GetBool(t, "single_word", w, false));
      HERD_ASSIGN_OR_RETURN(token.normalized, GetBool(t, "normalized", w, !token.special));
      max_id = std::max<int64_t>(max_id, token.id);
      added.push_back(std::move(token));
    }
  }
  if (max_id < 0) return absl::InvalidArgumentError(absl::StrCat(source, ": empty vocabulary"));
  spec.tokens.assign(static_cast<size_t>(max_id + 1), std::string());
  spec.types.assign(spec.tokens.size(), TokenType::kUnused);
  for (const auto& [text, id] : model["vocab"].items()) {
    spec.tokens[id.get<int64_t>()] = text;
    spec.types[id.get<int64_t>()] = TokenType::kNormal;
  }
  if (spec.byte_fallback) {
    for (size_t i = 0; i < spec.tokens.size(); ++i) {
      const std::string& t = spec.tokens[i];
      if (t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>') spec.types[i] = TokenType::kByte;
    }
  }
  for (const tokenizer::AddedToken& token : added) {
    spec.tokens[token.id] = token.text;
    spec.types[token.id] = token.special ? TokenType::kControl : TokenType::kUserDefined;
  }
  spec.added_tokens = std::move(added);
  spec.added_tokens_verbatim = false;  // Hugging Face decodes them through the decoder

  // Merges: ["a b", ...] or [["a", "b"], ...].
  if (model.contains("merges") && model["merges"].is_array()) {
    const json& merges = model["merges"];
    spec.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const json& m = merges[i];
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ', 1);
        if (space == std::string::npos) {
          return absl::InvalidArgumentError(
              absl::StrCat(source, ": model.merges[", i, "] = '", s, "' is not 'left right'"));
        }
        spec.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": model.merges[", i, "] is not a pair of strings"));
      }
    }
  }

  auto id_of = [&](const std::string& text) -> int32_t {
    if (text.empty()) return -1;
    for (size_t i = spec.tokens.size(); i-- > 0;) {
      if (spec.tokens[i] == text) return static_cast<int32_t>(i);
    }
    return -1;
  };
  HERD_ASSIGN_OR_RETURN(std::string unk, GetString(model, "unk_token", where));
  if (!unk.empty()) {
    spec.unk_id = id_of(unk);
    if (spec.unk_id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": model.unk_token '", unk, "' is not in the vocabulary"));
    }
    if (spec.types[spec.unk_id] == TokenType::kNormal)
      spec.types[spec.unk_id] = TokenType::kUnknown;
  }

  HERD_RETURN_IF_ERROR(
      ParseNormalizer(root.value("normalizer", json()), "normalizer", ctx, &spec.normalizer));
  HERD_RETURN_IF_ERROR(ParsePreTokenizer(root.value("pre_tokenizer", json()), "pre_tokenizer", ctx,
                                         &spec.pre_tokenizer));
  HERD_RETURN_IF_ERROR(ParseDecoder(root.value("decoder", json()), "decoder", ctx, &spec));
  spec.kind = spec.pre_tokenizer.byte_level() ? TokenizerKind::kByteLevelBpe : TokenizerKind::kBpe;

  // BOS / EOS: tokenizer_config.json first, then the post-processor.
  std::string post_bos, post_eos;
  ParsePostProcessor(root.value("post_processor", json()), &post_bos, &post_eos);
  std::string bos = ConfigToken(config, "bos_token");
  std::string eos = ConfigToken(config, "eos_token");
  if (bos.empty()) bos = post_bos;
  if (eos.empty()) eos = post_eos;
  spec.bos_id = id_of(bos);
  spec.eos_id = id_of(eos);
  if (!bos.empty() && spec.bos_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": bos_token '", bos, "' is not in the vocabulary"));
  }
  if (!eos.empty() && spec.eos_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": eos_token '", eos, "' is not in the vocabulary"));
  }
  const std::string cw = "tokenizer_config";
  HERD_ASSIGN_OR_RETURN(spec.add_bos, GetBool(config, "add_bos_token", cw, !post_bos.empty()));
  HERD_ASSIGN_OR_RETURN(spec.add_eos, GetBool(config, "add_eos_token", cw, !post_eos.empty()));

  if (config.contains("chat_template")) {
    const json& t = config["chat_template"];
    if (t.is_string()) {
      spec.chat_template = t.get<std::string>();
    } else if (t.is_array()) {
      for (const json& named : t) {
        if (!named.is_object() || !named.contains("template") || !named["template"].is_string()) {
          continue;
        }
        if (spec.chat_template.empty() || named.value("name", std::string()) == "default") {
          spec.chat_template = named["template"].get<std::string>();
        }
      }
    }
  }
  return spec;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfJson(
    absl::string_view tokenizer_json, absl::string_view tokenizer_config_json,
    const std::string& source) {
  HERD_ASSIGN_OR_RETURN(TokenizerSpec spec,
                        BuildHfSpec(tokenizer_json, tokenizer_config_json, source));
  return Create(std::move(spec));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfDirectory(const std::string& dir) {
  bool exists = false;
  HERD_ASSIGN_OR_RETURN(std::string tokenizer_json, ReadText(dir + "/tokenizer.json", &exists));
  if (!exists) {
    bool has_spm = false;
    (void)ReadText(dir + "/tokenizer.model", &has_spm);
    return absl::FailedPreconditionError(
        absl::StrCat("model ", dir, " has no tokenizer: no tokenizer.json",
                     has_spm ? " (only a SentencePiece tokenizer.model, which Herd does not read; "
                               "save the tokenizer with transformers to get a tokenizer.json)"
                             : ""));
  }
  HERD_ASSIGN_OR_RETURN(std::string config_json, ReadText(dir + "/tokenizer_config.json", &exists));
  HERD_ASSIGN_OR_RETURN(TokenizerSpec spec, BuildHfSpec(tokenizer_json, config_json, dir));
  // generation_config.json may name further end-of-generation ids.
  HERD_ASSIGN_OR_RETURN(std::string generation_json,
                        ReadText(dir + "/generation_config.json", &exists));
  if (exists) {
    HERD_ASSIGN_OR_RETURN(json generation,
                          ParseJson(generation_json, dir + "/generation_config.json"));
    if (generation.is_object() && generation.contains("eos_token_id")) {
      const json& eos = generation["eos_token_id"];
      std::vector<json> ids =
          eos.is_array() ? std::vector<json>(eos.begin(), eos.end()) : std::vector<json>{eos};
      for (const json& id : ids) {
        if (id.is_number_integer() && id.get<int64_t>() >= 0 &&
            id.get<int64_t>() < static_cast<int64_t>(spec.tokens.size())) {
          spec.end_of_generation_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
        }
      }
    }
  }
  return Create(std::move(spec));
}

}  // namespace herd
