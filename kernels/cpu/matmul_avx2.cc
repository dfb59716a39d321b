// AVX2 + FMA + F16C kernels behind Matmul, for CPUs without AVX-512 (and for
// HERD_CPU_ISA=avx2). Same layouts and results as matmul_avx512.cc, with
// 256-bit registers: a group of 16 rows is two halves of 8 rows, and int8 dot
// products use vpmaddubsw + vpmaddwd (no VNNI needed). Each function carries
// its own target attribute; Matmul calls these only when ActiveIsa() is kAvx2.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/matmul_kernels.h"

#define HERD_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace herd::cpu {
namespace {

constexpr int kTokenTile = 4;

HERD_AVX2 inline void StoreHalf(const KernelArgs& args, int64_t g, int half, int64_t t,
                                __m256 acc) {
  const PackedMatrix& w = *args.w;
  const int64_t row0 = g * kPackRows + half * 8;
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  for (int r = 0; r < 8 && row0 + r < w.rows; ++r) {
    args.y[t * w.rows + row0 + r] = lanes[r] + (args.bias != nullptr ? args.bias[row0 + r] : 0.0f);
  }
}

// The 4 int8 values at p as one 32-bit lane, for a broadcast.
HERD_AVX2 inline int32_t LoadQuad(const int8_t* p) {
  int32_t quad;
  std::memcpy(&quad, p, sizeof(quad));
  return quad;
}

// Sum of u8 x s8 products, 4 per 32-bit lane.
HERD_AVX2 inline __m256i DotU8S8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// One token's integer dot with one half (8 rows) of a 32-column block: u
// holds the half's 8 vectors of unsigned codes, 4 columns per 32-bit lane
// (kBits 8: flipped to signed, as Q8_0's bytes), qa the token's 32 int8
// activations. Codes of at most 4 bits sum all 8 vpmaddubsw pair sums in
// int16 (8 x 2 x 15 x 127 < 2^15) and subtract the zero code times the
// activations' sum; 8-bit codes take |w| x sign(a, w), which yields the
// centred dot directly.
template <int kBits>
HERD_AVX2 inline __attribute__((always_inline)) __m256i CodesDotHalf(const __m256i* u,
                                                                     const int8_t* qa,
                                                                     int32_t activation_sum) {
  constexpr int32_t kZero = 1 << (kBits - 1);
  if constexpr (kBits == 8) {
    __m256i dot = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int s = 0; s < 8; ++s) {
      const __m256i signed_a = _mm256_sign_epi8(_mm256_set1_epi32(LoadQuad(qa + 4 * s)), u[s]);
      dot = _mm256_add_epi32(dot, DotU8S8(_mm256_abs_epi8(u[s]), signed_a));
    }
    return dot;
  } else {
    __m256i pairs = _mm256_maddubs_epi16(u[0], _mm256_set1_epi32(LoadQuad(qa)));
#pragma GCC unroll 8
    for (int s = 1; s < 8; ++s) {
      pairs = _mm256_add_epi16(pairs,
                               _mm256_maddubs_epi16(u[s], _mm256_set1_epi32(LoadQuad(qa + 4 * s))));
    }
    return _mm256_add_epi32(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)),
                            _mm256_set1_epi32(-kZero * activation_sum));
  }
}

// Half `h` (rows 8h..8h+7) of the 8 steps of one rows16 block, unsigned
// (core/quant_format.h); as in matmul_avx512.cc.
HERD_AVX2 inline __m256i LoadSliceHalf(const uint8_t* block, int slice, int h) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + slice * 64 + h * 32));
}

