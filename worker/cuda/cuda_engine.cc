#include "worker/cuda/cuda_engine.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "core/dtype.h"
#include "core/human_format.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/dense_gemm.h"
#include "kernels/cuda/dequantized_gemm.h"
#include "kernels/cuda/grouped_gemm.h"
#include "kernels/cuda/routing.h"
#include "worker/cuda/cuda_row_mover.h"
#include "worker/resident_row_exchange.h"

namespace herd {
namespace {

// Device memory the engine owns.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Replaces the buffer by `bytes` (at least 1) of new, uninitialised memory;
  // ResourceExhausted naming `what` when the device has no room.
  absl::Status Allocate(size_t bytes, const std::string& what) {
    Reset();
    bytes = std::max<size_t>(bytes, 1);
    const absl::Status status = cuda::Malloc(&ptr_, bytes);
    if (!status.ok()) {
      ptr_ = nullptr;
      size_t free_bytes = 0, total_bytes = 0;
      (void)cuda::MemoryInfo(&free_bytes, &total_bytes);
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", bytes, " bytes on the GPU for ", what, " (", free_bytes,
                       " bytes free of ", total_bytes, "): ", status.message()));
    }
    bytes_ = bytes;
    return absl::OkStatus();
  }
  absl::Status Upload(const void* host, size_t bytes, const std::string& what) {
    HERD_RETURN_IF_ERROR(Allocate(bytes, what));
    return bytes == 0 ? absl::OkStatus() : cuda::CopyToDevice(ptr_, host, bytes);
  }
  void Reset() {
    if (ptr_ != nullptr) (void)cuda::Free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// The float values of a [rows, cols] matrix of any dtype, row-major.
std::vector<float> ToF32(const TensorView& w) {
  const int64_t rows = w.dim(0);
  const int64_t cols = w.dim(1);
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    if (w.dtype() == DType::kQuant) {
      DequantizeQuantizedRow(w.quant_format(), w.quantized(), cols, r, out.data() + r * cols);
    } else {
      DequantizeRow(w.dtype(), w.row(r), out.data() + r * cols, cols);
    }
  }
  return out;
}

bool IsNativeQuantized(DType dtype) { return dtype == DType::kQ4_0 || dtype == DType::kQ8_0; }
bool IsFloatDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

// The format a matrix takes in the grouped GEMM: Q4_0/Q8_0 as they are,
// anything else int8 in groups of 32.
cuda::QuantFormat GemmFormat(DType dtype) {
  if (IsNativeQuantized(dtype)) return *cuda::NativeFormat(dtype);
  return cuda::QuantFormat{8, 32};
}

// Packs `w` for the grouped GEMM into the host arrays; types PackWeight
// cannot quantize itself go through F32.
absl::Status PackForGemm(const TensorView& w, const cuda::PackedShape& shape, uint8_t* qweight,
                         uint16_t* scales) {
  if (IsNativeQuantized(w.dtype()) || IsFloatDType(w.dtype())) {
    return cuda::PackWeight(w, shape, qweight, scales);
  }
  const std::vector<float> values = ToF32(w);
  return cuda::PackWeight(TensorView(DType::kF32, {w.dim(0), w.dim(1)}, values.data()), shape,
                          qweight, scales);
}

// One projection y = x W^T on the device: a one-expert grouped GEMM for
// Q4_0/Q8_0 weights, a cuBLAS matrix otherwise.
struct DeviceMatrix {
  bool quantized = false;
  DeviceBuffer qweight, scales, dense_data;
  cuda::GroupedWeights grouped;
  cuda::DenseWeights dense;

  int64_t bytes() const {
    return static_cast<int64_t>(qweight.bytes() + scales.bytes() + dense_data.bytes());
  }
};

// How a projection sits on the device: grouped-GEMM int4/int8 (Q4_0, Q8_0),
// or a cuBLAS matrix in F32 (F32 weights, and the router whatever its dtype)
// or BF16 (everything else).
enum class MatrixKind { kGrouped, kF32, kBf16 };
MatrixKind KindOf(DType dtype, bool f32) {
  if (!f32 && IsNativeQuantized(dtype)) return MatrixKind::kGrouped;
  return f32 || dtype == DType::kF32 ? MatrixKind::kF32 : MatrixKind::kBf16;
}

// Device bytes of `w` uploaded as UploadMatrix does.
int64_t MatrixBytes(const TensorView& w, bool f32) {
  const int64_t values = w.dim(0) * w.dim(1);
  switch (KindOf(w.dtype(), f32)) {
    case MatrixKind::kGrouped: {
      const cuda::PackedShape shape{w.dim(0), w.dim(1), GemmFormat(w.dtype())};
      return shape.weight_bytes() + shape.scale_bytes();
    }
    case MatrixKind::kF32:
      return values * 4;
    case MatrixKind::kBf16:
      return values * 2;
  }
  return 0;
}

// Device bytes of one expert matrix as UploadExperts places it: packed for
// the grouped GEMM, or a cuBLAS matrix for float experts.
int64_t ExpertBytes(const TensorView& w) {
  if (IsFloatDType(w.dtype())) return MatrixBytes(w, false);
  const cuda::PackedShape shape{w.dim(0), w.dim(1), GemmFormat(w.dtype())};
  return shape.weight_bytes() + shape.scale_bytes();
}

// Workspace bytes of a GEMM over `rows` rows with `w` (and, for a layer's
// quantized experts, `num_experts` of its shape) as UploadMatrix and
// UploadExperts place it.
size_t GemmWorkspaceBytes(const TensorView& w, bool f32, int64_t rows, int64_t num_experts = 1) {
  const MatrixKind kind = KindOf(w.dtype(), f32);
  if (kind == MatrixKind::kGrouped || (num_experts > 1 && !IsFloatDType(w.dtype()))) {
    const cuda::PackedShape shape{w.dim(0), w.dim(1), GemmFormat(w.dtype())};
    return cuda::GroupedGemmWorkspaceBytes({nullptr, nullptr, num_experts, shape}, rows);
  }
  return cuda::DenseGemmWorkspaceBytes(
      {nullptr, kind == MatrixKind::kF32 ? DType::kF32 : DType::kBF16, w.dim(0), w.dim(1)}, rows);
}

// Uploads `w`; `f32` keeps F32 values whatever the stored dtype (the router).
absl::Status UploadMatrix(const TensorView& w, bool f32, const std::string& name, DeviceMatrix* m) {
  const int64_t rows = w.dim(0);
  const int64_t cols = w.dim(1);
  const MatrixKind kind = KindOf(w.dtype(), f32);
  if (kind == MatrixKind::kGrouped) {
    const cuda::PackedShape shape{rows, cols, GemmFormat(w.dtype())};
    std::vector<uint8_t> qweight(shape.weight_bytes());
    std::vector<uint16_t> scales(shape.scale_bytes() / 2);
    HERD_RETURN_IF_ERROR(cuda::PackWeight(w, shape, qweight.data(), scales.data()));
    HERD_RETURN_IF_ERROR(m->qweight.Upload(qweight.data(), qweight.size(), name));
    HERD_RETURN_IF_ERROR(m->scales.Upload(scales.data(), scales.size() * 2, name));
    m->quantized = true;
    m->grouped = {m->qweight.as<uint8_t>(), m->scales.as<uint16_t>(), 1, shape};
    return absl::OkStatus();
  }
  const std::vector<float> values = ToF32(w);
  if (kind == MatrixKind::kF32) {
    HERD_RETURN_IF_ERROR(m->dense_data.Upload(values.data(), values.size() * sizeof(float), name));
    m->dense = {m->dense_data.get(), DType::kF32, rows, cols};
    return absl::OkStatus();
  }
  std::vector<uint16_t> bf16(values.size());
  for (size_t i = 0; i < values.size(); ++i) bf16[i] = F32ToBF16(values[i]);
  HERD_RETURN_IF_ERROR(m->dense_data.Upload(bf16.data(), bf16.size() * 2, name));
  m->dense = {m->dense_data.get(), DType::kBF16, rows, cols};
  return absl::OkStatus();
}

// What the prefill form of quantized experts (DequantizedExperts) needs in a
// step of `tokens` tokens: a bf16 matrix of the largest expert, and a
// workspace for the bf16 activations of up to all of the step's rows on one
// expert (a rank holding one expert may get them all). Zeros when the form
// cannot be taken.
struct DequantizedExpertsBuffers {
  size_t scratch = 0;
  size_t workspace = 0;
};
DequantizedExpertsBuffers DequantizedExpertsBytes(const Model& model,
                                                  const CudaEngineOptions& options,
                                                  int64_t tokens) {
  const int64_t rows = tokens * model.spec.num_experts_per_token;
  DequantizedExpertsBuffers bytes;
  if (options.dequantized_experts_min_rows <= 0 || rows < options.dequantized_experts_min_rows) {
    return bytes;
  }
  for (const LayerWeights& w : model.layers) {
    for (const ExpertFfnWeights& e : w.experts) {
      if (e.gate.empty() || IsFloatDType(e.gate.dtype())) continue;
      for (const TensorView* m : {&e.gate, &e.up, &e.down}) {
        bytes.scratch =
            std::max(bytes.scratch, static_cast<size_t>(m->dim(0) * m->dim(1)) * sizeof(uint16_t));
        bytes.workspace =
            std::max(bytes.workspace, static_cast<size_t>(rows * m->dim(1)) * sizeof(uint16_t));
      }
      break;  // a layer's experts share one shape and dtype
    }
  }
  return bytes;
}

// One of a layer's expert projections (gate, up or down). Quantized experts
// are packed back to back for the grouped GEMM; float experts (F32, F16,
// BF16) are one cuBLAS matrix each, so their values stay those of the
// checkpoint (BF16 at worst). Expert e sits in slot local_slot[e] (-1: not on
// this GPU): a single GPU keeps a slot for every expert (absent ones are
// zeros), an expert-parallel rank only for the experts it holds, in order.
struct DeviceExperts {
  DeviceBuffer qweight, scales;
  cuda::GroupedWeights weights;
  std::vector<DeviceMatrix> dense;  // float experts, by slot; an absent one is empty
  std::vector<int32_t> local_slot;  // [num_experts]; empty when every expert was dropped
  int64_t num_slots = 0;

