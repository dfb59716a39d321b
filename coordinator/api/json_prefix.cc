#include "coordinator/api/json_prefix.h"

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

namespace herd {
namespace {

using Node = JsonSchema::Node;

// The literals of a value that is not enumerated, as kLiteral reads them.
const std::vector<std::string>& BuiltinLiterals() {
  static const auto* const kLiterals = new std::vector<std::string>{"true", "false", "null"};
  return *kLiterals;
}
constexpr uint64_t kTrueFalse = 0b011;
constexpr uint64_t kNullLiteral = 0b100;

bool IsWhitespaceByte(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }
bool IsHexDigit(uint8_t c) {
  return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
uint64_t Bit(int i) { return uint64_t{1} << i; }
bool BoundsLength(const Node& node) {
  return node.min_length > 0 || node.max_length != JsonSchema::kUnbounded;
}
// An integer node with a minimum or maximum.
bool Bounded(const Node& node) {
  return node.minimum != std::numeric_limits<int64_t>::min() ||
         node.maximum != std::numeric_limits<int64_t>::max();
}

}  // namespace

JsonPrefix::JsonPrefix(const JsonSchema* schema) : schema_(schema) { threads_.emplace_back(); }

bool JsonPrefix::complete() const {
  return std::any_of(threads_.begin(), threads_.end(),
                     [](const Thread& t) { return t.mode == Mode::kDone; });
}

int64_t JsonPrefix::PlainStringRoom() const {
  if (threads_.size() != 1) return -1;
  const Thread& t = threads_[0];
  if (t.mode != Mode::kString || t.utf8_left != 0) return -1;
  if (t.key) return t.free_key && t.candidates == 0 ? JsonSchema::kUnbounded : -1;
  const Node& n = schema_->node(t.node);
  if (n.pattern != nullptr) return -1;
  return BoundsLength(n) ? n.max_length - t.length : JsonSchema::kUnbounded;
}

bool JsonPrefix::Push(absl::string_view bytes) {
  for (const char c : bytes) {
    if (!Push(static_cast<uint8_t>(c))) return false;
  }
  return true;
}

bool JsonPrefix::Push(uint8_t c) {
  Threads forks;
  if (threads_.size() == 1) {
    const bool kept = Step(threads_[0], c, &forks);
    if (forks.empty()) return kept;
    if (!kept) threads_.clear();
  } else {
    Threads kept;
    for (Thread& t : threads_) {
      if (Step(t, c, &forks)) kept.push_back(std::move(t));
    }
    threads_ = std::move(kept);
  }
  for (Thread& fork : forks) {
    if (std::find(threads_.begin(), threads_.end(), fork) == threads_.end()) {
      threads_.push_back(std::move(fork));
    }
  }
  return !threads_.empty() && threads_.size() <= kMaxThreads;
}

bool JsonPrefix::Step(Thread& t, uint8_t c, Threads* forks) const {
  switch (t.mode) {
    case Mode::kStart:
      return StartValue(t, schema_->root(), c, forks);
    case Mode::kDone:
      return false;
    case Mode::kString:
    case Mode::kEscape:
    case Mode::kUnicode:
      return StringByte(t, c);
    case Mode::kLiteral:
      return LiteralByte(t, c, forks);
    case Mode::kNumber:
      return NumberByte(t, c, forks);
    case Mode::kValue:
    case Mode::kKeyOrEnd:
    case Mode::kKey:
    case Mode::kColon:
    case Mode::kCommaOrEnd:
    case Mode::kValueOrEnd:
      if (IsWhitespaceByte(c)) return TakeWhitespace(t, c);
      if (schema_->whitespace() != nullptr && !schema_->whitespace()->accepting(t.gap)) {
        return false;  // the whitespace pattern wants more here
      }
      t.gap = 0;
      break;
  }
  switch (t.mode) {
    case Mode::kValue:
      return StartValue(t, t.node, c, forks);
    case Mode::kKeyOrEnd:
      if (c == '}') return MayClose(t.frames.back()) && Close(t);
      return c == '"' && StartKey(t);
    case Mode::kKey:
      return c == '"' && StartKey(t);
    case Mode::kColon:
      if (c != ':') return false;
      t.mode = Mode::kValue;
      return true;
    case Mode::kCommaOrEnd:
      return AfterValue(t, c);
    case Mode::kValueOrEnd: {
      const Node& array = schema_->node(t.frames.back().node);
      if (c == ']') return array.min_items == 0 && Close(t);
      if (array.max_items == 0 || !schema_->node(array.items).satisfiable()) return false;
      return StartValue(t, array.items, c, forks);
    }
    default:
      return false;
  }
}

bool JsonPrefix::TakeWhitespace(Thread& t, uint8_t c) const {
  const Regex* pattern = schema_->whitespace();
  if (pattern == nullptr) return ++t.gap <= kMaxWhitespaceRun;
  const int32_t next = pattern->Next(t.gap, c);
  if (next < 0) return false;
  t.gap = next;
  return true;
}

bool JsonPrefix::StartValue(Thread& t, int32_t node, uint8_t c, Threads* forks) const {
  const Node& n = schema_->node(node);
  if (n.choices.empty()) return StartOne(t, node, c);
  const Thread before = t;
  bool kept = false;
  for (const int32_t choice : n.choices) {
    Thread copy = before;
    if (!StartOne(copy, choice, c)) continue;
    if (kept) {
      forks->push_back(std::move(copy));
    } else {
      t = std::move(copy);
      kept = true;
    }
  }
  return kept;
}

bool JsonPrefix::StartOne(Thread& t, int32_t node, uint8_t c) const {
  const Node& n = schema_->node(node);
  const uint8_t types = n.satisfiable_types;
  if (n.enumerated) {
    if (types == 0) return false;
    t.candidates = 0;
    for (size_t i = 0; i < n.literals.size(); ++i) t.candidates |= Bit(i);
    t.mode = Mode::kLiteral;
    t.node = node;
    t.pos = 0;
    return LiteralByte(t, c, nullptr);
  }
  if (c == '{' || c == '[') {
    const bool object = c == '{';
    if (!(types & (object ? JsonSchema::kObject : JsonSchema::kArray))) return false;
    if (t.frames.size() >= kMaxDepth) return false;
    t.frames.push_back(Frame{node, 0, 0, object});
    t.mode = object ? Mode::kKeyOrEnd : Mode::kValueOrEnd;
    return true;
  }
  if (c == '"') {
    if (!(types & JsonSchema::kString)) return false;
    t.mode = Mode::kString;
    t.node = node;
    t.key = false;
    t.length = 0;
    t.regex_state = n.pattern != nullptr ? n.pattern->start() : -1;
    return true;
  }
  if (c == '-' || IsDigit(c)) {
    if (!(types & (JsonSchema::kInteger | JsonSchema::kNumber))) return false;
    t.mode = Mode::kNumber;
    t.number = c == '-' ? Number::kMinus : c == '0' ? Number::kZero : Number::kInteger;
    t.integer = !(types & JsonSchema::kNumber);
    if (t.integer && Bounded(n)) {
      t.node = node;
      t.negative = c == '-';
      t.magnitude = c == '-' ? 0 : c - '0';
      return IntegerMayEndIn(n, t.negative, t.magnitude, t.number);
    }
    return true;
  }
  t.candidates = ((types & JsonSchema::kBoolean) ? kTrueFalse : 0) |
                 ((types & JsonSchema::kNull) ? kNullLiteral : 0);
  t.node = -1;
  t.pos = 0;
  t.mode = Mode::kLiteral;
  return LiteralByte(t, c, nullptr);
}

bool JsonPrefix::LiteralByte(Thread& t, uint8_t c, Threads* forks) const {
  const std::vector<std::string>& texts =
      t.node >= 0 ? schema_->node(t.node).literals : BuiltinLiterals();
  uint64_t continuing = 0;
  bool whole = false;
  for (uint64_t left = t.candidates; left != 0; left &= left - 1) {
    const int i = __builtin_ctzll(left);
    if (texts[i].size() == t.pos) {
      whole = true;
    } else if (static_cast<uint8_t>(texts[i][t.pos]) == c) {
      continuing |= Bit(i);
    }
  }
  if (continuing == 0) {
    // A whole literal that the next byte does not continue (only a number
    // can be a prefix of another) ends before `c`.
    if (!whole || forks == nullptr) return false;
    EndValue(t);
    return Step(t, c, forks);
  }
  t.candidates = continuing;
  ++t.pos;
  for (uint64_t left = continuing; left != 0; left &= left - 1) {
    if (texts[__builtin_ctzll(left)].size() != t.pos) return true;
  }
  EndValue(t);  // every candidate is whole: nothing can continue it
  return true;
}

bool JsonPrefix::IntegerMayEndIn(const Node& n, bool negative, int64_t magnitude, Number number) {
  const auto within = [&](int64_t v) { return n.minimum <= v && v <= n.maximum; };
  if (number == Number::kMinus) return n.minimum <= -1 || within(0);  // "-0" is 0
  if (number == Number::kZero) return within(0);                      // no digit may follow
  // With k more digits the magnitude is in [m 10^k, m 10^k + 10^k - 1].
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (int64_t lo = magnitude, hi = magnitude;;) {
    const int64_t a = negative ? -hi : lo;
    const int64_t b = negative ? -lo : hi;
    if (a <= n.maximum && b >= n.minimum) return true;
    if (lo > kMax / 10) return false;
    lo *= 10;
    hi = hi > (kMax - 9) / 10 ? kMax : hi * 10 + 9;
  }
}

bool JsonPrefix::BoundedIntegerByte(Thread& t, uint8_t c, Threads* forks) const {
  const Node& n = schema_->node(t.node);
  if (IsDigit(c)) {
    if (t.number == Number::kZero) return false;  // no leading zeros
    if (t.magnitude > (std::numeric_limits<int64_t>::max() - 9) / 10) return false;
    const int64_t magnitude = t.magnitude * 10 + (c - '0');
    const Number next = t.number == Number::kMinus && c == '0' ? Number::kZero : Number::kInteger;
    if (!IntegerMayEndIn(n, t.negative, magnitude, next)) return false;
    t.magnitude = magnitude;
    t.number = next;
    return true;
  }
  // `c` ends the number: it must be within the bounds.
  if (t.number == Number::kMinus) return false;
  const int64_t value = t.negative ? -t.magnitude : t.magnitude;
  if (value < n.minimum || value > n.maximum) return false;
  EndValue(t);
  return Step(t, c, forks);
}

bool JsonPrefix::NumberByte(Thread& t, uint8_t c, Threads* forks) const {
  const bool fraction_or_exponent = c == '.' || c == 'e' || c == 'E';
  if (t.integer && fraction_or_exponent) return false;
  if (t.integer && Bounded(schema_->node(t.node))) return BoundedIntegerByte(t, c, forks);
  switch (t.number) {
    case Number::kMinus:
      if (c == '0') {
        t.number = Number::kZero;
      } else if (IsDigit(c)) {
        t.number = Number::kInteger;
      } else {
        return false;
      }
      return true;
    case Number::kZero:
    case Number::kInteger:
      if (IsDigit(c) && t.number == Number::kInteger) return true;
      if (c == '.') {
        t.number = Number::kPoint;
        return true;
      }
      if (c == 'e' || c == 'E') {
        t.number = Number::kExponent;
        return true;
      }
      break;  // the number ends before `c`
    case Number::kPoint:
      if (!IsDigit(c)) return false;
      t.number = Number::kFraction;
      return true;
    case Number::kFraction:
      if (IsDigit(c)) return true;
      if (c == 'e' || c == 'E') {
        t.number = Number::kExponent;
        return true;
      }
      break;
    case Number::kExponent:
      if (c == '+' || c == '-') {
        t.number = Number::kExpSign;
        return true;
      }
      if (!IsDigit(c)) return false;
      t.number = Number::kExpDigits;
      return true;
    case Number::kExpSign:
      if (!IsDigit(c)) return false;
      t.number = Number::kExpDigits;
      return true;
    case Number::kExpDigits:
      if (IsDigit(c)) return true;
      break;
  }
  EndValue(t);
  return Step(t, c, forks);
}

bool JsonPrefix::StringByte(Thread& t, uint8_t c) const {
  const bool closing = t.mode == Mode::kString && t.utf8_left == 0 && c == '"';
  if (t.key && !closing && t.candidates != 0) {
    // Every byte of a key's text narrows the declared keys it may be (once
    // none is left, a free key's state stays the same byte after byte).
    const Node& object = schema_->node(t.frames.back().node);
    uint64_t matching = 0;
    for (uint64_t left = t.candidates; left != 0; left &= left - 1) {
      const int i = __builtin_ctzll(left);
      const std::string& name = object.properties[i].escaped_name;
      if (name.size() > t.pos && static_cast<uint8_t>(name[t.pos]) == c) matching |= Bit(i);
    }
    t.candidates = matching;
    t.pos = matching != 0 ? t.pos + 1 : 0;
    if (matching == 0 && !t.free_key) return false;
  }
  if (closing) {
    if (t.key) return EndKey(t);
    const Node& n = schema_->node(t.node);
    if (t.length < n.min_length) return false;
    if (t.regex_state >= 0 && !n.pattern->accepting(t.regex_state)) return false;
    t.length = 0;
    EndValue(t);
    return true;
  }
  if (t.mode == Mode::kString && t.utf8_left == 0 && !t.key) {
    // `c` starts a character (a byte, an escape or a UTF-8 sequence).
    const Node& n = schema_->node(t.node);
    if (BoundsLength(n)) {
      if (t.length >= n.max_length) return false;
      ++t.length;
    }
  }
  switch (t.mode) {
    case Mode::kString:
      if (t.utf8_left > 0) {
        if (c < t.utf8_low || c > t.utf8_high) return false;
        --t.utf8_left;
        t.utf8_low = 0x80;
        t.utf8_high = 0xBF;
        t.code_point = (t.code_point << 6) | (c & 0x3F);
        if (t.utf8_left > 0) {
          const int bits = 6 * t.utf8_left;
          return MayMatch(t, t.code_point << bits, ((t.code_point + 1) << bits) - 1);
        }
        return Matched(t, t.code_point);
      }
      if (c == '\\') {
        t.mode = Mode::kEscape;
        return MayMatch(t, 0, 0xFFFF);  // what escapes can write
      }
      if (c < 0x20) return false;
      if (c < 0x80) return Matched(t, c);
      t.code_point = c & (c >= 0xF0 ? 0x07 : c >= 0xE0 ? 0x0F : 0x1F);
      if (t.regex_state >= 0) {
        // The code points this lead byte may begin (E0 and F0 begin no
        // overlong forms).
        const int bits = c >= 0xF0 ? 18 : c >= 0xE0 ? 12 : 6;
        const uint32_t lo = c == 0xE0 ? 0x800 : c == 0xF0 ? 0x10000 : t.code_point << bits;
        if (!MayMatch(t, lo, ((t.code_point + 1) << bits) - 1)) return false;
      }
      // The lead byte of a UTF-8 sequence (RFC 3629: no overlongs, no
      // surrogates, nothing past U+10FFFF).
      if (c >= 0xC2 && c <= 0xDF) {
        t.utf8_left = 1;
      } else if (c >= 0xE0 && c <= 0xEF) {
        t.utf8_left = 2;
        if (c == 0xE0) t.utf8_low = 0xA0;
        if (c == 0xED) t.utf8_high = 0x9F;
      } else if (c >= 0xF0 && c <= 0xF4) {
        t.utf8_left = 3;
        if (c == 0xF0) t.utf8_low = 0x90;
        if (c == 0xF4) t.utf8_high = 0x8F;
      } else {
        return false;
      }
      return true;
    case Mode::kEscape:
      if (c == 'u') {
        t.mode = Mode::kUnicode;
        t.hex_left = 4;
        t.code_point = 0;
        return MayMatch(t, 0, 0xFFFF);
      }
      if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
          c == 't') {
        t.mode = Mode::kString;
        const uint32_t meaning = c == 'b'   ? '\b'
                                 : c == 'f' ? '\f'
                                 : c == 'n' ? '\n'
                                 : c == 'r' ? '\r'
                                 : c == 't' ? '\t'
                                            : c;
        return Matched(t, meaning);
      }
      return false;
    case Mode::kUnicode:
      if (!IsHexDigit(c)) return false;
      // No \uD800-\uDFFF: a lone surrogate is not text, and a pair can be
      // written as the UTF-8 it stands for.
      if (t.hex_left == 4) {
        t.escape_starts_with_d = c == 'd' || c == 'D';
      } else if (t.hex_left == 3 && t.escape_starts_with_d && (!IsDigit(c) || c >= '8')) {
        return false;
      }
      t.code_point = t.code_point * 16 + (IsDigit(c)               ? c - '0'
                                          : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                                                   : c - 'A' + 10);
      if (--t.hex_left == 0) {
        t.mode = Mode::kString;
        t.escape_starts_with_d = false;
        return Matched(t, t.code_point);
      }
      return MayMatch(t, t.code_point << (4 * t.hex_left),
                      ((t.code_point + 1) << (4 * t.hex_left)) - 1);
    default:
      return false;
  }
}

bool JsonPrefix::MayMatch(const Thread& t, uint32_t lo, uint32_t hi) const {
  if (t.regex_state < 0) return true;
  const Node& n = schema_->node(t.node);
  return n.pattern->MayTake(
      t.regex_state, lo, hi,
      n.max_length == JsonSchema::kUnbounded ? JsonSchema::kUnbounded : n.max_length - t.length);
}

bool JsonPrefix::Matched(Thread& t, uint32_t c) const {
  t.code_point = 0;
  if (t.regex_state < 0) return true;  // a key, or a string without a pattern
  const Node& n = schema_->node(t.node);
  const int32_t next = n.pattern->Next(t.regex_state, c);
  // The match must still fit in maxLength (t.length counts `c` already).
  if (next < 0 || (n.max_length != JsonSchema::kUnbounded &&
                   t.length + n.pattern->min_to_accept(next) > n.max_length)) {
    return false;
  }
  t.regex_state = next;
  return true;
}

bool JsonPrefix::MayTakeKey(const Frame& f) const {
  const Node& object = schema_->node(f.node);
  const int num_properties = static_cast<int>(object.properties.size());
  const int last = std::min<int>(object.first_required[f.next_property], num_properties - 1);
  for (int i = f.next_property; i <= last; ++i) {
    if (schema_->node(object.properties[i].node).satisfiable()) return true;
  }
  return object.additional >= 0 && object.first_required[f.next_property] == num_properties &&
         schema_->node(object.additional).satisfiable();
}

bool JsonPrefix::MayClose(const Frame& f) const {
  const Node& object = schema_->node(f.node);
  return object.first_required[f.next_property] == object.properties.size();
}

bool JsonPrefix::StartKey(Thread& t) const {
  const Frame& f = t.frames.back();
  const Node& object = schema_->node(f.node);
  const int num_properties = static_cast<int>(object.properties.size());
  const int first_required = object.first_required[f.next_property];
  t.free_key = object.additional >= 0 && first_required == num_properties &&
               schema_->node(object.additional).satisfiable();
  t.candidates = 0;
  if (t.free_key) {
    // All of them: an undeclared key may not be a declared one's name.
    for (int i = 0; i < num_properties; ++i) t.candidates |= Bit(i);
  } else {
    for (int i = f.next_property; i <= std::min(first_required, num_properties - 1); ++i) {
      if (schema_->node(object.properties[i].node).satisfiable()) t.candidates |= Bit(i);
    }
    if (t.candidates == 0) return false;
  }
  t.mode = Mode::kString;
  t.key = true;
  t.pos = 0;
  return true;
}

bool JsonPrefix::EndKey(Thread& t) const {
  Frame& f = t.frames.back();
  const Node& object = schema_->node(f.node);
  const int num_properties = static_cast<int>(object.properties.size());
  int exact = -1;
  for (uint64_t left = t.candidates; left != 0; left &= left - 1) {
    const int i = __builtin_ctzll(left);
    if (object.properties[i].escaped_name.size() == t.pos) exact = i;
  }
  if (exact >= 0) {
    const JsonSchema::Property& property = object.properties[exact];
    if (exact < f.next_property || exact > object.first_required[f.next_property] ||
        !schema_->node(property.node).satisfiable()) {
      return false;  // already written, or a required one would be skipped
    }
    t.node = property.node;
    f.next_property = static_cast<uint16_t>(exact + 1);
  } else if (t.free_key) {
    t.node = object.additional;
    f.next_property = static_cast<uint16_t>(num_properties);
  } else {
    return false;
  }
  t.mode = Mode::kColon;
  t.key = false;
  t.free_key = false;
  t.candidates = 0;
  t.pos = 0;
  return true;
}

bool JsonPrefix::AfterValue(Thread& t, uint8_t c) const {
  const Frame& f = t.frames.back();
  if (c == ',') {
    if (f.object) {
      if (!MayTakeKey(f)) return false;
      t.mode = Mode::kKey;
      return true;
    }
    const Node& array = schema_->node(f.node);
    if (f.count >= array.max_items || !schema_->node(array.items).satisfiable()) return false;
    t.mode = Mode::kValue;
    t.node = array.items;
    return true;
  }
  if (c == '}' && f.object) return MayClose(f) && Close(t);
  if (c == ']' && !f.object) return f.count >= schema_->node(f.node).min_items && Close(t);
  return false;
}

bool JsonPrefix::Close(Thread& t) const {
  t.frames.pop_back();
  EndValue(t);
  return true;
}

void JsonPrefix::EndValue(Thread& t) const {
  if (t.frames.empty()) {
    t.mode = Mode::kDone;
  } else {
    t.mode = Mode::kCommaOrEnd;
    if (!t.frames.back().object) ++t.frames.back().count;
  }
  // What only the value's own bytes needed: equal states compare equal.
  t.node = 0;
  t.number = Number::kMinus;
  t.integer = false;
  t.candidates = 0;
  t.pos = 0;
  t.length = 0;
  t.regex_state = -1;
  t.negative = false;
  t.magnitude = 0;
}

}  // namespace herd
