#include "coordinator/api/regex.h"

#include <algorithm>
#include <map>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd {
namespace {

constexpr uint32_t kMaxCodePoint = 0x10FFFF;

// Inclusive code point ranges, sorted, disjoint and not touching.
struct Range {
  uint32_t lo;
  uint32_t hi;
};
using RangeSet = std::vector<Range>;

RangeSet Normalize(RangeSet set) {
  std::sort(set.begin(), set.end(), [](Range a, Range b) { return a.lo < b.lo; });
  RangeSet merged;
  for (const Range r : set) {
    if (!merged.empty() && r.lo <= merged.back().hi + 1) {
      merged.back().hi = std::max(merged.back().hi, r.hi);
    } else {
      merged.push_back(r);
    }
  }
  return merged;
}

RangeSet Complement(const RangeSet& set) {
  RangeSet out;
  uint32_t next = 0;
  for (const Range r : set) {
    if (r.lo > next) out.push_back({next, r.lo - 1});
    next = r.hi + 1;
  }
  if (next <= kMaxCodePoint) out.push_back({next, kMaxCodePoint});
  return out;
}

// What text can hold: no surrogates.
RangeSet Writable(const RangeSet& set) {
  RangeSet out;
  for (const Range r : set) {
    if (r.lo < 0xD800) out.push_back({r.lo, std::min<uint32_t>(r.hi, 0xD7FF)});
    if (r.hi > 0xDFFF) out.push_back({std::max<uint32_t>(r.lo, 0xE000), r.hi});
  }
  return out;
}

RangeSet Digits() { return {{'0', '9'}}; }
RangeSet WordChars() { return Normalize({{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}}); }
// ECMAScript's WhiteSpace and LineTerminator.
RangeSet Spaces() {
  return Normalize({{'\t', '\r'},
                    {' ', ' '},
                    {0xA0, 0xA0},
                    {0x1680, 0x1680},
                    {0x2000, 0x200A},
                    {0x2028, 0x2029},
                    {0x202F, 0x202F},
                    {0x205F, 0x205F},
                    {0x3000, 0x3000},
                    {0xFEFF, 0xFEFF}});
}
RangeSet AnyButLineTerminators() {
  return Complement(Normalize({{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}}));
}

struct Ast {
  enum class Kind { kSet, kConcat, kAlternation, kRepeat };
  Kind kind = Kind::kConcat;
  RangeSet set;
  std::vector<Ast> children;
  int min = 0;
  int max = 0;  // -1: unbounded
};

// Recursive descent over the pattern's code points (UTF-8 decoded).
class Parser {
 public:
  explicit Parser(std::vector<uint32_t> text) : text_(std::move(text)) {}

  absl::StatusOr<Ast> Parse() {
    HERD_ASSIGN_OR_RETURN(Ast ast, Alternation(0));
    if (pos_ < text_.size()) return Error("an unmatched ')'");
    return ast;
  }

