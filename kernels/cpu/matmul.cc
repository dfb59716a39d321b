#include "kernels/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"
#include "core/huge_pages.h"
#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu_features.h"

namespace herd::cpu {
namespace {

// Activation blocks for Q4_1 weights, byte-compatible with ggml's block_q8_1.
// (Q8_0/Q4_0 weights take activations as plain Q8_0 blocks.)
struct ActQ8_1 {
  uint16_t d;  // f16 scale
  uint16_t s;  // f16 d * sum(qs)
  int8_t qs[32];
};

const float* F16Table() {
  static const float* table = [] {
    auto* t = new float[65536];
    for (uint32_t i = 0; i < 65536; ++i) t[i] = F16ToF32(static_cast<uint16_t>(i));
    return t;
  }();
  return table;
}

// Quantizes one 32-value block of activations to int8 the way llama.cpp's
// x86 kernels do at run time (quantize_row_q8_0/q8_1 with AVX): scale
// 127 / max|x|, round half to even. (Its reference quantizer, used for
// weights in files, divides by d and rounds half away from zero; the two
// differ on ties and in the last bit of the scale.) Returns d = max|x| / 127
// and the sum of the quantized values.
float QuantizeActivationBlock(const float* x, int8_t* q, int32_t* sum) {
  float amax = 0.0f;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
  int32_t s = 0;
  for (int i = 0; i < 32; ++i) {
    q[i] = static_cast<int8_t>(std::nearbyintf(x[i] * id));
    s += q[i];
  }
  *sum = s;
  return amax / 127.0f;
}

void QuantizeRowQ8_0(const float* x, int64_t in, BlockQ8_0* out) {
  for (int64_t b = 0; b < in / 32; ++b) {
    int32_t sum;
    out[b].d = F32ToF16(QuantizeActivationBlock(x + b * 32, out[b].qs, &sum));
  }
}

// Like Q8_0 plus s = d * sum(q) (ggml's block_q8_1).
void QuantizeRowQ8_1(const float* x, int64_t in, ActQ8_1* out) {
  for (int64_t b = 0; b < in / 32; ++b) {
    int32_t sum;
    const float d = QuantizeActivationBlock(x + b * 32, out[b].qs, &sum);
    out[b].d = F32ToF16(d);
    out[b].s = F32ToF16(sum * d);
  }
}

float DotF32(const float* w, const float* x, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += w[i] * x[i];
  return sum;
}

float DotF16(const uint16_t* w, const float* x, int64_t n) {
  const float* table = F16Table();
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += table[w[i]] * x[i];
  return sum;
}

float DotBF16(const uint16_t* w, const float* x, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += BF16ToF32(w[i]) * x[i];
  return sum;
}

float DotQ8_0(const BlockQ8_0* w, const BlockQ8_0* x, int64_t num_blocks) {
  const float* table = F16Table();
  float sum = 0.0f;
  for (int64_t b = 0; b < num_blocks; ++b) {
    int32_t sumi = 0;
    for (int i = 0; i < 32; ++i) sumi += w[b].qs[i] * x[b].qs[i];
    sum += sumi * (table[w[b].d] * table[x[b].d]);
  }
  return sum;
}

float DotQ4_0(const BlockQ4_0* w, const BlockQ8_0* x, int64_t num_blocks) {
  const float* table = F16Table();
  float sum = 0.0f;
  for (int64_t b = 0; b < num_blocks; ++b) {
    int32_t sumi = 0;
    for (int j = 0; j < 16; ++j) {
      sumi += ((w[b].qs[j] & 0x0F) - 8) * x[b].qs[j];
      sumi += ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
    }
    sum += sumi * (table[w[b].d] * table[x[b].d]);
  }
  return sum;
}

float DotQ4_1(const BlockQ4_1* w, const ActQ8_1* x, int64_t num_blocks) {
  const float* table = F16Table();
  float sum = 0.0f;
  for (int64_t b = 0; b < num_blocks; ++b) {
    int32_t sumi = 0;
    for (int j = 0; j < 16; ++j) {
      sumi += (w[b].qs[j] & 0x0F) * x[b].qs[j];
      sumi += (w[b].qs[j] >> 4) * x[b].qs[j + 16];
    }
    sum += sumi * (table[w[b].d] * table[x[b].d]) + table[w[b].m] * table[x[b].s];
  }
  return sum;
}

// Row `row` of a Herd-quantized matrix against token `t` of the quantized
// activations: the arithmetic every kernel does (see kernels/matmul.h).
float DotQuantRow(const QuantFormat& f, const QuantizedMatrixData& w, int64_t cols, int64_t row,
                  const QuantizedActivations& a, int64_t t) {
  const int64_t nb = cols / 32;
  const int64_t blocks_per_group = f.GroupLength(cols) / 32;
  float acc = 0.0f;
  for (int64_t b0 = 0; b0 < nb; b0 += blocks_per_group) {
    float dots = 0.0f;
    float sums = 0.0f;
    for (int64_t b = b0; b < b0 + blocks_per_group; ++b) {
      const int8_t* at = a.qs + t * cols + b * 32;
      int32_t dot = -f.ZeroCode() * a.sum[t * nb + b];
      for (int64_t i = 0; i < 32; ++i) dot += ReadCode(f, w.codes, cols, row, b * 32 + i) * at[i];
      const float d = a.d[t * nb + b];
      dots += static_cast<float>(dot) * d;
      sums += d * static_cast<float>(a.sum[t * nb + b]);
    }
    const QuantGroupParams p = ReadGroupParams(f, w, cols, row, b0 * 32);
    acc += p.scale * dots;
    if (!f.symmetric) acc += (p.min + p.scale * static_cast<float>(f.ZeroCode())) * sums;
  }
  return acc;
}

absl::Status OutOfMemory(const TensorView& weight, int64_t bytes) {
  return absl::ResourceExhaustedError(
      absl::StrCat("PackMatrix: no memory for the ", bytes, " bytes of ", weight.DebugString()));
}

absl::Status CheckShape(const TensorView& weight) {
  if (weight.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("Matmul: weight must be 2-D, got ", weight.DebugString()));
  }
  if (weight.dtype() == DType::kI32) {
    return absl::InvalidArgumentError("Matmul: I32 is not a weight dtype");
  }
  if (weight.dtype() == DType::kQuant) {
    return weight.quant_format().ValidateShape(weight.dim(0), weight.dim(1));
  }
  if (weight.dim(1) % BlockSize(weight.dtype()) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Matmul: row length ", weight.dim(1),
                                                   " is not a multiple of the block size of ",
                                                   DTypeName(weight.dtype())));
  }
  return absl::OkStatus();
}

