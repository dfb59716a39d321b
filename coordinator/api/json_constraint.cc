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
    if (!texts_[id].empty()) by_byte_[static_cast<uint8_t>(texts_[id][0])].push_back(id);
    if (!first_texts_[id].empty()) {
      first_by_byte_[static_cast<uint8_t>(first_texts_[id][0])].push_back(id);
    }
  }
}

std::shared_ptr<const JsonMaskCache::Mask> JsonMaskCache::Get(const JsonPrefix& state, bool first) {
  {
    absl::MutexLock lock(&mu_);
    if (auto it = masks_.find(std::make_pair(state, first)); it != masks_.end()) {
      return it->second;
    }
  }
  auto mask = std::make_shared<Mask>();
  mask->bits.assign((texts_->vocab_size() + 63) / 64, 0);
  // By first byte: outside strings few bytes may come next, and the tokens
  // starting with the others are never tried.
  for (int b = 0; b < 256; ++b) {
    const std::vector<int32_t>& ids = texts_->starting_with(static_cast<uint8_t>(b), first);
    JsonPrefix after_first = state;
    if (ids.empty() || !after_first.Push(static_cast<uint8_t>(b))) continue;
    for (const int32_t id : ids) {
      const std::string& text = first ? texts_->first_text(id) : texts_->text(id);
      JsonPrefix next = after_first;
      if (!next.Push(absl::string_view(text).substr(1))) continue;
      mask->bits[id / 64] |= uint64_t{1} << (id % 64);
      ++mask->count;
    }
  }
  absl::MutexLock lock(&mu_);
  if (masks_.size() >= kMaxEntries) masks_.clear();
  masks_.emplace(std::make_pair(state, first), mask);
  return mask;
}

int64_t JsonConstraint::Allowed(absl::Span<uint64_t> mask) const {
  const std::shared_ptr<const JsonMaskCache::Mask> allowed =
      masks_->Get(prefix_, chat_ && !started_);
  for (size_t w = 0; w < mask.size() && w < allowed->bits.size(); ++w) mask[w] |= allowed->bits[w];
  return allowed->count;
}

void JsonConstraint::Accept(int32_t token_id) {
  const TokenTexts& texts = masks_->texts();
  if (token_id >= 0 && token_id < texts.vocab_size()) {
    prefix_.Push(chat_ && !started_ ? texts.first_text(token_id) : texts.text(token_id));
  }
  started_ = true;
}

}  // namespace herd
