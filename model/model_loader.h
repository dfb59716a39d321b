// Loads a model from a path, whatever its format.
//
// A directory is read as a Hugging Face checkpoint (config.json +
// *.safetensors); a file is read as GGUF when it starts with the GGUF magic.
// Errors name the file and, where one is at fault, the tensor; bad input never
// crashes or hangs.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model.h"

namespace herd {

absl::StatusOr<std::unique_ptr<Model>> LoadModel(const std::string& path,
                                                 const ModelLoadOptions& options = {});

}  // namespace herd
