// JSON mode (response_format {"type": "json_object"}): a TokenConstraint
// that lets a sequence sample only tokens whose text keeps the output a
// prefix of one JSON object (JsonPrefix), and ends it when the object closes.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
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
  // The ids whose text (first: first_text) starts with byte b, by b.
  const std::vector<int32_t>& starting_with(uint8_t b, bool first) const {
    return (first ? first_by_byte_ : by_byte_)[b];
  }

 private:
  std::vector<std::string> texts_;
  std::vector<std::string> first_texts_;
  std::array<std::vector<int32_t>, 256> by_byte_;
  std::array<std::vector<int32_t>, 256> first_by_byte_;
};

// The tokens allowed after each recognizer state, worked out once: inside a
// string the state stays the same token after token, so most masks are a
// lookup. Shared by a server's requests; thread-safe. Holds at most
// kMaxEntries masks (then starts over).
class JsonMaskCache {
 public:
  static constexpr size_t kMaxEntries = 4096;

  struct Mask {
    std::vector<uint64_t> bits;  // bit t % 64 of word t / 64
    int64_t count = 0;
  };

  // `texts` is borrowed and must outlive the cache.
  explicit JsonMaskCache(const TokenTexts* texts) : texts_(texts) {}

  const TokenTexts& texts() const { return *texts_; }
  // The tokens that may follow `state` (`first`: as a chat reply's first).
  std::shared_ptr<const Mask> Get(const JsonPrefix& state, bool first);

 private:
  const TokenTexts* const texts_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::pair<JsonPrefix, bool>, std::shared_ptr<const Mask>> masks_
      ABSL_GUARDED_BY(mu_);
};

class JsonConstraint : public TokenConstraint {
 public:
  // `masks` is borrowed and must outlive the constraint. `chat`: the output
  // is a chat reply (its first token's space prefix is not part of it).
  JsonConstraint(JsonMaskCache* masks, bool chat) : masks_(masks), chat_(chat) {}

  int64_t Allowed(absl::Span<uint64_t> mask) const override;
  void Accept(int32_t token_id) override;
  bool complete() const override { return prefix_.complete(); }

 private:
  JsonMaskCache* const masks_;
  const bool chat_;
  bool started_ = false;
  JsonPrefix prefix_;
};

}  // namespace herd
