// CUDA greedy and top-p sampling; see sampling.h.
//
// One block of kThreads threads per row. ArgMax is a block reduction over
// (logit desc, index asc). Top-p runs these passes over the row:
//   1. argmax/max of the logits (greedy rows stop here);
//   2. p[i] = exp((logit[i] - max) / temperature) as a float, stored to the
//      workspace as its bit pattern; the total fixed-point mass and its
//      histogram by the first radix digit (shared by both selections);
//   3. Select(T1), T1 = ceil(top_p * total): the token at which the running
//      mass of the sorted order first reaches T1 is the last kept token, which
//      gives kept = the kept mass;
//   4. Select(T2), T2 = floor(u01 * kept) + 1: the token at which the running
//      mass first exceeds u01 * kept is the sampled token.
// The sorted order is by p descending, ties by lower id. Since p >= 0, larger
// floats have larger bit patterns, so Select is a most-significant-digit radix
// select over the 32-bit pattern, 8 bits a digit: per digit a shared-memory
// histogram of fixed-point mass among tokens matching the digits chosen so far
// (a pass over the row, except for the first digit, whose histogram step 2
// built), then one warp finds the digit whose bin the target falls in (bins
// from the largest digit down). After the last digit all tokens in the
// bin have the same p, worth q each, and `above` is the mass of all larger p;
// the target is reached at the m-th of them by id, m = ceil((T - above) / q).
// The last pass also records each bin's lowest id, which is the answer when
// m == 1 (always with distinct probabilities); otherwise one more ordered pass
// counts matching tokens in id order to find the m-th.
//
// Masses are integers (p * 2^(63 - ceil(log2 vocab)), rounded), so the shared
// atomics sum them exactly in any order: the result is deterministic, and the
// total cannot overflow 64 bits since every p <= 1.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/warp_argmax.cuh"

namespace herd::cuda {
namespace {

constexpr unsigned kFullMask = 0xFFFFFFFFu;
constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kRadixBits = 8;
constexpr int kBins = 1 << kRadixBits;

// expf(x) rounded to nearest, as glibc's expf gives it (--use_fast_math
// leaves double-precision functions alone).
__device__ float ExpF(float x) { return __double2float_rn(exp(static_cast<double>(x))); }

// The fixed-point mass of a probability given by its bit pattern.
__device__ unsigned long long Mass(uint32_t p_bits, double scale) {
  return __double2ull_rn(static_cast<double>(__uint_as_float(p_bits)) * scale);
}

// 64-bit masses per radix digit in shared memory, as 32-bit halves: 64-bit
// shared atomics are compare-and-swap loops, 32-bit adds are native.
struct MassHistogram {
  unsigned lo[kBins];
  unsigned hi[kBins];

  __device__ unsigned long long operator[](int digit) const {
    return static_cast<unsigned long long>(hi[digit]) << 32 | lo[digit];
  }
  // Called by every thread; a barrier must separate it from Add.
  __device__ void Clear() {
    for (int b = threadIdx.x; b < kBins; b += blockDim.x) lo[b] = hi[b] = 0;
  }
  // Exact however many threads add at once: the add that carries the low
  // half past 2^32 is the one that sees it do so.
  __device__ void Add(unsigned digit, unsigned long long q) {
    const auto q_lo = static_cast<unsigned>(q);
    const unsigned old = atomicAdd(&lo[digit], q_lo);
    const unsigned q_hi = static_cast<unsigned>(q >> 32) + (old + q_lo < old ? 1u : 0u);
    if (q_hi != 0) atomicAdd(&hi[digit], q_hi);
  }
};

// Shared memory of one row's block.
struct RowShared {
  float best_value[kWarps];
  int best_index[kWarps];
  unsigned long long partial[kWarps];
  MassHistogram top_hist;  // mass per top digit, all tokens
  MassHistogram hist;      // mass per digit, tokens matching the prefix
  int min_id[kBins];       // lowest id per digit (last radix pass)
  unsigned digit;
  unsigned long long above;
  unsigned warp_count[kWarps];
  int found;
};

// Every thread gets the block's best (value, index) by Beats. Threads with
// nothing to offer pass (-inf, INT_MAX).
__device__ void BlockArgMax(float* value, int* index, RowShared& sh) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  float v = *value;
  int i = *index;
  WarpArgMax(v, i);
  if (lane == 0) {
    sh.best_value[warp] = v;
    sh.best_index[warp] = i;
  }
  __syncthreads();
  if (warp == 0) {
    v = sh.best_value[lane];
    i = sh.best_index[lane];
    WarpArgMax(v, i);
    if (lane == 0) {
      sh.best_value[0] = v;
      sh.best_index[0] = i;
    }
  }
  __syncthreads();
  *value = sh.best_value[0];
  *index = sh.best_index[0];
  __syncthreads();  // sh.best_* may be reused
}

__device__ unsigned long long BlockSum(unsigned long long x, RowShared& sh) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
  if (lane == 0) sh.partial[warp] = x;
  __syncthreads();
  unsigned long long total = 0;
  for (int w = 0; w < kWarps; ++w) total += sh.partial[w];
  __syncthreads();  // sh.partial may be reused
  return total;
}

