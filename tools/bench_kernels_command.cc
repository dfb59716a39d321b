// herd bench kernels: flags -> cuda::RunKernelBench (a table per op family).
#include <string>
#include <vector>

#include "core/status.h"
#include "tools/commands.h"
#include "tools/flags.h"
#ifdef HERD_TOOLS_WITH_CUDA
#include "kernels/cuda/bench/kernel_bench.h"
#endif

namespace herd {
namespace {

const std::vector<FlagSpec> kBenchKernelsFlags = {
    {"hidden", true, "expert GEMM input size (default 4096, Mixtral-8x7B)"},
    {"ffn", true, "expert FFN size (default 14336)"},
    {"experts", true, "active experts, equal tokens each (default 8)"},
    {"bits", true, "expert weight bits: 4 (W4A16) or 8 (W8A16) (default 4)"},
    {"group-size", true, "values per scale: 32, 64 or 128 (default 32)"},
    {"decode-tokens", true, "tokens per expert of the decode rows (default 1,2,4,8,16,32,64)"},
    {"prefill-tokens", true, "tokens per expert of the prefill rows (default 256,1024,4096)"},
    {"gemm-only", false, "time only the expert GEMM, not the other ops"},
    {"iterations", true, "timed runs per row; the median is reported (default 50)"},
    {"warmup", true, "untimed runs before those (default 5)"},
    {"help", false, "show this help"},
};

}  // namespace

absl::Status RunBenchKernelsCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kBenchKernelsFlags));
  if (flags.Has("help")) {
    out << "usage: herd bench kernels [--hidden 4096 --ffn 14336 --experts 8] [--bits 4]\n"
        << "                          [--group-size 32] [--decode-tokens 1,2,4] [--prefill-tokens "
           "256]\n"
        << "  Times every CUDA op; the expert GEMM as % of the copy bandwidth and bf16\n"
        << "  peak measured in the same run, and against cuBLAS bf16 on the same shapes.\n"
        << FlagsHelp(kBenchKernelsFlags);
    return absl::OkStatus();
  }
#ifdef HERD_TOOLS_WITH_CUDA
  cuda::KernelBenchOptions options;
  HERD_ASSIGN_OR_RETURN(options.hidden, flags.GetInt("hidden", options.hidden));
  HERD_ASSIGN_OR_RETURN(options.ffn, flags.GetInt("ffn", options.ffn));
  HERD_ASSIGN_OR_RETURN(options.experts, flags.GetInt("experts", options.experts));
  HERD_ASSIGN_OR_RETURN(const int64_t bits, flags.GetInt("bits", options.bits));
  HERD_ASSIGN_OR_RETURN(const int64_t group, flags.GetInt("group-size", options.group_size));
  HERD_ASSIGN_OR_RETURN(const int64_t iterations, flags.GetInt("iterations", options.iterations));
  HERD_ASSIGN_OR_RETURN(const int64_t warmup, flags.GetInt("warmup", options.warmup));
  options.other_ops = !flags.Has("gemm-only");
  options.bits = static_cast<int>(bits);
  options.group_size = static_cast<int>(group);
  options.iterations = static_cast<int>(std::min<int64_t>(iterations, 1000000));
  options.warmup = static_cast<int>(std::min<int64_t>(warmup, 1000000));
  if (flags.Has("decode-tokens")) {
    HERD_ASSIGN_OR_RETURN(const std::vector<int32_t> t, flags.GetIntList("decode-tokens"));
    options.decode_tokens.assign(t.begin(), t.end());
  }
  if (flags.Has("prefill-tokens")) {
    HERD_ASSIGN_OR_RETURN(const std::vector<int32_t> t, flags.GetIntList("prefill-tokens"));
    options.prefill_tokens.assign(t.begin(), t.end());
  }
  return cuda::RunKernelBench(options, out);
#else
  return absl::FailedPreconditionError(
      "this herd was built without CUDA (HERD_WITH_CUDA=OFF): herd bench kernels needs it");
#endif
}

}  // namespace herd
