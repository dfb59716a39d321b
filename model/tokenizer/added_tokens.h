// Recognises added tokens (special, control and user-defined tokens such as
// "<|im_start|>" or "</s>") written literally in text, so they become single
// ids instead of being cut into pieces.
//
// Matching is leftmost-longest over a byte trie. Special tokens (control and
// unknown in GGUF, `special: true` in tokenizer.json) are only matched when
// the caller asks for it; user-defined tokens always are, as in the models'
// own tokenizers. Built once, then immutable; Split is thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace herd::tokenizer {

struct AddedToken {
  int32_t id = 0;
  std::string text;
  bool special = false;      // matched only when parse_special is asked for
  bool lstrip = false;       // a match also swallows whitespace on its left
  bool rstrip = false;       // ... and on its right
  bool single_word = false;  // matches only when not inside a word
  bool normalized = false;   // matched against normalized text (tokenizer.json)
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher();
  // Adds `token`; empty texts are ignored. A later token with the same text
  // replaces an earlier one.
  void Add(const AddedToken& token);
  bool empty() const { return tokens_.empty(); }

  // A run of `text`: a matched token (id >= 0) or plain text (id < 0).
  struct Fragment {
    int32_t id;
    uint32_t begin;
    uint32_t end;
  };
  // Cuts valid UTF-8 `text` into plain-text runs and matched tokens, in order;
  // empty plain-text runs are left out. Appends to `out`.
  void Split(absl::string_view text, bool parse_special, std::vector<Fragment>* out) const;

 private:
  struct Node {
    int32_t token_idx = -1;
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
  };
  int32_t Child(int32_t node, uint8_t byte) const;
  // Length of the longest acceptable token at text[pos], 0 if none.
  size_t LongestMatch(absl::string_view text, size_t pos, bool parse_special,
                      int32_t* token_idx) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;
  std::array<int32_t, 256> root_children_;
};

}  // namespace herd::tokenizer
