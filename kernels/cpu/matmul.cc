#include "kernels/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/dtype.h"

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

// ggml's quantize_row_q8_1: like Q8_0 plus s = d * sum(q).
void QuantizeRowQ8_1(const float* x, int64_t in, ActQ8_1* out) {
  for (int64_t b = 0; b < in / 32; ++b) {
    const float* xb = x + b * 32;
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[b].d = F32ToF16(d);
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
      out[b].qs[i] = static_cast<int8_t>(std::roundf(xb[i] * id));
      sum += out[b].qs[i];
    }
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

}  // namespace

size_t MatmulWorkspaceBytes(DType weight_type, int64_t num_tokens, int64_t in) {
  switch (weight_type) {
    case DType::kQ8_0:
    case DType::kQ4_0:
      return num_tokens * (in / 32) * sizeof(BlockQ8_0);
    case DType::kQ4_1:
      return num_tokens * (in / 32) * sizeof(ActQ8_1);
    default:
      return 0;
  }
}

absl::Status Matmul(const TensorView& weight, const float* bias, const float* x, int64_t num_tokens,
                    float* y, void* workspace, size_t workspace_bytes, ThreadPool& pool) {
  if (weight.rank() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("Matmul: weight must be 2-D, got ", weight.DebugString()));
  }
  const int64_t out = weight.dim(0);
  const int64_t in = weight.dim(1);
  const DType type = weight.dtype();
  if (in % BlockSize(type) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Matmul: row length ", in, " is not a multiple of the block size of ", DTypeName(type)));
  }
  if (workspace_bytes < MatmulWorkspaceBytes(type, num_tokens, in)) {
    return absl::InvalidArgumentError("Matmul: workspace too small");
  }
  if (num_tokens <= 0 || out == 0) return absl::OkStatus();

  const int64_t num_blocks = in / BlockSize(type);
  const int64_t row_bytes = weight.row_bytes();
  const uint8_t* base = static_cast<const uint8_t*>(weight.data());

  // Quantize activations once, split over tokens.
  if (type == DType::kQ8_0 || type == DType::kQ4_0) {
    auto* xq = static_cast<BlockQ8_0*>(workspace);
    pool.ParallelFor(num_tokens, 1, [&](int64_t begin, int64_t end, int) {
      for (int64_t t = begin; t < end; ++t)
        QuantizeRow(DType::kQ8_0, x + t * in, xq + t * num_blocks, in);
    });
  } else if (type == DType::kQ4_1) {
    auto* xq = static_cast<ActQ8_1*>(workspace);
    pool.ParallelFor(num_tokens, 1, [&](int64_t begin, int64_t end, int) {
      for (int64_t t = begin; t < end; ++t) QuantizeRowQ8_1(x + t * in, in, xq + t * num_blocks);
    });
  } else if (type == DType::kI32) {
    return absl::InvalidArgumentError("Matmul: I32 is not a weight dtype");
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
            break;
        }
        y[t * out + o] = v + b;
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace herd::cpu
