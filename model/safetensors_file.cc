#include "model/safetensors_file.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace herd {
namespace {

using Json = nlohmann::ordered_json;

// The reference implementation refuses larger headers; so do we, so that a
// corrupt length cannot make us parse gigabytes of tensor data as JSON.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeInfo {
  SafetensorsDType dtype;
  const char* name;
  int64_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {SafetensorsDType::kBool, "BOOL", 1},      {SafetensorsDType::kU8, "U8", 1},
    {SafetensorsDType::kI8, "I8", 1},          {SafetensorsDType::kF8E5M2, "F8_E5M2", 1},
    {SafetensorsDType::kF8E4M3, "F8_E4M3", 1}, {SafetensorsDType::kI16, "I16", 2},
    {SafetensorsDType::kU16, "U16", 2},        {SafetensorsDType::kF16, "F16", 2},
    {SafetensorsDType::kBF16, "BF16", 2},      {SafetensorsDType::kI32, "I32", 4},
    {SafetensorsDType::kU32, "U32", 4},        {SafetensorsDType::kF32, "F32", 4},
    {SafetensorsDType::kF64, "F64", 8},        {SafetensorsDType::kI64, "I64", 8},
    {SafetensorsDType::kU64, "U64", 8},
};

const DTypeInfo* FindDType(SafetensorsDType dtype) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == dtype) return &info;
  }
  return nullptr;
}

// Reads a JSON integer in [0, max]; false for anything else (floats, negatives, huge values).
bool GetNonNegative(const Json& value, int64_t max, int64_t* out) {
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(max)) return false;
    *out = static_cast<int64_t>(v);
    return true;
  }
  if (value.is_number_integer()) {
    const int64_t v = value.get<int64_t>();
    if (v < 0 || v > max) return false;
    *out = v;
    return true;
  }
  return false;
}

}  // namespace

const char* SafetensorsDTypeName(SafetensorsDType dtype) {
  const DTypeInfo* info = FindDType(dtype);
  return info ? info->name : "?";
}

absl::StatusOr<SafetensorsDType> ParseSafetensorsDType(const std::string& name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown safetensors dtype '", name, "'"));
}

int64_t SafetensorsDTypeSize(SafetensorsDType dtype) {
  const DTypeInfo* info = FindDType(dtype);
  return info ? info->size : 0;
}

absl::StatusOr<DType> ToHerdDType(SafetensorsDType dtype) {
  switch (dtype) {
    case SafetensorsDType::kF32:
      return DType::kF32;
    case SafetensorsDType::kF16:
      return DType::kF16;
    case SafetensorsDType::kBF16:
      return DType::kBF16;
    case SafetensorsDType::kI32:
      return DType::kI32;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "safetensors dtype ", SafetensorsDTypeName(dtype), " has no Herd tensor type"));
  }
}

absl::StatusOr<SafetensorsDType> FromHerdDType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return SafetensorsDType::kF32;
    case DType::kF16:
      return SafetensorsDType::kF16;
    case DType::kBF16:
      return SafetensorsDType::kBF16;
    case DType::kI32:
      return SafetensorsDType::kI32;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("dtype ", DTypeName(dtype), " cannot be stored in safetensors"));
  }
}

int64_t SafetensorsTensor::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // NOTE: overflow was ruled out when the header was parsed
  return n;
}

absl::StatusOr<TensorView> MakeTensorView(const SafetensorsTensor& tensor,
                                          const std::string& path) {
  absl::StatusOr<DType> dtype = ToHerdDType(tensor.dtype);
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": tensor ", tensor.name, ": ", dtype.status().message()));
  }
  const auto& s = tensor.shape;
  switch (s.size()) {
    case 0:
      return TensorView(*dtype, {1}, tensor.data);
    case 1:
      return TensorView(*dtype, {s[0]}, tensor.data);
    case 2:
      return TensorView(*dtype, {s[0], s[1]}, tensor.data);
    case 3:
      return TensorView(*dtype, {s[0], s[1], s[2]}, tensor.data);
    case 4:
      return TensorView(*dtype, {s[0], s[1], s[2], s[3]}, tensor.data);
    default:
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", tensor.name, " has rank ",
                                                     s.size(), ", more than the supported ",
                                                     TensorView::kMaxRank));
  }
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  HERD_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> map, MappedFile::Open(path));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->owned_file_ = std::move(map);
  file->file_ = file->owned_file_.get();
  HERD_RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(const MappedFile* file) {
  HERD_CHECK(file != nullptr);
  std::unique_ptr<SafetensorsFile> parsed(new SafetensorsFile());
  parsed->file_ = file;
  HERD_RETURN_IF_ERROR(parsed->ParseHeader());
  return parsed;
}

const SafetensorsTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<TensorView> SafetensorsFile::GetView(const std::string& name) const {
  const SafetensorsTensor* tensor = Find(name);
  if (tensor == nullptr) {
    return absl::NotFoundError(absl::StrCat(path(), ": no tensor named ", name));
  }
  return MakeTensorView(*tensor, path());
}

