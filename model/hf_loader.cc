#include "model/hf_loader.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/checksum.h"
#include "core/logging.h"
#include "core/status.h"
#include "model/herd_manifest.h"
#include "model/hf_arch.h"
#include "model/safetensors_file.h"
#include "nlohmann/json.hpp"

namespace herd {
namespace {

using Json = nlohmann::json;

constexpr char kConfigFile[] = "config.json";
constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr char kSafetensorsSuffix[] = ".safetensors";
// Larger sizes and counts in config.json are corrupt, not models.
constexpr uint64_t kMaxConfigInt = std::numeric_limits<int32_t>::max();

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (!dir.empty() && dir.back() == '/') return dir + name;
  return absl::StrCat(dir, "/", name);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// A short rendering of a JSON value for error messages.
std::string Brief(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

// Reads and parses a JSON file whose root must be an object.
absl::StatusOr<Json> ReadJsonObject(const std::string& path) {
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  if (file->size() == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": file is empty"));
  Json root;
  try {
    root = Json::parse(file->data(), file->data() + file->size());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  return root;
}

// Typed access to config.json; every error names the file and the key.
class Config {
 public:
  Config(std::string path, Json root) : path_(std::move(path)), root_(std::move(root)) {}

  const std::string& path() const { return path_; }

  // True when `key` is present with a value other than null.
  bool Has(const char* key) const {
    auto it = root_.find(key);
    return it != root_.end() && !it->is_null();
  }
  const Json& Get(const char* key) const { return root_.at(key); }

  absl::Status Invalid(const char* key, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": key '", key, "' ", what));
  }
  absl::Status Unsupported(const std::string& what) const {
    return absl::UnimplementedError(absl::StrCat(path_, ": ", what));
  }

  // A required integer > 0.
  absl::StatusOr<int64_t> PositiveInt(const char* key) const {
    if (!Has(key)) return Invalid(key, "is missing");
    return ParsePositiveInt(key);
  }
  // An optional integer > 0; absent or null gives `default_value`.
  absl::StatusOr<int64_t> PositiveInt(const char* key, int64_t default_value) const {
    if (!Has(key)) return default_value;
    return ParsePositiveInt(key);
  }
  // An optional finite number > 0.
  absl::StatusOr<float> PositiveFloat(const char* key, float default_value) const {
    if (!Has(key)) return default_value;
    const Json& value = Get(key);
    if (!value.is_number())
      return Invalid(key, absl::StrCat("must be a number, got ", Brief(value)));
    const double v = value.get<double>();
    if (!std::isfinite(v) || v <= 0.0 || v > std::numeric_limits<float>::max()) {
      return Invalid(key, absl::StrCat("must be a finite number > 0, got ", Brief(value)));
    }
    return static_cast<float>(v);
  }
  absl::StatusOr<bool> Bool(const char* key, bool default_value) const {
    if (!Has(key)) return default_value;
    const Json& value = Get(key);
    if (!value.is_boolean())
      return Invalid(key, absl::StrCat("must be true or false, got ", Brief(value)));
    return value.get<bool>();
  }

 private:
  absl::StatusOr<int64_t> ParsePositiveInt(const char* key) const {
    const Json& value = Get(key);
    if (!value.is_number_integer()) {
      return Invalid(key, absl::StrCat("must be an integer, got ", Brief(value)));
    }
    if (value.is_number_unsigned() ? value.get<uint64_t>() > kMaxConfigInt
                                   : value.get<int64_t>() > static_cast<int64_t>(kMaxConfigInt)) {
      return Invalid(key, absl::StrCat("is too large: ", Brief(value)));
    }
    const int64_t v = value.get<int64_t>();
    if (v <= 0) return Invalid(key, absl::StrCat("must be > 0, got ", v));
    return v;
  }

