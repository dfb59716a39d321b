#include "coordinator/placement/plan_report.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/placement/lower_bound.h"
#include "core/human_format.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace herd {
namespace {

using Json = nlohmann::json;

Json ClusterJson(const ClusterShape& c, int num_experts) {
  return Json{{"num_nodes", c.num_nodes},
              {"ranks_per_node", c.ranks_per_node},
              {"num_ranks", c.num_ranks()},
              {"slots_per_rank", c.slots_per_rank},
              {"num_redundant", c.num_slots() - num_experts}};
}

std::string ClusterText(const ClusterShape& c, int num_experts) {
  return absl::StrFormat(
      "%d node%s x %d ranks = %d ranks, %d slots per rank (%d experts + %d "
      "redundant)",
      c.num_nodes, c.num_nodes == 1 ? "" : "s", c.ranks_per_node, c.num_ranks(), c.slots_per_rank,
      num_experts, c.num_slots() - num_experts);
}

const ImbalanceSummary& RelevantBound(const PlanReport& r) {
  return r.lower_bound_hierarchical ? *r.lower_bound_hierarchical : r.lower_bound;
}

}  // namespace

PlanReport BuildPlanReport(const PlanReportInput& input) {
  HERD_CHECK(input.loads != nullptr && input.plan != nullptr && input.before != nullptr);
  const LoadMatrix& loads = *input.loads;
  const ExpertPlacement& after = input.plan->placement;
  PlanReport r;
  r.input = input;
  r.before = ScoreImbalance(*input.before, loads, /*use_shares=*/true);
  r.after = ScoreImbalance(after, loads, /*use_shares=*/true);
  r.after_even_split = ScoreImbalance(after, loads, /*use_shares=*/false);
  r.node_after = ScoreNodeImbalance(after, loads, /*use_shares=*/true);
  const ClusterShape& c = input.cluster;
  r.lower_bound = LowerBoundSummary(loads, c.num_slots(), c.num_ranks());
  if (input.plan->mode == PlacementMode::kHierarchical && c.num_nodes > 1) {
    std::vector<double> per_layer(loads.num_layers);
    for (int l = 0; l < loads.num_layers; ++l) {
      const HierarchicalBound b =
          HierarchicalLowerBound(loads.Layer(l), loads.num_experts, input.options.num_groups,
                                 c.num_nodes, c.num_slots(), c.num_ranks());
      per_layer[l] = b.value;
      r.lower_bound_hierarchical_exact &= b.exact;
    }
    ImbalanceSummary s;
    s.per_layer = per_layer;
    s.mean = s.max = 0.0;
    for (double v : per_layer) {
      s.mean += v / per_layer.size();
      s.max = std::max(s.max, v);
    }
    r.lower_bound_hierarchical = s;
  }
  r.gap_to_lower_bound = r.after.mean / RelevantBound(r).mean - 1.0;
  r.moved = CountMovedReplicas(*input.before, after);
  r.duplicate_replicas = DuplicateReplicas(after);
  if (input.scratch != nullptr) {
    r.scratch_after = ScoreImbalance(*input.scratch, loads, /*use_shares=*/true);
    r.scratch_moved = CountMovedReplicas(*input.before, *input.scratch);
  }
  r.traffic = EstimateDispatchTraffic(after, loads, input.tokens, input.top_k);
  if (input.memory)
    r.bytes_per_rank = RankWeightBytes(loads.num_layers, c.slots_per_rank, *input.memory);
  return r;
}

