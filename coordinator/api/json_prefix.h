// A byte-at-a-time recognizer of the prefixes of JSON texts (RFC 8259) that
// a JsonSchema accepts, as guided decoding (response_format json_object and
// json_schema) constrains generated text to: Push takes the next byte if
// some continuation could still make a whole value of the text that the
// schema accepts, and refuses it otherwise. It never takes a prefix it
// cannot complete.
//
// Whitespace between tokens comes in runs of at most kMaxWhitespaceRun bytes
// (enough to indent pretty-printed JSON, and no endless newlines), or as the
// schema's whitespace pattern says; none before the value and none after it. Strings must be valid
// UTF-8 without control characters or lone surrogate escapes; nesting is at most kMaxDepth deep.
// Where the schema offers choices (anyOf), each is followed as its own thread until the bytes rule
// it out (at most kMaxThreads at once). The state is small (one thread: about a hundred bytes):
// copying it to try a token is cheap.
#pragma once

#include <cstdint>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/string_view.h"
#include "coordinator/api/json_schema.h"

namespace herd {

class JsonPrefix {
 public:
  using Grammar = JsonSchema;

  static constexpr int kMaxDepth = 64;
  static constexpr int kMaxWhitespaceRun = 16;
  static constexpr int kMaxThreads = 32;

  // `schema` is borrowed and must outlive the prefix and its copies.
  explicit JsonPrefix(const JsonSchema* schema);

  // Takes `c` if the text so far plus `c` is a prefix of some accepted text;
  // else returns false and the state may be anything (try on a copy).
  bool Push(uint8_t c);
  // Push of every byte of `bytes`, stopping at the first refused one.
  bool Push(absl::string_view bytes);
  // The value is whole (nothing more may follow).
  bool complete() const;
  // The text is a whole value: complete() (a value that could go on, a
  // number, never stands at the top level).
  bool may_end() const { return complete(); }
  // Inside a string, where any text of plain characters (no '"', '\',
  // control character or broken UTF-8) of at most this many code points is
  // taken and leaves the state as it was but for the count: that many
  // (JsonSchema::kUnbounded: any). -1 elsewhere (or with several threads).
  int64_t PlainStringRoom() const;

  // Equal states take the same bytes alike (masks are cached by state);
  // fields a finished value used are reset, so states that behave alike
  // mostly compare equal.
  friend bool operator==(const JsonPrefix& a, const JsonPrefix& b) {
    return a.schema_ == b.schema_ && a.threads_ == b.threads_;
  }
  template <typename H>
  friend H AbslHashValue(H h, const JsonPrefix& p) {
    return H::combine(std::move(h), p.schema_, p.threads_);
  }

 private:
  enum class Mode : uint8_t {
    kStart,       // before the top-level value
    kValue,       // a value of `node` must come
    kKeyOrEnd,    // after '{'
    kKey,         // after ',' in an object
    kColon,       // after a key (the value will be of `node`)
    kCommaOrEnd,  // after a value in a container
    kValueOrEnd,  // after '['
    kString,      // inside a string
    kEscape,      // after '\' in a string
    kUnicode,     // inside \uXXXX (hex_left digits to go)
    kNumber,      // inside a number (number says where)
    kLiteral,     // inside one of `candidates` (an enum's texts, or true/false/null)
    kDone,        // the value is whole
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

  // An open object or array.
  struct Frame {
    int32_t node = 0;
    int32_t count = 0;           // arrays: items so far
    uint16_t next_property = 0;  // objects: the first declared property that may still come
    bool object = false;

    friend bool operator==(const Frame& a, const Frame& b) {
      return a.node == b.node && a.count == b.count && a.next_property == b.next_property &&
             a.object == b.object;
    }
    template <typename H>
    friend H AbslHashValue(H h, const Frame& f) {
      return H::combine(std::move(h), f.node, f.count, f.next_property, f.object);
    }
  };