  std::string path_;
  Json root_;
};

// What config.json says beyond the ModelSpec: which naming scheme, and the
// o_proj bias that Qwen3-MoE and OLMoE carry when attention_bias is set.
struct HfLayout {
  ModelSpec spec;
  const HfArchInfo* arch = nullptr;
  bool o_bias = false;
};

absl::Status RejectDenseLayers(const Config& config) {
  HERD_ASSIGN_OR_RETURN(const int64_t sparse_step, config.PositiveInt("decoder_sparse_step", 1));
  if (sparse_step != 1) {
    return config.Unsupported(
        absl::StrCat("dense MLP layers are not supported (decoder_sparse_step = ", sparse_step,
                     "; Herd needs every layer to be MoE)"));
  }
  if (config.Has("mlp_only_layers")) {
    const Json& layers = config.Get("mlp_only_layers");
    if (!layers.is_array()) {
      return config.Invalid("mlp_only_layers", absl::StrCat("must be a list, got ", Brief(layers)));
    }
    if (!layers.empty()) {
      return config.Unsupported(absl::StrCat(
          "dense MLP layers are not supported (mlp_only_layers = ", Brief(layers), ")"));
    }
  }
  return absl::OkStatus();
}

// Caps the context at a sliding attention window: within the window, full
// attention computes exactly what sliding-window attention does.
absl::Status ApplySlidingWindow(const Config& config, ModelSpec* spec) {
  HERD_ASSIGN_OR_RETURN(const int64_t window,
                        config.PositiveInt("sliding_window", spec->context_length));
  if (window < spec->context_length) {
    HERD_LOG(WARN) << config.path() << ": sliding attention window " << window
                   << " caps the context length (was " << spec->context_length << ")";
    spec->context_length = window;
  }
  return absl::OkStatus();
}

absl::StatusOr<HfLayout> ParseConfig(const Config& config, const std::string& dir) {
  HfLayout layout;
  ModelSpec& spec = layout.spec;

  if (!config.Has("architectures") || !config.Get("architectures").is_array() ||
      config.Get("architectures").empty() || !config.Get("architectures")[0].is_string()) {
    return config.Invalid("architectures", "must be a non-empty list of strings");
  }
  const std::string arch_name = config.Get("architectures")[0].get<std::string>();
  for (const HfArchInfo& info : HfArchitectures()) {
    if (arch_name == info.hf_name) layout.arch = &info;
  }
  if (layout.arch == nullptr) {
    std::vector<std::string> supported;
    for (const HfArchInfo& info : HfArchitectures()) supported.push_back(info.hf_name);
    return absl::InvalidArgumentError(
        absl::StrCat(config.path(), ": unsupported architecture '", arch_name,
                     "' (supported: ", absl::StrJoin(supported, ", "), ")"));
  }
  const HfArchInfo& arch = *layout.arch;
  spec.architecture = arch.arch;

  std::string name;
  if (config.Has("_name_or_path") && config.Get("_name_or_path").is_string()) {
    name = config.Get("_name_or_path").get<std::string>();
  }
  if (name.empty()) {
    name = std::filesystem::path(dir).lexically_normal().filename().string();
    if (name.empty()) {
      name = std::filesystem::path(dir).lexically_normal().parent_path().filename().string();
    }
  }
  spec.name = name;

  HERD_ASSIGN_OR_RETURN(spec.vocab_size, config.PositiveInt("vocab_size"));
  HERD_ASSIGN_OR_RETURN(spec.hidden_size, config.PositiveInt("hidden_size"));
  HERD_ASSIGN_OR_RETURN(spec.num_layers, config.PositiveInt("num_hidden_layers"));
  HERD_ASSIGN_OR_RETURN(spec.num_heads, config.PositiveInt("num_attention_heads"));
  HERD_ASSIGN_OR_RETURN(spec.num_kv_heads,
                        config.PositiveInt("num_key_value_heads", spec.num_heads));
  if (!config.Has("head_dim") && spec.hidden_size % spec.num_heads != 0) {
    return config.Invalid("head_dim", absl::StrCat("is missing and hidden_size (", spec.hidden_size,
                                                   ") is not a multiple of num_attention_heads (",
                                                   spec.num_heads, ")"));
  }
  HERD_ASSIGN_OR_RETURN(spec.head_dim,
                        config.PositiveInt("head_dim", spec.hidden_size / spec.num_heads));
  HERD_ASSIGN_OR_RETURN(spec.context_length, config.PositiveInt("max_position_embeddings"));
  HERD_ASSIGN_OR_RETURN(spec.num_experts, config.PositiveInt(arch.num_experts_key));
  HERD_ASSIGN_OR_RETURN(spec.num_experts_per_token, config.PositiveInt("num_experts_per_tok"));
  HERD_ASSIGN_OR_RETURN(spec.expert_ffn_size, config.PositiveInt(arch.expert_ffn_key));
  HERD_ASSIGN_OR_RETURN(spec.rms_norm_eps,
                        config.PositiveFloat("rms_norm_eps", arch.default_rms_norm_eps));
  HERD_ASSIGN_OR_RETURN(spec.rope_theta, config.PositiveFloat("rope_theta", 10000.0f));
  HERD_ASSIGN_OR_RETURN(spec.tied_embeddings, config.Bool("tie_word_embeddings", false));
  spec.norm_topk_prob = arch.default_norm_topk_prob;
  if (arch.has_norm_topk_prob_key) {
    HERD_ASSIGN_OR_RETURN(spec.norm_topk_prob,
                          config.Bool("norm_topk_prob", arch.default_norm_topk_prob));
  }
  spec.rope_style = RopeStyle::kNeox;
  spec.rope_dim = spec.head_dim;
  spec.router_scoring = RouterScoring::kSoftmax;

  if (config.Has("rope_scaling")) {
    return config.Unsupported(
        absl::StrCat("rope_scaling not supported (got ", Brief(config.Get("rope_scaling")), ")"));
  }
  if (config.Has("hidden_act")) {
    const Json& act = config.Get("hidden_act");
    if (!act.is_string() || act.get<std::string>() != "silu") {
      return config.Unsupported(
          absl::StrCat("hidden_act ", Brief(act), " is not supported (Herd's experts use silu)"));
    }
  }

  switch (arch.arch) {
    case Architecture::kMixtral:
      HERD_RETURN_IF_ERROR(ApplySlidingWindow(config, &spec));
      break;
    case Architecture::kQwen2Moe: {
      spec.attention_bias = true;  // hard-wired in Qwen2MoeAttention (q/k/v only)
      HERD_ASSIGN_OR_RETURN(spec.shared_expert_ffn_size,
                            config.PositiveInt("shared_expert_intermediate_size"));
      spec.shared_expert_gated = true;
      HERD_RETURN_IF_ERROR(RejectDenseLayers(config));
      HERD_ASSIGN_OR_RETURN(const bool sliding, config.Bool("use_sliding_window", false));
      if (sliding) HERD_RETURN_IF_ERROR(ApplySlidingWindow(config, &spec));
      break;
    }
    case Architecture::kQwen3Moe: {
      spec.qk_norm = QkNorm::kPerHead;
      HERD_ASSIGN_OR_RETURN(spec.attention_bias, config.Bool("attention_bias", false));
      layout.o_bias = spec.attention_bias;
      HERD_RETURN_IF_ERROR(RejectDenseLayers(config));
      HERD_ASSIGN_OR_RETURN(const bool sliding, config.Bool("use_sliding_window", false));
      if (sliding) HERD_RETURN_IF_ERROR(ApplySlidingWindow(config, &spec));
      break;
    }
    case Architecture::kOlmoe:
      spec.qk_norm = QkNorm::kAllHeads;
      HERD_ASSIGN_OR_RETURN(spec.attention_bias, config.Bool("attention_bias", false));
      layout.o_bias = spec.attention_bias;
      if (config.Has("clip_qkv")) {
        return config.Unsupported(
            absl::StrCat("clip_qkv is not supported (got ", Brief(config.Get("clip_qkv")), ")"));
      }
      break;
  }

  absl::Status valid = spec.Validate();
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(config.path(), ": ", valid.message()));
  }
  return layout;
}

