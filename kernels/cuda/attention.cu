// CUDA RoPE, paged K/V append and paged attention; see attention.h.
//
// Both attention paths run one kernel template over "query rows": the
// (token, query head) pairs of one sequence whose heads share a kv head,
// token-major, so row i is token i / group at head kv_head * group + i %
// group. A thread block takes a tile of kRows such rows and streams the
// positions they attend to through shared memory kCols at a time: K tile,
// scores, online softmax, V tile, accumulate. Sharing the K/V tile among the
// heads of a group reads the cache once per group rather than once per head.
// Prefill uses big tiles (64 rows x 64 positions, 256 threads); decode uses 8
// rows (one token's heads of a group) and may split the positions among
// blocks, whose partial results a second kernel merges.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_status.h"

namespace herd::cuda {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ int64_t Min64(int64_t a, int64_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------
// RoPE: one block per token; thread i computes pair i's angle, sine and cosine
// once and rotates that pair in every head.

__global__ void RopeKernel(float* x, int64_t num_heads, int64_t head_dim, int half,
                           const int32_t* positions, float theta_scale, bool gptj) {
  const int64_t t = blockIdx.x;
  float* xt = x + t * num_heads * head_dim;
  const float position = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    // position * theta_scale^i by repeated float multiplication, the CPU's
    // exact sequence of roundings; then sin and cos of that float in double
    // (--use_fast_math turns the float versions into the inaccurate __sinf
    // and __cosf, which lose digits for angles far from 0).
    float angle = position;
    for (int k = 0; k < i; ++k) angle *= theta_scale;
    double s;
    double c;
    sincos(static_cast<double>(angle), &s, &c);
    const float sf = static_cast<float>(s);
    const float cf = static_cast<float>(c);
    const int a = gptj ? 2 * i : i;
    const int b = gptj ? 2 * i + 1 : i + half;
    for (int64_t h = 0; h < num_heads; ++h) {
      float* head = xt + h * head_dim;
      const float x0 = head[a];
      const float x1 = head[b];
      head[a] = x0 * cf - x1 * sf;
      head[b] = x0 * sf + x1 * cf;
    }
  }
}

// ---------------------------------------------------------------------------
// AppendKv: one block per token copies its K and V rows to its slot.

__global__ void AppendKvKernel(const float* k, const float* v, const int32_t* slot_mapping,
                               int64_t row_floats, float* keys, float* values, int64_t block_stride,
                               int64_t block_tokens) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slot_mapping[t];
  if (slot < 0) return;
  const int64_t dst = (slot / block_tokens) * block_stride + (slot % block_tokens) * row_floats;
  const int64_t src = t * row_floats;
  for (int64_t i = threadIdx.x; i < row_floats; i += blockDim.x) {
    keys[dst + i] = k[src + i];
    values[dst + i] = v[src + i];
  }
}

// ---------------------------------------------------------------------------
// Attention.

// Tile shapes. Each thread computes a kRm x kRn patch of a tile's kRows x
// kCols scores (threads laid out (kRows / kRm) x (kCols / kRn), column
// fastest), and warp w accumulates outputs of rows [w * kRows / warps, (w +
// 1) * kRows / warps), lane l holding dimensions l, l + 32, ...
struct PrefillTiles {
  static constexpr int kRows = 64;
  static constexpr int kCols = 64;
  static constexpr int kThreads = 256;
  static constexpr int kRm = 4;
  static constexpr int kRn = 4;
};
struct DecodeTiles {
  static constexpr int kRows = 8;
  static constexpr int kCols = 64;
  static constexpr int kThreads = 128;
  static constexpr int kRm = 2;
  static constexpr int kRn = 2;
};

// Decode splits: at most kMaxSplits parts of at least kMinSplitPositions
// positions each, and no more than it takes to reach kTargetDecodeBlocks
// blocks in all (a few per SM).
constexpr int64_t kMaxSplits = 64;
constexpr int64_t kMinSplitPositions = 256;
constexpr int64_t kTargetDecodeBlocks = 1024;
constexpr int64_t kMaxHeadDim = 256;

