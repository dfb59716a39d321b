#define PCRE2_CODE_UNIT_WIDTH 8
#include "model/tokenizer/regex.h"

#include <pcre2.h>

#include "absl/strings/str_cat.h"

namespace herd::tokenizer {
namespace {

std::string Pcre2Message(int error_code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(error_code, buffer, sizeof(buffer));
  if (n < 0) return absl::StrCat("PCRE2 error ", error_code);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

// Match state reused by every match on one thread: a one-pair match block
// (only the whole match's offsets are read, so it fits every pattern) and a
// JIT stack large enough for long runs of backtracking (e.g. \s+(?!\S) over
// thousands of spaces).
class ThreadMatchState {
 public:
  ThreadMatchState() {
    match_data_ = pcre2_match_data_create(1, nullptr);
    jit_stack_ = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    context_ = pcre2_match_context_create(nullptr);
    if (context_ != nullptr && jit_stack_ != nullptr) {
      pcre2_jit_stack_assign(context_, nullptr, jit_stack_);
    }
  }
  ~ThreadMatchState() {
    pcre2_match_data_free(match_data_);
    pcre2_match_context_free(context_);
    pcre2_jit_stack_free(jit_stack_);
  }
  pcre2_match_data* match_data() const { return match_data_; }
  pcre2_match_context* context() const { return context_; }
  bool ok() const { return match_data_ != nullptr && context_ != nullptr; }

 private:
  pcre2_match_data* match_data_ = nullptr;
  pcre2_jit_stack* jit_stack_ = nullptr;
  pcre2_match_context* context_ = nullptr;
};

ThreadMatchState& MatchState() {
  thread_local ThreadMatchState state;
  return state;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(absl::string_view pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("regex '", pattern,
                                                   "' does not compile at offset ", error_offset,
                                                   ": ", Pcre2Message(error_code)));
  }
  std::unique_ptr<Regex> regex(new Regex());
  regex->pattern_ = std::string(pattern);
  regex->code_ = code;
  regex->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

absl::Status Regex::ForEachMatch(absl::string_view subject,
                                 const std::function<void(size_t, size_t)>& on_match) const {
  ThreadMatchState& state = MatchState();
  if (!state.ok()) return absl::ResourceExhaustedError("cannot allocate PCRE2 match state");
  auto* code = static_cast<pcre2_code*>(code_);
  const auto* text = reinterpret_cast<PCRE2_SPTR>(subject.data());
  const size_t length = subject.size();
  size_t offset = 0;
  while (offset < length) {
    int rc;
    if (jit_) {
      rc = pcre2_jit_match(code, text, length, offset, 0, state.match_data(), state.context());
    } else {
      rc = pcre2_match(code, text, length, offset, PCRE2_NO_UTF_CHECK, state.match_data(),
                       state.context());
    }
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // The interpreter keeps its backtracking frames on the heap.
      rc = pcre2_match(code, text, length, offset, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       state.match_data(), state.context());
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("regex '", pattern_, "' failed at byte ", offset, ": ", Pcre2Message(rc)));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.match_data());
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (end > begin) {
      on_match(begin, end);
      offset = end;
    } else {
      // Empty match: step over one character and search again.
      offset = begin + 1;
      while (offset < length && (text[offset] & 0xC0) == 0x80) ++offset;
    }
  }
  return absl::OkStatus();
}

}  // namespace herd::tokenizer
