#include "model/safetensors_writer.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "nlohmann/json.hpp"

namespace herd {
namespace {

// Closes the FILE on every path out of WriteFile.
struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

absl::Status SafetensorsWriter::AddTensor(const std::string& name, SafetensorsDType dtype,
                                          const std::vector<int64_t>& shape, const void* data,
                                          size_t num_bytes) {
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(absl::StrCat("invalid tensor name '", name, "'"));
  }
  if (names_.contains(name)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " was already added"));
  }
  int64_t num_elements = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(num_elements, d, &num_elements)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " has an invalid shape"));
    }
  }
  const int64_t element_bytes = SafetensorsDTypeSize(dtype);
  int64_t expected_bytes = 0;
  if (__builtin_mul_overflow(num_elements, element_bytes, &expected_bytes) ||
      static_cast<uint64_t>(expected_bytes) != num_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": ", num_bytes,
                                                   " bytes given, ", SafetensorsDTypeName(dtype),
                                                   " shape needs ", expected_bytes));
  }
  if (num_bytes > 0 && data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": null data"));
  }
  Entry entry{name, dtype, shape, {}};
  if (num_bytes > 0) {
    const auto* bytes = static_cast<const uint8_t*>(data);
    entry.bytes.assign(bytes, bytes + num_bytes);
  }
  entries_.push_back(std::move(entry));
  names_.insert(name);
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddTensor(const std::string& name, DType dtype,
                                          const std::vector<int64_t>& shape, const void* data,
                                          size_t num_bytes) {
  absl::StatusOr<SafetensorsDType> stored = FromHerdDType(dtype);
  if (!stored.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor ", name, ": ", stored.status().message()));
  }
  return AddTensor(name, *stored, shape, data, num_bytes);
}

void SafetensorsWriter::SetMetadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path) const {
  // Larger elements first (stable within a size): with no padding between
  // tensors every one then starts at a multiple of its element size, and the
  // data region is contiguous, which the reference reader requires.
  std::vector<size_t> order(entries_.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return SafetensorsDTypeSize(entries_[a].dtype) > SafetensorsDTypeSize(entries_[b].dtype);
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (size_t i : order) {
    const Entry& entry = entries_[i];
    header[entry.name] = {{"dtype", SafetensorsDTypeName(entry.dtype)},
                          {"shape", entry.shape},
                          {"data_offsets", {offset, offset + entry.bytes.size()}}};
    offset += entry.bytes.size();
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::ordered_json::exception& e) {  // e.g. a name that is not UTF-8
    return absl::InvalidArgumentError(
        absl::StrCat("cannot encode the safetensors header for ", path, ": ", e.what()));
  }
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  const std::string tmp_path = path + ".tmp";
  auto io_error = [&](const char* what) {
    const int err = errno;
    std::remove(tmp_path.c_str());
    return absl::InternalError(
        absl::StrCat("cannot ", what, " ", tmp_path, ": ", std::strerror(err)));
  };
  {
    std::unique_ptr<std::FILE, FileCloser> out(std::fopen(tmp_path.c_str(), "wb"));
    if (!out) return io_error("create");
    uint8_t length[8];
    const uint64_t header_bytes = header_text.size();
    for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(header_bytes >> (8 * i));
    if (std::fwrite(length, 1, 8, out.get()) != 8 ||
        std::fwrite(header_text.data(), 1, header_text.size(), out.get()) != header_text.size()) {
      return io_error("write");
    }
    for (size_t i : order) {
      const std::vector<uint8_t>& bytes = entries_[i].bytes;
      if (std::fwrite(bytes.data(), 1, bytes.size(), out.get()) != bytes.size()) {
        return io_error("write");
      }
    }
    if (std::fflush(out.get()) != 0) return io_error("write");
    if (std::fclose(out.release()) != 0) return io_error("close");
  }
  if (std::rename(tmp_path.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp_path.c_str());
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp_path, " to ", path, ": ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace herd