  // One reading of the text so far.
  struct Thread {
    absl::InlinedVector<Frame, 4> frames;
    // kValue, kColon: the node of the value to come; kString, kNumber: the
    // node being read; kLiteral: the enumerated node (-1: true/false/null).
    int32_t node = 0;
    Mode mode = Mode::kStart;
    Number number = Number::kMinus;
    bool integer = false;   // the number may not have a fraction or exponent
    bool key = false;       // the string is an object's key
    bool free_key = false;  // the key need not be a declared property's
    // The whitespace since the last token: how many bytes (kMaxWhitespaceRun
    // at most), or with the schema's whitespace pattern, its state.
    int32_t gap = 0;
    // UTF-8 continuation bytes still expected in a string, and the range the
    // next one must be in (it narrows for the second byte of some sequences).
    uint8_t utf8_left = 0;
    uint8_t utf8_low = 0x80;
    uint8_t utf8_high = 0xBF;
    uint8_t hex_left = 0;
    // The \u escape's first hex digit is 'd' (its second must keep it below
    // \uD800).
    bool escape_starts_with_d = false;
    uint16_t pos = 0;         // bytes of the key or literal read
    uint64_t candidates = 0;  // the declared keys or literals those bytes still match
    int64_t length = 0;       // code points of a string whose node bounds its length
    // A string with a pattern: the pattern's state (-1: none), and the code
    // point being read (a UTF-8 sequence's or a \u escape's bits so far).
    int32_t regex_state = -1;
    uint32_t code_point = 0;
    // A bounded integer (kNumber with `node` its): its sign and the digits'
    // value so far.
    bool negative = false;
    int64_t magnitude = 0;

    friend bool operator==(const Thread& a, const Thread& b) {
      return a.frames == b.frames && a.node == b.node && a.mode == b.mode && a.number == b.number &&
             a.integer == b.integer && a.key == b.key && a.free_key == b.free_key &&
             a.gap == b.gap && a.utf8_left == b.utf8_left && a.utf8_low == b.utf8_low &&
             a.utf8_high == b.utf8_high && a.hex_left == b.hex_left &&
             a.escape_starts_with_d == b.escape_starts_with_d && a.pos == b.pos &&
             a.candidates == b.candidates && a.length == b.length &&
             a.regex_state == b.regex_state && a.code_point == b.code_point &&
             a.negative == b.negative && a.magnitude == b.magnitude;
    }
    template <typename H>
    friend H AbslHashValue(H h, const Thread& t) {
      return H::combine(std::move(h), t.frames, t.node, t.mode, t.number, t.integer, t.key,
                        t.free_key, t.gap, t.utf8_left, t.utf8_low, t.utf8_high, t.hex_left,
                        t.escape_starts_with_d, t.pos, t.candidates, t.length, t.regex_state,
                        t.code_point, t.negative, t.magnitude);
    }
  };
  using Threads = absl::InlinedVector<Thread, 1>;

  // Steps `t` by `c` in place; false if it refuses `c`. A value starting at
  // a choice node continues in `t` as the first choice that takes `c`, and
  // as the others in new threads appended to `forks`.
  bool Step(Thread& t, uint8_t c, Threads* forks) const;
  bool StartValue(Thread& t, int32_t node, uint8_t c, Threads* forks) const;
  // StartValue of a node that is not a choice.
  bool StartOne(Thread& t, int32_t node, uint8_t c) const;
  bool StringByte(Thread& t, uint8_t c) const;
  // A whitespace byte between tokens.
  bool TakeWhitespace(Thread& t, uint8_t c) const;
  // A string's next code point `c` read: false if its pattern (within its
  // maxLength) cannot take it. Clears the code point being read.
  bool Matched(Thread& t, uint32_t c) const;
  // Some code point in [lo, hi] (what a partly read one may still be) keeps
  // the string's pattern matchable.
  bool MayMatch(const Thread& t, uint32_t lo, uint32_t hi) const;
  bool LiteralByte(Thread& t, uint8_t c, Threads* forks) const;
  bool NumberByte(Thread& t, uint8_t c, Threads* forks) const;
  // NumberByte of an integer with bounds.
  bool BoundedIntegerByte(Thread& t, uint8_t c, Threads* forks) const;
  // Some integer that starts with what was read (`number`: after "-", "0"
  // or more digits; `magnitude` their value) is within `n`'s bounds.
  static bool IntegerMayEndIn(const JsonSchema::Node& n, bool negative, int64_t magnitude,
                              Number number);
  bool StartKey(Thread& t) const;
  bool EndKey(Thread& t) const;
  // Handles `c` after a complete value inside the innermost container.
  bool AfterValue(Thread& t, uint8_t c) const;
  bool Close(Thread& t) const;
  // A value ended: the container's next expectation (or the end).
  void EndValue(Thread& t) const;
  // The innermost object may take a key / may close now.
  bool MayTakeKey(const Frame& f) const;
  bool MayClose(const Frame& f) const;

  const JsonSchema* schema_;
  Threads threads_;
};

}  // namespace herd
