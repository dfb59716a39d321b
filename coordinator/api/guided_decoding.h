// Guided decoding: TokenConstraints that let a sequence sample only tokens
// whose text keeps the output a prefix of what a grammar accepts: a JSON
// value a schema accepts (response_format json_object and json_schema,
// guided_json; JsonPrefix) or a text a regular expression matches
// (guided_regex, guided_choice; RegexPrefix). Token masks are cached per
// grammar and recognizer state.
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
#include "coordinator/api/json_schema.h"
#include "coordinator/api/regex_prefix.h"
#include "coordinator/scheduler/token_constraint.h"
#include "model/tokenizer/tokenizer.h"

namespace herd {

// The text every vocabulary id adds to an output, computed once per server.
class TokenTexts {
 public:
  // For ids [0, vocab_size): control, unknown and unused tokens, and ids past
  // the tokenizer's vocabulary, add nothing (guided decoding never samples
  // them).
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
  // The code points of id's text if it is plain string content (see
  // JsonPrefix::PlainStringRoom), else -1 (0: no text).
  int32_t plain_chars(int32_t id) const { return plain_chars_[id]; }
  // The ids with text that is not plain string content.
  const std::vector<int32_t>& not_plain() const { return not_plain_; }

 private:
  std::vector<std::string> texts_;
  std::vector<std::string> first_texts_;
  std::vector<int32_t> plain_chars_;
  std::vector<int32_t> not_plain_;
  std::array<std::vector<int32_t>, 256> by_byte_;
  std::array<std::vector<int32_t>, 256> first_by_byte_;
};

// One grammar's allowed tokens after each recognizer state (Prefix:
// JsonPrefix for a JsonSchema, RegexPrefix for a Regex), worked out once:
// inside a string the state stays the same token after token, so most masks
// are a lookup. Shared by the requests that use the grammar; thread-safe.
// Holds at most kMaxEntries masks (then starts over).
template <typename Prefix>
class MaskCache {
 public:
  using Grammar = typename Prefix::Grammar;
  static constexpr size_t kMaxEntries = 1024;

  struct Mask {
    std::vector<uint64_t> bits;  // bit t % 64 of word t / 64
    int64_t count = 0;
  };

  // `texts` is borrowed and must outlive the cache.
  MaskCache(const TokenTexts* texts, std::shared_ptr<const Grammar> grammar)
      : texts_(texts), grammar_(std::move(grammar)) {}

  const TokenTexts& texts() const { return *texts_; }
  const Grammar& grammar() const { return *grammar_; }
  // The tokens that may follow `state` (`first`: as a chat reply's first).
  std::shared_ptr<const Mask> Get(const Prefix& state, bool first);

 private:
  std::shared_ptr<const Mask> Remember(const Prefix& state, bool first, std::shared_ptr<Mask> mask);

  const TokenTexts* const texts_;
  const std::shared_ptr<const Grammar> grammar_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::pair<Prefix, bool>, std::shared_ptr<const Mask>> masks_
      ABSL_GUARDED_BY(mu_);
};

// The mask caches of the grammars requests name, by a key that says which
// (a schema's text, a pattern): a grammar is worked out once for all the
// requests that use it. Holds the kMaxGrammars most recently used (a
// constraint keeps its own alive); thread-safe.
template <typename Prefix>
class MaskCaches {
 public:
  static constexpr size_t kMaxGrammars = 8;

  // `texts` is borrowed and must outlive the caches.
  explicit MaskCaches(const TokenTexts* texts) : texts_(texts) {}

  // The cache of the grammar `key` names (a new one for `grammar` if none).
  std::shared_ptr<MaskCache<Prefix>> For(const std::string& key,
                                         std::shared_ptr<const typename Prefix::Grammar> grammar);

 private:
  struct Entry {
    std::shared_ptr<MaskCache<Prefix>> cache;
    uint64_t last_use = 0;
  };

  const TokenTexts* const texts_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> caches_ ABSL_GUARDED_BY(mu_);
  uint64_t uses_ ABSL_GUARDED_BY(mu_) = 0;
};

// Lets a sequence sample only the tokens its grammar's recognizer takes;
// the sequence ends as stopped when the output is whole, and may stop (its
// stop ids are allowed) where the output already matches but could go on.
template <typename Prefix>
class GuidedConstraint : public TokenConstraint {
 public:
  // `chat`: the output is a chat reply (its first token's space prefix is
  // not part of it).
  GuidedConstraint(std::shared_ptr<MaskCache<Prefix>> masks, bool chat)
      : masks_(std::move(masks)), chat_(chat), prefix_(&masks_->grammar()) {}

  int64_t Allowed(absl::Span<uint64_t> mask) const override;
  void Accept(int32_t token_id) override;
  bool complete() const override { return prefix_.complete(); }
  bool may_end() const override { return prefix_.may_end(); }

 private:
  const std::shared_ptr<MaskCache<Prefix>> masks_;
  const bool chat_;
  bool started_ = false;
  Prefix prefix_;
};

// JSON mode and JSON schemas; guided_regex and guided_choice.
using JsonMaskCache = MaskCache<JsonPrefix>;
using JsonConstraint = GuidedConstraint<JsonPrefix>;
using RegexMaskCache = MaskCache<RegexPrefix>;
using RegexConstraint = GuidedConstraint<RegexPrefix>;

extern template class MaskCache<JsonPrefix>;
extern template class MaskCache<RegexPrefix>;
extern template class MaskCaches<JsonPrefix>;
extern template class MaskCaches<RegexPrefix>;
extern template class GuidedConstraint<JsonPrefix>;
extern template class GuidedConstraint<RegexPrefix>;

}  // namespace herd
