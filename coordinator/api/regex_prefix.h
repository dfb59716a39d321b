// A byte-at-a-time recognizer of the prefixes of UTF-8 texts a Regex
// matches whole, as vLLM's guided_regex and guided_choice constrain
// generated text to: Push takes the next byte if some continuation could
// still make a match of the text, and refuses it otherwise. The state is a
// few bytes: copying it to try a token is cheap.
#pragma once

#include <cstdint>
#include <utility>

#include "absl/strings/string_view.h"
#include "coordinator/api/regex.h"

namespace herd {

class RegexPrefix {
 public:
  using Grammar = Regex;

  // `regex` is borrowed and must outlive the prefix and its copies.
  explicit RegexPrefix(const Regex* regex) : regex_(regex), state_(regex->start()) {}

  // Takes `c` if the text so far plus `c` is a prefix of a match (valid
  // UTF-8 without surrogates); else returns false and the state may be
  // anything (try on a copy).
  bool Push(uint8_t c);
  // Push of every byte of `bytes`, stopping at the first refused one.
  bool Push(absl::string_view bytes);
  // The text matches and nothing may follow.
  bool complete() const { return may_end() && !regex_->may_continue(state_); }
  // The text matches (more may follow).
  bool may_end() const { return utf8_left_ == 0 && regex_->accepting(state_); }
  // Guided JSON's shortcut inside strings does not apply: -1.
  int64_t PlainStringRoom() const { return -1; }

  friend bool operator==(const RegexPrefix& a, const RegexPrefix& b) {
    return a.regex_ == b.regex_ && a.state_ == b.state_ && a.utf8_left_ == b.utf8_left_ &&
           a.utf8_low_ == b.utf8_low_ && a.utf8_high_ == b.utf8_high_ &&
           a.code_point_ == b.code_point_;
  }
  template <typename H>
  friend H AbslHashValue(H h, const RegexPrefix& p) {
    return H::combine(std::move(h), p.regex_, p.state_, p.utf8_left_, p.utf8_low_, p.utf8_high_,
                      p.code_point_);
  }

 private:
  const Regex* regex_;
  int32_t state_;
  // A UTF-8 sequence being read: continuation bytes to go, the range the
  // next one must be in (it narrows for the second byte of some sequences:
  // no overlongs, no surrogates), and its bits so far.
  uint8_t utf8_left_ = 0;
  uint8_t utf8_low_ = 0x80;
  uint8_t utf8_high_ = 0xBF;
  uint32_t code_point_ = 0;
};

}  // namespace herd
