// herd plan: expert placement from a routing trace (coordinator/placement).

#include <chrono>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/placement/gzip_file.h"
#include "coordinator/placement/heatmap_svg.h"
#include "coordinator/placement/load_trace.h"
#include "coordinator/placement/memory_model.h"
#include "coordinator/placement/metrics.h"
#include "coordinator/placement/plan_report.h"
#include "coordinator/placement/planner.h"
#include "coordinator/placement/recommend.h"
#include "core/placement.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "model/model_loader.h"
#include "tools/commands.h"
#include "tools/flags.h"
#include "tools/progress_bar.h"

namespace herd {
namespace {

const std::vector<FlagSpec> kPlanFlags = {
    {"trace", true, "expert-load trace, moe-expert-load-trace/v1 JSON (.gz ok) (required)"},
    {"snapshot", true, "plan for this snapshot of a multi-snapshot trace (default: all summed)"},
    {"nodes", true, "nodes in the cluster (default 1)"},
    {"ranks-per-node", true, "ranks (GPUs) per node (default 8)"},
    {"redundant", true, "redundant expert slots per layer, over the whole cluster (default 0)"},
    {"groups", true, "expert groups (default: the trace's num_groups)"},
    {"mode", true, "auto | global | hierarchical (default auto)"},
    {"split", true, "weighted | even: token split over replicas (default weighted)"},
    {"current", true, "the deployed placement: plan migration-aware from it"},
    {"balance-tolerance", true,
     "migration-aware: accepted imbalance loss, relative (default 0.02)"},
    {"model", true, "model (GGUF or HF dir): expert and dense bytes, hidden size"},
    {"expert-bytes", true, "bytes of one expert of one layer (instead of --model)"},
    {"dense-bytes", true, "bytes every rank holds besides experts (with --expert-bytes)"},
    {"memory-per-rank", true, "weight memory per rank, e.g. 80GiB; too small is an error"},
    {"hidden-size", true, "hidden size for dispatch bytes (default: from --model)"},
    {"activation-bytes", true, "bytes per dispatched activation value (default 2, bf16)"},
    {"out", true, "write the placement here (.yaml, or .json)"},
    {"svg", true, "write a heatmap of rank load per layer, before and after"},
    {"json", false, "print one JSON object instead of text"},
    {"threads", true, "planning threads (default: all cores)"},
    {"repeat", true, "plan this many times and report the fastest runtime (default 1)"},
    {"recommend", false, "search the cheapest cluster (nodes, redundancy) meeting --target"},
    {"target", true, "--recommend: largest acceptable imbalance, max/mean (default 1.05)"},
    {"max-nodes", true, "--recommend: most nodes to try (default 64)"},
    {"min-ranks", true, "--recommend: fewest ranks to consider (default 1)"},
    {"max-redundant-per-rank", true, "--recommend: most redundant slots per rank (default 8)"},
    {"help", false, "show this help"},
};

// "80GiB", "1.5e9", "512MiB", "80GB": bytes.
absl::StatusOr<int64_t> ParseBytes(const std::string& flag, const std::string& text) {
  struct Unit {
    const char* suffix;
    double scale;
  };
  const Unit units[] = {{"TiB", 1099511627776.0},
                        {"GiB", 1073741824.0},
                        {"MiB", 1048576.0},
                        {"KiB", 1024.0},
                        {"TB", 1e12},
                        {"GB", 1e9},
                        {"MB", 1e6},
                        {"KB", 1e3},
                        {"B", 1.0}};
  std::string number = text;
  double scale = 1.0;
  for (const Unit& u : units) {
    if (absl::EndsWithIgnoreCase(text, u.suffix)) {
      number = text.substr(0, text.size() - std::string(u.suffix).size());
      scale = u.scale;
      break;
    }
  }
  double value = 0.0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(number), &value) || !(value >= 0.0) ||
      value * scale > 9.0e18) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, " must be a byte count such as 85899345920, 80GiB or 80GB, got '", text, "'"));
  }
  return static_cast<int64_t>(value * scale);
}

absl::StatusOr<int> GetIntFlag(const ParsedFlags& flags, const std::string& name, int fallback,
                               int min_value) {
  HERD_ASSIGN_OR_RETURN(int64_t v, flags.GetInt(name, fallback));
  if (v < min_value || v > (1 << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, " must be an integer >= ", min_value, ", got ", v));
  }
  return static_cast<int>(v);
}

