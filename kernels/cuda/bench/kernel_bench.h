// `herd bench kernels`: each CUDA op's time on this GPU, next to the GPU's
// own ceilings measured in the same run (device-to-device copy bandwidth,
// cuBLAS bf16 GEMM rate) and next to cuBLAS bf16 on the expert GEMM's shapes.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace herd::cuda {

struct KernelBenchOptions {
  int64_t hidden = 4096;  // the expert GEMM's shapes: gate/up [ffn, hidden], down [hidden, ffn]
  int64_t ffn = 14336;
  int64_t experts = 8;  // active experts, each with the same number of tokens
  int bits = 4;         // 4 (W4A16) or 8 (W8A16)
  int group_size = 32;
  std::vector<int64_t> decode_tokens = {1, 2, 4, 8, 16, 32, 64};  // tokens per expert
  std::vector<int64_t> prefill_tokens = {256, 1024, 4096};
  // The other ops' shapes (Mixtral-8x7B's by default).
  bool other_ops = true;
  int64_t heads = 32;
  int64_t kv_heads = 8;
  int64_t head_dim = 128;
  int64_t vocab = 32000;
  int64_t large_vocab = 152064;  // one row sampled over a Qwen-sized vocabulary
  int64_t decode_batch = 64;     // sequences of one decode step
  int64_t decode_context = 2048;
  int64_t prefill_length = 2048;
  int iterations = 50;  // timed runs per row; the median is reported
  int warmup = 5;

  absl::Status Validate() const;
};

// The device-to-device copy bandwidth of the current GPU: bytes read +
// written per second over a 2 GiB copy, in GB/s (median of 20).
absl::StatusOr<double> MeasureCopyBandwidth();

// Runs every measurement and prints the tables to `out`. FailedPrecondition
// when no CUDA device is usable.
absl::Status RunKernelBench(const KernelBenchOptions& options, std::ostream& out);

}  // namespace herd::cuda
