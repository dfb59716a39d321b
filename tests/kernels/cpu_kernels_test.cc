// CPU kernels against straightforward float64 references, over shape sweeps
// and edge cases (an expert with no tokens, all tokens on one expert,
// top_k = num_experts, odd sizes, 1 and 2 threads). Parameters are printed on
// failure through SCOPED_TRACE.
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "core/dtype.h"
#include "gtest/gtest.h"
#include "kernels/attention.h"
#include "kernels/convert.h"
#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu_features.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/moe.h"
#include "kernels/rope.h"
#include "kernels/router.h"
#include "kernels/sampling.h"

namespace herd::cpu {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Weights stored as `type`, plus their exact dequantized values.
struct StoredMatrix {
  std::vector<uint8_t> bytes;
  std::vector<float> dequantized;
  TensorView view;
};

StoredMatrix Store(DType type, int64_t rows, int64_t cols, uint32_t seed) {
  StoredMatrix m;
  const std::vector<float> w = Random(rows * cols, seed, 0.5f);
  m.bytes.resize(rows * RowBytes(type, cols));
  m.dequantized.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = m.bytes.data() + r * RowBytes(type, cols);
    QuantizeRow(type, w.data() + r * cols, row, cols);
    DequantizeRow(type, row, m.dequantized.data() + r * cols, cols);
  }
  m.view = TensorView(type, {rows, cols}, m.bytes.data());
  return m;
}

// The same for one of Herd's quantized formats (round to nearest).
StoredMatrix StoreQuant(const QuantFormat& format, int64_t rows, int64_t cols, uint32_t seed) {
  StoredMatrix m;
  const std::vector<float> w = Random(rows * cols, seed, 0.5f);
  const QuantizedMatrixSizes sizes = QuantizedSizes(format, rows, cols);
  m.bytes.resize(sizes.total());
  uint8_t* codes = m.bytes.data();
  auto* scales = reinterpret_cast<uint16_t*>(codes + sizes.codes);
  auto* mins = format.symmetric ? nullptr : scales + sizes.scales / 2;
  QuantizeMatrixRtn(format, w.data(), rows, cols, codes, scales, mins);
  m.view = TensorView::Quantized(format, rows, cols, {codes, scales, mins});
  m.dequantized.resize(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeQuantizedRow(format, m.view.quantized(), cols, r, m.dequantized.data() + r * cols);
  }
  return m;
}

// Every format Herd's checkpoints can hold: 4 widths x 2 symmetries x 4 group
// sizes x 2 scale types.
std::vector<QuantFormat> AllQuantFormats() {
  std::vector<QuantFormat> formats;
  for (int bits : {8, 4, 3, 2}) {
    for (bool symmetric : {true, false}) {
      for (int group : {32, 64, 128, 0}) {
        for (DType scale : {DType::kF16, DType::kBF16}) {
          formats.push_back(QuantFormat{bits, symmetric, group, scale});
        }
      }
    }
  }
  return formats;
}

// What the activations become before an integer dot product with `type`.
std::vector<float> ActivationsAsSeen(DType type, const std::vector<float>& x, int64_t cols) {
  if (type == DType::kBF16) {  // rounded to BF16, as llama.cpp does (kernels/matmul.h)
    std::vector<float> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = BF16ToF32(F32ToBF16(x[i]));
    return out;
  }
  if (!IsQuantized(type)) return x;
  std::vector<float> out(x.size());
  std::vector<BlockQ8_0> blocks(cols / 32);
  for (size_t r = 0; r < x.size() / cols; ++r) {
    QuantizeRow(DType::kQ8_0, x.data() + r * cols, blocks.data(), cols);
    DequantizeRow(DType::kQ8_0, blocks.data(), out.data() + r * cols, cols);
  }
  return out;
}

std::vector<float> ReferenceMatmul(const std::vector<float>& w, const std::vector<float>& x,
                                   int64_t tokens, int64_t out, int64_t in) {
  std::vector<float> y(tokens * out);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0.0;
      for (int64_t i = 0; i < in; ++i) s += static_cast<double>(w[o * in + i]) * x[t * in + i];
      y[t * out + o] = static_cast<float>(s);
    }
  }
  return y;
}

// Every ISA this CPU has, scalar first; each test body runs under each.
std::vector<Isa> IsasToTest() {
  std::vector<Isa> isas = {Isa::kScalar};
  const Isa saved = ActiveIsa();
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Gfni}) {
    SetIsaForTesting(isa);
    if (ActiveIsa() == isa) isas.push_back(isa);
  }
  SetIsaForTesting(saved);
  return isas;
}

class IsaScope {
 public:
  explicit IsaScope(Isa isa) : saved_(ActiveIsa()) { SetIsaForTesting(isa); }
  ~IsaScope() { SetIsaForTesting(saved_); }

 private:
  Isa saved_;
};

