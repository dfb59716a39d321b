#include "core/yaml_util.h"

#include "absl/strings/str_cat.h"

namespace herd {

std::string YamlLocation(const std::string& source, const YAML::Node& node) {
  const YAML::Mark mark = node.Mark();
  if (mark.line < 0) return source;
  return absl::StrCat(source, ":", mark.line + 1);
}

absl::Status CheckYamlKeys(const std::string& source, const YAML::Node& map,
                           const std::string& what, const std::set<std::string>& known) {
  if (!map.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(YamlLocation(source, map), ": ", what, " must be a mapping"));
  }
  for (const auto& entry : map) {
    const std::string key = entry.first.as<std::string>();
    if (!known.count(key)) {
      std::string expected;
      for (const auto& k : known) absl::StrAppend(&expected, expected.empty() ? "" : ", ", k);
      return absl::InvalidArgumentError(absl::StrCat(YamlLocation(source, entry.first),
                                                     ": unknown key '", key, "' in ", what,
                                                     " (expected one of: ", expected, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace herd