template <typename Block>
void RepackGroups(const TensorView& w, int64_t payload_steps, uint8_t* out,
                  void (*copy_step)(const Block&, int step, uint8_t* dst4)) {
  const int64_t rows = w.dim(0);
  const int64_t nb = w.dim(1) / 32;
  const int64_t block_bytes = payload_steps * 64 + 32;
  const int64_t groups = (rows + kPackRows - 1) / kPackRows;
  std::memset(out, 0, groups * nb * block_bytes);
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t r = 0; r < kPackRows && g * kPackRows + r < rows; ++r) {
      const auto* src = reinterpret_cast<const Block*>(w.row(g * kPackRows + r));
      for (int64_t b = 0; b < nb; ++b) {
        uint8_t* dst = out + (g * nb + b) * block_bytes;
        for (int s = 0; s < payload_steps; ++s) copy_step(src[b], s, dst + s * 64 + r * 4);
        std::memcpy(dst + payload_steps * 64 + r * 2, &src[b].d, 2);
      }
    }
  }
}

// HalfRows16: value (r, k) of group g at [(g * cols + k) * 16 + r]; rows
// past the matrix are zero.
void RepackHalfRows(const TensorView& w, uint16_t* out) {
  const int64_t rows = w.dim(0);
  const int64_t cols = w.dim(1);
  const int64_t groups = (rows + kPackRows - 1) / kPackRows;
  for (int64_t g = 0; g < groups; ++g) {
    const uint16_t* src[kPackRows];
    for (int64_t r = 0; r < kPackRows; ++r) {
      const int64_t o = g * kPackRows + r;
      src[r] = o < rows ? reinterpret_cast<const uint16_t*>(w.row(o)) : nullptr;
    }
    uint16_t* dst = out + g * kPackRows * cols;
    // Written in order, one column of 16 rows after another.
    for (int64_t k = 0; k < cols; ++k) {
      for (int64_t r = 0; r < kPackRows; ++r) dst[k * kPackRows + r] = src[r] ? src[r][k] : 0;
    }
  }
}

}  // namespace

