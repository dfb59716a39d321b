#include "model/tokenizer/tokenizer.h"

#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/logging.h"
#include "core/status.h"
#include "model/gguf_file.h"
#include "model/tokenizer/unicode.h"

namespace herd {
namespace {

using tokenizer::ByteLevelMap;
using tokenizer::kNoToken;
using tokenizer::Symbol;

constexpr char kSpaceMark[] = "\xE2\x96\x81";  // U+2581 "▁"
constexpr size_t kSpaceMarkBytes = 3;

std::string ByteTokenText(uint8_t b) { return absl::StrFormat("<0x%02X>", b); }

// The byte a "<0xXX>" token stands for, or -1.
int ParseByteToken(absl::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = text[i];
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return -1;
    }
    value = value * 16 + digit;
  }
  return value;
}

size_t CharLength(absl::string_view text, size_t pos) {
  const size_t len = tokenizer::Utf8SequenceLength(text.substr(pos));
  return len == 0 ? 1 : len;
}

std::string ReplaceAll(std::string text, const std::string& from, const std::string& to) {
  if (from.empty()) return text;
  size_t pos = 0;
  while ((pos = text.find(from, pos)) != std::string::npos) {
    text.replace(pos, from.size(), to);
    pos += to.size();
  }
  return text;
}

}  // namespace

const char* TokenizerKindName(TokenizerKind kind) {
  switch (kind) {
    case TokenizerKind::kSentencePiece:
      return "sentencepiece";
    case TokenizerKind::kByteLevelBpe:
      return "byte-level-bpe";
    case TokenizerKind::kBpe:
      return "bpe";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("no such file or directory: ", path));
  }
  if (S_ISDIR(st.st_mode)) return FromHfDirectory(path);
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(path));
  return FromGguf(*file);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Create(TokenizerSpec spec) {
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer(std::move(spec)));
  HERD_RETURN_IF_ERROR(tokenizer->Build());
  return tokenizer;
}

