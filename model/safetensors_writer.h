// Writes .safetensors files (layout in model/safetensors_file.h).
//
// Used by tests to build checkpoints and by Herd's checkpoint writer. The
// header is padded with spaces to a multiple of 8 bytes, as the reference
// implementation does, so the data region starts 8-byte aligned. Tensors are
// stored back to back, larger element types first (insertion order within a
// type size), so each starts at a multiple of its element size and the file
// reads with the reference implementation too. Not thread-safe.
//
//   SafetensorsWriter writer;
//   HERD_RETURN_IF_ERROR(writer.AddTensor("w", DType::kBF16, {4, 8}, bytes.data(), bytes.size()));
//   writer.SetMetadata("format", "pt");
//   HERD_RETURN_IF_ERROR(writer.WriteFile(path));
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "core/dtype.h"
#include "model/safetensors_file.h"

namespace herd {

class SafetensorsWriter {
 public:
  // Copies `num_bytes` bytes at `data` as tensor `name` of `dtype` and `shape`
  // (outermost first). InvalidArgument when the name is empty, "__metadata__"
  // or already added, a dim is negative, or num_bytes differs from
  // num_elements * element size.
  absl::Status AddTensor(const std::string& name, SafetensorsDType dtype,
                         const std::vector<int64_t>& shape, const void* data, size_t num_bytes);
  // The same for a Herd dtype: F32, F16, BF16 or I32 (InvalidArgument for quantized types).
  absl::Status AddTensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                         const void* data, size_t num_bytes);

  // Sets "__metadata__"[key] = value (replacing an earlier value).
  void SetMetadata(const std::string& key, const std::string& value);

  // Writes the file to `path` + ".tmp" and renames it over `path`, so readers
  // never see a partial file. Internal error naming the path on I/O failure.
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    SafetensorsDType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  absl::flat_hash_set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace herd
