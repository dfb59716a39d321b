// Writes a loaded Model as a Herd checkpoint directory (model/herd_manifest.h):
// config.json, model.safetensors and herd.json, with each weight matrix kept
// in float or quantized to one of Herd's formats (core/quant_format.h).
//
// Tensors take Hugging Face names and layout whatever the source: a GGUF
// `llama` model's q/k rows, which GGUF stores permuted for GPT-J RoPE, are put
// back in the NeoX order config.json implies. GGUF's Q8_0, Q4_0 and Q4_1 map
// exactly onto int8-g32-sym-f16, int4-g32-sym-f16 and int4-g32-asym-f16, so a
// weight left unquantized, or quantized to its exact equivalent, keeps its
// values bit for bit. Any other choice dequantizes and rounds to nearest.
//
// The directory is written under a temporary name beside `out_dir`, loaded
// back (every checksum checked), and only then renamed into place: a failure
// at any point, a full disk included, leaves nothing at `out_dir` that looks
// like a checkpoint.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/quant_format.h"
#include "model/model.h"
#include "nlohmann/json.hpp"

namespace herd {

// One weight matrix as the writer offers it to the caller's choice.
struct WeightInfo {
  std::string name;  // its Hugging Face name
  ModuleKind module = ModuleKind::kOther;
  int layer = -1;   // -1 outside the layers (embeddings, lm head)
  int expert = -1;  // the expert of kExperts weights
  const TensorView* source = nullptr;
};

struct HerdCheckpointOptions {
  // The format of a weight matrix; nullopt keeps it as it is (float dtypes
  // stay, GGUF block types become their exact equivalents). Unset: keep all.
  std::function<std::optional<QuantFormat>(const WeightInfo&)> choose_format;
  // Chooses the codes of a weight quantized to a format that is not its exact
  // equivalent, from its values W F32 [rows, cols] (Hugging Face row order):
  // codes U8 [rows, cols], params [rows, cols / group length]. Unset: round to
  // nearest. `herd compress --method gptq` sets it.
  std::function<absl::Status(const WeightInfo&, const QuantFormat&, const float* w, int64_t rows,
                             int64_t cols, uint8_t* codes, QuantGroupParams* params)>
      quantize;
  // Blocks (transformer layers) to leave out, by index in `model`; the rest
  // are renumbered in order (block drop).
  std::vector<int> drop_blocks;
  // MoE sublayers to leave out (layer drop) and experts to leave out, per
  // layer (expert drop), by index in `model`. What the model had dropped
  // already stays dropped.
  std::vector<int> drop_moe_layers;
  std::map<int, std::vector<int>> drop_experts;
  // Dynamic expert skipping thresholds to store, per layer by index in
  // `model`, each in (0, 1]; a layer not listed keeps the model's own
  // LayerWeights::expert_skip_threshold (0: none).
  std::map<int, float> expert_skip_thresholds;
  // Stored as herd.json's "compression".
  nlohmann::json compression = nlohmann::json::object();
  // Replace an existing `out_dir` (else AlreadyExists).
  bool overwrite = false;
  // Called after each weight matrix with (done, total).
  std::function<void(int64_t, int64_t)> progress;
};

// The format that holds `type`'s blocks exactly (Q8_0, Q4_0, Q4_1), if any.
std::optional<QuantFormat> ExactQuantFormat(DType type);

// Writes `model` (every expert must be resident) to `out_dir`. Errors:
// AlreadyExists (out_dir exists, no overwrite), InvalidArgument (a chosen
// format does not fit a matrix's shape, an expert is missing), Unimplemented
// (a model Hugging Face's layout cannot express: sigmoid routing, partial
// RoPE, Mixtral with attention biases), and the I/O errors of writing.
absl::Status WriteHerdCheckpoint(const Model& model, const HerdCheckpointOptions& options,
                                 const std::string& out_dir);

}  // namespace herd
