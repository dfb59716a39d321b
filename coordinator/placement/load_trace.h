// Expert-load traces: how many token-to-expert assignments every logical
// expert of every MoE layer received, in one or more snapshots.
//
// The file format is `moe-expert-load-trace/v1` (JSON, optionally gzip), the
// format of the placement fixtures (tests/data/placement/README.md):
//
//   {"format": "moe-expert-load-trace/v1", "name": "...",
//    "num_layers": L, "num_experts": E, "top_k": k, "num_groups": K,
//    "tokens_per_snapshot": 65536,         # or a list, one per snapshot
//    "num_snapshots": T,
//    "loads": [[[int] * E] * L] * T}       # loads[t][l][e]
//
// Expert e belongs to group e / (E / K). Other keys (shape, family, params,
// seed, ...) describe how a trace was made; they are ignored on read.
// `herd serve` and `herd generate` record their routing in this format with
// WriteExpertLoadTrace.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace herd {

struct ExpertLoadTrace {
  std::string name;   // free text, e.g. the model or workload
  std::string shape;  // free text, e.g. "dsv3"; may be empty
  int num_layers = 0;
  int num_experts = 0;
  int num_snapshots = 0;
  // Experts chosen per token; 0 when unknown.
  int top_k = 0;
  // Expert groups (DeepSeek-style group-limited routing); 1 when none.
  int num_groups = 1;
  // I64 [num_snapshots]: tokens routed in each snapshot; empty when unknown.
  std::vector<int64_t> tokens_per_snapshot;
  // I64 [num_snapshots, num_layers, num_experts]: assignments per expert.
  std::vector<int64_t> loads;

  int64_t Load(int snapshot, int layer, int expert) const {
    return loads[(static_cast<size_t>(snapshot) * num_layers + layer) * num_experts + expert];
  }
  // Checks dimensions, sizes, non-negative loads and that num_groups divides
  // num_experts. InvalidArgument naming the field.
  absl::Status Validate() const;
};

// Parses trace JSON; `source_name` prefixes errors. Malformed JSON, missing or
// mistyped keys and ragged or negative loads are InvalidArgument errors that
// name the offending key or index (e.g. "loads[0][3] has 255 entries").
absl::StatusOr<ExpertLoadTrace> ParseExpertLoadTrace(const std::string& json_text,
                                                     const std::string& source_name);
// Reads a trace file, plain or gzip-compressed.
absl::StatusOr<ExpertLoadTrace> ReadExpertLoadTrace(const std::string& path);

// The trace as `moe-expert-load-trace/v1` JSON text (one line per layer).
std::string ExpertLoadTraceToJson(const ExpertLoadTrace& trace);
// Validates and writes a trace (gzip-compressed when `path` ends in ".gz").
// The file appears atomically (temporary name, then rename).
absl::Status WriteExpertLoadTrace(const ExpertLoadTrace& trace, const std::string& path);

// Loads to plan from: F64 [num_layers, num_experts].
struct LoadMatrix {
  int num_layers = 0;
  int num_experts = 0;
  std::vector<double> values;

  const double* Layer(int layer) const {
    return values.data() + static_cast<size_t>(layer) * num_experts;
  }
  double* Layer(int layer) { return values.data() + static_cast<size_t>(layer) * num_experts; }
};

// The loads of one snapshot, or with snapshot = -1 the sum over all
// snapshots (the whole recording). OutOfRange for a snapshot not in the trace.
absl::StatusOr<LoadMatrix> TraceLoads(const ExpertLoadTrace& trace, int snapshot);

}  // namespace herd
