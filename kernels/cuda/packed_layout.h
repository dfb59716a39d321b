// Where each element of a packed matrix (grouped_gemm.h's tensor-core
// layout) lives: one definition for the host's repacking (quant_pack.cc) and
// the GPU's dequantization (grouped_gemm.cu).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define HERD_HOST_DEVICE __host__ __device__
#else
#define HERD_HOST_DEVICE
#endif

namespace herd::cuda {

// Element (row, col)'s byte, and for int4 the shift of its nibble there.
struct PackedPosition {
  int64_t byte = 0;
  int shift = 0;
};

// `padded_cols` is PackedShape::padded_cols(), `bits` 4 or 8.
HERD_HOST_DEVICE inline PackedPosition LocatePacked(int64_t padded_cols, int bits, int64_t row,
                                                    int64_t col) {
  const int64_t chunks = padded_cols / 64;
  const int64_t row_tile = row / 16;
  const int64_t tile_row = row % 16;
  const int64_t chunk = col / 64;
  const int64_t k16 = (col % 64) / 16;  // which 16 x 16 tile of the chunk
  const int64_t tile_col = col % 16;
  const int64_t lane = (tile_row % 8) * 4 + (tile_col % 8) / 2;
  const int reg = static_cast<int>(tile_row / 8 + 2 * (tile_col / 8));  // A-fragment register
  const int elem = static_cast<int>(tile_col % 2);                      // first or second half
  const int64_t lane_base = (row_tile * chunks + chunk) * 32 + lane;
  if (bits == 4) {
    const int nibble = reg + 4 * elem;
    return {lane_base * 16 + k16 * 4 + nibble / 2, 4 * (nibble % 2)};
  }
  return {lane_base * 32 + (2 * k16 + reg / 2) * 4 + (reg % 2) * 2 + elem, 0};
}

// The index of element (row, col)'s f16 scale in the scales array.
HERD_HOST_DEVICE inline int64_t PackedScaleIndex(int64_t padded_cols, int group_size, int64_t row,
                                                 int64_t col) {
  const int64_t groups = padded_cols / group_size;
  const int64_t tile_row = row % 16;
  return (((row / 16) * 8 + tile_row % 8) * groups + col / group_size) * 2 + tile_row / 8;
}

// Element (row, col)'s integer value (int4: -8..7, int8: -128..127).
HERD_HOST_DEVICE inline int LoadPacked(int64_t padded_cols, int bits, int64_t row, int64_t col,
                                       const uint8_t* qweight) {
  const PackedPosition pos = LocatePacked(padded_cols, bits, row, col);
  if (bits == 4) return ((qweight[pos.byte] >> pos.shift) & 0xF) - 8;
  return static_cast<int8_t>(qweight[pos.byte]);
}

}  // namespace herd::cuda