// The codes as CodesDotHalf takes them: 8-bit ones flipped to signed (Herd's
// unsigned codes and Q8_0's value + 128 bytes alike); Q4_0's nibbles are
// 4-bit codes.
template <int kBits>
HERD_AVX2 inline void UnpackCodesHalf(const uint8_t* block, int h, __m256i u[8]) {
  if constexpr (kBits == 8) {
    const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
    for (int s = 0; s < 8; ++s) u[s] = _mm256_xor_si256(LoadSliceHalf(block, s, h), flip);
  } else if constexpr (kBits == 4) {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    for (int j = 0; j < 4; ++j) {
      const __m256i v = LoadSliceHalf(block, j, h);
      u[j] = _mm256_and_si256(v, mask);
      u[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    }
  } else {
    const __m256i mask = _mm256_set1_epi8(0x03);
    for (int j = 0; j < 2; ++j) {
      const __m256i v = LoadSliceHalf(block, j, h);
      u[j] = _mm256_and_si256(v, mask);
      u[j + 2] = _mm256_and_si256(_mm256_srli_epi16(v, 2), mask);
      u[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
      u[j + 6] = _mm256_and_si256(_mm256_srli_epi16(v, 6), mask);
    }
    if constexpr (kBits == 3) {
      const __m256i hi = LoadSliceHalf(block, 2, h);
      const __m256i bit2 = _mm256_set1_epi8(0x04);
      u[0] = _mm256_or_si256(u[0], _mm256_and_si256(_mm256_slli_epi16(hi, 2), bit2));
      u[1] = _mm256_or_si256(u[1], _mm256_and_si256(_mm256_slli_epi16(hi, 1), bit2));
      u[2] = _mm256_or_si256(u[2], _mm256_and_si256(hi, bit2));
      for (int s = 3; s < 8; ++s) {
        u[s] = _mm256_or_si256(
            u[s], _mm256_and_si256(_mm256_srl_epi16(hi, _mm_cvtsi32_si128(s - 2)), bit2));
      }
    }
  }
}

// Q4_0x16 (kBits 4) and Q8_0x16 (kBits 8), half h (rows 8h..8h+7) of block b
// for kTokens tokens from t0: the half's codes, then its F16 scales after the
// block's payload; each token's dot is scaled by both scales and added into
// acc[j].
template <int kBits, int kTokens>
HERD_AVX2 inline __attribute__((always_inline)) void GgmlBlockHalf(const KernelArgs& args,
                                                                   const uint8_t* blk, int h,
                                                                   int64_t b, int64_t t0,
                                                                   __m256* acc) {
  const QuantizedActivations& a = *args.a;
  const int64_t cols = args.w->cols;
  const int64_t nb = cols / 32;
  __m256i u[8];
  UnpackCodesHalf<kBits>(blk, h, u);
  const __m256 wscale =
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + kBits * 64 + h * 16)));
#pragma GCC unroll 8
  for (int j = 0; j < kTokens; ++j) {
    const int64_t t = t0 + j;
    const __m256i dot = CodesDotHalf<kBits>(u, a.qs + t * cols + b * 32, a.sum[t * nb + b]);
    acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                             _mm256_mul_ps(wscale, _mm256_set1_ps(a.d[t * nb + b])), acc[j]);
  }
}

// One group of a Q4_0x16 (kBits 4) or Q8_0x16 (kBits 8) matrix for kTokens
// tokens from t0, by halves. Several tokens: one half at a time over all
// blocks, so that the half's unpacked weights and the kTokens accumulators fit
// the 16 registers (both halves at once spilled them to the stack: Q4_0 177
// -> 226, Q8_0 122 -> 159 GOP/s on one core, 2816 x 1024, 32 tokens); the
// second half reads the group from L1. One token (decode, bound by memory):
// both halves of each block in turn, so that the weights stream past once.
template <int kBits, int kTokens>
HERD_AVX2 void GgmlGroup(const KernelArgs& args, int64_t g, int64_t t0) {
  constexpr int64_t kBlockBytes = kBits * 64 + 32;
  const int64_t nb = args.w->cols / 32;
  const uint8_t* group = args.w->data + g * nb * kBlockBytes;
  if constexpr (kTokens == 1) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = group + b * kBlockBytes;
      PrefetchAhead(blk, kBlockBytes);
      GgmlBlockHalf<kBits, 1>(args, blk, 0, b, t0, &acc[0]);
      GgmlBlockHalf<kBits, 1>(args, blk, 1, b, t0, &acc[1]);
    }
    StoreHalf(args, g, 0, t0, acc[0]);
    StoreHalf(args, g, 1, t0, acc[1]);
  } else {
    for (int h = 0; h < 2; ++h) {
      __m256 acc[kTokens];
#pragma GCC unroll 8
      for (int j = 0; j < kTokens; ++j) acc[j] = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = group + b * kBlockBytes;
        if (h == 0) PrefetchAhead(blk, kBlockBytes);
        GgmlBlockHalf<kBits, kTokens>(args, blk, h, b, t0, acc);
      }
#pragma GCC unroll 8
      for (int j = 0; j < kTokens; ++j) StoreHalf(args, g, h, t0 + j, acc[j]);
    }
  }
}

