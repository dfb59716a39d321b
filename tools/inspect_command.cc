#include <algorithm>
#include <map>
#include <optional>
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
#include "tools/device.h"
#include "tools/flags.h"
#include "worker/kv_cache.h"

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
    {"device", true,
     "cuda: print what the GPU engine would allocate (weights, step buffers, KV) and whether "
     "it fits, without using a GPU"},
    {"context", true,
     "with --device cuda: KV cache positions to plan for (default: the "
     "model's context length)"},
    {"gpu-memory", true,
     "with --device cuda: the GPU's memory in bytes (default: this machine's GPU, if any)"},
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

// --device cuda: what CudaEngine::Create would allocate, by part, for every
// expert or (with a placement) for each rank's share, and whether it fits.
absl::Status PrintCudaPlan(const Model& model, const ExpertPlacement* placement, int64_t kv_tokens,
                           int64_t gpu_memory, const std::string& gpu_name, bool json,
                           std::ostream& out) {
  struct Row {
    std::string who;
    CudaMemoryPlan plan;
  };
  std::vector<Row> rows;
  if (placement == nullptr) {
    HERD_ASSIGN_OR_RETURN(CudaMemoryPlan plan, PlanCudaMemory(model));
    rows.push_back({"one GPU", plan});
  } else {
    const ModelSpec& s = model.spec;
    if (placement->num_layers() != s.num_layers || placement->num_experts() != s.num_experts) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "the placement has %d layers x %d experts, the model %d x %d", placement->num_layers(),
          placement->num_experts(), s.num_layers, s.num_experts));
    }
    for (int r = 0; r < placement->num_ranks(); ++r) {
      const auto holds = [&](int layer, int expert) {
        for (int32_t e : placement->RankExperts(layer, r)) {
          if (e == expert) return true;
        }
        return false;
      };
      HERD_ASSIGN_OR_RETURN(CudaMemoryPlan plan, PlanCudaMemory(model, holds));
      rows.push_back({absl::StrFormat("rank %d", r), plan});
    }
  }
  const auto fits = [&](const CudaMemoryPlan& p) { return p.Total(kv_tokens) <= gpu_memory; };
  if (json) {
    nlohmann::json j;
    j["kv_tokens"] = kv_tokens;
    if (gpu_memory > 0) j["gpu_memory_bytes"] = gpu_memory;
    if (!gpu_name.empty()) j["gpu"] = gpu_name;
    for (const Row& r : rows) {
      const CudaMemoryPlan& p = r.plan;
      nlohmann::json row = {{"who", r.who},
                            {"embedding_bytes", p.embedding},
                            {"attention_bytes", p.attention},
                            {"router_bytes", p.router},
                            {"expert_bytes", p.experts},
                            {"lm_head_bytes", p.lm_head},
                            {"norm_and_bias_bytes", p.norms_and_biases},
                            {"step_buffer_bytes", p.step_buffers},
                            {"kv_bytes_per_token", p.kv_bytes_per_token},
                            {"kv_bytes", p.kv_bytes_per_token * kv_tokens},
                            {"total_bytes", p.Total(kv_tokens)}};
      if (gpu_memory > 0) row["fits"] = fits(p);
      j["plan"].push_back(row);
    }
    out << j.dump(2) << "\n";
    return absl::OkStatus();
  }
  const auto b = [](int64_t bytes) { return HumanBytes(static_cast<double>(bytes)); };
  out << absl::StrFormat("GPU plan (--device cuda) for %s, KV cache of %d positions (F32)\n",
                         model.source_path, kv_tokens);
  out << "| who | embedding | attention | router | experts | lm head | step buffers | KV | "
         "total | fits |\n";
  out << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
  for (const Row& r : rows) {
    const CudaMemoryPlan& p = r.plan;
    out << absl::StrFormat("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.who,
                           b(p.embedding), b(p.attention), b(p.router), b(p.experts), b(p.lm_head),
                           b(p.step_buffers + p.norms_and_biases),
                           b(p.kv_bytes_per_token * kv_tokens), b(p.Total(kv_tokens)),
                           gpu_memory <= 0 ? "?"
                           : fits(p)       ? "yes"
                                           : "no");
  }
  if (gpu_memory > 0) {
    const int64_t worst =
        std::max_element(rows.begin(), rows.end(), [&](const Row& a, const Row& c) {
          return a.plan.Total(kv_tokens) < c.plan.Total(kv_tokens);
        })->plan.Total(kv_tokens);
    out << absl::StrFormat(
        "GPU memory %s%s; the largest plan leaves %s\n", b(gpu_memory),
        gpu_name.empty() ? "" : " (" + gpu_name + ")",
        worst <= gpu_memory ? b(gpu_memory - worst) : "nothing: short by " + b(worst - gpu_memory));
  } else {
    out << "no GPU here and no --gpu-memory: pass --gpu-memory BYTES to check the fit\n";
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunInspectCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kInspectFlags));
  if (flags.Has("help")) {
    out << "usage: herd inspect --model PATH [--json] [--tensors] [--placement FILE] "
           "[--device cuda [--context N] [--gpu-memory BYTES]]\n"
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

  HERD_ASSIGN_OR_RETURN(const Device device, ParseDevice(flags.GetString("device", "cpu")));
  if (device == Device::kCuda) {
    HERD_ASSIGN_OR_RETURN(const int64_t kv_tokens, flags.GetInt("context", s.context_length));
    HERD_ASSIGN_OR_RETURN(int64_t gpu_memory, flags.GetInt("gpu-memory", 0));
    if (kv_tokens < 0 || gpu_memory < 0) {
      return absl::InvalidArgumentError("--context and --gpu-memory must be >= 0");
    }
    std::string gpu_name;
    if (!flags.Has("gpu-memory")) {
      const absl::StatusOr<GpuMemory> gpu = QueryGpuMemory();
      if (gpu.ok()) {
        gpu_memory = gpu->total_bytes;
        gpu_name = gpu->name;
      }
    }
    std::optional<ExpertPlacement> placement;
    if (flags.Has("placement")) {
      HERD_ASSIGN_OR_RETURN(placement, ReadPlacementFile(flags.GetString("placement")));
    }
    return PrintCudaPlan(*model, placement ? &*placement : nullptr, kv_tokens, gpu_memory, gpu_name,
                         flags.Has("json"), out);
  }

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
    j["kv_cache_bytes_per_token"] = {{"f32", KvCache::BytesPerBlock(s, 1, DType::kF32)},
                                     {"f16", KvCache::BytesPerBlock(s, 1, DType::kF16)}};
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
  // What a token of context costs in the KV cache (--kv-cache-type), and the
  // model's whole context.
  const int64_t kv_f32 = KvCache::BytesPerBlock(s, 1, DType::kF32);
  const int64_t kv_f16 = KvCache::BytesPerBlock(s, 1, DType::kF16);
  out << absl::StrFormat("kv cache      %s per token at f32, %s at f16; context %d: %s / %s\n",
                         HumanBytes(static_cast<double>(kv_f32)),
                         HumanBytes(static_cast<double>(kv_f16)), s.context_length,
                         HumanBytes(static_cast<double>(kv_f32) * s.context_length),
                         HumanBytes(static_cast<double>(kv_f16) * s.context_length));
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
