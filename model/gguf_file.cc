#include "model/gguf_file.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"

namespace herd {
namespace {

// Nested arrays deeper than this are rejected; ggml itself writes none, and
// the cap keeps recursion on hostile input shallow.
constexpr int kMaxArrayDepth = 8;
// ggml's GGML_MAX_DIMS.
constexpr uint32_t kMaxDims = 4;
// Smallest encodings, used to cap counts by the bytes left before parsing:
// a metadata entry is at least key length (8) + type (4) + a 1-byte value; a
// tensor info at least name length (8) + n_dims (4) + type (4) + offset (8).
constexpr uint64_t kMinKvBytes = 13;
constexpr uint64_t kMinTensorInfoBytes = 24;
constexpr uint64_t kStringHeaderBytes = 8;
constexpr uint64_t kArrayHeaderBytes = 12;

// Block layout of every ggml type whose size is known (ggml.c type_traits).
struct GgmlTypeTraits {
  uint32_t id;
  const char* name;
  uint32_t block_size;  // values per block
  uint32_t type_size;   // bytes per block
};
constexpr GgmlTypeTraits kGgmlTypes[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},      {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},
    {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 36},      {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66},
    {17, "IQ2_XS", 256, 74},  {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},
    {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},  {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},        {28, "F64", 1, 8},
    {29, "IQ1_M", 256, 56},   {30, "BF16", 1, 2},       {34, "TQ1_0", 256, 54},
    {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},
};

const GgmlTypeTraits* FindGgmlType(uint32_t id) {
  for (const GgmlTypeTraits& t : kGgmlTypes) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

bool IsKnownType(uint32_t type) { return type <= static_cast<uint32_t>(GgufType::kF64); }

template <typename T>
T LoadLe(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

std::string Printable(absl::string_view s, size_t max_chars = 64) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_chars; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    }
  }
  if (s.size() > max_chars) absl::StrAppend(&out, "...");
  return out;
}

}  // namespace

uint64_t GgufScalarBytes(GgufType type) {
  switch (type) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kString:
    case GgufType::kArray:
      return 0;
  }
  return 0;
}

std::string GgufTypeName(GgufType type) {
  switch (type) {
    case GgufType::kU8:
      return "u8";
    case GgufType::kI8:
      return "i8";
    case GgufType::kU16:
      return "u16";
    case GgufType::kI16:
      return "i16";
    case GgufType::kU32:
      return "u32";
    case GgufType::kI32:
      return "i32";
    case GgufType::kF32:
      return "f32";
    case GgufType::kBool:
      return "bool";
    case GgufType::kString:
      return "string";
    case GgufType::kArray:
      return "array";
    case GgufType::kU64:
      return "u64";
    case GgufType::kI64:
      return "i64";
    case GgufType::kF64:
      return "f64";
  }
  return absl::StrCat("type(", static_cast<uint32_t>(type), ")");
}

const char* GgmlTypeName(uint32_t ggml_type) {
  const GgmlTypeTraits* t = FindGgmlType(ggml_type);
  return t == nullptr ? nullptr : t->name;
}

std::optional<DType> DTypeFromGgml(uint32_t ggml_type) {
  switch (ggml_type) {
    case kGgmlTypeF32:
      return DType::kF32;
    case kGgmlTypeF16:
      return DType::kF16;
    case kGgmlTypeQ4_0:
      return DType::kQ4_0;
    case kGgmlTypeQ4_1:
      return DType::kQ4_1;
    case kGgmlTypeQ8_0:
      return DType::kQ8_0;
    case kGgmlTypeI32:
      return DType::kI32;
    case kGgmlTypeBF16:
      return DType::kBF16;
    default:
      return std::nullopt;
  }
}

