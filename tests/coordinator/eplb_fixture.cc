#include "tests/coordinator/eplb_fixture.h"

#include <cstdio>
#include <cstdlib>

#include "coordinator/placement/gzip_file.h"
#include "nlohmann/json.hpp"
#include "tests/support/test_support.h"

namespace herd::testing {
namespace {

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "eplb_fixture: %s\n", message.c_str());
  std::abort();
}

std::vector<double> Doubles(const nlohmann::json& j) {
  std::vector<double> out;
  if (j.is_null()) return out;
  for (const auto& v : j) out.push_back(v.get<double>());
  return out;
}

}  // namespace

std::vector<std::string> FixtureTraceNames() {
  std::vector<std::string> names;
  for (const char* shape : {"mixtral8x7b", "olmoe", "qwen3moe30b", "dsv3"}) {
    for (const char* family : {"zipf0.5", "zipf1.0", "zipf1.5", "hot5-40", "drift"}) {
      names.push_back(std::string(shape) + "_" + family);
    }
  }
  return names;
}

ExpertLoadTrace ReadFixtureTrace(const std::string& name) {
  absl::StatusOr<ExpertLoadTrace> trace =
      ReadExpertLoadTrace(TestDataPath("placement/traces/" + name + ".json.gz"));
  if (!trace.ok()) Die(std::string(trace.status().message()));
  return *std::move(trace);
}

std::vector<EplbCase> ReadEplbCases(const std::string& name) {
  absl::StatusOr<std::string> text =
      ReadMaybeGzipFile(TestDataPath("placement/eplb/" + name + ".eplb.json.gz"));
  if (!text.ok()) Die(std::string(text.status().message()));
  const nlohmann::json root = nlohmann::json::parse(*text, nullptr, false);
  if (root.is_discarded()) Die("cannot parse the EPLB results of " + name);
  std::vector<EplbCase> cases;
  for (const auto& c : root.at("cases")) {
    EplbCase out;
    out.trace = name;
    out.case_id = c.at("case_id").get<std::string>();
    out.num_replicas = c.at("num_replicas").get<int>();
    out.num_groups = c.at("num_groups").get<int>();
    out.num_nodes = c.at("num_nodes").get<int>();
    out.num_gpus = c.at("num_gpus").get<int>();
    out.code_path = c.at("eplb_code_path").get<std::string>();
    for (const auto& s : c.at("snapshots")) {
      EplbSnapshot snap;
      snap.snapshot = s.at("snapshot").get<int>();
      snap.phy2log = s.at("phy2log").get<std::vector<std::vector<int32_t>>>();
      snap.eplb_balancedness = Doubles(s.at("eplb").at("balancedness").at("per_layer"));
      snap.lower_bound = Doubles(s.at("lower_bound").at("balancedness").at("per_layer"));
      if (!s.at("lower_bound_hier").is_null()) {
        snap.lower_bound_hier =
            Doubles(s.at("lower_bound_hier").at("balancedness").at("per_layer"));
      }
      snap.runtime_min_seconds = s.at("runtime_s").at("min").get<double>();
      snap.dup_same_gpu = s.at("dup_same_gpu").get<int>();
      out.snapshots.push_back(std::move(snap));
    }
    cases.push_back(std::move(out));
  }
  return cases;
}

ExpertPlacement EplbPlacement(const EplbCase& c, const EplbSnapshot& s, int num_experts) {
  std::vector<LayerPlacementSpec> layers;
  for (const auto& row : s.phy2log) {
    layers.push_back(LayerPlacementSpec::Uniform(c.num_gpus, c.num_replicas / c.num_gpus, row));
  }
  absl::StatusOr<ExpertPlacement> p =
      ExpertPlacement::Create(num_experts, c.num_gpus, 1, std::move(layers));
  if (!p.ok()) Die(std::string(p.status().message()));
  return *std::move(p);
}

}  // namespace herd::testing