TEST(MatmulTest, EveryDtypeAndIsaMatchesReferenceOverShapes) {
  for (Isa isa : IsasToTest()) {
    IsaScope scope(isa);
    for (DType type :
         {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
      for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        for (int64_t in : {32, 37, 64, 96, 256}) {
          if (in % BlockSize(type) != 0) continue;
          for (int64_t out : {1, 7, 16, 64, 129}) {
            // The float kernels' token tiles on AVX-512: from 12 tokens on,
            // tiles of 24 and a last one run as the next multiple of 4 (12,
            // 14 -> 16, 17 -> 20, 23 -> 24, 25 = 24 + 1 -> 4, 29 = 24 + 5 -> 8,
            // 35 = 24 + 11 -> 12, 44 = 24 + 20); fewer are read from x in
            // passes of 8, the last padded (3, 4, 10 = 8 + 2), and of 1 (9 =
            // 8 + 1). AVX2 runs 6 tokens at a time.
            for (int64_t tokens : {1, 3, 4, 9, 10, 12, 14, 17, 23, 25, 29, 35, 44}) {
              SCOPED_TRACE(testing::Message()
                           << IsaName(isa) << " " << DTypeName(type) << " threads=" << threads
                           << " in=" << in << " out=" << out << " tokens=" << tokens);
              StoredMatrix w = Store(type, out, in, static_cast<uint32_t>(in * 31 + out));
              const std::vector<float> x = Random(tokens * in, 7);
              const std::vector<float> bias = Random(out, 9);
              // The scalar reference, straight from the stored tensor.
              std::vector<uint8_t> ref_ws(MatmulReferenceWorkspaceBytes(type, tokens, in));
              std::vector<float> y_ref(tokens * out);
              ASSERT_TRUE(MatmulReference(w.view, bias.data(), x.data(), tokens, y_ref.data(),
                                          ref_ws.data(), ref_ws.size(), pool)
                              .ok());
              // The packed kernel of this ISA.
              auto packed = PackMatrix(w.view);
              ASSERT_TRUE(packed.ok()) << packed.status();
              std::vector<uint8_t> ws(MatmulWorkspaceBytes(*packed, tokens));
              std::vector<float> y(tokens * out, -1.0f);
              ASSERT_TRUE(Matmul(*packed, bias.data(), x.data(), tokens, y.data(), ws.data(),
                                 ws.size(), pool)
                              .ok());
              // Both against float64 math on what the kernels see (Q4_1 takes
              // Q8_1 activations: same rounding plus an f16 sum term, so a
              // looser bound).
              const std::vector<float> seen = ActivationsAsSeen(type, x, in);
              std::vector<float> ref = ReferenceMatmul(w.dequantized, seen, tokens, out, in);
              const float tol = type == DType::kQ4_1 ? 2e-2f : 1e-3f;
              for (int64_t t = 0; t < tokens; ++t) {
                for (int64_t o = 0; o < out; ++o) {
                  const float expected = ref[t * out + o] + bias[o];
                  const float bound = tol * (1.0f + std::fabs(expected));
                  ASSERT_NEAR(y_ref[t * out + o], expected, bound)
                      << "reference t=" << t << " o=" << o;
                  ASSERT_NEAR(y[t * out + o], y_ref[t * out + o], 1e-4f * (1 + std::fabs(expected)))
                      << "packed t=" << t << " o=" << o;
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(MatmulTest, EveryQuantFormatAndIsaMatchesReferenceOverShapes) {
  for (Isa isa : IsasToTest()) {
    IsaScope scope(isa);
    for (const QuantFormat& format : AllQuantFormats()) {
      for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        for (int64_t in : {128, 384}) {
          for (int64_t out : {1, 16, 37}) {
            // Passes of 8 (AVX2: 4), then one each of 4, 2, 1 as needed.
            for (int64_t tokens : {1, 3, 7, 9, 15}) {
              if (threads == 1 && (out != 37 || tokens != 9)) continue;
              SCOPED_TRACE(testing::Message()
                           << IsaName(isa) << " " << format.Name() << " threads=" << threads
                           << " in=" << in << " out=" << out << " tokens=" << tokens);
              StoredMatrix w = StoreQuant(format, out, in, static_cast<uint32_t>(in + out));
              const std::vector<float> x = Random(tokens * in, 7);
              const std::vector<float> bias = Random(out, 9);
              std::vector<uint8_t> ref_ws(MatmulReferenceWorkspaceBytes(DType::kQuant, tokens, in));
              std::vector<float> y_ref(tokens * out);
              ASSERT_TRUE(MatmulReference(w.view, bias.data(), x.data(), tokens, y_ref.data(),
                                          ref_ws.data(), ref_ws.size(), pool)
                              .ok());
              auto packed = PackMatrix(w.view);
              ASSERT_TRUE(packed.ok()) << packed.status();
              EXPECT_EQ(packed->data, w.view.data());  // used in place, never copied
              std::vector<uint8_t> ws(MatmulWorkspaceBytes(*packed, tokens));
              std::vector<float> y(tokens * out, -1.0f);
              ASSERT_TRUE(Matmul(*packed, bias.data(), x.data(), tokens, y.data(), ws.data(),
                                 ws.size(), pool)
                              .ok());
              const std::vector<float> seen = ActivationsAsSeen(DType::kQuant, x, in);
              const std::vector<float> ref = ReferenceMatmul(w.dequantized, seen, tokens, out, in);
              for (int64_t t = 0; t < tokens; ++t) {
                for (int64_t o = 0; o < out; ++o) {
                  const float expected = ref[t * out + o] + bias[o];
                  ASSERT_NEAR(y_ref[t * out + o], expected, 1e-3f * (1.0f + std::fabs(expected)))
                      << "reference t=" << t << " o=" << o;
                  ASSERT_NEAR(y[t * out + o], y_ref[t * out + o], 1e-4f * (1 + std::fabs(expected)))
                      << "kernel t=" << t << " o=" << o;
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(MatmulTest, ScalarPackedKernelsEqualTheReferenceExactly) {
  IsaScope scope(Isa::kScalar);
  ThreadPool pool(2);
  for (DType type : {DType::kQ8_0, DType::kQ4_0, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(type));
    StoredMatrix w = Store(type, 37, 128, 3);
    const std::vector<float> x = Random(5 * 128, 4);
    std::vector<uint8_t> ref_ws(MatmulReferenceWorkspaceBytes(type, 5, 128));
    std::vector<float> y_ref(5 * 37), y(5 * 37);
    ASSERT_TRUE(MatmulReference(w.view, nullptr, x.data(), 5, y_ref.data(), ref_ws.data(),
                                ref_ws.size(), pool)
                    .ok());
    auto packed = PackMatrix(w.view);
    ASSERT_TRUE(packed.ok());
    EXPECT_EQ(packed->num_bytes(), 48 * RowBytes(type, 128));  // 3 groups of 16 rows
    std::vector<uint8_t> ws(MatmulWorkspaceBytes(*packed, 5));
    ASSERT_TRUE(Matmul(*packed, nullptr, x.data(), 5, y.data(), ws.data(), ws.size(), pool).ok());
    EXPECT_EQ(y, y_ref);
  }
  for (const QuantFormat& format :
       {QuantFormat{4, true, 32, DType::kF16}, QuantFormat{3, false, 0, DType::kBF16}}) {
    SCOPED_TRACE(format.Name());
    StoredMatrix w = StoreQuant(format, 37, 128, 3);
    const std::vector<float> x = Random(5 * 128, 4);
    std::vector<uint8_t> ref_ws(MatmulReferenceWorkspaceBytes(DType::kQuant, 5, 128));
    std::vector<float> y_ref(5 * 37), y(5 * 37);
    ASSERT_TRUE(MatmulReference(w.view, nullptr, x.data(), 5, y_ref.data(), ref_ws.data(),
                                ref_ws.size(), pool)
                    .ok());
    auto packed = PackMatrix(w.view);
    ASSERT_TRUE(packed.ok());
    EXPECT_EQ(packed->num_bytes(), QuantizedSizes(format, 37, 128).total());
    std::vector<uint8_t> ws(MatmulWorkspaceBytes(*packed, 5));
    ASSERT_TRUE(Matmul(*packed, nullptr, x.data(), 5, y.data(), ws.data(), ws.size(), pool).ok());
    EXPECT_EQ(y, y_ref);
  }
}

// Every ISA's activation quantization gives the scalar kernel's bytes, so the
// integer kernels all see the same int8 activations: random blocks, an
// all-zero block, one with a single value, exact ties (x * 127 / amax
// = k + 0.5, which round to even), and scales that are subnormal or
// infinite in f16.
TEST(MatmulTest, ActivationQuantizationIsBitIdenticalOnEveryIsa) {
  const int64_t cols = 32 * 6;
  const int64_t tokens = 3;
  std::vector<float> x = Random(tokens * cols, 11, 3.0f);
  std::fill(x.begin() + 32, x.begin() + 64, 0.0f);
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);
  x[70] = -2.5f;
  for (int i = 0; i < 32; ++i) x[96 + i] = i - 16 + 0.5f;
  x[96 + 31] = 127.0f;  // amax 127: id = 1, so the others are exact ties
  // Scales at f16's ends: amax / 127 of 7.9e-8 is a subnormal f16 (1 ulp),
  // of 7.9e4 past its largest value (infinity).
  for (int i = 0; i < 32; ++i) x[128 + i] *= 1e-5f / 3.0f;
  x[128 + 5] = 1e-5f;
  x[160 + 7] = 1e7f;
  auto quantize = [&](Isa isa) {
    IsaScope scope(isa);
    std::vector<uint8_t> bytes(QuantizedActivationsBytes(tokens, cols));
    const QuantizedActivations a = CarveQuantizedActivations(bytes.data(), tokens, cols);
    QuantizeActivations(x.data(), cols, 0, tokens, a);
    return std::make_tuple(std::vector<int8_t>(a.qs, a.qs + tokens * cols),
                           std::vector<float>(a.d, a.d + tokens * cols / 32),
                           std::vector<int32_t>(a.sum, a.sum + tokens * cols / 32));
  };
  const auto scalar = quantize(Isa::kScalar);
  EXPECT_EQ(std::get<0>(scalar)[96], -16);  // -15.5 rounds to even
  EXPECT_EQ(std::get<0>(scalar)[97], -14);  // -14.5
  for (Isa isa : IsasToTest()) {
    SCOPED_TRACE(IsaName(isa));
    EXPECT_EQ(quantize(isa), scalar);
  }
}

TEST(MatmulTest, BatchOfTasksMatchesSeparateCalls) {
  for (Isa isa : IsasToTest()) {
    IsaScope scope(isa);
    SCOPED_TRACE(IsaName(isa));
    ThreadPool pool(2);
    StoredMatrix a = Store(DType::kQ4_0, 48, 64, 1), b = Store(DType::kQ8_0, 20, 64, 2),
                 c = Store(DType::kF16, 9, 32, 3), d = Store(DType::kBF16, 17, 32, 4),
                 e = Store(DType::kBF16, 5, 32, 5), f = Store(DType::kF16, 12, 32, 6);
    auto pa = PackMatrix(a.view), pb = PackMatrix(b.view), pc = PackMatrix(c.view),
         pd = PackMatrix(d.view), pe = PackMatrix(e.view), pf = PackMatrix(f.view);
    ASSERT_TRUE(pa.ok() && pb.ok() && pc.ok() && pd.ok() && pe.ok() && pf.ok());
    const std::vector<float> x1 = Random(3 * 64, 5), x2 = Random(30 * 32, 6);
    std::vector<float> ya(3 * 48), yb(3 * 20), yc(30 * 9), yd(30 * 17), ye(30 * 5), yf(30 * 12);
    // a and b share x1 (one quantization); c to f share x2, 30 tokens: c and
    // f share one set of token tiles on AVX-512, d and e one rounding to BF16
    // and one set of tiles of it, and each pair holds them once.
    const MatmulTask tasks[6] = {
        {&*pa, nullptr, x1.data(), 3, ya.data()},  {&*pb, nullptr, x1.data(), 3, yb.data()},
        {&*pc, nullptr, x2.data(), 30, yc.data()}, {&*pd, nullptr, x2.data(), 30, yd.data()},
        {&*pe, nullptr, x2.data(), 30, ye.data()}, {&*pf, nullptr, x2.data(), 30, yf.data()}};
    EXPECT_EQ(MatmulBatchWorkspaceBytes(tasks + 2, 4),
              MatmulWorkspaceBytes(*pc, 30) + MatmulWorkspaceBytes(*pd, 30));
    std::vector<uint8_t> ws(MatmulBatchWorkspaceBytes(tasks, 6));
    ASSERT_TRUE(MatmulBatch(tasks, 6, ws.data(), ws.size(), pool).ok());
    for (int i = 0; i < 6; ++i) {
      std::vector<float> expected(tasks[i].num_tokens * tasks[i].weight->rows);
      std::vector<uint8_t> ws1(MatmulWorkspaceBytes(*tasks[i].weight, tasks[i].num_tokens));
      ASSERT_TRUE(Matmul(*tasks[i].weight, nullptr, tasks[i].x, tasks[i].num_tokens,
                         expected.data(), ws1.data(), ws1.size(), pool)
                      .ok());
      for (size_t j = 0; j < expected.size(); ++j) EXPECT_EQ(tasks[i].y[j], expected[j]) << i;
    }
  }
}

TEST(MatmulTest, RejectsBadShapesAndSmallWorkspace) {
  ThreadPool pool(1);
  std::vector<uint8_t> bytes(RowBytes(DType::kQ8_0, 64) * 4);
  const TensorView w(DType::kQ8_0, {4, 64}, bytes.data());
  std::vector<float> x(64), y(4);
  EXPECT_FALSE(MatmulReference(w, nullptr, x.data(), 1, y.data(), nullptr, 0, pool).ok());
  auto packed = PackMatrix(w);
  ASSERT_TRUE(packed.ok());
  EXPECT_FALSE(Matmul(*packed, nullptr, x.data(), 1, y.data(), nullptr, 0, pool).ok());
  const TensorView odd(DType::kQ8_0, {4, 48}, bytes.data());
  EXPECT_FALSE(PackMatrix(odd).ok());
  const TensorView three_d(DType::kF32, {1, 4, 16}, bytes.data());
  EXPECT_FALSE(PackMatrix(three_d).ok());
  const TensorView ints(DType::kI32, {4, 16}, bytes.data());
  EXPECT_FALSE(PackMatrix(ints).ok());
  // A quantized matrix whose row length is not a multiple of its group size.
  const TensorView ragged = TensorView::Quantized(QuantFormat{4, true, 128, DType::kF16}, 4, 96,
                                                  {bytes.data(), nullptr, nullptr});
  const absl::StatusOr<PackedMatrix> rejected = PackMatrix(ragged);
  ASSERT_FALSE(rejected.ok());
  EXPECT_NE(rejected.status().message().find("int4-g128-sym-f16"), std::string::npos)
      << rejected.status();
}

TEST(RmsNormTest, MatchesDefinition) {
  for (int64_t dim : {1, 5, 64, 333}) {
    SCOPED_TRACE(dim);
    const auto x = Random(3 * dim, 1);
    const auto w = Random(dim, 2);
    std::vector<float> y(3 * dim);
    RmsNorm(x.data(), w.data(), 3, dim, 1e-5f, y.data());
    for (int r = 0; r < 3; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < dim; ++i) ss += x[r * dim + i] * x[r * dim + i];
      const double scale = 1.0 / std::sqrt(ss / dim + 1e-5);
      for (int64_t i = 0; i < dim; ++i) {
        ASSERT_NEAR(y[r * dim + i], x[r * dim + i] * scale * w[i], 1e-5);
      }
    }
  }
}

// SwiGLU's vectorised exponential against double precision, over the whole
// float range that matters: silu(g) * u within 4e-7 relative (2 ulp of each
// factor), and exactly 0 or the right sign where e^-g under- or overflows.
TEST(SwiGluTest, MatchesDefinitionOverTheRange) {
  std::vector<float> gate, up;
  for (float g = -120.0f; g <= 120.0f; g += 0.0137f) {
    gate.push_back(g);
    up.push_back(1.0f + 0.25f * std::sin(g));
  }
  std::vector<float> out(gate.size());
  SwiGlu(gate.data(), up.data(), static_cast<int64_t>(gate.size()), out.data());
  for (size_t i = 0; i < gate.size(); ++i) {
    const double g = gate[i];
    const double want = g / (1.0 + std::exp(-g)) * up[i];
    ASSERT_NEAR(out[i], want, 4e-7 * std::abs(want) + 1e-30) << "gate " << g;
  }
}

TEST(RopeTest, BothStylesRotateTheRightPairs) {
  const int64_t heads = 2, dim = 8, rope_dim = 8;
  const std::vector<int32_t> positions = {0, 3};
  for (RopeStyle style : {RopeStyle::kGptJ, RopeStyle::kNeox}) {
    SCOPED_TRACE(RopeStyleName(style));
    auto x = Random(2 * heads * dim, 4);
    const auto original = x;
    ApplyRope(x.data(), 2, heads, dim, rope_dim, positions.data(), 10000.0f, style);
    for (int t = 0; t < 2; ++t) {
      for (int h = 0; h < heads; ++h) {
        const float* in = original.data() + (t * heads + h) * dim;
        const float* out = x.data() + (t * heads + h) * dim;
        for (int i = 0; i < rope_dim / 2; ++i) {
          const double angle = positions[t] * std::pow(10000.0, -2.0 * i / rope_dim);
          const int a = style == RopeStyle::kGptJ ? 2 * i : i;
          const int b = style == RopeStyle::kGptJ ? 2 * i + 1 : i + rope_dim / 2;
          EXPECT_NEAR(out[a], in[a] * std::cos(angle) - in[b] * std::sin(angle), 1e-5);
          EXPECT_NEAR(out[b], in[a] * std::sin(angle) + in[b] * std::cos(angle), 1e-5);
        }
      }
    }
  }
}

TEST(RopeTest, PartialRotationLeavesTailUntouched) {
  auto x = Random(16, 5);
  const auto original = x;
  const int32_t pos = 7;
  ApplyRope(x.data(), 1, 1, 16, 8, &pos, 10000.0f, RopeStyle::kNeox);
  for (int i = 8; i < 16; ++i) EXPECT_EQ(x[i], original[i]);
}

// One sequence of an attention test: its full K/V (F32 [start + tokens,
// kv_heads * head_dim]) and its new tokens' queries.
struct AttentionCase {
  int64_t start_pos = 0;
  int64_t num_tokens = 0;
  std::vector<float> q, k, v;
};

AttentionCase MakeAttentionCase(const AttentionShape& shape, int64_t start_pos, int64_t num_tokens,
                                uint32_t seed) {
  const int64_t context = start_pos + num_tokens;
  return {start_pos, num_tokens, Random(num_tokens * shape.num_heads * shape.head_dim, seed),
          Random(context * shape.num_kv_heads * shape.head_dim, seed + 1),
          Random(context * shape.num_kv_heads * shape.head_dim, seed + 2)};
}

// A block pool holding `cases`, each in blocks drawn from a shuffled pool
// with spare blocks; every position no sequence owns is NaN, so reading past
// a context poisons the output. An F16 pool holds the values rounded to F16.
struct PagedCases {
  // [num_blocks, block_tokens, kv_heads * head_dim] of F32, or of F16 bits
  std::vector<float> keys, values;
  std::vector<uint16_t> half_keys, half_values;
  std::vector<std::vector<int32_t>> block_tables;
  int64_t block_tokens = 0;
  int64_t block_elements = 0;
};

PagedCases Page(const AttentionShape& shape, const std::vector<AttentionCase>& cases,
                int64_t block_tokens, uint32_t seed, DType kv_type) {
  PagedCases paged;
  paged.block_tokens = block_tokens;
  const int64_t row = shape.num_kv_heads * shape.head_dim;
  paged.block_elements = block_tokens * row;
  int64_t num_blocks = 3;  // spares
  for (const AttentionCase& c : cases) {
    num_blocks += (c.start_pos + c.num_tokens + block_tokens - 1) / block_tokens;
  }
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(seed));
  paged.keys.assign(num_blocks * paged.block_elements, NAN);
  paged.values.assign(num_blocks * paged.block_elements, NAN);
  size_t next = 0;
  for (const AttentionCase& c : cases) {
    std::vector<int32_t>& table = paged.block_tables.emplace_back();
    for (int64_t pos = 0; pos < c.start_pos + c.num_tokens; ++pos) {
      if (pos % block_tokens == 0) table.push_back(pool[next++]);
      const int64_t at = table.back() * paged.block_elements + (pos % block_tokens) * row;
      std::copy_n(c.k.data() + pos * row, row, paged.keys.data() + at);
      std::copy_n(c.v.data() + pos * row, row, paged.values.data() + at);
    }
  }
  if (kv_type == DType::kF16) {
    for (auto [from, to] :
         {std::pair{&paged.keys, &paged.half_keys}, std::pair{&paged.values, &paged.half_values}}) {
      for (float x : *from) to->push_back(F32ToF16(x));
      from->clear();
    }
  }
  return paged;
}

// Runs the kernel over `cases` paged with `block_tokens` in a cache of
// `kv_type`; returns each case's output, F32 [num_tokens, heads * head_dim].
// `score_rows` > 0 gives the kernel a workspace of that many rows of scores
// per thread instead of AttentionWorkspaceBytes.
std::vector<std::vector<float>> RunPaged(const AttentionShape& shape,
                                         const std::vector<AttentionCase>& cases,
                                         int64_t block_tokens, int threads, uint32_t seed,
                                         int64_t score_rows = 0, DType kv_type = DType::kF32) {
  const PagedCases paged = Page(shape, cases, block_tokens, seed, kv_type);
  std::vector<std::vector<float>> outs(cases.size());
  std::vector<AttentionSequence> sequences;
  int64_t max_context = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    outs[i].assign(cases[i].num_tokens * shape.num_heads * shape.head_dim, NAN);
    sequences.push_back({cases[i].q.data(), outs[i].data(), cases[i].num_tokens, cases[i].start_pos,
                         paged.block_tables[i].data()});
    max_context = std::max(max_context, cases[i].start_pos + cases[i].num_tokens);
  }
  ThreadPool pool(threads);
  std::vector<uint8_t> ws(score_rows > 0 ? threads * score_rows * max_context * sizeof(float)
                                         : AttentionWorkspaceBytes(shape, max_context, threads));
  const bool half = kv_type == DType::kF16;
  const KvBlocks kv{half ? static_cast<const void*>(paged.half_keys.data()) : paged.keys.data(),
                    half ? static_cast<const void*>(paged.half_values.data()) : paged.values.data(),
                    paged.block_elements, block_tokens, kv_type};
  Attention(shape, kv, sequences.data(), static_cast<int64_t>(sequences.size()), ws.data(),
            ws.size(), pool);
  return outs;
}

// head_dim 8 and 20 (a partial 16-lane chunk) take the generic kernel; 64 and
// 128 the ones fixed at compile time.
TEST(AttentionTest, MatchesNaiveCausalGqaThroughShuffledBlocksOnEveryIsa) {
  for (Isa isa : IsasToTest()) {
    IsaScope scope(isa);
    for (int64_t d : {8, 20, 64, 128}) {
      const AttentionShape shape{4, 2, d};
      // Prefill, decode deep in a context, a chunk straddling blocks, a
      // sequence without new tokens between the others, and a prefill of
      // several tiles.
      const std::vector<AttentionCase> cases = {
          MakeAttentionCase(shape, 0, 4, 1), MakeAttentionCase(shape, 5, 1, 11),
          MakeAttentionCase(shape, 0, 0, 21), MakeAttentionCase(shape, 17, 3, 31),
          MakeAttentionCase(shape, 0, 21, 41)};
      for (int threads : {1, 2}) {
        for (int64_t block_tokens : {1, 3, 16, 64}) {
          SCOPED_TRACE(testing::Message() << IsaName(isa) << " head_dim=" << d << " threads="
                                          << threads << " block_tokens=" << block_tokens);
          const auto outs = RunPaged(shape, cases, block_tokens, threads, 7);
          for (size_t c = 0; c < cases.size(); ++c) {
            const AttentionCase& ac = cases[c];
            for (int64_t t = 0; t < ac.num_tokens; ++t) {
              for (int64_t h = 0; h < 4; ++h) {
                const int64_t kvh = h / 2;
                const int64_t context = ac.start_pos + t + 1;
                std::vector<double> s(context);
                for (int64_t p = 0; p < context; ++p) {
                  double dot = 0;
                  for (int64_t i = 0; i < d; ++i) {
                    dot += ac.q[(t * 4 + h) * d + i] * ac.k[(p * 2 + kvh) * d + i];
                  }
                  s[p] = dot / std::sqrt(static_cast<double>(d));
                }
                const double mx = *std::max_element(s.begin(), s.end());
                double z = 0;
                for (double& e : s) z += (e = std::exp(e - mx));
                for (int64_t i = 0; i < d; ++i) {
                  double o = 0;
                  for (int64_t p = 0; p < context; ++p) o += s[p] / z * ac.v[(p * 2 + kvh) * d + i];
                  ASSERT_NEAR(outs[c][(t * 4 + h) * d + i], o, 1e-5)
                      << "sequence " << c << " token " << t << " head " << h;
                }
              }
            }
          }
        }
      }
    }
  }
}

// An F16 cache changes nothing but the values it holds: on every ISA its
// outputs are bit for bit those of an F32 cache holding the same values
// rounded to F16, for every kernel (head_dim 8 and 20 take the generic one,
// 64 and 128 their own), block size, thread count and chunking.
TEST(AttentionTest, F16CacheGivesTheF32OutputOfItsRoundedValuesOnEveryIsa) {
  for (Isa isa : IsasToTest()) {
    IsaScope scope(isa);
    for (int64_t d : {8, 20, 64, 128}) {
      const AttentionShape shape{8, 2, d};
      std::vector<AttentionCase> cases = {
          MakeAttentionCase(shape, 0, 21, 1), MakeAttentionCase(shape, 30, 1, 2),
          MakeAttentionCase(shape, 0, 0, 3), MakeAttentionCase(shape, 13, 5, 4)};
      std::vector<AttentionCase> rounded = cases;
      for (AttentionCase& c : rounded) {
        for (std::vector<float>* kv : {&c.k, &c.v}) {
          for (float& x : *kv) x = F16ToF32(F32ToF16(x));
        }
      }
      for (int threads : {1, 2}) {
        for (int64_t block_tokens : {1, 3, 16}) {
          SCOPED_TRACE(testing::Message() << IsaName(isa) << " head_dim=" << d << " threads="
                                          << threads << " block_tokens=" << block_tokens);
          const auto expected = RunPaged(shape, rounded, block_tokens, threads, 7);
          EXPECT_EQ(RunPaged(shape, cases, block_tokens, threads, 8, 0, DType::kF16), expected);
          EXPECT_EQ(RunPaged(shape, cases, block_tokens, threads, 9, 2, DType::kF16), expected)
              << "2 rows of scores per thread";
          EXPECT_NE(RunPaged(shape, cases, block_tokens, threads, 7), expected)
              << "the rounding to F16 must show";
        }
      }
    }
  }
}

// The engine relies on this for bit-identical logits whatever blocks a
// sequence gets and whoever shares the batch: per position the arithmetic
// is the same for every block size, block order and batch.
TEST(AttentionTest, OutputIsBitIdenticalForAnyBlocksAndBatch) {
  const AttentionShape shape{8, 2, 64};
  const std::vector<AttentionCase> cases = {MakeAttentionCase(shape, 0, 9, 1),
                                            MakeAttentionCase(shape, 40, 1, 2),
                                            MakeAttentionCase(shape, 13, 5, 3)};
  // One block per sequence, in order: a contiguous cache.
  const auto reference = RunPaged(shape, cases, 64, 1, 0);
  for (int threads : {1, 2}) {
    for (int64_t block_tokens : {1, 4, 16}) {
      SCOPED_TRACE(testing::Message() << "threads=" << threads << " block_tokens=" << block_tokens);
      EXPECT_EQ(RunPaged(shape, cases, block_tokens, threads, 5), reference);
      for (size_t c = 0; c < cases.size(); ++c) {
        EXPECT_EQ(RunPaged(shape, {cases[c]}, block_tokens, threads, 9)[0], reference[c])
            << "sequence " << c << " alone";
      }
    }
  }
}

// The serving tests compare tokens across prefill chunkings: a prompt's
// outputs must not depend on how its tokens were split into steps, nor on
// the GQA group (tiles hold a group's heads), nor on head_dim's remainder
// mod 16, nor on the threads.
TEST(AttentionTest, OutputIsBitIdenticalForAnyChunking) {
  for (const AttentionShape shape :
       {AttentionShape{4, 4, 64}, AttentionShape{8, 2, 64}, AttentionShape{16, 1, 128},
        AttentionShape{6, 2, 40}, AttentionShape{4, 1, 8}}) {
    const int64_t total = 37;
    const AttentionCase whole = MakeAttentionCase(shape, 0, total, 41);
    const int64_t q_row = shape.num_heads * shape.head_dim;
    const int64_t kv_row = shape.num_kv_heads * shape.head_dim;
    // The tokens [begin, end) of `whole` as one step.
    auto chunk = [&](int64_t begin, int64_t end) {
      AttentionCase c;
      c.start_pos = begin;
      c.num_tokens = end - begin;
      c.q.assign(whole.q.begin() + begin * q_row, whole.q.begin() + end * q_row);
      c.k.assign(whole.k.begin(), whole.k.begin() + end * kv_row);
      c.v.assign(whole.v.begin(), whole.v.begin() + end * kv_row);
      return c;
    };
    for (int threads : {1, 2}) {
      SCOPED_TRACE(testing::Message()
                   << "heads=" << shape.num_heads << " kv_heads=" << shape.num_kv_heads
                   << " head_dim=" << shape.head_dim << " threads=" << threads);
      const std::vector<float> reference = RunPaged(shape, {whole}, 8, threads, 3)[0];
      for (const std::vector<int64_t>& cuts :
           {std::vector<int64_t>{0, 5, 6, 7, 20, total}, std::vector<int64_t>{0, 1, 2, 3, total},
            std::vector<int64_t>{0, 16, 32, total}}) {
        std::vector<float> stitched;
        for (size_t i = 0; i + 1 < cuts.size(); ++i) {
          const auto out = RunPaged(shape, {chunk(cuts[i], cuts[i + 1])}, 8, threads, 4)[0];
          stitched.insert(stitched.end(), out.begin(), out.end());
        }
        EXPECT_EQ(stitched, reference) << "cut after token " << cuts[1];
      }
      std::vector<float> decoded;
      for (int64_t t = 0; t < total; ++t) {
        const auto out = RunPaged(shape, {chunk(t, t + 1)}, 8, threads, 5)[0];
        decoded.insert(decoded.end(), out.begin(), out.end());
      }
      EXPECT_EQ(decoded, reference) << "token by token";
      // Long contexts get workspaces of fewer rows per thread, so smaller tiles.
      for (int64_t rows : {1, 3}) {
        EXPECT_EQ(RunPaged(shape, {whole}, 8, threads, 6, rows)[0], reference)
            << rows << " rows of scores per thread";
      }
    }
  }
}

// F32 rounds to F16 as the scalar F32ToF16 does on every ISA: to nearest,
// ties to even, subnormals, overflow to infinity (65520 and up), NaN to NaN.
TEST(ConvertTest, F32RoundsToF16ExactlyOnEveryIsa) {
  std::vector<float> src = {0.0f,           -0.0f,           1.0f,
                            -2.5f,          65504.0f,        65519.99f,
                            65520.0f,       -65520.0f,       1e9f,
                            INFINITY,       -INFINITY,       NAN,
                            5.96e-8f,       2.98e-8f,        2.99e-8f,
                            1e-10f,         6.1035156e-5f,   6.1e-5f,
                            1.00048828125f, 1.000732421875f, 1.000244140625f,
                            3.4e38f};
  // Values just around every tie of the mantissa's last place.
  std::mt19937 rng(5);
  for (int i = 0; i < 20000; ++i) {
    const uint32_t bits = rng();
    src.push_back(std::bit_cast<float>(bits));
    src.push_back(std::bit_cast<float>((bits & 0xFFFFE000u) | 0x1000u));  // an exact tie
  }
  for (Isa isa : IsasToTest()) {
    IsaScope scope(isa);
    for (size_t n : {src.size(), size_t{13}, size_t{3}}) {
      SCOPED_TRACE(testing::Message() << IsaName(isa) << " n=" << n);
      std::vector<uint16_t> dst(n, 0x1234);
      ConvertF32ToF16(src.data(), static_cast<int64_t>(n), dst.data());
      for (size_t i = 0; i < n; ++i) {
        if (std::isnan(src[i])) {
          ASSERT_TRUE(std::isnan(F16ToF32(dst[i]))) << i;
        } else {
          ASSERT_EQ(dst[i], F32ToF16(src[i])) << std::hexfloat << src[i];
        }
      }
    }
  }
}

TEST(RouterTest, SoftmaxTopKWithAndWithoutRenormalisation) {
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 1.5f};
  std::vector<int32_t> idx(2);
  std::vector<float> w(2);
  RouterTopK(logits.data(), 1, 4, 2, RouterScoring::kSoftmax, false, idx.data(), w.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 3}));
  double z = 0;
  for (float l : logits) z += std::exp(l);
  EXPECT_NEAR(w[0], std::exp(2.0) / z, 1e-6);
  EXPECT_NEAR(w[1], std::exp(1.5) / z, 1e-6);
  RouterTopK(logits.data(), 1, 4, 2, RouterScoring::kSoftmax, true, idx.data(), w.data());
  EXPECT_NEAR(w[0] + w[1], 1.0, 1e-6);
  EXPECT_NEAR(w[0] / w[1], std::exp(0.5), 1e-5);
}

TEST(RouterTest, SigmoidTiesAndTopKEqualsNumExperts) {
  const std::vector<float> logits = {1.0f, 1.0f, 0.0f};
  std::vector<int32_t> idx(3);
  std::vector<float> w(3);
  RouterTopK(logits.data(), 1, 3, 3, RouterScoring::kSigmoid, false, idx.data(), w.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 2}));  // ties keep the lower index first
  EXPECT_NEAR(w[0], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(w[2], 0.5, 1e-6);
}

// Expert drop masks dropped experts' logits to -inf: the same choice and
// weights as a router whose rows for them were deleted.
TEST(RouterTest, MaskedExpertsActLikeDeletedRouterRows) {
  const int64_t tokens = 7, experts = 6, top_k = 2;
  const std::vector<int32_t> kept = {0, 2, 3, 5};
  std::vector<float> logits = Random(tokens * experts, 21);
  std::vector<float> compact(tokens * kept.size());
  for (int64_t t = 0; t < tokens; ++t) {
    for (size_t j = 0; j < kept.size(); ++j)
      compact[t * kept.size() + j] = logits[t * experts + kept[j]];
    for (int e : {1, 4}) logits[t * experts + e] = -std::numeric_limits<float>::infinity();
  }
  for (bool renorm : {true, false}) {
    for (RouterScoring scoring : {RouterScoring::kSoftmax, RouterScoring::kSigmoid}) {
      std::vector<int32_t> idx(tokens * top_k), idx_compact(tokens * top_k);
      std::vector<float> w(tokens * top_k), w_compact(tokens * top_k);
      RouterTopK(logits.data(), tokens, experts, top_k, scoring, renorm, idx.data(), w.data());
      RouterTopK(compact.data(), tokens, static_cast<int64_t>(kept.size()), top_k, scoring, renorm,
                 idx_compact.data(), w_compact.data());
      for (int64_t i = 0; i < tokens * top_k; ++i) {
        EXPECT_EQ(idx[i], kept[idx_compact[i]]) << i;
        EXPECT_NEAR(w[i], w_compact[i], 1e-6f) << i;
      }
    }
  }
}

TEST(PermuteTest, StableCountingSortWithEmptyExperts) {
  const std::vector<int32_t> experts = {3, 0, 3, 3, 0, 1};  // expert 2 gets nothing
  std::vector<int32_t> rows(6), offsets(5);
  PermuteByExpert(experts.data(), 6, 4, rows.data(), offsets.data());
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 2, 3, 3, 6}));
  EXPECT_EQ(rows, (std::vector<int32_t>{1, 4, 5, 0, 2, 3}));
  std::vector<int32_t> none_rows(1), none_offsets(3);
  PermuteByExpert(nullptr, 0, 2, none_rows.data(), none_offsets.data());
  EXPECT_EQ(none_offsets, (std::vector<int32_t>{0, 0, 0}));
}

TEST(PermuteTest, SkippedSlotsGetNoRow) {
  const std::vector<int32_t> experts = {1, -1, 0, -1, 1, 0};
  std::vector<int32_t> rows(6, 99), offsets(3);
  PermuteByExpert(experts.data(), 6, 2, rows.data(), offsets.data());
  EXPECT_EQ(offsets, (std::vector<int32_t>{0, 2, 4}));
  EXPECT_EQ(rows, (std::vector<int32_t>{2, 5, 0, 4, 99, 99}));
}

TEST(CombineTest, SlotsWithoutARowAddNothing) {
  // Two tokens, top-2; token 0's second slot was skipped (row -1).
  const std::vector<float> expert_out = {1, 2, 10, 20, 100, 200};  // 3 rows, hidden 2
  const std::vector<int32_t> slot_to_row = {2, -1, 0, 1};
  const std::vector<float> weights = {0.5f, 0.0f, 0.25f, 0.75f};
  std::vector<float> out = {1, 1, 1, 1};
  CombineWeighted(expert_out.data(), slot_to_row.data(), weights.data(), 2, 2, 2, out.data());
  EXPECT_EQ(out, (std::vector<float>{51, 101, 1 + 0.25f + 7.5f, 1 + 0.5f + 15}));
}

TEST(RouterTest, SkipMinorExpertsByHand) {
  // Token 0: 0.6 / 0.4, ratio 0.67 >= 0.5: kept. Token 1: 0.8 / 0.2, ratio
  // 0.25 < 0.5: the second expert is skipped and the first gets weight 1.
  std::vector<int32_t> idx = {3, 1, 2, 0};
  std::vector<float> w = {0.6f, 0.4f, 0.8f, 0.2f};
  EXPECT_EQ(SkipMinorExperts(2, 2, 0.5f, idx.data(), w.data()), 1);
  EXPECT_EQ(idx, (std::vector<int32_t>{3, 1, 2, -1}));
  EXPECT_FLOAT_EQ(w[0], 0.6f);
  EXPECT_FLOAT_EQ(w[1], 0.4f);
  EXPECT_FLOAT_EQ(w[2], 1.0f);
  EXPECT_EQ(w[3], 0.0f);

  // Unnormalized top-3 (sigmoid-like weights): the kept ones are scaled to
  // the original sum, 0.9 + 0.5 + 0.1 = 1.5.
  std::vector<int32_t> idx3 = {4, 5, 6};
  std::vector<float> w3 = {0.9f, 0.5f, 0.1f};
  EXPECT_EQ(SkipMinorExperts(1, 3, 0.3f, idx3.data(), w3.data()), 1);
  EXPECT_EQ(idx3, (std::vector<int32_t>{4, 5, -1}));
  EXPECT_FLOAT_EQ(w3[0], 0.9f * 1.5f / 1.4f);
  EXPECT_FLOAT_EQ(w3[1], 0.5f * 1.5f / 1.4f);

  // beta 0 skips nothing; beta 1 skips every slot but a token's first, unless tied.
  std::vector<int32_t> idx_none = {0, 1};
  std::vector<float> w_none = {0.5f, 0.5f};
  EXPECT_EQ(SkipMinorExperts(1, 2, 0.0f, idx_none.data(), w_none.data()), 0);
  EXPECT_EQ(SkipMinorExperts(1, 2, 1.0f, idx_none.data(), w_none.data()), 0);
  EXPECT_EQ(idx_none, (std::vector<int32_t>{0, 1}));
}

// The whole expert layer (permute, grouped FFN, combine) against a per-token
// reference, for routing patterns that stress the grouping.
TEST(MoeTest, GroupedFfnAndCombineMatchPerTokenReference) {
  const int64_t hidden = 64, ffn = 96, num_experts = 4;
  struct WeightFormat {
    std::string name;
    DType type;  // kQuant: `quant` below
    QuantFormat quant;
  };
  const std::vector<WeightFormat> formats = {
      {"F32", DType::kF32, {}},
      {"F16", DType::kF16, {}},
      {"Q8_0", DType::kQ8_0, {}},
      {"Q4_0", DType::kQ4_0, {}},
      {"int4-g32-asym", DType::kQuant, QuantFormat{4, false, 32, DType::kF16}},
      {"int2-ch-sym", DType::kQuant, QuantFormat{2, true, 0, DType::kBF16}},
  };
  for (const WeightFormat& format : formats) {
    const DType type = format.type;
    const auto store = [&](int64_t rows, int64_t cols, uint32_t seed) {
      return type == DType::kQuant ? StoreQuant(format.quant, rows, cols, seed)
                                   : Store(type, rows, cols, seed);
    };
    std::vector<StoredMatrix> gate, up, down;
    std::vector<PackedMatrix> packed;
    std::vector<ExpertFfnView> views;
    for (int e = 0; e < num_experts; ++e) {
      gate.push_back(store(ffn, hidden, 100 + e));
      up.push_back(store(ffn, hidden, 200 + e));
      down.push_back(store(hidden, ffn, 300 + e));
    }
    for (int e = 0; e < num_experts; ++e) {
      for (const StoredMatrix* m : {&gate[e], &up[e], &down[e]})
        packed.push_back(*PackMatrix(m->view));
    }
    for (int e = 0; e < num_experts; ++e) {
      views.push_back({&packed[3 * e], &packed[3 * e + 1], &packed[3 * e + 2]});
    }
    struct Pattern {
      const char* name;
      int64_t tokens, top_k;
      std::vector<int32_t> experts;
    };
    // 600 rows: passes of 256 rows, expert 1's 300 rows cut across two.
    std::vector<int32_t> long_step;
    for (int t = 0; t < 300; ++t) {
      long_step.push_back(1);
      long_step.push_back(std::array<int32_t, 3>{0, 2, 3}[t % 3]);
    }
    const std::vector<Pattern> patterns = {
        {"one token", 1, 2, {2, 0}},
        {"all on one expert", 5, 1, {1, 1, 1, 1, 1}},
        {"expert 3 idle", 3, 2, {0, 1, 1, 2, 2, 0}},
        {"top_k = num_experts", 2, 4, {3, 2, 1, 0, 0, 1, 2, 3}},
        // 15 rows per expert: each takes a padded token tile of the F16
        // kernel, 4 tiles in all where 60 rows on one expert would take 3.
        {"15 rows on every expert", 30, 2, {}},
        {"600 rows in 3 passes", 300, 2, long_step},
    };
    for (int threads : {1, 2}) {
      ThreadPool pool(threads);
      for (Pattern p : patterns) {
        if (p.experts.empty()) {
          for (int64_t slot = 0; slot < p.tokens * p.top_k; ++slot) {
            p.experts.push_back(static_cast<int32_t>(slot % num_experts));
          }
        }
        SCOPED_TRACE(testing::Message() << format.name << " threads=" << threads << " " << p.name);
        const int64_t slots = p.tokens * p.top_k;
        const auto x = Random(p.tokens * hidden, 11);
        const auto weights = Random(slots, 12);
        std::vector<int32_t> row_to_slot(slots), slot_to_row(slots), offsets(num_experts + 1);
        PermuteByExpert(p.experts.data(), slots, num_experts, row_to_slot.data(), offsets.data());
        std::vector<float> xs(slots * hidden), ys(slots * hidden);
        for (int64_t r = 0; r < slots; ++r) {
          slot_to_row[row_to_slot[r]] = static_cast<int32_t>(r);
          std::copy_n(x.data() + (row_to_slot[r] / p.top_k) * hidden, hidden,
                      xs.data() + r * hidden);
        }
        std::vector<uint8_t> ws(GroupedExpertFfnWorkspaceBytes(views[0], slots));
        ASSERT_TRUE(GroupedExpertFfn(views, offsets.data(), xs.data(), ys.data(), ws.data(),
                                     ws.size(), pool)
                        .ok());
        std::vector<float> out(p.tokens * hidden, 0.0f);
        CombineWeighted(ys.data(), slot_to_row.data(), weights.data(), p.tokens, p.top_k, hidden,
                        out.data());
        for (int64_t t = 0; t < p.tokens; ++t) {
          std::vector<double> expected(hidden, 0.0);
          const std::vector<float> xt(x.begin() + t * hidden, x.begin() + (t + 1) * hidden);
          for (int64_t j = 0; j < p.top_k; ++j) {
            const int e = p.experts[t * p.top_k + j];
            const auto g = ReferenceMatmul(gate[e].dequantized, ActivationsAsSeen(type, xt, hidden),
                                           1, ffn, hidden);
            const auto u = ReferenceMatmul(up[e].dequantized, ActivationsAsSeen(type, xt, hidden),
                                           1, ffn, hidden);
            std::vector<float> act(ffn);
            for (int64_t i = 0; i < ffn; ++i) act[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
            const auto d = ReferenceMatmul(down[e].dequantized, ActivationsAsSeen(type, act, ffn),
                                           1, hidden, ffn);
            for (int64_t i = 0; i < hidden; ++i) expected[i] += weights[t * p.top_k + j] * d[i];
          }
          for (int64_t i = 0; i < hidden; ++i) {
            ASSERT_NEAR(out[t * hidden + i], expected[i], 2e-3 * (1 + std::fabs(expected[i])))
                << "token " << t << " dim " << i;
          }
        }
      }
    }
  }
}

TEST(MoeTest, ExpertWithRowsButNoWeightsIsAnError) {
  ThreadPool pool(1);
  std::vector<ExpertFfnView> views(2);
  const std::vector<int32_t> offsets = {0, 0, 1};
  std::vector<float> x(8), y(8);
  const absl::Status status =
      GroupedExpertFfn(views, offsets.data(), x.data(), y.data(), nullptr, 0, pool);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("expert 1"), std::string::npos) << status;
}

TEST(SamplingTest, GreedyAndSeededTopP) {
  const std::vector<float> logits = {0.0f, 3.0f, 2.9f, -5.0f};
  EXPECT_EQ(ArgMax(logits.data(), 4), 1);
  std::vector<std::pair<float, int32_t>> scratch;
  std::mt19937_64 a(42), b(42);
  std::vector<int32_t> first, second;
  for (int i = 0; i < 50; ++i) {
    first.push_back(SampleTopP(logits.data(), 4, 1.0f, 0.9f, a, scratch));
    second.push_back(SampleTopP(logits.data(), 4, 1.0f, 0.9f, b, scratch));
  }
  EXPECT_EQ(first, second);
  // top_p 0.9 keeps ids 1 and 2 only (their mass is ~0.93).
  for (int32_t id : first) EXPECT_TRUE(id == 1 || id == 2) << id;
  EXPECT_NE(std::count(first.begin(), first.end(), 1), 50);
  std::mt19937_64 c(1);
  EXPECT_EQ(SampleTopP(logits.data(), 4, 0.0f, 1.0f, c, scratch), 1);  // temperature 0 = greedy
}

// The blocked ArgMax against one scalar pass: odd sizes, the maximum in the
// first, a middle and the last block, and ties inside and across blocks
// (the first index wins).
TEST(SamplingTest, ArgMaxIsTheFirstLargestOverSizesAndTies) {
  for (int64_t n : {1, 5, 63, 64, 65, 200, 32000}) {
    for (uint32_t seed : {1u, 2u, 3u}) {
      std::vector<float> logits = Random(n, seed);
      const int64_t scalar = std::max_element(logits.begin(), logits.end()) - logits.begin();
      EXPECT_EQ(ArgMax(logits.data(), n), scalar) << "n=" << n << " seed=" << seed;
      for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
        std::vector<float> tied = logits;
        tied[at] = 100.0f;
        tied[n - 1] = 100.0f;  // a later tie, in the same or a later block
        EXPECT_EQ(ArgMax(tied.data(), n), at) << "n=" << n << " at=" << at;
      }
    }
  }
  const std::vector<float> flat(130, -1.0f);
  EXPECT_EQ(ArgMax(flat.data(), 130), 0);
}

// Penalties in vLLM's order: repetition on every prompt or output token
// (dividing positive logits, multiplying negative ones), then frequency per
// occurrence and presence once per generated token.
TEST(SamplingTest, PenaltiesFollowVllm) {
  std::vector<float> logits = {2.0f, -1.0f, 0.5f, 4.0f, 1.0f};
  const std::vector<int32_t> prompt = {0, 1};
  const std::vector<int32_t> output = {3, 2, 3};
  std::vector<int32_t> scratch;
  ApplyPenalties(logits.data(), 5, prompt, output, 0.25f, 0.5f, 2.0f, scratch);
  EXPECT_FLOAT_EQ(logits[0], 1.0f);                     // prompt: 2 / 2
  EXPECT_FLOAT_EQ(logits[1], -2.0f);                    // prompt: -1 * 2
  EXPECT_FLOAT_EQ(logits[2], 0.25f - 0.5f - 0.25f);     // once: 0.5 / 2 - 0.5 - 0.25
  EXPECT_FLOAT_EQ(logits[3], 2.0f - 2 * 0.5f - 0.25f);  // twice: 4 / 2 - 1 - 0.25
  EXPECT_FLOAT_EQ(logits[4], 1.0f);                     // untouched
  std::vector<float> none = {2.0f, -1.0f};
  ApplyPenalties(none.data(), 2, prompt, {}, 0.0f, 0.0f, 1.0f, scratch);
  EXPECT_EQ(none, (std::vector<float>{2.0f, -1.0f}));
}

// top_k and min_p cut the sorted distribution before top_p: with top_k 1 or
// min_p 1 only the most likely token is drawn; with top_k 2 the draw covers
// the top two in proportion; min_p drops exactly the tokens below the floor;
// top_p's mass is that of what top_k left. Off (0), the results are top-p's.
TEST(SamplingTest, TopKAndMinPCutBeforeTopP) {
  // Probabilities (temperature 1): 0.4, 0.3, 0.2, 0.1 (as logits of their logs).
  const std::vector<float> logits = {std::log(0.2f), std::log(0.4f), std::log(0.1f),
                                     std::log(0.3f)};
  std::vector<std::pair<float, int32_t>> scratch;
  const auto draw = [&](double u, int32_t top_k, float min_p, float top_p = 1.0f) {
    return SampleTopPWithUniform(logits.data(), 4, 1.0f, top_p, u, scratch, top_k, min_p);
  };
  for (double u : {0.0, 0.3, 0.6, 0.999}) {
    EXPECT_EQ(draw(u, 1, 0.0f), 1) << u;
    EXPECT_EQ(draw(u, 0, 1.0f), 1) << u;
    EXPECT_EQ(draw(u, 0, 0.0f), SampleTopPWithUniform(logits.data(), 4, 1.0f, 1.0f, u, scratch))
        << u;
  }
  // top_k 2: 0.4 and 0.3, renormalised: u < 4/7 gives id 1, else id 3.
  EXPECT_EQ(draw(0.5, 2, 0.0f), 1);
  EXPECT_EQ(draw(0.6, 2, 0.0f), 3);
  // min_p 0.45: the floor is 0.18; 0.1 is dropped, 0.2 kept.
  EXPECT_EQ(draw(0.999, 0, 0.45f), 0);
  EXPECT_EQ(draw(0.999, 0, 0.6f), 3);  // floor 0.24: 0.2 dropped too
  // top_k 3 then top_p 0.7: the three hold 0.9; 0.7 of it is reached by 0.4 + 0.3.
  EXPECT_EQ(draw(0.999, 3, 0.0f, 0.7f), 3);
  EXPECT_EQ(draw(0.999, 3, 0.0f, 0.8f), 0);
}

// Log probabilities against a direct log softmax in long double, and the top
// k against a full sort (ties by lower id); they sum to 1 in probability.
TEST(SamplingTest, LogProbabilitiesAreTheLogSoftmaxAndItsTopK) {
  std::vector<std::pair<float, int32_t>> top;
  for (int64_t n : {1, 7, 32000}) {
    for (int k : {0, 1, 5, 20}) {
      if (k > n) continue;
      std::vector<float> logits = Random(n, 11);
      for (float& v : logits) v *= 8.0f;  // spread: probabilities from ~1 to ~0
      if (n > 3) logits[2] = logits[1];   // a tie
      long double sum = 0;
      const float max = *std::max_element(logits.begin(), logits.end());
      for (float v : logits) sum += std::exp(static_cast<long double>(v) - max);
      const auto want = [&](int64_t i) {
        return static_cast<double>(static_cast<long double>(logits[i]) - max - std::log(sum));
      };
      const int32_t chosen = static_cast<int32_t>(n / 2);
      const float got = LogProbabilities(logits.data(), n, chosen, k, top);
      EXPECT_NEAR(got, want(chosen), 1e-5) << "n=" << n << " k=" << k;
      std::vector<int32_t> order(n);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
      ASSERT_EQ(static_cast<int>(top.size()), k);
      for (int i = 0; i < k; ++i) {
        EXPECT_EQ(top[i].second, order[i]) << "n=" << n << " k=" << k << " rank " << i;
        EXPECT_NEAR(top[i].first, want(order[i]), 1e-5);
      }
    }
  }
  const std::vector<float> two = {0.0f, 0.0f};
  EXPECT_NEAR(LogProbabilities(two.data(), 2, 1, 2, top), std::log(0.5), 1e-7);
  EXPECT_EQ(top[0].second, 0);  // the tie goes to the lower id
}

TEST(EmbeddingTest, LooksUpAndRejectsOutOfRangeIds) {
  StoredMatrix table = Store(DType::kQ8_0, 10, 32, 5);
  const std::vector<int32_t> ids = {9, 0};
  std::vector<float> out(64);
  ASSERT_TRUE(EmbeddingLookup(table.view, ids.data(), 2, out.data()).ok());
  for (int i = 0; i < 32; ++i) EXPECT_EQ(out[i], table.dequantized[9 * 32 + i]);
  const std::vector<int32_t> bad = {10};
  EXPECT_FALSE(EmbeddingLookup(table.view, bad.data(), 1, out.data()).ok());
}

}  // namespace
}  // namespace herd::cpu