std::string PlanReportText(const PlanReport& r) {
  const PlanReportInput& in = r.input;
  const LoadMatrix& loads = *in.loads;
  std::string out;
  absl::StrAppendFormat(
      &out, "trace        %s: %d layers x %d experts%s, %s\n", in.trace_name, loads.num_layers,
      loads.num_experts, in.top_k > 0 ? absl::StrCat(", top-", in.top_k) : "",
      in.snapshot >= 0        ? absl::StrCat("snapshot ", in.snapshot, " of ", in.num_snapshots)
      : in.num_snapshots == 1 ? std::string("1 snapshot")
                              : absl::StrCat("all ", in.num_snapshots, " snapshots summed"));
  absl::StrAppendFormat(&out, "cluster      %s\n", ClusterText(in.cluster, loads.num_experts));
  absl::StrAppendFormat(
      &out, "plan         %s mode%s, %s token split%s\n", PlacementModeName(in.plan->mode),
      in.plan->mode == PlacementMode::kHierarchical
          ? absl::StrCat(" (", in.options.num_groups, " groups kept inside their node)")
          : "",
      ReplicaSplitName(in.options.split),
      in.before_is_current ? absl::StrFormat(", migration-aware (tolerance %.1f%%)",
                                             100.0 * in.options.balance_tolerance)
                           : "");
  absl::StrAppend(&out, "imbalance    max/mean rank load, mean over layers (worst layer)\n");
  absl::StrAppendFormat(&out, "  before     %.4f (%.4f)  %s\n", r.before.mean, r.before.max,
                        in.before_is_current ? "current placement" : "contiguous, no replicas");
  absl::StrAppendFormat(&out, "  after      %.4f (%.4f)%s\n", r.after.mean, r.after.max,
                        in.options.split == ReplicaSplit::kWeighted
                            ? absl::StrFormat("  with the planned token shares; %.4f with an "
                                              "even split",
                                              r.after_even_split.mean)
                            : "");
  absl::StrAppendFormat(
      &out, "  bound      %.4f (global)%s\n", r.lower_bound.mean,
      r.lower_bound_hierarchical
          ? absl::StrFormat(", %.4f (groups kept in nodes%s)", r.lower_bound_hierarchical->mean,
                            r.lower_bound_hierarchical_exact ? "" : ", not exact")
          : "");
  absl::StrAppendFormat(&out, "  gap        %+.2f%% above the bound\n",
                        100.0 * r.gap_to_lower_bound);
  if (in.cluster.num_nodes > 1) {
    absl::StrAppendFormat(&out, "  nodes      %.4f (%.4f)  max/mean node load\n", r.node_after.mean,
                          r.node_after.max);
  }
  absl::StrAppendFormat(&out,
                        "moved        %d of %d replicas (%.1f%%) are new on their rank vs %s\n",
                        r.moved.moved, r.moved.total, 100.0 * r.moved.fraction(),
                        in.before_is_current ? "the current placement" : "the contiguous split");
  if (r.scratch_after && r.scratch_moved) {
    absl::StrAppendFormat(&out,
                          "  scratch    replanning from scratch: imbalance %.4f, %d moved "
                          "(%.1f%%)\n",
                          r.scratch_after->mean, r.scratch_moved->moved,
                          100.0 * r.scratch_moved->fraction());
  }
  absl::StrAppendFormat(&out, "duplicates   %d extra copies of an expert on a rank that has it\n",
                        r.duplicate_replicas);
  const double h = static_cast<double>(in.hidden_size) * in.activation_bytes;
  absl::StrAppendFormat(
      &out, "dispatch     per token, all layers: %.2f intra-node and %.2f inter-node copies%s\n",
      r.traffic.intra_node_copies_per_token, r.traffic.inter_node_copies_per_token,
      in.hidden_size > 0
          ? absl::StrFormat(" = %s intra, %s inter (x2 for dispatch + combine, %d x %d bytes)",
                            HumanBytes(2 * h * r.traffic.intra_node_copies_per_token),
                            HumanBytes(2 * h * r.traffic.inter_node_copies_per_token),
                            in.hidden_size, in.activation_bytes)
          : " (give --model or --hidden-size for bytes)");
  if (in.memory) {
    absl::StrAppendFormat(
        &out, "memory       %s per rank (%s dense + %d slots x %d layers x %s)%s\n",
        HumanBytes(static_cast<double>(r.bytes_per_rank)),
        HumanBytes(static_cast<double>(in.memory->dense_bytes)), in.cluster.slots_per_rank,
        loads.num_layers, HumanBytes(static_cast<double>(in.memory->expert_bytes)),
        in.memory_per_rank_bytes > 0
            ? absl::StrCat(" of ", HumanBytes(static_cast<double>(in.memory_per_rank_bytes)))
            : "");
  }
  absl::StrAppendFormat(&out, "runtime      %.4f s planning (%d thread%s)\n", in.runtime_seconds,
                        in.threads, in.threads == 1 ? "" : "s");
  if (in.recommendation) {
    const Recommendation& rec = *in.recommendation;
    absl::StrAppendFormat(&out, "recommend    target imbalance %.4f: ", in.recommend_target);
    if (rec.found) {
      absl::StrAppendFormat(&out, "%s\n", ClusterText(rec.best.cluster, loads.num_experts));
    } else {
      absl::StrAppend(&out, "no cluster tried meets it; the best found is reported above\n");
    }
    absl::StrAppend(&out, "  tried      nodes ranks slots redundant imbalance bound  bytes/rank\n");
    for (const ClusterCandidate& c : rec.tried) {
      absl::StrAppendFormat(&out, "             %5d %5d %5d %9d %9.4f %6.4f %s%s\n",
                            c.cluster.num_nodes, c.cluster.num_ranks(), c.cluster.slots_per_rank,
                            c.num_redundant, c.imbalance, c.lower_bound,
                            HumanBytes(static_cast<double>(c.bytes_per_rank)),
                            c.meets_target ? "  <- meets the target" : "");
    }
  }
  absl::StrAppend(&out, "per layer    before    after  even-split  bound\n");
  for (int l = 0; l < loads.num_layers; ++l) {
    absl::StrAppendFormat(&out, "  %5d    %8.4f %8.4f %8.4f    %.4f\n", l, r.before.per_layer[l],
                          r.after.per_layer[l], r.after_even_split.per_layer[l],
                          RelevantBound(r).per_layer[l]);
  }
  return out;
}

