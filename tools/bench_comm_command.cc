// herd bench comm: flags -> comm::RunCommBench -> a table on rank 0.
#include <cstdlib>
#include <string>

#include "absl/strings/str_split.h"
#include "comm/comm_bench.h"
#include "comm/env.h"
#include "comm/registry.h"
#include "core/status.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace herd {
namespace {

const std::vector<FlagSpec> kBenchCommFlags = {
    {"backend", true, "communicator backend (required): see the list below"},
    {"tokens", true, "tokens per rank, one row each (default 1,8,64,512)"},
    {"hidden", true, "hidden size in floats (default 1024)"},
    {"top-k", true, "experts per token (default 2)"},
    {"experts", true, "experts, placed in contiguous blocks over the ranks (default 8)"},
    {"ranks", true,
     "local/nccl: ranks as threads of this process (default 2); mpi: set by mpirun; ucx: by "
     "HERD_WORLD_SIZE"},
    {"iterations", true, "timed iterations per row; the median is reported (default 50)"},
    {"warmup", true, "untimed iterations before those (default 5)"},
    {"seed", true, "routing seed (default 1)"},
    {"timeout-ms", true, "deadline of every call (default 60000)"},
    {"help", false, "show this help"},
};

}  // namespace

absl::Status RunBenchCommCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kBenchCommFlags));
  if (flags.Has("help")) {
    out << "usage: herd bench comm --backend B [--tokens 1,8,64,512] [--hidden 1024] [--top-k 2]\n"
        << "                       [--experts 8] [--ranks N] [--iterations 50]\n"
        << "  mpi: mpirun -n 4 herd bench comm --backend mpi ...\n"
        << "  ucx: one process per rank, each with HERD_RANK, HERD_WORLD_SIZE,\n"
        << "       HERD_LEADER_ADDRESS (and HERD_LEADER_PORT) set: herd bench comm --backend ucx\n"
        << FlagsHelp(kBenchCommFlags) << "backends built: " << comm::CommunicatorBackendNames()
        << "\n";
    return absl::OkStatus();
  }
  if (!flags.Has("backend")) {
    return absl::InvalidArgumentError("--backend is required (" + comm::CommunicatorBackendNames() +
                                      ")");
  }
  comm::CommBenchOptions options;
  options.backend = flags.GetString("backend");
  bool known = false;
  for (const comm::CommunicatorBackend& b : comm::CommunicatorBackends()) {
    known = known || options.backend == b.name;
  }
  if (!known) {
    return absl::InvalidArgumentError("--backend '" + options.backend + "' is not one of " +
                                      comm::CommunicatorBackendNames());
  }
  HERD_ASSIGN_OR_RETURN(const std::vector<int32_t> tokens, flags.GetIntList("tokens"));
  if (flags.Has("tokens")) options.num_tokens.assign(tokens.begin(), tokens.end());
  HERD_ASSIGN_OR_RETURN(options.hidden_size, flags.GetInt("hidden", options.hidden_size));
  HERD_ASSIGN_OR_RETURN(options.top_k, flags.GetInt("top-k", options.top_k));
  HERD_ASSIGN_OR_RETURN(options.num_experts, flags.GetInt("experts", options.num_experts));
  HERD_ASSIGN_OR_RETURN(const int64_t ranks, flags.GetInt("ranks", options.num_local_ranks));
  HERD_ASSIGN_OR_RETURN(const int64_t iterations, flags.GetInt("iterations", options.iterations));
  HERD_ASSIGN_OR_RETURN(const int64_t warmup, flags.GetInt("warmup", options.warmup));
  HERD_ASSIGN_OR_RETURN(const uint64_t seed, flags.GetUint("seed", options.seed));
  HERD_ASSIGN_OR_RETURN(options.timeout_ms, flags.GetInt("timeout-ms", options.timeout_ms));
  if (ranks < 1 || ranks > 256 || iterations < 1 || iterations > 1000000 || warmup < 0 ||
      warmup > 1000000) {
    return absl::InvalidArgumentError(
        "--ranks must be in [1, 256], --iterations in [1, 10^6], --warmup in [0, 10^6]");
  }
  if ((options.backend == "mpi" || options.backend == "ucx") && flags.Has("ranks")) {
    return absl::InvalidArgumentError(
        "--ranks is for local/nccl; mpirun -n (mpi) or HERD_WORLD_SIZE (ucx) sets it");
  }
  options.num_local_ranks = static_cast<int>(ranks);
  options.iterations = static_cast<int>(iterations);
  options.warmup = static_cast<int>(warmup);
  options.seed = static_cast<uint32_t>(seed);
  HERD_RETURN_IF_ERROR(options.Validate());

  HERD_ASSIGN_OR_RETURN(const comm::CommBenchResult result, comm::RunCommBench(options));
  if (result.rank != 0) return absl::OkStatus();
  const auto lookup = [](const char* name) -> const char* { return std::getenv(name); };
  for (absl::string_view line :
       absl::StrSplit(comm::CommEnvReport(comm::GetCommEnv(), lookup), '\n', absl::SkipEmpty())) {
    out << "# " << line << "\n";
  }
  out << comm::FormatCommBenchTable(options, result);
  return absl::OkStatus();
}

}  // namespace herd
