// herd compress: a checkpoint with quantized weights, written as Herd's own
// checkpoint (model/herd_checkpoint_writer.h), with a report of the bytes and
// bits each module takes before and after.

#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/human_format.h"
#include "core/quant_format.h"
#include "core/status.h"
#include "model/bit_allocation.h"
#include "model/gptq.h"
#include "model/herd_checkpoint_writer.h"
#include "model/hf_arch.h"
#include "model/model_loader.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/flags.h"
#include "tools/progress_bar.h"
#include "worker/benchmark.h"
#include "worker/calibration.h"
#include "worker/fidelity.h"

namespace herd {
namespace {

using Json = nlohmann::json;

const std::vector<FlagSpec> kCompressFlags = {
    {"model", true, "input model: GGUF file, Hugging Face or Herd checkpoint directory (required)"},
    {"out", true, "output checkpoint directory (required; must not exist unless --force)"},
    {"method", true,
     "rtn: round to nearest; gptq: GPTQ with calibration (an expert's Hessian from the tokens "
     "routed to it) (default rtn)"},
    {"calib", true,
     "calibration token ids for gptq, one sequence per line (default: random ids, reported)"},
    {"calib-sequences", true, "random calibration sequences without --calib (default 16)"},
    {"calib-length", true, "tokens per random calibration sequence (default 128)"},
    {"act-order", false, "gptq: quantize columns by descending Hessian diagonal"},
    {"bits", true, "8 | 4 | 3 | 2 (default 4)"},
    {"group-size", true, "32 | 64 | 128 | 0 = per output channel (default 128)"},
    {"asym", false, "asymmetric: a min per group as well as a scale"},
    {"scale-type", true, "f16 | bf16 (default f16)"},
    {"modules", true,
     "comma-separated modules to quantize: experts, shared, attention, router, embeddings "
     "(default experts)"},
    {"eval-tokens", true,
     "held-out token ids for the fidelity check, one sequence per line (default: random ids)"},
    {"eval-sequences", true,
     "random held-out sequences when --eval-tokens is not given (default 8)"},
    {"eval-length", true, "tokens per random held-out sequence (default 64)"},
    {"no-speed", false, "skip measuring prefill/decode speed before and after"},
    {"threads", true, "threads for the fidelity and speed runs, 0 = all cores (default 0)"},
    {"bits-map", true,
     "mixed precision: comma-separated rules applied after --modules/--bits, later ones win: "
     "main_B, attn_B, shared_B, embed_B, layer_L_B, exp_lLeE_B, keyword__TEXT__B (B = 2, 3, 4, "
     "8, 16 = keep)"},
    {"policy", true,
     "raise routed-expert matrices to --high-bits in this order: outlier (outlier score), "
     "frequency (experts the router picks most on calibration tokens), first-blocks (earliest "
     "layers first)"},
    {"high-bits", true, "the width --policy raises matrices to (default 4)"},
    {"avg-bits", true,
     "with --policy: raise until the average bits of the quantized matrices reach this (default: "
     "raise the top 25% of routed-expert matrices)"},
    {"drop-blocks", true,
     "block drop: remove this many transformer blocks, those whose input and output are most "
     "alike on calibration tokens (default 0)"},
    {"drop-layers", true,
     "layer drop: remove this many MoE sublayers, those whose input and output are most alike "
     "on calibration tokens; their attention stays (default 0)"},
    {"drop-experts", true,
     "expert drop: remove this many routed experts per layer, those with the lowest mean router "
     "probability on calibration tokens (default 0)"},
    {"expert-drop", true,
     "layerwise (every layer drops --drop-experts) or global (--drop-experts x layers, lowest "
     "scores anywhere; each layer keeps at least top-k) (default layerwise)"},
    {"drop-mode", true,
     "discrete (the most alike blocks) or consecutive (the most alike span) "
     "(default discrete)"},
    {"drop-scores", true,
     "score blocks on the quantized model (quantized: quantize, then drop) or on the original "
     "(original) (default quantized)"},
    {"skip-threshold", true,
     "dynamic expert skipping: a token skips a routed expert whose weight is below beta x its "
     "top expert's; auto = per layer, the median over calibration tokens of w2/w1; or one beta "
     "in (0, 1] for every layer (default: no skipping)"},
    {"report", true, "write the report as JSON to this file"},
    {"force", false, "replace --out if it exists"},
    {"help", false, "show this help"},
};

const std::map<std::string, ModuleKind> kModuleNames = {
    {"experts", ModuleKind::kExperts},       {"shared", ModuleKind::kSharedExpert},
    {"attention", ModuleKind::kAttention},   {"router", ModuleKind::kRouter},
    {"embeddings", ModuleKind::kEmbeddings},
};

absl::StatusOr<std::set<ModuleKind>> ParseModules(const std::string& list) {
  std::set<ModuleKind> modules;
  const std::vector<std::string> names = absl::StrSplit(list, ',', absl::SkipEmpty());
  for (const std::string& name : names) {
    const auto it = kModuleNames.find(name);
    if (it == kModuleNames.end()) {
      std::vector<std::string> known;
      for (const auto& [k, v] : kModuleNames) known.push_back(k);
      return absl::InvalidArgumentError(absl::StrCat(
          "--modules: unknown module '", name, "' (known: ", absl::StrJoin(known, ", "), ")"));
    }
    modules.insert(it->second);
  }
  if (modules.empty()) return absl::InvalidArgumentError("--modules names no module");
  return modules;
}

// Bytes and values of every weight matrix of a model, by module.
struct ModuleSize {
  int64_t bytes = 0;
  int64_t values = 0;
  double bits() const { return values > 0 ? 8.0 * static_cast<double>(bytes) / values : 0.0; }
};

std::map<std::string, ModuleSize> SizesByModule(const Model& model) {
  std::map<std::string, ModuleSize> sizes;
  for (const TensorRecord& t : model.tensors) {
    if (t.view.rank() < 2) continue;  // norms, biases and gate vectors stay F32
    ModuleSize& m = sizes[ModuleKindName(t.module)];
    m.bytes += t.view.num_bytes();
    m.values += t.view.num_elements();
  }
  return sizes;
}

Json SizeReport(const std::map<std::string, ModuleSize>& before,
                const std::map<std::string, ModuleSize>& after) {
  Json by_module = Json::object();
  ModuleSize total_before, total_after;
  for (const auto& [name, b] : before) {
    const ModuleSize a = after.count(name) ? after.at(name) : ModuleSize{};
    by_module[name] = {{"bytes_before", b.bytes},
                       {"bytes_after", a.bytes},
                       {"bits_before", b.bits()},
                       {"bits_after", a.bits()}};
    total_before.bytes += b.bytes;
    total_before.values += b.values;
    total_after.bytes += a.bytes;
    total_after.values += a.values;
  }
  return {{"bytes_before", total_before.bytes},
          {"bytes_after", total_after.bytes},
          {"average_bits_before", total_before.bits()},
          {"average_bits", total_after.bits()},
          {"by_module", by_module}};
}

void PrintReport(const Json& report, std::ostream& out) {
  const Json& size = report["size"];
  out << absl::StrFormat("%-14s %12s %12s %10s %10s\n", "module", "before", "after", "bits",
                         "bits after");
  for (const auto& [name, m] : size["by_module"].items()) {
    out << absl::StrFormat("%-14s %12s %12s %10.2f %10.2f\n", name,
                           HumanBytes(m["bytes_before"].get<int64_t>()),
                           HumanBytes(m["bytes_after"].get<int64_t>()),
                           m["bits_before"].get<double>(), m["bits_after"].get<double>());
  }
  out << absl::StrFormat("%-14s %12s %12s %10.2f %10.2f\n", "all weights",
                         HumanBytes(size["bytes_before"].get<int64_t>()),
                         HumanBytes(size["bytes_after"].get<int64_t>()),
                         size["average_bits_before"].get<double>(),
                         size["average_bits"].get<double>());
  out << absl::StrFormat("nominal bits of the quantized matrices: %.3f\n",
                         report["nominal_average_bits"].get<double>());
  const Json& f = report["fidelity"];
  out << absl::StrFormat(
      "fidelity on %d held-out positions: mean KL %.3g (max %.3g), top-1 agreement %.1f%%, "
      "logits relative error %.3g\n",
      f["positions"].get<int64_t>(), f["mean_kl"].get<double>(), f["max_kl"].get<double>(),
      100.0 * f["top1_agreement"].get<double>(), f["logits_relative_error"].get<double>());
  if (report.contains("gptq")) {
    const Json& g = report["gptq"];
    out << absl::StrFormat(
        "gptq: %d matrices on %d calibration tokens, layer-output error %.4g (round to nearest: "
        "%.4g), %d without calibration rows (round to nearest)\n",
        g["matrices"].get<int64_t>(), g["calibration_tokens"].get<int64_t>(),
        g["output_error"].get<double>(), g["rtn_output_error"].get<double>(),
        g["rtn_fallbacks"].get<int64_t>());
    if (const int64_t few = g["matrices_with_fewer_rows_than_inputs"].get<int64_t>(); few > 0) {
      out << absl::StrFormat(
          "gptq: warning: %d matrices saw fewer calibration rows than they have inputs; their "
          "Hessians are rank-deficient and GPTQ can fit the calibration tokens at the expense of "
          "others: use more calibration tokens (--calib)\n",
          few);
    }
  }
  if (report.contains("trimming")) {
    const Json& t = report["trimming"];
    out << "dropped: blocks " << t["dropped_blocks"].dump() << ", MoE sublayers "
        << t["dropped_moe_layers"].dump() << ", experts " << t["dropped_experts"].dump()
        << " (scored on the " << t["scores_from"].get<std::string>() << " model)\n";
  }
  if (report.contains("skipping")) {
    const Json& k = report["skipping"];
    out << absl::StrFormat(
        "dynamic skipping (--skip-threshold %s): thresholds by layer %s; %.1f%% of routed expert "
        "calls skipped on the held-out tokens\n",
        k["skip_threshold"].get<std::string>(), k["thresholds"].dump(),
        100.0 * k["skipped_fraction"].get<double>());
  }
  if (report.contains("speed")) {
    const Json& sp = report["speed"];
    out << absl::StrFormat(
        "speed: decode %.1f -> %.1f tokens/s (%.2fx), prefill %.1f -> %.1f (%.2fx)\n",
        sp["before"]["decode_tokens_per_second"].get<double>(),
        sp["after"]["decode_tokens_per_second"].get<double>(), sp["decode_speedup"].get<double>(),
        sp["before"]["prefill_tokens_per_second"].get<double>(),
        sp["after"]["prefill_tokens_per_second"].get<double>(),
        sp["prefill_speedup"].get<double>());
  }
}

// Token id sequences from a file: one sequence per line, ids separated by
// commas or whitespace. InvalidArgument naming the line for anything that is
// not an id of the vocabulary.
absl::StatusOr<std::vector<std::vector<int32_t>>> ReadTokenFile(const std::string& path,
                                                                int64_t vocab) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read token file ", path));
  std::vector<std::vector<int32_t>> sequences;
  std::string line;
  for (int line_no = 1; std::getline(in, line); ++line_no) {
    std::vector<int32_t> ids;
    for (absl::string_view word :
         absl::StrSplit(line, absl::ByAnyChar(", \t\r"), absl::SkipEmpty())) {
      int64_t id = 0;
      if (!absl::SimpleAtoi(word, &id) || id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": '", word,
                                                       "' is not a token id in [0, ", vocab, ")"));
      }
      ids.push_back(static_cast<int32_t>(id));
    }
    if (!ids.empty()) sequences.push_back(std::move(ids));
  }
  if (sequences.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no token ids"));
  return sequences;
}

