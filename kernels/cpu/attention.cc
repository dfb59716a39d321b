#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/fast_exp.h"

namespace herd::cpu {
namespace {

// The kernel below works on tiles of up to kTileRows query rows that share a
// kv head: the heads of a GQA group, over one or more consecutive tokens. It
// is written so that every row's arithmetic is the same whatever tile it is
// in, which rows it shares the tile with and which blocks hold the sequence:
// a prompt's outputs are then bit-identical whether it is prefilled in one
// chunk, in several, or decoded token by token, and whoever shares the batch.
//
//   scores  Q K^T on 4 x 4 (row, position) tiles: per pair, 16 lanes of
//           head_dim accumulate in order, then one fixed tree adds the lanes
//           (Reduce16 sums 16 pairs at once with shuffles);
//   softmax per row over its own context;
//   values  P V over 4 rows at a time, so one load of a value row feeds four
//           rows' accumulators; per output lane the positions add in order.
constexpr int kTileRows = 16;
constexpr int kLanes = 16;
constexpr int kQkRows = 4;       // rows of a scores tile
constexpr int kQkPositions = 4;  // positions of a scores tile
constexpr int kPvRows = 4;       // rows sharing one pass over the values
constexpr int kPvChunks = 4;     // 16-lane chunks of head_dim per pass over the values

// 16 floats as GCC's vector extension: one zmm, two ymm or four xmm registers
// for the ISA each entry point is built for.
using Vec16 = float __attribute__((vector_size(kLanes * sizeof(float))));

// Helpers are always inlined so that they take the ISA of the entry point.
// They take and return Vec16 by value, but since no call to them remains, the
// baseline ISA's ABI for such calls that GCC warns about (-Wpsabi) is never
// used.
#pragma GCC diagnostic ignored "-Wpsabi"
// `n` floats from p (n <= 16), the other lanes zero.
__attribute__((always_inline)) inline Vec16 LoadN(const float* p, int64_t n) {
  Vec16 v = {};
  std::memcpy(&v, p, n * sizeof(float));
  return v;
}

__attribute__((always_inline)) inline void StoreN(float* p, Vec16 v, int64_t n) {
  std::memcpy(p, &v, n * sizeof(float));
}

// The lanes of a and b (0-15 from a, 16-31 from b) that `kLane` picks.
template <int... kLane>
__attribute__((always_inline)) inline Vec16 Pick(Vec16 a, Vec16 b) {
  return __builtin_shufflevector(a, b, kLane...);
}

// Lane k of the result is the sum of the 16 lanes of v[k], always added as
// (((l + l^8) + ...^4) + ...^2) + ...^1: each level adds the lanes one pick
// takes to those the other takes.
__attribute__((always_inline)) inline Vec16 Reduce16(const Vec16* v) {
  Vec16 b[8], c[4], d[2];
  for (int k = 0; k < 8; ++k) {
    b[k] =
        Pick<0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23>(v[2 * k], v[2 * k + 1]) +
        Pick<8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31>(v[2 * k], v[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    c[k] = Pick<0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27>(b[2 * k], b[2 * k + 1]) +
           Pick<4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31>(b[2 * k], b[2 * k + 1]);
  }
  for (int k = 0; k < 2; ++k) {
    d[k] = Pick<0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29>(c[2 * k], c[2 * k + 1]) +
           Pick<2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31>(c[2 * k], c[2 * k + 1]);
  }
  return Pick<0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30>(d[0], d[1]) +
         Pick<1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31>(d[0], d[1]);
}

// The sum of v's lanes, in the same tree as Reduce16.
__attribute__((always_inline)) inline float SumLanes(Vec16 v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return v[0];
}

// Walks a sequence's positions in order through its block table, giving each
// one's row in the blocks (`base` already points at a kv head's columns of
// block 0).
class PositionCursor {
 public:
  PositionCursor(const float* base, const int32_t* block_table, int64_t block_stride,
                 int64_t block_tokens, int64_t row_stride)
      : base_(base),
        block_table_(block_table),
        block_stride_(block_stride),
        block_tokens_(block_tokens),
        row_stride_(row_stride),
        row_(base + block_table[0] * block_stride) {}

  const float* Next() {
    if (in_block_ == block_tokens_) {
      in_block_ = 0;
      row_ = base_ + block_table_[++block_] * block_stride_;
    }
    return row_ + in_block_++ * row_stride_;
  }

 private:
  const float* base_;
  const int32_t* block_table_;
  int64_t block_stride_;
  int64_t block_tokens_;
  int64_t row_stride_;
  int64_t block_ = 0;
  int64_t in_block_ = 0;
  const float* row_;
};

// Up to kTileRows query rows that read one kv head of one sequence, in
// nondecreasing order of context.
struct Tile {
  const float* keys;    // the kv head's columns of block 0
  const float* values;  // the same for values
  const int32_t* block_table;
  int64_t block_stride;
  int64_t block_tokens;
  int64_t kv_stride;  // floats from one position to the next
  int64_t head_dim;
  float scale;
  int num_rows;
  const float* q[kTileRows];
  float* out[kTileRows];
  int64_t context[kTileRows];  // row r attends to positions [0, context[r])
};

// Row r's scores for positions [0, context[r]) into scores + r * score_stride.
// kHeadDim > 0 fixes head_dim at compile time.
template <int kHeadDim>
__attribute__((always_inline)) inline void Scores(const Tile& tile, float* scores,
                                                  int64_t score_stride) {
  const int64_t d = kHeadDim > 0 ? kHeadDim : tile.head_dim;
  const int64_t chunks = (d + kLanes - 1) / kLanes;
  const int last = tile.num_rows - 1;
  PositionCursor keys(tile.keys, tile.block_table, tile.block_stride, tile.block_tokens,
                      tile.kv_stride);
  for (int64_t p0 = 0; p0 < tile.context[last]; p0 += kQkPositions) {
    // Positions past the tile's context repeat the first one; their scores
    // are not kept.
    const float* k[kQkPositions];
    for (int j = 0; j < kQkPositions; ++j) {
      k[j] = p0 + j < tile.context[last] ? keys.Next() : k[0];
    }
    for (int r0 = 0; r0 < tile.num_rows; r0 += kQkRows) {
      if (p0 >= tile.context[std::min(r0 + kQkRows - 1, last)]) continue;  // past these rows
      // Rows past the tile repeat its last one; their scores are not kept.
      const float* q[kQkRows];
      for (int i = 0; i < kQkRows; ++i) q[i] = tile.q[std::min(r0 + i, last)];
      Vec16 acc[kQkRows * kQkPositions] = {};
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t n = std::min<int64_t>(kLanes, d - c * kLanes);
        Vec16 qv[kQkRows], kv[kQkPositions];
        for (int i = 0; i < kQkRows; ++i) qv[i] = LoadN(q[i] + c * kLanes, n);
        for (int j = 0; j < kQkPositions; ++j) kv[j] = LoadN(k[j] + c * kLanes, n);
        for (int i = 0; i < kQkRows; ++i) {
          for (int j = 0; j < kQkPositions; ++j) acc[i * kQkPositions + j] += qv[i] * kv[j];
        }
      }
      const Vec16 dots = Reduce16(acc) * tile.scale;
      for (int i = 0; i < kQkRows && r0 + i < tile.num_rows; ++i) {
        for (int j = 0; j < kQkPositions && p0 + j < tile.context[r0 + i]; ++j) {
          scores[(r0 + i) * score_stride + p0 + j] = dots[i * kQkPositions + j];
        }
      }
    }
  }
}

// Turns one row's scores into probabilities: e^(s - max) over their sum.
__attribute__((always_inline)) inline void Softmax(float* s, int64_t context) {
  // The maximum 16 lanes at a time (GCC leaves an omp simd max reduction
  // scalar: it was a sixth of a Q4_0 prefill's attention samples); the order
  // does not change a maximum.
  Vec16 lane_max = {};
  lane_max -= INFINITY;
  int64_t p = 0;
  for (; p + kLanes <= context; p += kLanes) {
    const Vec16 v = LoadN(s + p, kLanes);
    lane_max = lane_max > v ? lane_max : v;
  }
  float max_score = -INFINITY;
  for (int i = 0; i < kLanes; ++i) max_score = std::max(max_score, lane_max[i]);
  for (; p < context; ++p) max_score = std::max(max_score, s[p]);
#pragma omp simd
  for (int64_t i = 0; i < context; ++i) s[i] = ExpNonPositive(s[i] - max_score);
  Vec16 sum = {};
  for (p = 0; p + kLanes <= context; p += kLanes) sum += LoadN(s + p, kLanes);
  sum += LoadN(s + p, context - p);
  const float inv = 1.0f / SumLanes(sum);
#pragma omp simd
  for (int64_t i = 0; i < context; ++i) s[i] *= inv;
}

// out[r] = sum over positions p < context[r] of probs[r][p] * V[p], for the
// tile's rows kPvRows at a time and head_dim kPvChunks * 16 lanes at a time.
template <int kHeadDim>
__attribute__((always_inline)) inline void WeightedValues(const Tile& tile, const float* probs,
                                                          int64_t prob_stride) {
  const int64_t d = kHeadDim > 0 ? kHeadDim : tile.head_dim;
  const int64_t chunks = (d + kLanes - 1) / kLanes;
  const int last = tile.num_rows - 1;
  for (int r0 = 0; r0 < tile.num_rows; r0 += kPvRows) {
    const int rows = std::min(kPvRows, tile.num_rows - r0);
    // Rows past the tile repeat its last one; their sums are not kept.
    const float* w[kPvRows];
    for (int i = 0; i < kPvRows; ++i) w[i] = probs + std::min(r0 + i, last) * prob_stride;
    const int64_t shared = tile.context[r0];  // every row of the pass reads these
    const int64_t longest = tile.context[r0 + rows - 1];
    for (int64_t c0 = 0; c0 < chunks; c0 += kPvChunks) {
      const int64_t num_chunks = std::min<int64_t>(kPvChunks, chunks - c0);
      Vec16 acc[kPvRows][kPvChunks] = {};
      PositionCursor values(tile.values + c0 * kLanes, tile.block_table, tile.block_stride,
                            tile.block_tokens, tile.kv_stride);
      // The pass's chunks of the next position's value row.
      auto load_values = [&](Vec16 * v) __attribute__((always_inline)) {
        const float* vp = values.Next();
        for (int64_t c = 0; c < num_chunks; ++c) {
          v[c] = LoadN(vp + c * kLanes, std::min<int64_t>(kLanes, d - (c0 + c) * kLanes));
        }
      };
      int64_t p = 0;
      for (; p < shared; ++p) {
        Vec16 v[kPvChunks];
        load_values(v);
        for (int i = 0; i < kPvRows; ++i) {
          for (int64_t c = 0; c < num_chunks; ++c) acc[i][c] += w[i][p] * v[c];
        }
      }
      for (; p < longest; ++p) {
        Vec16 v[kPvChunks];
        load_values(v);
        for (int i = 0; i < rows; ++i) {
          if (p >= tile.context[r0 + i]) continue;
          for (int64_t c = 0; c < num_chunks; ++c) acc[i][c] += w[i][p] * v[c];
        }
      }
      for (int i = 0; i < rows; ++i) {
        for (int64_t c = 0; c < num_chunks; ++c) {
          StoreN(tile.out[r0 + i] + (c0 + c) * kLanes, acc[i][c],
                 std::min<int64_t>(kLanes, d - (c0 + c) * kLanes));
        }
      }
    }
  }
}

template <int kHeadDim>
__attribute__((always_inline)) inline void AttendTile(const Tile& tile, float* scores,
                                                      int64_t score_stride) {
  Scores<kHeadDim>(tile, scores, score_stride);
  for (int r = 0; r < tile.num_rows; ++r) Softmax(scores + r * score_stride, tile.context[r]);
  WeightedValues<kHeadDim>(tile, scores, score_stride);
}

// The entry points, each built for AVX-512, AVX2 and baseline x86-64 (the
// loader picks the best at startup; the kernel above is inlined into each).
#define HERD_ATTEND_TILE(name, head_dim)                                  \
  __attribute__((target_clones("avx512f", "avx2", "default"))) void name( \
      const Tile& tile, float* scores, int64_t score_stride) {            \
    AttendTile<head_dim>(tile, scores, score_stride);                     \
  }
HERD_ATTEND_TILE(AttendTile64, 64)
HERD_ATTEND_TILE(AttendTile128, 128)
HERD_ATTEND_TILE(AttendTileAnyDim, 0)
#undef HERD_ATTEND_TILE

using AttendTileFn = decltype(&AttendTileAnyDim);

AttendTileFn AttendTileFor(int64_t head_dim) {
  switch (head_dim) {
    case 64:
      return &AttendTile64;
    case 128:
      return &AttendTile128;
    default:
      return &AttendTileAnyDim;
  }
}

// The most rows a tile may have when contexts reach `max_context`: a
// thread's scores (one row of max_context per tile row) stay within
// kScoreFloatsPerThread, so long contexts take smaller tiles instead of a
// workspace that grows with threads x 16 x context.
constexpr int64_t kScoreFloatsPerThread = int64_t{1} << 18;  // 1 MiB
int MaxTileRows(int64_t max_context) {
  return static_cast<int>(
      std::clamp<int64_t>(kScoreFloatsPerThread / std::max<int64_t>(max_context, 1), 1, kTileRows));
}

// Rows per tile: full tiles when there is plenty of work, smaller ones when a
// batch has too few rows to keep every thread busy (a single decode), and at
// most as many as a thread's `scores_per_thread` floats hold rows of scores.
int TileRows(int64_t total_rows, int num_threads, int64_t max_context, int64_t scores_per_thread) {
  const int64_t per_thread = (total_rows + num_threads - 1) / num_threads;
  const int64_t fit =
      std::min<int64_t>(kTileRows, scores_per_thread / std::max<int64_t>(max_context, 1));
  return static_cast<int>(std::clamp<int64_t>(per_thread, 1, std::max<int64_t>(fit, 1)));
}

}  // namespace

size_t AttentionWorkspaceBytes(const AttentionShape& shape, int64_t max_context, int num_threads) {
  return static_cast<size_t>(num_threads) * MaxTileRows(max_context) * max_context * sizeof(float);
}

void Attention(const AttentionShape& shape, const KvBlocks& kv, const AttentionSequence* sequences,
               int64_t num_sequences, void* workspace, size_t workspace_bytes, ThreadPool& pool) {
  const int64_t d = shape.head_dim;
  const int64_t group = shape.num_heads / shape.num_kv_heads;
  const int64_t kv_stride = shape.num_kv_heads * d;
  const int64_t q_stride = shape.num_heads * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  int64_t total_rows = 0;
  int64_t max_context = 0;
  for (int64_t s = 0; s < num_sequences; ++s) {
    total_rows += sequences[s].num_tokens * shape.num_heads;
    max_context = std::max(max_context, sequences[s].start_pos + sequences[s].num_tokens);
  }
  // The caller sized the workspace for at least this batch's contexts.
  const int64_t scores_per_thread =
      static_cast<int64_t>(workspace_bytes / sizeof(float)) / pool.num_threads();
  const int tile_rows = TileRows(total_rows, pool.num_threads(), max_context, scores_per_thread);
  // A sequence's rows for one kv head, token by token and within a token head
  // by head, cut into tiles of tile_rows.
  auto tiles_per_kv_head = [&](const AttentionSequence& seq) {
    return (seq.num_tokens * group + tile_rows - 1) / tile_rows;
  };
  int64_t num_work = 0;
  for (int64_t s = 0; s < num_sequences; ++s) {
    num_work += tiles_per_kv_head(sequences[s]) * shape.num_kv_heads;
  }
  float* scratch_base = static_cast<float*>(workspace);
  const AttendTileFn attend = AttendTileFor(d);

  // Work item w is (sequence, tile, kv head), kv heads fastest, sequences in
  // order and tiles last to first, so the tiles with the longest contexts
  // are taken first and the short ones even out the threads at the end.
  pool.ParallelFor(num_work, 1, [&](int64_t begin, int64_t end, int thread) {
    float* scores = scratch_base + thread * scores_per_thread;
    int64_t s = 0;
    int64_t first_work = 0;  // work index of sequence s's first item
    for (int64_t work = begin; work < end; ++work) {
      while (work - first_work >= tiles_per_kv_head(sequences[s]) * shape.num_kv_heads) {
        first_work += tiles_per_kv_head(sequences[s]) * shape.num_kv_heads;
        ++s;
      }
      const AttentionSequence& seq = sequences[s];
      const int64_t item = work - first_work;
      const int64_t tile_idx = tiles_per_kv_head(seq) - 1 - item / shape.num_kv_heads;
      const int64_t kv_h = item % shape.num_kv_heads;
      Tile tile;
      tile.keys = kv.keys + kv_h * d;
      tile.values = kv.values + kv_h * d;
      tile.block_table = seq.block_table;
      tile.block_stride = kv.block_stride;
      tile.block_tokens = kv.block_tokens;
      tile.kv_stride = kv_stride;
      tile.head_dim = d;
      tile.scale = scale;
      const int64_t first_row = tile_idx * tile_rows;
      tile.num_rows =
          static_cast<int>(std::min<int64_t>(tile_rows, seq.num_tokens * group - first_row));
      for (int r = 0; r < tile.num_rows; ++r) {
        const int64_t t = (first_row + r) / group;
        const int64_t h = kv_h * group + (first_row + r) % group;
        tile.q[r] = seq.q + t * q_stride + h * d;
        tile.out[r] = seq.out + t * q_stride + h * d;
        tile.context[r] = seq.start_pos + t + 1;
      }
      attend(tile, scores, max_context);
    }
  });
}

}  // namespace herd::cpu
