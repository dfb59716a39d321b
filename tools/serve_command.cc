// herd serve: the OpenAI-compatible server. Every rank loads its part of the
// model and runs a StepRunner; rank 0 also runs the executor (queue,
// scheduler, step loop) and the HTTP server, and the other ranks run the
// worker loop until rank 0 tells them to stop.
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/env.h"
#include "coordinator/api/http_server.h"
#include "coordinator/metrics/serving_metrics.h"
#include "coordinator/placement/load_trace.h"
#include "coordinator/scheduler/executor.h"
#include "core/config.h"
#include "core/file_util.h"
#include "core/human_format.h"
#include "core/logging.h"
#include "core/placement.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "model/synth.h"
#include "model/tokenizer/tokenizer.h"
#include "tools/commands.h"
#include "tools/device.h"
#include "tools/flags.h"
#include "tools/rank_flags.h"
#include "worker/engine.h"
#include "worker/rank_group.h"
#include "worker/rank_model.h"
#include "worker/step_runner.h"

namespace herd {
namespace {

const std::vector<FlagSpec> kServeFlags = {
    {"model", true, "GGUF file or Hugging Face directory (default: a small random-weight demo)"},
    {"config", true, "YAML config file (flags override it; see configs/)"},
    {"host", true, "address to listen on (default 127.0.0.1)"},
    {"port", true, "port to listen on; 0 picks a free one (default 8000)"},
    {"port-file", true, "write the port listened on to this file once serving"},
    {"api-key", true, "require 'Authorization: Bearer KEY' on /v1/*"},
    {"model-name", true, "model id reported by /v1/models (default: the file name)"},
    {"device", true, "cpu (default) or cuda: each rank on GPU rank % number of GPUs"},
    {"threads", true, "kernel threads per rank; 0 = all cores (split among local ranks)"},
    {"local-ranks", true, "run N expert-parallel ranks as threads of this process (default 1)"},
    {"comm", true, kCommFlagHelp},
    {"placement", true, "expert placement file (YAML/JSON); default: contiguous split"},
    {"kv-cache-bytes", true, "KV cache per rank in bytes (default: max-running full contexts)"},
    {"kv-block-tokens", true, "tokens per KV cache block (default 16)"},
    {"kv-cache-type", true, "f32 (default) or f16: half the bytes per token (CPU only)"},
    {"max-step-tokens", true, "tokens per rank per step, decode + prefill chunks (default 256)"},
    {"max-waiting", true, "queued requests beyond which new ones get 429 (default 256)"},
    {"max-running", true, "sequences running at once per rank (default 64)"},
    {"max-context-tokens", true, "longest prompt + completion (default: the model's context)"},
    {"max-body-bytes", true, "largest request body accepted (default 1048576)"},
    {"drain-timeout-s", true, "on SIGTERM, seconds to finish accepted requests (default 30)"},
    {"request-timeout-s", true, "per-request deadline in seconds; 0 = none (default 0)"},
    {"no-prefix-caching", false,
     "compute every prompt in full instead of reusing cached leading blocks"},
    {"detailed-expert-metrics", false, "export herd:expert_tokens_total{layer,expert}"},
    {"record-expert-load", true,
     "on shutdown, write the tokens routed to each expert as a herd plan trace (JSON)"},
    {"rebalance", false, "move experts between ranks while serving when load is unbalanced"},
    {"rebalance-window-steps", true, "steps of expert load the rebalancer looks at (default 500)"},
    {"rebalance-threshold", true,
     "rebalance when max/mean rank load, mean over layers, exceeds this (default 1.25)"},
    {"rebalance-min-interval-s", true, "seconds from startup and between rebalances (default 60)"},
    {"rebalance-max-experts-moved", true,
     "most expert replicas one rebalance copies; 0 = no limit (default 0)"},
    {"no-expert-skip", false,
     "run every routed expert, ignoring the checkpoint's dynamic skip thresholds"},
    {"help", false, "show this help"},
};

// The demo model `herd serve` creates when given none.
constexpr char kDemoModelPath[] = "herd-data/serve-demo-q8_0.gguf";

std::atomic<int> g_stop_signal{0};

void OnStopSignal(int signal) { g_stop_signal.store(signal); }

absl::StatusOr<std::string> DemoModel() {
  if (std::filesystem::exists(kDemoModelPath)) return std::string(kDemoModelPath);
  std::error_code error;
  std::filesystem::create_directories(std::filesystem::path(kDemoModelPath).parent_path(), error);
  SynthOptions options;
  options.num_layers = 4;
  options.hidden_size = 256;
  options.num_heads = 8;
  options.num_kv_heads = 4;
  options.num_experts = 8;
  options.num_experts_per_token = 2;
  options.expert_ffn_size = 512;
  options.vocab_size = 4096;
  options.context_length = 2048;
  options.dtype = DType::kQ8_0;
  options.seed = 1;
  HERD_RETURN_IF_ERROR(SynthesizeModel(options, kDemoModelPath));
  return std::string(kDemoModelPath);
}

int64_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0 ? static_cast<int64_t>(pages) * page_size : 0;
}

// Everything the command line and the config decide.
struct ServeSettings {
  std::string model_path;
  ServeConfig serve;
  Device device = Device::kCpu;
  int threads = 0;
  bool expert_skipping = true;     // the checkpoint's dynamic skip thresholds
  int64_t max_context_tokens = 0;  // 0 = the model's
  std::string port_file;
  std::string record_expert_load;
  std::optional<ExpertPlacement> placement;
  RankGroupOptions group;
};

absl::StatusOr<ServeSettings> ParseSettings(const ParsedFlags& flags) {
  HerdConfig config;
  if (flags.Has("config")) {
    HERD_ASSIGN_OR_RETURN(config, LoadConfigFile(flags.GetString("config")));
  }
  ServeSettings s;
  s.serve = config.serve;
  s.model_path = flags.GetString("model", config.model);
  ServeConfig& c = s.serve;
  c.host = flags.GetString("host", c.host);
  HERD_ASSIGN_OR_RETURN(int64_t port, flags.GetInt("port", c.port));
  c.port = static_cast<int>(port);
  c.api_key = flags.GetString("api-key", c.api_key);
  c.model_name = flags.GetString("model-name", c.model_name);
  HERD_ASSIGN_OR_RETURN(c.kv_cache_bytes, flags.GetInt("kv-cache-bytes", c.kv_cache_bytes));
  HERD_ASSIGN_OR_RETURN(c.kv_block_tokens, flags.GetInt("kv-block-tokens", c.kv_block_tokens));
  if (flags.Has("kv-cache-type")) {
    HERD_ASSIGN_OR_RETURN(c.kv_cache_type, ParseKvCacheType(flags.GetString("kv-cache-type")));
  }
  HERD_ASSIGN_OR_RETURN(c.max_step_tokens, flags.GetInt("max-step-tokens", c.max_step_tokens));
  HERD_ASSIGN_OR_RETURN(c.max_waiting, flags.GetInt("max-waiting", c.max_waiting));
  HERD_ASSIGN_OR_RETURN(c.max_running, flags.GetInt("max-running", c.max_running));
  HERD_ASSIGN_OR_RETURN(c.max_body_bytes, flags.GetInt("max-body-bytes", c.max_body_bytes));
  HERD_ASSIGN_OR_RETURN(c.drain_timeout_s, flags.GetDouble("drain-timeout-s", c.drain_timeout_s));
  HERD_ASSIGN_OR_RETURN(c.request_timeout_s,
                        flags.GetDouble("request-timeout-s", c.request_timeout_s));
  if (flags.Has("detailed-expert-metrics")) c.detailed_expert_metrics = true;
  if (flags.Has("no-prefix-caching")) c.prefix_caching = false;
  RebalanceConfig& r = c.rebalance;
  if (flags.Has("rebalance")) r.enabled = true;
  HERD_ASSIGN_OR_RETURN(r.window_steps, flags.GetInt("rebalance-window-steps", r.window_steps));
  HERD_ASSIGN_OR_RETURN(r.threshold, flags.GetDouble("rebalance-threshold", r.threshold));
  HERD_ASSIGN_OR_RETURN(r.min_interval_s,
                        flags.GetDouble("rebalance-min-interval-s", r.min_interval_s));
  HERD_ASSIGN_OR_RETURN(r.max_experts_moved,
                        flags.GetInt("rebalance-max-experts-moved", r.max_experts_moved));
  HERD_RETURN_IF_ERROR(c.Validate());
  HERD_ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", config.engine.threads));
  if (threads < 0 || threads > 1024) {
    return absl::InvalidArgumentError(
        absl::StrCat("--threads must be in [0, 1024], got ", threads));
  }
  s.threads = static_cast<int>(threads);
  s.expert_skipping = !flags.Has("no-expert-skip");
  HERD_ASSIGN_OR_RETURN(s.max_context_tokens,
                        flags.GetInt("max-context-tokens", config.engine.max_context_tokens));
  if (s.max_context_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-context-tokens must be >= 0, got ", s.max_context_tokens));
  }
  s.port_file = flags.GetString("port-file");
  s.record_expert_load = flags.GetString("record-expert-load");
  if (flags.Has("placement")) {
    HERD_ASSIGN_OR_RETURN(s.placement, ReadPlacementFile(flags.GetString("placement")));
  }
  HERD_ASSIGN_OR_RETURN(int64_t local_ranks, flags.GetInt("local-ranks", 1));
  if (local_ranks < 1 || local_ranks > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("--local-ranks must be in [1, 256], got ", local_ranks));
  }
  s.group.local_ranks = static_cast<int>(local_ranks);
  if (flags.Has("comm")) s.group.comm = flags.GetString("comm");
  if (c.rebalance.enabled && PlannedWorldSize(s.group) < 2) {
    return absl::InvalidArgumentError(
        "--rebalance moves experts between ranks: run several (mpirun -np N, --local-ranks N or "
        "--comm ucx, N >= 2)");
  }
  HERD_ASSIGN_OR_RETURN(s.device, ParseDevice(flags.GetString("device", config.engine.device)));
  if (s.device == Device::kCuda && c.kv_cache_type != DType::kF32) {
    return absl::InvalidArgumentError(
        "--kv-cache-type f16 runs on the CPU engine; with --device cuda the KV cache is f32");
  }
  if (s.device == Device::kCuda && c.rebalance.enabled) {
    return absl::UnimplementedError(
        "--rebalance moves experts between CPU ranks; with --device cuda it is not implemented "
        "yet");
  }
  if (s.threads == 0 && s.group.local_ranks > 1) {
    s.threads = std::max(1, ThreadPool::DefaultNumThreads() / s.group.local_ranks);
  }
  return s;
}

