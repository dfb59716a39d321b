#include "worker/expert_table.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/mapped_file.h"
#include "core/status.h"
#include "model/model_loader.h"

namespace herd {
namespace {

// Mapped pages the kernels read in place (row-major and Herd-quantized
// matrices); repacked matrices own their bytes and released their sources
// when packed.
void ForEachMappedMatrix(const PackedExpert& e, void (*fn)(const void*, size_t)) {
  for (const cpu::PackedMatrix* m : {&e.gate, &e.up, &e.down}) m->ForEachInPlaceRange(fn);
}

void ReleaseRepackedSource(const cpu::PackedMatrix& m) {
  if (m.storage != nullptr) ReleaseMappedPages(m.source.data(), m.source.num_bytes());
}

absl::StatusOr<std::shared_ptr<const PackedExpert>> PackExpert(
    const ExpertFfnWeights& weights, std::shared_ptr<const Model> source) {
  auto expert = std::make_shared<PackedExpert>();
  HERD_ASSIGN_OR_RETURN(expert->gate, cpu::PackMatrix(weights.gate));
  HERD_ASSIGN_OR_RETURN(expert->up, cpu::PackMatrix(weights.up));
  HERD_ASSIGN_OR_RETURN(expert->down, cpu::PackMatrix(weights.down));
  for (const cpu::PackedMatrix* m : {&expert->gate, &expert->up, &expert->down}) {
    ReleaseRepackedSource(*m);
  }
  expert->source = std::move(source);
  return expert;
}

}  // namespace

PackedExpert::~PackedExpert() { ForEachMappedMatrix(*this, &ReleaseMappedPages); }

// Builds tables for the factory functions (ExpertTable's constructor is private).
struct ExpertTableBuilder {
  static std::shared_ptr<ExpertTable> Empty(int num_layers, int num_experts) {
    std::shared_ptr<ExpertTable> table(new ExpertTable());
    table->experts_.assign(num_layers,
                           std::vector<std::shared_ptr<const PackedExpert>>(num_experts));
    return table;
  }
  static std::shared_ptr<const PackedExpert>& Entry(ExpertTable& table, int layer, int expert) {
    return table.experts_[layer][expert];
  }
  static const std::shared_ptr<const PackedExpert>& Entry(const ExpertTable& table, int layer,
                                                          int expert) {
    return table.experts_[layer][expert];
  }
  static int NumExperts(const ExpertTable& table) {
    return table.experts_.empty() ? 0 : static_cast<int>(table.experts_[0].size());
  }
  static void Index(ExpertTable& table) { table.Index(); }
};

void ExpertTable::Index() {
  views_.assign(experts_.size(), {});
  for (size_t l = 0; l < experts_.size(); ++l) {
    views_[l].resize(experts_[l].size());
    for (size_t e = 0; e < experts_[l].size(); ++e) {
      if (const PackedExpert* p = experts_[l][e].get()) views_[l][e] = {&p->gate, &p->up, &p->down};
    }
  }
}

int64_t ExpertTable::num_bytes() const {
  int64_t bytes = 0;
  for (const auto& layer : experts_) {
    for (const auto& e : layer) {
      if (e != nullptr) bytes += e->num_bytes();
    }
  }
  return bytes;
}

absl::StatusOr<std::shared_ptr<const ExpertTable>> ExpertTable::FromModel(
    const Model& model, std::shared_ptr<const Model> source) {
  const int num_layers = static_cast<int>(model.layers.size());
  const int num_experts = static_cast<int>(model.spec.num_experts);
  std::shared_ptr<ExpertTable> table = ExpertTableBuilder::Empty(num_layers, num_experts);
  for (int l = 0; l < num_layers; ++l) {
    const std::vector<ExpertFfnWeights>& experts = model.layers[l].experts;
    for (int e = 0; e < num_experts && e < static_cast<int>(experts.size()); ++e) {
      if (!experts[e].resident()) continue;  // held by another rank
      HERD_ASSIGN_OR_RETURN(table->experts_[l][e], PackExpert(experts[e], source));
    }
  }
  table->Index();
  return table;
}

absl::StatusOr<LoadedExperts> LoadExpertsForPlacement(const ExpertTable& current,
                                                      const ExpertPlacement& placement, int rank,
                                                      const std::string& model_path) {
  const int num_layers = current.num_layers();
  const int num_experts = ExpertTableBuilder::NumExperts(current);
  if (placement.num_layers() != num_layers || placement.num_experts() != num_experts || rank < 0 ||
      rank >= placement.num_ranks()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a placement of ", placement.num_layers(), " layers x ", placement.num_experts(),
        " experts on ", placement.num_ranks(), " ranks cannot place rank ", rank,
        "'s experts of a table of ", num_layers, " layers x ", num_experts, " experts"));
  }
  // needed[l][e]: the placement gives this rank expert e of layer l.
  std::vector<std::vector<bool>> needed(num_layers, std::vector<bool>(num_experts, false));
  bool any_missing = false;
  for (int l = 0; l < num_layers; ++l) {
    for (int32_t e : placement.RankExperts(l, rank)) {
      needed[l][e] = true;
      any_missing = any_missing || !current.Holds(l, e);
    }
  }
  LoadedExperts result;
  std::shared_ptr<ExpertTable> table = ExpertTableBuilder::Empty(num_layers, num_experts);
  std::shared_ptr<const Model> model;
  if (any_missing) {
    ModelLoadOptions options;
    options.load_expert = [&](int layer, int expert) {
      return layer < num_layers && expert < num_experts && needed[layer][expert] &&
             !current.Holds(layer, expert);
    };
    HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> loaded, LoadModel(model_path, options));
    if (loaded->spec.num_layers != num_layers || loaded->spec.num_experts != num_experts) {
      return absl::InvalidArgumentError(absl::StrCat(
          model_path, " has ", loaded->spec.num_layers, " layers x ", loaded->spec.num_experts,
          " experts, but the serving model has ", num_layers, " x ", num_experts));
    }
    model = std::move(loaded);
  }
  for (int l = 0; l < num_layers; ++l) {
    for (int e = 0; e < num_experts; ++e) {
      if (!needed[l][e]) continue;
      std::shared_ptr<const PackedExpert>& entry = ExpertTableBuilder::Entry(*table, l, e);
      if (current.Holds(l, e)) {
        entry = ExpertTableBuilder::Entry(current, l, e);
        continue;
      }
      if (!model->layers[l].ExpertExists(e)) continue;  // dropped by expert drop: no weights
      const ExpertFfnWeights& weights = model->layers[l].experts[e];
      HERD_ASSIGN_OR_RETURN(entry, PackExpert(weights, model));
      ForEachMappedMatrix(*entry, &PrefaultMappedPages);
      ++result.num_loaded;
      result.loaded_bytes +=
          weights.gate.num_bytes() + weights.up.num_bytes() + weights.down.num_bytes();
    }
  }
  ExpertTableBuilder::Index(*table);
  result.table = std::move(table);
  return result;
}

}  // namespace herd
