#include "absl/strings/ascii.h"
#include "core/status.h"
#include "model/synth.h"
#include "tools/commands.h"
#include "tools/flags.h"

namespace herd {
namespace {

const std::vector<FlagSpec> kSynthFlags = {
    {"arch", true, "architecture (default mixtral)"},
    {"layers", true, "transformer blocks (default 2)"},
    {"hidden", true, "hidden size (default 64)"},
    {"heads", true, "attention heads (default 4)"},
    {"kv-heads", true, "key/value heads (default 2)"},
    {"experts", true, "routed experts per layer (default 8)"},
    {"top-k", true, "experts per token (default 2)"},
    {"ffn", true, "expert FFN size (default 128)"},
    {"vocab", true, "vocabulary size (default 512, or the --tokenizer-from file's)"},
    {"tokenizer-from", true,
     "GGUF whose tokenizer the model takes, e.g. a llama.cpp ggml-vocab-*.gguf (default: none, "
     "ids only)"},
    {"context", true, "context length recorded in the file (default 4096)"},
    {"dtype", true, "f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 for every matrix (default f32)"},
    {"outliers", false, "heavy-tailed weights with outlier input channels"},
    {"hot-experts", true,
     "skewed router: experts [0, N) of every layer get most tokens (default 0)"},
    {"hot-expert-scale", true, "router row scale of the hot experts (default 8)"},
    {"seed", true, "random seed (default 1)"},
    {"threads", true, "generator threads, 0 = all cores (default 0)"},
    {"out", true, "output GGUF path (required)"},
    {"help", false, "show this help"},
};

}  // namespace

absl::Status RunSynthCommand(const std::vector<std::string>& args, std::ostream& out) {
  HERD_ASSIGN_OR_RETURN(ParsedFlags flags, ParseFlags(args, kSynthFlags));
  if (flags.Has("help")) {
    out << "usage: herd synth [shape flags] --dtype q4_0 --seed 1 --out model.gguf\n"
        << FlagsHelp(kSynthFlags);
    return absl::OkStatus();
  }
  if (!flags.Has("out")) return absl::InvalidArgumentError("--out is required");
  SynthOptions o;
  o.arch = flags.GetString("arch", o.arch);
  HERD_ASSIGN_OR_RETURN(o.num_layers, flags.GetInt("layers", o.num_layers));
  HERD_ASSIGN_OR_RETURN(o.hidden_size, flags.GetInt("hidden", o.hidden_size));
  HERD_ASSIGN_OR_RETURN(o.num_heads, flags.GetInt("heads", o.num_heads));
  HERD_ASSIGN_OR_RETURN(o.num_kv_heads, flags.GetInt("kv-heads", o.num_kv_heads));
  HERD_ASSIGN_OR_RETURN(o.num_experts, flags.GetInt("experts", o.num_experts));
  HERD_ASSIGN_OR_RETURN(o.num_experts_per_token, flags.GetInt("top-k", o.num_experts_per_token));
  HERD_ASSIGN_OR_RETURN(o.expert_ffn_size, flags.GetInt("ffn", o.expert_ffn_size));
  o.tokenizer_from = flags.GetString("tokenizer-from", "");
  HERD_ASSIGN_OR_RETURN(o.vocab_size,
                        flags.GetInt("vocab", o.tokenizer_from.empty() ? o.vocab_size : 0));
  HERD_ASSIGN_OR_RETURN(o.context_length, flags.GetInt("context", o.context_length));
  HERD_ASSIGN_OR_RETURN(o.dtype, ParseDType(flags.GetString("dtype", "f32")));
  HERD_ASSIGN_OR_RETURN(o.seed, flags.GetUint("seed", o.seed));
  HERD_ASSIGN_OR_RETURN(int64_t threads, flags.GetInt("threads", 0));
  o.num_threads = static_cast<int>(threads);
  o.outliers = flags.Has("outliers");
  HERD_ASSIGN_OR_RETURN(o.hot_experts, flags.GetInt("hot-experts", o.hot_experts));
  HERD_ASSIGN_OR_RETURN(double hot_scale, flags.GetDouble("hot-expert-scale", o.hot_expert_scale));
  o.hot_expert_scale = static_cast<float>(hot_scale);
  const std::string path = flags.GetString("out");
  HERD_RETURN_IF_ERROR(SynthesizeModel(o, path));
  out << "wrote " << path << "\n";
  return absl::OkStatus();
}

}  // namespace herd
