#include "coordinator/placement/gzip_file.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace herd {

absl::StatusOr<std::string> ReadMaybeGzipFile(const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  if (!probe) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  unsigned char magic[2] = {0, 0};
  probe.read(reinterpret_cast<char*>(magic), 2);
  const bool gzip = probe.gcount() == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
  if (!gzip) {
    probe.clear();
    probe.seekg(0);
    std::stringstream buffer;
    buffer << probe.rdbuf();
    return buffer.str();
  }
  probe.close();
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::string out;
  char buffer[1 << 16];
  while (true) {
    const int n = gzread(file, buffer, sizeof(buffer));
    if (n < 0) {
      int errnum = 0;
      const std::string message = gzerror(file, &errnum);
      gzclose(file);
      return absl::DataLossError(absl::StrCat(path, ": corrupt gzip data: ", message));
    }
    if (n == 0) break;
    out.append(buffer, n);
  }
  // gzclose_r reports a truncated stream (missing trailer) as Z_BUF_ERROR.
  const int close_status = gzclose_r(file);
  if (close_status != Z_OK) {
    return absl::DataLossError(absl::StrCat(path, ": truncated or corrupt gzip stream"));
  }
  return out;
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& text, bool gzip) {
  const std::string tmp = path + ".tmp";
  if (gzip) {
    gzFile file = gzopen(tmp.c_str(), "wb9");
    if (file == nullptr) return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp));
    size_t done = 0;
    while (done < text.size()) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(text.size() - done, 1 << 20));
      if (gzwrite(file, text.data() + done, chunk) != static_cast<int>(chunk)) {
        gzclose(file);
        return absl::DataLossError(absl::StrCat("short write to ", tmp));
      }
      done += chunk;
    }
    if (gzclose(file) != Z_OK) return absl::DataLossError(absl::StrCat("cannot finish ", tmp));
  } else {
    std::ofstream file(tmp, std::ios::binary | std::ios::trunc);
    if (!file) return absl::PermissionDeniedError(absl::StrCat("cannot write ", tmp));
    file << text;
    file.flush();
    if (!file) return absl::DataLossError(absl::StrCat("short write to ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace herd
