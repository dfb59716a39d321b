// Text normalization before pre-tokenization: the Hugging Face `normalizer`
// of tokenizer.json (NFC/NFD/NFKC/NFKD, Lowercase, Replace, Prepend, Strip,
// Sequence), and NFC for GGUF vocabularies whose source tokenizer had it.
//
// A Normalizer is built once, then immutable; Apply is thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/tokenizer/regex.h"
#include "model/tokenizer/unicode.h"

namespace herd::tokenizer {

class Normalizer {
 public:
  void AddUnicodeForm(NormalizationForm form);
  void AddLowercase();
  // Replaces every occurrence of the literal `pattern` by `content`.
  void AddReplaceLiteral(std::string pattern, std::string content);
  // Replaces every match of `regex` by `content`.
  void AddReplaceRegex(std::shared_ptr<const Regex> regex, std::string content);
  // Prepends `content` to non-empty text.
  void AddPrepend(std::string content);
  // Removes Unicode White_Space from the left and/or right end.
  void AddStrip(bool left, bool right);

  bool empty() const { return steps_.empty(); }
  // Applies every step in order to valid UTF-8 `text`. Internal error when
  // ICU fails; ResourceExhausted from a pathological regex.
  absl::StatusOr<std::string> Apply(absl::string_view text) const;

 private:
  enum class Kind { kForm, kLowercase, kReplaceLiteral, kReplaceRegex, kPrepend, kStrip };
  struct Step {
    Kind kind;
    NormalizationForm form = NormalizationForm::kNfc;
    std::string pattern;
    std::shared_ptr<const Regex> regex;
    std::string content;
    bool left = false;
    bool right = false;
  };
  std::vector<Step> steps_;
};

}  // namespace herd::tokenizer