std::vector<std::vector<int32_t>> RandomSequences(int64_t count, int64_t length, int64_t vocab,
                                                  uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(vocab - 1));
  std::vector<std::vector<int32_t>> sequences(count, std::vector<int32_t>(length));
  for (auto& s : sequences) {
    for (int32_t& t : s) t = id(rng);
  }
  return sequences;
}

// The calibration tokens every stage that calibrates uses: --calib's, or
// --calib-sequences x --calib-length random ids; `source` says which.
struct CalibrationTokens {
  std::vector<std::vector<int32_t>> sequences;
  std::string source;
};

absl::StatusOr<CalibrationTokens> ChooseCalibrationTokens(const ParsedFlags& flags, int64_t vocab) {
  CalibrationTokens tokens;
  if (flags.Has("calib")) {
    HERD_ASSIGN_OR_RETURN(tokens.sequences, ReadTokenFile(flags.GetString("calib"), vocab));
    tokens.source = flags.GetString("calib");
    return tokens;
  }
  HERD_ASSIGN_OR_RETURN(const int64_t count, flags.GetInt("calib-sequences", 16));
  HERD_ASSIGN_OR_RETURN(const int64_t length, flags.GetInt("calib-length", 128));
  if (count < 1 || length < 1) {
    return absl::InvalidArgumentError("--calib-sequences and --calib-length must be >= 1");
  }
  tokens.sequences = RandomSequences(count, length, vocab, /*seed=*/7);
  tokens.source = absl::StrCat("synthetic: ", count, " sequences of ", length,
                               " uniformly random token ids (no --calib given)");
  return tokens;
}

