#include "model/tokenizer/normalizer.h"

#include <utility>

#include "core/status.h"

namespace herd::tokenizer {
namespace {

std::string ReplaceAll(absl::string_view text, absl::string_view pattern,
                       absl::string_view content) {
  std::string out;
  if (pattern.empty()) return std::string(text);
  size_t pos = 0;
  while (true) {
    const size_t hit = text.find(pattern, pos);
    if (hit == absl::string_view::npos) break;
    out.append(text.data() + pos, hit - pos);
    out.append(content.data(), content.size());
    pos = hit + pattern.size();
  }
  out.append(text.data() + pos, text.size() - pos);
  return out;
}

std::string Strip(absl::string_view text, bool left, bool right) {
  size_t begin = 0;
  size_t end = text.size();
  if (left) {
    while (begin < end) {
      size_t pos = begin;
      if (!IsWhiteSpace(DecodeUtf8(text, &pos))) break;
      begin = pos;
    }
  }
  if (right) {
    while (end > begin) {
      size_t start = end - 1;
      while (start > begin && (static_cast<uint8_t>(text[start]) & 0xC0) == 0x80) --start;
      size_t pos = start;
      if (!IsWhiteSpace(DecodeUtf8(text, &pos))) break;
      end = start;
    }
  }
  return std::string(text.substr(begin, end - begin));
}

}  // namespace

void Normalizer::AddUnicodeForm(NormalizationForm form) {
  Step step{Kind::kForm};
  step.form = form;
  steps_.push_back(std::move(step));
}

void Normalizer::AddLowercase() { steps_.push_back(Step{Kind::kLowercase}); }

void Normalizer::AddReplaceLiteral(std::string pattern, std::string content) {
  Step step{Kind::kReplaceLiteral};
  step.pattern = std::move(pattern);
  step.content = std::move(content);
  steps_.push_back(std::move(step));
}

void Normalizer::AddReplaceRegex(std::shared_ptr<const Regex> regex, std::string content) {
  Step step{Kind::kReplaceRegex};
  step.regex = std::move(regex);
  step.content = std::move(content);
  steps_.push_back(std::move(step));
}

void Normalizer::AddPrepend(std::string content) {
  Step step{Kind::kPrepend};
  step.content = std::move(content);
  steps_.push_back(std::move(step));
}

void Normalizer::AddStrip(bool left, bool right) {
  Step step{Kind::kStrip};
  step.left = left;
  step.right = right;
  steps_.push_back(std::move(step));
}

absl::StatusOr<std::string> Normalizer::Apply(absl::string_view text) const {
  std::string current(text);
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Kind::kForm: {
        HERD_ASSIGN_OR_RETURN(current, Normalize(current, step.form));
        break;
      }
      case Kind::kLowercase: {
        HERD_ASSIGN_OR_RETURN(current, Lowercase(current));
        break;
      }
      case Kind::kReplaceLiteral:
        current = ReplaceAll(current, step.pattern, step.content);
        break;
      case Kind::kReplaceRegex: {
        std::string out;
        size_t last = 0;
        HERD_RETURN_IF_ERROR(step.regex->ForEachMatch(current, [&](size_t begin, size_t end) {
          out.append(current, last, begin - last);
          out.append(step.content);
          last = end;
        }));
        out.append(current, last, std::string::npos);
        current = std::move(out);
        break;
      }
      case Kind::kPrepend:
        if (!current.empty()) current.insert(0, step.content);
        break;
      case Kind::kStrip:
        current = Strip(current, step.left, step.right);
        break;
    }
  }
  return current;
}

}  // namespace herd::tokenizer
