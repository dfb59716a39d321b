#include "model/herd_manifest.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/checksum.h"
#include "core/status.h"

namespace herd {
namespace {

using Json = nlohmann::json;

absl::Status Malformed(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::StatusOr<uint32_t> ParseChecksum(const Json& value, const std::string& path,
                                       const std::string& tensor) {
  constexpr char kPrefix[] = "crc32c:";
  uint32_t crc = 0;
  if (!value.is_string() || value.get<std::string>().size() != 15 ||
      value.get<std::string>().rfind(kPrefix, 0) != 0 ||
      !absl::SimpleHexAtoi(value.get<std::string>().substr(7), &crc)) {
    return Malformed(
        path, absl::StrCat("tensor ", tensor,
                           ": checksum must be \"crc32c:\" and 8 hex digits, got ", value.dump()));
  }
  return crc;
}

}  // namespace

std::string QuantizedCodesName(const std::string& weight_name) { return weight_name + ".codes"; }
std::string QuantizedScalesName(const std::string& weight_name) { return weight_name + ".scales"; }
std::string QuantizedMinsName(const std::string& weight_name) { return weight_name + ".mins"; }

Json HerdManifest::ToJson() const {
  Json tensors = Json::object();
  for (const auto& [name, crc] : checksums) tensors[name] = {{"checksum", Crc32cString(crc)}};
  Json quant = Json::object();
  for (const auto& [name, entry] : quantized) {
    quant[name] = {
        {"format", entry.format.Name()}, {"shape", {entry.rows, entry.cols}}, {"layout", "rows16"}};
  }
  Json root = {{"format", "herd"},
               {"version", version},
               {"tensors", tensors},
               {"quantized", quant},
               {"compression", compression}};
  if (!dropped_moe_layers.empty()) root["dropped_moe_layers"] = dropped_moe_layers;
  if (!dropped_experts.empty()) {
    Json experts = Json::object();
    for (const auto& [layer, list] : dropped_experts) experts[std::to_string(layer)] = list;
    root["dropped_experts"] = experts;
  }
  if (!expert_skip_thresholds.empty()) {
    Json thresholds = Json::object();
    for (const auto& [layer, beta] : expert_skip_thresholds)
      thresholds[std::to_string(layer)] = beta;
    root["expert_skip_thresholds"] = thresholds;
  }
  return root;
}

absl::StatusOr<HerdManifest> HerdManifest::FromJson(const Json& root, const std::string& path) {
  if (!root.is_object()) return Malformed(path, "not a JSON object");
  if (!root.contains("format") || root["format"] != "herd") {
    return Malformed(path, "key 'format' must be \"herd\"");
  }
  if (!root.contains("version") || !root["version"].is_number_integer() ||
      root["version"].get<int64_t>() < 1) {
    return Malformed(path, "key 'version' must be a positive integer");
  }
  HerdManifest m;
  const int64_t version = root["version"].get<int64_t>();
  if (version > kHerdCheckpointVersion) {
    return absl::UnimplementedError(absl::StrCat(path, ": checkpoint version ", version,
                                                 " is newer than this herd reads (",
                                                 kHerdCheckpointVersion, ")"));
  }
  m.version = static_cast<int>(version);
  if (!root.contains("tensors") || !root["tensors"].is_object()) {
    return Malformed(path, "key 'tensors' must be an object");
  }
  for (const auto& [name, entry] : root["tensors"].items()) {
    if (!entry.is_object() || !entry.contains("checksum")) {
      return Malformed(path, absl::StrCat("tensor ", name, ": entry must hold a checksum"));
    }
    HERD_ASSIGN_OR_RETURN(m.checksums[name], ParseChecksum(entry["checksum"], path, name));
  }
  if (root.contains("quantized")) {
    if (!root["quantized"].is_object()) return Malformed(path, "key 'quantized' must be an object");
    for (const auto& item : root["quantized"].items()) {
      const std::string& name = item.key();
      const Json& entry = item.value();
      const auto bad = [&](const std::string& why) {
        return Malformed(path, absl::StrCat("quantized tensor ", name, ": ", why));
      };
      if (!entry.is_object() || !entry.contains("format") || !entry["format"].is_string()) {
        return bad("needs a string 'format'");
      }
      absl::StatusOr<QuantFormat> format = QuantFormat::Parse(entry["format"].get<std::string>());
      if (!format.ok()) return bad(std::string(format.status().message()));
      if (!entry.contains("layout") || entry["layout"] != "rows16") {
        return bad("'layout' must be \"rows16\"");
      }
      const Json& shape = entry.contains("shape") ? entry["shape"] : Json();
      if (!shape.is_array() || shape.size() != 2 || !shape[0].is_number_integer() ||
          !shape[1].is_number_integer()) {
        return bad("'shape' must be [rows, cols]");
      }
      QuantizedTensorEntry q{*format, shape[0].get<int64_t>(), shape[1].get<int64_t>()};
      if (absl::Status fits = q.format.ValidateShape(q.rows, q.cols); !fits.ok()) {
        return bad(std::string(fits.message()));
      }
      m.quantized[name] = q;
    }
  }
  const auto index_list = [&](const Json& list,
                              const std::string& what) -> absl::StatusOr<std::vector<int>> {
    std::vector<int> out;
    if (!list.is_array()) return Malformed(path, absl::StrCat(what, " must be a list"));
    for (const Json& v : list) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 20)) {
        return Malformed(path, absl::StrCat(what, " holds ", v.dump(), ", not an index"));
      }
      out.push_back(static_cast<int>(v.get<int64_t>()));
    }
    return out;
  };
  if (root.contains("dropped_moe_layers")) {
    HERD_ASSIGN_OR_RETURN(m.dropped_moe_layers,
                          index_list(root["dropped_moe_layers"], "'dropped_moe_layers'"));
  }
  if (root.contains("dropped_experts")) {
    if (!root["dropped_experts"].is_object()) {
      return Malformed(path, "'dropped_experts' must be an object of layer -> experts");
    }
    for (const auto& item : root["dropped_experts"].items()) {
      int layer = 0;
      if (!absl::SimpleAtoi(item.key(), &layer) || layer < 0) {
        return Malformed(path,
                         absl::StrCat("'dropped_experts' key '", item.key(), "' is not a layer"));
      }
      HERD_ASSIGN_OR_RETURN(
          m.dropped_experts[layer],
          index_list(item.value(), absl::StrCat("dropped_experts of layer ", layer)));
    }
  }
  if (root.contains("expert_skip_thresholds")) {
    const Json& thresholds = root["expert_skip_thresholds"];
    if (!thresholds.is_object()) {
      return Malformed(path, "'expert_skip_thresholds' must be an object of layer -> threshold");
    }
    for (const auto& item : thresholds.items()) {
      int layer = 0;
      if (!absl::SimpleAtoi(item.key(), &layer) || layer < 0) {
        return Malformed(
            path, absl::StrCat("'expert_skip_thresholds' key '", item.key(), "' is not a layer"));
      }
      const Json& beta = item.value();
      if (!beta.is_number() || !(beta.get<double>() > 0.0 && beta.get<double>() <= 1.0)) {
        return Malformed(path, absl::StrCat("expert skip threshold of layer ", layer, " is ",
                                            beta.dump(), ", not in (0, 1]"));
      }
      m.expert_skip_thresholds[layer] = beta.get<float>();
    }
  }
  if (root.contains("compression")) m.compression = root["compression"];
  return m;
}

}  // namespace herd
