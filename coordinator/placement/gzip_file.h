// Whole-file reads and writes that understand gzip, for traces and fixtures.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace herd {

// Reads a file, decompressing it when it is gzip (detected by its magic bytes,
// not its name). NotFound when it cannot be opened; DataLoss when the gzip
// stream is corrupt or truncated.
absl::StatusOr<std::string> ReadMaybeGzipFile(const std::string& path);

// Writes `text` to `path` (gzip-compressed when `gzip` is true) through a
// temporary file renamed into place, so readers never see a partial file.
absl::Status WriteFileAtomically(const std::string& path, const std::string& text, bool gzip);

}  // namespace herd
