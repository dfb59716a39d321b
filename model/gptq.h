// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers") into Herd's quantized formats
// (core/quant_format.h).
//
// GPTQ quantizes a linear layer y = W x one input column at a time and
// spreads each column's rounding error over the columns not yet quantized, so
// that the layer's output on calibration inputs moves as little as possible.
// It needs only the second moment of those inputs, H = 2/n * sum x x^T, which
// HessianAccumulator collects. For an MoE expert, the inputs are only the
// tokens the router sent to that expert (seeds-methods.md §7.1): accumulate
// one HessianAccumulator per expert.
//
// The algorithm, as the reference implementation runs it:
//   1. columns whose diagonal of H is 0 (inputs never seen) are decoupled
//      (see GptqQuantize for what becomes of them); lambda = damp_fraction *
//      mean(diag H) is added to the diagonal;
//   2. U = the upper Cholesky factor of H^-1 (H^-1 = U^T U), which we get
//      without forming H^-1: with V upper and H = V V^T (a Cholesky of H with
//      its index order reversed), U = V^-1;
//   3. for each column i: q_i = quantize(w_i); e_i = (w_i - q_i) / U_ii;
//      w_j -= e_i U_ij for every j > i, applied inside a block of columns at
//      once and to the columns after the block in one product ("lazy batch").
// Each row of W is independent given U, so rows are processed in chunks (in
// parallel when a ThreadPool is given).
//
// Cost: O(2 cols^3 / 3) for step 2 and O(rows * cols^2) for step 3, in
// double, plus cols^2 doubles for U next to the accumulator's. Measured once
// (GptqTest.TimingOfMidSizeExpert, HERD_GPTQ_TIMING=1) on this project's
// shared 2-core build machine, RelWithDebInfo (-O2, no -march), int4-g128,
// Hessian from 512 random tokens, one thread:
//   W [2816, 1024] (a mid-size expert's gate or up):  0.5 s
//   W [1024, 2816] (its down projection):             2.5 s
// A 2-thread pool gave no speedup there (the 2 cores were busy with other
// work); the row chunks and the factorisation's panels are what it splits.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/quant_format.h"
#include "core/thread_pool.h"

namespace herd {

// Accumulates the GPTQ Hessian of a linear layer's inputs x [cols]: the
// unnormalised sum of x x^T (double) and the number of rows seen, from which
// H = 2/n * sum x x^T.
// Thread-compatible: concurrent const calls are safe, Add/Merge need
// exclusive access. To accumulate from several threads, give each its own
// accumulator and Merge them.
class HessianAccumulator {
 public:
  // cols > 0. Allocates cols * cols doubles (1.6 GB for cols = 14336).
  explicit HessianAccumulator(int64_t cols);

  // Adds the rows of x F32 [rows, cols] (row-major). Costs O(rows * cols^2 / 2)
  // plus O(cols^2) per call, so pass many rows at once rather than one token
  // at a time. rows == 0 is a no-op.
  void Add(const float* x, int64_t rows);
  // Adds another accumulator's sums and rows; other.cols() must equal cols()
  // (aborts otherwise: a programmer error).
  void Merge(const HessianAccumulator& other);

  int64_t cols() const { return cols_; }
  int64_t num_rows() const { return num_rows_; }
  // F64 [cols, cols], row-major, symmetric: the unnormalised sum of x x^T.
  const std::vector<double>& sum_xxt() const { return sum_xxt_; }

