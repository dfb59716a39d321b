#include "kernels/convert.h"

#include <immintrin.h>

#include "core/dtype.h"
#include "kernels/cpu_features.h"

namespace herd::cpu {
namespace {

void F32ToF16Scalar(const float* src, int64_t n, uint16_t* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = F32ToF16(src[i]);
}

__attribute__((target("avx2,f16c"))) void F32ToF16F16c(const float* src, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

}  // namespace

void ConvertF32ToF16(const float* src, int64_t n, uint16_t* dst) {
  if (ActiveIsa() >= Isa::kAvx2) return F32ToF16F16c(src, n, dst);
  F32ToF16Scalar(src, n, dst);
}

}  // namespace herd::cpu