  int64_t bytes() const {
    int64_t total = static_cast<int64_t>(qweight.bytes() + scales.bytes());
    for (const DeviceMatrix& m : dense) total += m.bytes();
    return total;
  }
};

// `held` (null: every expert) names the experts that get a slot.
absl::Status UploadExperts(const LayerWeights& layer, TensorView ExpertFfnWeights::*which,
                           const std::vector<bool>* held, const std::string& name,
                           DeviceExperts* out) {
  const TensorView* first = nullptr;
  for (const ExpertFfnWeights& e : layer.experts) {
    if (e.resident()) {
      first = &(e.*which);
      break;
    }
  }
  if (first == nullptr) return absl::OkStatus();  // every expert dropped (or none held)
  const int64_t num_experts = static_cast<int64_t>(layer.experts.size());
  std::vector<int64_t> slot_expert;  // the expert of each slot
  out->local_slot.assign(num_experts, -1);
  for (int64_t e = 0; e < num_experts; ++e) {
    const ExpertFfnWeights& expert = layer.experts[e];
    if (held != nullptr && !(*held)[e]) continue;
    out->local_slot[e] = static_cast<int32_t>(slot_expert.size());
    slot_expert.push_back(e);
    if (!expert.resident()) continue;
    const TensorView& w = expert.*which;
    if (w.dtype() != first->dtype() || w.dim(0) != first->dim(0) || w.dim(1) != first->dim(1)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " expert ", e, " is ", w.DebugString(),
                                                     ", the layer's first ", first->DebugString()));
    }
  }
  out->num_slots = static_cast<int64_t>(slot_expert.size());
  if (IsFloatDType(first->dtype())) {
    out->dense.resize(out->num_slots);
    for (int64_t slot = 0; slot < out->num_slots; ++slot) {
      const ExpertFfnWeights& expert = layer.experts[slot_expert[slot]];
      if (!expert.resident()) continue;
      HERD_RETURN_IF_ERROR(UploadMatrix(expert.*which, false,
                                        absl::StrCat(name, " expert ", slot_expert[slot]),
                                        &out->dense[slot]));
    }
    return absl::OkStatus();
  }
  const cuda::PackedShape shape{first->dim(0), first->dim(1), GemmFormat(first->dtype())};
  const int64_t weight_bytes = shape.weight_bytes();
  const int64_t scale_values = shape.scale_bytes() / 2;
  std::vector<uint8_t> qweight(out->num_slots * weight_bytes, 0);
  std::vector<uint16_t> scales(out->num_slots * scale_values, 0);
  for (int64_t slot = 0; slot < out->num_slots; ++slot) {
    const ExpertFfnWeights& expert = layer.experts[slot_expert[slot]];
    if (!expert.resident()) continue;
    HERD_RETURN_IF_ERROR(PackForGemm(expert.*which, shape, qweight.data() + slot * weight_bytes,
                                     scales.data() + slot * scale_values));
  }
  HERD_RETURN_IF_ERROR(out->qweight.Upload(qweight.data(), qweight.size(), name));
  HERD_RETURN_IF_ERROR(out->scales.Upload(scales.data(), scales.size() * 2, name));
  out->weights = {out->qweight.as<uint8_t>(), out->scales.as<uint16_t>(), out->num_slots, shape};
  return absl::OkStatus();
}

// F32 1-D tensor (norm weight, bias) or nothing.
absl::Status UploadVector(const TensorView& v, const std::string& name, DeviceBuffer* out) {
  if (v.empty()) return absl::OkStatus();
  return out->Upload(v.data(), v.num_elements() * sizeof(float), name);
}

struct DeviceLayer {
  DeviceBuffer attn_norm, ffn_norm, q_norm, k_norm;
  DeviceBuffer q_bias, k_bias, v_bias, o_bias;
  DeviceBuffer router_mask;  // F32 [experts]: -inf for dropped experts; empty if none
  DeviceMatrix q, k, v, o, router;
  DeviceExperts gate, up, down;
  // The shared expert (Qwen2-MoE) and its gate, a [1, hidden] F32 matrix.
  bool has_shared = false;
  bool shared_gated = false;
  DeviceMatrix shared_gate, shared_up, shared_down, shared_gate_logit;
};

int64_t Align(int64_t bytes) { return (bytes + 15) / 16 * 16; }

// The activation and routing buffers of a step of `t` tokens, in the order
// of State::StepBuffers: x, h, q, k, v, attn, proj, router logits, expert
// idx, expert weights, row to slot, slot to row, expert offsets, expert in,
// gate out, up out, expert out, logit rows' hidden, logits, and the shared
// expert's gate out, up out, output and gate logits (empty without one).
constexpr int kNumStepBuffers = 23;
std::array<size_t, kNumStepBuffers> StepBufferBytes(const ModelSpec& s, int64_t t) {
  const int64_t slots = t * s.num_experts_per_token;
  const int64_t q_dim = s.num_heads * s.head_dim;
  const int64_t kv_dim = s.num_kv_heads * s.head_dim;
  const int64_t hidden = s.hidden_size;
  const int64_t ffn = s.expert_ffn_size;
  const int64_t routing = slots * s.num_layers;
  const int64_t shared_ffn = s.shared_expert_ffn_size;
  const int64_t shared_rows = shared_ffn > 0 ? t : 0;
  const auto b = [](int64_t n) { return static_cast<size_t>(n) * 4; };  // F32 and I32
  return {// Every layer keeps its routing (expert ids and weights), so a routing
          // observer gets all of a step's in one copy after it.
          b(t * hidden),
          b(t * hidden),
          b(t * q_dim),
          b(t * kv_dim),
          b(t * kv_dim),
          b(t * q_dim),
          b(t * hidden),
          b(t * s.num_experts),
          b(routing),
          b(routing),
          b(slots),
          b(slots),
          b(s.num_experts + 1),
          b(slots * hidden),
          b(slots * ffn),
          b(slots * ffn),
          b(slots * hidden),
          b(t * hidden),
          b(t * s.vocab_size),
          b(shared_rows * shared_ffn),
          b(shared_rows * shared_ffn),
          b(shared_rows * hidden),
          b(shared_rows)};
}

// The shared expert's gate vector F32 [hidden] as a [1, hidden] matrix.
TensorView SharedGateMatrix(const LayerWeights& w) {
  return TensorView(DType::kF32, {1, w.shared_expert_gate.num_elements()},
                    w.shared_expert_gate.data());
}

// The GEMM and routing workspace a step of `t` tokens needs (one buffer
// shared by the step's ops, which run one after another).
size_t StepWorkspaceBytes(const Model& model, int64_t t) {
  const ModelSpec& s = model.spec;
  const int64_t slots = t * s.num_experts_per_token;
  size_t bytes = std::max(GemmWorkspaceBytes(model.lm_head, false, t),
                          cuda::PermuteByExpertWorkspaceBytes(slots, s.num_experts));
  for (const LayerWeights& w : model.layers) {
    for (const TensorView* m : {&w.q.weight, &w.k.weight, &w.v.weight, &w.o.weight}) {
      bytes = std::max(bytes, GemmWorkspaceBytes(*m, false, t));
    }
    if (w.moe_dropped) continue;
    bytes = std::max(bytes, GemmWorkspaceBytes(w.router, true, t));
    if (w.shared_expert.resident()) {
      for (const TensorView* m :
           {&w.shared_expert.gate, &w.shared_expert.up, &w.shared_expert.down}) {
        bytes = std::max(bytes, GemmWorkspaceBytes(*m, false, t));
      }
      if (!w.shared_expert_gate.empty()) {
        bytes = std::max(bytes, GemmWorkspaceBytes(SharedGateMatrix(w), true, t));
      }
    }
    for (const ExpertFfnWeights& e : w.experts) {
      if (!e.resident()) continue;
      for (const TensorView* m : {&e.gate, &e.up, &e.down}) {
        bytes = std::max(bytes, GemmWorkspaceBytes(*m, false, slots, s.num_experts));
      }
      break;  // a layer's experts share one shape and dtype
    }
  }
  return bytes;
}