absl::Status Tokenizer::Build() {
  TokenizerSpec& s = spec_;
  const size_t n = s.tokens.size();
  if (n == 0)
    return absl::InvalidArgumentError(absl::StrCat(s.source, ": the vocabulary is empty"));
  if (n > static_cast<size_t>(INT32_MAX / 2)) {
    return absl::InvalidArgumentError(
        absl::StrCat(s.source, ": vocabulary of ", n, " tokens is too large"));
  }
  if (s.types.empty()) s.types.assign(n, TokenType::kNormal);
  if (s.types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(s.source, ": ", s.types.size(), " token types for ", n, " tokens"));
  }
  if (s.kind == TokenizerKind::kSentencePiece) {
    if (s.scores.empty()) s.scores.assign(n, 0.0f);
    if (s.scores.size() != n) {
      return absl::InvalidArgumentError(
          absl::StrCat(s.source, ": ", s.scores.size(), " token scores for ", n, " tokens"));
    }
  }
  const std::pair<const char*, int32_t> special_ids[] = {
      {"unknown", s.unk_id}, {"BOS", s.bos_id}, {"EOS", s.eos_id}};
  for (const auto& [name, id] : special_ids) {
    if (id < -1 || id >= static_cast<int32_t>(n)) {
      return absl::InvalidArgumentError(absl::StrCat(
          s.source, ": ", name, " token id ", id, " is outside the vocabulary (", n, " tokens)"));
    }
  }
  for (int32_t id : s.end_of_generation_ids) {
    if (id < 0 || id >= static_cast<int32_t>(n)) {
      return absl::InvalidArgumentError(absl::StrCat(s.source, ": end-of-generation token id ", id,
                                                     " is outside the vocabulary"));
    }
  }
  if (s.add_bos && s.bos_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(s.source, ": add_bos_token is set but there is no BOS token"));
  }
  if (s.add_eos && s.eos_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(s.source, ": add_eos_token is set but there is no EOS token"));
  }

  ids_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (!s.tokens[i].empty()) ids_[s.tokens[i]] = static_cast<int32_t>(i);
  }

  // Byte tokens.
  const ByteLevelMap& byte_map = ByteLevelMap::Get();
  for (int b = 0; b < 256; ++b) {
    byte_tokens_[b] = kNoToken;
    if (s.kind == TokenizerKind::kByteLevelBpe) {
      if (auto it = ids_.find(byte_map.CharFor(static_cast<uint8_t>(b))); it != ids_.end()) {
        byte_tokens_[b] = it->second;
      }
    } else if (auto it = ids_.find(ByteTokenText(static_cast<uint8_t>(b))); it != ids_.end()) {
      byte_tokens_[b] = it->second;
    }
  }

  // Merges.
  size_t num_dropped = 0;
  if (s.kind == TokenizerKind::kSentencePiece) {
    // Rank = position of the merged token's score in descending order, so
    // higher scores merge first and equal scores tie (then leftmost wins).
    std::vector<float> distinct;
    for (size_t i = 0; i < n; ++i) {
      if (s.types[i] == TokenType::kNormal) distinct.push_back(s.scores[i]);
    }
    std::sort(distinct.begin(), distinct.end(), std::greater<float>());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    auto rank_of = [&](float score) {
      return static_cast<int32_t>(
          std::lower_bound(distinct.begin(), distinct.end(), score, std::greater<float>()) -
          distinct.begin());
    };
    // A symbol is a token, or a single character (which may not be a token).
    auto symbol_id = [&](absl::string_view text, bool single_char) -> int32_t {
      if (auto it = ids_.find(text); it != ids_.end()) return it->second;
      if (!single_char) return kNoToken;
      auto [it, inserted] =
          char_ids_.try_emplace(std::string(text), static_cast<int32_t>(n + char_ids_.size()));
      return it->second;
    };
    spm_can_split_ = true;
    for (size_t i = 0; i < n; ++i) {
      if (s.types[i] != TokenType::kNormal) continue;
      const absl::string_view text = s.tokens[i];
      if (tokenizer::ValidateUtf8(text).ok() == false) continue;
      std::vector<size_t> bounds;
      for (size_t pos = 0; pos < text.size(); pos += CharLength(text, pos)) bounds.push_back(pos);
      bounds.push_back(text.size());
      for (size_t k = 1; k + 1 < bounds.size(); ++k) {
        if (text.substr(bounds[k], kSpaceMarkBytes) == kSpaceMark &&
            text.substr(bounds[k - 1], kSpaceMarkBytes) != kSpaceMark) {
          spm_can_split_ = false;
        }
      }
      if (bounds.size() < 3) continue;  // a single character
      const int32_t rank = rank_of(s.scores[i]);
      for (size_t k = 1; k + 1 < bounds.size(); ++k) {
        const absl::string_view left = text.substr(0, bounds[k]);
        const absl::string_view right = text.substr(bounds[k]);
        const int32_t left_id = symbol_id(left, k == 1);
        const int32_t right_id = symbol_id(right, k + 2 == bounds.size());
        if (left_id != kNoToken && right_id != kNoToken) {
          merges_.Add(left_id, right_id, rank, static_cast<int32_t>(i));
        }
      }
    }
  } else {
    int32_t rank = 0;
    for (const auto& [left, right] : s.merges) {
      auto l = ids_.find(left);
      auto r = ids_.find(right);
      auto m = ids_.find(absl::StrCat(left, right));
      if (l == ids_.end() || r == ids_.end() || m == ids_.end()) {
        ++num_dropped;
      } else {
        merges_.Add(l->second, r->second, rank, m->second);
      }
      ++rank;
    }
    if (num_dropped > 0) {
      HERD_LOG(WARN) << s.source << ": " << num_dropped
                     << " merges name tokens missing from the vocabulary; they are ignored";
    }
  }

  // Added tokens.
  for (const tokenizer::AddedToken& token : s.added_tokens) {
    if (token.id < 0 || token.id >= static_cast<int32_t>(n)) {
      return absl::InvalidArgumentError(absl::StrCat(s.source, ": added token '", token.text,
                                                     "' has id ", token.id,
                                                     " outside the vocabulary"));
    }
    if (token.normalized && !s.normalizer.empty()) {
      normalized_matcher_.Add(token);
    } else {
      raw_matcher_.Add(token);
    }
  }

  // What each token decodes to.
  decoded_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& text = s.tokens[i];
    const TokenType type = s.types[i];
    const int byte = ParseByteToken(text);
    if (byte >= 0 && (type == TokenType::kByte || s.decode_byte_fallback)) {
      decoded_[i] = std::string(1, static_cast<char>(byte));
      continue;
    }
    std::string piece = text;
    for (const auto& [from, to] : s.decode_replacements) piece = ReplaceAll(piece, from, to);
    const bool verbatim = type != TokenType::kNormal && s.added_tokens_verbatim;
    if (s.decode_byte_level && !verbatim) piece = byte_map.Decode(piece);
    decoded_[i] = std::move(piece);
  }
  return absl::OkStatus();
}