 private:
  static constexpr int kMaxNesting = 100;

  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat("pattern: ", what, " at code point ", pos_));
  }
  bool AtEnd() const { return pos_ >= text_.size(); }
  uint32_t Peek(size_t ahead = 0) const {
    return pos_ + ahead < text_.size() ? text_[pos_ + ahead] : 0xFFFFFFFF;
  }

  absl::StatusOr<Ast> Alternation(int depth) {
    if (depth > kMaxNesting) return Error("groups nested too deep");
    Ast alternation;
    alternation.kind = Ast::Kind::kAlternation;
    while (true) {
      HERD_ASSIGN_OR_RETURN(Ast sequence, Sequence(depth));
      alternation.children.push_back(std::move(sequence));
      if (Peek() != '|') break;
      ++pos_;
    }
    if (alternation.children.size() == 1) return std::move(alternation.children[0]);
    return alternation;
  }

  absl::StatusOr<Ast> Sequence(int depth) {
    Ast sequence;
    while (!AtEnd() && Peek() != '|' && Peek() != ')') {
      HERD_ASSIGN_OR_RETURN(Ast atom, Atom(depth));
      HERD_ASSIGN_OR_RETURN(atom, Quantified(std::move(atom)));
      sequence.children.push_back(std::move(atom));
    }
    return sequence;
  }

  // Reads {n}, {n,} or {n,m} at pos_ if there is one.
  bool ReadBraces(int* min, int* max) {
    size_t at = pos_ + 1;
    const auto number = [&](int* out) {
      const size_t begin = at;
      int64_t value = 0;
      while (at < text_.size() && text_[at] >= '0' && text_[at] <= '9') {
        value = std::min<int64_t>(value * 10 + (text_[at] - '0'), int64_t{1} << 30);
        ++at;
      }
      *out = static_cast<int>(value);
      return at > begin;
    };
    if (!number(min)) return false;
    *max = *min;
    if (at < text_.size() && text_[at] == ',') {
      ++at;
      if (!number(max)) *max = -1;
    }
    if (at >= text_.size() || text_[at] != '}') return false;
    pos_ = at + 1;
    return true;
  }

  absl::StatusOr<Ast> Quantified(Ast atom) {
    while (!AtEnd()) {
      int min = 0;
      int max = 0;
      const uint32_t c = Peek();
      if (c == '*') {
        min = 0, max = -1;
        ++pos_;
      } else if (c == '+') {
        min = 1, max = -1;
        ++pos_;
      } else if (c == '?') {
        min = 0, max = 1;
        ++pos_;
      } else if (c != '{' || !ReadBraces(&min, &max)) {
        break;
      }
      if (min > Regex::kMaxRepeat || max > Regex::kMaxRepeat) {
        return Error(absl::StrCat("a repeat count over ", Regex::kMaxRepeat));
      }
      if (max != -1 && max < min) return Error("a repeat {n,m} with m < n");
      if (Peek() == '?') ++pos_;  // lazy: the same texts match
      Ast repeat;
      repeat.kind = Ast::Kind::kRepeat;
      repeat.min = min;
      repeat.max = max;
      repeat.children.push_back(std::move(atom));
      atom = std::move(repeat);
    }
    return atom;
  }

  static Ast SetOf(RangeSet set) {
    Ast ast;
    ast.kind = Ast::Kind::kSet;
    ast.set = Writable(Normalize(std::move(set)));
    return ast;
  }

  absl::StatusOr<Ast> Atom(int depth) {
    const uint32_t c = Peek();
    switch (c) {
      case '(': {
        ++pos_;
        if (Peek() == '?') {
          if (Peek(1) == ':') {
            pos_ += 2;
          } else if (Peek(1) == '<' && Peek(2) != '=' && Peek(2) != '!') {
            pos_ += 2;
            while (!AtEnd() && Peek() != '>') ++pos_;
            if (AtEnd()) return Error("an unterminated group name");
            ++pos_;
          } else {
            return Error("lookaround or a flag group (not supported)");
          }
        }
        HERD_ASSIGN_OR_RETURN(Ast inner, Alternation(depth + 1));
        if (Peek() != ')') return Error("a '(' without ')'");
        ++pos_;
        return inner;
      }
      case '[':
        return Class();
      case '.':
        ++pos_;
        return SetOf(AnyButLineTerminators());
      case '\\':
        return Escape(/*in_class=*/false);
      case '^':
      case '$':
        return Error("an anchor not at the pattern's start (^) or end ($) (not supported)");
      case '*':
      case '+':
      case '?':
        return Error("nothing to repeat");
      default:
        if (c == '{') {
          int min = 0;
          int max = 0;
          const size_t at = pos_;
          if (ReadBraces(&min, &max)) {
            pos_ = at;
            return Error("nothing to repeat");
          }
        }
        ++pos_;
        return SetOf({{c, c}});
    }
  }

  // An escape at pos_ ('\'): its set (a class escape) or its code point.
  absl::StatusOr<Ast> Escape(bool in_class) {
    ++pos_;
    if (AtEnd()) return Error("a pattern ending in '\\'");
    const uint32_t c = Peek();
    ++pos_;
    switch (c) {
      case 'd':
        return SetOf(Digits());
      case 'D':
        return SetOf(Complement(Digits()));
      case 'w':
        return SetOf(WordChars());
      case 'W':
        return SetOf(Complement(WordChars()));
      case 's':
        return SetOf(Spaces());
      case 'S':
        return SetOf(Complement(Spaces()));
      case 'n':
        return SetOf({{'\n', '\n'}});
      case 'r':
        return SetOf({{'\r', '\r'}});
      case 't':
        return SetOf({{'\t', '\t'}});
      case 'f':
        return SetOf({{'\f', '\f'}});
      case 'v':
        return SetOf({{'\v', '\v'}});
      case '0':
        return SetOf({{0, 0}});
      case 'x':
      case 'u': {
        const int digits = c == 'x' ? 2 : 4;
        uint32_t value = 0;
        for (int i = 0; i < digits; ++i) {
          const uint32_t h = Peek();
          int v = -1;
          if (h >= '0' && h <= '9') v = static_cast<int>(h - '0');
          if (h >= 'a' && h <= 'f') v = static_cast<int>(h - 'a' + 10);
          if (h >= 'A' && h <= 'F') v = static_cast<int>(h - 'A' + 10);
          if (v < 0)
            return Error(absl::StrCat("'\\", std::string(1, static_cast<char>(c)), "' without ",
                                      digits, " hex digits"));
          value = value * 16 + v;
          ++pos_;
        }
        return SetOf({{value, value}});
      }
      case 'b':
        if (in_class) return SetOf({{'\b', '\b'}});
        return Error("a word boundary '\\b' (not supported)");
      case 'B':
        return Error("a word boundary '\\B' (not supported)");
      default:
        if (c >= '1' && c <= '9') return Error("a backreference (not supported)");
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
          return Error(
              absl::StrCat("an unknown escape '\\", std::string(1, static_cast<char>(c)), "'"));
        }
        return SetOf({{c, c}});  // \. \\ \/ \- \[ and other non-letters: themselves
    }
  }

  absl::StatusOr<Ast> Class() {
    ++pos_;  // '['
    bool negated = false;
    if (Peek() == '^') {
      negated = true;
      ++pos_;
    }
    RangeSet set;
    while (!AtEnd() && Peek() != ']') {
      // One item: a code point, a class escape, or a range of code points.
      HERD_ASSIGN_OR_RETURN(RangeSet first, ClassAtom());
      if (Peek() == '-' && Peek(1) != ']' && Peek(1) != 0xFFFFFFFF) {
        ++pos_;
        HERD_ASSIGN_OR_RETURN(RangeSet last, ClassAtom());
        if (first.size() != 1 || last.size() != 1 || first[0].lo != first[0].hi ||
            last[0].lo != last[0].hi) {
          return Error("a class range with a class escape at an end");
        }
        if (last[0].lo < first[0].lo) return Error("a class range out of order");
        set.push_back({first[0].lo, last[0].lo});
      } else {
        set.insert(set.end(), first.begin(), first.end());
      }
    }
    if (AtEnd()) return Error("a '[' without ']'");
    ++pos_;
    set = Normalize(std::move(set));
    return SetOf(negated ? Complement(set) : set);
  }

  absl::StatusOr<RangeSet> ClassAtom() {
    if (Peek() == '\\') {
      // Surrogates are dropped later; keep the escape's raw set here.
      const size_t at = pos_;
      HERD_ASSIGN_OR_RETURN(Ast escape, Escape(/*in_class=*/true));
      if (escape.set.empty()) {
        pos_ = at;
        return Error("an escape of a surrogate");
      }
      return escape.set;
    }
    const uint32_t c = Peek();
    ++pos_;
    return RangeSet{{c, c}};
  }

  std::vector<uint32_t> text_;
  size_t pos_ = 0;
};

}  // namespace

