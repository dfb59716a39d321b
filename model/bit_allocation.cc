#include "model/bit_allocation.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "core/status.h"
#include "model/hf_arch.h"

namespace herd {
namespace {

bool ValidBits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8 || bits == 16; }

struct Rule {
  std::string selector;  // "main", "attn", "layer_3", "exp_l3e5", "keyword__w2"
  int bits = 16;
};

absl::StatusOr<Rule> ParseRule(const std::string& text) {
  const size_t cut = text.rfind('_');
  Rule r;
  if (cut == std::string::npos || cut == 0 || !absl::SimpleAtoi(text.substr(cut + 1), &r.bits) ||
      !ValidBits(r.bits)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bit rule '", text, "': expected SELECTOR_BITS with BITS in 2, 3, 4, 8, 16 (e.g. main_2)"));
  }
  r.selector = text.substr(0, cut);
  return r;
}

}  // namespace

std::vector<BitUnit> WeightUnits(const Model& model) {
  const ModelSpec& s = model.spec;
  const HfArchInfo& arch = HfArchitecture(s.architecture);
  std::vector<BitUnit> units;
  const auto add = [&](std::string name, ModuleKind module, int layer, int expert,
                       const TensorView& w) {
    if (w.empty()) return;
    units.push_back(BitUnit{std::move(name), module, layer, expert, w.num_elements(), 16});
  };
  add("model.embed_tokens.weight", ModuleKind::kEmbeddings, -1, -1, model.token_embedding);
  for (int l = 0; l < static_cast<int>(s.num_layers); ++l) {
    const LayerWeights& w = model.layers[l];
    const std::string attn = absl::StrCat("model.layers.", l, ".self_attn.");
    add(attn + "q_proj.weight", ModuleKind::kAttention, l, -1, w.q.weight);
    add(attn + "k_proj.weight", ModuleKind::kAttention, l, -1, w.k.weight);
    add(attn + "v_proj.weight", ModuleKind::kAttention, l, -1, w.v.weight);
    add(attn + "o_proj.weight", ModuleKind::kAttention, l, -1, w.o.weight);
    const std::string moe = absl::StrCat("model.layers.", l, ".", arch.moe_prefix, ".");
    for (int e = 0; e < static_cast<int>(w.experts.size()); ++e) {
      const std::string x = absl::StrCat(moe, "experts.", e, ".");
      add(absl::StrCat(x, arch.gate_proj, ".weight"), ModuleKind::kExperts, l, e,
          w.experts[e].gate);
      add(absl::StrCat(x, arch.up_proj, ".weight"), ModuleKind::kExperts, l, e, w.experts[e].up);
      add(absl::StrCat(x, arch.down_proj, ".weight"), ModuleKind::kExperts, l, e,
          w.experts[e].down);
    }
    const std::string shared = moe + "shared_expert.";
    add(shared + "gate_proj.weight", ModuleKind::kSharedExpert, l, -1, w.shared_expert.gate);
    add(shared + "up_proj.weight", ModuleKind::kSharedExpert, l, -1, w.shared_expert.up);
    add(shared + "down_proj.weight", ModuleKind::kSharedExpert, l, -1, w.shared_expert.down);
  }
  if (!s.tied_embeddings) add("lm_head.weight", ModuleKind::kEmbeddings, -1, -1, model.lm_head);
  return units;
}

