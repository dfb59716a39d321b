// RowMover (worker/row_mover.h) on the GPU: the gathers of a
// ResidentRowExchange run as cuda::GatherRows on a stream of their own, so
// that the engine's stream (the compute side) can run other work, such as a
// shared expert, while rows travel; events order the two where asked.
#pragma once

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/row_mover.h"

namespace herd {

class CudaRowMover final : public RowMover {
 public:
  // On the current device; `compute_stream` (a cudaStream_t) is borrowed.
  // Errors: Internal with CUDA's message.
  static absl::StatusOr<std::unique_ptr<CudaRowMover>> Create(void* compute_stream);
  ~CudaRowMover() override;
  CudaRowMover(const CudaRowMover&) = delete;
  CudaRowMover& operator=(const CudaRowMover&) = delete;

  absl::Status GatherRows(const float* src, const int32_t* index, int64_t num_rows,
                          int64_t row_floats, float* dst) override;
  absl::Status WaitForCompute() override;
  absl::Status ComputeWaitsForGathers() override;
  absl::Status Finish() override;

 private:
  explicit CudaRowMover(void* compute_stream) : compute_stream_(compute_stream) {}

  void* const compute_stream_;
  void* stream_ = nullptr;         // the gathers'
  void* compute_point_ = nullptr;  // event: compute work issued before WaitForCompute
  void* gathers_point_ = nullptr;  // event: gathers issued before ComputeWaitsForGathers
};

}  // namespace herd