bool TakesQuantizedActivations(const PackedMatrix& w) {
  return w.layout == PackedLayout::kQ8_0x16 || w.layout == PackedLayout::kQ4_0x16 ||
         w.layout == PackedLayout::kQuantRows16;
}

int64_t PackedMatrix::num_bytes() const {
  if (layout == PackedLayout::kRowMajor || layout == PackedLayout::kQuantRows16) {
    return source.num_bytes();
  }
  if (layout == PackedLayout::kHalfRows16) {
    return num_groups() * kPackRows * cols * static_cast<int64_t>(sizeof(uint16_t));
  }
  const int64_t nb = cols / 32;
  const int64_t block_bytes = layout == PackedLayout::kQ8_0x16 ? 8 * 64 + 32 : 4 * 64 + 32;
  return num_groups() * nb * block_bytes;
}

void PackedMatrix::ForEachInPlaceRange(const std::function<void(const void*, size_t)>& fn) const {
  if (storage != nullptr || source.empty()) return;
  if (layout != PackedLayout::kQuantRows16) {
    fn(source.data(), source.num_bytes());
    return;
  }
  const QuantizedMatrixSizes sizes = QuantizedSizes(format, rows, cols);
  fn(data, sizes.codes);
  fn(scales, sizes.scales);
  if (mins != nullptr) fn(mins, sizes.mins);
}

absl::StatusOr<PackedMatrix> PackMatrix(const TensorView& weight) {
  HERD_RETURN_IF_ERROR(CheckShape(weight));
  PackedMatrix p;
  p.source = weight;
  p.rows = weight.dim(0);
  p.cols = weight.dim(1);
  p.data = static_cast<const uint8_t*>(weight.data());
  const DType t = weight.dtype();
  if (t == DType::kQuant) {
    p.layout = PackedLayout::kQuantRows16;
    p.format = weight.quant_format();
    p.scales = weight.quantized().scales;
    p.mins = weight.quantized().mins;
    return p;
  }
  if (t == DType::kF16 || t == DType::kBF16) {
    p.layout = PackedLayout::kHalfRows16;
    std::shared_ptr<uint8_t[]> storage = AllocateHugePageBacked(p.num_bytes());
    if (storage == nullptr) return OutOfMemory(weight, p.num_bytes());
    RepackHalfRows(weight, reinterpret_cast<uint16_t*>(storage.get()));
    p.data = storage.get();
    p.storage = std::move(storage);
    return p;
  }
  if (t != DType::kQ8_0 && t != DType::kQ4_0) return p;
  p.layout = t == DType::kQ8_0 ? PackedLayout::kQ8_0x16 : PackedLayout::kQ4_0x16;
  std::shared_ptr<uint8_t[]> storage = AllocateHugePageBacked(p.num_bytes());
  if (storage == nullptr) return OutOfMemory(weight, p.num_bytes());
  if (t == DType::kQ8_0) {
    RepackGroups<BlockQ8_0>(weight, 8, storage.get(), [](const BlockQ8_0& b, int s, uint8_t* dst) {
      // Offset binary: byte = value + 128; the value is unchanged.
      for (int i = 0; i < 4; ++i) dst[i] = static_cast<uint8_t>(b.qs[4 * s + i]) ^ 0x80;
    });
  } else {
    RepackGroups<BlockQ4_0>(weight, 4, storage.get(), [](const BlockQ4_0& b, int s, uint8_t* dst) {
      std::memcpy(dst, b.qs + 4 * s, 4);
    });
  }
  p.data = storage.get();
  p.storage = std::move(storage);
  return p;
}

size_t QuantizedActivationsBytes(int64_t num_tokens, int64_t cols) {
  const int64_t nb = cols / 32;
  if (num_tokens <= 0) return 0;
  return num_tokens * (cols + nb * (sizeof(float) + sizeof(int32_t))) + 64;
}

