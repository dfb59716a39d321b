#include "core/placement.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/status.h"
#include "core/yaml_util.h"
#include "yaml-cpp/yaml.h"

namespace herd {
namespace {

constexpr char kFormat[] = "herd-placement/v1";
// Shares of one expert may be off by this much (rounding in files) before
// they are renormalised; more is an error.
constexpr double kShareSumTolerance = 1e-4;

// splitmix64 finaliser: decorrelates the Weyl sequences of different
// (layer, expert) pairs.
uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// floor(fraction * 2^64), saturating at the top.
uint64_t FractionToU64(double fraction) {
  if (!(fraction > 0.0)) return 0;
  if (fraction >= 1.0) return UINT64_MAX;
  const double scaled = fraction * 18446744073709551616.0;  // 2^64, exact in a double
  if (scaled >= 18446744073709551616.0) return UINT64_MAX;
  return static_cast<uint64_t>(scaled);
}

}  // namespace

LayerPlacementSpec LayerPlacementSpec::FromRanks(
    const std::vector<std::vector<int32_t>>& rank_experts,
    const std::vector<std::vector<double>>& rank_shares) {
  LayerPlacementSpec spec;
  spec.rank_offsets.push_back(0);
  for (const auto& row : rank_experts) {
    spec.slot_expert.insert(spec.slot_expert.end(), row.begin(), row.end());
    spec.rank_offsets.push_back(static_cast<int32_t>(spec.slot_expert.size()));
  }
  for (const auto& row : rank_shares) {
    spec.slot_share.insert(spec.slot_share.end(), row.begin(), row.end());
  }
  return spec;
}

LayerPlacementSpec LayerPlacementSpec::Uniform(int num_ranks, int slots_per_rank,
                                               std::vector<int32_t> slot_expert,
                                               std::vector<double> slot_share) {
  LayerPlacementSpec spec;
  spec.rank_offsets.resize(num_ranks + 1);
  for (int r = 0; r <= num_ranks; ++r) spec.rank_offsets[r] = r * slots_per_rank;
  spec.slot_expert = std::move(slot_expert);
  spec.slot_share = std::move(slot_share);
  return spec;
}

absl::StatusOr<ExpertPlacement> ExpertPlacement::Create(int num_experts, int num_ranks,
                                                        int num_nodes,
                                                        std::vector<LayerPlacementSpec> layers) {
  if (num_experts <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_experts must be > 0, got ", num_experts));
  }
  if (num_ranks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_ranks must be > 0, got ", num_ranks));
  }
  if (num_nodes <= 0 || num_ranks % num_nodes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_nodes (", num_nodes, ") must be > 0 and divide num_ranks (", num_ranks, ")"));
  }
  if (layers.empty()) return absl::InvalidArgumentError("a placement needs at least one layer");
  ExpertPlacement p;
  p.num_experts_ = num_experts;
  p.num_ranks_ = num_ranks;
  p.num_nodes_ = num_nodes;
  p.layers_.resize(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    LayerPlacementSpec& spec = layers[l];
    Layer& out = p.layers_[l];
    const int num_slots = static_cast<int>(spec.slot_expert.size());
    if (static_cast<int>(spec.rank_offsets.size()) != num_ranks + 1) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": has ",
                                                     static_cast<int>(spec.rank_offsets.size()) - 1,
                                                     " ranks, expected num_ranks = ", num_ranks));
    }
    if (spec.rank_offsets[0] != 0 || spec.rank_offsets[num_ranks] != num_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("layer ", l, ": rank slot offsets do not cover its ", num_slots, " slots"));
    }
    for (int r = 0; r < num_ranks; ++r) {
      if (spec.rank_offsets[r + 1] < spec.rank_offsets[r]) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", l, ": rank ", r, " has a negative slot count"));
      }
    }
    const bool has_shares = !spec.slot_share.empty();
    if (has_shares && static_cast<int>(spec.slot_share.size()) != num_slots) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": ", spec.slot_share.size(),
                                                     " shares for ", num_slots, " slots"));
    }
    out.slot_rank.resize(num_slots);
    for (int r = 0; r < num_ranks; ++r) {
      for (int s = spec.rank_offsets[r]; s < spec.rank_offsets[r + 1]; ++s) {
        const int32_t e = spec.slot_expert[s];
        if (e < 0 || e >= num_experts) {
          return absl::InvalidArgumentError(absl::StrCat("layer ", l, " rank ", r, ": expert id ",
                                                         e, " is outside [0, ", num_experts, ")"));
        }
        if (has_shares && (!std::isfinite(spec.slot_share[s]) || spec.slot_share[s] < 0.0)) {
          return absl::InvalidArgumentError(absl::StrCat("layer ", l, " rank ", r, ": share ",
                                                         spec.slot_share[s], " of expert ", e,
                                                         " must be >= 0"));
        }
        out.slot_rank[s] = r;
      }
    }
    out.rank_offsets = std::move(spec.rank_offsets);
    out.slot_expert = std::move(spec.slot_expert);
    out.slot_share = has_shares ? std::move(spec.slot_share) : std::vector<double>(num_slots);
    // Group slots by expert (counting sort keeps slot order within an expert).
    out.expert_offsets.assign(num_experts + 1, 0);
    for (int32_t e : out.slot_expert) ++out.expert_offsets[e + 1];
    for (int e = 0; e < num_experts; ++e) {
      if (out.expert_offsets[e + 1] == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "layer ", l, ": expert ", e, " has no replica (every expert needs at least one slot)"));
      }
      out.expert_offsets[e + 1] += out.expert_offsets[e];
    }
    out.replica_slots.resize(num_slots);
    {
      std::vector<int32_t> fill(out.expert_offsets.begin(), out.expert_offsets.end() - 1);
      for (int s = 0; s < num_slots; ++s) out.replica_slots[fill[out.slot_expert[s]]++] = s;
    }
    // Shares: even split by default; given shares are checked and renormalised.
    out.replica_upper.resize(num_slots);
    for (int e = 0; e < num_experts; ++e) {
      const int begin = out.expert_offsets[e], end = out.expert_offsets[e + 1];
      const int count = end - begin;
      if (!has_shares) {
        if (count == 1) {
          out.slot_share[out.replica_slots[begin]] = 1.0;
          out.replica_upper[begin] = UINT64_MAX;
          continue;
        }
        const double share = 1.0 / count;
        for (int i = begin; i < end; ++i) {
          out.slot_share[out.replica_slots[i]] = share;
          out.replica_upper[i] = FractionToU64(static_cast<double>(i - begin + 1) * share);
        }
        continue;
      }
      double sum = 0.0;
      for (int i = begin; i < end; ++i) sum += out.slot_share[out.replica_slots[i]];
      if (std::fabs(sum - 1.0) > kShareSumTolerance) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "layer %d: the shares of expert %d's %d replicas sum to %.6g, expected 1", l, e, count,
            sum));
      }
      double cumulative = 0.0;
      for (int i = begin; i < end; ++i) {
        double& share = out.slot_share[out.replica_slots[i]];
        share /= sum;
        cumulative += share;
        out.replica_upper[i] = FractionToU64(cumulative);
      }
    }
  }
  return p;
}

