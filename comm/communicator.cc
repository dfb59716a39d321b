#include "comm/communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "comm/row_packer.h"

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

absl::Status CheckRowSpans(absl::Span<const int32_t> rows, absl::Span<const int64_t> offsets,
                           const void* buffer, int64_t row_bytes, const char* what,
                           int world_size) {
  if (static_cast<int>(offsets.size()) != world_size + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "row_all_to_all_v: ", what, "_row_offsets needs world_size + 1 = ", world_size + 1,
        " entries, got ", offsets.size()));
  }
  if (offsets[0] != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("row_all_to_all_v: ", what, "_row_offsets starts at ", offsets[0], ", not 0"));
  }
  for (int p = 0; p < world_size; ++p) {
    if (offsets[p + 1] < offsets[p]) {
      return absl::InvalidArgumentError(absl::StrCat("row_all_to_all_v: ", what,
                                                     "_row_offsets decreases at rank ", p, " (",
                                                     offsets[p], " then ", offsets[p + 1], ")"));
    }
  }
  const int64_t num_rows = offsets[world_size];
  if (!rows.empty() && static_cast<int64_t>(rows.size()) != num_rows) {
    return absl::InvalidArgumentError(absl::StrCat("row_all_to_all_v: ", what, "_rows has ",
                                                   rows.size(), " entries, ", what,
                                                   "_row_offsets counts ", num_rows));
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("row_all_to_all_v: ", what, "_rows[", i, "] is ", rows[i]));
    }
  }
  if (num_rows > 0 && buffer == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("row_all_to_all_v: ", what,
                                                   " buffer is null but ", num_rows, " rows of ",
                                                   row_bytes, " bytes are listed"));
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

absl::Status ValidateRowAllToAllVArgs(const RowAllToAllVArgs& args, int rank, int world_size) {
  if (args.row_bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("row_all_to_all_v: row_bytes is ", args.row_bytes, ", need >= 1"));
  }
  const absl::Status send = CheckRowSpans(args.send_rows, args.send_row_offsets, args.send,
                                          args.row_bytes, "send", world_size);
  if (!send.ok()) return send;
  const absl::Status recv = CheckRowSpans(args.recv_rows, args.recv_row_offsets, args.recv,
                                          args.row_bytes, "recv", world_size);
  if (!recv.ok()) return recv;
  const int64_t send_self = args.send_row_offsets[rank + 1] - args.send_row_offsets[rank];
  const int64_t recv_self = args.recv_row_offsets[rank + 1] - args.recv_row_offsets[rank];
  if (send_self != recv_self) {
    return absl::InvalidArgumentError(absl::StrCat("row_all_to_all_v: rank ", rank,
                                                   " sends itself ", send_self,
                                                   " rows but expects ", recv_self));
  }
  return absl::OkStatus();
}

absl::Status ValidateUnknownCountsArgs(absl::Span<const RowAllToAllVArgs> ops, int world_size) {
  if (ops.empty()) return absl::InvalidArgumentError("row_all_to_all_v: no ops");
  for (size_t i = 0; i < ops.size(); ++i) {
    const RowAllToAllVArgs& a = ops[i];
    if (a.row_bytes < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("row_all_to_all_v: op ", i, " has row_bytes ", a.row_bytes, ", need >= 1"));
    }
    const absl::Status send =
        CheckRowSpans(a.send_rows, a.send_row_offsets, a.send, a.row_bytes, "send", world_size);
    if (!send.ok()) return send;
    if (a.recv != nullptr || !a.recv_rows.empty() || !a.recv_row_offsets.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "row_all_to_all_v: op ", i, " sets a receive side; with unknown counts `place` does"));
    }
    for (int p = 0; p < world_size; ++p) {
      const int64_t rows = a.send_row_offsets[p + 1] - a.send_row_offsets[p];
      const int64_t rows0 = ops[0].send_row_offsets[p + 1] - ops[0].send_row_offsets[p];
      if (rows != rows0) {
        return absl::InvalidArgumentError(absl::StrCat("row_all_to_all_v: op ", i, " sends rank ",
                                                       p, " ", rows, " rows, op 0 sends ", rows0));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Communicator::GroupedRowAllToAllVUnknownCounts(absl::Span<const RowAllToAllVArgs> ops,
                                                            RowRecvPlacer place,
                                                            absl::Time deadline) {
  const absl::Status valid = ValidateUnknownCountsArgs(ops, world_size());
  if (!valid.ok()) return valid;
  return RowAllToAllVCountsFirst(world_size(), ops, place,
                                 [&](absl::Span<const RowAllToAllVArgs> round) {
                                   return GroupedRowAllToAllV(round, deadline);
                                 });
}

absl::Status Communicator::GroupedRowAllToAllV(absl::Span<const RowAllToAllVArgs> /*ops*/,
                                               absl::Time /*deadline*/) {
  return absl::UnimplementedError(
      absl::StrCat(backend_name(),
                   ": row all-to-all-v is for host communicators; stage through "
                   "GroupedAllToAllV (comm/row_packer.h)"));
}

}  // namespace herd::comm
