// Expert placement: which logical experts each rank holds in every MoE layer,
// and how a replicated expert's tokens are split across its replicas.
//
// `herd plan` writes it, and the expert-parallel runtime loads it
// (`--placement FILE`). Per layer, rank r holds an ordered list of logical
// experts; each entry is a physical slot. Slots are numbered rank by rank:
// rank r owns slots [RankSlotBegin(l, r), RankSlotEnd(l, r)). An expert held
// by several slots has replicas; `share` gives the fraction of the expert's
// tokens each replica serves (the shares of one expert sum to 1; an even split
// is 1/replicas each). Rank r belongs to node r / ranks_per_node.
//
// File format (YAML; JSON with the same keys is read too, and written when the
// path ends in .json):
//
//   format: herd-placement/v1
//   num_experts: 8
//   num_ranks: 4
//   num_nodes: 1                 # optional, default 1; must divide num_ranks
//   num_layers: 2                # optional; checked against `layers`
//   metadata: {planner: herd plan}   # optional scalars, kept but not interpreted
//   layers:
//     - ranks: [[0, 1, 7], [2, 3, 7], [4, 5, 6], [6, 0, 1]]
//       shares: [[0.5, 1, 0.4], [1, 1, 0.6], [1, 1, 0.5], [0.5, 0.5, 0]]  # optional
//
// Every expert must have at least one replica in every layer (a token may be
// routed to any expert). Unknown keys, out-of-range ids and shares that do not
// sum to 1 are InvalidArgument errors naming the file, layer and expert.
// An ExpertPlacement is immutable and safe to share between threads.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace herd {

// What a placement file or planner gives for one layer, before validation.
// Flat arrays: rank r owns slots [rank_offsets[r], rank_offsets[r + 1]).
struct LayerPlacementSpec {
  std::vector<int32_t> rank_offsets;  // I32 [num_ranks + 1], rank_offsets[0] = 0
  std::vector<int32_t> slot_expert;   // I32 [num_slots]: the logical expert in each slot
  // F64 [num_slots]: share of its expert's tokens each slot serves; empty =
  // even split over the expert's replicas.
  std::vector<double> slot_share;

  // From per-rank lists (rank_experts[r] = experts in rank r's slots) and
  // optional per-rank shares of the same shape (empty = even split).
  static LayerPlacementSpec FromRanks(const std::vector<std::vector<int32_t>>& rank_experts,
                                      const std::vector<std::vector<double>>& rank_shares = {});
  // `num_ranks` ranks of `slots_per_rank` slots each holding `slot_expert`.
  static LayerPlacementSpec Uniform(int num_ranks, int slots_per_rank,
                                    std::vector<int32_t> slot_expert,
                                    std::vector<double> slot_share = {});
};

class ExpertPlacement {
 public:
  ExpertPlacement() = default;

  // Validates and indexes a placement. `layers[l].rank_offsets` must have
  // num_ranks + 1 non-decreasing entries ending at the slot count, shares (if
  // any) one per slot; num_nodes must divide num_ranks; every expert id must be
  // in [0, num_experts) and appear at least once per layer; shares, when
  // given, must be finite, >= 0 and sum to 1 (within 1e-4, then renormalised)
  // per expert. InvalidArgument naming the layer, rank and expert otherwise.
  static absl::StatusOr<ExpertPlacement> Create(int num_experts, int num_ranks, int num_nodes,
                                                std::vector<LayerPlacementSpec> layers);

  // The default split with no replicas: expert e of every layer sits on rank
  // e * num_ranks / num_experts (blocks of consecutive experts; when
  // num_experts does not divide evenly the first ranks may hold one fewer,
  // and when num_ranks > num_experts some ranks hold nothing).
  static absl::StatusOr<ExpertPlacement> Contiguous(int num_layers, int num_experts, int num_ranks,
                                                    int num_nodes = 1);

  int num_layers() const { return static_cast<int>(layers_.size()); }
  int num_experts() const { return num_experts_; }
  int num_ranks() const { return num_ranks_; }
  int num_nodes() const { return num_nodes_; }
  int ranks_per_node() const { return num_ranks_ / num_nodes_; }
  int NodeOfRank(int rank) const { return rank / ranks_per_node(); }

