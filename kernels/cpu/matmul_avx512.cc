// AVX-512 kernels behind Matmul. Each function carries its own target
// attribute, so this file builds without -mavx512* flags and nothing it
// defines can leak AVX-512 code into callers on older CPUs; Matmul calls
// these only when ActiveIsa() is kAvx512 or kAvx512Gfni.
// GCC 12 reports false "may be used uninitialized" inside its own AVX-512
// headers (_mm512_undefined_*); the kernels initialise every register.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "core/dtype.h"
#include "kernels/cpu/matmul_kernels.h"

#define HERD_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,fma,avx2")))
// The Herd-format kernels and MatmulGroupsAvx512 above them also carry GFNI,
// used only through its intrinsics in the kGfni instantiations, which run
// only when the CPU has it. (The compiler does not emit GFNI on its own here:
// every gf2p8 instruction in the object is in a kGfni = true kernel.)
#define HERD_AVX512_GFNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,f16c,fma,avx2,gfni")))
// The BF16 dot-product kernels, run only when the CPU has AVX512_BF16
// (args.x_pair_tiles set; see UseBf16DotProduct).
#define HERD_AVX512_BF16                                                          \
  __attribute__((                                                                 \
      target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx512bf16,f16c,fma," \
             "avx2")))

namespace herd::cpu {
namespace {

constexpr int kTokenTile = 8;

// Activations a[4s..4s+3] in every lane, loaded straight from memory (a
// load-port broadcast; going through a general register costs ALU work).
HERD_AVX512 inline __m512i BroadcastQuad(const int8_t* a, int s) {
  int32_t quad;
  std::memcpy(&quad, a + 4 * s, 4);
  return _mm512_set1_epi32(quad);
}

HERD_AVX512 inline void StoreRows(const KernelArgs& args, int64_t g, int64_t t, __m512 acc) {
  const PackedMatrix& w = *args.w;
  const int64_t row0 = g * kPackRows;
  const int64_t n = std::min<int64_t>(kPackRows, w.rows - row0);
  const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
  if (args.bias != nullptr) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, args.bias + row0));
  _mm512_mask_storeu_ps(args.y + t * w.rows + row0, mask, acc);
}

// Q4_0x16: per block, 4 loads give 8 u8 vectors (low and high nibbles) for
// 16 rows; each token adds 8 vpdpbusd against broadcast int8 activations, then
// subtracts 8 * sum(activations) (the nibbles' offset) and scales.
template <int kTokens>
HERD_AVX512 void Q4_0Group(const KernelArgs& args, int64_t g, int64_t t0) {
  const PackedMatrix& w = *args.w;
  const QuantizedActivations& a = *args.a;
  const int64_t cols = w.cols;
  const int64_t nb = cols / 32;
  constexpr int64_t kBlockBytes = 4 * 64 + 32;
  const uint8_t* group = w.data + g * nb * kBlockBytes;
  const __m512i low_mask = _mm512_set1_epi8(0x0F);
  __m512 acc[kTokens];
  for (int j = 0; j < kTokens; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * kBlockBytes;
    PrefetchAhead(blk, kBlockBytes);
    __m512i lo[4], hi[4];
    for (int s = 0; s < 4; ++s) {
      const __m512i v = _mm512_loadu_si512(blk + s * 64);
      lo[s] = _mm512_and_si512(v, low_mask);
      hi[s] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low_mask);
    }
    const __m512 wscale =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 256)));
    for (int j = 0; j < kTokens; ++j) {
      const int64_t t = t0 + j;
      const int8_t* at = a.qs + t * cols + b * 32;
      // Two independent chains halve the vpdpbusd latency on the critical path.
      __m512i dot = _mm512_set1_epi32(-8 * a.sum[t * nb + b]);
      __m512i dot_hi = _mm512_setzero_si512();
      for (int s = 0; s < 4; ++s) {
        dot = _mm512_dpbusd_epi32(dot, lo[s], BroadcastQuad(at, s));
        dot_hi = _mm512_dpbusd_epi32(dot_hi, hi[s], BroadcastQuad(at, 4 + s));
      }
      dot = _mm512_add_epi32(dot, dot_hi);
      const __m512 scale = _mm512_mul_ps(wscale, _mm512_set1_ps(a.d[t * nb + b]));
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[j]);
    }
  }
  for (int j = 0; j < kTokens; ++j) StoreRows(args, g, t0 + j, acc[j]);
}