struct AttentionParams {
  const float* q;
  float* out;
  const float* keys;
  const float* values;
  const DeviceAttentionSequence* sequences;
  const int32_t* block_tables;
  // With num_splits > 1: split z's unnormalised output of (sequence s, token
  // t, head h) at partial_acc + (((z * num_sequences + s) * max_tokens + t) *
  // num_heads + h) * head_dim, its running max and sum at partial_ml + 2 *
  // (same index).
  float* partial_acc;
  float* partial_ml;
  int64_t block_stride;
  int64_t block_tokens;
  int64_t num_sequences;
  int64_t max_tokens;
  int num_heads;
  int num_kv_heads;
  int head_dim;
  int group;  // num_heads / num_kv_heads
  int row_tiles;
  int num_splits;
  float scale;
};

template <int kMaxD, typename Tiles>
constexpr size_t TileSmemBytes() {
  constexpr int kLd = kMaxD + 1;
  return sizeof(float) * (Tiles::kRows * kLd + Tiles::kCols * kLd +
                          Tiles::kRows * (Tiles::kCols + 1) + 3 * Tiles::kRows);
}

// Copies the rows of positions [tile_begin, tile_begin + cols) of one kv head
// (src points at its columns of block 0) into dst [kCols][kLd], zeros in the
// rest of the tile, so no garbage (NaN) meets a zero weight. Warp per row.
template <int kMaxD, int kCols, int kThreads>
__device__ void LoadKvTile(const float* src, const int32_t* block_table, int64_t block_stride,
                           int64_t block_tokens, int64_t row_floats, int head_dim,
                           int64_t tile_begin, int cols, float* dst) {
  constexpr int kLd = kMaxD + 1;
  constexpr int kWarps = kThreads / 32;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  for (int c = warp; c < kCols; c += kWarps) {
    float* drow = dst + c * kLd;
    if (c < cols) {
      const int64_t pos = tile_begin + c;
      const int64_t block = block_table[pos / block_tokens];
      const float* srow = src + block * block_stride + (pos % block_tokens) * row_floats;
      for (int d = lane; d < kMaxD; d += 32) drow[d] = d < head_dim ? srow[d] : 0.0f;
    } else {
      for (int d = lane; d < kMaxD; d += 32) drow[d] = 0.0f;
    }
  }
}