  int NumSlots(int layer) const { return static_cast<int>(layers_[layer].slot_expert.size()); }
  int RankSlotBegin(int layer, int rank) const { return layers_[layer].rank_offsets[rank]; }
  int RankSlotEnd(int layer, int rank) const { return layers_[layer].rank_offsets[rank + 1]; }
  // The slot count every rank has in every layer, or -1 if they differ.
  int UniformSlotsPerRank() const;
  // Logical experts held by `rank` in `layer`, in slot order.
  std::span<const int32_t> RankExperts(int layer, int rank) const;
  int32_t SlotExpert(int layer, int slot) const { return layers_[layer].slot_expert[slot]; }
  int32_t SlotRank(int layer, int slot) const { return layers_[layer].slot_rank[slot]; }
  double SlotShare(int layer, int slot) const { return layers_[layer].slot_share[slot]; }
  // Slots holding `expert` in `layer`, ascending.
  std::span<const int32_t> ReplicaSlots(int layer, int expert) const;
  int NumReplicas(int layer, int expert) const {
    return static_cast<int>(ReplicaSlots(layer, expert).size());
  }
  // True when some expert's shares differ from an even split.
  bool HasUnevenShares() const;

  // The replica slot that serves token `token_idx` of `expert` in `layer`.
  // Deterministic: the same arguments give the same slot on every rank and
  // machine (integer arithmetic only). It follows a golden-ratio (Weyl)
  // sequence over token_idx, so over any N consecutive token indices each
  // replica serves N * share tokens to within a few tokens. Thread-safe.
  int PickReplicaSlot(int layer, int expert, uint64_t token_idx) const;
  int PickReplicaRank(int layer, int expert, uint64_t token_idx) const {
    return SlotRank(layer, PickReplicaSlot(layer, expert, token_idx));
  }

  // Free-form key/value notes carried through files (who planned it, scores).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  void set_metadata(std::map<std::string, std::string> metadata) {
    metadata_ = std::move(metadata);
  }

  // The layer's spec as Create takes it (shares always filled).
  LayerPlacementSpec LayerSpec(int layer) const;
  // The slots of one layer, rank-major: I32 [num_slots].
  const std::vector<int32_t>& SlotExperts(int layer) const { return layers_[layer].slot_expert; }

 private:
  struct Layer {
    std::vector<int32_t> rank_offsets;    // I32 [num_ranks + 1]
    std::vector<int32_t> slot_expert;     // I32 [num_slots]
    std::vector<int32_t> slot_rank;       // I32 [num_slots]
    std::vector<double> slot_share;       // F64 [num_slots]
    std::vector<int32_t> expert_offsets;  // I32 [num_experts + 1] into replica_slots
    std::vector<int32_t> replica_slots;   // I32 [num_slots], grouped by expert
    // U64 [num_slots]: for replica i of an expert (in replica_slots order),
    // the upper end of its interval in 2^-64 units; the last replica's is
    // unused (it takes everything above the previous one).
    std::vector<uint64_t> replica_upper;
  };

  int num_experts_ = 0;
  int num_ranks_ = 0;
  int num_nodes_ = 1;
  std::vector<Layer> layers_;
  std::map<std::string, std::string> metadata_;
};

// Parses a placement from YAML or JSON text; `source_name` (a path) prefixes
// error messages.
absl::StatusOr<ExpertPlacement> ParsePlacement(const std::string& text,
                                               const std::string& source_name);
// Reads a placement file; NotFound if it cannot be read.
absl::StatusOr<ExpertPlacement> ReadPlacementFile(const std::string& path);

// The file text. Shares are written only when some split is uneven.
std::string PlacementToYaml(const ExpertPlacement& placement);
std::string PlacementToJson(const ExpertPlacement& placement);
// Writes YAML, or JSON when `path` ends in ".json", to a temporary name and
// renames it into place. PermissionDenied/DataLoss on I/O errors.
absl::Status WritePlacementFile(const ExpertPlacement& placement, const std::string& path);

}  // namespace herd