// Thompson's construction, then the subset construction over code point
// classes, then the states that cannot reach a match cut.
class RegexCompiler {
 public:
  absl::StatusOr<std::shared_ptr<const Regex>> Run(const Ast& ast, bool any_before,
                                                   bool any_after) {
    HERD_ASSIGN_OR_RETURN(Fragment body, Build(ast));
    int32_t start = body.start;
    if (any_before) {
      HERD_ASSIGN_OR_RETURN(start, NewState());
      nfa_[start].edges.push_back({AnySet(), start});
      nfa_[start].epsilons.push_back(body.start);
    }
    accept_ = body.end;
    if (any_after) nfa_[accept_].edges.push_back({AnySet(), accept_});
    return Determinize(start);
  }

 private:
  struct NfaState {
    std::vector<std::pair<int32_t, int32_t>> edges;  // (set index, target)
    std::vector<int32_t> epsilons;
  };
  struct Fragment {
    int32_t start;
    int32_t end;
  };

  absl::StatusOr<int32_t> NewState() {
    if (nfa_.size() >= Regex::kMaxNfaStates) {
      return absl::InvalidArgumentError(absl::StrCat("pattern: more than ", Regex::kMaxNfaStates,
                                                     " states (repeat counts too large)"));
    }
    nfa_.emplace_back();
    return static_cast<int32_t>(nfa_.size() - 1);
  }

