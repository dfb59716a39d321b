// UTF-8 and Unicode helpers for the tokenizers.
//
// UTF-8 validation and decoding are byte-level code (no character classes);
// everything that needs Unicode character data (normalization forms, case
// mapping, whitespace and letter/number properties) goes through ICU, the
// Unicode library Debian ships (libicu-dev). Regex character classes such as
// \p{L} and \p{N} go through PCRE2 (see regex.h), which carries its own
// Unicode tables. All functions are thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace herd::tokenizer {

// OK when `text` is well-formed UTF-8 (no overlong forms, surrogates or code
// points above U+10FFFF). Otherwise InvalidArgument naming the byte offset of
// the first bad sequence and its bytes.
absl::Status ValidateUtf8(absl::string_view text);

// Length in bytes of the well-formed UTF-8 sequence at the start of `text`,
// or 0 when `text` is empty or starts with a bad sequence.
size_t Utf8SequenceLength(absl::string_view text);

// Decodes the code point at `text[*pos]` and advances *pos past it. `text`
// must be valid UTF-8 at *pos (checked with ValidateUtf8 beforehand).
uint32_t DecodeUtf8(absl::string_view text, size_t* pos);

// Appends the UTF-8 encoding of `code_point` (<= U+10FFFF, not a surrogate).
void AppendUtf8(uint32_t code_point, std::string* out);

// How many leading bytes of `bytes` can be emitted by a streaming decoder
// now: everything except a trailing multi-byte sequence that is incomplete
// but so far well-formed (more bytes may complete it).
size_t CompleteUtf8Prefix(absl::string_view bytes);

// Replaces every ill-formed subsequence of `bytes` by U+FFFD, one per
// maximal subpart (the Unicode "substitution of maximal subparts" practice,
// which Python and Rust's lossy decoders also follow), and returns valid UTF-8.
std::string SanitizeUtf8(absl::string_view bytes);

// GPT-2's reversible byte <-> character map used by byte-level BPE: printable
// bytes map to themselves as characters, the rest to U+0100 + n.
class ByteLevelMap {
 public:
  // The process-wide map (built once, immutable).
  static const ByteLevelMap& Get();

  // UTF-8 of the character standing for byte `b`.
  const std::string& CharFor(uint8_t b) const { return chars_[b]; }
  // The byte a code point stands for, or -1 when it stands for none.
  int ByteFor(uint32_t code_point) const {
    return code_point < bytes_.size() ? bytes_[code_point] : -1;
  }
  // Maps every byte of `bytes` to its character.
  std::string Encode(absl::string_view bytes) const;
  // Maps the characters of valid UTF-8 `text` back to bytes; characters that
  // stand for no byte are copied unchanged (as Hugging Face's decoder does).
  std::string Decode(absl::string_view text) const;

 private:
  ByteLevelMap();
  std::array<std::string, 256> chars_;
  std::array<int16_t, 324> bytes_;  // code points up to U+0143
};

// Unicode normalization forms, computed by ICU.
enum class NormalizationForm { kNfc, kNfd, kNfkc, kNfkd };
// Normalizes valid UTF-8 `text`. Internal error if ICU fails.
absl::StatusOr<std::string> Normalize(absl::string_view text, NormalizationForm form);
// Full Unicode lowercase mapping of valid UTF-8 `text` (root locale, as
// Rust's str::to_lowercase). Internal error if ICU fails.
absl::StatusOr<std::string> Lowercase(absl::string_view text);

// ICU character properties.
bool IsWhiteSpace(uint32_t code_point);  // Unicode White_Space
bool IsAlphanumeric(uint32_t code_point);

}  // namespace herd::tokenizer
