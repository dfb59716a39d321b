#include "comm/row_packer.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace herd::comm {
namespace {

// Row `i` of a side's list: the listed row, or `i` itself without a list.
int64_t ListedRow(absl::Span<const int32_t> rows, int64_t i) { return rows.empty() ? i : rows[i]; }

// (Re)allocates `buffer` from `comm` when it holds fewer than `bytes`.
absl::Status EnsureDeviceBuffer(Communicator& comm, int64_t bytes,
                                std::unique_ptr<CommBuffer>* buffer) {
  if (*buffer != nullptr && (*buffer)->size_bytes() >= bytes) return absl::OkStatus();
  HERD_ASSIGN_OR_RETURN(*buffer, comm.Allocate(bytes));
  return absl::OkStatus();
}

}  // namespace

void CopyRowsToSelf(const RowAllToAllVArgs& args, int rank) {
  const int64_t first_send = args.send_row_offsets[rank];
  const int64_t first_recv = args.recv_row_offsets[rank];
  const int64_t num_rows = args.send_row_offsets[rank + 1] - first_send;
  const size_t row_bytes = static_cast<size_t>(args.row_bytes);
  const uint8_t* send = static_cast<const uint8_t*>(args.send);
  uint8_t* recv = static_cast<uint8_t*>(args.recv);
  if (num_rows == 0) return;
  if (args.send_rows.empty() && args.recv_rows.empty()) {
    std::memcpy(recv + first_recv * row_bytes, send + first_send * row_bytes, num_rows * row_bytes);
    return;
  }
  for (int64_t i = 0; i < num_rows; ++i) {
    std::memcpy(recv + ListedRow(args.recv_rows, first_recv + i) * row_bytes,
                send + ListedRow(args.send_rows, first_send + i) * row_bytes, row_bytes);
  }
}

absl::Status RowAllToAllVCountsFirst(
    int world_size, absl::Span<const RowAllToAllVArgs> ops, RowRecvPlacer place,
    absl::FunctionRef<absl::Status(absl::Span<const RowAllToAllVArgs>)> run) {
  std::vector<int64_t> num_send_rows(world_size), num_recv_rows(world_size);
  std::vector<int64_t> pair_offsets(world_size + 1);
  for (int p = 0; p < world_size; ++p) {
    num_send_rows[p] = ops[0].send_row_offsets[p + 1] - ops[0].send_row_offsets[p];
    pair_offsets[p + 1] = p + 1;
  }
  const RowAllToAllVArgs counts{sizeof(int64_t), num_send_rows.data(), {},
                                pair_offsets,    num_recv_rows.data(), {},
                                pair_offsets};
  const absl::Status counted = run(absl::MakeConstSpan(&counts, 1));
  if (!counted.ok()) return counted;
  std::vector<int64_t> recv_row_offsets(world_size + 1, 0);
  for (int p = 0; p < world_size; ++p) {
    if (num_recv_rows[p] < 0) {
      return absl::InternalError(
          absl::StrCat("row_all_to_all_v: rank ", p, " announced ", num_recv_rows[p], " rows"));
    }
    recv_row_offsets[p + 1] = recv_row_offsets[p] + num_recv_rows[p];
  }
  std::vector<void*> recv(ops.size(), nullptr);
  place(recv_row_offsets, absl::MakeSpan(recv));
  std::vector<RowAllToAllVArgs> full(ops.begin(), ops.end());
  for (size_t i = 0; i < full.size(); ++i) {
    full[i].recv = recv[i];
    full[i].recv_row_offsets = recv_row_offsets;
  }
  return run(full);
}