// InvalidArgument or Unimplemented for what the engine cannot run (see
// the header); with need_every_expert, also for an expert that was not loaded.
absl::Status CheckSupported(const Model& model, const CudaEngineOptions& options,
                            bool need_every_expert) {
  const ModelSpec& s = model.spec;
  if (options.max_step_tokens < 1) {
    return absl::InvalidArgumentError("CudaEngineOptions.max_step_tokens must be >= 1");
  }
  for (size_t l = 0; l < model.layers.size(); ++l) {
    for (size_t e = 0; e < model.layers[l].experts.size(); ++e) {
      if (need_every_expert && model.layers[l].ExpertExists(static_cast<int>(e)) &&
          !model.layers[l].experts[e].resident()) {
        return absl::InvalidArgumentError(absl::StrCat("the CUDA engine needs every expert; layer ",
                                                       l, " expert ", e, " was not loaded"));
      }
    }
  }
  if (s.num_experts > cuda::kMaxRouterExperts || s.num_experts_per_token > cuda::kMaxRouterTopK) {
    return absl::UnimplementedError(
        absl::StrCat("the CUDA router takes up to ", cuda::kMaxRouterExperts, " experts and top-",
                     cuda::kMaxRouterTopK, "; the model has ", s.num_experts, " and top-",
                     s.num_experts_per_token));
  }
  if (s.head_dim > 256) {
    return absl::UnimplementedError(
        absl::StrCat("the CUDA attention takes head_dim <= 256; the model has ", s.head_dim));
  }
  return absl::OkStatus();
}

}  // namespace

struct CudaEngine::State {
  State(const Model& m, const CudaEngineOptions& o) : model(m), options(o) {}
  ~State() {
    for (auto& [key, graph] : graphs) (void)cuda::GraphDestroy(graph);
    device_exchange.reset();
    row_mover.reset();  // its stream waits on `stream`: before that goes
    if (routed != nullptr) (void)cuda::EventDestroy(routed);
    if (stream != nullptr) (void)cuda::StreamDestroy(stream);
  }

  absl::Status Upload();
  absl::Status UploadLayer(int64_t layer_idx);
  absl::Status Reserve(int64_t num_tokens, int64_t num_sequences, int64_t max_context);
  absl::Status Step(const Batch& batch, float* logits);
  // The launches of one step, after its indices are on the device.
  absl::Status Launch(int64_t num_tokens, int64_t num_sequences, int64_t max_chunk_tokens,
                      int64_t num_logit_rows, KvCache& cache);
  absl::Status Linear(const DeviceMatrix& m, const DeviceBuffer& bias, const float* x, int64_t rows,
                      const int32_t* offsets, float* out);
  // expert_out = the layer's SwiGLU experts over expert_in, rows grouped by
  // expert_offsets: quantized experts in three grouped GEMMs; float experts
  // one cuBLAS call per expert and projection, after the offsets come back
  // to the host (a synchronisation, so such models run without graphs).
  absl::Status GroupedExperts(const DeviceLayer& d, int64_t slots);
  // host_offsets holds the row offsets of d's slots ([num_slots + 1]).
  absl::Status DenseExperts(const DeviceLayer& d, int64_t slots);
  // Whether `rows` rows of d's quantized experts take the prefill form:
  // each expert dequantized to bf16 and multiplied by cuBLAS (never while a
  // graph is being captured: it needs the offsets on the host).
  bool DequantizesExperts(const DeviceLayer& d, int64_t rows) const {
    const int64_t min_rows = options.dequantized_experts_min_rows;
    return !capturing && min_rows > 0 && d.gate.dense.empty() && d.gate.num_slots > 0 &&
           rows >= min_rows * d.gate.num_slots;
  }
  // The prefill form, with host_offsets as for DenseExperts.
  absl::Status DequantizedExperts(const DeviceLayer& d, int64_t slots);
  // The layer's experts over `slots` grouped rows of expert_in, in whichever
  // form fits (DenseExperts, DequantizedExperts or GroupedExperts), with
  // host_offsets filled when `offsets_on_host`, else copied here when the
  // form needs them.
  absl::Status RunExperts(const DeviceLayer& d, int64_t slots, bool offsets_on_host);
  // Expert parallelism: the routed experts of layer `layer_idx` for a step of
  // `t` tokens (0: this rank has none, but takes part): the rows go to the
  // ranks holding their experts, this rank's experts run on what it
  // received, and expert_out gets each slot's row back, in slot order
  // (slot_to_row the identity). The routing comes to the host either way;
  // the rows travel through host memory with a host communicator, and stay
  // on the GPU with a device one (nccl: ExchangeOnDevice), where the layer's
  // shared expert (SharedExpertRows) runs on `stream` while they travel.
  absl::Status ExchangeExperts(int layer_idx, int64_t t);
  absl::Status ExchangeOnDevice(int layer_idx, int64_t t);
  // Whether ExchangeExperts runs the shared expert's rows itself.
  bool SharedExpertBesideExchange() const { return device_exchange != nullptr; }
  // The shared expert (Qwen2-MoE) over h into shared_out (and its gate
  // logits into shared_logit), then proj += shared_out scaled by the gate's
  // sigmoid.
  absl::Status SharedExpertRows(const DeviceLayer& d, int64_t t);
  absl::Status AddSharedExpert(const DeviceLayer& d, int64_t t);
  // Room for `rows` received rows in the expert buffers and the workspace.
  absl::Status ReserveExpertRows(int64_t rows);
  void ClearGraphs() {
    for (auto& [key, graph] : graphs) (void)cuda::GraphDestroy(graph);
    graphs.clear();
  }
  std::array<DeviceBuffer*, kNumStepBuffers> StepBuffers() {
    return {&x,
            &h,
            &q,
            &k,
            &v,
            &attn,
            &proj,
            &router_logits,
            &expert_idx,
            &expert_weights,
            &row_to_slot,
            &slot_to_row,
            &expert_offsets,
            &expert_in,
            &gate_out,
            &up_out,
            &expert_out,
            &logits_h,
            &logits_out,
            &shared_gate_out,
            &shared_up_out,
            &shared_out,
            &shared_logit};
  }

  const Model& model;
  const CudaEngineOptions options;
  void* stream = nullptr;
  cuda::BlasHandle blas;
  std::string device_name;
  int ordinal = 0;
  EngineStats stats;

  DeviceBuffer embedding;
  DType embedding_dtype = DType::kF32;
  DeviceBuffer output_norm;
  DeviceMatrix lm_head;
  const DeviceBuffer no_bias;  // empty
  std::vector<DeviceLayer> layers;
  int64_t weight_bytes = 0;

  // Activations and scratch for up to reserved_tokens tokens.
  int64_t reserved_tokens = 0;
  int64_t reserved_sequences = 0;
  int64_t reserved_context = 0;
  DeviceBuffer x, h, q, k, v, attn, proj, router_logits;
  DeviceBuffer expert_idx, expert_weights, row_to_slot, slot_to_row, expert_offsets;
  DeviceBuffer expert_in, gate_out, up_out, expert_out, logits_h, logits_out;
  DeviceBuffer shared_gate_out, shared_up_out, shared_out, shared_logit;
  DeviceBuffer workspace, attention_workspace;
  DeviceBuffer dequantized_expert;  // DequantizedExperts' bf16 matrix
  bool capturing = false;           // a decode step is being captured

  RoutingObserver routing_observer;
  // Dynamic expert skipping is on and some layer has a threshold.
  bool skips_experts = false;
  std::vector<int32_t> host_expert_idx;  // the step's routing, for routing_observer
  std::vector<float> host_expert_weights;

  // Whether decode steps may be captured (no float experts, no expert
  // parallelism).
  bool graphs_enabled = false;
  std::vector<int32_t> host_offsets;  // DenseExperts' copy of expert_offsets

  // Expert parallelism (ep.comm null: none): the placement, the exchange
  // (through the host for a host communicator, on the GPU for a device one),
  // and the host side of ExchangeExperts.
  ExpertParallelism ep;  // ep.placement is not used after Create: `placement` is the copy
  std::unique_ptr<ExpertPlacement> placement;
  std::unique_ptr<ExpertRowExchange> exchange;
  std::unique_ptr<CudaRowMover> row_mover;  // its own stream, ordered against `stream`
  std::unique_ptr<ResidentRowExchange> device_exchange;
  void* routed = nullptr;  // event: the layer's routing (and rows) copied to the host
  int64_t reserved_expert_rows = 0;
  std::vector<int32_t> host_idx, identity;  // the step's routing; slot -> slot
  std::vector<float> host_h, combined;      // normed rows out; expert rows back

  // The step's indices, uploaded in one copy (see Step for the layout).
  std::vector<uint8_t> host_staging;
  DeviceBuffer staging;
  const int32_t* token_ids = nullptr;
  const int32_t* positions = nullptr;
  const int32_t* slot_mapping = nullptr;
  const int32_t* logit_rows = nullptr;
  const int32_t* token_offsets = nullptr;  // {0, tokens}: one "expert" of all rows
  const int32_t* logit_offsets = nullptr;  // {0, logit rows}
  const int32_t* block_tables = nullptr;
  const cuda::DeviceAttentionSequence* sequences = nullptr;

  // Decode graphs by (tokens, logit rows, KV storage and its blocks and
  // block size, block table entries): what the captured launches bake in.
  using GraphKey = std::tuple<int64_t, int64_t, const float*, int64_t, int64_t, int64_t>;
  std::map<GraphKey, void*> graphs;
};

