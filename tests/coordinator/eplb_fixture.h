// Reads the placement fixtures in tests/data/placement: the load traces and
// DeepSeek EPLB's placements, scores and runtimes for every cluster case.
#pragma once

#include <string>
#include <vector>

#include "coordinator/placement/load_trace.h"
#include "core/placement.h"

namespace herd::testing {

struct EplbSnapshot {
  int snapshot = 0;
  // EPLB's physical_to_logical_map: I32 [num_layers][num_replicas].
  std::vector<std::vector<int32_t>> phy2log;
  std::vector<double> eplb_balancedness;  // per layer, as recorded
  std::vector<double> lower_bound;        // per layer, as recorded
  std::vector<double> lower_bound_hier;   // per layer; empty when null
  double runtime_min_seconds = 0.0;
  int dup_same_gpu = 0;
};

struct EplbCase {
  std::string trace;
  std::string case_id;  // e.g. "R288_g8_n4_G32"
  int num_replicas = 0, num_groups = 0, num_nodes = 0, num_gpus = 0;
  std::string code_path;  // "hierarchical", "global", ...
  std::vector<EplbSnapshot> snapshots;

  bool hierarchical() const { return code_path == "hierarchical"; }
};

// Every trace name in the fixtures (traces/<name>.json.gz).
std::vector<std::string> FixtureTraceNames();
// The trace; aborts the test binary with a message if it cannot be read.
ExpertLoadTrace ReadFixtureTrace(const std::string& name);
// EPLB's cases for a trace (eplb/<name>.eplb.json.gz).
std::vector<EplbCase> ReadEplbCases(const std::string& name);
// EPLB's map of one snapshot as an ExpertPlacement (G ranks, R/G slots each).
ExpertPlacement EplbPlacement(const EplbCase& c, const EplbSnapshot& s, int num_experts);

}  // namespace herd::testing