// Grid: x = (sequence, row tile, split), split fastest; y = kv head. Shared
// memory (floats): q_s [kRows][kLd] (queries times scale), kv_s [kCols][kLd]
// (K, then V, of the current position tile), s_s [kRows][kCols + 1] (scores,
// then weights), then alpha_s, l_s, m_s [kRows]. Rows past the sequence's
// last are computed as zeros and never stored.
template <int kMaxD, typename Tiles>
__global__ void __launch_bounds__(Tiles::kThreads) AttentionTileKernel(AttentionParams p) {
  constexpr int kRows = Tiles::kRows;
  constexpr int kCols = Tiles::kCols;
  constexpr int kThreads = Tiles::kThreads;
  constexpr int kRm = Tiles::kRm;
  constexpr int kRn = Tiles::kRn;
  constexpr int kLd = kMaxD + 1;  // odd: threads reading a column of rows hit distinct banks
  constexpr int kSld = kCols + 1;
  constexpr int kTr = kRows / kRm;  // score thread layout, kTr x kTc
  constexpr int kTc = kCols / kRn;
  constexpr int kGroupThreads = kThreads / kRows;  // softmax threads per row
  constexpr int kWarps = kThreads / 32;
  constexpr int kPvRows = kRows / kWarps;  // output rows per warp
  constexpr int kPvDims = kMaxD / 32;      // output dimensions per lane
  static_assert(kTr * kTc == kThreads && kTr * kRm == kRows && kTc * kRn == kCols);
  static_assert(kGroupThreads * kRows == kThreads && kGroupThreads <= 32 &&
                (kGroupThreads & (kGroupThreads - 1)) == 0);
  static_assert(kPvRows * kWarps == kRows && kMaxD % 32 == 0);

  extern __shared__ float smem[];
  float* q_s = smem;
  float* kv_s = q_s + kRows * kLd;
  float* s_s = kv_s + kCols * kLd;
  float* alpha_s = s_s + kRows * kSld;
  float* l_s = alpha_s + kRows;
  float* m_s = l_s + kRows;

  const int split = blockIdx.x % p.num_splits;
  const int tile = (blockIdx.x / p.num_splits) % p.row_tiles;
  const int64_t seq_idx = blockIdx.x / (p.num_splits * p.row_tiles);
  const int kv_head = blockIdx.y;
  const DeviceAttentionSequence seq = p.sequences[seq_idx];
  const int64_t num_rows = seq.num_tokens * p.group;
  const int64_t first_row = static_cast<int64_t>(tile) * kRows;
  if (first_row >= num_rows) return;  // whole block: no barrier is skipped
  const int64_t last_token = (Min64(first_row + kRows, num_rows) - 1) / p.group;
  // The tile's rows attend to positions [0, kv_end); this split takes
  // [begin, end), a whole number of position tiles.
  const int64_t kv_end = seq.start_pos + last_token + 1;
  const int64_t chunk = (kv_end + p.num_splits - 1) / p.num_splits;
  const int64_t split_len = (chunk + kCols - 1) / kCols * kCols;
  const int64_t begin = split * split_len;
  const int64_t end = Min64(begin + split_len, kv_end);

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int64_t q_stride = static_cast<int64_t>(p.num_heads) * p.head_dim;
  const int64_t row_floats = static_cast<int64_t>(p.num_kv_heads) * p.head_dim;
  const int32_t* block_table = p.block_tables + seq.block_table_offset;
  const float* k_src = p.keys + static_cast<int64_t>(kv_head) * p.head_dim;
  const float* v_src = p.values + static_cast<int64_t>(kv_head) * p.head_dim;

  for (int r = warp; r < kRows; r += kWarps) {
    const int64_t row = first_row + r;
    float* dst = q_s + r * kLd;
    if (row < num_rows) {
      const int64_t token = row / p.group;
      const int64_t head = static_cast<int64_t>(kv_head) * p.group + row % p.group;
      const float* src = p.q + (seq.q_row + token) * q_stride + head * p.head_dim;
      for (int d = lane; d < kMaxD; d += 32) dst[d] = d < p.head_dim ? src[d] * p.scale : 0.0f;
    } else {
      for (int d = lane; d < kMaxD; d += 32) dst[d] = 0.0f;
    }
  }

  // Softmax state of row tid / kGroupThreads, the same in all its threads.
  const int sm_row = tid / kGroupThreads;
  const int sm_lane = tid % kGroupThreads;
  float m_run = -INFINITY;
  float l_run = 0.0f;
  float acc[kPvRows][kPvDims] = {};

  const int tr = tid / kTc;
  const int tc = tid % kTc;
  for (int64_t tile_begin = begin; tile_begin < end; tile_begin += kCols) {
    const int cols = static_cast<int>(Min64(kCols, end - tile_begin));
    LoadKvTile<kMaxD, kCols, kThreads>(k_src, block_table, p.block_stride, p.block_tokens,
                                       row_floats, p.head_dim, tile_begin, cols, kv_s);
    __syncthreads();

    // Scores of rows tr + i * kTr, columns tc + j * kTc; causal mask.
    float s[kRm][kRn] = {};
#pragma unroll 4
    for (int d = 0; d < p.head_dim; ++d) {
      float qv[kRm];
      float kv[kRn];
#pragma unroll
      for (int i = 0; i < kRm; ++i) qv[i] = q_s[(tr + i * kTr) * kLd + d];
#pragma unroll
      for (int j = 0; j < kRn; ++j) kv[j] = kv_s[(tc + j * kTc) * kLd + d];
#pragma unroll
      for (int i = 0; i < kRm; ++i) {
#pragma unroll
        for (int j = 0; j < kRn; ++j) s[i][j] += qv[i] * kv[j];
      }
    }
#pragma unroll
    for (int i = 0; i < kRm; ++i) {
      const int r = tr + i * kTr;
      const int64_t row = first_row + r;
      const int64_t last_pos = seq.start_pos + row / p.group;  // the row's causal limit
#pragma unroll
      for (int j = 0; j < kRn; ++j) {
        const int c = tc + j * kTc;
        const bool visible = row < num_rows && c < cols && tile_begin + c <= last_pos;
        s_s[r * kSld + c] = visible ? s[i][j] : -INFINITY;
      }
    }
    __syncthreads();  // K and the scores are done with: V may replace K

    LoadKvTile<kMaxD, kCols, kThreads>(v_src, block_table, p.block_stride, p.block_tokens,
                                       row_floats, p.head_dim, tile_begin, cols, kv_s);
    {
      // Online softmax of row sm_row: new max, weights exp(s - max) in place,
      // and the factor alpha that rescales what was accumulated so far. A row
      // that has seen no visible position keeps max -inf and weights 0.
      float* srow = s_s + sm_row * kSld;
      float tile_max = -INFINITY;
      for (int c = sm_lane; c < kCols; c += kGroupThreads) tile_max = fmaxf(tile_max, srow[c]);
#pragma unroll
      for (int off = kGroupThreads / 2; off > 0; off /= 2) {
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
      }
      const float m_new = fmaxf(m_run, tile_max);
      const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
      float sum = 0.0f;
      for (int c = sm_lane; c < kCols; c += kGroupThreads) {
        const float e = __expf(srow[c] - m_ref);
        srow[c] = e;
        sum += e;
      }
#pragma unroll
      for (int off = kGroupThreads / 2; off > 0; off /= 2) {
        sum += __shfl_xor_sync(0xffffffffu, sum, off);
      }
      const float alpha = __expf(m_run - m_ref);
      l_run = l_run * alpha + sum;
      m_run = m_new;
      if (sm_lane == 0) alpha_s[sm_row] = alpha;
    }
    __syncthreads();

    // acc = acc * alpha + weights . V for rows warp * kPvRows + i,
    // dimensions lane + 32 * j.
#pragma unroll
    for (int i = 0; i < kPvRows; ++i) {
      const float alpha = alpha_s[warp * kPvRows + i];
#pragma unroll
      for (int j = 0; j < kPvDims; ++j) acc[i][j] *= alpha;
    }
    for (int c = 0; c < cols; ++c) {
      float w[kPvRows];
      float vv[kPvDims];
#pragma unroll
      for (int i = 0; i < kPvRows; ++i) w[i] = s_s[(warp * kPvRows + i) * kSld + c];
#pragma unroll
      for (int j = 0; j < kPvDims; ++j) vv[j] = kv_s[c * kLd + lane + 32 * j];
#pragma unroll
      for (int i = 0; i < kPvRows; ++i) {
#pragma unroll
        for (int j = 0; j < kPvDims; ++j) acc[i][j] += w[i] * vv[j];
      }
    }
    __syncthreads();  // before the next tile overwrites kv_s and s_s
  }

  if (sm_lane == 0) {
    l_s[sm_row] = l_run;
    m_s[sm_row] = m_run;
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kPvRows; ++i) {
    const int r = warp * kPvRows + i;
    const int64_t row = first_row + r;
    if (row >= num_rows) continue;
    const int64_t token = row / p.group;
    const int64_t head = static_cast<int64_t>(kv_head) * p.group + row % p.group;
    if (p.num_splits == 1) {
      float* o = p.out + (seq.q_row + token) * q_stride + head * p.head_dim;
      const float inv = 1.0f / l_s[r];
#pragma unroll
      for (int j = 0; j < kPvDims; ++j) {
        const int d = lane + 32 * j;
        if (d < p.head_dim) o[d] = acc[i][j] * inv;
      }
    } else {
      const int64_t idx =
          ((split * p.num_sequences + seq_idx) * p.max_tokens + token) * p.num_heads + head;
      float* pa = p.partial_acc + idx * p.head_dim;
#pragma unroll
      for (int j = 0; j < kPvDims; ++j) {
        const int d = lane + 32 * j;
        if (d < p.head_dim) pa[d] = acc[i][j];
      }
      if (lane == 0) {
        p.partial_ml[2 * idx] = m_s[r];
        p.partial_ml[2 * idx + 1] = l_s[r];
      }
    }
  }
}