// Row argmax: every thread gets (max logit, its first index).
__device__ void RowArgMax(const float* row, int64_t vocab, float* max_value, int* max_index,
                          RowShared& sh) {
  float v = -INFINITY;
  int i = INT_MAX;
  for (int64_t k = threadIdx.x; k < vocab; k += kThreads) {  // ascending: first max kept
    if (Beats(row[k], static_cast<int>(k), v, i)) {
      v = row[k];
      i = static_cast<int>(k);
    }
  }
  BlockArgMax(&v, &i, sh);
  *max_value = v;
  *max_index = i;
}

// Run by warp 0: the digit (from kBins - 1 down) whose bin holds the target,
// i.e. above + mass of larger bins < target <= that + hist[digit]; writes it
// and the new `above` to sh. Needs above < target <= above + sum of all bins.
__device__ void ChooseDigit(const MassHistogram& hist, unsigned long long target,
                            unsigned long long above, RowShared& sh) {
  constexpr int kPerLane = kBins / 32;
  const int lane = threadIdx.x % 32;
  const int top = kBins - 1 - kPerLane * lane;  // lane covers digits top .. top - kPerLane + 1
  unsigned long long lane_mass = 0;
  for (int k = 0; k < kPerLane; ++k) lane_mass += hist[top - k];
  unsigned long long inclusive = lane_mass;  // mass of digits > top - kPerLane, from lane 0 on
  for (int offset = 1; offset < 32; offset *= 2) {
    const unsigned long long o = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += o;
  }
  const unsigned reached = __ballot_sync(kFullMask, above + inclusive >= target);
  if (lane == __ffs(reached) - 1) {
    unsigned long long a = above + inclusive - lane_mass;
    int digit = top;
    while (a + hist[digit] < target) a += hist[digit--];
    sh.digit = static_cast<unsigned>(digit);
    sh.above = a;
  }
}

// A token position in the sorted order: all tokens with this p bit pattern,
// the mass of tokens with larger p, and the lowest id among them.
struct Selection {
  uint32_t p_bits;
  unsigned long long above;
  int min_id;
};

// Bits above kTopShift form the first radix digit.
constexpr int kTopShift = 32 - kRadixBits;

