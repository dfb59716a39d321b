#include "model/hf_arch.h"

#include "core/status.h"

namespace herd {
namespace {

constexpr HfArchInfo kArchs[] = {
    {"MixtralForCausalLM", Architecture::kMixtral, "num_local_experts", "intermediate_size",
     "block_sparse_moe", "w1", "w3", "w2", false, true, 1e-5f},
    {"Qwen2MoeForCausalLM", Architecture::kQwen2Moe, "num_experts", "moe_intermediate_size", "mlp",
     "gate_proj", "up_proj", "down_proj", true, false, 1e-6f},
    {"Qwen3MoeForCausalLM", Architecture::kQwen3Moe, "num_experts", "moe_intermediate_size", "mlp",
     "gate_proj", "up_proj", "down_proj", true, false, 1e-6f},
    {"OlmoeForCausalLM", Architecture::kOlmoe, "num_experts", "intermediate_size", "mlp",
     "gate_proj", "up_proj", "down_proj", true, false, 1e-5f},
};

}  // namespace

absl::Span<const HfArchInfo> HfArchitectures() { return kArchs; }

const HfArchInfo& HfArchitecture(Architecture arch) {
  for (const HfArchInfo& info : kArchs) {
    if (info.arch == arch) return info;
  }
  HERD_CHECK(false && "every Architecture has an HfArchInfo");
  return kArchs[0];
}

}  // namespace herd