QuantizedActivations CarveQuantizedActivations(void* workspace, int64_t num_tokens, int64_t cols) {
  const int64_t nb = cols / 32;
  auto* base = static_cast<uint8_t*>(workspace);
  QuantizedActivations a;
  a.d = reinterpret_cast<float*>(base);
  a.sum = reinterpret_cast<int32_t*>(base + num_tokens * nb * sizeof(float));
  a.qs = reinterpret_cast<int8_t*>(base + num_tokens * nb * (sizeof(float) + sizeof(int32_t)));
  return a;
}

void QuantizeActivations(const float* x, int64_t cols, int64_t token_begin, int64_t token_end,
                         const QuantizedActivations& a) {
  if (ActiveIsa() >= Isa::kAvx512) {
    QuantizeActivationsAvx512(x, cols, token_begin, token_end, a);
    return;
  }
  const int64_t nb = cols / 32;
  for (int64_t t = token_begin; t < token_end; ++t) {
    for (int64_t b = 0; b < nb; ++b) {
      const float d = QuantizeActivationBlock(x + t * cols + b * 32, a.qs + t * cols + b * 32,
                                              &a.sum[t * nb + b]);
      a.d[t * nb + b] = F16ToF32(F32ToF16(d));
    }
  }
}

// Scalar kernels on the packed layouts; row-major dtypes go through the
// reference dots. Sums run over blocks in order, like the reference, so the
// two agree exactly.
void MatmulGroupsScalar(const KernelArgs& args, int64_t group_begin, int64_t group_end) {
  const PackedMatrix& w = *args.w;
  const int64_t cols = w.cols;
  const int64_t nb = cols / 32;
  const float* table = F16Table();
  for (int64_t g = group_begin; g < group_end; ++g) {
    const int64_t row_end = std::min(w.rows, (g + 1) * kPackRows);
    for (int64_t o = g * kPackRows; o < row_end; ++o) {
      const int64_t r = o - g * kPackRows;
      for (int64_t t = 0; t < args.num_tokens; ++t) {
        float v = 0.0f;
        if (w.layout == PackedLayout::kQuantRows16) {
          v = DotQuantRow(w.format, QuantizedMatrixData{w.data, w.scales, w.mins}, cols, o, *args.a,
                          t);
        } else if (w.layout == PackedLayout::kRowMajor) {
          // F32 (Q4_1 never reaches here: Matmul routes it to the reference).
          v = DotF32(reinterpret_cast<const float*>(w.source.row(o)), args.x + t * cols, cols);
        } else if (w.layout == PackedLayout::kHalfRows16) {
          // In column order, as DotF16 / DotBF16 sum a row.
          const auto* wg = reinterpret_cast<const uint16_t*>(w.data) + g * kPackRows * cols + r;
          const float* xt = args.x + t * cols;
          const bool f16 = w.source.dtype() == DType::kF16;
          for (int64_t k = 0; k < cols; ++k) {
            const uint16_t h = wg[k * kPackRows];
            v += (f16 ? table[h] : BF16ToF32(h)) * xt[k];
          }
        } else {
          const bool q8 = w.layout == PackedLayout::kQ8_0x16;
          const int64_t steps = q8 ? 8 : 4;
          const int64_t block_bytes = steps * 64 + 32;
          for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* blk = w.data + (g * nb + b) * block_bytes;
            const int8_t* at = args.a->qs + t * cols + b * 32;
            int32_t sumi = 0;
            for (int64_t s = 0; s < steps; ++s) {
              const uint8_t* wq = blk + s * 64 + r * 4;
              for (int i = 0; i < 4; ++i) {
                if (q8) {
                  sumi += static_cast<int8_t>(wq[i] ^ 0x80) * at[4 * s + i];
                } else {
                  sumi += ((wq[i] & 0x0F) - 8) * at[4 * s + i];
                  sumi += ((wq[i] >> 4) - 8) * at[16 + 4 * s + i];
                }
              }
            }
            uint16_t scale;
            std::memcpy(&scale, blk + steps * 64 + r * 2, 2);
            v += sumi * (table[scale] * args.a->d[t * nb + b]);
          }
        }
        args.y[t * w.rows + o] = v + (args.bias != nullptr ? args.bias[o] : 0.0f);
      }
    }
  }
}

