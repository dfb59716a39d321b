// The (value, index) order the router and the samplers share, and a warp-wide
// arg-max by it. Device code only, for kernels/cuda's .cu files.
#pragma once

namespace herd::cuda {

// True when (av, ai) comes before (bv, bi): the larger value, ties to the
// lower index (the CPU reference's order for experts and tokens).
__device__ __forceinline__ bool Beats(float av, int ai, float bv, int bi) {
  return av > bv || (av == bv && ai < bi);
}

// Every lane of a full warp ends with the warp's first (value, index) by Beats.
__device__ __forceinline__ void WarpArgMax(float& value, int& index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const float other_value = __shfl_xor_sync(0xffffffffu, value, offset);
    const int other_index = __shfl_xor_sync(0xffffffffu, index, offset);
    if (Beats(other_value, other_index, value, index)) {
      value = other_value;
      index = other_index;
    }
  }
}

}  // namespace herd::cuda
