// Guided decoding: which tokens a sequence may sample next. The executor asks
// before each token the sequence samples (the answer travels to the rank
// that samples as a bitmask in the step plan, PlannedChunk::allowed_tokens)
// and hands it every token sampled. One instance per sequence; the executor
// calls it under its lock, from one thread at a time.
#pragma once

#include <cstdint>

#include "absl/types/span.h"

namespace herd {

class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;

  // Sets bit t % 64 of mask[t / 64] for each vocabulary id t that may come
  // next (`mask` is zeroed and covers the vocabulary); returns how many.
  virtual int64_t Allowed(absl::Span<uint64_t> mask) const = 0;

  // Takes the token the sequence sampled.
  virtual void Accept(int32_t token_id) = 0;

  // Nothing more may follow: the sequence ends with finish reason stop.
  virtual bool complete() const = 0;

  // The output so far is a whole answer though more may follow (a pattern
  // such as "a+"): the sequence's stop ids are allowed beside Allowed's
  // tokens, and sampling one ends it as stopped.
  virtual bool may_end() const { return complete(); }
};

}  // namespace herd