std::optional<int32_t> Tokenizer::TokenId(absl::string_view text) const {
  auto it = ids_.find(text);
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

bool Tokenizer::IsEndOfGeneration(int32_t id) const {
  if (id >= 0 && id == spec_.eos_id) return true;
  return std::find(spec_.end_of_generation_ids.begin(), spec_.end_of_generation_ids.end(), id) !=
         spec_.end_of_generation_ids.end();
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text,
                                                       const EncodeOptions& options) const {
  HERD_RETURN_IF_ERROR(tokenizer::ValidateUtf8(text));
  if (options.add_bos && spec_.bos_id < 0) {
    return absl::FailedPreconditionError(absl::StrCat(spec_.source, " has no BOS token"));
  }
  if (options.add_eos && spec_.eos_id < 0) {
    return absl::FailedPreconditionError(absl::StrCat(spec_.source, " has no EOS token"));
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (options.add_bos) out.push_back(spec_.bos_id);
  std::vector<tokenizer::AddedTokenMatcher::Fragment> fragments;
  if (raw_matcher_.empty()) {
    if (!text.empty()) fragments.push_back({-1, 0, static_cast<uint32_t>(text.size())});
  } else {
    raw_matcher_.Split(text, options.parse_special, &fragments);
  }
  bool after_token = true;  // the start of the text counts as a boundary
  for (const auto& fragment : fragments) {
    if (fragment.id >= 0) {
      out.push_back(fragment.id);
      after_token = true;
      continue;
    }
    HERD_RETURN_IF_ERROR(EncodeSection(text.substr(fragment.begin, fragment.end - fragment.begin),
                                       fragment.begin == 0, after_token, &out));
    after_token = false;
  }
  if (options.add_eos) out.push_back(spec_.eos_id);
  return out;
}

absl::Status Tokenizer::EncodeSection(absl::string_view text, bool at_start, bool after_token,
                                      std::vector<int32_t>* out) const {
  if (spec_.kind == TokenizerKind::kSentencePiece) {
    EncodeSentencePiece(text, spec_.add_space_prefix && after_token, out);
    return absl::OkStatus();
  }
  std::string normalized;
  if (!spec_.normalizer.empty()) {
    HERD_ASSIGN_OR_RETURN(normalized, spec_.normalizer.Apply(text));
    text = normalized;
  }
  std::vector<tokenizer::AddedTokenMatcher::Fragment> fragments;
  if (normalized_matcher_.empty()) {
    if (!text.empty()) fragments.push_back({-1, 0, static_cast<uint32_t>(text.size())});
  } else {
    normalized_matcher_.Split(text, /*parse_special=*/true, &fragments);
  }
  tokenizer::PreTokenized pieces;
  std::vector<Symbol> symbols;
  for (const auto& fragment : fragments) {
    if (fragment.id >= 0) {
      out->push_back(fragment.id);
      continue;
    }
    const absl::string_view part = text.substr(fragment.begin, fragment.end - fragment.begin);
    if (spec_.pre_tokenizer.empty()) {
      EncodePiece(part, false, &symbols, out);
      continue;
    }
    HERD_RETURN_IF_ERROR(spec_.pre_tokenizer.Run(part, at_start && fragment.begin == 0, &pieces));
    for (const auto& piece : pieces.pieces) {
      EncodePiece(pieces.piece_text(piece), pieces.byte_mapped, &symbols, out);
    }
  }
  return absl::OkStatus();
}

void Tokenizer::EncodeSentencePiece(absl::string_view text, bool add_prefix,
                                    std::vector<int32_t>* out) const {
  std::string escaped;
  escaped.reserve(text.size() + text.size() / 2 + kSpaceMarkBytes);
  if (add_prefix) escaped.append(kSpaceMark);
  for (char c : text) {
    if (c == ' ') {
      escaped.append(kSpaceMark);
    } else {
      escaped.push_back(c);
    }
  }
  std::vector<Symbol> symbols;
  auto run = [&](absl::string_view chunk) {
    symbols.clear();
    for (size_t pos = 0; pos < chunk.size();) {
      const size_t len = CharLength(chunk, pos);
      const absl::string_view ch = chunk.substr(pos, len);
      int32_t id = kNoToken;
      if (auto it = ids_.find(ch); it != ids_.end()) {
        id = it->second;
      } else if (auto cit = char_ids_.find(ch); cit != char_ids_.end()) {
        id = cit->second;
      }
      symbols.push_back({id, static_cast<uint32_t>(pos), static_cast<uint32_t>(pos + len)});
      pos += len;
    }
    merges_.Apply(&symbols);
    EmitSymbols(chunk, symbols, out);
  };
  const absl::string_view all = escaped;
  if (!spm_can_split_) {
    run(all);
    return;
  }
  // Cut before every "▁" that follows another character: no token spans such a cut.
  size_t chunk_begin = 0;
  bool previous_is_mark = false;
  for (size_t pos = 0; pos < all.size();) {
    const bool is_mark = all.substr(pos, kSpaceMarkBytes) == kSpaceMark;
    if (is_mark && !previous_is_mark && pos > chunk_begin) {
      run(all.substr(chunk_begin, pos - chunk_begin));
      chunk_begin = pos;
    }
    previous_is_mark = is_mark;
    pos += is_mark ? kSpaceMarkBytes : CharLength(all, pos);
  }
  if (chunk_begin < all.size()) run(all.substr(chunk_begin));
}

void Tokenizer::EncodePiece(absl::string_view piece, bool byte_mapped, std::vector<Symbol>* symbols,
                            std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  symbols->clear();
  if (spec_.kind == TokenizerKind::kByteLevelBpe) {
    std::string unmapped;
    if (byte_mapped) {
      unmapped = ByteLevelMap::Get().Decode(piece);
    }
    const absl::string_view bytes = byte_mapped ? absl::string_view(unmapped) : piece;
    if (spec_.ignore_merges) {
      const std::string mapped =
          byte_mapped ? std::string(piece) : ByteLevelMap::Get().Encode(bytes);
      if (auto it = ids_.find(mapped); it != ids_.end()) {
        out->push_back(it->second);
        return;
      }
    }
    symbols->reserve(bytes.size());
    for (size_t i = 0; i < bytes.size(); ++i) {
      symbols->push_back({byte_tokens_[static_cast<uint8_t>(bytes[i])], static_cast<uint32_t>(i),
                          static_cast<uint32_t>(i + 1)});
    }
    merges_.Apply(symbols);
    EmitSymbols(bytes, *symbols, out);
    return;
  }
  // Character-level BPE (tokenizer.json without ByteLevel).
  if (spec_.ignore_merges) {
    if (auto it = ids_.find(piece); it != ids_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  for (size_t pos = 0; pos < piece.size();) {
    const size_t len = CharLength(piece, pos);
    const absl::string_view ch = piece.substr(pos, len);
    const uint32_t begin = static_cast<uint32_t>(pos);
    pos += len;
    if (auto it = ids_.find(ch); it != ids_.end()) {
      symbols->push_back({it->second, begin, static_cast<uint32_t>(pos)});
      continue;
    }
    bool all_bytes = spec_.byte_fallback;
    for (size_t i = 0; all_bytes && i < len; ++i) {
      all_bytes = byte_tokens_[static_cast<uint8_t>(ch[i])] != kNoToken;
    }
    if (all_bytes) {
      for (size_t i = 0; i < len; ++i) {
        symbols->push_back({byte_tokens_[static_cast<uint8_t>(ch[i])],
                            static_cast<uint32_t>(begin + i),
                            static_cast<uint32_t>(begin + i + 1)});
      }
    } else if (spec_.unk_id >= 0) {
      if (spec_.fuse_unk && !symbols->empty() && symbols->back().id == spec_.unk_id) {
        symbols->back().end = static_cast<uint32_t>(pos);
      } else {
        symbols->push_back({spec_.unk_id, begin, static_cast<uint32_t>(pos)});
      }
    }
    // Without byte fallback or an unknown token the character is dropped,
    // as Hugging Face's BPE does.
  }
  merges_.Apply(symbols);
  EmitSymbols(piece, *symbols, out);
}

void Tokenizer::EmitSymbols(absl::string_view text, const std::vector<Symbol>& symbols,
                            std::vector<int32_t>* out) const {
  const int32_t vocab = vocab_size();
  for (const Symbol& symbol : symbols) {
    if (symbol.id >= 0 && symbol.id < vocab) {
      out->push_back(symbol.id);
      continue;
    }
    // Not a token: its bytes, as byte tokens where the vocabulary has them.
    for (uint32_t i = symbol.begin; i < symbol.end; ++i) {
      const int32_t id = byte_tokens_[static_cast<uint8_t>(text[i])];
      if (id != kNoToken) {
        out->push_back(id);
      } else {
        EmitUnknown(out);
      }
    }
  }
}

void Tokenizer::EmitUnknown(std::vector<int32_t>* out) const {
  if (spec_.unk_id < 0) return;
  if (spec_.fuse_unk && !out->empty() && out->back() == spec_.unk_id) return;
  out->push_back(spec_.unk_id);
}

absl::Status Tokenizer::AppendDecoded(int32_t id, const DecodeOptions& options, bool* started,
                                      std::string* out) const {
  if (id < 0 || id >= vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary (",
                                                   vocab_size(), " tokens) of ", spec_.source));
  }
  absl::string_view piece = decoded_[id];
  switch (spec_.types[id]) {
    case TokenType::kControl:
    case TokenType::kUnused:
      if (!options.render_special) return absl::OkStatus();
      piece = spec_.tokens[id];
      break;
    case TokenType::kUnknown:
      piece = options.render_special ? absl::string_view(spec_.tokens[id])
                                     : absl::string_view("\xEF\xBF\xBD");
      break;
    default:
      break;
  }
  const bool is_text =
      spec_.types[id] == TokenType::kNormal || spec_.types[id] == TokenType::kUserDefined;
  if (!*started && !spec_.metaspace_first_token_drops.empty()) {
    // Hugging Face's Metaspace decoder: the first token it sees keeps none
    // of its replacement characters.
    *started = true;
    if (options.strip_space_prefix && is_text) {
      std::string first = ReplaceAll(spec_.tokens[id], spec_.metaspace_first_token_drops, "");
      for (const auto& [from, to] : spec_.decode_replacements) first = ReplaceAll(first, from, to);
      out->append(first);
      return absl::OkStatus();
    }
  }
  if (piece.empty()) return absl::OkStatus();
  if (!*started) {
    *started = true;
    if (options.strip_space_prefix && spec_.strips_space_prefix && piece[0] == ' ' && is_text) {
      piece.remove_prefix(1);
    }
  }
  out->append(piece.data(), piece.size());
  return absl::OkStatus();
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              const DecodeOptions& options) const {
  std::string bytes;
  bool started = false;
  for (int32_t id : ids) HERD_RETURN_IF_ERROR(AppendDecoded(id, options, &started, &bytes));
  return tokenizer::SanitizeUtf8(bytes);
}

absl::StatusOr<std::string> Tokenizer::TokenBytes(int32_t id, bool render_special) const {
  DecodeOptions options;
  options.render_special = render_special;
  options.strip_space_prefix = false;
  std::string out;
  bool started = true;
  HERD_RETURN_IF_ERROR(AppendDecoded(id, options, &started, &out));
  return out;
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, DecodeOptions options)
    : tokenizer_(tokenizer), options_(options) {}

absl::StatusOr<std::string> StreamDecoder::Next(int32_t id) {
  HERD_RETURN_IF_ERROR(tokenizer_.AppendDecoded(id, options_, &started_, &pending_));
  const size_t complete = tokenizer::CompleteUtf8Prefix(pending_);
  std::string out = tokenizer::SanitizeUtf8(absl::string_view(pending_).substr(0, complete));
  pending_.erase(0, complete);
  return out;
}

std::string StreamDecoder::Finish() {
  std::string out = tokenizer::SanitizeUtf8(pending_);
  pending_.clear();
  started_ = false;
  return out;
}

}  // namespace herd
