#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "tools/commands.h"

namespace herd {
namespace {

using CommandFn = absl::Status (*)(const std::vector<std::string>&, std::ostream&);

struct Command {
  const char* name;
  CommandFn run;
  const char* summary;
};

// Every subcommand, in the order `herd --help` lists them. One line each.
constexpr Command kCommands[] = {
    {"inspect", RunInspectCommand, "describe a model: architecture, shapes, dtypes, bytes"},
    {"serve", RunServeCommand, "serve the model over an OpenAI-compatible HTTP API"},
    {"generate", RunGenerateCommand, "run a prompt of token ids and print the generated ids"},
    {"tokenize", RunTokenizeCommand, "print the token ids of a text (the model's tokenizer)"},
    {"detokenize", RunDetokenizeCommand, "print the text of token ids"},
    {"bench", RunBenchCommand, "measure prefill/decode speed (or: bench comm, the all-to-all)"},
    {"compress", RunCompressCommand, "quantize a model's weights into a Herd checkpoint"},
    {"synth", RunSynthCommand, "write a random-weight MoE model (GGUF, llama.cpp layout)"},
    {"plan", RunPlanCommand, "place experts on ranks from a routing trace (herd plan --help)"},
};

void PrintUsage(std::ostream& out) {
  out << "usage: herd <command> [flags]\n\ncommands:\n";
  for (const Command& c : kCommands) {
    std::string name = c.name;
    name.resize(12, ' ');
    out << "  " << name << c.summary << "\n";
  }
  out << "\nRun 'herd <command> --help' for a command's flags. "
         "HERD_LOG_LEVEL=error|warn|info|debug\n"
         "sets how much is logged to stderr.\n";
}

}  // namespace

int RunCli(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0) {
    PrintUsage(std::cout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  for (const Command& c : kCommands) {
    if (name != c.name) continue;
    const absl::Status status = c.run(args, std::cout);
    std::cout.flush();
    if (!status.ok()) {
      std::cerr << "herd " << name << ": " << status.message() << "\n";
      return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
    }
    return 0;
  }
  std::cerr << "herd: unknown command '" << name << "'\n\n";
  PrintUsage(std::cerr);
  return 2;
}

}  // namespace herd
