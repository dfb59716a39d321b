#include "model/tokenizer/added_tokens.h"

#include <algorithm>

#include "model/tokenizer/unicode.h"

namespace herd::tokenizer {
namespace {

bool IsContinuationByte(char c) { return (static_cast<uint8_t>(c) & 0xC0) == 0x80; }

// The code point that ends just before `pos` (pos > 0, valid UTF-8).
uint32_t CodePointBefore(absl::string_view text, size_t pos) {
  size_t start = pos - 1;
  while (start > 0 && IsContinuationByte(text[start])) --start;
  return DecodeUtf8(text, &start);
}

bool IsWordChar(uint32_t cp) { return cp == '_' || IsAlphanumeric(cp); }

}  // namespace

AddedTokenMatcher::AddedTokenMatcher() { root_children_.fill(-1); }

int32_t AddedTokenMatcher::Child(int32_t node, uint8_t byte) const {
  if (node == 0) return root_children_[byte];
  const auto& children = nodes_[node].children;
  auto it =
      std::lower_bound(children.begin(), children.end(), byte,
                       [](const std::pair<uint8_t, int32_t>& c, uint8_t b) { return c.first < b; });
  return it != children.end() && it->first == byte ? it->second : -1;
}

void AddedTokenMatcher::Add(const AddedToken& token) {
  if (token.text.empty()) return;
  if (nodes_.empty()) nodes_.emplace_back();  // the root
  int32_t node = 0;
  for (char c : token.text) {
    const uint8_t byte = static_cast<uint8_t>(c);
    int32_t child = Child(node, byte);
    if (child < 0) {
      child = static_cast<int32_t>(nodes_.size());
      nodes_.emplace_back();
      if (node == 0) {
        root_children_[byte] = child;
      } else {
        auto& children = nodes_[node].children;
        children.insert(
            std::lower_bound(children.begin(), children.end(), std::make_pair(byte, int32_t{-1})),
            {byte, child});
      }
    }
    node = child;
  }
  if (nodes_[node].token_idx >= 0) {
    tokens_[nodes_[node].token_idx] = token;
  } else {
    nodes_[node].token_idx = static_cast<int32_t>(tokens_.size());
    tokens_.push_back(token);
  }
}

size_t AddedTokenMatcher::LongestMatch(absl::string_view text, size_t pos, bool parse_special,
                                       int32_t* token_idx) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    node = Child(node, static_cast<uint8_t>(text[i]));
    if (node < 0) break;
    const int32_t idx = nodes_[node].token_idx;
    if (idx < 0) continue;
    const AddedToken& token = tokens_[idx];
    if (token.special && !parse_special) continue;
    const size_t end = i + 1;
    if (token.single_word) {
      if (pos > 0 && IsWordChar(CodePointBefore(text, pos))) continue;
      if (end < text.size()) {
        size_t next = end;
        if (IsWordChar(DecodeUtf8(text, &next))) continue;
      }
    }
    best = end - pos;
    *token_idx = idx;
  }
  return best;
}

void AddedTokenMatcher::Split(absl::string_view text, bool parse_special,
                              std::vector<Fragment>* out) const {
  uint32_t text_start = 0;
  size_t pos = 0;
  const size_t n = text.size();
  while (pos < n) {
    if (tokens_.empty() || root_children_[static_cast<uint8_t>(text[pos])] < 0 ||
        IsContinuationByte(text[pos])) {
      ++pos;
      continue;
    }
    int32_t idx = -1;
    const size_t length = LongestMatch(text, pos, parse_special, &idx);
    if (length == 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[idx];
    size_t begin = pos;
    size_t end = pos + length;
    if (token.lstrip) {
      while (begin > text_start) {
        size_t start = begin - 1;
        while (start > text_start && IsContinuationByte(text[start])) --start;
        size_t p = start;
        if (!IsWhiteSpace(DecodeUtf8(text, &p))) break;
        begin = start;
      }
    }
    if (token.rstrip) {
      while (end < n) {
        size_t p = end;
        if (!IsWhiteSpace(DecodeUtf8(text, &p))) break;
        end = p;
      }
    }
    if (begin > text_start) out->push_back({-1, text_start, static_cast<uint32_t>(begin)});
    out->push_back({token.id, static_cast<uint32_t>(begin), static_cast<uint32_t>(end)});
    text_start = static_cast<uint32_t>(end);
    pos = end;
  }
  if (text_start < n) out->push_back({-1, text_start, static_cast<uint32_t>(n)});
}

}  // namespace herd::tokenizer
