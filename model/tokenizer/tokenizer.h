// Text <-> token ids, exactly as a model's own tokenizer does it.
//
// Three kinds of tokenizer, all built on the same merge engine (bpe.h):
//  - SentencePiece BPE from GGUF (`tokenizer.ggml.model = "llama"`: LLaMA,
//    Mistral, Mixtral, Phi-3): spaces become U+2581 "▁", a dummy "▁" goes
//    before the text, characters merge by token score, characters missing
//    from the vocabulary fall back to <0xXX> byte tokens.
//  - Byte-level BPE (`tokenizer.ggml.model = "gpt2"`, or a tokenizer.json
//    with a ByteLevel pre-tokenizer: GPT-2, Llama 3, Qwen, DeepSeek):
//    the text is cut by the pre-tokenizer's Unicode regexes, bytes merge by
//    merge rank.
//  - Character-level BPE from tokenizer.json (Metaspace pre-tokenizer or
//    Llama-2-style normalizers, byte fallback).
// See docs/tokenizers.md for every option with examples.
//
// A Tokenizer is immutable after loading; Encode and Decode are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/tokenizer/added_tokens.h"
#include "model/tokenizer/bpe.h"
#include "model/tokenizer/normalizer.h"
#include "model/tokenizer/pre_tokenizer.h"

namespace herd {

class GgufFile;

enum class TokenizerKind { kSentencePiece, kByteLevelBpe, kBpe };
// "sentencepiece", "byte-level-bpe", "bpe".
const char* TokenizerKindName(TokenizerKind kind);

// How a vocabulary entry behaves (GGUF `tokenizer.ggml.token_type` numbering).
enum class TokenType : uint8_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,      // <s>, </s>, <|im_start|>: recognised in text only on request
  kUserDefined = 4,  // always recognised in text, decoded as written
  kUnused = 5,
  kByte = 6,  // <0x0A>: one raw byte
};

struct EncodeOptions {
  // Put the BOS / EOS token first / last. Callers that follow the model use
  // Tokenizer::add_bos() / add_eos().
  bool add_bos = false;
  bool add_eos = false;
  // Recognise control tokens written in the text ("<|im_start|>", "<s>") as
  // single ids. Off: their text is tokenized like any other text, so user
  // input cannot inject them. User-defined tokens are always recognised.
  bool parse_special = false;
};

struct DecodeOptions {
  // Render control tokens (BOS, EOS, <|im_end|>) as their text; by default
  // they decode to nothing.
  bool render_special = false;
  // Drop the space that SentencePiece-style tokenizers put before the first
  // word (so Decode(Encode(s)) == s). Set false when decoding a continuation,
  // such as generated tokens after a prompt.
  bool strip_space_prefix = true;
};

// Everything a loader gathers; turned into a Tokenizer by Tokenizer::Create.
// Exposed for the loaders and for tests that build small vocabularies.
struct TokenizerSpec {
  std::string source;  // file or directory, for messages
  TokenizerKind kind = TokenizerKind::kByteLevelBpe;

  std::vector<std::string> tokens;  // text as stored (▁ for spaces, byte-level chars)
  std::vector<TokenType> types;     // same size as tokens
  std::vector<float> scores;        // SentencePiece: merge priority (higher first)
  // BPE merges in rank order (first = applied first), as token texts.
  std::vector<std::pair<std::string, std::string>> merges;

  // SentencePiece (GGUF): put a "▁" before the text and after every special token.
  bool add_space_prefix = true;
  // Characters missing from the vocabulary become <0xXX> tokens (tokenizer.json).
  bool byte_fallback = false;
  // A piece that is itself a token is emitted whole, without merging.
  bool ignore_merges = false;
  // Consecutive unknown tokens become one.
  bool fuse_unk = false;

  int32_t unk_id = -1;
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  // Further ids that end generation (EOT, <|im_end|>, <|eot_id|>).
  std::vector<int32_t> end_of_generation_ids;
  bool add_bos = false;
  bool add_eos = false;

  tokenizer::Normalizer normalizer;
  tokenizer::PreTokenizer pre_tokenizer;
  // Tokens recognised in text (see added_tokens.h). GGUF: control, unknown
  // and user-defined entries; tokenizer.json: `added_tokens`.
  std::vector<tokenizer::AddedToken> added_tokens;

  // Decoding: literal replacements applied to each token's text (HF Replace
  // decoder), then the byte-level map, then <0xXX> byte tokens.
  std::vector<std::pair<std::string, std::string>> decode_replacements;
  bool decode_byte_level = false;
  bool decode_byte_fallback = false;
  // Added tokens decode as written (GGUF user-defined) rather than through
  // the byte-level map (Hugging Face passes them through its decoder).
  bool added_tokens_verbatim = true;
  // The first decoded piece loses one leading space (DecodeOptions).
  bool strips_space_prefix = false;
  // Hugging Face's Metaspace decoder instead drops every occurrence of this
  // replacement character from the first token (empty: not used).
  std::string metaspace_first_token_drops;

  std::string chat_template;
};

