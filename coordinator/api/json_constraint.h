// JSON mode (response_format {"type": "json_object"}): a TokenConstraint
// that lets a sequence sample only tokens whose text keeps the output a
// prefix of one JSON object (JsonPrefix), and ends it when the object closes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/api/json_prefix.h"
#include "coordinator/scheduler/token_constraint.h"
#include "model/tokenizer/tokenizer.h"

namespace herd {

// The text every vocabulary id adds to an output, computed once per server.
class TokenTexts {
 public:
  // For ids [0, vocab_size): control, unknown and unused tokens, and ids past
  // the tokenizer's vocabulary, add nothing (JSON mode never samples them).
  TokenTexts(const Tokenizer& tokenizer, int64_t vocab_size);

  int64_t vocab_size() const { return static_cast<int64_t>(texts_.size()); }
  // The bytes id adds after other output.
  const std::string& text(int32_t id) const { return texts_[id]; }
  // The bytes id adds as the first token of a chat reply, whose
  // SentencePiece space prefix the server's decoding drops.
  const std::string& first_text(int32_t id) const { return first_texts_[id]; }

 private:
  std::vector<std::string> texts_;
  std::vector<std::string> first_texts_;
};

class JsonConstraint : public TokenConstraint {
 public:
  // `texts` is borrowed and must outlive the constraint. `chat`: the output
  // is a chat reply (its first token's space prefix is not part of it).
  JsonConstraint(const TokenTexts* texts, bool chat) : texts_(texts), chat_(chat) {}

  int64_t Allowed(absl::Span<uint64_t> mask) const override;
  void Accept(int32_t token_id) override;
  bool complete() const override { return prefix_.complete(); }

 private:
  const std::string& TextOf(int32_t id) const {
    return chat_ && !started_ ? texts_->first_text(id) : texts_->text(id);
  }

  const TokenTexts* texts_;
  const bool chat_;
  bool started_ = false;
  JsonPrefix prefix_;
};

}  // namespace herd