HERD_AVX2 inline __m256 LoadScales8(const uint16_t* p, DType type) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (type == DType::kBF16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
  }
  return _mm256_cvtph_ps(raw);
}

// Herd's quantized formats (kQuantRows16), rows 8h..8h+7 of group g for kTokens tokens from t0, the
// scales (and mins) applied per scale group. Several tokens run one half at a time, so that the
// half's 8 code vectors and the accumulators fit the 16 registers (as
// GgmlGroup); one token runs both halves of each block in turn (kHalves
// = 2, h = 0), so that the codes stream past once.
template <int kBits, bool kSymmetric, int kTokens, int kHalves>
HERD_AVX2 inline __attribute__((always_inline)) void QuantRows(const KernelArgs& args, int64_t g,
                                                               int64_t t0, int h0) {
  const PackedMatrix& w = *args.w;
  const QuantizedActivations& a = *args.a;
  const int64_t cols = w.cols;
  const int64_t nb = cols / 32;
  const int64_t blocks_per_group = w.format.GroupLength(cols) / 32;
  const int64_t groups = nb / blocks_per_group;
  constexpr int32_t kZero = 1 << (kBits - 1);
  const uint8_t* codes = w.data + g * nb * 64 * kBits;
  const uint16_t* scales = w.scales + g * groups * kPackRows;
  const uint16_t* mins = kSymmetric ? nullptr : w.mins + g * groups * kPackRows;
  __m256 acc[kHalves * kTokens];
#pragma GCC unroll 8
  for (int i = 0; i < kHalves * kTokens; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < groups; ++k) {
    __m256 dots[kHalves * kTokens];
    float sums[kTokens];
#pragma GCC unroll 8
    for (int i = 0; i < kHalves * kTokens; ++i) dots[i] = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int j = 0; j < kTokens; ++j) sums[j] = 0.0f;
    for (int64_t b = k * blocks_per_group; b < (k + 1) * blocks_per_group; ++b) {
      if (h0 == 0) PrefetchAhead(codes + b * 64 * kBits, 64 * kBits);
#pragma GCC unroll 2
      for (int hh = 0; hh < kHalves; ++hh) {
        __m256i u[8];
        UnpackCodesHalf<kBits>(codes + b * 64 * kBits, h0 + hh, u);
#pragma GCC unroll 8
        for (int j = 0; j < kTokens; ++j) {
          const int64_t t = t0 + j;
          const __m256i dot = CodesDotHalf<kBits>(u, a.qs + t * cols + b * 32, a.sum[t * nb + b]);
          dots[hh * kTokens + j] = _mm256_fmadd_ps(
              _mm256_cvtepi32_ps(dot), _mm256_set1_ps(a.d[t * nb + b]), dots[hh * kTokens + j]);
        }
      }
      if constexpr (!kSymmetric) {
#pragma GCC unroll 8
        for (int j = 0; j < kTokens; ++j) {
          sums[j] += a.d[(t0 + j) * nb + b] * static_cast<float>(a.sum[(t0 + j) * nb + b]);
        }
      }
    }
#pragma GCC unroll 2
    for (int hh = 0; hh < kHalves; ++hh) {
      const int h = h0 + hh;
      const __m256 s = LoadScales8(scales + k * kPackRows + h * 8, w.format.scale_type);
      __m256 offset = _mm256_setzero_ps();
      if constexpr (!kSymmetric) {
        offset = _mm256_fmadd_ps(s, _mm256_set1_ps(static_cast<float>(kZero)),
                                 LoadScales8(mins + k * kPackRows + h * 8, w.format.scale_type));
      }
#pragma GCC unroll 8
      for (int j = 0; j < kTokens; ++j) {
        __m256& out = acc[hh * kTokens + j];
        out = _mm256_fmadd_ps(s, dots[hh * kTokens + j], out);
        if constexpr (!kSymmetric) out = _mm256_fmadd_ps(offset, _mm256_set1_ps(sums[j]), out);
      }
    }
  }
#pragma GCC unroll 2
  for (int hh = 0; hh < kHalves; ++hh) {
#pragma GCC unroll 8
    for (int j = 0; j < kTokens; ++j) StoreHalf(args, g, h0 + hh, t0 + j, acc[hh * kTokens + j]);
  }
}