absl::Status CudaEngine::State::Upload() {
  const TensorView& table = model.token_embedding;
  const DType t = table.dtype();
  if (t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kQ8_0 ||
      t == DType::kQ4_0 || t == DType::kQ4_1) {
    HERD_RETURN_IF_ERROR(embedding.Upload(table.data(), table.num_bytes(), "the token embedding"));
    embedding_dtype = t;
  } else {
    const std::vector<float> values = ToF32(table);
    HERD_RETURN_IF_ERROR(
        embedding.Upload(values.data(), values.size() * sizeof(float), "the token embedding"));
    embedding_dtype = DType::kF32;
  }
  HERD_RETURN_IF_ERROR(UploadVector(model.output_norm, "the output norm", &output_norm));
  HERD_RETURN_IF_ERROR(UploadMatrix(model.lm_head, false, "the lm head", &lm_head));
  weight_bytes = static_cast<int64_t>(embedding.bytes()) + lm_head.bytes();

  // Layers are packed (on the host) and uploaded in parallel: repacking a
  // large model's experts is most of the load time.
  layers.resize(model.layers.size());
  std::vector<absl::Status> layer_status(model.layers.size());
  ThreadPool pool(ThreadPool::DefaultNumThreads());
  pool.ParallelFor(static_cast<int64_t>(layers.size()), 1, [&](int64_t begin, int64_t end, int) {
    // The pool's threads start on device 0; the engine's is `ordinal`.
    const absl::Status device = cuda::SetDevice(ordinal);
    for (int64_t l = begin; l < end; ++l) layer_status[l] = device.ok() ? UploadLayer(l) : device;
  });
  for (size_t l = 0; l < layers.size(); ++l) {
    HERD_RETURN_IF_ERROR(layer_status[l]);
    const DeviceLayer& d = layers[l];
    weight_bytes += d.q.bytes() + d.k.bytes() + d.v.bytes() + d.o.bytes() + d.router.bytes() +
                    d.gate.bytes() + d.up.bytes() + d.down.bytes();
  }
  return absl::OkStatus();
}

absl::Status CudaEngine::State::UploadLayer(int64_t l) {
  const ModelSpec& s = model.spec;
  const LayerWeights& w = model.layers[l];
  DeviceLayer& d = layers[l];
  const std::string name = absl::StrCat("layer ", l);
  HERD_RETURN_IF_ERROR(UploadVector(w.attn_norm, name + " attention norm", &d.attn_norm));
  HERD_RETURN_IF_ERROR(UploadVector(w.q_norm, name + " q norm", &d.q_norm));
  HERD_RETURN_IF_ERROR(UploadVector(w.k_norm, name + " k norm", &d.k_norm));
  HERD_RETURN_IF_ERROR(UploadVector(w.q.bias, name + " q bias", &d.q_bias));
  HERD_RETURN_IF_ERROR(UploadVector(w.k.bias, name + " k bias", &d.k_bias));
  HERD_RETURN_IF_ERROR(UploadVector(w.v.bias, name + " v bias", &d.v_bias));
  HERD_RETURN_IF_ERROR(UploadVector(w.o.bias, name + " o bias", &d.o_bias));
  HERD_RETURN_IF_ERROR(UploadMatrix(w.q.weight, false, name + " q", &d.q));
  HERD_RETURN_IF_ERROR(UploadMatrix(w.k.weight, false, name + " k", &d.k));
  HERD_RETURN_IF_ERROR(UploadMatrix(w.v.weight, false, name + " v", &d.v));
  HERD_RETURN_IF_ERROR(UploadMatrix(w.o.weight, false, name + " o", &d.o));
  if (w.moe_dropped) return absl::OkStatus();
  HERD_RETURN_IF_ERROR(UploadVector(w.ffn_norm, name + " ffn norm", &d.ffn_norm));
  HERD_RETURN_IF_ERROR(UploadMatrix(w.router, true, name + " router", &d.router));
  if (std::find(w.expert_dropped.begin(), w.expert_dropped.end(), true) != w.expert_dropped.end()) {
    std::vector<float> mask(s.num_experts, 0.0f);
    for (size_t e = 0; e < w.expert_dropped.size(); ++e) {
      if (w.expert_dropped[e]) mask[e] = -std::numeric_limits<float>::infinity();
    }
    HERD_RETURN_IF_ERROR(
        d.router_mask.Upload(mask.data(), mask.size() * sizeof(float), name + " router mask"));
  }
  if (w.shared_expert.resident()) {
    d.has_shared = true;
    HERD_RETURN_IF_ERROR(
        UploadMatrix(w.shared_expert.gate, false, name + " shared gate", &d.shared_gate));
    HERD_RETURN_IF_ERROR(
        UploadMatrix(w.shared_expert.up, false, name + " shared up", &d.shared_up));
    HERD_RETURN_IF_ERROR(
        UploadMatrix(w.shared_expert.down, false, name + " shared down", &d.shared_down));
    if (!w.shared_expert_gate.empty()) {
      d.shared_gated = true;
      HERD_RETURN_IF_ERROR(UploadMatrix(SharedGateMatrix(w), true, name + " shared expert gate",
                                        &d.shared_gate_logit));
    }
  }
  std::vector<bool> held;
  if (ep.comm != nullptr) {
    held.assign(w.experts.size(), false);
    for (int32_t e : placement->RankExperts(static_cast<int>(l), ep.comm->rank())) held[e] = true;
  }
  const std::vector<bool>* only = ep.comm != nullptr ? &held : nullptr;
  HERD_RETURN_IF_ERROR(UploadExperts(w, &ExpertFfnWeights::gate, only, name + " gate", &d.gate));
  HERD_RETURN_IF_ERROR(UploadExperts(w, &ExpertFfnWeights::up, only, name + " up", &d.up));
  return UploadExperts(w, &ExpertFfnWeights::down, only, name + " down", &d.down);
}

absl::Status CudaEngine::State::Reserve(int64_t num_tokens, int64_t num_sequences,
                                        int64_t max_context) {
  if (num_tokens > reserved_tokens) {
    const std::array<size_t, kNumStepBuffers> sizes = StepBufferBytes(model.spec, num_tokens);
    const std::array<DeviceBuffer*, kNumStepBuffers> buffers = StepBuffers();
    for (int i = 0; i < kNumStepBuffers; ++i) {
      HERD_RETURN_IF_ERROR(buffers[i]->Allocate(sizes[i], "activations"));
    }
    const size_t bytes = StepWorkspaceBytes(model, num_tokens);
    HERD_RETURN_IF_ERROR(workspace.Allocate(bytes, "the GEMM workspace"));
    reserved_tokens = num_tokens;
    reserved_expert_rows = num_tokens * model.spec.num_experts_per_token;  // as just allocated
    ClearGraphs();  // they point at the old buffers
  }
  if (num_sequences > reserved_sequences || max_context > reserved_context) {
    reserved_sequences = std::max(reserved_sequences, num_sequences);
    reserved_context = std::max(reserved_context, max_context);
    const ModelSpec& s = model.spec;
    HERD_RETURN_IF_ERROR(attention_workspace.Allocate(
        cuda::AttentionWorkspaceBytes({s.num_heads, s.num_kv_heads, s.head_dim}, reserved_sequences,
                                      reserved_context),
        "the attention workspace"));
    ClearGraphs();
  }
  return absl::OkStatus();
}

absl::Status CudaEngine::State::Linear(const DeviceMatrix& m, const DeviceBuffer& bias,
                                       const float* in, int64_t rows, const int32_t* offsets,
                                       float* out) {
  if (m.quantized) {
    HERD_RETURN_IF_ERROR(cuda::GroupedGemm(m.grouped, in, rows, offsets, out, workspace.get(),
                                           workspace.bytes(), stream));
  } else {
    HERD_RETURN_IF_ERROR(
        cuda::DenseGemm(blas, m.dense, in, rows, out, workspace.get(), workspace.bytes(), stream));
  }
  if (bias.get() == nullptr) return absl::OkStatus();
  return cuda::AddRowBias(out, bias.as<float>(), rows, static_cast<int64_t>(bias.bytes() / 4),
                          stream);
}

absl::Status CudaEngine::State::GroupedExperts(const DeviceLayer& d, int64_t slots) {
  const int32_t* offsets = expert_offsets.as<int32_t>();
  HERD_RETURN_IF_ERROR(cuda::GroupedGemm(d.gate.weights, expert_in.as<float>(), slots, offsets,
                                         gate_out.as<float>(), workspace.get(), workspace.bytes(),
                                         stream));
  HERD_RETURN_IF_ERROR(cuda::GroupedGemm(d.up.weights, expert_in.as<float>(), slots, offsets,
                                         up_out.as<float>(), workspace.get(), workspace.bytes(),
                                         stream));
  HERD_RETURN_IF_ERROR(cuda::SwiGlu(gate_out.as<float>(), up_out.as<float>(),
                                    slots * model.spec.expert_ffn_size, gate_out.as<float>(),
                                    stream));
  return cuda::GroupedGemm(d.down.weights, gate_out.as<float>(), slots, offsets,
                           expert_out.as<float>(), workspace.get(), workspace.bytes(), stream);
}