// --policy: ranks the routed-expert matrices and raises them to --high-bits,
// up to --avg-bits or the top 25%. Returns what it did, for the report.
absl::StatusOr<Json> ApplyPolicy(const ParsedFlags& flags, const Model& model,
                                 std::vector<BitUnit>* units) {
  const std::string policy = flags.GetString("policy");
  HERD_ASSIGN_OR_RETURN(const int64_t high, flags.GetInt("high-bits", 4));
  if (high != 2 && high != 3 && high != 4 && high != 8) {
    return absl::InvalidArgumentError(absl::StrCat("--high-bits must be 2, 3, 4 or 8, got ", high));
  }
  std::vector<size_t> candidates;
  for (size_t i = 0; i < units->size(); ++i) {
    if ((*units)[i].module == ModuleKind::kExperts && (*units)[i].bits < 16)
      candidates.push_back(i);
  }
  std::vector<double> score(units->size(), 0.0);
  if (policy == "outlier") {
    // Scores come from the weights as loaded (GGUF experts are per-expert views).
    const HfArchInfo& arch = HfArchitecture(model.spec.architecture);
    for (size_t i : candidates) {
      const BitUnit& u = (*units)[i];
      const ExpertFfnWeights& e = model.layers[u.layer].experts[u.expert];
      const TensorView* w =
          absl::EndsWith(u.name, absl::StrCat(arch.gate_proj, ".weight")) ? &e.gate
          : absl::EndsWith(u.name, absl::StrCat(arch.up_proj, ".weight")) ? &e.up
                                                                          : &e.down;
      score[i] = OutlierScore(*w);
    }
  } else if (policy == "first-blocks") {
    for (size_t i : candidates) score[i] = -static_cast<double>((*units)[i].layer);
  } else if (policy == "frequency") {
    // How often the router picks each expert (top-k) on calibration tokens.
    HERD_ASSIGN_OR_RETURN(const CalibrationTokens calib,
                          ChooseCalibrationTokens(flags, model.spec.vocab_size));
    HERD_ASSIGN_OR_RETURN(const int64_t threads, flags.GetInt("threads", 0));
    HERD_ASSIGN_OR_RETURN(const Calibration c,
                          Calibration::Run(model, calib.sequences, static_cast<int>(threads)));
    for (size_t i : candidates) {
      const BitUnit& u = (*units)[i];
      score[i] = static_cast<double>(c.layer(u.layer).expert_tokens[u.expert]);
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--policy: '", policy, "' is not a policy (outlier, frequency, first-blocks)"));
  }
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](size_t a, size_t b) { return score[a] > score[b]; });
  int raised = 0;
  double target = 0.0;
  if (flags.Has("avg-bits")) {
    const std::string text = flags.GetString("avg-bits");
    if (!absl::SimpleAtod(text, &target) || target <= 0 || target > 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("--avg-bits must be a number in (0, 16], got ", text));
    }
    raised = RaiseUntilAverage(candidates, static_cast<int>(high), target, units);
  } else {
    const size_t quarter = candidates.size() / 4;
    for (size_t k = 0; k < quarter; ++k) {
      if ((*units)[candidates[k]].bits < high) {
        (*units)[candidates[k]].bits = static_cast<int>(high);
        ++raised;
      }
    }
  }
  Json top = Json::array();
  for (size_t k = 0; k < candidates.size() && k < 8; ++k) {
    top.push_back({{"name", (*units)[candidates[k]].name}, {"score", score[candidates[k]]}});
  }
  Json report = {{"name", policy}, {"high_bits", high}, {"raised", raised}, {"top_ranked", top}};
  if (target > 0) report["target_average_bits"] = target;
  return report;
}

