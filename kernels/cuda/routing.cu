// CUDA routing ops; see routing.h.
//
// RouterTopK: one warp per token. Lane l holds the logits of experts l, l+32,
// ..., l+480 in registers; each of the top_k rounds takes every lane's best
// untaken expert and a butterfly reduction over (logit desc, index asc), which
// is the CPU's selection order, so every lane learns the winner and its owner
// marks it taken. Weights use a correctly rounded float exp (double exp
// rounded to float, unaffected by --use_fast_math) and IEEE-rounded float
// divisions, mirroring the CPU's float/double precision choices.
//
// PermuteByExpert: a three-kernel stable counting sort. Slots are cut into
// segments of kSegmentSlots, one warp per segment.
//   1. Count: each warp histograms its segment's experts in shared memory and
//      writes counts[segment][expert] to the workspace.
//   2. Scan (one block, one thread per expert): turns counts[.][e] into the
//      number of expert-e slots in earlier segments, scans the expert totals
//      into expert_offsets, and fills row_to_slot's unused tail with -1.
//   3. Scatter: each warp walks its segment in slot order, 32 slots at a time;
//      __match_any_sync groups lanes with the same expert, a lane's rank among
//      lower lanes of its group orders equal experts by slot, and a per-warp
//      shared cursor per expert (offsets[e] + earlier segments' count) advances
//      by the group size. Integer counting throughout, so it is deterministic.
//
// GatherRows and CombineWeighted: one block per row / token, threads across
// the hidden dimension.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/routing.h"
#include "kernels/cuda/warp_argmax.cuh"