// Merges the num_splits partial results of each (sequence, token, head):
// out = sum_z acc_z * exp(m_z - m) / sum_z l_z * exp(m_z - m), m = max_z m_z.
// A split that saw no position has m_z = -inf and l_z = 0 and weighs 0; split
// 0 always saw position 0, so m is finite. Grid: x = (sequence, token), y =
// head.
__global__ void CombineSplitsKernel(AttentionParams p) {
  const int64_t seq_idx = blockIdx.x / p.max_tokens;
  const int64_t token = blockIdx.x % p.max_tokens;
  const int head = blockIdx.y;
  const DeviceAttentionSequence seq = p.sequences[seq_idx];
  if (token >= seq.num_tokens) return;
  // Index of split z's partial: first + z * split_step.
  const int64_t first = (seq_idx * p.max_tokens + token) * p.num_heads + head;
  const int64_t split_step = p.num_sequences * p.max_tokens * p.num_heads;
  float m = -INFINITY;
  for (int z = 0; z < p.num_splits; ++z) m = fmaxf(m, p.partial_ml[2 * (first + z * split_step)]);
  float l = 0.0f;
  for (int z = 0; z < p.num_splits; ++z) {
    const int64_t idx = first + z * split_step;
    l += p.partial_ml[2 * idx + 1] * __expf(p.partial_ml[2 * idx] - m);
  }
  const float inv = 1.0f / l;
  float* o = p.out + (seq.q_row + token) * p.num_heads * p.head_dim +
             static_cast<int64_t>(head) * p.head_dim;
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float sum = 0.0f;
    for (int z = 0; z < p.num_splits; ++z) {
      const int64_t idx = first + z * split_step;
      sum += p.partial_acc[idx * p.head_dim + d] * __expf(p.partial_ml[2 * idx] - m);
    }
    o[d] = sum * inv;
  }
}