// The p bit pattern of the token at which the running mass of the sorted order
// first reaches `target` (1 <= target <= total mass), given sh.top_hist. All
// threads call.
__device__ Selection Select(const uint32_t* p_bits, int64_t vocab, double scale,
                            unsigned long long target, RowShared& sh) {
  uint32_t prefix = 0;  // digits chosen so far
  uint32_t known = 0;   // their bit mask
  unsigned long long above = 0;
  for (int shift = kTopShift; shift >= 0; shift -= kRadixBits) {
    if (shift != kTopShift) {  // the top digit's histogram is sh.top_hist
      sh.hist.Clear();
      for (int b = threadIdx.x; b < kBins; b += kThreads) sh.min_id[b] = INT_MAX;
      __syncthreads();
      for (int64_t k = threadIdx.x; k < vocab; k += kThreads) {
        const uint32_t bits = p_bits[k];
        if ((bits & known) != prefix) continue;
        const unsigned long long q = Mass(bits, scale);
        if (q == 0) continue;  // massless tokens never reach a target >= 1
        const unsigned digit = (bits >> shift) & (kBins - 1);
        sh.hist.Add(digit, q);
        if (shift == 0) atomicMin(&sh.min_id[digit], static_cast<int>(k));
      }
      __syncthreads();
    }
    if (threadIdx.x < 32) {
      ChooseDigit(shift == kTopShift ? sh.top_hist : sh.hist, target, above, sh);
    }
    __syncthreads();
    prefix |= sh.digit << shift;
    known |= static_cast<uint32_t>(kBins - 1) << shift;
    above = sh.above;
  }
  const Selection s{prefix, above, sh.min_id[prefix & (kBins - 1)]};
  __syncthreads();  // sh may be reused
  return s;
}

// The id of the m-th (1-based) token in id order whose p has bit pattern
// `bits`; there are at least m. All threads call.
__device__ int NthWithBits(const uint32_t* p_bits, int64_t vocab, uint32_t bits,
                           unsigned long long m, RowShared& sh) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (threadIdx.x == 0) sh.found = INT_MAX;
  unsigned long long seen = 0;  // matches before this chunk, the same in every thread
  for (int64_t base = 0; base < vocab && seen < m; base += kThreads) {
    const int64_t k = base + threadIdx.x;
    const bool match = k < vocab && p_bits[k] == bits;
    const unsigned ballot = __ballot_sync(kFullMask, match);
    if (lane == 0) sh.warp_count[warp] = __popc(ballot);
    __syncthreads();
    unsigned before = 0;  // matches in lower warps of this chunk
    unsigned chunk = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) before += sh.warp_count[w];
      chunk += sh.warp_count[w];
    }
    const unsigned long long rank = seen + before + __popc(ballot & ((1u << lane) - 1));
    if (match && rank + 1 == m) sh.found = static_cast<int>(k);
    seen += chunk;
    __syncthreads();  // sh.warp_count is rewritten next chunk; sh.found is final
  }
  const int found = sh.found;
  __syncthreads();  // sh may be reused
  return found;
}

// The sampled token of a row with temperature > 0; see the file comment.
__device__ int SampleRow(const float* row, int64_t vocab, float temperature, float top_p,
                         double u01, float max_logit, uint32_t* p_bits, double scale,
                         RowShared& sh) {
  sh.top_hist.Clear();
  __syncthreads();
  unsigned long long mass = 0;
  for (int64_t k = threadIdx.x; k < vocab; k += kThreads) {
    const float p = ExpF(__fdiv_rn(row[k] - max_logit, temperature));
    const uint32_t bits = __float_as_uint(p);
    p_bits[k] = bits;
    const unsigned long long q = Mass(bits, scale);
    if (q == 0) continue;
    mass += q;
    sh.top_hist.Add(bits >> kTopShift, q);
  }
  // The barriers in BlockSum also complete sh.top_hist and make p_bits visible
  // to the whole block.
  const unsigned long long total = BlockSum(mass, sh);  // >= 1: the max has p = 1

  // The CPU keeps tokens until their mass reaches clamp(top_p, 0, 1) * sum
  // (NaN top_p keeps one token); in fixed point that is reaching the ceiling.
  const double keep_fraction = top_p < 0.0f ? 0.0 : top_p > 1.0f ? 1.0 : top_p;
  const double keep_mass = keep_fraction * static_cast<double>(total);
  unsigned long long t1 = keep_mass >= 1.0 ? __double2ull_ru(keep_mass) : 1;
  if (t1 > total) t1 = total;
  const Selection last = Select(p_bits, vocab, scale, t1, sh);
  const unsigned long long q1 = Mass(last.p_bits, scale);
  const unsigned long long kept = last.above + (t1 - last.above + q1 - 1) / q1 * q1;

  // The first token whose running mass exceeds u = u01 * kept, i.e. reaches
  // floor(u) + 1; the last kept token when u rounds up to kept.
  const double u = u01 * static_cast<double>(kept);
  unsigned long long t2 = u >= 0.0 ? __double2ull_rd(u) + 1 : 1;
  if (t2 > kept) t2 = kept;
  const Selection pick = Select(p_bits, vocab, scale, t2, sh);
  const unsigned long long q2 = Mass(pick.p_bits, scale);
  const unsigned long long m = (t2 - pick.above + q2 - 1) / q2;
  return m == 1 ? pick.min_id : NthWithBits(p_bits, vocab, pick.p_bits, m, sh);
}