absl::StatusOr<ExpertPlacement> ExpertPlacement::Contiguous(int num_layers, int num_experts,
                                                            int num_ranks, int num_nodes) {
  if (num_layers <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_layers must be > 0, got ", num_layers));
  }
  if (num_experts <= 0 || num_ranks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_experts (", num_experts, ") and num_ranks (", num_ranks, ") must be > 0"));
  }
  std::vector<std::vector<int32_t>> ranks(num_ranks);
  for (int e = 0; e < num_experts; ++e) {
    ranks[static_cast<int64_t>(e) * num_ranks / num_experts].push_back(e);
  }
  return Create(num_experts, num_ranks, num_nodes,
                std::vector<LayerPlacementSpec>(num_layers, LayerPlacementSpec::FromRanks(ranks)));
}

int ExpertPlacement::UniformSlotsPerRank() const {
  if (layers_.empty()) return -1;
  const int slots = RankSlotEnd(0, 0) - RankSlotBegin(0, 0);
  for (int l = 0; l < num_layers(); ++l) {
    for (int r = 0; r < num_ranks_; ++r) {
      if (RankSlotEnd(l, r) - RankSlotBegin(l, r) != slots) return -1;
    }
  }
  return slots;
}

std::span<const int32_t> ExpertPlacement::RankExperts(int layer, int rank) const {
  const Layer& l = layers_[layer];
  return std::span<const int32_t>(l.slot_expert.data() + l.rank_offsets[rank],
                                  l.rank_offsets[rank + 1] - l.rank_offsets[rank]);
}

std::span<const int32_t> ExpertPlacement::ReplicaSlots(int layer, int expert) const {
  const Layer& l = layers_[layer];
  return std::span<const int32_t>(l.replica_slots.data() + l.expert_offsets[expert],
                                  l.expert_offsets[expert + 1] - l.expert_offsets[expert]);
}