uint32_t GgmlTypeFromDType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return kGgmlTypeF32;
    case DType::kF16:
      return kGgmlTypeF16;
    case DType::kBF16:
      return kGgmlTypeBF16;
    case DType::kQ8_0:
      return kGgmlTypeQ8_0;
    case DType::kQ4_0:
      return kGgmlTypeQ4_0;
    case DType::kQ4_1:
      return kGgmlTypeQ4_1;
    case DType::kI32:
      return kGgmlTypeI32;
    case DType::kQuant:
      break;  // Herd's own formats have no GGUF type
  }
  HERD_CHECK(false && "no GGUF type for this DType");
  return 0;
}

// ---------------------------------------------------------------------------
// GgufValue

bool GgufValue::is_integer() const {
  switch (type_) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kU16:
    case GgufType::kI16:
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kU64:
    case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

std::optional<int64_t> GgufValue::AsInt64() const {
  switch (type_) {
    case GgufType::kU8:
      return static_cast<int64_t>(static_cast<uint8_t>(bits_));
    case GgufType::kI8:
      return static_cast<int64_t>(static_cast<int8_t>(bits_));
    case GgufType::kU16:
      return static_cast<int64_t>(static_cast<uint16_t>(bits_));
    case GgufType::kI16:
      return static_cast<int64_t>(static_cast<int16_t>(bits_));
    case GgufType::kU32:
      return static_cast<int64_t>(static_cast<uint32_t>(bits_));
    case GgufType::kI32:
      return static_cast<int64_t>(static_cast<int32_t>(bits_));
    case GgufType::kI64:
      return static_cast<int64_t>(bits_);
    case GgufType::kU64:
      if (bits_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
      return static_cast<int64_t>(bits_);
    default:
      return std::nullopt;
  }
}

std::optional<uint64_t> GgufValue::AsUint64() const {
  if (type_ == GgufType::kU64) return bits_;
  const std::optional<int64_t> v = AsInt64();
  if (!v.has_value() || *v < 0) return std::nullopt;
  return static_cast<uint64_t>(*v);
}

std::optional<double> GgufValue::AsDouble() const {
  if (type_ == GgufType::kF32) {
    float f;
    const uint32_t b = static_cast<uint32_t>(bits_);
    std::memcpy(&f, &b, sizeof(f));
    return f;
  }
  if (type_ == GgufType::kF64) {
    double d;
    std::memcpy(&d, &bits_, sizeof(d));
    return d;
  }
  if (type_ == GgufType::kU64) return static_cast<double>(bits_);
  const std::optional<int64_t> v = AsInt64();
  if (!v.has_value()) return std::nullopt;
  return static_cast<double>(*v);
}

std::optional<bool> GgufValue::AsBool() const {
  if (type_ != GgufType::kBool) return std::nullopt;
  return bits_ != 0;
}

std::optional<absl::string_view> GgufValue::AsString() const {
  if (type_ != GgufType::kString) return std::nullopt;
  return string_;
}

GgufValue GgufValue::element(uint64_t idx) const {
  HERD_CHECK(is_array() && idx < array_size_);
  const uint64_t size = GgufScalarBytes(element_type_);
  if (size > 0) {
    GgufValue v;
    v.type_ = element_type_;
    const uint8_t* p = raw_ + idx * size;
    switch (size) {
      case 1:
        v.bits_ = LoadLe<uint8_t>(p);
        break;
      case 2:
        v.bits_ = LoadLe<uint16_t>(p);
        break;
      case 4:
        v.bits_ = LoadLe<uint32_t>(p);
        break;
      case 8:
        v.bits_ = LoadLe<uint64_t>(p);
        break;
      default:
        HERD_CHECK(false && "array element without a scalar size");
    }
    return v;
  }
  return elements_[idx];
}

std::string GgufValue::DebugString(int max_elements) const {
  switch (type_) {
    case GgufType::kBool:
      return bits_ != 0 ? "true" : "false";
    case GgufType::kString:
      return absl::StrCat("\"", Printable(string_), "\"");
    case GgufType::kF32:
    case GgufType::kF64:
      return absl::StrFormat("%g", *AsDouble());
    case GgufType::kU64:
      return absl::StrCat(bits_);
    case GgufType::kArray: {
      std::string out = "[";
      const uint64_t shown = std::min<uint64_t>(array_size_, max_elements < 0 ? 0 : max_elements);
      for (uint64_t i = 0; i < shown; ++i) {
        absl::StrAppend(&out, i ? ", " : "", element(i).DebugString(max_elements));
      }
      if (shown < array_size_) {
        absl::StrAppend(&out, shown ? ", " : "", "... (", array_size_, " items)");
      }
      return out + "]";
    }
    default:
      return absl::StrCat(*AsInt64());
  }
}

std::string GgufTensorInfo::NeString() const {
  std::string out = "[";
  for (int i = 0; i < num_dims; ++i) absl::StrAppend(&out, i ? ", " : "", ne[i]);
  return out + "]";
}

// ---------------------------------------------------------------------------
// Parsing

class GgufParser {
 public:
  explicit GgufParser(GgufFile* out)
      : out_(out),
        path_(out->file_->path()),
        data_(out->file_->data()),
        size_(out->file_->size()) {}

  absl::Status Run();

 private:
  uint64_t remaining() const { return size_ - pos_; }

  absl::Status Truncated(absl::string_view what, absl::string_view context, uint64_t needed) const {
    return absl::InvalidArgumentError(absl::StrCat(
        path_, ": truncated GGUF file: reading ", what, context.empty() ? "" : " of ", context,
        " at offset ", pos_, " needs ", needed, " bytes, only ", remaining(), " left"));
  }
  absl::Status Invalid(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": ", message));
  }

  template <typename T>
  absl::StatusOr<T> Read(absl::string_view what, absl::string_view context) {
    if (remaining() < sizeof(T)) return Truncated(what, context, sizeof(T));
    const T v = LoadLe<T>(data_ + pos_);
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<absl::string_view> ReadString(absl::string_view what, absl::string_view context) {
    HERD_ASSIGN_OR_RETURN(const uint64_t length,
                          Read<uint64_t>(absl::StrCat(what, " length"), context));
    if (length > remaining()) {
      return Invalid(absl::StrCat(what, context.empty() ? "" : " of ", context, " at offset ",
                                  pos_ - 8, " claims ", length, " bytes, only ", remaining(),
                                  " left in the file"));
    }
    absl::string_view s(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length;
    return s;
  }

  absl::Status ParseValue(GgufType type, int depth, const std::string& context, GgufValue* out);
  absl::Status ParseTensorInfo(uint64_t tensor_idx, GgufTensorInfo* info);

  GgufFile* out_;
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

absl::Status GgufParser::ParseValue(GgufType type, int depth, const std::string& context,
                                    GgufValue* out) {
  out->type_ = type;
  const uint64_t scalar_bytes = GgufScalarBytes(type);
  if (scalar_bytes > 0) {
    if (remaining() < scalar_bytes) return Truncated("value", context, scalar_bytes);
    const uint8_t* p = data_ + pos_;
    switch (scalar_bytes) {
      case 1:
        out->bits_ = LoadLe<uint8_t>(p);
        break;
      case 2:
        out->bits_ = LoadLe<uint16_t>(p);
        break;
      case 4:
        out->bits_ = LoadLe<uint32_t>(p);
        break;
      default:
        out->bits_ = LoadLe<uint64_t>(p);
        break;
    }
    pos_ += scalar_bytes;
    return absl::OkStatus();
  }
  if (type == GgufType::kString) {
    HERD_ASSIGN_OR_RETURN(out->string_, ReadString("string", context));
    return absl::OkStatus();
  }
  // kArray
  if (depth >= kMaxArrayDepth) {
    return Invalid(absl::StrCat(context, ": arrays nested deeper than ", kMaxArrayDepth));
  }
  HERD_ASSIGN_OR_RETURN(const uint32_t element_type, Read<uint32_t>("array type", context));
  if (!IsKnownType(element_type)) {
    return Invalid(absl::StrCat(context, ": array has unknown element type ", element_type));
  }
  HERD_ASSIGN_OR_RETURN(const uint64_t count, Read<uint64_t>("array length", context));
  out->element_type_ = static_cast<GgufType>(element_type);
  out->array_size_ = count;
  const uint64_t element_bytes = GgufScalarBytes(out->element_type_);
  // NOTE: compare by division so that an absurd count cannot overflow.
  const uint64_t min_element_bytes =
      element_bytes > 0
          ? element_bytes
          : (out->element_type_ == GgufType::kString ? kStringHeaderBytes : kArrayHeaderBytes);
  if (count > remaining() / min_element_bytes) {
    return Invalid(absl::StrCat(context, ": array of ", count, " ",
                                GgufTypeName(out->element_type_), " elements at offset ", pos_ - 12,
                                " cannot fit in the ", remaining(), " bytes left in the file"));
  }
  if (element_bytes > 0) {
    out->raw_ = data_ + pos_;
    pos_ += count * element_bytes;
    return absl::OkStatus();
  }
  // Strings and nested arrays are parsed one by one. The vector only grows
  // as elements are actually read, so memory follows the bytes in the file.
  for (uint64_t i = 0; i < count; ++i) {
    GgufValue element;
    HERD_RETURN_IF_ERROR(ParseValue(out->element_type_, depth + 1, context, &element));
    out->elements_.push_back(std::move(element));
  }
  return absl::OkStatus();
}

absl::Status GgufParser::ParseTensorInfo(uint64_t tensor_idx, GgufTensorInfo* info) {
  const std::string idx_context = absl::StrCat("tensor info ", tensor_idx);
  HERD_ASSIGN_OR_RETURN(const absl::string_view name, ReadString("name", idx_context));
  info->name = std::string(name);
  const std::string context = absl::StrCat("tensor '", Printable(name), "'");
  HERD_ASSIGN_OR_RETURN(const uint32_t num_dims, Read<uint32_t>("n_dims", context));
  if (num_dims > kMaxDims) {
    return Invalid(absl::StrCat(context, " has ", num_dims, " dimensions (at most ", kMaxDims,
                                " are supported)"));
  }
  info->num_dims = static_cast<int>(num_dims);
  int64_t num_elements = 1;
  for (uint32_t d = 0; d < num_dims; ++d) {
    HERD_ASSIGN_OR_RETURN(const uint64_t n, Read<uint64_t>("dimension", context));
    if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Invalid(absl::StrCat(context, " has dimension ", d, " = ", n, ", out of range"));
    }
    info->ne[d] = static_cast<int64_t>(n);
    if (__builtin_mul_overflow(num_elements, info->ne[d], &num_elements)) {
      return Invalid(
          absl::StrCat(context, " has dims ", info->NeString(), " whose product overflows"));
    }
  }
  HERD_ASSIGN_OR_RETURN(info->ggml_type, Read<uint32_t>("type", context));
  HERD_ASSIGN_OR_RETURN(info->offset, Read<uint64_t>("offset", context));
  if (const GgmlTypeTraits* traits = FindGgmlType(info->ggml_type)) {
    if (info->ne[0] % traits->block_size != 0) {
      return Invalid(absl::StrCat(context, " of type ", traits->name,
                                  " has row length ne[0] = ", info->ne[0],
                                  ", not a multiple of its block size ", traits->block_size));
    }
    uint64_t num_bytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(num_elements / traits->block_size),
                               static_cast<uint64_t>(traits->type_size), &num_bytes)) {
      return Invalid(
          absl::StrCat(context, " has dims ", info->NeString(), " whose byte size overflows"));
    }
    info->num_bytes = num_bytes;
  }
  return absl::OkStatus();
}

