#include "coordinator/api/regex_prefix.h"

namespace herd {

bool RegexPrefix::Push(absl::string_view bytes) {
  for (const char c : bytes) {
    if (!Push(static_cast<uint8_t>(c))) return false;
  }
  return true;
}

bool RegexPrefix::Push(uint8_t c) {
  if (utf8_left_ > 0) {
    if (c < utf8_low_ || c > utf8_high_) return false;
    utf8_low_ = 0x80;
    utf8_high_ = 0xBF;
    code_point_ = (code_point_ << 6) | (c & 0x3F);
    if (--utf8_left_ > 0) {
      // The code points these bytes may still begin.
      const int bits = 6 * utf8_left_;
      return regex_->MayTake(state_, code_point_ << bits, ((code_point_ + 1) << bits) - 1,
                             Regex::kUnbounded);
    }
    const int32_t next = regex_->Next(state_, code_point_);
    if (next < 0) return false;
    state_ = next;
    code_point_ = 0;
    return true;
  }
  if (c < 0x80) {
    const int32_t next = regex_->Next(state_, c);
    if (next < 0) return false;
    state_ = next;
    return true;
  }
  int bits = 0;
  if (c >= 0xC2 && c <= 0xDF) {
    utf8_left_ = 1;
    code_point_ = c & 0x1F;
    bits = 6;
  } else if (c >= 0xE0 && c <= 0xEF) {
    utf8_left_ = 2;
    code_point_ = c & 0x0F;
    bits = 12;
    if (c == 0xE0) utf8_low_ = 0xA0;
    if (c == 0xED) utf8_high_ = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    utf8_left_ = 3;
    code_point_ = c & 0x07;
    bits = 18;
    if (c == 0xF0) utf8_low_ = 0x90;
    if (c == 0xF4) utf8_high_ = 0x8F;
  } else {
    return false;
  }
  // E0 and F0 begin no overlong forms.
  const uint32_t lo = c == 0xE0 ? 0x800 : c == 0xF0 ? 0x10000 : code_point_ << bits;
  return regex_->MayTake(state_, lo, ((code_point_ + 1) << bits) - 1, Regex::kUnbounded);
}

}  // namespace herd
