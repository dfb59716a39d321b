// Builds a Model from a GGUF file (llama.cpp's checkpoint format).
//
// Supported `general.architecture` values:
//   llama     with `llama.expert_count` > 0: Mixtral (GPT-J RoPE, renormalised top-k)
//   qwen2moe  Qwen2-MoE / Qwen1.5-MoE (NeoX RoPE, q/k/v biases, sigmoid-gated shared
//             expert, top-k probabilities not renormalised)
//   qwen3moe  Qwen3-MoE (NeoX RoPE, per-head q/k RMSNorm, renormalised top-k)
// `<arch>.expert_weights_norm` (bool) overrides the top-k renormalisation.
//
// Tensor names follow llama.cpp: token_embd, output_norm, output (absent:
// tied to token_embd), blk.L.{attn_norm, attn_q, attn_k, attn_v, attn_output,
// attn_q_norm, attn_k_norm, ffn_norm, ffn_gate_inp, ffn_{gate,up,down}_exps,
// ffn_{gate,up,down}_shexp, ffn_gate_inp_shexp}.weight and
// blk.L.attn_{q,k,v}.bias. Stacked expert tensors (ggml ne [in, out, n_expert],
// herd shape [n_expert, out, in]) are split into per-expert [out, in] views of
// their contiguous slabs; files from older converters with one tensor per
// expert (blk.L.ffn_gate.E.weight) also load.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model.h"

namespace herd {

// Maps the GGUF file at `path` and returns a Model whose weight matrices are
// views into that map (which the Model owns); 1-D tensors (norms, biases, the
// shared-expert gate) are copied to F32. Experts for which
// `options.load_expert` returns false are left empty. Errors are
// InvalidArgument naming the file and, where one is at fault, the tensor or
// key: unknown architecture, dense `llama` model, missing tensors, wrong
// shapes, tensor types Herd cannot run, or a malformed file (NotFound when the
// file does not exist). Thread-safe (no shared state).
absl::StatusOr<std::unique_ptr<Model>> LoadGgufModel(const std::string& path,
                                                     const ModelLoadOptions& options);

}  // namespace herd
