#include "comm/communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace herd::comm {
namespace {

absl::Status CheckRange(int64_t offset, int64_t bytes, int64_t size, const void* ptr) {
  if (offset < 0 || bytes < 0 || offset > size || bytes > size - offset) {
    return absl::OutOfRangeError(absl::StrCat("bytes [", offset, ", ", offset, " + ", bytes,
                                              ") are outside a buffer of ", size, " bytes"));
  }
  if (bytes > 0 && ptr == nullptr) return absl::InvalidArgumentError("null host pointer");
  return absl::OkStatus();
}

absl::Status CheckSpans(absl::Span<const int64_t> bytes, absl::Span<const int64_t> offsets,
                        const void* buffer, const char* what, int world_size) {
  if (static_cast<int>(bytes.size()) != world_size ||
      static_cast<int>(offsets.size()) != world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "_bytes and ", what, "_offsets need world_size = ", world_size,
                     " entries, got ", bytes.size(), " and ", offsets.size()));
  }
  for (int p = 0; p < world_size; ++p) {
    if (bytes[p] < 0 || offsets[p] < 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, " block for rank ", p,
                                                     " has a negative size or offset (", bytes[p],
                                                     " bytes at ", offsets[p], ")"));
    }
    if (bytes[p] > 0 && buffer == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " buffer is null but ", bytes[p], " bytes are for rank ", p));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAllGatherArgs(const void* send, int64_t bytes_per_rank, const void* recv) {
  if (bytes_per_rank < 0 || (bytes_per_rank > 0 && (send == nullptr || recv == nullptr))) {
    return absl::InvalidArgumentError("all_gather: negative size or null buffer");
  }
  return absl::OkStatus();
}

absl::Status ValidateBroadcastArgs(int root_rank, int world_size, const void* buffer,
                                   int64_t bytes) {
  if (root_rank < 0 || root_rank >= world_size || bytes < 0 || (bytes > 0 && buffer == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("broadcast: bad root ", root_rank, " or buffer (", bytes, " bytes)"));
  }
  return absl::OkStatus();
}

const char* MemorySpaceName(MemorySpace space) {
  return space == MemorySpace::kHost ? "host" : "device";
}

HostCommBuffer::HostCommBuffer(int64_t bytes) : bytes_(static_cast<size_t>(bytes)) {}

absl::Status HostCommBuffer::CopyFromHost(int64_t offset, const void* src, int64_t bytes) {
  const absl::Status range = CheckRange(offset, bytes, size_bytes(), src);
  if (!range.ok()) return range;
  if (bytes > 0) std::memcpy(bytes_.data() + offset, src, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

absl::Status HostCommBuffer::CopyToHost(int64_t offset, void* dst, int64_t bytes) const {
  const absl::Status range = CheckRange(offset, bytes, size_bytes(), dst);
  if (!range.ok()) return range;
  if (bytes > 0) std::memcpy(dst, bytes_.data() + offset, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

absl::Status ValidateAllToAllVArgs(const AllToAllVArgs& args, int world_size) {
  const absl::Status send =
      CheckSpans(args.send_bytes, args.send_offsets, args.send, "send", world_size);
  if (!send.ok()) return send;
  return CheckSpans(args.recv_bytes, args.recv_offsets, args.recv, "recv", world_size);
}

}  // namespace herd::comm
