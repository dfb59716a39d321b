// The grouped W4A16 / W8A16 GEMM; see grouped_gemm.h for the weight layout.
//
// One launch plans the work, one packs the activations, one multiplies:
//   1. Plan: expert e's rows are cut into "super tiles" of up to 8 * kTiles
//      rows (kTiles tiles of 8 tokens, the N side of mma.m16n8k16). The plan
//      is made on the device from expert_offsets, so the host never waits.
//   2. Pack: each super tile's rows are rounded to bf16 and stored in the
//      tensor cores' B-fragment order: per 8-token tile, per 64-value chunk
//      of K, per lane, 8 u32 (b0, b1 of each of the chunk's four 16-value
//      steps), so a lane fetches a chunk's operands with two 16-byte loads.
//   3. Multiply: a block of kWarpsM x kWarpsK warps takes kWarpsM row tiles
//      (16 output features each) of one super tile's expert; warp (m, k)
//      runs the k-th slice of K for row tile m. Each lane loads its weights
//      with 16-byte loads, several chunks ahead, turns them into bf16 in
//      registers (int4: two logic ops and a bf16 subtract per pair), and
//      issues mma.sync into per-group f32 partial sums that are scaled by the
//      group's f16 scale into the f32 accumulators. Warps sharing a row tile
//      add their slices through shared memory in a fixed order, so the result
//      does not depend on timing.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/packed_layout.h"

namespace herd::cuda {
namespace {

constexpr int kTileTokens = 8;
constexpr int kMaxTiles = 8;  // largest kTiles of any configuration
constexpr size_t kAlign = 256;

struct SuperTile {
  int32_t expert;
  int32_t row0;  // first row of x / out
  int32_t rows;  // 1 .. 8 * kTiles
};

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

int64_t MaxSuperTiles(int64_t num_rows, int64_t num_experts, int tiles) {
  const int64_t per = static_cast<int64_t>(kTileTokens) * tiles;
  return (num_rows + per - 1) / per + num_experts;
}

// Workspace: [count][super tiles][B fragments of every tile].
struct WorkspaceLayout {
  size_t supers_offset = 0;
  size_t fragments_offset = 0;
  size_t total = 0;
};

WorkspaceLayout Layout(const PackedShape& shape, int64_t num_experts, int64_t num_rows, int tiles) {
  const int64_t max_super = MaxSuperTiles(num_rows, num_experts, tiles);
  const int64_t chunks = shape.padded_cols() / 64;
  WorkspaceLayout layout;
  layout.supers_offset = kAlign;
  layout.fragments_offset = layout.supers_offset + AlignUp(max_super * sizeof(SuperTile));
  layout.total =
      layout.fragments_offset + static_cast<size_t>(max_super) * tiles * chunks * 32 * 32;
  return layout;
}

// ---- 1. plan -------------------------------------------------------------

// One block. Counts each expert's super tiles, scans, and writes them.
__global__ void PlanKernel(const int32_t* expert_offsets, int num_experts, int rows_per_super,
                           int32_t* num_super, SuperTile* supers) {
  extern __shared__ int32_t first_super[];  // [num_experts + 1]
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const int32_t rows = expert_offsets[e + 1] - expert_offsets[e];
    first_super[e + 1] = rows > 0 ? (rows + rows_per_super - 1) / rows_per_super : 0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    first_super[0] = 0;
    for (int e = 0; e < num_experts; ++e) first_super[e + 1] += first_super[e];
    *num_super = first_super[num_experts];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const int32_t begin = expert_offsets[e];
    const int32_t end = expert_offsets[e + 1];
    for (int32_t s = first_super[e]; s < first_super[e + 1]; ++s) {
      const int32_t row0 = begin + (s - first_super[e]) * rows_per_super;
      supers[s] = SuperTile{e, row0, min(rows_per_super, end - row0)};
    }
  }
}

// ---- 2. pack activations ---------------------------------------------------

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

// blockIdx.x: tile (super tile * tiles + t); threads: (chunk, lane).
__global__ void PackActivationsKernel(const float* x, int64_t cols, int chunks, int tiles,
                                      const int32_t* num_super, const SuperTile* supers,
                                      uint4* fragments) {
  const int tile = blockIdx.x;
  const int super_idx = tile / tiles;
  if (super_idx >= *num_super) return;
  const SuperTile st = supers[super_idx];
  const int lane = threadIdx.x % 32;
  const int local_row = (tile % tiles) * kTileTokens + lane / 4;
  const bool row_valid = local_row < st.rows;
  const float* xr = x + static_cast<int64_t>(st.row0 + local_row) * cols;
  for (int chunk = blockIdx.y * (blockDim.x / 32) + threadIdx.x / 32; chunk < chunks;
       chunk += gridDim.y * (blockDim.x / 32)) {
    uint32_t words[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t k = static_cast<int64_t>(chunk) * 64 + j * 16 + 2 * (lane % 4);
      float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (row_valid) {
        if (k < cols) v[0] = xr[k];
        if (k + 1 < cols) v[1] = xr[k + 1];
        if (k + 8 < cols) v[2] = xr[k + 8];
        if (k + 9 < cols) v[3] = xr[k + 9];
      }
      words[2 * j] = PackBf16(v[0], v[1]);
      words[2 * j + 1] = PackBf16(v[2], v[3]);
    }
    uint4* dst = fragments + ((static_cast<int64_t>(tile) * chunks + chunk) * 32 + lane) * 2;
    dst[0] = make_uint4(words[0], words[1], words[2], words[3]);
    dst[1] = make_uint4(words[4], words[5], words[6], words[7]);
  }
}

// ---- 3. multiply -------------------------------------------------------------

__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The four A registers of one 16 x 16 step from int4 word `q` (see the header).
__device__ __forceinline__ void DequantInt4(uint32_t q, uint32_t (&a)[4]) {
  const uint32_t bias_bits = 0x43084308u;  // bf16 pair (136, 136): 128 + 8
  const __nv_bfloat162 bias = *reinterpret_cast<const __nv_bfloat162*>(&bias_bits);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const uint32_t v = ((q >> (4 * i)) & 0x000F000Fu) | 0x43004300u;  // 128 + nibble
    const __nv_bfloat162 h = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&v), bias);
    a[i] = *reinterpret_cast<const uint32_t*>(&h);
  }
}

