#include "core/config.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/logging.h"
#include "core/status.h"
#include "core/yaml_util.h"
#include "yaml-cpp/yaml.h"

namespace herd {
namespace {

// Reads node[key] into *out when present; a type mismatch is InvalidArgument.
template <typename T>
absl::Status Read(const std::string& source, const YAML::Node& map, const std::string& key,
                  const std::string& path, T* out) {
  const YAML::Node node = map[key];
  if (!node) return absl::OkStatus();
  try {
    *out = node.as<T>();
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(YamlLocation(source, node), ": '", path, "' has the wrong type: ", e.msg));
  }
  return absl::OkStatus();
}

absl::StatusOr<HerdConfig> ParseRoot(const std::string& source, const YAML::Node& root) {
  HerdConfig config;
  if (!root || root.IsNull()) return config;
  HERD_RETURN_IF_ERROR(
      CheckYamlKeys(source, root, "the top level", {"model", "engine", "serve", "log_level"}));
  HERD_RETURN_IF_ERROR(Read(source, root, "model", "model", &config.model));
  HERD_RETURN_IF_ERROR(Read(source, root, "log_level", "log_level", &config.log_level));
  if (const YAML::Node engine = root["engine"]) {
    HERD_RETURN_IF_ERROR(
        CheckYamlKeys(source, engine, "'engine'", {"device", "threads", "max_context_tokens"}));
    HERD_RETURN_IF_ERROR(Read(source, engine, "device", "engine.device", &config.engine.device));
    HERD_RETURN_IF_ERROR(Read(source, engine, "threads", "engine.threads", &config.engine.threads));
    HERD_RETURN_IF_ERROR(Read(source, engine, "max_context_tokens", "engine.max_context_tokens",
                              &config.engine.max_context_tokens));
  }
  if (const YAML::Node serve = root["serve"]) {
    ServeConfig& c = config.serve;
    HERD_RETURN_IF_ERROR(
        CheckYamlKeys(source, serve, "'serve'",
                      {"host", "port", "api_key", "model_name", "kv_cache_bytes", "kv_block_tokens",
                       "kv_cache_type", "max_step_tokens", "max_waiting", "max_running",
                       "max_body_bytes", "drain_timeout_s", "request_timeout_s",
                       "detailed_expert_metrics", "prefix_caching", "rebalance"}));
    HERD_RETURN_IF_ERROR(Read(source, serve, "host", "serve.host", &c.host));
    HERD_RETURN_IF_ERROR(Read(source, serve, "port", "serve.port", &c.port));
    HERD_RETURN_IF_ERROR(Read(source, serve, "api_key", "serve.api_key", &c.api_key));
    HERD_RETURN_IF_ERROR(Read(source, serve, "model_name", "serve.model_name", &c.model_name));
    HERD_RETURN_IF_ERROR(
        Read(source, serve, "kv_cache_bytes", "serve.kv_cache_bytes", &c.kv_cache_bytes));
    HERD_RETURN_IF_ERROR(
        Read(source, serve, "kv_block_tokens", "serve.kv_block_tokens", &c.kv_block_tokens));
    if (const YAML::Node node = serve["kv_cache_type"]) {
      std::string name;
      HERD_RETURN_IF_ERROR(Read(source, serve, "kv_cache_type", "serve.kv_cache_type", &name));
      absl::StatusOr<DType> type = ParseKvCacheType(name);
      if (!type.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            YamlLocation(source, node), ": serve.kv_cache_type: ", type.status().message()));
      }
      c.kv_cache_type = *type;
    }
    HERD_RETURN_IF_ERROR(
        Read(source, serve, "max_step_tokens", "serve.max_step_tokens", &c.max_step_tokens));
    HERD_RETURN_IF_ERROR(Read(source, serve, "max_waiting", "serve.max_waiting", &c.max_waiting));
    HERD_RETURN_IF_ERROR(Read(source, serve, "max_running", "serve.max_running", &c.max_running));
    HERD_RETURN_IF_ERROR(
        Read(source, serve, "max_body_bytes", "serve.max_body_bytes", &c.max_body_bytes));
    HERD_RETURN_IF_ERROR(
        Read(source, serve, "drain_timeout_s", "serve.drain_timeout_s", &c.drain_timeout_s));
    HERD_RETURN_IF_ERROR(
        Read(source, serve, "request_timeout_s", "serve.request_timeout_s", &c.request_timeout_s));
    HERD_RETURN_IF_ERROR(
        Read(source, serve, "prefix_caching", "serve.prefix_caching", &c.prefix_caching));
    HERD_RETURN_IF_ERROR(Read(source, serve, "detailed_expert_metrics",
                              "serve.detailed_expert_metrics", &c.detailed_expert_metrics));
    if (const YAML::Node rebalance = serve["rebalance"]) {
      RebalanceConfig& r = c.rebalance;
      HERD_RETURN_IF_ERROR(CheckYamlKeys(
          source, rebalance, "'serve.rebalance'",
          {"enabled", "window_steps", "threshold", "min_interval_s", "max_experts_moved"}));
      HERD_RETURN_IF_ERROR(
          Read(source, rebalance, "enabled", "serve.rebalance.enabled", &r.enabled));
      HERD_RETURN_IF_ERROR(
          Read(source, rebalance, "window_steps", "serve.rebalance.window_steps", &r.window_steps));
      HERD_RETURN_IF_ERROR(
          Read(source, rebalance, "threshold", "serve.rebalance.threshold", &r.threshold));
      HERD_RETURN_IF_ERROR(Read(source, rebalance, "min_interval_s",
                                "serve.rebalance.min_interval_s", &r.min_interval_s));
      HERD_RETURN_IF_ERROR(Read(source, rebalance, "max_experts_moved",
                                "serve.rebalance.max_experts_moved", &r.max_experts_moved));
    }
  }
  return config;
}

}  // namespace

