// herd.json: what makes a Hugging Face–style directory a Herd checkpoint.
//
// A Herd checkpoint is a directory that standard tools can still open:
// config.json (the model spec, Hugging Face keys), model.safetensors (every
// tensor; Hugging Face names), and herd.json:
//
//   {"format": "herd", "version": 1,
//    "tensors":   {"<safetensors name>": {"checksum": "crc32c:1a2b3c4d"}, ...},
//    "quantized": {"<weight name>": {"format": "int4-g128-sym-f16",
//                                    "shape": [rows, cols], "layout": "rows16"}, ...},
//    "dropped_moe_layers": [3, 5],
//    "dropped_experts": {"0": [2, 7], ...},
//    "expert_skip_thresholds": {"0": 0.41, ...},
//    "compression": {...}}
//
// Every tensor of the safetensors files has a checksum. A quantized weight
// `<name>` (e.g. model.layers.0.block_sparse_moe.experts.3.w1.weight) is
// stored as U8 `<name>.codes`, F16/BF16 `<name>.scales` and, for asymmetric
// formats, `<name>.mins` (core/quant_format.h gives their layout and sizes).
// "dropped_moe_layers" lists the layers whose MoE sublayer (norm, router,
// experts) was removed by layer drop: those blocks are attention only.
// "dropped_experts" lists, per layer, the experts removed by expert drop: the
// checkpoint holds no weights for them and the router never picks them.
// "expert_skip_thresholds" gives, per layer, the dynamic skipping threshold
// beta in (0, 1] (LayerWeights::expert_skip_threshold); absent: no skipping.
// "compression" is free-form: what `herd compress` chose and measured.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/quant_format.h"
#include "nlohmann/json.hpp"

namespace herd {

constexpr char kHerdManifestFile[] = "herd.json";
constexpr int kHerdCheckpointVersion = 1;

struct QuantizedTensorEntry {
  QuantFormat format;
  int64_t rows = 0;
  int64_t cols = 0;
};

struct HerdManifest {
  int version = kHerdCheckpointVersion;
  std::map<std::string, uint32_t> checksums;              // safetensors tensor name -> CRC-32C
  std::map<std::string, QuantizedTensorEntry> quantized;  // weight name -> format
  std::vector<int> dropped_moe_layers;
  std::map<int, std::vector<int>> dropped_experts;  // layer -> experts
  std::map<int, float> expert_skip_thresholds;      // layer -> beta
  nlohmann::json compression = nlohmann::json::object();

  nlohmann::json ToJson() const;
  // Parses herd.json's root. InvalidArgument naming `path` and the key for
  // anything malformed (unknown format name, bad shape, bad checksum spelling,
  // a dropped layer or expert that is not a non-negative integer, a skip
  // threshold outside (0, 1]);
  // Unimplemented for a version newer than this build reads.
  static absl::StatusOr<HerdManifest> FromJson(const nlohmann::json& root, const std::string& path);
};

// The names under which a quantized weight's arrays are stored.
std::string QuantizedCodesName(const std::string& weight_name);
std::string QuantizedScalesName(const std::string& weight_name);
std::string QuantizedMinsName(const std::string& weight_name);

}  // namespace herd