absl::Status CudaEngine::State::RunExperts(const DeviceLayer& d, int64_t slots,
                                           bool offsets_on_host) {
  const bool dense = !d.gate.dense.empty();
  const bool dequantized = DequantizesExperts(d, slots);
  if (!dense && !dequantized) return GroupedExperts(d, slots);
  if (!offsets_on_host) {
    host_offsets.resize(d.gate.num_slots + 1);
    HERD_RETURN_IF_ERROR(cuda::CopyToHostAsync(host_offsets.data(), expert_offsets.get(),
                                               host_offsets.size() * sizeof(int32_t), stream));
    HERD_RETURN_IF_ERROR(cuda::Synchronize(stream));
  }
  return dense ? DenseExperts(d, slots) : DequantizedExperts(d, slots);
}

absl::Status CudaEngine::State::DequantizedExperts(const DeviceLayer& d, int64_t slots) {
  int64_t most_rows = 0;
  for (int64_t e = 0; e < d.gate.num_slots; ++e) {
    most_rows = std::max<int64_t>(most_rows, host_offsets[e + 1] - host_offsets[e]);
  }
  size_t scratch_bytes = 0;
  size_t workspace_bytes = 0;
  for (const DeviceExperts* p : {&d.gate, &d.up, &d.down}) {
    scratch_bytes = std::max(scratch_bytes, cuda::DequantizedGroupedGemmScratchBytes(p->weights));
    workspace_bytes = std::max(workspace_bytes,
                               cuda::DequantizedGroupedGemmWorkspaceBytes(p->weights, most_rows));
  }
  if (dequantized_expert.bytes() < scratch_bytes || workspace.bytes() < workspace_bytes) {
    // Work on the stream may still read the old buffers; graphs point at them.
    HERD_RETURN_IF_ERROR(cuda::Synchronize(stream));
    if (dequantized_expert.bytes() < scratch_bytes) {
      HERD_RETURN_IF_ERROR(dequantized_expert.Allocate(scratch_bytes, "a dequantized expert"));
    }
    if (workspace.bytes() < workspace_bytes) {
      HERD_RETURN_IF_ERROR(workspace.Allocate(workspace_bytes, "the GEMM workspace"));
      ClearGraphs();
    }
  }
  const auto project = [&](const DeviceExperts& p, const float* in, float* out) {
    return cuda::DequantizedGroupedGemm(blas, p.weights, in, slots, host_offsets.data(), out,
                                        dequantized_expert.get(), dequantized_expert.bytes(),
                                        workspace.get(), workspace.bytes(), stream);
  };
  HERD_RETURN_IF_ERROR(project(d.gate, expert_in.as<float>(), gate_out.as<float>()));
  HERD_RETURN_IF_ERROR(project(d.up, expert_in.as<float>(), up_out.as<float>()));
  HERD_RETURN_IF_ERROR(cuda::SwiGlu(gate_out.as<float>(), up_out.as<float>(),
                                    slots * model.spec.expert_ffn_size, gate_out.as<float>(),
                                    stream));
  return project(d.down, gate_out.as<float>(), expert_out.as<float>());
}

absl::Status CudaEngine::State::DenseExperts(const DeviceLayer& d, int64_t slots) {
  const ModelSpec& s = model.spec;
  const int64_t hidden = s.hidden_size;
  const int64_t ffn = s.expert_ffn_size;
  const auto each_expert = [&](const auto& run) -> absl::Status {
    for (int64_t e = 0; e < d.gate.num_slots; ++e) {
      const int64_t begin = host_offsets[e];
      const int64_t rows = host_offsets[e + 1] - begin;
      if (rows > 0) HERD_RETURN_IF_ERROR(run(e, begin, rows));
    }
    return absl::OkStatus();
  };
  HERD_RETURN_IF_ERROR(each_expert([&](int64_t e, int64_t begin, int64_t rows) {
    const float* in = expert_in.as<float>() + begin * hidden;
    HERD_RETURN_IF_ERROR(cuda::DenseGemm(blas, d.gate.dense[e].dense, in, rows,
                                         gate_out.as<float>() + begin * ffn, workspace.get(),
                                         workspace.bytes(), stream));
    return cuda::DenseGemm(blas, d.up.dense[e].dense, in, rows, up_out.as<float>() + begin * ffn,
                           workspace.get(), workspace.bytes(), stream);
  }));
  HERD_RETURN_IF_ERROR(cuda::SwiGlu(gate_out.as<float>(), up_out.as<float>(), slots * ffn,
                                    gate_out.as<float>(), stream));
  return each_expert([&](int64_t e, int64_t begin, int64_t rows) {
    return cuda::DenseGemm(blas, d.down.dense[e].dense, gate_out.as<float>() + begin * ffn, rows,
                           expert_out.as<float>() + begin * hidden, workspace.get(),
                           workspace.bytes(), stream);
  });
}

absl::Status CudaEngine::State::Launch(int64_t num_tokens, int64_t num_sequences,
                                       int64_t max_chunk_tokens, int64_t num_logit_rows,
                                       KvCache& cache) {
  const ModelSpec& s = model.spec;
  const int64_t t = num_tokens;
  const int64_t hidden = s.hidden_size;
  const int64_t top_k = s.num_experts_per_token;
  const int64_t slots = t * top_k;
  const int64_t q_dim = s.num_heads * s.head_dim;
  const int64_t kv_dim = s.num_kv_heads * s.head_dim;
  const cpu::AttentionShape shape{s.num_heads, s.num_kv_heads, s.head_dim};
  float* xs = x.as<float>();
  float* hs = h.as<float>();

  HERD_RETURN_IF_ERROR(cuda::EmbeddingLookup(embedding.get(), embedding_dtype, s.vocab_size, hidden,
                                             token_ids, t, xs, nullptr, stream));
  for (size_t l = 0; l < layers.size(); ++l) {
    const DeviceLayer& d = layers[l];
    const LayerWeights& w = model.layers[l];
    // Attention.
    HERD_RETURN_IF_ERROR(
        cuda::RmsNorm(xs, d.attn_norm.as<float>(), t, hidden, s.rms_norm_eps, hs, stream));
    HERD_RETURN_IF_ERROR(Linear(d.q, d.q_bias, hs, t, token_offsets, q.as<float>()));
    HERD_RETURN_IF_ERROR(Linear(d.k, d.k_bias, hs, t, token_offsets, k.as<float>()));
    HERD_RETURN_IF_ERROR(Linear(d.v, d.v_bias, hs, t, token_offsets, v.as<float>()));
    if (s.qk_norm == QkNorm::kPerHead) {
      HERD_RETURN_IF_ERROR(cuda::RmsNorm(q.as<float>(), d.q_norm.as<float>(), t * s.num_heads,
                                         s.head_dim, s.rms_norm_eps, q.as<float>(), stream));
      HERD_RETURN_IF_ERROR(cuda::RmsNorm(k.as<float>(), d.k_norm.as<float>(), t * s.num_kv_heads,
                                         s.head_dim, s.rms_norm_eps, k.as<float>(), stream));
    } else if (s.qk_norm == QkNorm::kAllHeads) {
      HERD_RETURN_IF_ERROR(cuda::RmsNorm(q.as<float>(), d.q_norm.as<float>(), t, q_dim,
                                         s.rms_norm_eps, q.as<float>(), stream));
      HERD_RETURN_IF_ERROR(cuda::RmsNorm(k.as<float>(), d.k_norm.as<float>(), t, kv_dim,
                                         s.rms_norm_eps, k.as<float>(), stream));
    }
    HERD_RETURN_IF_ERROR(cuda::ApplyRope(q.as<float>(), t, s.num_heads, s.head_dim, s.rope_dim,
                                         positions, s.rope_theta, s.rope_style, stream));
    HERD_RETURN_IF_ERROR(cuda::ApplyRope(k.as<float>(), t, s.num_kv_heads, s.head_dim, s.rope_dim,
                                         positions, s.rope_theta, s.rope_style, stream));
    const cuda::DeviceKvBlocks kv_write{cache.keys(l, 0), cache.values(l, 0),
                                        cache.block_elements(), cache.block_tokens()};
    HERD_RETURN_IF_ERROR(
        cuda::AppendKv(shape, k.as<float>(), v.as<float>(), t, slot_mapping, kv_write, stream));
    const cpu::KvBlocks kv_read{cache.keys(l, 0), cache.values(l, 0), cache.block_elements(),
                                cache.block_tokens()};
    HERD_RETURN_IF_ERROR(cuda::Attention(
        shape, kv_read, q.as<float>(), sequences, num_sequences, t, max_chunk_tokens, block_tables,
        attn.as<float>(), attention_workspace.get(), attention_workspace.bytes(), stream));
    HERD_RETURN_IF_ERROR(
        Linear(d.o, d.o_bias, attn.as<float>(), t, token_offsets, proj.as<float>()));
    HERD_RETURN_IF_ERROR(cuda::AddInPlace(xs, proj.as<float>(), t * hidden, stream));
    if (w.moe_dropped) continue;

    // Routed experts.
    HERD_RETURN_IF_ERROR(
        cuda::RmsNorm(xs, d.ffn_norm.as<float>(), t, hidden, s.rms_norm_eps, hs, stream));
    HERD_RETURN_IF_ERROR(
        Linear(d.router, d.router_mask, hs, t, token_offsets, router_logits.as<float>()));
    int32_t* layer_expert_idx = expert_idx.as<int32_t>() + l * slots;
    float* layer_expert_weights = expert_weights.as<float>() + l * slots;
    HERD_RETURN_IF_ERROR(cuda::RouterTopK(router_logits.as<float>(), t, s.num_experts, top_k,
                                          s.router_scoring, s.norm_topk_prob, layer_expert_idx,
                                          layer_expert_weights, stream));
    if (options.expert_skipping) {
      HERD_RETURN_IF_ERROR(cuda::SkipMinorExperts(t, top_k, w.expert_skip_threshold,
                                                  layer_expert_idx, layer_expert_weights, stream));
    }
    if (ep.comm != nullptr) {
      HERD_RETURN_IF_ERROR(ExchangeExperts(static_cast<int>(l), t));
    } else {
      HERD_RETURN_IF_ERROR(
          cuda::PermuteByExpert(layer_expert_idx, slots, s.num_experts, row_to_slot.as<int32_t>(),
                                expert_offsets.as<int32_t>(), slot_to_row.as<int32_t>(),
                                workspace.get(), workspace.bytes(), stream));
      HERD_RETURN_IF_ERROR(cuda::GatherRows(hs, row_to_slot.as<int32_t>(), slots, top_k, hidden,
                                            expert_in.as<float>(), stream));
      HERD_RETURN_IF_ERROR(RunExperts(d, slots, /*offsets_on_host=*/false));
    }
    HERD_RETURN_IF_ERROR(cuda::MemsetAsync(proj.get(), 0, t * hidden * sizeof(float), stream));
    HERD_RETURN_IF_ERROR(cuda::CombineWeighted(expert_out.as<float>(), slot_to_row.as<int32_t>(),
                                               layer_expert_weights, t, top_k, hidden,
                                               proj.as<float>(), stream));
    if (d.has_shared) {
      if (!SharedExpertBesideExchange()) HERD_RETURN_IF_ERROR(SharedExpertRows(d, t));
      HERD_RETURN_IF_ERROR(AddSharedExpert(d, t));
    }
    HERD_RETURN_IF_ERROR(cuda::AddInPlace(xs, proj.as<float>(), t * hidden, stream));
  }

  // Final norm and lm head for the requested rows only.
  if (num_logit_rows == 0) return absl::OkStatus();
  HERD_RETURN_IF_ERROR(
      cuda::GatherRows(xs, logit_rows, num_logit_rows, 1, hidden, logits_h.as<float>(), stream));
  HERD_RETURN_IF_ERROR(cuda::RmsNorm(logits_h.as<float>(), output_norm.as<float>(), num_logit_rows,
                                     hidden, s.rms_norm_eps, logits_h.as<float>(), stream));
  return Linear(lm_head, no_bias, logits_h.as<float>(), num_logit_rows, logit_offsets,
                logits_out.as<float>());
}

