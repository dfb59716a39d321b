// herd compress: a checkpoint with quantized weights, written as Herd's own
// checkpoint (model/herd_checkpoint_writer.h), with a report of the bytes and
// bits each module takes before and after.

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/human_format.h"
#include "core/quant_format.h"
#include "core/status.h"
#include "model/herd_checkpoint_writer.h"
#include "model/model_loader.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/flags.h"
#include "tools/progress_bar.h"

namespace herd {
namespace {

using Json = nlohmann::json;

const std::vector<FlagSpec> kCompressFlags = {
    {"model", true, "input model: GGUF file, Hugging Face or Herd checkpoint directory (required)"},
    {"out", true, "output checkpoint directory (required; must not exist unless --force)"},
    {"method", true, "rtn: round to nearest (default rtn)"},
    {"bits", true, "8 | 4 | 3 | 2 (default 4)"},
    {"group-size", true, "32 | 64 | 128 | 0 = per output channel (default 128)"},
    {"asym", false, "asymmetric: a min per group as well as a scale"},
    {"scale-type", true, "f16 | bf16 (default f16)"},
    {"modules", true,
     "comma-separated modules to quantize: experts, shared, attention, router, embeddings "
     "(default experts)"},
    {"report", true, "write the report as JSON to this file"},
    {"force", false, "replace --out if it exists"},
    {"help", false, "show this help"},
};

const std::map<std::string, ModuleKind> kModuleNames = {
    {"experts", ModuleKind::kExperts},       {"shared", ModuleKind::kSharedExpert},
    {"attention", ModuleKind::kAttention},   {"router", ModuleKind::kRouter},
    {"embeddings", ModuleKind::kEmbeddings},
};

absl::StatusOr<std::set<ModuleKind>> ParseModules(const std::string& list) {
  std::set<ModuleKind> modules;
  const std::vector<std::string> names = absl::StrSplit(list, ',', absl::SkipEmpty());
  for (const std::string& name : names) {
    const auto it = kModuleNames.find(name);
    if (it == kModuleNames.end()) {
      std::vector<std::string> known;
      for (const auto& [k, v] : kModuleNames) known.push_back(k);
      return absl::InvalidArgumentError(absl::StrCat(
          "--modules: unknown module '", name, "' (known: ", absl::StrJoin(known, ", "), ")"));
    }
    modules.insert(it->second);
  }
  if (modules.empty()) return absl::InvalidArgumentError("--modules names no module");
  return modules;
}

// Bytes and values of every weight matrix of a model, by module.
struct ModuleSize {
  int64_t bytes = 0;
  int64_t values = 0;
  double bits() const { return values > 0 ? 8.0 * static_cast<double>(bytes) / values : 0.0; }
};

std::map<std::string, ModuleSize> SizesByModule(const Model& model) {
  std::map<std::string, ModuleSize> sizes;
  for (const TensorRecord& t : model.tensors) {
    if (t.view.rank() < 2) continue;  // norms, biases and gate vectors stay F32
    ModuleSize& m = sizes[ModuleKindName(t.module)];
    m.bytes += t.view.num_bytes();
    m.values += t.view.num_elements();
  }
  return sizes;
}

Json SizeReport(const std::map<std::string, ModuleSize>& before,
                const std::map<std::string, ModuleSize>& after) {
  Json by_module = Json::object();
  ModuleSize total_before, total_after;
  for (const auto& [name, b] : before) {
    const ModuleSize a = after.count(name) ? after.at(name) : ModuleSize{};
    by_module[name] = {{"bytes_before", b.bytes},
                       {"bytes_after", a.bytes},
                       {"bits_before", b.bits()},
                       {"bits_after", a.bits()}};
    total_before.bytes += b.bytes;
    total_before.values += b.values;
    total_after.bytes += a.bytes;
    total_after.values += a.values;
  }
  return {{"bytes_before", total_before.bytes},
          {"bytes_after", total_after.bytes},
          {"average_bits_before", total_before.bits()},
          {"average_bits", total_after.bits()},
          {"by_module", by_module}};
}

void PrintReport(const Json& report, std::ostream& out) {
  const Json& size = report["size"];
  out << absl::StrFormat("%-14s %12s %12s %10s %10s\n", "module", "before", "after", "bits",
                         "bits after");
  for (const auto& [name, m] : size["by_module"].items()) {
    out << absl::StrFormat("%-14s %12s %12s %10.2f %10.2f\n", name,
                           HumanBytes(m["bytes_before"].get<int64_t>()),
                           HumanBytes(m["bytes_after"].get<int64_t>()),
                           m["bits_before"].get<double>(), m["bits_after"].get<double>());
  }
  out << absl::StrFormat("%-14s %12s %12s %10.2f %10.2f\n", "all weights",
                         HumanBytes(size["bytes_before"].get<int64_t>()),
                         HumanBytes(size["bytes_after"].get<int64_t>()),
                         size["average_bits_before"].get<double>(),
                         size["average_bits"].get<double>());
}

}  // namespace

absl::Status RunCompressCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kCompressFlags));
  if (flags.Has("help")) {
    out << "usage: herd compress --model IN --out OUT [--bits 4] [--group-size 128] [--asym]\n"
        << "                     [--modules experts,attention] [--report FILE] [--force]\n"
        << FlagsHelp(kCompressFlags);
    return absl::OkStatus();
  }
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model is required");
  if (!flags.Has("out")) return absl::InvalidArgumentError("--out is required");
  const std::string method = flags.GetString("method", "rtn");
  if (method != "rtn") {
    return absl::InvalidArgumentError(
        absl::StrCat("--method: '", method, "' is not a method herd compress has (rtn)"));
  }
  QuantFormat format;
  HERD_ASSIGN_OR_RETURN(const int64_t bits, flags.GetInt("bits", 4));
  HERD_ASSIGN_OR_RETURN(const int64_t group, flags.GetInt("group-size", 128));
  format.bits = static_cast<int>(bits);
  format.group_size = static_cast<int>(group);
  format.symmetric = !flags.Has("asym");
  const std::string scale = flags.GetString("scale-type", "f16");
  if (scale != "f16" && scale != "bf16") {
    return absl::InvalidArgumentError(
        absl::StrCat("--scale-type must be f16 or bf16, got ", scale));
  }
  format.scale_type = scale == "bf16" ? DType::kBF16 : DType::kF16;
  if (bits != format.bits || group != format.group_size) {
    return absl::InvalidArgumentError("--bits and --group-size must be small integers");
  }
  HERD_RETURN_IF_ERROR(format.Validate());
  HERD_ASSIGN_OR_RETURN(const std::set<ModuleKind> modules,
                        ParseModules(flags.GetString("modules", "experts")));

  const std::string in_path = flags.GetString("model");
  const std::string out_dir = flags.GetString("out");
  if (std::error_code ec; std::filesystem::exists(out_dir, ec) && !flags.Has("force")) {
    return absl::AlreadyExistsError(
        absl::StrCat(out_dir, " already exists (pass --force to replace it)"));
  }
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadModel(in_path));
  for (const TensorRecord& t : model->tensors) {
    if (t.view.rank() >= 2 && modules.contains(t.module)) {
      const int64_t cols = t.view.row_length();
      if (absl::Status fits = format.ValidateShape(t.view.num_rows(), cols); !fits.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, ": ", fits.message()));
      }
    }
  }

  std::vector<std::string> module_names;
  for (const auto& [name, kind] : kModuleNames) {
    if (modules.contains(kind)) module_names.push_back(name);
  }
  HerdCheckpointOptions options;
  options.overwrite = flags.Has("force");
  options.choose_format = [&](const WeightInfo& w) -> std::optional<QuantFormat> {
    if (modules.contains(w.module)) return format;
    return std::nullopt;
  };
  options.compression = {{"method", method},
                         {"format", format.Name()},
                         {"modules", module_names},
                         {"source", in_path}};
  ProgressBar bar("herd compress: quantize and write");
  options.progress = [&](int64_t done, int64_t total) { bar.Update(done, total); };
  HERD_RETURN_IF_ERROR(WriteHerdCheckpoint(*model, options, out_dir));
  bar.Finish();

  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> written, LoadModel(out_dir));
  Json report = options.compression;
  report["output"] = out_dir;
  report["size"] = SizeReport(SizesByModule(*model), SizesByModule(*written));
  out << "wrote " << out_dir << " (" << format.Name() << " for "
      << absl::StrJoin(module_names, ", ") << ")\n";
  PrintReport(report, out);
  if (flags.Has("report")) {
    std::ofstream file(flags.GetString("report"));
    file << report.dump(2) << "\n";
    if (!file) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot write the report to ", flags.GetString("report")));
    }
  }
  return absl::OkStatus();
}

}  // namespace herd