// Headroom --device cuda leaves on the GPU beyond the step buffers of the
// memory plan (cuBLAS, CUDA graphs, the attention workspace).
constexpr int64_t kGpuHeadroomBytes = int64_t{512} << 20;

// The most KV cache bytes a rank takes by default: a quarter of this
// machine's memory split among the local ranks, or on a GPU what is free once
// the weights are loaded, less the step buffers and kGpuHeadroomBytes.
absl::StatusOr<int64_t> DefaultKvCapBytes(const ServeSettings& s, const Model& model) {
  if (s.device == Device::kCpu) {
    const int64_t share = PhysicalMemoryBytes() / 4 / s.group.local_ranks;
    return share > 0 ? share : std::numeric_limits<int64_t>::max();  // 0: not known
  }
  HERD_ASSIGN_OR_RETURN(const GpuMemory gpu, QueryGpuMemory());
  HERD_ASSIGN_OR_RETURN(const CudaMemoryPlan plan, PlanCudaMemory(model));
  // Local ranks beyond the number of GPUs share them (rank r on GPU r % GPUs).
  const int sharing = (s.group.local_ranks + gpu.count - 1) / gpu.count;
  return std::max<int64_t>(0, (gpu.free_bytes - plan.step_buffers - kGpuHeadroomBytes) / sharing);
}

