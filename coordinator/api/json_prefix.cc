#include "coordinator/api/json_prefix.h"

namespace herd {
namespace {

bool IsWhitespaceByte(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }
bool IsHexDigit(uint8_t c) {
  return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

}  // namespace

bool JsonPrefix::Push(absl::string_view bytes) {
  for (const char c : bytes) {
    if (!Push(static_cast<uint8_t>(c))) return false;
  }
  return true;
}

bool JsonPrefix::Push(uint8_t c) {
  switch (mode_) {
    case Mode::kStart:
      if (c != '{') return false;
      return StartValue(c);
    case Mode::kDone:
      return false;
    case Mode::kString:
      if (utf8_left_ > 0) {
        if (c < utf8_low_ || c > utf8_high_) return false;
        --utf8_left_;
        utf8_low_ = 0x80;
        utf8_high_ = 0xBF;
        return true;
      }
      if (c == '"') {
        if (string_is_key_) {
          mode_ = Mode::kColon;
          string_is_key_ = false;
        } else {
          EndValue();
        }
        return true;
      }
      if (c == '\\') {
        mode_ = Mode::kEscape;
        return true;
      }
      if (c < 0x20) return false;
      if (c < 0x80) return true;
      // The lead byte of a UTF-8 sequence (RFC 3629: no overlongs, no
      // surrogates, nothing past U+10FFFF).
      if (c >= 0xC2 && c <= 0xDF) {
        utf8_left_ = 1;
      } else if (c >= 0xE0 && c <= 0xEF) {
        utf8_left_ = 2;
        if (c == 0xE0) utf8_low_ = 0xA0;
        if (c == 0xED) utf8_high_ = 0x9F;
      } else if (c >= 0xF0 && c <= 0xF4) {
        utf8_left_ = 3;
        if (c == 0xF0) utf8_low_ = 0x90;
        if (c == 0xF4) utf8_high_ = 0x8F;
      } else {
        return false;
      }
      return true;
    case Mode::kEscape:
      if (c == 'u') {
        mode_ = Mode::kUnicode;
        hex_left_ = 4;
        return true;
      }
      if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
          c == 't') {
        mode_ = Mode::kString;
        return true;
      }
      return false;
    case Mode::kUnicode:
      if (!IsHexDigit(c)) return false;
      // No \uD800-\uDFFF: a lone surrogate is not text, and a pair can be
      // written as the UTF-8 it stands for.
      if (hex_left_ == 4) {
        escape_starts_with_d_ = c == 'd' || c == 'D';
      } else if (hex_left_ == 3 && escape_starts_with_d_ && (!IsDigit(c) || c >= '8')) {
        return false;
      }
      if (--hex_left_ == 0) {
        mode_ = Mode::kString;
        escape_starts_with_d_ = false;
      }
      return true;
    case Mode::kLiteral:
      if (c != static_cast<uint8_t>(literal_[literal_pos_])) return false;
      if (literal_[++literal_pos_] == '\0') EndValue();
      return true;
    case Mode::kNumber:
      switch (number_) {
        case Number::kMinus:
          if (c == '0') {
            number_ = Number::kZero;
          } else if (IsDigit(c)) {
            number_ = Number::kInteger;
          } else {
            return false;
          }
          return true;
        case Number::kZero:
        case Number::kInteger:
          if (IsDigit(c) && number_ == Number::kInteger) return true;
          if (c == '.') {
            number_ = Number::kPoint;
            return true;
          }
          if (c == 'e' || c == 'E') {
            number_ = Number::kExponent;
            return true;
          }
          break;  // the number ends before `c`
        case Number::kPoint:
          if (!IsDigit(c)) return false;
          number_ = Number::kFraction;
          return true;
        case Number::kFraction:
          if (IsDigit(c)) return true;
          if (c == 'e' || c == 'E') {
            number_ = Number::kExponent;
            return true;
          }
          break;
        case Number::kExponent:
          if (c == '+' || c == '-') {
            number_ = Number::kExpSign;
            return true;
          }
          if (!IsDigit(c)) return false;
          number_ = Number::kExpDigits;
          return true;
        case Number::kExpSign:
          if (!IsDigit(c)) return false;
          number_ = Number::kExpDigits;
          return true;
        case Number::kExpDigits:
          if (IsDigit(c)) return true;
          break;
      }
      EndValue();
      return Push(c);
    case Mode::kValue:
    case Mode::kKeyOrEnd:
    case Mode::kKey:
    case Mode::kColon:
    case Mode::kCommaOrEnd:
    case Mode::kValueOrEnd:
      if (IsWhitespaceByte(c)) return ++whitespace_run_ <= kMaxWhitespaceRun;
      whitespace_run_ = 0;
      break;
  }
  switch (mode_) {
    case Mode::kValue:
      return StartValue(c);
    case Mode::kKeyOrEnd:
      if (c == '}') return AfterValue(c);
      [[fallthrough]];
    case Mode::kKey:
      if (c != '"') return false;
      mode_ = Mode::kString;
      string_is_key_ = true;
      return true;
    case Mode::kColon:
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kCommaOrEnd:
      return AfterValue(c);
    case Mode::kValueOrEnd:
      if (c == ']') return AfterValue(c);
      return StartValue(c);
    default:
      return false;
  }
}

bool JsonPrefix::StartValue(uint8_t c) {
  if (c == '{' || c == '[') {
    if (depth_ >= kMaxDepth) return false;
    if (c == '{') containers_ |= uint64_t{1} << depth_;
    ++depth_;
    mode_ = c == '{' ? Mode::kKeyOrEnd : Mode::kValueOrEnd;
    return true;
  }
  if (c == '"') {
    mode_ = Mode::kString;
    string_is_key_ = false;
    return true;
  }
  if (c == '-' || IsDigit(c)) {
    mode_ = Mode::kNumber;
    number_ = c == '-' ? Number::kMinus : c == '0' ? Number::kZero : Number::kInteger;
    return true;
  }
  const char* literal = c == 't' ? "true" : c == 'f' ? "false" : c == 'n' ? "null" : nullptr;
  if (literal == nullptr) return false;
  mode_ = Mode::kLiteral;
  literal_ = literal;
  literal_pos_ = 1;
  return true;
}

bool JsonPrefix::AfterValue(uint8_t c) {
  if (c == ',') {
    mode_ = in_object() ? Mode::kKey : Mode::kValue;
    return true;
  }
  if ((c == '}' && !in_object()) || (c == ']' && in_object()) || (c != '}' && c != ']')) {
    return false;
  }
  --depth_;
  containers_ &= ~(uint64_t{1} << depth_);  // no stale bit above the open containers
  if (depth_ == 0) {
    mode_ = Mode::kDone;
  } else {
    EndValue();
  }
  return true;
}

void JsonPrefix::EndValue() {
  mode_ = Mode::kCommaOrEnd;
  // What only the value's own bytes needed: equal states compare equal.
  number_ = Number::kMinus;
  literal_ = nullptr;
  literal_pos_ = 0;
}

}  // namespace herd
