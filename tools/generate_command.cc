#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "comm/communicator.h"
#include "comm/env.h"
#include "coordinator/placement/load_trace.h"
#include "core/config.h"
#include "core/file_util.h"
#include "core/logging.h"
#include "core/placement.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "model/model_loader.h"
#include "model/tokenizer/tokenizer.h"
#include "tools/commands.h"
#include "tools/device.h"
#include "tools/flags.h"
#include "tools/rank_flags.h"
#include "worker/engine.h"
#include "worker/generator.h"
#include "worker/rank_group.h"
#include "worker/rank_model.h"

namespace herd {
namespace {

const std::vector<FlagSpec> kGenerateFlags = {
    {"model", true, "GGUF file or Hugging Face directory (or 'model' in --config)"},
    {"prompt-ids", true, "prompt token ids, comma-separated (this or --prompt)"},
    {"prompt", true, "prompt text, encoded with the model's tokenizer (BOS as the model asks)"},
    {"max-new-tokens", true, "tokens to generate (default 16; 0 evaluates the prompt only)"},
    {"temperature", true, "sampling temperature; 0 = greedy (default 0)"},
    {"top-p", true, "nucleus sampling mass in (0, 1] (default 1)"},
    {"top-k", true, "sample among the k most likely tokens (default 0: all)"},
    {"min-p", true, "drop tokens less likely than min-p times the most likely (default 0)"},
    {"seed", true, "sampler seed (default 0)"},
    {"threads", true, "kernel threads; 0 = all cores (default: config or 0)"},
    {"dump-logits", true, "write F32 logits [prompt + new tokens, vocab] to this file"},
    {"config", true, "YAML config file (flags override it)"},
    {"local-ranks", true, "run N expert-parallel ranks as threads of this process (default 1)"},
    {"comm", true, kCommFlagHelp},
    {"placement", true, "expert placement file (YAML/JSON); default: contiguous split"},
    {"record-expert-load", true,
     "write the tokens routed to each expert of each layer as a herd plan trace (JSON)"},
    {"no-expert-skip", false,
     "run every routed expert, ignoring the checkpoint's dynamic skip thresholds"},
    {"kv-cache-type", true, "f32 (default) or f16: the KV cache's element type (CPU only)"},
    {"device", true, "cpu or cuda: where the model runs (default cpu)"},
    {"help", false, "show this help"},
};

// --record-expert-load: the tokens routed to each expert of each layer, from
// the engine's routing observer, written as a herd plan trace.
class ExpertLoadRecorder {
 public:
  explicit ExpertLoadRecorder(const ModelSpec& spec)
      : spec_(spec), loads_(spec.num_layers * spec.num_experts, 0) {}

  RoutingObserver Observer() {
    return [this](int layer, int64_t num_tokens, int64_t top_k, const int32_t* expert_idx,
                  const float*) {
      if (layer == 0) routed_tokens_ += num_tokens;
      for (int64_t i = 0; i < num_tokens * top_k; ++i) {
        if (expert_idx[i] < 0) continue;  // skipped
        ++loads_[layer * spec_.num_experts + expert_idx[i]];
      }
    };
  }

  absl::Status Write(const std::string& model_path, const std::string& path) const {
    ExpertLoadTrace trace;
    trace.name = absl::StrCat("herd generate ", model_path);
    trace.num_layers = static_cast<int>(spec_.num_layers);
    trace.num_experts = static_cast<int>(spec_.num_experts);
    trace.num_snapshots = 1;
    trace.top_k = static_cast<int>(spec_.num_experts_per_token);
    trace.tokens_per_snapshot = {routed_tokens_};
    trace.loads = loads_;
    return WriteExpertLoadTrace(trace, path);
  }

