#include "coordinator/api/json_constraint.h"

#include "nlohmann/json.hpp"

namespace herd {

namespace {

// The code points of `text` if it is plain string content, else -1: the
// recognizer inside a long string takes it and stays inside.
int32_t PlainChars(const std::string& text) {
  static constexpr int64_t kRoom = 1 << 30;
  static const auto* const kProbe = new std::shared_ptr<const JsonSchema>(
      *JsonSchema::Compile(nlohmann::ordered_json{{"type", "string"}, {"maxLength", kRoom}}));
  if (text.find_first_of("\"\\") != std::string::npos) return -1;
  JsonPrefix prefix(kProbe->get());
  prefix.Push('"');
  if (!prefix.Push(text) || prefix.PlainStringRoom() < 0) return -1;
  return static_cast<int32_t>(kRoom - prefix.PlainStringRoom());
}

}  // namespace

TokenTexts::TokenTexts(const Tokenizer& tokenizer, int64_t vocab_size)
    : texts_(vocab_size), first_texts_(vocab_size), plain_chars_(vocab_size, 0) {
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
    plain_chars_[id] = texts_[id].empty() ? 0 : PlainChars(texts_[id]);
    if (plain_chars_[id] < 0) not_plain_.push_back(id);
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
  const auto allow = [&](int32_t id) {
    mask->bits[id / 64] |= uint64_t{1} << (id % 64);
    ++mask->count;
  };
  if (const int64_t room = state.PlainStringRoom(); room >= 0 && !first) {
    // Inside a string: plain tokens that fit, and the others one by one.
    for (int32_t id = 0; id < texts_->vocab_size(); ++id) {
      const int32_t chars = texts_->plain_chars(id);
      if (chars > 0 && chars <= room) allow(id);
    }
    for (const int32_t id : texts_->not_plain()) {
      JsonPrefix next = state;
      if (next.Push(texts_->text(id))) allow(id);
    }
    return Remember(state, first, std::move(mask));
  }
  // By first byte: outside strings few bytes may come next, and the tokens
  // starting with the others are never tried.
  for (int b = 0; b < 256; ++b) {
    const std::vector<int32_t>& ids = texts_->starting_with(static_cast<uint8_t>(b), first);
    JsonPrefix after_first = state;
    if (ids.empty() || !after_first.Push(static_cast<uint8_t>(b))) continue;
    for (const int32_t id : ids) {
      const std::string& text = first ? texts_->first_text(id) : texts_->text(id);
      JsonPrefix next = after_first;
      if (next.Push(absl::string_view(text).substr(1))) allow(id);
    }
  }
  return Remember(state, first, std::move(mask));
}

std::shared_ptr<const JsonMaskCache::Mask> JsonMaskCache::Remember(const JsonPrefix& state,
                                                                   bool first,
                                                                   std::shared_ptr<Mask> mask) {
  absl::MutexLock lock(&mu_);
  if (masks_.size() >= kMaxEntries) masks_.clear();
  masks_.emplace(std::make_pair(state, first), mask);
  return mask;
}

std::shared_ptr<JsonMaskCache> JsonMaskCaches::For(std::shared_ptr<const JsonSchema> schema) {
  const std::string& text = schema->text();
  absl::MutexLock lock(&mu_);
  if (auto it = caches_.find(text); it != caches_.end()) {
    it->second.last_use = ++uses_;
    return it->second.cache;
  }
  if (caches_.size() >= kMaxSchemas) {
    // The least recently used goes (the requests using it keep it alive).
    auto oldest = caches_.begin();
    for (auto it = caches_.begin(); it != caches_.end(); ++it) {
      if (it->second.last_use < oldest->second.last_use) oldest = it;
    }
    caches_.erase(oldest);
  }
  auto cache = std::make_shared<JsonMaskCache>(texts_, schema);
  caches_.emplace(text, Entry{cache, ++uses_});
  return cache;
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
