#include "model/gptq.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd {
namespace {

// Tiles of the products below: a [kTileK, kTileJ] block of B (512 KiB) stays
// in L2 while every row of A and C passes over it.
constexpr int64_t kTileJ = 512;
constexpr int64_t kTileK = 128;
// Rows of W (or of a triangular factor) per unit of work.
constexpr int64_t kRowChunk = 64;
// Columns per panel of the blocked Cholesky and triangular inverse.
constexpr int64_t kPanel = 64;
// Smallest pivot accepted, relative to the diagonal entry it came from.
constexpr double kMinRelativePivot = 1e-10;
// Times the damping is multiplied by 10 when the Cholesky fails.
constexpr int kMaxDampingRetries = 4;

// C [m, n] -= A [m, k] * B [k, n], all row-major with leading dimensions.
// Skips zero entries of A (triangular operands, dead inputs).
void MultiplySubtract(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
                      const double* b, int64_t ldb, double* c, int64_t ldc) {
  for (int64_t j0 = 0; j0 < n; j0 += kTileJ) {
    const int64_t jn = std::min(kTileJ, n - j0);
    for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
      const int64_t k1 = std::min(k0 + kTileK, k);
      for (int64_t i = 0; i < m; ++i) {
        double* __restrict crow = c + i * ldc + j0;
        const double* arow = a + i * lda;
        int64_t kk = k0;
        for (; kk + 4 <= k1; kk += 4) {
          const double a0 = arow[kk], a1 = arow[kk + 1], a2 = arow[kk + 2], a3 = arow[kk + 3];
          if (a0 == 0 && a1 == 0 && a2 == 0 && a3 == 0) continue;
          const double* __restrict b0 = b + kk * ldb + j0;
          const double* __restrict b1 = b0 + ldb;
          const double* __restrict b2 = b1 + ldb;
          const double* __restrict b3 = b2 + ldb;
          for (int64_t j = 0; j < jn; ++j) {
            crow[j] -= a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
          }
        }
        for (; kk < k1; ++kk) {
          const double a0 = arow[kk];
          if (a0 == 0) continue;
          const double* __restrict b0 = b + kk * ldb + j0;
          for (int64_t j = 0; j < jn; ++j) crow[j] -= a0 * b0[j];
        }
      }
    }
  }
}

// Runs body(begin, end) over [0, n) in pieces of `grain`, on the pool if any.
void ForRange(ThreadPool* pool, int64_t n, int64_t grain,
              const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  if (pool == nullptr || pool->num_threads() == 1 || n <= grain) {
    body(0, n);
    return;
  }
  pool->ParallelFor(n, grain, [&](int64_t begin, int64_t end, int) { body(begin, end); });
}

// In-place upper Cholesky of the symmetric M F64 [n, n] (upper triangle
// read): M = R^T R, R upper, written over the upper triangle; the strict lower
// triangle is zeroed. False when M is not (numerically) positive definite.
bool CholeskyUpper(double* m, int64_t n, ThreadPool* pool) {
  // A pivot this small relative to its diagonal entry is cancellation noise of
  // a singular matrix, not a positive number: fail so that the damping rises.
  std::vector<double> original_diag(n);
  for (int64_t i = 0; i < n; ++i) original_diag[i] = m[i * n + i];
  std::vector<double> panel_t;  // F64 [n - k1, kPanel]: the panel's rows, transposed
  for (int64_t k0 = 0; k0 < n; k0 += kPanel) {
    const int64_t k1 = std::min(k0 + kPanel, n);
    // Factor the panel rows over the full width.
    for (int64_t k = k0; k < k1; ++k) {
      double* rk = m + k * n;
      const double d = rk[k];
      if (!(d > kMinRelativePivot * original_diag[k]) || !std::isfinite(d)) return false;
      const double r = std::sqrt(d);
      rk[k] = r;
      const double inv = 1.0 / r;
      for (int64_t j = k + 1; j < n; ++j) rk[j] *= inv;
      for (int64_t i = k + 1; i < k1; ++i) {
        const double a = rk[i];
        if (a == 0) continue;
        double* __restrict ri = m + i * n;
        for (int64_t j = i; j < n; ++j) ri[j] -= a * rk[j];
      }
    }
    if (k1 == n) break;
    // Trailing update of the upper triangle: M[i][j] -= sum_k R[k][i] R[k][j].
    const int64_t width = k1 - k0;
    const int64_t trail = n - k1;
    panel_t.assign(trail * width, 0.0);
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t i = k1; i < n; ++i) panel_t[(i - k1) * width + (k - k0)] = m[k * n + i];
    }
    const int64_t num_chunks = (trail + kRowChunk - 1) / kRowChunk;
    ForRange(pool, num_chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        const int64_t i0 = k1 + chunk * kRowChunk;
        const int64_t rows = std::min(kRowChunk, n - i0);
        // Also touches the strict lower triangle of the diagonal block; never read.
        MultiplySubtract(rows, n - i0, width, panel_t.data() + (i0 - k1) * width, width,
                         m + k0 * n + i0, n, m + i0 * n + i0, n);
      }
    });
  }
  for (int64_t i = 1; i < n; ++i) std::fill(m + i * n, m + i * n + i, 0.0);
  return true;
}