namespace herd::cuda {
namespace {

constexpr unsigned kFullMask = 0xFFFFFFFFu;

// expf(x) rounded to nearest, as glibc's expf gives it (--use_fast_math
// leaves double-precision functions alone).
__device__ float ExpF(float x) { return __double2float_rn(exp(static_cast<double>(x))); }

// ---------------------------------------------------------------- RouterTopK

constexpr int kRouterWarpsPerBlock = 8;
constexpr int kRouterPerLane = static_cast<int>(kMaxRouterExperts / 32);

__global__ void RouterTopKKernel(const float* logits, int64_t num_tokens, int num_experts,
                                 int top_k, bool softmax, bool renormalize, int32_t* expert_idx,
                                 float* weights) {
  const int lane = threadIdx.x % 32;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRouterWarpsPerBlock + threadIdx.x / 32;
  if (t >= num_tokens) return;  // uniform across the warp
  const float* row = logits + t * num_experts;
  float v[kRouterPerLane];  // v[i] is expert lane + 32 * i
#pragma unroll
  for (int i = 0; i < kRouterPerLane; ++i) {
    const int e = lane + 32 * i;
    v[i] = e < num_experts ? row[e] : -INFINITY;
  }
  uint32_t taken = 0;  // bit i: expert lane + 32 * i is selected
  // Lane j < top_k keeps selection j; every lane keeps the top logit.
  int sel_e = 0;
  float sel_v = 0.0f;
  float max_logit = 0.0f;
  for (int j = 0; j < top_k; ++j) {
    // (-inf, INT_MAX) loses to every real expert, even one with logit -inf.
    float bv = -INFINITY;
    int be = INT_MAX;
#pragma unroll
    for (int i = 0; i < kRouterPerLane; ++i) {
      const int e = lane + 32 * i;
      if (e < num_experts && ((taken >> i) & 1u) == 0 && Beats(v[i], e, bv, be)) {
        bv = v[i];
        be = e;
      }
    }
    WarpArgMax(bv, be);
    // top_k <= num_experts, so be is a real expert here.
    if (be % 32 == lane) taken |= 1u << (be / 32);
    if (lane == j) {
      sel_e = be;
      sel_v = bv;
    }
    if (j == 0) max_logit = bv;
  }
  float w;
  if (softmax) {
    // As the CPU: float exp of the float difference, summed in double.
    double sum = 0.0;
#pragma unroll
    for (int i = 0; i < kRouterPerLane; ++i) {
      if (lane + 32 * i < num_experts) sum += static_cast<double>(ExpF(v[i] - max_logit));
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
    w = __double2float_rn(static_cast<double>(ExpF(sel_v - max_logit)) / sum);
  } else {
    w = __fdiv_rn(1.0f, __fadd_rn(1.0f, ExpF(-sel_v)));
  }
  if (renormalize) {
    float sum = 0.0f;  // j ascending, as the CPU
    for (int j = 0; j < top_k; ++j) sum = __fadd_rn(sum, __shfl_sync(kFullMask, w, j));
    w = __fdiv_rn(w, sum);
  }
  if (lane < top_k) {
    expert_idx[t * top_k + lane] = sel_e;
    weights[t * top_k + lane] = w;
  }
}

// ----------------------------------------------------------- PermuteByExpert

constexpr int64_t kSegmentSlots = 4096;  // slots per warp in count and scatter
constexpr int kPermuteWarpsPerBlock = 4;
constexpr int kScanBatch = 8;  // segments whose counts the scan loads at once
constexpr int kScanThreads = static_cast<int>(kMaxRouterExperts);

int64_t NumSegments(int64_t num_slots) { return (num_slots + kSegmentSlots - 1) / kSegmentSlots; }

// counts[segment * num_experts + e] = slots of segment with expert e.
__global__ void CountKernel(const int32_t* expert_idx, int64_t num_slots, int num_experts,
                            int64_t num_segments, int32_t* counts) {
  extern __shared__ int32_t s_hist[];  // [kPermuteWarpsPerBlock][num_experts]
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t segment = static_cast<int64_t>(blockIdx.x) * kPermuteWarpsPerBlock + warp;
  if (segment >= num_segments) return;  // uniform across the warp; no block barriers follow
  int32_t* hist = s_hist + warp * num_experts;
  for (int e = lane; e < num_experts; e += 32) hist[e] = 0;
  __syncwarp();
  const int64_t begin = segment * kSegmentSlots;
  const int64_t end = min(begin + kSegmentSlots, num_slots);
  for (int64_t s = begin + lane; s < end; s += 32) {
    const int32_t e = expert_idx[s];
    if (e >= 0 && e < num_experts) atomicAdd(&hist[e], 1);
  }
  __syncwarp();
  for (int e = lane; e < num_experts; e += 32) counts[segment * num_experts + e] = hist[e];
}

// One block of kScanThreads threads; thread e owns expert e. Replaces
// counts[segment][e] by the expert-e slots in segments before `segment`, and
// writes expert_offsets and the -1 tail of row_to_slot.
__global__ void ScanKernel(int32_t* counts, int64_t num_segments, int num_experts,
                           int64_t num_slots, int32_t* expert_offsets, int32_t* row_to_slot) {
  __shared__ int32_t s_scan[kScanThreads];
  const int e = threadIdx.x;
  int32_t total = 0;
  if (e < num_experts) {
    for (int64_t first = 0; first < num_segments; first += kScanBatch) {
      int32_t n[kScanBatch];  // loaded together so the loads overlap
#pragma unroll
      for (int k = 0; k < kScanBatch; ++k) {
        n[k] = first + k < num_segments ? counts[(first + k) * num_experts + e] : 0;
      }
#pragma unroll
      for (int k = 0; k < kScanBatch; ++k) {
        if (first + k < num_segments) counts[(first + k) * num_experts + e] = total;
        total += n[k];
      }
    }
  }
  // Inclusive scan of the per-expert totals (Hillis-Steele; 0 past num_experts).
  s_scan[e] = total;
  __syncthreads();
  for (int offset = 1; offset < kScanThreads; offset *= 2) {
    const int32_t add = e >= offset ? s_scan[e - offset] : 0;
    __syncthreads();
    s_scan[e] += add;
    __syncthreads();
  }
  if (e == 0) expert_offsets[0] = 0;
  if (e < num_experts) expert_offsets[e + 1] = s_scan[e];
  const int64_t num_valid = s_scan[kScanThreads - 1];
  for (int64_t r = num_valid + e; r < num_slots; r += kScanThreads) row_to_slot[r] = -1;
}

__global__ void ScatterKernel(const int32_t* expert_idx, int64_t num_slots, int num_experts,
                              int64_t num_segments, const int32_t* counts,
                              const int32_t* expert_offsets, int32_t* row_to_slot,
                              int32_t* slot_to_row) {
  extern __shared__ int32_t s_cursor[];  // [kPermuteWarpsPerBlock][num_experts]
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t segment = static_cast<int64_t>(blockIdx.x) * kPermuteWarpsPerBlock + warp;
  if (segment >= num_segments) return;  // uniform across the warp; no block barriers follow
  // cursor[e]: the row the segment's next expert-e slot goes to.
  int32_t* cursor = s_cursor + warp * num_experts;
  for (int e = lane; e < num_experts; e += 32) {
    cursor[e] = expert_offsets[e] + counts[segment * num_experts + e];
  }
  __syncwarp();
  const int64_t begin = segment * kSegmentSlots;
  const int64_t end = min(begin + kSegmentSlots, num_slots);
  const unsigned lower_lanes = (1u << lane) - 1;
  for (int64_t base = begin; base < end; base += 32) {  // uniform trip count
    const int64_t s = base + lane;
    const int32_t e = s < end ? expert_idx[s] : -1;
    const bool valid = e >= 0 && e < num_experts;
    const unsigned peers = __match_any_sync(kFullMask, valid ? e : -1);
    int32_t row = -1;
    if (valid) {
      row = cursor[e] + __popc(peers & lower_lanes);
      row_to_slot[row] = static_cast<int32_t>(s);
    }
    __syncwarp();  // every peer has read cursor[e] before it moves
    if (valid && lane == 31 - __clz(peers)) cursor[e] += __popc(peers);
    __syncwarp();
    if (s < end && slot_to_row != nullptr) slot_to_row[s] = row;
  }
}

// ------------------------------------------------- GatherRows, CombineWeighted

constexpr int kRowThreads = 256;

__global__ void GatherRowsKernel(const float* x, const int32_t* row_to_slot, int64_t top_k,
                                 int64_t hidden, float* out) {
  const int64_t r = blockIdx.x;
  const int32_t slot = row_to_slot[r];
  float* dst = out + r * hidden;
  if (slot < 0) {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = 0.0f;
    return;
  }
  const float* src = x + slot / top_k * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = src[i];
}

// One thread per token; the CPU's loop, with its roundings (no FMA).
__global__ void SkipMinorExpertsKernel(int64_t num_tokens, int64_t top_k, float beta,
                                       int32_t* expert_idx, float* weights) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= num_tokens) return;
  int32_t* idx = expert_idx + t * top_k;
  float* w = weights + t * top_k;
  const float threshold = __fmul_rn(beta, w[0]);
  float total = w[0];
  float kept = w[0];
  int skipped = 0;
  for (int64_t j = 1; j < top_k; ++j) {
    total = __fadd_rn(total, w[j]);
    if (w[j] < threshold) {
      idx[j] = -1;
      w[j] = 0.0f;
      ++skipped;
    } else {
      kept = __fadd_rn(kept, w[j]);
    }
  }
  if (skipped == 0) return;
  const float scale = __fdiv_rn(total, kept);
  for (int64_t j = 0; j < top_k; ++j) w[j] = __fmul_rn(w[j], scale);
}

__global__ void CombineWeightedKernel(const float* expert_out, const int32_t* slot_to_row,
                                      const float* weights, int64_t top_k, int64_t hidden,
                                      float* out) {
  const int64_t t = blockIdx.x;
  float* ot = out + t * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    float acc = ot[i];
    for (int64_t j = 0; j < top_k; ++j) {
      const int64_t slot = t * top_k + j;
      const int32_t row = slot_to_row[slot];
      if (row < 0) continue;
      // Separate roundings (no FMA), as the CPU's ot[i] += w * y[i].
      acc = __fadd_rn(acc, __fmul_rn(weights[slot], expert_out[row * hidden + i]));
    }
    ot[i] = acc;
  }
}

}  // namespace