__global__ void __launch_bounds__(kThreads)
    ArgMaxRowsKernel(const float* logits, int64_t vocab, int32_t* ids) {
  __shared__ RowShared sh;
  float max_value;
  int max_index;
  RowArgMax(logits + blockIdx.x * vocab, vocab, &max_value, &max_index, sh);
  if (threadIdx.x == 0) ids[blockIdx.x] = max_index;
}

__global__ void __launch_bounds__(kThreads)
    SampleTopPRowsKernel(const float* logits, int64_t vocab, const float* temperature,
                         const float* top_p, const double* u01, int32_t* ids, uint32_t* p_bits,
                         double scale) {
  __shared__ RowShared sh;
  const int64_t r = blockIdx.x;
  const float* row = logits + r * vocab;
  float max_logit;
  int max_index;
  RowArgMax(row, vocab, &max_logit, &max_index, sh);
  const float t = temperature[r];
  // The same test as the CPU's (a NaN temperature samples).
  const int id = t <= 0.0f ? max_index
                           : SampleRow(row, vocab, t, top_p[r], u01[r], max_logit,
                                       p_bits + r * vocab, scale, sh);
  if (threadIdx.x == 0) ids[r] = id;
}

absl::Status CheckShape(const char* op, int64_t num_rows, int64_t vocab) {
  if (vocab < 1 || vocab > INT32_MAX || num_rows < 0 || num_rows > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": num_rows ", num_rows, ", vocab ", vocab, " out of range"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ArgMaxRows(const float* logits, int64_t num_rows, int64_t vocab, int32_t* ids,
                        void* stream) {
  if (absl::Status s = CheckShape("ArgMaxRows", num_rows, vocab); !s.ok()) return s;
  if (num_rows == 0) return absl::OkStatus();
  ArgMaxRowsKernel<<<static_cast<unsigned>(num_rows), kThreads, 0,
                     static_cast<cudaStream_t>(stream)>>>(logits, vocab, ids);
  return FromCuda(cudaGetLastError(), "ArgMaxRows launch");
}

size_t SampleTopPRowsWorkspaceBytes(int64_t num_rows, int64_t vocab) {
  return static_cast<size_t>(num_rows) * static_cast<size_t>(vocab) * sizeof(uint32_t);
}

absl::Status SampleTopPRows(const float* logits, int64_t num_rows, int64_t vocab,
                            const float* temperature, const float* top_p, const double* u01,
                            int32_t* ids, void* workspace, size_t workspace_bytes, void* stream) {
  if (absl::Status s = CheckShape("SampleTopPRows", num_rows, vocab); !s.ok()) return s;
  const size_t needed = SampleTopPRowsWorkspaceBytes(num_rows, vocab);
  if (workspace_bytes < needed) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleTopPRows: workspace of ", workspace_bytes, " bytes, needs ", needed));
  }
  if (num_rows == 0) return absl::OkStatus();
  // Masses are multiples of 2^-(63 - b) with vocab <= 2^b: vocab tokens of
  // p <= 1 sum to at most 2^63.
  int b = 0;
  while ((int64_t{1} << b) < vocab) ++b;
  const double scale = std::ldexp(1.0, 63 - b);
  SampleTopPRowsKernel<<<static_cast<unsigned>(num_rows), kThreads, 0,
                         static_cast<cudaStream_t>(stream)>>>(
      logits, vocab, temperature, top_p, u01, ids, static_cast<uint32_t*>(workspace), scale);
  return FromCuda(cudaGetLastError(), "SampleTopPRows launch");
}

}  // namespace herd::cuda