template <int kBits, bool kSymmetric, int kTokens>
HERD_AVX2 void QuantGroup(const KernelArgs& args, int64_t g, int64_t t0) {
  if constexpr (kTokens == 1) {
    QuantRows<kBits, kSymmetric, 1, 2>(args, g, t0, 0);
  } else {
    QuantRows<kBits, kSymmetric, kTokens, 1>(args, g, t0, 0);
    QuantRows<kBits, kSymmetric, kTokens, 1>(args, g, t0, 1);
  }
}

template <int kBits, bool kSymmetric>
HERD_AVX2 void QuantGroupAllTokens(const KernelArgs& args, int64_t g) {
  ForTokenPasses<kTokenTile>(args.num_tokens, [&](auto tokens, int64_t t) {
    QuantGroup<kBits, kSymmetric, decltype(tokens)::value>(args, g, t);
  });
}

template <int kBits>
HERD_AVX2 void QuantGroupAnySymmetry(const KernelArgs& args, int64_t g) {
  if (args.w->format.symmetric) {
    QuantGroupAllTokens<kBits, true>(args, g);
  } else {
    QuantGroupAllTokens<kBits, false>(args, g);
  }
}

// 8 F32 weights of a row from column k (n < 8: the rest are zero).
HERD_AVX2 inline __m256 LoadWeights8(const uint8_t* row, int64_t k, int64_t n) {
  const auto* p = reinterpret_cast<const float*>(row) + k;
  if (n >= 8) return _mm256_loadu_ps(p);
  float tmp[8] = {};
  std::memcpy(tmp, p, n * sizeof(float));
  return _mm256_loadu_ps(tmp);
}

HERD_AVX2 inline __m256 LoadActivations8(const float* x, int64_t n) {
  if (n >= 8) return _mm256_loadu_ps(x);
  float tmp[8] = {};
  std::memcpy(tmp, x, n * sizeof(float));
  return _mm256_loadu_ps(tmp);
}

HERD_AVX2 inline float HorizontalSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

template <int kTokens>
HERD_AVX2 void F32Rows(const KernelArgs& args, int64_t row_begin, int64_t row_end, int64_t t0) {
  const PackedMatrix& w = *args.w;
  const int64_t cols = w.cols;
  for (int64_t o = row_begin; o < row_end; o += 2) {
    const int num_rows = static_cast<int>(std::min<int64_t>(2, row_end - o));
    __m256 acc[2][kTokens];
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < kTokens; ++j) acc[i][j] = _mm256_setzero_ps();
    }
    const uint8_t* rows[2] = {w.source.row(o), w.source.row(o + num_rows - 1)};
    for (int64_t k = 0; k < cols; k += 8) {
      const int64_t n = std::min<int64_t>(8, cols - k);
      __m256 xv[kTokens];
      for (int j = 0; j < kTokens; ++j) xv[j] = LoadActivations8(args.x + (t0 + j) * cols + k, n);
      for (int i = 0; i < 2; ++i) {
        const __m256 wv = LoadWeights8(rows[i], k, n);
        for (int j = 0; j < kTokens; ++j) acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
      }
    }
    for (int i = 0; i < num_rows; ++i) {
      const float bias = args.bias != nullptr ? args.bias[o + i] : 0.0f;
      for (int j = 0; j < kTokens; ++j) {
        args.y[(t0 + j) * w.rows + o + i] = HorizontalSum(acc[i][j]) + bias;
      }
    }
  }
}

