// How each Hugging Face architecture Herd runs names its config keys and MoE
// tensors; shared by the loader (model/hf_loader.cc) and the checkpoint
// writer (model/herd_checkpoint_writer.cc).
#pragma once

#include "absl/types/span.h"
#include "model/model.h"

namespace herd {

struct HfArchInfo {
  const char* hf_name;  // config.json architectures[0]
  Architecture arch;
  const char* num_experts_key;
  const char* expert_ffn_key;
  const char* moe_prefix;  // model.layers.L.<moe_prefix>.{gate, experts.E.*}
  const char* gate_proj;   // expert projection names
  const char* up_proj;
  const char* down_proj;
  bool has_norm_topk_prob_key;  // Mixtral always renormalises; the others read config.json
  bool default_norm_topk_prob;  // the transformers config class defaults
  float default_rms_norm_eps;
};

// Every architecture, in a fixed order.
absl::Span<const HfArchInfo> HfArchitectures();
// The entry of `arch` (every Architecture has one).
const HfArchInfo& HfArchitecture(Architecture arch);

}  // namespace herd
