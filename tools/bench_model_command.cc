#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>

#include "absl/strings/str_format.h"
#include "comm/env.h"
#include "core/config.h"
#include "core/placement.h"
#include "core/status.h"
#include "core/thread_pool.h"
#include "kernels/cpu_features.h"
#include "model/model_loader.h"
#include "nlohmann/json.hpp"
#include "tools/commands.h"
#include "tools/device.h"
#include "tools/flags.h"
#include "tools/rank_flags.h"
#include "worker/benchmark.h"
#include "worker/engine.h"
#include "worker/kv_cache.h"
#include "worker/rank_group.h"
#include "worker/rank_model.h"

namespace herd {
namespace {

const std::vector<FlagSpec> kBenchFlags = {
    {"model", true, "GGUF file or Hugging Face directory (required)"},
    {"threads", true, "kernel threads; 0 = all cores (default 0)"},
    {"prompt", true, "prefill test length, like llama-bench -p (default 512; 0 skips)"},
    {"gen", true, "decode test length, like -n (default 128; 0 skips)"},
    {"depth", true,
     "tokens already in the context when each test starts, like llama-bench -d (default 0)"},
    {"repetitions", true, "runs of each test; median and spread are reported (default 5)"},
    {"bandwidth-bytes", true, "buffer for the bandwidth measurement (default 1073741824)"},
    {"json", false, "print one JSON object instead of the table"},
    {"local-ranks", true,
     "expert parallelism: N ranks as threads, each running the tests on its own sequence"},
    {"comm", true, kCommFlagHelp},
    {"placement", true, "expert placement file for --local-ranks or mpirun"},
    {"no-expert-skip", false,
     "run every routed expert, ignoring the checkpoint's dynamic skip thresholds"},
    {"step-tokens", true,
     "CPU: tokens per engine step; a longer prompt runs in steps of this many, like "
     "llama-bench -ub (default 128)"},
    {"kv-cache-type", true, "CPU: f32 (default) or f16 KV cache, like llama-bench -ctk/-ctv"},
    {"device", true, "cpu or cuda: where the model runs (default cpu)"},
    {"help", false, "show this help"},
};

std::string HostName() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

// A test's name as llama-bench prints it: "pp512", or "pp512 @ d4096" after
// a depth.
std::string TestName(const char* kind, int64_t tokens, int64_t depth) {
  return depth > 0 ? absl::StrFormat("%s%d @ d%d", kind, tokens, depth)
                   : absl::StrFormat("%s%d", kind, tokens);
}

// Every rank runs the prefill and decode tests on a sequence of its own
// (data-parallel attention) while the MoE layers exchange tokens; rank 0
// prints its throughput and every rank's share of MoE time spent in
// dispatch and combine.
absl::Status RunExpertParallelBench(const RankGroupOptions& group, const std::string& path,
                                    const std::optional<ExpertPlacement>& placement,
                                    const EngineOptions& rank_engine_options,
                                    const ModelBenchOptions& options, std::ostream& out) {
  const int world_size = PlannedWorldSize(group);
  std::vector<EngineStats> stats(world_size);
  ModelBenchResult rank0;
  int rank0_threads = 0;
  bool output_rank = true;
  HERD_RETURN_IF_ERROR(
      RunRanks(group, [&](comm::Communicator* comm, comm::ControlChannel* control) -> absl::Status {
        const int rank = comm->rank();
        // Ranks that are processes (not threads) print only on rank 0.
        if (control->backend_name() != std::string("local")) output_rank = rank == 0;
        HERD_ASSIGN_OR_RETURN(RankModel rank_model, LoadModelForRank(path, comm, placement));
        EngineOptions engine_options = rank_engine_options;
        engine_options.expert_parallelism = {comm, &*rank_model.placement,
                                             absl::Milliseconds(comm::GetCommEnv().timeout_ms)};
        HERD_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                              Engine::Create(*rank_model.model, engine_options));
        ModelBenchOptions rank_options = options;
        rank_options.seed = options.seed + rank;  // each rank its own tokens
        HERD_ASSIGN_OR_RETURN(ModelBenchResult r,
                              RunModelBenchmark(*engine, *rank_model.model, rank_options));
        if (rank == 0) {
          rank0 = r;
          rank0_threads = engine->num_threads();
        }
        // Under mpirun only this process's rank is known here.
        if (rank < static_cast<int>(stats.size())) stats[rank] = engine->stats();
        return absl::OkStatus();
      }));
  if (!output_rank) return absl::OkStatus();
  out << absl::StrFormat("model     %s\n", path);
  out << absl::StrFormat(
      "ranks     %d, %d threads each; every rank runs the tests on its own sequence\n\n",
      world_size, rank_engine_options.num_threads);
  out << "| test   | rank 0 t/s |     ± sd | all ranks t/s |\n";
  out << "|--------|-----------:|---------:|--------------:|\n";
  if (options.prompt_tokens > 0) {
    out << absl::StrFormat("| %-6s | %10.2f | %8.2f | %13.2f |\n",
                           TestName("pp", options.prompt_tokens, options.depth),
                           rank0.prefill_tokens_per_second.median,
                           rank0.prefill_tokens_per_second.stddev,
                           world_size * rank0.prefill_tokens_per_second.median);
  }
  if (options.gen_tokens > 0) {
    out << absl::StrFormat(
        "| %-6s | %10.2f | %8.2f | %13.2f |\n", TestName("tg", options.gen_tokens, options.depth),
        rank0.decode_tokens_per_second.median, rank0.decode_tokens_per_second.stddev,
        world_size * rank0.decode_tokens_per_second.median);
  }
  out << "\n| rank | MoE s | dispatch s | combine s | share of MoE |\n";
  out << "|-----:|------:|-----------:|----------:|-------------:|\n";
  for (int r = 0; r < world_size; ++r) {
    const EngineStats& st = stats[r];
    if (st.forward_calls == 0) continue;  // another process's rank (mpirun)
    out << absl::StrFormat("| %4d | %5.3f | %10.3f | %9.3f | %11.1f%% |\n", r, st.moe_seconds,
                           st.dispatch_seconds, st.combine_seconds,
                           st.moe_seconds > 0
                               ? 100.0 * (st.dispatch_seconds + st.combine_seconds) / st.moe_seconds
                               : 0.0);
  }
  return absl::OkStatus();
}

// The tests' rows of the table both benches print; `ceiling` names what
// decode's weight bandwidth is a share of ("read BW", "copy BW").
void PrintThroughputTable(const ModelBenchResult& r, const ModelBenchOptions& options,
                          double decode_share, const char* ceiling, std::ostream& out) {
  out << absl::StrFormat("| test   |        t/s |     ± sd | weight GB/s | %% of %s |\n", ceiling);
  out << "|--------|-----------:|---------:|------------:|-------------:|\n";
  if (options.prompt_tokens > 0) {
    out << absl::StrFormat("| %-6s | %10.2f | %8.2f |             |              |\n",
                           TestName("pp", options.prompt_tokens, options.depth),
                           r.prefill_tokens_per_second.median, r.prefill_tokens_per_second.stddev);
  }
  if (options.gen_tokens > 0) {
    out << absl::StrFormat("| %-6s | %10.2f | %8.2f | %11.2f | %11.1f%% |\n",
                           TestName("tg", options.gen_tokens, options.depth),
                           r.decode_tokens_per_second.median, r.decode_tokens_per_second.stddev,
                           r.decode_weight_gbps, decode_share);
  }
}

// The JSON both benches print for the tests: "prefill" and "decode".
void AddThroughputJson(const ModelBenchResult& r, const ModelBenchOptions& options,
                       nlohmann::json& j) {
  j["depth"] = options.depth;
  j["prefill"] = {{"tokens", options.prompt_tokens},
                  {"tokens_per_second_median", r.prefill_tokens_per_second.median},
                  {"tokens_per_second_stddev", r.prefill_tokens_per_second.stddev},
                  {"samples", r.prefill_tokens_per_second.samples}};
  j["decode"] = {{"tokens", options.gen_tokens},
                 {"tokens_per_second_median", r.decode_tokens_per_second.median},
                 {"tokens_per_second_stddev", r.decode_tokens_per_second.stddev},
                 {"samples", r.decode_tokens_per_second.samples},
                 {"weight_bytes_per_token", r.decode_weight_bytes},
                 {"weight_gbps", r.decode_weight_gbps}};
}

// One GPU: the tests as on the CPU, with decode's weight bandwidth next to
// the GPU's device-to-device copy bandwidth measured in the same run.
absl::Status RunCudaBench(const std::string& path, bool expert_skipping, bool json,
                          const ModelBenchOptions& options, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadModel(path));
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<ForwardEngine> engine,
                        CreateCudaEngine(*model, expert_skipping));
  HERD_ASSIGN_OR_RETURN(ModelBenchResult r, RunModelBenchmark(*engine, *model, options));
  HERD_ASSIGN_OR_RETURN(const CudaDeviceReport gpu, ReportCudaDevice(*engine));
  const double decode_share = gpu.copy_gbps > 0 ? 100.0 * r.decode_weight_gbps / gpu.copy_gbps : 0;
  if (json) {
    nlohmann::json j;
    j["model"] = path;
    j["host"] = HostName();
    j["device"] = engine->device();
    j["gpu"] = gpu.name;
    AddThroughputJson(r, options, j);
    j["decode"]["percent_of_copy_bandwidth"] = decode_share;
    j["bandwidth"] = {{"copy_gbps", gpu.copy_gbps}};
    j["memory"] = {{"device_weight_bytes", gpu.weight_bytes}};
    out << j.dump(2) << "\n";
    return absl::OkStatus();
  }
  out << absl::StrFormat("model     %s\n", path);
  out << absl::StrFormat("device    %s (%s)\n", engine->device(), gpu.name);
  out << absl::StrFormat("memory    device-to-device copy %.0f GB/s (read + written, same run)\n",
                         gpu.copy_gbps);
  out << absl::StrFormat("weights   %.1f MiB on the device\n\n", gpu.weight_bytes / 1048576.0);
  PrintThroughputTable(r, options, decode_share, "copy BW", out);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunBenchModelCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kBenchFlags));
  if (flags.Has("help")) {
    out << "usage: herd bench --model PATH [--threads T] [--prompt 512] [--gen 128]\n"
        << FlagsHelp(kBenchFlags);
    return absl::OkStatus();
  }
  if (!flags.Has("model")) return absl::InvalidArgumentError("--model is required");
  ModelBenchOptions options;
  HERD_ASSIGN_OR_RETURN(options.prompt_tokens, flags.GetInt("prompt", 512));
  HERD_ASSIGN_OR_RETURN(options.gen_tokens, flags.GetInt("gen", 128));
  HERD_ASSIGN_OR_RETURN(options.depth, flags.GetInt("depth", 0));
  HERD_ASSIGN_OR_RETURN(int64_t repetitions, flags.GetInt("repetitions", 5));
  HERD_ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", 0));
  HERD_ASSIGN_OR_RETURN(int64_t bandwidth_bytes, flags.GetInt("bandwidth-bytes", int64_t{1} << 30));
  EngineOptions engine_options;
  HERD_ASSIGN_OR_RETURN(engine_options.max_step_tokens,
                        flags.GetInt("step-tokens", engine_options.max_step_tokens));
  if (options.prompt_tokens < 0 || options.gen_tokens < 0 || options.depth < 0 || repetitions < 1 ||
      threads < 0 || bandwidth_bytes < (1 << 20) || engine_options.max_step_tokens < 1) {
    return absl::InvalidArgumentError(
        "--prompt, --gen and --depth must be >= 0, --repetitions >= 1, --threads >= 0, "
        "--bandwidth-bytes >= 1 MiB, --step-tokens >= 1");
  }
  engine_options.expert_skipping = !flags.Has("no-expert-skip");
  if (flags.Has("kv-cache-type")) {
    HERD_ASSIGN_OR_RETURN(engine_options.kv_cache_type,
                          ParseKvCacheType(flags.GetString("kv-cache-type")));
  }
  options.repetitions = static_cast<int>(repetitions);

  const std::string path = flags.GetString("model");
  HERD_ASSIGN_OR_RETURN(const Device device, ParseDevice(flags.GetString("device", "cpu")));
  RankGroupOptions group;
  HERD_ASSIGN_OR_RETURN(int64_t local_ranks, flags.GetInt("local-ranks", 1));
  if (local_ranks < 1 || local_ranks > 256) {
    return absl::InvalidArgumentError("--local-ranks must be in [1, 256]");
  }
  group.local_ranks = static_cast<int>(local_ranks);
  if (flags.Has("comm")) group.comm = flags.GetString("comm");
  if (group.comm == "nccl") {
    return absl::UnimplementedError(
        "herd bench runs one GPU (--device cuda) or CPU ranks; --comm nccl runs in herd generate "
        "and herd serve");
  }
  if (device == Device::kCuda) {
    if (flags.Has("step-tokens")) {
      return absl::UnimplementedError("--step-tokens applies to the CPU engine, not --device cuda");
    }
    if (engine_options.kv_cache_type != DType::kF32) {
      return absl::InvalidArgumentError(
          "--kv-cache-type f16 runs on the CPU engine; with --device cuda the KV cache is f32");
    }
    if (PlannedWorldSize(group) > 1 || flags.Has("placement")) {
      return absl::UnimplementedError(
          "--device cuda runs one rank: --local-ranks, --comm and --placement are not supported "
          "with it yet");
    }
    return RunCudaBench(path, !flags.Has("no-expert-skip"), flags.Has("json"), options, out);
  }
  if (PlannedWorldSize(group) > 1) {
    std::optional<ExpertPlacement> placement;
    if (flags.Has("placement")) {
      HERD_ASSIGN_OR_RETURN(placement, ReadPlacementFile(flags.GetString("placement")));
    }
    if (threads == 0 && group.local_ranks > 1) {
      threads = std::max(1, ThreadPool::DefaultNumThreads() / group.local_ranks);
    }
    engine_options.num_threads = static_cast<int>(threads);
    return RunExpertParallelBench(group, path, placement, engine_options, options, out);
  }
  // What the process holds before the model (code, shared libraries, the
  // runtime): not the model's. Everything from here on is counted.
  const int64_t process_before_load = ResidentBytes();
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, LoadModel(path));
  engine_options.num_threads = static_cast<int>(threads);
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(*model, engine_options));
  const int num_threads = engine->num_threads();

  HERD_ASSIGN_OR_RETURN(ModelBenchResult r, RunModelBenchmark(*engine, *model, options));
  const int64_t kv_bytes = KvCache::BytesPerBlock(
      model->spec, options.depth + std::max(options.prompt_tokens, options.gen_tokens),
      engine_options.kv_cache_type);
  // With the KV cache of the tests, which RunModelBenchmark frees on return.
  const int64_t process_resident = r.process_resident_bytes;
  const int64_t resident = process_resident - process_before_load;
  const int64_t weight_bytes = engine->packed_weight_bytes();
  // Measured after the model tests, so its buffer does not count as resident.
  const BandwidthResult bw = MeasureMemoryBandwidth(num_threads, bandwidth_bytes);
  const double decode_share = bw.read_gbps > 0 ? 100.0 * r.decode_weight_gbps / bw.read_gbps : 0;
  const double fma_peak_gflops = MeasureFmaPeakGflops(num_threads);
  const double prefill_share = fma_peak_gflops > 0 ? 100.0 * r.prefill_gflops / fma_peak_gflops : 0;

  if (flags.Has("json")) {
    nlohmann::json j;
    j["model"] = path;
    j["host"] = HostName();
    j["threads"] = num_threads;
    j["step_tokens"] = engine_options.max_step_tokens;
    j["kv_cache_type"] = KvCacheTypeName(engine_options.kv_cache_type);
    j["isa"] = cpu::DescribeCpu();
    AddThroughputJson(r, options, j);
    j["decode"]["skipped_expert_fraction"] = r.decode_skipped_fraction;
    j["decode"]["percent_of_read_bandwidth"] = decode_share;
    j["bandwidth"] = {{"read_gbps", bw.read_gbps}, {"copy_gbps", bw.copy_gbps}};
    j["prefill"]["flops"] = r.prefill_flops;
    j["prefill"]["gflops"] = r.prefill_gflops;
    j["prefill"]["percent_of_f32_fma_peak"] = prefill_share;
    j["compute"] = {{"f32_fma_peak_gflops", fma_peak_gflops}};
    j["memory"] = {{"resident_bytes", resident},
                   {"process_resident_bytes", process_resident},
                   {"process_resident_bytes_before_load", process_before_load},
                   {"weight_bytes", weight_bytes},
                   {"kv_cache_bytes", kv_bytes},
                   {"resident_over_weights_plus_kv",
                    static_cast<double>(resident) / static_cast<double>(weight_bytes + kv_bytes)}};
    out << j.dump(2) << "\n";
    return absl::OkStatus();
  }
  out << absl::StrFormat("model     %s\n", path);
  out << absl::StrFormat("cpu       %s, %d threads, steps of %d tokens, %s KV cache\n",
                         cpu::DescribeCpu(), num_threads, engine_options.max_step_tokens,
                         KvCacheTypeName(engine_options.kv_cache_type));
  out << absl::StrFormat("memory    read %.1f GB/s, copy %.1f GB/s (same run, %d threads)\n",
                         bw.read_gbps, bw.copy_gbps, num_threads);
  out << absl::StrFormat("compute   f32 FMA peak %.0f GFLOP/s (same run, %d threads)\n",
                         fma_peak_gflops, num_threads);
  out << absl::StrFormat(
      "resident  %.1f MiB = %.3f x (weights %.1f MiB + KV %.1f MiB); the process: %.1f MiB, "
      "%.1f MiB of it before loading\n\n",
      resident / 1048576.0, static_cast<double>(resident) / (weight_bytes + kv_bytes),
      weight_bytes / 1048576.0, kv_bytes / 1048576.0, process_resident / 1048576.0,
      process_before_load / 1048576.0);
  PrintThroughputTable(r, options, decode_share, "read BW", out);
  if (options.prompt_tokens > 0) {
    // Quantized matrices multiply with int8 dot products, whose peak is higher.
    out << absl::StrFormat(
        "\nprefill   %.0f GFLOP/s (matrices, attention, lm head for the last token), %.0f%% of "
        "the f32 FMA peak\n",
        r.prefill_gflops, prefill_share);
  }
  if (r.decode_skipped_fraction > 0) {
    out << absl::StrFormat(
        "\ndynamic skipping left out %.1f%% of routed expert calls while decoding "
        "(--no-expert-skip runs them all)\n",
        100.0 * r.decode_skipped_fraction);
  }
  return absl::OkStatus();
}

}  // namespace herd