// Q8_0x16: weights are stored as value + 128 (unsigned), so each token's
// dot product is 8 vpdpbusd against broadcast int8 activations minus
// 128 * sum(activations), as for Q4_0.
template <int kTokens>
HERD_AVX512 void Q8_0Group(const KernelArgs& args, int64_t g, int64_t t0) {
  const PackedMatrix& w = *args.w;
  const QuantizedActivations& a = *args.a;
  const int64_t cols = w.cols;
  const int64_t nb = cols / 32;
  constexpr int64_t kBlockBytes = 8 * 64 + 32;
  const uint8_t* group = w.data + g * nb * kBlockBytes;
  __m512 acc[kTokens];
  for (int j = 0; j < kTokens; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * kBlockBytes;
    PrefetchAhead(blk, kBlockBytes);
    __m512i wv[8];
    for (int s = 0; s < 8; ++s) wv[s] = _mm512_loadu_si512(blk + s * 64);
    const __m512 wscale =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 512)));
    for (int j = 0; j < kTokens; ++j) {
      const int64_t t = t0 + j;
      const int8_t* at = a.qs + t * cols + b * 32;
      __m512i dot = _mm512_set1_epi32(-128 * a.sum[t * nb + b]);
      __m512i dot_odd = _mm512_setzero_si512();
      for (int s = 0; s < 8; s += 2) {
        dot = _mm512_dpbusd_epi32(dot, wv[s], BroadcastQuad(at, s));
        dot_odd = _mm512_dpbusd_epi32(dot_odd, wv[s + 1], BroadcastQuad(at, s + 1));
      }
      dot = _mm512_add_epi32(dot, dot_odd);
      const __m512 scale = _mm512_mul_ps(wscale, _mm512_set1_ps(a.d[t * nb + b]));
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[j]);
    }
  }
  for (int j = 0; j < kTokens; ++j) StoreRows(args, g, t0 + j, acc[j]);
}

// The 8 steps of one 32-value block of a rows16 payload as unsigned bytes:
// u[s] holds values 4s..4s+3 of each of the 16 rows (core/quant_format.h).
// 16-bit shifts are safe: every mask keeps only bits of the byte itself.
// gf2p8affineqb matrices (one per 64-bit lane): byte 7 - i of the matrix
// selects the input bits whose parity becomes output bit i.
HERD_AVX512_GFNI inline __m512i BitsToLow(int shift) {
  return _mm512_set1_epi64(
      static_cast<int64_t>((uint64_t{1} << shift) << 56 | (uint64_t{2} << shift) << 48));
}
HERD_AVX512_GFNI inline __m512i BitToBit2(int bit) {
  return _mm512_set1_epi64(static_cast<int64_t>((uint64_t{1} << bit) << 40));
}