  int32_t AnySet() {
    if (any_set_ < 0) {
      sets_.push_back(Writable({{0, kMaxCodePoint}}));
      any_set_ = static_cast<int32_t>(sets_.size() - 1);
    }
    return any_set_;
  }

  absl::StatusOr<Fragment> Build(const Ast& ast) {
    switch (ast.kind) {
      case Ast::Kind::kSet: {
        HERD_ASSIGN_OR_RETURN(const int32_t start, NewState());
        HERD_ASSIGN_OR_RETURN(const int32_t end, NewState());
        if (!ast.set.empty()) {
          sets_.push_back(ast.set);
          nfa_[start].edges.push_back({static_cast<int32_t>(sets_.size() - 1), end});
        }
        return Fragment{start, end};
      }
      case Ast::Kind::kConcat: {
        HERD_ASSIGN_OR_RETURN(const int32_t start, NewState());
        int32_t end = start;
        for (const Ast& child : ast.children) {
          HERD_ASSIGN_OR_RETURN(const Fragment f, Build(child));
          nfa_[end].epsilons.push_back(f.start);
          end = f.end;
        }
        return Fragment{start, end};
      }
      case Ast::Kind::kAlternation: {
        HERD_ASSIGN_OR_RETURN(const int32_t start, NewState());
        HERD_ASSIGN_OR_RETURN(const int32_t end, NewState());
        for (const Ast& child : ast.children) {
          HERD_ASSIGN_OR_RETURN(const Fragment f, Build(child));
          nfa_[start].epsilons.push_back(f.start);
          nfa_[f.end].epsilons.push_back(end);
        }
        return Fragment{start, end};
      }
      case Ast::Kind::kRepeat: {
        const Ast& child = ast.children[0];
        HERD_ASSIGN_OR_RETURN(const int32_t start, NewState());
        int32_t end = start;
        for (int i = 0; i < ast.min; ++i) {
          HERD_ASSIGN_OR_RETURN(const Fragment f, Build(child));
          nfa_[end].epsilons.push_back(f.start);
          end = f.end;
        }
        if (ast.max == -1) {
          // A loop: any number more.
          HERD_ASSIGN_OR_RETURN(const Fragment f, Build(child));
          HERD_ASSIGN_OR_RETURN(const int32_t after, NewState());
          nfa_[end].epsilons.push_back(f.start);
          nfa_[end].epsilons.push_back(after);
          nfa_[f.end].epsilons.push_back(f.start);
          nfa_[f.end].epsilons.push_back(after);
          return Fragment{start, after};
        }
        if (ast.max > ast.min) {
          HERD_ASSIGN_OR_RETURN(const int32_t after, NewState());
          for (int i = ast.min; i < ast.max; ++i) {
            HERD_ASSIGN_OR_RETURN(const Fragment f, Build(child));
            nfa_[end].epsilons.push_back(f.start);
            nfa_[end].epsilons.push_back(after);
            end = f.end;
          }
          nfa_[end].epsilons.push_back(after);
          end = after;
        }
        return Fragment{start, end};
      }
    }
    return absl::InternalError("unreachable");
  }

  // The states reachable from `states` by epsilons, sorted.
  std::vector<int32_t> Closure(const std::vector<int32_t>& from) const {
    std::vector<bool> seen(nfa_.size(), false);
    std::vector<int32_t> states;
    for (const int32_t s : from) {
      if (!seen[s]) states.push_back(s);
      seen[s] = true;
    }
    std::vector<int32_t> stack = states;
    while (!stack.empty()) {
      const int32_t s = stack.back();
      stack.pop_back();
      for (const int32_t t : nfa_[s].epsilons) {
        if (!seen[t]) {
          seen[t] = true;
          states.push_back(t);
          stack.push_back(t);
        }
      }
    }
    std::sort(states.begin(), states.end());
    return states;
  }

