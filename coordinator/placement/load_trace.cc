#include "coordinator/placement/load_trace.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "coordinator/placement/gzip_file.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace herd {
namespace {

constexpr char kFormat[] = "moe-expert-load-trace/v1";
// Bounds that keep a malformed header from asking for absurd allocations.
constexpr int kMaxLayers = 4096;
constexpr int kMaxExperts = 1 << 16;
constexpr int kMaxSnapshots = 1 << 20;

using Json = nlohmann::json;

absl::Status Bad(const std::string& source, const std::string& message) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
}

absl::Status ReadInt(const std::string& source, const Json& root, const char* key, bool required,
                     int64_t min_value, int64_t max_value, int64_t* out) {
  const auto it = root.find(key);
  if (it == root.end() || it->is_null()) {
    if (required) return Bad(source, absl::StrCat("missing key '", key, "'"));
    return absl::OkStatus();
  }
  if (!it->is_number_integer()) {
    return Bad(source, absl::StrCat("'", key, "' must be an integer, got ", it->dump()));
  }
  const int64_t v = it->get<int64_t>();
  if (v < min_value || v > max_value) {
    return Bad(source,
               absl::StrCat("'", key, "' = ", v, " is outside [", min_value, ", ", max_value, "]"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::StatusOr<ExpertLoadTrace> ParseRoot(const std::string& source, const Json& root) {
  if (!root.is_object()) return Bad(source, "a trace must be a JSON object");
  const auto format = root.find("format");
  if (format == root.end() || !format->is_string()) {
    return Bad(source, absl::StrCat("missing 'format' (expected \"", kFormat, "\")"));
  }
  if (format->get<std::string>() != kFormat) {
    return Bad(source, absl::StrCat("format is \"", format->get<std::string>(), "\", expected \"",
                                    kFormat, "\""));
  }
  ExpertLoadTrace trace;
  for (const char* key : {"name", "shape"}) {
    const auto it = root.find(key);
    if (it == root.end() || it->is_null()) continue;
    if (!it->is_string()) return Bad(source, absl::StrCat("'", key, "' must be a string"));
    (std::string(key) == "name" ? trace.name : trace.shape) = it->get<std::string>();
  }
  int64_t num_layers = 0, num_experts = 0, num_snapshots = 0, top_k = 0, num_groups = 1;
  HERD_RETURN_IF_ERROR(ReadInt(source, root, "num_layers", true, 1, kMaxLayers, &num_layers));
  HERD_RETURN_IF_ERROR(ReadInt(source, root, "num_experts", true, 1, kMaxExperts, &num_experts));
  HERD_RETURN_IF_ERROR(
      ReadInt(source, root, "num_snapshots", false, 1, kMaxSnapshots, &num_snapshots));
  HERD_RETURN_IF_ERROR(ReadInt(source, root, "top_k", false, 0, num_experts, &top_k));
  HERD_RETURN_IF_ERROR(ReadInt(source, root, "num_groups", false, 1, num_experts, &num_groups));
  trace.num_layers = static_cast<int>(num_layers);
  trace.num_experts = static_cast<int>(num_experts);
  trace.top_k = static_cast<int>(top_k);
  trace.num_groups = static_cast<int>(num_groups);

  const auto loads = root.find("loads");
  if (loads == root.end()) return Bad(source, "missing key 'loads'");
  if (!loads->is_array() || loads->empty()) {
    return Bad(source, "'loads' must be a non-empty list [snapshot][layer][expert]");
  }
  if (num_snapshots == 0) num_snapshots = static_cast<int64_t>(loads->size());
  if (static_cast<int64_t>(loads->size()) != num_snapshots) {
    return Bad(source, absl::StrCat("'loads' has ", loads->size(),
                                    " snapshots, expected num_snapshots = ", num_snapshots));
  }
  trace.num_snapshots = static_cast<int>(num_snapshots);
  trace.loads.reserve(static_cast<size_t>(num_snapshots) * num_layers * num_experts);
  for (int64_t t = 0; t < num_snapshots; ++t) {
    const Json& snapshot = (*loads)[t];
    if (!snapshot.is_array() || static_cast<int64_t>(snapshot.size()) != num_layers) {
      return Bad(source,
                 absl::StrCat("loads[", t, "] must be a list of num_layers = ", num_layers,
                              " layers, got ",
                              snapshot.is_array() ? absl::StrCat(snapshot.size(), " entries")
                                                  : snapshot.type_name()));
    }
    for (int64_t l = 0; l < num_layers; ++l) {
      const Json& layer = snapshot[l];
      if (!layer.is_array() || static_cast<int64_t>(layer.size()) != num_experts) {
        return Bad(source, absl::StrCat("loads[", t, "][", l, "] must be a list of num_experts = ",
                                        num_experts, " counts, got ",
                                        layer.is_array() ? absl::StrCat(layer.size(), " entries")
                                                         : layer.type_name()));
      }
      for (int64_t e = 0; e < num_experts; ++e) {
        const Json& v = layer[e];
        if (!v.is_number_integer()) {
          return Bad(source, absl::StrCat("loads[", t, "][", l, "][", e,
                                          "] must be an integer count, got ", v.dump()));
        }
        const int64_t count = v.get<int64_t>();
        if (count < 0) {
          return Bad(source,
                     absl::StrCat("loads[", t, "][", l, "][", e, "] = ", count, " is negative"));
        }
        trace.loads.push_back(count);
      }
    }
  }
  if (const auto tokens = root.find("tokens_per_snapshot");
      tokens != root.end() && !tokens->is_null()) {
    if (tokens->is_number_integer()) {
      if (tokens->get<int64_t>() < 0) return Bad(source, "'tokens_per_snapshot' is negative");
      trace.tokens_per_snapshot.assign(num_snapshots, tokens->get<int64_t>());
    } else if (tokens->is_array() && static_cast<int64_t>(tokens->size()) == num_snapshots) {
      for (const Json& v : *tokens) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0) {
          return Bad(source, "'tokens_per_snapshot' entries must be non-negative integers");
        }
        trace.tokens_per_snapshot.push_back(v.get<int64_t>());
      }
    } else {
      return Bad(source, absl::StrCat("'tokens_per_snapshot' must be an integer or a list of ",
                                      num_snapshots, " integers"));
    }
  }
  absl::Status valid = trace.Validate();
  if (!valid.ok()) return Bad(source, std::string(valid.message()));
  return trace;
}

}  // namespace

absl::Status ExpertLoadTrace::Validate() const {
  if (num_layers <= 0 || num_experts <= 0 || num_snapshots <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_layers (", num_layers, "), num_experts (",
                                                   num_experts, ") and num_snapshots (",
                                                   num_snapshots, ") must be > 0"));
  }
  if (num_groups <= 0 || num_experts % num_groups != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_groups (", num_groups, ") must divide num_experts (", num_experts, ")"));
  }
  if (top_k < 0 || top_k > num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k (", top_k, ") must be in [0, num_experts = ", num_experts, "]"));
  }
  const size_t expected = static_cast<size_t>(num_snapshots) * num_layers * num_experts;
  if (loads.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("loads has ", loads.size(),
                                                   " values, expected num_snapshots x "
                                                   "num_layers x num_experts = ",
                                                   expected));
  }
  for (size_t i = 0; i < loads.size(); ++i) {
    if (loads[i] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("load ", i, " is negative: ", loads[i]));
    }
  }
  if (!tokens_per_snapshot.empty() &&
      tokens_per_snapshot.size() != static_cast<size_t>(num_snapshots)) {
    return absl::InvalidArgumentError(absl::StrCat("tokens_per_snapshot has ",
                                                   tokens_per_snapshot.size(),
                                                   " entries, expected ", num_snapshots));
  }
  return absl::OkStatus();
}

