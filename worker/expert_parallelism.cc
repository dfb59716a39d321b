#include "worker/expert_parallelism.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd {

absl::Status CheckRankHoldsItsExperts(const Model& model, const ExpertParallelism& ep) {
  if (ep.comm != nullptr && ep.placement == nullptr) {
    return absl::InvalidArgumentError("expert parallelism needs a placement");
  }
  if (ep.comm != nullptr) {
    HERD_RETURN_IF_ERROR(CheckPlacementShape(*ep.placement, model.spec, ep.comm->world_size()));
  }
  for (size_t l = 0; l < model.layers.size(); ++l) {
    std::vector<bool> needed(model.layers[l].experts.size(), ep.comm == nullptr);
    if (ep.comm != nullptr) {
      for (int32_t e : ep.placement->RankExperts(static_cast<int>(l), ep.comm->rank())) {
        needed[e] = true;
      }
    }
    for (size_t e = 0; e < needed.size(); ++e) {
      if (needed[e] && model.layers[l].ExpertExists(static_cast<int>(e)) &&
          !model.layers[l].experts[e].resident()) {
        return absl::InvalidArgumentError(absl::StrCat(
            ep.comm == nullptr ? "the single-rank engine needs every expert; "
                               : "this rank's placement needs an expert that was not loaded: ",
            "layer ", l, " expert ", e));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPlacementShape(const ExpertPlacement& p, const ModelSpec& spec, int num_ranks) {
  if (p.num_layers() != spec.num_layers || p.num_experts() != spec.num_experts ||
      p.num_ranks() != num_ranks) {
    return absl::InvalidArgumentError(
        absl::StrCat("the placement has ", p.num_layers(), " layers x ", p.num_experts(),
                     " experts on ", p.num_ranks(), " ranks, but the model has ", spec.num_layers,
                     " x ", spec.num_experts, " and the group ", num_ranks, " ranks"));
  }
  return absl::OkStatus();
}

int64_t PickDestinationRanks(const ExpertPlacement& placement, int layer_idx, int rank,
                             const int32_t* expert_idx, int64_t num_slots, int32_t* dest_rank) {
  int64_t num_sent = 0;
  for (int64_t slot = 0; slot < num_slots; ++slot) {
    const uint64_t token_key = (static_cast<uint64_t>(rank) << 32) | static_cast<uint64_t>(slot);
    dest_rank[slot] = expert_idx[slot] < 0  // skipped: not sent, combined as zeros
                          ? -1
                          : placement.PickReplicaRank(layer_idx, expert_idx[slot], token_key);
    num_sent += dest_rank[slot] >= 0;
  }
  return num_sent;
}

absl::StatusOr<int64_t> AgreeOnStepCount(comm::Communicator& comm, int64_t num_steps,
                                         absl::Time deadline) {
  std::vector<int64_t> all(comm.world_size());
  HERD_RETURN_IF_ERROR(comm.AllGather(&num_steps, sizeof(int64_t), all.data(), deadline));
  return std::max<int64_t>(1, *std::max_element(all.begin(), all.end()));
}

}  // namespace herd