// In-place inverse of the upper-triangular R F64 [n, n] with a positive
// diagonal. Panels of rows from the bottom up: X[P, :] = R_PP^-1 (I - R[P, >P]
// X[>P, :]), where the rows below P already hold X.
void InvertUpper(double* m, int64_t n, ThreadPool* pool) {
  std::vector<double> t;       // F64 [kPanel, n - p1]: -R[P, >P] X[>P, >P]
  std::vector<double> diag;    // F64 [kPanel, kPanel]: R_PP
  std::vector<double> row(n);  // one row of X being formed
  const int64_t last_start = ((n - 1) / kPanel) * kPanel;
  for (int64_t p0 = last_start; p0 >= 0; p0 -= kPanel) {
    const int64_t p1 = std::min(p0 + kPanel, n);
    const int64_t width = p1 - p0;
    const int64_t rest = n - p1;
    t.assign(width * rest, 0.0);
    if (rest > 0) {
      // X[>P] is upper triangular: k-tile [k0, k1) only reaches columns >= k0.
      const int64_t num_chunks = (rest + kTileJ - 1) / kTileJ;
      ForRange(pool, num_chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t chunk = begin; chunk < end; ++chunk) {
          const int64_t c0 = chunk * kTileJ;  // columns [c0, c1) of t, i.e. p1 + c0 of X
          const int64_t c1 = std::min(c0 + kTileJ, rest);
          for (int64_t k0 = 0; k0 < c1; k0 += kTileK) {
            const int64_t k1 = std::min(k0 + kTileK, c1);
            const int64_t jb = std::max(c0, k0);
            MultiplySubtract(width, c1 - jb, k1 - k0, m + p0 * n + p1 + k0, n,
                             m + (p1 + k0) * n + p1 + jb, n, t.data() + jb, rest);
          }
        }
      });
    }
    diag.assign(width * width, 0.0);
    for (int64_t i = 0; i < width; ++i) {
      for (int64_t k = i; k < width; ++k) diag[i * width + k] = m[(p0 + i) * n + p0 + k];
    }
    for (int64_t i = p1 - 1; i >= p0; --i) {
      const int64_t li = i - p0;
      std::fill(row.begin() + i, row.end(), 0.0);
      row[i] = 1.0;
      for (int64_t j = p1; j < n; ++j) row[j] = t[li * rest + (j - p1)];
      for (int64_t k = i + 1; k < p1; ++k) {
        const double a = diag[li * width + (k - p0)];
        if (a == 0) continue;
        const double* __restrict xk = m + k * n;
        for (int64_t j = k; j < n; ++j) row[j] -= a * xk[j];
      }
      const double inv = 1.0 / diag[li * width + li];
      double* xi = m + i * n;
      for (int64_t j = i; j < n; ++j) xi[j] = row[j] * inv;
    }
  }
}