absl::Status RouterTopK(const float* logits, int64_t num_tokens, int64_t num_experts, int64_t top_k,
                        RouterScoring scoring, bool renormalize, int32_t* expert_idx,
                        float* weights, void* stream) {
  if (num_experts < 1 || num_experts > kMaxRouterExperts) {
    return absl::InvalidArgumentError(absl::StrCat("RouterTopK: num_experts ", num_experts,
                                                   " outside [1, ", kMaxRouterExperts, "]"));
  }
  if (top_k < 1 || top_k > kMaxRouterTopK || top_k > num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("RouterTopK: top_k ", top_k, " outside [1, ",
                                                   std::min(kMaxRouterTopK, num_experts), "]"));
  }
  const int64_t blocks = (num_tokens + kRouterWarpsPerBlock - 1) / kRouterWarpsPerBlock;
  if (num_tokens < 0 || blocks > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("RouterTopK: num_tokens ", num_tokens));
  }
  if (num_tokens == 0) return absl::OkStatus();
  RouterTopKKernel<<<static_cast<unsigned>(blocks), kRouterWarpsPerBlock * 32, 0,
                     static_cast<cudaStream_t>(stream)>>>(
      logits, num_tokens, static_cast<int>(num_experts), static_cast<int>(top_k),
      scoring == RouterScoring::kSoftmax, renormalize, expert_idx, weights);
  return FromCuda(cudaGetLastError(), "RouterTopK launch");
}

absl::Status SkipMinorExperts(int64_t num_tokens, int64_t top_k, float beta, int32_t* expert_idx,
                              float* weights, void* stream) {
  if (num_tokens < 0 || top_k < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("SkipMinorExperts: num_tokens ", num_tokens, ", top_k ", top_k));
  }
  if (beta <= 0.0f || num_tokens == 0) return absl::OkStatus();
  constexpr int kThreads = 128;
  const int64_t blocks = (num_tokens + kThreads - 1) / kThreads;
  if (blocks > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("SkipMinorExperts: num_tokens ", num_tokens));
  }
  SkipMinorExpertsKernel<<<static_cast<unsigned>(blocks), kThreads, 0,
                           static_cast<cudaStream_t>(stream)>>>(num_tokens, top_k, beta, expert_idx,
                                                                weights);
  return FromCuda(cudaGetLastError(), "SkipMinorExperts launch");
}

