// herd bench kernels; see kernel_bench.h.
#include "kernels/cuda/bench/kernel_bench.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/dtype.h"
#include "core/status.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dense_gemm.h"
#include "kernels/cuda/dequantized_gemm.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/routing.h"
#include "kernels/cuda/sampling.h"

namespace herd::cuda {
namespace {

absl::Status Check(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cublasGetStatusString(st)));
}

// Device memory freed on destruction.
class DeviceBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceBuffer>> Create(size_t bytes) {
    void* ptr = nullptr;
    HERD_RETURN_IF_ERROR(FromCuda(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)), "cudaMalloc"));
    return std::unique_ptr<DeviceBuffer>(new DeviceBuffer(ptr, bytes));
  }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

  // Fills the buffer with random bytes from `seed` (never zeros: they run
  // faster than real data on some units and hide unwritten outputs).
  absl::Status FillRandom(uint64_t seed) {
    constexpr size_t kChunk = 64 << 20;
    std::vector<uint64_t> host(kChunk / 8);
    std::mt19937_64 rng(seed);
    for (size_t done = 0; done < bytes_; done += kChunk) {
      for (uint64_t& v : host) v = rng();
      const size_t n = std::min(kChunk, bytes_ - done);
      HERD_RETURN_IF_ERROR(FromCuda(
          cudaMemcpy(get<uint8_t>() + done, host.data(), n, cudaMemcpyHostToDevice), "cudaMemcpy"));
    }
    return absl::OkStatus();
  }
  // Fills with values drawn uniformly from [-scale, scale): f32 (4-byte
  // elements), or f16 / bf16 (2-byte). A pattern of 2^20 draws repeats, so
  // that filling gigabytes stays fast.
  enum class Kind { kF32, kF16, kBF16 };
  absl::Status FillUniform(Kind kind, float scale, uint64_t seed) {
    constexpr size_t kPattern = size_t{1} << 20;
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> dist(-scale, scale);
    std::vector<uint8_t> host;
    const size_t elem = kind == Kind::kF32 ? 4 : 2;
    host.resize(kPattern * elem);
    for (size_t i = 0; i < kPattern; ++i) {
      const float v = dist(rng);
      if (kind == Kind::kF32) {
        std::memcpy(host.data() + 4 * i, &v, 4);
      } else {
        const uint16_t h = kind == Kind::kBF16 ? F32ToBF16(v) : F32ToF16(v);
        std::memcpy(host.data() + 2 * i, &h, 2);
      }
    }
    for (size_t done = 0; done < bytes_; done += host.size()) {
      const size_t n = std::min(host.size(), bytes_ - done);
      HERD_RETURN_IF_ERROR(FromCuda(
          cudaMemcpy(get<uint8_t>() + done, host.data(), n, cudaMemcpyHostToDevice), "cudaMemcpy"));
    }
    return absl::OkStatus();
  }

 private:
  DeviceBuffer(void* ptr, size_t bytes) : ptr_(ptr), bytes_(bytes) {}
  void* ptr_;
  size_t bytes_;
};

using Buffer = std::unique_ptr<DeviceBuffer>;