absl::Status CudaEngine::State::Step(const Batch& batch, float* logits) {
  const ModelSpec& s = model.spec;
  const int64_t t = static_cast<int64_t>(batch.token_ids.size());
  if (t == 0) {
    // An expert-parallel rank without tokens still serves its experts.
    if (ep.comm == nullptr) return absl::OkStatus();
    for (size_t l = 0; l < model.layers.size(); ++l) {
      if (!model.layers[l].moe_dropped) {
        HERD_RETURN_IF_ERROR(ExchangeExperts(static_cast<int>(l), 0));
      }
    }
    return absl::OkStatus();
  }
  KvCache& cache = *batch.cache;
  const int64_t num_sequences = static_cast<int64_t>(batch.chunks.size());
  const int64_t num_rows = static_cast<int64_t>(batch.logit_rows.size());
  int64_t max_chunk_tokens = 0;
  int64_t table_entries = 0;
  for (const SequenceChunk& c : batch.chunks) {
    max_chunk_tokens = std::max(max_chunk_tokens, c.num_tokens);
    table_entries += static_cast<int64_t>(c.block_table.size());
  }
  // Attention splits decode contexts for the whole cache, so a captured graph
  // serves every position of it.
  HERD_RETURN_IF_ERROR(Reserve(t, num_sequences, cache.capacity_tokens()));

  // Staging layout: I32 ids [t], positions [t], slot mapping [t], logit rows
  // [rows], token offsets [2], logit offsets [2], block tables [entries];
  // then, 16-byte aligned, the attention sequences.
  const int64_t ints = 3 * t + num_rows + 4 + table_entries;
  const int64_t sequences_offset = Align(ints * static_cast<int64_t>(sizeof(int32_t)));
  const int64_t bytes = sequences_offset +
                        num_sequences * static_cast<int64_t>(sizeof(cuda::DeviceAttentionSequence));
  host_staging.resize(bytes);
  auto* host_ints = reinterpret_cast<int32_t*>(host_staging.data());
  auto* host_sequences =
      reinterpret_cast<cuda::DeviceAttentionSequence*>(host_staging.data() + sequences_offset);
  int32_t* ids_out = host_ints;
  int32_t* positions_out = ids_out + t;
  int32_t* slots_out = positions_out + t;
  int32_t* rows_out = slots_out + t;
  int32_t* offsets_out = rows_out + num_rows;
  int32_t* tables_out = offsets_out + 4;
  std::copy(batch.token_ids.begin(), batch.token_ids.end(), ids_out);
  const int64_t block_tokens = cache.block_tokens();
  int64_t row = 0;
  int64_t table_offset = 0;
  for (int64_t i = 0; i < num_sequences; ++i) {
    const SequenceChunk& c = batch.chunks[i];
    host_sequences[i] = {row, c.num_tokens, c.start_pos, table_offset};
    for (int64_t pos = c.start_pos; pos < c.start_pos + c.num_tokens; ++pos, ++row) {
      positions_out[row] = static_cast<int32_t>(pos);
      slots_out[row] = static_cast<int32_t>(c.block_table[pos / block_tokens] * block_tokens +
                                            pos % block_tokens);
    }
    std::copy(c.block_table.begin(), c.block_table.end(), tables_out + table_offset);
    table_offset += static_cast<int64_t>(c.block_table.size());
  }
  for (int64_t r = 0; r < num_rows; ++r) rows_out[r] = static_cast<int32_t>(batch.logit_rows[r]);
  offsets_out[0] = 0;
  offsets_out[1] = static_cast<int32_t>(t);
  offsets_out[2] = 0;
  offsets_out[3] = static_cast<int32_t>(num_rows);
  if (staging.bytes() < static_cast<size_t>(bytes)) {
    HERD_RETURN_IF_ERROR(staging.Allocate(2 * bytes, "the step's indices"));
    ClearGraphs();
  }
  auto* dev_ints = staging.as<int32_t>();
  token_ids = dev_ints;
  positions = dev_ints + t;
  slot_mapping = dev_ints + 2 * t;
  logit_rows = dev_ints + 3 * t;
  token_offsets = logit_rows + num_rows;
  logit_offsets = token_offsets + 2;
  block_tables = token_offsets + 4;
  sequences = reinterpret_cast<const cuda::DeviceAttentionSequence*>(
      static_cast<uint8_t*>(staging.get()) + sequences_offset);
  HERD_RETURN_IF_ERROR(cuda::CopyToDeviceAsync(staging.get(), host_staging.data(), bytes, stream));

  // Decode steps replay a graph; the staging layout of a key is fixed, so
  // the graph's pointers stay right.
  const bool decode = max_chunk_tokens == 1;
  if (decode && graphs_enabled) {
    const GraphKey key{
        t, num_rows, cache.keys(0, 0), cache.num_blocks(), block_tokens, table_entries};
    auto it = graphs.find(key);
    if (it == graphs.end()) {
      HERD_RETURN_IF_ERROR(cuda::StreamBeginCapture(stream));
      capturing = true;
      const absl::Status launched = Launch(t, num_sequences, max_chunk_tokens, num_rows, cache);
      capturing = false;
      void* graph = nullptr;
      const absl::Status captured = cuda::StreamEndCapture(stream, &graph);
      HERD_RETURN_IF_ERROR(launched);
      HERD_RETURN_IF_ERROR(captured);
      it = graphs.emplace(key, graph).first;
    }
    HERD_RETURN_IF_ERROR(cuda::GraphLaunch(it->second, stream));
  } else {
    HERD_RETURN_IF_ERROR(Launch(t, num_sequences, max_chunk_tokens, num_rows, cache));
  }
  if (num_rows > 0) {
    HERD_RETURN_IF_ERROR(cuda::CopyToHostAsync(logits, logits_out.get(),
                                               num_rows * s.vocab_size * sizeof(float), stream));
  }
  const int64_t top_k = s.num_experts_per_token;
  const int64_t slots = t * top_k;
  // The routing comes back for an observer, and to count skipped slots.
  const bool routing_to_host = routing_observer || skips_experts;
  if (routing_to_host) {
    const size_t routing_values = static_cast<size_t>(slots * s.num_layers);
    host_expert_idx.resize(routing_values);
    host_expert_weights.resize(routing_values);
    HERD_RETURN_IF_ERROR(cuda::CopyToHostAsync(host_expert_idx.data(), expert_idx.get(),
                                               routing_values * sizeof(int32_t), stream));
    HERD_RETURN_IF_ERROR(cuda::CopyToHostAsync(host_expert_weights.data(), expert_weights.get(),
                                               routing_values * sizeof(float), stream));
  }
  HERD_RETURN_IF_ERROR(cuda::Synchronize(stream));
  for (size_t l = 0; l < model.layers.size(); ++l) {
    if (model.layers[l].moe_dropped) continue;
    const int64_t skipped = skips_experts
                                ? std::count(host_expert_idx.begin() + l * slots,
                                             host_expert_idx.begin() + (l + 1) * slots, int32_t{-1})
                                : 0;
    stats.routed_slots += slots;
    stats.skipped_slots += skipped;
    // Expert parallelism counts the rows each rank received instead.
    if (ep.comm == nullptr) stats.layer_expert_rows[l] += slots - skipped;
    if (routing_observer) {
      routing_observer(static_cast<int>(l), t, top_k, host_expert_idx.data() + l * slots,
                       host_expert_weights.data() + l * slots);
    }
  }
  return absl::OkStatus();
}