template <int kBits, bool kGfni>
HERD_AVX512_GFNI inline void UnpackCodes(const uint8_t* block, __m512i u[8]) {
  if constexpr (kBits == 8) {
    for (int s = 0; s < 8; ++s) u[s] = _mm512_loadu_si512(block + s * 64);
  } else if constexpr (kBits == 4) {
    const __m512i mask = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < 4; ++j) {
      const __m512i v = _mm512_loadu_si512(block + j * 64);
      u[j] = _mm512_and_si512(v, mask);
      u[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
    }
  } else if constexpr (kGfni) {
    // gf2p8affineqb moves any bits of each byte anywhere in it, zeroing the
    // rest: one instruction per field instead of a shift and a mask.
    const __m512i mask = _mm512_set1_epi8(0x03);
    for (int j = 0; j < 2; ++j) {
      const __m512i v = _mm512_loadu_si512(block + j * 64);
      u[j] = _mm512_and_si512(v, mask);
      u[j + 2] = _mm512_gf2p8affine_epi64_epi8(v, BitsToLow(2), 0);
      u[j + 4] = _mm512_gf2p8affine_epi64_epi8(v, BitsToLow(4), 0);
      u[j + 6] = _mm512_gf2p8affine_epi64_epi8(v, BitsToLow(6), 0);
    }
    if constexpr (kBits == 3) {
      const __m512i h = _mm512_loadu_si512(block + 128);
      for (int s = 0; s < 8; ++s) {
        u[s] = _mm512_or_si512(u[s], _mm512_gf2p8affine_epi64_epi8(h, BitToBit2(s), 0));
      }
    }
  } else {
    const __m512i mask = _mm512_set1_epi8(0x03);
    for (int j = 0; j < 2; ++j) {
      const __m512i v = _mm512_loadu_si512(block + j * 64);
      u[j] = _mm512_and_si512(v, mask);
      u[j + 2] = _mm512_and_si512(_mm512_srli_epi16(v, 2), mask);
      u[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
      u[j + 6] = _mm512_and_si512(_mm512_srli_epi16(v, 6), mask);
    }
    if constexpr (kBits == 3) {
      const __m512i h = _mm512_loadu_si512(block + 128);
      const __m512i bit2 = _mm512_set1_epi8(0x04);
      u[0] = _mm512_or_si512(u[0], _mm512_and_si512(_mm512_slli_epi16(h, 2), bit2));
      u[1] = _mm512_or_si512(u[1], _mm512_and_si512(_mm512_slli_epi16(h, 1), bit2));
      u[2] = _mm512_or_si512(u[2], _mm512_and_si512(h, bit2));
      u[3] = _mm512_or_si512(u[3], _mm512_and_si512(_mm512_srli_epi16(h, 1), bit2));
      u[4] = _mm512_or_si512(u[4], _mm512_and_si512(_mm512_srli_epi16(h, 2), bit2));
      u[5] = _mm512_or_si512(u[5], _mm512_and_si512(_mm512_srli_epi16(h, 3), bit2));
      u[6] = _mm512_or_si512(u[6], _mm512_and_si512(_mm512_srli_epi16(h, 4), bit2));
      u[7] = _mm512_or_si512(u[7], _mm512_and_si512(_mm512_srli_epi16(h, 5), bit2));
    }
  }
}

HERD_AVX512 inline __m512 LoadScales16(const uint16_t* p, DType type) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if (type == DType::kBF16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  }
  return _mm512_cvtph_ps(raw);
}

// Herd's quantized formats (kQuantRows16): per block, unpack the 8 steps once
// for 16 rows and run kTokens tokens against them; per group, apply the
// 16 scales (and mins) to the block sums. See kernels/matmul.h for the math.
template <int kBits, bool kSymmetric, int kTokens, bool kGfni>
HERD_AVX512_GFNI void QuantGroup(const KernelArgs& args, int64_t g, int64_t t0) {
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
  __m512 acc[kTokens];
  for (int j = 0; j < kTokens; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < groups; ++k) {
    __m512 dots[kTokens];
    float sums[kTokens];
    for (int j = 0; j < kTokens; ++j) {
      dots[j] = _mm512_setzero_ps();
      sums[j] = 0.0f;
    }
    for (int64_t b = k * blocks_per_group; b < (k + 1) * blocks_per_group; ++b) {
      __m512i u[8];
      const uint8_t* block = codes + b * 64 * kBits;
      PrefetchAhead(block, 64 * kBits);
      UnpackCodes<kBits, kGfni>(block, u);
      for (int j = 0; j < kTokens; ++j) {
        const int64_t t = t0 + j;
        const int8_t* at = a.qs + t * cols + b * 32;
        __m512i dot = _mm512_setzero_si512();
        __m512i dot_odd = _mm512_setzero_si512();
        for (int s = 0; s < 8; s += 2) {
          dot = _mm512_dpbusd_epi32(dot, u[s], BroadcastQuad(at, s));
          dot_odd = _mm512_dpbusd_epi32(dot_odd, u[s + 1], BroadcastQuad(at, s + 1));
        }
        const float d = a.d[t * nb + b];
        dots[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(dot, dot_odd)),
                                  _mm512_set1_ps(d), dots[j]);
        sums[j] += d * static_cast<float>(a.sum[t * nb + b]);
      }
    }
    // The codes' offset (symmetric) or the group minimum (asymmetric) times
    // the sum of the group's activations, once per group.
    const __m512 s = LoadScales16(scales + k * kPackRows, w.format.scale_type);
    const __m512 offset = kSymmetric ? _mm512_mul_ps(s, _mm512_set1_ps(static_cast<float>(-kZero)))
                                     : LoadScales16(mins + k * kPackRows, w.format.scale_type);
    for (int j = 0; j < kTokens; ++j) {
      acc[j] = _mm512_fmadd_ps(s, dots[j], acc[j]);
      acc[j] = _mm512_fmadd_ps(offset, _mm512_set1_ps(sums[j]), acc[j]);
    }
  }
  for (int j = 0; j < kTokens; ++j) StoreRows(args, g, t0 + j, acc[j]);
}