absl::Status ApplyBitRules(const std::string& rules, std::vector<BitUnit>* units) {
  int max_layer = -1, max_expert = -1;
  for (const BitUnit& u : *units) {
    max_layer = std::max(max_layer, u.layer);
    max_expert = std::max(max_expert, u.expert);
  }
  const std::vector<std::string> parts = absl::StrSplit(rules, ',', absl::SkipEmpty());
  for (const std::string& text : parts) {
    HERD_ASSIGN_OR_RETURN(const Rule rule, ParseRule(text));
    const std::string& sel = rule.selector;
    int layer = -1, expert = -1;
    std::function<bool(const BitUnit&)> match;
    if (sel == "main") {
      match = [](const BitUnit& u) { return u.module == ModuleKind::kExperts; };
    } else if (sel == "attn") {
      match = [](const BitUnit& u) { return u.module == ModuleKind::kAttention; };
    } else if (sel == "shared") {
      match = [](const BitUnit& u) { return u.module == ModuleKind::kSharedExpert; };
    } else if (sel == "embed") {
      match = [](const BitUnit& u) { return u.module == ModuleKind::kEmbeddings; };
    } else if (absl::StartsWith(sel, "layer_") && absl::SimpleAtoi(sel.substr(6), &layer)) {
      match = [layer](const BitUnit& u) {
        return u.module == ModuleKind::kExperts && u.layer == layer;
      };
    } else if (absl::StartsWith(sel, "exp_l") && sel.find('e', 5) != std::string::npos &&
               absl::SimpleAtoi(sel.substr(5, sel.find('e', 5) - 5), &layer) &&
               absl::SimpleAtoi(sel.substr(sel.find('e', 5) + 1), &expert)) {
      match = [layer, expert](const BitUnit& u) {
        return u.module == ModuleKind::kExperts && u.layer == layer && u.expert == expert;
      };
    } else if (absl::StartsWith(sel, "keyword__") && absl::EndsWith(sel, "_") && sel.size() > 11) {
      const std::string keyword = sel.substr(9, sel.size() - 10);
      match = [keyword](const BitUnit& u) { return absl::StrContains(u.name, keyword); };
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "bit rule '", text,
          "': unknown selector (main, attn, shared, embed, layer_L, exp_lLeE, keyword__TEXT_)"));
    }
    if (layer > max_layer || expert > max_expert || (layer < -1) || (expert < -1)) {
      return absl::InvalidArgumentError(absl::StrCat("bit rule '", text, "': the model has ",
                                                     max_layer + 1, " layers and ", max_expert + 1,
                                                     " experts per layer"));
    }
    for (BitUnit& u : *units) {
      if (match(u)) u.bits = rule.bits;
    }
  }
  return absl::OkStatus();
}

double QuantizedAverageBits(const std::vector<BitUnit>& units) {
  double bits = 0, values = 0;
  for (const BitUnit& u : units) {
    if (u.bits >= 16) continue;
    bits += static_cast<double>(u.bits) * u.num_values;
    values += static_cast<double>(u.num_values);
  }
  return values > 0 ? bits / values : 0.0;
}

double AverageBits(const std::vector<BitUnit>& units) {
  double bits = 0, values = 0;
  for (const BitUnit& u : units) {
    bits += static_cast<double>(u.bits) * u.num_values;
    values += static_cast<double>(u.num_values);
  }
  return values > 0 ? bits / values : 0.0;
}

double OutlierScore(const TensorView& weight) {
  const int64_t rows = weight.dim(0), cols = weight.dim(1);
  std::vector<double> max_abs(cols, 0.0), sum_abs(cols, 0.0);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < rows; ++r) {
    if (weight.dtype() == DType::kQuant) {
      DequantizeQuantizedRow(weight.quant_format(), weight.quantized(), cols, r, row.data());
    } else {
      DequantizeRow(weight.dtype(), weight.row(r), row.data(), cols);
    }
    for (int64_t c = 0; c < cols; ++c) {
      const double a = std::fabs(row[c]);
      max_abs[c] = std::max(max_abs[c], a);
      sum_abs[c] += a;
    }
  }
  double score = 0.0;
  for (int64_t c = 0; c < cols; ++c) {
    const double mean = sum_abs[c] / static_cast<double>(rows);
    if (mean > 0.0) score = std::max(score, max_abs[c] / mean);
  }
  return score;
}

int RaiseUntilAverage(const std::vector<size_t>& ranked, int high_bits, double target_bits,
                      std::vector<BitUnit>* units) {
  int raised = 0;
  for (size_t i : ranked) {
    if (QuantizedAverageBits(*units) >= target_bits) break;
    BitUnit& u = (*units)[i];
    if (u.bits >= high_bits) continue;
    u.bits = high_bits;
    ++raised;
  }
  return raised;
}

}  // namespace herd