// Median milliseconds of `iterations` runs of `body(i)`, each timed with events.
absl::StatusOr<double> TimeMedianMs(const std::function<absl::Status(int)>& body, int warmup,
                                    int iterations, cudaStream_t stream = nullptr) {
  for (int i = 0; i < warmup; ++i) HERD_RETURN_IF_ERROR(body(i));
  cudaEvent_t start;
  cudaEvent_t stop;
  HERD_RETURN_IF_ERROR(FromCuda(cudaEventCreate(&start), "cudaEventCreate"));
  HERD_RETURN_IF_ERROR(FromCuda(cudaEventCreate(&stop), "cudaEventCreate"));
  std::vector<double> ms;
  absl::Status status;
  for (int i = 0; i < iterations && status.ok(); ++i) {
    cudaEventRecord(start, stream);
    status = body(warmup + i);
    cudaEventRecord(stop, stream);
    if (status.ok()) status = FromCuda(cudaEventSynchronize(stop), "timed run");
    float elapsed = 0.0f;
    cudaEventElapsedTime(&elapsed, start, stop);
    ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  HERD_RETURN_IF_ERROR(status);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Median milliseconds of one `body(i, stream)` when `ops` of them run as one
// CUDA graph (as a decode step runs: no launch gaps), over `replays` replays
// timed with events.
absl::StatusOr<double> TimeGraphMs(const std::function<absl::Status(int, cudaStream_t)>& body,
                                   int ops, int warmup, int replays) {
  cudaStream_t stream;
  HERD_RETURN_IF_ERROR(
      FromCuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  const absl::StatusOr<double> ms = [&]() -> absl::StatusOr<double> {
    for (int i = 0; i < ops; ++i) HERD_RETURN_IF_ERROR(body(i, stream));  // eager warm-up
    HERD_RETURN_IF_ERROR(FromCuda(cudaStreamSynchronize(stream), "warm-up"));
    HERD_RETURN_IF_ERROR(FromCuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
                                  "cudaStreamBeginCapture"));
    absl::Status captured;
    for (int i = 0; i < ops && captured.ok(); ++i) captured = body(i, stream);
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    HERD_RETURN_IF_ERROR(captured);
    HERD_RETURN_IF_ERROR(FromCuda(end, "cudaStreamEndCapture"));
    HERD_RETURN_IF_ERROR(FromCuda(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate"));
    return TimeMedianMs(
        [&](int) { return FromCuda(cudaGraphLaunch(exec, stream), "cudaGraphLaunch"); }, warmup,
        replays, stream);
  }();
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  if (!ms.ok()) return ms.status();
  return *ms / ops;
}

}  // namespace

absl::StatusOr<double> MeasureCopyBandwidth() {
  constexpr size_t kCopyBytes = size_t{2} << 30;
  HERD_ASSIGN_OR_RETURN(Buffer src, DeviceBuffer::Create(kCopyBytes));
  HERD_ASSIGN_OR_RETURN(Buffer dst, DeviceBuffer::Create(kCopyBytes));
  HERD_RETURN_IF_ERROR(src->FillRandom(1));
  HERD_ASSIGN_OR_RETURN(const double copy_ms,
                        TimeMedianMs(
                            [&](int) {
                              return FromCuda(cudaMemcpyAsync(dst->get(), src->get(), kCopyBytes,
                                                              cudaMemcpyDeviceToDevice),
                                              "copy");
                            },
                            3, 20));
  return 2.0 * kCopyBytes / (copy_ms * 1e-3) / 1e9;
}

namespace {

struct Ceilings {
  double bandwidth_gbs = 0.0;  // device-to-device copy, bytes read + written
  double bf16_tflops = 0.0;    // cuBLAS 8192^3 bf16, f32 accumulation
};

absl::StatusOr<Ceilings> MeasureCeilings(cublasHandle_t blas, const KernelBenchOptions& options,
                                         std::ostream& out) {
  Ceilings c;
  HERD_ASSIGN_OR_RETURN(c.bandwidth_gbs, MeasureCopyBandwidth());

  constexpr int kN = 8192;
  HERD_ASSIGN_OR_RETURN(Buffer a, DeviceBuffer::Create(size_t{kN} * kN * 2));
  HERD_ASSIGN_OR_RETURN(Buffer b, DeviceBuffer::Create(size_t{kN} * kN * 2));
  HERD_ASSIGN_OR_RETURN(Buffer d, DeviceBuffer::Create(size_t{kN} * kN * 2));
  HERD_RETURN_IF_ERROR(a->FillUniform(DeviceBuffer::Kind::kBF16, 1.0f, 2));
  HERD_RETURN_IF_ERROR(b->FillUniform(DeviceBuffer::Kind::kBF16, 1.0f, 3));
  const float alpha = 1.0f;
  const float beta = 0.0f;
  HERD_ASSIGN_OR_RETURN(
      const double gemm_ms,
      TimeMedianMs(
          [&](int) {
            return Check(cublasGemmEx(blas, CUBLAS_OP_N, CUBLAS_OP_N, kN, kN, kN, &alpha, a->get(),
                                      CUDA_R_16BF, kN, b->get(), CUDA_R_16BF, kN, &beta, d->get(),
                                      CUDA_R_16BF, kN, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         "cublasGemmEx");
          },
          3, 20));
  c.bf16_tflops = 2.0 * kN * kN * static_cast<double>(kN) / (gemm_ms * 1e-3) / 1e12;
  out << absl::StrFormat(
      "# ceilings: copy %.0f GB/s (read + write), cuBLAS bf16 %d^3 %.0f TFLOP/s\n", c.bandwidth_gbs,
      kN, c.bf16_tflops);
  return c;
}

// One projection shape of the expert layer.
struct GemmShape {
  const char* name;
  int64_t rows;  // output features
  int64_t cols;  // K
};

// Everything the expert GEMM rows of one shape need on the device.
struct GemmSetup {
  std::vector<Buffer> qweights;  // rotated between runs so L2 never holds them
  std::vector<Buffer> scales;
  std::vector<Buffer> bf16_weights;  // cuBLAS' copies: [experts][rows][cols], rotated too
  Buffer x;                          // F32 [experts * max_tokens, cols]
  Buffer x_bf16;
  Buffer out;
  Buffer offsets;
  Buffer workspace;
  PackedShape packed;
};

absl::StatusOr<GemmSetup> SetUpGemm(const KernelBenchOptions& options, const GemmShape& g,
                                    int64_t max_tokens, int64_t l2_bytes) {
  GemmSetup s;
  s.packed = PackedShape{g.rows, g.cols, QuantFormat{options.bits, options.group_size}};
  HERD_RETURN_IF_ERROR(ValidatePackedShape(s.packed));
  const size_t set_bytes = options.experts * s.packed.weight_bytes();
  const int sets = static_cast<int>(
      std::clamp<int64_t>(4 * l2_bytes / std::max<size_t>(set_bytes, 1) + 1, 1, 16));
  for (int i = 0; i < sets; ++i) {
    HERD_ASSIGN_OR_RETURN(Buffer q, DeviceBuffer::Create(set_bytes));
    HERD_RETURN_IF_ERROR(q->FillRandom(10 + i));
    HERD_ASSIGN_OR_RETURN(Buffer sc,
                          DeviceBuffer::Create(options.experts * s.packed.scale_bytes()));
    HERD_RETURN_IF_ERROR(sc->FillUniform(DeviceBuffer::Kind::kF16, 0.02f, 20 + i));
    s.qweights.push_back(std::move(q));
    s.scales.push_back(std::move(sc));
  }
  const size_t bf16_bytes = size_t(options.experts) * g.rows * g.cols * 2;
  const int bf16_sets = static_cast<int>(std::clamp<int64_t>(4 * l2_bytes / bf16_bytes + 1, 1, 16));
  for (int i = 0; i < bf16_sets; ++i) {
    HERD_ASSIGN_OR_RETURN(Buffer w, DeviceBuffer::Create(bf16_bytes));
    HERD_RETURN_IF_ERROR(w->FillUniform(DeviceBuffer::Kind::kBF16, 0.05f, 4 + i));
    s.bf16_weights.push_back(std::move(w));
  }
  const int64_t rows = options.experts * max_tokens;
  HERD_ASSIGN_OR_RETURN(s.x, DeviceBuffer::Create(rows * g.cols * 4));
  HERD_RETURN_IF_ERROR(s.x->FillUniform(DeviceBuffer::Kind::kF32, 1.0f, 5));
  HERD_ASSIGN_OR_RETURN(s.x_bf16, DeviceBuffer::Create(rows * g.cols * 2));
  HERD_RETURN_IF_ERROR(s.x_bf16->FillUniform(DeviceBuffer::Kind::kBF16, 1.0f, 6));
  HERD_ASSIGN_OR_RETURN(s.out, DeviceBuffer::Create(rows * g.rows * 4));
  HERD_ASSIGN_OR_RETURN(s.offsets, DeviceBuffer::Create((options.experts + 1) * 4));
  GroupedWeights like{nullptr, nullptr, options.experts, s.packed};
  HERD_ASSIGN_OR_RETURN(s.workspace, DeviceBuffer::Create(GroupedGemmWorkspaceBytes(like, rows)));
  return s;
}

absl::Status SetTokensPerExpert(const GemmSetup& s, int64_t experts, int64_t tokens) {
  std::vector<int32_t> offsets(experts + 1);
  for (int64_t e = 0; e <= experts; ++e) offsets[e] = static_cast<int32_t>(e * tokens);
  return FromCuda(
      cudaMemcpy(s.offsets->get(), offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice),
      "upload offsets");
}

// Ops per timed graph: each one reads another weight set, so that together
// they stream far more than L2 holds.
constexpr int kOpsPerGraph = 16;

// The weight set of the i-th op of a graph.
GroupedWeights RotatedWeights(const KernelBenchOptions& options, const GemmSetup& s, int i) {
  const size_t set = i % s.qweights.size();
  return {s.qweights[set]->get<uint8_t>(), s.scales[set]->get<uint16_t>(), options.experts,
          s.packed};
}

absl::StatusOr<double> TimeHerdGemm(const KernelBenchOptions& options, const GemmSetup& s,
                                    int64_t tokens) {
  HERD_RETURN_IF_ERROR(SetTokensPerExpert(s, options.experts, tokens));
  const int64_t rows = options.experts * tokens;
  return TimeGraphMs(
      [&](int i, cudaStream_t stream) {
        return GroupedGemm(RotatedWeights(options, s, i), s.x->get<float>(), rows,
                           s.offsets->get<int32_t>(), s.out->get<float>(), s.workspace->get(),
                           s.workspace->bytes(), stream);
      },
      kOpsPerGraph, options.warmup, options.iterations);
}

// The prefill form the engine takes from 256 rows per expert on: each expert
// dequantized to bf16, then multiplied by cuBLAS (dequantized_gemm.h).
absl::StatusOr<double> TimePrefillForm(const BlasHandle& blas, const KernelBenchOptions& options,
                                       const GemmSetup& s, int64_t tokens) {
  std::vector<int32_t> offsets(options.experts + 1);
  for (int64_t e = 0; e <= options.experts; ++e) offsets[e] = static_cast<int32_t>(e * tokens);
  GroupedWeights like{nullptr, nullptr, options.experts, s.packed};
  HERD_ASSIGN_OR_RETURN(Buffer scratch,
                        DeviceBuffer::Create(DequantizedGroupedGemmScratchBytes(like)));
  HERD_ASSIGN_OR_RETURN(Buffer workspace,
                        DeviceBuffer::Create(DequantizedGroupedGemmWorkspaceBytes(like, tokens)));
  const int64_t rows = options.experts * tokens;
  return TimeGraphMs(
      [&](int i, cudaStream_t stream) {
        return DequantizedGroupedGemm(blas, RotatedWeights(options, s, i), s.x->get<float>(), rows,
                                      offsets.data(), s.out->get<float>(), scratch->get(),
                                      scratch->bytes(), workspace->get(), workspace->bytes(),
                                      stream);
      },
      kOpsPerGraph, options.warmup, options.iterations);
}

// cuBLAS bf16 on the same shapes: one strided-batched GEMM over the experts.
absl::StatusOr<double> TimeCublasGemm(cublasHandle_t blas, const KernelBenchOptions& options,
                                      const GemmShape& g, const GemmSetup& s, int64_t tokens) {
  const float alpha = 1.0f;
  const float beta = 0.0f;
  return TimeGraphMs(
      [&](int i, cudaStream_t stream) {
        HERD_RETURN_IF_ERROR(Check(cublasSetStream(blas, stream), "cublasSetStream"));
        const void* weights = s.bf16_weights[i % s.bf16_weights.size()]->get();
        return Check(
            cublasGemmStridedBatchedEx(
                blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(g.rows), static_cast<int>(tokens),
                static_cast<int>(g.cols), &alpha, weights, CUDA_R_16BF, static_cast<int>(g.cols),
                g.rows * g.cols, s.x_bf16->get(), CUDA_R_16BF, static_cast<int>(g.cols),
                tokens * g.cols, &beta, s.out->get(), CUDA_R_32F, static_cast<int>(g.rows),
                tokens * g.rows, static_cast<int>(options.experts), CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DEFAULT),
            "cublasGemmStridedBatchedEx");
      },
      kOpsPerGraph, options.warmup, options.iterations);
}

absl::Status BenchGroupedGemm(cublasHandle_t blas, const KernelBenchOptions& options,
                              const Ceilings& ceilings, int64_t l2_bytes, std::ostream& out) {
  const GemmShape shapes[] = {{"gate/up", options.ffn, options.hidden},
                              {"down", options.hidden, options.ffn}};
  const int64_t max_decode =
      *std::max_element(options.decode_tokens.begin(), options.decode_tokens.end());
  const int64_t max_prefill =
      options.prefill_tokens.empty()
          ? 0
          : *std::max_element(options.prefill_tokens.begin(), options.prefill_tokens.end());
  out << absl::StrFormat("\n## grouped GEMM W%dA16 (group %d), %d experts, hidden %d, ffn %d\n",
                         options.bits, options.group_size, options.experts, options.hidden,
                         options.ffn);
  out << absl::StrFormat("%-8s %-8s %8s %10s %9s %8s %11s %9s %11s %10s %9s\n", "shape", "tok/exp",
                         "herd_us", "GB/s", "%copy_bw", "TFLOP/s", "cublas_us", "speedup",
                         "prefill_us", "prefill_TF", "%bf16");
  BlasHandle herd_blas;
  HERD_RETURN_IF_ERROR(BlasHandle::Create(&herd_blas));
  for (const GemmShape& g : shapes) {
    HERD_ASSIGN_OR_RETURN(const GemmSetup s,
                          SetUpGemm(options, g, std::max(max_decode, max_prefill), l2_bytes));
    std::vector<int64_t> all_tokens = options.decode_tokens;
    all_tokens.insert(all_tokens.end(), options.prefill_tokens.begin(),
                      options.prefill_tokens.end());
    for (int64_t tokens : all_tokens) {
      HERD_ASSIGN_OR_RETURN(const double herd_ms, TimeHerdGemm(options, s, tokens));
      HERD_ASSIGN_OR_RETURN(const double blas_ms, TimeCublasGemm(blas, options, g, s, tokens));
      const double rows = static_cast<double>(options.experts * tokens);
      const double bytes =
          options.experts * static_cast<double>(s.packed.weight_bytes() + s.packed.scale_bytes()) +
          rows * g.cols * 4 + rows * g.rows * 4;
      const double gbs = bytes / (herd_ms * 1e-3) / 1e9;
      const double tflops = 2.0 * rows * g.rows * g.cols / (herd_ms * 1e-3) / 1e12;
      std::string prefill = absl::StrFormat("%11s %10s %9s", "-", "-", "-");
      if (std::find(options.prefill_tokens.begin(), options.prefill_tokens.end(), tokens) !=
          options.prefill_tokens.end()) {
        HERD_ASSIGN_OR_RETURN(const double prefill_ms,
                              TimePrefillForm(herd_blas, options, s, tokens));
        const double prefill_tflops = 2.0 * rows * g.rows * g.cols / (prefill_ms * 1e-3) / 1e12;
        prefill = absl::StrFormat("%11.1f %10.1f %8.1f%%", prefill_ms * 1e3, prefill_tflops,
                                  100.0 * prefill_tflops / ceilings.bf16_tflops);
      }
      out << absl::StrFormat("%-8s %-8d %8.1f %10.0f %8.1f%% %8.1f %11.1f %8.2fx %s\n", g.name,
                             tokens, herd_ms * 1e3, gbs, 100.0 * gbs / ceilings.bandwidth_gbs,
                             tflops, blas_ms * 1e3, blas_ms / herd_ms, prefill);
    }
  }
  out << absl::StrFormat(
      "# GB/s counts packed weights + scales + f32 activations in and out; TFLOP/s is "
      "2*rows*N*K / time (bf16 peak measured above: %.0f); prefill_*: the engine's form for "
      "prefill-sized groups (each expert dequantized to bf16, then cuBLAS), dequantization "
      "included\n",
      ceilings.bf16_tflops);
  return absl::OkStatus();
}

template <typename T>
absl::Status Upload(const DeviceBuffer& dst, const std::vector<T>& host) {
  return FromCuda(
      cudaMemcpy(dst.get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
      "upload");
}

// Every other op of a layer, at one decode batch and one prefill, with the
// bytes it must move (each input read once, each output written once) as a
// share of the copy bandwidth, and attention prefill's rate.
absl::Status BenchOtherOps(const KernelBenchOptions& options, const Ceilings& ceilings,
                           std::ostream& out) {
  const int64_t hidden = options.hidden;
  const int64_t ffn = options.ffn;
  const int64_t experts = options.experts;
  const int64_t top_k = 2;
  const cpu::AttentionShape attn{options.heads, options.kv_heads, options.head_dim};
  const int64_t q_width = attn.num_heads * attn.head_dim;
  const int64_t kv_width = attn.num_kv_heads * attn.head_dim;
  const int64_t vocab = options.vocab;
  const int64_t batch = options.decode_batch;
  const int64_t context = options.decode_context;
  const int64_t prefill = options.prefill_length;
  constexpr int64_t kBlockTokens = 16;
  const int64_t max_tokens = std::max(batch, prefill);
  const int64_t blocks_per_seq = (std::max(context, prefill) + kBlockTokens - 1) / kBlockTokens;
  const int64_t num_blocks = batch * blocks_per_seq;

  using Kind = DeviceBuffer::Kind;
  const auto make = [](size_t bytes, Kind kind, uint64_t seed) -> absl::StatusOr<Buffer> {
    HERD_ASSIGN_OR_RETURN(Buffer b, DeviceBuffer::Create(bytes));
    HERD_RETURN_IF_ERROR(b->FillUniform(kind, 1.0f, seed));
    return b;
  };
  HERD_ASSIGN_OR_RETURN(Buffer table, make(vocab * hidden * 2, Kind::kF16, 1));
  HERD_ASSIGN_OR_RETURN(Buffer x, make(max_tokens * hidden * 4, Kind::kF32, 2));
  HERD_ASSIGN_OR_RETURN(Buffer y,
                        make(max_tokens * top_k * std::max(hidden, ffn) * 4, Kind::kF32, 3));
  HERD_ASSIGN_OR_RETURN(Buffer norm_weight, make(hidden * 4, Kind::kF32, 4));
  HERD_ASSIGN_OR_RETURN(Buffer gate, make(max_tokens * top_k * ffn * 4, Kind::kF32, 5));
  HERD_ASSIGN_OR_RETURN(Buffer up, make(max_tokens * top_k * ffn * 4, Kind::kF32, 6));
  HERD_ASSIGN_OR_RETURN(Buffer router_logits, make(max_tokens * experts * 4, Kind::kF32, 7));
  HERD_ASSIGN_OR_RETURN(Buffer q, make(max_tokens * q_width * 4, Kind::kF32, 8));
  HERD_ASSIGN_OR_RETURN(Buffer attn_out, make(max_tokens * q_width * 4, Kind::kF32, 9));
  HERD_ASSIGN_OR_RETURN(Buffer k_new, make(max_tokens * kv_width * 4, Kind::kF32, 10));
  HERD_ASSIGN_OR_RETURN(Buffer keys,
                        make(num_blocks * kBlockTokens * kv_width * 4, Kind::kF32, 11));
  HERD_ASSIGN_OR_RETURN(Buffer values,
                        make(num_blocks * kBlockTokens * kv_width * 4, Kind::kF32, 12));
  HERD_ASSIGN_OR_RETURN(Buffer logits,
                        make(std::max(batch * vocab, options.large_vocab) * 4, Kind::kF32, 13));
  HERD_ASSIGN_OR_RETURN(Buffer ids, DeviceBuffer::Create(max_tokens * 4));
  HERD_ASSIGN_OR_RETURN(Buffer expert_idx, DeviceBuffer::Create(max_tokens * top_k * 4));
  HERD_ASSIGN_OR_RETURN(Buffer route_weights, DeviceBuffer::Create(max_tokens * top_k * 4));
  HERD_ASSIGN_OR_RETURN(Buffer row_to_slot, DeviceBuffer::Create(max_tokens * top_k * 4));
  HERD_ASSIGN_OR_RETURN(Buffer slot_to_row, DeviceBuffer::Create(max_tokens * top_k * 4));
  HERD_ASSIGN_OR_RETURN(Buffer offsets, DeviceBuffer::Create((experts + 1) * 4));
  HERD_ASSIGN_OR_RETURN(Buffer permute_ws, DeviceBuffer::Create(PermuteByExpertWorkspaceBytes(
                                               max_tokens * top_k, experts)));
  HERD_ASSIGN_OR_RETURN(Buffer positions, DeviceBuffer::Create(max_tokens * 4));
  HERD_ASSIGN_OR_RETURN(Buffer slots, DeviceBuffer::Create(max_tokens * 4));
  HERD_ASSIGN_OR_RETURN(Buffer block_tables, DeviceBuffer::Create(num_blocks * 4));
  HERD_ASSIGN_OR_RETURN(Buffer decode_seqs,
                        DeviceBuffer::Create(batch * sizeof(DeviceAttentionSequence)));
  HERD_ASSIGN_OR_RETURN(Buffer prefill_seq, DeviceBuffer::Create(sizeof(DeviceAttentionSequence)));
  const size_t attn_ws_bytes = AttentionWorkspaceBytes(attn, batch, context);
  HERD_ASSIGN_OR_RETURN(Buffer attn_ws, DeviceBuffer::Create(attn_ws_bytes));
  HERD_ASSIGN_OR_RETURN(Buffer sample_ws, DeviceBuffer::Create(SampleTopPRowsWorkspaceBytes(
                                              batch, std::max(vocab, options.large_vocab))));
  HERD_ASSIGN_OR_RETURN(Buffer temperature, DeviceBuffer::Create(batch * 4));
  HERD_ASSIGN_OR_RETURN(Buffer top_p, DeviceBuffer::Create(batch * 4));
  HERD_ASSIGN_OR_RETURN(Buffer u01, DeviceBuffer::Create(batch * 8));

  std::vector<int32_t> host_ids(max_tokens);
  std::vector<int32_t> host_positions(max_tokens);
  std::vector<int32_t> host_slots(max_tokens);
  for (int64_t t = 0; t < max_tokens; ++t) {
    host_ids[t] = static_cast<int32_t>((t * 7919) % vocab);
    host_positions[t] = static_cast<int32_t>(t);
    host_slots[t] = static_cast<int32_t>(t);
  }
  std::vector<int32_t> host_tables(num_blocks);
  for (int64_t b = 0; b < num_blocks; ++b) host_tables[b] = static_cast<int32_t>(b);
  std::vector<DeviceAttentionSequence> host_decode(batch);
  for (int64_t s = 0; s < batch; ++s) host_decode[s] = {s, 1, context - 1, s * blocks_per_seq};
  const std::vector<DeviceAttentionSequence> host_prefill = {{0, prefill, 0, 0}};
  HERD_RETURN_IF_ERROR(Upload(*ids, host_ids));
  HERD_RETURN_IF_ERROR(Upload(*positions, host_positions));
  HERD_RETURN_IF_ERROR(Upload(*slots, host_slots));
  HERD_RETURN_IF_ERROR(Upload(*block_tables, host_tables));
  HERD_RETURN_IF_ERROR(Upload(*decode_seqs, host_decode));
  HERD_RETURN_IF_ERROR(Upload(*prefill_seq, host_prefill));
  HERD_RETURN_IF_ERROR(Upload(*temperature, std::vector<float>(batch, 0.8f)));
  HERD_RETURN_IF_ERROR(Upload(*top_p, std::vector<float>(batch, 0.9f)));
  HERD_RETURN_IF_ERROR(Upload(*u01, std::vector<double>(batch, 0.5)));
  const DeviceKvBlocks kv_write{keys->get<float>(), values->get<float>(), kBlockTokens * kv_width,
                                kBlockTokens};
  const cpu::KvBlocks kv_read{keys->get<float>(), values->get<float>(), kBlockTokens * kv_width,
                              kBlockTokens};

  out << absl::StrFormat("\n## other ops: decode batch %d (context %d), prefill %d tokens\n", batch,
                         context, prefill);
  out << absl::StrFormat("%-22s %-22s %9s %9s %9s %9s\n", "op", "shape", "us", "GB/s", "%copy_bw",
                         "TFLOP/s");
  const auto row = [&](const std::string& op, const std::string& shape, double bytes, double flops,
                       const std::function<absl::Status(void*)>& body) -> absl::Status {
    HERD_ASSIGN_OR_RETURN(const double ms,
                          TimeGraphMs([&](int, cudaStream_t stream) { return body(stream); },
                                      kOpsPerGraph, options.warmup, options.iterations));
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    out << absl::StrFormat("%-22s %-22s %9.1f %9.0f %8.1f%% %9s\n", op, shape, ms * 1e3, gbs,
                           100.0 * gbs / ceilings.bandwidth_gbs,
                           flops > 0 ? absl::StrFormat("%.1f", flops / (ms * 1e-3) / 1e12) : "-");
    return absl::OkStatus();
  };
  const auto dims = [](int64_t a, int64_t b) { return absl::StrCat(a, "x", b); };

  // Routing state the later rows read: computed once, outside the timing.
  HERD_RETURN_IF_ERROR(RouterTopK(router_logits->get<float>(), max_tokens, experts, top_k,
                                  RouterScoring::kSoftmax, true, expert_idx->get<int32_t>(),
                                  route_weights->get<float>(), nullptr));
  for (int64_t t : {batch, prefill}) {
    const std::string tag = t == batch ? "decode" : "prefill";
    HERD_RETURN_IF_ERROR(
        row("embedding f16 " + tag, dims(t, hidden), t * hidden * 6.0, 0, [&](void* st) {
          return EmbeddingLookup(table->get(), DType::kF16, vocab, hidden, ids->get<int32_t>(), t,
                                 x->get<float>(), nullptr, st);
        }));
    HERD_RETURN_IF_ERROR(row("rmsnorm " + tag, dims(t, hidden), t * hidden * 8.0, 0, [&](void* st) {
      return RmsNorm(x->get<float>(), norm_weight->get<float>(), t, hidden, 1e-5f, y->get<float>(),
                     st);
    }));
    HERD_RETURN_IF_ERROR(
        row("router top-2 " + tag, dims(t, experts), t * experts * 4.0, 0, [&](void* st) {
          return RouterTopK(router_logits->get<float>(), t, experts, top_k, RouterScoring::kSoftmax,
                            true, expert_idx->get<int32_t>(), route_weights->get<float>(), st);
        }));
    HERD_RETURN_IF_ERROR(row(
        "permute " + tag, absl::StrCat(t * top_k, " slots"), t * top_k * 12.0, 0, [&](void* st) {
          return PermuteByExpert(expert_idx->get<int32_t>(), t * top_k, experts,
                                 row_to_slot->get<int32_t>(), offsets->get<int32_t>(),
                                 slot_to_row->get<int32_t>(), permute_ws->get(),
                                 permute_ws->bytes(), st);
        }));
    HERD_RETURN_IF_ERROR(row("gather rows " + tag, dims(t * top_k, hidden),
                             t * top_k * hidden * 8.0, 0, [&](void* st) {
                               return GatherRows(x->get<float>(), row_to_slot->get<int32_t>(),
                                                 t * top_k, top_k, hidden, y->get<float>(), st);
                             }));
    HERD_RETURN_IF_ERROR(
        row("swiglu " + tag, dims(t * top_k, ffn), t * top_k * ffn * 12.0, 0, [&](void* st) {
          return SwiGlu(gate->get<float>(), up->get<float>(), t * top_k * ffn, y->get<float>(), st);
        }));
    HERD_RETURN_IF_ERROR(
        row("combine " + tag, dims(t, hidden), t * hidden * (top_k + 2) * 4.0, 0, [&](void* st) {
          return CombineWeighted(y->get<float>(), slot_to_row->get<int32_t>(),
                                 route_weights->get<float>(), t, top_k, hidden, x->get<float>(),
                                 st);
        }));
    HERD_RETURN_IF_ERROR(
        row("rope q " + tag, dims(t, q_width), t * q_width * 8.0, 0, [&](void* st) {
          return ApplyRope(q->get<float>(), t, attn.num_heads, attn.head_dim, attn.head_dim,
                           positions->get<int32_t>(), 1e6f, RopeStyle::kNeox, st);
        }));
    HERD_RETURN_IF_ERROR(
        row("append kv " + tag, dims(t, kv_width), t * kv_width * 16.0, 0, [&](void* st) {
          return AppendKv(attn, k_new->get<float>(), k_new->get<float>(), t, slots->get<int32_t>(),
                          kv_write, st);
        }));
  }
  const double decode_kv_bytes = 2.0 * batch * context * kv_width * 4;
  HERD_RETURN_IF_ERROR(row(
      "attention decode", absl::StrCat(batch, " seq x ", context, " ctx"),
      decode_kv_bytes + 2.0 * batch * q_width * 4, 4.0 * batch * context * q_width, [&](void* st) {
        return Attention(attn, kv_read, q->get<float>(),
                         decode_seqs->get<DeviceAttentionSequence>(), batch, batch, 1,
                         block_tables->get<int32_t>(), attn_out->get<float>(), attn_ws->get(),
                         attn_ws->bytes(), st);
      }));
  HERD_RETURN_IF_ERROR(row("attention prefill", absl::StrCat("1 seq x ", prefill, " tok"),
                           2.0 * prefill * (q_width + kv_width) * 4,
                           4.0 * q_width * prefill * (prefill + 1) / 2.0, [&](void* st) {
                             return Attention(attn, kv_read, q->get<float>(),
                                              prefill_seq->get<DeviceAttentionSequence>(), 1,
                                              prefill, prefill, block_tables->get<int32_t>(),
                                              attn_out->get<float>(), nullptr, 0, st);
                           }));
  HERD_RETURN_IF_ERROR(row("argmax", dims(batch, vocab), batch * vocab * 4.0, 0, [&](void* st) {
    return ArgMaxRows(logits->get<float>(), batch, vocab, ids->get<int32_t>(), st);
  }));
  HERD_RETURN_IF_ERROR(
      row("top-p sample", dims(batch, vocab), batch * vocab * 4.0, 0, [&](void* st) {
        return SampleTopPRows(logits->get<float>(), batch, vocab, temperature->get<float>(),
                              top_p->get<float>(), u01->get<double>(), ids->get<int32_t>(),
                              sample_ws->get(), sample_ws->bytes(), st);
      }));
  HERD_RETURN_IF_ERROR(row(
      "top-p sample", dims(1, options.large_vocab), options.large_vocab * 4.0, 0, [&](void* st) {
        return SampleTopPRows(logits->get<float>(), 1, options.large_vocab,
                              temperature->get<float>(), top_p->get<float>(), u01->get<double>(),
                              ids->get<int32_t>(), sample_ws->get(), sample_ws->bytes(), st);
      }));
  out << "# attention decode TFLOP/s counts QK and PV (4 * ctx * heads * head_dim per token); "
         "prefill counts the causal half\n";
  return absl::OkStatus();
}

}  // namespace

absl::Status KernelBenchOptions::Validate() const {
  if (hidden <= 0 || ffn <= 0 || experts <= 0 || experts > 1024) {
    return absl::InvalidArgumentError("--hidden, --ffn must be positive, --experts in [1, 1024]");
  }
  if (iterations < 1 || warmup < 0) {
    return absl::InvalidArgumentError("--iterations must be >= 1 and --warmup >= 0");
  }
  if (heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || head_dim <= 0 || head_dim > 256 ||
      vocab <= 0 || large_vocab <= 0 || decode_batch <= 0 || decode_context <= 0 ||
      prefill_length <= 0) {
    return absl::InvalidArgumentError(
        "the other ops' shapes must be positive (heads a multiple "
        "of kv heads, head_dim <= 256)");
  }
  if (decode_tokens.empty()) return absl::InvalidArgumentError("--decode-tokens is empty");
  for (int64_t t : decode_tokens) {
    if (t <= 0) return absl::InvalidArgumentError("--decode-tokens must be positive");
  }
  for (int64_t t : prefill_tokens) {
    if (t <= 0) return absl::InvalidArgumentError("--prefill-tokens must be positive");
  }
  return ValidatePackedShape(PackedShape{ffn, hidden, QuantFormat{bits, group_size}});
}

absl::Status RunKernelBench(const KernelBenchOptions& options, std::ostream& out) {
  HERD_RETURN_IF_ERROR(options.Validate());
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    return absl::FailedPreconditionError("herd bench kernels needs a CUDA device; none is usable");
  }
  cudaDeviceProp prop;
  HERD_RETURN_IF_ERROR(FromCuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties"));
  int driver = 0;
  cudaDriverGetVersion(&driver);
  out << absl::StrFormat("# device: %s, %d SMs, %.0f GiB, L2 %d MiB, driver CUDA %d.%d\n",
                         prop.name, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0,
                         prop.l2CacheSize >> 20, driver / 1000, (driver % 1000) / 10);
  cublasHandle_t blas;
  HERD_RETURN_IF_ERROR(Check(cublasCreate(&blas), "cublasCreate"));
  // A workspace of its own, so that cuBLAS allocates nothing inside a graph capture.
  HERD_ASSIGN_OR_RETURN(Buffer blas_workspace, DeviceBuffer::Create(size_t{64} << 20));
  HERD_RETURN_IF_ERROR(
      Check(cublasSetWorkspace(blas, blas_workspace->get(), blas_workspace->bytes()),
            "cublasSetWorkspace"));
  absl::Status status = [&]() -> absl::Status {
    HERD_ASSIGN_OR_RETURN(const Ceilings ceilings, MeasureCeilings(blas, options, out));
    HERD_RETURN_IF_ERROR(BenchGroupedGemm(blas, options, ceilings, prop.l2CacheSize, out));
    if (!options.other_ops) return absl::OkStatus();
    return BenchOtherOps(options, ceilings, out);
  }();
  cublasDestroy(blas);
  return status;
}

}  // namespace herd::cuda