namespace {

bool UsesReference(const PackedMatrix& w) { return w.source.dtype() == DType::kQ4_1; }

// Index of the first earlier task that reads the same activations (same x,
// tokens and columns) prepared the same way, `prepared` holding for both, so
// that this one can share their copy; i when there is none.
size_t SharedInput(const MatmulTask* tasks, size_t i, bool (*prepared)(const MatmulTask&)) {
  for (size_t j = 0; j < i; ++j) {
    if (tasks[j].x == tasks[i].x && tasks[j].num_tokens == tasks[i].num_tokens &&
        tasks[j].weight->cols == tasks[i].weight->cols && prepared(tasks[j]) &&
        prepared(tasks[i])) {
      return j;
    }
  }
  return i;
}

bool Quantized(const MatmulTask& t) { return TakesQuantizedActivations(*t.weight); }

// BF16 weights multiply x rounded to BF16 (kernels/matmul.h).
bool RoundsInput(const MatmulTask& t) {
  return t.weight->layout == PackedLayout::kHalfRows16 && t.weight->source.dtype() == DType::kBF16;
}

size_t RoundedInputBytes(const MatmulTask& t) {
  return t.num_tokens * t.weight->cols * sizeof(float) + 64;
}

// Room for the token tiles of task t, as floor(num_tokens / 12) tiles: at
// least TokenTiles(num_tokens) (ceil(n / 24) <= floor(n / 12) for n >= 12),
// and additive, so that a bound taken for all rows of an MoE layer at once
// (GroupedExpertFfn) holds however they are split into experts. 64 bytes of
// slack keep every task's tiles 64-byte aligned.
size_t TokenTileBytes(const MatmulTask& t) {
  if (t.weight->layout != PackedLayout::kHalfRows16) return 0;
  const int64_t tiles = t.num_tokens / kHalfTileMinTokens;
  return tiles == 0 ? 0 : tiles * kHalfTileTokens * t.weight->cols * sizeof(float) + 64;
}

bool Tiled(const MatmulTask& t) { return TokenTileBytes(t) > 0; }

// Tiled tasks whose tiles come from x as it is (F16), and those whose tiles
// come from x rounded to BF16 (BF16: BF16 pairs in x_pair_tiles, no more
// bytes than float tiles, where UseBf16DotProduct(), else floats): two
// tasks share tiles only when they are of the same kind.
bool RawTiled(const MatmulTask& t) { return Tiled(t) && !RoundsInput(t); }
bool RoundedTiled(const MatmulTask& t) { return Tiled(t) && RoundsInput(t); }
// The kind of tiles t shares (SharedInput's `prepared`).
auto TileKind(const MatmulTask& t) { return RoundsInput(t) ? RoundedTiled : RawTiled; }

uint8_t* AlignUp64(uint8_t* p) {
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t{63});
}

// x F32 [num_tokens, cols] -> tiles [tile][cols][kHalfTileTokens], tokens
// past num_tokens zero.
void MakeTokenTiles(const float* x, int64_t num_tokens, int64_t cols, int64_t tile_begin,
                    int64_t tile_end, float* tiles) {
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    float* out = tiles + tile * cols * kHalfTileTokens;
    const float* in = x + tile * kHalfTileTokens * cols;
    const int64_t tokens = std::min(kHalfTileTokens, num_tokens - tile * kHalfTileTokens);
    // Column by column: the writes are sequential, and the tile's 24 input
    // rows stay in L1 for the 16 columns of their lines.
    for (int64_t k = 0; k < cols; ++k) {
      for (int64_t j = 0; j < kHalfTileTokens; ++j) {
        out[k * kHalfTileTokens + j] = j < tokens ? in[j * cols + k] : 0.0f;
      }
    }
  }
}

// x F32 [num_tokens, cols], already rounded to BF16 -> tiles of BF16 pairs
// (KernelArgs::x_pair_tiles), tokens past num_tokens zero.
void MakePairTiles(const float* x, int64_t num_tokens, int64_t cols, int64_t tile_begin,
                   int64_t tile_end, uint32_t* tiles) {
  const int64_t pairs = (cols + 1) / 2;
  const auto bits = [](float v) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    return u >> 16;  // exact: v is a BF16 value
  };
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    uint32_t* out = tiles + tile * pairs * kHalfTileTokens;
    const float* in = x + tile * kHalfTileTokens * cols;
    const int64_t tokens = std::min(kHalfTileTokens, num_tokens - tile * kHalfTileTokens);
    for (int64_t kp = 0; kp < pairs; ++kp) {
      const int64_t k = 2 * kp;
      for (int64_t j = 0; j < kHalfTileTokens; ++j) {
        uint32_t pair = 0;
        if (j < tokens) {
          pair = bits(in[j * cols + k]);
          if (k + 1 < cols) pair |= bits(in[j * cols + k + 1]) << 16;
        }
        out[kp * kHalfTileTokens + j] = pair;
      }
    }
  }
}

}  // namespace