absl::Status CudaEngine::State::SharedExpertRows(const DeviceLayer& d, int64_t t) {
  const ModelSpec& s = model.spec;
  const float* hs = h.as<float>();
  HERD_RETURN_IF_ERROR(
      Linear(d.shared_gate, no_bias, hs, t, token_offsets, shared_gate_out.as<float>()));
  HERD_RETURN_IF_ERROR(
      Linear(d.shared_up, no_bias, hs, t, token_offsets, shared_up_out.as<float>()));
  HERD_RETURN_IF_ERROR(cuda::SwiGlu(shared_gate_out.as<float>(), shared_up_out.as<float>(),
                                    t * s.shared_expert_ffn_size, shared_gate_out.as<float>(),
                                    stream));
  HERD_RETURN_IF_ERROR(Linear(d.shared_down, no_bias, shared_gate_out.as<float>(), t, token_offsets,
                              shared_out.as<float>()));
  if (!d.shared_gated) return absl::OkStatus();
  return Linear(d.shared_gate_logit, no_bias, hs, t, token_offsets, shared_logit.as<float>());
}

absl::Status CudaEngine::State::AddSharedExpert(const DeviceLayer& d, int64_t t) {
  return cuda::AddGatedRows(proj.as<float>(), shared_out.as<float>(),
                            d.shared_gated ? shared_logit.as<float>() : nullptr, t,
                            model.spec.hidden_size, stream);
}

absl::Status CudaEngine::State::ReserveExpertRows(int64_t rows) {
  if (rows <= reserved_expert_rows) return absl::OkStatus();
  // The buffers (the workspace too) may be in use by work on `stream`, such
  // as a shared expert beside the exchange.
  HERD_RETURN_IF_ERROR(cuda::Synchronize(stream));
  const ModelSpec& s = model.spec;
  const int64_t top_k = s.num_experts_per_token;
  // expert_out also takes this step's slots back from Combine.
  const int64_t capacity = std::max(rows, reserved_tokens * top_k);
  const auto f32 = [](int64_t n) { return static_cast<size_t>(n) * sizeof(float); };
  HERD_RETURN_IF_ERROR(expert_in.Allocate(f32(capacity * s.hidden_size), "received rows"));
  HERD_RETURN_IF_ERROR(gate_out.Allocate(f32(capacity * s.expert_ffn_size), "received rows"));
  HERD_RETURN_IF_ERROR(up_out.Allocate(f32(capacity * s.expert_ffn_size), "received rows"));
  HERD_RETURN_IF_ERROR(expert_out.Allocate(f32(capacity * s.hidden_size), "received rows"));
  if (expert_offsets.bytes() < static_cast<size_t>(s.num_experts + 1) * sizeof(int32_t)) {
    HERD_RETURN_IF_ERROR(
        expert_offsets.Allocate((s.num_experts + 1) * sizeof(int32_t), "expert offsets"));
  }
  const size_t bytes = StepWorkspaceBytes(model, (capacity + top_k - 1) / top_k);
  if (bytes > workspace.bytes()) {
    HERD_RETURN_IF_ERROR(workspace.Allocate(bytes, "the GEMM workspace"));
  }
  reserved_expert_rows = capacity;
  return absl::OkStatus();
}

absl::Status CudaEngine::State::ExchangeExperts(int layer_idx, int64_t t) {
  const ModelSpec& s = model.spec;
  const DeviceLayer& d = layers[layer_idx];
  const int64_t top_k = s.num_experts_per_token;
  const int64_t slots = t * top_k;
  const int64_t hidden = s.hidden_size;
  // The routing comes to the host, and the normed rows unless they stay on
  // the GPU.
  const bool rows_on_device = device_exchange != nullptr;
  host_idx.resize(slots);
  host_h.resize(rows_on_device ? 0 : t * hidden);
  if (t > 0) {
    HERD_RETURN_IF_ERROR(cuda::CopyToHostAsync(host_idx.data(),
                                               expert_idx.as<int32_t>() + layer_idx * slots,
                                               slots * sizeof(int32_t), stream));
    if (!rows_on_device) {
      HERD_RETURN_IF_ERROR(
          cuda::CopyToHostAsync(host_h.data(), h.get(), t * hidden * sizeof(float), stream));
    }
    HERD_RETURN_IF_ERROR(cuda::EventRecord(routed, stream));
    // The shared expert runs on `stream` while the rows travel.
    if (rows_on_device && d.has_shared) HERD_RETURN_IF_ERROR(SharedExpertRows(d, t));
    HERD_RETURN_IF_ERROR(cuda::EventSynchronize(routed));
  }
  if (rows_on_device) return ExchangeOnDevice(layer_idx, t);
  HERD_RETURN_IF_ERROR(exchange->Dispatch(*placement, layer_idx, host_h.data(), host_idx.data(), t,
                                          top_k, hidden, d.gate.local_slot, d.gate.num_slots,
                                          stats));
  // This GPU's experts over the rows it received, grouped by slot.
  const int64_t num_recv = exchange->num_recv();
  if (num_recv > 0) {
    HERD_RETURN_IF_ERROR(ReserveExpertRows(num_recv));
    HERD_RETURN_IF_ERROR(cuda::CopyToDeviceAsync(expert_in.get(), exchange->grouped_in(),
                                                 num_recv * hidden * sizeof(float), stream));
    host_offsets.assign(exchange->offsets(), exchange->offsets() + d.gate.num_slots + 1);
    HERD_RETURN_IF_ERROR(cuda::CopyToDeviceAsync(expert_offsets.get(), host_offsets.data(),
                                                 host_offsets.size() * sizeof(int32_t), stream));
    HERD_RETURN_IF_ERROR(RunExperts(d, num_recv, /*offsets_on_host=*/true));
    HERD_RETURN_IF_ERROR(cuda::CopyToHostAsync(exchange->grouped_out(), expert_out.get(),
                                               num_recv * hidden * sizeof(float), stream));
    HERD_RETURN_IF_ERROR(cuda::Synchronize(stream));
  }
  // Every slot's row comes back, in slot order (zeros for skipped slots).
  combined.resize(slots * hidden);
  HERD_RETURN_IF_ERROR(exchange->Combine(combined.data(), stats));
  if (t == 0) return absl::OkStatus();
  HERD_RETURN_IF_ERROR(ReserveExpertRows(slots));
  identity.resize(slots);
  std::iota(identity.begin(), identity.end(), 0);
  HERD_RETURN_IF_ERROR(cuda::CopyToDeviceAsync(expert_out.get(), combined.data(),
                                               combined.size() * sizeof(float), stream));
  return cuda::CopyToDeviceAsync(slot_to_row.get(), identity.data(), slots * sizeof(int32_t),
                                 stream);
}

absl::Status CudaEngine::State::ExchangeOnDevice(int layer_idx, int64_t t) {
  const ModelSpec& s = model.spec;
  const DeviceLayer& d = layers[layer_idx];
  const int64_t slots = t * s.num_experts_per_token;
  HERD_RETURN_IF_ERROR(device_exchange->Dispatch(
      *placement, layer_idx, h.as<float>(), host_idx.data(), t, s.num_experts_per_token,
      s.hidden_size, d.gate.local_slot, d.gate.num_slots, stats));
  // expert_out takes the experts' rows, then every slot's row back.
  const int64_t num_recv = device_exchange->num_recv();
  if (num_recv > 0 || slots > 0) HERD_RETURN_IF_ERROR(ReserveExpertRows(std::max(num_recv, slots)));
  if (num_recv > 0) {
    HERD_RETURN_IF_ERROR(device_exchange->GatherGrouped(expert_in.as<float>()));
    host_offsets.assign(device_exchange->offsets(),
                        device_exchange->offsets() + d.gate.num_slots + 1);
    HERD_RETURN_IF_ERROR(cuda::CopyToDeviceAsync(expert_offsets.get(), host_offsets.data(),
                                                 host_offsets.size() * sizeof(int32_t), stream));
    HERD_RETURN_IF_ERROR(RunExperts(d, num_recv, /*offsets_on_host=*/true));
  }
  HERD_RETURN_IF_ERROR(
      device_exchange->Combine(expert_out.as<float>(), expert_out.as<float>(), stats));
  if (t == 0) return absl::OkStatus();
  identity.resize(slots);
  std::iota(identity.begin(), identity.end(), 0);
  return cuda::CopyToDeviceAsync(slot_to_row.get(), identity.data(), slots * sizeof(int32_t),
                                 stream);
}

