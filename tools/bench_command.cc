#include "core/status.h"
#include "tools/commands.h"

namespace herd {

absl::Status RunBenchCommand(const std::vector<std::string>& args, std::ostream& out) {
  if (!args.empty() && args[0] == "comm") {
    return RunBenchCommCommand(std::vector<std::string>(args.begin() + 1, args.end()), out);
  }
  return absl::InvalidArgumentError(
      "usage: herd bench comm [flags]  (run 'herd bench comm --help' for its flags)");
}

}  // namespace herd
