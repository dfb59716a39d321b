// Row all-to-all-v (RowAllToAllVArgs, comm/communicator.h) for transports
// that move only contiguous blocks: the listed send rows are packed into one
// host buffer, the exchange runs as one GroupedAllToAllV, and the listed
// receive rows are unpacked. What the local and ucx communicators run, and
// what ExpertExchange runs on a device communicator (nccl), staging the
// blocks through device buffers. The mpi communicator gathers and scatters in
// MPI itself (derived datatypes) and needs none of this.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "comm/communicator.h"

namespace herd::comm {

// Copies the rows that `rank` sends itself in `args` into its receive rows
// (host memory; args already validated).
void CopyRowsToSelf(const RowAllToAllVArgs& args, int rank);

// The counts in one all-to-all, then the rows: GroupedRowAllToAllVUnknownCounts
// (comm/communicator.h) for transports that cannot tell a message's size.
// `ops` are validated (ValidateUnknownCountsArgs); `run` runs one round of
// row all-to-all-vs (the communicator's own, or a RowPacker's) and its
// errors are returned as they are; Internal for a negative count.
absl::Status RowAllToAllVCountsFirst(
    int world_size, absl::Span<const RowAllToAllVArgs> ops, RowRecvPlacer place,
    absl::FunctionRef<absl::Status(absl::Span<const RowAllToAllVArgs>)> run);

// Keeps its buffers across calls: a fresh multi-megabyte buffer per call
// costs page faults on every call. Not thread-safe; one per driving thread,
// like the communicator.
class RowPacker {
 public:
  // Runs `ops`, whose pointers are host memory, on `comm` as one
  // GroupedAllToAllV (one collective, one round). A side without a row list
  // is used in place; rows for this rank are copied directly. With a device
  // communicator every op's blocks go through device buffers allocated from
  // `comm`. Errors: InvalidArgument (ValidateRowAllToAllVArgs; nothing was
  // sent), then comm's errors and its Allocate's.
  absl::Status Run(Communicator& comm, absl::Span<const RowAllToAllVArgs> ops, absl::Time deadline);

 private:
  // One op's contiguous view and the buffers behind it.
  struct OpScratch {
    std::vector<uint8_t> packed_send;  // rows at send_row_offsets[p] * row_bytes
    std::vector<uint8_t> packed_recv;  // rows at recv_row_offsets[p] * row_bytes
    std::vector<int64_t> send_bytes, send_offsets, recv_bytes, recv_offsets;
    std::unique_ptr<CommBuffer> device_send, device_recv;  // device communicators only
  };
  std::vector<OpScratch> scratch_;
  std::vector<AllToAllVArgs> block_ops_;
};

}  // namespace herd::comm
