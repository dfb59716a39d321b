// Row gathers inside one memory space (a communicator's: host memory, or
// device memory for nccl), so that an expert exchange can regroup rows where
// they are instead of taking them through the host (worker/resident_row_exchange.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "absl/status/status.h"

namespace herd {

// The mover may run beside a compute side (the engine's CUDA stream): the
// two are ordered only where the caller says so.
class RowMover {
 public:
  virtual ~RowMover() = default;
  // dst F32 [num_rows, row_floats]: row i is src's row index[i], zeros where
  // index[i] < 0. index I32 [num_rows]; every pointer in the mover's memory
  // space, dst not overlapping src. May return before the copy is done (a
  // CUDA stream); gathers run in the order they were issued.
  virtual absl::Status GatherRows(const float* src, const int32_t* index, int64_t num_rows,
                                  int64_t row_floats, float* dst) = 0;
  // Gathers issued from now on start after the compute side's work issued so
  // far: they may read what it writes.
  virtual absl::Status WaitForCompute() = 0;
  // Compute work issued from now on starts after the gathers issued so far:
  // it may read what they write.
  virtual absl::Status ComputeWaitsForGathers() = 0;
  // Returns once every gather issued so far is done.
  virtual absl::Status Finish() = 0;
};

// Host memory: each gather is done when it returns, on the caller's thread,
// which is the compute side too.
class HostRowMover final : public RowMover {
 public:
  absl::Status GatherRows(const float* src, const int32_t* index, int64_t num_rows,
                          int64_t row_floats, float* dst) override {
    const size_t row_bytes = static_cast<size_t>(row_floats) * sizeof(float);
    for (int64_t i = 0; i < num_rows; ++i) {
      float* out = dst + i * row_floats;
      if (index[i] < 0) {
        std::memset(out, 0, row_bytes);
      } else {
        std::memcpy(out, src + static_cast<int64_t>(index[i]) * row_floats, row_bytes);
      }
    }
    return absl::OkStatus();
  }
  absl::Status WaitForCompute() override { return absl::OkStatus(); }
  absl::Status ComputeWaitsForGathers() override { return absl::OkStatus(); }
  absl::Status Finish() override { return absl::OkStatus(); }
};

}  // namespace herd