// Where a tensor is stored.
struct Located {
  const SafetensorsTensor* tensor;
  const SafetensorsFile* file;
};

// The checkpoint's safetensors files and which one holds each tensor.
class TensorStore {
 public:
  // Maps and parses the files of `dir` (see the header for which). The maps
  // are appended to `maps`, which must outlive this store.
  absl::Status Open(const std::string& dir, std::vector<std::unique_ptr<MappedFile>>* maps) {
    dir_ = dir;
    const std::string index_path = JoinPath(dir, kIndexFile);
    std::error_code ec;
    if (std::filesystem::exists(index_path, ec)) return OpenIndexed(index_path, maps);
    return OpenAll(maps);
  }

  absl::StatusOr<Located> Find(const std::string& name) const {
    auto it = file_of_.find(name);
    if (it == file_of_.end()) {
      if (!index_path_.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path_, ": missing tensor ", name, " (not in weight_map)"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat(dir_, ": missing tensor ", name, " (in none of the *.safetensors files)"));
    }
    const SafetensorsFile* file = files_[it->second].get();
    const SafetensorsTensor* tensor = file->Find(name);
    if (tensor == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(file->path(), ": missing tensor ", name,
                                                     ", which ", kIndexFile,
                                                     " places in this shard"));
    }
    return Located{tensor, file};
  }

  // Whether the checkpoint lists `name` (Find may still fail if the index is wrong).
  bool Lists(const std::string& name) const { return file_of_.contains(name); }

  // Every tensor name the checkpoint lists.
  std::vector<std::string> Names() const {
    std::vector<std::string> names;
    names.reserve(file_of_.size());
    for (const auto& [name, file_idx] : file_of_) names.push_back(name);
    return names;
  }

 private:
  absl::StatusOr<size_t> AddFile(const std::string& path,
                                 std::vector<std::unique_ptr<MappedFile>>* maps) {
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> map, MappedFile::Open(path));
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Parse(map.get()));
    maps->push_back(std::move(map));
    files_.push_back(std::move(file));
    return files_.size() - 1;
  }

  absl::Status OpenIndexed(const std::string& index_path,
                           std::vector<std::unique_ptr<MappedFile>>* maps) {
    index_path_ = index_path;
    HERD_ASSIGN_OR_RETURN(Json index, ReadJsonObject(index_path));
    auto weight_map = index.find("weight_map");
    if (weight_map == index.end() || !weight_map->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": key 'weight_map' is missing or not an object"));
    }
    absl::flat_hash_map<std::string, size_t> shard_idx;  // shard file name -> files_ index
    for (const auto& [name, shard_json] : weight_map->items()) {
      if (!shard_json.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry of ", name,
                                                       " is not a file name: ", Brief(shard_json)));
      }
      const std::string shard = shard_json.get<std::string>();
      if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry of ", name,
                                                       " names an invalid shard '", shard, "'"));
      }
      auto it = shard_idx.find(shard);
      if (it == shard_idx.end()) {
        const std::string shard_path = JoinPath(dir_, shard);
        absl::StatusOr<size_t> idx = AddFile(shard_path, maps);
        if (!idx.ok()) {
          if (absl::IsNotFound(idx.status())) {
            return absl::NotFoundError(absl::StrCat(shard_path, ": shard ", shard, " listed in ",
                                                    kIndexFile, " (for tensor ", name,
                                                    ") does not exist"));
          }
          return idx.status();
        }
        it = shard_idx.emplace(shard, *idx).first;
      }
      file_of_[name] = it->second;
    }
    return absl::OkStatus();
  }

  absl::Status OpenAll(std::vector<std::unique_ptr<MappedFile>>* maps) {
    std::vector<std::string> paths;
    std::error_code ec;
    std::filesystem::directory_iterator it(dir_, ec);
    for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      const std::string file_name = it->path().filename().string();
      if (absl::EndsWith(file_name, kSafetensorsSuffix) && it->is_regular_file(ec)) {
        paths.push_back(it->path().string());
      }
    }
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat("cannot list ", dir_, ": ", ec.message()));
    }
    if (paths.empty()) {
      return absl::NotFoundError(
          absl::StrCat(dir_, ": no ", kIndexFile, " and no *", kSafetensorsSuffix, " files"));
    }
    std::sort(paths.begin(), paths.end());
    for (const std::string& path : paths) {
      HERD_ASSIGN_OR_RETURN(const size_t idx, AddFile(path, maps));
      for (const std::string& name : files_[idx]->tensor_names()) {
        auto [slot, inserted] = file_of_.emplace(name, idx);
        if (!inserted) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor ", name, " is stored in both ", files_[slot->second]->path(), " and ", path));
        }
      }
    }
    return absl::OkStatus();
  }

  std::string dir_;
  std::string index_path_;  // empty when the directory has no index
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, size_t> file_of_;  // tensor name -> files_ index
};

