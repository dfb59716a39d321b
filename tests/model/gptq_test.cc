// model/gptq: the Hessian accumulator, GPTQ against a direct implementation
// of the paper's update equations, against round to nearest on correlated and
// on uncorrelated inputs, the stored form of its results, and its errors.
#include "model/gptq.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "gtest/gtest.h"

namespace herd {
namespace {

std::vector<float> RandomMatrix(int64_t rows, int64_t cols, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> m(rows * cols);
  for (float& v : m) v = dist(rng);
  return m;
}

// Inputs x F32 [num_tokens, cols] with strongly correlated features: x = A z
// + small noise with z of dimension cols / 8 and A a random mixing matrix,
// plus a few channels with 8x the variance (activation outliers).
std::vector<float> CorrelatedInputs(int64_t num_tokens, int64_t cols, uint32_t seed) {
  const int64_t latent = cols / 8;
  const std::vector<float> a = RandomMatrix(cols, latent, seed, 1.0f / std::sqrt(latent));
  const std::vector<float> z = RandomMatrix(num_tokens, latent, seed + 1);
  const std::vector<float> noise = RandomMatrix(num_tokens, cols, seed + 2, 0.1f);
  std::vector<float> x(num_tokens * cols);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t c = 0; c < cols; ++c) {
      double v = noise[t * cols + c];
      for (int64_t k = 0; k < latent; ++k) v += a[c * latent + k] * z[t * latent + k];
      x[t * cols + c] = static_cast<float>(v) * (c % 37 == 5 ? 8.0f : 1.0f);
    }
  }
  return x;
}

HessianAccumulator HessianOf(const std::vector<float>& x, int64_t cols) {
  HessianAccumulator h(cols);
  h.Add(x.data(), static_cast<int64_t>(x.size()) / cols);
  return h;
}

// A quantized matrix in the unpacked form GptqQuantize writes.
struct Quantized {
  std::vector<uint8_t> codes;
  std::vector<QuantGroupParams> params;
};

Quantized Allocate(const QuantFormat& f, int64_t rows, int64_t cols) {
  return Quantized{std::vector<uint8_t>(rows * cols, 0xEE),
                   std::vector<QuantGroupParams>(rows * (cols / f.GroupLength(cols)))};
}

// Round to nearest, group by group (what QuantizeMatrixRtn packs).
Quantized Rtn(const QuantFormat& f, const std::vector<float>& w, int64_t rows, int64_t cols) {
  Quantized q = Allocate(f, rows, cols);
  const int64_t length = f.GroupLength(cols), groups = cols / length;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* values = w.data() + r * cols + g * length;
      q.params[r * groups + g] = ChooseGroupParams(f, values, length);
      for (int64_t i = 0; i < length; ++i) {
        q.codes[r * cols + g * length + i] = QuantizeValue(f, q.params[r * groups + g], values[i]);
      }
    }
  }
  return q;
}

Quantized Gptq(const QuantFormat& f, const std::vector<float>& w, int64_t rows, int64_t cols,
               const HessianAccumulator& h, const GptqOptions& options, GptqResult* result,
               ThreadPool* pool = nullptr) {
  Quantized q = Allocate(f, rows, cols);
  absl::StatusOr<GptqResult> r =
      GptqQuantize(f, w.data(), rows, cols, h, options, q.codes.data(), q.params.data(), pool);
  EXPECT_TRUE(r.ok()) << f.Name() << ": " << r.status();
  if (r.ok() && result != nullptr) *result = *r;
  return q;
}

double ErrorOf(const QuantFormat& f, const std::vector<float>& w, int64_t rows, int64_t cols,
               const Quantized& q, const HessianAccumulator& h) {
  return OutputError(f, w.data(), rows, cols, q.codes.data(), q.params.data(), h);
}

double FractionEqual(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  int64_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  return static_cast<double>(same) / static_cast<double>(a.size());
}