// KV blocks per rank: --kv-cache-bytes, or room for max_running sequences of
// the whole context, capped by DefaultKvCapBytes.
absl::StatusOr<int64_t> KvBlocks(const ServeSettings& s, const Model& model,
                                 int64_t max_context_tokens) {
  const ModelSpec& spec = model.spec;
  int64_t bytes = s.serve.kv_cache_bytes;
  if (bytes == 0) {
    const int64_t bytes_per_token = KvCache::BytesPerBlock(spec, 1, s.serve.kv_cache_type);
    bytes = bytes_per_token * max_context_tokens * s.serve.max_running;
    HERD_ASSIGN_OR_RETURN(const int64_t cap, DefaultKvCapBytes(s, model));
    bytes = std::min(bytes, cap);
  }
  return StepRunner::KvBlocksForBytes(spec, bytes, s.serve.kv_block_tokens, s.serve.kv_cache_type);
}

// The rank's engine, on the GPU or the CPU, as one rank of `comm`'s group
// (null: a single rank).
absl::StatusOr<std::unique_ptr<ForwardEngine>> CreateServeEngine(const ServeSettings& s,
                                                                 const RankModel& rank_model,
                                                                 comm::Communicator* comm) {
  ExpertParallelism ep;
  if (comm != nullptr) {
    ep = {comm, &*rank_model.placement, absl::Milliseconds(comm::GetCommEnv().timeout_ms)};
  }
  if (s.device == Device::kCuda) {
    return CreateCudaEngine(*rank_model.model, s.expert_skipping, ep);
  }
  EngineOptions options;
  options.num_threads = s.threads;
  options.expert_skipping = s.expert_skipping;
  options.expert_parallelism = ep;
  options.kv_cache_type = s.serve.kv_cache_type;
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(*rank_model.model, options));
  return std::unique_ptr<ForwardEngine>(std::move(engine));
}