// Two int8 bytes (selected from w, already flipped to offset binary) to bf16.
__device__ __forceinline__ uint32_t Int8PairToBf16(uint32_t w, int byte) {
  const float lo = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540 | byte)) - 8388736.0f;
  const float hi = __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540 | (byte + 1))) - 8388736.0f;
  return PackBf16(lo, hi);
}

__device__ __forceinline__ void DequantInt8(uint32_t w0, uint32_t w1, uint32_t (&a)[4]) {
  w0 ^= 0x80808080u;
  w1 ^= 0x80808080u;
  a[0] = Int8PairToBf16(w0, 0);
  a[1] = Int8PairToBf16(w0, 2);
  a[2] = Int8PairToBf16(w1, 0);
  a[3] = Int8PairToBf16(w1, 2);
}

template <int kBits, int kGroup, int kTiles, int kWarpsM, int kWarpsK, int kUnroll, int kMinBlocks>
__global__ void __launch_bounds__(32 * kWarpsM * kWarpsK, kMinBlocks)
    GroupedGemmKernel(const uint8_t* qweight, const uint16_t* scales, int64_t expert_weight_bytes,
                      int64_t expert_scales, int row_tiles, int chunks, int64_t out_cols,
                      const int32_t* num_super, const SuperTile* supers, const uint4* fragments,
                      float* out) {
  constexpr int kWordsPerChunk = kBits == 4 ? 4 : 8;  // u32 per lane per chunk
  constexpr int kStepsPerGroup = kGroup / 16;         // 16-value steps per scale group
  constexpr int kChunksPerUnit = kGroup > 64 ? kGroup / 64 : 1;
  constexpr int kGroupsPerChunk = kGroup < 64 ? 64 / kGroup : 1;

  const int super_idx = blockIdx.y;
  if (super_idx >= *num_super) return;
  const SuperTile st = supers[super_idx];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int wm = warp % kWarpsM;
  const int wk = warp / kWarpsM;
  const int row_tile = blockIdx.x * kWarpsM + wm;
  const bool active = row_tile < row_tiles;

  // This warp's slice of K, whole scale groups only.
  const int units = chunks / kChunksPerUnit;
  const int per_warp = (units + kWarpsK - 1) / kWarpsK;
  const int chunk_begin = min(wk * per_warp, units) * kChunksPerUnit;
  const int chunk_end = min((wk + 1) * per_warp, units) * kChunksPerUnit;

  const int groups = chunks * 64 / kGroup;
  const uint4* weights = reinterpret_cast<const uint4*>(
      qweight + st.expert * expert_weight_bytes +
      (static_cast<int64_t>(row_tile) * chunks * 32 + lane) * kWordsPerChunk * 4);
  // This lane's rows g and g + 8 have one f16 pair per group, groups in order.
  const uint32_t* lane_scales =
      reinterpret_cast<const uint32_t*>(scales + st.expert * expert_scales) +
      (static_cast<int64_t>(row_tile) * 8 + lane / 4) * groups;
  const uint4* b_base =
      fragments + (static_cast<int64_t>(super_idx) * kTiles * chunks * 32 + lane) * 2;
  const int64_t b_tile_stride = static_cast<int64_t>(chunks) * 32 * 2;  // uint4 per tile

  float acc[kTiles][4];
  float part[kTiles][4];
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = part[t][i] = 0.0f;
  }

  if (active) {
    for (int c = chunk_begin; c < chunk_end; c += kUnroll) {
      uint32_t w[kUnroll][kWordsPerChunk];
      uint32_t scale_pairs[kUnroll][kGroupsPerChunk];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (c + u < chunk_end) {
          const uint4* src = weights + static_cast<int64_t>(c + u) * 32 * (kWordsPerChunk / 4);
#pragma unroll
          for (int v = 0; v < kWordsPerChunk / 4; ++v) {
            const uint4 q = __ldg(src + v);
            w[u][4 * v] = q.x;
            w[u][4 * v + 1] = q.y;
            w[u][4 * v + 2] = q.z;
            w[u][4 * v + 3] = q.w;
          }
          if constexpr (kGroupsPerChunk == 2) {  // both groups of the chunk in one load
            const uint2 pairs = __ldg(reinterpret_cast<const uint2*>(lane_scales + 2 * (c + u)));
            scale_pairs[u][0] = pairs.x;
            scale_pairs[u][1] = pairs.y;
          } else {  // the group that ends in this chunk (for 128-value groups: the odd chunks)
            scale_pairs[u][0] = __ldg(lane_scales + ((c + u) * 64 + 63) / kGroup);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (c + u >= chunk_end) break;
#pragma unroll
        for (int pair = 0; pair < 2; ++pair) {
          uint4 b[kTiles];
#pragma unroll
          for (int t = 0; t < kTiles; ++t) {
            b[t] = __ldg(b_base + t * b_tile_stride + static_cast<int64_t>(c + u) * 64 + pair);
          }
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int step = 2 * pair + half;  // 16-value step within the chunk
            uint32_t a[4];
            if constexpr (kBits == 4) {
              DequantInt4(w[u][step], a);
            } else {
              DequantInt8(w[u][2 * step], w[u][2 * step + 1], a);
            }
#pragma unroll
            for (int t = 0; t < kTiles; ++t) {
              Mma(part[t], a, half == 0 ? b[t].x : b[t].z, half == 0 ? b[t].y : b[t].w);
            }
            const int global_step = (c + u) * 4 + step;
            if ((global_step + 1) % kStepsPerGroup == 0) {
              const int g = kGroupsPerChunk > 1 ? step / kStepsPerGroup : 0;
              const __half2 pair = *reinterpret_cast<const __half2*>(&scale_pairs[u][g]);
              const float s_lo = __low2float(pair);
              const float s_hi = __high2float(pair);
#pragma unroll
              for (int t = 0; t < kTiles; ++t) {
                acc[t][0] += part[t][0] * s_lo;
                acc[t][1] += part[t][1] * s_lo;
                acc[t][2] += part[t][2] * s_hi;
                acc[t][3] += part[t][3] * s_hi;
#pragma unroll
                for (int i = 0; i < 4; ++i) part[t][i] = 0.0f;
              }
            }
          }
        }
      }
    }
  }

  if constexpr (kWarpsK > 1) {
    __shared__ float partial[kWarpsK - 1][kWarpsM][kTiles][4][32];
    if (wk > 0) {
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
#pragma unroll
        for (int i = 0; i < 4; ++i) partial[wk - 1][wm][t][i][lane] = acc[t][i];
      }
    }
    __syncthreads();
    if (wk > 0) return;
