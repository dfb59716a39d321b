#include "core/status.h"
#include "tools/commands.h"

namespace herd {

absl::Status RunBenchCommand(const std::vector<std::string>& args, std::ostream& out) {
  if (!args.empty() && args[0] == "comm") {
    return RunBenchCommCommand(std::vector<std::string>(args.begin() + 1, args.end()), out);
  }
  if (!args.empty() && args[0] == "kernels") {
    return RunBenchKernelsCommand(std::vector<std::string>(args.begin() + 1, args.end()), out);
  }
  if (!args.empty() && args[0] == "serve") {
    return RunBenchServeCommand(std::vector<std::string>(args.begin() + 1, args.end()), out);
  }
  return RunBenchModelCommand(args, out);
}

}  // namespace herd