bool UseBf16DotProduct() {
  static const bool kHasBf16 = DetectCpuFeatures().avx512bf16;
  return kHasBf16 && ActiveIsa() >= Isa::kAvx512;
}

void RoundToBf16(const float* x, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = BF16ToF32(F32ToBF16(x[i]));
}

size_t MatmulWorkspaceBytes(const PackedMatrix& weight, int64_t num_tokens) {
  const MatmulTask task{&weight, nullptr, nullptr, num_tokens, nullptr};
  return MatmulBatchWorkspaceBytes(&task, 1);
}

absl::Status Matmul(const PackedMatrix& weight, const float* bias, const float* x,
                    int64_t num_tokens, float* y, void* workspace, size_t workspace_bytes,
                    ThreadPool& pool) {
  const MatmulTask task{&weight, bias, x, num_tokens, y};
  return MatmulBatch(&task, 1, workspace, workspace_bytes, pool);
}

size_t MatmulBatchWorkspaceBytes(const MatmulTask* tasks, size_t num_tasks) {
  size_t bytes = 0;
  for (size_t i = 0; i < num_tasks; ++i) {
    const PackedMatrix& w = *tasks[i].weight;
    if (UsesReference(w)) {
      bytes = std::max(
          bytes, MatmulReferenceWorkspaceBytes(w.source.dtype(), tasks[i].num_tokens, w.cols));
    }
  }
  size_t prepared = 0;  // quantized or rounded activations, and token tiles
  for (size_t i = 0; i < num_tasks; ++i) {
    const PackedMatrix& w = *tasks[i].weight;
    if (Quantized(tasks[i]) && SharedInput(tasks, i, Quantized) == i) {
      prepared += QuantizedActivationsBytes(tasks[i].num_tokens, w.cols);
    }
    if (RoundsInput(tasks[i]) && SharedInput(tasks, i, RoundsInput) == i) {
      prepared += RoundedInputBytes(tasks[i]);
    }
    if (SharedInput(tasks, i, TileKind(tasks[i])) == i) prepared += TokenTileBytes(tasks[i]);
  }
  return std::max(bytes, prepared);
}