// What to trim (seeds-methods.md §3.3, §7.4).
struct TrimRequest {
  int blocks = 0;  // block drop
  std::string block_mode = "discrete";
  int moe_layers = 0;  // layer drop
  int experts = 0;     // expert drop, per layer
  std::string expert_mode = "layerwise";
};

// Calibrates `scored` and fills `options`' drop lists:
//   block drop: the `blocks` highest cos(h_l, h_l+1) (discrete), or the span
//     i..i+n-1 maximising cos(h_i, h_i+n) (consecutive);
//   layer drop: the `moe_layers` highest cos(x', x' + MoE(Norm(x')));
//   expert drop: the lowest mean router probabilities, `experts` per layer
//     (layerwise) or experts x layers overall (global, each layer keeping top-k).
// Returns the scores and choices for the report.
absl::StatusOr<Json> Trim(const ParsedFlags& flags, const Model& scored, const TrimRequest& request,
                          int threads, HerdCheckpointOptions* options) {
  HERD_ASSIGN_OR_RETURN(const CalibrationTokens calib,
                        ChooseCalibrationTokens(flags, scored.spec.vocab_size));
  HERD_ASSIGN_OR_RETURN(const Calibration c, Calibration::Run(scored, calib.sequences, threads));
  const int layers = c.num_layers();
  std::vector<double> block(layers), moe(layers);
  Json expert_scores = Json::array(), frequencies = Json::array();
  for (int l = 0; l < layers; ++l) {
    block[l] = c.layer(l).block_similarity;
    moe[l] = c.layer(l).moe_similarity;
    expert_scores.push_back(c.layer(l).expert_scores);
    frequencies.push_back(c.layer(l).expert_tokens);
  }
  const auto highest = [](const std::vector<double>& score, int n, const std::vector<bool>& skip) {
    std::vector<int> order;
    for (int i = 0; i < static_cast<int>(score.size()); ++i) {
      if (!skip[i]) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] > score[b]; });
    order.resize(std::min<size_t>(order.size(), n));
    std::sort(order.begin(), order.end());
    return order;
  };
  // Blocks.
  std::vector<int>& dropped_blocks = options->drop_blocks;
  if (request.blocks > 0 && request.block_mode == "discrete") {
    dropped_blocks = highest(block, request.blocks, std::vector<bool>(layers, false));
  } else if (request.blocks > 0) {
    int best = 0;
    double best_similarity = -2.0;
    for (int i = 0; i + request.blocks <= layers; ++i) {
      const double similarity = c.SpanSimilarity(i, i + request.blocks);
      if (similarity > best_similarity) {
        best_similarity = similarity;
        best = i;
      }
    }
    for (int l = best; l < best + request.blocks; ++l) dropped_blocks.push_back(l);
  }
  std::vector<bool> gone(layers, false);
  for (int l : dropped_blocks) gone[l] = true;
  for (int l = 0; l < layers; ++l) gone[l] = gone[l] || scored.layers[l].moe_dropped;
  // MoE sublayers, among the blocks that stay.
  options->drop_moe_layers = highest(moe, request.moe_layers, gone);
  for (int l : options->drop_moe_layers) gone[l] = true;
  // Experts, in the MoE sublayers that stay.
  const int num_experts = static_cast<int>(scored.spec.num_experts);
  const int top_k = static_cast<int>(scored.spec.num_experts_per_token);
  if (request.experts > 0) {
    std::vector<std::pair<double, std::pair<int, int>>> candidates;  // score, (layer, expert)
    for (int l = 0; l < layers; ++l) {
      if (gone[l]) continue;
      for (int e = 0; e < num_experts; ++e) {
        if (scored.layers[l].ExpertExists(e))
          candidates.push_back({c.layer(l).expert_scores[e], {l, e}});
      }
    }
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<int> kept(layers, 0), dropped(layers, 0);
    for (const auto& cand : candidates) ++kept[cand.second.first];
    const int budget =
        request.expert_mode == "global"
            ? request.experts * static_cast<int>(std::count(gone.begin(), gone.end(), false))
            : 0;
    int taken = 0;
    for (const auto& [score, at] : candidates) {
      const auto [l, e] = at;
      const bool room =
          request.expert_mode == "global" ? taken < budget : dropped[l] < request.experts;
      if (!room || kept[l] - 1 < top_k) continue;
      options->drop_experts[l].push_back(e);
      --kept[l];
      ++dropped[l];
      ++taken;
    }
    for (auto& [l, list] : options->drop_experts) std::sort(list.begin(), list.end());
  }
  Json dropped_experts = Json::object();
  for (const auto& [l, list] : options->drop_experts) dropped_experts[std::to_string(l)] = list;
  return Json{{"block_mode", request.block_mode},
              {"expert_mode", request.expert_mode},
              {"dropped_blocks", dropped_blocks},
              {"dropped_moe_layers", options->drop_moe_layers},
              {"dropped_experts", dropped_experts},
              {"block_similarity", block},
              {"moe_similarity", moe},
              {"expert_scores", expert_scores},
              {"expert_frequencies", frequencies},
              {"calibration_tokens", c.num_tokens()}};
}