template <int kBits, bool kSymmetric, bool kGfni>
HERD_AVX512_GFNI void QuantGroupAllTokens(const KernelArgs& args, int64_t g) {
  ForTokenPasses<kTokenTile>(args.num_tokens, [&](auto tokens, int64_t t) {
    QuantGroup<kBits, kSymmetric, decltype(tokens)::value, kGfni>(args, g, t);
  });
}

template <int kBits, bool kGfni>
HERD_AVX512_GFNI void QuantGroupAnySymmetry(const KernelArgs& args, int64_t g) {
  if (args.w->format.symmetric) {
    QuantGroupAllTokens<kBits, true, kGfni>(args, g);
  } else {
    QuantGroupAllTokens<kBits, false, kGfni>(args, g);
  }
}

// GFNI changes only the 2- and 3-bit unpacking.
template <int kBits>
HERD_AVX512_GFNI void QuantGroupAnyKernel(const KernelArgs& args, int64_t g, bool gfni) {
  if constexpr (kBits == 2 || kBits == 3) {
    if (gfni) return QuantGroupAnySymmetry<kBits, true>(args, g);
  }
  QuantGroupAnySymmetry<kBits, false>(args, g);
}

template <DType kType>
HERD_AVX512 inline __m512 LoadWeights(const uint8_t* row, int64_t k) {
  if constexpr (kType == DType::kF16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k)));
  } else if constexpr (kType == DType::kBF16) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * k))),
        16));
  } else {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row + 4 * k));
  }
}

