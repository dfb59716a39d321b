#include "model/tokenizer/unicode.h"

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utypes.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace herd::tokenizer {
namespace {

enum class SeqKind { kValid, kIncomplete, kInvalid };

// Classifies the UTF-8 sequence at p[0..n) (n >= 1). kValid: *len is its
// length. kIncomplete: all n bytes are a well-formed prefix of a longer
// sequence. kInvalid: *len is the maximal subpart to replace by one U+FFFD.
SeqKind Classify(const uint8_t* p, size_t n, size_t* len) {
  const uint8_t b0 = p[0];
  if (b0 < 0x80) {
    *len = 1;
    return SeqKind::kValid;
  }
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *len = 1;
    return SeqKind::kInvalid;
  }
  for (size_t i = 1; i < need; ++i) {
    if (i >= n) {
      *len = n;
      return SeqKind::kIncomplete;
    }
    const uint8_t b = p[i];
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      *len = i;
      return SeqKind::kInvalid;
    }
  }
  *len = need;
  return SeqKind::kValid;
}

const UNormalizer2* GetNormalizer(NormalizationForm form, UErrorCode* error) {
  switch (form) {
    case NormalizationForm::kNfc:
      return unorm2_getNFCInstance(error);
    case NormalizationForm::kNfd:
      return unorm2_getNFDInstance(error);
    case NormalizationForm::kNfkc:
      return unorm2_getNFKCInstance(error);
    case NormalizationForm::kNfkd:
      return unorm2_getNFKDInstance(error);
  }
  *error = U_ILLEGAL_ARGUMENT_ERROR;
  return nullptr;
}

bool IsAscii(absl::string_view text) {
  for (char c : text) {
    if (static_cast<uint8_t>(c) >= 0x80) return false;
  }
  return true;
}

absl::StatusOr<std::vector<UChar>> ToUtf16(absl::string_view text) {
  UErrorCode error = U_ZERO_ERROR;
  int32_t length = 0;
  u_strFromUTF8(nullptr, 0, &length, text.data(), static_cast<int32_t>(text.size()), &error);
  if (error != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(error)) {
    return absl::InternalError(absl::StrCat("ICU u_strFromUTF8: ", u_errorName(error)));
  }
  std::vector<UChar> out(static_cast<size_t>(length) + 1);
  error = U_ZERO_ERROR;
  u_strFromUTF8(out.data(), static_cast<int32_t>(out.size()), &length, text.data(),
                static_cast<int32_t>(text.size()), &error);
  if (U_FAILURE(error)) {
    return absl::InternalError(absl::StrCat("ICU u_strFromUTF8: ", u_errorName(error)));
  }
  out.resize(static_cast<size_t>(length));
  return out;
}

absl::StatusOr<std::string> ToUtf8(const UChar* text, int32_t length) {
  UErrorCode error = U_ZERO_ERROR;
  int32_t out_length = 0;
  u_strToUTF8(nullptr, 0, &out_length, text, length, &error);
  if (error != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(error)) {
    return absl::InternalError(absl::StrCat("ICU u_strToUTF8: ", u_errorName(error)));
  }
  std::string out(static_cast<size_t>(out_length) + 1, '\0');
  error = U_ZERO_ERROR;
  u_strToUTF8(out.data(), static_cast<int32_t>(out.size()), &out_length, text, length, &error);
  if (U_FAILURE(error)) {
    return absl::InternalError(absl::StrCat("ICU u_strToUTF8: ", u_errorName(error)));
  }
  out.resize(static_cast<size_t>(out_length));
  return out;
}

}  // namespace

absl::Status ValidateUtf8(absl::string_view text) {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, eight bytes at a time.
    while (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, p + i, 8);
      if (word & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    size_t len = 0;
    const SeqKind kind = Classify(p + i, n - i, &len);
    if (kind != SeqKind::kValid) {
      std::string bytes;
      for (size_t j = i; j < n && j < i + 4; ++j) {
        absl::StrAppend(&bytes, j > i ? " " : "", absl::StrFormat("%02x", p[j]));
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "text is not valid UTF-8: ", kind == SeqKind::kIncomplete ? "truncated" : "bad",
          " sequence at byte ", i, " (bytes ", bytes, ")"));
    }
    i += len;
  }
  return absl::OkStatus();
}

size_t Utf8SequenceLength(absl::string_view text) {
  if (text.empty()) return 0;
  size_t len = 0;
  return Classify(reinterpret_cast<const uint8_t*>(text.data()), text.size(), &len) ==
                 SeqKind::kValid
             ? len
             : 0;
}