// 8 consecutive F16 or BF16 values as floats.
template <DType kType>
HERD_AVX2 inline __m256 LoadHalf8(const uint8_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (kType == DType::kF16) return _mm256_cvtph_ps(raw);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// HalfRows16 (F16, BF16), as matmul_avx512.cc's HalfTile with the group's 16
// rows in two registers: per column, 2 loads and conversions, then a
// broadcast multiply-add per token and half (6 tokens: 12 accumulators). A
// padded pass's missing tokens read the last real one and are not stored.
template <DType kType, int kTokens>
HERD_AVX2 void HalfTile(const KernelArgs& args, int64_t g, int64_t t0) {
  const PackedMatrix& w = *args.w;
  const int64_t cols = w.cols;
  const uint8_t* group = w.data + g * kPackRows * cols * 2;
  const float* x = args.x + t0 * cols;
  const int64_t valid = std::min<int64_t>(kTokens, args.num_tokens - t0);
  int64_t x_offset[kTokens];
#pragma GCC unroll 8
  for (int j = 0; j < kTokens; ++j) x_offset[j] = std::min<int64_t>(j, valid - 1) * cols;
  // Every loop over acc unrolled, or GCC keeps the accumulators in memory
  // and stores each one after its multiply-add (it did: 53% of the FMA peak).
  __m256 acc[2 * kTokens];
#pragma GCC unroll 16
  for (int j = 0; j < 2 * kTokens; ++j) acc[j] = _mm256_setzero_ps();
  // Two columns (one line of weights) per step, asking for the line
  // kPrefetchBytes ahead; then the last column when cols is odd.
  int64_t k = 0;
  while (k < cols) {
    const int64_t step = std::min<int64_t>(2, cols - k);
    PrefetchAhead(group + k * 32, 64);
#pragma GCC unroll 2
    for (int64_t c = 0; c < step; ++c, ++k) {
      const __m256 w0 = LoadHalf8<kType>(group + k * 32);
      const __m256 w1 = LoadHalf8<kType>(group + k * 32 + 16);
#pragma GCC unroll 8
      for (int j = 0; j < kTokens; ++j) {
        const __m256 xv = _mm256_broadcast_ss(x + x_offset[j] + k);
        acc[2 * j] = _mm256_fmadd_ps(w0, xv, acc[2 * j]);
        acc[2 * j + 1] = _mm256_fmadd_ps(w1, xv, acc[2 * j + 1]);
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < kTokens; ++j) {
    if (j >= valid) continue;
    StoreHalf(args, g, 0, t0 + j, acc[2 * j]);
    StoreHalf(args, g, 1, t0 + j, acc[2 * j + 1]);
  }
}

// Passes of 6 tokens, the last one padded when 2 or more tokens are left (a
// pass for one token streams the weights at memory speed, so 2 such passes
// cost more than one of 6 tokens).
template <DType kType>
HERD_AVX2 void HalfRows(const KernelArgs& args, int64_t group_begin, int64_t group_end) {
  int64_t t = 0;
  for (; t + 2 <= args.num_tokens; t += 6) {
    for (int64_t g = group_begin; g < group_end; ++g) HalfTile<kType, 6>(args, g, t);
  }
  for (; t < args.num_tokens; ++t) {
    for (int64_t g = group_begin; g < group_end; ++g) HalfTile<kType, 1>(args, g, t);
  }
}

}  // namespace

bool SupportedByAvx2(const PackedMatrix& w) { return SupportedByAvx512(w); }

HERD_AVX2 void MatmulGroupsAvx2(const KernelArgs& args, int64_t group_begin, int64_t group_end) {
  const PackedMatrix& w = *args.w;
  const int64_t num_tokens = args.num_tokens;
  if (w.layout == PackedLayout::kHalfRows16) {
    const bool f16 = w.source.dtype() == DType::kF16;
    (f16 ? HalfRows<DType::kF16> : HalfRows<DType::kBF16>)(args, group_begin, group_end);
    return;
  }
  for (int64_t g = group_begin; g < group_end; ++g) {
    int64_t t = 0;
    if (w.layout == PackedLayout::kQuantRows16) {
      switch (w.format.bits) {
        case 8:
          QuantGroupAnySymmetry<8>(args, g);
          break;
        case 4:
          QuantGroupAnySymmetry<4>(args, g);
          break;
        case 3:
          QuantGroupAnySymmetry<3>(args, g);
          break;
        default:
          QuantGroupAnySymmetry<2>(args, g);
          break;
      }
    } else if (w.layout == PackedLayout::kRowMajor) {
      const int64_t row_begin = g * kPackRows;
      const int64_t row_end = std::min(w.rows, row_begin + kPackRows);
      for (; t + kTokenTile <= num_tokens; t += kTokenTile) {
        F32Rows<kTokenTile>(args, row_begin, row_end, t);
      }
      for (; t < num_tokens; ++t) F32Rows<1>(args, row_begin, row_end, t);
    } else if (w.layout == PackedLayout::kQ4_0x16) {
      ForTokenPasses<kTokenTile>(num_tokens, [&](auto tokens, int64_t t) {
        GgmlGroup<4, decltype(tokens)::value>(args, g, t);
      });
    } else {
      ForTokenPasses<kTokenTile>(num_tokens, [&](auto tokens, int64_t t) {
        GgmlGroup<8, decltype(tokens)::value>(args, g, t);
      });
    }
  }
}

}  // namespace herd::cpu