#pragma unroll
    for (int k = 0; k < kWarpsK - 1; ++k) {
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[t][i] += partial[k][wm][t][i][lane];
      }
    }
  }
  if (!active) return;

  const int64_t feature0 = static_cast<int64_t>(row_tile) * 16 + lane / 4;
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int token = t * kTileTokens + 2 * (lane % 4) + (i % 2);
      const int64_t feature = feature0 + (i / 2) * 8;
      if (token < st.rows && feature < out_cols) {
        out[static_cast<int64_t>(st.row0 + token) * out_cols + feature] = acc[t][i];
      }
    }
  }
}

// The multiply configuration for the rows each expert gets on average:
// kTiles 8-token tiles per super tile, warps per block along the output
// features (M) and along K, chunks loaded ahead (unroll), and the blocks per
// multiprocessor the registers must allow. Decode shapes (up to 16 rows per
// expert) wait on memory, so they trade registers for resident warps; these
// were the fastest of the variants measured on an H100 (docs/performance.md).
struct Config {
  int tiles;
};

Config ChooseConfig(const GroupedWeights& w, int64_t num_rows) {
  const int64_t per_expert = (num_rows + w.num_experts - 1) / w.num_experts;
  return {per_expert <= 8 ? 1 : per_expert <= 16 ? 2 : per_expert <= 32 ? 4 : 8};
}

