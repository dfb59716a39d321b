#include "worker/step_plan.h"

#include <bit>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd {
namespace {

// Wire format, little-endian, no padding. Counts are U32 and precede their
// elements; strings are a U32 length and the bytes.
//
//   plan:   U32 magic "HRSP" | U32 version | U64 step_idx | U8 shutdown |
//           U32 num_chunks | chunk... | U64 placement_version |
//           U64 stage_version | string stage_placement
//   chunk:  U64 sequence_id | I64 start_pos | U32 n | I32 token_ids[n] |
//           U32 m | I32 block_table[m] | U8 sample | F32 temperature |
//           F32 top_p | I32 top_k | F32 min_p | F32 presence_penalty |
//           F32 frequency_penalty | F32 repetition_penalty |
//           U32 b | (I32 token_id, F32 bias)[b] | U64 seed |
//           I32 top_logprobs | I64 sample_idx |
//           U8 prompt_logprobs | I32 next_token_id |
//           U32 p | I32 penalized_prompt[p] | U32 o | I32 penalized_output[o] |
//           U32 a | U64 allowed_tokens[a]
//   result: U32 magic "HRSR" | U32 version | U64 step_idx | I32 rank |
//           string error | U32 n | sampled[n] |
//           I64 num_tokens | U32 l | I64 layer_expert_rows[l] |
//           U32 e | I64 expert_tokens[e] | F64 forward_seconds |
//           F64 dispatch_seconds | F64 combine_seconds | I64 all_to_all_bytes |
//           U64 placement_version | U64 ready_version | I64 staged_bytes |
//           string stage_error | F64 load_wait_seconds |
//           I64 routed_expert_calls | I64 skipped_expert_calls |
//           U32 c | (U64 sequence_id, I64 start_pos, U32 e, logprobs[e])[c]
//   logprobs: F32 logprob | U32 k | (I32 token_id, F32 logprob)[k]
//   sampled: U64 sequence_id | I32 token_id | U8 has_logprobs, and when it
//           is 1: logprobs
//
// A new field bumps the version; a reader rejects versions it does not know
// (every rank runs the same build).
constexpr uint32_t kPlanMagic = 0x50535248;    // "HRSP"
constexpr uint32_t kResultMagic = 0x52535248;  // "HRSR"
constexpr uint32_t kVersion = 8;

// Bytes of the fixed-size fields of one chunk and one sampled token: the
// least a count of them can take, checked before anything is allocated.
constexpr size_t kMinChunkBytes =
    8 + 8 + 4 + 4 + 1 + 4 + 4 + 4 + 4 + 4 + 4 + 4 + 4 + 8 + 4 + 8 + 1 + 4 + 4 + 4;
constexpr size_t kTokenBiasBytes = 4 + 4;
constexpr size_t kSampledTokenBytes = 8 + 4 + 1;
constexpr size_t kTokenLogprobBytes = 4 + 4;
constexpr size_t kLogprobsBytes = 4 + 4;
constexpr size_t kChunkLogprobsBytes = 8 + 8 + 4;

class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void I32(int32_t v) { U32(static_cast<uint32_t>(v)); }
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void F32(float v) { U32(std::bit_cast<uint32_t>(v)); }
  void F64(double v) { U64(std::bit_cast<uint64_t>(v)); }
  void Bool(bool v) { U8(v ? 1 : 0); }
  void Count(size_t n) {
    // NOTE: a step is bounded by memory long before 2^32 elements.
    HERD_CHECK(n <= std::numeric_limits<uint32_t>::max());
    U32(static_cast<uint32_t>(n));
  }
  void String(const std::string& s) {
    Count(s.size());
    out_.append(s);
  }
  void I32s(const std::vector<int32_t>& v) {
    Count(v.size());
    for (int32_t x : v) I32(x);
  }
  void I64s(const std::vector<int64_t>& v) {
    Count(v.size());
    for (int64_t x : v) I64(x);
  }
  void U64s(const std::vector<uint64_t>& v) {
    Count(v.size());
    for (uint64_t x : v) U64(x);
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

// Reads what Writer wrote. Sticky: the first failure is kept, and every read
// after it returns zero without touching the input, so a decoder reads all
// fields unconditionally and checks once at the end.
class Reader {
 public:
  Reader(absl::string_view bytes, const char* what) : bytes_(bytes), what_(what) {}

  uint8_t U8() {
    const char* p = Take(1);
    return p == nullptr ? 0 : static_cast<uint8_t>(*p);
  }
  uint32_t U32() {
    const char* p = Take(4);
    uint32_t v = 0;
    for (int i = 0; p != nullptr && i < 4; ++i) {
      v |= static_cast<uint32_t>(static_cast<uint8_t>(p[i])) << (8 * i);
    }
    return v;
  }
  uint64_t U64() {
    const char* p = Take(8);
    uint64_t v = 0;
    for (int i = 0; p != nullptr && i < 8; ++i) {
      v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
    }
    return v;
  }
  int32_t I32() { return static_cast<int32_t>(U32()); }
  int64_t I64() { return static_cast<int64_t>(U64()); }
  float F32() { return std::bit_cast<float>(U32()); }
  double F64() { return std::bit_cast<double>(U64()); }
  bool Bool() {
    const uint8_t v = U8();
    if (v > 1) Fail(absl::StrCat("a flag byte is ", static_cast<int>(v)));
    return v == 1;
  }
  // A count of elements taking at least `min_element_bytes` each; fails
  // (returning 0) when the rest of the input cannot hold them.
  size_t Count(size_t min_element_bytes) {
    const size_t n = U32();
    if (n > Remaining() / min_element_bytes) {
      Fail(absl::StrCat("a count of ", n, " needs at least ", n * min_element_bytes, " bytes but ",
                        Remaining(), " remain"));
      return 0;
    }
    return n;
  }
  std::string String() {
    const size_t n = Count(1);
    const char* p = Take(n);
    return p == nullptr ? std::string() : std::string(p, n);
  }
  std::vector<int32_t> I32s() {
    std::vector<int32_t> v(Count(4));
    for (int32_t& x : v) x = I32();
    return v;
  }
  std::vector<int64_t> I64s() {
    std::vector<int64_t> v(Count(8));
    for (int64_t& x : v) x = I64();
    return v;
  }
  std::vector<uint64_t> U64s() {
    std::vector<uint64_t> v(Count(8));
    for (uint64_t& x : v) x = U64();
    return v;
  }
  void Header(uint32_t magic) {
    const uint32_t got_magic = U32();
    if (status_.ok() && got_magic != magic) {
      Fail(absl::StrCat("bad magic 0x", absl::Hex(got_magic)));
      return;
    }
    const uint32_t version = U32();
    if (status_.ok() && version != kVersion) {
      Fail(absl::StrCat("version ", version, ", this build reads ", kVersion));
    }
  }
  // OK when every read succeeded and the input is used up.
  absl::Status Finish() {
    if (status_.ok() && pos_ != bytes_.size()) {
      field_start_ = pos_;
      Fail(absl::StrCat(bytes_.size() - pos_, " bytes past the end"));
    }
    return status_;
  }

 private:
  size_t Remaining() const { return bytes_.size() - pos_; }
  const char* Take(size_t n) {
    if (!status_.ok()) return nullptr;
    field_start_ = pos_;
    if (n > Remaining()) {
      Fail(absl::StrCat("truncated: ", n, " bytes needed, ", Remaining(), " remain"));
      return nullptr;
    }
    const char* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  void Fail(absl::string_view why) {
    if (status_.ok()) {
      status_ = absl::InvalidArgumentError(absl::StrCat(
          "malformed ", what_, " (", bytes_.size(), " bytes) at byte ", field_start_, ": ", why));
    }
  }

  absl::string_view bytes_;
  const char* what_;
  size_t pos_ = 0;
  size_t field_start_ = 0;  // where the field read last (or being read) starts
  absl::Status status_;
};

void WriteLogprobs(Writer& w, const SampledLogprobs& logprobs) {
  w.F32(logprobs.logprob);
  w.Count(logprobs.top.size());
  for (const TokenLogprob& top : logprobs.top) {
    w.I32(top.token_id);
    w.F32(top.logprob);
  }
}

SampledLogprobs ReadLogprobs(Reader& r) {
  SampledLogprobs logprobs;
  logprobs.logprob = r.F32();
  logprobs.top.resize(r.Count(kTokenLogprobBytes));
  for (TokenLogprob& top : logprobs.top) {
    top.token_id = r.I32();
    top.logprob = r.F32();
  }
  return logprobs;
}

}  // namespace

std::string EncodeStepPlan(const RankStepPlan& plan) {
  Writer w;
  w.U32(kPlanMagic);
  w.U32(kVersion);
  w.U64(plan.step_idx);
  w.Bool(plan.shutdown);
  w.Count(plan.chunks.size());
  for (const PlannedChunk& c : plan.chunks) {
    w.U64(c.sequence_id);
    w.I64(c.start_pos);
    w.I32s(c.token_ids);
    w.I32s(c.block_table);
    w.Bool(c.sample);
    w.F32(c.sampling.temperature);
    w.F32(c.sampling.top_p);
    w.I32(c.sampling.top_k);
    w.F32(c.sampling.min_p);
    w.F32(c.sampling.presence_penalty);
    w.F32(c.sampling.frequency_penalty);
    w.F32(c.sampling.repetition_penalty);
    w.Count(c.sampling.logit_bias.size());
    for (const TokenBias& b : c.sampling.logit_bias) {
      w.I32(b.token_id);
      w.F32(b.bias);
    }
    w.U64(c.sampling.seed);
    w.I32(c.sampling.top_logprobs);
    w.I64(c.sample_idx);
    w.Bool(c.prompt_logprobs);
    w.I32(c.next_token_id);
    w.I32s(c.penalized_prompt);
    w.I32s(c.penalized_output);
    w.U64s(c.allowed_tokens);
  }
  w.U64(plan.placement_version);
  w.U64(plan.stage_version);
  w.String(plan.stage_placement);
  return w.Take();
}

absl::StatusOr<RankStepPlan> DecodeStepPlan(absl::string_view bytes) {
  Reader r(bytes, "step plan");
  r.Header(kPlanMagic);
  RankStepPlan plan;
  plan.step_idx = r.U64();
  plan.shutdown = r.Bool();
  plan.chunks.resize(r.Count(kMinChunkBytes));
  for (PlannedChunk& c : plan.chunks) {
    c.sequence_id = r.U64();
    c.start_pos = r.I64();
    c.token_ids = r.I32s();
    c.block_table = r.I32s();
    c.sample = r.Bool();
    c.sampling.temperature = r.F32();
    c.sampling.top_p = r.F32();
    c.sampling.top_k = r.I32();
    c.sampling.min_p = r.F32();
    c.sampling.presence_penalty = r.F32();
    c.sampling.frequency_penalty = r.F32();
    c.sampling.repetition_penalty = r.F32();
    c.sampling.logit_bias.resize(r.Count(kTokenBiasBytes));
    for (TokenBias& b : c.sampling.logit_bias) {
      b.token_id = r.I32();
      b.bias = r.F32();
    }
    c.sampling.seed = r.U64();
    c.sampling.top_logprobs = r.I32();
    c.sample_idx = r.I64();
    c.prompt_logprobs = r.Bool();
    c.next_token_id = r.I32();
    c.penalized_prompt = r.I32s();
    c.penalized_output = r.I32s();
    c.allowed_tokens = r.U64s();
  }
  plan.placement_version = r.U64();
  plan.stage_version = r.U64();
  plan.stage_placement = r.String();
  HERD_RETURN_IF_ERROR(r.Finish());
  return plan;
}

std::string EncodeStepResult(const RankStepResult& result) {
  Writer w;
  w.U32(kResultMagic);
  w.U32(kVersion);
  w.U64(result.step_idx);
  w.I32(result.rank);
  w.String(result.error);
  w.Count(result.sampled.size());
  for (const SampledToken& t : result.sampled) {
    w.U64(t.sequence_id);
    w.I32(t.token_id);
    w.Bool(t.logprobs.has_value());
    if (t.logprobs) WriteLogprobs(w, *t.logprobs);
  }
  w.I64(result.num_tokens);
  w.I64s(result.layer_expert_rows);
  w.I64s(result.expert_tokens);
  w.F64(result.forward_seconds);
  w.F64(result.dispatch_seconds);
  w.F64(result.combine_seconds);
  w.I64(result.all_to_all_bytes);
  w.U64(result.placement_version);
  w.U64(result.ready_version);
  w.I64(result.staged_bytes);
  w.String(result.stage_error);
  w.F64(result.load_wait_seconds);
  w.I64(result.routed_expert_calls);
  w.I64(result.skipped_expert_calls);
  w.Count(result.prompt_logprobs.size());
  for (const ChunkLogprobs& c : result.prompt_logprobs) {
    w.U64(c.sequence_id);
    w.I64(c.start_pos);
    w.Count(c.entries.size());
    for (const SampledLogprobs& e : c.entries) WriteLogprobs(w, e);
  }
  return w.Take();
}

absl::StatusOr<RankStepResult> DecodeStepResult(absl::string_view bytes) {
  Reader r(bytes, "step result");
  r.Header(kResultMagic);
  RankStepResult result;
  result.step_idx = r.U64();
  result.rank = r.I32();
  result.error = r.String();
  result.sampled.resize(r.Count(kSampledTokenBytes));
  for (SampledToken& t : result.sampled) {
    t.sequence_id = r.U64();
    t.token_id = r.I32();
    if (r.Bool()) t.logprobs = ReadLogprobs(r);
  }
  result.num_tokens = r.I64();
  result.layer_expert_rows = r.I64s();
  result.expert_tokens = r.I64s();
  result.forward_seconds = r.F64();
  result.dispatch_seconds = r.F64();
  result.combine_seconds = r.F64();
  result.all_to_all_bytes = r.I64();
  result.placement_version = r.U64();
  result.ready_version = r.U64();
  result.staged_bytes = r.I64();
  result.stage_error = r.String();
  result.load_wait_seconds = r.F64();
  result.routed_expert_calls = r.I64();
  result.skipped_expert_calls = r.I64();
  result.prompt_logprobs.resize(r.Count(kChunkLogprobsBytes));
  for (ChunkLogprobs& c : result.prompt_logprobs) {
    c.sequence_id = r.U64();
    c.start_pos = r.I64();
    c.entries.resize(r.Count(kLogprobsBytes));
    for (SampledLogprobs& e : c.entries) e = ReadLogprobs(r);
  }
  HERD_RETURN_IF_ERROR(r.Finish());
  return result;
}

}  // namespace herd