// --skip-threshold: "auto" or one beta in (0, 1].
absl::StatusOr<std::optional<float>> ParseSkipThreshold(const std::string& value) {
  if (value == "auto") return std::optional<float>();
  float beta = 0;
  if (!absl::SimpleAtof(value, &beta) || !(beta > 0.0f && beta <= 1.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--skip-threshold must be auto or a number in (0, 1], got '", value, "'"));
  }
  return std::optional<float>(beta);
}

// Sets the thresholds `value` asks for (empty: none) on every MoE layer;
// auto takes each layer's median w2/w1 from `calibration`. InvalidArgument
// for auto with top-1 routing, which has no second expert to skip.
absl::Status ChooseSkipThresholds(const std::string& value, const Model& model,
                                  const Calibration* calibration, HerdCheckpointOptions* options) {
  if (value.empty()) return absl::OkStatus();
  if (model.spec.num_experts_per_token < 2) {
    return absl::InvalidArgumentError(
        "--skip-threshold needs top-k >= 2 routing: with one expert per token there is nothing "
        "to skip");
  }
  HERD_ASSIGN_OR_RETURN(const std::optional<float> fixed, ParseSkipThreshold(value));
  for (int l = 0; l < static_cast<int>(model.spec.num_layers); ++l) {
    if (model.layers[l].moe_dropped) continue;
    const float beta =
        fixed.has_value() ? *fixed : static_cast<float>(calibration->layer(l).skip_threshold);
    if (beta > 0.0f) options->expert_skip_thresholds[l] = std::min(beta, 1.0f);
  }
  return absl::OkStatus();
}

// What dynamic skipping chose and did, for the report: the written model's
// thresholds per layer and the share of routed expert calls it left out on
// the held-out tokens.
Json SkippingReport(const std::string& value, const Model& written, const EngineStats& eval,
                    const std::string& calib_source) {
  Json thresholds = Json::object();
  for (size_t l = 0; l < written.layers.size(); ++l) {
    const float beta = written.layers[l].expert_skip_threshold;
    if (beta > 0.0f) thresholds[std::to_string(l)] = beta;
  }
  Json report = {
      {"skip_threshold", value},
      {"thresholds", thresholds},
      {"routed_expert_calls", eval.routed_slots},
      {"skipped_expert_calls", eval.skipped_slots},
      {"skipped_fraction",
       eval.routed_slots > 0 ? static_cast<double>(eval.skipped_slots) / eval.routed_slots : 0.0}};
  if (value == "auto") report["calibration_source"] = calib_source;
  return report;
}

absl::StatusOr<Json> MeasureSpeed(const Model& model, int threads) {
  EngineOptions engine_options;
  engine_options.num_threads = threads;
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, engine_options));
  ModelBenchOptions options;
  options.prompt_tokens = std::min<int64_t>(128, model.spec.context_length / 2);
  options.gen_tokens = std::min<int64_t>(32, model.spec.context_length / 2);
  options.repetitions = 3;
  HERD_ASSIGN_OR_RETURN(const ModelBenchResult r, RunModelBenchmark(*engine, model, options));
  return Json{{"prefill_tokens", options.prompt_tokens},
              {"prefill_tokens_per_second", r.prefill_tokens_per_second.median},
              {"decode_tokens", options.gen_tokens},
              {"decode_tokens_per_second", r.decode_tokens_per_second.median},
              {"decode_weight_bytes_per_token", r.decode_weight_bytes},
              {"decode_skipped_expert_fraction", r.decode_skipped_fraction}};
}

}  // namespace

