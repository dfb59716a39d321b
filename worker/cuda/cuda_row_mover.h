// RowMover (worker/row_mover.h) on a CUDA stream: the gathers of a
// ResidentRowExchange run as cuda::GatherRows on the engine's stream, in order
// with its kernels, and Finish synchronises the stream.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/routing.h"
#include "worker/row_mover.h"

namespace herd {

class CudaRowMover final : public RowMover {
 public:
  // `stream` (a cudaStream_t) is borrowed.
  explicit CudaRowMover(void* stream) : stream_(stream) {}

  absl::Status GatherRows(const float* src, const int32_t* index, int64_t num_rows,
                          int64_t row_floats, float* dst) override {
    // A row of index i is src row i / top_k: top_k 1 gathers by index.
    return cuda::GatherRows(src, index, num_rows, /*top_k=*/1, row_floats, dst, stream_);
  }
  absl::Status Finish() override { return cuda::Synchronize(stream_); }

 private:
  void* const stream_;
};

}  // namespace herd
