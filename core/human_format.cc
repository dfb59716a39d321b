#include "core/human_format.h"

#include "absl/strings/str_format.h"

namespace herd {

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  if (u == 0) return absl::StrFormat("%.0f %s", bytes, units[u]);
  return absl::StrFormat("%.2f %s", bytes, units[u]);
}

}  // namespace herd