// InvalidArgument naming the first argument GptqQuantize cannot take.
absl::Status ValidateGptqArguments(const QuantFormat& format, const float* w, int64_t rows,
                                   int64_t cols, const HessianAccumulator& hessian,
                                   const GptqOptions& options) {
  HERD_RETURN_IF_ERROR(format.ValidateShape(rows, cols));
  if (hessian.cols() != cols) {
    return absl::InvalidArgumentError(absl::StrCat("GPTQ: the Hessian is over ", hessian.cols(),
                                                   " input columns but W [", rows, ", ", cols,
                                                   "] has ", cols));
  }
  if (!(options.damp_fraction >= 0) || !std::isfinite(options.damp_fraction)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPTQ: damp_fraction must be finite and >= 0, got ", options.damp_fraction));
  }
  if (options.block_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPTQ: block_size must be >= 1, got ", options.block_size));
  }
  for (int64_t i = 0; i < rows * cols; ++i) {
    if (!std::isfinite(w[i])) {
      return absl::InvalidArgumentError(absl::StrCat("GPTQ: W [", rows, ", ", cols,
                                                     "] holds a NaN or inf at row ", i / cols,
                                                     ", column ", i % cols));
    }
  }
  return absl::OkStatus();
}

}  // namespace

HessianAccumulator::HessianAccumulator(int64_t cols)
    : cols_(cols), sum_xxt_(static_cast<size_t>(cols * cols), 0.0) {
  HERD_CHECK(cols > 0);
}

void HessianAccumulator::Add(const float* x, int64_t rows) {
  if (rows <= 0) return;
  const int64_t n = cols_;
  constexpr int64_t kRowsPerPass = 256;
  std::vector<double> xd;   // F64 [chunk, n]
  std::vector<double> xtn;  // F64 [n, chunk]: -x^T, so that MultiplySubtract adds
  for (int64_t r0 = 0; r0 < rows; r0 += kRowsPerPass) {
    const int64_t chunk = std::min(kRowsPerPass, rows - r0);
    xd.resize(chunk * n);
    xtn.resize(n * chunk);
    for (int64_t r = 0; r < chunk; ++r) {
      for (int64_t c = 0; c < n; ++c) {
        const double v = x[(r0 + r) * n + c];
        xd[r * n + c] = v;
        xtn[c * chunk + r] = -v;
      }
    }
    // Upper triangle (plus the lower part of each diagonal block, which the
    // mirroring below overwrites): S[i][j] += sum_r x[r][i] x[r][j].
    for (int64_t i0 = 0; i0 < n; i0 += kRowChunk) {
      const int64_t num = std::min(kRowChunk, n - i0);
      MultiplySubtract(num, n - i0, chunk, xtn.data() + i0 * chunk, chunk, xd.data() + i0, n,
                       sum_xxt_.data() + i0 * n + i0, n);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < i; ++j) sum_xxt_[i * n + j] = sum_xxt_[j * n + i];
  }
  num_rows_ += rows;
}

void HessianAccumulator::Merge(const HessianAccumulator& other) {
  HERD_CHECK(other.cols_ == cols_);
  for (size_t i = 0; i < sum_xxt_.size(); ++i) sum_xxt_[i] += other.sum_xxt_[i];
  num_rows_ += other.num_rows_;
}

