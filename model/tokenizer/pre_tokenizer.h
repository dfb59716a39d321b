// Pre-tokenization: cutting normalized text into pieces that BPE merges
// never cross.
//
// The steps mirror Hugging Face's pre-tokenizers (Split with a regex or a
// literal and a split behavior, ByteLevel, Metaspace, Digits, in a Sequence);
// a GGUF vocabulary's `tokenizer.ggml.pre` name selects a list of regex
// splits (see gguf_tokenizer.cc). Each step applies to every piece the
// previous steps produced, as Hugging Face's Sequence does.
//
// Built once, then immutable; Run is thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "model/tokenizer/regex.h"

namespace herd::tokenizer {

// What happens to the matches of a Split (Hugging Face's SplitDelimiterBehavior).
enum class SplitBehavior {
  kRemoved,             // matches are dropped
  kIsolated,            // matches and the text between them are pieces of their own
  kMergedWithPrevious,  // a match joins the piece before it
  kMergedWithNext,      // a match joins the piece after it
  kContiguous,          // consecutive matches form one piece
};

// When Metaspace puts the replacement character before the text.
enum class PrependScheme { kAlways, kFirst, kNever };

// GPT-2's split pattern, which ByteLevel(use_regex) applies.
inline constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The pieces of one section of text.
struct PreTokenized {
  struct Piece {
    uint32_t begin = 0;  // byte offsets into text()
    uint32_t end = 0;
  };
  // The text the pieces point into: the input itself, or `owned` when a step
  // changed the text (prefix spaces, Metaspace replacement, byte mapping).
  absl::string_view text() const { return uses_owned ? absl::string_view(owned) : input; }
  absl::string_view piece_text(const Piece& p) const {
    return text().substr(p.begin, p.end - p.begin);
  }

  absl::string_view input;
  std::string owned;
  bool uses_owned = false;
  std::vector<Piece> pieces;
  // True when the text holds GPT-2 byte-level characters (a ByteLevel step
  // mapped it because later steps had to see the mapped text).
  bool byte_mapped = false;
};

class PreTokenizer {
 public:
  void AddSplit(std::shared_ptr<const Regex> regex, SplitBehavior behavior, bool invert);
  // Hugging Face ByteLevel: optional prefix space, optional GPT-2 regex
  // split, then the byte -> character map (applied by the BPE model itself
  // unless a later step needs the mapped text). `gpt2_regex` is used when
  // `use_regex` is set.
  void AddByteLevel(bool add_prefix_space, bool use_regex, std::shared_ptr<const Regex> gpt2_regex);
  // Hugging Face Metaspace: spaces become `replacement`, which is prepended
  // per `scheme`; with `split`, every piece starts at a replacement character.
  void AddMetaspace(std::string replacement, PrependScheme scheme, bool split);
  // Hugging Face Digits: `digit_regex` must match one \p{N} character.
  void AddDigits(bool individual_digits, std::shared_ptr<const Regex> digit_regex);

  bool empty() const { return steps_.empty(); }
  // True when a ByteLevel step is present: the BPE model then works on bytes.
  bool byte_level() const;

  // Cuts valid UTF-8 `text` (one section between added tokens) into pieces.
  // `at_start` says the section begins the whole input (Metaspace's "first"
  // scheme prepends only there). `out->input` keeps pointing into `text`, so
  // `text` must outlive `out`. ResourceExhausted from a pathological regex.
  absl::Status Run(absl::string_view text, bool at_start, PreTokenized* out) const;

 private:
  enum class Kind { kSplit, kByteLevel, kMetaspace };
  struct Step {
    Kind kind;
    std::shared_ptr<const Regex> regex;
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;
    bool use_regex = false;
    std::string replacement;
    PrependScheme scheme = PrependScheme::kAlways;
    bool split = false;
  };
  std::vector<Step> steps_;
};

}  // namespace herd::tokenizer