// Fetches tensors by their checkpoint names into a Model, checking shapes
// and, in a Herd checkpoint, checksums.
class Builder {
 public:
  // `manifest` is null for a plain Hugging Face checkpoint.
  Builder(const TensorStore* store, const HerdManifest* manifest, Model* model)
      : store_(store), manifest_(manifest), model_(model) {}

  // The stored view of `name`, which must be F32/F16/BF16 of exactly `shape`
  // (or, where herd.json says so, a quantized matrix of that shape); recorded
  // in model.tensors under `module`.
  absl::StatusOr<TensorView> Stored(const std::string& name, const std::vector<int64_t>& shape,
                                    ModuleKind module) {
    if (manifest_ != nullptr && manifest_->quantized.contains(name)) {
      HERD_ASSIGN_OR_RETURN(const TensorView view, Quantized(name, shape));
      model_->tensors.push_back(TensorRecord{name, module, view});
      return view;
    }
    HERD_ASSIGN_OR_RETURN(const Located located, Checked(name));
    const SafetensorsTensor& tensor = *located.tensor;
    if (tensor.shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(located.file->path(), ": tensor ", name,
                                                     " has shape ", ShapeString(tensor.shape),
                                                     ", expected ", ShapeString(shape)));
    }
    if (tensor.dtype != SafetensorsDType::kF32 && tensor.dtype != SafetensorsDType::kF16 &&
        tensor.dtype != SafetensorsDType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat(located.file->path(), ": tensor ", name, " has dtype ",
                       SafetensorsDTypeName(tensor.dtype), "; weights must be F32, F16 or BF16"));
    }
    HERD_ASSIGN_OR_RETURN(const TensorView view, MakeTensorView(tensor, located.file->path()));
    model_->tensors.push_back(TensorRecord{name, module, view});
    return view;
  }

  // As Stored, converted to an owned F32 vector of all its elements.
  absl::StatusOr<TensorView> Vector(const std::string& name, const std::vector<int64_t>& shape,
                                    ModuleKind module) {
    HERD_ASSIGN_OR_RETURN(const TensorView view, Stored(name, shape, module));
    return model_->OwnF32Copy(view);
  }

  // Marks `name` as deliberately left out (an expert another rank holds).
  void Skip(const std::string& name) {
    used_.insert(name);
    if (manifest_ != nullptr && manifest_->quantized.contains(name)) {
      used_.insert(QuantizedCodesName(name));
      used_.insert(QuantizedScalesName(name));
      used_.insert(QuantizedMinsName(name));
    }
  }

  // Names the checkpoint lists that were neither fetched nor skipped.
  std::vector<std::string> Unused() const {
    std::vector<std::string> unused;
    for (std::string& name : store_->Names()) {
      if (!used_.contains(name)) unused.push_back(std::move(name));
    }
    std::sort(unused.begin(), unused.end());
    return unused;
  }

 private:
  // Finds `name`; in a Herd checkpoint, first checks its bytes against the
  // checksum herd.json records (DataLoss naming the file and tensor).
  absl::StatusOr<Located> Checked(const std::string& name) {
    HERD_ASSIGN_OR_RETURN(const Located located, store_->Find(name));
    used_.insert(name);
    if (manifest_ == nullptr) return located;
    const auto it = manifest_->checksums.find(name);
    if (it == manifest_->checksums.end()) {
      return absl::InvalidArgumentError(absl::StrCat(located.file->path(), ": tensor ", name,
                                                     " has no checksum in ", kHerdManifestFile));
    }
    const uint32_t crc = Crc32c(located.tensor->data, located.tensor->num_bytes);
    if (crc != it->second) {
      return absl::DataLossError(absl::StrCat(
          located.file->path(), ": tensor ", name, " is corrupt: its checksum is ",
          Crc32cString(crc), ", ", kHerdManifestFile, " records ", Crc32cString(it->second)));
    }
    return located;
  }

  // The array `name` of a quantized weight: `dtype`, exactly `bytes` long.
  absl::StatusOr<const uint8_t*> QuantizedArray(const std::string& weight, const std::string& name,
                                                SafetensorsDType dtype, int64_t bytes) {
    HERD_ASSIGN_OR_RETURN(const Located located, Checked(name));
    if (located.tensor->dtype != dtype || located.tensor->num_bytes != bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          located.file->path(), ": tensor ", name, " of quantized weight ", weight, " is ",
          SafetensorsDTypeName(located.tensor->dtype), " of ", located.tensor->num_bytes,
          " bytes; its format needs ", SafetensorsDTypeName(dtype), " of ", bytes, " bytes"));
    }
    return located.tensor->data;
  }

  absl::StatusOr<TensorView> Quantized(const std::string& name, const std::vector<int64_t>& shape) {
    const QuantizedTensorEntry& entry = manifest_->quantized.at(name);
    if (shape.size() != 2 || entry.rows != shape[0] || entry.cols != shape[1]) {
      return absl::InvalidArgumentError(absl::StrCat(kHerdManifestFile, ": quantized tensor ", name,
                                                     " has shape [", entry.rows, ", ", entry.cols,
                                                     "], expected ", ShapeString(shape)));
    }
    const QuantFormat& f = entry.format;
    const QuantizedMatrixSizes sizes = QuantizedSizes(f, entry.rows, entry.cols);
    const SafetensorsDType scale_type =
        f.scale_type == DType::kBF16 ? SafetensorsDType::kBF16 : SafetensorsDType::kF16;
    used_.insert(name);
    QuantizedMatrixData data;
    HERD_ASSIGN_OR_RETURN(data.codes, QuantizedArray(name, QuantizedCodesName(name),
                                                     SafetensorsDType::kU8, sizes.codes));
    HERD_ASSIGN_OR_RETURN(const uint8_t* scales, QuantizedArray(name, QuantizedScalesName(name),
                                                                scale_type, sizes.scales));
    data.scales = reinterpret_cast<const uint16_t*>(scales);
    if (!f.symmetric) {
      HERD_ASSIGN_OR_RETURN(const uint8_t* mins,
                            QuantizedArray(name, QuantizedMinsName(name), scale_type, sizes.mins));
      data.mins = reinterpret_cast<const uint16_t*>(mins);
    }
    return TensorView::Quantized(f, entry.rows, entry.cols, data);
  }

  const TensorStore* store_;
  const HerdManifest* manifest_;
  Model* model_;
  absl::flat_hash_set<std::string> used_;
};