 private:
  const ModelSpec spec_;
  std::vector<int64_t> loads_;  // [layer * num_experts + expert]
  int64_t routed_tokens_ = 0;
};

absl::Status WriteLogits(const std::string& path, const std::vector<float>& logits) {
  // The file format is little-endian F32; x86-64 and aarch64 hosts are little-endian.
  return WriteFileAtomically(path, absl::string_view(reinterpret_cast<const char*>(logits.data()),
                                                     logits.size() * sizeof(float)));
}

}  // namespace

absl::Status RunGenerateCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kGenerateFlags));
  if (flags.Has("help")) {
    out << "usage: herd generate --model PATH (--prompt-ids 1,2,3 | --prompt TEXT) [flags]\n"
        << FlagsHelp(kGenerateFlags);
    return absl::OkStatus();
  }
  HerdConfig config;
  if (flags.Has("config")) {
    HERD_ASSIGN_OR_RETURN(config, LoadConfigFile(flags.GetString("config")));
  }
  const std::string model_path = flags.GetString("model", config.model);
  if (model_path.empty()) return absl::InvalidArgumentError("--model is required");
  if (flags.Has("prompt") && flags.Has("prompt-ids")) {
    return absl::InvalidArgumentError("--prompt and --prompt-ids are mutually exclusive");
  }
  // With --prompt, text goes in and text comes out through the model's tokenizer.
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<int32_t> prompt;
  if (flags.Has("prompt")) {
    HERD_ASSIGN_OR_RETURN(tokenizer, Tokenizer::Load(model_path));
    EncodeOptions encode_options;
    encode_options.add_bos = tokenizer->add_bos();
    HERD_ASSIGN_OR_RETURN(prompt, tokenizer->Encode(flags.GetString("prompt"), encode_options));
    if (prompt.empty()) return absl::InvalidArgumentError("--prompt encodes to no tokens");
  } else {
    HERD_ASSIGN_OR_RETURN(prompt, flags.GetIntList("prompt-ids"));
    if (prompt.empty()) return absl::InvalidArgumentError("--prompt-ids or --prompt is required");
  }

  GenerateOptions options;
  HERD_ASSIGN_OR_RETURN(options.max_new_tokens, flags.GetInt("max-new-tokens", 16));
  HERD_ASSIGN_OR_RETURN(double temperature, flags.GetDouble("temperature", 0.0));
  HERD_ASSIGN_OR_RETURN(double top_p, flags.GetDouble("top-p", 1.0));
  HERD_ASSIGN_OR_RETURN(int64_t top_k, flags.GetInt("top-k", 0));
  HERD_ASSIGN_OR_RETURN(double min_p, flags.GetDouble("min-p", 0.0));
  if (top_k < 0 || top_k > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat("--top-k must be >= 0, got ", top_k));
  }
  HERD_ASSIGN_OR_RETURN(options.sampling.seed, flags.GetUint("seed", 0));
  HERD_ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", config.engine.threads));
  options.sampling.temperature = static_cast<float>(temperature);
  options.sampling.top_p = static_cast<float>(top_p);
  options.sampling.top_k = static_cast<int32_t>(top_k);
  options.sampling.min_p = static_cast<float>(min_p);
  options.keep_logits = flags.Has("dump-logits");
  options.max_context_tokens = config.engine.max_context_tokens;
  if (threads < 0 || threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads must be in [0, 1024], got ", threads));
  }

  RankGroupOptions group;
  HERD_ASSIGN_OR_RETURN(int64_t local_ranks, flags.GetInt("local-ranks", 1));
  if (local_ranks < 1 || local_ranks > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("--local-ranks must be in [1, 256], got ", local_ranks));
  }
  group.local_ranks = static_cast<int>(local_ranks);
  if (flags.Has("comm")) group.comm = flags.GetString("comm");
  const int world_size = PlannedWorldSize(group);
  if (threads == 0 && group.local_ranks > 1) {
    threads = std::max(1, ThreadPool::DefaultNumThreads() / group.local_ranks);
  }
  std::optional<ExpertPlacement> placement_file;
  if (flags.Has("placement")) {
    HERD_ASSIGN_OR_RETURN(placement_file, ReadPlacementFile(flags.GetString("placement")));
  }

  HERD_ASSIGN_OR_RETURN(const Device device, ParseDevice(flags.GetString("device", "cpu")));
  DType kv_cache_type = DType::kF32;
  if (flags.Has("kv-cache-type")) {
    HERD_ASSIGN_OR_RETURN(kv_cache_type, ParseKvCacheType(flags.GetString("kv-cache-type")));
  }
  if (device == Device::kCuda && kv_cache_type != DType::kF32) {
    return absl::InvalidArgumentError(
        "--kv-cache-type f16 runs on the CPU engine; with --device cuda the KV cache is f32");
  }
  // Each rank loads the model with only its experts, runs its part, and rank
  // 0 (which owns the one sequence) keeps the result.
  GenerateResult result;
  bool output_rank = true;
  const absl::Status status =
      RunRanks(group, [&](comm::Communicator* comm, comm::ControlChannel* control) -> absl::Status {
        const int rank = comm != nullptr ? comm->rank() : 0;
        // Ranks that are processes (not threads) print only on rank 0.
        if (control != nullptr && control->backend_name() != std::string("local"))
          output_rank = rank == 0;
        const absl::Time load_start = absl::Now();
        HERD_ASSIGN_OR_RETURN(RankModel rank_model,
                              LoadModelForRank(model_path, comm, placement_file));
        const std::unique_ptr<Model>& model = rank_model.model;
        ExpertParallelism ep;
        if (comm != nullptr) {
          ep = {comm, &*rank_model.placement, absl::Milliseconds(comm::GetCommEnv().timeout_ms)};
        }
        std::unique_ptr<ForwardEngine> engine;
        if (device == Device::kCuda) {
          HERD_ASSIGN_OR_RETURN(engine, CreateCudaEngine(*model, !flags.Has("no-expert-skip"), ep));
        } else {
          EngineOptions engine_options;
          engine_options.num_threads = static_cast<int>(threads);
          engine_options.expert_skipping = !flags.Has("no-expert-skip");
          engine_options.expert_parallelism = ep;
          engine_options.kv_cache_type = kv_cache_type;
          HERD_ASSIGN_OR_RETURN(engine, Engine::Create(*model, engine_options));
        }
        HERD_LOG(INFO) << "rank " << rank << "/" << world_size << ": loaded " << model_path
                       << " in " << absl::ToDoubleSeconds(absl::Now() - load_start) << " s, "
                       << engine->Describe();
        // Expert load: counted where the tokens are routed, i.e. on rank 0, which
        // owns the sequence.
        ExpertLoadRecorder expert_load(model->spec);
        if (flags.Has("record-expert-load") && rank == 0) {
          engine->SetRoutingObserver(expert_load.Observer());
        }
        const absl::Time run_start = absl::Now();
        HERD_ASSIGN_OR_RETURN(
            GenerateResult rank_result,
            Generate(*engine, rank == 0 ? prompt : std::vector<int32_t>{}, options));
        if (engine->expert_parallel()) {
          const EngineStats& st = engine->stats();
          HERD_LOG(INFO) << absl::StrFormat(
              "rank %d: %d forward calls, %.3f s; MoE %.3f s, of which dispatch %.3f s + "
              "combine "
              "%.3f s (%.1f%% of MoE); sent %d slots, received %d rows",
              rank, st.forward_calls, st.forward_seconds, st.moe_seconds, st.dispatch_seconds,
              st.combine_seconds,
              st.moe_seconds > 0
                  ? 100.0 * (st.dispatch_seconds + st.combine_seconds) / st.moe_seconds
                  : 0.0,
              st.dispatched_slots, st.received_rows);
        }
        if (flags.Has("record-expert-load") && rank == 0) {
          HERD_RETURN_IF_ERROR(
              expert_load.Write(model_path, flags.GetString("record-expert-load")));
        }
        if (rank == 0) {
          HERD_LOG(INFO) << "generated " << rank_result.tokens.size() << " tokens in "
                         << absl::ToDoubleSeconds(absl::Now() - run_start) << " s";
          result = std::move(rank_result);
        }
        return absl::OkStatus();
      });
  HERD_RETURN_IF_ERROR(status);
  if (!output_rank) return absl::OkStatus();
  if (options.keep_logits) {
    HERD_RETURN_IF_ERROR(WriteLogits(flags.GetString("dump-logits"), result.logits));
  }
  if (tokenizer != nullptr) {
    // The text up to the first end-of-generation token, as a continuation.
    std::vector<int32_t> generated;
    for (int32_t id : result.tokens) {
      if (tokenizer->IsEndOfGeneration(id)) break;
      generated.push_back(id);
    }
    DecodeOptions decode_options;
    decode_options.strip_space_prefix = false;
    HERD_ASSIGN_OR_RETURN(std::string text, tokenizer->Decode(generated, decode_options));
    out << text << "\n";
    return absl::OkStatus();
  }
  out << absl::StrJoin(result.tokens, ",") << "\n";
  return absl::OkStatus();
}

}  // namespace herd