uint32_t DecodeUtf8(absl::string_view text, size_t* pos) {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data()) + *pos;
  const uint8_t b0 = p[0];
  if (b0 < 0x80) {
    *pos += 1;
    return b0;
  }
  if (b0 < 0xE0) {
    *pos += 2;
    return ((b0 & 0x1Fu) << 6) | (p[1] & 0x3Fu);
  }
  if (b0 < 0xF0) {
    *pos += 3;
    return ((b0 & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
  }
  *pos += 4;
  return ((b0 & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t CompleteUtf8Prefix(absl::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    size_t len = 0;
    if (Classify(p + i, n - i, &len) == SeqKind::kIncomplete) return i;
    i += len;
  }
  return n;
}

std::string SanitizeUtf8(absl::string_view bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const size_t n = bytes.size();
  std::string out;
  out.reserve(n);
  size_t i = 0;
  while (i < n) {
    size_t len = 0;
    if (Classify(p + i, n - i, &len) == SeqKind::kValid) {
      out.append(bytes.data() + i, len);
    } else {
      out.append("\xEF\xBF\xBD");
    }
    i += len;
  }
  return out;
}

const ByteLevelMap& ByteLevelMap::Get() {
  static const ByteLevelMap* const kMap = new ByteLevelMap();
  return *kMap;
}

ByteLevelMap::ByteLevelMap() {
  bytes_.fill(-1);
  // Bytes that are printable and not whitespace keep their own code point;
  // the others get U+0100, U+0101, ... in byte order (GPT-2's bytes_to_unicode).
  uint32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const uint32_t cp = keep ? static_cast<uint32_t>(b) : next++;
    AppendUtf8(cp, &chars_[b]);
    bytes_[cp] = static_cast<int16_t>(b);
  }
}

std::string ByteLevelMap::Encode(absl::string_view bytes) const {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += chars_[static_cast<uint8_t>(c)];
  return out;
}

std::string ByteLevelMap::Decode(absl::string_view text) const {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t start = pos;
    const size_t len = Utf8SequenceLength(text.substr(pos));
    if (len == 0) {  // not UTF-8: copy the byte as it is
      out.push_back(text[pos++]);
      continue;
    }
    const uint32_t cp = DecodeUtf8(text, &pos);
    const int b = ByteFor(cp);
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(text.data() + start, len);
    }
  }
  return out;
}

absl::StatusOr<std::string> Normalize(absl::string_view text, NormalizationForm form) {
  // Every normalization form leaves ASCII unchanged.
  if (IsAscii(text)) return std::string(text);
  UErrorCode error = U_ZERO_ERROR;
  const UNormalizer2* normalizer = GetNormalizer(form, &error);
  if (U_FAILURE(error) || normalizer == nullptr) {
    return absl::InternalError(absl::StrCat("ICU normalizer: ", u_errorName(error)));
  }
  auto utf16 = ToUtf16(text);
  if (!utf16.ok()) return utf16.status();
  const int32_t src_length = static_cast<int32_t>(utf16->size());
  std::vector<UChar> dest(static_cast<size_t>(src_length) * 4 + 16);
  int32_t length = unorm2_normalize(normalizer, utf16->data(), src_length, dest.data(),
                                    static_cast<int32_t>(dest.size()), &error);
  if (error == U_BUFFER_OVERFLOW_ERROR) {
    dest.resize(static_cast<size_t>(length) + 1);
    error = U_ZERO_ERROR;
    length = unorm2_normalize(normalizer, utf16->data(), src_length, dest.data(),
                              static_cast<int32_t>(dest.size()), &error);
  }
  if (U_FAILURE(error)) {
    return absl::InternalError(absl::StrCat("ICU unorm2_normalize: ", u_errorName(error)));
  }
  return ToUtf8(dest.data(), length);
}

absl::StatusOr<std::string> Lowercase(absl::string_view text) {
  if (IsAscii(text)) {
    std::string out(text);
    for (char& c : out) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    return out;
  }
  auto utf16 = ToUtf16(text);
  if (!utf16.ok()) return utf16.status();
  const int32_t src_length = static_cast<int32_t>(utf16->size());
  std::vector<UChar> dest(static_cast<size_t>(src_length) * 2 + 16);
  UErrorCode error = U_ZERO_ERROR;
  int32_t length = u_strToLower(dest.data(), static_cast<int32_t>(dest.size()), utf16->data(),
                                src_length, "", &error);
  if (error == U_BUFFER_OVERFLOW_ERROR) {
    dest.resize(static_cast<size_t>(length) + 1);
    error = U_ZERO_ERROR;
    length = u_strToLower(dest.data(), static_cast<int32_t>(dest.size()), utf16->data(), src_length,
                          "", &error);
  }
  if (U_FAILURE(error)) {
    return absl::InternalError(absl::StrCat("ICU u_strToLower: ", u_errorName(error)));
  }
  return ToUtf8(dest.data(), length);
}

bool IsWhiteSpace(uint32_t code_point) {
  return u_hasBinaryProperty(static_cast<UChar32>(code_point), UCHAR_WHITE_SPACE);
}

bool IsAlphanumeric(uint32_t code_point) { return u_isalnum(static_cast<UChar32>(code_point)); }

}  // namespace herd::tokenizer