// `manifest` (null for a plain Hugging Face checkpoint) says which MoE
// sublayers and experts were dropped.
absl::Status LoadLayer(const HfLayout& layout, const ModelLoadOptions& options,
                       const HerdManifest* manifest, int layer_idx, Builder* b, LayerWeights* w) {
  const ModelSpec& s = layout.spec;
  const HfArchInfo& arch = *layout.arch;
  const int64_t h = s.hidden_size;
  const int64_t q_dim = s.num_heads * s.head_dim;
  const int64_t kv_dim = s.num_kv_heads * s.head_dim;
  const std::string p = absl::StrCat("model.layers.", layer_idx, ".");
  const std::string attn = p + "self_attn.";

  HERD_ASSIGN_OR_RETURN(w->attn_norm,
                        b->Vector(p + "input_layernorm.weight", {h}, ModuleKind::kNorms));
  const bool moe_dropped =
      manifest != nullptr &&
      std::find(manifest->dropped_moe_layers.begin(), manifest->dropped_moe_layers.end(),
                layer_idx) != manifest->dropped_moe_layers.end();
  if (!moe_dropped) {
    HERD_ASSIGN_OR_RETURN(
        w->ffn_norm, b->Vector(p + "post_attention_layernorm.weight", {h}, ModuleKind::kNorms));
  }
  HERD_ASSIGN_OR_RETURN(w->q.weight,
                        b->Stored(attn + "q_proj.weight", {q_dim, h}, ModuleKind::kAttention));
  HERD_ASSIGN_OR_RETURN(w->k.weight,
                        b->Stored(attn + "k_proj.weight", {kv_dim, h}, ModuleKind::kAttention));
  HERD_ASSIGN_OR_RETURN(w->v.weight,
                        b->Stored(attn + "v_proj.weight", {kv_dim, h}, ModuleKind::kAttention));
  HERD_ASSIGN_OR_RETURN(w->o.weight,
                        b->Stored(attn + "o_proj.weight", {h, q_dim}, ModuleKind::kAttention));
  if (s.attention_bias) {
    HERD_ASSIGN_OR_RETURN(w->q.bias,
                          b->Vector(attn + "q_proj.bias", {q_dim}, ModuleKind::kAttention));
    HERD_ASSIGN_OR_RETURN(w->k.bias,
                          b->Vector(attn + "k_proj.bias", {kv_dim}, ModuleKind::kAttention));
    HERD_ASSIGN_OR_RETURN(w->v.bias,
                          b->Vector(attn + "v_proj.bias", {kv_dim}, ModuleKind::kAttention));
  }
  if (layout.o_bias) {
    HERD_ASSIGN_OR_RETURN(w->o.bias, b->Vector(attn + "o_proj.bias", {h}, ModuleKind::kAttention));
  }
  if (s.qk_norm != QkNorm::kNone) {
    const bool per_head = s.qk_norm == QkNorm::kPerHead;
    HERD_ASSIGN_OR_RETURN(
        w->q_norm,
        b->Vector(attn + "q_norm.weight", {per_head ? s.head_dim : q_dim}, ModuleKind::kAttention));
    HERD_ASSIGN_OR_RETURN(w->k_norm,
                          b->Vector(attn + "k_norm.weight", {per_head ? s.head_dim : kv_dim},
                                    ModuleKind::kAttention));
  }

  w->experts.resize(s.num_experts);
  if (manifest != nullptr) {
    if (moe_dropped) {
      w->moe_dropped = true;
      return absl::OkStatus();
    }
    if (const auto it = manifest->dropped_experts.find(layer_idx);
        it != manifest->dropped_experts.end()) {
      w->expert_dropped.assign(s.num_experts, false);
      for (int e : it->second) {
        if (e >= s.num_experts) {
          return absl::InvalidArgumentError(absl::StrCat(kHerdManifestFile, ": dropped expert ", e,
                                                         " of layer ", layer_idx,
                                                         " does not exist"));
        }
        w->expert_dropped[e] = true;
      }
    }
    if (const auto it = manifest->expert_skip_thresholds.find(layer_idx);
        it != manifest->expert_skip_thresholds.end()) {
      w->expert_skip_threshold = it->second;
    }
  }
  const std::string moe = absl::StrCat(p, arch.moe_prefix, ".");
  HERD_ASSIGN_OR_RETURN(w->router,
                        b->Stored(moe + "gate.weight", {s.num_experts, h}, ModuleKind::kRouter));
  const int64_t f = s.expert_ffn_size;
  for (int64_t e = 0; e < s.num_experts; ++e) {
    if (!w->ExpertExists(static_cast<int>(e))) continue;  // dropped: no weights stored
    const std::string x = absl::StrCat(moe, "experts.", e, ".");
    const std::string gate = absl::StrCat(x, arch.gate_proj, ".weight");
    const std::string up = absl::StrCat(x, arch.up_proj, ".weight");
    const std::string down = absl::StrCat(x, arch.down_proj, ".weight");
    if (options.load_expert && !options.load_expert(layer_idx, static_cast<int>(e))) {
      b->Skip(gate);
      b->Skip(up);
      b->Skip(down);
      continue;
    }
    ExpertFfnWeights& expert = w->experts[e];
    HERD_ASSIGN_OR_RETURN(expert.gate, b->Stored(gate, {f, h}, ModuleKind::kExperts));
    HERD_ASSIGN_OR_RETURN(expert.up, b->Stored(up, {f, h}, ModuleKind::kExperts));
    HERD_ASSIGN_OR_RETURN(expert.down, b->Stored(down, {h, f}, ModuleKind::kExperts));
  }

  if (s.shared_expert_ffn_size > 0) {
    const int64_t sf = s.shared_expert_ffn_size;
    const std::string x = moe + "shared_expert.";
    ExpertFfnWeights& shared = w->shared_expert;
    HERD_ASSIGN_OR_RETURN(shared.gate,
                          b->Stored(x + "gate_proj.weight", {sf, h}, ModuleKind::kSharedExpert));
    HERD_ASSIGN_OR_RETURN(shared.up,
                          b->Stored(x + "up_proj.weight", {sf, h}, ModuleKind::kSharedExpert));
    HERD_ASSIGN_OR_RETURN(shared.down,
                          b->Stored(x + "down_proj.weight", {h, sf}, ModuleKind::kSharedExpert));
    if (s.shared_expert_gated) {
      // nn.Linear(hidden, 1): stored [1, hidden], used as the F32 vector [hidden].
      HERD_ASSIGN_OR_RETURN(w->shared_expert_gate, b->Vector(moe + "shared_expert_gate.weight",
                                                             {1, h}, ModuleKind::kSharedExpert));
    }
  }
  return absl::OkStatus();
}

