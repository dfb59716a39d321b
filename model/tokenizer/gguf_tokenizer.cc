// Tokenizer::FromGguf: the `tokenizer.ggml.*` keys of a GGUF file, read the
// way llama.cpp reads them.
//
//   tokenizer.ggml.model      "llama" (SentencePiece BPE) | "gpt2" (byte-level BPE) | "none"
//   tokenizer.ggml.pre        pre-tokenizer name for "gpt2" (table below)
//   tokenizer.ggml.tokens     string[n]
//   tokenizer.ggml.scores     f32[n]    (SentencePiece merge priorities)
//   tokenizer.ggml.token_type i32[n]    (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
//   6 byte) tokenizer.ggml.merges     string[]  ("left right", rank order; "gpt2")
//   tokenizer.ggml.{bos,eos,unknown,padding,eot,eom}_token_id   u32
//   tokenizer.ggml.{add_bos_token,add_eos_token,add_space_prefix} bool
//   tokenizer.chat_template   string
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status.h"
#include "model/gguf_file.h"
#include "model/tokenizer/tokenizer.h"

namespace herd {
namespace {

using tokenizer::PreTokenizer;
using tokenizer::Regex;
using tokenizer::SplitBehavior;

// The pre-tokenizer regex lists of the `tokenizer.ggml.pre` names Herd knows,
// taken from each model family's tokenizer.json (as llama.cpp also uses them).
// Non-ASCII characters are written as \x{...} escapes: several (U+1FBE,
// U+2126, U+212A, ...) are canonical singletons that an editor normalizing to
// NFC would silently turn into other code points.
struct PreTokenizerRecipe {
  std::vector<const char*> names;
  std::vector<const char*> patterns;  // applied in order, each as an Isolated split
  bool nfc = false;                   // the source tokenizer normalizes to NFC first
  bool ignore_merges = false;         // whole-word vocabulary hits skip merging
};

constexpr char kLlama3Pattern[] =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr char kQwen2Pattern[] =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

const std::vector<PreTokenizerRecipe>& Recipes() {
  static const auto* const kRecipes = new std::vector<PreTokenizerRecipe>{
      {{"default"},
       {R"([\p{P}\$\+<=>\^~\|]+)", tokenizer::kGpt2Pattern, R"(\p{N}+)", "[0-9][0-9][0-9]"}},
      {{"gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe"}, {tokenizer::kGpt2Pattern}},
      {{"llama-bpe", "llama3", "llama-v3", "falcon3", "dbrx", "smaug-bpe"},
       {kLlama3Pattern},
       false,
       true},
      {{"qwen2", "stablelm2"}, {kQwen2Pattern}, true},
      {{"deepseek-llm"},
       {"[\r\n]",
        "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}"
        "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-"
        "\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-"
        "\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}"
        "\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"
        "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}"
        "\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}"
        "\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-"
        "\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}"
        "\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}"
        "\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}"
        "\\x{2126}\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-"
        "\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}"
        "\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}"
        "\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}"
        "\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}"
        "\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-"
        "\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}"
        "\\x{1E900}-\\x{1E943}]+",
        "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
        "\\s+$", "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+", "\\p{N}+"}},
      {{"deepseek-coder"},
       {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+",
        "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+", "\\p{N}"}},
      {{"deepseek-v3"},
       {R"(\p{N}{1,3})", "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
        R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}},
      {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", tokenizer::kGpt2Pattern, "[0-9][0-9][0-9]"}},
      {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone"},
       {R"(\p{N})", tokenizer::kGpt2Pattern}},
  };
  return *kRecipes;
}

std::string KnownPreNames() {
  std::vector<std::string> names;
  for (const PreTokenizerRecipe& recipe : Recipes()) {
    for (const char* name : recipe.names) names.push_back(absl::StrCat("'", name, "'"));
  }
  return absl::StrJoin(names, ", ");
}

// An optional u32 token id key: -1 when absent.
absl::StatusOr<int32_t> OptionalId(const GgufFile& file, absl::string_view key) {
  if (!file.HasKey(key)) return -1;
  HERD_ASSIGN_OR_RETURN(int64_t id, file.GetI64(key));
  if (id < 0 || id > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": ", key, " = ", id, " is not a token id"));
  }
  return static_cast<int32_t>(id);
}

absl::StatusOr<bool> OptionalBool(const GgufFile& file, absl::string_view key, bool fallback) {
  if (!file.HasKey(key)) return fallback;
  return file.GetBool(key);
}

absl::Status CheckId(const GgufFile& file, absl::string_view key, int32_t id, size_t n) {
  if (id >= static_cast<int64_t>(n)) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": ", key, " = ", id,
                                                   " is outside the vocabulary (", n, " tokens)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromGguf(const GgufFile& file) {
  const std::string& path = file.path();
  std::string model = "none";
  if (file.HasKey("tokenizer.ggml.model")) {
    HERD_ASSIGN_OR_RETURN(model, file.GetString("tokenizer.ggml.model"));
  }
  if (model == "none" || model.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", path, " has no tokenizer (tokenizer.ggml.model = \"", model,
                     "\"); pass token ids instead (--prompt-ids / --ids)"));
  }
  TokenizerSpec spec;
  spec.source = path;
  if (model == "llama") {
    spec.kind = TokenizerKind::kSentencePiece;
  } else if (model == "gpt2") {
    spec.kind = TokenizerKind::kByteLevelBpe;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        path, ": tokenizer kind '", model,
        "' (tokenizer.ggml.model) is not supported; Herd reads 'llama' (SentencePiece BPE) "
        "and 'gpt2' (byte-level BPE)"));
  }

  HERD_ASSIGN_OR_RETURN(spec.tokens, file.GetStringArray("tokenizer.ggml.tokens"));
  const size_t n = spec.tokens.size();
  if (n == 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tokenizer.ggml.tokens is empty"));
  }
  if (file.HasKey("tokenizer.ggml.token_type")) {
    HERD_ASSIGN_OR_RETURN(std::vector<int64_t> types,
                          file.GetI64Array("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tokenizer.ggml.token_type has ",
                                                     types.size(), " entries for ", n, " tokens"));
    }
    spec.types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (types[i] < 1 || types[i] > 6) {
        // llama.cpp treats undefined types as normal tokens.
        spec.types.push_back(TokenType::kNormal);
      } else {
        spec.types.push_back(static_cast<TokenType>(types[i]));
      }
    }
  }
  if (file.HasKey("tokenizer.ggml.scores")) {
    HERD_ASSIGN_OR_RETURN(spec.scores, file.GetF32Array("tokenizer.ggml.scores"));
    if (spec.scores.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tokenizer.ggml.scores has ", spec.scores.size(), " entries for ", n, " tokens"));
    }
  } else if (spec.kind == TokenizerKind::kSentencePiece) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a 'llama' tokenizer needs tokenizer.ggml.scores"));
  }

  HERD_ASSIGN_OR_RETURN(spec.unk_id, OptionalId(file, "tokenizer.ggml.unknown_token_id"));
  HERD_ASSIGN_OR_RETURN(spec.bos_id, OptionalId(file, "tokenizer.ggml.bos_token_id"));
  HERD_ASSIGN_OR_RETURN(spec.eos_id, OptionalId(file, "tokenizer.ggml.eos_token_id"));
  for (const char* key : {"tokenizer.ggml.unknown_token_id", "tokenizer.ggml.bos_token_id",
                          "tokenizer.ggml.eos_token_id"}) {
    HERD_ASSIGN_OR_RETURN(int32_t id, OptionalId(file, key));
    HERD_RETURN_IF_ERROR(CheckId(file, key, id, n));
  }
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    HERD_ASSIGN_OR_RETURN(int32_t id, OptionalId(file, key));
    HERD_RETURN_IF_ERROR(CheckId(file, key, id, n));
    if (id >= 0) spec.end_of_generation_ids.push_back(id);
  }
  const bool spm = spec.kind == TokenizerKind::kSentencePiece;
  HERD_ASSIGN_OR_RETURN(spec.add_bos, OptionalBool(file, "tokenizer.ggml.add_bos_token", spm));
  HERD_ASSIGN_OR_RETURN(spec.add_eos, OptionalBool(file, "tokenizer.ggml.add_eos_token", false));
  if (spec.add_bos && spec.bos_id < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": tokenizer.ggml.add_bos_token is set but tokenizer.ggml.bos_token_id is not"));
  }
  if (spec.add_eos && spec.eos_id < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": tokenizer.ggml.add_eos_token is set but tokenizer.ggml.eos_token_id is not"));
  }
  if (file.HasKey("tokenizer.chat_template")) {
    HERD_ASSIGN_OR_RETURN(spec.chat_template, file.GetString("tokenizer.chat_template"));
  }

  // Tokens recognised in text: control and unknown on request, user-defined always.
  if (!spec.types.empty()) {
    for (size_t i = 0; i < n; ++i) {
      const TokenType type = spec.types[i];
      if (type != TokenType::kControl && type != TokenType::kUnknown &&
          type != TokenType::kUserDefined) {
        continue;
      }
      tokenizer::AddedToken token;
      token.id = static_cast<int32_t>(i);
      token.text = spec.tokens[i];
      token.special = type != TokenType::kUserDefined;
      spec.added_tokens.push_back(std::move(token));
    }
  }

  if (spm) {
    HERD_ASSIGN_OR_RETURN(spec.add_space_prefix,
                          OptionalBool(file, "tokenizer.ggml.add_space_prefix", true));
    spec.decode_replacements = {{"\xE2\x96\x81", " "}};
    spec.strips_space_prefix = spec.add_space_prefix;
  } else {
    spec.decode_byte_level = true;
    spec.added_tokens_verbatim = true;
    HERD_ASSIGN_OR_RETURN(std::vector<std::string> merges,
                          file.GetStringArray("tokenizer.ggml.merges"));
    spec.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      const std::string& merge = merges[i];
      const size_t space = merge.find(' ', 1);
      if (space == std::string::npos || space + 1 >= merge.size()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": tokenizer.ggml.merges[", i, "] = '",
                                                       merge, "' is not 'left right'"));
      }
      spec.merges.emplace_back(merge.substr(0, space), merge.substr(space + 1));
    }
    std::string pre = "default";
    if (file.HasKey("tokenizer.ggml.pre")) {
      HERD_ASSIGN_OR_RETURN(pre, file.GetString("tokenizer.ggml.pre"));
    }
    const PreTokenizerRecipe* recipe = nullptr;
    for (const PreTokenizerRecipe& r : Recipes()) {
      for (const char* name : r.names) {
        if (pre == name) recipe = &r;
      }
    }
    if (recipe == nullptr) {
      return absl::UnimplementedError(absl::StrCat(path, ": pre-tokenizer '", pre,
                                                   "' (tokenizer.ggml.pre) is not supported; "
                                                   "Herd knows ",
                                                   KnownPreNames()));
    }
    for (const char* pattern : recipe->patterns) {
      HERD_ASSIGN_OR_RETURN(std::unique_ptr<Regex> regex, Regex::Compile(pattern));
      spec.pre_tokenizer.AddSplit(std::move(regex), SplitBehavior::kIsolated, false);
    }
    if (recipe->nfc) spec.normalizer.AddUnicodeForm(tokenizer::NormalizationForm::kNfc);
    spec.ignore_merges = recipe->ignore_merges;
  }
  return Create(std::move(spec));
}

}  // namespace herd
