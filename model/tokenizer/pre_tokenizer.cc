#include "model/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "core/status.h"
#include "model/tokenizer/unicode.h"

namespace herd::tokenizer {
namespace {

struct Segment {
  uint32_t begin;
  uint32_t end;
  bool is_match;
};

// Turns matches/gaps into pieces the way Hugging Face's split behaviors do,
// appending non-empty pieces (offset by `base`) to `out`.
void ApplyBehavior(std::vector<Segment>& segments, SplitBehavior behavior, uint32_t base,
                   std::vector<PreTokenized::Piece>* out) {
  std::vector<Segment> merged;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Segment& s : segments) {
        if (!s.is_match) merged.push_back(s);
      }
      break;
    case SplitBehavior::kIsolated:
      merged = segments;
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.is_match && !previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool next_match = false;
      for (size_t i = segments.size(); i-- > 0;) {
        const Segment& s = segments[i];
        if (s.is_match && !next_match && !merged.empty()) {
          merged.back().begin = s.begin;
        } else {
          merged.push_back(s);
        }
        next_match = s.is_match;
      }
      std::reverse(merged.begin(), merged.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Segment& s : segments) {
        if (s.is_match == previous_match && !merged.empty()) {
          merged.back().end = s.end;
        } else {
          merged.push_back(s);
        }
        previous_match = s.is_match;
      }
      break;
    }
  }
  for (const Segment& s : merged) {
    if (s.end > s.begin) out->push_back({base + s.begin, base + s.end});
  }
}

// Segments of `text`: the matches of `regex` (or of the literal `literal`)
// and the gaps between them, with is_match flipped when `invert`.
absl::Status FindSegments(absl::string_view text, const Regex* regex, absl::string_view literal,
                          bool invert, std::vector<Segment>* segments) {
  segments->clear();
  uint32_t last = 0;
  auto on_match = [&](size_t begin, size_t end) {
    if (begin > last) segments->push_back({last, static_cast<uint32_t>(begin), invert});
    segments->push_back({static_cast<uint32_t>(begin), static_cast<uint32_t>(end), !invert});
    last = static_cast<uint32_t>(end);
  };
  if (regex != nullptr) {
    HERD_RETURN_IF_ERROR(regex->ForEachMatch(text, on_match));
  } else {
    size_t pos = 0;
    while (!literal.empty()) {
      const size_t hit = text.find(literal, pos);
      if (hit == absl::string_view::npos) break;
      on_match(hit, hit + literal.size());
      pos = hit + literal.size();
    }
  }
  if (last < text.size()) segments->push_back({last, static_cast<uint32_t>(text.size()), invert});
  return absl::OkStatus();
}

absl::Status SplitPieces(PreTokenized* pt, const Regex* regex, absl::string_view literal,
                         SplitBehavior behavior, bool invert) {
  std::vector<PreTokenized::Piece> next;
  next.reserve(pt->pieces.size());
  std::vector<Segment> segments;
  for (const PreTokenized::Piece& piece : pt->pieces) {
    HERD_RETURN_IF_ERROR(FindSegments(pt->piece_text(piece), regex, literal, invert, &segments));
    ApplyBehavior(segments, behavior, piece.begin, &next);
  }
  pt->pieces = std::move(next);
  return absl::OkStatus();
}

// Rebuilds the text piece by piece through `transform(piece_text, &out)`.
template <typename Fn>
void RewritePieces(PreTokenized* pt, Fn transform) {
  std::string text;
  text.reserve(pt->text().size() + pt->pieces.size() * 3);
  std::vector<PreTokenized::Piece> next;
  next.reserve(pt->pieces.size());
  for (size_t i = 0; i < pt->pieces.size(); ++i) {
    const uint32_t begin = static_cast<uint32_t>(text.size());
    transform(i, pt->piece_text(pt->pieces[i]), &text);
    next.push_back({begin, static_cast<uint32_t>(text.size())});
  }
  pt->owned = std::move(text);
  pt->uses_owned = true;
  pt->pieces = std::move(next);
}

}  // namespace