// GPTQ as the paper writes it, with nothing clever: an explicit inverse of the
// damped H (Gauss-Jordan), and after each column q the OBS update
//   w_j -= (w_q - quant(w_q)) * Hinv[q][j] / Hinv[q][q]
//   Hinv -= Hinv[:, q] Hinv[q, :] / Hinv[q][q]
// in the given column order, one row at a time. Group parameters as
// GptqQuantize documents: from the updated weights at the group's first
// column, or from the original weights when `static_groups`.
Quantized NaiveGptq(const QuantFormat& f, const std::vector<float>& w, int64_t rows, int64_t cols,
                    const HessianAccumulator& h, double damp, const std::vector<int64_t>& order,
                    bool static_groups) {
  const int64_t n = cols, length = f.GroupLength(cols), groups = cols / length;
  std::vector<double> hm(n * n);
  double mean = 0;
  for (int64_t i = 0; i < n * n; ++i) hm[i] = 2.0 * h.sum_xxt()[i] / h.num_rows();
  for (int64_t i = 0; i < n; ++i) mean += hm[i * n + i] / n;
  for (int64_t i = 0; i < n; ++i) hm[i * n + i] += damp * mean;
  // Gauss-Jordan on [H | I].
  std::vector<double> inv(n * n, 0.0);
  for (int64_t i = 0; i < n; ++i) inv[i * n + i] = 1;
  for (int64_t c = 0; c < n; ++c) {
    const double pivot = hm[c * n + c];
    for (int64_t j = 0; j < n; ++j) {
      hm[c * n + j] /= pivot;
      inv[c * n + j] /= pivot;
    }
    for (int64_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double factor = hm[r * n + c];
      for (int64_t j = 0; j < n; ++j) {
        hm[r * n + j] -= factor * hm[c * n + j];
        inv[r * n + j] -= factor * inv[c * n + j];
      }
    }
  }
  Quantized q = Allocate(f, rows, cols);
  if (static_groups) q = Rtn(f, w, rows, cols);
  std::vector<float> group(length);
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> hinv = inv;
    std::vector<double> wr(w.begin() + r * cols, w.begin() + (r + 1) * cols);
    for (int64_t step = 0; step < n; ++step) {
      const int64_t c = order[step];
      const int64_t g = c / length;
      if (!static_groups && c % length == 0) {
        for (int64_t k = 0; k < length; ++k) group[k] = static_cast<float>(wr[c + k]);
        q.params[r * groups + g] = ChooseGroupParams(f, group.data(), length);
      }
      const QuantGroupParams& p = q.params[r * groups + g];
      const uint8_t code = QuantizeValue(f, p, static_cast<float>(wr[c]));
      q.codes[r * cols + c] = code;
      const double err = (wr[c] - DequantizeValue(f, p, code)) / hinv[c * n + c];
      for (int64_t s = step + 1; s < n; ++s) wr[order[s]] -= err * hinv[c * n + order[s]];
      std::vector<double> col_c(n), row_c(n);
      for (int64_t i = 0; i < n; ++i) {
        col_c[i] = hinv[i * n + c];
        row_c[i] = hinv[c * n + i] / hinv[c * n + c];
      }
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) hinv[i * n + j] -= col_c[i] * row_c[j];
      }
    }
  }
  return q;
}

