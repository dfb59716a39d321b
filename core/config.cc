#include "core/config.h"

#include <fstream>
#include <sstream>

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
      CheckYamlKeys(source, root, "the top level", {"model", "engine", "log_level"}));
  HERD_RETURN_IF_ERROR(Read(source, root, "model", "model", &config.model));
  HERD_RETURN_IF_ERROR(Read(source, root, "log_level", "log_level", &config.log_level));
  if (const YAML::Node engine = root["engine"]) {
    HERD_RETURN_IF_ERROR(
        CheckYamlKeys(source, engine, "'engine'", {"threads", "max_context_tokens"}));
    HERD_RETURN_IF_ERROR(Read(source, engine, "threads", "engine.threads", &config.engine.threads));
    HERD_RETURN_IF_ERROR(Read(source, engine, "max_context_tokens", "engine.max_context_tokens",
                              &config.engine.max_context_tokens));
  }
  return config;
}

}  // namespace

absl::Status HerdConfig::Validate() const {
  if (engine.threads < 0 || engine.threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine.threads must be in [0, 1024], got ", engine.threads));
  }
  if (engine.max_context_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("engine.max_context_tokens must be >= 0, got ", engine.max_context_tokens));
  }
  LogLevel level;
  if (!ParseLogLevel(log_level, &level)) {
    return absl::InvalidArgumentError(
        absl::StrCat("log_level must be error, warn, info or debug, got '", log_level, "'"));
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
