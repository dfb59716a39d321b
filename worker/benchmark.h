// Throughput benchmark of one engine, the measurement behind `herd bench`:
// prefill and decode tokens/s like llama-bench's ppN / tgN, the weight bytes a
// decode step reads, and this machine's memory bandwidth measured in the same
// run, so decode can be stated as a share of the physical limit.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "worker/forward_engine.h"

namespace herd {

struct BandwidthResult {
  double read_gbps = 0;  // sum-reduction over a buffer far larger than the caches
  double copy_gbps = 0;  // STREAM Copy: bytes read + bytes written per second
};

// Measures memory bandwidth with `num_threads` threads over `buffer_bytes`
// (default 1 GiB), best of `repetitions`. Allocates the buffer.
BandwidthResult MeasureMemoryBandwidth(int num_threads, int64_t buffer_bytes = int64_t{1} << 30,
                                       int repetitions = 5);

struct Summary {
  double median = 0;
  double stddev = 0;
  std::vector<double> samples;
};
Summary Summarize(std::vector<double> samples);

struct ModelBenchOptions {
  int64_t prompt_tokens = 512;  // prefill test (0 = skip)
  int64_t gen_tokens = 128;     // decode test from an empty context (0 = skip)
  int repetitions = 5;
  uint64_t seed = 1;  // random token ids
};

struct ModelBenchResult {
  Summary prefill_tokens_per_second;
  Summary decode_tokens_per_second;
  // Weight bytes one decode step reads: every non-expert matrix, top_k
  // experts' FFNs (fewer by the share dynamic skipping left out), the lm head
  // and one embedding row.
  int64_t decode_weight_bytes = 0;
  double decode_weight_gbps = 0;  // decode_weight_bytes x median decode tokens/s
  // Share of routed expert calls dynamic skipping left out while decoding.
  double decode_skipped_fraction = 0;
};

// Runs the prefill and decode tests on `engine`. InvalidArgument when the
// model's context cannot hold the test.
absl::StatusOr<ModelBenchResult> RunModelBenchmark(ForwardEngine& engine, const Model& model,
                                                   const ModelBenchOptions& options);

// Bytes resident in this process (VmRSS), or 0 when unknown.
int64_t ResidentBytes();

}  // namespace herd