TEST(HessianAccumulatorTest, SumsOuterProductsAcrossCallsAndMerges) {
  const int64_t cols = 96, tokens = 300;  // more than one 256-row pass
  const std::vector<float> x = RandomMatrix(tokens, cols, 3);
  HessianAccumulator once(cols), split(cols), a(cols), b(cols);
  once.Add(x.data(), tokens);
  split.Add(x.data(), 100);
  split.Add(x.data() + 100 * cols, tokens - 100);
  split.Add(x.data(), 0);  // no-op
  a.Add(x.data(), 17);
  b.Add(x.data() + 17 * cols, tokens - 17);
  a.Merge(b);
  EXPECT_EQ(once.num_rows(), tokens);
  EXPECT_EQ(split.num_rows(), tokens);
  EXPECT_EQ(a.num_rows(), tokens);
  for (int64_t i = 0; i < cols; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      double expected = 0;
      for (int64_t t = 0; t < tokens; ++t) {
        expected += static_cast<double>(x[t * cols + i]) * x[t * cols + j];
      }
      const double tol = 1e-9 * (1 + std::fabs(expected));
      ASSERT_NEAR(once.sum_xxt()[i * cols + j], expected, tol) << i << ", " << j;
      ASSERT_NEAR(split.sum_xxt()[i * cols + j], expected, tol) << i << ", " << j;
      ASSERT_NEAR(a.sum_xxt()[i * cols + j], expected, tol) << i << ", " << j;
      ASSERT_EQ(once.sum_xxt()[i * cols + j], once.sum_xxt()[j * cols + i]);
    }
  }
}

// The blocked, Cholesky-based implementation gives the codes of the direct
// one (up to a rare rounding tie), for groups within a block, per channel
// across several lazy-batch blocks, and with act_order.
TEST(GptqTest, MatchesTheDirectUpdateEquations) {
  const int64_t rows = 12, cols = 128;
  const std::vector<float> w = RandomMatrix(rows, cols, 11);
  const HessianAccumulator h = HessianOf(CorrelatedInputs(512, cols, 12), cols);
  std::vector<int64_t> identity(cols);
  for (int64_t i = 0; i < cols; ++i) identity[i] = i;
  struct Case {
    QuantFormat format;
    int64_t block_size;
    bool act_order;
  };
  for (const Case& c :
       {Case{{4, true, 32, DType::kF16}, 128, false}, Case{{3, false, 32, DType::kBF16}, 64, false},
        Case{{4, true, 0, DType::kF16}, 16, false}, Case{{2, false, 0, DType::kF16}, 48, false},
        Case{{4, true, 32, DType::kF16}, 32, true}, Case{{3, false, 0, DType::kF16}, 16, true}}) {
    SCOPED_TRACE(c.format.Name() + " block " + std::to_string(c.block_size) +
                 (c.act_order ? " act_order" : ""));
    GptqOptions options;
    options.block_size = c.block_size;
    options.act_order = c.act_order;
    std::vector<int64_t> order = identity;
    if (c.act_order) {
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return h.sum_xxt()[a * cols + a] > h.sum_xxt()[b * cols + b];
      });
    }
    GptqResult result;
    const Quantized fast = Gptq(c.format, w, rows, cols, h, options, &result);
    const Quantized naive =
        NaiveGptq(c.format, w, rows, cols, h, options.damp_fraction, order, c.act_order);
    const double same = FractionEqual(fast.codes, naive.codes);
    std::printf("%s block %ld%s: %.2f%% of codes equal the direct implementation's\n",
                c.format.Name().c_str(), static_cast<long>(c.block_size),
                c.act_order ? " act_order" : "", 100 * same);
    EXPECT_GE(same, 0.99);
    const double fast_error = ErrorOf(c.format, w, rows, cols, fast, h);
    const double naive_error = ErrorOf(c.format, w, rows, cols, naive, h);
    EXPECT_NEAR(fast_error, naive_error, 0.01 * naive_error);
    EXPECT_NEAR(result.reconstruction_error, fast_error, 1e-6 * fast_error);
  }
}

std::vector<QuantFormat> SweepFormats() {
  std::vector<QuantFormat> formats;
  for (int bits : {8, 4, 3, 2}) {
    for (bool symmetric : {true, false}) {
      for (int group : {32, 128, 0}) formats.push_back({bits, symmetric, group, DType::kF16});
    }
  }
  return formats;
}