absl::StatusOr<GptqResult> GptqQuantize(const QuantFormat& format, const float* w, int64_t rows,
                                        int64_t cols, const HessianAccumulator& hessian,
                                        const GptqOptions& options, uint8_t* codes,
                                        QuantGroupParams* params, ThreadPool* pool) {
  HERD_RETURN_IF_ERROR(ValidateGptqArguments(format, w, rows, cols, hessian, options));
  GptqResult result;
  if (hessian.num_rows() == 0) {
    QuantizeCodesRtn(format, w, rows, cols, codes, params);
    result.used_rtn_fallback = true;
    return result;
  }
  const int64_t n = cols;
  const int64_t group_length = format.GroupLength(cols);
  const int64_t groups = cols / group_length;
  const std::vector<double>& s = hessian.sum_xxt();
  const double to_h = 2.0 / static_cast<double>(hessian.num_rows());

  // H = 2/n S; dead columns get the mean live diagonal (they stay decoupled).
  std::vector<double> diag(n);
  std::vector<bool> dead(n);
  double live_sum = 0;
  int64_t num_live = 0;
  for (int64_t i = 0; i < n; ++i) {
    diag[i] = to_h * s[i * n + i];
    dead[i] = diag[i] == 0;
    if (!dead[i]) {
      live_sum += diag[i];
      ++num_live;
    }
  }
  const double dead_diag = num_live > 0 ? live_sum / static_cast<double>(num_live) : 1.0;
  for (int64_t i = 0; i < n; ++i) {
    if (dead[i]) diag[i] = dead_diag;
  }
  const double mean_diag = std::accumulate(diag.begin(), diag.end(), 0.0) / static_cast<double>(n);
  if (!std::isfinite(mean_diag)) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPTQ: the Hessian over ", n, " columns from ", hessian.num_rows(),
                     " rows has a NaN or inf diagonal: the calibration inputs hold NaN or inf"));
  }

  // perm[i] = the original column quantized i-th.
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  if (options.act_order) {
    std::stable_sort(perm.begin(), perm.end(),
                     [&](int64_t a, int64_t b) { return diag[a] > diag[b]; });
  }

  // U = the upper Cholesky factor of (P H P^T + lambda I)^-1, via the Cholesky
  // R of the index-reversed matrix: with J the reversal, H' = J R^T R J =
  // V V^T with V = J R^T J upper, and U = V^-1 = J R^-T J.
  std::vector<double> u(static_cast<size_t>(n * n));
  double damp_fraction = options.damp_fraction;
  bool factored = false;
  for (int attempt = 0; attempt <= kMaxDampingRetries && !factored; ++attempt) {
    if (attempt > 0) damp_fraction = std::max(damp_fraction * 10, 1e-6);
    const double lambda = damp_fraction * mean_diag;
    ForRange(pool, n, kRowChunk, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t pi = perm[n - 1 - i];
        for (int64_t j = i; j < n; ++j) {
          const int64_t pj = perm[n - 1 - j];
          u[i * n + j] =
              pi == pj ? diag[pi] + lambda : (dead[pi] || dead[pj] ? 0.0 : to_h * s[pi * n + pj]);
        }
      }
    });
    factored = CholeskyUpper(u.data(), n, pool);
  }
  if (!factored) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPTQ: the Hessian over ", n, " columns from ", hessian.num_rows(),
                     " rows is not positive definite even with damping ", damp_fraction,
                     " * mean(diag H); are there NaN or inf values off its diagonal?"));
  }
  const double lambda = damp_fraction * mean_diag;
  result.damp_fraction_used = damp_fraction;
  InvertUpper(u.data(), n, pool);
  // U = J X^T J: U[i][j] = X[n-1-j][n-1-i], a reflection across the anti-diagonal.
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i; i + j < n - 1; ++j)
      std::swap(u[i * n + j], u[(n - 1 - j) * n + (n - 1 - i)]);
  }

  // Static groups (act_order): every group's parameters from the original weights.
  const bool static_groups = options.act_order;
  if (static_groups) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        params[r * groups + g] =
            ChooseGroupParams(format, w + r * cols + g * group_length, group_length);
      }
    }
  }
  // A group never straddles blocks: with groups, blocks are whole groups.
  int64_t block = options.block_size;
  if (format.group_size != 0) block = std::max<int64_t>(1, block / group_length) * group_length;
  block = std::min(block, n);

  // The sweep, independently per chunk of rows. Per chunk: sum of e^2 and of
  // (w - q)^2 over all columns and over dead ones, for the error identity.
  const int64_t num_chunks = (rows + kRowChunk - 1) / kRowChunk;
  std::vector<double> sum_e2(num_chunks, 0.0), sum_d2(num_chunks, 0.0),
      sum_dead_d2(num_chunks, 0.0);
  ForRange(pool, num_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> wd;  // F64 [chunk_rows, n], columns in sweep order
    std::vector<double> e;   // F64 [chunk_rows, block]: scaled errors of the block
    std::vector<float> group_values(group_length);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t r0 = chunk * kRowChunk;
      const int64_t nr = std::min(kRowChunk, rows - r0);
      wd.resize(nr * n);
      e.assign(nr * block, 0.0);
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t i = 0; i < n; ++i) wd[r * n + i] = w[(r0 + r) * cols + perm[i]];
      }
      double chunk_e2 = 0;
      for (int64_t i1 = 0; i1 < n; i1 += block) {
        const int64_t i2 = std::min(i1 + block, n);
        for (int64_t i = i1; i < i2; ++i) {
          const int64_t col = perm[i];
          const int64_t g = col / group_length;
          if (!static_groups && i % group_length == 0) {
            // Without act_order perm is the identity: the group is [i, i + length).
            for (int64_t r = 0; r < nr; ++r) {
              for (int64_t k = 0; k < group_length; ++k) {
                group_values[k] = static_cast<float>(wd[r * n + i + k]);
              }
              params[(r0 + r) * groups + g] =
                  ChooseGroupParams(format, group_values.data(), group_length);
            }
          }
          const double* __restrict urow = u.data() + i * n;
          const double inv_uii = 1.0 / urow[i];
          for (int64_t r = 0; r < nr; ++r) {
            const QuantGroupParams& p = params[(r0 + r) * groups + g];
            double* __restrict wr = wd.data() + r * n;
            const uint8_t code = QuantizeValue(format, p, static_cast<float>(wr[i]));
            codes[(r0 + r) * cols + col] = code;
            const double err = (wr[i] - DequantizeValue(format, p, code)) * inv_uii;
            e[r * block + (i - i1)] = err;
            chunk_e2 += err * err;
            for (int64_t j = i + 1; j < i2; ++j) wr[j] -= err * urow[j];
          }
        }
        if (i2 < n) {
          MultiplySubtract(nr, n - i2, i2 - i1, e.data(), block, u.data() + i1 * n + i2, n,
                           wd.data() + i2, n);
        }
      }
      double chunk_d2 = 0, chunk_dead_d2 = 0;
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t at = (r0 + r) * cols + c;
          const double d =
              static_cast<double>(w[at]) -
              DequantizeValue(format, params[(r0 + r) * groups + c / group_length], codes[at]);
          chunk_d2 += d * d;
          if (dead[c]) chunk_dead_d2 += d * d;
        }
      }
      sum_e2[chunk] = chunk_e2;
      sum_d2[chunk] = chunk_d2;
      sum_dead_d2[chunk] = chunk_dead_d2;
    }
  });
  // With D = W - Q and E the scaled errors, D = E U, and U H_used U^T = I, so
  // sum_rows d H_used d^T = ||E||^2; H_used = H + lambda I + the dead diagonal.
  // The mean over rows of ||D x||^2 is sum_rows d H d^T / 2.
  double total_e2 = 0, total_d2 = 0, total_dead_d2 = 0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    total_e2 += sum_e2[c];
    total_d2 += sum_d2[c];
    total_dead_d2 += sum_dead_d2[c];
  }
  result.reconstruction_error =
      std::max(0.0, 0.5 * (total_e2 - lambda * total_d2 - dead_diag * total_dead_d2));
  return result;
}