template <int kMaxD, typename Tiles>
cudaError_t LaunchTiles(const AttentionParams& p, dim3 grid, cudaStream_t stream) {
  const auto kernel = AttentionTileKernel<kMaxD, Tiles>;
  constexpr size_t kSmem = TileSmemBytes<kMaxD, Tiles>();
  // Above 48 KiB of dynamic shared memory needs the opt-in; setting it is a
  // host-side attribute, allowed while a stream is being captured.
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  kernel<<<grid, Tiles::kThreads, kSmem, stream>>>(p);
  return cudaGetLastError();
}

// The tile kernel for the smallest kMaxD in {64, 128, 256} that holds
// head_dim.
template <typename Tiles>
cudaError_t LaunchTilesForHeadDim(const AttentionParams& p, dim3 grid, cudaStream_t stream) {
  if (p.head_dim <= 64) return LaunchTiles<64, Tiles>(p, grid, stream);
  if (p.head_dim <= 128) return LaunchTiles<128, Tiles>(p, grid, stream);
  return LaunchTiles<256, Tiles>(p, grid, stream);
}

bool ValidShape(const cpu::AttentionShape& shape) {
  return shape.head_dim >= 1 && shape.head_dim <= kMaxHeadDim && shape.num_kv_heads >= 1 &&
         shape.num_heads >= shape.num_kv_heads && shape.num_heads % shape.num_kv_heads == 0 &&
         shape.num_heads <= INT_MAX / kMaxHeadDim;
}

