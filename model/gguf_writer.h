// Writes GGUF v3 files (see model/gguf_file.h for the layout).
//
// Used by tests to build models (good and deliberately broken) and by
// `herd synth` to write random-weight checkpoints. Metadata keeps insertion
// order; adding a key twice replaces its value in place. Tensors are laid out
// in insertion order, each at an offset that is a multiple of the alignment,
// and the data of each is padded to the alignment (as gguf-py does).
//
// A writer holds the tensor bytes it is given until it is destroyed. Not
// thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/dtype.h"
#include "model/gguf_file.h"

namespace herd {

class GgufWriter {
 public:
  // `alignment` must be a power of two; when it is not the default 32, the
  // file records it as `general.alignment` (u32) unless that key was added.
  explicit GgufWriter(uint32_t alignment = GgufFile::kDefaultAlignment);

  void AddU8(const std::string& key, uint8_t value);
  void AddI8(const std::string& key, int8_t value);
  void AddU16(const std::string& key, uint16_t value);
  void AddI16(const std::string& key, int16_t value);
  void AddU32(const std::string& key, uint32_t value);
  void AddI32(const std::string& key, int32_t value);
  void AddF32(const std::string& key, float value);
  void AddBool(const std::string& key, bool value);
  void AddString(const std::string& key, const std::string& value);
  void AddU64(const std::string& key, uint64_t value);
  void AddI64(const std::string& key, int64_t value);
  void AddF64(const std::string& key, double value);
  void AddStringArray(const std::string& key, const std::vector<std::string>& values);
  void AddI32Array(const std::string& key, const std::vector<int32_t>& values);
  void AddF32Array(const std::string& key, const std::vector<float>& values);
  // A value given as its type id and its encoded bytes (for an array: element
  // type, count, elements), written verbatim. For nested arrays, and for tests
  // that need malformed values (unknown type ids, lying counts).
  void AddRawValue(const std::string& key, uint32_t type, std::vector<uint8_t> encoded);
  // A copy of a value read from another file (any type, arrays nested or
  // not): written as that file stores it, so a reader gets the same value.
  void AddValue(const std::string& key, const GgufValue& value);

  // Adds a tensor of `dtype` with `shape` outermost first (a weight matrix is
  // [out, in]); `data` holds its bytes as a TensorView of that shape would.
  // InvalidArgument when the name is taken, the rank is not 1..4, a dim is
  // negative, the last dim is not a multiple of the block size, or the byte
  // count does not match.
  absl::Status AddTensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                         std::vector<uint8_t> data);
  absl::Status AddTensor(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                         const void* data, size_t num_bytes);
  // Adds a tensor with a raw ggml type id and ggml dims `ne` (fastest first),
  // without checking `data` against them: for tensors of types Herd does not
  // read, and for tests. InvalidArgument only when the name is taken.
  absl::Status AddRawTensor(const std::string& name, uint32_t ggml_type,
                            const std::vector<int64_t>& ne, std::vector<uint8_t> data);

  // Writes the file to `path` + ".tmp" and renames it to `path`, so readers
  // never see a partial file. Internal error naming the path when writing fails.
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Entry {
    std::string key;
    uint32_t type;
    std::vector<uint8_t> encoded;
  };
  struct Tensor {
    std::string name;
    uint32_t ggml_type;
    std::vector<int64_t> ne;
    std::vector<uint8_t> data;
  };

  void Set(const std::string& key, uint32_t type, std::vector<uint8_t> encoded);
  bool HasTensor(const std::string& name) const;

  uint32_t alignment_;
  std::vector<Entry> metadata_;
  std::vector<Tensor> tensors_;
};

}  // namespace herd
