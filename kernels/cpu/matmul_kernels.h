// Internal to kernels/cpu: the per-ISA kernels behind Matmul (kernels/matmul.h).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/matmul.h"

namespace herd::cpu {

// Activations quantized per 32-value block for the integer kernels, laid out
// in the Matmul workspace. nb = cols / 32.
struct QuantizedActivations {
  int8_t* qs = nullptr;    // I8 [num_tokens, cols]: round(x / d), as llama.cpp's Q8_0
  float* d = nullptr;      // F32 [num_tokens, nb]: d = f16(max|x| / 127), as a float
  int32_t* sum = nullptr;  // I32 [num_tokens, nb]: sum of qs over the block
};

size_t QuantizedActivationsBytes(int64_t num_tokens, int64_t cols);
QuantizedActivations CarveQuantizedActivations(void* workspace, int64_t num_tokens, int64_t cols);
// Quantizes tokens [token_begin, token_end) of x F32 [num_tokens, cols], with
// ActiveIsa()'s kernel; every kernel gives the scalar one's bytes exactly.
void QuantizeActivations(const float* x, int64_t cols, int64_t token_begin, int64_t token_end,
                         const QuantizedActivations& a);
void QuantizeActivationsAvx512(const float* x, int64_t cols, int64_t token_begin, int64_t token_end,
                               const QuantizedActivations& a);

// Whether the kernels for w's layout read activations quantized per block
// (Q8_0x16, Q4_0x16, Herd formats) rather than x itself (F32, F16, BF16;
// for BF16, x rounded to BF16: see kernels/matmul.h).
bool TakesQuantizedActivations(const PackedMatrix& w);

// Computes y F32 [num_tokens, w.rows] for the row groups [group_begin,
// group_end) (16 rows each). Layouts that TakesQuantizedActivations read `a`;
// the float ones read x.
struct KernelArgs {
  const PackedMatrix* w;
  const QuantizedActivations* a;
  const float* x;  // F32 [num_tokens, cols]
  int64_t num_tokens;
  const float* bias;  // F32 [rows] or nullptr
  float* y;           // F32 [num_tokens, rows]
  // HalfRows16 on AVX-512 with TokenTiles(num_tokens) > 0: x's first tiles of
  // kHalfTileTokens tokens, each column-major (F32 [cols, kHalfTileTokens]),
  // so a tile's activations at one column are adjacent instead of a row
  // stride apart (which maps them all onto the same few cache sets); the last
  // tile may be partial, zero-padded. Null otherwise, and for BF16 when
  // x_pair_tiles is set.
  const float* x_tiles = nullptr;
  // BF16 HalfRows16 on AVX-512 with the BF16 dot product
  // (UseBf16DotProduct()) and TokenTiles(num_tokens) > 0: the same tiles as
  // pairs of BF16 activations, U32 [tile][ceil(cols / 2)][kHalfTileTokens];
  // pair kp of token j holds x[j][2kp] in its low half and x[j][2kp + 1]
  // (0 past the last column) in its high half. Null otherwise.
  const uint32_t* x_pair_tiles = nullptr;
};

// Whether BF16 weights' token tiles run on the BF16 dot product
// (vdpbf16ps): ActiveIsa() is an AVX-512 one and the CPU has AVX512_BF16.
bool UseBf16DotProduct();

// out[i] = x[i] rounded to the nearest BF16 value (ties to even), as F32.
void RoundToBf16(const float* x, int64_t n, float* out);

// Tokens per tile of the float kernels' prefill (HalfRows16), and how many
// tiles x is cut into: a task of kHalfTileMinTokens tokens or more is cut
// whole into tiles, the last one zero-padded; fewer tokens are read from x
// (the workspace bound, floor(n / 12) tiles, holds no tile for them).
constexpr int64_t kHalfTileTokens = 24;
constexpr int64_t kHalfTileMinTokens = 12;
static_assert(kHalfTileTokens == 2 * kHalfTileMinTokens, "TokenTileBytes' bound");
inline int64_t TokenTiles(int64_t num_tokens) {
  return num_tokens < kHalfTileMinTokens ? 0 : (num_tokens + kHalfTileTokens - 1) / kHalfTileTokens;
}

// How far ahead of the block being multiplied a kernel (AVX-512, AVX2) asks
// for its weights. At one token a core streams weights faster than DRAM
// answers one miss at a time, and the hardware prefetcher alone left int2
// and int3 at 17-21 GB/s on one core of the reference machine; 4 KiB ahead
// (one 16-row group of int2) took them to 25 GB/s, with 1, 2 and 8 KiB
// slower. Prefill passes ask too: the first pass over an expert's weights
// reads them from DRAM, and without the requests an F16 pass of 24 tokens
// over 138 MB of 2816 x 1024 matrices ran at 254 GFLOP/s, with them 406
// (AMD EPYC, 2 threads, 2026-11-23); 8 tokens 130 -> 306. Lines already in
// cache cost one instruction per block.
constexpr int64_t kPrefetchBytes = 4096;

// Where PrefetchAhead asks for lines: __builtin_prefetch's locality, which
// x86 compilers emit as prefetcht0 (3) and prefetcht1 (2).
enum class PrefetchInto { kL1 = 3, kL2 = 2 };

// Asks for the `bytes` (a multiple of 64) that lie kPrefetchBytes past `p`.
template <PrefetchInto kInto = PrefetchInto::kL1>
inline void PrefetchAhead(const uint8_t* p, int64_t bytes) {
  for (int64_t line = 0; line < bytes; line += 64) {
    __builtin_prefetch(p + kPrefetchBytes + line, 0, static_cast<int>(kInto));
  }
}

// Calls pass(std::integral_constant<int, k>{}, t0) over tokens [t,
// num_tokens): passes of kTokens, then at most one pass each of kTokens / 2,
// kTokens / 4, ..., 1 (kTokens a power of two), so that 7 tokens left take 3
// passes rather than 7 (each pass unpacks the weights once).
template <int kTokens, typename Pass>
inline void ForTokenPasses(int64_t num_tokens, const Pass& pass, int64_t t = 0) {
  static_assert(kTokens > 0 && (kTokens & (kTokens - 1)) == 0);
  for (; t + kTokens <= num_tokens; t += kTokens) pass(std::integral_constant<int, kTokens>{}, t);
  if constexpr (kTokens > 1) ForTokenPasses<kTokens / 2>(num_tokens, pass, t);
}

void MatmulGroupsScalar(const KernelArgs& args, int64_t group_begin, int64_t group_end);
// Only for layouts and dtypes the AVX-512 path supports (SupportedByAvx512);
// `gfni` only where the CPU has it (Isa::kAvx512Gfni).
void MatmulGroupsAvx512(const KernelArgs& args, int64_t group_begin, int64_t group_end, bool gfni);
bool SupportedByAvx512(const PackedMatrix& w);
// The same for AVX2 + FMA + F16C.
void MatmulGroupsAvx2(const KernelArgs& args, int64_t group_begin, int64_t group_end);
bool SupportedByAvx2(const PackedMatrix& w);

}  // namespace herd::cpu
