// Loads a Hugging Face checkpoint directory: config.json plus safetensors,
// and Herd's own checkpoints, which are such directories plus herd.json
// (model/herd_manifest.h): there every tensor is checked against its
// checksum before it is used, and weights herd.json lists as quantized
// become DType::kQuant views of their codes, scales and mins.
//
// Supported `architectures[0]` values and what they map to:
//   MixtralForCausalLM   -> Architecture::kMixtral   (block_sparse_moe.{gate, experts.E.w1/w3/w2})
//   Qwen2MoeForCausalLM  -> Architecture::kQwen2Moe  (mlp.{gate, experts.E.*, shared_expert.*,
//                                                     shared_expert_gate}, q/k/v biases)
//   Qwen3MoeForCausalLM  -> Architecture::kQwen3Moe  (per-head q/k RMSNorm)
//   OlmoeForCausalLM     -> Architecture::kOlmoe     (q/k RMSNorm over all heads)
//
// Tensors come from `model.safetensors.index.json` when it exists (its
// weight_map names the shard of every tensor; each shard is mapped once), and
// otherwise from every `*.safetensors` file in the directory. Weight matrices
// are views into the maps in their stored dtype (F32, F16 or BF16); 1-D
// tensors (norms, biases, the shared-expert gate) become owned F32 copies.
// Hugging Face checkpoints always use NeoX-style RoPE over the whole head and
// softmax routing.
//
// Features Herd does not run are refused, not silently ignored:
// rope_scaling, dense MLP layers (Qwen decoder_sparse_step != 1 or
// mlp_only_layers), OLMoE clip_qkv, activations other than SiLU. A sliding
// attention window (Mixtral sliding_window, Qwen use_sliding_window) caps
// spec.context_length at the window, within which full attention is exact.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model.h"

namespace herd {

// Loads the checkpoint in directory `dir`. Experts for which
// options.load_expert returns false are neither read nor required (their
// slots stay empty); an empty function loads all. Every error names `dir` and
// the file (config.json, the index, a shard) and, where one is at fault, the
// config key or tensor: NotFound for a missing config.json, index-listed shard
// or safetensors file; Unimplemented for the unsupported features listed
// above; InvalidArgument for everything else malformed (unknown architecture,
// bad JSON, wrong types or non-positive dims, missing or misshapen tensors,
// a herd.json that disagrees with the safetensors files); DataLoss for a
// tensor whose bytes do not match its checksum.
// Thread-compatible: concurrent calls on different directories are fine.
absl::StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir,
                                                   const ModelLoadOptions& options = {});

}  // namespace herd
