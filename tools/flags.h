// Command-line flags for herd subcommands: `--name value` or `--name=value`,
// boolean flags as `--name`. Each subcommand declares its flags; unknown
// flags, missing values and malformed numbers are errors naming the flag.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace herd {

struct FlagSpec {
  std::string name;  // without dashes
  bool takes_value = true;
  std::string help;
};

class ParsedFlags {
 public:
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The value or `fallback` when absent.
  std::string GetString(const std::string& name, const std::string& fallback = "") const;
  absl::StatusOr<int64_t> GetInt(const std::string& name, int64_t fallback) const;
  absl::StatusOr<uint64_t> GetUint(const std::string& name, uint64_t fallback) const;
  absl::StatusOr<double> GetDouble(const std::string& name, double fallback) const;
  // Comma-separated integers ("1,2,3"); InvalidArgument naming the bad item.
  absl::StatusOr<std::vector<int32_t>> GetIntList(const std::string& name) const;

 private:
  friend absl::StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args,
                                                const std::vector<FlagSpec>& specs);
  std::map<std::string, std::string> values_;
};

// Parses args (not including the program and subcommand names).
absl::StatusOr<ParsedFlags> ParseFlags(const std::vector<std::string>& args,
                                       const std::vector<FlagSpec>& specs);

// "  --name VALUE   help" lines for a usage message.
std::string FlagsHelp(const std::vector<FlagSpec>& specs);

// The bytes of the file a flag names (`flag`, e.g. "--text-file", goes into
// the error): NotFound if it cannot be opened, DataLoss if reading fails.
absl::StatusOr<std::string> ReadFlagFile(const std::string& flag, const std::string& path);

}  // namespace herd
