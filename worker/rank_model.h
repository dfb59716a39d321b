// Loading the model as one rank of an expert-parallel group sees it.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "comm/communicator.h"
#include "core/placement.h"
#include "model/model.h"

namespace herd {

struct RankModel {
  std::unique_ptr<Model> model;
  // The placement in force (the one given, or the contiguous split); empty
  // for a single rank.
  std::optional<ExpertPlacement> placement;
};

// Single rank (comm == nullptr): the whole model. Otherwise only the experts
// `placement` gives comm->rank() are mapped; without a placement, the
// contiguous split of the model's experts over the group. Errors: the
// loader's, and the placement's shape against the model's.
absl::StatusOr<RankModel> LoadModelForRank(const std::string& path, comm::Communicator* comm,
                                           const std::optional<ExpertPlacement>& placement);

}  // namespace herd
