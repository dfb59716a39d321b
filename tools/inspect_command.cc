#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/human_format.h"
#include "core/placement.h"
#include "core/status.h"
#include "model/model_loader.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/flags.h"

namespace herd {
namespace {

// "F16", "Q4_0", or a Herd format's name ("int4-g128-sym-f16").
std::string TypeName(const TensorView& t) {
  return t.dtype() == DType::kQuant ? t.quant_format().Name() : DTypeName(t.dtype());
}

const std::vector<FlagSpec> kInspectFlags = {
    {"model", true, "GGUF file, Hugging Face or Herd checkpoint directory (required)"},
    {"json", false, "print one JSON object instead of text"},
    {"tensors", false, "also list every tensor"},
    {"placement", true, "expert placement file: print what each rank holds"},
    {"help", false, "show this help"},
};

struct Totals {
  int64_t parameters = 0;
  int64_t bytes = 0;
};

std::string ShapeString(const TensorView& v) {
  std::string s = "[";
  for (int i = 0; i < v.rank(); ++i) s += absl::StrFormat("%s%d", i ? ", " : "", v.dim(i));
  return s + "]";
}

// Bytes of expert `e` of layer `l` as stored.
int64_t ExpertBytes(const Model& model, int l, int e) {
  const ExpertFfnWeights& x = model.layers[l].experts[e];
  return x.gate.num_bytes() + x.up.num_bytes() + x.down.num_bytes();
}

// What each rank of `placement` holds: experts (slots) per layer, replicas,
// and the bytes of expert weights it loads.
absl::Status PrintPlacement(const Model& model, const ExpertPlacement& placement, bool json,
                            std::ostream& out) {
  const ModelSpec& s = model.spec;
  if (placement.num_layers() != s.num_layers || placement.num_experts() != s.num_experts) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the placement has %d layers x %d experts, the model %d x %d", placement.num_layers(),
        placement.num_experts(), s.num_layers, s.num_experts));
  }
  nlohmann::json ranks = nlohmann::json::array();
  if (!json) {
    out << absl::StrFormat("placement  %d ranks (%d nodes), %d layers x %d experts\n",
                           placement.num_ranks(), placement.num_nodes(), placement.num_layers(),
                           placement.num_experts());
    out << "| rank | node | slots (all layers) | distinct experts | expert bytes |\n";
    out << "|-----:|-----:|-------------------:|-----------------:|-------------:|\n";
  }
  for (int r = 0; r < placement.num_ranks(); ++r) {
    int64_t slots = 0, distinct = 0, bytes = 0;
    nlohmann::json layers = nlohmann::json::array();
    for (int l = 0; l < placement.num_layers(); ++l) {
      std::vector<bool> held(s.num_experts, false);
      std::vector<int32_t> experts;
      for (int32_t e : placement.RankExperts(l, r)) {
        ++slots;
        experts.push_back(e);
        if (!held[e]) {
          held[e] = true;
          ++distinct;
          bytes += ExpertBytes(model, l, e);
        }
      }
      layers.push_back(experts);
    }
    if (json) {
      ranks.push_back({{"rank", r},
                       {"node", placement.NodeOfRank(r)},
                       {"slots", slots},
                       {"distinct_experts", distinct},
                       {"expert_bytes", bytes},
                       {"experts_per_layer", layers}});
    } else {
      out << absl::StrFormat("| %4d | %4d | %18d | %16d | %12s |\n", r, placement.NodeOfRank(r),
                             slots, distinct, HumanBytes(static_cast<double>(bytes)));
    }
  }
  if (json) {
    out << nlohmann::json({{"num_ranks", placement.num_ranks()},
                           {"num_nodes", placement.num_nodes()},
                           {"ranks", ranks}})
               .dump(2)
        << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunInspectCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kInspectFlags));
  if (flags.Has("help")) {
    out << "usage: herd inspect --model PATH [--json] [--tensors] [--placement FILE]\n"
        << FlagsHelp(kInspectFlags);
    return absl::OkStatus();
  }
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model is required");
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadModel(flags.GetString("model")));
  const ModelSpec& s = model->spec;

  std::map<std::string, Totals> by_module;
  std::map<std::string, int> by_dtype;
  Totals total;
  for (const TensorRecord& t : model->tensors) {
    Totals& m = by_module[ModuleKindName(t.module)];
    m.parameters += t.view.num_elements();
    m.bytes += t.view.num_bytes();
    total.parameters += t.view.num_elements();
    total.bytes += t.view.num_bytes();
    ++by_dtype[TypeName(t.view)];
  }
  // Trimming (Herd checkpoints): experts and MoE sublayers that are gone.
  int64_t stored_experts = 0, moe_layers = 0;
  std::vector<int> dropped_moe_layers;
  for (int l = 0; l < static_cast<int>(model->layers.size()); ++l) {
    const LayerWeights& w = model->layers[l];
    if (w.moe_dropped) {
      dropped_moe_layers.push_back(l);
      continue;
    }
    ++moe_layers;
    for (int e = 0; e < s.num_experts; ++e) stored_experts += w.ExpertExists(e);
  }
  const int64_t dropped_experts = moe_layers * s.num_experts - stored_experts;
  // Active parameters per token: everything but the experts, plus top-k of
  // them in every layer that has experts.
  const int64_t expert_params = by_module["experts"].parameters;
  const int64_t per_expert = stored_experts > 0 ? expert_params / stored_experts : 0;
  const int64_t active =
      total.parameters - expert_params + per_expert * s.num_experts_per_token * moe_layers;

  if (flags.Has("placement")) {
    HERD_ASSIGN_OR_RETURN(ExpertPlacement placement,
                          ReadPlacementFile(flags.GetString("placement")));
    return PrintPlacement(*model, placement, flags.Has("json"), out);
  }

  if (flags.Has("json")) {
    nlohmann::json j;
    j["path"] = model->source_path;
    j["format"] = model->format;
    j["architecture"] = ArchitectureName(s.architecture);
    j["name"] = s.name;
    j["vocab_size"] = s.vocab_size;
    j["hidden_size"] = s.hidden_size;
    j["num_layers"] = s.num_layers;
    j["num_heads"] = s.num_heads;
    j["num_kv_heads"] = s.num_kv_heads;
    j["head_dim"] = s.head_dim;
    j["num_experts"] = s.num_experts;
    j["num_experts_per_token"] = s.num_experts_per_token;
    j["expert_ffn_size"] = s.expert_ffn_size;
    j["shared_expert_ffn_size"] = s.shared_expert_ffn_size;
    j["router_scoring"] = RouterScoringName(s.router_scoring);
    j["norm_topk_prob"] = s.norm_topk_prob;
    j["rope_style"] = RopeStyleName(s.rope_style);
    j["rope_theta"] = s.rope_theta;
    j["context_length"] = s.context_length;
    j["parameters"] = total.parameters;
    j["active_parameters_per_token"] = active;
    j["bytes"] = total.bytes;
    for (const auto& [name, m] : by_module) {
      j["modules"][name] = {{"parameters", m.parameters}, {"bytes", m.bytes}};
    }
    for (const auto& [name, count] : by_dtype) j["tensor_types"][name] = count;
    j["dropped_experts"] = dropped_experts;
    j["dropped_moe_layers"] = dropped_moe_layers;
    if (flags.Has("tensors")) {
      for (const TensorRecord& t : model->tensors) {
        nlohmann::json shape = nlohmann::json::array();
        for (int i = 0; i < t.view.rank(); ++i) shape.push_back(t.view.dim(i));
        j["tensors"].push_back({{"name", t.name},
                                {"dtype", TypeName(t.view)},
                                {"shape", shape},
                                {"module", ModuleKindName(t.module)},
                                {"bytes", t.view.num_bytes()}});
      }
    }
    out << j.dump(2) << "\n";
    return absl::OkStatus();
  }

  out << absl::StrFormat("model         %s (%s)\n", model->source_path, model->format);
  out << absl::StrFormat("architecture  %s%s\n", ArchitectureName(s.architecture),
                         s.name.empty() ? "" : "  \"" + s.name + "\"");
  out << absl::StrFormat("shape         vocab %d, hidden %d, layers %d, heads %d (kv %d, dim %d)\n",
                         s.vocab_size, s.hidden_size, s.num_layers, s.num_heads, s.num_kv_heads,
                         s.head_dim);
  out << absl::StrFormat("experts       %d, top-%d, ffn %d, router %s%s\n", s.num_experts,
                         s.num_experts_per_token, s.expert_ffn_size,
                         RouterScoringName(s.router_scoring),
                         s.norm_topk_prob ? " (top-k renormalised)" : "");
  if (dropped_experts > 0 || !dropped_moe_layers.empty()) {
    out << absl::StrFormat(
        "trimmed       %d experts dropped; MoE sublayers dropped in layers [%s]\n", dropped_experts,
        absl::StrJoin(dropped_moe_layers, ", "));
  }
  if (s.shared_expert_ffn_size > 0) {
    out << absl::StrFormat("shared expert ffn %d%s\n", s.shared_expert_ffn_size,
                           s.shared_expert_gated ? ", sigmoid-gated" : "");
  }
  out << absl::StrFormat("attention     rope %s theta %g dim %d, rms eps %g, context %d%s%s\n",
                         RopeStyleName(s.rope_style), s.rope_theta, s.rope_dim, s.rms_norm_eps,
                         s.context_length, s.attention_bias ? ", qkv bias" : "",
                         s.qk_norm == QkNorm::kNone ? "" : ", q/k norm");
  out << absl::StrFormat("parameters    %d (%d active per token)\n", total.parameters, active);
  out << absl::StrFormat("weights       %s\n", HumanBytes(static_cast<double>(total.bytes)));
  out << "bytes by module\n";
  for (const auto& [name, m] : by_module) {
    out << absl::StrFormat("  %-14s %12d params  %12s  %5.1f%%\n", name, m.parameters,
                           HumanBytes(static_cast<double>(m.bytes)),
                           total.bytes ? 100.0 * m.bytes / total.bytes : 0.0);
  }
  out << "tensor types  ";
  bool first = true;
  for (const auto& [name, count] : by_dtype) {
    out << (first ? "" : ", ") << name << " x" << count;
    first = false;
  }
  out << "\n";
  if (flags.Has("tensors")) {
    out << "tensors\n";
    for (const TensorRecord& t : model->tensors) {
      out << absl::StrFormat("  %-40s %-5s %-18s %-13s %s\n", t.name, TypeName(t.view),
                             ShapeString(t.view), ModuleKindName(t.module),
                             HumanBytes(static_cast<double>(t.view.num_bytes())));
    }
  }
  return absl::OkStatus();
}

}  // namespace herd
