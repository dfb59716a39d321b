// Writing files so that readers never see a partial one.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace herd {

// Writes `bytes` to `path` + ".tmp", then renames it over `path`.
// PermissionDenied when the temporary cannot be created, DataLoss on a short
// write, Internal when the rename fails; the temporary is removed on error.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view bytes);

}  // namespace herd