// Row-major F32: a tile of kRows rows x kTokens tokens, 16 columns per step,
// accumulators in registers, reduced across lanes at the end.
template <int kRows, int kTokens>
HERD_AVX512 void F32Tile(const KernelArgs& args, int64_t o, int num_rows, int64_t t0) {
  const PackedMatrix& w = *args.w;
  const int64_t cols = w.cols;
  __m512 acc[kRows][kTokens];
  for (int i = 0; i < kRows; ++i) {
    for (int j = 0; j < kTokens; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  const uint8_t* rows[kRows];
  for (int i = 0; i < kRows; ++i) rows[i] = w.source.row(o + std::min(i, num_rows - 1));
  const float* x = args.x + t0 * cols;
  int64_t k = 0;
  for (; k + 16 <= cols; k += 16) {
    __m512 xv[kTokens];
    for (int j = 0; j < kTokens; ++j) xv[j] = _mm512_loadu_ps(x + j * cols + k);
    for (int i = 0; i < kRows; ++i) {
      const __m512 wv = LoadWeights<DType::kF32>(rows[i], k);
      for (int j = 0; j < kTokens; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  if (k < cols) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (cols - k)) - 1);
    __m512 xv[kTokens];
    for (int j = 0; j < kTokens; ++j) xv[j] = _mm512_maskz_loadu_ps(mask, x + j * cols + k);
    for (int i = 0; i < kRows; ++i) {
      const __m512 wv = _mm512_maskz_loadu_ps(mask, rows[i] + 4 * k);
      for (int j = 0; j < kTokens; ++j) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < num_rows; ++i) {
    const float bias = args.bias != nullptr ? args.bias[o + i] : 0.0f;
    for (int j = 0; j < kTokens; ++j) {
      args.y[(t0 + j) * w.rows + o + i] = _mm512_reduce_add_ps(acc[i][j]) + bias;
    }
  }
}

// Decode (one token) streams 8 rows at once for memory-level parallelism;
// prefill uses 4 rows x 4 tokens (16 accumulators).
HERD_AVX512 void F32Rows(const KernelArgs& args, int64_t row_begin, int64_t row_end) {
  int64_t t = 0;
  for (; t + 4 <= args.num_tokens; t += 4) {
    for (int64_t o = row_begin; o < row_end; o += 4) {
      F32Tile<4, 4>(args, o, static_cast<int>(std::min<int64_t>(4, row_end - o)), t);
    }
  }
  for (; t < args.num_tokens; ++t) {
    for (int64_t o = row_begin; o < row_end; o += 8) {
      F32Tile<8, 1>(args, o, static_cast<int>(std::min<int64_t>(8, row_end - o)), t);
    }
  }
}

// HalfRows16 (F16, BF16), one group of 16 rows x kTokens tokens: per column,
// one load and conversion gives the 16 rows' weights, and each token adds
// them times its broadcast activation into its own accumulator, so nothing is
// summed across lanes and a token's 16 results are one store. Prefill runs
// tiles of 24 tokens (kTiled: read from args.x_tiles, tile t0 / 24; a last,
// partial tile runs as the next multiple of 4, on its zero padding): 24
// multiply-adds per load and conversion, with the accumulators, the weights
// and the broadcasts in the 32 registers. Without tiles, tokens are read from
// x, and a padded pass's missing tokens read the last real one. One token
// (decode) keeps 4 accumulators over alternate columns, so that the
// multiply-add latency does not bound how fast it streams the weights.
template <DType kType, int kTokens, bool kTiled>
HERD_AVX512 void HalfTile(const KernelArgs& args, int64_t g, int64_t t0) {
  static_assert(!kTiled || kTokens <= kHalfTileTokens);
  const PackedMatrix& w = *args.w;
  const int64_t cols = w.cols;
  const uint8_t* group = w.data + g * kPackRows * cols * 2;
  // Token j's activation at column k: x[k * kXCol + j * x_row].
  const float* x =
      kTiled ? args.x_tiles + (t0 / kHalfTileTokens) * cols * kHalfTileTokens : args.x + t0 * cols;
  constexpr int64_t kXCol = kTiled ? kHalfTileTokens : 1;
  const int64_t x_row = kTiled ? 1 : cols;
  const int64_t valid = std::min<int64_t>(kTokens, args.num_tokens - t0);
  int64_t x_offset[kTokens];
#pragma GCC unroll 32
  for (int j = 0; j < kTokens; ++j)
    x_offset[j] = (kTiled ? j : std::min<int64_t>(j, valid - 1)) * x_row;
  constexpr int kChains = kTokens == 1 ? 4 : 1;
  __m512 acc[kTokens * kChains];
#pragma GCC unroll 32
  for (int j = 0; j < kTokens * kChains; ++j) acc[j] = _mm512_setzero_ps();
  int64_t k = 0;
  if constexpr (kTokens == 1) {
    for (; k + kChains <= cols; k += kChains) {
      // Into L2: on a Xeon (2 cores, 2026-11-23) F16 decode ran 63.0 t/s
      // prefetching into L1 and 67.5 into L2 (4 interleaved rounds, every
      // round faster), where the quantized kernels' L1 prefetch was as fast
      // or faster (Q4_0 368 against 316 t/s).
      PrefetchAhead<PrefetchInto::kL2>(group + k * 32, kChains * 32);
      for (int c = 0; c < kChains; ++c) {
        acc[c] = _mm512_fmadd_ps(LoadWeights<kType>(group, (k + c) * kPackRows),
                                 _mm512_set1_ps(x[k + c]), acc[c]);
      }
    }
  }
  // Two columns (one line of weights) per step, asking for the line
  // kPrefetchBytes ahead; then the last column when cols is odd.
  constexpr int64_t kStep = kTokens > 1 ? 2 : 1;
  while (k < cols) {
    const int64_t step = std::min(kStep, cols - k);
    if constexpr (kTokens > 1) PrefetchAhead(group + k * 32, 64);
#pragma GCC unroll 2
    for (int64_t c = 0; c < step; ++c, ++k) {
      const __m512 wv = LoadWeights<kType>(group, k * kPackRows);
      // Unrolled, or the accumulators live in memory instead of registers.
#pragma GCC unroll 32
      for (int j = 0; j < kTokens; ++j) {
        acc[j] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[k * kXCol + x_offset[j]]), acc[j]);
      }
    }
  }
  if constexpr (kTokens == 1) {
    acc[0] = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
  }
#pragma GCC unroll 32
  for (int j = 0; j < kTokens; ++j) {
    if (j < valid) StoreRows(args, g, t0 + j, acc[j]);
  }
}

// Groups [group_begin, group_end) over the tile of `tokens` tokens at t0,
// as the multiple of 4 at or above `tokens`: kernel_for(std::integral_constant
// <int, n>) gives the kernel for n tokens.
template <typename KernelFor>
HERD_AVX512 void TileGroups(const KernelArgs& args, int64_t group_begin, int64_t group_end,
                            int64_t t0, int64_t tokens, KernelFor kernel_for) {
  const auto run = [&](auto n) {
    const auto kernel = kernel_for(n);
    for (int64_t g = group_begin; g < group_end; ++g) kernel(args, g, t0);
  };
  switch ((tokens + 3) / 4) {
    case 1:
      return run(std::integral_constant<int, 4>{});
    case 2:
      return run(std::integral_constant<int, 8>{});
    case 3:
      return run(std::integral_constant<int, 12>{});
    case 4:
      return run(std::integral_constant<int, 16>{});
    case 5:
      return run(std::integral_constant<int, 20>{});
    default:
      return run(std::integral_constant<int, kHalfTileTokens>{});
  }
}

// BF16 HalfRows16 with the BF16 dot product, one group of 16 rows x kTokens
// tokens of a pair tile (args.x_pair_tiles): per two columns, one load and
// one word permute give the 16 rows' weight pairs, and each token adds both
// products with its broadcast activation pair (vdpbf16ps) into its own
// accumulator: half the instructions of the F32 multiply-adds, and no
// widening. An odd column count's last column pairs with zero weights.
template <int kTokens>
HERD_AVX512_BF16 void Bf16DotTile(const KernelArgs& args, int64_t g, int64_t t0) {
  static_assert(kTokens <= kHalfTileTokens);
  const PackedMatrix& w = *args.w;
  const int64_t cols = w.cols;
  const int64_t pairs = (cols + 1) / 2;
  const auto* group = reinterpret_cast<const uint16_t*>(w.data + g * kPackRows * cols * 2);
  const uint32_t* x = args.x_pair_tiles + (t0 / kHalfTileTokens) * pairs * kHalfTileTokens;
  // Word 2r of a pair is column k's row r, word 2r + 1 column k + 1's.
  alignas(64) static constexpr uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i interleave = _mm512_load_si512(kInterleave);
  __m512 acc[kTokens];
#pragma GCC unroll 32
  for (int j = 0; j < kTokens; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < pairs; ++kp) {
    PrefetchAhead(reinterpret_cast<const uint8_t*>(group + kp * 2 * kPackRows), 64);
    // The last pair of an odd count loads column k alone (zeros after it).
    const __mmask32 columns = 2 * kp + 1 < cols ? 0xFFFFFFFFu : 0xFFFFu;
    const __m512bh weights = (__m512bh)_mm512_permutexvar_epi16(
        interleave, _mm512_maskz_loadu_epi16(columns, group + kp * 2 * kPackRows));
    // Unrolled, or the accumulators live in memory instead of registers.
#pragma GCC unroll 32
    for (int j = 0; j < kTokens; ++j) {
      acc[j] = _mm512_dpbf16_ps(
          acc[j], weights,
          (__m512bh)_mm512_set1_epi32(static_cast<int>(x[kp * kHalfTileTokens + j])));
    }
  }
  const int64_t valid = std::min<int64_t>(kTokens, args.num_tokens - t0);
#pragma GCC unroll 32
  for (int j = 0; j < kTokens; ++j) {
    if (j < valid) StoreRows(args, g, t0 + j, acc[j]);
  }
}

// Token tiles outer, groups inner: a tile's activations stay in cache while
// the piece's weights stream past them.
template <DType kType>
HERD_AVX512 void HalfRows(const KernelArgs& args, int64_t group_begin, int64_t group_end) {
  const int64_t n = args.num_tokens;
  for (int64_t tile = 0; tile < TokenTiles(n); ++tile) {
    const int64_t t0 = tile * kHalfTileTokens;
    const int64_t tokens = std::min(kHalfTileTokens, n - t0);
    if (kType == DType::kBF16 && args.x_pair_tiles != nullptr) {
      TileGroups(args, group_begin, group_end, t0, tokens,
                 [](auto n) { return Bf16DotTile<decltype(n)::value>; });
    } else {
      TileGroups(args, group_begin, group_end, t0, tokens,
                 [](auto n) { return HalfTile<kType, decltype(n)::value, true>; });
    }
  }
  if (TokenTiles(n) > 0) return;
  // Fewer than kHalfTileMinTokens, untiled: passes of 8, the last one padded
  // when 2 or more tokens are left (a pass for one token streams the weights
  // at memory speed, so 2 such passes cost more than one of 8 tokens).
  int64_t t = 0;
  for (; t + 2 <= n; t += 8) {
    for (int64_t g = group_begin; g < group_end; ++g) HalfTile<kType, 8, false>(args, g, t);
  }
  for (; t < n; ++t) {
    for (int64_t g = group_begin; g < group_end; ++g) HalfTile<kType, 1, false>(args, g, t);
  }
}

}  // namespace

