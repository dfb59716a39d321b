#include "model/model_loader.h"

#include <sys/stat.h>

#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "model/gguf_loader.h"
#include "model/hf_loader.h"

namespace herd {

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path,
                                                 const ModelLoadOptions& options) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("model path does not exist: ", path));
  }
  if (S_ISDIR(st.st_mode)) return LoadHfModel(path, options);
  char magic[4] = {};
  std::ifstream in(path, std::ios::binary);
  if (!in.read(magic, 4)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": file too short to be a model (", st.st_size, " bytes)"));
  }
  if (std::memcmp(magic, "GGUF", 4) == 0) return LoadGgufModel(path, options);
  return absl::InvalidArgumentError(absl::StrCat(
      path, ": unknown model format (expected a GGUF file or a Hugging Face directory)"));
}

}  // namespace herd