// The point of GPTQ: with correlated inputs, spreading each column's error
// over the rest lowers the layer-output error well below round to nearest.
TEST(GptqTest, BeatsRoundToNearestOnCorrelatedInputs) {
  const int64_t rows = 64, cols = 256;
  const std::vector<float> w = RandomMatrix(rows, cols, 21);
  const HessianAccumulator h = HessianOf(CorrelatedInputs(2048, cols, 22), cols);
  std::printf("%-22s %12s %12s %7s\n", "format", "RTN", "GPTQ", "ratio");
  for (const QuantFormat& f : SweepFormats()) {
    SCOPED_TRACE(f.Name());
    GptqResult result;
    const Quantized gptq = Gptq(f, w, rows, cols, h, GptqOptions(), &result);
    const double gptq_error = ErrorOf(f, w, rows, cols, gptq, h);
    const double rtn_error = ErrorOf(f, w, rows, cols, Rtn(f, w, rows, cols), h);
    std::printf("%-22s %12.5g %12.5g %7.3f\n", f.Name().c_str(), rtn_error, gptq_error,
                gptq_error / rtn_error);
    EXPECT_FALSE(result.used_rtn_fallback);
    EXPECT_EQ(result.damp_fraction_used, 0.01);
    EXPECT_NEAR(result.reconstruction_error, gptq_error, 1e-6 * gptq_error);
    EXPECT_LE(gptq_error, rtn_error);
    // A clear margin below 8 bits (observed ratios are printed above).
    if (f.bits < 8) {
      EXPECT_LT(gptq_error, 0.5 * rtn_error);
    }
  }
}

// With H exactly diagonal there is nothing to spread the error onto: the
// codes are round to nearest's, bit for bit.
TEST(GptqTest, EqualsRoundToNearestWhenHIsIdentity) {
  const int64_t rows = 32, cols = 128;
  const std::vector<float> w = RandomMatrix(rows, cols, 31);
  std::vector<float> eye(cols * cols, 0.0f);
  for (int64_t i = 0; i < cols; ++i) eye[i * cols + i] = 1.0f;
  const HessianAccumulator h = HessianOf(eye, cols);
  GptqOptions options;
  options.damp_fraction = 1e-6;
  for (const QuantFormat& f : SweepFormats()) {
    SCOPED_TRACE(f.Name());
    const Quantized gptq = Gptq(f, w, rows, cols, h, options, nullptr);
    const Quantized rtn = Rtn(f, w, rows, cols);
    EXPECT_EQ(gptq.codes, rtn.codes);
    for (size_t i = 0; i < rtn.params.size(); ++i) {
      ASSERT_EQ(gptq.params[i].scale, rtn.params[i].scale);
      ASSERT_EQ(gptq.params[i].min, rtn.params[i].min);
    }
  }
}

// Uncorrelated equal-variance inputs from samples: H is the identity up to
// sampling noise (off-diagonals ~ 1/sqrt(tokens)), so GPTQ moves only the
// codes that sat close to a rounding boundary.
TEST(GptqTest, NearlyEqualsRoundToNearestOnUncorrelatedInputs) {
  const int64_t rows = 32, cols = 128, tokens = 16384;
  const std::vector<float> w = RandomMatrix(rows, cols, 41);
  const HessianAccumulator h = HessianOf(RandomMatrix(tokens, cols, 42), cols);
  GptqOptions options;
  options.damp_fraction = 1e-6;
  for (const QuantFormat& f :
       {QuantFormat{4, true, 32, DType::kF16}, QuantFormat{3, false, 128, DType::kF16},
        QuantFormat{8, true, 0, DType::kBF16}}) {
    SCOPED_TRACE(f.Name());
    const Quantized gptq = Gptq(f, w, rows, cols, h, options, nullptr);
    const Quantized rtn = Rtn(f, w, rows, cols);
    const double same = FractionEqual(gptq.codes, rtn.codes);
    std::printf("%s: %.1f%% of codes equal RTN's\n", f.Name().c_str(), 100 * same);
    EXPECT_GE(same, 0.9);
    // And the error is RTN's within a few percent either way.
    const double gptq_error = ErrorOf(f, w, rows, cols, gptq, h);
    const double rtn_error = ErrorOf(f, w, rows, cols, rtn, h);
    EXPECT_NEAR(gptq_error, rtn_error, 0.05 * rtn_error);
  }
}