absl::Status MatmulBatch(const MatmulTask* tasks, size_t num_tasks, void* workspace,
                         size_t workspace_bytes, ThreadPool& pool) {
  if (const size_t needed = MatmulBatchWorkspaceBytes(tasks, num_tasks); workspace_bytes < needed) {
    return absl::InvalidArgumentError(absl::StrCat("Matmul: workspace of ", workspace_bytes,
                                                   " bytes is too small, needs ", needed));
  }
  // Q4_1 goes through the reference, one task at a time.
  for (size_t i = 0; i < num_tasks; ++i) {
    const MatmulTask& t = tasks[i];
    if (UsesReference(*t.weight)) {
      HERD_RETURN_IF_ERROR(MatmulReference(t.weight->source, t.bias, t.x, t.num_tokens, t.y,
                                           workspace, workspace_bytes, pool));
    }
  }
  // Quantize each distinct input once.
  constexpr size_t kMaxTasks = 64;
  if (num_tasks > kMaxTasks) return absl::InvalidArgumentError("MatmulBatch: too many tasks");
  const Isa isa = ActiveIsa();
  QuantizedActivations acts[kMaxTasks];
  KernelArgs args[kMaxTasks];
  int64_t first_group[kMaxTasks + 1];
  auto* cursor = static_cast<uint8_t*>(workspace);
  int64_t total_groups = 0;
  for (size_t i = 0; i < num_tasks; ++i) {
    const MatmulTask& t = tasks[i];
    const PackedMatrix& w = *t.weight;
    first_group[i] = total_groups;
    if (UsesReference(w) || t.num_tokens <= 0) continue;
    if (Quantized(t)) {
      const size_t shared = SharedInput(tasks, i, Quantized);
      if (shared == i) {
        acts[i] = CarveQuantizedActivations(cursor, t.num_tokens, w.cols);
        cursor += QuantizedActivationsBytes(t.num_tokens, w.cols);
        pool.ParallelFor(t.num_tokens, 1, [&](int64_t begin, int64_t end, int) {
          QuantizeActivations(t.x, w.cols, begin, end, acts[i]);
        });
      } else {
        acts[i] = acts[shared];
      }
    }
    args[i] = KernelArgs{&w, &acts[i], t.x, t.num_tokens, t.bias, t.y};
    if (RoundsInput(t)) {
      const size_t shared = SharedInput(tasks, i, RoundsInput);
      if (shared == i) {
        auto* rounded = reinterpret_cast<float*>(AlignUp64(cursor));
        cursor += RoundedInputBytes(t);
        pool.ParallelFor(t.num_tokens, 1, [&](int64_t begin, int64_t end, int) {
          RoundToBf16(t.x + begin * w.cols, (end - begin) * w.cols, rounded + begin * w.cols);
        });
        args[i].x = rounded;
      } else {
        args[i].x = args[shared].x;
      }
    }
    // Only the AVX-512 kernels read the tiles (the AVX2 one takes 6 tokens,
    // few enough for the cache sets, straight from x).
    if (Tiled(t) && isa >= Isa::kAvx512) {
      const bool pairs = RoundsInput(t) && UseBf16DotProduct();
      const size_t shared = SharedInput(tasks, i, TileKind(t));
      if (shared != i) {
        args[i].x_tiles = args[shared].x_tiles;
        args[i].x_pair_tiles = args[shared].x_pair_tiles;
      } else if (pairs) {
        auto* tiles = reinterpret_cast<uint32_t*>(AlignUp64(cursor));
        cursor += TokenTileBytes(t);
        pool.ParallelFor(TokenTiles(t.num_tokens), 1, [&](int64_t begin, int64_t end, int) {
          MakePairTiles(args[i].x, t.num_tokens, w.cols, begin, end, tiles);
        });
        args[i].x_pair_tiles = tiles;
      } else {
        auto* tiles = reinterpret_cast<float*>(AlignUp64(cursor));
        cursor += TokenTileBytes(t);
        pool.ParallelFor(TokenTiles(t.num_tokens), 1, [&](int64_t begin, int64_t end, int) {
          MakeTokenTiles(args[i].x, t.num_tokens, w.cols, begin, end, tiles);
        });
        args[i].x_tiles = tiles;
      }
    }
    total_groups += w.num_groups();
  }
  first_group[num_tasks] = total_groups;
  pool.ParallelFor(total_groups, 1, [&](int64_t begin, int64_t end, int) {
    size_t i = 0;
    while (begin < end) {
      while (first_group[i + 1] <= begin) ++i;
      const int64_t stop = std::min(end, first_group[i + 1]);
      const KernelArgs& a = args[i];
      const int64_t g0 = begin - first_group[i];
      const int64_t g1 = stop - first_group[i];
      if (isa >= Isa::kAvx512 && SupportedByAvx512(*a.w)) {
        MatmulGroupsAvx512(a, g0, g1, /*gfni=*/isa == Isa::kAvx512Gfni);
      } else if (isa == Isa::kAvx2 && SupportedByAvx2(*a.w)) {
        MatmulGroupsAvx2(a, g0, g1);
      } else {
        MatmulGroupsScalar(a, g0, g1);
      }
      begin = stop;
    }
  });
  return absl::OkStatus();
}

size_t MatmulReferenceWorkspaceBytes(DType weight_type, int64_t num_tokens, int64_t in) {
  switch (weight_type) {
    case DType::kQ8_0:
    case DType::kQ4_0:
      return num_tokens * (in / 32) * sizeof(BlockQ8_0);
    case DType::kQ4_1:
      return num_tokens * (in / 32) * sizeof(ActQ8_1);
    case DType::kQuant:
      return QuantizedActivationsBytes(num_tokens, in);
    case DType::kBF16:
      return num_tokens * in * sizeof(float);
    default:
      return 0;
  }
}