  absl::StatusOr<std::shared_ptr<const Regex>> Determinize(int32_t nfa_start) {
    auto regex = std::make_shared<Regex>();
    // Classes: the cut points of every set's ranges.
    std::vector<uint32_t> cuts = {0};
    for (const RangeSet& set : sets_) {
      for (const Range r : set) {
        cuts.push_back(r.lo);
        cuts.push_back(r.hi + 1);
      }
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    if (cuts.back() == kMaxCodePoint + 1) cuts.pop_back();
    regex->class_starts_ = cuts;
    const auto num_classes = static_cast<int32_t>(cuts.size());
    regex->num_classes_ = num_classes;
    // The classes each set covers.
    std::vector<std::vector<int32_t>> covered(sets_.size());
    for (size_t i = 0; i < sets_.size(); ++i) {
      for (const Range r : sets_[i]) {
        const auto first = std::lower_bound(cuts.begin(), cuts.end(), r.lo) - cuts.begin();
        for (auto c = first; c < num_classes && cuts[c] <= r.hi; ++c) {
          covered[i].push_back(static_cast<int32_t>(c));
        }
      }
    }

    std::map<std::vector<int32_t>, int32_t> ids;
    std::vector<std::vector<int32_t>> states = {Closure({nfa_start})};
    ids[states[0]] = 0;
    std::vector<int32_t> next;
    std::vector<std::vector<int32_t>> targets(num_classes);
    for (size_t d = 0; d < states.size(); ++d) {
      for (auto& t : targets) t.clear();
      for (const int32_t s : states[d]) {
        for (const auto& [set, to] : nfa_[s].edges) {
          for (const int32_t c : covered[set]) targets[c].push_back(to);
        }
      }
      for (int32_t c = 0; c < num_classes; ++c) {
        if (targets[c].empty()) {
          next.push_back(-1);
          continue;
        }
        std::vector<int32_t> closed = Closure(targets[c]);
        auto [it, inserted] = ids.emplace(std::move(closed), static_cast<int32_t>(states.size()));
        if (inserted) {
          if (states.size() >= Regex::kMaxDfaStates) {
            return absl::InvalidArgumentError(absl::StrCat(
                "pattern: more than ", Regex::kMaxDfaStates, " DFA states (too complex)"));
          }
          states.push_back(it->first);
        }
        next.push_back(it->second);
      }
    }
    const auto num_states = static_cast<int32_t>(states.size());
    std::vector<bool> accepting(num_states);
    for (int32_t d = 0; d < num_states; ++d) {
      accepting[d] = std::binary_search(states[d].begin(), states[d].end(), accept_);
    }
    // Live: some path leads to a match.
    std::vector<std::vector<int32_t>> reverse(num_states);
    for (int32_t d = 0; d < num_states; ++d) {
      for (int32_t c = 0; c < num_classes; ++c) {
        if (const int32_t to = next[d * num_classes + c]; to >= 0) reverse[to].push_back(d);
      }
    }
    std::vector<bool> live = accepting;
    std::vector<int32_t> stack;
    for (int32_t d = 0; d < num_states; ++d) {
      if (live[d]) stack.push_back(d);
    }
    while (!stack.empty()) {
      const int32_t d = stack.back();
      stack.pop_back();
      for (const int32_t from : reverse[d]) {
        if (!live[from]) {
          live[from] = true;
          stack.push_back(from);
        }
      }
    }
    if (!live[0]) return absl::InvalidArgumentError("pattern: no text matches it");
    // Renumber the live states (the start stays 0).
    std::vector<int32_t> renumbered(num_states, -1);
    int32_t num_live = 0;
    for (int32_t d = 0; d < num_states; ++d) {
      if (live[d]) renumbered[d] = num_live++;
    }
    regex->next_.assign(static_cast<size_t>(num_live) * num_classes, -1);
    regex->accepting_.assign(num_live, false);
    regex->may_continue_.assign(num_live, false);
    for (int32_t d = 0; d < num_states; ++d) {
      if (!live[d]) continue;
      const int32_t r = renumbered[d];
      regex->accepting_[r] = accepting[d];
      for (int32_t c = 0; c < num_classes; ++c) {
        const int32_t to = next[d * num_classes + c];
        if (to >= 0 && live[to]) {
          regex->next_[r * num_classes + c] = renumbered[to];
          regex->may_continue_[r] = true;
        }
      }
    }
    // Shortest ways to a match: a search back from the accepting states.
    regex->min_to_accept_.assign(num_live, -1);
    std::vector<std::vector<int32_t>> into(num_live);
    std::vector<int32_t> frontier;
    for (int32_t r = 0; r < num_live; ++r) {
      for (int32_t c = 0; c < num_classes; ++c) {
        if (const int32_t to = regex->next_[r * num_classes + c]; to >= 0) into[to].push_back(r);
      }
      if (regex->accepting_[r]) {
        regex->min_to_accept_[r] = 0;
        frontier.push_back(r);
      }
    }
    for (size_t i = 0; i < frontier.size(); ++i) {
      const int32_t r = frontier[i];
      for (const int32_t from : into[r]) {
        if (regex->min_to_accept_[from] < 0) {
          regex->min_to_accept_[from] = regex->min_to_accept_[r] + 1;
          frontier.push_back(from);
        }
      }
    }
    return std::shared_ptr<const Regex>(std::move(regex));
  }

  std::vector<NfaState> nfa_;
  std::vector<RangeSet> sets_;
  int32_t any_set_ = -1;
  int32_t accept_ = 0;
};

int32_t Regex::Next(int32_t state, uint32_t c) const {
  if (c > kMaxCodePoint) return -1;
  const auto cls =
      std::upper_bound(class_starts_.begin(), class_starts_.end(), c) - class_starts_.begin() - 1;
  return next_[static_cast<size_t>(state) * num_classes_ + cls];
}

bool Regex::MayTake(int32_t state, uint32_t lo, uint32_t hi, int64_t max_to_accept) const {
  hi = std::min(hi, kMaxCodePoint);
  auto cls =
      std::upper_bound(class_starts_.begin(), class_starts_.end(), lo) - class_starts_.begin() - 1;
  for (; cls < num_classes_ && class_starts_[cls] <= hi; ++cls) {
    const int32_t next = next_[static_cast<size_t>(state) * num_classes_ + cls];
    if (next >= 0 && min_to_accept_[next] <= max_to_accept) return true;
  }
  return false;
}

absl::StatusOr<std::shared_ptr<const Regex>> Regex::Compile(absl::string_view pattern, Mode mode) {
  // The pattern's code points (its UTF-8 decoded; a bad byte is itself).
  std::vector<uint32_t> text;
  for (size_t i = 0; i < pattern.size();) {
    const auto b = static_cast<uint8_t>(pattern[i]);
    const int length = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
    uint32_t c = length == 1 ? b : b & (0x7F >> length);
    if (i + length > pattern.size()) {
      return absl::InvalidArgumentError("pattern: not valid UTF-8");
    }
    for (int k = 1; k < length; ++k) {
      const auto next = static_cast<uint8_t>(pattern[i + k]);
      if ((next & 0xC0) != 0x80) return absl::InvalidArgumentError("pattern: not valid UTF-8");
      c = (c << 6) | (next & 0x3F);
    }
    text.push_back(c);
    i += length;
  }
  bool anchored_start = mode == Mode::kFullMatch;
  bool anchored_end = mode == Mode::kFullMatch;
  if (!text.empty() && text.front() == '^') {
    anchored_start = true;
    text.erase(text.begin());
  }
  // A final '$' that is not escaped (an odd number of backslashes before it
  // would make it "\$").
  if (!text.empty() && text.back() == '$') {
    size_t backslashes = 0;
    while (backslashes + 1 < text.size() && text[text.size() - 2 - backslashes] == '\\') {
      ++backslashes;
    }
    if (backslashes % 2 == 0) {
      anchored_end = true;
      text.pop_back();
    }
  }
  HERD_ASSIGN_OR_RETURN(const Ast ast, Parser(std::move(text)).Parse());
  return RegexCompiler().Run(ast, !anchored_start, !anchored_end);
}

}  // namespace herd