absl::Status SafetensorsFile::ParseHeader() {
  const std::string& file_path = file_->path();
  auto error = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(file_path, ": ", what));
  };
  const uint64_t file_bytes = file_->size();
  if (file_bytes < 8) {
    return error(absl::StrCat("file of ", file_bytes,
                              " bytes is too short for a safetensors header length"));
  }
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | file_->data()[i];
  if (header_bytes > file_bytes - 8) {
    return error(absl::StrCat("header length ", header_bytes, " runs past the end of the file (",
                              file_bytes, " bytes)"));
  }
  if (header_bytes > kMaxHeaderBytes) {
    return error(absl::StrCat("header length ", header_bytes, " exceeds the limit of ",
                              kMaxHeaderBytes, " bytes"));
  }
  const uint8_t* header = file_->data() + 8;
  const uint8_t* data_begin = header + header_bytes;
  const int64_t data_bytes = static_cast<int64_t>(file_bytes - 8 - header_bytes);

  // Keys must be unique in every object: nlohmann would silently keep the last
  // of two equal keys, hiding a corrupt or ambiguous header.
  std::vector<absl::flat_hash_set<std::string>> open_objects;
  std::string duplicate_key;
  Json::parser_callback_t on_event = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string() &&
            !open_objects.back().insert(parsed.get<std::string>()).second &&
            duplicate_key.empty()) {
          duplicate_key = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  Json root;
  try {
    root = Json::parse(header, data_begin, on_event);
  } catch (const Json::exception& e) {
    return error(absl::StrCat("invalid JSON header: ", e.what()));
  }
  if (!duplicate_key.empty()) {
    return error(absl::StrCat("header repeats the key '", duplicate_key, "'"));
  }
  if (!root.is_object()) return error("header is not a JSON object");

  // {begin, end, index in names_} of each non-empty tensor, to rule out overlaps.
  // NOTE: not pointers into tensors_, which moves its entries as it grows.
  struct Extent {
    int64_t begin;
    int64_t end;
    size_t name_idx;
  };
  std::vector<Extent> extents;
  for (const auto& item : root.items()) {
    // NOTE: not a structured binding, which lambdas cannot capture before clang 16.
    const std::string& name = item.key();
    const Json& info = item.value();
    if (name == "__metadata__") {
      if (info.is_null()) continue;
      if (!info.is_object()) return error("__metadata__ is not a JSON object");
      for (const auto& [key, value] : info.items()) {
        if (!value.is_string()) {
          return error(absl::StrCat("__metadata__ value of '", key, "' is not a string"));
        }
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    auto tensor_error = [&](const std::string& what) {
      return error(absl::StrCat("tensor ", name, ": ", what));
    };
    if (!info.is_object()) return tensor_error("entry is not a JSON object");
    for (const auto& [key, value] : info.items()) {
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        return tensor_error(absl::StrCat("unknown field '", key, "'"));
      }
    }
    if (!info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets")) {
      return tensor_error("needs the fields dtype, shape and data_offsets");
    }
    SafetensorsTensor tensor;
    tensor.name = name;

    const Json& dtype = info["dtype"];
    if (!dtype.is_string()) return tensor_error("dtype is not a string");
    absl::StatusOr<SafetensorsDType> parsed_dtype = ParseSafetensorsDType(dtype.get<std::string>());
    if (!parsed_dtype.ok()) return tensor_error(std::string(parsed_dtype.status().message()));
    tensor.dtype = *parsed_dtype;
    const int64_t element_bytes = SafetensorsDTypeSize(tensor.dtype);

    const Json& shape = info["shape"];
    if (!shape.is_array()) return tensor_error("shape is not an array");
    int64_t num_elements = 1;
    bool overflow = false;
    for (const Json& dim_json : shape) {
      int64_t dim = 0;
      if (!GetNonNegative(dim_json, std::numeric_limits<int64_t>::max(), &dim)) {
        return tensor_error(absl::StrCat("shape ", shape.dump(),
                                         " holds something other than a non-negative integer"));
      }
      tensor.shape.push_back(dim);
      if (__builtin_mul_overflow(num_elements, dim, &num_elements)) overflow = true;
    }
    int64_t expected_bytes = 0;
    if (overflow || __builtin_mul_overflow(num_elements, element_bytes, &expected_bytes)) {
      // A product that overflows cannot fit the file, unless a zero dim makes it empty.
      if (std::find(tensor.shape.begin(), tensor.shape.end(), 0) == tensor.shape.end()) {
        return tensor_error(absl::StrCat("shape ", shape.dump(), " is too large"));
      }
      expected_bytes = 0;
    }

    const Json& offsets = info["data_offsets"];
    int64_t begin = 0;
    int64_t end = 0;
    if (!offsets.is_array() || offsets.size() != 2 ||
        !GetNonNegative(offsets[0], std::numeric_limits<int64_t>::max(), &begin) ||
        !GetNonNegative(offsets[1], std::numeric_limits<int64_t>::max(), &end)) {
      return tensor_error(
          absl::StrCat("data_offsets ", offsets.dump(), " is not a pair of non-negative integers"));
    }
    if (begin > end || end > data_bytes) {
      return tensor_error(absl::StrCat("data_offsets [", begin, ", ", end,
                                       "] lie outside the data region of ", data_bytes, " bytes"));
    }
    if (end - begin != expected_bytes) {
      return tensor_error(absl::StrCat("data_offsets [", begin, ", ", end, "] span ", end - begin,
                                       " bytes but ", dtype.get<std::string>(), " shape ",
                                       shape.dump(), " needs ", expected_bytes));
    }
    tensor.data = data_begin + begin;
    tensor.num_bytes = expected_bytes;
    names_.push_back(name);
    const bool inserted = tensors_.emplace(name, std::move(tensor)).second;
    HERD_CHECK(inserted);  // duplicate keys were rejected above
    if (end > begin) extents.push_back({begin, end, names_.size() - 1});
  }

  std::sort(extents.begin(), extents.end(),
            [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < extents.size(); ++i) {
    if (extents[i].begin < extents[i - 1].end) {
      return error(absl::StrCat("tensors ", names_[extents[i - 1].name_idx], " and ",
                                names_[extents[i].name_idx], " overlap"));
    }
  }
  return absl::OkStatus();
}

}  // namespace herd
