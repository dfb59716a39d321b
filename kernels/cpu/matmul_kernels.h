// Internal to kernels/cpu: the per-ISA kernels behind Matmul (kernels/matmul.h).
#pragma once

#include <cstdint>

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
// (Q8_0x16, Q4_0x16, Herd formats) rather than x itself (F32, F16, BF16).
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
  // tile may be partial, zero-padded. Null otherwise.
  const float* x_tiles = nullptr;
};

// Tokens per tile of the float kernels' prefill (HalfRows16), and how many
// tiles x is cut into: a task of kHalfTileMinTokens tokens or more is cut
// whole into tiles, the last one zero-padded; fewer tokens are read from x
// (tiling them would cost as much as the pass itself).
constexpr int64_t kHalfTileTokens = 24;
constexpr int64_t kHalfTileMinTokens = 12;
static_assert(kHalfTileTokens == 2 * kHalfTileMinTokens, "TokenTileBytes' bound");
inline int64_t TokenTiles(int64_t num_tokens) {
  return num_tokens < kHalfTileMinTokens ? 0 : (num_tokens + kHalfTileTokens - 1) / kHalfTileTokens;
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