class Tokenizer {
 public:
  // Loads the tokenizer of a model: a GGUF file, or a Hugging Face directory
  // (tokenizer.json + optional tokenizer_config.json). FailedPrecondition
  // when the model has no tokenizer (GGUF `tokenizer.ggml.model = "none"`,
  // or no tokenizer.json); Unimplemented naming the kind when it is one Herd
  // does not support; InvalidArgument naming the file and key for malformed
  // data; NotFound when the path does not exist.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  // From an open GGUF file (the `tokenizer.ggml.*` and `tokenizer.chat_template` keys).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufFile& file);
  // From a Hugging Face directory.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfDirectory(const std::string& dir);
  // From the text of tokenizer.json and tokenizer_config.json (empty when
  // absent). `source` names them in messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfJson(
      absl::string_view tokenizer_json, absl::string_view tokenizer_config_json,
      const std::string& source);
  // Checks `spec` (sizes agree, special ids in range) and builds the lookup
  // tables. InvalidArgument naming what is wrong.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Create(TokenizerSpec spec);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids of `text`. InvalidArgument when `text` is not valid UTF-8
  // (naming the byte offset); ResourceExhausted if a pre-tokenizer regex
  // hits PCRE2's backtracking limits. Thread-safe.
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              const EncodeOptions& options = {}) const;
  // Text of `ids`, always valid UTF-8 (byte tokens that do not form whole
  // characters become U+FFFD). InvalidArgument naming the first id outside
  // the vocabulary. Thread-safe.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids,
                                     const DecodeOptions& options = {}) const;
  // The raw bytes token `id` decodes to on its own (possibly part of a UTF-8
  // character), without any space-prefix stripping. InvalidArgument when out
  // of range.
  absl::StatusOr<std::string> TokenBytes(int32_t id, bool render_special = false) const;
  // The streaming building block behind Decode: appends the bytes of `id`
  // to `out` following `options`; `*started` tracks whether a non-empty
  // piece was already produced (the space prefix is only dropped before
  // it). InvalidArgument when `id` is out of range.
  absl::Status AppendDecoded(int32_t id, const DecodeOptions& options, bool* started,
                             std::string* out) const;

  TokenizerKind kind() const { return spec_.kind; }
  const std::string& source() const { return spec_.source; }
  int32_t vocab_size() const { return static_cast<int32_t>(spec_.tokens.size()); }
  // The stored text of token `id` (must be in range).
  const std::string& token_text(int32_t id) const { return spec_.tokens[id]; }
  TokenType token_type(int32_t id) const { return spec_.types[id]; }
  // The id whose stored text is `text`, if any.
  std::optional<int32_t> TokenId(absl::string_view text) const;

  int32_t bos_id() const { return spec_.bos_id; }  // -1 when none
  int32_t eos_id() const { return spec_.eos_id; }  // -1 when none
  // Whether the model expects BOS / EOS around a prompt (GGUF
  // add_bos_token, tokenizer_config.json add_bos_token or post-processor).
  bool add_bos() const { return spec_.add_bos; }
  bool add_eos() const { return spec_.add_eos; }
  // True for EOS and the other ids that end a generated turn.
  bool IsEndOfGeneration(int32_t id) const;
  // The chat template text from the checkpoint, empty when none.
  const std::string& chat_template() const { return spec_.chat_template; }
  // How many merges the engine uses (merges naming unknown tokens are dropped).
  size_t num_merges() const { return merges_.size(); }

 private:
  explicit Tokenizer(TokenizerSpec spec) : spec_(std::move(spec)) {}
  absl::Status Build();

  // Appends the ids of one section of plain text (between added tokens).
  absl::Status EncodeSection(absl::string_view text, bool at_start, bool after_token,
                             std::vector<int32_t>* out) const;
  void EncodeSentencePiece(absl::string_view text, bool add_prefix,
                           std::vector<int32_t>* out) const;
  void EncodePiece(absl::string_view piece, bool byte_mapped,
                   std::vector<tokenizer::Symbol>* symbols, std::vector<int32_t>* out) const;
  void EmitSymbols(absl::string_view text, const std::vector<tokenizer::Symbol>& symbols,
                   std::vector<int32_t>* out) const;
  void EmitUnknown(std::vector<int32_t>* out) const;

  TokenizerSpec spec_;
  absl::flat_hash_map<std::string, int32_t> ids_;
  // SentencePiece: characters that occur inside tokens without being tokens,
  // given ids >= vocab_size() so that merges through them work.
  absl::flat_hash_map<std::string, int32_t> char_ids_;
  tokenizer::MergeTable merges_;
  // Byte-level: token of each byte's character. Byte fallback: <0xXX>.
  int32_t byte_tokens_[256];
  // SentencePiece: no token contains "▁" after another character, so the
  // text can be cut before every such "▁" without changing the result.
  bool spm_can_split_ = false;
  tokenizer::AddedTokenMatcher raw_matcher_;         // on the input text
  tokenizer::AddedTokenMatcher normalized_matcher_;  // on normalized text
  std::vector<std::string> decoded_;                 // bytes of each token
};

// Decodes a stream of generated ids into text pieces that never end inside a
// UTF-8 character: bytes of an incomplete character are held back until the
// token that completes it arrives. The concatenation of every Next() and the
// final Finish() equals Tokenizer::Decode of all ids with the same options.
// Borrows `tokenizer`, which must outlive it. Not thread-safe (one per stream).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, DecodeOptions options = {});
  // Adds one id; returns the text that is now complete (may be empty).
  // InvalidArgument for an id outside the vocabulary (the stream is unchanged).
  absl::StatusOr<std::string> Next(int32_t id);
  // Returns whatever is held back, an incomplete character becoming U+FFFD,
  // and resets the decoder for a new stream.
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  DecodeOptions options_;
  std::string pending_;
  bool started_ = false;  // a non-empty piece was seen (space prefix handled)
};

}  // namespace herd