// Bytes of one split's partial results for a decode batch of num_sequences.
size_t SplitBytes(const cpu::AttentionShape& shape, int64_t num_sequences) {
  return static_cast<size_t>(num_sequences * shape.num_heads * (shape.head_dim + 2)) *
         sizeof(float);
}

}  // namespace

absl::Status ApplyRope(float* x, int64_t num_tokens, int64_t num_heads, int64_t head_dim,
                       int64_t rope_dim, const int32_t* positions, float theta, RopeStyle style,
                       void* stream) {
  if (rope_dim < 0 || rope_dim % 2 != 0 || rope_dim > head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ApplyRope: rope_dim ", rope_dim, " must be even and in [0, head_dim ", head_dim, "]"));
  }
  if (num_tokens > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("ApplyRope: ", num_tokens, " tokens"));
  }
  if (num_tokens <= 0 || num_heads <= 0 || rope_dim == 0) return absl::OkStatus();
  // The CPU's float theta_scale, computed by the same host pow.
  const float theta_scale = std::pow(theta, -2.0f / static_cast<float>(rope_dim));
  const int half = static_cast<int>(rope_dim / 2);
  const int threads = static_cast<int>(std::min<int64_t>(128, CeilDiv(half, 32) * 32));
  RopeKernel<<<static_cast<unsigned>(num_tokens), threads, 0, static_cast<cudaStream_t>(stream)>>>(
      x, num_heads, head_dim, half, positions, theta_scale, style == RopeStyle::kGptJ);
  return FromCuda(cudaGetLastError(), "ApplyRope launch");
}

absl::Status AppendKv(const cpu::AttentionShape& shape, const float* k, const float* v,
                      int64_t num_tokens, const int32_t* slot_mapping, const DeviceKvBlocks& kv,
                      void* stream) {
  if (shape.num_kv_heads < 1 || shape.head_dim < 1 || kv.block_tokens < 1 || num_tokens > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AppendKv: bad shape (num_kv_heads ", shape.num_kv_heads, ", head_dim ", shape.head_dim,
        ", block_tokens ", kv.block_tokens, ", num_tokens ", num_tokens, ")"));
  }
  if (num_tokens <= 0) return absl::OkStatus();
  constexpr int kThreads = 256;
  AppendKvKernel<<<static_cast<unsigned>(num_tokens), kThreads, 0,
                   static_cast<cudaStream_t>(stream)>>>(
      k, v, slot_mapping, shape.num_kv_heads * shape.head_dim, kv.keys, kv.values, kv.block_stride,
      kv.block_tokens);
  return FromCuda(cudaGetLastError(), "AppendKv launch");
}

size_t AttentionWorkspaceBytes(const cpu::AttentionShape& shape, int64_t num_sequences,
                               int64_t max_context) {
  if (!ValidShape(shape) || num_sequences <= 0 || max_context <= 0) return 0;
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const int64_t unsplit_blocks =
      num_sequences * shape.num_kv_heads * CeilDiv(group, DecodeTiles::kRows);
  const int64_t splits = std::min({kMaxSplits, CeilDiv(max_context, kMinSplitPositions),
                                   CeilDiv(kTargetDecodeBlocks, unsplit_blocks)});
  return splits > 1 ? static_cast<size_t>(splits) * SplitBytes(shape, num_sequences) : 0;
}