// Codes in range, scales and mins exactly representable in the scale type,
// and the packed matrix dequantizes to what DequantizeValue says.
TEST(GptqTest, ResultsPackIntoTheStoredFormat) {
  const int64_t rows = 20, cols = 256;  // 20 rows: a padded second row tile
  const std::vector<float> w = RandomMatrix(rows, cols, 51);
  const HessianAccumulator h = HessianOf(CorrelatedInputs(512, cols, 52), cols);
  for (int bits : {8, 4, 3, 2}) {
    for (bool symmetric : {true, false}) {
      for (int group : {32, 64, 128, 0}) {
        for (DType scale_type : {DType::kF16, DType::kBF16}) {
          const QuantFormat f{bits, symmetric, group, scale_type};
          SCOPED_TRACE(f.Name());
          GptqOptions options;
          options.act_order = bits == 3;  // static groups too
          const Quantized q = Gptq(f, w, rows, cols, h, options, nullptr);
          for (uint8_t code : q.codes) ASSERT_LE(code, f.MaxCode());
          const auto round_trip = [&](float v) {
            return scale_type == DType::kBF16 ? BF16ToF32(F32ToBF16(v)) : F16ToF32(F32ToF16(v));
          };
          for (const QuantGroupParams& p : q.params) {
            ASSERT_TRUE(std::isfinite(p.scale));
            ASSERT_EQ(round_trip(p.scale), p.scale);
            ASSERT_EQ(round_trip(p.min), p.min);
          }
          const QuantizedMatrixSizes sizes = QuantizedSizes(f, rows, cols);
          std::vector<uint8_t> packed(sizes.codes);
          std::vector<uint16_t> scales(sizes.scales / 2), mins(sizes.mins / 2);
          PackQuantizedMatrix(f, rows, cols, q.codes.data(), q.params.data(), packed.data(),
                              scales.data(), symmetric ? nullptr : mins.data());
          const QuantizedMatrixData data{packed.data(), scales.data(),
                                         symmetric ? nullptr : mins.data()};
          const int64_t length = f.GroupLength(cols);
          std::vector<float> row(cols);
          for (int64_t r = 0; r < rows; ++r) {
            DequantizeQuantizedRow(f, data, cols, r, row.data());
            for (int64_t c = 0; c < cols; ++c) {
              const QuantGroupParams& p = q.params[r * (cols / length) + c / length];
              ASSERT_EQ(row[c], DequantizeValue(f, p, q.codes[r * cols + c]))
                  << "row " << r << " col " << c;
            }
          }
        }
      }
    }
  }
}

