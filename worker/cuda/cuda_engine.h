// The engine on one CUDA GPU (`--device cuda`): the forward pass of
// worker/engine.h with every op on the device.
//
// Weights are uploaded once, at Create. Quantized experts stay quantized:
// GGUF Q4_0 and Q8_0 keep their values in the grouped W4A16/W8A16 GEMM
// (kernels/cuda/grouped_gemm.h); Q4_1 and Herd's formats are requantized to
// int8 in groups of 32. Float experts (F32, F16, BF16) are cuBLAS matrices,
// one per expert. The other projections are grouped-GEMM matrices when Q4_0
// or Q8_0, else cuBLAS matrices (F32 stays F32, anything else becomes BF16).
// The router always runs in F32, so experts are chosen as on the CPU. Norm
// weights, biases and the embedding table (in its stored dtype) are copied
// as they are. The KV cache lives on the device (CreateKvCache).
//
// One Forward step uploads the batch's small index arrays in one copy,
// launches the whole model on one stream, and copies back only the logits
// asked for. Decode steps (one token per sequence) of a batch shape seen
// before replay a CUDA graph captured the first time, except with float
// experts, whose per-expert calls need the routing's row counts on the host.
//
// Expert parallelism (CudaEngineOptions::expert_parallelism): the GPU holds
// only the experts the placement gives its rank. Per layer, the router's
// choice and the normed rows come to the host, travel through
// comm::ExpertExchange over the group's host communicator (mpi, ucx, local), this
// rank's experts run on the GPU over the rows it received, and the results
// go back the same way; such steps run without CUDA graphs, and every rank
// runs as many steps as the busiest one (Forward is a collective).
//
// Dynamic expert skipping (the checkpoint's per-layer thresholds) runs on the
// GPU after the router, as on the CPU; the step then copies its routing back
// to count the skipped slots.
//
// A shared expert (Qwen2-MoE) runs on every rank after the routed experts.
//
// Thread-safety: driven by one thread at a time, like Engine.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "worker/cuda_memory_plan.h"
#include "worker/expert_parallelism.h"
#include "worker/forward_engine.h"

namespace herd {

struct CudaEngineOptions {
  // Tokens one internal step processes; longer batches run in several steps.
  int64_t max_step_tokens = 2048;
  // Capture decode steps as CUDA graphs and replay them.
  bool cuda_graphs = true;
  // Dynamic expert skipping with the model's per-layer thresholds; false
  // runs every routed expert (--no-expert-skip).
  bool expert_skipping = true;
  // The GPU this engine runs on; -1: the calling thread's current device.
  // Forward makes it current on the calling thread.
  int device = -1;
  // A rank of an expert-parallel group (comm null: every expert here).
  ExpertParallelism expert_parallelism;
  // Quantized experts run in their prefill form (each expert dequantized to
  // bf16 and multiplied by cuBLAS: kernels/cuda/dequantized_gemm.h) when a
  // layer's expert rows are at least this many per expert held; below, the
  // grouped W4A16/W8A16 kernel. 0: always the grouped kernel.
  int64_t dequantized_experts_min_rows = 256;
};

class CudaEngine final : public ForwardEngine {
 public:
  // Uploads `model` to the current CUDA device. FailedPrecondition without a
  // usable device; ResourceExhausted when it does not fit; Unimplemented for
  // more than 512 experts or top-16, head_dim above 256, or a device
  // communicator; InvalidArgument for a model the kernels can't run,
  // or a placement that does not fit the model and group or gives this rank
  // an expert the model did not load.
  static absl::StatusOr<std::unique_ptr<CudaEngine>> Create(const Model& model,
                                                            const CudaEngineOptions& options);
  ~CudaEngine() override;

  // The plan of Create's allocations for `model`. `holds(layer, expert)`
  // counts only the experts it keeps (a rank's share under a placement);
  // without it every expert slot of a layer counts, as one GPU holds them.
  // The errors of Create for a model it cannot run.
  static absl::StatusOr<CudaMemoryPlan> PlanMemory(
      const Model& model, const CudaEngineOptions& options,
      const std::function<bool(int layer, int expert)>& holds = nullptr);

  absl::Status Forward(const Batch& batch, float* logits) override;
  // herd::ValidateBatch (worker/batch.h), and a cache on this engine's GPU.
  absl::Status ValidateBatch(const Batch& batch) const override;
  // Each step then copies every layer's routing back to the host (two small
  // copies after the step; decode graphs are kept).
  void SetRoutingObserver(RoutingObserver observer) override;
  // A cache in device memory.
  absl::StatusOr<std::unique_ptr<KvCache>> CreateKvCache(int64_t num_blocks,
                                                         int64_t block_tokens) override;
  const ModelSpec& spec() const override;
  const EngineStats& stats() const override;
  bool expert_parallel() const override;
  std::string device() const override;
  // "cuda:N (GPU name), B of weights on the device".
  std::string Describe() const override;

  // Bytes of weights on the device, as the kernels read them.
  int64_t device_weight_bytes() const;
  // The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
  const std::string& device_name() const;

 private:
  struct State;
  explicit CudaEngine(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace herd
