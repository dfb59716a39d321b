#include "worker/rank_model.h"

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "model/model_loader.h"

namespace herd {

absl::StatusOr<RankModel> LoadModelForRank(const std::string& path, comm::Communicator* comm,
                                           const std::optional<ExpertPlacement>& placement) {
  RankModel result;
  if (comm == nullptr) {
    HERD_ASSIGN_OR_RETURN(result.model, LoadModel(path));
    return result;
  }
  result.placement = placement;
  if (!result.placement.has_value()) {
    // The contiguous split needs the model's shape: read it without experts.
    ModelLoadOptions shape_only;
    shape_only.load_expert = [](int, int) { return false; };
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> shape, LoadModel(path, shape_only));
    HERD_ASSIGN_OR_RETURN(
        result.placement,
        ExpertPlacement::Contiguous(static_cast<int>(shape->spec.num_layers),
                                    static_cast<int>(shape->spec.num_experts), comm->world_size()));
  }
  const ExpertPlacement& p = *result.placement;
  const int rank = comm->rank();
  ModelLoadOptions load;
  load.load_expert = [&](int layer, int expert) {
    if (layer >= p.num_layers()) return false;
    for (int32_t e : p.RankExperts(layer, rank)) {
      if (e == expert) return true;
    }
    return false;
  };
  HERD_ASSIGN_OR_RETURN(result.model, LoadModel(path, load));
  return result;
}

}  // namespace herd