// An expert no calibration token reached: round to nearest, byte for byte
// what QuantizeMatrixRtn stores.
TEST(GptqTest, FallsBackToRoundToNearestWithoutRows) {
  const int64_t rows = 16, cols = 128;
  const std::vector<float> w = RandomMatrix(rows, cols, 61);
  const HessianAccumulator empty(cols);
  for (const QuantFormat& f :
       {QuantFormat{4, true, 32, DType::kF16}, QuantFormat{2, false, 0, DType::kBF16}}) {
    SCOPED_TRACE(f.Name());
    GptqResult result;
    const Quantized q = Gptq(f, w, rows, cols, empty, GptqOptions(), &result);
    EXPECT_TRUE(result.used_rtn_fallback);
    EXPECT_EQ(result.reconstruction_error, 0);
    EXPECT_EQ(q.codes, Rtn(f, w, rows, cols).codes);
    const QuantizedMatrixSizes sizes = QuantizedSizes(f, rows, cols);
    std::vector<uint8_t> packed(sizes.codes), rtn_packed(sizes.codes);
    std::vector<uint16_t> scales(sizes.scales / 2), rtn_scales(sizes.scales / 2);
    std::vector<uint16_t> mins(sizes.mins / 2), rtn_mins(sizes.mins / 2);
    uint16_t* mins_out = f.symmetric ? nullptr : mins.data();
    uint16_t* rtn_mins_out = f.symmetric ? nullptr : rtn_mins.data();
    PackQuantizedMatrix(f, rows, cols, q.codes.data(), q.params.data(), packed.data(),
                        scales.data(), mins_out);
    QuantizeMatrixRtn(f, w.data(), rows, cols, rtn_packed.data(), rtn_scales.data(), rtn_mins_out);
    EXPECT_EQ(packed, rtn_packed);
    EXPECT_EQ(scales, rtn_scales);
    EXPECT_EQ(mins, rtn_mins);
  }
}

// Input columns that are 0 in every calibration token: finite results, and
// (as documented) their codes are round to nearest of the original weights
// under their group's parameters.
TEST(GptqTest, DeadInputColumnsStayFiniteAndKeepTheirWeights) {
  const int64_t rows = 24, cols = 128, tokens = 400;
  const std::vector<float> w = RandomMatrix(rows, cols, 71);
  std::vector<float> x = CorrelatedInputs(tokens, cols, 72);
  const std::vector<int64_t> dead = {0, 5, 31, 32, 100, 127};
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c : dead) x[t * cols + c] = 0.0f;
  }
  const HessianAccumulator h = HessianOf(x, cols);
  for (bool act_order : {false, true}) {
    for (const QuantFormat& f :
         {QuantFormat{4, true, 32, DType::kF16}, QuantFormat{3, false, 0, DType::kF16}}) {
      SCOPED_TRACE(f.Name() + (act_order ? " act_order" : ""));
      GptqOptions options;
      options.act_order = act_order;
      GptqResult result;
      const Quantized q = Gptq(f, w, rows, cols, h, options, &result);
      const double error = ErrorOf(f, w, rows, cols, q, h);
      ASSERT_TRUE(std::isfinite(result.reconstruction_error));
      EXPECT_NEAR(result.reconstruction_error, error, 1e-6 * error);
      EXPECT_LT(error, ErrorOf(f, w, rows, cols, Rtn(f, w, rows, cols), h));
      const int64_t length = f.GroupLength(cols);
      for (const QuantGroupParams& p : q.params) {
        ASSERT_TRUE(std::isfinite(p.scale) && std::isfinite(p.min));
      }
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c : dead) {
          const QuantGroupParams& p = q.params[r * (cols / length) + c / length];
          EXPECT_EQ(q.codes[r * cols + c], QuantizeValue(f, p, w[r * cols + c]))
              << "row " << r << " col " << c;
        }
      }
    }
  }
  // All inputs dead: nothing to learn from; still finite, zero error.
  const HessianAccumulator zeros = HessianOf(std::vector<float>(10 * cols, 0.0f), cols);
  GptqResult result;
  const QuantFormat f{4, true, 128, DType::kF16};
  const Quantized q = Gptq(f, w, rows, cols, zeros, GptqOptions(), &result);
  EXPECT_FALSE(result.used_rtn_fallback);
  EXPECT_NEAR(result.reconstruction_error, 0, 1e-12);  // S = 0; up to rounding
  EXPECT_EQ(q.codes, Rtn(f, w, rows, cols).codes);
}