template <int kBits, int kGroup, int kTiles, int kWarpsM, int kWarpsK, int kUnroll, int kMinBlocks>
absl::Status LaunchMultiply(const GroupedWeights& w, int64_t num_rows, const int32_t* num_super,
                            const SuperTile* supers, const uint4* fragments, float* out,
                            cudaStream_t stream) {
  const PackedShape& shape = w.shape;
  const int row_tiles = static_cast<int>(shape.padded_rows() / 16);
  const int chunks = static_cast<int>(shape.padded_cols() / 64);
  const dim3 grid((row_tiles + kWarpsM - 1) / kWarpsM,
                  static_cast<unsigned>(MaxSuperTiles(num_rows, w.num_experts, kTiles)));
  GroupedGemmKernel<kBits, kGroup, kTiles, kWarpsM, kWarpsK, kUnroll, kMinBlocks>
      <<<grid, 32 * kWarpsM * kWarpsK, 0, stream>>>(w.qweight, w.scales, shape.weight_bytes(),
                                                    shape.scale_bytes() / 2, row_tiles, chunks,
                                                    shape.rows, num_super, supers, fragments, out);
  return FromCuda(cudaGetLastError(), "GroupedGemm launch");
}

template <int kBits, int kGroup>
absl::Status Multiply(const Config& config, const GroupedWeights& w, int64_t num_rows,
                      const int32_t* num_super, const SuperTile* supers, const uint4* fragments,
                      float* out, cudaStream_t stream) {
  switch (config.tiles) {
    case 1:
      return LaunchMultiply<kBits, kGroup, 1, 2, 4, 2, 4>(w, num_rows, num_super, supers, fragments,
                                                          out, stream);
    case 2: {
      // int8 doubles the weight registers: half the unroll, half the blocks.
      constexpr int kUnroll = kBits == 4 ? 4 : 2;
      constexpr int kMinBlocks = kBits == 4 ? 8 : 4;
      return LaunchMultiply<kBits, kGroup, 2, 1, 4, kUnroll, kMinBlocks>(
          w, num_rows, num_super, supers, fragments, out, stream);
    }
    case 4:
      return LaunchMultiply<kBits, kGroup, 4, 1, 4, 2, 4>(w, num_rows, num_super, supers, fragments,
                                                          out, stream);
    default:
      return LaunchMultiply<kBits, kGroup, 8, 4, 1, 1, 1>(w, num_rows, num_super, supers, fragments,
                                                          out, stream);
  }
}

template <int kBits>
absl::Status MultiplyForGroup(const Config& config, const GroupedWeights& w, int64_t num_rows,
                              const int32_t* num_super, const SuperTile* supers,
                              const uint4* fragments, float* out, cudaStream_t stream) {
  switch (w.shape.format.group_size) {
    case 32:
      return Multiply<kBits, 32>(config, w, num_rows, num_super, supers, fragments, out, stream);
    case 64:
      return Multiply<kBits, 64>(config, w, num_rows, num_super, supers, fragments, out, stream);
    default:
      return Multiply<kBits, 128>(config, w, num_rows, num_super, supers, fragments, out, stream);
  }
}

// ---- dequantization -------------------------------------------------------

// One thread per output value, rows and columns in order, so the stores
// coalesce; the packed bytes of a warp's 32 values lie within a few lanes'
// 16 or 32 bytes and come through L1.
__global__ void DequantizeKernel(const uint8_t* qweight, const uint16_t* scales, int64_t rows,
                                 int64_t cols, int64_t padded_cols, int bits, int group_size,
                                 __nv_bfloat16* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols;
  const int64_t c = i % cols;
  const int q = LoadPacked(padded_cols, bits, r, c, qweight);
  const float scale =
      __half2float(__ushort_as_half(scales[PackedScaleIndex(padded_cols, group_size, r, c)]));
  out[i] = __float2bfloat16_rn(static_cast<float>(q) * scale);
}

}  // namespace

