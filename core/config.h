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
//   serve:
//     port: 8000
//     kv_cache_bytes: 1073741824
//     kv_cache_type: f16
//     rebalance: {enabled: true, window_steps: 500, threshold: 1.25}
//   log_level: info
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/dtype.h"

namespace herd {

// Whether a KV cache may hold `type` elements: F32 or F16.
bool IsKvCacheType(DType type);
// "f32" or "f16" (any case): the element types a KV cache may hold
// (serve.kv_cache_type, --kv-cache-type); InvalidArgument naming them
// otherwise.
absl::StatusOr<DType> ParseKvCacheType(const std::string& name);
// The name ParseKvCacheType reads for `type` ("f32", "f16").
std::string KvCacheTypeName(DType type);

struct EngineConfig {
  // Where the engine runs: "cpu" or "cuda" (the current GPU; docs/gpu.md).
  std::string device = "cpu";
  // Worker threads for kernels, the calling thread included. 0 = all cores
  // this process may run on; decode at batch 1 is split across them.
  int threads = 0;
  // Tokens of context a sequence may hold (prompt + generated). 0 = the
  // model's own context length. Sizes the KV cache.
  int64_t max_context_tokens = 0;
};

// `herd serve --rebalance`: online expert rebalancing (docs/placement.md).
// The coordinator sums the tokens routed to each expert over the last
// window_steps steps; when the current placement's imbalance over them (max /
// mean rank load, mean over layers) exceeds `threshold`, it re-plans in
// migration-aware mode, the ranks load the new experts in the background, and
// all switch at one step boundary.
struct RebalanceConfig {
  bool enabled = false;
  // Steps of expert load the trigger and the planner look at; no rebalance
  // before the window is full. Long enough to average over many requests,
  // short enough to follow a change of traffic.
  int64_t window_steps = 500;
  // Imbalance (>= 1; 1 is perfect) above which a rebalance is planned.
  double threshold = 1.25;
  // Seconds from startup, and from the end of one rebalance (or a plan that
  // did not help), before the next may start: moving experts costs memory
  // bandwidth, so traffic swings must not make the placement thrash.
  double min_interval_s = 60;
  // Most expert replicas one rebalance may copy onto ranks (summed over
  // layers; the layers that gain most per move go first); 0 = no limit.
  int64_t max_experts_moved = 0;

  // InvalidArgument naming the field (serve.rebalance.*) for window_steps < 1,
  // a threshold that is not finite and >= 1, min_interval_s < 0 or not
  // finite, or max_experts_moved < 0.
  absl::Status Validate() const;
};

// `herd serve`: the HTTP server, the request queue and the paged KV cache.
struct ServeConfig {
  // Loopback by default: exposing the server is a decision, not an accident.
  std::string host = "127.0.0.1";
  int port = 8000;
  // When set, /v1/* needs `Authorization: Bearer <api_key>`.
  std::string api_key;
  // The name /v1/models reports and requests may name; "" = the model
  // file's name.
  std::string model_name;
  // KV cache of each rank, in bytes; 0 = room for max_running sequences of
  // the full context, capped at a quarter of RAM.
  int64_t kv_cache_bytes = 0;
  int64_t kv_block_tokens = 16;
  // Element type of the KV cache: F32, or F16 (CPU engine only): half the
  // bytes per token, so twice the tokens in the same kv_cache_bytes.
  DType kv_cache_type = DType::kF32;
  // Tokens one rank processes per step (decodes + chunked prefill).
  int64_t max_step_tokens = 256;
  // Requests waiting to start beyond which new ones get 429.
  int64_t max_waiting = 256;
  // Sequences running at once on one rank.
  int64_t max_running = 64;
  // Largest request body accepted (413 beyond).
  int64_t max_body_bytes = 1 << 20;
  // SIGTERM: seconds in-flight requests get to finish before they are cancelled.
  double drain_timeout_s = 30;
  // Per-request deadline in seconds; 0 = none.
  double request_timeout_s = 0;
  // herd:expert_tokens_total{layer,expert} (layers x experts series).
  bool detailed_expert_metrics = false;
  // Reuse the keys and values of prompts' leading blocks a rank already
  // computed (automatic prefix caching; ExecutorOptions::prefix_caching).
  bool prefix_caching = true;
  RebalanceConfig rebalance;

  // Checks ranges; InvalidArgument naming the field.
  absl::Status Validate() const;
};

struct HerdConfig {
  // Path to a GGUF file or a Hugging Face directory (config.json + safetensors).
  std::string model;
  EngineConfig engine;
  ServeConfig serve;
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
