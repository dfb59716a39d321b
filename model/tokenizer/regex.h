// Unicode regular expressions for pre-tokenizer splits, through PCRE2.
//
// Patterns are compiled in UTF mode with Unicode properties (\p{L}, \p{N},
// \s, case folding use the Unicode tables PCRE2 ships) and JIT-compiled when
// the platform allows. The syntax is PCRE's, which covers what tokenizer.json
// files and llama.cpp's pre-tokenizer tables use: classes, \p{..}, lookahead,
// (?i:...), possessive quantifiers.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace herd::tokenizer {

class Regex {
 public:
  // Compiles `pattern`. InvalidArgument naming the pattern, the offset and
  // PCRE2's message when it does not compile.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(absl::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  const std::string& pattern() const { return pattern_; }

  // Calls `on_match(begin, end)` for each non-overlapping, non-empty match in
  // `subject`, left to right (offsets into `subject`). `subject` must be valid
  // UTF-8 (not re-checked) and is the whole subject: lookarounds and anchors
  // see its ends. Thread-safe (per-thread match state). ResourceExhausted
  // when PCRE2 hits its backtracking limits on a pathological input.
  absl::Status ForEachMatch(absl::string_view subject,
                            const std::function<void(size_t, size_t)>& on_match) const;

 private:
  Regex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace herd::tokenizer
