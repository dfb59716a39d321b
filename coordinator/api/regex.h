// A regular expression compiled to a DFA over Unicode code points, for
// guided decoding: JSON Schema's `pattern` and `format`, vLLM's
// guided_regex and guided_choice. The DFA's states only ever lead to a
// match (states that cannot are cut), so a text Next accepts can always be
// finished.
//
// The syntax is ECMAScript's (JSON Schema's dialect) without what a DFA
// cannot do: literals and escapes (\n \t \r \f \v \0 \xHH \uHHHH, \. and
// other punctuation), . (not a line terminator), classes [a-z] [^...],
// \d \w \s and their negations (ASCII digits and word characters, as
// ECMAScript), groups ( ), (?: ), (?<name> ), alternation |, quantifiers
// * + ? {n} {n,} {n,m} (lazy forms alike), ^ first and $ last. Refused by
// name: backreferences, lookaround, \b and \B, anchors elsewhere, flags.
// Surrogate code points (U+D800-U+DFFF) are never matched: no UTF-8 text
// or JSON escape Herd takes can write one.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace herd {

class Regex {
 public:
  // Caps on what one pattern may compile to (InvalidArgument past them).
  static constexpr int kMaxNfaStates = 20000;
  static constexpr int kMaxDfaStates = 4096;
  static constexpr int kMaxRepeat = 1000;
  // MayTake's bound that bounds nothing.
  static constexpr int64_t kUnbounded = INT64_MAX;

  enum class Mode {
    kFullMatch,  // the whole text matches (guided_regex, guided_choice, format)
    kSearch,     // a match anywhere in the text (JSON Schema's pattern) unless
                 // the pattern starts with ^ / ends with $
  };

  // InvalidArgument naming what is wrong and where (a byte offset) for bad
  // syntax, a construct outside the subset, a pattern no text matches, or
  // one past the caps.
  static absl::StatusOr<std::shared_ptr<const Regex>> Compile(absl::string_view pattern, Mode mode);

  // The state before any text.
  int32_t start() const { return 0; }
  // The state after `state` and code point `c`; -1 if no text that goes on
  // this way matches.
  int32_t Next(int32_t state, uint32_t c) const;
  // The text read so far matches.
  bool accepting(int32_t state) const { return accepting_[state]; }
  // Some code point may follow.
  bool may_continue(int32_t state) const { return may_continue_[state]; }
  // The fewest code points that take `state` to a match.
  int32_t min_to_accept(int32_t state) const { return min_to_accept_[state]; }
  // Some code point in [lo, hi] takes `state` to a state at most
  // `max_to_accept` code points from a match (for a code point read a byte
  // at a time: the ones its bytes so far leave possible).
  bool MayTake(int32_t state, uint32_t lo, uint32_t hi, int64_t max_to_accept) const;

 private:
  friend class RegexCompiler;

  // Code point classes: class i is [class_starts_[i], class_starts_[i + 1]).
  std::vector<uint32_t> class_starts_;
  int32_t num_classes_ = 0;
  // next_[state * num_classes_ + class]: -1 for none.
  std::vector<int32_t> next_;
  std::vector<bool> accepting_;
  std::vector<bool> may_continue_;
  std::vector<int32_t> min_to_accept_;
};

}  // namespace herd