 private:
  int64_t cols_;
  int64_t num_rows_ = 0;
  std::vector<double> sum_xxt_;
};

struct GptqOptions {
  // lambda = damp_fraction * mean(diag H) is added to the diagonal of H: it
  // keeps the Cholesky stable when inputs are few or collinear (0.01 is the
  // reference's default). If the damped H is still not positive definite,
  // GptqQuantize multiplies the damping by 10 a few times before failing.
  double damp_fraction = 0.01;
  // Columns per lazy-batch block: larger blocks move the O(rows * cols^2)
  // update into cache-friendly products. Only speed depends on it (up to
  // rounding). With groups, the block actually used is the largest multiple
  // of the group length <= block_size (at least one group), so that a group
  // never straddles two blocks (see GptqQuantize).
  int64_t block_size = 128;
  // Quantize columns in descending order of diag(H) ("desc_act"): the
  // columns with the largest inputs go first, while the most columns remain
  // to absorb their error. With act_order, every group's scale and min are
  // chosen before the sweep from the original weights of that group ("static
  // groups"), and a column keeps the parameters of the group its original
  // index falls in; so the stored layout and the kernels are unchanged (no
  // permutation or group index per column is stored).
  bool act_order = false;
};

struct GptqResult {
  // True when the Hessian had no rows (no calibration token reached this
  // layer or expert): the codes are plain round to nearest, exactly what
  // QuantizeMatrixRtn stores.
  bool used_rtn_fallback = false;
  // OutputError of the result: mean over calibration rows of
  // ||(W - Q) x||^2 (0 for the RTN fallback, which has no rows). Computed
  // from GPTQ's own residuals, without another O(rows * cols^2) pass.
  double reconstruction_error = 0;
  // The damping actually used, as a fraction of mean(diag H): damp_fraction,
  // or more if the Cholesky needed it (0 for the RTN fallback).
  double damp_fraction_used = 0;
};

// Quantizes W F32 [rows, cols] (row-major, y = W x) with GPTQ into
// codes U8 [rows, cols] (one code per byte, in [0, format.MaxCode()]) and
// params [rows, cols / format.GroupLength(cols)], the form that
// PackQuantizedMatrix takes.
//
// Group parameters: without act_order, ChooseGroupParams over the group's
// weights as GPTQ has updated them when the group's first column is reached
// (the reference behaviour; per channel that is the original row). With
// act_order, static groups (see GptqOptions::act_order).
//
// Dead columns (diag H == 0, i.e. every calibration input was 0 there): the
// reference zeroes their weights. We keep the weights: such a column has no
// coupling in H, so it neither receives nor spreads error and its code is
// plain round to nearest of its original weight under its group's
// parameters. The output on calibration data is the same either way, and a
// column that calibration merely did not exercise keeps its weights. (Their
// H diagonal is set to the mean of the live ones, which only affects lambda.)
//
// hessian.num_rows() == 0: round to nearest (ChooseGroupParams and
// QuantizeValue on W), reported by used_rtn_fallback.
//
// Errors: InvalidArgument when the shape does not fit the format
// (format.ValidateShape), hessian.cols() != cols, options are out of range
// (damp_fraction < 0 or not finite, block_size < 1), W holds a NaN or inf,
// H's diagonal does (NaN or inf calibration inputs), or H is not positive
// definite even after raising the damping 10000-fold.
// `pool` (optional, not owned) parallelises the factorisation and the sweep;
// results do not depend on it. Not re-entrant on the same pool.
absl::StatusOr<GptqResult> GptqQuantize(const QuantFormat& format, const float* w, int64_t rows,
                                        int64_t cols, const HessianAccumulator& hessian,
                                        const GptqOptions& options, uint8_t* codes,
                                        QuantGroupParams* params, ThreadPool* pool = nullptr);

// The layer-output error of any codes/params of W F32 [rows, cols]:
// sum over rows of (w - q)^T S (w - q) / n with S = hessian.sum_xxt() and
// n = hessian.num_rows(), i.e. the mean over calibration rows x of
// ||(W - Q) x||^2 (H / 2 in GPTQ's normalisation). Comparable between GPTQ
// and round to nearest. 0 when the Hessian has no rows. codes U8 [rows, cols],
// params [rows, groups]; shapes must match (hessian.cols() == cols; aborts
// otherwise). O(rows * cols^2).
double OutputError(const QuantFormat& format, const float* w, int64_t rows, int64_t cols,
                   const uint8_t* codes, const QuantGroupParams* params,
                   const HessianAccumulator& hessian, ThreadPool* pool = nullptr);

}  // namespace herd