// Bit for bit QuantizeActivationBlock: the same float products, rounded to
// nearest even (the default MXCSR mode, as nearbyintf), the same f16 scale.
HERD_AVX512 void QuantizeActivationsAvx512(const float* x, int64_t cols, int64_t token_begin,
                                           int64_t token_end, const QuantizedActivations& a) {
  const int64_t nb = cols / 32;
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  for (int64_t t = token_begin; t < token_end; ++t) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + t * cols + b * 32;
      const __m512 v0 = _mm512_loadu_ps(xb);
      const __m512 v1 = _mm512_loadu_ps(xb + 16);
      const float amax = _mm512_reduce_max_ps(
          _mm512_max_ps(_mm512_and_ps(v0, abs_mask), _mm512_and_ps(v1, abs_mask)));
      const __m512 id = _mm512_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
      int8_t* qb = a.qs + t * cols + b * 32;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb), _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 16), _mm512_cvtepi32_epi8(q1));
      a.sum[t * nb + b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      // Through f16 and back, as F16ToF32(F32ToF16(.)) (round to nearest even).
      a.d[t * nb + b] = _cvtsh_ss(_cvtss_sh(amax / 127.0f, _MM_FROUND_TO_NEAREST_INT));
    }
  }
}

bool SupportedByAvx512(const PackedMatrix& w) {
  return w.layout != PackedLayout::kRowMajor || w.source.dtype() == DType::kF32;
}

