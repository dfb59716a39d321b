#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "tools/commands.h"

namespace herd {
namespace {

constexpr char kUsage[] =
    "usage: herd <command> [flags]\n"
    "\n"
    "commands:\n"
    "  inspect    describe a model: architecture, shapes, dtypes, bytes by module\n"
    "  generate   run a prompt of token ids and print the generated ids\n"
    "\n"
    "Run 'herd <command> --help' for a command's flags. HERD_LOG_LEVEL=error|warn|info|debug\n"
    "sets how much is logged to stderr.\n";

}  // namespace

int RunCli(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  absl::Status status;
  if (command == "inspect") {
    status = RunInspectCommand(args, std::cout);
  } else if (command == "generate") {
    status = RunGenerateCommand(args, std::cout);
  } else {
    std::cerr << "herd: unknown command '" << command << "'\n\n" << kUsage;
    return 2;
  }
  std::cout.flush();
  if (!status.ok()) {
    std::cerr << "herd " << command << ": " << status.message() << "\n";
    return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}

}  // namespace herd