bool ExpertPlacement::HasUnevenShares() const {
  for (const Layer& l : layers_) {
    for (int e = 0; e < num_experts_; ++e) {
      const int count = l.expert_offsets[e + 1] - l.expert_offsets[e];
      for (int i = l.expert_offsets[e]; i < l.expert_offsets[e + 1]; ++i) {
        if (std::fabs(l.slot_share[l.replica_slots[i]] - 1.0 / count) > 1e-12) return true;
      }
    }
  }
  return false;
}

int ExpertPlacement::PickReplicaSlot(int layer, int expert, uint64_t token_idx) const {
  const Layer& l = layers_[layer];
  const int begin = l.expert_offsets[expert];
  const int last = l.expert_offsets[expert + 1] - 1;
  if (begin == last) return l.replica_slots[begin];
  // Weyl sequence frac(token_idx * phi^-1 + offset) in 2^-64 fixed point.
  const uint64_t offset =
      Mix64((static_cast<uint64_t>(layer) << 32) ^ static_cast<uint32_t>(expert));
  const uint64_t u = token_idx * 0x9E3779B97F4A7C15ull + offset;
  for (int i = begin; i < last; ++i) {
    if (u < l.replica_upper[i]) return l.replica_slots[i];
  }
  return l.replica_slots[last];
}

LayerPlacementSpec ExpertPlacement::LayerSpec(int layer) const {
  const Layer& l = layers_[layer];
  LayerPlacementSpec spec;
  spec.rank_offsets = l.rank_offsets;
  spec.slot_expert = l.slot_expert;
  spec.slot_share = l.slot_share;
  return spec;
}

// ---------------------------------------------------------------------------
// Files.

