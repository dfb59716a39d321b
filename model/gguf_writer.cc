#include "model/gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/status.h"

namespace herd {
namespace {

template <typename T>
void AppendLe(std::vector<uint8_t>* out, T value) {
  uint8_t bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out->insert(out->end(), bytes, bytes + sizeof(T));
}

void AppendString(std::vector<uint8_t>* out, absl::string_view s) {
  AppendLe<uint64_t>(out, s.size());
  out->insert(out->end(), s.begin(), s.end());
}

template <typename T>
std::vector<uint8_t> Scalar(T value) {
  std::vector<uint8_t> out;
  AppendLe<T>(&out, value);
  return out;
}

// `value` as the file stores it after its type id: little-endian scalars,
// { length; bytes } strings, { element type; count; elements } arrays.
void AppendValue(std::vector<uint8_t>* out, const GgufValue& value) {
  const GgufType type = value.type();
  if (value.is_integer()) {
    // Two's complement: a negative value's low bytes are its encoding.
    const std::optional<uint64_t> unsigned_value = value.AsUint64();
    const uint64_t bits =
        unsigned_value ? *unsigned_value : static_cast<uint64_t>(value.AsInt64().value_or(0));
    for (uint64_t i = 0; i < GgufScalarBytes(type); ++i) {
      out->push_back(static_cast<uint8_t>(bits >> (8 * i)));
    }
    return;
  }
  switch (type) {
    case GgufType::kF32:
      AppendLe<float>(out, static_cast<float>(value.AsDouble().value_or(0)));
      return;
    case GgufType::kF64:
      AppendLe<double>(out, value.AsDouble().value_or(0));
      return;
    case GgufType::kBool:
      AppendLe<uint8_t>(out, value.AsBool().value_or(false) ? 1 : 0);
      return;
    case GgufType::kString:
      AppendString(out, value.AsString().value_or(""));
      return;
    case GgufType::kArray:
      AppendLe<uint32_t>(out, static_cast<uint32_t>(value.element_type()));
      AppendLe<uint64_t>(out, value.array_size());
      for (uint64_t i = 0; i < value.array_size(); ++i) AppendValue(out, value.element(i));
      return;
    default:
      return;  // integers were written above; a parsed value has no other type
  }
}

uint64_t AlignUp(uint64_t n, uint64_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

struct FileCloser {
  void operator()(std::FILE* f) const {
    if (f != nullptr) std::fclose(f);
  }
};

}  // namespace

GgufWriter::GgufWriter(uint32_t alignment) : alignment_(alignment) {
  HERD_CHECK(alignment != 0 && (alignment & (alignment - 1)) == 0);
}

void GgufWriter::Set(const std::string& key, uint32_t type, std::vector<uint8_t> encoded) {
  for (Entry& e : metadata_) {
    if (e.key == key) {
      e.type = type;
      e.encoded = std::move(encoded);
      return;
    }
  }
  metadata_.push_back(Entry{key, type, std::move(encoded)});
}

void GgufWriter::AddU8(const std::string& key, uint8_t value) {
  Set(key, static_cast<uint32_t>(GgufType::kU8), Scalar(value));
}
void GgufWriter::AddI8(const std::string& key, int8_t value) {
  Set(key, static_cast<uint32_t>(GgufType::kI8), Scalar(value));
}
void GgufWriter::AddU16(const std::string& key, uint16_t value) {
  Set(key, static_cast<uint32_t>(GgufType::kU16), Scalar(value));
}
void GgufWriter::AddI16(const std::string& key, int16_t value) {
  Set(key, static_cast<uint32_t>(GgufType::kI16), Scalar(value));
}
void GgufWriter::AddU32(const std::string& key, uint32_t value) {
  Set(key, static_cast<uint32_t>(GgufType::kU32), Scalar(value));
}
void GgufWriter::AddI32(const std::string& key, int32_t value) {
  Set(key, static_cast<uint32_t>(GgufType::kI32), Scalar(value));
}
void GgufWriter::AddF32(const std::string& key, float value) {
  Set(key, static_cast<uint32_t>(GgufType::kF32), Scalar(value));
}
void GgufWriter::AddBool(const std::string& key, bool value) {
  Set(key, static_cast<uint32_t>(GgufType::kBool), Scalar<uint8_t>(value ? 1 : 0));
}
void GgufWriter::AddString(const std::string& key, const std::string& value) {
  std::vector<uint8_t> encoded;
  AppendString(&encoded, value);
  Set(key, static_cast<uint32_t>(GgufType::kString), std::move(encoded));
}
void GgufWriter::AddU64(const std::string& key, uint64_t value) {
  Set(key, static_cast<uint32_t>(GgufType::kU64), Scalar(value));
}
void GgufWriter::AddI64(const std::string& key, int64_t value) {
  Set(key, static_cast<uint32_t>(GgufType::kI64), Scalar(value));
}
void GgufWriter::AddF64(const std::string& key, double value) {
  Set(key, static_cast<uint32_t>(GgufType::kF64), Scalar(value));
}

void GgufWriter::AddStringArray(const std::string& key, const std::vector<std::string>& values) {
  std::vector<uint8_t> encoded;
  AppendLe<uint32_t>(&encoded, static_cast<uint32_t>(GgufType::kString));
  AppendLe<uint64_t>(&encoded, values.size());
  for (const std::string& v : values) AppendString(&encoded, v);
  Set(key, static_cast<uint32_t>(GgufType::kArray), std::move(encoded));
}

void GgufWriter::AddI32Array(const std::string& key, const std::vector<int32_t>& values) {
  std::vector<uint8_t> encoded;
  AppendLe<uint32_t>(&encoded, static_cast<uint32_t>(GgufType::kI32));
  AppendLe<uint64_t>(&encoded, values.size());
  for (int32_t v : values) AppendLe<int32_t>(&encoded, v);
  Set(key, static_cast<uint32_t>(GgufType::kArray), std::move(encoded));
}

void GgufWriter::AddF32Array(const std::string& key, const std::vector<float>& values) {
  std::vector<uint8_t> encoded;
  AppendLe<uint32_t>(&encoded, static_cast<uint32_t>(GgufType::kF32));
  AppendLe<uint64_t>(&encoded, values.size());
  for (float v : values) AppendLe<float>(&encoded, v);
  Set(key, static_cast<uint32_t>(GgufType::kArray), std::move(encoded));
}

void GgufWriter::AddRawValue(const std::string& key, uint32_t type, std::vector<uint8_t> encoded) {
  Set(key, type, std::move(encoded));
}

void GgufWriter::AddValue(const std::string& key, const GgufValue& value) {
  std::vector<uint8_t> encoded;
  AppendValue(&encoded, value);
  Set(key, static_cast<uint32_t>(value.type()), std::move(encoded));
}

bool GgufWriter::HasTensor(const std::string& name) const {
  for (const Tensor& t : tensors_) {
    if (t.name == name) return true;
  }
  return false;
}

absl::Status GgufWriter::AddTensor(const std::string& name, DType dtype,
                                   const std::vector<int64_t>& shape, std::vector<uint8_t> data) {
  if (shape.empty() || shape.size() > 4) {
    return absl::InvalidArgumentError(
        absl::StrCat("GGUF tensor '", name, "' must have rank 1..4, got ", shape.size()));
  }
  int64_t num_elements = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(num_elements, d, &num_elements)) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF tensor '", name, "' has a negative or overflowing dim"));
    }
  }
  const int64_t row_length = shape.back();
  if (row_length % BlockSize(dtype) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF tensor '", name, "' row length ",
                                                   row_length, " is not a multiple of the ",
                                                   DTypeName(dtype), " block size"));
  }
  const uint64_t expected_bytes =
      static_cast<uint64_t>(num_elements / BlockSize(dtype)) * BlockBytes(dtype);
  if (data.size() != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF tensor '", name, "' (", DTypeName(dtype),
                                                   ") needs ", expected_bytes, " bytes, got ",
                                                   data.size()));
  }
  std::vector<int64_t> ne(shape.rbegin(), shape.rend());
  return AddRawTensor(name, GgmlTypeFromDType(dtype), ne, std::move(data));
}

