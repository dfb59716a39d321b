// A byte-at-a-time recognizer of the prefixes of one JSON object (RFC 8259),
// as JSON mode (response_format json_object) constrains generated text to:
// Push takes the next byte if some continuation could still make a whole
// object of the text, and refuses it otherwise.
//
// The top-level value is an object; whitespace between tokens comes in runs
// of at most kMaxWhitespaceRun bytes (enough to indent pretty-printed JSON,
// and no endless newlines), none before the object and none after it.
// Strings must be valid UTF-8 without control characters; nesting is at most
// kMaxDepth deep. The state is a few bytes: copying it to try a token is
// cheap.
#pragma once

#include <cstdint>
#include <utility>

#include "absl/strings/string_view.h"

namespace herd {

class JsonPrefix {
 public:
  static constexpr int kMaxDepth = 64;
  static constexpr int kMaxWhitespaceRun = 16;

  // Takes `c` if the text so far plus `c` is a prefix of some object; else
  // returns false and the state may be anything (try on a copy).
  bool Push(uint8_t c);
  // Push of every byte of `bytes`, stopping at the first refused one.
  bool Push(absl::string_view bytes);
  // The object is whole (nothing more may follow).
  bool complete() const { return mode_ == Mode::kDone; }

  // Equal states take the same bytes alike (masks are cached by state);
  // fields a finished string, number or literal used are reset, so states
  // that behave alike mostly compare equal.
  friend bool operator==(const JsonPrefix& a, const JsonPrefix& b) {
    return a.mode_ == b.mode_ && a.number_ == b.number_ && a.containers_ == b.containers_ &&
           a.depth_ == b.depth_ && a.whitespace_run_ == b.whitespace_run_ &&
           a.string_is_key_ == b.string_is_key_ && a.utf8_left_ == b.utf8_left_ &&
           a.utf8_low_ == b.utf8_low_ && a.utf8_high_ == b.utf8_high_ &&
           a.hex_left_ == b.hex_left_ && a.escape_starts_with_d_ == b.escape_starts_with_d_ &&
           a.literal_ == b.literal_ && a.literal_pos_ == b.literal_pos_;
  }
  template <typename H>
  friend H AbslHashValue(H h, const JsonPrefix& p) {
    return H::combine(std::move(h), p.mode_, p.number_, p.containers_, p.depth_, p.whitespace_run_,
                      p.string_is_key_, p.utf8_left_, p.utf8_low_, p.utf8_high_, p.hex_left_,
                      p.escape_starts_with_d_, p.literal_, p.literal_pos_);
  }

 private:
  enum class Mode : uint8_t {
    kStart,       // before the top-level object
    kValue,       // a value must come
    kKeyOrEnd,    // after '{'
    kKey,         // after ',' in an object
    kColon,       // after a key
    kCommaOrEnd,  // after a value in a container
    kValueOrEnd,  // after '['
    kString,      // inside a string
    kEscape,      // after '\' in a string
    kUnicode,     // inside \uXXXX (hex_left_ digits to go)
    kNumber,      // inside a number (number_ says where)
    kLiteral,     // inside true / false / null
    kDone,        // the object is closed
  };
  enum class Number : uint8_t {
    kMinus,      // "-"
    kZero,       // "0" or "-0"
    kInteger,    // "12"
    kPoint,      // "1."
    kFraction,   // "1.5"
    kExponent,   // "1e"
    kExpSign,    // "1e-"
    kExpDigits,  // "1e5"
  };

  // Handles `c` where a value may start (after ':' or ',' or '[').
  bool StartValue(uint8_t c);
  // Handles `c` after a complete value inside the innermost container.
  bool AfterValue(uint8_t c);
  // A value ended: the container's next expectation.
  void EndValue();
  bool in_object() const { return (containers_ >> (depth_ - 1)) & 1; }

  Mode mode_ = Mode::kStart;
  Number number_ = Number::kMinus;
  // Open containers, innermost at bit depth_ - 1: 1 object, 0 array.
  uint64_t containers_ = 0;
  uint8_t depth_ = 0;
  uint8_t whitespace_run_ = 0;
  bool string_is_key_ = false;
  // UTF-8 continuation bytes still expected in a string, and the range the
  // next one must be in (it narrows for the second byte of some sequences).
  uint8_t utf8_left_ = 0;
  uint8_t utf8_low_ = 0x80;
  uint8_t utf8_high_ = 0xBF;
  uint8_t hex_left_ = 0;
  // The \u escape's first hex digit is 'd' (its second must keep it below
  // \uD800).
  bool escape_starts_with_d_ = false;
  // The literal being read ("true", "false" or "null") and how far.
  const char* literal_ = nullptr;
  uint8_t literal_pos_ = 0;
};

}  // namespace herd