void PreTokenizer::AddSplit(std::shared_ptr<const Regex> regex, SplitBehavior behavior,
                            bool invert) {
  Step step{Kind::kSplit};
  step.regex = std::move(regex);
  step.behavior = behavior;
  step.invert = invert;
  steps_.push_back(std::move(step));
}

void PreTokenizer::AddByteLevel(bool add_prefix_space, bool use_regex,
                                std::shared_ptr<const Regex> gpt2_regex) {
  Step step{Kind::kByteLevel};
  step.add_prefix_space = add_prefix_space;
  step.use_regex = use_regex;
  step.regex = std::move(gpt2_regex);
  steps_.push_back(std::move(step));
}

void PreTokenizer::AddMetaspace(std::string replacement, PrependScheme scheme, bool split) {
  Step step{Kind::kMetaspace};
  step.replacement = std::move(replacement);
  step.scheme = scheme;
  step.split = split;
  steps_.push_back(std::move(step));
}

void PreTokenizer::AddDigits(bool individual_digits, std::shared_ptr<const Regex> digit_regex) {
  AddSplit(std::move(digit_regex),
           individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false);
}

bool PreTokenizer::byte_level() const {
  for (const Step& step : steps_) {
    if (step.kind == Kind::kByteLevel) return true;
  }
  return false;
}

absl::Status PreTokenizer::Run(absl::string_view text, bool at_start, PreTokenized* out) const {
  out->input = text;
  out->owned.clear();
  out->uses_owned = false;
  out->byte_mapped = false;
  out->pieces.clear();
  if (text.empty()) return absl::OkStatus();
  out->pieces.push_back({0, static_cast<uint32_t>(text.size())});
  // Whether pieces[0] still begins where the section began.
  bool first_at_origin = true;
  for (size_t step_idx = 0; step_idx < steps_.size(); ++step_idx) {
    const Step& step = steps_[step_idx];
    const uint32_t old_first_begin = out->pieces.empty() ? 0 : out->pieces[0].begin;
    switch (step.kind) {
      case Kind::kSplit:
        HERD_RETURN_IF_ERROR(SplitPieces(out, step.regex.get(), {}, step.behavior, step.invert));
        if (out->pieces.empty() || out->pieces[0].begin != old_first_begin) {
          first_at_origin = false;
        }
        break;
      case Kind::kByteLevel: {
        if (step.add_prefix_space) {
          RewritePieces(out, [](size_t, absl::string_view piece, std::string* dst) {
            if (piece.empty() || piece[0] != ' ') dst->push_back(' ');
            dst->append(piece.data(), piece.size());
          });
        }
        if (step.use_regex) {
          HERD_RETURN_IF_ERROR(
              SplitPieces(out, step.regex.get(), {}, SplitBehavior::kIsolated, false));
        }
        // Later steps see byte-level characters, as in Hugging Face; when
        // this is the last step the BPE model maps the bytes itself.
        if (step_idx + 1 < steps_.size() && !out->byte_mapped) {
          const ByteLevelMap& map = ByteLevelMap::Get();
          RewritePieces(out, [&map](size_t, absl::string_view piece, std::string* dst) {
            for (char c : piece) dst->append(map.CharFor(static_cast<uint8_t>(c)));
          });
          out->byte_mapped = true;
        }
        break;
      }
      case Kind::kMetaspace: {
        const bool may_prepend_first = at_start && first_at_origin;
        RewritePieces(out, [&](size_t idx, absl::string_view piece, std::string* dst) {
          const size_t begin = dst->size();
          for (char c : piece) {
            if (c == ' ') {
              dst->append(step.replacement);
            } else {
              dst->push_back(c);
            }
          }
          const bool starts_with_replacement = absl::string_view(*dst).substr(begin).substr(
                                                   0, step.replacement.size()) == step.replacement;
          const bool prepend =
              !starts_with_replacement &&
              (step.scheme == PrependScheme::kAlways ||
               (step.scheme == PrependScheme::kFirst && idx == 0 && may_prepend_first));
          if (prepend) dst->insert(begin, step.replacement);
        });
        if (step.split) {
          HERD_RETURN_IF_ERROR(
              SplitPieces(out, nullptr, step.replacement, SplitBehavior::kMergedWithNext, false));
        }
        break;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace herd::tokenizer