absl::Status GgufWriter::AddTensor(const std::string& name, DType dtype,
                                   const std::vector<int64_t>& shape, const void* data,
                                   size_t num_bytes) {
  const uint8_t* bytes = static_cast<const uint8_t*>(data);
  return AddTensor(name, dtype, shape, std::vector<uint8_t>(bytes, bytes + num_bytes));
}

absl::Status GgufWriter::AddRawTensor(const std::string& name, uint32_t ggml_type,
                                      const std::vector<int64_t>& ne, std::vector<uint8_t> data) {
  if (HasTensor(name)) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF tensor '", name, "' added twice"));
  }
  tensors_.push_back(Tensor{name, ggml_type, ne, std::move(data)});
  return absl::OkStatus();
}

absl::Status GgufWriter::WriteFile(const std::string& path) const {
  bool add_alignment = alignment_ != GgufFile::kDefaultAlignment;
  for (const Entry& e : metadata_) {
    if (e.key == "general.alignment") add_alignment = false;
  }

  std::vector<uint8_t> header = {'G', 'G', 'U', 'F'};
  AppendLe<uint32_t>(&header, 3);
  AppendLe<uint64_t>(&header, tensors_.size());
  AppendLe<uint64_t>(&header, metadata_.size() + (add_alignment ? 1 : 0));
  if (add_alignment) {
    AppendString(&header, "general.alignment");
    AppendLe<uint32_t>(&header, static_cast<uint32_t>(GgufType::kU32));
    AppendLe<uint32_t>(&header, alignment_);
  }
  for (const Entry& e : metadata_) {
    AppendString(&header, e.key);
    AppendLe<uint32_t>(&header, e.type);
    header.insert(header.end(), e.encoded.begin(), e.encoded.end());
  }
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    AppendString(&header, t.name);
    AppendLe<uint32_t>(&header, static_cast<uint32_t>(t.ne.size()));
    for (int64_t n : t.ne) AppendLe<uint64_t>(&header, static_cast<uint64_t>(n));
    AppendLe<uint32_t>(&header, t.ggml_type);
    AppendLe<uint64_t>(&header, offset);
    offset += AlignUp(t.data.size(), alignment_);
  }
  header.resize(AlignUp(header.size(), alignment_), 0);

  const std::string tmp_path = path + ".tmp";
  auto fail = [&](const char* what) {
    const int err = errno;
    std::remove(tmp_path.c_str());
    return absl::InternalError(
        absl::StrCat("cannot ", what, " ", tmp_path, ": ", std::strerror(err)));
  };
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(tmp_path.c_str(), "wb"));
  if (file == nullptr) return fail("create");
  if (std::fwrite(header.data(), 1, header.size(), file.get()) != header.size()) {
    return fail("write");
  }
  const std::vector<uint8_t> padding(alignment_, 0);
  for (const Tensor& t : tensors_) {
    if (!t.data.empty() &&
        std::fwrite(t.data.data(), 1, t.data.size(), file.get()) != t.data.size()) {
      return fail("write");
    }
    const size_t pad = AlignUp(t.data.size(), alignment_) - t.data.size();
    if (pad > 0 && std::fwrite(padding.data(), 1, pad, file.get()) != pad) return fail("write");
  }
  if (std::fclose(file.release()) != 0) return fail("close");
  if (std::rename(tmp_path.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp_path.c_str());
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp_path, " to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace herd