absl::StatusOr<ExpertLoadTrace> ParseExpertLoadTrace(const std::string& json_text,
                                                     const std::string& source_name) {
  Json root;
  try {
    root = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return Bad(source_name, absl::StrCat("not valid JSON: ", e.what()));
  }
  try {
    return ParseRoot(source_name, root);
  } catch (const Json::exception& e) {
    return Bad(source_name, absl::StrCat("unexpected JSON structure: ", e.what()));
  }
}

absl::StatusOr<ExpertLoadTrace> ReadExpertLoadTrace(const std::string& path) {
  HERD_ASSIGN_OR_RETURN(std::string text, ReadMaybeGzipFile(path));
  return ParseExpertLoadTrace(text, path);
}

std::string ExpertLoadTraceToJson(const ExpertLoadTrace& trace) {
  std::string out = "{";
  absl::StrAppend(&out, "\"format\": \"", kFormat, "\",\n");
  absl::StrAppend(&out, " \"name\": ", Json(trace.name).dump(), ",\n");
  if (!trace.shape.empty()) absl::StrAppend(&out, " \"shape\": ", Json(trace.shape).dump(), ",\n");
  absl::StrAppend(&out, " \"num_layers\": ", trace.num_layers,
                  ", \"num_experts\": ", trace.num_experts, ", \"top_k\": ", trace.top_k,
                  ", \"num_groups\": ", trace.num_groups, ",\n");
  absl::StrAppend(&out,
                  " \"group_of_expert\": \"expert e belongs to group e // (num_experts // "
                  "num_groups)\",\n");
  if (!trace.tokens_per_snapshot.empty()) {
    bool uniform = true;
    for (int64_t t : trace.tokens_per_snapshot) uniform &= t == trace.tokens_per_snapshot[0];
    absl::StrAppend(&out, " \"tokens_per_snapshot\": ",
                    uniform ? Json(trace.tokens_per_snapshot[0]).dump()
                            : Json(trace.tokens_per_snapshot).dump(),
                    ",\n");
  }
  absl::StrAppend(&out, " \"num_snapshots\": ", trace.num_snapshots, ",\n \"loads\": [");
  for (int t = 0; t < trace.num_snapshots; ++t) {
    absl::StrAppend(&out, t ? ",\n  [" : "\n  [");
    for (int l = 0; l < trace.num_layers; ++l) {
      absl::StrAppend(&out, l ? ",\n   [" : "\n   [");
      for (int e = 0; e < trace.num_experts; ++e) {
        absl::StrAppend(&out, e ? "," : "", trace.Load(t, l, e));
      }
      absl::StrAppend(&out, "]");
    }
    absl::StrAppend(&out, "]");
  }
  absl::StrAppend(&out, "]}\n");
  return out;
}