std::vector<HeatmapPanel> Panels(const LoadMatrix& loads, const ExpertPlacement& before,
                                 const std::string& before_title, const ExpertPlacement& after,
                                 const std::string& after_title) {
  std::vector<HeatmapPanel> panels;
  for (const auto& [placement, title] :
       {std::pair<const ExpertPlacement*, std::string>{&before, before_title},
        std::pair<const ExpertPlacement*, std::string>{&after, after_title}}) {
    HeatmapPanel p;
    p.title = title;
    p.num_layers = loads.num_layers;
    p.num_ranks = placement->num_ranks();
    for (int l = 0; l < loads.num_layers; ++l) {
      const std::vector<double> rank = RankLoads(*placement, l, loads.Layer(l), true);
      double total = 0.0;
      for (double v : rank) total += v;
      const double mean = total / rank.size();
      for (double v : rank) p.ratio.push_back(mean > 0.0 ? v / mean : 1.0);
    }
    panels.push_back(std::move(p));
  }
  return panels;
}

}  // namespace

absl::Status RunPlanCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kPlanFlags));
  if (flags.Has("help")) {
    out << "usage: herd plan --trace TRACE [--nodes N --ranks-per-node R --redundant K]\n"
           "         [--groups G --mode auto|global|hierarchical] [--split weighted|even]\n"
           "         [--model PATH | --expert-bytes B --dense-bytes B] [--memory-per-rank BYTES]\n"
           "         [--current PLACEMENT] --out placement.yaml [--svg heatmap.svg] [--json]\n"
           "         [--snapshot T] [--recommend --target 1.05]\n"
        << FlagsHelp(kPlanFlags);
    return absl::OkStatus();
  }
  if (!flags.Has("trace")) return absl::InvalidArgumentError("--trace is required");
  const bool recommend = flags.Has("recommend");
  if (!flags.Has("out") && !recommend) {
    return absl::InvalidArgumentError("--out is required (where to write the placement)");
  }
  HERD_ASSIGN_OR_RETURN(ExpertLoadTrace trace, ReadExpertLoadTrace(flags.GetString("trace")));
  HERD_ASSIGN_OR_RETURN(int64_t snapshot, flags.GetInt("snapshot", -1));
  if (flags.Has("snapshot") && (snapshot < 0 || snapshot >= trace.num_snapshots)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--snapshot ", snapshot, " is not in ", flags.GetString("trace"), " (it has ",
                     trace.num_snapshots, " snapshots: 0..", trace.num_snapshots - 1, ")"));
  }
  HERD_ASSIGN_OR_RETURN(LoadMatrix loads, TraceLoads(trace, static_cast<int>(snapshot)));
  const int E = trace.num_experts;

  ClusterShape cluster;
  HERD_ASSIGN_OR_RETURN(cluster.num_nodes, GetIntFlag(flags, "nodes", 1, 1));
  HERD_ASSIGN_OR_RETURN(cluster.ranks_per_node, GetIntFlag(flags, "ranks-per-node", 8, 1));
  HERD_ASSIGN_OR_RETURN(int redundant, GetIntFlag(flags, "redundant", 0, 0));

  PlannerOptions options;
  HERD_ASSIGN_OR_RETURN(options.num_groups, GetIntFlag(flags, "groups", trace.num_groups, 1));
  HERD_ASSIGN_OR_RETURN(options.mode, ParsePlacementMode(flags.GetString("mode", "auto")));
  HERD_ASSIGN_OR_RETURN(options.split, ParseReplicaSplit(flags.GetString("split", "weighted")));
  HERD_ASSIGN_OR_RETURN(options.balance_tolerance, flags.GetDouble("balance-tolerance", 0.02));
  HERD_ASSIGN_OR_RETURN(options.num_threads,
                        GetIntFlag(flags, "threads", ThreadPool::DefaultNumThreads(), 1));
  if (E % options.num_groups != 0) {
    return absl::InvalidArgumentError(absl::StrCat("--groups ", options.num_groups,
                                                   " does not divide the trace's ", E, " experts"));
  }

  // Memory and hidden size: from the model, or given directly.
  std::optional<MemoryModel> memory;
  int64_t hidden_size = 0;
  if (flags.Has("model")) {
    if (flags.Has("expert-bytes") || flags.Has("dense-bytes")) {
      return absl::InvalidArgumentError("give --model or --expert-bytes/--dense-bytes, not both");
    }
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadModel(flags.GetString("model")));
    if (model->spec.num_experts != E || model->spec.num_layers != trace.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("the trace has ", trace.num_layers, " MoE layers x ", E,
                       " experts but the model ", flags.GetString("model"), " has ",
                       model->spec.num_layers, " layers x ", model->spec.num_experts, " experts"));
    }
    HERD_ASSIGN_OR_RETURN(MemoryModel m, MemoryModelFromModel(*model));
    memory = m;
    hidden_size = model->spec.hidden_size;
  } else if (flags.Has("expert-bytes")) {
    MemoryModel m;
    HERD_ASSIGN_OR_RETURN(m.expert_bytes,
                          ParseBytes("expert-bytes", flags.GetString("expert-bytes")));
    HERD_ASSIGN_OR_RETURN(m.dense_bytes,
                          ParseBytes("dense-bytes", flags.GetString("dense-bytes", "0")));
    if (m.expert_bytes <= 0) return absl::InvalidArgumentError("--expert-bytes must be > 0");
    memory = m;
  } else if (flags.Has("dense-bytes")) {
    return absl::InvalidArgumentError("--dense-bytes needs --expert-bytes");
  }
  int64_t memory_per_rank = 0;
  if (flags.Has("memory-per-rank")) {
    if (!memory) {
      return absl::InvalidArgumentError(
          "--memory-per-rank needs the size of an expert: give --model or --expert-bytes");
    }
    HERD_ASSIGN_OR_RETURN(memory_per_rank,
                          ParseBytes("memory-per-rank", flags.GetString("memory-per-rank")));
  }
  if (flags.Has("hidden-size")) {
    HERD_ASSIGN_OR_RETURN(int hs, GetIntFlag(flags, "hidden-size", 0, 1));
    hidden_size = hs;
  }
  HERD_ASSIGN_OR_RETURN(int activation_bytes, GetIntFlag(flags, "activation-bytes", 2, 1));

  std::optional<ExpertPlacement> current;
  if (flags.Has("current")) {
    HERD_ASSIGN_OR_RETURN(current, ReadPlacementFile(flags.GetString("current")));
  }

  std::optional<Recommendation> recommendation;
  double target = 0.0;
  if (recommend) {
    if (current) return absl::InvalidArgumentError("--recommend does not take --current");
    RecommendOptions ro;
    HERD_ASSIGN_OR_RETURN(ro.target, flags.GetDouble("target", 1.05));
    target = ro.target;
    ro.ranks_per_node = cluster.ranks_per_node;
    HERD_ASSIGN_OR_RETURN(ro.max_nodes, GetIntFlag(flags, "max-nodes", 64, 1));
    HERD_ASSIGN_OR_RETURN(ro.min_ranks, GetIntFlag(flags, "min-ranks", 1, 1));
    HERD_ASSIGN_OR_RETURN(ro.max_redundant_per_rank,
                          GetIntFlag(flags, "max-redundant-per-rank", 8, 0));
    if (memory) ro.memory = *memory;
    ro.memory_per_rank_bytes = memory_per_rank;
    ro.planner = options;
    ProgressBar bar("herd plan --recommend");
    ro.progress = [&bar](int done, int total) { bar.Update(done, total); };
    HERD_ASSIGN_OR_RETURN(recommendation, RecommendCluster(loads, ro));
    bar.Finish();
    const std::vector<ClusterCandidate>& tried = recommendation->tried;
    if (tried.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("no cluster of up to ", ro.max_nodes, " nodes x ", ro.ranks_per_node,
                       " ranks fits the experts in ", memory_per_rank, " bytes per rank"));
    }
    const ClusterCandidate* pick = &tried.front();
    if (recommendation->found) {
      pick = &recommendation->best;
    } else {
      for (const ClusterCandidate& c : tried) {
        if (c.imbalance < pick->imbalance) pick = &c;
      }
    }
    cluster = pick->cluster;
    redundant = pick->num_redundant;
    // As in the search: hierarchical only where the node count allows it.
    if (options.mode == PlacementMode::kHierarchical &&
        options.num_groups % cluster.num_nodes != 0) {
      options.mode = PlacementMode::kGlobal;
    }
  }
  HERD_ASSIGN_OR_RETURN(cluster.slots_per_rank, SlotsPerRank(E, redundant, cluster.num_ranks()));
  HERD_RETURN_IF_ERROR(cluster.Validate(E));
  if (memory && memory_per_rank > 0) {
    HERD_RETURN_IF_ERROR(
        CheckMemoryFits(trace.num_layers, cluster.slots_per_rank, *memory, memory_per_rank));
  }

  ProgressBar bar("herd plan");
  options.progress = [&bar](int done, int total) { bar.Update(done, total); };
  HERD_ASSIGN_OR_RETURN(int repeat, GetIntFlag(flags, "repeat", 1, 1));
  std::optional<PlanResult> planned;
  double runtime = 0.0;
  for (int i = 0; i < repeat; ++i) {
    const auto start = std::chrono::steady_clock::now();
    HERD_ASSIGN_OR_RETURN(planned,
                          PlanPlacement(loads, cluster, options, current ? &*current : nullptr));
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    runtime = i == 0 ? seconds : std::min(runtime, seconds);
    options.progress = nullptr;  // one bar, for the first run
    bar.Finish();
  }
  const PlanResult& plan = *planned;
  std::optional<PlanResult> scratch;
  if (current) {
    HERD_ASSIGN_OR_RETURN(scratch, PlanPlacement(loads, cluster, options));
  }
  HERD_ASSIGN_OR_RETURN(
      ExpertPlacement contiguous,
      ExpertPlacement::Contiguous(trace.num_layers, E, cluster.num_ranks(), cluster.num_nodes));

  PlanReportInput in;
  in.trace_name = trace.name.empty() ? flags.GetString("trace") : trace.name;
  in.snapshot = static_cast<int>(snapshot);
  in.num_snapshots = trace.num_snapshots;
  in.top_k = trace.top_k;
  if (!trace.tokens_per_snapshot.empty()) {
    for (int t = 0; t < trace.num_snapshots; ++t) {
      if (snapshot < 0 || t == snapshot)
        in.tokens += static_cast<double>(trace.tokens_per_snapshot[t]);
    }
  }
  in.loads = &loads;
  in.cluster = cluster;
  in.options = options;
  in.plan = &plan;
  in.before = current ? &*current : &contiguous;
  in.before_is_current = current.has_value();
  in.scratch = scratch ? &scratch->placement : nullptr;
  in.memory = memory;
  in.memory_per_rank_bytes = memory_per_rank;
  in.hidden_size = hidden_size;
  in.activation_bytes = activation_bytes;
  in.runtime_seconds = runtime;
  in.threads = options.num_threads;
  in.recommendation = recommendation;
  in.recommend_target = target;
  const PlanReport report = BuildPlanReport(in);

  if (flags.Has("out")) {
    ExpertPlacement placement = plan.placement;
    placement.set_metadata({
        {"created_by", "herd plan"},
        {"trace", in.trace_name},
        {"snapshot", snapshot < 0 ? std::string("all") : absl::StrCat(snapshot)},
        {"mode", PlacementModeName(plan.mode)},
        {"split", ReplicaSplitName(options.split)},
        {"imbalance_after", absl::StrFormat("%.6f", report.after.mean)},
        {"lower_bound", absl::StrFormat("%.6f", report.lower_bound.mean)},
    });
    HERD_RETURN_IF_ERROR(WritePlacementFile(placement, flags.GetString("out")));
  }
  if (flags.Has("svg")) {
    const std::string title = absl::StrFormat(
        "%s: %d nodes x %d ranks, %d slots per rank, %s mode", in.trace_name, cluster.num_nodes,
        cluster.ranks_per_node, cluster.slots_per_rank, PlacementModeName(plan.mode));
    const std::string svg = LoadHeatmapSvg(
        title, Panels(loads, *in.before,
                      absl::StrFormat("before (%s): imbalance %.3f",
                                      current ? "current" : "contiguous", report.before.mean),
                      plan.placement,
                      absl::StrFormat("after (%s split): imbalance %.3f",
                                      ReplicaSplitName(options.split), report.after.mean)));
    HERD_RETURN_IF_ERROR(WriteFileAtomically(flags.GetString("svg"), svg, false));
  }
  out << (flags.Has("json") ? PlanReportJson(report) : PlanReportText(report));
  if (recommendation && !recommendation->found) {
    return absl::NotFoundError(absl::StrFormat(
        "no cluster tried meets imbalance %.4f; the report shows the best one found (raise "
        "--max-nodes, --max-redundant-per-rank or --memory-per-rank)",
        target));
  }
  return absl::OkStatus();
}

}  // namespace herd