absl::Status RunCompressCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kCompressFlags));
  if (flags.Has("help")) {
    out << "usage: herd compress --model IN --out OUT [--bits 4] [--group-size 128] [--asym]\n"
        << "                     [--modules experts,attention] [--report FILE] [--force]\n"
        << FlagsHelp(kCompressFlags);
    return absl::OkStatus();
  }
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model is required");
  if (!flags.Has("out")) return absl::InvalidArgumentError("--out is required");
  const std::string method = flags.GetString("method", "rtn");
  if (method != "rtn" && method != "gptq") {
    return absl::InvalidArgumentError(
        absl::StrCat("--method: '", method, "' is not a method herd compress has (rtn, gptq)"));
  }
  QuantFormat format;
  HERD_ASSIGN_OR_RETURN(const int64_t bits, flags.GetInt("bits", 4));
  HERD_ASSIGN_OR_RETURN(const int64_t group, flags.GetInt("group-size", 128));
  format.bits = static_cast<int>(bits);
  format.group_size = static_cast<int>(group);
  format.symmetric = !flags.Has("asym");
  const std::string scale = flags.GetString("scale-type", "f16");
  if (scale != "f16" && scale != "bf16") {
    return absl::InvalidArgumentError(
        absl::StrCat("--scale-type must be f16 or bf16, got ", scale));
  }
  format.scale_type = scale == "bf16" ? DType::kBF16 : DType::kF16;
  if (bits != format.bits || group != format.group_size) {
    return absl::InvalidArgumentError("--bits and --group-size must be small integers");
  }
  HERD_RETURN_IF_ERROR(format.Validate());
  HERD_ASSIGN_OR_RETURN(const std::set<ModuleKind> modules,
                        ParseModules(flags.GetString("modules", "experts")));
  const std::string skip_threshold = flags.GetString("skip-threshold", "");
  if (!skip_threshold.empty()) HERD_RETURN_IF_ERROR(ParseSkipThreshold(skip_threshold).status());

  const std::string in_path = flags.GetString("model");
  const std::string out_dir = flags.GetString("out");
  if (std::error_code ec; std::filesystem::exists(out_dir, ec) && !flags.Has("force")) {
    return absl::AlreadyExistsError(
        absl::StrCat(out_dir, " already exists (pass --force to replace it)"));
  }
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadModel(in_path));
  for (const TensorRecord& t : model->tensors) {
    if (t.view.rank() >= 2 && modules.contains(t.module)) {
      const int64_t cols = t.view.row_length();
      if (absl::Status fits = format.ValidateShape(t.view.num_rows(), cols); !fits.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, ": ", fits.message()));
      }
    }
  }

  std::vector<std::string> module_names;
  for (const auto& [name, kind] : kModuleNames) {
    if (modules.contains(kind)) module_names.push_back(name);
  }

  // The bits of every weight matrix: --modules at --bits, then --bits-map
  // rules, then a policy's ranked raises.
  std::vector<BitUnit> units = WeightUnits(*model);
  for (BitUnit& u : units) {
    if (modules.contains(u.module)) u.bits = format.bits;
  }
  if (flags.Has("bits-map"))
    HERD_RETURN_IF_ERROR(ApplyBitRules(flags.GetString("bits-map"), &units));
  Json policy_report;
  if (flags.Has("policy")) {
    HERD_ASSIGN_OR_RETURN(policy_report, ApplyPolicy(flags, *model, &units));
  }
  std::map<std::string, int> bits_of;
  Json bit_map = Json::object();
  for (const BitUnit& u : units) {
    bits_of[u.name] = u.bits;
    bit_map[u.name] = u.bits;
  }
  HerdCheckpointOptions options;
  options.overwrite = flags.Has("force");
  options.choose_format = [&](const WeightInfo& w) -> std::optional<QuantFormat> {
    const auto it = bits_of.find(w.name);
    if (it == bits_of.end() || it->second == 16) return std::nullopt;
    QuantFormat f = format;
    f.bits = it->second;
    return f;
  };
  options.compression = {
      {"method", method},        {"format", format.Name()},
      {"modules", module_names}, {"source", in_path},
      {"bit_map", bit_map},      {"nominal_average_bits", QuantizedAverageBits(units)}};
  if (flags.Has("bits-map")) options.compression["bits_map_rules"] = flags.GetString("bits-map");
  if (!policy_report.is_null()) options.compression["policy"] = policy_report;
  if (!skip_threshold.empty()) options.compression["skip_threshold"] = skip_threshold;
  // GPTQ: calibrate on the original model, then quantize each matrix with
  // the Hessian of exactly its inputs.
  std::optional<Calibration> calibration;
  HERD_ASSIGN_OR_RETURN(const int64_t threads64, flags.GetInt("threads", 0));
  const int threads = static_cast<int>(threads64);
  ThreadPool pool(threads);
  Json gptq_report;
  double gptq_error = 0, rtn_error = 0;
  int64_t gptq_fallbacks = 0, gptq_matrices = 0, gptq_few_rows = 0;
  // Calibration on the original model, for GPTQ and the skip thresholds.
  std::string calib_source;
  if (method == "gptq" || skip_threshold == "auto") {
    HERD_ASSIGN_OR_RETURN(const CalibrationTokens calib,
                          ChooseCalibrationTokens(flags, model->spec.vocab_size));
    calib_source = calib.source;
    ProgressBar calib_bar("herd compress: calibrate");
    calib_bar.Update(0, 1);
    HERD_ASSIGN_OR_RETURN(Calibration c, Calibration::Run(*model, calib.sequences, threads));
    calib_bar.Finish();
    calibration = std::move(c);
  }
  HERD_RETURN_IF_ERROR(ChooseSkipThresholds(skip_threshold, *model,
                                            calibration ? &*calibration : nullptr, &options));
  if (method == "gptq") {
    Json frequencies = Json::array();
    for (int l = 0; l < calibration->num_layers(); ++l) {
      frequencies.push_back(calibration->layer(l).expert_tokens);
    }
    gptq_report = {{"calibration_tokens", calibration->num_tokens()},
                   {"calibration_source", calib_source},
                   {"expert_frequencies", frequencies}};
    GptqOptions gptq_options;
    gptq_options.act_order = flags.Has("act-order");
    const HfArchInfo& arch = HfArchitecture(model->spec.architecture);
    options.quantize = [&, gptq_options](const WeightInfo& w, const QuantFormat& f,
                                         const float* values, int64_t rows, int64_t cols,
                                         uint8_t* codes, QuantGroupParams* params) -> absl::Status {
      const bool down = absl::EndsWith(w.name, absl::StrCat(arch.down_proj, ".weight"));
      const LayerCalibration* l = w.layer >= 0 ? &calibration->layer(w.layer) : nullptr;
      InputRows computed;
      const InputRows* inputs = nullptr;
      if (w.module == ModuleKind::kAttention) {
        inputs = absl::EndsWith(w.name, "o_proj.weight") ? &l->attention_output : &l->attention;
      } else if (w.module == ModuleKind::kExperts || w.module == ModuleKind::kSharedExpert) {
        const int expert = w.module == ModuleKind::kExperts ? w.expert : -1;
        if (down) {
          HERD_ASSIGN_OR_RETURN(computed, calibration->DownInputs(*model, w.layer, expert, pool));
          inputs = &computed;
        } else {
          inputs = expert >= 0 ? &l->experts[expert] : &l->shared_expert;
        }
      }
      if (inputs == nullptr) {  // embeddings and lm head: no inputs kept, round to nearest
        QuantizeCodesRtn(f, values, rows, cols, codes, params);
        return absl::OkStatus();
      }
      if (inputs->rows() < cols) ++gptq_few_rows;  // rank-deficient Hessian: GPTQ may overfit
      HessianAccumulator hessian(cols);
      if (inputs->rows() > 0) hessian.Add(inputs->values.data(), inputs->rows());
      HERD_ASSIGN_OR_RETURN(
          const GptqResult result,
          GptqQuantize(f, values, rows, cols, hessian, gptq_options, codes, params, &pool));
      ++gptq_matrices;
      if (result.used_rtn_fallback) {
        ++gptq_fallbacks;
        return absl::OkStatus();
      }
      // The same layer-output error for round to nearest, for the report.
      std::vector<uint8_t> rtn_codes(rows * cols);
      std::vector<QuantGroupParams> rtn_params(rows * (cols / f.GroupLength(cols)));
      QuantizeCodesRtn(f, values, rows, cols, rtn_codes.data(), rtn_params.data());
      gptq_error += result.reconstruction_error;
      rtn_error +=
          OutputError(f, values, rows, cols, rtn_codes.data(), rtn_params.data(), hessian, &pool);
      return absl::OkStatus();
    };
  }
  HERD_ASSIGN_OR_RETURN(const int64_t drop_blocks, flags.GetInt("drop-blocks", 0));
  HERD_ASSIGN_OR_RETURN(const int64_t drop_layers, flags.GetInt("drop-layers", 0));
  HERD_ASSIGN_OR_RETURN(const int64_t drop_experts, flags.GetInt("drop-experts", 0));
  const std::string drop_mode = flags.GetString("drop-mode", "discrete");
  const std::string drop_scores = flags.GetString("drop-scores", "quantized");
  const std::string expert_drop = flags.GetString("expert-drop", "layerwise");
  if (drop_blocks < 0 || drop_blocks >= model->spec.num_layers || drop_layers < 0 ||
      drop_layers > model->spec.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("--drop-blocks must be in [0, ", model->spec.num_layers,
                     ") and --drop-layers in [0, ", model->spec.num_layers, "]"));
  }
  if (drop_experts < 0 ||
      model->spec.num_experts - drop_experts < model->spec.num_experts_per_token) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--drop-experts must leave at least top-k (", model->spec.num_experts_per_token,
        ") of the ", model->spec.num_experts, " experts per layer, got ", drop_experts));
  }
  if (drop_mode != "discrete" && drop_mode != "consecutive") {
    return absl::InvalidArgumentError("--drop-mode must be discrete or consecutive");
  }
  if (drop_scores != "quantized" && drop_scores != "original") {
    return absl::InvalidArgumentError("--drop-scores must be quantized or original");
  }
  if (expert_drop != "layerwise" && expert_drop != "global") {
    return absl::InvalidArgumentError("--expert-drop must be layerwise or global");
  }
  const bool trim = drop_blocks > 0 || drop_layers > 0 || drop_experts > 0;
  // With trimming, the quantized model is written to a temporary first and
  // the final checkpoint copies it (exactly) without the dropped parts.
  const std::string quantized_dir = trim ? out_dir + ".quantized-tmp" : out_dir;
  if (trim) options.overwrite = true;
  ProgressBar bar("herd compress: quantize and write");
  options.progress = [&](int64_t done, int64_t total) { bar.Update(done, total); };
  HERD_RETURN_IF_ERROR(WriteHerdCheckpoint(*model, options, quantized_dir));
  bar.Finish();
  Json trimming;
  if (trim) {
    absl::Cleanup remove_tmp = [&] {
      std::error_code ec;
      std::filesystem::remove_all(quantized_dir, ec);
    };
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> quantized, LoadModel(quantized_dir));
    TrimRequest request;
    request.blocks = static_cast<int>(drop_blocks);
    request.block_mode = drop_mode;
    request.moe_layers = static_cast<int>(drop_layers);
    request.experts = static_cast<int>(drop_experts);
    request.expert_mode = expert_drop;
    HerdCheckpointOptions drop;
    HERD_ASSIGN_OR_RETURN(trimming, Trim(flags, drop_scores == "quantized" ? *quantized : *model,
                                         request, threads, &drop));
    trimming["scores_from"] = drop_scores;
    drop.overwrite = flags.Has("force");
    drop.compression = options.compression;
    drop.compression["trimming"] = trimming;
    HERD_RETURN_IF_ERROR(WriteHerdCheckpoint(*quantized, drop, out_dir));
  }
  if (method == "gptq") {
    gptq_report["matrices"] = gptq_matrices;
    gptq_report["rtn_fallbacks"] = gptq_fallbacks;
    gptq_report["matrices_with_fewer_rows_than_inputs"] = gptq_few_rows;
    gptq_report["output_error"] = gptq_error;
    gptq_report["rtn_output_error"] = rtn_error;
  }

  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> written, LoadModel(out_dir));
  Json report = options.compression;
  report["output"] = out_dir;
  if (!gptq_report.is_null()) report["gptq"] = gptq_report;
  if (!trimming.is_null()) report["trimming"] = trimming;
  report["size"] = SizeReport(SizesByModule(*model), SizesByModule(*written));

  // Fidelity on held-out tokens, then speed, of the original and the result.
  std::vector<std::vector<int32_t>> eval;
  std::string eval_source;
  if (flags.Has("eval-tokens")) {
    HERD_ASSIGN_OR_RETURN(eval,
                          ReadTokenFile(flags.GetString("eval-tokens"), model->spec.vocab_size));
    eval_source = flags.GetString("eval-tokens");
  } else {
    HERD_ASSIGN_OR_RETURN(const int64_t count, flags.GetInt("eval-sequences", 8));
    HERD_ASSIGN_OR_RETURN(const int64_t length, flags.GetInt("eval-length", 64));
    if (count < 1 || length < 1) {
      return absl::InvalidArgumentError("--eval-sequences and --eval-length must be >= 1");
    }
    eval = RandomSequences(count, length, model->spec.vocab_size, /*seed=*/20261122);
    eval_source = absl::StrCat("synthetic: ", count, " sequences of ", length,
                               " uniformly random token ids (no --eval-tokens given)");
  }
  ProgressBar eval_bar("herd compress: fidelity");
  eval_bar.Update(0, 2);
  HERD_ASSIGN_OR_RETURN(const std::vector<float> before, SequenceLogits(*model, eval, threads));
  eval_bar.Update(1, 2);
  EngineStats eval_stats;
  HERD_ASSIGN_OR_RETURN(const std::vector<float> after,
                        SequenceLogits(*written, eval, threads, &eval_stats));
  eval_bar.Finish();
  const FidelityResult fidelity = CompareLogits(before, after, model->spec.vocab_size);
  report["fidelity"] = {{"eval_tokens", eval_source},
                        {"positions", fidelity.positions},
                        {"mean_kl", fidelity.mean_kl},
                        {"max_kl", fidelity.max_kl},
                        {"top1_agreement", fidelity.top1_agreement},
                        {"logits_relative_error", fidelity.logits_relative_error}};
  if (!skip_threshold.empty()) {
    report["skipping"] = SkippingReport(skip_threshold, *written, eval_stats, calib_source);
  }
  if (!flags.Has("no-speed")) {
    HERD_ASSIGN_OR_RETURN(const Json speed_before, MeasureSpeed(*model, threads));
    HERD_ASSIGN_OR_RETURN(const Json speed_after, MeasureSpeed(*written, threads));
    report["speed"] = {
        {"before", speed_before},
        {"after", speed_after},
        {"decode_speedup", speed_after["decode_tokens_per_second"].get<double>() /
                               speed_before["decode_tokens_per_second"].get<double>()},
        {"prefill_speedup", speed_after["prefill_tokens_per_second"].get<double>() /
                                speed_before["prefill_tokens_per_second"].get<double>()}};
  }
  out << "wrote " << out_dir << " (" << format.Name() << " for "
      << absl::StrJoin(module_names, ", ") << ")\n";
  PrintReport(report, out);
  if (flags.Has("report")) {
    std::ofstream file(flags.GetString("report"));
    file << report.dump(2) << "\n";
    if (!file) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot write the report to ", flags.GetString("report")));
    }
  }
  return absl::OkStatus();
}

}  // namespace herd
