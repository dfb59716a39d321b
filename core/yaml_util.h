// Helpers for core's YAML readers (the config and the placement file): where
// a node is, and strict key checking, so every YAML error names file, line
// and key the same way. Internal to core/ (yaml-cpp is a private dependency).
#pragma once

#include <set>
#include <string>

#include "absl/status/status.h"
#include "yaml-cpp/yaml.h"

namespace herd {

// "file:line" of `node` (1-based), or `source` alone when the line is unknown.
std::string YamlLocation(const std::string& source, const YAML::Node& node);

// InvalidArgument unless `map` is a mapping whose keys are all in `known`:
// "<file:line>: <what> must be a mapping" or "<file:line>: unknown key 'k' in
// <what> (expected one of: ...)".
absl::Status CheckYamlKeys(const std::string& source, const YAML::Node& map,
                           const std::string& what, const std::set<std::string>& known);

}  // namespace herd