bool IsKvCacheType(DType type) { return type == DType::kF32 || type == DType::kF16; }

absl::StatusOr<DType> ParseKvCacheType(const std::string& name) {
  const absl::StatusOr<DType> type = ParseDType(name);
  if (type.ok() && IsKvCacheType(*type)) return *type;
  return absl::InvalidArgumentError(
      absl::StrCat("a KV cache holds f32 or f16 elements, not '", name, "'"));
}

std::string KvCacheTypeName(DType type) { return absl::AsciiStrToLower(DTypeName(type)); }

absl::Status HerdConfig::Validate() const {
  if (engine.device != "cpu" && engine.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("engine.device must be cpu or cuda, got '", engine.device, "'"));
  }
  if (engine.threads < 0 || engine.threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine.threads must be in [0, 1024], got ", engine.threads));
  }
  if (engine.max_context_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine.max_context_tokens must be >= 0, got ", engine.max_context_tokens));
  }
  HERD_RETURN_IF_ERROR(serve.Validate());
  if (engine.device == "cuda" && serve.kv_cache_type != DType::kF32) {
    return absl::InvalidArgumentError(
        "serve.kv_cache_type f16 needs engine.device cpu: the CUDA engine's cache is F32");
  }
  LogLevel level;
  if (!ParseLogLevel(log_level, &level)) {
    return absl::InvalidArgumentError(
        absl::StrCat("log_level must be error, warn, info or debug, got '", log_level, "'"));
  }
  return absl::OkStatus();
}

absl::Status ServeConfig::Validate() const {
  if (host.empty()) return absl::InvalidArgumentError("serve.host must not be empty");
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("serve.port must be in [0, 65535], got ", port));
  }
  if (kv_cache_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("serve.kv_cache_bytes must be >= 0, got ", kv_cache_bytes));
  }
  if (!IsKvCacheType(kv_cache_type)) {
    return absl::InvalidArgumentError(absl::StrCat("serve.kv_cache_type must be f32 or f16, got ",
                                                   KvCacheTypeName(kv_cache_type)));
  }
  struct Positive {
    const char* name;
    int64_t value;
  };
  for (const Positive& p :
       {Positive{"kv_block_tokens", kv_block_tokens}, Positive{"max_step_tokens", max_step_tokens},
        Positive{"max_waiting", max_waiting}, Positive{"max_running", max_running},
        Positive{"max_body_bytes", max_body_bytes}}) {
    if (p.value < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("serve.", p.name, " must be >= 1, got ", p.value));
    }
  }
  if (!(drain_timeout_s >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("serve.drain_timeout_s must be >= 0, got ", drain_timeout_s));
  }
  if (!(request_timeout_s >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("serve.request_timeout_s must be >= 0, got ", request_timeout_s));
  }
  return rebalance.Validate();
}

absl::Status RebalanceConfig::Validate() const {
  if (window_steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("serve.rebalance.window_steps must be >= 1, got ", window_steps));
  }
  if (!(std::isfinite(threshold) && threshold >= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "serve.rebalance.threshold must be >= 1 (max/mean rank load; 1 is perfect), got ",
        threshold));
  }
  if (!(std::isfinite(min_interval_s) && min_interval_s >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("serve.rebalance.min_interval_s must be >= 0, got ", min_interval_s));
  }
  if (max_experts_moved < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "serve.rebalance.max_experts_moved must be >= 0 (0 = no limit), got ", max_experts_moved));
  }
  return absl::OkStatus();
}

absl::StatusOr<HerdConfig> ParseConfig(const std::string& yaml_text,
                                       const std::string& source_name) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ":", e.mark.line + 1, ": invalid YAML: ", e.msg));
  }
  HERD_ASSIGN_OR_RETURN(HerdConfig config, ParseRoot(source_name, root));
  absl::Status valid = config.Validate();
  if (!valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": ", valid.message()));
  }
  return config;
}

absl::StatusOr<HerdConfig> LoadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseConfig(buffer.str(), path);
}

}  // namespace herd
