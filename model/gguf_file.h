// Reads GGUF files: the checkpoint format of llama.cpp / ggml.
//
// Layout (GGUF v2 and v3, little-endian;
// https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
//
//   "GGUF"                         magic, 4 bytes
//   u32 version                    2 or 3
//   u64 num_tensors, u64 num_kv
//   num_kv x   { string key; u32 value_type; value }
//   num_tensors x { string name; u32 n_dims; u64 ne[n_dims]; u32 ggml_type; u64 offset }
//   padding to `general.alignment` (default 32)
//   data section; each tensor at data_start + offset (offset a multiple of the alignment)
//
// where a string is { u64 length; bytes } and an array value is
// { u32 element_type; u64 count; elements }. `ne` is ggml's shape, fastest-varying
// dimension first; a TensorView writes it reversed (outermost first), so a matrix
// with ne = [in, out] becomes [out, in].
//
// Opening validates the whole header: every read is bounds-checked, counts and
// lengths are capped by the bytes left in the file before anything is allocated,
// keys and tensor names are unique, dims are non-negative with a product that
// does not overflow, offsets are aligned, and the data of every tensor whose
// ggml type has a known size lies inside the file. A tensor of a type Herd has
// no DType for still opens (so `herd inspect` can list it); asking for its view
// fails. Errors are InvalidArgument naming the file and, where one is at fault,
// the key or tensor (a file that cannot be opened gives MappedFile's NotFound or
// PermissionDenied); bad input never crashes or hangs.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/mapped_file.h"
#include "core/tensor_view.h"

namespace herd {

// GGUF metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};
// "u8", "i32", "string", "array", ...; "type(N)" for numbers outside the enum.
std::string GgufTypeName(GgufType type);
// Bytes of one scalar of `type` as the file stores it (bool: 1), or 0 for
// string, array and unknown types.
uint64_t GgufScalarBytes(GgufType type);

// ggml tensor type ids that Herd maps to a DType.
inline constexpr uint32_t kGgmlTypeF32 = 0;
inline constexpr uint32_t kGgmlTypeF16 = 1;
inline constexpr uint32_t kGgmlTypeQ4_0 = 2;
inline constexpr uint32_t kGgmlTypeQ4_1 = 3;
inline constexpr uint32_t kGgmlTypeQ8_0 = 8;
inline constexpr uint32_t kGgmlTypeI32 = 26;
inline constexpr uint32_t kGgmlTypeBF16 = 30;

// ggml's name of a tensor type ("Q4_K", "IQ2_XS", ...), or nullptr when unknown.
const char* GgmlTypeName(uint32_t ggml_type);
// The herd::DType stored as `ggml_type`, or nullopt when Herd has none.
std::optional<DType> DTypeFromGgml(uint32_t ggml_type);
// The ggml type id of a herd::DType (every DType has one).
uint32_t GgmlTypeFromDType(DType dtype);

// One metadata value. Strings and numeric array elements point into the
// mapped file, so a value must not outlive the GgufFile's map.
class GgufValue {
 public:
  GgufType type() const { return type_; }
  bool is_array() const { return type_ == GgufType::kArray; }
  bool is_integer() const;  // u8..i64 (not bool)
  bool is_float() const { return type_ == GgufType::kF32 || type_ == GgufType::kF64; }

  // Scalar accessors; nullopt when the type does not fit (see GgufFile getters
  // for the conversion rules).
  std::optional<int64_t> AsInt64() const;             // any integer type whose value fits
  std::optional<uint64_t> AsUint64() const;           // any non-negative integer
  std::optional<double> AsDouble() const;             // f32, f64 or any integer
  std::optional<bool> AsBool() const;                 // bool only
  std::optional<absl::string_view> AsString() const;  // string only

  // Arrays. array_size() is 0 for non-arrays.
  GgufType element_type() const { return element_type_; }
  uint64_t array_size() const { return array_size_; }
  // Element `idx` (< array_size()) as a value of its own; nested arrays work.
  GgufValue element(uint64_t idx) const;

  // A short rendering for `herd inspect`: `42`, `"llama"`, `[1, 2, 3, ... (512 items)]`.
  std::string DebugString(int max_elements = 8) const;

 private:
  friend class GgufParser;

