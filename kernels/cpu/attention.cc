#include "kernels/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/fast_exp.h"
#include "kernels/cpu_features.h"

namespace herd::cpu {
namespace {

// The kernel (attention_tile.inc) works on tiles of up to kTileRows query
// rows that share a kv head: the heads of a GQA group, over one or more
// consecutive tokens. It is written so that every row's arithmetic is the
// same whatever tile it is in, which rows it shares the tile with and which
// blocks hold the sequence: a prompt's outputs are then bit-identical whether
// it is prefilled in one chunk, in several, or decoded token by token, and
// whoever shares the batch.
//
//   scores  Q K^T on 4 x 4 (row, position) tiles: per pair, 16 lanes of
//           head_dim accumulate in order, then one fixed tree adds the lanes
//           (Reduce16 sums 16 pairs at once with shuffles);
//   softmax per row over its own context;
//   values  P V over 4 rows at a time, so one load of a value row feeds four
//           rows' accumulators; per output lane the positions add in order.
//
// An F16 cache's keys and values are widened to F32 as they are loaded, so
// its outputs are exactly those of an F32 cache holding the same values.
constexpr int kTileRows = 16;
constexpr int kLanes = 16;
constexpr int kQkRows = 4;       // rows of a scores tile
constexpr int kQkPositions = 4;  // positions of a scores tile
constexpr int kPvRows = 4;       // rows sharing one pass over the values
constexpr int kPvChunks = 4;     // 16-lane chunks of head_dim per pass over the values

// Walks a sequence's positions in order through its block table, giving each
// one's row in the blocks (`base` already points at a kv head's columns of
// block 0). T is the cache's element: float, or uint16_t for F16.
template <typename T>
class PositionCursor {
 public:
  PositionCursor(const T* base, const int32_t* block_table, int64_t block_stride,
                 int64_t block_tokens, int64_t row_stride)
      : base_(base),
        block_table_(block_table),
        block_stride_(block_stride),
        block_tokens_(block_tokens),
        row_stride_(row_stride),
        row_(base + block_table[0] * block_stride) {}

  __attribute__((always_inline)) const T* Next() {
    if (in_block_ == block_tokens_) {
      in_block_ = 0;
      row_ = base_ + block_table_[++block_] * block_stride_;
    }
    return row_ + in_block_++ * row_stride_;
  }

 private:
  const T* base_;
  const int32_t* block_table_;
  int64_t block_stride_;
  int64_t block_tokens_;
  int64_t row_stride_;
  int64_t block_ = 0;
  int64_t in_block_ = 0;
  const T* row_;
};

// Up to kTileRows query rows that read one kv head of one sequence, in
// nondecreasing order of context.
struct Tile {
  const void* keys;    // the kv head's columns of block 0 (float or uint16_t)
  const void* values;  // the same for values
  const int32_t* block_table;
  int64_t block_stride;
  int64_t block_tokens;
  int64_t kv_stride;  // elements from one position to the next
  int64_t head_dim;
  float scale;
  int num_rows;
  const float* q[kTileRows];
  float* out[kTileRows];
  int64_t context[kTileRows];  // row r attends to positions [0, context[r])
};

// Row r's attention for a tile, with r's scores in scores + r * score_stride.
using AttendTileFn = void (*)(const Tile& tile, float* scores, int64_t score_stride);

// The kernel, built once per instruction set: the same source in three
// namespaces, each under its own target (no command-line ISA flags, so
// nothing leaks into code shared with older CPUs). Each namespace first
// defines Widen16, the one ISA-specific piece: 16 F16 values widened to F32.
// The kernel's helpers take and return 16-float vectors by value, but since
// they are always inlined, the baseline ISA's ABI for such calls that GCC
// warns about (-Wpsabi, reported at the end of the file) is never used.
#pragma GCC diagnostic ignored "-Wpsabi"
// GCC 12 reports false "may be used uninitialized" inside its own AVX-512
// headers (_mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// 16 floats as GCC's vector extension: one zmm, two ymm or four xmm
// registers, whichever the ISA of the code using it has.
using Vec16 = float __attribute__((vector_size(kLanes * sizeof(float))));

namespace avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f")
__attribute__((always_inline)) inline Vec16 Widen16(const uint16_t* p) {
  return static_cast<Vec16>(
      _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
}
#include "kernels/cpu/attention_tile.inc"
#pragma GCC pop_options
}  // namespace avx512

namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
__attribute__((always_inline)) inline Vec16 Widen16(const uint16_t* p) {
  const __m256 halves[2] = {
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
  Vec16 v;
  std::memcpy(&v, halves, sizeof(v));
  return v;
}
#include "kernels/cpu/attention_tile.inc"
#pragma GCC pop_options
}  // namespace avx2

namespace scalar {
__attribute__((always_inline)) inline Vec16 Widen16(const uint16_t* p) {
  Vec16 v;
  for (int i = 0; i < kLanes; ++i) v[i] = F16ToF32(p[i]);
  return v;
}
#include "kernels/cpu/attention_tile.inc"
}  // namespace scalar

// ActiveIsa()'s kernel for this head_dim and cache element.
AttendTileFn AttendTileFor(int64_t head_dim, DType kv_type) {
  const bool half = kv_type == DType::kF16;
  switch (ActiveIsa()) {
    case Isa::kAvx512:
    case Isa::kAvx512Gfni:
      return half ? avx512::AttendTileFor<uint16_t>(head_dim)
                  : avx512::AttendTileFor<float>(head_dim);
    case Isa::kAvx2:
      return half ? avx2::AttendTileFor<uint16_t>(head_dim) : avx2::AttendTileFor<float>(head_dim);
    case Isa::kScalar:
      break;
  }
  return half ? scalar::AttendTileFor<uint16_t>(head_dim) : scalar::AttendTileFor<float>(head_dim);
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
  const AttendTileFn attend = AttendTileFor(d, kv.type);
  const int64_t element_bytes = BlockBytes(kv.type);

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
      tile.keys = static_cast<const char*>(kv.keys) + kv_h * d * element_bytes;
      tile.values = static_cast<const char*>(kv.values) + kv_h * d * element_bytes;
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