namespace {

template <typename T>
absl::Status ReadScalar(const std::string& source, const YAML::Node& node, const std::string& what,
                        T* out) {
  if (!node.IsScalar()) {
    return absl::InvalidArgumentError(
        absl::StrCat(YamlLocation(source, node), ": '", what, "' must be a scalar"));
  }
  try {
    *out = node.as<T>();
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(YamlLocation(source, node), ": '", what,
                                                   "' has the wrong type ('", node.Scalar(), "')"));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status ReadMatrix(const std::string& source, const YAML::Node& node, const std::string& what,
                        std::vector<std::vector<T>>* out) {
  if (!node.IsSequence()) {
    return absl::InvalidArgumentError(absl::StrCat(YamlLocation(source, node), ": '", what,
                                                   "' must be a list (one entry per rank)"));
  }
  out->resize(node.size());
  for (size_t r = 0; r < node.size(); ++r) {
    const YAML::Node row = node[r];
    if (!row.IsSequence()) {
      return absl::InvalidArgumentError(
          absl::StrCat(YamlLocation(source, row), ": '", what, "' of rank ", r, " must be a list"));
    }
    (*out)[r].resize(row.size());
    for (size_t i = 0; i < row.size(); ++i) {
      HERD_RETURN_IF_ERROR(
          ReadScalar(source, row[i], absl::StrCat(what, "[", r, "][", i, "]"), &(*out)[r][i]));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ExpertPlacement> ParseRoot(const std::string& source, const YAML::Node& root) {
  HERD_RETURN_IF_ERROR(CheckYamlKeys(
      source, root, "the placement",
      {"format", "num_experts", "num_ranks", "num_nodes", "num_layers", "metadata", "layers"}));
  for (const char* key : {"format", "num_experts", "num_ranks", "layers"}) {
    if (!root[key]) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": missing key '", key, "'"));
    }
  }
  std::string format;
  HERD_RETURN_IF_ERROR(ReadScalar(source, root["format"], "format", &format));
  if (format != kFormat) {
    return absl::InvalidArgumentError(absl::StrCat(YamlLocation(source, root["format"]),
                                                   ": format is '", format, "', expected '",
                                                   kFormat, "'"));
  }
  int num_experts = 0, num_ranks = 0, num_nodes = 1, num_layers = -1;
  HERD_RETURN_IF_ERROR(ReadScalar(source, root["num_experts"], "num_experts", &num_experts));
  HERD_RETURN_IF_ERROR(ReadScalar(source, root["num_ranks"], "num_ranks", &num_ranks));
  if (root["num_nodes"]) {
    HERD_RETURN_IF_ERROR(ReadScalar(source, root["num_nodes"], "num_nodes", &num_nodes));
  }
  if (root["num_layers"]) {
    HERD_RETURN_IF_ERROR(ReadScalar(source, root["num_layers"], "num_layers", &num_layers));
  }
  std::map<std::string, std::string> metadata;
  if (const YAML::Node meta = root["metadata"]) {
    if (!meta.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(YamlLocation(source, meta), ": 'metadata' must be a mapping"));
    }
    for (const auto& entry : meta) {
      std::string value;
      HERD_RETURN_IF_ERROR(ReadScalar(source, entry.second,
                                      absl::StrCat("metadata.", entry.first.Scalar()), &value));
      metadata[entry.first.Scalar()] = value;
    }
  }
  const YAML::Node layers_node = root["layers"];
  if (!layers_node.IsSequence()) {
    return absl::InvalidArgumentError(
        absl::StrCat(YamlLocation(source, layers_node), ": 'layers' must be a list"));
  }
  if (num_layers >= 0 && static_cast<size_t>(num_layers) != layers_node.size()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": num_layers is ", num_layers,
                                                   " but 'layers' has ", layers_node.size(),
                                                   " entries"));
  }
  std::vector<LayerPlacementSpec> layers(layers_node.size());
  std::vector<std::vector<int32_t>> rank_experts;
  std::vector<std::vector<double>> rank_shares;
  for (size_t l = 0; l < layers_node.size(); ++l) {
    const YAML::Node layer = layers_node[l];
    const std::string what = absl::StrCat("layers[", l, "]");
    HERD_RETURN_IF_ERROR(CheckYamlKeys(source, layer, what, {"layer", "ranks", "shares"}));
    if (const YAML::Node index = layer["layer"]) {
      int value = -1;
      HERD_RETURN_IF_ERROR(ReadScalar(source, index, what + ".layer", &value));
      if (value != static_cast<int>(l)) {
        return absl::InvalidArgumentError(absl::StrCat(YamlLocation(source, index), ": ", what,
                                                       " says layer ", value,
                                                       "; layers must be listed in order"));
      }
    }
    if (!layer["ranks"]) {
      return absl::InvalidArgumentError(
          absl::StrCat(YamlLocation(source, layer), ": ", what, " has no 'ranks'"));
    }
    HERD_RETURN_IF_ERROR(ReadMatrix(source, layer["ranks"], what + ".ranks", &rank_experts));
    rank_shares.clear();
    if (layer["shares"]) {
      HERD_RETURN_IF_ERROR(ReadMatrix(source, layer["shares"], what + ".shares", &rank_shares));
      if (rank_shares.size() != rank_experts.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat(YamlLocation(source, layer["shares"]), ": ", what, ".shares has ",
                         rank_shares.size(), " ranks but .ranks has ", rank_experts.size()));
      }
      for (size_t r = 0; r < rank_shares.size(); ++r) {
        if (rank_shares[r].size() != rank_experts[r].size()) {
          return absl::InvalidArgumentError(absl::StrCat(
              YamlLocation(source, layer["shares"]), ": ", what, ".shares of rank ", r, " has ",
              rank_shares[r].size(), " entries for ", rank_experts[r].size(), " experts"));
        }
      }
    }
    layers[l] = LayerPlacementSpec::FromRanks(rank_experts, rank_shares);
  }
  absl::StatusOr<ExpertPlacement> placement =
      ExpertPlacement::Create(num_experts, num_ranks, num_nodes, std::move(layers));
  if (!placement.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", placement.status().message()));
  }
  placement->set_metadata(std::move(metadata));
  return placement;
}

std::string Number(double v) { return absl::StrFormat("%.9g", v); }

std::string QuoteJson(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// "[e0, e1, ...]": the experts of one rank.
std::string RankList(const ExpertPlacement& p, int layer, int rank) {
  std::string out = "[";
  for (int s = p.RankSlotBegin(layer, rank); s < p.RankSlotEnd(layer, rank); ++s) {
    absl::StrAppend(&out, s > p.RankSlotBegin(layer, rank) ? ", " : "", p.SlotExpert(layer, s));
  }
  return out + "]";
}

std::string ShareList(const ExpertPlacement& p, int layer, int rank) {
  std::string out = "[";
  for (int s = p.RankSlotBegin(layer, rank); s < p.RankSlotEnd(layer, rank); ++s) {
    absl::StrAppend(&out, s > p.RankSlotBegin(layer, rank) ? ", " : "",
                    Number(p.SlotShare(layer, s)));
  }
  return out + "]";
}

}  // namespace