// Rank 0: the executor and the HTTP server, until SIGTERM/SIGINT (drain) or
// the step loop fails.
absl::Status ServeOnCoordinator(const ServeSettings& s, const Model& model, StepRunner& runner,
                                comm::ControlChannel* control, const ExpertPlacement* placement,
                                int64_t max_context_tokens) {
  const ModelSpec& spec = model.spec;
  std::string model_name = s.serve.model_name;
  if (model_name.empty()) model_name = std::filesystem::path(s.model_path).filename().string();
  ServingMetricsOptions metrics_options;
  metrics_options.model_name = model_name;
  metrics_options.num_layers = static_cast<int>(spec.num_layers);
  metrics_options.num_experts = static_cast<int>(spec.num_experts);
  metrics_options.world_size = control != nullptr ? control->world_size() : 1;
  metrics_options.detailed_expert_metrics = s.serve.detailed_expert_metrics;
  ServingMetrics metrics(metrics_options);
  metrics.SetPlacementVersion(1);

  ExecutorOptions options;
  options.max_waiting_requests = s.serve.max_waiting;
  options.max_running_per_rank = s.serve.max_running;
  options.max_step_tokens = s.serve.max_step_tokens;
  options.num_kv_blocks = runner.options().num_kv_blocks;
  options.kv_block_tokens = runner.options().kv_block_tokens;
  options.prefix_caching = s.serve.prefix_caching;
  options.max_context_tokens = max_context_tokens;
  options.vocab_size = spec.vocab_size;
  options.rebalance = s.serve.rebalance;
  options.placement = placement;
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Executor> executor,
                        Executor::Create(&runner, control, options, &metrics));

  // The tokenizer is optional: without one, prompts are token ids.
  std::unique_ptr<Tokenizer> tokenizer;
  if (absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = Tokenizer::Load(s.model_path);
      loaded.ok()) {
    tokenizer = std::move(*loaded);
  } else {
    HERD_LOG(INFO) << "no tokenizer (" << loaded.status().message()
                   << "): prompts must be token ids";
  }

  HttpServerOptions http;
  http.host = s.serve.host;
  http.port = s.serve.port;
  http.api_key = s.serve.api_key;
  http.max_body_bytes = s.serve.max_body_bytes;
  http.model_name = model_name;
  http.vocab_size = spec.vocab_size;
  http.max_context_tokens = max_context_tokens;
  http.tokenizer = tokenizer.get();
  if (tokenizer != nullptr) http.chat_template = tokenizer->chat_template();
  if (s.serve.request_timeout_s > 0) {
    http.request_timeout = absl::Seconds(s.serve.request_timeout_s);
  }
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<HttpServer> server,
                        HttpServer::Create(executor.get(), &metrics, http));
  HERD_RETURN_IF_ERROR(server->Start());
  HERD_LOG(INFO) << "herd serve: listening on http://" << s.serve.host << ":" << server->port()
                 << " (model " << model_name << ", "
                 << (control != nullptr ? control->world_size() : 1) << " rank(s), "
                 << options.num_kv_blocks << " KV blocks of " << options.kv_block_tokens
                 << " tokens per rank, prefix caching " << (options.prefix_caching ? "on" : "off")
                 << ")";
  if (!s.port_file.empty()) {
    HERD_RETURN_IF_ERROR(WriteFileAtomically(s.port_file, absl::StrCat(server->port(), "\n")));
  }

  absl::Status loop_error;
  while (g_stop_signal.load() == 0) {
    absl::SleepFor(absl::Milliseconds(50));
    if (absl::Status health = executor->health(); !health.ok()) {
      loop_error = health;
      break;
    }
  }
  if (loop_error.ok()) {
    HERD_LOG(INFO) << "herd serve: signal " << g_stop_signal.load() << ", draining for up to "
                   << s.serve.drain_timeout_s << " s";
  }
  server->BeginDrain();
  const absl::Status drained = executor->Shutdown(absl::Seconds(s.serve.drain_timeout_s));
  server->Stop();
  HERD_RETURN_IF_ERROR(loop_error);
  if (!s.record_expert_load.empty()) {
    const ExpertLoadTotals totals = executor->expert_load();
    ExpertLoadTrace trace;
    trace.name = absl::StrCat("herd serve ", s.model_path);
    trace.num_layers = static_cast<int>(spec.num_layers);
    trace.num_experts = static_cast<int>(spec.num_experts);
    trace.num_snapshots = 1;
    trace.top_k = static_cast<int>(spec.num_experts_per_token);
    trace.tokens_per_snapshot = {totals.num_tokens};
    trace.loads = totals.loads;
    trace.loads.resize(spec.num_layers * spec.num_experts, 0);
    HERD_RETURN_IF_ERROR(WriteExpertLoadTrace(trace, s.record_expert_load));
    HERD_LOG(INFO) << "herd serve: wrote the expert load of " << totals.num_tokens << " tokens to "
                   << s.record_expert_load;
  }
  if (!drained.ok()) {
    HERD_LOG(WARN) << "herd serve: " << drained.message();
  }
  HERD_LOG(INFO) << "herd serve: stopped after " << executor->stats().num_finished << " requests";
  return absl::OkStatus();
}

}  // namespace

