#include "coordinator/api/json_constraint.h"

namespace herd {

TokenTexts::TokenTexts(const Tokenizer& tokenizer, int64_t vocab_size)
    : texts_(vocab_size), first_texts_(vocab_size) {
  DecodeOptions first;
  first.strip_space_prefix = true;
  for (int32_t id = 0; id < vocab_size && id < tokenizer.vocab_size(); ++id) {
    const TokenType type = tokenizer.token_type(id);
    if (type == TokenType::kControl || type == TokenType::kUnknown || type == TokenType::kUnused) {
      continue;
    }
    absl::StatusOr<std::string> bytes = tokenizer.TokenBytes(id);
    if (!bytes.ok()) continue;
    texts_[id] = *bytes;
    first_texts_[id] = *bytes;
    // Only a whole-character token can lose its leading space in decoding.
    if (!bytes->empty() && (*bytes)[0] == ' ') {
      const int32_t ids[] = {id};
      if (absl::StatusOr<std::string> text = tokenizer.Decode(ids, first); text.ok()) {
        first_texts_[id] = *text;
      }
    }
  }
}

int64_t JsonConstraint::Allowed(absl::Span<uint64_t> mask) const {
  int64_t count = 0;
  for (int32_t id = 0; id < texts_->vocab_size(); ++id) {
    const std::string& text = TextOf(id);
    if (text.empty()) continue;
    JsonPrefix next = prefix_;
    if (!next.Push(text)) continue;
    mask[id / 64] |= uint64_t{1} << (id % 64);
    ++count;
  }
  return count;
}

void JsonConstraint::Accept(int32_t token_id) {
  if (token_id >= 0 && token_id < texts_->vocab_size()) prefix_.Push(TextOf(token_id));
  started_ = true;
}

}  // namespace herd