absl::StatusOr<ExpertPlacement> ParsePlacement(const std::string& text,
                                               const std::string& source_name) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ":", e.mark.line + 1, ": invalid YAML/JSON: ", e.msg));
  }
  if (!root || root.IsNull()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": empty placement file"));
  }
  // yaml-cpp throws on some conversions we do not anticipate; keep them inside.
  try {
    return ParseRoot(source_name, root);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ":", e.mark.line + 1, ": ", e.msg));
  }
}

absl::StatusOr<ExpertPlacement> ReadPlacementFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read placement file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParsePlacement(buffer.str(), path);
}

std::string PlacementToYaml(const ExpertPlacement& placement) {
  std::string out;
  absl::StrAppend(
      &out, "# Expert placement: layers[l].ranks[r] lists the logical experts in rank r's\n",
      "# slots for MoE layer l; rank r is on node r / (num_ranks / num_nodes).\n",
      "# shares (when present) give the fraction of an expert's tokens each replica\n",
      "# serves; without them an expert's tokens are split evenly over its replicas.\n");
  absl::StrAppend(&out, "format: ", kFormat, "\n");
  absl::StrAppend(&out, "num_experts: ", placement.num_experts(), "\n");
  absl::StrAppend(&out, "num_ranks: ", placement.num_ranks(), "\n");
  absl::StrAppend(&out, "num_nodes: ", placement.num_nodes(), "\n");
  absl::StrAppend(&out, "num_layers: ", placement.num_layers(), "\n");
  if (!placement.metadata().empty()) {
    absl::StrAppend(&out, "metadata:\n");
    for (const auto& [key, value] : placement.metadata()) {
      absl::StrAppend(&out, "  ", key, ": ", QuoteJson(value), "\n");
    }
  }
  const bool shares = placement.HasUnevenShares();
  absl::StrAppend(&out, "layers:\n");
  for (int l = 0; l < placement.num_layers(); ++l) {
    absl::StrAppend(&out, "  - layer: ", l, "\n    ranks:\n");
    for (int r = 0; r < placement.num_ranks(); ++r) {
      absl::StrAppend(&out, "      - ", RankList(placement, l, r), "\n");
    }
    if (shares) {
      absl::StrAppend(&out, "    shares:\n");
      for (int r = 0; r < placement.num_ranks(); ++r) {
        absl::StrAppend(&out, "      - ", ShareList(placement, l, r), "\n");
      }
    }
  }
  return out;
}

std::string PlacementToJson(const ExpertPlacement& placement) {
  std::string out = "{\n";
  absl::StrAppend(&out, "  \"format\": \"", kFormat, "\",\n");
  absl::StrAppend(&out, "  \"num_experts\": ", placement.num_experts(), ",\n");
  absl::StrAppend(&out, "  \"num_ranks\": ", placement.num_ranks(), ",\n");
  absl::StrAppend(&out, "  \"num_nodes\": ", placement.num_nodes(), ",\n");
  absl::StrAppend(&out, "  \"num_layers\": ", placement.num_layers(), ",\n");
  if (!placement.metadata().empty()) {
    absl::StrAppend(&out, "  \"metadata\": {");
    bool first = true;
    for (const auto& [key, value] : placement.metadata()) {
      absl::StrAppend(&out, first ? "" : ", ", QuoteJson(key), ": ", QuoteJson(value));
      first = false;
    }
    absl::StrAppend(&out, "},\n");
  }
  const bool shares = placement.HasUnevenShares();
  absl::StrAppend(&out, "  \"layers\": [\n");
  for (int l = 0; l < placement.num_layers(); ++l) {
    absl::StrAppend(&out, "    {\"layer\": ", l, ", \"ranks\": [");
    for (int r = 0; r < placement.num_ranks(); ++r) {
      absl::StrAppend(&out, r ? ", " : "", RankList(placement, l, r));
    }
    absl::StrAppend(&out, "]");
    if (shares) {
      absl::StrAppend(&out, ",\n     \"shares\": [");
      for (int r = 0; r < placement.num_ranks(); ++r) {
        absl::StrAppend(&out, r ? ", " : "", ShareList(placement, l, r));
      }
      absl::StrAppend(&out, "]");
    }
    absl::StrAppend(&out, l + 1 < placement.num_layers() ? "},\n" : "}\n");
  }
  absl::StrAppend(&out, "  ]\n}\n");
  return out;
}

absl::Status WritePlacementFile(const ExpertPlacement& placement, const std::string& path) {
  const bool json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  const std::string text = json ? PlacementToJson(placement) : PlacementToYaml(placement);
  return WriteFileAtomically(path, text);
}

}  // namespace herd