  GgufType type_ = GgufType::kU8;
  uint64_t bits_ = 0;                      // scalar numeric and bool values, raw little-endian bits
  absl::string_view string_;               // kString
  GgufType element_type_ = GgufType::kU8;  // kArray
  uint64_t array_size_ = 0;                // kArray
  const uint8_t* raw_ = nullptr;           // kArray of numbers/bools: packed elements in the map
  // kArray of strings or arrays: the elements, parsed (counts capped by file size).
  std::vector<GgufValue> elements_;
};

// One tensor as the header describes it, located in the map.
struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;                    // raw ggml type id; see DTypeFromGgml / GgmlTypeName
  int num_dims = 0;                          // 0..4
  std::array<int64_t, 4> ne = {1, 1, 1, 1};  // ggml dims, fastest first; unused dims are 1
  uint64_t offset = 0;                       // from the start of the data section
  // Bytes of data when the type's block layout is known (any ggml type, not
  // just Herd's), else nullopt.
  std::optional<uint64_t> num_bytes;
  const uint8_t* data = nullptr;  // into the map; null when num_bytes is unknown

  int64_t num_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
  // "[64, 128, 8]" in ggml order (fastest first).
  std::string NeString() const;
};

// A parsed GGUF file. Immutable after Open/Parse; safe to read from many threads.
class GgufFile {
 public:
  static constexpr uint32_t kDefaultAlignment = 32;

  // Maps `path` and parses its header. The returned object owns the map.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses a file the caller has already mapped. `file` is borrowed: it must
  // outlive the returned object and every view or value taken from it
  // (loaders move the map into Model::mapped_files afterwards).
  static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(const MappedFile* file);

  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return file_->path(); }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the data section

  // Metadata keys in file order.
  const std::vector<std::string>& metadata_keys() const { return keys_; }
  bool HasKey(absl::string_view key) const { return metadata_.contains(key); }
  // The value of `key`, or nullptr.
  const GgufValue* FindValue(absl::string_view key) const;

  // Typed getters. NotFound when the key is missing; InvalidArgument when the
  // stored type does not convert. Integer getters accept any integer type
  // whose value fits the requested one; float getters accept f32, f64 and any
  // integer; GetBool needs a bool, GetString a string. Errors name file and key.
  absl::StatusOr<uint32_t> GetU32(absl::string_view key) const;
  absl::StatusOr<int32_t> GetI32(absl::string_view key) const;
  absl::StatusOr<uint64_t> GetU64(absl::string_view key) const;
  absl::StatusOr<int64_t> GetI64(absl::string_view key) const;
  absl::StatusOr<float> GetF32(absl::string_view key) const;
  absl::StatusOr<double> GetF64(absl::string_view key) const;
  absl::StatusOr<bool> GetBool(absl::string_view key) const;
  absl::StatusOr<std::string> GetString(absl::string_view key) const;
  // Any array; InvalidArgument when the value is not an array.
  absl::StatusOr<const GgufValue*> GetArray(absl::string_view key) const;
  // Arrays with element conversion as for the scalar getters.
  absl::StatusOr<std::vector<std::string>> GetStringArray(absl::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetI64Array(absl::string_view key) const;
  absl::StatusOr<std::vector<float>> GetF32Array(absl::string_view key) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // The tensor called `name`, or nullptr.
  const GgufTensorInfo* FindTensor(absl::string_view name) const;
  // A view of tensor `name` with shape outermost first. NotFound naming file
  // and tensor when absent; InvalidArgument naming file, tensor and ggml type
  // when Herd has no DType for its type.
  absl::StatusOr<TensorView> GetView(absl::string_view name) const;
  absl::StatusOr<TensorView> GetView(const GgufTensorInfo& tensor) const;

 private:
  friend class GgufParser;
  GgufFile() = default;

  absl::StatusOr<const GgufValue*> GetValue(absl::string_view key) const;
  absl::Status TypeError(absl::string_view key, const GgufValue& value,
                         absl::string_view wanted) const;

  std::unique_ptr<MappedFile> owned_file_;  // set by Open only
  const MappedFile* file_ = nullptr;
  uint32_t version_ = 0;
  uint32_t alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::string> keys_;
  absl::flat_hash_map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  absl::flat_hash_map<std::string, size_t> tensor_index_;
};

}  // namespace herd