double OutputError(const QuantFormat& format, const float* w, int64_t rows, int64_t cols,
                   const uint8_t* codes, const QuantGroupParams* params,
                   const HessianAccumulator& hessian, ThreadPool* pool) {
  HERD_CHECK(hessian.cols() == cols);
  if (hessian.num_rows() == 0) return 0;
  const int64_t group_length = format.GroupLength(cols);
  const int64_t groups = cols / group_length;
  const std::vector<double>& s = hessian.sum_xxt();
  const int64_t num_chunks = (rows + kRowChunk - 1) / kRowChunk;
  std::vector<double> sums(num_chunks, 0.0);
  ForRange(pool, num_chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> d, t;  // F64 [chunk_rows, cols]: W - Q and -(W - Q) S
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t r0 = chunk * kRowChunk;
      const int64_t nr = std::min(kRowChunk, rows - r0);
      d.resize(nr * cols);
      t.assign(nr * cols, 0.0);
      for (int64_t r = 0; r < nr; ++r) {
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t at = (r0 + r) * cols + c;
          d[r * cols + c] =
              static_cast<double>(w[at]) -
              DequantizeValue(format, params[(r0 + r) * groups + c / group_length], codes[at]);
        }
      }
      MultiplySubtract(nr, cols, cols, d.data(), cols, s.data(), cols, t.data(), cols);
      double sum = 0;
      for (int64_t i = 0; i < nr * cols; ++i) sum -= t[i] * d[i];
      sums[chunk] = sum;
    }
  });
  return std::accumulate(sums.begin(), sums.end(), 0.0) / static_cast<double>(hessian.num_rows());
}

}  // namespace herd
