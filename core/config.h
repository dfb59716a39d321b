// The typed Herd configuration, loaded from YAML.
//
// One file configures a process: which model, how the engine runs, how much
// it logs. Every field has a default and a reason. Unknown keys are errors (a
// typo must not be silently ignored), as are wrong types; messages name the
// file, line and key. Command-line flags override file values in tools/.
//
//   model: /models/mixtral.gguf
//   engine:
//     threads: 2
//     max_context_tokens: 4096
//   log_level: info
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace herd {

struct EngineConfig {
  // Worker threads for kernels, the calling thread included. 0 = all cores
  // this process may run on; decode at batch 1 is split across them.
  int threads = 0;
  // Tokens of context a sequence may hold (prompt + generated). 0 = the
  // model's own context length. Sizes the KV cache.
  int64_t max_context_tokens = 0;
};

struct HerdConfig {
  // Path to a GGUF file or a Hugging Face directory (config.json + safetensors).
  std::string model;
  EngineConfig engine;
  // error | warn | info | debug; HERD_LOG_LEVEL in the environment wins.
  std::string log_level = "info";

  // Checks ranges and enumerations; InvalidArgument naming the field.
  absl::Status Validate() const;
};

// Parses YAML text; `source_name` (a path) appears in error messages.
absl::StatusOr<HerdConfig> ParseConfig(const std::string& yaml_text,
                                       const std::string& source_name);
// Reads and parses a file; NotFound if it cannot be read. Runs Validate().
absl::StatusOr<HerdConfig> LoadConfigFile(const std::string& path);

}  // namespace herd
