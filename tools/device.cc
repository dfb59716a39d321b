#include "tools/device.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"

#ifdef HERD_TOOLS_WITH_CUDA
#include "kernels/cuda/bench/kernel_bench.h"
#include "kernels/cuda/cuda_ops.h"
#include "worker/cuda/cuda_engine.h"
#endif

namespace herd {

absl::StatusOr<Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  return absl::InvalidArgumentError(absl::StrCat("--device must be cpu or cuda, got '", name, "'"));
}

#ifdef HERD_TOOLS_WITH_CUDA

bool CudaBuilt() { return true; }

absl::StatusOr<std::unique_ptr<ForwardEngine>> CreateCudaEngine(const Model& model,
                                                                bool expert_skipping,
                                                                const ExpertParallelism& ep) {
  CudaEngineOptions options;
  options.expert_skipping = expert_skipping;
  if (ep.comm != nullptr) {
    int count = 0;
    if (cuda::DeviceCount(&count).ok() && count > 0) options.device = ep.comm->rank() % count;
    options.expert_parallelism = ep;
  }
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<CudaEngine> engine, CudaEngine::Create(model, options));
  return std::unique_ptr<ForwardEngine>(std::move(engine));
}

absl::StatusOr<CudaMemoryPlan> PlanCudaMemory(
    const Model& model, const std::function<bool(int layer, int expert)>& holds) {
  return CudaEngine::PlanMemory(model, CudaEngineOptions{}, holds);
}

absl::StatusOr<GpuMemory> QueryGpuMemory() {
  int count = 0;
  const absl::Status devices = cuda::DeviceCount(&count);
  if (!devices.ok() || count == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA GPU: ", devices.ok() ? "no device found" : devices.message()));
  }
  GpuMemory gpu;
  gpu.count = count;
  int ordinal = 0;
  HERD_RETURN_IF_ERROR(cuda::DeviceName(&gpu.name, &ordinal));
  size_t free_bytes = 0, total_bytes = 0;
  HERD_RETURN_IF_ERROR(cuda::MemoryInfo(&free_bytes, &total_bytes));
  gpu.total_bytes = static_cast<int64_t>(total_bytes);
  gpu.free_bytes = static_cast<int64_t>(free_bytes);
  return gpu;
}

absl::StatusOr<CudaDeviceReport> ReportCudaDevice(const ForwardEngine& engine) {
  const auto& cuda_engine = static_cast<const CudaEngine&>(engine);
  CudaDeviceReport report;
  report.name = cuda_engine.device_name();
  report.weight_bytes = cuda_engine.device_weight_bytes();
  HERD_ASSIGN_OR_RETURN(report.copy_gbps, cuda::MeasureCopyBandwidth());
  return report;
}

#else

bool CudaBuilt() { return false; }

absl::StatusOr<std::unique_ptr<ForwardEngine>> CreateCudaEngine(const Model&, bool,
                                                                const ExpertParallelism&) {
  return absl::FailedPreconditionError(
      "--device cuda: this herd was built without CUDA (configure with nvcc on the PATH)");
}

absl::StatusOr<CudaMemoryPlan> PlanCudaMemory(const Model&, const std::function<bool(int, int)>&) {
  return absl::FailedPreconditionError(
      "--device cuda: this herd was built without CUDA (configure with nvcc on the PATH)");
}

absl::StatusOr<GpuMemory> QueryGpuMemory() {
  return absl::FailedPreconditionError("this herd was built without CUDA");
}

absl::StatusOr<CudaDeviceReport> ReportCudaDevice(const ForwardEngine&) {
  return absl::FailedPreconditionError("this herd was built without CUDA");
}

#endif

}  // namespace herd