absl::Status WriteExpertLoadTrace(const ExpertLoadTrace& trace, const std::string& path) {
  HERD_RETURN_IF_ERROR(trace.Validate());
  return WriteFileAtomically(path, ExpertLoadTraceToJson(trace), absl::EndsWith(path, ".gz"));
}

absl::StatusOr<LoadMatrix> TraceLoads(const ExpertLoadTrace& trace, int snapshot) {
  if (snapshot < -1 || snapshot >= trace.num_snapshots) {
    return absl::OutOfRangeError(absl::StrCat(
        "snapshot ", snapshot, " is not in the trace (it has ", trace.num_snapshots, " snapshot",
        trace.num_snapshots == 1 ? "" : "s", ": 0..", trace.num_snapshots - 1, ")"));
  }
  LoadMatrix m;
  m.num_layers = trace.num_layers;
  m.num_experts = trace.num_experts;
  m.values.assign(static_cast<size_t>(trace.num_layers) * trace.num_experts, 0.0);
  const int first = snapshot < 0 ? 0 : snapshot;
  const int last = snapshot < 0 ? trace.num_snapshots - 1 : snapshot;
  for (int t = first; t <= last; ++t) {
    for (int l = 0; l < trace.num_layers; ++l) {
      double* row = m.Layer(l);
      for (int e = 0; e < trace.num_experts; ++e)
        row[e] += static_cast<double>(trace.Load(t, l, e));
    }
  }
  return m;
}

}  // namespace herd