std::string PlanReportJson(const PlanReport& r) {
  const PlanReportInput& in = r.input;
  const LoadMatrix& loads = *in.loads;
  Json j;
  j["trace"] = in.trace_name;
  j["snapshot"] = in.snapshot < 0 ? Json("all") : Json(in.snapshot);
  j["num_snapshots"] = in.num_snapshots;
  j["num_layers"] = loads.num_layers;
  j["num_experts"] = loads.num_experts;
  j["cluster"] = ClusterJson(in.cluster, loads.num_experts);
  j["mode"] = PlacementModeName(in.plan->mode);
  j["num_groups"] = in.options.num_groups;
  j["split"] = ReplicaSplitName(in.options.split);
  j["migration_aware"] = in.before_is_current;
  if (in.before_is_current) j["balance_tolerance"] = in.options.balance_tolerance;
  j["imbalance_before"] = r.before.mean;
  j["imbalance_before_max"] = r.before.max;
  j["before"] = in.before_is_current ? "current" : "contiguous";
  j["imbalance_after"] = r.after.mean;
  j["imbalance_after_max"] = r.after.max;
  j["imbalance_after_even_split"] = r.after_even_split.mean;
  j["imbalance_after_even_split_max"] = r.after_even_split.max;
  j["node_imbalance_after"] = r.node_after.mean;
  j["lower_bound"] = r.lower_bound.mean;
  j["lower_bound_hierarchical"] =
      r.lower_bound_hierarchical ? Json(r.lower_bound_hierarchical->mean) : Json(nullptr);
  j["lower_bound_hierarchical_exact"] = r.lower_bound_hierarchical_exact;
  j["gap_to_lower_bound"] = r.gap_to_lower_bound;
  j["per_layer"] = {
      {"before", r.before.per_layer},
      {"after", r.after.per_layer},
      {"after_even_split", r.after_even_split.per_layer},
      {"lower_bound", r.lower_bound.per_layer},
      {"lower_bound_hierarchical",
       r.lower_bound_hierarchical ? Json(r.lower_bound_hierarchical->per_layer) : Json(nullptr)},
  };
  j["experts_moved"] = r.moved.moved;
  j["experts_moved_fraction"] = r.moved.fraction();
  j["replicas_total"] = r.moved.total;
  if (r.scratch_after && r.scratch_moved) {
    j["replan_from_scratch"] = {{"imbalance_after", r.scratch_after->mean},
                                {"experts_moved", r.scratch_moved->moved},
                                {"experts_moved_fraction", r.scratch_moved->fraction()}};
  }
  j["duplicate_replicas"] = r.duplicate_replicas;
  Json traffic = {{"intra_node_copies_per_token", r.traffic.intra_node_copies_per_token},
                  {"inter_node_copies_per_token", r.traffic.inter_node_copies_per_token},
                  {"hidden_size", in.hidden_size > 0 ? Json(in.hidden_size) : Json(nullptr)},
                  {"activation_bytes", in.activation_bytes}};
  const double h = static_cast<double>(in.hidden_size) * in.activation_bytes;
  traffic["intra_node_bytes_per_token"] =
      in.hidden_size > 0 ? Json(2 * h * r.traffic.intra_node_copies_per_token) : Json(nullptr);
  traffic["inter_node_bytes_per_token"] =
      in.hidden_size > 0 ? Json(2 * h * r.traffic.inter_node_copies_per_token) : Json(nullptr);
  j["dispatch"] = traffic;
  if (in.memory) {
    j["memory"] = {{"bytes_per_rank", r.bytes_per_rank},
                   {"dense_bytes", in.memory->dense_bytes},
                   {"expert_bytes", in.memory->expert_bytes},
                   {"capacity_bytes",
                    in.memory_per_rank_bytes > 0 ? Json(in.memory_per_rank_bytes) : Json(nullptr)}};
  } else {
    j["memory"] = nullptr;
  }
  j["runtime_seconds"] = in.runtime_seconds;
  j["threads"] = in.threads;
  if (in.recommendation) {
    const Recommendation& rec = *in.recommendation;
    Json tried = Json::array();
    for (const ClusterCandidate& c : rec.tried) {
      Json t = ClusterJson(c.cluster, loads.num_experts);
      t["imbalance"] = c.imbalance;
      t["lower_bound"] = c.lower_bound;
      t["bytes_per_rank"] = c.bytes_per_rank;
      t["meets_target"] = c.meets_target;
      tried.push_back(t);
    }
    j["recommend"] = {
        {"target", in.recommend_target},
        {"found", rec.found},
        {"cluster", rec.found ? ClusterJson(rec.best.cluster, loads.num_experts) : Json(nullptr)},
        {"tried", tried}};
  }
  return j.dump(2) + "\n";
}

}  // namespace herd