absl::Status Attention(const cpu::AttentionShape& shape, const cpu::KvBlocks& kv, const float* q,
                       const DeviceAttentionSequence* sequences, int64_t num_sequences,
                       int64_t total_tokens, int64_t max_tokens_per_sequence,
                       const int32_t* block_tables, float* out, void* workspace,
                       size_t workspace_bytes, void* stream) {
  if (!ValidShape(shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Attention: need 1 <= head_dim <= ", kMaxHeadDim,
        " and num_heads a multiple of num_kv_heads >= 1; got num_heads ", shape.num_heads,
        ", num_kv_heads ", shape.num_kv_heads, ", head_dim ", shape.head_dim));
  }
  if (kv.type != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: the CUDA kernel reads an F32 cache, not ", DTypeName(kv.type)));
  }
  if (kv.block_tokens < 1 || max_tokens_per_sequence > total_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: block_tokens ", kv.block_tokens, ", max_tokens_per_sequence ",
                     max_tokens_per_sequence, ", total_tokens ", total_tokens));
  }
  if (num_sequences <= 0 || max_tokens_per_sequence <= 0) return absl::OkStatus();
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const bool decode = max_tokens_per_sequence == 1;
  const int64_t rows = decode ? DecodeTiles::kRows : PrefillTiles::kRows;
  const int64_t row_tiles = CeilDiv(max_tokens_per_sequence * group, rows);
  const int64_t splits =
      decode ? std::max<int64_t>(
                   1, std::min<int64_t>(kMaxSplits,
                                        workspace_bytes / SplitBytes(shape, num_sequences)))
             : 1;
  if (num_sequences * row_tiles * splits > INT_MAX || shape.num_kv_heads > 65535 ||
      num_sequences * max_tokens_per_sequence > INT_MAX || shape.num_heads > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Attention: batch too large for a launch grid (", num_sequences, " sequences of up to ",
        max_tokens_per_sequence, " tokens, ", shape.num_heads, " heads)"));
  }

  AttentionParams p;
  p.q = q;
  p.out = out;
  p.keys = static_cast<const float*>(kv.keys);
  p.values = static_cast<const float*>(kv.values);
  p.sequences = sequences;
  p.block_tables = block_tables;
  p.partial_acc = splits > 1 ? static_cast<float*>(workspace) : nullptr;
  p.partial_ml = splits > 1 ? p.partial_acc + splits * num_sequences * max_tokens_per_sequence *
                                                  shape.num_heads * shape.head_dim
                            : nullptr;
  p.block_stride = kv.block_stride;
  p.block_tokens = kv.block_tokens;
  p.num_sequences = num_sequences;
  p.max_tokens = max_tokens_per_sequence;
  p.num_heads = static_cast<int>(shape.num_heads);
  p.num_kv_heads = static_cast<int>(shape.num_kv_heads);
  p.head_dim = static_cast<int>(shape.head_dim);
  p.group = static_cast<int>(group);
  p.row_tiles = static_cast<int>(row_tiles);
  p.num_splits = static_cast<int>(splits);
  p.scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));

  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(num_sequences * row_tiles * splits),
                  static_cast<unsigned>(shape.num_kv_heads));
  if (!decode) {
    return FromCuda(LaunchTilesForHeadDim<PrefillTiles>(p, grid, s), "Attention prefill launch");
  }
  absl::Status status =
      FromCuda(LaunchTilesForHeadDim<DecodeTiles>(p, grid, s), "Attention decode launch");
  if (!status.ok() || splits == 1) return status;
  constexpr int kCombineThreads = 128;
  CombineSplitsKernel<<<dim3(static_cast<unsigned>(num_sequences * max_tokens_per_sequence),
                             static_cast<unsigned>(shape.num_heads)),
                        kCombineThreads, 0, s>>>(p);
  return FromCuda(cudaGetLastError(), "Attention combine launch");
}

}  // namespace herd::cuda