// act_order on correlated inputs with outlier channels. Observed: it lowers
// the error further than plain GPTQ for every format checked here (the
// printed ratios); we assert that, and that it beats RTN. With static groups
// this need not hold for every matrix, since the groups' parameters no
// longer follow the updated weights.
TEST(GptqTest, ActOrderHelpsOnOutlierChannels) {
  const int64_t rows = 64, cols = 256;
  const std::vector<float> w = RandomMatrix(rows, cols, 81);
  const HessianAccumulator h = HessianOf(CorrelatedInputs(2048, cols, 82), cols);
  GptqOptions act;
  act.act_order = true;
  for (const QuantFormat& f :
       {QuantFormat{4, true, 128, DType::kF16}, QuantFormat{4, false, 32, DType::kF16},
        QuantFormat{3, true, 0, DType::kF16}, QuantFormat{2, false, 128, DType::kF16}}) {
    SCOPED_TRACE(f.Name());
    const double rtn_error = ErrorOf(f, w, rows, cols, Rtn(f, w, rows, cols), h);
    const double plain_error =
        ErrorOf(f, w, rows, cols, Gptq(f, w, rows, cols, h, GptqOptions(), nullptr), h);
    const double act_error = ErrorOf(f, w, rows, cols, Gptq(f, w, rows, cols, h, act, nullptr), h);
    std::printf("%s: RTN %.5g GPTQ %.5g GPTQ+act_order %.5g\n", f.Name().c_str(), rtn_error,
                plain_error, act_error);
    EXPECT_LT(act_error, rtn_error);
    EXPECT_LE(act_error, plain_error);
  }
}

TEST(GptqTest, ThreadPoolGivesTheSameResult) {
  const int64_t rows = 200, cols = 384;
  const std::vector<float> w = RandomMatrix(rows, cols, 91);
  const HessianAccumulator h = HessianOf(CorrelatedInputs(700, cols, 92), cols);
  const QuantFormat f{4, false, 64, DType::kF16};
  ThreadPool pool(3);
  GptqResult serial_result, pooled_result;
  const Quantized serial = Gptq(f, w, rows, cols, h, GptqOptions(), &serial_result);
  const Quantized pooled = Gptq(f, w, rows, cols, h, GptqOptions(), &pooled_result, &pool);
  EXPECT_EQ(serial.codes, pooled.codes);
  EXPECT_EQ(serial_result.reconstruction_error, pooled_result.reconstruction_error);
  EXPECT_EQ(
      ErrorOf(f, w, rows, cols, serial, h),
      OutputError(f, w.data(), rows, cols, serial.codes.data(), serial.params.data(), h, &pool));
}

TEST(GptqTest, BadArgumentsAreInvalidArgumentNamingTheProblem) {
  const QuantFormat f{4, true, 32, DType::kF16};
  const int64_t rows = 4, cols = 64;
  std::vector<float> w = RandomMatrix(rows, cols, 101);
  const HessianAccumulator h = HessianOf(RandomMatrix(50, cols, 102), cols);
  std::vector<uint8_t> codes(rows * 128);
  std::vector<QuantGroupParams> params(rows * 4);
  const auto expect_error = [&](const absl::StatusOr<GptqResult>& r, const std::string& needle) {
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status();
  };
  const GptqOptions ok;
  // Row length not a multiple of 32, and of the group.
  const HessianAccumulator h48(48);
  expect_error(GptqQuantize(f, w.data(), rows, 48, h48, ok, codes.data(), params.data()),
               "does not fit int4-g32-sym-f16");
  expect_error(GptqQuantize(QuantFormat{4, true, 128, DType::kF16}, w.data(), rows, cols, h, ok,
                            codes.data(), params.data()),
               "does not fit int4-g128-sym-f16");
  expect_error(GptqQuantize(f, w.data(), 0, cols, h, ok, codes.data(), params.data()),
               "rows must be positive");
  expect_error(GptqQuantize(QuantFormat{5, true, 32, DType::kF16}, w.data(), rows, cols, h, ok,
                            codes.data(), params.data()),
               "bits");
  const HessianAccumulator h128(128);
  expect_error(GptqQuantize(f, w.data(), rows, cols, h128, ok, codes.data(), params.data()),
               "Hessian is over 128 input columns but W [4, 64] has 64");
  GptqOptions bad = ok;
  bad.block_size = 0;
  expect_error(GptqQuantize(f, w.data(), rows, cols, h, bad, codes.data(), params.data()),
               "block_size");
  bad = ok;
  bad.damp_fraction = -0.5;
  expect_error(GptqQuantize(f, w.data(), rows, cols, h, bad, codes.data(), params.data()),
               "damp_fraction");
  w[2 * cols + 7] = std::nanf("");
  expect_error(GptqQuantize(f, w.data(), rows, cols, h, ok, codes.data(), params.data()),
               "NaN or inf at row 2, column 7");
  w[2 * cols + 7] = 0.0f;
  std::vector<float> x = RandomMatrix(10, cols, 103);
  x[3] = INFINITY;
  const HessianAccumulator h_inf = HessianOf(x, cols);
  expect_error(GptqQuantize(f, w.data(), rows, cols, h_inf, ok, codes.data(), params.data()),
               "calibration inputs hold NaN or inf");
}

