// --device for `herd generate`, `bench` and `serve`: where the engine runs.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model.h"
#include "worker/cuda_memory_plan.h"
#include "worker/expert_parallelism.h"
#include "worker/forward_engine.h"

namespace herd {

enum class Device { kCpu, kCuda };

// "cpu" or "cuda"; InvalidArgument naming the choices otherwise.
absl::StatusOr<Device> ParseDevice(const std::string& name);

// Whether this herd was built with CUDA.
bool CudaBuilt();

// The CUDA engine for `model` (worker/cuda/cuda_engine.h): on the current
// GPU, or with expert parallelism (ep.comm set) as that rank on GPU rank %
// number of GPUs. `expert_skipping` false runs every routed expert whatever
// the checkpoint's skip thresholds. FailedPrecondition in a build without
// CUDA or on a machine without a GPU.
absl::StatusOr<std::unique_ptr<ForwardEngine>> CreateCudaEngine(const Model& model,
                                                                bool expert_skipping,
                                                                const ExpertParallelism& ep = {});

// The GPU memory plan of `model` for --device cuda (CudaEngine::PlanMemory):
// every expert, or those `holds(layer, expert)` keeps. FailedPrecondition in
// a build without CUDA; needs no GPU.
absl::StatusOr<CudaMemoryPlan> PlanCudaMemory(
    const Model& model, const std::function<bool(int layer, int expert)>& holds = nullptr);

// The current GPU's name and memory, and how many GPUs this process sees;
// FailedPrecondition without one.
struct GpuMemory {
  std::string name;
  int count = 0;
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;
};
absl::StatusOr<GpuMemory> QueryGpuMemory();

// What `herd bench --device cuda` prints about the GPU.
struct CudaDeviceReport {
  std::string name;          // "NVIDIA H100 80GB HBM3"
  int64_t weight_bytes = 0;  // the engine's weights on the device
  double copy_gbps = 0;      // device-to-device copy, bytes read + written per second
};
// Measures the copy bandwidth now; `engine` must come from CreateCudaEngine.
absl::StatusOr<CudaDeviceReport> ReportCudaDevice(const ForwardEngine& engine);

}  // namespace herd
