// The routed experts one rank holds, packed for the CPU kernels: the part of
// an engine's weights that online rebalancing replaces while serving.
//
// A table is immutable once built and shared (std::shared_ptr<const
// ExpertTable>): the engine runs with one, while a background thread builds
// the next from the checkpoint (LoadExpertsForPlacement). Tables share the
// entries of experts they both hold, so an expert that stays on its rank is
// neither reloaded nor copied, and an expert's memory goes when the last
// table holding it does.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/placement.h"
#include "kernels/moe.h"
#include "model/model.h"

namespace herd {

// One expert's SwiGLU matrices as the kernels read them.
struct PackedExpert {
  cpu::PackedMatrix gate, up, down;
  // The model whose mapping the matrices (or their sources) point into;
  // nullptr when it is the engine's own model, which outlives every table.
  std::shared_ptr<const Model> source;

  PackedExpert() = default;
  PackedExpert(const PackedExpert&) = delete;
  PackedExpert& operator=(const PackedExpert&) = delete;
  // Matrices used in place from the mapping give their pages back to the
  // kernel: an expert that left the rank stops costing resident memory.
  ~PackedExpert();

  int64_t num_bytes() const { return gate.num_bytes() + up.num_bytes() + down.num_bytes(); }
};

class ExpertTable {
 public:
  // Packs every expert `model` holds (resident); `source` keeps the model
  // alive (nullptr when the caller guarantees it outlives the table).
  // Repacked matrices release their mapped source pages. Errors: PackMatrix's.
  static absl::StatusOr<std::shared_ptr<const ExpertTable>> FromModel(
      const Model& model, std::shared_ptr<const Model> source);

  int num_layers() const { return static_cast<int>(experts_.size()); }
  // Whether the table holds expert `expert` of `layer`.
  bool Holds(int layer, int expert) const { return experts_[layer][expert] != nullptr; }
  // One view per logical expert of `layer`; experts not held have null
  // matrices. Valid as long as the table.
  const std::vector<cpu::ExpertFfnView>& LayerViews(int layer) const { return views_[layer]; }
  // Bytes of every expert held, as the kernels read them.
  int64_t num_bytes() const;

 private:
  friend struct ExpertTableBuilder;
  ExpertTable() = default;
  // Fills views_ from experts_.
  void Index();

  // [layer][expert]: nullptr when not held.
  std::vector<std::vector<std::shared_ptr<const PackedExpert>>> experts_;
  std::vector<std::vector<cpu::ExpertFfnView>> views_;
};

// What LoadExpertsForPlacement built.
struct LoadedExperts {
  std::shared_ptr<const ExpertTable> table;
  int num_loaded = 0;        // experts read from the checkpoint
  int64_t loaded_bytes = 0;  // their bytes as stored in the checkpoint
};

// The table `placement` gives `rank`: the entries of `current` it keeps, and
// every other expert it needs read from the checkpoint at `model_path` (mapped
// anew, sharing the page cache with the mapping the rank already has), packed,
// and with every page touched, so that the first step that uses them reads
// memory, not disk. Experts `current` holds that the placement does not give
// the rank are left out. Blocks the calling thread for the whole load (run it
// on a background thread); thread-safe (reads `current` only). Errors: the
// loader's (NotFound, DataLoss...), or InvalidArgument when the placement's
// shape is not the table's.
absl::StatusOr<LoadedExperts> LoadExpertsForPlacement(const ExpertTable& current,
                                                      const ExpertPlacement& placement, int rank,
                                                      const std::string& model_path);

}  // namespace herd