CudaEngine::CudaEngine(std::unique_ptr<State> state) : state_(std::move(state)) {}
CudaEngine::~CudaEngine() = default;

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::Create(const Model& model,
                                                               const CudaEngineOptions& options) {
  const ModelSpec& s = model.spec;
  int count = 0;
  const absl::Status devices = cuda::DeviceCount(&count);
  if (!devices.ok() || count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device cuda needs a CUDA GPU: ", devices.ok() ? "no device found" : devices.message()));
  }
  if (options.device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", options.device, " asked for; this machine has ", count));
  }
  if (options.device >= 0) HERD_RETURN_IF_ERROR(cuda::SetDevice(options.device));
  const ExpertParallelism& ep = options.expert_parallelism;
  HERD_RETURN_IF_ERROR(CheckSupported(model, options, /*need_every_expert=*/ep.comm == nullptr));
  HERD_RETURN_IF_ERROR(CheckRankHoldsItsExperts(model, ep));
  auto state = std::make_unique<State>(model, options);
  state->stats.layer_expert_rows.assign(s.num_layers, 0);
  HERD_RETURN_IF_ERROR(cuda::DeviceName(&state->device_name, &state->ordinal));
  HERD_RETURN_IF_ERROR(cuda::StreamCreate(&state->stream));
  if (ep.comm != nullptr) {
    state->ep = ep;
    state->placement = std::make_unique<ExpertPlacement>(*ep.placement);
    HERD_RETURN_IF_ERROR(cuda::EventCreate(&state->routed));
    if (ep.comm->memory_space() == comm::MemorySpace::kDevice) {
      HERD_ASSIGN_OR_RETURN(state->row_mover, CudaRowMover::Create(state->stream));
      state->device_exchange = std::make_unique<ResidentRowExchange>(ep, state->row_mover.get());
    } else {
      state->exchange = std::make_unique<ExpertRowExchange>(ep);
    }
  }
  HERD_RETURN_IF_ERROR(cuda::BlasHandle::Create(&state->blas));
  HERD_RETURN_IF_ERROR(state->Upload());
  for (const LayerWeights& w : model.layers) {
    state->skips_experts |= options.expert_skipping && w.expert_skip_threshold > 0;
  }
  // Expert-parallel steps talk to other ranks from the host: no graphs.
  state->graphs_enabled = options.cuda_graphs && ep.comm == nullptr;
  for (const DeviceLayer& d : state->layers) {
    if (!d.gate.dense.empty()) state->graphs_enabled = false;
  }
  return std::unique_ptr<CudaEngine>(new CudaEngine(std::move(state)));
}

absl::StatusOr<CudaMemoryPlan> CudaEngine::PlanMemory(
    const Model& model, const CudaEngineOptions& options,
    const std::function<bool(int layer, int expert)>& holds) {
  HERD_RETURN_IF_ERROR(CheckSupported(model, options, /*need_every_expert=*/false));
  const ModelSpec& s = model.spec;
  CudaMemoryPlan plan;
  const TensorView& table = model.token_embedding;
  const DType t = table.dtype();
  plan.embedding = IsFloatDType(t) || t == DType::kQ8_0 || t == DType::kQ4_0 || t == DType::kQ4_1
                       ? table.num_bytes()
                       : table.dim(0) * table.dim(1) * 4;
  plan.lm_head = MatrixBytes(model.lm_head, false);
  const auto vector_bytes = [](const TensorView& v) {
    return v.empty() ? int64_t{0} : v.num_elements() * 4;
  };
  plan.norms_and_biases = vector_bytes(model.output_norm);
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const LayerWeights& w = model.layers[l];
    for (const TensorView* m : {&w.q.weight, &w.k.weight, &w.v.weight, &w.o.weight}) {
      plan.attention += MatrixBytes(*m, false);
    }
    for (const TensorView* v : {&w.attn_norm, &w.q_norm, &w.k_norm, &w.q.bias, &w.k.bias, &w.v.bias,
                                &w.o.bias, &w.ffn_norm}) {
      plan.norms_and_biases += vector_bytes(*v);
    }
    if (w.moe_dropped) continue;
    plan.router += MatrixBytes(w.router, true);
    if (w.shared_expert.resident()) {
      plan.experts += MatrixBytes(w.shared_expert.gate, false) +
                      MatrixBytes(w.shared_expert.up, false) +
                      MatrixBytes(w.shared_expert.down, false);
      if (!w.shared_expert_gate.empty()) plan.router += MatrixBytes(SharedGateMatrix(w), true);
    }
    if (!w.expert_dropped.empty()) plan.norms_and_biases += s.num_experts * 4;  // the mask
    for (int e = 0; e < static_cast<int>(w.experts.size()); ++e) {
      const ExpertFfnWeights& x = w.experts[e];
      if (x.gate.empty() || (holds && !holds(static_cast<int>(l), e))) continue;
      plan.experts += ExpertBytes(x.gate) + ExpertBytes(x.up) + ExpertBytes(x.down);
    }
    // A quantized layer's packed experts keep a slot for every expert.
    const ExpertFfnWeights* first = nullptr;
    int64_t counted = 0;
    for (int e = 0; e < static_cast<int>(w.experts.size()); ++e) {
      if (w.experts[e].gate.empty()) continue;
      if (first == nullptr) first = &w.experts[e];
      counted += !holds || holds(static_cast<int>(l), e);
    }
    if (!holds && first != nullptr && !IsFloatDType(first->gate.dtype())) {
      const int64_t missing = static_cast<int64_t>(w.experts.size()) - counted;
      plan.experts +=
          missing * (ExpertBytes(first->gate) + ExpertBytes(first->up) + ExpertBytes(first->down));
    }
  }
  const int64_t tokens = options.max_step_tokens;
  for (size_t bytes : StepBufferBytes(s, tokens)) plan.step_buffers += static_cast<int64_t>(bytes);
  const DequantizedExpertsBuffers dequantized = DequantizedExpertsBytes(model, options, tokens);
  plan.step_buffers +=
      static_cast<int64_t>(std::max(StepWorkspaceBytes(model, tokens), dequantized.workspace) +
                           dequantized.scratch + cuda::BlasHandle::kWorkspaceBytes);
  plan.kv_bytes_per_token = KvCache::BytesPerBlock(s, 1);
  return plan;
}

absl::Status CudaEngine::ValidateBatch(const Batch& batch) const {
  if (batch.cache != nullptr && batch.cache->device() != device()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the batch's KV cache lives on ",
                     batch.cache->device().empty() ? "the host" : batch.cache->device(),
                     "; this engine runs on ", device()));
  }
  return herd::ValidateBatch(state_->model.spec, batch);
}

absl::Status CudaEngine::Forward(const Batch& batch, float* logits) {
  HERD_RETURN_IF_ERROR(ValidateBatch(batch));
  State& st = *state_;
  if (st.options.device >= 0) HERD_RETURN_IF_ERROR(cuda::SetDevice(st.options.device));
  const auto start = std::chrono::steady_clock::now();
  ++st.stats.forward_calls;
  const int64_t max_step_tokens = st.options.max_step_tokens;
  int64_t num_steps = 1;
  if (st.ep.comm != nullptr) {
    // Each step is a collective: every rank runs as many as the busiest.
    const int64_t tokens = static_cast<int64_t>(batch.token_ids.size());
    HERD_ASSIGN_OR_RETURN(
        num_steps, AgreeOnStepCount(*st.ep.comm, (tokens + max_step_tokens - 1) / max_step_tokens,
                                    absl::Now() + st.ep.timeout));
  }
  const absl::Status status =
      RunInSteps(batch, max_step_tokens, num_steps, st.model.spec.vocab_size, logits,
                 [this](const Batch& step, float* out) { return state_->Step(step, out); });
  state_->stats.forward_seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return status;
}

absl::StatusOr<std::unique_ptr<KvCache>> CudaEngine::CreateKvCache(int64_t num_blocks,
                                                                   int64_t block_tokens) {
  KvMemory memory;
  memory.device = device();
  memory.allocate = [](size_t bytes) -> absl::StatusOr<void*> {
    void* ptr = nullptr;
    HERD_RETURN_IF_ERROR(cuda::Malloc(&ptr, bytes));
    const absl::Status zeroed = cuda::MemsetAsync(ptr, 0, bytes, nullptr);
    if (!zeroed.ok() || !cuda::Synchronize(nullptr).ok()) {
      (void)cuda::Free(ptr);
      return zeroed.ok() ? absl::InternalError("zeroing the KV cache failed") : zeroed;
    }
    return ptr;
  };
  memory.release = [](void* ptr) { (void)cuda::Free(ptr); };
  return KvCache::Create(state_->model.spec, num_blocks, block_tokens, DType::kF32, &memory);
}

void CudaEngine::SetRoutingObserver(RoutingObserver observer) {
  state_->routing_observer = std::move(observer);
}

std::string CudaEngine::Describe() const {
  return absl::StrCat(device(), " (", state_->device_name, "), ",
                      HumanBytes(static_cast<double>(state_->weight_bytes)),
                      " of weights on the device");
}

bool CudaEngine::expert_parallel() const { return state_->ep.comm != nullptr; }

const ModelSpec& CudaEngine::spec() const { return state_->model.spec; }
const EngineStats& CudaEngine::stats() const { return state_->stats; }
std::string CudaEngine::device() const { return absl::StrCat("cuda:", state_->ordinal); }
int64_t CudaEngine::device_weight_bytes() const { return state_->weight_bytes; }
const std::string& CudaEngine::device_name() const { return state_->device_name; }

}  // namespace herd