HERD_AVX512_GFNI void MatmulGroupsAvx512(const KernelArgs& args, int64_t group_begin,
                                         int64_t group_end, bool gfni) {
  const PackedMatrix& w = *args.w;
  const int64_t num_tokens = args.num_tokens;
  if (w.layout == PackedLayout::kHalfRows16) {
    const bool f16 = w.source.dtype() == DType::kF16;
    (f16 ? HalfRows<DType::kF16> : HalfRows<DType::kBF16>)(args, group_begin, group_end);
    return;
  }
  for (int64_t g = group_begin; g < group_end; ++g) {
    if (w.layout == PackedLayout::kQuantRows16) {
      switch (w.format.bits) {
        case 8:
          QuantGroupAnyKernel<8>(args, g, gfni);
          break;
        case 4:
          QuantGroupAnyKernel<4>(args, g, gfni);
          break;
        case 3:
          QuantGroupAnyKernel<3>(args, g, gfni);
          break;
        default:
          QuantGroupAnyKernel<2>(args, g, gfni);
          break;
      }
    } else if (w.layout == PackedLayout::kRowMajor) {
      const int64_t row_begin = g * kPackRows;
      F32Rows(args, row_begin, std::min(w.rows, row_begin + kPackRows));
    } else if (w.layout == PackedLayout::kQ4_0x16) {
      ForTokenPasses<kTokenTile>(num_tokens, [&](auto tokens, int64_t t) {
        Q4_0Group<decltype(tokens)::value>(args, g, t);
      });
    } else {
      ForTokenPasses<kTokenTile>(num_tokens, [&](auto tokens, int64_t t) {
        Q8_0Group<decltype(tokens)::value>(args, g, t);
      });
    }
  }
}

}  // namespace herd::cpu
