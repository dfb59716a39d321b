// The herd subcommands. Each takes its arguments (after the subcommand name),
// writes its result to `out`, and returns a Status; RunCli turns errors into a
// message on stderr and a non-zero exit code.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace herd {

// herd inspect --model PATH [--json] [--tensors]
absl::Status RunInspectCommand(const std::vector<std::string>& args, std::ostream& out);

// herd serve [--model PATH] [--host H] [--port P] [--config FILE] ...: the
// OpenAI-compatible server (docs/serving.md).
absl::Status RunServeCommand(const std::vector<std::string>& args, std::ostream& out);

// herd generate --model PATH (--prompt-ids 1,2,3 | --prompt TEXT) --max-new-tokens N
//   [--temperature T]
//   [--top-p P] [--seed S] [--threads T] [--dump-logits FILE] [--config FILE]
absl::Status RunGenerateCommand(const std::vector<std::string>& args, std::ostream& out);

// herd synth [shape flags] --dtype D --seed S --out FILE: a random-weight GGUF model.
absl::Status RunSynthCommand(const std::vector<std::string>& args, std::ostream& out);

// herd compress --model IN --out OUT [--bits B] [--group-size G] [--asym] [--modules M]
//   [--report FILE] [--force]: Herd's checkpoint with quantized weights (docs/compression.md).
absl::Status RunCompressCommand(const std::vector<std::string>& args, std::ostream& out);

// herd bench --model PATH ... (RunBenchModelCommand), herd bench comm ...
// (RunBenchCommCommand), herd bench kernels ... (RunBenchKernelsCommand) or herd bench
// serve ... (RunBenchServeCommand).
absl::Status RunBenchCommand(const std::vector<std::string>& args, std::ostream& out);

// herd bench --model PATH [--threads T] [--prompt 512] [--gen 128] [--repetitions R]
absl::Status RunBenchModelCommand(const std::vector<std::string>& args, std::ostream& out);

// herd bench comm --backend local|mpi|nccl --tokens T --hidden H --top-k K --experts E
absl::Status RunBenchCommCommand(const std::vector<std::string>& args, std::ostream& out);

// herd bench kernels [--hidden H --ffn F --experts E --bits 4|8 --group-size G]: each CUDA
// op's time, the expert GEMM against the GPU's measured ceilings and cuBLAS bf16.
absl::Status RunBenchKernelsCommand(const std::vector<std::string>& args, std::ostream& out);

// herd bench serve --url URL [--concurrency C] [--requests R] [--prompt-len P] [--gen-len G]
//   [--api-key K] [--vocab V] [--seed S] [--stream true|false] [--json]: load on an
//   OpenAI-compatible server's /v1/completions; throughput and TTFT/ITL/E2E percentiles.
absl::Status RunBenchServeCommand(const std::vector<std::string>& args, std::ostream& out);

// herd tokenize --model PATH (--text S | --text-file F) [--bos] [--eos] [--special]
absl::Status RunTokenizeCommand(const std::vector<std::string>& args, std::ostream& out);

// herd detokenize --model PATH --ids 1,2,3 [--special] [--keep-space-prefix]
absl::Status RunDetokenizeCommand(const std::vector<std::string>& args, std::ostream& out);

// herd plan --trace TRACE [--nodes N --ranks-per-node R --redundant K ...] --out FILE:
// expert placement from a routing trace (docs/placement.md).
absl::Status RunPlanCommand(const std::vector<std::string>& args, std::ostream& out);

// Dispatches argv to a subcommand; returns the process exit code.
int RunCli(int argc, char** argv);

}  // namespace herd
