// CUDA runtime errors as absl::Status, for the .cu and .cc files of
// kernels/cuda that call the runtime (public headers stay free of CUDA types).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace herd::cuda {

// OK for cudaSuccess; otherwise InternalError "<what>: <CUDA's message>".
inline absl::Status FromCuda(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

}  // namespace herd::cuda