absl::Status GgufParser::Run() {
  // Header.
  if (size_ < 4) return Truncated("magic", "", 4);
  if (std::memcmp(data_, "GGUF", 4) != 0) {
    return Invalid(
        absl::StrCat("not a GGUF file: magic is \"",
                     Printable(absl::string_view(reinterpret_cast<const char*>(data_), 4)),
                     "\", expected \"GGUF\""));
  }
  pos_ = 4;
  HERD_ASSIGN_OR_RETURN(out_->version_, Read<uint32_t>("version", ""));
  if (out_->version_ != 2 && out_->version_ != 3) {
    std::string hint;
    if (out_->version_ == 1) {
      hint = " (GGUF v1 is obsolete; re-convert the model with a current llama.cpp)";
    } else if ((out_->version_ & 0xFFFF) == 0 && out_->version_ != 0) {
      hint = " (the file looks big-endian, which Herd does not read)";
    }
    return Invalid(
        absl::StrCat("unsupported GGUF version ", out_->version_, "; Herd reads v2 and v3", hint));
  }
  HERD_ASSIGN_OR_RETURN(const uint64_t num_tensors, Read<uint64_t>("tensor count", ""));
  HERD_ASSIGN_OR_RETURN(const uint64_t num_kv, Read<uint64_t>("metadata count", ""));
  if (num_kv > remaining() / kMinKvBytes) {
    return Invalid(absl::StrCat("header claims ", num_kv, " metadata entries, but only ",
                                remaining(), " bytes follow"));
  }
  if (num_tensors > remaining() / kMinTensorInfoBytes) {
    return Invalid(absl::StrCat("header claims ", num_tensors, " tensors, but only ", remaining(),
                                " bytes follow"));
  }

  // Metadata.
  for (uint64_t kv_idx = 0; kv_idx < num_kv; ++kv_idx) {
    HERD_ASSIGN_OR_RETURN(const absl::string_view key_view,
                          ReadString("key", absl::StrCat("metadata entry ", kv_idx)));
    std::string key(key_view);
    const std::string context = absl::StrCat("metadata key '", Printable(key), "'");
    HERD_ASSIGN_OR_RETURN(const uint32_t type, Read<uint32_t>("value type", context));
    if (!IsKnownType(type)) {
      return Invalid(absl::StrCat(context, " has unknown value type ", type));
    }
    GgufValue value;
    HERD_RETURN_IF_ERROR(ParseValue(static_cast<GgufType>(type), 0, context, &value));
    if (out_->metadata_.contains(key)) return Invalid(absl::StrCat(context, " appears twice"));
    out_->keys_.push_back(key);
    out_->metadata_.emplace(std::move(key), std::move(value));
  }

  // Alignment.
  if (const GgufValue* alignment = out_->FindValue("general.alignment")) {
    const std::optional<uint64_t> a = alignment->AsUint64();
    if (!a.has_value() || *a == 0 || (*a & (*a - 1)) != 0 ||
        *a > std::numeric_limits<uint32_t>::max()) {
      return Invalid(absl::StrCat("general.alignment must be a power of two u32, got ",
                                  GgufTypeName(alignment->type()), " ", alignment->DebugString()));
    }
    out_->alignment_ = static_cast<uint32_t>(*a);
  }

  // Tensor infos.
  if (num_tensors > remaining() / kMinTensorInfoBytes) {
    return Invalid(absl::StrCat("header claims ", num_tensors, " tensors, but only ", remaining(),
                                " bytes follow the metadata"));
  }
  // NOTE: the count is capped by the bytes left, not by memory: reserve a bounded amount.
  out_->tensors_.reserve(std::min<uint64_t>(num_tensors, 1 << 16));
  for (uint64_t tensor_idx = 0; tensor_idx < num_tensors; ++tensor_idx) {
    GgufTensorInfo info;
    HERD_RETURN_IF_ERROR(ParseTensorInfo(tensor_idx, &info));
    if (info.offset % out_->alignment_ != 0) {
      return Invalid(absl::StrCat("tensor '", Printable(info.name), "' has data offset ",
                                  info.offset, ", not a multiple of the alignment ",
                                  out_->alignment_));
    }
    if (!out_->tensor_index_.emplace(info.name, out_->tensors_.size()).second) {
      return Invalid(absl::StrCat("tensor '", Printable(info.name), "' appears twice"));
    }
    out_->tensors_.push_back(std::move(info));
  }

  // Data section.
  const uint64_t alignment = out_->alignment_;
  out_->data_offset_ = (pos_ + alignment - 1) / alignment * alignment;
  if (num_tensors == 0) return absl::OkStatus();
  if (out_->data_offset_ > size_) {
    return Invalid(absl::StrCat("truncated GGUF file: the data section would start at offset ",
                                out_->data_offset_, " but the file has ", size_, " bytes"));
  }
  const uint64_t data_bytes = size_ - out_->data_offset_;
  for (GgufTensorInfo& info : out_->tensors_) {
    if (!info.num_bytes.has_value()) continue;  // unknown type: its size cannot be checked
    if (info.offset > data_bytes || *info.num_bytes > data_bytes - info.offset) {
      return Invalid(absl::StrCat(
          "tensor '", Printable(info.name), "' (", GgmlTypeName(info.ggml_type), " ",
          info.NeString(), ", ", *info.num_bytes, " bytes at data offset ", info.offset,
          ") extends past the end of the file (data section holds ", data_bytes, " bytes)"));
    }
    info.data = data_ + out_->data_offset_ + info.offset;
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// GgufFile

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  std::unique_ptr<GgufFile> gguf(new GgufFile());
  gguf->owned_file_ = std::move(file);
  gguf->file_ = gguf->owned_file_.get();
  HERD_RETURN_IF_ERROR(GgufParser(gguf.get()).Run());
  return gguf;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(const MappedFile* file) {
  HERD_CHECK(file != nullptr);
  std::unique_ptr<GgufFile> gguf(new GgufFile());
  gguf->file_ = file;
  HERD_RETURN_IF_ERROR(GgufParser(gguf.get()).Run());
  return gguf;
}

const GgufValue* GgufFile::FindValue(absl::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

absl::StatusOr<const GgufValue*> GgufFile::GetValue(absl::string_view key) const {
  const GgufValue* value = FindValue(key);
  if (value == nullptr) {
    return absl::NotFoundError(absl::StrCat(path(), ": metadata key '", key, "' not found"));
  }
  return value;
}

absl::Status GgufFile::TypeError(absl::string_view key, const GgufValue& value,
                                 absl::string_view wanted) const {
  return absl::InvalidArgumentError(absl::StrCat(path(), ": metadata key '", key, "' is ",
                                                 GgufTypeName(value.type()), " ",
                                                 value.DebugString(4), ", expected ", wanted));
}

absl::StatusOr<uint32_t> GgufFile::GetU32(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetValue(key));
  const std::optional<uint64_t> v = value->AsUint64();
  if (!v.has_value() || *v > std::numeric_limits<uint32_t>::max()) {
    return TypeError(key, *value, "an integer that fits u32");
  }
  return static_cast<uint32_t>(*v);
}

absl::StatusOr<int32_t> GgufFile::GetI32(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetValue(key));
  const std::optional<int64_t> v = value->AsInt64();
  if (!v.has_value() || *v > std::numeric_limits<int32_t>::max() ||
      *v < std::numeric_limits<int32_t>::min()) {
    return TypeError(key, *value, "an integer that fits i32");
  }
  return static_cast<int32_t>(*v);
}

absl::StatusOr<uint64_t> GgufFile::GetU64(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetValue(key));
  const std::optional<uint64_t> v = value->AsUint64();
  if (!v.has_value()) return TypeError(key, *value, "a non-negative integer");
  return *v;
}

