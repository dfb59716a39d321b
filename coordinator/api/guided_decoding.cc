#include "coordinator/api/guided_decoding.h"

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

template <typename Prefix>
std::shared_ptr<const typename MaskCache<Prefix>::Mask> MaskCache<Prefix>::Get(const Prefix& state,
                                                                               bool first) {
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
      Prefix next = state;
      if (next.Push(texts_->text(id))) allow(id);
    }
    return Remember(state, first, std::move(mask));
  }
  // By first byte: outside strings few bytes may come next, and the tokens
  // starting with the others are never tried.
  for (int b = 0; b < 256; ++b) {
    const std::vector<int32_t>& ids = texts_->starting_with(static_cast<uint8_t>(b), first);
    Prefix after_first = state;
    if (ids.empty() || !after_first.Push(static_cast<uint8_t>(b))) continue;
    for (const int32_t id : ids) {
      const std::string& text = first ? texts_->first_text(id) : texts_->text(id);
      Prefix next = after_first;
      if (next.Push(absl::string_view(text).substr(1))) allow(id);
    }
  }
  return Remember(state, first, std::move(mask));
}

template <typename Prefix>
std::shared_ptr<const typename MaskCache<Prefix>::Mask> MaskCache<Prefix>::Remember(
    const Prefix& state, bool first, std::shared_ptr<Mask> mask) {
  absl::MutexLock lock(&mu_);
  if (masks_.size() >= kMaxEntries) masks_.clear();
  masks_.emplace(std::make_pair(state, first), mask);
  return mask;
}

template <typename Prefix>
std::shared_ptr<MaskCache<Prefix>> MaskCaches<Prefix>::For(
    const std::string& key, std::shared_ptr<const typename Prefix::Grammar> grammar) {
  absl::MutexLock lock(&mu_);
  if (auto it = caches_.find(key); it != caches_.end()) {
    it->second.last_use = ++uses_;
    return it->second.cache;
  }
  if (caches_.size() >= kMaxGrammars) {
    // The least recently used goes (the requests using it keep it alive).
    auto oldest = caches_.begin();
    for (auto it = caches_.begin(); it != caches_.end(); ++it) {
      if (it->second.last_use < oldest->second.last_use) oldest = it;
    }
    caches_.erase(oldest);
  }
  auto cache = std::make_shared<MaskCache<Prefix>>(texts_, std::move(grammar));
  caches_.emplace(key, Entry{cache, ++uses_});
  return cache;
}

template <typename Prefix>
int64_t GuidedConstraint<Prefix>::Allowed(absl::Span<uint64_t> mask) const {
  const std::shared_ptr<const typename MaskCache<Prefix>::Mask> allowed =
      masks_->Get(prefix_, chat_ && !started_);
  for (size_t w = 0; w < mask.size() && w < allowed->bits.size(); ++w) mask[w] |= allowed->bits[w];
  return allowed->count;
}

template <typename Prefix>
void GuidedConstraint<Prefix>::Accept(int32_t token_id) {
  const TokenTexts& texts = masks_->texts();
  if (token_id >= 0 && token_id < texts.vocab_size()) {
    prefix_.Push(chat_ && !started_ ? texts.first_text(token_id) : texts.text(token_id));
  }
  started_ = true;
}

template class MaskCache<JsonPrefix>;
template class MaskCache<RegexPrefix>;
template class MaskCaches<JsonPrefix>;
template class MaskCaches<RegexPrefix>;
template class GuidedConstraint<JsonPrefix>;
template class GuidedConstraint<RegexPrefix>;

}  // namespace herd
