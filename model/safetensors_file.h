// Reads .safetensors files: the tensor format of Hugging Face checkpoints.
//
// Layout (https://github.com/huggingface/safetensors):
//
//   [8 bytes]  N, little-endian uint64: header length in bytes
//   [N bytes]  UTF-8 JSON object, possibly padded with trailing spaces:
//                {"<name>": {"dtype": "BF16", "shape": [4096, 14336],
//                            "data_offsets": [begin, end]}, ...,
//                 "__metadata__": {"<key>": "<string value>", ...}}
//   [rest]     the data region; data_offsets are relative to its start
//
// Tensors are row-major, little-endian and used in place from the memory map.
// Opening validates the whole header, so any tensor it lists can be read
// without further bounds checks: offsets lie in the data region, end - begin
// equals num_elements * element size, dims are non-negative and their product
// does not overflow, tensors do not overlap, names (and keys in any JSON
// object) are unique. Gaps between tensors are allowed (Herd's own checkpoints
// may pad for alignment). Errors are InvalidArgument naming the file and, where
// one is at fault, the tensor; bad input never crashes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "core/mapped_file.h"
#include "core/tensor_view.h"

namespace herd {

// Element types a safetensors header may name (the reference implementation's
// list). Every one is parsed so that a file holding, say, an I64 buffer still
// opens; only F32/F16/BF16/I32 convert to a TensorView, the rest are read as
// raw bytes (U8/I8 for Herd's packed checkpoints).
enum class SafetensorsDType : uint8_t {
  kBool,
  kU8,
  kI8,
  kF8E5M2,
  kF8E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
};

// The header spelling: "F32", "BF16", "U8", "F8_E4M3", ...
const char* SafetensorsDTypeName(SafetensorsDType dtype);
// Inverse of SafetensorsDTypeName (exact, case-sensitive like the format);
// InvalidArgument for anything else.
absl::StatusOr<SafetensorsDType> ParseSafetensorsDType(const std::string& name);
int64_t SafetensorsDTypeSize(SafetensorsDType dtype);
// The herd::DType of the same element type (F32, F16, BF16, I32), or
// InvalidArgument for types Herd has no kernel type for.
absl::StatusOr<DType> ToHerdDType(SafetensorsDType dtype);
// F32/F16/BF16/I32 -> their safetensors type; InvalidArgument for quantized types.
absl::StatusOr<SafetensorsDType> FromHerdDType(DType dtype);

// One tensor as the header describes it, with its bytes located in the map.
struct SafetensorsTensor {
  std::string name;
  SafetensorsDType dtype = SafetensorsDType::kF32;
  std::vector<int64_t> shape;     // outermost first; empty for a scalar
  const uint8_t* data = nullptr;  // into the map; valid while the map lives
  int64_t num_bytes = 0;
  int64_t num_elements() const;
};

// A parsed safetensors file. Immutable after Open/Parse; safe to read from
// many threads.
class SafetensorsFile {
 public:
  // Maps `path` and parses its header. The returned object owns the map.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses a file that the caller has already mapped. `file` is borrowed: it
  // must outlive the returned object and every view taken from it (loaders
  // move the map into Model::mapped_files afterwards).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Parse(const MappedFile* file);

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return file_->path(); }
  // Tensor names in header order.
  const std::vector<std::string>& tensor_names() const { return names_; }
  // The "__metadata__" object (string values only, as the format requires).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor called `name`, or nullptr.
  const SafetensorsTensor* Find(const std::string& name) const;
  // A view of tensor `name`. NotFound naming file and tensor when absent;
  // InvalidArgument when its dtype has no herd::DType (see ToHerdDType) or its
  // rank exceeds TensorView::kMaxRank. A scalar becomes a view of shape [1].
  absl::StatusOr<TensorView> GetView(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader();

  std::unique_ptr<MappedFile> owned_file_;  // set by Open only
  const MappedFile* file_ = nullptr;
  std::vector<std::string> names_;
  absl::flat_hash_map<std::string, SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A view of `tensor` (see SafetensorsFile::GetView); `path` names the file in errors.
absl::StatusOr<TensorView> MakeTensorView(const SafetensorsTensor& tensor, const std::string& path);

}  // namespace herd