absl::StatusOr<int64_t> GgufFile::GetI64(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetValue(key));
  const std::optional<int64_t> v = value->AsInt64();
  if (!v.has_value()) return TypeError(key, *value, "an integer that fits i64");
  return *v;
}

absl::StatusOr<float> GgufFile::GetF32(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const double v, GetF64(key));
  return static_cast<float>(v);
}

absl::StatusOr<double> GgufFile::GetF64(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetValue(key));
  const std::optional<double> v = value->AsDouble();
  if (!v.has_value()) return TypeError(key, *value, "a number");
  return *v;
}

absl::StatusOr<bool> GgufFile::GetBool(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetValue(key));
  const std::optional<bool> v = value->AsBool();
  if (!v.has_value()) return TypeError(key, *value, "bool");
  return *v;
}

absl::StatusOr<std::string> GgufFile::GetString(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetValue(key));
  const std::optional<absl::string_view> v = value->AsString();
  if (!v.has_value()) return TypeError(key, *value, "string");
  return std::string(*v);
}

absl::StatusOr<const GgufValue*> GgufFile::GetArray(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetValue(key));
  if (!value->is_array()) return TypeError(key, *value, "an array");
  return value;
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetArray(key));
  if (value->element_type() != GgufType::kString) {
    return TypeError(key, *value, "an array of strings");
  }
  std::vector<std::string> out;
  out.reserve(value->array_size());
  for (uint64_t i = 0; i < value->array_size(); ++i) {
    out.emplace_back(*value->element(i).AsString());
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetI64Array(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetArray(key));
  std::vector<int64_t> out;
  out.reserve(value->array_size());
  for (uint64_t i = 0; i < value->array_size(); ++i) {
    const std::optional<int64_t> v = value->element(i).AsInt64();
    if (!v.has_value()) {
      return TypeError(
          key, *value,
          absl::StrCat("an array of integers that fit i64 (element ", i, " does not)"));
    }
    out.push_back(*v);
  }
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetF32Array(absl::string_view key) const {
  HERD_ASSIGN_OR_RETURN(const GgufValue* value, GetArray(key));
  std::vector<float> out;
  out.reserve(value->array_size());
  for (uint64_t i = 0; i < value->array_size(); ++i) {
    const std::optional<double> v = value->element(i).AsDouble();
    if (!v.has_value()) {
      return TypeError(key, *value,
                       absl::StrCat("an array of numbers (element ", i, " is not one)"));
    }
    out.push_back(static_cast<float>(*v));
  }
  return out;
}

const GgufTensorInfo* GgufFile::FindTensor(absl::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<TensorView> GgufFile::GetView(absl::string_view name) const {
  const GgufTensorInfo* tensor = FindTensor(name);
  if (tensor == nullptr) {
    return absl::NotFoundError(absl::StrCat(path(), ": tensor '", name, "' not found"));
  }
  return GetView(*tensor);
}

absl::StatusOr<TensorView> GgufFile::GetView(const GgufTensorInfo& tensor) const {
  const std::optional<DType> dtype = DTypeFromGgml(tensor.ggml_type);
  if (!dtype.has_value()) {
    const char* name = GgmlTypeName(tensor.ggml_type);
    return absl::InvalidArgumentError(
        absl::StrCat(path(), ": tensor '", tensor.name, "' has unsupported type ", tensor.ggml_type,
                     " (", name != nullptr ? name : "unknown ggml type",
                     "); Herd reads F32, F16, BF16, Q8_0, Q4_0, Q4_1 and I32"));
  }
  // NOTE: every type DTypeFromGgml knows has a size, so Run() bounds-checked
  // the data and set `data`.
  const std::array<int64_t, 4>& ne = tensor.ne;
  switch (tensor.num_dims) {
    case 0:
    case 1:
      return TensorView(*dtype, {ne[0]}, tensor.data);
    case 2:
      return TensorView(*dtype, {ne[1], ne[0]}, tensor.data);
    case 3:
      return TensorView(*dtype, {ne[2], ne[1], ne[0]}, tensor.data);
    default:
      return TensorView(*dtype, {ne[3], ne[2], ne[1], ne[0]}, tensor.data);
  }
}

}  // namespace herd