size_t GroupedGemmWorkspaceBytes(const GroupedWeights& weights, int64_t max_rows) {
  return Layout(weights.shape, weights.num_experts, max_rows, kMaxTiles).total;
}

absl::Status GroupedGemm(const GroupedWeights& weights, const float* x, int64_t num_rows,
                         const int32_t* expert_offsets, float* out, void* workspace,
                         size_t workspace_bytes, void* stream) {
  HERD_RETURN_IF_ERROR(ValidatePackedShape(weights.shape));
  if (weights.num_experts <= 0 || num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("grouped GEMM over ", weights.num_experts,
                                                   " experts and ", num_rows, " rows"));
  }
  if (workspace_bytes < GroupedGemmWorkspaceBytes(weights, num_rows)) {
    return absl::InvalidArgumentError(
        absl::StrCat("grouped GEMM workspace of ", workspace_bytes, " bytes; ",
                     GroupedGemmWorkspaceBytes(weights, num_rows), " needed"));
  }
  if (num_rows == 0) return absl::OkStatus();
  const Config config = ChooseConfig(weights, num_rows);
  const WorkspaceLayout layout = Layout(weights.shape, weights.num_experts, num_rows, config.tiles);
  auto* base = static_cast<uint8_t*>(workspace);
  auto* num_super = reinterpret_cast<int32_t*>(base);
  auto* supers = reinterpret_cast<SuperTile*>(base + layout.supers_offset);
  auto* fragments = reinterpret_cast<uint4*>(base + layout.fragments_offset);
  const auto cuda_stream = static_cast<cudaStream_t>(stream);

  const int num_experts = static_cast<int>(weights.num_experts);
  PlanKernel<<<1, 256, (num_experts + 1) * sizeof(int32_t), cuda_stream>>>(
      expert_offsets, num_experts, kTileTokens * config.tiles, num_super, supers);
  HERD_RETURN_IF_ERROR(FromCuda(cudaGetLastError(), "GroupedGemm plan launch"));

  const int chunks = static_cast<int>(weights.shape.padded_cols() / 64);
  const int64_t max_tiles =
      MaxSuperTiles(num_rows, weights.num_experts, config.tiles) * config.tiles;
  constexpr int kPackWarps = 8;
  const dim3 pack_grid(static_cast<unsigned>(max_tiles),
                       static_cast<unsigned>(std::min(4, (chunks + kPackWarps - 1) / kPackWarps)));
  PackActivationsKernel<<<pack_grid, 32 * kPackWarps, 0, cuda_stream>>>(
      x, weights.shape.cols, chunks, config.tiles, num_super, supers, fragments);
  HERD_RETURN_IF_ERROR(FromCuda(cudaGetLastError(), "GroupedGemm pack launch"));

  if (weights.shape.format.bits == 4) {
    return MultiplyForGroup<4>(config, weights, num_rows, num_super, supers, fragments, out,
                               cuda_stream);
  }
  return MultiplyForGroup<8>(config, weights, num_rows, num_super, supers, fragments, out,
                             cuda_stream);
}

size_t DequantizedBytes(const PackedShape& shape) {
  return static_cast<size_t>(shape.rows * shape.cols) * sizeof(uint16_t);
}

absl::Status DequantizeExpert(const GroupedWeights& weights, int64_t expert, uint16_t* out,
                              void* stream) {
  const PackedShape& shape = weights.shape;
  HERD_RETURN_IF_ERROR(ValidatePackedShape(shape));
  if (expert < 0 || expert >= weights.num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert ", expert, " of ", weights.num_experts, " to dequantize"));
  }
  constexpr int kThreads = 256;
  const int64_t n = shape.rows * shape.cols;
  DequantizeKernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0,
                     static_cast<cudaStream_t>(stream)>>>(
      weights.qweight + expert * shape.weight_bytes(),
      weights.scales + expert * (shape.scale_bytes() / 2), shape.rows, shape.cols,
      shape.padded_cols(), shape.format.bits, shape.format.group_size,
      reinterpret_cast<__nv_bfloat16*>(out));
  return FromCuda(cudaGetLastError(), "DequantizeExpert launch");
}

}  // namespace herd::cuda