// Fewer tokens than columns: H is singular and only the damping makes it
// positive definite; with no damping asked for, GptqQuantize raises it.
TEST(GptqTest, RaisesTheDampingWhenTheHessianIsSingular) {
  const int64_t rows = 8, cols = 128;
  const std::vector<float> w = RandomMatrix(rows, cols, 111);
  const HessianAccumulator h = HessianOf(RandomMatrix(20, cols, 112), cols);
  GptqOptions options;
  options.damp_fraction = 0;
  GptqResult result;
  const QuantFormat f{4, true, 32, DType::kF16};
  const Quantized q = Gptq(f, w, rows, cols, h, options, &result);
  EXPECT_GT(result.damp_fraction_used, 0);
  EXPECT_TRUE(std::isfinite(result.reconstruction_error));
  EXPECT_LE(ErrorOf(f, w, rows, cols, q, h), ErrorOf(f, w, rows, cols, Rtn(f, w, rows, cols), h));
}

// Timing of the mid-size model's expert shapes; set HERD_GPTQ_TIMING=1 to run.
TEST(GptqTest, TimingOfMidSizeExpert) {
  if (std::getenv("HERD_GPTQ_TIMING") == nullptr) GTEST_SKIP() << "set HERD_GPTQ_TIMING=1";
  const QuantFormat f{4, true, 128, DType::kF16};
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{2816, 1024}, {1024, 2816}}) {
    const std::vector<float> w = RandomMatrix(rows, cols, 121, 0.02f);
    const auto h_start = std::chrono::steady_clock::now();
    const HessianAccumulator h = HessianOf(RandomMatrix(512, cols, 122), cols);
    const auto start = std::chrono::steady_clock::now();
    GptqResult result;
    const Quantized q = Gptq(f, w, rows, cols, h, GptqOptions(), &result);
    const auto end = std::chrono::steady_clock::now();
    ThreadPool pool(ThreadPool::DefaultNumThreads());
    const Quantized pooled = Gptq(f, w, rows, cols, h, GptqOptions(), nullptr, &pool);
    const auto pooled_end = std::chrono::steady_clock::now();
    std::printf(
        "W [%ld, %ld]: Hessian of 512 tokens %.2f s, GptqQuantize %.2f s (1 thread), %.2f s "
        "(%d threads)\n",
        static_cast<long>(rows), static_cast<long>(cols),
        std::chrono::duration<double>(start - h_start).count(),
        std::chrono::duration<double>(end - start).count(),
        std::chrono::duration<double>(pooled_end - end).count(), pool.num_threads());
    EXPECT_EQ(q.codes, pooled.codes);
  }
}

}  // namespace
}  // namespace herd