absl::Status RunServeCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kServeFlags));
  if (flags.Has("help")) {
    out << "usage: herd serve [--model PATH] [--host H] [--port P] [--config FILE] [flags]\n"
        << FlagsHelp(kServeFlags);
    return absl::OkStatus();
  }
  HERD_ASSIGN_OR_RETURN(ServeSettings settings, ParseSettings(flags));
  if (settings.model_path.empty()) {
    HERD_ASSIGN_OR_RETURN(settings.model_path, DemoModel());
    HERD_LOG(WARN) << "herd serve: no --model given; serving " << settings.model_path
                   << ", a small model with RANDOM weights (its outputs mean nothing)";
  }
  // Every rank installs the handlers: under mpirun a signal reaches them all,
  // and only rank 0 acts on it (it drains, then stops the others).
  std::signal(SIGTERM, OnStopSignal);
  std::signal(SIGINT, OnStopSignal);

  return RunRanks(
      settings.group, [&](comm::Communicator* comm, comm::ControlChannel* control) -> absl::Status {
        HERD_ASSIGN_OR_RETURN(RankModel rank_model,
                              LoadModelForRank(settings.model_path, comm, settings.placement));
        const Model& model = *rank_model.model;
        HERD_ASSIGN_OR_RETURN(std::unique_ptr<ForwardEngine> engine,
                              CreateServeEngine(settings, rank_model, comm));
        const int64_t max_context_tokens = settings.max_context_tokens > 0
                                               ? settings.max_context_tokens
                                               : std::max<int64_t>(model.spec.context_length, 1);
        StepRunnerOptions runner_options;
        runner_options.kv_block_tokens = settings.serve.kv_block_tokens;
        runner_options.count_expert_tokens = settings.serve.detailed_expert_metrics ||
                                             !settings.record_expert_load.empty() ||
                                             settings.serve.rebalance.enabled;
        HERD_ASSIGN_OR_RETURN(runner_options.num_kv_blocks,
                              KvBlocks(settings, model, max_context_tokens));
        if (runner_options.num_kv_blocks < 1) {
          return absl::InvalidArgumentError(
              absl::StrCat(settings.serve.kv_cache_bytes > 0
                               ? absl::StrCat("--kv-cache-bytes ", settings.serve.kv_cache_bytes)
                               : std::string("the memory left for the KV cache"),
                           " holds no block of ", settings.serve.kv_block_tokens, " tokens"));
        }
        HERD_ASSIGN_OR_RETURN(std::unique_ptr<StepRunner> runner,
                              StepRunner::Create(engine.get(), runner_options));
        const int rank = control != nullptr ? control->rank() : 0;
        HERD_LOG(INFO) << "rank " << rank << ": " << engine->Describe() << ", "
                       << runner_options.num_kv_blocks << " KV blocks ("
                       << HumanBytes(runner_options.num_kv_blocks *
                                     KvCache::BytesPerBlock(model.spec,
                                                            runner_options.kv_block_tokens,
                                                            settings.serve.kv_cache_type))
                       << ", " << KvCacheTypeName(settings.serve.kv_cache_type) << ")";
        if (rank != 0) return RunWorkerLoop(*runner, *control);
        return ServeOnCoordinator(settings, model, *runner, control,
                                  rank_model.placement ? &*rank_model.placement : nullptr,
                                  max_context_tokens);
      });
}

}  // namespace herd
