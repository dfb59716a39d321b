// F32 -> F16, for writing the F16 KV cache. Dispatched on ActiveIsa(): F16C
// on AVX2 and AVX-512 CPUs, portable C++ otherwise; every path gives the same
// bits (round to nearest even, overflow to infinity; a NaN stays a NaN).
// (The attention kernel widens F16 back as it loads it.)
#pragma once

#include <cstdint>

namespace herd::cpu {

// dst[i] = src[i] rounded to F16, for i < n.
void ConvertF32ToF16(const float* src, int64_t n, uint16_t* dst);

}  // namespace herd::cpu