absl::Status MatmulReference(const TensorView& weight, const float* bias, const float* x,
                             int64_t num_tokens, float* y, void* workspace, size_t workspace_bytes,
                             ThreadPool& pool) {
  HERD_RETURN_IF_ERROR(CheckShape(weight));
  const int64_t out = weight.dim(0);
  const int64_t in = weight.dim(1);
  const DType type = weight.dtype();
  if (workspace_bytes < MatmulReferenceWorkspaceBytes(type, num_tokens, in)) {
    return absl::InvalidArgumentError("Matmul: workspace too small");
  }
  if (num_tokens <= 0 || out == 0) return absl::OkStatus();

  if (type == DType::kQuant) {
    const QuantizedActivations a = CarveQuantizedActivations(workspace, num_tokens, in);
    pool.ParallelFor(num_tokens, 1, [&](int64_t begin, int64_t end, int) {
      QuantizeActivations(x, in, begin, end, a);
    });
    pool.ParallelFor(out, 8, [&](int64_t begin, int64_t end, int) {
      for (int64_t o = begin; o < end; ++o) {
        for (int64_t t = 0; t < num_tokens; ++t) {
          y[t * out + o] = DotQuantRow(weight.quant_format(), weight.quantized(), in, o, a, t) +
                           (bias != nullptr ? bias[o] : 0.0f);
        }
      }
    });
    return absl::OkStatus();
  }

  const int64_t num_blocks = in / BlockSize(type);
  const int64_t row_bytes = weight.row_bytes();
  const uint8_t* base = static_cast<const uint8_t*>(weight.data());

  if (type == DType::kQ8_0 || type == DType::kQ4_0) {
    auto* xq = static_cast<BlockQ8_0*>(workspace);
    pool.ParallelFor(num_tokens, 1, [&](int64_t begin, int64_t end, int) {
      for (int64_t t = begin; t < end; ++t) {
        QuantizeRowQ8_0(x + t * in, in, xq + t * num_blocks);
      }
    });
  } else if (type == DType::kQ4_1) {
    auto* xq = static_cast<ActQ8_1*>(workspace);
    pool.ParallelFor(num_tokens, 1, [&](int64_t begin, int64_t end, int) {
      for (int64_t t = begin; t < end; ++t) QuantizeRowQ8_1(x + t * in, in, xq + t * num_blocks);
    });
  } else if (type == DType::kBF16) {
    auto* rounded = static_cast<float*>(workspace);
    pool.ParallelFor(num_tokens, 1, [&](int64_t begin, int64_t end, int) {
      RoundToBf16(x + begin * in, (end - begin) * in, rounded + begin * in);
    });
    x = rounded;
  }

  pool.ParallelFor(out, 8, [&](int64_t begin, int64_t end, int) {
    for (int64_t o = begin; o < end; ++o) {
      const uint8_t* row = base + o * row_bytes;
      const float b = bias != nullptr ? bias[o] : 0.0f;
      for (int64_t t = 0; t < num_tokens; ++t) {
        float v = 0.0f;
        switch (type) {
          case DType::kF32:
            v = DotF32(reinterpret_cast<const float*>(row), x + t * in, in);
            break;
          case DType::kF16:
            v = DotF16(reinterpret_cast<const uint16_t*>(row), x + t * in, in);
            break;
          case DType::kBF16:
            v = DotBF16(reinterpret_cast<const uint16_t*>(row), x + t * in, in);
            break;
          case DType::kQ8_0:
            v = DotQ8_0(reinterpret_cast<const BlockQ8_0*>(row),
                        static_cast<const BlockQ8_0*>(workspace) + t * num_blocks, num_blocks);
            break;
          case DType::kQ4_0:
            v = DotQ4_0(reinterpret_cast<const BlockQ4_0*>(row),
                        static_cast<const BlockQ8_0*>(workspace) + t * num_blocks, num_blocks);
            break;
          case DType::kQ4_1:
            v = DotQ4_1(reinterpret_cast<const BlockQ4_1*>(row),
                        static_cast<const ActQ8_1*>(workspace) + t * num_blocks, num_blocks);
            break;
          case DType::kI32:
          case DType::kQuant:
            break;
        }
        y[t * out + o] = v + b;
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace herd::cpu
