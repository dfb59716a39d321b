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

// f32 multiply-add rate of `num_threads` threads, in GFLOP/s (2 per
// multiply-add): 12 independent chains of the CPU's widest vector FMA per
// thread, enough to cover the FMA latency on two units. Best of `repetitions`.
double MeasureFmaPeakGflops(int num_threads, int repetitions = 3);

struct Summary {
  double median = 0;
  double stddev = 0;
  std::vector<double> samples;
};
Summary Summarize(std::vector<double> samples);

struct ModelBenchOptions {
  int64_t prompt_tokens = 512;  // prefill test (0 = skip)
  int64_t gen_tokens = 128;     // decode test (0 = skip)
  // Tokens already in the context when each test starts, prefilled untimed
  // once per repetition, like llama-bench -d: both tests run after them.
  int64_t depth = 0;
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
  // ResidentBytes() at the end of the tests, while the KV cache they filled
  // is still allocated.
  int64_t process_resident_bytes = 0;
  // Arithmetic of one prefill of prompt_tokens after `depth` tokens, in
  // FLOPs (2 per multiply-add): every matrix for every token, top_k experts
  // per token, the causal attention's scores and weighted values (over the
  // depth too), the lm head for the last token.
  double prefill_flops = 0;
  double prefill_gflops = 0;      // prefill_flops x median prefills per second
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