// herd.json, when `dir` is a Herd checkpoint; every tensor it lists must be
// in the safetensors files and every tensor there must be listed in it.
absl::StatusOr<std::optional<HerdManifest>> ReadManifest(const std::string& dir,
                                                         const TensorStore& store) {
  const std::string path = JoinPath(dir, kHerdManifestFile);
  if (!std::filesystem::exists(path)) return std::nullopt;
  HERD_ASSIGN_OR_RETURN(const Json root, ReadJsonObject(path));
  HERD_ASSIGN_OR_RETURN(HerdManifest manifest, HerdManifest::FromJson(root, path));
  for (const auto& [name, crc] : manifest.checksums) {
    if (!store.Lists(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor ", name, " is listed but no safetensors file holds it (a lost shard?)"));
    }
  }
  for (const std::string& name : store.Names()) {
    if (!manifest.checksums.contains(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor ", name, " is stored but has no checksum here"));
    }
  }
  return manifest;
}

absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir,
                                            const ModelLoadOptions& options) {
  const std::string config_path = JoinPath(dir, kConfigFile);
  absl::StatusOr<Json> config_json = ReadJsonObject(config_path);
  if (absl::IsNotFound(config_json.status())) {
    return absl::NotFoundError(absl::StrCat(
        config_path, ": not found (a Hugging Face checkpoint directory holds config.json)"));
  }
  if (!config_json.ok()) return config_json.status();
  const Config config(config_path, *std::move(config_json));
  HERD_ASSIGN_OR_RETURN(const HfLayout layout, ParseConfig(config, dir));

  auto model = std::make_unique<Model>();
  model->spec = layout.spec;
  model->format = "safetensors";
  model->source_path = dir;
  TensorStore store;
  HERD_RETURN_IF_ERROR(store.Open(dir, &model->mapped_files));
  HERD_ASSIGN_OR_RETURN(const std::optional<HerdManifest> manifest, ReadManifest(dir, store));
  if (manifest.has_value()) {
    model->format = "herd";
    std::vector<int> layers = manifest->dropped_moe_layers;
    for (const auto& [layer, experts] : manifest->dropped_experts) layers.push_back(layer);
    for (int layer : layers) {
      if (layer >= layout.spec.num_layers) {
        return absl::InvalidArgumentError(absl::StrCat(kHerdManifestFile, ": drops part of layer ",
                                                       layer, ", but the model has ",
                                                       layout.spec.num_layers, " layers"));
      }
    }
  }
  Builder b(&store, manifest.has_value() ? &*manifest : nullptr, model.get());

  const ModelSpec& s = layout.spec;
  HERD_ASSIGN_OR_RETURN(model->token_embedding,
                        b.Stored("model.embed_tokens.weight", {s.vocab_size, s.hidden_size},
                                 ModuleKind::kEmbeddings));
  HERD_ASSIGN_OR_RETURN(model->output_norm,
                        b.Vector("model.norm.weight", {s.hidden_size}, ModuleKind::kNorms));
  const bool has_lm_head = store.Lists("lm_head.weight") ||
                           (manifest.has_value() && manifest->quantized.contains("lm_head.weight"));
  if (s.tied_embeddings || !has_lm_head) {
    model->spec.tied_embeddings = true;
    model->lm_head = model->token_embedding;
    if (has_lm_head) b.Skip("lm_head.weight");  // transformers ties it and ignores the copy
  } else {
    HERD_ASSIGN_OR_RETURN(model->lm_head, b.Stored("lm_head.weight", {s.vocab_size, s.hidden_size},
                                                   ModuleKind::kEmbeddings));
  }

  model->layers.resize(s.num_layers);
  for (int64_t l = 0; l < s.num_layers; ++l) {
    HERD_RETURN_IF_ERROR(LoadLayer(layout, options, manifest.has_value() ? &*manifest : nullptr,
                                   static_cast<int>(l), &b, &model->layers[l]));
  }

  const std::vector<std::string> unused = b.Unused();
  if (!unused.empty()) {
    HERD_LOG(WARN) << dir << ": " << unused.size()
                   << " tensors in the checkpoint are not used, e.g. " << unused.front();
  }
  HERD_RETURN_IF_ERROR(ValidateModelWeights(*model));
  return model;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir,
                                                   const ModelLoadOptions& options) {
  absl::StatusOr<std::unique_ptr<Model>> model = Load(dir, options);
  if (model.ok() || absl::StartsWith(model.status().message(), dir)) return model;
  return absl::Status(model.status().code(), absl::StrCat(dir, ": ", model.status().message()));
}

}  // namespace herd