absl::Status RowPacker::Run(Communicator& comm, absl::Span<const RowAllToAllVArgs> ops,
                            absl::Time deadline) {
  const int world_size = comm.world_size();
  const int me = comm.rank();
  for (const RowAllToAllVArgs& a : ops) {
    HERD_RETURN_IF_ERROR(ValidateRowAllToAllVArgs(a, me, world_size));
  }
  const bool on_device = comm.memory_space() == MemorySpace::kDevice;
  if (scratch_.size() < ops.size()) scratch_.resize(ops.size());
  block_ops_.clear();
  for (size_t i = 0; i < ops.size(); ++i) {
    const RowAllToAllVArgs& a = ops[i];
    OpScratch& s = scratch_[i];
    const size_t row_bytes = static_cast<size_t>(a.row_bytes);
    // Byte blocks at the rows' positions; this rank's own block is copied
    // below and is empty on the wire.
    s.send_bytes.assign(world_size, 0);
    s.send_offsets.assign(world_size, 0);
    s.recv_bytes.assign(world_size, 0);
    s.recv_offsets.assign(world_size, 0);
    for (int p = 0; p < world_size; ++p) {
      s.send_offsets[p] = a.send_row_offsets[p] * a.row_bytes;
      s.recv_offsets[p] = a.recv_row_offsets[p] * a.row_bytes;
      if (p == me) continue;
      s.send_bytes[p] = (a.send_row_offsets[p + 1] - a.send_row_offsets[p]) * a.row_bytes;
      s.recv_bytes[p] = (a.recv_row_offsets[p + 1] - a.recv_row_offsets[p]) * a.row_bytes;
    }
    const void* send = a.send;
    if (!a.send_rows.empty()) {
      s.packed_send.resize(a.send_row_offsets[world_size] * row_bytes);
      for (int p = 0; p < world_size; ++p) {
        if (p == me) continue;
        for (int64_t r = a.send_row_offsets[p]; r < a.send_row_offsets[p + 1]; ++r) {
          std::memcpy(s.packed_send.data() + r * row_bytes,
                      static_cast<const uint8_t*>(a.send) + a.send_rows[r] * row_bytes, row_bytes);
        }
      }
      send = s.packed_send.data();
    }
    void* recv = a.recv;
    if (!a.recv_rows.empty()) {
      s.packed_recv.resize(a.recv_row_offsets[world_size] * row_bytes);
      recv = s.packed_recv.data();
    }
    CopyRowsToSelf(a, me);
    if (on_device) {
      HERD_RETURN_IF_ERROR(
          EnsureDeviceBuffer(comm, a.send_row_offsets[world_size] * a.row_bytes, &s.device_send));
      HERD_RETURN_IF_ERROR(
          EnsureDeviceBuffer(comm, a.recv_row_offsets[world_size] * a.row_bytes, &s.device_recv));
      for (int p = 0; p < world_size; ++p) {
        if (s.send_bytes[p] == 0) continue;
        HERD_RETURN_IF_ERROR(s.device_send->CopyFromHost(
            s.send_offsets[p], static_cast<const uint8_t*>(send) + s.send_offsets[p],
            s.send_bytes[p]));
      }
      block_ops_.push_back(AllToAllVArgs{s.device_send->data(), s.send_bytes, s.send_offsets,
                                         s.device_recv->data(), s.recv_bytes, s.recv_offsets});
    } else {
      block_ops_.push_back(
          AllToAllVArgs{send, s.send_bytes, s.send_offsets, recv, s.recv_bytes, s.recv_offsets});
    }
  }
  HERD_RETURN_IF_ERROR(comm.GroupedAllToAllV(block_ops_, deadline));
  for (size_t i = 0; i < ops.size(); ++i) {
    const RowAllToAllVArgs& a = ops[i];
    OpScratch& s = scratch_[i];
    const size_t row_bytes = static_cast<size_t>(a.row_bytes);
    uint8_t* recv = static_cast<uint8_t*>(a.recv_rows.empty() ? a.recv : s.packed_recv.data());
    if (on_device) {
      for (int p = 0; p < world_size; ++p) {
        if (s.recv_bytes[p] == 0) continue;
        HERD_RETURN_IF_ERROR(s.device_recv->CopyToHost(s.recv_offsets[p], recv + s.recv_offsets[p],
                                                       s.recv_bytes[p]));
      }
    }
    if (a.recv_rows.empty()) continue;
    for (int p = 0; p < world_size; ++p) {
      if (p == me) continue;
      for (int64_t r = a.recv_row_offsets[p]; r < a.recv_row_offsets[p + 1]; ++r) {
        std::memcpy(static_cast<uint8_t*>(a.recv) + a.recv_rows[r] * row_bytes,
                    recv + r * row_bytes, row_bytes);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace herd::comm
