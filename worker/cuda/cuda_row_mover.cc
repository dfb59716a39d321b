#include "worker/cuda/cuda_row_mover.h"

#include "core/status.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/routing.h"

namespace herd {

absl::StatusOr<std::unique_ptr<CudaRowMover>> CudaRowMover::Create(void* compute_stream) {
  std::unique_ptr<CudaRowMover> mover(new CudaRowMover(compute_stream));
  HERD_RETURN_IF_ERROR(cuda::StreamCreate(&mover->stream_));
  HERD_RETURN_IF_ERROR(cuda::EventCreate(&mover->compute_point_));
  HERD_RETURN_IF_ERROR(cuda::EventCreate(&mover->gathers_point_));
  return mover;
}

CudaRowMover::~CudaRowMover() {
  if (stream_ != nullptr) (void)cuda::Synchronize(stream_);
  if (gathers_point_ != nullptr) (void)cuda::EventDestroy(gathers_point_);
  if (compute_point_ != nullptr) (void)cuda::EventDestroy(compute_point_);
  if (stream_ != nullptr) (void)cuda::StreamDestroy(stream_);
}

absl::Status CudaRowMover::GatherRows(const float* src, const int32_t* index, int64_t num_rows,
                                      int64_t row_floats, float* dst) {
  // A row of index i is src row i / top_k: top_k 1 gathers by index.
  return cuda::GatherRows(src, index, num_rows, /*top_k=*/1, row_floats, dst, stream_);
}

absl::Status CudaRowMover::WaitForCompute() {
  HERD_RETURN_IF_ERROR(cuda::EventRecord(compute_point_, compute_stream_));
  return cuda::StreamWaitEvent(stream_, compute_point_);
}

absl::Status CudaRowMover::ComputeWaitsForGathers() {
  HERD_RETURN_IF_ERROR(cuda::EventRecord(gathers_point_, stream_));
  return cuda::StreamWaitEvent(compute_stream_, gathers_point_);
}

absl::Status CudaRowMover::Finish() { return cuda::Synchronize(stream_); }

}  // namespace herd