size_t PermuteByExpertWorkspaceBytes(int64_t num_slots, int64_t num_experts) {
  return static_cast<size_t>(NumSegments(num_slots) * num_experts) * sizeof(int32_t);
}

absl::Status PermuteByExpert(const int32_t* expert_idx, int64_t num_slots, int64_t num_experts,
                             int32_t* row_to_slot, int32_t* expert_offsets, int32_t* slot_to_row,
                             void* workspace, size_t workspace_bytes, void* stream) {
  if (num_experts < 1 || num_experts > kMaxRouterExperts) {
    return absl::InvalidArgumentError(absl::StrCat("PermuteByExpert: num_experts ", num_experts,
                                                   " outside [1, ", kMaxRouterExperts, "]"));
  }
  if (num_slots < 0 || num_slots > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("PermuteByExpert: num_slots ", num_slots, " outside [0, ", INT32_MAX, "]"));
  }
  const size_t needed = PermuteByExpertWorkspaceBytes(num_slots, num_experts);
  if (workspace_bytes < needed) {
    return absl::InvalidArgumentError(
        absl::StrCat("PermuteByExpert: workspace of ", workspace_bytes, " bytes, needs ", needed));
  }
  auto* counts = static_cast<int32_t*>(workspace);
  const int64_t num_segments = NumSegments(num_slots);
  const int experts = static_cast<int>(num_experts);
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned blocks =
      static_cast<unsigned>((num_segments + kPermuteWarpsPerBlock - 1) / kPermuteWarpsPerBlock);
  const size_t shared = kPermuteWarpsPerBlock * num_experts * sizeof(int32_t);
  if (num_segments > 0) {
    CountKernel<<<blocks, kPermuteWarpsPerBlock * 32, shared, s>>>(expert_idx, num_slots, experts,
                                                                   num_segments, counts);
    HERD_RETURN_IF_ERROR(FromCuda(cudaGetLastError(), "PermuteByExpert count launch"));
  }
  // Always runs: it writes expert_offsets even when there are no slots.
  ScanKernel<<<1, kScanThreads, 0, s>>>(counts, num_segments, experts, num_slots, expert_offsets,
                                        row_to_slot);
  HERD_RETURN_IF_ERROR(FromCuda(cudaGetLastError(), "PermuteByExpert scan launch"));
  if (num_segments > 0) {
    ScatterKernel<<<blocks, kPermuteWarpsPerBlock * 32, shared, s>>>(
        expert_idx, num_slots, experts, num_segments, counts, expert_offsets, row_to_slot,
        slot_to_row);
    HERD_RETURN_IF_ERROR(FromCuda(cudaGetLastError(), "PermuteByExpert scatter launch"));
  }
  return absl::OkStatus();
}

absl::Status GatherRows(const float* x, const int32_t* row_to_slot, int64_t num_rows, int64_t top_k,
                        int64_t hidden, float* out, void* stream) {
  if (top_k < 1 || num_rows < 0 || num_rows > INT_MAX || hidden < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GatherRows: num_rows ", num_rows, ", top_k ", top_k, ", hidden ", hidden));
  }
  if (num_rows == 0 || hidden == 0) return absl::OkStatus();
  GatherRowsKernel<<<static_cast<unsigned>(num_rows), kRowThreads, 0,
                     static_cast<cudaStream_t>(stream)>>>(x, row_to_slot, top_k, hidden, out);
  return FromCuda(cudaGetLastError(), "GatherRows launch");
}

absl::Status CombineWeighted(const float* expert_out, const int32_t* slot_to_row,
                             const float* weights, int64_t num_tokens, int64_t top_k,
                             int64_t hidden, float* out, void* stream) {
  if (top_k < 1 || num_tokens < 0 || num_tokens > INT_MAX || hidden < 0) {
    return absl::InvalidArgumentError(absl::StrCat("CombineWeighted: num_tokens ", num_tokens,
                                                   ", top_k ", top_k, ", hidden ", hidden));
  }
  if (num_tokens == 0 || hidden == 0) return absl::OkStatus();
  CombineWeightedKernel<<<static_cast<unsigned>(num_tokens), kRowThreads, 0,
                          static_cast<cudaStream_t>(stream)>>>(expert_out, slot_to_row, weights,
                                                               top_k, hidden, out);
  return FromCuda(cudaGetLastError(), "CombineWeighted launch");
}

}  // namespace herd::cuda
